// Receipts: golden bytes, round trip, every decode refusal, and host signatures (sign / verify,
// role confusion, tampering, wrong key, unsafe or unusable key files).
#include "migrate/receipt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "migrate/pki.h"

namespace sod {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

Bytes FromHex(std::string_view hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

// The receipt whose encoding is kGolden.
Receipt GoldenReceipt() {
  Receipt r;
  for (size_t i = 0; i < 16; ++i) r.migration_id[i] = static_cast<uint8_t>(i);
  r.vm_name = "vm1";
  r.source_host = "hosta";
  r.destination_host = "hostb";
  r.started_unix_ms = 0x0102030405060708;
  r.switchover_unix_ms = 0x1112131415161718;
  r.rounds = 0x21222324;
  r.stream_bytes = 0x3132333435363738;
  r.wire_bytes = 0x4142434445464748;
  r.records = 0x5152535455565758;
  r.transcript.fill(0xaa);
  r.suite = Suite::kAes256Gcm;
  r.vtpm_epoch = 0x6162636465666768;
  r.ram_digest_present = true;
  r.ram_digest.fill(0xbb);
  r.outcome_reason = "done";
  return r;
}

// Written by hand from the layout in receipt.h (and cross-checked with Python's struct module).
const char* const kGolden =
    "01"                                                                // version
    "000102030405060708090a0b0c0d0e0f"                                  // migration_id
    "0300766d31"                                                        // vm_name "vm1"
    "0500686f737461"                                                    // source_host "hosta"
    "0500686f737462"                                                    // destination "hostb"
    "0807060504030201"                                                  // started_unix_ms
    "1817161514131211"                                                  // switchover_unix_ms
    "24232221"                                                          // rounds
    "3837363534333231"                                                  // stream_bytes
    "4847464544434241"                                                  // wire_bytes
    "5857565554535251"                                                  // records
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"  // transcript
    "01"                                                                // suite aes-256-gcm
    "6867666564636261"                                                  // vtpm_epoch
    "01"                                                                // ram_digest_present
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"                                  // ram_digest
    "0400646f6e65";                                                     // outcome_reason "done"

std::string Repeat(std::string_view s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// A realistic committed receipt.
Receipt CommittedReceipt() {
  Receipt r;
  r.migration_id.fill(0x42);
  r.vm_name = "web-01";
  r.source_host = "hosta";
  r.destination_host = "hostb";
  r.started_unix_ms = 1738324800123;
  r.switchover_unix_ms = 1738324802456;
  r.rounds = 5;
  r.stream_bytes = 1 << 30;
  r.wire_bytes = (1 << 30) + 65536;
  r.records = 1100;
  r.transcript.fill(0x17);
  r.suite = Suite::kAes256Gcm;
  return r;
}

// Offset of the u16 length of each string field in kGolden.
constexpr size_t kVmNameAt = 17;
constexpr size_t kSourceAt = kVmNameAt + 2 + 3;
constexpr size_t kDestinationAt = kSourceAt + 2 + 5;
constexpr size_t kSuiteAt = kDestinationAt + 2 + 5 + 8 + 8 + 4 + 8 + 8 + 8 + 32;
constexpr size_t kPresentAt = kSuiteAt + 1 + 8;
constexpr size_t kReasonAt = kPresentAt + 1 + 16;

// kGolden with the string at `at` (u16 length + bytes) replaced by `s`.
Bytes WithString(size_t at, std::string_view s) {
  Bytes b = FromHex(kGolden);
  size_t old_len = LoadLe16(&b[at]);
  Bytes repl(2);
  StoreLe16(repl.data(), static_cast<uint16_t>(s.size()));
  repl.insert(repl.end(), s.begin(), s.end());
  b.erase(b.begin() + at, b.begin() + at + 2 + old_len);
  b.insert(b.begin() + at, repl.begin(), repl.end());
  return b;
}

void ExpectRefused(const Bytes& b, Errc code, std::string_view what) {
  Result<Receipt> r = DecodeReceipt(b);
  ASSERT_FALSE(r.ok()) << "accepted: " << ToHex(b);
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(std::string(what))) << r.status().ToString();
}

// --- Codec -------------------------------------------------------------------------------------

TEST(ReceiptCodecTest, GoldenBytes) {
  Bytes golden = FromHex(kGolden);
  ASSERT_EQ(golden.size(), 144u);
  EXPECT_EQ(ToHex(EncodeReceipt(GoldenReceipt())), kGolden);
  Result<Receipt> back = DecodeReceipt(golden);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, GoldenReceipt());
  EXPECT_EQ(kSuiteAt, 112u);
  EXPECT_EQ(golden[kSuiteAt], 0x01);
  EXPECT_EQ(golden[kPresentAt], 0x01);
}

TEST(ReceiptCodecTest, RoundTripsVariants) {
  std::vector<Receipt> cases;
  cases.push_back(CommittedReceipt());
  Receipt r = CommittedReceipt();
  r.suite = Suite::kHmacSha256;
  r.vtpm_epoch = 9;
  r.ram_digest_present = true;
  r.ram_digest.fill(0xfe);
  cases.push_back(r);
  r = CommittedReceipt();
  r.suite = Suite::kInvalid;  // aborted before negotiation
  r.switchover_unix_ms = 0;
  r.outcome_reason = "auth: TLS handshake with hostb failed — certificate expired";
  cases.push_back(r);
  r = CommittedReceipt();  // every string at its maximum
  r.vm_name = std::string(kMaxReceiptVmName, 'v');
  r.source_host = std::string(kMaxReceiptHostId, 's');
  r.destination_host = std::string(kMaxReceiptHostId, 'd');
  r.outcome_reason = std::string(kMaxReceiptReason, 'o');
  r.started_unix_ms = r.switchover_unix_ms = r.stream_bytes = r.wire_bytes = r.records =
      r.vtpm_epoch = UINT64_MAX;
  r.rounds = UINT32_MAX;
  cases.push_back(r);
  for (const Receipt& c : cases) {
    Bytes b = EncodeReceipt(c);
    EXPECT_LE(b.size(), kMaxReceiptSize);
    Result<Receipt> back = DecodeReceipt(b);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, c);
    EXPECT_EQ(EncodeReceipt(*back), b);
    EXPECT_TRUE(ValidateReceipt(c).ok());
  }
  EXPECT_EQ(EncodeReceipt(cases.back()).size(), kMaxReceiptSize);
}

