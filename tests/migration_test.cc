// End-to-end secure migration of a real QEMU guest (TCG) between two hosts in this process,
// over TLS on 127.0.0.1: the guest keeps running at the destination, its heartbeat continues, its
// memory pattern survives, and the protocol's RAM digest check passed; both hosts hold the same
// doubly signed receipt. Failure cases: refused offer, destination QEMU dying mid-stream, wrong
// peer certificate -- each leaves the VM running at the source and nothing at the destination.
//
// Needs the test guest (scripts/build-guest.sh; the ctest fixture "guest" builds it).
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <optional>
#include <regex>
#include <thread>

#include "tests/migration_fixture.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Hosts, PKI, BootSource, Migrate, ExpectSourceStillRunsAndNothingAtDestination: see
// tests/migration_fixture.h (shared with tests/tamper_test.cc).
class MigrationTest : public MigrationFixture {};

TEST_F(MigrationTest, RunningGuestMovesWithItsMemoryAndHeartbeat) {
  BootSource();
  std::this_thread::sleep_for(2s);
  const long hb_before = LastHeartbeat(source_vm_->paths().serial_log);
  ASSERT_GT(hb_before, 0);
  const std::string source_serial = source_vm_->paths().serial_log;

  // Both RAMs, hashed from their memory files by the test itself (WitnessRam).
  SourceOptions opts;
  DestinationContext ctx = DestContext();
  RamDigests ram;
  WitnessRam(opts, ctx, ram);
  Outcome o = Migrate(ctx, "hostb", opts);
  ASSERT_TRUE(o.connect.ok()) << o.connect.ToString();
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  EXPECT_TRUE(o.source.error.ok()) << o.source.error.ToString();
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  EXPECT_EQ(o.source.final_state, SourceState::kCommitted);
  EXPECT_EQ(o.dest.final_state, DestinationState::kCommitted);
  ASSERT_TRUE(dest_vm_);

  // The source QEMU is gone; the destination runs the guest.
  EXPECT_FALSE(source_vm_->Alive());
  source_vm_.reset();
  auto state = dest_vm_->RunState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(*state, "running");
  // The heartbeat continues from where the source left it (not from 0: no reboot).
  const long hb_last_source = LastHeartbeat(source_serial);
  ASSERT_TRUE(WaitFor(
      [&] { return LastHeartbeat(dest_vm_->paths().serial_log) > hb_last_source + 5; }, 20s))
      << "destination serial:\n"
      << Slurp(dest_vm_->paths().serial_log);
  const std::string dest_serial = Slurp(dest_vm_->paths().serial_log);
  static const std::regex first_hb("SOD-HB ([0-9]+)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(dest_serial, m, first_hb));
  EXPECT_GE(std::stol(m[1]), hb_last_source) << "the guest did not restart";
  EXPECT_LE(std::stol(m[1]), hb_last_source + 50) << "the heartbeat continues where it was";
  // The guest's own check of its memory pattern keeps passing at the destination.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Slurp(dest_vm_->paths().serial_log).find("SOD-PATTERN ok") != std::string::npos;
      },
      10s));
  EXPECT_EQ(Slurp(dest_vm_->paths().serial_log).find("BAD"), std::string::npos);

  // One receipt, signed by both, the same on both sides, with the RAM digest checked.
  ASSERT_TRUE(o.source.receipt && o.dest.receipt);
  EXPECT_EQ(o.source.receipt->receipt, o.dest.receipt->receipt);
  const Receipt& r = o.source.receipt->receipt;
  EXPECT_TRUE(r.ram_digest_present);
  // The destination's RAM equals the source's final RAM, and the receipt states that digest.
  ASSERT_TRUE(ram.source && ram.dest);
  EXPECT_EQ(ToHex(*ram.source), ToHex(*ram.dest));
  EXPECT_EQ(ToHex(*ram.source), ToHex(r.ram_digest));
  // The source hashed its RAM while the guest ran, under the kernel's write log of QEMU's
  // mapping, and read at the pause only what was written since: less than all of it. (The
  // digest just compared, of the whole file read by the test, shows that the table was right.)
  EXPECT_EQ(o.source.ram_check, "write log");
  EXPECT_LT(o.source.ram_pages_read_at_pause, (uint64_t{256} << 20) / kRamPageSize / 2)
      << "pages read after the pause";
  // Where the time went, in order, on both hosts ("ram-repaired" only when QEMU missed pages).
  std::vector<std::string> phases;
  for (const auto& [name, ms] : o.source.phases.marks())
    if (name != "ram-repaired") phases.push_back(name);
  EXPECT_EQ(phases, (std::vector<std::string>{"prepared", "streaming", "paused",
                                               "qemu-completed", "stream-eof", "stream-sent",
                                               "switchover-ok", "ram-checked", "commit-sent",
                                               "acknowledged", "source-stopped"}));
  phases.clear();
  for (const auto& [name, ms] : o.dest.phases.marks())
    if (name != "ram-repaired") phases.push_back(name);
  EXPECT_EQ(phases, (std::vector<std::string>{"prepared", "launched", "loading", "switchover-ok",
                                               "commit-received", "stream-loaded", "verified",
                                               "decided", "resumed", "acknowledged"}));
  EXPECT_EQ(r.source_host, "hosta");
  EXPECT_EQ(r.destination_host, "hostb");
  EXPECT_GT(r.stream_bytes, 32u << 20);
  EXPECT_GT(r.wire_bytes, r.stream_bytes);
  EXPECT_GE(r.rounds, 2u);
  EXPECT_TRUE(VerifyReceiptSignature(b_.signer->public_key_der(), r, ReceiptRole::kDestination,
                                     o.source.receipt->destination_signature)
                  .ok());
  EXPECT_TRUE(VerifyReceiptSignature(a_.signer->public_key_der(), r, ReceiptRole::kSource,
                                     o.dest.receipt->source_signature)
                  .ok());
  EXPECT_EQ(b_.ledger.Lookup(r.migration_id), MigrationOutcome::kCommitted);
  EXPECT_GT(o.source.downtime_ms, 0);
  // QEMU switched over under one of the stepped downtime targets (50, 100, 200, 300 ms).
  const uint64_t target = o.source.downtime_target_ms;
  EXPECT_TRUE(target == 50 || target == 100 || target == 200 || target == 300) << target;
  EXPECT_FALSE(progress_.empty());
  EXPECT_EQ(progress_.back().phase, "done");
}

