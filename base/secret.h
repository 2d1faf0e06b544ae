// SecretBytes: key material that is wiped (OPENSSL_cleanse) when it is destroyed or reassigned.
// Movable, not copyable, so a key has one owner and one place where it dies.
#pragma once

#include <openssl/crypto.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "base/bytes.h"

namespace sod {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t n) : b_(n) {}
  explicit SecretBytes(ByteSpan from) : b_(from.begin(), from.end()) {}
  ~SecretBytes() { Wipe(); }
  SecretBytes(SecretBytes&& o) noexcept : b_(std::move(o.b_)) { o.b_.clear(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) {
      Wipe();
      b_ = std::move(o.b_);
      o.b_.clear();
    }
    return *this;
  }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  uint8_t* data() { return b_.data(); }
  const uint8_t* data() const { return b_.data(); }
  size_t size() const { return b_.size(); }
  bool empty() const { return b_.empty(); }
  ByteSpan span() const { return ByteSpan(b_.data(), b_.size()); }
  MutableByteSpan mutable_span() { return MutableByteSpan(b_.data(), b_.size()); }

 private:
  void Wipe() {
    if (!b_.empty()) OPENSSL_cleanse(b_.data(), b_.size());
  }
  std::vector<uint8_t> b_;
};

}  // namespace sod
