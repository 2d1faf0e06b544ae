// EsysTpm and SimulatedTpm against a real swtpm (attest/esys_tpm.h, attest/swtpm.h), with
// tpm2-tools as an independent second implementation: tpm2_checkquote verifies our quotes,
// tpm2_createek makes the EK our template must match, tpm2_readpublic exports our AK.
//
// Skips only when the swtpm binary is absent. Every test runs its own swtpm on its own state
// directory and ports, so the tests can run in parallel (ctest -j).
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <tss2/tss2_mu.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "attest/esys_tpm.h"
#include "attest/swtpm.h"
#include "base/random.h"

namespace sod::attest {
namespace {

namespace fs = std::filesystem;

bool InPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

PcrDigest Sha256(ByteSpan data) {
  PcrDigest out{};
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr), 1);
  return out;
}

PcrDigest ExtendValue(const PcrDigest& old, const PcrDigest& digest) {
  Bytes b(old.begin(), old.end());
  b.insert(b.end(), digest.begin(), digest.end());
  return Sha256(b);
}

PcrDigest Composite(const PcrValues& pcrs) {
  Bytes concat;
  for (const PcrDigest& d : pcrs.values) concat.insert(concat.end(), d.begin(), d.end());
  return Sha256(concat);
}

PcrSelection Select(std::initializer_list<uint32_t> pcrs) {
  PcrSelection s;
  for (uint32_t p : pcrs) s.mask |= 1u << p;
  return s;
}

void WriteFile(const std::string& path, ByteSpan data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

Bytes ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TPMT_PUBLIC ParsePublic(const Bytes& b) {
  TPMT_PUBLIC pub{};
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPMT_PUBLIC_Unmarshal(b.data(), b.size(), &off, &pub), TSS2_RC_SUCCESS);
  EXPECT_EQ(off, b.size()) << "trailing bytes after TPMT_PUBLIC";
  return pub;
}

// The AK as an OpenSSL key, from the x/y of its TPMT_PUBLIC.
EVP_PKEY* AkKey(const TPMT_PUBLIC& pub) {
  if (pub.type != TPM2_ALG_ECC || pub.unique.ecc.x.size != 32 || pub.unique.ecc.y.size != 32)
    return nullptr;
  uint8_t point[65];
  point[0] = 0x04;  // uncompressed
  std::memcpy(point + 1, pub.unique.ecc.x.buffer, 32);
  std::memcpy(point + 33, pub.unique.ecc.y.buffer, 32);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
  OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point));
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* key = nullptr;
  if (params == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
    key = nullptr;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  return key;
}

// ECDSA-SHA256 verification of `message` with a marshalled TPMT_SIGNATURE.
bool VerifyEcdsa(EVP_PKEY* key, ByteSpan message, const Bytes& signature) {
  TPMT_SIGNATURE sig{};
  size_t off = 0;
  if (Tss2_MU_TPMT_SIGNATURE_Unmarshal(signature.data(), signature.size(), &off, &sig) !=
          TSS2_RC_SUCCESS ||
      off != signature.size())
    return false;
  if (sig.sigAlg != TPM2_ALG_ECDSA || sig.signature.ecdsa.hash != TPM2_ALG_SHA256) return false;
  const TPMS_SIGNATURE_ECDSA& e = sig.signature.ecdsa;
  ECDSA_SIG* es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, BN_bin2bn(e.signatureR.buffer, e.signatureR.size, nullptr),
                 BN_bin2bn(e.signatureS.buffer, e.signatureS.size, nullptr));
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  const bool ok =
      der_len > 0 && EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr, key) == 1 &&
      EVP_DigestVerify(md, der, static_cast<size_t>(der_len), message.data(), message.size()) == 1;
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  return ok;
}

class TpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!InPath("swtpm")) GTEST_SKIP() << "swtpm is not installed";
    char tmpl[] = "/tmp/sod-tpm-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_NO_FATAL_FAILURE(StartTpm());
  }
  void TearDown() override {
    tpm_.reset();
    swtpm_.reset();
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  void StartTpm() {
    auto s = SimulatedTpm::Start(dir_ + "/state");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    swtpm_ = std::move(*s);
    auto t = EsysTpm::Open(swtpm_->tcti());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tpm_ = std::move(*t);
  }
  // A host reboot: same TPM state directory, new swtpm process (PCRs reset).
  void RestartTpm() {
    tpm_.reset();
    ASSERT_TRUE(swtpm_->Stop().ok());
    swtpm_.reset();
    ASSERT_NO_FATAL_FAILURE(StartTpm());
  }

  // Runs a tpm2-tools (or other) command line; returns its exit status, output in `log`.
  int Run(const std::string& cmd, std::string* log = nullptr) {
    const std::string out = dir_ + "/cmd.log";
    int st = std::system((cmd + " >" + out + " 2>&1").c_str());
    std::ifstream in(out);
    std::stringstream ss;
    ss << in.rdbuf();
    if (log) *log = ss.str();
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
  }
  // Expects `cmd` to fail with `reason` in its output.
  void ExpectRefused(const std::string& cmd, const std::string& reason) {
    std::string log;
    EXPECT_NE(Run(cmd, &log), 0) << cmd << "\n" << log;
    EXPECT_NE(log.find(reason), std::string::npos) << cmd << "\n" << log;
  }
  // `-T <tcti>` for tpm2-tools.
  std::string T() const { return " -T " + swtpm_->tcti(); }

  std::string dir_;
  std::unique_ptr<SimulatedTpm> swtpm_;
  std::unique_ptr<EsysTpm> tpm_;
};

// ---------------------------------------------------------------------------------------------
// Provisioning

TEST_F(TpmTest, ProvisionIsIdempotentAcrossRestart) {
  ASSERT_TRUE(tpm_->Provision().ok());
  auto ak1 = tpm_->AkPublic();
  auto ek1 = tpm_->EkPublic();
  ASSERT_TRUE(ak1.ok()) << ak1.status().ToString();
  ASSERT_TRUE(ek1.ok()) << ek1.status().ToString();
  // Again on the same TPM: nothing changes.
  Status again = tpm_->Provision();
  ASSERT_TRUE(again.ok()) << again.ToString();
  EXPECT_EQ(*tpm_->AkPublic(), *ak1);
  EXPECT_EQ(*tpm_->EkPublic(), *ek1);

  ASSERT_NO_FATAL_FAILURE(RestartTpm());
  // The persisted keys survived the restart and are readable before Provision.
  auto ak2 = tpm_->AkPublic();
  ASSERT_TRUE(ak2.ok()) << ak2.status().ToString();
  EXPECT_EQ(*ak2, *ak1);
  Status after = tpm_->Provision();
  ASSERT_TRUE(after.ok()) << after.ToString();
  EXPECT_EQ(*tpm_->AkPublic(), *ak1);
  EXPECT_EQ(*tpm_->EkPublic(), *ek1);

  // Exactly the two persistent objects, and no transient object left behind.
  std::string log;
  ASSERT_EQ(Run("tpm2_getcap handles-persistent" + T(), &log), 0) << log;
  EXPECT_NE(log.find("0x81010001"), std::string::npos) << log;
  EXPECT_NE(log.find("0x81010002"), std::string::npos) << log;
  ASSERT_EQ(Run("tpm2_getcap handles-transient" + T(), &log), 0) << log;
  EXPECT_EQ(log.find("0x80"), std::string::npos) << log;
}

