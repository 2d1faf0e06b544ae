#include "migrate/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

namespace sod {

namespace {

using Clock = std::chrono::steady_clock;

// Deepest JSON nesting accepted from QEMU; real QMP replies stay far below this.
constexpr int kMaxDepth = 1024;
constexpr size_t kReadChunk = 64 * 1024;
constexpr std::chrono::milliseconds kConnectRetry{10};

std::string ErrnoText(int err) { return std::strerror(err); }

// Milliseconds left until `deadline` for poll(): rounded up so a poll never returns before the
// deadline; 0 when it has passed.
int PollTimeoutMs(Clock::time_point deadline) {
  auto now = Clock::now();
  if (deadline <= now) return 0;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  return Clock::now() + std::max(timeout, std::chrono::milliseconds(0));
}

bool IsClosedErrno(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

// Maps QEMU's error class to the closest Errc. Callers mostly need "QEMU refused"; the two
// classes that name a missing thing are kept apart so the engine can tell "this QEMU lacks the
// command" (e.g. no engine-mode patch) from a refused request.
Errc ErrcForQmpClass(std::string_view cls) {
  if (cls == "CommandNotFound") return Errc::kUnsupported;
  if (cls == "DeviceNotFound") return Errc::kNotFound;
  return Errc::kRefused;
}

Status QmpErrorStatus(std::string_view command, const nlohmann::json& error) {
  std::string cls = "UnknownClass";
  std::string desc = "(no description)";
  if (error.is_object()) {
    auto c = error.find("class");
    if (c != error.end() && c->is_string()) cls = c->get<std::string>();
    auto d = error.find("desc");
    if (d != error.end() && d->is_string()) desc = d->get<std::string>();
  }
  std::string msg = "qmp: ";
  msg.append(command);
  msg += " failed: " + cls + ": " + desc;
  return Error(ErrcForQmpClass(cls), std::move(msg));
}

}  // namespace

QmpClient::QmpClient(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}

QmpClient::~QmpClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& socket_path,
                                                      std::chrono::milliseconds timeout) {
  const auto deadline = DeadlineAfter(timeout);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Error(Errc::kInvalidArgument, "qmp " + socket_path +
                                             ": socket path empty or longer than " +
                                             std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  int last_err = 0;
  for (;;) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Error(Errc::kIo, "qmp " + socket_path + ": socket: " + ErrnoText(errno));
    int rc;
    do {
      rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return Open(fd, socket_path, deadline);
    last_err = errno;
    ::close(fd);
    // Not there yet (QEMU still starting) or not listening yet: retry until the deadline.
    if (last_err != ENOENT && last_err != ECONNREFUSED && last_err != EAGAIN) {
      return Error(Errc::kIo, "qmp " + socket_path + ": connect: " + ErrnoText(last_err));
    }
    auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(kConnectRetry, deadline - now));
  }
  return Error(Errc::kTimeout, "qmp " + socket_path + ": no QMP server after " +
                                   std::to_string(timeout.count()) +
                                   " ms (last error: " + ErrnoText(last_err) + ")");
}

Result<std::unique_ptr<QmpClient>> QmpClient::FromConnectedFd(int fd, std::string name,
                                                              std::chrono::milliseconds timeout) {
  return Open(fd, std::move(name), DeadlineAfter(timeout));
}

Result<std::unique_ptr<QmpClient>> QmpClient::Open(int fd, std::string name,
                                                   Clock::time_point deadline) {
  if (fd < 0) return Error(Errc::kInvalidArgument, "qmp " + name + ": invalid fd");
  std::unique_ptr<QmpClient> client(new QmpClient(fd, std::move(name)));
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return Error(Errc::kIo, "qmp " + client->name_ + ": fcntl: " + ErrnoText(errno));
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  SOD_RETURN_IF_ERROR(client->Handshake(deadline));
  return client;
}

Status QmpClient::Handshake(Clock::time_point deadline) {
  auto greeting = ReadMessage(deadline);
  if (!greeting.ok()) return greeting.status().WithContext("waiting for the QMP greeting");
  auto qmp = greeting->find("QMP");
  if (qmp == greeting->end() || !qmp->is_object()) {
    return Fail(
        Error(Errc::kUnsupported, "qmp " + name_ + ": first message is not a QMP greeting"));
  }
  auto ver = qmp->find("version");
  if (ver != qmp->end() && ver->is_object()) {
    auto q = ver->find("qemu");
    if (q != ver->end() && q->is_object()) {
      auto num = [&](const char* key) {
        auto it = q->find(key);
        return it != q->end() && it->is_number_integer() ? it->get<int>() : 0;
      };
      version_.major = num("major");
      version_.minor = num("minor");
      version_.micro = num("micro");
    }
    auto pkg = ver->find("package");
    if (pkg != ver->end() && pkg->is_string()) version_.package = pkg->get<std::string>();
  }
  auto r = Call("qmp_capabilities", nlohmann::json(), -1, deadline);
  return r.status();
}

Result<nlohmann::json> QmpClient::Execute(std::string_view command, const nlohmann::json& args,
                                          std::chrono::milliseconds timeout) {
  return Call(command, args, -1, DeadlineAfter(timeout));
}

Status QmpClient::SendFd(const std::string& fdname, int fd, std::chrono::milliseconds timeout) {
  if (fd < 0) return Error(Errc::kInvalidArgument, "qmp " + name_ + ": getfd with an invalid fd");
  return Call("getfd", nlohmann::json{{"fdname", fdname}}, fd, DeadlineAfter(timeout)).status();
}

Result<nlohmann::json> QmpClient::Call(std::string_view command, const nlohmann::json& args,
                                       int pass_fd, Clock::time_point deadline) {
  if (!broken_.ok()) return broken_;
  if (!args.is_null() && !args.is_object()) {
    return Error(Errc::kInvalidArgument,
                 "qmp: " + std::string(command) + ": arguments must be a JSON object");
  }
  const uint64_t id = next_id_++;
  nlohmann::json request = {{"execute", command}, {"id", id}};
  if (args.is_object() && !args.empty()) request["arguments"] = args;
  std::string text;
  try {
    text = request.dump();
  } catch (const nlohmann::json::exception& e) {
    // Only reachable with strings that are not valid UTF-8.
    return Error(Errc::kInvalidArgument,
                 "qmp: " + std::string(command) + ": cannot encode arguments: " + e.what());
  }
  text.push_back('\n');
  SOD_RETURN_IF_ERROR(WriteMessage(text, pass_fd, deadline));

  for (;;) {
    auto msg = ReadMessage(deadline);
    if (!msg.ok()) {
      if (msg.status().code() == Errc::kTimeout) {
        return Error(Errc::kTimeout, "qmp " + name_ + ": no reply to " + std::string(command) +
                                         " (id " + std::to_string(id) + ") in time");
      }
      return msg.status();
    }
    if (msg->contains("event")) {
      SOD_RETURN_IF_ERROR(QueueEvent(*msg));
      continue;
    }
    const bool is_return = msg->contains("return");
    const bool is_error = msg->contains("error");
    if (!is_return && !is_error) {
      return Fail(Error(
          Errc::kMalformed,
          "qmp " + name_ + ": message is neither reply nor event: " +
              msg->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 200)));
    }
    auto mid = msg->find("id");
    if (mid == msg->end()) {
      // QEMU omits the id only when it could not parse the request; that is this request.
      if (is_error) return QmpErrorStatus(command, (*msg)["error"]);
      return Fail(Error(Errc::kMalformed, "qmp " + name_ + ": reply without id"));
    }
    if (!mid->is_number_unsigned() || mid->get<uint64_t>() != id) {
      continue;  // a late reply to an earlier request that timed out
    }
    if (is_error) return QmpErrorStatus(command, (*msg)["error"]);
    return std::move((*msg)["return"]);
  }
}

