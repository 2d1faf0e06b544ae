#include "migrate/uring.h"

#include <liburing.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "migrate/socket.h"

namespace sod {
namespace {

constexpr uint64_t kCancelUserData = uint64_t{1} << 62;  // above every buffer number
constexpr size_t kMaxSendQueueBuffers = 256;
constexpr size_t kMaxSendBuffer = size_t{1} << 30;
constexpr size_t kMaxIoChunk = size_t{1} << 20;  // per UringStream SQE
// How long a destructor waits for cancelled sends before it leaks their buffers instead.
constexpr int64_t kDrainTimeoutMs = 5000;

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));
}

// The socket's SO_RCVTIMEO or SO_SNDTIMEO in milliseconds (0: none).
int64_t SocketTimeoutMs(int fd, int opt) {
  timeval tv{};
  socklen_t len = sizeof(tv);
  if (getsockopt(fd, SOL_SOCKET, opt, &tv, &len) != 0) return 0;
  return static_cast<int64_t>(tv.tv_sec) * 1000 + (tv.tv_usec + 999) / 1000;
}

__kernel_timespec ToTimespec(int64_t ms) {
  __kernel_timespec ts{};
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000;
  return ts;
}

bool OpsSupported(io_uring* ring, bool zero_copy) {
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) return false;
  bool ok = io_uring_opcode_supported(probe, IORING_OP_SEND) &&
            io_uring_opcode_supported(probe, IORING_OP_RECV) &&
            io_uring_opcode_supported(probe, IORING_OP_LINK_TIMEOUT) &&
            io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL) &&
            (!zero_copy || io_uring_opcode_supported(probe, IORING_OP_SEND_ZC));
  io_uring_free_probe(probe);
  return ok;
}

}  // namespace

// One io_uring instance. Not thread-safe. Once a submission fails the ring is broken (SQEs that
// point at caller memory may still sit in it) and every later Submit reports the same error.
class UringRing {
 public:
  static Result<std::unique_ptr<UringRing>> Create(unsigned entries, bool zero_copy,
                                                   const std::string& what) {
    std::unique_ptr<UringRing> r(new UringRing());
    io_uring_params params{};
    params.flags = IORING_SETUP_COOP_TASKRUN;
    int rc = io_uring_queue_init_params(entries, &r->ring_, &params);
    if (rc == -EINVAL) {  // kernel older than 5.19: no COOP_TASKRUN
      params = io_uring_params{};
      rc = io_uring_queue_init_params(entries, &r->ring_, &params);
    }
    if (rc < 0) {
      return Error(Errc::kUnsupported, what + ": io_uring setup: " + ErrnoText(-rc));
    }
    r->initialized_ = true;
    if (!OpsSupported(&r->ring_, zero_copy)) {
      return Error(Errc::kUnsupported, what + ": the kernel's io_uring lacks SEND/RECV/" +
                                           "LINK_TIMEOUT/ASYNC_CANCEL" +
                                           (zero_copy ? "/SEND_ZC" : ""));
    }
    return r;
  }
  ~UringRing() {
    if (initialized_) io_uring_queue_exit(&ring_);
  }
  UringRing(const UringRing&) = delete;
  UringRing& operator=(const UringRing&) = delete;

  io_uring* get() { return &ring_; }

  // A free SQE (submitting queued ones first if the queue is full), or nullptr.
  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr && Submit().ok()) sqe = io_uring_get_sqe(&ring_);
    return sqe;
  }

  Status Submit() {
    if (!broken_.ok()) return broken_;
    for (;;) {
      int rc = io_uring_submit(&ring_);
      if (rc >= 0) return Status::Ok();
      if (rc == -EINTR) continue;
      broken_ = Error(Errc::kIo, "io_uring_submit: " + ErrnoText(-rc));
      return broken_;
    }
  }

  // Waits for a completion: 0, -ETIME when timeout_ms (> 0) passed without one, other -errno.
  int Wait(io_uring_cqe** cqe, int64_t timeout_ms) {
    for (;;) {
      int rc;
      if (timeout_ms > 0) {
        __kernel_timespec ts = ToTimespec(timeout_ms);
        rc = io_uring_wait_cqe_timeout(&ring_, cqe, &ts);
      } else {
        rc = io_uring_wait_cqe(&ring_, cqe);
      }
      if (rc != -EINTR) return rc;
    }
  }

 private:
  UringRing() = default;
  io_uring ring_{};
  bool initialized_ = false;
  Status broken_;
};

std::string_view IoBackendName(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kUring:
      return "uring";
    case IoBackend::kPosix:
      return "posix";
  }
  return "unknown";
}

