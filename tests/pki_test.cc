// Cluster PKI (migrate/pki.h) and the `sodctl pki` CLI.
#include "migrate/pki.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace sod {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

X509Ptr LoadCert(const std::string& path) {
  FILE* f = fopen(path.c_str(), "r");
  if (!f) return nullptr;
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  return X509Ptr(x);
}

bool KeyLoads(const std::string& path) {
  FILE* f = fopen(path.c_str(), "r");
  if (!f) return false;
  EVP_PKEY* k = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  fclose(f);
  bool ok = k && EVP_PKEY_is_a(k, "EC") && EVP_PKEY_get_bits(k) == 256;
  EVP_PKEY_free(k);
  return ok;
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

std::string CommonName(X509* x) {
  char buf[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof(buf));
  return buf;
}

std::vector<std::string> DnsNames(X509* x) {
  std::vector<std::string> out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type == GEN_DNS)
      out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.dNSName)),
                       ASN1_STRING_length(gn->d.dNSName));
  }
  GENERAL_NAMES_free(names);
  return out;
}

// Seconds from now to `t` (negative: in the past).
long SecondsFromNow(const ASN1_TIME* t) {
  int days = 0, secs = 0;
  ASN1_TIME_diff(&days, &secs, nullptr, t);
  return days * 86400L + secs;
}

bool SignedBy(X509* cert, X509* ca) {
  EVP_PKEY* ca_key = X509_get0_pubkey(ca);
  return X509_verify(cert, ca_key) == 1 && X509_check_issued(ca, cert) == X509_V_OK;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class PkiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sod-pki-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ca_ = dir_ + "/ca";
  }
  void TearDown() override { fs::remove_all(dir_); }

  void MakeCa(int days = 3650) {
    CaOptions o;
    o.days = days;
    auto r = CreateCa(ca_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  std::string dir_;
  std::string ca_;
};

// --- Host ids ----------------------------------------------------------------------------------

TEST(HostIdTest, AcceptsDnsLikeLowercaseIds) {
  for (const char* id : {"a", "hosta", "host-1", "host-1.rack2", "10.0.0.1", "a.b-c.d9",
                         "0123456789012345678901234567890123456789012345678901234567890123"})
    EXPECT_TRUE(ValidateHostId(id).ok()) << id << ": " << ValidateHostId(id).ToString();
}

TEST(HostIdTest, RefusesEverythingElse) {
  for (const char* id : {"", ".a", "-a", "a..b", "a.", "a-", "a-.b", "a.-b", "A", "hostA", "a_b",
                         "a b", "a/b", "../x", "*.hosta", "a\nb", "h\xc3\xa9",
                         "01234567890123456789012345678901234567890123456789012345678901234"}) {
    Status s = ValidateHostId(id);
    EXPECT_EQ(s.code(), Errc::kInvalidArgument) << '"' << id << '"';
    EXPECT_THAT(s.message(), HasSubstr("invalid host id"));
  }
  EXPECT_EQ(ValidateHostId(std::string_view("a\0b", 3)).code(), Errc::kInvalidArgument);
}

// --- CA ----------------------------------------------------------------------------------------

TEST_F(PkiTest, CreateCaWritesPrivateKeyAndCaCertificate) {
  mode_t old = umask(0);  // even with a permissive umask the key must be 0600
  auto r = CreateCa(ca_, {});
  umask(old);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->key_path, ca_ + "/ca.key");
  EXPECT_EQ(r->cert_path, ca_ + "/ca.crt");
  EXPECT_EQ(ModeOf(ca_ + "/ca.key"), 0600u);
  EXPECT_EQ(ModeOf(ca_ + "/ca.crt"), 0644u);
  EXPECT_EQ(ModeOf(ca_), 0700u);
  EXPECT_TRUE(KeyLoads(ca_ + "/ca.key"));
  EXPECT_EQ(std::distance(fs::directory_iterator(ca_), fs::directory_iterator()), 2)
      << "temporary files left behind";

  X509Ptr ca = LoadCert(ca_ + "/ca.crt");
  ASSERT_NE(ca, nullptr);
  EXPECT_EQ(CommonName(ca.get()), "sod cluster CA");
  EXPECT_EQ(r->subject, "CN=sod cluster CA");
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  EXPECT_TRUE(SignedBy(ca.get(), ca.get()));
  EXPECT_NE(X509_get_key_usage(ca.get()) & KU_KEY_CERT_SIGN, 0u);
  EXPECT_EQ(X509_get_pathlen(ca.get()), 0);
  EXPECT_NEAR(SecondsFromNow(X509_get0_notAfter(ca.get())), 3650L * 86400, 60);
  EXPECT_LE(SecondsFromNow(X509_get0_notBefore(ca.get())), 0);
  EXPECT_EQ(r->sha256_fingerprint.size(), 32u * 3 - 1);
}

