// The record: sod's unit of protected data on every channel (migrate/PROTOCOL.md, "Records").
//
// Wire layout (little-endian), header = associated data of the record's protection:
//
//   offset size field
//   0      1    revision   record-layer revision, kRecordRevision
//   1      1    type       RecordType, 0 = Invalid
//   2      1    suite      Suite, 0 = Invalid; must match the session's suite
//   3      1    reserved   must be 0
//   4      4    channel    channel id (0 = control channel, 1.. = data channels)
//   8      8    sequence   per (channel, direction), starts at 0, never wraps
//   16     4    round      pre-copy round the record belongs to (0 = before the first)
//   20     4    length     payload length in bytes (ciphertext length; equals plaintext length)
//   24     len  payload
//   24+len tag  16 bytes (kAes256Gcm) or 32 bytes (kHmacSha256)
//
// This file is pure framing: it knows where the tag goes and how long it is, and nothing about
// the cipher (record_protection.h) or the transport (record_io.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

inline constexpr uint8_t kRecordRevision = 1;
inline constexpr size_t kRecordHeaderSize = 24;

enum class RecordType : uint8_t {
  kInvalid = 0,
  kStream = 1,         // a chunk of a QEMU migration stream (proxy mode: RAM + devices)
  kRoundBoundary = 2,  // end of a pre-copy round
  kDeviceState = 3,    // a chunk of device state (engine mode: QEMU's non-RAM stream)
  kVtpmState = 4,      // a chunk of vTPM state
  kControl = 5,        // a control message (control.h)
  kCommit = 6,         // the sender's commit: record count + transcript + signature
  kAbort = 7,          // the sender aborts: error code + reason
  kChannelEnd = 8,     // last record of a channel direction: record count
};
inline constexpr uint8_t kMaxRecordType = 8;

// Record protection suite, negotiated per session from the VM's security row.
enum class Suite : uint8_t {
  kInvalid = 0,
  kAes256Gcm = 1,   // confidentiality + integrity (AEAD)
  kHmacSha256 = 2,  // integrity only: payload in clear, HMAC-SHA256 over header + payload
};

std::string_view RecordTypeName(RecordType t);
std::string_view SuiteName(Suite s);
// Tag length of a suite; 0 for an invalid suite.
size_t SuiteTagSize(Suite s);
// Largest payload a record of this type may carry; 0 for an invalid type. Checked by the reader
// before it reads (and allocates for) the payload, and by the writer before it seals.
uint32_t MaxPayload(RecordType t);
// The largest record on the wire: header + largest payload + largest tag.
inline constexpr size_t kMaxDataChunk = 1u
                                        << 20;  // data bytes in one kStream/kDeviceState/kVtpmState
size_t MaxRecordSize();

struct RecordHeader {
  uint8_t revision = kRecordRevision;
  RecordType type = RecordType::kInvalid;
  Suite suite = Suite::kInvalid;
  uint32_t channel = 0;
  uint64_t sequence = 0;
  uint32_t round = 0;
  uint32_t length = 0;

  bool operator==(const RecordHeader&) const = default;
};

void EncodeRecordHeader(const RecordHeader& h, uint8_t out[kRecordHeaderSize]);
// Decodes and validates a header: revision, known type, known suite, reserved = 0, and
// length <= MaxPayload(type). Never allocates; any failure names the field.
Result<RecordHeader> DecodeRecordHeader(ByteSpan in);

// ---- Payload bodies. Each has Encode (appends) and Decode (the whole payload, no trailing
// bytes). Borrowed spans point into the decoded payload.

// kStream, kDeviceState, kVtpmState: a piece of a byte stream at a given offset.
//   u32 stream   which stream (kStream: 0; kVtpmState: the vTPM blob kind)
//   u32 reserved must be 0
//   u64 offset   offset of data[0] in that stream
//   data         the rest of the payload (<= kMaxDataChunk)
inline constexpr size_t kChunkPrefixSize = 16;
struct ChunkBody {
  uint32_t stream = 0;
  uint64_t offset = 0;
  ByteSpan data;
};
void EncodeChunkPrefix(uint32_t stream, uint64_t offset, uint8_t out[kChunkPrefixSize]);
Result<ChunkBody> DecodeChunk(ByteSpan payload);

// kRoundBoundary: u64 stream_offset (bytes of the stream before the boundary), u64 dirty_pages,
// u64 round_bytes.
struct RoundBoundaryBody {
  uint64_t stream_offset = 0;
  uint64_t dirty_pages = 0;
  uint64_t round_bytes = 0;
  bool operator==(const RoundBoundaryBody&) const = default;
};
void EncodeRoundBoundary(const RoundBoundaryBody& b, Bytes& out);
Result<RoundBoundaryBody> DecodeRoundBoundary(ByteSpan payload);

// kCommit: u64 records (records the sender sent towards the receiver on all channels, this one
// excluded), 32-byte session transcript (computed before this record), u16 receipt length,
// receipt (the encoded Receipt, <= kMaxReceipt), u16 signature length, the sender's signature
// over the receipt (<= kMaxSignature).
inline constexpr size_t kTranscriptSize = 32;
inline constexpr size_t kMaxSignature = 1024;
inline constexpr size_t kMaxReceipt = 4096;
struct CommitBody {
  uint64_t records = 0;
  std::array<uint8_t, kTranscriptSize> transcript{};
  Bytes receipt;
  Bytes signature;
  bool operator==(const CommitBody&) const = default;
};
void EncodeCommit(const CommitBody& b, Bytes& out);
Result<CommitBody> DecodeCommit(ByteSpan payload);

// kAbort: u16 error code (Errc), u16 length, reason text (<= kMaxAbortReason, UTF-8).
inline constexpr size_t kMaxAbortReason = 1024;
struct AbortBody {
  Errc code = Errc::kInternal;
  std::string reason;
  bool operator==(const AbortBody&) const = default;
};
void EncodeAbort(const AbortBody& b, Bytes& out);
Result<AbortBody> DecodeAbort(ByteSpan payload);

// kChannelEnd: u64 records sent on this channel direction before this record.
struct ChannelEndBody {
  uint64_t records = 0;
  bool operator==(const ChannelEndBody&) const = default;
};
void EncodeChannelEnd(const ChannelEndBody& b, Bytes& out);
Result<ChannelEndBody> DecodeChannelEnd(ByteSpan payload);

}  // namespace sod
