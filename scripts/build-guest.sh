#!/bin/bash
# build-guest.sh — build the small sod test/demo guest (kernel + initramfs) into a cache dir.
#
# Usage: scripts/build-guest.sh [--force] [--quiet] [DIR]
#   DIR defaults to ${SOD_GUEST_DIR:-/var/cache/sod/guest}.
#
# Produces in DIR:
#   vmlinuz        the kernel of Debian's linux-image-<abi>-amd64 package (downloaded with
#                  apt-get download and unpacked with dpkg-deb -x; never installed)
#   initrd.img     gzip'ed newc cpio: busybox-static, the static helpers built from tools/guest/*.c
#                  (sod-heartbeat, sod-dirty, sod-pattern, sod-tpm), the NIC driver modules with their
#                  dependencies (virtio-net, e1000), the TPM driver modules when the kernel has them
#                  as modules, and /init (settings from sod.* kernel parameters)
#   cmdline        the base kernel command line the run scripts use (console=ttyS0, quiet, ...)
#   manifest       what went in (kernel package and version, busybox version, cache key, date)
#   key            the cache key: sha256 over this script, the helper sources, the kernel package
#                  name and version and the busybox-static version
#   deb/           the downloaded kernel .deb (kept so a rebuild after a helper change needs no
#                  download; older versions are deleted)
# When the key matches and the files exist, nothing is rebuilt ("guest up to date").
#
# Environment: SOD_GUEST_DIR (cache dir), SOD_GUEST_KERNEL_PKG (kernel package to use instead of
# the one linux-image-amd64 depends on).
#
# Needs root on a Debian 12 machine (apt-get install of missing build needs). Leaves nothing behind
# outside DIR but installed packages: all scratch work happens in a temporary dir that is removed.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
SRC_DIR="$REPO/tools/guest"

force=0
quiet=0
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --quiet|-q) quiet=1 ;;
    -h|--help) sed -n '2,30p' "$SCRIPT_PATH"; exit 0 ;;
    -*) echo "build-guest: unknown option $1" >&2; exit 2 ;;
    *) DIR=$1 ;;
  esac
  shift
done
DIR=${DIR:-${SOD_GUEST_DIR:-/var/cache/sod/guest}}

log() { [ "$quiet" = 1 ] || echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

is_root=0
[ "$(id -u)" = 0 ] && is_root=1

# ---- build needs -------------------------------------------------------------------------------
# qemu-system-x86 and socat are not needed to build, but every user of the guest needs them.
need_pkgs=(busybox-static cpio kmod gzip gcc libc6-dev qemu-system-x86 socat)
missing=()
for p in "${need_pkgs[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$is_root" = 1 ] || die "missing packages ${missing[*]}: run as root to install them"
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -qq >&2 &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
    || die "apt-get install ${missing[*]} failed"
fi
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing although busybox-static is installed"
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'INTERP'; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is not static (busybox-static expected, not busybox)"

# ---- which kernel -------------------------------------------------------------------------------
# A fresh machine may have no package lists yet: fetch them once if apt knows no kernel package.
if [ "$is_root" = 1 ] && [ ! -f "$DIR/manifest" ] &&
   ! apt-cache policy linux-image-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  log "apt knows no kernel package yet: apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
fi
kpkg=${SOD_GUEST_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
           | awk '$1 ~ /Depends:/ && $2 ~ /^linux-image-[0-9].*-amd64$/ {print $2; exit}')
fi
if [ -z "$kpkg" ]; then
  kpkg=$(apt-cache pkgnames linux-image- 2>/dev/null | grep -E '^linux-image-[0-9][0-9.]*-[0-9]+-amd64$' \
           | sort -V | tail -n1 || true)
