#!/usr/bin/env bash
# Builds sod and runs its whole test suite. On a fresh Debian 12 machine, as root, it installs
# what it needs with apt-get first. Exits non-zero on any failure.
#
#   ./scripts/test.sh                 build + every test (unit, fuzz regression, integration),
#                                     then an ASan/UBSan build of the unit and fuzz tests, then a
#                                     short libFuzzer run of every fuzz target (clang)
#   ./scripts/test.sh --quick         the first step only
#   ./scripts/test.sh --sanitize      only the ASan/UBSan build and its tests
#   ./scripts/test.sh --fuzz SECONDS  only the libFuzzer runs, SECONDS per target
#
# Environment: SOD_BUILD_DIR (default build), SOD_JOBS (default: number of cores),
# SOD_FUZZ_SECONDS (default 15), CTEST_ARGS (extra arguments for ctest, e.g. "-R record").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/deps.sh
. scripts/lib/deps.sh

JOBS=${SOD_JOBS:-$(nproc)}
BUILD=${SOD_BUILD_DIR:-build}
FUZZ_SECONDS=${SOD_FUZZ_SECONDS:-15}
steps=(main sanitize fuzz)
case "${1:-}" in
  "") ;;
  --quick) steps=(main) ;;
  --sanitize) steps=(sanitize) ;;
  --fuzz) steps=(fuzz); FUZZ_SECONDS=${2:-$FUZZ_SECONDS} ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
esac

groups=(build test)
[[ " ${steps[*]} " == *" fuzz "* ]] && groups+=(fuzz)
sod_ensure_packages "${groups[@]}"

configure_and_build() {  # dir, cmake args...
  local dir=$1; shift
  cmake -S "$ROOT" -B "$dir" -DSOD_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS"
}

run_main() {
  echo "==> build ($BUILD)"
  configure_and_build "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  echo "==> tests"
  # shellcheck disable=SC2086
  ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" ${CTEST_ARGS:-}
}

run_sanitize() {
  echo "==> ASan/UBSan build ($BUILD-asan)"
  configure_and_build "$BUILD-asan" -DCMAKE_BUILD_TYPE=Debug -DSOD_SANITIZE=ON -DSOD_BUILD_BENCH=OFF
  echo "==> ASan/UBSan tests (unit + fuzz regression)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$BUILD-asan" --output-on-failure -j "$JOBS" -L 'unit|fuzz'
}

run_fuzz() {
  echo "==> libFuzzer build ($BUILD-fuzz, clang)"
  CC=clang CXX=clang++ configure_and_build "$BUILD-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSOD_FUZZ=ON -DSOD_BUILD_TESTS=OFF -DSOD_BUILD_BENCH=OFF
  # Seeds come from the standalone builds of the same targets.
  local seeds_from=$BUILD
  [ -x "$seeds_from/fuzz/fuzz_record_header" ] || seeds_from=$BUILD-asan
  [ -x "$seeds_from/fuzz/fuzz_record_header" ] || {
    configure_and_build "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo; seeds_from=$BUILD; }
  local failed=0 t corpus
  for t in $(sed -n 's/^  \(fuzz_[a-z_]*\)$/\1/p' fuzz/CMakeLists.txt); do
    corpus="$BUILD-fuzz/corpus/$t"
    mkdir -p "$corpus"
    "$seeds_from/fuzz/$t" --write-seeds "$corpus" >/dev/null
    echo "==> fuzz $t for ${FUZZ_SECONDS}s"
    if ! (cd "$BUILD-fuzz" && "./fuzz/$t" "corpus/$t" -max_total_time="$FUZZ_SECONDS" \
          -print_final_stats=0 >"fuzz-$t.log" 2>&1); then
      echo "FAILED: $t (log: $BUILD-fuzz/fuzz-$t.log; crash inputs in $BUILD-fuzz)"
      tail -30 "$BUILD-fuzz/fuzz-$t.log"
      failed=1
    else
      grep -E "^#[0-9]+.*DONE" "$BUILD-fuzz/fuzz-$t.log" | tail -1 || true
    fi
  done
  return $failed
}

for s in "${steps[@]}"; do "run_$s"; done
echo "==> all test steps passed: ${steps[*]}"
