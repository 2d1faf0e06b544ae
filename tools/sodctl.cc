// sodctl: the sod admin CLI. Exit status: 0 success, 1 error (printed to stderr), 2 usage error,
// 3 sodd cannot be reached.
#include <CLI/CLI.hpp>
#include <iostream>

#include "tools/cli_parse.h"
#include "tools/sodctl_commands.h"

#ifndef SOD_VERSION
#define SOD_VERSION "unknown"
#endif

namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int Run(int argc, char** argv) {
  CLI::App app{"sodctl - administer sod (Security on Demand), secure live migration of VMs",
               "sodctl"};
  app.set_version_flag("--version", "sodctl " SOD_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 on success, 1 on error, 2 on usage error, 3 when sodd cannot be reached.\n"
      "Run 'sodctl COMMAND --help' for the options of a command.");

  sod::sodctl::CommandAction action;
  sod::sodctl::AddPkiCommands(app, action);
  auto sodd = sod::sodctl::AddSoddTargetOptions(app);
  sod::sodctl::AddVmCommands(app, sodd, action);
  sod::sodctl::AddStatusCommand(app, sodd, action);
  sod::sodctl::AddMigrateCommands(app, sodd, action);
  sod::sodctl::AddHostCommands(app, sodd, action);
  sod::sodctl::AddPolicyCommands(app, sodd, action);

  if (auto code = sod::tools::ParseOrExitCode(app, argc, argv, kExitUsage)) return *code;
  if (!action) {
    std::cerr << "sodctl: no command selected\n" << app.help();
    return kExitUsage;
  }
  sod::Status status = action();
  if (!status.ok()) {
    std::cerr << "sodctl: " << status.ToString() << "\n";
    return sod::sodctl::IsSoddUnreachable(status) ? sod::sodctl::kExitUnreachable : kExitError;
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
