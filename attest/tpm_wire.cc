#include "attest/tpm_wire.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "base/openssl_errors.h"
#include "base/openssl_ptr.h"
#include "base/openssl_sign.h"

namespace sod::attest {
namespace {

using EcdsaSigPtr = OpensslPtr<ECDSA_SIG, ECDSA_SIG_free>;
using ParamBldPtr = OpensslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = OpensslPtr<OSSL_PARAM, OSSL_PARAM_free>;

constexpr std::string_view kSignatureMismatch = "TPM signature does not verify";
// MAX_ECC_KEY_BYTES of tpm2-tss (TPM2B_ECC_PARAMETER), larger than any TPM curve needs.
constexpr size_t kMaxTpmEccParameter = 128;

std::string Hex16(uint16_t v) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%04x", static_cast<unsigned>(v));
  return buf;
}

std::string Hex32(uint32_t v) {
  char buf[12];
  std::snprintf(buf, sizeof(buf), "0x%08x", static_cast<unsigned>(v));
  return buf;
}

// A big-endian reader for one TPM structure; every failure is a Status naming the structure and
// the field.
class WireReader {
 public:
  WireReader(ByteSpan in, std::string_view structure) : in_(in), structure_(structure) {}

  Status Bad(Errc code, std::string_view field, std::string_view detail) const {
    return Error(code,
                 std::string(structure_) + ": " + std::string(field) + ": " + std::string(detail));
  }
  Status Malformed(std::string_view field, std::string_view detail) const {
    return Bad(Errc::kMalformed, field, detail);
  }
  Status Unsupported(std::string_view field, std::string_view detail) const {
    return Bad(Errc::kUnsupported, field, detail);
  }

  Status U8(std::string_view field, uint8_t& v) {
    const uint8_t* p = Take(1);
    if (!p) return Truncated(field);
    v = p[0];
    return Status::Ok();
  }
  Status U16(std::string_view field, uint16_t& v) {
    const uint8_t* p = Take(2);
    if (!p) return Truncated(field);
    v = static_cast<uint16_t>((p[0] << 8) | p[1]);
    return Status::Ok();
  }
  Status U32(std::string_view field, uint32_t& v) {
    const uint8_t* p = Take(4);
    if (!p) return Truncated(field);
    v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | p[i];
    return Status::Ok();
  }
  Status U64(std::string_view field, uint64_t& v) {
    const uint8_t* p = Take(8);
    if (!p) return Truncated(field);
    v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
    return Status::Ok();
  }
  Status Raw(std::string_view field, size_t n, ByteSpan& out) {
    const uint8_t* p = Take(n);
    if (!p) return Truncated(field);
    out = ByteSpan(p, n);
    return Status::Ok();
  }
  // A TPM2B: u16 size, then size bytes. A size above `tpm_max` (the structure's own maximum) is
  // malformed; one above `supported_max` (what sod handles) is unsupported. Both are checked
  // before the bytes are touched.
  Status Sized(std::string_view field, size_t tpm_max, size_t supported_max, Bytes& out) {
    uint16_t n = 0;
    SOD_RETURN_IF_ERROR(U16(field, n));
    if (n > tpm_max)
      return Malformed(
          field, "size " + std::to_string(n) + " above the TPM maximum " + std::to_string(tpm_max));
    if (n > supported_max)
      return Unsupported(field,
                         "size " + std::to_string(n) + " above " + std::to_string(supported_max));
    ByteSpan raw;
    SOD_RETURN_IF_ERROR(Raw(field, n, raw));
    out.assign(raw.begin(), raw.end());
    return Status::Ok();
  }
  Status Sized(std::string_view field, size_t max, Bytes& out) {
    return Sized(field, max, max, out);
  }
  Status Done() const {
    if (pos_ != in_.size())
      return Error(Errc::kMalformed, std::string(structure_) + ": " +
                                         std::to_string(in_.size() - pos_) + " trailing bytes");
    return Status::Ok();
  }

