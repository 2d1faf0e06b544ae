#include "attest/tpm.h"

namespace sod::attest {

std::vector<uint32_t> PcrSelection::Indices() const {
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < 24; ++i)
    if (Has(i)) out.push_back(i);
  return out;
}

}  // namespace sod::attest
