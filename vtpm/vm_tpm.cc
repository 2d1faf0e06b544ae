#include "vtpm/vm_tpm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>
#include <vector>

#include "base/child_process.h"
#include "base/fd.h"
#include "base/files.h"
#include "base/random.h"


namespace sod::vtpm {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// swtpm control channel commands (swtpm's tpm_ioctl.h), big-endian on the socket.
constexpr uint32_t kCmdGetCapability = 0x01;
constexpr uint32_t kCmdInit = 0x02;
constexpr uint32_t kCmdStop = 0x0E;

constexpr const char* kPermanentStateFile = "tpm2-00.permall";
constexpr const char* kPidFile = "swtpm.pid";
// Descriptors the keys arrive on in swtpm.
constexpr int kStateKeyFd = 3;
constexpr int kMigrationKeyFd = 4;

std::string ErrnoText(int err) { return std::strerror(err); }

// A pipe whose read end (returned, close-on-exec, numbered above the descriptors the child
// gets) holds exactly `key` followed by EOF. The key is only ever in the pipe buffer.
Result<int> KeyPipe(const SecretBytes& key) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Error(Errc::kIo, "vtpm: pipe: " + ErrnoText(errno));
  UniqueFd r(p[0]), w(p[1]);
  // Pipe capacity is far above 32 bytes: the write completes without a reader.
  ssize_t n;
  do {
    n = ::write(w.get(), key.data(), key.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(key.size()))
    return Error(Errc::kIo, "vtpm: writing the key pipe failed");
  w.Reset();
  // Above 4 so that dup2 onto 3 or 4 in the child never meets itself (which would keep
  // close-on-exec set).
  int high = ::fcntl(r.get(), F_DUPFD_CLOEXEC, 10);
  if (high < 0) return Error(Errc::kIo, "vtpm: fcntl: " + ErrnoText(errno));
  return high;
}

// One connection to swtpm's control channel.
class CtrlChannel {
 public:
  static Result<CtrlChannel> Connect(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof(a.sun_path))
      return Error(Errc::kInvalidArgument, "vtpm: socket path too long: " + path);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return Error(Errc::kIo, "vtpm: socket: " + ErrnoText(errno));
    CtrlChannel c(s);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
      return Error(Errc::kIo, "vtpm: connect " + path + ": " + ErrnoText(errno));
    return c;
  }
  CtrlChannel(CtrlChannel&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ~CtrlChannel() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Sends command `cmd` with `body`, reads exactly `answer_len` bytes before `deadline`.
  Result<std::vector<uint8_t>> Call(uint32_t cmd, const std::vector<uint8_t>& body,
                                    size_t answer_len, Clock::time_point deadline) {
    std::vector<uint8_t> out = {static_cast<uint8_t>(cmd >> 24), static_cast<uint8_t>(cmd >> 16),
                                static_cast<uint8_t>(cmd >> 8), static_cast<uint8_t>(cmd)};
    out.insert(out.end(), body.begin(), body.end());
    if (::send(fd_, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size()))
      return Error(Errc::kIo, "vtpm: control channel send failed");
    std::vector<uint8_t> in(answer_len);
    size_t got = 0;
    while (got < answer_len) {
      if (!PollUntil(fd_, POLLIN, deadline))
        return Error(Errc::kTimeout, "vtpm: control channel did not answer");
      ssize_t n = ::recv(fd_, in.data() + got, answer_len - got, 0);
      if (n > 0) {
        got += static_cast<size_t>(n);
      } else if (n == 0) {
        return Error(Errc::kClosed, "vtpm: control channel closed");
      } else if (errno != EINTR && errno != EAGAIN) {
        return Error(Errc::kIo, "vtpm: control channel recv: " + ErrnoText(errno));
      }
    }
    return in;
  }

 private:
  explicit CtrlChannel(int fd) : fd_(fd) {}
  int fd_;
};

uint32_t Be32(const std::vector<uint8_t>& b, size_t off) {
  return (uint32_t{b[off]} << 24) | (uint32_t{b[off + 1]} << 16) | (uint32_t{b[off + 2]} << 8) |
         b[off + 3];
}

Result<pid_t> SpawnSwtpm(const VmTpmOptions& options, const std::string& state_dir,
                         const std::string& ctrl_socket, const std::string& log_path,
                         int state_key_fd, int migration_key_fd) {
  const std::string key_opts = ",format=binary,mode=aes-256-cbc";
  std::vector<std::string> args = {
      options.binary,
      "socket",
      "--tpm2",
      "--tpmstate",
      "dir=" + state_dir + ",mode=0600",
      "--ctrl",
      "type=unixio,path=" + ctrl_socket + ",mode=0600",
      "--key",
      "fd=" + std::to_string(kStateKeyFd) + key_opts,
      "--pid",
      "file=" + state_dir + "/" + kPidFile,
      // No --log: errors go to stderr (the log file); higher log levels dump TPM commands.
  };
  if (migration_key_fd >= 0)
    args.insert(args.end(),
                {"--migration-key", "fd=" + std::to_string(kMigrationKeyFd) + key_opts});
  ChildSpec c;
  c.argv = std::move(args);
  c.log_path = log_path;
  c.truncate_log = true;
  c.new_session = true;  // like the VM's QEMU: a ^C or kill of sodd's process group spares it
  c.pass_fds.push_back({state_key_fd, kStateKeyFd});
  if (migration_key_fd >= 0) c.pass_fds.push_back({migration_key_fd, kMigrationKeyFd});
  Result<pid_t> pid = SpawnChild(c);
  if (!pid.ok()) return pid.status().WithContext("vtpm");
  return pid;
}

// The pid of a live swtpm (not a zombie) whose command line names exactly `state_dir`, from
// STATE/swtpm.pid; 0 when there is none.
pid_t LiveSwtpmOn(const std::string& state_dir) {
  return LiveProcessFromPidFile(state_dir + "/" + kPidFile, "swtpm",
                                "dir=" + state_dir + ",mode=0600");
}

}  // namespace