bool UringAvailable() {
  io_uring ring{};
  if (io_uring_queue_init(4, &ring, 0) < 0) return false;
  bool ok = OpsSupported(&ring, /*zero_copy=*/false);
  if (ok) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_cqe* cqe = nullptr;
    io_uring_prep_nop(sqe);
    ok = io_uring_submit(&ring) == 1 && io_uring_wait_cqe(&ring, &cqe) == 0 && cqe->res == 0;
    if (cqe != nullptr) io_uring_cqe_seen(&ring, cqe);
  }
  io_uring_queue_exit(&ring);
  return ok;
}

// ---------------------------------------------------------------------------------------------
// UringSendQueue

struct UringSendQueue::Slot {
  uint8_t* data = nullptr;
  size_t len = 0;              // committed bytes
  size_t sent = 0;             // bytes the kernel accepted so far
  bool in_flight = false;      // a send SQE for this slot has not completed
  uint32_t notifications = 0;  // zero-copy notifications still expected
};

UringSendQueue::UringSendQueue(int fd, size_t max_buffer, const UringSendQueueOptions& options)
    : fd_(fd), max_buffer_(max_buffer), options_(options), peer_(PeerAddress(fd)) {}

Result<std::unique_ptr<UringSendQueue>> UringSendQueue::Create(
    int fd, size_t max_buffer, const UringSendQueueOptions& options) {
  std::unique_ptr<UringSendQueue> q(new UringSendQueue(fd, max_buffer, options));
  SOD_RETURN_IF_ERROR(q->Init());
  return q;
}

Status UringSendQueue::Init() {
  const std::string what = "send queue to " + peer_;
  const size_t k = options_.buffers;
  if (k == 0 || k > kMaxSendQueueBuffers) {
    return Error(Errc::kInvalidArgument,
                 what + ": buffer count must be 1.." + std::to_string(kMaxSendQueueBuffers));
  }
  if (max_buffer_ == 0 || max_buffer_ > kMaxSendBuffer) {
    return Error(Errc::kInvalidArgument,
                 what + ": buffer size must be 1.." + std::to_string(kMaxSendBuffer));
  }
  send_timeout_ms_ = SocketTimeoutMs(fd_, SO_SNDTIMEO);

  // Room for a full chain plus one cancel per buffer.
  unsigned entries = 8;
  while (entries < 2 * k + 2) entries *= 2;
  SOD_ASSIGN_OR_RETURN(ring_, UringRing::Create(entries, options_.zero_copy, what));

  const size_t page = 4096;
  const size_t stride = (max_buffer_ + page - 1) / page * page;
  memory_size_ = stride * k;
  void* mem =
      mmap(nullptr, memory_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    memory_size_ = 0;
    return Error(Errc::kIo, what + ": mmap of " + std::to_string(stride * k) +
                                " bytes of send buffers: " + ErrnoText(errno));
  }
  memory_ = static_cast<uint8_t*>(mem);
  slots_ = std::make_unique<Slot[]>(k);
  std::vector<iovec> iovs(k);
  for (size_t i = 0; i < k; ++i) {
    slots_[i].data = memory_ + i * stride;
    iovs[i] = iovec{slots_[i].data, max_buffer_};
  }
  if (options_.zero_copy) {
    int rc = io_uring_register_buffers(ring_->get(), iovs.data(), static_cast<unsigned>(k));
    if (rc < 0) return Error(Errc::kUnsupported, what + ": register buffers: " + ErrnoText(-rc));
  }
  return Status::Ok();
}

UringSendQueue::~UringSendQueue() {
  if (ring_ != nullptr) CancelAndDrain();
  // With sends still in flight the kernel may yet copy from the buffers: keep the mapping
  // (leak it) rather than let a later mapping at the same address be sent. Zero-copy buffers are
  // registered, hence pinned by the kernel, and safe to unmap once no send is in flight.
  const bool buffers_idle = chain_sends_ == 0;
  ring_.reset();
  if (memory_ != nullptr && buffers_idle) munmap(memory_, memory_size_);
}

void UringSendQueue::CancelAndDrain() {
  if (chain_sends_ == 0) return;
  for (uint64_t s = oldest_; s < next_submit_; ++s) {
    if (!slots_[s % options_.buffers].in_flight) continue;
    io_uring_sqe* sqe = ring_->GetSqe();
    if (sqe == nullptr) break;
    io_uring_prep_cancel64(sqe, s, 0);
    sqe->user_data = kCancelUserData;
  }
  (void)ring_->Submit();
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kDrainTimeoutMs);
  while (chain_sends_ > 0) {
    int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(
                       deadline - std::chrono::steady_clock::now())
                       .count();
    if (left <= 0) return;
    io_uring_cqe* cqe = nullptr;
    if (ring_->Wait(&cqe, left) < 0) return;
    unsigned head;
    unsigned count = 0;
    io_uring_for_each_cqe(ring_->get(), head, cqe) {
      HandleCompletion(cqe->user_data, cqe->res, cqe->flags);
      ++count;
    }
    io_uring_cq_advance(ring_->get(), count);
  }
}

