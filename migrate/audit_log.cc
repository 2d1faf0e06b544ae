#include "migrate/audit_log.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>
#include <utility>

#include "base/fd.h"
#include "base/bytes.h"
#include "migrate/pki.h"
#include "migrate/receipt.h"

namespace sod {
namespace {

using nlohmann::json;

constexpr size_t kHashHexSize = 64;
constexpr size_t kMaxKindSize = 64;
constexpr size_t kReadChunk = 64 * 1024;

std::string Errno(int err) { return std::error_code(err, std::generic_category()).message(); }

std::string Sha256Hex(std::string_view data) {
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  return ToHex(ByteSpan(md, len));
}

// The canonical form (see audit_log.h). nlohmann throws for strings that are not UTF-8; that
// becomes an error here, never an exception.
std::optional<std::string> Canonical(const json& j) {
  try {
    return j.dump();
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

bool IsHashHex(const json& j) {
  if (!j.is_string()) return false;
  const auto& s = j.get_ref<const std::string&>();
  if (s.size() != kHashHexSize) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Status CheckKind(std::string_view kind) {
  bool ok = !kind.empty() && kind.size() <= kMaxKindSize;
  for (char c : kind)
    ok = ok &&
         ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-');
  if (!ok)
    return Error(Errc::kInvalidArgument, "audit log: invalid entry kind \"" +
                                             std::string(kind.substr(0, kMaxKindSize)) +
                                             "\" (1..64 characters of [a-z0-9._-])");
  return Status::Ok();
}

std::string NowRfc3339() {
  auto now = std::chrono::system_clock::now().time_since_epoch();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now).count();
  return FormatUnixMillis(ms > 0 ? static_cast<uint64_t>(ms) : 0);
}

// What a scan of a whole log found.
struct ScanResult {
  uint64_t entries = 0;
  std::string last_hash = std::string(kHashHexSize, '0');  // of the last complete line
  uint64_t good_size = 0;   // bytes up to and including the last newline
  uint64_t torn_bytes = 0;  // bytes after the last newline (a torn last line)
  std::string torn_hash;    // hex SHA-256 of those bytes
};

// Checks line `n` (1-based, without its newline) against the entry before it.
Status CheckLine(const std::string& path, uint64_t n, std::string_view line,
                 const std::string& prev_hash, std::string_view expected_host) {
  auto bad = [&](const std::string& why) {
    return Error(Errc::kIntegrity, "audit log " + path + " line " + std::to_string(n) + ": " + why);
  };
  if (line.empty()) return bad("empty line");
  json e = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (e.is_discarded()) return bad("not valid JSON (truncated or edited)");
  if (!e.is_object() || e.size() != 7 || !e.contains("seq") || !e["seq"].is_number_unsigned() ||
      !e.contains("time") || !e["time"].is_string() || !e.contains("host") ||
      !e["host"].is_string() || !e.contains("kind") || !e["kind"].is_string() ||
      !e.contains("data") || !e["data"].is_object() || !e.contains("prev") ||
      !IsHashHex(e["prev"]) || !e.contains("hash") || !IsHashHex(e["hash"]))
    return bad("not an audit entry (members or their types are wrong)");
  std::optional<std::string> canonical = Canonical(e);
  if (!canonical || *canonical != line) return bad("not in canonical form (edited)");
  const std::string hash = e["hash"].get<std::string>();
  e.erase("hash");
  std::optional<std::string> body = Canonical(e);
  if (!body || Sha256Hex(*body) != hash)
    return bad("its hash does not match its content (the line was edited)");
  uint64_t seq = e["seq"].get<uint64_t>();
  if (seq != n)
    return bad("seq is " + std::to_string(seq) + ", expected " + std::to_string(n) +
               " (a line was deleted, inserted or reordered)");
  if (e["prev"].get<std::string>() != prev_hash)
    return bad(n == 1 ? std::string("prev of the first line is not zero (lines before it were "
                                    "removed?)")
                      : "prev does not match line " + std::to_string(n - 1) +
                            " (a line was replaced, inserted or reordered)");
  const std::string& host = e["host"].get_ref<const std::string&>();
  if (!expected_host.empty() && host != expected_host)
    return Error(Errc::kInvalidArgument, "audit log " + path + " line " + std::to_string(n) +
                                             " was written by host \"" + host + "\", not \"" +
                                             std::string(expected_host) + "\"");
  return Status::Ok();
}

// Reads the log through `fd` from offset 0 and checks every complete line. Bytes after the last
// newline are reported as a torn line, not checked.
Result<ScanResult> Scan(int fd, const std::string& path, std::string_view expected_host) {
  ScanResult out;
  std::string line;
  std::string chunk(kReadChunk, '\0');
  uint64_t offset = 0;
  for (;;) {
    ssize_t n = pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(Errc::kIo, "audit log " + path + ": reading: " + Errno(errno));
    }
    if (n == 0) break;
    offset += static_cast<uint64_t>(n);
    std::string_view got(chunk.data(), static_cast<size_t>(n));
    while (!got.empty()) {
      size_t nl = got.find('\n');
      size_t take = nl == std::string_view::npos ? got.size() : nl;
      if (line.size() + take > kMaxAuditLineSize)
        return Error(Errc::kIntegrity, "audit log " + path + " line " +
                                           std::to_string(out.entries + 1) + ": longer than " +
                                           std::to_string(kMaxAuditLineSize) + " bytes");
      line.append(got.substr(0, take));
      if (nl == std::string_view::npos) break;
      got.remove_prefix(nl + 1);
      SOD_RETURN_IF_ERROR(CheckLine(path, out.entries + 1, line, out.last_hash, expected_host));
      ++out.entries;
      out.last_hash = Sha256Hex(line);
      out.good_size += line.size() + 1;
      line.clear();
    }
  }
  out.torn_bytes = line.size();
  if (!line.empty()) out.torn_hash = Sha256Hex(line);
  return out;
}

Status FsyncDirectoryOf(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return Error(Errc::kIo, "audit log " + path + ": opening its directory: " + Errno(errno));
  int rc = fsync(dfd);
  int err = errno;
  close(dfd);
  if (rc != 0)
    return Error(Errc::kIo, "audit log " + path + ": flushing its directory: " + Errno(err));
  return Status::Ok();
}

}  // namespace

AuditLog::AuditLog(int fd, std::string path, std::string host_id, uint64_t entries,
                   std::string last_hash, uint64_t size)
    : fd_(fd),
      path_(std::move(path)),
      host_id_(std::move(host_id)),
      entries_(entries),
      last_hash_(std::move(last_hash)),
      size_(size) {}

AuditLog::~AuditLog() { close(fd_); }  // also releases the flock

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path,
                                                 std::string_view host_id) {
  Status valid = ValidateHostId(host_id);
  if (!valid.ok()) return valid.WithContext("audit log " + path);
  bool created = true;
  int raw = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (raw < 0 && errno == EEXIST) {
    created = false;
    raw = open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  }
  if (raw < 0) {
    int err = errno;
    return Error(err == ENOENT ? Errc::kNotFound : Errc::kIo,
                 "audit log " + path + ": opening: " + Errno(err));
  }
  UniqueFd fd(raw);
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK)
      return Error(Errc::kState, "audit log " + path + " is already open for writing elsewhere");
    return Error(Errc::kIo, "audit log " + path + ": locking: " + Errno(err));
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Error(Errc::kIo, "audit log " + path + ": " + Errno(errno));
  if (!S_ISREG(st.st_mode))
    return Error(Errc::kInvalidArgument, "audit log " + path + " is not a regular file");
  if ((st.st_mode & 022) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error(Errc::kInvalidArgument, "audit log " + path +
                                             " is writable by group or others (mode " + mode +
                                             "); refusing to use it");
  }
  if (created) SOD_RETURN_IF_ERROR(FsyncDirectoryOf(path));

