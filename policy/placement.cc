#include "policy/placement.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <tuple>

namespace sod::policy {
namespace {

// Bit 15 of a need/offer mask: "trusted". Every need has it and only trusted hosts offer it, so
// "host covers VM" is (need & ~offer) == 0 -- one AND -- and an untrusted host covers nothing,
// not even a VM that requests no cell.
constexpr uint16_t kTrustBit = 1u << 15;
static_assert(kTrustBit > CellSet::kAllBits, "the trust bit must not be a cell");

uint16_t NeedOf(const RequestMatrix& request) { return request.cells().bits() | kTrustBit; }

bool Fits(uint16_t need, uint16_t offer) { return (need & ~offer & 0xffffu) == 0; }

CellSet CellsOf(uint16_t mask) { return CellSet::FromBits(mask); }  // drops the trust bit

std::string RequestText(CellSet cells) {
  return cells.empty() ? std::string("an empty request") : cells.ToEntityString();
}

std::string Quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

}  // namespace

bool Cluster::SlotOrder::operator()(const Slot& a, const Slot& b) const {
  if (a.free_memory_mb != b.free_memory_mb) return a.free_memory_mb > b.free_memory_mb;
  if (a.free_vm_slots != b.free_vm_slots) return a.free_vm_slots > b.free_vm_slots;
  return a.id < b.id;
}

nlohmann::json RelocationPlan::ToJson() const {
  nlohmann::json m = nlohmann::json::array();
  for (const Move& x : moves)
    m.push_back({{"vm", x.vm_id}, {"from", x.from}, {"to", x.to}, {"reason", x.reason}});
  nlohmann::json u = nlohmann::json::array();
  for (const Unplaced& x : unplaced)
    u.push_back({{"vm", x.vm_id}, {"host", x.host}, {"reason", x.reason}});
  return nlohmann::json{{"trigger", trigger}, {"moves", std::move(m)}, {"unplaced", std::move(u)}};
}

Result<Cluster> Cluster::Create(CapabilityTable table, std::vector<HostState> hosts,
                                std::vector<VmState> vms) {
  Cluster c;
  c.table_ = std::move(table);
  c.hosts_.reserve(hosts.size());
  c.host_index_.reserve(hosts.size());
  for (HostState& h : hosts) {
    if (h.id.empty()) return Error(Errc::kInvalidArgument, "a host has an empty id");
    if (!c.host_index_.emplace(h.id, static_cast<uint32_t>(c.hosts_.size())).second)
      return Error(Errc::kInvalidArgument, "host " + Quoted(h.id) + " listed twice");
    c.hosts_.push_back(HostEntry{std::move(h), 0, kNone, {}});
  }
  c.vms_.reserve(vms.size());
  c.vm_index_.reserve(vms.size());
  for (VmState& v : vms) {
    if (v.id.empty()) return Error(Errc::kInvalidArgument, "a VM has an empty id");
    const auto index = static_cast<uint32_t>(c.vms_.size());
    if (!c.vm_index_.emplace(v.id, index).second)
      return Error(Errc::kInvalidArgument, "vm " + Quoted(v.id) + " listed twice");
    uint32_t host = kNone;
    if (!v.host.empty()) {
      auto it = c.host_index_.find(v.host);
      if (it == c.host_index_.end())
        return Error(Errc::kNotFound, "vm " + Quoted(v.id) + ": unknown host " + Quoted(v.host));
      host = it->second;
      c.hosts_[host].vms.push_back(index);
    }
    const uint16_t need = NeedOf(v.request);
    c.vms_.push_back(VmEntry{std::move(v), need, host});
  }
  for (uint32_t h = 0; h < c.hosts_.size(); ++h) c.Index(h);
  return c;
}

uint16_t Cluster::OfferOf(const HostState& host) const {
  const EffectiveRow row = EffectiveRowOf(host, table_);
  return row.trusted ? static_cast<uint16_t>(row.protects.bits() | kTrustBit) : 0;
}

void Cluster::Index(uint32_t h) {
  HostEntry& e = hosts_[h];
  e.offer = OfferOf(e.state);
  e.group = kNone;
  if (e.offer == 0) return;  // untrusted: in no group, never a target
  auto [it, fresh] = group_index_.emplace(e.offer, static_cast<uint32_t>(groups_.size()));
  if (fresh) groups_.push_back(Group{e.offer, 0, {}});
  e.group = it->second;
  Group& g = groups_[e.group];
  ++g.hosts;
  if (e.state.free_vm_slots > 0)
    g.available.insert(Slot{e.state.free_memory_mb, e.state.free_vm_slots, e.state.id, h});
}

void Cluster::Unindex(uint32_t h) {
  HostEntry& e = hosts_[h];
  if (e.group == kNone) return;
  Group& g = groups_[e.group];
  if (e.state.free_vm_slots > 0)
    g.available.erase(Slot{e.state.free_memory_mb, e.state.free_vm_slots, e.state.id, h});
  --g.hosts;
  e.group = kNone;
}

void Cluster::Take(uint32_t h, uint64_t memory_mb) {
  // Precondition: h is trusted, has a free slot and at least memory_mb free (Best chose it).
  HostEntry& e = hosts_[h];
  Group& g = groups_[e.group];
  auto node =
      g.available.extract(Slot{e.state.free_memory_mb, e.state.free_vm_slots, e.state.id, h});
  e.state.free_memory_mb -= memory_mb;
  e.state.free_vm_slots -= 1;
  if (e.state.free_vm_slots == 0 || node.empty()) return;
  node.value().free_memory_mb = e.state.free_memory_mb;
  node.value().free_vm_slots = e.state.free_vm_slots;
  g.available.insert(std::move(node));
}

uint32_t Cluster::Best(uint16_t need, uint64_t memory_mb) const {
  const Slot* best = nullptr;
  for (const Group& g : groups_) {
    if (g.available.empty() || !Fits(need, g.offer)) continue;
    // The group's first host has the most free memory: if it cannot take the VM, none can.
    const Slot& top = *g.available.begin();
    if (top.free_memory_mb < memory_mb) continue;
    if (best == nullptr || SlotOrder()(top, *best)) best = &top;
  }
  return best == nullptr ? kNone : best->host;
}

std::string Cluster::NoHostReason(uint16_t need, uint64_t memory_mb) const {
  uint16_t offered = 0;  // what the trusted hosts protect between them
  uint64_t trusted = 0, covering = 0;
  for (const Group& g : groups_) {
    if (g.hosts == 0) continue;
    offered |= g.offer;
    trusted += g.hosts;
    if (Fits(need, g.offer)) covering += g.hosts;
  }
  const CellSet cells = CellsOf(need);
  if (trusted == 0) return "no trusted host";
  if (covering == 0) {
    const CellSet missing = cells.Minus(CellsOf(offered));
    if (!missing.empty()) return "no trusted host protects " + missing.ToString();
    return "no trusted host protects all of " + RequestText(cells) +
           " (each cell is protected by some host, none protects them together)";
  }
  return std::to_string(covering) +
         (covering == 1 ? " trusted host covers " : " trusted hosts cover ") + RequestText(cells) +
         " but none has " + std::to_string(memory_mb) + " MB and a VM slot free";
}

bool Cluster::HostCovers(uint32_t h, uint16_t need) const { return Fits(need, hosts_[h].offer); }

std::string Cluster::LeaveReason(uint32_t h, const VmEntry& v) const {
  const HostEntry& e = hosts_[h];
  std::string reason = "host " + Quoted(e.state.id);
  if (e.offer == 0) {
    reason += " untrusted: ";
    std::vector<std::string> why = UntrustedReasons(e.state, table_);
    for (size_t i = 0; i < why.size(); ++i) reason += (i ? "; " : "") + why[i];
    return reason;
  }
  const CellSet missing = CellsOf(v.need).Minus(CellsOf(e.offer));
  const CapabilityRow* row = table_.Find(e.state.architecture);
  return reason + " (" + (row ? row->title : e.state.architecture) + ") does not protect " +
         missing.ToString();
}

RelocationPlan Cluster::Plan(std::string trigger, std::vector<uint32_t> vms) {
  RelocationPlan plan;
  plan.trigger = std::move(trigger);
  // Most constrained first: most requested cells, then most memory, then smallest id.
  std::sort(vms.begin(), vms.end(), [this](uint32_t a, uint32_t b) {
    const VmEntry& x = vms_[a];
    const VmEntry& y = vms_[b];
    const size_t cx = CellsOf(x.need).size(), cy = CellsOf(y.need).size();
    return std::tie(cy, y.state.memory_mb, x.state.id) <
           std::tie(cx, x.state.memory_mb, y.state.id);
  });
  std::vector<uint32_t> sources;  // hosts some VM left
  for (uint32_t v : vms) {
    VmEntry& vm = vms_[v];
    const uint32_t from = vm.host;
    std::string reason = LeaveReason(from, vm);
    const uint32_t to = Best(vm.need, vm.state.memory_mb);
    if (to == kNone) {
      plan.unplaced.push_back(
          {vm.state.id, hosts_[from].state.id,
           reason + "; no target: " + NoHostReason(vm.need, vm.state.memory_mb)});
      continue;
    }
    Take(to, vm.state.memory_mb);
    plan.moves.push_back(
        {vm.state.id, hosts_[from].state.id, hosts_[to].state.id, std::move(reason)});
    vm.host = to;
    vm.state.host = hosts_[to].state.id;
    hosts_[to].vms.push_back(v);
    sources.push_back(from);
  }
  std::sort(sources.begin(), sources.end());
  sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
  for (uint32_t h : sources) {
    std::vector<uint32_t>& list = hosts_[h].vms;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [this, h](uint32_t v) { return vms_[v].host != h; }),
               list.end());
  }
  return plan;
}

