// Mutual attestation of the two hosts of a session (migrate/PROTOCOL.md, "Attestation"):
//
//   both sides at once:  AttestChallenge(nonce_self)  ----->
//                        <-----  AttestChallenge(nonce_peer)
//   binding = TLS exporter "EXPORTER-sod-attest" (32 bytes) of this session
//   evidence_self quotes with QualifyingData(nonce_peer, binding, ClaimsDigest(evidence_self))
//                        Evidence(evidence_self)  ----->
//                        <-----  Evidence(evidence_peer)
//   Verify(evidence_peer, {peer host id from TLS, nonce_self, binding, now})
//                        AttestOk  ----->   (or Abort(attestation, reasons))
//                        <-----  AttestOk
//
// A quote therefore proves its TPM signed it for this TLS session and this nonce: it cannot be
// replayed into another session nor answered ahead of time. Peers see only the evidence (quote,
// quoted PCR values, violation count, architecture and row), never logs.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "attest/enrollment.h"
#include "attest/host_attester.h"
#include "attest/verifier.h"
#include "migrate/peer_attestation.h"

namespace sod::attest {

inline constexpr std::string_view kAttestExporterLabel = "EXPORTER-sod-attest";
inline constexpr size_t kAttestBindingSize = 32;

// Enrollment records from a directory, reloaded when the directory or any file in it changes
// (name, size or modification time: operators add, edit and remove records while sodd runs).
// Thread-safe.
class EnrollmentDirectory {
 public:
  explicit EnrollmentDirectory(std::filesystem::path dir) : dir_(std::move(dir)) {}
  const std::filesystem::path& dir() const { return dir_; }
  // Calls f(store) with the current records; a directory that does not load is an error (no
  // record is trusted from a half-read directory).
  Status With(const std::function<void(const EnrollmentStore&)>& f);

 private:
  std::filesystem::path dir_;
  std::mutex mu_;
  std::string loaded_signature_;  // of the directory as last loaded
  bool loaded_ = false;
  EnrollmentStore store_;
};

class SessionAttestation : public PeerAttestation {
 public:
  // `attester` and `enrollments` must outlive this object. `on_verdict` (may be empty) is called
  // with every verdict about a peer, accepted or not (the audit log, `sodctl attest`).
  SessionAttestation(HostAttester& attester, EnrollmentDirectory& enrollments,
                     AttestationPolicy policy,
                     std::function<void(const Verdict&)> on_verdict = nullptr)
      : attester_(attester),
        enrollments_(enrollments),
        policy_(policy),
        on_verdict_(std::move(on_verdict)) {}

  Status AttestPeer(Session& session) override;
  // AttestPeer, except that with policy.accept_evacuations a peer whose verdict is refused but
  // Authentic() (only trust drops: changed golden PCRs, violations over the policy) is admitted;
  // its verdict is then recorded and reported with `evacuation` set.
  Status AttestIncoming(Session& session) override;
  Result<Bytes> EvidenceFor(Session& session, ByteSpan nonce) override;
  Status VerifyPeerEvidence(Session& session, ByteSpan nonce, ByteSpan evidence) override;

  // The verdict of the last AttestPeer/VerifyPeerEvidence about `host_id`, if any.
  std::optional<Verdict> LastVerdict(const std::string& host_id) const;
  // The verdict of the last AttestIncoming about `host_id` (this host as the destination), if any.
  std::optional<Verdict> LastIncomingVerdict(const std::string& host_id) const;

 private:
  // Decodes and verifies; records and reports the verdict. With `tolerate_drop`, an authentic
  // verdict with only trust drops is marked `evacuation` and counts as accepted for the caller.
  Verdict Check(Session& session, ByteSpan nonce, ByteSpan binding, ByteSpan evidence,
                bool tolerate_drop = false);
  Status Mutual(Session& session, bool incoming);

  HostAttester& attester_;
  EnrollmentDirectory& enrollments_;
  AttestationPolicy policy_;
  std::function<void(const Verdict&)> on_verdict_;
  mutable std::mutex mu_;
  std::map<std::string, Verdict> last_;
  std::map<std::string, Verdict> last_incoming_;
};

// The session's attestation binding: the TLS exporter value both ends share.
Result<Bytes> SessionBinding(const Session& session);

}  // namespace sod::attest
