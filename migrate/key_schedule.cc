#include "migrate/key_schedule.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <memory>

namespace sod {

namespace {
constexpr std::string_view kInfoPrefix = "sod/1 ";

struct KdfDeleter {
  void operator()(EVP_KDF* k) const { EVP_KDF_free(k); }
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};
}  // namespace

std::string_view DirectionName(Direction d) {
  return d == Direction::kInitiatorToResponder ? "initiator->responder" : "responder->initiator";
}

Status HkdfExpand(ByteSpan prk, std::string_view label, ByteSpan suffix, MutableByteSpan out) {
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return Error(Errc::kCrypto, "HKDF is not available in this OpenSSL");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return Error(Errc::kCrypto, "EVP_KDF_CTX_new failed");
  Bytes info;
  info.reserve(kInfoPrefix.size() + label.size() + suffix.size());
  ByteWriter w(info);
  w.Raw(kInfoPrefix);
  w.Raw(label);
  w.Raw(suffix);
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(prk.data()),
                                        prk.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1)
    return Error(Errc::kCrypto, "HKDF-Expand failed for label '" + std::string(label) + "'");
  return Status::Ok();
}

Result<SessionKeys> SessionKeys::Create(ByteSpan session_secret) {
  if (session_secret.size() != kSessionSecretSize)
    return Error(Errc::kInvalidArgument, "session secret must be 32 bytes");
  SessionKeys k;
  k.secret_ = SecretBytes(session_secret);
  SOD_RETURN_IF_ERROR(HkdfExpand(k.secret_.span(), "session id", {}, k.session_id_));
  k.transcript_key_ = SecretBytes(32);
  SOD_RETURN_IF_ERROR(
      HkdfExpand(k.secret_.span(), "transcript", {}, k.transcript_key_.mutable_span()));
  k.join_key_ = SecretBytes(32);
  SOD_RETURN_IF_ERROR(HkdfExpand(k.secret_.span(), "channel join", {}, k.join_key_.mutable_span()));
  return k;
}

Result<ChannelKeys> SessionKeys::ForChannel(uint32_t channel, Direction dir) const {
  uint8_t suffix[5];
  StoreLe32(suffix, channel);
  suffix[4] = static_cast<uint8_t>(dir);
  ChannelKeys k{SecretBytes(32), SecretBytes(12), SecretBytes(32)};
  SOD_RETURN_IF_ERROR(HkdfExpand(secret_.span(), "aead key", suffix, k.aead_key.mutable_span()));
  SOD_RETURN_IF_ERROR(HkdfExpand(secret_.span(), "aead iv", suffix, k.aead_iv.mutable_span()));
  SOD_RETURN_IF_ERROR(HkdfExpand(secret_.span(), "mac key", suffix, k.mac_key.mutable_span()));
  return k;
}

}  // namespace sod
