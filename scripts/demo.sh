#!/usr/bin/env bash
# sod demo: two sod hosts on this machine (loopback), each with a (simulated) TPM, enrolled and
# attesting to each other; a guest with a vTPM and a security request (protection against other
# VMs and the hypervisor) booted on host A, moved securely to host B while it runs, with live
# progress, the signed receipt, and the guest alive on B; then host B's trust drops and its policy
# agent moves the VM back to A by itself (the audit log says why), and a move to B is refused.
#
#   ./scripts/demo.sh            (as root on Debian 12: installs what it needs, builds, runs)
#
# Environment: SOD_DEMO_DIR (default /tmp/sod-demo), SOD_BUILD_DIR (default build),
# SOD_DEMO_KEEP=1 leaves both hosts and the VM running at the end (stop them with the commands
# it prints).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib/deps.sh
. scripts/lib/hosts.sh

DEMO=${SOD_DEMO_DIR:-/tmp/sod-demo}
BUILD=${SOD_BUILD_DIR:-build}
GUEST=${SOD_GUEST_DIR:-/var/cache/sod/guest}
PORT_A=7401 PORT_B=7402
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "1. installing, building sod and the test guest"
sod_ensure_packages build test guest
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target sodd sodctl >/dev/null
SODD=$BUILD/tools/sodd SODCTL=$BUILD/tools/sodctl
SOD_GUEST_DIR=$GUEST scripts/build-guest.sh | tail -1

pids=()
cleanup() {
  [ "${SOD_DEMO_KEEP:-0}" = 1 ] && return
  for h in a b; do
    [ -S "$DEMO/host$h/sodd.sock" ] && "$SODCTL" --state-dir "$DEMO/host$h" vm stop demo >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

bold "2. a cluster CA and two host identities"
for h in a b; do
  [ -f "$DEMO/host$h/sodd.pid" ] && kill "$(head -1 "$DEMO/host$h/sodd.pid")" 2>/dev/null || true
done
sleep 0.5
rm -rf "$DEMO"
mkdir -p "$DEMO"
sod_pki "$DEMO/pki" hosta hostb
ls "$DEMO/pki"

bold "3. two sodd hosts on loopback: hosta :$PORT_A, hostb :$PORT_B, each with a TPM (swtpm)"
# State dirs are $DEMO/hosta and $DEMO/hostb; both trust the records in $DEMO/enrollments.
# Architectures (rows of Table III, policy/capabilities.json): both protect against other VMs and
# the hypervisor. Each monitors the other (trust monitor + policy agent, every second).
SOD_SODD_ARGS="--architecture h-svm --peer hostb=127.0.0.1:$PORT_B" \
  sod_start_host "$DEMO" hosta $PORT_A 20100-20199
SOD_SODD_ARGS="--architecture hyperwall --peer hosta=127.0.0.1:$PORT_A" \
  sod_start_host "$DEMO" hostb $PORT_B 20200-20299
pids+=("${SOD_HOST_PID[hosta]}" "${SOD_HOST_PID[hostb]}")
"$SODCTL" --state-dir "$DEMO/hosta" status

bold "3b. enrollment: each host's attestation key and golden PCRs, vouched for by the operator"
sod_enroll_hosts "$DEMO" hosta hostb
"$SODCTL" host enrollments --dir "$DEMO/enrollments"
echo
echo "hosta attests hostb (TPM quotes both ways, bound to a fresh TLS session):"
"$SODCTL" --state-dir "$DEMO/hosta" attest hostb:$PORT_B --connect 127.0.0.1

bold "4. a guest with a vTPM on hosta (256 MiB, dirtying 64 MiB at 16 MiB/s, heartbeat on its console)"
# Its vTPM: the guest extends PCR 16 and counts in an NV index every second (tools/guest/sod-tpm.c).
TPM_ARGS="sod.tpm=1 sod.tpm_extend=$(printf 'ab%.0s' $(seq 32)) sod.tpm_ms=1000 sod.tpm_digest=$(printf '5d%.0s' $(seq 32))"
sod_guest_spec "$DEMO/demo.json" demo 256 \
  "sod.net=1 sod.pattern_mb=32 sod.dirty_mb=64 sod.dirty_rate=16 $TPM_ARGS" tpm
# The customer's request (paper III-B options 1 and 2): protect it against other VMs and the
# hypervisor, confidentiality and integrity.
python3 - "$DEMO/demo.json" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["security"] = {"version": 1, "options": [1, 2], "protect": "CI"}
json.dump(spec, open(sys.argv[1], "w"))
PY
"$SODCTL" --state-dir "$DEMO/hosta" vm start "$DEMO/demo.json"
SERIAL_A=$DEMO/hosta/vms/demo/serial.log
sod_wait_ready "$SERIAL_A"
sleep 2
echo "guest console on hosta: $(grep -a 'SOD-HB' "$SERIAL_A" | tail -1)"
for _ in $(seq 100); do grep -qa SOD-TPMLOOP "$SERIAL_A" && break; sleep 0.3; done
echo "guest TPM on hosta:      $(grep -a 'SOD-TPMLOOP' "$SERIAL_A" | tail -1 | tr -d '\r')"
"$SODCTL" --state-dir "$DEMO/hosta" vm show demo | grep -E '^(vtpm|phase)'
"$SODCTL" --state-dir "$DEMO/hosta" policy show demo
PORT_GUEST_A=$("$SODCTL" --state-dir "$DEMO/hosta" vm show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["host_port"])')
echo "guest service via hosta 127.0.0.1:$PORT_GUEST_A: $(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT_GUEST_A; head -1 <&3" || echo '(no answer)')"

