#!/usr/bin/env bash
# graphalloc's replay and micro-benchmarks on the GPU machine.
#
#   bash bench/gpu.sh prepare   here (with Rust): build the binaries and fill .gpu/
#   bash bench/gpu.sh [FILTER]  there (no Rust), from the repository root with .gpu/
#                               carried: writes every log under $OUT (default ./out);
#                               FILTER, if given, picks criterion benchmarks by name
#
# See bench/README.md. Exits non-zero if any step failed; the other steps run anyway.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

prepare() {
    set -e
    local traces=${TRACES_DIR:-../shared/traces}
    [ -d "$traces" ] || traces=traces # a checkout alone: the bundled trace
    mkdir -p "$GPU_DIR"
    rm -f "$GPU_DIR"/replay "$GPU_DIR"/bench_alloc "$GPU_DIR"/*.trace.gz
    cargo build --release --example replay
    cp target/release/examples/replay "$GPU_DIR"/replay
    # The bench executable is target/release/deps/alloc-HASH; ask cargo which one.
    local bench
    bench=$(cargo bench --bench alloc --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    j = json.loads(line)
    if j.get("executable") and j.get("target", {}).get("name") == "alloc":
        print(j["executable"])')
    [ -n "$bench" ] || { echo "no bench executable found" >&2; exit 1; }
    # No dash in the name: GPU.md's test loop runs every .gpu/*-* binary.
    cp "$bench" "$GPU_DIR"/bench_alloc
    if command -v strip >/dev/null; then strip --strip-debug "$GPU_DIR"/replay "$GPU_DIR"/bench_alloc; fi
    cp "$traces"/*.trace.gz "$GPU_DIR"/
    ls -la "$GPU_DIR"
    echo "carry .gpu and run: bash bench/gpu.sh"
}

if [ "${1:-}" = prepare ]; then
    prepare
    exit
fi

OUT=${OUT:-out}
mkdir -p "$OUT"
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }
fail() { echo "!! FAILED: $*" | tee -a "$OUT/summary.txt"; status=1; }

for f in replay bench_alloc; do
    [ -x "$GPU_DIR/$f" ] || { echo "missing $GPU_DIR/$f: run 'bash bench/gpu.sh prepare' here first" >&2; exit 2; }
done
shopt -s nullglob
traces=("$GPU_DIR"/*.trace.gz)
[ ${#traces[@]} -gt 0 ] || { echo "no traces in $GPU_DIR" >&2; exit 2; }

step "machine"
{ date -u; uname -a; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; } \
    > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >> "$OUT/summary.txt"
echo "GRAPHALLOC_CONF=${GRAPHALLOC_CONF:-<unset>}" >> "$OUT/summary.txt"

step "replay --json (one object per trace per line) -> replay.jsonl"
: > "$OUT/replay.jsonl"
for t in "${traces[@]}"; do
    "$GPU_DIR"/replay --json --runs "${RUNS:-5}" "$t" >> "$OUT/replay.jsonl" 2>> "$OUT/replay.stderr" ||
        fail "replay --json $t"
done
cat "$OUT/replay.jsonl" >> "$OUT/summary.txt"
grep -q '"backend":"cuda"' "$OUT/replay.jsonl" || fail "replay did not run on the cuda backend"

step "replay, human-readable, with the SVG -> replay.txt, replay.svg"
"$GPU_DIR"/replay --runs "${RUNS:-5}" --svg "$OUT/replay.svg" "${traces[@]}" \
    > "$OUT/replay.txt" 2>&1 || fail "replay (human-readable)"
cat "$OUT/replay.txt" >> "$OUT/summary.txt"

step "criterion benchmarks -> bench.txt, criterion/"
CRITERION_HOME="$OUT/criterion" "$GPU_DIR"/bench_alloc --bench --noplot ${1:+"$1"} \
    > "$OUT/bench.txt" 2>&1 || fail "bench_alloc"
grep -E -v '^Benchmarking|^Found [0-9]+ outliers|^ +[0-9]+ \(|^$' "$OUT/bench.txt" >> "$OUT/summary.txt"

step "done, status $status"
exit $status
