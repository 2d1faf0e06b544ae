// Audit log: append / reopen / continue, the entry format and its chain, and tampering of every
// kind (edited, deleted, swapped, inserted, cut and torn lines), concurrent appends, exclusivity.
#include "migrate/audit_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/bytes.h"
#include "migrate/receipt.h"

namespace sod {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string Sha256Hex(std::string_view s) {
  uint8_t md[32];
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(s.data(), s.size(), md, &len, EVP_sha256(), nullptr), 1);
  return ToHex(ByteSpan(md, len));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// The complete lines of a file, without their newlines.
std::vector<std::string> Lines(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(ReadFile(path));
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

void WriteLines(const std::string& path, const std::vector<std::string>& lines) {
  std::string data;
  for (const auto& l : lines) data += l + "\n";
  WriteFile(path, data);
}

// Re-seals an edited entry the way a forger would: a fresh, correct hash for its new content.
std::string Reseal(json e) {
  e.erase("hash");
  e["hash"] = Sha256Hex(e.dump());
  return e.dump();
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sod-audit-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/audit.log";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<AuditLog> OpenLog(std::string_view host = "hosta") {
    auto log = AuditLog::Open(path_, host);
    EXPECT_TRUE(log.ok()) << log.status().ToString();
    return log.ok() ? std::move(*log) : nullptr;
  }
  // A closed log with `n` entries: kind "test.event", data {"i": 1..n}.
  void MakeLog(int n) {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    for (int i = 1; i <= n; ++i) ASSERT_TRUE(log->Append("test.event", {{"i", i}}).ok());
  }
  void ExpectBroken(Errc code, const std::vector<std::string>& parts) {
    Status v = AuditLog::Verify(path_);
    ASSERT_FALSE(v.ok()) << "Verify accepted the tampered log";
    EXPECT_EQ(v.code(), code) << v.ToString();
    for (const auto& p : parts) EXPECT_THAT(v.message(), HasSubstr(p)) << v.ToString();
    auto reopened = AuditLog::Open(path_, "hosta");
    ASSERT_FALSE(reopened.ok()) << "Open continued the tampered log";
    EXPECT_EQ(reopened.status().code(), code) << reopened.status().ToString();
    for (const auto& p : parts)
      EXPECT_THAT(reopened.status().message(), HasSubstr(p)) << reopened.status().ToString();
  }

  std::string dir_;
  std::string path_;
};

TEST_F(AuditLogTest, CreatesTheFileWithMode0600AndStartsEmpty) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(log->entries(), 0u);
  EXPECT_EQ(log->host_id(), "hosta");
  EXPECT_EQ(log->path(), path_);
  EXPECT_TRUE(AuditLog::Verify(path_).ok());
}

TEST_F(AuditLogTest, EntriesAreCanonicalAndChained) {
  MakeLog(3);
  std::vector<std::string> lines = Lines(path_);
  ASSERT_EQ(lines.size(), 3u);
  std::string prev(64, '0');
  for (size_t i = 0; i < lines.size(); ++i) {
    json e = json::parse(lines[i]);
    EXPECT_EQ(e.dump(), lines[i]);  // canonical: sorted keys, no whitespace
    EXPECT_EQ(lines[i].rfind("{\"data\":", 0), 0u) << lines[i];
    EXPECT_EQ(e.size(), 7u);
    EXPECT_EQ(e["seq"], i + 1);
    EXPECT_EQ(e["host"], "hosta");
    EXPECT_EQ(e["kind"], "test.event");
    EXPECT_EQ(e["data"], (json{{"i", i + 1}}));
    EXPECT_EQ(e["prev"], prev);
    std::string time = e["time"];
    EXPECT_EQ(time.size(), 24u) << time;  // 2025-01-31T12:00:00.123Z
    EXPECT_EQ(time.back(), 'Z');
    std::string hash = e["hash"];
    e.erase("hash");
    EXPECT_EQ(hash, Sha256Hex(e.dump()));
    prev = Sha256Hex(lines[i]);
  }
}

TEST_F(AuditLogTest, ReopenVerifiesAndContinuesTheChain) {
  MakeLog(3);
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(log->entries(), 3u);
    ASSERT_TRUE(log->Append("test.event", {{"i", 4}}).ok());
    ASSERT_TRUE(log->Append("test.other", json::object()).ok());
    EXPECT_EQ(log->entries(), 5u);
  }
  EXPECT_TRUE(AuditLog::Verify(path_).ok()) << AuditLog::Verify(path_).ToString();
  std::vector<std::string> lines = Lines(path_);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(json::parse(lines[3])["prev"], Sha256Hex(lines[2]));
  EXPECT_EQ(json::parse(lines[4])["seq"], 5);
  auto again = OpenLog();
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->entries(), 5u);
}

