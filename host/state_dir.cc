#include "host/state_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

namespace sod {

using nlohmann::json;

namespace {

constexpr std::string_view kPhaseNames[] = {"starting",      "running",      "paused",
                                            "migrating-out", "migrating-in", "in-doubt",
                                            "migrated-away", "lost"};
static_assert(std::size(kPhaseNames) == static_cast<size_t>(kLastVmPhase) + 1,
              "kPhaseNames must name every VmPhase");

constexpr size_t kMaxStateFileBytes = 64 * 1024;

std::string ErrnoText(int err) { return std::strerror(err); }

// A non-negative integer up to `max` (signed or unsigned in nlohmann's terms).
bool IsCount(const json& v, uint64_t max) {
  if (!v.is_number_integer()) return false;
  if (!v.is_number_unsigned() && v.get<int64_t>() < 0) return false;
  return v.get<uint64_t>() <= max;
}

Status BadRecord(std::string_view key, const std::string& why) {
  return Error(Errc::kInvalidArgument, "vm state: \"" + std::string(key) + "\" " + why);
}

}  // namespace

std::string_view VmPhaseName(VmPhase phase) {
  auto i = static_cast<size_t>(phase);
  return i < std::size(kPhaseNames) ? kPhaseNames[i] : "unknown";
}

std::optional<VmPhase> VmPhaseFromName(std::string_view name) {
  for (size_t i = 0; i < std::size(kPhaseNames); ++i) {
    if (kPhaseNames[i] == name) return static_cast<VmPhase>(i);
  }
  return std::nullopt;
}

bool PhaseHasQemu(VmPhase phase) {
  switch (phase) {
    case VmPhase::kRunning:
    case VmPhase::kPaused:
    case VmPhase::kMigratingOut:
    case VmPhase::kMigratingIn:
    case VmPhase::kInDoubt:
      return true;
    case VmPhase::kStarting:
    case VmPhase::kMigratedAway:
    case VmPhase::kLost:
      return false;
  }
  return false;
}

json VmRecordToJson(const VmRecord& r) {
  return json{{"phase", std::string(VmPhaseName(r.phase))},
              {"pid", r.pid},
              {"host_port", r.host_port},
              {"memory_file", r.memory_file},
              {"migration_id", r.migration_id},
              {"note", r.note},
              {"updated", r.updated},
              {"vtpm_epoch", r.vtpm_epoch}};
}

Result<VmRecord> VmRecordFromJson(const json& j) {
  if (!j.is_object()) return Error(Errc::kInvalidArgument, "vm state: not a JSON object");
  VmRecord r;
  bool have_phase = false;
  for (const auto& [key, v] : j.items()) {
    if (key == "phase") {
      if (!v.is_string()) return BadRecord(key, "must be a string");
      auto p = VmPhaseFromName(v.get<std::string>());
      if (!p) return BadRecord(key, "unknown phase \"" + v.get<std::string>() + "\"");
      r.phase = *p;
      have_phase = true;
    } else if (key == "pid") {
      if (!IsCount(v, INT32_MAX)) {
        return BadRecord(key, "must be a pid");
      }
      r.pid = static_cast<pid_t>(v.get<uint64_t>());
    } else if (key == "host_port") {
      if (!IsCount(v, UINT16_MAX)) {
        return BadRecord(key, "must be a port number");
      }
      r.host_port = static_cast<uint16_t>(v.get<uint64_t>());
    } else if (key == "vtpm_epoch") {
      if (!IsCount(v, UINT64_MAX)) return BadRecord(key, "must be a count");
      r.vtpm_epoch = v.get<uint64_t>();
    } else if (key == "memory_file" || key == "migration_id" || key == "note" || key == "updated") {
      if (!v.is_string()) return BadRecord(key, "must be a string");
      std::string& dst = key == "memory_file"    ? r.memory_file
                         : key == "migration_id" ? r.migration_id
                         : key == "note"         ? r.note
                                                 : r.updated;
      dst = v.get<std::string>();
    } else {
      return BadRecord(key, "is not a known key");
    }
  }
  if (!have_phase) return BadRecord("phase", "is required");
  if (!r.memory_file.empty() && r.memory_file.rfind("/dev/shm/sod-", 0) != 0) {
    return BadRecord("memory_file", "must be under /dev/shm/sod-");
  }
  return r;
}




Result<StateDir> StateDir::Open(const std::string& root) {
  if (root.empty() || root.front() != '/') {
    return Error(Errc::kInvalidArgument,
                 "state dir must be an absolute path, got \"" + root + "\"");
  }
  StateDir d(root);
  SOD_RETURN_IF_ERROR(MakePrivateDir(root));
  SOD_RETURN_IF_ERROR(MakePrivateDir(d.vms_dir()));
  SOD_RETURN_IF_ERROR(MakePrivateDir(d.receipts_dir()));
  return d;
}

Result<std::vector<std::string>> StateDir::ListVms() const {
  std::vector<std::string> names;
  DIR* dir = ::opendir(vms_dir().c_str());
  if (dir == nullptr) return Error(Errc::kIo, vms_dir() + ": " + ErrnoText(errno));
  while (struct dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (!ValidateVmName(name).ok()) continue;
    names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

Status StateDir::SaveVm(const VmSpec& spec, const VmRecord& record) const {
  SOD_RETURN_IF_ERROR(MakePrivateDir(vm_dir(spec.name)));
  SOD_RETURN_IF_ERROR(
      WriteFileAtomically(vm_dir(spec.name) + "/spec.json", VmSpecToJson(spec).dump(2) + "\n"));
  return SaveRecord(spec.name, record);
}

Status StateDir::SaveRecord(std::string_view name, const VmRecord& record) const {
  return WriteFileAtomically(vm_dir(name) + "/state.json", VmRecordToJson(record).dump(2) + "\n");
}

Result<VmSpec> StateDir::LoadSpec(std::string_view name) const {
  Result<VmSpec> spec = LoadVmSpec(vm_dir(name) + "/spec.json");
  if (spec.ok() && spec->name != name) {
    return Error(Errc::kInvalidArgument,
                 vm_dir(name) + "/spec.json names VM \"" + spec->name + "\"");
  }
  return spec;
}

Result<VmRecord> StateDir::LoadRecord(std::string_view name) const {
  const std::string path = vm_dir(name) + "/state.json";
  SOD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, kMaxStateFileBytes));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Errc::kMalformed, path + ": not valid JSON");
  Result<VmRecord> r = VmRecordFromJson(j);
  if (!r.ok()) return r.status().WithContext(path);
  return r;
}

Status StateDir::RemoveVm(std::string_view name) const {
  std::error_code ec;
  std::filesystem::remove_all(vm_dir(name), ec);
  if (ec) return Error(Errc::kIo, "cannot remove " + vm_dir(name) + ": " + ec.message());
  return Status::Ok();
}

}  // namespace sod
