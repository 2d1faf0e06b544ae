#include "tests/tamper_relay.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sod {

namespace {

constexpr int kPollMs = 100;
constexpr uint8_t kTlsHandshake = 0x16;
constexpr uint8_t kDataHello = 'S';
// migrate/channel_join.h: ChannelHello and ChannelProof go initiator->responder.
constexpr size_t kHelloSize = 64;
constexpr size_t kHelloChannelOffset = 24;
constexpr size_t kProofSize = 40;
// migrate/record.h
constexpr size_t kHeaderSize = 24;
constexpr uint8_t kStreamType = 1;
constexpr size_t kMaxRecord = kHeaderSize + 16 + (1u << 20) + 32;
constexpr size_t kTlsHeaderSize = 5;

uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
uint64_t Le64(const uint8_t* p) { return uint64_t{Le32(p)} | uint64_t{Le32(p + 4)} << 32; }

std::string RecordName(const uint8_t* h, uint64_t stream_index) {
  const uint8_t type = h[1];
  std::string s = type == kStreamType ? "stream record " + std::to_string(stream_index)
                                      : "record of type " + std::to_string(type);
  return s + " (seq " + std::to_string(Le64(h + 8)) + ", round " + std::to_string(Le32(h + 16)) +
         ", " + std::to_string(Le32(h + 20)) + "-byte payload)";
}

}  // namespace

std::string_view TamperActionName(TamperAction a) {
  switch (a) {
    case TamperAction::kNone:
      return "none";
    case TamperAction::kCapture:
      return "capture";
    case TamperAction::kFlipPayloadByte:
      return "flip-payload-byte";
    case TamperAction::kFlipHeaderByte:
      return "flip-header-byte";
    case TamperAction::kFlipTagByte:
      return "flip-tag-byte";
    case TamperAction::kDrop:
      return "drop";
    case TamperAction::kDuplicate:
      return "duplicate";
    case TamperAction::kReorder:
      return "reorder";
    case TamperAction::kTruncate:
      return "truncate";
    case TamperAction::kReplayFromEarlier:
      return "replay-from-earlier";
    case TamperAction::kInjectForeign:
      return "inject-foreign";
  }
  return "?";
}

// One connection: the initiator's socket (accepted) and ours to the responder.
struct TamperRelay::Conn {
  int client = -1;
  int server = -1;
  std::thread up, down;
};

// One direction of a connection: reads `src` into a buffer, writes to `dst`. Every wait is a
// bounded poll that also watches `stop`.
class TamperRelay::Flow {
 public:
  Flow(int src, int dst, const std::atomic<bool>& stop)
      : src_(src), dst_(dst), stop_(stop), buf_(kMaxRecord + (1u << 20)) {}

