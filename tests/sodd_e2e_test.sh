#!/bin/bash
# sodd_e2e_test.sh — sodd and sodctl end to end, with real QEMU and the test guest, over loopback
# and unix sockets only:
#   * certificates from `sodctl pki`; sodd in a fresh state dir; sodctl exit codes (2 usage,
#     3 sodd unreachable, 1 refused)
#   * `sodctl vm start SPEC.json`, `vm list --json`, `vm show`, the guest boots (SOD-READY), its
#     TCP service answers through the forwarded port
#   * kill -9 sodd: the VM keeps running; a new sodd re-adopts it (same pid, running) and the
#     guest heartbeat continues; SIGTERM stops sodd cleanly (pid file removed), the VM survives
#   * `vm stop`: QEMU ends, its memory file goes, the VM is forgotten
# Always cleans up (sodd, QEMU, /dev/shm files, the work dir). Exits 77 (skipped) when the guest is
# not built.
#
# Usage: sodd_e2e_test.sh SODD SODCTL
# Environment: SOD_GUEST_DIR (guest cache dir), SOD_E2E_KEEP=1 keeps the work dir.
set -uo pipefail

SODD=${1:?usage: sodd_e2e_test.sh SODD SODCTL}
SODCTL=${2:?usage: sodd_e2e_test.sh SODD SODCTL}
GUEST_DIR=${SOD_GUEST_DIR:-/var/cache/sod/guest}

kernel=$GUEST_DIR/vmlinux
[ -s "$kernel" ] || kernel=$GUEST_DIR/vmlinuz
if [ ! -s "$kernel" ] || [ ! -s "$GUEST_DIR/initrd.img" ] || [ ! -s "$GUEST_DIR/cmdline" ]; then
  echo "sodd_e2e_test: SKIP: test guest not built in $GUEST_DIR (scripts/build-guest.sh)"
  exit 77
fi

host=e2e-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/sod-sodd-e2e.XXXXXX")
state=$work/state
pki=$work/pki
sodd_pid=""
failures=()

info() { echo "sodd_e2e_test: $*"; }
fail() { failures+=("$*"); echo "sodd_e2e_test: FAIL: $*" >&2; }

# alive PID: the process exists and is not a zombie.
alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null; }

json_get() {  # json_get EXPR < json  (EXPR over `j`, e.g. 'j["vm"]["pid"]')
  python3 -c 'import json,sys; j=json.load(sys.stdin); v='"$1"'; print(v if not isinstance(v,bool) else str(v).lower())'
}

