#include "base/child_process.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>

namespace sod {

bool TryReapChild(pid_t pid, bool& reaped) {
  if (reaped) return true;
  int st = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &st, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid || (r < 0 && errno == ECHILD)) reaped = true;
  return reaped;
}

Status StopChild(pid_t pid, bool& reaped, std::chrono::milliseconds grace, std::string_view what) {
  using Clock = std::chrono::steady_clock;
  if (TryReapChild(pid, reaped)) return Status::Ok();
  if (::kill(pid, SIGTERM) != 0 && errno != ESRCH)
    return Error(Errc::kIo, std::string(what) + " pid " + std::to_string(pid) +
                                ": kill: " + std::strerror(errno));
  const auto deadline = Clock::now() + grace;
  auto nap = std::chrono::milliseconds(1);
  while (!TryReapChild(pid, reaped)) {
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      int st;
      pid_t r;
      do {
        r = ::waitpid(pid, &st, 0);
      } while (r < 0 && errno == EINTR);
      if (r < 0 && errno != ECHILD)
        return Error(Errc::kIo, std::string(what) + " pid " + std::to_string(pid) +
                                    ": waitpid: " + std::strerror(errno));
      reaped = true;
      break;
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
  return Status::Ok();
}

}  // namespace sod
