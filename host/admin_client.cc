#include "host/admin_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "host/admin_protocol.h"

namespace sod {

using nlohmann::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

bool IsSoddUnreachable(const Status& status) {
  return !status.ok() && status.message().rfind(kSoddUnreachable, 0) == 0;
}

Result<std::unique_ptr<AdminClient>> AdminClient::Connect(const std::string& socket_path,
                                                          milliseconds timeout) {
  const std::string what = std::string(kSoddUnreachable) + " at " + socket_path + ": ";
  if (socket_path.empty() || socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Error(Errc::kInvalidArgument, what + "path empty or too long for a unix socket");
  }
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Error(Errc::kIo, what + std::strerror(errno));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      return std::unique_ptr<AdminClient>(new AdminClient(std::move(fd), socket_path));
    }
    int err = errno;
    // EAGAIN: the listen backlog is full; retry until the deadline. Anything else is final.
    if (err != EAGAIN || Clock::now() >= deadline) {
      Errc code = err == ENOENT         ? Errc::kNotFound
                  : err == ECONNREFUSED ? Errc::kRefused
                  : err == EAGAIN       ? Errc::kTimeout
                                        : Errc::kIo;
      std::string hint = err == ENOENT || err == ECONNREFUSED ? " (is sodd running?)" : "";
      return Error(code, what + std::strerror(err) + hint);
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
}

Result<std::string> AdminClient::ReadLine(milliseconds idle_timeout) {
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    if (buf_.size() > kMaxAdminLineBytes) {
      return Error(Errc::kTooLarge, "sodd at " + path_ + " sent a line longer than " +
                                        std::to_string(kMaxAdminLineBytes) + " bytes");
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, idle_timeout.count() > 0 ? static_cast<int>(idle_timeout.count()) : -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error(Errc::kIo, "poll: " + std::string(std::strerror(errno)));
    if (r == 0) {
      return Error(Errc::kTimeout, "sodd at " + path_ + " did not answer within " +
                                       std::to_string(idle_timeout.count()) + " ms");
    }
    char chunk[8192];
    ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return Error(Errc::kClosed, std::string(kSoddUnreachable) + " at " + path_ +
                                      ": it closed the connection before answering");
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
}

Result<json> AdminClient::Call(const json& request,
                               const std::function<void(const json&)>& on_event,
                               milliseconds idle_timeout) {
  std::string text = request.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  size_t done = 0;
  Status send_error;
  while (done < text.size()) {
    ssize_t n = ::send(fd_.get(), text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      send_error = Error(Errc::kClosed, std::string(kSoddUnreachable) + " at " + path_ +
                                            ": send: " + std::strerror(errno));
      break;
    }
    done += static_cast<size_t>(n);
  }
  for (;;) {
    // sodd may have answered and closed before reading the request (e.g. "busy"): that answer
    // is still readable and says more than the failed send.
    Result<std::string> read = ReadLine(send_error.ok() ? idle_timeout : milliseconds(1000));
    if (!read.ok()) return send_error.ok() ? read.status() : send_error;
    std::string line = std::move(read).value();
    json msg = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (msg.is_discarded() || !msg.is_object()) {
      return Error(Errc::kMalformed, "sodd at " + path_ + " sent a line that is not a JSON object");
    }
    if (msg.contains("event")) {
      if (on_event) on_event(msg);
      continue;
    }
    SOD_RETURN_IF_ERROR(AdminReplyStatus(msg));
    return msg;
  }
}

}  // namespace sod
