// Byte transports below the record layer.
//
// The record layer (record_io.h) never touches sockets itself: it reads from a ByteStream and
// writes through a SendQueue. Implementations: SocketStream / StreamSendQueue (posix send/recv,
// socket.h), UringStream / UringSendQueue (io_uring, uring.h), TlsStream (OpenSSL, tls.h), and the
// in-memory fakes used by unit tests (tests/fake_transport.h).
#pragma once

#include <cstddef>
#include <memory>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

// A reliable, ordered byte stream. Not thread-safe: one reader and one writer at most, and the
// reader and writer may be different threads only where the implementation says so.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  ByteStream() = default;
  ByteStream(const ByteStream&) = delete;
  ByteStream& operator=(const ByteStream&) = delete;

  // Writes all of `data` or fails (kIo, kClosed, kTimeout).
  virtual Status WriteAll(ByteSpan data) = 0;
  // Reads between 1 and buf.size() bytes. Precondition: !buf.empty(). Returns kClosed on an
  // orderly end of stream, kTimeout when the configured receive deadline passed.
  virtual Result<size_t> ReadSome(MutableByteSpan buf) = 0;
  // Ends the sending direction (TCP FIN / TLS close_notify). Reading stays possible.
  virtual Status CloseWrite() = 0;
};

// Fills `buf` completely. An end of stream after some but not all bytes is kTruncated; an end of
// stream before the first byte is kClosed.
Status ReadExact(ByteStream& stream, MutableByteSpan buf);

// Output side of a data channel, built for zero-copy, pipelined sends: the record writer seals a
// record straight into a buffer that the queue owns, then commits it; an asynchronous queue
// (io_uring) sends it while the writer seals the next one.
class SendQueue {
 public:
  virtual ~SendQueue() = default;
  SendQueue() = default;
  SendQueue(const SendQueue&) = delete;
  SendQueue& operator=(const SendQueue&) = delete;

  // Returns a writable buffer of exactly n bytes, valid until the matching Commit. May block until
  // an earlier send completes. Precondition: n <= max_buffer(); no Acquire is outstanding.
  virtual Result<MutableByteSpan> Acquire(size_t n) = 0;
  // Queues the first `used` bytes of the outstanding buffer for sending (used <= its size).
  virtual Status Commit(size_t used) = 0;
  // Blocks until every committed byte has been handed to the kernel.
  virtual Status Flush() = 0;
  // Largest n that Acquire accepts.
  virtual size_t max_buffer() const = 0;
};

// A SendQueue over any ByteStream: one buffer, Commit writes synchronously.
class StreamSendQueue final : public SendQueue {
 public:
  // `stream` must outlive this queue.
  StreamSendQueue(ByteStream& stream, size_t max_buffer);
  Result<MutableByteSpan> Acquire(size_t n) override;
  Status Commit(size_t used) override;
  Status Flush() override { return Status::Ok(); }
  size_t max_buffer() const override { return buf_.size(); }

 private:
  ByteStream& stream_;
  Bytes buf_;
  size_t acquired_ = 0;
  bool outstanding_ = false;
};

}  // namespace sod
