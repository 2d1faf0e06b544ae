// The policy agent's pure core (policy/): request matrix, packages, capability table, coverage,
// placement. The paper's own examples (seed paper 000, Tables II and III) are encoded here with
// the reasoning that derives the expected answers by hand.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "policy/capabilities.h"
#include "policy/cells.h"
#include "policy/coverage.h"
#include "policy/packages.h"
#include "policy/placement.h"
#include "policy/request.h"

#ifndef SOD_POLICY_DIR
#error "SOD_POLICY_DIR must name the policy/ source directory (tests/CMakeLists.txt)"
#endif

namespace sod::policy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kShippedCapabilities = fs::path(SOD_POLICY_DIR) / "capabilities.json";
const fs::path kShippedPackages = fs::path(SOD_POLICY_DIR) / "packages.json";

RequestMatrix Options(std::initializer_list<int> options, Protection p = Protection::kCI) {
  Result<RequestMatrix> m = RequestMatrix::FromOptions(options, p);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : RequestMatrix();
}

RequestMatrix Cells(std::initializer_list<std::pair<Entity, Protection>> cells) {
  CellSet s;
  for (auto [e, p] : cells) s.Add(e, p);
  Result<RequestMatrix> m = RequestMatrix::FromCells(s);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : RequestMatrix();
}

const CapabilityTable& Shipped() {
  static const CapabilityTable* table = [] {
    Result<CapabilityTable> t = CapabilityTable::LoadFile(kShippedCapabilities);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return new CapabilityTable(t.ok() ? std::move(*t) : CapabilityTable());
  }();
  return *table;
}

// The architectures of the shipped table whose row covers `request`, in table order.
std::vector<std::string> ServedBy(const RequestMatrix& request) {
  std::vector<std::string> out;
  for (const CapabilityRow& row : Shipped().rows())
    if (Covers(request, row)) out.push_back(row.name);
  return out;
}

void ExpectError(const Status& s, Errc code, const std::string& message) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_EQ(s.message(), message);
}

// A private directory for files a test writes; removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "policy_test.XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path Write(const std::string& name, const std::string& text) const {
    fs::path p = path_ / name;
    std::ofstream(p) << text;
    return p;
  }

 private:
  fs::path path_;
};

// ---------------------------------------------------------------------------------------------
// Cells

TEST(PolicyCells, NamesAndOrderFollowTheTables) {
  // Tables II and III, left to right: Same App, Other Apps, Same OS, Other VMs, Hypervisor,
  // HW attacks, Cloud Manager; C then I.
  EXPECT_EQ(EntityNameList(),
            "same-app, other-apps, guest-os, other-vms, hypervisor, hardware, cloud-manager");
  for (Entity e : kAllEntities) EXPECT_EQ(EntityFromName(EntityName(e)), e);
  EXPECT_FALSE(EntityFromName("Hypervisor"));
  EXPECT_FALSE(EntityFromName("other-servers"));  // Table I only; no column in II/III
  EXPECT_EQ(CellName(CellIndex(Entity::kHypervisor, Property::kIntegrity)), "hypervisor.I");
  EXPECT_EQ(kCellCount, 14u);

  CellSet s;
  s.Add(Entity::kOtherVms, Protection::kCI);
  s.Add(Entity::kHypervisor, Property::kConfidentiality);
  EXPECT_EQ(s.ToString(), "other-vms.C other-vms.I hypervisor.C");
  EXPECT_EQ(s.ToEntityString(), "other-vms:CI hypervisor:C");
  EXPECT_EQ(s.size(), 3u);
  EXPECT_TRUE(s.IsSubsetOf(CellSet::All()));
  EXPECT_FALSE(CellSet::All().IsSubsetOf(s));
  EXPECT_EQ(CellSet().ToString(), "(none)");
  EXPECT_EQ(CellSet::FromBits(0xffff), CellSet::All());  // bits 14, 15 are not cells

  EXPECT_EQ(ProtectionFromName("CI"), Protection::kCI);
  EXPECT_FALSE(ProtectionFromName("IC"));
  EXPECT_FALSE(ProtectionFromName("c"));
  EXPECT_FALSE(ProtectionFromName(""));
}

// ---------------------------------------------------------------------------------------------
// Request matrix (III-B, Table II)

TEST(PolicyRequest, OptionsMapToOneEntityEach) {
  // III-B: 1 basic = other VMs, 2 hypervisor, 3 HW, 4 cloud manager, 5 guest OS, 6 other apps
  // in the VM, 7 the same app.
  const std::map<int, Entity> expected = {{1, Entity::kOtherVms}, {2, Entity::kHypervisor},
                                          {3, Entity::kHardware}, {4, Entity::kCloudManager},
                                          {5, Entity::kGuestOs},  {6, Entity::kOtherApps},
                                          {7, Entity::kSameApp}};
  for (auto [n, e] : expected) {
    Result<SecurityOption> o = OptionFromNumber(n);
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(OptionEntity(*o), e) << n;
    EXPECT_EQ(EntityOption(e), *o) << n;
    CellSet only;
    only.Add(e, Protection::kCI);
    EXPECT_EQ(Options({n}).cells(), only) << n;
  }
  // C or I or both, per option (III-B, after the list).
  EXPECT_EQ(Options({2}, Protection::kC).cells().ToString(), "hypervisor.C");
  EXPECT_EQ(Options({2}, Protection::kI).cells().ToString(), "hypervisor.I");
  EXPECT_EQ(OptionLabel(SecurityOption::kGuestOs), "option 5 (guest-OS protection)");
}

// Table II as printed: "X" marks a cell of an entity the customer trusts, "." a blank cell, i.e.
// an entity to be protected against. 14 cells in table order.
RequestMatrix FromTableIIRow(const std::string& row) {
  std::istringstream in(row);
  std::string cell;
  CellSet protect;
  unsigned i = 0;
  while (in >> cell) {
    EXPECT_TRUE(cell == "X" || cell == ".") << cell;
    if (cell == ".") protect.Add(i);
    ++i;
  }
  EXPECT_EQ(i, kCellCount);
  return *RequestMatrix::FromCells(protect);
}

TEST(PolicyRequest, TableIIRowsOfVmAAndVmB) {
  // The seed text of Table II (C I per column: Same App, Other Apps, Same OS, Other VMs,
  // Hypervisor, HW attacks, Cloud Manager):
  //   VM-A  X x | x x | x x |     | x x | x x | x x
  //   VM-B  X x | X x | X x |     |     | X x | X X
  // VM-A "chooses option 1 with both confidentiality and integrity protection" and is blank
  // exactly under Other VMs; VM-B "chooses options 1 and 2" and is blank under Other VMs and
  // Hypervisor. So an X is a *trusted* entity and the blanks are the requested protection: the
  // matrix we store is the complement of the X marks.
  const RequestMatrix vm_a = FromTableIIRow("X X  X X  X X  . .  X X  X X  X X");
  const RequestMatrix vm_b = FromTableIIRow("X X  X X  X X  . .  . .  X X  X X");
  EXPECT_EQ(vm_a, Options({1}));
  EXPECT_EQ(vm_b, Options({1, 2}));
  EXPECT_EQ(vm_a.ToString(), "other-vms:CI");
  EXPECT_EQ(vm_b.ToString(), "other-vms:CI hypervisor:CI");
  EXPECT_EQ(vm_b.options(),
            (std::vector<OptionChoice>{{SecurityOption::kBasic, Protection::kCI},
                                       {SecurityOption::kHypervisor, Protection::kCI}}));
}