TEST_F(MigrationTest, MigrationLongerThanTheSessionTimeoutCommits) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=8");
  // A 3 s I/O timeout on every channel and a stream throttled to ~12 s: both control directions
  // must carry keepalives, or one side times out.
  session_options_.timeout = 3s;
  SourceOptions slow;
  slow.max_bandwidth = 20u << 20;
  // Throttled pre-copy under TCG sometimes leaves one dirty page unsent by QEMU 7.2 (the RAM
  // digest then refuses the commit, as tests/migration_recovery_test.cc shows); this test is
  // about the keepalive, so it does not compare digests.
  slow.verify_ram = false;
  Outcome o = Migrate(DestContext(), "hostb", slow);
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  EXPECT_GT(o.source.total_s, 6.0) << "the migration must outlast the session timeout";
  ASSERT_TRUE(dest_vm_);
  auto state = dest_vm_->RunState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(*state, "running");
}

TEST_F(MigrationTest, RefusedOfferLeavesTheVmRunningAtTheSource) {
  BootSource("sod.dirty_mb=0");
  DestinationContext ctx = DestContext();
  ctx.admit = [](const OfferMsg&, const VmSpec&, const std::string& peer) {
    return Error(Errc::kRefused, "host " + peer + " may not send VMs here");
  };
  Outcome o = Migrate(ctx);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.error.code(), Errc::kAborted) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("may not send VMs here"), std::string::npos)
      << "the source reports the destination's reason: " << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kRefused);
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationTest, DestinationQemuDyingMidStreamLeavesTheVmAtTheSource) {
  BootSource("sod.dirty_mb=64 sod.dirty_rate=32");
  DestinationContext ctx = DestContext();
  auto launch = ctx.launch_incoming;
  std::thread killer;
  ctx.launch_incoming = [&](const VmSpec& spec, const MigrationId& id) -> Result<std::unique_ptr<Vm>> {
    auto vm = launch(spec, id);
    if (vm.ok()) {
      pid_t pid = (*vm)->pid();
      killer = std::thread([pid] {
        std::this_thread::sleep_for(1500ms);
        ::kill(pid, SIGKILL);
      });
    }
    return vm;
  };
  // Throttled to 32 MiB/s, the 256 MiB guest needs ~8 s: the kill at 1.5 s lands mid-stream.
  SourceOptions slow;
  slow.max_bandwidth = 32u << 20;
  Outcome o = Migrate(ctx, "hostb", slow);
  if (killer.joinable()) killer.join();
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted) << o.source.error.ToString();
  EXPECT_FALSE(o.source.error.ok());
  EXPECT_FALSE(o.dest.error.ok());
  EXPECT_FALSE(progress_.empty()) << "the stream had started";
  ExpectSourceStillRunsAndNothingAtDestination();
}