cleanup() {
  if [ -n "$sodd_pid" ] && alive "$sodd_pid"; then kill -9 "$sodd_pid" 2>/dev/null; fi
  for f in "$state"/vms/*/state.json; do
    [ -f "$f" ] || continue
    p=$(json_get 'j["pid"]' < "$f" 2>/dev/null)
    if [ -n "$p" ] && [ "$p" != 0 ] && grep -q "$state" "/proc/$p/cmdline" 2>/dev/null; then
      kill -9 "$p" 2>/dev/null
    fi
  done
  rm -f /dev/shm/sod-"$host"-*
  if [ "${SOD_E2E_KEEP:-0}" = 1 ]; then info "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
  if [ ${#failures[@]} -eq 0 ]; then
    info "PASS"
    exit 0
  fi
  echo "sodd_e2e_test: ${#failures[@]} check(s) failed:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  echo "---- sodd output ----" >&2
  tail -n 40 "$work/sodd.out" >&2 2>/dev/null
  exit 1
}

ctl() { "$SODCTL" --state-dir "$state" "$@"; }

start_sodd() {
  "$SODD" --host-id "$host" --state-dir "$state" --listen 127.0.0.1:0 --tls-dir "$pki" \
    --forward-ports 23000-23099 --simulated-tpm >> "$work/sodd.out" 2>&1 &
  sodd_pid=$!
  for _ in $(seq 1 100); do
    ctl status > /dev/null 2>&1 && return 0
    alive "$sodd_pid" || break
    sleep 0.1
  done
  fail "sodd did not come up"
  finish
}

# wait_exit PID SECONDS
wait_exit() {
  for _ in $(seq 1 $(( $2 * 10 ))); do alive "$1" || return 0; sleep 0.1; done
  return 1
}

last_hb() { grep -a '^SOD-HB ' "$1" | tail -n1 | awk '{print $2}'; }

expect_rc() {  # expect_rc WANT WHAT CMD...
  local want=$1 what=$2; shift 2
  "$@" > "$work/last.out" 2>&1
  local rc=$?
  [ "$rc" = "$want" ] || fail "$what: exit $rc, expected $want: $(head -c 300 "$work/last.out")"
}

# ---- setup --------------------------------------------------------------------------------------
"$SODCTL" pki init --dir "$pki" > /dev/null || { fail "pki init"; finish; }
"$SODCTL" pki issue --dir "$pki" --host "$host" > /dev/null || { fail "pki issue"; finish; }

spec=$work/g1.json
cat > "$spec" <<EOF
{"name": "g1", "memory_mb": 256, "vcpus": 1, "kernel": "$kernel",
 "initrd": "$GUEST_DIR/initrd.img",
 "append": "$(cat "$GUEST_DIR/cmdline") sod.hb=1 sod.net=1", "guest_port": 7777}
EOF

# ---- exit codes without sodd --------------------------------------------------------------------
expect_rc 3 "status without sodd" ctl status
expect_rc 3 "vm list without sodd" ctl vm list
expect_rc 2 "unknown subcommand" ctl vm frobnicate
expect_rc 2 "bad VM name" ctl vm show BAD_NAME
expect_rc 2 "missing spec file" ctl vm start "$work/nope.json"
ctl vm --help | grep -q "start" || fail "vm --help lists no start"

# ---- start --------------------------------------------------------------------------------------
start_sodd
info "sodd up (pid $sodd_pid)"
[ "$(cat "$state/sodd.pid")" = "$sodd_pid" ] || fail "sodd.pid does not hold sodd's pid"
[ "$(stat -c %a "$state/sodd.sock")" = 600 ] || fail "admin socket mode is not 0600"
[ "$(stat -c %a "$state")" = 700 ] || fail "state dir mode is not 0700"
expect_rc 1 "a second sodd on the same state dir" \
  timeout 10 "$SODD" --host-id "$host" --state-dir "$state" --listen 127.0.0.1:0 --tls-dir "$pki" \
  --simulated-tpm
grep -q "another sodd" "$work/last.out" || fail "second sodd did not say why: $(cat "$work/last.out")"
ctl host evidence >/dev/null || fail "the first sodd's TPM is gone after a second sodd was refused"
expect_rc 2 "sodd without a TPM and without --no-attestation" \
  timeout 10 "$SODD" --host-id "$host" --state-dir "$state" --listen 127.0.0.1:0 --tls-dir "$pki"

echo '{"name": "bad", "kernel": "/k", "vcpu": 2}' > "$work/bad.json"
expect_rc 1 "spec with an unknown key" ctl vm start "$work/bad.json"
grep -q '"vcpu"' "$work/last.out" || fail "unknown key not named: $(cat "$work/last.out")"
sed 's#"kernel": "[^"]*"#"kernel": "/nonexistent/vmlinuz"#' "$spec" > "$work/nokernel.json"
expect_rc 1 "spec with a missing kernel" ctl vm start "$work/nokernel.json"
grep -q "not-found" "$work/last.out" || fail "missing kernel: $(cat "$work/last.out")"

expect_rc 0 "vm start" ctl vm start "$spec"
grep -q "started VM g1" "$work/last.out" || fail "vm start output: $(cat "$work/last.out")"
expect_rc 1 "starting g1 twice" ctl vm start "$spec"

list=$(ctl vm list --json) || fail "vm list --json"
[ "$(json_get 'len(j["vms"])' <<<"$list")" = 1 ] || fail "vm list: $list"
[ "$(json_get 'j["vms"][0]["name"]' <<<"$list")" = g1 ] || fail "vm list name: $list"
[ "$(json_get 'j["vms"][0]["phase"]' <<<"$list")" = running ] || fail "vm list phase: $list"
qemu_pid=$(json_get 'j["vms"][0]["pid"]' <<<"$list")
host_port=$(json_get 'j["vms"][0]["host_port"]' <<<"$list")
memfile=$(json_get 'j["vms"][0]["memory_file"]' <<<"$list")
serial=$(json_get 'j["vms"][0]["serial_log"]' <<<"$list")
alive "$qemu_pid" || fail "QEMU pid $qemu_pid from vm list is not running"
[ -f "$memfile" ] || fail "memory file $memfile missing"
[ "$(ps -o sid= -p "$qemu_pid" | tr -d ' ')" = "$qemu_pid" ] || fail "QEMU is not in its own session"
ctl vm list | grep -q '^g1  *running' || fail "vm list table: $(ctl vm list)"
"$SODCTL" vm list --state-dir "$state" | grep -q '^g1 ' || fail "--state-dir after the command"
"$SODCTL" --socket "$state/sodd.sock" vm list | grep -q '^g1 ' || fail "--socket"

show=$(ctl vm show g1) || fail "vm show"
grep -q '^run state  *running' <<<"$show" || fail "vm show run state: $show"
grep -q "^serial log  *$serial" <<<"$show" || fail "vm show serial log: $show"
expect_rc 1 "vm show of an unknown VM" ctl vm show nosuchvm
grep -q "not-found" "$work/last.out" || fail "unknown VM: $(cat "$work/last.out")"

# ---- the guest runs -----------------------------------------------------------------------------
for _ in $(seq 1 1200); do grep -aq '^SOD-READY' "$serial" && break; sleep 0.1; done
grep -aq '^SOD-READY' "$serial" || { fail "no SOD-READY in $serial"; finish; }
info "guest ready: $(grep -a '^SOD-READY' "$serial" | head -n1)"
answer=""
for _ in $(seq 1 40); do
  answer=$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$host_port"' && IFS= read -r -t 4 l <&3 && echo "$l"' 2>/dev/null)
  [[ "$answer" =~ ^SOD-HB\ [0-9]+ ]] && break
  sleep 0.5
done
[[ "$answer" =~ ^SOD-HB\ [0-9]+ ]] || fail "guest TCP service on 127.0.0.1:$host_port did not answer"

# ---- kill -9 sodd: the VM keeps running, a new sodd re-adopts it --------------------------------
kill -9 "$sodd_pid"
wait "$sodd_pid" 2>/dev/null  # reap it (and keep bash from reporting "Killed")
alive "$sodd_pid" && fail "sodd survived kill -9"
hb1=$(last_hb "$serial")
sleep 1
alive "$qemu_pid" || fail "QEMU died with sodd"
hb2=$(last_hb "$serial")
[ -n "$hb1" ] && [ -n "$hb2" ] && [ "$hb2" -gt "$hb1" ] || fail "heartbeat stopped without sodd ($hb1 -> $hb2)"
expect_rc 3 "status after kill -9" ctl status

start_sodd
info "sodd restarted (pid $sodd_pid)"
shown=$(ctl vm show g1 --json) || fail "vm show after restart"
[ "$(json_get 'j["vm"]["phase"]' <<<"$shown")" = running ] || fail "not running after restart: $shown"
[ "$(json_get 'j["vm"]["pid"]' <<<"$shown")" = "$qemu_pid" ] || fail "another pid after restart: $shown"
[ "$(json_get 'j["vm"]["run_state"]' <<<"$shown")" = running ] || fail "run state after restart: $shown"
grep -q '"kind":"vm.adopted"' "$state/audit.log" || fail "no vm.adopted event"
sleep 1
hb3=$(last_hb "$serial")
[ "$hb3" -gt "$hb2" ] || fail "heartbeat did not continue after re-adoption ($hb2 -> $hb3)"
info "heartbeat $hb1 -> $hb2 (sodd dead) -> $hb3 (re-adopted)"
st=$(ctl status --json) || fail "status --json"
[ "$(json_get 'j["host_id"]' <<<"$st")" = "$host" ] || fail "status host id: $st"
[ "$(json_get 'j["phases"]["running"]' <<<"$st")" = 1 ] || fail "status phases: $st"
ctl status | grep -q "^host  *$host" || fail "status table: $(ctl status)"

# ---- SIGTERM: clean stop, the VM survives --------------------------------------------------------
kill -TERM "$sodd_pid"
wait "$sodd_pid"
rc=$?
[ "$rc" = 0 ] || fail "sodd exited $rc on SIGTERM"
[ ! -e "$state/sodd.pid" ] || fail "sodd.pid left behind after a clean stop"
[ ! -e "$state/sodd.sock" ] || fail "admin socket left behind after a clean stop"
alive "$qemu_pid" || fail "QEMU died with a clean sodd stop"

# ---- stop ---------------------------------------------------------------------------------------
start_sodd
expect_rc 0 "vm stop" ctl vm stop g1
wait_exit "$qemu_pid" 10 || fail "QEMU still runs after vm stop"
[ ! -e "$memfile" ] || fail "memory file $memfile left after vm stop"
[ ! -e "$state/vms/g1" ] || fail "VM dir left after vm stop"
[ "$(ctl vm list --json | json_get 'len(j["vms"])')" = 0 ] || fail "VM still listed after stop"
expect_rc 1 "stopping g1 twice" ctl vm stop g1
grep -q '"kind":"vm.stopped"' "$state/audit.log" || fail "no vm.stopped event"

kill -TERM "$sodd_pid"
wait "$sodd_pid"
finish
