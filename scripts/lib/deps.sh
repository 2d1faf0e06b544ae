# Installs the Debian 12 packages a task needs, only those missing. Sourced by the scripts.
#   sod_ensure_packages build test fuzz guest ...
# Groups:
#   build  compilers and libraries to build sod
#   test   what the test suite runs against (openssl CLI, QEMU, swtpm, tpm2-tools, ...)
#   fuzz   clang and its libFuzzer/sanitizer runtime
#   guest  what scripts/build-guest.sh needs to build the test guest
sod_packages_for() {
  case "$1" in
    build) echo "build-essential cmake pkg-config g++ libssl-dev liburing-dev libxxhash-dev
                 nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libgtest-dev
                 libgmock-dev libbenchmark-dev" ;;
    test) echo "openssl qemu-system-x86 qemu-utils swtpm swtpm-tools tpm2-tools libtss2-dev
                socat python3 iproute2 procps" ;;
    fuzz) echo "clang libclang-rt-14-dev" ;;
    guest) echo "busybox-static cpio kmod xz-utils zstd gcc libc6-dev qemu-system-x86" ;;
    *) echo "sod_packages_for: unknown group $1" >&2; return 1 ;;
  esac
}

sod_ensure_packages() {
  local want=() missing=() p
  for g in "$@"; do
    # shellcheck disable=SC2207
    want+=($(sod_packages_for "$g")) || return 1
  done
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
    return 1
  fi
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Try with the lists the machine has; on a fresh machine (no lists, or stale ones) update once
  # and try again.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
}
