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
