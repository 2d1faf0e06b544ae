#include "attest/esys_tpm.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <bit>
#include <cstdio>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>

namespace sod::attest {

namespace {

// ---------------------------------------------------------------------------------------------
// Errors

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// Maps a TSS return code to a Status (contract in esys_tpm.h, "Errors").
Status TssError(std::string_view what, TSS2_RC rc) {
  const uint32_t layer = rc & TSS2_RC_LAYER_MASK;
  const uint32_t base = rc & 0xffffu;
  Errc code = Errc::kInternal;
  if (layer == TSS2_TPM_RC_LAYER || layer == TSS2_RESMGR_TPM_RC_LAYER) {
    code = Errc::kCrypto;  // the TPM itself refused the command
  } else if (base == TSS2_BASE_RC_TRY_AGAIN) {
    code = Errc::kTimeout;
  } else if (layer == TSS2_TCTI_RC_LAYER || layer == TSS2_RESMGR_RC_LAYER ||
             base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_NO_CONNECTION ||
             base == TSS2_BASE_RC_MALFORMED_RESPONSE ||
             base == TSS2_BASE_RC_INSUFFICIENT_RESPONSE) {
    code = Errc::kIo;
  }
  // Tss2_RC_Decode returns a static buffer: copy it at once.
  const char* text = Tss2_RC_Decode(rc);
  return Error(code,
               std::string(what) + ": " + (text ? text : "unknown error") + " (" + Hex32(rc) + ")");
}

// ---------------------------------------------------------------------------------------------
// SHA-256

Result<PcrDigest> Sha256(ByteSpan data) {
  PcrDigest out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size())
    return Error(Errc::kCrypto, "SHA-256 failed");
  return out;
}

// ---------------------------------------------------------------------------------------------
// SIGPIPE: socket TCTIs write() to the TPM connection; if the TPM went away, the kernel would
// raise SIGPIPE in this thread. Blocked for the length of a call, discarded if raised meanwhile.

class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    blocked_ = pthread_sigmask(SIG_BLOCK, &pipe_, &old_) == 0;
    sigset_t pending;
    was_pending_ = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
  }
  ~ScopedSigpipeBlock() {
    if (!blocked_) return;
    const int saved_errno = errno;
    sigset_t pending;
    if (!was_pending_ && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
      const timespec zero{};
      while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved_errno;
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool blocked_ = false;
  bool was_pending_ = false;
};

// ---------------------------------------------------------------------------------------------
// One TCTI + ESYS context, closed on destruction.

class Connection {
 public:
  Connection() = default;
  ~Connection() {
    if (esys_ != nullptr) Esys_Finalize(&esys_);
    if (tcti_ != nullptr) Tss2_TctiLdr_Finalize(&tcti_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Status Init(const std::string& tcti, int32_t timeout_ms) {
    TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &tcti_);
    if (rc != TSS2_RC_SUCCESS) {
      tcti_ = nullptr;
      Status s = TssError("loading TCTI", rc);
      // Whatever the layer, a TCTI that does not load means no TPM to talk to.
      return Error(Errc::kIo, s.message());
    }
    rc = Esys_Initialize(&esys_, tcti_, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      esys_ = nullptr;
      return TssError("Esys_Initialize", rc);
    }
    if (timeout_ms > 0) {
      rc = Esys_SetTimeout(esys_, timeout_ms);
      if (rc != TSS2_RC_SUCCESS) return TssError("Esys_SetTimeout", rc);
    }
    return Status::Ok();
  }

  ESYS_CONTEXT* esys() const { return esys_; }

 private:
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
};

// ESAPI output buffers.
struct EsysFree {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

// An ESYS_TR that is flushed (a transient object in the TPM) or only closed (the ESYS handle of
// a persistent object) when the scope ends.
class ScopedTr {
 public:
  enum class Kind { kFlush, kClose };
  ScopedTr(ESYS_CONTEXT* ctx, Kind kind) : ctx_(ctx), kind_(kind) {}
  ~ScopedTr() { Reset(); }
  ScopedTr(const ScopedTr&) = delete;
  ScopedTr& operator=(const ScopedTr&) = delete;

  ESYS_TR* out() { return &tr_; }
  ESYS_TR get() const { return tr_; }
  // Flushes or closes now; errors are ignored (the connection may be gone, and then the TPM
  // call that failed is the error to report).
  void Reset() {
    if (tr_ == ESYS_TR_NONE) return;
    if (kind_ == Kind::kFlush) {
      Esys_FlushContext(ctx_, tr_);
    } else {
      Esys_TR_Close(ctx_, &tr_);
    }
    tr_ = ESYS_TR_NONE;
  }

 private:
  ESYS_CONTEXT* ctx_;
  Kind kind_;
  ESYS_TR tr_ = ESYS_TR_NONE;
};

// ---------------------------------------------------------------------------------------------
// Templates

// PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the auth policy of the TCG default EKs
// (TCG EK Credential Profile 2.0, templates L-1 and L-2).
constexpr uint8_t kEkAuthPolicy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

// An ECC NIST P-256 storage key (restricted decryption, AES-128-CFB, no scheme) with these
// attributes besides restricted | decrypt: the shape of both the EK and the SRK.
TPMT_PUBLIC EccStorageKeyTemplate(TPMA_OBJECT attributes) {
  TPMT_PUBLIC p{};
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = attributes | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  TPMS_ECC_PARMS& ecc = p.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_AES;
  ecc.symmetric.keyBits.aes = 128;
  ecc.symmetric.mode.aes = TPM2_ALG_CFB;
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return p;
}

// TCG EK Credential Profile template L-2: ECC NIST P-256 storage key (restricted decryption),
// AES-128-CFB, 32 zero bytes as unique.x and unique.y. Same as `tpm2_createek -G ecc`.
TPMT_PUBLIC EkTemplate() {
  TPMT_PUBLIC p = EccStorageKeyTemplate(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                        TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                        TPMA_OBJECT_ADMINWITHPOLICY);
  p.authPolicy.size = sizeof(kEkAuthPolicy);
  std::memcpy(p.authPolicy.buffer, kEkAuthPolicy, sizeof(kEkAuthPolicy));
  p.unique.ecc.x.size = 32;  // zeros
  p.unique.ecc.y.size = 32;
  return p;
}

// The AK: restricted ECDSA-SHA256 P-256 signing key with empty auth.
//
// It is a primary of the endorsement hierarchy, not a child of the EK. A child of the EK would
// need a PolicySecret(TPM_RH_ENDORSEMENT) policy session at every load (the EK has
// adminWithPolicy and no userWithAuth), and would be no more bound to this TPM: both derive
// from the endorsement primary seed and both are fixedTPM. What ties the AK to the EK for a
// remote party is a credential activation (TPM2_MakeCredential/ActivateCredential) or, in sod,
// the operator who enrolls both public keys together; not the parent relation. A primary is
// also deterministic: evicted and recreated from this template, it is the same key again
// (until the endorsement seed changes).
TPMT_PUBLIC AkTemplate() {
  TPMT_PUBLIC p{};
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                       TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
  TPMS_ECC_PARMS& ecc = p.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_NULL;
  ecc.scheme.scheme = TPM2_ALG_ECDSA;
  ecc.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return p;
}

// The storage primary key (SRK) that sealed objects are children of: the TCG-style ECC NIST P-256
// storage key of the owner hierarchy (restricted decryption, AES-128-CFB, empty auth, noDA),
// with an empty unique field: the key `tpm2_createprimary -C o -G ecc` makes with noDA added.
// Derived from the owner seed, so CreatePrimary yields the same key every time until the owner
// hierarchy is cleared (TPM2_Clear), which makes every sealed blob of the TPM unloadable.
TPMT_PUBLIC SrkTemplate() {
  return EccStorageKeyTemplate(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                               TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                               TPMA_OBJECT_NODA);
}

// A sealed data object: keyedhash without a scheme, the data given by the caller (no
// sensitiveDataOrigin), fixedTPM | fixedParent, empty authValue. userWithAuth CLEAR: the USER
// role (TPM2_Unseal) only through a policy session satisfying `auth_policy`. adminWithPolicy
// SET: the ADMIN role (TPM2_ObjectChangeAuth, ...) needs a policy too, and PolicyPCR alone
// does not grant it, so the empty authValue authorizes nothing.
constexpr TPMA_OBJECT kSealedObjectAttributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_ADMINWITHPOLICY;

TPMT_PUBLIC SealedObjectTemplate(const TPM2B_DIGEST& auth_policy) {
  TPMT_PUBLIC p{};
  p.type = TPM2_ALG_KEYEDHASH;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = kSealedObjectAttributes;
  p.authPolicy = auth_policy;
  p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  return p;
}

Result<Bytes> MarshalPublic(const TPMT_PUBLIC& pub) {
  Bytes out(sizeof(TPMT_PUBLIC));
  size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPMT_PUBLIC_Marshal(&pub, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return TssError("marshalling TPMT_PUBLIC", rc);
  out.resize(offset);
  return out;
}

// True when `actual` is `tmpl` apart from the unique field (the key itself).
Result<bool> MatchesTemplate(TPMT_PUBLIC actual, const TPMT_PUBLIC& tmpl) {
  actual.unique = tmpl.unique;
  SOD_ASSIGN_OR_RETURN(Bytes a, MarshalPublic(actual));
  SOD_ASSIGN_OR_RETURN(Bytes t, MarshalPublic(tmpl));
  return a == t;
}

// ---------------------------------------------------------------------------------------------
// PCR selections (SHA-256 bank only)

constexpr uint32_t kPcrMaskLimit = 1u << 24;

TPML_PCR_SELECTION ToTpmSelection(uint32_t mask) {
  TPML_PCR_SELECTION s{};
  s.count = 1;
  s.pcrSelections[0].hash = TPM2_ALG_SHA256;
  s.pcrSelections[0].sizeofSelect = 3;
  for (int i = 0; i < 3; ++i)
    s.pcrSelections[0].pcrSelect[i] = static_cast<uint8_t>(mask >> (8 * i));
  return s;
}

// The SHA-256 PCRs a TPM-produced selection names. Other banks, or PCRs above 23, are refused.
Result<uint32_t> FromTpmSelection(const TPML_PCR_SELECTION& s, std::string_view what) {
  if (s.count > TPM2_NUM_PCR_BANKS)
    return Error(Errc::kCrypto, std::string(what) + ": PCR selection count out of range");
  uint32_t mask = 0;
  for (uint32_t i = 0; i < s.count; ++i) {
    const TPMS_PCR_SELECTION& b = s.pcrSelections[i];
    if (b.sizeofSelect > TPM2_PCR_SELECT_MAX)
      return Error(Errc::kCrypto, std::string(what) + ": PCR select size out of range");
    uint32_t bank = 0;
    for (uint32_t j = 0; j < b.sizeofSelect; ++j)
      bank |= static_cast<uint32_t>(b.pcrSelect[j]) << (8 * j);
    if (bank == 0) continue;
    if (b.hash != TPM2_ALG_SHA256)
      return Error(Errc::kCrypto, std::string(what) + ": PCRs of a bank other than SHA-256");
    if (bank >= kPcrMaskLimit)
      return Error(Errc::kCrypto, std::string(what) + ": PCR index above 23");
    mask |= bank;
  }
  return mask;
}

Status CheckSelection(PcrSelection selection) {
  if (selection.mask == 0) return Error(Errc::kInvalidArgument, "empty PCR selection");
  if (selection.mask >= kPcrMaskLimit)
    return Error(Errc::kInvalidArgument, "PCR selection names PCRs above 23");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Operations inside one connection

constexpr int kConsistencyAttempts = 3;

// Reads the SHA-256 PCRs of `selection`. A TPM returns at most 8 digests per TPM2_PCR_Read; if
// a PCR changed between two partial reads (the update counter moved), the read starts over.
Result<PcrValues> ReadPcrsIn(ESYS_CONTEXT* ctx, PcrSelection selection) {
  for (int attempt = 0; attempt < kConsistencyAttempts; ++attempt) {
    std::array<PcrDigest, 24> by_index{};
    uint32_t remaining = selection.mask;
    bool have_counter = false;
    bool consistent = true;
    uint32_t first_counter = 0;
    while (remaining != 0) {
      const TPML_PCR_SELECTION in = ToTpmSelection(remaining);
      uint32_t counter = 0;
      TPML_PCR_SELECTION* sel_out_raw = nullptr;
      TPML_DIGEST* values_raw = nullptr;
      TSS2_RC rc = Esys_PCR_Read(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &in, &counter,
                                 &sel_out_raw, &values_raw);
      EsysPtr<TPML_PCR_SELECTION> sel_out(sel_out_raw);
      EsysPtr<TPML_DIGEST> values(values_raw);
      if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PCR_Read", rc);
      if (!sel_out || !values) return Error(Errc::kInternal, "TPM2_PCR_Read: no output");
      if (have_counter && counter != first_counter) {
        consistent = false;
        break;
      }
      have_counter = true;
      first_counter = counter;
      SOD_ASSIGN_OR_RETURN(uint32_t got, FromTpmSelection(*sel_out, "TPM2_PCR_Read"));
      if (got == 0)
        return Error(Errc::kUnsupported,
                     "TPM2_PCR_Read: the TPM has none of the requested PCRs in a SHA-256 bank");
      if ((got & ~remaining) != 0)
        return Error(Errc::kCrypto, "TPM2_PCR_Read: the TPM returned PCRs that were not asked for");
      if (values->count != static_cast<uint32_t>(std::popcount(got)) ||
          values->count > sizeof(values->digests) / sizeof(values->digests[0]))
        return Error(Errc::kCrypto, "TPM2_PCR_Read: digest count does not match the selection");
      uint32_t k = 0;
      for (uint32_t pcr = 0; pcr < 24; ++pcr) {
        if (!((got >> pcr) & 1u)) continue;
        const TPM2B_DIGEST& d = values->digests[k++];
        if (d.size != sizeof(PcrDigest))
          return Error(Errc::kCrypto, "TPM2_PCR_Read: a SHA-256 PCR value is not 32 bytes");
        std::memcpy(by_index[pcr].data(), d.buffer, sizeof(PcrDigest));
      }
      remaining &= ~got;
    }
    if (!consistent) continue;
    PcrValues out;
    out.selection = selection;
    for (uint32_t pcr : selection.Indices()) out.values.push_back(by_index[pcr]);
    return out;
  }
  return Error(Errc::kIo, "TPM2_PCR_Read: PCRs kept changing while being read");
}

// True when a persistent object exists at `handle`.
Result<bool> IsPersisted(ESYS_CONTEXT* ctx, uint32_t handle) {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* cap_raw = nullptr;
  TSS2_RC rc = Esys_GetCapability(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                  handle, 1, &more, &cap_raw);
  EsysPtr<TPMS_CAPABILITY_DATA> cap(cap_raw);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_GetCapability(handles)", rc);
  if (!cap || cap->capability != TPM2_CAP_HANDLES)
    return Error(Errc::kCrypto, "TPM2_GetCapability(handles): unexpected answer");
  const TPML_HANDLE& h = cap->data.handles;
  return h.count >= 1 && h.count <= TPM2_MAX_CAP_HANDLES && h.handle[0] == handle;
}

// Opens the ESYS handle of the persistent object at `handle`; kNotFound if there is none.
Status LoadPersisted(ESYS_CONTEXT* ctx, uint32_t handle, std::string_view name, ScopedTr& tr) {
  SOD_ASSIGN_OR_RETURN(bool present, IsPersisted(ctx, handle));
  if (!present)
    return Error(Errc::kNotFound, std::string(name) +
                                      " not provisioned: no key at persistent handle " +
                                      Hex32(handle) + " (EsysTpm::Provision creates it)");
  TSS2_RC rc =
      Esys_TR_FromTPMPublic(ctx, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, tr.out());
  if (rc != TSS2_RC_SUCCESS)
    return TssError(std::string(name) + " at " + Hex32(handle) + ": loading its public area", rc);
  return Status::Ok();
}

Result<TPMT_PUBLIC> ReadPublicIn(ESYS_CONTEXT* ctx, ESYS_TR tr, std::string_view name) {
  TPM2B_PUBLIC* pub_raw = nullptr;
  TSS2_RC rc = Esys_ReadPublic(ctx, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub_raw, nullptr,
                               nullptr);
  EsysPtr<TPM2B_PUBLIC> pub(pub_raw);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_ReadPublic(" + std::string(name) + ")", rc);
  if (!pub) return Error(Errc::kInternal, "TPM2_ReadPublic: no output");
  return pub->publicArea;
}

Result<Bytes> PersistedPublic(ESYS_CONTEXT* ctx, uint32_t handle, std::string_view name) {
  ScopedTr tr(ctx, ScopedTr::Kind::kClose);
  SOD_RETURN_IF_ERROR(LoadPersisted(ctx, handle, name, tr));
  SOD_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ReadPublicIn(ctx, tr.get(), name));
  return MarshalPublic(pub);
}

// Checks the key persisted at `handle` against `tmpl`.
Status CheckPersisted(ESYS_CONTEXT* ctx, uint32_t handle, const TPMT_PUBLIC& tmpl,
                      std::string_view name) {
  ScopedTr tr(ctx, ScopedTr::Kind::kClose);
  SOD_RETURN_IF_ERROR(LoadPersisted(ctx, handle, name, tr));
  SOD_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ReadPublicIn(ctx, tr.get(), name));
  SOD_ASSIGN_OR_RETURN(bool match, MatchesTemplate(pub, tmpl));
  if (!match)
    return Error(Errc::kState, "persistent handle " + Hex32(handle) +
                                   " holds a key that is not the " + std::string(name) +
                                   " sod expects (other algorithm or attributes); evict it or "
                                   "configure another handle");
  return Status::Ok();
}

// TPM2_CreatePrimary of `tmpl` (empty auth) in `hierarchy` (authorized by its empty password),
// checked against the template; the transient object goes to `obj`.
Status CreatePrimaryIn(ESYS_CONTEXT* ctx, ESYS_TR hierarchy, std::string_view hierarchy_name,
                       const TPMT_PUBLIC& tmpl, std::string_view name, ScopedTr& obj) {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC in_public{};
  in_public.publicArea = tmpl;
  TPM2B_DATA outside_info{};
  TPML_PCR_SELECTION creation_pcr{};
  TPM2B_PUBLIC* out_pub_raw = nullptr;
  TSS2_RC rc = Esys_CreatePrimary(ctx, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                  &sensitive, &in_public, &outside_info, &creation_pcr, obj.out(),
                                  &out_pub_raw, nullptr, nullptr, nullptr);
  EsysPtr<TPM2B_PUBLIC> out_pub(out_pub_raw);
  if (rc != TSS2_RC_SUCCESS) {
    Status err = TssError("TPM2_CreatePrimary(" + std::string(name) + ", " +
                              std::string(hierarchy_name) + " hierarchy)",
                          rc);
    if (rc == TPM2_RC_OBJECT_MEMORY) {
      // Without a resource manager, objects other clients left loaded fill the few slots.
      return Error(err.code(), err.message() +
                                   "; no free transient object slot (objects left "
                                   "loaded by other clients? tpm2_flushcontext -t)");
    }
    return err;
  }
  if (!out_pub) return Error(Errc::kInternal, "TPM2_CreatePrimary: no output");
  SOD_ASSIGN_OR_RETURN(bool match, MatchesTemplate(out_pub->publicArea, tmpl));
  if (!match)
    return Error(Errc::kCrypto, "TPM2_CreatePrimary(" + std::string(name) +
                                    "): the TPM made a key other than asked");
  return Status::Ok();
}

// Makes sure the key of `tmpl` is persisted at `handle` (a primary of the endorsement
// hierarchy).
Status EnsurePersistedPrimary(ESYS_CONTEXT* ctx, uint32_t handle, const TPMT_PUBLIC& tmpl,
                              std::string_view name) {
  SOD_ASSIGN_OR_RETURN(bool present, IsPersisted(ctx, handle));
  if (present) return CheckPersisted(ctx, handle, tmpl, name);

  ScopedTr obj(ctx, ScopedTr::Kind::kFlush);
  SOD_RETURN_IF_ERROR(CreatePrimaryIn(ctx, ESYS_TR_RH_ENDORSEMENT, "endorsement", tmpl, name, obj));

  ScopedTr persisted(ctx, ScopedTr::Kind::kClose);
  TSS2_RC rc = Esys_EvictControl(ctx, ESYS_TR_RH_OWNER, obj.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, handle, persisted.out());
  if (rc != TSS2_RC_SUCCESS) {
    Status err =
        TssError("TPM2_EvictControl(" + std::string(name) + " to " + Hex32(handle) + ")", rc);
    // Another client may have persisted the same key meanwhile: accept it if it matches.
    obj.Reset();
    Result<bool> now = IsPersisted(ctx, handle);
    if (now.ok() && *now) return CheckPersisted(ctx, handle, tmpl, name);
    return err;
  }
  return Status::Ok();
}

Result<Bytes> MarshalSignature(const TPMT_SIGNATURE& sig) {
  Bytes out(sizeof(TPMT_SIGNATURE));
  size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPMT_SIGNATURE_Marshal(&sig, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return TssError("marshalling TPMT_SIGNATURE", rc);
  out.resize(offset);
  return out;
}

// The digest a quote over `pcrs` carries: SHA-256 of the PCR values in ascending order.
Result<PcrDigest> PcrCompositeDigest(const PcrValues& pcrs) {
  Bytes concat;
  concat.reserve(pcrs.values.size() * sizeof(PcrDigest));
  for (const PcrDigest& d : pcrs.values) concat.insert(concat.end(), d.begin(), d.end());
  return Sha256(concat);
}

// TPM2_Quote with the AK at `ak_handle`, then the PCR read, then the checks of esys_tpm.h.
Result<TpmQuote> QuoteIn(ESYS_CONTEXT* ctx, uint32_t ak_handle, ByteSpan qualifying,
                         PcrSelection selection) {
  ScopedTr ak(ctx, ScopedTr::Kind::kClose);
  SOD_RETURN_IF_ERROR(LoadPersisted(ctx, ak_handle, "AK", ak));

  TPM2B_DATA qd{};
  qd.size = static_cast<UINT16>(qualifying.size());
  if (!qualifying.empty()) std::memcpy(qd.buffer, qualifying.data(), qualifying.size());
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the AK's own scheme: ECDSA-SHA256
  const TPML_PCR_SELECTION sel = ToTpmSelection(selection.mask);

  for (int attempt = 0; attempt < kConsistencyAttempts; ++attempt) {
    TPM2B_ATTEST* quoted_raw = nullptr;
    TPMT_SIGNATURE* sig_raw = nullptr;
    TSS2_RC rc = Esys_Quote(ctx, ak.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qd,
                            &scheme, &sel, &quoted_raw, &sig_raw);
    EsysPtr<TPM2B_ATTEST> quoted(quoted_raw);
    EsysPtr<TPMT_SIGNATURE> sig(sig_raw);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_Quote", rc);
    if (!quoted || !sig) return Error(Errc::kInternal, "TPM2_Quote: no output");
    if (quoted->size > sizeof(quoted->attestationData))
      return Error(Errc::kCrypto, "TPM2_Quote: attestation size out of range");

    SOD_ASSIGN_OR_RETURN(PcrValues pcrs, ReadPcrsIn(ctx, selection));

    // Check what the TPM signed before handing it out.
    TPMS_ATTEST attest{};
    size_t offset = 0;
    rc = Tss2_MU_TPMS_ATTEST_Unmarshal(quoted->attestationData, quoted->size, &offset, &attest);
    if (rc != TSS2_RC_SUCCESS || offset != quoted->size)
      return Error(Errc::kCrypto, "TPM2_Quote: the TPMS_ATTEST does not parse");
    if (attest.magic != TPM2_GENERATED_VALUE || attest.type != TPM2_ST_ATTEST_QUOTE)
      return Error(Errc::kCrypto, "TPM2_Quote: not a TPM-generated quote");
    if (attest.extraData.size != qualifying.size() ||
        (!qualifying.empty() &&
         std::memcmp(attest.extraData.buffer, qualifying.data(), qualifying.size()) != 0))
      return Error(Errc::kCrypto, "TPM2_Quote: extraData is not the qualifying data");
    SOD_ASSIGN_OR_RETURN(uint32_t quoted_mask,
                         FromTpmSelection(attest.attested.quote.pcrSelect, "TPM2_Quote"));
    if (quoted_mask != selection.mask)
      return Error(Errc::kCrypto, "TPM2_Quote: the quote covers other PCRs than asked");
    SOD_ASSIGN_OR_RETURN(PcrDigest expected, PcrCompositeDigest(pcrs));
    const TPM2B_DIGEST& got = attest.attested.quote.pcrDigest;
    if (got.size != sizeof(PcrDigest) ||
        std::memcmp(got.buffer, expected.data(), sizeof(PcrDigest)) != 0)
      continue;  // a PCR changed between the quote and the read: quote again

    TpmQuote out;
    out.attest.assign(quoted->attestationData, quoted->attestationData + quoted->size);
    SOD_ASSIGN_OR_RETURN(out.signature, MarshalSignature(*sig));
    out.pcrs = std::move(pcrs);
    return out;
  }
  return Error(Errc::kIo,
               "TPM2_Quote: the quoted PCR digest never matched the PCRs read after it (PCRs "
               "kept changing)");
}

// ---------------------------------------------------------------------------------------------
// Sealing (attest/README.md, "Sealing")
//
// Blob: magic "sod-seal" | u16 version (1) | u32 PCR mask | TPM2B_PUBLIC | TPM2B_PRIVATE.
// Our own fields are little-endian; the two TPM2B are as the TPM marshals them (big-endian u16
// size, then the contents), so each is also a tpm2-tools "tss" file for tpm2_load -u / -r.

constexpr uint8_t kSealMagic[8] = {'s', 'o', 'd', '-', 's', 'e', 'a', 'l'};
constexpr uint16_t kSealVersion = 1;
// The largest TPM2B contents we accept: what fits the tss2 structures they decode into.
constexpr size_t kMaxSealedPublic = sizeof(TPMT_PUBLIC);
constexpr size_t kMaxSealedPrivate = sizeof(TPM2B_PRIVATE{}.buffer);
constexpr size_t kMaxSealedBlob =
    sizeof(kSealMagic) + 2 + 4 + 2 + kMaxSealedPublic + 2 + kMaxSealedPrivate;

struct SealedBlob {
  uint32_t mask = 0;
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
};

Status Malformed(std::string_view why) {
  return Error(Errc::kMalformed, "sealed blob: " + std::string(why));
}

// One TPM2B field: a big-endian u16 size of 1..max, then the contents (borrowed).
bool TakeTpm2b(ByteReader& r, size_t max, ByteSpan& contents) {
  uint8_t be[2];
  if (!r.Raw(be, sizeof(be))) return false;
  const size_t n = (size_t{be[0]} << 8) | be[1];
  if (n == 0 || n > max) return false;
  return r.Raw(n, contents);
}

Result<Bytes> EncodeSealedBlob(uint32_t mask, const TPM2B_PUBLIC& pub, const TPM2B_PRIVATE& priv) {
  Bytes out;
  ByteWriter w(out);
  w.Raw(ByteSpan(kSealMagic, sizeof(kSealMagic)));
  w.U16(kSealVersion);
  w.U32(mask);
  const size_t header = out.size();
  out.resize(kMaxSealedBlob);
  size_t offset = header;
  TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return TssError("marshalling the sealed TPM2B_PUBLIC", rc);
  rc = Tss2_MU_TPM2B_PRIVATE_Marshal(&priv, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return TssError("marshalling the sealed TPM2B_PRIVATE", rc);
  out.resize(offset);
  return out;
}

// Strict decoding of a blob from outside (a file that anyone may have altered). Checks the
// framing and that the public area is that of a sealed object as Seal makes them; whether the
// private part belongs to it and to this TPM is for TPM2_Load to check.
Result<SealedBlob> DecodeSealedBlob(ByteSpan blob) {
  if (blob.size() > kMaxSealedBlob) return Malformed("longer than any sealed blob");
  ByteReader r(blob);
  uint8_t magic[sizeof(kSealMagic)];
  uint16_t version = 0;
  SealedBlob out;
  if (!r.Raw(magic, sizeof(magic)) || !r.U16(version) || !r.U32(out.mask))
    return Malformed("truncated header");
  if (std::memcmp(magic, kSealMagic, sizeof(kSealMagic)) != 0) return Malformed("bad magic");
  if (version != kSealVersion)
    return Malformed("version " + std::to_string(version) + ", expected " +
                     std::to_string(kSealVersion));
  if (out.mask == 0 || out.mask >= kPcrMaskLimit)
    return Malformed("PCR selection empty or above PCR 23");

  ByteSpan pub;
  if (!TakeTpm2b(r, kMaxSealedPublic, pub)) return Malformed("bad or truncated TPM2B_PUBLIC");
  size_t offset = 0;
  if (Tss2_MU_TPMT_PUBLIC_Unmarshal(pub.data(), pub.size(), &offset, &out.pub.publicArea) !=
          TSS2_RC_SUCCESS ||
      offset != pub.size())
    return Malformed("the TPMT_PUBLIC does not parse");
  out.pub.size = static_cast<UINT16>(pub.size());

  ByteSpan priv;
  if (!TakeTpm2b(r, kMaxSealedPrivate, priv)) return Malformed("bad or truncated TPM2B_PRIVATE");
  out.priv.size = static_cast<UINT16>(priv.size());
  std::memcpy(out.priv.buffer, priv.data(), priv.size());
  if (!r.done()) return Malformed("trailing bytes");

  const TPMT_PUBLIC& p = out.pub.publicArea;
  if (p.authPolicy.size != sizeof(PcrDigest) || p.unique.keyedHash.size != sizeof(PcrDigest))
    return Malformed("not a sealed object of sod (policy or unique size)");
  SOD_ASSIGN_OR_RETURN(bool match, MatchesTemplate(p, SealedObjectTemplate(p.authPolicy)));
  if (!match) return Malformed("not a sealed object of sod (type, algorithms or attributes)");
  return out;
}

// True when `rc` is the TPM's response code `code`, whatever handle, session or parameter a
// format-one code names.
bool IsTpmRc(TSS2_RC rc, TPM2_RC code) {
  const uint32_t layer = rc & TSS2_RC_LAYER_MASK;
  if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER) return false;
  const uint32_t v = rc & 0xffffu;
  if ((v & TPM2_RC_FMT1) != 0) return (v & (TPM2_RC_FMT1 | 0x3fu)) == code;
  return v == code;
}

// Zeroes a TPM structure that held secret bytes when the scope ends.
template <typename T>
class ScopedCleanse {
 public:
  explicit ScopedCleanse(T& v) : v_(v) {}
  ~ScopedCleanse() { OPENSSL_cleanse(&v_, sizeof(T)); }
  ScopedCleanse(const ScopedCleanse&) = delete;
  ScopedCleanse& operator=(const ScopedCleanse&) = delete;

 private:
  T& v_;
};

// ESAPI's TPM2B_SENSITIVE_DATA output, wiped before it is freed.
struct CleanseAndFree {
  void operator()(TPM2B_SENSITIVE_DATA* p) const {
    OPENSSL_cleanse(p, sizeof(*p));
    Esys_Free(p);
  }
};

// A session salted with the SRK (ECDH with its public key, so its secret crosses the TPM bus
// encrypted) that encrypts the first command parameter (TPMA_SESSION_DECRYPT: the secret given
// to TPM2_Create) or response parameter (TPMA_SESSION_ENCRYPT: the secret TPM2_Unseal
// returns) with AES-128-CFB. `kind` is TPM2_SE_HMAC or TPM2_SE_POLICY.
Status StartSaltedSession(ESYS_CONTEXT* ctx, ESYS_TR srk, TPM2_SE kind, ScopedTr& session) {
  TPMT_SYM_DEF aes{};
  aes.algorithm = TPM2_ALG_AES;
  aes.keyBits.aes = 128;
  aes.mode.aes = TPM2_ALG_CFB;
  TSS2_RC rc =
      Esys_StartAuthSession(ctx, srk, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            nullptr, kind, &aes, TPM2_ALG_SHA256, session.out());
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_StartAuthSession(salted with the SRK)", rc);
  return Status::Ok();
}

Status SetSessionAttributes(ESYS_CONTEXT* ctx, ESYS_TR session, TPMA_SESSION attributes) {
  TSS2_RC rc =
      Esys_TRSess_SetAttributes(ctx, session, attributes | TPMA_SESSION_CONTINUESESSION, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TssError("Esys_TRSess_SetAttributes", rc);
  return Status::Ok();
}

// PolicyPCR over the current SHA-256 values of `mask`, in a trial session: the authPolicy a
// sealed object needs so that a policy session with the same PolicyPCR unseals it.
Result<TPM2B_DIGEST> TrialPolicyPcr(ESYS_CONTEXT* ctx, uint32_t mask) {
  ScopedTr trial(ctx, ScopedTr::Kind::kFlush);
  TPMT_SYM_DEF none{};
  none.algorithm = TPM2_ALG_NULL;
  TSS2_RC rc = Esys_StartAuthSession(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, nullptr, TPM2_SE_TRIAL, &none, TPM2_ALG_SHA256,
                                     trial.out());
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_StartAuthSession(trial)", rc);
  const TPM2B_DIGEST current{};  // empty: the TPM takes the PCRs' current values
  const TPML_PCR_SELECTION sel = ToTpmSelection(mask);
  rc = Esys_PolicyPCR(ctx, trial.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &current, &sel);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PolicyPCR(trial)", rc);
  TPM2B_DIGEST* digest_raw = nullptr;
  rc =
      Esys_PolicyGetDigest(ctx, trial.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digest_raw);
  EsysPtr<TPM2B_DIGEST> digest(digest_raw);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PolicyGetDigest", rc);
  if (!digest) return Error(Errc::kInternal, "TPM2_PolicyGetDigest: no output");
  if (digest->size != sizeof(PcrDigest))
    return Error(Errc::kCrypto, "TPM2_PolicyGetDigest: not a SHA-256 digest");
  return *digest;
}

std::string PcrList(uint32_t mask) {
  std::string out;
  for (uint32_t pcr : PcrSelection{mask}.Indices()) {
    if (!out.empty()) out += ",";
    out += std::to_string(pcr);
  }
  return out;
}

Result<Bytes> SealIn(ESYS_CONTEXT* ctx, ByteSpan secret, PcrSelection pcrs) {
  ScopedTr srk(ctx, ScopedTr::Kind::kFlush);
  SOD_RETURN_IF_ERROR(CreatePrimaryIn(ctx, ESYS_TR_RH_OWNER, "owner", SrkTemplate(), "SRK", srk));
  SOD_ASSIGN_OR_RETURN(TPM2B_DIGEST policy, TrialPolicyPcr(ctx, pcrs.mask));

  ScopedTr session(ctx, ScopedTr::Kind::kFlush);
  SOD_RETURN_IF_ERROR(StartSaltedSession(ctx, srk.get(), TPM2_SE_HMAC, session));
  SOD_RETURN_IF_ERROR(SetSessionAttributes(ctx, session.get(), TPMA_SESSION_DECRYPT));

  TPM2B_SENSITIVE_CREATE sensitive{};
  ScopedCleanse wipe_sensitive(sensitive);
  sensitive.sensitive.data.size = static_cast<UINT16>(secret.size());
  std::memcpy(sensitive.sensitive.data.buffer, secret.data(), secret.size());
  TPM2B_PUBLIC in_public{};
  in_public.publicArea = SealedObjectTemplate(policy);
  TPM2B_DATA outside_info{};
  TPML_PCR_SELECTION creation_pcr{};
  TPM2B_PRIVATE* priv_raw = nullptr;
  TPM2B_PUBLIC* pub_raw = nullptr;
  TSS2_RC rc =
      Esys_Create(ctx, srk.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &in_public,
                  &outside_info, &creation_pcr, &priv_raw, &pub_raw, nullptr, nullptr, nullptr);
  EsysPtr<TPM2B_PRIVATE> priv(priv_raw);
  EsysPtr<TPM2B_PUBLIC> pub(pub_raw);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_Create(sealed object)", rc);
  if (!priv || !pub) return Error(Errc::kInternal, "TPM2_Create: no output");
  SOD_ASSIGN_OR_RETURN(bool match, MatchesTemplate(pub->publicArea, in_public.publicArea));
  if (!match)
    return Error(Errc::kCrypto,
                 "TPM2_Create(sealed object): the TPM made an object other than asked");
  if (priv->size == 0 || priv->size > sizeof(priv->buffer))
    return Error(Errc::kCrypto, "TPM2_Create(sealed object): private area size out of range");
  SOD_ASSIGN_OR_RETURN(Bytes blob, EncodeSealedBlob(pcrs.mask, *pub, *priv));
  // What Unseal will accept: the object must pass our own decoder.
  Result<SealedBlob> check = DecodeSealedBlob(blob);
  if (!check.ok())
    return Error(Errc::kCrypto, "TPM2_Create(sealed object): " + check.status().message());
  return blob;
}

Result<SecretBytes> UnsealIn(ESYS_CONTEXT* ctx, const SealedBlob& blob) {
  ScopedTr srk(ctx, ScopedTr::Kind::kFlush);
  SOD_RETURN_IF_ERROR(CreatePrimaryIn(ctx, ESYS_TR_RH_OWNER, "owner", SrkTemplate(), "SRK", srk));

  ScopedTr object(ctx, ScopedTr::Kind::kFlush);
  TSS2_RC rc = Esys_Load(ctx, srk.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &blob.priv,
                         &blob.pub, object.out());
  if (rc != TSS2_RC_SUCCESS) {
    Status err = TssError("TPM2_Load(sealed object)", rc);
    if (IsTpmRc(rc, TPM2_RC_INTEGRITY))
      return Error(Errc::kCrypto, err.message() +
                                      "; the blob was not sealed by this TPM (another host, the "
                                      "owner hierarchy cleared since, or the blob altered)");
    return err;
  }

  const TPML_PCR_SELECTION sel = ToTpmSelection(blob.mask);
  const TPM2B_DIGEST current{};
  for (int attempt = 0; attempt < kConsistencyAttempts; ++attempt) {
    ScopedTr session(ctx, ScopedTr::Kind::kFlush);
    SOD_RETURN_IF_ERROR(StartSaltedSession(ctx, srk.get(), TPM2_SE_POLICY, session));
    rc = Esys_PolicyPCR(ctx, session.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &current,
                        &sel);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PolicyPCR", rc);
    SOD_RETURN_IF_ERROR(SetSessionAttributes(ctx, session.get(), TPMA_SESSION_ENCRYPT));
    TPM2B_SENSITIVE_DATA* out_raw = nullptr;
    rc = Esys_Unseal(ctx, object.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, &out_raw);
    std::unique_ptr<TPM2B_SENSITIVE_DATA, CleanseAndFree> out(out_raw);
    if (IsTpmRc(rc, TPM2_RC_PCR_CHANGED)) continue;  // a PCR moved after PolicyPCR: again
    if (IsTpmRc(rc, TPM2_RC_POLICY_FAIL))
      return Error(Errc::kRefused,
                   "host PCRs changed since sealing: the PCR policy of the sealed "
                   "object (SHA-256 PCRs " +
                       PcrList(blob.mask) + ") no longer holds; " +
                       TssError("TPM2_Unseal", rc).message());
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_Unseal", rc);
    if (!out) return Error(Errc::kInternal, "TPM2_Unseal: no output");
    if (out->size == 0 || out->size > Tpm::kMaxSealedSecret)
      return Error(Errc::kCrypto, "TPM2_Unseal: secret size out of range");
    return SecretBytes(ByteSpan(out->buffer, out->size));
  }
  return Error(Errc::kIo, "TPM2_Unseal: PCRs kept changing between TPM2_PolicyPCR and the unseal");
}

// Runs f(ESYS_CONTEXT*) on a fresh connection to `tcti` with SIGPIPE blocked, and prefixes an
// error with the TCTI. f returns a Status or a Result.
Status WithTpmContext(const Status& s, const std::string& tcti) {
  return s.WithContext("TPM " + tcti);
}
template <typename T>
Result<T> WithTpmContext(Result<T> r, const std::string& tcti) {
  if (!r.ok()) return r.status().WithContext("TPM " + tcti);
  return r;
}

template <typename F>
auto OnConnection(const std::string& tcti, int32_t timeout_ms, F f) -> decltype(f(nullptr)) {
  ScopedSigpipeBlock no_sigpipe;
  Connection c;
  Status s = c.Init(tcti, timeout_ms);
  if (!s.ok()) return s.WithContext("TPM " + tcti);
  return WithTpmContext(f(c.esys()), tcti);
}

}  // namespace

// -----------------------------------------------------------------------------------------------

Result<std::unique_ptr<EsysTpm>> EsysTpm::Open(std::string tcti, EsysTpmOptions options) {
  for (uint32_t h : {options.ek_handle, options.ak_handle}) {
    if ((h >> 24) != (TPM2_HR_PERSISTENT >> 24))
      return Error(Errc::kInvalidArgument, "TPM: " + Hex32(h) + " is not a persistent handle");
  }
  if (options.ek_handle == options.ak_handle)
    return Error(Errc::kInvalidArgument, "TPM: EK and AK need different persistent handles");
  std::unique_ptr<EsysTpm> tpm(new EsysTpm(std::move(tcti), options));
  SOD_RETURN_IF_ERROR(
      OnConnection(tpm->tcti_, options.command_timeout_ms, [](ESYS_CONTEXT* ctx) -> Status {
        TPMI_YES_NO more = TPM2_NO;
        TPMS_CAPABILITY_DATA* cap_raw = nullptr;
        TSS2_RC rc =
            Esys_GetCapability(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                               TPM2_CAP_TPM_PROPERTIES, TPM2_PT_MANUFACTURER, 1, &more, &cap_raw);
        EsysPtr<TPMS_CAPABILITY_DATA> cap(cap_raw);
        if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_GetCapability", rc);
        return Status::Ok();
      }));
  return tpm;
}

Status EsysTpm::Provision() {
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms, [&](ESYS_CONTEXT* ctx) -> Status {
    SOD_RETURN_IF_ERROR(EnsurePersistedPrimary(ctx, options_.ek_handle, EkTemplate(), "EK"));
    return EnsurePersistedPrimary(ctx, options_.ak_handle, AkTemplate(), "AK");
  });
}

Result<Bytes> EsysTpm::AkPublic() {
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms, [&](ESYS_CONTEXT* ctx) {
    return PersistedPublic(ctx, options_.ak_handle, "AK");
  });
}

Result<Bytes> EsysTpm::EkPublic() {
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms, [&](ESYS_CONTEXT* ctx) {
    return PersistedPublic(ctx, options_.ek_handle, "EK");
  });
}

Result<PcrValues> EsysTpm::ReadPcrs(PcrSelection selection) {
  SOD_RETURN_IF_ERROR(CheckSelection(selection));
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms,
                      [&](ESYS_CONTEXT* ctx) { return ReadPcrsIn(ctx, selection); });
}

