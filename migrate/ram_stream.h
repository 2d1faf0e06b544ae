// The guest's RAM, page by page, as QEMU's migration stream carries it and as the memory file
// holds it (migrate/PROTOCOL.md, "RAM check").
//
// QEMU's dirty tracking decides which pages it re-sends; when it misses a page (QEMU 7.2 under
// TCG with a shared memory file does, now and then), the destination resumes with a stale page
// and nothing else notices. sod checks instead of trusting it:
//
//  - RamStreamTracker follows QEMU's precopy stream (the format of QEMU 7.2's migration/savevm.c
//    and migration/ram.c, without compression, XBZRLE, multifd or postcopy, which sod never
//    enables) and keeps, for every 4 KiB page of every RAM block, the XXH3-64 hash of the last
//    version the stream carried. Both hosts run one over the stream as it passes (the source as
//    it reads QEMU's output, the destination as it hands verified bytes to its QEMU).
//  - HashRamFile hashes the same pages of the guest's memory file (memory-backend-file): the RAM
//    itself. The source does so while QEMU is paused for switchover (the RAM cannot change any
//    more) in parallel with the rest of the stream.
//  - At the commit the source compares its RAM with what its stream carried, page by page
//    (CompareRamTables names the pages that differ) and puts RamTableDigest of its RAM into the
//    signed receipt; the destination compares that digest with the digest of the stream it
//    received and loaded. Neither pass over the RAM happens while the destination waits.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <memory>
#include <mutex>

#include "base/bytes.h"
#include "base/status.h"
#include "migrate/ram_write_log.h"

namespace sod {

inline constexpr size_t kRamPageSize = 4096;  // QEMU's TARGET_PAGE_SIZE on x86
// RAM repair (PROTOCOL.md, "RAM check"): pages QEMU's stream got wrong, sent by the source on the
// control channel as kStream chunks of this stream id, offset = byte offset in the RAM block.
inline constexpr uint32_t kRamRepairStream = 1;
inline constexpr size_t kMaxRamRepairPages = 4096;  // 16 MiB; more and the migration aborts
// What a stream may declare beyond the guest's RAM: ROMs and firmware blocks.
inline constexpr uint64_t kRamStreamRomSlack = uint64_t{256} << 20;

// One RAM block, one hash per page.
struct RamPageTable {
  std::string block;               // QEMU's RAMBlock id ("mem0" for sod's memory backend)
  uint64_t length = 0;             // bytes, a multiple of kRamPageSize
  std::vector<uint64_t> hashes;    // XXH3-64 of each page, length / kRamPageSize of them
  std::vector<uint8_t> seen;       // stream tables only: 1 if the stream carried the page
};

// XXH3-128 (canonical, big-endian) over: u8 name length, the name, u64 length (LE), then every
// page hash (u64 LE) in page order. Equal tables give equal digests.
std::array<uint8_t, 16> RamTableDigest(const RamPageTable& table);

// Hashes every page of the memory file at `path` (mapped read-only; holes, pages the guest never
// touched, count as zero pages without being read) with `threads` threads.
Result<RamPageTable> HashRamFile(const std::string& path, std::string_view block, int threads = 2);

// HashRamFile on background threads, started as soon as the RAM is final; whoever needs the
// table calls Finish, which hashes what is left on the calling thread too.
//
// With a write log (Prepare with QEMU's pid; migrate/ram_write_log.h) it hashes the RAM while the
// guest still runs, so that at the pause it re-reads only the pages written since. Without one
// (no log to be had, or it failed), the whole RAM is read at the pause.
class RamFileHasher {
 public:
  RamFileHasher() = default;
  ~RamFileHasher();
  RamFileHasher(const RamFileHasher&) = delete;
  RamFileHasher& operator=(const RamFileHasher&) = delete;

  // Maps the file in the background, while the guest still runs. With `qemu_pid` (the QEMU whose
  // guest RAM the file is, mapped whole) it also attaches a write log to that QEMU, protects the
  // RAM and hashes it, all in the background. Optional; once.
  void Prepare(std::string path, std::string block, pid_t qemu_pid = 0);
  // QEMU began a pass. Without a write log, from the second pass on: faults the mapping in for the
  // pages the file holds by then (QEMU's first pass made it dense), so that the pass at the pause
  // only reads; once, in the background, stopping when hashing starts. With one: nothing.
  void OnPass(uint64_t pass);
  // Hashes on `threads` background threads (after Prepare, or preparing first).
  void Start(std::string path, std::string block, int threads = 2);
  bool started() const { return started_.load(); }
  // One more hashing thread (after Start), e.g. once other work has left a core free.
  void AddWorker();
  // The table (or why the file could not be read). Call once, after Start. The mapping is
  // released by the destructor, not here (unmapping 1 GiB is not free; Finish runs in the pause).
  Result<RamPageTable> Finish();
  // After Finish: how many pages were read after Start, and how the RAM was read ("write log", or
  // "whole RAM at the pause: <why there was no log>").
  size_t pages_read_at_pause() const { return pages_at_pause_; }
  const std::string& how() const { return how_; }

