// Evidence: what a host presents about itself to a peer (migrate/PROTOCOL.md, "Attestation"):
// who it is, its architecture and capability row, its runtime violation count, and a TPM quote
// over its PCRs bound to the peer's nonce and the TLS session (QualifyingData). The verifier
// (attest/verifier.h) checks it against the host's enrollment record.
//
// Wire layout of Evidence (little-endian, every field always present, in this order):
//
//   size      field
//   2         version            kEvidenceVersion; any other value is refused (kUnsupported)
//   2 + n     host_id            u16 length, a valid host id (migrate/pki.h, ValidateHostId)
//   2 + n     architecture       u16 length, 1..kMaxEvidenceArchitecture of [A-Za-z0-9._-]
//   2 + n     capability_row     u16 length, 0..kMaxEvidenceCapabilityRow bytes of UTF-8
//   8         timestamp_unix_ms  when the host made the evidence (Unix time, ms)
//   4         violation_count    runtime violations the host counted
//   4         pcr_mask           the SHA-256 PCRs reported, bit i = PCR i; bits 24..31 zero
//   2         pcr_count          number of PCR values that follow; must be popcount(pcr_mask)
//   32 * n    pcr_values         one SHA-256 value per selected PCR, ascending PCR order
//   4 + n     quote_attest       u32 length, 1..kMaxQuoteAttest bytes: TPMS_ATTEST (tpm_wire.h)
//   4 + n     quote_signature    u32 length, 1..kMaxQuoteSignature bytes: TPMT_SIGNATURE
//
// Decoding refuses inputs above kMaxEvidenceSize before reading anything, every over-long field
// before copying it, a count that does not match the selection, and trailing bytes; it does not
// look inside the quote (the verifier does). Encoding is canonical: DecodeEvidence(b) succeeds
// only when EncodeEvidence(*DecodeEvidence(b)) == b.
//
// Thread-safety: stateless functions, safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "attest/tpm.h"
#include "base/bytes.h"
#include "base/status.h"
#include "base/utf8.h"

namespace sod::attest {

inline constexpr uint16_t kEvidenceVersion = 1;
inline constexpr size_t kMaxEvidenceHostId = 64;
inline constexpr size_t kMaxEvidenceArchitecture = 64;
inline constexpr size_t kMaxEvidenceCapabilityRow = 1024;
inline constexpr size_t kMaxQuoteAttest = 1024;
inline constexpr size_t kMaxQuoteSignature = 1024;
inline constexpr size_t kMaxEvidencePcrs = 24;
// The largest encoded evidence (every field at its maximum): 4002 bytes, within the control
// messages' kMaxEvidence (16 KiB).
inline constexpr size_t kMaxEvidenceSize =
    2 + (2 + kMaxEvidenceHostId) + (2 + kMaxEvidenceArchitecture) +
    (2 + kMaxEvidenceCapabilityRow) + 8 + 4 + 4 + 2 + 32 * kMaxEvidencePcrs +
    (4 + kMaxQuoteAttest) + (4 + kMaxQuoteSignature);
static_assert(kMaxEvidenceSize == 4002, "evidence layout changed: update PROTOCOL.md");

struct Evidence {
  std::string host_id;         // <= kMaxEvidenceHostId
  std::string architecture;    // a row name of the capability table (e.g. "tpm-host")
  std::string capability_row;  // opaque here (the policy defines it)
  uint64_t timestamp_unix_ms = 0;
  uint32_t violation_count = 0;  // runtime violations the host counted
  PcrValues pcrs;                // SHA-256 bank, the quoted PCRs
  Bytes quote_attest;            // TPMS_ATTEST
  Bytes quote_signature;         // TPMT_SIGNATURE
  bool operator==(const Evidence&) const = default;
};

// Encodes `e` in the layout above. Strings and blobs longer than their maximum are cut to it,
// PCR bits above 23 dropped and at most 24 values written; what does not decode back to exactly
// `e` (ValidateEvidence says) is refused by every peer.
Bytes EncodeEvidence(const Evidence& e);
// Decodes one whole evidence. kTooLarge (input or a field above its maximum), kUnsupported
// (version), kMalformed (truncated, bad host id or architecture, bad UTF-8, PCR count mismatch,
// trailing bytes); the message names the field.
Result<Evidence> DecodeEvidence(ByteSpan in);
// OK when EncodeEvidence(e) decodes back to exactly `e`; kInvalidArgument naming the field
// otherwise.
Status ValidateEvidence(const Evidence& e);

// A row name of the capability table: 1..kMaxEvidenceArchitecture characters of [A-Za-z0-9._-].
// kInvalidArgument naming the problem.
Status ValidateArchitecture(std::string_view architecture);
using sod::IsWellFormedUtf8;  // base/utf8.h

// What the evidence states besides the quote and the PCR values (which the quote's PCR digest
// covers): SHA-256("sod-claims-v1" || u16le len || host_id || u16le len || architecture ||
// u16le len || capability_row || u64le timestamp_unix_ms || u32le violation_count).
PcrDigest ClaimsDigest(const Evidence& e);

// The TPM2_Quote qualifying data (extraData) for a peer's nonce, the session binding (the TLS
// exporter value) and the evidence's claims:
//   SHA-256("sod-attest-v1" || u8 len || nonce || u8 len || binding || claims[32]).
// So the TPM's signature covers every byte of the evidence, and the evidence answers exactly one
// nonce in one session. Precondition: nonce and binding at most 255 bytes (a longer one is cut to
// 255 bytes; the verifier refuses such expectations before it gets here).
PcrDigest QualifyingData(ByteSpan peer_nonce, ByteSpan session_binding, const PcrDigest& claims);

// Runtime violations: the n-th violation (n = 1, 2, ...) extends kViolationPcr with
// ViolationEventDigest(n) = SHA-256("sod-runtime-violation" || u64le n).
inline constexpr uint32_t kViolationPcr = 14;
PcrDigest ViolationEventDigest(uint64_t n);
// The value of kViolationPcr after `count` violations, starting from all zero (a TPM reset):
// PCR_n = SHA-256(PCR_{n-1} || ViolationEventDigest(n)). Costs 2 * count SHA-256 computations;
// callers bound `count` first (the verifier does).
PcrDigest ViolationPcrValue(uint32_t count);

// PCRs 0-7 (firmware, boot loader, boot configuration, secure boot policy) and kViolationPcr.
PcrSelection DefaultQuoteSelection();

}  // namespace sod::attest
