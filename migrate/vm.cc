#include "migrate/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "base/bytes.h"
#include "base/child_process.h"
#include "base/files.h"
#include "migrate/qemu_process.h"
#include "migrate/uffd_abi.h"

namespace sod {

using nlohmann::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// ---- spec validation ---------------------------------------------------------------------------

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool AllOf(std::string_view s, std::string_view extra, bool upper_ok) {
  return std::all_of(s.begin(), s.end(), [&](char c) {
    return IsLowerAlnum(c) || (upper_ok && c >= 'A' && c <= 'Z') ||
           extra.find(c) != std::string_view::npos;
  });
}

Status Invalid(std::string_view key, const std::string& why) {
  return Error(Errc::kInvalidArgument, "vm spec: \"" + std::string(key) + "\" " + why);
}

Status ValidatePath(std::string_view key, const std::string& path, bool required) {
  if (path.empty()) return required ? Invalid(key, "is required") : Status::Ok();
  if (path.front() != '/') return Invalid(key, "must be an absolute path, got \"" + path + "\"");
  if (path.size() > 4096) return Invalid(key, "is longer than 4096 bytes");
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid(key, "contains a control character");
    }
  }
  return Status::Ok();
}

// ---- JSON decoding -----------------------------------------------------------------------------

Status ReadString(const json& v, std::string_view key, std::string& out) {
  if (!v.is_string()) return Invalid(key, std::string("must be a string, got ") + v.type_name());
  out = v.get<std::string>();
  return Status::Ok();
}

Status ReadUnsigned(const json& v, std::string_view key, uint64_t max, uint64_t& out) {
  // Parsed text gives unsigned numbers for non-negative integers; values built in C++ may be
  // signed ones.
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
    std::string what = v.is_number() ? "a negative or fractional number" : v.type_name();
    return Invalid(key, "must be a non-negative integer, got " + what);
  }
  out = v.get<uint64_t>();
  if (out > max) return Invalid(key, std::to_string(out) + " is above " + std::to_string(max));
  return Status::Ok();
}

// ---- processes ---------------------------------------------------------------------------------


#ifndef SOD_QEMU_PRELOAD_DEFAULT
#define SOD_QEMU_PRELOAD_DEFAULT ""
#endif

// The library preloaded into QEMU for the RAM check's write log (ram_write_log.h): the one built
// with sod, or $SOD_QEMU_PRELOAD ("" for none); none when it is not there.
std::string QemuPreloadLibrary() {
  const char* env = std::getenv("SOD_QEMU_PRELOAD");
  std::string lib = env != nullptr ? env : SOD_QEMU_PRELOAD_DEFAULT;
  if (lib.empty() || ::access(lib.c_str(), R_OK) != 0) return "";
  return lib;
}

// Spawns `binary` in a new session (setsid), stdin /dev/null, stdout+stderr appended to
// `log_path`, with the library `preload` (if any) preloaded and told where to leave its
// userfaultfd (migrate/qemu_uffd_preload.c).
Result<pid_t> SpawnDetached(const std::string& binary, const std::vector<std::string>& args,
                            const std::string& log_path, const std::string& preload) {
  ChildSpec c;
  c.argv.push_back(binary);
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.log_path = log_path;
  c.new_session = true;
  if (!preload.empty()) {
    const char* other = std::getenv("LD_PRELOAD");
    c.env = {"LD_PRELOAD=" + preload + (other != nullptr && *other ? ":" + std::string(other) : ""),
             std::string(SOD_QEMU_UFFD_FD_ENV) + "=" + std::to_string(SOD_QEMU_UFFD_FD)};
  }
  Result<pid_t> pid = SpawnChild(c);
  if (!pid.ok() && pid.status().code() == Errc::kNotFound)
    return Error(Errc::kNotFound, "QEMU binary " + binary + " not found");
  return pid;
}