Result<TpmQuote> EsysTpm::Quote(ByteSpan qualifying, PcrSelection selection) {
  SOD_RETURN_IF_ERROR(CheckSelection(selection));
  if (qualifying.size() > 32)
    return Error(Errc::kInvalidArgument, "quote qualifying data above 32 bytes");
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms, [&](ESYS_CONTEXT* ctx) {
    return QuoteIn(ctx, options_.ak_handle, qualifying, selection);
  });
}

Status EsysTpm::ExtendPcr(uint32_t pcr, const PcrDigest& digest) {
  if (pcr >= 24) return Error(Errc::kInvalidArgument, "PCR " + std::to_string(pcr) + " above 23");
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms, [&](ESYS_CONTEXT* ctx) -> Status {
    TPML_DIGEST_VALUES values{};
    values.count = 1;
    values.digests[0].hashAlg = TPM2_ALG_SHA256;
    std::memcpy(values.digests[0].digest.sha256, digest.data(), digest.size());
    TSS2_RC rc = Esys_PCR_Extend(ctx, ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, &values);
    if (rc != TSS2_RC_SUCCESS)
      return TssError("TPM2_PCR_Extend(PCR " + std::to_string(pcr) + ")", rc);
    return Status::Ok();
  });
}

Result<Bytes> EsysTpm::Seal(ByteSpan secret, PcrSelection pcrs) {
  if (secret.empty() || secret.size() > kMaxSealedSecret)
    return Error(Errc::kInvalidArgument, "sealed secret of " + std::to_string(secret.size()) +
                                             " bytes, expected 1.." +
                                             std::to_string(kMaxSealedSecret));
  SOD_RETURN_IF_ERROR(CheckSelection(pcrs));
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms,
                      [&](ESYS_CONTEXT* ctx) { return SealIn(ctx, secret, pcrs); });
}

Result<SecretBytes> EsysTpm::Unseal(ByteSpan blob) {
  SOD_ASSIGN_OR_RETURN(SealedBlob decoded, DecodeSealedBlob(blob));
  std::lock_guard lock(mu_);
  return OnConnection(tcti_, options_.command_timeout_ms,
                      [&](ESYS_CONTEXT* ctx) { return UnsealIn(ctx, decoded); });
}

}  // namespace sod::attest
