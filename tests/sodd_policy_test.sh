#!/usr/bin/env bash
# The policy agent end to end (host/policy_agent.h): three real sodd hosts with simulated TPMs,
# enrolled, each monitoring the other two. hosta (h-svm) and hostb (hyperwall) protect against
# the hypervisor, hostc (hypersafe) does not. Real QEMU guests:
#   1. bad input: an architecture not in the table, a malformed table or packages file, unknown
#      packages / options, contradictory options, a request this host does not cover -> clear
#      error, nothing changes;
#   2. "guest" (option 2, hypervisor protection) on hosta; hosta counts a violation -> the agent
#      moves it to hostb (evacuation admitted by hostb), never to hostc; the audit says why;
#   2b. deployment mode: `policy place` of new specs from hosta's view -> hostb picked for
#      option 2; option 4 (no host covers it) -> non-zero exit and every host's reasons;
#   3. "web" (option 1) on hostc; `policy set web --options 1,2` -> relocated to hostb;
#   4. hostb's trust drops too -> no eligible host: both VMs stay on hostb, "policy.no-target"
#      with the reasons, retried (a violation counter never goes down, so no recovery step);
#   5. `sodctl hosts` (table and --json);
#   6. moving-target defense on two more hosts (hostd, hoste): a VM moves every 3 s.
#
#   tests/sodd_policy_test.sh BUILD_DIR
set -uo pipefail
BUILD=${1:?usage: sodd_policy_test.sh BUILD_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SODD=$BUILD/tools/sodd SODCTL=$BUILD/tools/sodctl GUEST=${SOD_GUEST_DIR:-/var/cache/sod/guest}
. "$ROOT/scripts/lib/hosts.sh"
if ! command -v swtpm >/dev/null || [ ! -f "$GUEST/vmlinuz" ]; then
  echo "SKIP: needs swtpm and the test guest"; exit 77
fi
W=$(mktemp -d /tmp/sod-sodd-policy.XXXXXX)
PORT_A=$((17000 + RANDOM % 1000)) PORT_B=$((18000 + RANDOM % 1000)) PORT_C=$((19000 + RANDOM % 1000))
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
ctl() { local h=$1; shift; "$SODCTL" --state-dir "$W/$h" "$@"; }
phase() {  # host vm -> phase or none
  ctl "$1" vm show "$2" --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["phase"])' 2>/dev/null || echo none
}
wait_phase() {  # host vm phase timeout_s
  for _ in $(seq $(($4 * 5))); do
    [ "$(phase "$1" "$2")" = "$3" ] && return 0
    sleep 0.2
  done
  return 1
}
audit() {  # host kind -> matching audit lines (JSON)
  grep -a "\"kind\":\"$2\"" "$W/$1/audit.log" 2>/dev/null
}
refused() {  # what, command... : must fail, prints its error
  local what=$1 out; shift
  if out=$("$@" 2>&1); then fail "$what: accepted ($out)"; else ok "$what refused: $(echo "$out" | tail -1)"; fi
}

cleanup() {
  for h in hosta hostb hostc hostd hoste; do
    for v in guest web mtd; do ctl $h vm stop $v --force >/dev/null 2>&1; done
  done
  for p in "${SOD_HOST_PID[@]}"; do kill -9 "$p" 2>/dev/null; done
  pkill -9 -f "$W/" 2>/dev/null
  rm -f /dev/shm/sod-host[a-e]-guest-* /dev/shm/sod-host[a-e]-web-* /dev/shm/sod-host[a-e]-mtd-*
  wait 2>/dev/null
  [ "$failures" -eq 0 ] && rm -rf "$W" || echo "(work dir kept: $W)"
}
trap cleanup EXIT

sod_pki "$W/pki" hosta hostb hostc

echo "== 1. bad sodd configuration: refused before anything starts"
bad() {  # what, extra sodd args...
  local what=$1; shift
  "$SODD" --host-id hosta --state-dir "$W/bad" --listen 127.0.0.1:$PORT_A --tls-dir "$W/pki" \
    --simulated-tpm "$@" >"$W/bad.out" 2>&1
  local rc=$?
  [ $rc -eq 2 ] && ok "$what: exit 2: $(tail -1 "$W/bad.out")" || fail "$what: exit $rc: $(tail -2 "$W/bad.out")"
}
echo '{"version": 1, "architectures": [{"name": "x", "title": "X", "protected_entity": "VM", "cells": {"hypervisor": {"C": "Maybe"}}}]}' >"$W/bad-caps.json"
echo '{"version": 1, "packages": [{"name": "p", "options": [2, 5], "protect": "CI"}]}' >"$W/bad-pkgs.json"
bad "architecture not in the table" --architecture tpm-host
bad "malformed capability file" --capabilities "$W/bad-caps.json"
bad "package breaking the 5/6-excludes-2 rule" --packages "$W/bad-pkgs.json"
bad "malformed peer" --peer hostb
[ ! -e "$W/bad/sodd.pid" ] && ok "nothing started" || fail "bad sodd left a pid file"

