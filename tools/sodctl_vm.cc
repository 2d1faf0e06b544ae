// sodctl vm: start, list, show and stop the VMs of a sodd (host/admin_ops.h).
#include <iostream>
#include <memory>
#include <string>

#include "migrate/vm.h"
#include "tools/sodctl_commands.h"
#include "tools/sodctl_sodd.h"

namespace sod::sodctl {
namespace {

using nlohmann::json;

struct VmArgs {
  std::string spec_file;
  std::string name;
  bool force = false;
  bool json = false;
};

std::string Forward(const json& vm) {
  uint64_t host = vm.value("host_port", 0u);
  uint64_t guest = vm.value("guest_port", 0u);
  if (guest == 0) return "-";
  if (host == 0) return "guest :" + std::to_string(guest) + " (no host port)";
  return "127.0.0.1:" + std::to_string(host) + " -> guest :" + std::to_string(guest);
}

std::string Pid(const json& vm) {
  uint64_t pid = vm.value("pid", 0u);
  return pid == 0 ? "-" : std::to_string(pid);
}

Status RunStart(const SoddTarget& sodd, const VmArgs& args) {
  Result<VmSpec> spec = LoadVmSpec(args.spec_file);
  if (!spec.ok()) return spec.status().WithContext("vm start");
  SOD_ASSIGN_OR_RETURN(json reply,
                       CallSodd(sodd, {{"op", "vm.start"}, {"spec", VmSpecToJson(*spec)}}));
  if (args.json) {
    PrintJson(reply);
    return Status::Ok();
  }
  const json& vm = reply["vm"];
  std::cout << "started VM " << Text(vm["name"]) << " (pid " << Pid(vm) << ", " << Text(vm["phase"])
            << ")\n"
            << "  forward     " << Forward(vm) << "\n"
            << "  serial log  " << Text(vm["serial_log"]) << "\n";
  return Status::Ok();
}

Status RunList(const SoddTarget& sodd, const VmArgs& args) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "vm.list"}}));
  if (args.json) {
    PrintJson(reply);
    return Status::Ok();
  }
  const json& vms = reply["vms"];
  if (!vms.is_array() || vms.empty()) {
    std::cout << "no VMs\n";
    return Status::Ok();
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "PHASE", "PID", "MEMORY", "VCPUS", "FORWARD", "NOTE"}};
  for (const json& vm : vms) {
    rows.push_back({Text(vm["name"]), Text(vm["phase"]), Pid(vm), Text(vm["memory_mb"]) + "M",
                    Text(vm["vcpus"]), Forward(vm), Text(vm["note"])});
  }
  PrintTable(rows);
  return Status::Ok();
}

// "running (swtpm pid 123), epoch 2" / "erased (moved away at epoch 3)" / "none".
std::string VtpmText(const json& vm) {
  const json v = vm.value("vtpm", json::object());
  const std::string status = v.value("status", "none");
  if (status == "none") return "none";
  std::string s = status;
  if (v.value("pid", 0) != 0) s += " (swtpm pid " + std::to_string(v.value("pid", 0)) + ")";
  return s + ", epoch " + std::to_string(v.value("epoch", uint64_t{0}));
}

Status RunShow(const SoddTarget& sodd, const VmArgs& args) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "vm.show"}, {"name", args.name}}));
  if (args.json) {
    PrintJson(reply);
    return Status::Ok();
  }
  const json& vm = reply["vm"];
  const json& spec = vm["spec"];
  auto or_none = [](const json& v) {
    std::string s = Text(v);
    return s.empty() ? std::string("(none)") : s;
  };
  std::vector<std::vector<std::string>> rows = {
      {"name", Text(vm["name"])},
      {"phase", Text(vm["phase"]) + (vm.value("leased", false) ? " (held by a migration)" : "")},
      {"run state", vm.contains("run_state") ? Text(vm["run_state"]) : "(not asked)"},
      {"pid", Pid(vm)},
      {"memory", Text(spec["memory_mb"]) + " MiB, " + Text(spec["vcpus"]) + " vCPU"},
      {"machine",
       Text(spec["machine"]) + ", accel " + Text(spec["accel"]) + ", cpu " + Text(spec["cpu"])},
      {"kernel", or_none(spec["kernel"])},
      {"initrd", or_none(spec["initrd"])},
      {"append", or_none(spec["append"])},
      {"disk", or_none(spec["disk"])},
      {"forward", Forward(vm)},
      {"vtpm", VtpmText(vm)},
      {"serial log", Text(vm["serial_log"])},
      {"qemu log", Text(vm["qemu_log"])},
      {"qmp socket", Text(vm["qmp_socket"])},
      {"memory file", or_none(vm["memory_file"])},
      {"migration", or_none(vm["migration_id"])},
      {"note", or_none(vm["note"])},
      {"updated", Text(vm["updated"])}};
  PrintTable(rows);
  return Status::Ok();
}

