#include "policy/coverage.h"

#include <nlohmann/json.hpp>

namespace sod::policy {

std::vector<std::string> UntrustedReasons(const HostState& host, const CapabilityTable& table) {
  std::vector<std::string> reasons;
  if (table.Find(host.architecture) == nullptr)
    reasons.push_back("architecture \"" + host.architecture.substr(0, kMaxArchitectureName) +
                      "\" is not in the capability table");
  if (!host.attested_ok) reasons.push_back("attestation failed");
  if (host.violations > host.max_violations)
    reasons.push_back(std::to_string(host.violations) + " runtime violations, more than the " +
                      std::to_string(host.max_violations) + " allowed");
  return reasons;
}

bool IsTrusted(const HostState& host, const CapabilityTable& table) {
  return host.attested_ok && host.violations <= host.max_violations &&
         table.Find(host.architecture) != nullptr;
}

EffectiveRow EffectiveRowOf(const HostState& host, const CapabilityTable& table) {
  if (!host.attested_ok || host.violations > host.max_violations) return {};
  const CapabilityRow* row = table.Find(host.architecture);
  if (row == nullptr) return {};
  return EffectiveRow{true, row->Protects()};
}

bool Covers(const RequestMatrix& request, const CapabilityRow& row) {
  return request.cells().IsSubsetOf(row.Protects());
}

bool Covers(const RequestMatrix& request, const EffectiveRow& row) {
  return row.trusted && request.cells().IsSubsetOf(row.protects);
}

Explanation Explain(const RequestMatrix& request, const HostState& host,
                    const CapabilityTable& table) {
  Explanation x;
  x.host_id = host.id;
  x.architecture = host.architecture;
  for (std::string& r : UntrustedReasons(host, table)) x.reasons.push_back("untrusted: " + r);
  x.trusted = x.reasons.empty();
  const CapabilityRow* row = table.Find(host.architecture);
  if (row == nullptr) {
    x.uncovered = request.cells();
  } else {
    x.uncovered = request.cells().Minus(row->Protects());
    for (unsigned i : x.uncovered.Indices()) {
      x.reasons.push_back(CellName(i) + " requested: " + row->title + " says " +
                          std::string(CapabilityName(row->cells[i])) +
                          (row->cells[i] == Capability::kNotApplicable
                               ? " (not applicable, which is not protection)"
                               : ""));
    }
  }
  x.covered = x.trusted && x.uncovered.empty();
  if (x.covered)
    x.reasons.push_back("covered: " + row->title + " protects " +
                        (request.empty() ? std::string("everything requested (nothing)")
                                         : request.cells().ToString()));
  return x;
}

nlohmann::json Explanation::ToJson() const {
  nlohmann::json cells = nlohmann::json::array();
  for (unsigned i : uncovered.Indices()) cells.push_back(CellName(i));
  return nlohmann::json{{"host", host_id},    {"architecture", architecture}, {"trusted", trusted},
                        {"covered", covered}, {"uncovered", cells},           {"reasons", reasons}};
}

}  // namespace sod::policy
