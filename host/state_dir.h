// sodd's state directory: what survives a sodd restart.
//
//   <root>/sodd.pid, sodd.log, sodd.sock (admin socket), events.log, audit.log, receipts/
//   <root>/vms/<name>/spec.json   the VmSpec (VmSpecToJson)
//   <root>/vms/<name>/state.json  the VmRecord: phase, pid, forwarded port, memory file, migration
//   <root>/vms/<name>/qmp.sock, serial.log, qemu.log   (VmPaths, migrate/vm.h)
//
// spec.json and state.json are replaced atomically (temporary file, fsync, rename), so a crash
// leaves either the old or the new version. Directories are created 0700, files 0600.
//
// Thread-safety: StateDir holds only paths; its methods may run concurrently for different VMs.
// Writes for one VM must be serialized by the caller (VmRegistry does).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/files.h"
#include "base/status.h"
#include "migrate/vm.h"

namespace sod {

// Where a VM is in its life on this host.
enum class VmPhase {
  kStarting,      // QEMU being launched (sodd died during a launch if found at startup)
  kRunning,       // running here
  kPaused,        // here, QEMU not running (paused, or any other non-running run state)
  kMigratingOut,  // leased to the migration engine as a source
  kMigratingIn,   // an incoming QEMU (-incoming defer) the destination engine is filling
  kInDoubt,       // a migration ended without a known outcome: at most one copy runs; `recover`
  kMigratedAway,  // committed to another host; no QEMU here (a record kept for status)
  kLost,          // its QEMU ended or could not be re-attached; no QEMU here
};
inline constexpr VmPhase kLastVmPhase = VmPhase::kLost;

// "starting", "running", "paused", "migrating-out", "migrating-in", "in-doubt", "migrated-away",
// "lost".
std::string_view VmPhaseName(VmPhase phase);
std::optional<VmPhase> VmPhaseFromName(std::string_view name);
// True for phases in which a QEMU of this VM is expected to exist here.
bool PhaseHasQemu(VmPhase phase);

// state.json.
struct VmRecord {
  VmPhase phase = VmPhase::kStarting;
  pid_t pid = 0;             // QEMU pid, 0 when there is none
  uint16_t host_port = 0;    // forwarded host port, 0 for none
  std::string memory_file;   // VmPaths::memory_file of the current QEMU
  std::string migration_id;  // the migration that leased the VM, if any
  std::string note;          // why the phase is what it is (lost / in-doubt reasons)
  std::string updated;       // RFC 3339 UTC of the last change
  uint64_t vtpm_epoch = 0;   // the VM's vTPM epoch here (vtpm/README.md); 0 = no vTPM
  bool operator==(const VmRecord&) const = default;
};
nlohmann::json VmRecordToJson(const VmRecord& r);
// Strict like VmSpecFromJson: unknown keys and bad types are refused (kInvalidArgument).
Result<VmRecord> VmRecordFromJson(const nlohmann::json& j);

class StateDir {
 public:
  // Creates root, root/vms and root/receipts (0700) when missing.
  static Result<StateDir> Open(const std::string& root);

  const std::string& root() const { return root_; }
  std::string vms_dir() const { return root_ + "/vms"; }
  std::string receipts_dir() const { return root_ + "/receipts"; }
  std::string vm_dir(std::string_view name) const { return vms_dir() + "/" + std::string(name); }
  std::string pid_file() const { return root_ + "/sodd.pid"; }
  std::string log_file() const { return root_ + "/sodd.log"; }
  std::string events_log() const { return root_ + "/events.log"; }
  std::string audit_log() const { return root_ + "/audit.log"; }
  std::string default_admin_socket() const { return root_ + "/sodd.sock"; }

  // Names of the directories under vms/ (sorted); entries that are not valid VM names are skipped.
  Result<std::vector<std::string>> ListVms() const;
  // Creates vms/<name> (0700) and writes spec.json and state.json.
  Status SaveVm(const VmSpec& spec, const VmRecord& record) const;
  Status SaveRecord(std::string_view name, const VmRecord& record) const;
  Result<VmSpec> LoadSpec(std::string_view name) const;
  Result<VmRecord> LoadRecord(std::string_view name) const;
  // Removes vms/<name> and everything in it; OK when it does not exist.
  Status RemoveVm(std::string_view name) const;

 private:
  explicit StateDir(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace sod
