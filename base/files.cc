#include "base/files.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace sod {

namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

}  // namespace

off_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : 0;
}

std::string LogTail(const std::string& path, off_t from, size_t max_lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  constexpr off_t kMaxBytes = 4096;
  const off_t size = FileSize(path);
  off_t start = std::max(from, size - kMaxBytes);
  if (start < 0 || start > size) start = 0;
  in.seekg(start);
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<std::string> lines;
  for (std::string line; std::getline(ss, line);) {
    while (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  if (lines.size() > max_lines) lines.erase(lines.begin(), lines.end() - max_lines);
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : " | ") + l;
  return out;
}

Status MakePrivateDir(const std::string& dir) {
  if (dir.empty()) return Error(Errc::kInvalidArgument, "empty directory name");
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) {
      return Error(Errc::kIo, "cannot create " + part + ": " + ErrnoText(errno));
    }
  }
  if (::chmod(dir.c_str(), 0700) != 0) {
    return Error(Errc::kIo, "cannot chmod 0700 " + dir + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status WriteFileAtomically(const std::string& path, std::string_view text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Error(Errc::kIo, "cannot create " + tmp + ": " + ErrnoText(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Error(Errc::kIo, "cannot write " + tmp + ": " + ErrnoText(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Error(Errc::kIo, "cannot fsync " + tmp + ": " + ErrnoText(err));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Error(Errc::kIo, "cannot rename " + tmp + " to " + path + ": " + ErrnoText(err));
  }
  return Status::Ok();
}

Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return Error(err == ENOENT ? Errc::kNotFound : Errc::kIo, path + ": " + ErrnoText(err));
  }
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return Error(Errc::kIo, path + ": read: " + ErrnoText(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > max_bytes) {
      ::close(fd);
      return Error(Errc::kTooLarge, path + ": larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  ::close(fd);
  return text;
}

}  // namespace sod
