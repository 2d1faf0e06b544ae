// The security request of a VM: the customer's options (seed paper 000, section III-B) and the
// request matrix they fill in (Table II). policy/README.md has the data model and the JSON.
//
// Options and entities (III-B; each option names exactly one attacker entity):
//   1 basic security        protection against other VMs on the same server  -> other-vms
//   2 hypervisor protection against an untrusted hypervisor (host OS on KVM) -> hypervisor
//   3 HW protection         against hardware (physical) attacks              -> hardware
//   4 cloud-manager prot.   against an untrusted cloud manager               -> cloud-manager
//   5 guest-OS protection   against an untrusted guest OS                    -> guest-os
//   6 apps protection       against other applications in the VM             -> other-apps
//   7 same-app protection   against the very application using the data      -> same-app
// For each chosen option the customer picks C, I or both (III-B, the paragraph after the list);
// the matrix then has those cells of that entity set. Options combine freely, with one exception
// (III-E, last paragraph): attacks from within the VM are defeated by introspection from a trusted
// hypervisor, so option 5 or 6 excludes option 2. CheckOptionRule enforces it on every matrix.
//
// Reading Table II: its cells mark with "X" the entities the customer *trusts*; protection is
// requested for the blank cells. VM-A (option 1, C and I) is blank exactly under "Other VMs",
// VM-B (options 1 and 2, C and I) under "Other VMs" and "Hypervisor". A RequestMatrix stores the
// complement of the X marks: the cells to protect.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "policy/cells.h"

namespace sod::policy {

inline constexpr uint64_t kRequestVersion = 1;

// The options of III-B, numbered as in the paper.
enum class SecurityOption : uint8_t {
  kBasic = 1,
  kHypervisor = 2,
  kHardware = 3,
  kCloudManager = 4,
  kGuestOs = 5,
  kApps = 6,
  kSameApp = 7,
};
inline constexpr int kFirstOption = 1;
inline constexpr int kLastOption = 7;

// The entity an option protects against (table above) and back: a bijection.
Entity OptionEntity(SecurityOption option);
SecurityOption EntityOption(Entity entity);
// "option 5 (guest-OS protection)".
std::string OptionLabel(SecurityOption option);
// The option numbered `number`; kInvalidArgument "unknown option 8 (options are 1..7, paper
// III-B)" otherwise.
Result<SecurityOption> OptionFromNumber(int64_t number);

// One chosen option and the properties it protects.
struct OptionChoice {
  SecurityOption option = SecurityOption::kBasic;
  Protection protect = Protection::kCI;
  bool operator==(const OptionChoice&) const = default;
};

// The 5/6-excludes-2 rule on a set of cells: kInvalidArgument when a cell of guest-os (option 5)
// or other-apps (option 6) is requested together with a cell of hypervisor (option 2), e.g.
// "option 5 (guest-OS protection) excludes option 2 (hypervisor protection): protection from
// within the VM relies on introspection by a trusted hypervisor (paper III-E)". OK otherwise.
Status CheckOptionRule(CellSet cells);

// A VM's request matrix (Table II row): the cells to protect. Always satisfies CheckOptionRule
// (the factories refuse anything else). The empty matrix requests nothing: every trusted host
// covers it. Copyable value type.
class RequestMatrix {
 public:
  RequestMatrix() = default;

  // The matrix of exactly `cells`; CheckOptionRule's error otherwise.
  static Result<RequestMatrix> FromCells(CellSet cells);
  // The matrix the options fill in. kInvalidArgument for an empty list ("no option chosen"), for
  // an option listed twice ("option 1 (basic security) chosen twice") and for the rule.
  static Result<RequestMatrix> FromOptions(std::span<const OptionChoice> choices);
  // Convenience: options by number, all with the same protection. Errors as above, plus
  // OptionFromNumber's.
  static Result<RequestMatrix> FromOptions(std::initializer_list<int> options, Protection protect);

  CellSet cells() const { return cells_; }
  bool Requests(Entity e, Property p) const { return cells_.Contains(e, p); }
  bool empty() const { return cells_.empty(); }
  // The options this matrix corresponds to, ascending (an entity with any cell = its option).
  std::vector<OptionChoice> options() const;
  // "other-vms:CI hypervisor:CI", or "(none)".
  std::string ToString() const { return cells_.ToEntityString(); }

  bool operator==(const RequestMatrix&) const = default;

 private:
  explicit RequestMatrix(CellSet cells) : cells_(cells) {}
  CellSet cells_;
};

// A request matrix as JSON: {"version": 1, "protect": {"other-vms": "CI", "hypervisor": "C"}}.
// Entities not listed are trusted (nothing requested). Entities in column order.
nlohmann::json RequestMatrixToJson(const RequestMatrix& m);
// Strict inverse: exactly the keys "version" and "protect"; entity names as in cells.h; values
// exactly "C", "I" or "CI". kMalformed naming the field ("request: protect.kernel: unknown entity
// (one of same-app, ...)"), kUnsupported for another version, CheckOptionRule's kInvalidArgument.
// Never throws.
Result<RequestMatrix> RequestMatrixFromJson(const nlohmann::json& j);

// What a customer submits: a named package (packages.h) or a list of options. Exactly one of the
// two is set.
struct SecurityRequest {
  std::string package;                // a package name, or ""
  std::vector<OptionChoice> options;  // the options, or empty when `package` is set
  bool operator==(const SecurityRequest&) const = default;
};

// {"version": 1, "package": "online-medical-records"}, or
// {"version": 1, "options": [1, 2], "protect": "CI"} when every option has the same protection,
// {"version": 1, "options": [{"option": 1, "protect": "CI"}, {"option": 2, "protect": "C"}]}
// otherwise.
nlohmann::json SecurityRequestToJson(const SecurityRequest& r);
// Strict inverse: exactly one of "package" and "options". Options are parsed as
// OptionChoicesFromJson does. The options are not checked against the rule here (resolving the
// request does: PackageCatalog::Resolve). kMalformed / kUnsupported naming the field.
Result<SecurityRequest> SecurityRequestFromJson(const nlohmann::json& j);

// The "options" (and "protect") members of `obj`, as requests and package files write them:
// "options" is a non-empty array whose elements are option numbers 1..7 (then "protect", "C" / "I"
// / "CI", is required and applies to them) or objects {"option": n, "protect": "C"}. An option
// listed twice is refused; a "protect" that is present must be valid even when every element
// brings its own. Errors are kMalformed and name `where` ("<where>.options[2]: unknown option 9
// (options are 1..7, paper III-B)"). Unknown keys of `obj` are the caller's to check.
Result<std::vector<OptionChoice>> OptionChoicesFromJson(const nlohmann::json& obj,
                                                        std::string_view where);
// The inverse of OptionChoicesFromJson, written into `obj` (compact form when the protections
// agree).
void OptionChoicesToJson(std::span<const OptionChoice> choices, nlohmann::json& obj);

}  // namespace sod::policy
