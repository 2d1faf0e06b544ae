// sodctl host ... and sodctl attest: this host's attestation identity, the cluster's enrollment
// records, runtime violations, and attesting a peer now (host/attestation_service.h).
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "attest/enrollment.h"
#include "tools/sodctl_commands.h"
#include "tools/sodctl_sodd.h"

namespace sod::sodctl {
namespace {

using nlohmann::json;

std::string DefaultEnrollmentDir(const SoddTarget& sodd) { return sodd.state_dir + "/enrollments"; }

Status RunEnrollment(const SoddTarget& sodd, const std::string& out) {
  SOD_ASSIGN_OR_RETURN(json answer, CallSodd(sodd, {{"op", "host.enrollment"}}));
  const json reply = answer.value("record", json::object());
  if (out.empty() || out == "-") {
    PrintJson(reply);
    return Status::Ok();
  }
  std::ofstream f(out, std::ios::trunc);
  f << reply.dump(2) << "\n";
  if (!f.good()) return Error(Errc::kIo, "cannot write " + out);
  std::cout << "enrollment record of " << Text(reply.value("host_id", json())) << " written to " << out
            << " (review it, then: sodctl host enroll " << out << " --dir DIR)\n";
  return Status::Ok();
}

Status RunEnroll(const std::string& file, const std::string& dir) {
  std::ifstream f(file);
  if (!f) return Error(Errc::kNotFound, "cannot read " + file);
  json j = json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Errc::kMalformed, file + ": not JSON");
  SOD_ASSIGN_OR_RETURN(attest::EnrollmentRecord r, attest::EnrollmentFromJson(j));
  SOD_RETURN_IF_ERROR(attest::EnrollmentStore::Add(r, dir));
  std::cout << "enrolled " << r.host_id << " (" << r.architecture << ", " << r.golden_pcrs.size()
            << " golden PCRs) in " << dir << "\n";
  return Status::Ok();
}

Status RunUnenroll(const std::string& host, const std::string& dir) {
  SOD_RETURN_IF_ERROR(attest::EnrollmentStore::Remove(host, dir));
  std::cout << "removed " << host << " from " << dir << "\n";
  return Status::Ok();
}

Status RunEnrollments(const std::string& dir, bool as_json) {
  SOD_ASSIGN_OR_RETURN(attest::EnrollmentStore store, attest::EnrollmentStore::Load(dir));
  json all = json::array();
  for (const auto& r : store.records()) all.push_back(attest::EnrollmentToJson(r));
  if (as_json) {
    PrintJson(all);
    return Status::Ok();
  }
  std::vector<std::vector<std::string>> rows = {{"HOST", "ARCHITECTURE", "GOLDEN PCRS", "AK"}};
  for (const auto& r : store.records()) {
    std::string pcrs;
    for (const auto& [i, v] : r.golden_pcrs) pcrs += (pcrs.empty() ? "" : ",") + std::to_string(i);
    rows.push_back({r.host_id, r.architecture, pcrs, ToHex(r.ak_public).substr(0, 16) + "..."});
  }
  PrintTable(rows);
  return Status::Ok();
}

Status RunEvidence(const SoddTarget& sodd, bool as_json) {
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, {{"op", "host.evidence"}}));
  if (as_json) {
    PrintJson(reply);
    return Status::Ok();
  }
  PrintTable({{"host", Text(reply.value("host_id", json()))},
              {"tpm", Text(reply.value("tpm", json()))},
              {"architecture", Text(reply.value("architecture", json()))},
              {"enrollments", Text(reply.value("enrollments", json()))},
              {"violations", Text(reply.value("violations", json())) + " (peers accept at most " +
                                 Text(reply.value("max_violations", json())) + ")"}});
  std::vector<std::vector<std::string>> rows = {{"PCR", "SHA-256"}};
  const json pcrs = reply.value("pcrs", json::array());
  for (const auto& p : pcrs) rows.push_back({Text(p.value("pcr", json())), Text(p.value("sha256", json()))});
  std::cout << "\n";
  PrintTable(rows);
  return Status::Ok();
}

Status RunViolation(const SoddTarget& sodd, const std::string& reason) {
  json req = {{"op", "host.violation"}};
  if (!reason.empty()) req["reason"] = reason;
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, req));
  std::cout << "runtime violations on this host: " << Text(reply.value("violations", json()))
            << " (peers accept at most " << Text(reply.value("max_violations", json())) << ")\n";
  return Status::Ok();
}

Status RunAttest(const SoddTarget& sodd, const std::string& to, const std::string& connect,
                 bool as_json) {
  json req = {{"op", "attest"}};
  SOD_RETURN_IF_ERROR(AddHostPort(req, to, "HOST"));
  if (!connect.empty()) req["connect"] = connect;
  SOD_ASSIGN_OR_RETURN(json reply, CallSodd(sodd, req));
  if (as_json) PrintJson(reply);
  const json v = reply.value("verdict", json::object());
  if (!as_json) {
    std::vector<std::vector<std::string>> rows = {
        {"host", Text(reply.value("host", json()))},
        {"verdict", v.value("accepted", false) ? "trusted" : "REFUSED"},
        {"architecture", Text(v.value("architecture", json()))},
        {"violations", Text(v.value("violation_count", json()))},
        {"quoted PCRs", Text(v.value("pcrs_checked", json()))},
        {"evidence time", Text(v.value("timestamp_unix_ms", json()))},
        {"TPM resets/restarts",
         Text(v.value("reset_count", json())) + "/" + Text(v.value("restart_count", json()))},
        {"it trusts us", Text(reply.value("peer_accepted_us", json()))}};
    PrintTable(rows);
    const json reasons = v.value("reasons", json::array());
    for (const auto& r : reasons) std::cout << "  reason: " << Text(r) << "\n";
  }
  if (!reply.value("trusted", false))
    return Error(Errc::kAttestation, reply.value("error", std::string("attestation failed")));
  return Status::Ok();
}

}  // namespace