TEST(ReceiptCodecTest, RefusesEveryTruncation) {
  Bytes golden = FromHex(kGolden);
  for (size_t n = 0; n < golden.size(); ++n) {
    Bytes cut(golden.begin(), golden.begin() + n);
    Result<Receipt> r = DecodeReceipt(cut);
    ASSERT_FALSE(r.ok()) << "accepted a prefix of " << n << " bytes";
    EXPECT_EQ(r.status().code(), Errc::kMalformed) << n << ": " << r.status().ToString();
  }
}

TEST(ReceiptCodecTest, RefusesUnknownVersions) {
  for (uint8_t v : {0, 2, 0xff}) {
    Bytes b = FromHex(kGolden);
    b[0] = v;
    ExpectRefused(b, Errc::kUnsupported, "unknown version " + std::to_string(v));
  }
}

TEST(ReceiptCodecTest, RefusesTrailingBytesAndOversizedInput) {
  Bytes b = FromHex(kGolden);
  b.push_back(0);
  ExpectRefused(b, Errc::kMalformed, "1 trailing bytes");
  Bytes huge(kMaxReceiptSize + 1, 0);
  huge[0] = kReceiptVersion;
  ExpectRefused(huge, Errc::kTooLarge, "above 575");
}

TEST(ReceiptCodecTest, RefusesOverlongStringsBeforeCopying) {
  ExpectRefused(WithString(kVmNameAt, std::string(kMaxReceiptVmName + 1, 'v')), Errc::kTooLarge,
                "vm_name length 65 above 64");
  ExpectRefused(WithString(kSourceAt, std::string(kMaxReceiptHostId + 1, 'h')), Errc::kTooLarge,
                "source_host length 65");
  ExpectRefused(WithString(kDestinationAt, std::string(kMaxReceiptHostId + 1, 'h')),
                Errc::kTooLarge, "destination_host length 65");
  ExpectRefused(WithString(kReasonAt, std::string(kMaxReceiptReason + 1, 'r')), Errc::kTooLarge,
                "outcome_reason length 257 above 256");
  // A huge length with nothing behind it is refused for its size, not read.
  Bytes b = FromHex(kGolden);
  b.resize(kVmNameAt + 2);
  StoreLe16(&b[kVmNameAt], 0xffff);
  ExpectRefused(b, Errc::kTooLarge, "vm_name length 65535");
  // At the maximum they are fine.
  EXPECT_TRUE(DecodeReceipt(WithString(kVmNameAt, std::string(kMaxReceiptVmName, 'v'))).ok());
  EXPECT_TRUE(DecodeReceipt(WithString(kReasonAt, std::string(kMaxReceiptReason, 'r'))).ok());
}