TEST(PolicyRequest, OptionFiveOrSixExcludesTwo) {
  // III-E, last paragraph: "a customer choosing such protections (e.g., options 5 and 6 in
  // Section III-B) cannot also choose option 2".
  const std::string why =
      ": protection from within the VM relies on introspection by a trusted hypervisor (paper "
      "III-E)";
  ExpectError(RequestMatrix::FromOptions({5, 2}, Protection::kCI).status(), Errc::kInvalidArgument,
              "option 5 (guest-OS protection) excludes option 2 (hypervisor protection)" + why);
  ExpectError(RequestMatrix::FromOptions({2, 6}, Protection::kI).status(), Errc::kInvalidArgument,
              "option 6 (apps protection) excludes option 2 (hypervisor protection)" + why);
  ExpectError(RequestMatrix::FromOptions({1, 2, 5, 6}, Protection::kC).status(),
              Errc::kInvalidArgument,
              "options 5 (guest-OS protection) and 6 (apps protection) exclude option 2 "
              "(hypervisor protection)" +
                  why);
  // The rule is about options, whatever C/I each one asks for.
  std::vector<OptionChoice> mixed = {{SecurityOption::kGuestOs, Protection::kI},
                                     {SecurityOption::kHypervisor, Protection::kC}};
  EXPECT_EQ(RequestMatrix::FromOptions(mixed).status().code(), Errc::kInvalidArgument);
  // And it holds for a matrix given cell by cell too (there is no way around it).
  CellSet cells;
  cells.Add(Entity::kOtherApps, Property::kIntegrity);
  cells.Add(Entity::kHypervisor, Property::kIntegrity);
  EXPECT_EQ(RequestMatrix::FromCells(cells).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(RequestMatrixFromJson(
                json::parse(R"({"version": 1, "protect": {"guest-os": "C", "hypervisor": "I"}})"))
                .status()
                .code(),
            Errc::kInvalidArgument);
  // Everything else combines: 5, 6 with anything but 2; 2 with anything but 5 and 6.
  EXPECT_TRUE(RequestMatrix::FromOptions({1, 3, 4, 5, 6, 7}, Protection::kCI).ok());
  EXPECT_TRUE(RequestMatrix::FromOptions({1, 2, 3, 4, 7}, Protection::kCI).ok());
}

TEST(PolicyRequest, BadOptionLists) {
  ExpectError(OptionFromNumber(8).status(), Errc::kInvalidArgument,
              "unknown option 8 (options are 1..7, paper III-B)");
  ExpectError(OptionFromNumber(0).status(), Errc::kInvalidArgument,
              "unknown option 0 (options are 1..7, paper III-B)");
  ExpectError(RequestMatrix::FromOptions({1, 9}, Protection::kCI).status(), Errc::kInvalidArgument,
              "unknown option 9 (options are 1..7, paper III-B)");
  ExpectError(RequestMatrix::FromOptions({1, 3, 1}, Protection::kCI).status(),
              Errc::kInvalidArgument, "option 1 (basic security) chosen twice");
  ExpectError(RequestMatrix::FromOptions({}, Protection::kCI).status(), Errc::kInvalidArgument,
              "no option chosen (choose options 1..7, paper III-B)");
  // The empty matrix itself is a valid request (covered by every trusted host).
  EXPECT_TRUE(RequestMatrix::FromCells(CellSet()).ok());
}

TEST(PolicyRequest, MatrixJsonRoundTrip) {
  const RequestMatrix m = Cells({{Entity::kOtherVms, Protection::kCI},
                                 {Entity::kHardware, Protection::kC},
                                 {Entity::kSameApp, Protection::kI}});
  const json j = RequestMatrixToJson(m);
  EXPECT_EQ(j.dump(),
            R"({"protect":{"hardware":"C","other-vms":"CI","same-app":"I"},"version":1})");
  Result<RequestMatrix> back = RequestMatrixFromJson(json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(*RequestMatrixFromJson(RequestMatrixToJson(RequestMatrix())), RequestMatrix());
}

TEST(PolicyRequest, MatrixJsonIsStrict) {
  struct Case {
    std::string text;
    Errc code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"([1])", Errc::kMalformed, "request: not a JSON object"},
      {R"({"version": 1, "protect": {}, "trust": {}})", Errc::kMalformed,
       "request: unknown key \"trust\" (expected one of version, protect)"},
      {R"({"protect": {}})", Errc::kMalformed, "request.version: missing"},
      {R"({"version": 2, "protect": {}})", Errc::kUnsupported,
       "request.version: version 2 (this build reads 1)"},
      {R"({"version": 1})", Errc::kMalformed, "request.protect: missing"},
      {R"({"version": 1, "protect": {"kernel": "CI"}})", Errc::kMalformed,
       "request.protect.kernel: unknown entity (one of same-app, other-apps, guest-os, "
       "other-vms, hypervisor, hardware, cloud-manager)"},
      {R"({"version": 1, "protect": {"hypervisor": "IC"}})", Errc::kMalformed,
       "request.protect.hypervisor: protection \"IC\" is not \"C\", \"I\" or \"CI\" (omit a "
       "trusted entity)"},
      {R"({"version": 1, "protect": {"hypervisor": ""}})", Errc::kMalformed,
       "request.protect.hypervisor: protection \"\" is not \"C\", \"I\" or \"CI\" (omit a "
       "trusted entity)"},
      {R"({"version": 1, "protect": {"hypervisor": true}})", Errc::kMalformed,
       "request.protect.hypervisor: protection true is not \"C\", \"I\" or \"CI\" (omit a "
       "trusted entity)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    ExpectError(RequestMatrixFromJson(json::parse(c.text)).status(), c.code, c.message);
  }
}

TEST(PolicyRequest, SecurityRequestJson) {
  SecurityRequest by_package{"online-medical-records", {}};
  EXPECT_EQ(SecurityRequestToJson(by_package).dump(),
            R"({"package":"online-medical-records","version":1})");
  SecurityRequest same{
      "",
      {{SecurityOption::kBasic, Protection::kCI}, {SecurityOption::kHypervisor, Protection::kCI}}};
  EXPECT_EQ(SecurityRequestToJson(same).dump(), R"({"options":[1,2],"protect":"CI","version":1})");
  SecurityRequest mixed{
      "", {{SecurityOption::kBasic, Protection::kCI}, {SecurityOption::kHardware, Protection::kC}}};
  EXPECT_EQ(SecurityRequestToJson(mixed).dump(),
            R"({"options":[{"option":1,"protect":"CI"},{"option":3,"protect":"C"}],"version":1})");
  for (const SecurityRequest& r : {by_package, same, mixed}) {
    Result<SecurityRequest> back = SecurityRequestFromJson(SecurityRequestToJson(r));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, r);
  }
  // Per-option protection overrides the default.
  Result<SecurityRequest> r = SecurityRequestFromJson(json::parse(
      R"({"version": 1, "options": [1, {"option": 7, "protect": "I"}], "protect": "C"})"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->options, (std::vector<OptionChoice>{{SecurityOption::kBasic, Protection::kC},
                                                   {SecurityOption::kSameApp, Protection::kI}}));
}

TEST(PolicyRequest, SecurityRequestJsonIsStrict) {
  struct Case {
    std::string text;
    std::string message;  // all kMalformed
  };
  const std::vector<Case> cases = {
      {R"({"version": 1})", "request: neither \"package\" nor \"options\""},
      {R"({"version": 1, "package": "x", "options": [1], "protect": "C"})",
       "request: both \"package\" and \"options\": give one"},
      {R"({"version": 1, "package": "x", "protect": "C"})",
       "request.protect: a package brings its own protection"},
      {R"({"version": 1, "package": ""})", "request.package: empty"},
      {R"({"version": 1, "package": 7})", "request.package: not a string: 7"},
      {R"({"version": 1, "options": [1, 9], "protect": "CI"})",
       "request.options[1]: unknown option 9 (options are 1..7, paper III-B)"},
      {R"({"version": 1, "options": [1.5], "protect": "CI"})",
       "request.options[0]: unknown option 1.5 (options are 1..7, paper III-B)"},
      {R"({"version": 1, "options": ["1"], "protect": "CI"})",
       "request.options[0]: neither an option number nor {\"option\", \"protect\"}: \"1\""},
      {R"({"version": 1, "options": [1, 5, 1], "protect": "CI"})",
       "request.options[2]: option 1 (basic security) listed twice"},
      {R"({"version": 1, "options": [1]})",
       "request.options[0]: option 1 has no protection: give \"protect\" (\"C\", \"I\" or "
       "\"CI\")"},
      {R"({"version": 1, "options": [1], "protect": "X"})",
       "request.protect: protection \"X\" is not \"C\", \"I\" or \"CI\""},
      {R"({"version": 1, "options": [{"option": 1, "protect": "CI"}], "protect": 3})",
       "request.protect: protection 3 is not \"C\", \"I\" or \"CI\""},
      {R"({"version": 1, "options": [{"option": 1, "protect": "ic"}]})",
       "request.options[0].protect: protection \"ic\" is not \"C\", \"I\" or \"CI\""},
      {R"({"version": 1, "options": [{"option": 2, "protect": "C", "why": 1}]})",
       "request.options[0]: unknown key \"why\" (expected one of option, protect)"},
      {R"({"version": 1, "options": [{"option": 2}]})", "request.options[0].protect: missing"},
      {R"({"version": 1, "options": []})", "request.options: empty (choose options 1..7)"},
      {R"({"version": 1, "options": [1], "protect": "C", "package2": 1})",
       "request: unknown key \"package2\" (expected one of version, package, options, protect)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    ExpectError(SecurityRequestFromJson(json::parse(c.text)).status(), Errc::kMalformed, c.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Packages

TEST(PolicyPackages, ShippedFileHasThePapersPackages) {
  Result<PackageCatalog> c = PackageCatalog::LoadFile(kShippedPackages);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->size(), 2u);
  // III-B: "security for on-line medical records" = options 1, 5, 6, 7 (C/I not given by the
  // paper: the shipped package asks for both).
  const Package* medical = c->Find("online-medical-records");
  ASSERT_NE(medical, nullptr);
  EXPECT_EQ(medical->matrix, Options({1, 5, 6, 7}));
  EXPECT_EQ(medical->matrix.ToString(), "same-app:CI other-apps:CI guest-os:CI other-vms:CI");
  EXPECT_EQ(medical->source, kShippedPackages.string());
  // III-B option 1 "is the basic security package"; with C and I it is VM-A of Table II.
  const Package* basic = c->Find("basic-security");
  ASSERT_NE(basic, nullptr);
  EXPECT_EQ(basic->matrix, Options({1}));

  EXPECT_EQ(*c->Resolve({"online-medical-records", {}}), Options({1, 5, 6, 7}));
  EXPECT_EQ(*c->Resolve({"", {{SecurityOption::kHardware, Protection::kC}}}),
            Options({3}, Protection::kC));
  ExpectError(c->Resolve({"gold", {}}).status(), Errc::kNotFound,
              "unknown package \"gold\" (known: basic-security, online-medical-records)");
  ExpectError(c->Resolve({"",
                          {{SecurityOption::kGuestOs, Protection::kCI},
                           {SecurityOption::kHypervisor, Protection::kCI}}})
                  .status(),
              Errc::kInvalidArgument,
              "option 5 (guest-OS protection) excludes option 2 (hypervisor protection): "
              "protection from within the VM relies on introspection by a trusted hypervisor "
              "(paper III-E)");
  // ToJson reads back to the same catalog.
  Result<PackageCatalog> again = PackageCatalog::FromJson(c->ToJson(), "copy");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->Find("online-medical-records")->matrix, medical->matrix);
}

TEST(PolicyPackages, OperatorFileOverridesAndExtends) {
  TempDir dir;
  const fs::path site = dir.Write("site.json", R"({"version": 1, "packages": [
      {"name": "online-medical-records", "options": [1, 5, 6, 7], "protect": "C"},
      {"name": "tenant-gold", "description": "HW and hypervisor", "options": [1, 2, 3],
       "protect": "CI"}]})");
  const std::vector<fs::path> files = {kShippedPackages, site};
  Result<PackageCatalog> c = PackageCatalog::LoadFiles(files);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->size(), 3u);
  EXPECT_EQ(c->Find("online-medical-records")->matrix, Options({1, 5, 6, 7}, Protection::kC));
  EXPECT_EQ(c->Find("online-medical-records")->source, site.string());
  EXPECT_EQ(c->Find("tenant-gold")->matrix, Options({1, 2, 3}));
  EXPECT_EQ(c->Find("basic-security")->source, kShippedPackages.string());
}

