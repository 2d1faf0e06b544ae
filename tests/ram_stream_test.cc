// The RAM check's parts without QEMU (migrate/ram_stream.h): the stream tracker on synthetic
// QEMU 7.2 streams (every split of the input gives the same tables; later versions of a page win;
// everything it cannot follow is refused with a reason), the memory-file hasher, the page-level
// comparison and the digest. tests/vm_test.cc runs the tracker on real QEMU's own stream.
#include "migrate/ram_stream.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "tests/qemu_stream_builder.h"

namespace sod {
namespace {

using ::testing::HasSubstr;
using testing::QemuStreamBuilder;
namespace fs = std::filesystem;

constexpr uint64_t kPage = kRamPageSize;
constexpr uint64_t kRamBytes = 16 * kPage;

Bytes Filled(uint8_t v) { return Bytes(kPage, v); }

// RAM contents and the stream that carries them: two rounds (the second re-sends pages 3 and 5
// with new contents), pages in a second block, zero pages, then device state.
struct Fixture {
  Bytes ram = Bytes(kRamBytes, 0);
  Bytes stream;

  Fixture() {
    QemuStreamBuilder b;
    b.Header().RamStart(2, {{"mem0", kRamBytes}, {"pc.rom", 2 * kPage}});
    b.Part(2);
    for (uint64_t i = 0; i < 16; ++i) {
      const std::string_view block = i == 0 ? "mem0" : "";  // the rest continue the block
      if (i % 4 == 1) {
        b.Zero(block, i * kPage);
      } else {
        Bytes p = Filled(static_cast<uint8_t>(i + 1));
        b.Page(block, i * kPage, p);
      }
    }
    b.Zero("pc.rom", 0).Page("", kPage, Filled(0xee));
    b.Eos().Footer(2).Part(2);
    b.Page("mem0", 3 * kPage, Filled(0x33)).Page("", 5 * kPage, Filled(0x55));
    b.Eos().Footer(2).End(2);
    b.Page("mem0", 5 * kPage, Filled(0x56));  // the last version wins
    b.Eos().Footer(2);
    Bytes device(300, 0xab);
    device[0] = 0x7e;  // bytes after the RAM are never interpreted
    b.DevicesAndEof(3, "timer", device);
    stream = std::move(b.bytes);
    for (uint64_t i = 0; i < 16; ++i)
      if (i % 4 != 1) std::fill_n(ram.begin() + i * kPage, kPage, static_cast<uint8_t>(i + 1));
    std::fill_n(ram.begin() + 3 * kPage, kPage, 0x33);
    std::fill_n(ram.begin() + 5 * kPage, kPage, 0x56);
  }
};

class RamStreamTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!file_.empty()) fs::remove(file_);
  }
  // The RAM as a memory file would hold it.
  RamPageTable HashOf(const Bytes& ram) {
    file_ = (fs::temp_directory_path() / ("sod-ram-stream-test-" + std::to_string(::getpid())))
                .string();
    std::ofstream(file_, std::ios::binary)
        .write(reinterpret_cast<const char*>(ram.data()), static_cast<std::streamsize>(ram.size()));
    auto t = HashRamFile(file_, "mem0", 3);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : RamPageTable{};
  }
  std::string file_;
};

void FeedAll(RamStreamTracker& t, const Bytes& b) { t.Feed(ByteSpan(b)); }

TEST_F(RamStreamTest, FollowsTheStreamAndMatchesTheRam) {
  Fixture f;
  RamStreamTracker t(1 << 20);
  FeedAll(t, f.stream);
  ASSERT_TRUE(t.status().ok()) << t.status().ToString();
  EXPECT_TRUE(t.ram_complete());
  EXPECT_EQ(t.pages_received(), 16u + 2 + 3);
  const RamPageTable* mem = t.Block("mem0");
  ASSERT_NE(mem, nullptr);
  EXPECT_EQ(mem->length, kRamBytes);
  ASSERT_NE(t.Block("pc.rom"), nullptr);
  EXPECT_EQ(t.Block("nope"), nullptr);

  RamPageTable ram = HashOf(f.ram);
  EXPECT_EQ(ram.hashes.size(), 16u);
  EXPECT_TRUE(CompareRamTables(ram, *mem).ok()) << CompareRamTables(ram, *mem).ToString();
  EXPECT_EQ(RamTableDigest(ram), RamTableDigest(*mem));
}

