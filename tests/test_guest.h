// The sod test guest (scripts/build-guest.sh) for tests that boot real QEMU: where it is, a VmSpec
// that boots it, and waiting for lines on its serial console. Header-only, tests only.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "migrate/vm.h"

namespace sod::testing {

struct TestGuest {
  std::string kernel;
  std::string initrd;
  std::string cmdline;
};

// The guest in $SOD_GUEST_DIR or /var/cache/sod/guest, or nullopt when it is not built (tests then
// GTEST_SKIP; the ctest test guest_boot builds it).
inline std::optional<TestGuest> FindTestGuest() {
  const char* env = std::getenv("SOD_GUEST_DIR");
  std::string dir = env && *env ? env : "/var/cache/sod/guest";
  TestGuest g;
  g.kernel = dir + "/vmlinux";
  if (::access(g.kernel.c_str(), R_OK) != 0) g.kernel = dir + "/vmlinuz";
  g.initrd = dir + "/initrd.img";
  std::ifstream in(dir + "/cmdline");
  if (!std::getline(in, g.cmdline) || ::access(g.kernel.c_str(), R_OK) != 0 ||
      ::access(g.initrd.c_str(), R_OK) != 0) {
    return std::nullopt;
  }
  return g;
}

// A small VM running the guest with its heartbeat on (and the TCP service when guest_port != 0).
inline VmSpec TestGuestSpec(const TestGuest& g, const std::string& name, uint16_t guest_port = 0) {
  VmSpec s;
  s.name = name;
  s.memory_mb = 256;
  s.kernel = g.kernel;
  s.initrd = g.initrd;
  s.append = g.cmdline + " sod.hb=1 sod.net=" + (guest_port ? "1" : "0");
  s.guest_port = guest_port;
  return s;
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Waits until `path` contains a line starting with `prefix`; returns that line's last occurrence.
inline std::optional<std::string> WaitForLine(const std::string& path, const std::string& prefix,
                                              std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::istringstream text(ReadWholeFile(path));
    std::optional<std::string> found;
    for (std::string line; std::getline(text, line);) {
      if (line.rfind(prefix, 0) == 0) found = line;
    }
    if (found) return found;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}
// Polls QEMU's query-migrate (either side of a migration) every 100 ms until the migration
// completed or failed, or `timeout` passed: its last status ("" when it never reported one).
// `passes`, when given, receives ram.dirty-sync-count. kIo etc. when QMP fails.
inline Result<std::string> WaitMigrationEnd(Vm& vm, std::chrono::milliseconds timeout,
                                            uint64_t* passes = nullptr) {
  std::string status;
  for (auto deadline = std::chrono::steady_clock::now() + timeout;
       std::chrono::steady_clock::now() < deadline;) {
    auto q = vm.qmp().Execute("query-migrate");
    if (!q.ok()) return q.status();
    status = q->value("status", "");
    if (passes) *passes = q->value("ram", nlohmann::json::object()).value("dirty-sync-count", 0ull);
    if (status == "completed" || status == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return status;
}


// The number n of the last "SOD-HB <n> ..." line, or -1.
inline long LastHeartbeat(const std::string& serial_log) {
  std::istringstream text(ReadWholeFile(serial_log));
  long n = -1;
  for (std::string line; std::getline(text, line);) {
    if (line.rfind("SOD-HB ", 0) == 0) n = std::strtol(line.c_str() + 7, nullptr, 10);
  }
  return n;
}

}  // namespace sod::testing
