// Coverage: does a host protect everything a VM requests, right now? (seed paper 000, III-C2 and
// III-D: the trust monitor reports each server's architecture and runtime trust evidence; the
// policy validation module matches the VM's Table II row against the server's Table III row.)
//
//   Covers(request, row)    every requested cell is Yes in the architecture's row (n-a and No
//                           are not protection).
//   EffectiveRow(host)      the host's architecture row when the host is trusted; nothing when
//                           its attestation failed, its violation counter tripped, or its
//                           architecture is not in the table.
//   Explain(request, host)  why a host covers a request or not, cell by cell.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "policy/capabilities.h"
#include "policy/cells.h"
#include "policy/request.h"

namespace sod::policy {

// What the trust monitor knows about a host (attest/verifier.h gives attested_ok and violations).
// Capacity is what the host has *free* as last reported: VMs already running there are already
// subtracted.
struct HostState {
  std::string id;
  std::string architecture;     // a row name of the capability table
  bool attested_ok = false;     // its latest attestation verified
  uint32_t violations = 0;      // runtime violations it reported (HyperWall-style counter, III-C2)
  uint32_t max_violations = 0;  // the most it may report and stay trusted (as the verifier's)
  uint64_t free_memory_mb = 0;
  uint32_t free_vm_slots = 0;
  bool operator==(const HostState&) const = default;
};

// Why `host` covers nothing right now; empty when it is trusted. In this order:
//   "architecture \"x\" is not in the capability table"
//   "attestation failed"
//   "4 runtime violations, more than the 3 allowed"
std::vector<std::string> UntrustedReasons(const HostState& host, const CapabilityTable& table);
// True when UntrustedReasons is empty: architecture known, attested_ok, violations <=
// max_violations.
bool IsTrusted(const HostState& host, const CapabilityTable& table);

// What a host protects now: its architecture's Yes cells when trusted. An untrusted host covers
// nothing, not even the empty request.
struct EffectiveRow {
  bool trusted = false;
  CellSet protects;  // empty when !trusted
  bool operator==(const EffectiveRow&) const = default;
};
EffectiveRow EffectiveRowOf(const HostState& host, const CapabilityTable& table);

// Every requested cell is Yes in `row`.
bool Covers(const RequestMatrix& request, const CapabilityRow& row);
// `row` is trusted and every requested cell is in it.
bool Covers(const RequestMatrix& request, const EffectiveRow& row);

// Why a host does or does not cover a request.
struct Explanation {
  std::string host_id;
  std::string architecture;
  bool trusted = false;
  bool covered = false;
  CellSet uncovered;  // requested cells the architecture does not protect (all requested ones
                      // when the architecture is unknown)
  // Human-readable, untrusted reasons first ("untrusted: attestation failed"), then one line per
  // uncovered cell ("hypervisor.C requested: HyperSafe [10] says No"), or one line saying that
  // the host covers the request.
  std::vector<std::string> reasons;

  // {"host", "architecture", "trusted", "covered", "uncovered": ["hypervisor.C", ...],
  //  "reasons": [...]}
  nlohmann::json ToJson() const;
};
Explanation Explain(const RequestMatrix& request, const HostState& host,
                    const CapabilityTable& table);

}  // namespace sod::policy
