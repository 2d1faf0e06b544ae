# Local sod hosts for the demo and the daemon-level tests. Sourced; expects SODD, SODCTL, GUEST.
#   sod_pki DIR HOST...                 cluster CA + host identities
#   sod_start_host DIR ID PORT FWD_RANGE  starts sodd (pid in SOD_HOST_PID[ID]), waits for its socket;
#                                       each host attests with a simulated TPM (swtpm) and trusts
#                                       the records in DIR/enrollments (SOD_NO_ATTEST=1: sodd
#                                       --no-attestation; SOD_SODD_ARGS: more sodd options)
#   sod_enroll_hosts DIR ID...          every host's enrollment record into DIR/enrollments
#   sod_guest_spec FILE NAME MEM EXTRA [tpm]  a VM spec for the test guest ("tpm": with a vTPM)
#   sod_wait_ready SERIAL [TIMEOUT_S]   waits for SOD-READY on a guest console
#   sod_last_hb SERIAL                  last heartbeat counter (or -1)
declare -gA SOD_HOST_PID

sod_pki() {
  local dir=$1; shift
  "$SODCTL" pki init --dir "$dir" >/dev/null
  for h in "$@"; do "$SODCTL" pki issue --dir "$dir" --host "$h" >/dev/null; done
}

sod_start_host() {
  local root=$1 id=$2 port=$3 fwd=$4
  local attest=(--simulated-tpm --enrollments "$root/enrollments")
  [ "${SOD_NO_ATTEST:-0}" = 1 ] && attest=(--no-attestation)
  # shellcheck disable=SC2086
  "$SODD" --host-id "$id" --state-dir "$root/$id" --listen "127.0.0.1:$port" \
    --tls-dir "$root/pki" --forward-ports "$fwd" "${attest[@]}" ${SOD_SODD_ARGS:-} \
    2>>"$root/sodd-$id.err" &
  SOD_HOST_PID[$id]=$!
  for _ in $(seq 150); do
    "$SODCTL" --state-dir "$root/$id" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "sodd $id did not start:" >&2
  cat "$root/sodd-$id.err" >&2
  return 1
}

sod_enroll_hosts() {
  local root=$1; shift
  for h in "$@"; do
    "$SODCTL" --state-dir "$root/$h" host enrollment --out "$root/$h.enrollment.json" >/dev/null
    "$SODCTL" host enroll "$root/$h.enrollment.json" --dir "$root/enrollments"
  done
}

sod_guest_spec() {
  local file=$1 name=$2 mem=$3 extra=$4 tpm=${5:-} kernel=$GUEST/vmlinuz
  # With a vTPM the guest boots the bzImage (the PVH vmlinux sees no TPM: vtpm/README.md).
  [ -f "$GUEST/vmlinux" ] && [ "$tpm" != tpm ] && kernel=$GUEST/vmlinux
  cat >"$file" <<JSON
{"name": "$name", "memory_mb": $mem, "vcpus": 1, "accel": "tcg", "cpu": "qemu64",
 "kernel": "$kernel", "initrd": "$GUEST/initrd.img",
 "append": "$(cat "$GUEST/cmdline") sod.hb=1 $extra", "guest_port": 7777,
 "tpm": $([ "$tpm" = tpm ] && echo true || echo false)}
JSON
}

sod_wait_ready() {
  local serial=$1 timeout=${2:-120}
  for _ in $(seq $((timeout * 5))); do
    grep -qa SOD-READY "$serial" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "guest did not come up ($serial):" >&2
  tail -5 "$serial" >&2 || true
  return 1
}

sod_last_hb() {
  local n
  n=$(grep -ao 'SOD-HB [0-9]*' "$1" 2>/dev/null | tail -1 | cut -d' ' -f2)
  echo "${n:--1}"
}
