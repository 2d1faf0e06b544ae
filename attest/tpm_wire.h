// Bounds-checked parsers and encoders for the TPM 2.0 structures a peer sends in its evidence
// (TPM 2.0 Library Part 2, "Structures"): TPMS_ATTEST of a quote, TPMT_SIGNATURE, TPMT_PUBLIC.
// Big-endian, exactly as a TPM marshals them (attest/tpm.h).
//
// Only what sod uses is supported; everything else is refused with kUnsupported naming the field:
//   TPMS_ATTEST      type TPM_ST_ATTEST_QUOTE, one PCR bank: SHA-256 with sizeofSelect 3
//   TPMT_SIGNATURE   ECDSA or RSASSA, hash SHA-256
//   TPMT_PUBLIC      ECC NIST P-256 or RSA-2048, nameAlg SHA-256
// Parsers check every length before use, refuse trailing bytes, and never assert on input:
// kMalformed (truncated, a length above the TPM maximum, a bad value) or kUnsupported; the
// message starts with the structure and names the field ("TPMS_ATTEST: extraData: ...").
//
// Encoders are canonical: when Parse*(b) succeeds, Encode*(*Parse*(b)) == b. The encoders and
// the OpenSSL helpers at the end let tests and simulations build what a TPM would send with a
// software key.
//
// Thread-safety: stateless functions, safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "attest/tpm.h"
#include "base/bytes.h"
#include "base/status.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace sod::attest {

// TPM_ALG_ID values (Part 2, table "TPM_ALG_ID").
inline constexpr uint16_t kTpmAlgRsa = 0x0001;
inline constexpr uint16_t kTpmAlgSha1 = 0x0004;
inline constexpr uint16_t kTpmAlgAes = 0x0006;
inline constexpr uint16_t kTpmAlgMgf1 = 0x0007;
inline constexpr uint16_t kTpmAlgSha256 = 0x000b;
inline constexpr uint16_t kTpmAlgSha384 = 0x000c;
inline constexpr uint16_t kTpmAlgSha512 = 0x000d;
inline constexpr uint16_t kTpmAlgNull = 0x0010;
inline constexpr uint16_t kTpmAlgSm4 = 0x0013;
inline constexpr uint16_t kTpmAlgRsassa = 0x0014;
inline constexpr uint16_t kTpmAlgRsaes = 0x0015;
inline constexpr uint16_t kTpmAlgRsapss = 0x0016;
inline constexpr uint16_t kTpmAlgOaep = 0x0017;
inline constexpr uint16_t kTpmAlgEcdsa = 0x0018;
inline constexpr uint16_t kTpmAlgEcdh = 0x0019;
inline constexpr uint16_t kTpmAlgEcdaa = 0x001a;
inline constexpr uint16_t kTpmAlgSm2 = 0x001b;
inline constexpr uint16_t kTpmAlgEcschnorr = 0x001c;
inline constexpr uint16_t kTpmAlgEcmqv = 0x001d;
inline constexpr uint16_t kTpmAlgKdf1Sp800_56a = 0x0020;
inline constexpr uint16_t kTpmAlgKdf2 = 0x0021;
inline constexpr uint16_t kTpmAlgKdf1Sp800_108 = 0x0022;
inline constexpr uint16_t kTpmAlgEcc = 0x0023;
inline constexpr uint16_t kTpmAlgCamellia = 0x0026;
inline constexpr uint16_t kTpmAlgCtr = 0x0040;
inline constexpr uint16_t kTpmAlgOfb = 0x0041;
inline constexpr uint16_t kTpmAlgCbc = 0x0042;
inline constexpr uint16_t kTpmAlgCfb = 0x0043;
inline constexpr uint16_t kTpmAlgEcb = 0x0044;
inline constexpr uint16_t kTpmEccNistP256 = 0x0003;  // TPM_ECC_CURVE

