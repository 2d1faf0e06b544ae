#include "attest/evidence.h"

#include <algorithm>
#include <bit>
#include <string_view>
#include <tuple>

#include "attest/tpm_wire.h"
#include "migrate/control.h"
#include "migrate/pki.h"

namespace sod::attest {

static_assert(kMaxEvidenceSize <= ::sod::kMaxEvidence,
              "evidence must fit the Evidence and SwitchoverOk control messages");

namespace {

constexpr std::string_view kQualifyingPrefix = "sod-attest-v1";
constexpr std::string_view kClaimsPrefix = "sod-claims-v1";
constexpr std::string_view kViolationPrefix = "sod-runtime-violation";
constexpr uint32_t kPcrMaskAll = (1u << 24) - 1;

Status Bad(std::string_view detail) {
  return Error(Errc::kMalformed, "evidence: " + std::string(detail));
}

Status TooLarge(std::string_view field, size_t n, size_t max) {
  return Error(Errc::kTooLarge, "evidence: " + std::string(field) + " length " + std::to_string(n) +
                                    " above " + std::to_string(max));
}

// u16 length then bytes; the length is checked against `max` before anything is copied.
Status ReadString(ByteReader& r, std::string_view field, size_t max, std::string& out) {
  uint16_t n = 0;
  if (!r.U16(n)) return Bad("truncated at " + std::string(field) + " length");
  if (n > max) return TooLarge(field, n, max);
  ByteSpan raw;
  if (!r.Raw(n, raw)) return Bad("truncated inside " + std::string(field));
  out.assign(reinterpret_cast<const char*>(raw.data()), raw.size());
  return Status::Ok();
}

// u32 length (1..max) then bytes.
Status ReadBlob(ByteReader& r, std::string_view field, size_t max, Bytes& out) {
  uint32_t n = 0;
  if (!r.U32(n)) return Bad("truncated at " + std::string(field) + " length");
  if (n > max) return TooLarge(field, n, max);
  if (n == 0) return Bad(std::string(field) + " is empty");
  ByteSpan raw;
  if (!r.Raw(n, raw)) return Bad("truncated inside " + std::string(field));
  out.assign(raw.begin(), raw.end());
  return Status::Ok();
}

}  // namespace

Status ValidateArchitecture(std::string_view a) {
  if (a.empty()) return Error(Errc::kInvalidArgument, "architecture is empty");
  if (a.size() > kMaxEvidenceArchitecture)
    return Error(
        Errc::kInvalidArgument,
        "architecture is longer than " + std::to_string(kMaxEvidenceArchitecture) + " characters");
  for (char c : a) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok)
      return Error(Errc::kInvalidArgument,
                   "architecture: only letters, digits, '.', '_' and '-' are allowed");
  }
  return Status::Ok();
}

Bytes EncodeEvidence(const Evidence& e) {
  auto clamp = [](std::string_view s, size_t max) { return s.substr(0, max); };
  auto clamp_bytes = [](const Bytes& b, size_t max) {
    return ByteSpan(b).first(std::min(b.size(), max));
  };
  Bytes out;
  out.reserve(256 + e.capability_row.size() + e.pcrs.values.size() * 32 + e.quote_attest.size() +
              e.quote_signature.size());
  ByteWriter w(out);
  w.U16(kEvidenceVersion);
  w.Str16(clamp(e.host_id, kMaxEvidenceHostId));
  w.Str16(clamp(e.architecture, kMaxEvidenceArchitecture));
  w.Str16(clamp(e.capability_row, kMaxEvidenceCapabilityRow));
  w.U64(e.timestamp_unix_ms);
  w.U32(e.violation_count);
  w.U32(e.pcrs.selection.mask & kPcrMaskAll);
  const size_t n = std::min(e.pcrs.values.size(), kMaxEvidencePcrs);
  w.U16(static_cast<uint16_t>(n));
  for (size_t i = 0; i < n; ++i) w.Raw(e.pcrs.values[i]);
  w.Blob32(clamp_bytes(e.quote_attest, kMaxQuoteAttest));
  w.Blob32(clamp_bytes(e.quote_signature, kMaxQuoteSignature));
  return out;
}

