#!/usr/bin/env python3
"""PyTorch's native CUDA allocator vs graphalloc plugged in, side by side.

Runs each workload twice, each time in a fresh process: once with PyTorch's
native caching allocator and once with libgraphalloc.so installed through
`torch.cuda.memory.CUDAPluggableAllocator` (graphalloc.torch.use()).
Same seeds, same random data, same kernels, so the losses must agree to bf16
rounding.

Workloads:
  gpt2      GPT-2 small (12 layers, 768 wide, 12 heads, vocab 50257, ctx 1024;
            random weights, plain torch.nn), batch 8 x 512, bf16 autocast,
            AdamW, 20 steps.
  vartrans  The GPT-2 small model trained with a sequence length that changes
            every step (batch 8, lengths 64..1024 in steps of 64), bf16
            autocast, AdamW: the shape churn in which PyTorch's default
            segments reserve far more than they allocate. First one step at
            each of the 16 lengths (shuffled; timed apart as `warmup_ms`:
            the first step at a length is dominated by one-time library work,
            kernel loading and heuristics, not by the allocator), then
            max(--steps, 80) steps with lengths drawn by a seeded generator,
            the same in every process: `step_ms` is their median, `mean_ms`
            their mean. Peak reserved/allocated cover all steps.
  resnet50  ResNet-50 (torchvision if importable, else hand-written),
            batch 64 x 3 x 224 x 224, bf16 autocast, SGD momentum, 20 steps.
  graph     An MLP training step (AdamW, capturable) captured with
            torch.cuda.graph and replayed 100 times, with eager allocations
            (kept alive across replays, on the default and the capture
            stream) in between. Checks every replay's loss against the same
            step run eagerly on a copy of the model, the parameters at the
            end, and that no eager tensor was overwritten by a replay.

Usage (on a GPU machine, with the graphalloc wheel installed, or in a checkout
after `cargo build --release`: then graphalloc is imported from python/):
    python3 bench/torch_plugin.py [--lib target/release/libgraphalloc.so]
        [--workloads gpt2,vartrans,resnet50,graph] [--steps 20] [--replays 100]
        [--capture-pool auto|registered|planned] [--repeat 3]

With --repeat N, each workload runs N times per allocator, alternating
native and graphalloc; the table gives the median step time with its range.

Prints a markdown table, then graphalloc's mapping calls per run (maps,
unmaps, waits for a stream before unmapping, fences, and the ms in them:
graphalloc.mapping_stats()); writes JSON to $OUT/torch_plugin.json when $OUT
is set (or to --json PATH), each graphalloc run's counts under "mapping". A
workload that fails reports its error in its row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("gpt2", "vartrans", "resnet50", "graph")
ALLOCATORS = ("native", "graphalloc")
RESULT_TAG = "TORCH_PLUGIN_RESULT "


def import_graphalloc_torch():
    """graphalloc.torch from the installed package, else from this checkout."""
    try:
        import graphalloc.torch as ga
    except ImportError:
        sys.path.insert(0, str(REPO / "python"))
        import graphalloc.torch as ga
    return ga


# ---------------------------------------------------------------------------
# Models (plain torch.nn; imported only in the child processes).


def build_gpt2(torch, nn, F, **config):
    """GPT-2 small; `config` overrides GPT2's defaults (layers=, d=, ...)."""
    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.fc_proj = nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self, vocab=50257, ctx=1024, d=768, layers=12, heads=12):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(ctx, d)
            self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
            self.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, mean=0.0, std=std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            t = idx.shape[1]
            pos = torch.arange(t, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return GPT2(**config)


def build_resnet50(torch, nn):
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None, num_classes=1000), "torchvision"
    except Exception:
        pass

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            width = planes
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            self.layers = nn.Sequential(
                self._layer(64, 3, 1),
                self._layer(128, 4, 2),
                self._layer(256, 6, 2),
                self._layer(512, 3, 2),
            )
            self.fc = nn.Linear(512 * 4, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def _layer(self, planes, blocks, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * 4),
                )
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return ResNet50(), "hand-written"


# ---------------------------------------------------------------------------
# Workloads (child process).


