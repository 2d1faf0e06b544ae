// The attestation core without a TPM device (attest/tpm_wire.h, evidence.h, enrollment.h,
// verifier.h): TPM structures built byte by byte from TPM 2.0 Part 2 and cross-checked with
// tpm2-tss's marshalling, evidence golden bytes and round trips, enrollment records and
// directories, and the verifier against a software "TPM" (an OpenSSL key as AK): the genuine
// case, then every attack it must refuse, each with its reason.
#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <tss2/tss2_mu.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "attest/enrollment.h"
#include "attest/evidence.h"
#include "attest/tpm_wire.h"
#include "attest/verifier.h"
#include "base/openssl_ptr.h"

namespace sod::attest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using PkeyPtr = OpensslPtr<EVP_PKEY, EVP_PKEY_free>;

// --- helpers ------------------------------------------------------------------------------------

PkeyPtr NewEcKey() {
  PkeyPtr k(EVP_EC_gen("P-256"));
  EXPECT_TRUE(k);
  return k;
}

PkeyPtr NewRsaKey() {
  PkeyPtr k(EVP_RSA_gen(2048));
  EXPECT_TRUE(k);
  return k;
}

void Append(Bytes& b, std::initializer_list<uint8_t> bytes) { b.insert(b.end(), bytes); }
void AppendN(Bytes& b, size_t n, uint8_t v) { b.insert(b.end(), n, v); }
void AppendSpan(Bytes& b, ByteSpan s) { b.insert(b.end(), s.begin(), s.end()); }

PcrDigest Filled(uint8_t v) {
  PcrDigest d;
  d.fill(v);
  return d;
}

PcrSelection Select(std::initializer_list<uint32_t> pcrs) {
  PcrSelection s;
  for (uint32_t p : pcrs) s.mask |= 1u << p;
  return s;
}

Bytes Spki(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  EXPECT_GT(len, 0);
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Reasons(const Verdict& v) {
  std::string s;
  for (const auto& r : v.reasons) s += "\n  - " + r;
  return s;
}

bool HasReason(const Verdict& v, std::string_view needle) {
  return std::any_of(v.reasons.begin(), v.reasons.end(),
                     [&](const std::string& r) { return Contains(r, needle); });
}

// --- TPMS_ATTEST --------------------------------------------------------------------------------

// A quote's TPMS_ATTEST written byte by byte from TPM 2.0 Part 2 (10.12.12 TPMS_ATTEST,
// 10.12.1 TPMS_CLOCK_INFO, 10.12.4 TPMS_QUOTE_INFO, 10.9.7 TPML_PCR_SELECTION).
Bytes HandBuiltQuoteAttest() {
  Bytes b;
  Append(b, {0xff, 0x54, 0x43, 0x47});  // magic: TPM_GENERATED_VALUE
  Append(b, {0x80, 0x18});              // type: TPM_ST_ATTEST_QUOTE
  Append(b, {0x00, 0x22});              // qualifiedSigner: TPM2B_NAME, 34 bytes
  Append(b, {0x00, 0x0b});              //   nameAlg SHA-256
  AppendN(b, 32, 0xa5);                 //   digest
  Append(b, {0x00, 0x20});              // extraData: TPM2B_DATA, 32 bytes
  for (uint8_t i = 0; i < 32; ++i) b.push_back(i);
  Append(b, {0, 0, 0, 0, 0, 0x01, 0xe2, 0x40});                 // clockInfo.clock = 123456
  Append(b, {0, 0, 0, 3});                                      // clockInfo.resetCount = 3
  Append(b, {0, 0, 0, 1});                                      // clockInfo.restartCount = 1
  Append(b, {1});                                               // clockInfo.safe = YES
  Append(b, {0x20, 0x23, 0x11, 0x14, 0x00, 0x12, 0x34, 0x56});  // firmwareVersion
  Append(b, {0, 0, 0, 1});                                      // pcrSelect.count = 1
  Append(b, {0x00, 0x0b});                                      //   hash = SHA-256
  Append(b, {3});                                               //   sizeofSelect = 3
  Append(b, {0xff, 0x40, 0});                                   //   PCRs 0..7 and 14
  Append(b, {0x00, 0x20});                                      // pcrDigest: TPM2B_DIGEST, 32 bytes
  AppendN(b, 32, 0x5c);
  return b;
}

TEST(TpmWireTest, ParsesAHandBuiltQuoteAttest) {
  const Bytes b = HandBuiltQuoteAttest();
  ASSERT_EQ(b.size(), 4 + 2 + 36 + 34 + 17 + 8 + 10 + 34u);
  auto q = ParseQuoteAttest(b);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  Bytes signer = {0x00, 0x0b};
  AppendN(signer, 32, 0xa5);
  EXPECT_EQ(q->qualified_signer, signer);
  ASSERT_EQ(q->extra_data.size(), 32u);
  for (uint8_t i = 0; i < 32; ++i) EXPECT_EQ(q->extra_data[i], i);
  EXPECT_EQ(q->clock, 123456u);
  EXPECT_EQ(q->reset_count, 3u);
  EXPECT_EQ(q->restart_count, 1u);
  EXPECT_TRUE(q->safe);
  EXPECT_EQ(q->firmware_version, 0x2023111400123456ull);
  EXPECT_EQ(q->pcr_selection, DefaultQuoteSelection());
  EXPECT_EQ(q->pcr_selection.Indices(), (std::vector<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 14}));
  EXPECT_EQ(q->pcr_digest, Bytes(32, 0x5c));
  // Canonical: our encoder writes the same bytes back.
  EXPECT_EQ(EncodeQuoteAttest(*q), b);
}

TEST(TpmWireTest, QuoteAttestAgreesWithTss2Unmarshal) {
  const Bytes b = HandBuiltQuoteAttest();
  TPMS_ATTEST a{};
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMS_ATTEST_Unmarshal(b.data(), b.size(), &off, &a), TSS2_RC_SUCCESS);
  EXPECT_EQ(off, b.size());
  auto q = ParseQuoteAttest(b);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_EQ(a.magic, kTpmGeneratedValue);
  EXPECT_EQ(a.type, kTpmStAttestQuote);
  EXPECT_EQ(Bytes(a.qualifiedSigner.name, a.qualifiedSigner.name + a.qualifiedSigner.size),
            q->qualified_signer);
  EXPECT_EQ(Bytes(a.extraData.buffer, a.extraData.buffer + a.extraData.size), q->extra_data);
  EXPECT_EQ(a.clockInfo.clock, q->clock);
  EXPECT_EQ(a.clockInfo.resetCount, q->reset_count);
  EXPECT_EQ(a.clockInfo.restartCount, q->restart_count);
  EXPECT_EQ(a.clockInfo.safe, q->safe ? 1 : 0);
  EXPECT_EQ(a.firmwareVersion, q->firmware_version);
  const TPML_PCR_SELECTION& sel = a.attested.quote.pcrSelect;
  ASSERT_EQ(sel.count, 1u);
  EXPECT_EQ(sel.pcrSelections[0].hash, TPM2_ALG_SHA256);
  ASSERT_EQ(sel.pcrSelections[0].sizeofSelect, 3);
  uint32_t mask = sel.pcrSelections[0].pcrSelect[0] | (sel.pcrSelections[0].pcrSelect[1] << 8) |
                  (sel.pcrSelections[0].pcrSelect[2] << 16);
  EXPECT_EQ(mask, q->pcr_selection.mask);
  const TPM2B_DIGEST& d = a.attested.quote.pcrDigest;
  EXPECT_EQ(Bytes(d.buffer, d.buffer + d.size), q->pcr_digest);
}

// The other direction: tpm2-tss marshals random quotes to exactly our encoding, and we parse
// what it marshals.
TEST(TpmWireTest, QuoteAttestEncodingMatchesTss2Marshal) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    QuoteInfo q;
    q.qualified_signer.resize(rng() % (kMaxTpmName + 1));
    for (auto& c : q.qualified_signer) c = static_cast<uint8_t>(rng());
    // tpm2-tss sizes TPM2B_DATA as sizeof(TPMU_HA) (64), Part 2 as sizeof(TPMT_HA) (66).
    q.extra_data.resize(rng() % (std::min(kMaxTpmData, sizeof(TPMU_HA)) + 1));
    for (auto& c : q.extra_data) c = static_cast<uint8_t>(rng());
    q.clock = rng();
    q.reset_count = static_cast<uint32_t>(rng());
    q.restart_count = static_cast<uint32_t>(rng());
    q.safe = rng() & 1;
    q.firmware_version = rng();
    q.pcr_selection.mask = static_cast<uint32_t>(rng()) & 0xffffff;
    q.pcr_digest.resize(rng() % (kMaxTpmDigest + 1));
    for (auto& c : q.pcr_digest) c = static_cast<uint8_t>(rng());

    TPMS_ATTEST a{};
    a.magic = TPM2_GENERATED_VALUE;
    a.type = TPM2_ST_ATTEST_QUOTE;
    a.qualifiedSigner.size = static_cast<UINT16>(q.qualified_signer.size());
    std::copy(q.qualified_signer.begin(), q.qualified_signer.end(), a.qualifiedSigner.name);
    a.extraData.size = static_cast<UINT16>(q.extra_data.size());
    std::copy(q.extra_data.begin(), q.extra_data.end(), a.extraData.buffer);
    a.clockInfo = {q.clock, q.reset_count, q.restart_count, static_cast<TPMI_YES_NO>(q.safe)};
    a.firmwareVersion = q.firmware_version;
    TPML_PCR_SELECTION& sel = a.attested.quote.pcrSelect;
    sel.count = 1;
    sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
    sel.pcrSelections[0].sizeofSelect = 3;
    for (int i = 0; i < 3; ++i)
      sel.pcrSelections[0].pcrSelect[i] = static_cast<BYTE>(q.pcr_selection.mask >> (8 * i));
    a.attested.quote.pcrDigest.size = static_cast<UINT16>(q.pcr_digest.size());
    std::copy(q.pcr_digest.begin(), q.pcr_digest.end(), a.attested.quote.pcrDigest.buffer);
    Bytes tss(sizeof(TPMS_ATTEST));
    size_t off = 0;
    ASSERT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&a, tss.data(), tss.size(), &off), TSS2_RC_SUCCESS);
    tss.resize(off);

    ASSERT_EQ(EncodeQuoteAttest(q), tss) << "round " << round;
    auto back = ParseQuoteAttest(tss);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, q);
  }
}

