#include "attest/session_attestation.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "base/random.h"
#include "migrate/migration.h"
#include "migrate/session.h"

namespace sod::attest {

namespace {

std::string JoinReasons(const std::vector<std::string>& reasons) {
  std::string s;
  for (const auto& r : reasons) s += (s.empty() ? "" : "; ") + r;
  return s;
}

// The next control message, which must be a T; a peer that sends something else did not follow
// the attestation protocol (for instance, a host that does not attest and sent its offer).
template <typename T>
Result<T> Expect(Session& session, std::string_view what) {
  SOD_ASSIGN_OR_RETURN(ControlMsg m, session.ReceiveControl());
  if (auto* v = std::get_if<T>(&m)) return std::move(*v);
  return Error(Errc::kAttestation, "peer " + session.peer_host_id() + " sent " +
                                       std::string(ControlName(m)) + " instead of " +
                                       std::string(what) + " (it does not attest)");
}

}  // namespace

Status EnrollmentDirectory::With(const std::function<void(const EnrollmentStore&)>& f) {
  std::lock_guard lock(mu_);
  // What the directory looks like now: every entry's name, size and modification time.
  std::error_code ec;
  std::string signature;
  std::filesystem::directory_iterator it(dir_, ec);
  if (ec) return Error(Errc::kNotFound, "enrollment directory " + dir_.string() + ": " + ec.message());
  std::vector<std::string> entries;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    std::error_code e2;
    const auto size = it->is_regular_file(e2) ? it->file_size(e2) : 0;
    const auto mtime = it->last_write_time(e2).time_since_epoch().count();
    entries.push_back(it->path().filename().string() + "\n" + std::to_string(size) + "\n" +
                      std::to_string(mtime));
  }
  if (ec) return Error(Errc::kIo, "enrollment directory " + dir_.string() + ": " + ec.message());
  std::sort(entries.begin(), entries.end());
  for (const auto& e : entries) signature += e + "\n";
  if (!loaded_ || signature != loaded_signature_) {
    SOD_ASSIGN_OR_RETURN(EnrollmentStore s, EnrollmentStore::Load(dir_));
    store_ = std::move(s);
    loaded_signature_ = std::move(signature);
    loaded_ = true;
  }
  f(store_);
  return Status::Ok();
}

Result<Bytes> SessionBinding(const Session& session) {
  return session.ExportKeyingMaterial(kAttestExporterLabel, kAttestBindingSize);
}

Verdict SessionAttestation::Check(Session& session, ByteSpan nonce, ByteSpan binding,
                                  ByteSpan evidence, bool tolerate_drop) {
  Verdict v;
  Result<Evidence> e = DecodeEvidence(evidence);
  if (!e.ok()) {
    v.host_id = session.peer_host_id();
    v.reasons.push_back("evidence does not decode: " + e.status().ToString());
  } else {
    Expectation x;
    x.peer_host_id = session.peer_host_id();
    x.nonce.assign(nonce.begin(), nonce.end());
    x.session_binding.assign(binding.begin(), binding.end());
    x.now_unix_ms = UnixMillisNow();
    Status loaded = enrollments_.With(
        [&](const EnrollmentStore& store) { v = Verify(*e, x, store, policy_); });
    if (!loaded.ok()) {
      v = Verdict{};
      v.host_id = session.peer_host_id();
      v.reasons.push_back("enrollments unavailable: " + loaded.ToString());
    }
  }
  v.accepted = v.reasons.empty() && v.accepted;
  v.evacuation = tolerate_drop && !v.accepted && v.Authentic();
  {
    std::lock_guard lock(mu_);
    last_[session.peer_host_id()] = v;
  }
  if (on_verdict_) on_verdict_(v);
  return v;
}

Status SessionAttestation::AttestPeer(Session& session) { return Mutual(session, false); }

Status SessionAttestation::AttestIncoming(Session& session) {
  return Mutual(session, policy_.accept_evacuations);
}

Status SessionAttestation::Mutual(Session& session, bool incoming) {
  AttestChallengeMsg mine;
  SOD_RETURN_IF_ERROR(RandomFill(mine.nonce));
  SOD_RETURN_IF_ERROR(session.SendControl(mine));
  SOD_ASSIGN_OR_RETURN(AttestChallengeMsg theirs,
                       Expect<AttestChallengeMsg>(session, "an attestation challenge"));
  SOD_ASSIGN_OR_RETURN(Bytes binding, SessionBinding(session));
  SOD_ASSIGN_OR_RETURN(Evidence ours, attester_.Produce(theirs.nonce, binding));
  SOD_RETURN_IF_ERROR(session.SendControl(EvidenceMsg{EncodeEvidence(ours)}));
  SOD_ASSIGN_OR_RETURN(EvidenceMsg peer, Expect<EvidenceMsg>(session, "evidence"));
  Verdict v = Check(session, mine.nonce, binding, peer.evidence, incoming);
  if (incoming) {
    std::lock_guard lock(mu_);
    last_incoming_[session.peer_host_id()] = v;
  }
  if (!v.accepted && !v.evacuation)
    return Error(Errc::kAttestation,
                 "host " + session.peer_host_id() + " refused: " + JoinReasons(v.reasons));
  SOD_RETURN_IF_ERROR(session.SendControl(AttestOkMsg{}));
  SOD_ASSIGN_OR_RETURN(ControlMsg ok, session.ReceiveControl());
  if (!std::holds_alternative<AttestOkMsg>(ok))
    return Error(Errc::kState, "expected attest-ok, got " + std::string(ControlName(ok)));
  return Status::Ok();
}

Result<Bytes> SessionAttestation::EvidenceFor(Session& session, ByteSpan nonce) {
  SOD_ASSIGN_OR_RETURN(Bytes binding, SessionBinding(session));
  SOD_ASSIGN_OR_RETURN(Evidence e, attester_.Produce(nonce, binding));
  return EncodeEvidence(e);
}

Status SessionAttestation::VerifyPeerEvidence(Session& session, ByteSpan nonce,
                                              ByteSpan evidence) {
  SOD_ASSIGN_OR_RETURN(Bytes binding, SessionBinding(session));
  Verdict v = Check(session, nonce, binding, evidence);
  if (!v.accepted)
    return Error(Errc::kAttestation,
                 "host " + session.peer_host_id() + " refused: " + JoinReasons(v.reasons));
  return Status::Ok();
}

std::optional<Verdict> SessionAttestation::LastIncomingVerdict(const std::string& host_id) const {
  std::lock_guard lock(mu_);
  auto it = last_incoming_.find(host_id);
  if (it == last_incoming_.end()) return std::nullopt;
  return it->second;
}

std::optional<Verdict> SessionAttestation::LastVerdict(const std::string& host_id) const {
  std::lock_guard lock(mu_);
  auto it = last_.find(host_id);
  if (it == last_.end()) return std::nullopt;
  return it->second;
}

}  // namespace sod::attest
