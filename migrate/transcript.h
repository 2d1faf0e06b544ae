// The HMAC transcript (migrate/PROTOCOL.md, "Transcript").
//
// Each (channel, direction) keeps a chain over its records in order:
//   T_0 = HMAC-SHA256(transcript_key, "sod/1 chain" || LE32(channel) || u8(direction))
//   T_i = HMAC-SHA256(transcript_key, T_{i-1} || header_i || tag_i)
// The header carries type, channel, sequence, round and length, and the tag authenticates the
// payload, so a dropped, reordered, replayed, duplicated, truncated or foreign record changes the
// chain. The session transcript combines all chains, sorted by (channel, direction):
//   S = HMAC-SHA256(transcript_key, "sod/1 session" || LE32(n) ||
//                   for each chain: LE32(channel) || u8(direction) || LE64(records) || T)
// Both ends compute S independently; the commit carries the sender's S and the receiver compares
// it with its own in constant time.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/key_schedule.h"
#include "migrate/record.h"

namespace sod {

using TranscriptValue = std::array<uint8_t, kTranscriptSize>;

// One chain. Movable, not copyable; one thread at a time.
class TranscriptMac {
 public:
  static Result<TranscriptMac> Create(ByteSpan transcript_key, uint32_t channel, Direction dir);
  ~TranscriptMac();
  TranscriptMac(TranscriptMac&& o) noexcept;
  TranscriptMac& operator=(TranscriptMac&& o) noexcept;
  TranscriptMac(const TranscriptMac&) = delete;
  TranscriptMac& operator=(const TranscriptMac&) = delete;

  // Extends the chain by one record (encoded header and tag, as on the wire).
  Status Absorb(ByteSpan header, ByteSpan tag);

  uint32_t channel() const { return channel_; }
  Direction direction() const { return dir_; }
  uint64_t records() const { return records_; }
  const TranscriptValue& value() const { return value_; }
  // The chain value before the last Absorb (T_{n-1}); T_0 when nothing was absorbed.
  const TranscriptValue& previous_value() const { return previous_; }

 private:
  TranscriptMac() = default;
  EVP_MAC_CTX* ctx_ = nullptr;  // keyed; re-initialized per record
  uint32_t channel_ = 0;
  Direction dir_ = Direction::kInitiatorToResponder;
  uint64_t records_ = 0;
  TranscriptValue value_{};
  TranscriptValue previous_{};
};

struct ChainSummary {
  uint32_t channel = 0;
  Direction direction = Direction::kInitiatorToResponder;
  uint64_t records = 0;
  TranscriptValue value{};
};
ChainSummary Summarize(const TranscriptMac& t);
// The summary as it was before the last record: what a peer that sent that last record (a commit
// carrying the transcript) computed. Precondition: t.records() > 0.
ChainSummary SummarizeBeforeLast(const TranscriptMac& t);

// Combines chain summaries into the session transcript S. Order of `chains` does not matter;
// a (channel, direction) listed twice is an error (kInvalidArgument).
Result<TranscriptValue> SessionTranscript(ByteSpan transcript_key,
                                          std::vector<ChainSummary> chains);

// Constant-time comparison of two transcript values.
bool TranscriptEqual(const TranscriptValue& a, const TranscriptValue& b);

}  // namespace sod
