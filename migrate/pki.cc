#include "base/openssl_errors.h"
#include "base/openssl_ptr.h"
#include "migrate/pki.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

namespace sod {
namespace {

using X509NamePtr = OpensslPtr<X509_NAME, X509_NAME_free>;
using X509ExtPtr = OpensslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using Asn1IntPtr = OpensslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;

constexpr size_t kMaxHostIdLength = 64;
constexpr long kClockSkewSlackSeconds = 5 * 60;
constexpr int kSerialBytes = 16;


Status CryptoError(std::string_view what) {
  return Error(Errc::kCrypto, std::string(what) + ": " + DrainOpensslErrors());
}

std::string Errno(int err) { return std::error_code(err, std::generic_category()).message(); }

std::string JoinPath(const std::string& dir, std::string_view name) {
  std::string p = dir;
  if (!p.empty() && p.back() != '/') p += '/';
  p += name;
  return p;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Creates `dir` (and missing parents) when absent; a newly created leaf gets mode 0700.
Status EnsureDirectory(const std::string& dir) {
  if (dir.empty()) return Error(Errc::kInvalidArgument, "empty directory path");
  struct stat st;
  if (stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return Error(Errc::kInvalidArgument, dir + " is not a directory");
    return Status::Ok();
  }
  std::filesystem::path p(dir);
  std::error_code ec;
  if (p.has_parent_path() && !p.parent_path().empty()) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return Error(Errc::kIo, "creating " + p.parent_path().string() + ": " + ec.message());
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return Error(Errc::kIo, "creating directory " + dir + ": " + Errno(errno));
  return Status::Ok();
}

// Writes `data` to `path` with `mode`: a temporary file (created 0600 by mkostemp) in the same
// directory is written, fsynced, chmod'ed and then linked (refusing an existing file) or renamed
// (replacing it) into place.
Status WriteFileAtomically(const std::string& path, std::string_view data, mode_t mode,
                           bool replace) {
  std::string tmp = path + ".tmp-XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0)
    return Error(Errc::kIo, "creating a temporary file for " + path + ": " + Errno(errno));
  auto fail = [&](const std::string& what, int err) {
    if (fd >= 0) close(fd);
    unlink(tmp.c_str());
    return Error(Errc::kIo, what + " " + path + ": " + Errno(err));
  };
  if (fchmod(fd, mode) != 0) return fail("setting the mode of", errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("writing", errno);
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("flushing", errno);
  int rc = close(fd);
  fd = -1;
  if (rc != 0) return fail("closing", errno);
  if (replace) {
    if (rename(tmp.c_str(), path.c_str()) != 0) return fail("replacing", errno);
  } else {
    if (link(tmp.c_str(), path.c_str()) != 0) {
      int err = errno;
      unlink(tmp.c_str());
      if (err == EEXIST)
        return Error(Errc::kInvalidArgument, path + " already exists; refusing to overwrite it");
      return Error(Errc::kIo, "creating " + path + ": " + Errno(err));
    }
    unlink(tmp.c_str());
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);  // best effort: makes the new name durable
    close(dfd);
  }
  return Status::Ok();
}

// Serializes with `write` into a memory BIO; key material goes through a secure-memory BIO and
// the returned string is the caller's to wipe.
template <typename F>
Result<std::string> ToPem(bool secret, std::string_view what, F write) {
  BioPtr bio(BIO_new(secret ? BIO_s_secmem() : BIO_s_mem()));
  if (!bio) return CryptoError("allocating a memory BIO");
  if (write(bio.get()) != 1) return CryptoError(std::string("encoding ") + std::string(what));
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

Status WritePrivateKey(const std::string& path, EVP_PKEY* key, bool replace) {
  SOD_ASSIGN_OR_RETURN(std::string pem, ToPem(true, "private key", [&](BIO* b) {
                         return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr,
                                                         nullptr);
                       }));
  Status s = WriteFileAtomically(path, pem, 0600, replace);
  OPENSSL_cleanse(pem.data(), pem.size());
  return s;
}

Status WriteCertificate(const std::string& path, X509* cert, bool replace) {
  SOD_ASSIGN_OR_RETURN(std::string pem, ToPem(false, "certificate",
                                              [&](BIO* b) { return PEM_write_bio_X509(b, cert); }));
  return WriteFileAtomically(path, pem, 0644, replace);
}

Result<PkeyPtr> GenerateKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return CryptoError("generating an ECDSA P-256 key");
  return key;
}

Status SetRandomSerial(X509* cert) {
  unsigned char raw[kSerialBytes];
  do {
    if (RAND_bytes(raw, sizeof(raw)) != 1) return CryptoError("drawing a serial number");
  } while (std::all_of(std::begin(raw), std::end(raw), [](unsigned char c) { return c == 0; }));
  BnPtr bn(BN_bin2bn(raw, sizeof(raw), nullptr));
  if (!bn) return CryptoError("building a serial number");
  Asn1IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial || X509_set_serialNumber(cert, serial.get()) != 1)
    return CryptoError("setting the serial number");
  return Status::Ok();
}

Status SetValidity(X509* cert, time_t not_before, time_t not_after) {
  if (!ASN1_TIME_set(X509_getm_notBefore(cert), not_before) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert), not_after))
    return CryptoError("setting the validity period");
  return Status::Ok();
}