TEST_F(TpmTest, PublicAreasAreTheDocumentedKeys) {
  ASSERT_TRUE(tpm_->Provision().ok());
  const TPMT_PUBLIC ak = ParsePublic(*tpm_->AkPublic());
  EXPECT_EQ(ak.type, TPM2_ALG_ECC);
  EXPECT_EQ(ak.nameAlg, TPM2_ALG_SHA256);
  EXPECT_EQ(ak.objectAttributes, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                     TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                     TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_EQ(ak.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  EXPECT_EQ(ak.parameters.eccDetail.scheme.scheme, TPM2_ALG_ECDSA);
  EXPECT_EQ(ak.parameters.eccDetail.scheme.details.ecdsa.hashAlg, TPM2_ALG_SHA256);
  EXPECT_EQ(ak.unique.ecc.x.size, 32);
  EXPECT_EQ(ak.unique.ecc.y.size, 32);

  const TPMT_PUBLIC ek = ParsePublic(*tpm_->EkPublic());
  EXPECT_EQ(ek.type, TPM2_ALG_ECC);
  EXPECT_EQ(ek.objectAttributes, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                     TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                     TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
  EXPECT_EQ(ek.authPolicy.size, 32);
  EXPECT_EQ(ek.parameters.eccDetail.symmetric.algorithm, TPM2_ALG_AES);
  EXPECT_EQ(ek.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  EXPECT_NE(*tpm_->AkPublic(), *tpm_->EkPublic());
}

// tpm2_createek -G ecc makes the TCG default ECC EK; Provision must take it as its own EK (same
// template), and our EkPublic must be exactly what tpm2-tools wrote.
TEST_F(TpmTest, ProvisionReusesTheTcgDefaultEkMadeByTpm2Tools) {
  std::string log;
  const std::string ek_file = dir_ + "/ek.tss";
  ASSERT_EQ(Run("tpm2_createek -c 0x81010001 -G ecc -u " + ek_file + T(), &log), 0) << log;
  Status s = tpm_->Provision();
  ASSERT_TRUE(s.ok()) << s.ToString();
  const Bytes tools = ReadFile(ek_file);  // TPM2B_PUBLIC: u16 size, then the TPMT_PUBLIC
  ASSERT_GT(tools.size(), 2u);
  auto ek = tpm_->EkPublic();
  ASSERT_TRUE(ek.ok());
  EXPECT_EQ(Bytes(tools.begin() + 2, tools.end()), *ek);
}

TEST_F(TpmTest, ProvisionRefusesAnotherKeyAtTheAkHandle) {
  std::string log;
  const std::string ctx = dir_ + "/primary.ctx";
  ASSERT_EQ(Run("tpm2_createprimary -C e -G ecc -c " + ctx + T(), &log), 0) << log;
  ASSERT_EQ(Run("tpm2_evictcontrol -C o -c " + ctx + " 0x81010002" + T(), &log), 0) << log;
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;
  Status s = tpm_->Provision();
  EXPECT_EQ(s.code(), Errc::kState) << s.ToString();
  EXPECT_NE(s.message().find("0x81010002"), std::string::npos) << s.ToString();
  // The foreign key is left alone.
  ASSERT_EQ(Run("tpm2_getcap handles-persistent" + T(), &log), 0) << log;
  EXPECT_NE(log.find("0x81010002"), std::string::npos) << log;
}

TEST_F(TpmTest, KeysAreNotFoundBeforeProvision) {
  EXPECT_EQ(tpm_->AkPublic().status().code(), Errc::kNotFound);
  EXPECT_EQ(tpm_->EkPublic().status().code(), Errc::kNotFound);
  PcrDigest q{};
  auto quote = tpm_->Quote(q, Select({0}));
  EXPECT_EQ(quote.status().code(), Errc::kNotFound) << quote.status().ToString();
}

// ---------------------------------------------------------------------------------------------
// PCRs

TEST(SimulatedBootTest, ExpectedValuesFoldTheEventList) {
  const PcrValues all = ExpectedPcrsAfterBoot(PcrSelection{0xffffffu});
  ASSERT_EQ(all.values.size(), 24u);
  for (uint32_t i = 8; i < 24; ++i) EXPECT_EQ(all.values[i], PcrResetValue(i)) << "PCR " << i;
  EXPECT_EQ(PcrResetValue(16), PcrDigest{});
  PcrDigest ones;
  ones.fill(0xff);
  EXPECT_EQ(PcrResetValue(17), ones);
  for (uint32_t i = 0; i < 8; ++i) EXPECT_NE(all.values[i], PcrDigest{}) << "PCR " << i;
  // PCR 4 by hand: bootloader, kernel, separator.
  auto digest = [](const std::string& s) {
    return Sha256(ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  };
  PcrDigest pcr4{};
  pcr4 = ExtendValue(pcr4, digest("sod simulated bootloader: sod-boot v1"));
  pcr4 = ExtendValue(pcr4, digest("sod simulated kernel: linux host kernel v1"));
  pcr4 = ExtendValue(pcr4, digest("sod simulated separator"));
  EXPECT_EQ(all.values[4], pcr4);
  // A selection returns its PCRs in ascending order.
  const PcrValues some = ExpectedPcrsAfterBoot(Select({7, 0, 16}));
  EXPECT_EQ(some.selection, Select({0, 7, 16}));
  ASSERT_EQ(some.values.size(), 3u);
  EXPECT_EQ(some.values[0], all.values[0]);
  EXPECT_EQ(some.values[1], all.values[7]);
  EXPECT_EQ(some.values[2], PcrDigest{});
}

TEST_F(TpmTest, MeasuredBootGivesTheExpectedPcrsAndRestartResetsThem) {
  const PcrSelection all{0xffffffu};
  Status s = SimulateMeasuredBoot(*tpm_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto pcrs = tpm_->ReadPcrs(all);  // 24 PCRs: three TPM2_PCR_Read rounds
  ASSERT_TRUE(pcrs.ok()) << pcrs.status().ToString();
  EXPECT_EQ(*pcrs, ExpectedPcrsAfterBoot(all));
  // A second replay without a reset is refused, and changes nothing.
  EXPECT_EQ(SimulateMeasuredBoot(*tpm_).code(), Errc::kState);
  EXPECT_EQ(*tpm_->ReadPcrs(all), ExpectedPcrsAfterBoot(all));

  ASSERT_NO_FATAL_FAILURE(RestartTpm());
  auto reset = tpm_->ReadPcrs(all);
  ASSERT_TRUE(reset.ok()) << reset.status().ToString();
  for (uint32_t i = 0; i < 24; ++i) EXPECT_EQ(reset->values[i], PcrResetValue(i)) << "PCR " << i;
  ASSERT_TRUE(SimulateMeasuredBoot(*tpm_).ok());
  EXPECT_EQ(*tpm_->ReadPcrs(all), ExpectedPcrsAfterBoot(all));
}

TEST_F(TpmTest, ExtendPcrChangesThePcr) {
  const PcrSelection sel = Select({15, 16});
  auto before = tpm_->ReadPcrs(sel);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  const PcrDigest d = Sha256(Bytes{'x'});
  Status s = tpm_->ExtendPcr(16, d);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto after = tpm_->ReadPcrs(sel);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->values[0], before->values[0]);  // PCR 15 untouched
  EXPECT_EQ(after->values[1], ExtendValue(before->values[1], d));
  EXPECT_NE(after->values[1], before->values[1]);

  // tpm2-tools agree on the value, and see our extend.
  std::string log;
  ASSERT_EQ(Run("tpm2_pcrread sha256:16 -o " + dir_ + "/pcr16.bin" + T(), &log), 0) << log;
  const Bytes tools = ReadFile(dir_ + "/pcr16.bin");
  EXPECT_EQ(tools, Bytes(after->values[1].begin(), after->values[1].end()));
  // And we see theirs.
  ASSERT_EQ(Run("tpm2_pcrextend 16:sha256=" + ToHex(d) + T(), &log), 0) << log;
  EXPECT_EQ(tpm_->ReadPcrs(Select({16}))->values[0], ExtendValue(after->values[1], d));
}

TEST_F(TpmTest, BadArgumentsAreRefusedBeforeTheTpm) {
  EXPECT_EQ(tpm_->ExtendPcr(24, PcrDigest{}).code(), Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->ReadPcrs(PcrSelection{}).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->ReadPcrs(PcrSelection{1u << 24}).status().code(), Errc::kInvalidArgument);
  ASSERT_TRUE(tpm_->Provision().ok());
  Bytes long_q(33, 1);
  EXPECT_EQ(tpm_->Quote(long_q, Select({0})).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->Quote(Bytes(32, 1), PcrSelection{}).status().code(), Errc::kInvalidArgument);
  // PCR 17 belongs to locality 4: the TPM refuses it from locality 0.
  Status s = tpm_->ExtendPcr(17, PcrDigest{});
  EXPECT_EQ(s.code(), Errc::kCrypto) << s.ToString();
  EXPECT_NE(s.message().find("TPM2_PCR_Extend"), std::string::npos) << s.ToString();
}

// ---------------------------------------------------------------------------------------------
// Quotes

class QuoteTest : public TpmTest {
 protected:
  void SetUp() override {
    TpmTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(tpm_->Provision().ok());
    ASSERT_TRUE(SimulateMeasuredBoot(*tpm_).ok());
    ASSERT_TRUE(tpm_->ExtendPcr(16, Sha256(Bytes{'r', 'u', 'n'})).ok());
    auto q = RandomBytes(32);
    ASSERT_TRUE(q.ok());
    qualifying_ = *q;
  }
  // Ten PCRs: more than one TPM2_PCR_Read round.
  const PcrSelection selection_ = Select({0, 1, 2, 3, 4, 5, 6, 7, 16, 23});
  Bytes qualifying_;
};

TEST_F(QuoteTest, QuoteParsesAndVerifiesWithTheAk) {
  auto quote = tpm_->Quote(qualifying_, selection_);
  ASSERT_TRUE(quote.ok()) << quote.status().ToString();

  TPMS_ATTEST attest{};
  size_t off = 0;
  ASSERT_EQ(
      Tss2_MU_TPMS_ATTEST_Unmarshal(quote->attest.data(), quote->attest.size(), &off, &attest),
      TSS2_RC_SUCCESS);
  EXPECT_EQ(off, quote->attest.size());
  EXPECT_EQ(attest.magic, TPM2_GENERATED_VALUE);
  EXPECT_EQ(attest.type, TPM2_ST_ATTEST_QUOTE);
  ASSERT_EQ(attest.extraData.size, 32);
  EXPECT_EQ(Bytes(attest.extraData.buffer, attest.extraData.buffer + 32), qualifying_);
  const TPML_PCR_SELECTION& ps = attest.attested.quote.pcrSelect;
  ASSERT_EQ(ps.count, 1u);
  EXPECT_EQ(ps.pcrSelections[0].hash, TPM2_ALG_SHA256);
  uint32_t mask = 0;
  for (int i = 0; i < ps.pcrSelections[0].sizeofSelect; ++i)
    mask |= uint32_t{ps.pcrSelections[0].pcrSelect[i]} << (8 * i);
  EXPECT_EQ(mask, selection_.mask);

  // The PCR values: the selection, the boot, and what the quote's digest covers.
  EXPECT_EQ(quote->pcrs.selection, selection_);
  ASSERT_EQ(quote->pcrs.values.size(), 10u);
  const PcrValues boot = ExpectedPcrsAfterBoot(selection_);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(quote->pcrs.values[i], boot.values[i]) << i;
  EXPECT_EQ(quote->pcrs.values[8], ExtendValue(PcrDigest{}, Sha256(Bytes{'r', 'u', 'n'})));
  EXPECT_EQ(quote->pcrs.values[9], PcrResetValue(23));
  ASSERT_EQ(attest.attested.quote.pcrDigest.size, 32);
  const PcrDigest composite = Composite(quote->pcrs);
  EXPECT_EQ(0, std::memcmp(attest.attested.quote.pcrDigest.buffer, composite.data(), 32));
  EXPECT_EQ(*tpm_->ReadPcrs(selection_), quote->pcrs);

  // The signature, checked with OpenSSL from the AK's x and y.
  EVP_PKEY* key = AkKey(ParsePublic(*tpm_->AkPublic()));
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(VerifyEcdsa(key, quote->attest, quote->signature));
  Bytes flipped = quote->attest;
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_FALSE(VerifyEcdsa(key, flipped, quote->signature));
  EVP_PKEY_free(key);

  // A second quote with other qualifying data differs where it should.
  Bytes other = qualifying_;
  other[0] ^= 0xff;
  auto quote2 = tpm_->Quote(other, selection_);
  ASSERT_TRUE(quote2.ok());
  EXPECT_NE(quote2->attest, quote->attest);
  EXPECT_EQ(quote2->pcrs, quote->pcrs);

  // Empty qualifying data is allowed too.
  auto quote3 = tpm_->Quote(ByteSpan(), Select({0}));
  ASSERT_TRUE(quote3.ok()) << quote3.status().ToString();
}

// tpm2_checkquote (tpm2-tools), an independent verifier, accepts our quote and refuses it with
// other qualifying data, other PCR values or another key.
//
// The PCR values go to tpm2_checkquote in one of two formats:
//  - raw, with -l: the 32-byte values concatenated in ascending PCR order (what
//    `tpm2_pcrread -o` writes). tpm2-tools 5.4 fails on such files with 8 or more PCRs ("Failed
//    to hash PCR values related to quote"; reproduced with its own tpm2_quote/tpm2_pcrread), so
//    the raw check uses 7 PCRs;
//  - the file `tpm2_quote -o` writes, which carries the selection (no -l): TPML_PCR_SELECTION,
//    a UINT32 count n, then n TPML_DIGEST (8 values each), all as in-memory tss2 structs of this
//    machine. Used for the 10-PCR quote.
TEST_F(QuoteTest, Tpm2CheckquoteAcceptsTheQuote) {
  ASSERT_TRUE(InPath("tpm2_checkquote")) << "tpm2-tools are needed for this cross-check";
  const std::string msg = dir_ + "/quote.msg", sig = dir_ + "/quote.sig", pem = dir_ + "/ak.pem",
                    tss = dir_ + "/ak.tss";
  std::string log;
  // The AK as PEM, exported by tpm2-tools from the TPM while no EsysTpm call is running.
  ASSERT_EQ(Run("tpm2_readpublic -c 0x81010002 -f pem -o " + pem + T(), &log), 0) << log;
  // The AK as a TPM2B_PUBLIC (tss format) straight from our AkPublic bytes.
  auto ak = tpm_->AkPublic();
  ASSERT_TRUE(ak.ok());
  Bytes tpm2b = {static_cast<uint8_t>(ak->size() >> 8), static_cast<uint8_t>(ak->size())};
  tpm2b.insert(tpm2b.end(), ak->begin(), ak->end());
  ASSERT_NO_FATAL_FAILURE(WriteFile(tss, tpm2b));
  // Another restricted ECDSA key of the same TPM.
  const std::string other_ctx = dir_ + "/other.ctx", other_pem = dir_ + "/other.pem";
  ASSERT_EQ(Run("tpm2_createprimary -C o -G ecc:ecdsa-sha256:null -a "
                "'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign' -c " +
                    other_ctx + T(),
                &log),
            0)
      << log;
  ASSERT_EQ(Run("tpm2_readpublic -c " + other_ctx + " -f pem -o " + other_pem + T(), &log), 0)
      << log;
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;

  const std::string check = "tpm2_checkquote -g sha256 -m " + msg + " -s " + sig;
  Bytes other_q = qualifying_;
  other_q[31] ^= 1;

  // 1. Seven PCRs, raw values with -l.
  {
    const PcrSelection sel = Select({0, 1, 2, 4, 7, 16, 23});
    auto quote = tpm_->Quote(qualifying_, sel);
    ASSERT_TRUE(quote.ok()) << quote.status().ToString();
    ASSERT_NO_FATAL_FAILURE(WriteFile(msg, quote->attest));     // TPMS_ATTEST
    ASSERT_NO_FATAL_FAILURE(WriteFile(sig, quote->signature));  // TPMT_SIGNATURE (tss format)
    Bytes values;
    for (const PcrDigest& d : quote->pcrs.values) values.insert(values.end(), d.begin(), d.end());
    const std::string pcrs = dir_ + "/raw.pcrs", bad_pcrs = dir_ + "/bad-raw.pcrs";
    ASSERT_NO_FATAL_FAILURE(WriteFile(pcrs, values));
    values[40] ^= 1;
    ASSERT_NO_FATAL_FAILURE(WriteFile(bad_pcrs, values));
    const std::string l = " -l sha256:0,1,2,4,7,16,23";
    const std::string q = " -q " + ToHex(qualifying_);
    EXPECT_EQ(Run(check + " -u " + pem + " -f " + pcrs + l + q, &log), 0) << log;
    EXPECT_EQ(Run(check + " -u " + tss + " -f " + pcrs + l + q, &log), 0) << log;
    ExpectRefused(check + " -u " + pem + " -f " + pcrs + l + " -q " + ToHex(other_q),
                  "Error validating nonce");
    ExpectRefused(check + " -u " + pem + " -f " + bad_pcrs + l + q,
                  "PCR values failed to match quote's digest");
    ExpectRefused(check + " -u " + other_pem + " -f " + pcrs + l + q,
                  "Error validating signed message with public key");
  }

  // 2. Ten PCRs, in the tpm2_quote -o format.
  {
    auto quote = tpm_->Quote(qualifying_, selection_);
    ASSERT_TRUE(quote.ok()) << quote.status().ToString();
    ASSERT_NO_FATAL_FAILURE(WriteFile(msg, quote->attest));
    ASSERT_NO_FATAL_FAILURE(WriteFile(sig, quote->signature));
    auto write_pcrs = [&](const std::string& path, const std::vector<PcrDigest>& pcr_values) {
      TPML_PCR_SELECTION sel{};
      sel.count = 1;
      sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
      sel.pcrSelections[0].sizeofSelect = 3;
      for (int i = 0; i < 3; ++i)
        sel.pcrSelections[0].pcrSelect[i] = static_cast<uint8_t>(selection_.mask >> (8 * i));
      std::vector<TPML_DIGEST> lists((pcr_values.size() + 7) / 8);
      for (size_t i = 0; i < pcr_values.size(); ++i) {
        TPML_DIGEST& l = lists[i / 8];
        l.digests[l.count].size = 32;
        std::memcpy(l.digests[l.count].buffer, pcr_values[i].data(), 32);
        ++l.count;
      }
      const UINT32 n = static_cast<UINT32>(lists.size());
      Bytes file;
      auto raw = [&](const void* p, size_t size) {
        file.insert(file.end(), static_cast<const uint8_t*>(p),
                    static_cast<const uint8_t*>(p) + size);
      };
      raw(&sel, sizeof(sel));
      raw(&n, sizeof(n));
      for (const TPML_DIGEST& l : lists) raw(&l, sizeof(l));
      WriteFile(path, file);
    };
    const std::string pcrs = dir_ + "/quote.pcrs", bad_pcrs = dir_ + "/bad-quote.pcrs";
    ASSERT_NO_FATAL_FAILURE(write_pcrs(pcrs, quote->pcrs.values));
    std::vector<PcrDigest> bad = quote->pcrs.values;
    bad[9][0] ^= 1;  // PCR 23, in the second list
    ASSERT_NO_FATAL_FAILURE(write_pcrs(bad_pcrs, bad));
    const std::string q = " -q " + ToHex(qualifying_);
    EXPECT_EQ(Run(check + " -u " + pem + " -f " + pcrs + q, &log), 0) << log;
    ExpectRefused(check + " -u " + pem + " -f " + pcrs + " -q " + ToHex(other_q),
                  "Error validating nonce");
    ExpectRefused(check + " -u " + pem + " -f " + bad_pcrs + q,
                  "PCR values failed to match quote's digest");
  }
}

TEST_F(QuoteTest, ConcurrentCallsAreSerialized) {
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 4; ++i) {
        if (t % 2 == 0) {
          auto q = tpm_->Quote(qualifying_, selection_);
          if (q.ok() && q->pcrs.values.size() == 10) ++good;
        } else {
          auto r = tpm_->ReadPcrs(selection_);
          if (r.ok()) ++good;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 16);
}

// ---------------------------------------------------------------------------------------------
// Sealing

// The blob's parts, parsed by the test on its own from the format in attest/README.md.
struct BlobParts {
  Bytes magic;
  uint16_t version = 0;
  uint32_t mask = 0;
  Bytes pub;   // TPM2B_PUBLIC as marshalled: BE u16 size, TPMT_PUBLIC
  Bytes priv;  // TPM2B_PRIVATE as marshalled: BE u16 size, contents
};

constexpr size_t kBlobHeader = 8 + 2 + 4;

BlobParts SplitBlob(const Bytes& blob) {
  BlobParts p;
  EXPECT_GE(blob.size(), kBlobHeader + 4);
  if (blob.size() < kBlobHeader + 4) return p;
  p.magic.assign(blob.begin(), blob.begin() + 8);
  p.version = LoadLe16(blob.data() + 8);
  p.mask = LoadLe32(blob.data() + 10);
  size_t at = kBlobHeader;
  auto take = [&](Bytes& out) {
    if (blob.size() - at < 2) return;
    const size_t n = (size_t{blob[at]} << 8) | blob[at + 1];
    EXPECT_LE(n, blob.size() - at - 2);
    if (n > blob.size() - at - 2) return;
    out.assign(blob.begin() + static_cast<ptrdiff_t>(at),
               blob.begin() + static_cast<ptrdiff_t>(at + 2 + n));
    at += 2 + n;
  };
  take(p.pub);
  take(p.priv);
  EXPECT_EQ(at, blob.size()) << "trailing bytes in the blob";
  return p;
}

Bytes JoinBlob(const BlobParts& p) {
  Bytes out = p.magic;
  out.resize(kBlobHeader);
  StoreLe16(out.data() + 8, p.version);
  StoreLe32(out.data() + 10, p.mask);
  out.insert(out.end(), p.pub.begin(), p.pub.end());
  out.insert(out.end(), p.priv.begin(), p.priv.end());
  return out;
}

// TPM2_PolicyPCR from a zero policy digest, computed by hand (TPM 2.0 Part 3, PolicyPCR):
// SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(PCR values)).
PcrDigest PolicyPcrDigest(const PcrValues& pcrs) {
  Bytes in(32, 0);
  in.insert(in.end(), {0x00, 0x00, 0x01, 0x7f});                 // TPM_CC_PolicyPCR
  in.insert(in.end(), {0x00, 0x00, 0x00, 0x01, 0x00, 0x0b, 3});  // count 1, SHA-256, 3 bytes
  for (int i = 0; i < 3; ++i) in.push_back(static_cast<uint8_t>(pcrs.selection.mask >> (8 * i)));
  const PcrDigest values = Composite(pcrs);
  in.insert(in.end(), values.begin(), values.end());
  return Sha256(in);
}

bool Contains(const Bytes& haystack, const Bytes& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

class SealTest : public TpmTest {
 protected:
  void SetUp() override {
    TpmTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(SimulateMeasuredBoot(*tpm_).ok());
    auto secret = RandomBytes(32);
    ASSERT_TRUE(secret.ok());
    secret_ = *secret;
  }
  Bytes SealOrDie(ByteSpan secret, PcrSelection pcrs) {
    auto blob = tpm_->Seal(secret, pcrs);
    EXPECT_TRUE(blob.ok()) << blob.status().ToString();
    return blob.ok() ? *blob : Bytes{};
  }
  void ExpectUnsealsTo(EsysTpm& tpm, const Bytes& blob, const Bytes& secret) {
    auto got = tpm.Unseal(blob);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(Bytes(got->span().begin(), got->span().end()), secret);
  }
  // No transient object and no session left in the TPM.
  void ExpectNothingLoaded() {
    std::string log;
    for (const char* what :
         {"handles-transient", "handles-loaded-session", "handles-saved-session"}) {
      ASSERT_EQ(Run(std::string("tpm2_getcap ") + what + T(), &log), 0) << log;
      EXPECT_EQ(log.find("0x"), std::string::npos) << what << ": " << log;
    }
  }

  // The measured boot's PCRs: what the vTPM master key of a host is sealed to.
  const PcrSelection boot_ = Select({0, 1, 2, 3, 4, 5, 6, 7});
  Bytes secret_;
};

TEST_F(SealTest, SealThenUnsealReturnsTheSecret) {
  const Bytes blob = SealOrDie(secret_, boot_);
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, blob, secret_));
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, blob, secret_));  // not consumed
  EXPECT_FALSE(Contains(blob, secret_)) << "the secret is in the blob in the clear";

  // The documented format, parsed independently.
  const BlobParts parts = SplitBlob(blob);
  EXPECT_EQ(parts.magic, (Bytes{'s', 'o', 'd', '-', 's', 'e', 'a', 'l'}));
  EXPECT_EQ(parts.version, 1);
  EXPECT_EQ(parts.mask, boot_.mask);
  ASSERT_GT(parts.pub.size(), 2u);
  ASSERT_GT(parts.priv.size(), 2u);
  const TPMT_PUBLIC pub = ParsePublic(Bytes(parts.pub.begin() + 2, parts.pub.end()));
  EXPECT_EQ(pub.type, TPM2_ALG_KEYEDHASH);
  EXPECT_EQ(pub.nameAlg, TPM2_ALG_SHA256);
  // fixedTPM | fixedParent | adminWithPolicy; no userWithAuth (only the policy unseals), no
  // sensitiveDataOrigin (the data is ours), no sign/decrypt.
  EXPECT_EQ(pub.objectAttributes,
            TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_ADMINWITHPOLICY);
  EXPECT_EQ(pub.parameters.keyedHashDetail.scheme.scheme, TPM2_ALG_NULL);
  // The policy is PolicyPCR over the PCR values after the simulated boot, computed by hand.
  const PcrDigest policy = PolicyPcrDigest(ExpectedPcrsAfterBoot(boot_));
  ASSERT_EQ(pub.authPolicy.size, 32);
  EXPECT_EQ(Bytes(pub.authPolicy.buffer, pub.authPolicy.buffer + 32),
            Bytes(policy.begin(), policy.end()));

  // Each seal is a fresh object: same secret, other blob, both unseal.
  const Bytes again = SealOrDie(secret_, boot_);
  EXPECT_NE(again, blob);
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, again, secret_));

  // The smallest and largest secrets, and a single PCR.
  const Bytes one = {0x42};
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, SealOrDie(one, Select({7})), one));
  const Bytes largest(Tpm::kMaxSealedSecret, 0xa5);
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, SealOrDie(largest, boot_), largest));

  ASSERT_NO_FATAL_FAILURE(ExpectNothingLoaded());
}

