// Signing with an OpenSSL key, the one way sod signs (host receipts, the software TPM's quotes).
#pragma once

#include <openssl/types.h>

#include "base/bytes.h"
#include "base/status.h"

namespace sod {

// Signs SHA-256 of `message` with `key`: an EC key gives a DER ECDSA-Sig-Value, an RSA key a
// PKCS#1 v1.5 signature. kCrypto (with OpenSSL's reasons) when OpenSSL refuses.
Result<Bytes> SignSha256(EVP_PKEY* key, ByteSpan message);

}  // namespace sod