Result<SecretBytes> NewVmTpmKey() {
  SecretBytes k(kVmTpmKeyBytes);
  SOD_RETURN_IF_ERROR(RandomFill(k.mutable_span()));
  return k;
}

bool HasVmTpmState(const std::string& state_dir) {
  std::error_code ec;
  return fs::exists(state_dir + "/" + kPermanentStateFile, ec);
}

VmTpm::VmTpm(pid_t pid, std::string state_dir, std::string ctrl_socket, std::string log_path)
    : pid_(pid),
      state_dir_(std::move(state_dir)),
      ctrl_socket_(std::move(ctrl_socket)),
      log_path_(std::move(log_path)) {}

VmTpm::~VmTpm() { (void)Stop(); }

Result<std::unique_ptr<VmTpm>> VmTpm::Adopt(const std::string& state_dir,
                                            const std::string& ctrl_socket, std::string log_path) {
  const pid_t pid = LiveSwtpmOn(state_dir);
  if (pid == 0) return Error(Errc::kNotFound, "vtpm " + state_dir + ": no live swtpm to adopt");
  std::error_code ec;
  if (!fs::exists(ctrl_socket, ec))
    return Error(Errc::kNotFound, "vtpm " + state_dir + ": swtpm pid " + std::to_string(pid) +
                                      " has no control socket " + ctrl_socket);
  if (log_path.empty()) log_path = state_dir + "/swtpm.log";
  std::unique_ptr<VmTpm> tpm(new VmTpm(pid, state_dir, ctrl_socket, std::move(log_path)));
  tpm->adopted_ = true;
  return tpm;
}