  // Makes at least n unread bytes available; false at end of stream (eof()), error or stop.
  bool Need(size_t n) {
    while (size() < n)
      if (!More()) return false;
    return true;
  }
  // Reads what is available (waits for at least one byte).
  bool More() {
    if (buf_.size() - end_ < (64u << 10)) {
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      if (buf_.size() - end_ < (64u << 10)) buf_.resize(buf_.size() * 2);
    }
    for (;;) {
      if (stop_.load()) return false;
      ssize_t n = ::recv(src_, buf_.data() + end_, buf_.size() - end_, MSG_DONTWAIT);
      if (n > 0) {
        end_ += static_cast<size_t>(n);
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
      pollfd p{src_, POLLIN, 0};
      ::poll(&p, 1, kPollMs);
    }
  }
  uint8_t* data() { return buf_.data() + begin_; }
  size_t size() const { return end_ - begin_; }
  void Consume(size_t n) { begin_ += n; }
  bool eof() const { return eof_; }
  // Ends the connection in both directions, the responder side first (it reads end of stream).
  void Cut() {
    ::shutdown(dst_, SHUT_RDWR);
    ::shutdown(src_, SHUT_RDWR);
  }

  bool Send(const uint8_t* p, size_t n) {
    while (n > 0) {
      if (stop_.load()) return false;
      ssize_t w = ::send(dst_, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0) {
        p += w;
        n -= static_cast<size_t>(w);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
      pollfd pf{dst_, POLLOUT, 0};
      ::poll(&pf, 1, kPollMs);
    }
    return true;
  }
  // Forwards every unread byte.
  bool SendRest() {
    bool ok = Send(data(), size());
    Consume(size());
    return ok;
  }

 private:
  int src_, dst_;
  const std::atomic<bool>& stop_;
  std::vector<uint8_t> buf_;
  size_t begin_ = 0, end_ = 0;
  bool eof_ = false;
};

Result<std::unique_ptr<TamperRelay>> TamperRelay::Start(uint16_t target_port, TamperConfig config) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error(Errc::kIo, std::string("relay socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 16) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    int err = errno;
    ::close(fd);
    return Error(Errc::kIo, std::string("relay listen: ") + std::strerror(err));
  }
  std::unique_ptr<TamperRelay> r(
      new TamperRelay(fd, ntohs(a.sin_port), target_port, std::move(config)));
  r->acceptor_ = std::thread([p = r.get()] { p->AcceptLoop(); });
  return r;
}

TamperRelay::TamperRelay(int listen_fd, uint16_t port, uint16_t target_port, TamperConfig config)
    : listen_fd_(listen_fd), port_(port), target_port_(target_port), config_(std::move(config)) {}

TamperRelay::~TamperRelay() { Stop(); }

void TamperRelay::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopped_) return;
    stopped_ = true;  // no new connections from here on
  }
  stop_.store(true);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  // The acceptor is gone, so conns_ no longer changes.
  for (auto& c : conns_) {
    ::shutdown(c->client, SHUT_RDWR);
    ::shutdown(c->server, SHUT_RDWR);
  }
  for (auto& c : conns_) {
    if (c->up.joinable()) c->up.join();
    if (c->down.joinable()) c->down.join();
    ::close(c->client);
    ::close(c->server);
  }
  conns_.clear();
}

void TamperRelay::AcceptLoop() {
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, kPollMs) <= 0) continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(target_port_);
    // A loopback connect completes (or is refused) at once.
    if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      Note("connect to 127.0.0.1:" + std::to_string(target_port_) +
           " failed: " + std::strerror(errno));
      if (server >= 0) ::close(server);
      ::close(client);
      continue;
    }
    int one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard<std::mutex> l(mu_);
    auto c = std::make_unique<Conn>();
    c->client = client;
    c->server = server;
    Conn* raw = c.get();
    c->up = std::thread([this, raw] { Upstream(raw); });
    c->down = std::thread([this, raw] { Downstream(raw); });
    conns_.push_back(std::move(c));
  }
}

void TamperRelay::Downstream(Conn* c) {
  Flow f(c->server, c->client, stop_);
  while (f.More())
    if (!f.SendRest()) break;
  if (f.eof()) {
    ::shutdown(c->client, SHUT_WR);
  } else {
    ::shutdown(c->client, SHUT_RDWR);
    ::shutdown(c->server, SHUT_RDWR);
  }
}

void TamperRelay::Upstream(Conn* c) {
  Flow f(c->client, c->server, stop_);
  bool keep = true;
  if (f.Need(1)) {
    const uint8_t first = f.data()[0];
    if (first == kTlsHandshake) {
      {
        std::lock_guard<std::mutex> l(mu_);
        ++control_connections_;
      }
      keep = ControlUpstream(f);
    } else if (first == kDataHello) {
      {
        std::lock_guard<std::mutex> l(mu_);
        ++data_connections_;
      }
      keep = DataUpstream(f);
    } else {
      Note("connection with first byte " + std::to_string(first) + " forwarded untouched");
      while (f.SendRest() && f.More()) {
      }
    }
  }
  if (!keep) return;  // cut on purpose: both directions are shut down already
  if (f.eof()) {
    f.SendRest();  // a partial unit at the end goes through as it is
    ::shutdown(c->server, SHUT_WR);
  } else {
    ::shutdown(c->client, SHUT_RDWR);
    ::shutdown(c->server, SHUT_RDWR);
  }
}