def timed_steps(torch, step, steps, warmup, on_step=None):
    """Runs `step` `steps` times; returns (median ms of the steps after
    `warmup`, the last loss). `on_step(i, ms)` sees every step's time."""
    times, loss = [], None
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step(i)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        if on_step is not None:
            on_step(i, ms)
        if i >= warmup:
            times.append(ms)
    return statistics.median(times), float(loss)


def run_gpt2_steps(torch, args, seq_of_step, steps=None, warmup=None, on_step=None):
    """GPT-2 small trained with batch 8 and `seq_of_step(i)` tokens at step i,
    `steps` steps (default --steps), the first `warmup` untimed (default 3)."""
    import torch.nn as nn
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(args.seed)
    model = build_gpt2(torch, nn, F).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    batch = 8

    def step(i):
        idx = torch.randint(0, 50257, (batch, seq_of_step(i) + 1), device=dev, generator=gen)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        return loss.detach()

    steps = args.steps if steps is None else steps
    warmup = min(3, steps - 1) if warmup is None else warmup
    ms, loss = timed_steps(torch, step, steps, warmup, on_step)
    return {"step_ms": ms, "loss": loss}


def run_gpt2(torch, args):
    return run_gpt2_steps(torch, args, lambda i: 512)


VARTRANS_LENGTHS = [64 * k for k in range(1, 17)]


def run_vartrans(torch, args):
    import random

    rng = random.Random(args.seed + 2)
    warm = VARTRANS_LENGTHS[:]
    rng.shuffle(warm)
    measured = [rng.choice(VARTRANS_LENGTHS) for _ in range(max(args.steps, 80))]
    seqs = warm + measured
    t0 = time.perf_counter()
    times = []

    def on_step(i, ms):
        times.append(ms)

    result = run_gpt2_steps(torch, args, lambda i: seqs[i], len(seqs), len(warm), on_step)
    warmup_ms = sum(times[: len(warm)])
    return dict(
        result,
        warmup_ms=warmup_ms,
        mean_ms=statistics.fmean(times[len(warm):]),
        seq_lengths=seqs,
        wall_steps_s=time.perf_counter() - t0,
    )


def run_resnet50(torch, args):
    import torch.nn as nn
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(args.seed)
    model, source = build_resnet50(torch, nn)
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    batch = 64

    def step(i):
        x = torch.randn(batch, 3, 224, 224, device=dev, generator=gen)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=dev, generator=gen)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    ms, loss = timed_steps(torch, step, args.steps, min(3, args.steps - 1))
    return {"step_ms": ms, "loss": loss, "model": source}


