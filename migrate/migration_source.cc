#include "migrate/migration_source.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "base/random.h"
#include "base/secret.h"
#include "migrate/control_inbox.h"
#include "migrate/peer_attestation.h"
#include "migrate/qmp.h"
#include "migrate/ram_stream.h"
#include "migrate/session.h"
#include "migrate/socket.h"
#include "migrate/stream_pump.h"
#include "migrate/vm.h"

namespace sod {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
constexpr const char* kFdName = "sod-migration";

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t U64(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

// Both ends of a socketpair: QEMU writes one, the engine reads the other. The kernel's default
// buffer size on purpose (PROTOCOL.md, "Stream": every byte queued between the two QEMUs is work
// the destination still owes when the source pauses).
Result<std::pair<UniqueFd, UniqueFd>> StreamSocketPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    return SocketError("socketpair for", "the QEMU stream", errno);
  return std::pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
}

class SourceMigration {
 public:
  SourceMigration(Session& session, Vm& vm, const HostSigner& signer, const SourceOptions& o,
                  const ProgressFn& progress)
      : session_(session), vm_(vm), signer_(signer), opts_(o), progress_(progress),
        inbox_(session) {}

  SourceReport Run();

 private:
  Status CheckVtpmOptions() const;
  Status Offer();
  Status StartStream();
  Status StreamUntilCompleted();
  Status Switchover();
  Status Commit();
  void Abort(const Status& why, bool tell_peer);
  void StartRamHash();
  Status AwaitSwitchoverOk();
  Status CheckRam(Receipt& r);
  Status SendRamRepair(const std::vector<size_t>& pages);
  Status OnQemuPass(uint64_t pass);
  void Mark(const char* phase) { report_.phases.Mark(phase); }
  void Report(const std::string& phase);
  void Event(SourceEvent e);
  Result<json> QueryMigrate() { return vm_.qmp().Execute("query-migrate"); }

