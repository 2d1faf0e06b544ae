// The hook through which the migration engine has the two hosts of a session attest to each other
// (migrate/PROTOCOL.md, "Attestation"). attest/session_attestation.h implements it with TPM 2.0
// quotes bound to the session; the engine only calls it at the right moments:
//
//   every session, both roles, before anything else   AttestPeer
//   switchover check (source VM paused)                destination: EvidenceFor(nonce)
//                                                      source: VerifyPeerEvidence(nonce, evidence)
//
// Without a PeerAttestation the engine runs unattested (mutual TLS only).
#pragma once

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

class Session;

// Implementations must be safe to use from several sessions' threads at once.
class PeerAttestation {
 public:
  virtual ~PeerAttestation() = default;
  // Mutual attestation on a fresh session: OK only when the peer's evidence verified and the peer
  // accepted ours. Errors: kAttestation (the peer's evidence was refused; the caller tells the
  // peer with an Abort), kAborted (the peer refused ours), or a transport error.
  virtual Status AttestPeer(Session& session) = 0;
  // The destination's side of a fresh session (migrate/PROTOCOL.md, section 8a): as AttestPeer,
  // but an implementation may admit a source whose trust dropped while its evidence is still
  // authentic, so that its VMs can be evacuated. The source side always uses AttestPeer.
  virtual Status AttestIncoming(Session& session) { return AttestPeer(session); }
  // Destination side of the switchover check: fresh evidence answering `nonce`, bound to
  // `session`.
  virtual Result<Bytes> EvidenceFor(Session& session, ByteSpan nonce) = 0;
  // Source side of the switchover check: verifies the destination's answer to our `nonce`.
  // kAttestation when it does not verify.
  virtual Status VerifyPeerEvidence(Session& session, ByteSpan nonce, ByteSpan evidence) = 0;
};

}  // namespace sod
