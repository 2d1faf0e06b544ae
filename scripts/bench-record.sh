#!/usr/bin/env bash
# Record-layer and transport micro-benchmarks (single core), medians of repeated runs, and the
# engine's whole data path against plain QEMU's (pipeline_bench, both cores).
#   ./scripts/bench-record.sh [REPETITIONS]      (default 7)
# Prints the Google Benchmark aggregate table (median rows) for record_bench and transport_bench,
# then pipeline_bench's table; raw output goes to out/bench-record/<UTC timestamp>/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/lib/deps.sh
sod_ensure_packages build
REPS=${1:-7}
BUILD=${SOD_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSOD_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target record_bench transport_bench pipeline_bench >/dev/null
OUT=out/bench-record/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
for b in record_bench transport_bench; do
  echo "==> $b ($REPS repetitions, medians)"
  "$BUILD/bench/$b" --benchmark_repetitions="$REPS" --benchmark_min_time=0.3 \
    --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
    --benchmark_out="$OUT/$b.json" --benchmark_out_format=json 2>/dev/null |
    grep -E "_median|^Benchmark|^---" || true
done
echo "==> pipeline_bench ($REPS repetitions, modes interleaved, medians)"
"$BUILD/bench/pipeline_bench" --reps "$REPS" | tee "$OUT/pipeline_bench.txt"
echo "raw results: $OUT"
