#include "base/openssl_errors.h"
#include "migrate/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <string>
#include <system_error>
#include <vector>

#include "migrate/pki.h"

namespace sod {
namespace tls_internal {

struct Socket {
  explicit Socket(int f) : fd(f) {}
  ~Socket() {
    if (fd >= 0) close(fd);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd;
  int last_errno = 0;  // errno of the last failed send/recv, 0 for none or end of stream
  bool eof = false;    // recv returned 0
};

}  // namespace tls_internal

namespace {

using tls_internal::Socket;

constexpr int kVerifyDepth = 2;  // leaf + CA (+ one intermediate)
constexpr size_t kMaxExportLength = 255 * 32;
constexpr unsigned int kHostFlags =
    X509_CHECK_FLAG_NO_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT;

std::string Errno(int err) { return std::error_code(err, std::generic_category()).message(); }


// --- A BIO over a non-blocking socket, sending with MSG_NOSIGNAL. ---

int SocketBioWrite(BIO* bio, const char* data, int len) {
  auto* sock = static_cast<Socket*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  for (;;) {
    ssize_t n = send(sock->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL);
    if (n >= 0) return static_cast<int>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      BIO_set_retry_write(bio);
    } else {
      sock->last_errno = errno;
    }
    return -1;
  }
}

int SocketBioRead(BIO* bio, char* data, int len) {
  auto* sock = static_cast<Socket*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  for (;;) {
    ssize_t n = recv(sock->fd, data, static_cast<size_t>(len), 0);
    if (n == 0) sock->eof = true;
    if (n >= 0) return static_cast<int>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      BIO_set_retry_read(bio);
    } else {
      sock->last_errno = errno;
    }
    return -1;
  }
}

long SocketBioCtrl(BIO* bio, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_EOF:  // lets OpenSSL report an end of stream without close_notify as such
      return static_cast<Socket*>(BIO_get_data(bio))->eof ? 1 : 0;
    default:
      return 0;
  }
}

int SocketBioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

int SocketBioDestroy(BIO*) { return 1; }  // the Socket is owned by the TlsStream

Result<std::shared_ptr<bio_method_st>> NewSocketBioMethod() {
  BIO_METHOD* m = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "sod socket");
  if (!m) return Error(Errc::kCrypto, "allocating a BIO method: " + DrainOpensslErrors());
  std::shared_ptr<bio_method_st> owned(m, BIO_meth_free);
  if (!BIO_meth_set_write(m, SocketBioWrite) || !BIO_meth_set_read(m, SocketBioRead) ||
      !BIO_meth_set_ctrl(m, SocketBioCtrl) || !BIO_meth_set_create(m, SocketBioCreate) ||
      !BIO_meth_set_destroy(m, SocketBioDestroy))
    return Error(Errc::kCrypto, "setting up the socket BIO: " + DrainOpensslErrors());
  return owned;
}

// --- Certificates. ---

std::string FormatTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string NameToString(const X509_NAME* name) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (!bio) return "?";
  std::string out = "?";
  if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out.assign(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  return out;
}

// The DNS entries of a certificate's subjectAltName; entries with embedded NULs are kept as
// invalid strings so that ValidateHostId refuses them.
std::vector<std::string> DnsNames(X509* cert) {
  std::vector<std::string> out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type != GEN_DNS) continue;
    const ASN1_IA5STRING* s = gn->d.dNSName;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
  }
  GENERAL_NAMES_free(names);
  return out;
}

// A host certificate names exactly one host: its single, valid subjectAltName DNS entry.
Result<std::string> HostIdOf(X509* cert, std::string_view whose) {
  std::vector<std::string> names = DnsNames(cert);
  if (names.size() != 1)
    return Error(Errc::kAuth,
                 std::string(whose) + " certificate (" + NameToString(X509_get_subject_name(cert)) +
                     ") has " + std::to_string(names.size()) +
                     " subjectAltName DNS entries; a host certificate has exactly one");
  Status valid = ValidateHostId(names[0]);
  if (!valid.ok())
    return Error(Errc::kAuth, std::string(whose) + " certificate: " + valid.message());
  return names[0];
}

std::string PeerAddressOf(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return "socket " + std::to_string(fd);
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  if (ss.ss_family == AF_UNIX) return "unix socket";
  return "socket " + std::to_string(fd);
}

