#!/usr/bin/env python3
"""The same allocation traces through PyTorch's caching allocator and
graphalloc, in one run, in one table.

For each trace (`*.trace.gz`, the format of ../shared/traces/README.md):
  - PyTorch's CUDA caching allocator, in its default configuration and with
    `expandable_segments:True`, each in a fresh process (the configuration
    goes in through PYTORCH_CUDA_ALLOC_CONF, which is read once per
    process). The events are replayed through the allocator's C++
    `raw_alloc`/`raw_delete` by a small `torch.utils.cpp_extension` module
    (built once, cached by torch), or with `--python` through
    `torch.cuda.caching_allocator_alloc`/`caching_allocator_delete` (adds
    the Python call to every event: compare like with like).
  - graphalloc, through `cargo run --release --example replay -- --json`
    (the binary is taken from `--replay`), with its default configuration
    and with `expandable_segments:false`, each again in its own process.

Every allocator gets `--runs` cold passes (each from an empty cache: a fresh
process state for graphalloc, `empty_cache()` for PyTorch) and as many warm
passes (the trace again on the cache it left); the table gives the medians,
peak reserved / peak allocated (fragmentation) of the first cold pass, and
graphalloc's mapping calls. Machines differ by 20% from run to run: compare
only figures from one run.

Usage (on a GPU machine, after `cargo build --release --example replay`):
    python3 bench/torch_replay.py [--runs 3] [--python]
        [--replay target/release/examples/replay] [TRACE...]
Default traces: ../shared/traces/*.trace.gz, else traces/*.trace.gz.
Writes JSON to $OUT/torch_replay.json when $OUT is set (or --json PATH).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "TORCH_REPLAY_RESULT "
TORCH_CONFIGS = {"default": "", "expandable": "expandable_segments:True"}
GA_CONFIGS = {"default": "backend:cuda", "plain": "backend:cuda,expandable_segments:false"}

CPP_SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <chrono>
#include <vector>

// events: int64 (n, 3) = (kind 0 alloc / 1 free, slot, size). Frees what the
// trace leaves live afterwards, untimed. Returns the nanoseconds of the loop.
int64_t replay(torch::Tensor events, int64_t slots) {
  auto e = events.accessor<int64_t, 2>();
  std::vector<void*> live(slots, nullptr);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < e.size(0); ++i) {
    int64_t slot = e[i][1];
    if (e[i][0] == 0) {
      live[slot] = c10::cuda::CUDACachingAllocator::raw_alloc(e[i][2]);
    } else if (live[slot] != nullptr) {
      c10::cuda::CUDACachingAllocator::raw_delete(live[slot]);
      live[slot] = nullptr;
    }
  }
  auto t1 = std::chrono::steady_clock::now();
  for (void* p : live) {
    if (p != nullptr) c10::cuda::CUDACachingAllocator::raw_delete(p);
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
}
"""


def read_trace(path):
    """(events as (kind, slot, size) tuples, slot count)."""
    events, slots = [], {}
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if parts[0] == "a":
                slot = slots.setdefault(parts[1], len(slots))
                events.append((0, slot, int(parts[2])))
            elif parts[0] == "f" and parts[1] in slots:
                events.append((1, slots[parts[1]], 0))
    return events, len(slots)


def trace_name(path):
    name = Path(path).name
    for suffix in (".gz", ".trace"):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------------------
# Child: one trace under one PyTorch configuration.


def child(args):
    result = {"trace": trace_name(args.trace), "config": args.config}
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available")
        result["torch"] = torch.__version__
        result["device"] = torch.cuda.get_device_name()
        events, slots = read_trace(args.trace)
        if args.python:
            result["entry"] = "torch.cuda.caching_allocator_alloc (Python)"
            play = python_player(torch, events, slots)
        else:
            result["entry"] = "CUDACachingAllocator::raw_alloc (C++ extension)"
            play = cpp_player(torch, events, slots)
        torch.cuda.init()
        cold, warm, first = [], [], None
        for run in range(args.runs):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            cold.append(play() / max(1, len(events)))
            if first is None:
                s = torch.cuda.memory_stats()
                first = (s.get("allocated_bytes.all.peak", 0), s.get("reserved_bytes.all.peak", 0))
        for run in range(args.runs):
            warm.append(play() / max(1, len(events)))
        torch.cuda.empty_cache()
        result.update(
            events=len(events),
            ns_per_event=statistics.median(cold),
            warm_ns_per_event=statistics.median(warm),
            peak_allocated=first[0],
            peak_reserved=first[1],
            ratio=first[1] / max(1, first[0]),
        )
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        result["error"] = f"{type(e).__name__}: {e}"
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def cpp_player(torch, events, slots):
    from torch.utils.cpp_extension import load_inline

    module = load_inline(
        name="graphalloc_torch_replay",
        cpp_sources=[CPP_SOURCE],
        functions=["replay"],
        with_cuda=True,
        extra_cflags=["-O2"],
        verbose=False,
    )
    table = torch.tensor(events, dtype=torch.int64).reshape(-1, 3)
    return lambda: module.replay(table, slots)


