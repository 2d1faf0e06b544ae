#include "policy/cells.h"

#include <bit>

namespace sod::policy {
namespace {

// Indexed by the Entity value; the static_assert keeps it in step with the enum.
constexpr std::string_view kEntityNames[] = {
    "same-app", "other-apps", "guest-os", "other-vms", "hypervisor", "hardware", "cloud-manager"};
static_assert(std::size(kEntityNames) == kEntityCount);
static_assert(static_cast<size_t>(Entity::kCloudManager) + 1 == kEntityCount);

}  // namespace

std::string_view EntityName(Entity e) {
  const auto i = static_cast<size_t>(e);
  return i < kEntityCount ? kEntityNames[i] : "?";
}

std::optional<Entity> EntityFromName(std::string_view name) {
  for (Entity e : kAllEntities)
    if (EntityName(e) == name) return e;
  return std::nullopt;
}

std::string EntityNameList() {
  std::string out;
  for (Entity e : kAllEntities) {
    if (!out.empty()) out += ", ";
    out += EntityName(e);
  }
  return out;
}

std::string_view PropertyName(Property p) { return p == Property::kConfidentiality ? "C" : "I"; }

std::string CellName(unsigned index) {
  return std::string(EntityName(CellEntity(index))) + "." +
         std::string(PropertyName(CellProperty(index)));
}

std::string_view ProtectionName(Protection p) {
  switch (p) {
    case Protection::kC:
      return "C";
    case Protection::kI:
      return "I";
    case Protection::kCI:
      return "CI";
  }
  return "?";
}

std::optional<Protection> ProtectionFromName(std::string_view name) {
  if (name == "C") return Protection::kC;
  if (name == "I") return Protection::kI;
  if (name == "CI") return Protection::kCI;
  return std::nullopt;
}

size_t CellSet::size() const { return static_cast<size_t>(std::popcount(bits_)); }

std::vector<unsigned> CellSet::Indices() const {
  std::vector<unsigned> out;
  for (unsigned i = 0; i < kCellCount; ++i)
    if (Contains(i)) out.push_back(i);
  return out;
}

std::string CellSet::ToString() const {
  if (empty()) return "(none)";
  std::string out;
  for (unsigned i : Indices()) {
    if (!out.empty()) out += ' ';
    out += CellName(i);
  }
  return out;
}

std::string CellSet::ToEntityString() const {
  if (empty()) return "(none)";
  std::string out;
  for (Entity e : kAllEntities) {
    const unsigned bits = ProtectionBits(e);
    if (bits == 0) continue;
    if (!out.empty()) out += ' ';
    out += EntityName(e);
    out += ':';
    out += ProtectionName(static_cast<Protection>(bits));
  }
  return out;
}

}  // namespace sod::policy
