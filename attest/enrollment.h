// Enrollment: the records through which a host trusts its peers (attest/README.md). An operator
// takes a host's record (`sodctl host enrollment`: its AK and EK public areas and its PCR values
// at enrollment as golden values), reviews it and adds it to every other host's enrollment
// directory (`sodctl host enroll`). The verifier (attest/verifier.h) accepts a peer's quote only
// when it is signed by the AK enrolled for that peer and matches its golden PCRs.
//
// A record as JSON (one record per file, <host_id>.json):
//
//   {"version": 1,
//    "host_id": "hostb",                    a valid host id (migrate/pki.h)
//    "architecture": "tpm-host",            a capability table row name (evidence.h)
//    "ak_public": "0023000b...",            TPMT_PUBLIC, hex: a restricted signing key
//    "ek_public": "0023000b...",            TPMT_PUBLIC, hex: a restricted decryption key
//    "golden_pcrs": {"bank": "sha256",
//                    "values": {"0": "<64 hex digits>", ...}},   PCRs 0..23 but not 14
//    "enrolled_unix_ms": 1738324800123}
//
// Thread-safety: the functions are stateless; an EnrollmentStore is immutable after it is built
// (Load / Insert), and then safe to read from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "attest/tpm.h"
#include "base/bytes.h"
#include "base/status.h"

namespace sod::attest {

inline constexpr uint32_t kEnrollmentVersion = 1;
inline constexpr size_t kMaxEnrollmentPublic = 1024;     // ak_public / ek_public, bytes
inline constexpr size_t kMaxEnrollmentFile = 64 * 1024;  // one record file

struct EnrollmentRecord {
  std::string host_id;
  std::string architecture;
  Bytes ak_public;                            // TPMT_PUBLIC of the attestation key
  Bytes ek_public;                            // TPMT_PUBLIC of the endorsement key
  std::map<uint32_t, PcrDigest> golden_pcrs;  // SHA-256 bank; never kViolationPcr
  uint64_t enrolled_unix_ms = 0;
  bool operator==(const EnrollmentRecord&) const = default;
};

// The JSON above (hex in lowercase). Does not validate: a record that fails ValidateEnrollment
// gives JSON that EnrollmentFromJson refuses.
nlohmann::json EnrollmentToJson(const EnrollmentRecord& r);
// Parses and validates a record: exactly the keys above, version 1, valid host id and
// architecture, hex that decodes (either case), AK and EK that parse (tpm_wire.h) and are an
// attestation key and an endorsement key, golden PCR indices 0..23 in decimal without leading
// zeros, not kViolationPcr, 32-byte values. kMalformed (kUnsupported for another version or bank)
// with a message naming the field ("enrollment: golden_pcrs.values.14: ..."). Never throws.
Result<EnrollmentRecord> EnrollmentFromJson(const nlohmann::json& j);
// What EnrollmentFromJson checks, on a record: OK or kMalformed naming the field.
Status ValidateEnrollment(const EnrollmentRecord& r);

// The enrollment records of the hosts this host trusts, in memory. Copyable and movable.
class EnrollmentStore {
 public:
  EnrollmentStore() = default;  // no host trusted

  // Loads every `*.json` regular file of `dir` (other files and subdirectories are ignored), one
  // validated record per file, whose name must be <host_id>.json. Refuses the whole directory
  // when a file does not read, parse or validate (the error names the file), or when two records
  // share a host id or an AK. kNotFound when `dir` does not exist, kIo when it does not read.
  static Result<EnrollmentStore> Load(const std::filesystem::path& dir);

  // Adds a record in memory. Refuses (kRefused) a record whose host id or AK is already present.
  // The record is not validated: Load validates what it reads, and the verifier re-checks the
  // AK it relies on (so a record inserted here is never trusted beyond what Verify checks).
  Status Insert(EnrollmentRecord record);

  // The record of `host_id`, or nullptr. The pointer lives as long as the store is not modified.
  const EnrollmentRecord* Find(std::string_view host_id) const;
  // Every record, sorted by host id.
  const std::vector<EnrollmentRecord>& records() const { return records_; }
  size_t size() const { return records_.size(); }

  // Validates `record` and writes it to `dir`/<host_id>.json atomically (a temporary file, fsync,
  // rename; mode 0644), creating `dir` if needed. Replaces the host's previous record; refuses
  // (kRefused) a record whose AK another host of `dir` has enrolled, and refuses to write into a
  // directory that does not load (so `dir` stays loadable). kMalformed for an invalid record,
  // kIo when writing fails.
  static Status Add(const EnrollmentRecord& record, const std::filesystem::path& dir);
  // Deletes `dir`/<host_id>.json. kInvalidArgument for an invalid host id, kNotFound when the
  // host is not enrolled there, kIo otherwise.
  static Status Remove(std::string_view host_id, const std::filesystem::path& dir);

 private:
  std::vector<EnrollmentRecord> records_;  // sorted by host_id
  std::vector<Bytes> ak_keys_;             // the AK of records_[i], as its key (see .cc)
};

}  // namespace sod::attest
