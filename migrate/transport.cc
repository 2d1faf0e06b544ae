#include "migrate/transport.h"

#include <string>

namespace sod {

Status ReadExact(ByteStream& stream, MutableByteSpan buf) {
  size_t got = 0;
  while (got < buf.size()) {
    Result<size_t> n = stream.ReadSome(buf.subspan(got));
    if (!n.ok()) {
      Status s = n.status();
      if (s.code() == Errc::kClosed && got > 0)
        return Error(Errc::kTruncated, "stream ended after " + std::to_string(got) + " of " +
                                           std::to_string(buf.size()) + " bytes");
      return s;
    }
    got += *n;
  }
  return Status::Ok();
}

StreamSendQueue::StreamSendQueue(ByteStream& stream, size_t max_buffer)
    : stream_(stream), buf_(max_buffer) {}

Result<MutableByteSpan> StreamSendQueue::Acquire(size_t n) {
  if (outstanding_) return Error(Errc::kInternal, "Acquire while a buffer is outstanding");
  if (n > buf_.size()) return Error(Errc::kInvalidArgument, "send buffer request above maximum");
  outstanding_ = true;
  acquired_ = n;
  return MutableByteSpan(buf_.data(), n);
}

Status StreamSendQueue::Commit(size_t used) {
  if (!outstanding_ || used > acquired_) return Error(Errc::kInternal, "Commit without Acquire");
  outstanding_ = false;
  return stream_.WriteAll(ByteSpan(buf_.data(), used));
}

}  // namespace sod