TEST_F(SealTest, ExtendingASealedPcrRefusesTheUnseal) {
  const Bytes blob = SealOrDie(secret_, boot_);
  ASSERT_TRUE(tpm_->ExtendPcr(4, Sha256(Bytes{'e', 'v', 'i', 'l'})).ok());
  auto got = tpm_->Unseal(blob);
  ASSERT_FALSE(got.ok()) << "unsealed after a sealed PCR changed";
  EXPECT_EQ(got.status().code(), Errc::kRefused) << got.status().ToString();
  EXPECT_NE(got.status().message().find("host PCRs changed since sealing"), std::string::npos)
      << got.status().ToString();
  EXPECT_NE(got.status().message().find("TPM2_Unseal"), std::string::npos)
      << got.status().ToString();
  // Refused every time, and nothing is left loaded by the failed attempts.
  EXPECT_EQ(tpm_->Unseal(blob).status().code(), Errc::kRefused);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingLoaded());
}

TEST_F(SealTest, ChangesOfOtherPcrsDoNotMatter) {
  const Bytes blob = SealOrDie(secret_, boot_);
  ASSERT_TRUE(tpm_->ExtendPcr(14, Sha256(Bytes{'v'})).ok());
  ASSERT_TRUE(tpm_->ExtendPcr(16, Sha256(Bytes{'r', 'u', 'n'})).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, blob, secret_));
  // A blob sealed to PCR 16 alone does not care about the boot PCRs.
  const Bytes run = SealOrDie(secret_, Select({16}));
  ASSERT_TRUE(tpm_->ExtendPcr(0, Sha256(Bytes{'x'})).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, run, secret_));
  EXPECT_EQ(tpm_->Unseal(blob).status().code(), Errc::kRefused);
}

