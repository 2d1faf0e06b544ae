// A VM's virtual TPM: one swtpm (TPM 2.0) process per VM, its state encrypted at rest, attached to
// the VM's QEMU through QEMU's tpm-emulator backend (VmPaths::tpm_socket, migrate/vm.h).
// vtpm/README.md explains the design; this header states the contracts.
//
// VmTpm runs
//   swtpm socket --tpm2 --tpmstate dir=STATE,mode=0600
//         --ctrl type=unixio,path=SOCK,mode=0600
//         --key fd=3,format=binary,mode=aes-256-cbc [--migration-key fd=4,format=binary,...]
//         --pid file=STATE/swtpm.pid        (stdout and stderr: the log file)
// No --server: QEMU hands swtpm the data channel over the control socket (CMD_SET_DATAFD), and
// no --flags startup-clear: QEMU sends CMD_INIT and the guest firmware sends TPM2_Startup.
//
// Keys: the 32-byte state key (and the optional migration key) reach swtpm through a pipe that
// is written, closed and handed over as fd 3 (fd 4); no key byte is ever written to a file. swtpm
// encrypts the state files (tpm2-00.permall, and the volatile state it saves on shutdown) with
// AES-256-CBC plus an HMAC (encrypt-then-MAC), so the state directory is useless without the key,
// and a file changed on disk is refused when swtpm loads it.
//
// Migration (QEMU 7.2): the vTPM state travels in-band. At switchover the source QEMU's
// tpm-emulator pulls the permanent, volatile and savestate blobs from its swtpm over the control
// channel (CMD_GET_STATEBLOB) and puts them into its migration stream as the "tpm-emulator"
// device section; the destination QEMU pushes them into its own swtpm (CMD_SET_STATEBLOB), which
// then writes them to its state directory under its own state key. So a destination starts a
// VmTpm in kIncoming mode on an empty state directory. Without a migration key the blobs are in
// clear inside QEMU's stream (sod's records protect them on the wire); with the same migration
// key on both swtpms they are encrypted by swtpm before QEMU sees them.
//
// Lifetime: the swtpm runs in its own session (setsid), like the VM's QEMU, so signals aimed at
// sodd do not end it while the VM runs. Stop() and the destructor end it (SIGTERM: swtpm saves its
// state and exits; SIGKILL after a grace period) and reap it. A swtpm serves one QEMU process:
// start a new VmTpm for every QEMU launch. A swtpm that dies is not restarted (the guest's TPM
// then fails); Running() turns false.
//
// Thread-safety: not thread-safe; one thread manages an instance. The const accessors are
// constant after Start.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "base/secret.h"
#include "base/status.h"

namespace sod::vtpm {

// AES-256 keys: state key and migration key.
inline constexpr size_t kVmTpmKeyBytes = 32;

// A fresh random key (OpenSSL CSPRNG). Errors: kCrypto.
Result<SecretBytes> NewVmTpmKey();

enum class VmTpmMode {
  kRun,       // the VM's own TPM: an empty state directory makes a new TPM, else its state is used
  kIncoming,  // a migration destination: the state directory must hold no TPM state (kState)
};

struct VmTpmOptions {
  // Looked up in PATH when it contains no '/'.
  std::string binary = "swtpm";
  // swtpm's stdout and stderr, where it reports errors (truncated at each start); swtpm's --log
  // stays off (its higher levels dump TPM commands). "" = STATE/swtpm.log.
  std::string log_path;
  // How long Start waits for the control channel to answer.
  std::chrono::milliseconds start_timeout{10000};
  // Encrypts the state blobs that QEMU pulls for migration; both sides of a migration need the
  // same key. Null: blobs in clear. Must outlive Start (swtpm has read it when Start returns).
  const SecretBytes* migration_key = nullptr;
  // End a swtpm left on this state directory by an owner that died (its pid in STATE/swtpm.pid,
  // not our child, its command line a swtpm on exactly this directory). Only for an owner that
  // knows no QEMU uses that swtpm any more; otherwise Start fails with kIo (directory locked).
  bool end_orphan = false;
};

class VmTpm {
 public:
  // Creates `state_dir` (0700, with parents) if missing, removes a stale `ctrl_socket`, starts
  // swtpm and waits until its control channel answers CMD_GET_CAPABILITY. `state_key` must be
  // kVmTpmKeyBytes long and is the key the state directory was (or will be) encrypted with.
  // Errors: kInvalidArgument (key size, empty or too long paths), kState (kIncoming on a
  // directory that holds TPM state), kNotFound (no swtpm binary), kIo (spawn failed, swtpm
  // exited, e.g. wrong key for existing state or directory locked; the message carries the end
  // of its log), kTimeout.
  static Result<std::unique_ptr<VmTpm>> Start(const std::string& state_dir,
                                              const std::string& ctrl_socket,
                                              const SecretBytes& state_key, VmTpmMode mode,
                                              VmTpmOptions options = {});
  // Re-attaches to the swtpm an earlier owner (a sodd before its restart) started on
  // `state_dir`: the pid in STATE/swtpm.pid must be a live swtpm whose command line names exactly
  // this directory, and `ctrl_socket` must exist (its QEMU keeps using it). Running and Stop then
  // work on it as on a started one (it is not our child: Stop signals it and waits for it to go).
  // Errors: kNotFound (no such swtpm, or no control socket).
  static Result<std::unique_ptr<VmTpm>> Adopt(const std::string& state_dir,
                                              const std::string& ctrl_socket,
                                              std::string log_path = "");
  // Stop(), errors ignored, unless Release was called.
  ~VmTpm();
  VmTpm(const VmTpm&) = delete;
  VmTpm& operator=(const VmTpm&) = delete;

  const std::string& state_dir() const { return state_dir_; }
  const std::string& ctrl_socket() const { return ctrl_socket_; }  // for VmPaths::tpm_socket
  const std::string& log_path() const { return log_path_; }
  pid_t pid() const { return pid_; }  // also after it ended

  // False once the swtpm ended (reaps it).
  bool Running();
  // SIGTERM, SIGKILL after `grace`, reap; removes the control socket and pid file. OK when it had
  // already ended, also on later calls. Errors: kIo (signal or waitpid failed).
  Status Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  // Forgets the process and leaves it running (an owner that exits while the VM runs on; a later
  // owner adopts it). Running() is false and Stop() does nothing afterwards.
  void Release() { released_ = true; }
  // True when this object adopted the swtpm rather than starting it.
  bool adopted() const { return adopted_; }

 private:
  VmTpm(pid_t pid, std::string state_dir, std::string ctrl_socket, std::string log_path);
  bool TryReap();

  pid_t pid_;
  std::string state_dir_;
  std::string ctrl_socket_;
  std::string log_path_;
  bool reaped_ = false;
  bool adopted_ = false;   // not our child: liveness from the pid file, Stop signals and waits
  bool released_ = false;
};

// True when `state_dir` holds a TPM 2.0 state (swtpm's tpm2-00.permall).
bool HasVmTpmState(const std::string& state_dir);

// Erases a vTPM state directory for good (the source after commit): every regular file in it is
// overwritten with zeros, synced and unlinked, then the directory is removed. Sub-directories
// and other file types are refused. The real guarantee is the key: without the state key the
// files were already useless; on copy-on-write or journaled file systems the overwrite is best
// effort. OK when the directory does not exist. Errors: kState (a live swtpm still uses it,
// or it holds something other than regular files), kIo.
Status EraseVmTpmState(const std::string& state_dir);

}  // namespace sod::vtpm
