#!/usr/bin/env python3
"""Records a GPT-2 training step through graphalloc.torch and writes what
the replay tool and PyTorch's memory viewer read.

graphalloc is installed as PyTorch's allocator (graphalloc.torch.use()), the
memory history records from before the model is built through --steps
training steps of GPT-2 small (the model of bench/torch_plugin.py: batch 8 x
512, bf16 autocast, fused AdamW), each phase labelled with a context string
("model", "step 0 forward", ...). Then it writes, under --out (default $OUT,
else .):

  gpt2_step.trace.gz   the history as a replay trace: replay it offline under
                       every configuration, e.g.
                         replay --compare expandable_segments:false expandable_segments:true -- gpt2_step.trace.gz
  gpt2_step.pickle     a snapshot in PyTorch's memory snapshot format (open it at
                       https://pytorch.org/memory_viz, or check it with
                       bench/torch_memviz_check.py)
  gpt2_step.html       graphalloc's own view of the snapshot

With --workload vartrans the steps take the sequence lengths of
torch_plugin.py's vartrans workload (same --seed), and the files are named
vartrans_step.*.

With --replay PATH (the replay example's binary) it also runs that
comparison and prints its table.

Context strings are per thread: the allocations of `backward()`, which
PyTorch's autograd engine makes on its own thread, carry none. The trace
keeps each allocation's stream; this step runs on the default stream (tag 0),
which the replay tool replays anywhere.

Usage (GPU machine, graphalloc wheel installed or a checkout after
`cargo build --release`):
    python3 bench/torch_record.py [--lib target/release/libgraphalloc.so]
        [--steps 2] [--out DIR] [--replay .gpu/replay]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_plugin import build_gpt2, import_graphalloc_torch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lib", default=None, help="libgraphalloc.so to install (default: the package's)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workload", choices=("gpt2", "vartrans"), default="gpt2",
                   help="gpt2: 512 tokens every step (writes gpt2_step.*); vartrans: the "
                        "sequence lengths of torch_plugin.py's vartrans (writes vartrans_step.*)")
    p.add_argument("--seed", type=int, default=1234, help="vartrans: torch_plugin.py's --seed")
    p.add_argument("--events", type=int, default=2_000_000, help="history capacity")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--replay", default=None, help="the replay example's binary, to run --compare")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ga = import_graphalloc_torch()
    print("graphalloc:", ga.use(args.lib))
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to record", file=sys.stderr)
        return 1
    ga.record_history(args.events)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    with ga.context("model"):
        model = build_gpt2(torch, nn, F).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    gen = torch.Generator(device=dev).manual_seed(1)
    if args.workload == "vartrans":
        import random

        lengths = random.Random(args.seed + 2)
        seqs = [64 * lengths.randint(1, 16) for _ in range(args.steps)]
    else:
        seqs = [512] * args.steps
    t0 = time.perf_counter()
    for i in range(args.steps):
        with ga.context(f"step {i} data"):
            idx = torch.randint(0, 50257, (8, seqs[i] + 1), device=dev, generator=gen)
        opt.zero_grad(set_to_none=True)
        with ga.context(f"step {i} forward"), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        with ga.context(f"step {i} backward"):
            loss.backward()
        with ga.context(f"step {i} optimizer"):
            opt.step()
        torch.cuda.synchronize()
        print(f"step {i}: {seqs[i]} tokens, loss {loss.item():.4f}")
    ga.stop_history()
    wall = time.perf_counter() - t0
    name = "gpt2_step" if args.workload == "gpt2" else "vartrans_step"
    trace, snap, html = out / f"{name}.trace.gz", out / f"{name}.pickle", out / f"{name}.html"
    n = ga.write_trace(trace)
    size = ga.dump_snapshot(snap)
    ga.dump_html(html)
    s = ga.stats()["total"]
    print(
        f"recorded {n} trace events over {args.steps} steps ({wall:.2f} s); "
        f"peak allocated {s['peak_allocated_bytes'] / 2**20:.1f} MiB, "
        f"peak reserved {s['peak_reserved_bytes'] / 2**20:.1f} MiB"
    )
    print(f"wrote {trace}, {snap} ({size} bytes), {html}")
    if args.replay:
        cmd = [args.replay, "--runs", "3", "--compare",
               "expandable_segments:false", "expandable_segments:true", "--", str(trace)]
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
