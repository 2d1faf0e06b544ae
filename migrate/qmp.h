// QmpClient: a client for the QEMU Machine Protocol (QMP) over a unix stream socket.
//
// The migration engine drives QEMU through this class: capabilities, `getfd` + `migrate fd:NAME`
// on the source, `migrate-incoming fd:NAME` on the destination, `migrate-continue`, `cont`,
// `stop`, `quit`, queries, and the asynchronous events (MIGRATION, MIGRATION_PASS, STOP, RESUME).
//
// Wire format (QEMU docs/interop/qmp-spec.txt): QEMU sends a greeting {"QMP": {...}}, the client
// answers {"execute": "qmp_capabilities"}, then each command {"execute", "arguments", "id"} gets
// exactly one reply {"return": ..., "id"} or {"error": {"class", "desc"}, "id"}; events
// {"event", "data", "timestamp": {"seconds", "microseconds"}} may arrive at any time, including
// between a command and its reply.
//
// Input from QEMU is treated as untrusted: one message is at most kMaxMessageBytes (checked while
// reading, before the message is buffered whole), must be a JSON object, and is parsed without
// exceptions. Messages are split by JSON structure, not by newline, so `pretty=on` monitors work
// too. A protocol failure (QEMU closed the socket, malformed or oversized message) ends the
// session: that call and every later call returns the error (kClosed, kMalformed, kTooLarge)
// naming the socket path.
//
// Threading model: no background reader thread. Reads happen only inside Connect, Execute,
// SendFd, WaitEvent and PollEvent, with poll() deadlines. A QmpClient is NOT thread-safe: one
// thread uses it at a time (callers on several threads must serialize externally). This keeps
// every failure on the caller's stack, and lets an engine that pumps migration data in a poll()
// loop get events promptly without a second thread: add fd() to the poll set (POLLIN) and call
// PollEvent() when it is readable. PollEvent drains everything the socket has before returning
// std::nullopt, so "fd() readable" is a complete wake-up condition for new bytes; but events
// that arrived with a reply (during Execute or SendFd) are queued already and fd() does not
// signal them: check queued_events() before sleeping on fd().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

// One asynchronous QMP event.
struct QmpEvent {
  std::string name;      // "MIGRATION", "STOP", ...
  nlohmann::json data;   // the "data" member; an empty object when QEMU sent none
  double timestamp = 0;  // seconds since the epoch, from QEMU's {"seconds","microseconds"}
};

// QEMU's version as announced in the greeting.
struct QmpVersion {
  int major = 0;
  int minor = 0;
  int micro = 0;
  std::string package;  // e.g. "Debian 1:7.2+dfsg-7+deb12u18"
};

class QmpClient {
 public:
  // Largest single QMP message accepted from QEMU.
  static constexpr size_t kMaxMessageBytes = size_t{16} << 20;
  // Largest number of undelivered events kept; more is a protocol failure (kTooLarge), because an
  // engine that never consumes events would otherwise grow without bound.
  static constexpr size_t kMaxQueuedEvents = 65536;
  static constexpr std::chrono::milliseconds kDefaultCommandTimeout{10000};

