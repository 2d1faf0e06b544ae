// A real guest with a vTPM migrating between two attested hosts through sod's engine
// (MigrateOut / ServeSession), each host keeping its vTPM keys in a VtpmHost sealed to its own
// simulated TPM: the guest's PCR 16 and NV counter go on at the destination; an offer whose
// epoch is not newer than what the destination has seen is refused before any key is read or any
// QEMU starts; without attestation on both ends the key never leaves the source; and a flipped
// byte in the record that carries the vTPM state fails the migration while the source keeps
// running with its TPM intact.
#include <atomic>
#include <optional>

#include "attested_migration_fixture.h"
#include "tamper_relay.h"
#include "tests/vtpm_guest.h"
#include "vtpm/tpm_sealer.h"
#include "vtpm/vtpm_host.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace sod::testing::vtpm_guest;

class VtpmMigrationTest : public AttestedMigrationTest {
 protected:
  void SetUp() override {
    AttestedMigrationTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (Slurp(GuestDir() + "/manifest").find("sod-tpm") == std::string::npos ||
        !fs::exists(GuestDir() + "/vmlinuz"))
      GTEST_SKIP() << "the test guest has no sod-tpm or vmlinuz (scripts/build-guest.sh)";
    Enroll(a_, ta_);
    for (auto [host, att, sealer, vh] :
         {std::tuple{&a_, &ta_, &sealer_a_, &va_}, std::tuple{&b_, &tb_, &sealer_b_, &vb_}}) {
      sealer->emplace(*att->tpm, attest::PcrSelection{0xFFu});
      auto v = vtpm::VtpmHost::Open((host->dir / "state").string(), **sealer);
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      *vh = std::move(*v);
    }
  }
  void TearDown() override {
    for (auto* vm : {&source_vm_, &dest_vm_})
      if (*vm) (*vm)->Kill();
    if (src_tpm_) (void)src_tpm_->Stop();
    if (dest_tpm_) (void)dest_tpm_->Stop();
    AttestedMigrationTest::TearDown();
  }

  std::string VmDir(const Host& h) const { return (h.dir / "vm").string(); }

  // The guest with a vTPM at hosta (epoch 1), once its TPM loop has printed twice.
  void BootVtpmSource() {
    spec_ = Spec("sod.net=0 " + TpmLoopAppend());
    spec_.kernel = GuestDir() + "/vmlinuz";  // the PVH vmlinux sees no TPM (vtpm/README.md)
    spec_.tpm = true;
    ASSERT_TRUE(va_->RecordEpoch(spec_.name, 1).ok());
    auto tpm = va_->StartForVm(spec_.name, VmDir(a_));
    ASSERT_TRUE(tpm.ok()) << tpm.status().ToString();
    src_tpm_ = std::move(*tpm);
    VmPaths paths = MakeVmPaths(VmDir(a_), a_.id, spec_, 0);
    paths.tpm_socket = vtpm::VtpmHost::SocketOf(VmDir(a_));
    auto vm = Vm::Launch(spec_, paths, VmLaunchMode::kRun);
    ASSERT_TRUE(vm.ok()) << vm.status().ToString();
    source_vm_ = std::move(*vm);
    ASSERT_TRUE(WaitFor([&] { return LoopLines(source_vm_->paths().serial_log).size() >= 2; },
                        180s))
        << Slurp(source_vm_->paths().serial_log);
  }

  DestinationContext VtpmDestContext() {
    DestinationContext ctx = DestContext();
    ctx.attestation = tb_.sessions.get();
    ctx.check_vtpm_epoch = [this](const std::string& vm, uint64_t epoch) {
      ++epoch_checks_;
      return vb_->CheckNewer(vm, epoch);
    };
    ctx.launch_incoming_vtpm = [this](const VmSpec& spec, const MigrationId&,
                                      const IncomingVtpm& vtpm) -> Result<std::unique_ptr<Vm>> {
      ++launched_;
      received_key_ = ToHex(vtpm.migration_key.span());
      SOD_ASSIGN_OR_RETURN(dest_tpm_,
                           vb_->StartIncoming(spec.name, VmDir(b_), vtpm.migration_key));
      VmPaths paths = MakeVmPaths(VmDir(b_), b_.id, spec, 0);
      paths.tpm_socket = dest_tpm_->ctrl_socket();
      {
        std::lock_guard<std::mutex> l(dest_files_mu_);
        dest_memory_files_.push_back(paths.memory_file);
      }
      return Vm::Launch(spec, paths, VmLaunchMode::kIncoming);
    };
    return ctx;
  }

