#include "migrate/ram_write_log.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <string_view>

#include "migrate/ram_stream.h"
#include "migrate/uffd_abi.h"

namespace sod {

namespace {

std::string Proc(pid_t pid, const std::string& what) {
  return "/proc/" + std::to_string(pid) + "/" + what;
}

Status Errno(Errc code, const std::string& what) {
  return Error(code, what + ": " + std::strerror(errno));
}

// The features the preload library enabled on descriptor `fd` of `pid`, from its fdinfo
// ("API:\t<api>:<features>:<ioctls>", fs/userfaultfd.c).
Result<uint64_t> UffdFeatures(pid_t pid, int fd) {
  std::ifstream in(Proc(pid, "fdinfo/" + std::to_string(fd)));
  for (std::string line; std::getline(in, line);) {
    unsigned long long api = 0, features = 0;
    if (std::sscanf(line.c_str(), "API:\t%llx:%llx:", &api, &features) == 2) return features;
  }
  return Error(Errc::kUnsupported, "no userfaultfd API line in " + Proc(pid, "fdinfo"));
}

}  // namespace

Result<uint64_t> FindFileMapping(pid_t pid, const std::string& memory_file, uint64_t length) {
  std::ifstream in(Proc(pid, "maps"));
  if (!in) return Error(Errc::kNotFound, "cannot read " + Proc(pid, "maps"));
  uint64_t base = 0, covered = 0;  // the run so far: [base, base + covered) is file [0, covered)
  int runs = 0;
  for (std::string line; std::getline(in, line);) {
    unsigned long long start = 0, end = 0, offset = 0;
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %*s %llx %*s %*s %n", &start, &end, &offset,
                    &path_at) < 3 ||
        path_at <= 0 || line.compare(static_cast<size_t>(path_at), std::string::npos,
                                     memory_file) != 0) {
      continue;
    }
    if (offset == 0) {
      ++runs;
      base = start;
      covered = end - start;
    } else if (runs > 0 && start == base + covered && offset == covered) {
      covered += end - start;
    } else {
      return Error(Errc::kNotFound, memory_file + " is mapped in pieces in process " +
                                        std::to_string(pid));
    }
  }
  if (runs != 1 || covered != length) {
    return Error(Errc::kNotFound, memory_file + " is not mapped once and whole in process " +
                                      std::to_string(pid) + " (" + std::to_string(runs) +
                                      " mapping(s) of it)");
  }
  return base;
}

Result<std::unique_ptr<RamWriteLog>> RamWriteLog::Attach(pid_t pid,
                                                         const std::string& memory_file,
                                                         uint64_t length) {
  if (length == 0 || length % kRamPageSize != 0)
    return Error(Errc::kInvalidArgument, "RAM length not a positive multiple of the page size");
  const int fd = SOD_QEMU_UFFD_FD;
  char link[64] = {};
  if (::readlink(Proc(pid, "fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1) < 0 ||
      std::string_view(link) != "anon_inode:[userfaultfd]") {
    return Error(Errc::kUnsupported,
                 "QEMU has no userfaultfd at descriptor " + std::to_string(fd) +
                     " (started without sod's preload library, or the kernel refused it)");
  }
  SOD_ASSIGN_OR_RETURN(uint64_t features, UffdFeatures(pid, fd));
  // Registering for write protection without asynchronous resolution would stop the guest at its
  // first write, waiting for an answer nobody sends: never without WP_ASYNC.
  if ((features & SOD_UFFD_WRITE_LOG_FEATURES) != SOD_UFFD_WRITE_LOG_FEATURES) {
    char hex[32];
    std::snprintf(hex, sizeof hex, "%" PRIx64, features);
    return Error(Errc::kUnsupported,
                 std::string("QEMU's userfaultfd lacks asynchronous write protection (features ") +
                     hex + ")");
  }
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid()) return Errno(Errc::kNotFound, "pidfd_open " + std::to_string(pid));
  UniqueFd uffd(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!uffd.valid()) return Errno(Errc::kIo, "pidfd_getfd of QEMU's userfaultfd");
  SOD_ASSIGN_OR_RETURN(uint64_t base, FindFileMapping(pid, memory_file, length));
  UniqueFd pagemap(::open(Proc(pid, "pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap.valid()) return Errno(Errc::kIo, "open " + Proc(pid, "pagemap"));
  uffdio_register reg{};
  reg.range.start = base;
  reg.range.len = length;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) != 0)
    return Errno(Errc::kIo, "registering QEMU's guest RAM for write protection");
  return std::unique_ptr<RamWriteLog>(new RamWriteLog(pid, memory_file, length, base,
                                                      std::move(uffd), std::move(pagemap)));
}

RamWriteLog::~RamWriteLog() {
  uffdio_range r{base_, length_};
  (void)::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &r);  // fails harmlessly once QEMU has exited
}

Status RamWriteLog::CheckMapping() const {
  Result<uint64_t> now = FindFileMapping(pid_, memory_file_, length_);
  if (!now.ok() || *now != base_)
    return Error(Errc::kState, "QEMU's guest RAM mapping changed; its write log is void");
  return Status::Ok();
}

Status RamWriteLog::Protect() {
  std::vector<PageRange> ignored;
  return TakeWritten(true, ignored);
}

Status RamWriteLog::TakeWritten(bool reprotect, std::vector<PageRange>& out) {
  // The scan walks whatever is mapped now; a remapped range would look clean.
  SOD_RETURN_IF_ERROR(CheckMapping());
  std::array<page_region, 1024> vec;
  pm_scan_arg a{};
  a.size = sizeof a;
  // CHECK_WPASYNC: a page without asynchronous protection (a mapping that is not ours) aborts the
  // walk instead of looking unwritten.
  a.flags = PM_SCAN_CHECK_WPASYNC | (reprotect ? PM_SCAN_WP_MATCHING : 0);
  a.start = base_;
  a.end = base_ + length_;
  a.vec = reinterpret_cast<uintptr_t>(vec.data());
  a.vec_len = vec.size();
  a.category_mask = PAGE_IS_WRITTEN;
  a.return_mask = PAGE_IS_WRITTEN;
  for (;;) {
    const int n = ::ioctl(pagemap_.get(), PAGEMAP_SCAN, &a);
    if (n < 0) return Errno(Errc::kIo, "PAGEMAP_SCAN of QEMU's guest RAM");
    for (int i = 0; i < n; ++i) {
      const size_t first = (vec[i].start - base_) / kRamPageSize;
      const size_t end = (vec[i].end - base_) / kRamPageSize;
      if (!out.empty() && out.back().second == first)
        out.back().second = end;  // the walk resumed inside a run
      else
        out.emplace_back(first, end);
    }
    if (a.walk_end >= a.end) return Status::Ok();
    if (a.walk_end <= a.start) return Error(Errc::kIo, "PAGEMAP_SCAN made no progress");
    a.start = a.walk_end;
  }
}

}  // namespace sod