Result<std::unique_ptr<VmTpm>> VmTpm::Start(const std::string& state_dir,
                                            const std::string& ctrl_socket,
                                            const SecretBytes& state_key, VmTpmMode mode,
                                            VmTpmOptions options) {
  const std::string what = "vtpm " + state_dir;
  if (state_dir.empty() || state_dir.front() != '/' || state_dir.find(',') != std::string::npos)
    return Error(Errc::kInvalidArgument, "vtpm: state directory must be absolute, without ','");
  if (ctrl_socket.empty() || ctrl_socket.size() >= sizeof(sockaddr_un::sun_path) ||
      ctrl_socket.find(',') != std::string::npos)
    return Error(Errc::kInvalidArgument,
                 "vtpm: control socket path empty, too long or with ',': " + ctrl_socket);
  if (state_key.size() != kVmTpmKeyBytes)
    return Error(Errc::kInvalidArgument, "vtpm: the state key must be 32 bytes");
  if (options.migration_key && options.migration_key->size() != kVmTpmKeyBytes)
    return Error(Errc::kInvalidArgument, "vtpm: the migration key must be 32 bytes");
  if (options.binary.empty()) return Error(Errc::kInvalidArgument, "vtpm: empty binary name");

  SOD_RETURN_IF_ERROR(MakePrivateDir(state_dir).WithContext(what));
  if (options.end_orphan)
    EndOrphanFromPidFile(state_dir + "/" + kPidFile, "swtpm",
                         "dir=" + state_dir + ",mode=0600");
  if (pid_t running = LiveSwtpmOn(state_dir); running != 0)
    return Error(Errc::kState, what + ": swtpm pid " + std::to_string(running) +
                                   " already runs on this state directory");
  const bool has_state = HasVmTpmState(state_dir);
  if (mode == VmTpmMode::kIncoming && has_state)
    return Error(Errc::kState, what + ": an incoming vTPM needs an empty state directory, but " +
                                   kPermanentStateFile + " exists");
  const std::string log_path =
      options.log_path.empty() ? state_dir + "/swtpm.log" : options.log_path;
  ::unlink(ctrl_socket.c_str());

  SOD_ASSIGN_OR_RETURN(int state_fd, KeyPipe(state_key));
  UniqueFd state_pipe(state_fd);
  UniqueFd migration_pipe;
  if (options.migration_key) {
    SOD_ASSIGN_OR_RETURN(int mfd, KeyPipe(*options.migration_key));
    migration_pipe.Reset(mfd);
  }
  SOD_ASSIGN_OR_RETURN(pid_t pid, SpawnSwtpm(options, state_dir, ctrl_socket, log_path,
                                             state_pipe.get(), migration_pipe.get()));
  state_pipe.Reset();
  migration_pipe.Reset();
  std::unique_ptr<VmTpm> tpm(new VmTpm(pid, state_dir, ctrl_socket, log_path));

  auto failed = [&](Errc code, const std::string& msg) -> Status {
    tpm->reaped_ = true;
    KillAndReapChild(pid);
    ::unlink(ctrl_socket.c_str());
    const std::string log = LogTail(log_path);
    return Error(code, what + ": " + msg + (log.empty() ? "" : "; swtpm log: " + log));
  };
  const auto deadline = Clock::now() + options.start_timeout;
  auto nap = milliseconds(2);
  for (;;) {
    int st = 0;
    const pid_t r = WaitPidNoHang(pid, st);
    if (r == pid) {
      tpm->reaped_ = true;
      const std::string log = LogTail(log_path);
      return Error(Errc::kIo, what + ": swtpm " + DescribeExit(st) + " during startup" +
                                  (log.empty() ? "" : ": " + log));
    }
    Result<CtrlChannel> ctrl = CtrlChannel::Connect(ctrl_socket);
    if (ctrl.ok()) {
      // The capability word: 8 bytes (swtpm's ptm_cap).
      Result<std::vector<uint8_t>> caps = ctrl->Call(kCmdGetCapability, {}, 8, deadline);
      if (!caps.ok()) return failed(caps.status().code(), caps.status().message());
      if (has_state) {
        // Load the state now, so a wrong key or a modified state file fails here and not in
        // QEMU: CMD_INIT (flags 0) must answer TPM_SUCCESS, then CMD_STOP leaves the TPM for
        // QEMU's own CMD_INIT.
        Result<std::vector<uint8_t>> init = ctrl->Call(kCmdInit, {0, 0, 0, 0}, 4, deadline);
        if (!init.ok()) return failed(init.status().code(), init.status().message());
        if (Be32(*init, 0) != 0)
          return failed(
              Errc::kIo,
              "swtpm cannot load the vTPM state (wrong key or modified "
              "state file): CMD_INIT result 0x" +
                  [&] {
                    char b[16];
                    std::snprintf(b, sizeof(b), "%x", Be32(*init, 0));
                    return std::string(b);
                  }());
        Result<std::vector<uint8_t>> stop = ctrl->Call(kCmdStop, {}, 4, deadline);
        if (!stop.ok() || Be32(*stop, 0) != 0)
          return failed(Errc::kIo, "swtpm refused CMD_STOP after loading the state");
      }
      return tpm;
    }
    if (Clock::now() >= deadline)
      return failed(Errc::kTimeout, "swtpm control channel did not answer within " +
                                        std::to_string(options.start_timeout.count()) + " ms");
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, milliseconds(50));
  }
}