TEST(TpmWireTest, QuoteAttestRefusesBadInput) {
  const Bytes good = HandBuiltQuoteAttest();
  // Every truncation.
  for (size_t n = 0; n < good.size(); ++n) {
    auto q = ParseQuoteAttest(ByteSpan(good).first(n));
    ASSERT_FALSE(q.ok()) << n;
    EXPECT_EQ(q.status().code(), Errc::kMalformed) << n;
    EXPECT_TRUE(Contains(q.status().message(), "TPMS_ATTEST: truncated at"))
        << q.status().message();
  }
  struct Case {
    const char* what;
    std::function<void(Bytes&)> mutate;
    Errc code;
    const char* field;
  };
  const size_t kExtra = 4 + 2 + 36;       // extraData size
  const size_t kSafe = kExtra + 34 + 16;  // clockInfo.safe
  const size_t kCount = kSafe + 1 + 8;    // pcrSelect.count
  const std::vector<Case> cases = {
      {"trailing byte", [](Bytes& b) { b.push_back(0); }, Errc::kMalformed, "trailing"},
      {"magic", [](Bytes& b) { b[0] = 0xfe; }, Errc::kMalformed, "magic"},
      {"certify type", [](Bytes& b) { b[5] = 0x17; }, Errc::kUnsupported, "type"},
      {"qualifiedSigner over TPM2B_NAME", [](Bytes& b) { b[6] = 0x01; }, Errc::kMalformed,
       "qualifiedSigner"},
      {"extraData over TPM2B_DATA", [&](Bytes& b) { b[kExtra + 1] = 67; }, Errc::kMalformed,
       "extraData"},
      {"safe is 2", [&](Bytes& b) { b[kSafe] = 2; }, Errc::kMalformed, "clockInfo.safe"},
      {"two banks", [&](Bytes& b) { b[kCount + 3] = 2; }, Errc::kUnsupported, "pcrSelect.count"},
      {"no bank", [&](Bytes& b) { b[kCount + 3] = 0; }, Errc::kUnsupported, "pcrSelect.count"},
      {"SHA-1 bank", [&](Bytes& b) { b[kCount + 5] = 0x04; }, Errc::kUnsupported, "pcrSelect.hash"},
      {"sizeofSelect 4", [&](Bytes& b) { b[kCount + 6] = 4; }, Errc::kUnsupported, "sizeofSelect"},
      {"pcrDigest over TPM2B_DIGEST", [&](Bytes& b) { b[kCount + 10 + 1] = 65; }, Errc::kMalformed,
       "pcrDigest"},
  };
  for (const Case& c : cases) {
    Bytes b = good;
    c.mutate(b);
    auto q = ParseQuoteAttest(b);
    ASSERT_FALSE(q.ok()) << c.what;
    EXPECT_EQ(q.status().code(), c.code) << c.what << ": " << q.status().ToString();
    EXPECT_TRUE(Contains(q.status().message(), c.field)) << c.what << ": " << q.status().message();
  }
}

TEST(TpmWireTest, PcrCompositeDigestIsTheHashOfTheConcatenation) {
  std::vector<PcrDigest> values = {Filled(1), Filled(2)};
  Bytes concat(32, 1);
  AppendN(concat, 32, 2);
  EXPECT_EQ(PcrCompositeDigest(values), Sha256(concat));
  // SHA-256 of the empty string, a known answer.
  EXPECT_EQ(ToHex(Sha256({})), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

// --- TPMT_SIGNATURE -----------------------------------------------------------------------------

Bytes HandBuiltEcdsaSignature() {
  Bytes b;
  Append(b, {0x00, 0x18});  // sigAlg: TPM_ALG_ECDSA
  Append(b, {0x00, 0x0b});  // hash: SHA-256
  Append(b, {0x00, 0x20});  // signatureR: 32 bytes
  AppendN(b, 32, 0x01);
  Append(b, {0x00, 0x20});  // signatureS: 32 bytes
  AppendN(b, 32, 0x02);
  return b;
}

TEST(TpmWireTest, ParsesAHandBuiltEcdsaSignatureLikeTss2) {
  const Bytes b = HandBuiltEcdsaSignature();
  auto s = ParseSignature(b);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->sig_alg, kTpmAlgEcdsa);
  EXPECT_EQ(s->hash_alg, kTpmAlgSha256);
  EXPECT_EQ(s->ecdsa_r, Bytes(32, 1));
  EXPECT_EQ(s->ecdsa_s, Bytes(32, 2));
  EXPECT_EQ(EncodeSignature(*s), b);

  TPMT_SIGNATURE t{};
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Unmarshal(b.data(), b.size(), &off, &t), TSS2_RC_SUCCESS);
  EXPECT_EQ(off, b.size());
  EXPECT_EQ(t.sigAlg, TPM2_ALG_ECDSA);
  EXPECT_EQ(t.signature.ecdsa.hash, TPM2_ALG_SHA256);
  EXPECT_EQ(Bytes(t.signature.ecdsa.signatureR.buffer,
                  t.signature.ecdsa.signatureR.buffer + t.signature.ecdsa.signatureR.size),
            s->ecdsa_r);
  EXPECT_EQ(Bytes(t.signature.ecdsa.signatureS.buffer,
                  t.signature.ecdsa.signatureS.buffer + t.signature.ecdsa.signatureS.size),
            s->ecdsa_s);
}

TEST(TpmWireTest, RsassaSignatureMatchesTss2Marshal) {
  TPMT_SIGNATURE t{};
  t.sigAlg = TPM2_ALG_RSASSA;
  t.signature.rsassa.hash = TPM2_ALG_SHA256;
  t.signature.rsassa.sig.size = 256;
  for (int i = 0; i < 256; ++i) t.signature.rsassa.sig.buffer[i] = static_cast<BYTE>(i);
  Bytes tss(sizeof(TPMT_SIGNATURE));
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&t, tss.data(), tss.size(), &off), TSS2_RC_SUCCESS);
  tss.resize(off);
  auto s = ParseSignature(tss);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->sig_alg, kTpmAlgRsassa);
  EXPECT_EQ(s->rsa_signature.size(), 256u);
  EXPECT_EQ(EncodeSignature(*s), tss);
}

TEST(TpmWireTest, SignatureRefusesBadInput) {
  const Bytes good = HandBuiltEcdsaSignature();
  for (size_t n = 0; n < good.size(); ++n) {
    auto s = ParseSignature(ByteSpan(good).first(n));
    ASSERT_FALSE(s.ok()) << n;
    EXPECT_EQ(s.status().code(), Errc::kMalformed) << n;
  }
  struct Case {
    const char* what;
    std::function<void(Bytes&)> mutate;
    Errc code;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"trailing byte", [](Bytes& b) { b.push_back(0); }, Errc::kMalformed, "trailing"},
      {"HMAC", [](Bytes& b) { b[1] = 0x05; }, Errc::kUnsupported, "sigAlg"},
      {"RSAPSS", [](Bytes& b) { b[1] = 0x16; }, Errc::kUnsupported, "sigAlg"},
      {"SHA-1", [](Bytes& b) { b[3] = 0x04; }, Errc::kUnsupported, "hash"},
      {"r of 33 bytes (not P-256)", [](Bytes& b) { b[5] = 33; }, Errc::kUnsupported, "signatureR"},
      {"r over MAX_ECC_KEY_BYTES", [](Bytes& b) { b[4] = 0x01; }, Errc::kMalformed, "signatureR"},
      {"empty r",
       [](Bytes& b) {
         b[5] = 0;
         b.erase(b.begin() + 6, b.begin() + 38);
       },
       Errc::kMalformed, "signatureR"},
      {"empty s",
       [](Bytes& b) {
         b.erase(b.end() - 32, b.end());
         b.back() = 0;
       },
       Errc::kMalformed, "signatureS"},
  };
  for (const Case& c : cases) {
    Bytes b = good;
    c.mutate(b);
    auto s = ParseSignature(b);
    ASSERT_FALSE(s.ok()) << c.what;
    EXPECT_EQ(s.status().code(), c.code) << c.what << ": " << s.status().ToString();
    EXPECT_TRUE(Contains(s.status().message(), c.field)) << c.what << ": " << s.status().message();
  }
}

