// RamWriteLog: which pages of a QEMU process's guest RAM were written, from the kernel's page
// tables rather than from QEMU's dirty tracking (migrate/PROTOCOL.md, "RAM check").
//
// The RAM check must know the guest's RAM at the pause. Without a log it reads all of it there
// (~65 ms per GiB here). With one it hashes the RAM while the guest still runs and, at the pause,
// re-reads only the pages written since: the kernel write-protects QEMU's mapping of the memory
// file with asynchronous userfaultfd write protection (Linux >= 6.7: a write fault is resolved by
// the kernel at once and only marks the page written; nothing waits for sod) and PAGEMAP_SCAN on
// /proc/PID/pagemap lists, and write-protects again, the pages written since. Every write through
// QEMU's mapping counts, whoever makes it: the guest's vCPUs (TCG's stores, KVM's faults), QEMU's
// devices, the kernel on QEMU's behalf (get_user_pages for writing faults the page in). Writes
// that never touch QEMU's page tables do not: write(2) to the memory file, another process's
// mapping of it, a device DMA-ing into pages pinned before the protection, punching a hole into
// the file (a balloon's discard). sod starts QEMU with none of those (no vhost, no VFIO, no
// balloon, the file 0600 and private to sodd).
//
// The userfaultfd must be created inside QEMU (it watches its creator's address space): the
// preload library migrate/qemu_uffd_preload.c does that when sod launches QEMU and leaves it at
// descriptor SOD_QEMU_UFFD_FD with the needed features enabled; Attach takes a copy with
// pidfd_getfd and registers the guest RAM's range.
//
// Thread-safety: one thread at a time.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/status.h"

namespace sod {

// [first, end) page indexes of the RAM block (4 KiB pages from the start of the memory file).
using PageRange = std::pair<size_t, size_t>;

class RamWriteLog {
 public:
  // Attaches to QEMU process `pid`, whose guest RAM is the file `memory_file` of `length` bytes
  // mapped once, whole (memory-backend-file, share=on), and registers that mapping for write
  // protection. Nothing is protected yet (Protect). Errors (each means: no log, read all RAM):
  // kUnsupported (QEMU has no suitable userfaultfd: started without the preload library, or a
  // kernel before 6.7), kNotFound (no such process, or the file is not mapped whole), kIo.
  static Result<std::unique_ptr<RamWriteLog>> Attach(pid_t pid, const std::string& memory_file,
                                                     uint64_t length);
  // Unregisters the range: a VM that stays here after the migration pays no write faults.
  ~RamWriteLog();
  RamWriteLog(const RamWriteLog&) = delete;
  RamWriteLog& operator=(const RamWriteLog&) = delete;

  // Write-protects every page: the log starts empty. The same as TakeWritten(true) discarding the
  // answer.
  Status Protect();
  // Appends to `out` the pages written since the last Protect / TakeWritten(true), in ascending
  // order; with `reprotect` they are write-protected again in the same walk (a write after that is
  // in the next answer). Errors (the log can no longer be trusted; read all RAM): kState when the
  // mapping changed (QEMU unmapped or remapped its RAM: the new mapping is not protected), kIo.
  Status TakeWritten(bool reprotect, std::vector<PageRange>& out);

  uint64_t length() const { return length_; }

 private:
  RamWriteLog(pid_t pid, std::string memory_file, uint64_t length, uint64_t base, UniqueFd uffd,
              UniqueFd pagemap)
      : pid_(pid), memory_file_(std::move(memory_file)), length_(length), base_(base),
        uffd_(std::move(uffd)), pagemap_(std::move(pagemap)) {}
  Status CheckMapping() const;

  pid_t pid_;
  std::string memory_file_;
  uint64_t length_;
  uint64_t base_;  // QEMU's virtual address of the file's first byte
  UniqueFd uffd_;
  UniqueFd pagemap_;
};

// Where `memory_file` (`length` bytes) is mapped in process `pid`, from /proc/PID/maps: the
// address of its byte 0, when one run of adjacent mappings covers exactly [0, length) of the file.
// kNotFound otherwise (not mapped, mapped in pieces that do not join, or more than once).
Result<uint64_t> FindFileMapping(pid_t pid, const std::string& memory_file, uint64_t length);

}  // namespace sod
