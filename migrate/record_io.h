// RecordWriter and RecordReader: one (channel, direction) of the record layer over a transport
// (migrate/PROTOCOL.md, "Records" and "Channel end").
//
// The writer assigns sequence numbers (0, 1, 2, ...; it refuses to reach 2^64-1), seals each
// record straight into a SendQueue buffer and extends the chain transcript. The reader is the
// mirror image and treats every byte as hostile: the header is decoded and checked (revision,
// type, suite, channel, expected sequence, per-type maximum length) before any payload byte is
// read, the record is verified before it is returned, and the first failure ends the reader:
// every later call returns the same error. A channel ends with a kChannelEnd record; a stream
// that ends without one is kTruncated.
#pragma once

#include <memory>
#include <optional>
#include <span>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/key_schedule.h"
#include "migrate/record.h"
#include "migrate/record_protection.h"
#include "migrate/transcript.h"
#include "migrate/transport.h"

namespace sod {

struct RecordParams {
  Suite suite = Suite::kAes256Gcm;
  uint32_t channel = 0;
  Direction direction = Direction::kInitiatorToResponder;
};

// Not thread-safe; one writer per (channel, direction), used by one thread at a time.
class RecordWriter {
 public:
  // `out` must outlive the writer. Keys are copied.
  static Result<std::unique_ptr<RecordWriter>> Create(SendQueue& out, const RecordParams& params,
                                                      const SessionKeys& keys);
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  // Seals one record whose payload is the concatenation of `parts`. Refuses (kInvalidArgument) a
  // payload above MaxPayload(type), kChannelEnd (use Finish), and any call after Finish or after
  // an error.
  Status Write(RecordType type, uint32_t round, std::span<const ByteSpan> parts);
  Status Write(RecordType type, uint32_t round, ByteSpan payload) {
    return Write(type, round, std::span<const ByteSpan>(&payload, 1));
  }
  // A kStream / kDeviceState / kVtpmState chunk without copying `data`.
  Status WriteChunk(RecordType type, uint32_t round, uint32_t stream, uint64_t offset,
                    ByteSpan data);
  // Hands everything written so far to the kernel.
  Status Flush();
  // Writes the kChannelEnd record and flushes. No record may follow.
  Status Finish();

  uint64_t records() const { return next_sequence_; }
  // Bytes put on the wire (headers, payloads and tags).
  uint64_t wire_bytes() const { return wire_bytes_; }
  const TranscriptMac& transcript() const { return transcript_; }
  const RecordParams& params() const { return params_; }

  // Tests only: pretend `n` records were already sent (to test the wrap refusal).
  void SetNextSequenceForTesting(uint64_t n) { next_sequence_ = n; }

 private:
  RecordWriter(SendQueue& out, const RecordParams& params, std::unique_ptr<RecordProtector> p,
               TranscriptMac t)
      : out_(out), params_(params), protector_(std::move(p)), transcript_(std::move(t)) {}
  Status WriteUnchecked(RecordType type, uint32_t round, std::span<const ByteSpan> parts);
  Status Fail(Status s);

  SendQueue& out_;
  RecordParams params_;
  std::unique_ptr<RecordProtector> protector_;
  TranscriptMac transcript_;
  uint64_t next_sequence_ = 0;
  uint64_t wire_bytes_ = 0;
  bool finished_ = false;
  Status failed_;
};

// A verified record. `payload` points into the reader's buffer and is valid until the next call
// to Next().
struct RecordView {
  RecordHeader header;
  MutableByteSpan payload;
};

// Not thread-safe; one reader per (channel, direction).
class RecordReader {
 public:
  // `in` must outlive the reader. `buffer_size` is raised to at least MaxRecordSize(); larger
  // buffers let one read() carry many records.
  static Result<std::unique_ptr<RecordReader>> Create(ByteStream& in, const RecordParams& params,
                                                      const SessionKeys& keys,
                                                      size_t buffer_size = 4u << 20);
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  // The next verified record, including the final kChannelEnd. After that, Next returns kClosed
  // without reading the transport again (kMalformed if bytes already received follow the end).
  Result<RecordView> Next();

  bool ended() const { return ended_; }
  uint64_t records() const { return next_sequence_; }
  // Bytes of verified records (headers, payloads and tags).
  uint64_t wire_bytes() const { return wire_bytes_; }
  const TranscriptMac& transcript() const { return transcript_; }
  const RecordParams& params() const { return params_; }

  void SetNextSequenceForTesting(uint64_t n) { next_sequence_ = n; }

 private:
  RecordReader(ByteStream& in, const RecordParams& params, std::unique_ptr<RecordProtector> p,
               TranscriptMac t, size_t buffer_size)
      : in_(in),
        params_(params),
        protector_(std::move(p)),
        transcript_(std::move(t)),
        buf_(buffer_size) {}
  Result<RecordView> ReadOne();
  // Makes `n` contiguous bytes available at begin_. `what` names them for errors.
  Status Fill(size_t n, const char* what);
  Status Fail(Status s);

  ByteStream& in_;
  RecordParams params_;
  std::unique_ptr<RecordProtector> protector_;
  TranscriptMac transcript_;
  Bytes buf_;
  size_t begin_ = 0;
  size_t end_ = 0;
  uint64_t next_sequence_ = 0;
  uint64_t wire_bytes_ = 0;
  bool ended_ = false;
  Status failed_;
};

}  // namespace sod
