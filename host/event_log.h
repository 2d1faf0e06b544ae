// Host events of sodd (a VM started, stopped, adopted, lost, leased for a migration, ...).
//
// Components report events through an EventSink; what receives them is the daemon's choice. The
// sink has the shape of AuditLog::Append (migrate/audit_log.h), so the hash-chained audit log can
// be plugged in directly; until then sodd appends plain JSON lines to <state dir>/events.log with
// JsonLinesEventLog.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

// One event: `kind` is 1..64 characters of [a-z0-9._-] ("vm.started"), `data` a JSON object.
// Called on whatever thread the event happens; must be thread-safe, must not call back into the
// component that reports, and never fails the reporting operation (a sink logs its own errors).
using EventSink = std::function<void(std::string_view kind, const nlohmann::json& data)>;

// Appends {"data":{...},"host":"<host id>","kind":"...","time":"<RFC 3339 UTC>"} lines to a file
// (created 0600, opened O_APPEND; one write() per line). Not tamper-evident: that is AuditLog's
// job. Thread-safe.
class JsonLinesEventLog {
 public:
  static Result<std::unique_ptr<JsonLinesEventLog>> Open(const std::string& path,
                                                         std::string host_id);
  ~JsonLinesEventLog();
  JsonLinesEventLog(const JsonLinesEventLog&) = delete;
  JsonLinesEventLog& operator=(const JsonLinesEventLog&) = delete;

  // kIo when the line could not be written whole.
  Status Append(std::string_view kind, const nlohmann::json& data);
  // A sink that appends here and drops write errors. This log must outlive the sink.
  EventSink Sink();
  const std::string& path() const { return path_; }

 private:
  JsonLinesEventLog(int fd, std::string path, std::string host_id)
      : fd_(fd), path_(std::move(path)), host_id_(std::move(host_id)) {}
  const int fd_;
  const std::string path_;
  const std::string host_id_;
  std::mutex mu_;  // one line at a time
};

// Current UTC time, RFC 3339 with milliseconds ("2025-01-31T12:00:00.123Z").
std::string NowRfc3339();

}  // namespace sod