// A host reboot: same TPM (state directory), PCRs reset, then the same measured boot.
TEST_F(SealTest, BlobSurvivesARebootWithTheSameBoot) {
  const Bytes blob = SealOrDie(secret_, boot_);
  ASSERT_NO_FATAL_FAILURE(RestartTpm());
  // Before the boot is measured again the PCRs are at their reset values.
  auto early = tpm_->Unseal(blob);
  EXPECT_EQ(early.status().code(), Errc::kRefused) << early.status().ToString();
  ASSERT_TRUE(SimulateMeasuredBoot(*tpm_).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, blob, secret_));
}

// The secret never crosses the TPM connection in the clear (parameter encryption): what
// EsysTpm sends and receives is recorded by tpm2-tss' pcap TCTI layered over the swtpm one,
// which takes its file from TCTI_PCAP_FILE whenever a call opens its connection.
TEST_F(SealTest, TheSecretDoesNotCrossTheTpmConnectionInTheClear) {
  const std::string seal_pcap = dir_ + "/seal.pcap", unseal_pcap = dir_ + "/unseal.pcap";
  auto recorded = EsysTpm::Open("pcap:" + swtpm_->tcti());
  ASSERT_TRUE(recorded.ok()) << recorded.status().ToString();
  ASSERT_EQ(::setenv("TCTI_PCAP_FILE", seal_pcap.c_str(), 1), 0);
  auto blob = (*recorded)->Seal(secret_, boot_);
  ASSERT_EQ(::setenv("TCTI_PCAP_FILE", unseal_pcap.c_str(), 1), 0);
  auto got = (*recorded)->Unseal(blob.ok() ? *blob : Bytes{});
  ::unsetenv("TCTI_PCAP_FILE");
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(Bytes(got->span().begin(), got->span().end()), secret_);

  // The recordings are real: TPM2_Create returned the public part of the blob, TPM2_Load got
  // the private part.
  const Bytes seal_traffic = ReadFile(seal_pcap), unseal_traffic = ReadFile(unseal_pcap);
  const BlobParts parts = SplitBlob(*blob);
  EXPECT_TRUE(Contains(seal_traffic, parts.pub)) << seal_traffic.size() << " bytes recorded";
  EXPECT_TRUE(Contains(unseal_traffic, parts.priv)) << unseal_traffic.size() << " bytes recorded";
  EXPECT_FALSE(Contains(seal_traffic, secret_)) << "the secret went to TPM2_Create in the clear";
  EXPECT_FALSE(Contains(unseal_traffic, secret_)) << "TPM2_Unseal returned the secret in the clear";
}

