// Tests for QmpClient and QemuProcess: a scripted fake QEMU for the protocol and hostile-input
// edges, then real qemu-system-x86_64 (TCG, paused with -S, no kernel needed) for the behaviour the
// migration engine relies on.
#include "migrate/qmp.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "migrate/qemu_process.h"

namespace sod {
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;
using ::testing::HasSubstr;

constexpr milliseconds kShort{200};
constexpr milliseconds kLong{20000};

// A temporary directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sod-qmp-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    path_ = p ? p : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  bool ok() const { return !path_.empty(); }

 private:
  std::string path_;
};

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------
// Scripted fake QEMU over a socketpair.

constexpr char kGreeting[] =
    R"({"QMP": {"version": {"qemu": {"micro": 3, "minor": 2, "major": 7}, "package": "fake"},)"
    R"( "capabilities": ["oob"]}})"
    "\r\n";

class FakeQemu {
 public:
  FakeQemu() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
      client_fd_ = fds[0];
      server_fd_ = fds[1];
    }
  }
  ~FakeQemu() {
    if (thread_.joinable()) thread_.join();
    if (client_fd_ >= 0) ::close(client_fd_);
    CloseServer();
  }
  FakeQemu(const FakeQemu&) = delete;
  FakeQemu& operator=(const FakeQemu&) = delete;

  // Runs `script` on a second thread, as QEMU's side of the conversation.
  void Run(std::function<void(FakeQemu&)> script) {
    thread_ = std::thread([this, s = std::move(script)] { s(*this); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // The client end, for QmpClient::FromConnectedFd (which takes ownership).
  int TakeClientFd() {
    int fd = client_fd_;
    client_fd_ = -1;
    return fd;
  }
  // Writes all of `s`; gives up silently once the client is gone.
  void Send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(server_fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      s.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Reads one newline-terminated request; a descriptor passed with it lands in *passed_fd.
  json ReadRequest(int* passed_fd = nullptr) {
    std::string line;
    for (;;) {
      char c;
      iovec iov{&c, 1};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof(control);
      ssize_t n = ::recvmsg(server_fd_, &mh, MSG_CMSG_CLOEXEC);
      if (n <= 0) return json();
      for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && passed_fd) {
          std::memcpy(passed_fd, CMSG_DATA(cm), sizeof(int));
        }
      }
      if (c == '\n') break;
      line.push_back(c);
    }
    return json::parse(line, nullptr, false);
  }
  void Reply(const json& request, const json& ret) {
    Send(json({{"return", ret}, {"id", request.value("id", json())}}).dump() + "\r\n");
  }
  // Greeting + qmp_capabilities.
  void Handshake() {
    Send(kGreeting);
    json req = ReadRequest();
    if (req.value("execute", "") == "qmp_capabilities") Reply(req, json::object());
  }
  void CloseServer() {
    if (server_fd_ >= 0) ::close(server_fd_);
    server_fd_ = -1;
  }

 private:
  int client_fd_ = -1;
  int server_fd_ = -1;
  std::thread thread_;
};

Result<std::unique_ptr<QmpClient>> ConnectFake(FakeQemu& fake) {
  return QmpClient::FromConnectedFd(fake.TakeClientFd(), "fake", milliseconds(5000));
}

std::string Event(std::string_view name, const json& data, int64_t sec = 1700000000,
                  int64_t usec = 250000) {
  json ev = {
      {"event", name}, {"data", data}, {"timestamp", {{"seconds", sec}, {"microseconds", usec}}}};
  return ev.dump() + "\r\n";
}

TEST(QmpFakeTest, HandshakeReadsVersionAndNegotiates) {
  FakeQemu fake;
  json caps;
  fake.Run([&](FakeQemu& f) {
    f.Send(kGreeting);
    caps = f.ReadRequest();
    f.Reply(caps, json::object());
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  fake.Join();
  EXPECT_EQ(caps["execute"], "qmp_capabilities");
  EXPECT_TRUE(caps.contains("id"));
  EXPECT_EQ((*c)->version().major, 7);
  EXPECT_EQ((*c)->version().minor, 2);
  EXPECT_EQ((*c)->version().micro, 3);
  EXPECT_EQ((*c)->version().package, "fake");
}

TEST(QmpFakeTest, MessagesSplitAcrossReadsAndPrettyPrinted) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    std::string greeting = kGreeting;
    for (char ch : greeting) {  // one byte per write: many partial reads
      f.Send(std::string_view(&ch, 1));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    json req = f.ReadRequest();
    f.Reply(req, json::object());
    req = f.ReadRequest();
    // Pretty-printed reply (a `pretty=on` monitor), with braces inside strings.
    json reply = {{"return", {{"text", "a } tricky \" {string\\"}, {"n", {1, 2, 3}}}},
                  {"id", req["id"]}};
    f.Send(reply.dump(4) + "\n");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("echo");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)["text"], "a } tricky \" {string\\");
  EXPECT_EQ((*r)["n"], json({1, 2, 3}));
}

TEST(QmpFakeTest, CommandCarriesArgumentsAndId) {
  FakeQemu fake;
  json seen;
  fake.Run([&](FakeQemu& f) {
    f.Handshake();
    seen = f.ReadRequest();
    f.Reply(seen, {{"ok", true}});
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("migrate", {{"uri", "fd:mig"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  fake.Join();
  EXPECT_EQ(seen["execute"], "migrate");
  EXPECT_EQ(seen["arguments"], json({{"uri", "fd:mig"}}));
  EXPECT_EQ(*r, json({{"ok", true}}));
}

TEST(QmpFakeTest, EventsDuringCommandAreQueuedInOrder) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    json req = f.ReadRequest();
    f.Send(Event("MIGRATION", {{"status", "setup"}}));
    f.Send(Event("MIGRATION_PASS", {{"pass", 1}}));
    f.Send(Event("MIGRATION", {{"status", "active"}}, 1700000001, 500000));
    f.Reply(req, json::object());
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE((*c)->Execute("migrate", {{"uri", "fd:x"}}).ok());
  EXPECT_EQ((*c)->queued_events(), 3u);

  // Waiting consumes the first match and keeps the rest in order.
  auto pass = (*c)->WaitEventNamed("MIGRATION_PASS", kShort);
  ASSERT_TRUE(pass.ok()) << pass.status().ToString();
  EXPECT_EQ(pass->data["pass"], 1);
  EXPECT_DOUBLE_EQ(pass->timestamp, 1700000000.25);

  auto first = (*c)->PollEvent();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->data["status"], "setup");
  auto second = (*c)->PollEvent();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->data["status"], "active");
  EXPECT_DOUBLE_EQ(second->timestamp, 1700000001.5);
  EXPECT_FALSE((*c)->PollEvent().has_value());
}

TEST(QmpFakeTest, WaitEventKeepsNonMatchingArrivals) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.Send(Event("STOP", json::object()));
    f.Send(R"({"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 1}})"
           "\n");  // no "data" member
    f.Send(Event("MIGRATION", {{"status", "completed"}}));
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto done = (*c)->WaitEvent(
      [](const QmpEvent& e) {
        return e.name == "MIGRATION" && e.data.value("status", "") == "completed";
      },
      kLong);
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  auto stop = (*c)->PollEvent();
  ASSERT_TRUE(stop.has_value());
  EXPECT_EQ(stop->name, "STOP");
  auto resume = (*c)->PollEvent();
  ASSERT_TRUE(resume.has_value());
  EXPECT_EQ(resume->name, "RESUME");
  EXPECT_TRUE(resume->data.is_object() && resume->data.empty());
}

