// VmRegistry (host/vm_registry.h) with real QEMU and the test guest: start / list / show / stop,
// migration leases and what they lock out, the destination's incoming VMs, re-adoption by a new
// registry over the same state dir (a sodd restart), and VMs whose QEMU dies. Skips when the
// guest is not built.
#include "host/vm_registry.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "tests/test_guest.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using sod::testing::FindTestGuest;
using sod::testing::TestGuestSpec;

class VmRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    guest_ = FindTestGuest();
    if (!guest_) GTEST_SKIP() << "test guest not built (scripts/build-guest.sh)";
    host_id_ = "regtest-" + std::to_string(::getpid());
    root_ = fs::path("/tmp") / ("sod-registry-test-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    Result<StateDir> sd = StateDir::Open(root_.string());
    ASSERT_TRUE(sd.ok()) << sd.status().ToString();
    state_ = std::make_unique<StateDir>(*sd);
    Open();
  }
  void TearDown() override {
    registry_.reset();
    // Kill every QEMU this test started and remove its RAM.
    if (state_) {
      Result<std::vector<std::string>> names = state_->ListVms();
      for (const std::string& name : names.ok() ? *names : std::vector<std::string>{}) {
        Result<VmRecord> r = state_->LoadRecord(name);
        if (r.ok() && r->pid > 0) ::kill(r->pid, SIGKILL);
      }
    }
    for (const auto& e : fs::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().rfind("sod-" + host_id_ + "-", 0) == 0) {
        fs::remove(e.path());
      }
    }
    if (!root_.empty()) fs::remove_all(root_);
  }
  void Open() {
    VmRegistry::Options o;
    o.host_id = host_id_;
    o.forward_ports = {21500, 21599};
    o.quit_grace = 5s;
    o.events = [this](std::string_view kind, const json& data) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::string(kind) + " " + data.value("vm", ""));
    };
    Result<std::unique_ptr<VmRegistry>> r = VmRegistry::Open(*state_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    registry_ = std::move(r).value();
  }
  bool HasEvent(const std::string& e) {
    std::lock_guard<std::mutex> lock(mu_);
    return std::find(events_.begin(), events_.end(), e) != events_.end();
  }
  VmPhase PhaseOf(const std::string& name) {
    Result<VmInfo> i = registry_->Show(name);
    EXPECT_TRUE(i.ok()) << i.status().ToString();
    return i.ok() ? i->record.phase : VmPhase::kLost;
  }
  VmSpec Spec(const std::string& name, uint16_t port = 0) {
    return TestGuestSpec(*guest_, name, port);
  }

  std::optional<sod::testing::TestGuest> guest_;
  std::string host_id_;
  fs::path root_;
  std::unique_ptr<StateDir> state_;
  std::unique_ptr<VmRegistry> registry_;
  std::mutex mu_;
  std::vector<std::string> events_;
};

TEST_F(VmRegistryTest, StartListShowStop) {
  Result<VmInfo> a = registry_->Start(Spec("a", 7777));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->record.phase, VmPhase::kRunning);
  EXPECT_GT(a->record.pid, 0);
  EXPECT_GE(a->record.host_port, 21500);
  Result<VmInfo> b = registry_->Start(Spec("b"));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->record.host_port, 0) << "no guest port, no forward";

  Result<VmInfo> dup = registry_->Start(Spec("a"));
  EXPECT_EQ(dup.status().code(), Errc::kState);

  std::vector<VmInfo> list = registry_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].spec.name, "a");
  EXPECT_EQ(list[1].spec.name, "b");

  Result<VmInfo> shown = registry_->Show("a");
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(shown->run_state, "running");
  EXPECT_EQ(shown->paths.serial_log, state_->vm_dir("a") + "/serial.log");
  // Persisted.
  Result<VmRecord> rec = state_->LoadRecord("a");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->pid, a->record.pid);
  EXPECT_EQ(rec->memory_file, shown->paths.memory_file);

  EXPECT_EQ(registry_->Show("nope").status().code(), Errc::kNotFound);
  EXPECT_EQ(registry_->Stop("nope").code(), Errc::kNotFound);

  const std::string memfile = shown->paths.memory_file;
  ASSERT_TRUE(registry_->Stop("a").ok());
  EXPECT_FALSE(fs::exists(memfile));
  EXPECT_FALSE(fs::exists(state_->vm_dir("a")));
  EXPECT_EQ(registry_->List().size(), 1u);
  EXPECT_TRUE(HasEvent("vm.started a"));
  EXPECT_TRUE(HasEvent("vm.stopped a"));
  // The name and the port are free again.
  Result<VmInfo> again = registry_->Start(Spec("a", 7777));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->record.host_port, a->record.host_port);
}

