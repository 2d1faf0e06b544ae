// The VM layer without QEMU (migrate/vm.h): strict VmSpec decoding (every refusal names its key),
// spec files, the per-VM path layout, and the QEMU command line (golden). vm_test.cc runs QEMU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>

#include "migrate/vm.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json FullSpecJson() {
  return {{"name", "web-1"},
          {"memory_mb", 1024},
          {"vcpus", 2},
          {"machine", "pc-i440fx-7.2"},
          {"accel", "kvm"},
          {"cpu", "host,+ssse3"},
          {"kernel", "/boot/vmlinuz"},
          {"initrd", "/boot/initrd.img"},
          {"append", "console=ttyS0"},
          {"disk", "/srv/images/web-1.img"},
          {"guest_port", 8080},
          {"tpm", true}};
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
  EXPECT_TRUE(s->tpm);
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
    ::testing::Values(Refusal{"unknown key", With("memory", 512), "memory"},
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
                      Refusal{"machine with option injection", With("machine", "pc,accel=kvm"),
                              "machine"},
                      Refusal{"machine empty", With("machine", ""), "machine"},
                      Refusal{"accel unknown", With("accel", "xen"), "accel"},
                      Refusal{"accel array", With("accel", json::array({"tcg"})), "accel"},
                      Refusal{"cpu with space", With("cpu", "qemu64 -S"), "cpu"},
                      Refusal{"cpu empty", With("cpu", ""), "cpu"},
                      Refusal{"kernel relative", With("kernel", "boot/vmlinuz"), "kernel"},
                      Refusal{"kernel with newline", With("kernel", "/boot/vm\nlinuz"), "kernel"},
                      Refusal{"kernel missing without disk", json{{"name", "a"}}, "kernel"},
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
                      Refusal{"guest port string", With("guest_port", "22"), "guest_port"},
                      Refusal{"tpm as a string", With("tpm", "yes"), "tpm"},
                      Refusal{"tpm as a number", With("tpm", 1), "tpm"},
                      Refusal{"security as a string", With("security", "basic"), "security"},
                      Refusal{"security as an array", With("security", json::array({1})),
                              "security"}),
    [](const ::testing::TestParamInfo<Refusal>& info) {
      std::string n;
      for (const char* p = info.param.what; *p; ++p) n += std::isalnum(*p) ? *p : '_';
      return n;
    });

// The security request travels with the spec as an opaque object (sodd validates it with the
// policy library); absent means none, and the spec without one is written as before.
TEST(VmSpecTest, SecurityRequestRoundTripsAndIsOmittedWhenAbsent) {
  json j = {{"name", "a"}, {"kernel", "/k"},
            {"security", {{"version", 1}, {"options", {1, 2}}, {"protect", "CI"}}}};
  Result<VmSpec> s = VmSpecFromJson(j);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->security, R"({"options":[1,2],"protect":"CI","version":1})");
  EXPECT_EQ(VmSpecToJson(*s)["security"], j["security"]);
  Result<VmSpec> again = VmSpecFromJson(VmSpecToJson(*s));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *s);
  Result<VmSpec> none = VmSpecFromJson({{"name", "a"}, {"kernel", "/k"}, {"security", nullptr}});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->security.empty());
  EXPECT_FALSE(VmSpecToJson(*none).contains("security"));
  VmSpec big = *s;
  big.security = "{\"x\":\"" + std::string(kMaxVmSecurityBytes, 'a') + "\"}";
  EXPECT_EQ(ValidateVmSpec(big).code(), Errc::kInvalidArgument);
}

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
      "-name",
      "web1",
      "-accel",
      "tcg",
      "-cpu",
      "qemu64",
      "-smp",
      "1",
      "-m",
      "512M",
      "-object",
      "memory-backend-file,id=mem0,size=512M,mem-path=/dev/shm/sod-hosta-web1-00112233aabbccdd,"
      "share=on",
      "-machine",
      "pc,memory-backend=mem0",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-kernel",
      "/g/vmlinux",
      "-initrd",
      "/g/initrd.img",
      "-append",
      "console=ttyS0 sod.hb=1",
      "-chardev",
      "file,id=ser0,path=/run/sod/vms/web1/serial.log",
      "-serial",
      "chardev:ser0",
      "-qmp",
      "unix:/run/sod/vms/web1/qmp.sock,server=on,wait=off",
      "-netdev",
      "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:20007-:7777",
      "-device",
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
      "-name",
      "db",
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-smp",
      "4",
      "-m",
      "2048M",
      "-object",
      "memory-backend-file,id=mem0,size=2048M,mem-path=/dev/shm/sod-hosta-web1-00112233aabbccdd,"
      "share=on",
      "-machine",
      "q35,memory-backend=mem0",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-drive",
      "file=/srv/a,,b.img,format=raw,if=virtio",
      "-chardev",
      "file,id=ser0,path=/run/x,,y/serial.log",
      "-serial",
      "chardev:ser0",
      "-qmp",
      "unix:/run/sod/vms/web1/qmp.sock,server=on,wait=off",
      "-incoming",
      "defer",
      "-S"};
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

}  // namespace
}  // namespace sod
