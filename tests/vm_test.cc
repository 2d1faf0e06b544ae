// The VM layer (migrate/vm.h): strict VmSpec decoding (every refusal names its key), the QEMU
// command line (golden), and real QEMU with the test guest: boot to SOD-READY, own session, RAM
// digest, adoption by pid, quit/kill cleanup, incoming mode, and launch failures that carry
// qemu.log.
#include "migrate/vm.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "base/bytes.h"
#include "tests/test_guest.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using sod::testing::FindTestGuest;
using sod::testing::TestGuestSpec;
using sod::testing::WaitForLine;

json FullSpecJson() {
  return {{"name", "web-1"},           {"memory_mb", 1024},
          {"vcpus", 2},                {"machine", "pc-i440fx-7.2"},
          {"accel", "kvm"},            {"cpu", "host,+ssse3"},
          {"kernel", "/boot/vmlinuz"}, {"initrd", "/boot/initrd.img"},
          {"append", "console=ttyS0"}, {"disk", "/srv/images/web-1.img"},
          {"guest_port", 8080}};
}

TEST(VmSpecTest, JsonRoundTripWithEveryField) {
  Result<VmSpec> s = VmSpecFromJson(FullSpecJson());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->name, "web-1");
  EXPECT_EQ(s->memory_mb, 1024u);
  EXPECT_EQ(s->vcpus, 2u);
  EXPECT_EQ(s->machine, "pc-i440fx-7.2");
  EXPECT_EQ(s->accel, "kvm");
  EXPECT_EQ(s->cpu, "host,+ssse3");
  EXPECT_EQ(s->disk, "/srv/images/web-1.img");
  EXPECT_EQ(s->guest_port, 8080);
  EXPECT_EQ(VmSpecToJson(*s), FullSpecJson());
  Result<VmSpec> again = VmSpecFromJson(VmSpecToJson(*s));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *s);
}