 private:
  Status Truncated(std::string_view field) const {
    return Error(Errc::kMalformed, std::string(structure_) + ": truncated at " +
                                       std::string(field) + " (" +
                                       std::to_string(in_.size() - pos_) + " bytes left)");
  }
  const uint8_t* Take(size_t n) {
    if (in_.size() - pos_ < n) return nullptr;
    const uint8_t* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }

  ByteSpan in_;
  std::string_view structure_;
  size_t pos_ = 0;
};

class WireWriter {
 public:
  explicit WireWriter(Bytes& out) : out_(out) {}
  void U8(uint8_t v) { out_.push_back(v); }
  void U16(uint16_t v) {
    out_.push_back(static_cast<uint8_t>(v >> 8));
    out_.push_back(static_cast<uint8_t>(v));
  }
  void U32(uint32_t v) {
    for (int i = 3; i >= 0; --i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 7; i >= 0; --i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Raw(ByteSpan b) { out_.insert(out_.end(), b.begin(), b.end()); }
  // TPM2B, cut to `max` bytes.
  void Sized(ByteSpan b, size_t max) {
    if (b.size() > max) b = b.first(max);
    U16(static_cast<uint16_t>(b.size()));
    Raw(b);
  }

 private:
  Bytes& out_;
};

bool IsSymmetricObjectAlg(uint16_t alg) {
  return alg == kTpmAlgAes || alg == kTpmAlgSm4 || alg == kTpmAlgCamellia;
}

// Whether a scheme of a key of `type` carries a hash (TPMS_SCHEME_HASH); RSAES carries nothing.
// False with `known` false for schemes sod does not parse.
bool SchemeHasHash(uint16_t type, uint16_t scheme, bool& known) {
  known = true;
  if (scheme == kTpmAlgNull) return false;
  if (type == kTpmAlgRsa) {
    if (scheme == kTpmAlgRsaes) return false;
    if (scheme == kTpmAlgRsassa || scheme == kTpmAlgRsapss || scheme == kTpmAlgOaep) return true;
  } else if (type == kTpmAlgEcc) {
    if (scheme == kTpmAlgEcdsa || scheme == kTpmAlgEcdh || scheme == kTpmAlgSm2 ||
        scheme == kTpmAlgEcschnorr || scheme == kTpmAlgEcmqv)
      return true;
  }
  known = false;
  return false;
}

bool IsKdf(uint16_t alg) {
  return alg == kTpmAlgMgf1 || alg == kTpmAlgKdf1Sp800_56a || alg == kTpmAlgKdf2 ||
         alg == kTpmAlgKdf1Sp800_108;
}

Result<PkeyPtr> KeyFromParams(const char* type, OSSL_PARAM_BLD* bld) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return Error(Errc::kMalformed, DrainOpensslErrors());
  PkeyPtr key(raw);
  PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1)
    return Error(Errc::kMalformed, DrainOpensslErrors());
  return key;
}

Result<PkeyPtr> EccKey(const Bytes& x, const Bytes& y) {
  uint8_t point[1 + 2 * kP256CoordinateSize] = {0x04};  // uncompressed
  std::copy(x.begin(), x.end(), point + 1 + kP256CoordinateSize - x.size());
  std::copy(y.begin(), y.end(), point + 1 + 2 * kP256CoordinateSize - y.size());
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) !=
          1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)) !=
          1)
    return Error(Errc::kCrypto, DrainOpensslErrors());
  return KeyFromParams("EC", bld.get());
}

Result<PkeyPtr> RsaKey(const Bytes& modulus, uint32_t exponent) {
  BnPtr n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  BnPtr e(BN_new());
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!n || !e || !bld || BN_set_word(e.get(), exponent == 0 ? 65537 : exponent) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1)
    return Error(Errc::kCrypto, DrainOpensslErrors());
  if (BN_num_bits(n.get()) != 2048)
    return Error(Errc::kMalformed, "the modulus has " + std::to_string(BN_num_bits(n.get())) +
                                       " significant bits, not 2048");
  return KeyFromParams("RSA", bld.get());
}

