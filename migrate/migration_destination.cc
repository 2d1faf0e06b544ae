#include "migrate/migration_destination.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include <nlohmann/json.hpp>

#include "migrate/peer_attestation.h"
#include "migrate/qmp.h"
#include "migrate/ram_stream.h"
#include "migrate/session.h"
#include "migrate/socket.h"
#include "migrate/stream_pump.h"
#include "migrate/vm.h"

namespace sod {

namespace {

using json = nlohmann::json;
constexpr const char* kFdName = "sod-migration";

Status Mismatch(std::string_view what) {
  return Error(Errc::kIntegrity, "commit refused: " + std::string(what));
}

class DestinationMigration {
 public:
  DestinationMigration(Session& session, DestinationContext& ctx, const OfferMsg& offer)
      : session_(session), ctx_(ctx), offer_(offer) {}

  DestinationReport Run();

 private:
  Status Prepare();
  Result<IncomingVtpm> ReceiveVtpm(const VmSpec& spec);
  Status ReceiveUntilCommit();
  Status VerifyAndResume();
  void Fail(const Status& why, bool tell_peer);
  Status TakeRamRepair(ByteSpan payload);
  Status ApplyRamRepair();
  Status CheckRamDigest(const Receipt& r);
  void Mark(const char* phase) { report_.phases.Mark(phase); }
  void Event(DestinationEvent e) {
    Status s = sm_.On(e);
    if (!s.ok() && report_.error.ok()) report_.error = s;
  }

