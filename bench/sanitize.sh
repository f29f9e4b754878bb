#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck and synccheck over the GPU test
# binaries, on the GPU machine (no Rust there).
#
#   bash bench/gpu_suite.sh prepare                 here: fills .gpu/ (test_gpu_*, test_tensor)
#   run(command="bash bench/sanitize.sh", carry=[".gpu"])     there
#
# Every binary .gpu/test_* runs once under each tool (--test-threads=1, one
# binary at a time). Logs: $OUT/sanitize/<tool>_<binary>.log. Prints one line
# per tool and binary: the tool's error count, the test result, and the
# seconds it took; exits non-zero if any run reported an error or failed.
#
# memcheck runs with --report-api-errors no: the out-of-memory tests make
# cuMemAlloc / cuMemCreate fail on purpose, and API errors are not memory
# errors. racecheck and synccheck look at shared-memory hazards and barrier
# misuse in the tests' kernels; binaries whose kernels use neither report 0.
#
# Environment: TOOLS (default "memcheck racecheck synccheck"), SECS (time
# limit per run, default 300), BINARIES (default: every .gpu/test_*).
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu
LOGS=${OUT:-out}/sanitize
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"

CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$CS" ]; then
    echo "compute-sanitizer not found (looked in PATH and /usr/local/cuda*/bin)" | tee -a "$SUMMARY"
    exit 2
fi
"$CS" --version | tail -1 | tee -a "$SUMMARY"

BINARIES=${BINARIES:-$(ls "$G"/test_* 2>/dev/null)}
if [ -z "$BINARIES" ]; then
    echo "no test binaries in $G/ (run: bash bench/gpu_suite.sh prepare)" | tee -a "$SUMMARY"
    exit 2
fi

status=0
for tool in ${TOOLS:-memcheck racecheck synccheck}; do
    extra=()
    case $tool in
        memcheck) extra=(--report-api-errors no) ;;
        racecheck) extra=(--racecheck-report all) ;;
    esac
    for bin in $BINARIES; do
        name=$(basename "$bin")
        log="$LOGS/${tool}_${name}.log"
        t0=$SECONDS
        timeout "${SECS:-300}" "$CS" --tool "$tool" "${extra[@]}" --error-exitcode 1 \
            "$bin" --test-threads=1 > "$log" 2>&1
        rc=$?
        # "ERROR SUMMARY: N errors" (memcheck, synccheck); racecheck prints
        # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)".
        errors=$(grep -hoE "ERROR SUMMARY: [0-9]+" "$log" | grep -oE "[0-9]+" | tail -1)
        if [ "$tool" = racecheck ]; then
            errors=$(grep -hoE "\([0-9]+ errors?" "$log" | grep -oE "[0-9]+" | tail -1)
            errors=${errors:-$(grep -hoE "ERROR SUMMARY: [0-9]+" "$log" | grep -oE "[0-9]+" | tail -1)}
        fi
        result=$(grep -h "^test result" "$log" | tail -1 | cut -c1-60)
        skipped=$(grep -ci "skipping\|skipped" "$log")
        line=$(printf '%-9s %-24s errors %-4s rc %-3s %4ss  %s%s' "$tool" "$name" \
            "${errors:-?}" "$rc" "$((SECONDS - t0))" "${result:-no test result}" \
            "$([ "$skipped" -gt 0 ] && echo " ($skipped skip lines)")")
        echo "$line" | tee -a "$SUMMARY"
        if [ "$rc" != 0 ] || [ "${errors:-1}" != 0 ]; then
            status=1
            grep -m 5 -E "^========= (Invalid|Race|Barrier|Error|Program hit)" "$log" | sed 's/^/    | /' |
                tee -a "$SUMMARY"
        fi
    done
done
echo "sanitize: status $status" | tee -a "$SUMMARY"
exit $status
