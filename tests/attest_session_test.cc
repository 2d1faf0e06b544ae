// Mutual attestation over a real session (TLS 1.3 on 127.0.0.1) between two simulated hosts, each
// with its own swtpm, tpm2-tss ESAPI, provisioned EK/AK, simulated measured boot and runtime
// violation counter (attest/session_attestation.h). Then the attacks the verifier must refuse with
// real TPM quotes: unknown AK, PCR changed after enrollment, violations over policy, a quote
// replayed into another session, a stale nonce, evidence of host X presented by host Y, garbled
// evidence, and a peer that skips attestation.
#include "attest/session_attestation.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>

#include "attest/enrollment.h"
#include "attest/esys_tpm.h"
#include "attest/swtpm.h"
#include "migrate/pki.h"
#include "migrate/session.h"

namespace sod::attest {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct SimHost {
  std::string id;
  std::unique_ptr<SimulatedTpm> swtpm;
  std::unique_ptr<EsysTpm> tpm;
  std::unique_ptr<RuntimeMonitor> monitor;
  std::unique_ptr<HostAttester> attester;
  std::unique_ptr<TlsContext> client, server;
};

std::string Reasons(const std::optional<Verdict>& v) {
  std::string s;
  if (v)
    for (const auto& r : v->reasons) s += r + " | ";
  return s;
}

class AttestSessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("sod-attest-session-test-" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    ASSERT_TRUE(CreateCa((*root_ / "pki").string(), {}).ok());
    for (const char* h : {"hosta", "hostb"})
      ASSERT_TRUE(IssueHostCert((*root_ / "pki").string(), h, (*root_ / "pki").string(), {}).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  void SetUp() override {
    if (::access("/usr/bin/swtpm", X_OK) != 0) GTEST_SKIP() << "no swtpm";
    dir_ = *root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "enrollments");
    for (SimHost* h : {&a_, &b_}) {
      h->id = h == &a_ ? "hosta" : "hostb";
      auto sw = SimulatedTpm::Start((dir_ / h->id / "tpm").string());
      ASSERT_TRUE(sw.ok()) << sw.status().ToString();
      h->swtpm = std::move(*sw);
      auto tpm = EsysTpm::Open(h->swtpm->tcti());
      ASSERT_TRUE(tpm.ok()) << tpm.status().ToString();
      h->tpm = std::move(*tpm);
      ASSERT_TRUE(h->tpm->Provision().ok());
      ASSERT_TRUE(SimulateMeasuredBoot(*h->tpm).ok());
      auto mon = RuntimeMonitor::Open(*h->tpm, dir_ / h->id / "violations");
      ASSERT_TRUE(mon.ok()) << mon.status().ToString();
      h->monitor = std::move(*mon);
      h->attester = std::make_unique<HostAttester>(
          *h->tpm, *h->monitor, HostIdentity{h->id, "tpm-host", "row"});
      TlsConfig c{(*root_ / "pki/ca.crt").string(), (*root_ / "pki" / (h->id + ".crt")).string(),
                  (*root_ / "pki" / (h->id + ".key")).string()};
      h->client = std::move(TlsContext::Create(c, TlsRole::kClient)).value();
      h->server = std::move(TlsContext::Create(c, TlsRole::kServer)).value();
    }
    enrollments_ = std::make_unique<EnrollmentDirectory>(dir_ / "enrollments");
  }

  // The host's enrollment record as an operator would take it: AK, EK, its PCRs now.
  void Enroll(SimHost& h) {
    EnrollmentRecord r;
    r.host_id = h.id;
    r.architecture = "tpm-host";
    r.ak_public = std::move(h.tpm->AkPublic()).value();
    r.ek_public = std::move(h.tpm->EkPublic()).value();
    PcrSelection golden = DefaultQuoteSelection();
    golden.mask &= ~(1u << kViolationPcr);
    PcrValues v = std::move(h.tpm->ReadPcrs(golden)).value();
    auto idx = v.selection.Indices();
    for (size_t i = 0; i < idx.size(); ++i) r.golden_pcrs[idx[i]] = v.values[i];
    r.enrolled_unix_ms = 1;
    Status s = EnrollmentStore::Add(r, (dir_ / "enrollments").string());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // One session hosta (initiator) -> hostb (responder); runs `a` and `b` on the two ends.
  template <typename FA, typename FB>
  void OverSession(FA a, FB b) {
    SessionOptions so;
    so.data_channels = 0;
    so.timeout = 20s;
    auto listener = SessionListener::Listen(*b_.server, "127.0.0.1", 0, so);
    ASSERT_TRUE(listener.ok());
    auto responder = std::async(std::launch::async, [&] {
      auto s = (*listener)->Accept(20s);
      if (!s.ok()) return s.status();
      b(**s);
      return Status::Ok();
    });
    auto s = Session::Connect(*a_.client, "127.0.0.1", (*listener)->port(), "hostb", so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    a(**s);
    (*s)->Shutdown();
    ASSERT_TRUE(responder.get().ok());
  }

  struct Both {
    Status a, b;
  };
  Both Mutual(SessionAttestation& sa, SessionAttestation& sb) {
    Both out;
    OverSession([&](Session& s) { out.a = sa.AttestPeer(s); },
                [&](Session& s) {
                  out.b = sb.AttestPeer(s);
                  if (!out.b.ok() && out.b.code() != Errc::kAborted) s.SendAbort(out.b);
                });
    return out;
  }

  // hosta (initiator) is the source of a migration, hostb (responder) its destination.
  Both Incoming(SessionAttestation& sa, SessionAttestation& sb) {
    Both out;
    OverSession([&](Session& s) { out.a = sa.AttestPeer(s); },
                [&](Session& s) {
                  out.b = sb.AttestIncoming(s);
                  if (!out.b.ok() && out.b.code() != Errc::kAborted) s.SendAbort(out.b);
                });
    return out;
  }

  static fs::path* root_;
  fs::path dir_;
  SimHost a_, b_;
  std::unique_ptr<EnrollmentDirectory> enrollments_;
};
fs::path* AttestSessionTest::root_ = nullptr;

TEST_F(AttestSessionTest, EnrolledHostsAttestEachOther) {
  Enroll(a_);
  Enroll(b_);
  int verdicts = 0;
  SessionAttestation sa(*a_.attester, *enrollments_, {}, [&](const Verdict&) { ++verdicts; });
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Both r = Mutual(sa, sb);
  ASSERT_TRUE(r.a.ok()) << r.a.ToString();
  ASSERT_TRUE(r.b.ok()) << r.b.ToString();
  auto va = sa.LastVerdict("hostb");
  auto vb = sb.LastVerdict("hosta");
  ASSERT_TRUE(va && vb);
  EXPECT_TRUE(va->accepted) << Reasons(va);
  EXPECT_TRUE(vb->accepted) << Reasons(vb);
  EXPECT_EQ(va->host_id, "hostb");
  EXPECT_EQ(va->architecture, "tpm-host");
  EXPECT_EQ(va->violation_count, 0u);
  EXPECT_EQ(verdicts, 1);
  // The quote covered every PCR the policy requires.
  EXPECT_EQ(va->pcrs_checked, DefaultQuoteSelection().Indices());
}

TEST_F(AttestSessionTest, HostUnenrolledWhileRunningIsRefusedFromTheNextSession) {
  Enroll(a_);
  Enroll(b_);
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  ASSERT_TRUE(Mutual(sa, sb).a.ok());
  // The operator removes hostb's record; the running verifier notices without a restart.
  ASSERT_TRUE(EnrollmentStore::Remove("hostb", dir_ / "enrollments").ok());
  Both r = Mutual(sa, sb);
  EXPECT_EQ(r.a.code(), Errc::kAttestation) << r.a.ToString();
  EXPECT_NE(Reasons(sa.LastVerdict("hostb")).find("not enrolled"), std::string::npos)
      << Reasons(sa.LastVerdict("hostb"));
}

TEST_F(AttestSessionTest, UnenrolledHostIsRefusedAndTheRefusalReachesIt) {
  Enroll(a_);  // hostb is unknown
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Both r = Mutual(sa, sb);
  EXPECT_EQ(r.a.code(), Errc::kAttestation) << r.a.ToString();
  EXPECT_NE(r.a.message().find("hostb"), std::string::npos) << r.a.ToString();
  // hostb accepted hosta, then heard why it was refused.
  EXPECT_FALSE(r.b.ok());
  auto va = sa.LastVerdict("hostb");
  ASSERT_TRUE(va);
  EXPECT_FALSE(va->accepted);
}

TEST_F(AttestSessionTest, PcrChangedAfterEnrollmentIsRefused) {
  Enroll(a_);
  Enroll(b_);
  // hostb is compromised after enrollment: something new is measured into PCR 7.
  PcrDigest evil{};
  evil.fill(0xee);
  ASSERT_TRUE(b_.tpm->ExtendPcr(7, evil).ok());
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Both r = Mutual(sa, sb);
  EXPECT_EQ(r.a.code(), Errc::kAttestation);
  auto va = sa.LastVerdict("hostb");
  ASSERT_TRUE(va);
  EXPECT_FALSE(va->accepted);
  EXPECT_NE(Reasons(va).find("PCR 7"), std::string::npos) << Reasons(va);
  // The compromised host still trusts the healthy one: only the refusal stops the session.
  auto vb = sb.LastVerdict("hosta");
  ASSERT_TRUE(vb);
  EXPECT_TRUE(vb->accepted) << Reasons(vb);
}

TEST_F(AttestSessionTest, RuntimeViolationsOverThePolicyAreRefused) {
  Enroll(a_);
  Enroll(b_);
  ASSERT_EQ(b_.monitor->RecordViolation().value(), 1u);
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  {
    SessionAttestation strict(*a_.attester, *enrollments_, {});  // max_violations = 0
    Both r = Mutual(strict, sb);
    EXPECT_EQ(r.a.code(), Errc::kAttestation);
    EXPECT_NE(Reasons(strict.LastVerdict("hostb")).find("violation"), std::string::npos)
        << Reasons(strict.LastVerdict("hostb"));
  }
  AttestationPolicy lenient;
  lenient.max_violations = 1;
  SessionAttestation sa(*a_.attester, *enrollments_, lenient);
  Both r = Mutual(sa, sb);
  EXPECT_TRUE(r.a.ok()) << r.a.ToString();
  EXPECT_EQ(sa.LastVerdict("hostb")->violation_count, 1u);
}

TEST_F(AttestSessionTest, ViolationCountHiddenFromTheVerifierIsCaught) {
  Enroll(a_);
  Enroll(b_);
  // hostb's TPM recorded a violation, but its (lying) software reports none: the violation PCR
  // in the quote gives it away.
  ASSERT_TRUE(b_.tpm->ExtendPcr(kViolationPcr, ViolationEventDigest(1)).ok());
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Both r = Mutual(sa, sb);
  EXPECT_EQ(r.a.code(), Errc::kAttestation);
  EXPECT_NE(Reasons(sa.LastVerdict("hostb")).find("14"), std::string::npos)
      << Reasons(sa.LastVerdict("hostb"));
}

TEST_F(AttestSessionTest, QuoteReplayedIntoAnotherSessionOrForAnotherNonceIsRefused) {
  Enroll(a_);
  Enroll(b_);
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  Bytes nonce(kAttestNonceSize, 0x11);
  Bytes old_evidence;
  // Session 1: hostb answers nonce N; hosta accepts it there.
  OverSession(
      [&](Session& s) {
        SessionAttestation sb(*b_.attester, *enrollments_, {});
        auto e = sb.EvidenceFor(s, nonce);  // what hostb would send in session 1
        ASSERT_TRUE(e.ok()) << e.status().ToString();
        old_evidence = *e;
        Status ok = sa.VerifyPeerEvidence(s, nonce, old_evidence);
        EXPECT_TRUE(ok.ok()) << ok.ToString();
        // Same session, another nonce: stale.
        Bytes other(kAttestNonceSize, 0x22);
        Status stale = sa.VerifyPeerEvidence(s, other, old_evidence);
        EXPECT_EQ(stale.code(), Errc::kAttestation);
        EXPECT_NE(stale.message().find("bound"), std::string::npos) << stale.ToString();
      },
      [](Session&) {});
  ASSERT_FALSE(old_evidence.empty());
  // Session 2: the same evidence, same nonce, replayed: the session binding differs.
  OverSession(
      [&](Session& s) {
        Status replay = sa.VerifyPeerEvidence(s, nonce, old_evidence);
        EXPECT_EQ(replay.code(), Errc::kAttestation);
        EXPECT_NE(replay.message().find("bound"), std::string::npos) << replay.ToString();
      },
      [](Session&) {});
}

TEST_F(AttestSessionTest, EvidenceOfOneHostPresentedByAnotherIsRefused) {
  Enroll(a_);
  Enroll(b_);
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  Bytes nonce(kAttestNonceSize, 0x33);
  OverSession(
      [&](Session& s) {
        // The TLS peer is hostb. (1) hostb claims to be hosta, quoting with its own AK.
        HostAttester liar(*b_.tpm, *b_.monitor, HostIdentity{"hosta", "tpm-host", "row"});
        auto binding = SessionBinding(s);
        ASSERT_TRUE(binding.ok());
        auto e1 = liar.Produce(nonce, *binding);
        ASSERT_TRUE(e1.ok());
        Status r1 = sa.VerifyPeerEvidence(s, nonce, EncodeEvidence(*e1));
        EXPECT_EQ(r1.code(), Errc::kAttestation);
        // (2) hostb relays genuine evidence of hosta (hosta's TPM, this very session).
        auto e2 = a_.attester->Produce(nonce, *binding);
        ASSERT_TRUE(e2.ok());
        Status r2 = sa.VerifyPeerEvidence(s, nonce, EncodeEvidence(*e2));
        EXPECT_EQ(r2.code(), Errc::kAttestation);
        EXPECT_NE(r2.message().find("hostb"), std::string::npos) << r2.ToString();
      },
      [](Session&) {});
}

TEST_F(AttestSessionTest, GarbledEvidenceIsRefused) {
  Enroll(a_);
  Enroll(b_);
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Bytes nonce(kAttestNonceSize, 0x44);
  OverSession(
      [&](Session& s) {
        Bytes e = std::move(sb.EvidenceFor(s, nonce)).value();
        ASSERT_TRUE(sa.VerifyPeerEvidence(s, nonce, e).ok());
        // Every 7th byte flipped in turn, and truncations: never accepted.
        for (size_t i = 0; i < e.size(); i += 7) {
          Bytes bad = e;
          bad[i] ^= 0x01;
          EXPECT_EQ(sa.VerifyPeerEvidence(s, nonce, bad).code(), Errc::kAttestation)
              << "flipped byte " << i << " of " << e.size();
        }
        for (size_t n : {size_t{0}, size_t{1}, e.size() / 2, e.size() - 1})
          EXPECT_EQ(sa.VerifyPeerEvidence(s, nonce, ByteSpan(e).first(n)).code(),
                    Errc::kAttestation);
      },
      [](Session&) {});
}

TEST_F(AttestSessionTest, PeerThatSkipsAttestationIsRefused) {
  Enroll(a_);
  Enroll(b_);
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Status b_result;
  OverSession(
      [&](Session& s) {
        // hosta does not attest: it goes straight to an offer.
        ASSERT_TRUE(s.SendControl(OfferMsg{{}, "vm", "{}", 1, false, 0}).ok());
        auto reply = s.ReceiveControl();  // hostb's challenge, then its abort
        while (reply.ok()) reply = s.ReceiveControl();
        EXPECT_EQ(reply.status().code(), Errc::kAborted) << reply.status().ToString();
      },
      [&](Session& s) {
        b_result = sb.AttestPeer(s);
        if (!b_result.ok()) s.SendAbort(b_result);
      });
  EXPECT_EQ(b_result.code(), Errc::kAttestation);
  EXPECT_NE(b_result.message().find("offer"), std::string::npos) << b_result.ToString();
}

// A quote made by a real peer tool: tpm2_quote with hostb's AK. sod's verifier accepts it exactly
// when the policy says so: right key, this nonce and session, the required PCRs.
TEST_F(AttestSessionTest, QuotesMadeByTpm2ToolsAreJudgedByThePolicy) {
  if (std::system("command -v tpm2_quote >/dev/null 2>&1") != 0) GTEST_SKIP() << "no tpm2-tools";
  Enroll(b_);
  const Bytes nonce(kAttestNonceSize, 0x5c);
  const Bytes binding(32, 0xb1);
  const std::string T = " -T " + b_.swtpm->tcti();
  const std::string d = (dir_ / "tools").string();
  fs::create_directories(d);
  // The claims go first: the qualifying data covers them.
  auto claims = [](Evidence& e) {
    e.host_id = "hostb";
    e.architecture = "tpm-host";
    e.capability_row = "row";
    e.timestamp_unix_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::system_clock::now().time_since_epoch())
            .count());
  };
  auto quote = [&](const std::string& pcrs, ByteSpan qualifying, const std::string& key,
                   Evidence& e) {
    const std::string cmd = "tpm2_quote -c " + key + " -l " + pcrs + " -q " + ToHex(qualifying) +
                            " -g sha256 -m " + d + "/q.msg -s " + d + "/q.sig" + T +
                            " >" + d + "/q.log 2>&1";
    if (std::system(cmd.c_str()) != 0) return false;
    auto slurp = [](const std::string& f) {
      std::ifstream in(f, std::ios::binary);
      return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    };
    e.quote_attest = slurp(d + "/q.msg");
    e.quote_signature = slurp(d + "/q.sig");
    return true;
  };
  auto verify = [&](Evidence e, PcrSelection sel) {
    e.pcrs = std::move(b_.tpm->ReadPcrs(sel)).value();
    Expectation x{"hostb", nonce, binding, e.timestamp_unix_ms};
    Verdict v;
    Status loaded = enrollments_->With(
        [&](const EnrollmentStore& store) { v = Verify(e, x, store, AttestationPolicy{}); });
    EXPECT_TRUE(loaded.ok()) << loaded.ToString();
    return v;
  };
  Evidence e;
  claims(e);
  const PcrDigest qd = QualifyingData(nonce, binding, ClaimsDigest(e));

  // The policy's selection, this nonce and session, the enrolled AK: accepted.
  ASSERT_TRUE(quote("sha256:0,1,2,3,4,5,6,7,14", qd, "0x81010002", e))
      << std::ifstream(d + "/q.log").rdbuf();
  Verdict ok = verify(e, DefaultQuoteSelection());
  EXPECT_TRUE(ok.accepted) << ok.Summary();

  // Another nonce: refused.
  const PcrDigest other_qd =
      QualifyingData(Bytes(kAttestNonceSize, 0x5d), binding, ClaimsDigest(e));
  ASSERT_TRUE(quote("sha256:0,1,2,3,4,5,6,7,14", other_qd, "0x81010002", e));
  Verdict stale = verify(e, DefaultQuoteSelection());
  EXPECT_FALSE(stale.accepted) << stale.Summary();
  std::cout << "  " << stale.Summary() << "\n";

  // The violation PCR left out of the quote: refused.
  ASSERT_TRUE(quote("sha256:0,1,2,3,4,5,6,7", qd, "0x81010002", e));
  PcrSelection short_sel = DefaultQuoteSelection();
  short_sel.mask &= ~(1u << kViolationPcr);
  Verdict partial = verify(e, short_sel);
  EXPECT_FALSE(partial.accepted) << partial.Summary();
  std::cout << "  " << partial.Summary() << "\n";

  // A restricted signing key of the same TPM that was never enrolled: refused.
  const std::string other = d + "/other.ctx";
  ASSERT_EQ(std::system(("tpm2_createprimary -C o -G ecc:ecdsa-sha256:null -a "
                         "'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign'"
                         " -c " + other + T + " >/dev/null 2>&1")
                            .c_str()),
            0);
  ASSERT_TRUE(quote("sha256:0,1,2,3,4,5,6,7,14", qd, other, e));
  std::system(("tpm2_flushcontext -t" + T + " >/dev/null 2>&1").c_str());
  Verdict foreign = verify(e, DefaultQuoteSelection());
  EXPECT_FALSE(foreign.accepted) << foreign.Summary();
  std::cout << "  " << foreign.Summary() << "\n";
}


// --- Evacuation (migrate/PROTOCOL.md, section 8a) ------------------------------------------------

AttestationPolicy Evacuating() {
  AttestationPolicy p;
  p.accept_evacuations = true;
  return p;
}

TEST_F(AttestSessionTest, DestinationAdmitsAnAuthenticSourceWhoseViolationsTripped) {
  Enroll(a_);
  Enroll(b_);
  ASSERT_EQ(a_.monitor->RecordViolation().value(), 1u);  // the source's trust drops
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, Evacuating());
  Both r = Incoming(sa, sb);
  EXPECT_TRUE(r.a.ok()) << r.a.ToString();
  EXPECT_TRUE(r.b.ok()) << r.b.ToString();
  auto v = sb.LastVerdict("hosta");
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->accepted);  // still not trusted: only admitted as a source
  EXPECT_TRUE(v->evacuation);
  EXPECT_TRUE(v->Authentic());
  EXPECT_TRUE(v->violations_over_policy);
  ASSERT_EQ(v->trust_drops.size(), 1u);
  EXPECT_NE(v->trust_drops[0].find("violation"), std::string::npos);
  EXPECT_TRUE(v->ToJson()["evacuation"].get<bool>());
}

