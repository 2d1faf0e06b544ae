// What sod's engine costs per byte of QEMU's stream: the whole data path of a migration, without
// QEMU or a guest, against the path plain QEMU takes (BENCHMARKS.md section 2b).
//
//   tcp        "source QEMU" writes the stream into a loopback TCP socket, "destination QEMU"
//              reads it: plain QEMU's migration path (no engine).
//   sod        "source QEMU" writes into a socketpair; a StreamPump reads it and sends it as
//              AES-256-GCM records over N loopback data channels (MakeSendQueue / MakeStream, as a
//              session builds them); a StreamSink verifies them and writes the stream into a
//              socketpair, in order; "destination QEMU" reads that: the same classes and the same
//              transports as a migration's data path.
//   sod-ram    sod with both hosts following the RAM pages in the stream (RamStreamTracker as the
//              pump's and the sink's observer, as with the RAM check on).
//
// The stream is a QEMU 7.2 precopy stream of one RAM pass: every page of a RAM block as a PAGE
// record with non-repeating contents (the shape of a busy guest's later passes, which are what
// the downtime consists of), then the device state. "Source QEMU" writes it in 256 KiB pieces,
// "destination QEMU" reads it as QEMU does (non-blocking, 32 KiB reads, poll when empty). All
// threads are in this process, so the process's CPU time (getrusage) is the whole cost of moving
// the stream, both hosts together.
// Modes run interleaved, repeated; the summary gives medians.
//
//   pipeline_bench [--mb RAM_MIB] [--reps N] [--channels N] [--modes tcp,sod,sod-ram]
//                  [--send zc|copy|posix]
// --send: the data channels' send path: zc = what a session picks (MakeSendQueue: io_uring
// zero-copy sends where the kernel has them), copy = io_uring plain sends, posix = send(2).
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "migrate/key_schedule.h"
#include "migrate/ram_stream.h"
#include "migrate/record.h"
#include "migrate/record_io.h"
#include "migrate/session.h"
#include "migrate/socket.h"
#include "migrate/stream_pump.h"
#include "migrate/uring.h"
#include "tests/qemu_stream_builder.h"

namespace sod {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kWritePiece = 256 * 1024;  // QEMU flushes its buffer and page iovecs in pieces
constexpr size_t kQemuReadPiece = 32 * 1024;  // the incoming QEMU's buffer

struct Sample {
  double wall_s = 0;
  double cpu_s = 0;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "pipeline_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) Die(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

void Must(const Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

Bytes BuildStream(uint64_t ram_bytes) {
  testing::QemuStreamBuilder b;
  b.Header().RamStart(1, {{"mem0", ram_bytes}});
  std::mt19937_64 rng(42);
  Bytes page(kPage);
  b.Part(1);
  for (uint64_t addr = 0; addr < ram_bytes; addr += kPage) {
    for (size_t i = 0; i < kPage; i += 8) {
      const uint64_t v = rng();
      std::memcpy(page.data() + i, &v, 8);
    }
    b.Page(addr == 0 ? "mem0" : "", addr, page);
  }
  b.Eos().Footer(1);
  b.End(1).Eos().Footer(1);
  const Bytes devices(64 * 1024, 0x5a);
  b.DevicesAndEof(2, "devices", devices);
  return std::move(b.bytes);
}

std::pair<UniqueFd, UniqueFd> SocketPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) Die("socketpair");
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

std::pair<UniqueFd, UniqueFd> TcpPair() {
  UniqueFd listener = Must(ListenTcp("127.0.0.1", 0, 4), "listen");
  const uint16_t port = Must(LocalPort(listener.get()), "port");
  UniqueFd client = Must(ConnectTcp("127.0.0.1", port, std::chrono::milliseconds(5000)), "connect");
  UniqueFd server = Must(AcceptTcp(listener.get(), std::chrono::milliseconds(5000)), "accept");
  return {std::move(client), std::move(server)};
}

void WriteStream(int fd, const Bytes& stream) {
  for (size_t at = 0; at < stream.size();) {
    const size_t n = std::min(kWritePiece, stream.size() - at);
    const ssize_t w = ::write(fd, stream.data() + at, n);
    if (w <= 0) Die("write of the stream failed");
    at += static_cast<size_t>(w);
  }
}

// Reads as the incoming QEMU 7.2 does: a non-blocking fd, its 32 KiB buffer (IO_BUF_SIZE) per
// read, and a wait in poll (its main loop) when nothing is there.
uint64_t DrainStream(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) Die("O_NONBLOCK on the stream");
  std::vector<uint8_t> buf(kQemuReadPiece);
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLIN, 0};
      (void)::poll(&p, 1, -1);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("read of the stream failed");
    if (n == 0) return total;
    total += static_cast<uint64_t>(n);
  }
}

