#include "migrate/migration_state.h"

#include <array>
#include <optional>
#include <string>

namespace sod {

namespace {

constexpr std::array<std::string_view, kSourceStateCount> kSourceStateNames = {
    "idle",      "offered",     "prepared",  "streaming", "switchover",
    "completing", "commit-sent", "committed", "aborted",   "in-doubt"};
constexpr std::array<std::string_view, kSourceEventCount> kSourceEventNames = {
    "offer-sent",         "prepared-received", "stream-started",
    "paused-for-switchover", "qemu-completed",  "commit-sent",
    "commit-acknowledged", "commit-refused",    "failure",
    "recovered-committed", "recovered-aborted"};
constexpr std::array<std::string_view, kDestinationStateCount> kDestinationStateNames = {
    "await-offer", "preparing", "receiving", "switchover", "verifying", "committed", "aborted"};
constexpr std::array<std::string_view, kDestinationEventCount> kDestinationEventNames = {
    "offer-received", "prepared", "switchover-approved", "commit-received", "commit-verified",
    "failure"};

// The enums are dense and their last value matches the count, so the name tables above (sized
// by the counts) cover every value.
static_assert(static_cast<size_t>(SourceState::kInDoubt) + 1 == kSourceStateCount);
static_assert(static_cast<size_t>(SourceEvent::kRecoveredAborted) + 1 == kSourceEventCount);
static_assert(static_cast<size_t>(DestinationState::kAborted) + 1 == kDestinationStateCount);
static_assert(static_cast<size_t>(DestinationEvent::kFailure) + 1 == kDestinationEventCount);

template <typename T, size_t N>
std::string_view Lookup(const std::array<std::string_view, N>& names, T v) {
  auto i = static_cast<size_t>(v);
  return i < N ? names[i] : "unknown";
}

std::optional<SourceState> SourceNext(SourceState s, SourceEvent e) {
  using S = SourceState;
  using E = SourceEvent;
  if (e == E::kFailure) {
    switch (s) {
      case S::kIdle:
      case S::kOffered:
      case S::kPrepared:
      case S::kStreaming:
      case S::kSwitchover:
      case S::kCompleting:
        return S::kAborted;
      case S::kCommitSent:
        return S::kInDoubt;  // never resume by ourselves once the commit is out
      default:
        return std::nullopt;
    }
  }
  switch (s) {
    case S::kIdle:
      if (e == E::kOfferSent) return S::kOffered;
      break;
    case S::kOffered:
      if (e == E::kPreparedReceived) return S::kPrepared;
      break;
    case S::kPrepared:
      if (e == E::kStreamStarted) return S::kStreaming;
      break;
    case S::kStreaming:
      if (e == E::kPausedForSwitchover) return S::kSwitchover;
      break;
    case S::kSwitchover:
      if (e == E::kQemuCompleted) return S::kCompleting;
      break;
    case S::kCompleting:
      if (e == E::kCommitSent) return S::kCommitSent;
      break;
    case S::kCommitSent:
      if (e == E::kCommitAcknowledged) return S::kCommitted;
      if (e == E::kCommitRefused) return S::kAborted;
      break;
    case S::kInDoubt:
      if (e == E::kRecoveredCommitted) return S::kCommitted;
      if (e == E::kRecoveredAborted) return S::kAborted;
      break;
    case S::kCommitted:
    case S::kAborted:
      break;
  }
  return std::nullopt;
}

std::optional<DestinationState> DestinationNext(DestinationState s, DestinationEvent e) {
  using S = DestinationState;
  using E = DestinationEvent;
  if (e == E::kFailure) {
    if (s == S::kCommitted || s == S::kAborted) return std::nullopt;
    return S::kAborted;
  }
  switch (s) {
    case S::kAwaitOffer:
      if (e == E::kOfferReceived) return S::kPreparing;
      break;
    case S::kPreparing:
      if (e == E::kPrepared) return S::kReceiving;
      break;
    case S::kReceiving:
      if (e == E::kSwitchoverApproved) return S::kSwitchover;
      break;
    case S::kSwitchover:
      if (e == E::kCommitReceived) return S::kVerifying;
      break;
    case S::kVerifying:
      if (e == E::kCommitVerified) return S::kCommitted;
      break;
    case S::kCommitted:
    case S::kAborted:
      break;
  }
  return std::nullopt;
}

}  // namespace

std::string_view Name(SourceState s) { return Lookup(kSourceStateNames, s); }
std::string_view Name(SourceEvent e) { return Lookup(kSourceEventNames, e); }
std::string_view Name(DestinationState s) { return Lookup(kDestinationStateNames, s); }
std::string_view Name(DestinationEvent e) { return Lookup(kDestinationEventNames, e); }

Status SourceStateMachine::On(SourceEvent e) {
  auto next = SourceNext(state_, e);
  if (!next)
    return Error(Errc::kState, "source migration: event " + std::string(Name(e)) +
                                   " is not allowed in state " + std::string(Name(state_)));
  state_ = *next;
  return Status::Ok();
}

Status DestinationStateMachine::On(DestinationEvent e) {
  auto next = DestinationNext(state_, e);
  if (!next)
    return Error(Errc::kState, "destination migration: event " + std::string(Name(e)) +
                                   " is not allowed in state " + std::string(Name(state_)));
  state_ = *next;
  return Status::Ok();
}

}  // namespace sod
