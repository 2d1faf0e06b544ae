#include "migrate/record_protection.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <cstring>
#include <string>

#include "base/secret.h"

namespace sod {

namespace {

constexpr size_t kGcmIvSize = 12;
constexpr size_t kGcmTagSize = 16;

class AesGcmProtector final : public RecordProtector {
 public:
  ~AesGcmProtector() override {
    EVP_CIPHER_CTX_free(enc_);
    EVP_CIPHER_CTX_free(dec_);
  }

  static Result<std::unique_ptr<RecordProtector>> Create(const ChannelKeys& keys) {
    if (keys.aead_key.size() != 32 || keys.aead_iv.size() != kGcmIvSize)
      return Error(Errc::kInvalidArgument, "AES-256-GCM needs a 32-byte key and a 12-byte IV");
    std::unique_ptr<AesGcmProtector> p(new AesGcmProtector());
    p->iv_ = SecretBytes(keys.aead_iv.span());
    p->enc_ = EVP_CIPHER_CTX_new();
    p->dec_ = EVP_CIPHER_CTX_new();
    if (!p->enc_ || !p->dec_) return Error(Errc::kCrypto, "EVP_CIPHER_CTX_new failed");
    // Key schedule once; per record only the IV changes.
    if (EVP_EncryptInit_ex(p->enc_, EVP_aes_256_gcm(), nullptr, keys.aead_key.data(), nullptr) !=
            1 ||
        EVP_DecryptInit_ex(p->dec_, EVP_aes_256_gcm(), nullptr, keys.aead_key.data(), nullptr) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM key setup failed");
    return std::unique_ptr<RecordProtector>(std::move(p));
  }

  Suite suite() const override { return Suite::kAes256Gcm; }

  Status Seal(uint64_t sequence, ByteSpan header, std::span<const ByteSpan> parts,
              MutableByteSpan out_payload, MutableByteSpan out_tag) override {
    uint8_t nonce[kGcmIvSize];
    MakeNonce(sequence, nonce);
    int n = 0;
    if (EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, nonce) != 1 ||
        EVP_EncryptUpdate(enc_, nullptr, &n, header.data(), static_cast<int>(header.size())) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM seal: setup failed");
    size_t at = 0;
    for (ByteSpan part : parts) {
      if (part.empty()) continue;
      if (at + part.size() > out_payload.size())
        return Error(Errc::kInternal, "AES-256-GCM seal: parts exceed the payload buffer");
      if (EVP_EncryptUpdate(enc_, out_payload.data() + at, &n, part.data(),
                            static_cast<int>(part.size())) != 1)
        return Error(Errc::kCrypto, "AES-256-GCM seal: encrypt failed");
      at += static_cast<size_t>(n);
    }
    if (at != out_payload.size())
      return Error(Errc::kInternal, "AES-256-GCM seal: parts do not fill the payload");
    if (EVP_EncryptFinal_ex(enc_, out_payload.data() + at, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_GCM_GET_TAG, kGcmTagSize, out_tag.data()) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM seal: finalize failed");
    return Status::Ok();
  }

  Status Open(uint64_t sequence, ByteSpan header, MutableByteSpan payload, ByteSpan tag) override {
    if (tag.size() != kGcmTagSize) return Error(Errc::kInternal, "AES-256-GCM open: tag size");
    uint8_t nonce[kGcmIvSize];
    MakeNonce(sequence, nonce);
    int n = 0;
    if (EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, nonce) != 1 ||
        EVP_DecryptUpdate(dec_, nullptr, &n, header.data(), static_cast<int>(header.size())) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM open: setup failed");
    if (!payload.empty() && EVP_DecryptUpdate(dec_, payload.data(), &n, payload.data(),
                                              static_cast<int>(payload.size())) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM open: decrypt failed");
    if (EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_TAG, kGcmTagSize,
                            const_cast<uint8_t*>(tag.data())) != 1)
      return Error(Errc::kCrypto, "AES-256-GCM open: set tag failed");
    if (EVP_DecryptFinal_ex(dec_, payload.data() + payload.size(), &n) != 1) {
      OPENSSL_cleanse(payload.data(), payload.size());  // never leave unverified plaintext
      return Error(Errc::kIntegrity, "AES-256-GCM tag mismatch");
    }
    return Status::Ok();
  }

 private:
  AesGcmProtector() = default;
  void MakeNonce(uint64_t sequence, uint8_t out[kGcmIvSize]) const {
    std::memcpy(out, iv_.data(), kGcmIvSize);
    for (int i = 0; i < 8; ++i)
      out[kGcmIvSize - 1 - i] ^= static_cast<uint8_t>(sequence >> (8 * i));
  }
  SecretBytes iv_;
  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
};

class HmacProtector final : public RecordProtector {
 public:
  ~HmacProtector() override {
    EVP_MAC_CTX_free(ctx_);
    EVP_MAC_free(mac_);
  }

  static Result<std::unique_ptr<RecordProtector>> Create(const ChannelKeys& keys) {
    if (keys.mac_key.size() != 32)
      return Error(Errc::kInvalidArgument, "HMAC-SHA256 suite needs a 32-byte key");
    std::unique_ptr<HmacProtector> p(new HmacProtector());
    p->mac_ = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (!p->mac_) return Error(Errc::kCrypto, "HMAC is not available in this OpenSSL");
    p->ctx_ = EVP_MAC_CTX_new(p->mac_);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (!p->ctx_ || EVP_MAC_init(p->ctx_, keys.mac_key.data(), keys.mac_key.size(), params) != 1)
      return Error(Errc::kCrypto, "HMAC-SHA256 key setup failed");
    return std::unique_ptr<RecordProtector>(std::move(p));
  }

  Suite suite() const override { return Suite::kHmacSha256; }

  Status Seal(uint64_t, ByteSpan header, std::span<const ByteSpan> parts,
              MutableByteSpan out_payload, MutableByteSpan out_tag) override {
    size_t at = 0;
    for (ByteSpan part : parts) {
      if (at + part.size() > out_payload.size())
        return Error(Errc::kInternal, "HMAC seal: parts exceed the payload buffer");
      if (!part.empty()) std::memcpy(out_payload.data() + at, part.data(), part.size());
      at += part.size();
    }
    if (at != out_payload.size())
      return Error(Errc::kInternal, "HMAC seal: parts do not fill the payload");
    return Mac(header, out_payload, out_tag.data());
  }

  Status Open(uint64_t, ByteSpan header, MutableByteSpan payload, ByteSpan tag) override {
    uint8_t expect[32];
    SOD_RETURN_IF_ERROR(Mac(header, payload, expect));
    if (tag.size() != sizeof(expect) || CRYPTO_memcmp(expect, tag.data(), sizeof(expect)) != 0)
      return Error(Errc::kIntegrity, "HMAC-SHA256 record tag mismatch");
    return Status::Ok();
  }

 private:
  HmacProtector() = default;
  Status Mac(ByteSpan header, ByteSpan payload, uint8_t out[32]) {
    size_t len = 0;
    // Re-init with a null key keeps the key and resets the state.
    if (EVP_MAC_init(ctx_, nullptr, 0, nullptr) != 1 ||
        EVP_MAC_update(ctx_, header.data(), header.size()) != 1 ||
        EVP_MAC_update(ctx_, payload.data(), payload.size()) != 1 ||
        EVP_MAC_final(ctx_, out, &len, 32) != 1 || len != 32)
      return Error(Errc::kCrypto, "HMAC-SHA256 failed");
    return Status::Ok();
  }
  EVP_MAC* mac_ = nullptr;
  EVP_MAC_CTX* ctx_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<RecordProtector>> MakeRecordProtector(Suite suite, const ChannelKeys& keys) {
  switch (suite) {
    case Suite::kAes256Gcm:
      return AesGcmProtector::Create(keys);
    case Suite::kHmacSha256:
      return HmacProtector::Create(keys);
    case Suite::kInvalid:
      break;
  }
  return Error(Errc::kUnsupported,
               "unknown record suite " + std::to_string(static_cast<int>(suite)));
}

}  // namespace sod
