// Tests of migrate/uring.h (and, through the same parameterized cases, the posix transports) over
// real TCP sockets on 127.0.0.1 only. io_uring cases skip when io_uring is unavailable.
#include "migrate/uring.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "migrate/socket.h"

namespace sod {
namespace {

using std::chrono::milliseconds;

constexpr char kLoopback[] = "127.0.0.1";
constexpr milliseconds kWait(10000);
constexpr size_t kBuf = 64 * 1024;

struct Pair {
  UniqueFd client;  // sends
  UniqueFd server;  // receives
  uint16_t port = 0;
};

Pair Connect() {
  Pair p;
  Result<UniqueFd> listener = ListenTcp(kLoopback, 0, 4);
  EXPECT_TRUE(listener.ok()) << listener.status().ToString();
  if (!listener.ok()) return p;
  p.port = *LocalPort(listener->get());
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

// The test stream: byte o is byte (o % 8) of SplitMix64(o / 8), so swapped, dropped or repeated
// chunks at any offset and of any size are caught.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void FillPattern(MutableByteSpan out, uint64_t offset) {
  size_t i = 0;
  while (i < out.size()) {
    const uint64_t o = offset + i;
    const uint64_t word = SplitMix64(o >> 3);
    for (size_t b = o & 7; b < 8 && i < out.size(); ++b)
      out[i++] = static_cast<uint8_t>(word >> (8 * b));
  }
}

// Reads `stream` to its end and checks every byte against the pattern.
struct Drained {
  uint64_t bytes = 0;
  bool pattern_ok = true;
  Status end;  // the status that ended the stream (kClosed expected)
};

Drained DrainAndVerify(ByteStream& stream) {
  Drained d;
  Bytes buf(256 * 1024);
  Bytes want(buf.size());
  for (;;) {
    Result<size_t> n = stream.ReadSome(buf);
    if (!n.ok()) {
      d.end = n.status();
      return d;
    }
    FillPattern(MutableByteSpan(want.data(), *n), d.bytes);
    if (d.pattern_ok && std::memcmp(buf.data(), want.data(), *n) != 0) d.pattern_ok = false;
    d.bytes += *n;
  }
}

struct Variant {
  const char* name;
  IoBackend backend;
  UringSendQueueOptions options;
};

class SocketTransportTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (GetParam().backend == IoBackend::kUring && !UringAvailable()) {
      GTEST_SKIP() << "io_uring is not available here";
    }
    pair_ = Connect();
    ASSERT_TRUE(pair_.client.valid() && pair_.server.valid());
    // Bounded waits everywhere: a bug shows up as kTimeout, not as a hung test.
    ASSERT_TRUE(SetIoTimeouts(pair_.client.get(), kWait).ok());
    ASSERT_TRUE(SetIoTimeouts(pair_.server.get(), kWait).ok());
  }

  std::unique_ptr<SendQueue> MakeQueue(size_t max_buffer) {
    if (GetParam().backend == IoBackend::kPosix) {
      Result<std::unique_ptr<SendQueue>> q =
          MakeSendQueue(pair_.client.get(), max_buffer, IoBackend::kPosix);
      EXPECT_TRUE(q.ok()) << q.status().ToString();
      return q.ok() ? std::move(*q) : nullptr;
    }
    Result<std::unique_ptr<UringSendQueue>> q =
        UringSendQueue::Create(pair_.client.get(), max_buffer, GetParam().options);
    EXPECT_TRUE(q.ok()) << q.status().ToString();
    return q.ok() ? std::move(*q) : nullptr;
  }

  std::unique_ptr<ByteStream> MakeReceiver() {
    Result<std::unique_ptr<ByteStream>> s = MakeStream(pair_.server.get(), GetParam().backend);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }

  Pair pair_;
};

