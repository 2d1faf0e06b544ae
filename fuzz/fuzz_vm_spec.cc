// Fuzzes what a destination decodes from a peer's offer besides the control message itself: the
// VM spec JSON (VmSpecFromJson) and the security request it may carry (policy:
// SecurityRequestFromJson, then PackageCatalog::Resolve with the 5/6-excludes-2 rule).
// Properties: an accepted spec validates and survives VmSpecToJson -> VmSpecFromJson unchanged;
// an accepted request re-encodes to a request that decodes equal and resolves to the same
// matrix; a resolved matrix obeys the option rule and round-trips through its own JSON.
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_target.h"
#include "migrate/vm.h"
#include "policy/packages.h"
#include "policy/request.h"

namespace {

using nlohmann::json;
namespace policy = sod::policy;

const policy::PackageCatalog& Catalog() {
  static const policy::PackageCatalog catalog = [] {
    json j = json::parse(R"({"version": 1, "packages": [
      {"name": "basic-security", "description": "option 1", "options": [1], "protect": "CI"},
      {"name": "online-medical-records", "description": "1,5,6,7", "options": [1, 5, 6, 7],
       "protect": "CI"}]})");
    auto c = policy::PackageCatalog::FromJson(j, "fuzz packages");
    if (!c.ok()) FuzzCheckFailed("the fuzz package catalog does not load");
    return std::move(c).value();
  }();
  return catalog;
}

sod::Bytes Text(const std::string& s) { return sod::Bytes(s.begin(), s.end()); }

void CheckRequest(const json& j) {
  auto r = policy::SecurityRequestFromJson(j);
  if (!r.ok()) return;
  auto again = policy::SecurityRequestFromJson(policy::SecurityRequestToJson(*r));
  FUZZ_CHECK(again.ok() && *again == *r);
  auto m = Catalog().Resolve(*r);
  if (!m.ok()) return;
  FUZZ_CHECK(policy::CheckOptionRule(m->cells()).ok());
  auto m2 = Catalog().Resolve(*again);
  FUZZ_CHECK(m2.ok() && *m2 == *m);
  auto back = policy::RequestMatrixFromJson(policy::RequestMatrixToJson(*m));
  FUZZ_CHECK(back.ok() && *back == *m);
}

}  // namespace

std::vector<sod::Bytes> FuzzSeeds() {
  return {
      Text(R"({"name":"web-1","memory_mb":1024,"vcpus":2,"machine":"pc","accel":"tcg",)"
           R"("cpu":"qemu64","kernel":"/k","initrd":"/i","append":"console=ttyS0","disk":"",)"
           R"("guest_port":8080,"tpm":true})"),
      Text(R"({"name":"a","kernel":"/k","security":{"version":1,"options":[1,2],"protect":"CI"}})"),
      Text(R"({"name":"b","disk":"/d.img","security":{"version":1,"package":"online-medical-records"}})"),
      Text(R"({"name":"c","kernel":"/k","security":{"version":1,"options":[{"option":1,"protect":"C"},{"option":6,"protect":"I"}]}})"),
      Text(R"({"version":1,"options":[2,5],"protect":"CI"})"),
  };
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto spec = sod::VmSpecFromJson(j);
  if (spec.ok()) {
    FUZZ_CHECK(sod::ValidateVmSpec(*spec).ok());
    auto again = sod::VmSpecFromJson(sod::VmSpecToJson(*spec));
    FUZZ_CHECK(again.ok() && *again == *spec);
    if (!spec->security.empty()) {
      json s = json::parse(spec->security, nullptr, false);
      FUZZ_CHECK(!s.is_discarded());
      CheckRequest(s);
    }
  }
  CheckRequest(j);  // the input as a bare request, too
  return 0;
}
