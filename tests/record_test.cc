// Wire-format tests of migrate/record.h: golden bytes, round trips, and refusal of every
// malformed header field and body.
#include "migrate/record.h"

#include <gtest/gtest.h>

namespace sod {
namespace {

Bytes Header(const RecordHeader& h) {
  Bytes b(kRecordHeaderSize);
  EncodeRecordHeader(h, b.data());
  return b;
}

TEST(RecordHeaderTest, GoldenBytes) {
  RecordHeader h;
  h.type = RecordType::kStream;
  h.suite = Suite::kAes256Gcm;
  h.channel = 2;
  h.sequence = 0x0102030405060708ull;
  h.round = 3;
  h.length = 0x1000;
  const Bytes golden = {0x01, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x08, 0x07, 0x06, 0x05,
                        0x04, 0x03, 0x02, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00};
  EXPECT_EQ(Header(h), golden);
  auto d = DecodeRecordHeader(golden);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(*d, h);
}

TEST(RecordHeaderTest, RoundTripEveryTypeAndSuite) {
  for (uint8_t t = 1; t <= kMaxRecordType; ++t) {
    for (Suite s : {Suite::kAes256Gcm, Suite::kHmacSha256}) {
      RecordHeader h;
      h.type = static_cast<RecordType>(t);
      h.suite = s;
      h.channel = 7;
      h.sequence = 99;
      h.round = 4;
      h.length = MaxPayload(h.type);
      auto d = DecodeRecordHeader(Header(h));
      ASSERT_TRUE(d.ok()) << RecordTypeName(h.type) << ": " << d.status().ToString();
      EXPECT_EQ(*d, h);
    }
  }
}

TEST(RecordHeaderTest, RefusesEachBadField) {
  RecordHeader h;
  h.type = RecordType::kControl;
  h.suite = Suite::kAes256Gcm;
  h.length = 10;
  const Bytes good = Header(h);
  auto expect_code = [](Bytes b, Errc code, const char* what) {
    auto d = DecodeRecordHeader(b);
    ASSERT_FALSE(d.ok()) << what;
    EXPECT_EQ(d.status().code(), code) << what << ": " << d.status().ToString();
  };
  Bytes b = good;
  b[0] = 2;
  expect_code(b, Errc::kUnsupported, "revision");
  b = good;
  b[1] = 0;
  expect_code(b, Errc::kUnsupported, "type 0 (Invalid)");
  b[1] = kMaxRecordType + 1;
  expect_code(b, Errc::kUnsupported, "unknown type");
  b = good;
  b[2] = 0;
  expect_code(b, Errc::kUnsupported, "suite 0");
  b[2] = 9;
  expect_code(b, Errc::kUnsupported, "unknown suite");
  b = good;
  b[3] = 1;
  expect_code(b, Errc::kMalformed, "reserved");
  b = good;
  StoreLe32(b.data() + 20, MaxPayload(RecordType::kControl) + 1);
  expect_code(b, Errc::kTooLarge, "length above the per-type maximum");
  b = good;
  StoreLe32(b.data() + 20, 0xffffffffu);
  expect_code(b, Errc::kTooLarge, "huge length");
  expect_code(Bytes(good.begin(), good.end() - 1), Errc::kMalformed, "short header");
}

TEST(RecordHeaderTest, MaxRecordSizeCoversLargestChunk) {
  EXPECT_EQ(MaxPayload(RecordType::kStream), kChunkPrefixSize + kMaxDataChunk);
  EXPECT_GE(MaxRecordSize(), kRecordHeaderSize + kChunkPrefixSize + kMaxDataChunk + 32);
  EXPECT_EQ(MaxPayload(RecordType::kInvalid), 0u);
}

TEST(RecordBodyTest, ChunkGoldenAndRoundTrip) {
  uint8_t prefix[kChunkPrefixSize];
  EncodeChunkPrefix(5, 0x1122334455667788ull, prefix);
  const Bytes golden = {5, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
  EXPECT_EQ(Bytes(prefix, prefix + sizeof(prefix)), golden);
  Bytes payload = golden;
  payload.push_back('x');
  auto c = DecodeChunk(payload);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->stream, 5u);
  EXPECT_EQ(c->offset, 0x1122334455667788ull);
  ASSERT_EQ(c->data.size(), 1u);
  EXPECT_EQ(c->data[0], 'x');

  Bytes bad = payload;
  bad[4] = 1;
  EXPECT_EQ(DecodeChunk(bad).status().code(), Errc::kMalformed) << "reserved";
  EXPECT_EQ(DecodeChunk(ByteSpan(golden).first(15)).status().code(), Errc::kMalformed);
  Bytes overflow(kChunkPrefixSize + 2, 0);
  StoreLe64(overflow.data() + 8, UINT64_MAX);
  EXPECT_EQ(DecodeChunk(overflow).status().code(), Errc::kMalformed) << "offset overflow";
}

TEST(RecordBodyTest, RoundBoundaryGoldenAndRoundTrip) {
  RoundBoundaryBody b{0x10, 0x20, 0x30};
  Bytes out;
  EncodeRoundBoundary(b, out);
  const Bytes golden = {0x10, 0, 0, 0, 0,    0, 0, 0, 0x20, 0, 0, 0,
                        0,    0, 0, 0, 0x30, 0, 0, 0, 0,    0, 0, 0};
  EXPECT_EQ(out, golden);
  auto d = DecodeRoundBoundary(out);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, b);
  out.push_back(0);
  EXPECT_FALSE(DecodeRoundBoundary(out).ok()) << "trailing byte";
}

TEST(RecordBodyTest, CommitGoldenAndRoundTrip) {
  CommitBody b;
  b.records = 3;
  b.transcript.fill(0xab);
  b.receipt = {7, 7};
  b.signature = {1, 2, 3};
  Bytes out;
  EncodeCommit(b, out);
  ASSERT_EQ(out.size(), 8u + 32 + 2 + 2 + 2 + 3);
  EXPECT_EQ(out[0], 3);
  EXPECT_EQ(out[8], 0xab);
  EXPECT_EQ(ToHex(ByteSpan(out).subspan(40)), "0200" "0707" "0300" "010203");
  auto d = DecodeCommit(out);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, b);
  Bytes bad = out;
  bad[44] = 4;  // claims one more signature byte than present
  EXPECT_EQ(DecodeCommit(bad).status().code(), Errc::kMalformed);
  bad = out;
  StoreLe16(bad.data() + 44, kMaxSignature + 1);
  EXPECT_EQ(DecodeCommit(bad).status().code(), Errc::kTooLarge);
  bad = out;
  StoreLe16(bad.data() + 40, kMaxReceipt + 1);
  EXPECT_EQ(DecodeCommit(bad).status().code(), Errc::kTooLarge);
  bad = out;
  bad[40] = 9;  // receipt longer than the rest
  EXPECT_EQ(DecodeCommit(bad).status().code(), Errc::kMalformed);
  EXPECT_EQ(MaxPayload(RecordType::kCommit), 8u + 32 + 2 + kMaxReceipt + 2 + kMaxSignature);
}

