// Migration receipts: what both hosts sign after a migration ends, and keep in their audit logs
// (audit_log.h) for non-repudiation (migrate/PROTOCOL.md, "Receipts and audit log").
//
// Wire layout of a Receipt (little-endian, every field always present, in this order):
//
//   size      field
//   1         version             kReceiptVersion; any other value is refused (kUnsupported)
//   16        migration_id
//   2 + n     vm_name             u16 length, 1..kMaxReceiptVmName bytes of printable UTF-8
//   2 + n     source_host         u16 length, a valid host id (pki.h, ValidateHostId)
//   2 + n     destination_host    u16 length, a valid host id
//   8         started_unix_ms     when the source started the migration (Unix time, ms)
//   8         switchover_unix_ms  when the source paused the VM for switchover (0 = never)
//   4         rounds              pre-copy rounds sent
//   8         stream_bytes        migration stream bytes (plaintext) sent
//   8         wire_bytes          bytes on the wire, record overhead included
//   8         records             records sent (the Commit record's count)
//   32        transcript          the session transcript S (PROTOCOL.md, "Transcript")
//   1         suite               record suite (Suite); 0 = none negotiated, unknown refused
//   8         vtpm_epoch          epoch of the vTPM state that moved; 0 = the VM has no vTPM
//   1         ram_digest_present  0 or 1; anything else is refused
//   16        ram_digest          XXH3-128 of guest RAM; all zero when not present
//   2 + n     outcome_reason      u16 length, 0..kMaxReceiptReason bytes of printable UTF-8;
//                                 empty when the migration committed
//
// "Printable UTF-8" is well-formed UTF-8 without C0 control characters or DEL, so a receipt's
// strings can go into a JSON log line as they are. Decoding refuses inputs above
// kMaxReceiptSize before reading anything, every over-long string before copying it, and
// trailing bytes. Encoding is canonical: DecodeReceipt(b) succeeds only when
// EncodeReceipt(*DecodeReceipt(b)) == b.
//
// Signing: each host signs ReceiptSigningInput(receipt, role) with its host key (the private key
// of its TLS certificate, ECDSA P-256 with SHA-256). The role is part of the signed bytes, so a
// source signature never verifies as a destination signature. The peer's signature is verified
// with the public key of the certificate the TLS session verified (TlsStream::
// peer_public_key_der).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/record.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace sod {

inline constexpr uint8_t kReceiptVersion = 1;
inline constexpr size_t kMaxReceiptVmName = 64;
inline constexpr size_t kMaxReceiptHostId = 64;
inline constexpr size_t kMaxReceiptReason = 256;
// The largest encoded receipt (every string at its maximum).
inline constexpr size_t kMaxReceiptSize =
    1 + 16 + (2 + kMaxReceiptVmName) + 2 * (2 + kMaxReceiptHostId) + 8 + 8 + 4 + 8 + 8 + 8 +
    kTranscriptSize + 1 + 8 + 1 + 16 + (2 + kMaxReceiptReason);
static_assert(kMaxReceiptSize == 575, "receipt layout changed: update PROTOCOL.md");
// Signed bytes = kReceiptSigningPrefix || role name || EncodeReceipt(receipt).
inline constexpr std::string_view kReceiptSigningPrefix = "sod/1 receipt ";

struct Receipt {
  uint8_t version = kReceiptVersion;
  std::array<uint8_t, 16> migration_id{};
  std::string vm_name;
  std::string source_host;
  std::string destination_host;
  uint64_t started_unix_ms = 0;
  uint64_t switchover_unix_ms = 0;
  uint32_t rounds = 0;
  uint64_t stream_bytes = 0;
  uint64_t wire_bytes = 0;
  uint64_t records = 0;
  std::array<uint8_t, kTranscriptSize> transcript{};
  Suite suite = Suite::kInvalid;
  uint64_t vtpm_epoch = 0;
  bool ram_digest_present = false;
  std::array<uint8_t, 16> ram_digest{};  // meaningful only when ram_digest_present
  std::string outcome_reason;            // empty: committed