Result<Bytes> SpkiDer(const EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return Error(Errc::kCrypto, "encoding a public key: " + DrainOpensslErrors());
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

bool IsRsa2048(const EVP_PKEY* key) {
  return EVP_PKEY_is_a(key, "RSA") == 1 && EVP_PKEY_get_bits(key) == 2048;
}

Result<Bytes> BnParam(const EVP_PKEY* key, const char* name, size_t size) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &raw) != 1)
    return Error(Errc::kCrypto, std::string("reading ") + name + ": " + DrainOpensslErrors());
  BnPtr bn(raw);
  if (static_cast<size_t>(BN_num_bytes(bn.get())) > size)
    return Error(Errc::kInvalidArgument, std::string(name) + " is too large");
  Bytes out(size);
  if (BN_bn2binpad(bn.get(), out.data(), static_cast<int>(size)) < 0)
    return Error(Errc::kCrypto, std::string("encoding ") + name + ": " + DrainOpensslErrors());
  return out;
}

}  // namespace

PcrDigest Sha256(ByteSpan data) {
  PcrDigest out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    std::fprintf(stderr, "sod: SHA-256 failed: %s\n", DrainOpensslErrors().c_str());
    std::abort();
  }
  return out;
}

PcrDigest PcrCompositeDigest(std::span<const PcrDigest> values) {
  Bytes concat;
  concat.reserve(values.size() * 32);
  for (const PcrDigest& v : values) concat.insert(concat.end(), v.begin(), v.end());
  return Sha256(concat);
}

// --- TPMS_ATTEST --------------------------------------------------------------------------------

Result<QuoteInfo> ParseQuoteAttest(ByteSpan in) {
  WireReader r(in, "TPMS_ATTEST");
  QuoteInfo q;
  uint32_t magic = 0;
  SOD_RETURN_IF_ERROR(r.U32("magic", magic));
  if (magic != kTpmGeneratedValue)
    return r.Malformed("magic",
                       Hex32(magic) + " is not TPM_GENERATED_VALUE " + Hex32(kTpmGeneratedValue));
  uint16_t type = 0;
  SOD_RETURN_IF_ERROR(r.U16("type", type));
  if (type != kTpmStAttestQuote)
    return r.Unsupported("type",
                         Hex16(type) + " is not TPM_ST_ATTEST_QUOTE " + Hex16(kTpmStAttestQuote));
  SOD_RETURN_IF_ERROR(r.Sized("qualifiedSigner", kMaxTpmName, q.qualified_signer));
  SOD_RETURN_IF_ERROR(r.Sized("extraData", kMaxTpmData, q.extra_data));
  uint8_t safe = 0;
  SOD_RETURN_IF_ERROR(r.U64("clockInfo.clock", q.clock));
  SOD_RETURN_IF_ERROR(r.U32("clockInfo.resetCount", q.reset_count));
  SOD_RETURN_IF_ERROR(r.U32("clockInfo.restartCount", q.restart_count));
  SOD_RETURN_IF_ERROR(r.U8("clockInfo.safe", safe));
  if (safe > 1) return r.Malformed("clockInfo.safe", std::to_string(safe) + " is not YES or NO");
  q.safe = safe == 1;
  SOD_RETURN_IF_ERROR(r.U64("firmwareVersion", q.firmware_version));
  uint32_t banks = 0;
  SOD_RETURN_IF_ERROR(r.U32("pcrSelect.count", banks));
  if (banks != 1)
    return r.Unsupported("pcrSelect.count",
                         std::to_string(banks) + " banks; only one (SHA-256) is supported");
  uint16_t hash = 0;
  SOD_RETURN_IF_ERROR(r.U16("pcrSelect.hash", hash));
  if (hash != kTpmAlgSha256)
    return r.Unsupported("pcrSelect.hash",
                         "bank " + Hex16(hash) + "; only the SHA-256 bank (0x000b) is supported");
  uint8_t size_of_select = 0;
  SOD_RETURN_IF_ERROR(r.U8("pcrSelect.sizeofSelect", size_of_select));
  if (size_of_select != kPcrSelectSize)
    return r.Unsupported("pcrSelect.sizeofSelect",
                         std::to_string(size_of_select) + "; only 3 (PCRs 0..23) is supported");
  ByteSpan select;
  SOD_RETURN_IF_ERROR(r.Raw("pcrSelect.pcrSelect", kPcrSelectSize, select));
  q.pcr_selection.mask = select[0] | (uint32_t{select[1]} << 8) | (uint32_t{select[2]} << 16);
  SOD_RETURN_IF_ERROR(r.Sized("pcrDigest", kMaxTpmDigest, q.pcr_digest));
  SOD_RETURN_IF_ERROR(r.Done());
  return q;
}

