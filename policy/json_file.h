// Strict JSON input for the policy's data files and requests (internal to sod_policy).
//
// nlohmann::json keeps the last of two equal keys in an object without a word; for files that
// operators write by hand that hides mistakes (a row that says "hypervisor" twice). Everything the
// policy parses goes through ParseStrictJson, which refuses duplicate keys, and the decoders refuse
// unknown keys (CheckOnlyKeys). Nothing here throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/status.h"

namespace sod::policy::internal {

// Parses `text` as one JSON document. kMalformed "<source>: not JSON: ..." when it does not parse,
// "<source>: <path>: duplicate key \"k\"" when an object repeats a key.
Result<nlohmann::json> ParseStrictJson(std::string_view text, std::string_view source);
// Reads `path` (at most `max_bytes`: kTooLarge above) and parses it as ParseStrictJson does, with
// the path as the source. kNotFound / kIo when the file does not read.
Result<nlohmann::json> ReadStrictJsonFile(const std::filesystem::path& path, size_t max_bytes);

// kMalformed "<where>: unknown key \"k\" (expected one of a, b, c)" for a key of `obj` not in
// `keys`. Precondition: obj.is_object().
Status CheckOnlyKeys(const nlohmann::json& obj, std::string_view where,
                     std::initializer_list<std::string_view> keys);
// kMalformed "<where>: <detail>".
Status Malformed(std::string_view where, std::string_view detail);
// `obj`[key] as a string; kMalformed naming `field` (the key's full name in messages, e.g.
// "request.package") when missing (and !optional) or not a string. A missing optional key gives
// "".
Result<std::string> GetString(const nlohmann::json& obj, std::string_view key,
                              std::string_view field, bool optional = false);
// Checks `obj`["version"] == `expected`; `field` names it in messages. kMalformed when missing or
// not an integer, kUnsupported for another version.
Status CheckVersion(const nlohmann::json& obj, std::string_view field, uint64_t expected);
// A JSON value shown in an error message: compact, cut to 40 characters.
std::string Shown(const nlohmann::json& value);

}  // namespace sod::policy::internal
