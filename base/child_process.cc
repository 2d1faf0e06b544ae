#include "base/child_process.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

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

void KillAndReapChild(pid_t pid) {
  ::kill(pid, SIGKILL);
  int st;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

namespace {

// /proc/PID/stat after the command name: "S PPID ..."; state and parent, or false.
bool StatOf(pid_t pid, char& state, long& ppid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = line.rfind(')');
  return paren != std::string::npos &&
         std::sscanf(line.c_str() + paren + 1, " %c %ld", &state, &ppid) == 2;
}

}  // namespace

pid_t LiveProcessFromPidFile(const std::string& pid_file, std::string_view program,
                             std::string_view required_arg) {
  std::ifstream in(pid_file);
  long pid = 0;
  if (!(in >> pid) || pid <= 1) return 0;
  std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string a; std::getline(cmd, a, '\0');) args.push_back(a);
  if (args.empty() || args[0].find(program) == std::string::npos) return 0;
  if (std::find(args.begin(), args.end(), required_arg) == args.end()) return 0;
  char state = 0;
  long ppid = 0;
  if (!StatOf(static_cast<pid_t>(pid), state, ppid) || state == 'Z') return 0;
  return static_cast<pid_t>(pid);
}

void EndOrphanFromPidFile(const std::string& pid_file, std::string_view program,
                          std::string_view required_arg) {
  const pid_t pid = LiveProcessFromPidFile(pid_file, program, required_arg);
  char state = 0;
  long ppid = 0;
  if (pid == 0 || !StatOf(pid, state, ppid) || ppid == ::getpid()) return;  // none, or ours
  auto alive = [&] { return LiveProcessFromPidFile(pid_file, program, required_arg) == pid; };
  ::kill(pid, SIGTERM);
  const auto nap = std::chrono::milliseconds(10);
  for (int i = 0; i < 300 && alive(); ++i) std::this_thread::sleep_for(nap);
  if (alive()) ::kill(pid, SIGKILL);
  for (int i = 0; i < 100 && alive(); ++i) std::this_thread::sleep_for(nap);
}

}  // namespace sod
