// Record protection: the cipher/MAC handler behind the record layer (migrate/PROTOCOL.md,
// "Record protection"). The framing (record.h) hands it the encoded header as associated data,
// the payload, and where the tag goes; it knows nothing about transports.
//
//   kAes256Gcm:  ciphertext, tag = AES-256-GCM(aead_key, nonce(seq), aad = header, payload)
//   kHmacSha256: payload in clear, tag = HMAC-SHA256(mac_key, header || payload)
//
// The sequence number is inside the header, so both suites bind it; GCM also binds it through the
// nonce. A protector belongs to one (channel, direction) and one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/key_schedule.h"
#include "migrate/record.h"

namespace sod {

class RecordProtector {
 public:
  virtual ~RecordProtector() = default;
  RecordProtector() = default;
  RecordProtector(const RecordProtector&) = delete;
  RecordProtector& operator=(const RecordProtector&) = delete;

  virtual Suite suite() const = 0;
  size_t tag_size() const { return SuiteTagSize(suite()); }

  // Protects the concatenation of `parts` (total = out_payload.size()) into out_payload and writes
  // tag_size() bytes to out_tag. `header` is the encoded header (kRecordHeaderSize bytes) whose
  // sequence field is `sequence`. out_payload may not overlap the parts.
  virtual Status Seal(uint64_t sequence, ByteSpan header, std::span<const ByteSpan> parts,
                      MutableByteSpan out_payload, MutableByteSpan out_tag) = 0;
  // Verifies, and for kAes256Gcm decrypts `payload` in place. On failure returns kIntegrity and the
  // content of `payload` is unspecified: the caller must not use it.
  virtual Status Open(uint64_t sequence, ByteSpan header, MutableByteSpan payload,
                      ByteSpan tag) = 0;
};

// Builds the protector for `suite` from one channel direction's keys (copied in; the caller may
// drop `keys` afterwards).
Result<std::unique_ptr<RecordProtector>> MakeRecordProtector(Suite suite, const ChannelKeys& keys);

}  // namespace sod
