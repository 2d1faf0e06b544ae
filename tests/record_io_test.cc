// The record path under attack: every tamper (bit flips in header/payload/tag, drop, reorder,
// replay, duplicate, truncate, foreign session, foreign channel, suite downgrade) must be refused
// by the reader with a clear error, no record after the tampered one may be delivered, and the
// reader must stay failed. Parameterized over both suites.
#include "migrate/record_io.h"

#include <gtest/gtest.h>

#include <numeric>

#include "fake_transport.h"

namespace sod {
namespace {

using testing::CaptureSendQueue;
using testing::Join;
using testing::MemoryStream;

SessionKeys KeysFrom(uint8_t seed) {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), seed);
  return std::move(SessionKeys::Create(secret)).value();
}

struct ReadOutcome {
  std::vector<Bytes> payloads;  // delivered payloads, in order (channel end excluded)
  Status status;                // how reading stopped; OK means a clean end
  TranscriptValue transcript{};
  uint64_t records = 0;
};

class RecordIoTest : public ::testing::TestWithParam<Suite> {
 protected:
  RecordParams Params(uint32_t channel = 1) const {
    return RecordParams{GetParam(), channel, Direction::kInitiatorToResponder};
  }

  // Writes `n` stream chunks of different sizes, then the channel end. Each commit is one record.
  std::vector<Bytes> WriteRecords(const SessionKeys& keys, int n, uint32_t channel = 1) {
    CaptureSendQueue q;
    auto w = RecordWriter::Create(q, Params(channel), keys);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    uint64_t offset = 0;
    for (int i = 0; i < n; ++i) {
      Bytes data(100 + 37 * i, static_cast<uint8_t>(i));
      EXPECT_TRUE(
          (*w)->WriteChunk(RecordType::kStream, static_cast<uint32_t>(i / 2), 0, offset, data)
              .ok());
      offset += data.size();
    }
    EXPECT_TRUE((*w)->Finish().ok());
    writer_transcript_ = (*w)->transcript().value();
    return q.commits;
  }

  ReadOutcome ReadAll(Bytes wire, const SessionKeys& keys, size_t piece = SIZE_MAX,
                      uint32_t channel = 1) {
    MemoryStream in(std::move(wire), piece);
    auto r = RecordReader::Create(in, Params(channel), keys);
    EXPECT_TRUE(r.ok());
    ReadOutcome out;
    for (;;) {
      auto rec = (*r)->Next();
      if (!rec.ok()) {
        out.status = rec.status();
        break;
      }
      if (rec->header.type == RecordType::kChannelEnd) continue;
      auto chunk = DecodeChunk(rec->payload);
      EXPECT_TRUE(chunk.ok());
      out.payloads.emplace_back(chunk->data.begin(), chunk->data.end());
    }
    if (out.status.code() == Errc::kClosed && (*r)->ended()) out.status = Status::Ok();
    // A failed reader stays failed.
    if (!out.status.ok()) {
      auto again = (*r)->Next();
      EXPECT_FALSE(again.ok());
      EXPECT_EQ(again.status().code(), out.status.code());
    }
    out.transcript = (*r)->transcript().value();
    out.records = (*r)->records();
    return out;
  }

  void ExpectRefused(const ReadOutcome& o, Errc code, size_t delivered_before, const char* what) {
    EXPECT_FALSE(o.status.ok()) << what << ": tampering went unnoticed";
    EXPECT_EQ(o.status.code(), code) << what << ": " << o.status.ToString();
    EXPECT_EQ(o.payloads.size(), delivered_before)
        << what << ": only records before the tampered one may be delivered";
    EXPECT_NE(o.status.message().find("channel 1"), std::string::npos)
        << "the error names the channel: " << o.status.ToString();
  }

  TranscriptValue writer_transcript_{};
};

TEST_P(RecordIoTest, CleanStreamDeliversEverythingAndTranscriptsMatch) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 6);
  for (size_t piece : {SIZE_MAX, size_t{1}, size_t{7}, size_t{4096}}) {
    ReadOutcome o = ReadAll(Join(recs), k, piece);
    ASSERT_TRUE(o.status.ok()) << "piece " << piece << ": " << o.status.ToString();
    ASSERT_EQ(o.payloads.size(), 6u);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(o.payloads[i], Bytes(100 + 37 * i, uint8_t(i)));
    EXPECT_TRUE(TranscriptEqual(o.transcript, writer_transcript_));
    EXPECT_EQ(o.records, 7u);
  }
}

