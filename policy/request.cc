#include "policy/request.h"

#include <nlohmann/json.hpp>

#include "policy/json_file.h"

namespace sod::policy {
namespace {

using internal::CheckOnlyKeys;
using internal::Malformed;
using internal::Shown;
using nlohmann::json;

struct OptionInfo {
  SecurityOption option;
  Entity entity;
  std::string_view title;
};
// Paper III-B, in option order (index = number - 1).
constexpr OptionInfo kOptions[] = {
    {SecurityOption::kBasic, Entity::kOtherVms, "basic security"},
    {SecurityOption::kHypervisor, Entity::kHypervisor, "hypervisor protection"},
    {SecurityOption::kHardware, Entity::kHardware, "HW protection"},
    {SecurityOption::kCloudManager, Entity::kCloudManager, "cloud-manager protection"},
    {SecurityOption::kGuestOs, Entity::kGuestOs, "guest-OS protection"},
    {SecurityOption::kApps, Entity::kOtherApps, "apps protection"},
    {SecurityOption::kSameApp, Entity::kSameApp, "same-app protection"},
};
static_assert(std::size(kOptions) == kLastOption - kFirstOption + 1);
static_assert(std::size(kOptions) == kEntityCount, "options and entities are a bijection");

constexpr const OptionInfo& Info(SecurityOption o) {
  return kOptions[static_cast<size_t>(o) - kFirstOption];
}
constexpr bool OptionsInOrder() {
  for (size_t i = 0; i < std::size(kOptions); ++i)
    if (static_cast<size_t>(kOptions[i].option) != i + kFirstOption) return false;
  return true;
}
static_assert(OptionsInOrder());

std::string UnknownOption(const std::string& shown) {
  return "unknown option " + shown + " (options are 1..7, paper III-B)";
}

// Parses one element of an "options" array; `protect` is the object's default or null.
Result<OptionChoice> ChoiceFromJson(const json& element, const json* protect,
                                    const std::string& where) {
  const json* number = &element;
  if (element.is_object()) {
    SOD_RETURN_IF_ERROR(CheckOnlyKeys(element, where, {"option", "protect"}));
    auto o = element.find("option");
    if (o == element.end()) return Malformed(where + ".option", "missing");
    number = &*o;
    auto p = element.find("protect");
    if (p == element.end()) return Malformed(where + ".protect", "missing");
    protect = &*p;
  } else if (!element.is_number()) {
    return Malformed(where,
                     "neither an option number nor {\"option\", \"protect\"}: " + Shown(element));
  }
  if (!number->is_number_integer()) return Malformed(where, UnknownOption(Shown(*number)));
  Result<SecurityOption> option = OptionFromNumber(number->get<int64_t>());
  if (!option.ok()) return Malformed(where, UnknownOption(Shown(*number)));
  if (protect == nullptr)
    return Malformed(where, "option " + Shown(*number) +
                                " has no protection: give \"protect\" (\"C\", \"I\" or \"CI\")");
  std::optional<Protection> p;
  if (protect->is_string()) p = ProtectionFromName(protect->get<std::string>());
  if (!p)
    return Malformed(element.is_object() ? where + ".protect" : where,
                     "protection " + Shown(*protect) + " is not \"C\", \"I\" or \"CI\"");
  return OptionChoice{*option, *p};
}

}  // namespace

Entity OptionEntity(SecurityOption option) { return Info(option).entity; }

SecurityOption EntityOption(Entity entity) {
  for (const OptionInfo& i : kOptions)
    if (i.entity == entity) return i.option;
  return SecurityOption::kBasic;  // unreachable: the table is a bijection
}

std::string OptionLabel(SecurityOption option) {
  return "option " + std::to_string(static_cast<int>(option)) + " (" +
         std::string(Info(option).title) + ")";
}

Result<SecurityOption> OptionFromNumber(int64_t number) {
  if (number < kFirstOption || number > kLastOption)
    return Error(Errc::kInvalidArgument, UnknownOption(std::to_string(number)));
  return static_cast<SecurityOption>(number);
}

Status CheckOptionRule(CellSet cells) {
  if (!cells.ContainsAny(Entity::kHypervisor)) return Status::Ok();
  const bool five = cells.ContainsAny(Entity::kGuestOs);
  const bool six = cells.ContainsAny(Entity::kOtherApps);
  if (!five && !six) return Status::Ok();
  std::string which;
  if (five && six) {
    which = "options 5 (" + std::string(Info(SecurityOption::kGuestOs).title) + ") and 6 (" +
            std::string(Info(SecurityOption::kApps).title) + ") exclude ";
  } else {
    which = OptionLabel(five ? SecurityOption::kGuestOs : SecurityOption::kApps) + " excludes ";
  }
  return Error(Errc::kInvalidArgument,
               which + OptionLabel(SecurityOption::kHypervisor) +
                   ": protection from within the VM relies on introspection by a trusted "
                   "hypervisor (paper III-E)");
}

Result<RequestMatrix> RequestMatrix::FromCells(CellSet cells) {
  SOD_RETURN_IF_ERROR(CheckOptionRule(cells));
  return RequestMatrix(cells);
}

Result<RequestMatrix> RequestMatrix::FromOptions(std::span<const OptionChoice> choices) {
  if (choices.empty())
    return Error(Errc::kInvalidArgument, "no option chosen (choose options 1..7, paper III-B)");
  CellSet cells;
  unsigned seen = 0;
  for (const OptionChoice& c : choices) {
    const auto n = static_cast<unsigned>(c.option);
    if (n < kFirstOption || n > kLastOption)
      return Error(Errc::kInvalidArgument, UnknownOption(std::to_string(n)));
    if (seen & (1u << n))
      return Error(Errc::kInvalidArgument, OptionLabel(c.option) + " chosen twice");
    if (c.protect != Protection::kC && c.protect != Protection::kI && c.protect != Protection::kCI)
      return Error(Errc::kInvalidArgument, OptionLabel(c.option) + ": no protection chosen");
    seen |= 1u << n;
    cells.Add(OptionEntity(c.option), c.protect);
  }
  return FromCells(cells);
}

Result<RequestMatrix> RequestMatrix::FromOptions(std::initializer_list<int> options,
                                                 Protection protect) {
  std::vector<OptionChoice> choices;
  for (int n : options) {
    SOD_ASSIGN_OR_RETURN(SecurityOption o, OptionFromNumber(n));
    choices.push_back({o, protect});
  }
  return FromOptions(choices);
}

std::vector<OptionChoice> RequestMatrix::options() const {
  std::vector<OptionChoice> out;
  for (const OptionInfo& i : kOptions) {
    const unsigned bits = cells_.ProtectionBits(i.entity);
    if (bits != 0) out.push_back({i.option, static_cast<Protection>(bits)});
  }
  return out;
}

json RequestMatrixToJson(const RequestMatrix& m) {
  json protect = json::object();
  for (Entity e : kAllEntities) {
    const unsigned bits = m.cells().ProtectionBits(e);
    if (bits != 0)
      protect[std::string(EntityName(e))] = ProtectionName(static_cast<Protection>(bits));
  }
  return json{{"version", kRequestVersion}, {"protect", protect}};
}

Result<RequestMatrix> RequestMatrixFromJson(const json& j) {
  if (!j.is_object()) return Malformed("request", "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(j, "request", {"version", "protect"}));
  SOD_RETURN_IF_ERROR(internal::CheckVersion(j, "request.version", kRequestVersion));
  auto protect = j.find("protect");
  if (protect == j.end()) return Malformed("request.protect", "missing");
  if (!protect->is_object()) return Malformed("request.protect", "not a JSON object");
  CellSet cells;
  for (const auto& item : protect->items()) {
    const std::string field = "request.protect." + item.key().substr(0, 64);
    std::optional<Entity> e = EntityFromName(item.key());
    if (!e) return Malformed(field, "unknown entity (one of " + EntityNameList() + ")");
    std::optional<Protection> p;
    if (item.value().is_string()) p = ProtectionFromName(item.value().get<std::string>());
    if (!p)
      return Malformed(field, "protection " + Shown(item.value()) +
                                  " is not \"C\", \"I\" or \"CI\" (omit a trusted entity)");
    cells.Add(*e, *p);
  }
  return RequestMatrix::FromCells(cells);
}

Result<std::vector<OptionChoice>> OptionChoicesFromJson(const json& obj, std::string_view where) {
  const std::string base(where);
  auto options = obj.find("options");
  if (options == obj.end()) return Malformed(base + ".options", "missing");
  if (!options->is_array()) return Malformed(base + ".options", "not an array");
  if (options->empty()) return Malformed(base + ".options", "empty (choose options 1..7)");
  const json* protect = nullptr;
  if (auto p = obj.find("protect"); p != obj.end()) {
    if (!p->is_string() || !ProtectionFromName(p->get<std::string>()))
      return Malformed(base + ".protect",
                       "protection " + Shown(*p) + " is not \"C\", \"I\" or \"CI\"");
    protect = &*p;
  }
  std::vector<OptionChoice> out;
  unsigned seen = 0;
  for (size_t i = 0; i < options->size(); ++i) {
    const std::string field = base + ".options[" + std::to_string(i) + "]";
    SOD_ASSIGN_OR_RETURN(OptionChoice c, ChoiceFromJson((*options)[i], protect, field));
    const unsigned bit = 1u << static_cast<unsigned>(c.option);
    if (seen & bit) return Malformed(field, OptionLabel(c.option) + " listed twice");
    seen |= bit;
    out.push_back(c);
  }
  return out;
}

void OptionChoicesToJson(std::span<const OptionChoice> choices, json& obj) {
  bool same = true;
  for (const OptionChoice& c : choices) same = same && c.protect == choices.front().protect;
  json list = json::array();
  for (const OptionChoice& c : choices) {
    if (same) {
      list.push_back(static_cast<int>(c.option));
    } else {
      list.push_back(
          json{{"option", static_cast<int>(c.option)}, {"protect", ProtectionName(c.protect)}});
    }
  }
  obj["options"] = std::move(list);
  if (same && !choices.empty()) obj["protect"] = ProtectionName(choices.front().protect);
}

json SecurityRequestToJson(const SecurityRequest& r) {
  json j{{"version", kRequestVersion}};
  if (!r.package.empty()) {
    j["package"] = r.package;
  } else {
    OptionChoicesToJson(r.options, j);
  }
  return j;
}

Result<SecurityRequest> SecurityRequestFromJson(const json& j) {
  if (!j.is_object()) return Malformed("request", "not a JSON object");
  SOD_RETURN_IF_ERROR(CheckOnlyKeys(j, "request", {"version", "package", "options", "protect"}));
  SOD_RETURN_IF_ERROR(internal::CheckVersion(j, "request.version", kRequestVersion));
  const bool has_package = j.contains("package");
  const bool has_options = j.contains("options");
  if (has_package == has_options)
    return Malformed("request", has_package ? "both \"package\" and \"options\": give one"
                                            : "neither \"package\" nor \"options\"");
  SecurityRequest r;
  if (has_package) {
    if (j.contains("protect"))
      return Malformed("request.protect", "a package brings its own protection");
    SOD_ASSIGN_OR_RETURN(r.package, internal::GetString(j, "package", "request.package"));
    if (r.package.empty()) return Malformed("request.package", "empty");
    return r;
  }
  SOD_ASSIGN_OR_RETURN(r.options, OptionChoicesFromJson(j, "request"));
  return r;
}

}  // namespace sod::policy
