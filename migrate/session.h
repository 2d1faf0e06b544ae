// A secure session between two hosts: the TLS 1.3 control channel plus N data channels, with the
// keys, negotiation and transcript that bind them together (migrate/PROTOCOL.md, "Session").
//
//   initiator                                   responder (SessionListener)
//   TCP connect, TLS 1.3 handshake (mutual X.509, host ids checked)
//   session_secret = TLS exporter; keys derived on both sides
//   control record Hello  ------------------->  negotiate version, suite, data channels
//              <-------------------  control record HelloAck (or Abort with the reason)
//   per data channel i = 1..n: TCP connect to the same port, join (channel_join.h)
//   data records (negotiated suite) ---------->  RecordReader per channel
//
// Control records (channel 0) travel inside TLS and always use kAes256Gcm; data records use the
// negotiated suite. The migration protocol (offer, stream, commit) runs on top of this.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "migrate/channel_join.h"
#include "migrate/control.h"
#include "migrate/key_schedule.h"
#include "migrate/record_io.h"
#include "migrate/socket.h"
#include "migrate/tls.h"
#include "migrate/transcript.h"
#include "migrate/uring.h"

namespace sod {

inline constexpr size_t kDefaultDataChannelBuffer = 512 * 1024;

struct SessionOptions {
  // Initiator: the suites it offers, in preference order. Responder: the suites it accepts.
  std::vector<Suite> suites = {Suite::kAes256Gcm};
  // Initiator: data channels requested. Responder: the most it grants.
  uint16_t data_channels = 2;
  IoBackend io = IoBackend::kAuto;
  // Deadline for connecting, the TLS handshake, the hello exchange, each data-channel join, and
  // each later read or write (a peer silent for longer ends the session with kTimeout).
  std::chrono::milliseconds timeout{10000};
  // Each data channel's socket buffer in the direction it carries (initiator: send, responder:
  // receive), fixed; 0 leaves it to the kernel's autotuning (here up to 4 MiB sending and 32 MiB
  // receiving, which let a destination QEMU fall ~0.5 s of loading behind; PROTOCOL.md "Stream").
  size_t data_channel_buffer = kDefaultDataChannelBuffer;
};

enum class SessionRole { kInitiator, kResponder };

// One side of an established session. Thread-safety: sending on the control channel (SendControl,
// SendControlRecord, SendAbort) is serialized internally and may happen from any thread; receiving
// is for one thread at a time, which may run concurrently with senders. Each data channel may be
// used by its own thread.
class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  SessionRole role() const { return role_; }
  const std::string& peer_host_id() const { return control_->peer_host_id(); }
  const std::string& peer_address() const { return control_->peer_address(); }
  // The verified peer certificate's public key (SubjectPublicKeyInfo DER): verifies its receipts.
  const Bytes& peer_public_key_der() const { return control_->peer_public_key_der(); }
  const HelloAckMsg& negotiated() const { return negotiated_; }
  const SessionKeys& keys() const { return keys_; }
  // An RFC 8446 exporter value of this session's TLS channel, empty context: both ends get the
  // same bytes, no other session does (attestation binds its quotes to it). Safe from any thread.
  Result<Bytes> ExportKeyingMaterial(std::string_view label, size_t length) const {
    return control_->ExportKeyingMaterial(label, {}, length);
  }

  // Control channel.
  Status SendControl(const ControlMsg& m);
  // The next control message. An Abort record from the peer is returned as kAborted carrying the
  // peer's code name and reason; any other non-control record is kState.
  Result<ControlMsg> ReceiveControl();
  // Tells the peer why we give up (best effort: errors are ignored) and closes our sending side.
  void SendAbort(const Status& why);
  // Shuts every socket of the session down (both directions), waking up any thread blocked on
  // the control or a data channel; those calls then fail. Safe from any thread. The session is
  // unusable afterwards.
  void Shutdown();
  // Sends a raw record on the control channel (commit and similar protocol records).
  Status SendControlRecord(RecordType type, ByteSpan payload);
  // The next raw record on the control channel (for protocol layers above; the payload is valid
  // until the next receive).
  Result<RecordView> ReceiveControlRecord();