// --- TPMT_PUBLIC --------------------------------------------------------------------------------

TEST(TpmWireTest, EccAttestationKeyPublicAreaByteByByte) {
  PkeyPtr key = NewEcKey();
  auto pub = PublicFromKey(key.get(), kAkAttributes);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  const Bytes b = EncodePublic(*pub);
  Bytes want;
  Append(want, {0x00, 0x23});              // type: TPM_ALG_ECC
  Append(want, {0x00, 0x0b});              // nameAlg: SHA-256
  Append(want, {0x00, 0x05, 0x00, 0x72});  // objectAttributes
  Append(want, {0x00, 0x00});              // authPolicy: empty
  Append(want, {0x00, 0x10});              // symmetric: TPM_ALG_NULL
  Append(want, {0x00, 0x18, 0x00, 0x0b});  // scheme: ECDSA, SHA-256
  Append(want, {0x00, 0x03});              // curveID: NIST P-256
  Append(want, {0x00, 0x10});              // kdf: TPM_ALG_NULL
  Append(want, {0x00, 0x20});              // unique.x
  AppendSpan(want, pub->ecc_x);
  Append(want, {0x00, 0x20});  // unique.y
  AppendSpan(want, pub->ecc_y);
  EXPECT_EQ(b, want);

  auto parsed = ParsePublic(b);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, *pub);
  EXPECT_EQ(parsed->object_attributes, 0x00050072u);
  EXPECT_EQ(parsed->spki_der, Spki(key.get()));
  // Name = nameAlg || SHA-256(TPMT_PUBLIC).
  Bytes name = {0x00, 0x0b};
  AppendSpan(name, Sha256(b));
  EXPECT_EQ(parsed->Name(), name);
  EXPECT_EQ(PublicName(b), name);
  EXPECT_TRUE(CheckAttestationKey(*parsed).ok());
  EXPECT_FALSE(CheckEndorsementKey(*parsed).ok());

  // tpm2-tss reads the same fields.
  TPMT_PUBLIC t{};
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_PUBLIC_Unmarshal(b.data(), b.size(), &off, &t), TSS2_RC_SUCCESS);
  EXPECT_EQ(off, b.size());
  EXPECT_EQ(t.type, TPM2_ALG_ECC);
  EXPECT_EQ(t.objectAttributes, kAkAttributes);
  EXPECT_EQ(t.parameters.eccDetail.scheme.scheme, TPM2_ALG_ECDSA);
  EXPECT_EQ(t.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  EXPECT_EQ(Bytes(t.unique.ecc.x.buffer, t.unique.ecc.x.buffer + t.unique.ecc.x.size), pub->ecc_x);
}

// The TCG default ECC EK (template L-2, as esys_tpm.cc makes it), marshalled by tpm2-tss with a
// real point: we parse it and write it back identically.
TEST(TpmWireTest, TcgEccEndorsementKeyFromTss2) {
  PkeyPtr key = NewEcKey();
  auto ours = PublicFromKey(key.get(), kEkAttributes);
  ASSERT_TRUE(ours.ok());
  TPMT_PUBLIC t{};
  t.type = TPM2_ALG_ECC;
  t.nameAlg = TPM2_ALG_SHA256;
  t.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                       TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  t.authPolicy.size = 32;
  std::fill_n(t.authPolicy.buffer, 32, 0x83);
  t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  t.parameters.eccDetail.symmetric.keyBits.aes = 128;
  t.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  t.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  t.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  t.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  t.unique.ecc.x.size = 32;
  t.unique.ecc.y.size = 32;
  std::copy(ours->ecc_x.begin(), ours->ecc_x.end(), t.unique.ecc.x.buffer);
  std::copy(ours->ecc_y.begin(), ours->ecc_y.end(), t.unique.ecc.y.buffer);
  Bytes tss(sizeof(TPMT_PUBLIC));
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_PUBLIC_Marshal(&t, tss.data(), tss.size(), &off), TSS2_RC_SUCCESS);
  tss.resize(off);

  auto ek = ParsePublic(tss);
  ASSERT_TRUE(ek.ok()) << ek.status().ToString();
  EXPECT_EQ(ek->object_attributes, 0x000300b2u);
  EXPECT_EQ(ek->symmetric, kTpmAlgAes);
  EXPECT_EQ(ek->symmetric_key_bits, 128);
  EXPECT_EQ(ek->symmetric_mode, kTpmAlgCfb);
  EXPECT_EQ(ek->auth_policy, Bytes(32, 0x83));
  EXPECT_EQ(ek->spki_der, Spki(key.get()));
  EXPECT_EQ(EncodePublic(*ek), tss);
  EXPECT_TRUE(CheckEndorsementKey(*ek).ok());
  EXPECT_EQ(CheckAttestationKey(*ek).code(), Errc::kInvalidArgument);
  // Without the authPolicy it is exactly what PublicFromKey makes.
  ours->auth_policy = ek->auth_policy;
  EXPECT_EQ(EncodePublic(*ours), tss);
}

TEST(TpmWireTest, RsaAttestationKeyRoundTripsAndMatchesTss2) {
  PkeyPtr key = NewRsaKey();
  auto pub = PublicFromKey(key.get(), kAkAttributes);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(pub->type, kTpmAlgRsa);
  EXPECT_EQ(pub->rsa_exponent, 0u);  // 65537, the TPM default
  const Bytes b = EncodePublic(*pub);
  auto parsed = ParsePublic(b);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, *pub);
  EXPECT_EQ(parsed->spki_der, Spki(key.get()));
  EXPECT_TRUE(CheckAttestationKey(*parsed).ok());

  TPMT_PUBLIC t{};
  t.type = TPM2_ALG_RSA;
  t.nameAlg = TPM2_ALG_SHA256;
  t.objectAttributes = kAkAttributes;
  t.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
  t.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSASSA;
  t.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
  t.parameters.rsaDetail.keyBits = 2048;
  t.parameters.rsaDetail.exponent = 0;
  t.unique.rsa.size = 256;
  std::copy(pub->rsa_modulus.begin(), pub->rsa_modulus.end(), t.unique.rsa.buffer);
  Bytes tss(sizeof(TPMT_PUBLIC));
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_PUBLIC_Marshal(&t, tss.data(), tss.size(), &off), TSS2_RC_SUCCESS);
  tss.resize(off);
  EXPECT_EQ(b, tss);
}

TEST(TpmWireTest, PublicRefusesBadInput) {
  PkeyPtr key = NewEcKey();
  const Bytes good = EncodePublic(PublicFromKey(key.get(), kAkAttributes).value());
  for (size_t n = 0; n < good.size(); ++n) {
    auto p = ParsePublic(ByteSpan(good).first(n));
    ASSERT_FALSE(p.ok()) << n;
    EXPECT_EQ(p.status().code(), Errc::kMalformed) << n;
  }
  // Offsets into `good`: type 0, nameAlg 2, attributes 4, authPolicy 8, symmetric 10,
  // scheme 12, scheme hash 14, curveID 16, kdf 18, x 20 (size) 22.., y 54 (size) 56..
  struct Case {
    const char* what;
    std::function<void(Bytes&)> mutate;
    Errc code;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"trailing byte", [](Bytes& b) { b.push_back(0); }, Errc::kMalformed, "trailing"},
      {"KEYEDHASH type", [](Bytes& b) { b[1] = 0x08; }, Errc::kUnsupported, "type"},
      {"SHA-1 nameAlg", [](Bytes& b) { b[3] = 0x04; }, Errc::kUnsupported, "nameAlg"},
      {"XOR symmetric", [](Bytes& b) { b[11] = 0x0a; }, Errc::kUnsupported, "symmetric"},
      {"ECDAA scheme", [](Bytes& b) { b[13] = 0x1a; }, Errc::kUnsupported, "scheme"},
      {"RSASSA scheme on ECC", [](Bytes& b) { b[13] = 0x14; }, Errc::kUnsupported, "scheme"},
      {"P-384", [](Bytes& b) { b[17] = 0x04; }, Errc::kUnsupported, "curveID"},
      {"unknown kdf", [](Bytes& b) { b[19] = 0x99; }, Errc::kUnsupported, "kdf"},
      {"x of 33 bytes", [](Bytes& b) { b[21] = 33; }, Errc::kUnsupported, "unique.x"},
      {"empty x",
       [](Bytes& b) {
         b[21] = 0;
         b.erase(b.begin() + 22, b.begin() + 54);
       },
       Errc::kMalformed, "unique.x"},
      {"point off the curve", [](Bytes& b) { b[b.size() - 1] ^= 0x01; }, Errc::kMalformed,
       "unique"},
  };
  for (const Case& c : cases) {
    Bytes b = good;
    c.mutate(b);
    auto p = ParsePublic(b);
    ASSERT_FALSE(p.ok()) << c.what;
    EXPECT_EQ(p.status().code(), c.code) << c.what << ": " << p.status().ToString();
    EXPECT_TRUE(Contains(p.status().message(), c.field)) << c.what << ": " << p.status().message();
  }
  // RSA-1024 is not supported.
  PkeyPtr small(EVP_RSA_gen(1024));
  ASSERT_TRUE(small);
  EXPECT_EQ(PublicFromKey(small.get(), kAkAttributes).status().code(), Errc::kInvalidArgument);
  PkeyPtr rsa = NewRsaKey();
  Bytes r = EncodePublic(PublicFromKey(rsa.get(), kAkAttributes).value());
  r[16] = 0x04;  // keyBits 2048 (0x0800) -> 1024 (0x0400)
  EXPECT_EQ(ParsePublic(r).status().code(), Errc::kUnsupported);
  EXPECT_TRUE(Contains(ParsePublic(r).status().message(), "keyBits"));
}

