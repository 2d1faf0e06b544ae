// The destination side of a migration (migrate/PROTOCOL.md, "Migration" and "Exactly once").
//
// ServeSession handles one established session (responder side): either an offer (a VM comes
// in) or an outcome query (a source recovering an in-doubt migration).
//
// Incoming: the offer is checked (spec, admission, never-seen migration id), an incoming QEMU is
// started paused (`-incoming defer -S`), the StreamSink feeds it only verified bytes in order, the
// switchover check is answered, and the commit is verified: every data channel ended, QEMU loaded
// the stream, record count and session transcript equal ours, the receipt names this session's
// hosts, stream and transcript, its source signature verifies with the peer's certificate key, and
// the guest RAM digest equals ours. Only then is "committed" decided in the ledger, the VM resumed
// and the acknowledgement (with our receipt signature) sent. Any failure before that kills the
// incoming QEMU and tells the source why: the VM never runs here.
#pragma once

#include <functional>
#include <memory>
#include <optional>

#include "base/secret.h"
#include "migrate/migration.h"
#include "migrate/migration_state.h"

namespace sod {

class HostSigner;
class PeerAttestation;

// What the destination learns of an incoming VM's vTPM (vtpm/README.md): the epoch the offer
// names and the key its swtpm must load the state blobs with (from the source's VtpmKeyMsg).
struct IncomingVtpm {
  uint64_t epoch = 0;
  SecretBytes migration_key;  // kVtpmKeySize bytes
};

struct DestinationContext {
  std::string host_id;                // ours, as our certificate names it
  const HostSigner* signer = nullptr;  // required
  OutcomeLedger* ledger = nullptr;     // required
  // Starts the incoming QEMU (VmLaunchMode::kIncoming) for a VM of a migration; required.
  std::function<Result<std::unique_ptr<Vm>>(const VmSpec&, const MigrationId&)> launch_incoming;
  // VMs with a vTPM (spec.tpm, offer.vtpm_epoch != 0). Both empty: such offers are refused
  // (kRefused), and so they are when `attestation` is null: a vTPM and its key only go to an
  // attested host.
  //   check_vtpm_epoch: anti-rollback; OK only when `epoch` is newer than every epoch this host
  //     has seen for the VM (else kRefused naming both). Runs before the key is read and before
  //     anything is launched.
  //   launch_incoming_vtpm: starts the VM's incoming swtpm (with the migration key) and the
  //     incoming QEMU attached to it.
  std::function<Status(const std::string& vm_name, uint64_t epoch)> check_vtpm_epoch;
  std::function<Result<std::unique_ptr<Vm>>(const VmSpec&, const MigrationId&, const IncomingVtpm&)>
      launch_incoming_vtpm;
  // Authorization of an offer (may this peer send this VM here?). Empty: every offer from an
  // authenticated cluster host is admitted.
  std::function<Status(const OfferMsg&, const VmSpec&, const std::string& peer_host)> admit;
  // For outcome queries: does the VM of this migration run here now? Empty: "no".
  std::function<bool(const MigrationId&)> vm_running;
  // Mutual attestation, first thing on every session, and fresh evidence at the switchover check
  // (peer_attestation.h). Null: unattested (mutual TLS only). Must outlive the session.
  PeerAttestation* attestation = nullptr;
  std::chrono::milliseconds step_timeout = std::chrono::seconds(30);

  // Test seams (empty in production): called after the commit verified, just before "committed"
  // is decided; and after the VM resumed, just before the acknowledgement is sent.
  std::function<void(const MigrationId&)> before_decide_for_testing;
  std::function<void(Session&)> after_resume_for_testing;
};

struct DestinationReport {
  enum class Kind { kNothing, kMigration, kOutcomeQuery };
  Kind kind = Kind::kNothing;
  Status error;  // OK: committed (migration) or answered (query)
  MigrationId id{};
  DestinationState final_state = DestinationState::kAwaitOffer;
  std::string vm_name;
  std::unique_ptr<Vm> vm;                // the running VM, when committed
  std::optional<SignedReceipt> receipt;  // when committed
  size_t ram_pages_repaired = 0;  // pages the source sent apart from QEMU's stream (RAM check)
  PhaseTimes phases;  // launched, prepared, switchover-ok, commit-received, stream-loaded, ...
};

DestinationReport ServeSession(Session& session, DestinationContext& ctx);

}  // namespace sod
