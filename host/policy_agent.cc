#include "host/policy_agent.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "host/admin_ops.h"
#include "policy/placement.h"

namespace sod {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "; ") + x;
  return s;
}

// MemAvailable of this machine in MiB (0 when unknown).
uint64_t FreeMemoryMb() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb / 1024;
  }
  return 0;
}

json RequestJson(const std::string& security) {
  if (security.empty()) return nullptr;
  json j = json::parse(security, nullptr, false);
  return j.is_discarded() ? json(nullptr) : j;
}

}  // namespace

std::string_view RelocationClassName(RelocationClass c) {
  switch (c) {
    case RelocationClass::kUntrustedHost:
      return "untrusted-host";
    case RelocationClass::kRequirementChanged:
      return "requirement-changed";
    case RelocationClass::kMovingTarget:
      return "moving-target";
  }
  return "unknown";
}

void OrderRelocations(std::vector<PendingRelocation>& moves) {
  std::sort(moves.begin(), moves.end(), [](const PendingRelocation& a, const PendingRelocation& b) {
    if (a.why != b.why) return a.why < b.why;
    if (a.requested_cells != b.requested_cells) return a.requested_cells > b.requested_cells;
    if (a.memory_mb != b.memory_mb) return a.memory_mb > b.memory_mb;
    return a.vm < b.vm;
  });
}

Result<policy::RequestMatrix> ResolveSecurity(const policy::PackageCatalog& packages,
                                              const std::string& security) {
  if (security.empty()) return policy::RequestMatrix{};
  json j = json::parse(security, nullptr, false);
  if (j.is_discarded()) return Error(Errc::kMalformed, "security request: not JSON");
  SOD_ASSIGN_OR_RETURN(policy::SecurityRequest r, policy::SecurityRequestFromJson(j));
  return packages.Resolve(r);
}

Result<std::unique_ptr<PolicyAgent>> PolicyAgent::Create(HostDaemon& daemon,
                                                         AttestationService& attestation,
                                                         MigrationService& migrations,
                                                         PolicyAgentConfig config) {
  const std::string& arch = attestation.architecture();
  if (config.table.Find(arch) == nullptr) {
    std::string known;
    for (const auto& r : config.table.rows()) known += (known.empty() ? "" : ", ") + r.name;
    return Error(Errc::kInvalidArgument,
                 "--architecture \"" + arch +
                     "\" is not a row of the capability table (rows: " + known + ")");
  }
  std::set<std::string> seen;
  for (const PolicyPeer& p : config.peers) {
    if (p.id == daemon.config().host_id)
      return Error(Errc::kInvalidArgument, "--peer " + p.id + ": that is this host");
    if (!seen.insert(p.id).second)
      return Error(Errc::kInvalidArgument, "--peer " + p.id + " given twice");
  }
  if (config.max_outgoing == 0)
    return Error(Errc::kInvalidArgument, "--max-outgoing must be at least 1");
  return std::unique_ptr<PolicyAgent>(
      new PolicyAgent(daemon, attestation, migrations, std::move(config)));
}

PolicyAgent::PolicyAgent(HostDaemon& d, AttestationService& a, MigrationService& m,
                         PolicyAgentConfig c)
    : d_(d), attest_(a), migrations_(m), config_(std::move(c)) {}

PolicyAgent::~PolicyAgent() { Stop(); }

void PolicyAgent::Audit(std::string_view kind, const json& data) {
  if (d_.events()) d_.events()(kind, data);
}

void PolicyAgent::Install() {
  d_.SetVmSpecCheck([this](const VmSpec& spec) { return CheckSpec(spec); });
  migrations_.set_admit(
      [this](const VmSpec& spec, const std::string& from) { return Admit(spec, from); });
  d_.admin().Register("policy.set", [this](const json& req, AdminEvents&) { return OpSet(req); });
  d_.admin().Register("policy.show", [this](const json& req, AdminEvents&) { return OpShow(req); });
  d_.admin().Register("policy.explain",
                      [this](const json& req, AdminEvents&) { return OpExplain(req); });
  d_.admin().Register("hosts", [this](const json& req, AdminEvents&) { return OpHosts(req); });
  d_.admin().Register("policy.place",
                      [this](const json& req, AdminEvents&) { return OpPlace(req); });
}

