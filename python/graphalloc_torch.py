"""graphalloc as PyTorch's CUDA allocator.

    import graphalloc_torch
    graphalloc_torch.use_graphalloc()      # before the first CUDA use
    import torch
    x = torch.randn(1024, 1024, device="cuda")
    print(graphalloc_torch.stats()["total"]["peak_reserved_bytes"])

`use_graphalloc` installs libgraphalloc.so through PyTorch's
`torch.cuda.memory.CUDAPluggableAllocator`. With a pluggable allocator,
PyTorch's own `torch.cuda.memory_stats()`, `reset_peak_memory_stats()` and
`empty_cache()` do not reach the library: use `stats()`, `memory_stats()`,
`reset_peak_stats()` and `empty_cache()` of this module instead.

CUDA graphs: allocations on a stream being captured (`torch.cuda.graph`)
land in a graph pool graphalloc makes for that capture; call
`release_capture_pools()` once those graphs are gone (PyTorch does not tell a
pluggable allocator). `GraphPool` gives explicit control. `planned_graph(fn)`
captures `fn` into a pool planned from a recorded warm-up run, which
reserves about the run's peak of live bytes (`Recording`, `PlannedPool`).

The library is configured by the GRAPHALLOC_CONF environment variable
(e.g. "memory_fraction:0.9"), read when it makes its first allocation.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

__all__ = [
    "find_library",
    "use_graphalloc",
    "is_installed",
    "library",
    "stats",
    "device_stats",
    "memory_stats",
    "reset_peak_stats",
    "empty_cache",
    "release_capture_pools",
    "last_error",
    "GraphPool",
    "Recording",
    "PlannedPool",
    "planned_graph",
    "GraphallocError",
]

LIB_NAME = "libgraphalloc.so"
ABI_VERSION = 2

POOL_STATS_FIELDS = (
    "allocated_bytes",
    "peak_allocated_bytes",
    "requested_bytes",
    "reserved_bytes",
    "peak_reserved_bytes",
    "live_blocks",
    "allocations",
    "frees",
    "oom_retries",
    "segments",
    "segments_reserved",
    "pending_frees",
)


class GraphallocError(RuntimeError):
    """A graphalloc call failed; the message is the library's last error."""


class _PoolStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in POOL_STATS_FIELDS]

    def to_dict(self) -> dict:
        return {name: int(getattr(self, name)) for name in POOL_STATS_FIELDS}


class _Stats(ctypes.Structure):
    _fields_ = [
        ("caching", _PoolStats),
        ("pools", _PoolStats),
        ("total", _PoolStats),
        ("in_graph_mode", ctypes.c_int32),
        ("device_count", ctypes.c_int32),
    ]


PLAN_STATS_FIELDS = (
    "plans",
    "planned_allocations",
    "peak_live_bytes",
    "planned_bytes",
    "planned_hits",
    "fallbacks",
    "fallback_allocations",
)


class _PlanStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in PLAN_STATS_FIELDS]


_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_torch_allocator = None  # keeps PyTorch's CUDAPluggableAllocator object alive