TEST(PolicyPackages, BadFilesAreRefusedWhole) {
  TempDir dir;
  struct Case {
    std::string text;
    Errc code;
    std::string message;  // after "<path>: "
  };
  const std::vector<Case> cases = {
      {R"({"version": 1, "packages": [
          {"name": "a", "options": [1], "protect": "C"},
          {"name": "b", "options": [2], "protect": "C"},
          {"name": "a", "options": [3], "protect": "C"}]})",
       Errc::kMalformed, "packages[2]: package \"a\" defined twice (first at packages[0])"},
      {R"({"version": 1, "packages": [{"name": "x", "options": [5, 2], "protect": "CI"}]})",
       Errc::kInvalidArgument,
       "package \"x\": option 5 (guest-OS protection) excludes option 2 (hypervisor "
       "protection): protection from within the VM relies on introspection by a trusted "
       "hypervisor (paper III-E)"},
      {R"({"version": 1, "packages": [{"name": "x", "options": [8], "protect": "CI"}]})",
       Errc::kMalformed,
       "packages[0].options[0]: unknown option 8 (options are 1..7, paper III-B)"},
      {R"({"version": 1, "packages": [{"name": "Gold Tier", "options": [1], "protect": "C"}]})",
       Errc::kMalformed, "packages[0].name: package name \"Gold Tier\" is not made of [a-z0-9._-]"},
      {R"({"version": 1, "packages": [{"name": "x", "options": [1], "protect": "C",
          "price": 3}]})",
       Errc::kMalformed,
       "packages[0]: unknown key \"price\" (expected one of name, description, options, "
       "protect)"},
      {R"({"version": 1, "packages": [{"name": "x", "name": "y", "options": [1],
          "protect": "C"}]})",
       Errc::kMalformed, "packages[0]: duplicate key \"name\""},
      {R"({"version": 1, "packages": [)", Errc::kMalformed, ""},  // not JSON: message varies
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].text);
    const fs::path p = dir.Write("bad" + std::to_string(i) + ".json", cases[i].text);
    const std::vector<fs::path> files = {kShippedPackages, p};
    Result<PackageCatalog> c = PackageCatalog::LoadFiles(files);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), cases[i].code) << c.status().ToString();
    if (cases[i].message.empty()) {
      EXPECT_EQ(c.status().message().rfind(p.string() + ": not JSON: ", 0), 0u)
          << c.status().message();
    } else {
      EXPECT_EQ(c.status().message(), p.string() + ": " + cases[i].message);
    }
  }
  const fs::path absent = dir.Write("x", "").parent_path() / "absent.json";
  ExpectError(PackageCatalog::LoadFile(absent).status(), Errc::kNotFound,
              absent.string() + ": No such file or directory");
}

// ---------------------------------------------------------------------------------------------
// Capability table (Table III)

