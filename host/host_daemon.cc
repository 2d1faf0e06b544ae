#include "host/host_daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstring>

#include "host/admin_ops.h"
#include "migrate/pki.h"

namespace sod {

using nlohmann::json;

namespace {

// Takes an exclusive lock on <state dir>/sodd.pid and writes our pid into it. The lock (not the
// file's existence) says whether a sodd runs: it goes away with the process, even on kill -9.
Result<UniqueFd> LockPidFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return Error(Errc::kIo, "pid file " + path + ": " + std::strerror(errno));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string other = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    while (!other.empty() && (other.back() == '\n' || other.back() == ' ')) other.pop_back();
    return Error(Errc::kState,
                 "another sodd (pid " + other + ") uses this state dir (" + path + " is locked)");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Error(Errc::kIo, "pid file " + path + ": write: " + std::strerror(errno));
  }
  return fd;
}

}  // namespace

HostDaemon::HostDaemon(HostDaemonConfig config, std::shared_ptr<spdlog::logger> log, StateDir state)
    : config_(std::move(config)), log_(std::move(log)), state_(std::move(state)) {}

HostDaemon::~HostDaemon() { Shutdown(); }

Result<std::unique_ptr<HostDaemon>> HostDaemon::Create(HostDaemonConfig config,
                                                       std::shared_ptr<spdlog::logger> log) {
  if (!log) return Error(Errc::kInvalidArgument, "sodd: no logger");
  SOD_RETURN_IF_ERROR(ValidateHostId(config.host_id).WithContext("--host-id"));
  if (config.tls_dir.empty()) return Error(Errc::kInvalidArgument, "sodd: no TLS directory");
  if (config.max_incoming_sessions == 0 || config.data_channels == 0) {
    return Error(Errc::kInvalidArgument,
                 "sodd: max incoming sessions and data channels must be at least 1");
  }
  SOD_ASSIGN_OR_RETURN(StateDir state, StateDir::Open(config.state_dir));
  if (config.admin_socket.empty()) config.admin_socket = state.default_admin_socket();
  std::unique_ptr<HostDaemon> d(new HostDaemon(std::move(config), std::move(log), state));
  const HostDaemonConfig& c = d->config_;

  SOD_ASSIGN_OR_RETURN(d->pid_lock_, LockPidFile(d->state_.pid_file()));

  // Events: the configured sink (the audit log) or events.log, and always the daemon log.
  EventSink target = c.events;
  if (!target) {
    SOD_ASSIGN_OR_RETURN(d->event_log_, JsonLinesEventLog::Open(d->state_.events_log(), c.host_id));
    target = d->event_log_->Sink();
  }
  d->events_ = [log = d->log_, target](std::string_view kind, const json& data) {
    log->info("event {} {}", kind, data.dump(-1, ' ', false, json::error_handler_t::replace));
    target(kind, data);
  };

  TlsConfig tls;
  tls.ca_file = c.tls_dir + "/" + std::string(kCaCertFile);
  tls.cert_file = c.tls_dir + "/" + c.host_id + ".crt";
  tls.key_file = c.tls_dir + "/" + c.host_id + ".key";
  SOD_ASSIGN_OR_RETURN(d->server_tls_, TlsContext::Create(tls, TlsRole::kServer));
  SOD_ASSIGN_OR_RETURN(d->client_tls_, TlsContext::Create(tls, TlsRole::kClient));
  if (d->server_tls_->host_id() != c.host_id) {
    return Error(Errc::kInvalidArgument, "certificate " + tls.cert_file + " names host \"" +
                                             d->server_tls_->host_id() + "\", not \"" + c.host_id +
                                             "\"");
  }
  d->session_options_.suites = {Suite::kAes256Gcm, Suite::kHmacSha256};
  d->session_options_.data_channels = c.data_channels;
  d->session_options_.data_channel_buffer = static_cast<size_t>(c.data_channel_buffer_kib) << 10;
  d->session_options_.io = c.io;

  VmRegistry::Options ro;
  ro.host_id = c.host_id;
  ro.forward_ports = c.forward_ports;
  ro.qemu_binary = c.qemu_binary;
  ro.quit_grace = c.quit_grace;
  ro.events = d->events_;
  SOD_ASSIGN_OR_RETURN(d->registry_, VmRegistry::Open(d->state_, std::move(ro)));

  AdminServer::Options ao;
  ao.socket_path = c.admin_socket;
  d->admin_ = std::make_unique<AdminServer>(std::move(ao), d->log_);
  return d;
}

Status HostDaemon::Start() {
  if (listener_) return Error(Errc::kState, "sodd already started");
  started_at_ = std::chrono::steady_clock::now();
  RegisterVmOps(*admin_, *registry_, vm_spec_check_);
  RegisterStatusOp(*admin_, *registry_, [this] { return HostInfo(); });
  RegisterMigrationPlaceholders(*admin_);

  MigrationListener::Options lo;
  lo.host = config_.listen_host;
  lo.port = config_.listen_port;
  lo.session = session_options_;
  lo.max_sessions = config_.max_incoming_sessions;
  SessionHandler handler = session_handler_ ? session_handler_ : LoggingSessionHandler(log_);
  SOD_ASSIGN_OR_RETURN(listener_,
                       MigrationListener::Start(*server_tls_, lo, std::move(handler), log_));
  Status admin = admin_->Start();
  if (!admin.ok()) {
    listener_->Stop();
    return admin;
  }
  log_->info("sodd {} ready: migrations on {}:{}, admin socket {}, state dir {}", config_.host_id,
             config_.listen_host, listener_->port(), config_.admin_socket, config_.state_dir);
  return Status::Ok();
}

void HostDaemon::Tick() { registry_->CheckLiveness(); }

void HostDaemon::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (admin_) admin_->Stop();
  if (listener_) listener_->Stop();
  if (pid_lock_.valid()) {
    ::unlink(state_.pid_file().c_str());
    pid_lock_.Reset();
  }
  if (log_) log_->info("sodd {} stopped; VMs keep running", config_.host_id);
}

uint16_t HostDaemon::listen_port() const { return listener_ ? listener_->port() : 0; }

json HostDaemon::HostInfo() const {
  auto uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                 started_at_);
  json sessions = json::object();
  if (listener_) {
    sessions = {{"active", listener_->active_sessions()},
                {"accepted", listener_->accepted_sessions()},
                {"refused", listener_->refused_sessions()},
                {"max", config_.max_incoming_sessions}};
  }
  return {{"host_id", config_.host_id},
          {"pid", ::getpid()},
          {"listen", config_.listen_host + ":" + std::to_string(listen_port())},
          {"admin_socket", config_.admin_socket},
          {"state_dir", config_.state_dir},
          {"forward_ports", PortRangeToString(config_.forward_ports)},
          {"qemu", config_.qemu_binary},
          {"data_channels", config_.data_channels},
          {"data_channel_buffer_kib", config_.data_channel_buffer_kib},
          {"io", std::string(IoBackendName(config_.io))},
          {"uptime_s", uptime.count()},
          {"incoming_sessions", sessions}};
}

}  // namespace sod