TEST(ReceiptCodecTest, RefusesBadStringsAndHostIds) {
  ExpectRefused(WithString(kVmNameAt, ""), Errc::kMalformed, "vm_name");
  ExpectRefused(WithString(kVmNameAt, "vm\n1"), Errc::kMalformed, "vm_name");
  ExpectRefused(WithString(kVmNameAt, "vm\x7f"), Errc::kMalformed, "vm_name");
  ExpectRefused(WithString(kVmNameAt, "vm\xc3"), Errc::kMalformed, "vm_name");    // cut UTF-8
  ExpectRefused(WithString(kVmNameAt, "\xc0\xaf"), Errc::kMalformed, "vm_name");  // overlong '/'
  ExpectRefused(WithString(kVmNameAt, "\xed\xa0\x80"), Errc::kMalformed, "vm_name");  // surrogate
  ExpectRefused(WithString(kReasonAt, "bad\xff"), Errc::kMalformed, "outcome_reason");
  ExpectRefused(WithString(kSourceAt, "Host_A"), Errc::kMalformed, "source_host: invalid host id");
  ExpectRefused(WithString(kSourceAt, ""), Errc::kMalformed, "source_host");
  ExpectRefused(WithString(kDestinationAt, "-b"), Errc::kMalformed, "destination_host");
  Result<Receipt> utf8 = DecodeReceipt(WithString(kVmNameAt, "vm-é-✓-𝄞"));
  ASSERT_TRUE(utf8.ok()) << utf8.status().ToString();
  EXPECT_EQ(utf8->vm_name, "vm-é-✓-𝄞");
}

TEST(ReceiptCodecTest, RefusesUnknownSuiteAndBadDigestFlag) {
  Bytes b = FromHex(kGolden);
  b[kSuiteAt] = 3;
  ExpectRefused(b, Errc::kUnsupported, "unknown suite 3");
  b = FromHex(kGolden);
  b[kPresentAt] = 2;
  ExpectRefused(b, Errc::kMalformed, "ram_digest_present is 2");
  b = FromHex(kGolden);
  b[kPresentAt] = 0;  // absent, but the digest bytes are 0xbb
  ExpectRefused(b, Errc::kMalformed, "ram_digest is not zero although absent");
  for (size_t i = 0; i < 16; ++i) b[kPresentAt + 1 + i] = 0;
  Result<Receipt> absent = DecodeReceipt(b);
  ASSERT_TRUE(absent.ok()) << absent.status().ToString();
  EXPECT_FALSE(absent->ram_digest_present);
}

TEST(ReceiptCodecTest, ValidateReceiptNamesWhatCannotBeEncoded) {
  Receipt r = CommittedReceipt();
  r.vm_name = std::string(kMaxReceiptVmName + 1, 'v');
  Status s = ValidateReceipt(r);
  EXPECT_EQ(s.code(), Errc::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("vm_name length 65 above 64"));
  r = CommittedReceipt();
  r.outcome_reason = std::string(70000, 'x');  // beyond what a u16 length could even say
  EXPECT_THAT(ValidateReceipt(r).message(), HasSubstr("outcome_reason length 70000"));
  r = CommittedReceipt();
  r.version = 2;
  EXPECT_EQ(ValidateReceipt(r).code(), Errc::kInvalidArgument);
  r = CommittedReceipt();
  r.ram_digest[3] = 1;  // set, but not marked present
  s = ValidateReceipt(r);
  EXPECT_EQ(s.code(), Errc::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("ram_digest"));
  r = CommittedReceipt();
  r.destination_host = "HostB";
  s = ValidateReceipt(r);
  EXPECT_EQ(s.code(), Errc::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("destination_host"));
}

