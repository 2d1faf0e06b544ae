// Driver for fuzz targets without libFuzzer (see fuzz_target.h).
//   fuzz_x                      deterministic mutation run over the seeds (default 20000 inputs)
//   fuzz_x --iterations N       same, N inputs
//   fuzz_x --write-seeds DIR    write the seeds as corpus files for a libFuzzer run
//   fuzz_x FILE...              run the given inputs (e.g. a crash file from libFuzzer)
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>

#include "fuzz_target.h"

namespace {

sod::Bytes Mutate(const sod::Bytes& seed, std::mt19937_64& rng) {
  sod::Bytes b = seed;
  int ops = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < ops; ++i) {
    switch (rng() % 6) {
      case 0:  // flip a bit
        if (!b.empty()) b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // set a byte to an interesting value
        if (!b.empty()) {
          const uint8_t v[] = {0, 1, 0x7f, 0x80, 0xff};
          b[rng() % b.size()] = v[rng() % 5];
        }
        break;
      case 2:  // truncate
        if (!b.empty()) b.resize(rng() % b.size());
        break;
      case 3:  // append random bytes
        for (int n = static_cast<int>(rng() % 16); n > 0; --n) b.push_back(uint8_t(rng()));
        break;
      case 4:  // insert a byte
        b.insert(b.begin() + static_cast<ptrdiff_t>(b.empty() ? 0 : rng() % b.size()),
                 uint8_t(rng()));
        break;
      case 5:  // duplicate a slice
        if (b.size() > 2) {
          size_t at = rng() % b.size(), len = 1 + rng() % (b.size() - at);
          sod::Bytes slice(b.begin() + static_cast<ptrdiff_t>(at),
                           b.begin() + static_cast<ptrdiff_t>(at + len));
          b.insert(b.end(), slice.begin(), slice.end());
        }
        break;
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<sod::Bytes> seeds = FuzzSeeds();
  long iterations = 20000;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) {
      iterations = std::stol(argv[++i]);
    } else if (a == "--write-seeds" && i + 1 < argc) {
      std::filesystem::path dir = argv[++i];
      std::filesystem::create_directories(dir);
      for (size_t s = 0; s < seeds.size(); ++s) {
        std::ofstream f(dir / ("seed-" + std::to_string(s)), std::ios::binary);
        f.write(reinterpret_cast<const char*>(seeds[s].data()),
                static_cast<std::streamsize>(seeds[s].size()));
      }
      std::cout << "wrote " << seeds.size() << " seeds to " << dir << "\n";
      return 0;
    } else {
      files.push_back(a);
    }
  }
  if (!files.empty()) {
    for (const std::string& path : files) {
      std::ifstream f(path, std::ios::binary);
      sod::Bytes b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(b.data(), b.size());
    }
    std::cout << "ran " << files.size() << " inputs\n";
    return 0;
  }
  std::mt19937_64 rng(0x50d);
  for (const sod::Bytes& s : seeds) LLVMFuzzerTestOneInput(s.data(), s.size());
  LLVMFuzzerTestOneInput(nullptr, 0);
  for (long i = 0; i < iterations; ++i) {
    sod::Bytes in = Mutate(seeds[rng() % seeds.size()], rng);
    LLVMFuzzerTestOneInput(in.data(), in.size());
  }
  std::cout << "ran " << iterations + static_cast<long>(seeds.size()) + 1
            << " inputs without a failure\n";
  return 0;
}
