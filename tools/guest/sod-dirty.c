/* sod-dirty: guest memory dirtier for migration tests and benchmarks.
 *
 * Allocates a working set of MB MiB, fills every 4 KiB page with seeded pseudo-random data (no zero
 * pages, no two pages alike), then dirties pages at RATE MiB/s (one 8-byte write per page dirties it;
 * RATE MiB/s = RATE*256 distinct pages per second while RATE < MB). Pages are visited in a fixed
 * permutation that spreads consecutive writes over the whole set (page = j*stride mod npages, stride
 * coprime with npages), so each sweep dirties every page exactly once. The written value depends on
 * the seed, the page and the sweep number, so a dirtied page always really changes.
 *
 * Content is deterministic given the seed and the number of writes done, so it is checkable:
 * -v SECONDS makes the dirtier verify the whole working set every SECONDS seconds and print
 *     SOD-DIRTY verify ok writes=<n> pages=<npages>        or
 *     SOD-DIRTY verify BAD writes=<n> bad_pages=<k> first_page=<p>
 *
 * Options:
 *   -m MB      working set in MiB (default 64)
 *   -r RATE    MiB/s to dirty: 0 = idle (allocate, fill, then only sleep), -1 or "max" = as fast as
 *              possible, fractions allowed (default max)
 *   -s SEED    seed (default: derived from the clock, printed at start)
 *   -i SECONDS print "SOD-DIRTY stats ..." every SECONDS seconds (default 0 = never)
 *   -v SECONDS verify every SECONDS seconds (default 0 = never)
 *   -R FILE    create FILE once the working set is allocated and filled
 *
 * gcc -static -O2 -o sod-dirty sod-dirty.c
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

#define PAGE 4096u
#define WORDS_PER_PAGE (PAGE / 8u)
#define CHUNK_PAGES 64u

static uint64_t seed;

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x | 1; /* never zero */
}

/* Word w (1..511) of page p: fixed after the initial fill. */
static inline uint64_t fill_word(uint64_t p, uint64_t w) {
  return mix(seed ^ (p + 1) * 0x9E3779B97F4A7C15ULL ^ w * 0xD6E8FEB86659FD93ULL);
}

/* Word 0 of page p after it was written in sweep gp1-1 (gp1 = 0: initial fill). */
static inline uint64_t head_word(uint64_t p, uint64_t gp1) {
  return mix(seed ^ (p + 1) * 0x9E3779B97F4A7C15ULL ^ gp1 * 0xA0761D6478BD642FULL ^
             0xE7037ED1A0B428DBULL);
}

