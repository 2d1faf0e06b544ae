// A tampering TCP relay for tests: sits between a sod source and destination (both on 127.0.0.1),
// forwards every connection, and alters exactly one record on the way.
//
//   source --(Session::Connect to relay port)--> TamperRelay --(127.0.0.1:target)--> listener
//
// Like SessionListener, the relay classifies each connection by its first byte:
//   0x16  TLS control channel: bytes are forwarded untouched in both directions; the
//         initiator->responder stream is split into TLS records so that, with
//         TamperTarget::kControlChannel, one byte of one TLS record can be flipped (TLS then
//         refuses it: bad record MAC).
//   'S'   data channel: the join (ChannelHello 64 bytes, ChannelChallenge 72 bytes back,
//         ChannelProof 40 bytes) is forwarded untouched, then the initiator->responder stream is
//         parsed as sod records (migrate/record.h) and the configured action is applied to the
//         target record of the configured data channel.
//   else  forwarded untouched.
// Responder->initiator bytes are always forwarded untouched.
//
// One thread per direction per connection plus one accepting thread; every wait is a poll with a
// short timeout, so Stop() always returns promptly (it closes everything and joins every thread).
// Test tool: the input is trusted to be sod's own traffic (no hostile-input care beyond never
// hanging and never reading out of bounds).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/status.h"

namespace sod {

enum class TamperAction {
  kNone,               // forward everything (a transparent relay)
  kCapture,            // forward everything, keep a copy of the target record (captured())
  kFlipPayloadByte,    // xor 0x01 into the middle byte of the payload
  kFlipHeaderByte,     // xor 0x01 into header byte `header_offset` (default: the round field)
  kFlipTagByte,        // xor 0x01 into the first byte of the tag
  kDrop,               // do not forward the target record
  kDuplicate,          // forward the target record twice
  kReorder,            // hold the target record and forward it after the next one
  kTruncate,           // forward half of the target record, then close both directions
  kReplayFromEarlier,  // forward an earlier record of the same channel instead of the target
  kInjectForeign,      // forward `foreign_record` (from another session) instead of the target
};
std::string_view TamperActionName(TamperAction a);

enum class TamperTarget {
  kDataChannel,     // a sod record on data channel `channel`
  kControlChannel,  // a TLS record of the control connection, initiator->responder
};

struct TamperConfig {
  TamperAction action = TamperAction::kNone;
  TamperTarget target = TamperTarget::kDataChannel;

  // kDataChannel: the target is the record_index-th Stream record (0-based; on a data channel
  // this is also its sequence number) of data channel `channel` (1..) -- or, when after_bytes is
  // set, the first record of that channel that starts at or after that many record bytes.
  uint32_t channel = 1;
  uint64_t record_index = 20;
  std::optional<uint64_t> after_bytes;
  // Instead, when not empty: the first Stream record whose payload contains these bytes (only
  // visible with the integrity-only suite hmac-sha256, whose payloads travel in clear); e.g.
  // "tpm-emulator", the QEMU device section that carries a vTPM's state. captured() then
  // returns that record as it arrived, whatever the action.
  std::string payload_contains;
  // kFlipHeaderByte: which of the 24 header bytes (16 = round, 8 = sequence, 1 = type, ...).
  size_t header_offset = 16;
  // kReplayFromEarlier: the Stream record (index, < record_index) sent again instead of the target.
  uint64_t replay_index = 5;
  // kInjectForeign: the complete bytes of a record (header, payload, tag) captured from another
  // session; with the same channel and sequence it passes the header checks and fails the tag.
  std::vector<uint8_t> foreign_record;

  // kControlChannel (only kFlipPayloadByte is supported there): index (0-based) of the
  // initiator->responder TLS record whose middle body byte is flipped. Record 0 is the
  // ClientHello; choose one after the handshake.
  uint64_t tls_record_index = 8;
};

class TamperRelay {
 public:
  // Listens on 127.0.0.1:0 and forwards each accepted connection to 127.0.0.1:target_port.
  static Result<std::unique_ptr<TamperRelay>> Start(uint16_t target_port, TamperConfig config);
  ~TamperRelay();  // Stop()
  TamperRelay(const TamperRelay&) = delete;
  TamperRelay& operator=(const TamperRelay&) = delete;

  uint16_t port() const { return port_; }
  // Closes the listening socket and every connection, and joins every thread. Idempotent.
  void Stop();

  // Whether the configured action was applied (for kReorder: the held record went out after the
  // next one; for kTruncate: the connection was cut inside the record).
  bool fired() const;
  // What the relay did, human-readable ("data channel 1: stream record 20 (seq 20, ...): ...").
  std::string description() const;
  // kCapture: the bytes of the target record.
  std::vector<uint8_t> captured() const;
  // Connections accepted so far, by kind.
  int control_connections() const;
  int data_connections() const;
  // Records seen (forwarded or not) initiator->responder on a data channel.
  uint64_t records_seen(uint32_t channel) const;

 private:
  struct Conn;
  class Flow;
  TamperRelay(int listen_fd, uint16_t port, uint16_t target_port, TamperConfig config);
  void AcceptLoop();
  void Upstream(Conn* c);    // initiator -> responder, classified, maybe tampered
  void Downstream(Conn* c);  // responder -> initiator, untouched
  // Returns false when the connection was cut on purpose (kTruncate).
  bool ControlUpstream(Flow& f);
  bool DataUpstream(Flow& f);
  void Fire(std::string what);
  void Note(std::string what);

  const int listen_fd_;
  const uint16_t port_;
  const uint16_t target_port_;
  const TamperConfig config_;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;

  mutable std::mutex mu_;  // guards everything below
  bool stopped_ = false;
  std::vector<std::unique_ptr<Conn>> conns_;
  bool fired_ = false;
  std::string description_;
  std::vector<uint8_t> captured_;
  int control_connections_ = 0;
  int data_connections_ = 0;
  std::vector<uint64_t> records_seen_;  // by channel id
};

}  // namespace sod
