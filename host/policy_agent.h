// PolicyAgent: the trust monitor and policy agent inside sodd (ARCHITECTURE.md section 5;
// policy/README.md has the pure core it drives).
//
//   requests     A VM's security request travels in its spec (VmSpec::security: a package or
//                options, policy/request.h "SecurityRequest"); it is validated with the policy
//                library at `vm start` (and must be covered by this host), at `policy set`, and
//                when an incoming offer is admitted (refused unless this host covers it).
//                No request = nothing requested (only a trusted host).
//   monitor      Every interval: this host's own state (its evidence checked against its own
//                enrollment record, when enrolled, and its violation count against
//                --max-violations) and each peer's verdict from a fresh mutual attestation
//                session; peers' architectures come from their enrollment records, never from
//                their claims. Each becomes a policy::HostState.
//   agent        Every interval (and at once after `policy set`): a policy::Cluster of this host,
//                its peers and this host's running VMs; RelocateUncovered() plans a move for
//                every VM this host no longer covers (trust drop, requirement change). Moves run
//                through MigrationService::MigrateVm, at most `max_outgoing` at a time in
//                priority order (OrderRelocations below: VMs leaving an untrusted host, then
//                requirement changes, then moving-target moves; within a class the VM with more
//                requested cells first); the rest wait for the next round. A VM without
//                an eligible target stays where it is: "policy.no-target" with every host's
//                Explain, repeated at most every `no_target_repeat` unless the reasons change.
//                A relocation that fails is retried after max(interval, 5 s).
//                Optional moving-target defense: every `moving_target` each VM moves to another
//                eligible host.
//   capacity     This host: `vm_slots` minus its VMs, and MemAvailable. Peers do not report
//                capacity (no such message yet): each peer is offered one VM slot per round with
//                unbounded memory, which spreads a round's moves over the eligible peers; the
//                destination's own limits (--max-incoming, launching QEMU) still apply.
//   audit        policy.request-changed, policy.relocate (vm, from, to, why, trigger, priority:
//                RelocationClassName, waiting: moves left for a later round),
//                policy.relocated / policy.relocate-failed (outcome), policy.no-target,
//                policy.trust-changed (this host's or a peer's trust flipped).
//   deployment   policy.place {spec}: which hosts could take a new VM with this spec (its
//                request and memory), each with its Explain and capacity, and the one
//                policy::Cluster::ChooseHost picks, from the agent's current view (the last
//                samples; a peer not sampled yet is untrusted). It only answers: nothing starts.
//                Capacity as above: this host's real free slots and memory; each peer one slot
//                and unbounded memory (so a covering trusted peer is preferred over this host,
//                whose memory is finite). A VM of that name already on this host makes this host
//                unable to take it. "chosen" is null when no host can (not an error).
//   admin ops    policy.set {name, request}, policy.show {name}, policy.explain {name, host},
//                policy.place {spec}, hosts {} (tools/sodctl_policy.cc).
//
// Thread-safety: the ops, the admission check and the monitor thread run concurrently; the
// agent's state is guarded by one mutex; migrations run on their own threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/status.h"
#include "host/attestation_service.h"
#include "host/host_daemon.h"
#include "host/migration_service.h"
#include "policy/capabilities.h"
#include "policy/coverage.h"
#include "policy/packages.h"
#include "policy/request.h"

