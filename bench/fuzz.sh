#!/usr/bin/env bash
# The cargo-fuzz target `ops` on many cores: runs the prebuilt binary
# .gpu-fuzz/fuzz_ops (libFuzzer + AddressSanitizer, overflow checks on) as
# JOBS parallel jobs and prints the totals. Host backend only: no GPU needed,
# it only wants the GPU machine's cores.
#
#   here:   cd fuzz && cargo +nightly fuzz build -O -a ops &&
#           mkdir -p ../.gpu-fuzz && cp target/x86_64-unknown-linux-gnu/release/ops ../.gpu-fuzz/fuzz_ops
#   there:  run(command="bash bench/fuzz.sh", carry=[".gpu-fuzz"], timeout_s=600)
#
# Environment: JOBS (default: the number of cores), RUNS (executions per
# job, default 650000: 16 jobs give 10.4 million), SECS (time limit per job,
# default 540, so that the call ends inside the device tool's 10 minutes:
# a job stops at RUNS or SECS, whichever comes first), MAX_LEN (input
# bytes, default 4096), RELOAD (seconds between rereads of the shared
# corpus by each job, default 10; libFuzzer's 1 makes 16 jobs list a
# corpus of thousands of files 16 times a second). AddressSanitizer runs
# with the binary's defaults (a 16 MiB quarantine, fuzz_targets/ops.rs);
# ASAN_OPTIONS overrides them. Outputs under $OUT/fuzz: the job logs
# (fuzz-N.log), the corpus, crash inputs (crash-*), summary.txt. If the
# jobs stop at SECS before RUNS, run the call again and add the totals.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.gpu-fuzz/fuzz_ops
DIR=${OUT:-out}/fuzz
mkdir -p "$DIR/corpus"
[ -d .gpu-fuzz/corpus ] && cp -n .gpu-fuzz/corpus/* "$DIR/corpus/" 2>/dev/null
# A corpus of many small files travels better packed: .gpu-fuzz/corpus.tar.gz (holding corpus/).
[ -f .gpu-fuzz/corpus.tar.gz ] && tar -xzf .gpu-fuzz/corpus.tar.gz -C "$DIR"
JOBS=${JOBS:-$(nproc)}
cd "$DIR"
t0=$SECONDS
"$BIN" -jobs="$JOBS" -workers="$JOBS" -runs="${RUNS:-650000}" -max_total_time="${SECS:-540}" \
    -max_len="${MAX_LEN:-4096}" -reload="${RELOAD:-10}" -rss_limit_mb=8192 -print_final_stats=1 \
    -artifact_prefix="$PWD/" corpus > jobs.log 2>&1
rc=$?
crashes=$(ls crash-* leak-* timeout-* oom-* 2>/dev/null | wc -l)
{
    echo "fuzz_ops: $JOBS jobs, $((SECONDS - t0)) s, libFuzzer rc $rc"
    execs=$(grep -h "stat::number_of_executed_units" fuzz-*.log | awk '{s += $2} END {print s + 0}')
    echo "executions, all jobs: $execs"
    grep -h "stat::average_exec_per_sec" fuzz-*.log | awk '{s += $2} END {print "executions/s, summed over jobs: " s + 0}'
    # Coverage: the highest cov/ft any job reached (they share one corpus).
    grep -ho "cov: [0-9]* ft: [0-9]*" fuzz-*.log | sort -t' ' -k2,2n -k4,4n | tail -1 |
        sed 's/^/coverage, best job: /'
    echo "corpus: $(ls corpus | wc -l) inputs"
    echo "crash/leak/timeout/oom inputs: $crashes"
    for f in fuzz-*.log; do
        grep -m 1 -B 2 -A 25 "ERROR: libFuzzer\|panicked at\|ERROR: AddressSanitizer" "$f" | sed "s|^|  [$f] |"
    done | head -n 120
} | tee summary.txt
# The corpus is kept small for the trip back; crash inputs come back whole.
tar -czf corpus.tar.gz corpus && rm -rf corpus
[ "$crashes" = 0 ]
