#include "vtpm/vtpm_host.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/files.h"
#include "base/openssl_ptr.h"
#include "base/random.h"
#include "migrate/key_schedule.h"
#include "migrate/vm.h"

namespace sod::vtpm {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMasterKeyBytes = 32;
constexpr size_t kMaxSealedBytes = 4096;
constexpr size_t kMaxEpochsBytes = 1 << 20;
// <vm_dir>/vtpm.keys: magic(8) version(1) nonce(12) ciphertext(64) tag(16).
constexpr std::string_view kKeysMagic = "SODVTPMK";
constexpr uint8_t kKeysVersion = 1;
constexpr size_t kNonceBytes = 12, kTagBytes = 16;
constexpr size_t kKeysPlain = 2 * kVmTpmKeyBytes;
constexpr size_t kKeysFileBytes = kKeysMagic.size() + 1 + kNonceBytes + kKeysPlain + kTagBytes;

// Associated data of a keys file: its header and the VM's name, so a keys file copied to another
// VM's directory does not open.
Bytes KeysAad(const std::string& name) {
  Bytes aad(kKeysMagic.begin(), kKeysMagic.end());
  aad.push_back(kKeysVersion);
  aad.insert(aad.end(), name.begin(), name.end());
  return aad;
}

// AES-256-GCM with a 12-byte nonce and a 16-byte tag. `out` has in.size() bytes.
Status Gcm(bool encrypt, const SecretBytes& key, ByteSpan nonce, ByteSpan aad, ByteSpan in,
           uint8_t* out, uint8_t* tag) {
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int n = 0;
  if (!ctx ||
      EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce.data(),
                        encrypt ? 1 : 0) != 1 ||
      EVP_CipherUpdate(ctx.get(), nullptr, &n, aad.data(), static_cast<int>(aad.size())) != 1 ||
      EVP_CipherUpdate(ctx.get(), out, &n, in.data(), static_cast<int>(in.size())) != 1)
    return Error(Errc::kCrypto, "vtpm keys: AES-256-GCM failed");
  if (!encrypt &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), tag) != 1)
    return Error(Errc::kCrypto, "vtpm keys: AES-256-GCM failed");
  if (EVP_CipherFinal_ex(ctx.get(), out + n, &n) != 1) {
    OPENSSL_cleanse(out, in.size());
    return Error(Errc::kIntegrity,
                 "vtpm keys: the keys file does not open (changed, another VM's or another "
                 "host's)");
  }
  if (encrypt &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), tag) != 1)
    return Error(Errc::kCrypto, "vtpm keys: AES-256-GCM failed");
  return Status::Ok();
}

