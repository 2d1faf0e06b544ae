// Fuzzes DecodeRecordHeader: never crashes, and any header it accepts re-encodes to the same
// bytes and respects the per-type maximum.
#include "fuzz_target.h"
#include "migrate/record.h"

std::vector<sod::Bytes> FuzzSeeds() {
  std::vector<sod::Bytes> seeds;
  for (uint8_t t = 1; t <= sod::kMaxRecordType; ++t) {
    sod::RecordHeader h;
    h.type = static_cast<sod::RecordType>(t);
    h.suite = (t % 2) ? sod::Suite::kAes256Gcm : sod::Suite::kHmacSha256;
    h.channel = t;
    h.sequence = 1000 + t;
    h.length = sod::MaxPayload(h.type) / 2;
    sod::Bytes b(sod::kRecordHeaderSize);
    sod::EncodeRecordHeader(h, b.data());
    seeds.push_back(b);
  }
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sod::ByteSpan in(data, size);
  auto h = sod::DecodeRecordHeader(in);
  if (!h.ok()) return 0;
  FUZZ_CHECK(size >= sod::kRecordHeaderSize);
  FUZZ_CHECK(h->length <= sod::MaxPayload(h->type));
  uint8_t again[sod::kRecordHeaderSize];
  sod::EncodeRecordHeader(*h, again);
  FUZZ_CHECK(std::equal(again, again + sod::kRecordHeaderSize, data));
  return 0;
}
