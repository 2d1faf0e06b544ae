// Named security packages (seed paper 000, III-B: "default security packages can be created, e.g.
// 'security for on-line medical records', ... translated into the options above (e.g. options 1,
// 5, 6, 7)"). The project ships policy/packages.json with the packages the paper names; operators
// add their own files.
//
// A packages file (policy/README.md, "Packages file"):
//
//   {"version": 1,
//    "packages": [
//      {"name": "online-medical-records",        1..64 characters of [a-z0-9._-]
//       "description": "...",                    optional
//       "options": [1, 5, 6, 7], "protect": "CI"}  as OptionChoicesFromJson (request.h) reads them
//    ]}
//
// Every package must satisfy the 5/6-excludes-2 rule. Within one file a name appears once; across
// files (LoadFiles) a later file's package replaces an earlier one of the same name and new names
// extend the catalog.
//
// Thread-safety: a PackageCatalog is immutable once built (FromJson / LoadFiles / Merge), and then
// safe to read from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "policy/request.h"

namespace sod::policy {

inline constexpr uint64_t kPackagesVersion = 1;
inline constexpr size_t kMaxPackageName = 64;
inline constexpr size_t kMaxPackagesFile = 1 << 20;

struct Package {
  std::string name;
  std::string description;
  std::vector<OptionChoice> options;  // as the file lists them
  RequestMatrix matrix;               // what they fill in
  std::string source;                 // the file it came from
};

// A package name: 1..kMaxPackageName characters of [a-z0-9._-]. kInvalidArgument otherwise.
Status ValidatePackageName(std::string_view name);

// The packages known to the policy agent, by name. Copyable and movable.
class PackageCatalog {
 public:
  PackageCatalog() = default;  // no package

  // One packages document; `source` names it in errors ("packages.json: packages[1].options[0]:
  // unknown option 9 (...)"). kMalformed for anything but the format above (unknown keys, bad
  // names, a name twice: "packages.json: packages[2]: package \"x\" defined twice (first at
  // packages[0])"), kUnsupported for another version, kInvalidArgument for a package breaking
  // the option rule ("packages.json: package \"x\": option 5 (...) excludes option 2 (...)").
  static Result<PackageCatalog> FromJson(const nlohmann::json& j, std::string_view source);
  // FromJson of the file at `path` (at most kMaxPackagesFile bytes; duplicate JSON keys refused).
  static Result<PackageCatalog> LoadFile(const std::filesystem::path& path);
  // The files in order, later ones replacing and extending earlier ones (Merge). The first error
  // is returned and nothing is loaded.
  static Result<PackageCatalog> LoadFiles(std::span<const std::filesystem::path> paths);

  // Adds `later`'s packages; one whose name is already here replaces it.
  void Merge(const PackageCatalog& later);

  // The package named `name`, or nullptr. Valid until the catalog is modified.
  const Package* Find(std::string_view name) const;
  // The matrix a request asks for: the package's (kNotFound "unknown package \"x\"" when the
  // catalog has none of that name) or the one its options fill in (RequestMatrix::FromOptions's
  // errors, among them the option rule's kInvalidArgument).
  Result<RequestMatrix> Resolve(const SecurityRequest& request) const;

  // Every package, sorted by name.
  const std::vector<Package>& packages() const { return packages_; }
  size_t size() const { return packages_.size(); }
  // The catalog as one packages document (without sources); FromJson reads it back.
  nlohmann::json ToJson() const;

 private:
  std::vector<Package> packages_;  // sorted by name, names unique
};

}  // namespace sod::policy
