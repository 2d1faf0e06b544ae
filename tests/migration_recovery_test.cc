// The exactly-once branches after the commit (migrate/PROTOCOL.md, section 11), with real QEMU
// guests: a commit the destination refuses (the source resumes), a page QEMU never re-sent (the
// source refuses to commit), an acknowledgement that never
// arrives (the source stays paused, in doubt, and recovery finds the commit), and a recovery
// query that arrives while the destination is still verifying the commit (the fence: the
// destination may no longer commit, the source resumes, and the VM runs in exactly one place).
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <future>
#include <optional>
#include <thread>

#include "migrate/ram_write_log.h"
#include "migration_fixture.h"

namespace sod {
namespace {

using namespace std::chrono_literals;

class MigrationRecoveryTest : public MigrationFixture {
 protected:
  // Runs a second session to host B (a fresh listener) for recovery, served by `ctx`.
  Result<SourceOutcome> Recover(DestinationContext ctx, const MigrationId& id,
                                DestinationReport* served) {
    auto listener = SessionListener::Listen(*b_.server, "127.0.0.1", 0, session_options_);
    if (!listener.ok()) return listener.status();
    auto dest = std::async(std::launch::async, [&]() {
      auto s = (*listener)->Accept(20s);
      DestinationReport r;
      if (!s.ok()) {
        r.error = s.status();
        return r;
      }
      return ServeSession(**s, ctx);
    });
    auto session = Session::Connect(*a_.client, "127.0.0.1", (*listener)->port(), "hostb",
                                    session_options_);
    Result<SourceOutcome> out = session.ok() ? RecoverInDoubt(**session, *source_vm_, id)
                                             : Result<SourceOutcome>(session.status());
    *served = dest.get();
    return out;
  }

  void ExpectSourcePausedNotRunning() {
    auto state = source_vm_->RunState();
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    EXPECT_NE(*state, "running") << "an in-doubt source must not run";
  }
};

TEST_F(MigrationRecoveryTest, CommitRefusedByTheDestinationResumesTheSource) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=8");
  SourceOptions opts;
  // The receipt claims one more stream byte than was sent: the destination must refuse.
  opts.mutate_receipt_for_testing = [](Receipt& r) { r.stream_bytes += 1; };
  Outcome o = Migrate(DestContext(), "hostb", opts);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.final_state, SourceState::kAborted) << "via commit-refused, not in-doubt";
  EXPECT_NE(o.source.error.message().find("stream bytes"), std::string::npos)
      << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kIntegrity) << o.dest.error.ToString();
  EXPECT_EQ(b_.ledger.Lookup(o.source.id), MigrationOutcome::kAborted);
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationRecoveryTest, RamDigestMismatchIsRefused) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=8");
  SourceOptions opts;
  opts.mutate_receipt_for_testing = [](Receipt& r) { r.ram_digest[0] ^= 1; };
  Outcome o = Migrate(DestContext(), "hostb", opts);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_NE(o.dest.error.message().find("guest RAM differs"), std::string::npos)
      << o.dest.error.ToString();
  ExpectSourceStillRunsAndNothingAtDestination();
}

// QEMU missing a dirty page, reproduced: once QEMU has paused the guest, bytes of its RAM
// change behind QEMU's dirty tracking, so QEMU never re-sends those pages. The pages are in the
// guest's first MiB, which Linux reserves and leaves alone (changing them does the guest no
// harm), and QEMU sends them early in its first pass.
//  - kThroughQemu: through QEMU's own mapping of its RAM (/proc/PID/mem), like a guest store
//    QEMU's TCG dirty tracking failed to see; the RAM check's write log sees it.
//  - kThroughFile: write(2) to the memory file, past QEMU's page tables; only a check that reads
//    all the RAM at the pause (ram_write_log off) sees that.
enum class Behind { kThroughQemu, kThroughFile };
void ChangeSixPagesBehindQemu(const Vm& vm, Behind how) {
  uint64_t at = 0;
  std::string target = vm.paths().memory_file;
  if (how == Behind::kThroughQemu) {
    Result<uint64_t> base = FindFileMapping(vm.pid(), target, uint64_t{vm.spec().memory_mb} << 20);
    ASSERT_TRUE(base.ok()) << base.status().ToString();
    at = *base;
    target = "/proc/" + std::to_string(vm.pid()) + "/mem";
  }
  const int fd = ::open(target.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << target << ": " << std::strerror(errno);
  for (uint64_t k = 0; k < 6; ++k) {
    const off_t where = static_cast<off_t>(at + 0x20000 + k * 0x10000 + 17);
    char c = 0;
    ASSERT_EQ(::pread(fd, &c, 1, where), 1) << std::strerror(errno);
    c ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &c, 1, where), 1) << std::strerror(errno);
  }
  ::close(fd);
}

// The source finds the six pages, sends them itself, the destination writes them into the
// paused VM's RAM before it verifies: the VM moves with the RAM the source had, changes included.
// Both ways of reading the paused RAM: the write log, and all of it.
class RamRepairTest : public MigrationRecoveryTest, public ::testing::WithParamInterface<Behind> {};

