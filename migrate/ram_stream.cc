#include "migrate/ram_stream.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxh_x86dispatch.h>  // XXH3 with the widest vector unit this CPU has
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <thread>

namespace sod {

namespace {

// QEMU 7.2, migration/savevm.h and migration/ram.c.
constexpr uint32_t kQemuMagic = 0x5145564d;  // "QEVM"
constexpr uint32_t kQemuVersion = 3;
constexpr uint8_t kVmEof = 0x00;
constexpr uint8_t kSectionStart = 0x01;
constexpr uint8_t kSectionPart = 0x02;
constexpr uint8_t kSectionEnd = 0x03;
constexpr uint8_t kSectionFull = 0x04;
constexpr uint8_t kSubsection = 0x05;
constexpr uint8_t kConfiguration = 0x07;
constexpr uint8_t kCommand = 0x08;
constexpr uint8_t kFooter = 0x7e;
constexpr uint16_t kCommandPackaged = 7;  // its payload follows outside the command's length

constexpr uint64_t kFlagZero = 0x02;
constexpr uint64_t kFlagMemSize = 0x04;
constexpr uint64_t kFlagPage = 0x08;
constexpr uint64_t kFlagEos = 0x10;
constexpr uint64_t kFlagContinue = 0x20;
constexpr uint64_t kFlagMask = kRamPageSize - 1;

constexpr size_t kMaxCarry = 8192;  // larger than any item (a page with its header: 4360)
constexpr size_t kMaxBlocks = 256;
constexpr uint32_t kMaxCapabilities = 64;

uint32_t Be16(const uint8_t* p) { return uint32_t{p[0]} << 8 | p[1]; }
uint32_t Be32(const uint8_t* p) { return Be16(p) << 16 | Be16(p + 2); }
uint64_t Be64(const uint8_t* p) { return uint64_t{Be32(p)} << 32 | Be32(p + 4); }

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::array<uint8_t, 16> RamTableDigest(const RamPageTable& t) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  const uint8_t name_len = static_cast<uint8_t>(std::min<size_t>(t.block.size(), 255));
  XXH3_128bits_update(st, &name_len, 1);
  XXH3_128bits_update(st, t.block.data(), name_len);
  uint8_t len[8];
  StoreLe64(len, t.length);
  XXH3_128bits_update(st, len, sizeof len);
  std::vector<uint8_t> le(t.hashes.size() * 8);
  for (size_t i = 0; i < t.hashes.size(); ++i) StoreLe64(le.data() + i * 8, t.hashes[i]);
  XXH3_128bits_update(st, le.data(), le.size());
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(st));
  XXH3_freeState(st);
  std::array<uint8_t, 16> out;
  std::memcpy(out.data(), canon.digest, out.size());
  return out;
}

Result<RamPageTable> HashRamFile(const std::string& path, std::string_view block, int threads) {
  RamFileHasher h;
  h.Start(path, std::string(block), std::clamp(threads, 1, 16) - 1);  // Finish is the last one
  return h.Finish();
}

namespace {
constexpr size_t kHashChunkPages = 512;  // 2 MiB: the unit hashing threads share out
}

RamFileHasher::~RamFileHasher() {
  if (job_.joinable()) job_.join();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  log_.reset();  // unregisters: a VM that stays here pays no write faults
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), map_len_);
  if (fd_ >= 0) ::close(fd_);
}

void RamFileHasher::Prepare(std::string path, std::string block, pid_t qemu_pid) {
  if (prepared_) return;
  prepared_ = true;
  path_ = std::move(path);
  table_.block = std::move(block);
  qemu_pid_ = qemu_pid;
  if (qemu_pid_ <= 0) log_status_ = "no write log asked for";
  job_ = std::thread([this] {
    Map();
    if (qemu_pid_ > 0) Prehash();
  });
}

namespace {
// Calls f(begin, end, resident) for each run of pages [begin, end) that mincore reported alike.
template <class F>
void ForEachRun(const unsigned char* resident, size_t n, F&& f) {
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && (resident[j] & 1) == (resident[i] & 1)) ++j;
    f(i, j, (resident[i] & 1) != 0);
    i = j;
  }
}

