// sodctl pki: the cluster CA and host certificates (migrate/pki.h).
#include <iostream>
#include <memory>
#include <string>

#include "migrate/pki.h"
#include "tools/sodctl_commands.h"

namespace sod::sodctl {
namespace {

struct PkiInitArgs {
  std::string dir;
  int days = CaOptions{}.days;
  bool force = false;
};

struct PkiIssueArgs {
  std::string dir;
  std::string host;
  std::string out_dir;
  int days = IssueOptions{}.days;
  bool force = false;
};

void PrintIssued(const std::string& headline, const IssuedCertificate& c) {
  std::cout << headline << "\n"
            << "  certificate  " << c.cert_path << "\n"
            << "  private key  " << c.key_path << " (mode 0600)\n"
            << "  subject      " << c.subject << "\n"
            << "  valid        " << c.not_before << " to " << c.not_after << "\n"
            << "  sha256       " << c.sha256_fingerprint << "\n";
}

Status RunPkiInit(const PkiInitArgs& args) {
  CaOptions options;
  options.days = args.days;
  options.force = args.force;
  Result<IssuedCertificate> ca = CreateCa(args.dir, options);
  if (!ca.ok()) return ca.status().WithContext("pki init");
  PrintIssued("created the cluster CA in " + args.dir, *ca);
  return Status::Ok();
}

Status RunPkiIssue(const PkiIssueArgs& args) {
  IssueOptions options;
  options.days = args.days;
  options.force = args.force;
  Result<IssuedCertificate> cert = IssueHostCert(args.dir, args.host, args.out_dir, options);
  if (!cert.ok()) return cert.status().WithContext("pki issue");
  PrintIssued("issued a host certificate for " + args.host, *cert);
  return Status::Ok();
}

CLI::Validator HostIdValidator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        Status s = ValidateHostId(value);
        return s.ok() ? std::string() : s.message();
      },
      "");
}

}  // namespace

void AddPkiCommands(CLI::App& app, CommandAction& action) {
  CLI::App* pki = app.add_subcommand("pki", "Manage the cluster CA and the host certificates");
  pki->require_subcommand(1);

  auto init = std::make_shared<PkiInitArgs>();
  CLI::App* init_cmd = pki->add_subcommand(
      "init",
      "Create the cluster CA: DIR/ca.key (ECDSA P-256, mode 0600) and DIR/ca.crt. Refuses to "
      "overwrite an existing CA unless --force is given.");
  init_cmd->add_option("--dir", init->dir, "CA directory (created with mode 0700 if missing)")
      ->required()
      ->type_name("DIR");
  init_cmd->add_option("--days", init->days, "Validity of the CA certificate in days")
      ->check(CLI::Range(1, kMaxCertificateDays))
      ->type_name("N")
      ->capture_default_str();
  init_cmd->add_flag("--force", init->force,
                     "Replace an existing CA (invalidates every host cert)");
  init_cmd->callback([init, &action] { action = [init] { return RunPkiInit(*init); }; });

  auto issue = std::make_shared<PkiIssueArgs>();
  CLI::App* issue_cmd = pki->add_subcommand(
      "issue",
      "Issue a host key and certificate signed by the cluster CA: HOSTID.key (mode 0600) and "
      "HOSTID.crt with CN=HOSTID, subjectAltName DNS:HOSTID, key usage digitalSignature, extended "
      "key usage serverAuth + clientAuth. The certificate never outlives the CA.");
  issue_cmd->add_option("--dir", issue->dir, "CA directory holding ca.key and ca.crt")
      ->required()
      ->type_name("DIR");
  issue_cmd
      ->add_option("--host", issue->host,
                   "Host id: 1-64 characters of a-z 0-9 . -, not starting with . or -")
      ->required()
      ->type_name("HOSTID")
      ->check(HostIdValidator());
  issue_cmd->add_option("--days", issue->days, "Validity of the host certificate in days")
      ->check(CLI::Range(1, kMaxCertificateDays))
      ->type_name("N")
      ->capture_default_str();
  issue_cmd->add_option("--out-dir", issue->out_dir, "Where to write the files (default: --dir)")
      ->type_name("D");
  issue_cmd->add_flag("--force", issue->force, "Replace existing HOSTID.key / HOSTID.crt");
  issue_cmd->callback([issue, &action] { action = [issue] { return RunPkiIssue(*issue); }; });
}

}  // namespace sod::sodctl
