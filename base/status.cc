#include "base/status.h"

namespace sod {

namespace {
struct ErrcEntry {
  Errc code;
  std::string_view name;
};
// Indexed by the numeric value; the static_assert below keeps it in step with the enum.
constexpr ErrcEntry kErrcNames[] = {
    {Errc::kOk, "ok"},
    {Errc::kInvalidArgument, "invalid-argument"},
    {Errc::kMalformed, "malformed"},
    {Errc::kUnsupported, "unsupported"},
    {Errc::kTooLarge, "too-large"},
    {Errc::kIntegrity, "integrity"},
    {Errc::kSequence, "sequence"},
    {Errc::kTruncated, "truncated"},
    {Errc::kAuth, "auth"},
    {Errc::kIo, "io"},
    {Errc::kTimeout, "timeout"},
    {Errc::kClosed, "closed"},
    {Errc::kCrypto, "crypto"},
    {Errc::kExhausted, "exhausted"},
    {Errc::kState, "state"},
    {Errc::kAborted, "aborted"},
    {Errc::kNotFound, "not-found"},
    {Errc::kInternal, "internal"},
    {Errc::kRefused, "refused"},
    {Errc::kAttestation, "attestation"},
    {Errc::kCancelled, "cancelled"},
};
constexpr bool NamesInOrder() {
  for (size_t i = 0; i < std::size(kErrcNames); ++i)
    if (static_cast<size_t>(kErrcNames[i].code) != i) return false;
  return true;
}
static_assert(NamesInOrder(), "kErrcNames must list every Errc in numeric order");
static_assert(std::size(kErrcNames) == static_cast<size_t>(Errc::kCancelled) + 1,
              "kErrcNames must cover every Errc");
}  // namespace

std::string_view ErrcName(Errc code) {
  auto i = static_cast<size_t>(code);
  return i < std::size(kErrcNames) ? kErrcNames[i].name : "unknown";
}

std::optional<Errc> ErrcFromWire(uint16_t value) {
  if (value >= std::size(kErrcNames)) return std::nullopt;
  return kErrcNames[value].code;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(ErrcName(code_));
  if (!message_.empty()) {
    s += ": ";
    s += message_;
  }
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

}  // namespace sod