void AddHostCommands(CLI::App& app, std::shared_ptr<const SoddTarget> sodd,
                     CommandAction& action) {
  CLI::App* host = app.add_subcommand(
      "host", "This host's attestation identity, the cluster's enrollment records, violations");
  host->require_subcommand(1);
  host->fallthrough();

  auto out = std::make_shared<std::string>();
  CLI::App* e = host->add_subcommand(
      "enrollment",
      "Print this host's enrollment record (AK and EK public areas, architecture, its current "
      "PCRs as golden values) for an operator to review and enroll on the other hosts");
  e->add_option("--out", *out, "Write it to FILE instead of stdout")->type_name("FILE");
  e->callback([&action, sodd, out] { action = [sodd, out] { return RunEnrollment(*sodd, *out); }; });

  auto file = std::make_shared<std::string>();
  auto dir = std::make_shared<std::string>();
  CLI::App* en = host->add_subcommand(
      "enroll", "Trust a host: validate its enrollment record and add it to an enrollment "
                "directory (sodd reloads it by itself)");
  en->add_option("record", *file, "Enrollment record (JSON, from 'sodctl host enrollment')")
      ->required()
      ->type_name("FILE");
  en->add_option("--dir", *dir, "Enrollment directory [default: STATE-DIR/enrollments]")
      ->type_name("DIR");
  en->callback([&action, sodd, file, dir] {
    action = [sodd, file, dir] {
      return RunEnroll(*file, dir->empty() ? DefaultEnrollmentDir(*sodd) : *dir);
    };
  });

  auto id = std::make_shared<std::string>();
  CLI::App* un = host->add_subcommand("unenroll", "Stop trusting a host: remove its record");
  un->add_option("host", *id, "Host id")->required()->type_name("HOST");
  un->add_option("--dir", *dir, "Enrollment directory [default: STATE-DIR/enrollments]")
      ->type_name("DIR");
  un->callback([&action, sodd, id, dir] {
    action = [sodd, id, dir] {
      return RunUnenroll(*id, dir->empty() ? DefaultEnrollmentDir(*sodd) : *dir);
    };
  });

  auto as_json = std::make_shared<bool>(false);
  CLI::App* ls = host->add_subcommand("enrollments", "List the enrolled hosts");
  ls->add_option("--dir", *dir, "Enrollment directory [default: STATE-DIR/enrollments]")
      ->type_name("DIR");
  ls->add_flag("--json", *as_json, "Print the records as JSON");
  ls->callback([&action, sodd, dir, as_json] {
    action = [sodd, dir, as_json] {
      return RunEnrollments(dir->empty() ? DefaultEnrollmentDir(*sodd) : *dir, *as_json);
    };
  });

  CLI::App* ev = host->add_subcommand(
      "evidence", "This host's TPM, architecture, violation count and quoted PCR values");
  ev->add_flag("--json", *as_json, "Print sodd's reply as JSON");
  ev->callback([&action, sodd, as_json] {
    action = [sodd, as_json] { return RunEvidence(*sodd, *as_json); };
  });

  auto reason = std::make_shared<std::string>();
  CLI::App* vi = host->add_subcommand(
      "violation",
      "Count a runtime violation on this host (as a hardware monitor would): extends the "
      "violation PCR; peers refuse this host once the count exceeds their --max-violations");
  vi->add_option("--reason", *reason, "Why (goes to the audit log)")->type_name("TEXT");
  vi->callback([&action, sodd, reason] {
    action = [sodd, reason] { return RunViolation(*sodd, *reason); };
  });

  auto to = std::make_shared<std::string>();
  auto connect = std::make_shared<std::string>();
  auto attest_json = std::make_shared<bool>(false);
  CLI::App* at = app.add_subcommand(
      "attest",
      "Attest with a host now: both hosts exchange TPM quotes bound to a fresh TLS session; "
      "shows this host's verdict about the peer and its evidence summary");
  at->add_option("host", *to, "Host id, with its migration port")->required()->type_name(
      "HOST[:PORT]");
  at->add_option("--connect", *connect, "Address to dial (default: the host id)")
      ->type_name("ADDR");
  at->add_flag("--json", *attest_json, "Print sodd's reply as JSON");
  at->footer("Exit status: 0 when the peer is trusted (and trusts us), 1 otherwise, 2 on a usage "
             "error, 3 when sodd cannot be reached.");
  at->callback([&action, sodd, to, connect, attest_json] {
    action = [sodd, to, connect, attest_json] {
      return RunAttest(*sodd, *to, *connect, *attest_json);
    };
  });
}

}  // namespace sod::sodctl
