#!/usr/bin/env python3
"""Does a cache miss block the CPU on queued GPU work?

For one allocator (a process each): queues a GPU sleep of about 200 ms on the
current stream, then times `torch.empty` of a size the cache cannot serve (so
the allocator must get new device memory: `cudaMalloc`, or map pages for
expandable segments), and the same with the GPU idle. If the allocation under
load takes about as long as the queued sleep, getting memory waited for the
GPU. Prints one JSON line per allocator.

Usage (GPU machine): python3 bench/map_sync_probe.py [--lib libgraphalloc.so]
Allocators: native (PyTorch default), native-expandable
(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), graphalloc (default
config), graphalloc-plain (GRAPHALLOC_CONF=expandable_segments:false).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ALLOCATORS = ("native", "native-expandable", "graphalloc", "graphalloc-plain")


def child(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.allocator.startswith("graphalloc"):
        from torch_plugin import import_graphalloc_torch

        import_graphalloc_torch().use(args.lib)
    import torch

    dev = torch.device("cuda")
    keep = [torch.empty(1 << 20, dtype=torch.uint8, device=dev)]
    torch.cuda.synchronize()
    # Calibrate the sleep to about 200 ms.
    t = time.perf_counter()
    torch.cuda._sleep(100_000_000)
    torch.cuda.synchronize()
    per_cycle = (time.perf_counter() - t) / 100_000_000
    cycles = int(0.2 / per_cycle)
    out = {"allocator": args.allocator, "sleep_ms": round(cycles * per_cycle * 1e3, 1)}
    for mib in (64, 256):
        idle, loaded = [], []
        for i in range(3):
            # Sizes never seen before, kept live: each is a cache miss.
            torch.cuda.synchronize()
            t = time.perf_counter()
            keep.append(torch.empty((mib + 2 * i) << 20, dtype=torch.uint8, device=dev))
            idle.append((time.perf_counter() - t) * 1e3)
            torch.cuda._sleep(cycles)
            t = time.perf_counter()
            keep.append(torch.empty((mib + 2 * i + 1) << 20, dtype=torch.uint8, device=dev))
            loaded.append((time.perf_counter() - t) * 1e3)
            torch.cuda.synchronize()
        out[f"{mib}MiB_idle_ms"] = [round(x, 3) for x in idle]
        out[f"{mib}MiB_under_load_ms"] = [round(x, 3) for x in loaded]
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lib", default=None)
    p.add_argument("--allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.allocator:
        return child(args)
    rc = 0
    for a in ALLOCATORS:
        env = dict(os.environ)
        if a == "native-expandable":
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        if a == "graphalloc-plain":
            env["GRAPHALLOC_CONF"] = "expandable_segments:false"
        cmd = [sys.executable, __file__, "--allocator", a] + (["--lib", args.lib] if args.lib else [])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        lines = [l[7:] for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        print(lines[0] if lines else json.dumps({"allocator": a, "error": r.stderr[-400:]}), flush=True)
        rc |= r.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
