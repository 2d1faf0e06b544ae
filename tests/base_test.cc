#include <gtest/gtest.h>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {
namespace {

TEST(StatusTest, OkAndErrorRender) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = Error(Errc::kIntegrity, "record 3: tag mismatch");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.ToString(), "integrity: record 3: tag mismatch");
  EXPECT_EQ(s.WithContext("channel 2").ToString(), "integrity: channel 2: record 3: tag mismatch");
}

TEST(StatusTest, WireCodesRoundTripAndUnknownRefused) {
  for (uint16_t v = 0; v <= static_cast<uint16_t>(Errc::kAttestation); ++v) {
    auto e = ErrcFromWire(v);
    ASSERT_TRUE(e.has_value()) << v;
    EXPECT_EQ(static_cast<uint16_t>(*e), v);
    EXPECT_NE(ErrcName(*e), "unknown");
  }
  EXPECT_FALSE(ErrcFromWire(static_cast<uint16_t>(Errc::kAttestation) + 1).has_value());
  EXPECT_FALSE(ErrcFromWire(0xffff).has_value());
}

TEST(ResultTest, ValueOrError) {
  Result<int> r = 5;
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 5);
  Result<int> e = Error(Errc::kIo, "boom");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Errc::kIo);
  Result<int> bad = Status::Ok();  // a Result never holds an OK status
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Errc::kInternal);
}

TEST(BytesTest, LittleEndianGolden) {
  Bytes out;
  ByteWriter w(out);
  w.U8(0x01);
  w.U16(0x0302);
  w.U32(0x07060504);
  w.U64(0x0f0e0d0c0b0a0908ull);
  w.Str16("hi");
  const Bytes golden = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 2, 0, 'h', 'i'};
  EXPECT_EQ(out, golden);

  ByteReader r(out);
  uint8_t a;
  uint16_t b;
  uint32_t c;
  uint64_t d;
  std::string s;
  ASSERT_TRUE(r.U8(a) && r.U16(b) && r.U32(c) && r.U64(d) && r.Str16(s, 16));
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 0x0302);
  EXPECT_EQ(c, 0x07060504u);
  EXPECT_EQ(d, 0x0f0e0d0c0b0a0908ull);
  EXPECT_EQ(s, "hi");
  EXPECT_TRUE(r.done());
}

TEST(BytesTest, ReaderRefusesShortInputAndOverlongStrings) {
  const Bytes three = {1, 2, 3};
  ByteReader r(three);
  uint32_t v;
  EXPECT_FALSE(r.U32(v));
  EXPECT_TRUE(r.failed());
  uint8_t x;
  EXPECT_FALSE(r.U8(x)) << "a failed reader stays failed";

  Bytes str;
  ByteWriter(str).Str16("hello");
  ByteReader r2(str);
  std::string s;
  EXPECT_FALSE(r2.Str16(s, 4)) << "length above the maximum is refused before copying";

  const Bytes huge_len = {0xff, 0xff, 0xff, 0x7f};
  ByteReader r3(huge_len);
  ByteSpan blob;
  EXPECT_FALSE(r3.Blob32(blob, 1 << 30));
}

}  // namespace
}  // namespace sod
