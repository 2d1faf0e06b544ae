#!/usr/bin/env python3
"""sod live-migration benchmark driver (run through scripts/bench.sh, which installs what is needed,
builds the test guest and creates the output directory).

For each repetition, workload and mode (modes interleaved inside a repetition), one *run*:
  1. boot a source QEMU from the test guest (TCG, RAM on memory-backend-file share=on in /dev/shm,
     serial console to a file, two QMP unix sockets, user-net with hostfwd 127.0.0.1:P -> guest :7777)
     and a destination QEMU with the same arguments plus -incoming defer (another hostfwd port);
  2. wait for SOD-READY on the source console, let the workload warm up;
  3. start the client poller (a TCP connection every ~10 ms to both hostfwd ports), call the mode's
     migration function, which migrates and returns what the tool reported;
  4. measure the client-visible downtime and the heartbeat continuity from the poller's records and
     the consoles, check the destination runs, then kill both QEMUs and delete the memory files.
Every run's raw numbers are appended to results.json as soon as the run ends; table.md and the plot
are produced at the end (stats.py, plot.py; `bench.sh --report DIR` regenerates them).
"""

import argparse
import datetime
import json
import atexit
import os
import platform
import re
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from poller import Poller  # noqa: E402
from qmp import QMP, QMPError  # noqa: E402
import stats  # noqa: E402
import plot  # noqa: E402

TLS_HOSTNAME = "sod-bench-dst"

# ---- workloads -----------------------------------------------------------------------------------
# name -> (dirty_mb, dirty_rate, limit_s or None for --limit). Calibration (TCG, QEMU 7.2, loopback,
# unlimited max-bandwidth, default 300 ms downtime-limit): see CALIBRATION_NOTE in stats.py.
DEFAULT_WORKLOADS = {
    "idle": (0, "0", None),
    "moderate": (128, "32", None),
    "heavy": (256, "128", None),
    "max": (256, "max", 60),
}
DEFAULT_ORDER = ["idle", "moderate", "heavy", "max"]


def parse_workload(spec):
    """NAME=MB/RATE[/LIMIT]  e.g. heavy=256/96  max=256/max/60  idle=0/0"""
    m = re.fullmatch(r"([A-Za-z0-9_-]+)=(\d+)/(max|-1|\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?", spec)
    if not m:
        raise argparse.ArgumentTypeError(f"bad workload '{spec}' (want NAME=MB/RATE[/LIMIT_S])")
    lim = float(m.group(4)) if m.group(4) else None
    return m.group(1), (int(m.group(2)), m.group(3), lim)


# ---- process bookkeeping (so every exit path can clean up) -----------------------------------------
LIVE_VMS = []


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def log(msg):
    print(f"bench: {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ---- one QEMU ------------------------------------------------------------------------------------
class VM:
    """One QEMU process. Attributes used by mode functions (see the contract below):
    name, qmp (harness QMP connection), qmp_path, qmp_ext_path (second monitor, free for external
    tools), hostfwd_port, memfile, mem_mb, serial_path, pid, args, incoming (bool)."""

    def __init__(self, cfg, name, run_dir, cmdline, incoming=False, extra_args=()):
        self.cfg = cfg
        self.name = name
        self.run_dir = run_dir
        self.mem_mb = cfg.mem
        self.incoming = incoming
        self.serial_path = os.path.join(run_dir, f"{name}.serial")
        self.qmp_path = os.path.join(run_dir, f"{name}.qmp")
        self.qmp_ext_path = os.path.join(run_dir, f"{name}-ext.qmp")
        self.log_path = os.path.join(run_dir, f"{name}.qemu.log")
        self.memfile = f"{cfg.shm_prefix}{os.path.basename(run_dir)}-{name}"
        self.cmdline = cmdline
        self.extra_args = list(extra_args)
        self.proc = None
        self.pid = None
        self.qmp = None
        self.hostfwd_port = None
        self.args = None

    def _build_args(self):
        g = self.cfg.guest_dir
        kernel = os.path.join(g, "vmlinux")
        if not (os.path.exists(kernel) and os.path.getsize(kernel) > 0):
            kernel = os.path.join(g, "vmlinuz")
        accel = ["-accel", "tcg", "-cpu", "qemu64"] if self.cfg.accel == "tcg" else \
                ["-accel", "kvm", "-cpu", "host"]
        a = [self.cfg.qemu, "-name", f"sod-bench-{self.name}", *accel, "-smp", "1",
             "-m", f"{self.mem_mb}M",
             "-object", f"memory-backend-file,id=mem0,size={self.mem_mb}M,mem-path={self.memfile},share=on",
             "-machine", "memory-backend=mem0",
             "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
             "-kernel", kernel, "-initrd", os.path.join(g, "initrd.img"), "-append", self.cmdline,
             "-chardev", f"file,id=ser0,path={self.serial_path}", "-serial", "chardev:ser0",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
             "-qmp", f"unix:{self.qmp_ext_path},server=on,wait=off",
             "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.hostfwd_port}-:7777",
             "-device", "virtio-net-pci,netdev=n0", *self.extra_args]
        if self.incoming:
            a += ["-incoming", "defer"]
        return a

    def start(self):
        """Start QEMU and connect QMP; retries with another hostfwd port if QEMU cannot bind it."""
        last_err = ""
        for _attempt in range(3):
            self.hostfwd_port = free_port()
            for p in (self.serial_path, self.qmp_path, self.qmp_ext_path):
                if os.path.exists(p):
                    os.unlink(p)
            open(self.serial_path, "w").close()
            self.args = self._build_args()
            with open(self.log_path, "w") as logf:
                logf.write(" ".join(shlex.quote(x) for x in self.args) + "\n")
                logf.flush()
                self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=host_cpu_pinning(self.cfg, self.name))
            self.pid = self.proc.pid
            LIVE_VMS.append(self)
            with open(os.path.join(self.cfg.out_dir, ".qemu-pids"), "a") as f:
                f.write(f"{self.pid}\n")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None \
                    and not os.path.exists(self.qmp_path):
                time.sleep(0.02)
            if self.proc.poll() is None:
                try:
                    self.qmp = QMP(self.qmp_path, connect_timeout=30)
                    return
                except QMPError as e:
                    last_err = str(e)
            with open(self.log_path) as f:
                last_err = f.read().strip().splitlines()[-1:] or last_err
            self.stop()
            if "hostfwd" not in str(last_err) and "forwarding" not in str(last_err):
                break
        raise RuntimeError(f"{self.name} QEMU did not start: {last_err}")

    def wait_ready(self, timeout):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with open(self.serial_path, "rb") as f:
                data = f.read()
            if b"\nSOD-READY" in data or data.startswith(b"SOD-READY"):
                line = data[data.index(b"SOD-READY"):].split(b"\n", 1)[0].decode(errors="replace")
                return time.monotonic() - t0, line
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} QEMU exited during boot (rc {self.proc.returncode})")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no SOD-READY within {timeout:.0f}s")

    def stop(self):
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if os.path.exists(self.memfile):
            os.unlink(self.memfile)
        for p in (self.qmp_path, self.qmp_ext_path):
            if os.path.exists(p):
                os.unlink(p)
        if self in LIVE_VMS:
            LIVE_VMS.remove(self)


