#!/usr/bin/env python3
"""Replay allocation traces through PyTorch's own caching allocator and graphalloc, in one run.

For each `*.trace.gz` given, this prints one table row per allocator configuration:

  pytorch default             PYTORCH_CUDA_ALLOC_CONF unset
  pytorch expandable          PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  graphalloc default          GRAPHALLOC_CONF unset            (the replay example, --json)
  graphalloc plain            GRAPHALLOC_CONF=expandable_segments:false

PyTorch is driven through its C++ entry points `c10::cuda::CUDACachingAllocator::raw_alloc`
(`raw_alloc_with_stream` for a trace's stream tags other than 0: one side stream per tag, as the
replay example makes) and `raw_delete` (a few lines of C++ compiled here with g++ against the installed torch, loaded with
ctypes), so Python's cost is not in the timed loop. Each configuration runs in a fresh process.
Per trace and configuration: cold ns/event (median of --runs passes, each after `empty_cache`, so
from an empty cache), warm ns/event (the trace again on the cache the last cold pass left), peak
allocated, peak reserved and their ratio. graphalloc's rows add its mapping calls (cold/warm).

Machines differ by 20% from run to run, and drift within a run: every configuration runs --rounds
times (3 by default), odd rounds in reverse order; the table gives each row's median over the
rounds (cold ns/event with its range), and "cold / PyTorch default's", the median over the rounds
of the row's cold ns/event divided by PyTorch default's in the same round. Compare only rows of
one run, as ratios. Peaks, ratios and mapping calls are deterministic: they come from round 1.

Usage (on the GPU machine):
    python3 bench/torch_replay.py --replay .gpu/replay [--runs 3] [--rounds 3] [--json OUT.jsonl] TRACE...
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TAG = "TORCH_REPLAY_RESULT "
TORCH_CONFS = {"pytorch default": "", "pytorch expandable": "expandable_segments:True"}
GA_CONFS = {"graphalloc default": "", "graphalloc plain": "expandable_segments:false"}

CPP = r"""
#include <c10/cuda/CUDACachingAllocator.h>
#include <chrono>
#include <cstdint>
#include <vector>