// [from, to) cut into runs of at most kHashChunkPages.
void AppendUnits(size_t from, size_t to, std::vector<std::pair<size_t, size_t>>& units) {
  for (; from < to; from += std::min(to - from, kHashChunkPages))
    units.emplace_back(from, std::min(to - from, kHashChunkPages));
}
}  // namespace

void RamFileHasher::WaitMapped() {
  std::unique_lock<std::mutex> l(mu_);
  mapped_cv_.wait(l, [this] { return mapped_; });
}

void RamFileHasher::Prehash() {
  if (base_ == nullptr) {
    log_status_ = "the memory file is not mapped";
    return;
  }
  // Kept in log_ only once the table is current under it; dropped (unregistered) otherwise.
  Result<std::unique_ptr<RamWriteLog>> log = RamWriteLog::Attach(qemu_pid_, path_, table_.length);
  if (!log.ok()) {
    log_status_ = log.status().ToString();
    return;
  }
  // Protect first, then read: a page written after its protection is in the log, whether this
  // pass read it before or after the write.
  if (Status s = (*log)->Protect(); !s.ok()) {
    log_status_ = s.ToString();
    return;
  }
  const size_t pages = table_.hashes.size();
  for (size_t from = 0; from < pages; from += kHashChunkPages)
    HashPages(from, std::min(pages - from, kHashChunkPages));
  log_ = std::move(*log);
}

void RamFileHasher::OnPass(uint64_t pass) {
  // With a write log there is nothing to do until the pause: re-reading what the guest wrote at
  // every pass would compete with QEMU for the CPU and let a busy guest outrun it (measured: a
  // guest rewriting 256 MiB needed up to 13 rounds instead of 5), and every page would take a
  // write fault again after each new protection. Its pages are read once, at the pause.
  if (pass >= 2 && qemu_pid_ <= 0) Prefault();
}

void RamFileHasher::Prefault() {
  if (!prepared_ || prefaulting_ || started_) return;
  prefaulting_ = true;
  threads_.emplace_back([this] {
    WaitMapped();
    if (base_ == nullptr) return;
    unsigned char resident[kHashChunkPages];
    const size_t pages = table_.hashes.size();
    for (size_t from = 0; from < pages && !started_.load(); from += kHashChunkPages) {
      const size_t n = std::min(pages - from, kHashChunkPages);
      uint8_t* chunk = const_cast<uint8_t*>(base_) + from * kRamPageSize;
      if (::mincore(chunk, n * kRamPageSize, resident) != 0) continue;
      ForEachRun(resident, n, [&](size_t i, size_t j, bool mapped) {
        if (mapped)
          (void)::madvise(chunk + i * kRamPageSize, (j - i) * kRamPageSize, MADV_POPULATE_READ);
      });
    }
  });
}

void RamFileHasher::AddWorker() {
  if (!started_) return;
  threads_.emplace_back([this] { Work(); });
}

void RamFileHasher::Start(std::string path, std::string block, int threads) {
  Prepare(std::move(path), std::move(block));
  if (started_.exchange(true)) return;
  for (int k = 0; k < threads; ++k) threads_.emplace_back([this] { Work(); });
}

