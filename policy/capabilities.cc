#include "policy/capabilities.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "base/utf8.h"
#include "policy/json_file.h"

namespace sod::policy {
namespace {

using internal::CheckOnlyKeys;
using internal::Malformed;
using internal::Shown;
using nlohmann::json;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

std::optional<Capability> CapabilityFromName(std::string_view s) {
  if (s == "Yes") return Capability::kYes;
  if (s == "No") return Capability::kNo;
  if (s == "n-a") return Capability::kNotApplicable;
  return std::nullopt;
}

// A free-text field: optional or not, a string of printable UTF-8 up to kMaxCapabilityText.
Result<std::string> GetText(const json& obj, std::string_view key, const std::string& where,
                            bool optional) {
  const std::string field = where + ": " + std::string(key);
  SOD_ASSIGN_OR_RETURN(std::string s, internal::GetString(obj, key, field, optional));
  if (!optional && s.empty()) return Malformed(field, "empty");
  if (s.size() > kMaxCapabilityText)
    return Malformed(field, "longer than " + std::to_string(kMaxCapabilityText) + " bytes");
  if (!IsPrintableUtf8(s)) return Malformed(field, "not printable UTF-8");
  return s;
}

// The row of `item`; `where` already names source and row ("f.json: architecture \"x\"").
Status ParseCells(const json& item, const std::string& where, CapabilityRow& row) {
  auto cells = item.find("cells");
  if (cells == item.end()) return Malformed(where + ": cells", "missing");
  if (!cells->is_object()) return Malformed(where + ": cells", "not a JSON object");
  for (const auto& entry : cells->items()) {
    if (!EntityFromName(entry.key()))
      return Malformed(where + ": cells." + entry.key().substr(0, 64),
                       "unknown entity (one of " + EntityNameList() + ")");
  }
  for (Entity e : kAllEntities) {
    const std::string field = where + ": cells." + std::string(EntityName(e));
    auto cell = cells->find(EntityName(e));
    if (cell == cells->end()) return Malformed(field, "missing (every entity needs C and I)");
    if (!cell->is_object()) return Malformed(field, "not a JSON object {\"C\": ..., \"I\": ...}");
    SOD_RETURN_IF_ERROR(CheckOnlyKeys(*cell, field, {"C", "I"}));
    for (Property p : kAllProperties) {
      const std::string cell_field = field + "." + std::string(PropertyName(p));
      auto value = cell->find(PropertyName(p));
      if (value == cell->end()) return Malformed(cell_field, "missing");
      std::optional<Capability> c;
      if (value->is_string()) c = CapabilityFromName(value->get<std::string>());
      if (!c) return Malformed(cell_field, Shown(*value) + " is not Yes, No or n-a");
      row.cells[CellIndex(e, p)] = *c;
    }
  }
  return Status::Ok();
}

Result<CapabilityRow> ParseRow(const json& item, const std::string& src, size_t index) {
  std::string where = src + ": architectures[" + std::to_string(index) + "]";
  if (!item.is_object()) return Malformed(where, "not a JSON object");
  CapabilityRow row;
  row.source = src;
  SOD_ASSIGN_OR_RETURN(row.name, internal::GetString(item, "name", where + ".name"));
  if (Status s = ValidateArchitectureName(row.name); !s.ok())
    return Malformed(where + ".name", s.message());
  // From here on errors name the architecture, which an operator finds faster than an index.
  where = src + ": architecture \"" + row.name + "\"";
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(
      item, where, {"name", "title", "category", "protected_entity", "note", "redefine", "cells"}));
  SOD_ASSIGN_OR_RETURN(row.title, GetText(item, "title", where, false));
  SOD_ASSIGN_OR_RETURN(row.category, GetText(item, "category", where, true));
  SOD_ASSIGN_OR_RETURN(row.protected_entity, GetText(item, "protected_entity", where, false));
  SOD_ASSIGN_OR_RETURN(row.note, GetText(item, "note", where, true));
  if (auto r = item.find("redefine"); r != item.end()) {
    if (!r->is_boolean()) return Malformed(where + ": redefine", "not true or false");
    row.redefine = r->get<bool>();
  }
  SOD_RETURN_IF_ERROR(ParseCells(item, where, row));
  return row;
}

}  // namespace

std::string_view CapabilityName(Capability c) {
  switch (c) {
    case Capability::kNo:
      return "No";
    case Capability::kYes:
      return "Yes";
    case Capability::kNotApplicable:
      return "n-a";
  }
  return "?";
}

CellSet CapabilityRow::Protects() const {
  CellSet s;
  for (unsigned i = 0; i < kCellCount; ++i)
    if (cells[i] == Capability::kYes) s.Add(i);
  return s;
}

