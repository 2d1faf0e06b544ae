// VmRegistry: the VMs of this host, by name, with their phase (state_dir.h), persisted in the state
// directory so that a restarted sodd re-attaches to the QEMUs that kept running.
//
// Who may touch a VM's Vm object (which is not thread-safe) is decided here, under one mutex:
//   free      nobody; the registry itself may use it briefly (Show, Stop, CheckLiveness)
//   op        one registry call on some thread (a start, a stop, a QMP query); others wait for it
//   lease     the migration engine (VmLease) — long-lived; other calls are refused, not queued
//   incoming  the destination engine owns the Vm (LaunchIncoming .. AdoptMigratedIn/Discard...)
//
// Source side of a migration:
//   auto lease = registry.LeaseForMigration("web1", migration_id);   // phase migrating-out
//   ... drive lease->vm() ...
//   lease->Finish(LeaseOutcome::kMigratedAway)   // committed: QEMU quit here, record kept
//   lease->Finish(LeaseOutcome::kReturned)       // aborted: back to running / paused
//   lease->Finish(LeaseOutcome::kInDoubt, why)   // outcome unknown: stays paused, `recover` later
// Destination side:
//   auto vm = registry.LaunchIncoming(spec, migration_id);   // QEMU -incoming defer -S
//   ... migrate-incoming, stream, commit ...
//   registry.AdoptMigratedIn(std::move(vm))          // committed: a VM of this host now
//   registry.DiscardIncoming(std::move(vm), why)     // aborted: QEMU killed, name freed
//   registry.KeepIncomingInDoubt(std::move(vm), why) // outcome unknown: kept, phase in-doubt
//   registry.AbandonIncoming(name, pid, why)         // aborted, and the engine dropped the Vm
// IncomingVmSlot (below) wraps this for an engine that takes a launch callback.
//
// Every change is written to state.json before the call returns and reported to the EventSink.
// Thread-safety: all methods are thread-safe. Lifetime: the StateDir passed to Open and the
// registry must outlive every VmLease; a lease or incoming Vm must be finished / handed back
// before the registry is destroyed. Destroying the registry leaves every QEMU running.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "host/event_log.h"
#include "host/forward_ports.h"
#include "host/state_dir.h"
#include "migrate/migration_destination.h"
#include "migrate/vm.h"
#include "vtpm/vm_tpm.h"

namespace sod::vtpm {
class VtpmHost;
}

namespace sod {

// A snapshot of one VM, for listing and showing.
struct VmInfo {
  VmSpec spec;
  VmRecord record;
  VmPaths paths;
  bool leased = false;    // a migration (or recovery) engine holds it right now
  std::string run_state;  // QEMU's run state (Show only; empty when not asked or unknown)
  // The VM's vTPM (spec.tpm): "none" (no vTPM), "running", "stopped" (its swtpm ended; state
  // kept), "erased" (moved away: state and keys destroyed here). Epoch: record.vtpm_epoch.
  std::string vtpm_status = "none";
  pid_t vtpm_pid = 0;
};

enum class LeaseOutcome {
  kReturned,      // the VM stays here (migration aborted or recovery resumed it)
  kInDoubt,       // the outcome is unknown: keep the (paused) VM, phase in-doubt
  kMigratedAway,  // the VM now runs elsewhere: QEMU is quit here (if the engine did not yet)
};

class VmRegistry;

// Exclusive use of one VM's Vm by a migration or recovery. Not thread-safe: one owner thread.
class VmLease {
 public:
  ~VmLease();  // Finish(kReturned) unless Finish was called
  VmLease(const VmLease&) = delete;
  VmLease& operator=(const VmLease&) = delete;

  // Valid until Finish.
  Vm& vm() { return *vm_; }
  const std::string& name() const { return name_; }
  const std::string& migration_id() const { return migration_id_; }
  // The vTPM epoch the VM moved to (kMigratedAway): kept in the record of a VM gone elsewhere.
  void set_vtpm_epoch(uint64_t epoch) { vtpm_epoch_ = epoch; }

  // Ends the lease (second and later calls: kState). kReturned asks QEMU for its run state to set
  // the phase (running / paused; lost when QEMU is gone). kMigratedAway quits a QEMU that still
  // runs. `note` is kept in state.json and shown by `vm show`.
  Status Finish(LeaseOutcome outcome, std::string note = {});