fi
kver=""
[ -n "$kpkg" ] && kver=$(apt-cache policy "$kpkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
if [ -z "$kver" ] || [ "$kver" = "(none)" ]; then
  # apt knows no kernel (lists missing?): keep using the one the cached guest was built from
  if [ -z "${SOD_GUEST_KERNEL_PKG:-}" ] && [ -f "$DIR/manifest" ]; then
    kpkg=$(sed -n 's/^kernel_package=//p' "$DIR/manifest")
    kver=$(sed -n 's/^kernel_version=//p' "$DIR/manifest")
    log "apt knows no guest kernel; keeping the cached $kpkg $kver"
  fi
  [ -n "$kpkg" ] && [ -n "$kver" ] || die "no linux-image-*-amd64 candidate known to apt (run apt-get update)"
fi
bbver=$(dpkg-query -W -f='${Version}' busybox-static)

key=$( {
  echo "script"; cat "$SCRIPT_PATH"
  for f in $(cd "$SRC_DIR" && ls -- *.c | LC_ALL=C sort); do echo "src $f"; cat "$SRC_DIR/$f"; done
  echo "kernel $kpkg $kver"
  echo "busybox $bbver"
} | sha256sum | cut -d' ' -f1 )

if [ "$is_root" = 1 ]; then
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9 # one builder at a time; a waiting one then finds the guest up to date
fi

print_paths() {
  echo "kernel:  $DIR/vmlinuz"
  [ -s "$DIR/vmlinux" ] && echo "pvh-elf: $DIR/vmlinux (same kernel, uncompressed: boots faster)"
  echo "initrd:  $DIR/initrd.img"
  echo "cmdline: $(cat "$DIR/cmdline")"
}

if [ "$force" = 0 ] && [ -f "$DIR/key" ] && [ "$(cat "$DIR/key")" = "$key" ] \
   && [ -s "$DIR/vmlinuz" ] && [ -s "$DIR/initrd.img" ] && [ -s "$DIR/cmdline" ]; then
  echo "guest up to date"
  print_paths
  exit 0
fi

[ "$is_root" = 1 ] || die "guest in $DIR missing or stale: run as root to build it (device nodes in the initramfs)"
t0=$(date +%s.%N)
work=$(mktemp -d "${TMPDIR:-/tmp}/sod-guest-build.XXXXXX")
trap 'rc=$?; rm -rf "$work"; [ $rc = 0 ] || echo "build-guest: FAILED (rc=$rc)" >&2' EXIT
log "building guest into $DIR (kernel $kpkg $kver, key ${key:0:12})"

# ---- kernel package -----------------------------------------------------------------------------
mkdir -p "$DIR/deb"
debname="${kpkg}_${kver//:/%3a}_amd64.deb"
deb="$DIR/deb/$debname"
if [ ! -s "$deb" ] || ! dpkg-deb -I "$deb" >/dev/null 2>&1; then
  log "downloading $kpkg=$kver"
  dl="$work/dl"
  mkdir -p "$dl"
  # apt drops privileges to _apt for downloads: let it write here (avoids the "unsandboxed" warning)
  if id _apt >/dev/null 2>&1; then chmod 711 "$work"; chown _apt "$dl"; fi
  (cd "$dl" && apt-get download -q "$kpkg=$kver" >&2) || die "apt-get download $kpkg=$kver failed"
  got=""
  for f in "$dl"/*.deb; do [ -f "$f" ] && got=$f; done
  [ -n "$got" ] || die "apt-get download produced no .deb"
  find "$DIR/deb" -maxdepth 1 -name '*.deb' -delete
  mv "$got" "$deb"
fi
log "unpacking $(basename "$deb")"
kroot="$work/kernel"
dpkg-deb -x "$deb" "$kroot"
vmlinuz=""
for f in "$kroot"/boot/vmlinuz-*; do [ -f "$f" ] && vmlinuz=$f; done
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $deb"
abi=${vmlinuz##*/vmlinuz-}
moddir=""
for d in "$kroot/lib/modules/$abi" "$kroot/usr/lib/modules/$abi"; do [ -d "$d" ] && moddir=$d; done
[ -n "$moddir" ] || die "no lib/modules/$abi in $deb"