TEST_P(SocketTransportTest, Transfers64MiBIntact) {
  constexpr uint64_t kTotal = uint64_t{64} << 20;
  std::unique_ptr<SendQueue> q = MakeQueue(kBuf);
  std::unique_ptr<ByteStream> rx = MakeReceiver();
  ASSERT_TRUE(q && rx);
  Drained drained;
  std::thread receiver([&] { drained = DrainAndVerify(*rx); });
  Status st;
  for (uint64_t off = 0; off < kTotal && st.ok(); off += kBuf) {
    Result<MutableByteSpan> b = q->Acquire(kBuf);
    if (!b.ok()) {
      st = b.status();
      break;
    }
    FillPattern(*b, off);
    st = q->Commit(kBuf);
  }
  if (st.ok()) st = q->Flush();
  EXPECT_TRUE(st.ok()) << st.ToString();
  shutdown(pair_.client.get(), SHUT_WR);
  receiver.join();
  EXPECT_EQ(drained.bytes, kTotal);
  EXPECT_TRUE(drained.pattern_ok);
  EXPECT_EQ(drained.end.code(), Errc::kClosed) << drained.end.ToString();
}

TEST_P(SocketTransportTest, SmallAndLargeCommitsKeepOrder) {
  std::unique_ptr<SendQueue> q = MakeQueue(kBuf);
  std::unique_ptr<ByteStream> rx = MakeReceiver();
  ASSERT_TRUE(q && rx);
  Drained drained;
  std::thread receiver([&] { drained = DrainAndVerify(*rx); });
  uint64_t off = 0;
  uint64_t rng = 42;
  Status st;
  for (int i = 0; i < 20000 && st.ok(); ++i) {
    rng = SplitMix64(rng);
    size_t acquire;
    switch (rng % 4) {
      case 0:
        acquire = kBuf;  // a full buffer
        break;
      case 1:
        acquire = 1 + (rng >> 8) % kBuf;  // anything
        break;
      default:
        acquire = 1 + (rng >> 8) % 64;  // tiny records, the common case here
    }
    const size_t used = (rng >> 40) % 8 == 0 ? acquire / 2 : acquire;  // sometimes commit less
    Result<MutableByteSpan> b = q->Acquire(acquire);
    if (!b.ok()) {
      st = b.status();
      break;
    }
    ASSERT_EQ(b->size(), acquire);
    FillPattern(b->first(used), off);
    off += used;
    st = q->Commit(used);
  }
  if (st.ok()) st = q->Flush();
  EXPECT_TRUE(st.ok()) << st.ToString();
  shutdown(pair_.client.get(), SHUT_WR);
  receiver.join();
  EXPECT_EQ(drained.bytes, off);
  EXPECT_TRUE(drained.pattern_ok);
  if (auto* u = dynamic_cast<UringSendQueue*>(q.get())) {
    EXPECT_GE(u->stats().sends, u->stats().chains);
    EXPECT_GT(u->stats().chains, 0u);
  }
  EXPECT_EQ(drained.end.code(), Errc::kClosed) << drained.end.ToString();
}

TEST_P(SocketTransportTest, PeerResetFailsSendsAndTheErrorSticks) {
  std::unique_ptr<SendQueue> q = MakeQueue(kBuf);
  ASSERT_TRUE(q);
  std::thread peer([&] {
    // Read a little, then reset the connection with unread data pending.
    SocketStream s(pair_.server.get());
    Bytes buf(kBuf);
    (void)ReadExact(s, buf);
    linger l{1, 0};
    setsockopt(pair_.server.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    pair_.server.Reset();
  });
  Status st;
  for (int i = 0; i < 20000 && st.ok(); ++i) {
    Result<MutableByteSpan> b = q->Acquire(kBuf);
    if (!b.ok()) {
      st = b.status();
      break;
    }
    std::memset(b->data(), i & 0xff, b->size());
    st = q->Commit(kBuf);
    if (st.ok() && i % 64 == 63) st = q->Flush();
  }
  if (st.ok()) st = q->Flush();
  peer.join();
  ASSERT_FALSE(st.ok()) << "sending into a reset connection never failed";
  EXPECT_TRUE(st.code() == Errc::kClosed || st.code() == Errc::kIo) << st.ToString();
  EXPECT_NE(st.message().find("127.0.0.1:" + std::to_string(pair_.port)), std::string::npos)
      << st.ToString();
  // Every later call fails the same way, promptly.
  Result<MutableByteSpan> again = q->Acquire(16);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), st.code());
  EXPECT_EQ(q->Commit(16).code(), st.code());
  EXPECT_EQ(q->Flush().code(), st.code());
}

