// The capability table (seed paper 000, Table III): per server architecture, whether it protects
// confidentiality and integrity against each attacker entity -- Yes, No, or n-a (the architecture
// has no notion of that entity, e.g. pre-cloud designs have no VMs). n-a is never protection.
// The project ships policy/capabilities.json with the paper's 13 architectures; operators extend
// it with their own server types (III-C1: "whenever a new server type is added ... its security
// capabilities ... are added to the table").
//
// A capability file (policy/README.md, "Capability table file"):
//
//   {"version": 1,
//    "architectures": [
//      {"name": "hyperwall",                 the row name hosts report (attest/evidence.h):
//                                            1..64 characters of [A-Za-z0-9._-]
//       "title": "HyperWall [8]",            as the paper's table shows it
//       "category": "hardware",              optional free text
//       "protected_entity": "Full VM",       the table's last column
//       "note": "...",                       optional
//       "redefine": true,                    optional, only in an extension file: see Extend
//       "cells": {"same-app":      {"C": "No",  "I": "No"},
//                 ... all seven entities of cells.h, each with "C" and "I" ...
//                 "cloud-manager": {"C": "No",  "I": "No"}}}
//    ]}
//
// Every cell is exactly "Yes", "No" or "n-a"; every entity and both properties must be present.
// Thread-safety: a CapabilityTable is immutable once built, and then safe to read from any
// number of threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "policy/cells.h"

namespace sod::policy {

inline constexpr uint64_t kCapabilitiesVersion = 1;
inline constexpr size_t kMaxArchitectureName = 64;  // = attest::kMaxEvidenceArchitecture
inline constexpr size_t kMaxCapabilityText = 512;   // title, category, protected_entity, note
inline constexpr size_t kMaxCapabilitiesFile = 4 << 20;

enum class Capability : uint8_t {
  kNo = 0,
  kYes = 1,
  kNotApplicable = 2,  // "n-a": counts as No for coverage
};
// "No", "Yes", "n-a".
std::string_view CapabilityName(Capability c);

// One row of Table III.
struct CapabilityRow {
  std::string name;
  std::string title;
  std::string category;
  std::string protected_entity;
  std::string note;
  bool redefine = false;  // the file asked to replace an earlier row of this name
  std::array<Capability, kCellCount> cells{};  // indexed by CellIndex; all kNo by default
  std::string source;                          // the file it came from

  Capability At(Entity e, Property p) const { return cells[CellIndex(e, p)]; }
  // The cells this architecture protects: exactly its Yes cells.
  CellSet Protects() const;
  bool operator==(const CapabilityRow&) const = default;
};

// A row name: 1..kMaxArchitectureName characters of [A-Za-z0-9._-] (the same rule as the
// architecture in a host's evidence). kInvalidArgument otherwise.
Status ValidateArchitectureName(std::string_view name);

// The table. Copyable and movable.
class CapabilityTable {
 public:
  CapabilityTable() = default;  // no architecture

  // One capability document as a standalone table; `source` names it in errors. kMalformed naming
  // source, architecture and field for anything but the format above, e.g.
  //   "capabilities.json: architecture \"hyperwall\": cells.hypervisor.C: \"Maybe\" is not Yes,
  //    No or n-a"
  //   "capabilities.json: architectures[4]: architecture \"xom\" defined twice (first at
  //    architectures[1])"
  // kUnsupported for another version. Rows keep their "redefine" flag for Extend.
  static Result<CapabilityTable> FromJson(const nlohmann::json& j, std::string_view source);
  // FromJson of the file at `path` (at most kMaxCapabilitiesFile bytes; duplicate JSON keys
  // refused).
  static Result<CapabilityTable> LoadFile(const std::filesystem::path& path);
  // The first file is the base table, every later one extends it (Extend). The first error is
  // returned and nothing is loaded.
  static Result<CapabilityTable> LoadFiles(std::span<const std::filesystem::path> paths);

  // Adds `more`'s rows, all or none. A row whose name is new is appended. A row whose name is
  // already here replaces it only when it says "redefine": true; otherwise kRefused
  // "<source>: architecture \"tpm\" is already defined by <earlier source>: set \"redefine\": true
  // to replace it". A row saying "redefine": true for a name not here is refused too (kRefused:
  // a misspelt redefinition would otherwise add a new row silently). On error the table is
  // unchanged.
  Status Extend(const CapabilityTable& more);

  // The row named `name` (exact), or nullptr. Valid until the table is modified.
  const CapabilityRow* Find(std::string_view name) const;
  // As Find, but kNotFound "capability table: unknown architecture \"x\"" when absent.
  Result<const CapabilityRow*> Row(std::string_view name) const;
  // The rows in load order (a redefined row stays where its name first appeared).
  const std::vector<CapabilityRow>& rows() const { return rows_; }
  size_t size() const { return rows_.size(); }
  // The table as one capability document (no sources, no redefine flags).
  nlohmann::json ToJson() const;

 private:
  std::vector<CapabilityRow> rows_;
  std::map<std::string, size_t, std::less<>> by_name_;  // index into rows_
};

}  // namespace sod::policy