Status QmpClient::WriteMessage(const std::string& text, int pass_fd, Clock::time_point deadline) {
  size_t off = 0;
  bool fd_sent = pass_fd < 0;
  while (off < text.size()) {
    ssize_t n;
    if (!fd_sent) {
      iovec iov{const_cast<char*>(text.data()), text.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof(control);
      cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
      n = ::sendmsg(fd_, &mh, MSG_NOSIGNAL);
      if (n > 0) fd_sent = true;  // the descriptor travels with the first byte
    } else {
      n = ::send(fd_, text.data() + off, text.size() - off, MSG_NOSIGNAL);
    }
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      int rc = ::poll(&p, 1, PollTimeoutMs(deadline));
      if (rc < 0 && errno == EINTR) continue;
      if (rc < 0) return Fail(Error(Errc::kIo, "qmp " + name_ + ": poll: " + ErrnoText(errno)));
      if (rc == 0) {
        // Nothing or part of the message went out: the stream can no longer be trusted.
        return Fail(Error(Errc::kTimeout, "qmp " + name_ + ": send timed out"));
      }
      continue;
    }
    int err = n < 0 ? errno : EPIPE;
    if (IsClosedErrno(err)) {
      return Fail(Error(Errc::kClosed, "qmp " + name_ + ": QEMU closed the QMP connection (send: " +
                                           ErrnoText(err) + ")"));
    }
    if (!fd_sent && (err == EBADF || err == EINVAL) && off == 0) {
      // sendmsg refused the descriptor itself; nothing was sent, the session is intact.
      return Error(Errc::kInvalidArgument, "qmp " + name_ + ": cannot pass fd " +
                                               std::to_string(pass_fd) + ": " + ErrnoText(err));
    }
    return Fail(Error(Errc::kIo, "qmp " + name_ + ": send: " + ErrnoText(err)));
  }
  return Status::Ok();
}

