#include <fcntl.h>
#include <poll.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#include "base/bytes.h"
#include "base/child_process.h"
#include "base/fd.h"
#include "base/files.h"
#include "base/status.h"

namespace sod {
namespace {

TEST(StatusTest, OkAndErrorRender) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = Error(Errc::kIntegrity, "record 3: tag mismatch");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.ToString(), "integrity: record 3: tag mismatch");
  EXPECT_EQ(s.WithContext("channel 2").ToString(), "integrity: channel 2: record 3: tag mismatch");
}

TEST(StatusTest, WireCodesRoundTripAndUnknownRefused) {
  for (uint16_t v = 0; v <= static_cast<uint16_t>(Errc::kCancelled); ++v) {
    auto e = ErrcFromWire(v);
    ASSERT_TRUE(e.has_value()) << v;
    EXPECT_EQ(static_cast<uint16_t>(*e), v);
    EXPECT_NE(ErrcName(*e), "unknown");
  }
  EXPECT_FALSE(ErrcFromWire(static_cast<uint16_t>(Errc::kCancelled) + 1).has_value());
  EXPECT_FALSE(ErrcFromWire(0xffff).has_value());
}

TEST(ResultTest, ValueOrError) {
  Result<int> r = 5;
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 5);
  Result<int> e = Error(Errc::kIo, "boom");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Errc::kIo);
  Result<int> bad = Status::Ok();  // a Result never holds an OK status
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Errc::kInternal);
}

TEST(BytesTest, LittleEndianGolden) {
  Bytes out;
  ByteWriter w(out);
  w.U8(0x01);
  w.U16(0x0302);
  w.U32(0x07060504);
  w.U64(0x0f0e0d0c0b0a0908ull);
  w.Str16("hi");
  const Bytes golden = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 2, 0, 'h', 'i'};
  EXPECT_EQ(out, golden);

  ByteReader r(out);
  uint8_t a;
  uint16_t b;
  uint32_t c;
  uint64_t d;
  std::string s;
  ASSERT_TRUE(r.U8(a) && r.U16(b) && r.U32(c) && r.U64(d) && r.Str16(s, 16));
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 0x0302);
  EXPECT_EQ(c, 0x07060504u);
  EXPECT_EQ(d, 0x0f0e0d0c0b0a0908ull);
  EXPECT_EQ(s, "hi");
  EXPECT_TRUE(r.done());
}

TEST(BytesTest, ReaderRefusesShortInputAndOverlongStrings) {
  const Bytes three = {1, 2, 3};
  ByteReader r(three);
  uint32_t v;
  EXPECT_FALSE(r.U32(v));
  EXPECT_TRUE(r.failed());
  uint8_t x;
  EXPECT_FALSE(r.U8(x)) << "a failed reader stays failed";

  Bytes str;
  ByteWriter(str).Str16("hello");
  ByteReader r2(str);
  std::string s;
  EXPECT_FALSE(r2.Str16(s, 4)) << "length above the maximum is refused before copying";

  const Bytes huge_len = {0xff, 0xff, 0xff, 0x7f};
  ByteReader r3(huge_len);
  ByteSpan blob;
  EXPECT_FALSE(r3.Blob32(blob, 1 << 30));
}

// ---- SpawnChild: real children (/bin/sh) -----------------------------------------------------

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int WaitExit(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

class SpawnChildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sod-spawn-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    log_ = dir_ + "/child.log";
  }
  void TearDown() override {
    ::unlink(log_.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string dir_, log_;
};

TEST_F(SpawnChildTest, OutputGoesToTheLogAndStdinIsEmpty) {
  ChildSpec c;
  c.argv = {"sh", "-c", "echo out; echo err >&2; cat; echo done"};
  c.log_path = log_;
  auto pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok()) << pid.status().ToString();
  EXPECT_EQ(WaitExit(*pid), 0);
  EXPECT_EQ(ReadAll(log_), "out\nerr\ndone\n");
  // Appended by default, truncated on request.
  pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  EXPECT_EQ(WaitExit(*pid), 0);
  EXPECT_EQ(ReadAll(log_), "out\nerr\ndone\nout\nerr\ndone\n");
  c.truncate_log = true;
  c.argv = {"sh", "-c", "echo again"};
  pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  EXPECT_EQ(WaitExit(*pid), 0);
  EXPECT_EQ(ReadAll(log_), "again\n");
}