TEST_F(AttestSessionTest, DestinationAdmitsAnAuthenticSourceWhosePcrsChanged) {
  Enroll(a_);
  Enroll(b_);
  PcrDigest evil{};
  evil.fill(0x66);
  ASSERT_TRUE(a_.tpm->ExtendPcr(4, evil).ok());
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, Evacuating());
  Both r = Incoming(sa, sb);
  EXPECT_TRUE(r.b.ok()) << r.b.ToString();
  auto v = sb.LastVerdict("hosta");
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->evacuation);
  EXPECT_FALSE(v->violations_over_policy);
  EXPECT_NE(Reasons(v).find("PCR 4"), std::string::npos) << Reasons(v);
}

TEST_F(AttestSessionTest, WithoutEvacuationsTheDegradedSourceIsRefused) {
  Enroll(a_);
  Enroll(b_);
  ASSERT_EQ(a_.monitor->RecordViolation().value(), 1u);
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, {});
  Both r = Incoming(sa, sb);
  EXPECT_EQ(r.b.code(), Errc::kAttestation) << r.b.ToString();
  EXPECT_FALSE(r.a.ok());
  EXPECT_FALSE(sb.LastVerdict("hosta")->evacuation);
}

TEST_F(AttestSessionTest, EvacuationNeverAdmitsAnUnauthenticSource) {
  Enroll(b_);  // hosta is not enrolled: no AK to check its quote with
  SessionAttestation sa(*a_.attester, *enrollments_, {});
  SessionAttestation sb(*b_.attester, *enrollments_, Evacuating());
  Both r = Incoming(sa, sb);
  EXPECT_EQ(r.b.code(), Errc::kAttestation) << r.b.ToString();
  auto v = sb.LastVerdict("hosta");
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->Authentic());
  EXPECT_FALSE(v->evacuation);
}

TEST_F(AttestSessionTest, EvacuatingSourceStillRefusesADegradedDestination) {
  Enroll(a_);
  Enroll(b_);
  ASSERT_EQ(a_.monitor->RecordViolation().value(), 1u);
  ASSERT_EQ(b_.monitor->RecordViolation().value(), 1u);  // the destination dropped too
  SessionAttestation sa(*a_.attester, *enrollments_, Evacuating());
  SessionAttestation sb(*b_.attester, *enrollments_, Evacuating());
  Both r = Incoming(sa, sb);
  EXPECT_EQ(r.a.code(), Errc::kAttestation) << r.a.ToString();  // never a VM to such a host
  EXPECT_FALSE(sa.LastVerdict("hostb")->evacuation);
}

}  // namespace
}  // namespace sod::attest
