// Small file-system helpers shared by the daemon's state and the VM layer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

// Writes `text` to `path` atomically (path.tmp, fsync, rename), mode 0600.
Status WriteFileAtomically(const std::string& path, std::string_view text);
// Reads a whole small file (at most `max_bytes`): kNotFound, kIo, kTooLarge.
Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);
// mkdir -p with mode 0700 for every directory it creates; chmod 0700 on the last one.
Status MakePrivateDir(const std::string& dir);

}  // namespace sod
