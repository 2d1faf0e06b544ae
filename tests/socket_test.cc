// Tests of migrate/socket.h over real TCP sockets on 127.0.0.1 (and no other address).
#include "migrate/socket.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>
#include <string>
#include <thread>

namespace sod {
namespace {

using std::chrono::milliseconds;

constexpr char kLoopback[] = "127.0.0.1";
constexpr milliseconds kWait(5000);

// A connected pair on 127.0.0.1: `client` connected, `server` accepted.
struct Pair {
  UniqueFd client;
  UniqueFd server;
  uint16_t port = 0;
};

Pair Connect() {
  Pair p;
  Result<UniqueFd> listener = ListenTcp(kLoopback, 0, 4);
  EXPECT_TRUE(listener.ok()) << listener.status().ToString();
  if (!listener.ok()) return p;
  Result<uint16_t> port = LocalPort(listener->get());
  EXPECT_TRUE(port.ok()) << port.status().ToString();
  if (!port.ok()) return p;
  p.port = *port;
  Result<UniqueFd> client = ConnectTcp(kLoopback, p.port, kWait);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  if (!client.ok()) return p;
  Result<UniqueFd> server = AcceptTcp(listener->get(), kWait);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return p;
  p.client = std::move(*client);
  p.server = std::move(*server);
  return p;
}

// Closes `fd` with a TCP reset instead of a FIN.
void ResetClose(UniqueFd& fd) {
  linger l{1, 0};
  ASSERT_EQ(setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  fd.Reset();
}

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(SocketTest, UniqueFdClosesOnDestructionAndMoves) {
  int raw = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(raw, 0);
  {
    UniqueFd a(raw);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.valid());
    EXPECT_EQ(b.get(), raw);
    UniqueFd c;
    c = std::move(b);
    EXPECT_EQ(c.get(), raw);
    EXPECT_TRUE(IsOpen(raw));
  }
  EXPECT_FALSE(IsOpen(raw));

  UniqueFd d(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int released = d.Release();
  EXPECT_FALSE(d.valid());
  EXPECT_TRUE(IsOpen(released));
  d.Reset(released);
  d.Reset();
  EXPECT_FALSE(IsOpen(released));
}

TEST(SocketTest, ListenConnectAcceptOnEphemeralPort) {
  Pair p = Connect();
  ASSERT_TRUE(p.client.valid() && p.server.valid());
  EXPECT_NE(p.port, 0);
  EXPECT_EQ(PeerAddress(p.client.get()), "127.0.0.1:" + std::to_string(p.port));
  EXPECT_EQ(PeerAddress(p.server.get()).rfind("127.0.0.1:", 0), 0u);
  Result<uint16_t> client_port = LocalPort(p.client.get());
  ASSERT_TRUE(client_port.ok());
  EXPECT_EQ(PeerAddress(p.server.get()), "127.0.0.1:" + std::to_string(*client_port));
  // Blocking mode and close-on-exec, as the header promises.
  for (int fd : {p.client.get(), p.server.get()}) {
    EXPECT_EQ(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    EXPECT_NE(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  }

  SocketStream a(p.client.get());
  SocketStream b(p.server.get());
  const Bytes msg = {1, 2, 3, 4, 5};
  ASSERT_TRUE(a.WriteAll(msg).ok());
  Bytes got(msg.size());
  ASSERT_TRUE(ReadExact(b, got).ok());
  EXPECT_EQ(got, msg);
  ASSERT_TRUE(b.WriteAll(msg).ok());
  ASSERT_TRUE(ReadExact(a, got).ok());
  EXPECT_EQ(got, msg);
}

TEST(SocketTest, ConnectToClosedPortIsIoNamingTheAddress) {
  uint16_t port = 0;
  {
    Result<UniqueFd> listener = ListenTcp(kLoopback, 0, 1);
    ASSERT_TRUE(listener.ok());
    port = *LocalPort(listener->get());
  }  // closed: nobody listens there any more
  Result<UniqueFd> fd = ConnectTcp(kLoopback, port, kWait);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), Errc::kIo) << fd.status().ToString();
  EXPECT_NE(fd.status().message().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << fd.status().ToString();
}

TEST(SocketTest, ListenOnBusyPortFails) {
  Result<UniqueFd> first = ListenTcp(kLoopback, 0, 1);
  ASSERT_TRUE(first.ok());
  uint16_t port = *LocalPort(first->get());
  Result<UniqueFd> second = ListenTcp(kLoopback, port, 1);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Errc::kIo);
  EXPECT_NE(second.status().message().find(std::to_string(port)), std::string::npos);
}

TEST(SocketTest, ConnectRejectsEmptyHost) {
  Result<UniqueFd> fd = ConnectTcp("", 1, kWait);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), Errc::kInvalidArgument);
}

TEST(SocketTest, AcceptTimesOut) {
  Result<UniqueFd> listener = ListenTcp(kLoopback, 0, 1);
  ASSERT_TRUE(listener.ok());
  auto start = std::chrono::steady_clock::now();
  Result<UniqueFd> fd = AcceptTcp(listener->get(), milliseconds(80));
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), Errc::kTimeout) << fd.status().ToString();
  EXPECT_GE(elapsed, milliseconds(70));
  EXPECT_LT(elapsed, milliseconds(3000));
  EXPECT_NE(fd.status().message().find("127.0.0.1:"), std::string::npos);
}

