#!/usr/bin/env python3
"""Planned graph pools under PyTorch: what a captured step's memory pool
reserves, against the capture's peak of live bytes (the lower bound).

Cases (each a training step captured with torch.cuda.graph on a side
stream, after warm-up steps on that stream, then replayed and checked
against the same steps run eagerly on a copy of the model):
  mlp         the MLP training step of bench/torch_plugin.py (1024-2048-2048-1024,
              GELU, LayerNorm, batch 256, MSE, AdamW capturable, fp32 without TF32);
              zero_grad(set_to_none=True) inside the step, so the gradients live
              in the graph's pool.
  gpt2        GPT-2 small as in bench/torch_plugin.py (12 layers by default, batch
              8 x 512), bf16 autocast, AdamW capturable; zero_grad(set_to_none=True)
              inside the step.
  two_shapes  the MLP step at two batch sizes (256 and 96), two graphs sharing ONE
              pool, replayed alternately on one model; gradients kept between the
              graphs (zero_grad(set_to_none=False)), so each graph's output is its loss.
  graphed_callables  the MLP through torch.cuda.make_graphed_callables (a forward and
              a backward graph sharing one pool; the optimizer runs eagerly), with
              graphalloc through graphalloc.torch.planned_graphed_callables.

Every case runs in its own process, once with PyTorch's allocator (the
private pool of the capture: memory_snapshot() segments whose segment_pool_id
is the graph's pool; the capture's peak allocated bytes) and once per record
mode with graphalloc (`graphalloc.torch.use()`): an ordinary graphalloc pool
captures the step (the unplanned figure), then `graphalloc.torch.planned_graphs`
records the step (record=eager: one more eager step; record=capture: a
capture thrown away), plans one pool and captures into it.

Replays vs eager: every replay's loss against the eager step's, the
parameters at the end, and eager tensors kept alive across replays (on the
default and the capture stream) must not be overwritten. Bitwise equality is
reported; the pass criterion is a tolerance: mlp/two_shapes |dloss| <= 1e-4 x
max(1, |loss|) and parameters within 1e-3 (as torch_plugin.py); gpt2 (bf16,
attention backward with atomics) |dloss| <= 1e-2 x max(1, |loss|) and
parameters within 2 x lr x steps + 1e-3.

Usage (GPU machine; graphalloc importable, or python/ of this checkout after
`cargo build --release`):
    python3 bench/torch_planned.py [--cases mlp,gpt2,two_shapes] [--record eager,capture]
        [--lib PATH] [--replays 200] [--gpt2-replays 20] [--gpt2-layers 12]
        [--gpt2-batch 8] [--gpt2-seq 512] [--warmup 3] [--timeout 300] [--budget 540]
        [--json PATH]
Prints a markdown table (and the errors with their tracebacks); writes JSON to
--json, else $OUT/torch_planned.json when $OUT is set, after every child (so
a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_plugin import build_gpt2, import_graphalloc_torch, import_torch  # noqa: E402

CASES = ("mlp", "two_shapes", "gpt2", "graphed_callables")
RECORD_MODES = ("eager", "capture")
RESULT_TAG = "TORCH_PLANNED_RESULT "
MIB = 2**20


# ---------------------------------------------------------------------------
# Workloads (child process).


class Workload:
    """A model trained by one graph per entry of `steps` (each a callable on
    its static inputs), an eager copy, and how to feed both."""

    def __init__(self, torch, model, make_opt, batches, make_data, loss_fn, zero_to_none, tol):
        self.torch = torch
        self.graph_model = model
        self.eager_model = copy.deepcopy(model)
        self.graph_opt, self.eager_opt = make_opt(self.graph_model), make_opt(self.eager_model)
        self.make_data, self.loss_fn, self.zero_to_none, self.tol = make_data, loss_fn, zero_to_none, tol
        # static inputs of graph k, and the copy the eager model warms up on
        self.static = [make_data(b) for b in batches]
        self.initial = [tuple(t.clone() for t in s) for s in self.static]
        self.batches = batches
        self.steps = [self._graph_step(k) for k in range(len(batches))]

    def _step(self, model, opt, data):
        opt.zero_grad(set_to_none=self.zero_to_none)
        loss = self.loss_fn(model, *data)
        loss.backward()
        opt.step()
        return loss.detach()

    def _graph_step(self, k):
        return lambda: self._step(self.graph_model, self.graph_opt, self.static[k])

    def eager_step(self, k, data):
        return self._step(self.eager_model, self.eager_opt, data)

    def feed(self, k):
        """New data for graph k: copied into its static inputs, returned for eager."""
        data = self.make_data(self.batches[k])
        for s, d in zip(self.static[k], data):
            s.copy_(d)
        return data


def mlp_workload(torch, args, batches, zero_to_none):
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    width = 2048
    model = nn.Sequential(
        nn.Linear(1024, width), nn.GELU(), nn.LayerNorm(width),
        nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1024),
    ).cuda()
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)

    def make_data(batch):
        return (torch.randn(batch, 1024, device="cuda", generator=gen),
                torch.randn(batch, 1024, device="cuda", generator=gen))

    def loss_fn(m, x, y):
        return F.mse_loss(m(x), y)

    def make_opt(m):
        return torch.optim.AdamW(m.parameters(), lr=1e-3, capturable=True)

    return Workload(torch, model, make_opt, batches, make_data, loss_fn, zero_to_none,
                    {"loss_rel": 1e-4, "param": 1e-3})


def gpt2_workload(torch, args):
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = build_gpt2(torch, nn, F, layers=args.gpt2_layers).cuda()
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    lr = 3e-4

    def make_data(batch):
        return (torch.randint(0, 50257, (batch, args.gpt2_seq + 1), device="cuda", generator=gen),)

    def loss_fn(m, idx):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return m(idx[:, :-1], idx[:, 1:])

    def make_opt(m):
        return torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1, capturable=True)

    steps = args.warmup + 1 + args.gpt2_replays
    return Workload(torch, model, make_opt, [args.gpt2_batch], make_data, loss_fn, True,
                    {"loss_rel": 1e-2, "param": 2 * lr * steps + 1e-3})


def build_workload(torch, args):
    if args.case == "mlp":
        return mlp_workload(torch, args, [256], zero_to_none=True), args.replays
    if args.case == "two_shapes":
        return mlp_workload(torch, args, [256, 96], zero_to_none=False), args.replays
    if args.case == "gpt2":
        return gpt2_workload(torch, args), args.gpt2_replays
    raise ValueError(f"unknown case {args.case}")


def warm_up(torch, wl, stream, n):
    """n steps of each graph's work on the capture stream (the graph model)."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(n):
            for step in wl.steps:
                step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()


