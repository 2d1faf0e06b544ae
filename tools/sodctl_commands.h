// Subcommand groups of sodctl.
//
// Each group adds its subcommands to the top-level CLI::App. A subcommand's parse callback only
// stores the work to do in `action`; main() runs it after parsing has succeeded, so usage errors
// (exit 2) and run-time errors (exit 1) stay apart. Option storage is owned by the callbacks and
// lives as long as `app`. `action` must outlive `app`'s parse.
//
// To add a group: write sodctl_<group>.cc with Add<Group>Commands, declare it here, call it from
// main() in sodctl.cc, and list the file in tools/CMakeLists.txt.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>

#include "base/status.h"

namespace sod::sodctl {

// The selected command, bound to its parsed options. Prints its own success output to stdout;
// returns a non-OK Status that main() prints to stderr.
using CommandAction = std::function<Status()>;

// sodctl pki init | issue
void AddPkiCommands(CLI::App& app, CommandAction& action);

// Commands that talk to sodd share where to find it: --socket PATH | --state-dir DIR on the
// top-level app (sodctl_sodd.h). The returned target is filled in by parsing.
struct SoddTarget;
std::shared_ptr<SoddTarget> AddSoddTargetOptions(CLI::App& app);
// sodctl vm start | list | show | stop
void AddVmCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd, CommandAction& action);
// sodctl status
void AddStatusCommand(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                      CommandAction& action);
// sodctl migrate | recover
void AddMigrateCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                        CommandAction& action);
// sodctl host enrollment | enroll | unenroll | enrollments | evidence | violation; sodctl attest
void AddHostCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                     CommandAction& action);
// sodctl policy set | show | explain; sodctl hosts
void AddPolicyCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                       CommandAction& action);

// Exit status 3: the command could not reach sodd (no socket, nobody listening).
inline constexpr int kExitUnreachable = 3;
bool IsSoddUnreachable(const Status& status);

}  // namespace sod::sodctl
