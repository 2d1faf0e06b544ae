// The VM layer: what a VM is (VmSpec), where its host-local files live (VmPaths), the QEMU command
// line that runs it (BuildQemuArgs), and one running QEMU plus its QMP connection (Vm).
//
// A VM's QEMU is started in its own session and process group (setsid), so signals aimed at sodd
// (a terminal ^C, kill -9, a service manager stopping sodd) never reach the VM: a VM outlives sodd
// restarts, and a restarted sodd re-attaches to it with Vm::Adopt.
//
// Guest RAM lives in a memory-backend-file (share=on) under /dev/shm, created mode 0600 by Launch:
// the migration engine reads and writes guest RAM through that file, and RamDigest hashes it.
// Launch preloads sod's libsod_qemu_uffd.so into QEMU (the one built with sod; $SOD_QEMU_PRELOAD
// names another, "" none): it gives the RAM check a kernel write log of QEMU's RAM mapping
// (migrate/ram_write_log.h) and changes nothing else in QEMU.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "migrate/qmp.h"
#include "migrate/ram_stream.h"

namespace sod {

// What a customer asks for. Travels with the VM on migration, so a destination must treat a spec
// from a peer as hostile: VmSpecFromJson checks every field, and the destination decides (by
// policy) whether the kernel / initrd / disk paths it names are acceptable there.
struct VmSpec {
  std::string name;            // [a-z0-9][a-z0-9-]{0,31}
  uint32_t memory_mb = 512;    // 64..16384
  uint32_t vcpus = 1;          // 1..16
  std::string machine = "pc";  // QEMU machine type: 1..64 of [a-z0-9._-]
  std::string accel = "tcg";   // "tcg" | "kvm"
  std::string cpu = "qemu64";  // QEMU -cpu value: 1..128 of [A-Za-z0-9._+=,-]
  std::string kernel;          // direct kernel boot: absolute paths that must exist on every host
  std::string initrd;          //   (kernel is required unless a disk is given)
  std::string append;          // kernel command line, at most 2047 bytes, no control characters
  std::string disk;            // optional raw disk image on shared storage ("" = none)
  uint16_t guest_port = 0;     // guest TCP port forwarded from the host (0 = no network)
  // A virtual TPM 2.0 (vtpm/): the host runs a swtpm for the VM and attaches it (tpm-tis); its
  // state moves with the VM. Launch needs VmPaths::tpm_socket exactly when this is set.
  bool tpm = false;
  // The customer's security request (policy/README.md, "SecurityRequest": a package or options),
  // as compact JSON, or "" for none (nothing requested). The VM layer only checks that it is a
  // JSON object of at most kMaxVmSecurityBytes; sodd resolves and validates it with the policy
  // library (host/policy_agent.h). It never reaches QEMU, so it may change while the VM runs.
  std::string security;
  bool operator==(const VmSpec&) const = default;
};

// The id of the guest's memory backend, which QEMU also uses as its RAM block's name in the
// migration stream (RamStreamTracker::Block).
inline constexpr std::string_view kRamBlockName = "mem0";
inline constexpr uint32_t kMinVmMemoryMb = 64;
inline constexpr uint32_t kMaxVmMemoryMb = 16384;
inline constexpr uint32_t kMaxVmVcpus = 16;
inline constexpr size_t kMaxVmNameLength = 32;
inline constexpr size_t kMaxKernelAppendLength = 2047;
inline constexpr size_t kMaxVmSpecFileBytes = 64 * 1024;
inline constexpr size_t kMaxVmSecurityBytes = 4096;

// kInvalidArgument unless `name` matches [a-z0-9][a-z0-9-]{0,31}.
Status ValidateVmName(std::string_view name);
// kInvalidArgument naming the first field that is out of its range or alphabet.
Status ValidateVmSpec(const VmSpec& spec);
// Strict decoding: `j` must be an object; unknown keys, wrong JSON types (a number given as a
// string, a float or negative number for a count, ...) and out-of-range values are refused with
// kInvalidArgument naming the key. "name" is required, and "kernel" unless "disk" is given; every
// other key defaults as in VmSpec.
Result<VmSpec> VmSpecFromJson(const nlohmann::json& j);
// Every field, always (so a spec read back compares equal), except "security", which is written
// (as a JSON object) only when set.
nlohmann::json VmSpecToJson(const VmSpec& s);
// Reads a JSON file (at most kMaxVmSpecFileBytes). Errors name the path: kNotFound, kIo,
// kMalformed (not JSON), kInvalidArgument (VmSpecFromJson).
Result<VmSpec> LoadVmSpec(const std::string& path);

// Host-local files of one VM. Never sent to a peer.
struct VmPaths {
  std::string dir;          // per-VM run dir (created 0700 by Vm::Launch)
  std::string qmp_socket;   // <dir>/qmp.sock
  std::string serial_log;   // <dir>/serial.log: the guest console (truncated at each launch)
  std::string qemu_log;     // <dir>/qemu.log: QEMU's stdout and stderr (appended)
  std::string memory_file;  // guest RAM: memory-backend-file,share=on (under /dev/shm)
  uint16_t host_port = 0;   // 127.0.0.1:host_port -> guest_port (when guest_port != 0)
  // vTPM: the control socket of this VM's swtpm (vtpm/vm_tpm.h), attached as a TPM 2.0
  // tpm-tis device through QEMU's tpm-emulator backend. "" = no TPM. Not set by MakeVmPaths.
  std::string tpm_socket;
};

// The standard layout below `dir`; memory file /dev/shm/sod-<host_id>-<vm name>-<16 random hex>.
// Pure apart from the random suffix; creates nothing.
VmPaths MakeVmPaths(const std::string& dir, std::string_view host_id, const VmSpec& spec,
                    uint16_t host_port);

enum class VmLaunchMode {
  kRun,       // boot and run
  kIncoming,  // -incoming defer -S: waits, paused, for migrate-incoming
};

// The QEMU arguments (argv[1..]) for `spec`. Precondition: ValidateVmSpec(spec) is OK (values are
// embedded in QEMU option strings; paths get QEMU's comma escaping). Two hosts given the same spec
// produce the same device configuration, which is what migration needs; only the host-local paths
// and the forwarded host port differ. Network (user-net, restrict=on, virtio-net-pci) only when
// spec.guest_port != 0, with a host forward when paths.host_port != 0.
// When paths.tpm_socket is set, a TPM (-chardev socket, -tpmdev emulator, -device tpm-tis) comes
// last before the incoming options; both sides of a migration must then have one.
std::vector<std::string> BuildQemuArgs(const VmSpec& spec, const VmPaths& paths, VmLaunchMode mode);

// A QEMU process that sod started (or adopted after a sodd restart) plus its QMP connection.
//
// Lifetime: destroying a Vm closes its QMP connection but does NOT end QEMU (a VM outlives sodd
// restarts); Quit or Kill end it. A launched QEMU is a child of this process: as long as the Vm
// exists, Alive/Quit/Kill reap it; destroying the Vm of a still-running child leaves reaping to
// this process's exit (the QEMU then gets a new parent).
//
// Thread-safety: not thread-safe; one owner thread at a time (the migration engine takes it over
// for the duration of a migration). The const accessors never touch QEMU.
class Vm {
 public:
  // Bounds the whole Launch (spawn until QMP answers and the VM has the expected run state).
  static constexpr std::chrono::milliseconds kLaunchTimeout{60000};
  // Bounds Adopt's QMP connection.
  static constexpr std::chrono::milliseconds kAdoptTimeout{5000};