TEST_F(RamStreamTest, EverySplitOfTheInputGivesTheSameTables) {
  Fixture f;
  RamStreamTracker whole(1 << 20);
  FeedAll(whole, f.stream);
  const auto digest = RamTableDigest(*whole.Block("mem0"));
  // Byte by byte, and at random piece sizes (pieces straddle every kind of item).
  RamStreamTracker bytewise(1 << 20);
  for (uint8_t c : f.stream) bytewise.Feed(ByteSpan(&c, 1));
  ASSERT_TRUE(bytewise.status().ok()) << bytewise.status().ToString();
  EXPECT_TRUE(bytewise.ram_complete());
  EXPECT_EQ(RamTableDigest(*bytewise.Block("mem0")), digest);
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    RamStreamTracker t(1 << 20);
    size_t at = 0;
    while (at < f.stream.size()) {
      size_t n = std::min<size_t>(f.stream.size() - at, 1 + rng() % 9000);
      t.Feed(ByteSpan(f.stream).subspan(at, n));
      at += n;
    }
    ASSERT_TRUE(t.status().ok()) << t.status().ToString();
    ASSERT_TRUE(t.ram_complete());
    ASSERT_EQ(RamTableDigest(*t.Block("mem0")), digest) << "round " << round;
    ASSERT_EQ(t.pages_received(), whole.pages_received());
  }
}

TEST_F(RamStreamTest, StaleAndMissingPagesAreNamed) {
  Fixture f;
  RamStreamTracker t(1 << 20);
  FeedAll(t, f.stream);
  Bytes ram = f.ram;
  ram[9 * kPage + 100] ^= 1;  // changed after QEMU last sent it: a missed dirty page
  RamPageTable table = HashOf(ram);
  std::vector<size_t> bad;
  Status s = CompareRamTables(table, *t.Block("mem0"), &bad);
  EXPECT_EQ(s.code(), Errc::kIntegrity);
  EXPECT_THAT(s.message(), HasSubstr("1 page(s) stale, 0 never sent"));
  EXPECT_THAT(s.message(), HasSubstr("at 0x9000"));
  EXPECT_EQ(bad, std::vector<size_t>{9});
  EXPECT_NE(RamTableDigest(table), RamTableDigest(*t.Block("mem0")));

  // A stream that never carried page 7.
  QemuStreamBuilder b;
  b.Header().RamStart(2, {{"mem0", kRamBytes}}).Part(2);
  for (uint64_t i = 0; i < 16; ++i)
    if (i != 7) b.Zero("mem0", i * kPage);
  b.Eos().Footer(2).End(2).Eos().Footer(2).U8(0);
  RamStreamTracker gap(1 << 20);
  FeedAll(gap, b.bytes);
  ASSERT_TRUE(gap.status().ok()) << gap.status().ToString();
  EXPECT_TRUE(gap.ram_complete());
  s = CompareRamTables(HashOf(Bytes(kRamBytes, 0)), *gap.Block("mem0"), &bad);
  EXPECT_THAT(s.message(), HasSubstr("0 page(s) stale, 1 never sent"));
  EXPECT_THAT(s.message(), HasSubstr("0x7000 (never sent)"));
  EXPECT_EQ(bad, std::vector<size_t>{7});
  // Different sizes are refused before any page is compared, and no page is named to repair.
  s = CompareRamTables(HashOf(Bytes(kRamBytes + kPage, 0)), *gap.Block("mem0"), &bad);
  EXPECT_EQ(s.code(), Errc::kIntegrity);
  EXPECT_THAT(s.message(), HasSubstr("bytes, the stream's"));
  EXPECT_TRUE(bad.empty());
}

