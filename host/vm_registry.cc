#include "host/vm_registry.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <utility>

#include "vtpm/vtpm_host.h"

namespace sod {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kShowWait{5000};
constexpr milliseconds kLeaseWait{10000};
constexpr int kLaunchAttempts = 3;

VmPhase PhaseFromRunState(const Result<std::string>& rs) {
  return rs.ok() && *rs == "running" ? VmPhase::kRunning : VmPhase::kPaused;
}

}  // namespace

// ---- VmLease -----------------------------------------------------------------------------------

VmLease::~VmLease() {
  if (!finished_) (void)Finish(LeaseOutcome::kReturned, "lease released without an outcome");
}

Status VmLease::Finish(LeaseOutcome outcome, std::string note) {
  return registry_->FinishLease(*this, outcome, std::move(note));
}

// ---- VmRegistry --------------------------------------------------------------------------------

VmRegistry::VmRegistry(const StateDir& state, Options options)
    : state_(state), options_(std::move(options)), ports_(options_.forward_ports) {}

VmRegistry::~VmRegistry() {
  // Like their QEMUs, the swtpms of running VMs outlive sodd; the next one adopts them.
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, e] : vms_)
    if (e.tpm) e.tpm->Release();
}

VmPaths VmRegistry::PathsFor(const VmSpec& spec, uint16_t host_port) const {
  const std::string dir = state_.vm_dir(spec.name);
  VmPaths p = MakeVmPaths(dir, options_.host_id, spec, host_port);
  if (spec.tpm) p.tpm_socket = vtpm::VtpmHost::SocketOf(dir);
  return p;
}

void VmRegistry::EndVtpm(Entry& e, bool erase, std::string_view why) {
  if (e.tpm) {
    Status s = e.tpm->Stop();
    if (!s.ok()) Emit("vtpm.stop-failed", {{"vm", e.spec.name}, {"error", s.ToString()}});
    e.tpm.reset();
  }
  if (!erase || !e.spec.tpm) return;
  const std::string dir = state_.vm_dir(e.spec.name);
  Status s = vtpm_ ? vtpm_->Erase(dir)
                           : vtpm::EraseVmTpmState(vtpm::VtpmHost::StateDirOf(dir));
  if (!s.ok()) {
    Emit("vtpm.erase-failed", {{"vm", e.spec.name}, {"error", s.ToString()}});
  } else {
    Emit("vtpm.erased", {{"vm", e.spec.name}, {"epoch", e.record.vtpm_epoch}, {"reason", why}});
  }
}

Result<std::unique_ptr<VmRegistry>> VmRegistry::Open(const StateDir& state, Options options) {
  if (options.host_id.empty()) return Error(Errc::kInvalidArgument, "vm registry: no host id");
  std::unique_ptr<VmRegistry> r(new VmRegistry(state, std::move(options)));
  r->Recover();
  return r;
}

void VmRegistry::Emit(std::string_view kind, const json& data) const {
  if (options_.events) options_.events(kind, data);
}

void VmRegistry::SetRecord(Entry& e, VmPhase phase, std::string note) {
  e.record.phase = phase;
  e.record.note = std::move(note);
  e.record.updated = NowRfc3339();
  Status s = state_.SaveRecord(e.spec.name, e.record);
  if (!s.ok()) Emit("vm.state-write-failed", {{"vm", e.spec.name}, {"error", s.ToString()}});
}

VmInfo VmRegistry::InfoOf(const Entry& e) const {
  VmInfo i;
  i.spec = e.spec;
  i.record = e.record;
  i.paths = e.paths;
  i.leased = e.use == Use::kLease || e.use == Use::kIncoming;
  if (e.spec.tpm) {
    if (e.tpm) {
      i.vtpm_status = "running";
      i.vtpm_pid = e.tpm->pid();
    } else {
      i.vtpm_status = vtpm::HasVmTpmState(vtpm::VtpmHost::StateDirOf(state_.vm_dir(e.spec.name)))
                          ? "stopped"
                          : "erased";
    }
  }
  return i;
}

void VmRegistry::Recover() {
  Result<std::vector<std::string>> names = state_.ListVms();
  if (!names.ok()) {
    Emit("vm.unreadable", {{"vm", "*"}, {"error", names.status().ToString()}});
    return;
  }
  for (const std::string& name : *names) RecoverOne(name);
}