peers() {  # all hosts but $1
  local out=""
  [ "$1" != hosta ] && out+=" --peer hosta=127.0.0.1:$PORT_A"
  [ "$1" != hostb ] && out+=" --peer hostb=127.0.0.1:$PORT_B"
  [ "$1" != hostc ] && out+=" --peer hostc=127.0.0.1:$PORT_C"
  echo "$out"
}
SOD_SODD_ARGS="--architecture h-svm $(peers hosta)" sod_start_host "$W" hosta $PORT_A 21500-21549 || exit 1
SOD_SODD_ARGS="--architecture hyperwall $(peers hostb)" sod_start_host "$W" hostb $PORT_B 21550-21599 || exit 1
SOD_SODD_ARGS="--architecture hypersafe $(peers hostc)" sod_start_host "$W" hostc $PORT_C 21600-21649 || exit 1
sod_enroll_hosts "$W" hosta hostb hostc >/dev/null || { echo "enrollment failed"; exit 1; }

# Every host trusts the other two once it has attested them.
for _ in $(seq 100); do
  n=$(ctl hosta hosts --json 2>/dev/null | python3 -c 'import json,sys; print(sum(h["trusted"] for h in json.load(sys.stdin)["hosts"]))' 2>/dev/null)
  [ "${n:-0}" = 3 ] && break
  sleep 0.2
done
[ "${n:-0}" = 3 ] && ok "hosta trusts all three hosts" || fail "hosta trusts $n hosts: $(ctl hosta hosts)"
ctl hosta hosts

spec() {  # file name security-json
  sod_guest_spec "$1" "$2" 128 "sod.net=0"
  python3 - "$1" "$3" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); s["security"] = json.loads(sys.argv[2])
json.dump(s, open(sys.argv[1], "w"))
PY
}

echo "== 2. bad requests: clear error, nothing changes"
spec "$W/cm.json" guest '{"version": 1, "options": [4], "protect": "CI"}'
refused "vm start needing cloud-manager protection on h-svm" ctl hosta vm start "$W/cm.json"
[ "$(phase hosta guest)" = none ] && ok "no VM started" || fail "a VM was started"
spec "$W/bad.json" guest '{"version": 1, "options": [2, 5], "protect": "CI"}'
refused "vm start with options 2 and 5" ctl hosta vm start "$W/bad.json"

spec "$W/guest.json" guest '{"version": 1, "options": [2], "protect": "CI"}'
ctl hosta vm start "$W/guest.json" >/dev/null && ok "guest (option 2) runs on hosta" ||
  { fail "vm start guest: $(tail -3 "$W/sodd-hosta.err")"; exit 1; }
before=$(ctl hosta policy show guest --json)
refused "unknown package" ctl hosta policy set guest --package no-such-package
refused "unknown option" ctl hosta policy set guest --options 1,8
refused "contradictory options (5 excludes 2)" ctl hosta policy set guest --options 2,5
refused "package and options together" ctl hosta policy set guest --package basic-security --options 1
refused "bad --protect" ctl hosta policy set guest --options 1 --protect X
refused "malformed option list" ctl hosta policy set guest --options 1,,2
refused "unknown host to explain" ctl hosta policy explain guest hostz
[ "$(ctl hosta policy show guest --json)" = "$before" ] && ok "the request is unchanged" ||
  fail "request changed: $(ctl hosta policy show guest --json)"
ctl hosta policy show guest
ctl hosta policy explain guest hostc
# hostc admits no VM whose request it does not cover, whoever sends it.
out=$(ctl hosta migrate guest --to hostc:$PORT_C --connect 127.0.0.1 2>&1) &&
  fail "manual migration to hostc went through" ||
  { echo "$out" | grep -q "does not cover" && ok "hostc refused the offer: $(echo "$out" | tail -1)" ||
    fail "refusal does not say why: $(echo "$out" | tail -2)"; }