 private:
  void Map();       // on job_
  void Prehash();   // on job_, after Map: attach, protect, hash everything
  void Prefault();  // on its own thread (no write log)
  void WaitMapped();
  void Plan();  // once, by the first worker after Start: what is left to read
  void Work();
  // Hashes pages [from, from + n) (n <= kHashChunkPages) into table_.
  void HashPages(size_t from, size_t n);

  std::string path_;
  std::vector<std::thread> threads_;
  std::thread job_;  // Map, then (with a write log) the hashing while the guest runs
  std::mutex mu_;
  std::condition_variable mapped_cv_;
  bool mapped_ = false;  // guarded by mu_: the map (or its error) is ready
  Status error_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  size_t map_len_ = 0;
  RamPageTable table_;
  pid_t qemu_pid_ = 0;
  // Set on job_ once table_ holds every page as of the log's protection; used by Plan after
  // joining job_.
  std::unique_ptr<RamWriteLog> log_;
  std::string log_status_;            // why there is no (usable) log
  std::once_flag plan_once_;
  std::vector<std::pair<size_t, size_t>> units_;  // Plan's work: [from, from + n) page runs
  std::atomic<size_t> next_unit_{0};
  size_t pages_at_pause_ = 0;
  std::string how_;
  bool prepared_ = false;
  std::atomic<bool> started_{false};  // hashing began (the prefault thread stops then)
  bool prefaulting_ = false;
};

// OK when `stream` carried every page of `ram` with the same content. Otherwise kIntegrity naming
// how many pages differ or never came, and the first few by guest-physical offset in the block.
// `differing`, when given, receives those pages (indexes, ascending); it stays empty when the
// tables are of different sizes (no page could fix that).
Status CompareRamTables(const RamPageTable& ram, const RamPageTable& stream,
                        std::vector<size_t>* differing = nullptr);

class RamStreamTracker {
 public:
  // `max_ram_bytes`: the most RAM (all blocks together) a stream may declare; more is refused
  // (the page tables are allocated from the declaration).
  explicit RamStreamTracker(uint64_t max_ram_bytes);

  // The stream's next bytes, in order, in pieces of any size. The tracker never stops the
  // stream: the first thing it cannot follow ends its work and becomes status().
  void Feed(ByteSpan bytes);

  // A page of `block` the source sent apart from the stream (RAM repair): its hash replaces the
  // stream's. kInvalidArgument for an unknown block, a bad offset or a size other than a page.
  Status Repair(std::string_view block, uint64_t offset, ByteSpan page);

  // OK while the stream is understood (also after it is complete).
  const Status& status() const { return status_; }
  // The RAM section ended (QEMU sent its last pages); what follows is device state.
  bool ram_complete() const { return state_ == State::kDone && ram_ended_; }
  // The table of a block the stream declared, or null.
  const RamPageTable* Block(std::string_view name) const;
  uint64_t pages_received() const { return pages_received_; }

 private:
  enum class State {
    kHeader, kTop, kConfigSub, kCapability, kRam, kBlockList, kFooter, kDone, kFailed
  };
  // Consumes one item from p[0..n): bytes consumed (0 when only the state changed), or -1 when
  // the item is not complete in n bytes.
  ptrdiff_t Step(const uint8_t* p, size_t n);
  ptrdiff_t Fail(std::string why);
  RamPageTable* FindBlock(std::string_view name);
  uint64_t FillHash(uint8_t fill);

  uint64_t max_ram_bytes_;
  State state_ = State::kHeader;
  Status status_;
  std::vector<uint8_t> carry_;  // an item split across Feed calls
  std::vector<RamPageTable> blocks_;
  RamPageTable* current_ = nullptr;  // the block of the last page (RAM_SAVE_FLAG_CONTINUE)
  bool have_ram_section_ = false;
  uint32_t ram_section_id_ = 0;
  bool in_setup_ = false;     // inside the RAM section's START (block list allowed)
  bool section_end_ = false;  // inside the RAM section's END
  bool ram_ended_ = false;
  uint64_t blocks_left_bytes_ = 0;
  uint32_t caps_left_ = 0;
  uint64_t declared_bytes_ = 0;
  uint64_t pages_received_ = 0;
  bool zero_hash_valid_ = false;
  uint64_t zero_hash_ = 0;
};

}  // namespace sod
