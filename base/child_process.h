// Ending and reaping a child process we spawned (swtpm, QEMU helpers). Not thread-safe per child:
// one owner calls these for a given pid.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string_view>

#include "base/status.h"

namespace sod {

// One waitpid(WNOHANG) unless `reaped` is already set; sets `reaped` when the child was reaped now
// (or is no child of ours any more). Returns `reaped`.
bool TryReapChild(pid_t pid, bool& reaped);

// SIGTERM, then SIGKILL if the child still runs after `grace`, then reaps it. OK when it had
// already ended. `what` names the child in errors (kIo when a signal or waitpid fails).
Status StopChild(pid_t pid, bool& reaped, std::chrono::milliseconds grace, std::string_view what);

}  // namespace sod
