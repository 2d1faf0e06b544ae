// End-to-end secure migration of a real QEMU guest (TCG) between two hosts in this process,
// over TLS on 127.0.0.1: the guest keeps running at the destination, its heartbeat continues, its
// memory pattern survives, and the protocol's RAM digest check passed; both hosts hold the same
// doubly signed receipt. Failure cases: refused offer, destination QEMU dying mid-stream, wrong
// peer certificate -- each leaves the VM running at the source and nothing at the destination.
//
// Needs the test guest (scripts/build-guest.sh; the ctest fixture "guest" builds it).
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <future>
#include <regex>
#include <thread>

#include "migrate/migration_destination.h"
#include "migrate/migration_source.h"
#include "migrate/pki.h"
#include "migrate/receipt.h"
#include "migrate/session.h"
#include "migrate/vm.h"

namespace sod {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string GuestDir() {
  const char* d = std::getenv("SOD_GUEST_DIR");
  return d ? d : "/var/cache/sod/guest";
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Last heartbeat counter in a serial log, -1 if none.
long LastHeartbeat(const std::string& serial) {
  static const std::regex hb("SOD-HB ([0-9]+)");
  long last = -1;
  std::string text = Slurp(serial);
  for (std::sregex_iterator it(text.begin(), text.end(), hb), end; it != end; ++it)
    last = std::stol((*it)[1]);
  return last;
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return cond();
}

struct Host {
  std::string id;
  std::unique_ptr<TlsContext> client, server;
  std::unique_ptr<HostSigner> signer;
  MemoryOutcomeLedger ledger;
  fs::path dir;
};

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(GuestDir() + "/initrd.img")) GTEST_SKIP() << "no test guest in " << GuestDir();
    root_ = fs::temp_directory_path() / ("sod-migration-test-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    ASSERT_TRUE(CreateCa((root_ / "pki").string(), {}).ok());
    for (Host* h : {&a_, &b_}) {
      h->id = h == &a_ ? "hosta" : "hostb";
      h->dir = root_ / h->id;
      ASSERT_TRUE(IssueHostCert((root_ / "pki").string(), h->id, (root_ / "pki").string(), {}).ok());
      TlsConfig c{(root_ / "pki/ca.crt").string(), (root_ / "pki" / (h->id + ".crt")).string(),
                  (root_ / "pki" / (h->id + ".key")).string()};
      h->client = std::move(TlsContext::Create(c, TlsRole::kClient)).value();
      h->server = std::move(TlsContext::Create(c, TlsRole::kServer)).value();
      h->signer = std::move(HostSigner::Load(c.key_file)).value();
    }
  }
  void TearDown() override {
    for (auto* vm : {&source_vm_, &dest_vm_})
      if (*vm) (*vm)->Kill();
    if (!root_.empty() && !HasFailure()) fs::remove_all(root_);
  }

  VmSpec Spec(const std::string& extra) {
    VmSpec s;
    s.name = "guest1";
    s.memory_mb = 256;
    s.kernel = fs::exists(GuestDir() + "/vmlinux") ? GuestDir() + "/vmlinux" : GuestDir() + "/vmlinuz";
    s.initrd = GuestDir() + "/initrd.img";
    s.append = Slurp(GuestDir() + "/cmdline");
    while (!s.append.empty() && s.append.back() == '\n') s.append.pop_back();
    s.append += " sod.hb=1 sod.pattern_mb=32 sod.pattern_interval=1 " + extra;
    return s;
  }

  void BootSource(const std::string& extra = "sod.dirty_mb=64 sod.dirty_rate=16") {
    spec_ = Spec(extra);
    auto vm = Vm::Launch(spec_, MakeVmPaths((a_.dir / "vm").string(), a_.id, spec_, 0),
                         VmLaunchMode::kRun);
    ASSERT_TRUE(vm.ok()) << vm.status().ToString();
    source_vm_ = std::move(*vm);
    ASSERT_TRUE(WaitFor([&] { return Slurp(source_vm_->paths().serial_log).find("SOD-READY") !=
                                      std::string::npos; },
                        120s))
        << Slurp(source_vm_->paths().serial_log);
  }

  DestinationContext DestContext() {
    DestinationContext ctx;
    ctx.host_id = b_.id;
    ctx.signer = b_.signer.get();
    ctx.ledger = &b_.ledger;
    ctx.step_timeout = 30s;
    ctx.launch_incoming = [this](const VmSpec& spec) -> Result<std::unique_ptr<Vm>> {
      return Vm::Launch(spec, MakeVmPaths((b_.dir / "vm").string(), b_.id, spec, 0),
                        VmLaunchMode::kIncoming);
    };
    return ctx;
  }