Status ValidateArchitectureName(std::string_view name) {
  if (name.empty()) return Error(Errc::kInvalidArgument, "empty architecture name");
  if (name.size() > kMaxArchitectureName)
    return Error(Errc::kInvalidArgument, "architecture name longer than " +
                                             std::to_string(kMaxArchitectureName) + " characters");
  if (!std::all_of(name.begin(), name.end(), NameChar))
    return Error(Errc::kInvalidArgument, "architecture name \"" +
                                             (IsPrintableUtf8(name) ? std::string(name) : "?") +
                                             "\" is not made of [A-Za-z0-9._-]");
  return Status::Ok();
}

Result<CapabilityTable> CapabilityTable::FromJson(const json& j, std::string_view source) {
  const std::string src(source);
  if (!j.is_object()) return Malformed(src, "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(j, src, {"version", "architectures"}));
  SOD_RETURN_IF_ERROR(internal::CheckVersion(j, src + ": version", kCapabilitiesVersion));
  auto list = j.find("architectures");
  if (list == j.end()) return Malformed(src + ": architectures", "missing");
  if (!list->is_array()) return Malformed(src + ": architectures", "not an array");
  CapabilityTable table;
  for (size_t i = 0; i < list->size(); ++i) {
    SOD_ASSIGN_OR_RETURN(CapabilityRow row, ParseRow((*list)[i], src, i));
    if (auto it = table.by_name_.find(row.name); it != table.by_name_.end())
      return Malformed(src + ": architectures[" + std::to_string(i) + "]",
                       "architecture \"" + row.name + "\" defined twice (first at architectures[" +
                           std::to_string(it->second) + "])");
    table.by_name_.emplace(row.name, table.rows_.size());
    table.rows_.push_back(std::move(row));
  }
  return table;
}

Result<CapabilityTable> CapabilityTable::LoadFile(const std::filesystem::path& path) {
  SOD_ASSIGN_OR_RETURN(json j, internal::ReadStrictJsonFile(path, kMaxCapabilitiesFile));
  return FromJson(j, path.string());
}

Result<CapabilityTable> CapabilityTable::LoadFiles(std::span<const std::filesystem::path> paths) {
  CapabilityTable all;
  for (const auto& path : paths) {
    SOD_ASSIGN_OR_RETURN(CapabilityTable one, LoadFile(path));
    SOD_RETURN_IF_ERROR(all.Extend(one));
  }
  return all;
}

Status CapabilityTable::Extend(const CapabilityTable& more) {
  // Check every row first, so a refusal leaves the table as it was.
  for (const CapabilityRow& row : more.rows_) {
    const CapabilityRow* existing = Find(row.name);
    if (existing != nullptr && !row.redefine)
      return Error(Errc::kRefused, row.source + ": architecture \"" + row.name +
                                       "\" is already defined by " + existing->source +
                                       ": set \"redefine\": true to replace it");
    if (existing == nullptr && row.redefine)
      return Error(Errc::kRefused, row.source + ": architecture \"" + row.name +
                                       "\" says \"redefine\" but no earlier file defines it");
  }
  for (const CapabilityRow& row : more.rows_) {
    if (auto it = by_name_.find(row.name); it != by_name_.end()) {
      rows_[it->second] = row;
    } else {
      by_name_.emplace(row.name, rows_.size());
      rows_.push_back(row);
    }
  }
  return Status::Ok();
}

const CapabilityRow* CapabilityTable::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &rows_[it->second];
}

Result<const CapabilityRow*> CapabilityTable::Row(std::string_view name) const {
  const CapabilityRow* row = Find(name);
  if (row == nullptr)
    return Error(Errc::kNotFound, "capability table: unknown architecture \"" +
                                      std::string(name.substr(0, kMaxArchitectureName)) + "\"");
  return row;
}

json CapabilityTable::ToJson() const {
  json list = json::array();
  for (const CapabilityRow& row : rows_) {
    json cells = json::object();
    for (Entity e : kAllEntities) {
      cells[std::string(EntityName(e))] = {
          {"C", CapabilityName(row.At(e, Property::kConfidentiality))},
          {"I", CapabilityName(row.At(e, Property::kIntegrity))}};
    }
    json item{{"name", row.name},
              {"title", row.title},
              {"protected_entity", row.protected_entity},
              {"cells", std::move(cells)}};
    if (!row.category.empty()) item["category"] = row.category;
    if (!row.note.empty()) item["note"] = row.note;
    list.push_back(std::move(item));
  }
  return json{{"version", kCapabilitiesVersion}, {"architectures", std::move(list)}};
}

}  // namespace sod::policy
