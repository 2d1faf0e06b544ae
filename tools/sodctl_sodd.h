// What the sodctl groups that talk to sodd share: how to reach it (--socket / --state-dir), one
// request/reply exchange over the admin socket, and plain-text table output.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/status.h"

namespace sod::sodctl {

// Filled in by parsing the top-level options; read by the actions when they run.
struct SoddTarget {
  std::string socket;     // --socket; empty: <state_dir>/sodd.sock
  std::string state_dir;  // --state-dir
  std::string SocketPath() const { return socket.empty() ? state_dir + "/sodd.sock" : socket; }
};

// One request to sodd. `on_event` (may be empty) sees each event line. A connection failure is
// returned as such (IsSoddUnreachable, exit status 3).
Result<nlohmann::json> CallSodd(const SoddTarget& target, const nlohmann::json& request,
                                const std::function<void(const nlohmann::json&)>& on_event = {});

// Sets request["to"] (and ["port"] when given) from "HOST[:PORT]"; `what` names the option in
// the error.
Status AddHostPort(nlohmann::json& request, const std::string& host_port, std::string_view what);

// Prints `rows` as left-aligned columns separated by two spaces; rows[0] is the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows);
// Pretty-printed JSON for --json.
void PrintJson(const nlohmann::json& j);
// A JSON value as display text: strings bare, null as "-", everything else dumped.
std::string Text(const nlohmann::json& v);

}  // namespace sod::sodctl