static double now_s(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
  if (s <= 0) return;
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

static uint64_t gcd(uint64_t a, uint64_t b) {
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Inverse of a modulo m (gcd(a, m) == 1), by the extended Euclidean algorithm. */
static uint64_t mod_inverse(uint64_t a, uint64_t m) {
  if (m == 1) return 0;
  __int128 t = 0, nt = 1, r = m, nr = a;
  while (nr != 0) {
    __int128 q = r / nr, tmp;
    tmp = t - q * nt; t = nt; nt = tmp;
    tmp = r - q * nr; r = nr; nr = tmp;
  }
  if (t < 0) t += m;
  return (uint64_t)t;
}

static void usage(void) {
  fprintf(stderr,
          "usage: sod-dirty [-m MiB] [-r MiB_per_s|0|-1|max] [-s seed] [-i stats_s] [-v verify_s] "
          "[-R readyfile]\n");
  exit(2);
}

int main(int argc, char **argv) {
  long mb = 64, stats_every = 0, verify_every = 0;
  double rate = -1;
  int seeded = 0;
  const char *ready = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "m:r:s:i:v:R:h")) != -1) {
    switch (opt) {
      case 'm': mb = strtol(optarg, NULL, 10); break;
      case 'r': rate = strcmp(optarg, "max") == 0 ? -1 : strtod(optarg, NULL); break;
      case 's': seed = strtoull(optarg, NULL, 0); seeded = 1; break;
      case 'i': stats_every = strtol(optarg, NULL, 10); break;
      case 'v': verify_every = strtol(optarg, NULL, 10); break;
      case 'R': ready = optarg; break;
      default: usage();
    }
  }
  if (mb <= 0 || stats_every < 0 || verify_every < 0) usage();
  if (rate < 0) rate = -1;
  if (!seeded) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = mix((uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid());
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  const uint64_t npages = (uint64_t)mb << 20 >> 12;
  uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    printf("SOD-DIRTY error cannot allocate %ld MiB: %s\n", mb, strerror(errno));
    return 1;
  }
  for (uint64_t p = 0; p < npages; p++) {
    uint64_t *pg = mem + p * WORDS_PER_PAGE;
    pg[0] = head_word(p, 0);
    for (uint64_t w = 1; w < WORDS_PER_PAGE; w++) pg[w] = fill_word(p, w);
  }

  /* stride ~ 0.618 * npages, adjusted to be coprime with npages: a full-period permutation. */
  uint64_t stride = 1;
  if (npages > 2) {
    stride = (uint64_t)((double)npages * 0.6180339887);
    while (gcd(stride, npages) != 1) stride++;
  }
  const uint64_t inv = mod_inverse(stride, npages);

  char rate_str[32];
  if (rate < 0)
    snprintf(rate_str, sizeof rate_str, "max");
  else
    snprintf(rate_str, sizeof rate_str, "%.6g", rate);
  printf("SOD-DIRTY start mb=%ld pages=%" PRIu64 " rate=%s seed=%" PRIu64 "\n", mb, npages,
         rate_str, seed);
  if (ready) {
    int rfd = open(ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (rfd >= 0) close(rfd);
  }

  uint64_t writes = 0; /* total page writes; sweep = writes / npages, position = writes % npages */
  uint64_t page = 0;
  const double pps = rate > 0 ? rate * 256.0 : 0; /* pages per second */
  double base_t = now_s(CLOCK_MONOTONIC), t = base_t;
  uint64_t base_writes = 0;
  double next_stats = stats_every ? t + (double)stats_every : 0;
  double next_verify = verify_every ? t + (double)verify_every : 0;
  double last_stats_t = t;
  uint64_t last_stats_writes = 0;

  for (;;) {
    if (rate != 0) {
      for (unsigned k = 0; k < CHUNK_PAGES; k++) {
        uint64_t gp1 = writes / npages + 1;
        mem[page * WORDS_PER_PAGE] = head_word(page, gp1);
        writes++;
        page += stride;
        if (page >= npages) page -= npages;
      }
    }
    t = now_s(CLOCK_MONOTONIC);

    if (next_stats && t >= next_stats) {
      double dt = t - last_stats_t;
      double mibs = dt > 0 ? (double)(writes - last_stats_writes) / 256.0 / dt : 0;
      printf("SOD-DIRTY stats uptime=%.2f writes=%" PRIu64 " sweeps=%" PRIu64 " rate=%.1fMiB/s\n",
             now_s(CLOCK_BOOTTIME), writes, writes / npages, mibs);
      last_stats_t = t;
      last_stats_writes = writes;
      next_stats = t + (double)stats_every;
    }

    if (next_verify && t >= next_verify) {
      const uint64_t sweep = writes / npages, pos = writes % npages;
      uint64_t bad = 0, first_bad = 0;
      for (uint64_t p = 0; p < npages; p++) {
        const uint64_t *pg = mem + p * WORDS_PER_PAGE;
        uint64_t j = (uint64_t)(((unsigned __int128)p * inv) % npages); /* p's place in a sweep */
        uint64_t gp1 = j < pos ? sweep + 1 : sweep;
        int ok = pg[0] == head_word(p, gp1);
        for (uint64_t w = 1; ok && w < WORDS_PER_PAGE; w++) ok = pg[w] == fill_word(p, w);
        if (!ok && bad++ == 0) first_bad = p;
      }
      if (bad == 0)
        printf("SOD-DIRTY verify ok writes=%" PRIu64 " pages=%" PRIu64 "\n", writes, npages);
      else
        printf("SOD-DIRTY verify BAD writes=%" PRIu64 " bad_pages=%" PRIu64 " first_page=%" PRIu64 "\n",
               writes, bad, first_bad);
      t = now_s(CLOCK_MONOTONIC);
      next_verify = t + (double)verify_every;
      base_t = t; /* do not make up for the time spent verifying */
      base_writes = writes;
    }

    if (rate == 0) {
      double until = 3600;
      if (next_stats) until = next_stats - t < until ? next_stats - t : until;
      if (next_verify) until = next_verify - t < until ? next_verify - t : until;
      sleep_s(until);
    } else if (rate > 0) {
      double due = base_t + (double)(writes - base_writes) / pps;
      if (due > t) {
        sleep_s(due - t);
      } else if (t - due > 1.0) {
        /* Far behind (VM paused, or the CPU cannot keep up): do not try to catch up in a burst. */
        base_t = t;
        base_writes = writes;
      }
    }
  }
}
