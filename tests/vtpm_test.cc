// The per-VM vTPM (vtpm/vm_tpm.h) with real swtpm, and with real QEMU and the test guest: the
// guest extends PCR 16 and increments an NV counter through /dev/tpm0 (tools/guest/sod-tpm.c)
// before, during and after a plain QEMU migration between two QEMUs with a swtpm each, and every
// value it prints on either console is the one an unbroken TPM gives. Skips without swtpm or
// without the guest (SOD_GUEST_DIR).
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "base/bytes.h"
#include "migrate/vm.h"
#include "tests/test_guest.h"
#include "tests/vtpm_guest.h"
#include "vtpm/vm_tpm.h"

namespace sod::vtpm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;
using sod::testing::FindTestGuest;
using sod::testing::ReadWholeFile;
using sod::testing::WaitForLine;
using sod::testing::WaitMigrationEnd;
using namespace sod::testing::vtpm_guest;

bool HaveSwtpm() { return std::system("command -v swtpm >/dev/null 2>&1") == 0; }

SecretBytes Key(uint8_t fill) {
  SecretBytes k(kVmTpmKeyBytes);
  std::fill(k.data(), k.data() + k.size(), fill);
  return k;
}

// Sends one control command to a swtpm and returns its 4-byte result (CMD_INIT, ...).
uint32_t CtrlCommand(const std::string& socket_path, std::vector<uint8_t> msg) {
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, socket_path.c_str(), sizeof(a.sun_path) - 1);
  uint8_t r[4] = {0xff, 0xff, 0xff, 0xff};
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::send(s, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size())) {
    size_t got = 0;
    while (got < 4) {
      ssize_t n = ::recv(s, r + got, 4 - got, 0);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
  }
  ::close(s);
  return (uint32_t{r[0]} << 24) | (uint32_t{r[1]} << 16) | (uint32_t{r[2]} << 8) | r[3];
}
// CMD_INIT: makes swtpm create (or load) its state, as QEMU does at machine reset.
uint32_t InitTpm(const std::string& socket_path) {
  return CtrlCommand(socket_path, {0, 0, 0, 2, 0, 0, 0, 0});
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short: unix socket paths live below it.
    dir_ = "/tmp/sod-vtpm-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
  static inline int counter_ = 0;
};

// ---- the QEMU command line ---------------------------------------------------------------------

TEST(VtpmQemuArgs, TpmSocketAddsTheEmulatorDeviceAndNothingElse) {
  VmSpec spec;
  spec.name = "t1";
  spec.kernel = "/k";
  spec.append = "console=ttyS0";
  spec.guest_port = 7777;
  VmPaths paths = MakeVmPaths("/run/sod/t1", "h", spec, 5555);
  for (VmLaunchMode mode : {VmLaunchMode::kRun, VmLaunchMode::kIncoming}) {
    const std::vector<std::string> plain = BuildQemuArgs(spec, paths, mode);
    for (const std::string& a : plain) EXPECT_EQ(a.find("tpm"), std::string::npos) << a;
    VmPaths with = paths;
    with.tpm_socket = "/run/sod/t1/vtpm,x.sock";
    std::vector<std::string> args = BuildQemuArgs(spec, with, mode);
    const std::vector<std::string> tpm = {
        "-chardev", "socket,id=chrtpm,path=/run/sod/t1/vtpm,,x.sock",
        "-tpmdev",  "emulator,id=tpm0,chardev=chrtpm",
        "-device",  "tpm-tis,tpmdev=tpm0"};
    auto at = std::search(args.begin(), args.end(), tpm.begin(), tpm.end());
    ASSERT_NE(at, args.end());
    args.erase(at, at + static_cast<long>(tpm.size()));
    EXPECT_EQ(args, plain);
  }
}

// ---- VmTpm with a real swtpm -------------------------------------------------------------------

