#include "migrate/session.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>

namespace sod {

namespace {

constexpr uint8_t kTlsHandshakeRecord = 0x16;

ByteSpan AsBytes(std::string_view s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

RecordParams ControlParams(SessionRole role, bool sending) {
  bool i2r = (role == SessionRole::kInitiator) == sending;
  return RecordParams{Suite::kAes256Gcm, 0,
                      i2r ? Direction::kInitiatorToResponder : Direction::kResponderToInitiator};
}

// Waits for the first byte of a new connection without consuming it.
Result<uint8_t> PeekFirstByte(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r == 0) return Error(Errc::kTimeout, "connection sent nothing");
  uint8_t b = 0;
  ssize_t n = ::recv(fd, &b, 1, MSG_PEEK);
  if (n == 1) return b;
  if (n == 0) return Error(Errc::kClosed, "connection closed before its first byte");
  return SocketError("peek at", PeerAddress(fd), errno);
}

}  // namespace

Session::Session(SessionRole role, std::unique_ptr<TlsStream> control, SessionKeys keys,
                 const SessionOptions& options)
    : role_(role), options_(options), control_(std::move(control)), keys_(std::move(keys)) {}

Session::~Session() = default;

Result<std::unique_ptr<Session>> Session::FromTls(SessionRole role,
                                                  std::unique_ptr<TlsStream> control,
                                                  const SessionOptions& options) {
  SOD_ASSIGN_OR_RETURN(
      Bytes secret,
      control->ExportKeyingMaterial(kExporterLabel, AsBytes(kExporterContext), kSessionSecretSize));
  SOD_ASSIGN_OR_RETURN(SessionKeys keys, SessionKeys::Create(secret));
  OPENSSL_cleanse(secret.data(), secret.size());
  std::unique_ptr<Session> s(new Session(role, std::move(control), std::move(keys), options));
  s->control_queue_ = std::make_unique<StreamSendQueue>(*s->control_, MaxRecordSize());
  SOD_ASSIGN_OR_RETURN(
      s->control_writer_,
      RecordWriter::Create(*s->control_queue_, ControlParams(role, true), s->keys_));
  SOD_ASSIGN_OR_RETURN(
      s->control_reader_,
      RecordReader::Create(*s->control_, ControlParams(role, false), s->keys_, 256 * 1024));
  return s;
}

Status Session::SendControl(const ControlMsg& m) {
  return SendControlRecord(RecordType::kControl, EncodeControl(m));
}

Status Session::SendControlRecord(RecordType type, ByteSpan payload) {
  std::lock_guard<std::mutex> lock(control_write_mu_);
  SOD_RETURN_IF_ERROR(control_writer_->Write(type, 0, payload));
  return control_writer_->Flush();
}

Result<RecordView> Session::ReceiveControlRecord() { return control_reader_->Next(); }

Result<ControlMsg> Session::ReceiveControl() {
  SOD_ASSIGN_OR_RETURN(RecordView rec, control_reader_->Next());
  if (rec.header.type == RecordType::kAbort) {
    SOD_ASSIGN_OR_RETURN(AbortBody a, DecodeAbort(rec.payload));
    return Error(Errc::kAborted, "peer " + peer_host_id() + " aborted (" +
                                     std::string(ErrcName(a.code)) + "): " + a.reason);
  }
  if (rec.header.type != RecordType::kControl)
    return Error(Errc::kState, "expected a control message, got a " +
                                   std::string(RecordTypeName(rec.header.type)) + " record");
  return DecodeControl(rec.payload);
}

void Session::SendAbort(const Status& why) {
  Bytes body;
  EncodeAbort(AbortBody{why.ok() ? Errc::kInternal : why.code(), why.message()}, body);
  std::lock_guard<std::mutex> lock(control_write_mu_);
  (void)control_writer_->Write(RecordType::kAbort, 0, body);
  (void)control_writer_->Flush();
  (void)control_->CloseWrite();
}

void Session::Shutdown() {
  control_->ShutdownSocket();
  for (DataChannel& d : data_)
    if (d.fd.valid()) ::shutdown(d.fd.get(), SHUT_RDWR);
}

Result<TranscriptValue> Session::Transcript() const { return TranscriptOf(false); }

Result<TranscriptValue> Session::TranscriptBeforeLastReceived() const {
  if (control_reader_->records() == 0)
    return Error(Errc::kInternal, "no control record was received");
  return TranscriptOf(true);
}

std::vector<RecordWriter*> Session::data_writers() {
  std::vector<RecordWriter*> v;
  for (DataChannel& d : data_)
    if (d.writer) v.push_back(d.writer.get());
  return v;
}

std::vector<RecordReader*> Session::data_readers() {
  std::vector<RecordReader*> v;
  for (DataChannel& d : data_)
    if (d.reader) v.push_back(d.reader.get());
  return v;
}

uint64_t Session::data_wire_bytes() const {
  uint64_t n = 0;
  for (const DataChannel& d : data_)
    n += d.writer ? d.writer->wire_bytes() : d.reader ? d.reader->wire_bytes() : 0;
  return n;
}

uint64_t Session::records_sent() const {
  uint64_t n = control_writer_->records();
  for (const DataChannel& d : data_)
    if (d.writer) n += d.writer->records();
  return n;
}

uint64_t Session::records_received() const {
  uint64_t n = control_reader_->records();
  for (const DataChannel& d : data_)
    if (d.reader) n += d.reader->records();
  return n;
}

Result<TranscriptValue> Session::TranscriptOf(bool exclude_last_received_control) const {
  std::vector<ChainSummary> chains = {
      Summarize(control_writer_->transcript()),
      exclude_last_received_control ? SummarizeBeforeLast(control_reader_->transcript())
                                    : Summarize(control_reader_->transcript())};
  for (const DataChannel& d : data_) {
    if (d.writer) chains.push_back(Summarize(d.writer->transcript()));
    if (d.reader) chains.push_back(Summarize(d.reader->transcript()));
  }
  return SessionTranscript(keys_.transcript_key(), std::move(chains));
}

Result<std::unique_ptr<Session>> Session::Connect(TlsContext& tls, std::string_view host,
                                                  uint16_t port, std::string_view expected_peer,
                                                  const SessionOptions& options) {
  const std::string where = std::string(host) + ":" + std::to_string(port);
  SOD_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(host, port, options.timeout));
  auto tls_stream = TlsStream::Connect(tls, fd.Release(), expected_peer, options.timeout);
  if (!tls_stream.ok()) return tls_stream.status();
  (*tls_stream)->SetIoTimeout(options.timeout);
  SOD_ASSIGN_OR_RETURN(std::unique_ptr<Session> s,
                       FromTls(SessionRole::kInitiator, std::move(*tls_stream), options));