Status SetCommonName(X509* cert, std::string_view cn) {
  X509NamePtr name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1 ||
      X509_set_subject_name(cert, name.get()) != 1)
    return CryptoError("setting the subject name");
  return Status::Ok();
}

// A new X.509 v3 certificate with a random serial, the validity window and the subject CN.
Result<X509Ptr> NewCertificate(time_t not_before, time_t not_after, std::string_view cn) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1)
    return CryptoError("allocating a certificate");
  SOD_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  SOD_RETURN_IF_ERROR(SetValidity(cert.get(), not_before, not_after));
  SOD_RETURN_IF_ERROR(SetCommonName(cert.get(), cn));
  return cert;
}

// Adds one extension in OpenSSL's config syntax ("critical,CA:TRUE"). `ctx` names issuer and
// subject (needed by subjectKeyIdentifier / authorityKeyIdentifier).
Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
    return CryptoError(std::string("adding extension ") + OBJ_nid2sn(nid) + "=" + value);
  return Status::Ok();
}

std::string FormatTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<time_t> ToTimeT(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return CryptoError("reading a certificate time");
  return timegm(&tm);
}

Result<IssuedCertificate> Describe(X509* cert, std::string cert_path, std::string key_path) {
  IssuedCertificate out;
  out.cert_path = std::move(cert_path);
  out.key_path = std::move(key_path);
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0)
    return CryptoError("printing the subject");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  out.subject.assign(data, static_cast<size_t>(n));
  out.not_before = FormatTime(X509_get0_notBefore(cert));
  out.not_after = FormatTime(X509_get0_notAfter(cert));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &md_len) != 1) return CryptoError("fingerprinting");
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned int i = 0; i < md_len; ++i) {
    if (i) out.sha256_fingerprint += ':';
    out.sha256_fingerprint += kHex[md[i] >> 4];
    out.sha256_fingerprint += kHex[md[i] & 15];
  }
  return out;
}

Status CheckDays(int days) {
  if (days < 1 || days > kMaxCertificateDays)
    return Error(Errc::kInvalidArgument, "validity of " + std::to_string(days) +
                                             " days is outside 1.." +
                                             std::to_string(kMaxCertificateDays));
  return Status::Ok();
}

Result<PkeyPtr> LoadCaKey(const std::string& path) {
  SOD_RETURN_IF_ERROR(CheckPrivateKeyFileMode(path, "CA key"));
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return CryptoError("opening CA key " + path);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return CryptoError("reading CA key " + path);
  return key;
}

