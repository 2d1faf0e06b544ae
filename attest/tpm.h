// The host's TPM 2.0, behind a narrow interface (attest/README.md).
//
// EsysTpm (attest/esys_tpm.h) is the real one: tpm2-tss ESAPI over a TCTI (`device:/dev/tpmrm0`
// on real hosts, `swtpm:host=127.0.0.1,port=N` for a simulated host, attest/swtpm.h). Unit tests
// use fakes that sign with an OpenSSL key.
//
// All byte strings below are TPM wire structures, big-endian, exactly as the TPM marshals them
// (attest/tpm_wire.h parses them): what a remote verifier and tpm2-tools see.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/bytes.h"
#include "base/secret.h"
#include "base/status.h"

namespace sod::attest {

// Only the SHA-256 bank is used. PCRs 0..23 as a bitmap (bit i = PCR i).
struct PcrSelection {
  uint32_t mask = 0;
  bool Has(uint32_t pcr) const { return pcr < 24 && (mask >> pcr) & 1u; }
  std::vector<uint32_t> Indices() const;  // ascending
  bool operator==(const PcrSelection&) const = default;
};
using PcrDigest = std::array<uint8_t, 32>;  // a SHA-256 PCR value

// PCR values for a selection, in ascending PCR order.
struct PcrValues {
  PcrSelection selection;
  std::vector<PcrDigest> values;  // values.size() == selection.Indices().size()
  bool operator==(const PcrValues&) const = default;
};

struct TpmQuote {
  Bytes attest;     // TPMS_ATTEST (the TPM2B_ATTEST's contents), type TPM_ST_ATTEST_QUOTE
  Bytes signature;  // TPMT_SIGNATURE by the AK
  PcrValues pcrs;   // read in the same TPM session right after the quote; a verifier checks
                    // them against the quote's PCR digest
};

// Thread-safety: implementations serialize calls internally; any thread may call.
class Tpm {
 public:
  virtual ~Tpm() = default;
  // The attestation key's public area: TPMT_PUBLIC (the TPM2B_PUBLIC's contents). A restricted
  // ECC P-256 ECDSA-SHA256 signing key that never leaves the TPM (fixedTPM, fixedParent).
  virtual Result<Bytes> AkPublic() = 0;
  // The endorsement key's public area (TPMT_PUBLIC), TCG default ECC P-256 EK template.
  virtual Result<Bytes> EkPublic() = 0;
  virtual Result<PcrValues> ReadPcrs(PcrSelection selection) = 0;
  // TPM2_Quote with the AK over `selection` (SHA-256 bank), qualifying data = `qualifying`
  // (at most 32 bytes here; callers pass a SHA-256).
  virtual Result<TpmQuote> Quote(ByteSpan qualifying, PcrSelection selection) = 0;
  // TPM2_PCR_Extend of the SHA-256 bank.
  virtual Status ExtendPcr(uint32_t pcr, const PcrDigest& digest) = 0;

  // Sealing: a small secret (the daemon's vTPM master key) kept outside the TPM as a blob that
  // only this TPM can unseal, and only while the PCRs of `pcrs` (SHA-256 bank) hold the values
  // they had when Seal ran. A host whose boot measurements changed, or another host, cannot
  // unseal it. The blob format is in attest/README.md ("Sealing"); it holds no plaintext and
  // is no secret itself, but any client of this TPM can unseal it while the PCRs hold (no
  // protection against the running host). Implementations without sealing (test fakes) keep
  // these defaults, which fail with kUnsupported.
  //
  // Seal: `secret` is 1..kMaxSealedSecret bytes and `pcrs` names at least one PCR of 0..23,
  // otherwise kInvalidArgument before the TPM is touched. The policy covers the PCR values the
  // TPM has when Seal runs: seal after the measurements the secret should depend on.
  static constexpr size_t kMaxSealedSecret = 128;
  virtual Result<Bytes> Seal(ByteSpan secret, PcrSelection pcrs) {
    (void)secret;
    (void)pcrs;
    return Error(Errc::kUnsupported, "this TPM does not implement sealing");
  }
  // Unseal: `blob` is hostile input. A blob that does not decode (magic, version, lengths,
  // trailing bytes, a sealed object that is not of the kind Seal makes) is kMalformed, before
  // the TPM is touched. A PCR of the blob's selection that changed since sealing is kRefused
  // ("host PCRs changed since sealing"), and nothing is unsealed. A blob the TPM refuses to load
  // (sealed by another TPM, owner hierarchy cleared since, bytes altered) is kCrypto.
  virtual Result<SecretBytes> Unseal(ByteSpan blob) {
    (void)blob;
    return Error(Errc::kUnsupported, "this TPM does not implement sealing");
  }
};

}  // namespace sod::attest
