// A whole session over real sockets and real TLS on 127.0.0.1: handshake, negotiation, data
// channels joined to the session, bulk data through several channels in parallel (each channel in
// its own thread), and both ends finishing with the same session transcript. Parameterized over
// suite and I/O backend. Plus refusals: no common suite, wrong peer name, rogue data channels.
#include "migrate/session.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <filesystem>
#include <future>
#include <numeric>
#include <random>
#include <thread>

#include "migrate/pki.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class SessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("sod-session-test-" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    ASSERT_TRUE(CreateCa(*dir_, {}).ok());
    for (const char* h : {"hosta", "hostb"}) ASSERT_TRUE(IssueHostCert(*dir_, h, *dir_, {}).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::unique_ptr<TlsContext> Ctx(const std::string& host, TlsRole role) {
    TlsConfig c{(*dir_ / "ca.crt").string(), (*dir_ / (host + ".crt")).string(),
                (*dir_ / (host + ".key")).string()};
    auto ctx = TlsContext::Create(c, role);
    EXPECT_TRUE(ctx.ok()) << ctx.status().ToString();
    return std::move(ctx).value();
  }
  static fs::path* dir_;
};
fs::path* SessionTest::dir_ = nullptr;

struct Mode {
  Suite suite;
  IoBackend io;
  uint16_t channels;
};

class SessionDataTest : public SessionTest, public ::testing::WithParamInterface<Mode> {};

TEST_P(SessionDataTest, BulkDataOverParallelChannelsWithMatchingTranscripts) {
  const Mode mode = GetParam();
  if (mode.io == IoBackend::kUring && !UringAvailable()) GTEST_SKIP() << "no io_uring here";
  auto server_ctx = Ctx("hostb", TlsRole::kServer);
  auto client_ctx = Ctx("hosta", TlsRole::kClient);
  SessionOptions opts;
  opts.suites = {mode.suite};
  opts.data_channels = mode.channels;
  opts.io = mode.io;
  opts.timeout = 10s;
  auto listener = SessionListener::Listen(*server_ctx, "127.0.0.1", 0, opts);
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();

  constexpr size_t kTotal = 48u << 20;
  constexpr size_t kChunk = 256u << 10;
  Bytes source(kTotal);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < kTotal; i += 8) {
    uint64_t v = rng();
    std::memcpy(source.data() + i, &v, 8);
  }

  auto responder =
      std::async(std::launch::async, [&]() -> Result<std::pair<Bytes, TranscriptValue>> {
        SOD_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, (*listener)->Accept(20s));
        EXPECT_EQ(s->peer_host_id(), "hosta");
        Bytes sink(kTotal);
        std::vector<std::thread> readers;
        std::vector<Status> results(s->data_channel_count());
        for (size_t i = 0; i < s->data_channel_count(); ++i) {
          readers.emplace_back([&, i] {
            RecordReader* r = s->data_reader(i);
            for (;;) {
              auto rec = r->Next();
              if (!rec.ok()) {
                results[i] = rec.status();
                return;
              }
              if (rec->header.type == RecordType::kChannelEnd) continue;
              auto c = DecodeChunk(rec->payload);
              if (!c.ok() || c->offset + c->data.size() > kTotal) {
                results[i] = Error(Errc::kMalformed, "bad chunk");
                return;
              }
              std::memcpy(sink.data() + c->offset, c->data.data(), c->data.size());
            }
          });
        }
        for (auto& t : readers) t.join();
        for (size_t i = 0; i < results.size(); ++i)
          if (results[i].code() != Errc::kClosed || !s->data_reader(i)->ended())
            return results[i].ok() ? Error(Errc::kInternal, "reader ended oddly") : results[i];
        SOD_ASSIGN_OR_RETURN(TranscriptValue t, s->Transcript());
        return std::pair(std::move(sink), t);
      });

  auto s = Session::Connect(*client_ctx, "127.0.0.1", (*listener)->port(), "hostb", opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->negotiated().suite, mode.suite);
  ASSERT_EQ((*s)->data_channel_count(), mode.channels);
  std::vector<std::thread> writers;
  std::vector<Status> results(mode.channels);
  for (size_t i = 0; i < mode.channels; ++i) {
    writers.emplace_back([&, i] {
      RecordWriter* w = (*s)->data_writer(i);
      for (size_t off = i * kChunk; off < kTotal; off += kChunk * mode.channels) {
        Status st = w->WriteChunk(RecordType::kStream, 1, 0, off,
                                  ByteSpan(source).subspan(off, std::min(kChunk, kTotal - off)));
        if (!st.ok()) {
          results[i] = st;
          return;
        }
      }
      results[i] = w->Finish();
    });
  }
  for (auto& t : writers) t.join();
  for (const Status& r : results) ASSERT_TRUE(r.ok()) << r.ToString();
  auto got = responder.get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(got->first == source) << "every byte arrived, in place, unmodified";
  auto mine = (*s)->Transcript();
  ASSERT_TRUE(mine.ok());
  EXPECT_TRUE(TranscriptEqual(*mine, got->second)) << "both ends agree on the session transcript";
}

