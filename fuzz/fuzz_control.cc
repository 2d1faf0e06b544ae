// Fuzzes DecodeControl (control messages) and the negotiation that consumes a hello.
#include "fuzz_target.h"
#include "migrate/control.h"

std::vector<sod::Bytes> FuzzSeeds() {
  sod::HelloMsg h;
  h.suites = {sod::Suite::kAes256Gcm, sod::Suite::kHmacSha256};
  h.data_channels = 4;
  h.host_id = "host-a.example";
  return {sod::EncodeControl(h),
          sod::EncodeControl(sod::HelloAckMsg{1, sod::Suite::kAes256Gcm, 2})};
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = sod::DecodeControl(sod::ByteSpan(data, size));
  if (!m.ok()) return 0;
  sod::Bytes again = sod::EncodeControl(*m);
  auto m2 = sod::DecodeControl(again);
  FUZZ_CHECK(m2.ok());
  FUZZ_CHECK(sod::EncodeControl(*m2) == again);
  if (auto* hello = std::get_if<sod::HelloMsg>(&*m)) {
    FUZZ_CHECK(hello->host_id.size() <= sod::kMaxHostId);
    auto ack = sod::NegotiateHello(*hello, {sod::Suite::kAes256Gcm, sod::Suite::kHmacSha256}, 8);
    if (ack.ok()) {
      FUZZ_CHECK(ack->data_channels <= hello->data_channels);
      FUZZ_CHECK(ack->version >= hello->version_min && ack->version <= hello->version_max);
    }
  }
  return 0;
}
