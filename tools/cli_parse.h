// Parsing a command line with CLI11 the way both sod tools do.
#pragma once

#include <optional>

#include <CLI/CLI.hpp>

namespace sod::tools {

// Parses argv into `app`. --help and --version print and give their exit status (0); a usage
// error prints CLI11's message and gives `usage_exit`. nullopt: parsed, go on.
inline std::optional<int> ParseOrExitCode(CLI::App& app, int argc, char** argv, int usage_exit) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return usage_exit;
  }
  return std::nullopt;
}

}  // namespace sod::tools