TEST_F(VmRegistryTest, LeaseLocksOutOthersAndReturnsTheVm) {
  ASSERT_TRUE(registry_->Start(Spec("m")).ok());
  Result<std::unique_ptr<VmLease>> lease = registry_->LeaseForMigration("m", "mig-1");
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_EQ((*lease)->migration_id(), "mig-1");
  Result<std::string> rs = (*lease)->vm().RunState();
  EXPECT_EQ(*rs, "running");

  EXPECT_EQ(registry_->LeaseForMigration("m", "mig-2").status().code(), Errc::kState);
  Status stop = registry_->Stop("m");
  EXPECT_EQ(stop.code(), Errc::kState);
  EXPECT_NE(stop.message().find("mig-1"), std::string::npos) << stop.ToString();
  Result<VmInfo> shown = registry_->Show("m");  // answers without QMP while leased
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(shown->record.phase, VmPhase::kMigratingOut);
  EXPECT_TRUE(shown->leased);
  EXPECT_EQ(shown->run_state, "");
  EXPECT_EQ(state_->LoadRecord("m")->phase, VmPhase::kMigratingOut);

  // The engine paused the VM and then aborted: the VM stays here, paused.
  ASSERT_TRUE((*lease)->vm().Pause().ok());
  ASSERT_TRUE((*lease)->Finish(LeaseOutcome::kReturned, "aborted by test").ok());
  EXPECT_EQ((*lease)->Finish(LeaseOutcome::kReturned).code(), Errc::kState);
  EXPECT_EQ(PhaseOf("m"), VmPhase::kPaused);

  // A lease dropped without an outcome returns the VM too.
  {
    Result<std::unique_ptr<VmLease>> l2 = registry_->LeaseForMigration("m", "mig-3");
    ASSERT_TRUE(l2.ok());
    ASSERT_TRUE((*l2)->vm().Resume().ok());
  }
  EXPECT_EQ(PhaseOf("m"), VmPhase::kRunning);
}

TEST_F(VmRegistryTest, InDoubtNeedsRecoveryOrForce) {
  ASSERT_TRUE(registry_->Start(Spec("d")).ok());
  {
    Result<std::unique_ptr<VmLease>> lease = registry_->LeaseForMigration("d", "mig-9");
    ASSERT_TRUE(lease.ok());
    ASSERT_TRUE((*lease)->vm().Pause().ok());
    ASSERT_TRUE((*lease)->Finish(LeaseOutcome::kInDoubt, "link died after commit").ok());
  }
  Result<VmInfo> i = registry_->Show("d");
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i->record.phase, VmPhase::kInDoubt);
  EXPECT_EQ(i->record.migration_id, "mig-9");
  EXPECT_EQ(i->record.note, "link died after commit");
  EXPECT_EQ(i->run_state, "paused");
  EXPECT_EQ(registry_->LeaseForMigration("d", "again").status().code(), Errc::kState);
  EXPECT_EQ(registry_->Stop("d").code(), Errc::kState);

  Result<std::unique_ptr<VmLease>> rec = registry_->LeaseForRecovery("d");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ((*rec)->migration_id(), "mig-9");
  ASSERT_TRUE((*rec)->Finish(LeaseOutcome::kInDoubt, "peer unreachable").ok());
  EXPECT_EQ(registry_->Show("d")->record.note, "peer unreachable");
  EXPECT_EQ(registry_->LeaseForRecovery("nope").status().code(), Errc::kNotFound);

  EXPECT_TRUE(registry_->Stop("d", /*force=*/true).ok());
}

TEST_F(VmRegistryTest, MigratedAwayQuitsQemuAndKeepsARecord) {
  Result<VmInfo> s = registry_->Start(Spec("gone", 7777));
  ASSERT_TRUE(s.ok());
  const pid_t pid = s->record.pid;
  {
    Result<std::unique_ptr<VmLease>> lease = registry_->LeaseForMigration("gone", "mig-5");
    ASSERT_TRUE(lease.ok());
    ASSERT_TRUE((*lease)->Finish(LeaseOutcome::kMigratedAway).ok());
  }
  Result<VmInfo> i = registry_->Show("gone");
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i->record.phase, VmPhase::kMigratedAway);
  EXPECT_EQ(i->record.pid, 0);
  EXPECT_EQ(i->record.migration_id, "mig-5");
  EXPECT_FALSE(fs::exists(s->paths.memory_file));
  EXPECT_NE(::kill(pid, 0), 0) << "QEMU still runs after migrating away";
  EXPECT_EQ(registry_->LeaseForMigration("gone", "x").status().code(), Errc::kState);
  // The VM may come back (incoming) or be started again under its name.
  Result<VmInfo> back = registry_->Start(Spec("gone"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->record.phase, VmPhase::kRunning);
}