TEST_P(RecordIoTest, FlippedBitInEveryHeaderFieldIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  // byte offset in the header -> expected error
  const std::vector<std::pair<size_t, Errc>> cases = {
      {0, Errc::kUnsupported},  // revision
      {1, Errc::kIntegrity},    // type kStream(1) -> 0 is Invalid...
      {2, Errc::kUnsupported},  // suite
      {3, Errc::kMalformed},    // reserved
      {4, Errc::kSequence},     // channel
      {8, Errc::kSequence},     // sequence
      {16, Errc::kIntegrity},   // round: only the AEAD/HMAC over the header catches it
      {20, Errc::kIntegrity},   // length: payload/tag boundary moves
  };
  for (auto [at, code] : cases) {
    auto t = recs;
    t[2][at] ^= (at == 1) ? 0x02 : 0x01;  // type 1 -> 3 (device-state): a valid type
    ReadOutcome o = ReadAll(Join(t), k);
    std::string what = "header byte " + std::to_string(at);
    EXPECT_FALSE(o.status.ok()) << what;
    if (at != 20) {  // a length change may also surface as truncation; any refusal will do there
      EXPECT_EQ(o.status.code(), code) << what << ": " << o.status.ToString();
    }
    EXPECT_EQ(o.payloads.size(), 2u) << what;
  }
}

TEST_P(RecordIoTest, FlippedBitInPayloadOrTagIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  auto payload = recs;
  payload[1][kRecordHeaderSize + 20] ^= 0x80;
  ExpectRefused(ReadAll(Join(payload), k), Errc::kIntegrity, 1, "payload bit");
  auto tag = recs;
  tag[1].back() ^= 0x01;
  ExpectRefused(ReadAll(Join(tag), k), Errc::kIntegrity, 1, "tag bit");
  auto end = recs;
  end.back()[kRecordHeaderSize] ^= 0x01;  // the channel-end record's count
  ReadOutcome o = ReadAll(Join(end), k);
  EXPECT_EQ(o.status.code(), Errc::kIntegrity) << o.status.ToString();
}

TEST_P(RecordIoTest, DroppedRecordIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  recs.erase(recs.begin() + 2);
  ReadOutcome o = ReadAll(Join(recs), k);
  ExpectRefused(o, Errc::kSequence, 2, "drop");
  EXPECT_NE(o.status.message().find("dropped or reordered"), std::string::npos);
}

TEST_P(RecordIoTest, ReorderedRecordsAreRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  std::swap(recs[1], recs[2]);
  ExpectRefused(ReadAll(Join(recs), k), Errc::kSequence, 1, "reorder");
}

TEST_P(RecordIoTest, ReplayedAndDuplicatedRecordsAreRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  auto dup = recs;
  dup.insert(dup.begin() + 2, recs[1]);  // immediate duplicate
  ReadOutcome o = ReadAll(Join(dup), k);
  ExpectRefused(o, Errc::kSequence, 2, "duplicate");
  EXPECT_NE(o.status.message().find("replayed or duplicated"), std::string::npos);
  auto replay = recs;
  replay.insert(replay.begin() + 3, recs[0]);  // older record replayed later
  ExpectRefused(ReadAll(Join(replay), k), Errc::kSequence, 3, "replay");
}

TEST_P(RecordIoTest, TruncationIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4);
  auto no_end = recs;
  no_end.pop_back();  // every data record arrives, the channel end does not
  ReadOutcome o = ReadAll(Join(no_end), k);
  ExpectRefused(o, Errc::kTruncated, 4, "missing channel end");
  EXPECT_NE(o.status.message().find("without a channel-end"), std::string::npos);

  Bytes cut = Join(recs);
  cut.resize(recs[0].size() + recs[1].size() / 2);  // ends inside record 1
  ExpectRefused(ReadAll(cut, k), Errc::kTruncated, 1, "cut inside a record");
  Bytes cut_header = Join(recs);
  cut_header.resize(recs[0].size() + 10);  // ends inside record 1's header
  ExpectRefused(ReadAll(cut_header, k), Errc::kTruncated, 1, "cut inside a header");
}

TEST_P(RecordIoTest, RecordFromAnotherSessionIsRefused) {
  SessionKeys k = KeysFrom(1);
  SessionKeys other = KeysFrom(2);
  auto recs = WriteRecords(k, 4);
  auto foreign = WriteRecords(other, 4);
  auto mixed = recs;
  mixed[2] = foreign[2];  // same channel, same sequence, same type: only the keys differ
  ExpectRefused(ReadAll(Join(mixed), k), Errc::kIntegrity, 2, "foreign session");
}

TEST_P(RecordIoTest, RecordFromAnotherChannelIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 4, /*channel=*/1);
  auto ch2 = WriteRecords(k, 4, /*channel=*/2);
  auto mixed = recs;
  mixed[2] = ch2[2];
  ExpectRefused(ReadAll(Join(mixed), k), Errc::kSequence, 2, "foreign channel");
  // Even with the channel field rewritten the keys differ per channel.
  mixed[2][4] = 1;
  ExpectRefused(ReadAll(Join(mixed), k), Errc::kIntegrity, 2, "foreign channel, relabelled");
}