[ "$(phase hosta guest)" = running ] && [ "$(phase hostc guest)" = none ] && ok "guest still on hosta only" ||
  fail "after the refused offer: hosta=$(phase hosta guest) hostc=$(phase hostc guest)"

spec "$W/web.json" web '{"version": 1, "options": [1], "protect": "CI"}'
ctl hostc vm start "$W/web.json" >/dev/null && ok "web (option 1) runs on hostc" ||
  fail "vm start web: $(tail -3 "$W/sodd-hostc.err")"

echo "== 3. hosta's trust drops: the agent moves guest to hostb, never to hostc"
t0=$(date +%s.%N)
ctl hosta host violation --reason "test: memory integrity violation" >/dev/null
if wait_phase hostb guest running 60; then
  ok "guest runs on hostb after $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
else
  fail "guest not on hostb: hosta=$(phase hosta guest) hostb=$(phase hostb guest)"
fi
[ "$(phase hosta guest)" = migrated-away ] && ok "hosta: migrated-away" || fail "hosta: $(phase hosta guest)"
[ "$(phase hostc guest)" = none ] && ok "never on hostc" || fail "guest on hostc: $(phase hostc guest)"
audit hosta policy.relocate | grep -q '"to":"hostb"' && ok "hosta audit: $(audit hosta policy.relocate | tail -1 | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d["vm"], d["from"], "->", d["to"], ":", d["why"])')" ||
  fail "no policy.relocate to hostb in hosta's audit"
audit hosta policy.relocated | grep -q '"outcome":"committed"' && ok "hosta audit: relocation committed" ||
  fail "no committed relocation in hosta's audit"
audit hostb attestation.evacuation-admitted | grep -q hosta && ok "hostb admitted hosta as an evacuating source" ||
  fail "no evacuation-admitted in hostb's audit"
audit hostb migration.evacuation-in | grep -q guest && ok "hostb audited the evacuation" ||
  fail "no migration.evacuation-in in hostb's audit"
ctl hostb policy explain guest hosta | grep -q "does NOT cover" && ok "explain: hosta does not cover guest" ||
  fail "explain hosta: $(ctl hostb policy explain guest hosta)"
ctl hostb policy explain guest hostc | grep -q "hypervisor.C requested" && ok "explain: hostc lacks hypervisor protection" ||
  fail "explain hostc: $(ctl hostb policy explain guest hostc)"

echo "== 3b. deployment mode: \`policy place\` answers which host takes a new VM (starts nothing)"
# From hosta's view: hosta untrusted, hostb (hyperwall) and hostc (hypersafe) trusted.
spec "$W/new2.json" newvm '{"version": 1, "options": [2], "protect": "CI"}'
out=$(ctl hosta policy place "$W/new2.json" 2>&1) && echo "$out" | grep -q "^placement: hostb" &&
  ok "option 2 placed on hostb (only trusted host protecting the hypervisor)" || fail "place option 2: $out"
echo "$out"
echo "$out" | grep -A3 "^host hostc" | grep -q "hypervisor.C requested" && ok "place: hostc's reason given" ||
  fail "place: no reason for hostc"
