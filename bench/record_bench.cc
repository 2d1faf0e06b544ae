// Record-layer throughput, single core: sealing and opening 64 KiB records in both suites, next
// to the raw primitives on the same machine (memcpy, AES-256-GCM, HMAC-SHA256), so the cost of
// framing and transcript is visible as the gap between "record" and "raw" rows.
//
//   scripts/bench-record.sh   (builds, then runs this with repetitions and reports medians)
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>
#include <numeric>

#include "migrate/record_io.h"

namespace sod {
namespace {

constexpr size_t kRecord = 64 * 1024;

SessionKeys Keys() {
  Bytes secret(32);
  std::iota(secret.begin(), secret.end(), 0);
  return std::move(SessionKeys::Create(secret)).value();
}

// Reuses one buffer; the bytes go nowhere.
class DiscardQueue final : public SendQueue {
 public:
  DiscardQueue() : buf_(MaxRecordSize()) {}
  Result<MutableByteSpan> Acquire(size_t n) override { return MutableByteSpan(buf_.data(), n); }
  Status Commit(size_t) override { return Status::Ok(); }
  Status Flush() override { return Status::Ok(); }
  size_t max_buffer() const override { return buf_.size(); }
  Bytes buf_;
};

// Serves the same sealed records over and over (as recv() would copy them into the reader).
class LoopStream final : public ByteStream {
 public:
  explicit LoopStream(Bytes wire) : wire_(std::move(wire)) {}
  Status WriteAll(ByteSpan) override { return Status::Ok(); }
  Result<size_t> ReadSome(MutableByteSpan buf) override {
    size_t n = std::min(buf.size(), wire_.size() - pos_);
    std::memcpy(buf.data(), wire_.data() + pos_, n);
    pos_ = (pos_ + n) % wire_.size();
    return n;
  }
  Status CloseWrite() override { return Status::Ok(); }

 private:
  Bytes wire_;
  size_t pos_ = 0;
};

void BM_RawMemcpy(benchmark::State& state) {
  Bytes src(kRecord, 1), dst(kRecord);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), kRecord);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kRecord);
}
BENCHMARK(BM_RawMemcpy);

void BM_RawAes256Gcm(benchmark::State& state) {
  Bytes key(32, 7), iv(12, 9), src(kRecord, 1), dst(kRecord), tag(16);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
  uint64_t seq = 0;
  for (auto _ : state) {
    std::memcpy(iv.data() + 4, &++seq, 8);
    int n = 0;
    EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, iv.data());
    EVP_EncryptUpdate(ctx, dst.data(), &n, src.data(), static_cast<int>(kRecord));
    EVP_EncryptFinal_ex(ctx, dst.data() + n, &n);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag.data());
    benchmark::DoNotOptimize(tag.data());
  }
  EVP_CIPHER_CTX_free(ctx);
  state.SetBytesProcessed(state.iterations() * kRecord);
}
BENCHMARK(BM_RawAes256Gcm);

void BM_RawHmacSha256(benchmark::State& state) {
  Bytes key(32, 7), src(kRecord, 1), out(32);
  for (auto _ : state) {
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), 32, src.data(), kRecord, out.data(), &len);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * kRecord);
}
BENCHMARK(BM_RawHmacSha256);

Suite SuiteArg(const benchmark::State& state) {
  return state.range(0) == 0 ? Suite::kAes256Gcm : Suite::kHmacSha256;
}

void BM_RecordSeal(benchmark::State& state) {
  SessionKeys keys = Keys();
  DiscardQueue q;
  auto w = std::move(RecordWriter::Create(q, {SuiteArg(state), 1}, keys)).value();
  Bytes data(kRecord, 3);
  uint64_t offset = 0;
  for (auto _ : state) {
    if (!w->WriteChunk(RecordType::kStream, 1, 0, offset, data).ok()) state.SkipWithError("seal");
    offset += kRecord;
  }
  state.SetBytesProcessed(state.iterations() * kRecord);
  state.SetLabel(std::string(SuiteName(SuiteArg(state))));
}
BENCHMARK(BM_RecordSeal)->Arg(0)->Arg(1);