TEST_P(RamRepairTest, PagesQemuNeverResentAreRepairedAndTheVmMoves) {
  BootSource("sod.dirty_mb=0");
  SourceOptions opts;
  opts.ram_write_log = GetParam() == Behind::kThroughQemu;
  opts.at_pause_for_testing = [&] { ChangeSixPagesBehindQemu(*source_vm_, GetParam()); };
  DestinationContext ctx = DestContext();
  RamDigests ram;
  WitnessRam(opts, ctx, ram);
  Outcome o = Migrate(ctx, "hostb", opts);
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  EXPECT_EQ(o.source.ram_pages_repaired, 6u);
  EXPECT_EQ(o.dest.ram_pages_repaired, 6u);
  if (GetParam() == Behind::kThroughQemu) {
    EXPECT_EQ(o.source.ram_check, "write log");
    EXPECT_GE(o.source.ram_pages_read_at_pause, 6u);
  } else {
    EXPECT_EQ(o.source.ram_check, "whole RAM at the pause: no write log asked for");
    EXPECT_EQ(o.source.ram_pages_read_at_pause, (uint64_t{256} << 20) / kRamPageSize);
  }
  ASSERT_TRUE(ram.source && ram.dest);
  EXPECT_EQ(ToHex(*ram.source), ToHex(*ram.dest)) << "the destination has the source's RAM";
  ASSERT_TRUE(dest_vm_);
  EXPECT_EQ(*dest_vm_->RunState(), "running");
}

INSTANTIATE_TEST_SUITE_P(Behind, RamRepairTest,
                         ::testing::Values(Behind::kThroughQemu, Behind::kThroughFile),
                         [](const auto& info) {
                           return info.param == Behind::kThroughQemu ? "ThroughQemusMapping"
                                                                      : "ThroughTheFile";
                         });

// Beyond the repair limit the source refuses to commit: the VM keeps running at the source,
// with the changed bytes (its RAM is the truth), and nothing runs at hostb.
TEST_F(MigrationRecoveryTest, MorePagesThanTheRepairLimitAbortAndTheVmStays) {
  BootSource("sod.dirty_mb=0");
  SourceOptions opts;
  opts.max_ram_repair_pages = 5;
  opts.at_pause_for_testing = [&] { ChangeSixPagesBehindQemu(*source_vm_, Behind::kThroughQemu); };
  Outcome o = Migrate(DestContext(), "hostb", opts);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.error.code(), Errc::kIntegrity) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("6 page(s) stale, 0 never sent, in block mem0 at "
                                          "0x20000, 0x30000, 0x40000, 0x50000, ..."),
            std::string::npos)
      << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("more than 5 pages to repair"), std::string::npos)
      << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kAborted) << o.dest.error.ToString();
  EXPECT_EQ(b_.ledger.Lookup(o.source.id), MigrationOutcome::kAborted);
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationRecoveryTest, LostAcknowledgementIsInDoubtAndRecoveryFindsTheCommit) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=8");
  DestinationContext ctx = DestContext();
  // The destination resumes the VM, then the link dies before the acknowledgement goes out.
  ctx.after_resume_for_testing = [](Session& s) { s.Shutdown(); };
  Outcome o = Migrate(ctx);
  ASSERT_EQ(o.source.outcome, SourceOutcome::kInDoubt) << o.source.error.ToString();
  EXPECT_EQ(o.source.final_state, SourceState::kInDoubt);
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  ASSERT_TRUE(dest_vm_);
  ExpectSourcePausedNotRunning();

  DestinationContext rctx = DestContext();
  rctx.vm_running = [&](const MigrationId&) { return dest_vm_ && dest_vm_->Alive(); };
  DestinationReport served;
  auto r = Recover(rctx, o.source.id, &served);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, SourceOutcome::kCommitted);
  EXPECT_EQ(served.kind, DestinationReport::Kind::kOutcomeQuery);
  EXPECT_FALSE(source_vm_->Alive()) << "the source copy was quit";
  auto state = dest_vm_->RunState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(*state, "running") << "exactly one copy runs: at the destination";
}

TEST_F(MigrationRecoveryTest, RecoveryFencesACommitStillBeingVerified) {
  BootSource("sod.dirty_mb=32 sod.dirty_rate=8");
  DestinationContext ctx = DestContext();
  SourceOptions opts;
  opts.commit_timeout = 2s;  // the source soon gives up waiting: in doubt
  Result<SourceOutcome> recovered = Error(Errc::kInternal, "recovery did not run");
  DestinationReport served;
  // The destination has verified the commit but not decided yet. Meanwhile the source gave up
  // (in doubt) and asks for the outcome over a new session: the query decides "aborted".
  ctx.before_decide_for_testing = [&](const MigrationId& id) {
    std::this_thread::sleep_for(6s);  // the source's commit_timeout passes
    DestinationContext rctx = DestContext();
    recovered = Recover(rctx, id, &served);
  };
  Outcome o = Migrate(ctx, "hostb", opts);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kInDoubt) << o.source.error.ToString();
  ASSERT_TRUE(recovered.ok()) << recovered.status().ToString();
  EXPECT_EQ(*recovered, SourceOutcome::kAborted) << "the fence decided aborted; source resumed";
  EXPECT_EQ(served.kind, DestinationReport::Kind::kOutcomeQuery);
  // The held commit then finds the migration decided and does not resume.
  EXPECT_EQ(o.dest.final_state, DestinationState::kAborted);
  EXPECT_NE(o.dest.error.message().find("already decided aborted"), std::string::npos)
      << o.dest.error.ToString();
  EXPECT_EQ(b_.ledger.Lookup(o.source.id), MigrationOutcome::kAborted);
  ExpectSourceStillRunsAndNothingAtDestination();
}

}  // namespace
}  // namespace sod