TEST_F(VmRegistryTest, IncomingVmsAreReservedThenAdoptedOrDiscarded) {
  Result<std::unique_ptr<Vm>> in = registry_->LaunchIncoming(Spec("in", 7777), "mig-7");
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  EXPECT_EQ(*(*in)->RunState(), "inmigrate");
  EXPECT_GE((*in)->paths().host_port, 21500);
  Result<VmInfo> shown = registry_->Show("in");
  ASSERT_TRUE(shown.ok());
  EXPECT_EQ(shown->record.phase, VmPhase::kMigratingIn);
  EXPECT_TRUE(shown->leased);
  EXPECT_EQ(registry_->Start(Spec("in")).status().code(), Errc::kState);
  EXPECT_EQ(registry_->Stop("in").code(), Errc::kState);
  EXPECT_EQ(registry_->LaunchIncoming(Spec("in"), "mig-8").status().code(), Errc::kState);

  // Committed (this test has no source: QEMU is still "inmigrate", so the VM counts as paused).
  ASSERT_TRUE(registry_->AdoptMigratedIn(std::move(in).value()).ok());
  EXPECT_EQ(PhaseOf("in"), VmPhase::kPaused);
  EXPECT_TRUE(HasEvent("vm.migrated-in in"));

  Result<std::unique_ptr<Vm>> in2 = registry_->LaunchIncoming(Spec("in2"), "mig-8");
  ASSERT_TRUE(in2.ok());
  const std::string memfile = (*in2)->paths().memory_file;
  registry_->DiscardIncoming(std::move(in2).value(), "source aborted");
  EXPECT_EQ(registry_->Show("in2").status().code(), Errc::kNotFound);
  EXPECT_FALSE(fs::exists(memfile));
  EXPECT_FALSE(fs::exists(state_->vm_dir("in2")));

  Result<std::unique_ptr<Vm>> in3 = registry_->LaunchIncoming(Spec("in3"), "mig-9");
  ASSERT_TRUE(in3.ok());
  ASSERT_TRUE(registry_->KeepIncomingInDoubt(std::move(in3).value(), "no commit ack").ok());
  EXPECT_EQ(PhaseOf("in3"), VmPhase::kInDoubt);

  // A Vm that did not come from LaunchIncoming is refused (and killed).
  VmSpec stray = Spec("stray");
  VmPaths p = MakeVmPaths((root_ / "stray").string(), host_id_, stray, 0);
  Result<std::unique_ptr<Vm>> s = Vm::Launch(stray, p, VmLaunchMode::kIncoming);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(registry_->AdoptMigratedIn(std::move(s).value()).code(), Errc::kNotFound);
  EXPECT_FALSE(fs::exists(p.memory_file));
}

TEST_F(VmRegistryTest, IncomingSlotCleansUpWhatTheEngineDropped) {
  // The engine killed and dropped the Vm itself (a failed migration).
  {
    IncomingVmSlot slot(*registry_, "mig-a");
    auto launch = slot.Launcher();
    Result<std::unique_ptr<Vm>> vm = launch(Spec("s1", 7777));
    ASSERT_TRUE(vm.ok()) << vm.status().ToString();
    EXPECT_EQ(launch(Spec("s1b")).status().code(), Errc::kState) << "one launch per slot";
    EXPECT_EQ(registry_->Show("s1")->record.migration_id, "mig-a");
    (*vm)->Kill();
  }
  EXPECT_EQ(registry_->Show("s1").status().code(), Errc::kNotFound);
  EXPECT_TRUE(HasEvent("vm.incoming-discarded s1"));

  // The engine dropped a still-running Vm: the slot ends that QEMU.
  std::string memfile;
  pid_t pid = 0;
  {
    IncomingVmSlot slot(*registry_);
    Result<std::unique_ptr<Vm>> vm = slot.Launcher()(Spec("s2"));
    ASSERT_TRUE(vm.ok());
    memfile = (*vm)->paths().memory_file;
    pid = (*vm)->pid();
  }
  EXPECT_NE(::kill(pid, 0), 0) << "QEMU of an abandoned incoming VM still runs";
  EXPECT_FALSE(fs::exists(memfile));
  EXPECT_EQ(registry_->Show("s2").status().code(), Errc::kNotFound);

  // Committed: the slot hands the VM to the registry and leaves it alone afterwards.
  {
    IncomingVmSlot slot(*registry_, "mig-c");
    Result<std::unique_ptr<Vm>> vm = slot.Launcher()(Spec("s3"));
    ASSERT_TRUE(vm.ok());
    VmSpec other = Spec("s3x");
    VmPaths p = MakeVmPaths((root_ / "s3x").string(), host_id_, other, 0);
    Result<std::unique_ptr<Vm>> stray = Vm::Launch(other, p, VmLaunchMode::kIncoming);
    ASSERT_TRUE(stray.ok());
    const std::string stray_mem = p.memory_file;
    EXPECT_EQ(slot.Adopt(std::move(stray).value()).code(), Errc::kState);
    EXPECT_FALSE(fs::exists(stray_mem)) << "a refused VM must not be left running";
    ASSERT_TRUE(slot.Adopt(std::move(vm).value()).ok());
  }
  Result<VmInfo> s3 = registry_->Show("s3");
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ(s3->record.phase, VmPhase::kPaused);
  EXPECT_GT(s3->record.pid, 0);
  EXPECT_EQ(::kill(s3->record.pid, 0), 0);
}

