#include "migrate/control.h"

#include <algorithm>

namespace sod {

namespace {

Status Bad(std::string_view msg, std::string_view detail) {
  return Error(Errc::kMalformed, std::string(msg) + ": " + std::string(detail));
}

bool ValidHostId(std::string_view s) {
  if (s.empty() || s.size() > kMaxHostId) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  return true;
}

Result<HelloMsg> DecodeHello(ByteReader& r) {
  HelloMsg m;
  uint8_t n = 0;
  if (!r.U16(m.version_min) || !r.U16(m.version_max) || !r.U8(n)) return Bad("hello", "truncated");
  if (m.version_min == 0 || m.version_min > m.version_max)
    return Bad("hello", "empty version range");
  if (n == 0 || n > 8) return Bad("hello", "suite count must be 1..8");
  m.suites.reserve(n);
  for (uint8_t i = 0; i < n; ++i) {
    uint8_t s = 0;
    if (!r.U8(s)) return Bad("hello", "truncated suite list");
    m.suites.push_back(static_cast<Suite>(s));  // unknown suites are skipped by negotiation
  }
  if (!r.U16(m.data_channels) || !r.Str16(m.host_id, kMaxHostId))
    return Bad("hello", "truncated or host id too long");
  if (m.data_channels > kMaxDataChannels) return Bad("hello", "too many data channels");
  if (!ValidHostId(m.host_id)) return Bad("hello", "invalid host id");
  return m;
}

Result<HelloAckMsg> DecodeHelloAck(ByteReader& r) {
  HelloAckMsg m;
  uint8_t suite = 0, reserved = 0;
  if (!r.U16(m.version) || !r.U8(suite) || !r.U8(reserved) || !r.U16(m.data_channels))
    return Bad("hello-ack", "truncated");
  if (reserved != 0) return Bad("hello-ack", "reserved != 0");
  if (SuiteTagSize(static_cast<Suite>(suite)) == 0)
    return Error(Errc::kUnsupported, "hello-ack: unknown suite " + std::to_string(suite));
  m.suite = static_cast<Suite>(suite);
  if (m.data_channels > kMaxDataChannels) return Bad("hello-ack", "too many data channels");
  return m;
}

}  // namespace

std::string_view ControlName(const ControlMsg& m) {
  return std::visit(
      [](const auto& v) -> std::string_view {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, HelloMsg>)
          return "hello";
        else
          return "hello-ack";
      },
      m);
}

Bytes EncodeControl(const ControlMsg& m) {
  Bytes out;
  ByteWriter w(out);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, HelloMsg>) {
          w.U16(static_cast<uint16_t>(ControlType::kHello));
          w.U16(v.version_min);
          w.U16(v.version_max);
          w.U8(static_cast<uint8_t>(v.suites.size()));
          for (Suite s : v.suites) w.U8(static_cast<uint8_t>(s));
          w.U16(v.data_channels);
          w.Str16(v.host_id);
        } else {
          w.U16(static_cast<uint16_t>(ControlType::kHelloAck));
          w.U16(v.version);
          w.U8(static_cast<uint8_t>(v.suite));
          w.U8(0);
          w.U16(v.data_channels);
        }
      },
      m);
  return out;
}

Result<ControlMsg> DecodeControl(ByteSpan payload) {
  if (payload.size() > MaxPayload(RecordType::kControl))
    return Error(Errc::kTooLarge, "control message above the maximum");
  ByteReader r(payload);
  uint16_t type = 0;
  if (!r.U16(type)) return Bad("control", "missing message type");
  Result<ControlMsg> m =
      Error(Errc::kUnsupported, "control: unknown message type " + std::to_string(type));
  switch (static_cast<ControlType>(type)) {
    case ControlType::kHello: {
      auto h = DecodeHello(r);
      m = h.ok() ? Result<ControlMsg>(ControlMsg(std::move(*h))) : h.status();
      break;
    }
    case ControlType::kHelloAck: {
      auto h = DecodeHelloAck(r);
      m = h.ok() ? Result<ControlMsg>(ControlMsg(*h)) : h.status();
      break;
    }
    case ControlType::kInvalid:
      break;
  }
  if (m.ok() && !r.done()) return Bad("control", "trailing bytes after the message");
  return m;
}

Result<HelloAckMsg> NegotiateHello(const HelloMsg& hello, const std::vector<Suite>& allowed,
                                   uint16_t max_data_channels) {
  uint16_t lo = std::max(hello.version_min, kProtocolVersionMin);
  uint16_t hi = std::min(hello.version_max, kProtocolVersionMax);
  if (lo > hi)
    return Error(Errc::kUnsupported, "no common protocol version: peer speaks " +
                                         std::to_string(hello.version_min) + ".." +
                                         std::to_string(hello.version_max) + ", we speak " +
                                         std::to_string(kProtocolVersionMin) + ".." +
                                         std::to_string(kProtocolVersionMax));
  HelloAckMsg ack;
  ack.version = hi;
  auto it = std::find_if(hello.suites.begin(), hello.suites.end(), [&](Suite s) {
    return std::find(allowed.begin(), allowed.end(), s) != allowed.end();
  });
  if (it == hello.suites.end()) return Error(Errc::kUnsupported, "no common record suite");
  ack.suite = *it;
  ack.data_channels = std::min(hello.data_channels, max_data_channels);
  return ack;
}

}  // namespace sod