  struct Outcome {
    SourceReport source;
    DestinationReport dest;
    Status connect;
  };

  Outcome Migrate(DestinationContext ctx, const std::string& expect_peer = "hostb",
                  SourceOptions opts = {}) {
    SessionOptions so;
    so.data_channels = 2;
    so.timeout = 30s;
    auto listener = SessionListener::Listen(*b_.server, "127.0.0.1", 0, so);
    EXPECT_TRUE(listener.ok());
    Outcome out;
    auto dest = std::async(std::launch::async, [&]() {
      auto s = (*listener)->Accept(accept_timeout_);
      if (!s.ok()) {
        DestinationReport r;
        r.error = s.status();
        return r;
      }
      return ServeSession(**s, ctx);
    });
    auto session = Session::Connect(*a_.client, "127.0.0.1", (*listener)->port(), expect_peer, so);
    if (!session.ok()) {
      out.connect = session.status();
    } else {
      opts.host_id = a_.id;
      out.source = MigrateOut(**session, *source_vm_, *a_.signer, opts,
                              [&](const MigrationProgress& p) { progress_.push_back(p); });
    }
    out.dest = dest.get();
    if (out.dest.vm) dest_vm_ = std::move(out.dest.vm);
    std::cout << "  source: " << SourceOutcomeName(out.source.outcome) << " ("
              << (out.connect.ok() ? out.source.error.ToString() : out.connect.ToString())
              << ")\n  destination: " << Name(out.dest.final_state) << " ("
              << out.dest.error.ToString() << ")\n";
    return out;
  }

  void ExpectSourceStillRunsAndNothingAtDestination() {
    ASSERT_TRUE(source_vm_);
    auto state = source_vm_->RunState();
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    EXPECT_EQ(*state, "running");
    long hb = LastHeartbeat(source_vm_->paths().serial_log);
    EXPECT_TRUE(WaitFor([&] { return LastHeartbeat(source_vm_->paths().serial_log) > hb + 3; }, 10s))
        << "the source guest keeps running";
    EXPECT_FALSE(dest_vm_) << "no VM at the destination";
    std::error_code ec;
    for (auto& e : fs::directory_iterator("/dev/shm", ec))
      EXPECT_EQ(e.path().filename().string().find("sod-hostb-"), std::string::npos)
          << "destination memory file left behind: " << e.path();
  }

  fs::path root_;
  Host a_, b_;
  VmSpec spec_;
  std::unique_ptr<Vm> source_vm_, dest_vm_;
  std::vector<MigrationProgress> progress_;
  std::chrono::milliseconds accept_timeout_ = 20s;
};