void VmRegistry::SetVtpmHost(vtpm::VtpmHost* vtpm) {
  vtpm_ = vtpm;
  if (!vtpm_) return;
  // A VM that runs here with its vTPM holds that epoch, whatever epochs.json says (sodd may have
  // died between the commit and writing it).
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, e] : vms_) {
    if (!e.spec.tpm || e.record.vtpm_epoch == 0) continue;
    if (e.record.phase != VmPhase::kRunning && e.record.phase != VmPhase::kPaused) continue;
    Status s = vtpm_->RecordEpoch(name, e.record.vtpm_epoch);
    if (!s.ok()) Emit("vtpm.epoch-write-failed", {{"vm", name}, {"error", s.ToString()}});
  }
}

void VmRegistry::RecoverOne(const std::string& name) {
  Result<VmSpec> spec = state_.LoadSpec(name);
  Result<VmRecord> rec = spec.ok() ? state_.LoadRecord(name) : Result<VmRecord>(spec.status());
  if (!rec.ok()) {
    Emit("vm.unreadable", {{"vm", name}, {"error", rec.status().ToString()}});
    return;
  }
  Entry e;
  e.spec = std::move(spec).value();
  e.record = std::move(rec).value();
  e.paths = PathsFor(e.spec, e.record.host_port);
  if (!e.record.memory_file.empty()) e.paths.memory_file = e.record.memory_file;
  const VmPhase was = e.record.phase;

  auto mark_lost = [&](std::string why) {
    if (!e.record.memory_file.empty()) ::unlink(e.record.memory_file.c_str());
    ::unlink(e.paths.qmp_socket.c_str());
    e.record.memory_file.clear();
    e.record.pid = 0;
    e.record.host_port = 0;
    SetRecord(e, VmPhase::kLost, why);
    Emit("vm.lost", {{"vm", name}, {"was", VmPhaseName(was)}, {"reason", why}});
  };

  if (PhaseHasQemu(was)) {
    Result<std::unique_ptr<Vm>> vm = Vm::Adopt(e.spec, e.paths, e.record.pid);
    if (!vm.ok()) {
      mark_lost("not re-adopted after a sodd restart: " + vm.status().ToString());
    } else {
      e.vm = std::move(vm).value();
      ports_.Reserve(e.record.host_port);
      if (e.spec.tpm) {
        Result<std::unique_ptr<vtpm::VmTpm>> tpm = vtpm::VmTpm::Adopt(
            vtpm::VtpmHost::StateDirOf(e.paths.dir), e.paths.tpm_socket, e.paths.dir + "/swtpm.log");
        if (tpm.ok()) {
          e.tpm = std::move(tpm).value();
        } else {
          Emit("vtpm.not-adopted", {{"vm", name}, {"error", tpm.status().ToString()}});
        }
      }
      if (was == VmPhase::kRunning || was == VmPhase::kPaused) {
        Result<std::string> rs = e.vm->RunState();
        SetRecord(e, PhaseFromRunState(rs), "");
        Emit("vm.adopted", {{"vm", name},
                            {"pid", e.record.pid},
                            {"run_state", rs.ok() ? *rs : rs.status().ToString()}});
      } else {
        std::string why = "sodd restarted while the VM was " + std::string(VmPhaseName(was));
        if (!e.record.migration_id.empty()) why += " (migration " + e.record.migration_id + ")";
        if (was == VmPhase::kInDoubt && !e.record.note.empty()) why = e.record.note;
        SetRecord(e, VmPhase::kInDoubt, why);
        Emit("vm.in-doubt", {{"vm", name}, {"pid", e.record.pid}, {"reason", why}});
      }
    }
  } else if (was == VmPhase::kStarting) {
    mark_lost("sodd stopped while the VM was starting");
  }
  if (e.spec.tpm && !e.vm) {
    // No QEMU uses this VM's swtpm any more: end one that a dead sodd left behind.
    auto orphan = vtpm::VmTpm::Adopt(vtpm::VtpmHost::StateDirOf(e.paths.dir), e.paths.tpm_socket);
    if (orphan.ok()) (void)(*orphan)->Stop();
  }
  std::lock_guard<std::mutex> lock(mu_);
  vms_.emplace(name, std::move(e));
}

