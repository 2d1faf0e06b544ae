// QemuProcess: one child QEMU process (spawn, wait, kill) for the migration engine and tests.
//
// The child gets stdin from /dev/null, stdout and stderr appended to a log file, a default signal
// mask and dispositions, and no descriptors of ours except 0-2 (everything from 3 up is closed in
// the child), so a QEMU never holds another VM's migration socket. Descriptors meant for QEMU are
// passed over QMP instead (QmpClient::SendFd).
//
// Ownership: the QemuProcess owns the child. Its destructor sends SIGKILL to a child that is still
// running and reaps it, so a failing engine path or test never leaks a QEMU. The child stays in
// our process group (a terminal ^C reaches it too).
//
// Thread-safety: not thread-safe; one thread uses an instance at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"

namespace sod {

struct QemuProcessOptions {
  // Looked up in PATH when it contains no '/'.
  std::string binary = "qemu-system-x86_64";
  // argv[1..]; argv[0] is `binary`.
  std::vector<std::string> args;
  // stdout and stderr of the child are appended here (created 0600 if missing); empty means
  // /dev/null.
  std::string log_path;
};

// How a child ended.
struct QemuExit {
  bool signaled = false;  // true: killed by signal `code`; false: exited with status `code`
  int code = 0;
  // "exit 0", "signal 9"
  std::string ToString() const;
};

// ["-qmp", "unix:<socket_path>,server=on,wait=off"], with commas in the path doubled as QEMU's
// option syntax requires.
std::vector<std::string> QmpServerArgs(const std::string& socket_path);

class QemuProcess {
 public:
  // Starts the child. Errors: kNotFound (binary missing), kIo (log file, spawn failure); the
  // message names the binary. Success means exec happened, not that QEMU accepted its arguments:
  // a bad argument shows up as an early exit (Wait) with the reason in the log.
  static Result<std::unique_ptr<QemuProcess>> Spawn(const QemuProcessOptions& options);

  ~QemuProcess();
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // Waits up to `timeout` for the child to end and reaps it. Returns how it ended (also on every
  // later call). Errors: kTimeout (still running), kIo.
  Result<QemuExit> Wait(std::chrono::milliseconds timeout);
  // Non-blocking: true while the child has not ended (reaps it when it has).
  bool Running();
  // Sends `signal` to a child that has not been reaped yet; OK and no-op after it was reaped.
  Status Kill(int signal);
  // The exit of a reaped child, std::nullopt while it runs.
  const std::optional<QemuExit>& exit() const { return exit_; }

 private:
  QemuProcess(pid_t pid, std::string binary, std::string log_path)
      : pid_(pid), binary_(std::move(binary)), log_path_(std::move(log_path)) {}
  // One waitpid(WNOHANG); true when the child was reaped now or before.
  Result<bool> TryReap();

  pid_t pid_;
  std::string binary_;
  std::string log_path_;
  std::optional<QemuExit> exit_;
};

}  // namespace sod
