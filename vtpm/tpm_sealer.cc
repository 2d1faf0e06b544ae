#include "vtpm/tpm_sealer.h"

namespace sod::vtpm {

std::string TpmKeySealer::Describe() const {
  std::string s = "host TPM, PCRs";
  for (uint32_t pcr : pcrs_.Indices()) s += " " + std::to_string(pcr);
  return s;
}

}  // namespace sod::vtpm