# ---- static helpers -----------------------------------------------------------------------------
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc/sod,lib/modules,dev,proc,sys,run,tmp,root}
chmod 1777 "$rootfs/tmp"
helpers=()
for src in "$SRC_DIR"/*.c; do
  name=$(basename "$src" .c)
  log "compiling $name"
  gcc -static -O2 -s -Wall -Wextra -o "$rootfs/bin/$name" "$src" || die "gcc failed on $src"
  helpers+=("$name")
done

# ---- busybox ------------------------------------------------------------------------------------
cp "$BUSYBOX" "$rootfs/bin/busybox"
while read -r applet; do
  [ -n "$applet" ] || continue
  [ -e "$rootfs/$applet" ] || [ -L "$rootfs/$applet" ] && continue
  mkdir -p "$rootfs/$(dirname "$applet")"
  ln -s /bin/busybox "$rootfs/$applet"
done < <("$BUSYBOX" --list-full)
[ -L "$rootfs/bin/sh" ] || ln -sf busybox "$rootfs/bin/sh"

# ---- kernel modules: NIC drivers and their dependencies -------------------------------------------
# Index every module file by its module name (file name with '-' read as '_').
declare -A modpath
while IFS= read -r -d '' f; do
  b=${f##*/}; b=${b%%.ko*}; modpath[${b//-/_}]=$f
done < <(find "$moddir" -name '*.ko' -print0 -o -name '*.ko.xz' -print0 -o -name '*.ko.zst' -print0)
declare -A builtin
if [ -f "$moddir/modules.builtin" ]; then
  while read -r f; do b=${f##*/}; b=${b%%.ko*}; builtin[${b//-/_}]=1; done < "$moddir/modules.builtin"
fi
declare -A copied
# resolve NAME OUTLIST: append NAME's dependencies, then NAME, to OUTLIST (dependency order).
resolve() {
  local name=${1//-/_} out=$2 dep f
  [ -n "${builtin[$name]:-}" ] && return 0
  f=${modpath[$name]:-}
  [ -n "$f" ] || die "module $name not found in $kpkg"
  if [ -z "${copied[$name]:-}" ]; then
    copied[$name]=1
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do resolve "$dep" "$out"; done
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$rootfs/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$rootfs/lib/modules/$name.ko" ;;
      *) cp "$f" "$rootfs/lib/modules/$name.ko" ;;
    esac
  fi
  grep -qx "$name" "$out" 2>/dev/null || echo "$name" >> "$out"
}
# /etc/sod/modules.<driver>: modules to insmod, in order, when a NIC of that kind is present.
: > "$rootfs/etc/sod/modules.virtio_net"; resolve virtio_pci "$rootfs/etc/sod/modules.virtio_net"
resolve virtio_net "$rootfs/etc/sod/modules.virtio_net"
: > "$rootfs/etc/sod/modules.e1000"; resolve e1000 "$rootfs/etc/sod/modules.e1000"
log "modules: virtio_net: $(tr '\n' ' ' < "$rootfs/etc/sod/modules.virtio_net")| e1000: $(tr '\n' ' ' < "$rootfs/etc/sod/modules.e1000")"
# vTPM (sod.tpm=1): the TPM 2.0 drivers for QEMU's tpm-tis / tpm-crb; built into Debian's kernel,
# where resolve lists nothing and /dev/tpm0 appears without insmod.
: > "$rootfs/etc/sod/modules.tpm"
for m in tpm tpm_tis_core tpm_tis tpm_crb; do resolve "$m" "$rootfs/etc/sod/modules.tpm"; done

# ---- /init --------------------------------------------------------------------------------------
cat > "$rootfs/init" <<'INIT'
#!/bin/sh
# sod test guest /init. Settings come from the kernel command line (sod.KEY=VALUE):
#   sod.hb=1               heartbeat lines "SOD-HB <n> uptime=<s>" on the console (0 = off)
#   sod.hb_ms=100          heartbeat interval
#   sod.net=1              bring up the NIC (virtio-net or e1000) and the TCP service (0 = off)
#   sod.port=7777          TCP service port: each connection gets "SOD-HB <n> uptime=<s>\n"
#   sod.ip=10.0.2.15/24    static address ("dhcp" = udhcpc); sod.gw=10.0.2.2 (QEMU user-net)
#   sod.dirty_mb=0         sod-dirty working set in MiB (0 = no dirtier)
#   sod.dirty_rate=max     MiB/s to dirty: 0 = idle, -1 or max = as fast as possible
#   sod.dirty_seed=        seed (default: random, printed)   sod.dirty_stats=0  stats every N s
#   sod.dirty_verify=0     verify the dirtier's working set every N s
#   sod.pattern_mb=0       sod-pattern area in MiB (0 = no pattern checker)
#   sod.pattern_seed=1     sod.pattern_interval=2 (seconds between verifications)
#   sod.shell=0            1 = interactive shell on the console (for humans)
#   sod.ready_timeout=120  seconds to wait for the helpers to be set up before SOD-READY anyway
#   sod.tpm=0              1 = load the TPM drivers and wait for /dev/tpm0 ("SOD-TPM-DEV <state>")
#   sod.tpm_extend=        64 hex: sod-tpm extend 16 <hex> at boot (needs sod.tpm=1)
#   sod.tpm_ms=0           sod-tpm loop every N ms: extend PCR 16 with sod.tpm_digest, increment
#   sod.tpm_digest=        an NV counter, print "SOD-TPMLOOP <seq> pcr16=<hex> nv=<n>" (0 = off)
# Prints "SOD-READY ..." once everything is started (memory areas filled, TCP service listening);
# never exits.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs -o mode=0755 tmpfs /run

SOD_hb=1 SOD_hb_ms=100 SOD_net=1 SOD_port=7777 SOD_ip=10.0.2.15/24 SOD_gw=10.0.2.2
SOD_dirty_mb=0 SOD_dirty_rate=max SOD_dirty_seed='' SOD_dirty_stats=0 SOD_dirty_verify=0
SOD_pattern_mb=0 SOD_pattern_seed=1 SOD_pattern_interval=2 SOD_shell=0 SOD_ready_timeout=120
SOD_tpm=0 SOD_tpm_extend='' SOD_tpm_ms=0 SOD_tpm_digest=''
set -f # no globbing of kernel parameters
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sod.*=*)
      k=${arg%%=*}; k=${k#sod.}; v=${arg#*=}
      case "$k" in
        *[!a-z0-9_]*|'') echo "SOD-WARN ignoring $arg" ;;
        *) case "$v" in
             *[!A-Za-z0-9_./:-]*) echo "SOD-WARN ignoring $arg" ;;
             *) eval "SOD_$k=\$v" ;;
           esac ;;
      esac ;;
  esac