INSTANTIATE_TEST_SUITE_P(Modes, SessionDataTest,
                         ::testing::Values(Mode{Suite::kAes256Gcm, IoBackend::kPosix, 1},
                                           Mode{Suite::kAes256Gcm, IoBackend::kUring, 3},
                                           Mode{Suite::kHmacSha256, IoBackend::kPosix, 2},
                                           Mode{Suite::kHmacSha256, IoBackend::kUring, 2}),
                         [](const auto& info) {
                           return std::string(info.param.suite == Suite::kAes256Gcm
                                                  ? "Aead"
                                                  : "IntegrityOnly") +
                                  (info.param.io == IoBackend::kUring ? "Uring" : "Posix") +
                                  std::to_string(info.param.channels) + "Channels";
                         });

TEST_F(SessionTest, NoCommonSuiteIsRefusedWithTheReasonOnBothSides) {
  auto server_ctx = Ctx("hostb", TlsRole::kServer);
  auto client_ctx = Ctx("hosta", TlsRole::kClient);
  SessionOptions server_opts;
  server_opts.suites = {Suite::kAes256Gcm};  // this responder insists on confidentiality
  server_opts.timeout = 5s;
  auto listener = SessionListener::Listen(*server_ctx, "127.0.0.1", 0, server_opts);
  ASSERT_TRUE(listener.ok());
  auto accepted = std::async(std::launch::async, [&] { return (*listener)->Accept(3s); });
  SessionOptions client_opts;
  client_opts.suites = {Suite::kHmacSha256};
  client_opts.timeout = 5s;
  auto s = Session::Connect(*client_ctx, "127.0.0.1", (*listener)->port(), "hostb", client_opts);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Errc::kAborted) << s.status().ToString();
  EXPECT_NE(s.status().message().find("no common record suite"), std::string::npos)
      << s.status().ToString();
  auto a = accepted.get();
  EXPECT_EQ(a.status().code(), Errc::kTimeout) << "no session was established";
  EXPECT_EQ((*listener)->last_refusal().code(), Errc::kUnsupported)
      << (*listener)->last_refusal().ToString();
}

TEST_F(SessionTest, WrongPeerNameIsRefusedBeforeAnyRecord) {
  auto server_ctx = Ctx("hostb", TlsRole::kServer);
  auto client_ctx = Ctx("hosta", TlsRole::kClient);
  SessionOptions opts;
  opts.timeout = 5s;
  auto listener = SessionListener::Listen(*server_ctx, "127.0.0.1", 0, opts);
  ASSERT_TRUE(listener.ok());
  auto accepted = std::async(std::launch::async, [&] { return (*listener)->Accept(3s); });
  auto s = Session::Connect(*client_ctx, "127.0.0.1", (*listener)->port(), "hostc", opts);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Errc::kAuth) << s.status().ToString();
  EXPECT_FALSE(accepted.get().ok());
  EXPECT_EQ((*listener)->last_refusal().code(), Errc::kAuth)
      << (*listener)->last_refusal().ToString();
}

TEST_F(SessionTest, RogueDataChannelsAreRefusedAndTheSessionStillCompletes) {
  auto server_ctx = Ctx("hostb", TlsRole::kServer);
  auto client_ctx = Ctx("hosta", TlsRole::kClient);
  SessionOptions opts;
  opts.data_channels = 1;
  opts.timeout = 5s;
  opts.io = IoBackend::kPosix;
  auto listener = SessionListener::Listen(*server_ctx, "127.0.0.1", 0, opts);
  ASSERT_TRUE(listener.ok());
  const uint16_t port = (*listener)->port();
  // A rogue peer that knows the wire format but no session: it must be refused.
  auto rogue = std::async(std::launch::async, [&] {
    auto fd = ConnectTcp("127.0.0.1", port, 2s);
    if (!fd.ok()) return fd.status();
    SocketStream st(fd->get());
    Bytes fake(32, 0x11);
    auto keys = SessionKeys::Create(fake);
    return JoinDataChannel(st, *keys, 1);
  });
  // Junk that is neither TLS nor a channel hello is simply closed.
  auto junk = std::async(std::launch::async, [&] {
    auto fd = ConnectTcp("127.0.0.1", port, 2s);
    if (fd.ok()) (void)::send(fd->get(), "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL);
    char b;
    return fd.ok() ? ::recv(fd->get(), &b, 1, 0) : ssize_t{-1};
  });
  auto accepted = std::async(std::launch::async, [&] { return (*listener)->Accept(8s); });
  Status rogue_status = rogue.get();
  EXPECT_EQ(rogue_status.code(), Errc::kAuth) << rogue_status.ToString();
  EXPECT_LE(junk.get(), 0) << "junk connection closed (FIN or RST) without a byte";
  auto s = Session::Connect(*client_ctx, "127.0.0.1", port, "hostb", opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE((*s)->data_writer(0)->Finish().ok());
  auto a = accepted.get();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto rec = (*a)->data_reader(0)->Next();
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->header.type, RecordType::kChannelEnd);
}

}  // namespace
}  // namespace sod