TEST_F(RamStreamTest, IncompleteStreamIsNotComplete) {
  Fixture f;
  RamStreamTracker t(1 << 20);
  t.Feed(ByteSpan(f.stream).first(f.stream.size() / 2));
  EXPECT_TRUE(t.status().ok());
  EXPECT_FALSE(t.ram_complete());
}

TEST_F(RamStreamTest, ConfigurationSubsectionsAndCommandsAreSkipped) {
  QemuStreamBuilder b;
  b.Header();
  b.U8(0x05).Str8("configuration/capabilities").Be32(1).Be32(2).Str8("x-ignore-shared").Str8("events");
  b.U8(0x05).Str8("configuration/uuid").Be32(1).Raw(Bytes(16, 0x11));
  b.U8(0x05).Str8("configuration/target-page-bits").Be32(1).Be32(12);
  b.U8(0x08).Be16(2).Be16(4).Be32(99);  // a command with 4 bytes of data (e.g. a ping)
  b.RamStart(2, {{"mem0", 2 * kPage}}).End(2).Zero("mem0", 0).Zero("", kPage).Eos().Footer(2);
  b.U8(0x00);
  RamStreamTracker t(1 << 20);
  FeedAll(t, b.bytes);
  ASSERT_TRUE(t.status().ok()) << t.status().ToString();
  EXPECT_TRUE(t.ram_complete());
  EXPECT_EQ(t.pages_received(), 2u);
}

struct Refusal {
  const char* name;
  std::function<void(QemuStreamBuilder&)> build;
  const char* reason;
};

TEST_F(RamStreamTest, WhatItCannotFollowIsRefusedWithAReason) {
  const Bytes page = Filled(1);
  const std::vector<Refusal> cases = {
      {"magic", [](auto& b) { b.Be32(0x12345678).Be32(3); }, "not a QEMU migration stream"},
      {"version", [](auto& b) { b.Be32(0x5145564d).Be32(2); }, "stream version 2"},
      {"other iterable", [](auto& b) { b.Header().U8(0x01).Be32(1).Str8("block").Be32(0).Be32(1); },
       "iterable section 'block'"},
      {"two ram sections",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).RamStart(3, {{"mem1", kPage}}); },
       "a second RAM section"},
      {"part of another section",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(9); }, "not RAM's"},
      {"xbzrle",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Be64(0x40).Str8("mem0"); },
       "RAM record flags 0x40"},
      {"compressed",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Be64(0x100).Str8("mem0"); },
       "RAM record flags 0x100"},
      {"beyond the block",
       [&](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Page("mem0", kPage, page); },
       "beyond RAM block mem0"},
      {"undeclared block",
       [&](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Page("vga", 0, page); },
       "undeclared RAM block 'vga'"},
      {"continue without block",
       [&](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Page("", 0, page); },
       "continues no block"},
      {"too much RAM",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", uint64_t{1} << 40}}); }, "more than"},
      {"blocks do not add up",
       [](auto& b) {
         b.Header().U8(0x01).Be32(2).Str8("ram").Be32(0).Be32(4).Be64((2 * kPage) | 4);
         b.Str8("mem0").Be64(3 * kPage);
       },
       "RAM block mem0 of"},
      {"unaligned block",
       [](auto& b) {
         b.Header().U8(0x01).Be32(2).Str8("ram").Be32(0).Be32(4).Be64((2 * kPage) | 4);
         b.Str8("mem0").Be64(kPage + 1);
       },
       "RAM block mem0 of 4097 bytes"},
      {"declared twice",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}, {"mem0", kPage}}); },
       "declared twice"},
      {"devices before RAM ended",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).DevicesAndEof(3, "x", {}); },
       "device state before the end of RAM"},
      {"RAM after its end",
       [](auto& b) {
         b.Header().RamStart(2, {{"mem0", kPage}}).End(2).Eos().Footer(2).Part(2);
       },
       "RAM continues after its end"},
      {"size outside setup",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Be64(kPage | 4); },
       "RAM size outside the RAM setup"},
      {"footer of another section",
       [](auto& b) { b.Header().RamStart(2, {{"mem0", kPage}}).Part(2).Eos().Footer(5); },
       "footer of section 5"},
      {"packaged command", [](auto& b) { b.Header().U8(0x08).Be16(7).Be16(4).Be32(1); },
       "packaged command"},
      {"huge command", [](auto& b) { b.Header().U8(0x08).Be16(1).Be16(9000); }, "command of 9000"},
      {"unknown subsection",
       [](auto& b) { b.Header().U8(0x05).Str8("configuration/new").Be32(1); },
       "configuration subsection 'configuration/new'"},
      {"page bits",
       [](auto& b) { b.Header().U8(0x05).Str8("configuration/target-page-bits").Be32(1).Be32(16); },
       "target page bits 16"},
      {"long machine name",
       [](auto& b) { b.Be32(0x5145564d).Be32(3).U8(0x07).Be32(100000); }, "machine type name"},
      {"unknown section type", [](auto& b) { b.Header().U8(0x42); }, "unexpected section type 0x42"},
  };
  for (const auto& c : cases) {
    QemuStreamBuilder b;
    c.build(b);
    b.Raw(Bytes(64, 0));  // whatever follows
    for (bool bytewise : {false, true}) {
      RamStreamTracker t(64 << 20);
      if (bytewise) {
        for (uint8_t x : b.bytes) t.Feed(ByteSpan(&x, 1));
      } else {
        FeedAll(t, b.bytes);
      }
      EXPECT_EQ(t.status().code(), Errc::kUnsupported) << c.name;
      EXPECT_THAT(t.status().message(), HasSubstr(c.reason)) << c.name;
      EXPECT_FALSE(t.ram_complete()) << c.name;
    }
  }
}