TEST(ReceiptCodecTest, ToJsonIsReadableAndLossless) {
  Receipt r = CommittedReceipt();
  r.ram_digest_present = true;
  r.ram_digest.fill(0x0f);
  nlohmann::json j = ToJson(r);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["migration_id"], Repeat("42", 16));
  EXPECT_EQ(j["vm_name"], "web-01");
  EXPECT_EQ(j["source_host"], "hosta");
  EXPECT_EQ(j["destination_host"], "hostb");
  EXPECT_EQ(j["started"], "2025-01-31T12:00:00.123Z");
  EXPECT_EQ(j["started_unix_ms"], 1738324800123u);
  EXPECT_EQ(j["switchover"], "2025-01-31T12:00:02.456Z");
  EXPECT_EQ(j["rounds"], 5);
  EXPECT_EQ(j["records"], 1100);
  EXPECT_EQ(j["transcript"], Repeat("17", 32));
  EXPECT_EQ(j["suite"], "aes-256-gcm");
  EXPECT_EQ(j["vtpm_epoch"], 0);
  EXPECT_EQ(j["ram_digest"], Repeat("0f", 16));
  EXPECT_EQ(j["outcome"], "committed");
  EXPECT_EQ(j["outcome_reason"], "");

  r.ram_digest_present = false;
  r.ram_digest.fill(0);
  r.switchover_unix_ms = 0;
  r.outcome_reason = "timeout: destination did not answer";
  j = ToJson(r);
  EXPECT_TRUE(j["ram_digest"].is_null());
  EXPECT_TRUE(j["switchover"].is_null());
  EXPECT_EQ(j["outcome"], "aborted");
  EXPECT_NO_THROW(j.dump());
}

TEST(ReceiptCodecTest, FormatsUnixMillis) {
  EXPECT_EQ(FormatUnixMillis(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatUnixMillis(1738324800123), "2025-01-31T12:00:00.123Z");
  EXPECT_EQ(FormatUnixMillis(951782400999), "2000-02-29T00:00:00.999Z");
}

// --- Signatures --------------------------------------------------------------------------------

// A cluster CA with hosta and hostb, as `sodctl pki` makes it.
class HostSignerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/sod-receipt-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    ASSERT_TRUE(CreateCa(*dir_, {}).ok());
    for (const char* host : {"hosta", "hostb"})
      ASSERT_TRUE(IssueHostCert(*dir_, host, "", {}).ok()) << host;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  static std::string KeyOf(const std::string& host) { return *dir_ + "/" + host + ".key"; }
  static std::unique_ptr<HostSigner> Signer(const std::string& host) {
    auto s = HostSigner::Load(KeyOf(host));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  // Writes `key` as a PEM private key with mode 0600.
  static std::string WriteKey(const std::string& name, EVP_PKEY* key) {
    std::string path = *dir_ + "/" + name;
    FILE* f = fopen(path.c_str(), "w");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr), 1);
    fclose(f);
    chmod(path.c_str(), 0600);
    return path;
  }
  static std::string* dir_;
};
std::string* HostSignerTest::dir_ = nullptr;

TEST_F(HostSignerTest, SignsAndVerifiesAReceiptInEachRole) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  Receipt r = CommittedReceipt();
  for (ReceiptRole role : {ReceiptRole::kSource, ReceiptRole::kDestination}) {
    Result<Bytes> sig = SignReceipt(*a, r, role);
    ASSERT_TRUE(sig.ok()) << sig.status().ToString();
    EXPECT_LE(sig->size(), 72u);
    EXPECT_LE(sig->size(), kMaxSignature);
    Status ok = VerifyReceiptSignature(a->public_key_der(), r, role, *sig);
    EXPECT_TRUE(ok.ok()) << ok.ToString();
    EXPECT_TRUE(VerifySignature(a->public_key_der(), ReceiptSigningInput(r, role), *sig).ok());
  }
}