bool VmTpm::TryReap() {
  if (released_) return true;
  if (adopted_) {
    if (!reaped_ && LiveSwtpmOn(state_dir_) != pid_) reaped_ = true;
    return reaped_;
  }
  return TryReapChild(pid_, reaped_);
}

bool VmTpm::Running() { return !TryReap(); }

Status VmTpm::Stop(milliseconds grace) {
  if (released_) return Status::Ok();
  if (adopted_) {
    // Not our child: signal it through its pid file (which re-checks its command line).
    if (!TryReap()) EndOrphanFromPidFile(state_dir_ + "/" + kPidFile, "swtpm",
                                         "dir=" + state_dir_ + ",mode=0600");
    if (LiveSwtpmOn(state_dir_) == pid_)
      return Error(Errc::kIo, "vtpm swtpm pid " + std::to_string(pid_) + " did not end");
    reaped_ = true;
  }
  SOD_RETURN_IF_ERROR(StopChild(pid_, reaped_, grace, "vtpm swtpm"));
  ::unlink(ctrl_socket_.c_str());
  ::unlink((state_dir_ + "/" + kPidFile).c_str());
  return Status::Ok();
}

Status EraseVmTpmState(const std::string& state_dir) {
  std::error_code ec;
  if (!fs::exists(state_dir, ec)) return Status::Ok();
  if (pid_t pid = LiveSwtpmOn(state_dir); pid != 0)
    return Error(Errc::kState, "vtpm: cannot erase " + state_dir + ": swtpm pid " +
                                   std::to_string(pid) + " still uses it");
  std::vector<fs::path> files;
  for (fs::directory_iterator it(state_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status s = it->symlink_status(ec);
    if (ec) break;
    if (!fs::is_regular_file(s))
      return Error(Errc::kState, "vtpm: cannot erase " + state_dir + ": " +
                                     it->path().filename().string() + " is not a regular file");
    files.push_back(it->path());
  }
  if (ec) return Error(Errc::kIo, "vtpm: listing " + state_dir + ": " + ec.message());
  const std::vector<uint8_t> zeros(64 * 1024, 0);
  for (const fs::path& f : files) {
    UniqueFd fd(::open(f.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0) return Error(Errc::kIo, "vtpm: open " + f.string() + ": " + ErrnoText(errno));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0)
      return Error(Errc::kIo, "vtpm: stat " + f.string() + ": " + ErrnoText(errno));
    off_t done = 0;
    while (done < st.st_size) {
      const size_t chunk =
          static_cast<size_t>(std::min<off_t>(st.st_size - done, static_cast<off_t>(zeros.size())));
      ssize_t n = ::pwrite(fd.get(), zeros.data(), chunk, done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        return Error(Errc::kIo, "vtpm: overwrite " + f.string() + ": " + ErrnoText(errno));
      done += n;
    }
    if (::fsync(fd.get()) != 0)
      return Error(Errc::kIo, "vtpm: fsync " + f.string() + ": " + ErrnoText(errno));
    fd.Reset();
    if (::unlink(f.c_str()) != 0)
      return Error(Errc::kIo, "vtpm: unlink " + f.string() + ": " + ErrnoText(errno));
  }
  if (::rmdir(state_dir.c_str()) != 0)
    return Error(Errc::kIo, "vtpm: rmdir " + state_dir + ": " + ErrnoText(errno));
  return Status::Ok();
}

}  // namespace sod::vtpm
