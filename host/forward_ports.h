// The host ports sodd forwards to guests (127.0.0.1:port -> guest_port via QEMU user-net hostfwd).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

struct PortRange {
  uint16_t first = 20000;
  uint16_t last = 20999;
  bool operator==(const PortRange&) const = default;
};

// "20000-20999" (first <= last, both 1..65535) or a single port "20000". kInvalidArgument.
Result<PortRange> ParsePortRange(std::string_view text);
std::string PortRangeToString(const PortRange& range);

// Hands out ports of a range. Not thread-safe (VmRegistry serializes use under its lock).
class ForwardPorts {
 public:
  explicit ForwardPorts(PortRange range) : range_(range) {}
  ForwardPorts(const ForwardPorts&) = delete;
  ForwardPorts& operator=(const ForwardPorts&) = delete;

  // The lowest port of the range that is neither handed out nor reserved and that can be bound on
  // 127.0.0.1 right now (another process may still take it before QEMU binds it: callers retry).
  // kExhausted when there is none.
  Result<uint16_t> Allocate();
  // Marks `port` as in use (a re-adopted VM keeps its port). Ports outside the range are ignored.
  void Reserve(uint16_t port);
  // Gives `port` back; 0 and ports not handed out are ignored.
  void Release(uint16_t port);
  bool InUse(uint16_t port) const { return used_.count(port) != 0; }
  const PortRange& range() const { return range_; }

 private:
  PortRange range_;
  std::set<uint16_t> used_;
};

}  // namespace sod
