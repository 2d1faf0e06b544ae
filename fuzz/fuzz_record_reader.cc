// Fuzzes the whole receive path: arbitrary bytes arrive on a data channel and go through
// RecordReader (header checks, length limits, buffering, AEAD/HMAC verification, transcript).
// First byte picks the suite and the read piece size. Seeds are valid sealed streams, so mutations
// exercise every check. Properties: the reader never delivers a record that was not sealed with
// the session keys (each delivered record equals one the seed writer produced), and once it
// fails it stays failed.
#include <algorithm>
#include <numeric>

#include "fuzz_target.h"
#include "migrate/record_io.h"

namespace {

const sod::SessionKeys& Keys() {
  static const sod::SessionKeys* keys = [] {
    sod::Bytes secret(32);
    std::iota(secret.begin(), secret.end(), 0);
    return new sod::SessionKeys(std::move(sod::SessionKeys::Create(secret)).value());
  }();
  return *keys;
}

class Capture final : public sod::SendQueue {
 public:
  sod::Result<sod::MutableByteSpan> Acquire(size_t n) override {
    pending_.resize(n);
    return sod::MutableByteSpan(pending_);
  }
  sod::Status Commit(size_t used) override {
    all.insert(all.end(), pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(used));
    return sod::Status::Ok();
  }
  sod::Status Flush() override { return sod::Status::Ok(); }
  size_t max_buffer() const override { return sod::MaxRecordSize(); }
  sod::Bytes all;

 private:
  sod::Bytes pending_;
};

class Input final : public sod::ByteStream {
 public:
  Input(sod::ByteSpan in, size_t piece) : in_(in), piece_(piece) {}
  sod::Status WriteAll(sod::ByteSpan) override { return sod::Status::Ok(); }
  sod::Result<size_t> ReadSome(sod::MutableByteSpan buf) override {
    if (pos_ == in_.size()) return sod::Error(sod::Errc::kClosed, "end of input");
    size_t n = std::min({buf.size(), in_.size() - pos_, piece_});
    std::copy_n(in_.begin() + static_cast<ptrdiff_t>(pos_), n, buf.begin());
    pos_ += n;
    return n;
  }
  sod::Status CloseWrite() override { return sod::Status::Ok(); }

 private:
  sod::ByteSpan in_;
  size_t pos_ = 0;
  size_t piece_;
};

sod::Suite SuiteOf(uint8_t b) { return (b & 1) ? sod::Suite::kHmacSha256 : sod::Suite::kAes256Gcm; }

// The payload the seed writer puts in record i: a recognizable pattern, so a delivered payload
// can be checked against what was sealed.
sod::Bytes SeedPayload(uint64_t i) { return sod::Bytes(8 + (i * 13) % 200, uint8_t(0x30 + i)); }

}  // namespace

std::vector<sod::Bytes> FuzzSeeds() {
  std::vector<sod::Bytes> seeds;
  for (uint8_t mode : {0, 1, 2, 3}) {
    Capture q;
    auto w = std::move(sod::RecordWriter::Create(q, {SuiteOf(mode), 1}, Keys())).value();
    for (uint64_t i = 0; i < 5; ++i) (void)w->Write(sod::RecordType::kControl, 0, SeedPayload(i));
    (void)w->Finish();
    seeds.push_back(TaggedSeed(mode, q.all));
  }
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t pieces[] = {SIZE_MAX, 1, 5, 4096};
  Input in(sod::ByteSpan(data + 1, size - 1), pieces[(data[0] >> 1) % 4]);
  auto r = sod::RecordReader::Create(in, {SuiteOf(data[0]), 1}, Keys(), 0);
  FUZZ_CHECK(r.ok());
  for (int i = 0; i < 64; ++i) {
    auto rec = (*r)->Next();
    if (!rec.ok()) {
      auto again = (*r)->Next();
      FUZZ_CHECK(!again.ok() && again.status().code() == rec.status().code());
      break;
    }
    if (rec->header.type == sod::RecordType::kControl) {
      sod::Bytes expect = SeedPayload(rec->header.sequence);
      FUZZ_CHECK(rec->payload.size() == expect.size() &&
                 std::equal(expect.begin(), expect.end(), rec->payload.begin()));
    } else {
      FUZZ_CHECK(rec->header.type == sod::RecordType::kChannelEnd);
    }
  }
  return 0;
}