Result<std::optional<nlohmann::json>> QmpClient::TakeBufferedMessage() {
  while (scan_pos_ < inbuf_.size()) {
    const char c = inbuf_[scan_pos_];
    if (depth_ == 0) {
      // Between messages: skip whitespace, expect the '{' of the next object.
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        ++scan_pos_;
        continue;
      }
      if (c != '{') {
        return Fail(Error(Errc::kMalformed, "qmp " + name_ + ": unexpected byte " +
                                                std::to_string(static_cast<unsigned char>(c)) +
                                                " between messages (expected '{')"));
      }
      inbuf_.erase(0, scan_pos_);  // the message now starts at offset 0
      scan_pos_ = 1;
      depth_ = 1;
      in_string_ = false;
      escape_ = false;
      continue;
    }
    ++scan_pos_;
    if (in_string_) {
      if (escape_) {
        escape_ = false;
      } else if (c == '\\') {
        escape_ = true;
      } else if (c == '"') {
        in_string_ = false;
      }
      continue;
    }
    if (c == '"') {
      in_string_ = true;
    } else if (c == '{' || c == '[') {
      if (++depth_ > kMaxDepth) {
        return Fail(Error(Errc::kMalformed, "qmp " + name_ + ": message nested deeper than " +
                                                std::to_string(kMaxDepth)));
      }
    } else if (c == '}' || c == ']') {
      if (--depth_ == 0) {
        if (scan_pos_ > kMaxMessageBytes) return TooLarge();
        auto msg = nlohmann::json::parse(inbuf_.begin(), inbuf_.begin() + scan_pos_, nullptr,
                                         /*allow_exceptions=*/false);
        inbuf_.erase(0, scan_pos_);
        scan_pos_ = 0;
        if (msg.is_discarded() || !msg.is_object()) {
          return Fail(Error(Errc::kMalformed, "qmp " + name_ + ": message is not valid JSON"));
        }
        return std::optional<nlohmann::json>(std::move(msg));
      }
    }
  }
  if (depth_ == 0) {
    inbuf_.clear();  // only whitespace was buffered
    scan_pos_ = 0;
  } else if (inbuf_.size() > kMaxMessageBytes) {
    return TooLarge();
  }
  return std::optional<nlohmann::json>();
}

Result<bool> QmpClient::FillBuffer(Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, PollTimeoutMs(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return Fail(Error(Errc::kIo, "qmp " + name_ + ": poll: " + ErrnoText(errno)));
    if (rc == 0) return false;
    break;
  }
  // Never buffer more than one maximal message plus one chunk.
  const size_t old = inbuf_.size();
  inbuf_.resize(old + kReadChunk);
  ssize_t n;
  do {
    n = ::recv(fd_, inbuf_.data() + old, kReadChunk, 0);
  } while (n < 0 && errno == EINTR);
  inbuf_.resize(old + static_cast<size_t>(std::max<ssize_t>(n, 0)));
  if (n > 0) return true;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  int err = n < 0 ? errno : 0;
  if (n == 0 || IsClosedErrno(err)) {
    std::string what = "qmp " + name_ + ": QEMU closed the QMP connection";
    if (depth_ > 0) what += " in the middle of a message";
    if (err != 0) what += " (" + ErrnoText(err) + ")";
    return Fail(Error(Errc::kClosed, std::move(what)));
  }
  return Fail(Error(Errc::kIo, "qmp " + name_ + ": recv: " + ErrnoText(err)));
}

