#include "host/event_log.h"

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace sod {

std::string NowRfc3339() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  time_t secs = static_cast<time_t>(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[48];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms % 1000));
  return out;
}

Result<std::unique_ptr<JsonLinesEventLog>> JsonLinesEventLog::Open(const std::string& path,
                                                                   std::string host_id) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return Error(Errc::kIo, "event log " + path + ": " + std::strerror(errno));
  return std::unique_ptr<JsonLinesEventLog>(new JsonLinesEventLog(fd, path, std::move(host_id)));
}

JsonLinesEventLog::~JsonLinesEventLog() { ::close(fd_); }

Status JsonLinesEventLog::Append(std::string_view kind, const nlohmann::json& data) {
  nlohmann::json line = {{"time", NowRfc3339()},
                         {"host", host_id_},
                         {"kind", std::string(kind)},
                         {"data", data.is_object() ? data : nlohmann::json::object()}};
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  ssize_t n;
  do {
    n = ::write(fd_, text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(text.size())) {
    return Error(Errc::kIo, "event log " + path_ + ": short write");
  }
  return Status::Ok();
}

EventSink JsonLinesEventLog::Sink() {
  return [this](std::string_view kind, const nlohmann::json& data) { (void)Append(kind, data); };
}

}  // namespace sod