// Pages the guest never touched are holes in its memory file: they hash as zero pages, and
// hashing does not allocate them (a 1 GiB idle guest would otherwise grow by ~1 GiB at the pause).
TEST_F(RamStreamTest, HolesHashAsZeroPagesWithoutBeingAllocated) {
  const std::string sparse = "/dev/shm/sod-ram-stream-test-sparse-" + std::to_string(::getpid());
  constexpr uint64_t kPages = 4096;  // 16 MiB, 8 hashing chunks
  {
    int fd = ::open(sparse.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, kPages * kPage), 0);
    for (uint64_t page : {3u, 600u, 601u, 4095u}) {
      Bytes p = Filled(static_cast<uint8_t>(page));
      ASSERT_EQ(::pwrite(fd, p.data(), p.size(), static_cast<off_t>(page * kPage)),
                static_cast<ssize_t>(p.size()));
    }
    ::close(fd);
  }
  auto blocks = [&] {
    struct stat st {};
    ::stat(sparse.c_str(), &st);
    return st.st_blocks;
  };
  const auto before = blocks();
  auto t = HashRamFile(sparse, "mem0", 3);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(blocks(), before) << "hashing allocated holes";
  Bytes ram(kPages * kPage, 0);
  for (uint64_t page : {3u, 600u, 601u, 4095u})
    std::fill_n(ram.begin() + page * kPage, kPage, static_cast<uint8_t>(page));
  RamPageTable dense = HashOf(ram);
  EXPECT_EQ(t->hashes, dense.hashes);
  EXPECT_EQ(RamTableDigest(*t), RamTableDigest(dense));
  fs::remove(sparse);
}

TEST_F(RamStreamTest, HashRamFileRefusesWhatItCannotRead) {
  auto t = HashRamFile("/nonexistent/sod-ram", "mem0");
  EXPECT_EQ(t.status().code(), Errc::kIo);
  EXPECT_THAT(t.status().message(), HasSubstr("/nonexistent/sod-ram"));
  // One thread or many: the same table.
  Fixture f;
  RamPageTable a = HashOf(f.ram);
  auto one = HashRamFile(file_, "mem0", 1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->hashes, a.hashes);
}

}  // namespace
}  // namespace sod
