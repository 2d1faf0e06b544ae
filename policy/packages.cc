#include "policy/packages.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "policy/json_file.h"

namespace sod::policy {
namespace {

using internal::CheckOnlyKeys;
using internal::Malformed;
using nlohmann::json;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool ByName(const Package& a, const Package& b) { return a.name < b.name; }

}  // namespace

Status ValidatePackageName(std::string_view name) {
  if (name.empty()) return Error(Errc::kInvalidArgument, "empty package name");
  if (name.size() > kMaxPackageName)
    return Error(Errc::kInvalidArgument,
                 "package name longer than " + std::to_string(kMaxPackageName) + " characters");
  if (!std::all_of(name.begin(), name.end(), NameChar))
    return Error(Errc::kInvalidArgument,
                 "package name \"" + std::string(name) + "\" is not made of [a-z0-9._-]");
  return Status::Ok();
}

Result<PackageCatalog> PackageCatalog::FromJson(const json& j, std::string_view source) {
  const std::string src(source);
  if (!j.is_object()) return Malformed(src, "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(j, src, {"version", "packages"}));
  SOD_RETURN_IF_ERROR(internal::CheckVersion(j, src + ": version", kPackagesVersion));
  auto list = j.find("packages");
  if (list == j.end()) return Malformed(src + ": packages", "missing");
  if (!list->is_array()) return Malformed(src + ": packages", "not an array");
  PackageCatalog catalog;
  std::map<std::string, size_t, std::less<>> first_at;  // name -> index in the file
  for (size_t i = 0; i < list->size(); ++i) {
    const json& item = (*list)[i];
    const std::string where = src + ": packages[" + std::to_string(i) + "]";
    if (!item.is_object()) return Malformed(where, "not a JSON object");
    SOD_RETURN_IF_ERROR(CheckOnlyKeys(item, where, {"name", "description", "options", "protect"}));
    Package p;
    p.source = src;
    SOD_ASSIGN_OR_RETURN(p.name, internal::GetString(item, "name", where + ".name"));
    if (Status s = ValidatePackageName(p.name); !s.ok())
      return Malformed(where + ".name", s.message());
    SOD_ASSIGN_OR_RETURN(p.description,
                         internal::GetString(item, "description", where + ".description",
                                             /*optional=*/true));
    if (auto [it, fresh] = first_at.emplace(p.name, i); !fresh)
      return Malformed(where, "package \"" + p.name + "\" defined twice (first at packages[" +
                                  std::to_string(it->second) + "])");
    SOD_ASSIGN_OR_RETURN(p.options, OptionChoicesFromJson(item, where));
    Result<RequestMatrix> m = RequestMatrix::FromOptions(p.options);
    if (!m.ok()) return m.status().WithContext(src + ": package \"" + p.name + "\"");
    p.matrix = *m;
    catalog.packages_.push_back(std::move(p));
  }
  std::sort(catalog.packages_.begin(), catalog.packages_.end(), ByName);
  return catalog;
}

Result<PackageCatalog> PackageCatalog::LoadFile(const std::filesystem::path& path) {
  SOD_ASSIGN_OR_RETURN(json j, internal::ReadStrictJsonFile(path, kMaxPackagesFile));
  return FromJson(j, path.string());
}

Result<PackageCatalog> PackageCatalog::LoadFiles(std::span<const std::filesystem::path> paths) {
  PackageCatalog all;
  for (const auto& path : paths) {
    SOD_ASSIGN_OR_RETURN(PackageCatalog one, LoadFile(path));
    all.Merge(one);
  }
  return all;
}

void PackageCatalog::Merge(const PackageCatalog& later) {
  for (const Package& p : later.packages_) {
    auto it = std::lower_bound(packages_.begin(), packages_.end(), p, ByName);
    if (it != packages_.end() && it->name == p.name) {
      *it = p;
    } else {
      packages_.insert(it, p);
    }
  }
}

const Package* PackageCatalog::Find(std::string_view name) const {
  auto it = std::lower_bound(packages_.begin(), packages_.end(), name,
                             [](const Package& p, std::string_view n) { return p.name < n; });
  return it != packages_.end() && it->name == name ? &*it : nullptr;
}

Result<RequestMatrix> PackageCatalog::Resolve(const SecurityRequest& request) const {
  if (!request.package.empty() && !request.options.empty())
    return Error(Errc::kInvalidArgument, "a request names a package or options, not both");
  if (request.package.empty()) return RequestMatrix::FromOptions(request.options);
  const Package* p = Find(request.package);
  if (p == nullptr) {
    std::string known;
    for (const Package& k : packages_) known += (known.empty() ? "" : ", ") + k.name;
    return Error(Errc::kNotFound, "unknown package \"" + request.package.substr(0, 64) +
                                      "\" (known: " + (known.empty() ? "none" : known) + ")");
  }
  return p->matrix;
}

json PackageCatalog::ToJson() const {
  json list = json::array();
  for (const Package& p : packages_) {
    json item{{"name", p.name}};
    if (!p.description.empty()) item["description"] = p.description;
    OptionChoicesToJson(p.options, item);
    list.push_back(std::move(item));
  }
  return json{{"version", kPackagesVersion}, {"packages", std::move(list)}};
}

}  // namespace sod::policy
