// ControlInbox: a thread that receives the control channel of a session while the engine's main
// thread drives QEMU. Each control message is decoded as it arrives and queued; a peer's Abort
// record or a link failure is queued as an error and ends the thread. RoundBoundary records (the
// peer's progress echo) only prove the peer alive and are not queued.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "base/status.h"
#include "migrate/control.h"

namespace sod {

class Session;

class ControlInbox {
 public:
  // `session` must outlive the inbox. To stop a running inbox, shut the session down
  // (Session::Shutdown) or let the peer close it; the destructor joins the thread.
  explicit ControlInbox(Session& session) : session_(session) {}
  ~ControlInbox();
  ControlInbox(const ControlInbox&) = delete;
  ControlInbox& operator=(const ControlInbox&) = delete;

  void Start();
  // The next message or error, waiting at most `timeout` (kTimeout naming `what`).
  Result<ControlMsg> Next(std::chrono::milliseconds timeout, std::string_view what);
  // The first queued error (peer abort, link failure), if any, without consuming messages.
  std::optional<Status> PendingError() const;
  void Join();

 private:
  void Run();
  Session& session_;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Result<ControlMsg>> queue_;
};

}  // namespace sod
