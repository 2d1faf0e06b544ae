#include "base/openssl_errors.h"
#include "base/openssl_ptr.h"
#include "base/openssl_sign.h"
#include "migrate/receipt.h"

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <tuple>

#include "base/utf8.h"
#include "migrate/pki.h"

namespace sod {
namespace {

constexpr std::string_view kSignatureMismatch = "receipt signature does not verify";


Status Bad(std::string_view detail) {
  return Error(Errc::kMalformed, "receipt: " + std::string(detail));
}

// u16 length then bytes; the length is checked against `max` before anything is copied.
Status ReadString(ByteReader& r, std::string_view field, size_t max, std::string& out) {
  uint16_t n = 0;
  if (!r.U16(n)) return Bad("truncated at " + std::string(field) + " length");
  if (n > max)
    return Error(Errc::kTooLarge, "receipt: " + std::string(field) + " length " +
                                      std::to_string(n) + " above " + std::to_string(max));
  ByteSpan raw;
  if (!r.Raw(n, raw)) return Bad("truncated inside " + std::string(field));
  out.assign(reinterpret_cast<const char*>(raw.data()), raw.size());
  return Status::Ok();
}

Status CheckHostId(std::string_view field, std::string_view id) {
  Status valid = ValidateHostId(id);
  if (!valid.ok()) return Bad(std::string(field) + ": " + valid.message());
  return Status::Ok();
}

bool KnownSuite(uint8_t s) {
  return s == static_cast<uint8_t>(Suite::kInvalid) || SuiteTagSize(static_cast<Suite>(s)) != 0;
}

Result<Bytes> PublicKeyDer(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return Error(Errc::kCrypto, "encoding a public key: " + DrainOpensslErrors());
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

}  // namespace

Bytes EncodeReceipt(const Receipt& r) {
  auto clamp = [](std::string_view s, size_t max) { return s.substr(0, max); };
  Bytes out;
  out.reserve(kMaxReceiptSize);
  ByteWriter w(out);
  w.U8(r.version);
  w.Raw(r.migration_id);
  w.Str16(clamp(r.vm_name, kMaxReceiptVmName));
  w.Str16(clamp(r.source_host, kMaxReceiptHostId));
  w.Str16(clamp(r.destination_host, kMaxReceiptHostId));
  w.U64(r.started_unix_ms);
  w.U64(r.switchover_unix_ms);
  w.U32(r.rounds);
  w.U64(r.stream_bytes);
  w.U64(r.wire_bytes);
  w.U64(r.records);
  w.Raw(r.transcript);
  w.U8(static_cast<uint8_t>(r.suite));
  w.U64(r.vtpm_epoch);
  w.U8(r.ram_digest_present ? 1 : 0);
  if (r.ram_digest_present) {
    w.Raw(r.ram_digest);
  } else {
    out.insert(out.end(), r.ram_digest.size(), 0);
  }
  w.Str16(clamp(r.outcome_reason, kMaxReceiptReason));
  return out;
}

Result<Receipt> DecodeReceipt(ByteSpan in) {
  if (in.size() > kMaxReceiptSize)
    return Error(Errc::kTooLarge, "receipt: " + std::to_string(in.size()) + " bytes, above " +
                                      std::to_string(kMaxReceiptSize));
  ByteReader r(in);
  Receipt out;
  if (!r.U8(out.version)) return Bad("empty");
  if (out.version != kReceiptVersion)
    return Error(Errc::kUnsupported, "receipt: unknown version " + std::to_string(out.version) +
                                         " (this host reads " + std::to_string(kReceiptVersion) +
                                         ")");
  if (!r.Raw(out.migration_id.data(), out.migration_id.size()))
    return Bad("truncated inside migration_id");
  SOD_RETURN_IF_ERROR(ReadString(r, "vm_name", kMaxReceiptVmName, out.vm_name));
  if (out.vm_name.empty() || !IsPrintableUtf8(out.vm_name))
    return Bad("vm_name is empty or not printable UTF-8");
  SOD_RETURN_IF_ERROR(ReadString(r, "source_host", kMaxReceiptHostId, out.source_host));
  SOD_RETURN_IF_ERROR(CheckHostId("source_host", out.source_host));
  SOD_RETURN_IF_ERROR(ReadString(r, "destination_host", kMaxReceiptHostId, out.destination_host));
  SOD_RETURN_IF_ERROR(CheckHostId("destination_host", out.destination_host));
  if (!r.U64(out.started_unix_ms) || !r.U64(out.switchover_unix_ms) || !r.U32(out.rounds) ||
      !r.U64(out.stream_bytes) || !r.U64(out.wire_bytes) || !r.U64(out.records) ||
      !r.Raw(out.transcript.data(), out.transcript.size()))
    return Bad("truncated in the counters or the transcript");
  uint8_t suite = 0;
  if (!r.U8(suite)) return Bad("truncated at suite");
  if (!KnownSuite(suite))
    return Error(Errc::kUnsupported, "receipt: unknown suite " + std::to_string(suite));
  out.suite = static_cast<Suite>(suite);
  uint8_t present = 0;
  if (!r.U64(out.vtpm_epoch) || !r.U8(present) ||
      !r.Raw(out.ram_digest.data(), out.ram_digest.size()))
    return Bad("truncated in vtpm_epoch or the RAM digest");
  if (present > 1) return Bad("ram_digest_present is " + std::to_string(present) + ", not 0 or 1");
  out.ram_digest_present = present == 1;
  if (!out.ram_digest_present &&
      std::any_of(out.ram_digest.begin(), out.ram_digest.end(), [](uint8_t b) { return b != 0; }))
    return Bad("ram_digest is not zero although absent");
  SOD_RETURN_IF_ERROR(ReadString(r, "outcome_reason", kMaxReceiptReason, out.outcome_reason));
  if (!IsPrintableUtf8(out.outcome_reason)) return Bad("outcome_reason is not printable UTF-8");
  if (!r.done()) return Bad(std::to_string(r.remaining()) + " trailing bytes");
  return out;
}

Status ValidateReceipt(const Receipt& r) {
  for (const auto& [field, value, max] :
       {std::tuple<const char*, const std::string&, size_t>{"vm_name", r.vm_name,
                                                            kMaxReceiptVmName},
        {"source_host", r.source_host, kMaxReceiptHostId},
        {"destination_host", r.destination_host, kMaxReceiptHostId},
        {"outcome_reason", r.outcome_reason, kMaxReceiptReason}}) {
    if (value.size() > max)
      return Error(Errc::kInvalidArgument, "receipt: " + std::string(field) + " length " +
                                               std::to_string(value.size()) + " above " +
                                               std::to_string(max));
  }
  if (!r.ram_digest_present &&
      std::any_of(r.ram_digest.begin(), r.ram_digest.end(), [](uint8_t b) { return b != 0; }))
    return Error(Errc::kInvalidArgument, "receipt: ram_digest is set although absent");
  // Everything else (version, host ids, text, suite) is what the decoder checks.
  Result<Receipt> back = DecodeReceipt(EncodeReceipt(r));
  if (!back.ok()) return Error(Errc::kInvalidArgument, back.status().message());
  if (!(*back == r)) return Error(Errc::kInternal, "receipt: encoding does not round-trip");
  return Status::Ok();
}

std::string FormatUnixMillis(uint64_t unix_ms) {
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm {};
  if (!gmtime_r(&secs, &tm)) return "invalid time " + std::to_string(unix_ms) + " ms";
  char buf[64];
  snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           static_cast<unsigned>(unix_ms % 1000));
  return buf;
}

nlohmann::json ToJson(const Receipt& r) {
  nlohmann::json j;
  j["version"] = r.version;
  j["migration_id"] = ToHex(r.migration_id);
  j["vm_name"] = r.vm_name;
  j["source_host"] = r.source_host;
  j["destination_host"] = r.destination_host;
  j["started"] = FormatUnixMillis(r.started_unix_ms);
  j["started_unix_ms"] = r.started_unix_ms;
  j["switchover"] = r.switchover_unix_ms ? nlohmann::json(FormatUnixMillis(r.switchover_unix_ms))
                                         : nlohmann::json(nullptr);
  j["switchover_unix_ms"] = r.switchover_unix_ms;
  j["rounds"] = r.rounds;
  j["stream_bytes"] = r.stream_bytes;
  j["wire_bytes"] = r.wire_bytes;
  j["records"] = r.records;
  j["transcript"] = ToHex(r.transcript);
  j["suite"] = std::string(SuiteName(r.suite));
  j["vtpm_epoch"] = r.vtpm_epoch;
  j["ram_digest"] =
      r.ram_digest_present ? nlohmann::json(ToHex(r.ram_digest)) : nlohmann::json(nullptr);
  j["outcome"] = r.committed() ? "committed" : "aborted";
  j["outcome_reason"] = r.outcome_reason;
  return j;
}

std::string_view ReceiptRoleName(ReceiptRole role) {
  switch (role) {
    case ReceiptRole::kSource:
      return "source";
    case ReceiptRole::kDestination:
      return "destination";
  }
  return "unknown";
}

Bytes ReceiptSigningInput(const Receipt& r, ReceiptRole role) {
  Bytes out;
  ByteWriter w(out);
  w.Raw(kReceiptSigningPrefix);
  w.Raw(ReceiptRoleName(role));
  w.Raw(EncodeReceipt(r));
  return out;
}

// --- HostSigner -------------------------------------------------------------------------------

HostSigner::HostSigner(evp_pkey_st* key, Bytes public_key_der)
    : key_(key), public_key_der_(std::move(public_key_der)) {}

HostSigner::~HostSigner() { EVP_PKEY_free(key_); }

Result<std::unique_ptr<HostSigner>> HostSigner::Load(const std::string& key_file) {
  SOD_RETURN_IF_ERROR(CheckPrivateKeyFileMode(key_file, "host key"));
  ERR_clear_error();
  BioPtr bio(BIO_new_file(key_file.c_str(), "r"));
  if (!bio) return Error(Errc::kIo, "host key " + key_file + ": opening: " + DrainOpensslErrors());
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key)
    return Error(Errc::kInvalidArgument,
                 "host key " + key_file + " holds no PEM private key: " + DrainOpensslErrors());
  if (!IsP256(key.get()))
    return Error(Errc::kInvalidArgument, "host key " + key_file + " is not an ECDSA P-256 key");
  SOD_ASSIGN_OR_RETURN(Bytes public_der, PublicKeyDer(key.get()));
  return std::unique_ptr<HostSigner>(new HostSigner(key.release(), std::move(public_der)));
}