TEST_F(AuditLogTest, KeepsASignedReceipt) {
  Receipt r;
  r.migration_id.fill(7);
  r.vm_name = "web-01";
  r.source_host = "hosta";
  r.destination_host = "hostb";
  r.started_unix_ms = 1738324800123;
  r.suite = Suite::kAes256Gcm;
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  json data = {{"receipt", ToJson(r)},
               {"encoded", ToHex(EncodeReceipt(r))},
               {"source_signature", "3045"},
               {"destination_signature", "3046"}};
  ASSERT_TRUE(log->Append("migration.commit", data).ok());
  ASSERT_TRUE(AuditLog::Verify(path_).ok());
  json e = json::parse(Lines(path_).at(0));
  EXPECT_EQ(e["kind"], "migration.commit");
  EXPECT_EQ(e["data"], data);
}

// --- Tampering ---------------------------------------------------------------------------------

TEST_F(AuditLogTest, DetectsAnEditedLine) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  std::string edited = lines[1];
  size_t at = edited.find("{\"i\":2}");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, 7, "{\"i\":9}");
  lines[1] = edited;
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "hash does not match"});
}

TEST_F(AuditLogTest, DetectsAnEditedAndResealedLineAtTheNextLine) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  json e = json::parse(lines[1]);
  e["data"]["i"] = 9;
  lines[1] = Reseal(e);
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 3", "prev does not match line 2"});
}

TEST_F(AuditLogTest, DetectsANonCanonicalLine) {
  MakeLog(2);
  std::vector<std::string> lines = Lines(path_);
  lines[0].insert(1, " ");  // same JSON value, other bytes
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 1", "canonical"});
}

TEST_F(AuditLogTest, DetectsADeletedLine) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  lines.erase(lines.begin() + 1);
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "seq is 3, expected 2"});
}

TEST_F(AuditLogTest, DetectsADeletedFirstLine) {
  MakeLog(3);
  std::vector<std::string> lines = Lines(path_);
  lines.erase(lines.begin());
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 1", "seq is 2, expected 1"});
}

TEST_F(AuditLogTest, DetectsTwoSwappedLines) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  std::swap(lines[1], lines[2]);
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "seq is 3, expected 2"});
}

TEST_F(AuditLogTest, DetectsSwappedLinesWithRenumberedSeqs) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  json two = json::parse(lines[1]);
  json three = json::parse(lines[2]);
  two["seq"] = 3;
  three["seq"] = 2;
  lines[1] = Reseal(three);
  lines[2] = Reseal(two);
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "prev does not match line 1"});
}

TEST_F(AuditLogTest, DetectsAnInsertedLine) {
  MakeLog(3);
  std::vector<std::string> lines = Lines(path_);
  lines.insert(lines.begin() + 2, lines[1]);  // a replayed copy of line 2
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 3", "seq is 2, expected 3"});
}

TEST_F(AuditLogTest, DetectsAForgedInsertedLine) {
  MakeLog(3);
  std::vector<std::string> lines = Lines(path_);
  // A well-formed entry with the right seq and prev for position 3, inserted before the real one.
  json forged = json::parse(lines[2]);
  forged["data"] = {{"forged", true}};
  lines.insert(lines.begin() + 2, Reseal(forged));
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 4", "seq is 3, expected 4"});
}

TEST_F(AuditLogTest, DetectsALineCutInTheMiddleOfTheFile) {
  MakeLog(4);
  std::vector<std::string> lines = Lines(path_);
  lines[1].resize(lines[1].size() / 2);
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "not valid JSON"});
}

TEST_F(AuditLogTest, DetectsAnEmptyLineAndAForeignObject) {
  MakeLog(2);
  std::vector<std::string> lines = Lines(path_);
  lines.insert(lines.begin() + 1, "");
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "empty line"});
  lines.erase(lines.begin() + 1);
  lines.insert(lines.begin() + 1, R"({"hello":"world"})");
  WriteLines(path_, lines);
  ExpectBroken(Errc::kIntegrity, {"line 2", "not an audit entry"});
}

TEST_F(AuditLogTest, ReportsATornLastLineAndOpenCutsItOff) {
  MakeLog(3);
  std::string intact = ReadFile(path_);
  std::string torn_part = R"({"data":{"i":4},"hash":"ab)";
  WriteFile(path_, intact + torn_part);
  Status v = AuditLog::Verify(path_);
  EXPECT_EQ(v.code(), Errc::kIntegrity) << v.ToString();
  EXPECT_THAT(v.message(), HasSubstr("line 4 is torn"));
  EXPECT_THAT(v.message(), HasSubstr("without a newline"));

  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->entries(), 4u);  // 3 + the record of the repair
  ASSERT_TRUE(log->Append("test.event", {{"i", 5}}).ok());
  log.reset();
  ASSERT_TRUE(AuditLog::Verify(path_).ok()) << AuditLog::Verify(path_).ToString();
  std::vector<std::string> lines = Lines(path_);
  ASSERT_EQ(lines.size(), 5u);
  json repair = json::parse(lines[3]);
  EXPECT_EQ(repair["kind"], std::string(kAuditTornTailKind));
  EXPECT_EQ(repair["data"]["line"], 4);
  EXPECT_EQ(repair["data"]["discarded_bytes"], torn_part.size());
  EXPECT_EQ(repair["data"]["discarded_sha256"], Sha256Hex(torn_part));
  EXPECT_EQ(ReadFile(path_).rfind(intact, 0), 0u);  // the intact lines are untouched
}