class VmTpmTest : public TempDir {
 protected:
  void SetUp() override {
    TempDir::SetUp();
    if (!HaveSwtpm()) GTEST_SKIP() << "swtpm not installed";
  }
  // A state directory holding a TPM state encrypted with `key`.
  void MakeState(const std::string& state, const SecretBytes& key) {
    auto t = VmTpm::Start(state, P("mk.sock"), key, VmTpmMode::kRun);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    ASSERT_EQ(InitTpm(P("mk.sock")), 0u);
    ASSERT_TRUE((*t)->Stop().ok());
    ASSERT_TRUE(HasVmTpmState(state));
  }
};

TEST_F(VmTpmTest, StartsOnAnEmptyDirectoryAndStops) {
  auto t = VmTpm::Start(P("state"), P("c.sock"), Key(1), VmTpmMode::kRun);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE((*t)->Running());
  EXPECT_EQ(::getsid((*t)->pid()), (*t)->pid()) << "swtpm must lead its own session";
  EXPECT_TRUE(fs::exists(P("c.sock")));
  EXPECT_EQ(fs::status(P("state")).permissions() & fs::perms::all, fs::perms::owner_all);
  // A second swtpm on the same state is refused before it touches the socket.
  auto again = VmTpm::Start(P("state"), P("d.sock"), Key(1), VmTpmMode::kRun);
  EXPECT_EQ(again.status().code(), Errc::kState) << again.status().ToString();
  ASSERT_TRUE((*t)->Stop().ok());
  EXPECT_FALSE((*t)->Running());
  EXPECT_FALSE(fs::exists(P("c.sock")));
  EXPECT_TRUE((*t)->Stop().ok());
}

TEST_F(VmTpmTest, RefusesBadArguments) {
  EXPECT_EQ(VmTpm::Start(P("s"), P("c.sock"), SecretBytes(16), VmTpmMode::kRun).status().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(VmTpm::Start("relative", P("c.sock"), Key(1), VmTpmMode::kRun).status().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(
      VmTpm::Start(P("s"), "/" + std::string(200, 'x'), Key(1), VmTpmMode::kRun).status().code(),
      Errc::kInvalidArgument);
  VmTpmOptions o;
  o.binary = "/nonexistent/swtpm";
  EXPECT_EQ(VmTpm::Start(P("s"), P("c.sock"), Key(1), VmTpmMode::kRun, o).status().code(),
            Errc::kNotFound);
}

TEST_F(VmTpmTest, StateIsEncryptedWithTheStateKeyAndIntegrityChecked) {
  MakeState(P("state"), Key(7));
  // The right key loads it (Start runs CMD_INIT on existing state).
  {
    auto t = VmTpm::Start(P("state"), P("c.sock"), Key(7), VmTpmMode::kRun);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
  }
  // Another key does not.
  auto wrong = VmTpm::Start(P("state"), P("c.sock"), Key(8), VmTpmMode::kRun);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), Errc::kIo);
  EXPECT_NE(wrong.status().message().find("wrong key"), std::string::npos)
      << wrong.status().ToString();
  // Nor does a state file with one byte flipped (encrypt-then-MAC).
  const std::string perm = P("state/tpm2-00.permall");
  std::string bytes = ReadWholeFile(perm);
  ASSERT_GT(bytes.size(), 200u);
  bytes[bytes.size() / 2] ^= 0x01;
  std::ofstream(perm, std::ios::binary | std::ios::trunc) << bytes;
  auto tampered = VmTpm::Start(P("state"), P("c.sock"), Key(7), VmTpmMode::kRun);
  EXPECT_EQ(tampered.status().code(), Errc::kIo) << tampered.status().ToString();
}

TEST_F(VmTpmTest, IncomingNeedsAnEmptyStateDirectory) {
  MakeState(P("state"), Key(3));
  auto t = VmTpm::Start(P("state"), P("c.sock"), Key(3), VmTpmMode::kIncoming);
  EXPECT_EQ(t.status().code(), Errc::kState) << t.status().ToString();
  auto fresh = VmTpm::Start(P("fresh"), P("c.sock"), Key(3), VmTpmMode::kIncoming);
  EXPECT_TRUE(fresh.ok()) << fresh.status().ToString();
}

