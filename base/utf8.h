// UTF-8 validation for text that arrives from peers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sod {

// Well-formed UTF-8: no overlong forms, surrogates, code points above U+10FFFF or stray bytes.
// With allow_controls = false, C0 controls and DEL are refused too (printable text).
inline bool IsWellFormedUtf8(std::string_view s, bool allow_controls = true) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      if (!allow_controls && (c < 0x20 || c == 0x7f)) return false;
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp;
    uint32_t min;
    if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (s.size() - i - 1 < n) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

inline bool IsPrintableUtf8(std::string_view s) { return IsWellFormedUtf8(s, false); }

}  // namespace sod