Result<VmRegistry::Entry*> VmRegistry::Reserve(const VmSpec& spec, VmPhase phase, Use use,
                                               std::string migration_id, Lock& lock) {
  (void)lock;
  auto it = vms_.find(spec.name);
  if (it != vms_.end()) {
    const Entry& old = it->second;
    if (old.use != Use::kFree ||
        (old.record.phase != VmPhase::kMigratedAway && old.record.phase != VmPhase::kLost)) {
      return Error(Errc::kState, "a VM named " + spec.name + " already exists on this host (" +
                                     std::string(VmPhaseName(old.record.phase)) + ")");
    }
    EndVtpm(it->second, /*erase=*/true, "replaced by a new VM of the same name");
    vms_.erase(it);
  }
  uint16_t port = 0;
  if (spec.guest_port != 0) {
    Result<uint16_t> p = ports_.Allocate();
    if (!p.ok()) return p.status().WithContext("vm " + spec.name);
    port = *p;
  }
  Entry e;
  e.spec = spec;
  e.record.phase = phase;
  e.record.host_port = port;
  e.record.migration_id = std::move(migration_id);
  e.record.updated = NowRfc3339();
  e.use = use;
  return &vms_.emplace(spec.name, std::move(e)).first->second;
}

void VmRegistry::Unreserve(const std::string& name, Lock& lock) {
  (void)lock;
  auto it = vms_.find(name);
  if (it == vms_.end()) return;
  ports_.Release(it->second.record.host_port);
  EndVtpm(it->second, /*erase=*/true, "launch failed or incoming migration discarded");
  vms_.erase(it);
  (void)state_.RemoveVm(name);
  cv_.notify_all();
}

Result<std::unique_ptr<Vm>> VmRegistry::LaunchWithPortRetry(const std::string& name,
                                                            VmLaunchMode mode) {
  Status last;
  for (int attempt = 1; attempt <= kLaunchAttempts; ++attempt) {
    VmSpec spec;
    VmPaths paths;
    {
      Lock lock(mu_);
      Entry& e = vms_.at(name);  // ours: use is kOp / kIncoming
      spec = e.spec;
      paths = PathsFor(spec, e.record.host_port);
      e.paths = paths;
      e.record.memory_file = paths.memory_file;
      e.record.updated = NowRfc3339();
      Status saved = state_.SaveVm(spec, e.record);
      if (!saved.ok()) return saved.WithContext("vm " + name);
    }
    Result<std::unique_ptr<Vm>> vm = Vm::Launch(spec, paths, mode, options_.qemu_binary);
    if (vm.ok()) return vm;
    last = vm.status();
    const bool port_taken =
        spec.guest_port != 0 && last.message().find("host forwarding") != std::string::npos;
    if (!port_taken || attempt == kLaunchAttempts) break;
    Lock lock(mu_);
    Entry& e = vms_.at(name);
    Result<uint16_t> port = ports_.Allocate();  // before releasing: never the same port again
    ports_.Release(e.record.host_port);
    if (!port.ok()) return port.status().WithContext("vm " + name);
    e.record.host_port = *port;
  }
  return last;
}

Result<VmInfo> VmRegistry::Start(const VmSpec& spec) {
  SOD_RETURN_IF_ERROR(ValidateVmSpec(spec));
  if (spec.tpm && !vtpm_)
    return Error(Errc::kUnsupported, "vm " + spec.name +
                                         " asks for a vTPM and this host keeps none (sodd needs "
                                         "a host TPM: --tpm or --simulated-tpm)");
  {
    Lock lock(mu_);
    Result<Entry*> e = Reserve(spec, VmPhase::kStarting, Use::kOp, "", lock);
    if (!e.ok()) return e.status();
  }
  Status vtpm_ready = Status::Ok();
  if (spec.tpm) {
    // The swtpm first: QEMU connects to its socket at start.
    const uint64_t epoch = vtpm_->SeenEpoch(spec.name) + 1;
    Result<std::unique_ptr<vtpm::VmTpm>> tpm =
        vtpm_->StartForVm(spec.name, state_.vm_dir(spec.name));
    vtpm_ready = tpm.ok() ? vtpm_->RecordEpoch(spec.name, epoch) : tpm.status();
    Lock lock(mu_);
    Entry& e = vms_.at(spec.name);
    if (tpm.ok()) e.tpm = std::move(tpm).value();
    e.record.vtpm_epoch = epoch;
  }
  Result<std::unique_ptr<Vm>> vm =
      vtpm_ready.ok() ? LaunchWithPortRetry(spec.name, VmLaunchMode::kRun)
                      : Result<std::unique_ptr<Vm>>(vtpm_ready.WithContext("vm " + spec.name + " vTPM"));
  Lock lock(mu_);
  if (!vm.ok()) {
    Unreserve(spec.name, lock);
    Emit("vm.start-failed", {{"vm", spec.name}, {"error", vm.status().ToString()}});
    return vm.status();
  }
  Entry& e = vms_.at(spec.name);
  e.vm = std::move(vm).value();
  e.record.pid = e.vm->pid();
  e.use = Use::kFree;
  SetRecord(e, VmPhase::kRunning, "");
  cv_.notify_all();
  Emit("vm.started", {{"vm", spec.name},
                      {"pid", e.record.pid},
                      {"host_port", e.record.host_port},
                      {"spec", VmSpecToJson(spec)}});
  return InfoOf(e);
}

