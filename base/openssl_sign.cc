#include "base/openssl_sign.h"

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>

#include "base/openssl_errors.h"
#include "base/openssl_ptr.h"

namespace sod {

Result<Bytes> SignSha256(EVP_PKEY* key, ByteSpan message) {
  ERR_clear_error();
  if (key == nullptr) return Error(Errc::kInvalidArgument, "signing: no key");
  MdCtxPtr ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!ctx || EVP_DigestSignInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key) != 1 ||
      (EVP_PKEY_base_id(key) == EVP_PKEY_RSA &&
       EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1))
    return Error(Errc::kCrypto, "signing: " + DrainOpensslErrors());
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, message.data(), message.size()) != 1)
    return Error(Errc::kCrypto, "signing: " + DrainOpensslErrors());
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, message.data(), message.size()) != 1)
    return Error(Errc::kCrypto, "signing: " + DrainOpensslErrors());
  sig.resize(len);
  return sig;
}

bool IsP256(const EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "EC") != 1) return false;
  char group[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(key, group, sizeof(group), &len) != 1) return false;
  int nid = OBJ_txt2nid(group);
  if (nid == NID_undef) nid = EC_curve_nist2nid(group);
  return nid == NID_X9_62_prime256v1;
}

}  // namespace sod