// Table III as the seed text prints it, one row per architecture: 14 cells (C I for Same App,
// Other Apps, Same OS, Other VMs, Hypervisor, HW attacks, Cloud Mgr) and the protected entity.
// NoHype's hypervisor cells read "No*" ("(*) removes hypervisor during runtime"): No.
struct PaperRow {
  std::string name;
  std::string cells;
  std::string protected_entity;
};
const std::vector<PaperRow> kTableIII = {
    {"aegis", "No No Yes Yes No No n-a n-a n-a n-a n-a n-a n-a n-a", "Data+App"},
    {"xom", "No No Yes Yes Yes Yes n-a n-a n-a n-a n-a n-a n-a n-a", "App"},
    {"sp", "Yes Yes Yes Yes Yes Yes n-a n-a n-a n-a n-a n-a n-a n-a", "Data+TSM"},
    {"bastion", "Yes Yes Yes Yes Yes Yes Yes Yes No No Yes Yes No No", "Data+TSMs"},
    {"datasafe", "Yes Yes Yes Yes Yes Yes Yes Yes No No No No No No", "Data"},
    {"h-svm", "No No No No No No Yes Yes Yes Yes No No No No", "Full VM"},
    {"hyperwall", "No No No No No No Yes Yes Yes Yes No No No No", "Full VM"},
    {"nohype", "No No No No No No Yes Yes No No No No No No", "Full VM"},
    {"overshadow", "No No Yes Yes No No n-a n-a n-a n-a No No No No", "Data+App"},
    {"hypersafe", "No No No No No No Yes Yes No No No No No No", "Full VM"},
    {"tpm", "No Yes Yes Yes No No n-a n-a n-a n-a No No No No", "Data+App"},
    {"cell-processor", "No Yes Yes Yes Yes Yes Yes Yes Yes Yes Yes No n-a n-a", "Data+App"},
    {"ibm-4758", "No Yes Yes Yes No No n-a n-a n-a n-a Yes Yes n-a n-a", "Data+App"},
};

TEST(PolicyCapabilities, ShippedTableIsTableIII) {
  const CapabilityTable& t = Shipped();
  ASSERT_EQ(t.size(), 13u);
  for (size_t i = 0; i < kTableIII.size(); ++i) {
    const PaperRow& want = kTableIII[i];
    SCOPED_TRACE(want.name);
    const CapabilityRow& row = t.rows()[i];  // in the paper's order
    EXPECT_EQ(row.name, want.name);
    EXPECT_EQ(row.protected_entity, want.protected_entity);
    std::istringstream in(want.cells);
    std::string cell;
    for (unsigned c = 0; c < kCellCount; ++c) {
      ASSERT_TRUE(in >> cell);
      EXPECT_EQ(CapabilityName(row.cells[c]), cell) << CellName(c);
    }
  }
  EXPECT_EQ(t.Find("hyperwall")->title, "HyperWall [8]");
  EXPECT_EQ(t.Find("nohype")->note,
            "Table III marks hypervisor C and I \"No*\": (*) removes the hypervisor during "
            "runtime");
  ExpectError(t.Row("sev-snp").status(), Errc::kNotFound,
              "capability table: unknown architecture \"sev-snp\"");
  // ToJson reads back to the same rows.
  Result<CapabilityTable> again = CapabilityTable::FromJson(t.ToJson(), "copy");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  for (size_t i = 0; i < t.size(); ++i) EXPECT_EQ(again->rows()[i].cells, t.rows()[i].cells);
}

// One architecture row as a JSON string, with `cells` overriding the default all-"No" cells.
std::string RowJson(const std::string& name, const std::string& extra = "",
                    const std::string& cells_override = "") {
  std::string cells = cells_override;
  if (cells.empty()) {
    for (Entity e : kAllEntities) {
      if (!cells.empty()) cells += ", ";
      const std::string v = e == Entity::kOtherVms ? "Yes" : "No";
      cells +=
          "\"" + std::string(EntityName(e)) + "\": {\"C\": \"" + v + "\", \"I\": \"" + v + "\"}";
    }
  }
  return "{\"name\": \"" + name + "\", \"title\": \"" + name +
         "\", \"protected_entity\": \"Full VM\"" + extra + ", \"cells\": {" + cells + "}}";
}
std::string TableJson(const std::vector<std::string>& rows) {
  std::string out = "{\"version\": 1, \"architectures\": [";
  for (size_t i = 0; i < rows.size(); ++i) out += (i ? ", " : "") + rows[i];
  return out + "]}";
}

TEST(PolicyCapabilities, OperatorsAddServerTypes) {
  TempDir dir;
  const fs::path site =
      dir.Write("site.json", TableJson({RowJson("sev-snp", ", \"category\": \"operator\""),
                                        RowJson("hyperwall", ", \"redefine\": true")}));
  const std::vector<fs::path> files = {kShippedCapabilities, site};
  Result<CapabilityTable> t = CapabilityTable::LoadFiles(files);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->size(), 14u);
  EXPECT_EQ(t->rows().back().name, "sev-snp");
  EXPECT_EQ(t->Find("sev-snp")->source, site.string());
  // The redefined row replaced the shipped one in place (HyperWall is 7th in Table III).
  EXPECT_EQ(t->rows()[6].name, "hyperwall");
  EXPECT_EQ(t->rows()[6].source, site.string());
  EXPECT_EQ(t->Find("hyperwall")->Protects().ToString(), "other-vms.C other-vms.I");
}

TEST(PolicyCapabilities, RedefinitionNeedsTheFlag) {
  CapabilityTable t = Shipped();
  Result<CapabilityTable> plain = CapabilityTable::FromJson(
      json::parse(TableJson({RowJson("new-one"), RowJson("tpm")})), "site.json");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  ExpectError(t.Extend(*plain), Errc::kRefused,
              "site.json: architecture \"tpm\" is already defined by " +
                  kShippedCapabilities.string() + ": set \"redefine\": true to replace it");
  // Nothing of the refused file went in, not even the row before the refused one.
  EXPECT_EQ(t.size(), 13u);
  EXPECT_EQ(t.Find("new-one"), nullptr);
  EXPECT_EQ(t.Find("tpm")->source, kShippedCapabilities.string());

  Result<CapabilityTable> typo = CapabilityTable::FromJson(
      json::parse(TableJson({RowJson("hyper-wall", ", \"redefine\": true")})), "site.json");
  ASSERT_TRUE(typo.ok());
  ExpectError(t.Extend(*typo), Errc::kRefused,
              "site.json: architecture \"hyper-wall\" says \"redefine\" but no earlier file "
              "defines it");
  // A base file cannot redefine anything either.
  TempDir dir;
  const fs::path base = dir.Write("base.json", TableJson({RowJson("x", ", \"redefine\": true")}));
  EXPECT_EQ(CapabilityTable::LoadFile(base).status().code(), Errc::kOk);
  const std::vector<fs::path> only = {base};
  EXPECT_EQ(CapabilityTable::LoadFiles(only).status().code(), Errc::kRefused);
}

