// Control messages: the payload of kControl records on channel 0, inside the TLS control channel
// (migrate/PROTOCOL.md, "Control messages").
//
//   u16 message type (ControlType, 0 = Invalid) || body
//
// Each message is one struct with Encode/Decode; decoders refuse unknown types, over-long fields
// and trailing bytes.
#pragma once

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

enum class ControlType : uint16_t {
  kInvalid = 0,
  kHello = 1,     // initiator -> responder, first record of a session
  kHelloAck = 2,  // responder -> initiator
};

// Opens a session: the versions and suites the initiator speaks, and how many data channels it
// wants. The host id is informational (authentication is the TLS certificate).
struct HelloMsg {
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
  uint16_t version = kProtocolVersionMax;
  Suite suite = Suite::kAes256Gcm;
  uint16_t data_channels = 1;
  bool operator==(const HelloAckMsg&) const = default;
};

using ControlMsg = std::variant<HelloMsg, HelloAckMsg>;

Bytes EncodeControl(const ControlMsg& m);
Result<ControlMsg> DecodeControl(ByteSpan payload);
std::string_view ControlName(const ControlMsg& m);

// Responder side of the negotiation: picks the highest common version and the initiator's most
// preferred suite that `allowed` contains. kUnsupported with both ranges named when none fits.
Result<HelloAckMsg> NegotiateHello(const HelloMsg& hello, const std::vector<Suite>& allowed,
                                   uint16_t max_data_channels);

}  // namespace sod
