// Fuzzes the RAM stream tracker (migrate/ram_stream.h): the destination runs it over the stream
// its peer sent (after the records verified), the source over its QEMU's output. Input: one byte
// choosing how to cut the rest into pieces, then the stream.
// Properties: the tracker never crashes or reads out of bounds; how the stream is cut never
// changes the outcome (status, completeness, pages received, every block's digest); a refusal is
// always kUnsupported with a reason; a complete stream's tables have one hash per page.
#include <string>

#include "fuzz_target.h"
#include "migrate/ram_stream.h"
#include "tests/qemu_stream_builder.h"

namespace {

using sod::ByteSpan;
using sod::RamStreamTracker;

constexpr uint64_t kMax = 1 << 20;  // 256 pages at most: the fuzzer allocates nothing large

struct Outcome {
  bool ok;
  bool complete;
  uint64_t pages;
  std::string digests;
};

Outcome Run(ByteSpan stream, size_t piece) {
  RamStreamTracker t(kMax);
  if (piece == 0) {
    t.Feed(stream);
  } else {
    for (size_t at = 0; at < stream.size(); at += piece)
      t.Feed(stream.subspan(at, std::min(piece, stream.size() - at)));
  }
  Outcome o{t.status().ok(), t.ram_complete(), t.pages_received(), ""};
  if (!o.ok) {
    FUZZ_CHECK(t.status().code() == sod::Errc::kUnsupported);
    FUZZ_CHECK(!t.status().message().empty());
    FUZZ_CHECK(!o.complete);
  }
  for (const char* name : {"mem0", "pc.rom", "a", ""}) {
    const sod::RamPageTable* b = t.Block(name);
    if (b == nullptr) continue;
    FUZZ_CHECK(b->length % sod::kRamPageSize == 0 && b->length <= kMax);
    FUZZ_CHECK(b->hashes.size() == b->length / sod::kRamPageSize);
    FUZZ_CHECK(b->seen.size() == b->hashes.size());
    auto d = sod::RamTableDigest(*b);
    o.digests.append(d.begin(), d.end());
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = data[0];  // 0: one piece; else pieces of that many bytes
  ByteSpan stream(data + 1, size - 1);
  const Outcome whole = Run(stream, 0);
  const Outcome cut = Run(stream, piece == 0 ? 1 : piece);
  FUZZ_CHECK(whole.ok == cut.ok);
  FUZZ_CHECK(whole.complete == cut.complete);
  FUZZ_CHECK(whole.pages == cut.pages);
  FUZZ_CHECK(whole.digests == cut.digests);
  return 0;
}

std::vector<sod::Bytes> FuzzSeeds() {
  using sod::testing::QemuStreamBuilder;
  std::vector<sod::Bytes> seeds;
  const sod::Bytes page(sod::kRamPageSize, 0x61);
  {
    QemuStreamBuilder b;
    b.U8(7).Header().RamStart(2, {{"mem0", 4 * sod::kRamPageSize}, {"pc.rom", sod::kRamPageSize}});
    b.Part(2).Zero("mem0", 0).Page("", sod::kRamPageSize, page).Zero("pc.rom", 0).Eos().Footer(2);
    b.End(2).Page("mem0", 2 * sod::kRamPageSize, page).Zero("", 3 * sod::kRamPageSize);
    b.Eos().Footer(2).DevicesAndEof(3, "timer", sod::Bytes(20, 1));
    seeds.push_back(b.bytes);
  }
  {
    QemuStreamBuilder b;
    b.U8(0).Header().U8(0x05).Str8("configuration/capabilities").Be32(1).Be32(1).Str8("events");
    b.U8(0x08).Be16(3).Be16(2).Be16(0).RamStart(5, {{"a", sod::kRamPageSize}});
    b.End(5).Zero("a", 0, 9).Eos().U8(0);
    seeds.push_back(b.bytes);
  }
  return seeds;
}
