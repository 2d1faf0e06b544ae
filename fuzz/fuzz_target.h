// Shared shape of sod's fuzz targets. Each target defines LLVMFuzzerTestOneInput and FuzzSeeds
// (valid encodings to start from). Under clang with -DSOD_FUZZ=ON they link against libFuzzer;
// otherwise they link standalone_main.cc, which runs a bounded, deterministic mutation loop over
// the seeds (part of the normal test suite) or writes the seeds as a corpus (--write-seeds DIR).
//
// A target must never crash, leak or trip a sanitizer on any input, and checks properties that
// must hold for every input (e.g. decode(encode(decode(x))) == decode(x)); a broken property
// calls FuzzCheckFailed, which aborts so that both drivers report it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "base/bytes.h"

std::vector<sod::Bytes> FuzzSeeds();

[[noreturn]] inline void FuzzCheckFailed(const char* what) {
  std::fprintf(stderr, "fuzz property violated: %s\n", what);
  std::abort();
}
#define FUZZ_CHECK(cond)                 \
  do {                                   \
    if (!(cond)) FuzzCheckFailed(#cond); \
  } while (0)

// A seed for targets whose first input byte selects the decoder.
inline sod::Bytes TaggedSeed(uint8_t selector, const sod::Bytes& body) {
  sod::Bytes b(1 + body.size());
  b[0] = selector;
  std::copy(body.begin(), body.end(), b.begin() + 1);
  return b;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
