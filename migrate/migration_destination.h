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

#include "migrate/migration.h"
#include "migrate/migration_state.h"

namespace sod {

class HostSigner;
class PeerAttestation;

struct DestinationContext {
  std::string host_id;                // ours, as our certificate names it
  const HostSigner* signer = nullptr;  // required
  OutcomeLedger* ledger = nullptr;     // required
  // Starts the incoming QEMU (VmLaunchMode::kIncoming) for a VM of a migration; required.
  std::function<Result<std::unique_ptr<Vm>>(const VmSpec&, const MigrationId&)> launch_incoming;
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
};

DestinationReport ServeSession(Session& session, DestinationContext& ctx);

}  // namespace sod