TEST(TpmWireTest, AttestationKeyChecksNameWhatIsMissing) {
  PkeyPtr key = NewEcKey();
  struct Case {
    uint32_t attributes;
    const char* why;
  };
  for (const Case& c :
       std::vector<Case>{{kAkAttributes & ~kTpmaRestricted, "not restricted"},
                         {(kAkAttributes & ~kTpmaSign) | kTpmaDecrypt, "not a signing key"},
                         {kAkAttributes | kTpmaDecrypt, "also a decryption key"},
                         {kAkAttributes & ~kTpmaFixedTpm, "not fixedTPM"},
                         {kAkAttributes & ~kTpmaFixedParent, "not fixedParent"}}) {
    auto p = ParsePublic(EncodePublic(PublicFromKey(key.get(), c.attributes).value()));
    ASSERT_TRUE(p.ok());
    Status s = CheckAttestationKey(*p);
    EXPECT_EQ(s.code(), Errc::kInvalidArgument) << c.why;
    EXPECT_TRUE(Contains(s.message(), c.why)) << s.message();
  }
  // A restricted signing key with NULL scheme is fine; with ECDSA-SHA384 it is not.
  TpmPublic p = PublicFromKey(key.get(), kAkAttributes).value();
  p.scheme = kTpmAlgNull;
  EXPECT_TRUE(CheckAttestationKey(p).ok());
  p.scheme = kTpmAlgEcdsa;
  p.scheme_hash = kTpmAlgSha384;
  EXPECT_FALSE(CheckAttestationKey(p).ok());
}

TEST(TpmWireTest, SoftwareSignaturesVerifyAndForgeriesDoNot) {
  for (bool rsa : {false, true}) {
    SCOPED_TRACE(rsa ? "RSA-2048" : "P-256");
    PkeyPtr key = rsa ? NewRsaKey() : NewEcKey();
    PkeyPtr other = rsa ? NewRsaKey() : NewEcKey();
    const TpmPublic pub =
        ParsePublic(EncodePublic(PublicFromKey(key.get(), kAkAttributes).value())).value();
    const Bytes message = HandBuiltQuoteAttest();
    auto raw = SoftwareTpmSign(key.get(), message);
    ASSERT_TRUE(raw.ok()) << raw.status().ToString();
    auto sig = ParseSignature(*raw);
    ASSERT_TRUE(sig.ok()) << sig.status().ToString();
    EXPECT_EQ(sig->sig_alg, rsa ? kTpmAlgRsassa : kTpmAlgEcdsa);
    EXPECT_TRUE(VerifyTpmSignature(pub, message, *sig).ok());

    Bytes altered = message;
    altered[20] ^= 0x01;
    EXPECT_EQ(VerifyTpmSignature(pub, altered, *sig).code(), Errc::kIntegrity);
    auto forged = ParseSignature(SoftwareTpmSign(other.get(), message).value()).value();
    EXPECT_EQ(VerifyTpmSignature(pub, message, forged).code(), Errc::kIntegrity);
    TpmSignature flipped = *sig;
    (rsa ? flipped.rsa_signature : flipped.ecdsa_s)[5] ^= 0x80;
    EXPECT_EQ(VerifyTpmSignature(pub, message, flipped).code(), Errc::kIntegrity);
    TpmSignature wrong_alg = *sig;
    wrong_alg.sig_alg = rsa ? kTpmAlgEcdsa : kTpmAlgRsassa;
    EXPECT_EQ(VerifyTpmSignature(pub, message, wrong_alg).code(), Errc::kIntegrity);
  }
  TpmPublic empty;
  EXPECT_EQ(VerifyTpmSignature(empty, {}, TpmSignature{}).code(), Errc::kInvalidArgument);
}

// --- Evidence -----------------------------------------------------------------------------------

Evidence SmallEvidence() {
  Evidence e;
  e.host_id = "hb";
  e.architecture = "tpm";
  e.capability_row = "r";
  e.timestamp_unix_ms = 0x0102030405060708ull;
  e.violation_count = 2;
  e.pcrs.selection = Select({0, 14});
  e.pcrs.values = {Filled(0xaa), Filled(0xbb)};
  e.quote_attest = {0xde, 0xad};
  e.quote_signature = {0xbe};
  return e;
}

TEST(EvidenceTest, GoldenBytes) {
  Bytes want;
  Append(want, {0x01, 0x00});                 // version 1
  Append(want, {0x02, 0x00, 'h', 'b'});       // host_id
  Append(want, {0x03, 0x00, 't', 'p', 'm'});  // architecture
  Append(want, {0x01, 0x00, 'r'});            // capability_row
  Append(want, {8, 7, 6, 5, 4, 3, 2, 1});     // timestamp_unix_ms
  Append(want, {2, 0, 0, 0});                 // violation_count
  Append(want, {0x01, 0x40, 0x00, 0x00});     // pcr_mask: PCRs 0 and 14
  Append(want, {2, 0});                       // pcr_count
  AppendN(want, 32, 0xaa);                    // PCR 0
  AppendN(want, 32, 0xbb);                    // PCR 14
  Append(want, {2, 0, 0, 0, 0xde, 0xad});     // quote_attest
  Append(want, {1, 0, 0, 0, 0xbe});           // quote_signature
  EXPECT_EQ(EncodeEvidence(SmallEvidence()), want);
  auto back = DecodeEvidence(want);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, SmallEvidence());
}

TEST(EvidenceTest, RoundTripsAtTheLimits) {
  Evidence e;
  e.host_id = std::string(64, 'a');
  e.architecture = std::string(64, 'Z');
  e.capability_row = std::string(1019, 'x') + "\xc3\xa9\xe2\x82\xac";  // ends in UTF-8 "é€"
  ASSERT_EQ(e.capability_row.size(), kMaxEvidenceCapabilityRow);
  e.timestamp_unix_ms = UINT64_MAX;
  e.violation_count = UINT32_MAX;
  e.pcrs.selection.mask = 0xffffff;
  for (uint8_t i = 0; i < 24; ++i) e.pcrs.values.push_back(Filled(i));
  e.quote_attest.assign(kMaxQuoteAttest, 0x11);
  e.quote_signature.assign(kMaxQuoteSignature, 0x22);
  const Bytes b = EncodeEvidence(e);
  EXPECT_EQ(b.size(), kMaxEvidenceSize);
  auto back = DecodeEvidence(b);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, e);
  EXPECT_TRUE(ValidateEvidence(e).ok());
  // Empty selection and row are fine too.
  Evidence small = SmallEvidence();
  small.capability_row.clear();
  small.pcrs = {};
  EXPECT_EQ(DecodeEvidence(EncodeEvidence(small)).value(), small);
}

TEST(EvidenceTest, RefusesBadInput) {
  const Bytes good = EncodeEvidence(SmallEvidence());
  for (size_t n = 0; n < good.size(); ++n) {
    auto e = DecodeEvidence(ByteSpan(good).first(n));
    ASSERT_FALSE(e.ok()) << n;
    EXPECT_EQ(e.status().code(), Errc::kMalformed) << n << ": " << e.status().ToString();
  }
  struct Case {
    const char* what;
    std::function<void(Evidence&)> mutate;
    Errc code;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"host id too long", [](Evidence& e) { e.host_id = std::string(65, 'a'); }, Errc::kTooLarge,
       "host_id"},
      {"bad host id", [](Evidence& e) { e.host_id = "Host_A"; }, Errc::kMalformed, "host_id"},
      {"empty architecture", [](Evidence& e) { e.architecture.clear(); }, Errc::kMalformed,
       "architecture"},
      {"architecture with a space", [](Evidence& e) { e.architecture = "tpm host"; },
       Errc::kMalformed, "architecture"},
      {"row too long", [](Evidence& e) { e.capability_row = std::string(1025, 'r'); },
       Errc::kTooLarge, "capability_row"},
      {"row not UTF-8", [](Evidence& e) { e.capability_row = "\xff"; }, Errc::kMalformed,
       "capability_row"},
      {"empty quote", [](Evidence& e) { e.quote_attest.clear(); }, Errc::kMalformed,
       "quote_attest"},
      {"quote too long", [](Evidence& e) { e.quote_attest.assign(1025, 1); }, Errc::kTooLarge,
       "quote_attest"},
      {"empty signature", [](Evidence& e) { e.quote_signature.clear(); }, Errc::kMalformed,
       "quote_signature"},
      {"one value short", [](Evidence& e) { e.pcrs.values.pop_back(); }, Errc::kMalformed,
       "pcr_count"},
      {"one value too many", [](Evidence& e) { e.pcrs.values.push_back({}); }, Errc::kMalformed,
       "pcr_count"},
  };
  for (const Case& c : cases) {
    Evidence e = SmallEvidence();
    // Encode without the encoder's cuts, so the decoder sees the over-long field.
    c.mutate(e);
    Bytes b;
    ByteWriter w(b);
    w.U16(kEvidenceVersion);
    w.Str16(e.host_id);
    w.Str16(e.architecture);
    w.Str16(e.capability_row);
    w.U64(e.timestamp_unix_ms);
    w.U32(e.violation_count);
    w.U32(e.pcrs.selection.mask);
    w.U16(static_cast<uint16_t>(e.pcrs.values.size()));
    for (const auto& v : e.pcrs.values) w.Raw(v);
    w.Blob32(e.quote_attest);
    w.Blob32(e.quote_signature);
    auto d = DecodeEvidence(b);
    ASSERT_FALSE(d.ok()) << c.what;
    EXPECT_EQ(d.status().code(), c.code) << c.what << ": " << d.status().ToString();
    EXPECT_TRUE(Contains(d.status().message(), c.field)) << c.what << ": " << d.status().message();
    EXPECT_FALSE(ValidateEvidence(e).ok()) << c.what;
  }
  Bytes b = good;
  b[0] = 2;
  EXPECT_EQ(DecodeEvidence(b).status().code(), Errc::kUnsupported);
  b = good;
  b.push_back(0);
  EXPECT_TRUE(Contains(DecodeEvidence(b).status().message(), "trailing"));
  b = good;
  b[26 + 3] = 0x01;  // pcr_mask (at offset 26) bit 24
  EXPECT_TRUE(Contains(DecodeEvidence(b).status().message(), "above 23"));
  EXPECT_EQ(DecodeEvidence(Bytes(kMaxEvidenceSize + 1, 0)).status().code(), Errc::kTooLarge);
}