// The one-letter state of /proc/<pid>/stat ('R', 'S', 'Z', ...), 0 when the process is gone.
char ProcState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  size_t close = line.rfind(')');  // comm may contain spaces and parentheses
  if (close == std::string::npos || close + 2 >= line.size()) return 0;
  return line[close + 2];
}

bool ProcessLive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  char st = ProcState(pid);
  return st != 0 && st != 'Z' && st != 'X';
}

std::vector<std::string> ProcCmdline(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  return args;
}

// ---- files -------------------------------------------------------------------------------------


std::string Hex8Random() {
  std::array<uint8_t, 8> r{};
  size_t got = 0;
  while (got < r.size()) {
    ssize_t n = ::getrandom(r.data() + got, r.size() - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // getrandom cannot fail on Linux >= 3.17 with a valid buffer; fall back to something unique.
      uint64_t v = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^
                   (static_cast<uint64_t>(::getpid()) << 40);
      StoreLe64(r.data(), v);
      break;
    }
    got += static_cast<size_t>(n);
  }
  return ToHex(r);
}

// QEMU option-value escaping: a ',' inside a value is written ",,".
std::string QemuEscape(std::string_view v) {
  std::string out;
  for (char c : v) {
    out.push_back(c);
    if (c == ',') out.push_back(',');
  }
  return out;
}

}  // namespace

// ---- VmSpec ------------------------------------------------------------------------------------

Status ValidateVmName(std::string_view name) {
  if (name.empty() || name.size() > kMaxVmNameLength || !IsLowerAlnum(name[0]) ||
      !AllOf(name, "-", false)) {
    return Invalid("name", "must match [a-z0-9][a-z0-9-]{0,31}, got \"" + std::string(name) + "\"");
  }
  return Status::Ok();
}

Status ValidateVmSpec(const VmSpec& s) {
  SOD_RETURN_IF_ERROR(ValidateVmName(s.name));
  if (s.memory_mb < kMinVmMemoryMb || s.memory_mb > kMaxVmMemoryMb) {
    return Invalid("memory_mb", std::to_string(s.memory_mb) + " is outside " +
                                    std::to_string(kMinVmMemoryMb) + ".." +
                                    std::to_string(kMaxVmMemoryMb));
  }
  if (s.vcpus < 1 || s.vcpus > kMaxVmVcpus) {
    return Invalid("vcpus",
                   std::to_string(s.vcpus) + " is outside 1.." + std::to_string(kMaxVmVcpus));
  }
  if (s.machine.empty() || s.machine.size() > 64 || !AllOf(s.machine, "._-", false)) {
    return Invalid("machine", "must be 1..64 characters of [a-z0-9._-], got \"" + s.machine + "\"");
  }
  if (s.accel != "tcg" && s.accel != "kvm") {
    return Invalid("accel", "must be \"tcg\" or \"kvm\", got \"" + s.accel + "\"");
  }
  if (s.cpu.empty() || s.cpu.size() > 128 || !AllOf(s.cpu, "._+=,-", true)) {
    return Invalid("cpu", "must be 1..128 characters of [A-Za-z0-9._+=,-], got \"" + s.cpu + "\"");
  }
  SOD_RETURN_IF_ERROR(ValidatePath("kernel", s.kernel, s.disk.empty()));
  SOD_RETURN_IF_ERROR(ValidatePath("initrd", s.initrd, false));
  SOD_RETURN_IF_ERROR(ValidatePath("disk", s.disk, false));
  if (!s.initrd.empty() && s.kernel.empty()) return Invalid("initrd", "needs \"kernel\"");
  if (!s.append.empty() && s.kernel.empty()) return Invalid("append", "needs \"kernel\"");
  if (s.append.size() > kMaxKernelAppendLength) {
    return Invalid("append", "is longer than " + std::to_string(kMaxKernelAppendLength) + " bytes");
  }
  for (char c : s.append) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid("append", "contains a control character");
    }
  }
  if (!s.security.empty()) {
    if (s.security.size() > kMaxVmSecurityBytes) {
      return Invalid("security", "is longer than " + std::to_string(kMaxVmSecurityBytes) + " bytes");
    }
    json sec = json::parse(s.security, nullptr, /*allow_exceptions=*/false);
    if (sec.is_discarded() || !sec.is_object()) return Invalid("security", "must be a JSON object");
  }
  return Status::Ok();
}