def run_graph(torch, args, ga):
    import copy
    import torch.nn as nn
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(args.seed)
    width, batch = 2048, 256
    graph_model = nn.Sequential(
        nn.Linear(1024, width),
        nn.GELU(),
        nn.LayerNorm(width),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, 1024),
    ).to(dev)
    eager_model = copy.deepcopy(graph_model)

    def make_opt(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)

    graph_opt, eager_opt = make_opt(graph_model), make_opt(eager_model)

    def train_step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)

    def batch_data():
        return (
            torch.randn(batch, 1024, device=dev, generator=gen),
            torch.randn(batch, 1024, device=dev, generator=gen),
        )

    static_x, static_y = batch_data()
    capture_stream = torch.cuda.Stream()
    pool = None
    if ga is not None and args.capture_pool == "registered":
        pool = ga.GraphPool(torch.cuda.current_device())
        pool.capture_on(capture_stream)

    # Warm-up on the capture stream (as the torch.cuda.graph docs do), the
    # same steps run eagerly on the copy. With a planned pool, the last
    # warm-up step is recorded (its loss kept to the end, as the graph's is).
    planned = ga is not None and args.capture_pool == "planned"
    capture_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(capture_stream):
        for i in range(3):
            if planned and i == 2:
                with ga.Recording(capture_stream) as recording:
                    kept = train_step(graph_model, graph_opt, static_x, static_y)
                del kept
            else:
                train_step(graph_model, graph_opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(capture_stream)
    if planned:
        torch.cuda.synchronize()
        pool = ga.PlannedPool([recording])
        pool.capture_on(capture_stream)
        pool.start_plan(0)
    for _ in range(3):
        train_step(eager_model, eager_opt, static_x, static_y)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    graph_opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph, stream=capture_stream):
        static_loss = train_step(graph_model, graph_opt, static_x, static_y)
    torch.cuda.synchronize()

    sentinel = 7.0
    live_junk = []  # eager tensors kept alive across replays
    junk_gen = torch.Generator().manual_seed(args.seed + 2)
    max_loss_diff, exact, corrupted, times = 0.0, True, 0, []
    loss = float("nan")
    for i in range(args.replays):
        x, y = batch_data()
        # Eager allocations between replays, some on the capture stream:
        # had graphalloc handed out memory the graph uses, a replay would
        # overwrite them (or they the graph's buffers).
        for j in range(3):
            n = int(torch.randint(1024, 4 << 20, (1,), generator=junk_gen))
            if j == 2:
                with torch.cuda.stream(capture_stream):
                    t = torch.full((n,), sentinel, device=dev)
                capture_stream.synchronize()
            else:
                t = torch.full((n,), sentinel, device=dev)
            live_junk.append(t)
        live_junk = live_junk[-12:]
        static_x.copy_(x)
        static_y.copy_(y)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        replay_loss = static_loss.detach().clone()
        eager_loss = train_step(eager_model, eager_opt, x, y).detach()
        diff = float((replay_loss - eager_loss).abs())
        if not math.isfinite(diff):
            diff = float("inf")
        max_loss_diff = max(max_loss_diff, diff)
        exact = exact and bool(torch.equal(replay_loss, eager_loss))
        corrupted += sum(int(not bool((t == sentinel).all())) for t in live_junk)
        loss = float(replay_loss)

    max_param_diff = max(
        float((a - b).abs().max()) for a, b in zip(graph_model.parameters(), eager_model.parameters())
    )
    if not math.isfinite(max_param_diff):
        max_param_diff = float("inf")
    tol_loss = 1e-4 * max(1.0, abs(loss))
    equal = max_loss_diff <= tol_loss and max_param_diff <= 1e-3 and corrupted == 0
    result = {
        "step_ms": statistics.median(times),
        "loss": loss,
        "replay_equal": equal,
        "replay_exact": exact,
        "max_loss_diff": max_loss_diff,
        "max_param_diff": max_param_diff,
        "corrupted_eager_tensors": corrupted,
        "replays": args.replays,
    }
    del graph
    if ga is not None:
        if pool is not None:
            pool.stop_capture_on(capture_stream)
        if planned:
            result["plan"] = pool.plan_stats()
        result["capture_pool"] = args.capture_pool
    return result