TEST_F(VmTpmTest, EraseRefusesALiveSwtpmThenRemovesEverything) {
  MakeState(P("state"), Key(5));
  auto t = VmTpm::Start(P("state"), P("c.sock"), Key(5), VmTpmMode::kRun);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(EraseVmTpmState(P("state")).code(), Errc::kState);
  EXPECT_TRUE(HasVmTpmState(P("state")));
  ASSERT_TRUE((*t)->Stop().ok());
  ASSERT_TRUE(EraseVmTpmState(P("state")).ok());
  EXPECT_FALSE(fs::exists(P("state")));
  EXPECT_TRUE(EraseVmTpmState(P("state")).ok()) << "erasing twice is harmless";
  fs::create_directories(P("odd/sub"));
  EXPECT_EQ(EraseVmTpmState(P("odd")).code(), Errc::kState);
}

TEST_F(VmTpmTest, EndsAnOrphanLeftOnItsStateDirectory) {
  // An orphan: a swtpm on the directory that is not our child (started through a shell that
  // exits, so init adopts it).
  fs::create_directories(P("state"));
  const std::string cmd =
      "sh -c 'head -c 32 /dev/zero > " + P("k") +
      "; swtpm socket --tpm2 --tpmstate dir=" + P("state") +
      ",mode=0600 --ctrl type=unixio,path=" + P("o.sock") + " --key file=" + P("k") +
      ",format=binary,mode=aes-256-cbc --pid file=" + P("state") + "/swtpm.pid --daemon'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  for (int i = 0; i < 100 && !fs::exists(P("state/swtpm.pid")); ++i)
    std::this_thread::sleep_for(20ms);
  auto refused = VmTpm::Start(P("state"), P("c.sock"), Key(0), VmTpmMode::kRun);
  EXPECT_EQ(refused.status().code(), Errc::kState) << refused.status().ToString();
  VmTpmOptions o;
  o.end_orphan = true;
  auto t = VmTpm::Start(P("state"), P("c.sock"), Key(0), VmTpmMode::kRun, o);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
}

// ---- a real guest migrating with its vTPM ------------------------------------------------------

class VtpmMigrationTest : public TempDir, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    TempDir::SetUp();
    guest_ = FindTestGuest();
    if (!guest_) GTEST_SKIP() << "test guest not built (SOD_GUEST_DIR, scripts/build-guest.sh)";
    if (!HaveSwtpm()) GTEST_SKIP() << "swtpm not installed";
    if (ReadWholeFile(fs::path(guest_->initrd).parent_path() / "manifest").find("sod-tpm") ==
        std::string::npos)
      GTEST_SKIP() << "the test guest has no sod-tpm (rebuild it with scripts/build-guest.sh)";
  }
  void TearDown() override {
    for (auto& vm : vms_) vm->Kill();
    for (auto& t : tpms_) (void)t->Stop();
    for (const auto& f : memory_files_) ::unlink(f.c_str());
    TempDir::TearDown();
  }
  VmSpec Spec() {
    VmSpec s;
    s.name = "vtpm";
    s.memory_mb = 256;
    s.tpm = true;
    // The bzImage: with a TPM, QEMU 7.2's PVH loader puts the initrd over SeaBIOS's ACPI tables
    // (vtpm/README.md), so the ELF vmlinux boots without ACPI and without a TPM.
    s.kernel = fs::path(guest_->initrd).parent_path() / "vmlinuz";
    s.initrd = guest_->initrd;
    s.append = guest_->cmdline + " sod.hb=0 sod.net=0 " + TpmLoopAppend();
    return s;
  }
  Vm* Launch(const VmSpec& spec, const std::string& name, const std::string& tpm_socket,
             VmLaunchMode mode) {
    VmPaths p = MakeVmPaths(P(name), "vtpmtest", spec, 0);
    p.tpm_socket = tpm_socket;
    memory_files_.push_back(p.memory_file);
    auto vm = Vm::Launch(spec, p, mode);
    EXPECT_TRUE(vm.ok()) << vm.status().ToString();
    if (!vm.ok()) return nullptr;
    vms_.push_back(std::move(vm).value());
    return vms_.back().get();
  }
  VmTpm* StartTpm(const std::string& name, const SecretBytes& key, VmTpmMode mode,
                  const SecretBytes* migration_key) {
    VmTpmOptions o;
    o.migration_key = migration_key;
    auto t = VmTpm::Start(P(name), P(name + ".sock"), key, mode, o);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return nullptr;
    tpms_.push_back(std::move(t).value());
    return tpms_.back().get();
  }
  std::optional<sod::testing::TestGuest> guest_;
  std::vector<std::unique_ptr<Vm>> vms_;
  std::vector<std::unique_ptr<VmTpm>> tpms_;
  std::vector<std::string> memory_files_;
};

