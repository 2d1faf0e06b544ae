// sodd's parts that need no QEMU (host/): state files, port ranges, the admin protocol over a real
// unix socket (events, errors, hostile requests), and the migration listener's admission control
// over real TLS sessions on 127.0.0.1.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "host/admin_client.h"
#include "host/admin_ops.h"
#include "host/admin_protocol.h"
#include "host/admin_server.h"
#include "host/event_log.h"
#include "host/forward_ports.h"
#include "host/migration_listener.h"
#include "host/policy_agent.h"
#include "host/state_dir.h"
#include "migrate/pki.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

class HostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path("/tmp") /
           ("sod-host-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  static inline int counter_ = 0;
};

// ---- state dir ---------------------------------------------------------------------------------

using StateDirTest = HostTest;

VmSpec SmallSpec(const std::string& name) {
  VmSpec s;
  s.name = name;
  s.kernel = "/boot/vmlinuz";
  s.guest_port = 22;
  return s;
}

TEST_F(StateDirTest, CreatesPrivateLayoutAndRoundTripsVms) {
  const std::string root = (dir_ / "state").string();
  Result<StateDir> sd = StateDir::Open(root);
  ASSERT_TRUE(sd.ok()) << sd.status().ToString();
  for (const std::string& d : {root, sd->vms_dir(), sd->receipts_dir()}) {
    struct stat st;
    ASSERT_EQ(::stat(d.c_str(), &st), 0) << d;
    EXPECT_EQ(st.st_mode & 0777, 0700u) << d;
  }
  EXPECT_EQ(sd->default_admin_socket(), root + "/sodd.sock");
  EXPECT_EQ(sd->vm_dir("web1"), root + "/vms/web1");

  VmRecord r;
  r.phase = VmPhase::kInDoubt;
  r.pid = 4242;
  r.host_port = 20003;
  r.memory_file = "/dev/shm/sod-hosta-web1-0011223344556677";
  r.migration_id = "m-17";
  r.note = "link died after commit";
  r.updated = "2025-01-31T12:00:00.000Z";
  ASSERT_TRUE(sd->SaveVm(SmallSpec("web1"), r).ok());
  ASSERT_TRUE(sd->SaveVm(SmallSpec("db"), VmRecord{}).ok());
  fs::create_directories(dir_ / "state/vms/Not_A_Vm");  // ignored by ListVms

  Result<std::vector<std::string>> names = sd->ListVms();
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"db", "web1"}));
  Result<VmSpec> spec = sd->LoadSpec("web1");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(*spec, SmallSpec("web1"));
  Result<VmRecord> back = sd->LoadRecord("web1");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, r);
  struct stat st;
  ASSERT_EQ(::stat((root + "/vms/web1/state.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(fs::exists(root + "/vms/web1/state.json.tmp"));

  ASSERT_TRUE(sd->RemoveVm("web1").ok());
  EXPECT_FALSE(fs::exists(sd->vm_dir("web1")));
  EXPECT_TRUE(sd->RemoveVm("web1").ok());
  EXPECT_EQ(sd->LoadRecord("web1").status().code(), Errc::kNotFound);
}

TEST_F(StateDirTest, RelativeRootRefused) {
  EXPECT_EQ(StateDir::Open("relative/state").status().code(), Errc::kInvalidArgument);
}

TEST_F(StateDirTest, SpecFileNamingAnotherVmRefused) {
  Result<StateDir> sd = StateDir::Open((dir_ / "s").string());
  ASSERT_TRUE(sd.ok());
  ASSERT_TRUE(sd->SaveVm(SmallSpec("a"), VmRecord{}).ok());
  fs::create_directories(sd->vm_dir("b"));
  fs::copy_file(sd->vm_dir("a") + "/spec.json", sd->vm_dir("b") + "/spec.json");
  EXPECT_EQ(sd->LoadSpec("b").status().code(), Errc::kInvalidArgument);
}

TEST(VmRecordTest, PhaseNamesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(kLastVmPhase); ++i) {
    auto p = static_cast<VmPhase>(i);
    EXPECT_EQ(VmPhaseFromName(VmPhaseName(p)), p);
  }
  EXPECT_EQ(VmPhaseName(VmPhase::kMigratingOut), "migrating-out");
  EXPECT_EQ(VmPhaseName(VmPhase::kInDoubt), "in-doubt");
  EXPECT_EQ(VmPhaseName(VmPhase::kMigratedAway), "migrated-away");
  EXPECT_FALSE(VmPhaseFromName("Running"));
  EXPECT_TRUE(PhaseHasQemu(VmPhase::kInDoubt));
  EXPECT_FALSE(PhaseHasQemu(VmPhase::kLost));
}

TEST(VmRecordTest, StrictDecoding) {
  const json good = VmRecordToJson(VmRecord{});
  EXPECT_TRUE(VmRecordFromJson(good).ok());
  auto with = [&](const char* k, json v) {
    json j = good;
    j[k] = std::move(v);
    return VmRecordFromJson(j).status().code();
  };
  EXPECT_EQ(with("phase", "sleeping"), Errc::kInvalidArgument);
  EXPECT_EQ(with("phase", 1), Errc::kInvalidArgument);
  EXPECT_EQ(with("pid", -1), Errc::kInvalidArgument);
  EXPECT_EQ(with("pid", "12"), Errc::kInvalidArgument);
  EXPECT_EQ(with("host_port", 70000), Errc::kInvalidArgument);
  EXPECT_EQ(with("extra", true), Errc::kInvalidArgument);
  // The memory file is unlinked during recovery: it must be one of ours.
  EXPECT_EQ(with("memory_file", "/etc/passwd"), Errc::kInvalidArgument);
  json no_phase = good;
  no_phase.erase("phase");
  EXPECT_EQ(VmRecordFromJson(no_phase).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(VmRecordFromJson(json::array()).status().code(), Errc::kInvalidArgument);
}

TEST_F(StateDirTest, EventLogAppendsJsonLines) {
  const std::string path = (dir_ / "events.log").string();
  Result<std::unique_ptr<JsonLinesEventLog>> log = JsonLinesEventLog::Open(path, "hosta");
  ASSERT_TRUE(log.ok());
  EventSink sink = (*log)->Sink();
  sink("vm.started", {{"vm", "a"}});
  sink("vm.stopped", {{"vm", "a"}, {"pid", 7}});
  std::ifstream in(path);
  std::string l1, l2;
  ASSERT_TRUE(std::getline(in, l1) && std::getline(in, l2));
  json e1 = json::parse(l1), e2 = json::parse(l2);
  EXPECT_EQ(e1["kind"], "vm.started");
  EXPECT_EQ(e1["host"], "hosta");
  EXPECT_EQ(e2["data"]["pid"], 7);
  EXPECT_EQ(e1["time"].get<std::string>().size(), 24u);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// ---- ports -------------------------------------------------------------------------------------

TEST(PortRangeTest, Parse) {
  Result<PortRange> r = ParsePortRange("20000-20999");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, 20000);
  EXPECT_EQ(r->last, 20999);
  EXPECT_EQ(PortRangeToString(*r), "20000-20999");
  Result<PortRange> one = ParsePortRange("4000");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->first, 4000);
  EXPECT_EQ(one->last, 4000);
  for (const char* bad :
       {"", "-", "1-", "-5", "0-10", "10-5", "1-65536", "a-b", "1 - 2", "1-2-3"}) {
    EXPECT_EQ(ParsePortRange(bad).status().code(), Errc::kInvalidArgument) << bad;
  }
}

TEST(ForwardPortsTest, HandsOutFreePortsOnly) {
  int blocker = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(blocker, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(blocker, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(blocker, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const uint16_t port = ntohs(a.sin_port);
  ForwardPorts ports({port, port});
  EXPECT_EQ(ports.Allocate().status().code(), Errc::kExhausted) << "bound by another socket";
  ::close(blocker);
  Result<uint16_t> p = ports.Allocate();
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(*p, port);
  EXPECT_TRUE(ports.InUse(port));
  EXPECT_EQ(ports.Allocate().status().code(), Errc::kExhausted) << "already handed out";
  ports.Release(port);
  EXPECT_EQ(*ports.Allocate(), port);
  ports.Release(port);
  ports.Reserve(port);  // a re-adopted VM keeps its port
  EXPECT_EQ(ports.Allocate().status().code(), Errc::kExhausted);
  ports.Reserve(static_cast<uint16_t>(port == 65535 ? 1 : port + 1));  // outside: ignored
  EXPECT_FALSE(ports.InUse(static_cast<uint16_t>(port == 65535 ? 1 : port + 1)));
}

// ---- admin protocol ----------------------------------------------------------------------------

class AdminTest : public HostTest {
 protected:
  void SetUp() override {
    HostTest::SetUp();
    AdminServer::Options o;
    o.socket_path = (dir_ / "admin.sock").string();
    o.max_connections = 4;
    server_ = std::make_unique<AdminServer>(o, nullptr);
    server_->Register("echo", [](const json& req, AdminEvents&) -> Result<json> {
      return json{{"echo", req}};
    });
    server_->Register("count", [](const json& req, AdminEvents& ev) -> Result<json> {
      int n = req.value("n", 0);
      for (int i = 0; i < n; ++i) SOD_RETURN_IF_ERROR(ev.Emit("tick", {{"i", i}}));
      return json{{"counted", n}};
    });
    server_->Register("fail", [](const json&, AdminEvents&) -> Result<json> {
      return Error(Errc::kNotFound, "no VM named x on this host");
    });
    server_->Register("throw", [](const json& req, AdminEvents&) -> Result<json> {
      return json{{"x", req.at("missing").get<int>()}};  // throws
    });
    server_->Register("block", [this](const json&, AdminEvents&) -> Result<json> {
      ++blocked_;
      released_.wait();
      return json::object();
    });
    RegisterMigrationPlaceholders(*server_);
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override {
    if (!released_set_) release_.set_value();
    server_.reset();
    HostTest::TearDown();
  }
  std::unique_ptr<AdminClient> Client() {
    auto c = AdminClient::Connect(server_->socket_path(), 2s);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  // Sends raw bytes and returns the first line of the answer.
  std::string Raw(const std::string& bytes) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, server_->socket_path().c_str());
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    std::string out;
    char c;
    while (::recv(fd, &c, 1, 0) == 1 && c != '\n') out.push_back(c);
    ::close(fd);
    return out;
  }
  std::unique_ptr<AdminServer> server_;
  std::promise<void> release_;
  std::shared_future<void> released_ = release_.get_future().share();
  std::atomic<int> blocked_{0};
  bool released_set_ = false;
};

TEST_F(AdminTest, SocketIsPrivate) {
  struct stat st;
  ASSERT_EQ(::lstat(server_->socket_path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(AdminTest, RequestsEventsAndFinalReplies) {
  auto c = Client();
  ASSERT_TRUE(c);
  Result<json> r = c->Call({{"op", "echo"}, {"x", 1}}, {}, 5s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)["ok"], true);
  EXPECT_EQ((*r)["echo"]["x"], 1);

  std::vector<json> events;
  Result<json> counted = c->Call(
      {{"op", "count"}, {"n", 3}}, [&](const json& e) { events.push_back(e); }, 5s);
  ASSERT_TRUE(counted.ok());
  EXPECT_EQ((*counted)["counted"], 3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2]["event"], "tick");
  EXPECT_EQ(events[2]["i"], 2);

  Result<json> failed = c->Call({{"op", "fail"}}, {}, 5s);
  EXPECT_EQ(failed.status().code(), Errc::kNotFound);
  EXPECT_EQ(failed.status().message(), "no VM named x on this host");

  Result<json> unknown = c->Call({{"op", "frobnicate"}}, {}, 5s);
  EXPECT_EQ(unknown.status().code(), Errc::kUnsupported);
  EXPECT_NE(unknown.status().message().find("frobnicate"), std::string::npos);

  Result<json> threw = c->Call({{"op", "throw"}}, {}, 5s);
  EXPECT_EQ(threw.status().code(), Errc::kInternal);

  Result<json> migrate = c->Call({{"op", "migrate"}, {"name", "a"}}, {}, 5s);
  EXPECT_EQ(migrate.status().code(), Errc::kUnsupported);

  // The connection survived all of that.
  EXPECT_TRUE(c->Call({{"op", "echo"}}, {}, 5s).ok());
}

TEST_F(AdminTest, HostileRequestsGetAnErrorAndTheConnectionCloses) {
  json r1 = json::parse(Raw("this is not json\n"));
  EXPECT_EQ(r1["ok"], false);
  EXPECT_EQ(r1["error"]["code"], "malformed");
  json r2 = json::parse(Raw("[1,2,3]\n"));
  EXPECT_EQ(r2["error"]["code"], "malformed");
  json r3 = json::parse(Raw("{\"op\": 5}\n"));
  EXPECT_EQ(r3["error"]["code"], "malformed");
  json r4 = json::parse(Raw(std::string(kMaxAdminLineBytes + 10, 'x')));
  EXPECT_EQ(r4["error"]["code"], "too-large");
  // Blank lines are ignored; the request after them is served.
  json r5 = json::parse(Raw("\n\n{\"op\":\"echo\"}\n"));
  EXPECT_EQ(r5["ok"], true);
}

TEST_F(AdminTest, ErrorReplyMapping) {
  Status s = Error(Errc::kState, "VM a is held by a migration");
  json reply = AdminErrorReply(s);
  EXPECT_EQ(reply["error"]["code"], "state");
  Status back = AdminReplyStatus(reply);
  EXPECT_EQ(back.code(), Errc::kState);
  EXPECT_EQ(back.message(), s.message());
  EXPECT_TRUE(AdminReplyStatus({{"ok", true}}).ok());
  EXPECT_EQ(AdminReplyStatus({{"ok", "yes"}}).code(), Errc::kMalformed);
  EXPECT_EQ(AdminReplyStatus({{"ok", false}, {"error", {{"code", "bogus"}}}}).code(),
            Errc::kInternal);
  EXPECT_EQ(ErrcFromName("not-found"), Errc::kNotFound);
  EXPECT_FALSE(ErrcFromName("nope"));
}

TEST_F(AdminTest, TooManyConnectionsAreRefused) {
  std::vector<std::unique_ptr<AdminClient>> clients;
  std::vector<std::future<Result<json>>> calls;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(Client());
    ASSERT_TRUE(clients.back());
    calls.push_back(std::async(std::launch::async, [c = clients.back().get()] {
      return c->Call({{"op", "block"}}, {}, 0ms);
    }));
  }
  for (int i = 0; i < 200 && blocked_.load() < 4; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(blocked_.load(), 4);
  auto extra = Client();
  ASSERT_TRUE(extra);
  Result<json> refused = extra->Call({{"op", "echo"}}, {}, 5s);
  EXPECT_EQ(refused.status().code(), Errc::kRefused) << refused.status().ToString();
  release_.set_value();
  released_set_ = true;
  for (auto& f : calls) EXPECT_TRUE(f.get().ok());
}

TEST_F(AdminTest, UnreachableIsToldApart) {
  Result<std::unique_ptr<AdminClient>> none =
      AdminClient::Connect((dir_ / "nobody.sock").string(), 1s);
  ASSERT_FALSE(none.ok());
  EXPECT_TRUE(IsSoddUnreachable(none.status())) << none.status().ToString();
  EXPECT_EQ(none.status().code(), Errc::kNotFound);
  EXPECT_FALSE(IsSoddUnreachable(Error(Errc::kNotFound, "no VM named a on this host")));
}

TEST_F(AdminTest, SecondServerOnALiveSocketRefusedStaleSocketReplaced) {
  AdminServer::Options o;
  o.socket_path = server_->socket_path();
  AdminServer second(o, nullptr);
  EXPECT_EQ(second.Start().code(), Errc::kState);
  server_->Stop();
  EXPECT_FALSE(fs::exists(o.socket_path));
  // A stale socket file (no server) is replaced.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, o.socket_path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(fd);
  AdminServer third(o, nullptr);
  EXPECT_TRUE(third.Start().ok());
}

TEST_F(AdminTest, RequestHelpersAreStrict) {
  json req = {{"op", "vm.stop"}, {"name", "a"}, {"forse", true}};
  EXPECT_EQ(CheckRequestKeys(req, {"name", "force"}).code(), Errc::kInvalidArgument);
  EXPECT_TRUE(CheckRequestKeys(req, {"name", "forse"}).ok());
  EXPECT_EQ(*RequestString(req, "name"), "a");
  EXPECT_EQ(RequestString(req, "forse").status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(RequestString(req, "missing").status().code(), Errc::kInvalidArgument);
}

// ---- migration listener ------------------------------------------------------------------------

class ListenerTest : public HostTest {
 protected:
  void SetUp() override {
    HostTest::SetUp();
    ASSERT_TRUE(CreateCa(dir_.string(), {}).ok());
    for (const char* h : {"hosta", "hostb"}) {
      ASSERT_TRUE(IssueHostCert(dir_.string(), h, dir_.string(), {}).ok());
    }
    server_ctx_ = Ctx("hostb", TlsRole::kServer);
    client_ctx_ = Ctx("hosta", TlsRole::kClient);
  }
  std::unique_ptr<TlsContext> Ctx(const std::string& host, TlsRole role) {
    TlsConfig c{(dir_ / "ca.crt").string(), (dir_ / (host + ".crt")).string(),
                (dir_ / (host + ".key")).string()};
    auto ctx = TlsContext::Create(c, role);
    EXPECT_TRUE(ctx.ok()) << ctx.status().ToString();
    return std::move(ctx).value();
  }
  Result<std::unique_ptr<Session>> Connect(uint16_t port) {
    SessionOptions o;
    o.data_channels = 1;
    o.timeout = 5s;
    return Session::Connect(*client_ctx_, "127.0.0.1", port, "hostb", o);
  }
  std::unique_ptr<TlsContext> server_ctx_;
  std::unique_ptr<TlsContext> client_ctx_;
};

TEST_F(ListenerTest, AdmitsUpToTheLimitAndTellsTheRestBusy) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> handled{0};
  std::string seen_peer;
  std::mutex mu;
  MigrationListener::Options o;
  o.session.data_channels = 1;
  o.max_sessions = 1;
  auto listener = MigrationListener::Start(
      *server_ctx_, o,
      [&](std::unique_ptr<Session> s) {
        {
          std::lock_guard<std::mutex> lock(mu);
          seen_peer = s->peer_host_id();
        }
        ++handled;
        released.wait();
        s->SendAbort(Error(Errc::kAborted, "test done"));
      },
      nullptr);
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  const uint16_t port = (*listener)->port();

  auto first = Connect(port);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  for (int i = 0; i < 500 && handled.load() < 1; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(handled.load(), 1);
  EXPECT_EQ((*listener)->active_sessions(), 1u);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(seen_peer, "hosta");
  }

  auto second = Connect(port);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  Result<ControlMsg> busy = (*second)->ReceiveControl();
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.status().code(), Errc::kAborted) << busy.status().ToString();
  EXPECT_NE(busy.status().message().find("busy"), std::string::npos) << busy.status().ToString();
  EXPECT_EQ((*listener)->refused_sessions(), 1u);

  release.set_value();
  for (int i = 0; i < 500 && (*listener)->active_sessions() > 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ((*listener)->active_sessions(), 0u);
  auto third = Connect(port);
  ASSERT_TRUE(third.ok());
  for (int i = 0; i < 500 && handled.load() < 2; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(handled.load(), 2);
  EXPECT_EQ((*listener)->accepted_sessions(), 2u);
  (*listener)->Stop();
}

TEST_F(ListenerTest, PlaceholderHandlerTellsThePeerWhy) {
  MigrationListener::Options o;
  o.session.data_channels = 1;
  auto listener =
      MigrationListener::Start(*server_ctx_, o, LoggingSessionHandler(nullptr), nullptr);
  ASSERT_TRUE(listener.ok());
  auto s = Connect((*listener)->port());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Result<ControlMsg> m = (*s)->ReceiveControl();
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), Errc::kAborted);
  EXPECT_NE(m.status().message().find("no migration engine"), std::string::npos)
      << m.status().ToString();
}

// ---- the security request of a VM spec, as sodd resolves it (host/policy_agent.h) ----

policy::PackageCatalog ShippedPackages() {
  const std::filesystem::path file = std::filesystem::path(SOD_POLICY_DIR) / "packages.json";
  auto c = policy::PackageCatalog::LoadFile(file);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : policy::PackageCatalog{};
}

TEST(ResolveSecurityTest, NoRequestMeansNothingRequested) {
  auto m = ResolveSecurity(ShippedPackages(), "");
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->empty());
}

TEST(ResolveSecurityTest, OptionsAndPackagesResolve) {
  const policy::PackageCatalog p = ShippedPackages();
  auto b = ResolveSecurity(p, R"({"version": 1, "options": [1, 2], "protect": "CI"})");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->ToString(), "other-vms:CI hypervisor:CI");
  auto med = ResolveSecurity(p, R"({"version": 1, "package": "online-medical-records"})");
  ASSERT_TRUE(med.ok()) << med.status().ToString();
  EXPECT_EQ(med->options().size(), 4u);
}

TEST(ResolveSecurityTest, BadRequestsAreRefusedByName) {
  const policy::PackageCatalog p = ShippedPackages();
  auto unknown = ResolveSecurity(p, R"({"version": 1, "package": "nope"})");
  EXPECT_EQ(unknown.status().code(), Errc::kNotFound);
  auto rule = ResolveSecurity(p, R"({"version": 1, "options": [2, 6], "protect": "CI"})");
  EXPECT_EQ(rule.status().code(), Errc::kInvalidArgument);
  EXPECT_NE(rule.status().message().find("excludes option 2"), std::string::npos);
  auto eight = ResolveSecurity(p, R"({"version": 1, "options": [8], "protect": "CI"})");
  EXPECT_FALSE(eight.ok());
  EXPECT_NE(eight.status().message().find("unknown option 8"), std::string::npos);
  EXPECT_FALSE(ResolveSecurity(p, R"({"version": 1, "package": "a", "options": [1]})").ok());
  EXPECT_EQ(ResolveSecurity(p, "not json").status().code(), Errc::kMalformed);
}

// policy set: the request is written to spec.json with the VM (and read back by a restarted
// sodd); VmSpecToJson carries it as an object.
TEST_F(StateDirTest, SecurityRequestIsKeptInTheSpecFile) {
  Result<StateDir> sd = StateDir::Open((dir_ / "state").string());
  ASSERT_TRUE(sd.ok());
  VmSpec spec = SmallSpec("web1");
  spec.security = R"({"options":[1,2],"protect":"CI","version":1})";
  ASSERT_TRUE(sd->SaveVm(spec, VmRecord{}).ok());
  Result<VmSpec> back = sd->LoadSpec("web1");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->security, spec.security);
}

TEST(OrderRelocationsTest, UntrustedHostThenRequirementThenMovingTarget) {
  using C = RelocationClass;
  std::vector<PendingRelocation> moves = {
      {"mtd-big", C::kMovingTarget, 8, 4096, "h2", ""},
      {"req-small", C::kRequirementChanged, 2, 128, "h2", ""},
      {"drop-small", C::kUntrustedHost, 2, 128, "h3", ""},
      {"req-big", C::kRequirementChanged, 6, 128, "h2", ""},
      {"drop-big", C::kUntrustedHost, 4, 128, "h3", ""},
  };
  OrderRelocations(moves);
  std::vector<std::string> order;
  for (const auto& m : moves) order.push_back(m.vm);
  EXPECT_EQ(order, (std::vector<std::string>{"drop-big", "drop-small", "req-big", "req-small",
                                             "mtd-big"}));
}

TEST(OrderRelocationsTest, TiesByMemoryThenName) {
  using C = RelocationClass;
  std::vector<PendingRelocation> moves = {
      {"b", C::kUntrustedHost, 2, 256, "", ""},
      {"a", C::kUntrustedHost, 2, 256, "", ""},
      {"c", C::kUntrustedHost, 2, 512, "", ""},
  };
  OrderRelocations(moves);
  EXPECT_EQ(moves[0].vm, "c");
  EXPECT_EQ(moves[1].vm, "a");
  EXPECT_EQ(moves[2].vm, "b");
  EXPECT_EQ(RelocationClassName(C::kUntrustedHost), "untrusted-host");
  EXPECT_EQ(RelocationClassName(C::kRequirementChanged), "requirement-changed");
  EXPECT_EQ(RelocationClassName(C::kMovingTarget), "moving-target");
}

}  // namespace
}  // namespace sod
