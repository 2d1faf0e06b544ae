#include "migrate/qemu_process.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "base/child_process.h"

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
  ChildSpec c;
  c.argv.push_back(bin);
  c.argv.insert(c.argv.end(), options.args.begin(), options.args.end());
  c.log_path = options.log_path.empty() ? "/dev/null" : options.log_path;
  Result<pid_t> spawned = SpawnChild(c);
  if (!spawned.ok()) return spawned.status().WithContext("qemu");
  const pid_t pid = *spawned;
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
  const pid_t r = WaitPidNoHang(pid_, st);
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
  Status failed;
  auto done = [&] {
    Result<bool> r = TryReap();
    if (!r.ok()) failed = r.status();
    return !r.ok() || *r;
  };
  if (!WaitUntilEnded(pid_, done, std::chrono::steady_clock::now() + timeout)) {
    return Error(Errc::kTimeout, "qemu " + binary_ + " pid " + std::to_string(pid_) +
                                     ": still running after " + std::to_string(timeout.count()) +
                                     " ms");
  }
  SOD_RETURN_IF_ERROR(failed);
  return *exit_;
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