 private:
  friend class VmRegistry;
  VmLease(VmRegistry* registry, std::string name, std::string migration_id, Vm* vm)
      : registry_(registry),
        name_(std::move(name)),
        migration_id_(std::move(migration_id)),
        vm_(vm) {}
  VmRegistry* registry_;
  std::string name_;
  std::string migration_id_;
  Vm* vm_;
  uint64_t vtpm_epoch_ = 0;
  bool finished_ = false;
};

// One incoming migration's use of the registry, for the destination engine: Launcher() is the
// `launch_incoming` callback (one launch at most); Adopt hands the committed Vm over; destroying
// the slot without Adopt / KeepInDoubt cleans up whatever was launched (AbandonIncoming), also
// when the engine already killed and dropped the Vm. Not thread-safe; the registry must outlive
// the slot.
class IncomingVmSlot {
 public:
  explicit IncomingVmSlot(VmRegistry& registry, std::string migration_id = {})
      : registry_(registry), migration_id_(std::move(migration_id)) {}
  ~IncomingVmSlot();
  IncomingVmSlot(const IncomingVmSlot&) = delete;
  IncomingVmSlot& operator=(const IncomingVmSlot&) = delete;

  // Calls VmRegistry::LaunchIncoming and remembers what it launched. A second launch is refused
  // (kState).
  Result<std::unique_ptr<Vm>> Launch(const VmSpec& spec, const IncomingVtpm* vtpm = nullptr);
  // Launch(spec) as a function; the slot must outlive it.
  std::function<Result<std::unique_ptr<Vm>>(const VmSpec&)> Launcher();
  // VmRegistry::AdoptMigratedIn. kState when `vm` is not the one this slot launched (that QEMU
  // is then killed, as AdoptMigratedIn does: nobody would own it).
  Status Adopt(std::unique_ptr<Vm> vm);
  // VmRegistry::KeepIncomingInDoubt (same refusal as Adopt).
  Status KeepInDoubt(std::unique_ptr<Vm> vm, std::string note);
  // Gives up now (what the destructor does): `why` goes to the event log.
  void Abandon(std::string_view why);

  bool launched() const { return pid_ != 0; }

 private:
  Status CheckOurs(const std::unique_ptr<Vm>& vm) const;
  VmRegistry& registry_;
  std::string migration_id_;
  std::string name_;
  pid_t pid_ = 0;
  bool done_ = false;
};

class VmRegistry {
 public:
  struct Options {
    std::string host_id;  // names memory files (/dev/shm/sod-<host_id>-...)
    PortRange forward_ports;
    std::string qemu_binary = "qemu-system-x86_64";
    std::chrono::milliseconds quit_grace{10000};  // Stop: QMP quit, then SIGKILL after this
    EventSink events;                             // may be empty
  };

  // Opens the registry over `state` (must outlive the registry) and recovers every VM recorded
  // there: a VM whose QEMU is alive and answers QMP is re-adopted (running / paused as QEMU says;
  // one caught mid-migration becomes in-doubt); any other becomes lost and its memory file is
  // removed; migrated-away and lost records stay as they are. Records that cannot be read are
  // reported (event "vm.unreadable") and skipped.
  static Result<std::unique_ptr<VmRegistry>> Open(const StateDir& state, Options options);
  ~VmRegistry();
  VmRegistry(const VmRegistry&) = delete;
  VmRegistry& operator=(const VmRegistry&) = delete;

  // Launches a new VM (VmLaunchMode::kRun), assigning a forward port when spec.guest_port != 0.
  // The name may reuse that of a migrated-away or lost record (which is replaced; a vTPM it left
  // is erased). A VM with a vTPM gets a new one, at the epoch after the highest this host has
  // seen for the name. Errors: kInvalidArgument (spec), kState (name in use), kExhausted (no
  // port), kUnsupported (a vTPM on a host without vTPM support), VmTpm / Vm::Launch errors.
  Result<VmInfo> Start(const VmSpec& spec);
  // Replaces a running or paused VM's security request (VmSpec::security, already validated by
  // the caller) and writes spec.json. kNotFound; kState while a migration holds it or when it
  // does not run here (migrated away, lost).
  Status SetSecurity(std::string_view name, std::string security);
  // Every VM, sorted by name (no QMP queries).
  std::vector<VmInfo> List() const;
  // One VM, with its run state from QMP when nobody else uses it. kNotFound.
  Result<VmInfo> Show(std::string_view name);
  // Quits the VM's QEMU (if any) and its swtpm, erases its vTPM, and forgets it (its directory is
  // removed). Refused with kState
  // while a migration holds it, and for an in-doubt VM unless `force` (it may be the only copy).
  // kNotFound.
  Status Stop(std::string_view name, bool force = false);

  // Source side: exclusive use of a running or paused VM; phase migrating-out. kNotFound, kState
  // (another phase, or busy).
  Result<std::unique_ptr<VmLease>> LeaseForMigration(std::string_view name,
                                                     std::string migration_id);
  // Recovery of an in-doubt VM: exclusive use, the phase stays in-doubt until Finish.
  Result<std::unique_ptr<VmLease>> LeaseForRecovery(std::string_view name);

