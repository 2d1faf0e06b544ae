// StreamPump and StreamSink over real sockets (socketpairs stand in for QEMU and for the data
// channels): a byte stream crosses N channels and comes out identical and in order; a sink fed
// hostile chunk layouts (gap, overlap, offsets going backwards, foreign record types) refuses
// them and never delivers bytes out of order.
#include "migrate/stream_pump.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <numeric>
#include <random>
#include <thread>

#include "migrate/socket.h"

namespace sod {
namespace {

SessionKeys Keys() {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), 5);
  return std::move(SessionKeys::Create(secret)).value();
}

struct Pair {
  UniqueFd a, b;
};
Pair SocketPair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// N data channels: writers on one side, readers on the other.
struct Channels {
  explicit Channels(size_t n, const SessionKeys& keys) {
    for (uint32_t i = 1; i <= n; ++i) {
      pairs.push_back(SocketPair());
      queues.push_back(std::make_unique<SocketSendQueue>(pairs.back().a.get(), MaxRecordSize()));
      streams.push_back(std::make_unique<SocketStream>(pairs.back().b.get()));
      RecordParams p{Suite::kAes256Gcm, i, Direction::kInitiatorToResponder};
      writers.push_back(std::move(RecordWriter::Create(*queues.back(), p, keys)).value());
      readers.push_back(std::move(RecordReader::Create(*streams.back(), p, keys)).value());
    }
  }
  std::vector<RecordWriter*> W() {
    std::vector<RecordWriter*> v;
    for (auto& w : writers) v.push_back(w.get());
    return v;
  }
  std::vector<RecordReader*> R() {
    std::vector<RecordReader*> v;
    for (auto& r : readers) v.push_back(r.get());
    return v;
  }
  std::vector<Pair> pairs;
  std::vector<std::unique_ptr<SocketSendQueue>> queues;
  std::vector<std::unique_ptr<SocketStream>> streams;
  std::vector<std::unique_ptr<RecordWriter>> writers;
  std::vector<std::unique_ptr<RecordReader>> readers;
};

Bytes ReadAll(int fd) {
  Bytes out;
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) return out;
    out.insert(out.end(), buf, buf + n);
  }
}

class StreamPumpTest : public ::testing::TestWithParam<size_t> {};

TEST_P(StreamPumpTest, StreamCrossesChannelsIntactAndInOrder) {
  SessionKeys keys = Keys();
  Channels ch(GetParam(), keys);
  Pair src = SocketPair();  // test writes "QEMU's stream" into src.a; the pump reads src.b
  Pair dst = SocketPair();  // the sink writes into dst.a; "destination QEMU" reads dst.b
  Bytes stream(24u << 20);
  std::mt19937 rng(1);
  for (auto& b : stream) b = static_cast<uint8_t>(rng());

  StreamPump pump(src.b.get(), ch.W(), 128 * 1024);
  StreamSink sink(dst.a.get(), ch.R());
  Status sink_error_seen;
  pump.Start();
  sink.Start([&](const Status& s) { sink_error_seen = s; });
  std::thread qemu_src([&] {
    // Write in uneven pieces, like QEMU does.
    size_t at = 0, piece = 1;
    while (at < stream.size()) {
      size_t n = std::min(stream.size() - at, piece);
      ASSERT_EQ(::write(src.a.get(), stream.data() + at, n), static_cast<ssize_t>(n));
      at += n;
      piece = piece * 3 % 200000 + 1;
    }
    src.a.Reset();  // QEMU closes the migration fd when it is done
  });
  Bytes received;
  std::thread qemu_dst([&] { received = ReadAll(dst.b.get()); });
  qemu_src.join();
  ASSERT_TRUE(pump.Wait().ok()) << pump.error().ToString();
  EXPECT_EQ(pump.stream_bytes(), stream.size());
  ASSERT_TRUE(sink.Wait().ok()) << sink.error().ToString();
  EXPECT_TRUE(sink_error_seen.ok());
  dst.a.Reset();
  qemu_dst.join();
  EXPECT_EQ(sink.stream_bytes(), stream.size());
  EXPECT_TRUE(received == stream) << "the destination QEMU sees exactly the source's stream";
  uint64_t records = 0;
  for (auto& w : ch.writers) records += w->records();
  EXPECT_GE(records, stream.size() / (128 * 1024)) << "the stream went out as records";
}

INSTANTIATE_TEST_SUITE_P(Channels, StreamPumpTest, ::testing::Values(1, 2, 4));