  SOD_ASSIGN_OR_RETURN(ScanResult scan, Scan(fd.get(), path, host_id));
  if (scan.torn_bytes > 0) {
    if (ftruncate(fd.get(), static_cast<off_t>(scan.good_size)) != 0 || fsync(fd.get()) != 0)
      return Error(Errc::kIo, "audit log " + path + ": cutting off the torn line " +
                                  std::to_string(scan.entries + 1) + ": " + Errno(errno));
  }
  std::unique_ptr<AuditLog> log(new AuditLog(fd.Release(), path, std::string(host_id), scan.entries,
                                             scan.last_hash, scan.good_size));
  if (scan.torn_bytes > 0) {
    json data = {{"line", scan.entries + 1},
                 {"discarded_bytes", scan.torn_bytes},
                 {"discarded_sha256", scan.torn_hash}};
    SOD_RETURN_IF_ERROR(log->Append(kAuditTornTailKind, data));
  }
  return log;
}

Status AuditLog::Verify(const std::string& path) {
  int raw = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) {
    int err = errno;
    return Error(err == ENOENT ? Errc::kNotFound : Errc::kIo,
                 "audit log " + path + ": opening: " + Errno(err));
  }
  UniqueFd fd(raw);
  SOD_ASSIGN_OR_RETURN(ScanResult scan, Scan(fd.get(), path, ""));
  if (scan.torn_bytes > 0)
    return Error(Errc::kIntegrity, "audit log " + path + " line " +
                                       std::to_string(scan.entries + 1) + " is torn: the file " +
                                       "ends inside it, without a newline (" +
                                       std::to_string(scan.torn_bytes) +
                                       " bytes; an append interrupted by a crash?)");
  return Status::Ok();
}

