#include "host/forward_ports.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>

namespace sod {

namespace {

bool ParsePort(std::string_view s, uint16_t& out) {
  unsigned v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty() || v == 0 || v > 65535) {
    return false;
  }
  out = static_cast<uint16_t>(v);
  return true;
}

bool CanBindLoopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // As QEMU's hostfwd listener does: a port whose old connections linger in TIME_WAIT (e.g. those
  // of a client of the previous VM) can be listened on again.
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

Result<PortRange> ParsePortRange(std::string_view text) {
  PortRange r;
  size_t dash = text.find('-');
  std::string_view a = text.substr(0, dash);
  std::string_view b = dash == std::string_view::npos ? a : text.substr(dash + 1);
  if (!ParsePort(a, r.first) || !ParsePort(b, r.last) || r.first > r.last) {
    return Error(Errc::kInvalidArgument, "port range \"" + std::string(text) +
                                             "\": expected FIRST-LAST with 1 <= FIRST <= LAST "
                                             "<= 65535");
  }
  return r;
}

std::string PortRangeToString(const PortRange& range) {
  return std::to_string(range.first) + "-" + std::to_string(range.last);
}

Result<uint16_t> ForwardPorts::Allocate() {
  for (uint32_t p = range_.first; p <= range_.last; ++p) {
    auto port = static_cast<uint16_t>(p);
    if (used_.count(port) || !CanBindLoopback(port)) continue;
    used_.insert(port);
    return port;
  }
  return Error(Errc::kExhausted, "no free forward port in " + PortRangeToString(range_));
}

void ForwardPorts::Reserve(uint16_t port) {
  if (port >= range_.first && port <= range_.last) used_.insert(port);
}

void ForwardPorts::Release(uint16_t port) { used_.erase(port); }

}  // namespace sod
