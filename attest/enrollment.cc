#include "attest/enrollment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "attest/evidence.h"
#include "attest/tpm_wire.h"
#include "base/files.h"
#include "migrate/pki.h"

namespace sod::attest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kBank = "sha256";

Status Bad(std::string_view field, std::string_view detail, Errc code = Errc::kMalformed) {
  return Error(code, "enrollment: " + std::string(field) + ": " + std::string(detail));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool FromHex(std::string_view s, Bytes& out) {
  if (s.size() % 2 != 0) return false;
  out.clear();
  out.reserve(s.size() / 2);
  for (size_t i = 0; i < s.size(); i += 2) {
    const int hi = HexDigit(s[i]);
    const int lo = HexDigit(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(static_cast<uint8_t>((hi << 4) | lo));
  }
  return true;
}

bool GetUnsigned(const json& j, uint64_t& v) {
  if (j.is_number_unsigned()) {
    v = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    v = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

// `obj`'s member `key` as a string, or an error naming `field`.
Result<std::string> GetString(const json& obj, std::string_view key, std::string_view field) {
  auto it = obj.find(key);
  if (it == obj.end()) return Bad(field, "missing");
  if (!it->is_string()) return Bad(field, "not a string");
  return it->get<std::string>();
}

Result<Bytes> GetHex(const json& obj, std::string_view key, size_t max_bytes) {
  SOD_ASSIGN_OR_RETURN(std::string text, GetString(obj, key, key));
  if (text.size() > 2 * max_bytes)
    return Bad(key, std::to_string(text.size() / 2) + " bytes, above " + std::to_string(max_bytes));
  Bytes out;
  if (!FromHex(text, out)) return Bad(key, "not an even number of hex digits");
  return out;
}

Status CheckOnlyKeys(const json& obj, std::string_view field,
                     std::initializer_list<std::string_view> keys) {
  for (const auto& item : obj.items()) {
    if (std::find(keys.begin(), keys.end(), item.key()) == keys.end()) {
      std::string shown = item.key().substr(0, 64);
      return Bad(field, "unknown key \"" + (IsWellFormedUtf8(shown) ? shown : "?") + "\"");
    }
  }
  return Status::Ok();
}

// "0".."23": decimal without sign or leading zeros.
bool ParsePcrIndex(std::string_view s, uint32_t& index) {
  if (s.empty() || s.size() > 2 || (s.size() == 2 && s[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v >= 24) return false;
  index = v;
  return true;
}

// The AK as the store compares it: its public key (so the same key with other attributes is
// still the same AK), or the raw bytes when they do not parse.
Bytes AkKey(const Bytes& ak_public) {
  Result<TpmPublic> p = ParsePublic(ak_public);
  if (p.ok()) return p->spki_der;
  return ak_public;
}

Status Errno(std::string_view what, const std::string& path) {
  return Error(Errc::kIo, std::string(what) + " " + path + ": " + std::strerror(errno));
}

// Writes `text` to `path` atomically with mode 0644 and makes the rename durable.
Status WritePublicFileAtomically(const fs::path& path, std::string_view text) {
  const std::string tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp);
  Status s;
  if (::fchmod(fd, 0644) != 0) s = Errno("cannot chmod", tmp);
  size_t done = 0;
  while (s.ok() && done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      s = Errno("cannot write", tmp);
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", tmp);
  if (::close(fd) != 0 && s.ok()) s = Errno("cannot close", tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = Errno("cannot rename to " + path.string() + ":", tmp);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  const std::string dir = path.parent_path().empty() ? "." : path.parent_path().string();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: the record is written either way
    ::close(dfd);
  }
  return Status::Ok();
}

}  // namespace

json EnrollmentToJson(const EnrollmentRecord& r) {
  json values = json::object();
  for (const auto& [index, value] : r.golden_pcrs) values[std::to_string(index)] = ToHex(value);
  return json{{"version", kEnrollmentVersion},
              {"host_id", r.host_id},
              {"architecture", r.architecture},
              {"ak_public", ToHex(r.ak_public)},
              {"ek_public", ToHex(r.ek_public)},
              {"golden_pcrs", {{"bank", std::string(kBank)}, {"values", values}}},
              {"enrolled_unix_ms", r.enrolled_unix_ms}};
}

Status ValidateEnrollment(const EnrollmentRecord& r) {
  if (Status s = ValidateHostId(r.host_id); !s.ok()) return Bad("host_id", s.message());
  if (Status s = ValidateArchitecture(r.architecture); !s.ok())
    return Bad("architecture", s.message());
  if (r.ak_public.size() > kMaxEnrollmentPublic)
    return Bad("ak_public", std::to_string(r.ak_public.size()) + " bytes, above " +
                                std::to_string(kMaxEnrollmentPublic));
  Result<TpmPublic> ak = ParsePublic(r.ak_public);
  if (!ak.ok()) return Bad("ak_public", ak.status().message());
  if (Status s = CheckAttestationKey(*ak); !s.ok()) return Bad("ak_public", s.message());
  if (r.ek_public.size() > kMaxEnrollmentPublic)
    return Bad("ek_public", std::to_string(r.ek_public.size()) + " bytes, above " +
                                std::to_string(kMaxEnrollmentPublic));
  Result<TpmPublic> ek = ParsePublic(r.ek_public);
  if (!ek.ok()) return Bad("ek_public", ek.status().message());
  if (Status s = CheckEndorsementKey(*ek); !s.ok()) return Bad("ek_public", s.message());
  for (const auto& [index, value] : r.golden_pcrs) {
    const std::string field = "golden_pcrs.values." + std::to_string(index);
    if (index >= 24) return Bad(field, "not a PCR (0..23)");
    if (index == kViolationPcr)
      return Bad(field,
                 "PCR 14 is the violation PCR: its value follows the reported violation "
                 "count and cannot be golden");
  }
  return Status::Ok();
}

Result<EnrollmentRecord> EnrollmentFromJson(const json& j) {
  if (!j.is_object()) return Bad("record", "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(j, "record",
                                    {"version", "host_id", "architecture", "ak_public", "ek_public",
                                     "golden_pcrs", "enrolled_unix_ms"}));
  EnrollmentRecord r;
  auto version = j.find("version");
  uint64_t v = 0;
  if (version == j.end()) return Bad("version", "missing");
  if (!GetUnsigned(*version, v)) return Bad("version", "not an unsigned integer");
  if (v != kEnrollmentVersion)
    return Bad("version",
               "unknown version " + std::to_string(v) + " (this host reads " +
                   std::to_string(kEnrollmentVersion) + ")",
               Errc::kUnsupported);
  SOD_ASSIGN_OR_RETURN(r.host_id, GetString(j, "host_id", "host_id"));
  if (Status s = ValidateHostId(r.host_id); !s.ok()) return Bad("host_id", s.message());
  SOD_ASSIGN_OR_RETURN(r.architecture, GetString(j, "architecture", "architecture"));
  SOD_ASSIGN_OR_RETURN(r.ak_public, GetHex(j, "ak_public", kMaxEnrollmentPublic));
  SOD_ASSIGN_OR_RETURN(r.ek_public, GetHex(j, "ek_public", kMaxEnrollmentPublic));

  auto golden = j.find("golden_pcrs");
  if (golden == j.end()) return Bad("golden_pcrs", "missing");
  if (!golden->is_object()) return Bad("golden_pcrs", "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(*golden, "golden_pcrs", {"bank", "values"}));
  SOD_ASSIGN_OR_RETURN(std::string bank, GetString(*golden, "bank", "golden_pcrs.bank"));
  if (bank != kBank)
    return Bad("golden_pcrs.bank", "only the sha256 bank is supported", Errc::kUnsupported);
  auto values = golden->find("values");
  if (values == golden->end()) return Bad("golden_pcrs.values", "missing");
  if (!values->is_object()) return Bad("golden_pcrs.values", "not a JSON object");
  for (const auto& item : values->items()) {
    const std::string& key = item.key();
    const std::string shown = key.substr(0, 8);
    const std::string field =
        "golden_pcrs.values." + (IsWellFormedUtf8(shown) ? shown : std::string("?"));
    uint32_t index = 0;
    if (!ParsePcrIndex(key, index)) return Bad(field, "not a PCR index (0..23, decimal)");
    if (!item.value().is_string()) return Bad(field, "not a string");
    Bytes value;
    if (!FromHex(item.value().get<std::string>(), value) || value.size() != 32)
      return Bad(field, "not 64 hex digits (a SHA-256 value)");
    std::copy(value.begin(), value.end(), r.golden_pcrs[index].begin());
  }

  auto enrolled = j.find("enrolled_unix_ms");
  if (enrolled == j.end()) return Bad("enrolled_unix_ms", "missing");
  if (!GetUnsigned(*enrolled, r.enrolled_unix_ms))
    return Bad("enrolled_unix_ms", "not an unsigned integer");
  SOD_RETURN_IF_ERROR(ValidateEnrollment(r));
  return r;
}

// --- EnrollmentStore ----------------------------------------------------------------------------

Status EnrollmentStore::Insert(EnrollmentRecord record) {
  Bytes key = AkKey(record.ak_public);
  for (size_t i = 0; i < records_.size(); ++i) {
    if (records_[i].host_id == record.host_id)
      return Error(Errc::kRefused, "host " + record.host_id + " is enrolled twice");
    if (ak_keys_[i] == key)
      return Error(Errc::kRefused, "the AK of " + record.host_id + " is already enrolled for " +
                                       records_[i].host_id + " (one TPM, two identities)");
  }
  auto at = std::lower_bound(
      records_.begin(), records_.end(), record.host_id,
      [](const EnrollmentRecord& r, const std::string& id) { return r.host_id < id; });
  const auto index = at - records_.begin();
  records_.insert(at, std::move(record));
  ak_keys_.insert(ak_keys_.begin() + index, std::move(key));
  return Status::Ok();
}

const EnrollmentRecord* EnrollmentStore::Find(std::string_view host_id) const {
  auto at = std::lower_bound(
      records_.begin(), records_.end(), host_id,
      [](const EnrollmentRecord& r, std::string_view id) { return r.host_id < id; });
  if (at == records_.end() || at->host_id != host_id) return nullptr;
  return &*at;
}

Result<EnrollmentStore> EnrollmentStore::Load(const fs::path& dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (ec || !fs::exists(st)) {
    if (ec && ec != std::errc::no_such_file_or_directory)
      return Error(Errc::kIo, "enrollment directory " + dir.string() + ": " + ec.message());
    return Error(Errc::kNotFound, "enrollment directory " + dir.string() + " does not exist");
  }
  if (!fs::is_directory(st))
    return Error(Errc::kIo, "enrollment directory " + dir.string() + " is not a directory");
  std::vector<fs::path> files;
  fs::directory_iterator it(dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.extension() != ".json") continue;
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    files.push_back(p);
  }
  if (ec) return Error(Errc::kIo, "enrollment directory " + dir.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());

  EnrollmentStore store;
  for (const fs::path& file : files) {
    const std::string name = file.string();
    Result<std::string> text = ReadSmallFile(name, kMaxEnrollmentFile);
    if (!text.ok()) return text.status().WithContext("enrollment file " + name);
    json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Error(Errc::kMalformed, "enrollment file " + name + ": not JSON");
    Result<EnrollmentRecord> r = EnrollmentFromJson(j);
    if (!r.ok()) return r.status().WithContext("enrollment file " + name);
    if (file.stem().string() != r->host_id)
      return Error(Errc::kMalformed, "enrollment file " + name + ": holds the record of " +
                                         r->host_id + "; it must be named " + r->host_id + ".json");
    Status s = store.Insert(std::move(*r));
    if (!s.ok()) return s.WithContext("enrollment file " + name);
  }
  return store;
}

Status EnrollmentStore::Add(const EnrollmentRecord& record, const fs::path& dir) {
  SOD_RETURN_IF_ERROR(ValidateEnrollment(record));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Error(Errc::kIo, "cannot create " + dir.string() + ": " + ec.message());
  Result<EnrollmentStore> current = Load(dir);
  if (!current.ok())
    return current.status().WithContext("not enrolling " + record.host_id +
                                        " into a directory that does not load");
  const Bytes key = AkKey(record.ak_public);
  for (size_t i = 0; i < current->records_.size(); ++i) {
    if (current->records_[i].host_id != record.host_id && current->ak_keys_[i] == key)
      return Error(Errc::kRefused, "not enrolling " + record.host_id + ": its AK is enrolled for " +
                                       current->records_[i].host_id + " (one TPM, two identities)");
  }
  std::string text;
  try {
    text = EnrollmentToJson(record).dump(2) + "\n";
  } catch (const json::exception& e) {  // cannot happen for a validated record (ASCII strings)
    return Error(Errc::kInternal, std::string("enrollment record as JSON: ") + e.what());
  }
  return WritePublicFileAtomically(dir / (record.host_id + ".json"), text);
}

Status EnrollmentStore::Remove(std::string_view host_id, const fs::path& dir) {
  if (Status s = ValidateHostId(host_id); !s.ok()) return s;
  const fs::path file = dir / (std::string(host_id) + ".json");
  if (::unlink(file.c_str()) != 0) {
    if (errno == ENOENT)
      return Error(Errc::kNotFound,
                   "host " + std::string(host_id) + " is not enrolled in " + dir.string());
    return Errno("cannot remove", file.string());
  }
  return Status::Ok();
}

}  // namespace sod::attest
