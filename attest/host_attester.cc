#include "attest/host_attester.h"

#include <unistd.h>

#include <chrono>
#include <fstream>

#include "base/files.h"
#include "migrate/migration.h"

namespace sod::attest {

namespace {

Status WriteCount(const std::filesystem::path& f, uint32_t count) {
  return WriteFileAtomically(f.string(), std::to_string(count) + "\n");
}

}  // namespace

Result<std::unique_ptr<RuntimeMonitor>> RuntimeMonitor::Open(Tpm& tpm,
                                                             std::filesystem::path state_file) {
  uint32_t stored = 0;
  if (std::ifstream in(state_file); in) {
    uint64_t v = 0;
    if (!(in >> v) || v > UINT32_MAX)
      return Error(Errc::kMalformed, state_file.string() + ": not a violation count");
    stored = static_cast<uint32_t>(v);
  }
  PcrSelection sel;
  sel.mask = 1u << kViolationPcr;
  SOD_ASSIGN_OR_RETURN(PcrValues pcr, tpm.ReadPcrs(sel));
  if (pcr.values.size() != 1) return Error(Errc::kInternal, "PCR read returned no value");
  uint32_t count = stored;
  if (pcr.values[0] == PcrDigest{} && stored != 0) {
    // The TPM was reset (a reboot): the hardware counter starts over.
    count = 0;
    SOD_RETURN_IF_ERROR(WriteCount(state_file, 0));
  }
  // Otherwise the stored count is reported as it is; if it disagrees with the PCR, every
  // verifier refuses this host's evidence (fail closed) until the TPM resets.
  return std::unique_ptr<RuntimeMonitor>(new RuntimeMonitor(tpm, std::move(state_file), count));
}

Result<uint32_t> RuntimeMonitor::RecordViolation() {
  std::lock_guard lock(mu_);
  if (count_ == UINT32_MAX) return Error(Errc::kExhausted, "violation counter full");
  const uint32_t next = count_ + 1;
  // Count first: a crash between the two leaves a count above the PCR's, which verifiers refuse;
  // never a PCR that records more than the host reports.
  SOD_RETURN_IF_ERROR(WriteCount(file_, next));
  count_ = next;
  SOD_RETURN_IF_ERROR(tpm_.ExtendPcr(kViolationPcr, ViolationEventDigest(next)));
  return next;
}

uint32_t RuntimeMonitor::count() const {
  std::lock_guard lock(mu_);
  return count_;
}

Result<Evidence> HostAttester::Produce(ByteSpan peer_nonce, ByteSpan session_binding) {
  Evidence e;
  e.host_id = identity_.host_id;
  e.architecture = identity_.architecture;
  e.capability_row = identity_.capability_row;
  SOD_ASSIGN_OR_RETURN(TpmQuote quote, monitor_.WithCount([&](uint32_t count) {
    e.violation_count = count;
    e.timestamp_unix_ms = UnixMillisNow();
    return tpm_.Quote(QualifyingData(peer_nonce, session_binding, ClaimsDigest(e)), selection_);
  }));
  e.pcrs = std::move(quote.pcrs);
  e.quote_attest = std::move(quote.attest);
  e.quote_signature = std::move(quote.signature);
  return e;
}

}  // namespace sod::attest