TEST(QmpFakeTest, WaitEventTimesOut) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) { f.Handshake(); });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto t0 = std::chrono::steady_clock::now();
  auto r = (*c)->WaitEventNamed("MIGRATION", milliseconds(100));
  EXPECT_EQ(r.status().code(), Errc::kTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(100));
  EXPECT_TRUE((*c)->status().ok());  // a timeout does not end the session
}

TEST(QmpFakeTest, ErrorReplyCarriesClassAndDesc) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    json req = f.ReadRequest();
    f.Send(json({{"error", {{"class", "GenericError"}, {"desc", "no way"}}}, {"id", req["id"]}})
               .dump() +
           "\n");
    req = f.ReadRequest();
    f.Send(json({{"error", {{"class", "CommandNotFound"}, {"desc", "gone"}}}, {"id", req["id"]}})
               .dump() +
           "\n");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("migrate", {{"uri", "fd:x"}});
  EXPECT_EQ(r.status().code(), Errc::kRefused);
  EXPECT_EQ(r.status().message(), "qmp: migrate failed: GenericError: no way");
  auto r2 = (*c)->Execute("x-dirty-fetch");
  EXPECT_EQ(r2.status().code(), Errc::kUnsupported);
  EXPECT_EQ(r2.status().message(), "qmp: x-dirty-fetch failed: CommandNotFound: gone");
  EXPECT_TRUE((*c)->status().ok());
}

