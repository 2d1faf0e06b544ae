// RamWriteLog and the RAM check's hashing under it (migrate/ram_write_log.h, ram_stream.h),
// against a real process started with sod's preload library (tests/ram_writer_helper.cc maps a
// file the way QEMU maps guest RAM). Needs Linux >= 6.7 (asynchronous userfaultfd write
// protection, PAGEMAP_SCAN); skips where the kernel has neither.
#include "migrate/ram_write_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "base/child_process.h"
#include "base/fd.h"
#include "migrate/ram_stream.h"
#include "migrate/uffd_abi.h"

namespace sod {
namespace {

constexpr size_t kPages = 4096;  // 16 MiB

// The helper, preloaded (or not) like a QEMU that sod launched, and its command pipes.
class Writer {
 public:
  Writer(const std::string& file, bool preload) {
    int cmd[2], ack[2];
    EXPECT_EQ(::pipe2(cmd, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(ack, O_CLOEXEC), 0);
    // Ours must be above the child's numbers (3, 4).
    to_ = UniqueFd(::fcntl(cmd[1], F_DUPFD_CLOEXEC, 10));
    from_ = UniqueFd(::fcntl(ack[0], F_DUPFD_CLOEXEC, 10));
    UniqueFd c0(::fcntl(cmd[0], F_DUPFD_CLOEXEC, 10)), a1(::fcntl(ack[1], F_DUPFD_CLOEXEC, 10));
    for (int fd : {cmd[0], cmd[1], ack[0], ack[1]}) ::close(fd);
    ChildSpec c;
    c.argv = {RAM_WRITER_HELPER, file};
    c.log_path = "/dev/null";
    c.pass_fds = {{c0.get(), 3}, {a1.get(), 4}};
    if (preload) {
      c.env = {std::string("LD_PRELOAD=") + SOD_QEMU_PRELOAD_PATH,
               std::string(SOD_QEMU_UFFD_FD_ENV) + "=" + std::to_string(SOD_QEMU_UFFD_FD),
               // A sanitized helper: the (uninstrumented) preload library comes first.
               "ASAN_OPTIONS=verify_asan_link_order=0"};
    }
    Result<pid_t> pid = SpawnChild(c);
    EXPECT_TRUE(pid.ok()) << pid.status().ToString();
    pid_ = pid.ok() ? *pid : -1;
  }
  ~Writer() {
    to_.Reset();
    if (pid_ > 0) (void)KillAndReapChild(pid_);
  }
  pid_t pid() const { return pid_; }
  // Sends a command and waits for its "ok".
  void Do(const std::string& command) {
    const std::string line = command + "\n";
    ASSERT_EQ(::write(to_.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    char ok[3];
    ASSERT_EQ(::read(from_.get(), ok, 3), 3) << "the helper died on: " << command;
  }
  void Write(size_t page) { Do("w " + std::to_string(page)); }

 private:
  pid_t pid_ = -1;
  UniqueFd to_, from_;
};

class RamWriteLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = "/dev/shm/sod-ram-write-log-test-" + std::to_string(::getpid());
    UniqueFd fd(::open(file_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), kPages * kRamPageSize), 0);
    // Some content: every 7th page non-zero, the rest holes.
    for (size_t p = 0; p < kPages; p += 7) ASSERT_EQ(::pwrite(fd.get(), "x", 1, p * kRamPageSize), 1);
  }
  void TearDown() override { ::unlink(file_.c_str()); }

  // Attaches to `w` once its preload library has run (the helper answers only after main began).
  std::unique_ptr<RamWriteLog> AttachOrSkip(Writer& w) {
    w.Do("r 0");
    Result<std::unique_ptr<RamWriteLog>> log =
        RamWriteLog::Attach(w.pid(), file_, kPages * kRamPageSize);
    if (!log.ok() && log.status().code() == Errc::kUnsupported) {
      skip_ = log.status().ToString();
      return nullptr;
    }
    EXPECT_TRUE(log.ok()) << log.status().ToString();
    return log.ok() ? std::move(*log) : nullptr;
  }

