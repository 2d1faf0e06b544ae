#include "host/admin_protocol.h"

#include <string>

namespace sod {

nlohmann::json AdminErrorReply(const Status& status) {
  return {
      {"ok", false},
      {"error", {{"code", std::string(ErrcName(status.code()))}, {"message", status.message()}}}};
}

std::optional<Errc> ErrcFromName(std::string_view name) {
  for (uint16_t v = 0;; ++v) {
    std::optional<Errc> c = ErrcFromWire(v);
    if (!c) return std::nullopt;
    if (ErrcName(*c) == name) return c;
  }
}

Status AdminReplyStatus(const nlohmann::json& reply) {
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean()) {
    return Error(Errc::kMalformed, "sodd reply without a boolean \"ok\"");
  }
  if (reply["ok"].get<bool>()) return Status::Ok();
  const nlohmann::json& err = reply.contains("error") ? reply["error"] : nlohmann::json();
  std::string message = "(no message)";
  Errc code = Errc::kInternal;
  if (err.is_object()) {
    if (err.contains("message") && err["message"].is_string()) message = err["message"];
    if (err.contains("code") && err["code"].is_string()) {
      std::optional<Errc> c = ErrcFromName(err["code"].get<std::string>());
      if (c && *c != Errc::kOk) code = *c;
    }
  }
  return Error(code, message);
}

}  // namespace sod