Result<std::string> Cluster::ChooseHost(const RequestMatrix& request, uint64_t memory_mb) const {
  const uint16_t need = NeedOf(request);
  const uint32_t h = Best(need, memory_mb);
  if (h == kNone) return Error(Errc::kRefused, NoHostReason(need, memory_mb));
  return hosts_[h].state.id;
}

Result<std::string> Cluster::Deploy(VmState vm) {
  if (vm.id.empty()) return Error(Errc::kInvalidArgument, "a VM has an empty id");
  if (vm_index_.contains(vm.id))
    return Error(Errc::kInvalidArgument, "vm " + Quoted(vm.id) + " already exists");
  if (!vm.host.empty())
    return Error(Errc::kInvalidArgument,
                 "vm " + Quoted(vm.id) + " is already on host " + Quoted(vm.host));
  const uint16_t need = NeedOf(vm.request);
  const uint32_t h = Best(need, vm.memory_mb);
  if (h == kNone)
    return Error(Errc::kRefused, "vm " + Quoted(vm.id) + ": " + NoHostReason(need, vm.memory_mb));
  Take(h, vm.memory_mb);
  const auto index = static_cast<uint32_t>(vms_.size());
  vm.host = hosts_[h].state.id;
  vm_index_.emplace(vm.id, index);
  vms_.push_back(VmEntry{std::move(vm), need, h});
  hosts_[h].vms.push_back(index);
  return hosts_[h].state.id;
}