void RamFileHasher::Map() {
  Status err;
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd_ < 0 || ::fstat(fd_, &st) != 0) {
    err = Error(Errc::kIo, "open " + path_ + ": " + std::strerror(errno));
  } else {
    table_.length = static_cast<uint64_t>(st.st_size) & ~kFlagMask;
    table_.hashes.resize(table_.length / kRamPageSize);
    if (table_.length != 0) {
      // Not populated: a page the guest never touched is a hole in the file, and reading it
      // through a shared mapping would allocate it. HashPages skips holes and faults in only the
      // pages it hashes.
      void* map = ::mmap(nullptr, table_.length, PROT_READ, MAP_SHARED, fd_, 0);
      if (map == MAP_FAILED) {
        err = Error(Errc::kIo, "mmap " + path_ + ": " + std::strerror(errno));
      } else {
        base_ = static_cast<const uint8_t*>(map);
        map_len_ = table_.length;
      }
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  error_ = err;
  mapped_ = true;
  mapped_cv_.notify_all();
}

namespace {
// With no swap, a page of a tmpfs file that is not in memory is a hole: zeros, never written.
bool SystemHasSwap() {
  std::FILE* f = std::fopen("/proc/swaps", "re");
  if (f == nullptr) return true;  // cannot tell: read every page
  int lines = 0;
  for (int c; (c = std::fgetc(f)) != EOF;) lines += c == '\n';
  std::fclose(f);
  return lines > 1;  // a header line, then one per swap area
}
}  // namespace

void RamFileHasher::HashPages(size_t from, size_t n) {
  static const uint64_t zero_hash = [] {
    static const uint8_t zero[kRamPageSize] = {};
    return XXH3_64bits_dispatch(zero, kRamPageSize);
  }();
  static const bool swap = SystemHasSwap();
  unsigned char resident[kHashChunkPages];
  uint8_t page[kRamPageSize];
  uint8_t* chunk = const_cast<uint8_t*>(base_) + from * kRamPageSize;
  // A page the guest never touched is a hole in the file; touching it through the mapping
  // would allocate it (a 1 GiB idle guest would grow by ~1 GiB). mincore tells without touching.
  if (::mincore(chunk, n * kRamPageSize, resident) != 0) std::memset(resident, 1, n);
  ForEachRun(resident, n, [&](size_t i, size_t j, bool mapped) {
    if (mapped) {
      // Map the run at once: far cheaper than a fault per page (old kernels: per page).
      (void)::madvise(chunk + i * kRamPageSize, (j - i) * kRamPageSize, MADV_POPULATE_READ);
      for (size_t k = i; k < j; ++k)
        table_.hashes[from + k] = XXH3_64bits_dispatch(chunk + k * kRamPageSize, kRamPageSize);
      return;
    }
    for (size_t k = i; k < j; ++k) {
      uint64_t h = zero_hash;
      if (swap) {  // maybe swapped out: read it (a hole reads as zeros, unallocated)
        const off_t at = static_cast<off_t>((from + k) * kRamPageSize);
        if (::pread(fd_, page, kRamPageSize, at) == static_cast<ssize_t>(kRamPageSize))
          h = XXH3_64bits_dispatch(page, kRamPageSize);
      }
      table_.hashes[from + k] = h;
    }
  });
}

void RamFileHasher::Plan() {
  if (job_.joinable()) job_.join();  // the mapping, and any background hashing, are done
  if (base_ == nullptr) return;
  if (log_) {
    // The VM is paused: no page changes any more. Read again what was written since the RAM was
    // protected; the rest of the table is current.
    std::vector<PageRange> written;
    if (Status s = log_->TakeWritten(false, written); s.ok()) {
      for (const auto& [first, end] : written) AppendUnits(first, end, units_);
      how_ = "write log";
      return;
    } else {
      log_status_ = s.ToString();
    }
  }
  AppendUnits(0, table_.hashes.size(), units_);
  how_ = "whole RAM at the pause: " + log_status_;
}

void RamFileHasher::Work() {
  std::call_once(plan_once_, [this] { Plan(); });
  for (;;) {
    const size_t u = next_unit_.fetch_add(1);
    if (u >= units_.size()) return;
    HashPages(units_[u].first, units_[u].second);
  }
}

Result<RamPageTable> RamFileHasher::Finish() {
  if (!prepared_) return Error(Errc::kInternal, "the RAM was never mapped for hashing");
  Work();  // share what is left
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  for (const auto& u : units_) pages_at_pause_ += u.second;
  // The mapping stays until the destructor: tearing down 1 GiB of it takes 15-40 ms here, and
  // the caller is inside the VM's pause (the commit waits for this table).
  if (!error_.ok()) return error_;
  return std::move(table_);
}

namespace {
bool SameShape(const RamPageTable& ram, const RamPageTable& stream) {
  return ram.length == stream.length && stream.hashes.size() == ram.hashes.size() &&
         stream.seen.size() == stream.hashes.size();
}
}  // namespace

Status CompareRamTables(const RamPageTable& ram, const RamPageTable& stream,
                        std::vector<size_t>* differing) {
  std::vector<size_t> local;
  std::vector<size_t>& bad = differing != nullptr ? *differing : local;
  bad.clear();
  if (!SameShape(ram, stream))
    return Error(Errc::kIntegrity, "RAM block " + ram.block + " is " + std::to_string(ram.length) +
                                       " bytes, the stream's " + stream.block + " " +
                                       std::to_string(stream.length));
  for (size_t i = 0; i < ram.hashes.size(); ++i)
    if (!stream.seen[i] || stream.hashes[i] != ram.hashes[i]) bad.push_back(i);
  if (bad.empty()) return Status::Ok();
  uint64_t missing = 0;
  std::string first;
  for (size_t k = 0; k < bad.size(); ++k) {
    const bool absent = !stream.seen[bad[k]];
    missing += absent;
    if (k < 4)
      first += (first.empty() ? "" : ", ") + Hex(bad[k] * kRamPageSize) + (absent ? " (never sent)" : "");
  }
  return Error(Errc::kIntegrity,
               "guest RAM differs from what QEMU's stream carried: " +
                   std::to_string(bad.size() - missing) + " page(s) stale, " +
                   std::to_string(missing) + " never sent, in block " + ram.block + " at " + first +
                   (bad.size() > 4 ? ", ..." : "") + " (QEMU missed a dirty page)");
}

Status RamStreamTracker::Repair(std::string_view block, uint64_t offset, ByteSpan page) {
  RamPageTable* b = FindBlock(block);
  if (b == nullptr) return Error(Errc::kInvalidArgument, "no RAM block " + std::string(block));
  if (page.size() != kRamPageSize || offset % kRamPageSize != 0 || offset >= b->length)
    return Error(Errc::kInvalidArgument, "repair of " + std::to_string(page.size()) +
                                             " bytes at " + Hex(offset) + " in RAM block " +
                                             b->block);
  b->hashes[offset / kRamPageSize] = XXH3_64bits_dispatch(page.data(), page.size());
  b->seen[offset / kRamPageSize] = 1;
  return Status::Ok();
}

RamStreamTracker::RamStreamTracker(uint64_t max_ram_bytes) : max_ram_bytes_(max_ram_bytes) {}

RamPageTable* RamStreamTracker::FindBlock(std::string_view name) {
  for (auto& b : blocks_)
    if (b.block == name) return &b;
  return nullptr;
}

const RamPageTable* RamStreamTracker::Block(std::string_view name) const {
  return const_cast<RamStreamTracker*>(this)->FindBlock(name);
}

ptrdiff_t RamStreamTracker::Fail(std::string why) {
  status_ = Error(Errc::kUnsupported, "QEMU migration stream: " + std::move(why));
  state_ = State::kFailed;
  carry_.clear();
  return -1;
}

uint64_t RamStreamTracker::FillHash(uint8_t fill) {
  if (fill == 0 && zero_hash_valid_) return zero_hash_;
  uint8_t page[kRamPageSize];
  std::memset(page, fill, sizeof page);
  const uint64_t h = XXH3_64bits_dispatch(page, sizeof page);
  if (fill == 0) {
    zero_hash_ = h;
    zero_hash_valid_ = true;
  }
  return h;
}

void RamStreamTracker::Feed(ByteSpan in) {
  // carry_ holds at most one item that is not complete yet; everything else is parsed in place.
  auto active = [this] { return state_ != State::kFailed && state_ != State::kDone; };
  while (active() && !in.empty()) {
    if (carry_.empty()) {
      const ptrdiff_t c = Step(in.data(), in.size());
      if (!active()) return;
      if (c >= 0) {
        in = in.subspan(static_cast<size_t>(c));
        continue;
      }
      if (in.size() >= kMaxCarry) {
        Fail("an item longer than " + std::to_string(kMaxCarry) + " bytes");
        return;
      }
      carry_.assign(in.begin(), in.end());
      return;
    }
    const size_t take = std::min(in.size(), kMaxCarry - carry_.size());
    carry_.insert(carry_.end(), in.begin(), in.begin() + static_cast<ptrdiff_t>(take));
    in = in.subspan(take);
    size_t off = 0;
    while (active() && off < carry_.size()) {
      const ptrdiff_t c = Step(carry_.data() + off, carry_.size() - off);
      if (c < 0) break;
      off += static_cast<size_t>(c);
    }
    if (!active()) return;
    if (off == 0 && carry_.size() >= kMaxCarry) {
      Fail("an item longer than " + std::to_string(kMaxCarry) + " bytes");
      return;
    }
    carry_.erase(carry_.begin(), carry_.begin() + static_cast<ptrdiff_t>(off));
  }
}

ptrdiff_t RamStreamTracker::Step(const uint8_t* p, size_t n) {
  switch (state_) {
    case State::kHeader: {
      if (n < 8) return -1;
      if (Be32(p) != kQemuMagic) return Fail("not a QEMU migration stream (magic " + Hex(Be32(p)) + ")");
      if (Be32(p + 4) != kQemuVersion) return Fail("stream version " + std::to_string(Be32(p + 4)));
      state_ = State::kTop;
      return 8;
    }
    case State::kTop: {
      if (n < 1) return -1;
      switch (p[0]) {
        case kConfiguration: {
          if (n < 5) return -1;
          const uint32_t len = Be32(p + 1);
          if (len > 256) return Fail("machine type name of " + std::to_string(len) + " bytes");
          if (n < 5 + len) return -1;
          state_ = State::kConfigSub;
          return 5 + len;
        }
        case kSectionStart: {
          if (n < 6) return -1;
          const size_t id_len = p[5];
          if (n < 6 + id_len + 8) return -1;
          const std::string id(reinterpret_cast<const char*>(p + 6), id_len);
          if (id != "ram") return Fail("iterable section '" + id + "' (only RAM is followed)");
          if (have_ram_section_) return Fail("a second RAM section");
          have_ram_section_ = true;
          ram_section_id_ = Be32(p + 1);
          in_setup_ = true;
          section_end_ = false;
          state_ = State::kRam;
          return static_cast<ptrdiff_t>(6 + id_len + 8);
        }
        case kSectionPart:
        case kSectionEnd: {
          if (n < 5) return -1;
          if (!have_ram_section_ || Be32(p + 1) != ram_section_id_)
            return Fail("part of section " + std::to_string(Be32(p + 1)) + ", not RAM's");
          if (ram_ended_) return Fail("RAM continues after its end");
          in_setup_ = false;
          section_end_ = p[0] == kSectionEnd;
          state_ = State::kRam;
          return 5;
        }
        case kSectionFull:
        case kVmEof:
          // Device state (or the end) comes only after RAM's last part.
          if (!ram_ended_) return Fail("device state before the end of RAM");
          state_ = State::kDone;
          return 0;
        case kCommand: {
          if (n < 5) return -1;
          const uint32_t cmd = Be16(p + 1), len = Be16(p + 3);
          if (cmd == kCommandPackaged) return Fail("packaged command (postcopy)");
          if (len > 4096) return Fail("command of " + std::to_string(len) + " bytes");
          if (n < 5 + len) return -1;
          return 5 + len;
        }
        default:
          return Fail("unexpected section type " + Hex(p[0]));
      }
    }
    case State::kConfigSub: {
      if (n < 1) return -1;
      if (p[0] != kSubsection) {
        state_ = State::kTop;
        return 0;
      }
      if (n < 2) return -1;
      const size_t name_len = p[1];
      if (n < 2 + name_len + 4) return -1;
      const std::string name(reinterpret_cast<const char*>(p + 2), name_len);
      const size_t head = 2 + name_len + 4;
      if (name == "configuration/target-page-bits") {
        if (n < head + 4) return -1;
        if (Be32(p + head) != 12) return Fail("target page bits " + std::to_string(Be32(p + head)));
        return static_cast<ptrdiff_t>(head + 4);
      }
      if (name == "configuration/uuid") {
        if (n < head + 16) return -1;
        return static_cast<ptrdiff_t>(head + 16);
      }
      if (name == "configuration/capabilities") {
        if (n < head + 4) return -1;
        caps_left_ = Be32(p + head);
        if (caps_left_ > kMaxCapabilities)
          return Fail(std::to_string(caps_left_) + " validated capabilities");
        state_ = State::kCapability;
        return static_cast<ptrdiff_t>(head + 4);
      }
      return Fail("configuration subsection '" + name + "'");
    }
    case State::kCapability: {
      if (caps_left_ == 0) {
        state_ = State::kConfigSub;
        return 0;
      }
      if (n < 1 || n < 1 + size_t{p[0]}) return -1;
      --caps_left_;
      return 1 + p[0];
    }
    case State::kBlockList: {
      if (blocks_left_bytes_ == 0) {
        state_ = State::kRam;
        return 0;
      }
      if (n < 1) return -1;
      const size_t id_len = p[0];
      if (n < 1 + id_len + 8) return -1;
      RamPageTable b;
      b.block.assign(reinterpret_cast<const char*>(p + 1), id_len);
      b.length = Be64(p + 1 + id_len);
      if (b.length % kRamPageSize != 0 || b.length > blocks_left_bytes_)
        return Fail("RAM block " + b.block + " of " + std::to_string(b.length) + " bytes");
      if (Block(b.block) != nullptr) return Fail("RAM block " + b.block + " declared twice");
      if (blocks_.size() >= kMaxBlocks) return Fail("more than " + std::to_string(kMaxBlocks) + " RAM blocks");
      blocks_left_bytes_ -= b.length;
      b.hashes.assign(b.length / kRamPageSize, 0);
      b.seen.assign(b.length / kRamPageSize, 0);
      blocks_.push_back(std::move(b));
      current_ = nullptr;
      return static_cast<ptrdiff_t>(1 + id_len + 8);
    }
    case State::kRam: {
      if (n < 8) return -1;
      const uint64_t word = Be64(p);
      const uint64_t flags = word & kFlagMask, addr = word & ~kFlagMask;
      if (flags == kFlagMemSize) {
        if (!in_setup_ || !blocks_.empty()) return Fail("RAM size outside the RAM setup");
        if (addr > max_ram_bytes_)
          return Fail("declares " + std::to_string(addr) + " bytes of RAM, more than " +
                      std::to_string(max_ram_bytes_));
        declared_bytes_ = blocks_left_bytes_ = addr;
        state_ = State::kBlockList;
        return 8;
      }
      if (flags == kFlagEos) {
        state_ = State::kFooter;
        return 8;
      }
      const uint64_t kind = flags & ~kFlagContinue;
      if (kind != kFlagZero && kind != kFlagPage)
        return Fail("RAM record flags " + Hex(flags) + " (compression, XBZRLE or RDMA)");
      size_t head = 8;
      RamPageTable* block = current_;
      if (flags & kFlagContinue) {
        if (block == nullptr) return Fail("a page continues no block");
      } else {
        if (n < 9) return -1;
        const size_t id_len = p[8];
        if (n < 9 + id_len) return -1;
        const std::string_view id(reinterpret_cast<const char*>(p + 9), id_len);
        block = FindBlock(id);
        if (block == nullptr) return Fail("page of an undeclared RAM block '" + std::string(id) + "'");
        head = 9 + id_len;
      }
      const size_t body = kind == kFlagZero ? 1 : kRamPageSize;
      if (n < head + body) return -1;
      if (addr >= block->length)
        return Fail("page at " + Hex(addr) + " beyond RAM block " + block->block);
      const size_t page = addr / kRamPageSize;
      block->hashes[page] = kind == kFlagZero ? FillHash(p[head])
                                              : XXH3_64bits_dispatch(p + head, kRamPageSize);
      block->seen[page] = 1;
      current_ = block;
      ++pages_received_;
      return static_cast<ptrdiff_t>(head + body);
    }
    case State::kFooter: {
      if (n < 1) return -1;
      size_t used = 0;
      if (p[0] == kFooter) {
        if (n < 5) return -1;
        if (Be32(p + 1) != ram_section_id_) return Fail("footer of section " + std::to_string(Be32(p + 1)));
        used = 5;
      }
      if (in_setup_ && blocks_left_bytes_ != 0) return Fail("RAM blocks do not add up to the RAM size");
      if (in_setup_ && declared_bytes_ == 0) return Fail("RAM setup without a size");
      in_setup_ = false;
      if (section_end_) ram_ended_ = true;  // device sections or the end follow
      state_ = State::kTop;
      return static_cast<ptrdiff_t>(used);
    }
    case State::kDone:
    case State::kFailed:
      return -1;
  }
  return -1;
}

}  // namespace sod