TEST(EvidenceTest, QualifyingDataIsTheSpecifiedHash) {
  const Bytes nonce(32, 0x11), binding(32, 0x22);
  Bytes in;
  AppendSpan(in, ByteSpan(reinterpret_cast<const uint8_t*>("sod-attest-v1"), 13));
  in.push_back(32);
  AppendSpan(in, nonce);
  in.push_back(32);
  AppendSpan(in, binding);
  PcrDigest claims{};
  claims.fill(0x33);
  AppendSpan(in, claims);
  EXPECT_EQ(QualifyingData(nonce, binding, claims), Sha256(in));
  // The length prefixes keep the two inputs apart.
  const Bytes ab = {'a', 'b'}, c = {'c'}, a = {'a'}, bc = {'b', 'c'};
  EXPECT_NE(QualifyingData(ab, c, claims), QualifyingData(a, bc, claims));
  EXPECT_NE(QualifyingData(nonce, binding, claims), QualifyingData(binding, nonce, claims));
}

TEST(EvidenceTest, ClaimsDigestIsTheSpecifiedHashAndCoversEveryClaim) {
  Evidence e;
  e.host_id = "hostb";
  e.architecture = "tpm-host";
  e.capability_row = "r";
  e.timestamp_unix_ms = 0x0102030405060708ull;
  e.violation_count = 3;
  Bytes in;
  AppendSpan(in, ByteSpan(reinterpret_cast<const uint8_t*>("sod-claims-v1"), 13));
  for (const std::string& s : {e.host_id, e.architecture, e.capability_row}) {
    in.push_back(static_cast<uint8_t>(s.size()));
    in.push_back(0);
    AppendSpan(in, ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }
  for (int i = 0; i < 8; ++i) in.push_back(static_cast<uint8_t>(8 - i));
  AppendSpan(in, Bytes{3, 0, 0, 0});
  EXPECT_EQ(ClaimsDigest(e), Sha256(in));
  const PcrDigest base = ClaimsDigest(e);
  for (int field = 0; field < 5; ++field) {
    Evidence f = e;
    switch (field) {
      case 0: f.host_id = "hosta"; break;
      case 1: f.architecture = "sev-host"; break;
      case 2: f.capability_row = "s"; break;
      case 3: f.timestamp_unix_ms++; break;
      case 4: f.violation_count = 0; break;
    }
    EXPECT_NE(ClaimsDigest(f), base) << "field " << field;
  }
}

TEST(EvidenceTest, ViolationPcrFollowsTheExtendChain) {
  Bytes event_in;
  AppendSpan(event_in, ByteSpan(reinterpret_cast<const uint8_t*>("sod-runtime-violation"), 21));
  Append(event_in, {1, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(ViolationEventDigest(1), Sha256(event_in));
  EXPECT_EQ(ViolationPcrValue(0), PcrDigest{});
  PcrDigest pcr{};
  for (uint64_t n = 1; n <= 3; ++n) {
    Bytes ext(pcr.begin(), pcr.end());
    const PcrDigest ev = ViolationEventDigest(n);
    ext.insert(ext.end(), ev.begin(), ev.end());
    pcr = Sha256(ext);
    EXPECT_EQ(ViolationPcrValue(static_cast<uint32_t>(n)), pcr) << n;
  }
  EXPECT_EQ(DefaultQuoteSelection().mask, 0x40ffu);
}

// --- A software TPM and host --------------------------------------------------------------------

// What a TPM does for sod, with an OpenSSL key as AK: PCRs, extends, signed quotes.
class SoftwareTpm {
 public:
  explicit SoftwareTpm(uint32_t ak_attributes = kAkAttributes, bool rsa = false)
      : ak_(rsa ? NewRsaKey() : NewEcKey()), ek_(NewEcKey()) {
    ak_public_ = EncodePublic(PublicFromKey(ak_.get(), ak_attributes).value());
    ek_public_ = EncodePublic(PublicFromKey(ek_.get(), kEkAttributes).value());
    for (uint32_t i = 0; i < 8; ++i) {
      const std::string event = "boot component " + std::to_string(i);
      Extend(i, Sha256(ByteSpan(reinterpret_cast<const uint8_t*>(event.data()), event.size())));
    }
  }

  const Bytes& ak_public() const { return ak_public_; }
  const Bytes& ek_public() const { return ek_public_; }
  Bytes qualified_signer;  // what the quotes name as signer, when not empty
  EVP_PKEY* ak_key() const { return ak_.get(); }

  void Extend(uint32_t pcr, const PcrDigest& digest) {
    Bytes b(pcrs_[pcr].begin(), pcrs_[pcr].end());
    b.insert(b.end(), digest.begin(), digest.end());
    pcrs_[pcr] = Sha256(b);
  }
  PcrValues Read(PcrSelection sel) const {
    PcrValues v{sel, {}};
    for (uint32_t i : sel.Indices()) v.values.push_back(pcrs_[i]);
    return v;
  }
  TpmQuote Quote(ByteSpan qualifying, PcrSelection sel) const {
    QuoteInfo q;
    // By default the AK is a primary key of the endorsement hierarchy, as EsysTpm makes it.
    q.qualified_signer = qualified_signer.empty() ? QualifiedName(HierarchyName(kTpmRhEndorsement),
                                                                  PublicName(ak_public_))
                                                  : qualified_signer;
    q.extra_data.assign(qualifying.begin(), qualifying.end());
    q.clock = 987654321;
    q.reset_count = 4;
    q.restart_count = 2;
    q.safe = true;
    q.firmware_version = 0x0001000200030004;
    q.pcr_selection = sel;
    TpmQuote out;
    out.pcrs = Read(sel);
    const PcrDigest composite = PcrCompositeDigest(out.pcrs.values);
    q.pcr_digest.assign(composite.begin(), composite.end());
    out.attest = EncodeQuoteAttest(q);
    out.signature = SoftwareTpmSign(ak_.get(), out.attest).value();
    return out;
  }

 private:
  PkeyPtr ak_, ek_;
  Bytes ak_public_, ek_public_;
  PcrDigest pcrs_[24] = {};
};

// A host on a software TPM, with the runtime monitor's violation counting.
struct SoftwareHost {
  std::string id;
  SoftwareTpm tpm;
  uint32_t violations = 0;

  explicit SoftwareHost(std::string host, uint32_t ak_attributes = kAkAttributes, bool rsa = false)
      : id(std::move(host)), tpm(ak_attributes, rsa) {}

  void RecordViolation() { tpm.Extend(kViolationPcr, ViolationEventDigest(++violations)); }

  // As HostAttester::Produce does it.
  Evidence Produce(ByteSpan nonce, ByteSpan binding, uint64_t now,
                   PcrSelection sel = DefaultQuoteSelection()) const {
    Evidence e;
    e.host_id = id;
    e.architecture = "tpm-host";
    e.capability_row = "{\"memory\":\"encrypted\"}";
    e.timestamp_unix_ms = now;
    e.violation_count = violations;
    TpmQuote quote = tpm.Quote(QualifyingData(nonce, binding, ClaimsDigest(e)), sel);
    e.pcrs = quote.pcrs;
    e.quote_attest = quote.attest;
    e.quote_signature = quote.signature;
    return e;
  }

  // The record an operator enrolls: AK, EK, PCRs 0-7 now.
  EnrollmentRecord Enrollment() const {
    EnrollmentRecord r;
    r.host_id = id;
    r.architecture = "tpm-host";
    r.ak_public = tpm.ak_public();
    r.ek_public = tpm.ek_public();
    PcrSelection golden = DefaultQuoteSelection();
    golden.mask &= ~(1u << kViolationPcr);
    PcrValues v = tpm.Read(golden);
    auto idx = v.selection.Indices();
    for (size_t i = 0; i < idx.size(); ++i) r.golden_pcrs[idx[i]] = v.values[i];
    r.enrolled_unix_ms = 1738324800000;
    return r;
  }
};

// --- Enrollment records -------------------------------------------------------------------------

TEST(EnrollmentTest, JsonRoundTripAndShape) {
  SoftwareHost h("hostb");
  const EnrollmentRecord r = h.Enrollment();
  ASSERT_TRUE(ValidateEnrollment(r).ok()) << ValidateEnrollment(r).ToString();
  const json j = EnrollmentToJson(r);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["host_id"], "hostb");
  EXPECT_EQ(j["architecture"], "tpm-host");
  EXPECT_EQ(j["ak_public"], ToHex(r.ak_public));
  EXPECT_EQ(j["ek_public"], ToHex(r.ek_public));
  EXPECT_EQ(j["golden_pcrs"]["bank"], "sha256");
  EXPECT_EQ(j["golden_pcrs"]["values"].size(), 8u);
  EXPECT_EQ(j["golden_pcrs"]["values"]["7"], ToHex(r.golden_pcrs.at(7)));
  EXPECT_EQ(j["enrolled_unix_ms"], 1738324800000ull);
  auto back = EnrollmentFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, r);
  // Through text, and with upper-case hex.
  json upper = json::parse(j.dump());
  std::string ak = upper["ak_public"];
  std::transform(ak.begin(), ak.end(), ak.begin(), ::toupper);
  upper["ak_public"] = ak;
  EXPECT_EQ(EnrollmentFromJson(upper).value(), r);
}

TEST(EnrollmentTest, JsonErrorsNameTheField) {
  SoftwareHost h("hostb");
  SoftwareHost unrestricted("hostc", kAkAttributes & ~kTpmaRestricted);
  const json good = EnrollmentToJson(h.Enrollment());
  const Bytes rsa_ek = EncodePublic(PublicFromKey(NewRsaKey().get(), kEkAttributes).value());
  struct Case {
    const char* what;
    std::function<void(json&)> mutate;
    const char* field;
    Errc code = Errc::kMalformed;
  };
  const std::vector<Case> cases = {
      {"not an object", [](json& j) { j = json::array(); }, "not a JSON object"},
      {"unknown key", [](json& j) { j["extra"] = 1; }, "unknown key \"extra\""},
      {"version 2", [](json& j) { j["version"] = 2; }, "version", Errc::kUnsupported},
      {"version string", [](json& j) { j["version"] = "1"; }, "version"},
      {"no host_id", [](json& j) { j.erase("host_id"); }, "host_id: missing"},
      {"bad host_id", [](json& j) { j["host_id"] = "Host B"; }, "host_id"},
      {"bad architecture", [](json& j) { j["architecture"] = "a/b"; }, "architecture"},
      {"ak_public odd hex", [](json& j) { j["ak_public"] = "abc"; }, "ak_public"},
      {"ak_public not hex", [](json& j) { j["ak_public"] = "zz"; }, "ak_public"},
      {"ak_public number", [](json& j) { j["ak_public"] = 5; }, "ak_public: not a string"},
      {"ak_public truncated",
       [](json& j) { j["ak_public"] = j["ak_public"].get<std::string>().substr(0, 40); },
       "ak_public: TPMT_PUBLIC: truncated"},
      {"ak_public too long", [](json& j) { j["ak_public"] = std::string(2050, 'a'); }, "ak_public"},
      {"AK not restricted", [&](json& j) { j["ak_public"] = ToHex(unrestricted.tpm.ak_public()); },
       "ak_public: not an attestation key: not restricted"},
      {"AK is the EK", [&](json& j) { j["ak_public"] = ToHex(h.tpm.ek_public()); },
       "ak_public: not an attestation key"},
      {"EK is the AK", [&](json& j) { j["ek_public"] = ToHex(h.tpm.ak_public()); },
       "ek_public: not an endorsement key"},
      {"golden bank sha1", [](json& j) { j["golden_pcrs"]["bank"] = "sha1"; }, "golden_pcrs.bank",
       Errc::kUnsupported},
      {"golden values missing", [](json& j) { j["golden_pcrs"].erase("values"); },
       "golden_pcrs.values: missing"},
      {"golden PCR 24", [](json& j) { j["golden_pcrs"]["values"]["24"] = std::string(64, '0'); },
       "golden_pcrs.values.24"},
      {"golden PCR 07", [](json& j) { j["golden_pcrs"]["values"]["07"] = std::string(64, '0'); },
       "golden_pcrs.values.07"},
      {"golden PCR -1", [](json& j) { j["golden_pcrs"]["values"]["-1"] = std::string(64, '0'); },
       "golden_pcrs.values.-1"},
      {"golden PCR 14", [](json& j) { j["golden_pcrs"]["values"]["14"] = std::string(64, '0'); },
       "golden_pcrs.values.14: PCR 14 is the violation PCR"},
      {"golden value short", [](json& j) { j["golden_pcrs"]["values"]["3"] = "abcd"; },
       "golden_pcrs.values.3: not 64 hex digits"},
      {"golden value number", [](json& j) { j["golden_pcrs"]["values"]["3"] = 3; },
       "golden_pcrs.values.3: not a string"},
      {"negative time", [](json& j) { j["enrolled_unix_ms"] = -1; }, "enrolled_unix_ms"},
      {"fractional time", [](json& j) { j["enrolled_unix_ms"] = 1.5; }, "enrolled_unix_ms"},
  };
  for (const Case& c : cases) {
    json j = good;
    c.mutate(j);
    auto r = EnrollmentFromJson(j);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), c.code) << c.what << ": " << r.status().ToString();
    EXPECT_TRUE(Contains(r.status().message(), c.field)) << c.what << ": " << r.status().message();
  }
  // An RSA EK is fine.
  json j = good;
  j["ek_public"] = ToHex(rsa_ek);
  EXPECT_TRUE(EnrollmentFromJson(j).ok()) << EnrollmentFromJson(j).status().ToString();
}

class EnrollmentStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sod-attest-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void WriteText(const std::string& name, const std::string& text) {
    fs::create_directories(dir_);
    std::ofstream(dir_ / name) << text;
  }

  fs::path dir_;
  SoftwareHost a_{"hosta"}, b_{"hostb"};
};

TEST_F(EnrollmentStoreTest, AddLoadFindRemove) {
  ASSERT_TRUE(EnrollmentStore::Add(a_.Enrollment(), dir_).ok());  // creates the directory
  ASSERT_TRUE(EnrollmentStore::Add(b_.Enrollment(), dir_.string()).ok());
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "hostb.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_FALSE(fs::exists(dir_ / "hostb.json.tmp"));
  WriteText("README", "not a record, ignored");
  fs::create_directories(dir_ / "old.json");  // a directory, ignored

  auto store = EnrollmentStore::Load(dir_);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_EQ(store->size(), 2u);
  EXPECT_EQ(store->records()[0].host_id, "hosta");
  ASSERT_NE(store->Find("hostb"), nullptr);
  EXPECT_EQ(*store->Find("hostb"), b_.Enrollment());
  EXPECT_EQ(store->Find("hostc"), nullptr);

  // Re-enrolling a host replaces its record.
  EnrollmentRecord newer = b_.Enrollment();
  newer.enrolled_unix_ms += 1000;
  ASSERT_TRUE(EnrollmentStore::Add(newer, dir_).ok());
  EXPECT_EQ(EnrollmentStore::Load(dir_)->Find("hostb")->enrolled_unix_ms, newer.enrolled_unix_ms);

  ASSERT_TRUE(EnrollmentStore::Remove("hostb", dir_).ok());
  EXPECT_EQ(EnrollmentStore::Load(dir_)->size(), 1u);
  EXPECT_EQ(EnrollmentStore::Remove("hostb", dir_).code(), Errc::kNotFound);
  EXPECT_EQ(EnrollmentStore::Remove("../etc/passwd", dir_).code(), Errc::kInvalidArgument);
  EXPECT_EQ(EnrollmentStore::Load(dir_ / "nope").status().code(), Errc::kNotFound);
}

TEST_F(EnrollmentStoreTest, AddRefusesInvalidRecordsAndAReusedAk) {
  EnrollmentRecord bad = a_.Enrollment();
  bad.golden_pcrs[kViolationPcr] = {};
  EXPECT_EQ(EnrollmentStore::Add(bad, dir_).code(), Errc::kMalformed);
  ASSERT_TRUE(EnrollmentStore::Add(a_.Enrollment(), dir_).ok());
  EnrollmentRecord thief = b_.Enrollment();
  thief.ak_public = a_.tpm.ak_public();  // hostb claims hosta's TPM
  Status s = EnrollmentStore::Add(thief, dir_);
  EXPECT_EQ(s.code(), Errc::kRefused);
  EXPECT_TRUE(Contains(s.message(), "hosta")) << s.ToString();
  EXPECT_FALSE(fs::exists(dir_ / "hostb.json"));
}