TEST_P(VtpmMigrationTest, GuestSeesTheSameTpmAfterMigration) {
  const bool with_migration_key = GetParam();
  const SecretBytes migration_key = Key(0x4d);
  const SecretBytes* mk = with_migration_key ? &migration_key : nullptr;
  // Each host keeps the state at rest under its own key.
  const SecretBytes src_key = Key(0x51), dst_key = Key(0xd5);
  const VmSpec spec = Spec();

  VmTpm* src_tpm = StartTpm("src-tpm", src_key, VmTpmMode::kRun, mk);
  ASSERT_NE(src_tpm, nullptr);
  Vm* src = Launch(spec, "src", src_tpm->ctrl_socket(), VmLaunchMode::kRun);
  ASSERT_NE(src, nullptr);
  auto boot = WaitForLine(src->paths().serial_log, "SOD-TPM PCR16 ", 120s);
  ASSERT_TRUE(boot) << ReadWholeFile(src->paths().serial_log);
  if (!boot->empty() && boot->back() == '\r') boot->pop_back();
  EXPECT_EQ(*boot, "SOD-TPM PCR16 " + ExpectedPcr(0));
  ASSERT_TRUE(WaitForLine(src->paths().serial_log, "SOD-TPMLOOP 3 ", 60s));

  VmTpm* dst_tpm = StartTpm("dst-tpm", dst_key, VmTpmMode::kIncoming, mk);
  ASSERT_NE(dst_tpm, nullptr);
  Vm* dst = Launch(spec, "dst", dst_tpm->ctrl_socket(), VmLaunchMode::kIncoming);
  ASSERT_NE(dst, nullptr);
  const std::string uri = "unix:" + P("mig.sock");
  ASSERT_TRUE(dst->qmp().Execute("migrate-incoming", {{"uri", uri}}).ok());
  ASSERT_TRUE(src->qmp().Execute("migrate", {{"uri", uri}}).ok());
  Result<std::string> status = WaitMigrationEnd(*src, 120s);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  ASSERT_EQ(*status, "completed");
  for (int i = 0; i < 100 && *dst->RunState() != "paused"; ++i) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(*dst->RunState(), "paused") << ReadWholeFile(dst->paths().qemu_log);
  ASSERT_TRUE(dst->Resume().ok());

  const auto before = LoopLines(src->paths().serial_log);
  ASSERT_FALSE(before.empty());
  const uint64_t last_src = before.rbegin()->first;
  ASSERT_TRUE(WaitForLine(dst->paths().serial_log,
                          "SOD-TPMLOOP " + std::to_string(last_src + 3) + " ", 60s))
      << ReadWholeFile(dst->paths().serial_log);
  const auto after = LoopLines(dst->paths().serial_log);
  ASSERT_FALSE(after.empty());
  // The destination goes on where the source stopped (a line cut in two by the switchover may be
  // missing from both consoles), and every value is the unbroken chain: PCR 16 and the NV
  // counter came over intact.
  EXPECT_GT(after.begin()->first, last_src - 1);
  EXPECT_LE(after.begin()->first, last_src + 2);
  for (const auto* lines : {&before, &after}) {
    for (const auto& [seq, l] : *lines) {
      EXPECT_EQ(l.pcr, ExpectedPcr(seq)) << "seq " << seq;
      EXPECT_EQ(l.nv, seq) << "seq " << seq;
    }
  }
  std::printf(
      "vtpm: source printed SOD-TPMLOOP 1..%llu, destination %llu..%llu; last: %s nv=%llu\n",
      static_cast<unsigned long long>(last_src),
      static_cast<unsigned long long>(after.begin()->first),
      static_cast<unsigned long long>(after.rbegin()->first), after.rbegin()->second.pcr.c_str(),
      static_cast<unsigned long long>(after.rbegin()->second.nv));

  // The source's part ends: its QEMU quits, its swtpm stops, its state is erased.
  ASSERT_TRUE(src->Quit(10s).ok());
  ASSERT_TRUE(src_tpm->Stop().ok());
  ASSERT_TRUE(HasVmTpmState(src_tpm->state_dir()));
  ASSERT_TRUE(EraseVmTpmState(src_tpm->state_dir()).ok());
  EXPECT_FALSE(fs::exists(src_tpm->state_dir()));

  // The destination's state at rest is under the destination's key only.
  dst->Kill();
  ASSERT_TRUE(dst_tpm->Stop().ok());
  ASSERT_TRUE(HasVmTpmState(dst_tpm->state_dir()));
  auto with_src_key = VmTpm::Start(dst_tpm->state_dir(), P("x.sock"), src_key, VmTpmMode::kRun);
  EXPECT_EQ(with_src_key.status().code(), Errc::kIo) << with_src_key.status().ToString();
  auto with_dst_key = VmTpm::Start(dst_tpm->state_dir(), P("x.sock"), dst_key, VmTpmMode::kRun);
  EXPECT_TRUE(with_dst_key.ok()) << with_dst_key.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(MigrationKey, VtpmMigrationTest, ::testing::Bool(), [](const auto& info) {
  return info.param ? "WithMigrationKey" : "BlobsInClear";
});

TEST_F(VtpmMigrationTest, DestinationWithAnotherMigrationKeyCannotLoadAndSourceResumes) {
  const SecretBytes src_mk = Key(0x11), dst_mk = Key(0x22);
  const VmSpec spec = Spec();
  VmTpm* src_tpm = StartTpm("src-tpm", Key(1), VmTpmMode::kRun, &src_mk);
  ASSERT_NE(src_tpm, nullptr);
  Vm* src = Launch(spec, "src", src_tpm->ctrl_socket(), VmLaunchMode::kRun);
  ASSERT_NE(src, nullptr);
  ASSERT_TRUE(WaitForLine(src->paths().serial_log, "SOD-TPMLOOP 2 ", 120s));
  VmTpm* dst_tpm = StartTpm("dst-tpm", Key(2), VmTpmMode::kIncoming, &dst_mk);
  ASSERT_NE(dst_tpm, nullptr);
  Vm* dst = Launch(spec, "dst", dst_tpm->ctrl_socket(), VmLaunchMode::kIncoming);
  ASSERT_NE(dst, nullptr);
  const std::string uri = "unix:" + P("mig.sock");
  ASSERT_TRUE(dst->qmp().Execute("migrate-incoming", {{"uri", uri}}).ok());
  ASSERT_TRUE(src->qmp().Execute("migrate", {{"uri", uri}}).ok());
  // The destination refuses the state blobs: its QEMU ends (load of migration failed).
  bool dst_gone = false;
  for (int i = 0; i < 1200 && !(dst_gone = !dst->Alive()); ++i) std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(dst_gone) << "destination QEMU still " << *dst->RunState();
  Result<std::string> status = WaitMigrationEnd(*src, 60s);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  std::printf("vtpm: source migration status %s; destination qemu.log: %s\n", status->c_str(),
              ReadWholeFile(dst->paths().qemu_log).c_str());
  // Abort: the source resumes with its TPM intact.
  const std::string state = *src->RunState();
  if (state != "running") {
    ASSERT_TRUE(src->Resume().ok()) << state;
  }
  const uint64_t last = LoopLines(src->paths().serial_log).rbegin()->first;
  ASSERT_TRUE(
      WaitForLine(src->paths().serial_log, "SOD-TPMLOOP " + std::to_string(last + 2) + " ", 60s));
  for (const auto& [seq, l] : LoopLines(src->paths().serial_log)) {
    EXPECT_EQ(l.pcr, ExpectedPcr(seq)) << "seq " << seq;
    EXPECT_EQ(l.nv, seq);
  }
}

}  // namespace
}  // namespace sod::vtpm
