// Random bytes from OpenSSL's CSPRNG (nonces, ids). Thread-safe.
#pragma once

#include <openssl/rand.h>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

// Fills `out`; kCrypto when the generator fails (never returns predictable bytes).
inline Status RandomFill(MutableByteSpan out) {
  if (!out.empty() && RAND_bytes(out.data(), static_cast<int>(out.size())) != 1)
    return Error(Errc::kCrypto, "RAND_bytes failed");
  return Status::Ok();
}

inline Result<Bytes> RandomBytes(size_t n) {
  Bytes b(n);
  SOD_RETURN_IF_ERROR(RandomFill(b));
  return b;
}

}  // namespace sod
