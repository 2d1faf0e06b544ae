#include "migrate/stream_pump.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "migrate/socket.h"

namespace sod {

// ---------------------------------------------------------------------------------------------
// StreamPump

StreamPump::StreamPump(int stream_fd, std::vector<RecordWriter*> writers, size_t chunk_bytes)
    : fd_(stream_fd), writers_(std::move(writers)), chunk_bytes_(std::min(chunk_bytes, kMaxDataChunk)),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

StreamPump::~StreamPump() {
  Stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void StreamPump::SourceCompleted() {
  source_completed_.store(true);
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
}

void StreamPump::Start() {
  for (RecordWriter* w : writers_) threads_.emplace_back([this, w] { Run(w); });
}

void StreamPump::Stop() { stop_.store(true); }

Status StreamPump::error() const {
  std::lock_guard<std::mutex> l(err_mu_);
  return error_;
}

void StreamPump::Fail(const Status& s) {
  std::lock_guard<std::mutex> l(err_mu_);
  if (error_.ok()) error_ = s;
  stop_.store(true);
}

void StreamPump::MarkEof() {
  eof_ = true;
  eof_time_ = std::chrono::steady_clock::now();
}

Result<size_t> StreamPump::ReadPiece(std::vector<uint8_t>& buf, uint64_t& offset) {
  std::lock_guard<std::mutex> lock(read_mu_);
  if (eof_) return size_t{0};
  size_t got = 0;
  while (got == 0) {
    if (stop_.load()) return Error(Errc::kAborted, "stream pump stopped");
    const bool completed = source_completed_.load();
    if (!completed) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      int r = ::poll(p, wake_fd_ >= 0 ? 2 : 1, 100);  // wake up now and then to notice Stop()
      if (r < 0 && errno != EINTR) return SocketError("poll on", "the QEMU stream", errno);
      if (r <= 0 || !(p[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    }
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == EAGAIN && completed)) {
      MarkEof();
      return size_t{0};
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return SocketError("read from", "the QEMU stream", errno);
    }
    got = static_cast<size_t>(n);
  }
  // Take whatever else is already there, up to a full chunk, without waiting.
  while (got < buf.size()) {
    ssize_t n = ::recv(fd_, buf.data() + got, buf.size() - got, MSG_DONTWAIT);
    if (n <= 0) {
      if (n == 0) MarkEof();  // the next ReadPiece returns the end
      break;
    }
    got += static_cast<size_t>(n);
  }
  offset = offset_.fetch_add(got);
  if (observer_) observer_(ByteSpan(buf.data(), got));  // still in stream order: under read_mu_
  return got;
}

void StreamPump::Run(RecordWriter* w) {
  std::vector<uint8_t> buf(chunk_bytes_);
  for (;;) {
    uint64_t offset = 0;
    Result<size_t> n = ReadPiece(buf, offset);
    if (!n.ok()) {
      Fail(n.status());
      break;
    }
    if (*n == 0) {
      Status s = w->Finish();
      if (!s.ok()) Fail(s);
      break;
    }
    Status s = w->WriteChunk(RecordType::kStream, round_.load(std::memory_order_relaxed), 0,
                             offset, ByteSpan(buf.data(), *n));
    if (!s.ok()) {
      Fail(s);
      break;
    }
  }
  done_threads_.fetch_add(1);
}

Status StreamPump::Wait() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  Status e = error();
  if (!e.ok()) return e;
  if (stop_.load()) return Error(Errc::kAborted, "stream pump stopped");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// StreamSink

StreamSink::StreamSink(int qemu_fd, std::vector<RecordReader*> readers,
                       std::chrono::milliseconds gap_timeout)
    : fd_(qemu_fd), readers_(std::move(readers)), gap_timeout_(gap_timeout) {}

StreamSink::~StreamSink() {
  Stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void StreamSink::Start(std::function<void(const Status&)> on_error) {
  on_error_ = std::move(on_error);
  for (RecordReader* r : readers_) threads_.emplace_back([this, r] { Run(r); });
}

void StreamSink::Stop() {
  std::lock_guard<std::mutex> l(mu_);
  stop_ = true;
  cv_.notify_all();
}

uint64_t StreamSink::stream_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return next_offset_;
}

Status StreamSink::error() const {
  std::lock_guard<std::mutex> l(mu_);
  return error_;
}

void StreamSink::Fail(const Status& s) {
  bool first = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    // After Stop() the owner is already failing with its own reason; what its teardown breaks
    // (channels shut down, QEMU's socket closed) is not news for the peer.
    if (error_.ok() && !stop_) {
      error_ = s;
      first = true;
    }
    stop_ = true;
    cv_.notify_all();
  }
  if (first && on_error_) on_error_(s);
}

void StreamSink::Run(RecordReader* r) {
  const uint32_t channel = r->params().channel;
  const std::string where = "data channel " + std::to_string(channel);
  uint64_t last_end = 0;  // offsets on one channel only grow
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
    }
    Result<RecordView> rec = r->Next();
    if (!rec.ok()) return Fail(rec.status());
    if (rec->header.type == RecordType::kChannelEnd) {
      std::lock_guard<std::mutex> l(mu_);
      ++ended_;
      cv_.notify_all();
      return;
    }
    if (rec->header.type != RecordType::kStream)
      return Fail(Error(Errc::kState, where + ": unexpected " +
                                          std::string(RecordTypeName(rec->header.type)) +
                                          " record"));
    Result<ChunkBody> c = DecodeChunk(rec->payload);
    if (!c.ok()) return Fail(c.status().WithContext(where));
    if (c->stream != 0) return Fail(Error(Errc::kMalformed, where + ": unknown stream id"));
    if (c->offset < last_end)
      return Fail(Error(Errc::kSequence, where + ": stream offset went backwards"));
    last_end = c->offset + c->data.size();

    // Wait for our turn: every byte before this chunk has been written.
    {
      std::unique_lock<std::mutex> l(mu_);
      const auto deadline = std::chrono::steady_clock::now() + gap_timeout_;
      for (;;) {
        if (stop_) return;
        if (!writing_ && next_offset_ == c->offset) break;
        if (!writing_ && next_offset_ > c->offset) {
          l.unlock();
          return Fail(Error(Errc::kSequence, where + ": chunk at offset " +
                                                 std::to_string(c->offset) +
                                                 " overlaps bytes already delivered"));
        }
        if (!writing_ && ended_ + 1 == readers_.size()) {
          l.unlock();
          return Fail(Error(Errc::kSequence, "stream gap at offset " +
                                                 std::to_string(next_offset_) +
                                                 ": no channel carries it"));
        }
        if (cv_.wait_until(l, deadline) == std::cv_status::timeout) {
          l.unlock();
          return Fail(Error(Errc::kSequence, "stream gap at offset " +
                                                 std::to_string(next_offset_) +
                                                 " never filled"));
        }
      }
      writing_ = true;
    }
    ByteSpan data = c->data;
    if (observer_) observer_(data);  // our turn: in stream order
    Status ws;
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ws = SocketError("write to", "the destination QEMU", errno);
        break;
      }
      data = data.subspan(static_cast<size_t>(n));
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      writing_ = false;
      if (ws.ok()) next_offset_ += c->data.size();
      cv_.notify_all();
    }
    if (!ws.ok()) return Fail(ws);
  }
}

Status StreamSink::Wait() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  std::lock_guard<std::mutex> l(mu_);
  if (!error_.ok()) return error_;
  if (ended_ != readers_.size()) return Error(Errc::kAborted, "stream sink stopped");
  return Status::Ok();
}

}  // namespace sod
