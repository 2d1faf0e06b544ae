// TLS 1.3 control channel between two sod hosts (OpenSSL 3).
//
// Policy, fixed here and not configurable: TLS 1.3 only (min = max = TLS 1.3, no fallback);
// ciphersuites TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256; no
// renegotiation, no session tickets, no session cache, no resumption, no early data (every
// migration runs a fresh, fully authenticated handshake); mutual X.509 authentication against the
// cluster CA only (the system trust store is never loaded), strict X.509 checks; the peer's host id
// is checked against its certificate's subjectAltName DNS entry with wildcards refused.
//
// Channel acceptance: in TLS 1.3 the client's handshake completes before the server has verified
// the client's certificate. So that a refusal reaches both ends as an error of Connect/Accept, the
// server, once it has verified the client, sends one application byte kTlsChannelAccepted, and
// Connect returns only after reading it. Both sides therefore return from Connect/Accept only when
// each has authenticated the other; the application protocol starts after that byte.
//
// Signals: socket writes use send(..., MSG_NOSIGNAL), so a peer that goes away never raises
// SIGPIPE; callers need no process-wide signal setup.
//
// Errors: kAuth (certificate / host id / protocol version refused, by us or by the peer's alert),
// kTimeout, kClosed, kIo, kIntegrity (a record failed its AEAD check), kCrypto (anything else from
// OpenSSL), kInvalidArgument (bad local arguments). Messages name the endpoint and OpenSSL's
// reason, e.g. "TLS handshake with hosta at 127.0.0.1:7001 failed: certificate verify failed
// (certificate has expired)".
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/transport.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX
struct ssl_st;      // OpenSSL's SSL
struct bio_method_st;
struct x509_store_ctx_st;

namespace sod {
namespace tls_internal {
struct Socket;  // the fd and the last errno its BIO saw (tls.cc)
}  // namespace tls_internal

enum class TlsRole { kClient, kServer };

inline constexpr std::string_view kTlsCipherSuites =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
// The byte the server sends after it has verified the client (see "Channel acceptance").
inline constexpr uint8_t kTlsChannelAccepted = 0x01;

struct TlsConfig {
  std::string ca_file;    // PEM: the cluster CA certificate(s), the only trust anchors
  std::string cert_file;  // PEM: this host's certificate (optionally followed by its chain)
  std::string key_file;   // PEM: this host's private key
};

// An OpenSSL SSL_CTX configured with the policy above, for one role. Immutable and thread-safe
// after Create: any number of TlsStreams may be created from it concurrently, and streams keep
// what they need alive on their own (a stream may outlive its context).
class TlsContext {
 public:
  // Loads the CA, certificate and key. Fails with kInvalidArgument when a file is missing or
  // unreadable, the key does not match the certificate, or the certificate carries no valid host id
  // (see ValidateHostId in pki.h). The certificate's own validity is not checked here, so that an
  // expired certificate is reported by the peer at handshake time.
  static Result<std::unique_ptr<TlsContext>> Create(const TlsConfig& config, TlsRole role);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  TlsRole role() const { return role_; }
  // The host id named by our own certificate.
  const std::string& host_id() const { return host_id_; }

 private:
  friend class TlsStream;
  TlsContext(ssl_ctx_st* ctx, std::shared_ptr<bio_method_st> bio_method, TlsRole role,
             std::string host_id);
  ssl_ctx_st* ctx_;
  std::shared_ptr<bio_method_st> bio_method_;  // socket BIO (send with MSG_NOSIGNAL), shared
  TlsRole role_;
  std::string host_id_;
};

// A mutually authenticated TLS 1.3 connection over a connected stream socket (TCP or AF_UNIX).
//
// Ownership: the stream owns the socket from the moment Connect/Accept is called, also when they
// fail; it switches the socket to non-blocking mode, and closes it in the destructor. Destroying a
// stream without CloseWrite sends no close_notify, so the peer sees an abrupt end (kClosed,
// "without close_notify").
//
// Thread-safety: one thread may read (ReadSome) while another writes (WriteAll, CloseWrite); no two
// threads may read at once or write at once. The accessors and ExportKeyingMaterial are safe from
// any thread. Internally a mutex serializes OpenSSL calls; it is never held while waiting on the
// socket.
class TlsStream final : public ByteStream {
 public:
  // Client side. Runs the handshake over `fd` (a connected socket, ownership transferred) and
  // waits for the server's acceptance; the server certificate must chain to the cluster CA and
  // name `expected_peer_host` (required, a valid host id). The whole exchange must finish within
  // `timeout` (> 0), otherwise kTimeout. Precondition: context.role() == kClient.
  static Result<std::unique_ptr<TlsStream>> Connect(TlsContext& context, int fd,
                                                    std::string_view expected_peer_host,
                                                    std::chrono::milliseconds timeout);
  // Server side. Runs the handshake over `fd` (ownership transferred); the client must present a
  // certificate from the cluster CA, and if `expected_peer_host` is non-empty that certificate
  // must name it. Sends kTlsChannelAccepted once the client is verified. Must finish within
  // `timeout` (> 0), otherwise kTimeout. Precondition: context.role() == kServer.
  static Result<std::unique_ptr<TlsStream>> Accept(TlsContext& context, int fd,
                                                   std::string_view expected_peer_host,
                                                   std::chrono::milliseconds timeout);
  ~TlsStream() override;