TEST(PolicyCapabilities, MalformedFilesNameFileArchitectureAndCell) {
  TempDir dir;
  auto cells_with = [](const std::string& entity, const std::string& value) {
    std::string cells;
    for (Entity e : kAllEntities) {
      if (!cells.empty()) cells += ", ";
      cells += "\"" + std::string(EntityName(e)) + "\": " +
               (std::string(EntityName(e)) == entity ? value : R"({"C": "No", "I": "No"})");
    }
    return cells;
  };
  std::string missing_entity;  // every entity but cloud-manager
  for (Entity e : kAllEntities) {
    if (e == Entity::kCloudManager) continue;
    if (!missing_entity.empty()) missing_entity += ", ";
    missing_entity += "\"" + std::string(EntityName(e)) + "\": {\"C\": \"No\", \"I\": \"No\"}";
  }
  struct Case {
    std::string text;
    std::string message;  // after "<path>: "; all kMalformed
  };
  const std::vector<Case> cases = {
      {TableJson(
           {RowJson("ok"),
            RowJson("hyperwall", "", cells_with("hypervisor", R"({"C": "Maybe", "I": "Yes"})"))}),
       "architecture \"hyperwall\": cells.hypervisor.C: \"Maybe\" is not Yes, No or n-a"},
      {TableJson({RowJson("h", "", cells_with("hardware", R"({"C": "yes", "I": "Yes"})"))}),
       "architecture \"h\": cells.hardware.C: \"yes\" is not Yes, No or n-a"},
      {TableJson({RowJson("h", "", cells_with("hardware", R"({"C": "No"})"))}),
       "architecture \"h\": cells.hardware.I: missing"},
      {TableJson(
           {RowJson("h", "", cells_with("hardware", R"({"C": "No", "I": "No", "A": "No"})"))}),
       "architecture \"h\": cells.hardware: unknown key \"A\" (expected one of C, I)"},
      {TableJson({RowJson("h", "", missing_entity)}),
       "architecture \"h\": cells.cloud-manager: missing (every entity needs C and I)"},
      {TableJson({RowJson("h", "",
                          cells_with("hardware", R"({"C": "No", "I": "No"})") +
                              R"(, "other-servers": {"C": "No", "I": "No"})")}),
       "architecture \"h\": cells.other-servers: unknown entity (one of same-app, other-apps, "
       "guest-os, other-vms, hypervisor, hardware, cloud-manager)"},
      {TableJson(
           {RowJson("h", "", cells_with("hardware", R"({"C": "No", "I": "No", "C": "Yes"})"))}),
       "architectures[0].cells.hardware: duplicate key \"C\""},
      {TableJson({RowJson("xom"), RowJson("tpm"), RowJson("xom")}),
       "architectures[2]: architecture \"xom\" defined twice (first at architectures[0])"},
      {TableJson({RowJson("bad name")}),
       "architectures[0].name: architecture name \"bad name\" is not made of [A-Za-z0-9._-]"},
      {TableJson({RowJson("h", ", \"speed\": 3")}),
       "architecture \"h\": unknown key \"speed\" (expected one of name, title, category, "
       "protected_entity, note, redefine, cells)"},
      {TableJson({RowJson("h", ", \"redefine\": \"yes\"")}),
       "architecture \"h\": redefine: not true or false"},
      {R"({"version": 1, "architectures": [{"name": "h", "title": "h", "cells": {}}]})",
       "architecture \"h\": protected_entity: missing"},
      {R"({"version": 1, "rows": []})",
       "unknown key \"rows\" (expected one of version, architectures)"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].text);
    const fs::path p = dir.Write("caps" + std::to_string(i) + ".json", cases[i].text);
    const std::vector<fs::path> files = {kShippedCapabilities, p};
    Result<CapabilityTable> t = CapabilityTable::LoadFiles(files);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), Errc::kMalformed) << t.status().ToString();
    EXPECT_EQ(t.status().message(), p.string() + ": " + cases[i].message);
  }
  const fs::path v2 = dir.Write("v2.json", R"({"version": 2, "architectures": []})");
  ExpectError(CapabilityTable::LoadFile(v2).status(), Errc::kUnsupported,
              v2.string() + ": version: version 2 (this build reads 1)");
  const fs::path absent = v2.parent_path() / "absent.json";
  ExpectError(CapabilityTable::LoadFile(absent).status(), Errc::kNotFound,
              absent.string() + ": No such file or directory");
}

// ---------------------------------------------------------------------------------------------
// Coverage: the paper's examples against Table III

TEST(PolicyCoverage, VmAAndVmBAgainstTableIII) {
  // VM-A = option 1, C and I: needs other-vms C=Yes and I=Yes. Table III's Other VMs column:
  //   Yes Yes: Bastion, DataSafe, H-SVM, HyperWall, NoHype, HyperSafe, Cell Processor
  //   n-a n-a: AEGIS, XOM, SP, Overshadow, TPM, IBM 4758 (pre-cloud: no VMs; n-a is not Yes)
  EXPECT_EQ(ServedBy(Options({1})),
            (std::vector<std::string>{"bastion", "datasafe", "h-svm", "hyperwall", "nohype",
                                      "hypersafe", "cell-processor"}));
  // VM-B = options 1 and 2, C and I: also hypervisor C=Yes, I=Yes. Of VM-A's seven, the
  // Hypervisor column is Yes Yes only for H-SVM, HyperWall and Cell Processor (Bastion, DataSafe,
  // HyperSafe: No No; NoHype: No* No*, it removes the hypervisor but Table III says No).
  EXPECT_EQ(ServedBy(Options({1, 2})),
            (std::vector<std::string>{"h-svm", "hyperwall", "cell-processor"}));
}

TEST(PolicyCoverage, MorePaperRequestsAgainstTableIII) {
  // Online medical records = options 1, 5, 6, 7 with C and I: Same App, Other Apps, Same OS and
  // Other VMs all Yes Yes. Same App C=Yes: SP, Bastion, DataSafe; SP's Other VMs is n-a. Bastion
  // and DataSafe have Yes in all eight cells.
  EXPECT_EQ(ServedBy(Options({1, 5, 6, 7})), (std::vector<std::string>{"bastion", "datasafe"}));
  // The same package for integrity only: Same App I=Yes adds TPM, Cell, IBM 4758 (and SP);
  // Other VMs I=Yes leaves Bastion, DataSafe, Cell; Cell has Same OS I and Other Apps I Yes.
  EXPECT_EQ(ServedBy(Options({1, 5, 6, 7}, Protection::kI)),
            (std::vector<std::string>{"bastion", "datasafe", "cell-processor"}));
  // Option 7 alone (DataSafe "can provide Security Option 7", III-C1): Same App Yes Yes.
  EXPECT_EQ(ServedBy(Options({7})), (std::vector<std::string>{"sp", "bastion", "datasafe"}));
  // Option 3, HW attacks: Yes Yes for Bastion and IBM 4758; Cell Processor is Yes for C only;
  // AEGIS, XOM, SP are n-a (no protection counted).
  EXPECT_EQ(ServedBy(Options({3})), (std::vector<std::string>{"bastion", "ibm-4758"}));
  EXPECT_EQ(ServedBy(Options({3}, Protection::kC)),
            (std::vector<std::string>{"bastion", "cell-processor", "ibm-4758"}));
  // Option 4 (cloud manager): no architecture of Table III says Yes (the paper's own prototype
  // does not support it, section V).
  EXPECT_TRUE(ServedBy(Options({4})).empty());
  EXPECT_TRUE(ServedBy(Options({4}, Protection::kI)).empty());
  // The empty request: every architecture.
  EXPECT_EQ(ServedBy(RequestMatrix()).size(), 13u);
}

HostState Host(const std::string& id, const std::string& arch, uint64_t memory_mb = 8192,
               uint32_t slots = 8) {
  HostState h;
  h.id = id;
  h.architecture = arch;
  h.attested_ok = true;
  h.max_violations = 2;
  h.free_memory_mb = memory_mb;
  h.free_vm_slots = slots;
  return h;
}

