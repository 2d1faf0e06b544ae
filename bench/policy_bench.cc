// Policy agent placement at cloud scale, single core (policy/placement.h): 10,000 hosts of the 13
// Table III architectures, 100,000 VMs, one host holding 1,000 of them loses its trust. The plan
// for those 1,000 VMs (each a target that covers it, capacity consumed as the plan goes) must take
// well under 1 s. Next to it: building the cluster index, one deployment, and the same plan done
// by scanning every host for every VM (no index), for scale.
//
//   cmake --build BUILD --target policy_bench && BUILD/bench/policy_bench
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "policy/capabilities.h"
#include "policy/coverage.h"
#include "policy/placement.h"
#include "policy/request.h"

#ifndef SOD_POLICY_DIR
#error "SOD_POLICY_DIR must name the policy/ source directory (bench/CMakeLists.txt)"
#endif

namespace sod::policy {
namespace {

constexpr int kHosts = 10'000;
constexpr int kVms = 100'000;
constexpr int kVictimVms = 1'000;
constexpr int kVictim = 0;  // hosts[kVictim] holds kVictimVms VMs

struct World {
  CapabilityTable table;
  std::vector<HostState> hosts;
  std::vector<VmState> vms;
  Cluster cluster;
};

// The requests customers pick (the paper's examples and single options, C+I and I only).
std::vector<RequestMatrix> Menu() {
  std::vector<RequestMatrix> menu;
  for (auto options : {std::initializer_list<int>{1},
                       {1, 2},
                       {1, 5, 6, 7},
                       {7},
                       {3},
                       {1, 3},
                       {6},
                       {5, 6},
                       {2},
                       {1, 2, 3}}) {
    for (Protection p : {Protection::kCI, Protection::kI, Protection::kC})
      menu.push_back(*RequestMatrix::FromOptions(options, p));
  }
  menu.push_back(RequestMatrix());
  return menu;
}

World* BuildWorld() {
  World* w = new World;
  const std::string path = std::string(SOD_POLICY_DIR) + "/capabilities.json";
  w->table = std::move(CapabilityTable::LoadFile(path)).value();
  std::mt19937_64 rng(42);
  const std::vector<CapabilityRow>& rows = w->table.rows();
  // The victim is a Bastion: it covers the most of the menu, so its 1,000 VMs are varied.
  for (int i = 0; i < kHosts; ++i) {
    HostState h;
    h.id = "host-" + std::to_string(i);
    h.architecture = i == kVictim ? "bastion" : rows[rng() % rows.size()].name;
    h.attested_ok = rng() % 50 != 0;  // 2% already untrusted
    h.max_violations = 3;
    h.violations = static_cast<uint32_t>(rng() % 5);  // 1 in 5 above the limit
    h.free_memory_mb = 1024 * (rng() % 64);           // 0..63 GiB free
    h.free_vm_slots = static_cast<uint32_t>(rng() % 16);
    if (i == kVictim) {
      h.violations = 0;
      h.attested_ok = true;
    }
    w->hosts.push_back(h);
  }
  const std::vector<RequestMatrix> menu = Menu();
  // Each VM runs on a host that covers it (as the agent would have placed it).
  auto covered_request = [&](const HostState& h) {
    const CapabilityRow* row = w->table.Find(h.architecture);
    for (int tries = 0; tries < 8; ++tries) {
      const RequestMatrix& m = menu[rng() % menu.size()];
      if (Covers(m, *row)) return m;
    }
    return RequestMatrix();
  };
  for (int i = 0; i < kVms; ++i) {
    const int host = i < kVictimVms ? kVictim : 1 + static_cast<int>(rng() % (kHosts - 1));
    w->vms.push_back(VmState{"vm-" + std::to_string(i), covered_request(w->hosts[host]),
                             256 * (1 + rng() % 16), w->hosts[host].id});
  }
  w->cluster = std::move(Cluster::Create(w->table, w->hosts, w->vms)).value();
  return w;
}

const World& TheWorld() {
  static const World* w = BuildWorld();
  return *w;
}

HostState Dropped() {
  HostState h = TheWorld().hosts[kVictim];
  h.attested_ok = false;
  return h;
}

// The relocation plan for the 1,000 VMs of a host that failed attestation. Timed: UpdateHost
// (re-index the host, find its uncovered VMs, plan all of them, apply the plan to the model).
// Not timed: a fresh copy of the 100,000-VM cluster for each iteration.
void BM_RelocateHostDrop(benchmark::State& state) {
  const World& w = TheWorld();
  size_t moves = 0, unplaced = 0;
  for (auto _ : state) {
    state.PauseTiming();
    Cluster c = w.cluster;
    state.ResumeTiming();
    Result<RelocationPlan> plan = c.UpdateHost(Dropped());
    benchmark::DoNotOptimize(plan);
    moves = plan->moves.size();
    unplaced = plan->unplaced.size();
    state.PauseTiming();
    { Cluster gone = std::move(c); }  // destroy untimed
    state.ResumeTiming();
  }
  state.counters["vms"] = static_cast<double>(moves + unplaced);
  state.counters["moved"] = static_cast<double>(moves);
  state.counters["unplaced"] = static_cast<double>(unplaced);
}
BENCHMARK(BM_RelocateHostDrop)->Unit(benchmark::kMillisecond)->Iterations(20);

// The same plan without an index: for each VM, scan all 10,000 hosts (their rows precomputed as
// bitmasks, so one AND per host) and keep the best that fits; same order and tie-break.
void BM_RelocateHostDropScan(benchmark::State& state) {
  const World& w = TheWorld();
  std::vector<VmState> affected(w.vms.begin(), w.vms.begin() + kVictimVms);
  size_t moves = 0;
  for (auto _ : state) {
    std::vector<HostState> hosts = w.hosts;
    hosts[kVictim] = Dropped();
    std::vector<EffectiveRow> rows;
    rows.reserve(hosts.size());
    for (const HostState& h : hosts) rows.push_back(EffectiveRowOf(h, w.table));
    std::vector<VmState> order = affected;
    std::sort(order.begin(), order.end(), [](const VmState& a, const VmState& b) {
      const size_t ca = a.request.cells().size(), cb = b.request.cells().size();
      return std::tie(cb, b.memory_mb, a.id) < std::tie(ca, a.memory_mb, b.id);
    });
    moves = 0;
    for (const VmState& vm : order) {
      size_t best = hosts.size();
      for (size_t i = 0; i < hosts.size(); ++i) {
        const HostState& h = hosts[i];
        if (!Covers(vm.request, rows[i]) || h.free_vm_slots == 0 || h.free_memory_mb < vm.memory_mb)
          continue;
        if (best == hosts.size() ||
            std::tie(h.free_memory_mb, h.free_vm_slots, hosts[best].id) >
                std::tie(hosts[best].free_memory_mb, hosts[best].free_vm_slots, h.id))
          best = i;
      }
      if (best == hosts.size()) continue;
      hosts[best].free_memory_mb -= vm.memory_mb;
      hosts[best].free_vm_slots -= 1;
      ++moves;
    }
    benchmark::DoNotOptimize(moves);
  }
  state.counters["moved"] = static_cast<double>(moves);
}
BENCHMARK(BM_RelocateHostDropScan)->Unit(benchmark::kMillisecond)->Iterations(5);

// Indexing 10,000 hosts and 100,000 VMs (Cluster::Create), once per policy agent start.
void BM_BuildCluster(benchmark::State& state) {
  const World& w = TheWorld();
  for (auto _ : state) {
    Result<Cluster> c = Cluster::Create(w.table, w.hosts, w.vms);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_BuildCluster)->Unit(benchmark::kMillisecond)->Iterations(3);

// Deployment mode: one new VM (VM-B's request) into the 10,000-host cluster.
void BM_Deploy(benchmark::State& state) {
  const World& w = TheWorld();
  Cluster c = w.cluster;
  const RequestMatrix vm_b = *RequestMatrix::FromOptions({1, 2}, Protection::kCI);
  uint64_t n = 0;
  for (auto _ : state) {
    Result<std::string> host = c.Deploy(VmState{"new-" + std::to_string(n++), vm_b, 256, ""});
    benchmark::DoNotOptimize(host);
  }
}
BENCHMARK(BM_Deploy)->Unit(benchmark::kMicrosecond)->Iterations(2000);

}  // namespace
}  // namespace sod::policy

BENCHMARK_MAIN();