void PolicyAgent::Start() {
  if (config_.interval.count() == 0 || monitor_.joinable()) return;
  monitor_ = std::thread([this] { Loop(); });
}

void PolicyAgent::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  ReapWorkers(/*all=*/true);
}

void PolicyAgent::ReapWorkers(bool all) {
  std::vector<Worker> finished;
  {
    std::lock_guard lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (all || *it->done) {
        finished.push_back(std::move(*it));
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Worker& w : finished)
    if (w.thread.joinable()) w.thread.join();
}

// ---- trust --------------------------------------------------------------------------------------

PolicyAgent::Known PolicyAgent::SampleSelf() {
  Known k;
  k.sampled = true;
  k.when = Clock::now();
  k.state.id = d_.config().host_id;
  k.state.architecture = attest_.architecture();
  k.state.max_violations = attest_.max_violations();
  Result<TrustSample> t = attest_.CheckSelf();
  if (!t.ok()) {
    k.state.attested_ok = false;
    k.reasons.push_back("no evidence: " + t.status().ToString());
  } else {
    k.state.attested_ok = t->attested_ok;
    k.state.violations = t->violations;
    k.reasons = t->reasons;
  }
  uint32_t vms = 0;
  for (const VmInfo& i : d_.registry().List()) {
    const VmPhase p = i.record.phase;
    if (p != VmPhase::kMigratedAway && p != VmPhase::kLost) ++vms;
  }
  k.state.free_vm_slots = vms >= config_.vm_slots ? 0 : config_.vm_slots - vms;
  k.state.free_memory_mb = FreeMemoryMb();
  return k;
}

PolicyAgent::Known PolicyAgent::SamplePeer(const PolicyPeer& peer) {
  Known k;
  k.sampled = true;
  k.when = Clock::now();
  k.state.id = peer.id;
  // The architecture an operator enrolled, never the peer's own claim.
  std::optional<std::string> arch = attest_.EnrolledArchitecture(peer.id);
  k.state.architecture = arch.value_or("");
  TrustSample t = attest_.ProbePeer(peer.id, peer.connect, peer.port);
  k.state.attested_ok = t.attested_ok && arch.has_value();
  k.state.violations = t.violations;
  k.state.max_violations = t.max_violations;
  k.reasons = t.reasons;
  if (!arch) k.reasons.insert(k.reasons.begin(), "not enrolled here");
  // Peers report no capacity: one VM per planning round, memory not limited (policy_agent.h).
  k.state.free_vm_slots = 1;
  k.state.free_memory_mb = UINT32_MAX;
  return k;
}

std::vector<policy::HostState> PolicyAgent::HostStates() {
  std::vector<policy::HostState> hosts = {self_.state};
  for (const PolicyPeer& p : config_.peers) {
    auto it = peers_.find(p.id);
    if (it != peers_.end()) {
      hosts.push_back(it->second.state);
    } else {
      policy::HostState h;
      h.id = p.id;
      h.architecture = "";
      hosts.push_back(h);  // not sampled yet: untrusted
    }
  }
  return hosts;
}

const PolicyPeer* PolicyAgent::FindPeer(const std::string& id) const {
  for (const PolicyPeer& p : config_.peers)
    if (p.id == id) return &p;
  return nullptr;
}

// ---- checks
// ---------------------------------------------------------------------------------------

Status PolicyAgent::CoveredHere(const policy::RequestMatrix& request) {
  Known self;
  {
    std::lock_guard lock(mu_);
    self = self_;
  }
  if (!self.sampled || Clock::now() - self.when > std::chrono::seconds(5)) {
    self = SampleSelf();
    std::lock_guard lock(mu_);
    self_ = self;
  }
  policy::Explanation x = policy::Explain(request, self.state, config_.table);
  if (x.covered) return Status::Ok();
  std::vector<std::string> why = x.reasons;
  for (const auto& r : self.reasons) why.push_back(r);
  return Error(Errc::kRefused, "host " + self.state.id + " does not cover " + request.ToString() +
                                   ": " + Join(why));
}

Status PolicyAgent::CheckSpec(const VmSpec& spec) {
  Result<policy::RequestMatrix> m = ResolveSecurity(config_.packages, spec.security);
  if (!m.ok()) return m.status().WithContext("vm " + spec.name + ": security request");
  if (m->empty()) return Status::Ok();  // nothing requested: runs anywhere, as before
  return CoveredHere(*m).WithContext("vm " + spec.name);
}

Status PolicyAgent::Admit(const VmSpec& spec, const std::string& from) {
  Result<policy::RequestMatrix> m = ResolveSecurity(config_.packages, spec.security);
  if (!m.ok())
    return m.status().WithContext("incoming vm " + spec.name + " from " + from +
                                  ": security request");
  if (m->empty()) return Status::Ok();
  return CoveredHere(*m).WithContext("incoming vm " + spec.name);
}

// ---- the agent
// ------------------------------------------------------------------------------------

void PolicyAgent::Loop() {
  if (config_.peers.empty())
    Audit("policy.agent", {{"state", "monitoring only: no --peer to relocate VMs to"}});
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (stop_) return;
    }
    Round();
    ReapWorkers(false);
    std::unique_lock lock(mu_);
    wake_.wait_for(lock, config_.interval, [this] { return stop_ || poke_; });
    poke_ = false;
    if (stop_) return;
  }
}

