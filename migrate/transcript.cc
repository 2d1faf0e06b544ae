#include "migrate/transcript.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include <algorithm>
#include <utility>

namespace sod {

namespace {

// A keyed HMAC-SHA256 context.
Result<EVP_MAC_CTX*> NewHmac(ByteSpan key) {
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (!mac) return Error(Errc::kCrypto, "HMAC is not available in this OpenSSL");
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  EVP_MAC_free(mac);  // the context keeps its own reference
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  if (!ctx || EVP_MAC_init(ctx, key.data(), key.size(), params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return Error(Errc::kCrypto, "HMAC-SHA256 key setup failed");
  }
  return ctx;
}

Status MacParts(EVP_MAC_CTX* ctx, std::initializer_list<ByteSpan> parts, TranscriptValue& out) {
  if (EVP_MAC_init(ctx, nullptr, 0, nullptr) != 1) return Error(Errc::kCrypto, "HMAC reset failed");
  for (ByteSpan p : parts)
    if (EVP_MAC_update(ctx, p.data(), p.size()) != 1)
      return Error(Errc::kCrypto, "HMAC update failed");
  size_t len = 0;
  if (EVP_MAC_final(ctx, out.data(), &len, out.size()) != 1 || len != out.size())
    return Error(Errc::kCrypto, "HMAC final failed");
  return Status::Ok();
}

ByteSpan Str(std::string_view s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

Result<TranscriptMac> TranscriptMac::Create(ByteSpan transcript_key, uint32_t channel,
                                            Direction dir) {
  TranscriptMac t;
  SOD_ASSIGN_OR_RETURN(t.ctx_, NewHmac(transcript_key));
  t.channel_ = channel;
  t.dir_ = dir;
  uint8_t id[5];
  StoreLe32(id, channel);
  id[4] = static_cast<uint8_t>(dir);
  SOD_RETURN_IF_ERROR(MacParts(t.ctx_, {Str("sod/1 chain"), ByteSpan(id)}, t.value_));
  t.previous_ = t.value_;
  return t;
}

TranscriptMac::~TranscriptMac() {
  EVP_MAC_CTX_free(ctx_);
  OPENSSL_cleanse(value_.data(), value_.size());
  OPENSSL_cleanse(previous_.data(), previous_.size());
}

TranscriptMac::TranscriptMac(TranscriptMac&& o) noexcept
    : ctx_(std::exchange(o.ctx_, nullptr)),
      channel_(o.channel_),
      dir_(o.dir_),
      records_(o.records_),
      value_(o.value_),
      previous_(o.previous_) {}

TranscriptMac& TranscriptMac::operator=(TranscriptMac&& o) noexcept {
  if (this != &o) {
    EVP_MAC_CTX_free(ctx_);
    ctx_ = std::exchange(o.ctx_, nullptr);
    channel_ = o.channel_;
    dir_ = o.dir_;
    records_ = o.records_;
    value_ = o.value_;
    previous_ = o.previous_;
  }
  return *this;
}

Status TranscriptMac::Absorb(ByteSpan header, ByteSpan tag) {
  if (!ctx_) return Error(Errc::kInternal, "transcript used after move");
  previous_ = value_;
  SOD_RETURN_IF_ERROR(MacParts(ctx_, {ByteSpan(previous_), header, tag}, value_));
  ++records_;
  return Status::Ok();
}

ChainSummary Summarize(const TranscriptMac& t) {
  return ChainSummary{t.channel(), t.direction(), t.records(), t.value()};
}

ChainSummary SummarizeBeforeLast(const TranscriptMac& t) {
  return ChainSummary{t.channel(), t.direction(), t.records() ? t.records() - 1 : 0,
                      t.previous_value()};
}

Result<TranscriptValue> SessionTranscript(ByteSpan transcript_key,
                                          std::vector<ChainSummary> chains) {
  auto key_of = [](const ChainSummary& c) { return std::pair(c.channel, c.direction); };
  std::sort(chains.begin(), chains.end(),
            [&](const ChainSummary& a, const ChainSummary& b) { return key_of(a) < key_of(b); });
  for (size_t i = 1; i < chains.size(); ++i)
    if (key_of(chains[i]) == key_of(chains[i - 1]))
      return Error(Errc::kInvalidArgument, "session transcript: a chain is listed twice");
  Bytes msg;
  ByteWriter w(msg);
  w.Raw(std::string_view("sod/1 session"));
  w.U32(static_cast<uint32_t>(chains.size()));
  for (const ChainSummary& c : chains) {
    w.U32(c.channel);
    w.U8(static_cast<uint8_t>(c.direction));
    w.U64(c.records);
    w.Raw(c.value);
  }
  SOD_ASSIGN_OR_RETURN(EVP_MAC_CTX * ctx, NewHmac(transcript_key));
  TranscriptValue out;
  Status s = MacParts(ctx, {ByteSpan(msg)}, out);
  EVP_MAC_CTX_free(ctx);
  SOD_RETURN_IF_ERROR(s);
  return out;
}

bool TranscriptEqual(const TranscriptValue& a, const TranscriptValue& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace sod
