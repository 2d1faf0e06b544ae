// The admin protocol of sodd: JSON lines over a unix stream socket (default <state dir>/sodd.sock,
// mode 0600, root or sodd's own user only).
//
//   client -> sodd   {"op":"vm.show","name":"web1"}\n
//   sodd -> client   {"event":"progress",...}\n      zero or more, in order
//                    {"ok":true,...result...}\n       exactly one final line
//                or  {"ok":false,"error":{"code":"not-found","message":"no VM named web1 ..."}}\n
//
// A connection may carry several requests one after another. Each line is at most
// kMaxAdminLineBytes; a longer or unparsable request gets a final error ("too-large" /
// "malformed") and the connection is closed. Error codes are the names of base/status.h's Errc
// ("not-found", "state", "invalid-argument", ...).
//
// Ops (host/admin_ops.h): vm.start {spec}, vm.list, vm.show {name}, vm.stop {name, force?},
// status; migrate {name, to, port, ...} and recover {name} are placed by the migration engine.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "base/status.h"

namespace sod {

inline constexpr size_t kMaxAdminLineBytes = size_t{1} << 20;

// {"ok":false,"error":{"code":"<ErrcName>","message":"..."}}. Precondition: !status.ok().
nlohmann::json AdminErrorReply(const Status& status);
// The Status of a final reply: OK for {"ok":true,...}; the carried error for {"ok":false,...};
// kMalformed for anything else.
Status AdminReplyStatus(const nlohmann::json& reply);
// Inverse of ErrcName; std::nullopt for an unknown name.
std::optional<Errc> ErrcFromName(std::string_view name);

}  // namespace sod
