// Starting, ending and reaping a child process (QEMU, swtpm). Not thread-safe per child: one
// owner calls these for a given pid.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace sod {

// How SpawnChild starts a program.
struct ChildSpec {
  std::vector<std::string> argv;  // argv[0]: the program (looked up in PATH when it has no '/')
  std::string log_path;           // stdout and stderr go here (created 0600); stdin is /dev/null
  bool truncate_log = false;      // else appended
  bool new_session = false;       // setsid: signals aimed at our process group (^C) miss it
  // Descriptors the child gets, {ours, its number}; its numbers are 3, 4, ... in order, and ours
  // must be above the last of them (dup2 onto itself would keep close-on-exec).
  std::vector<std::pair<int, int>> pass_fds;
  // "NAME=value" entries added to the environment the child inherits (replacing an inherited
  // variable of the same name).
  std::vector<std::string> env;
};

// Starts spec.argv with the default signal mask and dispositions, whatever this process blocks
// or ignores, and no descriptor of ours beyond 0-2 and pass_fds. Errors: kInvalidArgument (no
// argv, bad pass_fds), kNotFound (no such program), kIo (the log, the spawn).
Result<pid_t> SpawnChild(const ChildSpec& spec);

// A waitpid status in words: "exited with status 1", "killed by signal 9".
std::string DescribeExit(int wait_status);

// Waits until `ended()` returns true (checked first, then whenever process `pid` may have
// ended) or `deadline` passes; returns the last `ended()`. Sleeps on a pidfd, so an exit is seen
// at once; where pidfds are unavailable (or the process lingers as someone else's zombie) it
// naps 1 ms, doubling up to 20 ms, between checks. `ended` does the reaping, if any.
bool WaitUntilEnded(pid_t pid, const std::function<bool()>& ended,
                    std::chrono::steady_clock::time_point deadline);

// waitpid(pid, &status, WNOHANG), retried on EINTR: pid when it ended (status set), 0 while it
// runs, -1 with errno otherwise (ECHILD: not our child, or reaped already).
pid_t WaitPidNoHang(pid_t pid, int& status);

// One waitpid(WNOHANG) unless `reaped` is already set; sets `reaped` when the child was reaped now
// (or is no child of ours any more). Returns `reaped`.
bool TryReapChild(pid_t pid, bool& reaped);

// SIGTERM, then SIGKILL if the child still runs after `grace`, then reaps it. OK when it had
// already ended. `what` names the child in errors (kIo when a signal or waitpid fails).
Status StopChild(pid_t pid, bool& reaped, std::chrono::milliseconds grace, std::string_view what);

// SIGKILL and reap (blocking), for a child that failed to come up or outstayed its grace.
// 0, or waitpid's errno (ECHILD: reaped already or not ours).
int KillAndReapChild(pid_t pid);

// The pid written in `pid_file`, if it is a live (not zombie) process whose argv[0] contains
// `program` and whose arguments include `required_arg` exactly; 0 otherwise. (A pid file alone
// proves nothing: the pid may have been reused.)
pid_t LiveProcessFromPidFile(const std::string& pid_file, std::string_view program,
                             std::string_view required_arg);

// Ends the process LiveProcessFromPidFile finds, unless it is a child of ours: SIGTERM, up to
// 3 s, then SIGKILL, and waits up to 1 s more for it to go. For owners that take over what a
// dead predecessor left running (an orphan reaped by init, not by us).
void EndOrphanFromPidFile(const std::string& pid_file, std::string_view program,
                          std::string_view required_arg);

}  // namespace sod
