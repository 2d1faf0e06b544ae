#include "host/attestation_service.h"

#include <chrono>
#include <filesystem>

#include "attest/enrollment.h"
#include "attest/esys_tpm.h"
#include "attest/swtpm.h"
#include "base/random.h"
#include "host/admin_ops.h"
#include "host/state_dir.h"
#include "migrate/migration.h"

namespace sod {

using nlohmann::json;

namespace {

Status Off() {
  return Error(Errc::kUnsupported,
               "attestation is off on this host (sodd runs with --no-attestation)");
}

}  // namespace

Result<std::unique_ptr<AttestationService>> AttestationService::Create(
    HostDaemon& daemon, HostAttestationConfig config) {
  std::unique_ptr<AttestationService> s(new AttestationService(daemon, std::move(config)));
  if (s->config_.tpm != HostAttestationConfig::Tpm::kNone) SOD_RETURN_IF_ERROR(s->Start());
  return s;
}

AttestationService::AttestationService(HostDaemon& d, HostAttestationConfig c)
    : d_(d), config_(std::move(c)) {}
AttestationService::~AttestationService() = default;

Status AttestationService::Start() {
  if (config_.enrollments_dir.empty())
    return Error(Errc::kInvalidArgument, "attestation needs an enrollment directory");
  std::error_code ec;
  std::filesystem::create_directories(config_.enrollments_dir, ec);
  if (ec)
    return Error(Errc::kIo, "enrollment directory " + config_.enrollments_dir + ": " + ec.message());
  const std::string dir = d_.config().state_dir + "/attest";
  SOD_RETURN_IF_ERROR(MakePrivateDir(dir));
  std::string tcti = config_.tcti;
  if (config_.tpm == HostAttestationConfig::Tpm::kSimulated) {
    const std::string tpm_dir = d_.config().state_dir + "/tpm";
    SOD_RETURN_IF_ERROR(MakePrivateDir(tpm_dir));
    attest::SimulatedTpmOptions sim;
    sim.end_orphan = true;  // we hold the state dir: a swtpm left there is a dead sodd's
    SOD_ASSIGN_OR_RETURN(simulated_, attest::SimulatedTpm::Start(tpm_dir, sim));
    tcti = simulated_->tcti();
  }
  SOD_ASSIGN_OR_RETURN(auto tpm, attest::EsysTpm::Open(tcti));
  SOD_RETURN_IF_ERROR(tpm->Provision().WithContext("provisioning the TPM (" + tcti + ")"));
  if (simulated_) SOD_RETURN_IF_ERROR(attest::SimulateMeasuredBoot(*tpm));
  tpm_ = std::move(tpm);
  SOD_ASSIGN_OR_RETURN(monitor_, attest::RuntimeMonitor::Open(*tpm_, dir + "/violations"));
  attester_ = std::make_unique<attest::HostAttester>(
      *tpm_, *monitor_,
      attest::HostIdentity{d_.config().host_id, config_.architecture, config_.capability_row});
  enrollments_ = std::make_unique<attest::EnrollmentDirectory>(config_.enrollments_dir);
  sessions_ = std::make_unique<attest::SessionAttestation>(
      *attester_, *enrollments_, config_.policy,
      [this](const attest::Verdict& v) { AuditVerdict(v); });
  return Status::Ok();
}

void AttestationService::Audit(std::string_view kind, const json& data) {
  if (d_.events()) d_.events()(kind, data);
}

void AttestationService::AuditVerdict(const attest::Verdict& v) {
  std::string key = std::string(v.accepted ? "1" : "0") + (v.evacuation ? "e" : "") +
                    std::to_string(v.violation_count);
  for (const auto& r : v.reasons) key += "\n" + r;
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(audit_mu_);
    // Verdicts as a destination (evacuation) and as a source are kept apart: they alternate.
    const std::string who = v.host_id + (v.evacuation ? "\n(in)" : "");
    auto it = last_audited_.find(who);
    if (it != last_audited_.end() && it->second.first == key &&
        now - it->second.second < std::chrono::seconds(60))
      return;
    last_audited_[who] = {key, now};
  }
  Audit("attestation.verdict", v.ToJson());
  if (v.evacuation)
    Audit("attestation.evacuation-admitted",
          {{"host", v.host_id},
           {"trust_drops", v.trust_drops},
           {"note", "evidence authentic but trust dropped: admitted only as a migration source"}});
}