  // Validates `spec`, checks that kernel / initrd / disk exist, creates paths.dir (0700) and the
  // memory file (0600, must not exist yet), spawns `qemu_binary` (PATH lookup when it has no '/')
  // with BuildQemuArgs in its own session, and waits until QMP answers and, for kRun, the VM runs
  // (kIncoming: status "inmigrate"). On failure nothing is left running and the memory file and
  // QMP socket are removed. Errors name the VM and carry the tail of qemu.log: kInvalidArgument,
  // kNotFound (binary, kernel, ...), kState (memory file exists), kIo, kTimeout.
  static Result<std::unique_ptr<Vm>> Launch(const VmSpec& spec, const VmPaths& paths,
                                            VmLaunchMode mode,
                                            const std::string& qemu_binary = "qemu-system-x86_64");

  // Re-attaches to a QEMU started by an earlier sodd: `pid` must be alive, not a zombie, and run
  // with this VM's QMP socket on its command line (guards against a reused pid), and QMP must
  // answer within kAdoptTimeout. Errors: kNotFound (no such live process), kState (the pid is
  // another process), kTimeout / kIo / kClosed (QMP).
  static Result<std::unique_ptr<Vm>> Adopt(const VmSpec& spec, const VmPaths& paths, pid_t pid);

  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  const VmSpec& spec() const { return spec_; }
  const VmPaths& paths() const { return paths_; }
  // Replaces spec().security (it does not concern QEMU). Same thread rule as every other call.
  void set_security(std::string security) { spec_.security = std::move(security); }
  pid_t pid() const { return pid_; }
  // True when this process spawned the QEMU (Launch), false when it was adopted.
  bool is_child() const { return is_child_; }
  // Valid for the Vm's lifetime; after Quit/Kill every call fails with kClosed.
  QmpClient& qmp() { return *qmp_; }

  // query-status "status": "running", "paused", "postmigrate", "inmigrate", "prelaunch", ...
  Result<std::string> RunState();
  Status Resume();  // cont
  Status Pause();   // stop
  // QMP quit, waits up to `grace` for QEMU to exit, SIGKILL after that. OK once QEMU has ended
  // (either way); then removes the memory file and the QMP socket. kIo only when the process could
  // not be ended.
  Status Quit(std::chrono::milliseconds grace);
  // SIGKILL, waits for the process to end (reaps a child), removes the memory file and QMP socket.
  void Kill();
  // False once QEMU has ended (a child is reaped here; a zombie counts as ended).
  bool Alive();

  // The guest RAM file's page hashes (block kRamBlockName) and their digest (RamTableDigest,
  // what receipts carry; print with ToHex). Precondition: the VM is not running (paused,
  // postmigrate, or incoming and loaded), otherwise the value is meaningless. Errors: kIo.
  Result<RamPageTable> RamPages() const;
  Result<std::array<uint8_t, 16>> RamDigest() const;

 private:
  Vm(VmSpec spec, VmPaths paths, pid_t pid, bool is_child, std::unique_ptr<QmpClient> qmp);
  // True when the process has ended (reaping it when it is our child).
  bool Ended();
  // Waits up to `timeout` for the process to end.
  bool WaitEnded(std::chrono::milliseconds timeout);
  void RemoveRuntimeFiles();
  std::string Describe() const;  // "vm web1 (pid 1234)"

  VmSpec spec_;
  VmPaths paths_;
  pid_t pid_;
  bool is_child_;
  bool ended_ = false;
  std::unique_ptr<QmpClient> qmp_;
};

}  // namespace sod
