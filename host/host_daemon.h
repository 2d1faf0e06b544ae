// HostDaemon: everything one sodd runs, wired together — the state dir (one sodd per state dir,
// held by a lock on sodd.pid), TLS contexts from the cluster PKI, the VM registry (re-adopting VMs
// that survived a restart), the migration listener and the admin server.
//
// Life cycle (tools/sodd.cc):
//   auto d = HostDaemon::Create(config, log);   // nothing listens yet
//   ... plug in the migration engine (below) ...
//   d->Start();                                  // migration listener + admin socket
//   while (no SIGTERM/SIGINT) d->Tick();         // about once a second
//   d->Shutdown();                               // VMs keep running
//
// Where the migration engine plugs in (between Create and Start):
//   destination: d->SetSessionHandler([&](std::unique_ptr<Session> s) { ... }) — runs on its own
//                thread per session (at most config.max_incoming_sessions at once). With
//                IncomingVmSlot slot(d->registry()): ctx.launch_incoming = slot.Launcher(); after
//                ServeSession, slot.Adopt(std::move(report.vm)) when committed; otherwise the
//                slot's destructor frees whatever was launched.
//   source:      d->admin().Register("migrate", op) and ("recover", op) — ops run on the admin
//                connection's thread and stream progress with AdminEvents::Emit; connect with
//                Session::Connect(d->client_tls(), host, port, peer, d->session_options()), lease
//                the VM with d->registry().LeaseForMigration / LeaseForRecovery.
//   audit:       set config.events to the audit log's Append before Create (default: JSON lines
//                in <state dir>/events.log).
//
// Thread-safety: Create/Start/Tick/Shutdown from one thread. The accessors return objects that
// are themselves thread-safe (VmRegistry, TlsContext) or only used before Start (admin()).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "base/status.h"
#include "host/admin_ops.h"
#include "host/admin_server.h"
#include "host/event_log.h"
#include "host/forward_ports.h"
#include "host/migration_listener.h"
#include "host/state_dir.h"
#include "host/vm_registry.h"
#include "migrate/session.h"
#include "migrate/socket.h"
#include "migrate/tls.h"

namespace spdlog {
class logger;
}

namespace sod {

struct HostDaemonConfig {
  std::string host_id;                     // must match the host certificate
  std::string state_dir = "/var/lib/sod";  // absolute
  std::string listen_host = "127.0.0.1";   // migration listener
  uint16_t listen_port = 7400;             // 0 picks a free port (tests)
  std::string tls_dir;                     // ca.crt, <host_id>.crt, <host_id>.key
  std::string admin_socket;                // "" = <state_dir>/sodd.sock
  PortRange forward_ports;
  std::string qemu_binary = "qemu-system-x86_64";
  uint16_t data_channels = 2;  // the most an incoming session is granted
  // Each data channel's socket buffer, KiB, fixed (SessionOptions::data_channel_buffer); 0: the
  // kernel's autotuning.
  uint64_t data_channel_buffer_kib = kDefaultDataChannelBuffer / 1024;
  IoBackend io = IoBackend::kAuto;
  size_t max_incoming_sessions = 2;
  std::chrono::milliseconds quit_grace{10000};
  EventSink events;  // empty: JSON lines in <state_dir>/events.log
};

class HostDaemon {
 public:
  // `log` must not be null. Errors: kState (another sodd holds the state dir), kInvalidArgument
  // (config, certificates not matching host_id), kIo.
  static Result<std::unique_ptr<HostDaemon>> Create(HostDaemonConfig config,
                                                    std::shared_ptr<spdlog::logger> log);
  ~HostDaemon();  // Shutdown()
  HostDaemon(const HostDaemon&) = delete;
  HostDaemon& operator=(const HostDaemon&) = delete;

  // ---- plug points, before Start ----
  void SetSessionHandler(SessionHandler handler) { session_handler_ = std::move(handler); }
  // Runs before every vm.start (the policy agent validates the VM's security request).
  void SetVmSpecCheck(VmSpecCheck check) { vm_spec_check_ = std::move(check); }
  AdminServer& admin() { return *admin_; }

  VmRegistry& registry() { return *registry_; }
  TlsContext& client_tls() { return *client_tls_; }
  TlsContext& server_tls() { return *server_tls_; }
  const SessionOptions& session_options() const { return session_options_; }
  const EventSink& events() const { return events_; }
  const HostDaemonConfig& config() const { return config_; }
  const StateDir& state_dir() const { return state_; }

  // Starts the migration listener (with the logging placeholder handler unless one was set) and
  // the admin server (registering the VM ops, status, and the migrate/recover placeholders for
  // ops not registered yet).
  Status Start();
  // Housekeeping: notices VMs whose QEMU ended.
  void Tick();
  // Stops the admin server and the listener (waiting for running sessions and ops) and removes the
  // pid file. VMs keep running. Idempotent.
  void Shutdown();

  // The migration port actually bound (after Start).
  uint16_t listen_port() const;
  // The host part of the "status" reply.
  nlohmann::json HostInfo() const;

 private:
  HostDaemon(HostDaemonConfig config, std::shared_ptr<spdlog::logger> log, StateDir state);

  HostDaemonConfig config_;
  std::shared_ptr<spdlog::logger> log_;
  StateDir state_;
  UniqueFd pid_lock_;
  std::unique_ptr<JsonLinesEventLog> event_log_;
  EventSink events_;
  std::unique_ptr<TlsContext> server_tls_;
  std::unique_ptr<TlsContext> client_tls_;
  SessionOptions session_options_;
  std::unique_ptr<VmRegistry> registry_;
  std::unique_ptr<AdminServer> admin_;
  SessionHandler session_handler_;
  VmSpecCheck vm_spec_check_;
  std::unique_ptr<MigrationListener> listener_;
  std::chrono::steady_clock::time_point started_at_;
  bool shut_down_ = false;
};

}  // namespace sod