void AttestationService::Install() {
  d_.admin().Register("host.enrollment",
                      [this](const json& req, AdminEvents&) -> Result<json> {
                        SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {}));
                        return Enrollment();
                      });
  d_.admin().Register("host.evidence", [this](const json& req, AdminEvents&) -> Result<json> {
    SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {}));
    return LocalEvidence();
  });
  d_.admin().Register("host.violation", [this](const json& req, AdminEvents&) {
    return Violation(req);
  });
  d_.admin().Register("attest", [this](const json& req, AdminEvents&) { return Attest(req); });
}

json AttestationService::Info() const {
  if (!sessions_) return {{"enabled", false}};
  return {{"enabled", true},
          {"tpm", simulated_ ? "simulated (swtpm " + simulated_->tcti() + ")" : config_.tcti},
          {"architecture", config_.architecture},
          {"enrollments", config_.enrollments_dir},
          {"violations", monitor_->count()},
          {"max_violations", config_.policy.max_violations}};
}

Result<json> AttestationService::Enrollment() {
  if (!sessions_) return Off();
  attest::EnrollmentRecord r;
  r.host_id = d_.config().host_id;
  r.architecture = config_.architecture;
  SOD_ASSIGN_OR_RETURN(r.ak_public, tpm_->AkPublic());
  SOD_ASSIGN_OR_RETURN(r.ek_public, tpm_->EkPublic());
  // The golden values are this host's PCRs now: the operator who enrolls it vouches for the
  // state it is in (the violation PCR is never golden: its value follows the reported count).
  attest::PcrSelection golden = attest::DefaultQuoteSelection();
  golden.mask &= ~(1u << attest::kViolationPcr);
  SOD_ASSIGN_OR_RETURN(attest::PcrValues pcrs, tpm_->ReadPcrs(golden));
  const auto idx = pcrs.selection.Indices();
  for (size_t i = 0; i < idx.size() && i < pcrs.values.size(); ++i)
    r.golden_pcrs[idx[i]] = pcrs.values[i];
  r.enrolled_unix_ms = UnixMillisNow();
  return json{{"record", attest::EnrollmentToJson(r)}};
}

Result<json> AttestationService::LocalEvidence() {
  if (!sessions_) return Off();
  SOD_ASSIGN_OR_RETURN(attest::PcrValues pcrs, tpm_->ReadPcrs(attest::DefaultQuoteSelection()));
  json p = json::array();
  const auto idx = pcrs.selection.Indices();
  for (size_t i = 0; i < idx.size() && i < pcrs.values.size(); ++i)
    p.push_back({{"pcr", idx[i]}, {"sha256", ToHex(pcrs.values[i])}});
  json j = Info();
  j["host_id"] = d_.config().host_id;
  j["pcrs"] = p;
  return j;
}

Result<json> AttestationService::Violation(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"reason"}));
  SOD_ASSIGN_OR_RETURN(std::string reason,
                       RequestOptional<std::string>(req, "reason", "reported by an operator"));
  if (!sessions_) return Off();
  SOD_ASSIGN_OR_RETURN(uint32_t count, monitor_->RecordViolation());
  Audit("host.violation", {{"count", count}, {"reason", reason}});
  return json{{"violations", count}, {"max_violations", config_.policy.max_violations}};
}

Result<AttestationService::AttestOutcome> AttestationService::AttestWith(
    const std::string& to, const std::string& connect, uint16_t port) {
  if (!sessions_) return Off();
  SessionOptions so = d_.session_options();
  so.data_channels = 0;  // an attestation probe moves no VM
  SOD_ASSIGN_OR_RETURN(auto session, Session::Connect(d_.client_tls(), connect, port, to, so));
  AttestOutcome out;
  out.status = sessions_->AttestPeer(*session);
  out.verdict = sessions_->LastVerdict(to);
  if (!out.status.ok() && out.status.code() != Errc::kAborted) session->SendAbort(out.status);
  session->Shutdown();
  return out;
}