TEST(QmpFakeTest, LateReplyAfterTimeoutIsDiscarded) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    json slow = f.ReadRequest();
    json next = f.ReadRequest();  // the client gave up on `slow` and sent the next one
    f.Reply(slow, "late");
    f.Reply(next, "fresh");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("slow", {}, milliseconds(100));
  EXPECT_EQ(r.status().code(), Errc::kTimeout);
  EXPECT_THAT(r.status().message(), HasSubstr("slow"));
  auto r2 = (*c)->Execute("next");
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(*r2, "fresh");
}

TEST(QmpFakeTest, ArgumentsMustBeAnObject) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) { f.Handshake(); });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->Execute("migrate", json::array({1})).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ((*c)->Execute("migrate", {{"uri", std::string("\xff\xfe")}}).status().code(),
            Errc::kInvalidArgument);  // not UTF-8
  EXPECT_TRUE((*c)->status().ok());
}

TEST(QmpFakeTest, SendFdPassesDescriptorWithGetfd) {
  FakeQemu fake;
  json req;
  int received = -1;
  fake.Run([&](FakeQemu& f) {
    f.Handshake();
    req = f.ReadRequest(&received);
    f.Reply(req, json::object());
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  ASSERT_TRUE((*c)->SendFd("mig", pipefd[1]).ok());
  fake.Join();
  EXPECT_EQ(req["execute"], "getfd");
  EXPECT_EQ(req["arguments"]["fdname"], "mig");
  ASSERT_GE(received, 0);
  // The received descriptor is the pipe's write end.
  ASSERT_EQ(::write(received, "z", 1), 1);
  char ch = 0;
  ASSERT_EQ(::read(pipefd[0], &ch, 1), 1);
  EXPECT_EQ(ch, 'z');
  ::close(received);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

TEST(QmpFakeTest, MalformedJsonEndsSession) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.ReadRequest();
    f.Send("{\"return\": {\"a\": tru}}\n");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("query-status");
  EXPECT_EQ(r.status().code(), Errc::kMalformed);
  EXPECT_EQ((*c)->status().code(), Errc::kMalformed);
  // Every later call reports the same failure instead of reading a desynchronized stream.
  EXPECT_EQ((*c)->Execute("query-status").status().code(), Errc::kMalformed);
  EXPECT_EQ((*c)->WaitEventNamed("STOP", kShort).status().code(), Errc::kMalformed);
}

TEST(QmpFakeTest, GarbageBetweenMessagesIsMalformed) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.Send("hello\n");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->WaitEventNamed("STOP", kLong).status().code(), Errc::kMalformed);
}

TEST(QmpFakeTest, NonObjectGreetingRefused) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) { f.Send("{\"hello\": 1}\n"); });
  auto c = ConnectFake(fake);
  EXPECT_EQ(c.status().code(), Errc::kUnsupported);
  EXPECT_THAT(c.status().message(), HasSubstr("greeting"));
}

TEST(QmpFakeTest, DeepNestingRefused) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.Send("{\"event\": \"X\", \"data\": " + std::string(5000, '[') + "\n");
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->WaitEventNamed("X", kLong).status().code(), Errc::kMalformed);
}

TEST(QmpFakeTest, OversizedMessageRefusedBeforeBufferingItWhole) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.Send("{\"event\": \"BIG\", \"data\": \"");
    std::string chunk(1 << 20, 'x');
    for (int i = 0; i < 64; ++i) f.Send(chunk);  // 64 MiB; stops once the client hangs up
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->WaitEventNamed("BIG", kLong);
  EXPECT_EQ(r.status().code(), Errc::kTooLarge);
  c.value().reset();  // closes the socket, so the fake's send fails and its thread ends
  fake.Join();
}