bool IsAlertReason(int reason) {
  return reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TlsContext

TlsContext::TlsContext(ssl_ctx_st* ctx, std::shared_ptr<bio_method_st> bio_method, TlsRole role,
                       std::string host_id)
    : ctx_(ctx), bio_method_(std::move(bio_method)), role_(role), host_id_(std::move(host_id)) {}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<std::unique_ptr<TlsContext>> TlsContext::Create(const TlsConfig& config, TlsRole role) {
  ERR_clear_error();
  for (const auto& [what, path] : {std::pair<const char*, const std::string&>{"CA", config.ca_file},
                                   {"certificate", config.cert_file},
                                   {"key", config.key_file}}) {
    if (path.empty())
      return Error(Errc::kInvalidArgument, std::string("TLS: no ") + what + " file");
    if (access(path.c_str(), R_OK) != 0)
      return Error(Errc::kInvalidArgument,
                   std::string("TLS: ") + what + " file " + path + ": " + Errno(errno));
  }
  SOD_ASSIGN_OR_RETURN(std::shared_ptr<bio_method_st> bio_method, NewSocketBioMethod());
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (!ctx) return Error(Errc::kCrypto, "TLS: SSL_CTX_new: " + DrainOpensslErrors());
  std::unique_ptr<SSL_CTX, void (*)(SSL_CTX*)> owned(ctx, SSL_CTX_free);
  auto fail = [](Errc code, const std::string& what) {
    return Error(code, "TLS: " + what + ": " + DrainOpensslErrors());
  };

  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
    return fail(Errc::kCrypto, "restricting to TLS 1.3");
  if (SSL_CTX_set_ciphersuites(ctx, std::string(kTlsCipherSuites).c_str()) != 1)
    return fail(Errc::kCrypto, "setting the ciphersuites");
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  // In TLS 1.3 SSL_OP_NO_TICKET alone still sends stateful tickets: send none at all.
  if (SSL_CTX_set_num_tickets(ctx, 0) != 1) return fail(Errc::kCrypto, "disabling tickets");
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_max_early_data(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  int verify_mode = SSL_VERIFY_PEER;
  if (role == TlsRole::kServer) verify_mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(ctx, verify_mode, &TlsStream::VerifyCallback);
  SSL_CTX_set_verify_depth(ctx, kVerifyDepth);
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_X509_STRICT);
  X509_VERIFY_PARAM_set_hostflags(param, kHostFlags);

  // Trust anchors: the cluster CA file only (SSL_CTX_set_default_verify_paths is never called).
  if (SSL_CTX_load_verify_file(ctx, config.ca_file.c_str()) != 1)
    return fail(Errc::kInvalidArgument, "loading CA file " + config.ca_file);
  if (role == TlsRole::kServer) {
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.ca_file.c_str());
    if (!names) return fail(Errc::kInvalidArgument, "reading CA names from " + config.ca_file);
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, config.cert_file.c_str()) != 1)
    return fail(Errc::kInvalidArgument, "loading certificate " + config.cert_file);
  if (SSL_CTX_use_PrivateKey_file(ctx, config.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH ||
        ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_PRIVATE_KEY_MISMATCH)
      return fail(Errc::kInvalidArgument,
                  "key " + config.key_file + " does not match certificate " + config.cert_file);
    return fail(Errc::kInvalidArgument, "loading key " + config.key_file);
  }
  Result<std::string> host_id = HostIdOf(SSL_CTX_get0_certificate(ctx), "our");
  if (!host_id.ok())
    return Error(Errc::kInvalidArgument,
                 "TLS: " + config.cert_file + ": " + host_id.status().message());
  ERR_clear_error();
  return std::unique_ptr<TlsContext>(
      new TlsContext(owned.release(), std::move(bio_method), role, std::move(*host_id)));
}

// ---------------------------------------------------------------------------------------------
// TlsStream

TlsStream::TlsStream(std::unique_ptr<Socket> socket, std::shared_ptr<bio_method_st> bio_method,
                     std::string peer_address)
    : socket_(std::move(socket)),
      bio_method_(std::move(bio_method)),
      peer_address_(std::move(peer_address)) {}

TlsStream::~TlsStream() {
  SSL_free(ssl_);  // frees the BIO too; socket_ closes the fd afterwards
}

Result<std::unique_ptr<TlsStream>> TlsStream::Connect(TlsContext& context, int fd,
                                                      std::string_view expected_peer_host,
                                                      std::chrono::milliseconds timeout) {
  return Open(context, TlsRole::kClient, fd, expected_peer_host, timeout);
}