std::vector<VmInfo> VmRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<VmInfo> out;
  out.reserve(vms_.size());
  for (const auto& [name, e] : vms_) out.push_back(InfoOf(e));
  return out;
}

Result<VmRegistry::Entry*> VmRegistry::WaitForFree(std::string_view name, milliseconds timeout,
                                                   Lock& lock) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto it = vms_.find(name);
    if (it == vms_.end()) {
      return Error(Errc::kNotFound, "no VM named " + std::string(name) + " on this host");
    }
    Entry& e = it->second;
    switch (e.use) {
      case Use::kFree:
        return &e;
      case Use::kLease:
      case Use::kIncoming: {
        std::string why = "VM " + std::string(name) + " is held by a migration (" +
                          std::string(VmPhaseName(e.record.phase));
        if (!e.record.migration_id.empty()) why += ", migration " + e.record.migration_id;
        return Error(Errc::kState, why + ")");
      }
      case Use::kOp:
        if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
          return Error(Errc::kTimeout, "VM " + std::string(name) + " is busy (" +
                                           std::string(VmPhaseName(e.record.phase)) + ")");
        }
        break;
    }
  }
}

Status VmRegistry::SetSecurity(std::string_view name, std::string security) {
  Lock lock(mu_);
  SOD_ASSIGN_OR_RETURN(Entry * e, WaitForFree(name, kShowWait, lock));
  if (e->record.phase != VmPhase::kRunning && e->record.phase != VmPhase::kPaused)
    return Error(Errc::kState, "VM " + std::string(name) + " does not run here (" +
                                   std::string(VmPhaseName(e->record.phase)) + ")");
  VmSpec spec = e->spec;
  spec.security = std::move(security);
  SOD_RETURN_IF_ERROR(ValidateVmSpec(spec));
  SOD_RETURN_IF_ERROR(state_.SaveVm(spec, e->record));
  e->spec = spec;
  if (e->vm) e->vm->set_security(spec.security);
  return Status::Ok();
}

Result<VmInfo> VmRegistry::Show(std::string_view name) {
  Lock lock(mu_);
  Result<Entry*> free = WaitForFree(name, kShowWait, lock);
  if (!free.ok()) {
    if (free.status().code() == Errc::kNotFound) return free.status();
    auto it = vms_.find(name);  // leased or busy: what we know without asking QEMU
    if (it == vms_.end()) return free.status();
    return InfoOf(it->second);
  }
  Entry& e = **free;
  VmInfo info = InfoOf(e);
  if (!e.vm) return info;
  e.use = Use::kOp;
  Vm* vm = e.vm.get();
  lock.unlock();
  Result<std::string> rs = vm->RunState();
  lock.lock();
  e.use = Use::kFree;
  cv_.notify_all();
  info.run_state = rs.ok() ? *rs : "unknown (" + rs.status().ToString() + ")";
  return info;
}

Status VmRegistry::Stop(std::string_view name, bool force) {
  Lock lock(mu_);
  SOD_ASSIGN_OR_RETURN(Entry * e,
                       WaitForFree(name, options_.quit_grace + milliseconds(30000), lock));
  if (e->record.phase == VmPhase::kInDoubt && !force) {
    return Error(Errc::kState, "VM " + std::string(name) + " is in doubt (" + e->record.note +
                                   "): it may be the only copy; resolve it with recover, or "
                                   "stop it with force");
  }
  const pid_t pid = e->record.pid;
  const std::string was(VmPhaseName(e->record.phase));
  if (e->vm) {
    e->use = Use::kOp;
    Vm* vm = e->vm.get();
    lock.unlock();
    Status quit = vm->Quit(options_.quit_grace);
    lock.lock();
    if (!quit.ok()) {
      e->use = Use::kFree;
      cv_.notify_all();
      return quit;
    }
  }
  std::string key(name);
  ports_.Release(e->record.host_port);
  EndVtpm(*e, /*erase=*/true, "VM stopped and forgotten");
  vms_.erase(key);
  Status removed = state_.RemoveVm(key);
  cv_.notify_all();
  Emit("vm.stopped", {{"vm", key}, {"pid", pid}, {"was", was}, {"forced", force}});
  return removed;
}

