// OpensslPtr: std::unique_ptr for OpenSSL objects, freed with their own free function.
//
//   using PkeyPtr = OpensslPtr<EVP_PKEY, EVP_PKEY_free>;
//   PkeyPtr key(EVP_PKEY_new());
#pragma once

#include <memory>

namespace sod {

template <typename T, void (*Free)(T*)>
struct OpensslDeleter {
  void operator()(T* p) const { Free(p); }
};

template <typename T, void (*Free)(T*)>
using OpensslPtr = std::unique_ptr<T, OpensslDeleter<T, Free>>;

}  // namespace sod