Status UringSendQueue::Fail(Status error) {
  if (error_.ok()) error_ = std::move(error);
  return error_;
}

void UringSendQueue::HandleCompletion(uint64_t user_data, int32_t res, uint32_t flags) {
  if (user_data >= kCancelUserData) return;  // our cancels, liburing's internal timeouts
  Slot& slot = slots_[user_data % options_.buffers];
  if (flags & IORING_CQE_F_NOTIF) {
    --slot.notifications;
    --notifications_;
    return;
  }
  slot.in_flight = false;
  --chain_sends_;
  if (flags & IORING_CQE_F_MORE) {
    ++slot.notifications;
    ++notifications_;
  }
  if (res > 0) {
    slot.sent += static_cast<size_t>(res);
  } else if (res == 0) {
    (void)Fail(Error(Errc::kIo, "send to " + peer_ + ": the kernel accepted no bytes"));
  } else if (res != -ECANCELED) {  // cancelled: an earlier link failed or came back short
    (void)Fail(SocketError("send to", peer_, -res));
  }
}

Status UringSendQueue::Reap(bool wait) {
  if (!error_.ok()) return error_;
  io_uring* ring = ring_->get();
  if (wait) {
    if (chain_sends_ == 0 && notifications_ == 0) {
      return Fail(
          Error(Errc::kInternal, "send queue to " + peer_ + ": waiting with nothing queued"));
    }
    ++stats_.waits;
    io_uring_cqe* cqe = nullptr;
    int rc = ring_->Wait(&cqe, send_timeout_ms_);
    if (rc == -ETIME) {
      return Fail(Error(Errc::kTimeout, "send to " + peer_ + ": no progress within " +
                                            std::to_string(send_timeout_ms_) + " ms"));
    }
    if (rc < 0)
      return Fail(Error(Errc::kIo, "send to " + peer_ + ": io_uring wait: " + ErrnoText(-rc)));
  }
  unsigned head;
  unsigned count = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(ring, head, cqe) {
    HandleCompletion(cqe->user_data, cqe->res, cqe->flags);
    ++count;
  }
  io_uring_cq_advance(ring, count);
  if (!error_.ok()) return error_;
  FreeCompletedSlots();
  return Advance();
}

void UringSendQueue::FreeCompletedSlots() {
  while (oldest_ < next_submit_) {
    const Slot& slot = slots_[oldest_ % options_.buffers];
    if (slot.in_flight || slot.sent < slot.len || slot.notifications > 0) break;
    ++oldest_;
  }
}

Status UringSendQueue::Advance() {
  if (chain_sends_ > 0) return Status::Ok();  // the chain in flight keeps the order
  // The last chain is complete. Buffers before oldest_ are released, hence fully sent; find the
  // first one that is not, and make sure nothing after it went out (that would reorder bytes).
  uint64_t resume = std::max(chain_begin_, oldest_);
  while (resume < next_submit_ &&
         slots_[resume % options_.buffers].sent == slots_[resume % options_.buffers].len) {
    ++resume;
  }
  for (uint64_t s = resume + 1; s < next_submit_; ++s) {
    if (slots_[s % options_.buffers].sent != 0) {
      return Fail(Error(Errc::kInternal, "send to " + peer_ + ": buffer " + std::to_string(s) +
                                             " went out before buffer " + std::to_string(resume) +
                                             " was complete"));
    }
  }
  next_submit_ = resume;
  if (next_submit_ == next_commit_) return Status::Ok();
  return SubmitChain();
}