TEST(QmpFakeTest, LargeMessageUnderCapAccepted) {
  FakeQemu fake;
  const std::string big(4 << 20, 'y');
  fake.Run([&](FakeQemu& f) {
    f.Handshake();
    f.Send(Event("BIG", {{"blob", big}}));
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->WaitEventNamed("BIG", kLong);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->data["blob"].get<std::string>().size(), big.size());
}

TEST(QmpFakeTest, PeerCloseMidMessageIsClosed) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.ReadRequest();
    f.Send("{\"return\": {\"status\": \"run");
    f.CloseServer();
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->Execute("query-status");
  EXPECT_EQ(r.status().code(), Errc::kClosed);
  EXPECT_THAT(r.status().message(), HasSubstr("closed"));
  EXPECT_THAT(r.status().message(), HasSubstr("fake"));
}

TEST(QmpFakeTest, PollEventDrainsWithoutBlocking) {
  FakeQemu fake;
  fake.Run([](FakeQemu& f) {
    f.Handshake();
    f.Send(Event("STOP", json::object()) + Event("RESUME", json::object()));
  });
  auto c = ConnectFake(fake);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  fake.Join();  // both events are in the socket now
  auto t0 = std::chrono::steady_clock::now();
  auto a = (*c)->PollEvent();
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->name, "STOP");
  auto b = (*c)->PollEvent();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->name, "RESUME");
  EXPECT_FALSE((*c)->PollEvent().has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(100));
}

TEST(QmpConnectTest, MissingSocketTimesOutNamingPath) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::string path = dir.File("nobody-here.sock");
  auto t0 = std::chrono::steady_clock::now();
  auto c = QmpClient::Connect(path, milliseconds(150));
  EXPECT_EQ(c.status().code(), Errc::kTimeout);
  EXPECT_THAT(c.status().message(), HasSubstr(path));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(150));
}

TEST(QmpConnectTest, OverlongPathRefused) {
  auto c = QmpClient::Connect("/tmp/" + std::string(200, 'a'), kShort);
  EXPECT_EQ(c.status().code(), Errc::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// QemuProcess.

TEST(QmpQemuProcessTest, MissingBinaryIsNotFound) {
  QemuProcessOptions o;
  o.binary = "sod-no-such-qemu-binary";
  auto p = QemuProcess::Spawn(o);
  EXPECT_EQ(p.status().code(), Errc::kNotFound);
  EXPECT_THAT(p.status().message(), HasSubstr("sod-no-such-qemu-binary"));
}

TEST(QmpQemuProcessTest, BadArgumentExitsWithReasonInLog) {
  TempDir dir;
  QemuProcessOptions o;
  o.args = {"-no-such-option-for-sod"};
  o.log_path = dir.File("qemu.log");
  auto p = QemuProcess::Spawn(o);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  auto e = (*p)->Wait(kLong);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_FALSE(e->signaled);
  EXPECT_NE(e->code, 0);
  EXPECT_THAT(ReadFileText(o.log_path), HasSubstr("no-such-option-for-sod"));
  EXPECT_FALSE((*p)->Running());
  EXPECT_TRUE((*p)->Kill(SIGKILL).ok());  // no-op once reaped
}

TEST(QmpQemuProcessTest, QmpServerArgsDoubleCommas) {
  EXPECT_EQ(QmpServerArgs("/tmp/a,b.sock"),
            (std::vector<std::string>{"-qmp", "unix:/tmp/a,,b.sock,server=on,wait=off"}));
}

// ---------------------------------------------------------------------------------------------
// Real QEMU.

std::vector<std::string> BaseQemuArgs() {
  return {"-machine", "q35",  "-accel", "tcg", "-nodefaults", "-nographic",
          "-display", "none", "-S",     "-m",  "64"};
}

// One paused QEMU with a QMP socket, killed when the test ends.
struct QemuUnderTest {
  std::unique_ptr<QemuProcess> process;
  std::unique_ptr<QmpClient> qmp;
  std::string log_path;
};

class QmpRealQemuTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  void TearDown() override {
    // QmpClients first (closing sockets), then QemuProcess destructors SIGKILL and reap.
    for (auto& q : qemus_) q.qmp.reset();
    qemus_.clear();
  }

  // Starts QEMU with BaseQemuArgs() + `extra` and connects QMP. Returns its index in qemus_.
  QemuUnderTest* Start(const std::string& tag, std::vector<std::string> extra = {}) {
    QemuProcessOptions o;
    o.args = BaseQemuArgs();
    o.args.insert(o.args.end(), extra.begin(), extra.end());
    std::string sock = dir_.File(tag + ".qmp");
    auto qmp_args = QmpServerArgs(sock);
    o.args.insert(o.args.end(), qmp_args.begin(), qmp_args.end());
    o.log_path = dir_.File(tag + ".log");
    auto p = QemuProcess::Spawn(o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return nullptr;
    QemuUnderTest q;
    q.process = std::move(*p);
    q.log_path = o.log_path;
    auto c = QmpClient::Connect(sock, kLong);
    EXPECT_TRUE(c.ok()) << c.status().ToString() << "\nQEMU log:\n" << ReadFileText(o.log_path);
    if (!c.ok()) return nullptr;
    q.qmp = std::move(*c);
    qemus_.push_back(std::move(q));
    return &qemus_.back();
  }

  static std::string RunState(QmpClient& qmp) {
    auto r = qmp.Execute("query-status");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->value("status", "?") : "error";
  }

  TempDir dir_;
  std::deque<QemuUnderTest> qemus_;
};

TEST_F(QmpRealQemuTest, ConnectNegotiatesAndReportsPaused) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->qmp->version().major, 7);
  EXPECT_EQ(q->qmp->version().minor, 2);
  auto st = q->qmp->Execute("query-status");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)["running"], false);
  EXPECT_EQ((*st)["status"], "prelaunch");  // -S before any `cont`
}

