#!/bin/bash
# guest_boot_test.sh — the sod test guest boots under TCG the way the migration tests run it, and
# its helpers work:
#   * builds (or reuses) the guest with scripts/build-guest.sh
#   * boots it: -accel tcg -cpu qemu64, RAM on memory-backend-file share=on, serial console to a
#     file, QMP on a unix socket, user networking (restrict=on) with hostfwd on 127.0.0.1
#   * waits for SOD-READY (timeout 120 s) and reports the boot time (QEMU start -> SOD-READY)
#   * heartbeat advances; sod-pattern reports ok (never BAD); sod-dirty's self-check reports ok
#   * the TCP service answers "SOD-HB <n> uptime=<s>" through hostfwd
#   * QMP answers (query-status: running) and "quit" ends QEMU
# Exits 0 only if all of that holds; always cleans up; prints what failed.
#
# Environment: SOD_GUEST_DIR (guest cache dir), SOD_GUEST_BOOT_TIMEOUT (default 120),
# SOD_GUEST_KEEP=1 keeps the work dir (serial log) for inspection.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GUEST_DIR=${SOD_GUEST_DIR:-/var/cache/sod/guest}
BOOT_TIMEOUT=${SOD_GUEST_BOOT_TIMEOUT:-120}
MEM_MB=512

failures=()
fail() { failures+=("$*"); echo "guest_boot_test: FAIL: $*" >&2; }
info() { echo "guest_boot_test: $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/sod-guest-test.XXXXXX")
shm_dir=/dev/shm
[ -d "$shm_dir" ] && [ -w "$shm_dir" ] || shm_dir=$work
memfile=$(mktemp "$shm_dir/sod-guest-test-mem.XXXXXX")
serial=$work/serial.log
qmp=$work/qmp.sock
qemu_pid=""

cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qemu_pid" 2>/dev/null
    wait "$qemu_pid" 2>/dev/null
  fi
  rm -f "$memfile"
  if [ "${SOD_GUEST_KEEP:-0}" = 1 ]; then
    echo "guest_boot_test: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
  if [ ${#failures[@]} -eq 0 ]; then
    info "PASS"
    exit 0
  fi
  echo "guest_boot_test: ${#failures[@]} check(s) failed:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  if [ -s "$serial" ]; then
    echo "---- last 40 lines of the guest console ----" >&2
    tail -n 40 "$serial" >&2
  fi
  exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# qmp_cmds CMD_JSON...: run commands on a fresh QMP connection (after qmp_capabilities); prints replies.
qmp_cmds() {
  local script="{\"execute\":\"qmp_capabilities\"}"$'\n' c
  for c in "$@"; do script+="$c"$'\n'; done
  printf '%s' "$script" | timeout 10 socat -t 2 - "UNIX-CONNECT:$qmp" 2>&1
}

# tcp_get PORT: one request to the guest's TCP service; prints the answer line.
tcp_get() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1; IFS= read -r -t 4 line <&3; printf "%s\n" "$line"' 2>/dev/null
}

last_hb() { grep -a '^SOD-HB ' "$serial" | tail -n1 | awk '{print $2}'; }

# ---- build --------------------------------------------------------------------------------------
t_build=$(now_ms)
if ! SOD_GUEST_DIR=$GUEST_DIR "$REPO/scripts/build-guest.sh" --quiet "$GUEST_DIR"; then
  fail "scripts/build-guest.sh failed"
  finish
fi
info "guest ready in $GUEST_DIR ($(( $(now_ms) - t_build )) ms)"
command -v socat >/dev/null || { fail "socat missing (build-guest.sh installs it as root)"; finish; }

kernel=$GUEST_DIR/vmlinux
[ -s "$kernel" ] || kernel=$GUEST_DIR/vmlinuz
cmdline="$(cat "$GUEST_DIR/cmdline") sod.hb=1 sod.net=1 sod.pattern_mb=32 sod.pattern_interval=1 sod.dirty_mb=32 sod.dirty_rate=16 sod.dirty_seed=42 sod.dirty_verify=2"

# ---- boot (retry with another port if hostfwd cannot bind) ------------------------------------------
booted=0
for attempt in 1 2 3; do
  port=""
  for _ in $(seq 1 50); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
  done
  [ -n "$port" ] || { fail "no free TCP port found on 127.0.0.1"; finish; }
  rm -f "$serial" "$qmp"; : > "$serial"
  qemu_cmd=(qemu-system-x86_64 -name sod-guest-test -accel tcg -cpu qemu64 -smp 1 -m "${MEM_MB}M"
    -object "memory-backend-file,id=mem0,size=${MEM_MB}M,mem-path=$memfile,share=on"
    -machine memory-backend=mem0
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$kernel" -initrd "$GUEST_DIR/initrd.img" -append "$cmdline"
    -chardev "file,id=ser0,path=$serial" -serial chardev:ser0
    -qmp "unix:$qmp,server=on,wait=off"
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:7777"
    -device virtio-net-pci,netdev=n0)
  info "boot attempt $attempt: ${qemu_cmd[*]}"
  t0=$(now_ms)
  "${qemu_cmd[@]}" > "$work/qemu.out" 2>&1 &
  qemu_pid=$!

  ready_ms=""
  while :; do
    if grep -aq '^SOD-READY' "$serial"; then ready_ms=$(( $(now_ms) - t0 )); break; fi
    kill -0 "$qemu_pid" 2>/dev/null || break
    [ $(( $(now_ms) - t0 )) -lt $(( BOOT_TIMEOUT * 1000 )) ] || break
    sleep 0.05
  done
  if [ -n "$ready_ms" ]; then booted=1; break; fi
  if ! kill -0 "$qemu_pid" 2>/dev/null && grep -q 'hostfwd\|host forwarding' "$work/qemu.out"; then
    info "hostfwd on port $port failed, retrying: $(cat "$work/qemu.out")"
    wait "$qemu_pid" 2>/dev/null; qemu_pid=""
    continue
  fi
  break
done
if [ "$booted" != 1 ]; then
  if kill -0 "$qemu_pid" 2>/dev/null; then
    fail "no SOD-READY within ${BOOT_TIMEOUT}s"
  else
    fail "QEMU exited before SOD-READY: $(cat "$work/qemu.out")"
  fi
  finish
fi
info "boot time (QEMU start -> SOD-READY): $(awk -v m="$ready_ms" 'BEGIN{printf "%.2f", m/1000}') s; $(grep -a '^SOD-READY' "$serial" | head -n1)"
grep -a '^SOD-READY' "$serial" | grep -q 'net=virtio_net' || fail "guest network not up: $(grep -a '^SOD-READY\|^SOD-WARN' "$serial" | tr '\n' ' ')"
if grep -aq '^SOD-WARN' "$serial"; then fail "guest warnings: $(grep -a '^SOD-WARN' "$serial" | tr '\n' ' ')"; fi

# ---- QMP ----------------------------------------------------------------------------------------
status=$(qmp_cmds '{"execute":"query-status"}')
echo "$status" | grep -q '"running": *true' || fail "QMP query-status did not report running: $status"

# ---- heartbeat advances -------------------------------------------------------------------------
hb1=$(last_hb); sleep 2; hb2=$(last_hb)
if [ -z "$hb1" ] || [ -z "$hb2" ]; then
  fail "no SOD-HB lines on the console"
elif [ $(( hb2 - hb1 )) -lt 10 ]; then
  fail "heartbeat advanced only from $hb1 to $hb2 in 2 s (expected ~20)"
else
  info "heartbeat $hb1 -> $hb2 in 2 s"
fi

# ---- TCP service through hostfwd ------------------------------------------------------------------
answer=""
deadline=$(( $(now_ms) + 20000 ))
while [ "$(now_ms)" -lt "$deadline" ]; do
  answer=$(tcp_get "$port")
  [[ "$answer" =~ ^SOD-HB\ [0-9]+\ uptime=[0-9]+\.[0-9]+$ ]] && break
  answer=""
  sleep 0.5
done
if [ -z "$answer" ]; then
  fail "TCP service on 127.0.0.1:$port (hostfwd -> guest :7777) did not answer"
else
  n_tcp=$(awk '{print $2}' <<<"$answer"); n_ser=$(last_hb)
  if [ "$n_tcp" -lt "$hb2" ] || [ $(( n_tcp - n_ser )) -gt 5 ] || [ $(( n_ser - n_tcp )) -gt 5 ]; then
    fail "TCP answer '$answer' does not match the console heartbeat ($n_ser)"
  else
    info "TCP service answered: $answer"
  fi
fi

# ---- memory checkers ------------------------------------------------------------------------------
deadline=$(( $(now_ms) + 30000 ))
while [ "$(now_ms)" -lt "$deadline" ]; do
  grep -aq '^SOD-PATTERN ok' "$serial" && grep -aq '^SOD-DIRTY verify' "$serial" && break
  sleep 0.5
done
if grep -aq '^SOD-PATTERN BAD' "$serial"; then
  fail "pattern checker: $(grep -a '^SOD-PATTERN BAD' "$serial" | head -n1)"
elif ! grep -aq '^SOD-PATTERN ok' "$serial"; then
  fail "pattern checker never reported ok"
else
  info "$(grep -a '^SOD-PATTERN ok' "$serial" | tail -n1)"
fi
if grep -aq '^SOD-DIRTY verify BAD' "$serial"; then
  fail "dirtier self-check: $(grep -a '^SOD-DIRTY verify BAD' "$serial" | head -n1)"
elif ! grep -aq '^SOD-DIRTY verify ok' "$serial"; then
  fail "dirtier self-check never reported"
else
  info "$(grep -a '^SOD-DIRTY verify ok' "$serial" | tail -n1)"
fi

# ---- quit through QMP -----------------------------------------------------------------------------
reply=$(qmp_cmds '{"execute":"quit"}')
echo "$reply" | grep -q '"return"' || fail "QMP quit not acknowledged: $reply"
for _ in $(seq 1 100); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$qemu_pid" 2>/dev/null; then
  fail "QEMU still running 10 s after QMP quit"
else
  wait "$qemu_pid" 2>/dev/null
  qemu_pid=""
  info "QEMU quit via QMP"
fi

finish
