// Fuzzes the attestation decoders: DecodeEvidence and the TPM structure parsers (tpm_wire.h),
// each on the raw input, and the verifier on every evidence that decodes. Properties: accepted
// inputs re-encode to exactly the input; a decoded evidence validates, verifies without crashing
// (accepted iff no reasons) and renders as JSON without throwing.
//
// The seeds are made at start-up with a fresh software AK (so their signatures differ between
// runs); the mutations of the standalone driver are deterministic.
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <nlohmann/json.hpp>

#include "attest/enrollment.h"
#include "attest/evidence.h"
#include "attest/tpm_wire.h"
#include "attest/verifier.h"
#include "base/openssl_ptr.h"
#include "fuzz_target.h"

namespace {

using sod::Bytes;
using sod::ByteSpan;
namespace attest = sod::attest;
using PkeyPtr = sod::OpensslPtr<EVP_PKEY, EVP_PKEY_free>;

constexpr uint64_t kNow = 1738324800123;

// One software host, "hosta", whose AK and EK are enrolled in `store`.
struct World {
  PkeyPtr ak{EVP_EC_gen("P-256")};
  PkeyPtr ek{EVP_EC_gen("P-256")};
  PkeyPtr rsa{EVP_RSA_gen(2048)};
  Bytes ak_public, ek_public, rsa_public;
  attest::EnrollmentStore store;
  attest::Expectation expectation;
  attest::Evidence evidence;  // genuine: Verify accepts it

  World() {
    if (!ak || !ek || !rsa) FuzzCheckFailed("key generation failed");
    ak_public =
        attest::EncodePublic(attest::PublicFromKey(ak.get(), attest::kAkAttributes).value());
    ek_public =
        attest::EncodePublic(attest::PublicFromKey(ek.get(), attest::kEkAttributes).value());
    rsa_public =
        attest::EncodePublic(attest::PublicFromKey(rsa.get(), attest::kAkAttributes).value());
    attest::EnrollmentRecord r;
    r.host_id = "hosta";
    r.architecture = "tpm-host";
    r.ak_public = ak_public;
    r.ek_public = ek_public;
    for (uint32_t i = 0; i < 8; ++i) r.golden_pcrs[i].fill(static_cast<uint8_t>(i + 1));
    if (!store.Insert(r).ok()) FuzzCheckFailed("Insert failed");

    expectation = {"hosta", Bytes(32, 0x11), Bytes(32, 0x22), kNow};
    evidence.host_id = "hosta";
    evidence.architecture = "tpm-host";
    evidence.capability_row = "{\"memory\":\"encrypted\"}";
    evidence.timestamp_unix_ms = kNow;
    evidence.pcrs.selection = attest::DefaultQuoteSelection();
    for (uint32_t i = 0; i < 8; ++i) {
      attest::PcrDigest d{};
      d.fill(static_cast<uint8_t>(i + 1));
      evidence.pcrs.values.push_back(d);
    }
    evidence.pcrs.values.push_back(attest::ViolationPcrValue(0));
    attest::QuoteInfo q;
    q.qualified_signer = attest::QualifiedName(attest::HierarchyName(attest::kTpmRhEndorsement),
                                               attest::PublicName(ak_public));
    const attest::PcrDigest qd = attest::QualifyingData(
        expectation.nonce, expectation.session_binding, attest::ClaimsDigest(evidence));
    q.extra_data.assign(qd.begin(), qd.end());
    q.clock = 123456;
    q.reset_count = 2;
    q.restart_count = 1;
    q.safe = true;
    q.firmware_version = 0x2023111400000000ull;
    q.pcr_selection = evidence.pcrs.selection;
    const attest::PcrDigest composite = attest::PcrCompositeDigest(evidence.pcrs.values);
    q.pcr_digest.assign(composite.begin(), composite.end());
    evidence.quote_attest = attest::EncodeQuoteAttest(q);
    evidence.quote_signature = attest::SoftwareTpmSign(ak.get(), evidence.quote_attest).value();
    if (!attest::Verify(evidence, expectation, store, {}).accepted)
      FuzzCheckFailed("the genuine seed evidence does not verify");
  }
};

World& TheWorld() {
  static World* w = new World();  // never destroyed: fuzz drivers may exit from any thread
  return *w;
}

bool SameBytes(const Bytes& out, const uint8_t* data, size_t size) {
  return out.size() == size && std::equal(out.begin(), out.end(), data);
}

}  // namespace

std::vector<Bytes> FuzzSeeds() {
  World& w = TheWorld();
  std::vector<Bytes> seeds;
  seeds.push_back(attest::EncodeEvidence(w.evidence));
  seeds.push_back(w.evidence.quote_attest);
  seeds.push_back(w.evidence.quote_signature);
  seeds.push_back(w.ak_public);
  seeds.push_back(w.ek_public);
  seeds.push_back(w.rsa_public);
  seeds.push_back(attest::SoftwareTpmSign(w.rsa.get(), w.evidence.quote_attest).value());
  attest::Evidence small = w.evidence;
  small.capability_row.clear();
  small.pcrs.selection.mask = 0;
  small.pcrs.values.clear();
  seeds.push_back(attest::EncodeEvidence(small));
  return seeds;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  const ByteSpan in(data, size);

  if (auto q = attest::ParseQuoteAttest(in); q.ok()) {
    FUZZ_CHECK(q->pcr_selection.mask < (1u << 24));
    FUZZ_CHECK(SameBytes(attest::EncodeQuoteAttest(*q), data, size));
  }
  if (auto s = attest::ParseSignature(in); s.ok()) {
    FUZZ_CHECK(SameBytes(attest::EncodeSignature(*s), data, size));
    if (auto ak = attest::ParsePublic(w.ak_public); ak.ok())
      (void)attest::VerifyTpmSignature(*ak, w.evidence.quote_attest, *s);
  }
  if (auto p = attest::ParsePublic(in); p.ok()) {
    FUZZ_CHECK(SameBytes(attest::EncodePublic(*p), data, size));
    FUZZ_CHECK(p->name == attest::PublicName(in));
    FUZZ_CHECK(!p->spki_der.empty());
    (void)attest::CheckAttestationKey(*p);
    (void)attest::CheckEndorsementKey(*p);
  }

  auto e = attest::DecodeEvidence(in);
  if (!e.ok()) return 0;
  FUZZ_CHECK(SameBytes(attest::EncodeEvidence(*e), data, size));
  FUZZ_CHECK(attest::ValidateEvidence(*e).ok());
  FUZZ_CHECK(e->pcrs.values.size() == e->pcrs.selection.Indices().size());
  attest::Verdict v = attest::Verify(*e, w.expectation, w.store, {});
  FUZZ_CHECK(v.accepted == v.reasons.empty());
  FUZZ_CHECK(!v.Summary().empty());
  try {
    std::string text = v.ToJson().dump();
    FUZZ_CHECK(!text.empty());
  } catch (const nlohmann::json::exception&) {
    FuzzCheckFailed("Verdict::ToJson().dump() threw");
  }
  return 0;
}
