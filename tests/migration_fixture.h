// The fixture of the end-to-end migration tests (tests/migration_test.cc, tests/tamper_test.cc):
// two hosts in this process ("hosta" the source, "hostb" the destination) with a fresh cluster
// PKI, the test guest booted under QEMU at the source, and one migration over TLS on 127.0.0.1.
// Header-only, tests only.
//
// Needs the test guest (scripts/build-guest.sh; the ctest fixture "guest" builds it).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "migrate/migration_destination.h"
#include "migrate/migration_source.h"
#include "migrate/pki.h"
#include "migrate/receipt.h"
#include "migrate/session.h"
#include "migrate/vm.h"

namespace sod {

inline std::string GuestDir() {
  const char* d = std::getenv("SOD_GUEST_DIR");
  return d ? d : "/var/cache/sod/guest";
}

inline std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Last heartbeat counter in a serial log, -1 if none.
inline long LastHeartbeat(const std::string& serial) {
  static const std::regex hb("SOD-HB ([0-9]+)");
  long last = -1;
  std::string text = Slurp(serial);
  for (std::sregex_iterator it(text.begin(), text.end(), hb), end; it != end; ++it)
    last = std::stol((*it)[1]);
  return last;
}

inline bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  using namespace std::chrono_literals;
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
  std::filesystem::path dir;
};

class MigrationFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    namespace fs = std::filesystem;
    if (!fs::exists(GuestDir() + "/initrd.img")) GTEST_SKIP() << "no test guest in " << GuestDir();
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '-');  // parameterized tests: "Case/Param"
    // The QMP socket lives below root_, and a unix socket path has at most 107 bytes.
    if (name.size() > 40)
      name = name.substr(0, 32) + "-" + std::to_string(std::hash<std::string>()(name) % 100000);
    root_ = fs::temp_directory_path() /
            ("sod-migration-test-" + std::to_string(::getpid()) + "-" + name);
    fs::remove_all(root_);
    ASSERT_TRUE(CreateCa((root_ / "pki").string(), {}).ok());
    for (Host* h : {&a_, &b_}) {
      h->id = h == &a_ ? "hosta" : "hostb";
      h->dir = root_ / h->id;
      ASSERT_TRUE(
          IssueHostCert((root_ / "pki").string(), h->id, (root_ / "pki").string(), {}).ok());
      TlsConfig c{(root_ / "pki/ca.crt").string(), (root_ / "pki" / (h->id + ".crt")).string(),
                  (root_ / "pki" / (h->id + ".key")).string()};
      h->client = std::move(TlsContext::Create(c, TlsRole::kClient)).value();
      h->server = std::move(TlsContext::Create(c, TlsRole::kServer)).value();
      h->signer = std::move(HostSigner::Load(c.key_file)).value();
    }
    session_options_.data_channels = 2;
    session_options_.timeout = std::chrono::seconds(30);
  }
  void TearDown() override {
    for (auto* vm : {&source_vm_, &dest_vm_})
      if (*vm) (*vm)->Kill();
    if (!root_.empty() && !HasFailure()) std::filesystem::remove_all(root_);
  }

  VmSpec Spec(const std::string& extra) {
    namespace fs = std::filesystem;
    VmSpec s;
    s.name = "guest1";
    s.memory_mb = 256;
    s.kernel =
        fs::exists(GuestDir() + "/vmlinux") ? GuestDir() + "/vmlinux" : GuestDir() + "/vmlinuz";
    s.initrd = GuestDir() + "/initrd.img";
    s.append = Slurp(GuestDir() + "/cmdline");
    while (!s.append.empty() && s.append.back() == '\n') s.append.pop_back();
    s.append += " sod.hb=1 sod.pattern_mb=32 sod.pattern_interval=1 " + extra;
    return s;
  }

  void BootSource(const std::string& extra = "sod.dirty_mb=64 sod.dirty_rate=16") {
    using namespace std::chrono_literals;
    spec_ = Spec(extra);
    auto vm = Vm::Launch(spec_, MakeVmPaths((a_.dir / "vm").string(), a_.id, spec_, 0),
                         VmLaunchMode::kRun);
    ASSERT_TRUE(vm.ok()) << vm.status().ToString();
    source_vm_ = std::move(*vm);
    ASSERT_TRUE(WaitFor(
        [&] {
          return Slurp(source_vm_->paths().serial_log).find("SOD-READY") != std::string::npos;
        },
        120s))
        << Slurp(source_vm_->paths().serial_log);
  }

  DestinationContext DestContext() {
    DestinationContext ctx;
    ctx.host_id = b_.id;
    ctx.signer = b_.signer.get();
    ctx.ledger = &b_.ledger;
    ctx.step_timeout = std::chrono::seconds(30);
    ctx.launch_incoming = [this](const VmSpec& spec,
                                 const MigrationId&) -> Result<std::unique_ptr<Vm>> {
      VmPaths paths = MakeVmPaths((b_.dir / "vm").string(), b_.id, spec, 0);
      {
        std::lock_guard<std::mutex> l(dest_files_mu_);
        dest_memory_files_.push_back(paths.memory_file);
      }
      return Vm::Launch(spec, paths, VmLaunchMode::kIncoming);
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
    const SessionOptions& so = session_options_;
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
    // The source connects to the listener, or to whatever route_ puts in between.
    const uint16_t port = route_ ? route_((*listener)->port()) : (*listener)->port();
    auto session = Session::Connect(*a_.client, "127.0.0.1", port, expect_peer, so);
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

  // Both RAMs hashed by the test itself from their memory files, apart from the protocol: the
  // source's when its receipt is built (QEMU paused it for good), the destination's before it
  // decides (its QEMU loaded the stream; the VM has not run). Installs hooks into opts and ctx.
  struct RamDigests {
    std::optional<std::array<uint8_t, 16>> source, dest;
  };
  void WitnessRam(SourceOptions& opts, DestinationContext& ctx, RamDigests& out) {
    opts.mutate_receipt_for_testing = [this, &out](Receipt&) {
      auto d = source_vm_->RamDigest();
      if (d.ok()) out.source = *d;
    };
    ctx.before_decide_for_testing = [this, &out](const MigrationId&) {
      std::lock_guard<std::mutex> l(dest_files_mu_);
      auto t = HashRamFile(dest_memory_files_.back(), kRamBlockName);
      if (t.ok()) out.dest = RamTableDigest(*t);
    };
  }

  void ExpectSourceStillRunsAndNothingAtDestination() {
    using namespace std::chrono_literals;
    ASSERT_TRUE(source_vm_);
    auto state = source_vm_->RunState();
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    EXPECT_EQ(*state, "running");
    long hb = LastHeartbeat(source_vm_->paths().serial_log);
    EXPECT_TRUE(
        WaitFor([&] { return LastHeartbeat(source_vm_->paths().serial_log) > hb + 3; }, 10s))
        << "the source guest keeps running";
    EXPECT_FALSE(dest_vm_) << "no VM at the destination";
    // The memory files of this test's destination QEMUs (other test runs, e.g. another
    // engineer's, may have sod-hostb-* files of their own in /dev/shm at the same time).
    std::lock_guard<std::mutex> l(dest_files_mu_);
    for (const std::string& f : dest_memory_files_)
      EXPECT_FALSE(std::filesystem::exists(f)) << "destination memory file left behind: " << f;
  }

  std::filesystem::path root_;
  Host a_, b_;
  VmSpec spec_;
  std::unique_ptr<Vm> source_vm_, dest_vm_;
  std::vector<MigrationProgress> progress_;
  std::chrono::milliseconds accept_timeout_ = std::chrono::seconds(20);
  // Options of both ends of the session (2 data channels, 30 s timeout unless a test changes it).
  SessionOptions session_options_;
  std::mutex dest_files_mu_;
  std::vector<std::string> dest_memory_files_;  // every destination QEMU's memory file
  // When set: given the listener's port, returns the port the source connects to instead (a relay).
  std::function<uint16_t(uint16_t)> route_;
};

}  // namespace sod