// Replays n events: kind 0 allocates size[i] bytes into slot[i] on stream[i] (0: the current
// stream), kind 1 frees slot[i]. Returns the nanoseconds the loop took; blocks still live at the
// end are freed after the clock.
extern "C" double ga_torch_replay(int64_t n, const int8_t* kind, const int64_t* slot,
                                  const int64_t* size, const int64_t* stream, int64_t nslots) {
  namespace A = c10::cuda::CUDACachingAllocator;
  std::vector<void*> ptrs(nslots, nullptr);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    if (kind[i] == 0) {
      auto bytes = static_cast<size_t>(size[i]);
      ptrs[slot[i]] = stream[i] == 0
          ? A::raw_alloc(bytes)
          : A::raw_alloc_with_stream(bytes, reinterpret_cast<cudaStream_t>(stream[i]));
    } else if (ptrs[slot[i]] != nullptr) {
      A::raw_delete(ptrs[slot[i]]);
      ptrs[slot[i]] = nullptr;
    }
  }
  auto t1 = std::chrono::steady_clock::now();
  for (void* p : ptrs) {
    if (p != nullptr) A::raw_delete(p);
  }
  return std::chrono::duration<double, std::nano>(t1 - t0).count();
}
"""


def parse_trace(path: Path):
    """(kind, slot, size, tag, nslots): dense slots for the trace's block ids, each allocation's
    stream tag (0: the default stream)."""
    kind, slot, size, tag, ids = [], [], [], [], {}
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if parts[0] == "a":
                s = ids.setdefault(parts[1], len(ids))
                kind.append(0), slot.append(s), size.append(int(parts[2]))
                tag.append(int(parts[3]) if len(parts) > 3 else 0)
            elif parts[0] == "f" and parts[1] in ids:
                kind.append(1), slot.append(ids[parts[1]]), size.append(0), tag.append(0)
    return kind, slot, size, tag, len(ids)


def build_library(torch) -> Path:
    from torch.utils import cpp_extension as ext

    try:
        incs = ext.include_paths(device_type="cuda")
    except TypeError:
        incs = ext.include_paths(cuda=True)
    cuda_home = ext.CUDA_HOME or "/usr/local/cuda"
    incs = list(incs) + [os.path.join(cuda_home, "include")]
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    out = Path(tempfile.gettempdir()) / "ga_torch_replay.so"
    src = out.with_suffix(".cpp")
    src.write_text(CPP)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{i}" for i in incs] + [str(src), "-o", str(out)]
    cmd += [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10_cuda", "-lc10"]
    subprocess.run(cmd, check=True)
    return out


def child(trace_paths: list[str], runs: int) -> None:
    import torch

    torch.zeros(1, device="cuda")  # context and allocator up
    lib = ctypes.CDLL(str(build_library(torch)))
    lib.ga_torch_replay.restype = ctypes.c_double
    lib.ga_torch_replay.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64]
    for p in trace_paths:
        kind, slot, size, tag, nslots = parse_trace(Path(p))
        n = len(kind)
        # Every stream tag but 0 gets a side stream of its own, as the replay example does.
        sides = {t: torch.cuda.Stream() for t in sorted(set(tag) - {0})}
        k = (ctypes.c_int8 * n)(*kind)
        s = (ctypes.c_int64 * n)(*slot)
        z = (ctypes.c_int64 * n)(*size)
        h = (ctypes.c_int64 * n)(*[sides[t].cuda_stream if t else 0 for t in tag])

        def one_pass() -> float:
            return lib.ga_torch_replay(n, k, s, z, h, nslots) / n

        cold, peaks_alloc, peaks_res = [], [], []
        for _ in range(runs):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            cold.append(one_pass())
            st = torch.cuda.memory_stats()
            peaks_alloc.append(st["allocated_bytes.all.peak"])
            peaks_res.append(st["reserved_bytes.all.peak"])
        warm = one_pass()
        pa, pr = peaks_alloc[-1], peaks_res[-1]
        print(TAG + json.dumps({
            "trace": Path(p).name.removesuffix(".trace.gz"), "events": n,
            "ns_per_event": statistics.median(cold), "warm_ns_per_event": warm,
            "peak_allocated": pa, "peak_reserved": pr, "ratio": pr / pa if pa else None,
        }), flush=True)
        torch.cuda.empty_cache()


def run_torch(conf: str, traces: list[str], runs: int) -> list[dict]:
    env = dict(os.environ)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    proc = subprocess.run([sys.executable, __file__, "--child", "--runs", str(runs), *traces],
                          env=env, capture_output=True, text=True)
    rows = [json.loads(l[len(TAG):]) for l in proc.stdout.splitlines() if l.startswith(TAG)]
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return rows


def run_graphalloc(replay: str, conf: str, traces: list[str], runs: int) -> list[dict]:
    env = dict(os.environ)
    env.pop("GRAPHALLOC_CONF", None)
    if conf:
        env["GRAPHALLOC_CONF"] = conf
    proc = subprocess.run([replay, "--json", "--runs", str(runs), *traces], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            r["trace"] = Path(r["trace"]).name.removesuffix(".trace.gz")
            rows.append(r)
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="run every configuration this many times, alternating their order")
    ap.add_argument("--replay", default="target/release/examples/replay")
    ap.add_argument("--json", help="also write every row as JSON lines to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.traces, a.runs)
        return
    confs = [(name, lambda c=conf: run_torch(c, a.traces, a.runs)) for name, conf in TORCH_CONFS.items()]
    confs += [(name, lambda c=conf: run_graphalloc(a.replay, c, a.traces, a.runs))
              for name, conf in GA_CONFS.items()]
    # rounds[r][name] = that round's rows; odd rounds run the configurations in reverse order,
    # so that a machine drifting during the run favours none of them.
    rounds = []
    for r in range(max(1, a.rounds)):
        order = confs if r % 2 == 0 else confs[::-1]
        rounds.append({name: run() for name, run in order})
    names = [name for name, _ in confs]
    print("| trace | allocator | cold ns/event | cold / PyTorch default's | warm ns/event | "
          "peak reserved / allocated | maps cold / warm | unmaps cold / warm |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = []
    for t in [Path(p).name.removesuffix(".trace.gz") for p in a.traces]:
        for name in names:
            per_round = []
            for rows in rounds:
                mine = [r for r in rows.get(name, []) if r["trace"] == t]
                base = [r for r in rows.get("pytorch default", []) if r["trace"] == t]
                if mine:
                    vs = mine[0]["ns_per_event"] / base[0]["ns_per_event"] if base else None
                    per_round.append((mine[0], vs))
            if not per_round:
                continue
            cold = [r["ns_per_event"] for r, _ in per_round]
            warm = [r["warm_ns_per_event"] for r, _ in per_round if r.get("warm_ns_per_event")]
            vs = [v for _, v in per_round if v is not None]
            r = dict(per_round[0][0], allocator=name, rounds=len(per_round),
                     ns_per_event=statistics.median(cold), rounds_ns_per_event=cold,
                     warm_ns_per_event=statistics.median(warm) if warm else None,
                     vs_pytorch_default=statistics.median(vs) if vs else None,
                     rounds_vs_pytorch_default=vs)
            lines.append(r)
            spread = f" ({min(cold):,.0f}–{max(cold):,.0f})" if len(cold) > 1 else ""
            ratio = "-" if not vs else f"{statistics.median(vs):.3f} ({min(vs):.3f}–{max(vs):.3f})"
            maps = f"{fmt(r.get('maps'), 'd')} / {fmt(r.get('warm_maps'), 'd')}"
            unmaps = f"{fmt(r.get('unmaps'), 'd')} / {fmt(r.get('warm_unmaps'), 'd')}"
            print(f"| {t} | {name} | {r['ns_per_event']:,.0f}{spread} | {ratio} | "
                  f"{fmt(r.get('warm_ns_per_event'), ',.0f')} | {fmt(r.get('ratio'), '.4f')} | "
                  f"{maps} | {unmaps} |")
    if a.json:
        with open(a.json, "w") as f:
            for r in lines:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
