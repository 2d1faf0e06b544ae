#include "migrate/channel_join.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>
#include <string>

#include "base/random.h"

namespace sod {

namespace {

constexpr char kHelloMagic[4] = {'S', 'O', 'D', 'D'};
constexpr char kChallengeMagic[4] = {'S', 'O', 'D', 'A'};
constexpr char kProofMagic[4] = {'S', 'O', 'D', 'P'};

void WritePreamble(ByteWriter& w, const char magic[4]) {
  w.Raw(std::string_view(magic, 4));
  w.U8(kJoinVersion);
  w.U8(0);
  w.U16(0);
}

Status ReadPreamble(ByteReader& r, const char magic[4], const char* what, size_t size,
                    ByteSpan in) {
  if (in.size() != size)
    return Error(Errc::kMalformed, std::string(what) + ": " + std::to_string(in.size()) +
                                       " bytes, expected " + std::to_string(size));
  uint8_t m[4];
  uint8_t version = 0, r8 = 0;
  uint16_t r16 = 0;
  if (!r.Raw(m, 4) || !r.U8(version) || !r.U8(r8) || !r.U16(r16))
    return Error(Errc::kMalformed, std::string(what) + ": truncated");
  if (std::memcmp(m, magic, 4) != 0)
    return Error(Errc::kMalformed, std::string(what) + ": bad magic");
  if (version != kJoinVersion)
    return Error(Errc::kUnsupported,
                 std::string(what) + ": version " + std::to_string(version) + " (supported: 1)");
  if (r8 != 0 || r16 != 0) return Error(Errc::kMalformed, std::string(what) + ": reserved != 0");
  return Status::Ok();
}

Status RandomNonce(JoinNonce& n) { return RandomFill(n); }

}  // namespace

Bytes EncodeChannelHello(const ChannelHello& m) {
  Bytes out;
  ByteWriter w(out);
  WritePreamble(w, kHelloMagic);
  w.Raw(m.session_id);
  w.U32(m.channel);
  w.U32(0);
  w.Raw(m.nonce);
  return out;
}

Result<ChannelHello> DecodeChannelHello(ByteSpan in) {
  ByteReader r(in);
  SOD_RETURN_IF_ERROR(ReadPreamble(r, kHelloMagic, "channel hello", kChannelHelloSize, in));
  ChannelHello m;
  uint32_t reserved = 0;
  if (!r.Raw(m.session_id.data(), m.session_id.size()) || !r.U32(m.channel) || !r.U32(reserved) ||
      !r.Raw(m.nonce.data(), m.nonce.size()) || !r.done())
    return Error(Errc::kMalformed, "channel hello: truncated");
  if (reserved != 0) return Error(Errc::kMalformed, "channel hello: reserved != 0");
  if (m.channel == 0)
    return Error(Errc::kMalformed, "channel hello: channel 0 is the control channel");
  return m;
}

Bytes EncodeChannelChallenge(const ChannelChallenge& m) {
  Bytes out;
  ByteWriter w(out);
  WritePreamble(w, kChallengeMagic);
  w.Raw(m.nonce);
  w.Raw(m.proof);
  return out;
}

Result<ChannelChallenge> DecodeChannelChallenge(ByteSpan in) {
  ByteReader r(in);
  SOD_RETURN_IF_ERROR(
      ReadPreamble(r, kChallengeMagic, "channel challenge", kChannelChallengeSize, in));
  ChannelChallenge m;
  if (!r.Raw(m.nonce.data(), m.nonce.size()) || !r.Raw(m.proof.data(), m.proof.size()) || !r.done())
    return Error(Errc::kMalformed, "channel challenge: truncated");
  return m;
}

Bytes EncodeChannelProof(const ChannelProof& m) {
  Bytes out;
  ByteWriter w(out);
  WritePreamble(w, kProofMagic);
  w.Raw(m.proof);
  return out;
}

Result<ChannelProof> DecodeChannelProof(ByteSpan in) {
  ByteReader r(in);
  SOD_RETURN_IF_ERROR(ReadPreamble(r, kProofMagic, "channel proof", kChannelProofSize, in));
  ChannelProof m;
  if (!r.Raw(m.proof.data(), m.proof.size()) || !r.done())
    return Error(Errc::kMalformed, "channel proof: truncated");
  return m;
}

Result<TranscriptValue> ComputeJoinProof(ByteSpan join_key, JoinRole role,
                                         const SessionId& session_id, uint32_t channel,
                                         const JoinNonce& nonce_i, const JoinNonce& nonce_r) {
  Bytes msg;
  ByteWriter w(msg);
  w.Raw(std::string_view(role == JoinRole::kInitiator ? "sod/1 join initiator"
                                                      : "sod/1 join responder"));
  w.Raw(session_id);
  w.U32(channel);
  w.Raw(nonce_i);
  w.Raw(nonce_r);
  TranscriptValue out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), join_key.data(), static_cast<int>(join_key.size()), msg.data(),
            msg.size(), out.data(), &len) ||
      len != out.size())
    return Error(Errc::kCrypto, "join proof HMAC failed");
  return out;
}

