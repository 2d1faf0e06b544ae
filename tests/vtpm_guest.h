// What the test guest's vTPM helper (tools/guest/sod-tpm.c) prints and what an unbroken TPM makes
// it print: tests that migrate a guest with its vTPM compare every console line with these.
// Header-only, tests only.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <map>
#include <regex>
#include <sstream>
#include <string>

#include "base/bytes.h"
#include "tests/test_guest.h"

namespace sod::testing::vtpm_guest {

inline std::array<uint8_t, 32> Sha256(ByteSpan a, ByteSpan b) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_MD_CTX* c = EVP_MD_CTX_new();
  EVP_DigestInit_ex(c, EVP_sha256(), nullptr);
  EVP_DigestUpdate(c, a.data(), a.size());
  EVP_DigestUpdate(c, b.data(), b.size());
  EVP_DigestFinal_ex(c, out.data(), &len);
  EVP_MD_CTX_free(c);
  return out;
}

inline std::string Repeat(const char* two_hex, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += two_hex;
  return s;
}
// What the guest extends into PCR 16: once at boot (sod.tpm_extend), then in every loop round.
inline const std::string kExtendHex = Repeat("ab", 32);
inline const std::string kLoopHex = Repeat("5d", 32);

// Kernel parameters: wait for /dev/tpm0, extend once, then every 300 ms extend PCR 16 and
// increment the NV counter, printing "SOD-TPMLOOP <seq> pcr16=<hex> nv=<n>".
inline std::string TpmLoopAppend() {
  return "sod.tpm=1 sod.tpm_extend=" + kExtendHex + " sod.tpm_ms=300 sod.tpm_digest=" + kLoopHex;
}

// PCR 16 after the boot extension and `seq` loop extensions.
inline std::string ExpectedPcr(uint64_t seq) {
  std::array<uint8_t, 32> v{}, ext, loop;
  ext.fill(0xab);
  loop.fill(0x5d);
  v = Sha256(v, ext);
  for (uint64_t i = 0; i < seq; ++i) v = Sha256(v, loop);
  return ToHex(v);
}

struct LoopLine {
  std::string pcr;
  uint64_t nv;
};

// "SOD-TPMLOOP <seq> pcr16=<hex> nv=<n>" lines of a console, by sequence number.
inline std::map<uint64_t, LoopLine> LoopLines(const std::string& serial_log) {
  static const std::regex re("^SOD-TPMLOOP ([0-9]+) pcr16=([0-9a-f]{64}) nv=([0-9]+)\\r?$");
  std::map<uint64_t, LoopLine> out;
  std::istringstream text(ReadWholeFile(serial_log));
  for (std::string line; std::getline(text, line);) {
    std::smatch m;
    if (std::regex_match(line, m, re)) out[std::stoull(m[1])] = LoopLine{m[2], std::stoull(m[3])};
  }
  return out;
}

// Empty when every line equals an unbroken TPM's (PCR chain and NV = seq); else the first bad one.
inline std::string CheckLoopLines(const std::map<uint64_t, LoopLine>& lines) {
  for (const auto& [seq, l] : lines) {
    if (l.pcr != ExpectedPcr(seq)) return "seq " + std::to_string(seq) + ": pcr16=" + l.pcr;
    if (l.nv != seq) return "seq " + std::to_string(seq) + ": nv=" + std::to_string(l.nv);
  }
  return "";
}

}  // namespace sod::testing::vtpm_guest
