#include "base/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <spawn.h>
#include <sys/syscall.h>
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

#include "base/fd.h"

namespace sod {

namespace {

// posix_spawn's attribute and file-action objects, destroyed on every path.
class SpawnSetup {
 public:
  SpawnSetup() {
    attr_ok_ = posix_spawnattr_init(&attr_) == 0;
    actions_ok_ = posix_spawn_file_actions_init(&actions_) == 0;
  }
  ~SpawnSetup() {
    if (attr_ok_) posix_spawnattr_destroy(&attr_);
    if (actions_ok_) posix_spawn_file_actions_destroy(&actions_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  bool ok() const { return attr_ok_ && actions_ok_; }
  posix_spawnattr_t* attr() { return &attr_; }
  posix_spawn_file_actions_t* actions() { return &actions_; }

 private:
  posix_spawnattr_t attr_;
  posix_spawn_file_actions_t actions_;
  bool attr_ok_ = false;
  bool actions_ok_ = false;
};

}  // namespace

Result<pid_t> SpawnChild(const ChildSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty())
    return Error(Errc::kInvalidArgument, "spawn: no program");
  const std::string& program = spec.argv[0];
  const int last = 2 + static_cast<int>(spec.pass_fds.size());  // the child's last descriptor
  int next = 3;
  for (const auto& [ours, theirs] : spec.pass_fds) {
    if (theirs != next++ || ours <= last)
      return Error(Errc::kInvalidArgument, "spawn " + program + ": descriptor " +
                                               std::to_string(ours) + " cannot become " +
                                               std::to_string(theirs));
  }
  SpawnSetup setup;
  if (!setup.ok()) return Error(Errc::kIo, "spawn " + program + ": posix_spawn setup failed");
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(setup.attr(), &empty);
  posix_spawnattr_setsigdefault(setup.attr(), &all);
  posix_spawnattr_setflags(setup.attr(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                             (spec.new_session ? POSIX_SPAWN_SETSID : 0));
  // Opened here, so that a bad path is reported as such and not as a failed spawn.
  const int log_fd = ::open(spec.log_path.c_str(),
                            O_WRONLY | O_CREAT | O_CLOEXEC | (spec.truncate_log ? O_TRUNC : O_APPEND),
                            0600);
  if (log_fd < 0)
    return Error(Errc::kIo, "cannot open log " + spec.log_path + ": " + std::strerror(errno));
  posix_spawn_file_actions_addopen(setup.actions(), 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(setup.actions(), log_fd, 1);
  posix_spawn_file_actions_adddup2(setup.actions(), log_fd, 2);
  for (const auto& [ours, theirs] : spec.pass_fds)
    posix_spawn_file_actions_adddup2(setup.actions(), ours, theirs);
  posix_spawn_file_actions_addclosefrom_np(setup.actions(), next);

  std::vector<std::string> store = spec.argv;
  std::vector<char*> argv;
  for (auto& a : store) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const std::string& x : spec.env)
      replaced = replaced || (x.size() > name.size() && x.compare(0, name.size(), name) == 0 &&
                              x[name.size()] == '=');
    if (!replaced) envp.push_back(*e);
  }
  std::vector<std::string> extra = spec.env;
  for (auto& x : extra) envp.push_back(x.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, program.c_str(), setup.actions(), setup.attr(), argv.data(),
                              envp.data());
  ::close(log_fd);
  if (rc == ENOENT) return Error(Errc::kNotFound, program + " not found");
  if (rc != 0) return Error(Errc::kIo, "spawning " + program + ": " + std::strerror(rc));
  return pid;
}

std::string DescribeExit(int st) {
  if (WIFSIGNALED(st)) return "killed by signal " + std::to_string(WTERMSIG(st));
  return "exited with status " + std::to_string(WEXITSTATUS(st));
}

namespace {

// waitpid, retried on EINTR.
pid_t WaitPidRetrying(pid_t pid, int& status, int flags) {
  pid_t r;
  do {
    r = ::waitpid(pid, &status, flags);
  } while (r < 0 && errno == EINTR);
  return r;
}

}  // namespace

pid_t WaitPidNoHang(pid_t pid, int& status) { return WaitPidRetrying(pid, status, WNOHANG); }

bool TryReapChild(pid_t pid, bool& reaped) {
  if (reaped) return true;
  int st = 0;
  const pid_t r = WaitPidNoHang(pid, st);
  if (r == pid || (r < 0 && errno == ECHILD)) reaped = true;
  return reaped;
}

bool WaitUntilEnded(pid_t pid, const std::function<bool()>& ended,
                    std::chrono::steady_clock::time_point deadline) {
  using Clock = std::chrono::steady_clock;
  if (ended()) return true;
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  auto nap = std::chrono::milliseconds(1);
  for (;;) {
    if (ended()) return true;
    const auto now = Clock::now();
    if (now >= deadline) return false;
    if (pidfd.valid()) {
      // Readable once the process has exited. Still not ended() then (a zombie someone else
      // must reap): nap from now on instead of spinning on a readable pidfd.
      if (PollUntil(pidfd.get(), POLLIN, deadline)) pidfd.Reset();
      continue;
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
}

Status StopChild(pid_t pid, bool& reaped, std::chrono::milliseconds grace, std::string_view what) {
  if (TryReapChild(pid, reaped)) return Status::Ok();
  if (::kill(pid, SIGTERM) != 0 && errno != ESRCH)
    return Error(Errc::kIo, std::string(what) + " pid " + std::to_string(pid) +
                                ": kill: " + std::strerror(errno));
  if (WaitUntilEnded(pid, [&] { return TryReapChild(pid, reaped); },
                     std::chrono::steady_clock::now() + grace))
    return Status::Ok();
  const int err = KillAndReapChild(pid);
  if (err != 0 && err != ECHILD)
    return Error(Errc::kIo, std::string(what) + " pid " + std::to_string(pid) +
                                ": waitpid: " + std::strerror(err));
  reaped = true;
  return Status::Ok();
}

int KillAndReapChild(pid_t pid) {
  ::kill(pid, SIGKILL);
  int st = 0;
  return WaitPidRetrying(pid, st, 0) < 0 ? errno : 0;
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
