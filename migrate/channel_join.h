// Data-channel join: how a plain TCP connection proves it belongs to an attested session before
// any record flows on it (migrate/PROTOCOL.md, "Data channels").
//
//   initiator -> responder  ChannelHello     "SODD" v1 session_id channel nonce_i      (64 bytes)
//   responder -> initiator  ChannelChallenge "SODA" v1 nonce_r proof_r                 (72 bytes)
//   initiator -> responder  ChannelProof     "SODP" v1 proof_i                         (40 bytes)
//
//   proof_X = HMAC-SHA256(join_key, "sod/1 join " || role_X || session_id || LE32(channel) ||
//                         nonce_i || nonce_r),  role = "initiator" | "responder"
//
// Both nonces are fresh, so a recorded join cannot be replayed; both sides prove knowledge of the
// session's join key (derived from the TLS exporter of the attested control channel). The first
// byte 'S' (0x53) can never start a TLS record (0x14..0x18), so one listening port can serve both
// the control channel and data channels. All messages are fixed-size; every field is checked.
#pragma once

#include <array>
#include <cstdint>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/key_schedule.h"
#include "migrate/transcript.h"
#include "migrate/transport.h"

namespace sod {

inline constexpr uint8_t kJoinVersion = 1;
inline constexpr size_t kJoinNonceSize = 32;
inline constexpr size_t kChannelHelloSize = 64;
inline constexpr size_t kChannelChallengeSize = 72;
inline constexpr size_t kChannelProofSize = 40;
inline constexpr uint8_t kChannelHelloFirstByte = 'S';

using JoinNonce = std::array<uint8_t, kJoinNonceSize>;

struct ChannelHello {
  SessionId session_id{};
  uint32_t channel = 0;
  JoinNonce nonce{};
  bool operator==(const ChannelHello&) const = default;
};
struct ChannelChallenge {
  JoinNonce nonce{};
  TranscriptValue proof{};
  bool operator==(const ChannelChallenge&) const = default;
};
struct ChannelProof {
  TranscriptValue proof{};
  bool operator==(const ChannelProof&) const = default;
};

Bytes EncodeChannelHello(const ChannelHello& m);
Result<ChannelHello> DecodeChannelHello(ByteSpan in);
Bytes EncodeChannelChallenge(const ChannelChallenge& m);
Result<ChannelChallenge> DecodeChannelChallenge(ByteSpan in);
Bytes EncodeChannelProof(const ChannelProof& m);
Result<ChannelProof> DecodeChannelProof(ByteSpan in);

enum class JoinRole { kInitiator, kResponder };
Result<TranscriptValue> ComputeJoinProof(ByteSpan join_key, JoinRole role,
                                         const SessionId& session_id, uint32_t channel,
                                         const JoinNonce& nonce_i, const JoinNonce& nonce_r);

// Initiator: runs the whole join on a fresh connection. kAuth if the responder's proof is wrong;
// kClosed/kAuth if the responder refuses (it closes the connection).
Status JoinDataChannel(ByteStream& stream, const SessionKeys& keys, uint32_t channel);

// Responder, step 1: reads the hello so the caller can find the session by its id and check the
// channel number (unused, in range).
Result<ChannelHello> ReadChannelHello(ByteStream& stream);
// Responder, step 2: challenges and verifies the initiator's proof (kAuth on mismatch). The
// caller closes the connection on any error.
Status AcceptDataChannel(ByteStream& stream, const SessionKeys& keys, const ChannelHello& hello);

}  // namespace sod