// Another host that booted exactly the same (same PCR values) still cannot unseal: the blob is
// bound to the TPM's owner seed through the SRK.
TEST_F(SealTest, BlobOfAnotherTpmIsRefused) {
  const Bytes blob = SealOrDie(secret_, boot_);
  auto other_swtpm = SimulatedTpm::Start(dir_ + "/other-host/tpm");
  ASSERT_TRUE(other_swtpm.ok()) << other_swtpm.status().ToString();
  auto other = EsysTpm::Open((*other_swtpm)->tcti());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  ASSERT_TRUE(SimulateMeasuredBoot(**other).ok());
  ASSERT_EQ(*(*other)->ReadPcrs(boot_), *tpm_->ReadPcrs(boot_));

  auto got = (*other)->Unseal(blob);
  ASSERT_FALSE(got.ok()) << "another TPM unsealed the blob";
  EXPECT_EQ(got.status().code(), Errc::kCrypto) << got.status().ToString();
  EXPECT_NE(got.status().message().find("not sealed by this TPM"), std::string::npos)
      << got.status().ToString();

  // And the other way round.
  auto theirs = (*other)->Seal(secret_, boot_);
  ASSERT_TRUE(theirs.ok()) << theirs.status().ToString();
  EXPECT_EQ(tpm_->Unseal(*theirs).status().code(), Errc::kCrypto);
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(**other, *theirs, secret_));
}