Result<std::unique_ptr<VmLease>> VmRegistry::LeaseImpl(std::string_view name,
                                                       std::string migration_id, bool recovery) {
  Lock lock(mu_);
  SOD_ASSIGN_OR_RETURN(Entry * e, WaitForFree(name, kLeaseWait, lock));
  const VmPhase phase = e->record.phase;
  const bool ok_phase = recovery ? phase == VmPhase::kInDoubt
                                 : (phase == VmPhase::kRunning || phase == VmPhase::kPaused);
  if (!ok_phase || !e->vm) {
    return Error(Errc::kState, "VM " + std::string(name) + " is " +
                                   std::string(VmPhaseName(phase)) + ": cannot " +
                                   (recovery ? "recover it" : "migrate it"));
  }
  e->use = Use::kLease;
  if (recovery) {
    migration_id = e->record.migration_id;
    Emit("vm.recovery-lease", {{"vm", e->spec.name}, {"migration_id", migration_id}});
  } else {
    e->record.migration_id = migration_id;
    SetRecord(*e, VmPhase::kMigratingOut, "");
    Emit("vm.migration-lease", {{"vm", e->spec.name}, {"migration_id", migration_id}});
  }
  return std::unique_ptr<VmLease>(
      new VmLease(this, e->spec.name, std::move(migration_id), e->vm.get()));
}

Result<std::unique_ptr<VmLease>> VmRegistry::LeaseForMigration(std::string_view name,
                                                               std::string migration_id) {
  return LeaseImpl(name, std::move(migration_id), /*recovery=*/false);
}

Result<std::unique_ptr<VmLease>> VmRegistry::LeaseForRecovery(std::string_view name) {
  return LeaseImpl(name, "", /*recovery=*/true);
}

Status VmRegistry::FinishLease(VmLease& lease, LeaseOutcome outcome, std::string note) {
  if (lease.finished_) return Error(Errc::kState, "lease of VM " + lease.name_ + " already ended");
  lease.finished_ = true;
  Vm* vm = lease.vm_;
  lease.vm_ = nullptr;
  // Still exclusively ours: talk to QEMU before taking the lock.
  VmPhase phase = VmPhase::kLost;
  bool drop_vm = false;
  const bool alive = vm->Alive();
  switch (outcome) {
    case LeaseOutcome::kReturned:
      if (alive) phase = PhaseFromRunState(vm->RunState());
      break;
    case LeaseOutcome::kInDoubt:
      if (alive) phase = VmPhase::kInDoubt;
      break;
    case LeaseOutcome::kMigratedAway:
      if (alive) (void)vm->Quit(options_.quit_grace);
      phase = VmPhase::kMigratedAway;
      break;
  }
  if (phase == VmPhase::kLost || phase == VmPhase::kMigratedAway) {
    vm->Kill();  // no-op on an ended process; removes the memory file and socket
    drop_vm = true;
    if (phase == VmPhase::kLost && note.empty()) note = "QEMU ended during the lease";
  }
  Lock lock(mu_);
  Entry& e = vms_.at(lease.name_);
  if (phase == VmPhase::kMigratedAway) {
    // The VM runs elsewhere now with its vTPM: this copy's state and keys go (Phase D).
    EndVtpm(e, /*erase=*/true, "migrated away (" + lease.migration_id_ + ")");
    if (lease.vtpm_epoch_ != 0) e.record.vtpm_epoch = lease.vtpm_epoch_;
  } else if (phase == VmPhase::kLost) {
    EndVtpm(e, /*erase=*/false, "QEMU ended");
  }
  if (drop_vm) {
    e.vm.reset();
    e.record.pid = 0;
    ports_.Release(e.record.host_port);
    e.record.host_port = 0;
    e.record.memory_file.clear();
  }
  if (outcome == LeaseOutcome::kReturned && phase != VmPhase::kLost) e.record.migration_id.clear();
  e.use = Use::kFree;
  SetRecord(e, phase, note);
  cv_.notify_all();
  Emit("vm.lease-ended", {{"vm", lease.name_},
                          {"migration_id", lease.migration_id_},
                          {"phase", VmPhaseName(phase)},
                          {"note", e.record.note}});
  return Status::Ok();
}

