// sod-tpm: a tiny TPM 2.0 client for the sod test guest. Talks raw TPM2 commands to /dev/tpm0
// (or the device in $SOD_TPM_DEV); no libraries, built static.
//
//   sod-tpm read <pcr>                    print "SOD-TPM PCR<pcr> <sha256 hex>"
//   sod-tpm extend <pcr> <64 hex>         TPM2_PCR_Extend(SHA-256) and print as read
//   sod-tpm nv-incr [index]               increment the NV counter (defined on first use,
//                                         owner hierarchy, empty auth) and print as nv-read
//   sod-tpm nv-read [index]               print "SOD-TPM NV<index hex> <count>"
//   sod-tpm loop [-i ms] [-p pcr] [-d hex] [-n index] [-c count]
//        every <ms> (default 500): extend <pcr> (default 16) with <hex> (default 32 x 0x5d),
//        increment the NV counter <index> (default 0x01500016), print
//        "SOD-TPMLOOP <seq> pcr<pcr>=<hex> nv=<count>"; seq counts from 1; -c stops after count
//        rounds (0 = forever). A failed round prints "SOD-TPMLOOP <seq> error <what> rc=0x..."
//        and the loop goes on.
//
// Exit status: 0 ok, 1 TPM or device error (message on stderr), 2 usage.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
  kMaxCommand = 4096,
  kShaLen = 32,
  kTagNoSessions = 0x8001,
  kTagSessions = 0x8002,
  kCcNvDefineSpace = 0x0000012A,
  kCcNvIncrement = 0x00000134,
  kCcNvRead = 0x0000014E,
  kCcPcrRead = 0x0000017E,
  kCcPcrExtend = 0x00000182,
  kAlgSha256 = 0x000B,
  kRsPw = 0x40000009,
  kRhOwner = 0x40000001,
  kDefaultNvIndex = 0x01500016,
};

// TPMA_NV: counter type, written and read with the index's own (empty) auth, no dictionary
// attack lockout.
#define NV_ATTRS                                                                                 \
  (0x00000010u /* TPM_NT_COUNTER */ | 0x00000004u /* AUTHWRITE */ | 0x00040000u /* AUTHREAD */ | \
   0x02000000u /* NO_DA */)

static const char* g_dev = "/dev/tpm0";

struct buf {
  uint8_t b[kMaxCommand];
  size_t n;
  int overflow;
};

static void put(struct buf* c, const void* p, size_t n) {
  if (c->overflow || n > sizeof(c->b) - c->n) {
    c->overflow = 1;
    return;
  }
  memcpy(c->b + c->n, p, n);
  c->n += n;
}
static void put8(struct buf* c, uint8_t v) { put(c, &v, 1); }
static void put16(struct buf* c, uint16_t v) {
  uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  put(c, b, 2);
}
static void put32(struct buf* c, uint32_t v) {
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  put(c, b, 4);
}
static uint16_t get16(const uint8_t* p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t get32(const uint8_t* p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void begin(struct buf* c, uint16_t tag, uint32_t cc) {
  c->n = 0;
  c->overflow = 0;
  put16(c, tag);
  put32(c, 0);  // size, patched by finish
  put32(c, cc);
}
// A password session with empty auth: the authorization area of one handle.
static void put_pw_session(struct buf* c) {
  put32(c, 9);  // authorizationSize
  put32(c, kRsPw);
  put16(c, 0);  // nonceCaller
  put8(c, 0);   // sessionAttributes
  put16(c, 0);  // hmac (the password): empty
}

// Sends the command in `c`, reads the response into `r` (r->n = its length). Returns the TPM
// response code, or -1 on a device or framing error (message printed).
static long transact(struct buf* c, struct buf* r) {
  if (c->overflow) {
    fprintf(stderr, "sod-tpm: command too long\n");
    return -1;
  }
  c->b[2] = (uint8_t)(c->n >> 24);
  c->b[3] = (uint8_t)(c->n >> 16);
  c->b[4] = (uint8_t)(c->n >> 8);
  c->b[5] = (uint8_t)c->n;
  int fd = open(g_dev, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "sod-tpm: open %s: %s\n", g_dev, strerror(errno));
    return -1;
  }
  ssize_t w;
  do {
    w = write(fd, c->b, c->n);
  } while (w < 0 && errno == EINTR);
  if (w != (ssize_t)c->n) {
    fprintf(stderr, "sod-tpm: write %s: %s\n", g_dev, w < 0 ? strerror(errno) : "short write");
    close(fd);
    return -1;
  }
  // The TPM character device returns the whole response in one read.
  ssize_t got;
  do {
    got = read(fd, r->b, sizeof(r->b));
  } while (got < 0 && errno == EINTR);
  close(fd);
  if (got < 10) {
    fprintf(stderr, "sod-tpm: read %s: %s\n", g_dev, got < 0 ? strerror(errno) : "short response");
    return -1;
  }
  r->n = (size_t)got;
  r->overflow = 0;
  if (get32(r->b + 2) != r->n) {
    fprintf(stderr, "sod-tpm: response size field %u != %zu bytes read\n", get32(r->b + 2), r->n);
    return -1;
  }
  return (long)get32(r->b + 6);
}

static void hex(const uint8_t* p, size_t n, char* out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = d[p[i] >> 4];
    out[2 * i + 1] = d[p[i] & 15];
  }
  out[2 * n] = 0;
}

