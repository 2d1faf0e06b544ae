// Moving QEMU's migration stream through the record layer (migrate/PROTOCOL.md, "Stream").
//
// Source: QEMU writes its migration stream into one end of a socketpair (`migrate fd:`); the
// StreamPump reads the other end and sends it as kStream chunks over all data channels, one thread
// per channel. A thread takes the next piece of the stream under a lock (so every piece gets the
// next offset), then seals and sends it outside the lock, so sealing runs on several cores.
//
// Destination: the StreamSink runs one thread per data channel; each verified chunk is written to
// the destination QEMU's socket strictly in offset order (a thread holding a chunk waits for its
// turn), so QEMU sees exactly the source's byte stream, and only bytes whose record verified.
// Offsets on one channel must increase; a gap, an overlap or a non-stream record ends the sink.
#pragma once

#include <atomic>
#include <condition_variable>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "base/status.h"
#include "migrate/record_io.h"

namespace sod {

class StreamPump {
 public:
  // `stream_fd`: the engine's end of the socketpair (borrowed; must outlive the pump). Writers are
  // borrowed and used only by the pump's threads until Wait returns.
  StreamPump(int stream_fd, std::vector<RecordWriter*> writers, size_t chunk_bytes = 256 * 1024);
  ~StreamPump();  // stops and joins
  StreamPump(const StreamPump&) = delete;
  StreamPump& operator=(const StreamPump&) = delete;

  // Called with every piece of the stream, in stream order, before it is sent (one call at a
  // time, on the pump's threads). Set before Start.
  void set_observer(std::function<void(ByteSpan)> f) { observer_ = std::move(f); }
  void Start();
  // Blocks until the stream ended and every channel sent its end record, or a channel failed
  // (its error), or Stop was called (kAborted).
  Status Wait();
  // Makes the threads give up soon (without ending their channels properly).
  void Stop();
  // QEMU reported the migration completed: everything it will write is in the socket already,
  // so the stream ends where the socket runs dry (without waiting for QEMU to close its end).
  void SourceCompleted();

  // The pre-copy round that new records are tagged with.
  void set_round(uint32_t round) { round_.store(round, std::memory_order_relaxed); }
  uint64_t stream_bytes() const { return offset_.load(std::memory_order_relaxed); }
  // When the end of QEMU's stream was read (valid after Wait returned OK).
  std::chrono::steady_clock::time_point eof_time() const {
    std::lock_guard<std::mutex> l(read_mu_);
    return eof_time_;
  }
  bool finished() const { return done_threads_.load() == threads_.size() && !threads_.empty(); }
  // The first error of any thread (OK while none failed).
  Status error() const;

 private:
  void Run(RecordWriter* w);
  // Reads the next piece into buf (at least 1 byte, as much as is ready). 0 = end of stream.
  Result<size_t> ReadPiece(std::vector<uint8_t>& buf, uint64_t& offset);
  void Fail(const Status& s);
  void MarkEof();  // with read_mu_ held: QEMU's stream ended here

  int fd_;
  std::vector<RecordWriter*> writers_;
  size_t chunk_bytes_;
  std::function<void(ByteSpan)> observer_;
  std::vector<std::thread> threads_;
  mutable std::mutex read_mu_;  // one reader of the socket at a time; guards eof_, eof_time_
  bool eof_ = false;
  std::chrono::steady_clock::time_point eof_time_{};
  std::atomic<uint64_t> offset_{0};
  std::atomic<uint32_t> round_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> source_completed_{false};
  int wake_fd_ = -1;  // eventfd: wakes a reader out of poll when the source completed
  std::atomic<size_t> done_threads_{0};
  mutable std::mutex err_mu_;
  Status error_;
};

class StreamSink {
 public:
  // `qemu_fd`: the engine's end of the destination QEMU's socketpair (borrowed). Readers are
  // borrowed and used only by the sink's threads until Wait returns. A thread waits at most
  // `gap_timeout` for its turn before the sink fails with kSequence (a gap that never fills).
  StreamSink(int qemu_fd, std::vector<RecordReader*> readers,
             std::chrono::milliseconds gap_timeout = std::chrono::seconds(60));
  ~StreamSink();
  StreamSink(const StreamSink&) = delete;
  StreamSink& operator=(const StreamSink&) = delete;

  // Called with every verified piece of the stream, in stream order, as it goes to QEMU (one call
  // at a time, on the sink's threads). Set before Start.
  void set_observer(std::function<void(ByteSpan)> f) { observer_ = std::move(f); }
  // `on_error` is called once, from a sink thread, with the first error (e.g. to tell the peer).
  void Start(std::function<void(const Status&)> on_error);
  // Blocks until every channel ended (OK) or the sink failed.
  Status Wait();
  // The threads end at their next step; what fails after Stop (the owner tearing the channels or
  // QEMU's socket down) is neither recorded nor reported.
  void Stop();
  uint64_t stream_bytes() const;
  Status error() const;

 private:
  void Run(RecordReader* r);
  void Fail(const Status& s);

  int fd_;
  std::vector<RecordReader*> readers_;
  std::chrono::milliseconds gap_timeout_;
  std::vector<std::thread> threads_;
  std::function<void(const Status&)> on_error_;
  std::function<void(ByteSpan)> observer_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_offset_ = 0;  // guarded by mu_
  size_t ended_ = 0;          // channels that reached their end record
  bool writing_ = false;      // a thread is writing its chunk to QEMU (it holds the turn)
  bool stop_ = false;
  Status error_;
};

}  // namespace sod
