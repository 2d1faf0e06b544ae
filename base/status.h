// Status and Result: the one error style of sod.
//
// A Status is either OK or a closed error code (Errc) plus a human-readable context string that
// names what failed (endpoint, record, state). Errc values are part of the wire protocol: an Abort
// record carries the code, so both ends log the same reason (migrate/PROTOCOL.md, "Error codes").
// Never renumber; append only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace sod {

enum class Errc : uint16_t {
  kOk = 0,
  kInvalidArgument = 1,  // a local caller passed something unusable
  kMalformed = 2,        // peer bytes do not parse (bad length, bad field, trailing bytes)
  kUnsupported = 3,      // unknown version, record type, suite or message type
  kTooLarge = 4,         // a length above the per-type maximum
  kIntegrity = 5,        // AEAD tag, HMAC or transcript mismatch
  kSequence = 6,         // record out of order, replayed, duplicated or dropped
  kTruncated = 7,        // stream ended inside a record or before its end marker
  kAuth = 8,             // peer authentication refused (TLS, channel proof, certificate)
  kIo = 9,               // socket / file / process I/O failed
  kTimeout = 10,         // a deadline passed
  kClosed = 11,          // the peer closed the connection
  kCrypto = 12,          // the local crypto library failed
  kExhausted = 13,       // a counter would wrap (sequence numbers never do)
  kState = 14,           // a message that the current protocol state does not allow
  kAborted = 15,         // the peer aborted, the reason is in the message
  kNotFound = 16,        // a named object (VM, session, file) does not exist
  kInternal = 17,        // a bug: an invariant of our own code broke
  kRefused = 18,         // policy or authorization refused the request
  kAttestation = 19,     // the peer's attestation evidence was refused (quote, PCRs, key, age)
  kCancelled = 20,       // an admin cancelled the operation (e.g. `sodctl cancel`)
};

// Stable lowercase name of a code ("integrity", "sequence", ...).
std::string_view ErrcName(Errc code);
// Maps a wire value to an Errc; an unknown value gives std::nullopt so a decoder can refuse it.
std::optional<Errc> ErrcFromWire(uint16_t value);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Errc::kOk; }
  Errc code() const { return code_; }
  const std::string& message() const { return message_; }
  // "integrity: record 17 on channel 2: AEAD tag mismatch"
  std::string ToString() const;

  // Returns a copy whose message is "context: message"; OK stays OK.
  Status WithContext(std::string_view context) const;

 private:
  Errc code_ = Errc::kOk;
  std::string message_;
};

inline Status Error(Errc code, std::string message) { return Status(code, std::move(message)); }

// Result<T>: a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status(Errc::kInternal, "Result built from an OK Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  // Precondition: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  // OK when ok(), the error otherwise.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace sod

// Propagates a non-OK Status from an expression returning Status.
#define SOD_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::sod::Status sod_status_ = (expr);        \
    if (!sod_status_.ok()) return sod_status_; \
  } while (0)

#define SOD_CONCAT_INNER_(a, b) a##b
#define SOD_CONCAT_(a, b) SOD_CONCAT_INNER_(a, b)
// SOD_ASSIGN_OR_RETURN(auto x, Foo()); propagates Foo()'s error.
#define SOD_ASSIGN_OR_RETURN(lhs, expr) \
  SOD_ASSIGN_OR_RETURN_IMPL_(SOD_CONCAT_(sod_result_, __LINE__), lhs, expr)
#define SOD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