bool TamperRelay::ControlUpstream(Flow& f) {
  const bool armed = config_.target == TamperTarget::kControlChannel &&
                     config_.action == TamperAction::kFlipPayloadByte;
  uint64_t count = 0;
  std::string types;
  for (uint64_t index = 0;; ++index) {
    if (!f.Need(kTlsHeaderSize)) break;
    const uint8_t* h = f.data();
    const size_t body = size_t{h[3]} << 8 | h[4];
    if (!f.Need(kTlsHeaderSize + body)) break;
    uint8_t* rec = f.data();
    if (armed && index == config_.tls_record_index && body > 0) {
      rec[kTlsHeaderSize + body / 2] ^= 0x01;
      Fire("control channel: flipped byte " + std::to_string(body / 2) +
           " of the body of TLS record " + std::to_string(index) +
           " initiator->responder (content type " + std::to_string(rec[0]) + ", " +
           std::to_string(body) + " bytes)");
    }
    if (!f.Send(rec, kTlsHeaderSize + body)) break;
    f.Consume(kTlsHeaderSize + body);
    types += (index ? "," : "") + std::to_string(rec[0]);
    ++count;
  }
  Note("control channel ended after " + std::to_string(count) +
       " TLS records initiator->responder (content types " + types + ")");
  return true;
}

