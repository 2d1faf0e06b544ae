// sodctl policy set | show | explain | place, and sodctl hosts: a VM's security request and what
// the host's policy agent makes of it (host/policy_agent.h).
#include <charconv>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "migrate/vm.h"
#include "tools/sodctl_commands.h"
#include "tools/sodctl_sodd.h"

namespace sod::sodctl {
namespace {

using nlohmann::json;

struct SetArgs {
  std::string vm;
  std::string package;
  std::string options;
  std::string protect;
};

// "1,5,6,7" -> [1,5,6,7]; the numbers themselves are judged by sodd (options 1..7).
Result<json> ParseOptions(const std::string& text) {
  json out = json::array();
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(start, comma - start);
    int64_t n = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size())
      return Error(Errc::kInvalidArgument,
                   "--options: expected option numbers separated by commas (e.g. 1,5,6,7), got \"" +
                       text + "\"");
    out.push_back(n);
    start = comma + 1;
  }
  return out;
}

Result<json> RequestOf(const SetArgs& a) {
  if (!a.package.empty() && !a.options.empty())
    return Error(Errc::kInvalidArgument, "give --package or --options, not both");
  if (a.package.empty() && a.options.empty())
    return Error(Errc::kInvalidArgument, "give --package NAME or --options LIST");
  if (!a.package.empty()) {
    if (!a.protect.empty())
      return Error(Errc::kInvalidArgument,
                   "--protect applies to --options; a package brings its own protection");
    return json{{"version", 1}, {"package", a.package}};
  }
  const std::string protect = a.protect.empty() ? "CI" : a.protect;
  if (protect != "C" && protect != "I" && protect != "CI")
    return Error(Errc::kInvalidArgument, "--protect: C, I or CI, got \"" + protect + "\"");
  SOD_ASSIGN_OR_RETURN(json options, ParseOptions(a.options));
  return json{{"version", 1}, {"options", options}, {"protect", protect}};
}

void PrintExplanation(const json& x) {
  std::cout << "host " << Text(x.value("host", json())) << " ("
            << Text(x.value("architecture", json()))
            << "): " << (x.value("covered", false) ? "covers" : "does NOT cover") << " the request"
            << (x.value("trusted", false) ? "" : " (host untrusted)") << "\n";
  for (const auto& r : x.value("reasons", json::array())) std::cout << "  " << Text(r) << "\n";
  for (const auto& r : x.value("monitor", json::array()))
    std::cout << "  monitor: " << Text(r) << "\n";
}