TEST_F(EnrollmentStoreTest, LoadRefusesDuplicateAksNamingTheFile) {
  ASSERT_TRUE(EnrollmentStore::Add(a_.Enrollment(), dir_).ok());
  EnrollmentRecord copy = a_.Enrollment();
  copy.host_id = "hostc";
  WriteText("hostc.json", EnrollmentToJson(copy).dump());
  auto store = EnrollmentStore::Load(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Errc::kRefused);
  EXPECT_TRUE(Contains(store.status().message(), "hostc.json")) << store.status().ToString();
  EXPECT_TRUE(Contains(store.status().message(), "hosta")) << store.status().ToString();
}

TEST_F(EnrollmentStoreTest, LoadRefusesMalformedFilesNamingThem) {
  ASSERT_TRUE(EnrollmentStore::Add(a_.Enrollment(), dir_).ok());
  struct Case {
    const char* file;
    std::string text;
    const char* detail;
  };
  json wrong_golden = EnrollmentToJson(b_.Enrollment());
  wrong_golden["golden_pcrs"]["values"]["14"] = std::string(64, '0');
  for (const Case& c : std::vector<Case>{
           {"broken.json", "{\"version\": 1,", "not JSON"},
           {"hostb.json", wrong_golden.dump(), "golden_pcrs.values.14"},
           {"other.json", EnrollmentToJson(b_.Enrollment()).dump(), "must be named hostb.json"},
           {"big.json", std::string(kMaxEnrollmentFile + 1, ' '), ""}}) {
    WriteText(c.file, c.text);
    auto store = EnrollmentStore::Load(dir_);
    ASSERT_FALSE(store.ok()) << c.file;
    EXPECT_TRUE(Contains(store.status().message(), c.file)) << store.status().ToString();
    EXPECT_TRUE(Contains(store.status().message(), c.detail)) << store.status().ToString();
    // Nothing is added to a directory that does not load.
    Status add = EnrollmentStore::Add(b_.Enrollment(), dir_);
    EXPECT_FALSE(add.ok()) << c.file;
    fs::remove(dir_ / c.file);
  }
  EXPECT_TRUE(EnrollmentStore::Load(dir_).ok());
}

TEST(EnrollmentStoreInsertTest, RefusesDuplicateHostsAndAks) {
  SoftwareHost a("hosta"), b("hostb");
  EnrollmentStore store;
  ASSERT_TRUE(store.Insert(b.Enrollment()).ok());
  ASSERT_TRUE(store.Insert(a.Enrollment()).ok());
  EXPECT_EQ(store.records()[0].host_id, "hosta");  // sorted
  EXPECT_EQ(store.Insert(a.Enrollment()).code(), Errc::kRefused);
  EnrollmentRecord c = a.Enrollment();
  c.host_id = "hostc";
  Status s = store.Insert(c);
  EXPECT_EQ(s.code(), Errc::kRefused);
  EXPECT_TRUE(Contains(s.message(), "hosta")) << s.ToString();
  // The same key with other attributes is the same AK.
  TpmPublic p = ParsePublic(a.tpm.ak_public()).value();
  p.object_attributes |= kTpmaNoDa;
  c.ak_public = EncodePublic(p);
  EXPECT_EQ(store.Insert(c).code(), Errc::kRefused);
  EXPECT_EQ(store.size(), 2u);
}

// --- The verifier -------------------------------------------------------------------------------

class VerifierTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kNow = 1738324800000;

  void SetUp() override { ASSERT_TRUE(store_.Insert(host_.Enrollment()).ok()); }

  Expectation Expect() const { return {"hostb", nonce_, binding_, kNow}; }
  Evidence Fresh() const { return host_.Produce(nonce_, binding_, kNow); }
  Verdict Check(const Evidence& e) const { return Verify(e, Expect(), store_, policy_); }

  // Refused, with a reason containing `needle`.
  void ExpectRefused(const Verdict& v, std::string_view needle) const {
    EXPECT_FALSE(v.accepted);
    EXPECT_TRUE(HasReason(v, needle)) << "no reason with \"" << needle << "\" in:" << Reasons(v);
  }

  SoftwareHost host_{"hostb"};
  EnrollmentStore store_;
  AttestationPolicy policy_;
  Bytes nonce_ = Bytes(32, 0x11);
  Bytes binding_ = Bytes(32, 0x22);
};

TEST_F(VerifierTest, AcceptsGenuineEvidence) {
  const Verdict v = Check(Fresh());
  EXPECT_TRUE(v.accepted) << Reasons(v);
  EXPECT_TRUE(v.reasons.empty());
  EXPECT_EQ(v.host_id, "hostb");
  EXPECT_EQ(v.architecture, "tpm-host");
  EXPECT_EQ(v.capability_row, "{\"memory\":\"encrypted\"}");
  EXPECT_EQ(v.violation_count, 0u);
  EXPECT_EQ(v.timestamp_unix_ms, kNow);
  EXPECT_EQ(v.reset_count, 4u);
  EXPECT_EQ(v.restart_count, 2u);
  EXPECT_EQ(v.pcrs_checked, DefaultQuoteSelection().Indices());
  EXPECT_EQ(v.Summary(), "hostb: accepted (tpm-host, 0 violations, PCRs 0,1,2,3,4,5,6,7,14)");
  const json j = v.ToJson();
  EXPECT_EQ(j["accepted"], true);
  EXPECT_EQ(j["reasons"], json::array());
  EXPECT_EQ(j["pcrs_checked"].size(), 9u);
  // Through the wire format, and with skew inside the policy.
  Evidence e = DecodeEvidence(EncodeEvidence(Fresh())).value();
  EXPECT_TRUE(Check(e).accepted);
  e = host_.Produce(nonce_, binding_, kNow - 119000);
  EXPECT_TRUE(Check(e).accepted);
}

TEST(TpmWireTest, QualifiedNameOfAPrimaryKey) {
  const Bytes name = PublicName(HandBuiltEcdsaSignature());  // any bytes
  Bytes in = {0x40, 0x00, 0x00, 0x0b};                       // TPM_RH_ENDORSEMENT
  AppendSpan(in, name);
  Bytes want = {0x00, 0x0b};
  AppendSpan(want, Sha256(in));
  EXPECT_EQ(HierarchyName(kTpmRhEndorsement), Bytes({0x40, 0x00, 0x00, 0x0b}));
  EXPECT_EQ(QualifiedName(HierarchyName(kTpmRhEndorsement), name), want);
}

TEST_F(VerifierTest, AcceptsEveryQualifiedNameTheEnrolledAkCanHave) {
  const Bytes ak_name = PublicName(host_.tpm.ak_public());
  const Bytes endorsement = HierarchyName(kTpmRhEndorsement);
  const Bytes ek_qn = QualifiedName(endorsement, PublicName(host_.tpm.ek_public()));
  for (const Bytes& signer :
       {QualifiedName(endorsement, ak_name), QualifiedName(HierarchyName(kTpmRhOwner), ak_name),
        QualifiedName(ek_qn, ak_name)}) {
    host_.tpm.qualified_signer = signer;
    const Verdict v = Check(Fresh());
    EXPECT_TRUE(v.accepted) << ToHex(signer) << Reasons(v);
  }
  // A TPM never names the signer by its bare Name, nor as a child of some other key.
  for (const Bytes& signer : {ak_name, QualifiedName(HierarchyName(kTpmRhPlatform), ak_name),
                              QualifiedName(QualifiedName(endorsement, ak_name), ak_name)}) {
    host_.tpm.qualified_signer = signer;
    const Verdict v = Check(Fresh());
    ExpectRefused(v, "unknown AK");
    EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
  }
}

TEST_F(VerifierTest, AcceptsAnRsaAk) {
  SoftwareHost rsa("hostr", kAkAttributes, /*rsa=*/true);
  ASSERT_TRUE(store_.Insert(rsa.Enrollment()).ok());
  const Verdict v = Verify(rsa.Produce(nonce_, binding_, kNow), {"hostr", nonce_, binding_, kNow},
                           store_, policy_);
  EXPECT_TRUE(v.accepted) << Reasons(v);
}

TEST_F(VerifierTest, RefusesAQuoteReplayedFromAnotherSession) {
  // Made for the same nonce in another TLS session (another exporter value).
  const Evidence old = host_.Produce(nonce_, Bytes(32, 0x33), kNow);
  const Verdict v = Check(old);
  ExpectRefused(v, "not bound to this session/nonce");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
}

TEST_F(VerifierTest, RefusesAStaleNonce) {
  const Evidence old = host_.Produce(Bytes(32, 0x44), binding_, kNow);
  ExpectRefused(Check(old), "not bound to this session/nonce");
}

TEST_F(VerifierTest, RefusesAPcrChangedAfterEnrollment) {
  host_.tpm.Extend(7, Filled(0xee));  // something new measured into PCR 7
  const Verdict v = Check(Fresh());
  ExpectRefused(v, "PCR 7 is ");
  EXPECT_TRUE(HasReason(v, "enrolled for hostb")) << Reasons(v);
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
}

TEST_F(VerifierTest, RefusesAnUnknownHost) {
  EnrollmentStore empty;
  const Verdict v = Verify(Fresh(), Expect(), empty, policy_);
  ExpectRefused(v, "unknown host: hostb");
}

