// AdminClient: the client side of sodd's admin protocol (host/admin_protocol.h), used by sodctl and
// the tests.
//
// Errors: a failure to connect is reported with a message that starts with kSoddUnreachable
// ("cannot reach sodd at <path>: ...", codes kNotFound / kIo / kRefused / kTimeout), so that
// sodctl can tell "sodd is not there" (exit 3) from "sodd said no" (exit 1). An {"ok":false} reply
// becomes a Status with the code and message sodd sent.
//
// Thread-safety: not thread-safe; one request at a time.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/status.h"
#include "migrate/socket.h"

namespace sod {

inline constexpr std::string_view kSoddUnreachable = "cannot reach sodd";

// True for the connection failures of AdminClient::Connect (and a connection that sodd closed
// before answering).
bool IsSoddUnreachable(const Status& status);

class AdminClient {
 public:
  static Result<std::unique_ptr<AdminClient>> Connect(const std::string& socket_path,
                                                      std::chrono::milliseconds timeout);
  AdminClient(const AdminClient&) = delete;
  AdminClient& operator=(const AdminClient&) = delete;

  // Sends `request` (an object with "op") and returns the final reply object when it says ok.
  // Each event line is passed to `on_event` (may be empty) as it arrives. `idle_timeout` bounds
  // the wait for each line (zero: wait forever, e.g. for a long migration). Errors: the error sodd
  // sent, kTimeout, kClosed / kMalformed / kTooLarge for a broken connection or reply.
  Result<nlohmann::json> Call(const nlohmann::json& request,
                              const std::function<void(const nlohmann::json&)>& on_event,
                              std::chrono::milliseconds idle_timeout);

 private:
  AdminClient(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Result<std::string> ReadLine(std::chrono::milliseconds idle_timeout);

  UniqueFd fd_;
  std::string path_;
  std::string buf_;
};

}  // namespace sod