Sample RunTcp(const Bytes& stream) {
  auto [src, dst] = TcpPair();
  const double cpu0 = CpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t got = 0;
  std::thread reader([&, fd = dst.get()] { got = DrainStream(fd); });
  WriteStream(src.get(), stream);
  src.Reset();
  reader.join();
  const auto t1 = std::chrono::steady_clock::now();
  if (got != stream.size()) Die("tcp: the destination got a different byte count");
  return {std::chrono::duration<double>(t1 - t0).count(), CpuSeconds() - cpu0};
}

enum class SendPath { kZeroCopy, kUringCopy, kPosix };

std::unique_ptr<SendQueue> MakeQueue(int fd, SendPath path) {
  switch (path) {
    case SendPath::kZeroCopy:
      return Must(MakeSendQueue(fd, MaxRecordSize(), IoBackend::kAuto), "send queue");
    case SendPath::kUringCopy:
      return Must(UringSendQueue::Create(fd, MaxRecordSize()), "io_uring send queue");
    case SendPath::kPosix:
      return std::make_unique<SocketSendQueue>(fd, MaxRecordSize());
  }
  Die("unknown send path");
}

Sample RunSod(const Bytes& stream, uint64_t ram_bytes, size_t channels, bool follow_ram,
              SendPath path) {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), 7);
  SessionKeys keys = Must(SessionKeys::Create(secret), "keys");
  std::vector<std::pair<UniqueFd, UniqueFd>> links;
  std::vector<std::unique_ptr<SendQueue>> queues;
  std::vector<std::unique_ptr<ByteStream>> streams;
  std::vector<std::unique_ptr<RecordWriter>> writers;
  std::vector<std::unique_ptr<RecordReader>> readers;
  std::vector<RecordWriter*> w;
  std::vector<RecordReader*> r;
  for (uint32_t ch = 1; ch <= channels; ++ch) {
    links.push_back(TcpPair());
    // As a session tunes its data channels (SessionOptions::data_channel_buffer).
    Must(TuneForBulk(links.back().first.get(), true, kDefaultDataChannelBuffer), "tune");
    Must(TuneForBulk(links.back().second.get(), false, kDefaultDataChannelBuffer), "tune");
    queues.push_back(MakeQueue(links.back().first.get(), path));
    streams.push_back(Must(MakeStream(links.back().second.get(),
                                      path == SendPath::kPosix ? IoBackend::kPosix : IoBackend::kAuto),
                           "stream"));
    const RecordParams p{Suite::kAes256Gcm, ch, Direction::kInitiatorToResponder};
    writers.push_back(Must(RecordWriter::Create(*queues.back(), p, keys), "writer"));
    readers.push_back(Must(RecordReader::Create(*streams.back(), p, keys), "reader"));
    w.push_back(writers.back().get());
    r.push_back(readers.back().get());
  }
  auto [qemu_src, engine_src] = SocketPair();
  auto [engine_dst, qemu_dst] = SocketPair();
  RamStreamTracker src_ram(ram_bytes + kRamStreamRomSlack), dst_ram(ram_bytes + kRamStreamRomSlack);

  const double cpu0 = CpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  StreamPump pump(engine_src.get(), w);
  StreamSink sink(engine_dst.get(), r);
  if (follow_ram) {
    pump.set_observer([&](ByteSpan b) { src_ram.Feed(b); });
    sink.set_observer([&](ByteSpan b) { dst_ram.Feed(b); });
  }
  pump.Start();
  sink.Start([](const Status& s) { Die("sink: " + s.ToString()); });
  uint64_t got = 0;
  std::thread reader([&, fd = qemu_dst.get()] { got = DrainStream(fd); });
  WriteStream(qemu_src.get(), stream);
  qemu_src.Reset();  // QEMU closes its end when the stream is complete
  Must(pump.Wait(), "pump");
  Must(sink.Wait(), "sink");
  engine_dst.Reset();  // the destination engine closes QEMU's stream after the last byte
  reader.join();
  const auto t1 = std::chrono::steady_clock::now();
  const Sample s{std::chrono::duration<double>(t1 - t0).count(), CpuSeconds() - cpu0};
  if (got != stream.size()) Die("sod: the destination got a different byte count");
  if (follow_ram) {
    Must(src_ram.status(), "source RAM tracker");
    Must(dst_ram.status(), "destination RAM tracker");
    if (!src_ram.ram_complete() || !dst_ram.ram_complete() ||
        src_ram.pages_received() != ram_bytes / kPage ||
        dst_ram.pages_received() != ram_bytes / kPage)
      Die("the RAM trackers did not see every page");
  }
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int Main(int argc, char** argv) {
  uint64_t ram_mb = 256;
  int reps = 7;
  size_t channels = 2;
  std::vector<std::string> modes = {"tcp", "sod", "sod-ram"};
  SendPath path = SendPath::kZeroCopy;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--mb") {
      ram_mb = std::stoull(next());
    } else if (a == "--reps") {
      reps = std::stoi(next());
    } else if (a == "--channels") {
      channels = std::stoul(next());
    } else if (a == "--send") {
      const std::string v = next();
      if (v == "zc") {
        path = SendPath::kZeroCopy;
      } else if (v == "copy") {
        path = SendPath::kUringCopy;
      } else if (v == "posix") {
        path = SendPath::kPosix;
      } else {
        Die("--send takes zc, copy or posix");
      }
    } else if (a == "--modes") {
      modes.clear();
      std::stringstream ss(next());
      for (std::string m; std::getline(ss, m, ',');) modes.push_back(m);
    } else {
      Die("usage: pipeline_bench [--mb RAM_MIB] [--reps N] [--channels N] [--modes tcp,sod,sod-ram] "
          "[--send zc|copy|posix]");
    }
  }
  for (const std::string& m : modes)
    if (m != "tcp" && m != "sod" && m != "sod-ram") Die("unknown mode " + m);
  const uint64_t ram_bytes = ram_mb << 20;
  const Bytes stream = BuildStream(ram_bytes);
  std::printf("stream: %.1f MB (%llu MiB of RAM as PAGE records), %zu data channel(s), %d reps\n",
              stream.size() / 1e6, static_cast<unsigned long long>(ram_mb), channels, reps);

  std::map<std::string, std::vector<Sample>> samples;
  for (int rep = 0; rep < reps; ++rep) {
    // Rotate the order each repetition so no mode always runs first.
    for (size_t k = 0; k < modes.size(); ++k) {
      const std::string& m = modes[(k + rep) % modes.size()];
      samples[m].push_back(m == "tcp" ? RunTcp(stream)
                                      : RunSod(stream, ram_bytes, channels, m == "sod-ram", path));
    }
  }
  const double mb = stream.size() / 1e6;
  double tcp_cpu = 0;
  std::printf("%-8s %8s %10s %10s %8s\n", "mode", "MB/s", "CPU s/GB", "x tcp CPU", "cores");
  for (const std::string& m : modes) {
    std::vector<double> rate, cpu, cores;
    for (const Sample& s : samples[m]) {
      rate.push_back(mb / s.wall_s);
      cpu.push_back(s.cpu_s / (mb / 1000));
      cores.push_back(s.cpu_s / s.wall_s);
    }
    const double c = Median(cpu);
    if (m == "tcp") tcp_cpu = c;
    char ratio[16] = "-";
    if (tcp_cpu > 0) std::snprintf(ratio, sizeof(ratio), "%.2f", c / tcp_cpu);
    std::printf("%-8s %8.0f %10.3f %10s %8.2f\n", m.c_str(), Median(rate), c, ratio,
                Median(cores));
  }
  return 0;
}

}  // namespace
}  // namespace sod

int main(int argc, char** argv) { return sod::Main(argc, argv); }