  // Destination side: reserves spec.name (refused with kState when a VM of that name is here and
  // neither migrated-away nor lost), picks paths and a forward port under the state dir, and
  // launches QEMU in VmLaunchMode::kIncoming. Phase migrating-in. The caller owns the Vm until it
  // hands it back with exactly one of the three calls below. A VM with a vTPM needs `vtpm` (its
  // epoch and migration key): its incoming swtpm starts first (record.vtpm_epoch = vtpm->epoch);
  // a discarded incoming VM's vTPM is erased.
  Result<std::unique_ptr<Vm>> LaunchIncoming(const VmSpec& spec, std::string migration_id = {},
                                             const IncomingVtpm* vtpm = nullptr);
  // The migration committed: the VM becomes one of this host's VMs (phase from its run state).
  // kNotFound when `vm` did not come from LaunchIncoming (it is then killed).
  Status AdoptMigratedIn(std::unique_ptr<Vm> vm);
  // The migration failed: kills the QEMU, frees the name and port, removes the VM's directory.
  void DiscardIncoming(std::unique_ptr<Vm> vm, std::string_view why);
  // The outcome is unknown: keeps the QEMU (paused), phase in-doubt.
  Status KeepIncomingInDoubt(std::unique_ptr<Vm> vm, std::string note);
  // For an engine that dropped the Vm itself after a failed migration: if `name` is reserved by
  // LaunchIncoming for QEMU `pid`, ends that QEMU if it still runs (it is a child of this process,
  // so a pid already reaped is never signalled), removes its memory file and frees the name and
  // port. Anything else is left alone.
  void AbandonIncoming(std::string_view name, pid_t pid, std::string_view why);

  // Finds VMs whose QEMU ended on its own (guest shutdown, crash, killed) and marks them lost
  // (reaping the process, removing its memory file, stopping its swtpm; the vTPM state is kept).
  // Call periodically.
  void CheckLiveness();

  // The host's vTPM keeper (keys, epochs), once the host TPM is up; records the epochs of the
  // VMs running here. Without one, VMs with a vTPM are refused (kUnsupported); those found at
  // Open are still re-attached to their running swtpm. Before the registry is shared between
  // threads; `vtpm` must outlive the registry.
  void SetVtpmHost(vtpm::VtpmHost* vtpm);
  vtpm::VtpmHost* vtpm_host() const { return vtpm_; }

  const std::string& host_id() const { return options_.host_id; }
  const Options& options() const { return options_; }

 private:
  friend class VmLease;
  enum class Use { kFree, kOp, kLease, kIncoming };
  struct Entry {
    VmSpec spec;
    VmPaths paths;
    VmRecord record;
    std::unique_ptr<Vm> vm;  // null when no QEMU is here, or while an incoming Vm is out
    std::unique_ptr<vtpm::VmTpm> tpm;  // the VM's swtpm while it runs (spec.tpm)
    Use use = Use::kFree;
  };
  using Lock = std::unique_lock<std::mutex>;

  VmRegistry(const StateDir& state, Options options);
  void Recover();
  void RecoverOne(const std::string& name);
  // Launches with up to three forward ports (another process may grab a port first).
  Result<std::unique_ptr<Vm>> LaunchWithPortRetry(const std::string& name, VmLaunchMode mode);
  // Reserves `spec.name` for a new VM in `phase` with use `use`; returns the entry.
  Result<Entry*> Reserve(const VmSpec& spec, VmPhase phase, Use use, std::string migration_id,
                         Lock& lock);
  // Drops a reserved entry after a failed launch (its swtpm stopped, its vTPM erased).
  void Unreserve(const std::string& name, Lock& lock);
  // The paths of VM `name` with a forward port; with the vTPM socket when spec.tpm.
  VmPaths PathsFor(const VmSpec& spec, uint16_t host_port) const;
  // Stops the entry's swtpm (if any) and, with `erase`, destroys its vTPM state and keys.
  void EndVtpm(Entry& e, bool erase, std::string_view why);
  // Waits (up to `timeout`) while another call uses the entry; kState when it is leased.
  Result<Entry*> WaitForFree(std::string_view name, std::chrono::milliseconds timeout, Lock& lock);
  // Sets phase / note / timestamp and writes state.json. Caller holds the lock.
  void SetRecord(Entry& e, VmPhase phase, std::string note);
  void Emit(std::string_view kind, const nlohmann::json& data) const;
  VmInfo InfoOf(const Entry& e) const;
  Status FinishLease(VmLease& lease, LeaseOutcome outcome, std::string note);
  Result<std::unique_ptr<VmLease>> LeaseImpl(std::string_view name, std::string migration_id,
                                             bool recovery);

  const StateDir& state_;
  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;                     // an entry became free
  std::map<std::string, Entry, std::less<>> vms_;  // guarded by mu_
  ForwardPorts ports_;                             // guarded by mu_
  vtpm::VtpmHost* vtpm_ = nullptr;                 // set once, before concurrent use
};

}  // namespace sod