Result<std::unique_ptr<TlsStream>> TlsStream::Accept(TlsContext& context, int fd,
                                                     std::string_view expected_peer_host,
                                                     std::chrono::milliseconds timeout) {
  return Open(context, TlsRole::kServer, fd, expected_peer_host, timeout);
}

Result<std::unique_ptr<TlsStream>> TlsStream::Open(TlsContext& context, TlsRole role, int fd,
                                                   std::string_view expected_peer_host,
                                                   std::chrono::milliseconds timeout) {
  auto socket = std::make_unique<Socket>(fd);  // owns fd from here on, also on failure
  const char* side = role == TlsRole::kClient ? "TLS connect" : "TLS accept";
  if (fd < 0) return Error(Errc::kInvalidArgument, std::string(side) + ": invalid socket");
  if (context.role() != role)
    return Error(Errc::kInvalidArgument, std::string(side) + ": the TLS context is for the " +
                                             (role == TlsRole::kClient ? "server" : "client") +
                                             " role");
  if (timeout.count() <= 0)
    return Error(Errc::kInvalidArgument, std::string(side) + ": handshake timeout must be > 0");
  if (role == TlsRole::kClient && expected_peer_host.empty())
    return Error(Errc::kInvalidArgument, std::string(side) + ": expected peer host id is required");
  if (!expected_peer_host.empty()) {
    Status valid = ValidateHostId(expected_peer_host);
    if (!valid.ok()) return valid.WithContext(std::string(side) + ": expected peer");
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
    return Error(Errc::kIo,
                 std::string(side) + ": making the socket non-blocking: " + Errno(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // TCP only; AF_UNIX refuses

  Deadline deadline{Clock::now() + timeout, timeout};
  std::unique_ptr<TlsStream> stream(
      new TlsStream(std::move(socket), context.bio_method_, PeerAddressOf(fd)));
  SOD_RETURN_IF_ERROR(stream->Setup(context, role, expected_peer_host));
  Status status = stream->RunHandshake(deadline);
  if (status.ok()) status = stream->CheckPeer(expected_peer_host);
  if (status.ok())
    status = role == TlsRole::kServer ? stream->SendAcceptance(deadline)
                                      : stream->ReadAcceptance(deadline);
  if (!status.ok()) {
    stream->DiscardPendingInput();
    return status;
  }
  return stream;
}

void TlsStream::DiscardPendingInput() {
  shutdown(socket_->fd, SHUT_WR);
  char sink[4096];
  for (int i = 0; i < 64; ++i) {  // bounded: only what is already queued
    ssize_t n = recv(socket_->fd, sink, sizeof(sink), MSG_DONTWAIT);
    if (n <= 0) break;
  }
}

Status TlsStream::Setup(TlsContext& context, TlsRole role, std::string_view expected_peer_host) {
  std::lock_guard lock(mu_);
  ERR_clear_error();
  expected_peer_host_ = std::string(expected_peer_host);
  ssl_ = SSL_new(context.ctx_);
  if (!ssl_) return Error(Errc::kCrypto, "TLS: SSL_new: " + DrainOpensslErrors());
  BIO* bio = BIO_new(bio_method_.get());
  if (!bio) return Error(Errc::kCrypto, "TLS: BIO_new: " + DrainOpensslErrors());
  BIO_set_data(bio, socket_.get());
  SSL_set_bio(ssl_, bio, bio);  // ssl_ owns the BIO now
  SSL_set_app_data(ssl_, this);
  if (!expected_peer_host.empty()) {
    SSL_set_hostflags(ssl_, kHostFlags);
    if (SSL_set1_host(ssl_, expected_peer_host_.c_str()) != 1)
      return Error(Errc::kCrypto, "TLS: setting the expected peer host: " + DrainOpensslErrors());
  }
  if (role == TlsRole::kClient) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
  return Status::Ok();
}

int TlsStream::VerifyCallback(int preverify_ok, x509_store_ctx_st* store) {
  if (preverify_ok) return preverify_ok;
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* self = ssl ? static_cast<TlsStream*>(SSL_get_app_data(ssl)) : nullptr;
  if (!self || !self->verify_detail_.empty()) return preverify_ok;  // keep the first failure
  // Runs inside SSL_do_handshake, so mu_ is already held by the calling thread.
  int err = X509_STORE_CTX_get_error(store);
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  std::string detail = X509_verify_cert_error_string(err);
  if (cert) {
    detail += "; certificate " + NameToString(X509_get_subject_name(cert));
    switch (err) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        detail += " expired " + FormatTime(X509_get0_notAfter(cert));
        break;
      case X509_V_ERR_CERT_NOT_YET_VALID:
        detail += " is valid from " + FormatTime(X509_get0_notBefore(cert));
        break;
      case X509_V_ERR_HOSTNAME_MISMATCH: {
        std::vector<std::string> names = DnsNames(cert);
        std::string listed;
        for (const auto& n : names) listed += (listed.empty() ? "" : ",") + n;
        detail += " names \"" + listed + "\", expected \"" + self->expected_peer_host_ + "\"";
        break;
      }
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        detail += " (issuer " + NameToString(X509_get_issuer_name(cert)) +
                  ") does not chain to the trusted cluster CA";
        break;
      default:
        break;
    }
  }
  self->verify_detail_ = std::move(detail);
  return preverify_ok;
}

Status TlsStream::RunHandshake(const Deadline& deadline) {
  for (;;) {
    bool want_read;
    {
      std::lock_guard lock(mu_);
      BeginSslCall();
      int rc = SSL_do_handshake(ssl_);
      if (rc == 1) return Status::Ok();
      SOD_ASSIGN_OR_RETURN(want_read, WantsRead(rc, Phase::kHandshake));
    }
    SOD_RETURN_IF_ERROR(WaitSocket(want_read, deadline, Phase::kHandshake));
  }
}

Status TlsStream::CheckPeer(std::string_view expected_peer_host) {
  std::lock_guard lock(mu_);
  auto refuse = [&](const std::string& why) {
    fatal_ = true;
    return Error(Errc::kAuth, Describe(Phase::kHandshake) + " failed: " + why);
  };
  if (SSL_version(ssl_) != TLS1_3_VERSION)
    return refuse(std::string("negotiated ") + SSL_get_version(ssl_) + ", not TLSv1.3");
  X509* peer = SSL_get0_peer_certificate(ssl_);
  if (!peer) return refuse("the peer presented no certificate");
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK)
    return refuse(std::string("certificate verify failed (") +
                  X509_verify_cert_error_string(verify) + ")");
  Result<std::string> host_id = HostIdOf(peer, "peer");
  if (!host_id.ok()) return refuse(host_id.status().message());
  if (!expected_peer_host.empty() && *host_id != expected_peer_host)
    return refuse("peer certificate names \"" + *host_id + "\", expected \"" +
                  std::string(expected_peer_host) + "\"");
  unsigned char* spki = nullptr;
  int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(peer), &spki);
  if (spki_len <= 0) {
    fatal_ = true;
    return Error(Errc::kCrypto,
                 Describe(Phase::kHandshake) +
                     " failed: encoding the peer's public key: " + DrainOpensslErrors());
  }
  peer_public_key_der_.assign(spki, spki + spki_len);
  OPENSSL_free(spki);
  peer_host_id_ = std::move(*host_id);
  return Status::Ok();
}

