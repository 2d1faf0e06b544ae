#include "migrate/control.h"

#include <openssl/crypto.h>

#include <algorithm>

namespace sod {

namespace {

Status Bad(std::string_view msg, std::string_view detail) {
  return Error(Errc::kMalformed, std::string(msg) + ": " + std::string(detail));
}

bool ValidHostId(std::string_view s) {
  if (s.empty() || s.size() > kMaxHostId) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  return true;
}

// Booleans are one byte, 0 or 1; anything else is refused (one encoding per value).
bool ReadBool(ByteReader& r, bool& out) {
  uint8_t b = 0;
  if (!r.U8(b) || b > 1) return false;
  out = b == 1;
  return true;
}

// u32 length then bytes, refusing lengths above max before copying.
bool ReadBlob32(ByteReader& r, std::string& out, size_t max) {
  ByteSpan b;
  if (!r.Blob32(b, max)) return false;
  out.assign(b.begin(), b.end());
  return true;
}

// ---- per-message body codecs

void Put(ByteWriter& w, const HelloMsg& v) {
  w.U16(v.version_min);
  w.U16(v.version_max);
  w.U8(static_cast<uint8_t>(v.suites.size()));
  for (Suite s : v.suites) w.U8(static_cast<uint8_t>(s));
  w.U16(v.data_channels);
  w.Str16(v.host_id);
}
Status Get(ByteReader& r, HelloMsg& m) {
  uint8_t n = 0;
  if (!r.U16(m.version_min) || !r.U16(m.version_max) || !r.U8(n)) return Bad("hello", "truncated");
  if (m.version_min == 0 || m.version_min > m.version_max)
    return Bad("hello", "empty version range");
  if (n == 0 || n > 8) return Bad("hello", "suite count must be 1..8");
  m.suites.reserve(n);
  for (uint8_t i = 0; i < n; ++i) {
    uint8_t s = 0;
    if (!r.U8(s)) return Bad("hello", "truncated suite list");
    m.suites.push_back(static_cast<Suite>(s));  // unknown suites are skipped by negotiation
  }
  if (!r.U16(m.data_channels) || !r.Str16(m.host_id, kMaxHostId))
    return Bad("hello", "truncated or host id too long");
  if (m.data_channels > kMaxDataChannels) return Bad("hello", "too many data channels");
  if (!ValidHostId(m.host_id)) return Bad("hello", "invalid host id");
  return Status::Ok();
}

void Put(ByteWriter& w, const HelloAckMsg& v) {
  w.U16(v.version);
  w.U8(static_cast<uint8_t>(v.suite));
  w.U8(0);
  w.U16(v.data_channels);
}
Status Get(ByteReader& r, HelloAckMsg& m) {
  uint8_t suite = 0, reserved = 0;
  if (!r.U16(m.version) || !r.U8(suite) || !r.U8(reserved) || !r.U16(m.data_channels))
    return Bad("hello-ack", "truncated");
  if (reserved != 0) return Bad("hello-ack", "reserved != 0");
  if (SuiteTagSize(static_cast<Suite>(suite)) == 0)
    return Error(Errc::kUnsupported, "hello-ack: unknown suite " + std::to_string(suite));
  m.suite = static_cast<Suite>(suite);
  if (m.data_channels > kMaxDataChannels) return Bad("hello-ack", "too many data channels");
  return Status::Ok();
}

void Put(ByteWriter& w, const OfferMsg& v) {
  w.Raw(v.migration_id);
  w.Str16(v.vm_name);
  w.Blob32(ByteSpan(reinterpret_cast<const uint8_t*>(v.spec_json.data()), v.spec_json.size()));
  w.U64(v.ram_bytes);
  w.U8(v.verify_ram ? 1 : 0);
  w.U64(v.vtpm_epoch);
}
Status Get(ByteReader& r, OfferMsg& m) {
  if (!r.Raw(m.migration_id.data(), m.migration_id.size()) || !r.Str16(m.vm_name, kMaxVmName) ||
      !ReadBlob32(r, m.spec_json, kMaxVmSpecJson) || !r.U64(m.ram_bytes) ||
      !ReadBool(r, m.verify_ram) || !r.U64(m.vtpm_epoch))
    return Bad("offer", "truncated, over-long field or bad flag");
  if (m.vm_name.empty()) return Bad("offer", "empty VM name");
  return Status::Ok();
}

void Put(ByteWriter&, const PreparedMsg&) {}
Status Get(ByteReader&, PreparedMsg&) { return Status::Ok(); }

// u32 length then bytes, refusing lengths above max before copying.
bool ReadBytes32(ByteReader& r, Bytes& out, size_t max) {
  ByteSpan b;
  if (!r.Blob32(b, max)) return false;
  out.assign(b.begin(), b.end());
  return true;
}

void Put(ByteWriter& w, const SwitchoverCheckMsg& v) {
  w.U64(v.stream_bytes);
  w.U8(static_cast<uint8_t>(v.nonce.size()));
  w.Raw(v.nonce);
}
Status Get(ByteReader& r, SwitchoverCheckMsg& m) {
  uint8_t n = 0;
  ByteSpan nonce;
  if (!r.U64(m.stream_bytes) || !r.U8(n)) return Bad("switchover-check", "truncated");
  if (n != 0 && n != kAttestNonceSize)
    return Bad("switchover-check", "nonce must be empty or " + std::to_string(kAttestNonceSize) +
                                       " bytes");
  if (!r.Raw(n, nonce)) return Bad("switchover-check", "truncated nonce");
  m.nonce.assign(nonce.begin(), nonce.end());
  return Status::Ok();
}

void Put(ByteWriter& w, const SwitchoverOkMsg& v) { w.Blob32(v.evidence); }
Status Get(ByteReader& r, SwitchoverOkMsg& m) {
  if (!ReadBytes32(r, m.evidence, kMaxEvidence))
    return Bad("switchover-ok", "truncated or evidence too long");
  return Status::Ok();
}

void Put(ByteWriter& w, const CommitAckMsg& v) {
  w.U64(v.resumed_unix_ms);
  w.Str16(std::string_view(reinterpret_cast<const char*>(v.signature.data()), v.signature.size()));
}
Status Get(ByteReader& r, CommitAckMsg& m) {
  std::string sig;
  if (!r.U64(m.resumed_unix_ms) || !r.Str16(sig, kMaxSignature))
    return Bad("commit-ack", "truncated or signature too long");
  m.signature.assign(sig.begin(), sig.end());
  return Status::Ok();
}

void Put(ByteWriter& w, const QueryOutcomeMsg& v) { w.Raw(v.migration_id); }
Status Get(ByteReader& r, QueryOutcomeMsg& m) {
  if (!r.Raw(m.migration_id.data(), m.migration_id.size())) return Bad("query-outcome", "truncated");
  return Status::Ok();
}

void Put(ByteWriter& w, const OutcomeMsg& v) {
  w.Raw(v.migration_id);
  w.U8(static_cast<uint8_t>(v.outcome));
  w.U8(v.vm_running ? 1 : 0);
}
Status Get(ByteReader& r, OutcomeMsg& m) {
  uint8_t o = 0;
  if (!r.Raw(m.migration_id.data(), m.migration_id.size()) || !r.U8(o) ||
      !ReadBool(r, m.vm_running))
    return Bad("outcome", "truncated or bad flag");
  if (o > static_cast<uint8_t>(MigrationOutcome::kAborted))
    return Error(Errc::kUnsupported, "outcome: unknown outcome " + std::to_string(o));
  m.outcome = static_cast<MigrationOutcome>(o);
  return Status::Ok();
}

void Put(ByteWriter& w, const AttestChallengeMsg& v) { w.Raw(v.nonce); }
Status Get(ByteReader& r, AttestChallengeMsg& m) {
  if (!r.Raw(m.nonce.data(), m.nonce.size())) return Bad("attest-challenge", "truncated nonce");
  return Status::Ok();
}

void Put(ByteWriter& w, const EvidenceMsg& v) { w.Blob32(v.evidence); }
Status Get(ByteReader& r, EvidenceMsg& m) {
  if (!ReadBytes32(r, m.evidence, kMaxEvidence))
    return Bad("evidence", "truncated or evidence too long");
  if (m.evidence.empty()) return Bad("evidence", "empty evidence");
  return Status::Ok();
}

void Put(ByteWriter&, const AttestOkMsg&) {}
Status Get(ByteReader&, AttestOkMsg&) { return Status::Ok(); }

void Put(ByteWriter& w, const VtpmKeyMsg& v) {
  w.U64(v.vtpm_epoch);
  w.Raw(v.migration_key);
}
Status Get(ByteReader& r, VtpmKeyMsg& m) {
  if (!r.U64(m.vtpm_epoch) || !r.Raw(m.migration_key.data(), m.migration_key.size()))
    return Bad("vtpm-key", "truncated");
  if (m.vtpm_epoch == 0) return Bad("vtpm-key", "epoch 0 names no vTPM");
  return Status::Ok();
}

// Decodes the alternative of ControlMsg whose kType is `type`.
template <size_t I = 0>
Result<ControlMsg> DecodeAlternative(ControlType type, ByteReader& r) {
  if constexpr (I == std::variant_size_v<ControlMsg>) {
    return Error(Errc::kUnsupported,
                 "control: unknown message type " + std::to_string(static_cast<uint16_t>(type)));
  } else {
    using T = std::variant_alternative_t<I, ControlMsg>;
    if (T::kType != type) return DecodeAlternative<I + 1>(type, r);
    T m;
    SOD_RETURN_IF_ERROR(Get(r, m));
    return ControlMsg(std::move(m));
  }
}

template <size_t I = 0>
constexpr bool TypesDistinctAndInOrder() {
  if constexpr (I == std::variant_size_v<ControlMsg>) {
    return true;
  } else {
    using T = std::variant_alternative_t<I, ControlMsg>;
    return static_cast<size_t>(T::kType) == I + 1 && TypesDistinctAndInOrder<I + 1>();
  }
}
static_assert(TypesDistinctAndInOrder(), "ControlMsg alternatives must follow ControlType order");

constexpr std::string_view kNames[] = {"invalid",         "hello",         "hello-ack",
                                       "offer",           "prepared",      "switchover-check",
                                       "switchover-ok",   "commit-ack",    "query-outcome",
                                       "outcome",         "attest-challenge", "evidence",
                                       "attest-ok",       "vtpm-key"};
static_assert(std::size(kNames) == std::variant_size_v<ControlMsg> + 1);

}  // namespace

VtpmKeyMsg::~VtpmKeyMsg() { OPENSSL_cleanse(migration_key.data(), migration_key.size()); }

std::string_view ControlTypeName(ControlType t) {
  auto i = static_cast<size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

std::string_view ControlName(const ControlMsg& m) {
  return std::visit([](const auto& v) { return ControlTypeName(v.kType); }, m);
}

std::string_view MigrationOutcomeName(MigrationOutcome o) {
  switch (o) {
    case MigrationOutcome::kCommitted:
      return "committed";
    case MigrationOutcome::kAborted:
      return "aborted";
    case MigrationOutcome::kUnknown:
      break;
  }
  return "unknown";
}

Bytes EncodeControl(const ControlMsg& m) {
  Bytes out;
  ByteWriter w(out);
  std::visit(
      [&](const auto& v) {
        w.U16(static_cast<uint16_t>(v.kType));
        Put(w, v);
      },
      m);
  return out;
}

Result<ControlMsg> DecodeControl(ByteSpan payload) {
  if (payload.size() > MaxPayload(RecordType::kControl))
    return Error(Errc::kTooLarge, "control message above the maximum");
  ByteReader r(payload);
  uint16_t type = 0;
  if (!r.U16(type)) return Bad("control", "missing message type");
  if (type == 0) return Error(Errc::kUnsupported, "control: message type 0 (invalid)");
  SOD_ASSIGN_OR_RETURN(ControlMsg m, DecodeAlternative(static_cast<ControlType>(type), r));
  if (!r.done())
    return Bad("control " + std::string(ControlName(m)), "trailing bytes after the message");
  return m;
}

Result<HelloAckMsg> NegotiateHello(const HelloMsg& hello, const std::vector<Suite>& allowed,
                                   uint16_t max_data_channels) {
  uint16_t lo = std::max(hello.version_min, kProtocolVersionMin);
  uint16_t hi = std::min(hello.version_max, kProtocolVersionMax);
  if (lo > hi)
    return Error(Errc::kUnsupported,
                 "no common protocol version: peer speaks " + std::to_string(hello.version_min) +
                     ".." + std::to_string(hello.version_max) + ", we speak " +
                     std::to_string(kProtocolVersionMin) + ".." +
                     std::to_string(kProtocolVersionMax));
  HelloAckMsg ack;
  ack.version = hi;
  auto it = std::find_if(hello.suites.begin(), hello.suites.end(), [&](Suite s) {
    return std::find(allowed.begin(), allowed.end(), s) != allowed.end();
  });
  if (it == hello.suites.end()) return Error(Errc::kUnsupported, "no common record suite");
  ack.suite = *it;
  ack.data_channels = std::min(hello.data_channels, max_data_channels);
  return ack;
}

}  // namespace sod
