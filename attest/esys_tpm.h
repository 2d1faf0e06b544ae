// EsysTpm: the host's real TPM 2.0 through tpm2-tss ESAPI (attest/tpm.h).
//
// The TPM is reached through a TCTI configuration string as Tss2_TctiLdr_Initialize takes it:
// `device:/dev/tpmrm0` (a kernel resource manager), `swtpm:host=127.0.0.1,port=N` (a swtpm
// socket, attest/swtpm.h), `mssim:...`.
//
// Connections: every call opens its own TCTI and ESYS context and closes both before it returns
// (a Quote and its PCR reads share one). Between calls this object holds no connection, so other
// TPM clients (tpm2-tools, a second EsysTpm) can use the same TPM; that matters for swtpm, whose
// TCP server serves one client at a time and queues the others.
//
// Keys (created by Provision, then only used):
//   EK  at EsysTpmOptions::ek_handle (0x81010001): the TCG default ECC NIST P-256 endorsement key
//       (EK Credential Profile template L-2: restricted decryption, AES-128-CFB, PolicySecret
//       (TPM_RH_ENDORSEMENT) auth policy, 32 zero bytes as unique x and y), a primary of the
//       endorsement hierarchy.
//   AK  at EsysTpmOptions::ak_handle (0x81010002): restricted ECC P-256 ECDSA-SHA256 signing key,
//       fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign, empty
//       auth, also a primary of the endorsement hierarchy (see esys_tpm.cc for why).
//   SRK (sealing only; never persisted): the TCG-style ECC NIST P-256 storage primary key of the
//       owner hierarchy (restricted decryption, AES-128-CFB, fixedTPM | fixedParent |
//       sensitiveDataOrigin | userWithAuth | noDA, empty auth, empty unique: the key
//       `tpm2_createprimary -C o -G ecc` makes with noDA added). Seal and Unseal create it as a
//       transient primary in each call; derived from the owner seed, it is the same key every time
//       until the owner hierarchy is cleared.
// Transient objects and sessions are always flushed before a call returns: without a resource
// manager a TPM has only about 3 transient slots.
//
// Sealing (Tpm::Seal/Unseal, blob format in attest/README.md): the secret is the data of a
// keyedhash object, child of the SRK, fixedTPM | fixedParent | adminWithPolicy, userWithAuth
// clear, authPolicy = TPM2_PolicyPCR over the SHA-256 PCRs of the selection as they are when
// Seal runs (computed by the TPM in a trial session). Unseal loads it under the SRK and unseals
// it through a policy session with the same TPM2_PolicyPCR. On the way to and from the TPM the
// secret is encrypted (parameter encryption, AES-128-CFB, in a session salted with the SRK), so
// it does not cross the TPM bus or the swtpm socket in the clear. Our own copies are wiped;
// the plaintext copies ESAPI makes while it encrypts and decrypts parameters (its command and
// response buffers, its stack) are beyond our reach and freed unwiped with the ESYS context at
// the end of the call.
//
// Errors: a TCTI or transport failure (TPM gone, connection refused, garbled response) is kIo;
// a TCTI timeout is kTimeout; a TPM command refused by the TPM, or TPM output that does not
// check (a quote over other data than asked), is kCrypto, except an unseal refused because the
// PCR policy no longer holds, which is kRefused; a sealed blob that does not decode is
// kMalformed; a key that was never provisioned is kNotFound; a persistent handle that holds
// some other kind of key is kState; bad arguments are kInvalidArgument; other TSS failures are
// kInternal. Messages name the command and carry the Tss2_RC_Decode text and the hex return
// code. Nothing here asserts on TPM output.
//
// Signals: a TPM that vanishes mid-call could make a socket TCTI write to a closed socket;
// SIGPIPE is blocked in the calling thread for the length of a call and a SIGPIPE raised
// meanwhile is discarded, so callers need no process-wide signal setup.
//
// Thread-safety: thread-safe; calls are serialized by an internal mutex. The object is not
// copyable or movable and owns nothing outside itself (no TPM resource outlives a call).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "attest/tpm.h"
#include "base/bytes.h"
#include "base/secret.h"
#include "base/status.h"