Result<VmSpec> VmSpecFromJson(const json& j) {
  if (!j.is_object()) {
    return Error(Errc::kInvalidArgument,
                 std::string("vm spec: must be a JSON object, got ") + j.type_name());
  }
  VmSpec s;
  bool have_name = false;
  for (const auto& [key, v] : j.items()) {
    uint64_t n = 0;
    if (key == "name") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.name));
      have_name = true;
    } else if (key == "memory_mb") {
      SOD_RETURN_IF_ERROR(ReadUnsigned(v, key, UINT32_MAX, n));
      s.memory_mb = static_cast<uint32_t>(n);
    } else if (key == "vcpus") {
      SOD_RETURN_IF_ERROR(ReadUnsigned(v, key, UINT32_MAX, n));
      s.vcpus = static_cast<uint32_t>(n);
    } else if (key == "machine") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.machine));
    } else if (key == "accel") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.accel));
    } else if (key == "cpu") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.cpu));
    } else if (key == "kernel") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.kernel));
    } else if (key == "initrd") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.initrd));
    } else if (key == "append") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.append));
    } else if (key == "disk") {
      SOD_RETURN_IF_ERROR(ReadString(v, key, s.disk));
    } else if (key == "guest_port") {
      SOD_RETURN_IF_ERROR(ReadUnsigned(v, key, UINT16_MAX, n));
      s.guest_port = static_cast<uint16_t>(n);
    } else if (key == "tpm") {
      if (!v.is_boolean()) return Invalid(key, "must be true or false");
      s.tpm = v.get<bool>();
    } else if (key == "security") {
      if (v.is_null()) {
        s.security.clear();
      } else if (!v.is_object()) {
        return Invalid(key, "must be a JSON object (a security request) or null");
      } else {
        s.security = v.dump(-1, ' ', false, json::error_handler_t::replace);
      }
    } else {
      return Invalid(key,
                     "is not a known key (known: name, memory_mb, vcpus, machine, accel, "
                     "cpu, kernel, initrd, append, disk, guest_port, tpm, security)");
    }
  }
  if (!have_name) return Invalid("name", "is required");
  SOD_RETURN_IF_ERROR(ValidateVmSpec(s));
  return s;
}

json VmSpecToJson(const VmSpec& s) {
  json j{{"name", s.name},       {"memory_mb", s.memory_mb},  {"vcpus", s.vcpus},
         {"machine", s.machine}, {"accel", s.accel},          {"cpu", s.cpu},
         {"kernel", s.kernel},   {"initrd", s.initrd},        {"append", s.append},
         {"disk", s.disk},       {"guest_port", s.guest_port}, {"tpm", s.tpm}};
  if (!s.security.empty()) {
    json sec = json::parse(s.security, nullptr, /*allow_exceptions=*/false);
    if (!sec.is_discarded()) j["security"] = sec;
  }
  return j;
}

Result<VmSpec> LoadVmSpec(const std::string& path) {
  Result<std::string> text = ReadSmallFile(path, kMaxVmSpecFileBytes);
  if (!text.ok()) return text.status().WithContext("vm spec");
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Errc::kMalformed, "vm spec " + path + ": not valid JSON");
  Result<VmSpec> spec = VmSpecFromJson(j);
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

// ---- paths and arguments -----------------------------------------------------------------------

VmPaths MakeVmPaths(const std::string& dir, std::string_view host_id, const VmSpec& spec,
                    uint16_t host_port) {
  VmPaths p;
  p.dir = dir;
  p.qmp_socket = dir + "/qmp.sock";
  p.serial_log = dir + "/serial.log";
  p.qemu_log = dir + "/qemu.log";
  p.memory_file = "/dev/shm/sod-" + std::string(host_id) + "-" + spec.name + "-" + Hex8Random();
  p.host_port = host_port;
  return p;
}