Bytes EncodeQuoteAttest(const QuoteInfo& q) {
  Bytes out;
  WireWriter w(out);
  w.U32(kTpmGeneratedValue);
  w.U16(kTpmStAttestQuote);
  w.Sized(q.qualified_signer, kMaxTpmName);
  w.Sized(q.extra_data, kMaxTpmData);
  w.U64(q.clock);
  w.U32(q.reset_count);
  w.U32(q.restart_count);
  w.U8(q.safe ? 1 : 0);
  w.U64(q.firmware_version);
  w.U32(1);
  w.U16(kTpmAlgSha256);
  w.U8(kPcrSelectSize);
  w.U8(static_cast<uint8_t>(q.pcr_selection.mask));
  w.U8(static_cast<uint8_t>(q.pcr_selection.mask >> 8));
  w.U8(static_cast<uint8_t>(q.pcr_selection.mask >> 16));
  w.Sized(q.pcr_digest, kMaxTpmDigest);
  return out;
}

// --- TPMT_SIGNATURE -----------------------------------------------------------------------------

Result<TpmSignature> ParseSignature(ByteSpan in) {
  WireReader r(in, "TPMT_SIGNATURE");
  TpmSignature s;
  SOD_RETURN_IF_ERROR(r.U16("sigAlg", s.sig_alg));
  if (s.sig_alg != kTpmAlgEcdsa && s.sig_alg != kTpmAlgRsassa)
    return r.Unsupported(
        "sigAlg", Hex16(s.sig_alg) + "; only ECDSA (0x0018) and RSASSA (0x0014) are supported");
  SOD_RETURN_IF_ERROR(r.U16("hash", s.hash_alg));
  if (s.hash_alg != kTpmAlgSha256)
    return r.Unsupported("hash", Hex16(s.hash_alg) + "; only SHA-256 (0x000b) is supported");
  if (s.sig_alg == kTpmAlgEcdsa) {
    SOD_RETURN_IF_ERROR(r.Sized("signatureR", kMaxTpmEccParameter, kP256CoordinateSize, s.ecdsa_r));
    if (s.ecdsa_r.empty()) return r.Malformed("signatureR", "empty");
    SOD_RETURN_IF_ERROR(r.Sized("signatureS", kMaxTpmEccParameter, kP256CoordinateSize, s.ecdsa_s));
    if (s.ecdsa_s.empty()) return r.Malformed("signatureS", "empty");
  } else {
    SOD_RETURN_IF_ERROR(r.Sized("sig", kMaxTpmRsaBytes, s.rsa_signature));
    if (s.rsa_signature.empty()) return r.Malformed("sig", "empty");
  }
  SOD_RETURN_IF_ERROR(r.Done());
  return s;
}

Bytes EncodeSignature(const TpmSignature& s) {
  Bytes out;
  WireWriter w(out);
  w.U16(s.sig_alg);
  w.U16(s.hash_alg);
  if (s.sig_alg == kTpmAlgEcdsa) {
    w.Sized(s.ecdsa_r, kP256CoordinateSize);
    w.Sized(s.ecdsa_s, kP256CoordinateSize);
  } else {
    w.Sized(s.rsa_signature, kMaxTpmRsaBytes);
  }
  return out;
}

// --- TPMT_PUBLIC --------------------------------------------------------------------------------

