#!/usr/bin/env python3
"""Records allocation traces of workloads unlike the bundled ones, from PyTorch's own allocator.

The bundled traces are three workloads on the default stream. This records others, each from an
empty cache with `torch.cuda.memory._record_memory_history`, and writes them in the replay format
(`a ID SIZE STREAM` / `f ID`, one event per line, gzip'd) under --out:

  sidestream_train   an MLP trained on batches of varying size made on a side stream (the
                     prefetching pattern: the batch's memory belongs to the side stream, the step's
                     to the default one)
  varres_infer       a small convolutional net run on images of varying resolution (detection-style
                     inference: every shape differs from the last)
  lstm_train         an LSTM trained on sequences of varying length
  unet_train         an encoder-decoder with skip connections (concatenations), bf16 autocast

The model code uses only `torch` (random weights, no downloads). Then compare the allocators on
them with `bench/torch_replay.py --replay .gpu/replay OUT/*.trace.gz`.

A block's events come from the snapshot's device trace: `alloc` (its size is the block size PyTorch
rounded to) and `free_completed` (`free_requested` where a PyTorch version records no completion).
Its stream is the `cudaStream_t` PyTorch records (0 for the default stream).

Usage (GPU machine): python3 bench/torch_workload_traces.py [--out DIR] [--steps 6] [--only NAME]
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path


def sidestream_train(torch, steps):
    nn = torch.nn
    model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(),
                          nn.Linear(4096, 1024)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    side = torch.cuda.Stream()
    main = torch.cuda.current_stream()
    g = torch.Generator(device="cuda").manual_seed(0)
    for step in range(steps):
        batch = 256 + 192 * (step % 4)
        with torch.cuda.stream(side):
            x = torch.randn(batch, 1024, device="cuda", generator=g)
            y = torch.randn(batch, 1024, device="cuda", generator=g)
        main.wait_stream(side)
        x.record_stream(main)
        y.record_stream(main)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, y, loss


def varres_infer(torch, steps):
    nn = torch.nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    layers = block(3, 32) + block(32, 64) + [nn.MaxPool2d(2)] + block(64, 128) + block(128, 128)
    layers += [nn.MaxPool2d(2)] + block(128, 256) + block(256, 256)
    model = nn.Sequential(*layers).cuda().eval()
    sizes = [(4, 480, 640), (2, 800, 1216), (8, 320, 320), (1, 1024, 1024), (4, 608, 800),
             (6, 416, 416), (3, 736, 960), (8, 256, 512)]
    with torch.no_grad():
        for step in range(steps * 2):
            n, h, w = sizes[step % len(sizes)]
            out = model(torch.randn(n, 3, h, w, device="cuda"))
            del out


def lstm_train(torch, steps):
    nn = torch.nn
    lstm = nn.LSTM(512, 1024, num_layers=2, batch_first=True).cuda()
    head = nn.Linear(1024, 512).cuda()
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    for step in range(steps):
        length = [64, 200, 128, 331, 97, 256][step % 6]
        x = torch.randn(32, length, 512, device="cuda")
        out, _ = lstm(x)
        loss = head(out).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, out, loss


def unet_train(torch, steps):
    nn = torch.nn

    class Down(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                      nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        def forward(self, x):
            return self.conv(x)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.d1, self.d2, self.d3 = Down(3, 32), Down(32, 64), Down(64, 128)
            self.mid = Down(128, 256)
            self.u3, self.u2, self.u1 = Down(256 + 128, 128), Down(128 + 64, 64), Down(64 + 32, 32)
            self.out = nn.Conv2d(32, 3, 1)

        def forward(self, x):
            f = nn.functional
            a = self.d1(x)
            b = self.d2(f.max_pool2d(a, 2))
            c = self.d3(f.max_pool2d(b, 2))
            m = self.mid(f.max_pool2d(c, 2))
            up = lambda t: f.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
            c = self.u3(torch.cat([up(m), c], 1))
            b = self.u2(torch.cat([up(c), b], 1))
            a = self.u1(torch.cat([up(b), a], 1))
            return self.out(a)

    model = UNet().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(16, 3, 256, 256, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (model(x) - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del x, loss


WORKLOADS = {f.__name__: f for f in (sidestream_train, varres_infer, lstm_train, unet_train)}


def to_trace(entries) -> list[str]:
    """The snapshot's device-trace entries as replay-format lines."""
    kinds = {e["action"] for e in entries}
    free_action = "free_completed" if "free_completed" in kinds else "free_requested"
    lines, live, next_id = [], {}, 0
    for e in entries:
        if e["action"] == "alloc":
            live[e["addr"]] = next_id
            lines.append(f"a {next_id} {e['size']} {e.get('stream', 0)}")
            next_id += 1
        elif e["action"] == free_action and e["addr"] in live:
            lines.append(f"f {live.pop(e['addr'])}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--only", choices=sorted(WORKLOADS), default=None)
    a = p.parse_args()
    import torch

    torch.zeros(1, device="cuda")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, run in WORKLOADS.items():
        if a.only and name != a.only:
            continue
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.memory._record_memory_history(max_entries=2_000_000)
        run(torch, a.steps)
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        entries = snap["device_traces"][torch.cuda.current_device()]
        lines = to_trace(entries)
        streams = sorted({int(l.split()[3]) for l in lines if l.startswith("a ")})
        path = out / f"{name}.trace.gz"
        with gzip.open(path, "wt") as f:
            f.write(f"# allocation trace of {name}: 'a ID SIZE STREAM' allocates, 'f ID' frees; "
                    f"recorded from PyTorch {torch.__version__} by bench/torch_workload_traces.py\n")
            f.write("\n".join(lines) + "\n")
        allocs = sum(1 for l in lines if l.startswith("a "))
        print(f"{name}: {len(lines)} events ({allocs} allocations), streams {streams} -> {path}")
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