Status TlsStream::SendAcceptance(const Deadline& deadline) {
  const uint8_t accepted = kTlsChannelAccepted;
  return Write(ByteSpan(&accepted, 1), deadline, Phase::kAcceptance);
}

Status TlsStream::ReadAcceptance(const Deadline& deadline) {
  uint8_t byte = 0;
  Result<size_t> n = Read(MutableByteSpan(&byte, 1), deadline, Phase::kAcceptance);
  if (!n.ok()) return n.status();
  if (byte != kTlsChannelAccepted) {
    std::lock_guard lock(mu_);
    fatal_ = true;
    char hex[8];
    snprintf(hex, sizeof(hex), "0x%02x", byte);
    return Error(Errc::kMalformed, Describe(Phase::kAcceptance) +
                                       " failed: expected the channel "
                                       "acceptance byte, got " +
                                       hex + " (not a sod endpoint?)");
  }
  return Status::Ok();
}

std::string TlsStream::Describe(Phase phase) const {
  std::string peer;
  const std::string& host = !peer_host_id_.empty() ? peer_host_id_ : expected_peer_host_;
  if (!host.empty()) peer = host + " at ";
  peer += peer_address_;
  switch (phase) {
    case Phase::kHandshake:
    case Phase::kAcceptance:
      return "TLS handshake with " + peer;
    case Phase::kData:
      return "TLS stream with " + peer;
  }
  return "TLS with " + peer;
}

void TlsStream::BeginSslCall() {
  ERR_clear_error();
  socket_->last_errno = 0;
}

Result<bool> TlsStream::WantsRead(int rc, Phase phase) {
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ) return true;
  if (err == SSL_ERROR_WANT_WRITE) return false;
  return SslFailure(err, phase);
}