Result<TpmPublic> ParsePublic(ByteSpan in) {
  WireReader r(in, "TPMT_PUBLIC");
  TpmPublic p;
  SOD_RETURN_IF_ERROR(r.U16("type", p.type));
  if (p.type != kTpmAlgEcc && p.type != kTpmAlgRsa)
    return r.Unsupported("type",
                         Hex16(p.type) + "; only ECC (0x0023) and RSA (0x0001) are supported");
  SOD_RETURN_IF_ERROR(r.U16("nameAlg", p.name_alg));
  if (p.name_alg != kTpmAlgSha256)
    return r.Unsupported("nameAlg", Hex16(p.name_alg) + "; only SHA-256 (0x000b) is supported");
  SOD_RETURN_IF_ERROR(r.U32("objectAttributes", p.object_attributes));
  SOD_RETURN_IF_ERROR(r.Sized("authPolicy", kMaxTpmDigest, p.auth_policy));
  SOD_RETURN_IF_ERROR(r.U16("parameters.symmetric.algorithm", p.symmetric));
  if (p.symmetric != kTpmAlgNull) {
    if (!IsSymmetricObjectAlg(p.symmetric))
      return r.Unsupported("parameters.symmetric.algorithm",
                           Hex16(p.symmetric) + " is not AES, SM4, CAMELLIA or NULL");
    SOD_RETURN_IF_ERROR(r.U16("parameters.symmetric.keyBits", p.symmetric_key_bits));
    SOD_RETURN_IF_ERROR(r.U16("parameters.symmetric.mode", p.symmetric_mode));
  }
  SOD_RETURN_IF_ERROR(r.U16("parameters.scheme", p.scheme));
  bool known = false;
  const bool has_hash = SchemeHasHash(p.type, p.scheme, known);
  if (!known)
    return r.Unsupported("parameters.scheme", Hex16(p.scheme) +
                                                  " is not a supported scheme for a " +
                                                  (p.type == kTpmAlgEcc ? "ECC" : "RSA") + " key");
  if (has_hash) SOD_RETURN_IF_ERROR(r.U16("parameters.scheme.hashAlg", p.scheme_hash));
  if (p.type == kTpmAlgEcc) {
    SOD_RETURN_IF_ERROR(r.U16("parameters.curveID", p.curve));
    if (p.curve != kTpmEccNistP256)
      return r.Unsupported("parameters.curveID",
                           Hex16(p.curve) + "; only NIST P-256 (0x0003) is supported");
    SOD_RETURN_IF_ERROR(r.U16("parameters.kdf", p.kdf));
    if (p.kdf != kTpmAlgNull) {
      if (!IsKdf(p.kdf))
        return r.Unsupported("parameters.kdf", Hex16(p.kdf) + " is not a supported KDF");
      SOD_RETURN_IF_ERROR(r.U16("parameters.kdf.hashAlg", p.kdf_hash));
    }
    SOD_RETURN_IF_ERROR(r.Sized("unique.x", kMaxTpmEccParameter, kP256CoordinateSize, p.ecc_x));
    if (p.ecc_x.empty()) return r.Malformed("unique.x", "empty (a template, not a key)");
    SOD_RETURN_IF_ERROR(r.Sized("unique.y", kMaxTpmEccParameter, kP256CoordinateSize, p.ecc_y));
    if (p.ecc_y.empty()) return r.Malformed("unique.y", "empty (a template, not a key)");
  } else {
    SOD_RETURN_IF_ERROR(r.U16("parameters.keyBits", p.rsa_key_bits));
    if (p.rsa_key_bits != 2048)
      return r.Unsupported("parameters.keyBits",
                           std::to_string(p.rsa_key_bits) + "; only 2048 is supported");
    SOD_RETURN_IF_ERROR(r.U32("parameters.exponent", p.rsa_exponent));
    SOD_RETURN_IF_ERROR(r.Sized("unique.rsa", kMaxTpmRsaBytes, p.rsa_modulus));
    if (p.rsa_modulus.size() != kRsa2048ModulusSize)
      return r.Malformed("unique.rsa", std::to_string(p.rsa_modulus.size()) +
                                           " bytes; a 2048-bit modulus has 256");
  }
  SOD_RETURN_IF_ERROR(r.Done());

  ERR_clear_error();
  Result<PkeyPtr> key =
      p.type == kTpmAlgEcc ? EccKey(p.ecc_x, p.ecc_y) : RsaKey(p.rsa_modulus, p.rsa_exponent);
  if (!key.ok()) {
    if (key.status().code() != Errc::kMalformed) return key.status();
    return r.Malformed("unique", std::string(p.type == kTpmAlgEcc ? "not a valid P-256 point"
                                                                  : "not a valid RSA-2048 key") +
                                     " (" + key.status().message() + ")");
  }
  SOD_ASSIGN_OR_RETURN(p.spki_der, SpkiDer(key->get()));
  p.name = PublicName(in);
  return p;
}

