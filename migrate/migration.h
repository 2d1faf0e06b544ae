// Shared types of the migration engine (migration_source.h, migration_destination.h).
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "migrate/control.h"
#include "migrate/receipt.h"

namespace sod {

class Session;
class Vm;
struct VmSpec;

std::string MigrationIdHex(const MigrationId& id);
Result<MigrationId> MigrationIdFromHex(std::string_view hex);
Result<MigrationId> NewMigrationId();
uint64_t UnixMillisNow();

// Live progress of an outgoing migration, reported about twice a second and at every phase
// change.
struct MigrationProgress {
  std::string phase;  // "attested", "streaming", "switchover", "completing", "commit", "done"
  uint32_t round = 0;              // QEMU's pre-copy pass (dirty-sync-count)
  uint64_t stream_bytes = 0;       // bytes of QEMU's stream sent so far
  uint64_t wire_bytes = 0;         // bytes on the data channels (records, with headers and tags)
  uint64_t ram_total = 0;          // guest RAM bytes
  uint64_t ram_remaining = 0;      // QEMU's estimate of RAM still to send
  uint64_t dirty_pages_rate = 0;   // pages/s the guest dirties
  uint64_t expected_downtime_ms = 0;
  double mbps = 0;                 // QEMU's current throughput estimate
  double elapsed_s = 0;
};
using ProgressFn = std::function<void(const MigrationProgress&)>;

// When each step of a migration ended, in ms since the migration began on this host (the
// source's session start, the destination's offer), in order. For "where does the time go":
// `sodctl migrate --json` and the audit log show them.
class PhaseTimes {
 public:
  PhaseTimes() : t0_(std::chrono::steady_clock::now()) {}
  void Mark(std::string name) { MarkAt(std::move(name), std::chrono::steady_clock::now()); }
  // A step that ended earlier (e.g. on another thread).
  void MarkAt(std::string name, std::chrono::steady_clock::time_point when) {
    marks_.emplace_back(std::move(name),
                        std::chrono::duration<double, std::milli>(when - t0_).count());
  }
  const std::vector<std::pair<std::string, double>>& marks() const { return marks_; }

 private:
  std::chrono::steady_clock::time_point t0_;
  std::vector<std::pair<std::string, double>> marks_;
};

// Where a host durably decides what became of each migration it received, before it acts on
// the decision. A migration is decided once: the destination decides "committed" before it
// resumes the VM; a recovery query for a migration not yet decided decides "aborted" (a fence:
// a commit still being verified then finds the migration decided and does not resume). So a
// source told "aborted" may resume its VM without any risk of a second copy.
class OutcomeLedger {
 public:
  virtual ~OutcomeLedger() = default;
  // Records `proposed` if `id` is undecided and returns it; otherwise returns the earlier
  // decision unchanged. Durable before it returns.
  virtual Result<MigrationOutcome> Decide(const MigrationId& id, MigrationOutcome proposed,
                                          std::string_view vm) = 0;
  virtual MigrationOutcome Lookup(const MigrationId& id) const = 0;
};

// One file per migration under `dir` ("<hex id>": "<outcome> <vm>\n"), written to a temporary
// name, fsync'd and renamed, then the directory fsync'd. Thread-safe (one process per dir).
class FileOutcomeLedger final : public OutcomeLedger {
 public:
  static Result<std::unique_ptr<FileOutcomeLedger>> Open(const std::string& dir);
  Result<MigrationOutcome> Decide(const MigrationId& id, MigrationOutcome proposed,
                                  std::string_view vm) override;
  MigrationOutcome Lookup(const MigrationId& id) const override;

 private:
  explicit FileOutcomeLedger(std::string dir) : dir_(std::move(dir)) {}
  MigrationOutcome LookupLocked(const MigrationId& id) const;
  std::string dir_;
  mutable std::mutex mu_;
};

// In memory, for tests. Thread-safe.
class MemoryOutcomeLedger final : public OutcomeLedger {
 public:
  Result<MigrationOutcome> Decide(const MigrationId& id, MigrationOutcome proposed,
                                  std::string_view vm) override;
  MigrationOutcome Lookup(const MigrationId& id) const override;

 private:
  mutable std::mutex mu_;
  std::map<MigrationId, MigrationOutcome> outcomes_;
};

// A receipt with both signatures, as both hosts keep it.
struct SignedReceipt {
  Receipt receipt;
  Bytes source_signature;
  Bytes destination_signature;
};
nlohmann::json ToJson(const SignedReceipt& r);

}  // namespace sod