def import_torch(result):
    """torch, checked for CUDA and set for reproducible kernels (no cuDNN
    benchmarking, no TF32); notes its version and the device in `result`."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result["torch"] = torch.__version__
    result["device"] = torch.cuda.get_device_name()
    return torch


def child(args):
    """One workload under one allocator; prints one RESULT line."""
    result = {"workload": args.workload, "allocator": args.allocator}
    if args.cpus:
        os.sched_setaffinity(0, parse_cpus(args.cpus))  # threads made later inherit it
    try:
        ga = None
        if args.allocator == "graphalloc":
            ga = import_graphalloc_torch()
            result["lib"] = ga.use(args.lib)
        torch = import_torch(result)
        t0 = time.perf_counter()
        if args.workload == "gpt2":
            result.update(run_gpt2(torch, args))
        elif args.workload == "vartrans":
            result.update(run_vartrans(torch, args))
        elif args.workload == "resnet50":
            result.update(run_resnet50(torch, args))
        elif args.workload == "graph":
            result.update(run_graph(torch, args, ga))
        else:
            raise ValueError(f"unknown workload {args.workload}")
        torch.cuda.synchronize()
        result["wall_s"] = time.perf_counter() - t0
        if ga is None:
            s = torch.cuda.memory_stats()
            result["peak_reserved"] = s.get("reserved_bytes.all.peak", 0)
            result["peak_allocated"] = s.get("allocated_bytes.all.peak", 0)
            result["alloc_retries"] = s.get("num_alloc_retries", 0)
        else:
            s = ga.stats()
            result["peak_reserved"] = s["total"]["peak_reserved_bytes"]
            result["peak_allocated"] = s["total"]["peak_allocated_bytes"]
            result["alloc_retries"] = s["total"]["oom_retries"]
            result["graphalloc_stats"] = s
            if hasattr(ga, "mapping_stats"):  # packages before graphalloc_mapping_stats lack it
                result["mapping"] = ga.mapping_stats()
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------
# Parent: runs the children and prints the table.


def parse_cpus(text):
    """CPU numbers from a list such as `0-3,8`."""
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def run_child(args, workload, allocator):
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--allocator",
        allocator,
        "--workload",
        workload,
        "--steps",
        str(args.steps),
        "--replays",
        str(args.replays),
        "--seed",
        str(args.seed),
        "--capture-pool",
        args.capture_pool,
    ]
    if args.lib:
        cmd += ["--lib", args.lib]
    if args.cpus:
        cmd += ["--cpus", args.cpus]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-2000:]
        if isinstance(tail, bytes):
            tail = tail.decode("utf-8", "replace")
        return {
            "workload": workload,
            "allocator": allocator,
            "error": f"timed out after {args.timeout} s",
            "stderr_tail": tail,
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            break
    else:
        result = {
            "workload": workload,
            "allocator": allocator,
            "error": f"exited with status {proc.returncode} and no result",
        }
    result["process_s"] = time.perf_counter() - t0
    if "error" in result:
        result["stderr_tail"] = proc.stderr[-3000:]
    return result


def fmt_ms(r):
    if "step_ms" not in r:
        return "-"
    runs = r.get("step_ms_runs", [])
    spread = f" ({min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else ""
    return f"{r['step_ms']:.1f}{spread}"


def fmt_mib(r, key="peak_reserved"):
    return f"{r[key] / 2**20:.0f}" if key in r else "-"


def fmt_loss(r):
    return f"{r['loss']:.4f}" if "loss" in r else "-"


def fmt_replay(r):
    if "replay_equal" not in r:
        return "-" if "error" not in r else "error"
    text = "yes" if r["replay_equal"] else "NO"
    if r.get("replay_exact"):
        text += " (bitwise)"
    if r.get("corrupted_eager_tensors"):
        text += f", {r['corrupted_eager_tensors']} eager tensors overwritten"
    return text


def losses_agree(native, plug):
    if "loss" not in native or "loss" not in plug:
        return "-"
    a, b = native["loss"], plug["loss"]
    if not (math.isfinite(a) and math.isfinite(b)):
        return "NO (non-finite)"
    diff = abs(a - b)
    # bf16 keeps 8 significant bits: 2^-8 relative per rounding; 20 steps
    # of training may amplify nondeterministic reductions a little more.
    ok = diff <= 1e-2 * max(1.0, abs(a))
    return f"{'yes' if ok else 'NO'} (Δ {diff:.2g})"


def short_error(r):
    if "error" not in r:
        return ""
    text = r["error"].replace("|", "/").replace("\n", " ")
    return f"{r['allocator']}: {text[:160]}"


def merged(runs):
    """One row's figures from repeated runs: the median step time (with the
    range of all runs), the rest from the first run without an error."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    times = [r["step_ms"] for r in ok if "step_ms" in r]
    if times:
        out["step_ms"] = statistics.median(times)
        out["step_ms_runs"] = times
    return out


