#!/usr/bin/env bash
# Everything graphalloc checks on a GPU machine, in one call.
#
#   bash bench/gpu_suite.sh prepare   here (with Rust): build, fill .gpu/ (ignored by git)
#   bash bench/gpu_suite.sh           there (no Rust), carrying .gpu: logs under $OUT
#
# Steps (each bounded, each logged; a failed step does not stop the others):
#   GPU tests (one binary at a time), compute-sanitizer memcheck on the capture
#   and stream tests, the capture and training-loop examples, trace replay with
#   plain and expandable segments, criterion benchmarks (shards 1, and the thread
#   scaling with shards 16), the PyTorch plug-in comparison and bench/torch_checks.py
#   (through the graphalloc wheel that prepare builds into .gpu/).
#
# PHASES picks the steps (default: all of them, in this order):
#   tests memcheck examples replay criterion torch
# e.g. PHASES="tests examples" for a correctness call and PHASES="replay criterion"
# for a timing call (keep CPU-heavy work such as bench/fuzz.sh out of timing calls).
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu

if [ "${1:-}" = prepare ]; then
    set -e
    mkdir -p "$G" && rm -rf "${G:?}"/*
    exe() { # cargo's JSON messages -> executables of the named targets
        python3 -c 'import sys, json
want = set(sys.argv[1:])
for line in sys.stdin:
    j = json.loads(line)
    if j.get("executable") and j.get("target", {}).get("name") in want:
        print(j["target"]["name"], j["executable"])' "$@"
    }
    cargo build --release --lib --examples
    cp target/release/libgraphalloc.so target/release/examples/{replay,capture,training_loop,planned_capture,hot_check} "$G"/
    cargo test --release --no-run --message-format=json 2>/dev/null |
        exe gpu_backend gpu_streams gpu_capture gpu_training gpu_pool_sharing gpu_two_devices gpu_expandable gpu_planned tensor |
        while read -r name path; do cp "$path" "$G/test_$name"; done
    cargo bench --no-run --message-format=json 2>/dev/null | exe alloc streams |
        while read -r name path; do cp "$path" "$G/bench_$name"; done
    strip --strip-debug "$G"/* 2>/dev/null || true
    # The graphalloc wheel (python/graphalloc + the library just built), for the PyTorch steps.
    GRAPHALLOC_WHEEL_LIB=target/release/libgraphalloc.so python3 -m pip wheel --no-deps -q -w "$G" .
    # The traces: ../shared/traces (TRACES_DIR=... to change), else the bundled one.
    traces=${TRACES_DIR:-../shared/traces}
    [ -d "$traces" ] || traces=traces
    cp "$traces"/*.trace.gz "$G"/
    du -sh "$G"; ls "$G"
    exit 0
fi

PHASES=" ${PHASES:-tests memcheck examples replay criterion torch} "
want() { [[ "$PHASES" == *" $1 "* ]]; }
FINAL=${OUT:-out}
OUT=$FINAL/logs # every log here; tarred at the end (few files travel back)
mkdir -p "$OUT"
S="$OUT/summary.txt"
status=0
step() { echo "== $*" | tee -a "$S"; }
run() { # run NAME SECONDS CMD...: log to $OUT/NAME.log, note the result
    local name=$1 secs=$2; shift 2
    local t0=$SECONDS
    if timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok   $name ($((SECONDS - t0)) s)" | tee -a "$S"
    else
        echo "!! FAIL $name (rc $?, $((SECONDS - t0)) s): tail of $name.log" | tee -a "$S"
        tail -n 25 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$S"
        status=1
    fi
}

step machine
{ date -u; nproc; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; } >> "$S" 2>&1

if want tests; then
step "GPU tests"
for t in "$G"/test_*; do
    run "$(basename "$t")" 150 "$t" --test-threads=1 --nocapture
done
grep -h "test result\|skipping" "$OUT"/test_*.log | sed 's/^/   /' >> "$S"
fi

if want memcheck; then
step "compute-sanitizer memcheck"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ "${MEMCHECK:-1}" = 0 ]; then
    echo "   skipped (MEMCHECK=0)" >> "$S"
elif [ -n "$CS" ]; then
    # API errors are not memory errors: gpu_backend's out-of-memory test makes
    # cuMemAlloc fail on purpose (twice: the try and the retry).
    for t in gpu_backend gpu_streams gpu_capture gpu_training gpu_pool_sharing tensor; do
        run "memcheck_$t" 150 "$CS" --tool memcheck --report-api-errors no --error-exitcode 1 \
            "$G/test_$t" --test-threads=1
        grep -h "ERROR SUMMARY" "$OUT/memcheck_$t.log" | sed 's/^/   /' >> "$S"
    done
else
    echo "   compute-sanitizer not found" >> "$S"
fi
fi

if want examples; then
step examples
run example_capture 60 "$G/capture"
run example_training_loop 120 "$G/training_loop"
run example_planned_capture 120 "$G/planned_capture" --json
sed 's/^/   /' "$OUT/example_planned_capture.log" >> "$S"
head -3 "$OUT/example_capture.log" "$OUT/example_training_loop.log" | sed 's/^/   /' >> "$S"
fi

if want replay; then
step "replay (plain segments, then the default: expandable segments)"
for conf in "expandable_segments:false" ""; do
    for t in "$G"/*.trace.gz; do
        GRAPHALLOC_CONF=$conf "$G/replay" --json --runs "${RUNS:-5}" "$t" >> "$OUT/replay.jsonl" 2>> "$OUT/replay.stderr" ||
            { echo "!! FAIL replay $conf $t" | tee -a "$S"; status=1; }
    done
done
sed 's/^/   /' "$OUT/replay.jsonl" >> "$S"
fi

if want criterion; then
step "criterion: alloc (shards 1)"
run bench_alloc 200 "$G/bench_alloc" --bench --noplot --warm-up-time 0.5 --measurement-time 1.5
# Before/after in one run: BEFORE=DIR holds bench_alloc/bench_streams built from an earlier commit
# (e.g. `git worktree add /tmp/b REV && (cd /tmp/b && bash bench/gpu_suite.sh prepare)`).
if [ -n "${BEFORE:-}" ] && [ -x "$BEFORE/bench_alloc" ]; then
    step "criterion: alloc, the build in $BEFORE (before)"
    run before_bench_alloc 200 "$BEFORE/bench_alloc" --bench --noplot --warm-up-time 0.5 \
        --measurement-time 1.5 'pair|threads'
fi
step "criterion: thread scaling with shards:16"
GRAPHALLOC_CONF=shards:16 run bench_alloc_shards16 90 "$G/bench_alloc" --bench --noplot threads
step "criterion: stream machinery"
run bench_streams 60 "$G/bench_streams" --bench --noplot
for f in bench_alloc before_bench_alloc bench_alloc_shards16 bench_streams; do
    [ -f "$OUT/$f.log" ] || continue
    grep -E "^[a-z_/0-9A-Z]+ +time:|thrpt:|^[a-z].*time:" "$OUT/$f.log" | sed "s/^/   [$f] /" >> "$S"
done
fi

if want torch && [ "${TORCH:-1}" = 1 ] && python3 -c 'import torch' 2>/dev/null; then
    step "PyTorch plug-in (the graphalloc wheel installed into $G/site)"
    python3 -m pip install --no-index --no-deps -q --target "$G/site" "$G"/graphalloc-*.whl
    export PYTHONPATH="$PWD/$G/site${PYTHONPATH:+:$PYTHONPATH}"
    run torch_plugin 240 python3 bench/torch_plugin.py --timeout 100
    tail -n 15 "$OUT/torch_plugin.log" | sed 's/^/   /' >> "$S"
    step "PyTorch's caching allocator on the traces (torch_replay)"
    run torch_replay 400 python3 bench/torch_replay.py --replay "$G/replay" --runs 3 "$G"/*.trace.gz
    tail -n 12 "$OUT/torch_replay.log" | sed 's/^/   /' >> "$S"
    GRAPHALLOC_LIB="$G/libgraphalloc.so" run torch_plugin_planned 240 python3 bench/torch_plugin.py \
        --timeout 100 --workloads graph --capture-pool planned --json "$OUT/torch_plugin_planned.json"
    tail -n 6 "$OUT/torch_plugin_planned.log" | sed 's/^/   /' >> "$S"
    if [ "${TORCH_CHECKS:-1}" = 1 ]; then
        run torch_checks 540 python3 bench/torch_checks.py --timeout 240
    fi
    grep -E "^(PASS|FAIL|torch_checks|record_stream)" "$OUT/torch_checks.log" | sed 's/^/   /' >> "$S"
fi

step "done, status $status"
cp "$S" "$FINAL/summary.txt"
[ -f "$OUT/torch_plugin.json" ] && cp "$OUT/torch_plugin.json" "$FINAL/"
[ -f "$OUT/torch_replay.json" ] && cp "$OUT/torch_replay.json" "$FINAL/"
[ -f "$OUT/torch_checks.json" ] && cp "$OUT/torch_checks.json" "$FINAL/"
cp "$OUT/replay.jsonl" "$FINAL/" 2>/dev/null
tar -czf "$FINAL/logs.tar.gz" -C "$FINAL" logs && rm -rf "$OUT"
exit $status
