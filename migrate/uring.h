// io_uring (liburing) transports for data channels, and the factories that choose between them and
// the posix ones of socket.h.
//
// Ownership: like SocketStream, every transport here *borrows* its fd. The caller keeps the socket
// (its UniqueFd) open for at least as long as the transport; the transport never closes it.
//
// Timeouts: io_uring does not apply SO_RCVTIMEO/SO_SNDTIMEO, so UringStream and UringSendQueue read
// those values once, when they are created, and enforce them themselves (a wait that sees no
// completion for that long fails with kTimeout). Call SetIoTimeouts before creating them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/transport.h"

namespace sod {

enum class IoBackend {
  kAuto,   // io_uring when UringAvailable() and the ring can be set up, posix otherwise
  kUring,  // io_uring or an error (kUnsupported when unavailable)
  kPosix,  // send/recv (SocketStream, SocketSendQueue)
};

// "auto", "uring", "posix".
std::string_view IoBackendName(IoBackend backend);

// True when this process can set up an io_uring, run a request through it, and the kernel supports
// every operation these transports use (SEND, RECV, LINK_TIMEOUT, ASYNC_CANCEL). Costs a ring setup
// (tens of microseconds): callers that ask often should remember the answer.
bool UringAvailable();

// io_uring ring wrapper, defined in uring.cc (keeps liburing.h out of this header).
class UringRing;

struct UringSendQueueOptions {
  // Number of buffers, each max_buffer bytes, allocated once: at most this many committed buffers
  // are waiting to be sent before Acquire blocks.
  size_t buffers = 8;
  // IOSQE_ASYNC: sends run on an io_uring worker thread instead of being tried inline in
  // io_uring_enter, so the copy into the socket overlaps the caller's next Acquire/fill.
  bool async_sends = false;
  // IORING_OP_SEND_ZC from registered buffers (kernel 6.0+); a buffer is reused only after the
  // kernel's zero-copy notification (on a NIC: after TCP got the data acknowledged).
  bool zero_copy = false;
};

// Counters of a UringSendQueue, for tests and benchmarks.
struct UringSendQueueStats {
  uint64_t chains = 0;       // linked chains submitted
  uint64_t sends = 0;        // send SQEs submitted (chains * average chain length)
  uint64_t resubmitted = 0;  // sends that resumed a buffer after a short send
  uint64_t waits = 0;        // times a call blocked for a completion
};

// An asynchronous SendQueue over a connected TCP socket.
//
// Committed buffers are sent strictly in commit order: one chain of linked sends (IOSQE_IO_LINK,
// MSG_WAITALL) is in flight at a time; buffers committed meanwhile wait and go out as the next
// chain as soon as a later call to this queue finds the current one complete. A send that comes
// back short is resubmitted from where it stopped, before anything after it.
//
// Errors: a failed send (errno text and peer address in the message; kClosed for a reset or
// closed peer, kIo otherwise), or a wait without any completion for the socket's SO_SNDTIMEO
// (kTimeout), is reported by the call that notices it (possibly a later Acquire/Commit than the
// one that queued the buffer) and by every call after it: the queue is dead from then on.
//
// Thread-safety: none; one thread uses the queue (it may be created on another). The destructor
// cancels sends still in flight and waits (bounded) for the kernel to release the buffers.
class UringSendQueue final : public SendQueue {
 public:
  // Borrows `fd` (see top of file). Fails with kUnsupported when io_uring (or, with zero_copy,
  // SEND_ZC) is not available, kInvalidArgument on zero buffers or a zero/oversized max_buffer.
  static Result<std::unique_ptr<UringSendQueue>> Create(int fd, size_t max_buffer,
                                                        const UringSendQueueOptions& options = {});
  ~UringSendQueue() override;

  Result<MutableByteSpan> Acquire(size_t n) override;
  Status Commit(size_t used) override;
  Status Flush() override;
  size_t max_buffer() const override { return max_buffer_; }

  const std::string& peer() const { return peer_; }
  const UringSendQueueStats& stats() const { return stats_; }