static int unhex(const char* s, uint8_t* out, size_t n) {
  if (strlen(s) != 2 * n) return -1;
  for (size_t i = 0; i < 2 * n; ++i) {
    char ch = s[i];
    int v = ch >= '0' && ch <= '9'   ? ch - '0'
            : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
            : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                     : -1;
    if (v < 0) return -1;
    if (i % 2 == 0) {
      out[i / 2] = (uint8_t)(v << 4);
    } else {
      out[i / 2] |= (uint8_t)v;
    }
  }
  return 0;
}

static int parse_u32(const char* s, uint32_t max, uint32_t* out) {
  char* end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 0);
  if (errno != 0 || end == s || *end != 0 || v > max) return -1;
  *out = (uint32_t)v;
  return 0;
}

// TPM2_PCR_Read of one SHA-256 PCR into `out`. Returns the TPM rc (0 ok) or -1.
static long pcr_read(uint32_t pcr, uint8_t out[kShaLen]) {
  struct buf c, r;
  begin(&c, kTagNoSessions, kCcPcrRead);
  put32(&c, 1);  // TPML_PCR_SELECTION.count
  put16(&c, kAlgSha256);
  put8(&c, 3);  // sizeofSelect
  uint8_t sel[3] = {0, 0, 0};
  sel[pcr / 8] = (uint8_t)(1u << (pcr % 8));
  put(&c, sel, 3);
  long rc = transact(&c, &r);
  if (rc != 0) return rc;
  // header(10) updateCounter(4) TPML_PCR_SELECTION: count(4) {hash(2) size(1) select[size]}*
  size_t off = 14;
  if (r.n < off + 4) goto bad;
  uint32_t nsel = get32(r.b + off);
  off += 4;
  for (uint32_t i = 0; i < nsel; ++i) {
    if (r.n < off + 3) goto bad;
    off += 3 + r.b[off + 2];
  }
  // TPML_DIGEST: count(4) {size(2) digest}*
  if (r.n < off + 4 || get32(r.b + off) != 1) goto bad;
  off += 4;
  if (r.n < off + 2 || get16(r.b + off) != kShaLen || r.n < off + 2 + kShaLen) goto bad;
  memcpy(out, r.b + off + 2, kShaLen);
  return 0;
bad:
  fprintf(stderr, "sod-tpm: malformed PCR_Read response (%zu bytes)\n", r.n);
  return -1;
}

static long pcr_extend(uint32_t pcr, const uint8_t digest[kShaLen]) {
  struct buf c, r;
  begin(&c, kTagSessions, kCcPcrExtend);
  put32(&c, pcr);  // pcrHandle
  put_pw_session(&c);
  put32(&c, 1);  // TPML_DIGEST_VALUES.count
  put16(&c, kAlgSha256);
  put(&c, digest, kShaLen);
  return transact(&c, &r);
}

static long nv_define_counter(uint32_t index) {
  struct buf c, r;
  begin(&c, kTagSessions, kCcNvDefineSpace);
  put32(&c, kRhOwner);
  put_pw_session(&c);
  put16(&c, 0);   // TPM2B_AUTH: empty
  put16(&c, 14);  // TPM2B_NV_PUBLIC.size
  put32(&c, index);
  put16(&c, kAlgSha256);  // nameAlg
  put32(&c, NV_ATTRS);
  put16(&c, 0);  // authPolicy: empty
  put16(&c, 8);  // dataSize
  return transact(&c, &r);
}

static long nv_increment(uint32_t index) {
  struct buf c, r;
  begin(&c, kTagSessions, kCcNvIncrement);
  put32(&c, index);  // authHandle
  put32(&c, index);  // nvIndex
  put_pw_session(&c);
  return transact(&c, &r);
}

static long nv_read_counter(uint32_t index, uint64_t* value) {
  struct buf c, r;
  begin(&c, kTagSessions, kCcNvRead);
  put32(&c, index);
  put32(&c, index);
  put_pw_session(&c);
  put16(&c, 8);  // size
  put16(&c, 0);  // offset
  long rc = transact(&c, &r);
  if (rc != 0) return rc;
  // header(10) parameterSize(4) TPM2B_MAX_NV_BUFFER: size(2) data
  if (r.n < 16 || get16(r.b + 14) != 8 || r.n < 24) {
    fprintf(stderr, "sod-tpm: malformed NV_Read response (%zu bytes)\n", r.n);
    return -1;
  }
  *value = ((uint64_t)get32(r.b + 16) << 32) | get32(r.b + 20);
  return 0;
}

