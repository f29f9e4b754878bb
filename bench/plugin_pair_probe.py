#!/usr/bin/env python3
"""What an allocation costs through PyTorch, per allocator: `torch.empty` + free pairs.

For each allocator (a fresh process each, alternating over --rounds): PyTorch's own
(`native`), and graphalloc as PyTorch's pluggable allocator for each `--lib` given
(`graphalloc:PATH`). In each process, after a warm-up, it times (CPU wall clock, no GPU
work queued):
  - `pair_SIZE`: `x = torch.empty(SIZE bytes)` then `del x`, many times, for 512 B,
    1 MiB, 16 MiB;
  - `batch`: 256 tensors of mixed sizes (512 B to 32 MiB, seeded) allocated, then freed
    in another order, per event;
  - `cross_thread`: tensors allocated on the main thread and freed on a second thread
    (as autograd's backward thread frees forward activations), per event.
Prints one JSON line per process, and a table of each figure's median over the rounds.
The figures include PyTorch's own cost (Python, the dispatcher, and for graphalloc the
pluggable allocator's bookkeeping): compare rows of one run only.

Usage (GPU machine): python3 bench/plugin_pair_probe.py [--rounds 3] [--cpus 0-7] [--lib A.so --lib B.so]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

TAG = "PLUGIN_PAIR_PROBE "
sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(allocator: str, cpus: str | None) -> None:
    if cpus:
        from torch_plugin import parse_cpus

        os.sched_setaffinity(0, parse_cpus(cpus))
    if allocator.startswith("graphalloc:"):
        from torch_plugin import import_graphalloc_torch

        import_graphalloc_torch().use(allocator.split(":", 1)[1])
    import torch

    dev = torch.device("cuda")
    u8 = torch.uint8
    torch.empty(1, device=dev)
    out = {"allocator": allocator}

    def per_event(fn, events: int) -> float:
        fn()  # warm: the cache holds what the timed run needs
        t = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t) / events

    for size, name in ((512, "512B"), (1 << 20, "1MiB"), (16 << 20, "16MiB")):
        n = 20000

        def pairs(size=size, n=n):
            for _ in range(n):
                x = torch.empty(size, dtype=u8, device=dev)
                del x

        out[f"pair_{name}"] = round(per_event(pairs, 2 * n), 1)

    rng = random.Random(7)
    sizes = [rng.choice((512, 4096, 65536, 1 << 20, 3 << 20, 12 << 20, 32 << 20)) for _ in range(256)]
    order = list(range(256))
    rng.shuffle(order)

    def batch(rounds=40):
        for _ in range(rounds):
            xs = [torch.empty(s, dtype=u8, device=dev) for s in sizes]
            for i in order:
                xs[i] = None

    out["batch"] = round(per_event(batch, 40 * 2 * 256), 1)

    def cross(rounds=40):
        q: queue.Queue = queue.Queue()

        def freer():
            while True:
                xs = q.get()
                if xs is None:
                    return
                xs.clear()

        t = threading.Thread(target=freer)
        t.start()
        for _ in range(rounds):
            q.put([torch.empty(s, dtype=u8, device=dev) for s in sizes])
        q.put(None)
        t.join()

    out["cross_thread"] = round(per_event(cross, 40 * 2 * 256), 1)
    print(TAG + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lib", action="append", default=[], help="a libgraphalloc.so to compare")
    ap.add_argument("--cpus", help="pin every process to these CPUs (e.g. 0-7)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.cpus)
        return
    allocators = ["native"] + [f"graphalloc:{Path(p).resolve()}" for p in a.lib]
    rows: dict[str, list[dict]] = {}
    for r in range(a.rounds):
        for alloc in allocators if r % 2 == 0 else allocators[::-1]:
            cmd = [sys.executable, __file__, "--child", alloc] + (["--cpus", a.cpus] if a.cpus else [])
            proc = subprocess.run(cmd,
                                  capture_output=True, text=True, timeout=300)
            got = [json.loads(l[len(TAG):]) for l in proc.stdout.splitlines() if l.startswith(TAG)]
            if not got:
                sys.stderr.write(f"{alloc}: no result\n{proc.stderr[-2000:]}\n")
                continue
            print(json.dumps(got[0]), flush=True)
            rows.setdefault(alloc, []).append(got[0])
    keys = ["pair_512B", "pair_1MiB", "pair_16MiB", "batch", "cross_thread"]
    print("| allocator | " + " | ".join(f"{k} ns/event" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for alloc, rs in rows.items():
        cells = [f"{statistics.median(r[k] for r in rs):,.0f}" for k in keys]
        print(f"| {alloc} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