TEST(SocketTest, ReadSomeTimesOut) {
  Pair p = Connect();
  ASSERT_TRUE(SetIoTimeouts(p.server.get(), milliseconds(100)).ok());
  SocketStream s(p.server.get());
  Bytes buf(16);
  auto start = std::chrono::steady_clock::now();
  Result<size_t> n = s.ReadSome(buf);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kTimeout) << n.status().ToString();
  EXPECT_GE(elapsed, milliseconds(90));
  // A timeout consumed nothing: the stream still works.
  SocketStream c(p.client.get());
  ASSERT_TRUE(c.WriteAll(Bytes{7}).ok());
  n = s.ReadSome(buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(buf[0], 7);
}

TEST(SocketTest, PeerCloseIsClosed) {
  Pair p = Connect();
  SocketStream s(p.server.get());
  p.client.Reset();
  Bytes buf(16);
  Result<size_t> n = s.ReadSome(buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kClosed);
  EXPECT_NE(n.status().message().find("127.0.0.1:"), std::string::npos);
}

TEST(SocketTest, CloseInsideReadExactIsTruncated) {
  Pair p = Connect();
  {
    SocketStream c(p.client.get());
    ASSERT_TRUE(c.WriteAll(Bytes(10, 0xab)).ok());
  }
  p.client.Reset();
  SocketStream s(p.server.get());
  Bytes buf(100);
  Status st = ReadExact(s, buf);
  EXPECT_EQ(st.code(), Errc::kTruncated) << st.ToString();
}

TEST(SocketTest, CloseWriteKeepsTheOtherDirection) {
  Pair p = Connect();
  SocketStream c(p.client.get());
  SocketStream s(p.server.get());
  ASSERT_TRUE(c.WriteAll(Bytes{1, 2, 3}).ok());
  ASSERT_TRUE(c.CloseWrite().ok());
  Bytes buf(3);
  ASSERT_TRUE(ReadExact(s, buf).ok());
  Result<size_t> n = s.ReadSome(buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kClosed);
  // The server can still answer, the client still reads.
  ASSERT_TRUE(s.WriteAll(Bytes{9, 8}).ok());
  Bytes back(2);
  ASSERT_TRUE(ReadExact(c, back).ok());
  EXPECT_EQ(back, (Bytes{9, 8}));
  // Writing after CloseWrite fails cleanly (no SIGPIPE).
  Status w = c.WriteAll(Bytes{1});
  EXPECT_EQ(w.code(), Errc::kClosed) << w.ToString();
}