// A format-1 TPM_RC_HANDLE (the index does not exist), whatever handle number it names.
static int rc_is_handle(long rc) { return rc > 0 && (rc & 0x80) && (rc & 0x3F) == 0x0B; }

static long nv_incr(uint32_t index, uint64_t* value) {
  long rc = nv_increment(index);
  if (rc_is_handle(rc)) {
    rc = nv_define_counter(index);
    if (rc == 0) rc = nv_increment(index);
  }
  if (rc != 0) return rc;
  return nv_read_counter(index, value);
}

static int report(const char* what, long rc) {
  if (rc > 0) fprintf(stderr, "sod-tpm: %s failed: TPM rc 0x%03lx\n", what, (unsigned long)rc);
  return rc == 0 ? 0 : 1;
}

static int print_pcr(uint32_t pcr) {
  uint8_t v[kShaLen];
  char h[2 * kShaLen + 1];
  long rc = pcr_read(pcr, v);
  if (rc != 0) return report("PCR_Read", rc);
  hex(v, kShaLen, h);
  printf("SOD-TPM PCR%u %s\n", pcr, h);
  return 0;
}

static void sleep_ms(uint32_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int loop(int argc, char** argv) {
  uint32_t interval = 500, pcr = 16, index = kDefaultNvIndex, count = 0;
  uint8_t digest[kShaLen];
  memset(digest, 0x5d, sizeof(digest));
  for (int i = 0; i < argc; i += 2) {
    if (i + 1 >= argc) return 2;
    const char* o = argv[i];
    const char* v = argv[i + 1];
    int bad = 0;
    if (!strcmp(o, "-i")) {
      bad = parse_u32(v, 3600000, &interval);
    } else if (!strcmp(o, "-p")) {
      bad = parse_u32(v, 23, &pcr);
    } else if (!strcmp(o, "-n")) {
      bad = parse_u32(v, 0xFFFFFFFFu, &index);
    } else if (!strcmp(o, "-c")) {
      bad = parse_u32(v, 0xFFFFFFFFu, &count);
    } else if (!strcmp(o, "-d")) {
      bad = unhex(v, digest, kShaLen);
    } else {
      bad = 1;
    }
    if (bad) return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (uint32_t seq = 1; count == 0 || seq <= count; ++seq) {
    uint8_t v[kShaLen];
    char h[2 * kShaLen + 1];
    uint64_t nv = 0;
    long rc;
    if ((rc = pcr_extend(pcr, digest)) != 0) {
      printf("SOD-TPMLOOP %u error extend rc=0x%lx\n", seq, (unsigned long)rc);
    } else if ((rc = pcr_read(pcr, v)) != 0) {
      printf("SOD-TPMLOOP %u error read rc=0x%lx\n", seq, (unsigned long)rc);
    } else if ((rc = nv_incr(index, &nv)) != 0) {
      printf("SOD-TPMLOOP %u error nv rc=0x%lx\n", seq, (unsigned long)rc);
    } else {
      hex(v, kShaLen, h);
      printf("SOD-TPMLOOP %u pcr%u=%s nv=%llu\n", seq, pcr, h, (unsigned long long)nv);
    }
    if (count == 0 || seq < count) sleep_ms(interval);
  }
  return 0;
}

static int usage(void) {
  fprintf(stderr,
          "usage: sod-tpm read PCR | extend PCR HEX64 | nv-incr [INDEX] | nv-read [INDEX] |\n"
          "               loop [-i MS] [-p PCR] [-d HEX64] [-n INDEX] [-c COUNT]\n");
  return 2;
}

int main(int argc, char** argv) {
  const char* env = getenv("SOD_TPM_DEV");
  if (env && *env) g_dev = env;
  if (argc < 2) return usage();
  const char* cmd = argv[1];
  uint32_t pcr = 0, index = kDefaultNvIndex;
  if (!strcmp(cmd, "read") && argc == 3) {
    if (parse_u32(argv[2], 23, &pcr)) return usage();
    return print_pcr(pcr);
  }
  if (!strcmp(cmd, "extend") && argc == 4) {
    uint8_t d[kShaLen];
    if (parse_u32(argv[2], 23, &pcr) || unhex(argv[3], d, kShaLen)) return usage();
    long rc = pcr_extend(pcr, d);
    if (rc != 0) return report("PCR_Extend", rc);
    return print_pcr(pcr);
  }
  if ((!strcmp(cmd, "nv-incr") || !strcmp(cmd, "nv-read")) && argc <= 3) {
    if (argc == 3 && parse_u32(argv[2], 0xFFFFFFFFu, &index)) return usage();
    uint64_t v = 0;
    long rc = !strcmp(cmd, "nv-incr") ? nv_incr(index, &v) : nv_read_counter(index, &v);
    if (rc != 0) return report(cmd, rc);
    printf("SOD-TPM NV%08x %llu\n", index, (unsigned long long)v);
    return 0;
  }
  if (!strcmp(cmd, "loop")) {
    int rc = loop(argc - 2, argv + 2);
    return rc == 2 ? usage() : rc;
  }
  return usage();
}
