#!/usr/bin/env bash
# Observability on the GPU machine (issue 18): snapshot, record and replay on
# the CUDA backend, and PyTorch's memory-viz tools on the snapshots.
#
#   bash bench/gpu_suite.sh prepare                                   # here: fills .gpu/
#   run(command="bash bench/gpu_observability.sh", carry=[".gpu"])    # there
#
# Writes under $OUT/obs/: S.pickle (+ .html, .svg) and R.trace.gz from the
# replay of gpt2_train (a snapshot at the peak of reserved bytes, the
# replay's own history), the check that R.trace.gz replays to the same
# events and peak allocated, and where PyTorch is installed: a GPT-2 training
# step recorded through graphalloc.torch (gpt2_step.*) with its
# `replay --compare expandable_segments:false expandable_segments:true`
# table, and torch.cuda._memory_viz (segsum, trace, segment_plot,
# trace_plot) run on both snapshots. summary.txt has it all; exit status
# non-zero if a step failed.
set -u
G=${G:-.gpu}
OUT=${OUT:-out}
O="$OUT/obs"
mkdir -p "$O"
S="$O/summary.txt"
status=0
say() { echo "$*" | tee -a "$S"; }
fail() { say "FAILED: $*"; status=1; }
TRACE="$G/gpt2_train.trace.gz"
[ -f "$TRACE" ] || TRACE=$(ls "$G"/*.trace.gz | head -n 1)

say "== replay --json --snapshot --record $TRACE"
"$G/replay" --json --runs 3 --snapshot "$O/S.pickle" --record "$O/R.trace.gz" "$TRACE" \
    >"$O/original.json" 2>"$O/replay.log" || fail "replay --snapshot --record"
cat "$O/replay.log" "$O/original.json" | tee -a "$S"
"$G/replay" --json --runs 3 "$O/R.trace.gz" >"$O/recorded.json" 2>>"$O/replay.log" || fail "replay of R.trace.gz"
python3 - "$O/original.json" "$O/recorded.json" <<'PY' 2>&1 | tee -a "$S" || status=1
import json, pickle, sys, os
a, b = (json.loads(open(p).read()) for p in sys.argv[1:3])
print(f"original: {a['events']} events, peak allocated {a['peak_allocated']}, backend {a['backend']}")
print(f"recorded: {b['events']} events, peak allocated {b['peak_allocated']}, backend {b['backend']}")
d = pickle.load(open(os.path.join(os.path.dirname(sys.argv[1]), "S.pickle"), "rb"))
print(f"S.pickle: {len(d['segments'])} segments (each with blocks and total_size: "
      f"{all('blocks' in s and 'total_size' in s for s in d['segments'])}), "
      f"{sum(len(t) for t in d['device_traces'])} device_traces events")
ok = a["events"] == b["events"] and a["peak_allocated"] == b["peak_allocated"]
print("record and replay:", "same events and peak allocated" if ok else "DIFFERENT")
sys.exit(0 if ok else 1)
PY

if python3 -c 'import torch' 2>/dev/null; then
    python3 -m pip install --no-index --no-deps -q --target "$G/site" "$G"/graphalloc-*.whl
    export PYTHONPATH="$PWD/$G/site${PYTHONPATH:+:$PYTHONPATH}"
    say "== bench/torch_record.py (GPT-2 small, 2 training steps, through graphalloc.torch)"
    timeout 400 python3 bench/torch_record.py --out "$O" --replay "$G/replay" 2>&1 | tee -a "$S" \
        || fail "torch_record"
    say "== bench/torch_memviz_check.py"
    snaps="$O/S.pickle"
    [ -f "$O/gpt2_step.pickle" ] && snaps="$snaps $O/gpt2_step.pickle"
    # shellcheck disable=SC2086
    timeout 300 python3 bench/torch_memviz_check.py $snaps --out "$O" 2>&1 | tee -a "$S" \
        || fail "memviz check"
else
    say "PyTorch not importable: torch_record and the memviz check skipped"
fi
say "== done, status $status"
exit $status