void PolicyAgent::Round() {
  // 1. Evidence: this host, then every peer (fresh sessions, outside the lock).
  Known self = SampleSelf();
  std::map<std::string, Known> peers;
  for (const PolicyPeer& p : config_.peers) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    peers[p.id] = SamplePeer(p);
  }
  std::unique_lock lock(mu_);
  auto trusted = [&](const Known& k) { return policy::IsTrusted(k.state, config_.table); };
  auto note_change = [&](const Known& before, const Known& now) {
    if (before.sampled && trusted(before) == trusted(now)) return;
    if (!before.sampled && trusted(now)) return;
    json j = {{"host", now.state.id},
              {"trusted", trusted(now)},
              {"violations", now.state.violations},
              {"reasons", now.reasons}};
    for (auto& r : policy::UntrustedReasons(now.state, config_.table)) j["policy"].push_back(r);
    Audit("policy.trust-changed", j);
  };
  note_change(self_, self);
  self_ = self;
  for (auto& [id, k] : peers) {
    auto it = peers_.find(id);
    note_change(it == peers_.end() ? Known{} : it->second, k);
    peers_[id] = k;
  }
  if (config_.peers.empty()) return;

  // 2. The model: this host, its peers, the VMs running here that nobody is moving.
  std::vector<policy::VmState> vms;
  std::map<std::string, policy::RequestMatrix> requests;
  for (const VmInfo& i : d_.registry().List()) {
    if (i.leased || in_flight_.count(i.spec.name)) continue;
    if (auto r = retry_after_.find(i.spec.name); r != retry_after_.end()) {
      if (Clock::now() < r->second) continue;  // its last relocation failed: wait a little
      retry_after_.erase(r);
    }
    if (i.record.phase != VmPhase::kRunning && i.record.phase != VmPhase::kPaused) continue;
    Result<policy::RequestMatrix> m = ResolveSecurity(config_.packages, i.spec.security);
    if (!m.ok()) continue;  // refused at start / set / admission; a hand-edited spec stays put
    requests[i.spec.name] = *m;
    vms.push_back({i.spec.name, *m, i.spec.memory_mb, self_.state.id});
  }
  Result<policy::Cluster> cluster = policy::Cluster::Create(config_.table, HostStates(), vms);
  if (!cluster.ok()) {
    Audit("policy.error", {{"error", cluster.status().ToString()}});
    return;
  }
  // A VM that left (or was never planned here) starts a new moving-target period when it comes
  // back.
  for (auto it = last_moved_.begin(); it != last_moved_.end();) {
    const bool here = requests.count(it->first) > 0 || in_flight_.count(it->first) > 0;
    it = here ? std::next(it) : last_moved_.erase(it);
  }
  // Moving-target defense: plan each VM's periodic move on a copy (self excluded) first.
  std::vector<policy::Move> mtd;
  if (config_.moving_target.count() > 0) {
    const auto now = Clock::now();
    for (const policy::VmState& vm : vms) {
      auto [it, fresh] = last_moved_.try_emplace(vm.id, now);
      if (fresh || now - it->second < config_.moving_target) continue;
      policy::HostState away = self_.state;
      away.free_vm_slots = 0;  // never "move" to where it is
      policy::Cluster copy = *cluster;
      (void)copy.UpdateHost(away);
      Result<std::string> to = copy.ChooseHost(vm.request, vm.memory_mb);
      if (to.ok())
        mtd.push_back({vm.id, self_.state.id, *to,
                       "moving-target defense: periodic relocation every " +
                           std::to_string(config_.moving_target.count()) + " s"});
    }
  }
  policy::RelocationPlan plan = cluster->RelocateUncovered();
  // Everything that wants to move, in priority order (OrderRelocations); at most max_outgoing
  // run at once, the rest wait for a later round.
  const bool self_trusted = policy::IsTrusted(self_.state, config_.table);
  std::vector<PendingRelocation> pending;
  std::set<std::string> planned;
  auto pend = [&](const policy::Move& m, RelocationClass why) {
    pending.push_back({m.vm_id, why, requests[m.vm_id].cells().size(), 0, m.to, m.reason});
    for (const policy::VmState& vm : vms)
      if (vm.id == m.vm_id) pending.back().memory_mb = vm.memory_mb;
  };
  for (const policy::Move& m : plan.moves) {
    planned.insert(m.vm_id);
    no_target_.erase(m.vm_id);
    pend(m, self_trusted ? RelocationClass::kRequirementChanged : RelocationClass::kUntrustedHost);
  }
  for (const policy::Move& m : mtd)
    if (!planned.count(m.vm_id)) pend(m, RelocationClass::kMovingTarget);
  OrderRelocations(pending);
  struct Start {
    std::string vm, to, why, trigger;
    RelocationClass priority;
  };
  std::vector<Start> starts;
  for (const PendingRelocation& p : pending) {
    if (in_flight_.size() + starts.size() >= config_.max_outgoing) break;  // next round
    std::string trigger = "moving-target defense";
    if (p.why == RelocationClass::kUntrustedHost)
      trigger = "host trust dropped";
    else if (p.why == RelocationClass::kRequirementChanged)
      trigger = changed_.count(p.vm) ? "requirement changed (policy set)"
                                     : "request not covered by this host";
    starts.push_back({p.vm, p.to, p.reason, trigger, p.why});
  }
  const auto now = Clock::now();
  for (const policy::Unplaced& u : plan.unplaced) {
    planned.insert(u.vm_id);
    auto it = no_target_.find(u.vm_id);
    if (it != no_target_.end() && it->second.first == u.reason &&
        now - it->second.second < config_.no_target_repeat)
      continue;
    no_target_[u.vm_id] = {u.reason, now};
    json explain = json::array();
    for (const policy::HostState& h : HostStates()) {
      json x = policy::Explain(requests[u.vm_id], h, config_.table).ToJson();
      const Known* k = h.id == self_.state.id ? &self_ : nullptr;
      if (auto p = peers_.find(h.id); p != peers_.end()) k = &p->second;
      if (k && !k->reasons.empty()) x["monitor"] = k->reasons;
      explain.push_back(x);
    }
    Audit("policy.no-target", {{"vm", u.vm_id},
                               {"host", u.host},
                               {"reason", u.reason},
                               {"action", "kept here; retried every interval"},
                               {"explain", explain}});
  }
  // VMs covered again: a later no-target is news again.
  for (auto it = no_target_.begin(); it != no_target_.end();)
    it = planned.count(it->first) ? std::next(it) : no_target_.erase(it);
  for (const Start& st : starts) {
    in_flight_.insert(st.vm);
    changed_.erase(st.vm);
    last_moved_[st.vm] = now;
  }
  const size_t waiting = pending.size() - starts.size();
  lock.unlock();
  for (const Start& st : starts)
    StartMove(st.vm, self.state.id, st.to, st.why, st.trigger, st.priority, waiting);
}

