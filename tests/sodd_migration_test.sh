#!/usr/bin/env bash
# Migrations between two real sodd hosts on loopback, with a guest dirtying memory, and the
# failures the migration issue names: kill -9 of the destination sodd, of the destination QEMU,
# and of the source sodd, each mid-stream; and an admin cancelling a migration mid-stream, with
# `sodctl cancel` and with SIGTERM to `sodctl migrate`. After each: the VM runs on the source (its
# heartbeat advances), nothing is left on the destination (no QEMU, no memory file, no VM record
# once its sodd is back), and a restarted sodd settles what it finds. Then a clean migration
# commits.
#
#   tests/sodd_migration_test.sh BUILD_DIR
set -uo pipefail
BUILD=${1:?usage: sodd_migration_test.sh BUILD_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SODD=$BUILD/tools/sodd SODCTL=$BUILD/tools/sodctl GUEST=${SOD_GUEST_DIR:-/var/cache/sod/guest}
. "$ROOT/scripts/lib/hosts.sh"
W=$(mktemp -d /tmp/sod-sodd-migration.XXXXXX)
PORT_A=$((17000 + RANDOM % 1000)) PORT_B=$((18000 + RANDOM % 1000))
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
ctl() { local h=$1; shift; "$SODCTL" --state-dir "$W/$h" "$@"; }
phase() { ctl "$1" vm show "$2" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["phase"])' 2>/dev/null || echo none; }
field() { ctl "$1" vm show "$2" --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['vm'].get('$3',''))" 2>/dev/null; }

cleanup() {
  for h in hosta hostb; do ctl $h vm stop guest --force >/dev/null 2>&1; done
  for p in "${SOD_HOST_PID[@]}"; do kill -9 "$p" 2>/dev/null; done
  pkill -9 -f "$W/" 2>/dev/null
  rm -f /dev/shm/sod-hosta-guest-* /dev/shm/sod-hostb-guest-*
  wait 2>/dev/null
  [ "$failures" -eq 0 ] && rm -rf "$W" || echo "(work dir kept: $W)"
}
trap cleanup EXIT

expect_source_healthy() {  # after a failed migration
  local what=$1 serial=$W/hosta/vms/guest/serial.log before
  [ "$(phase hosta guest)" = running ] && ok "$what: VM phase on hosta is running" ||
    fail "$what: VM phase on hosta is $(phase hosta guest)"
  before=$(sod_last_hb "$serial"); sleep 2
  [ "$(sod_last_hb "$serial")" -gt "$before" ] && ok "$what: heartbeat advances on hosta" ||
    fail "$what: heartbeat stuck at $before on hosta"
  grep -qa "SOD-PATTERN BAD" "$serial" && fail "$what: memory pattern BAD on hosta"
}

expect_destination_clean() {
  local what=$1
  for _ in $(seq 50); do
    pgrep -f "$W/hostb/vms/guest/qmp.sock" >/dev/null || break; sleep 0.2
  done
  pgrep -f "$W/hostb/vms/guest/qmp.sock" >/dev/null && fail "$what: a QEMU is left on hostb" ||
    ok "$what: no QEMU left on hostb"
  ls /dev/shm/sod-hostb-guest-* >/dev/null 2>&1 && fail "$what: memory file left on hostb" ||
    ok "$what: no memory file left on hostb"
  local p; p=$(phase hostb guest)
  [ "$p" = none ] && ok "$what: hostb has no VM record" || fail "$what: hostb has VM record in phase $p"
}

migrate_and_kill() {  # what, victim-kind
  local what=$1 victim=$2
  ctl hosta migrate guest --to hostb:$PORT_B --connect 127.0.0.1 --max-bandwidth 8 \
    >"$W/migrate.out" 2>&1 &
  local mpid=$!
  sleep 4
  case $victim in
    dest-sodd) kill -9 "${SOD_HOST_PID[hostb]}" ;;
    dest-qemu) kill -9 "$(pgrep -f "$W/hostb/vms/guest/qmp.sock" | head -1)" ;;
    source-sodd) kill -9 "${SOD_HOST_PID[hosta]}" ;;
  esac
  wait $mpid; local rc=$?
  [ $rc -ne 0 ] && ok "$what: sodctl migrate failed (exit $rc): $(tail -1 "$W/migrate.out")" ||
    fail "$what: sodctl migrate succeeded: $(cat "$W/migrate.out")"
}

sod_pki "$W/pki" hosta hostb
sod_start_host "$W" hosta $PORT_A 21100-21199 || exit 1
sod_start_host "$W" hostb $PORT_B 21200-21299 || exit 1
sod_enroll_hosts "$W" hosta hostb >/dev/null || { echo "enrollment failed"; exit 1; }
sod_guest_spec "$W/guest.json" guest 256 "sod.pattern_mb=32 sod.dirty_mb=64 sod.dirty_rate=16"
ctl hosta vm start "$W/guest.json" >/dev/null || { echo "vm start failed"; exit 1; }
sod_wait_ready "$W/hosta/vms/guest/serial.log" || exit 1

echo "== 1. kill -9 the destination sodd mid-stream"
migrate_and_kill "dest sodd killed" dest-sodd
expect_source_healthy "dest sodd killed"
sod_start_host "$W" hostb $PORT_B 21200-21299 || exit 1  # its restart fences and removes the incoming VM
expect_destination_clean "dest sodd killed"