def eager_reference_steps(torch, wl, n):
    """n steps of each graph's work on the eager copy, on the initial data."""
    for _ in range(n):
        for k in range(len(wl.steps)):
            wl.eager_step(k, wl.initial[k])
    torch.cuda.synchronize()


def private_pool_bytes(torch, pool_id):
    """Bytes of the segments of PyTorch's private pool `pool_id` (native allocator)."""
    want = tuple(pool_id)
    total = 0
    for seg in torch.cuda.memory_snapshot():
        pid = seg.get("segment_pool_id")
        if pid is not None and tuple(pid) == want:
            total += int(seg["total_size"])
    return total


def capture_native(torch, wl, stream):
    """The graphs captured with PyTorch's allocator, sharing one private pool."""
    if wl.zero_to_none:
        # Gradients set to None first (as PyTorch's docs do before a capture), so
        # the capture frees nothing allocated before it and the growth of
        # allocated bytes during it is the capture's own live bytes.
        wl.graph_opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    a0, r0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    graphs, outs, pool, peaks = [], [], None, []
    torch.cuda.reset_peak_memory_stats()
    for step in wl.steps:
        g = torch.cuda.CUDAGraph()
        kwargs = {} if pool is None else {"pool": pool}
        with torch.cuda.graph(g, stream=stream, **kwargs):
            outs.append(step())
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - a0)  # the pool's live bytes so far
        pool = g.pool() if pool is None else pool
        graphs.append(g)
    info = {
        "lower_bound": max(peaks),
        "capture_peaks": peaks,
        "reserved_delta": torch.cuda.memory_reserved() - r0,
    }
    try:
        info["private_pool"] = private_pool_bytes(torch, pool)
    except Exception as e:  # noqa: BLE001 - the reserved delta stands in for it
        info["private_pool_error"] = f"{type(e).__name__}: {e}"
        info["private_pool"] = info["reserved_delta"]
    return graphs, outs, info