bool TamperRelay::DataUpstream(Flow& f) {
  // The join: forwarded untouched (the hello names the channel).
  if (!f.Need(kHelloSize)) return true;
  const uint32_t channel = Le32(f.data() + kHelloChannelOffset);
  if (!f.Send(f.data(), kHelloSize)) return true;
  f.Consume(kHelloSize);
  if (!f.Need(kProofSize)) return true;
  if (!f.Send(f.data(), kProofSize)) return true;
  f.Consume(kProofSize);

  const bool mine = config_.target == TamperTarget::kDataChannel && channel == config_.channel &&
                    config_.action != TamperAction::kNone;
  const std::string where = "data channel " + std::to_string(channel) + ": ";
  uint64_t stream_index = 0;  // Stream records seen on this channel
  uint64_t offset = 0;        // record bytes seen on this channel
  bool done = false;          // the action was applied (once per channel connection)
  std::vector<uint8_t> held, replay;
  std::string held_name;
  for (;;) {
    if (!f.Need(kHeaderSize)) break;
    const uint8_t* h = f.data();
    const uint8_t suite = h[2];
    const size_t tag = suite == 1 ? 16 : suite == 2 ? 32 : 0;
    const size_t length = Le32(h + 20);
    const size_t total = kHeaderSize + length + tag;
    if (tag == 0 || total > kMaxRecord) {
      Note(where + "unparsable record header at byte " + std::to_string(offset) +
           "; forwarding the rest untouched");
      while (f.SendRest() && f.More()) {
      }
      break;
    }
    if (!f.Need(total)) break;
    uint8_t* rec = f.data();
    const bool is_stream = rec[1] == kStreamType;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (records_seen_.size() <= channel) records_seen_.resize(channel + 1);
      ++records_seen_[channel];
    }
    if (mine && is_stream && config_.action == TamperAction::kReplayFromEarlier &&
        stream_index == config_.replay_index)
      replay.assign(rec, rec + total);
    const bool target =
        mine && !done &&
        (!config_.payload_contains.empty()
             ? is_stream && std::search(rec + kHeaderSize, rec + kHeaderSize + length,
                                        config_.payload_contains.begin(),
                                        config_.payload_contains.end()) != rec + kHeaderSize + length
         : config_.after_bytes ? offset >= *config_.after_bytes
                               : is_stream && stream_index == config_.record_index);
    if (target && !config_.payload_contains.empty()) {
      std::lock_guard<std::mutex> l(mu_);
      captured_.assign(rec, rec + total);  // as it came, also when it is then altered
    }
    bool ok = true;
    if (!target) {
      ok = f.Send(rec, total);
      if (ok && !held.empty()) {
        const std::string next = RecordName(rec, stream_index);
        ok = f.Send(held.data(), held.size());
        Fire(where + "held back " + held_name + ", forwarded it after " + next);
        held.clear();
      }
    } else {
      done = true;
      const std::string name = RecordName(rec, stream_index);
      switch (config_.action) {
        case TamperAction::kNone:
          ok = f.Send(rec, total);
          break;
        case TamperAction::kCapture: {
          std::lock_guard<std::mutex> l(mu_);
          captured_.assign(rec, rec + total);
        }
          Fire(where + "captured " + name);
          ok = f.Send(rec, total);
          break;
        case TamperAction::kFlipPayloadByte:
          if (length == 0) {
            Note(where + name + " has no payload to flip");
          } else {
            rec[kHeaderSize + length / 2] ^= 0x01;
            Fire(where + "flipped payload byte " + std::to_string(length / 2) + " of " + name);
          }
          ok = f.Send(rec, total);
          break;
        case TamperAction::kFlipHeaderByte:
          rec[config_.header_offset % kHeaderSize] ^= 0x01;
          Fire(where + "flipped header byte " +
               std::to_string(config_.header_offset % kHeaderSize) + " of " + name);
          ok = f.Send(rec, total);
          break;
        case TamperAction::kFlipTagByte:
          rec[kHeaderSize + length] ^= 0x01;
          Fire(where + "flipped tag byte 0 of " + name);
          ok = f.Send(rec, total);
          break;
        case TamperAction::kDrop:
          Fire(where + "dropped " + name);
          break;
        case TamperAction::kDuplicate:
          ok = f.Send(rec, total) && f.Send(rec, total);
          Fire(where + "forwarded " + name + " twice");
          break;
        case TamperAction::kReorder:
          held.assign(rec, rec + total);
          held_name = name;
          break;
        case TamperAction::kTruncate: {
          const size_t cut = kHeaderSize + length / 2;
          ok = f.Send(rec, cut);
          f.Consume(f.size());
          Fire(where + "forwarded " + std::to_string(cut) + " of the " + std::to_string(total) +
               " bytes of " + name + ", then closed both directions");
          f.Cut();  // the fds themselves are closed by Stop()
          return false;
        }
        case TamperAction::kReplayFromEarlier:
          if (replay.empty()) {
            Note(where + "no earlier record " + std::to_string(config_.replay_index) +
                 " to replay; forwarded " + name);
            ok = f.Send(rec, total);
          } else {
            ok = f.Send(replay.data(), replay.size());
            Fire(where + "forwarded " + RecordName(replay.data(), config_.replay_index) +
                 " again instead of " + name);
          }
          break;
        case TamperAction::kInjectForeign:
          if (config_.foreign_record.size() < kHeaderSize) {
            Note(where + "no foreign record to inject; forwarded " + name);
            ok = f.Send(rec, total);
          } else {
            ok = f.Send(config_.foreign_record.data(), config_.foreign_record.size());
            Fire(where + "forwarded a foreign " +
                 RecordName(config_.foreign_record.data(), config_.record_index) +
                 " from another session instead of " + name);
          }
          break;
      }
    }
    if (!ok) break;
    offset += total;
    if (is_stream) ++stream_index;
    f.Consume(total);
  }
  if (!held.empty() && f.eof()) {
    f.Send(held.data(), held.size());
    Note(where + "stream ended while holding " + held_name + "; forwarded it last");
  }
  Note(where + "ended after " + std::to_string(offset) + " record bytes, " +
       std::to_string(stream_index) + " stream records");
  return true;
}

void TamperRelay::Fire(std::string what) {
  std::lock_guard<std::mutex> l(mu_);
  fired_ = true;
  if (!description_.empty()) description_ += "; ";
  description_ += what;
}

void TamperRelay::Note(std::string what) {
  std::lock_guard<std::mutex> l(mu_);
  if (!description_.empty()) description_ += "; ";
  description_ += "(note) " + what;
}

bool TamperRelay::fired() const {
  std::lock_guard<std::mutex> l(mu_);
  return fired_;
}

std::string TamperRelay::description() const {
  std::lock_guard<std::mutex> l(mu_);
  return description_;
}

std::vector<uint8_t> TamperRelay::captured() const {
  std::lock_guard<std::mutex> l(mu_);
  return captured_;
}

int TamperRelay::control_connections() const {
  std::lock_guard<std::mutex> l(mu_);
  return control_connections_;
}

int TamperRelay::data_connections() const {
  std::lock_guard<std::mutex> l(mu_);
  return data_connections_;
}

uint64_t TamperRelay::records_seen(uint32_t channel) const {
  std::lock_guard<std::mutex> l(mu_);
  return channel < records_seen_.size() ? records_seen_[channel] : 0;
}

}  // namespace sod