TEST_F(VmRegistryTest, ANewRegistryReadoptsRunningVmsAndMarksTheRestLost) {
  // A "sodd" that starts three VMs, leases one for a migration and crashes: a forked child that
  // ends with _exit, so its QMP connections close as in a real crash and no destructor runs.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int rc = 0;
    if (!registry_->Start(Spec("keep", 7777)).ok()) rc |= 1;
    if (!registry_->Start(Spec("dies")).ok()) rc |= 2;
    if (!registry_->Start(Spec("mid")).ok()) rc |= 4;
    Result<std::unique_ptr<VmLease>> lease = registry_->LeaseForMigration("mid", "mig-4");
    if (!lease.ok()) rc |= 8;
    ::_exit(rc);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), 0) << "the crashing sodd could not set up its VMs";
  Result<VmRecord> keep = state_->LoadRecord("keep");
  Result<VmRecord> dies = state_->LoadRecord("dies");
  ASSERT_TRUE(keep.ok() && dies.ok());
  ASSERT_EQ(state_->LoadRecord("mid")->phase, VmPhase::kMigratingOut);
  ::kill(dies->pid, SIGKILL);
  std::this_thread::sleep_for(200ms);

  registry_.reset();
  Open();
  Result<VmInfo> k = registry_->Show("keep");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->record.phase, VmPhase::kRunning);
  EXPECT_EQ(k->record.pid, keep->pid);
  EXPECT_EQ(k->run_state, "running");
  EXPECT_EQ(k->record.host_port, keep->host_port);
  EXPECT_TRUE(HasEvent("vm.adopted keep"));

  Result<VmInfo> d = registry_->Show("dies");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->record.phase, VmPhase::kLost);
  EXPECT_FALSE(fs::exists(dies->memory_file));
  EXPECT_TRUE(HasEvent("vm.lost dies"));

  Result<VmInfo> m = registry_->Show("mid");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->record.phase, VmPhase::kInDoubt);
  EXPECT_NE(m->record.note.find("migrating-out"), std::string::npos) << m->record.note;

  // The re-adopted VM's port is not handed out twice.
  Result<VmInfo> other = registry_->Start(Spec("other", 7777));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->record.host_port, keep->host_port);

  // Lost records can be forgotten; the re-adopted VM can be stopped.
  EXPECT_TRUE(registry_->Stop("dies").ok());
  EXPECT_TRUE(registry_->Stop("keep").ok());
  for (int i = 0;
       i < 100 &&
       sod::testing::ReadWholeFile("/proc/" + std::to_string(keep->pid) + "/stat").find(") Z") ==
           std::string::npos &&
       ::kill(keep->pid, 0) == 0;
       ++i) {
    std::this_thread::sleep_for(20ms);  // not our child: init reaps it
  }
  EXPECT_TRUE(
      ::kill(keep->pid, 0) != 0 ||
      sod::testing::ReadWholeFile("/proc/" + std::to_string(keep->pid) + "/stat").find(") Z") !=
          std::string::npos)
      << "QEMU of the re-adopted VM still runs after stop";
}

TEST_F(VmRegistryTest, CheckLivenessNoticesADeadQemu) {
  Result<VmInfo> v = registry_->Start(Spec("crash", 7777));
  ASSERT_TRUE(v.ok());
  ::kill(v->record.pid, SIGKILL);
  std::this_thread::sleep_for(200ms);
  registry_->CheckLiveness();
  Result<VmInfo> i = registry_->Show("crash");
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i->record.phase, VmPhase::kLost);
  EXPECT_EQ(i->record.pid, 0);
  EXPECT_FALSE(fs::exists(v->paths.memory_file));
  EXPECT_EQ(state_->LoadRecord("crash")->phase, VmPhase::kLost);
  EXPECT_TRUE(HasEvent("vm.lost crash"));
}

}  // namespace
}  // namespace sod