TEST_F(PkiTest, CreateCaRefusesToOverwriteUnlessForced) {
  MakeCa();
  std::string before = ReadFile(ca_ + "/ca.crt");
  auto again = CreateCa(ca_, {});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(again.status().message(), HasSubstr("already exists"));
  EXPECT_EQ(ReadFile(ca_ + "/ca.crt"), before);

  // Only one of the two files present is refused too.
  fs::remove(ca_ + "/ca.crt");
  EXPECT_EQ(CreateCa(ca_, {}).status().code(), Errc::kInvalidArgument);
  fs::remove(ca_ + "/ca.key");

  MakeCa();
  before = ReadFile(ca_ + "/ca.crt");
  CaOptions force;
  force.force = true;
  auto replaced = CreateCa(ca_, force);
  ASSERT_TRUE(replaced.ok()) << replaced.status().ToString();
  EXPECT_NE(ReadFile(ca_ + "/ca.crt"), before);
  EXPECT_EQ(ModeOf(ca_ + "/ca.key"), 0600u);
}

TEST_F(PkiTest, CreateCaRefusesBadValidity) {
  CaOptions o;
  o.days = 0;
  EXPECT_EQ(CreateCa(ca_, o).status().code(), Errc::kInvalidArgument);
  o.days = kMaxCertificateDays + 1;
  EXPECT_EQ(CreateCa(ca_, o).status().code(), Errc::kInvalidArgument);
  EXPECT_FALSE(fs::exists(ca_ + "/ca.key"));
}

// --- Host certificates -------------------------------------------------------------------------

