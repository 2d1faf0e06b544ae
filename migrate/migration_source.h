// The source side of a migration (migrate/PROTOCOL.md, "Migration" and "Exactly once").
//
// MigrateOut moves a running (or paused) VM over an established session: offer, the destination
// prepares, QEMU streams into the engine (`migrate fd:`) and the StreamPump spreads the stream
// over the data channels, QEMU pauses the VM before switchover and the destination is checked
// once more, QEMU completes, the source commits (transcript, record count, signed receipt), the
// destination verifies, resumes and acknowledges, and only then the source QEMU quits.
//
// Outcomes: kCommitted (the VM runs at the destination; the local QEMU has quit); kAborted (the
// VM runs here as before; nothing runs there); kInDoubt (the commit went out but no answer came:
// the VM stays paused here until RecoverInDoubt learns what the destination did). The VM never
// runs in two places.
#pragma once

#include <chrono>
#include <functional>
#include <optional>

#include "migrate/migration.h"
#include "migrate/migration_state.h"
#include "migrate/ram_stream.h"

namespace sod {

class HostSigner;
class PeerAttestation;
class SecretBytes;

// A VM's vTPM on the move (vtpm/README.md): its state rides in QEMU's stream (encrypted by the
// swtpm under `migration_key`), the offer and the receipt name `epoch`, and the key goes to the
// destination (VtpmKeyMsg) only on an attested session, after the destination passed.
struct SourceVtpm {
  uint64_t epoch = 0;                          // the new epoch: this host's epoch + 1 (never 0)
  const SecretBytes* migration_key = nullptr;  // kVtpmKeySize bytes; must outlive the migration
};

struct SourceOptions {
  std::string host_id;      // ours, as our certificate names it (goes into the receipt)
  std::optional<MigrationId> migration_id;  // preset id (e.g. to lease the VM under it); else random
  // Before committing, compare the paused guest's RAM with what QEMU's stream carried, page by
  // page (ram_stream.h), and put the RAM's digest into the receipt for the destination to check
  // against the stream it loaded. A difference aborts the migration (the VM stays here).
  // Pages QEMU got wrong are repaired (sent by sod itself, PROTOCOL.md "RAM check") up to this
  // many; more abort the migration.
  bool verify_ram = true;
  // With verify_ram: hash the RAM while the guest runs, under a write log of QEMU's mapping
  // (ram_write_log.h), and read again at the pause only the pages written since; false, or when
  // QEMU has no log to offer: read all of the RAM at the pause.
  bool ram_write_log = true;
  size_t max_ram_repair_pages = kMaxRamRepairPages;
  // The most downtime QEMU may plan for when it switches over (its downtime-limit). QEMU starts
  // with a smaller target, `downtime_start_ms`, raised pass by pass up to the limit
  // (DowntimeSchedule): a guest whose passes shrink switches over with a small last round; one
  // that keeps up with QEMU gets the whole limit after a pass or two. downtime_start_ms 0 (or
  // >= the limit): the limit from the start, as QEMU alone would.
  uint64_t downtime_limit_ms = 300;
  uint64_t downtime_start_ms = 50;
  uint64_t max_bandwidth = 100ull << 30;  // QEMU's max-bandwidth (its default is 128 MiB/s)
  std::chrono::milliseconds converge_timeout = std::chrono::minutes(10);
  // Polled while QEMU streams, before it pauses the VM (every 50 ms at most): true ends the
  // migration as an admin's cancel (kCancelled): QEMU's migration is cancelled, the destination
  // is told and discards what it got, the VM runs on here. From the pause on, the migration is
  // committing and is not cancelled. Empty: never. Called on the migration's thread.
  std::function<bool()> cancel_requested;
  std::chrono::milliseconds step_timeout = std::chrono::seconds(30);  // each peer answer
  // How long to wait for the answer to the commit before the migration is in doubt.
  std::chrono::milliseconds commit_timeout = std::chrono::seconds(30);
  // Mutual attestation before the offer and a fresh check of the destination while the VM is
  // paused before switchover (peer_attestation.h). Null: unattested (mutual TLS only). Must
  // outlive the migration.
  PeerAttestation* attestation = nullptr;
  // Set exactly when the VM's spec has a vTPM (spec.tpm); needs `attestation`, else the
  // migration is refused (kAttestation) before the offer.
  std::optional<SourceVtpm> vtpm;
  // Test seam (empty in production): runs once QEMU has paused the VM for switchover.
  std::function<void()> at_pause_for_testing;
  // Test seam (empty in production): may alter the receipt after it is built, before signing.
  std::function<void(Receipt&)> mutate_receipt_for_testing;
};

// QEMU's downtime target (its downtime-limit), pass by pass (SourceOptions::downtime_start_ms).
// It starts at `start_ms`. At each pass after the first (a MIGRATION_PASS event: QEMU synced its
// dirty log), it doubles while passes still at least halve what is left to send, and goes to
// `limit_ms` at once when one did not (the guest dirties about as fast as QEMU sends: waiting
// for a small last round would only add rounds). Never above the limit; start 0 or >= limit:
// the limit throughout.
class DowntimeSchedule {
 public:
  DowntimeSchedule(uint64_t start_ms, uint64_t limit_ms)
      : limit_ms_(limit_ms),
        target_ms_(start_ms == 0 || start_ms >= limit_ms ? limit_ms : start_ms) {}
  uint64_t target_ms() const { return target_ms_; }
  bool at_limit() const { return target_ms_ >= limit_ms_; }
  // QEMU's `pass`th sync left `remaining_bytes` to send. Returns the new target.
  uint64_t OnPass(uint64_t pass, uint64_t remaining_bytes);

