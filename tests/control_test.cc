// Control messages: golden bytes, round trips, hostile input, and version/suite negotiation.
#include "migrate/control.h"

#include <gtest/gtest.h>

namespace sod {
namespace {

TEST(ControlTest, HelloGoldenAndRoundTrip) {
  HelloMsg h;
  h.suites = {Suite::kAes256Gcm, Suite::kHmacSha256};
  h.data_channels = 2;
  h.host_id = "hosta";
  Bytes b = EncodeControl(h);
  EXPECT_EQ(ToHex(b),
            "0100"
            "0100"
            "0100"
            "02"
            "0102"
            "0200"
            "0500"
            "686f737461");
  auto d = DecodeControl(b);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(std::get<HelloMsg>(*d), h);
  EXPECT_EQ(ControlName(*d), "hello");
}

TEST(ControlTest, HelloAckGoldenAndRoundTrip) {
  HelloAckMsg a{1, Suite::kHmacSha256, 4};
  Bytes b = EncodeControl(a);
  EXPECT_EQ(ToHex(b),
            "0200"
            "0100"
            "02"
            "00"
            "0400");
  auto d = DecodeControl(b);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(std::get<HelloAckMsg>(*d), a);
}

TEST(ControlTest, RefusesHostileInput) {
  HelloMsg h;
  h.suites = {Suite::kAes256Gcm};
  h.host_id = "hosta";
  const Bytes good = EncodeControl(h);
  auto code = [](Bytes b) { return DecodeControl(b).status().code(); };
  EXPECT_EQ(code({}), Errc::kMalformed);
  EXPECT_EQ(code({0x7f, 0x00}), Errc::kUnsupported) << "unknown type";
  EXPECT_EQ(code({0x00, 0x00}), Errc::kUnsupported) << "Invalid type";
  Bytes b = good;
  b.push_back(0);
  EXPECT_EQ(code(b), Errc::kMalformed) << "trailing byte";
  b = good;
  b[6] = 0;  // zero suites
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = good;
  b[6] = 200;  // suite count far beyond the bytes present
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = good;
  b[2] = 5;  // version_min 5 > version_max 1
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = good;
  StoreLe16(b.data() + 8, kMaxDataChannels + 1);
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = good;
  b.back() = 'A';  // upper case is not a host id
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = good;
  StoreLe16(b.data() + 10, 60000);  // host id length beyond the message
  EXPECT_EQ(code(b), Errc::kMalformed);
  Bytes ack = EncodeControl(HelloAckMsg{1, Suite::kAes256Gcm, 1});
  ack[4] = 7;
  EXPECT_EQ(code(ack), Errc::kUnsupported) << "unknown suite in ack";
  EXPECT_EQ(code(Bytes(MaxPayload(RecordType::kControl) + 1, 1)), Errc::kTooLarge);
}

TEST(ControlTest, NegotiationPicksCommonVersionAndPreferredSuite) {
  HelloMsg h;
  h.version_min = 1;
  h.version_max = 9;
  h.suites = {Suite::kHmacSha256, Suite::kAes256Gcm, static_cast<Suite>(77)};
  h.data_channels = 12;
  h.host_id = "a";
  auto ack = NegotiateHello(h, {Suite::kAes256Gcm, Suite::kHmacSha256}, 4);
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->version, 1);
  EXPECT_EQ(ack->suite, Suite::kHmacSha256) << "the initiator's preference wins";
  EXPECT_EQ(ack->data_channels, 4);
  auto only_aead = NegotiateHello(h, {Suite::kAes256Gcm}, 4);
  ASSERT_TRUE(only_aead.ok());
  EXPECT_EQ(only_aead->suite, Suite::kAes256Gcm);
  h.suites = {Suite::kHmacSha256};
  EXPECT_EQ(NegotiateHello(h, {Suite::kAes256Gcm}, 4).status().code(), Errc::kUnsupported);
  h.suites = {Suite::kAes256Gcm};
  h.version_min = h.version_max = 2;
  auto v = NegotiateHello(h, {Suite::kAes256Gcm}, 4);
  EXPECT_EQ(v.status().code(), Errc::kUnsupported);
  EXPECT_NE(v.status().message().find("2..2"), std::string::npos) << v.status().ToString();
}

ControlMsg SampleOf(ControlType t) {
  MigrationId id;
  for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(i + 1);
  switch (t) {
    case ControlType::kHello:
      return HelloMsg{1, 1, {Suite::kAes256Gcm}, 2, "hosta"};
    case ControlType::kHelloAck:
      return HelloAckMsg{1, Suite::kAes256Gcm, 2};
    case ControlType::kOffer:
      return OfferMsg{id, "vm1", R"({"name":"vm1"})", 512u << 20, true, 7};
    case ControlType::kPrepared:
      return PreparedMsg{};
    case ControlType::kSwitchoverCheck:
      return SwitchoverCheckMsg{123456, Bytes(kAttestNonceSize, 0x5a)};
    case ControlType::kSwitchoverOk:
      return SwitchoverOkMsg{Bytes{1, 2, 3}};
    case ControlType::kCommitAck:
      return CommitAckMsg{1700000000000, Bytes(70, 0x30)};
    case ControlType::kQueryOutcome:
      return QueryOutcomeMsg{id};
    case ControlType::kOutcome:
      return OutcomeMsg{id, MigrationOutcome::kCommitted, true};
    case ControlType::kAttestChallenge: {
      AttestChallengeMsg c;
      c.nonce.fill(0x42);
      return c;
    }
    case ControlType::kEvidence:
      return EvidenceMsg{Bytes(100, 0x17)};
    case ControlType::kAttestOk:
      return AttestOkMsg{};
    case ControlType::kVtpmKey: {
      VtpmKeyMsg k;
      k.vtpm_epoch = 3;
      k.migration_key.fill(0x6b);
      return k;
    }
    case ControlType::kInvalid:
      break;
  }
  return SwitchoverOkMsg{};
}

class ControlRoundTripTest : public ::testing::TestWithParam<uint16_t> {};

TEST_P(ControlRoundTripTest, EveryMessageRoundTripsAndRefusesTruncationAndTrailingBytes) {
  const auto type = static_cast<ControlType>(GetParam());
  ControlMsg m = SampleOf(type);
  Bytes b = EncodeControl(m);
  EXPECT_EQ(LoadLe16(b.data()), GetParam());
  auto d = DecodeControl(b);
  ASSERT_TRUE(d.ok()) << ControlTypeName(type) << ": " << d.status().ToString();
  EXPECT_EQ(*d, m);
  EXPECT_EQ(ControlName(*d), ControlTypeName(type));
  for (size_t cut = 2; cut < b.size(); ++cut)
    EXPECT_FALSE(DecodeControl(ByteSpan(b).first(cut)).ok())
        << ControlTypeName(type) << " truncated to " << cut << " bytes was accepted";
  b.push_back(0);
  EXPECT_EQ(DecodeControl(b).status().code(), Errc::kMalformed) << "trailing byte";
}

INSTANTIATE_TEST_SUITE_P(AllTypes, ControlRoundTripTest, ::testing::Range<uint16_t>(1, 14));

TEST(ControlTest, MigrationMessagesGolden) {
  MigrationId id{};
  id[0] = 0xaa;
  EXPECT_EQ(ToHex(EncodeControl(OfferMsg{id, "v", "{}", 0x100, true, 2})),
            "0300" "aa000000000000000000000000000000" "0100" "76" "02000000" "7b7d"
            "0001000000000000" "01" "0200000000000000");
  EXPECT_EQ(ToHex(EncodeControl(OutcomeMsg{id, MigrationOutcome::kAborted, false})),
            "0900" "aa000000000000000000000000000000" "02" "00");
  EXPECT_EQ(ToHex(EncodeControl(CommitAckMsg{1, {9, 8}})), "0700" "0100000000000000" "0200" "0908");
  EXPECT_EQ(ToHex(EncodeControl(SwitchoverOkMsg{})), "0600" "00000000");
  EXPECT_EQ(ToHex(EncodeControl(SwitchoverOkMsg{{0xee}})), "0600" "01000000" "ee");
  EXPECT_EQ(ToHex(EncodeControl(SwitchoverCheckMsg{0x10, {}})), "0500" "1000000000000000" "00");
  EXPECT_EQ(ToHex(EncodeControl(EvidenceMsg{{1, 2}})), "0b00" "02000000" "0102");
  EXPECT_EQ(ToHex(EncodeControl(AttestOkMsg{})), "0c00");
  EXPECT_EQ(ToHex(EncodeControl(PreparedMsg{})), "0400");
  VtpmKeyMsg k;
  k.vtpm_epoch = 0x0102;
  k.migration_key.fill(0xc3);
  std::string key_hex;
  for (int i = 0; i < 32; ++i) key_hex += "c3";
  EXPECT_EQ(ToHex(EncodeControl(k)), "0d00" "0201000000000000" + key_hex);
}

TEST(ControlTest, VtpmKeyRefusesEpochZero) {
  VtpmKeyMsg k;  // epoch 0: names no vTPM
  EXPECT_EQ(DecodeControl(EncodeControl(k)).status().code(), Errc::kMalformed);
}

TEST(ControlTest, MigrationMessagesRefuseBadFields) {
  auto code = [](Bytes b) { return DecodeControl(b).status().code(); };
  MigrationId id{};
  Bytes offer = EncodeControl(OfferMsg{id, "v", "{}", 1, false, 0});
  Bytes b = offer;
  b[b.size() - 9] = 2;  // verify_ram flag must be 0 or 1
  EXPECT_EQ(code(b), Errc::kMalformed);
  b = offer;
  StoreLe32(b.data() + 2 + 16 + 3, kMaxVmSpecJson + 1);  // spec length above the maximum
  EXPECT_EQ(code(b), Errc::kMalformed);
  Bytes empty_name = EncodeControl(OfferMsg{id, "", "{}", 1, false, 0});
  EXPECT_EQ(code(empty_name), Errc::kMalformed);
  Bytes outcome = EncodeControl(OutcomeMsg{id, MigrationOutcome::kCommitted, true});
  b = outcome;
  b[18] = 3;  // unknown outcome
  EXPECT_EQ(code(b), Errc::kUnsupported);
  b = outcome;
  b[19] = 2;  // vm_running must be 0 or 1
  EXPECT_EQ(code(b), Errc::kMalformed);
  Bytes ack = EncodeControl(CommitAckMsg{1, Bytes(kMaxSignature + 1, 1)});
  EXPECT_EQ(code(ack), Errc::kMalformed) << "signature above the maximum";
}

TEST(ControlTest, AttestationMessagesRefuseBadFields) {
  auto code = [](Bytes b) { return DecodeControl(b).status().code(); };
  EXPECT_EQ(code(EncodeControl(EvidenceMsg{})), Errc::kMalformed) << "empty evidence";
  EXPECT_EQ(code(EncodeControl(EvidenceMsg{Bytes(kMaxEvidence + 1, 1)})), Errc::kMalformed);
  EXPECT_TRUE(DecodeControl(EncodeControl(EvidenceMsg{Bytes(kMaxEvidence, 1)})).ok());
  EXPECT_EQ(code(EncodeControl(SwitchoverOkMsg{Bytes(kMaxEvidence + 1, 1)})), Errc::kMalformed);
  Bytes check = EncodeControl(SwitchoverCheckMsg{1, Bytes(kAttestNonceSize, 7)});
  check[10] = 16;  // a nonce is empty or kAttestNonceSize bytes
  EXPECT_EQ(code(check), Errc::kMalformed);
}

}  // namespace
}  // namespace sod
