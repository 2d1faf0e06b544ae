// Fuzzes the three data-channel join decoders (first byte picks one); accepted messages must
// re-encode to exactly the input.
#include "fuzz_target.h"
#include "migrate/channel_join.h"

std::vector<sod::Bytes> FuzzSeeds() {
  sod::ChannelHello h;
  h.channel = 2;
  h.session_id.fill(1);
  h.nonce.fill(2);
  sod::ChannelChallenge c;
  c.nonce.fill(3);
  c.proof.fill(4);
  sod::ChannelProof p;
  p.proof.fill(5);
  return {TaggedSeed(0, sod::EncodeChannelHello(h)), TaggedSeed(1, sod::EncodeChannelChallenge(c)),
          TaggedSeed(2, sod::EncodeChannelProof(p))};
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  sod::ByteSpan in(data + 1, size - 1);
  sod::Bytes out;
  switch (data[0] % 3) {
    case 0: {
      auto m = sod::DecodeChannelHello(in);
      if (!m.ok()) return 0;
      FUZZ_CHECK(m->channel != 0);
      out = sod::EncodeChannelHello(*m);
      break;
    }
    case 1: {
      auto m = sod::DecodeChannelChallenge(in);
      if (!m.ok()) return 0;
      out = sod::EncodeChannelChallenge(*m);
      break;
    }
    case 2: {
      auto m = sod::DecodeChannelProof(in);
      if (!m.ok()) return 0;
      out = sod::EncodeChannelProof(*m);
      break;
    }
  }
  FUZZ_CHECK(out.size() == in.size() && std::equal(out.begin(), out.end(), in.begin()));
  return 0;
}
