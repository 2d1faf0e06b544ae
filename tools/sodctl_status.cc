// sodctl status: what a host's sodd is doing (host/admin_ops.h, op "status").
#include <iostream>
#include <memory>
#include <string>

#include "tools/sodctl_commands.h"
#include "tools/sodctl_sodd.h"

namespace sod::sodctl {
namespace {

using nlohmann::json;

Status RunStatus(const SoddTarget& sodd, bool as_json) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "status"}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  const json sessions = reply.value("incoming_sessions", json::object());
  const json phase_counts = reply.value("phases", json::object());
  std::string phases;
  for (const auto& [phase, n] : phase_counts.items()) {
    phases += (phases.empty() ? "" : ", ") + std::to_string(n.get<int>()) + " " + phase;
  }
  const json vms = reply.value("vms", json::array());
  const json migrations = reply.value("migrations", json::array());
  std::vector<std::vector<std::string>> head = {
      {"host", Text(reply["host_id"]) + " (sodd pid " + Text(reply["pid"]) + ", up " +
                   Text(reply["uptime_s"]) + " s)"},
      {"listen", Text(reply["listen"]) + " (incoming sessions: " + Text(sessions["active"]) +
                     " of " + Text(sessions["max"]) + " active, " + Text(sessions["accepted"]) +
                     " accepted, " + Text(sessions["refused"]) + " refused)"},
      {"admin socket", Text(reply["admin_socket"])},
      {"state dir", Text(reply["state_dir"])},
      {"VMs", std::to_string(vms.size()) + (phases.empty() ? "" : " (" + phases + ")")},
      {"migrations",
       migrations.empty() ? "none in progress" : std::to_string(migrations.size()) + " (below)"}};
  PrintTable(head);
  if (!vms.empty()) {
    std::cout << "\n";
    std::vector<std::vector<std::string>> rows = {{"VM", "PHASE", "PID", "HOST PORT"}};
    for (const json& vm : vms) {
      uint64_t pid = vm.value("pid", 0u);
      uint64_t port = vm.value("host_port", 0u);
      rows.push_back({Text(vm["name"]), Text(vm["phase"]), pid ? std::to_string(pid) : "-",
                      port ? std::to_string(port) : "-"});
    }
    PrintTable(rows);
  }
  if (!migrations.empty()) {
    std::cout << "\n";
    std::vector<std::vector<std::string>> rows = {{"VM", "PHASE", "MIGRATION", "NOTE"}};
    for (const json& m : migrations) {
      rows.push_back({Text(m["vm"]), Text(m["phase"]), Text(m["migration_id"]), Text(m["note"])});
    }
    PrintTable(rows);
  }
  return Status::Ok();
}

}  // namespace

void AddStatusCommand(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                      CommandAction& action) {
  CLI::App* cmd = app.add_subcommand(
      "status",
      "Show what this host's sodd is doing: host id, migration listen address and incoming "
      "sessions, admin socket, state dir, VMs by phase, migrations in progress or in doubt");
  cmd->fallthrough();
  cmd->footer(
      "sodd is found by --socket PATH or --state-dir DIR (default /var/lib/sod; env SOD_SOCKET, "
      "SOD_STATE_DIR), given before or after the command.\n"
      "Exit status: 0 on success, 1 on error, 2 on a usage error, 3 when sodd cannot be "
      "reached.");
  auto as_json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *as_json, "Print sodd's reply as JSON (for scripts)");
  cmd->callback([sodd, as_json, &action] {
    action = [sodd, as_json] { return RunStatus(*sodd, *as_json); };
  });
}

}  // namespace sod::sodctl