  SourceOptions VtpmSourceOptions(uint64_t epoch) {
    SourceOptions opts;
    opts.attestation = ta_.sessions.get();
    key_ = std::move(va_->MigrationKey(spec_.name, VmDir(a_))).value();
    opts.vtpm = SourceVtpm{epoch, &key_};
    return opts;
  }

  // The source guest still runs, its TPM loop goes on, and every value it printed is right.
  void ExpectSourceTpmIntact() {
    const auto before = LoopLines(source_vm_->paths().serial_log);
    ASSERT_FALSE(before.empty());
    const uint64_t last = before.rbegin()->first;
    EXPECT_TRUE(WaitFor(
        [&] { return LoopLines(source_vm_->paths().serial_log).rbegin()->first >= last + 3; },
        30s))
        << Slurp(source_vm_->paths().serial_log);
    EXPECT_EQ(CheckLoopLines(LoopLines(source_vm_->paths().serial_log)), "");
  }

  std::optional<vtpm::TpmKeySealer> sealer_a_, sealer_b_;
  std::unique_ptr<vtpm::VtpmHost> va_, vb_;
  std::unique_ptr<vtpm::VmTpm> src_tpm_, dest_tpm_;
  SecretBytes key_;
  std::atomic<int> epoch_checks_{0};
  std::string received_key_;
};

TEST_F(VtpmMigrationTest, GuestTpmGoesOnAtTheDestinationAndTheReceiptNamesTheEpoch) {
  Enroll(b_, tb_);
  BootVtpmSource();
  Outcome o = Migrate(VtpmDestContext(), "hostb", VtpmSourceOptions(2));
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  ASSERT_TRUE(dest_vm_);
  ASSERT_TRUE(o.source.receipt);
  EXPECT_EQ(o.source.receipt->receipt.vtpm_epoch, 2u);
  EXPECT_EQ(received_key_, ToHex(key_.span())) << "the destination got the VM's migration key";

  const auto src_lines = LoopLines(source_vm_->paths().serial_log);
  ASSERT_FALSE(src_lines.empty());
  const uint64_t last_src = src_lines.rbegin()->first;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto l = LoopLines(dest_vm_->paths().serial_log);
        return !l.empty() && l.rbegin()->first >= last_src + 3;
      },
      60s))
      << Slurp(dest_vm_->paths().serial_log);
  const auto dst_lines = LoopLines(dest_vm_->paths().serial_log);
  EXPECT_LE(dst_lines.begin()->first, last_src + 2) << "the destination goes on where it stopped";
  EXPECT_EQ(CheckLoopLines(src_lines), "");
  EXPECT_EQ(CheckLoopLines(dst_lines), "") << "PCR 16 and the NV counter came over intact";
  // hostb keeps the VM's migration key (for its next move) under its own wrapping.
  auto kept = vb_->MigrationKey(spec_.name, VmDir(b_));
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ(ToHex(kept->span()), ToHex(key_.span()));
  EXPECT_FALSE(va_->MigrationKey(spec_.name, VmDir(b_)).ok()) << "hosta cannot open hostb's keys";
}

