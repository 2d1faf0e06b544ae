// sodctl migrate | cancel | recover: move a VM to another host over sod's secure channel, cancel
// a migration in progress, and resolve a migration whose outcome is unknown
// (host/migration_service.h).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include "migrate/migration_source.h"
#include "migrate/vm.h"
#include "tools/sodctl_commands.h"
#include "tools/sodctl_sodd.h"

namespace sod::sodctl {
namespace {

using nlohmann::json;

struct MigrateArgs {
  std::string name;
  std::string to;  // HOST[:PORT]
  std::string connect;
  uint16_t channels = 0;
  std::string suite = "aes-256-gcm";
  bool no_verify_ram = false;
  bool no_ram_write_log = false;
  uint64_t max_bandwidth_mib = 0;
  uint64_t downtime_limit_ms = 0;
  int64_t downtime_start_ms = -1;  // -1: sodd's default
  bool json = false;
};

std::string Mib(uint64_t bytes) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / (1 << 20) << " MiB";
  return o.str();
}

void PrintProgress(const json& e, bool tty) {
  const std::string kind = e.value("event", "");
  if (kind == "connecting") {
    std::cout << "connecting to " << Text(e["to"]) << " at " << Text(e["connect"]) << ":"
              << Text(e["port"]) << " (TLS 1.3, mutual X.509)\n";
    return;
  }
  if (kind == "session") {
    std::cout << "secure session with " << Text(e["peer"]) << ": " << Text(e["suite"]) << ", "
              << Text(e["data_channels"]) << " data channels\n";
    return;
  }
  if (kind != "progress") return;
  const std::string phase = e.value("phase", "");
  if (phase == "attested") {
    std::cout << "attested: both hosts verified each other's TPM quote, bound to this session\n";
    return;
  }
  std::ostringstream line;
  line << std::fixed << std::setprecision(1) << std::setw(6) << e.value("elapsed_s", 0.0) << "s  "
       << std::left << std::setw(10) << phase << std::right << " round " << std::setw(3)
       << e.value("round", 0) << "  sent " << std::setw(10) << Mib(e.value("stream_bytes", 0ull))
       << "  remaining " << std::setw(10) << Mib(e.value("ram_remaining", 0ull)) << "  dirty "
       << std::setw(7) << e.value("dirty_pages_rate", 0ull) << " pg/s  " << std::setw(7)
       << e.value("mbps", 0.0) << " Mbit/s  exp. downtime " << e.value("expected_downtime_ms", 0ull)
       << " ms";
  if (tty && phase == "streaming")
    std::cout << "\r" << line.str() << "\x1b[K" << std::flush;
  else
    std::cout << (tty ? "\r" : "") << line.str() << "\n";
}

// While `sodctl migrate` waits: the first SIGINT (Ctrl-C), SIGTERM or SIGHUP (unless ignored)
// asks sodd to cancel the migration ("migrate.cancel": honoured until QEMU pauses the VM for the
// switchover, after which the migration commits) and the command goes on waiting for the
// outcome; a second one leaves at once (the migration then goes on in sodd; `sodctl cancel VM`
// still reaches it).
class CancelOnSignal {
 public:
  CancelOnSignal(const SoddTarget& sodd, std::string name) : sodd_(sodd), name_(std::move(name)) {
    sigemptyset(&signals_);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction now{};
      // Ignored (nohup, a background job of a script): the caller wants them to mean nothing.
      if (sigaction(s, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
      sigaddset(&signals_, s);
    }
    pthread_sigmask(SIG_BLOCK, &signals_, &old_mask_);  // before the thread: it inherits the mask
    watcher_ = std::thread([this] { Watch(); });
  }
  ~CancelOnSignal() {
    done_ = true;
    watcher_.join();
    if (canceller_.joinable()) canceller_.join();  // sodd answers once the migration ended
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  CancelOnSignal(const CancelOnSignal&) = delete;
  CancelOnSignal& operator=(const CancelOnSignal&) = delete;

 private:
  void Watch() {
    bool asked = false;
    while (!done_) {
      timespec tick{0, 100 * 1000 * 1000};
      const int sig = sigtimedwait(&signals_, nullptr, &tick);
      if (sig <= 0) continue;
      if (asked) {
        std::cerr << "sodctl: not waiting any longer; if the migration of " << name_
                  << " still runs, `sodctl cancel " << name_ << "` reaches it\n";
        _exit(128 + sig);
      }
      asked = true;
      std::cerr << "\nsodctl: " << strsignal(sig) << ": cancelling the migration of " << name_
                << " (again to leave without waiting)\n";
      // On its own thread: sodd answers only when the migration has ended, and a second signal
      // must still be seen meanwhile.
      canceller_ = std::thread([this] {
        Result<json> r = CallSodd(sodd_, {{"op", "migrate.cancel"}, {"name", name_}});
        if (!r.ok()) std::cerr << "sodctl: cancel: " << r.status().ToString() << "\n";
      });
    }
  }

  const SoddTarget& sodd_;
  const std::string name_;
  sigset_t signals_{};
  sigset_t old_mask_{};
  std::atomic<bool> done_{false};
  std::thread watcher_;
  std::thread canceller_;  // started by the watcher, joined after it
};

Status RunMigrate(const SoddTarget& sodd, const MigrateArgs& a) {
  json req = {{"op", "migrate"}, {"name", a.name}, {"suite", a.suite}, {"verify_ram", !a.no_verify_ram}};
  SOD_RETURN_IF_ERROR(AddHostPort(req, a.to, "--to"));
  if (!a.connect.empty()) req["connect"] = a.connect;
  if (a.channels) req["channels"] = a.channels;
  if (a.no_ram_write_log) req["ram_write_log"] = false;
  if (a.max_bandwidth_mib) req["max_bandwidth"] = a.max_bandwidth_mib << 20;
  if (a.downtime_limit_ms) req["downtime_limit_ms"] = a.downtime_limit_ms;
  if (a.downtime_start_ms >= 0) req["downtime_start_ms"] = a.downtime_start_ms;
  const bool tty = !a.json && isatty(fileno(stdout));
  std::vector<json> events;
  Result<json> reply = [&] {
    CancelOnSignal cancel_on_signal(sodd, a.name);
    return CallSodd(sodd, req, [&](const json& e) {
      if (a.json)
        events.push_back(e);
      else
        PrintProgress(e, tty);
    });
  }();
  if (tty) std::cout << "\n";
  if (!reply.ok()) return reply.status().WithContext("migrate " + a.name);
  if (a.json) {
    json out = *reply;
    out["events"] = events;
    PrintJson(out);
    return Status::Ok();
  }
  const json& s = (*reply)["summary"];
  std::cout << std::fixed << std::setprecision(2) << "migrated " << a.name << " to " << req["to"].get<std::string>()
            << ": committed\n"
            << "  total time    " << s.value("total_s", 0.0) << " s\n"
            << "  downtime      " << s.value("downtime_ms", 0.0) << " ms (source stop -> "
            << "destination resume; QEMU alone: " << s.value("qemu_downtime_ms", 0.0)
            << " ms, planned for at most " << s.value("downtime_target_ms", 0ull) << " ms)\n"
            << "  stream        " << Mib(s.value("stream_bytes", 0ull)) << " in "
            << s.value("rounds", 0) << " rounds, " << Mib(s.value("wire_bytes", 0ull))
            << " on the wire\n";
  if (!s.value("ram_check", std::string()).empty())
    std::cout << "  RAM check     " << s.value("ram_check", std::string()) << ", "
              << s.value("ram_pages_read_at_pause", 0ull) << " page(s) read after the pause\n";
  if (s.value("ram_pages_repaired", 0) > 0)
    std::cout << "  RAM repair    " << s.value("ram_pages_repaired", 0)
              << " page(s) QEMU did not re-send after the guest changed them were sent by sod\n";
  if (s.contains("phases_ms") && s["phases_ms"].is_array() && !s["phases_ms"].empty()) {
    // Where the time went: each step's end, in ms since the session began.
    std::cout << "  steps (ms)   ";
    for (const json& p : s["phases_ms"])
      std::cout << " " << p.value("phase", "?") << " " << std::setprecision(0)
                << p.value("ms", 0.0);
    std::cout << std::setprecision(2) << "\n";
  }
  const json& r = (*reply)["receipt"];
  std::cout << "  receipt       " << Text((*reply)["migration_id"]) << "  transcript "
            << Text(r["transcript"]) << "\n"
            << "                signed by " << Text(r["source_host"]) << " and "
            << Text(r["destination_host"]) << "; RAM digest "
            << (r["ram_digest"].is_null() ? std::string("not checked") : Text(r["ram_digest"]))
            << "\n";
  if (reply->contains("warning")) std::cout << "  warning       " << Text((*reply)["warning"]) << "\n";
  return Status::Ok();
}

// An op on one VM by name; with --json its reply is printed as sodd sent it.
Result<json> CallForVm(const SoddTarget& sodd, std::string_view op, const MigrateArgs& a) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", std::string(op)}, {"name", a.name}}));
  if (a.json) PrintJson(reply);
  return reply;
}

Status RunCancel(const SoddTarget& sodd, const MigrateArgs& a) {
  SOD_ASSIGN_OR_RETURN(json reply, CallForVm(sodd, "migrate.cancel", a));
  const std::string phase = reply.value("phase", "");
  if (reply.value("cancelled", false)) {
    if (!a.json) std::cout << a.name << ": migration cancelled; the VM runs here (" << phase << ")\n";
    return Status::Ok();
  }
  // Too late: QEMU had paused the VM for the switchover, the migration went on to its end.
  if (!a.json)
    std::cout << a.name << ": the migration was past its switchover and was not cancelled; the VM is "
              << (phase.empty() ? std::string("no longer here") : phase + " here") << "\n";
  return Error(Errc::kState, "migration of " + a.name + " not cancelled (past its switchover)");
}

Status RunRecover(const SoddTarget& sodd, const MigrateArgs& a) {
  SOD_ASSIGN_OR_RETURN(json reply, CallForVm(sodd, "recover", a));
  if (a.json) return Status::Ok();
  const std::string outcome = reply.value("outcome", "");
  std::cout << a.name << ": migration " << Text(reply["migration_id"]) << " "
            << (outcome == "committed" ? "had committed: the VM runs at the destination; the copy "
                                         "here was quit"
                                       : "had not committed: the VM was resumed here")
            << "\n";
  return Status::Ok();
}

}  // namespace

void AddMigrateCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                        CommandAction& action) {
  auto args = std::make_shared<MigrateArgs>();
  CLI::App* m = app.add_subcommand(
      "migrate",
      "Live-migrate a VM of this host to another sod host. Both hosts authenticate (TLS 1.3, "
      "cluster CA, host ids), the VM's migration stream crosses in authenticated, encrypted "
      "records over several data channels, the destination verifies transcript, receipt "
      "signature and guest RAM digest before it resumes the VM, and both keep the signed "
      "receipt. On any failure the VM keeps running here. Exit status 0: committed; 1: not "
      "migrated (the VM runs here) or in doubt (see `recover`).");
  m->add_option("name", args->name, "VM name")->required()->type_name("VM");
  m->add_option("--to", args->to, "Destination host id, as its certificate names it, and port")
      ->required()
      ->type_name("HOST[:PORT]");
  m->add_option("--connect", args->connect, "Address to dial (default: the host id)")
      ->type_name("ADDR");
  m->add_option("--channels", args->channels, "Data channels (default: sodd's)")
      ->check(CLI::Range(1, 16));
  m->add_option("--suite", args->suite,
                "Record protection: aes-256-gcm (confidentiality + integrity) or hmac-sha256 "
                "(integrity only)")
      ->check(CLI::IsMember({"aes-256-gcm", "hmac-sha256"}));
  m->add_flag("--no-verify-ram", args->no_verify_ram,
              "Skip the guest RAM digest comparison at commit");
  m->add_flag("--no-ram-write-log", args->no_ram_write_log,
              "RAM check: read all guest RAM at the pause instead of only the pages QEMU's "
              "mapping had written since the check hashed it");
  m->add_option("--max-bandwidth", args->max_bandwidth_mib, "QEMU bandwidth cap, MiB/s")
      ->type_name("MIB");
  const SourceOptions defaults;
  m->add_option("--downtime-limit", args->downtime_limit_ms,
                "The most downtime QEMU may plan for, ms (default " +
                    std::to_string(defaults.downtime_limit_ms) + ")")
      ->type_name("MS");
  m->add_option("--downtime-start", args->downtime_start_ms,
                "QEMU's first downtime target, ms, doubled at each later pass up to the limit "
                "(default " +
                    std::to_string(defaults.downtime_start_ms) + "; 0: the limit from the start)")
      ->type_name("MS")
      ->check(CLI::NonNegativeNumber);
  m->add_flag("--json", args->json, "Print the result, receipt and every event as JSON");
  m->callback([&action, sodd, args] { action = [sodd, args] { return RunMigrate(*sodd, *args); }; });

  auto cargs = std::make_shared<MigrateArgs>();
  CLI::App* c = app.add_subcommand(
      "cancel",
      "Cancel a VM's outgoing migration (started by `sodctl migrate` or the policy agent) if QEMU "
      "has not yet paused the VM for the switchover: QEMU's migration is cancelled, the "
      "destination discards what it received, the VM keeps running here. Waits until the "
      "migration has ended. Ctrl-C on `sodctl migrate` does the same. Exit status 0: cancelled; "
      "1: no migration of that VM, or too late (it committed or is in doubt).");
  c->add_option("name", cargs->name, "VM name")->required()->type_name("VM");
  c->add_flag("--json", cargs->json, "Print the result as JSON");
  c->callback([&action, sodd, cargs] { action = [sodd, cargs] { return RunCancel(*sodd, *cargs); }; });

  auto rargs = std::make_shared<MigrateArgs>();
  CLI::App* r = app.add_subcommand(
      "recover",
      "Resolve a VM left in doubt (its commit went out, no answer came): ask the destination "
      "what it decided. Committed there: the paused copy here is quit. Not committed: it is "
      "resumed here. The VM never runs in two places.");
  r->add_option("name", rargs->name, "VM name")->required()->type_name("VM");
  r->add_flag("--json", rargs->json, "Print the result as JSON");
  r->callback([&action, sodd, rargs] { action = [sodd, rargs] { return RunRecover(*sodd, *rargs); }; });
}

}  // namespace sod::sodctl
