// Placement: the policy validation module's two modes (seed paper 000, III-D).
//
//   Deployment mode  pick a host for a new VM: one that covers its request (coverage.h) and has
//                    capacity for it.
//   Relocation mode  a host's trust or capability changed, or a VM's request changed: every VM
//                    the change leaves uncovered gets a target host (never an untrusted one, never
//                    one that does not cover it, capacity consumed as the plan goes), or is listed
//                    as unplaced with the reason.
//
// The choice among eligible hosts is deterministic: most free memory, then most free VM slots,
// then the smallest host id (spreads load; a full host is never chosen). Relocation places the
// most constrained VMs first: most requested cells, then most memory, then smallest VM id. It is
// a greedy plan, not an optimal bin packing: a VM can be reported unplaced although another order
// would have fitted it.
//
// How it scales (policy/README.md, "Algorithm"): trusted hosts are grouped by their effective row
// as a bitmask, and each group keeps its hosts ordered by free capacity. "Which hosts cover this
// VM" is then one AND per group (there are at most as many groups as distinct architectures in
// use), and the best of a group is its first host. A plan for k VMs costs
// O(k log k + k * (G + log H)) for G groups and H hosts, independent of the number of VMs in the
// cluster.
//
// The Cluster is this module's model of the hosts and VMs, not the truth: the caller feeds it the
// trust monitor's host states (UpdateHost) and the customers' requests (UpdateRequest), runs the
// migrations a plan lists, and refreshes host states (with their real free capacity) as hosts
// report. A plan is applied to the model when it is made: each moved VM is recorded at its target
// and its memory and one slot are taken from the target's free capacity. The source's capacity is
// not given back (the VM holds it until its migration commits; the host's next report frees it).
//
// Thread-safety: none; one thread at a time (the policy agent's). Copyable (a copy plans
// independently: a dry run).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "policy/capabilities.h"
#include "policy/coverage.h"
#include "policy/request.h"

namespace sod::policy {

struct VmState {
  std::string id;
  RequestMatrix request;
  uint64_t memory_mb = 0;  // what it takes on a host, with one VM slot
  std::string host;        // where it runs, or "" when not placed
};

struct Move {
  std::string vm_id;
  std::string from;
  std::string to;
  std::string reason;  // why it leaves `from` ("host h1 untrusted: attestation failed")
  bool operator==(const Move&) const = default;
};

struct Unplaced {
  std::string vm_id;
  std::string host;    // where it still runs
  std::string reason;  // why it should leave, and why no host can take it
  bool operator==(const Unplaced&) const = default;
};

struct RelocationPlan {
  std::string trigger;      // what caused the plan
  std::vector<Move> moves;  // in the order they were planned (most constrained first)
  std::vector<Unplaced> unplaced;

  // {"trigger", "moves": [{"vm", "from", "to", "reason"}], "unplaced": [{"vm", "host",
  // "reason"}]}
  nlohmann::json ToJson() const;
};

class Cluster {
 public:
  // Indexes `hosts` and `vms` under `table`. kInvalidArgument for an empty or repeated host or VM
  // id, kNotFound for a VM on a host not in `hosts`. Hosts whose architecture is not in the table
  // are accepted and untrusted (UntrustedReasons). VMs are taken as they are: one on a host that
  // does not cover it stays there until a relocation moves it (RelocateUncovered).
  static Result<Cluster> Create(CapabilityTable table, std::vector<HostState> hosts,
                                std::vector<VmState> vms);

  // Deployment mode, without changing anything: the host a VM with `request` and `memory_mb`
  // would get, or kRefused with the reason ("no trusted host protects cloud-manager.C", "2
  // trusted hosts cover other-vms:CI but none has 4096 MB and a VM slot free").
  Result<std::string> ChooseHost(const RequestMatrix& request, uint64_t memory_mb) const;
  // Deployment mode: places `vm` (whose host must be "") on ChooseHost's host, takes its capacity
  // and returns the host id. kInvalidArgument for an empty or known VM id or a set host,
  // ChooseHost's kRefused ("vm \"v\": ...") when no host can take it.
  Result<std::string> Deploy(VmState vm);

  // Adds a host. kInvalidArgument for an empty or known id.
  Status AddHost(HostState host);
  // Relocation mode, host trigger: replaces the host's state (trust, violations, architecture,
  // free capacity) and plans for every VM on it that it no longer covers. kNotFound for an
  // unknown host.
  Result<RelocationPlan> UpdateHost(HostState host);
  // Relocation mode, request trigger: sets the VM's request and, when its host no longer covers
  // it, plans its move. kNotFound for an unknown VM. A VM that is not placed only gets its new
  // request.
  Result<RelocationPlan> UpdateRequest(std::string_view vm_id, RequestMatrix request);
  // Relocation mode, sweep: plans for every placed VM whose host does not cover it (after the
  // table changed, or to retry VMs an earlier plan left unplaced). O(number of VMs).
  RelocationPlan RelocateUncovered();

  const HostState* FindHost(std::string_view id) const;
  const VmState* FindVm(std::string_view id) const;
  // The VMs on `host` (placement order), or empty.
  std::vector<std::string> VmsOn(std::string_view host) const;
  size_t host_count() const { return hosts_.size(); }
  size_t vm_count() const { return vms_.size(); }
  const CapabilityTable& table() const { return table_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  struct HostEntry {
    HostState state;
    uint16_t offer = 0;         // OfferMask: protected cells | kTrustBit, or 0 when untrusted
    uint32_t group = kNone;     // index into groups_ while trusted
    std::vector<uint32_t> vms;  // indices into vms_
  };
  struct VmEntry {
    VmState state;
    uint16_t need = 0;      // requested cells | kTrustBit
    uint32_t host = kNone;  // index into hosts_
  };
  // A trusted host with a free slot, as its group orders them.
  struct Slot {
    uint64_t free_memory_mb;
    uint32_t free_vm_slots;
    std::string id;
    uint32_t host;
  };
  struct SlotOrder {
    bool operator()(const Slot& a, const Slot& b) const;
  };
  // The trusted hosts with one effective row.
  struct Group {
    uint16_t offer = 0;
    uint32_t hosts = 0;                   // trusted hosts in the group, free slots or not
    std::set<Slot, SlotOrder> available;  // those with at least one free slot
  };
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <typename V>
  using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

  uint16_t OfferOf(const HostState& host) const;
  void Index(uint32_t h);    // enters host h into its group (by its state)
  void Unindex(uint32_t h);  // takes it out
  void Take(uint32_t h, uint64_t memory_mb);
  // The best host for `need` and `memory_mb`, or kNone.
  uint32_t Best(uint16_t need, uint64_t memory_mb) const;
  std::string NoHostReason(uint16_t need, uint64_t memory_mb) const;
  // Why host h does not cover VM v (for Move/Unplaced reasons).
  std::string LeaveReason(uint32_t h, const VmEntry& v) const;
  bool HostCovers(uint32_t h, uint16_t need) const;
  RelocationPlan Plan(std::string trigger, std::vector<uint32_t> vms);

  CapabilityTable table_;
  std::vector<HostEntry> hosts_;
  StringMap<uint32_t> host_index_;
  std::vector<VmEntry> vms_;
  StringMap<uint32_t> vm_index_;
  std::vector<Group> groups_;
  std::unordered_map<uint16_t, uint32_t> group_index_;  // offer -> index into groups_
};

}  // namespace sod::policy
