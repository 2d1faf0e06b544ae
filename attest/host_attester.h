// What this host says about itself: evidence (attest/evidence.h) made from its TPM, identity and
// runtime monitor, bound to a peer's nonce and a session (attest/README.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>

#include "attest/evidence.h"
#include "attest/tpm.h"

namespace sod::attest {

struct HostIdentity {
  std::string host_id;         // as the host certificate names it
  std::string architecture;    // a row name of the capability table
  std::string capability_row;  // what the host claims it protects (opaque until the policy agent)
};

// The host's runtime violation counter (like HyperWall's memory-violation count): every violation
// is counted in a state file and extended into kViolationPcr, so a quote covers the count and a
// host cannot report fewer violations than its TPM recorded. The count restarts at 0 when the
// TPM resets (PCRs are zero again), like a hardware counter at reboot.
// Thread-safe.
class RuntimeMonitor {
 public:
  // `state_file` keeps the count across daemon restarts; `tpm` must outlive the monitor.
  static Result<std::unique_ptr<RuntimeMonitor>> Open(Tpm& tpm, std::filesystem::path state_file);
  // Records one violation: count + 1 in the state file, then the PCR extend.
  Result<uint32_t> RecordViolation();
  uint32_t count() const;
  // Calls f(count) with no violation recorded meanwhile: a quote taken inside f covers exactly
  // `count` violations.
  template <typename F>
  auto WithCount(F f) const {
    std::lock_guard lock(mu_);
    return f(count_);
  }

 private:
  RuntimeMonitor(Tpm& tpm, std::filesystem::path f, uint32_t count)
      : tpm_(tpm), file_(std::move(f)), count_(count) {}
  Tpm& tpm_;
  std::filesystem::path file_;
  mutable std::mutex mu_;
  uint32_t count_;
};

// Thread-safe; `tpm` and `monitor` must outlive it.
class HostAttester {
 public:
  HostAttester(Tpm& tpm, const RuntimeMonitor& monitor, HostIdentity identity,
               PcrSelection selection = DefaultQuoteSelection())
      : tpm_(tpm), monitor_(monitor), identity_(std::move(identity)), selection_(selection) {}

  const HostIdentity& identity() const { return identity_; }
  // Fresh evidence: a quote over the selected PCRs with qualifying data
  // QualifyingData(peer_nonce, session_binding, ClaimsDigest(evidence)), the PCR values, the
  // violation count, now.
  Result<Evidence> Produce(ByteSpan peer_nonce, ByteSpan session_binding);

 private:
  Tpm& tpm_;
  const RuntimeMonitor& monitor_;
  HostIdentity identity_;
  PcrSelection selection_;
};

}  // namespace sod::attest
