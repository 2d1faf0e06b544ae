// File descriptors: an owner (UniqueFd) and a poll with a deadline.
#pragma once

#include <chrono>

namespace sod {

// Owns one file descriptor and closes it on destruction. Movable, not copyable. Not thread-safe.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing; returns the fd (-1 when empty).
  int Release();
  // Closes the owned fd (if any) and takes `fd` instead.
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Waits until `events` (POLLIN, POLLOUT) are reported on `fd` or `deadline` passes; false on
// timeout, on an error, or when poll reports only other conditions (POLLERR, POLLHUP).
bool PollUntil(int fd, short events, std::chrono::steady_clock::time_point deadline);

}  // namespace sod
