// Fuzzes every record body decoder (chunk, round boundary, commit, abort, channel end). The first
// input byte picks the decoder. Accepted bodies must re-encode to exactly the input.
#include "fuzz_target.h"
#include "migrate/record.h"

std::vector<sod::Bytes> FuzzSeeds() {
  std::vector<sod::Bytes> seeds;
  sod::Bytes chunk(sod::kChunkPrefixSize);
  sod::EncodeChunkPrefix(0, 4096, chunk.data());
  chunk.insert(chunk.end(), 64, 0xaa);
  seeds.push_back(TaggedSeed(0, chunk));
  sod::Bytes b;
  sod::EncodeRoundBoundary({1 << 20, 300, 1 << 22}, b);
  seeds.push_back(TaggedSeed(1, b));
  b.clear();
  sod::CommitBody c;
  c.records = 77;
  c.transcript.fill(3);
  c.receipt.assign(200, 6);
  c.signature.assign(72, 5);
  sod::EncodeCommit(c, b);
  seeds.push_back(TaggedSeed(2, b));
  b.clear();
  sod::EncodeAbort({sod::Errc::kIntegrity, "record 3: tag mismatch"}, b);
  seeds.push_back(TaggedSeed(3, b));
  b.clear();
  sod::EncodeChannelEnd({12}, b);
  seeds.push_back(TaggedSeed(4, b));
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  sod::ByteSpan in(data + 1, size - 1);
  sod::Bytes out;
  switch (data[0] % 5) {
    case 0: {
      auto c = sod::DecodeChunk(in);
      if (!c.ok()) return 0;
      FUZZ_CHECK(c->data.size() <= sod::kMaxDataChunk);
      FUZZ_CHECK(c->data.size() + sod::kChunkPrefixSize == in.size());
      return 0;
    }
    case 1: {
      auto r = sod::DecodeRoundBoundary(in);
      if (!r.ok()) return 0;
      sod::EncodeRoundBoundary(*r, out);
      break;
    }
    case 2: {
      auto r = sod::DecodeCommit(in);
      if (!r.ok()) return 0;
      FUZZ_CHECK(r->signature.size() <= sod::kMaxSignature && r->receipt.size() <= sod::kMaxReceipt);
      sod::EncodeCommit(*r, out);
      break;
    }
    case 3: {
      auto r = sod::DecodeAbort(in);
      if (!r.ok()) return 0;
      FUZZ_CHECK(r->code != sod::Errc::kOk);
      sod::EncodeAbort(*r, out);
      break;
    }
    case 4: {
      auto r = sod::DecodeChannelEnd(in);
      if (!r.ok()) return 0;
      sod::EncodeChannelEnd(*r, out);
      break;
    }
  }
  FUZZ_CHECK(out.size() == in.size() && std::equal(out.begin(), out.end(), in.begin()));
  return 0;
}
