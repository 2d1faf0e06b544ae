// TpmKeySealer: a KeySealer (vtpm/vtpm_host.h) backed by the host's TPM (attest/tpm.h): the
// secret is sealed to the current values of `pcrs`, so it comes back only while the host's boot
// state is what it was (attest/README.md, "Sealing").
#pragma once

#include <string>

#include "attest/tpm.h"
#include "vtpm/vtpm_host.h"

namespace sod::vtpm {

class TpmKeySealer : public KeySealer {
 public:
  // `tpm` must outlive the sealer.
  TpmKeySealer(attest::Tpm& tpm, attest::PcrSelection pcrs) : tpm_(tpm), pcrs_(pcrs) {}
  Result<Bytes> Seal(ByteSpan secret) override { return tpm_.Seal(secret, pcrs_); }
  Result<SecretBytes> Unseal(ByteSpan blob) override { return tpm_.Unseal(blob); }
  std::string Describe() const override;

 private:
  attest::Tpm& tpm_;
  attest::PcrSelection pcrs_;
};

}  // namespace sod::vtpm
