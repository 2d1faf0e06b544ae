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

#include "base/status.h"

namespace sod::sodctl {

// The selected command, bound to its parsed options. Prints its own success output to stdout;
// returns a non-OK Status that main() prints to stderr.
using CommandAction = std::function<Status()>;

// sodctl pki init | issue
void AddPkiCommands(CLI::App& app, CommandAction& action);

}  // namespace sod::sodctl
