// TCP sockets and the posix (send/recv) transport of data and control channels.
//
// Every function here works on blocking sockets: ListenTcp, AcceptTcp and ConnectTcp return fds in
// blocking mode with FD_CLOEXEC set, and SocketStream / SocketSendQueue require blocking mode (a
// non-blocking fd would turn every EAGAIN into a spurious kTimeout).
//
// Ownership: UniqueFd owns an fd. The transports (SocketStream, SocketSendQueue, and the io_uring
// ones in uring.h) *borrow* the fd they are given: the caller keeps the UniqueFd alive for at least
// as long as the transport, and the transport never closes it. One socket may therefore carry a
// ByteStream (for reading) and a SendQueue (for writing) at the same time.
//
// Errors name the endpoint ("connect to 127.0.0.1:4711: Connection refused"): kIo for socket
// failures, kClosed when the peer closed or reset the connection, kTimeout when a deadline passed,
// kNotFound when a host name does not resolve.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/fd.h"
#include "base/status.h"
#include "migrate/transport.h"

namespace sod {

// Creates a listening TCP socket bound to `host`:`port`. `host` is an IPv4 or IPv6 literal (the
// IPv6 one with or without brackets), "localhost", another resolvable name, or "" for every local
// address. Port 0 picks an ephemeral port (read it back with LocalPort). Sets SO_REUSEADDR.
Result<UniqueFd> ListenTcp(std::string_view host, uint16_t port, int backlog);

// The local port a socket is bound to.
Result<uint16_t> LocalPort(int fd);

// Waits up to `timeout` for a connection on `listen_fd` and accepts it (kTimeout when none came;
// a zero timeout checks once). The listening fd may be blocking or not.
Result<UniqueFd> AcceptTcp(int listen_fd, std::chrono::milliseconds timeout);

// Connects to `host`:`port` (same host forms as ListenTcp, but not ""), trying each resolved
// address in turn until `timeout` (for all of them together) passes. A name that is not a literal
// is resolved with getaddrinfo, which may block on DNS beyond `timeout`.
Result<UniqueFd> ConnectTcp(std::string_view host, uint16_t port,
                            std::chrono::milliseconds timeout);

// "127.0.0.1:40212" or "[::1]:40212" (IPv4-mapped IPv6 addresses print as IPv4); a description
// such as "fd 7 (not connected)" when the peer is unknown.
std::string PeerAddress(int fd);

// Sets SO_RCVTIMEO and SO_SNDTIMEO: a blocking recv/send that makes no progress for `timeout`
// fails with kTimeout. Zero means no timeout. SocketStream honors the values at any time; the
// io_uring transports read them once when they are created (see uring.h).
Status SetIoTimeouts(int fd, std::chrono::milliseconds timeout);

// Tunes a TCP data channel: TCP_NODELAY, and, when `buffer_bytes` is not 0, the buffer of the
// direction the channel carries (`sending`: SO_SNDBUF, else SO_RCVBUF) fixed at that size, which
// ends the kernel's autotuning of it (without CAP_NET_ADMIN, at most net.core.wmem_max/rmem_max).
// A migration's data channels bound them: every byte queued between the two QEMUs is work the
// destination QEMU still has to do after the source pauses, and a zero page is ~9 bytes of stream
// (PROTOCOL.md, "Stream").
Status TuneForBulk(int fd, bool sending = true, size_t buffer_bytes = 0);

// Maps the errno `err` of a socket operation to a Status whose message is "<what> <peer>: <errno
// text>": EAGAIN (an SO_RCVTIMEO/SO_SNDTIMEO deadline) is kTimeout; ECONNRESET, EPIPE, ENOTCONN,
// ESHUTDOWN and ECONNABORTED are kClosed; everything else is kIo. Example:
// SocketError("send to", "127.0.0.1:4711", EPIPE).
Status SocketError(std::string_view what, std::string_view peer, int err);

// A ByteStream over a connected, blocking TCP socket using send(MSG_NOSIGNAL)/recv.
// Thread-safety: one thread may read while another writes; no other concurrent use.
class SocketStream final : public ByteStream {
 public:
  // Borrows `fd`: it must stay open for the lifetime of this object, which never closes it.
  explicit SocketStream(int fd);

  Status WriteAll(ByteSpan data) override;
  Result<size_t> ReadSome(MutableByteSpan buf) override;
  // shutdown(SHUT_WR): the peer reads end of stream after all written bytes.
  Status CloseWrite() override;

  // The peer's address as captured at construction (still known after a reset).
  const std::string& peer() const { return peer_; }

 private:
  int fd_;
  std::string peer_;
};

// The posix SendQueue: a StreamSendQueue over its own SocketStream. Commit sends synchronously, so
// Flush has nothing to wait for. Like UringSendQueue, the first send error is returned by that
// Commit and by every later call. Borrows `fd` like SocketStream. Not thread-safe.
class SocketSendQueue final : public SendQueue {
 public:
  SocketSendQueue(int fd, size_t max_buffer);

  Result<MutableByteSpan> Acquire(size_t n) override;
  Status Commit(size_t used) override;
  Status Flush() override { return error_; }
  size_t max_buffer() const override { return queue_.max_buffer(); }

 private:
  SocketStream stream_;    // declared first: built before and destroyed after queue_
  StreamSendQueue queue_;  // refers to stream_
  Status error_;           // first send error
};

}  // namespace sod
