// Loopback TCP throughput of the data-channel SendQueues: posix (SocketSendQueue) against
// io_uring (UringSendQueue, plain / async / zero-copy sends).
//
// One thread sends 64 KiB buffers through a SendQueue (Acquire, optional work, Commit); a receiver
// thread drains the other end with ByteStream::ReadSome (same backend) and counts the bytes.
// The "_copy" variants memcpy 64 KiB from a 16 MiB source into each acquired buffer, standing in
// for sealing a record: they show whether asynchronous sends overlap the sender's CPU work.
//
//   transport_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "migrate/socket.h"
#include "migrate/uring.h"

namespace sod {
namespace {

constexpr size_t kBuffer = 64 * 1024;
constexpr size_t kSource = 16 << 20;

struct Config {
  IoBackend backend;
  UringSendQueueOptions options;
  bool copy_work;
  bool tune = true;  // TuneForBulk on both ends (else kernel defaults and autotuning)
};

void SendBench(benchmark::State& state, Config config) {
  if (config.backend == IoBackend::kUring && !UringAvailable()) {
    state.SkipWithError("io_uring not available");
    return;
  }
  Result<UniqueFd> listener = ListenTcp("127.0.0.1", 0, 1);
  if (!listener.ok()) return state.SkipWithError(listener.status().ToString().c_str());
  Result<UniqueFd> client =
      ConnectTcp("127.0.0.1", *LocalPort(listener->get()), std::chrono::milliseconds(5000));
  if (!client.ok()) return state.SkipWithError(client.status().ToString().c_str());
  Result<UniqueFd> server = AcceptTcp(listener->get(), std::chrono::milliseconds(5000));
  if (!server.ok()) return state.SkipWithError(server.status().ToString().c_str());
  for (int fd : {client->get(), server->get()}) {
    if (!config.tune) break;
    if (Status st = TuneForBulk(fd); !st.ok()) return state.SkipWithError(st.ToString().c_str());
  }

  std::unique_ptr<SendQueue> queue;
  if (config.backend == IoBackend::kUring) {
    Result<std::unique_ptr<UringSendQueue>> q =
        UringSendQueue::Create(client->get(), kBuffer, config.options);
    if (!q.ok()) return state.SkipWithError(q.status().ToString().c_str());
    queue = std::move(*q);
  } else {
    queue = std::make_unique<SocketSendQueue>(client->get(), kBuffer);
  }
  Result<std::unique_ptr<ByteStream>> rx = MakeStream(server->get(), config.backend);
  if (!rx.ok()) return state.SkipWithError(rx.status().ToString().c_str());

  uint64_t received = 0;
  std::thread receiver([&] {
    Bytes buf(256 * 1024);
    for (;;) {
      Result<size_t> n = (*rx)->ReadSome(buf);
      if (!n.ok()) return;
      received += *n;
    }
  });

  Bytes source(kSource);
  for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<uint8_t>(i * 131);
  size_t src_off = 0;
  uint64_t sent = 0;
  Status st;
  for (auto _ : state) {
    Result<MutableByteSpan> b = queue->Acquire(kBuffer);
    if (!b.ok()) {
      st = b.status();
      break;
    }
    if (config.copy_work) {
      std::memcpy(b->data(), source.data() + src_off, kBuffer);
      src_off = (src_off + kBuffer) % kSource;
    }
    benchmark::DoNotOptimize(b->data());
    st = queue->Commit(kBuffer);
    if (!st.ok()) break;
    sent += kBuffer;
  }
  if (st.ok()) st = queue->Flush();
  shutdown(client->get(), SHUT_WR);
  receiver.join();
  if (!st.ok()) return state.SkipWithError(st.ToString().c_str());
  if (received != sent) return state.SkipWithError("receiver lost bytes");
  state.SetBytesProcessed(static_cast<int64_t>(sent));
  if (auto* u = dynamic_cast<UringSendQueue*>(queue.get())) {
    const UringSendQueueStats& s = u->stats();
    state.counters["sends/chain"] = s.chains ? static_cast<double>(s.sends) / s.chains : 0;
    state.counters["waits/buf"] =
        sent ? static_cast<double>(s.waits) / static_cast<double>(sent / kBuffer) : 0;
  }
}

const UringSendQueueOptions kPlain{.buffers = 8, .async_sends = false, .zero_copy = false};
const UringSendQueueOptions kAsync{.buffers = 8, .async_sends = true, .zero_copy = false};
const UringSendQueueOptions kZeroCopy{.buffers = 8, .async_sends = false, .zero_copy = true};

#define SOD_TRANSPORT_BENCH(name, ...) \
  BENCHMARK_CAPTURE(SendBench, name, Config{__VA_ARGS__})->UseRealTime()->MinTime(0.5)

SOD_TRANSPORT_BENCH(posix, IoBackend::kPosix, {}, false);
SOD_TRANSPORT_BENCH(uring, IoBackend::kUring, kPlain, false);
SOD_TRANSPORT_BENCH(uring_async, IoBackend::kUring, kAsync, false);
SOD_TRANSPORT_BENCH(uring_zerocopy, IoBackend::kUring, kZeroCopy, false);
SOD_TRANSPORT_BENCH(posix_untuned, IoBackend::kPosix, {}, false, false);
SOD_TRANSPORT_BENCH(uring_untuned, IoBackend::kUring, kPlain, false, false);
SOD_TRANSPORT_BENCH(posix_copy, IoBackend::kPosix, {}, true);
SOD_TRANSPORT_BENCH(uring_copy, IoBackend::kUring, kPlain, true);
SOD_TRANSPORT_BENCH(uring_async_copy, IoBackend::kUring, kAsync, true);
SOD_TRANSPORT_BENCH(uring_zerocopy_copy, IoBackend::kUring, kZeroCopy, true);

}  // namespace
}  // namespace sod

BENCHMARK_MAIN();
