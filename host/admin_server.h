// AdminServer: sodd's admin API over a unix socket (protocol in host/admin_protocol.h).
//
// One accept thread; each connection is served on its own thread (at most max_connections at a
// time, extra ones get a "refused" error line and are closed). Only clients running as root or as
// sodd's own user are served (SO_PEERCRED); the socket file is mode 0600 as well.
//
// Ops are registered by name before Start (host/admin_ops.h registers the VM and status ops; the
// migration engine registers "migrate" and "recover"). An op runs on its connection's thread, may
// take as long as it needs, and streams progress with AdminEvents::Emit.
//
// Thread-safety: Register only before Start; Start and Stop from one thread. Ops run concurrently
// with each other and must be thread-safe themselves.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>

#include "base/status.h"
#include "migrate/socket.h"

namespace spdlog {
class logger;
}

namespace sod {

// The event lines of one request. Used by the op on its connection's thread only.
class AdminEvents {
 public:
  // Sends {"event":"<kind>", ...fields} (fields must be an object; "event" in it is overwritten).
  // kClosed once the client has gone (the op may finish its work anyway, nobody will see it).
  Status Emit(std::string_view kind, const nlohmann::json& fields = nlohmann::json::object());
  bool client_gone() const { return gone_; }

 private:
  friend class AdminServer;
  explicit AdminEvents(int fd) : fd_(fd) {}
  int fd_;
  bool gone_ = false;
};

// An op: the result object is merged into the final {"ok":true,...} line; an error becomes the
// final {"ok":false,"error":{...}} line. `request` is the whole request object (with "op").
using AdminOp =
    std::function<Result<nlohmann::json>(const nlohmann::json& request, AdminEvents& events)>;

class AdminServer {
 public:
  struct Options {
    std::string socket_path;
    size_t max_connections = 16;
    // A connection that sends no complete request line for this long is closed.
    std::chrono::milliseconds idle_timeout{60000};
  };

  // `log` may be null (no logging).
  AdminServer(Options options, std::shared_ptr<spdlog::logger> log);
  ~AdminServer();  // Stop()
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Adds (or replaces) the op `name`. Only before Start.
  void Register(std::string name, AdminOp op);
  bool HasOp(std::string_view name) const { return ops_.count(std::string(name)) != 0; }

  // Creates the socket (a stale socket file is replaced; a live server at the path, or a
  // non-socket file there, is refused with kState) and starts accepting.
  Status Start();
  // Stops accepting, closes idle connections, shuts down the sockets of running ops (their events
  // then fail with kClosed) and waits for every connection thread to end. Removes the socket file.
  void Stop();

  const std::string& socket_path() const { return options_.socket_path; }

 private:
  struct Connection {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  void AcceptLoop();
  void Serve(Connection& c);
  // Runs one request line; false when the connection must be closed afterwards.
  bool HandleLine(int fd, std::string_view line);
  void ReapFinished(bool all);

  const Options options_;
  std::shared_ptr<spdlog::logger> log_;
  std::map<std::string, AdminOp> ops_;  // read-only after Start
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // eventfd: readable once Stop was called
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<Connection> connections_;  // guarded by mu_
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace sod