  HelloMsg hello;
  hello.suites = options.suites;
  hello.data_channels = options.data_channels;
  hello.host_id = tls.host_id();
  SOD_RETURN_IF_ERROR(s->SendControl(hello));
  auto reply = s->ReceiveControl();
  if (!reply.ok()) return reply.status().WithContext("session with " + where);
  const HelloAckMsg* ack = std::get_if<HelloAckMsg>(&*reply);
  Status bad;
  if (!ack)
    bad = Error(Errc::kState, "expected hello-ack, got " + std::string(ControlName(*reply)));
  else if (ack->version < hello.version_min || ack->version > hello.version_max)
    bad = Error(Errc::kUnsupported, "responder chose protocol version " +
                                        std::to_string(ack->version) + " outside our range");
  else if (std::find(hello.suites.begin(), hello.suites.end(), ack->suite) == hello.suites.end())
    bad = Error(Errc::kUnsupported, "responder chose suite " + std::string(SuiteName(ack->suite)) +
                                        " we did not offer");
  else if (ack->data_channels > hello.data_channels)
    bad = Error(Errc::kMalformed, "responder granted more data channels than requested");
  if (!bad.ok()) {
    s->SendAbort(bad);
    return bad.WithContext("session with " + where);
  }
  s->negotiated_ = *ack;

  for (uint32_t ch = 1; ch <= ack->data_channels; ++ch) {
    const std::string what = "data channel " + std::to_string(ch) + " to " + where;
    DataChannel d;
    SOD_ASSIGN_OR_RETURN(d.fd, ConnectTcp(host, port, options.timeout));
    SOD_RETURN_IF_ERROR(TuneForBulk(d.fd.get(), true, options.data_channel_buffer));
    SOD_RETURN_IF_ERROR(SetIoTimeouts(d.fd.get(), options.timeout));
    SocketStream join(d.fd.get());
    Status js = JoinDataChannel(join, s->keys_, ch);
    if (!js.ok()) return js.WithContext(what);
    SOD_ASSIGN_OR_RETURN(d.queue, MakeSendQueue(d.fd.get(), MaxRecordSize(), options.io));
    SOD_ASSIGN_OR_RETURN(
        d.writer, RecordWriter::Create(*d.queue, {ack->suite, ch, Direction::kInitiatorToResponder},
                                       s->keys_));
    s->data_.push_back(std::move(d));
  }
  return s;
}