  bool committed() const { return outcome_reason.empty(); }
  bool operator==(const Receipt&) const = default;
};

// Encodes `r` in the layout above. Strings longer than their maximum are cut to it and the digest
// is written as zeros when not present; callers that need the encoding to decode back to exactly
// `r` check ValidateReceipt first (SignReceipt does).
Bytes EncodeReceipt(const Receipt& r);
// Decodes one whole receipt. kTooLarge (input or a string above its maximum), kUnsupported
// (version, suite), kMalformed (truncated, bad host id or string, bad flag, trailing bytes); the
// message names the field.
Result<Receipt> DecodeReceipt(ByteSpan in);
// OK when EncodeReceipt(r) decodes back to exactly `r`; kInvalidArgument naming the field
// otherwise.
Status ValidateReceipt(const Receipt& r);

// A readable, lossless rendering for logs and `sodctl`: byte arrays in lowercase hex, times both
// as RFC 3339 UTC with milliseconds ("started") and as the raw value ("started_unix_ms"), the
// suite by name, ram_digest null when absent, and "outcome": "committed" | "aborted".
nlohmann::json ToJson(const Receipt& r);

// "2025-01-31T12:00:00.123Z".
std::string FormatUnixMillis(uint64_t unix_ms);

enum class ReceiptRole : uint8_t { kSource, kDestination };
std::string_view ReceiptRoleName(ReceiptRole role);  // "source" | "destination"

// kReceiptSigningPrefix || ReceiptRoleName(role) || EncodeReceipt(r). The two role names are not
// prefixes of one another, so the input determines the role.
Bytes ReceiptSigningInput(const Receipt& r, ReceiptRole role);

// A host's signing key: the private key of its TLS certificate (pki.h: <host>.key, ECDSA P-256).
// Immutable after Load; Sign and the accessors are safe from any number of threads at once.
class HostSigner {
 public:
  // Loads a PEM private key. Refuses (kInvalidArgument) a file that group or others may access
  // (pki.h, CheckPrivateKeyFileMode), a file that holds no PEM private key, and a key that is not
  // ECDSA P-256. kNotFound when the file does not exist.
  static Result<std::unique_ptr<HostSigner>> Load(const std::string& key_file);
  ~HostSigner();
  HostSigner(const HostSigner&) = delete;
  HostSigner& operator=(const HostSigner&) = delete;

  // ECDSA P-256 over SHA-256(message), DER-encoded (at most 72 bytes). kCrypto on failure.
  Result<Bytes> Sign(ByteSpan message) const;
  // The public half as SubjectPublicKeyInfo DER, the form VerifySignature takes.
  const Bytes& public_key_der() const { return public_key_der_; }

 private:
  HostSigner(evp_pkey_st* key, Bytes public_key_der);
  evp_pkey_st* key_;
  Bytes public_key_der_;
};

// Verifies an ECDSA P-256 / SHA-256 DER signature of `message`. OK, or kIntegrity "receipt
// signature does not verify" (wrong key, altered message, altered or malformed signature);
// kInvalidArgument when `public_key_der` is not a SubjectPublicKeyInfo of a P-256 key.
Status VerifySignature(ByteSpan public_key_der, ByteSpan message, ByteSpan signature);

// Sign / verify a receipt in a role. SignReceipt refuses (kInvalidArgument) a receipt that fails
// ValidateReceipt, so nothing undecodable is ever signed. VerifyReceiptSignature names the role
// in its error.
Result<Bytes> SignReceipt(const HostSigner& signer, const Receipt& r, ReceiptRole role);
Status VerifyReceiptSignature(ByteSpan public_key_der, const Receipt& r, ReceiptRole role,
                              ByteSpan signature);

}  // namespace sod