Status TlsStream::SslFailure(int ssl_error, Phase phase) {
  const bool handshake = phase != Phase::kData;
  std::string where = Describe(phase);
  if (ssl_error == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    if (phase == Phase::kAcceptance)
      return Error(Errc::kAuth, where +
                                    " failed: the server closed the channel instead of "
                                    "accepting it");
    return Error(Errc::kClosed, where + ": peer closed the stream (close_notify)");
  }
  if (ssl_error != SSL_ERROR_SSL && ssl_error != SSL_ERROR_SYSCALL) {
    std::string queued = DrainOpensslErrors();
    fatal_ = true;
    return Error(Errc::kInternal,
                 where + ": unexpected SSL error " + std::to_string(ssl_error) + ": " + queued);
  }
  fatal_ = true;
  unsigned long first = ERR_peek_error();
  if (first == 0) {
    // Socket level: no OpenSSL error queued.
    int err = socket_->last_errno;
    if (err == 0 || err == EPIPE || err == ECONNRESET) {
      std::string why = err == 0 ? "connection closed without close_notify" : Errno(err);
      if (phase == Phase::kAcceptance)
        return Error(Errc::kAuth, where + " failed: " + why +
                                      " before the server accepted us (it refused our "
                                      "certificate or host id)");
      return Error(Errc::kClosed, where + (handshake ? " failed: " : ": ") + why);
    }
    return Error(Errc::kIo, where + (handshake ? " failed: " : ": ") + Errno(err));
  }
  int lib = ERR_GET_LIB(first);
  int reason = ERR_GET_REASON(first);
  std::string text;
  const char* r = ERR_reason_error_string(first);
  if (lib == ERR_LIB_SSL && IsAlertReason(reason)) {
    text = std::string("peer sent TLS alert \"") +
           SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET) + "\"";
  } else if (r) {
    text = r;
  } else {
    char buf[256];
    ERR_error_string_n(first, buf, sizeof(buf));
    text = buf;
  }
  ERR_clear_error();
  if (lib == ERR_LIB_SSL && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    std::string detail = verify_detail_;
    if (detail.empty()) detail = X509_verify_cert_error_string(SSL_get_verify_result(ssl_));
    text += " (" + detail + ")";
  }
  if (lib == ERR_LIB_SSL && (reason == SSL_R_UNSUPPORTED_PROTOCOL ||
                             reason == SSL_AD_REASON_OFFSET + SSL_AD_PROTOCOL_VERSION ||
                             reason == SSL_R_NO_PROTOCOLS_AVAILABLE))
    text += " (only TLS 1.3 is accepted)";
  if (lib == ERR_LIB_SSL && reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
    text += " (a client certificate from the cluster CA is required)";

  if (lib == ERR_LIB_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    if (phase == Phase::kAcceptance)
      return Error(Errc::kAuth, where +
                                    " failed: connection closed before the server accepted "
                                    "us (it refused our certificate or host id)");
    return Error(Errc::kClosed, where + (handshake ? " failed: " : ": ") +
                                    "connection closed without close_notify");
  }
  if (handshake) {
    return Error(lib == ERR_LIB_SSL ? Errc::kAuth : Errc::kCrypto, where + " failed: " + text);
  }
  if (lib == ERR_LIB_SSL && reason == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC)
    return Error(Errc::kIntegrity, where + ": " + text);
  return Error(Errc::kCrypto, where + ": " + text);
}

Status TlsStream::WaitSocket(bool want_read, const Deadline& deadline, Phase phase) const {
  for (;;) {
    int wait_ms = -1;
    if (deadline.budget.count() > 0) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline.at - Clock::now());
      if (left.count() <= 0) {
        std::lock_guard lock(mu_);
        return Error(Errc::kTimeout, Describe(phase) + (phase == Phase::kData ? "" : " failed") +
                                         ": timed out after " +
                                         std::to_string(deadline.budget.count()) + " ms");
      }
      wait_ms = static_cast<int>(std::min<int64_t>(left.count(), INT_MAX));
    }
    pollfd p{socket_->fd, static_cast<short>(want_read ? POLLIN : POLLOUT), 0};
    int rc = poll(&p, 1, wait_ms);
    if (rc > 0) {
      if (p.revents & POLLNVAL) return Error(Errc::kInternal, "TLS: socket is not open");
      return Status::Ok();  // readable, writable, or an error the next SSL call reports
    }
    if (rc < 0 && errno != EINTR) return Error(Errc::kIo, "TLS: poll: " + Errno(errno));
  }
}