Status JoinDataChannel(ByteStream& stream, const SessionKeys& keys, uint32_t channel) {
  ChannelHello hello{keys.session_id(), channel, {}};
  SOD_RETURN_IF_ERROR(RandomNonce(hello.nonce));
  SOD_RETURN_IF_ERROR(stream.WriteAll(EncodeChannelHello(hello)));
  uint8_t buf[kChannelChallengeSize];
  Status s = ReadExact(stream, buf);
  if (s.code() == Errc::kClosed || s.code() == Errc::kTruncated)
    return Error(Errc::kAuth, "data channel " + std::to_string(channel) +
                                  " refused: the responder closed the connection");
  SOD_RETURN_IF_ERROR(s);
  SOD_ASSIGN_OR_RETURN(ChannelChallenge ch, DecodeChannelChallenge(buf));
  SOD_ASSIGN_OR_RETURN(TranscriptValue expect,
                       ComputeJoinProof(keys.join_key(), JoinRole::kResponder, hello.session_id,
                                        channel, hello.nonce, ch.nonce));
  if (!TranscriptEqual(expect, ch.proof))
    return Error(Errc::kAuth, "data channel " + std::to_string(channel) +
                                  ": the responder's join proof is wrong (not our session)");
  ChannelProof proof;
  SOD_ASSIGN_OR_RETURN(proof.proof,
                       ComputeJoinProof(keys.join_key(), JoinRole::kInitiator, hello.session_id,
                                        channel, hello.nonce, ch.nonce));
  return stream.WriteAll(EncodeChannelProof(proof));
}

Result<ChannelHello> ReadChannelHello(ByteStream& stream) {
  uint8_t buf[kChannelHelloSize];
  SOD_RETURN_IF_ERROR(ReadExact(stream, buf));
  return DecodeChannelHello(buf);
}

Status AcceptDataChannel(ByteStream& stream, const SessionKeys& keys, const ChannelHello& hello) {
  if (CRYPTO_memcmp(hello.session_id.data(), keys.session_id().data(), kSessionIdSize) != 0)
    return Error(Errc::kAuth, "channel hello names another session");
  ChannelChallenge ch;
  SOD_RETURN_IF_ERROR(RandomNonce(ch.nonce));
  SOD_ASSIGN_OR_RETURN(ch.proof,
                       ComputeJoinProof(keys.join_key(), JoinRole::kResponder, hello.session_id,
                                        hello.channel, hello.nonce, ch.nonce));
  SOD_RETURN_IF_ERROR(stream.WriteAll(EncodeChannelChallenge(ch)));
  uint8_t buf[kChannelProofSize];
  SOD_RETURN_IF_ERROR(ReadExact(stream, buf));
  SOD_ASSIGN_OR_RETURN(ChannelProof proof, DecodeChannelProof(buf));
  SOD_ASSIGN_OR_RETURN(TranscriptValue expect,
                       ComputeJoinProof(keys.join_key(), JoinRole::kInitiator, hello.session_id,
                                        hello.channel, hello.nonce, ch.nonce));
  if (!TranscriptEqual(expect, proof.proof))
    return Error(Errc::kAuth, "data channel " + std::to_string(hello.channel) +
                                  ": the initiator's join proof is wrong");
  return Status::Ok();
}

}  // namespace sod