Result<std::unique_ptr<Vm>> VmRegistry::LaunchIncoming(const VmSpec& spec,
                                                       std::string migration_id,
                                                       const IncomingVtpm* vtpm) {
  SOD_RETURN_IF_ERROR(ValidateVmSpec(spec));
  if (spec.tpm && (!vtpm || !vtpm_))
    return Error(Errc::kUnsupported, "vm " + spec.name +
                                         (vtpm_ ? " has a vTPM but no vTPM key came with it"
                                                        : " has a vTPM and this host keeps none"));
  const std::string id = migration_id;
  {
    Lock lock(mu_);
    Result<Entry*> e =
        Reserve(spec, VmPhase::kMigratingIn, Use::kIncoming, std::move(migration_id), lock);
    if (!e.ok()) return e.status();
  }
  Status vtpm_ready = Status::Ok();
  if (spec.tpm) {
    Result<std::unique_ptr<vtpm::VmTpm>> tpm =
        vtpm_->StartIncoming(spec.name, state_.vm_dir(spec.name), vtpm->migration_key);
    Lock lock(mu_);
    Entry& e = vms_.at(spec.name);
    e.record.vtpm_epoch = vtpm->epoch;
    if (tpm.ok()) {
      e.tpm = std::move(tpm).value();
    } else {
      vtpm_ready = tpm.status();
    }
  }
  Result<std::unique_ptr<Vm>> vm =
      vtpm_ready.ok()
          ? LaunchWithPortRetry(spec.name, VmLaunchMode::kIncoming)
          : Result<std::unique_ptr<Vm>>(vtpm_ready.WithContext("vm " + spec.name + " incoming vTPM"));
  Lock lock(mu_);
  if (!vm.ok()) {
    Unreserve(spec.name, lock);
    Emit("vm.incoming-failed",
         {{"vm", spec.name}, {"migration_id", id}, {"error", vm.status().ToString()}});
    return vm.status();
  }
  Entry& e = vms_.at(spec.name);
  e.record.pid = (*vm)->pid();
  SetRecord(e, VmPhase::kMigratingIn, "");
  Emit("vm.incoming-launched", {{"vm", spec.name}, {"migration_id", id}, {"pid", e.record.pid}});
  return vm;
}

Status VmRegistry::AdoptMigratedIn(std::unique_ptr<Vm> vm) {
  if (!vm) return Error(Errc::kInvalidArgument, "AdoptMigratedIn: no VM");
  Result<std::string> rs = vm->RunState();
  const std::string name = vm->spec().name;
  Lock lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.use != Use::kIncoming || it->second.record.pid != vm->pid()) {
    lock.unlock();
    vm->Kill();
    return Error(Errc::kNotFound, "VM " + name + " (pid " + std::to_string(vm->pid()) +
                                      ") was not launched by LaunchIncoming; killed it");
  }
  Entry& e = it->second;
  e.vm = std::move(vm);
  e.use = Use::kFree;
  SetRecord(e, PhaseFromRunState(rs), "");
  cv_.notify_all();
  Emit("vm.migrated-in", {{"vm", name},
                          {"migration_id", e.record.migration_id},
                          {"pid", e.record.pid},
                          {"phase", VmPhaseName(e.record.phase)}});
  return Status::Ok();
}

void VmRegistry::DiscardIncoming(std::unique_ptr<Vm> vm, std::string_view why) {
  if (!vm) return;
  vm->Kill();
  const std::string name = vm->spec().name;
  Lock lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.use != Use::kIncoming || it->second.record.pid != vm->pid()) {
    return;
  }
  const std::string id = it->second.record.migration_id;
  Unreserve(name, lock);
  Emit("vm.incoming-discarded", {{"vm", name}, {"migration_id", id}, {"reason", why}});
}

