// AuditLog: a host's append-only, hash-chained log of security events (migration receipts first
// of all), one JSON object per line (migrate/PROTOCOL.md, "Receipts and audit log").
//
// Entry (line N, counting from 1), written in canonical form:
//
//   {"data":{...},"hash":"<hex>","host":"<host id>","kind":"migration.commit","prev":"<hex>",
//    "seq":N,"time":"2025-01-31T12:00:00.123Z"}
//
//   seq   N: the entry's line number
//   time  when it was appended, RFC 3339 UTC with milliseconds (informational: clocks may step)
//   host  the host id of the writer; one log holds one host's entries
//   kind  what happened: 1..64 characters of [a-z0-9._-]
//   data  a JSON object, the event's details
//   prev  hex SHA-256 of the exact bytes of line N-1 (without its newline); 64 zeros for line 1
//   hash  hex SHA-256 of the canonical form of this entry without the "hash" member
//
// Canonical form: nlohmann::json::dump() without indentation. nlohmann::json keeps object members
// in a std::map, so members come out sorted by key, with no whitespace, and numbers and strings in
// one fixed notation; a line is accepted only if re-dumping its parsed value reproduces it byte for
// byte. So editing, deleting, inserting or reordering lines breaks the hash of a line or the chain
// of the next one. A hash chain cannot show that the newest entries were cut off together with
// their newlines, or that the whole tail was rewritten consistently: anchoring the latest hash
// elsewhere (e.g. in the peer's receipt) is the caller's business.
//
// Durability: Append writes the whole line with one O_APPEND write and fsyncs before it returns
// OK, so an entry that returned OK survives a crash. A crash during Append can leave a torn last
// line (no newline at its end); Verify reports it as such, and Open cuts it off and records that
// in an "audit.torn-tail-discarded" entry. If a write or fsync fails, Append returns kIo and
// removes what it wrote; if even that fails the log refuses further appends (kState) until it is
// reopened.
//
// Exclusivity: Open takes an exclusive flock on the file, so a second writer (another process or
// another AuditLog in this one) is refused with kState.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

inline constexpr size_t kMaxAuditLineSize = 1 << 20;
inline constexpr std::string_view kAuditTornTailKind = "audit.torn-tail-discarded";

class AuditLog {
 public:
  // Opens `path` for appending as host `host_id` (a valid host id, pki.h). A missing file is
  // created with mode 0600. An existing file is verified from its first line to its last (as
  // Verify does) and continued; a broken chain is refused with kIntegrity naming the line, a log
  // with entries of another host with kInvalidArgument, a file writable by group or others with
  // kInvalidArgument, and a second writer with kState. A torn last line is cut off (see above).
  static Result<std::unique_ptr<AuditLog>> Open(const std::string& path, std::string_view host_id);
  // Checks the whole file: every line a canonical entry with a correct hash, seq 1, 2, 3, ... and
  // each prev equal to the hash of the line before. OK, or kIntegrity naming the first bad line
  // and what is wrong with it (a torn last line is reported as torn); kNotFound / kIo when the
  // file cannot be read. Reads line by line, so memory stays bounded by kMaxAuditLineSize. Run
  // against a log that is being appended to, it may see the entry in flight as a torn last line.
  static Status Verify(const std::string& path);

  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends one entry and makes it durable. kInvalidArgument for a bad kind, data that is not a
  // JSON object, strings that are not valid UTF-8, or a line above kMaxAuditLineSize; kIo when
  // writing or flushing fails; kState after an unrecoverable earlier failure. Thread-safe: entries
  // from concurrent callers are serialized, each gets its own seq.
  Status Append(std::string_view kind, const nlohmann::json& data);

  const std::string& path() const { return path_; }
  const std::string& host_id() const { return host_id_; }
  // Number of entries in the log (the seq of the last one).
  uint64_t entries() const;

 private:
  AuditLog(int fd, std::string path, std::string host_id, uint64_t entries, std::string last_hash,
           uint64_t size);
  Status AppendLocked(std::string_view kind, const nlohmann::json& data);

  const int fd_;
  const std::string path_;
  const std::string host_id_;
  mutable std::mutex mu_;
  uint64_t entries_;       // guarded by mu_
  std::string last_hash_;  // guarded by mu_: hex SHA-256 of the last line
  uint64_t size_;          // guarded by mu_: file size after the last complete line
  bool broken_ = false;    // guarded by mu_: a failed append could not be undone
};

}  // namespace sod