  // Connects to QEMU's QMP server socket at `socket_path`, retrying while the socket does not
  // exist yet or refuses connections (QEMU still starting), reads the greeting and negotiates
  // capabilities (`qmp_capabilities`). `timeout` bounds the whole sequence. Errors: kTimeout (the
  // socket never accepted, or QEMU never answered), kInvalidArgument (path too long for
  // sockaddr_un), kIo, kClosed, kMalformed, kUnsupported (no greeting); the message names the path.
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& socket_path,
                                                    std::chrono::milliseconds timeout);

  // Same handshake over an already connected stream socket `fd`, which this client takes ownership
  // of (it is closed on failure too). `name` labels error messages (normally the socket path).
  // Used by tests to talk to a fake QEMU; the fd is switched to non-blocking mode.
  static Result<std::unique_ptr<QmpClient>> FromConnectedFd(int fd, std::string name,
                                                            std::chrono::milliseconds timeout);

  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs `command` with `args` (an object, or null/empty object for none) and returns QEMU's
  // "return" value. Events arriving before the reply are queued for WaitEvent/PollEvent, never
  // dropped. When QEMU answers with an error the message is "qmp: <command> failed: <class>:
  // <desc>" and the code is kUnsupported for class CommandNotFound (e.g. a stock QEMU without the
  // engine-mode patch), kNotFound for DeviceNotFound, kRefused for every other class
  // (GenericError, ...); the session stays usable. kTimeout when no reply came in time: the session
  // stays usable (a late reply is recognized by its id and discarded), but QEMU may still have run
  // the command, so query state before retrying. kInvalidArgument when `args` is not an object or
  // holds invalid UTF-8. Otherwise the session errors listed at the top of this file.
  Result<nlohmann::json> Execute(std::string_view command, const nlohmann::json& args = {},
                                 std::chrono::milliseconds timeout = kDefaultCommandTimeout);

  // `getfd` with `fd` passed by SCM_RIGHTS in the same sendmsg() as the command, so QEMU holds a
  // duplicate named `fdname` (usable as "fd:<fdname>" in migrate / migrate-incoming). The caller
  // keeps ownership of `fd` and may close it once this returns. Errors as for Execute.
  Status SendFd(const std::string& fdname, int fd,
                std::chrono::milliseconds timeout = kDefaultCommandTimeout);

  // Returns the first queued or newly arriving event for which `match` is true, removing it from
  // the queue; events that do not match stay queued in arrival order. `match` is called on the
  // caller's thread and must not call back into this client. Errors: kTimeout, session errors.
  Result<QmpEvent> WaitEvent(const std::function<bool(const QmpEvent&)>& match,
                             std::chrono::milliseconds timeout);
  // Convenience: the first event named `name`.
  Result<QmpEvent> WaitEventNamed(std::string_view name, std::chrono::milliseconds timeout);

  // Reads whatever QEMU has already sent (never blocks) and returns the oldest queued event, or
  // std::nullopt when there is none. A session error is not reported here (it is kept and
  // returned by the next Execute/WaitEvent/status() call); check status() when it matters.
  std::optional<QmpEvent> PollEvent();

  // OK while the session is usable, else the error that ended it.
  Status status() const { return broken_; }
  // The socket, for poll() integration only (POLLIN means PollEvent may have news). Do not read,
  // write or close it.
  int fd() const { return fd_; }
  const QmpVersion& version() const { return version_; }
  const std::string& name() const { return name_; }
  size_t queued_events() const { return events_.size(); }

 private:
  using Clock = std::chrono::steady_clock;

  QmpClient(int fd, std::string name);
  static Result<std::unique_ptr<QmpClient>> Open(int fd, std::string name,
                                                 Clock::time_point deadline);

  Status Handshake(Clock::time_point deadline);
  Result<nlohmann::json> Call(std::string_view command, const nlohmann::json& args, int pass_fd,
                              Clock::time_point deadline);
  Status WriteMessage(const std::string& text, int pass_fd, Clock::time_point deadline);
  // Waits until one complete message is available (or the deadline passes) and returns it.
  // A non-OK result other than kTimeout breaks the session.
  Result<nlohmann::json> ReadMessage(Clock::time_point deadline);
  // Returns the next complete message from the buffered bytes, std::nullopt if more bytes are
  // needed, or an error.
  Result<std::optional<nlohmann::json>> TakeBufferedMessage();
  // One recv() into the buffer; waits for readability until `deadline` (no wait when
  // `deadline` is in the past). Returns false when nothing was readable.
  Result<bool> FillBuffer(Clock::time_point deadline);
  // Queues an event message; error when the queue is full or the event is malformed.
  Status QueueEvent(const nlohmann::json& msg);
  // Records `s` as the error that ended the session (the first one wins) and returns it.
  Status Fail(Status s);
  Status TooLarge();

  int fd_ = -1;
  std::string name_;
  QmpVersion version_;
  uint64_t next_id_ = 1;
  std::string inbuf_;    // bytes received but not yet split into messages
  size_t scan_pos_ = 0;  // how far inbuf_ has been scanned for the current message
  int depth_ = 0;        // JSON nesting depth at scan_pos_
  bool in_string_ = false;
  bool escape_ = false;
  std::deque<QmpEvent> events_;
  Status broken_;
};

}  // namespace sod