TEST(PolicyCoverage, UntrustedHostsCoverNothing) {
  const CapabilityTable& t = Shipped();
  HostState h = Host("h1", "hyperwall");
  EXPECT_TRUE(IsTrusted(h, t));
  EXPECT_EQ(EffectiveRowOf(h, t), (EffectiveRow{true, t.Find("hyperwall")->Protects()}));
  EXPECT_TRUE(Covers(Options({1, 2}), EffectiveRowOf(h, t)));

  h.violations = 2;  // at the limit: still trusted
  EXPECT_TRUE(Covers(Options({1, 2}), EffectiveRowOf(h, t)));
  h.violations = 3;  // tripped
  EXPECT_EQ(UntrustedReasons(h, t),
            (std::vector<std::string>{"3 runtime violations, more than the 2 allowed"}));
  EXPECT_EQ(EffectiveRowOf(h, t), EffectiveRow{});
  EXPECT_FALSE(Covers(Options({1}), EffectiveRowOf(h, t)));
  EXPECT_FALSE(Covers(RequestMatrix(), EffectiveRowOf(h, t)));  // not even the empty request

  h.violations = 0;
  h.attested_ok = false;
  EXPECT_EQ(UntrustedReasons(h, t), (std::vector<std::string>{"attestation failed"}));
  EXPECT_FALSE(Covers(RequestMatrix(), EffectiveRowOf(h, t)));

  HostState unknown = Host("h2", "sev-snp");
  EXPECT_EQ(UntrustedReasons(unknown, t),
            (std::vector<std::string>{"architecture \"sev-snp\" is not in the capability table"}));
  EXPECT_FALSE(IsTrusted(unknown, t));
}

TEST(PolicyCoverage, ExplainNamesEveryUncoveredCell) {
  const CapabilityTable& t = Shipped();
  const RequestMatrix vm_b = Options({1, 2});

  Explanation ok = Explain(vm_b, Host("h1", "hyperwall"), t);
  EXPECT_TRUE(ok.covered);
  EXPECT_EQ(ok.reasons,
            (std::vector<std::string>{"covered: HyperWall [8] protects other-vms.C other-vms.I "
                                      "hypervisor.C hypervisor.I"}));

  Explanation hs = Explain(vm_b, Host("h2", "hypersafe"), t);
  EXPECT_FALSE(hs.covered);
  EXPECT_TRUE(hs.trusted);
  EXPECT_EQ(hs.reasons,
            (std::vector<std::string>{"hypervisor.C requested: HyperSafe [10] says No",
                                      "hypervisor.I requested: HyperSafe [10] says No"}));

  Explanation tpm = Explain(Options({1}), Host("h3", "tpm"), t);
  EXPECT_EQ(
      tpm.reasons,
      (std::vector<std::string>{
          "other-vms.C requested: TPM [20] says n-a (not applicable, which is not protection)",
          "other-vms.I requested: TPM [20] says n-a (not applicable, which is not "
          "protection)"}));

  HostState bad = Host("h4", "hyperwall");
  bad.attested_ok = false;
  bad.violations = 5;
  Explanation x = Explain(vm_b, bad, t);
  EXPECT_FALSE(x.covered);
  EXPECT_FALSE(x.trusted);
  EXPECT_TRUE(x.uncovered.empty());  // the architecture would cover it; the host is untrusted
  EXPECT_EQ(x.reasons,
            (std::vector<std::string>{"untrusted: attestation failed",
                                      "untrusted: 5 runtime violations, more than the 2 allowed"}));
  EXPECT_EQ(x.ToJson(), json::parse(R"({"host": "h4", "architecture": "hyperwall",
      "trusted": false, "covered": false, "uncovered": [],
      "reasons": ["untrusted: attestation failed",
                  "untrusted: 5 runtime violations, more than the 2 allowed"]})"));

  Explanation unknown = Explain(Options({1}), Host("h5", "sev-snp"), t);
  EXPECT_EQ(unknown.reasons, (std::vector<std::string>{
                                 "untrusted: architecture \"sev-snp\" is not in the capability "
                                 "table"}));
  EXPECT_EQ(unknown.uncovered, Options({1}).cells());
  EXPECT_EQ(hs.ToJson()["uncovered"], json::parse(R"(["hypervisor.C", "hypervisor.I"])"));
}

// ---------------------------------------------------------------------------------------------
// Placement

VmState Vm(const std::string& id, const RequestMatrix& request, uint64_t memory_mb,
           const std::string& host = "") {
  return VmState{id, request, memory_mb, host};
}

