// Signing with an OpenSSL key, the one way sod signs (host receipts, the software TPM's quotes),
// and the key check that goes with it.
#pragma once

#include <openssl/types.h>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

// Signs SHA-256 of `message` with `key`: an EC key gives a DER ECDSA-Sig-Value, an RSA key a
// PKCS#1 v1.5 signature. kCrypto (with OpenSSL's reasons) when OpenSSL refuses.
Result<Bytes> SignSha256(EVP_PKEY* key, ByteSpan message);

// Whether `key` is an EC key on NIST P-256 (prime256v1), the curve of host and TPM keys.
bool IsP256(const EVP_PKEY* key);

}  // namespace sod