TEST(RecordBodyTest, AbortGoldenRoundTripAndUnknownCode) {
  AbortBody b{Errc::kIntegrity, "tag mismatch"};
  Bytes out;
  EncodeAbort(b, out);
  const Bytes golden = {5, 0, 12, 0, 't', 'a', 'g', ' ', 'm', 'i', 's', 'm', 'a', 't', 'c', 'h'};
  EXPECT_EQ(out, golden);
  auto d = DecodeAbort(out);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, b);
  Bytes bad = out;
  bad[0] = 0xee;
  EXPECT_EQ(DecodeAbort(bad).status().code(), Errc::kUnsupported);
  bad = out;
  bad[0] = 0;  // kOk is not a reason to abort
  EXPECT_EQ(DecodeAbort(bad).status().code(), Errc::kUnsupported);
  AbortBody long_reason{Errc::kIo, std::string(5000, 'r')};
  Bytes l;
  EncodeAbort(long_reason, l);
  auto dl = DecodeAbort(l);
  ASSERT_TRUE(dl.ok());
  EXPECT_EQ(dl->reason.size(), kMaxAbortReason) << "the encoder truncates over-long reasons";
}

TEST(RecordBodyTest, ChannelEndGolden) {
  Bytes out;
  EncodeChannelEnd(ChannelEndBody{258}, out);
  EXPECT_EQ(out, (Bytes{2, 1, 0, 0, 0, 0, 0, 0}));
  auto d = DecodeChannelEnd(out);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->records, 258u);
  EXPECT_FALSE(DecodeChannelEnd(ByteSpan(out).first(7)).ok());
}

}  // namespace
}  // namespace sod
