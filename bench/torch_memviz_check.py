#!/usr/bin/env python3
"""Checks that PyTorch's memory-viz tools read graphalloc's snapshots.

For each snapshot pickle given (graphalloc's `dump_snapshot`, the replay
example's `--snapshot`, bench/torch_record.py's), loads it with `pickle`
and runs `torch.cuda._memory_viz`'s `segsum` (which asserts that every
segment's blocks add up), `trace` (the event list), `segment_plot`,
`trace_plot` and `trace_plot(plot_segments=True)`, writing the three HTML
pages under $OUT (or --out) as NAME.segment_plot.html and so on. Exits
non-zero if any step raised.

Usage (where PyTorch is installed; no GPU needed):
    python3 bench/torch_memviz_check.py S.pickle [MORE.pickle ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("snapshots", nargs="+")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    from torch.cuda import _memory_viz as mv

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.snapshots:
        with open(path, "rb") as f:
            data = pickle.load(f)
        name = Path(path).name.split(".")[0]
        segments = data["segments"]
        events = sum(len(t) for t in data["device_traces"])
        print(f"{path}: {len(segments)} segments, {events} events, "
              f"{sum(s['total_size'] for s in segments)} bytes reserved")
        steps = {
            "segsum": lambda: mv.segsum(data),
            "trace": lambda: mv.trace(data),
            "segment_plot": lambda: mv.segment_plot(data),
            "trace_plot": lambda: mv.trace_plot(data),
            "trace_plot_segments": lambda: mv.trace_plot(data, plot_segments=True),
        }
        for step, fn in steps.items():
            try:
                text = fn()
                target = out / f"{name}.{step}.{'txt' if step in ('segsum', 'trace') else 'html'}"
                target.write_text(text)
                print(f"  {step}: ok, {len(text)} characters -> {target}")
            except Exception:  # noqa: BLE001 - reported
                failed += 1
                print(f"  {step}: FAILED\n{traceback.format_exc()}")
    print("memviz check:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