TEST_F(QmpRealQemuTest, ContResumesAndStopStops) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  ASSERT_TRUE(q->qmp->Execute("cont").ok());
  auto resume = q->qmp->WaitEventNamed("RESUME", kLong);
  ASSERT_TRUE(resume.ok()) << resume.status().ToString();
  EXPECT_GT(resume->timestamp, 1.6e9);
  EXPECT_EQ(RunState(*q->qmp), "running");

  ASSERT_TRUE(q->qmp->Execute("stop").ok());
  auto stop = q->qmp->WaitEventNamed("STOP", kLong);
  ASSERT_TRUE(stop.ok()) << stop.status().ToString();
  EXPECT_GE(stop->timestamp, resume->timestamp);
  EXPECT_EQ(RunState(*q->qmp), "paused");
}

TEST_F(QmpRealQemuTest, UnknownCommandGivesQemuClassAndDesc) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  auto r = q->qmp->Execute("sod-no-such-command");
  EXPECT_EQ(r.status().code(), Errc::kUnsupported);
  EXPECT_THAT(r.status().message(),
              HasSubstr("qmp: sod-no-such-command failed: CommandNotFound: "));
  EXPECT_THAT(r.status().message(), HasSubstr("has not been found"));

  auto m = q->qmp->Execute("migrate", {{"uri", "fd:sod-unknown-fd"}});
  EXPECT_EQ(m.status().code(), Errc::kRefused);
  EXPECT_THAT(m.status().message(), HasSubstr("qmp: migrate failed: GenericError: "));
  EXPECT_THAT(m.status().message(), HasSubstr("sod-unknown-fd"));

  // The session is still fine.
  EXPECT_EQ(RunState(*q->qmp), "prelaunch");
}

