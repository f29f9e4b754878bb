"""graphalloc as PyTorch's CUDA allocator.

    import graphalloc.torch
    graphalloc.torch.use()                 # before the first CUDA use
    import torch
    x = torch.randn(1024, 1024, device="cuda")
    print(graphalloc.torch.stats()["total"]["peak_reserved_bytes"])

`use` installs the libgraphalloc.so shipped in the graphalloc package through
PyTorch's `torch.cuda.memory.CUDAPluggableAllocator`. With a pluggable
allocator, PyTorch's own `torch.cuda.memory_stats()`,
`reset_peak_memory_stats()` and `empty_cache()` do not reach the library: use
`stats()`, `memory_stats()`, `reset_peak_stats()` and `empty_cache()` of this
module instead. Likewise `torch.cuda.memory._record_memory_history()` and
`_dump_snapshot()` see nothing: use `record_history(n)`, `dump_snapshot(path)`
(the same pickle format, for PyTorch's memory viewer), `snapshot()`,
`context(text)` and `write_trace(path)` (a trace for the replay tool).

CUDA graphs: allocations on a stream being captured (`torch.cuda.graph`)
land in a graph pool graphalloc makes for that capture; call
`release_capture_pools()` once those graphs are gone (PyTorch does not tell a
pluggable allocator). `GraphPool` gives explicit control. `planned_graph(fn)`
captures `fn` into a pool planned from a recorded warm-up run, which
reserves about the run's peak of live bytes (`Recording`, `PlannedPool`).

torch.compile(mode="reduce-overhead"): PyTorch's CUDA graph trees need
allocator calls a pluggable allocator cannot serve (`getCheckpointState`,
`setCheckpointPoolState`, `checkPoolLiveAllocations`), so `use()` turns the
trees off (`torch._inductor.config.triton.cudagraph_trees = False`): inductor
then captures each compiled graph with plain `torch.cuda.graph`, one private
pool per graph. See `configure_torch_compile`.

The library is configured by the GRAPHALLOC_CONF environment variable
(e.g. "memory_fraction:0.9"), read when it makes its first allocation.
"""

from __future__ import annotations

import warnings
from typing import Optional

import ctypes

from . import (
    GraphallocError,
    PLAN_STATS_FIELDS,
    _PlanStats,
    _check,
    device_stats,
    empty_cache,
    find_library,
    last_error,
    library,
    pool_stats,
    reset_peak_stats,
    stats,
)
from . import history as _history
from .history import *  # noqa: F401,F403

__all__ = [
    "use",
    "use_graphalloc",
    "is_installed",
    "configure_torch_compile",
    "record_stream_routed",
    "NotInstalledError",
    "find_library",
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
] + _history.__all__

_torch_allocator = None  # keeps PyTorch's CUDAPluggableAllocator object alive
_lib_path: Optional[str] = None


class NotInstalledError(GraphallocError):
    """A call that needs graphalloc to be PyTorch's allocator came before `use()`."""


def _require_installed(what: str) -> None:
    if _torch_allocator is None:
        raise NotInstalledError(
            f"{what} needs graphalloc as PyTorch's CUDA allocator: call "
            "graphalloc.torch.use() first, before the first CUDA allocation"
        )


def configure_torch_compile() -> bool:
    """Sets torch.compile up for a pluggable allocator: turns CUDA graph
    trees off (`torch._inductor.config.triton.cudagraph_trees = False`), so
    mode="reduce-overhead" captures with plain `torch.cuda.graph`. Given up
    against the trees: the graphs of one compiled function (forward,
    backward, each input shape) do not share one memory pool, so more memory
    stays reserved; outputs are the graph's static buffers, overwritten by
    the next call of the same graph (clone what you keep); no
    "accessing tensor output of CUDAGraphs that has been overwritten" check.
    Returns False (with a warning) where inductor is not importable."""
    try:
        import torch._inductor.config as inductor_config
    except Exception as e:  # noqa: BLE001 - a torch without inductor still works eagerly
        warnings.warn(f"graphalloc: torch._inductor not importable, torch.compile left as is ({e})")
        return False
    inductor_config.triton.cudagraph_trees = False
    return True


def use(
    path: Optional[str] = None,
    abort_on_failure: bool = True,
    torch_compile: bool = True,
) -> str:
    """Makes graphalloc PyTorch's CUDA allocator. Call before the first CUDA
    allocation in the process (PyTorch refuses to swap an allocator in use).
    Returns the library's path. Calling it again is a no-op.

    PyTorch (2.11) does not check the pointer a pluggable allocator returns:
    an allocation that fails (out of memory, say) would become a tensor at
    address 0 and later an "illegal memory access" that breaks the CUDA
    context. With `abort_on_failure` (the default) graphalloc instead prints
    why and aborts the process at the failing allocation.

    With `torch_compile` (the default) it also calls
    `configure_torch_compile()`, so torch.compile(mode="reduce-overhead")
    works under graphalloc."""
    global _torch_allocator, _lib_path
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
            f"call graphalloc.torch.use() before the first CUDA allocation ({e})"
        ) from e
    _torch_allocator, _lib_path = allocator, lib_path
    _route_record_stream(lib, allocator)
    if torch_compile:
        configure_torch_compile()
    return lib_path


use_graphalloc = use  # the name of the former graphalloc_torch module


_record_stream_routed = False


def _route_record_stream(lib, allocator) -> None:
    """Hands graphalloc_record_stream to PyTorch where its Python API lets
    us (a `set_record_stream_fn` on the C++ allocator object); stock PyTorch
    2.11 has none, and then `Tensor.record_stream` does not reach graphalloc."""
    global _record_stream_routed
    import ctypes

    native = allocator.allocator() if hasattr(allocator, "allocator") else None
    setter = getattr(native, "set_record_stream_fn", None)
    if callable(setter):
        try:
            setter(ctypes.cast(lib.graphalloc_record_stream, ctypes.c_void_p).value)
            _record_stream_routed = True
        except Exception as e:  # noqa: BLE001 - an unknown binding: keep PyTorch's default
            warnings.warn(f"graphalloc: set_record_stream_fn failed ({e})")


def record_stream_routed() -> bool:
    """Whether `Tensor.record_stream` reaches graphalloc in this process."""
    return _record_stream_routed


def is_installed() -> bool:
    """Whether use() installed graphalloc in this process."""
    return _torch_allocator is not None


def memory_stats() -> dict:
    """The totals under the key names of `torch.cuda.memory_stats()`, for code
    written against PyTorch's native allocator (all devices together)."""
    _require_installed("memory_stats()")
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


def release_capture_pools() -> int:
    """Lets go of the pools graphalloc made for CUDA graph captures; call it
    after the graphs are destroyed. Returns how many were let go."""
    _require_installed("release_capture_pools()")
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
        _require_installed("GraphPool")
        if device is None:
            import torch

            device = torch.cuda.current_device()
        # torch.device("cuda:1") -> 1; an unknown device raises GraphallocError below.
        index = getattr(device, "index", device)
        self.device = int(index if index is not None else 0)
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
        return pool_stats(self.id)

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
        if self.id:
            try:
                library().graphalloc_plan_record_release(self.id)
            except Exception:  # interpreter shutdown: nothing left to release
                pass


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
