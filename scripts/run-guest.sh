#!/bin/bash
# run-guest.sh — boot the sod test guest under QEMU/TCG (for humans; tests build their own command).
#
# Usage: scripts/run-guest.sh [options] [-- extra QEMU args...]
#   --mem MIB          guest RAM (default 512)
#   --port PORT        forward 127.0.0.1:PORT on the host to the guest's TCP service (port 7777)
#   --nic virtio|e1000|none   NIC model (default virtio; QEMU user networking with restrict=on:
#                      the guest can reach nothing outside, only host->guest hostfwd works)
#   --shared PATH      guest RAM on memory-backend-file mem-path=PATH,share=on (as migrations need)
#   --qmp PATH         QMP on unix socket PATH (server, no wait)
#   --serial-file PATH serial console to a file instead of this terminal
#   --append "ARGS"    extra kernel parameters, e.g. "sod.dirty_mb=256 sod.dirty_rate=max sod.hb=1"
#                      (later values win; default for humans: sod.shell=1 sod.hb=0)
#   --bzimage          boot vmlinuz (bzImage) instead of the PVH vmlinux
#   --dir DIR          guest cache dir (default ${SOD_GUEST_DIR:-/var/cache/sod/guest})
#   --dry-run          print the QEMU command and exit
# Guest settings (sod.*) are listed in the guest's /init: scripts/build-guest.sh, section /init.
# The console is this terminal (Ctrl-A X quits, Ctrl-A C toggles the QEMU monitor).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)

mem=512 port="" nic=virtio shared="" qmp="" serial_file="" append="" bzimage=0 dry=0
DIR=${SOD_GUEST_DIR:-/var/cache/sod/guest}
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) mem=$2; shift ;;
    --port) port=$2; shift ;;
    --nic) nic=$2; shift ;;
    --shared) shared=$2; shift ;;
    --qmp) qmp=$2; shift ;;
    --serial-file) serial_file=$2; shift ;;
    --append) append="$append $2"; shift ;;
    --bzimage) bzimage=1 ;;
    --dir) DIR=$2; shift ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; break ;;
    *) echo "run-guest: unknown option $1 (QEMU args go after --)" >&2; exit 2 ;;
  esac
  shift
done

SOD_GUEST_DIR=$DIR "$SCRIPT_DIR/build-guest.sh" --quiet "$DIR" >/dev/null

kernel=$DIR/vmlinux
[ "$bzimage" = 0 ] && [ -s "$kernel" ] || kernel=$DIR/vmlinuz
cmdline="$(cat "$DIR/cmdline") sod.shell=1 sod.hb=0$append"
[ "$nic" = none ] && cmdline="$cmdline sod.net=0"

args=(qemu-system-x86_64 -name sod-guest -accel tcg -cpu qemu64 -smp 1 -m "${mem}M"
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$kernel" -initrd "$DIR/initrd.img" -append "$cmdline")
if [ -n "$shared" ]; then
  args+=(-object "memory-backend-file,id=mem0,size=${mem}M,mem-path=$shared,share=on"
         -machine memory-backend=mem0)
fi
if [ "$nic" != none ]; then
  netdev="user,id=n0,restrict=on" # restrict: the guest reaches nothing; hostfwd still works
  [ -n "$port" ] && netdev="$netdev,hostfwd=tcp:127.0.0.1:$port-:7777"
  case "$nic" in
    virtio) dev=virtio-net-pci ;;
    e1000) dev=e1000 ;;
    *) echo "run-guest: --nic virtio|e1000|none" >&2; exit 2 ;;
  esac
  args+=(-netdev "$netdev" -device "$dev,netdev=n0")
fi
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
if [ -n "$serial_file" ]; then
  args+=(-serial "file:$serial_file")
else
  args+=(-serial mon:stdio)
fi
args+=("$@")

if [ "$dry" = 1 ]; then
  printf '%q ' "${args[@]}"; echo
  exit 0
fi
exec "${args[@]}"