Status RunSet(const SoddTarget& sodd, const SetArgs& a, bool as_json) {
  SOD_ASSIGN_OR_RETURN(json request, RequestOf(a));
  SOD_ASSIGN_OR_RETURN(
      json reply, CallSodd(sodd, {{"op", "policy.set"}, {"name", a.vm}, {"request", request}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  std::cout << "vm " << a.vm << " now requests protection of " << Text(reply.value("cells", json()))
            << "\n";
  PrintExplanation(reply.value("here", json::object()));
  if (!reply.value("here", json::object()).value("covered", false))
    std::cout << "the policy agent relocates it to a host that covers it\n";
  return Status::Ok();
}

Status RunShow(const SoddTarget& sodd, const std::string& vm, bool as_json) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "policy.show"}, {"name", vm}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  PrintTable(
      {{"vm", Text(reply.value("vm", json()))},
       {"host", Text(reply.value("host", json()))},
       {"phase", Text(reply.value("phase", json()))},
       {"request", reply.value("request", json()).is_null() ? "(none)" : reply["request"].dump()},
       {"protect", Text(reply.value("cells", json()))},
       {"being moved", Text(reply.value("moving", json()))}});
  PrintExplanation(reply.value("here", json::object()));
  return Status::Ok();
}

Status RunExplain(const SoddTarget& sodd, const std::string& vm, const std::string& host,
                  bool as_json) {
  SOD_ASSIGN_OR_RETURN(json reply,
                       CallSodd(sodd, {{"op", "policy.explain"}, {"name", vm}, {"host", host}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  std::cout << "vm " << vm << " requests " << Text(reply.value("cells", json())) << "\n";
  PrintExplanation(reply);
  return Status::Ok();
}

Status RunHosts(const SoddTarget& sodd, bool as_json) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "hosts"}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  std::vector<std::vector<std::string>> rows = {
      {"HOST", "ARCHITECTURE", "TRUSTED", "VIOLATIONS", "FREE", "REASONS"}};
  for (const auto& h : reply.value("hosts", json::array())) {
    std::string name = Text(h.value("host", json())) + (h.value("self", false) ? " (self)" : "");
    std::string free =
        h.value("free_vm_slots", json()).is_null()
            ? "-"
            : Text(h["free_vm_slots"]) + " VMs, " + Text(h.value("free_memory_mb", json())) + " MB";
    std::string reasons;
    for (const auto& r : h.value("reasons", json::array()))
      reasons += (reasons.empty() ? "" : "; ") + Text(r);
    rows.push_back(
        {name, Text(h.value("architecture", json())), h.value("trusted", false) ? "yes" : "NO",
         Text(h.value("violations", json())) + "/" + Text(h.value("max_violations", json())), free,
         reasons.empty() ? "-" : reasons});
  }
  PrintTable(rows);
  return Status::Ok();
}

// Exit status: 0 when a host can take the VM, kRefused (non-zero) when none can.
Status RunPlace(const SoddTarget& sodd, const std::string& file, bool as_json) {
  Result<VmSpec> spec = LoadVmSpec(file);
  if (!spec.ok()) return spec.status().WithContext("policy place");
  SOD_ASSIGN_OR_RETURN(json reply,
                       CallSodd(sodd, {{"op", "policy.place"}, {"spec", VmSpecToJson(*spec)}}));
  const json chosen = reply.value("chosen", json());
  if (as_json) {
    PrintJson(reply);
  } else {
    std::cout << "vm " << Text(reply.value("vm", json())) << " ("
              << Text(reply.value("memory_mb", json())) << " MB) requests "
              << Text(reply.value("cells", json())) << "\n";
    for (const auto& h : reply.value("hosts", json::array())) {
      std::cout << "host " << Text(h.value("host", json()))
                << (h.value("self", false) ? " (self)" : "") << " ("
                << Text(h.value("architecture", json())) << "): "
                << (h.value("chosen", false)     ? "CHOSEN"
                    : h.value("can_take", false) ? "can take it"
                                                 : "cannot take it")
                << (h.value("trusted", false) ? "" : " (host untrusted)") << "\n";
      for (const auto& r : h.value("reasons", json::array())) std::cout << "  " << Text(r) << "\n";
      for (const auto& r : h.value("capacity", json::array()))
        std::cout << "  capacity: " << Text(r) << "\n";
      for (const auto& r : h.value("monitor", json::array()))
        std::cout << "  monitor: " << Text(r) << "\n";
    }
    if (chosen.is_string())
      std::cout << "placement: " << Text(chosen) << " (not started; run `sodctl vm start` there)\n";
  }
  if (!chosen.is_string())
    return Error(Errc::kRefused,
                 "no host can take vm " + spec->name + ": " + Text(reply.value("reason", json())));
  return Status::Ok();
}

}  // namespace

void AddPolicyCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                       CommandAction& action) {
  CLI::App* policy = app.add_subcommand(
      "policy", "A VM's security request (Security on Demand) and how hosts cover it");
  policy->require_subcommand(1);
  policy->fallthrough();
  auto as_json = std::make_shared<bool>(false);

  auto set = std::make_shared<SetArgs>();
  CLI::App* s = policy->add_subcommand(
      "set",
      "Set a VM's security request: a named package or options 1-7 (paper III-B); the "
      "agent relocates the VM when this host does not cover it");
  s->add_option("vm", set->vm, "VM name")->required()->type_name("VM");
  auto* pkg = s->add_option("--package", set->package, "A named package (e.g. basic-security)")
                  ->type_name("NAME");
  auto* opts = s->add_option("--options", set->options,
                             "Options by number: 1 other VMs, 2 hypervisor, 3 hardware, 4 cloud "
                             "manager, 5 guest OS, 6 other apps, 7 same app")
                   ->type_name("1,5,6,7");
  s->add_option("--protect", set->protect, "What the options protect: C, I or CI [default: CI]")
      ->type_name("C|I|CI");
  pkg->excludes(opts);
  s->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  s->callback([&action, sodd, set, as_json] {
    action = [sodd, set, as_json] { return RunSet(*sodd, *set, *as_json); };
  });

  auto vm = std::make_shared<std::string>();
  CLI::App* sh = policy->add_subcommand("show", "A VM's security request and this host's cover");
  sh->add_option("vm", *vm, "VM name")->required()->type_name("VM");
  sh->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  sh->callback([&action, sodd, vm, as_json] {
    action = [sodd, vm, as_json] { return RunShow(*sodd, *vm, *as_json); };
  });

  auto host = std::make_shared<std::string>();
  CLI::App* ex = policy->add_subcommand(
      "explain", "Why a host covers a VM's request or not (trust, then cell by cell)");
  ex->add_option("vm", *vm, "VM name")->required()->type_name("VM");
  ex->add_option("host", *host, "Host id (this host or one of its peers)")
      ->required()
      ->type_name("HOST");
  ex->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  ex->callback([&action, sodd, vm, host, as_json] {
    action = [sodd, vm, host, as_json] { return RunExplain(*sodd, *vm, *host, *as_json); };
  });

  auto spec_file = std::make_shared<std::string>();
  CLI::App* pl = policy->add_subcommand(
      "place",
      "Deployment mode: which hosts (this one and its peers) could take a new VM with this spec "
      "and its security request, why the others cannot, and the one the policy picks "
      "(capacity-aware, never an untrusted host); starts nothing. Exit status 1 when no host "
      "can take it");
  pl->add_option("spec", *spec_file, "VM spec JSON file (as for vm start)")
      ->required()
      ->type_name("SPEC.json");
  pl->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  pl->callback([&action, sodd, spec_file, as_json] {
    action = [sodd, spec_file, as_json] { return RunPlace(*sodd, *spec_file, *as_json); };
  });

  CLI::App* hs = app.add_subcommand(
      "hosts",
      "This host and its peers as the trust monitor sees them: architecture, trust, "
      "violations, reasons, free capacity");
  hs->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  hs->callback(
      [&action, sodd, as_json] { action = [sodd, as_json] { return RunHosts(*sodd, *as_json); }; });
}

}  // namespace sod::sodctl
