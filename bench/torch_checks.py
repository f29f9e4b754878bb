#!/usr/bin/env python3
"""PyTorch features under graphalloc, each checked against eager, PASS/FAIL.

Each (check, allocator) pair runs in a fresh process, so a failure (even a
broken CUDA context) costs only its own line. Checks:

  graphed_callables  torch.cuda.make_graphed_callables on an MLP, 6 training
                     steps (forward + backward graphs) against an eager copy.
  record_stream      matmuls on a side stream reading tensors allocated on the
                     default stream, freed at once after `record_stream`, while
                     the default stream keeps allocating and writing; results
                     against the same sums computed on one stream.
  compile            torch.compile(mode="reduce-overhead") training (backward,
                     SGD) with two input shapes (two CUDA graphs), 8 calls,
                     outputs and losses against an eager copy. Under graphalloc,
                     graphalloc.torch.use() turns CUDA graph trees off (see
                     graphalloc/torch.py, configure_torch_compile).

Allocators: native (PyTorch's), native-no-trees (native with CUDA graph trees
off, the compile check only: what turning trees off costs by itself), and
graphalloc. Peak reserved memory is printed per pair.

Usage (GPU machine; graphalloc importable: the installed wheel, or PYTHONPATH):
    python3 bench/torch_checks.py [--checks graphed_callables,record_stream,compile]
        [--allocators native,native-no-trees,graphalloc] [--timeout 300]
Exit status 0 when every pair passed. JSON to $OUT/torch_checks.json if $OUT is set.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from torch_plugin import import_graphalloc_torch  # bench/ is sys.path[0]

REPO = Path(__file__).resolve().parent.parent
CHECKS = ("graphed_callables", "record_stream", "compile")
ALLOCATORS = ("native", "native-no-trees", "graphalloc")
TAG = "TORCH_CHECKS_RESULT "


def mlp(torch, width=1024):
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(512, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, 512)
    ).cuda()


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def check_graphed_callables(torch):
    F = torch.nn.functional
    torch.manual_seed(0)
    model = mlp(torch)
    ref = copy.deepcopy(model)
    sample = torch.randn(64, 512, device="cuda")
    graphed = torch.cuda.make_graphed_callables(model, (sample,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    worst = 0.0
    for _ in range(6):
        x, y = torch.randn(64, 512, device="cuda"), torch.randn(64, 512, device="cuda")
        losses = []
        for fn, o in ((graphed, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            loss = F.mse_loss(fn(x), y)
            loss.backward()
            o.step()
            losses.append(loss.detach())
        worst = max(worst, max_diff(*losses))
    params = max(max_diff(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    ok = worst <= 1e-4 and params <= 1e-4  # same kernels; cuBLAS may pick others in capture
    return ok, f"max loss diff {worst:.3g}, max param diff {params:.3g} over 6 steps"


def check_record_stream(torch):
    n, iters = 2048, 12
    side = torch.cuda.Stream()
    gen = torch.Generator(device="cuda").manual_seed(1)
    sums = torch.zeros(iters, device="cuda")
    keep = []
    for i in range(iters):
        a = torch.randn(n, n, device="cuda", generator=gen)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(20_000_000)  # the side stream lags: a is read late
            sums[i] = (a @ a).sum()
        a.record_stream(side)
        del a
        # Had a's block been handed out again now, this fill would land before
        # the side stream's matmul reads it.
        keep.append(torch.full((n, n), 1e3, device="cuda"))
        keep = keep[-4:]
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    gen.manual_seed(1)
    expected = []
    for _ in range(iters):
        a = torch.randn(n, n, device="cuda", generator=gen)
        expected.append((a @ a).sum())
    expected = torch.stack(expected)
    diff = max_diff(sums, expected)
    ok = bool(torch.allclose(sums, expected, rtol=1e-4, atol=1e-2))
    return ok, f"{iters} side-stream matmuls, max |sum diff| {diff:.3g}"


def check_compile(torch):
    import torch._inductor.config as inductor_config

    F = torch.nn.functional
    torch.manual_seed(0)
    model = mlp(torch)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    worst_out, worst_loss = 0.0, 0.0
    shapes = (32, 32, 32, 48, 48, 48, 32, 48)
    for batch in shapes:
        x, y = torch.randn(batch, 512, device="cuda"), torch.randn(batch, 512, device="cuda")
        torch.compiler.cudagraph_mark_step_begin()
        outs, losses = [], []
        for fn, o in ((compiled, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            out = fn(x)
            outs.append(out.detach().clone())  # a graph's output buffer is reused by its next replay
            loss = F.mse_loss(out, y)
            loss.backward()
            o.step()
            losses.append(loss.detach().clone())
        worst_out = max(worst_out, max_diff(*outs))
        worst_loss = max(worst_loss, max_diff(*losses))
    params = max(max_diff(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    # Inductor's fused kernels round differently from eager: a tolerance, not equality.
    ok = worst_out <= 1e-3 and worst_loss <= 1e-4 and params <= 1e-3
    trees = inductor_config.triton.cudagraph_trees
    return ok, (
        f"{len(shapes)} training calls (batch 32 and 48): max out diff "
        f"{worst_out:.3g}, loss diff {worst_loss:.3g}, param diff {params:.3g}; "
        f"cudagraph_trees={trees}"
    )


def child(args):
    result = {"check": args.check, "allocator": args.allocator}
    ga = None
    try:
        if args.allocator == "graphalloc":
            ga = import_graphalloc_torch()
            result["lib"] = ga.use()
            result["record_stream_routed"] = ga.record_stream_routed()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if args.allocator == "native-no-trees":
            import torch._inductor.config

            torch._inductor.config.triton.cudagraph_trees = False
        result["torch"] = torch.__version__
        t0 = time.perf_counter()
        ok, detail = globals()[f"check_{args.check}"](torch)
        torch.cuda.synchronize()
        result.update(ok=bool(ok), detail=detail, wall_s=round(time.perf_counter() - t0, 1))
        if ga is None:
            result["peak_reserved"] = torch.cuda.max_memory_reserved()
        else:
            s = ga.stats()
            result["peak_reserved"] = s["total"]["peak_reserved_bytes"]
            result["pool_allocations"] = s["pools"]["allocations"]
            if args.check != "record_stream" and s["pools"]["allocations"] == 0:
                result["ok"] = False  # passing without graphs would prove nothing
                result["detail"] += "; no graph pool allocation: nothing was captured"
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        result.update(ok=False, detail=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    print(TAG + json.dumps(result), flush=True)
    return 0


def run_pair(args, check, allocator):
    cmd = [sys.executable, __file__, "--child", "--check", check, "--allocator", allocator]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        out, err, rc = "", f"timed out after {args.timeout} s", "timeout"
    for line in out.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    tail = (err or out)[-1500:]
    return {"check": check, "allocator": allocator, "ok": False, "detail": f"no result (exit {rc})", "stderr_tail": tail}


def parent(args):
    checks = [c for c in args.checks.split(",") if c]
    allocators = [a for a in args.allocators.split(",") if a]
    for name, valid in ((checks, CHECKS), (allocators, ALLOCATORS)):
        bad = [x for x in name if x not in valid]
        if bad:
            sys.exit(f"unknown {bad}; choose from {', '.join(valid)}")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("torch_checks: skipped (needs PyTorch with a CUDA device)")
        return 0
    results = []
    for check in checks:
        for allocator in allocators:
            if allocator == "native-no-trees" and check != "compile":
                continue
            r = run_pair(args, check, allocator)
            mib = f"{r['peak_reserved'] / 2**20:.0f} MiB" if "peak_reserved" in r else "-"
            verdict = "PASS" if r.get("ok") else "FAIL"
            print(f"{verdict} {check} [{allocator}] peak reserved {mib}: {r.get('detail')}", flush=True)
            if not r.get("ok"):
                print("    " + (r.get("traceback") or r.get("stderr_tail") or "").replace("\n", "\n    "))
            results.append(r)
    passed = sum(1 for r in results if r.get("ok"))
    routed = next((r["record_stream_routed"] for r in results if "record_stream_routed" in r), None)
    print(f"\nrecord_stream reaches graphalloc: {routed}")
    print(f"torch_checks: {passed} passed, {len(results) - passed} failed")
    out = args.json or (os.path.join(os.environ["OUT"], "torch_checks.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    return 0 if passed == len(results) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checks", default=",".join(CHECKS))
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    p.add_argument("--timeout", type=int, default=300, help="seconds per (check, allocator) process")
    p.add_argument("--json", help="write the results here (default $OUT/torch_checks.json)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", help=argparse.SUPPRESS)
    p.add_argument("--allocator", help=argparse.SUPPRESS)
    args = p.parse_args()
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