void PolicyAgent::StartMove(const std::string& vm, const std::string& from, const std::string& to,
                            const std::string& why, const std::string& trigger,
                            RelocationClass priority, size_t waiting) {
  const PolicyPeer* peer = FindPeer(to);
  Audit("policy.relocate", {{"vm", vm},
                            {"from", from},
                            {"to", to},
                            {"why", why},
                            {"trigger", trigger},
                            {"priority", std::string(RelocationClassName(priority))},
                            {"waiting", waiting}});
  auto done = std::make_shared<bool>(false);
  json req = {{"name", vm},
              {"to", to},
              {"connect", peer ? peer->connect : to},
              {"port", static_cast<uint64_t>(peer ? peer->port : 7400)}};
  std::thread t([this, vm, to, req, done] {
    Result<json> r = migrations_.MigrateVm(req, {});
    if (r.ok()) {
      Audit("policy.relocated", {{"vm", vm},
                                 {"to", to},
                                 {"outcome", r->value("outcome", std::string())},
                                 {"migration_id", r->value("migration_id", std::string())}});
    } else {
      Audit("policy.relocate-failed", {{"vm", vm},
                                       {"to", to},
                                       {"error", r.status().ToString()},
                                       {"action", "kept here; retried next interval"}});
    }
    std::lock_guard lock(mu_);
    in_flight_.erase(vm);
    *done = true;
    if (r.ok()) {
      poke_ = true;  // plan the next move now
      wake_.notify_all();
    } else {
      retry_after_[vm] = Clock::now() + std::max<Clock::duration>(config_.interval, kRetryDelay);
    }
  });
  std::lock_guard lock(mu_);
  workers_.push_back({std::move(t), done});
}