// TPMA_OBJECT bits.
inline constexpr uint32_t kTpmaFixedTpm = 1u << 1;
inline constexpr uint32_t kTpmaStClear = 1u << 2;
inline constexpr uint32_t kTpmaFixedParent = 1u << 4;
inline constexpr uint32_t kTpmaSensitiveDataOrigin = 1u << 5;
inline constexpr uint32_t kTpmaUserWithAuth = 1u << 6;
inline constexpr uint32_t kTpmaAdminWithPolicy = 1u << 7;
inline constexpr uint32_t kTpmaNoDa = 1u << 10;
inline constexpr uint32_t kTpmaEncryptedDuplication = 1u << 11;
inline constexpr uint32_t kTpmaRestricted = 1u << 16;
inline constexpr uint32_t kTpmaDecrypt = 1u << 17;
inline constexpr uint32_t kTpmaSign = 1u << 18;
// An attestation key as attest/tpm.h describes it (0x00050072).
inline constexpr uint32_t kAkAttributes = kTpmaFixedTpm | kTpmaFixedParent |
                                          kTpmaSensitiveDataOrigin | kTpmaUserWithAuth |
                                          kTpmaRestricted | kTpmaSign;
// The TCG default EK template's attributes (0x000300b2).
inline constexpr uint32_t kEkAttributes = kTpmaFixedTpm | kTpmaFixedParent |
                                          kTpmaSensitiveDataOrigin | kTpmaAdminWithPolicy |
                                          kTpmaRestricted | kTpmaDecrypt;

inline constexpr uint32_t kTpmGeneratedValue = 0xff544347;  // TPM_GENERATED_VALUE, "\xffTCG"
inline constexpr uint16_t kTpmStAttestQuote = 0x8018;       // TPM_ST_ATTEST_QUOTE
// Maxima of the TPM2B fields below (Part 2: sizeof(TPMU_NAME), sizeof(TPMT_HA), sizeof(TPMU_HA)).
inline constexpr size_t kMaxTpmName = 66;
inline constexpr size_t kMaxTpmData = 66;
inline constexpr size_t kMaxTpmDigest = 64;
inline constexpr size_t kPcrSelectSize = 3;        // sizeofSelect of a 24-PCR bank
inline constexpr size_t kP256CoordinateSize = 32;  // ECC parameters of P-256
inline constexpr size_t kRsa2048ModulusSize = 256;
inline constexpr size_t kMaxTpmRsaBytes = 512;  // TPM2B_PUBLIC_KEY_RSA (MAX_RSA_KEY_BYTES)
inline constexpr size_t kTpmNameSize = 2 + 32;  // a Name with nameAlg SHA-256

// SHA-256 of `data`, the hash of every digest in sod's attestation. Aborts the process if
// OpenSSL cannot hash (out of memory): it never returns a value that was not computed.
PcrDigest Sha256(ByteSpan data);

// --- TPMS_ATTEST of TPM2_Quote ------------------------------------------------------------------
//
//   u32  magic            kTpmGeneratedValue
//   u16  type             kTpmStAttestQuote
//   TPM2B_NAME  qualifiedSigner    u16 size (<= kMaxTpmName) + bytes
//   TPM2B_DATA  extraData          u16 size (<= kMaxTpmData) + bytes
//   TPMS_CLOCK_INFO   u64 clock, u32 resetCount, u32 restartCount, u8 safe (0 or 1)
//   u64  firmwareVersion
//   TPMS_QUOTE_INFO   TPML_PCR_SELECTION: u32 count (= 1 here), then
//                       u16 hash (= SHA-256), u8 sizeofSelect (= 3), pcrSelect[3]
//                       (bit i of byte j = PCR 8j + i)
//                     TPM2B_DIGEST pcrDigest: u16 size (<= kMaxTpmDigest) + bytes
struct QuoteInfo {
  Bytes qualified_signer;  // the Qualified Name of the key that signed the quote
  Bytes extra_data;        // the qualifying data the quote was asked for
  uint64_t clock = 0;      // ms the TPM has been powered since it was last cleared
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  bool safe = false;
  uint64_t firmware_version = 0;
  PcrSelection pcr_selection;  // the quoted PCRs of the SHA-256 bank (bits 0..23)
  Bytes pcr_digest;            // hash of the quoted PCR values concatenated in ascending PCR order
  bool operator==(const QuoteInfo&) const = default;
};