std::vector<std::string> BuildQemuArgs(const VmSpec& spec, const VmPaths& paths,
                                       VmLaunchMode mode) {
  const std::string mem = std::to_string(spec.memory_mb) + "M";
  // One option and its value per line.
  // clang-format off
  std::vector<std::string> a = {
      "-name", spec.name,
      "-accel", spec.accel,
      "-cpu", spec.cpu,
      "-smp", std::to_string(spec.vcpus),
      "-m", mem,
      "-object", "memory-backend-file,id=" + std::string(kRamBlockName) + ",size=" + mem + ",mem-path=" +
                     QemuEscape(paths.memory_file) + ",share=on",
      "-machine", spec.machine + ",memory-backend=" + std::string(kRamBlockName),
      "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"};
  // clang-format on
  if (!spec.kernel.empty()) a.insert(a.end(), {"-kernel", spec.kernel});
  if (!spec.initrd.empty()) a.insert(a.end(), {"-initrd", spec.initrd});
  if (!spec.append.empty()) a.insert(a.end(), {"-append", spec.append});
  if (!spec.disk.empty()) {
    a.insert(a.end(), {"-drive", "file=" + QemuEscape(spec.disk) + ",format=raw,if=virtio"});
  }
  a.insert(a.end(), {"-chardev", "file,id=ser0,path=" + QemuEscape(paths.serial_log), "-serial",
                     "chardev:ser0"});
  std::vector<std::string> qmp = QmpServerArgs(paths.qmp_socket);
  a.insert(a.end(), qmp.begin(), qmp.end());
  if (spec.guest_port != 0) {
    std::string netdev = "user,id=n0,restrict=on";
    if (paths.host_port != 0) {
      netdev += ",hostfwd=tcp:127.0.0.1:" + std::to_string(paths.host_port) +
                "-:" + std::to_string(spec.guest_port);
    }
    a.insert(a.end(), {"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"});
  }
  if (!paths.tpm_socket.empty()) {
    a.insert(a.end(), {"-chardev", "socket,id=chrtpm,path=" + QemuEscape(paths.tpm_socket),
                       "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device",
                       "tpm-tis,tpmdev=tpm0"});
  }
  if (mode == VmLaunchMode::kIncoming) a.insert(a.end(), {"-incoming", "defer", "-S"});
  return a;
}

// ---- Vm ----------------------------------------------------------------------------------------

Vm::Vm(VmSpec spec, VmPaths paths, pid_t pid, bool is_child, std::unique_ptr<QmpClient> qmp)
    : spec_(std::move(spec)),
      paths_(std::move(paths)),
      pid_(pid),
      is_child_(is_child),
      qmp_(std::move(qmp)) {}

Vm::~Vm() = default;

std::string Vm::Describe() const {
  return "vm " + spec_.name + " (pid " + std::to_string(pid_) + ")";
}