Bytes EncodePublic(const TpmPublic& p) {
  Bytes out;
  WireWriter w(out);
  w.U16(p.type);
  w.U16(p.name_alg);
  w.U32(p.object_attributes);
  w.Sized(p.auth_policy, kMaxTpmDigest);
  w.U16(p.symmetric);
  if (p.symmetric != kTpmAlgNull) {
    w.U16(p.symmetric_key_bits);
    w.U16(p.symmetric_mode);
  }
  w.U16(p.scheme);
  bool known = false;
  if (SchemeHasHash(p.type, p.scheme, known)) w.U16(p.scheme_hash);
  if (p.type == kTpmAlgEcc) {
    w.U16(p.curve);
    w.U16(p.kdf);
    if (p.kdf != kTpmAlgNull) w.U16(p.kdf_hash);
    w.Sized(p.ecc_x, kP256CoordinateSize);
    w.Sized(p.ecc_y, kP256CoordinateSize);
  } else {
    w.U16(p.rsa_key_bits);
    w.U32(p.rsa_exponent);
    w.Sized(p.rsa_modulus, kMaxTpmRsaBytes);
  }
  return out;
}

Bytes PublicName(ByteSpan tpmt_public) {
  const PcrDigest digest = Sha256(tpmt_public);
  Bytes name;
  name.reserve(kTpmNameSize);
  WireWriter w(name);
  w.U16(kTpmAlgSha256);
  w.Raw(digest);
  return name;
}

Bytes HierarchyName(uint32_t hierarchy_handle) {
  Bytes out;
  WireWriter w(out);
  w.U32(hierarchy_handle);
  return out;
}

Bytes QualifiedName(ByteSpan parent_qualified_name, ByteSpan name) {
  Bytes in(parent_qualified_name.begin(), parent_qualified_name.end());
  in.insert(in.end(), name.begin(), name.end());
  const PcrDigest digest = Sha256(in);
  Bytes out;
  out.reserve(kTpmNameSize);
  WireWriter w(out);
  w.U16(kTpmAlgSha256);
  w.Raw(digest);
  return out;
}

Status CheckAttestationKey(const TpmPublic& ak) {
  auto bad = [](std::string_view why) {
    return Error(Errc::kInvalidArgument, "not an attestation key: " + std::string(why));
  };
  if (!ak.Has(kTpmaRestricted)) return bad("not restricted (it could sign forged quotes)");
  if (!ak.Has(kTpmaSign)) return bad("not a signing key");
  if (ak.Has(kTpmaDecrypt)) return bad("also a decryption key");
  if (!ak.Has(kTpmaFixedTpm)) return bad("not fixedTPM (it may exist outside the TPM)");
  if (!ak.Has(kTpmaFixedParent)) return bad("not fixedParent");
  const uint16_t own_scheme = ak.type == kTpmAlgEcc ? kTpmAlgEcdsa : kTpmAlgRsassa;
  if (ak.scheme != kTpmAlgNull && (ak.scheme != own_scheme || ak.scheme_hash != kTpmAlgSha256))
    return bad("scheme " + Hex16(ak.scheme) + " hash " + Hex16(ak.scheme_hash) + " is not " +
               (ak.type == kTpmAlgEcc ? "ECDSA" : "RSASSA") + " with SHA-256");
  return Status::Ok();
}

Status CheckEndorsementKey(const TpmPublic& ek) {
  auto bad = [](std::string_view why) {
    return Error(Errc::kInvalidArgument, "not an endorsement key: " + std::string(why));
  };
  if (!ek.Has(kTpmaRestricted)) return bad("not restricted");
  if (!ek.Has(kTpmaDecrypt)) return bad("not a decryption key");
  if (ek.Has(kTpmaSign)) return bad("also a signing key");
  if (!ek.Has(kTpmaFixedTpm)) return bad("not fixedTPM");
  if (!ek.Has(kTpmaFixedParent)) return bad("not fixedParent");
  return Status::Ok();
}