namespace sod::attest {

struct EsysTpmOptions {
  // Persistent handles of the keys (owner range 0x81000000..0x817FFFFF). 0x81010001 also is
  // where TCG provisioning guidance puts an RSA EK: on a real TPM provisioned that way, choose
  // other handles, or Provision refuses with kState.
  uint32_t ek_handle = 0x81010001;
  uint32_t ak_handle = 0x81010002;
  // Given to Esys_SetTimeout: how long to wait for one TPM response before the call fails with
  // kTimeout, where the TCTI implements response timeouts. The swtpm TCTI of tpm2-tss 3.2 does
  // not (its socket reads block, also during TCTI initialization): a swtpm that is alive but
  // stuck (e.g. SIGSTOPped) blocks the call, and through the mutex every call after it. A swtpm
  // that died fails at once with kIo (connection refused).
  int32_t command_timeout_ms = 30000;
};

class EsysTpm : public Tpm {
 public:
  // Checks that the TCTI loads and that a TPM answers on it (one TPM2_GetCapability), then
  // closes the connection again. Errors: kIo (TCTI cannot load or connect, no answer),
  // kInvalidArgument (a persistent handle outside 0x81000000..0x81FFFFFF), see above.
  static Result<std::unique_ptr<EsysTpm>> Open(std::string tcti, EsysTpmOptions options = {});

  EsysTpm(const EsysTpm&) = delete;
  EsysTpm& operator=(const EsysTpm&) = delete;
  ~EsysTpm() override = default;

  // Creates and persists the EK and the AK unless they are already persisted; idempotent.
  // Keys found at the handles are reused when their public areas match the templates above
  // (apart from the unique field); otherwise kState, and nothing is evicted. Uses the empty
  // endorsement and owner authorizations (the default of a fresh or cleared TPM; kCrypto
  // otherwise).
  Status Provision();

  // Tpm. AkPublic/EkPublic: kNotFound until Provision ran.
  Result<Bytes> AkPublic() override;
  Result<Bytes> EkPublic() override;
  // Precondition-free: an empty selection or bits above PCR 23 are kInvalidArgument. Reads
  // that the TPM splits (at most 8 PCRs per TPM2_PCR_Read) are retried as a whole if a PCR
  // changed between them.
  Result<PcrValues> ReadPcrs(PcrSelection selection) override;
  // The quote is checked before it is returned: a TPMS_ATTEST of type quote whose extraData is
  // `qualifying`, whose PCR selection is `selection` and whose PCR digest is the SHA-256 of the
  // returned PCR values (retried up to 3 times if a PCR changed between the quote and the read).
  // `qualifying` longer than 32 bytes is kInvalidArgument.
  Result<TpmQuote> Quote(ByteSpan qualifying, PcrSelection selection) override;
  // PCRs 0..23; which of them locality 0 may extend is up to the TPM (kCrypto if refused).
  Status ExtendPcr(uint32_t pcr, const PcrDigest& digest) override;
  // Contracts in tpm.h; the objects and sessions above. Both use the empty owner authorization
  // (to create the SRK; kCrypto otherwise) and need no Provision. A PCR that changes between
  // TPM2_PolicyPCR and TPM2_Unseal makes Unseal start over (up to 3 times, then kIo).
  Result<Bytes> Seal(ByteSpan secret, PcrSelection pcrs) override;
  Result<SecretBytes> Unseal(ByteSpan blob) override;

  const std::string& tcti() const { return tcti_; }
  const EsysTpmOptions& options() const { return options_; }

 private:
  EsysTpm(std::string tcti, EsysTpmOptions options) : tcti_(std::move(tcti)), options_(options) {}

  std::mutex mu_;  // serializes calls: one TPM connection at a time from this object
  const std::string tcti_;
  const EsysTpmOptions options_;
};

}  // namespace sod::attest
