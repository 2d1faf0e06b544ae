// In-memory transports for unit tests: a send queue that captures each committed record as its
// own buffer (so tests can drop, reorder, duplicate or corrupt records), and a ByteStream that
// serves fixed bytes and then an orderly end of stream, optionally in small pieces.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "migrate/transport.h"

namespace sod::testing {

class CaptureSendQueue final : public SendQueue {
 public:
  explicit CaptureSendQueue(size_t max_buffer = 2u << 20) : max_(max_buffer) {}
  Result<MutableByteSpan> Acquire(size_t n) override {
    if (n > max_) return Error(Errc::kInvalidArgument, "too large");
    pending_.assign(n, 0);
    return MutableByteSpan(pending_);
  }
  Status Commit(size_t used) override {
    pending_.resize(used);
    if (used) commits.push_back(pending_);
    return fail_commit_ ? Error(Errc::kIo, "injected send failure") : Status::Ok();
  }
  Status Flush() override { return Status::Ok(); }
  size_t max_buffer() const override { return max_; }

  void FailCommits() { fail_commit_ = true; }
  Bytes Joined() const {
    Bytes all;
    for (const Bytes& c : commits) all.insert(all.end(), c.begin(), c.end());
    return all;
  }

  std::vector<Bytes> commits;

 private:
  size_t max_;
  Bytes pending_;
  bool fail_commit_ = false;
};

class MemoryStream final : public ByteStream {
 public:
  // Serves `bytes`, at most `piece` bytes per ReadSome, then kClosed.
  explicit MemoryStream(Bytes bytes, size_t piece = SIZE_MAX)
      : in_(std::move(bytes)), piece_(piece) {}
  Status WriteAll(ByteSpan data) override {
    written.insert(written.end(), data.begin(), data.end());
    return Status::Ok();
  }
  Result<size_t> ReadSome(MutableByteSpan buf) override {
    if (pos_ == in_.size()) return Error(Errc::kClosed, "memory stream ended");
    size_t n = std::min({buf.size(), in_.size() - pos_, piece_});
    std::copy_n(in_.begin() + static_cast<ptrdiff_t>(pos_), n, buf.begin());
    pos_ += n;
    return n;
  }
  Status CloseWrite() override { return Status::Ok(); }

  Bytes written;

 private:
  Bytes in_;
  size_t pos_ = 0;
  size_t piece_;
};

// A ByteStream over one end of a socketpair (tests only; the product uses migrate/socket.h).
class FdStream final : public ByteStream {
 public:
  explicit FdStream(int fd) : fd_(fd) {}
  ~FdStream() override { ::close(fd_); }
  Status WriteAll(ByteSpan data) override {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return Error(Errc::kClosed, "socketpair send failed");
      data = data.subspan(static_cast<size_t>(n));
    }
    return Status::Ok();
  }
  Result<size_t> ReadSome(MutableByteSpan buf) override {
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n == 0) return Error(Errc::kClosed, "socketpair closed");
    if (n < 0) return Error(Errc::kIo, "socketpair recv failed");
    return static_cast<size_t>(n);
  }
  Status CloseWrite() override {
    ::shutdown(fd_, SHUT_WR);
    return Status::Ok();
  }

 private:
  int fd_;
};

// Two connected FdStreams.
inline std::pair<std::unique_ptr<FdStream>, std::unique_ptr<FdStream>> StreamPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return {};
  return {std::make_unique<FdStream>(fds[0]), std::make_unique<FdStream>(fds[1])};
}

inline Bytes Join(const std::vector<Bytes>& parts) {
  Bytes all;
  for (const Bytes& c : parts) all.insert(all.end(), c.begin(), c.end());
  return all;
}

}  // namespace sod::testing