TEST_P(SocketTransportTest, ReceiverSeesPeerCloseAndTruncation) {
  std::unique_ptr<ByteStream> rx = MakeReceiver();
  ASSERT_TRUE(rx);
  {
    SocketStream tx(pair_.client.get());
    ASSERT_TRUE(tx.WriteAll(Bytes(10, 1)).ok());
  }
  pair_.client.Reset();
  Bytes buf(100);
  EXPECT_EQ(ReadExact(*rx, buf).code(), Errc::kTruncated);
  Result<size_t> n = rx->ReadSome(buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kClosed) << n.status().ToString();
  EXPECT_NE(n.status().message().find("127.0.0.1:"), std::string::npos);
}

TEST_P(SocketTransportTest, ReadSomeTimesOutAndStaysUsable) {
  ASSERT_TRUE(SetIoTimeouts(pair_.server.get(), milliseconds(100)).ok());
  std::unique_ptr<ByteStream> rx = MakeReceiver();  // uring reads the timeout now
  ASSERT_TRUE(rx);
  Bytes buf(16);
  auto start = std::chrono::steady_clock::now();
  Result<size_t> n = rx->ReadSome(buf);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Errc::kTimeout) << n.status().ToString();
  EXPECT_GE(elapsed, milliseconds(90));
  EXPECT_LT(elapsed, milliseconds(5000));
  SocketStream tx(pair_.client.get());
  ASSERT_TRUE(tx.WriteAll(Bytes{1, 2, 3}).ok());
  Bytes got(3);
  ASSERT_TRUE(ReadExact(*rx, got).ok());
  EXPECT_EQ(got, (Bytes{1, 2, 3}));
}

TEST_P(SocketTransportTest, StreamWritesBothWaysAndCloseWrite) {
  Result<std::unique_ptr<ByteStream>> a = MakeStream(pair_.client.get(), GetParam().backend);
  std::unique_ptr<ByteStream> b = MakeReceiver();
  ASSERT_TRUE(a.ok() && b);
  // Larger than one UringStream chunk and than the socket buffers: needs a concurrent reader.
  Bytes big(3 << 20);
  FillPattern(big, 0);
  Drained drained;
  std::thread reader([&] { drained = DrainAndVerify(*b); });
  ASSERT_TRUE((*a)->WriteAll(big).ok());
  ASSERT_TRUE((*a)->CloseWrite().ok());
  reader.join();
  EXPECT_EQ(drained.bytes, big.size());
  EXPECT_TRUE(drained.pattern_ok);
  EXPECT_EQ(drained.end.code(), Errc::kClosed);
  // Half-close: the other direction still works.
  ASSERT_TRUE(b->WriteAll(Bytes{4, 5}).ok());
  Bytes back(2);
  ASSERT_TRUE(ReadExact(**a, back).ok());
  EXPECT_EQ(back, (Bytes{4, 5}));
}

TEST_P(SocketTransportTest, StreamWriteToResetPeerFailsAndSticks) {
  Result<std::unique_ptr<ByteStream>> a = MakeStream(pair_.client.get(), GetParam().backend);
  ASSERT_TRUE(a.ok());
  linger l{1, 0};
  ASSERT_EQ(setsockopt(pair_.server.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  pair_.server.Reset();
  Bytes chunk(kBuf, 0x11);
  Status st;
  for (int i = 0; i < 1000 && st.ok(); ++i) st = (*a)->WriteAll(chunk);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Errc::kClosed) << st.ToString();
  EXPECT_NE(st.message().find("127.0.0.1:" + std::to_string(pair_.port)), std::string::npos);
  EXPECT_FALSE((*a)->WriteAll(chunk).ok());
}

TEST_P(SocketTransportTest, MisuseIsRefused) {
  std::unique_ptr<SendQueue> q = MakeQueue(1024);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->max_buffer(), 1024u);
  EXPECT_EQ(q->Acquire(1025).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(q->Commit(1).code(), Errc::kInternal);
  ASSERT_TRUE(q->Acquire(10).ok());
  EXPECT_EQ(q->Acquire(10).status().code(), Errc::kInternal);
  EXPECT_EQ(q->Commit(11).code(), Errc::kInternal);
  EXPECT_TRUE(q->Commit(0).ok());  // nothing to send
  EXPECT_TRUE(q->Flush().ok());
}

const Variant kVariants[] = {
    {"posix", IoBackend::kPosix, {}},
    {"uring", IoBackend::kUring, {}},
    {"uring_async", IoBackend::kUring, {.buffers = 8, .async_sends = true, .zero_copy = false}},
    {"uring_zerocopy", IoBackend::kUring, {.buffers = 8, .async_sends = false, .zero_copy = true}},
    {"uring_one_buffer",
     IoBackend::kUring,
     {.buffers = 1, .async_sends = false, .zero_copy = false}},
};

INSTANTIATE_TEST_SUITE_P(Backends, SocketTransportTest, ::testing::ValuesIn(kVariants),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return info.param.name;
                         });