TEST_F(SpawnChildTest, DefaultSignalsOwnSessionAndOnlyThePassedDescriptors) {
  // This process ignores SIGTERM and blocks SIGUSR1; the child must not inherit either.
  struct sigaction ign {}, old_term {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGTERM, &ign, &old_term), 0);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int leak = ::fcntl(null_fd, F_DUPFD, 30);  // not close-on-exec: only closefrom stops it
  const int pass = ::fcntl(null_fd, F_DUPFD_CLOEXEC, 40);
  ASSERT_GE(leak, 30);
  ASSERT_GE(pass, 40);

  ChildSpec c;
  c.argv = {"sh", "-c",
            "grep -E '^(SigIgn|SigBlk)' /proc/self/status; "
            "echo sid=$(cut -d' ' -f6 /proc/$$/stat) fd3=$(readlink /proc/$$/fd/3); "
            "printf 'fds: '; ls /proc/$$/fd | sort -n | tr '\\n' ' '; echo"};
  c.log_path = log_;
  c.new_session = true;
  c.pass_fds = {{pass, 3}};
  auto pid = SpawnChild(c);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::close(null_fd);
  ::close(leak);
  ::close(pass);
  ASSERT_TRUE(pid.ok()) << pid.status().ToString();
  EXPECT_EQ(WaitExit(*pid), 0);
  const std::string out = ReadAll(log_);
  // (Only SIGTERM and SIGUSR1 are looked at: the C library's own signals, 32 and 33, are not ours
  // to reset and the environment running the test may ignore them.)
  auto mask = [&](const std::string& key) -> unsigned long long {
    const size_t at = out.find(key + ":\t");
    return at == std::string::npos ? ~0ull : std::stoull(out.substr(at + key.size() + 2, 16), nullptr, 16);
  };
  EXPECT_EQ(mask("SigIgn") & (1ull << (SIGTERM - 1)), 0u) << out;
  EXPECT_EQ(mask("SigBlk") & (1ull << (SIGUSR1 - 1)), 0u) << out;
  // Its own session (the session id is its pid), and fd 3 is the one passed.
  EXPECT_NE(out.find("sid=" + std::to_string(*pid) + " fd3=/dev/null\n"), std::string::npos)
      << out;
  // stdin, the log twice, the passed descriptor: nothing else of ours.
  EXPECT_NE(out.find("fds: 0 1 2 3 \n"), std::string::npos) << out;
}

TEST_F(SpawnChildTest, ErrorsAreNamed) {
  ChildSpec c;
  c.log_path = log_;
  EXPECT_EQ(SpawnChild(c).status().code(), Errc::kInvalidArgument);  // no argv
  c.argv = {"sod-no-such-program-here"};
  auto r = SpawnChild(c);
  EXPECT_EQ(r.status().code(), Errc::kNotFound);
  EXPECT_NE(r.status().message().find("sod-no-such-program-here"), std::string::npos);
  c.argv = {"true"};
  c.log_path = dir_ + "/no/such/dir/log";
  r = SpawnChild(c);
  EXPECT_EQ(r.status().code(), Errc::kIo);
  EXPECT_NE(r.status().message().find("cannot open log"), std::string::npos);
  // A descriptor that would land on itself or out of order is refused before anything runs.
  c.log_path = log_;
  c.pass_fds = {{3, 3}};
  EXPECT_EQ(SpawnChild(c).status().code(), Errc::kInvalidArgument);
  c.pass_fds = {{20, 4}};
  EXPECT_EQ(SpawnChild(c).status().code(), Errc::kInvalidArgument);
}

