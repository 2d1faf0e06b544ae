// The cells of the paper's security matrices: which attacker entity, which property.
//
// Both the request matrix (seed paper 000, Table II: what a customer asks protection against) and
// the capability table (Table III: what a server architecture protects against) have one column
// per (attacker entity, property) pair: 7 entities x {confidentiality, integrity} = 14 cells, in
// the order below (the tables' column order). A set of cells is a 14-bit mask, so "does a host
// protect every requested cell" is one AND (CellSet::IsSubsetOf).
//
// Table I of the paper also lists "other servers" and "outside entities" (cloud-level attackers);
// Tables II and III have no column for them and neither does this model.
//
// Thread-safety: everything here is a value type or a pure function.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sod::policy {

// The attacker entities of Tables II and III, in column order. Values are cell-index arithmetic
// (CellIndex), not a wire format; names (EntityName) are what files and JSON use.
enum class Entity : uint8_t {
  kSameApp = 0,       // "same-app": the application operating on the data (VM level)
  kOtherApps = 1,     // "other-apps": other applications in the same VM
  kGuestOs = 2,       // "guest-os": the VM's own OS (Tables II/III: "Same OS")
  kOtherVms = 3,      // "other-vms": other VMs on the same server (server level)
  kHypervisor = 4,    // "hypervisor": the hypervisor / host OS
  kHardware = 5,      // "hardware": physical attacks on the server ("HW attacks")
  kCloudManager = 6,  // "cloud-manager": the cloud manager (cloud level)
};
inline constexpr size_t kEntityCount = 7;
inline constexpr std::array<Entity, kEntityCount> kAllEntities = {
    Entity::kSameApp,    Entity::kOtherApps, Entity::kGuestOs,     Entity::kOtherVms,
    Entity::kHypervisor, Entity::kHardware,  Entity::kCloudManager};

enum class Property : uint8_t {
  kConfidentiality = 0,  // "C"
  kIntegrity = 1,        // "I"
};
inline constexpr std::array<Property, 2> kAllProperties = {Property::kConfidentiality,
                                                           Property::kIntegrity};

inline constexpr size_t kCellCount = 2 * kEntityCount;  // 14

// The stable names used in every file and JSON document: "same-app", "other-apps", "guest-os",
// "other-vms", "hypervisor", "hardware", "cloud-manager".
std::string_view EntityName(Entity e);
// The entity named `name` (exactly, case-sensitive), or nullopt.
std::optional<Entity> EntityFromName(std::string_view name);
// "same-app, other-apps, ..., cloud-manager": for error messages.
std::string EntityNameList();

// "C" or "I".
std::string_view PropertyName(Property p);

// Bit index of a cell in a CellSet: 2 * entity + property (so C and I of one entity are adjacent).
constexpr unsigned CellIndex(Entity e, Property p) {
  return 2u * static_cast<unsigned>(e) + static_cast<unsigned>(p);
}
constexpr Entity CellEntity(unsigned index) { return static_cast<Entity>(index / 2); }
constexpr Property CellProperty(unsigned index) { return static_cast<Property>(index % 2); }
// "hypervisor.C". Precondition: index < kCellCount.
std::string CellName(unsigned index);

// Which of C and I a customer wants for one entity (paper III-B: "confidentiality protection or
// integrity or both"). Bit 0 = C, bit 1 = I, as in the cell index.
enum class Protection : uint8_t { kC = 1, kI = 2, kCI = 3 };
// "C", "I" or "CI".
std::string_view ProtectionName(Protection p);
// Exactly "C", "I" or "CI"; nullopt for anything else ("IC", "c", "").
std::optional<Protection> ProtectionFromName(std::string_view name);

// A set of cells: bit CellIndex(e, p) set = cell (e, p) in the set. Bits 14 and 15 are never set.
class CellSet {
 public:
  static constexpr uint16_t kAllBits = (1u << kCellCount) - 1;

  constexpr CellSet() = default;
  // Bits above kAllBits are dropped.
  static constexpr CellSet FromBits(uint16_t bits) {
    CellSet s;
    s.bits_ = bits & kAllBits;
    return s;
  }
  static constexpr CellSet All() { return FromBits(kAllBits); }

  constexpr uint16_t bits() const { return bits_; }
  constexpr bool empty() const { return bits_ == 0; }
  constexpr bool Contains(unsigned index) const {
    return index < kCellCount && (bits_ >> index) & 1u;
  }
  constexpr bool Contains(Entity e, Property p) const { return Contains(CellIndex(e, p)); }
  // True when any cell of `e` is in the set.
  constexpr bool ContainsAny(Entity e) const { return ProtectionBits(e) != 0; }
  // The C/I bits of `e` (0..3, bit 0 = C), as a Protection when nonzero.
  constexpr unsigned ProtectionBits(Entity e) const {
    return (bits_ >> CellIndex(e, Property::kConfidentiality)) & 3u;
  }
  constexpr bool IsSubsetOf(CellSet other) const { return (bits_ & ~other.bits_) == 0; }
  size_t size() const;

  constexpr void Add(unsigned index) {
    if (index < kCellCount) bits_ |= static_cast<uint16_t>(1u << index);
  }
  constexpr void Add(Entity e, Property p) { Add(CellIndex(e, p)); }
  constexpr void Add(Entity e, Protection p) {
    bits_ |=
        static_cast<uint16_t>(static_cast<unsigned>(p) << CellIndex(e, Property::kConfidentiality));
  }

  constexpr CellSet Union(CellSet o) const { return FromBits(bits_ | o.bits_); }
  constexpr CellSet Intersect(CellSet o) const { return FromBits(bits_ & o.bits_); }
  constexpr CellSet Minus(CellSet o) const { return FromBits(bits_ & ~o.bits_); }

  // The cell indices in the set, ascending.
  std::vector<unsigned> Indices() const;
  // "other-vms.C other-vms.I hypervisor.C" (ascending), or "(none)".
  std::string ToString() const;
  // "other-vms:CI hypervisor:C" (one token per entity, ascending), or "(none)".
  std::string ToEntityString() const;

  constexpr bool operator==(const CellSet&) const = default;

 private:
  uint16_t bits_ = 0;
};

}  // namespace sod::policy