Status Cluster::AddHost(HostState host) {
  if (host.id.empty()) return Error(Errc::kInvalidArgument, "a host has an empty id");
  const auto index = static_cast<uint32_t>(hosts_.size());
  if (!host_index_.emplace(host.id, index).second)
    return Error(Errc::kInvalidArgument, "host " + Quoted(host.id) + " already exists");
  hosts_.push_back(HostEntry{std::move(host), 0, kNone, {}});
  Index(index);
  return Status::Ok();
}

Result<RelocationPlan> Cluster::UpdateHost(HostState host) {
  auto it = host_index_.find(host.id);
  if (it == host_index_.end()) return Error(Errc::kNotFound, "unknown host " + Quoted(host.id));
  const uint32_t h = it->second;
  Unindex(h);
  hosts_[h].state = std::move(host);
  Index(h);
  const HostState& s = hosts_[h].state;
  std::string trigger = "host " + Quoted(s.id) + " changed: ";
  if (hosts_[h].offer == 0) {
    trigger += "untrusted (";
    std::vector<std::string> why = UntrustedReasons(s, table_);
    for (size_t i = 0; i < why.size(); ++i) trigger += (i ? "; " : "") + why[i];
    trigger += ")";
  } else {
    trigger += "trusted, architecture " + s.architecture;
  }
  std::vector<uint32_t> affected;
  for (uint32_t v : hosts_[h].vms)
    if (!HostCovers(h, vms_[v].need)) affected.push_back(v);
  return Plan(std::move(trigger), std::move(affected));
}

Result<RelocationPlan> Cluster::UpdateRequest(std::string_view vm_id, RequestMatrix request) {
  auto it = vm_index_.find(vm_id);
  if (it == vm_index_.end()) return Error(Errc::kNotFound, "unknown vm " + Quoted(vm_id));
  VmEntry& vm = vms_[it->second];
  vm.state.request = request;
  vm.need = NeedOf(request);
  std::string trigger =
      "vm " + Quoted(vm.state.id) + " request changed to " + RequestText(request.cells());
  if (vm.host == kNone || HostCovers(vm.host, vm.need))
    return RelocationPlan{std::move(trigger), {}, {}};
  return Plan(std::move(trigger), {it->second});
}

RelocationPlan Cluster::RelocateUncovered() {
  std::vector<uint32_t> affected;
  for (uint32_t v = 0; v < vms_.size(); ++v)
    if (vms_[v].host != kNone && !HostCovers(vms_[v].host, vms_[v].need)) affected.push_back(v);
  return Plan("sweep: VMs whose host does not cover them", std::move(affected));
}

const HostState* Cluster::FindHost(std::string_view id) const {
  auto it = host_index_.find(id);
  return it == host_index_.end() ? nullptr : &hosts_[it->second].state;
}

const VmState* Cluster::FindVm(std::string_view id) const {
  auto it = vm_index_.find(id);
  return it == vm_index_.end() ? nullptr : &vms_[it->second].state;
}

std::vector<std::string> Cluster::VmsOn(std::string_view host) const {
  std::vector<std::string> out;
  auto it = host_index_.find(host);
  if (it == host_index_.end()) return out;
  for (uint32_t v : hosts_[it->second].vms) out.push_back(vms_[v].state.id);
  return out;
}

}  // namespace sod::policy