TEST(SocketTest, WriteToResetPeerIsClosedNamingThePeer) {
  Pair p = Connect();
  ASSERT_TRUE(SetIoTimeouts(p.client.get(), kWait).ok());
  SocketStream c(p.client.get());
  ResetClose(p.server);
  Bytes chunk(64 * 1024, 0x5a);
  Status st;
  for (int i = 0; i < 1000 && st.ok(); ++i) st = c.WriteAll(chunk);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Errc::kClosed) << st.ToString();
  EXPECT_NE(st.message().find("127.0.0.1:" + std::to_string(p.port)), std::string::npos)
      << st.ToString();
  // Reading reports the reset as well.
  Bytes buf(8);
  Result<size_t> n = c.ReadSome(buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kClosed) << n.status().ToString();
}

TEST(SocketTest, TuneForBulkSetsNoDelay) {
  Pair p = Connect();
  ASSERT_TRUE(TuneForBulk(p.client.get()).ok());
  int v = 0;
  socklen_t len = sizeof(v);
  ASSERT_EQ(getsockopt(p.client.get(), IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
  EXPECT_NE(v, 0);
}

TEST(SocketTest, TuneForBulkFixesTheCarriedDirectionsBuffer) {
  Pair p = Connect();
  auto get = [](int fd, int opt) {
    int v = 0;
    socklen_t len = sizeof(v);
    EXPECT_EQ(getsockopt(fd, SOL_SOCKET, opt, &v, &len), 0);
    return v;
  };
  const int rcv_before = get(p.server.get(), SO_RCVBUF);
  ASSERT_TRUE(TuneForBulk(p.client.get(), true, 96 * 1024).ok());
  ASSERT_TRUE(TuneForBulk(p.server.get(), false, 80 * 1024).ok());
  // Linux doubles the value for its bookkeeping.
  EXPECT_EQ(get(p.client.get(), SO_SNDBUF), 2 * 96 * 1024);
  EXPECT_EQ(get(p.server.get(), SO_RCVBUF), 2 * 80 * 1024);
  // 0: left to the kernel.
  Pair q = Connect();
  const int snd_default = get(q.client.get(), SO_SNDBUF);
  ASSERT_TRUE(TuneForBulk(q.client.get(), true, 0).ok());
  EXPECT_EQ(get(q.client.get(), SO_SNDBUF), snd_default);
  EXPECT_NE(rcv_before, 2 * 80 * 1024);
}

TEST(SocketTest, SetIoTimeoutsRejectsNegative) {
  Pair p = Connect();
  EXPECT_EQ(SetIoTimeouts(p.client.get(), milliseconds(-1)).code(), Errc::kInvalidArgument);
}

TEST(SocketSendQueueTest, SendsInOrderAndChecksProtocol) {
  Pair p = Connect();
  SocketSendQueue q(p.client.get(), 16);
  EXPECT_EQ(q.max_buffer(), 16u);
  EXPECT_EQ(q.Acquire(17).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(q.Commit(1).code(), Errc::kInternal);  // no Acquire
  for (uint8_t i = 0; i < 4; ++i) {
    Result<MutableByteSpan> b = q.Acquire(8);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(q.Acquire(1).status().code(), Errc::kInternal);  // one outstanding at a time
    for (auto& x : *b) x = i;
    ASSERT_TRUE(q.Commit(i + 1).ok());
  }
  ASSERT_TRUE(q.Flush().ok());
  SocketStream s(p.server.get());
  Bytes got(1 + 2 + 3 + 4);
  ASSERT_TRUE(ReadExact(s, got).ok());
  EXPECT_EQ(got, (Bytes{0, 1, 1, 2, 2, 2, 3, 3, 3, 3}));
}

}  // namespace
}  // namespace sod