def capture_graphalloc(torch, ga, wl, stream, record):
    """An ordinary graphalloc pool capturing the steps (measured, then let go),
    then the steps captured into a planned pool by planned_graphs."""
    unplanned = ga.GraphPool(torch.cuda.current_device())
    unplanned.capture_on(stream)
    thrown = []
    try:
        for step in wl.steps:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                thrown.append((g, step()))
    finally:
        unplanned.stop_capture_on(stream)
    torch.cuda.synchronize()
    u = unplanned.stats()
    del thrown
    planned = ga.planned_graphs(wl.steps, stream=stream, warmup=0, record=record)
    pool = planned[0].pool
    p, plan = pool.stats(), pool.plan_stats()
    unplanned.release()  # its blocks are freed by now (its gradients by the steps' zero_grad)
    info = {
        "lower_bound": plan["peak_live_bytes"],
        "planned_pool": p["peak_reserved_bytes"],
        "capture_peak_live": p["peak_allocated_bytes"],
        "unplanned_pool": u["peak_reserved_bytes"],
        "unplanned_peak_live": u["peak_allocated_bytes"],
        "plan": plan,
        "graphs": [
            {
                "followed_plan": g.followed_plan,
                "recorded_allocations": g.recorded_allocations,
                "captured_allocations": g.captured_allocations,
                "planned_hits": g.planned_hits,
                "fallback_reason": g.fallback_reason(),
                "replanned": g.replanned,
                "first_attempt": g.first_attempt,
            }
            for g in planned
        ],
    }
    return [g.graph for g in planned], [g.output for g in planned], planned, info


def replay_and_check(torch, wl, graphs, outs, stream, replays, seed):
    """Replays the graphs alternately, each against the eager step on the same data."""
    sentinel, live_junk = 7.0, []
    junk_gen = torch.Generator().manual_seed(seed + 2)
    max_rel, exact, corrupted, loss = 0.0, True, 0, float("nan")
    for i in range(replays):
        for k, graph in enumerate(graphs):
            data = wl.feed(k)
            for j in range(2):  # eager tensors kept alive across replays
                n = int(torch.randint(1024, 1 << 20, (1,), generator=junk_gen))
                if j == 1:
                    with torch.cuda.stream(stream):
                        live_junk.append(torch.full((n,), sentinel, device="cuda"))
                    stream.synchronize()
                else:
                    live_junk.append(torch.full((n,), sentinel, device="cuda"))
            live_junk = live_junk[-8:]
            torch.cuda.synchronize()
            graph.replay()
            torch.cuda.synchronize()
            replay_loss = outs[k].detach().clone()
            eager_loss = wl.eager_step(k, data)
            exact = exact and bool(torch.equal(replay_loss, eager_loss))
            loss = float(replay_loss)
            diff = float((replay_loss.float() - eager_loss.float()).abs())
            rel = diff / max(1.0, abs(float(eager_loss)))
            max_rel = max(max_rel, rel if math.isfinite(rel) else float("inf"))
            corrupted += sum(int(not bool((t == sentinel).all())) for t in live_junk)
    max_param = max(
        float((a.float() - b.float()).abs().max())
        for a, b in zip(wl.graph_model.parameters(), wl.eager_model.parameters())
    )
    if not math.isfinite(max_param):
        max_param = float("inf")
    equal = max_rel <= wl.tol["loss_rel"] and max_param <= wl.tol["param"] and corrupted == 0
    return {
        "replay_equal": equal,
        "replay_exact": exact,
        "max_loss_rel_diff": max_rel,
        "max_param_diff": max_param,
        "tolerance": wl.tol,
        "corrupted_eager_tensors": corrupted,
        "replays": replays * len(graphs),
        "loss": loss,
    }