Result<QuoteInfo> ParseQuoteAttest(ByteSpan tpms_attest);
// Preconditions (else the field is cut to its maximum or bits above PCR 23 are dropped, and the
// result no longer round-trips): sizes within the maxima above, pcr_selection.mask < 2^24.
Bytes EncodeQuoteAttest(const QuoteInfo& quote);

// The pcrDigest a quote over `values` (ascending PCR order) carries with SHA-256:
// SHA-256(values[0] || values[1] || ...).
PcrDigest PcrCompositeDigest(std::span<const PcrDigest> values);

// --- TPMT_SIGNATURE -----------------------------------------------------------------------------
//
//   u16 sigAlg    ECDSA:  u16 hash, TPM2B_ECC_PARAMETER signatureR, TPM2B_ECC_PARAMETER signatureS
//                 RSASSA: u16 hash, TPM2B_PUBLIC_KEY_RSA sig
// Here hash is SHA-256, r and s are 1..32 bytes (P-256), an RSA signature 1..kMaxTpmRsaBytes.
struct TpmSignature {
  uint16_t sig_alg = kTpmAlgEcdsa;  // kTpmAlgEcdsa or kTpmAlgRsassa
  uint16_t hash_alg = kTpmAlgSha256;
  Bytes ecdsa_r;  // ECDSA: big-endian integers
  Bytes ecdsa_s;
  Bytes rsa_signature;  // RSASSA (PKCS#1 v1.5)
  bool operator==(const TpmSignature&) const = default;
};

Result<TpmSignature> ParseSignature(ByteSpan tpmt_signature);
// Writes the fields of sig_alg's variant; the other variant's fields are ignored. Preconditions
// as for parsing (else sizes are cut to their maxima).
Bytes EncodeSignature(const TpmSignature& sig);

// --- TPMT_PUBLIC --------------------------------------------------------------------------------
//
//   u16 type (ECC | RSA), u16 nameAlg (= SHA-256), u32 objectAttributes,
//   TPM2B_DIGEST authPolicy (<= 64),
//   parameters  TPMT_SYM_DEF_OBJECT symmetric: u16 algorithm; unless NULL: u16 keyBits, u16 mode
//               scheme: u16 scheme; unless NULL or RSAES: u16 hash (ECDAA is unsupported)
//               ECC: u16 curveID (= NIST P-256), TPMT_KDF_SCHEME kdf: u16 scheme; unless NULL:
//                    u16 hash
//               RSA: u16 keyBits (= 2048), u32 exponent (0 = 65537)
//   unique      ECC: TPMS_ECC_POINT: TPM2B x (1..32 bytes), TPM2B y (1..32 bytes)
//               RSA: TPM2B modulus (256 bytes)
// Parsing also checks that the key is a valid public key (a point on the curve; a 2048-bit
// modulus OpenSSL accepts).
struct TpmPublic {
  uint16_t type = kTpmAlgEcc;  // kTpmAlgEcc or kTpmAlgRsa
  uint16_t name_alg = kTpmAlgSha256;
  uint32_t object_attributes = 0;  // kTpma* bits
  Bytes auth_policy;
  uint16_t symmetric = kTpmAlgNull;  // TPMT_SYM_DEF_OBJECT algorithm (AES, SM4, CAMELLIA, NULL)
  uint16_t symmetric_key_bits = 0;   // meaningful unless symmetric is NULL
  uint16_t symmetric_mode = 0;
  uint16_t scheme = kTpmAlgNull;  // e.g. kTpmAlgEcdsa; NULL: chosen at signing time
  uint16_t scheme_hash = 0;       // meaningful unless scheme is NULL or RSAES
  // ECC.
  uint16_t curve = 0;
  uint16_t kdf = kTpmAlgNull;
  uint16_t kdf_hash = 0;  // meaningful unless kdf is NULL
  Bytes ecc_x;
  Bytes ecc_y;
  // RSA.
  uint16_t rsa_key_bits = 0;
  uint32_t rsa_exponent = 0;  // 0 means 65537
  Bytes rsa_modulus;