 private:
  uint64_t limit_ms_;
  uint64_t target_ms_;
  uint64_t last_pass_ = 0;
  uint64_t last_remaining_ = 0;
};

enum class SourceOutcome { kCommitted, kAborted, kInDoubt };
std::string_view SourceOutcomeName(SourceOutcome o);

struct SourceReport {
  SourceOutcome outcome = SourceOutcome::kAborted;
  Status error;  // why it did not commit (OK when committed)
  MigrationId id{};
  SourceState final_state = SourceState::kIdle;
  std::optional<SignedReceipt> receipt;  // when committed
  double total_s = 0;            // session start to acknowledged commit (or to the end)
  double downtime_ms = 0;        // source VM stopped -> destination VM resumed (host clocks)
  double qemu_downtime_ms = 0;   // QEMU's own figure (stop -> stream complete)
  uint64_t stream_bytes = 0;
  uint64_t wire_bytes = 0;
  uint32_t rounds = 0;
  uint64_t downtime_target_ms = 0;  // QEMU's downtime-limit when it switched over
  size_t ram_pages_repaired = 0;  // pages QEMU's stream got wrong, sent by sod (RAM check)
  // RAM check: how the paused RAM was read ("write log", or "whole RAM at the pause: <why>") and
  // how many pages were read after the pause.
  std::string ram_check;
  size_t ram_pages_read_at_pause = 0;
  PhaseTimes phases;  // attested, prepared, streaming, paused, switchover-ok, qemu-completed, ...
};

// Migrates `vm` over `session` (initiator side, data channels open). Takes over vm.qmp() for the
// duration. `progress` may be empty. Never throws; every failure is in the report.
SourceReport MigrateOut(Session& session, Vm& vm, const HostSigner& signer,
                        const SourceOptions& options, const ProgressFn& progress);

// Resolves an in-doubt migration of `vm` (paused here) by asking the destination over a new
// session: committed there -> quit here (kCommitted); never committed there -> resume here
// (kAborted). Committed there but no longer running there: nothing is done and kState explains
// (an operator must decide; resuming here could fork the VM's history).
// With `attestation`, the hosts attest to each other first (the destination requires it when it
// attests).
Result<SourceOutcome> RecoverInDoubt(Session& session, Vm& vm, const MigrationId& id,
                                     PeerAttestation* attestation = nullptr);

}  // namespace sod
