#include "host/migration_listener.h"

#include <spdlog/spdlog.h>

namespace sod {

using std::chrono::milliseconds;

SessionHandler LoggingSessionHandler(std::shared_ptr<spdlog::logger> log) {
  return [log](std::unique_ptr<Session> session) {
    if (log) {
      log->info("migration session from {} ({}): no migration engine wired yet, closing",
                session->peer_host_id(), session->peer_address());
    }
    session->SendAbort(Error(Errc::kUnsupported, "no migration engine on this host yet"));
  };
}

MigrationListener::MigrationListener(Options options, SessionHandler handler,
                                     std::shared_ptr<spdlog::logger> log,
                                     std::unique_ptr<SessionListener> listener)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      log_(std::move(log)),
      listener_(std::move(listener)),
      port_(listener_->port()) {}

Result<std::unique_ptr<MigrationListener>> MigrationListener::Start(
    TlsContext& tls, Options options, SessionHandler handler, std::shared_ptr<spdlog::logger> log) {
  if (!handler) return Error(Errc::kInvalidArgument, "migration listener: no session handler");
  if (options.max_sessions == 0) {
    return Error(Errc::kInvalidArgument, "migration listener: max_sessions must be at least 1");
  }
  Result<std::unique_ptr<SessionListener>> l =
      SessionListener::Listen(tls, options.host, options.port, options.session);
  if (!l.ok()) {
    return l.status().WithContext("migration listener on " + options.host + ":" +
                                  std::to_string(options.port));
  }
  std::unique_ptr<MigrationListener> m(new MigrationListener(std::move(options), std::move(handler),
                                                             std::move(log), std::move(l).value()));
  m->accept_thread_ = std::thread([p = m.get()] { p->AcceptLoop(); });
  return m;
}

MigrationListener::~MigrationListener() { Stop(); }

void MigrationListener::Stop() {
  if (stopped_) return;
  stopped_ = true;
  stop_ = true;
  if (accept_thread_.joinable()) accept_thread_.join();
  ReapWorkers(/*all=*/true);
}

void MigrationListener::ReapWorkers(bool all) {
  std::list<Worker> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (all || it->done.load()) finished.splice(finished.end(), workers_, it);
      it = next;
    }
  }
  for (Worker& w : finished) {
    if (w.thread.joinable()) w.thread.join();
  }
}

void MigrationListener::AcceptLoop() {
  while (!stop_) {
    ReapWorkers(/*all=*/false);
    Result<std::unique_ptr<Session>> s = listener_->Accept(milliseconds(500));
    if (!s.ok()) {
      if (s.status().code() != Errc::kTimeout && log_) {
        log_->warn("migration listener: {}", s.status().ToString());
      }
      continue;
    }
    std::unique_ptr<Session> session = std::move(s).value();
    if (active_.load() >= options_.max_sessions) {
      ++refused_;
      if (log_) {
        log_->warn("migration session from {} ({}) refused: {} sessions already running",
                   session->peer_host_id(), session->peer_address(), active_.load());
      }
      session->SendAbort(Error(Errc::kRefused, "busy: " + std::to_string(options_.max_sessions) +
                                                   " incoming migrations already running"));
      continue;
    }
    ++accepted_;
    ++active_;
    if (log_) {
      log_->info("migration session from {} ({}) accepted", session->peer_host_id(),
                 session->peer_address());
    }
    std::lock_guard<std::mutex> lock(mu_);
    Worker& w = workers_.emplace_back();
    w.thread = std::thread([this, &w, s = std::move(session)]() mutable {
      std::string peer = s->peer_host_id();
      try {
        handler_(std::move(s));
      } catch (const std::exception& e) {
        if (log_) log_->error("migration session from {}: handler threw: {}", peer, e.what());
      }
      --active_;
      w.done = true;
    });
  }
}

}  // namespace sod
