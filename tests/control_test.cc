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
  EXPECT_EQ(code({0x09, 0x00}), Errc::kUnsupported) << "unknown type";
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

}  // namespace
}  // namespace sod