def run_graphed_callables(torch, args, ga):
    """make_graphed_callables on the MLP (graphalloc: planned_graphed_callables),
    trained with an eager optimizer against the eager copy."""
    import torch.nn.functional as F

    wl = mlp_workload(torch, args, [256], zero_to_none=True)
    sample = (wl.static[0][0],)
    if ga is None:
        handle = torch.cuda.graph_pool_handle()
        graphed = torch.cuda.make_graphed_callables(wl.graph_model, sample, pool=handle)
        torch.cuda.synchronize()
        info = {"private_pool": private_pool_bytes(torch, handle)}
    else:
        graphed, pool = ga.planned_graphed_callables(wl.graph_model, sample)
        torch.cuda.synchronize()
        plan, p = pool.plan_stats(), pool.stats()
        info = {
            "lower_bound": plan["peak_live_bytes"],
            "planned_pool": p["peak_reserved_bytes"],
            "capture_peak_live": p["peak_allocated_bytes"],
            "unplanned_pool": pool.unplanned_stats["peak_reserved_bytes"],
            "unplanned_peak_live": pool.unplanned_stats["peak_allocated_bytes"],
            "plan": plan,
            "graphs": [
                {
                    "replanned": pool.replanned,
                    "first_attempt": "; ".join(getattr(pool, "first_attempt", None) or []) or None,
                }
            ] + [{"fallback_reason": d} for d in pool.fallback_details],
        }

    def step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    max_rel, exact, loss = 0.0, True, float("nan")
    for _ in range(args.replays):
        x, y = wl.make_data(256)
        g = step(graphed, wl.graph_opt, x, y)
        e = step(wl.eager_model, wl.eager_opt, x, y)
        exact = exact and bool(torch.equal(g, e))
        loss = float(g)
        rel = float((g - e).abs()) / max(1.0, abs(float(e)))
        max_rel = max(max_rel, rel if math.isfinite(rel) else float("inf"))
    max_param = max(
        float((a - b).abs().max()) for a, b in zip(wl.graph_model.parameters(), wl.eager_model.parameters())
    )
    max_param = max_param if math.isfinite(max_param) else float("inf")
    info.update(
        replay_equal=max_rel <= wl.tol["loss_rel"] and max_param <= wl.tol["param"],
        replay_exact=exact,
        max_loss_rel_diff=max_rel,
        max_param_diff=max_param,
        tolerance=wl.tol,
        replays=args.replays,
        loss=loss,
    )
    return info


def run_captured(torch, args, ga, result):
    """A case captured with torch.cuda.graph: capture, measure, replay, check."""
    wl, replays = build_workload(torch, args)
    stream = torch.cuda.Stream()
    warm_up(torch, wl, stream, args.warmup)
    if ga is None:
        graphs, outs, info = capture_native(torch, wl, stream)
        extra = 0
    else:
        graphs, outs, keep, info = capture_graphalloc(torch, ga, wl, stream, args.record)
        extra = 1 if args.record == "eager" else 0  # the recorded eager step
    result.update(info)  # measured, kept even if the checks below fail
    eager_reference_steps(torch, wl, args.warmup + extra)
    info.update(replay_and_check(torch, wl, graphs, outs, stream, replays, args.seed))
    return info


