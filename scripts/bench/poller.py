"""Client-visible downtime probe.

A thread opens a new TCP connection every INTERVAL (default 10 ms) to each target (the hostfwd ports
of the source and destination QEMU, both forwarding to the guest's sod-heartbeat service on :7777).
The service answers at once with "SOD-HB <counter> uptime=<s>" and closes. Attempts run concurrently
and non-blocking (an attempt that hangs because the VM is paused does not delay the next one); an
attempt that got no answer within TIMEOUT is dropped. Every attempt is recorded with its start and
end time (time.monotonic(), the clock the rest of the benchmark uses), its side, and, when answered,
the counter and uptime.
"""

import collections
import errno
import re
import selectors
import socket
import struct
import threading
import time

ANSWER = re.compile(rb"^SOD-HB (\d+) uptime=([0-9.]+)")
MAX_INFLIGHT = 400  # per target: bounded even if a side never answers


class Poller(threading.Thread):
    def __init__(self, targets, interval_s=0.01, timeout_s=2.0):
        super().__init__(daemon=True)
        self.targets = dict(targets)  # side -> port
        self.interval = interval_s
        self.timeout = timeout_s
        self.records = []  # (side, t_start, t_end, ok, counter, uptime)
        self._stop_ev = threading.Event()
        self._lock = threading.Lock()
        self.attempts = collections.Counter()

    def stop(self):
        self._stop_ev.set()
        self.join(10)

    def successes(self, side=None):
        with self._lock:
            return [r for r in self.records if r[3] and (side is None or r[0] == side)]

    def _finish(self, sel, inflight, s, ok, counter=None, uptime=None, reset=False):
        side, t0, _ = inflight.pop(s)
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        if reset:  # we close first: RST instead of FIN, so no TIME_WAIT pile-up
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        s.close()
        with self._lock:
            self.records.append((side, t0, time.monotonic(), ok, counter, uptime))

    def run(self):
        sel = selectors.DefaultSelector()
        inflight = {}  # socket -> [side, t_start, buffer]; insertion order = start order
        per_side = collections.Counter()
        next_t = time.monotonic()
        try:
            while not self._stop_ev.is_set():
                now = time.monotonic()
                if now >= next_t:
                    for side, port in self.targets.items():
                        if per_side[side] >= MAX_INFLIGHT:
                            continue
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        s.setblocking(False)
                        err = s.connect_ex(("127.0.0.1", port))
                        self.attempts[side] += 1
                        if err not in (0, errno.EINPROGRESS):
                            s.close()
                            with self._lock:
                                self.records.append((side, now, now, False, None, None))
                            continue
                        inflight[s] = [side, now, b""]
                        per_side[side] += 1
                        sel.register(s, selectors.EVENT_READ)
                    next_t += self.interval
                    if now - next_t > self.interval:  # we fell behind: do not burst
                        next_t = now + self.interval
                wait = max(0.0, next_t - time.monotonic())
                for key, _ in sel.select(wait) if inflight else ():
                    s = key.fileobj
                    if s not in inflight:
                        continue
                    entry = inflight[s]
                    try:
                        data = s.recv(256)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        per_side[entry[0]] -= 1
                        self._finish(sel, inflight, s, False)
                        continue
                    entry[2] += data
                    if b"\n" in entry[2]:
                        m = ANSWER.match(entry[2])
                        per_side[entry[0]] -= 1
                        if m:
                            self._finish(sel, inflight, s, True, int(m.group(1)), float(m.group(2)))
                        else:
                            self._finish(sel, inflight, s, False)
                    elif not data:  # closed without an answer (slirp could not reach the guest)
                        per_side[entry[0]] -= 1
                        self._finish(sel, inflight, s, False)
                if not inflight:
                    # selectors.select() with nothing registered returns at once: sleep instead
                    time.sleep(max(0.0, next_t - time.monotonic()))
                now = time.monotonic()
                for s in list(inflight):
                    side, t0, _ = inflight[s]
                    if now - t0 < self.timeout:
                        break  # insertion order = start order: the rest are younger
                    per_side[side] -= 1
                    self._finish(sel, inflight, s, False, reset=True)
        finally:
            for s in list(inflight):
                per_side[inflight[s][0]] -= 1
                self._finish(sel, inflight, s, False, reset=True)
            sel.close()
