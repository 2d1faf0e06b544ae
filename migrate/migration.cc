#include "migrate/migration.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/random.h"

namespace sod {

std::string MigrationIdHex(const MigrationId& id) { return ToHex(id); }

Result<MigrationId> MigrationIdFromHex(std::string_view hex) {
  MigrationId id{};
  if (hex.size() != id.size() * 2) return Error(Errc::kInvalidArgument, "migration id: 32 hex digits expected");
  for (size_t i = 0; i < id.size(); ++i) {
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Error(Errc::kInvalidArgument, "migration id: not lowercase hex");
    id[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return id;
}

Result<MigrationId> NewMigrationId() {
  MigrationId id{};
  SOD_RETURN_IF_ERROR(RandomFill(id));
  return id;
}

uint64_t UnixMillisNow() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

nlohmann::json ToJson(const SignedReceipt& r) {
  nlohmann::json j = ToJson(r.receipt);
  j["source_signature"] = ToHex(r.source_signature);
  j["destination_signature"] = ToHex(r.destination_signature);
  return j;
}

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<FileOutcomeLedger>> FileOutcomeLedger::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(Errc::kIo, "outcome ledger " + dir + ": " + ec.message());
  ::chmod(dir.c_str(), 0700);
  return std::unique_ptr<FileOutcomeLedger>(new FileOutcomeLedger(dir));
}

Result<MigrationOutcome> FileOutcomeLedger::Decide(const MigrationId& id,
                                                   MigrationOutcome proposed,
                                                   std::string_view vm) {
  std::lock_guard<std::mutex> l(mu_);
  if (MigrationOutcome earlier = LookupLocked(id); earlier != MigrationOutcome::kUnknown)
    return earlier;
  if (proposed == MigrationOutcome::kUnknown)
    return Error(Errc::kInvalidArgument, "outcome ledger: cannot decide 'unknown'");
  const std::string path = dir_ + "/" + MigrationIdHex(id);
  const std::string tmp = path + ".tmp";
  std::string line = std::string(MigrationOutcomeName(proposed)) + " " + std::string(vm) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Error(Errc::kIo, "outcome ledger: create " + tmp + ": " + std::strerror(errno));
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    return Error(Errc::kIo, "outcome ledger: write " + path + ": " + std::strerror(errno));
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return proposed;
}

MigrationOutcome FileOutcomeLedger::Lookup(const MigrationId& id) const {
  std::lock_guard<std::mutex> l(mu_);
  return LookupLocked(id);
}

MigrationOutcome FileOutcomeLedger::LookupLocked(const MigrationId& id) const {
  std::ifstream f(dir_ + "/" + MigrationIdHex(id));
  std::string word;
  if (!(f >> word)) return MigrationOutcome::kUnknown;
  if (word == MigrationOutcomeName(MigrationOutcome::kCommitted)) return MigrationOutcome::kCommitted;
  if (word == MigrationOutcomeName(MigrationOutcome::kAborted)) return MigrationOutcome::kAborted;
  return MigrationOutcome::kUnknown;
}

Result<MigrationOutcome> MemoryOutcomeLedger::Decide(const MigrationId& id,
                                                     MigrationOutcome proposed,
                                                     std::string_view) {
  std::lock_guard<std::mutex> l(mu_);
  auto [it, inserted] = outcomes_.emplace(id, proposed);
  return it->second;
}

MigrationOutcome MemoryOutcomeLedger::Lookup(const MigrationId& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = outcomes_.find(id);
  return it == outcomes_.end() ? MigrationOutcome::kUnknown : it->second;
}

}  // namespace sod
