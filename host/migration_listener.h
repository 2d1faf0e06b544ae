// MigrationListener: sodd's migration endpoint. A SessionListener (migrate/session.h) on the
// --listen address, accepting secure sessions on one thread and handing each to a SessionHandler on
// a thread of its own — the destination migration engine plugs in there.
//
// Admission control: at most max_sessions handlers run at once; a session that arrives while all
// slots are taken is told to go away (Session::SendAbort with kRefused "busy: ...") and closed,
// so a flood of migration attempts cannot pile up QEMUs or threads here.
//
// Thread-safety: Start/Stop from one thread; active_sessions() from any thread. Handlers run
// concurrently with each other.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/status.h"
#include "migrate/session.h"
#include "migrate/tls.h"

namespace spdlog {
class logger;
}

namespace sod {

// Serves one incoming session until the migration it carries ends. Runs on its own thread. Must
// return within a bounded time once its peer stops talking (the session's timeouts see to that),
// because Stop waits for it.
using SessionHandler = std::function<void(std::unique_ptr<Session> session)>;

// The placeholder handler until the destination engine is wired: logs the session and its peer
// and closes it (an Abort with kUnsupported "no migration engine", so the peer knows why).
SessionHandler LoggingSessionHandler(std::shared_ptr<spdlog::logger> log);

class MigrationListener {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    uint16_t port = 0;  // 0 picks a free port (see port())
    SessionOptions session;
    size_t max_sessions = 2;
  };

  // Listens and starts the accept thread. `tls` (a server context) must outlive the listener.
  // `log` may be null.
  static Result<std::unique_ptr<MigrationListener>> Start(TlsContext& tls, Options options,
                                                          SessionHandler handler,
                                                          std::shared_ptr<spdlog::logger> log);
  ~MigrationListener();  // Stop()
  MigrationListener(const MigrationListener&) = delete;
  MigrationListener& operator=(const MigrationListener&) = delete;

  // Stops accepting (within about a second) and waits for running handlers to return.
  void Stop();

  uint16_t port() const { return port_; }
  const Options& options() const { return options_; }
  size_t active_sessions() const { return active_.load(); }
  uint64_t accepted_sessions() const { return accepted_.load(); }
  uint64_t refused_sessions() const { return refused_.load(); }

 private:
  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  MigrationListener(Options options, SessionHandler handler, std::shared_ptr<spdlog::logger> log,
                    std::unique_ptr<SessionListener> listener);
  void AcceptLoop();
  void ReapWorkers(bool all);

  const Options options_;
  SessionHandler handler_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<SessionListener> listener_;
  uint16_t port_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> active_{0};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> refused_{0};
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<Worker> workers_;  // guarded by mu_
  bool stopped_ = false;
};

}  // namespace sod
