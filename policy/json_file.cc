#include "policy/json_file.h"

#include <algorithm>
#include <set>
#include <vector>

#include "base/files.h"
#include "base/utf8.h"

namespace sod::policy::internal {
namespace {

using nlohmann::json;

// One open object or array while parsing, for duplicate detection and for naming the place.
struct Frame {
  bool is_object = false;
  std::set<std::string> keys;  // objects: keys seen so far
  std::string key;             // objects: the key whose value is being parsed
  size_t index = 0;            // arrays: elements completed so far
};

std::string PathOf(const std::vector<Frame>& frames) {
  std::string path;
  for (const Frame& f : frames) {
    if (f.is_object) {
      if (f.key.empty()) continue;
      if (!path.empty()) path += '.';
      path += f.key;
    } else {
      path += "[" + std::to_string(f.index) + "]";
    }
  }
  return path.empty() ? "top level" : path;
}

std::string Printable(std::string_view s) {
  std::string cut(s.substr(0, 64));
  return IsWellFormedUtf8(cut) ? cut : "?";
}

}  // namespace

Result<json> ParseStrictJson(std::string_view text, std::string_view source) {
  std::vector<Frame> frames;
  std::string duplicate;  // the first duplicate key found, with its place
  auto element_done = [&frames] {
    if (!frames.empty() && !frames.back().is_object) ++frames.back().index;
  };
  json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        frames.push_back(Frame{event == json::parse_event_t::object_start, {}, {}, 0});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!frames.empty()) frames.pop_back();
        element_done();
        break;
      case json::parse_event_t::key:
        if (!frames.empty() && parsed.is_string()) {
          Frame& f = frames.back();
          f.key = parsed.get<std::string>();
          if (!f.keys.insert(f.key).second && duplicate.empty()) {
            const std::string key = f.key;
            f.key.clear();
            duplicate = PathOf(frames) + ": duplicate key \"" + Printable(key) + "\"";
            f.key = key;
          }
        }
        break;
      case json::parse_event_t::value:
        element_done();
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                    /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    return Error(Errc::kMalformed, std::string(source) + ": not JSON: " + e.what());
  }
  if (!duplicate.empty()) return Error(Errc::kMalformed, std::string(source) + ": " + duplicate);
  return j;
}

Result<json> ReadStrictJsonFile(const std::filesystem::path& path, size_t max_bytes) {
  SOD_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path.string(), max_bytes));
  return ParseStrictJson(text, path.string());
}

Status CheckOnlyKeys(const json& obj, std::string_view where,
                     std::initializer_list<std::string_view> keys) {
  for (const auto& item : obj.items()) {
    if (std::find(keys.begin(), keys.end(), item.key()) != keys.end()) continue;
    std::string expected;
    for (std::string_view k : keys) {
      if (!expected.empty()) expected += ", ";
      expected += k;
    }
    return Malformed(
        where, "unknown key \"" + Printable(item.key()) + "\" (expected one of " + expected + ")");
  }
  return Status::Ok();
}

Status Malformed(std::string_view where, std::string_view detail) {
  return Error(Errc::kMalformed, std::string(where) + ": " + std::string(detail));
}

Result<std::string> GetString(const json& obj, std::string_view key, std::string_view field,
                              bool optional) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (optional) return std::string();
    return Malformed(field, "missing");
  }
  if (!it->is_string()) return Malformed(field, "not a string: " + Shown(*it));
  return it->get<std::string>();
}

Status CheckVersion(const json& obj, std::string_view field_name, uint64_t expected) {
  auto it = obj.find("version");
  const std::string field(field_name);
  if (it == obj.end()) return Malformed(field, "missing");
  if (!it->is_number_integer()) return Malformed(field, "not an integer: " + Shown(*it));
  if (it->get<int64_t>() < 0 || static_cast<uint64_t>(it->get<int64_t>()) != expected)
    return Error(Errc::kUnsupported, field + ": version " + Shown(*it) + " (this build reads " +
                                         std::to_string(expected) + ")");
  return Status::Ok();
}

std::string Shown(const json& value) {
  std::string s = value.dump(-1, ' ', /*ensure_ascii=*/true);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

}  // namespace sod::policy::internal