  Session& session_;
  Vm& vm_;
  const HostSigner& signer_;
  const SourceOptions& opts_;
  const ProgressFn& progress_;
  ControlInbox inbox_;
  SourceStateMachine sm_;
  SourceReport report_;
  Clock::time_point t0_ = Clock::now();
  uint64_t started_unix_ms_ = UnixMillisNow();
  double stop_unix_s_ = 0;  // QEMU's STOP event time
  bool was_running_ = false;
  bool qemu_migrating_ = false;
  UniqueFd engine_fd_;
  std::unique_ptr<StreamPump> pump_;
  json last_query_ = json::object();  // the last query-migrate answer
  DowntimeSchedule downtime_{opts_.downtime_start_ms, opts_.downtime_limit_ms};
  Receipt receipt_;
  Bytes source_signature_;
  // RAM check (verify_ram): the stream's pages as they leave, the paused RAM's pages.
  std::unique_ptr<RamStreamTracker> tracker_;
  RamFileHasher ram_hasher_;
  std::optional<SwitchoverCheckMsg> switchover_check_;  // sent, answer not verified yet
};

Status SourceMigration::OnQemuPass(uint64_t pass) {
  if (downtime_.at_limit()) return Status::Ok();  // nothing left to raise
  const uint64_t before = downtime_.target_ms();
  // What this pass has to send: QEMU's count right after the sync (it has sent a little since).
  SOD_ASSIGN_OR_RETURN(json q, QueryMigrate());
  last_query_ = q;
  const uint64_t target = downtime_.OnPass(pass, U64(q.value("ram", json::object()), "remaining"));
  if (target == before) return Status::Ok();
  return vm_.qmp().Execute("migrate-set-parameters", {{"downtime-limit", target}}).status();
}

void SourceMigration::StartRamHash() {
  if (!tracker_ || ram_hasher_.started()) return;
  // QEMU has paused the VM: its RAM is final. Hash it (with a write log: only the pages written
  // since it was hashed) on one thread while the switchover check, the last pages and the device
  // state go on (they need the other core); more threads join once QEMU is done and in the commit
  // path (RamFileHasher::AddWorker, Finish).
  ram_hasher_.Start(vm_.paths().memory_file, std::string(kRamBlockName), 1);
}

Status SourceMigration::SendRamRepair(const std::vector<size_t>& pages) {
  UniqueFd fd(::open(vm_.paths().memory_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return Error(Errc::kIo, "open " + vm_.paths().memory_file + ": " + std::strerror(errno));
  Bytes body(kChunkPrefixSize + kRamPageSize);
  for (size_t page : pages) {
    const uint64_t offset = uint64_t{page} * kRamPageSize;
    EncodeChunkPrefix(kRamRepairStream, offset, body.data());
    const ssize_t n = ::pread(fd.get(), body.data() + kChunkPrefixSize, kRamPageSize,
                              static_cast<off_t>(offset));
    if (n != static_cast<ssize_t>(kRamPageSize))
      return Error(Errc::kIo, "read guest RAM page at " + std::to_string(offset));
    SOD_RETURN_IF_ERROR(session_.SendControlRecord(RecordType::kStream, body));
  }
  return Status::Ok();
}

Status SourceMigration::CheckRam(Receipt& r) {
  Result<RamPageTable> pages = ram_hasher_.Finish();
  report_.ram_check = ram_hasher_.how();
  report_.ram_pages_read_at_pause = ram_hasher_.pages_read_at_pause();
  if (!pages.ok()) return pages.status().WithContext("hashing the guest RAM");
  const RamPageTable& ram = *pages;
  SOD_RETURN_IF_ERROR(tracker_->status().WithContext("following the RAM in QEMU's stream"));
  if (!tracker_->ram_complete())
    return Error(Errc::kState, "QEMU's stream ended before its last RAM pages");
  const RamPageTable* sent = tracker_->Block(kRamBlockName);
  if (sent == nullptr)
    return Error(Errc::kState, "QEMU's stream has no RAM block " + std::string(kRamBlockName));
  std::vector<size_t> bad;
  if (Status same = CompareRamTables(ram, *sent, &bad); !same.ok()) {
    // QEMU missed pages (its dirty tracking under TCG does, now and then): the RAM here is the
    // truth, and the destination has not run the VM: send it those pages ourselves.
    if (bad.empty()) return same;  // the block sizes differ: nothing a page could repair
    if (bad.size() > opts_.max_ram_repair_pages)
      return same.WithContext("more than " + std::to_string(opts_.max_ram_repair_pages) +
                              " pages to repair; the VM stays here");
    SOD_RETURN_IF_ERROR(SendRamRepair(bad).WithContext("sending the pages QEMU missed"));
    report_.ram_pages_repaired = bad.size();
    Mark("ram-repaired");
  }
  r.ram_digest = RamTableDigest(ram);
  r.ram_digest_present = true;
  return Status::Ok();
}

void SourceMigration::Event(SourceEvent e) {
  // A refused transition is a bug in this file; it is reported rather than ignored.
  Status s = sm_.On(e);
  if (!s.ok() && report_.error.ok()) report_.error = s;
}

void SourceMigration::Report(const std::string& phase) {
  if (!progress_) return;
  MigrationProgress p;
  p.phase = phase;
  const json ram = last_query_.value("ram", json::object());
  p.round = static_cast<uint32_t>(U64(ram, "dirty-sync-count"));
  p.stream_bytes = pump_ ? pump_->stream_bytes() : 0;
  p.wire_bytes = session_.data_wire_bytes();
  p.ram_total = U64(ram, "total");
  p.ram_remaining = U64(ram, "remaining");
  p.dirty_pages_rate = U64(ram, "dirty-pages-rate");
  p.expected_downtime_ms = U64(last_query_, "expected-downtime");
  p.mbps = ram.value("mbps", 0.0);
  p.elapsed_s = Seconds(Clock::now() - t0_);
  progress_(p);
}

Status SourceMigration::CheckVtpmOptions() const {
  const std::string& name = vm_.spec().name;
  if (vm_.spec().tpm != opts_.vtpm.has_value())
    return Error(Errc::kInvalidArgument, "vm " + name + (vm_.spec().tpm
                                                             ? " has a vTPM but no vTPM epoch and key were given"
                                                             : " has no vTPM but vTPM options were given"));
  if (!opts_.vtpm) return Status::Ok();
  if (opts_.vtpm->epoch == 0 || !opts_.vtpm->migration_key ||
      opts_.vtpm->migration_key->size() != kVtpmKeySize)
    return Error(Errc::kInvalidArgument, "vm " + name + ": vTPM epoch 0 or no 32-byte key");
  if (!opts_.attestation)
    return Error(Errc::kAttestation, "vm " + name +
                                         " has a vTPM: it moves only between attested hosts (its "
                                         "key is released only to an attested destination)");
  return Status::Ok();
}

Status SourceMigration::Offer() {
  if (opts_.migration_id) {
    report_.id = *opts_.migration_id;
  } else {
    SOD_ASSIGN_OR_RETURN(report_.id, NewMigrationId());
  }
  SOD_ASSIGN_OR_RETURN(std::string state, vm_.RunState());
  if (state != "running" && state != "paused")
    return Error(Errc::kState, "vm " + vm_.spec().name + " is " + state + ", not running or paused");
  was_running_ = state == "running";
  OfferMsg offer;
  offer.migration_id = report_.id;
  offer.vm_name = vm_.spec().name;
  offer.spec_json = VmSpecToJson(vm_.spec()).dump();
  offer.ram_bytes = uint64_t{vm_.spec().memory_mb} << 20;
  offer.verify_ram = opts_.verify_ram;
  offer.vtpm_epoch = opts_.vtpm ? opts_.vtpm->epoch : 0;
  SOD_RETURN_IF_ERROR(session_.SendControl(offer));
  Event(SourceEvent::kOfferSent);
  if (opts_.vtpm) {
    // Run() attested the destination before the offer: only now may the key leave this host.
    VtpmKeyMsg key;
    key.vtpm_epoch = opts_.vtpm->epoch;
    std::copy(opts_.vtpm->migration_key->span().begin(), opts_.vtpm->migration_key->span().end(),
              key.migration_key.begin());
    SOD_RETURN_IF_ERROR(session_.SendControl(key));
  }
  inbox_.Start();
  SOD_ASSIGN_OR_RETURN(ControlMsg reply, inbox_.Next(opts_.step_timeout, "answer to the offer"));
  if (!std::holds_alternative<PreparedMsg>(reply))
    return Error(Errc::kState, "expected prepared, got " + std::string(ControlName(reply)));
  Event(SourceEvent::kPreparedReceived);
  return Status::Ok();
}

Status SourceMigration::StartStream() {
  QmpClient& qmp = vm_.qmp();
  SOD_RETURN_IF_ERROR(
      qmp.Execute("migrate-set-capabilities",
                  {{"capabilities",
                    json::array({{{"capability", "events"}, {"state", true}},
                                 {{"capability", "pause-before-switchover"}, {"state", true}}})}})
          .status());
  SOD_RETURN_IF_ERROR(qmp.Execute("migrate-set-parameters",
                                  {{"max-bandwidth", opts_.max_bandwidth},
                                   {"downtime-limit", downtime_.target_ms()}})
                          .status());
  SOD_ASSIGN_OR_RETURN(auto fds, StreamSocketPair());
  engine_fd_ = std::move(fds.second);
  SOD_RETURN_IF_ERROR(qmp.SendFd(kFdName, fds.first.get()));
  fds.first.Reset();  // QEMU holds its own copy now
  pump_ = std::make_unique<StreamPump>(engine_fd_.get(), session_.data_writers());
  if (opts_.verify_ram) {
    tracker_ = std::make_unique<RamStreamTracker>((uint64_t{vm_.spec().memory_mb} << 20) +
                                                  kRamStreamRomSlack);
    pump_->set_observer([t = tracker_.get()](ByteSpan b) { t->Feed(b); });
    // Map the guest RAM now, while it streams, and hash it under a write log (when QEMU has one):
    // at the pause only the pages written since are left to read.
    ram_hasher_.Prepare(vm_.paths().memory_file, std::string(kRamBlockName),
                        opts_.ram_write_log ? vm_.pid() : 0);
  }
  pump_->Start();
  SOD_RETURN_IF_ERROR(qmp.Execute("migrate", {{"uri", std::string("fd:") + kFdName}}).status());
  qemu_migrating_ = true;
  Event(SourceEvent::kStreamStarted);
  Mark("streaming");
  return Status::Ok();
}

Status SourceMigration::Switchover() {
  Event(SourceEvent::kPausedForSwitchover);
  Mark("paused");
  if (opts_.at_pause_for_testing) opts_.at_pause_for_testing();
  StartRamHash();
  Report("switchover");
  // Trust can drop mid-migration: the destination proves its state again, fresh, and the commit
  // waits for that proof. QEMU's last pages go out meanwhile (PROTOCOL.md, "Switchover").
  SwitchoverCheckMsg check{pump_->stream_bytes(), {}};
  if (opts_.attestation) {
    SOD_ASSIGN_OR_RETURN(check.nonce, RandomBytes(kAttestNonceSize));
  }
  SOD_RETURN_IF_ERROR(session_.SendControl(check));
  switchover_check_ = std::move(check);
  return vm_.qmp().Execute("migrate-continue", {{"state", "pre-switchover"}}).status();
}

Status SourceMigration::AwaitSwitchoverOk() {
  if (!switchover_check_) return Error(Errc::kState, "QEMU completed without a switchover check");
  SOD_ASSIGN_OR_RETURN(ControlMsg reply,
                       inbox_.Next(opts_.step_timeout, "answer to the switchover check"));
  const auto* ok = std::get_if<SwitchoverOkMsg>(&reply);
  if (!ok)
    return Error(Errc::kState, "expected switchover-ok, got " + std::string(ControlName(reply)));
  if (opts_.attestation)
    SOD_RETURN_IF_ERROR(
        opts_.attestation->VerifyPeerEvidence(session_, switchover_check_->nonce, ok->evidence)
            .WithContext("switchover check"));
  Mark("switchover-ok");
  return Status::Ok();
}

Status SourceMigration::StreamUntilCompleted() {
  QmpClient& qmp = vm_.qmp();
  auto next_report = Clock::now();
  const auto deadline = Clock::now() + opts_.converge_timeout;
  for (;;) {
    while (auto ev = qmp.PollEvent()) {
      if (ev->name == "STOP") {
        stop_unix_s_ = ev->timestamp;
      } else if (ev->name == "MIGRATION_PASS") {
        const uint64_t pass = ev->data.value("pass", 0u);
        pump_->set_round(static_cast<uint32_t>(pass));
        // Another pass: QEMU may plan for more downtime (it reads the limit within 100 ms). Not
        // once the VM is paused: that pass is the last one.
        if (sm_.state() == SourceState::kStreaming) SOD_RETURN_IF_ERROR(OnQemuPass(pass));
        // Without a write log: map the pages QEMU's first pass allocated, for the RAM check's
        // pass at the pause.
        if (tracker_) ram_hasher_.OnPass(pass);
      } else if (ev->name == "MIGRATION") {
        const std::string status = ev->data.value("status", "");
        if (status == "pre-switchover") {
          SOD_RETURN_IF_ERROR(Switchover());
        } else if (status == "completed") {
          qemu_migrating_ = false;
          pump_->SourceCompleted();
          // QEMU's last pass is over: a core is free for the RAM check.
          if (tracker_) ram_hasher_.AddWorker();
          Event(SourceEvent::kQemuCompleted);
          Mark("qemu-completed");
          return Status::Ok();
        } else if (status == "failed" || status == "cancelled") {
          qemu_migrating_ = false;
          auto q = QueryMigrate();
          std::string why = q.ok() ? q->value("error-desc", status) : status;
          return Error(Errc::kIo, "QEMU migration " + status + ": " + why);
        }
      }
    }
    SOD_RETURN_IF_ERROR(qmp.status());
    if (auto e = inbox_.PendingError()) return *e;
    if (sm_.state() == SourceState::kStreaming && opts_.cancel_requested &&
        opts_.cancel_requested())
      return Error(Errc::kCancelled, "cancelled by this host's admin before the switchover");
    if (!pump_->error().ok()) {
      // The peer's reason (an abort record) usually follows a broken channel; prefer it.
      auto peer = inbox_.Next(std::chrono::milliseconds(500), "abort reason");
      return peer.ok() ? pump_->error() : peer.status();
    }
    if (Clock::now() > deadline)
      return Error(Errc::kTimeout, "migration did not converge within " +
                                       std::to_string(opts_.converge_timeout.count() / 1000) +
                                       " s");
    // Progress for the destination, and proof of life on the control channel in both
    // directions (the destination echoes it). Only before the switchover check: after it, the
    // control channel must stay quiet until the commit (PROTOCOL.md, "Migration"); and QEMU,
    // finishing with the VM paused, would answer query-migrate only when it has completed.
    if (sm_.state() == SourceState::kStreaming && Clock::now() >= next_report) {
      next_report = Clock::now() + std::chrono::milliseconds(500);
      if (auto q = QueryMigrate(); q.ok()) last_query_ = *q;
      const json ram = last_query_.value("ram", json::object());
      Bytes body;
      EncodeRoundBoundary({pump_->stream_bytes(), U64(ram, "dirty-pages-rate"),
                           U64(ram, "transferred")},
                          body);
      SOD_RETURN_IF_ERROR(session_.SendControlRecord(RecordType::kRoundBoundary, body));
      Report("streaming");
    }
    // Events that arrived with a reply are queued already: the socket would not say so.
    if (qmp.queued_events() > 0) continue;
    pollfd p{qmp.fd(), POLLIN, 0};
    ::poll(&p, 1, 50);
  }
}

Status SourceMigration::Commit() {
  Report("completing");
  SOD_RETURN_IF_ERROR(pump_->Wait().WithContext("sending the stream"));
  report_.phases.MarkAt("stream-eof", pump_->eof_time());
  Mark("stream-sent");
  SOD_RETURN_IF_ERROR(AwaitSwitchoverOk());
  if (auto q = QueryMigrate(); q.ok()) last_query_ = *q;
  const json ram = last_query_.value("ram", json::object());
  report_.qemu_downtime_ms = static_cast<double>(U64(last_query_, "downtime"));
  report_.rounds = static_cast<uint32_t>(U64(ram, "dirty-sync-count"));
  report_.downtime_target_ms = downtime_.target_ms();
  report_.stream_bytes = pump_->stream_bytes();
  report_.wire_bytes = session_.data_wire_bytes();

  Receipt& r = receipt_;
  // The RAM check may send repair records: before the record count and transcript are taken.
  if (opts_.verify_ram) {
    StartRamHash();  // normally started at the pause already
    SOD_RETURN_IF_ERROR(CheckRam(r));
    Mark("ram-checked");
  }
  r.migration_id = report_.id;
  r.vm_name = vm_.spec().name;
  r.source_host = opts_.host_id;
  r.destination_host = session_.peer_host_id();
  r.started_unix_ms = started_unix_ms_;
  r.switchover_unix_ms = stop_unix_s_ > 0 ? static_cast<uint64_t>(stop_unix_s_ * 1000) : UnixMillisNow();
  r.rounds = report_.rounds;
  r.stream_bytes = report_.stream_bytes;
  r.wire_bytes = report_.wire_bytes;
  r.records = session_.records_sent();
  SOD_ASSIGN_OR_RETURN(r.transcript, session_.Transcript());
  r.suite = session_.negotiated().suite;
  r.vtpm_epoch = opts_.vtpm ? opts_.vtpm->epoch : 0;
  if (opts_.mutate_receipt_for_testing) opts_.mutate_receipt_for_testing(r);
  SOD_ASSIGN_OR_RETURN(source_signature_, SignReceipt(signer_, r, ReceiptRole::kSource));
  CommitBody commit{r.records, r.transcript, EncodeReceipt(r), source_signature_};
  Bytes body;
  EncodeCommit(commit, body);
  Report("commit");
  SOD_RETURN_IF_ERROR(session_.SendControlRecord(RecordType::kCommit, body));
  Event(SourceEvent::kCommitSent);
  Mark("commit-sent");
  return Status::Ok();
}

void SourceMigration::Abort(const Status& why, bool tell_peer) {
  if (pump_) pump_->Stop();
  if (tell_peer) session_.SendAbort(why);
  if (qemu_migrating_) {
    (void)vm_.qmp().Execute("migrate_cancel");
    auto ev = vm_.qmp().WaitEvent(
        [](const QmpEvent& e) {
          std::string s = e.name == "MIGRATION" ? e.data.value("status", "") : "";
          return s == "cancelled" || s == "failed" || s == "completed";
        },
        std::chrono::seconds(10));
    (void)ev;
  }
  engine_fd_.Reset();
  if (was_running_) {
    auto state = vm_.RunState();
    if (state.ok() && *state != "running") {
      Status s = vm_.Resume();
      if (!s.ok() && report_.error.ok()) report_.error = s;
    }
  }
  session_.Shutdown();
}

SourceReport SourceMigration::Run() {
  // The hosts attest to each other before the VM is even named.
  Status s = CheckVtpmOptions();
  if (s.ok() && opts_.attestation) {
    s = opts_.attestation->AttestPeer(session_);
    if (s.ok()) Report("attested");
    if (s.ok()) Mark("attested");
  }
  if (s.ok()) s = Offer();
  if (s.ok()) Mark("prepared");
  if (s.ok()) s = StartStream();
  if (s.ok()) s = StreamUntilCompleted();
  if (s.ok()) s = Commit();
  if (!s.ok()) {
    // Before the commit: the VM keeps (or goes back to) running here.
    const bool from_peer = s.code() == Errc::kAborted || s.code() == Errc::kClosed;
    Event(SourceEvent::kFailure);
    report_.error = s;
    Abort(s, !from_peer);
    report_.outcome = SourceOutcome::kAborted;
    report_.final_state = sm_.state();
    report_.total_s = Seconds(Clock::now() - t0_);
    inbox_.Join();
    return std::move(report_);
  }
  // The commit is out. From here the VM never resumes here without the destination's word.
  auto reply = inbox_.Next(opts_.commit_timeout, "answer to the commit");
  if (reply.ok() && std::holds_alternative<CommitAckMsg>(*reply)) {
    const auto& ack = std::get<CommitAckMsg>(*reply);
    Event(SourceEvent::kCommitAcknowledged);
    Mark("acknowledged");
    // The migration is done: the VM runs at the destination. Stopping our copy is cleanup, timed
    // as its own phase ("source-stopped").
    report_.total_s = Seconds(Clock::now() - t0_);
    Status sig = VerifyReceiptSignature(session_.peer_public_key_der(), receipt_,
                                        ReceiptRole::kDestination, ack.signature);
    // The destination runs the VM either way; a bad signature costs only non-repudiation.
    if (!sig.ok()) report_.error = sig.WithContext("destination receipt signature");
    report_.receipt = SignedReceipt{receipt_, source_signature_, ack.signature};
    report_.downtime_ms =
        stop_unix_s_ > 0 ? static_cast<double>(ack.resumed_unix_ms) - stop_unix_s_ * 1000 : 0;
    Status q = vm_.Quit(std::chrono::seconds(5));
    if (!q.ok() && report_.error.ok()) report_.error = q.WithContext("quitting the source QEMU");
    Mark("source-stopped");
    report_.outcome = SourceOutcome::kCommitted;
  } else if (!reply.ok() && reply.status().code() == Errc::kAborted) {
    // The destination refused the commit: it did not resume and never will.
    Event(SourceEvent::kCommitRefused);
    report_.error = reply.status();
    Abort(reply.status(), false);
    report_.outcome = SourceOutcome::kAborted;
  } else {
    Event(SourceEvent::kFailure);
    report_.error = reply.ok() ? Error(Errc::kState, "expected commit-ack, got " +
                                                         std::string(ControlName(*reply)))
                               : reply.status();
    report_.error = report_.error.WithContext("commit sent, outcome unknown; the VM stays paused");
    report_.outcome = SourceOutcome::kInDoubt;
    session_.Shutdown();
  }
  report_.final_state = sm_.state();
  if (report_.outcome != SourceOutcome::kCommitted) report_.total_s = Seconds(Clock::now() - t0_);
  Report("done");
  session_.Shutdown();
  inbox_.Join();
  return std::move(report_);
}

}  // namespace

uint64_t DowntimeSchedule::OnPass(uint64_t pass, uint64_t remaining_bytes) {
  if (pass <= last_pass_) return target_ms_;  // not a new pass
  const bool first = last_pass_ == 0;
  const bool shrinking = first || remaining_bytes <= last_remaining_ / 2;
  last_pass_ = pass;
  last_remaining_ = remaining_bytes;
  if (first || at_limit()) return target_ms_;
  target_ms_ = !shrinking || target_ms_ > limit_ms_ / 2 ? limit_ms_ : target_ms_ * 2;
  return target_ms_;
}

std::string_view SourceOutcomeName(SourceOutcome o) {
  switch (o) {
    case SourceOutcome::kCommitted:
      return "committed";
    case SourceOutcome::kAborted:
      return "aborted";
    case SourceOutcome::kInDoubt:
      return "in-doubt";
  }
  return "unknown";
}

SourceReport MigrateOut(Session& session, Vm& vm, const HostSigner& signer,
                        const SourceOptions& options, const ProgressFn& progress) {
  SourceMigration m(session, vm, signer, options, progress);
  return m.Run();
}

Result<SourceOutcome> RecoverInDoubt(Session& session, Vm& vm, const MigrationId& id,
                                     PeerAttestation* attestation) {
  if (attestation) {
    Status a = attestation->AttestPeer(session);
    if (!a.ok()) {
      if (a.code() != Errc::kAborted) session.SendAbort(a);
      return a;
    }
  }
  SOD_RETURN_IF_ERROR(session.SendControl(QueryOutcomeMsg{id}));
  SOD_ASSIGN_OR_RETURN(ControlMsg reply, session.ReceiveControl());
  const auto* o = std::get_if<OutcomeMsg>(&reply);
  if (!o || o->migration_id != id)
    return Error(Errc::kState, "expected the outcome of migration " + MigrationIdHex(id));
  if (o->outcome == MigrationOutcome::kCommitted) {
    if (!o->vm_running)
      return Error(Errc::kState, "migration " + MigrationIdHex(id) +
                                     " committed at the destination but the VM no longer runs "
                                     "there; not resuming here (operator decision)");
    SOD_RETURN_IF_ERROR(vm.Quit(std::chrono::seconds(5)));
    return SourceOutcome::kCommitted;
  }
  // Never committed there: the destination never resumed it, so the VM may run here again.
  auto state = vm.RunState();
  if (state.ok() && *state != "running") SOD_RETURN_IF_ERROR(vm.Resume());
  return SourceOutcome::kAborted;
}

}  // namespace sod