// ---- admin ops
// ------------------------------------------------------------------------------------

Result<json> PolicyAgent::OpSet(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name", "request"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  SOD_RETURN_IF_ERROR(ValidateVmName(name));
  if (!req.contains("request") || !req["request"].is_object())
    return Error(Errc::kInvalidArgument, "policy.set: \"request\" must be an object");
  const std::string security = req["request"].dump();
  SOD_ASSIGN_OR_RETURN(policy::RequestMatrix m, ResolveSecurity(config_.packages, security));
  SOD_ASSIGN_OR_RETURN(VmInfo before, d_.registry().Show(name));
  SOD_RETURN_IF_ERROR(d_.registry().SetSecurity(name, security));
  Audit("policy.request-changed", {{"vm", name},
                                   {"request", req["request"]},
                                   {"was", RequestJson(before.spec.security)},
                                   {"matrix", policy::RequestMatrixToJson(m)},
                                   {"cells", m.ToString()}});
  json here;
  {
    std::lock_guard lock(mu_);
    changed_.insert(name);
    poke_ = true;
    here = policy::Explain(m, self_.state, config_.table).ToJson();
  }
  wake_.notify_all();
  return json{{"vm", name},
              {"request", req["request"]},
              {"matrix", policy::RequestMatrixToJson(m)},
              {"cells", m.ToString()},
              {"here", here}};
}

