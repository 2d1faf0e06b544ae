// Small file-system helpers shared by the daemon's state and the VM layer.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod {

// Writes `text` to `path` atomically (path.tmp, fsync, rename), mode 0600.
Status WriteFileAtomically(const std::string& path, std::string_view text);
// Reads a whole small file (at most `max_bytes`): kNotFound, kIo, kTooLarge.
Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);
// The size of `path` in bytes, 0 when it cannot be read.
off_t FileSize(const std::string& path);
// For error messages: the last `max_lines` non-empty lines written to the log at `path` after
// byte `from` (of its last 4 KiB at most), joined with " | "; "" when there are none.
std::string LogTail(const std::string& path, off_t from = 0, size_t max_lines = 8);
// mkdir -p with mode 0700 for every directory it creates; chmod 0700 on the last one.
Status MakePrivateDir(const std::string& dir);

}  // namespace sod