TEST_F(AuditLogTest, ACompleteEntryWithoutItsNewlineIsStillTorn) {
  MakeLog(2);
  std::string data = ReadFile(path_);
  data.pop_back();
  WriteFile(path_, data);
  Status v = AuditLog::Verify(path_);
  EXPECT_EQ(v.code(), Errc::kIntegrity);
  EXPECT_THAT(v.message(), HasSubstr("line 2 is torn"));
}

// --- Concurrency, ownership and bad input -------------------------------------------------------

TEST_F(AuditLogTest, ConcurrentAppendsFromFourThreadsAllLandAndVerify) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i)
        if (!log->Append("test.concurrent", {{"thread", t}, {"i", i}}).ok()) ++failures[t];
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << t;
  EXPECT_EQ(log->entries(), uint64_t{kThreads * kPerThread});
  log.reset();
  ASSERT_TRUE(AuditLog::Verify(path_).ok()) << AuditLog::Verify(path_).ToString();
  std::set<std::pair<int, int>> seen;
  std::vector<std::string> lines = Lines(path_);
  ASSERT_EQ(lines.size(), size_t{kThreads * kPerThread});
  for (const auto& l : lines) {
    json e = json::parse(l);
    seen.emplace(e["data"]["thread"].get<int>(), e["data"]["i"].get<int>());
  }
  EXPECT_EQ(seen.size(), size_t{kThreads * kPerThread});
}

TEST_F(AuditLogTest, ASecondWriterIsRefused) {
  auto first = OpenLog();
  ASSERT_NE(first, nullptr);
  auto second = AuditLog::Open(path_, "hosta");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Errc::kState);
  EXPECT_THAT(second.status().message(), HasSubstr("already open"));
  first.reset();
  EXPECT_NE(OpenLog(), nullptr);
}

TEST_F(AuditLogTest, RefusesAnotherHostsLogAndBadHostIds) {
  MakeLog(1);
  auto other = AuditLog::Open(path_, "hostb");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(other.status().message(), HasSubstr("line 1 was written by host \"hosta\""));
  auto bad = AuditLog::Open(dir_ + "/x.log", "Host_A");
  EXPECT_EQ(bad.status().code(), Errc::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ + "/x.log"));
}

TEST_F(AuditLogTest, RefusesAGroupWritableFileAndAMissingDirectory) {
  MakeLog(1);
  ASSERT_EQ(chmod(path_.c_str(), 0660), 0);
  auto loose = AuditLog::Open(path_, "hosta");
  EXPECT_EQ(loose.status().code(), Errc::kInvalidArgument);
  EXPECT_THAT(loose.status().message(), HasSubstr("mode 0660"));
  auto nowhere = AuditLog::Open(dir_ + "/missing/audit.log", "hosta");
  EXPECT_EQ(nowhere.status().code(), Errc::kNotFound);
  EXPECT_EQ(AuditLog::Verify(dir_ + "/missing.log").code(), Errc::kNotFound);
}

TEST_F(AuditLogTest, AppendRefusesBadKindsAndDataAndStaysUsable) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->Append("", json::object()).code(), Errc::kInvalidArgument);
  EXPECT_EQ(log->Append("Migration Commit", json::object()).code(), Errc::kInvalidArgument);
  EXPECT_EQ(log->Append(std::string(65, 'k'), json::object()).code(), Errc::kInvalidArgument);
  EXPECT_EQ(log->Append("test.event", json::array({1, 2})).code(), Errc::kInvalidArgument);
  EXPECT_EQ(log->Append("test.event", json(5)).code(), Errc::kInvalidArgument);
  Status utf8 = log->Append("test.event", {{"name", std::string("bad\xff")}});
  EXPECT_EQ(utf8.code(), Errc::kInvalidArgument) << utf8.ToString();
  EXPECT_EQ(log->Append("test.event", {{"blob", std::string(kMaxAuditLineSize, 'x')}}).code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(log->entries(), 0u);
  ASSERT_TRUE(log->Append("test.event", {{"ok", true}}).ok());
  EXPECT_EQ(log->entries(), 1u);
  log.reset();
  EXPECT_TRUE(AuditLog::Verify(path_).ok());
  EXPECT_EQ(Lines(path_).size(), 1u);
}

}  // namespace
}  // namespace sod
