// Attested migrations of a real QEMU guest between two simulated hosts, each with its own swtpm
// (attest/session_attestation.h plugged into MigrateOut / ServeSession): the migration commits
// when both hosts attest; a host that is not enrolled, or whose PCRs changed, is refused before
// any VM byte moves; and a destination whose trust drops while the stream runs is refused at the
// switchover check (fresh quote) — the VM keeps running at the source and never runs at the
// destination.
#include <atomic>

#include "migrate/peer_attestation.h"

#include "attest/enrollment.h"
#include "attest/esys_tpm.h"
#include "attest/session_attestation.h"
#include "attest/swtpm.h"
#include "migration_fixture.h"

namespace sod {
namespace {

using namespace std::chrono_literals;
using attest::Verdict;

struct Attesting {
  std::unique_ptr<attest::SimulatedTpm> swtpm;
  std::unique_ptr<attest::EsysTpm> tpm;
  std::unique_ptr<attest::RuntimeMonitor> monitor;
  std::unique_ptr<attest::HostAttester> attester;
  std::unique_ptr<attest::SessionAttestation> sessions;
  std::vector<Verdict> verdicts;
  std::mutex mu;
};

class AttestedMigrationTest : public MigrationFixture {
 protected:
  void SetUp() override {
    MigrationFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (::access("/usr/bin/swtpm", X_OK) != 0) GTEST_SKIP() << "no swtpm";
    enrollments_dir_ = root_ / "enrollments";
    std::filesystem::create_directories(enrollments_dir_);
    enrollments_ = std::make_unique<attest::EnrollmentDirectory>(enrollments_dir_);
    for (auto [host, att] :
         std::initializer_list<std::pair<Host*, Attesting*>>{{&a_, &ta_}, {&b_, &tb_}}) {
      auto sw = attest::SimulatedTpm::Start((host->dir / "tpm").string());
      ASSERT_TRUE(sw.ok()) << sw.status().ToString();
      att->swtpm = std::move(*sw);
      att->tpm = std::move(attest::EsysTpm::Open(att->swtpm->tcti())).value();
      ASSERT_TRUE(att->tpm->Provision().ok());
      ASSERT_TRUE(attest::SimulateMeasuredBoot(*att->tpm).ok());
      att->monitor =
          std::move(attest::RuntimeMonitor::Open(*att->tpm, host->dir / "violations")).value();
      att->attester = std::make_unique<attest::HostAttester>(
          *att->tpm, *att->monitor, attest::HostIdentity{host->id, "tpm-host", "row"});
      att->sessions = std::make_unique<attest::SessionAttestation>(
          *att->attester, *enrollments_, attest::AttestationPolicy{},
          [att = att](const Verdict& v) {
            std::lock_guard l(att->mu);
            att->verdicts.push_back(v);
          });
    }
  }

  void Enroll(const Host& host, Attesting& att) {
    attest::EnrollmentRecord r;
    r.host_id = host.id;
    r.architecture = "tpm-host";
    r.ak_public = std::move(att.tpm->AkPublic()).value();
    r.ek_public = std::move(att.tpm->EkPublic()).value();
    attest::PcrSelection golden = attest::DefaultQuoteSelection();
    golden.mask &= ~(1u << attest::kViolationPcr);
    attest::PcrValues v = std::move(att.tpm->ReadPcrs(golden)).value();
    auto idx = v.selection.Indices();
    for (size_t i = 0; i < idx.size(); ++i) r.golden_pcrs[idx[i]] = v.values[i];
    r.enrolled_unix_ms = 1;
    ASSERT_TRUE(attest::EnrollmentStore::Add(r, enrollments_dir_).ok());
  }

  // A migration with attestation on both ends; `launched` counts destination QEMUs started.
  Outcome AttestedMigrate(SourceOptions opts = {}) {
    DestinationContext ctx = DestContext();
    auto launch = ctx.launch_incoming;
    ctx.launch_incoming = [this, launch](const VmSpec& s, const MigrationId& id) {
      ++launched_;
      return launch(s, id);
    };
    ctx.attestation = tb_.sessions.get();
    opts.attestation = ta_.sessions.get();
    return Migrate(ctx, "hostb", opts);
  }

  std::string VerdictReasons(Attesting& att) {
    std::lock_guard l(att.mu);
    std::string s;
    for (const auto& v : att.verdicts)
      for (const auto& r : v.reasons) s += r + " | ";
    return s;
  }

  Attesting ta_, tb_;
  std::filesystem::path enrollments_dir_;
  std::unique_ptr<attest::EnrollmentDirectory> enrollments_;
  std::atomic<int> launched_{0};
};

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