Result<json> PolicyAgent::OpShow(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  SOD_RETURN_IF_ERROR(ValidateVmName(name));
  SOD_ASSIGN_OR_RETURN(VmInfo info, d_.registry().Show(name));
  SOD_ASSIGN_OR_RETURN(policy::RequestMatrix m,
                       ResolveSecurity(config_.packages, info.spec.security));
  std::lock_guard lock(mu_);
  return json{{"vm", name},
              {"host", self_.state.id},
              {"phase", std::string(VmPhaseName(info.record.phase))},
              {"request", RequestJson(info.spec.security)},
              {"matrix", policy::RequestMatrixToJson(m)},
              {"cells", m.ToString()},
              {"here", policy::Explain(m, self_.state, config_.table).ToJson()},
              {"moving", in_flight_.count(name) > 0}};
}

Result<json> PolicyAgent::OpExplain(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name", "host"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  SOD_ASSIGN_OR_RETURN(std::string host, RequestString(req, "host"));
  SOD_RETURN_IF_ERROR(ValidateVmName(name));
  SOD_ASSIGN_OR_RETURN(VmInfo info, d_.registry().Show(name));
  SOD_ASSIGN_OR_RETURN(policy::RequestMatrix m,
                       ResolveSecurity(config_.packages, info.spec.security));
  if (host != d_.config().host_id && !FindPeer(host)) {
    std::string known = d_.config().host_id;
    for (const PolicyPeer& p : config_.peers) known += ", " + p.id;
    return Error(Errc::kNotFound, "unknown host \"" + host + "\" (known: " + known + ")");
  }
  std::lock_guard lock(mu_);
  for (const policy::HostState& h : HostStates()) {
    if (h.id != host) continue;
    json x = policy::Explain(m, h, config_.table).ToJson();
    const Known* k = host == self_.state.id ? &self_ : nullptr;
    if (auto p = peers_.find(host); p != peers_.end()) k = &p->second;
    x["monitor"] = k ? json(k->reasons) : json::array();
    x["sampled"] = k && k->sampled;
    x["vm"] = name;
    x["cells"] = m.ToString();
    return x;
  }
  return Error(Errc::kNotFound, "unknown host \"" + host + "\"");
}

Result<json> PolicyAgent::OpHosts(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {}));
  std::lock_guard lock(mu_);
  json hosts = json::array();
  const auto now = Clock::now();
  auto one = [&](const Known& k, const std::string& id, bool self) {
    json j = {{"host", id},
              {"self", self},
              {"architecture", k.state.architecture},
              {"trusted", k.sampled && policy::IsTrusted(k.state, config_.table)},
              {"attested", k.state.attested_ok},
              {"violations", k.state.violations},
              {"max_violations", k.state.max_violations},
              {"sampled", k.sampled}};
    json reasons = json::array();
    if (!k.sampled) reasons.push_back("not sampled yet");
    for (auto& r : policy::UntrustedReasons(k.state, config_.table))
      if (k.sampled) reasons.push_back(r);
    for (const auto& r : k.reasons) reasons.push_back(r);
    j["reasons"] = reasons;
    if (self) {
      j["free_vm_slots"] = k.state.free_vm_slots;
      j["free_memory_mb"] = k.state.free_memory_mb;
    } else {
      j["free_vm_slots"] = nullptr;  // peers report no capacity (policy_agent.h)
      j["free_memory_mb"] = nullptr;
    }
    if (k.sampled)
      j["age_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(now - k.when).count();
    const policy::CapabilityRow* row = config_.table.Find(k.state.architecture);
    j["protects"] = row ? row->Protects().ToEntityString() : "";
    hosts.push_back(j);
  };
  one(self_, d_.config().host_id, true);
  for (const PolicyPeer& p : config_.peers) {
    auto it = peers_.find(p.id);
    one(it == peers_.end() ? Known{} : it->second, p.id, false);
  }
  return json{{"hosts", hosts},
              {"interval_ms", config_.interval.count()},
              {"max_outgoing", config_.max_outgoing},
              {"moving", std::vector<std::string>(in_flight_.begin(), in_flight_.end())}};
}

