#!/usr/bin/env bash
# bench-policy-reaction.sh — how fast the policy agent reacts to a trust drop (host/policy_agent.h).
#
# Per run: two fresh sodd hosts (simulated TPMs, enrolled, each the other's --peer), hosta
# h-svm, hostb hyperwall; a guest requesting hypervisor protection (option 2) runs on hosta; then
# `sodctl host violation` on hosta. All times are the audit logs' own timestamps (millisecond
# resolution, same machine clock), split into:
#   detection  "host.violation" -> hosta's "policy.trust-changed" (hosta untrusted): the agent's
#              round that saw the drop (bounded by the monitor interval: it waits for the round)
#   decision   "host.violation" -> "policy.relocate" (same round: target chosen)
#   trigger    "policy.relocate" -> "migration.session" (the TLS session with hostb is up: its
#              first bytes went out at "migration.start"; mutual attestation and the stream follow)
#   move       "policy.relocate" -> hostb's "migration.commit" (destination role: the VM runs on
#              hostb)
#   total      "host.violation" -> hostb's "migration.commit"
# Prints every run and the medians.
#
#   scripts/bench-policy-reaction.sh BUILD_DIR [RUNS=5] [INTERVAL_MS=1000] [MEM_MB=128]
set -uo pipefail
BUILD=${1:?usage: bench-policy-reaction.sh BUILD_DIR [RUNS] [INTERVAL_MS] [MEM_MB]}
RUNS=${2:-5} INTERVAL=${3:-1000} MEM=${4:-128}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SODD=$BUILD/tools/sodd SODCTL=$BUILD/tools/sodctl GUEST=${SOD_GUEST_DIR:-/var/cache/sod/guest}
. "$ROOT/scripts/lib/hosts.sh"
command -v swtpm >/dev/null && [ -f "$GUEST/vmlinuz" ] || { echo "needs swtpm and the test guest"; exit 77; }
W=$(mktemp -d /tmp/sod-bench-reaction.XXXXXX)
RESULTS=$W/results.txt
cleanup_run() {
  for h in hosta hostb; do "$SODCTL" --state-dir "$W/run/$h" vm stop guest --force >/dev/null 2>&1; done
  for p in "${SOD_HOST_PID[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  pkill -9 -f "$W/run/" 2>/dev/null
  rm -f /dev/shm/sod-hosta-guest-* /dev/shm/sod-hostb-guest-*
  rm -rf "$W/run"
}
trap 'cleanup_run; rm -rf "$W"' EXIT

for run in $(seq "$RUNS"); do
  mkdir -p "$W/run"
  PA=$((17000 + RANDOM % 1000)) PB=$((18000 + RANDOM % 1000))
  sod_pki "$W/run/pki" hosta hostb
  SOD_SODD_ARGS="--architecture h-svm --peer hostb=127.0.0.1:$PB --monitor-interval-ms $INTERVAL" \
    sod_start_host "$W/run" hosta $PA 21700-21749 || exit 1
  SOD_SODD_ARGS="--architecture hyperwall --peer hosta=127.0.0.1:$PA --monitor-interval-ms $INTERVAL" \
    sod_start_host "$W/run" hostb $PB 21750-21799 || exit 1
  sod_enroll_hosts "$W/run" hosta hostb >/dev/null
  sod_guest_spec "$W/run/guest.json" guest "$MEM" "sod.net=0"
  python3 - "$W/run/guest.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); s["security"] = {"version": 1, "options": [2], "protect": "CI"}
json.dump(s, open(sys.argv[1], "w"))
PY
  "$SODCTL" --state-dir "$W/run/hosta" vm start "$W/run/guest.json" >/dev/null || exit 1
  sod_wait_ready "$W/run/hosta/vms/guest/serial.log" 120 || exit 1
  sleep 2  # both monitors have attested each other
  "$SODCTL" --state-dir "$W/run/hosta" host violation --reason bench >/dev/null
  for _ in $(seq 300); do
    grep -qa '"kind":"migration.commit"' "$W/run/hostb/audit.log" 2>/dev/null && break
    sleep 0.1
  done
  python3 - "$W/run" "$run" >>"$RESULTS" <<'PY'
import json, sys, datetime
root, run = sys.argv[1], sys.argv[2]
def first(host, kind, after=0.0, match=lambda d: True):
    for line in open(f"{root}/{host}/audit.log", errors="replace"):
        e = json.loads(line)
        if e["kind"] == kind and match(e.get("data", {})):
            t = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
            if t >= after:
                return t
    return None
t0 = first("hosta", "host.violation")
seen = first("hosta", "policy.trust-changed", t0 or 0.0,
             lambda d: d.get("host") == "hosta" and d.get("trusted") is False)
t = [seen, first("hosta", "policy.relocate"),
     first("hosta", "migration.start"), first("hosta", "migration.session"),
     first("hostb", "migration.commit")]
print(run, *("%.3f" % (x - t0) if x and t0 else "nan" for x in t))
PY
  tail -1 "$RESULTS" | awk '{printf "run %s (s after host violation): detected %s, decided %s, migration start %s, session up %s, running on hostb %s\n", $1, $2, $3, $4, $5, $6}'
  cleanup_run
done
python3 - "$RESULTS" "$INTERVAL" "$MEM" <<'PY'
import statistics, sys
rows = [[float(x) for x in l.split()[1:]] for l in open(sys.argv[1])]
# Columns (s after `host violation`): detected, decided, start, session, commit.
series = {
    "detection: violation -> agent saw it (trust-changed)": [r[0] for r in rows],
    "decision:  violation -> policy.relocate": [r[1] for r in rows],
    "trigger:   policy.relocate -> migration.start": [r[2] - r[1] for r in rows],
    "trigger:   policy.relocate -> session up (1st bytes)": [r[3] - r[1] for r in rows],
    "move:      policy.relocate -> running on hostb": [r[4] - r[1] for r in rows],
    "total:     violation -> running on hostb": [r[4] for r in rows],
}
print(f"median of {len(rows)} runs, monitor interval {sys.argv[2]} ms, guest {sys.argv[3]} MiB:")
for n, c in series.items():
    ms = [x * 1000 for x in c]
    print(f"  {n:54} {statistics.median(ms):7.0f} ms   (min {min(ms):.0f}, max {max(ms):.0f})")
PY