Cluster MakeCluster(std::vector<HostState> hosts, std::vector<VmState> vms = {}) {
  Result<Cluster> c = Cluster::Create(Shipped(), std::move(hosts), std::move(vms));
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

TEST(PolicyPlacement, DeploymentPicksACoveringHostWithTheMostFreeCapacity) {
  Cluster c =
      MakeCluster({Host("a-hyperwall", "hyperwall", 4096), Host("b-hyperwall", "hyperwall", 8192),
                   Host("c-datasafe", "datasafe", 16384), Host("d-tpm", "tpm", 65536)});
  // VM-B (options 1, 2) can only go to a HyperWall; the one with more free memory wins.
  EXPECT_EQ(*c.ChooseHost(Options({1, 2}), 1024), "b-hyperwall");
  // VM-A can go to HyperWall or DataSafe: DataSafe has the most free memory (TPM does not cover).
  EXPECT_EQ(*c.ChooseHost(Options({1}), 1024), "c-datasafe");

  // Deploying consumes capacity: b-hyperwall goes 8192 -> 5120 -> 2048, then a-hyperwall leads.
  EXPECT_EQ(*c.Deploy(Vm("v1", Options({1, 2}), 3072)), "b-hyperwall");
  EXPECT_EQ(*c.Deploy(Vm("v2", Options({1, 2}), 3072)), "b-hyperwall");
  EXPECT_EQ(c.FindHost("b-hyperwall")->free_memory_mb, 2048u);
  EXPECT_EQ(c.FindHost("b-hyperwall")->free_vm_slots, 6u);
  EXPECT_EQ(*c.Deploy(Vm("v3", Options({1, 2}), 3072)), "a-hyperwall");
  EXPECT_EQ(c.FindVm("v3")->host, "a-hyperwall");
  EXPECT_EQ(c.VmsOn("b-hyperwall"), (std::vector<std::string>{"v1", "v2"}));
  // 1024 left on a, 2048 on b: 3072 fits nowhere.
  ExpectError(c.Deploy(Vm("v4", Options({1, 2}), 3072)).status(), Errc::kRefused,
              "vm \"v4\": 2 trusted hosts cover other-vms:CI hypervisor:CI but none has 3072 MB "
              "and a VM slot free");
  EXPECT_EQ(c.FindVm("v4"), nullptr);
  // Option 4: nobody protects the cloud manager.
  ExpectError(c.ChooseHost(Options({1, 4}), 1).status(), Errc::kRefused,
              "no trusted host protects cloud-manager.C cloud-manager.I");
  // Each cell is protected by some host here, but no host protects them together: same-app
  // (DataSafe) and hypervisor (HyperWall).
  ExpectError(c.ChooseHost(Options({7, 2}), 1).status(), Errc::kRefused,
              "no trusted host protects all of same-app:CI hypervisor:CI (each cell is "
              "protected by some host, none protects them together)");
  // Bad deployments.
  ExpectError(c.Deploy(Vm("v1", Options({1}), 1)).status(), Errc::kInvalidArgument,
              "vm \"v1\" already exists");
  ExpectError(c.Deploy(Vm("v9", Options({1}), 1, "d-tpm")).status(), Errc::kInvalidArgument,
              "vm \"v9\" is already on host \"d-tpm\"");
}

TEST(PolicyPlacement, TieBreaksAreDeterministic) {
  // Same free memory: more free slots wins; same slots too: smallest id.
  Cluster c = MakeCluster({Host("h3", "hyperwall", 4096, 4), Host("h2", "hyperwall", 4096, 4),
                           Host("h1", "hyperwall", 4096, 2)});
  EXPECT_EQ(*c.ChooseHost(Options({1}), 1), "h2");
  // A host with no free slot is never chosen, whatever its memory.
  Cluster full =
      MakeCluster({Host("big", "hyperwall", 1 << 20, 0), Host("small", "hyperwall", 512, 1)});
  EXPECT_EQ(*full.ChooseHost(Options({1}), 256), "small");
  EXPECT_EQ(*full.Deploy(Vm("v", Options({1}), 256)), "small");
  ExpectError(full.ChooseHost(Options({1}), 1).status(), Errc::kRefused,
              "2 trusted hosts cover other-vms:CI but none has 1 MB and a VM slot free");
}

TEST(PolicyPlacement, UntrustedHostsAreNeverChosen) {
  HostState failed = Host("failed", "hyperwall", 1 << 20, 100);
  failed.attested_ok = false;
  HostState tripped = Host("tripped", "hyperwall", 1 << 20, 100);
  tripped.violations = 3;
  Cluster c = MakeCluster({failed, tripped, Host("unknown-arch", "sev-snp", 1 << 20, 100),
                           Host("ok", "hyperwall", 1024, 1)});
  EXPECT_EQ(*c.ChooseHost(Options({1, 2}), 512), "ok");
  EXPECT_EQ(*c.ChooseHost(RequestMatrix(), 512), "ok");  // not even for an empty request
  EXPECT_EQ(*c.Deploy(Vm("v1", Options({1}), 512)), "ok");
  ExpectError(c.ChooseHost(RequestMatrix(), 1).status(), Errc::kRefused,
              "1 trusted host covers an empty request but none has 1 MB and a VM slot free");
  Cluster none = MakeCluster({failed});
  ExpectError(none.ChooseHost(RequestMatrix(), 1).status(), Errc::kRefused, "no trusted host");
}

TEST(PolicyPlacement, ClusterInputIsChecked) {
  ExpectError(Cluster::Create(Shipped(), {Host("h", "tpm"), Host("h", "xom")}, {}).status(),
              Errc::kInvalidArgument, "host \"h\" listed twice");
  ExpectError(Cluster::Create(Shipped(), {Host("", "tpm")}, {}).status(), Errc::kInvalidArgument,
              "a host has an empty id");
  ExpectError(
      Cluster::Create(Shipped(), {Host("h", "tpm")}, {Vm("v", Options({1}), 1, "g")}).status(),
      Errc::kNotFound, "vm \"v\": unknown host \"g\"");
  ExpectError(Cluster::Create(Shipped(), {Host("h", "tpm")},
                              {Vm("v", Options({1}), 1, "h"), Vm("v", Options({1}), 1)})
                  .status(),
              Errc::kInvalidArgument, "vm \"v\" listed twice");
  Cluster c = MakeCluster({Host("h", "tpm")});
  ExpectError(c.UpdateHost(Host("nope", "tpm")).status(), Errc::kNotFound, "unknown host \"nope\"");
  ExpectError(c.UpdateRequest("nope", Options({1})).status(), Errc::kNotFound,
              "unknown vm \"nope\"");
  ExpectError(c.AddHost(Host("h", "xom")), Errc::kInvalidArgument, "host \"h\" already exists");
}

TEST(PolicyPlacement, HostDropRelocatesItsVmsWithinCapacity) {
  // src (HyperWall) runs four VMs. Targets: t1 HyperWall with room for two of the 2 GiB VMs,
  // t2 DataSafe (covers VM-A only, not the hypervisor), bad: a HyperWall that failed attestation
  // with plenty of room.
  HostState bad = Host("bad", "hyperwall", 1 << 20, 100);
  bad.attested_ok = false;
  Cluster c =
      MakeCluster({Host("src", "hyperwall", 0, 0), Host("t1", "hyperwall", 4096, 8),
                   Host("t2", "datasafe", 3072, 8), bad},
                  {Vm("b1", Options({1, 2}), 2048, "src"), Vm("b2", Options({1, 2}), 2048, "src"),
                   Vm("b3", Options({1, 2}), 2048, "src"), Vm("a1", Options({1}), 2048, "src")});

  HostState dropped = Host("src", "hyperwall", 0, 0);
  dropped.violations = 7;  // trust monitor: violation counter tripped
  Result<RelocationPlan> plan = c.UpdateHost(dropped);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->trigger,
            "host \"src\" changed: untrusted (7 runtime violations, more than the 2 allowed)");
  const std::string why = "host \"src\" untrusted: 7 runtime violations, more than the 2 allowed";
  // VM-B-like VMs first (4 cells before 2): b1, b2 fill t1; b3 finds no HyperWall with room;
  // a1 goes to t2 (DataSafe covers other-vms).
  EXPECT_EQ(plan->moves,
            (std::vector<Move>{
                {"b1", "src", "t1", why}, {"b2", "src", "t1", why}, {"a1", "src", "t2", why}}));
  EXPECT_EQ(
      plan->unplaced,
      (std::vector<Unplaced>{{"b3", "src",
                              why + "; no target: 1 trusted host covers other-vms:CI "
                                    "hypervisor:CI but none has 2048 MB and a VM slot free"}}));
  for (const Move& m : plan->moves) EXPECT_NE(m.to, "bad");
  // The model follows the plan.
  EXPECT_EQ(c.VmsOn("src"), (std::vector<std::string>{"b3"}));
  EXPECT_EQ(c.VmsOn("t1"), (std::vector<std::string>{"b1", "b2"}));
  EXPECT_EQ(c.FindHost("t1")->free_memory_mb, 0u);
  EXPECT_EQ(c.FindHost("t2")->free_memory_mb, 1024u);
  EXPECT_EQ(c.FindVm("a1")->host, "t2");
  EXPECT_EQ(plan->ToJson()["moves"][0],
            (json{{"vm", "b1"}, {"from", "src"}, {"to", "t1"}, {"reason", why}}));
  EXPECT_EQ(plan->ToJson()["unplaced"][0]["vm"], "b3");

  // The bad host recovers: a sweep places b3 there.
  bad.attested_ok = true;
  Result<RelocationPlan> none = c.UpdateHost(bad);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->moves.empty() && none->unplaced.empty());
  RelocationPlan sweep = c.RelocateUncovered();
  EXPECT_EQ(sweep.moves, (std::vector<Move>{{"b3", "src", "bad", why}}));
  EXPECT_TRUE(sweep.unplaced.empty());
  EXPECT_TRUE(c.RelocateUncovered().moves.empty());
}

TEST(PolicyPlacement, ArchitectureChangeMovesOnlyTheUncoveredVms) {
  Cluster c =
      MakeCluster({Host("h", "hyperwall"), Host("t", "h-svm"), Host("d", "datasafe")},
                  {Vm("vm-a", Options({1}), 1024, "h"), Vm("vm-b", Options({1, 2}), 1024, "h")});
  // h is re-provisioned as HyperSafe (other-vms Yes, hypervisor No): VM-A stays, VM-B moves to
  // the only other host covering the hypervisor, the H-SVM.
  Result<RelocationPlan> plan = c.UpdateHost(Host("h", "hypersafe"));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->trigger, "host \"h\" changed: trusted, architecture hypersafe");
  EXPECT_EQ(plan->moves,
            (std::vector<Move>{{"vm-b", "h", "t",
                                "host \"h\" (HyperSafe [10]) does not protect hypervisor.C "
                                "hypervisor.I"}}));
  EXPECT_EQ(c.VmsOn("h"), (std::vector<std::string>{"vm-a"}));
}

