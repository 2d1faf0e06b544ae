// The fixture of the attested migration tests (tests/attest_migration_test.cc,
// tests/vtpm_migration_test.cc): MigrationFixture's two hosts, each with its own simulated TPM
// (swtpm, provisioned, simulated measured boot), runtime monitor, attester and session
// attestation over one shared enrollment directory. Header-only, tests only.
#pragma once

#include <atomic>
#include <mutex>
#include <vector>

#include "attest/enrollment.h"
#include "attest/esys_tpm.h"
#include "attest/session_attestation.h"
#include "attest/swtpm.h"
#include "migrate/peer_attestation.h"
#include "migration_fixture.h"

namespace sod {

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

}  // namespace sod
