/* sod-heartbeat: guest liveness signal for the sod test guest.
 *
 * Every INTERVAL ms (default 100) prints one line to stdout (the serial console in the guest):
 *     SOD-HB <counter> uptime=<seconds.hundredths>
 * The counter increases by one per line and lives in guest RAM, so after a live migration it
 * continues from where it was; the uptime comes from CLOCK_BOOTTIME.
 *
 * With -p PORT it also serves TCP on 0.0.0.0:PORT: every accepted connection is one request; the
 * server answers at once with the same line (current counter and uptime) and closes its side. The
 * client need not send anything (whatever it sends is read and dropped). This lets a host-side
 * client polling through QEMU user networking (hostfwd) measure the downtime it sees.
 *
 * Options: -i MS interval (default 100), -p PORT (default 0 = no server), -q (no console lines,
 * server only), -R FILE (create FILE once running, for /init's readiness wait).
 *
 * Static, no dependencies beyond libc: gcc -static -O2 -o sod-heartbeat sod-heartbeat.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 32
#define CLIENT_LINGER_NS 2000000000LL /* drop a client that neither closes nor sends within 2 s */

static int64_t now_ns(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int format_line(char *buf, size_t len, uint64_t counter) {
  int64_t up = now_ns(CLOCK_BOOTTIME);
  return snprintf(buf, len, "SOD-HB %llu uptime=%lld.%02lld\n", (unsigned long long)counter,
                  (long long)(up / 1000000000LL), (long long)((up % 1000000000LL) / 10000000LL));
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return; /* console gone or peer reset: nothing useful to do */
    }
    p += w;
    n -= (size_t)w;
  }
}

static int listen_on(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void usage(void) {
  fprintf(stderr, "usage: sod-heartbeat [-i interval_ms] [-p tcp_port] [-q] [-R readyfile]\n");
  exit(2);
}

int main(int argc, char **argv) {
  long interval_ms = 100;
  int port = 0, quiet = 0;
  const char *ready = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "i:p:qR:h")) != -1) {
    switch (opt) {
      case 'i': interval_ms = strtol(optarg, NULL, 10); break;
      case 'p': port = (int)strtol(optarg, NULL, 10); break;
      case 'q': quiet = 1; break;
      case 'R': ready = optarg; break;
      default: usage();
    }
  }
  if (interval_ms <= 0 || port < 0 || port > 65535) usage();
  signal(SIGPIPE, SIG_IGN);

  int lfd = -1;
  if (port > 0) {
    /* The interface may come up a little after us: retry for a while instead of failing. */
    for (int tries = 0; tries < 100 && (lfd = listen_on(port)) < 0; tries++) usleep(100000);
    if (lfd < 0) {
      fprintf(stderr, "SOD-HB-ERROR cannot listen on port %d: %s\n", port, strerror(errno));
      return 1;
    }
  }

  struct pollfd pfd[1 + MAX_CLIENTS];
  int64_t client_deadline[MAX_CLIENTS];
  int clients[MAX_CLIENTS];
  for (int i = 0; i < MAX_CLIENTS; i++) clients[i] = -1;

  if (ready) {
    int rfd = open(ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (rfd >= 0) close(rfd);
  }

  const int64_t period = interval_ms * 1000000LL;
  uint64_t counter = 0;
  int64_t next = now_ns(CLOCK_MONOTONIC);
  char line[96];

  for (;;) {
    int64_t t = now_ns(CLOCK_MONOTONIC);
    if (t >= next) {
      counter++;
      if (!quiet) {
        int n = format_line(line, sizeof line, counter);
        write_all(STDOUT_FILENO, line, (size_t)n);
      }
      next += period;
      /* After a long stall (VM paused, migration downtime) do not burst: resynchronise. */
      if (t - next > period) next = t + period;
    }

    int n = 0;
    if (lfd >= 0) {
      pfd[n].fd = lfd;
      pfd[n].events = POLLIN;
      n++;
    }
    int idx_of[MAX_CLIENTS];
    for (int i = 0; i < MAX_CLIENTS; i++) {
      if (clients[i] < 0) continue;
      if (t >= client_deadline[i]) {
        close(clients[i]);
        clients[i] = -1;
        continue;
      }
      idx_of[n] = i;
      pfd[n].fd = clients[i];
      pfd[n].events = POLLIN;
      n++;
    }
    int64_t wait_ns = next - now_ns(CLOCK_MONOTONIC);
    int timeout_ms = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
    int r = poll(pfd, (nfds_t)n, timeout_ms);
    if (r <= 0) continue;

    for (int k = 0; k < n; k++) {
      if (!pfd[k].revents) continue;
      if (pfd[k].fd == lfd) {
        for (;;) {
          int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          int len = format_line(line, sizeof line, counter);
          write_all(c, line, (size_t)len); /* tiny: fits the empty socket buffer */
          shutdown(c, SHUT_WR);
          int slot = -1;
          for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i] < 0) { slot = i; break; }
          if (slot < 0) {
            close(c);
            continue;
          }
          /* Keep the socket until the peer closes, so unread request bytes never cause a RST
           * that could destroy the answer before the client reads it. */
          clients[slot] = c;
          client_deadline[slot] = now_ns(CLOCK_MONOTONIC) + CLIENT_LINGER_NS;
        }
      } else {
        int i = idx_of[k];
        char sink[512];
        ssize_t got = read(clients[i], sink, sizeof sink);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
          close(clients[i]);
          clients[i] = -1;
        }
      }
    }
  }
}
