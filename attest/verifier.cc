#include "attest/verifier.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>

#include "attest/tpm_wire.h"

namespace sod::attest {
namespace {

std::string PcrList(const std::vector<uint32_t>& pcrs) {
  std::string s;
  for (uint32_t p : pcrs) s += (s.empty() ? "" : ",") + std::to_string(p);
  return s.empty() ? "none" : s;
}

bool Equal(ByteSpan a, ByteSpan b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string JsonSafe(const std::string& s) {
  return IsWellFormedUtf8(s)
             ? s
             : "<invalid UTF-8: " +
                   ToHex(ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size())) + ">";
}

// The reported value of `pcr`, if the evidence reports it.
std::optional<PcrDigest> Reported(const PcrValues& pcrs, uint32_t pcr) {
  const std::vector<uint32_t> idx = pcrs.selection.Indices();
  for (size_t i = 0; i < idx.size() && i < pcrs.values.size(); ++i)
    if (idx[i] == pcr) return pcrs.values[i];
  return std::nullopt;
}

// The Qualified Names the enrolled AK can have: a primary key of the endorsement or the owner
// hierarchy, or a child of the enrolled EK (itself a primary of the endorsement hierarchy).
std::vector<Bytes> EnrolledAkQualifiedNames(const EnrollmentRecord& enrolled, const TpmPublic& ak) {
  const Bytes endorsement = HierarchyName(kTpmRhEndorsement);
  std::vector<Bytes> names = {QualifiedName(endorsement, ak.Name()),
                              QualifiedName(HierarchyName(kTpmRhOwner), ak.Name())};
  if (Result<TpmPublic> ek = ParsePublic(enrolled.ek_public); ek.ok())
    names.push_back(QualifiedName(QualifiedName(endorsement, ek->Name()), ak.Name()));
  return names;
}

Verdict VerifyUnchecked(const Evidence& e, const Expectation& x, const EnrollmentStore& store,
                        const AttestationPolicy& policy) {
  Verdict v;
  v.host_id = x.peer_host_id;
  v.architecture = e.architecture;
  v.capability_row = e.capability_row;
  v.violation_count = e.violation_count;
  v.timestamp_unix_ms = e.timestamp_unix_ms;
  auto refuse = [&](std::string reason) { v.reasons.push_back(std::move(reason)); };
  auto drop = [&](std::string reason) {  // a trust drop of an authentic host (10, 12)
    v.trust_drops.push_back(reason);
    v.reasons.push_back(std::move(reason));
  };
  const std::string& peer = x.peer_host_id;

  // 1. Our own side.
  if (x.nonce.empty()) refuse("verifier error: no nonce was sent (the evidence cannot be fresh)");
  if (x.nonce.size() > 255 || x.session_binding.size() > 255)
    refuse("verifier error: nonce or session binding longer than 255 bytes");

  // 2. Whose evidence.
  if (e.host_id != peer) refuse("evidence from " + JsonSafe(e.host_id) + " presented by " + peer);

  // 3. The enrolled AK.
  const EnrollmentRecord* enrolled = store.Find(peer);
  std::optional<TpmPublic> ak;
  if (enrolled == nullptr) {
    refuse("unknown host: " + peer + " is not enrolled (no AK to check its quote with)");
  } else {
    Result<TpmPublic> parsed = ParsePublic(enrolled->ak_public);
    if (!parsed.ok()) {
      refuse("the AK enrolled for " + peer + " does not parse: " + parsed.status().message());
    } else if (Status s = CheckAttestationKey(*parsed); !s.ok()) {
      refuse("the AK enrolled for " + peer + " is refused: " + s.message());
    } else {
      ak = std::move(*parsed);
    }
  }

  if (enrolled != nullptr && e.architecture != enrolled->architecture)
    refuse("architecture " + JsonSafe(e.architecture) + " claimed, but " + peer +
           " is enrolled as " + enrolled->architecture);

  // 4. The quote.
  Result<QuoteInfo> quote = ParseQuoteAttest(e.quote_attest);
  if (!quote.ok()) {
    refuse("the quote does not parse: " + quote.status().message());
  } else {
    v.reset_count = quote->reset_count;
    v.restart_count = quote->restart_count;
    v.pcrs_checked = quote->pcr_selection.Indices();

    // 5. Signed by the enrolled AK?
    if (ak) {
      const std::vector<Bytes> names = EnrolledAkQualifiedNames(*enrolled, *ak);
      if (std::none_of(names.begin(), names.end(),
                       [&](const Bytes& n) { return Equal(quote->qualified_signer, n); }))
        refuse("unknown AK: the quote's signer " + ToHex(quote->qualified_signer) +
               " is not the AK enrolled for " + peer + " (AK Name " + ToHex(ak->Name()) + ")");
    }
    // 6. For this session and nonce?
    const PcrDigest qualifying = QualifyingData(x.nonce, x.session_binding, ClaimsDigest(e));
    if (!Equal(quote->extra_data, qualifying))
      refuse(
          "quote not bound to this session/nonce and these claims (stale nonce, replayed from "
          "another session, or evidence altered after the quote)");
  }

  // 7. The signature.
  if (ak) {
    Result<TpmSignature> sig = ParseSignature(e.quote_signature);
    if (!sig.ok()) {
      refuse("the quote signature does not parse: " + sig.status().message());
    } else if (Status s = VerifyTpmSignature(*ak, e.quote_attest, *sig); !s.ok()) {
      refuse("the quote signature does not verify with the AK enrolled for " + peer + " (" +
             s.message() + ")");
    }
  }

  if (quote.ok()) {
    // 8. Which PCRs.
    const PcrSelection& quoted = quote->pcr_selection;
    if (quoted != e.pcrs.selection)
      refuse("the quote covers PCRs " + PcrList(quoted.Indices()) +
             " but the evidence reports PCRs " + PcrList(e.pcrs.selection.Indices()));
    PcrSelection missing;
    missing.mask = policy.required.mask & ~quoted.mask;
    if (missing.mask != 0)
      refuse("the quote does not cover PCRs " + PcrList(missing.Indices()) +
             " that the policy requires");
    // 9. The reported values are the quoted ones.
    const PcrDigest composite = PcrCompositeDigest(e.pcrs.values);
    if (e.pcrs.values.size() != e.pcrs.selection.Indices().size() ||
        !Equal(quote->pcr_digest, composite))
      refuse("the reported PCR values do not match the quote's PCR digest");
  }

  // 10. Golden values.
  if (enrolled != nullptr) {
    for (const auto& [pcr, golden] : enrolled->golden_pcrs) {
      const std::optional<PcrDigest> value = Reported(e.pcrs, pcr);
      if (!value)
        refuse("PCR " + std::to_string(pcr) + " is enrolled as golden but not reported");
      else if (!Equal(*value, golden))
        drop("PCR " + std::to_string(pcr) + " is " + ToHex(*value) + ", not the value " +
               ToHex(golden) + " enrolled for " + peer);
    }
  }

  // 11. The violation count is what the TPM recorded.
  const std::optional<PcrDigest> violation_pcr = Reported(e.pcrs, kViolationPcr);
  if (!violation_pcr) {
    refuse("PCR 14 (the violation PCR) is not reported: the violation count cannot be checked");
  } else if (e.violation_count > kMaxVerifiableViolations) {
    refuse("violation count " + std::to_string(e.violation_count) + " is above " +
           std::to_string(kMaxVerifiableViolations) + ", the most this verifier checks PCR 14 for");
  } else if (!Equal(*violation_pcr, ViolationPcrValue(e.violation_count))) {
    refuse("PCR 14 does not match the reported violation count " +
           std::to_string(e.violation_count) + " (the host hides or invents violations)");
  }
  // 12. Policy.
  v.violations_over_policy = e.violation_count > policy.max_violations;
  if (v.violations_over_policy)
    drop(std::to_string(e.violation_count) + " runtime violations; the policy allows at most " +
           std::to_string(policy.max_violations));
  // 13. Freshness of the host's claim.
  const uint64_t skew = e.timestamp_unix_ms > x.now_unix_ms ? e.timestamp_unix_ms - x.now_unix_ms
                                                            : x.now_unix_ms - e.timestamp_unix_ms;
  const uint64_t max_skew =
      policy.max_clock_skew.count() < 0 ? 0 : static_cast<uint64_t>(policy.max_clock_skew.count());
  if (skew > max_skew)
    refuse("evidence timestamp " + std::to_string(e.timestamp_unix_ms) + " is " +
           std::to_string(skew) + " ms " +
           (e.timestamp_unix_ms > x.now_unix_ms ? "ahead of" : "behind") +
           " this host's clock (at most " + std::to_string(max_skew) + " ms allowed)");

  v.accepted = v.reasons.empty();
  return v;
}

}  // namespace

Verdict Verify(const Evidence& evidence, const Expectation& expectation,
               const EnrollmentStore& store, const AttestationPolicy& policy) {
  try {
    return VerifyUnchecked(evidence, expectation, store, policy);
  } catch (const std::exception& ex) {  // out of memory: refuse, never throw
    Verdict v;
    v.host_id = expectation.peer_host_id;
    v.reasons.push_back(std::string("verifier error: ") + ex.what());
    return v;
  }
}

std::string Verdict::Summary() const {
  if (accepted)
    return host_id + ": accepted (" + architecture + ", " + std::to_string(violation_count) +
           " violations, PCRs " + PcrList(pcrs_checked) + ")";
  std::string s = host_id + ": refused";
  for (size_t i = 0; i < reasons.size(); ++i) s += (i == 0 ? ": " : "; ") + reasons[i];
  if (reasons.empty()) s += " (no reason recorded)";
  return s;
}

nlohmann::json Verdict::ToJson() const {
  nlohmann::json reasons_json = nlohmann::json::array();
  for (const std::string& r : reasons) reasons_json.push_back(JsonSafe(r));
  nlohmann::json drops_json = nlohmann::json::array();
  for (const std::string& r : trust_drops) drops_json.push_back(JsonSafe(r));
  return nlohmann::json{{"accepted", accepted},
                        {"authentic", Authentic()},
                        {"trust_drops", drops_json},
                        {"evacuation", evacuation},
                        {"reasons", reasons_json},
                        {"host_id", JsonSafe(host_id)},
                        {"architecture", JsonSafe(architecture)},
                        {"capability_row", JsonSafe(capability_row)},
                        {"violation_count", violation_count},
                        {"timestamp_unix_ms", timestamp_unix_ms},
                        {"reset_count", reset_count},
                        {"restart_count", restart_count},
                        {"pcrs_checked", pcrs_checked}};
}

}  // namespace sod::attest
