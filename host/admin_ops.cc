#include "host/admin_ops.h"

#include <algorithm>
#include <map>
#include <string>

namespace sod {

using nlohmann::json;

Status CheckRequestKeys(const json& request, std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : request.items()) {
    if (key == "op") continue;
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return Error(Errc::kInvalidArgument,
                   "request " + request["op"].get<std::string>() + ": unknown key \"" + key + "\"");
    }
  }
  return Status::Ok();
}

Result<std::string> RequestString(const json& request, std::string_view key) {
  auto it = request.find(std::string(key));
  if (it == request.end() || !it->is_string()) {
    return Error(Errc::kInvalidArgument, "request " + request["op"].get<std::string>() + ": \"" +
                                             std::string(key) + "\" must be a string");
  }
  return it->get<std::string>();
}

json VmInfoToJson(const VmInfo& i) {
  json j = {{"name", i.spec.name},
            {"phase", std::string(VmPhaseName(i.record.phase))},
            {"pid", i.record.pid},
            {"host_port", i.record.host_port},
            {"guest_port", i.spec.guest_port},
            {"memory_mb", i.spec.memory_mb},
            {"vcpus", i.spec.vcpus},
            {"migration_id", i.record.migration_id},
            {"note", i.record.note},
            {"updated", i.record.updated},
            {"leased", i.leased},
            {"serial_log", i.paths.serial_log},
            {"qemu_log", i.paths.qemu_log},
            {"qmp_socket", i.paths.qmp_socket},
            {"memory_file", i.record.memory_file},
            {"spec", VmSpecToJson(i.spec)}};
  if (!i.run_state.empty()) j["run_state"] = i.run_state;
  j["vtpm"] = {{"status", i.vtpm_status}, {"epoch", i.record.vtpm_epoch}, {"pid", i.vtpm_pid}};
  return j;
}

namespace {

Result<std::string> RequestVmName(const json& request) {
  SOD_ASSIGN_OR_RETURN(std::string name, RequestString(request, "name"));
  SOD_RETURN_IF_ERROR(ValidateVmName(name));
  return name;
}

}  // namespace

void RegisterVmOps(AdminServer& server, VmRegistry& registry, VmSpecCheck check) {
  server.Register("vm.start", [&registry, check = std::move(check)](
                                  const json& req, AdminEvents&) -> Result<json> {
    SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"spec"}));
    if (!req.contains("spec")) return Error(Errc::kInvalidArgument, "vm.start: \"spec\" missing");
    SOD_ASSIGN_OR_RETURN(VmSpec spec, VmSpecFromJson(req["spec"]));
    if (check) SOD_RETURN_IF_ERROR(check(spec));
    SOD_ASSIGN_OR_RETURN(VmInfo info, registry.Start(spec));
    return json{{"vm", VmInfoToJson(info)}};
  });
  server.Register("vm.list", [&registry](const json& req, AdminEvents&) -> Result<json> {
    SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {}));
    json vms = json::array();
    for (const VmInfo& i : registry.List()) vms.push_back(VmInfoToJson(i));
    return json{{"vms", vms}};
  });
  server.Register("vm.show", [&registry](const json& req, AdminEvents&) -> Result<json> {
    SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name"}));
    SOD_ASSIGN_OR_RETURN(std::string name, RequestVmName(req));
    SOD_ASSIGN_OR_RETURN(VmInfo info, registry.Show(name));
    return json{{"vm", VmInfoToJson(info)}};
  });
  server.Register("vm.stop", [&registry](const json& req, AdminEvents&) -> Result<json> {
    SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {"name", "force"}));
    SOD_ASSIGN_OR_RETURN(std::string name, RequestVmName(req));
    bool force = false;
    if (req.contains("force")) {
      if (!req["force"].is_boolean()) {
        return Error(Errc::kInvalidArgument, "vm.stop: \"force\" must be a boolean");
      }
      force = req["force"].get<bool>();
    }
    SOD_RETURN_IF_ERROR(registry.Stop(name, force));
    return json{{"stopped", name}};
  });
}

void RegisterStatusOp(AdminServer& server, VmRegistry& registry, std::function<json()> host_info) {
  server.Register(
      "status",
      [&registry, host_info = std::move(host_info)](const json& req, AdminEvents&) -> Result<json> {
        SOD_RETURN_IF_ERROR(CheckRequestKeys(req, {}));
        json out = host_info ? host_info() : json::object();
        json vms = json::array();
        json migrations = json::array();
        std::map<std::string, int> phases;
        for (const VmInfo& i : registry.List()) {
          ++phases[std::string(VmPhaseName(i.record.phase))];
          vms.push_back({{"name", i.spec.name},
                         {"phase", std::string(VmPhaseName(i.record.phase))},
                         {"pid", i.record.pid},
                         {"host_port", i.record.host_port}});
          const VmPhase p = i.record.phase;
          if (i.leased || p == VmPhase::kMigratingOut || p == VmPhase::kMigratingIn ||
              p == VmPhase::kInDoubt) {
            migrations.push_back({{"vm", i.spec.name},
                                  {"phase", std::string(VmPhaseName(p))},
                                  {"migration_id", i.record.migration_id},
                                  {"note", i.record.note}});
          }
        }
        out["vms"] = vms;
        out["phases"] = phases;
        out["migrations"] = migrations;
        return out;
      });
}

void RegisterMigrationPlaceholders(AdminServer& server) {
  for (const char* op : {"migrate", "migrate.cancel", "recover"}) {
    if (server.HasOp(op)) continue;
    server.Register(op, [op = std::string(op)](const json&, AdminEvents&) -> Result<json> {
      return Error(Errc::kUnsupported, op + ": no migration engine on this host yet");
    });
  }
}

}  // namespace sod