// Blobs altered so that they still decode: the TPM refuses them.
TEST_F(SealTest, TamperedBlobsAreRefusedByTheTpm) {
  const Bytes blob = SealOrDie(secret_, boot_);
  const BlobParts parts = SplitBlob(blob);
  ASSERT_EQ(JoinBlob(parts), blob);
  {
    // A bit of the private part (the encrypted sensitive area or its integrity HMAC).
    BlobParts p = parts;
    p.priv[p.priv.size() / 2] ^= 0x01;
    auto got = tpm_->Unseal(JoinBlob(p));
    EXPECT_EQ(got.status().code(), Errc::kCrypto) << got.status().ToString();
    EXPECT_NE(got.status().message().find("TPM2_Load"), std::string::npos)
        << got.status().ToString();
  }
  {
    // The authPolicy: another name, which the private part's integrity HMAC covers. Its first
    // byte follows the TPM2B size, type, nameAlg, attributes and the policy's own size.
    BlobParts p = parts;
    p.pub[2 + 2 + 2 + 4 + 2] ^= 0x01;
    auto got = tpm_->Unseal(JoinBlob(p));
    EXPECT_EQ(got.status().code(), Errc::kCrypto) << got.status().ToString();
  }
  {
    // The PCR selection in the header, widened to PCR 16: the policy session then covers other
    // PCRs than the sealed policy, and the unseal fails like a PCR change.
    BlobParts p = parts;
    p.mask |= 1u << 16;
    auto got = tpm_->Unseal(JoinBlob(p));
    EXPECT_EQ(got.status().code(), Errc::kRefused) << got.status().ToString();
  }
  ASSERT_NO_FATAL_FAILURE(ExpectNothingLoaded());
}