TEST_F(VerifierTest, RefusesAnUnknownAk) {
  // hostb's TPM was replaced (or its AK regenerated) since it was enrolled.
  SoftwareHost replaced("hostb");
  const Verdict v = Check(replaced.Produce(nonce_, binding_, kNow));
  ExpectRefused(v, "unknown AK");
  ExpectRefused(v, "signature does not verify");
}

TEST_F(VerifierTest, RefusesASignatureByAnotherKey) {
  Evidence e = Fresh();
  PkeyPtr other = NewEcKey();
  e.quote_signature = SoftwareTpmSign(other.get(), e.quote_attest).value();
  const Verdict v = Check(e);
  ExpectRefused(v, "signature does not verify");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
}

TEST_F(VerifierTest, RefusesFlippedBits) {
  const Evidence good = Fresh();
  // Any bit of the signature.
  for (size_t i = 0; i < good.quote_signature.size(); ++i) {
    Evidence e = good;
    e.quote_signature[i] ^= 0x01;
    EXPECT_FALSE(Check(e).accepted) << "signature byte " << i;
  }
  // Any bit of the signed quote.
  for (size_t i = 0; i < good.quote_attest.size(); ++i) {
    Evidence e = good;
    e.quote_attest[i] ^= 0x01;
    const Verdict v = Check(e);
    EXPECT_FALSE(v.accepted) << "quote byte " << i;
  }
  // E.g. the clock: only the signature gives it away.
  Evidence e = good;
  e.quote_attest[4 + 2 + 36 + 34 + 7] ^= 0x01;
  const Verdict v = Check(e);
  ExpectRefused(v, "signature does not verify");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
}

TEST_F(VerifierTest, RefusesEvidenceOfOneHostPresentedByAnother) {
  SoftwareHost a("hosta");
  ASSERT_TRUE(store_.Insert(a.Enrollment()).ok());
  // (1) hostb relays hosta's genuine evidence for this session.
  Verdict v = Check(a.Produce(nonce_, binding_, kNow));
  ExpectRefused(v, "evidence from hosta presented by hostb");
  ExpectRefused(v, "unknown AK");
  // (2) hostb claims to be hosta, quoting with its own AK (the claim is in the quote).
  host_.id = "hosta";
  v = Check(Fresh());
  host_.id = "hostb";
  ExpectRefused(v, "evidence from hosta presented by hostb");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
  // (3) hostb's genuine evidence with the host id changed afterwards: not what the TPM signed.
  Evidence e = Fresh();
  e.host_id = "hosta";
  v = Check(e);
  ExpectRefused(v, "evidence from hosta presented by hostb");
  ExpectRefused(v, "these claims");
}

TEST_F(VerifierTest, RefusesPcrValuesThatDoNotMatchTheQuoteDigest) {
  Evidence e = Fresh();
  e.pcrs.values[3] = Filled(0x33);  // report something else than was quoted
  Verdict v = Check(e);
  ExpectRefused(v, "do not match the quote's PCR digest");
  ExpectRefused(v, "PCR 3 is ");
  // A PCR that is not golden, reported differently: only the digest gives it away.
  EnrollmentStore partial;
  EnrollmentRecord r = host_.Enrollment();
  r.golden_pcrs.erase(3);
  ASSERT_TRUE(partial.Insert(r).ok());
  v = Verify(e, Expect(), partial, policy_);
  ExpectRefused(v, "do not match the quote's PCR digest");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
}

TEST_F(VerifierTest, RefusesAReportedSelectionThatIsNotTheQuoted) {
  Evidence e = Fresh();
  e.pcrs.selection.mask &= ~1u;  // drop PCR 0 from the report
  e.pcrs.values.erase(e.pcrs.values.begin());
  const Verdict v = Check(e);
  ExpectRefused(v,
                "the quote covers PCRs 0,1,2,3,4,5,6,7,14 but the evidence reports PCRs "
                "1,2,3,4,5,6,7,14");
  ExpectRefused(v, "PCR 0 is enrolled as golden but not reported");
}

TEST_F(VerifierTest, RefusesAQuoteWithoutTheRequiredPcrs) {
  const Verdict v = Check(host_.Produce(nonce_, binding_, kNow, Select({0, 1, 2, 3, 4, 5, 6, 7})));
  ExpectRefused(v, "does not cover PCRs 14 that the policy requires");
  ExpectRefused(v, "PCR 14 (the violation PCR) is not reported");
}

TEST_F(VerifierTest, RefusesViolationsOverThePolicy) {
  host_.RecordViolation();
  host_.RecordViolation();
  Verdict v = Check(Fresh());
  ExpectRefused(v, "2 runtime violations; the policy allows at most 0");
  EXPECT_EQ(v.reasons.size(), 1u) << Reasons(v);
  EXPECT_EQ(v.violation_count, 2u);
  policy_.max_violations = 1;
  ExpectRefused(Check(Fresh()), "violations");
  policy_.max_violations = 2;
  v = Check(Fresh());
  EXPECT_TRUE(v.accepted) << Reasons(v);
}

TEST_F(VerifierTest, RefusesAViolationCountThatLies) {
  policy_.max_violations = 10;
  host_.RecordViolation();
  // The host's software hides its violation; PCR 14 does not.
  Evidence e = Fresh();
  e.violation_count = 0;
  ExpectRefused(Check(e), "PCR 14 does not match the reported violation count 0");
  // Or invents some.
  e.violation_count = 2;
  ExpectRefused(Check(e), "PCR 14 does not match the reported violation count 2");
  // A count too large to replay is refused without hashing for minutes.
  e.violation_count = UINT32_MAX;
  policy_.max_violations = UINT32_MAX;
  ExpectRefused(Check(e), "the most this verifier checks PCR 14 for");
}

TEST_F(VerifierTest, RefusesAStaleOrFutureTimestamp) {
  Evidence e = host_.Produce(nonce_, binding_, kNow - 121000);
  ExpectRefused(Check(e), "121000 ms behind");
  e = host_.Produce(nonce_, binding_, kNow + 121000);
  ExpectRefused(Check(e), "121000 ms ahead of");
  policy_.max_clock_skew = std::chrono::minutes(5);
  EXPECT_TRUE(Check(e).accepted);
}

TEST_F(VerifierTest, RefusesAnAkThatIsNotRestricted) {
  // An unrestricted key can sign anything that looks like a quote.
  SoftwareHost loose("hostl", kAkAttributes & ~kTpmaRestricted);
  EXPECT_FALSE(EnrollmentFromJson(EnrollmentToJson(loose.Enrollment())).ok());
  EnrollmentStore store;
  ASSERT_TRUE(store.Insert(loose.Enrollment()).ok());  // in memory, unchecked
  const Verdict v =
      Verify(loose.Produce(nonce_, binding_, kNow), {"hostl", nonce_, binding_, kNow}, store, {});
  ExpectRefused(v, "the AK enrolled for hostl is refused: not an attestation key: not restricted");
}

TEST_F(VerifierTest, RefusesAnotherArchitectureThanEnrolled) {
  Evidence e = Fresh();
  e.architecture = "sev-snp";
  ExpectRefused(Check(e), "architecture sev-snp claimed, but hostb is enrolled as tpm-host");
}

TEST_F(VerifierTest, RefusesGarbledQuotesAndSignatures) {
  Evidence e = Fresh();
  e.quote_attest.resize(10);
  ExpectRefused(Check(e), "the quote does not parse: TPMS_ATTEST: truncated");
  e = Fresh();
  e.quote_signature = {0x00, 0x05};
  ExpectRefused(Check(e), "the quote signature does not parse: TPMT_SIGNATURE: sigAlg");
}

TEST_F(VerifierTest, RefusesAnExpectationWithoutANonce) {
  Expectation x = Expect();
  x.nonce.clear();
  const Verdict v = Verify(host_.Produce({}, binding_, kNow), x, store_, policy_);
  ExpectRefused(v, "no nonce");
}

TEST_F(VerifierTest, CollectsEveryReason) {
  host_.tpm.Extend(5, Filled(0x55));
  host_.RecordViolation();
  Evidence e = host_.Produce(Bytes(32, 0x99), binding_, kNow - 600000);
  e.violation_count = 0;
  const Verdict v = Check(e);
  EXPECT_FALSE(v.accepted);
  ExpectRefused(v, "not bound");
  ExpectRefused(v, "PCR 5 is ");
  ExpectRefused(v, "PCR 14 does not match");
  ExpectRefused(v, "behind");
  EXPECT_EQ(v.reasons.size(), 4u) << Reasons(v);
  const std::string summary = v.Summary();
  EXPECT_EQ(summary.rfind("hostb: refused: ", 0), 0u) << summary;
  EXPECT_EQ(v.ToJson()["reasons"].size(), 4u);
}

TEST_F(VerifierTest, VerdictJsonIsSafeForAnyStrings) {
  Evidence e = Fresh();
  e.host_id = "\xff\xfe";
  e.capability_row = "\xc3";
  const Verdict v = Check(e);
  EXPECT_FALSE(v.accepted);
  std::string text;
  ASSERT_NO_THROW(text = v.ToJson().dump());
  EXPECT_TRUE(Contains(text, "invalid UTF-8: c3")) << text;
}

}  // namespace
}  // namespace sod::attest