TEST_F(VtpmMigrationTest, EpochNotNewerThanSeenIsRefusedBeforeTheKeyOrAnyQemu) {
  Enroll(b_, tb_);
  BootVtpmSource();
  // hostb has had this VM at epoch 5 (it left hostb since): older and equal states are replays.
  ASSERT_TRUE(vb_->RecordEpoch(spec_.name, 5).ok());
  for (uint64_t epoch : {uint64_t{4}, uint64_t{5}}) {
    Outcome o = Migrate(VtpmDestContext(), "hostb", VtpmSourceOptions(epoch));
    EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
    EXPECT_EQ(o.dest.error.code(), Errc::kRefused) << o.dest.error.ToString();
    EXPECT_NE(o.source.error.message().find("not newer than epoch 5"), std::string::npos)
        << o.source.error.ToString();
    EXPECT_EQ(launched_.load(), 0) << "no swtpm, no QEMU for a replayed epoch";
    EXPECT_TRUE(received_key_.empty()) << "the key was never taken in";
    EXPECT_EQ(o.source.stream_bytes, 0u);
  }
  ExpectSourceStillRunsAndNothingAtDestination();
  ExpectSourceTpmIntact();
  // The next epoch is accepted.
  Outcome o = Migrate(VtpmDestContext(), "hostb", VtpmSourceOptions(6));
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  EXPECT_EQ(o.source.receipt->receipt.vtpm_epoch, 6u);
}

TEST_F(VtpmMigrationTest, WithoutAttestationTheKeyNeverLeaves) {
  BootVtpmSource();
  // 1. The source does not attest: it refuses to move a vTPM at all.
  {
    SourceOptions opts = VtpmSourceOptions(2);
    opts.attestation = nullptr;
    Outcome o = Migrate(VtpmDestContext(), "hostb", opts);
    EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
    EXPECT_EQ(o.source.error.code(), Errc::kAttestation) << o.source.error.ToString();
  }
  // 2. hostb attests but is not enrolled: refused at the session's attestation, before the offer.
  {
    Outcome o = Migrate(VtpmDestContext(), "hostb", VtpmSourceOptions(2));
    EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
    EXPECT_EQ(o.source.error.code(), Errc::kAttestation) << o.source.error.ToString();
  }
  // 3. hostb is enrolled but does not attest itself: the source's challenge goes unanswered.
  Enroll(b_, tb_);
  {
    DestinationContext ctx = VtpmDestContext();
    ctx.attestation = nullptr;
    Outcome o = Migrate(ctx, "hostb", VtpmSourceOptions(2));
    EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
    EXPECT_NE(o.source.error.code(), Errc::kOk);
  }
  EXPECT_EQ(epoch_checks_.load(), 0) << "no offer with a vTPM reached hostb";
  EXPECT_EQ(launched_.load(), 0);
  EXPECT_TRUE(received_key_.empty());
  ExpectSourceStillRunsAndNothingAtDestination();
  ExpectSourceTpmIntact();
}

TEST_F(VtpmMigrationTest, FlippedByteInTheVtpmStateRecordFailsAndTheSourceKeepsItsTpm) {
  Enroll(b_, tb_);
  // The integrity-only suite: payloads travel in clear, so the relay can find the record that
  // carries QEMU's tpm-emulator section (the vTPM's state blobs) and flip a byte in it.
  session_options_.suites = {Suite::kHmacSha256};
  session_options_.data_channels = 1;  // so the record is on the relay's channel
  BootVtpmSource();
  TamperConfig tc;
  tc.action = TamperAction::kFlipPayloadByte;
  tc.payload_contains = "tpm-emulator";
  tc.channel = 1;
  std::unique_ptr<TamperRelay> relay;
  route_ = [&](uint16_t target) {
    relay = std::move(TamperRelay::Start(target, tc)).value();
    return relay->port();
  };
  Outcome o = Migrate(VtpmDestContext(), "hostb", VtpmSourceOptions(2));
  ASSERT_TRUE(relay && relay->fired());
  const std::vector<uint8_t> rec = relay->captured();
  relay->Stop();
  const std::string text(rec.begin(), rec.end());
  EXPECT_NE(text.find("tpm-emulator"), std::string::npos)
      << "the flipped record carries the vTPM state";
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted) << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kIntegrity) << o.dest.error.ToString();
  EXPECT_EQ(launched_.load(), 1);
  ExpectSourceStillRunsAndNothingAtDestination();
  ExpectSourceTpmIntact();
}

}  // namespace
}  // namespace sod
