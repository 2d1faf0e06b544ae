// The VM layer with real QEMU and the test guest (migrate/vm.h): boot to SOD-READY in QEMU's own
// session, RAM digest while paused and after running, adoption by pid, quit/kill cleanup, incoming
// mode, and launch failures that carry qemu.log. Skips when the guest is not built.
#include "migrate/vm.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/bytes.h"
#include "tests/test_guest.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sod::testing::FindTestGuest;
using sod::testing::TestGuestSpec;
using sod::testing::WaitMigrationEnd;
using sod::testing::WaitForLine;

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sod-vm-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    std::string p = (dir_ / name).string();
    std::ofstream(p) << text;
    return p;
  }
  fs::path dir_;
};

class VmLaunchTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    guest_ = FindTestGuest();
  }
  void TearDown() override {
    for (auto& vm : vms_) {
      if (vm) vm->Kill();
    }
    for (const auto& f : memory_files_) ::unlink(f.c_str());
    TempDirTest::TearDown();
  }
  VmPaths Paths(const VmSpec& spec) {
    VmPaths p = MakeVmPaths((dir_ / spec.name).string(), "vmtest", spec, 0);
    memory_files_.push_back(p.memory_file);
    return p;
  }
  // Launches and keeps the Vm for cleanup; returns a borrowed pointer.
  Vm* Launch(const VmSpec& spec, VmLaunchMode mode) {
    Result<std::unique_ptr<Vm>> vm = Vm::Launch(spec, Paths(spec), mode);
    EXPECT_TRUE(vm.ok()) << vm.status().ToString();
    if (!vm.ok()) return nullptr;
    vms_.push_back(std::move(vm).value());
    return vms_.back().get();
  }
  std::optional<sod::testing::TestGuest> guest_;
  std::vector<std::unique_ptr<Vm>> vms_;
  std::vector<std::string> memory_files_;
};

#define REQUIRE_GUEST()                                                       \
  if (!guest_)                                                                \
  GTEST_SKIP() << "test guest not built (scripts/build-guest.sh; ctest runs " \
                  "guest_boot first)"