def child(args):
    result = {"case": args.case, "allocator": args.allocator, "record": args.record}
    try:
        ga = None
        if args.allocator == "graphalloc":
            ga = import_graphalloc_torch()
            if not hasattr(ga, "planned_graphed_callables"):
                raise RuntimeError(
                    f"the graphalloc package at {ga.__file__} predates planned_graphs: put this "
                    "checkout's python/ first on PYTHONPATH (or install a wheel built from it)"
                )
            result["lib"] = ga.use(args.lib)
        torch = import_torch(result)
        t0 = time.perf_counter()
        if args.case == "graphed_callables":
            result.update(run_graphed_callables(torch, args, ga))
        else:
            result.update(run_captured(torch, args, ga, result))
        result["wall_s"] = time.perf_counter() - t0
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------
# Parent: one process per case and allocator (and record mode), then the table.


def run_child(args, case, allocator, record, timeout):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--case", case,
           "--allocator", allocator, "--record", record]
    for name in ("replays", "gpt2_replays", "gpt2_layers", "gpt2_batch", "gpt2_seq", "warmup", "seed"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.lib:
        cmd += ["--lib", args.lib]
    base = {"case": case, "allocator": allocator, "record": record}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = e.stderr or b""
        tail = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
        return dict(base, error=f"timed out after {timeout} s", stderr_tail=tail[-3000:])
    except Exception as e:  # noqa: BLE001 - reported in the table
        return dict(base, error=f"could not run: {type(e).__name__}: {e}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            try:
                result = json.loads(line[len(RESULT_TAG):])
            except ValueError as e:
                result = dict(base, error=f"unreadable result line: {e}")
            break
    else:
        result = dict(base, error=f"exited with status {proc.returncode} and no result")
    result["process_s"] = time.perf_counter() - t0
    warned = [ln for ln in proc.stderr.splitlines() if "graphalloc:" in ln]
    if warned:
        result["warnings"] = warned[-5:]
    if "error" in result:
        result["stderr_tail"] = proc.stderr[-3000:]
    return result


def mib(r, key):
    v = r.get(key)
    return f"{v / MIB:.1f}" if isinstance(v, (int, float)) else "-"


def replay_text(r):
    if "replay_equal" not in r:
        return "error" if "error" in r else "-"
    text = ("yes" if r["replay_equal"] else "NO") + (" (bitwise)" if r.get("replay_exact") else "")
    if r.get("corrupted_eager_tensors"):
        text += f", {r['corrupted_eager_tensors']} eager tensors overwritten"
    return f"{text}, {r['replays']} replays"


def ratio(r):
    lb, planned = r.get("lower_bound"), r.get("planned_pool")
    if not lb or planned is None:
        return "-"
    x = planned / lb
    return f"{x:.3f}x {'(ok)' if x <= 1.05 else '(over 1.05x)'}"


def fallbacks_text(r):
    plan = r.get("plan")
    if not plan:
        return "-"
    text = f"{plan['fallbacks']} ({plan['planned_hits']}/{plan['planned_allocations']} planned)"
    graphs = r.get("graphs", [])
    reasons = [g["fallback_reason"] for g in graphs if g.get("fallback_reason")]
    if any(g.get("replanned") for g in graphs):
        text += ", after a re-plan from the first capture"
    return text + ("; " + " / ".join(reasons) if reasons else "")


def short_error(r):
    if "error" not in r:
        return ""
    return f"{r['allocator']}/{r['record']}: {r['error'][:200]}".replace("|", "/").replace("\n", " ")


def table(results):
    lines = [
        "| case | record | lower bound (peak live) MiB | planned pool MiB | planned/lower "
        "| unplanned graphalloc pool MiB | PyTorch private pool MiB | PyTorch capture peak live MiB "
        "| fallbacks | replay = eager (graphalloc) | replay = eager (PyTorch) | errors |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|---|---|",
    ]
    cases = []
    for r in results:
        if r["case"] not in cases:
            cases.append(r["case"])
    for case in cases:
        native = next((r for r in results if r["case"] == case and r["allocator"] == "native"), {})
        rows = [r for r in results if r["case"] == case and r["allocator"] == "graphalloc"] or [{}]
        for g in rows:
            errors = "; ".join(e for e in (short_error(native), short_error(g)) if e)
            lines.append(
                f"| {case} | {g.get('record', '-')} | {mib(g, 'lower_bound')} | {mib(g, 'planned_pool')} "
                f"| {ratio(g)} | {mib(g, 'unplanned_pool')} | {mib(native, 'private_pool')} "
                f"| {mib(native, 'lower_bound')} | {fallbacks_text(g)} | {replay_text(g)} "
                f"| {replay_text(native)} | {errors} |"
            )
    return "\n".join(lines)


def report(args, results, t0, final):
    """Prints (when final) and writes the table and JSON; called after every
    child, so a run cut short still leaves what it measured."""
    text = table(results)
    device = next((r["device"] for r in results if "device" in r), "unknown device")
    version = next((r["torch"] for r in results if "torch" in r), "unknown")
    out = args.json or (os.path.join(os.environ["OUT"], "torch_planned.json") if os.environ.get("OUT") else None)
    if out:
        data = {"device": device, "torch": version, "lib": args.lib, "args": vars(args),
                "complete": final, "results": results, "table": text}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(data, indent=2))
    if not final:
        return
    print(text)
    print(f"\n{device}, PyTorch {version}, library {args.lib}; total {time.perf_counter() - t0:.0f} s")
    for r in results:
        for g in r.get("graphs", []):
            if g.get("first_attempt"):
                print(f"\n--- {r['case']} / record={r['record']}, re-planned: {g['first_attempt']}")
            if g.get("fallback_reason"):
                print(f"\n--- {r['case']} / record={r['record']}: {g['fallback_reason']}")
        if "error" in r:
            print(f"\n--- {r['case']} / {r['allocator']} / {r['record']}: {r['error']}")
            print(r.get("traceback") or r.get("stderr_tail", ""))
    if out:
        print(f"\nwrote {out}")


def parent(args):
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    records = [m.strip() for m in args.record.split(",") if m.strip()]
    for c in cases:
        if c not in CASES:
            sys.exit(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    for m in records:
        if m not in RECORD_MODES:
            sys.exit(f"unknown record mode {m!r}; choose from {', '.join(RECORD_MODES)}")
    if args.lib is None:
        try:
            args.lib = import_graphalloc_torch().find_library()
        except Exception as e:  # noqa: BLE001 - each child reports it
            print(f"warning: {e}", file=sys.stderr)
    t0 = time.perf_counter()
    results = []
    for case in cases:
        # planned_graphed_callables always records a thrown-away capture
        modes = ["capture"] if case == "graphed_callables" else records
        for allocator, record in [("native", "-")] + [("graphalloc", m) for m in modes]:
            left = args.budget - (time.perf_counter() - t0)
            if left < 30:
                r = {"case": case, "allocator": allocator, "record": record,
                     "error": f"skipped: the run's budget of {args.budget} s is spent"}
            else:
                r = run_child(args, case, allocator, record, min(args.timeout, int(left)))
            results.append(r)
            print(f"[{time.perf_counter() - t0:6.1f} s] {case:10s} {allocator:10s} {record:7s} "
                  f"{r.get('error', 'ok')}", file=sys.stderr, flush=True)
            report(args, results, t0, final=False)
    report(args, results, t0, final=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", help="path of libgraphalloc.so (default: GRAPHALLOC_LIB, the package's, "
                   "or target/release)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--record", default=",".join(RECORD_MODES),
                   help="record modes of the planned pool to run (eager, capture)")
    p.add_argument("--replays", type=int, default=200, help="replays per graph (mlp, two_shapes)")
    p.add_argument("--gpt2-replays", type=int, default=20)
    p.add_argument("--gpt2-layers", type=int, default=12)
    p.add_argument("--gpt2-batch", type=int, default=8)
    p.add_argument("--gpt2-seq", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3, help="eager steps on the capture stream first")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    p.add_argument("--budget", type=int, default=540,
                   help="seconds for the whole run: children that would start later are skipped")
    p.add_argument("--json", help="write the JSON report here (default $OUT/torch_planned.json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--allocator", choices=("native", "graphalloc"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be at least 1")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
