// Key schedule, record protection and transcript against known answers computed independently
// (Python's hmac/hashlib and the `cryptography` package's AESGCM, from the formulas in
// migrate/PROTOCOL.md), so the C++ code and the spec are checked against each other.
#include <gtest/gtest.h>

#include <numeric>

#include "fake_transport.h"
#include "migrate/key_schedule.h"
#include "migrate/record_io.h"
#include "migrate/record_protection.h"
#include "migrate/transcript.h"

namespace sod {
namespace {

Bytes FromHex(std::string_view hex) {
  Bytes b;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    b.push_back(static_cast<uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return b;
}

SessionKeys TestKeys() {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), 0);
  auto k = SessionKeys::Create(secret);
  EXPECT_TRUE(k.ok());
  return std::move(k).value();
}

TEST(KeyScheduleTest, KnownAnswers) {
  SessionKeys k = TestKeys();
  EXPECT_EQ(ToHex(k.session_id()), "56585d076630d62edd09207c75114765");
  EXPECT_EQ(ToHex(k.transcript_key()),
            "4a03b44633ca011c1e0e0b6fad32a008fecb1fb4f6cba1c05d90f94ec769b2ea");
  auto ck = k.ForChannel(1, Direction::kInitiatorToResponder);
  ASSERT_TRUE(ck.ok());
  EXPECT_EQ(ToHex(ck->aead_key.span()),
            "3395793c325b8b5e8d644430d243a543cb7abbf7cdcae471e463397a7b398751");
  EXPECT_EQ(ToHex(ck->aead_iv.span()), "7ef4ca917344ffc0ebdd78a4");
}

TEST(KeyScheduleTest, KeysDifferPerChannelDirectionAndSession) {
  SessionKeys k = TestKeys();
  auto a = k.ForChannel(1, Direction::kInitiatorToResponder);
  auto b = k.ForChannel(1, Direction::kResponderToInitiator);
  auto c = k.ForChannel(2, Direction::kInitiatorToResponder);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_NE(ToHex(a->aead_key.span()), ToHex(b->aead_key.span()));
  EXPECT_NE(ToHex(a->aead_key.span()), ToHex(c->aead_key.span()));
  EXPECT_NE(ToHex(a->aead_iv.span()), ToHex(c->aead_iv.span()));
  EXPECT_NE(ToHex(a->mac_key.span()), ToHex(a->aead_key.span()));
  Bytes other(32, 0x42);
  auto k2 = SessionKeys::Create(other);
  ASSERT_TRUE(k2.ok());
  EXPECT_NE(ToHex(k2->session_id()), ToHex(k.session_id()));
  EXPECT_EQ(SessionKeys::Create(Bytes(31)).status().code(), Errc::kInvalidArgument);
}

struct Golden {
  Suite suite;
  const char* record_hex;
};

class SealGoldenTest : public ::testing::TestWithParam<Golden> {};

TEST_P(SealGoldenTest, WriterProducesKnownBytesAndReaderOpensThem) {
  SessionKeys k = TestKeys();
  testing::CaptureSendQueue q;
  RecordParams p{GetParam().suite, 1, Direction::kInitiatorToResponder};
  auto w = RecordWriter::Create(q, p, k);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  (*w)->SetNextSequenceForTesting(5);
  const std::string_view msg = "hello, sod";
  ASSERT_TRUE((*w)->Write(RecordType::kControl, 2,
                          ByteSpan(reinterpret_cast<const uint8_t*>(msg.data()), msg.size()))
                  .ok());
  ASSERT_EQ(q.commits.size(), 1u);
  EXPECT_EQ(ToHex(q.commits[0]), GetParam().record_hex);

  testing::MemoryStream in(q.commits[0]);
  auto r = RecordReader::Create(in, p, k);
  ASSERT_TRUE(r.ok());
  (*r)->SetNextSequenceForTesting(5);
  auto rec = (*r)->Next();
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(std::string(rec->payload.begin(), rec->payload.end()), msg);
  EXPECT_EQ(rec->header.round, 2u);
  EXPECT_TRUE(TranscriptEqual((*w)->transcript().value(), (*r)->transcript().value()));
}

INSTANTIATE_TEST_SUITE_P(
    Suites, SealGoldenTest,
    ::testing::Values(
        Golden{Suite::kAes256Gcm,
               "01050100010000000500000000000000020000000a000000dfdf65045fac31445a63f753e7bceb5e"
               "563ca82cfced7ff19563"},
        Golden{Suite::kHmacSha256,
               "01050200010000000500000000000000020000000a00000068656c6c6f2c20736f64e350403cfed1"
               "99ec4f990776895e35e3364ddf7a931621cfdb88485205defe06"}));

TEST(TranscriptTest, KnownAnswersForChainAndSession) {
  SessionKeys k = TestKeys();
  auto t = TranscriptMac::Create(k.transcript_key(), 1, Direction::kInitiatorToResponder);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(ToHex(t->value()), "213a7e62686918c95533875f9d7af6fd02b73eb51798982484d25b61ef3eca4c");
  Bytes rec = FromHex(
      "01050100010000000500000000000000020000000a000000dfdf65045fac31445a63f753e7bceb5e563ca82cfce"
      "d7ff19563");
  ByteSpan all(rec);
  ASSERT_TRUE(t->Absorb(all.first(kRecordHeaderSize), all.last(16)).ok());
  EXPECT_EQ(ToHex(t->value()), "987b81f6b770c958ddf2d0ad34c0eb84fb9be9078d3a480ebef57183260fefc7");
  auto s = SessionTranscript(k.transcript_key(), {Summarize(*t)});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(ToHex(*s), "76d6f95192802f9c6d76402415680f6af2d8403bc6030b43a1c94437ce95876d");
}

TEST(TranscriptTest, SummaryBeforeLastEqualsTheSummaryTakenBeforeTheLastRecord) {
  SessionKeys k = TestKeys();
  auto t = TranscriptMac::Create(k.transcript_key(), 0, Direction::kInitiatorToResponder);
  ASSERT_TRUE(t.ok());
  Bytes h(kRecordHeaderSize, 1), tag(16, 2);
  ASSERT_TRUE(t->Absorb(h, tag).ok());
  ChainSummary before = Summarize(*t);
  h[0] = 9;
  ASSERT_TRUE(t->Absorb(h, tag).ok());
  ChainSummary excl = SummarizeBeforeLast(*t);
  EXPECT_EQ(excl.records, before.records);
  EXPECT_TRUE(TranscriptEqual(excl.value, before.value));
  EXPECT_FALSE(TranscriptEqual(Summarize(*t).value, before.value));
}

TEST(TranscriptTest, SessionTranscriptIsOrderIndependentAndRefusesDuplicates) {
  SessionKeys k = TestKeys();
  ChainSummary a{1, Direction::kInitiatorToResponder, 3, {}};
  ChainSummary b{2, Direction::kInitiatorToResponder, 4, {}};
  b.value.fill(7);
  auto s1 = SessionTranscript(k.transcript_key(), {a, b});
  auto s2 = SessionTranscript(k.transcript_key(), {b, a});
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_TRUE(TranscriptEqual(*s1, *s2));
  ChainSummary b_fewer = b;
  b_fewer.records = 3;
  auto s3 = SessionTranscript(k.transcript_key(), {a, b_fewer});
  ASSERT_TRUE(s3.ok());
  EXPECT_FALSE(TranscriptEqual(*s1, *s3)) << "the record count is part of the transcript";
  EXPECT_EQ(SessionTranscript(k.transcript_key(), {a, a}).status().code(), Errc::kInvalidArgument);
}

TEST(RecordProtectionTest, IntegrityOnlySuiteLeavesPayloadInClearAeadDoesNot) {
  SessionKeys k = TestKeys();
  auto ck = k.ForChannel(1, Direction::kInitiatorToResponder);
  ASSERT_TRUE(ck.ok());
  Bytes plain(1000, 0x5a);
  Bytes header(kRecordHeaderSize, 0);
  for (Suite s : {Suite::kAes256Gcm, Suite::kHmacSha256}) {
    auto p = MakeRecordProtector(s, *ck);
    ASSERT_TRUE(p.ok());
    Bytes out(plain.size()), tag((*p)->tag_size());
    const ByteSpan parts[] = {ByteSpan(plain)};
    ASSERT_TRUE((*p)->Seal(0, header, parts, out, tag).ok());
    EXPECT_EQ(out == plain, s == Suite::kHmacSha256) << SuiteName(s);
    ASSERT_TRUE((*p)->Open(0, header, out, tag).ok());
    EXPECT_EQ(out, plain);
    EXPECT_EQ((*p)->Open(1, header, out, tag).code(),
              s == Suite::kAes256Gcm ? Errc::kIntegrity : Errc::kOk)
        << "GCM binds the sequence through the nonce; HMAC binds it through the header";
  }
  EXPECT_EQ(MakeRecordProtector(Suite::kInvalid, *ck).status().code(), Errc::kUnsupported);
}

}  // namespace
}  // namespace sod