Status VmRegistry::KeepIncomingInDoubt(std::unique_ptr<Vm> vm, std::string note) {
  if (!vm) return Error(Errc::kInvalidArgument, "KeepIncomingInDoubt: no VM");
  const std::string name = vm->spec().name;
  Lock lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.use != Use::kIncoming || it->second.record.pid != vm->pid()) {
    return Error(Errc::kNotFound, "VM " + name + " was not launched by LaunchIncoming");
  }
  Entry& e = it->second;
  e.vm = std::move(vm);
  e.use = Use::kFree;
  SetRecord(e, VmPhase::kInDoubt, note);
  cv_.notify_all();
  Emit("vm.in-doubt", {{"vm", name}, {"migration_id", e.record.migration_id}, {"reason", note}});
  return Status::Ok();
}

void VmRegistry::AbandonIncoming(std::string_view name, pid_t pid, std::string_view why) {
  Lock lock(mu_);
  auto it = vms_.find(name);
  if (it == vms_.end() || it->second.use != Use::kIncoming || it->second.record.pid != pid ||
      pid <= 0) {
    return;
  }
  // Incoming QEMUs are children of this process. 0: still running; pid: ended, reaped now;
  // -1 (ECHILD): already reaped (the engine's Vm::Kill) — its pid may be reused, never signal it.
  int st = 0;
  if (::waitpid(pid, &st, WNOHANG) == 0) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
  }
  Entry& e = it->second;
  if (!e.paths.memory_file.empty()) ::unlink(e.paths.memory_file.c_str());
  ::unlink(e.paths.qmp_socket.c_str());
  const std::string id = e.record.migration_id;
  const std::string key(name);
  Unreserve(key, lock);
  Emit("vm.incoming-discarded", {{"vm", key}, {"migration_id", id}, {"reason", why}});
}

IncomingVmSlot::~IncomingVmSlot() { Abandon("incoming migration ended without a commit"); }

Result<std::unique_ptr<Vm>> IncomingVmSlot::Launch(const VmSpec& spec, const IncomingVtpm* vtpm) {
  if (pid_ != 0 || done_) return Error(Errc::kState, "incoming slot: a VM was launched already");
  Result<std::unique_ptr<Vm>> vm = registry_.LaunchIncoming(spec, migration_id_, vtpm);
  if (vm.ok()) {
    name_ = spec.name;
    pid_ = (*vm)->pid();
  }
  return vm;
}

std::function<Result<std::unique_ptr<Vm>>(const VmSpec&)> IncomingVmSlot::Launcher() {
  return [this](const VmSpec& spec) { return Launch(spec); };
}

Status IncomingVmSlot::CheckOurs(const std::unique_ptr<Vm>& vm) const {
  if (!vm || done_ || pid_ == 0 || vm->pid() != pid_ || vm->spec().name != name_) {
    return Error(Errc::kState, "incoming slot: not the VM this slot launched");
  }
  return Status::Ok();
}

Status IncomingVmSlot::Adopt(std::unique_ptr<Vm> vm) {
  if (Status s = CheckOurs(vm); !s.ok()) {
    if (vm) vm->Kill();  // never leave a QEMU nobody owns
    return s;
  }
  done_ = true;
  return registry_.AdoptMigratedIn(std::move(vm));
}

Status IncomingVmSlot::KeepInDoubt(std::unique_ptr<Vm> vm, std::string note) {
  if (Status s = CheckOurs(vm); !s.ok()) {
    if (vm) vm->Kill();
    return s;
  }
  done_ = true;
  return registry_.KeepIncomingInDoubt(std::move(vm), std::move(note));
}

void IncomingVmSlot::Abandon(std::string_view why) {
  if (done_) return;
  done_ = true;
  if (pid_ != 0) registry_.AbandonIncoming(name_, pid_, why);
}

void VmRegistry::CheckLiveness() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, e] : vms_) {
    if (e.use != Use::kFree || !e.vm || e.vm->Alive()) continue;
    const pid_t pid = e.record.pid;
    const std::string was(VmPhaseName(e.record.phase));
    e.vm->Kill();  // the process has ended: this only removes the memory file and socket
    e.vm.reset();
    EndVtpm(e, /*erase=*/false, "QEMU ended");
    ports_.Release(e.record.host_port);
    e.record.pid = 0;
    e.record.host_port = 0;
    e.record.memory_file.clear();
    SetRecord(e, VmPhase::kLost, "QEMU (pid " + std::to_string(pid) + ") exited");
    Emit("vm.lost", {{"vm", name}, {"pid", pid}, {"was", was}, {"reason", e.record.note}});
  }
}

}  // namespace sod