TEST_F(HostSignerTest, SigningInputIsPrefixRoleAndEncoding) {
  Receipt r = GoldenReceipt();
  Bytes src = ReceiptSigningInput(r, ReceiptRole::kSource);
  std::string expect_src = "sod/1 receipt source";
  ASSERT_EQ(src.size(), expect_src.size() + 144);
  EXPECT_EQ(std::string(src.begin(), src.begin() + expect_src.size()), expect_src);
  EXPECT_EQ(ToHex(ByteSpan(src).subspan(expect_src.size())), kGolden);
  Bytes dst = ReceiptSigningInput(r, ReceiptRole::kDestination);
  std::string expect_dst = "sod/1 receipt destination";
  EXPECT_EQ(std::string(dst.begin(), dst.begin() + expect_dst.size()), expect_dst);
  EXPECT_EQ(ReceiptRoleName(ReceiptRole::kSource), "source");
  EXPECT_EQ(ReceiptRoleName(ReceiptRole::kDestination), "destination");
}

TEST_F(HostSignerTest, SourceSignatureNeverPassesAsDestinationSignature) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  Receipt r = CommittedReceipt();
  Result<Bytes> src = SignReceipt(*a, r, ReceiptRole::kSource);
  ASSERT_TRUE(src.ok());
  Status s = VerifyReceiptSignature(a->public_key_der(), r, ReceiptRole::kDestination, *src);
  EXPECT_EQ(s.code(), Errc::kIntegrity);
  EXPECT_THAT(s.message(), HasSubstr("destination signature of the receipt for web-01"));
  EXPECT_THAT(s.message(), HasSubstr("receipt signature does not verify"));
  Result<Bytes> dst = SignReceipt(*a, r, ReceiptRole::kDestination);
  ASSERT_TRUE(dst.ok());
  EXPECT_EQ(VerifyReceiptSignature(a->public_key_der(), r, ReceiptRole::kSource, *dst).code(),
            Errc::kIntegrity);
}

TEST_F(HostSignerTest, EveryFlippedBitInMessageOrSignatureIsRefused) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  Bytes message = ReceiptSigningInput(CommittedReceipt(), ReceiptRole::kSource);
  Result<Bytes> sig = a->Sign(message);
  ASSERT_TRUE(sig.ok());
  ASSERT_TRUE(VerifySignature(a->public_key_der(), message, *sig).ok());
  for (size_t i = 0; i < message.size() * 8; ++i) {
    Bytes m = message;
    m[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
    Status s = VerifySignature(a->public_key_der(), m, *sig);
    ASSERT_EQ(s.code(), Errc::kIntegrity) << "message bit " << i;
    EXPECT_EQ(s.message(), "receipt signature does not verify");
  }
  for (size_t i = 0; i < sig->size() * 8; ++i) {
    Bytes g = *sig;
    g[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
    ASSERT_EQ(VerifySignature(a->public_key_der(), message, g).code(), Errc::kIntegrity)
        << "signature bit " << i;
  }
  Bytes longer = *sig;
  longer.push_back(0);
  EXPECT_EQ(VerifySignature(a->public_key_der(), message, longer).code(), Errc::kIntegrity);
  EXPECT_EQ(VerifySignature(a->public_key_der(), message, {}).code(), Errc::kIntegrity);
  Bytes shorter(sig->begin(), sig->end() - 1);
  EXPECT_EQ(VerifySignature(a->public_key_der(), message, shorter).code(), Errc::kIntegrity);
}

TEST_F(HostSignerTest, WrongKeyIsRefused) {
  auto a = Signer("hosta");
  auto b = Signer("hostb");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a->public_key_der(), b->public_key_der());
  Receipt r = CommittedReceipt();
  Result<Bytes> sig = SignReceipt(*a, r, ReceiptRole::kSource);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(VerifyReceiptSignature(b->public_key_der(), r, ReceiptRole::kSource, *sig).code(),
            Errc::kIntegrity);
}

TEST_F(HostSignerTest, PublicKeyIsTheCertificatesSubjectPublicKeyInfo) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  FILE* f = fopen((*dir_ + "/hosta.crt").c_str(), "r");
  ASSERT_NE(f, nullptr);
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_NE(cert, nullptr);
  unsigned char* der = nullptr;
  int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  ASSERT_GT(len, 0);
  EXPECT_EQ(a->public_key_der(), Bytes(der, der + len));
  OPENSSL_free(der);
  X509_free(cert);
}

