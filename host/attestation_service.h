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

#include <memory>
#include <string>

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
  std::string architecture = "tpm-host";
  std::string capability_row;
  attest::AttestationPolicy policy;
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

 private:
  AttestationService(HostDaemon& d, HostAttestationConfig c);
  Status Start();
  Result<nlohmann::json> Enrollment();
  Result<nlohmann::json> LocalEvidence();
  Result<nlohmann::json> Violation(const nlohmann::json& request);
  Result<nlohmann::json> Attest(const nlohmann::json& request);
  void Audit(std::string_view kind, const nlohmann::json& data);

  HostDaemon& d_;
  HostAttestationConfig config_;
  std::unique_ptr<attest::SimulatedTpm> simulated_;
  std::unique_ptr<attest::Tpm> tpm_;
  std::unique_ptr<attest::RuntimeMonitor> monitor_;
  std::unique_ptr<attest::HostAttester> attester_;
  std::unique_ptr<attest::EnrollmentDirectory> enrollments_;
  std::unique_ptr<attest::SessionAttestation> sessions_;
};

}  // namespace sod