TEST_F(QmpRealQemuTest, GetfdAndClosefd) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  Status s = q->qmp->SendFd("mig", sp[0]);
  ::close(sp[0]);
  ::close(sp[1]);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto c = q->qmp->Execute("closefd", {{"fdname", "mig"}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto again = q->qmp->Execute("closefd", {{"fdname", "mig"}});
  EXPECT_EQ(again.status().code(), Errc::kRefused);
  EXPECT_THAT(again.status().message(), HasSubstr("GenericError"));
}

TEST_F(QmpRealQemuTest, KilledQemuIsClosedNotAHang) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  ASSERT_TRUE(q->process->Kill(SIGKILL).ok());
  auto e = q->process->Wait(kLong);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_TRUE(e->signaled);
  EXPECT_EQ(e->code, SIGKILL);
  auto r = q->qmp->Execute("query-status", {}, kLong);
  EXPECT_EQ(r.status().code(), Errc::kClosed) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(".qmp"));
}

TEST_F(QmpRealQemuTest, KilledWhileWaitingForEventIsClosedPromptly) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  pid_t pid = q->process->pid();
  std::thread killer([pid] {
    std::this_thread::sleep_for(milliseconds(200));
    ::kill(pid, SIGKILL);
  });
  auto t0 = std::chrono::steady_clock::now();
  auto r = q->qmp->WaitEventNamed("MIGRATION", milliseconds(60000));
  killer.join();
  EXPECT_EQ(r.status().code(), Errc::kClosed) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(10000));
}

TEST_F(QmpRealQemuTest, QuitEndsProcessAndSession) {
  auto* q = Start("vm");
  ASSERT_NE(q, nullptr);
  auto r = q->qmp->Execute("quit");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto e = q->process->Wait(kLong);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_FALSE(e->signaled);
  EXPECT_EQ(e->code, 0);
  EXPECT_EQ(q->qmp->Execute("query-status").status().code(), Errc::kClosed);
}

// Migration over a socketpair between two real QEMUs, both ends handed over with getfd.
enum class SourceState { kPrelaunch, kPaused, kRunning };

struct MigrationCase {
  const char* name;
  SourceState source;            // prelaunch: never continued; paused: cont + stop; running: cont
  bool pause_before_switchover;  // source: pause-before-switchover + migrate-continue
  const char* dst_state;         // destination (started with -S) run state afterwards
};

class QmpMigrationTest : public QmpRealQemuTest,
                         public ::testing::WithParamInterface<MigrationCase> {};

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

// Collects events from `qmp` until a MIGRATION event reaches a final status; answers
// pre-switchover with migrate-continue. Returns the MIGRATION statuses in order.
std::vector<std::string> FollowMigration(QmpClient& qmp, std::vector<QmpEvent>& events) {
  std::vector<std::string> statuses;
  for (;;) {
    auto ev = qmp.WaitEvent([](const QmpEvent&) { return true; }, kLong);
    EXPECT_TRUE(ev.ok()) << ev.status().ToString();
    if (!ev.ok()) return statuses;
    events.push_back(*ev);
    if (ev->name != "MIGRATION") continue;
    std::string st = ev->data.value("status", "");
    statuses.push_back(st);
    if (st == "pre-switchover") {
      auto mq = qmp.Execute("query-migrate");
      EXPECT_TRUE(mq.ok()) << mq.status().ToString();
      if (mq.ok()) {
        EXPECT_EQ((*mq)["status"], "pre-switchover");
      }
      auto c = qmp.Execute("migrate-continue", {{"state", "pre-switchover"}});
      EXPECT_TRUE(c.ok()) << c.status().ToString();
    }
    if (st == "completed" || st == "failed" || st == "cancelled") return statuses;
  }
}

