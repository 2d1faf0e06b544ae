#include "migrate/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>

namespace sod {
namespace {

using Clock = std::chrono::steady_clock;

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r: returns a pointer to the message (maybe not `buf`).
  return strerror_r(err, buf, sizeof(buf));
}

// "1.2.3.4:5" / "[::1]:5"; IPv4-mapped IPv6 addresses print as IPv4.
std::string FormatSockaddr(const sockaddr* sa) {
  char text[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    uint16_t port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], text, sizeof(text));
      return std::string(text) + ":" + std::to_string(port);
    }
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    return "[" + std::string(text) + "]:" + std::to_string(port);
  }
  return "address family " + std::to_string(sa->sa_family);
}

std::string LocalAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return "fd " + std::to_string(fd);
  }
  return FormatSockaddr(reinterpret_cast<const sockaddr*>(&ss));
}

// "host:port" as the caller named it, brackets around IPv6 literals.
std::string Endpoint(std::string_view host, uint16_t port) {
  std::string h(host);
  if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";
  if (h.empty()) h = "*";
  return h + ":" + std::to_string(port);
}

struct AddrinfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrinfoPtr = std::unique_ptr<addrinfo, AddrinfoDeleter>;

Result<AddrinfoPtr> Resolve(std::string_view host, uint16_t port, bool passive) {
  std::string h(host);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  std::string service = std::to_string(port);
  addrinfo* list = nullptr;
  int rc = getaddrinfo(h.empty() ? nullptr : h.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? ErrnoText(errno) : gai_strerror(rc);
    Errc code = (rc == EAI_NONAME || rc == EAI_NODATA) ? Errc::kNotFound : Errc::kIo;
    return Error(code, "resolve " + Endpoint(host, port) + ": " + why);
  }
  if (list == nullptr)
    return Error(Errc::kNotFound, "resolve " + Endpoint(host, port) + ": no address");
  return AddrinfoPtr(list);
}

Status SetBlocking(int fd, const std::string& what) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return Error(Errc::kIo, what + ": fcntl(O_NONBLOCK): " + ErrnoText(errno));
  }
  return Status::Ok();
}

// Milliseconds left until `deadline` for poll(): >= 0, clamped to int.
int PollTimeout(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  auto now = Clock::now();
  if (timeout >
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + std::max(timeout, std::chrono::milliseconds(0));
}

}  // namespace

Status SocketError(std::string_view what, std::string_view peer, int err) {
  std::string prefix = std::string(what) + " " + std::string(peer) + ": ";
  switch (err) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
      return Error(Errc::kTimeout, prefix + "no progress within the socket I/O timeout");
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
    case ESHUTDOWN:
    case ECONNABORTED:
      return Error(Errc::kClosed, prefix + ErrnoText(err));
    default:
      return Error(Errc::kIo, prefix + ErrnoText(err));
  }
}

Result<UniqueFd> ListenTcp(std::string_view host, uint16_t port, int backlog) {
  SOD_ASSIGN_OR_RETURN(AddrinfoPtr list, Resolve(host, port, /*passive=*/true));
  Status last = Error(Errc::kIo, "listen on " + Endpoint(host, port) + ": no usable address");
  for (addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    std::string where = "listen on " + FormatSockaddr(ai->ai_addr);
    UniqueFd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = Error(Errc::kIo, where + ": socket: " + ErrnoText(errno));
      continue;
    }
    int one = 1;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
      last = Error(Errc::kIo, where + ": SO_REUSEADDR: " + ErrnoText(errno));
      continue;
    }
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = Error(Errc::kIo, where + ": bind: " + ErrnoText(errno));
      continue;
    }
    if (listen(fd.get(), backlog) != 0) {
      last = Error(Errc::kIo, where + ": listen: " + ErrnoText(errno));
      continue;
    }
    return fd;
  }
  return last;
}

Result<uint16_t> LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return Error(Errc::kIo, "getsockname(fd " + std::to_string(fd) + "): " + ErrnoText(errno));
  }
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return Error(Errc::kInvalidArgument, "fd " + std::to_string(fd) + " is not an IP socket");
}

Result<UniqueFd> AcceptTcp(int listen_fd, std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = DeadlineAfter(timeout);
  for (;;) {
    pollfd p{listen_fd, POLLIN, 0};
    int r = poll(&p, 1, PollTimeout(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Error(Errc::kIo,
                   "accept on " + LocalAddress(listen_fd) + ": poll: " + ErrnoText(errno));
    }
    if (r == 0) {
      return Error(Errc::kTimeout, "accept on " + LocalAddress(listen_fd) +
                                       ": no connection within " + std::to_string(timeout.count()) +
                                       " ms");
    }
    UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) {
      int err = errno;
      // The connection went away between poll and accept, or a signal: wait again.
      if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED ||
          err == EPROTO) {
        if (Clock::now() < deadline) continue;
        return Error(Errc::kTimeout, "accept on " + LocalAddress(listen_fd) +
                                         ": no connection within " +
                                         std::to_string(timeout.count()) + " ms");
      }
      return Error(Errc::kIo, "accept on " + LocalAddress(listen_fd) + ": " + ErrnoText(err));
    }
    SOD_RETURN_IF_ERROR(SetBlocking(fd.get(), "accept from " + PeerAddress(fd.get())));
    return fd;
  }
}