Result<json> PolicyAgent::OpPlace(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"spec"}));
  if (!req.contains("spec") || !req["spec"].is_object())
    return Error(Errc::kInvalidArgument, "policy.place: \"spec\" must be an object");
  SOD_ASSIGN_OR_RETURN(VmSpec spec, VmSpecFromJson(req["spec"]));
  Result<policy::RequestMatrix> m = ResolveSecurity(config_.packages, spec.security);
  if (!m.ok()) return m.status().WithContext("vm " + spec.name + ": security request");
  Result<VmInfo> known_here = d_.registry().Show(spec.name);
  const bool exists_here = known_here.ok();
  {
    // This host's own view must be fresh enough to judge its capacity (as vm.start does).
    std::unique_lock lock(mu_);
    if (!self_.sampled || Clock::now() - self_.when > std::chrono::seconds(5)) {
      lock.unlock();
      Known self = SampleSelf();
      lock.lock();
      self_ = self;
    }
  }
  std::lock_guard lock(mu_);
  std::vector<policy::HostState> states = HostStates();
  if (exists_here) states[0].free_vm_slots = 0;  // a second VM of that name cannot start here
  SOD_ASSIGN_OR_RETURN(policy::Cluster cluster, policy::Cluster::Create(config_.table, states, {}));
  Result<std::string> chosen = cluster.ChooseHost(*m, spec.memory_mb);
  json hosts = json::array();
  for (const policy::HostState& h : states) {
    const bool self = h.id == self_.state.id;
    json x = policy::Explain(*m, h, config_.table).ToJson();
    const Known* k = self ? &self_ : nullptr;
    if (auto p = peers_.find(h.id); p != peers_.end()) k = &p->second;
    x["self"] = self;
    x["sampled"] = k != nullptr && k->sampled;
    x["monitor"] = k ? json(k->reasons) : json::array({"not sampled yet"});
    json capacity = json::array();
    if (self) {
      x["free_vm_slots"] = h.free_vm_slots;
      x["free_memory_mb"] = h.free_memory_mb;
      if (exists_here)
        capacity.push_back("a VM named \"" + spec.name + "\" is already known here (" +
                           std::string(VmPhaseName(known_here->record.phase)) + ")");
      else if (h.free_vm_slots == 0)
        capacity.push_back("no free VM slot (--vm-slots " + std::to_string(config_.vm_slots) + ")");
      if (h.free_memory_mb < spec.memory_mb)
        capacity.push_back(std::to_string(h.free_memory_mb) + " MB free, " +
                           std::to_string(spec.memory_mb) + " MB needed");
    } else {
      x["free_vm_slots"] = nullptr;  // peers report no capacity (policy_agent.h)
      x["free_memory_mb"] = nullptr;
    }
    x["capacity"] = capacity;
    x["can_take"] = x.value("covered", false) && capacity.empty();
    x["chosen"] = chosen.ok() && *chosen == h.id;
    hosts.push_back(x);
  }
  json reply = {{"vm", spec.name},
                {"memory_mb", spec.memory_mb},
                {"request", RequestJson(spec.security)},
                {"matrix", policy::RequestMatrixToJson(*m)},
                {"cells", m->ToString()},
                {"hosts", hosts},
                {"chosen", chosen.ok() ? json(*chosen) : json(nullptr)}};
  if (!chosen.ok()) reply["reason"] = chosen.status().message();
  return reply;
}

}  // namespace sod