Status Session::AddResponderChannel(UniqueFd fd, std::unique_ptr<ByteStream> join_stream,
                                    const ChannelHello& hello) {
  join_stream.reset();  // it borrowed the fd and holds no buffered bytes
  DataChannel& d = data_[hello.channel - 1];
  d.fd = std::move(fd);
  SOD_RETURN_IF_ERROR(TuneForBulk(d.fd.get(), false, options_.data_channel_buffer));
  SOD_ASSIGN_OR_RETURN(d.stream, MakeStream(d.fd.get(), options_.io));
  SOD_ASSIGN_OR_RETURN(
      d.reader,
      RecordReader::Create(
          *d.stream, {negotiated_.suite, hello.channel, Direction::kInitiatorToResponder}, keys_));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<SessionListener>> SessionListener::Listen(TlsContext& tls,
                                                                 std::string_view host,
                                                                 uint16_t port,
                                                                 const SessionOptions& options) {
  if (tls.role() != TlsRole::kServer)
    return Error(Errc::kInvalidArgument, "SessionListener needs a server TLS context");
  SOD_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(host, port, 64));
  SOD_ASSIGN_OR_RETURN(uint16_t bound, LocalPort(fd.get()));
  return std::unique_ptr<SessionListener>(new SessionListener(tls, std::move(fd), bound, options));
}

std::unique_ptr<Session> SessionListener::TakeComplete() {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    Session& s = *it->second.session;
    bool complete = std::all_of(s.data_.begin(), s.data_.end(),
                                [](const Session::DataChannel& d) { return d.reader != nullptr; });
    if (complete) {
      std::unique_ptr<Session> done = std::move(it->second.session);
      pending_.erase(it);
      return done;
    }
  }
  return nullptr;
}

Result<std::unique_ptr<Session>> SessionListener::Accept(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto s = TakeComplete()) return s;
    const auto now = Clock::now();
    std::erase_if(pending_, [&](const auto& p) { return p.second.deadline < now; });
    if (now >= deadline) return Error(Errc::kTimeout, "no session completed in time");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    auto conn = AcceptTcp(fd_.get(), std::max(left, std::chrono::milliseconds(1)));
    if (!conn.ok()) {
      if (conn.status().code() == Errc::kTimeout) continue;
      return conn.status();
    }
    UniqueFd fd = std::move(*conn);
    auto first = PeekFirstByte(fd.get(), options_.timeout);
    if (!first.ok()) continue;  // a silent or vanished peer: drop it
    Status s;
    if (*first == kTlsHandshakeRecord)
      s = HandleControl(std::move(fd));
    else if (*first == kChannelHelloFirstByte)
      s = HandleData(std::move(fd));
    // Anything else is neither protocol: the connection is closed.
    if (!s.ok()) last_refusal_ = s;
  }
}

Status SessionListener::HandleControl(UniqueFd fd) {
  const std::string peer = PeerAddress(fd.get());
  SOD_ASSIGN_OR_RETURN(std::unique_ptr<TlsStream> tls,
                       TlsStream::Accept(tls_, fd.Release(), "", options_.timeout));
  tls->SetIoTimeout(options_.timeout);
  SOD_ASSIGN_OR_RETURN(std::unique_ptr<Session> s,
                       Session::FromTls(SessionRole::kResponder, std::move(tls), options_));
  auto msg = s->ReceiveControl();
  if (!msg.ok()) return msg.status().WithContext("session from " + peer);
  const HelloMsg* hello = std::get_if<HelloMsg>(&*msg);
  if (!hello) {
    Status bad = Error(Errc::kState, "expected hello, got " + std::string(ControlName(*msg)));
    s->SendAbort(bad);
    return bad.WithContext("session from " + peer);
  }
  auto ack = NegotiateHello(*hello, options_.suites, options_.data_channels);
  if (!ack.ok()) {
    s->SendAbort(ack.status());
    return ack.status().WithContext("session from " + peer);
  }
  SOD_RETURN_IF_ERROR(s->SendControl(*ack));
  s->negotiated_ = *ack;
  s->data_.resize(ack->data_channels);
  const SessionId id = s->keys_.session_id();
  pending_[id] = Pending{std::move(s), std::chrono::steady_clock::now() + options_.timeout};
  return Status::Ok();
}

Status SessionListener::HandleData(UniqueFd fd) {
  SOD_RETURN_IF_ERROR(SetIoTimeouts(fd.get(), options_.timeout));
  auto join = std::make_unique<SocketStream>(fd.get());
  SOD_ASSIGN_OR_RETURN(ChannelHello hello, ReadChannelHello(*join));
  auto it = pending_.find(hello.session_id);
  if (it == pending_.end())
    return Error(Errc::kAuth, "data channel from " + join->peer() + " names no pending session");
  Session& s = *it->second.session;
  if (hello.channel > s.data_.size() || s.data_[hello.channel - 1].reader)
    return Error(Errc::kAuth, "data channel " + std::to_string(hello.channel) + " from " +
                                  join->peer() + " is out of range or already joined");
  Status ok = AcceptDataChannel(*join, s.keys_, hello);
  if (!ok.ok()) return ok.WithContext("data channel from " + join->peer());
  return s.AddResponderChannel(std::move(fd), std::move(join), hello);
}

}  // namespace sod