namespace sod {

struct PolicyPeer {
  std::string id;       // host id (its certificate and enrollment record)
  std::string connect;  // address to dial
  uint16_t port = 7400;
};

struct PolicyAgentConfig {
  policy::CapabilityTable table;
  policy::PackageCatalog packages;
  std::vector<PolicyPeer> peers;
  std::chrono::milliseconds interval{1000};  // 0: no monitor thread (requests still validated)
  size_t max_outgoing = 1;
  uint32_t vm_slots = 16;
  std::chrono::seconds no_target_repeat{30};
  std::chrono::seconds moving_target{0};  // 0: off
};

// Why a pending relocation runs, in priority order (lower first; OrderRelocations).
enum class RelocationClass : uint8_t {
  kUntrustedHost = 0,       // this host's trust dropped: every uncovered VM must leave it
  kRequirementChanged = 1,  // this host is trusted but no longer covers the VM's request
  kMovingTarget = 2,        // moving-target defense: periodic, nothing is exposed meanwhile
};
// "untrusted-host", "requirement-changed", "moving-target".
std::string_view RelocationClassName(RelocationClass c);

struct PendingRelocation {
  std::string vm;
  RelocationClass why = RelocationClass::kUntrustedHost;
  size_t requested_cells = 0;  // cells its request matrix sets
  uint64_t memory_mb = 0;
  std::string to;      // target host (carried along, not ordered on)
  std::string reason;  // carried along
};

// Sorts `moves` into the order the agent starts them (at most max_outgoing per round, the rest
// wait for the next round): class (RelocationClass order), then more requested cells first,
// then more memory first, then VM name (deterministic). Pure.
void OrderRelocations(std::vector<PendingRelocation>& moves);

// "basic-security" package or options, as SecurityRequest JSON; "" = nothing requested.
// kInvalidArgument / kMalformed / kNotFound (unknown package) naming the problem.
Result<policy::RequestMatrix> ResolveSecurity(const policy::PackageCatalog& packages,
                                              const std::string& security);

class PolicyAgent {
 public:
  // `daemon`, `attestation` and `migrations` must outlive the agent. kInvalidArgument when this
  // host's architecture is not a row of the table, or a peer is listed twice or is this host.
  static Result<std::unique_ptr<PolicyAgent>> Create(HostDaemon& daemon,
                                                     AttestationService& attestation,
                                                     MigrationService& migrations,
                                                     PolicyAgentConfig config);
  ~PolicyAgent();  // Stop()
  PolicyAgent(const PolicyAgent&) = delete;
  PolicyAgent& operator=(const PolicyAgent&) = delete;

  // Registers the admin ops, the vm.start check and the admission check. Before
  // MigrationService::Install and daemon.Start().
  void Install();
  // Starts the monitor thread (when the interval is not 0). After daemon.Start().
  void Start();
  // Stops the monitor and waits for the migrations it started. Idempotent.
  void Stop();

 private:
  struct Known {
    policy::HostState state;
    std::vector<std::string> reasons;  // the monitor's own (verdict reasons, unreachable)
    bool sampled = false;
    std::chrono::steady_clock::time_point when{};
  };

  PolicyAgent(HostDaemon& d, AttestationService& a, MigrationService& m, PolicyAgentConfig c);
  Status CheckSpec(const VmSpec& spec);                       // vm.start
  Status Admit(const VmSpec& spec, const std::string& from);  // incoming offers
  Status CoveredHere(const policy::RequestMatrix& request);
  Known SampleSelf();
  Known SamplePeer(const PolicyPeer& peer);
  void Loop();
  void Round();
  void StartMove(const std::string& vm, const std::string& from, const std::string& to,
                 const std::string& why, const std::string& trigger, RelocationClass priority,
                 size_t waiting);
  void ReapWorkers(bool all);
  std::vector<policy::HostState> HostStates();  // self first; caller holds mu_
  const PolicyPeer* FindPeer(const std::string& id) const;
  void Audit(std::string_view kind, const nlohmann::json& data);

  Result<nlohmann::json> OpSet(const nlohmann::json& req);
  Result<nlohmann::json> OpShow(const nlohmann::json& req);
  Result<nlohmann::json> OpExplain(const nlohmann::json& req);
  Result<nlohmann::json> OpHosts(const nlohmann::json& req);
  Result<nlohmann::json> OpPlace(const nlohmann::json& req);

  HostDaemon& d_;
  AttestationService& attest_;
  MigrationService& migrations_;
  const PolicyAgentConfig config_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool poke_ = false;
  Known self_;                          // guarded by mu_
  std::map<std::string, Known> peers_;  // guarded by mu_
  std::set<std::string> in_flight_;     // VMs being moved, guarded by mu_
  std::set<std::string> changed_;       // VMs whose request changed, guarded by mu_
  std::map<std::string, std::pair<std::string, std::chrono::steady_clock::time_point>>
      no_target_;  // vm -> (reasons, last audited), guarded by mu_
  std::map<std::string, std::chrono::steady_clock::time_point> last_moved_;  // moving target
  // A VM whose relocation failed is planned again only after this (guarded by mu_).
  static constexpr std::chrono::seconds kRetryDelay{5};
  std::map<std::string, std::chrono::steady_clock::time_point> retry_after_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<bool> done;
  };
  std::vector<Worker> workers_;  // guarded by mu_
  std::thread monitor_;
};

}  // namespace sod
