#!/usr/bin/env bash
# A VM with a vTPM between three real sodd hosts (simulated TPMs, enrolled): `vm start` gives it a
# vTPM at epoch 1; it migrates hosta -> hostb (epoch 2) with the guest's PCR 16 / NV counter going
# on; hosta erases its copy (state and keys) and cannot send the VM anywhere else (hostc); the VM
# comes back to hosta (epoch 3, newer than the 2 hosta saw); a sodd restart re-adopts the running
# swtpm; `vm stop` erases the vTPM. Every TPM value the guest printed on any host is checked
# against an unbroken TPM's.
#
#   tests/sodd_vtpm_test.sh BUILD_DIR
set -uo pipefail
BUILD=${1:?usage: sodd_vtpm_test.sh BUILD_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SODD=$BUILD/tools/sodd SODCTL=$BUILD/tools/sodctl GUEST=${SOD_GUEST_DIR:-/var/cache/sod/guest}
. "$ROOT/scripts/lib/hosts.sh"
if ! command -v swtpm >/dev/null || ! grep -q sod-tpm "$GUEST/manifest" 2>/dev/null ||
   [ ! -f "$GUEST/vmlinuz" ]; then
  echo "SKIP: needs swtpm and the test guest with sod-tpm"; exit 77
fi
W=$(mktemp -d /tmp/sod-sodd-vtpm.XXXXXX)
PORT_A=$((17000 + RANDOM % 1000)) PORT_B=$((18000 + RANDOM % 1000)) PORT_C=$((19000 + RANDOM % 1000))
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
ctl() { local h=$1; shift; "$SODCTL" --state-dir "$W/$h" "$@"; }
# vm show field: phase | vtpm.status | vtpm.epoch
show() {
  ctl "$1" vm show guest --json 2>/dev/null | python3 -c "
import json,sys
vm = json.load(sys.stdin)['vm']
print({'phase': vm['phase'], 'status': vm['vtpm']['status'], 'epoch': vm['vtpm']['epoch']}['$2'])" \
    2>/dev/null || echo none
}
expect() {  # what, got, want
  [ "$2" = "$3" ] && ok "$1: $2" || fail "$1: got '$2', want '$3'"
}
# The loop lines of a console: "first last" sequence numbers; exit 1 when a value is not the one
# an unbroken TPM gives (PCR 16 = SHA-256 chain from ab..ab then 5d..5d per round, NV = seq).
check_loop() {
  python3 - "$1" <<'PY'
import hashlib, re, sys
pcr = hashlib.sha256(bytes(32) + bytes([0xab]) * 32).digest()
want = {0: pcr}
for i in range(1, 2000):
    pcr = hashlib.sha256(pcr + bytes([0x5d]) * 32).digest()
    want[i] = pcr
seqs = []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"SOD-TPMLOOP ([0-9]+) pcr16=([0-9a-f]{64}) nv=([0-9]+)", line.strip())
    if not m:
        continue
    seq, p, nv = int(m[1]), m[2], int(m[3])
    if want[seq].hex() != p or nv != seq:
        print(f"bad line: {line.strip()}"); sys.exit(1)
    seqs.append(seq)
print(f"{min(seqs)} {max(seqs)}" if seqs else "none")
PY
}
wait_loop_past() {  # serial, seq
  for _ in $(seq 300); do
    local r; r=$(check_loop "$1" 2>/dev/null) || return 1
    [ "$r" != none ] && [ "${r#* }" -gt "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
swtpm_of() { pgrep -f "swtpm socket.*$W/$1/vms/guest/tpm" | head -1; }

cleanup() {
  for h in hosta hostb hostc; do ctl $h vm stop guest --force >/dev/null 2>&1; done
  for p in "${SOD_HOST_PID[@]}"; do kill -9 "$p" 2>/dev/null; done
  pkill -9 -f "$W/" 2>/dev/null
  rm -f /dev/shm/sod-hosta-guest-* /dev/shm/sod-hostb-guest-* /dev/shm/sod-hostc-guest-*
  wait 2>/dev/null
  [ "$failures" -eq 0 ] && rm -rf "$W" || echo "(work dir kept: $W)"
}
trap cleanup EXIT

sod_pki "$W/pki" hosta hostb hostc
sod_start_host "$W" hosta $PORT_A 21300-21349 || exit 1
sod_start_host "$W" hostb $PORT_B 21350-21399 || exit 1
sod_start_host "$W" hostc $PORT_C 21400-21449 || exit 1
sod_enroll_hosts "$W" hosta hostb hostc >/dev/null || { echo "enrollment failed"; exit 1; }
ab=$(printf 'ab%.0s' $(seq 32)) l5d=$(printf '5d%.0s' $(seq 32))
sod_guest_spec "$W/guest.json" guest 256 \
  "sod.net=0 sod.tpm=1 sod.tpm_extend=$ab sod.tpm_ms=300 sod.tpm_digest=$l5d" tpm

echo "== 1. vm start with a vTPM"
ctl hosta vm start "$W/guest.json" >/dev/null || { echo "vm start failed"; cat "$W/sodd-hosta.err"; exit 1; }
expect "vTPM on hosta" "$(show hosta status)" running
expect "epoch on hosta" "$(show hosta epoch)" 1
ctl hosta vm show guest | grep -q "^vtpm *running (swtpm pid [0-9]*), epoch 1" &&
  ok "vm show prints the vTPM" || fail "vm show: $(ctl hosta vm show guest | grep vtpm)"
wait_loop_past "$W/hosta/vms/guest/serial.log" 2 && ok "guest TPM loop runs on hosta" ||
  fail "no TPM loop on hosta: $(tail -3 "$W/hosta/vms/guest/serial.log")"
[ "$(stat -c %s "$W/hosta/vms/guest/vtpm.keys" 2>/dev/null)" = 101 ] &&
  ok "keys file: 101 bytes (two 32-byte keys under AES-256-GCM)" || fail "no keys file on hosta"
[ -f "$W/hosta/vtpm/master.sealed" ] && ok "master key sealed to hosta's TPM" || fail "no sealed master key"

echo "== 2. migrate hosta -> hostb"
ctl hosta migrate guest --to hostb:$PORT_B --connect 127.0.0.1 >"$W/m1.out" 2>&1 &&
  ok "migration to hostb committed" || fail "migration to hostb: $(tail -3 "$W/m1.out")"
grep -q '"vtpm_epoch": 2\|vtpm_epoch.*2' "$W/hosta/receipts/"*.json && ok "receipt names epoch 2" ||
  fail "receipt: $(grep vtpm "$W/hosta/receipts/"*.json)"
expect "vTPM on hostb" "$(show hostb status)" running
expect "epoch on hostb" "$(show hostb epoch)" 2
expect "phase on hosta" "$(show hosta phase)" migrated-away
expect "vTPM on hosta" "$(show hosta status)" erased
expect "epoch on hosta" "$(show hosta epoch)" 2
[ ! -e "$W/hosta/vms/guest/tpm" ] && [ ! -e "$W/hosta/vms/guest/vtpm.keys" ] &&
  ok "hosta's vTPM state and keys are gone" || fail "hosta keeps: $(ls "$W/hosta/vms/guest")"
[ -z "$(swtpm_of hosta)" ] && ok "no swtpm left on hosta" || fail "swtpm left on hosta"
src=$(check_loop "$W/hosta/vms/guest/serial.log") && ok "hosta's TPM lines: $src" ||
  fail "hosta console: $src"
wait_loop_past "$W/hostb/vms/guest/serial.log" $(( ${src#* } + 2 )) && dst=$(check_loop "$W/hostb/vms/guest/serial.log") &&
  [ "${dst% *}" -le $(( ${src#* } + 2 )) ] && ok "hostb goes on: $dst (after ${src#* })" ||
  fail "hostb console: $(check_loop "$W/hostb/vms/guest/serial.log")"

echo "== 3. hosta cannot send the VM to a second destination"
ctl hosta migrate guest --to hostc:$PORT_C --connect 127.0.0.1 >"$W/m2.out" 2>&1 &&
  fail "second migration from hosta succeeded" || ok "refused: $(tail -1 "$W/m2.out")"
expect "VM on hostc" "$(show hostc phase)" none

echo "== 4. back to hosta at epoch 3"
ctl hostb migrate guest --to hosta:$PORT_A --connect 127.0.0.1 >"$W/m3.out" 2>&1 &&
  ok "migration back to hosta committed" || fail "migration back: $(tail -3 "$W/m3.out")"
expect "epoch on hosta" "$(show hosta epoch)" 3
expect "vTPM on hostb" "$(show hostb status)" erased
b=$(check_loop "$W/hostb/vms/guest/serial.log")
wait_loop_past "$W/hosta/vms/guest/serial.log" $(( ${b#* } + 1 )) && ok "hosta goes on after ${b#* }" ||
  fail "hosta console after return: $(tail -2 "$W/hosta/vms/guest/serial.log")"

echo "== 5. sodd restart re-adopts the swtpm"
pid=$(swtpm_of hosta)
kill -TERM "${SOD_HOST_PID[hosta]}"; wait "${SOD_HOST_PID[hosta]}" 2>/dev/null
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ok "swtpm outlives sodd" || fail "swtpm ended with sodd"
sod_start_host "$W" hosta $PORT_A 21300-21349 || exit 1
expect "vTPM after restart" "$(show hosta status)" running
expect "phase after restart" "$(show hosta phase)" running
n=$(check_loop "$W/hosta/vms/guest/serial.log") && wait_loop_past "$W/hosta/vms/guest/serial.log" $(( ${n#* } + 2 )) &&
  ok "guest TPM works after the restart: $(check_loop "$W/hosta/vms/guest/serial.log")" ||
  fail "guest TPM after restart: $(tail -2 "$W/hosta/vms/guest/serial.log")"

echo "== 6. vm stop erases the vTPM"
ctl hosta vm stop guest >/dev/null && ok "vm stop" || fail "vm stop"
[ -z "$(swtpm_of hosta)" ] && ok "swtpm stopped" || fail "swtpm still runs"
[ ! -e "$W/hosta/vms/guest" ] && ok "VM directory (vTPM state, keys) removed" ||
  fail "left: $(ls "$W/hosta/vms/guest")"

echo "== audit"
grep -q '"vtpm.erased"' "$W/hosta/audit.log" && ok "hosta's audit log records the erasure" ||
  fail "no vtpm.erased in hosta's audit log"

[ "$failures" -eq 0 ] && echo "PASS" || echo "$failures failure(s)"
[ "$failures" -eq 0 ]
