// sodd: the per-host sod daemon — VMs of this host, the migration endpoint, the admin socket.
//
//   sodd --host-id ID --state-dir DIR --listen 127.0.0.1:PORT --tls-dir DIR
//        [--admin-socket PATH] [--forward-ports 20000-20999] [--qemu BINARY]
//        [--data-channels N] [--io auto|uring|posix] [--max-incoming N] [-v]
//        (--tpm TCTI | --simulated-tpm | --no-attestation) [--enrollments DIR]
//        [--architecture NAME] [--max-violations N] [--no-evacuation]
//        [--capabilities FILE]... [--packages FILE]... [--peer HOST=ADDR:PORT]...
//        [--monitor-interval-ms MS] [--max-outgoing N] [--vm-slots N]
//        [--moving-target-s S] [--no-target-repeat-s S]
//
// Logs to stderr and <state dir>/sodd.log; writes <state dir>/sodd.pid (locked while sodd runs).
// SIGTERM / SIGINT stop sodd cleanly; VMs keep running and are re-adopted by the next sodd.
// Exit status: 0 after a clean stop, 1 when sodd could not start, 2 on a usage error.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <filesystem>
#include <vector>
#include <iostream>
#include <memory>
#include <string>

#include "host/attestation_service.h"
#include "vtpm/tpm_sealer.h"
#include "vtpm/vtpm_host.h"
#include "host/forward_ports.h"
#include "host/host_daemon.h"
#include "host/migration_service.h"
#include "host/policy_agent.h"
#include "migrate/audit_log.h"
#include "host/state_dir.h"
#include "tools/cli_parse.h"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

#ifndef SOD_VERSION
#define SOD_VERSION "unknown"
#endif
#ifndef SOD_POLICY_DIR
#define SOD_POLICY_DIR "/usr/share/sod/policy"
#endif

namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

// "127.0.0.1:7400", "[::1]:7400", "localhost:7400".
bool ParseListen(const std::string& text, std::string& host, uint16_t& port) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::string p = text.substr(colon + 1);
  unsigned v = 0;
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
  if (ec != std::errc() || end != p.data() + p.size() || p.empty() || v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return !host.empty();
}

std::shared_ptr<spdlog::logger> MakeLogger(const std::string& file, bool verbose) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  std::vector<spdlog::sink_ptr> sinks = {console};
  try {
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(file));
  } catch (const spdlog::spdlog_ex& e) {
    std::cerr << "sodd: cannot open log file " << file << ": " << e.what() << "\n";
  }
  auto log = std::make_shared<spdlog::logger>("sodd", sinks.begin(), sinks.end());
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  log->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  log->flush_on(spdlog::level::info);
  return log;
}