std::string_view AsText(ByteSpan b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

Result<std::unique_ptr<VtpmHost>> VtpmHost::Open(const std::string& root, KeySealer& sealer,
                                                 VtpmHostOptions options) {
  const std::string dir = root + "/vtpm";
  SOD_RETURN_IF_ERROR(MakePrivateDir(dir));
  const std::string sealed_path = dir + "/master.sealed";
  SecretBytes master;
  Result<std::string> sealed = ReadSmallFile(sealed_path, kMaxSealedBytes);
  if (sealed.ok()) {
    Result<SecretBytes> m =
        sealer.Unseal(ByteSpan(reinterpret_cast<const uint8_t*>(sealed->data()), sealed->size()));
    if (!m.ok())
      return m.status().WithContext("vTPM master key " + sealed_path + " (" + sealer.Describe() +
                                    "): this host's vTPMs are unavailable");
    if (m->size() != kMasterKeyBytes)
      return Error(Errc::kMalformed, "vTPM master key " + sealed_path + " has the wrong size");
    master = std::move(*m);
  } else if (sealed.status().code() == Errc::kNotFound) {
    master = SecretBytes(kMasterKeyBytes);
    SOD_RETURN_IF_ERROR(RandomFill(master.mutable_span()));
    SOD_ASSIGN_OR_RETURN(Bytes blob, sealer.Seal(master.span()));
    SOD_RETURN_IF_ERROR(WriteFileAtomically(sealed_path, AsText(blob)));
  } else {
    return sealed.status();
  }
  SecretBytes wrap(kVmTpmKeyBytes);
  SOD_RETURN_IF_ERROR(HkdfExpand(master.span(), "vtpm key wrap", {}, wrap.mutable_span()));

  std::unique_ptr<VtpmHost> host(
      new VtpmHost(dir, std::move(wrap), sealer.Describe(), std::move(options)));
  Result<std::string> text = ReadSmallFile(host->EpochsFile(), kMaxEpochsBytes);
  if (text.ok()) {
    json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return Error(Errc::kMalformed, host->EpochsFile() + ": not a JSON object");
    for (const auto& [name, v] : j.items()) {
      if (!v.is_number_unsigned() || !ValidateVmName(name).ok())
        return Error(Errc::kMalformed, host->EpochsFile() + ": bad entry \"" + name + "\"");
      host->epochs_[name] = v.get<uint64_t>();
    }
  } else if (text.status().code() != Errc::kNotFound) {
    return text.status();
  }
  return host;
}

Status VtpmHost::WriteKeys(const std::string& name, const std::string& vm_dir,
                           const VmKeys& keys) {
  SecretBytes plain(kKeysPlain);
  std::memcpy(plain.data(), keys.state_key.data(), kVmTpmKeyBytes);
  std::memcpy(plain.data() + kVmTpmKeyBytes, keys.migration_key.data(), kVmTpmKeyBytes);
  Bytes file(kKeysMagic.begin(), kKeysMagic.end());
  file.push_back(kKeysVersion);
  const size_t nonce_at = file.size();
  file.resize(kKeysFileBytes);
  SOD_RETURN_IF_ERROR(RandomFill(MutableByteSpan(file.data() + nonce_at, kNonceBytes)));
  SOD_RETURN_IF_ERROR(Gcm(true, wrap_key_, ByteSpan(file.data() + nonce_at, kNonceBytes),
                          KeysAad(name), plain.span(), file.data() + nonce_at + kNonceBytes,
                          file.data() + nonce_at + kNonceBytes + kKeysPlain));
  SOD_RETURN_IF_ERROR(MakePrivateDir(vm_dir));
  return WriteFileAtomically(KeysFileOf(vm_dir), AsText(file));
}

Result<VtpmHost::VmKeys> VtpmHost::ReadKeys(const std::string& name, const std::string& vm_dir) {
  const std::string path = KeysFileOf(vm_dir);
  SOD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, kKeysFileBytes + 1));
  Bytes file(text.begin(), text.end());
  OPENSSL_cleanse(text.data(), text.size());
  if (file.size() != kKeysFileBytes || AsText(ByteSpan(file).first(kKeysMagic.size())) != kKeysMagic ||
      file[kKeysMagic.size()] != kKeysVersion)
    return Error(Errc::kMalformed, "vtpm keys " + path + ": not a version-1 keys file");
  const size_t nonce_at = kKeysMagic.size() + 1;
  SecretBytes plain(kKeysPlain);
  SOD_RETURN_IF_ERROR(Gcm(false, wrap_key_, ByteSpan(file.data() + nonce_at, kNonceBytes),
                          KeysAad(name), ByteSpan(file.data() + nonce_at + kNonceBytes, kKeysPlain),
                          plain.data(), file.data() + nonce_at + kNonceBytes + kKeysPlain)
                          .WithContext(path));
  VmKeys k;
  k.state_key = SecretBytes(plain.span().first(kVmTpmKeyBytes));
  k.migration_key = SecretBytes(plain.span().subspan(kVmTpmKeyBytes));
  return k;
}

VmTpmOptions VtpmHost::TpmOptions(const std::string& vm_dir, const SecretBytes* migration_key,
                                  bool end_orphan) const {
  VmTpmOptions o;
  o.binary = options_.swtpm_binary;
  o.log_path = vm_dir + "/swtpm.log";
  o.start_timeout = options_.start_timeout;
  o.migration_key = migration_key;
  o.end_orphan = end_orphan;
  return o;
}