echo "== 2. kill -9 the destination QEMU mid-stream"
migrate_and_kill "dest QEMU killed" dest-qemu
expect_source_healthy "dest QEMU killed"
expect_destination_clean "dest QEMU killed"

echo "== 3. kill -9 the source sodd mid-stream"
migrate_and_kill "source sodd killed" source-sodd
serial=$W/hosta/vms/guest/serial.log
before=$(sod_last_hb "$serial"); sleep 3
[ "$(sod_last_hb "$serial")" -gt "$before" ] && ok "source sodd killed: the VM keeps running without its sodd" ||
  fail "source sodd killed: heartbeat stuck at $before"
expect_destination_clean "source sodd killed"
sod_start_host "$W" hosta $PORT_A 21100-21199 || exit 1
expect_source_healthy "source sodd restarted"
grep -q '"migration.restart-resolution"' "$W/hosta/audit.log" &&
  ok "source sodd restarted: the audit log explains the resolution" ||
  fail "source sodd restarted: no restart resolution in the audit log"

echo "== 4. an admin cancels mid-stream: sodctl cancel, then SIGTERM to sodctl migrate"
"$SODCTL" --state-dir "$W/hosta" migrate guest --to hostb:$PORT_B --connect 127.0.0.1 \
  --max-bandwidth 8 >"$W/migrate.out" 2>&1 &
mpid=$!
sleep 4
if ctl hosta cancel guest >"$W/cancel.out" 2>&1; then
  ok "sodctl cancel: $(cat "$W/cancel.out")"
else
  fail "sodctl cancel failed: $(cat "$W/cancel.out")"
fi
wait $mpid; rc=$?
[ $rc -eq 1 ] && grep -aq "cancelled" "$W/migrate.out" &&
  ok "sodctl migrate ended with exit 1: $(tail -1 "$W/migrate.out")" ||
  fail "sodctl migrate after the cancel: exit $rc: $(cat "$W/migrate.out")"
expect_source_healthy "cancelled"
expect_destination_clean "cancelled"
grep -q '"migration.cancel"' "$W/hosta/audit.log" && ok "cancelled: in hosta's audit log" ||
  fail "cancelled: no migration.cancel in hosta's audit log"
grep '"migration.abort"' "$W/hostb/audit.log" | tail -1 | grep -q cancelled &&
  ok "cancelled: hostb aborted, for the reason the source gave" ||
  fail "cancelled: hostb's last abort: $(grep '"migration.abort"' "$W/hostb/audit.log" | tail -1)"
ctl hosta cancel guest >"$W/cancel.out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "no outgoing migration" "$W/cancel.out" &&
  ok "sodctl cancel with nothing to cancel: exit 1: $(cat "$W/cancel.out")" ||
  fail "sodctl cancel with nothing to cancel: exit $rc: $(cat "$W/cancel.out")"

"$SODCTL" --state-dir "$W/hosta" migrate guest --to hostb:$PORT_B --connect 127.0.0.1 \
  --max-bandwidth 8 >"$W/migrate.out" 2>&1 &
mpid=$!
sleep 4
kill -TERM $mpid
wait $mpid; rc=$?
[ $rc -eq 1 ] && grep -aq "cancelling the migration of guest" "$W/migrate.out" &&
  grep -aq "cancelled" "$W/migrate.out" &&
  ok "SIGTERM: sodctl migrate cancelled it and waited: exit 1: $(tail -1 "$W/migrate.out")" ||
  fail "SIGTERM to sodctl migrate: exit $rc: $(cat "$W/migrate.out")"
expect_source_healthy "SIGTERM"
expect_destination_clean "SIGTERM"

echo "== 5. a clean migration after all that (QEMU held to 200 ms from the start: no stepped target)"
if ctl hosta migrate guest --to hostb:$PORT_B --connect 127.0.0.1 --downtime-limit 200 \
    --downtime-start 0 >"$W/migrate.out" 2>&1; then
  ok "migration committed: $(grep -a 'total time' "$W/migrate.out" | xargs)"
  grep -aq 'planned for at most 200 ms' "$W/migrate.out" &&
    ok "QEMU's downtime target was the limit given" ||
    fail "downtime target: $(grep -a 'downtime ' "$W/migrate.out")"
  # sodd preloaded its library into the guest's QEMU: the RAM check had the kernel's write log.
  grep -aq 'RAM check     write log, ' "$W/migrate.out" &&
    ok "RAM check: $(grep -a 'RAM check' "$W/migrate.out" | xargs)" ||
    fail "RAM check without its write log: $(grep -a 'RAM check' "$W/migrate.out")"
  [ "$(phase hostb guest)" = running ] && ok "the VM runs on hostb" || fail "hostb phase $(phase hostb guest)"
  [ "$(phase hosta guest)" = migrated-away ] && ok "hosta records it migrated away" ||
    fail "hosta phase $(phase hosta guest)"
  pgrep -f "$W/hosta/vms/guest/qmp.sock" >/dev/null && fail "a QEMU is left on hosta" ||
    ok "no QEMU left on hosta: the VM runs in exactly one place"
  for h in hosta hostb; do
    "$BUILD/tools/sodctl" --version >/dev/null
  done
else
  fail "clean migration failed: $(cat "$W/migrate.out")"
fi

echo "$((failures == 0 ? 1 : 0)) passed, $((failures > 0 ? 1 : 0)) failed"
[ "$failures" -eq 0 ]