  std::string file_;
  std::string skip_;
};

#define ATTACH_OR_SKIP(log, writer)                       \
  auto log = AttachOrSkip(writer);                        \
  if (!skip_.empty()) GTEST_SKIP() << skip_;              \
  ASSERT_TRUE(log)

TEST_F(RamWriteLogTest, NamesThePagesWrittenThroughTheMappingSinceTheLastProtection) {
  Writer w(file_, true);
  ATTACH_OR_SKIP(log, w);
  ASSERT_TRUE(log->Protect().ok());
  std::vector<PageRange> written;
  ASSERT_TRUE(log->TakeWritten(false, written).ok());
  EXPECT_TRUE(written.empty());

  for (size_t p : {3, 100, 101, 4095}) w.Write(p);
  w.Do("r 2000");  // a read (of a hole, even: it allocates the page) is not a write
  w.Do("r 2001");
  w.Write(2001);  // ... a write after it is
  ASSERT_TRUE(log->TakeWritten(false, written).ok());
  EXPECT_EQ(written, (std::vector<PageRange>{{3, 4}, {100, 102}, {2001, 2002}, {4095, 4096}}));
  // Without protecting again, the same pages (and nothing is lost by asking).
  written.clear();
  ASSERT_TRUE(log->TakeWritten(true, written).ok());
  EXPECT_EQ(written, (std::vector<PageRange>{{3, 4}, {100, 102}, {2001, 2002}, {4095, 4096}}));
  // Protected again: only what is written after that.
  written.clear();
  w.Write(101);
  ASSERT_TRUE(log->TakeWritten(true, written).ok());
  EXPECT_EQ(written, (std::vector<PageRange>{{101, 102}}));
}

TEST_F(RamWriteLogTest, ManyScatteredRangesComeBackWhole) {
  // More runs than one PAGEMAP_SCAN answer holds (1024): the walk resumes where it stopped.
  Writer w(file_, true);
  ATTACH_OR_SKIP(log, w);
  ASSERT_TRUE(log->Protect().ok());
  std::vector<PageRange> expected;
  for (size_t p = 0; p < kPages; p += 3) {
    w.Write(p);
    expected.emplace_back(p, p + 1);
  }
  std::vector<PageRange> written;
  ASSERT_TRUE(log->TakeWritten(true, written).ok());
  EXPECT_EQ(written, expected);
  written.clear();
  ASSERT_TRUE(log->TakeWritten(false, written).ok());
  EXPECT_TRUE(written.empty());
}

TEST_F(RamWriteLogTest, WritesPastTheMappingAreNotInTheLog) {
  // What the log does not see (and why the RAM check reads all RAM without one, ram_write_log.h):
  // write(2) to the file itself.
  Writer w(file_, true);
  ATTACH_OR_SKIP(log, w);
  ASSERT_TRUE(log->Protect().ok());
  UniqueFd fd(::open(file_.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_EQ(::pwrite(fd.get(), "y", 1, 5 * kRamPageSize), 1);
  std::vector<PageRange> written;
  ASSERT_TRUE(log->TakeWritten(false, written).ok());
  EXPECT_TRUE(written.empty());
}

TEST_F(RamWriteLogTest, ARemappedRamVoidsTheLog) {
  Writer w(file_, true);
  ATTACH_OR_SKIP(log, w);
  ASSERT_TRUE(log->Protect().ok());
  w.Do("u");  // QEMU's RAM is elsewhere now, unprotected
  w.Write(9);
  std::vector<PageRange> written;
  Status s = log->TakeWritten(false, written);
  EXPECT_EQ(s.code(), Errc::kState) << s.ToString();
}

TEST_F(RamWriteLogTest, NoPreloadNoLog) {
  Writer w(file_, false);
  w.Do("r 0");
  Result<std::unique_ptr<RamWriteLog>> log =
      RamWriteLog::Attach(w.pid(), file_, kPages * kRamPageSize);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), Errc::kUnsupported);
  EXPECT_NE(log.status().message().find("without sod's preload library"), std::string::npos)
      << log.status().ToString();
}

TEST_F(RamWriteLogTest, FileNotMappedWholeIsNotFound) {
  Writer w(file_, true);
  w.Do("r 0");
  EXPECT_EQ(FindFileMapping(w.pid(), file_, kPages * kRamPageSize + kRamPageSize).status().code(),
            Errc::kNotFound);
  EXPECT_EQ(FindFileMapping(w.pid(), "/dev/shm/no-such-file", kRamPageSize).status().code(),
            Errc::kNotFound);
  Result<uint64_t> base = FindFileMapping(w.pid(), file_, kPages * kRamPageSize);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  EXPECT_EQ(*base % kRamPageSize, 0u);
}

// The RAM check's table under the log equals a full read of the file, with writes before, during
// and after the background hashing, between passes and just before the "pause"; and the pause
// reads only the pages written since the protection.
TEST_F(RamWriteLogTest, HasherUnderTheLogMatchesAFullRead) {
  Writer w(file_, true);
  w.Do("r 0");
  {
    auto probe = AttachOrSkip(w);
    if (!skip_.empty()) GTEST_SKIP() << skip_;
  }
  RamFileHasher h;
  h.Prepare(file_, "mem0", w.pid());
  for (size_t p = 0; p < kPages; p += 13) w.Write(p);  // races with the background hashing
  for (uint64_t pass = 2; pass < 6; ++pass) {
    for (size_t p = pass; p < kPages; p += 97) w.Write(p);
    h.OnPass(pass);
    ::usleep(20000);
  }
  ::usleep(200000);  // the background job has protected the RAM long since
  w.Write(4000);
  w.Write(4001);
  // "Paused": nothing writes any more.
  h.Start(file_, "mem0", 2);
  Result<RamPageTable> t = h.Finish();
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(h.how(), "write log");
  EXPECT_GE(h.pages_read_at_pause(), 2u);
  EXPECT_LT(h.pages_read_at_pause(), kPages / 4);
  Result<RamPageTable> full = HashRamFile(file_, "mem0", 1);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(t->hashes == full->hashes);
  EXPECT_EQ(ToHex(RamTableDigest(*t)), ToHex(RamTableDigest(*full)));
}

TEST_F(RamWriteLogTest, HasherWithoutALogReadsEverythingAtThePause) {
  Writer w(file_, false);
  w.Do("r 0");
  RamFileHasher h;
  h.Prepare(file_, "mem0", w.pid());
  w.Write(77);
  h.Start(file_, "mem0", 2);
  Result<RamPageTable> t = h.Finish();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(h.pages_read_at_pause(), kPages);
  EXPECT_NE(h.how().find("whole RAM at the pause: "), std::string::npos) << h.how();
  EXPECT_NE(h.how().find("preload"), std::string::npos) << h.how();
  Result<RamPageTable> full = HashRamFile(file_, "mem0", 1);
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(t->hashes == full->hashes);
}

}  // namespace
}  // namespace sod
