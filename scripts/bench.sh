#!/bin/bash
# bench.sh — live-migration benchmark: plain QEMU vs QEMU TLS vs sod, same guest, same workloads.
#
# Usage: scripts/bench.sh [options]
#   --quick              smoke test: 1 repetition, 512 MiB guest, 'max' limited to 20 s (~2 min here;
#                        the default full run, 24 runs, took ~8 min)
#   --reps N             repetitions (default 3); modes are interleaved inside each repetition,
#                        in a fresh (seeded) order for each repetition and workload after the first
#   --mem MIB            guest RAM (default 1024; --quick 512)
#   --modes LIST         comma list of plain,tls,sod,sod-noram (default: all four). sod: two sodd
#                        hosts on loopback (built here if missing, in $SOD_BUILD_DIR or build/), the
#                        guest booted by sodd, moved with `sodctl migrate` (run_sod in
#                        scripts/bench/driver.py); sod-noram: the same with --no-verify-ram (what
#                        the RAM check costs); sod-x, sod-noram-x (not in the default): the same
#                        with the extra arguments in $SOD_BENCH_X_ARGS, for A/B experiments;
#                        sod-y: sod with $SOD_BENCH_Y_ARGS, a second experiment in the same run
#   --workloads LIST     default idle,moderate,heavy,max:
#                          idle      no dirtier (sod.dirty_mb=0)
#                          moderate  128 MiB working set dirtied at 32 MiB/s
#                          heavy     256 MiB at 128 MiB/s (calibrated: plain and TLS converge)
#                          max       256 MiB as fast as the vCPU can, limit 60 s (--quick: 20 s)
#   --workload NAME=MB/RATE[/LIMIT_S]   define or override a workload, e.g. heavy=256/64,
#                        max=256/max/90, hot=512/128 (RATE in MiB/s or max); repeatable
#   --limit S            per-run convergence limit (default 120 s); then migrate_cancel, converged=false
#   --max-limit S        limit of the 'max' workload (default 60 s, --quick 20 s)
#   --warmup S           seconds between SOD-READY and migrate (default 5, --quick 3)
#   --poll-ms MS         client probe interval (default 10)
#   --max-bandwidth MIB  QEMU max-bandwidth in MiB/s (default 0 = unlimited; QEMU's own default of
#                        128 MiB/s would make every mode equally slow)
#   --downtime-limit MS  QEMU downtime-limit (default 300, QEMU's default)
#   --pattern-mb MB      also run the guest's sod-pattern checker on MB MiB (default 0 = off)
#   --accel tcg|kvm      default tcg (-cpu qemu64); kvm only where it is known to work
#   --perf               profile every migration window system-wide with `perf record -a` (needs
#                        linux-perf; adds load): runs/*/perf.data, perf-comm.txt, perf-sym.txt
#   --pin-hosts          the source side's processes on CPU 0, the destination's on CPU 1 (plain/TLS:
#                        each QEMU; sod: each sodd and the QEMUs it starts): two 1-core "hosts"
#                        that each pay their own costs, as two machines would, instead of both
#                        sharing both cores
#   --out DIR            output directory (default out/bench/<UTC timestamp> in the repo)
#   --report DIR         only regenerate DIR/table.md, DIR/plot.svg, DIR/summary.json from
#                        DIR/results.json
#   -h, --help
# Output in the output directory: results.json (environment, settings, every run's raw numbers,
# written after each run), table.md (paste into BENCHMARKS.md), plot.svg, summary.json, runs/*/
# (each run's consoles and QEMU logs), tls/ (the throwaway certificates).
# Environment: SOD_GUEST_DIR (guest cache, default /var/cache/sod/guest), SOD_BENCH_SOD_CMD (the sod
# hook command; its contract is in scripts/bench/driver.py, run_sod()), SOD_BENCH_MIGRATE_ARGS (extra
# `sodctl migrate` arguments for sod modes, for experiments, e.g. "--channels 1"), SOD_BENCH_X_ARGS
# (the extra arguments of the sod-x and sod-noram-x modes, e.g. "--downtime-start 0": an A/B
# interleaved with the other modes in one run), SOD_BENCH_Y_ARGS (the same for sod-y),
# SOD_BENCH_X_SODD_ARGS / SOD_BENCH_Y_SODD_ARGS (extra `sodd` arguments of those modes, e.g.
# "--data-channel-buffer 1024": they run on a host pair of their own, started with them).
# Needs root only to install missing packages (qemu-system-x86, openssl, python3) and to build the
# guest the first time. All traffic stays on 127.0.0.1. Both QEMUs of a run are killed and their
# memory files in /dev/shm deleted after every run, and on errors or Ctrl-C.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
BENCH_DIR=$REPO/scripts/bench
GUEST_DIR=${SOD_GUEST_DIR:-/var/cache/sod/guest}