def python_player(torch, events, slots):
    alloc, delete = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
    stream = torch.cuda.current_stream().cuda_stream

    def play():
        live = [0] * slots
        t0 = time.perf_counter_ns()
        for kind, slot, size in events:
            if kind == 0:
                live[slot] = alloc(size, 0, stream)
            elif live[slot]:
                delete(live[slot])
                live[slot] = 0
        elapsed = time.perf_counter_ns() - t0
        for p in live:
            if p:
                delete(p)
        return elapsed

    return play


# ---------------------------------------------------------------------------
# Parent: the processes and the table.


def run_torch(args, trace, config):
    env = dict(os.environ)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if TORCH_CONFIGS[config]:
        env["PYTORCH_CUDA_ALLOC_CONF"] = TORCH_CONFIGS[config]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", config,
           "--trace", str(trace), "--runs", str(args.runs)]
    if args.python:
        cmd.append("--python")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"trace": trace_name(trace), "config": config, "error": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"trace": trace_name(trace), "config": config,
            "error": f"status {proc.returncode}: {proc.stderr[-800:]}"}


def run_graphalloc(args, traces, config):
    env = dict(os.environ, GRAPHALLOC_CONF=GA_CONFIGS[config])
    cmd = [args.replay, "--json", "--runs", str(args.runs)] + [str(t) for t in traces]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout * len(traces))
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["trace"]] = r
    if proc.returncode != 0:
        print(f"graphalloc {config}: status {proc.returncode}: {proc.stderr[-800:]}", file=sys.stderr)
    return out


def cell(r, key="ns_per_event"):
    if r is None or "error" in r or r.get(key) is None:
        return "-"
    return f"{r[key]:,.0f}"


def ratio(r):
    return "-" if r is None or "error" in r else f"{r['ratio']:.4f}"


def table(traces, torch_results, ga_results):
    lines = [
        "| trace | PyTorch default cold / warm ns, ratio | PyTorch expandable cold / warm ns, ratio "
        "| graphalloc default cold / warm ns, ratio | maps / unmaps cold, warm "
        "| graphalloc plain cold / warm ns, ratio | default vs PyTorch default cold "
        "| default ratio <= 1.05 and <= PyTorch expandable |",
        "|---|---|---|---|---|---|---:|---|",
    ]
    for t in traces:
        name = trace_name(t)
        pd, pe = torch_results.get((name, "default")), torch_results.get((name, "expandable"))
        gd, gp = ga_results["default"].get(name), ga_results["plain"].get(name)

        def both(r):
            return f"{cell(r)} / {cell(r, 'warm_ns_per_event')}, {ratio(r)}"

        maps = "-"
        if gd is not None:
            maps = f"{gd.get('maps')} / {gd.get('unmaps')}, {gd.get('warm_maps')} / {gd.get('warm_unmaps')}"
        vs = "-"
        if gd and pd and "error" not in pd:
            vs = f"{gd['ns_per_event'] / pd['ns_per_event']:.2f}x"
        frag = "-"
        if gd and pe and "error" not in pe:
            frag = "yes" if gd["ratio"] <= 1.05 and gd["ratio"] <= pe["ratio"] else "NO"
        lines.append(f"| {name} | {both(pd)} | {both(pe)} | {both(gd)} | {maps} | {both(gp)} | {vs} | {frag} |")
    return "\n".join(lines)


def parent(args):
    traces = args.traces
    if not traces:
        for d in (REPO.parent / "shared" / "traces", REPO / "traces"):
            traces = sorted(d.glob("*.trace.gz"))
            if traces:
                break
    if not traces:
        sys.exit("no traces given or found")
    t0 = time.perf_counter()
    torch_results = {}
    for t in traces:
        for config in TORCH_CONFIGS:
            r = run_torch(args, t, config)
            torch_results[(trace_name(t), config)] = r
            print(f"[{time.perf_counter() - t0:6.1f} s] {trace_name(t):16s} torch {config:10s} "
                  f"{r.get('error', 'ok')}", file=sys.stderr, flush=True)
    ga_results = {}
    for config in GA_CONFIGS:
        ga_results[config] = run_graphalloc(args, traces, config)
        print(f"[{time.perf_counter() - t0:6.1f} s] graphalloc {config} done", file=sys.stderr, flush=True)
    text = table(traces, torch_results, ga_results)
    print(text)
    info = next((r for r in torch_results.values() if "device" in r), {})
    print(f"\n{info.get('device', 'unknown device')}, PyTorch {info.get('torch', '?')}, "
          f"entry {info.get('entry', '?')}; {args.runs} run(s); total {time.perf_counter() - t0:.0f} s")
    for (name, config), r in torch_results.items():
        if "error" in r:
            print(f"--- {name} / torch {config}: {r['error']}")
    out = args.json or (os.path.join(os.environ["OUT"], "torch_replay.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({
            "torch": [dict(r, config=c) for (_, c), r in torch_results.items()],
            "graphalloc": ga_results,
            "table": text,
        }, indent=2))
        print(f"wrote {out}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", nargs="*", type=Path)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--python", action="store_true", help="replay through the Python entry points")
    p.add_argument("--replay", default=str(REPO / "target" / "release" / "examples" / "replay"))
    p.add_argument("--timeout", type=int, default=600, help="seconds per process")
    p.add_argument("--json", help="write the JSON report here (default $OUT/torch_replay.json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", choices=tuple(TORCH_CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--trace", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
