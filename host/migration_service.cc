#include "host/migration_service.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>

#include "host/admin_ops.h"
#include "migrate/migration_destination.h"
#include "migrate/migration_source.h"
#include "migrate/session.h"
#include "migrate/vm.h"
#include "vtpm/vtpm_host.h"

namespace sod {

namespace {

using json = nlohmann::json;

json ProgressJson(const MigrationProgress& p) {
  return {{"phase", p.phase},
          {"round", p.round},
          {"stream_bytes", p.stream_bytes},
          {"wire_bytes", p.wire_bytes},
          {"ram_total", p.ram_total},
          {"ram_remaining", p.ram_remaining},
          {"dirty_pages_rate", p.dirty_pages_rate},
          {"expected_downtime_ms", p.expected_downtime_ms},
          {"mbps", p.mbps},
          {"elapsed_s", p.elapsed_s}};
}

json PhasesJson(const PhaseTimes& t) {
  json j = json::array();
  for (const auto& [name, ms] : t.marks()) j.push_back({{"phase", name}, {"ms", std::round(ms * 10) / 10}});
  return j;
}

json SummaryJson(const SourceReport& r) {
  return {{"phases_ms", PhasesJson(r.phases)},
          {"total_s", r.total_s},
          {"ram_pages_repaired", r.ram_pages_repaired},
          {"ram_check", r.ram_check},
          {"ram_pages_read_at_pause", r.ram_pages_read_at_pause},
          {"downtime_ms", r.downtime_ms},
          {"qemu_downtime_ms", r.qemu_downtime_ms},
          {"downtime_target_ms", r.downtime_target_ms},
          {"stream_bytes", r.stream_bytes},
          {"wire_bytes", r.wire_bytes},
          {"rounds", r.rounds}};
}

json SignedReceiptJson(const SignedReceipt& r) {
  json j = ToJson(r);
  j["encoded"] = ToHex(EncodeReceipt(r.receipt));  // what the signatures cover, verifiable later
  return j;
}


std::string PendingPath(const std::string& state_dir, const MigrationId& id) {
  return state_dir + "/receipts/" + MigrationIdHex(id) + ".pending.json";
}

}  // namespace

Result<std::unique_ptr<MigrationService>> MigrationService::Create(HostDaemon& d) {
  const HostDaemonConfig& c = d.config();
  SOD_ASSIGN_OR_RETURN(auto signer, HostSigner::Load(c.tls_dir + "/" + c.host_id + ".key"));
  SOD_ASSIGN_OR_RETURN(auto ledger, FileOutcomeLedger::Open(c.state_dir + "/outcomes"));
  return std::unique_ptr<MigrationService>(
      new MigrationService(d, std::move(signer), std::move(ledger)));
}

void MigrationService::ResolveAfterRestart() {
  for (const VmInfo& info : d_.registry().List()) {
    if (info.record.migration_id.empty()) continue;
    // An incoming VM whose QEMU ended while sodd was down (QEMU exits when its incoming stream
    // breaks) is found "lost". Outgoing migrations keep a pending file; incoming ones have none.
    if (info.record.phase == VmPhase::kLost) {
      auto id = MigrationIdFromHex(info.record.migration_id);
      if (!id.ok() || std::filesystem::exists(PendingPath(d_.config().state_dir, *id))) continue;
      auto decided = ledger_->Decide(*id, MigrationOutcome::kAborted, info.spec.name);  // fence
      if (decided.ok() && *decided != MigrationOutcome::kCommitted) {
        (void)d_.registry().Stop(info.spec.name, /*force=*/true);
        Audit("migration.restart-resolution", {{"vm", info.spec.name},
                                               {"migration_id", info.record.migration_id},
                                               {"direction", "in"},
                                               {"action", "forgotten (incoming, never committed)"}});
      }
      continue;
    }
    if (info.record.phase != VmPhase::kInDoubt) continue;
    const std::string& name = info.spec.name;
    auto id = MigrationIdFromHex(info.record.migration_id);
    if (!id.ok()) continue;
    const bool incoming = info.record.note.find("migrating-in") != std::string::npos;
    auto lease = d_.registry().LeaseForRecovery(name);
    if (!lease.ok()) continue;
    Vm& vm = (*lease)->vm();
    auto state = vm.RunState();
    std::string action;
    if (incoming) {
      auto decided = ledger_->Decide(*id, MigrationOutcome::kAborted, name);  // fence
      if (decided.ok() && *decided == MigrationOutcome::kCommitted) {
        if (state.ok() && *state != "running") (void)vm.Resume();
        if (vtpm::VtpmHost* vh = d_.registry().vtpm_host(); vh && info.record.vtpm_epoch != 0)
          (void)vh->RecordEpoch(name, info.record.vtpm_epoch);  // it holds this epoch now
        (void)(*lease)->Finish(LeaseOutcome::kReturned, "committed before the restart");
        action = "kept (committed)";
      } else {
        (void)(*lease)->Finish(LeaseOutcome::kReturned);
        (void)d_.registry().Stop(name, /*force=*/true);
        action = "removed (not committed)";
      }
    } else if (state.ok() && *state == "running") {
      (void)(*lease)->Finish(LeaseOutcome::kReturned, "migration interrupted by a sodd restart");
      action = "returned (still running here)";
    } else if (state.ok() && *state != "postmigrate") {
      // QEMU never completed the migration, so no commit was sent: resume here.
      (void)vm.qmp().Execute("migrate_cancel");
      Status resumed = vm.Resume();
      (void)(*lease)->Finish(LeaseOutcome::kReturned,
                             resumed.ok() ? "migration interrupted, resumed here"
                                          : "resume failed: " + resumed.ToString());
      action = resumed.ok() ? "resumed (commit never sent)" : "resume failed";
    } else {
      (void)(*lease)->Finish(LeaseOutcome::kInDoubt, info.record.note);
      action = "left in doubt (run sodctl recover " + name + ")";
    }
    Audit("migration.restart-resolution", {{"vm", name},
                                           {"migration_id", info.record.migration_id},
                                           {"direction", incoming ? "in" : "out"},
                                           {"action", action}});
  }
}

void MigrationService::Install() {
  ResolveAfterRestart();
  d_.admin().Register("migrate", [this](const json& req, AdminEvents& ev) {
    return MigrateVm(req, [&ev](std::string_view kind, const json& f) { (void)ev.Emit(kind, f); });
  });
  d_.admin().Register("recover", [this](const json& req, AdminEvents& ev) {
    return Recover(req, ev);
  });
  d_.admin().Register("migrate.cancel", [this](const json& req, AdminEvents&) { return Cancel(req); });
  d_.SetSessionHandler([this](std::unique_ptr<Session> s) { Serve(std::move(s)); });
}

void MigrationService::Audit(std::string_view kind, const json& data) {
  if (d_.events()) d_.events()(kind, data);
}

Status MigrationService::SaveReceipt(const SignedReceipt& r) {
  const std::string path =
      d_.config().state_dir + "/receipts/" + MigrationIdHex(r.receipt.migration_id) + ".json";
  std::ofstream f(path, std::ios::trunc);
  f << SignedReceiptJson(r).dump(2) << "\n";
  if (!f.good()) return Error(Errc::kIo, "cannot write receipt " + path);
  return Status::Ok();
}

Result<json> MigrationService::MigrateVm(const json& req, const Emit& emit) {
  auto send = [&emit](std::string_view kind, const json& f) {
    if (emit) emit(kind, f);
  };
  SOD_RETURN_IF_ERROR(CheckRequestKeys(
      req, {"name", "to", "connect", "port", "channels", "suite", "verify_ram", "ram_write_log",
            "max_bandwidth", "downtime_limit_ms", "downtime_start_ms", "converge_timeout_s"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  SOD_ASSIGN_OR_RETURN(std::string to, RequestString(req, "to"));
  SOD_ASSIGN_OR_RETURN(std::string connect, RequestOptional<std::string>(req, "connect", to));
  SOD_ASSIGN_OR_RETURN(uint64_t port, RequestOptional<uint64_t>(req, "port", 7400));
  SOD_ASSIGN_OR_RETURN(uint64_t channels,
                       RequestOptional<uint64_t>(req, "channels", d_.session_options().data_channels));
  SOD_ASSIGN_OR_RETURN(std::string suite, RequestOptional<std::string>(req, "suite", "aes-256-gcm"));
  SourceOptions opts;
  SOD_ASSIGN_OR_RETURN(opts.verify_ram, RequestOptional<bool>(req, "verify_ram", true));
  SOD_ASSIGN_OR_RETURN(opts.ram_write_log,
                       RequestOptional<bool>(req, "ram_write_log", opts.ram_write_log));
  SOD_ASSIGN_OR_RETURN(opts.max_bandwidth,
                       RequestOptional<uint64_t>(req, "max_bandwidth", opts.max_bandwidth));
  SOD_ASSIGN_OR_RETURN(opts.downtime_limit_ms,
                       RequestOptional<uint64_t>(req, "downtime_limit_ms", opts.downtime_limit_ms));
  SOD_ASSIGN_OR_RETURN(opts.downtime_start_ms,
                       RequestOptional<uint64_t>(req, "downtime_start_ms", opts.downtime_start_ms));
  SOD_ASSIGN_OR_RETURN(uint64_t converge_s, RequestOptional<uint64_t>(req, "converge_timeout_s", 600));
  if (port == 0 || port > 65535) return Error(Errc::kInvalidArgument, "port: 1..65535");
  if (channels == 0 || channels > kMaxDataChannels)
    return Error(Errc::kInvalidArgument, "channels: 1..16");
  SessionOptions so = d_.session_options();
  so.data_channels = static_cast<uint16_t>(channels);
  if (suite == "aes-256-gcm")
    so.suites = {Suite::kAes256Gcm};
  else if (suite == "hmac-sha256")
    so.suites = {Suite::kHmacSha256};
  else
    return Error(Errc::kInvalidArgument, "suite: aes-256-gcm or hmac-sha256");
  opts.host_id = d_.config().host_id;
  opts.attestation = attestation_;
  opts.converge_timeout = std::chrono::seconds(converge_s);
  SOD_ASSIGN_OR_RETURN(MigrationId id, NewMigrationId());
  opts.migration_id = id;
  const std::string id_hex = MigrationIdHex(id);

  // Cancellable ("migrate.cancel") once leased, until this function returns. Declared before
  // the lease, so the entry goes only after the lease has settled the VM's phase.
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  struct Unregister {
    MigrationService* s;
    std::string name;
    bool armed = false;
    ~Unregister() {
      if (!armed) return;
      {
        std::lock_guard<std::mutex> l(s->running_mu_);
        s->running_.erase(name);
      }
      s->running_cv_.notify_all();
    }
  } unregister{this, name};
  SOD_ASSIGN_OR_RETURN(auto lease, d_.registry().LeaseForMigration(name, id_hex));
  {
    std::lock_guard<std::mutex> l(running_mu_);  // the lease makes the name unique here
    running_[name] = cancel;
    unregister.armed = true;
  }
  opts.cancel_requested = [cancel] { return cancel->load(); };
  // A vTPM moves to the next epoch; its key goes to the destination once that has attested.
  SecretBytes vtpm_key;
  if (lease->vm().spec().tpm) {
    vtpm::VtpmHost* vh = d_.registry().vtpm_host();
    if (!vh) {
      Status no = Error(Errc::kUnsupported, "vm " + name + " has a vTPM and this host keeps none");
      (void)lease->Finish(LeaseOutcome::kReturned, no.ToString());
      return no;
    }
    SOD_ASSIGN_OR_RETURN(VmInfo info, d_.registry().Show(name));
    SOD_ASSIGN_OR_RETURN(vtpm_key, vh->MigrationKey(name, lease->vm().paths().dir));
    opts.vtpm = SourceVtpm{std::max(info.record.vtpm_epoch, vh->SeenEpoch(name)) + 1, &vtpm_key};
  }
  json where = {{"migration_id", id_hex}, {"vm", name},       {"to", to},
                {"connect", connect},     {"port", port},     {"suite", suite},
                {"channels", channels}};
  if (opts.vtpm) where["vtpm_epoch"] = opts.vtpm->epoch;
  Audit("migration.start", where);
  // Where this migration goes, kept until its outcome is known: recovery (also after a sodd
  // restart) needs it to ask the destination.
  const std::string pending = PendingPath(d_.config().state_dir, id);
  {
    std::ofstream f(pending, std::ios::trunc);
    f << where.dump() << "\n";
  }
  send("connecting", where);
  auto session =
      Session::Connect(d_.client_tls(), connect, static_cast<uint16_t>(port), to, so);
  if (!session.ok()) {
    std::filesystem::remove(pending);
    Audit("migration.abort", {{"migration_id", id_hex}, {"vm", name},
                              {"reason", session.status().ToString()}});
    (void)lease->Finish(LeaseOutcome::kReturned, "migration to " + to + " refused: " +
                                                     session.status().ToString());
    return session.status();
  }
  // The TLS session is up (its first bytes went out right after migration.start): the
  // policy benchmark's "trigger" ends here (BENCHMARKS.md section 5).
  Audit("migration.session", {{"migration_id", id_hex},
                              {"vm", name},
                              {"peer", (*session)->peer_host_id()},
                              {"suite", std::string(SuiteName((*session)->negotiated().suite))}});
  send("session", {{"peer", (*session)->peer_host_id()},
                                {"suite", std::string(SuiteName((*session)->negotiated().suite))},
                                {"data_channels", (*session)->data_channel_count()}});
  SourceReport report = MigrateOut(**session, lease->vm(), *signer_, opts,
                                   [&](const MigrationProgress& p) {
                                     send("progress", ProgressJson(p));
                                   });
  json result = {{"migration_id", id_hex},
                 {"outcome", SourceOutcomeName(report.outcome)},
                 {"summary", SummaryJson(report)}};
  if (report.outcome != SourceOutcome::kInDoubt) std::filesystem::remove(pending);
  switch (report.outcome) {
    case SourceOutcome::kCommitted: {
      Status saved = SaveReceipt(*report.receipt);
      json rj = SignedReceiptJson(*report.receipt);
      Audit("migration.commit", {{"role", "source"}, {"receipt", rj}, {"summary", SummaryJson(report)}});
      if (opts.vtpm) {
        // Never take this epoch (or an older one) back; then erase the vTPM here (Phase D).
        Status recorded = d_.registry().vtpm_host()->RecordEpoch(name, opts.vtpm->epoch);
        if (!recorded.ok()) result["warning"] = recorded.ToString();
        lease->set_vtpm_epoch(opts.vtpm->epoch);
      }
      (void)lease->Finish(LeaseOutcome::kMigratedAway, "migrated to " + to + " (" + id_hex + ")");
      result["receipt"] = rj;
      if (!report.error.ok()) result["warning"] = report.error.ToString();
      if (!saved.ok()) result["warning"] = saved.ToString();
      return result;
    }
    case SourceOutcome::kAborted:
      Audit("migration.abort", {{"role", "source"}, {"migration_id", id_hex}, {"vm", name},
                                {"reason", report.error.ToString()}});
      (void)lease->Finish(LeaseOutcome::kReturned, "migration aborted: " + report.error.ToString());
      return report.error.ok() ? Error(Errc::kInternal, "aborted without a reason") : report.error;
    case SourceOutcome::kInDoubt: {
      Audit("migration.in-doubt", {{"role", "source"}, {"migration_id", id_hex}, {"vm", name},
                                   {"reason", report.error.ToString()}});
      (void)lease->Finish(LeaseOutcome::kInDoubt,
                          "commit sent to " + to + ", no answer; run `sodctl recover " + name + "`");
      return Error(Errc::kState, report.error.ToString() + " (run: sodctl recover " + name + ")");
    }
  }
  return Error(Errc::kInternal, "unknown migration outcome");
}

Result<json> MigrationService::Cancel(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  {
    std::unique_lock<std::mutex> l(running_mu_);
    auto it = running_.find(name);
    if (it == running_.end())
      return Error(Errc::kNotFound, "no outgoing migration of VM " + name + " on this host");
    const std::shared_ptr<std::atomic<bool>> flag = it->second;  // this migration's, not a later one's
    flag->store(true);
    // An abort takes QEMU's migrate_cancel and a word to the destination; a migration past the
    // pause commits (or ends in doubt) within its commit timeout.
    const bool ended = running_cv_.wait_for(l, std::chrono::seconds(60), [&] {
      auto now = running_.find(name);
      return now == running_.end() || now->second != flag;
    });
    if (!ended)
      return Error(Errc::kTimeout, "the migration of VM " + name +
                                       " was asked to cancel and has not ended after 60 s");
  }
  Result<VmInfo> info = d_.registry().Show(name);
  const std::string phase = info.ok() ? std::string(VmPhaseName(info->record.phase)) : "";
  const bool cancelled = phase == "running" || phase == "paused";
  Audit("migration.cancel", {{"vm", name}, {"cancelled", cancelled}, {"phase", phase}});
  return json{{"vm", name}, {"phase", phase}, {"cancelled", cancelled}};
}

Result<json> MigrationService::Recover(const json& req, AdminEvents& events) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name"}));
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(req, "name"));
  SOD_ASSIGN_OR_RETURN(auto lease, d_.registry().LeaseForRecovery(name));
  SOD_ASSIGN_OR_RETURN(MigrationId id, MigrationIdFromHex(lease->migration_id()));
  std::ifstream f(PendingPath(d_.config().state_dir, id));
  json pending = json::parse(f, nullptr, false);
  if (pending.is_discarded() || !pending.is_object())
    return Error(Errc::kNotFound, "no record of where migration " + lease->migration_id() +
                                      " went (" + PendingPath(d_.config().state_dir, id) + ")");
  const std::string to = pending.value("to", ""), connect = pending.value("connect", "");
  const uint16_t port = pending.value("port", uint16_t{0});
  (void)events.Emit("asking", {{"migration_id", lease->migration_id()}, {"destination", to}});
  SOD_ASSIGN_OR_RETURN(auto session,
                       Session::Connect(d_.client_tls(), connect, port, to, d_.session_options()));
  Result<SourceOutcome> r = RecoverInDoubt(*session, lease->vm(), id, attestation_);
  if (!r.ok()) {
    Audit("migration.recovery-failed",
          {{"migration_id", lease->migration_id()}, {"vm", name}, {"reason", r.status().ToString()}});
    return r.status();  // the lease ends as returned; the VM stays paused and in doubt
  }
  const bool committed = *r == SourceOutcome::kCommitted;
  Audit("migration.recovered", {{"migration_id", lease->migration_id()},
                                {"vm", name},
                                {"outcome", SourceOutcomeName(*r)}});
  std::filesystem::remove(PendingPath(d_.config().state_dir, id));
  // A vTPM that moved on at the pending migration's epoch: never take that epoch back.
  if (committed && pending.contains("vtpm_epoch") && pending["vtpm_epoch"].is_number_unsigned()) {
    const uint64_t epoch = pending["vtpm_epoch"].get<uint64_t>();
    if (vtpm::VtpmHost* vh = d_.registry().vtpm_host()) (void)vh->RecordEpoch(name, epoch);
    lease->set_vtpm_epoch(epoch);
  }
  (void)lease->Finish(committed ? LeaseOutcome::kMigratedAway : LeaseOutcome::kReturned,
                      committed ? "recovered: runs on " + to : "recovered: resumed here");
  return json{{"migration_id", MigrationIdHex(id)}, {"outcome", SourceOutcomeName(*r)}};
}

void MigrationService::Serve(std::unique_ptr<Session> session) {
  std::optional<IncomingVmSlot> slot;  // made once the offer names its migration
  DestinationContext ctx;
  ctx.host_id = d_.config().host_id;
  ctx.signer = signer_.get();
  ctx.ledger = ledger_.get();
  ctx.attestation = attestation_;
  if (admit_) {
    ctx.admit = [this](const OfferMsg&, const VmSpec& spec, const std::string& peer) {
      return admit_(spec, peer);
    };
  }
  ctx.launch_incoming = [this, &slot](const VmSpec& spec, const MigrationId& id) {
    slot.emplace(d_.registry(), MigrationIdHex(id));
    return slot->Launch(spec);
  };
  vtpm::VtpmHost* vh = d_.registry().vtpm_host();
  if (vh) {
    ctx.check_vtpm_epoch = [vh](const std::string& vm, uint64_t epoch) {
      return vh->CheckNewer(vm, epoch);
    };
    ctx.launch_incoming_vtpm = [this, &slot](const VmSpec& spec, const MigrationId& id,
                                             const IncomingVtpm& vtpm) {
      slot.emplace(d_.registry(), MigrationIdHex(id));
      return slot->Launch(spec, &vtpm);
    };
  }
  ctx.vm_running = [this](const MigrationId& id) {
    std::ifstream f(d_.config().state_dir + "/receipts/" + MigrationIdHex(id) + ".json");
    json r = json::parse(f, nullptr, false);
    if (r.is_discarded() || !r.contains("vm_name")) return false;
    auto info = d_.registry().Show(r.value("vm_name", ""));
    return info.ok() && info->record.phase == VmPhase::kRunning;
  };
  const std::string peer = session->peer_host_id();
  DestinationReport report = ServeSession(*session, ctx);
  const std::string id_hex = MigrationIdHex(report.id);
  if (report.kind == DestinationReport::Kind::kOutcomeQuery) {
    Audit("migration.outcome-query",
          {{"migration_id", id_hex},
           {"from", peer},
           {"answer", std::string(MigrationOutcomeName(ledger_->Lookup(report.id)))},
           {"error", report.error.ToString()}});
    return;
  }
  if (report.kind != DestinationReport::Kind::kMigration) {
    // A peer that hangs up after attesting (`sodctl attest`, a peer's trust monitor probing
    // this host every interval) is no refusal; audited at most once a minute per peer.
    if ((report.error.code() == Errc::kClosed || report.error.code() == Errc::kTruncated) &&
        attestation_) {
      {
        std::lock_guard lock(closed_mu_);
        auto now = std::chrono::steady_clock::now();
        auto it = last_closed_.find(peer);
        if (it != last_closed_.end() && now - it->second < std::chrono::seconds(60)) return;
        last_closed_[peer] = now;
      }
      Audit("session.closed", {{"from", peer}, {"reason", report.error.ToString()}});
      return;
    }
    Audit("session.refused", {{"from", peer}, {"reason", report.error.ToString()}});
    return;
  }
  if (report.vm) {
    if (evacuation_check_ && evacuation_check_(peer))
      Audit("migration.evacuation-in",
            {{"migration_id", id_hex},
             {"vm", report.vm_name},
             {"from", peer},
             {"note", "source's trust dropped (evidence authentic): VM evacuated to this host"}});
    if (vh && report.receipt->receipt.vtpm_epoch != 0) {
      Status recorded = vh->RecordEpoch(report.vm_name, report.receipt->receipt.vtpm_epoch);
      if (!recorded.ok())
        Audit("vtpm.epoch-write-failed", {{"vm", report.vm_name}, {"error", recorded.ToString()}});
    }
    (void)SaveReceipt(*report.receipt);
    Audit("migration.commit",
          {{"role", "destination"},
           {"receipt", SignedReceiptJson(*report.receipt)},
           {"ram_pages_repaired", report.ram_pages_repaired},
           {"phases_ms", PhasesJson(report.phases)}});
    Status s = slot->Adopt(std::move(report.vm));
    if (!s.ok()) Audit("migration.adopt-failed", {{"migration_id", id_hex}, {"reason", s.ToString()}});
  } else {
    Audit("migration.abort", {{"role", "destination"},
                              {"migration_id", id_hex},
                              {"vm", report.vm_name},
                              {"from", peer},
                              {"reason", report.error.ToString()}});
  }
}

}  // namespace sod
