// Little-endian byte codecs for wire messages.
//
// ByteWriter appends to a std::vector<uint8_t>. ByteReader walks a borrowed span and never reads
// past its end: every Read* returns false (and leaves the reader failed) instead of asserting, so
// decoders of peer bytes can turn a short or garbled input into a Status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sod {

using Bytes = std::vector<uint8_t>;
using ByteSpan = std::span<const uint8_t>;
using MutableByteSpan = std::span<uint8_t>;

inline void StoreLe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void StoreLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void StoreLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint16_t LoadLe16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}
inline uint32_t LoadLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class ByteWriter {
 public:
  explicit ByteWriter(Bytes& out) : out_(out) {}

  void U8(uint8_t v) { out_.push_back(v); }
  void U16(uint16_t v) {
    Grow(2, [&](uint8_t* p) { StoreLe16(p, v); });
  }
  void U32(uint32_t v) {
    Grow(4, [&](uint8_t* p) { StoreLe32(p, v); });
  }
  void U64(uint64_t v) {
    Grow(8, [&](uint8_t* p) { StoreLe64(p, v); });
  }
  void Raw(ByteSpan b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void Raw(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  // u16 length prefix then bytes. Precondition: s.size() <= 65535.
  void Str16(std::string_view s) {
    U16(static_cast<uint16_t>(s.size()));
    Raw(s);
  }
  // u32 length prefix then bytes.
  void Blob32(ByteSpan b) {
    U32(static_cast<uint32_t>(b.size()));
    Raw(b);
  }

 private:
  template <typename F>
  void Grow(size_t n, F store) {
    size_t at = out_.size();
    out_.resize(at + n);
    store(out_.data() + at);
  }
  Bytes& out_;
};

class ByteReader {
 public:
  explicit ByteReader(ByteSpan in) : in_(in) {}

  bool U8(uint8_t& v) {
    return Take(1, [&](const uint8_t* p) { v = p[0]; });
  }
  bool U16(uint16_t& v) {
    return Take(2, [&](const uint8_t* p) { v = LoadLe16(p); });
  }
  bool U32(uint32_t& v) {
    return Take(4, [&](const uint8_t* p) { v = LoadLe32(p); });
  }
  bool U64(uint64_t& v) {
    return Take(8, [&](const uint8_t* p) { v = LoadLe64(p); });
  }
  // Borrows n bytes (valid as long as the input span).
  bool Raw(size_t n, ByteSpan& out) {
    return Take(n, [&](const uint8_t* p) { out = ByteSpan(p, n); });
  }
  bool Raw(uint8_t* dst, size_t n) {
    return Take(n, [&](const uint8_t* p) { std::memcpy(dst, p, n); });
  }
  // u16 length then bytes; refuses lengths above max_len before copying.
  bool Str16(std::string& s, size_t max_len) {
    uint16_t n = 0;
    if (!U16(n)) return false;
    if (n > max_len) return Fail();
    return Take(n, [&](const uint8_t* p) { s.assign(reinterpret_cast<const char*>(p), n); });
  }
  // u32 length then bytes (borrowed); refuses lengths above max_len.
  bool Blob32(ByteSpan& out, size_t max_len) {
    uint32_t n = 0;
    if (!U32(n)) return false;
    if (n > max_len) return Fail();
    return Raw(n, out);
  }

  size_t remaining() const { return failed_ ? 0 : in_.size() - pos_; }
  bool failed() const { return failed_; }
  // True when nothing failed and every byte was consumed (no trailing garbage).
  bool done() const { return !failed_ && pos_ == in_.size(); }

 private:
  bool Fail() {
    failed_ = true;
    return false;
  }
  template <typename F>
  bool Take(size_t n, F load) {
    if (failed_ || in_.size() - pos_ < n) return Fail();
    load(in_.data() + pos_);
    pos_ += n;
    return true;
  }
  ByteSpan in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

inline std::string ToHex(ByteSpan b) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (uint8_t c : b) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 15]);
  }
  return s;
}

}  // namespace sod