TEST_F(MigrationTest, RunningGuestMovesWithItsMemoryAndHeartbeat) {
  BootSource();
  std::this_thread::sleep_for(2s);
  const long hb_before = LastHeartbeat(source_vm_->paths().serial_log);
  ASSERT_GT(hb_before, 0);
  const std::string source_serial = source_vm_->paths().serial_log;

  Outcome o = Migrate(DestContext());
  ASSERT_TRUE(o.connect.ok()) << o.connect.ToString();
  ASSERT_EQ(o.source.outcome, SourceOutcome::kCommitted) << o.source.error.ToString();
  EXPECT_TRUE(o.source.error.ok()) << o.source.error.ToString();
  ASSERT_TRUE(o.dest.error.ok()) << o.dest.error.ToString();
  EXPECT_EQ(o.source.final_state, SourceState::kCommitted);
  EXPECT_EQ(o.dest.final_state, DestinationState::kCommitted);
  ASSERT_TRUE(dest_vm_);

  // The source QEMU is gone; the destination runs the guest.
  EXPECT_FALSE(source_vm_->Alive());
  source_vm_.reset();
  auto state = dest_vm_->RunState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(*state, "running");
  // The heartbeat continues from where the source left it (not from 0: no reboot).
  const long hb_last_source = LastHeartbeat(source_serial);
  ASSERT_TRUE(WaitFor([&] { return LastHeartbeat(dest_vm_->paths().serial_log) > hb_last_source + 5; },
                      20s))
      << "destination serial:\n" << Slurp(dest_vm_->paths().serial_log);
  const std::string dest_serial = Slurp(dest_vm_->paths().serial_log);
  static const std::regex first_hb("SOD-HB ([0-9]+)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(dest_serial, m, first_hb));
  EXPECT_GE(std::stol(m[1]), hb_last_source) << "the guest did not restart";
  EXPECT_LE(std::stol(m[1]), hb_last_source + 50) << "the heartbeat continues where it was";
  // The guest's own check of its memory pattern keeps passing at the destination.
  ASSERT_TRUE(WaitFor([&] { return Slurp(dest_vm_->paths().serial_log).find("SOD-PATTERN ok") !=
                                   std::string::npos; },
                      10s));
  EXPECT_EQ(Slurp(dest_vm_->paths().serial_log).find("BAD"), std::string::npos);

  // One receipt, signed by both, the same on both sides, with the RAM digest checked.
  ASSERT_TRUE(o.source.receipt && o.dest.receipt);
  EXPECT_EQ(o.source.receipt->receipt, o.dest.receipt->receipt);
  const Receipt& r = o.source.receipt->receipt;
  EXPECT_TRUE(r.ram_digest_present);
  EXPECT_EQ(r.source_host, "hosta");
  EXPECT_EQ(r.destination_host, "hostb");
  EXPECT_GT(r.stream_bytes, 32u << 20);
  EXPECT_GT(r.wire_bytes, r.stream_bytes);
  EXPECT_GE(r.rounds, 2u);
  EXPECT_TRUE(VerifyReceiptSignature(b_.signer->public_key_der(), r, ReceiptRole::kDestination,
                                     o.source.receipt->destination_signature)
                  .ok());
  EXPECT_TRUE(VerifyReceiptSignature(a_.signer->public_key_der(), r, ReceiptRole::kSource,
                                     o.dest.receipt->source_signature)
                  .ok());
  EXPECT_EQ(b_.ledger.Lookup(r.migration_id), MigrationOutcome::kCommitted);
  EXPECT_GT(o.source.downtime_ms, 0);
  EXPECT_FALSE(progress_.empty());
  EXPECT_EQ(progress_.back().phase, "done");
}

TEST_F(MigrationTest, RefusedOfferLeavesTheVmRunningAtTheSource) {
  BootSource("sod.dirty_mb=0");
  DestinationContext ctx = DestContext();
  ctx.admit = [](const OfferMsg&, const VmSpec&, const std::string& peer) {
    return Error(Errc::kRefused, "host " + peer + " may not send VMs here");
  };
  Outcome o = Migrate(ctx);
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted);
  EXPECT_EQ(o.source.error.code(), Errc::kAborted) << o.source.error.ToString();
  EXPECT_NE(o.source.error.message().find("may not send VMs here"), std::string::npos)
      << "the source reports the destination's reason: " << o.source.error.ToString();
  EXPECT_EQ(o.dest.error.code(), Errc::kRefused);
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationTest, DestinationQemuDyingMidStreamLeavesTheVmAtTheSource) {
  BootSource("sod.dirty_mb=64 sod.dirty_rate=32");
  DestinationContext ctx = DestContext();
  auto launch = ctx.launch_incoming;
  std::thread killer;
  ctx.launch_incoming = [&](const VmSpec& spec) -> Result<std::unique_ptr<Vm>> {
    auto vm = launch(spec);
    if (vm.ok()) {
      pid_t pid = (*vm)->pid();
      killer = std::thread([pid] {
        std::this_thread::sleep_for(1500ms);
        ::kill(pid, SIGKILL);
      });
    }
    return vm;
  };
  // Throttled to 32 MiB/s, the 256 MiB guest needs ~8 s: the kill at 1.5 s lands mid-stream.
  SourceOptions slow;
  slow.max_bandwidth = 32u << 20;
  Outcome o = Migrate(ctx, "hostb", slow);
  if (killer.joinable()) killer.join();
  EXPECT_EQ(o.source.outcome, SourceOutcome::kAborted) << o.source.error.ToString();
  EXPECT_FALSE(o.source.error.ok());
  EXPECT_FALSE(o.dest.error.ok());
  EXPECT_FALSE(progress_.empty()) << "the stream had started";
  ExpectSourceStillRunsAndNothingAtDestination();
}

TEST_F(MigrationTest, WrongPeerCertificateIsRefusedBeforeAnyVmByte) {
  BootSource("sod.dirty_mb=0");
  accept_timeout_ = 3s;
  Outcome o = Migrate(DestContext(), /*expect_peer=*/"hostc");
  EXPECT_EQ(o.connect.code(), Errc::kAuth) << o.connect.ToString();
  EXPECT_TRUE(progress_.empty()) << "no migration started";
  ExpectSourceStillRunsAndNothingAtDestination();
}

}  // namespace
}  // namespace sod