uint64_t AuditLog::entries() const {
  std::lock_guard lock(mu_);
  return entries_;
}

Status AuditLog::Append(std::string_view kind, const nlohmann::json& data) {
  SOD_RETURN_IF_ERROR(CheckKind(kind));
  if (!data.is_object())
    return Error(Errc::kInvalidArgument, "audit log: entry data must be a JSON object, not " +
                                             std::string(data.type_name()));
  std::lock_guard lock(mu_);
  if (broken_)
    return Error(Errc::kState,
                 "audit log " + path_ + ": unusable after a failed append; reopen it");
  return AppendLocked(kind, data);
}

Status AuditLog::AppendLocked(std::string_view kind, const nlohmann::json& data) {
  json e = json::object();
  e["seq"] = entries_ + 1;
  e["time"] = NowRfc3339();
  e["host"] = host_id_;
  e["kind"] = std::string(kind);
  e["data"] = data;
  e["prev"] = last_hash_;
  std::optional<std::string> body = Canonical(e);
  if (!body)
    return Error(Errc::kInvalidArgument,
                 "audit log: entry data of kind " + std::string(kind) + " is not valid UTF-8");
  e["hash"] = Sha256Hex(*body);
  std::optional<std::string> line = Canonical(e);
  if (!line || e["hash"].get_ref<const std::string&>().size() != kHashHexSize)
    return Error(Errc::kCrypto, "audit log: hashing an entry failed");
  if (line->size() > kMaxAuditLineSize)
    return Error(Errc::kInvalidArgument, "audit log: an entry of kind " + std::string(kind) +
                                             " is " + std::to_string(line->size()) +
                                             " bytes, above " + std::to_string(kMaxAuditLineSize));
  std::string out = *line + '\n';
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = write(fd_, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      // Undo the partial line so the next entry does not follow half an entry.
      if (ftruncate(fd_, static_cast<off_t>(size_)) != 0) broken_ = true;
      return Error(Errc::kIo, "audit log " + path_ + ": writing entry " +
                                  std::to_string(entries_ + 1) + ": " + Errno(err));
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd_) != 0) {
    // Whether the line reached the disk is unknown now: only a reopen (which verifies) can tell.
    broken_ = true;
    return Error(Errc::kIo, "audit log " + path_ + ": flushing entry " +
                                std::to_string(entries_ + 1) + ": " + Errno(errno));
  }
  ++entries_;
  size_ += out.size();
  last_hash_ = Sha256Hex(*line);
  return Status::Ok();
}

}  // namespace sod