// Malformed blobs and bad arguments never reach the TPM: checked with the swtpm stopped, where
// any TPM call fails with kIo.
TEST_F(SealTest, MalformedBlobsAndBadArgumentsAreRefusedBeforeTheTpm) {
  const Bytes blob = SealOrDie(secret_, boot_);
  const BlobParts parts = SplitBlob(blob);
  ASSERT_TRUE(swtpm_->Stop().ok());
  ASSERT_EQ(tpm_->Unseal(blob).status().code(), Errc::kIo);

  auto expect_malformed = [&](const Bytes& b, const std::string& what) {
    auto got = tpm_->Unseal(b);
    EXPECT_EQ(got.status().code(), Errc::kMalformed) << what << ": " << got.status().ToString();
    EXPECT_NE(got.status().message().find("sealed blob"), std::string::npos) << what;
  };
  for (size_t n = 0; n < blob.size(); ++n)
    expect_malformed(Bytes(blob.begin(), blob.begin() + static_cast<ptrdiff_t>(n)),
                     "truncated to " + std::to_string(n));
  for (size_t i = 0; i < 8; ++i) {
    Bytes b = blob;
    b[i] ^= 0x20;
    expect_malformed(b, "magic byte " + std::to_string(i));
  }
  for (uint16_t v : {uint16_t{0}, uint16_t{2}, uint16_t{0x100}, uint16_t{0xffff}}) {
    BlobParts p = parts;
    p.version = v;
    expect_malformed(JoinBlob(p), "version " + std::to_string(v));
  }
  for (uint32_t mask : {0u, 1u << 24, 0x80000001u}) {
    BlobParts p = parts;
    p.mask = mask;
    expect_malformed(JoinBlob(p), "mask " + std::to_string(mask));
  }
  {
    Bytes b = blob;
    b.push_back(0);
    expect_malformed(b, "trailing byte");
  }
  // The TPM2B sizes: zero, one more or less than the contents, and huge.
  for (Bytes BlobParts::*field : {&BlobParts::pub, &BlobParts::priv}) {
    for (int delta : {-1, 1}) {
      BlobParts p = parts;
      const size_t n = (p.*field).size() - 2 + static_cast<size_t>(delta);
      (p.*field)[0] = static_cast<uint8_t>(n >> 8);
      (p.*field)[1] = static_cast<uint8_t>(n);
      expect_malformed(JoinBlob(p), "TPM2B size off by " + std::to_string(delta));
    }
    for (uint16_t n : {uint16_t{0}, uint16_t{0x1000}, uint16_t{0xffff}}) {
      BlobParts p = parts;
      (p.*field)[0] = static_cast<uint8_t>(n >> 8);
      (p.*field)[1] = static_cast<uint8_t>(n);
      expect_malformed(JoinBlob(p), "TPM2B size " + std::to_string(n));
    }
  }
  {
    // A huge TPM2B_PRIVATE whose bytes are all there.
    BlobParts p = parts;
    p.priv.assign(2 + 0xffff, 0xee);
    p.priv[0] = 0xff;
    p.priv[1] = 0xff;
    expect_malformed(JoinBlob(p), "64 KiB private part");
  }
  {
    Bytes huge = blob;
    huge.resize(1 << 20, 0);
    expect_malformed(huge, "1 MiB blob");
  }
  // A public area that parses but is not a sealed object as Seal makes it. The attributes are
  // bytes 4..7 of the TPMT_PUBLIC (after type and nameAlg), i.e. 6..9 of the TPM2B.
  auto with_public = [&](auto edit, const std::string& what) {
    BlobParts p = parts;
    edit(p.pub);
    expect_malformed(JoinBlob(p), what);
  };
  with_public([](Bytes& pub) { pub[9] |= 0x40; }, "userWithAuth set");
  with_public([](Bytes& pub) { pub[9] |= 0x20; }, "sensitiveDataOrigin set");
  with_public([](Bytes& pub) { pub[9] &= static_cast<uint8_t>(~0x02); }, "fixedTPM clear");
  with_public([](Bytes& pub) { pub[7] |= 0x04; }, "sign set");
  with_public([](Bytes& pub) { pub[5] = 0x0c; }, "nameAlg SHA-384");
  with_public([](Bytes& pub) { pub[3] = 0x01; }, "type RSA");

  // Every bit of the framing and of the public area's structure (all but the policy digest and
  // the unique digest, which only the TPM can check) is checked by the decoder.
  ASSERT_EQ(parts.pub.size(), 2u + 78u);  // TPMT_PUBLIC of a keyedhash object, SHA-256
  const size_t pub_at = kBlobHeader, priv_at = pub_at + parts.pub.size();
  auto only_tpm_checks = [&](size_t i) {
    const bool mask_low = i >= 10 && i < 13;  // another valid selection
    const bool policy = i >= pub_at + 12 && i < pub_at + 12 + 32;
    const bool unique = i >= pub_at + 48 && i < pub_at + 48 + 32;
    return mask_low || policy || unique;
  };
  for (size_t i = 0; i < priv_at + 2; ++i) {
    if (only_tpm_checks(i)) continue;
    for (uint8_t x : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      Bytes b = blob;
      b[i] ^= x;
      expect_malformed(b, "byte " + std::to_string(i) + " ^ " + std::to_string(x));
    }
  }

  // Bad arguments of Seal.
  EXPECT_EQ(tpm_->Seal(ByteSpan(), boot_).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->Seal(Bytes(Tpm::kMaxSealedSecret + 1, 1), boot_).status().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->Seal(secret_, PcrSelection{}).status().code(), Errc::kInvalidArgument);
  EXPECT_EQ(tpm_->Seal(secret_, PcrSelection{1u << 24}).status().code(), Errc::kInvalidArgument);
  // The same call with good arguments does reach the (stopped) TPM.
  EXPECT_EQ(tpm_->Seal(secret_, boot_).status().code(), Errc::kIo);
}