Status RunStop(const SoddTarget& sodd, const VmArgs& args) {
  SOD_ASSIGN_OR_RETURN(
      json reply, CallSodd(sodd, {{"op", "vm.stop"}, {"name", args.name}, {"force", args.force}}));
  if (args.json) {
    PrintJson(reply);
  } else {
    std::cout << "stopped VM " << args.name << "\n";
  }
  return Status::Ok();
}

CLI::Validator VmNameValidator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        Status s = ValidateVmName(value);
        return s.ok() ? std::string() : s.message();
      },
      "");
}

// Registers one `vm` subcommand whose action runs `run` with the parsed arguments.
CLI::App* AddVmSubcommand(CLI::App* vm, const std::string& name, const std::string& help,
                          std::shared_ptr<const SoddTarget> sodd, CommandAction& action,
                          Status (*run)(const SoddTarget&, const VmArgs&),
                          std::shared_ptr<VmArgs> args) {
  CLI::App* cmd = vm->add_subcommand(name, help);
  cmd->fallthrough();
  cmd->add_flag("--json", args->json, "Print sodd's reply as JSON (for scripts)");
  cmd->callback(
      [sodd, args, run, &action] { action = [sodd, args, run] { return run(*sodd, *args); }; });
  return cmd;
}

}  // namespace

void AddVmCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd, CommandAction& action) {
  CLI::App* vm = app.add_subcommand("vm", "Start, list, show and stop the VMs of a host's sodd");
  vm->require_subcommand(1);
  vm->fallthrough();
  vm->footer(
      "sodd is found by --socket PATH or --state-dir DIR (default /var/lib/sod; env SOD_SOCKET, "
      "SOD_STATE_DIR), given before or after the command.\n"
      "Exit status: 0 on success, 1 when sodd refused or the operation failed, 2 on a usage "
      "error, 3 when sodd cannot be reached.");

  auto start = std::make_shared<VmArgs>();
  CLI::App* start_cmd = AddVmSubcommand(
      vm, "start",
      "Start a VM from a JSON spec file: {\"name\", \"memory_mb\", \"vcpus\", \"machine\", "
      "\"accel\", \"cpu\", \"kernel\", \"initrd\", \"append\", \"disk\", \"guest_port\", "
      "\"tpm\"}. sodd checks it strictly, launches QEMU (RAM in /dev/shm, own session: it "
      "survives sodd restarts), forwards a host port to guest_port if set, and returns once "
      "QEMU runs. \"tpm\": true gives the VM a vTPM 2.0 (a swtpm whose state is encrypted "
      "under keys sealed to this host's TPM; it moves with the VM; see `vm show`).",
      sodd, action, RunStart, start);
  start_cmd->add_option("spec", start->spec_file, "VM spec (JSON file)")
      ->required()
      ->check(CLI::ExistingFile)
      ->type_name("SPEC.json");

  auto list = std::make_shared<VmArgs>();
  AddVmSubcommand(vm, "list",
                  "List the VMs of this host: name, phase (running, paused, migrating-out, "
                  "migrating-in, in-doubt, migrated-away, lost), pid, size, forwarded port",
                  sodd, action, RunList, list);

  auto show = std::make_shared<VmArgs>();
  CLI::App* show_cmd = AddVmSubcommand(
      vm, "show",
      "Show one VM: its spec, phase, QEMU run state (asked over QMP), pid, forwarded port and "
      "the paths of its serial console log, QEMU log, QMP socket and memory file",
      sodd, action, RunShow, show);
  show_cmd->add_option("name", show->name, "VM name")
      ->required()
      ->check(VmNameValidator())
      ->type_name("NAME");

  auto stop = std::make_shared<VmArgs>();
  CLI::App* stop_cmd = AddVmSubcommand(
      vm, "stop",
      "Stop a VM: QMP quit, SIGKILL after sodd's grace period; removes its memory file and its "
      "state. Also forgets lost and migrated-away records. Refuses VMs held by a migration, and "
      "in-doubt VMs unless --force (an in-doubt VM may be the only copy: use recover).",
      sodd, action, RunStop, stop);
  stop_cmd->add_option("name", stop->name, "VM name")
      ->required()
      ->check(VmNameValidator())
      ->type_name("NAME");
  stop_cmd->add_flag("--force", stop->force, "Also stop an in-doubt VM");
}

}  // namespace sod::sodctl