  // The verified peer's host id: the single subjectAltName DNS entry of its certificate.
  const std::string& peer_host_id() const { return peer_host_id_; }
  // The verified peer certificate's SubjectPublicKeyInfo (DER), captured at handshake; the key
  // that verifies the peer's signatures (receipt.h, VerifySignature).
  const Bytes& peer_public_key_der() const { return peer_public_key_der_; }
  // The peer's socket address ("127.0.0.1:7001", "[::1]:7001", "unix socket").
  const std::string& peer_address() const { return peer_address_; }
  // Negotiated protocol ("TLSv1.3") and ciphersuite ("TLS_AES_256_GCM_SHA384").
  std::string protocol_version() const;
  std::string cipher_name() const;

  // RFC 8446 section 7.5 exporter (SSL_export_keying_material with a context): `length` bytes
  // bound to this session, `label` and `context`. Both ends get the same bytes; another session or
  // label gives unrelated bytes. Preconditions: label non-empty, 1 <= length <= 8160.
  Result<Bytes> ExportKeyingMaterial(std::string_view label, ByteSpan context, size_t length) const;

  // ByteStream. Each call waits at most the I/O timeout for the socket (kTimeout after that). A
  // peer's close_notify reads as kClosed; an end of stream without it also reads as kClosed, with
  // a message saying so. After a fatal error every further call fails.
  Status WriteAll(ByteSpan data) override;
  Result<size_t> ReadSome(MutableByteSpan buf) override;
  // Sends close_notify. Reading stays possible until the peer's close_notify (kClosed).
  Status CloseWrite() override;

  // Deadline for each WriteAll / ReadSome / CloseWrite call, measured from its start. Zero (the
  // default) means no deadline. May be called from any thread; applies to calls that start later.
  void SetIoTimeout(std::chrono::milliseconds timeout);

  // shutdown(2) of the socket in both directions, without touching the TLS state: wakes up a
  // thread blocked in ReadSome/WriteAll (which then fails). Safe from any thread; for tearing a
  // session down while another thread still waits on it.
  void ShutdownSocket();

 private:
  friend class TlsContext;  // installs VerifyCallback
  using Clock = std::chrono::steady_clock;
  struct Deadline {
    Clock::time_point at;
    std::chrono::milliseconds budget{0};  // zero: no deadline
  };
  enum class Phase { kHandshake, kAcceptance, kData };

  TlsStream(std::unique_ptr<tls_internal::Socket> socket, std::shared_ptr<bio_method_st> bio_method,
            std::string peer_address);
  static Result<std::unique_ptr<TlsStream>> Open(TlsContext& context, TlsRole role, int fd,
                                                 std::string_view expected_peer_host,
                                                 std::chrono::milliseconds timeout);
  Status Setup(TlsContext& context, TlsRole role, std::string_view expected_peer_host);
  Status RunHandshake(const Deadline& deadline);
  Status CheckPeer(std::string_view expected_peer_host);
  Status SendAcceptance(const Deadline& deadline);
  Status ReadAcceptance(const Deadline& deadline);
  // After a failed handshake: ends our sending side and discards input already queued, so closing
  // the socket does not turn into a TCP reset that could destroy the alert we just sent.
  void DiscardPendingInput();
  Status Write(ByteSpan data, const Deadline& deadline, Phase phase);
  Result<size_t> Read(MutableByteSpan buf, const Deadline& deadline, Phase phase);
  // Waits until the socket is readable (want_read) or writable, or the deadline passes.
  Status WaitSocket(bool want_read, const Deadline& deadline, Phase phase) const;
  // Before each SSL_* call: an empty error queue and no socket errno, so a failure is its own.
  // Caller holds mu_.
  void BeginSslCall();
  // After an SSL_* call that did not complete (returned `rc`): whether it waits for the socket
  // to become readable (true) or writable (false), or the failure. Caller holds mu_.
  Result<bool> WantsRead(int rc, Phase phase);
  // Turns a failed SSL_* call into a Status and drains the OpenSSL error queue. Caller holds mu_.
  Status SslFailure(int ssl_error, Phase phase);
  std::string Describe(Phase phase) const;  // "TLS handshake with hosta at 127.0.0.1:7001"
  Deadline IoDeadline() const;
  static int VerifyCallback(int preverify_ok, x509_store_ctx_st* store);

  std::unique_ptr<tls_internal::Socket> socket_;
  std::shared_ptr<bio_method_st> bio_method_;  // must outlive ssl_ (its BIO uses it)
  ssl_st* ssl_ = nullptr;
  mutable std::mutex mu_;      // serializes every use of ssl_; never held while polling
  bool fatal_ = false;         // guarded by mu_: the SSL object saw a fatal error
  bool write_closed_ = false;  // guarded by mu_
  std::string verify_detail_;  // guarded by mu_: first certificate failure seen while verifying
  std::string peer_address_;
  std::string peer_host_id_;
  Bytes peer_public_key_der_;
  std::string expected_peer_host_;
  std::atomic<int64_t> io_timeout_ms_{0};
};

}  // namespace sod