usage() { sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d' | sed 's/^# \{0,1\}//'; }

out=""
report=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --report) report=$2; shift ;;
    --quick|--perf|--pin-hosts) pass+=("$1") ;;
    --reps|--mem|--modes|--workloads|--workload|--limit|--max-limit|--warmup|--poll-ms|\
    --max-bandwidth|--downtime-limit|--pattern-mb|--accel)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      pass+=("$1" "$2"); shift ;;
    *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "bench: $*" >&2; }

# ---- what we need -------------------------------------------------------------------------------
need=(qemu-system-x86 openssl python3)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { log "missing packages ${missing[*]}: run as root or install them"; exit 1; }
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi

if [ -n "$report" ]; then
  [ -f "$report/results.json" ] || { log "no $report/results.json"; exit 1; }
  PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
  PYTHONDONTWRITEBYTECODE=1 exec "$PY" "$BENCH_DIR/driver.py" --report "$report"
fi

# sod's binaries, unless the modes leave sod out.
modes_arg=plain,tls,sod,sod-noram
for ((i = 0; i < ${#pass[@]}; i++)); do [ "${pass[$i]}" = --modes ] && modes_arg=${pass[$((i + 1))]}; done
if [[ ",$modes_arg," == *,sod* ]]; then
  . "$REPO/scripts/lib/deps.sh"
  sod_ensure_packages build >&2
  export SOD_BUILD_DIR=${SOD_BUILD_DIR:-$REPO/build}
  cmake -S "$REPO" -B "$SOD_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
    cmake --build "$SOD_BUILD_DIR" -j "$(nproc)" --target sodd sodctl >/dev/null ||
    { log "building sodd/sodctl failed"; exit 1; }
fi

SOD_GUEST_DIR=$GUEST_DIR "$REPO/scripts/build-guest.sh" --quiet "$GUEST_DIR" >/dev/null ||
  { log "scripts/build-guest.sh failed"; exit 1; }

if [ -z "$out" ]; then
  out=$REPO/out/bench/$(date -u +%Y%m%dT%H%M%SZ)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# ---- cleanup on every exit path -----------------------------------------------------------------
# The driver stops its QEMUs itself (also on SIGINT/SIGTERM); this trap is the safety net for a
# driver that died hard: it kills the QEMUs the driver recorded (only if they still are QEMUs of
# this output directory) and removes this invocation's memory files.
shm_prefix=/dev/shm/sod-bench-$$-
export SOD_BENCH_SHM_PREFIX=$shm_prefix
cleanup() {
  local pid
  if [ -f "$out/.qemu-pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || continue
      if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$out/runs/"; then
        kill "$pid" 2>/dev/null || true
        sleep 0.5
        kill -9 "$pid" 2>/dev/null || true
      fi
    done < "$out/.qemu-pids"
    rm -f "$out/.qemu-pids"
  fi
  rm -f "${shm_prefix}"* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log "output: $out"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
export PYTHONDONTWRITEBYTECODE=1
rc=0
"$PY" "$BENCH_DIR/driver.py" --out-dir "$out" --guest-dir "$GUEST_DIR" "${pass[@]}" || rc=$?
exit $rc