Status UringSendQueue::SubmitChain() {
  chain_begin_ = next_submit_;
  ++stats_.chains;
  const unsigned sqe_flags_base = options_.async_sends ? IOSQE_ASYNC : 0;
  for (uint64_t s = next_submit_; s < next_commit_; ++s) {
    Slot& slot = slots_[s % options_.buffers];
    io_uring_sqe* sqe = io_uring_get_sqe(ring_->get());
    if (sqe == nullptr) {
      return Fail(Error(Errc::kInternal, "send queue to " + peer_ + ": submission queue full"));
    }
    const uint8_t* p = slot.data + slot.sent;
    const size_t rest = slot.len - slot.sent;
    if (options_.zero_copy) {
      io_uring_prep_send_zc_fixed(sqe, fd_, p, rest, MSG_NOSIGNAL | MSG_WAITALL, 0,
                                  static_cast<unsigned>(s % options_.buffers));
    } else {
      io_uring_prep_send(sqe, fd_, p, rest, MSG_NOSIGNAL | MSG_WAITALL);
    }
    sqe->user_data = s;
    if (slot.sent > 0) ++stats_.resubmitted;
    ++stats_.sends;
    io_uring_sqe_set_flags(sqe, sqe_flags_base | (s + 1 < next_commit_ ? IOSQE_IO_LINK : 0));
    slot.in_flight = true;
    ++chain_sends_;
  }
  next_submit_ = next_commit_;
  Status st = ring_->Submit();
  if (!st.ok()) return Fail(st.WithContext("send to " + peer_));
  return Status::Ok();
}

Result<MutableByteSpan> UringSendQueue::Acquire(size_t n) {
  if (!error_.ok()) return error_;
  if (acquired_) {
    return Error(Errc::kInternal,
                 "send queue to " + peer_ + ": Acquire while a buffer is outstanding");
  }
  if (n > max_buffer_) {
    return Error(Errc::kInvalidArgument, "send queue to " + peer_ + ": buffer of " +
                                             std::to_string(n) + " bytes requested, maximum " +
                                             std::to_string(max_buffer_));
  }
  SOD_RETURN_IF_ERROR(Reap(/*wait=*/false));
  while (next_commit_ - oldest_ >= options_.buffers) SOD_RETURN_IF_ERROR(Reap(/*wait=*/true));
  acquired_ = true;
  acquired_size_ = n;
  return MutableByteSpan(slots_[next_commit_ % options_.buffers].data, n);
}

Status UringSendQueue::Commit(size_t used) {
  if (!error_.ok()) {
    acquired_ = false;
    return error_;
  }
  if (!acquired_ || used > acquired_size_) {
    return Error(Errc::kInternal, "send queue to " + peer_ + ": Commit without a matching Acquire");
  }
  acquired_ = false;
  if (used == 0) return Status::Ok();
  Slot& slot = slots_[next_commit_ % options_.buffers];
  slot.len = used;
  slot.sent = 0;
  ++next_commit_;
  return Reap(/*wait=*/false);
}

Status UringSendQueue::Flush() {
  SOD_RETURN_IF_ERROR(Reap(/*wait=*/false));
  while (chain_sends_ > 0 || next_submit_ < next_commit_) SOD_RETURN_IF_ERROR(Reap(/*wait=*/true));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// UringStream

namespace {

constexpr uint64_t kOpUserData = 1;
constexpr uint64_t kTimeoutUserData = 2;

struct OpResult {
  int res = 0;
  bool timed_out = false;
};

// Submits the request `prep` fills in, linked to a timeout when timeout_ms > 0, and waits for it
// (and for the timeout's own completion, so the ring is empty again on return).
template <typename Prep>
Result<OpResult> RunLinked(UringRing& ring, Prep prep, int64_t timeout_ms) {
  io_uring_sqe* sqe = ring.GetSqe();
  if (sqe == nullptr) return Error(Errc::kInternal, "io_uring submission queue full");
  prep(sqe);
  sqe->user_data = kOpUserData;
  __kernel_timespec ts = ToTimespec(timeout_ms);
  int expected = 1;
  if (timeout_ms > 0) {
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK);
    io_uring_sqe* t = ring.GetSqe();
    if (t == nullptr) return Error(Errc::kInternal, "io_uring submission queue full");
    io_uring_prep_link_timeout(t, &ts, 0);
    t->user_data = kTimeoutUserData;
    expected = 2;
  }
  SOD_RETURN_IF_ERROR(ring.Submit());
  OpResult out;
  while (expected > 0) {
    io_uring_cqe* cqe = nullptr;
    int rc = ring.Wait(&cqe, 0);
    if (rc < 0) return Error(Errc::kIo, "io_uring wait: " + ErrnoText(-rc));
    if (cqe->user_data == kOpUserData) {
      out.res = cqe->res;
      --expected;
    } else if (cqe->user_data == kTimeoutUserData) {
      out.timed_out = cqe->res == -ETIME;
      --expected;
    }
    io_uring_cqe_seen(ring.get(), cqe);
  }
  return out;
}

}  // namespace

UringStream::UringStream(int fd) : fd_(fd), peer_(PeerAddress(fd)) {}

UringStream::~UringStream() = default;

