// sodctl: the connection to sodd's admin socket and the options that locate it.
#include "tools/sodctl_sodd.h"

#include <algorithm>
#include <chrono>
#include <iostream>

#include "host/admin_client.h"
#include "tools/sodctl_commands.h"

namespace sod::sodctl {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {
constexpr milliseconds kConnectTimeout{3000};
// Starting a VM may launch QEMU up to three times (each bounded by Vm::kLaunchTimeout), stopping
// one waits for its grace period: allow for both.
constexpr milliseconds kReplyTimeout{240000};
}  // namespace

std::shared_ptr<SoddTarget> AddSoddTargetOptions(CLI::App& app) {
  auto target = std::make_shared<SoddTarget>();
  target->state_dir = "/var/lib/sod";
  CLI::Option* socket = app.add_option("--socket", target->socket,
                                       "sodd's admin socket [default: STATE-DIR/sodd.sock]")
                            ->envname("SOD_SOCKET")
                            ->type_name("PATH");
  app.add_option("--state-dir", target->state_dir, "sodd's state directory")
      ->envname("SOD_STATE_DIR")
      ->capture_default_str()
      ->type_name("DIR")
      ->excludes(socket);
  return target;
}

bool IsSoddUnreachable(const Status& status) { return sod::IsSoddUnreachable(status); }

Result<json> CallSodd(const SoddTarget& target, const json& request,
                      const std::function<void(const json&)>& on_event) {
  SOD_ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> client,
                       AdminClient::Connect(target.SocketPath(), kConnectTimeout));
  return client->Call(request, on_event, kReplyTimeout);
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << line << "\n";
  }
}

void PrintJson(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

std::string Text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  return v.dump();
}

}  // namespace sod::sodctl

namespace sod::sodctl {

Status AddHostPort(json& request, const std::string& host_port, std::string_view what) {
  std::string host = host_port;
  if (auto colon = host_port.rfind(':'); colon != std::string::npos) {
    host = host_port.substr(0, colon);
    unsigned long port = 0;
    try {
      port = std::stoul(host_port.substr(colon + 1));
    } catch (...) {
      port = 0;
    }
    if (port == 0 || port > 65535)
      return Error(Errc::kInvalidArgument,
                   std::string(what) + ": expected HOST[:PORT], got " + host_port);
    request["port"] = port;
  }
  if (host.empty())
    return Error(Errc::kInvalidArgument, std::string(what) + ": expected HOST[:PORT], got " + host_port);
  request["to"] = host;
  return Status::Ok();
}

}  // namespace sod::sodctl
