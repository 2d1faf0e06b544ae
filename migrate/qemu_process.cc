#include "migrate/spawn_setup.h"
#include "migrate/qemu_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

extern char** environ;

namespace sod {

namespace {

std::string ErrnoText(int err) { return std::strerror(err); }


}  // namespace

std::string QemuExit::ToString() const {
  return std::string(signaled ? "signal " : "exit ") + std::to_string(code);
}

std::vector<std::string> QmpServerArgs(const std::string& socket_path) {
  std::string escaped;
  for (char c : socket_path) {
    escaped.push_back(c);
    if (c == ',') escaped.push_back(',');
  }
  return {"-qmp", "unix:" + escaped + ",server=on,wait=off"};
}

Result<std::unique_ptr<QemuProcess>> QemuProcess::Spawn(const QemuProcessOptions& options) {
  const std::string& bin = options.binary;
  if (bin.empty()) return Error(Errc::kInvalidArgument, "qemu: empty binary name");
  SpawnSetup setup;
  if (!setup.ok()) return Error(Errc::kIo, "qemu " + bin + ": posix_spawn setup failed");

  // Default signal mask and dispositions in the child, whatever this process blocks or ignores.
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(setup.attr(), &empty);
  posix_spawnattr_setsigdefault(setup.attr(), &all);
  posix_spawnattr_setflags(setup.attr(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  const std::string log = options.log_path.empty() ? "/dev/null" : options.log_path;
  // Open the log here so a bad path is reported as such, not as a spawn failure.
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    return Error(Errc::kIo, "qemu " + bin + ": cannot open log " + log + ": " + ErrnoText(errno));
  }
  posix_spawn_file_actions_addopen(setup.actions(), 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(setup.actions(), log_fd, 1);
  posix_spawn_file_actions_adddup2(setup.actions(), log_fd, 2);
  posix_spawn_file_actions_addclosefrom_np(setup.actions(), 3);

  std::vector<std::string> argv_store;
  argv_store.reserve(options.args.size() + 1);
  argv_store.push_back(bin);
  argv_store.insert(argv_store.end(), options.args.begin(), options.args.end());
  std::vector<char*> argv;
  for (auto& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = -1;
  int rc = posix_spawnp(&pid, bin.c_str(), setup.actions(), setup.attr(), argv.data(), environ);
  ::close(log_fd);
  if (rc == ENOENT) return Error(Errc::kNotFound, "qemu " + bin + ": not found");
  if (rc != 0) return Error(Errc::kIo, "qemu " + bin + ": spawn failed: " + ErrnoText(rc));
  return std::unique_ptr<QemuProcess>(new QemuProcess(pid, bin, options.log_path));
}

QemuProcess::~QemuProcess() {
  if (exit_) return;
  ::kill(pid_, SIGKILL);
  int st;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
}

Result<bool> QemuProcess::TryReap() {
  if (exit_) return true;
  int st = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &st, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    return Error(Errc::kIo, "qemu " + binary_ + " pid " + std::to_string(pid_) +
                                ": waitpid: " + ErrnoText(errno));
  }
  if (r == 0) return false;
  QemuExit e;
  if (WIFSIGNALED(st)) {
    e.signaled = true;
    e.code = WTERMSIG(st);
  } else {
    e.code = WEXITSTATUS(st);
  }
  exit_ = e;
  return true;
}

Result<QemuExit> QemuProcess::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto nap = std::chrono::milliseconds(1);
  for (;;) {
    SOD_ASSIGN_OR_RETURN(bool done, TryReap());
    if (done) return *exit_;
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return Error(Errc::kTimeout, "qemu " + binary_ + " pid " + std::to_string(pid_) +
                                       ": still running after " + std::to_string(timeout.count()) +
                                       " ms");
    }
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(nap, deadline - now));
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
}

bool QemuProcess::Running() {
  auto r = TryReap();
  return r.ok() && !*r;
}

Status QemuProcess::Kill(int signal) {
  if (exit_) return Status::Ok();
  if (::kill(pid_, signal) != 0) {
    return Error(Errc::kIo, "qemu " + binary_ + " pid " + std::to_string(pid_) +
                                ": kill: " + ErrnoText(errno));
  }
  return Status::Ok();
}

}  // namespace sod