def serial_hb(path, which):
    """First or last SOD-HB counter on a console file (None if none)."""
    try:
        with open(path, "rb") as f:
            lines = [ln for ln in f.read().split(b"\n") if ln.startswith(b"SOD-HB ")]
    except OSError:
        return None
    if not lines:
        return None
    ln = lines[0] if which == "first" else lines[-1]
    try:
        return int(ln.split()[1])
    except (IndexError, ValueError):
        return None


GUEST_FAULT = re.compile(rb"^.*(?:BUG: |Oops|Kernel panic|general protection fault|kernel stack is corrupted|"
                         rb"SOD-DIRTY verify BAD|SOD-PATTERN BAD|segfault at|invalid opcode).*$", re.M | re.I)


def guest_faults(path):
    """Lines of a console that show the guest broke (kernel oops/panic, checker failures)."""
    try:
        with open(path, "rb") as f:
            return [m.group(0).decode(errors="replace").strip() for m in GUEST_FAULT.finditer(f.read())][:5]
    except OSError:
        return []


def serial_dirty_rate(path):
    """Median of the guest dirtier's self-reported rate (SOD-DIRTY stats ... rate=XMiB/s)."""
    try:
        with open(path, "rb") as f:
            rates = [float(m.group(1)) for m in re.finditer(rb"SOD-DIRTY stats .*? rate=([0-9.]+)MiB/s", f.read())]
    except OSError:
        return None
    rates = rates[1:] or rates  # the first interval includes start-up
    return sorted(rates)[len(rates) // 2] if rates else None


# ---- TLS material ----------------------------------------------------------------------------------
def make_tls(out_dir):
    """Throwaway CA + server (destination) + client (source) certificates with the openssl CLI.
    QEMU's tls-creds-x509 reads ca-cert.pem and {server,client}-{cert,key}.pem from its dir."""
    base = os.path.join(out_dir, "tls")
    src_dir, dst_dir, work = (os.path.join(base, d) for d in ("src", "dst", "work"))
    for d in (src_dir, dst_dir, work):
        os.makedirs(d, exist_ok=True)

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, cwd=work)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
        "-subj", "/CN=sod-bench throwaway CA", "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for role, cn, eku in (("server", TLS_HOSTNAME, "serverAuth"), ("client", "sod-bench-src", "clientAuth")):
        with open(os.path.join(work, f"{role}.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={eku}\n"
                    f"subjectAltName=DNS:{cn},IP:127.0.0.1\n")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{role}-key.pem", "-out", f"{role}.csr")
        run("openssl", "x509", "-req", "-in", f"{role}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "7", "-extfile", f"{role}.ext", "-out", f"{role}-cert.pem")
    for d, role in ((dst_dir, "server"), (src_dir, "client")):
        shutil.copy(os.path.join(work, "ca-cert.pem"), d)
        shutil.copy(os.path.join(work, f"{role}-cert.pem"), d)
        shutil.copy(os.path.join(work, f"{role}-key.pem"), d)
        os.chmod(os.path.join(d, f"{role}-key.pem"), 0o600)
    os.unlink(os.path.join(work, "ca-key.pem"))  # nothing else may be signed with it
    return src_dir, dst_dir


# ====================================================================================================
# Mode dispatch.
#
# A mode is an entry in MODES: name -> Mode(run, available, src_args, dst_args, boots_own).
#
# Contract of a mode's run function, run_<mode>(ctx) -> dict:
#   Input, ctx (RunContext):
#     ctx.src, ctx.dst   VM objects, both already started by the harness (unless boots_own=True: then
#                        both are None and the mode calls ctx.boot(src_args=[...], dst_args=[...]) to
#                        get them with other QEMU arguments, or starts its own QEMUs (e.g. through
#                        sodd), sets ctx.src/ctx.dst to objects with the attributes below and calls
#                        ctx.start_poller(src_hostfwd_port, dst_hostfwd_port) before mark_start()):
#                          .qmp           the harness's QMP connection (qmp.QMP: .cmd(), .wait_event())
#                          .qmp_path      that monitor's unix socket (in use by the harness)
#                          .qmp_ext_path  a second QMP monitor, unused: for external tools (sodd)
#                          .hostfwd_port  127.0.0.1 port forwarded to the guest's :7777 service
#                          .memfile       guest RAM file (memory-backend-file, share=on, /dev/shm)
#                          .mem_mb, .serial_path, .pid, .args (the QEMU command line)
#                        The source runs the warmed-up workload; the destination was started with
#                        the same arguments plus -incoming defer plus Mode.dst_args, nothing else.
#     ctx.mig_port       a free 127.0.0.1 port for the migration stream (or the mode's listener)
#     ctx.run_dir        this run's directory (consoles, QEMU logs; put the mode's own logs here)
#     ctx.limit_s        give up when the migration has not completed this long after mark_start()
#     ctx.cfg            global settings (max_bandwidth, downtime_limit, tls dirs, out_dir, ...)
#   The mode must:
#     - call ctx.mark_start() immediately before the command that starts the migration (the
#       harness's client poller is already running; this is t0 of "total time");
#     - return when the migration completed or failed, or after ctx.limit_s (then cancel it so the
#       VM keeps running at the source, and report converged=False);
#     - never kill the QEMUs or delete memory files (the harness does, afterwards);
#     - return a dict with (unknown values None):
#         status        "completed" | "failed" | "cancelled" (limit reached) | "error"
#         converged     bool (True only when the VM runs at the destination)
#         t_end         time.monotonic() when the migration was seen complete (or given up)
#         downtime_ms   the tool's reported downtime; total_time_ms the tool's total time
#         bytes         bytes sent for guest RAM (or total on the wire, say which in "notes")
#         ram_total     guest RAM bytes; rounds (pre-copy passes); mbps; progress (samples list)
#         notes         free text
#   The harness then keeps polling until the destination answers (or 15 s), computes the
#   client-visible downtime and heartbeat continuity, checks the destination's run state, and
#   cleans up.
# ====================================================================================================
class Mode:
    def __init__(self, run, available=None, src_args=None, dst_args=None, boots_own=False):
        self.run = run
        self.available = available or (lambda cfg: (True, ""))
        self.src_args = src_args or (lambda cfg: [])
        self.dst_args = dst_args or (lambda cfg: [])
        self.boots_own = boots_own


class RunContext:
    def __init__(self, cfg, run_dir, limit_s, mode=None, workload=None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.limit_s = limit_s
        self.mode = mode
        self.workload = workload
        self.src = None
        self.dst = None
        self.mig_port = free_port()
        self.t0 = None
        self.poller = None
        self.perf = None
        self.info = {}  # merged into the run's record

    def boot(self, src_args=None, dst_args=None):
        """Boot source (wait for SOD-READY, warm up) and destination (-incoming defer), then start
        the client poller. The harness calls this unless the mode has boots_own=True."""
        cmdline, boot_s, ready = boot_pair(self.cfg, self, self.mode, self.workload, src_args, dst_args)
        self.info.update(guest_cmdline=cmdline, boot_s=boot_s, ready_line=ready)
        time.sleep(self.cfg.warmup)
        self.info["guest_dirty_rate_mib_s"] = serial_dirty_rate(self.src.serial_path)
        self.start_poller(self.src.hostfwd_port, self.dst.hostfwd_port)

    def start_poller(self, src_port, dst_port):
        """Start the client-visible downtime probe on these 127.0.0.1 ports (for boots_own modes)."""
        self.poller = Poller({"src": src_port, "dst": dst_port}, interval_s=self.cfg.poll_ms / 1000.0)
        self.poller.start()
        time.sleep(0.3)  # a few answers before t0 anchor the gap measurement

    def mark_start(self):
        if self.cfg.perf and not self.perf:
            self.start_perf()
        self.t0 = time.monotonic()
        self.t0_unix = time.time()  # for times other processes give in Unix time (sod's receipt)
        return self.t0

    def start_perf(self):
        """--perf: a system-wide CPU profile of the migration window (perf record -a, no call
        graphs), started just before t0 and stopped when the mode's run returns."""
        self.perf = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-q",
                                      "-o", os.path.join(self.run_dir, "perf.data")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf's own start-up is not part of the migration

    def stop_perf(self):
        if not self.perf:
            return
        self.perf.send_signal(signal.SIGINT)
        try:
            self.perf.wait(30)
        except subprocess.TimeoutExpired:
            self.perf.kill()
            self.perf.wait()
        self.perf = None
        data = os.path.join(self.run_dir, "perf.data")
        for name, sort in (("perf-comm.txt", "comm,dso"), ("perf-sym.txt", "comm,sym")):
            with open(os.path.join(self.run_dir, name), "w") as out:
                subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", sort,
                                "--percent-limit", "0.3"], stdout=out, stderr=subprocess.DEVNULL)


def _migration_stats(info):
    ram = info.get("ram") or {}
    return {
        "status": info.get("status"),
        "total_time_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_time_ms": info.get("setup-time"),
        "expected_downtime_ms": info.get("expected-downtime"),
        "bytes": ram.get("transferred"),
        "ram_total": ram.get("total"),
        "ram_remaining": ram.get("remaining"),
        "rounds": ram.get("dirty-sync-count"),
        "mbps": ram.get("mbps"),
        "dirty_pages_rate": ram.get("dirty-pages-rate"),
        "duplicate_pages": ram.get("duplicate"),
        "normal_pages": ram.get("normal"),
    }


def qemu_native_migrate(ctx, tls):
    """Stock QEMU pre-copy over TCP on 127.0.0.1, optionally with QEMU's own TLS (tls-creds-x509)."""
    src, dst, cfg = ctx.src.qmp, ctx.dst.qmp, ctx.cfg
    caps = {"capabilities": [{"capability": "events", "state": True}]}
    src.cmd("migrate-set-capabilities", caps)
    dst.cmd("migrate-set-capabilities", caps)
    params = {"max-bandwidth": cfg.max_bandwidth, "downtime-limit": cfg.downtime_limit}
    src.cmd("migrate-set-parameters", params)
    if tls:
        tp = {"tls-creds": "tls0", "tls-hostname": TLS_HOSTNAME}
        dst.cmd("migrate-set-parameters", tp)
        src.cmd("migrate-set-parameters", tp)
    used_params = src.cmd("query-migrate-parameters")
    uri = f"tcp:127.0.0.1:{ctx.mig_port}"
    dst.cmd("migrate-incoming", {"uri": uri})

    final = ("completed", "failed", "cancelled")
    progress = []
    last = {}
    t0 = ctx.mark_start()
    src.cmd("migrate", {"uri": uri})
    status, t_end = None, None
    while True:
        ev = src.wait_event(lambda e: e.get("event") == "MIGRATION"
                            and e["data"].get("status") in final, timeout=0.5, since=t0)
        if ev:
            t_end, status = ev[0], ev[1]["data"]["status"]
            break
        info = src.cmd("query-migrate")
        st = _migration_stats(info)
        progress.append({"t": round(time.monotonic() - t0, 3), "status": st["status"],
                         "rounds": st["rounds"], "bytes": st["bytes"],
                         "remaining": st["ram_remaining"], "mbps": st["mbps"],
                         "dirty_pages_rate": st["dirty_pages_rate"]})
        if st["status"] in final:  # event missed (should not happen): take the status
            status, t_end = st["status"], time.monotonic()
            break
        if st["status"] == "active":
            last = st
        if time.monotonic() - t0 >= ctx.limit_s:
            src.cmd("migrate_cancel")
            ev = src.wait_event(lambda e: e.get("event") == "MIGRATION"
                                and e["data"].get("status") in final, timeout=30, since=t0)
            t_end = time.monotonic()
            status = "cancelled"
            if ev and ev[1]["data"]["status"] == "completed":  # completed while we cancelled
                status, t_end = "completed", ev[0]
            break
    res = {"status": status, "converged": status == "completed", "t_end": t_end,
           "progress": progress, "migrate_parameters": used_params,
           "notes": "bytes = ram.transferred (guest RAM stream incl. headers) from source query-migrate"}
    if status == "completed":
        # QEMU 7.2 emits "completed" before it computes total-time/downtime (migration_thread ->
        # migration_iteration_finish -> migration_calculate_complete): wait for them to appear.
        deadline = time.monotonic() + 5
        while True:
            st = _migration_stats(src.cmd("query-migrate"))
            if st["total_time_ms"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        res.update(st)
        # QEMU's total time ends when the source has sent everything; the VM runs at the
        # destination once that QEMU has loaded it all (its RESUME event): the point sod's total
        # time ends at (its commit is acknowledged after the destination resumed the VM).
        ev = dst.wait_event(lambda e: e.get("event") == "RESUME", timeout=10, since=t0)
        res["dst_running_s"] = round(ev[0] - t0, 3) if ev else None
    else:
        # cancelled/failed: query-migrate no longer carries RAM stats; keep the last sample
        res.update({k: last.get(k) for k in ("bytes", "ram_total", "rounds", "mbps", "total_time_ms")})
        res["downtime_ms"] = None
        try:
            res["error_desc"] = src.cmd("query-migrate").get("error-desc")
        except QMPError:
            pass
    return res


def run_plain(ctx):
    return qemu_native_migrate(ctx, tls=False)


def run_tls(ctx):
    return qemu_native_migrate(ctx, tls=True)


def _sod_binaries():
    """sodd/sodctl if built (SOD_BUILD_DIR or build/) or installed, else None."""
    build = os.environ.get("SOD_BUILD_DIR") or os.path.join(REPO, "build")
    for d in (os.path.join(build, "tools"), build):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("sodd", "sodctl")):
            return os.path.join(d, "sodd"), os.path.join(d, "sodctl")
    if shutil.which("sodd") and shutil.which("sodctl"):
        return shutil.which("sodd"), shutil.which("sodctl")
    return None


class _SodHosts:
    """Two sodd hosts on loopback for the whole bench invocation (hosta -> hostb), each with a
    one-port forward range, so the guest service's port on both hosts is known in advance. Both
    attest (simulated TPMs, enrolled in a shared directory), as in production. `sodd_args`: extra
    sodd arguments of both hosts (an experiment's pair, `index` > 0, has its own directory and
    ports)."""

    def __init__(self, cfg, sodd_args=(), index=0):
        self.sodd, self.sodctl = _sod_binaries()
        self.dir = os.path.join(cfg.out_dir, "sod" if index == 0 else f"sod-{index}")
        self.ports = {"hosta": free_port(), "hostb": free_port()}
        # Forward ports below the kernel's ephemeral range, which free_port() (the other modes'
        # hostfwd ports) draws from: a clash would leave sodd without its only forward port.
        base = 20000 + (os.getpid() % 1000) * 8 + index * 2
        self.fwd = {"hosta": base, "hostb": base + 1}
        self.procs = {}
        pki = os.path.join(self.dir, "pki")
        subprocess.run([self.sodctl, "pki", "init", "--dir", pki], check=True, capture_output=True)
        for h in ("hosta", "hostb"):
            subprocess.run([self.sodctl, "pki", "issue", "--dir", pki, "--host", h], check=True,
                           capture_output=True)
        enrollments = os.path.join(self.dir, "enrollments")
        for h in ("hosta", "hostb"):
            err = open(os.path.join(self.dir, f"sodd-{h}.err"), "a")
            self.procs[h] = subprocess.Popen(
                [self.sodd, "--host-id", h, "--state-dir", self.state(h), "--listen",
                 f"127.0.0.1:{self.ports[h]}", "--tls-dir", pki, "--forward-ports",
                 f"{self.fwd[h]}-{self.fwd[h]}", "--qemu", cfg.qemu, "--simulated-tpm",
                 "--enrollments", enrollments, *sodd_args],
                stdout=err, stderr=err, start_new_session=True,
                preexec_fn=host_cpu_pinning(cfg, "src" if h == "hosta" else "dst"))
            deadline = time.monotonic() + 15
            while subprocess.run(self.ctl(h, "status"), capture_output=True).returncode != 0:
                if time.monotonic() > deadline or self.procs[h].poll() is not None:
                    raise RuntimeError(f"sodd {h} did not start (see {err.name})")
                time.sleep(0.1)
        for h in ("hosta", "hostb"):
            record = os.path.join(self.dir, f"{h}.enrollment.json")
            subprocess.run(self.ctl(h, "host", "enrollment", "--out", record), check=True,
                           capture_output=True)
            subprocess.run([self.sodctl, "host", "enroll", record, "--dir", enrollments],
                           check=True, capture_output=True)

    def state(self, h):
        return os.path.join(self.dir, h)

    def ctl(self, h, *args):
        return [self.sodctl, "--state-dir", self.state(h), *args]

    def stop(self):
        for h in ("hosta", "hostb"):
            subprocess.run(self.ctl(h, "vm", "stop", "bench", "--force"), capture_output=True)
        for p in self.procs.values():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


_SOD_HOSTS = {}  # sodd arguments -> its host pair


def _sod_hosts(cfg, sodd_args=()):
    key = tuple(sodd_args)
    if key not in _SOD_HOSTS:
        hosts = _SodHosts(cfg, key, index=len(_SOD_HOSTS))
        _SOD_HOSTS[key] = hosts
        atexit.register(hosts.stop)
    return _SOD_HOSTS[key]


class _SodVm:
    """The bench VM as one sod host sees it: console, forwarded port, and a `qmp` stand-in whose
    query-status answers QEMU's run state as sodd reports it (sodd owns the QMP socket)."""

    def __init__(self, hosts, host):
        self.hosts, self.host = hosts, host
        self.serial_path = os.path.join(hosts.state(host), "vms", "bench", "serial.log")
        self.hostfwd_port = hosts.fwd[host]
        self.qmp = self

    def cmd(self, name, args=None, timeout=10, check=True):
        if name != "query-status":
            raise QMPError(f"{name}: sodd owns this VM's QMP")
        r = subprocess.run(self.hosts.ctl(self.host, "vm", "show", "bench", "--json"),
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise QMPError(f"no VM on {self.host}: {r.stderr.strip()}")
        return {"status": json.loads(r.stdout)["vm"].get("run_state", "")}

    def stop(self):
        subprocess.run(self.hosts.ctl(self.host, "vm", "stop", "bench", "--force"),
                       capture_output=True)


def sod_available(cfg):
    if _sod_binaries():
        return True, ""
    return False, ("sod mode skipped: no sod binaries (sodd/sodctl in $SOD_BUILD_DIR/tools, "
                   "build/tools or PATH)")


def _sodd_env(args_env):
    """SOD_BENCH_X_ARGS -> SOD_BENCH_X_SODD_ARGS: the experiment's sodd arguments."""
    return args_env[:-len("_ARGS")] + "_SODD_ARGS"


def _sod_variant_available(env):
    def available(cfg):
        if not os.environ.get(env) and not os.environ.get(_sodd_env(env)):
            return False, f"experiment mode skipped: neither {env} nor {_sodd_env(env)} is set"
        return sod_available(cfg)
    return available


def host_cpu_pinning(cfg, side):
    """--pin-hosts: the source host's processes (its QEMU; for sod also its sodd, whose QEMUs
    inherit the mask) on CPU 0, the destination's on CPU 1, so each of the two "hosts" pays its own
    costs on its own core, as two machines would. None (no pinning) otherwise."""
    if not cfg.pin_hosts:
        return None
    cpu = 0 if side == "src" else 1
    return lambda: os.sched_setaffinity(0, {cpu})


def run_sod(ctx, verify_ram=True, args_env=None):
    """sod end to end: sodd on hosta boots the guest (same kernel, initrd, memory and command line
    as the other modes), `sodctl migrate --json` moves it to hostb over sod's secure channel
    (TLS 1.3 session setup, records on 2 data channels, commit with transcript, signed receipt and
    RAM digest). Reported total time: sod's offer -> acknowledged commit (`summary.total_s`); the
    harness also records the wall clock around the whole command (incl. TLS handshake and session
    setup) as sod_command_s. Downtime: QEMU's (`qemu_downtime_ms`, comparable with the other
    modes); sod's source-stop -> destination-resume (incl. RAM digest and commit round trip) as
    sod_downtime_ms."""
    sodd_args = shlex.split(os.environ.get(_sodd_env(args_env), "")) if args_env else []
    cfg, hosts = ctx.cfg, _sod_hosts(ctx.cfg, sodd_args)
    kernel = os.path.join(cfg.guest_dir, "vmlinux")
    if not (os.path.exists(kernel) and os.path.getsize(kernel) > 0):
        kernel = os.path.join(cfg.guest_dir, "vmlinuz")
    cmdline = guest_cmdline(cfg, ctx.workload)
    spec = {"name": "bench", "memory_mb": cfg.mem, "vcpus": 1, "accel": cfg.accel,
            "cpu": "qemu64" if cfg.accel == "tcg" else "host", "kernel": kernel,
            "initrd": os.path.join(cfg.guest_dir, "initrd.img"), "append": cmdline,
            "guest_port": 7777}
    spec_path = os.path.join(ctx.run_dir, "sod-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    for h in ("hosta", "hostb"):  # a clean start
        subprocess.run(hosts.ctl(h, "vm", "stop", "bench", "--force"), capture_output=True)
    r = subprocess.run(hosts.ctl("hosta", "vm", "start", spec_path), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"sodctl vm start: {r.stderr.strip()}")
    ctx.src, ctx.dst = _SodVm(hosts, "hosta"), _SodVm(hosts, "hostb")
    t_boot = time.monotonic()
    while True:
        try:
            with open(ctx.src.serial_path, errors="replace") as f:
                ready = next((l.strip() for l in f if "SOD-READY" in l), None)
        except OSError:
            ready = None
        if ready:
            break
        if time.monotonic() - t_boot > cfg.boot_timeout:
            raise RuntimeError("the sod guest did not come up")
        time.sleep(0.2)
    ctx.info.update(guest_cmdline=cmdline, boot_s=round(time.monotonic() - t_boot, 2),
                    ready_line=ready)
    time.sleep(cfg.warmup)
    ctx.info["guest_dirty_rate_mib_s"] = serial_dirty_rate(ctx.src.serial_path)
    ctx.start_poller(ctx.src.hostfwd_port, ctx.dst.hostfwd_port)
    cmd = hosts.ctl("hosta", "migrate", "bench", "--to", f"hostb:{hosts.ports['hostb']}",
                    "--connect", "127.0.0.1", "--json",
                    "--downtime-limit", str(cfg.downtime_limit))
    if cfg.max_bandwidth < (1 << 40):
        cmd += ["--max-bandwidth", str(max(1, cfg.max_bandwidth >> 20))]
    if not verify_ram:
        cmd.append("--no-verify-ram")
    cmd += shlex.split(os.environ.get("SOD_BENCH_MIGRATE_ARGS", ""))  # experiments, e.g. --channels 1
    if args_env:  # the -x/-y modes: experiments interleaved with the plain sod modes
        cmd += shlex.split(os.environ.get(args_env, ""))
    out_path = os.path.join(ctx.run_dir, "sod.out")
    with open(out_path, "w") as out, open(os.path.join(ctx.run_dir, "sod.err"), "w") as err:
        t0 = ctx.mark_start()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = p.wait(ctx.limit_s)
            status = "completed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)  # sodctl has sodd cancel it: the VM stays at hosta
            p.wait()
            status = "cancelled"
        t_end = time.monotonic()
    res = {"status": status, "converged": status == "completed", "t_end": t_end,
           "sod_command_s": round(t_end - t0, 3),
           "notes": "sod: total_time = offer -> acknowledged commit; bytes = QEMU stream bytes "
                    "(wire_bytes adds record headers and tags)"}
    try:
        with open(out_path) as f:
            reply = json.load(f)
        sm = reply.get("summary", {})
        res.update(total_time_ms=round(sm.get("total_s", 0) * 1000, 1),
                   downtime_ms=sm.get("qemu_downtime_ms"), sod_downtime_ms=sm.get("downtime_ms"),
                   bytes=sm.get("stream_bytes"), wire_bytes=sm.get("wire_bytes"),
                   rounds=sm.get("rounds"), ram_total=cfg.mem << 20,
                   sod_phases_ms={p["phase"]: p["ms"] for p in sm.get("phases_ms", [])},
                   ram_pages_repaired=sm.get("ram_pages_repaired"))
        if res["converged"] and sm.get("total_s"):
            res["t_end"] = t0 + sm["total_s"]
            # On this run's clock, as plain's RESUME event: the receipt's switchover (the source
            # QEMU's STOP) plus sod's stop -> destination resume, both from the hosts' clocks.
            # (sm["total_s"] counts from sodd's session start, which comes after sodctl's start
            # and its TLS handshake: tens of ms after t0.)
            stop_ms = reply.get("receipt", {}).get("switchover_unix_ms")
            if stop_ms and sm.get("downtime_ms"):  # 0: no STOP event seen, resume unknown
                res["dst_running_s"] = round((stop_ms + sm["downtime_ms"]) / 1000 - ctx.t0_unix, 3)
                res["src_paused_s"] = round(stop_ms / 1000 - ctx.t0_unix, 3)
    except (OSError, ValueError) as e:
        with open(os.path.join(ctx.run_dir, "sod.err")) as f:
            res["error_desc"] = f.read().strip()[-500:] or str(e)
    return res


def _tls_args(endpoint):
    def f(cfg):
        d = cfg.tls_dst_dir if endpoint == "server" else cfg.tls_src_dir
        return ["-object", f"tls-creds-x509,id=tls0,dir={d},endpoint={endpoint},verify-peer=on"]
    return f


MODES = {
    "plain": Mode(run_plain),
    "tls": Mode(run_tls, src_args=_tls_args("client"), dst_args=_tls_args("server")),
    "sod": Mode(run_sod, available=sod_available, boots_own=True),
    # sod without its RAM check (`--no-verify-ram`): what the check costs.
    "sod-noram": Mode(lambda ctx: run_sod(ctx, verify_ram=False), available=sod_available,
                      boots_own=True),
    # Experiments: sod and sod-noram with the extra `sodctl migrate` arguments in
    # $SOD_BENCH_X_ARGS (e.g. "--downtime-start 0"), interleaved with the modes above; sod-y, a
    # second experiment in the same run (A/B/C), with those in $SOD_BENCH_Y_ARGS.
    "sod-x": Mode(lambda ctx: run_sod(ctx, args_env="SOD_BENCH_X_ARGS"),
                  available=_sod_variant_available("SOD_BENCH_X_ARGS"), boots_own=True),
    "sod-noram-x": Mode(lambda ctx: run_sod(ctx, verify_ram=False, args_env="SOD_BENCH_X_ARGS"),
                        available=_sod_variant_available("SOD_BENCH_X_ARGS"), boots_own=True),
    "sod-y": Mode(lambda ctx: run_sod(ctx, args_env="SOD_BENCH_Y_ARGS"),
                  available=_sod_variant_available("SOD_BENCH_Y_ARGS"), boots_own=True),
}


# ---- one run ---------------------------------------------------------------------------------------
def analyse_poll(poller, t0, t_end, converged):
    """Client-visible downtime: the longest gap between successive successful answers (from either
    side) from the last answer before t0 until shortly after the destination's first answer."""
    succ = sorted(poller.successes(), key=lambda r: r[2])
    pre = [r for r in succ if r[2] < t0]
    after = [r for r in succ if r[2] >= t0]
    first_dst = next((r for r in after if r[0] == "dst"), None)
    out = {"attempts": dict(poller.attempts), "answers": {"src": 0, "dst": 0},
           "client_downtime_ms": None, "switch_gap_ms": None, "dst_first_answer_s": None}
    for r in succ:
        out["answers"][r[0]] += 1
    if not pre and not after:
        out["error"] = "no answers at all"
        return out, None, None
    anchor = pre[-1][2] if pre else t0
    if converged:
        if first_dst is None:
            out["error"] = "destination never answered"
            return out, None, None
        end = first_dst[2] + 0.5
    else:
        end = max(r[2] for r in succ) if succ else t0
    times = [anchor] + [r[2] for r in after if r[2] <= end]
    gaps = [(b - a, a) for a, b in zip(times, times[1:])]
    if gaps:
        g, at = max(gaps)
        out["client_downtime_ms"] = round(g * 1000, 1)
        out["longest_gap_at_s"] = round(at - t0, 3)
    last_src = None
    if first_dst is not None:
        src_before = [r for r in succ if r[0] == "src" and r[2] <= first_dst[2]]
        last_src = src_before[-1] if src_before else None
        out["dst_first_answer_s"] = round(first_dst[2] - t0, 3)
        if last_src:
            out["switch_gap_ms"] = round((first_dst[2] - last_src[2]) * 1000, 1)
            out["src_last_answer_s"] = round(last_src[2] - t0, 3)
    out["src_answers_after_end"] = sum(1 for r in succ if r[0] == "src" and r[2] > t_end + 0.2)
    return out, last_src, first_dst


def guest_cmdline(cfg, workload):
    mb, rate, _ = workload
    return (f"{cfg.base_cmdline} sod.hb=1 sod.net=1 sod.dirty_mb={mb} sod.dirty_rate={rate} "
            f"sod.dirty_stats=1 sod.pattern_mb={cfg.pattern_mb}")


def boot_pair(cfg, ctx, mode, workload, src_args=None, dst_args=None):
    cmdline = guest_cmdline(cfg, workload)
    src_args = mode.src_args(cfg) if src_args is None else src_args
    dst_args = mode.dst_args(cfg) if dst_args is None else dst_args
    ctx.src = VM(cfg, "src", ctx.run_dir, cmdline, extra_args=src_args)
    ctx.src.start()
    boot_s, ready = ctx.src.wait_ready(cfg.boot_timeout)
    ctx.dst = VM(cfg, "dst", ctx.run_dir, cmdline, incoming=True, extra_args=dst_args)
    ctx.dst.start()
    st = ctx.dst.qmp.cmd("query-status")
    if st.get("status") != "inmigrate":
        raise RuntimeError(f"destination not waiting for a migration: {st}")
    return cmdline, boot_s, ready


def one_run(cfg, rep, wname, mname, run_index):
    mode = MODES[mname]
    workload = cfg.workloads[wname]
    limit = workload[2] or cfg.limit
    run_dir = os.path.join(cfg.out_dir, "runs", f"{run_index:03d}-r{rep}-{wname}-{mname}")
    os.makedirs(run_dir, exist_ok=True)
    ctx = RunContext(cfg, run_dir, limit, mode, workload)
    rec = {"index": run_index, "rep": rep, "workload": wname, "mode": mname,
           "dirty_mb": workload[0], "dirty_rate": workload[1], "limit_s": limit,
           "mem_mb": cfg.mem, "run_dir": os.path.relpath(run_dir, cfg.out_dir),
           "loadavg_before": list(os.getloadavg()),
           "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    t_run = time.monotonic()
    poller = None
    try:
        if not mode.boots_own:
            ctx.boot()
        try:
            res = mode.run(ctx)
        finally:
            ctx.stop_perf()
            rec.update(ctx.info)
            poller = ctx.poller
        t0, t_end = ctx.t0, res.get("t_end") or time.monotonic()
        rec.update({k: v for k, v in res.items() if k != "t_end"})
        rates = [p.get("dirty_pages_rate") for p in res.get("progress") or [] if p.get("dirty_pages_rate")]
        # QEMU's own view of the guest's dirty rate during the migration (pages/s -> MiB/s)
        rec["qemu_dirty_rate_mib_s"] = round(max(rates) * 4096 / 2**20, 1) if rates else None
        rec["wall_total_s"] = round(t_end - t0, 3) if t0 else None
        rec["t0_monotonic"] = t0  # CLOCK_MONOTONIC, to line the run up with outside samplers
        # keep polling until the destination answers steadily (or give up after 15 s)
        if poller:
            deadline = time.monotonic() + (15 if res.get("converged") else 1.5)
            while time.monotonic() < deadline:
                d = poller.successes("dst")
                if res.get("converged") and d and time.monotonic() - d[0][2] > 1.5:
                    break
                dproc = getattr(ctx.dst, "proc", None)
                if res.get("converged") and ((dproc and dproc.poll() is not None)
                                             or guest_faults(ctx.dst.serial_path)):
                    time.sleep(0.5)
                    break  # the guest died at the destination: no answer will come
                time.sleep(0.1)
            poller.stop()
            pa, last_src, first_dst = analyse_poll(poller, t0, t_end, res.get("converged"))
            rec["poll"] = pa
            rec["client_downtime_ms"] = pa["client_downtime_ms"]
            rec["switch_gap_ms"] = pa["switch_gap_ms"]
            if res.get("converged"):
                dst_ok = poller.successes("dst")
                hb = {"src_last_counter": last_src[4] if last_src else None,
                      "src_last_uptime": last_src[5] if last_src else None,
                      "dst_first_counter": first_dst[4] if first_dst else None,
                      "dst_first_uptime": first_dst[5] if first_dst else None,
                      "dst_last_counter": dst_ok[-1][4] if dst_ok else None,
                      "dst_last_uptime": dst_ok[-1][5] if dst_ok else None,
                      "serial_src_last": serial_hb(ctx.src.serial_path, "last"),
                      "serial_dst_first": serial_hb(ctx.dst.serial_path, "first")}
                ok = (hb["src_last_counter"] is not None and hb["dst_first_counter"] is not None
                      and hb["dst_first_counter"] >= hb["src_last_counter"]
                      and hb["dst_last_counter"] > hb["dst_first_counter"]
                      and hb["dst_first_uptime"] >= hb["src_last_uptime"])
                if hb["serial_src_last"] is not None and hb["serial_dst_first"] is not None:
                    ok = ok and hb["serial_dst_first"] >= hb["serial_src_last"]
                hb["continues"] = bool(ok)
                rec["heartbeat"] = hb
        for side, vm in (("src", ctx.src), ("dst", ctx.dst)):
            if not vm:
                continue
            proc = getattr(vm, "proc", None)
            if proc and proc.poll() is not None:  # e.g. guest panicked: panic=-1 + -no-reboot ends QEMU
                rec[f"{side}_status"] = f"qemu-exited rc={proc.returncode}"
                continue
            try:
                rec[f"{side}_status"] = vm.qmp.cmd("query-status", timeout=10).get("status")
            except QMPError as e:
                rec[f"{side}_status"] = f"qmp-error: {e}"
        # Did the guest survive? After a completed migration it must run on at the destination
        # (heartbeat continues, no oops/panic on its console); after a cancelled one at the source.
        if res.get("converged"):
            rec["guest_faults"] = guest_faults(ctx.dst.serial_path) if ctx.dst else []
            rec["guest_ok"] = (not rec["guest_faults"] and rec.get("dst_status") == "running"
                               and bool((rec.get("heartbeat") or {}).get("continues")))
        elif ctx.src:
            rec["guest_faults"] = guest_faults(ctx.src.serial_path)
            rec["guest_ok"] = (not rec["guest_faults"] and rec.get("src_status") == "running"
                               and (not poller or rec["poll"].get("src_answers_after_end", 0) > 0))
    except Interrupted:
        raise
    except Exception as e:  # record the run as failed and carry on with the next one
        rec["status"] = "error"
        rec["converged"] = False
        rec["error"] = f"{type(e).__name__}: {e}"
        log(f"run {run_index} ({wname}/{mname}) error: {rec['error']}")
    finally:
        if ctx.poller and ctx.poller.is_alive():
            ctx.poller.stop()
        for vm in (ctx.src, ctx.dst):
            if vm and hasattr(vm, "stop"):
                vm.stop()
        rec["run_wall_s"] = round(time.monotonic() - t_run, 1)
        rec["loadavg_after"] = list(os.getloadavg())
    return rec


# ---- environment -----------------------------------------------------------------------------------
def environment(cfg, argv):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1) if m else ""
    except OSError:
        pass
    manifest = {}
    try:
        with open(os.path.join(cfg.guest_dir, "manifest")) as f:
            manifest = dict(ln.split("=", 1) for ln in f.read().splitlines() if "=" in ln)
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": " ".join(shlex.quote(a) for a in argv),
        "hostname": platform.node(),
        "cpu_model": cpu, "nproc": os.cpu_count(),
        "mem_total_mb": int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "kernel": platform.release(), "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
        "qemu": sh(f"{shlex.quote(cfg.qemu)} --version | head -n1"),
        "qemu_package": sh("dpkg-query -W -f='${Version}' qemu-system-x86"),
        "openssl": sh("openssl version"), "python": platform.python_version(),
        "repo_commit": sh(f"git -C {shlex.quote(REPO)} rev-parse --short HEAD 2>/dev/null"),
        "guest_manifest": manifest,
        "loadavg_start": list(os.getloadavg()),
    }


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench.sh")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--guest-dir", default=os.environ.get("SOD_GUEST_DIR", "/var/cache/sod/guest"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--mem", type=int)
    ap.add_argument("--modes", default="plain,tls,sod,sod-noram")
    ap.add_argument("--workloads", dest="workload_list", default=",".join(DEFAULT_ORDER))
    ap.add_argument("--workload", action="append", default=[], type=parse_workload)
    ap.add_argument("--limit", type=float, default=120.0)
    ap.add_argument("--max-limit", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--poll-ms", type=float, default=10.0)
    ap.add_argument("--max-bandwidth", type=float, default=0)
    ap.add_argument("--downtime-limit", type=int, default=300)
    ap.add_argument("--pattern-mb", type=int, default=0)
    ap.add_argument("--boot-timeout", type=float, default=180.0)
    ap.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--pin-hosts", action="store_true")
    cfg = ap.parse_args(argv)
    cfg.reps = cfg.reps or (1 if cfg.quick else 3)
    cfg.mem = cfg.mem or (512 if cfg.quick else 1024)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (3.0 if cfg.quick else 5.0)
    cfg.workloads = dict(DEFAULT_WORKLOADS)
    mx = cfg.workloads["max"]
    cfg.workloads["max"] = (mx[0], mx[1], cfg.max_limit or (20.0 if cfg.quick else mx[2]))
    for name, w in cfg.workload:
        cfg.workloads[name] = w
    cfg.workload_order = [w.strip() for w in cfg.workload_list.split(",") if w.strip()]
    for w in cfg.workload_order:
        if w not in cfg.workloads:
            ap.error(f"unknown workload {w} (define it with --workload {w}=MB/RATE[/LIMIT])")
        if cfg.workloads[w][0] >= cfg.mem:
            ap.error(f"workload {w}: {cfg.workloads[w][0]} MiB working set does not fit a {cfg.mem} MiB guest")
    cfg.mode_order = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    for m in cfg.mode_order:
        if m not in MODES:
            ap.error(f"unknown mode {m} (known: {', '.join(MODES)})")
    # max-bandwidth: 0 = unlimited (QEMU's default would throttle every mode to 128 MiB/s)
    cfg.max_bandwidth = int(cfg.max_bandwidth * 2**20) if cfg.max_bandwidth > 0 else 2**40
    cfg.shm_prefix = os.environ.get("SOD_BENCH_SHM_PREFIX", f"/dev/shm/sod-bench-{os.getpid()}-")
    with open(os.path.join(cfg.guest_dir, "cmdline")) as f:
        cfg.base_cmdline = f.read().strip()
    return cfg


def save(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def main(argv):
    cfg = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    os.makedirs(cfg.out_dir, exist_ok=True)
    t_start = time.monotonic()

    modes, skipped = [], {}
    for m in cfg.mode_order:
        ok, why = MODES[m].available(cfg)
        if ok:
            modes.append(m)
        else:
            skipped[m] = why
            log(why)
    if not modes:
        log("no mode left to run")
        return 2
    cfg.tls_src_dir = cfg.tls_dst_dir = None
    if "tls" in modes:
        cfg.tls_src_dir, cfg.tls_dst_dir = make_tls(cfg.out_dir)

    doc = {
        "schema": "sod-bench/1",
        "environment": environment(cfg, [os.path.join(REPO, "scripts", "bench.sh")] + argv),
        "settings": {
            "quick": cfg.quick, "reps": cfg.reps, "mem_mb": cfg.mem, "modes": modes,
            "modes_skipped": skipped, "accel": cfg.accel,
            "cpu": "qemu64" if cfg.accel == "tcg" else "host", "smp": 1,
            "workloads": {w: {"dirty_mb": cfg.workloads[w][0], "dirty_rate": cfg.workloads[w][1],
                              "limit_s": cfg.workloads[w][2] or cfg.limit}
                          for w in cfg.workload_order},
            "workload_order": cfg.workload_order,
            "default_limit_s": cfg.limit, "warmup_s": cfg.warmup, "poll_ms": cfg.poll_ms,
            "max_bandwidth_bytes_s": cfg.max_bandwidth, "downtime_limit_ms": cfg.downtime_limit,
            "pattern_mb": cfg.pattern_mb, "guest_dir": cfg.guest_dir, "pin_hosts": cfg.pin_hosts,
            "base_cmdline": cfg.base_cmdline, "tls_hostname": TLS_HOSTNAME,
            "tls": "tls-creds-x509, RSA-2048 throwaway CA/server/client certs, verify-peer=on both sides",
            # The experiments' `sodctl migrate` arguments (sod modes; -x and -y modes).
            "sod_migrate_args": {k: os.environ[k] for k in
                                 ("SOD_BENCH_MIGRATE_ARGS", "SOD_BENCH_X_ARGS", "SOD_BENCH_Y_ARGS",
                                  "SOD_BENCH_X_SODD_ARGS", "SOD_BENCH_Y_SODD_ARGS")
                                 if os.environ.get(k)},
        },
        "runs": [],
    }
    res_path = os.path.join(cfg.out_dir, "results.json")
    save(res_path, doc)
    total = cfg.reps * len(cfg.workload_order) * len(modes)
    log(f"{total} runs: reps={cfg.reps} workloads={','.join(cfg.workload_order)} modes={','.join(modes)} "
        f"mem={cfg.mem}MiB -> {cfg.out_dir}")
    idx = 0
    rc = 0
    try:
        for rep in range(1, cfg.reps + 1):
            for wi, w in enumerate(cfg.workload_order):
                # A fresh order each repetition and workload (seeded, so a run can be repeated):
                # no mode always runs first, or always right after the same other one. With a
                # fixed order, two sod modes with the same settings differed by 8% (heavy) and
                # 40% (max) in one run (out/bench/q-feed3; BENCHMARKS.md section 3).
                order = list(modes)
                if rep > 1 or wi > 0:
                    random.Random(rep * 1000 + wi).shuffle(order)
                for m in order:
                    idx += 1
                    log(f"[{idx}/{total}] rep {rep} {w} {m} ...")
                    rec = one_run(cfg, rep, w, m, idx)
                    doc["runs"].append(rec)
                    save(res_path, doc)
                    log(f"[{idx}/{total}] {w} {m}: {stats.run_summary(rec)}")
                    time.sleep(cfg.pause)
    except Interrupted as e:
        log(f"interrupted ({e}): cleaning up, keeping the {len(doc['runs'])} finished runs")
        rc = 130
    finally:
        for vm in list(LIVE_VMS):
            vm.stop()
    doc["environment"]["loadavg_end"] = list(os.getloadavg())
    doc["environment"]["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    doc["interrupted"] = rc != 0
    save(res_path, doc)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    report(cfg.out_dir)
    log(f"done in {doc['environment']['bench_wall_s']:.0f} s: {cfg.out_dir}")
    return rc


def report(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        doc = json.load(f)
    summary = stats.aggregate(doc)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(stats.table_md(doc, summary))
    with open(os.path.join(out_dir, "plot.svg"), "w") as f:
        f.write(plot.svg(doc, summary))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(open(os.path.join(out_dir, "table.md")).read())


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--report":
        report(sys.argv[2])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
