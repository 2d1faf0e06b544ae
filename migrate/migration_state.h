// The migration state machines, one per side (migrate/PROTOCOL.md, "Migration states").
//
// Each side's engine drives its machine with events; a transition the table does not list is
// refused with a kState error naming the state and the event, and the machine does not move.
// Terminal states: kCommitted and kAborted. The source's kInDoubt is left only by recovery.
//
// The safety rule both tables encode: once the source has sent its commit, no failure may lead
// it to resume the VM by itself (kCommitSent + kFailure -> kInDoubt, never kAborted); and the
// destination resumes only in kCommitted, which it reaches only from a verified commit.
#pragma once

#include <cstdint>
#include <string_view>

#include "base/status.h"

namespace sod {

enum class SourceState : uint8_t {
  kIdle,         // session open, nothing offered
  kOffered,      // offer sent, waiting for the destination to admit it
  kPrepared,     // destination admitted the offer and takes the stream
  kStreaming,    // pre-copy rounds flowing
  kSwitchover,   // source VM paused before switchover; checking the destination
  kCompleting,   // QEMU finished; draining channels, building the commit
  kCommitSent,   // commit sent: the VM must never resume here without asking
  kCommitted,    // destination acknowledged: the VM runs there, ours is gone
  kAborted,      // the VM runs here; nothing runs there
  kInDoubt,      // commit sent, no answer: VM stays paused here until recovery
};
inline constexpr size_t kSourceStateCount = 10;

enum class SourceEvent : uint8_t {
  kOfferSent,
  kPreparedReceived,
  kStreamStarted,
  kPausedForSwitchover,
  kQemuCompleted,
  kCommitSent,
  kCommitAcknowledged,
  kCommitRefused,       // the destination answered the commit with an abort: it did not resume
  kFailure,             // any error (local, peer abort, link loss, timeout)
  kRecoveredCommitted,  // recovery: the destination says it committed
  kRecoveredAborted,    // recovery: the destination never committed
};
inline constexpr size_t kSourceEventCount = 11;

enum class DestinationState : uint8_t {
  kAwaitOffer,  // session open
  kPreparing,   // checking the offer
  kReceiving,   // stream flowing (into the incoming QEMU once it has started)
  kSwitchover,  // source paused; we approved the switchover
  kVerifying,   // commit received; checking stream, transcript, receipt, signature, RAM
  kCommitted,   // verified, recorded, VM resumed here
  kAborted,     // our QEMU is gone; the VM never ran here
};
inline constexpr size_t kDestinationStateCount = 7;

enum class DestinationEvent : uint8_t {
  kOfferReceived,
  kPrepared,
  kSwitchoverApproved,
  kCommitReceived,
  kCommitVerified,
  kFailure,
};
inline constexpr size_t kDestinationEventCount = 6;

std::string_view Name(SourceState s);
std::string_view Name(SourceEvent e);
std::string_view Name(DestinationState s);
std::string_view Name(DestinationEvent e);

class SourceStateMachine {
 public:
  SourceState state() const { return state_; }
  // Moves along the table or refuses (kState) without moving.
  Status On(SourceEvent e);
  bool terminal() const { return state_ == SourceState::kCommitted || state_ == SourceState::kAborted; }

 private:
  SourceState state_ = SourceState::kIdle;
};

class DestinationStateMachine {
 public:
  DestinationState state() const { return state_; }
  Status On(DestinationEvent e);
  bool terminal() const {
    return state_ == DestinationState::kCommitted || state_ == DestinationState::kAborted;
  }

 private:
  DestinationState state_ = DestinationState::kAwaitOffer;
};

}  // namespace sod