Result<Bytes> HostSigner::Sign(ByteSpan message) const { return SignSha256(key_, message); }

Status VerifySignature(ByteSpan public_key_der, ByteSpan message, ByteSpan signature) {
  ERR_clear_error();
  if (public_key_der.empty())
    return Error(Errc::kInvalidArgument, "verifying a signature: empty public key");
  const unsigned char* p = public_key_der.data();
  PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(public_key_der.size())));
  if (!key || p != public_key_der.data() + public_key_der.size()) {
    ERR_clear_error();
    return Error(Errc::kInvalidArgument,
                 "verifying a signature: the public key is not a SubjectPublicKeyInfo (DER)");
  }
  if (!IsP256(key.get()))
    return Error(Errc::kInvalidArgument, "verifying a signature: the key is not ECDSA P-256");
  if (signature.empty() || signature.size() > kMaxSignature)
    return Error(Errc::kIntegrity, std::string(kSignatureMismatch));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1)
    return Error(Errc::kCrypto, "verifying a signature: " + DrainOpensslErrors());
  int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                            message.size());
  ERR_clear_error();  // a malformed signature queues a decoding error: it is just a mismatch
  if (rc != 1) return Error(Errc::kIntegrity, std::string(kSignatureMismatch));
  return Status::Ok();
}

Result<Bytes> SignReceipt(const HostSigner& signer, const Receipt& r, ReceiptRole role) {
  SOD_RETURN_IF_ERROR(ValidateReceipt(r));
  return signer.Sign(ReceiptSigningInput(r, role));
}

Status VerifyReceiptSignature(ByteSpan public_key_der, const Receipt& r, ReceiptRole role,
                              ByteSpan signature) {
  Status s = VerifySignature(public_key_der, ReceiptSigningInput(r, role), signature);
  if (!s.ok())
    return s.WithContext(std::string(ReceiptRoleName(role)) + " signature of the receipt for " +
                         r.vm_name + " (" + r.source_host + " -> " + r.destination_host + ")");
  return s;
}

}  // namespace sod