// tpm2-tools as an independent second implementation: it unseals our blob (its two TPM2B are
// tpm2_load's -u/-r files, under the SRK tpm2_createprimary makes from kSrk), and we unseal
// an object tpm2_create sealed with a PCR policy from tpm2_createpolicy.
TEST_F(SealTest, Tpm2ToolsInteroperate) {
  ASSERT_TRUE(InPath("tpm2_unseal")) << "tpm2-tools are needed for this cross-check";
  const Bytes blob = SealOrDie(secret_, boot_);
  const BlobParts parts = SplitBlob(blob);
  const std::string srk = dir_ + "/srk.ctx", pub = dir_ + "/seal.pub", priv = dir_ + "/seal.priv",
                    obj = dir_ + "/seal.ctx", out = dir_ + "/unsealed", policy = dir_ + "/pcr.pol",
                    in = dir_ + "/secret";
  const std::string pcrs = "sha256:0,1,2,3,4,5,6,7";
  // The SRK of esys_tpm.h: tpm2-tools' default ECC storage primary plus noDA.
  const std::string kSrk =
      "tpm2_createprimary -C o -G ecc -a "
      "'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c ";
  ASSERT_NO_FATAL_FAILURE(WriteFile(pub, parts.pub));
  ASSERT_NO_FATAL_FAILURE(WriteFile(priv, parts.priv));
  std::string log;
  ASSERT_EQ(Run(kSrk + srk + T(), &log), 0) << log;
  ASSERT_EQ(Run("tpm2_load -C " + srk + " -u " + pub + " -r " + priv + " -c " + obj + T(), &log), 0)
      << log;
  // Without a resource manager tpm2-tools leave their objects loaded: free the slots.
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;
  ASSERT_EQ(Run("tpm2_unseal -c " + obj + " -p pcr:" + pcrs + " -o " + out + T(), &log), 0) << log;
  EXPECT_EQ(ReadFile(out), secret_);
  // Without the policy session the object does not unseal (userWithAuth is clear).
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;
  ExpectRefused("tpm2_unseal -c " + obj + " -o " + out + T(),
                "authValue or authPolicy is not available");
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;

  // The other way: tpm2-tools seal, we unseal.
  const Bytes theirs = {'f', 'r', 'o', 'm', ' ', 't', 'p', 'm', '2', '-', 't', 'o', 'o', 'l', 's'};
  ASSERT_NO_FATAL_FAILURE(WriteFile(in, theirs));
  ASSERT_EQ(Run("tpm2_createpolicy --policy-pcr -l " + pcrs + " -L " + policy + T(), &log), 0)
      << log;
  ASSERT_EQ(Run(kSrk + srk + T(), &log), 0) << log;
  ASSERT_EQ(Run("tpm2_create -C " + srk + " -a 'fixedtpm|fixedparent|adminwithpolicy' -L " +
                    policy + " -i " + in + " -u " + pub + " -r " + priv + T(),
                &log),
            0)
      << log;
  ASSERT_EQ(Run("tpm2_flushcontext -t" + T(), &log), 0) << log;
  BlobParts p = parts;
  p.pub = ReadFile(pub);
  p.priv = ReadFile(priv);
  ASSERT_NO_FATAL_FAILURE(ExpectUnsealsTo(*tpm_, JoinBlob(p), theirs));
}

// ---------------------------------------------------------------------------------------------
// Failures

TEST_F(TpmTest, CallsFailCleanlyWhenSwtpmDies) {
  ASSERT_TRUE(tpm_->Provision().ok());
  ASSERT_EQ(::kill(swtpm_->pid(), SIGKILL), 0);
  for (int i = 0; i < 500 && swtpm_->Running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_FALSE(swtpm_->Running());
  PcrDigest q{};
  EXPECT_EQ(tpm_->ReadPcrs(Select({0})).status().code(), Errc::kIo);
  EXPECT_EQ(tpm_->Quote(q, Select({0})).status().code(), Errc::kIo);
  EXPECT_EQ(tpm_->ExtendPcr(16, q).code(), Errc::kIo);
  EXPECT_EQ(tpm_->AkPublic().status().code(), Errc::kIo);
  Status s = tpm_->Provision();
  EXPECT_EQ(s.code(), Errc::kIo);
  EXPECT_NE(s.message().find(swtpm_->tcti()), std::string::npos) << s.ToString();
  EXPECT_TRUE(swtpm_->Stop().ok());  // already gone: fine
}

TEST_F(TpmTest, OpenNeedsAnAnsweringTpm) {
  // The swtpm's port once it is stopped: nobody listens there.
  const std::string tcti = swtpm_->tcti();
  tpm_.reset();
  ASSERT_TRUE(swtpm_->Stop().ok());
  auto t = EsysTpm::Open(tcti);
  EXPECT_EQ(t.status().code(), Errc::kIo) << t.status().ToString();
  auto dev = EsysTpm::Open("device:" + dir_ + "/no-such-tpm");
  EXPECT_EQ(dev.status().code(), Errc::kIo) << dev.status().ToString();
  EsysTpmOptions bad;
  bad.ak_handle = 0x80000001;
  EXPECT_EQ(EsysTpm::Open(tcti, bad).status().code(), Errc::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// SimulatedTpm

TEST_F(TpmTest, SimulatedTpmsCoexistAndLockTheirState) {
  // A second TPM on its own state (created with its parents): other ports, another EK.
  auto second = SimulatedTpm::Start(dir_ + "/hosts/second/tpm");
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_NE((*second)->port(), swtpm_->port());
  EXPECT_NE((*second)->tcti(), swtpm_->tcti());
  EXPECT_EQ(fs::status(dir_ + "/hosts/second/tpm").permissions() & fs::perms::all,
            fs::perms::owner_all);
  auto tpm2 = EsysTpm::Open((*second)->tcti());
  ASSERT_TRUE(tpm2.ok());
  ASSERT_TRUE(tpm_->Provision().ok());
  ASSERT_TRUE((*tpm2)->Provision().ok());
  EXPECT_NE(*tpm_->EkPublic(), *(*tpm2)->EkPublic());

  // The first state directory is in use: a second swtpm on it fails with its log in the error.
  auto clash = SimulatedTpm::Start(dir_ + "/state");
  EXPECT_EQ(clash.status().code(), Errc::kIo) << clash.status().ToString();

  SimulatedTpmOptions missing;
  missing.binary = "sod-no-such-swtpm";
  EXPECT_EQ(SimulatedTpm::Start(dir_ + "/third", missing).status().code(), Errc::kNotFound);

  const pid_t pid = (*second)->pid();
  EXPECT_TRUE((*second)->Stop().ok());
  EXPECT_FALSE((*second)->Running());
  EXPECT_TRUE((*second)->Stop().ok());  // idempotent
  EXPECT_NE(::kill(pid, 0), 0);         // reaped, gone
}

TEST_F(TpmTest, FixedPortInUseIsAnError) {
  SimulatedTpmOptions o;
  o.port = swtpm_->port();
  auto s = SimulatedTpm::Start(dir_ + "/other", o);
  EXPECT_EQ(s.status().code(), Errc::kIo) << s.status().ToString();
}

}  // namespace
}  // namespace sod::attest
