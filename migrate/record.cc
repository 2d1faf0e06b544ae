#include "migrate/record.h"

#include <algorithm>

namespace sod {

namespace {

struct TypeInfo {
  RecordType type;
  std::string_view name;
  uint32_t max_payload;
};
constexpr uint32_t kChunkMax = static_cast<uint32_t>(kChunkPrefixSize + kMaxDataChunk);
// Indexed by the numeric value of RecordType.
constexpr TypeInfo kTypes[] = {
    {RecordType::kInvalid, "invalid", 0},
    {RecordType::kStream, "stream", kChunkMax},
    {RecordType::kRoundBoundary, "round-boundary", 24},
    {RecordType::kDeviceState, "device-state", kChunkMax},
    {RecordType::kVtpmState, "vtpm-state", kChunkMax},
    {RecordType::kControl, "control", 64 * 1024},
    {RecordType::kCommit, "commit", 8 + kTranscriptSize + 2 + kMaxReceipt + 2 + kMaxSignature},
    {RecordType::kAbort, "abort", 2 + 2 + kMaxAbortReason},
    {RecordType::kChannelEnd, "channel-end", 8},
};
constexpr bool TypesInOrder() {
  for (size_t i = 0; i < std::size(kTypes); ++i)
    if (static_cast<size_t>(kTypes[i].type) != i) return false;
  return std::size(kTypes) == kMaxRecordType + 1;
}
static_assert(TypesInOrder(), "kTypes must list every RecordType in numeric order");

const TypeInfo* Info(RecordType t) {
  auto i = static_cast<size_t>(t);
  return i < std::size(kTypes) ? &kTypes[i] : nullptr;
}

Status Bad(std::string_view what, std::string_view detail) {
  std::string m(what);
  m += ": ";
  m += detail;
  return Error(Errc::kMalformed, std::move(m));
}

}  // namespace

std::string_view RecordTypeName(RecordType t) {
  const TypeInfo* i = Info(t);
  return i ? i->name : "unknown";
}

std::string_view SuiteName(Suite s) {
  switch (s) {
    case Suite::kAes256Gcm:
      return "aes-256-gcm";
    case Suite::kHmacSha256:
      return "hmac-sha256";
    case Suite::kInvalid:
      break;
  }
  return "invalid";
}

size_t SuiteTagSize(Suite s) {
  switch (s) {
    case Suite::kAes256Gcm:
      return 16;
    case Suite::kHmacSha256:
      return 32;
    case Suite::kInvalid:
      break;
  }
  return 0;
}

uint32_t MaxPayload(RecordType t) {
  const TypeInfo* i = Info(t);
  return i ? i->max_payload : 0;
}

size_t MaxRecordSize() {
  uint32_t m = 0;
  for (const TypeInfo& t : kTypes) m = std::max(m, t.max_payload);
  return kRecordHeaderSize + m + 32;
}

void EncodeRecordHeader(const RecordHeader& h, uint8_t out[kRecordHeaderSize]) {
  out[0] = h.revision;
  out[1] = static_cast<uint8_t>(h.type);
  out[2] = static_cast<uint8_t>(h.suite);
  out[3] = 0;
  StoreLe32(out + 4, h.channel);
  StoreLe64(out + 8, h.sequence);
  StoreLe32(out + 16, h.round);
  StoreLe32(out + 20, h.length);
}

Result<RecordHeader> DecodeRecordHeader(ByteSpan in) {
  if (in.size() < kRecordHeaderSize) return Bad("record header", "shorter than 24 bytes");
  const uint8_t* p = in.data();
  RecordHeader h;
  h.revision = p[0];
  if (h.revision != kRecordRevision)
    return Error(Errc::kUnsupported,
                 "record header: revision " + std::to_string(h.revision) + " (supported: 1)");
  if (p[1] == 0 || p[1] > kMaxRecordType)
    return Error(Errc::kUnsupported, "record header: unknown record type " + std::to_string(p[1]));
  h.type = static_cast<RecordType>(p[1]);
  if (SuiteTagSize(static_cast<Suite>(p[2])) == 0)
    return Error(Errc::kUnsupported, "record header: unknown suite " + std::to_string(p[2]));
  h.suite = static_cast<Suite>(p[2]);
  if (p[3] != 0) return Bad("record header", "reserved byte is not zero");
  h.channel = LoadLe32(p + 4);
  h.sequence = LoadLe64(p + 8);
  h.round = LoadLe32(p + 16);
  h.length = LoadLe32(p + 20);
  if (h.length > MaxPayload(h.type))
    return Error(Errc::kTooLarge, "record header: " + std::string(RecordTypeName(h.type)) +
                                      " payload of " + std::to_string(h.length) +
                                      " bytes exceeds the maximum " +
                                      std::to_string(MaxPayload(h.type)));
  return h;
}

void EncodeChunkPrefix(uint32_t stream, uint64_t offset, uint8_t out[kChunkPrefixSize]) {
  StoreLe32(out, stream);
  StoreLe32(out + 4, 0);
  StoreLe64(out + 8, offset);
}

Result<ChunkBody> DecodeChunk(ByteSpan payload) {
  ByteReader r(payload);
  ChunkBody b;
  uint32_t reserved = 0;
  if (!r.U32(b.stream) || !r.U32(reserved) || !r.U64(b.offset))
    return Bad("chunk", "shorter than its 16-byte prefix");
  if (reserved != 0) return Bad("chunk", "reserved field is not zero");
  if (r.remaining() > kMaxDataChunk) return Error(Errc::kTooLarge, "chunk: data above 1 MiB");
  if (b.offset > UINT64_MAX - r.remaining()) return Bad("chunk", "offset + length overflows");
  b.data = payload.subspan(kChunkPrefixSize);
  return b;
}

void EncodeRoundBoundary(const RoundBoundaryBody& b, Bytes& out) {
  ByteWriter w(out);
  w.U64(b.stream_offset);
  w.U64(b.dirty_pages);
  w.U64(b.round_bytes);
}

Result<RoundBoundaryBody> DecodeRoundBoundary(ByteSpan payload) {
  ByteReader r(payload);
  RoundBoundaryBody b;
  if (!r.U64(b.stream_offset) || !r.U64(b.dirty_pages) || !r.U64(b.round_bytes) || !r.done())
    return Bad("round-boundary", "payload is not exactly 24 bytes");
  return b;
}

void EncodeCommit(const CommitBody& b, Bytes& out) {
  ByteWriter w(out);
  w.U64(b.records);
  w.Raw(b.transcript);
  w.U16(static_cast<uint16_t>(b.receipt.size()));
  w.Raw(b.receipt);
  w.U16(static_cast<uint16_t>(b.signature.size()));
  w.Raw(b.signature);
}

Result<CommitBody> DecodeCommit(ByteSpan payload) {
  ByteReader r(payload);
  CommitBody b;
  uint16_t receipt_len = 0, sig_len = 0;
  ByteSpan receipt, sig;
  if (!r.U64(b.records) || !r.Raw(b.transcript.data(), b.transcript.size()) ||
      !r.U16(receipt_len))
    return Bad("commit", "truncated");
  if (receipt_len > kMaxReceipt) return Error(Errc::kTooLarge, "commit: receipt above maximum");
  if (!r.Raw(receipt_len, receipt) || !r.U16(sig_len))
    return Bad("commit", "receipt length does not match");
  if (sig_len > kMaxSignature) return Error(Errc::kTooLarge, "commit: signature above maximum");
  if (!r.Raw(sig_len, sig) || !r.done()) return Bad("commit", "signature length does not match");
  b.receipt.assign(receipt.begin(), receipt.end());
  b.signature.assign(sig.begin(), sig.end());
  return b;
}

void EncodeAbort(const AbortBody& b, Bytes& out) {
  ByteWriter w(out);
  w.U16(static_cast<uint16_t>(b.code));
  std::string_view reason = b.reason;
  w.Str16(reason.substr(0, kMaxAbortReason));
}

Result<AbortBody> DecodeAbort(ByteSpan payload) {
  ByteReader r(payload);
  uint16_t code = 0;
  AbortBody b;
  if (!r.U16(code) || !r.Str16(b.reason, kMaxAbortReason) || !r.done())
    return Bad("abort", "malformed reason");
  auto errc = ErrcFromWire(code);
  if (!errc || *errc == Errc::kOk)
    return Error(Errc::kUnsupported, "abort: unknown error code " + std::to_string(code));
  b.code = *errc;
  return b;
}

void EncodeChannelEnd(const ChannelEndBody& b, Bytes& out) { ByteWriter(out).U64(b.records); }

Result<ChannelEndBody> DecodeChannelEnd(ByteSpan payload) {
  ByteReader r(payload);
  ChannelEndBody b;
  if (!r.U64(b.records) || !r.done()) return Bad("channel-end", "payload is not exactly 8 bytes");
  return b;
}

}  // namespace sod
