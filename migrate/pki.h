// Cluster PKI: one cluster CA, one certificate per host, used by the TLS control channel (tls.h).
//
// Layout on disk (PEM files):
//   <ca_dir>/ca.key      CA private key, ECDSA P-256, mode 0600
//   <ca_dir>/ca.crt      self-signed CA certificate (CA:TRUE, pathlen 0, keyCertSign + cRLSign)
//   <out_dir>/<host>.key host private key, ECDSA P-256, mode 0600
//   <out_dir>/<host>.crt host certificate signed by the CA: CN=<host>, subjectAltName DNS:<host>,
//                        keyUsage digitalSignature, extendedKeyUsage serverAuth + clientAuth
//
// Every certificate has a random 128-bit serial number and is signed with ECDSA-SHA256. Private
// keys are created with mode 0600 from the start (never world-readable, not even briefly), and
// every file is written to a temporary name in the same directory, flushed, then linked into
// place, so a crash never leaves a half-written key or certificate behind.
//
// Thread-safety: the functions are independent and may run concurrently on different
// directories; two concurrent writers of the same file are refused (one wins, the other gets
// kInvalidArgument "exists") unless `force` is set.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

inline constexpr std::string_view kCaKeyFile = "ca.key";
inline constexpr std::string_view kCaCertFile = "ca.crt";
inline constexpr int kMaxCertificateDays = 36500;

// A host id names a host in certificates (CN and SAN DNS) and in file names. Valid ids have 1..64
// characters of [a-z0-9.-], do not start with '.' or '-', and every dot-separated label is
// non-empty and does not end with '-' ("host-1.rack2" is valid; ".a", "-a", "a..b", "a.", "a-",
// "A", "a_b" are not). Returns kInvalidArgument naming the problem.
Status ValidateHostId(std::string_view host_id);

// Refuses a private key file that group or others may access in any way (mode & 077 != 0):
// kInvalidArgument naming the file and its mode. kNotFound when the file does not exist, kIo when
// it cannot be examined. `what` names the key in messages ("CA key", "host key").
Status CheckPrivateKeyFileMode(const std::string& path, std::string_view what);

// What was written; paths are as built from the directory arguments.
struct IssuedCertificate {
  std::string cert_path;
  std::string key_path;
  std::string subject;             // one-line RFC 2253 subject, e.g. "CN=hosta"
  std::string not_before;          // RFC 3339 UTC, e.g. "2025-01-31T12:00:00Z"
  std::string not_after;           // RFC 3339 UTC
  std::string sha256_fingerprint;  // hex, colon-separated, upper case (as `openssl x509` shows)
};

struct CaOptions {
  int days = 3650;                             // validity, 1..kMaxCertificateDays
  std::string common_name = "sod cluster CA";  // subject CN of the CA
  bool force = false;                          // replace an existing ca.key / ca.crt
};

// Creates <dir>/ca.key and <dir>/ca.crt. Creates <dir> (mode 0700) if it does not exist. Refuses
// (kInvalidArgument) when either file already exists unless options.force is set; with force both
// files are replaced atomically one after the other. Errors: kInvalidArgument, kIo, kCrypto.
Result<IssuedCertificate> CreateCa(const std::string& dir, const CaOptions& options);

struct IssueOptions {
  int days =
      365;  // validity from now (minus 5 minutes of clock-skew slack), 1..kMaxCertificateDays
  // Explicit validity window, for tests (e.g. an already-expired certificate). When set, both must
  // be set, not_before < not_after, and `days` is ignored; the window is not clamped to the CA's.
  std::optional<std::chrono::system_clock::time_point> not_before;
  std::optional<std::chrono::system_clock::time_point> not_after;
  bool force = false;  // replace an existing <host>.key / <host>.crt
};

// Issues a host key and certificate for `host_id`, signed by the CA in `ca_dir` (ca.key, ca.crt),
// into `out_dir` (created with mode 0700 if missing; an empty out_dir means ca_dir). Without an
// explicit window the certificate never outlives the CA: not_after is clamped to the CA's.
// Refuses a CA key file readable by group or others, a CA certificate that is not a CA or does not
// match the key, an invalid host id, and existing output files unless options.force.
// Errors: kInvalidArgument, kNotFound (CA files missing), kIo, kCrypto.
Result<IssuedCertificate> IssueHostCert(const std::string& ca_dir, std::string_view host_id,
                                        const std::string& out_dir, const IssueOptions& options);

}  // namespace sod