TEST_F(SpawnChildTest, LogTailAndDescribeExit) {
  {
    std::ofstream out(log_);
    for (int i = 1; i <= 12; ++i) out << "line " << i << (i == 5 ? "\r\n\n" : "\n");
  }
  EXPECT_EQ(LogTail(log_, 0, 3), "line 10 | line 11 | line 12");
  EXPECT_EQ(LogTail(log_, FileSize(log_)), "");
  const off_t from = FileSize(log_);
  std::ofstream(log_, std::ios::app) << "late one\n";
  EXPECT_EQ(LogTail(log_, from), "late one");
  EXPECT_EQ(LogTail(dir_ + "/missing"), "");
  EXPECT_EQ(FileSize(dir_ + "/missing"), 0);

  ChildSpec c;
  c.argv = {"sh", "-c", "exit 3"};
  c.log_path = log_;
  auto pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  int st = 0;
  ASSERT_EQ(::waitpid(*pid, &st, 0), *pid);
  EXPECT_EQ(DescribeExit(st), "exited with status 3");
  c.argv = {"sh", "-c", "kill -9 $$"};
  pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  ASSERT_EQ(::waitpid(*pid, &st, 0), *pid);
  EXPECT_EQ(DescribeExit(st), "killed by signal 9");
}

TEST_F(SpawnChildTest, WaitUntilEndedSleepsOnTheProcessNotOnANapLoop) {
  using Clock = std::chrono::steady_clock;
  using namespace std::chrono_literals;
  ChildSpec c;
  c.log_path = log_;
  // Ends after 200 ms: seen at once, with the predicate asked only around the exit (a nap loop
  // of 1, 2, 4 ... 20 ms would ask it ~15 times).
  c.argv = {"sleep", "0.2"};
  auto pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok()) << pid.status().ToString();
  bool reaped = false;
  int asked = 0;
  auto t0 = Clock::now();
  EXPECT_TRUE(WaitUntilEnded(*pid, [&] { return ++asked, TryReapChild(*pid, reaped); },
                             t0 + 10s));
  EXPECT_TRUE(reaped);
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_LE(asked, 4);

  // Still running at the deadline: false, not before the deadline.
  c.argv = {"sleep", "5"};
  pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  reaped = false;
  t0 = Clock::now();
  EXPECT_FALSE(WaitUntilEnded(*pid, [&] { return TryReapChild(*pid, reaped); }, t0 + 200ms));
  EXPECT_GE(Clock::now() - t0, 200ms);
  EXPECT_FALSE(reaped);
  int st = 0;
  EXPECT_EQ(WaitPidNoHang(*pid, st), 0) << "still running";
  ::kill(*pid, SIGKILL);
  EXPECT_TRUE(WaitUntilEnded(*pid, [&] { return WaitPidNoHang(*pid, st) == *pid; },
                             Clock::now() + 10s));
  EXPECT_EQ(DescribeExit(st), "killed by signal 9");
  errno = 0;
  EXPECT_EQ(WaitPidNoHang(*pid, st), -1) << "reaped already";
  EXPECT_EQ(errno, ECHILD);

  // Exited, but the predicate does not see it (a zombie someone else must reap): the readable
  // pidfd must not make it spin until the deadline.
  c.argv = {"true"};
  pid = SpawnChild(c);
  ASSERT_TRUE(pid.ok());
  asked = 0;
  EXPECT_FALSE(WaitUntilEnded(*pid, [&] { return ++asked, false; }, Clock::now() + 300ms));
  EXPECT_LT(asked, 40);
  EXPECT_EQ(WaitExit(*pid), 0);
}

TEST(FdTest, UniqueFdClosesAndPollUntilWaitsForEventsOrDeadline) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd r(p[0]);
  UniqueFd w(p[1]);
  const auto soon = [](int ms) {
    return std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  };
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(PollUntil(r.get(), POLLIN, soon(30)));  // nothing written: the deadline passes
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(30));
  EXPECT_TRUE(PollUntil(w.get(), POLLOUT, soon(1000)));
  ASSERT_EQ(::write(w.get(), "x", 1), 1);
  EXPECT_TRUE(PollUntil(r.get(), POLLIN, soon(1000)));
  EXPECT_FALSE(PollUntil(r.get(), POLLIN, soon(-1)));  // a deadline already past: no wait at all

  UniqueFd moved(std::move(w));
  EXPECT_FALSE(w.valid());
  const int raw = moved.Release();
  EXPECT_FALSE(moved.valid());
  moved.Reset(raw);
  moved.Reset();  // closes the write end: the reader sees the byte, then end of file
  char c = 0;
  EXPECT_EQ(::read(r.get(), &c, 1), 1);
  EXPECT_EQ(::read(r.get(), &c, 1), 0);
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);  // closed
}

}  // namespace
}  // namespace sod