TEST_P(QmpMigrationTest, MigratesOverFdPair) {
  const MigrationCase& mc = GetParam();
  auto* src = Start("src");
  ASSERT_NE(src, nullptr);
  auto* dst = Start("dst", {"-incoming", "defer"});
  ASSERT_NE(dst, nullptr);
  EXPECT_EQ(RunState(*dst->qmp), "inmigrate");

  if (mc.source != SourceState::kPrelaunch) {
    ASSERT_TRUE(src->qmp->Execute("cont").ok());
    ASSERT_TRUE(src->qmp->WaitEventNamed("RESUME", kLong).ok());
  }
  if (mc.source == SourceState::kPaused) {
    ASSERT_TRUE(src->qmp->Execute("stop").ok());
    ASSERT_TRUE(src->qmp->WaitEventNamed("STOP", kLong).ok());
  }
  const std::string src_state_before = RunState(*src->qmp);

  json src_caps = json::array({{{"capability", "events"}, {"state", true}}});
  if (mc.pause_before_switchover) {
    src_caps.push_back({{"capability", "pause-before-switchover"}, {"state", true}});
  }
  auto r = src->qmp->Execute("migrate-set-capabilities", {{"capabilities", src_caps}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  r = dst->qmp->Execute(
      "migrate-set-capabilities",
      {{"capabilities", json::array({{{"capability", "events"}, {"state", true}}})}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();

  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  Status s = dst->qmp->SendFd("mig", sp[1]);
  Status s2 = src->qmp->SendFd("mig", sp[0]);
  ::close(sp[0]);
  ::close(sp[1]);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(s2.ok()) << s2.ToString();

  r = dst->qmp->Execute("migrate-incoming", {{"uri", "fd:mig"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  r = src->qmp->Execute("migrate", {{"uri", "fd:mig"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();

  std::vector<QmpEvent> src_events, dst_events;
  std::vector<std::string> src_statuses = FollowMigration(*src->qmp, src_events);
  ASSERT_FALSE(src_statuses.empty());
  ASSERT_EQ(src_statuses.back(), "completed") << "src log:\n" << ReadFileText(src->log_path);
  std::vector<std::string> dst_statuses = FollowMigration(*dst->qmp, dst_events);

  std::vector<std::string> src_names;
  int passes = 0;
  for (const auto& e : src_events) {
    src_names.push_back(e.name);
    if (e.name == "MIGRATION_PASS") ++passes;
  }
  auto mq = src->qmp->Execute("query-migrate");
  ASSERT_TRUE(mq.ok()) << mq.status().ToString();
  EXPECT_EQ((*mq)["status"], "completed");

  // Both run states settle just after the "completed" events (QEMU 7.2 sets them afterwards in
  // a bottom half): the source can still say "finish-migrate", the destination "inmigrate".
  auto settled = [this](QmpClient& qmp, const char* transient) {
    std::string st = RunState(qmp);
    for (int i = 0; i < 250 && st == transient; ++i) {
      std::this_thread::sleep_for(milliseconds(20));
      st = RunState(qmp);
    }
    return st;
  };
  const std::string src_state_after = settled(*src->qmp, "finish-migrate");
  const std::string dst_state = settled(*dst->qmp, "inmigrate");
  std::cout << "[" << mc.name << "] src before=" << src_state_before
            << " src events=" << Join(src_names) << " src MIGRATION=" << Join(src_statuses)
            << " dst MIGRATION=" << Join(dst_statuses) << " src after=" << src_state_after
            << " dst after=" << dst_state << "\n";

  // QEMU 7.2: "device" appears only with pause-before-switchover (after migrate-continue).
  std::vector<std::string> expected = {"setup", "active"};
  if (mc.pause_before_switchover) {
    expected.push_back("pre-switchover");
    expected.push_back("device");
  }
  expected.push_back("completed");
  EXPECT_EQ(src_statuses, expected);
  EXPECT_EQ(dst_statuses, (std::vector<std::string>{"setup", "active", "completed"}));
  EXPECT_GE(passes, 1);
  EXPECT_EQ(src_state_after, "postmigrate");
  EXPECT_EQ(dst_state, mc.dst_state);
}

// A stopped source stays stopped at the destination (QEMU sends the run state in the stream);
// a running one arrives "paused" because the destination runs with -S.
INSTANTIATE_TEST_SUITE_P(
    Modes, QmpMigrationTest,
    ::testing::Values(
        MigrationCase{"Prelaunch", SourceState::kPrelaunch, false, "prelaunch"},
        MigrationCase{"PrelaunchPauseBeforeSwitchover", SourceState::kPrelaunch, true, "prelaunch"},
        MigrationCase{"PausedPauseBeforeSwitchover", SourceState::kPaused, true, "paused"},
        MigrationCase{"Running", SourceState::kRunning, false, "paused"},
        MigrationCase{"RunningPauseBeforeSwitchover", SourceState::kRunning, true, "paused"}),
    [](const ::testing::TestParamInfo<MigrationCase>& info) { return info.param.name; });

}  // namespace
}  // namespace sod