TEST(PolicyPlacement, RequestChangeRelocatesTheVm) {
  Cluster c = MakeCluster(
      {Host("hw", "hyperwall"), Host("ds", "datasafe", 4096), Host("bs", "bastion", 2048)},
      {Vm("v", Options({1}), 1024, "hw")});
  // Still covered by HyperWall: nothing moves.
  Result<RelocationPlan> same = c.UpdateRequest("v", Options({1}, Protection::kI));
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->trigger, "vm \"v\" request changed to other-vms:I");
  EXPECT_TRUE(same->moves.empty() && same->unplaced.empty());
  // The customer switches to online medical records: only Bastion and DataSafe cover it; DataSafe
  // has more free memory.
  Result<RelocationPlan> medical = c.UpdateRequest("v", Options({1, 5, 6, 7}));
  ASSERT_TRUE(medical.ok());
  EXPECT_EQ(medical->moves,
            (std::vector<Move>{{"v", "hw", "ds",
                                "host \"hw\" (HyperWall [8]) does not protect same-app.C "
                                "same-app.I other-apps.C other-apps.I guest-os.C guest-os.I"}}));
  EXPECT_EQ(c.FindVm("v")->request, Options({1, 5, 6, 7}));
  // Then cloud-manager protection: nothing in Table III offers it; the VM stays and is reported.
  Result<RelocationPlan> four = c.UpdateRequest("v", Options({1, 4}));
  ASSERT_TRUE(four.ok());
  EXPECT_TRUE(four->moves.empty());
  EXPECT_EQ(four->unplaced,
            (std::vector<Unplaced>{
                {"v", "ds",
                 "host \"ds\" (DataSafe [19]) does not protect cloud-manager.C cloud-manager.I; "
                 "no target: no trusted host protects cloud-manager.C cloud-manager.I"}}));
  EXPECT_EQ(c.FindVm("v")->host, "ds");
}

TEST(PolicyPlacement, AddedHostsAndDryRuns) {
  Cluster c = MakeCluster({Host("old", "tpm")}, {Vm("v", RequestMatrix(), 512, "old")});
  ExpectError(c.ChooseHost(Options({1, 2}), 512).status(), Errc::kRefused,
              "no trusted host protects other-vms.C other-vms.I hypervisor.C hypervisor.I");
  ASSERT_TRUE(c.AddHost(Host("new", "cell-processor", 1024, 1)).ok());
  EXPECT_EQ(*c.ChooseHost(Options({1, 2}), 512), "new");

  // A copy plans on its own: the original does not see the copy's plan.
  Cluster dry = c;
  HostState old = Host("old", "tpm");
  old.attested_ok = false;
  Result<RelocationPlan> plan = dry.UpdateHost(old);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->moves,
            (std::vector<Move>{{"v", "old", "new", "host \"old\" untrusted: attestation failed"}}));
  const std::string why = "host \"old\" untrusted: attestation failed";
  EXPECT_EQ(plan->ToJson(),
            (json{{"trigger", "host \"old\" changed: untrusted (attestation failed)"},
                  {"moves",
                   json::array({{{"vm", "v"}, {"from", "old"}, {"to", "new"}, {"reason", why}}})},
                  {"unplaced", json::array()}}));
  EXPECT_EQ(dry.FindVm("v")->host, "new");
  EXPECT_EQ(c.FindVm("v")->host, "old");
  EXPECT_EQ(c.FindHost("new")->free_vm_slots, 1u);
  EXPECT_EQ(dry.FindHost("new")->free_vm_slots, 0u);
}

// A reference planner: scans every host for every VM (the obviously correct O(k * H) version of
// what Cluster does with its index), on the same order and tie-break.
struct Reference {
  std::vector<HostState> hosts;
  std::vector<std::pair<std::string, std::string>> Plan(std::vector<VmState> vms,
                                                        std::vector<std::string>& unplaced) {
    std::sort(vms.begin(), vms.end(), [](const VmState& a, const VmState& b) {
      const size_t ca = a.request.cells().size(), cb = b.request.cells().size();
      if (ca != cb) return ca > cb;
      if (a.memory_mb != b.memory_mb) return a.memory_mb > b.memory_mb;
      return a.id < b.id;
    });
    std::vector<std::pair<std::string, std::string>> moves;
    for (const VmState& vm : vms) {
      HostState* best = nullptr;
      for (HostState& h : hosts) {
        if (!Covers(vm.request, EffectiveRowOf(h, Shipped()))) continue;
        if (h.free_vm_slots == 0 || h.free_memory_mb < vm.memory_mb) continue;
        if (best == nullptr || std::tie(h.free_memory_mb, h.free_vm_slots, best->id) >
                                   std::tie(best->free_memory_mb, best->free_vm_slots, h.id))
          best = &h;
      }
      if (best == nullptr) {
        unplaced.push_back(vm.id);
        continue;
      }
      best->free_memory_mb -= vm.memory_mb;
      best->free_vm_slots -= 1;
      moves.emplace_back(vm.id, best->id);
    }
    return moves;
  }
};

TEST(PolicyPlacement, RandomClustersMatchTheReferencePlanner) {
  std::mt19937 rng(20240611);
  std::vector<std::string> archs;
  for (const CapabilityRow& r : Shipped().rows()) archs.push_back(r.name);
  archs.push_back("unknown");
  // Valid requests: option subsets without the 5/6 + 2 combination, random C/I.
  auto random_request = [&] {
    for (;;) {
      std::vector<OptionChoice> choices;
      for (int n = 1; n <= 7; ++n)
        if (rng() % 4 == 0)
          choices.push_back(
              {static_cast<SecurityOption>(n), static_cast<Protection>(1 + rng() % 3)});
      if (choices.empty()) return RequestMatrix();
      Result<RequestMatrix> m = RequestMatrix::FromOptions(choices);
      if (m.ok()) return *m;
    }
  };
  for (int round = 0; round < 40; ++round) {
    SCOPED_TRACE(round);
    std::vector<HostState> hosts;
    for (int i = 0; i < 60; ++i) {
      HostState h = Host("h" + std::to_string(i), archs[rng() % archs.size()], 1024 * (rng() % 6),
                         static_cast<uint32_t>(rng() % 4));
      h.attested_ok = rng() % 10 != 0;
      h.violations = rng() % 4;
      hosts.push_back(h);
    }
    std::vector<VmState> vms;
    for (int i = 0; i < 200; ++i)
      vms.push_back(Vm("v" + std::to_string(i), random_request(), 256 * (1 + rng() % 8),
                       hosts[rng() % hosts.size()].id));
    Cluster c = MakeCluster(hosts, vms);
    // Drop one host; the reference plans on the same state.
    const size_t victim = rng() % hosts.size();
    HostState dropped = hosts[victim];
    dropped.attested_ok = false;
    Reference ref{hosts};
    ref.hosts[victim] = dropped;
    std::vector<VmState> affected;
    for (const VmState& v : vms)
      if (v.host == dropped.id) affected.push_back(v);

    Result<RelocationPlan> plan = c.UpdateHost(dropped);
    ASSERT_TRUE(plan.ok());
    std::vector<std::string> ref_unplaced;
    auto ref_moves = ref.Plan(affected, ref_unplaced);
    ASSERT_EQ(plan->moves.size(), ref_moves.size());
    for (size_t i = 0; i < ref_moves.size(); ++i) {
      EXPECT_EQ(plan->moves[i].vm_id, ref_moves[i].first);
      EXPECT_EQ(plan->moves[i].to, ref_moves[i].second);
      const HostState* to = c.FindHost(plan->moves[i].to);
      EXPECT_TRUE(IsTrusted(*to, Shipped()));
      EXPECT_TRUE(Covers(c.FindVm(plan->moves[i].vm_id)->request, EffectiveRowOf(*to, Shipped())));
    }
    ASSERT_EQ(plan->unplaced.size(), ref_unplaced.size());
    for (size_t i = 0; i < ref_unplaced.size(); ++i)
      EXPECT_EQ(plan->unplaced[i].vm_id, ref_unplaced[i]);
    EXPECT_EQ(plan->moves.size() + plan->unplaced.size(), affected.size());
    // Capacity: the model's hosts equal the reference's after the plan (never below zero: the
    // counters are unsigned and the reference checks fit before taking).
    for (const HostState& h : ref.hosts) EXPECT_EQ(*c.FindHost(h.id), h) << h.id;
  }
}

}  // namespace
}  // namespace sod::policy