TEST_F(PkiTest, IssuedHostCertificateHasTheRequiredFields) {
  MakeCa();
  auto r = IssueHostCert(ca_, "host-1.rack2", dir_ + "/hosts", {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::string crt = dir_ + "/hosts/host-1.rack2.crt";
  std::string key = dir_ + "/hosts/host-1.rack2.key";
  EXPECT_EQ(r->cert_path, crt);
  EXPECT_EQ(ModeOf(key), 0600u);
  EXPECT_EQ(ModeOf(crt), 0644u);
  EXPECT_TRUE(KeyLoads(key));

  X509Ptr cert = LoadCert(crt);
  X509Ptr ca = LoadCert(ca_ + "/ca.crt");
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_get_version(cert.get()), X509_VERSION_3);
  EXPECT_EQ(CommonName(cert.get()), "host-1.rack2");
  EXPECT_EQ(DnsNames(cert.get()), std::vector<std::string>{"host-1.rack2"});
  EXPECT_EQ(X509_check_host(cert.get(), "host-1.rack2", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_TRUE(SignedBy(cert.get(), ca.get()));
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(cert.get()),
            static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(X509_check_purpose(cert.get(), X509_PURPOSE_SSL_SERVER, 0), 1);
  EXPECT_EQ(X509_check_purpose(cert.get(), X509_PURPOSE_SSL_CLIENT, 0), 1);
  EXPECT_NEAR(SecondsFromNow(X509_get0_notAfter(cert.get())), 365L * 86400, 60);
  EXPECT_LE(SecondsFromNow(X509_get0_notBefore(cert.get())), 0);
  EXPECT_EQ(X509_get_signature_nid(cert.get()), NID_ecdsa_with_SHA256);

  // Serial numbers: positive, at most 128 bits, different per certificate.
  ASSERT_TRUE(IssueHostCert(ca_, "other", dir_ + "/hosts", {}).ok());
  X509Ptr other = LoadCert(dir_ + "/hosts/other.crt");
  BIGNUM* a = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr);
  BIGNUM* b = ASN1_INTEGER_to_BN(X509_get0_serialNumber(other.get()), nullptr);
  EXPECT_FALSE(BN_is_negative(a));
  EXPECT_LE(BN_num_bits(a), 128);
  EXPECT_GT(BN_num_bits(a), 64);  // random, not a counter
  EXPECT_NE(BN_cmp(a, b), 0);
  BN_free(a);
  BN_free(b);
}

TEST_F(PkiTest, ExplicitWindowMakesAnExpiredCertificate) {
  MakeCa();
  IssueOptions o;
  auto now = std::chrono::system_clock::now();
  o.not_before = now - 48h;
  o.not_after = now - 24h;
  ASSERT_TRUE(IssueHostCert(ca_, "old", "", o).ok());
  X509Ptr cert = LoadCert(ca_ + "/old.crt");
  ASSERT_NE(cert, nullptr);
  EXPECT_NEAR(SecondsFromNow(X509_get0_notAfter(cert.get())), -86400, 60);
  EXPECT_LT(X509_cmp_current_time(X509_get0_notAfter(cert.get())), 0);

  IssueOptions half;
  half.not_before = now;
  EXPECT_EQ(IssueHostCert(ca_, "half", "", half).status().code(), Errc::kInvalidArgument);
  IssueOptions backwards;
  backwards.not_before = now;
  backwards.not_after = now - 1h;
  EXPECT_EQ(IssueHostCert(ca_, "back", "", backwards).status().code(), Errc::kInvalidArgument);
}

TEST_F(PkiTest, HostCertificateNeverOutlivesTheCa) {
  MakeCa(/*days=*/10);
  IssueOptions o;
  o.days = 365;
  ASSERT_TRUE(IssueHostCert(ca_, "hosta", "", o).ok());
  X509Ptr cert = LoadCert(ca_ + "/hosta.crt");
  X509Ptr ca = LoadCert(ca_ + "/ca.crt");
  EXPECT_EQ(ASN1_TIME_compare(X509_get0_notAfter(cert.get()), X509_get0_notAfter(ca.get())), 0);
}

TEST_F(PkiTest, IssueRefusesInvalidHostIdsAndTheReservedCaName) {
  MakeCa();
  for (const char* id : {"", "-x", ".x", "Host", "a/b", "../../etc/x", "ca"}) {
    auto r = IssueHostCert(ca_, id, "", {});
    EXPECT_EQ(r.status().code(), Errc::kInvalidArgument) << id;
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(ca_), fs::directory_iterator()), 2);
}

TEST_F(PkiTest, IssueRefusesToOverwriteUnlessForced) {
  MakeCa();
  ASSERT_TRUE(IssueHostCert(ca_, "hosta", "", {}).ok());
  std::string before = ReadFile(ca_ + "/hosta.crt");
  auto again = IssueHostCert(ca_, "hosta", "", {});
  EXPECT_EQ(again.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(again.status().message(), HasSubstr("already exists"));
  EXPECT_EQ(ReadFile(ca_ + "/hosta.crt"), before);
  IssueOptions force;
  force.force = true;
  ASSERT_TRUE(IssueHostCert(ca_, "hosta", "", force).ok());
  EXPECT_NE(ReadFile(ca_ + "/hosta.crt"), before);
}

TEST_F(PkiTest, IssueRefusesAMissingOrUnsafeOrInconsistentCa) {
  auto missing = IssueHostCert(ca_, "hosta", "", {});
  EXPECT_EQ(missing.status().code(), Errc::kNotFound) << missing.status().ToString();

  MakeCa();
  ASSERT_EQ(chmod((ca_ + "/ca.key").c_str(), 0644), 0);
  auto unsafe = IssueHostCert(ca_, "hosta", "", {});
  EXPECT_EQ(unsafe.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(unsafe.status().message(), HasSubstr("mode 0644"));
  ASSERT_EQ(chmod((ca_ + "/ca.key").c_str(), 0600), 0);

  // A key from another CA next to this CA's certificate.
  std::string other = dir_ + "/other";
  ASSERT_TRUE(CreateCa(other, {}).ok());
  fs::copy_file(other + "/ca.key", ca_ + "/ca.key", fs::copy_options::overwrite_existing);
  auto mismatched = IssueHostCert(ca_, "hosta", "", {});
  EXPECT_EQ(mismatched.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(mismatched.status().message(), HasSubstr("do not match"));

  // A host certificate is not a CA.
  ASSERT_TRUE(IssueHostCert(other, "hostx", "", {}).ok());
  std::string fake = dir_ + "/fake";
  fs::create_directory(fake);
  fs::copy_file(other + "/hostx.crt", fake + "/ca.crt");
  fs::copy_file(other + "/hostx.key", fake + "/ca.key");
  auto not_ca = IssueHostCert(fake, "hosta", "", {});
  EXPECT_EQ(not_ca.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(not_ca.status().message(), HasSubstr("not a CA certificate"));
}

// --- sodctl ------------------------------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs a shell command line; arguments built by the tests contain no shell metacharacters.
RunResult RunCommand(const std::string& dir, const std::string& args) {
  std::string out = dir + "/.stdout", err = dir + "/.stderr";
  std::string cmd = args + " >" + out + " 2>" + err;
  int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

class SodctlTest : public PkiTest {
 protected:
  RunResult Sodctl(const std::string& args) {
    return RunCommand(dir_, std::string(SODCTL_PATH) + " " + args);
  }
};

TEST_F(SodctlTest, VersionAndHelp) {
  RunResult v = Sodctl("--version");
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_THAT(v.out, HasSubstr("sodctl "));
  RunResult h = Sodctl("--help");
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_THAT(h.out, HasSubstr("pki"));
  RunResult ph = Sodctl("pki issue --help");
  EXPECT_EQ(ph.exit_code, 0);
  EXPECT_THAT(ph.out, HasSubstr("--host"));
  EXPECT_THAT(ph.out, HasSubstr("--out-dir"));
}

TEST_F(SodctlTest, UsageErrorsExitWithTwo) {
  EXPECT_EQ(Sodctl("").exit_code, 2);
  EXPECT_EQ(Sodctl("pki").exit_code, 2);
  EXPECT_EQ(Sodctl("pki init").exit_code, 2);  // --dir missing
  EXPECT_EQ(Sodctl("pki init --dir " + ca_ + " --days 0").exit_code, 2);
  EXPECT_EQ(Sodctl("pki frobnicate").exit_code, 2);
  RunResult bad_host = Sodctl("pki issue --dir " + ca_ + " --host Bad_Host");
  EXPECT_EQ(bad_host.exit_code, 2);
  EXPECT_THAT(bad_host.err, HasSubstr("invalid host id"));
  EXPECT_FALSE(fs::exists(ca_));
}

TEST_F(SodctlTest, InitAndIssueThenOpensslVerifies) {
  RunResult init = Sodctl("pki init --dir " + ca_ + " --days 30");
  ASSERT_EQ(init.exit_code, 0) << init.err;
  EXPECT_THAT(init.out, HasSubstr("ca.crt"));
  EXPECT_EQ(ModeOf(ca_ + "/ca.key"), 0600u);

  RunResult again = Sodctl("pki init --dir " + ca_);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("already exists"));
  EXPECT_EQ(Sodctl("pki init --dir " + ca_ + " --force").exit_code, 0);

  std::string hosts = dir_ + "/hosts";
  RunResult issue = Sodctl("pki issue --dir " + ca_ + " --host node-7 --days 5 --out-dir " + hosts);
  ASSERT_EQ(issue.exit_code, 0) << issue.err;
  EXPECT_THAT(issue.out, HasSubstr("node-7.crt"));
  EXPECT_EQ(ModeOf(hosts + "/node-7.key"), 0600u);
  X509Ptr cert = LoadCert(hosts + "/node-7.crt");
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(CommonName(cert.get()), "node-7");
  EXPECT_NEAR(SecondsFromNow(X509_get0_notAfter(cert.get())), 5L * 86400, 60);

  RunResult dup = Sodctl("pki issue --dir " + ca_ + " --host node-7 --out-dir " + hosts);
  EXPECT_EQ(dup.exit_code, 1);
  RunResult no_ca = Sodctl("pki issue --dir " + dir_ + "/nowhere --host node-8");
  EXPECT_EQ(no_ca.exit_code, 1);
  EXPECT_THAT(no_ca.err, HasSubstr("not-found"));

  if (access("/usr/bin/openssl", X_OK) == 0) {
    RunResult verify =
        RunCommand(dir_, "/usr/bin/openssl verify -x509_strict -purpose sslserver -CAfile " + ca_ +
                             "/ca.crt " + hosts + "/node-7.crt");
    EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
    EXPECT_THAT(verify.out, HasSubstr(": OK"));
    RunResult client = RunCommand(dir_,
                                  "/usr/bin/openssl verify -x509_strict -purpose sslclient "
                                  "-verify_hostname node-7 -CAfile " +
                                      ca_ + "/ca.crt " + hosts + "/node-7.crt");
    EXPECT_EQ(client.exit_code, 0) << client.out << client.err;
  }
}

}  // namespace
}  // namespace sod
