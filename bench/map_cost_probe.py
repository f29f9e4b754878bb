#!/usr/bin/env python3
"""What one mapping unit costs, by size: the driver calls behind expandable segments.

For each size, on device 0 (the primary context, through the driver API with
ctypes; no PyTorch needed), times in microseconds the median of `--reps`
rounds of: `cuMemCreate`, `cuMemMap`, `cuMemSetAccess`, `cuMemUnmap`,
`cuMemRelease` of one unit of that size, and `cuMemAlloc`/`cuMemFree` of the
same size (what a plain segment costs). Then the same bytes as several
units: one `cuMemSetAccess` over the whole run against one per unit.
Prints one JSON line per size.

Usage (GPU machine): python3 bench/map_cost_probe.py [--reps 5] [--mib 2,16,48,128,256,786]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time


class Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class AllocFlags(ctypes.Structure):
    _fields_ = [
        ("compressionType", ctypes.c_ubyte),
        ("gpuDirectRDMACapable", ctypes.c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", ctypes.c_ubyte * 4),
    ]


class Prop(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("requestedHandleTypes", ctypes.c_int),
        ("location", Location),
        ("win32HandleMetaData", ctypes.c_void_p),
        ("allocFlags", AllocFlags),
    ]


class AccessDesc(ctypes.Structure):
    _fields_ = [("location", Location), ("flags", ctypes.c_int)]


cu = ctypes.CDLL("libcuda.so.1")


def check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed: CUresult {rc}")


def timed(fn, *args, what: str) -> float:
    t = time.perf_counter_ns()
    check(fn(*args), what)
    return (time.perf_counter_ns() - t) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mib", default="2,16,48,128,256,786")
    args = ap.parse_args()
    check(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    prop = Prop(type=1, location=Location(type=1, id=dev.value))
    access = AccessDesc(location=Location(type=1, id=dev.value), flags=3)
    u64 = ctypes.c_uint64
    span = u64()
    check(cu.cuMemAddressReserve(ctypes.byref(span), u64(8 << 30), u64(0), u64(0), u64(0)), "reserve")
    base = span.value
    for mib in [int(m) for m in args.mib.split(",")]:
        size = u64(mib << 20)
        rows: dict[str, list[float]] = {}
        for _ in range(args.reps):
            h = u64()
            r = {
                "create": timed(cu.cuMemCreate, ctypes.byref(h), size, ctypes.byref(prop), u64(0), what="create"),
                "map": timed(cu.cuMemMap, u64(base), size, u64(0), h, u64(0), what="map"),
                "set_access": timed(cu.cuMemSetAccess, u64(base), size, ctypes.byref(access), u64(1), what="access"),
                "unmap": timed(cu.cuMemUnmap, u64(base), size, what="unmap"),
                "release": timed(cu.cuMemRelease, h, what="release"),
            }
            p = u64()
            r["cuMemAlloc"] = timed(cu.cuMemAlloc_v2, ctypes.byref(p), size, what="alloc")
            r["cuMemFree"] = timed(cu.cuMemFree_v2, p, what="free")
            for k, v in r.items():
                rows.setdefault(k, []).append(v)
        out = {"mib": mib, **{k: round(statistics.median(v), 1) for k, v in rows.items()}}
        # The same bytes in units of `unit` MiB: access set once, or per unit.
        unit = min(mib, 16) if mib > 16 else mib
        n = mib // unit
        for once in (True, False):
            handles = []
            t = time.perf_counter_ns()
            for i in range(n):
                h = u64()
                check(cu.cuMemCreate(ctypes.byref(h), u64(unit << 20), ctypes.byref(prop), u64(0)), "create")
                check(cu.cuMemMap(u64(base + (i * unit << 20)), u64(unit << 20), u64(0), h, u64(0)), "map")
                if not once:
                    check(cu.cuMemSetAccess(u64(base + (i * unit << 20)), u64(unit << 20), ctypes.byref(access), u64(1)), "access")
                handles.append(h)
            if once:
                check(cu.cuMemSetAccess(u64(base), u64(n * unit << 20), ctypes.byref(access), u64(1)), "access")
            out[f"{n}x{unit}MiB_{'one_access' if once else 'access_each'}"] = round((time.perf_counter_ns() - t) / 1e3, 1)
            check(cu.cuMemUnmap(u64(base), u64(n * unit << 20)), "unmap")
            for h in handles:
                check(cu.cuMemRelease(h), "release")
        print(json.dumps(out), flush=True)
    check(cu.cuMemAddressFree(u64(base), u64(8 << 30)), "free range")


if __name__ == "__main__":
    main()