// The destination answers Prepared before its QEMU starts (PROTOCOL.md, "Prepared, then QEMU"):
// a slow start holds the stream back, nothing is lost, and the RAM arrives whole.
TEST_F(MigrationTest, SlowDestinationQemuStartHoldsTheStreamBack) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=16");
  SourceOptions opts;
  DestinationContext ctx = DestContext();
  RamDigests ram;
  WitnessRam(opts, ctx, ram);
  auto launch = ctx.launch_incoming;
  ctx.launch_incoming = [&](const VmSpec& spec, const MigrationId& id) {
    std::this_thread::sleep_for(1500ms);  // the source streams meanwhile
    return launch(spec, id);
  };
  Outcome o = Migrate(ctx, "hostb", opts);
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  auto mark = [](const PhaseTimes& p, const std::string& name) {
    for (const auto& [n, ms] : p.marks())
      if (n == name) return ms;
    return -1.0;
  };
  EXPECT_GE(mark(o.dest.phases, "launched") - mark(o.dest.phases, "prepared"), 1500.0);
  // The source counts from its session start, the destination from the offer (later): a source
  // mark below a destination mark is also earlier in absolute time.
  EXPECT_LT(mark(o.source.phases, "streaming"), mark(o.dest.phases, "launched"))
      << "the source's QEMU started streaming before the destination's QEMU existed";
  ASSERT_TRUE(ram.source && ram.dest);
  EXPECT_EQ(ToHex(*ram.source), ToHex(*ram.dest));
  ASSERT_TRUE(dest_vm_);
  auto state = dest_vm_->RunState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(*state, "running");
}

TEST_F(MigrationTest, DestinationQemuFailingToStartAfterPreparedLeavesTheVmAtTheSource) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=16");
  DestinationContext ctx = DestContext();
  ctx.launch_incoming = [&](const VmSpec&, const MigrationId&) -> Result<std::unique_ptr<Vm>> {
    std::this_thread::sleep_for(500ms);  // the source streams meanwhile
    return Error(Errc::kIo, "test: the incoming QEMU exited during startup");
  };
  Outcome o = Migrate(ctx);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.error.code(), Errc::kAborted) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("incoming QEMU exited during startup"),
            std::string::npos)
      << "the source reports the destination's reason: " << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kIo) << o.dest.error.ToString();
  bool streamed = false;
  for (const auto& [n, ms] : o.source.phases.marks()) streamed |= n == "streaming";
  EXPECT_TRUE(streamed) << "the stream had started before the destination failed";
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationTest, WrongPeerCertificateIsRefusedBeforeAnyVmByte) {
  BootSource("sod.dirty_mb=0");
  accept_timeout_ = 3s;
  Outcome o = Migrate(DestContext(), /*expect_peer=*/"hostc");
  EXPECT_EQ(o.connect.code(), Errc::kAuth) << o.connect.ToString();
  EXPECT_TRUE(progress_.empty()) << "no migration started";
  ExpectSourceStillRunsAndNothingAtDestination();
}

// The stepped downtime target: the start until QEMU's second pass, then doubled while passes at
// least halve what is left, the limit at once when one did not; never above the limit.
TEST(DowntimeScheduleTest, DoublesWhilePassesShrinkAndCapsAtTheLimit) {
  constexpr uint64_t kMiB = 1 << 20;
  DowntimeSchedule s(50, 300);
  EXPECT_EQ(s.target_ms(), 50u);
  EXPECT_EQ(s.OnPass(1, 1024 * kMiB), 50u);  // the setup sync: everything is left
  EXPECT_EQ(s.OnPass(1, 10 * kMiB), 50u);    // the same pass again: no step
  EXPECT_EQ(s.OnPass(2, 300 * kMiB), 100u);
  EXPECT_EQ(s.OnPass(3, 150 * kMiB), 200u);  // exactly half: still shrinking
  EXPECT_EQ(s.OnPass(4, 20 * kMiB), 300u);   // 400 capped
  EXPECT_EQ(s.OnPass(5, 1 * kMiB), 300u);
  EXPECT_EQ(s.OnPass(UINT64_MAX, 0), 300u);
}

TEST(DowntimeScheduleTest, APassThatDoesNotHalveWhatIsLeftGoesToTheLimit) {
  constexpr uint64_t kMiB = 1 << 20;
  DowntimeSchedule s(50, 300);
  s.OnPass(1, 1024 * kMiB);
  EXPECT_EQ(s.OnPass(2, 260 * kMiB), 100u);
  EXPECT_EQ(s.OnPass(3, 131 * kMiB), 300u);  // the guest dirties about as fast as QEMU sends
  // A first event from a later pass only records where it stands.
  DowntimeSchedule late(50, 300);
  EXPECT_EQ(late.OnPass(3, 100 * kMiB), 50u);
  EXPECT_EQ(late.OnPass(4, 90 * kMiB), 300u);
}

TEST(DowntimeScheduleTest, NoStepsWithoutAStartBelowTheLimit) {
  EXPECT_EQ(DowntimeSchedule(0, 300).target_ms(), 300u);
  EXPECT_EQ(DowntimeSchedule(300, 300).target_ms(), 300u);
  EXPECT_EQ(DowntimeSchedule(500, 300).target_ms(), 300u);
  DowntimeSchedule s(0, 300);
  s.OnPass(1, 1 << 30);
  EXPECT_EQ(s.OnPass(2, 1), 300u);
  // No overflow near the top of the range.
  DowntimeSchedule big(UINT64_MAX / 2 + 1, UINT64_MAX);
  big.OnPass(1, 100);
  EXPECT_EQ(big.OnPass(2, 1), UINT64_MAX);
}

}  // namespace
}  // namespace sod