TEST(VmSpecTest, DefaultsForOmittedKeys) {
  Result<VmSpec> s = VmSpecFromJson({{"name", "a"}, {"kernel", "/k"}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  VmSpec want;
  want.name = "a";
  want.kernel = "/k";
  EXPECT_EQ(*s, want);
  EXPECT_EQ(s->memory_mb, 512u);
  EXPECT_EQ(s->accel, "tcg");
  EXPECT_EQ(s->cpu, "qemu64");
  EXPECT_EQ(s->machine, "pc");
  // A disk alone is enough to boot (no kernel).
  EXPECT_TRUE(VmSpecFromJson({{"name", "a"}, {"disk", "/d.img"}}).ok());
  // Boundaries are accepted.
  EXPECT_TRUE(VmSpecFromJson({{"name", std::string(32, 'a')},
                              {"kernel", "/k"},
                              {"memory_mb", 64},
                              {"vcpus", 16},
                              {"guest_port", 65535}})
                  .ok());
  EXPECT_TRUE(VmSpecFromJson({{"name", "0"}, {"kernel", "/k"}, {"memory_mb", 16384}}).ok());
}

struct Refusal {
  const char* what;
  json spec;
  const char* key;  // the key the error must name
};

class VmSpecRefusalTest : public ::testing::TestWithParam<Refusal> {};

json With(const char* key, json value) {
  json j = {{"name", "vm1"}, {"kernel", "/boot/k"}};
  j[key] = std::move(value);
  return j;
}

json Without(const char* key) {
  json j = FullSpecJson();
  j.erase(key);
  return j;
}

TEST_P(VmSpecRefusalTest, RefusedWithTheKeyNamed) {
  const Refusal& r = GetParam();
  Result<VmSpec> s = VmSpecFromJson(r.spec);
  ASSERT_FALSE(s.ok()) << r.what << " was accepted";
  EXPECT_EQ(s.status().code(), Errc::kInvalidArgument) << r.what;
  EXPECT_NE(s.status().message().find(std::string("\"") + r.key + "\""), std::string::npos)
      << r.what << ": " << s.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    AllRefusals, VmSpecRefusalTest,
    ::testing::Values(
        Refusal{"unknown key", With("memory", 512), "memory"},
        Refusal{"misspelled key", With("guestport", 22), "guestport"},
        Refusal{"name missing", Without("name"), "name"},
        Refusal{"name not a string", With("name", 7), "name"},
        Refusal{"name upper case", With("name", "Web"), "name"},
        Refusal{"name leading dash", With("name", "-web"), "name"},
        Refusal{"name underscore", With("name", "web_1"), "name"},
        Refusal{"name empty", With("name", ""), "name"},
        Refusal{"name too long", With("name", std::string(33, 'a')), "name"},
        Refusal{"name with slash", With("name", "a/b"), "name"},
        Refusal{"memory below range", With("memory_mb", 63), "memory_mb"},
        Refusal{"memory above range", With("memory_mb", 16385), "memory_mb"},
        Refusal{"memory as string", With("memory_mb", "512"), "memory_mb"},
        Refusal{"memory negative", With("memory_mb", -512), "memory_mb"},
        Refusal{"memory fractional", With("memory_mb", 512.5), "memory_mb"},
        Refusal{"memory bool", With("memory_mb", true), "memory_mb"},
        Refusal{"memory above u32", With("memory_mb", 1ull << 33), "memory_mb"},
        Refusal{"vcpus zero", With("vcpus", 0), "vcpus"},
        Refusal{"vcpus above range", With("vcpus", 17), "vcpus"},
        Refusal{"vcpus null", With("vcpus", nullptr), "vcpus"},
        Refusal{"machine with option injection", With("machine", "pc,accel=kvm"), "machine"},
        Refusal{"machine empty", With("machine", ""), "machine"},
        Refusal{"accel unknown", With("accel", "xen"), "accel"},
        Refusal{"accel array", With("accel", json::array({"tcg"})), "accel"},
        Refusal{"cpu with space", With("cpu", "qemu64 -S"), "cpu"},
        Refusal{"cpu empty", With("cpu", ""), "cpu"},
        Refusal{"kernel relative", With("kernel", "boot/vmlinuz"), "kernel"},
        Refusal{"kernel with newline", With("kernel", "/boot/vm\nlinuz"), "kernel"},
        Refusal{"kernel missing without disk", Without("kernel").erase("disk") == 1
                                                   ? json{{"name", "a"}}
                                                   : json{{"name", "a"}},
                "kernel"},
        Refusal{"initrd relative", With("initrd", "initrd.img"), "initrd"},
        Refusal{"initrd without kernel",
                json{{"name", "a"}, {"disk", "/d.img"}, {"initrd", "/i"}}, "initrd"},
        Refusal{"append without kernel",
                json{{"name", "a"}, {"disk", "/d.img"}, {"append", "x"}}, "append"},
        Refusal{"append too long", With("append", std::string(2048, 'x')), "append"},
        Refusal{"append with newline", With("append", "a\nb"), "append"},
        Refusal{"disk relative", With("disk", "disk.img"), "disk"},
        Refusal{"guest port above 65535", With("guest_port", 65536), "guest_port"},
        Refusal{"guest port negative", With("guest_port", -1), "guest_port"},
        Refusal{"guest port string", With("guest_port", "22"), "guest_port"}),
    [](const ::testing::TestParamInfo<Refusal>& info) {
      std::string n;
      for (const char* p = info.param.what; *p; ++p) n += std::isalnum(*p) ? *p : '_';
      return n;
    });

TEST(VmSpecTest, NotAnObjectIsRefused) {
  for (const json& j : {json::array(), json("vm"), json(3), json(nullptr)}) {
    Result<VmSpec> s = VmSpecFromJson(j);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Errc::kInvalidArgument);
  }
}

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

using LoadVmSpecTest = TempDirTest;

TEST_F(LoadVmSpecTest, LoadsAFileAndNamesItInErrors) {
  Result<VmSpec> s = LoadVmSpec(Write("ok.json", FullSpecJson().dump(2)));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->name, "web-1");

  Result<VmSpec> missing = LoadVmSpec((dir_ / "nope.json").string());
  EXPECT_EQ(missing.status().code(), Errc::kNotFound);

  std::string bad = Write("bad.json", "{\"name\": ");
  Result<VmSpec> garbled = LoadVmSpec(bad);
  EXPECT_EQ(garbled.status().code(), Errc::kMalformed);
  EXPECT_NE(garbled.status().message().find(bad), std::string::npos);

  std::string wrong = Write("wrong.json", R"({"name":"a","kernel":"/k","vcpu":2})");
  Result<VmSpec> refused = LoadVmSpec(wrong);
  EXPECT_EQ(refused.status().code(), Errc::kInvalidArgument);
  EXPECT_NE(refused.status().message().find(wrong), std::string::npos);
  EXPECT_NE(refused.status().message().find("\"vcpu\""), std::string::npos);

  Result<VmSpec> huge = LoadVmSpec(Write("huge.json", std::string(kMaxVmSpecFileBytes + 1, ' ')));
  EXPECT_EQ(huge.status().code(), Errc::kTooLarge);
}

