// The admin ops of sodd (protocol: host/admin_protocol.h).
//
//   vm.start  {"spec":{VmSpec}}              -> {"vm":{...}}
//   vm.list   {}                             -> {"vms":[{...},...]}
//   vm.show   {"name":"web1"}                -> {"vm":{..., "run_state":"running"}}
//   vm.stop   {"name":"web1","force":false}  -> {"stopped":"web1"}
//   status    {}                             -> {"host_id", "listen", "vms", "migrations", ...}
//   migrate   {"name","to","port",...}       -> events, then the outcome   (migration engine)
//   recover   {"name"}                       -> events, then the outcome   (migration engine)
//   migrate.cancel {"name"}                  -> {"vm","phase","cancelled"} (migration engine)
//
// A VM object in replies: name, phase, pid, host_port, guest_port, memory_mb, vcpus, migration_id,
// note, updated, leased, serial_log, qemu_log, qmp_socket, memory_file, spec, and run_state
// (vm.show). Requests are strict: unknown keys and wrong types are refused (invalid-argument).
#pragma once

#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>

#include "base/status.h"
#include "host/admin_server.h"
#include "host/vm_registry.h"

namespace sod {

nlohmann::json VmInfoToJson(const VmInfo& info);

// Checks a VM spec before vm.start launches it (sodd: the policy agent validates its security
// request); an error refuses the start.
using VmSpecCheck = std::function<Status(const VmSpec&)>;

// Registers vm.start, vm.list, vm.show and vm.stop. `registry` must outlive the server.
// `check` (may be empty) runs before every vm.start.
void RegisterVmOps(AdminServer& server, VmRegistry& registry, VmSpecCheck check = {});

// Registers "status": `host_info()` supplies the host part (host id, listen address, sessions,
// ...), the registry the VMs and the migrations in progress. Both must outlive the server.
void RegisterStatusOp(AdminServer& server, VmRegistry& registry,
                      std::function<nlohmann::json()> host_info);

// Registers "migrate", "migrate.cancel" and "recover" answering "unsupported: no migration engine on this host yet",
// unless an op of that name is registered already. The migration engine replaces them with
// AdminServer::Register (before Start) — see host/host_daemon.h.
void RegisterMigrationPlaceholders(AdminServer& server);

// Refuses (kInvalidArgument) a request with a key outside "op" + `allowed`.
Status CheckRequestKeys(const nlohmann::json& request,
                        std::initializer_list<std::string_view> allowed);
// The request's string member `key` (kInvalidArgument when missing or not a string).
Result<std::string> RequestString(const nlohmann::json& request, std::string_view key);
// The request's optional member `key` (bool, std::string or an unsigned integer type), or
// `fallback` when absent; kInvalidArgument when it has another type.
template <typename T>
Result<T> RequestOptional(const nlohmann::json& request, const char* key, T fallback) {
  auto it = request.find(key);
  if (it == request.end()) return fallback;
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) return Error(Errc::kInvalidArgument, std::string(key) + ": not a boolean");
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return Error(Errc::kInvalidArgument, std::string(key) + ": not a string");
  } else {
    if (!it->is_number_unsigned())
      return Error(Errc::kInvalidArgument, std::string(key) + ": not a non-negative integer");
  }
  return it->get<T>();
}

}  // namespace sod
