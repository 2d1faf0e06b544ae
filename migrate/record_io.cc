#include "migrate/record_io.h"

#include <cstring>
#include <string>

namespace sod {

namespace {

std::string Where(const RecordParams& p) {
  return "channel " + std::to_string(p.channel) + " (" + std::string(DirectionName(p.direction)) +
         ")";
}

Result<std::unique_ptr<RecordProtector>> ProtectorFor(const RecordParams& params,
                                                      const SessionKeys& keys) {
  SOD_ASSIGN_OR_RETURN(ChannelKeys ck, keys.ForChannel(params.channel, params.direction));
  return MakeRecordProtector(params.suite, ck);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RecordWriter

Result<std::unique_ptr<RecordWriter>> RecordWriter::Create(SendQueue& out,
                                                           const RecordParams& params,
                                                           const SessionKeys& keys) {
  if (out.max_buffer() < MaxRecordSize())
    return Error(Errc::kInvalidArgument, "send queue buffers are smaller than the largest record");
  SOD_ASSIGN_OR_RETURN(auto protector, ProtectorFor(params, keys));
  SOD_ASSIGN_OR_RETURN(TranscriptMac t, TranscriptMac::Create(keys.transcript_key(), params.channel,
                                                              params.direction));
  return std::unique_ptr<RecordWriter>(
      new RecordWriter(out, params, std::move(protector), std::move(t)));
}

Status RecordWriter::Fail(Status s) {
  failed_ = s.WithContext("record writer on " + Where(params_));
  return failed_;
}

Status RecordWriter::Write(RecordType type, uint32_t round, std::span<const ByteSpan> parts) {
  if (type == RecordType::kChannelEnd)
    return Error(Errc::kInvalidArgument, "kChannelEnd is written by Finish()");
  return WriteUnchecked(type, round, parts);
}

Status RecordWriter::WriteUnchecked(RecordType type, uint32_t round,
                                    std::span<const ByteSpan> parts) {
  if (!failed_.ok()) return failed_;
  if (finished_) return Error(Errc::kState, "record written after the channel end");
  if (MaxPayload(type) == 0) return Error(Errc::kInvalidArgument, "invalid record type");
  size_t length = 0;
  for (ByteSpan p : parts) length += p.size();
  if (length > MaxPayload(type))
    return Error(Errc::kInvalidArgument, std::string(RecordTypeName(type)) + " payload of " +
                                             std::to_string(length) + " bytes above the maximum");
  if (next_sequence_ == UINT64_MAX)
    return Fail(Error(Errc::kExhausted, "sequence number space exhausted; refusing to wrap"));

  RecordHeader h;
  h.type = type;
  h.suite = params_.suite;
  h.channel = params_.channel;
  h.sequence = next_sequence_;
  h.round = round;
  h.length = static_cast<uint32_t>(length);
  const size_t tag = protector_->tag_size();
  Result<MutableByteSpan> buf = out_.Acquire(kRecordHeaderSize + length + tag);
  if (!buf.ok()) return Fail(buf.status());
  uint8_t* p = buf->data();
  EncodeRecordHeader(h, p);
  ByteSpan header(p, kRecordHeaderSize);
  MutableByteSpan payload(p + kRecordHeaderSize, length);
  MutableByteSpan tag_out(p + kRecordHeaderSize + length, tag);
  Status s = protector_->Seal(h.sequence, header, parts, payload, tag_out);
  if (s.ok()) s = transcript_.Absorb(header, tag_out);
  if (!s.ok()) {
    (void)out_.Commit(0);
    return Fail(s);
  }
  s = out_.Commit(kRecordHeaderSize + length + tag);
  if (!s.ok()) return Fail(s);
  ++next_sequence_;
  wire_bytes_ += kRecordHeaderSize + length + tag;
  return Status::Ok();
}

Status RecordWriter::WriteChunk(RecordType type, uint32_t round, uint32_t stream, uint64_t offset,
                                ByteSpan data) {
  if (type != RecordType::kStream && type != RecordType::kDeviceState &&
      type != RecordType::kVtpmState)
    return Error(Errc::kInvalidArgument, "WriteChunk needs a chunk record type");
  uint8_t prefix[kChunkPrefixSize];
  EncodeChunkPrefix(stream, offset, prefix);
  const ByteSpan parts[] = {ByteSpan(prefix), data};
  return Write(type, round, parts);
}

Status RecordWriter::Flush() {
  if (!failed_.ok()) return failed_;
  Status s = out_.Flush();
  return s.ok() ? s : Fail(s);
}

Status RecordWriter::Finish() {
  Bytes body;
  EncodeChannelEnd(ChannelEndBody{next_sequence_}, body);
  const ByteSpan parts[] = {ByteSpan(body)};
  SOD_RETURN_IF_ERROR(WriteUnchecked(RecordType::kChannelEnd, 0, parts));
  finished_ = true;
  return Flush();
}

// ---------------------------------------------------------------------------------------------
// RecordReader

Result<std::unique_ptr<RecordReader>> RecordReader::Create(ByteStream& in,
                                                           const RecordParams& params,
                                                           const SessionKeys& keys,
                                                           size_t buffer_size) {
  SOD_ASSIGN_OR_RETURN(auto protector, ProtectorFor(params, keys));
  SOD_ASSIGN_OR_RETURN(TranscriptMac t, TranscriptMac::Create(keys.transcript_key(), params.channel,
                                                              params.direction));
  if (buffer_size < MaxRecordSize()) buffer_size = MaxRecordSize();
  return std::unique_ptr<RecordReader>(
      new RecordReader(in, params, std::move(protector), std::move(t), buffer_size));
}

Status RecordReader::Fail(Status s) {
  failed_ = s.WithContext("record reader on " + Where(params_));
  return failed_;
}

Status RecordReader::Fill(size_t n, const char* what) {
  if (end_ - begin_ >= n) return Status::Ok();
  if (begin_ + n > buf_.size()) {  // compact: keep the partial record, drop consumed bytes
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  while (end_ - begin_ < n) {
    Result<size_t> got = in_.ReadSome(MutableByteSpan(buf_.data() + end_, buf_.size() - end_));
    if (!got.ok()) {
      Status s = got.status();
      if (s.code() != Errc::kClosed) return s;
      if (end_ == begin_ && std::strcmp(what, "header") == 0)
        return Error(Errc::kTruncated, "stream closed after record " +
                                           std::to_string(next_sequence_) +
                                           " without a channel-end record");
      return Error(Errc::kTruncated, std::string("stream closed inside a record ") + what +
                                         " (record " + std::to_string(next_sequence_) + ")");
    }
    end_ += *got;
  }
  return Status::Ok();
}

Result<RecordView> RecordReader::Next() {
  if (!failed_.ok()) return failed_;
  Result<RecordView> r = ReadOne();
  if (!r.ok() && !(ended_ && r.status().code() == Errc::kClosed)) return Fail(r.status());
  return r;
}

Result<RecordView> RecordReader::ReadOne() {
  if (ended_) {
    // Never blocks on the transport after the end; bytes that already arrived behind the end
    // record are a protocol violation.
    if (end_ != begin_) return Error(Errc::kMalformed, "bytes after the channel-end record");
    return Error(Errc::kClosed, "channel ended");
  }
  SOD_RETURN_IF_ERROR(Fill(kRecordHeaderSize, "header"));
  ByteSpan header_bytes(buf_.data() + begin_, kRecordHeaderSize);
  SOD_ASSIGN_OR_RETURN(RecordHeader h, DecodeRecordHeader(header_bytes));
  const std::string rec =
      "record " + std::to_string(h.sequence) + " (" + std::string(RecordTypeName(h.type)) + ")";
  if (h.suite != params_.suite)
    return Error(Errc::kUnsupported, rec + ": suite " + std::string(SuiteName(h.suite)) +
                                         " but the session uses " +
                                         std::string(SuiteName(params_.suite)));
  if (h.channel != params_.channel)
    return Error(Errc::kSequence, rec + ": belongs to channel " + std::to_string(h.channel));
  if (next_sequence_ == UINT64_MAX)
    return Error(Errc::kExhausted, "sequence number space exhausted; refusing to wrap");
  if (h.sequence != next_sequence_)
    return Error(Errc::kSequence,
                 rec + ": expected sequence " + std::to_string(next_sequence_) +
                     (h.sequence < next_sequence_ ? " (replayed or duplicated record)"
                                                  : " (dropped or reordered record)"));
  const size_t tag_size = protector_->tag_size();
  const size_t total = kRecordHeaderSize + h.length + tag_size;
  SOD_RETURN_IF_ERROR(Fill(total, "payload"));
  uint8_t* p = buf_.data() + begin_;  // Fill may have moved the bytes
  ByteSpan header(p, kRecordHeaderSize);
  MutableByteSpan payload(p + kRecordHeaderSize, h.length);
  ByteSpan tag(p + kRecordHeaderSize + h.length, tag_size);
  Status s = protector_->Open(h.sequence, header, payload, tag);
  if (!s.ok()) return s.WithContext(rec);
  SOD_RETURN_IF_ERROR(transcript_.Absorb(header, tag));
  begin_ += total;
  ++next_sequence_;
  wire_bytes_ += total;
  if (h.type == RecordType::kChannelEnd) {
    SOD_ASSIGN_OR_RETURN(ChannelEndBody end, DecodeChannelEnd(payload));
    if (end.records != h.sequence)
      return Error(Errc::kSequence, rec + ": says " + std::to_string(end.records) +
                                        " records were sent, " + std::to_string(h.sequence) +
                                        " arrived");
    ended_ = true;
  }
  return RecordView{h, payload};
}

}  // namespace sod