TEST_P(RecordIoTest, SuiteDowngradeIsRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 2);
  Suite other = GetParam() == Suite::kAes256Gcm ? Suite::kHmacSha256 : Suite::kAes256Gcm;
  recs[0][2] = static_cast<uint8_t>(other);
  ReadOutcome o = ReadAll(Join(recs), k);
  ExpectRefused(o, Errc::kUnsupported, 0, "suite switch");
}

TEST_P(RecordIoTest, BytesAfterChannelEndAreRefused) {
  SessionKeys k = KeysFrom(1);
  auto recs = WriteRecords(k, 2);
  recs.push_back(recs[0]);
  ReadOutcome o = ReadAll(Join(recs), k);
  EXPECT_EQ(o.status.code(), Errc::kMalformed) << o.status.ToString();
}

TEST_P(RecordIoTest, SequenceNeverWraps) {
  SessionKeys k = KeysFrom(1);
  CaptureSendQueue q;
  auto w = RecordWriter::Create(q, Params(), k);
  ASSERT_TRUE(w.ok());
  (*w)->SetNextSequenceForTesting(UINT64_MAX - 1);
  Bytes b(8, 1);
  ASSERT_TRUE((*w)->Write(RecordType::kControl, 0, b).ok()) << "the last usable sequence";
  Status s = (*w)->Write(RecordType::kControl, 0, b);
  EXPECT_EQ(s.code(), Errc::kExhausted) << s.ToString();
  EXPECT_EQ((*w)->Write(RecordType::kControl, 0, b).code(), Errc::kExhausted) << "stays failed";

  // The reader, after the last usable sequence, refuses whatever comes next.
  MemoryStream in(Join({q.commits[0], q.commits[0]}));
  auto r = RecordReader::Create(in, Params(), k);
  ASSERT_TRUE(r.ok());
  (*r)->SetNextSequenceForTesting(UINT64_MAX - 1);
  ASSERT_TRUE((*r)->Next().ok());
  auto next = (*r)->Next();
  EXPECT_EQ(next.status().code(), Errc::kExhausted) << next.status().ToString();
}

TEST_P(RecordIoTest, WriterRefusesOversizedPayloadAndWritesAfterFinish) {
  SessionKeys k = KeysFrom(1);
  CaptureSendQueue q;
  auto w = RecordWriter::Create(q, Params(), k);
  ASSERT_TRUE(w.ok());
  Bytes big(MaxPayload(RecordType::kControl) + 1);
  EXPECT_EQ((*w)->Write(RecordType::kControl, 0, big).code(), Errc::kInvalidArgument);
  EXPECT_EQ((*w)->Write(RecordType::kChannelEnd, 0, Bytes(8)).code(), Errc::kInvalidArgument);
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_EQ((*w)->Write(RecordType::kControl, 0, Bytes(1)).code(), Errc::kState);
  EXPECT_EQ(q.commits.size(), 1u) << "only the channel end was sent";
}

TEST_P(RecordIoTest, SendFailureEndsTheWriter) {
  SessionKeys k = KeysFrom(1);
  CaptureSendQueue q;
  q.FailCommits();
  auto w = RecordWriter::Create(q, Params(), k);
  ASSERT_TRUE(w.ok());
  Status s = (*w)->Write(RecordType::kControl, 0, Bytes(4));
  EXPECT_EQ(s.code(), Errc::kIo);
  EXPECT_NE(s.message().find("channel 1"), std::string::npos) << s.ToString();
  EXPECT_EQ((*w)->Write(RecordType::kControl, 0, Bytes(4)).code(), Errc::kIo);
}

TEST_P(RecordIoTest, LargestChunkRoundTrips) {
  SessionKeys k = KeysFrom(3);
  CaptureSendQueue q(MaxRecordSize());
  auto w = RecordWriter::Create(q, Params(), k);
  ASSERT_TRUE(w.ok());
  Bytes data(kMaxDataChunk);
  std::iota(data.begin(), data.end(), 0);
  ASSERT_TRUE((*w)->WriteChunk(RecordType::kStream, 0, 0, 0, data).ok());
  Bytes too_big(kMaxDataChunk + 1);
  EXPECT_EQ((*w)->WriteChunk(RecordType::kStream, 0, 0, 0, too_big).code(), Errc::kInvalidArgument);
  ASSERT_TRUE((*w)->Finish().ok());
  ReadOutcome o = ReadAll(Join(q.commits), k, 65536);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  ASSERT_EQ(o.payloads.size(), 1u);
  EXPECT_EQ(o.payloads[0], data);
}

INSTANTIATE_TEST_SUITE_P(BothSuites, RecordIoTest,
                         ::testing::Values(Suite::kAes256Gcm, Suite::kHmacSha256),
                         [](const auto& info) {
                           return info.param == Suite::kAes256Gcm ? std::string("Aead")
                                                                  : std::string("IntegrityOnly");
                         });

}  // namespace
}  // namespace sod
