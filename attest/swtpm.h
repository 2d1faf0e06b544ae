// A simulated host TPM for tests and demos: a swtpm (TPM 2.0) process on loopback, and a
// simulated measured boot to replay into its PCRs.
//
// SimulatedTpm runs
//   swtpm socket --tpm2 --tpmstate dir=STATE --flags not-need-init,startup-clear
//         --server type=tcp,port=P,bindaddr=127.0.0.1 --ctrl type=tcp,port=P+1,bindaddr=127.0.0.1
// and is reached through the tpm2-tss swtpm TCTI (`swtpm:host=127.0.0.1,port=P`, which also
// uses the control port P+1). Talk to it with EsysTpm (attest/esys_tpm.h) or tpm2-tools.
//
// State: STATE keeps the TPM's non-volatile state, so persisted keys (the EK and AK of
// EsysTpm::Provision) survive a restart on the same directory, while every start is a TPM
// reset: PCRs are back to their reset values (PcrResetValue), like a host that rebooted. One
// swtpm per state directory at a time (swtpm locks it). The log (SimulatedTpmOptions::log_path)
// is the only other file written there.
//
// Ports: unless fixed by the options, P is chosen at random in [20000, 32000) (below Linux's
// default ephemeral range, so outgoing connections do not take it) among pairs that are free
// when probed; a swtpm that then fails to bind because another process took the port is
// restarted on another pair. Start only counts an answer on P once the socket listening there
// belongs to its own child (/proc), never a TPM that another process runs on the same port.
// Several SimulatedTpms (tests running in parallel) can coexist.
//
// Ownership and lifetime: the object owns the swtpm child, which stays in our process group
// with stdin on /dev/null, stdout and stderr in the log, and no other descriptor of ours.
// Stop() and the destructor end it (SIGTERM, then SIGKILL after a grace period) and reap it; if
// this process dies without running them, the swtpm keeps running; a Start with
// options.end_orphan on the same state directory ends that orphan first. A swtpm that dies on its own
// is not restarted: TPM calls through its TCTI then fail with kIo, and Running() turns false.
//
// Thread-safety: not thread-safe; one thread manages an instance. tcti(), port() and pid() are
// constant after Start and may be read from any thread while the instance is alive.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attest/tpm.h"
#include "base/status.h"

namespace sod::attest {

struct SimulatedTpmOptions {
  // Looked up in PATH when it contains no '/'.
  std::string binary = "swtpm";
  // The swtpm's stdout and stderr (truncated at each start). Empty: STATE/swtpm.log.
  std::string log_path;
  // 0: a free pair chosen at random (see above). Otherwise the server port; P+1 is the control
  // port, and a port in use is an error (no retry).
  uint16_t port = 0;
  // How long Start waits for the TPM to answer a command.
  std::chrono::milliseconds start_timeout{10000};
  // End an orphaned swtpm left on this state directory by a previous owner that died without
  // stopping it (its pid in STATE/swtpm.pid, its parent no longer us, its command line a swtpm
  // on this directory). Only for owners that hold the directory exclusively (sodd, which locks
  // its state dir). Otherwise such a swtpm keeps the directory locked and Start fails with kIo.
  bool end_orphan = false;
};

class SimulatedTpm {
 public:
  // Creates `state_dir` (0700, with missing parents) if missing, starts swtpm and waits until its
  // TPM answers a TPM2_GetRandom on the server port. Errors: kNotFound (no swtpm binary), kIo
  // (spawn failure, swtpm exited, e.g. state directory locked by another swtpm; the message has the
  // end of its log), kTimeout (no answer within start_timeout).
  static Result<std::unique_ptr<SimulatedTpm>> Start(const std::string& state_dir,
                                                     SimulatedTpmOptions options = {});
  // Stop(), errors ignored.
  ~SimulatedTpm();
  SimulatedTpm(const SimulatedTpm&) = delete;
  SimulatedTpm& operator=(const SimulatedTpm&) = delete;

  // `swtpm:host=127.0.0.1,port=P`, for EsysTpm::Open and tpm2-tools' -T.
  const std::string& tcti() const { return tcti_; }
  uint16_t port() const { return port_; }  // server port; control is port() + 1
  pid_t pid() const { return pid_; }       // of the swtpm, also after it ended
  const std::string& state_dir() const { return state_dir_; }
  const std::string& log_path() const { return log_path_; }

  // False once the swtpm ended (reaps it).
  bool Running();
  // Ends the swtpm: SIGTERM (swtpm saves its state and exits), SIGKILL if it still runs after
  // `grace`, then reaps it. OK when it had already ended, also on later calls. Errors: kIo
  // (signal or waitpid failed).
  Status Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));

 private:
  SimulatedTpm(pid_t pid, uint16_t port, std::string state_dir, std::string log_path);
  // One waitpid(WNOHANG); true when the child was reaped now or before.
  bool TryReap();

  pid_t pid_;
  uint16_t port_;
  std::string state_dir_;
  std::string log_path_;
  std::string tcti_;
  bool reaped_ = false;
};

// ---------------------------------------------------------------------------------------------
// The simulated measured boot.
//
// A fixed list of boot events, each extended into the SHA-256 bank of its PCR in list order,
// with digest = SHA-256 of the event's description (UTF-8, no terminator):
//
//   PCR 0  "sod simulated firmware: core root of trust and platform firmware v1"
//   PCR 1  "sod simulated firmware configuration: boot order disk0"
//   PCR 2  "sod simulated option ROMs: none"
//   PCR 3  "sod simulated option ROM configuration: none"
//   PCR 4  "sod simulated bootloader: sod-boot v1"
//   PCR 4  "sod simulated kernel: linux host kernel v1"
//   PCR 5  "sod simulated boot configuration: GPT disk0"
//   PCR 7  "sod simulated secure boot policy: enabled, db=sod test CA"
//   PCR 0..7  "sod simulated separator" (after all of the above, PCR 6 included)
//
// A verifier recomputes the values with ExpectedPcrsAfterBoot. The list only touches PCRs
// 0..7; PCRs 8..23 keep their reset values (PcrResetValue) for other uses.

struct BootEvent {
  uint32_t pcr;
  std::string description;
  PcrDigest Digest() const;  // SHA-256(description)
};

// The events above, in extension order.
std::vector<BootEvent> SimulatedBootEvents();

// A PCR's value after TPM2_Startup(CLEAR) on a PC-client TPM such as swtpm: all 0xff for the
// D-RTM PCRs 17..22 (no dynamic launch happened), zero for the others.
PcrDigest PcrResetValue(uint32_t pcr);

// SHA-256 PCR values of `selection` after a TPM reset followed by SimulatedBootEvents() (PCRs
// the list does not touch keep PcrResetValue). Pure function.
PcrValues ExpectedPcrsAfterBoot(PcrSelection selection);

// Extends SimulatedBootEvents() into `tpm`. Precondition checked: PCRs 0..7 are all zero (the
// TPM was reset since the last replay); otherwise kState and nothing is extended, so after
// success the PCRs equal ExpectedPcrsAfterBoot. TPM errors pass through; after a failure in
// the middle the PCRs are partly extended until the next TPM reset.
Status SimulateMeasuredBoot(Tpm& tpm);

}  // namespace sod::attest