 private:
  struct Slot;
  UringSendQueue(int fd, size_t max_buffer, const UringSendQueueOptions& options);
  Status Init();
  // Reaps every available completion; with `wait`, first blocks for at least one (or the timeout).
  Status Reap(bool wait);
  void HandleCompletion(uint64_t user_data, int32_t res, uint32_t flags);
  // When no chain is in flight: finds where the last one stopped and submits the next.
  Status Advance();
  Status SubmitChain();
  void FreeCompletedSlots();
  Status Fail(Status error);
  void CancelAndDrain();

  const int fd_;
  const size_t max_buffer_;
  const UringSendQueueOptions options_;
  const std::string peer_;
  int64_t send_timeout_ms_ = 0;  // 0: none
  std::unique_ptr<UringRing> ring_;
  uint8_t* memory_ = nullptr;  // buffers * max_buffer bytes, mmap'ed
  size_t memory_size_ = 0;
  std::unique_ptr<Slot[]> slots_;
  // Buffers are numbered in commit order; buffer s lives in slot s % buffers.
  uint64_t oldest_ = 0;       // first buffer not yet released
  uint64_t chain_begin_ = 0;  // first buffer of the chain in flight (or of the last one)
  uint64_t next_submit_ = 0;  // first committed buffer not yet part of a chain
  uint64_t next_commit_ = 0;  // the buffer the next Acquire hands out
  size_t chain_sends_ = 0;    // send completions still expected for the chain in flight
  size_t notifications_ = 0;  // zero-copy notifications still expected
  bool acquired_ = false;
  size_t acquired_size_ = 0;
  Status error_;
  UringSendQueueStats stats_;
};

// A ByteStream over a connected TCP socket: ReadSome is one IORING_OP_RECV, WriteAll a sequence of
// IORING_OP_SEND (MSG_WAITALL), each submitted and waited for synchronously, with a linked timeout
// (IORING_OP_LINK_TIMEOUT) from the socket's SO_RCVTIMEO / SO_SNDTIMEO at creation.
//
// A ReadSome that times out consumed nothing and may be retried. A WriteAll that fails (including
// kTimeout) leaves an unknown number of bytes sent: every later WriteAll returns the same error.
// Thread-safety: one thread may read while another writes (each direction has its own ring).
class UringStream final : public ByteStream {
 public:
  // Borrows `fd` (see top of file). kUnsupported when io_uring is not available.
  static Result<std::unique_ptr<UringStream>> Create(int fd);
  ~UringStream() override;

  Status WriteAll(ByteSpan data) override;
  Result<size_t> ReadSome(MutableByteSpan buf) override;
  // shutdown(SHUT_WR). Precondition: no WriteAll running.
  Status CloseWrite() override;

  const std::string& peer() const { return peer_; }

 private:
  UringStream(int fd);
  Status Init();

  const int fd_;
  const std::string peer_;
  int64_t recv_timeout_ms_ = 0;  // 0: none
  int64_t send_timeout_ms_ = 0;
  std::unique_ptr<UringRing> rx_ring_;
  std::unique_ptr<UringRing> tx_ring_;
  Status write_error_;
};

// The SendQueue of a data channel over the connected socket `fd` (borrowed, see top of file),
// with buffers of max_buffer bytes: a UringSendQueue with 8 zero-copy buffers, else (no SEND_ZC,
// buffers not registrable) one with 8 plain-send buffers, else (kAuto only) a SocketSendQueue.
// Zero-copy measured ~2x the throughput of the others on loopback (bench/transport_bench.cc);
// on a real NIC a buffer is released only once TCP has it acknowledged, so at most
// 8 * max_buffer bytes are in flight per round trip.
Result<std::unique_ptr<SendQueue>> MakeSendQueue(int fd, size_t max_buffer, IoBackend backend);

// The ByteStream of a data channel over the connected socket `fd` (borrowed): UringStream or
// SocketStream.
Result<std::unique_ptr<ByteStream>> MakeStream(int fd, IoBackend backend);

}  // namespace sod