Status VerifyTpmSignature(const TpmPublic& key, ByteSpan message, const TpmSignature& sig) {
  ERR_clear_error();
  if (key.spki_der.empty())
    return Error(Errc::kInvalidArgument, "verifying a TPM signature: the key has no public key");
  const unsigned char* p = key.spki_der.data();
  PkeyPtr pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(key.spki_der.size())));
  if (!pkey || p != key.spki_der.data() + key.spki_der.size()) {
    ERR_clear_error();
    return Error(Errc::kInvalidArgument,
                 "verifying a TPM signature: the key's spki_der is not a SubjectPublicKeyInfo");
  }
  auto mismatch = [](std::string_view why) {
    return Error(Errc::kIntegrity, std::string(kSignatureMismatch) + " (" + std::string(why) + ")");
  };
  const bool ecc = key.type == kTpmAlgEcc;
  if (ecc ? !IsP256(pkey.get()) : !IsRsa2048(pkey.get()))
    return Error(Errc::kInvalidArgument,
                 "verifying a TPM signature: spki_der does not hold the key's type");
  const uint16_t want_alg = ecc ? kTpmAlgEcdsa : kTpmAlgRsassa;
  if (sig.sig_alg != want_alg)
    return mismatch("sigAlg " + Hex16(sig.sig_alg) + " does not fit the key");
  if (sig.hash_alg != kTpmAlgSha256) return mismatch("hash " + Hex16(sig.hash_alg));
  if (key.scheme != kTpmAlgNull && (key.scheme != sig.sig_alg || key.scheme_hash != sig.hash_alg))
    return mismatch("the key's scheme is " + Hex16(key.scheme) + " with hash " +
                    Hex16(key.scheme_hash));

  Bytes der;
  if (ecc) {
    if (sig.ecdsa_r.empty() || sig.ecdsa_s.empty() || sig.ecdsa_r.size() > kP256CoordinateSize ||
        sig.ecdsa_s.size() > kP256CoordinateSize)
      return mismatch("r or s has a bad size");
    EcdsaSigPtr es(ECDSA_SIG_new());
    BIGNUM* r = BN_bin2bn(sig.ecdsa_r.data(), static_cast<int>(sig.ecdsa_r.size()), nullptr);
    BIGNUM* s = BN_bin2bn(sig.ecdsa_s.data(), static_cast<int>(sig.ecdsa_s.size()), nullptr);
    if (!es || !r || !s || ECDSA_SIG_set0(es.get(), r, s) != 1) {
      BN_free(r);
      BN_free(s);
      return Error(Errc::kCrypto, "verifying a TPM signature: " + DrainOpensslErrors());
    }
    unsigned char* raw = nullptr;
    const int len = i2d_ECDSA_SIG(es.get(), &raw);
    if (len <= 0) return Error(Errc::kCrypto, "encoding ECDSA-Sig-Value: " + DrainOpensslErrors());
    der.assign(raw, raw + len);
    OPENSSL_free(raw);
  } else {
    if (sig.rsa_signature.empty() || sig.rsa_signature.size() > kMaxTpmRsaBytes)
      return mismatch("the RSA signature has a bad size");
    der = sig.rsa_signature;
  }
  MdCtxPtr ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, EVP_sha256(), nullptr, pkey.get()) != 1 ||
      (!ecc && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1))
    return Error(Errc::kCrypto, "verifying a TPM signature: " + DrainOpensslErrors());
  const int rc =
      EVP_DigestVerify(ctx.get(), der.data(), der.size(), message.data(), message.size());
  ERR_clear_error();  // a bad signature may queue decoding errors: it is just a mismatch
  if (rc != 1) return Error(Errc::kIntegrity, std::string(kSignatureMismatch));
  return Status::Ok();
}

// --- Software keys ------------------------------------------------------------------------------