  Session& session_;
  DestinationContext& ctx_;
  const OfferMsg& offer_;
  DestinationStateMachine sm_;
  DestinationReport report_;
  std::unique_ptr<Vm> vm_;
  UniqueFd engine_fd_;
  UniqueFd qemu_end_;  // the incoming QEMU's end of the stream, until QEMU has it
  std::unique_ptr<StreamSink> sink_;
  std::unique_ptr<RamStreamTracker> tracker_;  // the RAM pages of the stream we load (verify_ram)
  std::vector<std::pair<uint64_t, Bytes>> repairs_;  // RAM pages the source sent itself
  CommitBody commit_;
};

Status DestinationMigration::TakeRamRepair(ByteSpan payload) {
  if (!tracker_ || sm_.state() != DestinationState::kSwitchover)
    return Error(Errc::kState, "RAM repair outside a RAM-checked switchover");
  SOD_ASSIGN_OR_RETURN(ChunkBody c, DecodeChunk(payload));
  if (c.stream != kRamRepairStream)
    return Error(Errc::kMalformed, "stream record of stream " + std::to_string(c.stream) +
                                       " on the control channel");
  if (c.data.size() != kRamPageSize || c.offset % kRamPageSize != 0 ||
      c.offset >= offer_.ram_bytes)
    return Error(Errc::kMalformed, "RAM repair of " + std::to_string(c.data.size()) +
                                       " bytes at offset " + std::to_string(c.offset));
  if (repairs_.size() >= kMaxRamRepairPages)
    return Error(Errc::kTooLarge, "more than " + std::to_string(kMaxRamRepairPages) +
                                      " RAM pages to repair");
  repairs_.emplace_back(c.offset, Bytes(c.data.begin(), c.data.end()));
  return Status::Ok();
}

Status DestinationMigration::ApplyRamRepair() {
  // QEMU has loaded the whole stream and the VM has never run here: the pages go straight into
  // its RAM (the memory-backend file), and count as the stream's from now on.
  if (repairs_.empty()) return Status::Ok();
  const std::string& path = vm_->paths().memory_file;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return Error(Errc::kIo, "open " + path + ": " + std::strerror(errno));
  for (const auto& [offset, page] : repairs_) {
    if (::pwrite(fd.get(), page.data(), page.size(), static_cast<off_t>(offset)) !=
        static_cast<ssize_t>(page.size()))
      return Error(Errc::kIo, "write guest RAM page at " + std::to_string(offset));
    SOD_RETURN_IF_ERROR(tracker_->Repair(kRamBlockName, offset, page));
  }
  report_.ram_pages_repaired = repairs_.size();
  Mark("ram-repaired");
  return Status::Ok();
}

Status DestinationMigration::CheckRamDigest(const Receipt& r) {
  if (!r.ram_digest_present) return Mismatch("the offer promised a RAM digest");
  SOD_RETURN_IF_ERROR(tracker_->status().WithContext("following the RAM in the stream"));
  if (!tracker_->ram_complete()) return Mismatch("the stream ended before its last RAM pages");
  const RamPageTable* loaded = tracker_->Block(kRamBlockName);
  if (loaded == nullptr || loaded->length != offer_.ram_bytes)
    return Mismatch("the stream carries no RAM block " + std::string(kRamBlockName) + " of " +
                    std::to_string(offer_.ram_bytes) + " bytes");
  const size_t never = static_cast<size_t>(std::count(loaded->seen.begin(), loaded->seen.end(), 0));
  if (never != 0) return Mismatch("the stream never carried " + std::to_string(never) + " RAM pages");
  const auto digest = RamTableDigest(*loaded);
  if (digest != r.ram_digest)
    return Mismatch("guest RAM differs from the source's (digest of the RAM loaded here " +
                    ToHex(digest) + ", of the source's RAM " + ToHex(r.ram_digest) + ")");
  return Status::Ok();
}

Result<IncomingVtpm> DestinationMigration::ReceiveVtpm(const VmSpec& spec) {
  const std::string& name = spec.name;
  if (!spec.tpm || offer_.vtpm_epoch == 0)
    return Error(Errc::kMalformed, "offer: the spec and the vTPM epoch disagree on vm " + name +
                                       " having a vTPM");
  if (!ctx_.attestation)
    return Error(Errc::kRefused, "vm " + name +
                                     " has a vTPM and this host does not attest: it takes no vTPM");
  if (!ctx_.check_vtpm_epoch || !ctx_.launch_incoming_vtpm)
    return Error(Errc::kRefused, "vm " + name + " has a vTPM and this host keeps no vTPMs");
  SOD_RETURN_IF_ERROR(ctx_.check_vtpm_epoch(name, offer_.vtpm_epoch));
  SOD_ASSIGN_OR_RETURN(ControlMsg m, session_.ReceiveControl());
  const auto* key = std::get_if<VtpmKeyMsg>(&m);
  if (!key)
    return Error(Errc::kState, "expected the vTPM key after the offer, got " +
                                   std::string(ControlName(m)));
  if (key->vtpm_epoch != offer_.vtpm_epoch)
    return Error(Errc::kMalformed, "vTPM key names epoch " + std::to_string(key->vtpm_epoch) +
                                       ", the offer " + std::to_string(offer_.vtpm_epoch));
  IncomingVtpm v;
  v.epoch = offer_.vtpm_epoch;
  v.migration_key = SecretBytes(ByteSpan(key->migration_key.data(), key->migration_key.size()));
  return v;
}

Status DestinationMigration::Prepare() {
  Event(DestinationEvent::kOfferReceived);
  json j = json::parse(offer_.spec_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Errc::kMalformed, "offer: VM spec is not JSON");
  SOD_ASSIGN_OR_RETURN(VmSpec spec, VmSpecFromJson(j));
  if (spec.name != offer_.vm_name)
    return Error(Errc::kMalformed, "offer: spec names VM " + spec.name + ", offer names " +
                                       offer_.vm_name);
  if (offer_.ram_bytes != uint64_t{spec.memory_mb} << 20)
    return Error(Errc::kMalformed, "offer: RAM size does not match the spec");
  if (ctx_.ledger->Lookup(offer_.migration_id) != MigrationOutcome::kUnknown)
    return Error(Errc::kRefused, "offer: migration " + MigrationIdHex(offer_.migration_id) +
                                     " was seen before (replayed offer)");
  if (ctx_.admit) SOD_RETURN_IF_ERROR(ctx_.admit(offer_, spec, session_.peer_host_id()));
  std::optional<IncomingVtpm> vtpm;
  if (spec.tpm || offer_.vtpm_epoch != 0) {
    SOD_ASSIGN_OR_RETURN(vtpm, ReceiveVtpm(spec));
  }

  // Admitted: the source may start streaming now, while our QEMU starts (~25-40 ms). Until QEMU
  // takes its end of the socketpair, verified bytes wait in the socketpair and, behind it, in the
  // data channels (PROTOCOL.md, "Prepared, then QEMU").
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    return SocketError("socketpair for", "the incoming stream", errno);
  qemu_end_.Reset(fds[0]);
  engine_fd_.Reset(fds[1]);  // default buffer size on purpose: PROTOCOL.md, "Stream"
  sink_ = std::make_unique<StreamSink>(engine_fd_.get(), session_.data_readers(),
                                       ctx_.step_timeout);
  if (offer_.verify_ram) {
    tracker_ = std::make_unique<RamStreamTracker>(offer_.ram_bytes + kRamStreamRomSlack);
    sink_->set_observer([t = tracker_.get()](ByteSpan b) { t->Feed(b); });
  }
  // A broken data channel or a dead QEMU: tell the source at once (it is streaming and would
  // otherwise only notice through a stalled channel).
  sink_->Start([this](const Status& s) { session_.SendAbort(s); });
  SOD_RETURN_IF_ERROR(session_.SendControl(PreparedMsg{}));
  Event(DestinationEvent::kPrepared);
  Mark("prepared");

  if (vtpm) {
    SOD_ASSIGN_OR_RETURN(vm_, ctx_.launch_incoming_vtpm(spec, offer_.migration_id, *vtpm));
  } else {
    SOD_ASSIGN_OR_RETURN(vm_, ctx_.launch_incoming(spec, offer_.migration_id));
  }
  Mark("launched");
  QmpClient& qmp = vm_->qmp();
  SOD_RETURN_IF_ERROR(
      qmp.Execute("migrate-set-capabilities",
                  {{"capabilities", json::array({{{"capability", "events"}, {"state", true}}})}})
          .status());
  SOD_RETURN_IF_ERROR(qmp.SendFd(kFdName, qemu_end_.get()));
  qemu_end_.Reset();  // QEMU holds its own copy now
  SOD_RETURN_IF_ERROR(
      qmp.Execute("migrate-incoming", {{"uri", std::string("fd:") + kFdName}}).status());
  Mark("loading");
  return Status::Ok();
}

Status DestinationMigration::ReceiveUntilCommit() {
  for (;;) {
    Result<RecordView> rec = session_.ReceiveControlRecord();
    if (!rec.ok()) return rec.status();
    switch (rec->header.type) {
      case RecordType::kRoundBoundary: {
        SOD_RETURN_IF_ERROR(DecodeRoundBoundary(rec->payload).status());
        // Echo our progress: the source's control channel would otherwise hear nothing from us
        // for the whole stream and time out on long migrations.
        // The source sends progress only before the switchover check, so every echo reaches it
        // before our SwitchoverOk, and none can race with the transcript in its commit.
        if (sm_.state() != DestinationState::kReceiving)
          return Error(Errc::kState, "progress record after the switchover check");
        Bytes echo;
        EncodeRoundBoundary({sink_->stream_bytes(), 0, 0}, echo);
        SOD_RETURN_IF_ERROR(session_.SendControlRecord(RecordType::kRoundBoundary, echo));
        continue;
      }
      case RecordType::kAbort: {
        SOD_ASSIGN_OR_RETURN(AbortBody a, DecodeAbort(rec->payload));
        return Error(Errc::kAborted, "source " + session_.peer_host_id() + " aborted (" +
                                         std::string(ErrcName(a.code)) + "): " + a.reason);
      }
      case RecordType::kControl: {
        SOD_ASSIGN_OR_RETURN(ControlMsg m, DecodeControl(rec->payload));
        const auto* check = std::get_if<SwitchoverCheckMsg>(&m);
        if (!check || sm_.state() != DestinationState::kReceiving)
          return Error(Errc::kState, "unexpected " + std::string(ControlName(m)) + " in state " +
                                         std::string(Name(sm_.state())));
        // No QMP round trip here: while QEMU loads the stream its monitor answers late, and
        // whether it loaded everything is checked before the commit anyway.
        SOD_RETURN_IF_ERROR(sink_->error());
        if (!vm_->Alive()) return Error(Errc::kIo, "the incoming QEMU died");
        SwitchoverOkMsg ok;
        if (!check->nonce.empty() && ctx_.attestation) {
          SOD_ASSIGN_OR_RETURN(ok.evidence, ctx_.attestation->EvidenceFor(session_, check->nonce));
        }
        SOD_RETURN_IF_ERROR(session_.SendControl(ok));
        Event(DestinationEvent::kSwitchoverApproved);
        Mark("switchover-ok");
        continue;
      }
      case RecordType::kStream:
        SOD_RETURN_IF_ERROR(TakeRamRepair(rec->payload));
        continue;
      case RecordType::kCommit: {
        if (sm_.state() != DestinationState::kSwitchover)
          return Error(Errc::kState, "commit before the switchover check");
        SOD_ASSIGN_OR_RETURN(commit_, DecodeCommit(rec->payload));
        Event(DestinationEvent::kCommitReceived);
        Mark("commit-received");
        return Status::Ok();
      }
      default:
        return Error(Errc::kState, "unexpected " + std::string(RecordTypeName(rec->header.type)) +
                                       " record on the control channel");
    }
  }
}

Status DestinationMigration::VerifyAndResume() {
  // 1. Every byte arrived through verified records, and QEMU loaded the whole stream.
  SOD_RETURN_IF_ERROR(sink_->Wait().WithContext("receiving the stream"));
  ::shutdown(engine_fd_.get(), SHUT_WR);
  auto done = vm_->qmp().WaitEvent(
      [](const QmpEvent& e) {
        std::string s = e.name == "MIGRATION" ? e.data.value("status", "") : "";
        return s == "completed" || s == "failed";
      },
      ctx_.step_timeout);
  if (!done.ok()) return done.status().WithContext("waiting for QEMU to load the stream");
  if (done->data.value("status", "") != "completed")
    return Error(Errc::kIo, "the incoming QEMU failed to load the stream");
  SOD_ASSIGN_OR_RETURN(std::string state, vm_->RunState());
  if (state != "paused") return Error(Errc::kState, "incoming VM is " + state + ", not paused");
  Mark("stream-loaded");

  // 2. The same records, in the same order, as the source sent.
  const uint64_t received = session_.records_received() - 1;  // the commit itself excluded
  if (commit_.records != received)
    return Mismatch("the source sent " + std::to_string(commit_.records) + " records, " +
                    std::to_string(received) + " arrived");
  SOD_ASSIGN_OR_RETURN(TranscriptValue mine, session_.TranscriptBeforeLastReceived());
  if (!TranscriptEqual(mine, commit_.transcript)) return Mismatch("transcript differs");

  // 3. The receipt states this session, and the source signed it.
  SOD_ASSIGN_OR_RETURN(Receipt r, DecodeReceipt(commit_.receipt));
  if (r.migration_id != offer_.migration_id) return Mismatch("receipt names another migration");
  if (r.vm_name != offer_.vm_name) return Mismatch("receipt names another VM");
  if (r.source_host != session_.peer_host_id())
    return Mismatch("receipt source " + r.source_host + " is not the authenticated peer " +
                    session_.peer_host_id());
  if (r.destination_host != ctx_.host_id) return Mismatch("receipt names another destination");
  if (!TranscriptEqual(r.transcript, commit_.transcript) || r.records != commit_.records)
    return Mismatch("receipt and commit disagree");
  if (r.stream_bytes != sink_->stream_bytes())
    return Mismatch("receipt states " + std::to_string(r.stream_bytes) + " stream bytes, " +
                    std::to_string(sink_->stream_bytes()) + " arrived");
  if (r.wire_bytes != session_.data_wire_bytes()) return Mismatch("receipt wire bytes differ");
  if (r.suite != session_.negotiated().suite) return Mismatch("receipt names another suite");
  if (r.vtpm_epoch != offer_.vtpm_epoch)
    return Mismatch("receipt names vTPM epoch " + std::to_string(r.vtpm_epoch) + ", the offer " +
                    std::to_string(offer_.vtpm_epoch));
  SOD_RETURN_IF_ERROR(VerifyReceiptSignature(session_.peer_public_key_der(), r,
                                             ReceiptRole::kSource, commit_.signature));
  if (offer_.verify_ram) {
    SOD_RETURN_IF_ERROR(ApplyRamRepair());
    SOD_RETURN_IF_ERROR(CheckRamDigest(r));
  }
  Mark("verified");

  // 4. Decide, then resume. A recovery query that fenced this migration wins.
  if (ctx_.before_decide_for_testing) ctx_.before_decide_for_testing(offer_.migration_id);
  SOD_ASSIGN_OR_RETURN(MigrationOutcome decided,
                       ctx_.ledger->Decide(offer_.migration_id, MigrationOutcome::kCommitted,
                                           offer_.vm_name));
  if (decided != MigrationOutcome::kCommitted)
    return Error(Errc::kState, "migration was already decided " +
                                   std::string(MigrationOutcomeName(decided)));
  Mark("decided");
  Status resumed = vm_->Resume();
  if (!resumed.ok()) {
    // The VM never ran here: the failure path kills it and tells the source, whose paused copy
    // is then the only one and resumes. (The ledger keeps "committed" for a VM that never ran;
    // a later outcome query answers "committed, not running" and the source leaves the decision
    // to an operator.)
    return resumed.WithContext("resuming the incoming VM");
  }
  Event(DestinationEvent::kCommitVerified);
  Mark("resumed");
  const uint64_t resumed_ms = UnixMillisNow();
  SOD_ASSIGN_OR_RETURN(Bytes sig, SignReceipt(*ctx_.signer, r, ReceiptRole::kDestination));
  report_.receipt = SignedReceipt{r, commit_.signature, sig};
  if (ctx_.after_resume_for_testing) ctx_.after_resume_for_testing(session_);
  // The VM runs here now; if the acknowledgement is lost the source recovers by asking.
  (void)session_.SendControl(CommitAckMsg{resumed_ms, sig});
  Mark("acknowledged");
  return Status::Ok();
}

void DestinationMigration::Fail(const Status& why, bool tell_peer) {
  Event(DestinationEvent::kFailure);
  if (sink_) sink_->Stop();
  if (tell_peer) session_.SendAbort(why);
  session_.Shutdown();  // wakes the sink's threads reading the data channels
  // ... and one writing to a QEMU that never started or stopped reading.
  if (engine_fd_.valid()) ::shutdown(engine_fd_.get(), SHUT_RDWR);
  sink_.reset();
  if (vm_) {
    vm_->Kill();
    vm_.reset();
  }
  // Decide "aborted" unless the commit was already decided (then the VM was resumed and this is
  // not a failure path).
  (void)ctx_.ledger->Decide(offer_.migration_id, MigrationOutcome::kAborted, offer_.vm_name);
}

DestinationReport DestinationMigration::Run() {
  report_.kind = DestinationReport::Kind::kMigration;
  report_.id = offer_.migration_id;
  report_.vm_name = offer_.vm_name;
  Status s = Prepare();
  if (s.ok()) s = ReceiveUntilCommit();
  // A broken data channel is the root cause of whatever the control path saw after it (the sink
  // already told the source and closed our sending side).
  if (!s.ok() && sink_ && !sink_->error().ok()) s = sink_->error();
  if (s.ok()) s = VerifyAndResume();
  if (!s.ok()) {
    const bool from_peer = s.code() == Errc::kAborted || s.code() == Errc::kClosed;
    report_.error = s;
    Fail(s, !from_peer);
  } else {
    report_.vm = std::move(vm_);
    session_.Shutdown();
  }
  report_.final_state = sm_.state();
  return std::move(report_);
}

DestinationReport AnswerOutcomeQuery(Session& session, DestinationContext& ctx,
                                     const QueryOutcomeMsg& q) {
  DestinationReport report;
  report.kind = DestinationReport::Kind::kOutcomeQuery;
  report.id = q.migration_id;
  // Fence: a migration not decided yet is decided "aborted" now.
  auto decided = ctx.ledger->Decide(q.migration_id, MigrationOutcome::kAborted, "");
  if (!decided.ok()) {
    report.error = decided.status();
    session.SendAbort(decided.status());
    return report;
  }
  OutcomeMsg answer{q.migration_id, *decided,
                    *decided == MigrationOutcome::kCommitted && ctx.vm_running &&
                        ctx.vm_running(q.migration_id)};
  report.error = session.SendControl(answer);
  return report;
}

}  // namespace

DestinationReport ServeSession(Session& session, DestinationContext& ctx) {
  if (ctx.attestation) {
    Status a = ctx.attestation->AttestIncoming(session);
    if (!a.ok()) {
      if (a.code() != Errc::kAborted) session.SendAbort(a);
      DestinationReport r;
      r.error = a;
      return r;
    }
  }
  Result<ControlMsg> first = session.ReceiveControl();
  if (!first.ok()) {
    DestinationReport r;
    r.error = first.status();
    return r;
  }
  if (const auto* offer = std::get_if<OfferMsg>(&*first)) {
    DestinationMigration m(session, ctx, *offer);
    return m.Run();
  }
  if (const auto* q = std::get_if<QueryOutcomeMsg>(&*first)) return AnswerOutcomeQuery(session, ctx, *q);
  DestinationReport r;
  r.error = Error(Errc::kState, "a session must start with an offer or an outcome query, not " +
                                    std::string(ControlName(*first)));
  session.SendAbort(r.error);
  return r;
}

}  // namespace sod