Result<json> AttestationService::Attest(const json& req) {
  SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"to", "connect", "port"}));
  SOD_ASSIGN_OR_RETURN(std::string to, RequestString(req, "to"));
  SOD_ASSIGN_OR_RETURN(std::string connect, RequestOptional<std::string>(req, "connect", to));
  SOD_ASSIGN_OR_RETURN(uint64_t port, RequestOptional<uint64_t>(req, "port", 7400));
  if (port == 0 || port > 65535) return Error(Errc::kInvalidArgument, "port: 1..65535");
  if (!sessions_) return Off();
  SOD_ASSIGN_OR_RETURN(AttestOutcome r, AttestWith(to, connect, static_cast<uint16_t>(port)));
  const Status& s = r.status;
  const std::optional<attest::Verdict>& v = r.verdict;
  json out = {{"host", to}, {"trusted", s.ok()}};
  if (v) out["verdict"] = v->ToJson();
  if (!s.ok()) {
    out["error"] = s.message();
    out["error_code"] = std::string(ErrcName(s.code()));
  }
  // Did the peer accept our evidence? Known when we accepted its evidence first.
  if (s.ok())
    out["peer_accepted_us"] = true;
  else if (v && v->accepted)
    out["peer_accepted_us"] = false;
  else
    out["peer_accepted_us"] = nullptr;
  return out;
}

namespace {

// A verdict as the policy's HostState sees it: attestation OK unless a reason other than
// "violations over the policy" was given (the policy judges the count itself).
TrustSample SampleOf(const attest::Verdict& v, uint32_t max_violations) {
  TrustSample t;
  t.violations = v.violation_count;
  t.max_violations = max_violations;
  t.attested_ok = v.reasons.size() == (v.violations_over_policy ? 1u : 0u);
  // The count itself is judged by the policy (policy::UntrustedReasons): leave out check 12.
  for (const std::string& r : v.reasons)
    if (!(v.violations_over_policy && r.find("runtime violations; the policy allows") !=
                                          std::string::npos))
      t.reasons.push_back(r);
  t.verdict = v;
  return t;
}

}  // namespace

Result<TrustSample> AttestationService::CheckSelf() {
  if (!sessions_) return Off();
  Bytes nonce(16), binding(32);
  SOD_RETURN_IF_ERROR(RandomFill(nonce));
  SOD_RETURN_IF_ERROR(RandomFill(binding));
  SOD_ASSIGN_OR_RETURN(attest::Evidence e, attester_->Produce(nonce, binding));
  attest::Expectation x;
  x.peer_host_id = d_.config().host_id;
  x.nonce = nonce;
  x.session_binding = binding;
  x.now_unix_ms = UnixMillisNow();
  bool enrolled = false;
  attest::Verdict v;
  SOD_RETURN_IF_ERROR(enrollments_->With([&](const attest::EnrollmentStore& store) {
    enrolled = store.Find(x.peer_host_id) != nullptr;
    if (enrolled) v = attest::Verify(e, x, store, config_.policy);
  }));
  if (!enrolled) {
    TrustSample t;
    t.attested_ok = true;
    t.violations = e.violation_count;
    t.max_violations = config_.policy.max_violations;
    return t;  // the policy judges the violation count
  }
  return SampleOf(v, config_.policy.max_violations);
}

TrustSample AttestationService::ProbePeer(const std::string& peer, const std::string& connect,
                                          uint16_t port) {
  Result<AttestOutcome> r = AttestWith(peer, connect, port);
  if (!r.ok()) {
    TrustSample t;
    t.reachable = false;
    t.max_violations = config_.policy.max_violations;
    t.reasons.push_back("unreachable: " + r.status().ToString());
    return t;
  }
  if (!r->verdict) {
    TrustSample t;
    t.max_violations = config_.policy.max_violations;
    t.reasons.push_back("no verdict: " + r->status.ToString());
    return t;
  }
  TrustSample t = SampleOf(*r->verdict, config_.policy.max_violations);
  // Our verdict was fine but the peer refused us (or the session broke): still no evidence.
  if (r->verdict->accepted && !r->status.ok()) {
    t.attested_ok = false;
    t.reasons.push_back("attestation did not complete: " + r->status.ToString());
  }
  return t;
}

std::optional<std::string> AttestationService::EnrolledArchitecture(const std::string& host) {
  if (!enrollments_) return std::nullopt;
  std::optional<std::string> arch;
  Status s = enrollments_->With([&](const attest::EnrollmentStore& store) {
    if (const attest::EnrollmentRecord* r = store.Find(host)) arch = r->architecture;
  });
  if (!s.ok()) return std::nullopt;
  return arch;
}

uint32_t AttestationService::violations() const { return monitor_ ? monitor_->count() : 0; }

}  // namespace sod
