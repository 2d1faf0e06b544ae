// The calling thread's OpenSSL error queue as text, for error messages.
#pragma once

#include <string>

namespace sod {

// Drains the calling thread's OpenSSL error queue into "reason; reason" ("no OpenSSL error
// reported" when it is empty). The queue is empty afterwards.
std::string DrainOpensslErrors();

}  // namespace sod