  // Data channels, indexed 0..count-1 (channel ids 1..count).
  size_t data_channel_count() const { return data_.size(); }
  // Initiator only (nullptr on the responder).
  RecordWriter* data_writer(size_t i) { return data_[i].writer.get(); }
  // Responder only (nullptr on the initiator).
  RecordReader* data_reader(size_t i) { return data_[i].reader.get(); }
  std::vector<RecordWriter*> data_writers();
  std::vector<RecordReader*> data_readers();
  // Bytes on the data channels (records with headers and tags), sent resp. received.
  uint64_t data_wire_bytes() const;

  // The session transcript over every chain: both control directions and every data channel.
  // Meaningful once all channels are finished; both sides then compute the same value.
  Result<TranscriptValue> Transcript() const;
  // The same, but leaving out the last control record received: what the peer computed just
  // before it sent that record (a commit carrying its transcript).
  Result<TranscriptValue> TranscriptBeforeLastReceived() const;
  // Records this side sent, all channels together (what a commit's record count states).
  uint64_t records_sent() const;
  // Records this side received, all channels together.
  uint64_t records_received() const;

  // Initiator: connects to host:port, authenticates a peer named `expected_peer`, negotiates and
  // opens the data channels.
  static Result<std::unique_ptr<Session>> Connect(TlsContext& tls, std::string_view host,
                                                  uint16_t port, std::string_view expected_peer,
                                                  const SessionOptions& options);

 private:
  friend class SessionListener;
  struct DataChannel {
    UniqueFd fd;
    std::unique_ptr<SendQueue> queue;      // initiator
    std::unique_ptr<RecordWriter> writer;  // initiator
    std::unique_ptr<ByteStream> stream;    // responder
    std::unique_ptr<RecordReader> reader;  // responder
  };
  Session(SessionRole role, std::unique_ptr<TlsStream> control, SessionKeys keys,
          const SessionOptions& options);
  // Derives keys from the TLS exporter and sets up the control channel record path.
  static Result<std::unique_ptr<Session>> FromTls(SessionRole role,
                                                  std::unique_ptr<TlsStream> control,
                                                  const SessionOptions& options);
  Result<TranscriptValue> TranscriptOf(bool exclude_last_received_control) const;
  Status AddResponderChannel(UniqueFd fd, std::unique_ptr<ByteStream> join_stream,
                             const ChannelHello& hello);

  SessionRole role_;
  SessionOptions options_;
  std::unique_ptr<TlsStream> control_;
  SessionKeys keys_;
  std::mutex control_write_mu_;  // SendAbort may come from a data-channel thread
  std::unique_ptr<StreamSendQueue> control_queue_;
  std::unique_ptr<RecordWriter> control_writer_;
  std::unique_ptr<RecordReader> control_reader_;
  HelloAckMsg negotiated_;
  std::vector<DataChannel> data_;
};

// The responder side: one listening TCP port serves control connections (first byte is a TLS
// handshake record) and data-channel connections (first byte 'S', see channel_join.h).
// Connections are handled one at a time, in the thread that calls Accept. A data connection that
// names no pending session, a channel out of range or already joined, or fails its proof is
// closed. Sessions that do not complete within the timeout are dropped.
class SessionListener {
 public:
  // `tls` must outlive the listener. Port 0 picks a free port.
  static Result<std::unique_ptr<SessionListener>> Listen(TlsContext& tls, std::string_view host,
                                                         uint16_t port,
                                                         const SessionOptions& options);
  uint16_t port() const { return port_; }
  // Returns the next session whose hello was answered and whose data channels all joined.
  // kTimeout when none completes in `timeout`. A session refused during negotiation is told why
  // (Abort record) and logged into last_refusal().
  Result<std::unique_ptr<Session>> Accept(std::chrono::milliseconds timeout);
  const Status& last_refusal() const { return last_refusal_; }

 private:
  SessionListener(TlsContext& tls, UniqueFd fd, uint16_t port, const SessionOptions& options)
      : tls_(tls), fd_(std::move(fd)), port_(port), options_(options) {}
  Status HandleControl(UniqueFd fd);
  Status HandleData(UniqueFd fd);
  std::unique_ptr<Session> TakeComplete();

  struct Pending {
    std::unique_ptr<Session> session;
    std::chrono::steady_clock::time_point deadline;
  };
  TlsContext& tls_;
  UniqueFd fd_;
  uint16_t port_;
  SessionOptions options_;
  std::map<SessionId, Pending> pending_;
  Status last_refusal_;
};

}  // namespace sod