// Opening includes the copy of each record into the reader's buffer, as recv() would do.
void BM_RecordOpen(benchmark::State& state) {
  SessionKeys keys = Keys();
  constexpr int kRecords = 64;
  struct Capture final : SendQueue {
    Bytes all, pending;
    Result<MutableByteSpan> Acquire(size_t n) override {
      pending.resize(n);
      return MutableByteSpan(pending);
    }
    Status Commit(size_t used) override {
      all.insert(all.end(), pending.begin(), pending.begin() + static_cast<ptrdiff_t>(used));
      return Status::Ok();
    }
    Status Flush() override { return Status::Ok(); }
    size_t max_buffer() const override { return MaxRecordSize(); }
  } q;
  RecordParams params{SuiteArg(state), 1};
  auto w = std::move(RecordWriter::Create(q, params, keys)).value();
  Bytes data(kRecord, 3);
  for (int i = 0; i < kRecords; ++i)
    (void)w->WriteChunk(RecordType::kStream, 1, 0, uint64_t(i) * kRecord, data);
  LoopStream in(std::move(q.all));
  auto r = std::move(RecordReader::Create(in, params, keys)).value();
  int i = 0;
  for (auto _ : state) {
    auto rec = r->Next();
    if (!rec.ok()) state.SkipWithError(rec.status().ToString().c_str());
    if (++i == kRecords) {
      i = 0;
      r->SetNextSequenceForTesting(0);
    }
  }
  state.SetBytesProcessed(state.iterations() * kRecord);
  state.SetLabel(std::string(SuiteName(SuiteArg(state))));
}
BENCHMARK(BM_RecordOpen)->Arg(0)->Arg(1);

// Seal then open the same record: one full trip through the record layer per iteration.
void BM_RecordSealOpen(benchmark::State& state) {
  SessionKeys keys = Keys();
  RecordParams params{SuiteArg(state), 1};
  struct Ring final : SendQueue {  // hands the last sealed record to the reader
    Bytes buf = Bytes(MaxRecordSize());
    size_t used = 0;
    Result<MutableByteSpan> Acquire(size_t n) override { return MutableByteSpan(buf.data(), n); }
    Status Commit(size_t u) override {
      used = u;
      return Status::Ok();
    }
    Status Flush() override { return Status::Ok(); }
    size_t max_buffer() const override { return buf.size(); }
  } q;
  struct FromRing final : ByteStream {
    Ring* ring;
    size_t pos = 0;
    Status WriteAll(ByteSpan) override { return Status::Ok(); }
    Result<size_t> ReadSome(MutableByteSpan out) override {
      size_t n = std::min(out.size(), ring->used - pos);
      std::memcpy(out.data(), ring->buf.data() + pos, n);
      pos += n;
      if (pos == ring->used) pos = 0;
      return n;
    }
    Status CloseWrite() override { return Status::Ok(); }
  } in;
  in.ring = &q;
  auto w = std::move(RecordWriter::Create(q, params, keys)).value();
  auto r = std::move(RecordReader::Create(in, params, keys, 0)).value();
  Bytes data(kRecord, 3);
  uint64_t offset = 0;
  for (auto _ : state) {
    if (!w->WriteChunk(RecordType::kStream, 1, 0, offset, data).ok()) state.SkipWithError("seal");
    auto rec = r->Next();
    if (!rec.ok()) state.SkipWithError(rec.status().ToString().c_str());
    offset += kRecord;
  }
  state.SetBytesProcessed(state.iterations() * kRecord);
  state.SetLabel(std::string(SuiteName(SuiteArg(state))));
}
BENCHMARK(BM_RecordSealOpen)->Arg(0)->Arg(1);

}  // namespace
}  // namespace sod

BENCHMARK_MAIN();