// Feeds the sink hand-made chunk layouts: layout[i] = the (offset, length) chunks of channel i.
Status RunSink(const std::vector<std::vector<std::pair<uint64_t, size_t>>>& layout,
               Bytes* delivered, RecordType type = RecordType::kStream) {
  SessionKeys keys = Keys();
  Channels ch(layout.size(), keys);
  for (size_t i = 0; i < layout.size(); ++i) {
    for (auto [off, len] : layout[i]) {
      Bytes data(len);
      for (size_t k = 0; k < len; ++k) data[k] = static_cast<uint8_t>((off + k) * 7);
      EXPECT_TRUE(ch.writers[i]->WriteChunk(type, 0, 0, off, data).ok());
    }
    EXPECT_TRUE(ch.writers[i]->Finish().ok());
  }
  Pair dst = SocketPair();
  StreamSink sink(dst.a.get(), ch.R(), std::chrono::seconds(2));
  std::thread qemu([&] { *delivered = ReadAll(dst.b.get()); });
  sink.Start(nullptr);
  Status s = sink.Wait();
  dst.a.Reset();
  qemu.join();
  return s;
}

bool IsPrefixPattern(const Bytes& b) {
  for (size_t k = 0; k < b.size(); ++k)
    if (b[k] != static_cast<uint8_t>(k * 7)) return false;
  return true;
}

TEST(StreamSinkTest, InterleavedChannelsDeliverInOrder) {
  Bytes out;
  Status s = RunSink({{{0, 100}, {250, 50}}, {{100, 150}, {300, 10}}}, &out);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(out.size(), 310u);
  EXPECT_TRUE(IsPrefixPattern(out));
}

TEST(StreamSinkTest, GapIsRefused) {
  Bytes out;
  Status s = RunSink({{{0, 100}}, {{200, 100}}}, &out);
  EXPECT_EQ(s.code(), Errc::kSequence) << s.ToString();
  EXPECT_NE(s.message().find("gap at offset 100"), std::string::npos) << s.ToString();
  EXPECT_EQ(out.size(), 100u) << "only the bytes before the gap were delivered";
  EXPECT_TRUE(IsPrefixPattern(out));
}

TEST(StreamSinkTest, OverlapIsRefused) {
  Bytes out;
  Status s = RunSink({{{0, 100}}, {{50, 100}}}, &out);
  EXPECT_EQ(s.code(), Errc::kSequence) << s.ToString();
  EXPECT_LE(out.size(), 100u);
  EXPECT_TRUE(IsPrefixPattern(out));
}

TEST(StreamSinkTest, DuplicateOffsetOnTwoChannelsIsRefused) {
  Bytes out;
  Status s = RunSink({{{0, 100}}, {{0, 100}}}, &out);
  EXPECT_EQ(s.code(), Errc::kSequence) << s.ToString();
  EXPECT_EQ(out.size(), 100u);
}

TEST(StreamSinkTest, OffsetGoingBackwardsOnAChannelIsRefused) {
  Bytes out;
  Status s = RunSink({{{100, 100}, {0, 100}}}, &out);
  EXPECT_EQ(s.code(), Errc::kSequence) << s.ToString();
  EXPECT_TRUE(out.empty());
}

TEST(StreamSinkTest, NonStreamRecordOnADataChannelIsRefused) {
  Bytes out;
  Status s = RunSink({{{0, 100}}}, &out, RecordType::kVtpmState);
  EXPECT_EQ(s.code(), Errc::kState) << s.ToString();
  EXPECT_TRUE(out.empty());
}

TEST(StreamSinkTest, DestinationQemuGoneIsAnError) {
  SessionKeys keys = Keys();
  Channels ch(1, keys);
  ASSERT_TRUE(ch.writers[0]->WriteChunk(RecordType::kStream, 0, 0, 0, Bytes(1000, 1)).ok());
  ASSERT_TRUE(ch.writers[0]->Finish().ok());
  Pair dst = SocketPair();
  dst.b.Reset();  // QEMU died
  StreamSink sink(dst.a.get(), ch.R());
  Status reported;
  sink.Start([&](const Status& s) { reported = s; });
  Status s = sink.Wait();
  EXPECT_EQ(s.code(), Errc::kClosed) << s.ToString();
  EXPECT_EQ(reported.code(), Errc::kClosed) << "the error callback saw it too";
}

}  // namespace
}  // namespace sod