TEST(VmPathsTest, StandardLayoutWithRandomMemoryFile) {
  VmSpec spec;
  spec.name = "web1";
  VmPaths a = MakeVmPaths("/var/lib/sod/vms/web1", "hosta", spec, 20001);
  EXPECT_EQ(a.dir, "/var/lib/sod/vms/web1");
  EXPECT_EQ(a.qmp_socket, "/var/lib/sod/vms/web1/qmp.sock");
  EXPECT_EQ(a.serial_log, "/var/lib/sod/vms/web1/serial.log");
  EXPECT_EQ(a.qemu_log, "/var/lib/sod/vms/web1/qemu.log");
  EXPECT_EQ(a.host_port, 20001);
  const std::string prefix = "/dev/shm/sod-hosta-web1-";
  ASSERT_EQ(a.memory_file.rfind(prefix, 0), 0u) << a.memory_file;
  EXPECT_EQ(a.memory_file.size(), prefix.size() + 16);
  VmPaths b = MakeVmPaths("/var/lib/sod/vms/web1", "hosta", spec, 20001);
  EXPECT_NE(a.memory_file, b.memory_file);
}

VmPaths GoldenPaths() {
  VmPaths p;
  p.dir = "/run/sod/vms/web1";
  p.qmp_socket = "/run/sod/vms/web1/qmp.sock";
  p.serial_log = "/run/sod/vms/web1/serial.log";
  p.qemu_log = "/run/sod/vms/web1/qemu.log";
  p.memory_file = "/dev/shm/sod-hosta-web1-00112233aabbccdd";
  p.host_port = 20007;
  return p;
}

TEST(BuildQemuArgsTest, GoldenRunWithNetwork) {
  VmSpec s;
  s.name = "web1";
  s.memory_mb = 512;
  s.kernel = "/g/vmlinux";
  s.initrd = "/g/initrd.img";
  s.append = "console=ttyS0 sod.hb=1";
  s.guest_port = 7777;
  const std::vector<std::string> want = {
      "-name", "web1", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "512M",
      "-object",
      "memory-backend-file,id=mem0,size=512M,mem-path=/dev/shm/sod-hosta-web1-00112233aabbccdd,"
      "share=on",
      "-machine", "pc,memory-backend=mem0", "-nodefaults", "-no-user-config", "-display", "none",
      "-no-reboot", "-kernel", "/g/vmlinux", "-initrd", "/g/initrd.img", "-append",
      "console=ttyS0 sod.hb=1", "-chardev", "file,id=ser0,path=/run/sod/vms/web1/serial.log",
      "-serial", "chardev:ser0", "-qmp", "unix:/run/sod/vms/web1/qmp.sock,server=on,wait=off",
      "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:20007-:7777", "-device",
      "virtio-net-pci,netdev=n0"};
  EXPECT_EQ(BuildQemuArgs(s, GoldenPaths(), VmLaunchMode::kRun), want);
}

TEST(BuildQemuArgsTest, GoldenIncomingWithDiskAndCommasEscaped) {
  VmSpec s;
  s.name = "db";
  s.memory_mb = 2048;
  s.vcpus = 4;
  s.accel = "kvm";
  s.cpu = "host";
  s.machine = "q35";
  s.disk = "/srv/a,b.img";
  VmPaths p = GoldenPaths();
  p.serial_log = "/run/x,y/serial.log";
  p.host_port = 0;
  const std::vector<std::string> want = {
      "-name", "db", "-accel", "kvm", "-cpu", "host", "-smp", "4", "-m", "2048M", "-object",
      "memory-backend-file,id=mem0,size=2048M,mem-path=/dev/shm/sod-hosta-web1-00112233aabbccdd,"
      "share=on",
      "-machine", "q35,memory-backend=mem0", "-nodefaults", "-no-user-config", "-display", "none",
      "-no-reboot", "-drive", "file=/srv/a,,b.img,format=raw,if=virtio", "-chardev",
      "file,id=ser0,path=/run/x,,y/serial.log", "-serial", "chardev:ser0", "-qmp",
      "unix:/run/sod/vms/web1/qmp.sock,server=on,wait=off", "-incoming", "defer", "-S"};
  EXPECT_EQ(BuildQemuArgs(s, p, VmLaunchMode::kIncoming), want);
}

TEST(BuildQemuArgsTest, NetworkWithoutHostPortHasNoForward) {
  VmSpec s;
  s.name = "a";
  s.kernel = "/k";
  s.guest_port = 22;
  VmPaths p = GoldenPaths();
  p.host_port = 0;
  std::vector<std::string> args = BuildQemuArgs(s, p, VmLaunchMode::kRun);
  auto it = std::find(args.begin(), args.end(), "-netdev");
  ASSERT_NE(it, args.end());
  EXPECT_EQ(*(it + 1), "user,id=n0,restrict=on");
}

// ---- real QEMU ---------------------------------------------------------------------------------

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

#define REQUIRE_GUEST()                                                                  \
  if (!guest_) GTEST_SKIP() << "test guest not built (scripts/build-guest.sh; ctest runs " \
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
  EXPECT_NE(msg.find("no-such-machine"), std::string::npos) << "QEMU's complaint: " << msg;
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
