// Attested migrations of a real QEMU guest between two simulated hosts, each with its own swtpm
// (attest/session_attestation.h plugged into MigrateOut / ServeSession): the migration commits
// when both hosts attest; a host that is not enrolled, or whose PCRs changed, is refused before
// any VM byte moves; and a destination whose trust drops while the stream runs is refused at the
// switchover check (fresh quote) — the VM keeps running at the source and never runs at the
// destination.
#include <atomic>

#include "migrate/peer_attestation.h"

#include "attested_migration_fixture.h"

namespace sod {
namespace {

using namespace std::chrono_literals;
using attest::Verdict;

TEST_F(AttestedMigrationTest, BothHostsAttestAndTheVmMoves) {
  Enroll(a_, ta_);
  Enroll(b_, tb_);
  BootSource();
  Outcome o = AttestedMigrate();
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  ASSERT_TRUE(dest_vm_);
  EXPECT_EQ(dest_vm_->RunState().value(), "running");
  // hosta verified hostb twice (session start, switchover check); hostb verified hosta once.
  {
    std::lock_guard l(ta_.mu);
    ASSERT_EQ(ta_.verdicts.size(), 2u);
    for (const auto& v : ta_.verdicts) EXPECT_TRUE(v.accepted) << v.Summary();
  }
  {
    std::lock_guard l(tb_.mu);
    ASSERT_EQ(tb_.verdicts.size(), 1u);
    EXPECT_TRUE(tb_.verdicts[0].accepted) << tb_.verdicts[0].Summary();
    EXPECT_EQ(tb_.verdicts[0].host_id, "hosta");
  }
}

TEST_F(AttestedMigrationTest, UnenrolledDestinationIsRefusedBeforeAnyVmByte) {
  Enroll(a_, ta_);  // hostb is unknown to the cluster
  BootSource();
  Outcome o = AttestedMigrate();
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.error.code(), Errc::kAttestation) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("not enrolled"), std::string::npos)
      << o.source.error.ToString();
  EXPECT_EQ(o.source.stream_bytes, 0u);
  EXPECT_EQ(launched_.load(), 0) << "no destination QEMU for an unattested destination";
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(AttestedMigrationTest, CompromisedSourceIsRefusedByTheDestination) {
  Enroll(a_, ta_);
  Enroll(b_, tb_);
  attest::PcrDigest evil{};
  evil.fill(0x66);
  ASSERT_TRUE(ta_.tpm->ExtendPcr(4, evil).ok());  // something new ran in hosta's boot chain
  BootSource();
  Outcome o = AttestedMigrate();
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.dest.error.code(), Errc::kAttestation) << o.dest.error.ToString();
  EXPECT_NE(VerdictReasons(tb_).find("PCR 4"), std::string::npos) << VerdictReasons(tb_);
  // The source hears the destination's reason.
  EXPECT_NE(o.source.error.message().find("PCR 4"), std::string::npos)
      << o.source.error.ToString();
  EXPECT_EQ(launched_.load(), 0);
  ExpectSourceStillRunsAndNothingAtDestination();
}

// hostb's trust drops after it passed the attestation at session start, while the stream runs:
// its monitor records a runtime violation just before hostb answers the switchover check (the
// latest moment the drop can happen and still be caught).
class TrustDropsBeforeSwitchover : public PeerAttestation {
 public:
  TrustDropsBeforeSwitchover(PeerAttestation& inner, attest::RuntimeMonitor& monitor)
      : inner_(inner), monitor_(monitor) {}
  Status AttestPeer(Session& s) override { return inner_.AttestPeer(s); }
  Result<Bytes> EvidenceFor(Session& s, ByteSpan nonce) override {
    SOD_RETURN_IF_ERROR(monitor_.RecordViolation().status());
    dropped = true;
    return inner_.EvidenceFor(s, nonce);
  }
  Status VerifyPeerEvidence(Session& s, ByteSpan nonce, ByteSpan e) override {
    return inner_.VerifyPeerEvidence(s, nonce, e);
  }
  std::atomic<bool> dropped{false};

 private:
  PeerAttestation& inner_;
  attest::RuntimeMonitor& monitor_;
};

TEST_F(AttestedMigrationTest, DestinationWhoseTrustDropsMidStreamIsRefusedAtSwitchover) {
  Enroll(a_, ta_);
  Enroll(b_, tb_);
  BootSource();
  TrustDropsBeforeSwitchover b_side(*tb_.sessions, *tb_.monitor);
  DestinationContext ctx = DestContext();
  ctx.attestation = &b_side;
  SourceOptions opts;
  opts.attestation = ta_.sessions.get();
  Outcome o = Migrate(ctx, "hostb", opts);
  ASSERT_TRUE(b_side.dropped.load());
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted) << o.source.error.ToString();
  EXPECT_EQ(o.source.error.code(), Errc::kAttestation) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("switchover"), std::string::npos)
      << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("violation"), std::string::npos)
      << o.source.error.ToString();
  {
    std::lock_guard l(dest_files_mu_);
    EXPECT_EQ(dest_memory_files_.size(), 1u) << "the refusal came after the stream had started";
  }
  EXPECT_FALSE(o.dest.vm) << "the destination never resumed";
  ExpectSourceStillRunsAndNothingAtDestination();
  // The first verdict about hostb (session start) accepted it; the second refused it.
  std::lock_guard l(ta_.mu);
  ASSERT_EQ(ta_.verdicts.size(), 2u);
  EXPECT_TRUE(ta_.verdicts[0].accepted);
  EXPECT_FALSE(ta_.verdicts[1].accepted);
  EXPECT_EQ(ta_.verdicts[1].violation_count, 1u);
}

}  // namespace
}  // namespace sod
