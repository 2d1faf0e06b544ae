// AttestationService: this host's side of attestation inside sodd (attest/README.md).
//
//   TPM:          --tpm TCTI (a real TPM, e.g. device:/dev/tpmrm0) or --simulated-tpm (sodd runs
//                 a swtpm with its state in <state dir>/tpm and replays a simulated measured boot
//                 into its PCRs at every start, like a host booting). Provisioned at start: EK and
//                 a restricted attestation key (AK), persisted in the TPM.
//   enrollment:   peers are trusted through records in the enrollment directory (--enrollments),
//                 reloaded when it changes; `sodctl host enrollment` prints this host's record for
//                 an operator to review and add with `sodctl host enroll`.
//   sessions:     peer_attestation() plugs into the migration engine: both hosts attest before
//                 the offer, and the destination again at the switchover check.
//   admin ops:    "host.enrollment" (this host's record), "host.evidence" (local evidence
//                 summary), "host.violation" {reason} (counts a runtime violation, extends the
//                 violation PCR), "attest" {to, connect?, port?} (attests with a peer now and
//                 returns the verdict about it).
//   audit:        every verdict about a peer, and every violation, goes to the host's event sink.
//
// Thread-safety: ops and sessions run concurrently; the parts below are thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "attest/host_attester.h"
#include "attest/session_attestation.h"
#include "attest/tpm.h"
#include "attest/verifier.h"
#include "host/host_daemon.h"

namespace sod::attest {
class SimulatedTpm;
}

namespace sod {

struct HostAttestationConfig {
  enum class Tpm { kNone, kDevice, kSimulated };
  Tpm tpm = Tpm::kNone;
  std::string tcti;             // kDevice: a tpm2-tss TCTI config ("device:/dev/tpmrm0")
  std::string enrollments_dir;  // required unless kNone
  std::string architecture = "tpm";  // the shipped Table III row of a plain TPM host
  std::string capability_row;
  attest::AttestationPolicy policy;
};

// What the trust monitor learns about one host in one sample (host/policy_agent.h).
struct TrustSample {
  bool reachable = true;         // a session could be made (peers)
  bool attested_ok = false;      // evidence authentic and every golden PCR as enrolled
  uint32_t violations = 0;       // the reported (TPM-backed) violation count
  uint32_t max_violations = 0;   // this host's policy
  std::vector<std::string> reasons;  // why not trusted (empty when trusted)
  std::optional<attest::Verdict> verdict;
};

class AttestationService {
 public:
  // `daemon` must outlive the service. kNone: nullptr is not returned; the service answers the
  // ops with "attestation is off" and peer_attestation() is null.
  static Result<std::unique_ptr<AttestationService>> Create(HostDaemon& daemon,
                                                            HostAttestationConfig config);
  ~AttestationService();
  // Registers the admin ops. Before daemon.Start().
  void Install();
  // Null when attestation is off.
  PeerAttestation* peer_attestation() { return sessions_.get(); }
  // This host's TPM; null when attestation is off.
  attest::Tpm* tpm() { return tpm_.get(); }
  nlohmann::json Info() const;

  // ---- for the trust monitor (host/policy_agent.h); all need attestation on ----
  // This host checked against its own enrollment record, if the enrollment directory has one
  // (fresh evidence verified as a peer would: golden PCRs, violation PCR, violations vs policy);
  // without a record only the violation count is judged.
  Result<TrustSample> CheckSelf();
  // A fresh mutual attestation session with `peer` (what the "attest" op does): its verdict.
  // A transport failure is a sample with reachable = false.
  TrustSample ProbePeer(const std::string& peer, const std::string& connect, uint16_t port);
  // The architecture `host` is enrolled with, or nullopt (not enrolled, directory unreadable).
  std::optional<std::string> EnrolledArchitecture(const std::string& host);
  uint32_t violations() const;
  // The last verdict about `host` (any session), if any.
  std::optional<attest::Verdict> LastVerdict(const std::string& host) const {
    return sessions_ ? sessions_->LastVerdict(host) : std::nullopt;
  }
  // The last verdict about `host` as the source of a session to this host, if any.
  std::optional<attest::Verdict> LastIncomingVerdict(const std::string& host) const {
    return sessions_ ? sessions_->LastIncomingVerdict(host) : std::nullopt;
  }
  uint32_t max_violations() const { return config_.policy.max_violations; }
  const std::string& architecture() const { return config_.architecture; }

 private:
  AttestationService(HostDaemon& d, HostAttestationConfig c);
  Status Start();
  Result<nlohmann::json> Enrollment();
  Result<nlohmann::json> LocalEvidence();
  Result<nlohmann::json> Violation(const nlohmann::json& request);
  Result<nlohmann::json> Attest(const nlohmann::json& request);
  void Audit(std::string_view kind, const nlohmann::json& data);
  // Audits a verdict unless it repeats the last one audited about that host within a minute
  // (the trust monitor attests with every peer every interval).
  void AuditVerdict(const attest::Verdict& v);
  struct AttestOutcome {
    Status status;
    std::optional<attest::Verdict> verdict;
  };
  Result<AttestOutcome> AttestWith(const std::string& to, const std::string& connect,
                                   uint16_t port);

  HostDaemon& d_;
  HostAttestationConfig config_;
  std::unique_ptr<attest::SimulatedTpm> simulated_;
  std::unique_ptr<attest::Tpm> tpm_;
  std::unique_ptr<attest::RuntimeMonitor> monitor_;
  std::unique_ptr<attest::HostAttester> attester_;
  std::unique_ptr<attest::EnrollmentDirectory> enrollments_;
  std::unique_ptr<attest::SessionAttestation> sessions_;
  std::mutex audit_mu_;
  std::map<std::string, std::pair<std::string, std::chrono::steady_clock::time_point>>
      last_audited_;  // host -> (verdict key, when), guarded by audit_mu_
};

}  // namespace sod