Result<TpmPublic> PublicFromKey(const evp_pkey_st* key, uint32_t object_attributes) {
  ERR_clear_error();
  if (key == nullptr) return Error(Errc::kInvalidArgument, "PublicFromKey: no key");
  TpmPublic p;
  p.name_alg = kTpmAlgSha256;
  p.object_attributes = object_attributes;
  const bool sign = (object_attributes & kTpmaSign) != 0;
  const bool restricted_decrypt =
      (object_attributes & (kTpmaRestricted | kTpmaDecrypt)) == (kTpmaRestricted | kTpmaDecrypt);
  if (restricted_decrypt && !sign) {
    p.symmetric = kTpmAlgAes;
    p.symmetric_key_bits = 128;
    p.symmetric_mode = kTpmAlgCfb;
  }
  if (IsP256(key)) {
    p.type = kTpmAlgEcc;
    p.curve = kTpmEccNistP256;
    if (sign) {
      p.scheme = kTpmAlgEcdsa;
      p.scheme_hash = kTpmAlgSha256;
    }
    SOD_ASSIGN_OR_RETURN(p.ecc_x, BnParam(key, OSSL_PKEY_PARAM_EC_PUB_X, kP256CoordinateSize));
    SOD_ASSIGN_OR_RETURN(p.ecc_y, BnParam(key, OSSL_PKEY_PARAM_EC_PUB_Y, kP256CoordinateSize));
  } else if (IsRsa2048(key)) {
    p.type = kTpmAlgRsa;
    p.rsa_key_bits = 2048;
    if (sign) {
      p.scheme = kTpmAlgRsassa;
      p.scheme_hash = kTpmAlgSha256;
    }
    SOD_ASSIGN_OR_RETURN(p.rsa_modulus, BnParam(key, OSSL_PKEY_PARAM_RSA_N, kRsa2048ModulusSize));
    SOD_ASSIGN_OR_RETURN(Bytes e, BnParam(key, OSSL_PKEY_PARAM_RSA_E, 4));
    const uint32_t exponent =
        (uint32_t{e[0]} << 24) | (uint32_t{e[1]} << 16) | (uint32_t{e[2]} << 8) | e[3];
    p.rsa_exponent = exponent == 65537 ? 0 : exponent;
  } else {
    return Error(Errc::kInvalidArgument, "PublicFromKey: the key is neither EC P-256 nor RSA-2048");
  }
  SOD_ASSIGN_OR_RETURN(p.spki_der, SpkiDer(key));
  p.name = PublicName(EncodePublic(p));
  return p;
}

Result<Bytes> SoftwareTpmSign(evp_pkey_st* key, ByteSpan message) {
  ERR_clear_error();
  if (key == nullptr) return Error(Errc::kInvalidArgument, "SoftwareTpmSign: no key");
  const bool ecc = IsP256(key);
  if (!ecc && !IsRsa2048(key))
    return Error(Errc::kInvalidArgument,
                 "SoftwareTpmSign: the key is neither EC P-256 nor RSA-2048");
  SOD_ASSIGN_OR_RETURN(Bytes raw, SignSha256(key, message));
  TpmSignature sig;
  sig.hash_alg = kTpmAlgSha256;
  if (ecc) {
    sig.sig_alg = kTpmAlgEcdsa;
    const unsigned char* p = raw.data();
    EcdsaSigPtr es(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(raw.size())));
    if (!es) return Error(Errc::kCrypto, "decoding our ECDSA signature: " + DrainOpensslErrors());
    sig.ecdsa_r.resize(kP256CoordinateSize);
    sig.ecdsa_s.resize(kP256CoordinateSize);
    if (BN_bn2binpad(ECDSA_SIG_get0_r(es.get()), sig.ecdsa_r.data(), kP256CoordinateSize) < 0 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(es.get()), sig.ecdsa_s.data(), kP256CoordinateSize) < 0)
      return Error(Errc::kCrypto, "encoding r and s: " + DrainOpensslErrors());
  } else {
    sig.sig_alg = kTpmAlgRsassa;
    sig.rsa_signature = std::move(raw);
  }
  return EncodeSignature(sig);
}

}  // namespace sod::attest