// io_uring-specific cases.

class UringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!UringAvailable()) GTEST_SKIP() << "io_uring is not available here";
    pair_ = Connect();
    ASSERT_TRUE(pair_.client.valid() && pair_.server.valid());
  }
  Pair pair_;
};

TEST_F(UringTest, AvailableAndAutoPicksIt) {
  Result<std::unique_ptr<SendQueue>> q = MakeSendQueue(pair_.client.get(), kBuf, IoBackend::kAuto);
  ASSERT_TRUE(q.ok());
  EXPECT_NE(dynamic_cast<UringSendQueue*>(q->get()), nullptr);
  Result<std::unique_ptr<ByteStream>> s = MakeStream(pair_.server.get(), IoBackend::kAuto);
  ASSERT_TRUE(s.ok());
  EXPECT_NE(dynamic_cast<UringStream*>(s->get()), nullptr);
  Result<std::unique_ptr<SendQueue>> p = MakeSendQueue(pair_.client.get(), kBuf, IoBackend::kPosix);
  ASSERT_TRUE(p.ok());
  EXPECT_NE(dynamic_cast<SocketSendQueue*>(p->get()), nullptr);
}

TEST_F(UringTest, CreateRejectsBadSizes) {
  EXPECT_EQ(UringSendQueue::Create(pair_.client.get(), 0).status().code(), Errc::kInvalidArgument);
  UringSendQueueOptions none;
  none.buffers = 0;
  EXPECT_EQ(UringSendQueue::Create(pair_.client.get(), kBuf, none).status().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(MakeSendQueue(pair_.client.get(), 0, IoBackend::kUring).status().code(),
            Errc::kInvalidArgument);
}

TEST_F(UringTest, SendTimeoutWhenPeerStopsReadingThenDestroysCleanly) {
  ASSERT_TRUE(SetIoTimeouts(pair_.client.get(), milliseconds(200)).ok());
  Result<std::unique_ptr<UringSendQueue>> q = UringSendQueue::Create(pair_.client.get(), kBuf);
  ASSERT_TRUE(q.ok());
  Status st;
  // The peer never reads: socket buffers fill (a few MiB), then a wait sees no completion.
  for (int i = 0; i < 100000 && st.ok(); ++i) {
    Result<MutableByteSpan> b = (*q)->Acquire(kBuf);
    st = b.ok() ? (*q)->Commit(kBuf) : b.status();
  }
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Errc::kTimeout) << st.ToString();
  EXPECT_EQ((*q)->Acquire(1).status().code(), Errc::kTimeout);
  EXPECT_EQ((*q)->Commit(1).code(), Errc::kTimeout);
  EXPECT_EQ((*q)->Flush().code(), Errc::kTimeout);
  auto start = std::chrono::steady_clock::now();
  q->reset();  // cancels the blocked send
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
}

TEST_F(UringTest, DestroyWithSendsInFlight) {
  // Commit without Flush, destroy at once: in-flight sends are cancelled or completed, no crash.
  for (int round = 0; round < 10; ++round) {
    Result<std::unique_ptr<UringSendQueue>> q =
        UringSendQueue::Create(pair_.client.get(), kBuf, {.buffers = 4, .async_sends = true});
    ASSERT_TRUE(q.ok());
    for (int i = 0; i < 4; ++i) {
      Result<MutableByteSpan> b = (*q)->Acquire(kBuf);
      ASSERT_TRUE(b.ok());
      ASSERT_TRUE((*q)->Commit(kBuf).ok());
    }
  }
}

}  // namespace
}  // namespace sod
