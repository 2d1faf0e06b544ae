// OpensslPtr: std::unique_ptr for OpenSSL objects, freed with their own free function.
//
//   using PkeyPtr = OpensslPtr<EVP_PKEY, EVP_PKEY_free>;
//   PkeyPtr key(EVP_PKEY_new());
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>

namespace sod {

template <typename T, void (*Free)(T*)>
struct OpensslDeleter {
  void operator()(T* p) const { Free(p); }
};

template <typename T, void (*Free)(T*)>
using OpensslPtr = std::unique_ptr<T, OpensslDeleter<T, Free>>;

// The ones several files use.
using PkeyPtr = OpensslPtr<EVP_PKEY, EVP_PKEY_free>;
using PkeyCtxPtr = OpensslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtxPtr = OpensslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using BioPtr = OpensslPtr<BIO, BIO_free_all>;
using BnPtr = OpensslPtr<BIGNUM, BN_free>;
using X509Ptr = OpensslPtr<X509, X509_free>;
using CipherCtxPtr = OpensslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;

}  // namespace sod