int Run(int argc, char** argv) {
  CLI::App app{
      "sodd - the sod (Security on Demand) host daemon: runs this host's VMs, accepts "
      "secure migrations, and serves the admin socket that sodctl talks to",
      "sodd"};
  app.set_version_flag("--version", "sodd " SOD_VERSION);
  sod::HostDaemonConfig config;
  std::string listen = "127.0.0.1:7400";
  std::string ports = sod::PortRangeToString(config.forward_ports);
  std::string io = "auto";
  bool verbose = false;
  sod::HostAttestationConfig attestation;
  std::string tcti;
  bool simulated_tpm = false, no_attestation = false;
  app.add_option("--host-id", config.host_id,
                 "This host's id; TLS-DIR/ID.crt and TLS-DIR/ID.key must name it")
      ->required()
      ->type_name("ID");
  app.add_option("--state-dir", config.state_dir,
                 "State directory (created 0700): VMs, logs, pid file, admin socket")
      ->capture_default_str()
      ->type_name("DIR");
  app.add_option("--listen", listen, "Migration endpoint HOST:PORT (TLS 1.3, mutual X.509)")
      ->capture_default_str()
      ->type_name("HOST:PORT");
  app.add_option("--tls-dir", config.tls_dir,
                 "Directory with ca.crt, ID.crt and ID.key (see 'sodctl pki')")
      ->required()
      ->type_name("DIR");
  app.add_option("--admin-socket", config.admin_socket,
                 "Admin socket (mode 0600) [default: STATE-DIR/sodd.sock]")
      ->type_name("PATH");
  app.add_option("--forward-ports", ports,
                 "Host ports forwarded to guests (127.0.0.1:PORT -> guest_port)")
      ->capture_default_str()
      ->type_name("FIRST-LAST");
  app.add_option("--qemu", config.qemu_binary, "QEMU binary (looked up in PATH without a '/')")
      ->capture_default_str()
      ->type_name("BINARY");
  app.add_option("--data-channels", config.data_channels,
                 "Most data channels granted to an incoming migration")
      ->capture_default_str()
      ->check(CLI::Range(1, 16))
      ->type_name("N");
  app.add_option("--data-channel-buffer", config.data_channel_buffer_kib,
                 "Each data channel's socket buffer, KiB, fixed (bounds the stream queued between "
                 "the two QEMUs); 0: the kernel's autotuning, for long fat links")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 20))
      ->type_name("KIB");
  app.add_option("--io", io, "Data channel I/O: auto, uring or posix")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "uring", "posix"}));
  app.add_option("--max-incoming", config.max_incoming_sessions,
                 "Incoming migration sessions served at once; more are refused as busy")
      ->capture_default_str()
      ->check(CLI::Range(1, 64))
      ->type_name("N");
  auto* tpm_opt = app.add_option("--tpm", tcti,
                                  "This host's TPM 2.0 as a tpm2-tss TCTI, e.g. device:/dev/tpmrm0")
                      ->type_name("TCTI");
  auto* sim_opt = app.add_flag(
      "--simulated-tpm", simulated_tpm,
      "Run a swtpm as this host's TPM (state in STATE-DIR/tpm; a simulated measured boot is "
      "extended into its PCRs at every start) - for tests and demos");
  auto* off_opt = app.add_flag("--no-attestation", no_attestation,
                               "Run without attestation: peers are trusted on their certificate "
                               "alone (hosts that attest refuse this one)");
  tpm_opt->excludes(sim_opt)->excludes(off_opt);
  sim_opt->excludes(off_opt);
  app.add_option("--enrollments", attestation.enrollments_dir,
                 "Directory of enrollment records of the hosts this one trusts "
                 "[default: STATE-DIR/enrollments] (see 'sodctl host enroll')")
      ->type_name("DIR");
  app.add_option("--architecture", attestation.architecture,
                 "This host's architecture: a row of the capability table")
      ->capture_default_str()
      ->type_name("NAME");
  app.add_option("--max-violations", attestation.policy.max_violations,
                 "Runtime violations a peer may report and still be trusted")
      ->capture_default_str()
      ->type_name("N");
  bool no_evacuation = false;
  app.add_flag("--no-evacuation", no_evacuation,
               "Refuse incoming migrations from a source whose trust dropped (by default such a "
               "source is admitted when its evidence is authentic: migrate/PROTOCOL.md 8a)");
  std::vector<std::string> capability_files, package_files, peer_specs;
  uint64_t interval_ms = 1000, max_outgoing = 1, vm_slots = 16, moving_target_s = 0,
           no_target_repeat_s = 30;
  app.add_option("--capabilities", capability_files,
                 "Capability table file(s): the first is the base, later ones extend it "
                 "[default: " SOD_POLICY_DIR "/capabilities.json]")
      ->type_name("FILE");
  app.add_option("--packages", package_files,
                 "Security package file(s), later ones replacing and extending earlier ones "
                 "[default: " SOD_POLICY_DIR "/packages.json]")
      ->type_name("FILE");
  app.add_option("--peer", peer_specs,
                 "A host this one monitors and may move VMs to (repeatable)")
      ->type_name("HOST=ADDR:PORT");
  app.add_option("--monitor-interval-ms", interval_ms,
                 "Trust monitor and policy agent interval; 0 turns the agent off")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{3600000}))
      ->type_name("MS");
  app.add_option("--max-outgoing", max_outgoing,
                 "Relocations the agent runs at once; more wait for the next round")
      ->capture_default_str()
      ->check(CLI::Range(1, 64))
      ->type_name("N");
  app.add_option("--vm-slots", vm_slots, "VMs this host takes (its capacity for placement)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096))
      ->type_name("N");
  app.add_option("--moving-target-s", moving_target_s,
                 "Moving-target defense: relocate every VM this often (0 = off)")
      ->capture_default_str()
      ->type_name("S");
  app.add_option("--no-target-repeat-s", no_target_repeat_s,
                 "Repeat an unchanged policy.no-target audit entry at most this often")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400))
      ->type_name("S");
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  app.footer(
      "Signals: SIGTERM or SIGINT stop sodd; VMs keep running and the next sodd re-adopts them.\n"
      "Exit status: 0 after a clean stop, 1 when sodd could not start, 2 on a usage error.");
  if (auto code = sod::tools::ParseOrExitCode(app, argc, argv, kExitUsage)) return *code;
  if (!ParseListen(listen, config.listen_host, config.listen_port)) {
    std::cerr << "sodd: --listen: expected HOST:PORT, got \"" << listen << "\"\n";
    return kExitUsage;
  }
  sod::Result<sod::PortRange> range = sod::ParsePortRange(ports);
  if (!range.ok()) {
    std::cerr << "sodd: --forward-ports: " << range.status().message() << "\n";
    return kExitUsage;
  }
  config.forward_ports = *range;
  if (!tpm_opt->count() && !simulated_tpm && !no_attestation) {
    std::cerr << "sodd: attestation needs a TPM: give --tpm TCTI or --simulated-tpm "
                 "(or --no-attestation to run without)\n";
    return kExitUsage;
  }
  attestation.tpm = tpm_opt->count() ? sod::HostAttestationConfig::Tpm::kDevice
                    : simulated_tpm  ? sod::HostAttestationConfig::Tpm::kSimulated
                                     : sod::HostAttestationConfig::Tpm::kNone;
  attestation.tcti = tcti;
  attestation.policy.accept_evacuations = !no_evacuation;
  // The policy: capability table, packages, peers. Refused here, before anything starts.
  sod::PolicyAgentConfig policy_config;
  {
    std::vector<std::filesystem::path> caps(capability_files.begin(), capability_files.end());
    if (caps.empty()) caps.push_back(SOD_POLICY_DIR "/capabilities.json");
    auto table = sod::policy::CapabilityTable::LoadFiles(caps);
    if (!table.ok()) {
      std::cerr << "sodd: --capabilities: " << table.status().ToString() << "\n";
      return kExitUsage;
    }
    policy_config.table = std::move(*table);
    if (policy_config.table.Find(attestation.architecture) == nullptr) {
      std::string rows;
      for (const auto& r : policy_config.table.rows()) rows += (rows.empty() ? "" : ", ") + r.name;
      std::cerr << "sodd: --architecture \"" << attestation.architecture
                << "\" is not a row of the capability table (rows: " << rows << ")\n";
      return kExitUsage;
    }
    std::vector<std::filesystem::path> pkgs(package_files.begin(), package_files.end());
    if (pkgs.empty()) pkgs.push_back(SOD_POLICY_DIR "/packages.json");
    auto packages = sod::policy::PackageCatalog::LoadFiles(pkgs);
    if (!packages.ok()) {
      std::cerr << "sodd: --packages: " << packages.status().ToString() << "\n";
      return kExitUsage;
    }
    policy_config.packages = std::move(*packages);
    for (const std::string& spec : peer_specs) {
      const size_t eq = spec.find('=');
      sod::PolicyPeer p;
      if (eq == std::string::npos || eq == 0 ||
          !ParseListen(spec.substr(eq + 1), p.connect, p.port) || p.port == 0) {
        std::cerr << "sodd: --peer: expected HOST=ADDR:PORT, got \"" << spec << "\"\n";
        return kExitUsage;
      }
      p.id = spec.substr(0, eq);
      policy_config.peers.push_back(std::move(p));
    }
    policy_config.interval = std::chrono::milliseconds(interval_ms);
    policy_config.max_outgoing = max_outgoing;
    policy_config.vm_slots = static_cast<uint32_t>(vm_slots);
    policy_config.moving_target = std::chrono::seconds(moving_target_s);
    policy_config.no_target_repeat = std::chrono::seconds(no_target_repeat_s);
    if (!peer_specs.empty() && no_attestation) {
      std::cerr << "sodd: --peer needs attestation (the agent judges peers by their evidence)\n";
      return kExitUsage;
    }
  }
  config.io = io == "uring"   ? sod::IoBackend::kUring
              : io == "posix" ? sod::IoBackend::kPosix
                              : sod::IoBackend::kAuto;

  // Block the stop signals in every thread (threads inherit this mask); main waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (config.state_dir.empty() || config.state_dir.front() != '/') {
    std::cerr << "sodd: --state-dir must be an absolute path\n";
    return kExitUsage;
  }
  if (sod::Status s = sod::MakePrivateDir(config.state_dir); !s.ok()) {
    std::cerr << "sodd: " << s.ToString() << "\n";
    return kExitError;
  }
  std::shared_ptr<spdlog::logger> log = MakeLogger(config.state_dir + "/sodd.log", verbose);
  log->info("sodd " SOD_VERSION " starting as {} (pid {})", config.host_id, ::getpid());

  // Every event (VM life cycle, migrations and their reasons, receipts) goes to the append-only,
  // hash-chained audit log; a log that fails verification stops sodd.
  auto audit = sod::AuditLog::Open(config.state_dir + "/audit.log", config.host_id);
  if (!audit.ok()) {
    // The audit log is held open by the sodd that owns this state dir.
    log->error("cannot open the audit log: {}{}", audit.status().ToString(),
               audit.status().code() == sod::Errc::kState ? " (another sodd runs on this state dir)"
                                                          : "");
    return kExitError;
  }
  config.events = [audit = std::shared_ptr<sod::AuditLog>(std::move(*audit)), log](
                      std::string_view kind, const nlohmann::json& data) {
    sod::Status s = audit->Append(kind, data);
    if (!s.ok()) log->error("audit log: {}", s.ToString());
  };
  sod::Result<std::unique_ptr<sod::HostDaemon>> daemon = sod::HostDaemon::Create(config, log);
  if (!daemon.ok()) {
    log->error("cannot start: {}", daemon.status().ToString());
    return kExitError;
  }
  sod::HostDaemon& d = **daemon;
  auto migrations = sod::MigrationService::Create(d);
  if (!migrations.ok()) {
    log->error("cannot start the migration engine: {}", migrations.status().ToString());
    return kExitError;
  }
  if (attestation.enrollments_dir.empty())
    attestation.enrollments_dir = config.state_dir + "/enrollments";
  auto attest = sod::AttestationService::Create(d, attestation);
  if (!attest.ok()) {
    log->error("cannot start attestation: {}", attest.status().ToString());
    return kExitError;
  }
  (*attest)->Install();
  if ((*attest)->peer_attestation()) {
    log->info("attestation on: {}", (*attest)->Info().dump());
  } else {
    log->warn("attestation OFF (--no-attestation): peers are trusted on their certificate alone");
  }
  (*migrations)->set_attestation((*attest)->peer_attestation());
  // vTPMs: their keys are kept under a master key sealed to this host's boot PCRs (0-7), so they
  // need the host TPM; a host whose boot state changed runs on without them (and says so).
  std::unique_ptr<sod::vtpm::TpmKeySealer> sealer;
  std::unique_ptr<sod::vtpm::VtpmHost> vtpm_host;
  if (sod::attest::Tpm* tpm = (*attest)->tpm()) {
    sealer = std::make_unique<sod::vtpm::TpmKeySealer>(*tpm, sod::attest::PcrSelection{0xFFu});
    auto vh = sod::vtpm::VtpmHost::Open(config.state_dir, *sealer);
    if (vh.ok()) {
      vtpm_host = std::move(*vh);
      d.registry().SetVtpmHost(vtpm_host.get());
      log->info("vTPMs on: keys sealed to the {}", vtpm_host->sealer_description());
    } else {
      log->error("vTPMs OFF: {}", vh.status().ToString());
      d.registry().SetVtpmHost(nullptr);
    }
  } else {
    log->warn("vTPMs OFF: no host TPM to seal their keys to");
  }
  auto agent = sod::PolicyAgent::Create(d, **attest, **migrations, std::move(policy_config));
  if (!agent.ok()) {
    log->error("cannot start the policy agent: {}", agent.status().ToString());
    return kExitError;
  }
  (*agent)->Install();
  (*migrations)->set_evacuation_check([a = attest->get()](const std::string& from) {
    auto v = a->LastIncomingVerdict(from);
    return v && v->evacuation;
  });
  (*migrations)->Install();
  if (sod::Status s = d.Start(); !s.ok()) {
    log->error("cannot start: {}", s.ToString());
    return kExitError;
  }
  if ((*attest)->peer_attestation()) (*agent)->Start();

  for (;;) {
    timespec tick{1, 0};
    int sig = sigtimedwait(&stop_signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      log->info("{} received, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    d.Tick();
  }
  (*agent)->Stop();
  d.Shutdown();
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