Result<X509Ptr> LoadCaCert(const std::string& path) {
  if (!PathExists(path)) return Error(Errc::kNotFound, "CA certificate " + path + " not found");
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return CryptoError("opening CA certificate " + path);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return CryptoError("reading CA certificate " + path);
  if (X509_check_ca(cert.get()) == 0)
    return Error(Errc::kInvalidArgument, path + " is not a CA certificate");
  return cert;
}

// Writes key then certificate; if the certificate cannot be written, a key created here is removed
// again so no half pair is left behind.
Status WritePair(const std::string& key_path, EVP_PKEY* key, const std::string& cert_path,
                 X509* cert, bool replace) {
  SOD_RETURN_IF_ERROR(WritePrivateKey(key_path, key, replace));
  Status s = WriteCertificate(cert_path, cert, replace);
  if (!s.ok() && !replace) unlink(key_path.c_str());
  return s;
}

Status RefuseExisting(const std::string& path, std::string_view what) {
  if (PathExists(path))
    return Error(Errc::kInvalidArgument, std::string(what) + " " + path +
                                             " already exists; refusing to overwrite it "
                                             "(use --force to replace it)");
  return Status::Ok();
}

}  // namespace

Status ValidateHostId(std::string_view id) {
  auto bad = [&](const std::string& why) {
    std::string shown(id.substr(0, kMaxHostIdLength + 8));
    return Error(Errc::kInvalidArgument, "invalid host id \"" + shown + "\": " + why);
  };
  if (id.empty()) return bad("empty");
  if (id.size() > kMaxHostIdLength)
    return bad("longer than " + std::to_string(kMaxHostIdLength) + " characters");
  if (id.front() == '.' || id.front() == '-') return bad("must not start with '.' or '-'");
  char prev = '.';
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
    if (!ok) return bad("only lowercase letters, digits, '.' and '-' are allowed");
    if (c == '.' && prev == '.') return bad("empty label");
    if (c == '.' && prev == '-') return bad("a label must not end with '-'");
    if (c == '-' && prev == '.') return bad("a label must not start with '-'");
    prev = c;
  }
  if (prev == '.') return bad("must not end with '.'");
  if (prev == '-') return bad("must not end with '-'");
  return Status::Ok();
}

Status CheckPrivateKeyFileMode(const std::string& path, std::string_view what) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    return Error(err == ENOENT ? Errc::kNotFound : Errc::kIo,
                 std::string(what) + " " + path + ": " + Errno(err));
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error(Errc::kInvalidArgument, std::string(what) + " " + path +
                                             " is accessible by group or others (mode " + mode +
                                             "); refusing to use it (chmod 600 it)");
  }
  return Status::Ok();
}

Result<IssuedCertificate> CreateCa(const std::string& dir, const CaOptions& options) {
  SOD_RETURN_IF_ERROR(CheckDays(options.days));
  if (options.common_name.empty() || options.common_name.size() > 64)
    return Error(Errc::kInvalidArgument, "CA common name must have 1..64 characters");
  std::string key_path = JoinPath(dir, kCaKeyFile);
  std::string cert_path = JoinPath(dir, kCaCertFile);
  if (!options.force) {
    SOD_RETURN_IF_ERROR(RefuseExisting(key_path, "CA key"));
    SOD_RETURN_IF_ERROR(RefuseExisting(cert_path, "CA certificate"));
  }
  SOD_RETURN_IF_ERROR(EnsureDirectory(dir));

  SOD_ASSIGN_OR_RETURN(PkeyPtr key, GenerateKey());
  const time_t now = time(nullptr);
  SOD_ASSIGN_OR_RETURN(X509Ptr cert,
                       NewCertificate(now - kClockSkewSlackSeconds,
                                      now + static_cast<time_t>(options.days) * 86400,
                                      options.common_name));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1 ||
      X509_set_pubkey(cert.get(), key.get()) != 1)
    return CryptoError("filling the CA certificate");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  SOD_RETURN_IF_ERROR(
      AddExtension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  SOD_RETURN_IF_ERROR(
      AddExtension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0)
    return CryptoError("self-signing the CA certificate");

  SOD_RETURN_IF_ERROR(WritePair(key_path, key.get(), cert_path, cert.get(), options.force));
  return Describe(cert.get(), cert_path, key_path);
}

