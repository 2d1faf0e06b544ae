// Data-channel join: golden bytes of the three messages, decoders refusing garbage, and the
// handshake between two real endpoints (socketpair) refusing foreign sessions and bad proofs.
#include "migrate/channel_join.h"

#include <gtest/gtest.h>

#include <numeric>
#include <thread>

#include "fake_transport.h"

namespace sod {
namespace {

SessionKeys KeysFrom(uint8_t seed) {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), seed);
  return std::move(SessionKeys::Create(secret)).value();
}

TEST(ChannelJoinWireTest, GoldenBytesAndRoundTrip) {
  ChannelHello h;
  std::iota(h.session_id.begin(), h.session_id.end(), 1);
  h.channel = 3;
  h.nonce.fill(0xee);
  Bytes b = EncodeChannelHello(h);
  ASSERT_EQ(b.size(), kChannelHelloSize);
  EXPECT_EQ(ToHex(ByteSpan(b).first(8)), "534f444401000000");
  EXPECT_EQ(b[0], kChannelHelloFirstByte);
  EXPECT_EQ(ToHex(ByteSpan(b).subspan(8, 16)), "0102030405060708090a0b0c0d0e0f10");
  EXPECT_EQ(ToHex(ByteSpan(b).subspan(24, 8)), "0300000000000000");
  auto d = DecodeChannelHello(b);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, h);

  ChannelChallenge c;
  c.nonce.fill(1);
  c.proof.fill(2);
  Bytes cb = EncodeChannelChallenge(c);
  ASSERT_EQ(cb.size(), kChannelChallengeSize);
  EXPECT_EQ(ToHex(ByteSpan(cb).first(8)), "534f444101000000");
  EXPECT_EQ(*DecodeChannelChallenge(cb), c);

  ChannelProof p;
  p.proof.fill(3);
  Bytes pb = EncodeChannelProof(p);
  ASSERT_EQ(pb.size(), kChannelProofSize);
  EXPECT_EQ(ToHex(ByteSpan(pb).first(8)), "534f445001000000");
  EXPECT_EQ(*DecodeChannelProof(pb), p);
}

TEST(ChannelJoinWireTest, DecodersRefuseGarbage) {
  ChannelHello h;
  h.channel = 1;
  Bytes good = EncodeChannelHello(h);
  Bytes b = good;
  b[0] = 0x16;  // a TLS handshake byte
  EXPECT_EQ(DecodeChannelHello(b).status().code(), Errc::kMalformed);
  b = good;
  b[4] = 2;
  EXPECT_EQ(DecodeChannelHello(b).status().code(), Errc::kUnsupported);
  b = good;
  b[6] = 1;
  EXPECT_EQ(DecodeChannelHello(b).status().code(), Errc::kMalformed);
  b = good;
  b[28] = 1;  // reserved after the channel
  EXPECT_EQ(DecodeChannelHello(b).status().code(), Errc::kMalformed);
  b = good;
  StoreLe32(b.data() + 24, 0);
  EXPECT_EQ(DecodeChannelHello(b).status().code(), Errc::kMalformed) << "channel 0";
  EXPECT_EQ(DecodeChannelHello(ByteSpan(good).first(63)).status().code(), Errc::kMalformed);
  EXPECT_EQ(DecodeChannelChallenge(good).status().code(), Errc::kMalformed) << "wrong size";
  Bytes proof = EncodeChannelProof({});
  proof[3] = 'A';  // a challenge magic on a proof
  EXPECT_EQ(DecodeChannelProof(proof).status().code(), Errc::kMalformed);
}

TEST(ChannelJoinWireTest, ProofsDependOnEveryInput) {
  SessionKeys k = KeysFrom(1);
  JoinNonce a{}, b{};
  b[0] = 1;
  auto base = ComputeJoinProof(k.join_key(), JoinRole::kInitiator, k.session_id(), 1, a, a);
  ASSERT_TRUE(base.ok());
  auto differs = [&](Result<TranscriptValue> v) { return v.ok() && !TranscriptEqual(*v, *base); };
  EXPECT_TRUE(
      differs(ComputeJoinProof(k.join_key(), JoinRole::kResponder, k.session_id(), 1, a, a)));
  EXPECT_TRUE(
      differs(ComputeJoinProof(k.join_key(), JoinRole::kInitiator, k.session_id(), 2, a, a)));
  EXPECT_TRUE(
      differs(ComputeJoinProof(k.join_key(), JoinRole::kInitiator, k.session_id(), 1, b, a)));
  EXPECT_TRUE(
      differs(ComputeJoinProof(k.join_key(), JoinRole::kInitiator, k.session_id(), 1, a, b)));
  SessionKeys other = KeysFrom(2);
  EXPECT_TRUE(
      differs(ComputeJoinProof(other.join_key(), JoinRole::kInitiator, k.session_id(), 1, a, a)));
}