Result<std::unique_ptr<Vm>> Vm::Launch(const VmSpec& spec, const VmPaths& paths, VmLaunchMode mode,
                                       const std::string& qemu_binary) {
  const std::string what = "vm " + spec.name;
  auto fail = [&](Errc code, const std::string& msg) { return Error(code, what + ": " + msg); };
  if (Status s = ValidateVmSpec(spec); !s.ok()) return s.WithContext(what);
  for (const std::string* f : {&spec.kernel, &spec.initrd, &spec.disk}) {
    if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
      return fail(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                  "cannot read " + *f + ": " + ErrnoText(errno));
    }
  }
  if (qemu_binary.empty()) return fail(Errc::kInvalidArgument, "empty QEMU binary name");
  if (paths.qmp_socket.size() >= sizeof(sockaddr_un::sun_path)) {
    return fail(Errc::kInvalidArgument,
                "QMP socket path " + paths.qmp_socket + " is too long for a unix socket");
  }
  if (spec.tpm == paths.tpm_socket.empty()) {
    return fail(Errc::kInvalidArgument, spec.tpm ? "the spec asks for a vTPM but none is attached"
                                                 : "a vTPM is attached but the spec has none");
  }
  if (paths.tpm_socket.size() >= sizeof(sockaddr_un::sun_path)) {
    return fail(Errc::kInvalidArgument,
                "vTPM socket path " + paths.tpm_socket + " is too long for a unix socket");
  }
  if (paths.memory_file.empty()) return fail(Errc::kInvalidArgument, "no memory file path");
  SOD_RETURN_IF_ERROR(MakePrivateDir(paths.dir).WithContext(what));
  ::unlink(paths.qmp_socket.c_str());  // a stale socket of an earlier QEMU

  // Guest RAM must never be readable by others: create the file ourselves, 0600, exclusively.
  int mfd = ::open(paths.memory_file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (mfd < 0) {
    int err = errno;
    return fail(err == EEXIST ? Errc::kState : Errc::kIo,
                "cannot create memory file " + paths.memory_file + ": " + ErrnoText(err));
  }
  ::close(mfd);

  const std::vector<std::string> args = BuildQemuArgs(spec, paths, mode);
  const std::string preload = QemuPreloadLibrary();
  {
    // One header line per launch, so qemu.log tells which command line each run used.
    std::ofstream log(paths.qemu_log, std::ios::app);
    if (!preload.empty()) log << "---- sod: preloading " << preload << " (RAM write log)\n";
    log << "---- sod: launching " << qemu_binary;
    for (const auto& a : args) log << ' ' << a;
    log << '\n';
  }
  const off_t log_from = FileSize(paths.qemu_log);
  auto cleanup_fail = [&](pid_t pid, Errc code, const std::string& msg) -> Status {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
    }
    ::unlink(paths.memory_file.c_str());
    ::unlink(paths.qmp_socket.c_str());
    std::string tail = LogTail(paths.qemu_log, log_from);
    return fail(code, msg + (tail.empty() ? "" : "; qemu.log: " + tail));
  };

  Result<pid_t> pid = SpawnDetached(qemu_binary, args, paths.qemu_log, preload);
  if (!pid.ok()) return cleanup_fail(-1, pid.status().code(), pid.status().message());

  const auto deadline = Clock::now() + kLaunchTimeout;
  std::unique_ptr<QmpClient> qmp;
  Status last;
  while (!qmp) {
    int st = 0;
    if (WaitPidNoHang(*pid, st) == *pid) {
      return cleanup_fail(-1, Errc::kIo, "QEMU " + DescribeExit(st) + " during startup");
    }
    if (Clock::now() >= deadline) {
      return cleanup_fail(*pid, Errc::kTimeout,
                          "QMP did not answer within " + std::to_string(kLaunchTimeout.count()) +
                              " ms (" + last.ToString() + ")");
    }
    Result<std::unique_ptr<QmpClient>> c = QmpClient::Connect(paths.qmp_socket, milliseconds(500));
    if (c.ok()) {
      qmp = std::move(c).value();
    } else if (c.status().code() == Errc::kInvalidArgument) {
      return cleanup_fail(*pid, Errc::kInvalidArgument, c.status().message());
    } else {
      last = c.status();
      std::this_thread::sleep_for(milliseconds(50));
    }
  }

  const std::string want = mode == VmLaunchMode::kRun ? "running" : "inmigrate";
  for (;;) {
    Result<json> r = qmp->Execute("query-status");
    if (!r.ok()) return cleanup_fail(*pid, r.status().code(), r.status().message());
    std::string state =
        r->is_object() && (*r)["status"].is_string() ? (*r)["status"].get<std::string>() : "";
    if (state == want) break;
    if (Clock::now() >= deadline) {
      return cleanup_fail(*pid, Errc::kTimeout,
                          "run state is \"" + state + "\", expected \"" + want + "\"");
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  return std::unique_ptr<Vm>(new Vm(spec, paths, *pid, /*is_child=*/true, std::move(qmp)));
}

Result<std::unique_ptr<Vm>> Vm::Adopt(const VmSpec& spec, const VmPaths& paths, pid_t pid) {
  const std::string what = "vm " + spec.name + " (pid " + std::to_string(pid) + ")";
  if (!ProcessLive(pid)) return Error(Errc::kNotFound, what + ": no such live process");
  const std::string qmp_arg = QmpServerArgs(paths.qmp_socket)[1];
  std::vector<std::string> cmdline = ProcCmdline(pid);
  if (std::find(cmdline.begin(), cmdline.end(), qmp_arg) == cmdline.end()) {
    return Error(Errc::kState, what + ": the process is not this VM's QEMU (no -qmp " + qmp_arg +
                                   " on its command line)");
  }
  Result<std::unique_ptr<QmpClient>> qmp = QmpClient::Connect(paths.qmp_socket, kAdoptTimeout);
  if (!qmp.ok()) return qmp.status().WithContext(what);
  // Our child only if we spawned it in this process (never the case after a restart, but Adopt
  // may also be used on a QEMU this process launched and whose Vm was dropped).
  int st = 0;
  bool child = ::waitpid(pid, &st, WNOHANG) == 0;
  return std::unique_ptr<Vm>(new Vm(spec, paths, pid, child, std::move(qmp).value()));
}

Result<std::string> Vm::RunState() {
  Result<json> r = qmp_->Execute("query-status");
  if (!r.ok()) return r.status().WithContext(Describe());
  if (!r->is_object() || !(*r)["status"].is_string()) {
    return Error(Errc::kMalformed, Describe() + ": query-status without a \"status\" string");
  }
  return (*r)["status"].get<std::string>();
}

Status Vm::Resume() {
  Result<json> r = qmp_->Execute("cont");
  return r.ok() ? Status::Ok() : r.status().WithContext(Describe());
}

Status Vm::Pause() {
  Result<json> r = qmp_->Execute("stop");
  return r.ok() ? Status::Ok() : r.status().WithContext(Describe());
}

bool Vm::Ended() {
  if (ended_) return true;
  if (is_child_) {
    int st = 0;
    const pid_t r = WaitPidNoHang(pid_, st);
    if (r == pid_) return ended_ = true;
    if (r == 0) return false;
    is_child_ = false;  // ECHILD: someone else reaped it or it is not ours; fall through
  }
  if (!ProcessLive(pid_)) ended_ = true;
  return ended_;
}

bool Vm::WaitEnded(milliseconds timeout) {
  return WaitUntilEnded(pid_, [this] { return Ended(); }, Clock::now() + timeout);
}

void Vm::RemoveRuntimeFiles() {
  ::unlink(paths_.memory_file.c_str());
  ::unlink(paths_.qmp_socket.c_str());
}

Status Vm::Quit(milliseconds grace) {
  if (!Ended()) {
    // QEMU may close the socket before its reply arrives: any answer (or none) is fine, what
    // counts is that the process ends.
    (void)qmp_->Execute("quit", {}, std::min(grace, milliseconds(5000)));
    if (!WaitEnded(grace)) {
      ::kill(pid_, SIGKILL);
      if (!WaitEnded(milliseconds(10000))) {
        return Error(Errc::kIo, Describe() + ": still running 10 s after SIGKILL");
      }
    }
  }
  RemoveRuntimeFiles();
  return Status::Ok();
}

void Vm::Kill() {
  if (!Ended()) {
    ::kill(pid_, SIGKILL);
    WaitEnded(milliseconds(10000));
  }
  RemoveRuntimeFiles();
}

bool Vm::Alive() { return !Ended(); }

Result<RamPageTable> Vm::RamPages() const {
  auto t = HashRamFile(paths_.memory_file, kRamBlockName);
  if (!t.ok()) return t.status().WithContext(Describe());
  return t;
}

Result<std::array<uint8_t, 16>> Vm::RamDigest() const {
  SOD_ASSIGN_OR_RETURN(RamPageTable t, RamPages());
  return RamTableDigest(t);
}

}  // namespace sod