Result<nlohmann::json> QmpClient::ReadMessage(Clock::time_point deadline) {
  if (!broken_.ok()) return broken_;
  for (;;) {
    SOD_ASSIGN_OR_RETURN(auto msg, TakeBufferedMessage());
    if (msg) return std::move(*msg);
    SOD_ASSIGN_OR_RETURN(bool got, FillBuffer(deadline));
    if (!got && Clock::now() >= deadline) {
      return Error(Errc::kTimeout, "qmp " + name_ + ": timed out waiting for QEMU");
    }
  }
}

Status QmpClient::QueueEvent(const nlohmann::json& msg) {
  if (events_.size() >= kMaxQueuedEvents) {
    return Fail(Error(Errc::kTooLarge, "qmp " + name_ + ": more than " +
                                           std::to_string(kMaxQueuedEvents) +
                                           " undelivered events"));
  }
  auto name = msg.find("event");
  if (name == msg.end() || !name->is_string()) {
    return Fail(Error(Errc::kMalformed, "qmp " + name_ + ": event without a name"));
  }
  QmpEvent ev;
  ev.name = name->get<std::string>();
  auto data = msg.find("data");
  ev.data = data != msg.end() ? *data : nlohmann::json::object();
  auto ts = msg.find("timestamp");
  if (ts != msg.end() && ts->is_object()) {
    auto s = ts->find("seconds");
    auto us = ts->find("microseconds");
    if (s != ts->end() && s->is_number()) ev.timestamp = s->get<double>();
    if (us != ts->end() && us->is_number()) ev.timestamp += us->get<double>() / 1e6;
  }
  events_.push_back(std::move(ev));
  return Status::Ok();
}

Result<QmpEvent> QmpClient::WaitEvent(const std::function<bool(const QmpEvent&)>& match,
                                      std::chrono::milliseconds timeout) {
  const auto deadline = DeadlineAfter(timeout);
  for (auto it = events_.begin(); it != events_.end(); ++it) {
    if (match(*it)) {
      QmpEvent ev = std::move(*it);
      events_.erase(it);
      return ev;
    }
  }
  for (;;) {
    auto msg = ReadMessage(deadline);
    if (!msg.ok()) {
      if (msg.status().code() == Errc::kTimeout) {
        return Error(Errc::kTimeout, "qmp " + name_ + ": no matching event within " +
                                         std::to_string(timeout.count()) + " ms");
      }
      return msg.status();
    }
    if (!msg->contains("event")) continue;  // a late reply to a timed-out request
    SOD_RETURN_IF_ERROR(QueueEvent(*msg));
    if (match(events_.back())) {
      QmpEvent ev = std::move(events_.back());
      events_.pop_back();
      return ev;
    }
  }
}

Result<QmpEvent> QmpClient::WaitEventNamed(std::string_view name,
                                           std::chrono::milliseconds timeout) {
  return WaitEvent([name](const QmpEvent& ev) { return ev.name == name; }, timeout);
}

std::optional<QmpEvent> QmpClient::PollEvent() {
  // Drain what the socket already holds; stop on the first error (it is kept in broken_).
  const auto now = Clock::now();
  while (broken_.ok()) {
    auto msg = TakeBufferedMessage();
    if (!msg.ok()) break;
    if (*msg) {
      if ((*msg)->contains("event") && !QueueEvent(**msg).ok()) break;
      continue;  // replies here are late replies to timed-out requests
    }
    auto got = FillBuffer(now);
    if (!got.ok() || !*got) break;
  }
  if (events_.empty()) return std::nullopt;
  QmpEvent ev = std::move(events_.front());
  events_.pop_front();
  return ev;
}

Status QmpClient::TooLarge() {
  return Fail(Error(Errc::kTooLarge, "qmp " + name_ + ": message longer than " +
                                         std::to_string(kMaxMessageBytes) + " bytes"));
}

Status QmpClient::Fail(Status s) {
  if (broken_.ok()) broken_ = s;
  return s;
}

}  // namespace sod