Result<UniqueFd> ConnectTcp(std::string_view host, uint16_t port,
                            std::chrono::milliseconds timeout) {
  if (host.empty()) return Error(Errc::kInvalidArgument, "connect: empty host name");
  const Clock::time_point deadline = DeadlineAfter(timeout);
  SOD_ASSIGN_OR_RETURN(AddrinfoPtr list, Resolve(host, port, /*passive=*/false));
  const std::string name = Endpoint(host, port);
  Status last = Error(Errc::kIo, "connect to " + name + ": no usable address");
  for (addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    std::string addr = FormatSockaddr(ai->ai_addr);
    std::string where = "connect to " + (addr == name ? name : name + " (" + addr + ")");
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      last = Error(Errc::kIo, where + ": socket: " + ErrnoText(errno));
      continue;
    }
    int rc = connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS || err == EINTR) {
      for (;;) {
        pollfd p{fd.get(), POLLOUT, 0};
        int r = poll(&p, 1, PollTimeout(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
          err = errno;
          break;
        }
        if (r == 0) {
          return Error(Errc::kTimeout,
                       where + ": no answer within " + std::to_string(timeout.count()) + " ms");
        }
        socklen_t len = sizeof(err);
        if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        break;
      }
    }
    if (err != 0) {
      last = Error(Errc::kIo, where + ": " + ErrnoText(err));
      if (Clock::now() >= deadline) {
        return Error(Errc::kTimeout, last.message() + " (deadline of " +
                                         std::to_string(timeout.count()) + " ms passed)");
      }
      continue;
    }
    SOD_RETURN_IF_ERROR(SetBlocking(fd.get(), where));
    return fd;
  }
  return last;
}

std::string PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return "fd " + std::to_string(fd) + " (not connected)";
  }
  return FormatSockaddr(reinterpret_cast<const sockaddr*>(&ss));
}

Status SetIoTimeouts(int fd, std::chrono::milliseconds timeout) {
  if (timeout.count() < 0) return Error(Errc::kInvalidArgument, "negative socket I/O timeout");
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return Error(Errc::kIo, "set I/O timeouts on " + PeerAddress(fd) + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status TuneForBulk(int fd, bool sending, size_t buffer_bytes) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return Error(Errc::kIo, "TCP_NODELAY on " + PeerAddress(fd) + ": " + ErrnoText(errno));
  }
  if (buffer_bytes != 0) {
    const int size = static_cast<int>(std::min<size_t>(buffer_bytes, INT32_MAX / 2));
    // The FORCE variants (CAP_NET_ADMIN, which sodd has as root) are not capped at
    // net.core.wmem_max / rmem_max (Debian's default: 208 KiB); without the capability the size
    // is capped there.
    const int force = sending ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
    const int opt = sending ? SO_SNDBUF : SO_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, force, &size, sizeof(size)) != 0 &&
        (errno != EPERM || setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size)) != 0))
      return Error(Errc::kIo, std::string(sending ? "SO_SNDBUF" : "SO_RCVBUF") + " on " +
                                  PeerAddress(fd) + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

SocketStream::SocketStream(int fd) : fd_(fd), peer_(PeerAddress(fd)) {}

Status SocketStream::WriteAll(ByteSpan data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SocketError("send to", peer_, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<size_t> SocketStream::ReadSome(MutableByteSpan buf) {
  if (buf.empty()) return Error(Errc::kInvalidArgument, "ReadSome with an empty buffer");
  for (;;) {
    ssize_t n = recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) return Error(Errc::kClosed, "recv from " + peer_ + ": peer closed the connection");
    if (errno == EINTR) continue;
    return SocketError("recv from", peer_, errno);
  }
}

Status SocketStream::CloseWrite() {
  if (shutdown(fd_, SHUT_WR) != 0) return SocketError("shutdown to", peer_, errno);
  return Status::Ok();
}

SocketSendQueue::SocketSendQueue(int fd, size_t max_buffer)
    : stream_(fd), queue_(stream_, max_buffer) {}

Result<MutableByteSpan> SocketSendQueue::Acquire(size_t n) {
  if (!error_.ok()) return error_;
  return queue_.Acquire(n);
}

Status SocketSendQueue::Commit(size_t used) {
  if (!error_.ok()) return error_;
  Status st = queue_.Commit(used);
  // Misuse (no Acquire) is the caller's bug, not a dead connection: only send errors stick.
  if (!st.ok() && st.code() != Errc::kInternal) error_ = st;
  return st;
}

}  // namespace sod