bold "5. secure live migration hosta -> hostb"
"$SODCTL" --state-dir "$DEMO/hosta" migrate demo --to hostb:$PORT_B --connect 127.0.0.1

bold "6. the guest runs on hostb; its heartbeat continues where it was"
SERIAL_B=$DEMO/hostb/vms/demo/serial.log
echo "last heartbeat on hosta: $(grep -a 'SOD-HB' "$SERIAL_A" | tail -1)"
sleep 2
echo "heartbeats on hostb:     $(grep -a 'SOD-HB' "$SERIAL_B" | head -1)  ...  $(grep -a 'SOD-HB' "$SERIAL_B" | tail -1)"
echo "memory check on hostb:   $(grep -a 'SOD-PATTERN' "$SERIAL_B" | tail -1)"
echo "guest TPM, last on hosta: $(grep -a 'SOD-TPMLOOP' "$SERIAL_A" | tail -1 | tr -d '\r')"
sleep 1
echo "guest TPM on hostb:       $(grep -a 'SOD-TPMLOOP' "$SERIAL_B" | tail -1 | tr -d '\r')  (PCR 16 and the NV counter go on)"
echo "vTPM on hostb: $("$SODCTL" --state-dir "$DEMO/hostb" vm show demo | grep '^vtpm' | sed 's/^vtpm *//')"
echo "vTPM on hosta: $("$SODCTL" --state-dir "$DEMO/hosta" vm show demo | grep '^vtpm' | sed 's/^vtpm *//')  (state and keys destroyed after the commit)"
PORT_GUEST_B=$("$SODCTL" --state-dir "$DEMO/hostb" vm show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["host_port"])')
echo "guest service via hostb 127.0.0.1:$PORT_GUEST_B: $(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT_GUEST_B; head -1 <&3" || echo '(no answer)')"
"$SODCTL" --state-dir "$DEMO/hosta" vm list
"$SODCTL" --state-dir "$DEMO/hostb" vm list

bold "7. both hosts' receipts and audit logs"
for h in a b; do
  r=$(ls "$DEMO/host$h/receipts/"*.json | grep -v pending | head -1)
  echo "host$h keeps $r:"
  python3 - "$r" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("migration_id", "vm_name", "source_host", "destination_host", "started", "rounds",
          "stream_bytes", "wire_bytes", "records", "suite", "transcript", "ram_digest", "vtpm_epoch",
          "outcome", "source_signature", "destination_signature"):
    v = r.get(k)
    if isinstance(v, str) and len(v) > 64: v = v[:64] + "..."
    print(f"  {k:22} {v}")
PY
  echo "  audit log: $(wc -l <"$DEMO/host$h/audit.log") hash-chained entries; last: $(tail -1 "$DEMO/host$h/audit.log" | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e["kind"], e["hash"][:16])')"
done

bold "8. hostb's trust drops (a runtime violation is counted into its TPM): its agent moves the VM back"
"$SODCTL" --state-dir "$DEMO/hostb" host violation --reason "demo: memory integrity violation"
for _ in $(seq 300); do
  [ "$("$SODCTL" --state-dir "$DEMO/hosta" vm show demo --json 2>/dev/null |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["phase"])' 2>/dev/null)" = running ] && break
  sleep 0.2
done
echo "the VM runs on hosta again: $("$SODCTL" --state-dir "$DEMO/hosta" vm list | grep demo)"
echo "vTPM on hosta: $("$SODCTL" --state-dir "$DEMO/hosta" vm show demo | grep '^vtpm' | sed 's/^vtpm *//')"
echo "hostb's audit log says why: $(grep -a '"policy.relocate"' "$DEMO/hostb/audit.log" | tail -1 | python3 -c 'import json,sys; e=json.load(sys.stdin)["data"]; print(e["vm"], "->", e["to"], "because", e["why"])')"
echo "hosta admitted hostb as an evacuating source: $(grep -ac '"migration.evacuation-in"' "$DEMO/hosta/audit.log") time(s)"
"$SODCTL" --state-dir "$DEMO/hosta" hosts
echo
echo "a manual move to hostb is refused (hostb is not trusted any more):"
if "$SODCTL" --state-dir "$DEMO/hosta" migrate demo --to hostb:$PORT_B --connect 127.0.0.1; then
  echo "UNEXPECTED: the migration to an untrusted host went through" >&2
  exit 1
fi
echo "the VM stays on hosta: $("$SODCTL" --state-dir "$DEMO/hosta" vm list | grep demo)"

if [ "${SOD_DEMO_KEEP:-0}" = 1 ]; then
  bold "left running (SOD_DEMO_KEEP=1)"
  echo "  $SODCTL --state-dir $DEMO/hosta vm show demo"
  echo "  kill ${pids[*]}   # stops both sodd (the VM keeps running; vm stop first to end it)"
else
  bold "done: stopping the VM and both hosts"
fi