TlsStream::Deadline TlsStream::IoDeadline() const {
  std::chrono::milliseconds budget(io_timeout_ms_.load(std::memory_order_relaxed));
  return Deadline{Clock::now() + budget, budget};
}

void TlsStream::SetIoTimeout(std::chrono::milliseconds timeout) {
  io_timeout_ms_.store(timeout.count() > 0 ? timeout.count() : 0, std::memory_order_relaxed);
}

Status TlsStream::Write(ByteSpan data, const Deadline& deadline, Phase phase) {
  size_t done = 0;
  while (done < data.size()) {
    bool want_read;
    {
      std::lock_guard lock(mu_);
      if (fatal_) return Error(Errc::kState, Describe(phase) + ": unusable after an earlier error");
      if (write_closed_) return Error(Errc::kState, Describe(phase) + ": write after CloseWrite");
      BeginSslCall();
      size_t n = 0;
      int rc = SSL_write_ex(ssl_, data.data() + done, data.size() - done, &n);
      if (rc == 1) {
        done += n;
        continue;
      }
      SOD_ASSIGN_OR_RETURN(want_read, WantsRead(rc, phase));
    }
    SOD_RETURN_IF_ERROR(WaitSocket(want_read, deadline, phase));
  }
  return Status::Ok();
}

Result<size_t> TlsStream::Read(MutableByteSpan buf, const Deadline& deadline, Phase phase) {
  if (buf.empty()) return Error(Errc::kInvalidArgument, "TLS: ReadSome with an empty buffer");
  for (;;) {
    bool want_read;
    {
      std::lock_guard lock(mu_);
      if (fatal_) return Error(Errc::kState, Describe(phase) + ": unusable after an earlier error");
      BeginSslCall();
      size_t n = 0;
      int rc = SSL_read_ex(ssl_, buf.data(), buf.size(), &n);
      if (rc == 1) return n;
      SOD_ASSIGN_OR_RETURN(want_read, WantsRead(rc, phase));
    }
    SOD_RETURN_IF_ERROR(WaitSocket(want_read, deadline, phase));
  }
}

Status TlsStream::WriteAll(ByteSpan data) { return Write(data, IoDeadline(), Phase::kData); }

Result<size_t> TlsStream::ReadSome(MutableByteSpan buf) {
  return Read(buf, IoDeadline(), Phase::kData);
}

void TlsStream::ShutdownSocket() { ::shutdown(socket_->fd, SHUT_RDWR); }

Status TlsStream::CloseWrite() {
  Deadline deadline = IoDeadline();
  for (;;) {
    bool want_read;
    {
      std::lock_guard lock(mu_);
      if (write_closed_) return Status::Ok();
      if (fatal_)
        return Error(Errc::kState, Describe(Phase::kData) + ": unusable after an earlier error");
      BeginSslCall();
      int rc = SSL_shutdown(ssl_);
      if (rc >= 0) {  // 0: our close_notify is sent, the peer's is still to come
        write_closed_ = true;
        return Status::Ok();
      }
      SOD_ASSIGN_OR_RETURN(want_read, WantsRead(rc, Phase::kData));
    }
    SOD_RETURN_IF_ERROR(WaitSocket(want_read, deadline, Phase::kData));
  }
}

std::string TlsStream::protocol_version() const {
  std::lock_guard lock(mu_);
  return SSL_get_version(ssl_);
}

std::string TlsStream::cipher_name() const {
  std::lock_guard lock(mu_);
  const char* name = SSL_get_cipher_name(ssl_);
  return name ? name : "";
}

Result<Bytes> TlsStream::ExportKeyingMaterial(std::string_view label, ByteSpan context,
                                              size_t length) const {
  if (label.empty()) return Error(Errc::kInvalidArgument, "TLS exporter: empty label");
  if (length == 0 || length > kMaxExportLength)
    return Error(Errc::kInvalidArgument, "TLS exporter: length " + std::to_string(length) +
                                             " outside 1.." + std::to_string(kMaxExportLength));
  static constexpr uint8_t kNoContext = 0;
  Bytes out(length);
  std::lock_guard lock(mu_);
  ERR_clear_error();
  if (SSL_export_keying_material(ssl_, out.data(), out.size(), label.data(), label.size(),
                                 context.empty() ? &kNoContext : context.data(), context.size(),
                                 /*use_context=*/1) != 1)
    return Error(Errc::kCrypto, "TLS exporter: " + DrainOpensslErrors());
  return out;
}

}  // namespace sod