  // Derived by ParsePublic and PublicFromKey; ignored by EncodePublic.
  Bytes spki_der;  // the public key as a DER SubjectPublicKeyInfo
  Bytes name;      // the object's Name: u16 nameAlg (0x000b) || SHA-256(TPMT_PUBLIC bytes)

  bool Has(uint32_t attributes) const { return (object_attributes & attributes) == attributes; }
  const Bytes& Name() const { return name; }
  bool operator==(const TpmPublic&) const = default;
};

Result<TpmPublic> ParsePublic(ByteSpan tpmt_public);
// Marshals the wire fields (not spki_der / name). Preconditions as for parsing.
Bytes EncodePublic(const TpmPublic& pub);
// The Name of a TPMT_PUBLIC with nameAlg SHA-256: 0x000b || SHA-256(tpmt_public).
Bytes PublicName(ByteSpan tpmt_public);

// Qualified Names (TPM 2.0 Part 1, "Qualified Name"): what a quote's qualifiedSigner holds. An
// object's Qualified Name is 0x000b || SHA-256(parent's Qualified Name || object's Name); a
// hierarchy's Qualified Name is its handle (4 bytes, big-endian), so a primary key's is
// QualifiedName(HierarchyName(hierarchy), name).
inline constexpr uint32_t kTpmRhOwner = 0x40000001;
inline constexpr uint32_t kTpmRhEndorsement = 0x4000000b;
inline constexpr uint32_t kTpmRhPlatform = 0x4000000c;
Bytes HierarchyName(uint32_t hierarchy_handle);
Bytes QualifiedName(ByteSpan parent_qualified_name, ByteSpan name);

// OK when `ak` can be an attestation key whose quotes a verifier may trust: a restricted signing
// key (not also a decryption key) that never leaves its TPM (fixedTPM, fixedParent), with scheme
// NULL or ECDSA/RSASSA with SHA-256 for its type. kInvalidArgument naming what is missing.
Status CheckAttestationKey(const TpmPublic& ak);
// OK when `ek` looks like an endorsement key: a restricted decryption key (not a signing key)
// with fixedTPM and fixedParent. kInvalidArgument naming what is missing.
Status CheckEndorsementKey(const TpmPublic& ek);

// Verifies a TPM's signature over `message` (the TPM signed SHA-256(message); for a quote,
// `message` is the TPMS_ATTEST bytes) with `key` (as ParsePublic returns it: spki_der set).
// The signature algorithm must fit the key's type and, unless the key's scheme is NULL, its
// scheme and hash. OK; kIntegrity "TPM signature does not verify" (wrong key, altered message or
// signature, algorithm mismatch); kInvalidArgument when `key` has no usable spki_der; kCrypto
// when OpenSSL fails.
Status VerifyTpmSignature(const TpmPublic& key, ByteSpan message, const TpmSignature& sig);

// --- Software keys (tests, simulations) ---------------------------------------------------------

// The TpmPublic of an OpenSSL key (EC P-256 or RSA-2048; the public half is used), nameAlg
// SHA-256, empty authPolicy, `object_attributes` as given. A signing key (kTpmaSign) gets scheme
// ECDSA or RSASSA with SHA-256; a restricted decryption key gets AES-128-CFB (symmetric) and
// scheme NULL; anything else NULL for both. spki_der and name are filled in.
// kInvalidArgument for another kind of key.
Result<TpmPublic> PublicFromKey(const evp_pkey_st* key, uint32_t object_attributes);

// What a TPM's signing key would return for `message`: the marshalled TPMT_SIGNATURE of ECDSA
// (P-256) or RSASSA (RSA-2048) over SHA-256(message) made with `private_key`. kInvalidArgument
// for another kind of key, kCrypto when OpenSSL fails.
Result<Bytes> SoftwareTpmSign(evp_pkey_st* private_key, ByteSpan message);

}  // namespace sod::attest