Result<std::unique_ptr<VmTpm>> VtpmHost::StartForVm(const std::string& name,
                                                    const std::string& vm_dir) {
  Result<VmKeys> keys = ReadKeys(name, vm_dir);
  if (!keys.ok()) {
    if (keys.status().code() != Errc::kNotFound) return keys.status();
    if (HasVmTpmState(StateDirOf(vm_dir)))
      return Error(Errc::kState, "vtpm " + name + ": state without keys in " + StateDirOf(vm_dir));
    VmKeys fresh;
    SOD_ASSIGN_OR_RETURN(fresh.state_key, NewVmTpmKey());
    SOD_ASSIGN_OR_RETURN(fresh.migration_key, NewVmTpmKey());
    SOD_RETURN_IF_ERROR(WriteKeys(name, vm_dir, fresh));
    keys = std::move(fresh);
  }
  return VmTpm::Start(StateDirOf(vm_dir), SocketOf(vm_dir), keys->state_key, VmTpmMode::kRun,
                      TpmOptions(vm_dir, &keys->migration_key, /*end_orphan=*/true));
}

Result<std::unique_ptr<VmTpm>> VtpmHost::StartIncoming(const std::string& name,
                                                       const std::string& vm_dir,
                                                       const SecretBytes& migration_key) {
  if (migration_key.size() != kVmTpmKeyBytes)
    return Error(Errc::kInvalidArgument, "vtpm " + name + ": migration key must be 32 bytes");
  VmKeys keys;
  SOD_ASSIGN_OR_RETURN(keys.state_key, NewVmTpmKey());
  keys.migration_key = SecretBytes(migration_key.span());
  SOD_RETURN_IF_ERROR(WriteKeys(name, vm_dir, keys));
  return VmTpm::Start(StateDirOf(vm_dir), SocketOf(vm_dir), keys.state_key, VmTpmMode::kIncoming,
                      TpmOptions(vm_dir, &keys.migration_key, /*end_orphan=*/false));
}

Result<std::unique_ptr<VmTpm>> VtpmHost::Adopt(const std::string& vm_dir) {
  return VmTpm::Adopt(StateDirOf(vm_dir), SocketOf(vm_dir), vm_dir + "/swtpm.log");
}

Result<SecretBytes> VtpmHost::MigrationKey(const std::string& name, const std::string& vm_dir) {
  SOD_ASSIGN_OR_RETURN(VmKeys keys, ReadKeys(name, vm_dir));
  return std::move(keys.migration_key);
}

Status VtpmHost::Erase(const std::string& vm_dir) {
  SOD_RETURN_IF_ERROR(EraseVmTpmState(StateDirOf(vm_dir)));
  const std::string keys = KeysFileOf(vm_dir);
  // The keys file is the real erasure: without it the state files are ciphertext for good.
  if (::unlink(keys.c_str()) != 0 && errno != ENOENT)
    return Error(Errc::kIo, "vtpm: cannot remove " + keys + ": " + std::strerror(errno));
  ::unlink(SocketOf(vm_dir).c_str());
  return Status::Ok();
}

uint64_t VtpmHost::SeenEpoch(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = epochs_.find(name);
  return it == epochs_.end() ? 0 : it->second;
}

Status VtpmHost::CheckNewer(const std::string& name, uint64_t epoch) const {
  const uint64_t seen = SeenEpoch(name);
  if (epoch > seen) return Status::Ok();
  return Error(Errc::kRefused, "vTPM of vm " + name + " at epoch " + std::to_string(epoch) +
                                   " is not newer than epoch " + std::to_string(seen) +
                                   " this host has seen (rollback or replay refused)");
}

Status VtpmHost::RecordEpoch(const std::string& name, uint64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t& seen = epochs_[name];
  if (epoch <= seen) return Status::Ok();
  const uint64_t before = seen;
  seen = epoch;
  json j = json::object();
  for (const auto& [n, e] : epochs_) j[n] = e;
  Status s = WriteFileAtomically(EpochsFile(), j.dump() + "\n");
  if (!s.ok()) seen = before;
  return s;
}

}  // namespace sod::vtpm
