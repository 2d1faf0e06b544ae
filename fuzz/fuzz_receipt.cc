// Fuzzes the migration receipt decoder. Accepted inputs must stay within the limits, pass
// ValidateReceipt, re-encode to exactly the input, and render as JSON without throwing.
#include <nlohmann/json.hpp>

#include "fuzz_target.h"
#include "migrate/receipt.h"

namespace {

sod::Receipt SeedReceipt() {
  sod::Receipt r;
  for (size_t i = 0; i < r.migration_id.size(); ++i) r.migration_id[i] = static_cast<uint8_t>(i);
  r.vm_name = "vm-web-01";
  r.source_host = "hosta";
  r.destination_host = "hostb.rack2";
  r.started_unix_ms = 1738324800123;
  r.switchover_unix_ms = 1738324802456;
  r.rounds = 7;
  r.stream_bytes = 1ull << 32;
  r.wire_bytes = (1ull << 32) + 4096;
  r.records = 4242;
  r.transcript.fill(0x5a);
  r.suite = sod::Suite::kAes256Gcm;
  return r;
}

}  // namespace

std::vector<sod::Bytes> FuzzSeeds() {
  std::vector<sod::Bytes> seeds;
  sod::Receipt r = SeedReceipt();
  seeds.push_back(sod::EncodeReceipt(r));
  r.vtpm_epoch = 3;
  r.ram_digest_present = true;
  r.ram_digest.fill(0xc3);
  r.suite = sod::Suite::kHmacSha256;
  seeds.push_back(sod::EncodeReceipt(r));
  r.outcome_reason = "integrity: record 17 on channel 2: AEAD tag mismatch — aborted";
  r.switchover_unix_ms = 0;
  r.suite = sod::Suite::kInvalid;
  seeds.push_back(sod::EncodeReceipt(r));
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = sod::DecodeReceipt(sod::ByteSpan(data, size));
  if (!r.ok()) return 0;
  FUZZ_CHECK(r->version == sod::kReceiptVersion);
  FUZZ_CHECK(!r->vm_name.empty() && r->vm_name.size() <= sod::kMaxReceiptVmName);
  FUZZ_CHECK(r->outcome_reason.size() <= sod::kMaxReceiptReason);
  FUZZ_CHECK(sod::ValidateReceipt(*r).ok());
  sod::Bytes out = sod::EncodeReceipt(*r);
  FUZZ_CHECK(out.size() == size && std::equal(out.begin(), out.end(), data));
  try {
    std::string text = sod::ToJson(*r).dump();
    FUZZ_CHECK(!text.empty());
  } catch (const nlohmann::json::exception&) {
    FuzzCheckFailed("ToJson(accepted receipt).dump() threw");
  }
  return 0;
}
