// Control messages: the payload of kControl records on channel 0, inside the TLS control channel
// (migrate/PROTOCOL.md, "Control messages").
//
//   u16 message type (ControlType, 0 = Invalid) || body
//
// Each message is one struct with a kType; EncodeControl/DecodeControl dispatch on it. Decoders
// refuse unknown types, over-long fields, non-canonical booleans and trailing bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/record.h"

namespace sod {

inline constexpr uint16_t kProtocolVersionMin = 1;
inline constexpr uint16_t kProtocolVersionMax = 1;
inline constexpr size_t kMaxHostId = 64;
inline constexpr uint16_t kMaxDataChannels = 16;
inline constexpr size_t kMaxVmName = 64;
inline constexpr size_t kMaxVmSpecJson = 32 * 1024;
inline constexpr size_t kAttestNonceSize = 32;
inline constexpr size_t kMaxEvidence = 16 * 1024;  // an opaque attestation evidence blob

using MigrationId = std::array<uint8_t, 16>;

enum class ControlType : uint16_t {
  kInvalid = 0,
  kHello = 1,            // initiator -> responder, first record of a session
  kHelloAck = 2,         // responder -> initiator
  kOffer = 3,            // source -> destination: the VM to receive
  kPrepared = 4,         // destination -> source: offer admitted, stream may start
  kSwitchoverCheck = 5,  // source -> destination: source VM paused, may we switch over?
  kSwitchoverOk = 6,     // destination -> source
  kCommitAck = 7,        // destination -> source: resumed; destination's receipt signature
  kQueryOutcome = 8,     // source -> destination (recovery): what became of migration X?
  kOutcome = 9,          // destination -> source
  kAttestChallenge = 10,  // both ways, right after the hello: a fresh nonce for the peer's quote
  kEvidence = 11,         // both ways: evidence bound to the peer's nonce and this session
  kAttestOk = 12,         // both ways: "your evidence verified" (a refusal is an Abort instead)
  kVtpmKey = 13,          // source -> destination, right after an offer with a vTPM
};

// Opens a session: the versions and suites the initiator speaks, and how many data channels it
// wants. The host id is informational (authentication is the TLS certificate).
struct HelloMsg {
  static constexpr ControlType kType = ControlType::kHello;
  uint16_t version_min = kProtocolVersionMin;
  uint16_t version_max = kProtocolVersionMax;
  std::vector<Suite> suites;   // in preference order, 1..8 entries
  uint16_t data_channels = 1;  // 0..kMaxDataChannels
  std::string host_id;
  bool operator==(const HelloMsg&) const = default;
};

// The responder's choice: one version in both ranges, one suite from the list, and the number of
// data channels it will accept (<= requested).
struct HelloAckMsg {
  static constexpr ControlType kType = ControlType::kHelloAck;
  uint16_t version = kProtocolVersionMax;
  Suite suite = Suite::kAes256Gcm;
  uint16_t data_channels = 1;
  bool operator==(const HelloAckMsg&) const = default;
};

// The VM the source wants to move: its id for this migration, its name and spec (JSON, as the
// customer gave it; host-local details never travel), its RAM size, whether the commit will carry
// a RAM digest to compare, and its vTPM epoch (0 = no vTPM).
struct OfferMsg {
  static constexpr ControlType kType = ControlType::kOffer;
  MigrationId migration_id{};
  std::string vm_name;    // <= kMaxVmName
  std::string spec_json;  // <= kMaxVmSpecJson
  uint64_t ram_bytes = 0;
  bool verify_ram = false;
  uint64_t vtpm_epoch = 0;
  bool operator==(const OfferMsg&) const = default;
};

// The offer is admitted: the source may start the stream (the destination starts its QEMU
// meanwhile and fails the session if it cannot).
struct PreparedMsg {
  static constexpr ControlType kType = ControlType::kPrepared;
  bool operator==(const PreparedMsg&) const = default;
};

// The source VM is paused before switchover; `stream_bytes` of the migration stream were sent.
// With attestation, `nonce` (kAttestNonceSize bytes, else empty) asks for fresh evidence.
struct SwitchoverCheckMsg {
  static constexpr ControlType kType = ControlType::kSwitchoverCheck;
  uint64_t stream_bytes = 0;
  Bytes nonce;
  bool operator==(const SwitchoverCheckMsg&) const = default;
};

// The destination is ready to switch over; `evidence` answers the check's nonce (empty when no
// nonce was asked or the destination does not attest).
struct SwitchoverOkMsg {
  static constexpr ControlType kType = ControlType::kSwitchoverOk;
  Bytes evidence;  // <= kMaxEvidence, opaque here (attest/evidence.h)
  bool operator==(const SwitchoverOkMsg&) const = default;
};

// The destination verified the commit, resumed the VM at `resumed_unix_ms`, and signs the receipt.
struct CommitAckMsg {
  static constexpr ControlType kType = ControlType::kCommitAck;
  uint64_t resumed_unix_ms = 0;
  Bytes signature;  // <= kMaxSignature
  bool operator==(const CommitAckMsg&) const = default;
};

struct QueryOutcomeMsg {
  static constexpr ControlType kType = ControlType::kQueryOutcome;
  MigrationId migration_id{};
  bool operator==(const QueryOutcomeMsg&) const = default;
};

enum class MigrationOutcome : uint8_t { kUnknown = 0, kCommitted = 1, kAborted = 2 };
std::string_view MigrationOutcomeName(MigrationOutcome o);

struct OutcomeMsg {
  static constexpr ControlType kType = ControlType::kOutcome;
  MigrationId migration_id{};
  MigrationOutcome outcome = MigrationOutcome::kUnknown;
  bool vm_running = false;  // the VM runs on the answering host now
  bool operator==(const OutcomeMsg&) const = default;
};

// Mutual attestation (PROTOCOL.md, "Attestation"): each side sends a challenge, answers the
// peer's with evidence, verifies the peer's evidence and says so with AttestOk, or aborts.
struct AttestChallengeMsg {
  static constexpr ControlType kType = ControlType::kAttestChallenge;
  std::array<uint8_t, kAttestNonceSize> nonce{};
  bool operator==(const AttestChallengeMsg&) const = default;
};

struct EvidenceMsg {
  static constexpr ControlType kType = ControlType::kEvidence;
  Bytes evidence;  // 1..kMaxEvidence bytes, opaque here (attest/evidence.h)
  bool operator==(const EvidenceMsg&) const = default;
};

struct AttestOkMsg {
  static constexpr ControlType kType = ControlType::kAttestOk;
  bool operator==(const AttestOkMsg&) const = default;
};

inline constexpr size_t kVtpmKeySize = 32;

// The key the destination's swtpm needs to load the VM's vTPM state blobs (swtpm
// --migration-key, vtpm/README.md). Sent by the source only on an attested session, right after
// an offer whose vtpm_epoch is not 0, and naming that epoch. Wiped when the message dies.
struct VtpmKeyMsg {
  static constexpr ControlType kType = ControlType::kVtpmKey;
  uint64_t vtpm_epoch = 0;
  std::array<uint8_t, kVtpmKeySize> migration_key{};
  VtpmKeyMsg() = default;
  VtpmKeyMsg(const VtpmKeyMsg&) = default;
  VtpmKeyMsg& operator=(const VtpmKeyMsg&) = default;
  ~VtpmKeyMsg();
  bool operator==(const VtpmKeyMsg&) const = default;
};

using ControlMsg = std::variant<HelloMsg, HelloAckMsg, OfferMsg, PreparedMsg, SwitchoverCheckMsg,
                                SwitchoverOkMsg, CommitAckMsg, QueryOutcomeMsg, OutcomeMsg,
                                AttestChallengeMsg, EvidenceMsg, AttestOkMsg, VtpmKeyMsg>;

Bytes EncodeControl(const ControlMsg& m);
Result<ControlMsg> DecodeControl(ByteSpan payload);
std::string_view ControlName(const ControlMsg& m);
std::string_view ControlTypeName(ControlType t);

// Responder side of the negotiation: picks the highest common version and the initiator's most
// preferred suite that `allowed` contains. kUnsupported with both ranges named when none fits.
Result<HelloAckMsg> NegotiateHello(const HelloMsg& hello, const std::vector<Suite>& allowed,
                                   uint16_t max_data_channels);

}  // namespace sod