done
set +f

hostname sod-guest
ip link set lo up 2>/dev/null

net_state=off
if [ "$SOD_net" = 1 ]; then
  net_state=none
  for d in /sys/bus/pci/devices/*; do
    [ -r "$d/vendor" ] || continue
    id="$(cat "$d/vendor"):$(cat "$d/device")"
    case "$id" in
      0x1af4:0x1000|0x1af4:0x1041) drv=virtio_net ;;
      0x8086:0x100e) drv=e1000 ;;
      *) continue ;;
    esac
    for m in $(cat /etc/sod/modules.$drv); do insmod /lib/modules/$m.ko 2>/dev/null; done
    net_state=$drv
    break
  done
  if [ "$net_state" != none ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
    ip link set eth0 up
    if [ "$SOD_ip" = dhcp ]; then
      udhcpc -q -f -n -t 5 -i eth0 -s /etc/sod/udhcpc.script >/dev/null 2>&1 || net_state=dhcp-failed
    else
      ip addr add "$SOD_ip" dev eth0 && ip route add default via "$SOD_gw" dev eth0
    fi
  else
    echo "SOD-WARN sod.net=1 but no virtio-net or e1000 NIC found"
  fi
fi

if [ "$SOD_tpm" = 1 ]; then
  for m in $(cat /etc/sod/modules.tpm); do insmod /lib/modules/$m.ko 2>/dev/null; done
  i=0
  while [ ! -c /dev/tpm0 ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
  if [ -c /dev/tpm0 ]; then
    echo "SOD-TPM-DEV ok"
    if [ -n "$SOD_tpm_extend" ]; then sod-tpm extend 16 "$SOD_tpm_extend"; else sod-tpm read 16; fi
    if [ "$SOD_tpm_ms" != 0 ]; then
      set -- -i "$SOD_tpm_ms"
      [ -n "$SOD_tpm_digest" ] && set -- "$@" -d "$SOD_tpm_digest"
      sod-tpm loop "$@" &
    fi
  else
    echo "SOD-TPM-DEV missing"
  fi
fi

rm -rf /run/sod; mkdir -p /run/sod
waits=""
if [ "$SOD_pattern_mb" != 0 ]; then
  sod-pattern -m "$SOD_pattern_mb" -s "$SOD_pattern_seed" -i "$SOD_pattern_interval" -R /run/sod/pattern &
  renice -n 10 -p $! >/dev/null # background load: keep heartbeat and TCP service responsive
  waits="$waits pattern"
fi
if [ "$SOD_dirty_mb" != 0 ]; then
  set -- -m "$SOD_dirty_mb" -r "$SOD_dirty_rate" -i "$SOD_dirty_stats" -v "$SOD_dirty_verify" -R /run/sod/dirty
  [ -n "$SOD_dirty_seed" ] && set -- "$@" -s "$SOD_dirty_seed"
  sod-dirty "$@" &
  renice -n 10 -p $! >/dev/null
  waits="$waits dirty"
fi
if [ "$SOD_hb" = 1 ] || { [ "$net_state" != off ] && [ "$net_state" != none ]; }; then
  set -- -i "$SOD_hb_ms" -R /run/sod/hb
  [ "$SOD_hb" = 1 ] || set -- "$@" -q
  case "$net_state" in off|none) ;; *) set -- "$@" -p "$SOD_port" ;; esac
  sod-heartbeat "$@" &
  waits="$waits hb"
fi

read up rest < /proc/uptime
deadline=$(( ${up%.*} + SOD_ready_timeout ))
for w in $waits; do
  while [ ! -e /run/sod/$w ]; do
    read up rest < /proc/uptime
    [ ${up%.*} -lt $deadline ] || break
    usleep 50000
  done
  [ -e /run/sod/$w ] || echo "SOD-WARN $w not ready after ${SOD_ready_timeout}s"
done
read up rest < /proc/uptime
echo "SOD-READY uptime=$up net=$net_state hb=$SOD_hb port=$SOD_port dirty_mb=$SOD_dirty_mb dirty_rate=$SOD_dirty_rate pattern_mb=$SOD_pattern_mb"

if [ "$SOD_shell" = 1 ]; then
  while :; do setsid cttyhack sh -l; done &
fi
# PID 1 must never exit: reap children and sleep.
while :; do wait; sleep 60; done
INIT
chmod 755 "$rootfs/init"

cat > "$rootfs/etc/sod/udhcpc.script" <<'DHCP'
#!/bin/sh
# minimal udhcpc hook: configure address and default route
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
DHCP
chmod 755 "$rootfs/etc/sod/udhcpc.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\n' > "$rootfs/etc/group"
printf 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin PS1="sod-guest# "\n' > "$rootfs/etc/profile"
mknod -m 600 "$rootfs/dev/console" c 5 1
mknod -m 666 "$rootfs/dev/null" c 1 3

# ---- pack ---------------------------------------------------------------------------------------
log "packing initramfs"
find "$rootfs" -exec touch -h -d @0 {} +
(cd "$rootfs" && find . -print0 | LC_ALL=C sort -z \
   | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
  | gzip -9 -n > "$work/initrd.img"

base_cmdline="console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check i8042.noaux i8042.nokbd audit=0 cryptomgr.notests 8250.nr_uarts=1"

# ---- vmlinux: the same kernel uncompressed, for QEMU's PVH direct boot ----------------------------
# Under TCG the bzImage spends ~1 s decompressing itself (xz) before the kernel starts; QEMU boots an
# ELF vmlinux that carries the PVH entry note (CONFIG_PVH=y in Debian's kernels) without that step.
# Extracted like the kernel's scripts/extract-vmlinux: find the xz stream in the bzImage, inflate it.
have_vmlinux=0
off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1 || true)
if [ -n "$off" ]; then
  # the bzImage has trailing data after the xz stream: xz then complains, the output is complete
  tail -c +$((off + 1)) "$vmlinuz" | xz -dc > "$work/vmlinux" 2>/dev/null || true
  if LC_ALL=C readelf -h "$work/vmlinux" 2>/dev/null | grep -q 'ELF64' \
     && LC_ALL=C readelf -n "$work/vmlinux" 2>/dev/null | grep -Eq 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)'; then
    have_vmlinux=1
  fi
fi
[ "$have_vmlinux" = 1 ] || log "no PVH vmlinux could be extracted: boots will use vmlinuz (~1 s slower)"

cp "$vmlinuz" "$DIR/.vmlinuz.new"
[ "$have_vmlinux" = 1 ] && mv "$work/vmlinux" "$DIR/.vmlinux.new"
mv "$work/initrd.img" "$DIR/.initrd.img.new"
echo "$base_cmdline" > "$DIR/.cmdline.new"
cat > "$DIR/.manifest.new" <<EOF
kernel_package=$kpkg
kernel_version=$kver
kernel_abi=$abi
busybox_static=$bbver
pvh_vmlinux=$([ "$have_vmlinux" = 1 ] && echo yes || echo no)
helpers=${helpers[*]}
modules_virtio_net=$(tr '\n' ' ' < "$rootfs/etc/sod/modules.virtio_net")
modules_e1000=$(tr '\n' ' ' < "$rootfs/etc/sod/modules.e1000")
modules_tpm=$(tr '\n' ' ' < "$rootfs/etc/sod/modules.tpm")
key=$key
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
rm -f "$DIR/key"
mv "$DIR/.vmlinuz.new" "$DIR/vmlinuz"
if [ "$have_vmlinux" = 1 ]; then mv "$DIR/.vmlinux.new" "$DIR/vmlinux"; else rm -f "$DIR/vmlinux"; fi
mv "$DIR/.initrd.img.new" "$DIR/initrd.img"
mv "$DIR/.cmdline.new" "$DIR/cmdline"
mv "$DIR/.manifest.new" "$DIR/manifest"
echo "$key" > "$DIR/key"

t1=$(date +%s.%N)
log "built in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; initrd $(stat -c %s "$DIR/initrd.img") bytes"
print_paths
