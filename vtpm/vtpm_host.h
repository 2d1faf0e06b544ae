// VtpmHost: everything one host keeps for the vTPMs of its VMs (vtpm/README.md, "On a host").
//
//   <root>/vtpm/master.sealed   the host's vTPM master key (32 bytes), sealed by a KeySealer (the
//                               host TPM, to its boot PCRs): a host whose boot state changed
//                               cannot unseal it, so it cannot start any vTPM
//   <root>/vtpm/epochs.json     the highest vTPM epoch this host has seen for each VM name
//   <vm_dir>/tpm/               the VM's swtpm state (encrypted by swtpm with the state key)
//   <vm_dir>/vtpm.keys          the VM's state key and migration key, AES-256-GCM under a key
//                               derived from the master key (bound to the VM's name)
//   <vm_dir>/swtpm.sock         the swtpm control socket QEMU attaches to
//
// Keys: the state key is this host's own (a fresh one for every VM that arrives); the migration
// key is the VM's, fixed while its swtpm runs (swtpm takes it at start), created with the VM and
// carried to each destination over the attested channel (VtpmKeyMsg). No key byte is written to
// disk in clear.
//
// Epochs (anti-rollback): a new VM starts at the epoch after the highest this host has seen for
// its name (1 for a name never seen); every migration moves it to epoch + 1; each host records
// every epoch it commits, either way, and refuses an incoming vTPM whose epoch is not newer than
// its record (CheckNewer).
//
// Thread-safety: thread-safe (one mutex over the epoch table; key and state files are per VM,
// and the caller serializes calls for one VM, as VmRegistry does).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "base/bytes.h"
#include "base/secret.h"
#include "base/status.h"
#include "vtpm/vm_tpm.h"

namespace sod::vtpm {

// Keeps a small secret so that only this host, in its expected state, gets it back.
class KeySealer {
 public:
  virtual ~KeySealer() = default;
  virtual Result<Bytes> Seal(ByteSpan secret) = 0;
  // Errors: whatever says why the secret cannot come back (PCRs changed, another TPM, bad blob).
  virtual Result<SecretBytes> Unseal(ByteSpan blob) = 0;
  virtual std::string Describe() const = 0;  // for messages: "host TPM, PCRs 0-7"
};

struct VtpmHostOptions {
  std::string swtpm_binary = "swtpm";
  std::chrono::milliseconds start_timeout{10000};
};

class VtpmHost {
 public:
  // Opens (creates 0700) <root>/vtpm; unseals the master key, or makes and seals one when there
  // is none yet; loads the epoch table. `sealer` must outlive the host. Errors: the sealer's
  // (named: the vTPMs of this host are unavailable), kIo, kMalformed (epochs.json).
  static Result<std::unique_ptr<VtpmHost>> Open(const std::string& root, KeySealer& sealer,
                                                VtpmHostOptions options = {});

  static std::string StateDirOf(const std::string& vm_dir) { return vm_dir + "/tpm"; }
  static std::string SocketOf(const std::string& vm_dir) { return vm_dir + "/swtpm.sock"; }
  static std::string KeysFileOf(const std::string& vm_dir) { return vm_dir + "/vtpm.keys"; }

  // The VM's own vTPM (kRun): its keys from <vm_dir>/vtpm.keys, or new keys when the VM has none
  // yet (a new VM). Only for a VM no QEMU runs yet: a swtpm a dead owner left on the directory
  // is ended first.
  Result<std::unique_ptr<VmTpm>> StartForVm(const std::string& name, const std::string& vm_dir);
  // A migration destination (kIncoming): a new state key, the VM's migration key as received;
  // both are stored wrapped. The state directory must hold no TPM state.
  Result<std::unique_ptr<VmTpm>> StartIncoming(const std::string& name, const std::string& vm_dir,
                                               const SecretBytes& migration_key);
  // After a sodd restart: the swtpm that kept running for the VM (VmTpm::Adopt).
  Result<std::unique_ptr<VmTpm>> Adopt(const std::string& vm_dir);
  // The VM's migration key, for the destination of its next migration. Errors: kNotFound (no
  // keys file), kIntegrity (keys file changed, another VM's, or another host's), kMalformed.
  Result<SecretBytes> MigrationKey(const std::string& name, const std::string& vm_dir);
  // Erases the VM's vTPM for good: state directory (EraseVmTpmState) and keys file. The swtpm
  // must have ended (kState otherwise). OK when there is nothing.
  Status Erase(const std::string& vm_dir);

  // The highest epoch recorded for `name` (0: never seen).
  uint64_t SeenEpoch(const std::string& name) const;
  // OK when `epoch` is newer than SeenEpoch(name); kRefused otherwise, naming both.
  Status CheckNewer(const std::string& name, uint64_t epoch) const;
  // Raises the record for `name` to `epoch` (never lowers it) and writes it durably first.
  Status RecordEpoch(const std::string& name, uint64_t epoch);

  const std::string& sealer_description() const { return sealer_description_; }

 private:
  VtpmHost(std::string dir, SecretBytes wrap_key, std::string sealer_description,
           VtpmHostOptions options)
      : dir_(std::move(dir)),
        wrap_key_(std::move(wrap_key)),
        sealer_description_(std::move(sealer_description)),
        options_(std::move(options)) {}
  struct VmKeys {
    SecretBytes state_key;
    SecretBytes migration_key;
  };
  Status WriteKeys(const std::string& name, const std::string& vm_dir, const VmKeys& keys);
  Result<VmKeys> ReadKeys(const std::string& name, const std::string& vm_dir);
  VmTpmOptions TpmOptions(const std::string& vm_dir, const SecretBytes* migration_key,
                          bool end_orphan) const;
  std::string EpochsFile() const { return dir_ + "/epochs.json"; }

  const std::string dir_;
  const SecretBytes wrap_key_;  // derived from the master key; the master key itself is dropped
  const std::string sealer_description_;
  const VtpmHostOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> epochs_;  // guarded by mu_
};

}  // namespace sod::vtpm