Result<IssuedCertificate> IssueHostCert(const std::string& ca_dir, std::string_view host_id,
                                        const std::string& out_dir, const IssueOptions& options) {
  SOD_RETURN_IF_ERROR(ValidateHostId(host_id));
  if (host_id == "ca")
    return Error(Errc::kInvalidArgument,
                 "host id \"ca\" is reserved (its files would collide with the CA's)");
  time_t now = time(nullptr);
  time_t not_before = now - kClockSkewSlackSeconds;
  time_t not_after = 0;
  bool explicit_window = options.not_before.has_value() || options.not_after.has_value();
  if (explicit_window) {
    if (!options.not_before || !options.not_after)
      return Error(Errc::kInvalidArgument, "an explicit validity window needs both ends");
    not_before = std::chrono::system_clock::to_time_t(*options.not_before);
    not_after = std::chrono::system_clock::to_time_t(*options.not_after);
    if (not_before >= not_after)
      return Error(Errc::kInvalidArgument, "validity window ends before it starts");
  } else {
    SOD_RETURN_IF_ERROR(CheckDays(options.days));
    not_after = now + static_cast<time_t>(options.days) * 86400;
  }
  const std::string& dir = out_dir.empty() ? ca_dir : out_dir;
  std::string key_path = JoinPath(dir, std::string(host_id) + ".key");
  std::string cert_path = JoinPath(dir, std::string(host_id) + ".crt");
  if (!options.force) {
    SOD_RETURN_IF_ERROR(RefuseExisting(key_path, "host key"));
    SOD_RETURN_IF_ERROR(RefuseExisting(cert_path, "host certificate"));
  }

  SOD_ASSIGN_OR_RETURN(PkeyPtr ca_key, LoadCaKey(JoinPath(ca_dir, kCaKeyFile)));
  SOD_ASSIGN_OR_RETURN(X509Ptr ca_cert, LoadCaCert(JoinPath(ca_dir, kCaCertFile)));
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return Error(Errc::kInvalidArgument,
                 "CA key and CA certificate in " + ca_dir + " do not match");
  }
  if (!explicit_window) {
    SOD_ASSIGN_OR_RETURN(time_t ca_not_after, ToTimeT(X509_get0_notAfter(ca_cert.get())));
    if (ca_not_after <= now)
      return Error(Errc::kInvalidArgument, "the CA certificate in " + ca_dir + " has expired (" +
                                               FormatTime(X509_get0_notAfter(ca_cert.get())) + ")");
    not_after = std::min(not_after, ca_not_after);
  }
  SOD_RETURN_IF_ERROR(EnsureDirectory(dir));

  SOD_ASSIGN_OR_RETURN(PkeyPtr key, GenerateKey());
  SOD_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(not_before, not_after, host_id));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get())) != 1 ||
      X509_set_pubkey(cert.get(), key.get()) != 1)
    return CryptoError("filling the host certificate");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature"));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth"));
  SOD_RETURN_IF_ERROR(
      AddExtension(cert.get(), &ctx, NID_subject_alt_name, "DNS:" + std::string(host_id)));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  SOD_RETURN_IF_ERROR(AddExtension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) <= 0)
    return CryptoError("signing the host certificate");

  SOD_RETURN_IF_ERROR(WritePair(key_path, key.get(), cert_path, cert.get(), options.force));
  return Describe(cert.get(), cert_path, key_path);
}

}  // namespace sod