TEST_F(HostSignerTest, KeyFileReadableByOthersIsRefused) {
  std::string copy = *dir_ + "/loose.key";
  fs::copy_file(KeyOf("hosta"), copy, fs::copy_options::overwrite_existing);
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    ASSERT_EQ(chmod(copy.c_str(), mode), 0);
    auto s = HostSigner::Load(copy);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Errc::kInvalidArgument);
    char shown[16];
    snprintf(shown, sizeof(shown), "mode %04o", static_cast<unsigned>(mode));
    EXPECT_THAT(s.status().message(), HasSubstr(shown));
    EXPECT_THAT(s.status().message(), HasSubstr("host key " + copy));
  }
  ASSERT_EQ(chmod(copy.c_str(), 0400), 0);
  EXPECT_TRUE(HostSigner::Load(copy).ok());
}

TEST_F(HostSignerTest, MissingUnreadableOrWrongKindOfKeyIsRefused) {
  auto missing = HostSigner::Load(*dir_ + "/nope.key");
  EXPECT_EQ(missing.status().code(), Errc::kNotFound);

  auto cert = HostSigner::Load(*dir_ + "/hosta.crt");  // 0644: refused for its mode first
  EXPECT_EQ(cert.status().code(), Errc::kInvalidArgument);
  std::string not_pem = *dir_ + "/garbage.key";
  FILE* f = fopen(not_pem.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("not a key\n", f);
  fclose(f);
  ASSERT_EQ(chmod(not_pem.c_str(), 0600), 0);
  auto garbage = HostSigner::Load(not_pem);
  EXPECT_EQ(garbage.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), HasSubstr("holds no PEM private key"));

  EVP_PKEY* p384 = EVP_EC_gen("P-384");
  ASSERT_NE(p384, nullptr);
  std::string p384_path = WriteKey("p384.key", p384);
  auto wrong_curve = HostSigner::Load(p384_path);
  EXPECT_EQ(wrong_curve.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(wrong_curve.status().message(), HasSubstr("not an ECDSA P-256 key"));

  // Verifying with a P-384 key or with bytes that are no key at all is a local error.
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(p384, &der);
  ASSERT_GT(len, 0);
  Bytes p384_der(der, der + len);
  OPENSSL_free(der);
  EVP_PKEY_free(p384);
  Bytes msg = {1, 2, 3};
  Bytes sig(70, 1);
  EXPECT_EQ(VerifySignature(p384_der, msg, sig).code(), Errc::kInvalidArgument);
  EXPECT_EQ(VerifySignature(Bytes{0x30, 0x03, 0x02, 0x01, 0x01}, msg, sig).code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(VerifySignature({}, msg, sig).code(), Errc::kInvalidArgument);
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  Bytes padded = a->public_key_der();
  padded.push_back(0);  // trailing bytes after the key
  EXPECT_EQ(VerifySignature(padded, msg, sig).code(), Errc::kInvalidArgument);
}

TEST_F(HostSignerTest, RefusesToSignAReceiptThatCannotBeDecoded) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  Receipt r = CommittedReceipt();
  r.outcome_reason = std::string(kMaxReceiptReason + 1, 'x');
  EXPECT_EQ(SignReceipt(*a, r, ReceiptRole::kSource).status().code(), Errc::kInvalidArgument);
}

TEST_F(HostSignerTest, SignsFromManyThreadsAtOnce) {
  auto a = Signer("hosta");
  ASSERT_NE(a, nullptr);
  std::vector<std::thread> threads;
  std::vector<int> verified(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Receipt r = CommittedReceipt();
      r.rounds = static_cast<uint32_t>(t);
      for (int i = 0; i < 25; ++i) {
        Result<Bytes> sig = SignReceipt(*a, r, ReceiptRole::kSource);
        if (sig.ok() &&
            VerifyReceiptSignature(a->public_key_der(), r, ReceiptRole::kSource, *sig).ok())
          ++verified[t];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(verified[t], 25) << t;
}

}  // namespace
}  // namespace sod