Result<std::unique_ptr<UringStream>> UringStream::Create(int fd) {
  std::unique_ptr<UringStream> s(new UringStream(fd));
  SOD_RETURN_IF_ERROR(s->Init());
  return s;
}

Status UringStream::Init() {
  recv_timeout_ms_ = SocketTimeoutMs(fd_, SO_RCVTIMEO);
  send_timeout_ms_ = SocketTimeoutMs(fd_, SO_SNDTIMEO);
  SOD_ASSIGN_OR_RETURN(rx_ring_, UringRing::Create(4, false, "stream from " + peer_));
  SOD_ASSIGN_OR_RETURN(tx_ring_, UringRing::Create(4, false, "stream to " + peer_));
  return Status::Ok();
}

Result<size_t> UringStream::ReadSome(MutableByteSpan buf) {
  if (buf.empty()) return Error(Errc::kInvalidArgument, "ReadSome with an empty buffer");
  const size_t len = std::min(buf.size(), kMaxIoChunk * 64);
  for (;;) {
    Result<OpResult> r = RunLinked(
        *rx_ring_, [&](io_uring_sqe* sqe) { io_uring_prep_recv(sqe, fd_, buf.data(), len, 0); },
        recv_timeout_ms_);
    if (!r.ok()) return r.status().WithContext("recv from " + peer_);
    if (r->res > 0) return static_cast<size_t>(r->res);
    if (r->res == 0)
      return Error(Errc::kClosed, "recv from " + peer_ + ": peer closed the connection");
    if (r->res == -EINTR) continue;
    if (r->res == -ECANCELED && r->timed_out) {
      return Error(Errc::kTimeout, "recv from " + peer_ + ": no data within " +
                                       std::to_string(recv_timeout_ms_) + " ms");
    }
    return SocketError("recv from", peer_, -r->res);
  }
}

Status UringStream::WriteAll(ByteSpan data) {
  if (!write_error_.ok()) return write_error_;
  size_t done = 0;
  while (done < data.size()) {
    const size_t chunk = std::min(data.size() - done, kMaxIoChunk);
    Result<OpResult> r = RunLinked(
        *tx_ring_,
        [&](io_uring_sqe* sqe) {
          io_uring_prep_send(sqe, fd_, data.data() + done, chunk, MSG_NOSIGNAL | MSG_WAITALL);
        },
        send_timeout_ms_);
    if (!r.ok()) {
      write_error_ = r.status().WithContext("send to " + peer_);
      return write_error_;
    }
    if (r->res > 0) {
      done += static_cast<size_t>(r->res);
      continue;
    }
    if (r->res == -EINTR) continue;
    if (r->res == 0) {
      write_error_ = Error(Errc::kIo, "send to " + peer_ + ": the kernel accepted no bytes");
    } else if (r->res == -ECANCELED && r->timed_out) {
      write_error_ = Error(Errc::kTimeout, "send to " + peer_ + ": no progress within " +
                                               std::to_string(send_timeout_ms_) + " ms");
    } else {
      write_error_ = SocketError("send to", peer_, -r->res);
    }
    return write_error_;
  }
  return Status::Ok();
}

Status UringStream::CloseWrite() {
  if (shutdown(fd_, SHUT_WR) != 0) return SocketError("shutdown to", peer_, errno);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Factories

Result<std::unique_ptr<SendQueue>> MakeSendQueue(int fd, size_t max_buffer, IoBackend backend) {
  if (backend != IoBackend::kPosix) {
    UringSendQueueOptions options;
    options.zero_copy = true;
    Result<std::unique_ptr<UringSendQueue>> q = UringSendQueue::Create(fd, max_buffer, options);
    if (!q.ok() && q.status().code() == Errc::kUnsupported) {
      options.zero_copy = false;  // kernel before 6.0, or buffers cannot be registered
      q = UringSendQueue::Create(fd, max_buffer, options);
    }
    if (q.ok()) return std::unique_ptr<SendQueue>(std::move(q).value());
    if (backend == IoBackend::kUring || q.status().code() != Errc::kUnsupported) return q.status();
  }
  return std::unique_ptr<SendQueue>(std::make_unique<SocketSendQueue>(fd, max_buffer));
}

Result<std::unique_ptr<ByteStream>> MakeStream(int fd, IoBackend backend) {
  if (backend != IoBackend::kPosix) {
    Result<std::unique_ptr<UringStream>> s = UringStream::Create(fd);
    if (s.ok()) return std::unique_ptr<ByteStream>(std::move(s).value());
    if (backend == IoBackend::kUring || s.status().code() != Errc::kUnsupported) return s.status();
  }
  return std::unique_ptr<ByteStream>(std::make_unique<SocketStream>(fd));
}

}  // namespace sod
