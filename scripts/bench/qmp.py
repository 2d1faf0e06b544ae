"""Minimal QMP client over a unix socket (python3 stdlib only).

QMP is JSON lines: the server greets, we send qmp_capabilities, then every command gets exactly one
"return" or "error" reply in order; asynchronous events ({"event": ...}) can arrive at any time.
A background thread reads the socket, timestamps every event on arrival (time.monotonic(), so event
times are comparable with the benchmark's own clock) and hands replies to the caller.
"""

import json
import queue
import socket
import threading
import time


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, connect_timeout=30.0):
        self.path = path
        self.sock = None
        deadline = time.monotonic() + connect_timeout
        last = None
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                self.sock = s
                break
            except OSError as e:  # socket not there yet, or QEMU still starting
                last = e
                s.close()
                time.sleep(0.05)
        if self.sock is None:
            raise QMPError(f"cannot connect to QMP {path}: {last}")
        self._replies = queue.Queue()
        self._events = []  # (t_monotonic, event dict)
        self._ev_cond = threading.Condition()
        self._closed = False
        self._lock = threading.Lock()  # one command in flight at a time
        self._buf = b""
        greeting = self._read_msg_sync(connect_timeout)
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.greeting = greeting
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.cmd("qmp_capabilities")

    # -- reading ------------------------------------------------------------------------------------
    def _read_msg_sync(self, timeout):
        self.sock.settimeout(timeout)
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.sock.settimeout(None)
        return json.loads(line)

    def _read_loop(self):
        buf = self._buf
        self._buf = b""
        try:
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "event" in msg:
                        with self._ev_cond:
                            self._events.append((time.monotonic(), msg))
                            self._ev_cond.notify_all()
                    else:
                        self._replies.put(msg)
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (OSError, ValueError):
            pass
        self._closed = True
        self._replies.put(None)
        with self._ev_cond:
            self._ev_cond.notify_all()

    # -- commands -----------------------------------------------------------------------------------
    def cmd(self, execute, arguments=None, timeout=30.0, check=True):
        """Run one command; return its "return" value (or raise QMPError on "error" if check)."""
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        with self._lock:
            if self._closed:
                raise QMPError(f"QMP {self.path} closed (QEMU gone?) before {execute}")
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise QMPError(f"no reply to {execute} within {timeout}s") from None
        if reply is None:
            raise QMPError(f"QMP {self.path} closed while waiting for {execute}")
        if "error" in reply:
            if check:
                raise QMPError(f"{execute}: {reply['error'].get('class')}: {reply['error'].get('desc')}")
            return reply
        return reply.get("return")

    # -- events -------------------------------------------------------------------------------------
    def events(self, name=None):
        with self._ev_cond:
            return [(t, e) for (t, e) in self._events if name is None or e.get("event") == name]

    def wait_event(self, pred, timeout, since=0.0):
        """Wait for an event with arrival time >= since for which pred(event) is true.
        Returns (t, event) or None on timeout / connection loss."""
        deadline = time.monotonic() + timeout
        with self._ev_cond:
            while True:
                for t, e in self._events:
                    if t >= since and pred(e):
                        return t, e
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None
                self._ev_cond.wait(min(left, 0.5))

    def close(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