TEST_F(VmLaunchTest, BootsTheGuestInItsOwnSession) {
  REQUIRE_GUEST();
  Vm* vm = Launch(TestGuestSpec(*guest_, "boot"), VmLaunchMode::kRun);
  ASSERT_NE(vm, nullptr);
  EXPECT_TRUE(vm->Alive());
  EXPECT_TRUE(vm->is_child());
  EXPECT_EQ(::getsid(vm->pid()), vm->pid()) << "QEMU must lead its own session";
  EXPECT_EQ(::getpgid(vm->pid()), vm->pid());
  Result<std::string> rs = vm->RunState();
  ASSERT_TRUE(rs.ok()) << rs.status().ToString();
  EXPECT_EQ(*rs, "running");
  auto ready = WaitForLine(vm->paths().serial_log, "SOD-READY", 120s);
  ASSERT_TRUE(ready) << "no SOD-READY in " << vm->paths().serial_log;
  // Guest RAM is private to root.
  struct stat st;
  ASSERT_EQ(::stat(vm->paths().memory_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 256ull << 20);
  struct stat d;
  ASSERT_EQ(::stat(vm->paths().dir.c_str(), &d), 0);
  EXPECT_EQ(d.st_mode & 0777, 0700u);
}

TEST_F(VmLaunchTest, QuitEndsQemuAndRemovesMemoryFileAndSocket) {
  REQUIRE_GUEST();
  Vm* vm = Launch(TestGuestSpec(*guest_, "quit"), VmLaunchMode::kRun);
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(fs::exists(vm->paths().memory_file));
  ASSERT_TRUE(vm->Quit(10s).ok());
  EXPECT_FALSE(vm->Alive());
  EXPECT_FALSE(fs::exists(vm->paths().memory_file));
  EXPECT_FALSE(fs::exists(vm->paths().qmp_socket));
  EXPECT_EQ(::kill(vm->pid(), 0), -1) << "the child was not reaped";
  EXPECT_TRUE(vm->Quit(1s).ok()) << "quitting twice is harmless";
  EXPECT_FALSE(vm->RunState().ok());
}

TEST_F(VmLaunchTest, KillEndsQemuAndRemovesMemoryFile) {
  REQUIRE_GUEST();
  Vm* vm = Launch(TestGuestSpec(*guest_, "kill"), VmLaunchMode::kRun);
  ASSERT_NE(vm, nullptr);
  vm->Kill();
  EXPECT_FALSE(vm->Alive());
  EXPECT_FALSE(fs::exists(vm->paths().memory_file));
}

TEST_F(VmLaunchTest, RamDigestIsStableWhilePausedAndChangesAfterRunning) {
  REQUIRE_GUEST();
  Vm* vm = Launch(TestGuestSpec(*guest_, "digest"), VmLaunchMode::kRun);
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(WaitForLine(vm->paths().serial_log, "SOD-READY", 120s));
  ASSERT_TRUE(vm->Pause().ok());
  ASSERT_EQ(*vm->RunState(), "paused");
  Result<std::array<uint8_t, 16>> d1 = vm->RamDigest();
  ASSERT_TRUE(d1.ok()) << d1.status().ToString();
  std::this_thread::sleep_for(300ms);
  Result<std::array<uint8_t, 16>> d2 = vm->RamDigest();
  ASSERT_TRUE(d2.ok());
  EXPECT_EQ(ToHex(*d1), ToHex(*d2)) << "guest RAM changed while paused";
  EXPECT_EQ(ToHex(*d1).size(), 32u);

  ASSERT_TRUE(vm->Resume().ok());
  ASSERT_EQ(*vm->RunState(), "running");
  std::this_thread::sleep_for(1s);  // ~10 heartbeats
  ASSERT_TRUE(vm->Pause().ok());
  Result<std::array<uint8_t, 16>> d3 = vm->RamDigest();
  ASSERT_TRUE(d3.ok());
  EXPECT_NE(ToHex(*d1), ToHex(*d3)) << "guest RAM did not change while running";
}

// The RAM stream tracker on QEMU's own stream: a live migration of the running guest (several
// rounds) into a file; the tracker's table of the last page versions equals the paused guest's
// RAM, and a byte changed behind QEMU's back afterwards is found, by page.
TEST_F(VmLaunchTest, StreamTrackerFollowsQemusOwnMigrationStream) {
  REQUIRE_GUEST();
  VmSpec spec = TestGuestSpec(*guest_, "stream");
  spec.append += " sod.dirty_mb=16 sod.dirty_rate=16";
  Vm* vm = Launch(spec, VmLaunchMode::kRun);
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(WaitForLine(vm->paths().serial_log, "SOD-READY", 120s));
  const std::string out = (dir_ / "stream.bin").string();
  ASSERT_TRUE(vm->qmp().Execute("migrate-set-parameters", {{"max-bandwidth", 64 << 20}}).ok());
  ASSERT_TRUE(vm->qmp().Execute("migrate", {{"uri", "exec:cat > " + out}}).ok());
  uint64_t passes = 0;
  Result<std::string> end = WaitMigrationEnd(*vm, 60s, &passes);
  ASSERT_TRUE(end.ok()) << end.status().ToString();
  ASSERT_EQ(*end, "completed");
  EXPECT_GE(passes, 2u) << "the guest should have dirtied memory during the first pass";

  std::ifstream in(out, std::ios::binary);
  RamStreamTracker tracker(uint64_t{spec.memory_mb + 64} << 20);
  std::vector<char> buf(100000);  // odd piece size: items straddle pieces
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)
    tracker.Feed(ByteSpan(reinterpret_cast<const uint8_t*>(buf.data()),
                          static_cast<size_t>(in.gcount())));
  ASSERT_TRUE(tracker.status().ok()) << tracker.status().ToString();
  ASSERT_TRUE(tracker.ram_complete());
  const RamPageTable* sent = tracker.Block(kRamBlockName);
  ASSERT_NE(sent, nullptr);
  EXPECT_EQ(sent->length, uint64_t{spec.memory_mb} << 20);
  EXPECT_GT(tracker.pages_received(), sent->hashes.size()) << "later rounds re-sent pages";

  // The exact check: a second QEMU loads the same stream; its RAM is, page for page, what the
  // stream carried, and so must be the tracker's table.
  VmSpec dest_spec = spec;
  dest_spec.name = "stream-dest";
  Vm* dest = Launch(dest_spec, VmLaunchMode::kIncoming);
  ASSERT_NE(dest, nullptr);
  ASSERT_TRUE(dest->qmp().Execute("migrate-incoming", {{"uri", "exec:cat " + out}}).ok());
  end = WaitMigrationEnd(*dest, 60s);
  ASSERT_TRUE(end.ok()) << end.status().ToString();
  ASSERT_EQ(*end, "completed");
  Result<RamPageTable> loaded = dest->RamPages();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  Status same = CompareRamTables(*loaded, *sent);
  EXPECT_TRUE(same.ok()) << same.ToString();
  EXPECT_EQ(RamTableDigest(*loaded), RamTableDigest(*sent));
  EXPECT_EQ(*dest->RamDigest(), RamTableDigest(*sent));

  // The source's paused RAM against its own stream: equal unless QEMU missed a dirty page, which
  // QEMU 7.2 under TCG now and then does (PROTOCOL.md, "RAM check") -- the case the RAM check
  // exists for, so it is reported here, not failed on. A tracker that lost its way would differ
  // in far more pages (and fail the exact check above).
  Result<RamPageTable> ram = vm->RamPages();  // QEMU is in postmigrate: paused
  ASSERT_TRUE(ram.ok()) << ram.status().ToString();
  std::vector<size_t> missed;
  Status source = CompareRamTables(*ram, *sent, &missed);
  if (!source.ok()) std::printf("QEMU missed pages at the source: %s\n", source.ToString().c_str());
  EXPECT_LE(missed.size(), kMaxRamRepairPages) << source.ToString();

  // A write QEMU's dirty tracking never sees (the missed-dirty-page case), at the destination
  // copy, whose RAM equals the stream exactly: exactly that page is reported.
  {
    std::fstream f(dest->paths().memory_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0x123456);
    char c = 0;
    f.read(&c, 1);
    f.seekp(0x123456);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  Status differs = CompareRamTables(*dest->RamPages(), *sent);
  EXPECT_EQ(differs.code(), Errc::kIntegrity);
  EXPECT_NE(differs.message().find("1 page(s) stale, 0 never sent"), std::string::npos)
      << differs.ToString();
  EXPECT_NE(differs.message().find("0x123000"), std::string::npos) << differs.ToString();
}

TEST_F(VmLaunchTest, AdoptReattachesToARunningQemu) {
  REQUIRE_GUEST();
  VmSpec spec = TestGuestSpec(*guest_, "adopt");
  VmPaths paths = Paths(spec);
  Result<std::unique_ptr<Vm>> first = Vm::Launch(spec, paths, VmLaunchMode::kRun);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const pid_t pid = (*first)->pid();
  first->reset();  // closes QMP; QEMU keeps running
  ASSERT_EQ(::kill(pid, 0), 0) << "destroying a Vm must not end QEMU";

  Result<std::unique_ptr<Vm>> adopted = Vm::Adopt(spec, paths, pid);
  ASSERT_TRUE(adopted.ok()) << adopted.status().ToString();
  vms_.push_back(std::move(adopted).value());
  Vm* vm = vms_.back().get();
  EXPECT_EQ(vm->pid(), pid);
  EXPECT_EQ(*vm->RunState(), "running");

  // A live pid that is some other process is refused.
  Result<std::unique_ptr<Vm>> wrong = Vm::Adopt(spec, paths, ::getpid());
  EXPECT_EQ(wrong.status().code(), Errc::kState) << wrong.status().ToString();
  // So is a dead one.
  Result<std::unique_ptr<Vm>> dead = Vm::Adopt(spec, paths, 999999);
  EXPECT_EQ(dead.status().code(), Errc::kNotFound);

  ASSERT_TRUE(vm->Quit(10s).ok());
  EXPECT_FALSE(vm->Alive());
  EXPECT_FALSE(fs::exists(paths.memory_file));
}

TEST_F(VmLaunchTest, IncomingModeWaitsPausedForMigration) {
  REQUIRE_GUEST();
  Vm* vm = Launch(TestGuestSpec(*guest_, "incoming", 7777), VmLaunchMode::kIncoming);
  ASSERT_NE(vm, nullptr);
  EXPECT_EQ(*vm->RunState(), "inmigrate");
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(testing::ReadWholeFile(vm->paths().serial_log), "") << "an incoming VM must not boot";
  vm->Kill();
  EXPECT_FALSE(fs::exists(vm->paths().memory_file));
}

TEST_F(VmLaunchTest, LaunchFailuresNameTheVmAndCarryQemuLog) {
  REQUIRE_GUEST();
  VmSpec spec = TestGuestSpec(*guest_, "broken");
  spec.machine = "no-such-machine";
  VmPaths paths = Paths(spec);
  Result<std::unique_ptr<Vm>> vm = Vm::Launch(spec, paths, VmLaunchMode::kRun);
  ASSERT_FALSE(vm.ok());
  const std::string msg = vm.status().message();
  EXPECT_NE(msg.find("vm broken"), std::string::npos) << msg;
  EXPECT_NE(msg.find("qemu.log"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported machine type"), std::string::npos) << "QEMU's words: " << msg;
  EXPECT_FALSE(fs::exists(paths.memory_file));

  VmSpec nokernel = TestGuestSpec(*guest_, "nokernel");
  nokernel.kernel = "/nonexistent/vmlinuz";
  Result<std::unique_ptr<Vm>> nk = Vm::Launch(nokernel, Paths(nokernel), VmLaunchMode::kRun);
  EXPECT_EQ(nk.status().code(), Errc::kNotFound);
  EXPECT_NE(nk.status().message().find("/nonexistent/vmlinuz"), std::string::npos);

  VmSpec nobin = TestGuestSpec(*guest_, "nobin");
  VmPaths nobin_paths = Paths(nobin);
  Result<std::unique_ptr<Vm>> nb =
      Vm::Launch(nobin, nobin_paths, VmLaunchMode::kRun, "/nonexistent/qemu");
  EXPECT_EQ(nb.status().code(), Errc::kNotFound) << nb.status().ToString();
  EXPECT_FALSE(fs::exists(nobin_paths.memory_file));

  // An existing memory file is never reused (another VM's RAM).
  VmSpec dup = TestGuestSpec(*guest_, "dup");
  VmPaths dup_paths = Paths(dup);
  std::ofstream(dup_paths.memory_file) << "x";
  Result<std::unique_ptr<Vm>> d = Vm::Launch(dup, dup_paths, VmLaunchMode::kRun);
  EXPECT_EQ(d.status().code(), Errc::kState) << d.status().ToString();
  EXPECT_EQ(testing::ReadWholeFile(dup_paths.memory_file), "x");
}

}  // namespace
}  // namespace sod