Result<Evidence> DecodeEvidence(ByteSpan in) {
  if (in.size() > kMaxEvidenceSize)
    return Error(Errc::kTooLarge, "evidence: " + std::to_string(in.size()) + " bytes, above " +
                                      std::to_string(kMaxEvidenceSize));
  ByteReader r(in);
  Evidence e;
  uint16_t version = 0;
  if (!r.U16(version)) return Bad("truncated at version");
  if (version != kEvidenceVersion)
    return Error(Errc::kUnsupported, "evidence: unknown version " + std::to_string(version) +
                                         " (this host reads " + std::to_string(kEvidenceVersion) +
                                         ")");
  SOD_RETURN_IF_ERROR(ReadString(r, "host_id", kMaxEvidenceHostId, e.host_id));
  if (Status s = ValidateHostId(e.host_id); !s.ok()) return Bad("host_id: " + s.message());
  SOD_RETURN_IF_ERROR(ReadString(r, "architecture", kMaxEvidenceArchitecture, e.architecture));
  if (Status s = ValidateArchitecture(e.architecture); !s.ok()) return Bad(s.message());
  SOD_RETURN_IF_ERROR(ReadString(r, "capability_row", kMaxEvidenceCapabilityRow, e.capability_row));
  if (!IsWellFormedUtf8(e.capability_row)) return Bad("capability_row is not UTF-8");
  if (!r.U64(e.timestamp_unix_ms) || !r.U32(e.violation_count))
    return Bad("truncated in timestamp_unix_ms or violation_count");
  uint32_t mask = 0;
  uint16_t count = 0;
  if (!r.U32(mask) || !r.U16(count)) return Bad("truncated in pcr_mask or pcr_count");
  if ((mask & ~kPcrMaskAll) != 0) return Bad("pcr_mask selects PCRs above 23");
  if (count != static_cast<uint16_t>(std::popcount(mask)))
    return Bad("pcr_count " + std::to_string(count) + " but pcr_mask selects " +
               std::to_string(std::popcount(mask)) + " PCRs");
  e.pcrs.selection.mask = mask;
  e.pcrs.values.resize(count);
  for (PcrDigest& v : e.pcrs.values)
    if (!r.Raw(v.data(), v.size())) return Bad("truncated inside pcr_values");
  SOD_RETURN_IF_ERROR(ReadBlob(r, "quote_attest", kMaxQuoteAttest, e.quote_attest));
  SOD_RETURN_IF_ERROR(ReadBlob(r, "quote_signature", kMaxQuoteSignature, e.quote_signature));
  if (!r.done()) return Bad(std::to_string(r.remaining()) + " trailing bytes");
  return e;
}

Status ValidateEvidence(const Evidence& e) {
  for (const auto& [field, size, max] :
       {std::tuple<const char*, size_t, size_t>{"host_id", e.host_id.size(), kMaxEvidenceHostId},
        {"architecture", e.architecture.size(), kMaxEvidenceArchitecture},
        {"capability_row", e.capability_row.size(), kMaxEvidenceCapabilityRow},
        {"quote_attest", e.quote_attest.size(), kMaxQuoteAttest},
        {"quote_signature", e.quote_signature.size(), kMaxQuoteSignature}}) {
    if (size > max)
      return Error(Errc::kInvalidArgument, "evidence: " + std::string(field) + " length " +
                                               std::to_string(size) + " above " +
                                               std::to_string(max));
  }
  if (e.pcrs.values.size() != e.pcrs.selection.Indices().size() ||
      (e.pcrs.selection.mask & ~kPcrMaskAll) != 0)
    return Error(Errc::kInvalidArgument, "evidence: " + std::to_string(e.pcrs.values.size()) +
                                             " PCR values for selection mask " +
                                             std::to_string(e.pcrs.selection.mask));
  Result<Evidence> back = DecodeEvidence(EncodeEvidence(e));
  if (!back.ok()) return Error(Errc::kInvalidArgument, back.status().message());
  if (!(*back == e)) return Error(Errc::kInternal, "evidence: encoding does not round-trip");
  return Status::Ok();
}

PcrDigest ClaimsDigest(const Evidence& e) {
  Bytes in;
  ByteWriter w(in);
  w.Raw(ByteSpan(reinterpret_cast<const uint8_t*>(kClaimsPrefix.data()), kClaimsPrefix.size()));
  for (const std::string* s : {&e.host_id, &e.architecture, &e.capability_row}) {
    w.U16(static_cast<uint16_t>(std::min<size_t>(s->size(), UINT16_MAX)));
    w.Raw(ByteSpan(reinterpret_cast<const uint8_t*>(s->data()),
                   std::min<size_t>(s->size(), UINT16_MAX)));
  }
  w.U64(e.timestamp_unix_ms);
  w.U32(e.violation_count);
  return Sha256(in);
}

PcrDigest QualifyingData(ByteSpan peer_nonce, ByteSpan session_binding, const PcrDigest& claims) {
  const ByteSpan nonce = peer_nonce.first(std::min<size_t>(peer_nonce.size(), 255));
  const ByteSpan binding = session_binding.first(std::min<size_t>(session_binding.size(), 255));
  Bytes in;
  in.reserve(kQualifyingPrefix.size() + 2 + nonce.size() + binding.size());
  ByteWriter w(in);
  w.Raw(kQualifyingPrefix);
  w.U8(static_cast<uint8_t>(nonce.size()));
  w.Raw(nonce);
  w.U8(static_cast<uint8_t>(binding.size()));
  w.Raw(binding);
  w.Raw(claims);
  return Sha256(in);
}

PcrDigest ViolationEventDigest(uint64_t n) {
  uint8_t in[kViolationPrefix.size() + 8];
  std::copy(kViolationPrefix.begin(), kViolationPrefix.end(), in);
  StoreLe64(in + kViolationPrefix.size(), n);
  return Sha256(ByteSpan(in, sizeof(in)));
}

PcrDigest ViolationPcrValue(uint32_t count) {
  PcrDigest pcr{};
  uint8_t buf[64];
  for (uint64_t n = 1; n <= count; ++n) {
    const PcrDigest event = ViolationEventDigest(n);
    std::copy(pcr.begin(), pcr.end(), buf);
    std::copy(event.begin(), event.end(), buf + 32);
    pcr = Sha256(ByteSpan(buf, sizeof(buf)));
  }
  return pcr;
}

PcrSelection DefaultQuoteSelection() {
  PcrSelection s;
  s.mask = 0xffu | (1u << kViolationPcr);
  return s;
}

}  // namespace sod::attest