def table(results):
    grouped = {}
    for r in results:
        grouped.setdefault((r["workload"], r["allocator"]), []).append(r)
    by = {k: merged(v) for k, v in grouped.items()}
    lines = [
        "| workload | step ms native | step ms graphalloc | peak reserved MiB native "
        "| peak reserved MiB graphalloc | peak allocated MiB native "
        "| peak allocated MiB graphalloc | loss native | loss graphalloc | losses agree "
        "| replay = eager native | replay = eager graphalloc | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    workloads = []
    for r in results:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    for w in workloads:
        n = by.get((w, "native"), {"allocator": "native"})
        g = by.get((w, "graphalloc"), {"allocator": "graphalloc"})
        errors = "; ".join(e for e in (short_error(n), short_error(g)) if e)
        lines.append(
            f"| {w} | {fmt_ms(n)} | {fmt_ms(g)} | {fmt_mib(n)} | {fmt_mib(g)} "
            f"| {fmt_mib(n, 'peak_allocated')} | {fmt_mib(g, 'peak_allocated')} "
            f"| {fmt_loss(n)} | {fmt_loss(g)} | {losses_agree(n, g)} "
            f"| {fmt_replay(n)} | {fmt_replay(g)} | {errors} |"
        )
    return "\n".join(lines)


MAPPING_COLUMNS = (
    ("maps", "maps", 1),
    ("unmaps", "unmaps", 1),
    ("map ms", "map_ns", 1e-6),
    ("unmap ms", "unmap_ns", 1e-6),
    ("waits", "waits", 1),
    ("wait ms", "wait_ns", 1e-6),
    ("fences", "fences", 1),
    ("deferred unmaps", "deferred_unmaps", 1),
)


def mapping_table(results):
    """graphalloc's mapping calls per run (whole run, warm-up included): the
    median over the repeats of each count and time, or None if no run
    recorded them."""
    rows = {}
    for r in results:
        if r["allocator"] == "graphalloc" and "mapping" in r:
            rows.setdefault(r["workload"], []).append(r["mapping"])
    if not rows:
        return None
    head = " | ".join(c[0] for c in MAPPING_COLUMNS)
    lines = [
        f"| workload (graphalloc, per run) | {head} |",
        "|---|" + "---:|" * len(MAPPING_COLUMNS),
    ]
    for w, runs in rows.items():
        cells = []
        for _, key, scale in MAPPING_COLUMNS:
            v = statistics.median(m.get(key, 0) for m in runs) * scale
            cells.append(f"{v:.1f}" if scale != 1 else f"{v:g}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parent(args):
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    if args.lib is None:
        try:
            args.lib = import_graphalloc_torch().find_library()
        except Exception as e:  # reported per row by the children
            print(f"warning: {e}", file=sys.stderr)
    t0 = time.perf_counter()
    results = []
    for w in workloads:
        for rep in range(args.repeat):
            order = ALLOCATORS if rep % 2 == 0 else tuple(reversed(ALLOCATORS))
            for allocator in order:
                r = run_child(args, w, allocator)
                r["repeat"] = rep
                status = r.get("error", "ok")
                print(
                    f"[{time.perf_counter() - t0:6.1f} s] {w:9s} {allocator:10s} #{rep} {status}",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
    print(table(results))
    for r in results:
        if "mean_ms" in r:
            print(f"{r['workload']} {r['allocator']} #{r['repeat']}: median {r['step_ms']:.2f} ms, "
                  f"mean {r['mean_ms']:.2f} ms over the measured steps; "
                  f"first step at each length {r['warmup_ms']:.0f} ms in all")
    mapping = mapping_table(results)
    if mapping:
        print("\n" + mapping)
    device = next((r["device"] for r in results if "device" in r), "unknown device")
    torch_version = next((r["torch"] for r in results if "torch" in r), "unknown")
    print(f"\n{device}, PyTorch {torch_version}, library {args.lib}; "
          f"total {time.perf_counter() - t0:.0f} s")
    for r in results:
        if "error" in r:
            print(f"\n--- {r['workload']} / {r['allocator']}: {r['error']}")
            print(r.get("traceback") or r.get("stderr_tail", ""))
    out = args.json
    if out is None and os.environ.get("OUT"):
        out = os.path.join(os.environ["OUT"], "torch_plugin.json")
    if out:
        report = {
            "device": device,
            "torch": torch_version,
            "lib": args.lib,
            "steps": args.steps,
            "replays": args.replays,
            "seed": args.seed,
            "capture_pool": args.capture_pool,
            "repeat": args.repeat,
            "results": results,
            "table": table(results),
            "mapping_table": mapping,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {out}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", help="path of libgraphalloc.so (default: GRAPHALLOC_LIB, the one in the "
                   "graphalloc package, or target/release)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--capture-pool",
        choices=("auto", "registered", "planned"),
        default="auto",
        help="graph workload under graphalloc: let graphalloc make a pool per "
        "capture (auto), register one for the capture stream (registered), or "
        "register one planned from a recorded warm-up step (planned)",
    )
    p.add_argument("--timeout", type=int, default=240, help="seconds per child process")
    p.add_argument("--cpus", help="pin every child process to these CPUs (e.g. 0-7): the same cores "
                   "for every run, so that runs differ by the allocator rather than by where the "
                   "scheduler put them")
    p.add_argument("--repeat", type=int, default=1, help="runs per workload and allocator, alternating")
    p.add_argument("--json", help="write the JSON report here (default $OUT/torch_plugin.json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
