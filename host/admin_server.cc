#include "host/admin_server.h"

#include <errno.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <exception>

#include "host/admin_protocol.h"

namespace sod {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kWriteTimeout{10000};

std::string ErrnoText(int err) { return std::strerror(err); }

// Writes all of `text` to the non-blocking socket `fd`, waiting up to kWriteTimeout for room.
Status SendAll(int fd, std::string_view text) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      int r = ::poll(&p, 1, static_cast<int>(kWriteTimeout.count()));
      if (r == 0) return Error(Errc::kTimeout, "admin client does not read");
      if (r < 0 && errno != EINTR) return Error(Errc::kIo, "poll: " + ErrnoText(errno));
      continue;
    }
    return Error(Errc::kClosed, "admin client went away: " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status SendLine(int fd, const json& j) {
  return SendAll(fd, j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
}

bool SocketAnswers(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

Status AdminEvents::Emit(std::string_view kind, const json& fields) {
  if (gone_) return Error(Errc::kClosed, "admin client went away");
  json line = fields.is_object() ? fields : json::object();
  line["event"] = std::string(kind);
  Status s = SendLine(fd_, line);
  if (!s.ok()) gone_ = true;
  return s;
}

AdminServer::AdminServer(Options options, std::shared_ptr<spdlog::logger> log)
    : options_(std::move(options)), log_(std::move(log)) {}

AdminServer::~AdminServer() { Stop(); }

void AdminServer::Register(std::string name, AdminOp op) { ops_[std::move(name)] = std::move(op); }

Status AdminServer::Start() {
  if (started_) return Error(Errc::kState, "admin server already started");
  const std::string& path = options_.socket_path;
  const std::string what = "admin socket " + path;
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Error(Errc::kInvalidArgument, what + ": empty or too long for a unix socket");
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error(Errc::kState, what + ": exists and is not a socket");
    if (SocketAnswers(path)) return Error(Errc::kState, what + ": another server answers there");
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Error(Errc::kIo, what + ": socket: " + ErrnoText(errno));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    return Error(Errc::kIo, what + ": bind: " + ErrnoText(errno));
  }
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(fd.get(), 16) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return Error(Errc::kIo, what + ": chmod/listen: " + ErrnoText(err));
  }
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) {
    ::unlink(path.c_str());
    return Error(Errc::kIo, what + ": eventfd: " + ErrnoText(errno));
  }
  listen_fd_ = std::move(fd);
  stop_fd_ = std::move(stop);
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void AdminServer::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  uint64_t one = 1;
  (void)!::write(stop_fd_.get(), &one, sizeof one);
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Connection& c : connections_) ::shutdown(c.fd.get(), SHUT_RDWR);
  }
  ReapFinished(/*all=*/true);
  ::unlink(options_.socket_path.c_str());
  listen_fd_.Reset();
}

void AdminServer::ReapFinished(bool all) {
  std::list<Connection> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (all || it->done.load()) {
        auto next = std::next(it);
        finished.splice(finished.end(), connections_, it);
        it = next;
      } else {
        ++it;
      }
    }
  }
  for (Connection& c : finished) {
    if (c.thread.joinable()) c.thread.join();
  }
}

void AdminServer::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    int r = ::poll(p, 2, 1000);
    if (p[1].revents != 0) return;
    ReapFinished(/*all=*/false);
    if (r <= 0) continue;
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) continue;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != 0 && cred.uid != ::geteuid())) {
      (void)SendLine(fd.get(), AdminErrorReply(Error(Errc::kRefused, "only root may use sodd")));
      if (log_) log_->warn("admin: refused a client with uid {}", cred.uid);
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (connections_.size() >= options_.max_connections) {
      (void)SendLine(fd.get(),
                     AdminErrorReply(Error(Errc::kRefused, "busy: too many admin connections")));
      continue;
    }
    Connection& c = connections_.emplace_back();
    c.fd = std::move(fd);
    c.thread = std::thread([this, &c] {
      Serve(c);
      c.done = true;
    });
  }
}

void AdminServer::Serve(Connection& c) {
  const int fd = c.fd.get();
  std::string buf;
  auto deadline = std::chrono::steady_clock::now() + options_.idle_timeout;
  char chunk[8192];
  for (;;) {
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (!HandleLine(fd, line)) return;
      deadline = std::chrono::steady_clock::now() + options_.idle_timeout;
    }
    if (buf.size() > kMaxAdminLineBytes) {
      (void)SendLine(fd, AdminErrorReply(Error(Errc::kTooLarge,
                                               "request line longer than " +
                                                   std::to_string(kMaxAdminLineBytes) + " bytes")));
      return;
    }
    auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    int r = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r < 0 && errno != EINTR) return;
    if (p[1].revents != 0) return;
    if (r <= 0 || p[0].revents == 0) continue;
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;
    buf.append(chunk, static_cast<size_t>(n));
  }
}

bool AdminServer::HandleLine(int fd, std::string_view line) {
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object() || !req.contains("op") || !req["op"].is_string()) {
    (void)SendLine(fd, AdminErrorReply(Error(Errc::kMalformed,
                                             "a request is one JSON object with a string \"op\"")));
    return false;
  }
  const std::string op = req["op"].get<std::string>();
  auto it = ops_.find(op);
  if (it == ops_.end()) {
    std::string known;
    for (const auto& [name, fn] : ops_) known += (known.empty() ? "" : ", ") + name;
    return SendLine(fd, AdminErrorReply(Error(Errc::kUnsupported,
                                              "unknown op \"" + op + "\" (known: " + known + ")")))
        .ok();
  }
  AdminEvents events(fd);
  Result<json> result = Error(Errc::kInternal, "op did not run");
  try {
    result = it->second(req, events);
  } catch (const std::exception& e) {
    result = Error(Errc::kInternal, "op " + op + " failed: " + e.what());
  }
  json reply;
  if (result.ok()) {
    reply = result->is_object() ? *result : json{{"result", *result}};
    reply["ok"] = true;
    if (log_) log_->debug("admin: {} ok", op);
  } else {
    reply = AdminErrorReply(result.status());
    if (log_) log_->info("admin: {} failed: {}", op, result.status().ToString());
  }
  return SendLine(fd, reply).ok() && !events.client_gone();
}

}  // namespace sod
