/* sod-pattern: proves guest memory survives (migration) intact.
 *
 * Fills MB MiB with a deterministic pattern derived from SEED (every 64-bit word distinct and
 * non-zero, so no page is a zero page and no two pages are equal), prints
 *     SOD-PATTERN filled mb=<MB> seed=<SEED> checksum=<16 hex>
 * then every INTERVAL seconds re-reads the whole area, compares each word with the pattern and prints
 *     SOD-PATTERN ok <n> <checksum>          (n = number of verifications passed so far)
 * or, on any mismatch,
 *     SOD-PATTERN BAD <n> bad_words=<count> first_offset=0x<byte offset> expected=0x.. got=0x..
 * The checksum depends only on MB and SEED, so it is the same before and after a migration.
 * After a BAD report the area is rewritten so later rounds report fresh damage only.
 *
 * Options: -m MB (default 64), -s SEED (default 1), -i SECONDS (default 2), -n COUNT (stop after
 * COUNT verifications, default 0 = forever), -R FILE (create FILE once filled).
 *
 * gcc -static -O2 -o sod-pattern sod-pattern.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t pattern_word(uint64_t seed, uint64_t i) {
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 29;
  return x | 1; /* never zero */
}

static inline uint64_t fold(uint64_t h, uint64_t w) {
  h ^= w;
  h = (h << 7) | (h >> 57);
  return h * 0x100000001B3ULL;
}

static void fill(uint64_t *mem, size_t words, uint64_t seed) {
  for (size_t i = 0; i < words; i++) mem[i] = pattern_word(seed, i);
}

static uint64_t expected_checksum(size_t words, uint64_t seed) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (size_t i = 0; i < words; i++) h = fold(h, pattern_word(seed, i));
  return h;
}

static void usage(void) {
  fprintf(stderr, "usage: sod-pattern [-m MiB] [-s seed] [-i seconds] [-n count] [-R readyfile]\n");
  exit(2);
}

int main(int argc, char **argv) {
  long mb = 64, interval = 2, count = 0;
  uint64_t seed = 1;
  const char *ready = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "m:s:i:n:R:h")) != -1) {
    switch (opt) {
      case 'm': mb = strtol(optarg, NULL, 10); break;
      case 's': seed = strtoull(optarg, NULL, 0); break;
      case 'i': interval = strtol(optarg, NULL, 10); break;
      case 'n': count = strtol(optarg, NULL, 10); break;
      case 'R': ready = optarg; break;
      default: usage();
    }
  }
  if (mb <= 0 || interval <= 0 || count < 0) usage();
  setvbuf(stdout, NULL, _IOLBF, 0);

  size_t bytes = (size_t)mb << 20;
  size_t words = bytes / sizeof(uint64_t);
  uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    printf("SOD-PATTERN BAD 0 cannot allocate %ld MiB: %s\n", mb, strerror(errno));
    return 1;
  }
  fill(mem, words, seed);
  const uint64_t want = expected_checksum(words, seed);
  printf("SOD-PATTERN filled mb=%ld seed=%" PRIu64 " checksum=%016" PRIx64 "\n", mb, seed, want);
  if (ready) {
    int rfd = open(ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (rfd >= 0) close(rfd);
  }

  for (long n = 1; count == 0 || n <= count; n++) {
    struct timespec ts = {.tv_sec = interval, .tv_nsec = 0};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}

    uint64_t h = 0xCBF29CE484222325ULL, bad = 0, first_exp = 0, first_got = 0;
    size_t first_off = 0;
    for (size_t i = 0; i < words; i++) {
      uint64_t w = mem[i], e = pattern_word(seed, i);
      h = fold(h, w);
      if (__builtin_expect(w != e, 0)) {
        if (bad++ == 0) {
          first_off = i * sizeof(uint64_t);
          first_exp = e;
          first_got = w;
        }
      }
    }
    if (bad == 0 && h == want) {
      printf("SOD-PATTERN ok %ld %016" PRIx64 "\n", n, h);
    } else {
      printf("SOD-PATTERN BAD %ld bad_words=%" PRIu64 " first_offset=0x%zx expected=0x%016" PRIx64
             " got=0x%016" PRIx64 " checksum=%016" PRIx64 " want=%016" PRIx64 "\n",
             n, bad, first_off, first_exp, first_got, h, want);
      fill(mem, words, seed);
    }
  }
  return 0;
}
