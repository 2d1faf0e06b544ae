// Key schedule of a migration session (migrate/PROTOCOL.md, "Key schedule").
//
//   session_secret = TLS-Exporter(label "EXPORTER-sod-session", context "sod/1", 32 bytes)
//   derive(label, L) = HKDF-Expand-SHA256(PRK = session_secret, info = "sod/1 " || label, L)
//
//   session_id      = derive("session id", 16)            public: names the session on data
//                                                          channels; reveals nothing of the keys
//   transcript_key  = derive("transcript", 32)
//   join_key        = derive("channel join", 32)
//   per channel c (u32 LE) and direction d (u8: 0 = initiator->responder, 1 = back):
//     aead_key = derive("aead key" || c || d, 32)   AES-256-GCM key
//     aead_iv  = derive("aead iv"  || c || d, 12)   nonce = aead_iv XOR (0^4 || BE64(sequence))
//     mac_key  = derive("mac key"  || c || d, 32)   HMAC-SHA256 key of the integrity-only suite
//
// Every derived key is distinct per channel and direction, so a (key, nonce) pair is never
// reused as long as sequences never wrap (they refuse to).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "base/bytes.h"
#include "base/secret.h"
#include "base/status.h"

namespace sod {

inline constexpr std::string_view kExporterLabel = "EXPORTER-sod-session";
inline constexpr std::string_view kExporterContext = "sod/1";
inline constexpr size_t kSessionSecretSize = 32;
inline constexpr size_t kSessionIdSize = 16;

// The initiator is the side that opened the TLS control channel (the migration source).
enum class Direction : uint8_t { kInitiatorToResponder = 0, kResponderToInitiator = 1 };
std::string_view DirectionName(Direction d);

using SessionId = std::array<uint8_t, kSessionIdSize>;

struct ChannelKeys {
  SecretBytes aead_key;  // 32
  SecretBytes aead_iv;   // 12
  SecretBytes mac_key;   // 32
};

// Holds the session secret; derives everything else on demand. Not thread-safe for concurrent
// mutation (it has none after Create); const methods may be called from several threads.
class SessionKeys {
 public:
  // Precondition-free: refuses a secret that is not exactly 32 bytes.
  static Result<SessionKeys> Create(ByteSpan session_secret);

  SessionKeys(SessionKeys&&) = default;
  SessionKeys& operator=(SessionKeys&&) = default;

  const SessionId& session_id() const { return session_id_; }
  ByteSpan transcript_key() const { return transcript_key_.span(); }
  ByteSpan join_key() const { return join_key_.span(); }
  Result<ChannelKeys> ForChannel(uint32_t channel, Direction dir) const;

 private:
  SessionKeys() = default;
  SecretBytes secret_;
  SessionId session_id_{};
  SecretBytes transcript_key_;
  SecretBytes join_key_;
};

// HKDF-Expand-SHA256 with info = "sod/1 " || label || suffix. Exposed for tests.
Status HkdfExpand(ByteSpan prk, std::string_view label, ByteSpan suffix, MutableByteSpan out);

}  // namespace sod