// Runs the initiator in a thread against a responder using `responder_keys`.
std::pair<Status, Status> RunJoin(const SessionKeys& initiator_keys,
                                  const SessionKeys& responder_keys, uint32_t channel) {
  auto [a, b] = testing::StreamPair();
  Status init_status;
  std::thread t([&, s = a.get()] {
    init_status = JoinDataChannel(*s, initiator_keys, channel);
    if (!init_status.ok()) (void)s->CloseWrite();
  });
  Status resp_status;
  auto hello = ReadChannelHello(*b);
  if (!hello.ok()) {
    resp_status = hello.status();
  } else {
    EXPECT_EQ(hello->channel, channel);
    resp_status = AcceptDataChannel(*b, responder_keys, *hello);
  }
  if (!resp_status.ok()) b.reset();  // the responder closes the connection on any failure
  t.join();
  return {init_status, resp_status};
}

TEST(ChannelJoinTest, SameSessionJoins) {
  SessionKeys k = KeysFrom(1);
  auto [i, r] = RunJoin(k, k, 2);
  EXPECT_TRUE(i.ok()) << i.ToString();
  EXPECT_TRUE(r.ok()) << r.ToString();
}

TEST(ChannelJoinTest, ForeignSessionIsRefusedOnBothSides) {
  SessionKeys k = KeysFrom(1);
  SessionKeys other = KeysFrom(2);
  auto [i, r] = RunJoin(other, k, 1);
  EXPECT_EQ(r.code(), Errc::kAuth) << r.ToString();
  EXPECT_EQ(i.code(), Errc::kAuth) << i.ToString();
}

TEST(ChannelJoinTest, ResponderWithWrongKeysIsRefusedByInitiator) {
  // Same session id (an attacker can copy it off the wire) but no knowledge of the join key.
  SessionKeys k = KeysFrom(1);
  auto [a, b] = testing::StreamPair();
  Status init_status;
  std::thread t([&, s = a.get()] { init_status = JoinDataChannel(*s, k, 1); });
  auto hello = ReadChannelHello(*b);
  ASSERT_TRUE(hello.ok());
  ChannelChallenge forged;
  forged.nonce.fill(9);
  forged.proof.fill(9);
  ASSERT_TRUE(b->WriteAll(EncodeChannelChallenge(forged)).ok());
  t.join();
  EXPECT_EQ(init_status.code(), Errc::kAuth) << init_status.ToString();
  EXPECT_NE(init_status.message().find("join proof is wrong"), std::string::npos);
}

TEST(ChannelJoinTest, ReplayedProofIsRefused) {
  // Record a good join's proof, then replay it against a fresh challenge.
  SessionKeys k = KeysFrom(1);
  ChannelHello hello{k.session_id(), 1, {}};
  hello.nonce.fill(4);
  JoinNonce old_r{};
  old_r.fill(5);
  auto old_proof =
      ComputeJoinProof(k.join_key(), JoinRole::kInitiator, k.session_id(), 1, hello.nonce, old_r);
  ASSERT_TRUE(old_proof.ok());
  auto [a, b] = testing::StreamPair();
  std::thread attacker([&, s = a.get()] {
    uint8_t buf[kChannelChallengeSize];
    ASSERT_TRUE(ReadExact(*s, buf).ok());
    (void)s->WriteAll(EncodeChannelProof(ChannelProof{*old_proof}));
  });
  Status r = AcceptDataChannel(*b, k, hello);
  attacker.join();
  EXPECT_EQ(r.code(), Errc::kAuth) << r.ToString();
}

}  // namespace
}  // namespace sod