def find_library(path: Optional[str] = None) -> str:
    """The path of libgraphalloc.so: `path` if given, else $GRAPHALLOC_LIB,
    else the file next to this module, else target/release/ of the
    repository this module sits in, else ./target/release/."""
    here = Path(__file__).resolve().parent
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("GRAPHALLOC_LIB"):
        candidates.append(Path(os.environ["GRAPHALLOC_LIB"]))
    else:
        candidates += [
            here / LIB_NAME,
            here.parent / "target" / "release" / LIB_NAME,
            Path.cwd() / "target" / "release" / LIB_NAME,
        ]
    for candidate in candidates:
        if candidate.is_dir():
            candidate = candidate / LIB_NAME
        if candidate.is_file():
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{LIB_NAME} not found (tried {tried}); build it with "
        "`cargo build --release` or set GRAPHALLOC_LIB"
    )


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_i64, c_u64, c_vp = ctypes.c_int, ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p
    signatures = {
        "graphalloc_malloc": (c_vp, [ctypes.c_ssize_t, c_int, c_vp]),
        "graphalloc_free": (None, [c_vp, ctypes.c_ssize_t, c_int, c_vp]),
        "graphalloc_last_error": (ctypes.c_char_p, []),
        "graphalloc_set_log_errors": (None, [c_int]),
        "graphalloc_set_abort_on_malloc_failure": (None, [c_int]),
        "graphalloc_abi_version": (ctypes.c_uint32, []),
        "graphalloc_device_count": (c_int, []),
        "graphalloc_stats": (c_int, [ctypes.POINTER(_Stats)]),
        "graphalloc_device_stats": (c_int, [c_int, ctypes.POINTER(_PoolStats)]),
        "graphalloc_pool_stats": (c_int, [c_u64, ctypes.POINTER(_PoolStats)]),
        "graphalloc_reset_peak_stats": (c_int, []),
        "graphalloc_empty_cache": (c_i64, []),
        "graphalloc_pool_create": (c_u64, [c_int]),
        "graphalloc_pool_release": (c_int, [c_u64]),
        "graphalloc_pool_reset": (c_int, [c_u64]),
        "graphalloc_begin_graph_mode": (c_int, [c_u64]),
        "graphalloc_end_graph_mode": (c_int, []),
        "graphalloc_graph_mode_depth": (c_int, []),
        "graphalloc_record_stream": (c_int, [c_vp, c_vp]),
        "graphalloc_set_capture_pool": (c_int, [c_u64, c_vp]),
        "graphalloc_clear_capture_pool": (c_int, [c_int, c_vp]),
        "graphalloc_release_capture_pools": (c_i64, []),
        "graphalloc_plan_record_begin": (c_u64, [c_int, c_vp]),
        "graphalloc_plan_record_end": (c_i64, [c_u64]),
        "graphalloc_plan_record_release": (c_int, [c_u64]),
        "graphalloc_plan_pool_create": (c_u64, [c_int, ctypes.POINTER(c_u64), ctypes.c_size_t]),
        "graphalloc_plan_start": (c_int, [c_u64, ctypes.c_size_t]),
        "graphalloc_plan_stats": (c_int, [c_u64, ctypes.POINTER(_PlanStats)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def library(path: Optional[str] = None) -> ctypes.CDLL:
    """The loaded library (loading it on first call). Once PyTorch uses it,
    this is the same copy PyTorch calls, so the statistics agree."""
    global _lib, _lib_path
    if _lib is not None:
        if path is not None and find_library(path) != _lib_path:
            raise GraphallocError(f"graphalloc is already loaded from {_lib_path}")
        return _lib
    resolved = find_library(path)
    lib = ctypes.CDLL(resolved)
    _declare(lib)
    version = lib.graphalloc_abi_version()
    if version != ABI_VERSION:
        raise GraphallocError(
            f"{resolved} has C ABI version {version}; this module expects {ABI_VERSION}"
        )
    _lib, _lib_path = lib, resolved
    return lib


def last_error() -> str:
    """The calling thread's last graphalloc error ('' if its last call succeeded)."""
    raw = library().graphalloc_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def _check(ok: bool) -> None:
    if not ok:
        raise GraphallocError(last_error() or "graphalloc call failed")


def use_graphalloc(path: Optional[str] = None, abort_on_failure: bool = True) -> str:
    """Makes graphalloc PyTorch's CUDA allocator. Call before the first CUDA
    allocation in the process (PyTorch refuses to swap an allocator in use).
    Returns the library's path. Calling it again is a no-op.

    PyTorch (2.11) does not check the pointer a pluggable allocator returns:
    an allocation that fails (out of memory, say) would become a tensor at
    address 0 and later an "illegal memory access" that breaks the CUDA
    context. With `abort_on_failure` (the default) graphalloc instead prints
    why and aborts the process at the failing allocation."""
    global _torch_allocator
    import torch

    if _torch_allocator is not None:
        return _lib_path
    lib_path = find_library(path)
    lib = library(lib_path)
    lib.graphalloc_set_abort_on_malloc_failure(1 if abort_on_failure else 0)
    allocator = torch.cuda.memory.CUDAPluggableAllocator(
        lib_path, "graphalloc_malloc", "graphalloc_free"
    )
    try:
        torch.cuda.memory.change_current_allocator(allocator)
    except RuntimeError as e:
        raise GraphallocError(
            "cannot install graphalloc: PyTorch's CUDA allocator is already in use; "
            f"call use_graphalloc() before the first CUDA allocation ({e})"
        ) from e
    _torch_allocator = allocator
    return lib_path


def is_installed() -> bool:
    """Whether use_graphalloc() installed graphalloc in this process."""
    return _torch_allocator is not None


def stats() -> dict:
    """graphalloc's statistics: {'caching': {...}, 'pools': {...}, 'total':
    {...}, 'in_graph_mode': bool, 'device_count': int}; each inner dict has
    the fields of POOL_STATS_FIELDS (bytes and counts)."""
    out = _Stats()
    _check(library().graphalloc_stats(ctypes.byref(out)) == 0)
    return {
        "caching": out.caching.to_dict(),
        "pools": out.pools.to_dict(),
        "total": out.total.to_dict(),
        "in_graph_mode": bool(out.in_graph_mode),
        "device_count": int(out.device_count),
    }


def device_stats(device: int) -> dict:
    """Statistics of one device's caching allocator (graph pools excluded)."""
    out = _PoolStats()
    _check(library().graphalloc_device_stats(device, ctypes.byref(out)) == 0)
    return out.to_dict()


def memory_stats() -> dict:
    """The totals under the key names of `torch.cuda.memory_stats()`, for code
    written against PyTorch's native allocator (all devices together)."""
    total = stats()["total"]
    return {
        "allocated_bytes.all.current": total["allocated_bytes"],
        "allocated_bytes.all.peak": total["peak_allocated_bytes"],
        "requested_bytes.all.current": total["requested_bytes"],
        "reserved_bytes.all.current": total["reserved_bytes"],
        "reserved_bytes.all.peak": total["peak_reserved_bytes"],
        "active.all.current": total["live_blocks"],
        "allocation.all.allocated": total["allocations"],
        "allocation.all.freed": total["frees"],
        "num_alloc_retries": total["oom_retries"],
        "segment.all.current": total["segments"],
        "segment.all.allocated": total["segments_reserved"],
    }


def reset_peak_stats() -> None:
    """Restarts the caching allocators' peaks from now."""
    _check(library().graphalloc_reset_peak_stats() == 0)


def empty_cache() -> int:
    """Returns the cached, unused memory of the caching allocators to the
    device (graph pools keep theirs); returns the bytes released."""
    released = library().graphalloc_empty_cache()
    _check(released >= 0)
    return int(released)


def release_capture_pools() -> int:
    """Lets go of the pools graphalloc made for CUDA graph captures; call it
    after the graphs are destroyed. Returns how many were let go."""
    n = library().graphalloc_release_capture_pools()
    _check(n >= 0)
    return int(n)


def _stream_handle(stream) -> int:
    if stream is None:
        return 0
    return int(getattr(stream, "cuda_stream", stream))


class GraphPool:
    """A graphalloc graph pool on one device.

    `with pool:` puts the calling thread in graph mode on it: that thread's
    allocations on the pool's device come from the pool. Graph mode is per
    thread, and PyTorch runs `backward()` on its own threads, so for a
    `torch.cuda.graph` capture prefer `pool.capture_on(stream)`, which routes
    every allocation on the capturing stream, from any thread.
    """

    def __init__(self, device: Optional[int] = None):
        if device is None:
            import torch

            device = torch.cuda.current_device()
        self.device = int(device)
        self.id = int(library().graphalloc_pool_create(self.device))
        _check(self.id != 0)

    def __enter__(self) -> "GraphPool":
        _check(library().graphalloc_begin_graph_mode(self.id) == 0)
        return self

    def __exit__(self, *exc) -> None:
        _check(library().graphalloc_end_graph_mode() == 0)

    def capture_on(self, stream) -> None:
        """Routes allocations on `stream` (a torch.cuda.Stream or a raw
        handle) to this pool while it is being captured."""
        _check(library().graphalloc_set_capture_pool(self.id, _stream_handle(stream)) == 0)

    def stop_capture_on(self, stream) -> None:
        """Ends `capture_on(stream)`."""
        lib = library()
        _check(lib.graphalloc_clear_capture_pool(self.device, _stream_handle(stream)) == 0)

    def stats(self) -> dict:
        out = _PoolStats()
        _check(library().graphalloc_pool_stats(self.id, ctypes.byref(out)) == 0)
        return out.to_dict()

    def reset(self) -> None:
        """Makes the pool reusable for a new capture; fails while blocks of it
        are live."""
        _check(library().graphalloc_pool_reset(self.id) == 0)

    def release(self) -> None:
        """Drops the handle; live blocks stay valid, memory returns when none is."""
        _check(library().graphalloc_pool_release(self.id) == 0)


class Recording:
    """Records the allocations on `stream` (from any thread, `backward()`
    included) while active, for a planned pool: `with Recording(stream) as
    rec: fn()`. Allocations are served as usual (an eager run)."""

    def __init__(self, stream, device: Optional[int] = None):
        if device is None:
            import torch

            device = torch.cuda.current_device()
        self.device, self.stream, self.id, self.allocations = int(device), stream, 0, None

    def __enter__(self) -> "Recording":
        self.id = int(library().graphalloc_plan_record_begin(self.device, _stream_handle(self.stream)))
        _check(self.id != 0)
        return self

    def __exit__(self, *exc) -> None:
        n = library().graphalloc_plan_record_end(self.id)
        _check(n >= 0)
        self.allocations = int(n)

    def __del__(self):
        if self.id and _lib is not None:
            _lib.graphalloc_plan_record_release(self.id)


class PlannedPool(GraphPool):
    """A graph pool whose memory is placed ahead of the capture from
    recordings of the same work (several: graphs that share the pool and
    never run concurrently, planned to the larger peak). Call
    `start_plan(k)` before capturing the graph of recording k."""

    def __init__(self, recordings, device: Optional[int] = None):
        if device is None:
            device = recordings[0].device
        self.device = int(device)
        ids = (ctypes.c_uint64 * len(recordings))(*[r.id for r in recordings])
        self.id = int(library().graphalloc_plan_pool_create(self.device, ids, len(recordings)))
        _check(self.id != 0)

    def start_plan(self, plan: int = 0) -> None:
        _check(library().graphalloc_plan_start(self.id, plan) == 0)

    def plan_stats(self) -> dict:
        """{'peak_live_bytes', 'planned_bytes', 'planned_hits', 'fallbacks', ...}"""
        out = _PlanStats()
        _check(library().graphalloc_plan_stats(self.id, ctypes.byref(out)) == 0)
        return {name: int(getattr(out, name)) for name in PLAN_STATS_FIELDS}


def planned_graph(fn, stream=None, warmup: int = 2):
    """Captures `fn()` into a `torch.cuda.CUDAGraph` whose memory comes from a
    planned pool: `warmup` eager runs of `fn` on the capture stream (the last
    one recorded), a pool planned from that recording, then the capture.
    Returns `(graph, output, pool)`; keep `pool` while the graph is in use,
    and `pool.plan_stats()` tells the lower bound, the planned size and
    whether the capture followed the plan.

        graph, loss, pool = ga.planned_graph(lambda: train_step(x, y))
        graph.replay()
    """
    import torch

    stream = stream if stream is not None else torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1) - 1):
            fn()
        with Recording(stream) as rec:
            out = fn()
        del out
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    pool = PlannedPool([rec])
    pool.capture_on(stream)
    pool.start_plan(0)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            out = fn()
    finally:
        pool.stop_capture_on(stream)
    return graph, out, pool
