// The verifier: decides whether a peer's evidence (attest/evidence.h) is trustworthy, for this
// session, against the peer's enrollment record (attest/enrollment.h) and a local policy
// (migrate/PROTOCOL.md, "Attestation").
//
// Verify checks, in this order, and adds one reason per failed check (all reasons are collected;
// only checks that depend on something that already failed are skipped, e.g. nothing is checked
// against the AK of a host that is not enrolled):
//   1. the expectation is usable (a nonce, both nonce and binding at most 255 bytes)
//   2. the evidence names the peer the TLS certificate authenticated
//   3. the peer is enrolled ("unknown host"); its enrolled AK parses and is an attestation key
//      (restricted, sign, fixedTPM, fixedParent: tpm_wire.h, CheckAttestationKey); the evidence
//      claims the architecture the peer is enrolled with
//   4. the quote (TPMS_ATTEST) parses: magic, type quote, SHA-256 bank
//   5. qualifiedSigner is the enrolled AK's Qualified Name ("unknown AK"): the AK as a primary key
//      of the endorsement or owner hierarchy, or as a child of the enrolled EK (tpm_wire.h)
//   6. extraData == QualifyingData(expectation.nonce, expectation.session_binding,
//      ClaimsDigest(evidence)): the quote
//      answers our nonce in this TLS session ("not bound to this session/nonce")
//   7. the signature verifies with the enrolled AK over the TPMS_ATTEST bytes
//   8. the quote selects the PCRs the evidence reports, and at least policy.required
//   9. pcrDigest == SHA-256 of the reported PCR values in ascending order
//  10. every golden PCR of the enrollment equals the reported value ("PCR 7 is ...")
//  11. PCR kViolationPcr == ViolationPcrValue(violation_count): the count is what the TPM saw
//  12. violation_count <= policy.max_violations
//  13. |timestamp - now| <= policy.max_clock_skew
// The evidence's host id, architecture, capability row and timestamp are claims of the host's
// software: they are checked where they can be (2, 13) and reported, not proven by the TPM.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "attest/enrollment.h"
#include "attest/evidence.h"
#include "attest/tpm.h"
#include "base/bytes.h"

namespace sod::attest {

// The most violations a verifier replays into PCR 14 (check 11): evidence claiming more is
// refused without computing the chain, so a peer cannot make a verifier hash for long.
inline constexpr uint32_t kMaxVerifiableViolations = 1u << 16;

struct AttestationPolicy {
  uint32_t max_violations = 0;
  // Evacuation (migrate/PROTOCOL.md, section 8a): as the destination of a session
  // (PeerAttestation::AttestIncoming), accept a source whose evidence is authentic but reports a
  // trust drop (Verdict::Authentic): its VMs may leave it. Never affects AttestPeer (a host never
  // sends a VM to, nor relies on, a host it does not fully trust).
  bool accept_evacuations = false;
  std::chrono::milliseconds max_clock_skew{120000};
  PcrSelection required = DefaultQuoteSelection();
};

struct Expectation {
  std::string peer_host_id;  // from the TLS certificate
  Bytes nonce;               // ours, sent to the peer (1..255 bytes)
  Bytes session_binding;     // TLS exporter value (at most 255 bytes)
  uint64_t now_unix_ms = 0;
};

struct Verdict {
  bool accepted = false;
  std::vector<std::string> reasons;  // why refused; empty iff accepted
  // What the evidence claims (host_id: the expected peer, whose evidence this is). Strings are
  // copied as they came; ToJson renders them JSON-safe.
  std::string host_id;
  std::string architecture;
  std::string capability_row;
  uint32_t violation_count = 0;
  uint64_t timestamp_unix_ms = 0;
  // From the quote's clockInfo (0 when the quote does not parse).
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  std::vector<uint32_t> pcrs_checked;  // the quoted PCRs (ascending) when the quote parsed
  // The reasons (also in `reasons`) that are a trust drop of an authentic host -- check 10 (a
  // golden PCR changed) and check 12 (more violations than the policy allows) -- rather than a
  // failure of identity, signature, binding to this session and nonce, or freshness.
  std::vector<std::string> trust_drops;
  bool violations_over_policy = false;  // check 12 failed
  // Refused, but admitted as the source of an incoming migration (AttestIncoming with
  // AttestationPolicy::accept_evacuations).
  bool evacuation = false;

  // Every failed check is a trust drop: the evidence is the enrolled host's own, for this
  // session, fresh. True for an accepted verdict.
  bool Authentic() const { return reasons.size() == trust_drops.size(); }

  // "hostb: accepted (tpm-host, 0 violations, PCRs 0,1,2,3,4,5,6,7,14)" or
  // "hostb: refused: reason; reason".
  std::string Summary() const;
  // {"accepted", "reasons", "host_id", "architecture", "capability_row", "violation_count",
  //  "timestamp_unix_ms", "reset_count", "restart_count", "pcrs_checked", "trust_drops",
  //  "authentic", "evacuation"}; strings that are not
  // well-formed UTF-8 are replaced by "<invalid UTF-8: hex>", so dump() never throws.
  nlohmann::json ToJson() const;
};

// Never throws; any evidence gives a verdict. `store` is only read during the call.
Verdict Verify(const Evidence& evidence, const Expectation& expectation,
               const EnrollmentStore& store, const AttestationPolicy& policy);

}  // namespace sod::attest