ctl hosta policy place "$W/new2.json" --json | python3 -c '
import json, sys
r = json.load(sys.stdin); h = {x["host"]: x for x in r["hosts"]}
assert r["chosen"] == "hostb", r
assert h["hostb"]["can_take"] and not h["hosta"]["can_take"] and not h["hostc"]["can_take"], h
assert not h["hosta"]["trusted"] and h["hosta"]["self"]
' && ok "place --json: hostb chosen, hosta and hostc cannot" || fail "place --json"
spec "$W/new4.json" newvm '{"version": 1, "options": [4], "protect": "CI"}'
out=$(ctl hosta policy place "$W/new4.json" 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$out" | grep -q "no host can take vm newvm" && echo "$out" | grep -q "cloud-manager" &&
  ok "option 4 (cloud manager): no host, exit $rc: $(echo "$out" | tail -1)" || fail "place option 4: rc=$rc $out"
[ "$(echo "$out" | grep -c "cannot take it")" = 3 ] && ok "place: all three hosts explained" || fail "place reasons: $out"
spec "$W/new-bad.json" newvm '{"version": 1, "options": [2, 5], "protect": "CI"}'
refused "place with contradictory options" ctl hosta policy place "$W/new-bad.json"
refused "place with a missing spec file" ctl hosta policy place "$W/no-such.json"
out=$(ctl hostb policy place "$W/guest.json" 2>&1) &&
  fail "hostb placed a second guest: $out" ||
  { echo "$out" | grep -q 'capacity: a VM named "guest" is already known here (running)' &&
    ok "hostb cannot take a VM of a name it already runs" || fail "place guest on hostb: $out"; }
for h in hosta hostb hostc; do [ "$(phase $h newvm)" = none ] || fail "place started newvm on $h"; done

echo "== 4. requirement raised on hostc: web moves to hostb"
ctl hostc policy set web --options 1,2 && ok "policy set web --options 1,2" || fail "policy set web"
if wait_phase hostb web running 60; then ok "web runs on hostb"; else
  fail "web not on hostb: hostc=$(phase hostc web) hostb=$(phase hostb web)"
fi
audit hostc policy.relocate | grep -q 'requirement changed' && ok "hostc audit: relocated because the requirement changed" ||
  fail "hostc audit: $(audit hostc policy.relocate | tail -1)"
[ "$(phase hosta web)" = none ] && ok "web not on untrusted hosta" || fail "web on hosta: $(phase hosta web)"

echo "== 5. hostb's trust drops too: no eligible host, the VMs stay and the agent says why"
ctl hostb host violation --reason "test: second violation" >/dev/null
for _ in $(seq 75); do audit hostb policy.no-target | grep -q guest && break; sleep 0.2; done
audit hostb policy.no-target | grep -q '"vm":"guest"' && ok "hostb audit: $(audit hostb policy.no-target | grep '"vm":"guest"' | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["reason"])')" ||
  fail "no policy.no-target for guest on hostb"
sleep 4
[ "$(phase hostb guest)" = running ] && [ "$(phase hostb web)" = running ] && ok "both VMs still run on hostb" ||
  fail "hostb: guest=$(phase hostb guest) web=$(phase hostb web)"
n=$(audit hostb policy.no-target | grep -c '"vm":"guest"')
[ "$n" -le 2 ] && ok "no-target audited $n time(s), not every interval" || fail "no-target audited $n times"
[ "$(phase hostc guest)" = none ] && [ "$(phase hosta guest)" = migrated-away ] && ok "never moved to hostc or back to hosta" ||
  fail "guest: hosta=$(phase hosta guest) hostc=$(phase hostc guest)"
ctl hostb hosts
ctl hostb hosts --json | python3 -c '
import json, sys
h = {x["host"]: x for x in json.load(sys.stdin)["hosts"]}
assert not h["hosta"]["trusted"] and not h["hostb"]["trusted"] and h["hostc"]["trusted"], h
assert h["hostc"]["architecture"] == "hypersafe"
' && ok "hosts --json: hosta and hostb untrusted, hostc (hypersafe) trusted" || fail "hosts --json"

echo "== 6. moving-target defense: a VM relocates periodically between eligible hosts"
PORT_D=$((20000 + RANDOM % 500)) PORT_E=$((20500 + RANDOM % 500))
for h in hostd hoste; do "$SODCTL" pki issue --dir "$W/pki" --host $h >/dev/null; done
SOD_SODD_ARGS="--architecture h-svm --peer hoste=127.0.0.1:$PORT_E --moving-target-s 3" \
  sod_start_host "$W" hostd $PORT_D 21650-21699 || exit 1
SOD_SODD_ARGS="--architecture hyperwall --peer hostd=127.0.0.1:$PORT_D --moving-target-s 3" \
  sod_start_host "$W" hoste $PORT_E 21700-21749 || exit 1
sod_enroll_hosts "$W" hostd hoste >/dev/null || fail "enrollment of hostd, hoste"
spec "$W/mtd.json" mtd '{"version": 1, "options": [2], "protect": "CI"}'
ctl hostd vm start "$W/mtd.json" >/dev/null || fail "vm start mtd"
wait_phase hoste mtd running 30 && ok "mtd moved hostd -> hoste" || fail "mtd not on hoste: $(phase hostd mtd)"
audit hostd policy.relocate | grep -q 'moving-target defense' && ok "hostd audit: moving-target defense" ||
  fail "hostd audit: $(audit hostd policy.relocate | tail -1)"
ctl hoste vm stop mtd --force >/dev/null 2>&1; ctl hostd vm stop mtd --force >/dev/null 2>&1

[ "$failures" -eq 0 ] && echo "PASS" || echo "$failures FAILURE(S)"
exit $((failures > 0))
