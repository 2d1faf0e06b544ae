// MigrationService: the migration engine inside sodd (migrate/migration_source.h,
// migrate/migration_destination.h).
//
//   source:      admin op "migrate" {name, to, connect?, port?, channels?, suite?, verify_ram?,
//                max_bandwidth?, downtime_limit_ms?, downtime_start_ms?, converge_timeout_s?}
//                streams "progress" events and ends with the outcome and, when committed, the
//                signed receipt; admin op "recover" {name} resolves an in-doubt VM by asking its
//                destination; admin op "migrate.cancel" {name} cancels the VM's outgoing
//                migration (any: an admin's or the policy agent's) if QEMU has not paused the VM
//                for the switchover yet, waits until it ended, and says where the VM is.
//   destination: the session handler serves offers (VMs coming in) and outcome queries.
//
// Every migration's start, session (source: the TLS session with the destination is up),
// commit or abort, and every recovery, goes to the host's event sink (the hash-chained audit log
// in sodd) with its reason; receipts (both signatures) are also kept as
// <state dir>/receipts/<migration id>.json. Outcomes are decided in <state dir>/outcomes
// (FileOutcomeLedger). What recover needs to find the destination again is kept in
// <state dir>/receipts/<migration id>.pending.json while a migration is in doubt.
//
// Thread-safety: ops and sessions run concurrently on their own threads; the service's state is
// the registry's (thread-safe), the ledger's (thread-safe) and files per migration id.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>

#include "host/host_daemon.h"
#include "migrate/migration.h"
#include "migrate/receipt.h"

namespace sod {

class PeerAttestation;

class MigrationService {
 public:
  // `daemon` must outlive the service. Loads the host signing key (<tls dir>/<host>.key) and
  // opens the outcome ledger.
  static Result<std::unique_ptr<MigrationService>> Create(HostDaemon& daemon);
  // Registers the ops and the session handler, and settles the VMs a previous sodd left in doubt
  // (ResolveAfterRestart). Before daemon.Start().
  void Install();
  // After a sodd restart: an incoming VM whose migration was not committed is fenced (decided
  // aborted) and removed, a committed one is kept (and resumed if needed); an outgoing VM whose
  // QEMU still runs it is simply returned, one paused before its commit could have been sent
  // (QEMU not in postmigrate) has its QEMU migration cancelled and is resumed; one in postmigrate
  // stays in doubt for `sodctl recover`. Each decision goes to the audit log.
  void ResolveAfterRestart();
  // Mutual attestation for every session, both directions (host/attestation_service.h). Null:
  // sessions are unattested (mutual TLS only). Before Install; must outlive the service.
  void set_attestation(PeerAttestation* attestation) { attestation_ = attestation; }
  // Admission of incoming offers (DestinationContext::admit): the policy agent checks the VM's
  // security request and that this host covers it. Before Install.
  using Admit = std::function<Status(const VmSpec& spec, const std::string& from)>;
  void set_admit(Admit admit) { admit_ = std::move(admit); }
  // Audits incoming migrations from a source admitted for evacuation (`from`'s verdict). Before
  // Install.
  using EvacuationCheck = std::function<bool(const std::string& from)>;
  void set_evacuation_check(EvacuationCheck check) { evacuation_check_ = std::move(check); }

  // What the "migrate" op does, without an admin connection (the policy agent): `request` as the
  // op's ({name, to, connect?, port?, ...}); `emit` (may be empty) sees "connecting", "session"
  // and "progress" events. Returns the outcome object, or the error that ended the migration.
  using Emit = std::function<void(std::string_view kind, const nlohmann::json& fields)>;
  Result<nlohmann::json> MigrateVm(const nlohmann::json& request, const Emit& emit);

 private:
  MigrationService(HostDaemon& d, std::unique_ptr<HostSigner> signer,
                   std::unique_ptr<FileOutcomeLedger> ledger)
      : d_(d), signer_(std::move(signer)), ledger_(std::move(ledger)) {}
  Result<nlohmann::json> Recover(const nlohmann::json& request, AdminEvents& events);
  Result<nlohmann::json> Cancel(const nlohmann::json& request);
  void Serve(std::unique_ptr<Session> session);
  void Audit(std::string_view kind, const nlohmann::json& data);
  Status SaveReceipt(const SignedReceipt& r);

  HostDaemon& d_;
  std::unique_ptr<HostSigner> signer_;
  std::unique_ptr<FileOutcomeLedger> ledger_;
  PeerAttestation* attestation_ = nullptr;
  Admit admit_;
  EvacuationCheck evacuation_check_;
  // Outgoing migrations in progress, by VM name: the flag their SourceOptions::cancel_requested
  // reads. An entry is erased when its migration ends (running_cv_ is notified).
  std::mutex running_mu_;
  std::condition_variable running_cv_;
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> running_;  // by running_mu_
  std::mutex closed_mu_;
  std::map<std::string, std::chrono::steady_clock::time_point> last_closed_;  // by closed_mu_
};

}  // namespace sod
