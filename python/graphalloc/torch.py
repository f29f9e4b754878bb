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
pluggable allocator). `GraphPool` gives explicit control.

Planned pools: `step = planned_graph(fn, *args)` captures `fn(*args)` into
a pool planned from a recorded run of the same work (an eager run, or a
capture thrown away), which reserves about the run's peak of live bytes;
`step()` replays it. `planned_graphs([f, g])` captures several graphs (say,
one per batch shape) sharing one planned pool sized to the larger peak.
`Recording` and `PlannedPool` are the parts they are made of.

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
    _RecordedAlloc,
    _c_arg,
    _check,
    device_stats,
    empty_cache,
    find_library,
    last_error,
    library,
    mapping_stats,
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
    "mapping_stats",
    "memory_stats",
    "reset_peak_stats",
    "empty_cache",
    "release_capture_pools",
    "last_error",
    "GraphPool",
    "Recording",
    "PlannedPool",
    "planned_graph",
    "planned_graphs",
    "planned_graphed_callables",
    "first_difference",
    "PlannedGraph",
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


def _device_index(device) -> int:
    """A device ordinal from an int or a torch.device; None, or a
    torch.device without an index ("cuda"), is the current device, as in
    PyTorch. An unknown device raises GraphallocError (here when out of a C
    int's range, else from the library)."""
    index = getattr(device, "index", device)
    if index is None:
        import torch

        index = torch.cuda.current_device()
    return _c_arg(index, ctypes.c_int, "device")


def _stream_handle(stream) -> int:
    if stream is None:
        return 0
    return _c_arg(getattr(stream, "cuda_stream", stream), ctypes.c_uint64, "stream handle")


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
        self.device = _device_index(device)
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
        self.id = 0  # for __del__, should the checks below raise
        self.device = _device_index(device)
        self.stream, self.id, self.allocations = stream, 0, None

    def __enter__(self) -> "Recording":
        self.id = int(library().graphalloc_plan_record_begin(self.device, _stream_handle(self.stream)))
        _check(self.id != 0)
        return self

    def __exit__(self, *exc) -> None:
        n = library().graphalloc_plan_record_end(self.id)
        _check(n >= 0)
        self.allocations = int(n)

    def entries(self) -> list:
        """The ended recording's allocations, in order: dicts of `size`
        (bytes requested), `stream`, `start` and `end` (the recording's clock
        at the allocation and at its free; `end` None if it outlived the
        recording)."""
        lib = library()
        n = lib.graphalloc_plan_record_allocations(self.id, None, 0)
        _check(n >= 0)
        out = (_RecordedAlloc * max(int(n), 1))()
        _check(lib.graphalloc_plan_record_allocations(self.id, out, int(n)) == n)
        return [
            {
                "size": int(a.size),
                "stream": int(a.stream),
                "start": int(a.start),
                "end": None if a.end == 2**64 - 1 else int(a.end),
            }
            for a in out[: int(n)]
        ]

    def rename_stream(self, old, new) -> int:
        """Renames stream `old` to `new` (torch.cuda.Stream or raw handles) in
        this ended recording, for a capture that repeats the recorded work on
        another stream. Returns how many allocations were renamed; raises
        (changing nothing) when both streams are in the recording."""
        n = library().graphalloc_plan_record_rename_stream(
            self.id, _stream_handle(old), _stream_handle(new)
        )
        _check(n >= 0)
        return int(n)

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
        recordings = list(recordings)
        if not recordings:
            raise ValueError("PlannedPool needs at least one recording")
        for k, r in enumerate(recordings):
            if r.allocations is None:
                raise GraphallocError(f"recording {k} has not ended (leave its `with` block first)")
        self.device = recordings[0].device if device is None else _device_index(device)
        self.recordings = recordings  # keeps them alive with the pool
        # the stats of the ordinary pool a thrown-away recording capture used
        # (planned_graphs(record="capture"), planned_graphed_callables)
        self.unplanned_stats = None
        ids = (ctypes.c_uint64 * len(recordings))(*[r.id for r in recordings])
        self.id = int(library().graphalloc_plan_pool_create(self.device, ids, len(recordings)))
        _check(self.id != 0)

    def start_plan(self, plan: int = 0) -> None:
        plan = _c_arg(plan, ctypes.c_size_t, "plan")
        _check(library().graphalloc_plan_start(self.id, plan) == 0)

    def plan_stats(self) -> dict:
        """{'peak_live_bytes', 'planned_bytes', 'planned_hits', 'fallbacks', ...}"""
        out = _PlanStats()
        _check(library().graphalloc_plan_stats(self.id, ctypes.byref(out)) == 0)
        return {name: int(getattr(out, name)) for name in PLAN_STATS_FIELDS}


class PlannedGraph:
    """A `torch.cuda.CUDAGraph` captured into a planned pool, made by
    `planned_graph` or `planned_graphs`. `g()` replays it and returns its
    output (the captured tensors: the next replay overwrites them, clone
    what you keep). Unpacks as `graph, output, pool = g`.

    `followed_plan`: whether every allocation of the capture got its planned
    place; when not, `fallback_reason()` says where the capture left its
    recording (and the pool grew by ordinary growth for the rest of it)."""

    def __init__(self, graph, output, pool, index, stream, recorded, captured, hits, fell_back):
        self.graph, self.output, self.pool, self.index, self.stream = graph, output, pool, index, stream
        self.recorded_allocations = recorded
        self.captured_allocations = captured
        self.planned_hits = hits
        self.followed_plan = not fell_back
        self.first_difference = None  # set by planned_graphs where the capture left its plan
        # captured again from a plan of the first capture (planned_graphs' retry),
        # and why the first capture left its plan
        self.replanned, self.first_attempt = False, None

    def replay(self) -> None:
        self.graph.replay()

    def __call__(self):
        self.graph.replay()
        return self.output

    def __iter__(self):
        return iter((self.graph, self.output, self.pool))

    def plan_stats(self) -> dict:
        """The shared pool's `PlannedPool.plan_stats()`."""
        return self.pool.plan_stats()

    def fallback_reason(self) -> Optional[str]:
        """None when the capture followed its plan, else why it did not."""
        if self.followed_plan:
            return None
        reason = _fallback_reason(
            self.index, self.planned_hits, self.recorded_allocations, self.captured_allocations
        )
        if self.first_difference:
            reason += f" First difference: {self.first_difference}."
        return reason


def first_difference(recorded: list, captured: list) -> Optional[str]:
    """Where two allocation sequences (`Recording.entries()`) first differ in
    size or stream, in words; None if they agree."""
    for i, (r, c) in enumerate(zip(recorded, captured)):
        if (r["size"], r["stream"]) != (c["size"], c["stream"]):
            return (
                f"allocation #{i}: the capture asked for {c['size']} B on stream {c['stream']:#x}, "
                f"the recording had {r['size']} B on stream {r['stream']:#x}"
            )
    if len(recorded) != len(captured):
        i = min(len(recorded), len(captured))
        more = "capture" if len(captured) > len(recorded) else "recording"
        extra = (captured if more == "capture" else recorded)[i]
        return f"allocation #{i} ({extra['size']} B) is only in the {more}"
    return None


def _fallback_reason(index: int, hits: int, recorded: int, captured: int) -> str:
    if captured > hits and hits < recorded:
        what = (
            f"allocation #{hits} of the capture differed from the recording's (size, "
            "alignment or stream), or its planned memory was still in use"
        )
    elif captured > recorded:
        what = f"the capture made more allocations ({captured}) than the recording ({recorded})"
    else:
        what = "an allocation did not fit its planned place"
    return (
        f"graph {index}: the capture followed its plan for {hits} of its {captured} allocations "
        f"(the recording had {recorded}); {what}; the rest of the capture grew the pool as an "
        "ordinary pool. Record a steady-state run (more warm-up runs), or record a thrown-away "
        "capture (record='capture'), which sees what only a capture allocates."
    )


RECORD_MODES = ("eager", "capture")


def planned_graphs(
    fns,
    stream=None,
    warmup: int = 3,
    record: str = "eager",
    before=None,
    device: Optional[int] = None,
    capture_error_mode: str = "global",
    retry: bool = True,
):
    """Captures each callable of `fns` (no arguments) into its own
    `torch.cuda.CUDAGraph`, all sharing ONE pool planned from recordings of
    the same work: graphs that are replayed one after another (never
    concurrently), e.g. one per batch shape. The pool reserves about the
    largest of their peaks of live bytes (plus what their outputs hold), not
    the sum. Returns a list of `PlannedGraph`; keep it (and the pool it
    holds) while the graphs are in use.

    On `stream` (a new side stream by default) it runs each function
    `warmup` times eagerly (lazy initialisation: cuBLAS workspaces, optimizer
    state; pass 0 only for work already warmed up on `stream`, since what a
    capture initialises lazily is never computed), then records one run of
    each, either an eager run
    (`record="eager"`, one more step of real work) or a capture thrown
    away (`record="capture"`: it also sees what only a capture allocates;
    its memory is let go after the real captures). Then it plans the pool
    and captures each function with `torch.cuda.graph`. `before`, if given,
    is called before every run, outside any capture (e.g.
    `lambda: opt.zero_grad(set_to_none=True)` for a step whose gradients
    should live in the pool).

    A capture that leaves its recording still works (the pool grows as an
    ordinary pool for the rest of it, never overlapping a live block). With
    `retry` (the default) the functions are then captured once more, into a
    pool planned from what those captures allocated (`PlannedGraph.replanned`
    and `first_attempt` tell); a capture that still leaves its plan warns
    with the reason (`PlannedGraph.fallback_reason()`)."""
    import torch

    fns = list(fns)
    if not fns:
        raise ValueError("planned_graphs needs at least one function")
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {RECORD_MODES}, not {record!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, not {warmup}")
    _require_installed("planned_graphs()")
    device = _device_index(device)
    stream = stream if stream is not None else torch.cuda.Stream()
    prepare = before if before is not None else (lambda: None)

    def capture(graph, fn, rec_device):
        prepare()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode=capture_error_mode):
            with Recording(stream, rec_device) as seen:
                out = fn()
        return out, seen

    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            for fn in fns:
                prepare()
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()

    recordings, kept, scratch = [], [], None
    if record == "eager":
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for fn in fns:
                prepare()
                with Recording(stream, device) as rec:
                    kept.append(fn())
                recordings.append(rec)
        torch.cuda.current_stream().wait_stream(stream)
    else:
        scratch = GraphPool(device)
        scratch.capture_on(stream)
        try:
            for fn in fns:
                graph = torch.cuda.CUDAGraph()
                out, rec = capture(graph, fn, device)
                kept.append((graph, out))
                recordings.append(rec)
        finally:
            scratch.stop_capture_on(stream)
    torch.cuda.synchronize()

    def capture_planned(recordings):
        """Each function captured into a new pool planned from `recordings`;
        the graphs and what each capture allocated."""
        pool = PlannedPool(recordings, device)
        if scratch is not None:
            pool.unplanned_stats = scratch.stats()
        graphs, seens = [], []
        pool.capture_on(stream)
        try:
            for k, fn in enumerate(fns):
                before_stats = pool.plan_stats()
                pool.start_plan(k)
                graph = torch.cuda.CUDAGraph()
                out, seen = capture(graph, fn, device)
                after = pool.plan_stats()
                g = PlannedGraph(
                    graph,
                    out,
                    pool,
                    k,
                    stream,
                    recorded=recordings[k].allocations,
                    captured=seen.allocations,
                    hits=after["planned_hits"] - before_stats["planned_hits"],
                    fell_back=after["fallbacks"] > before_stats["fallbacks"],
                )
                if not g.followed_plan:
                    g.first_difference = first_difference(recordings[k].entries(), seen.entries())
                graphs.append(g)
                seens.append(seen)
        finally:
            pool.stop_capture_on(stream)
        torch.cuda.synchronize()
        return graphs, seens

    graphs, seens = capture_planned(recordings)
    if retry and not all(g.followed_plan for g in graphs):
        # The captures are what a capture allocates: plan from them and
        # capture again; the first graphs and their pool are let go.
        first = graphs
        graphs, _ = capture_planned(seens)
        for g, old in zip(graphs, first):
            g.replanned, g.first_attempt = True, old.fallback_reason()
        first_pool = first[0].pool
        del first, old
        first_pool.release()  # its memory returns once its last block is freed
    del kept  # the recorded run's outputs, or the thrown-away graphs
    if scratch is not None:
        scratch.release()  # its memory returns once its last block is freed
    for g in graphs:
        if not g.followed_plan:
            warnings.warn(f"graphalloc: {g.fallback_reason()}", stacklevel=2)
    return graphs


def planned_graph(
    fn, *args, stream=None, warmup: int = 3, record: str = "eager", before=None, retry: bool = True, **kwargs
):
    """`fn(*args, **kwargs)` captured into a `torch.cuda.CUDAGraph` whose
    memory comes from a pool planned from a recorded run of the same work
    (see `planned_graphs`, which this calls with one function). Returns a
    `PlannedGraph`: call it to replay and get the output, or unpack it as
    `graph, output, pool`. `pool.plan_stats()` tells the lower bound
    (`peak_live_bytes`), the planned size and whether the capture followed
    the plan.

        step = ga.planned_graph(train_step, static_x, static_y)
        loss = step()                      # replays the graph
    """
    return planned_graphs(
        [lambda: fn(*args, **kwargs)], stream=stream, warmup=warmup, record=record, before=before,
        retry=retry,
    )[0]


def _routed_graph_class(torch, on_enter, on_exit):
    """A subclass of `torch.cuda.graph` that calls `on_enter(k, stream)`
    before the k-th capture begins and `on_exit(k, stream)` after it ends, and
    records each capture's allocations (the Recordings are returned in
    `cls.recordings`)."""
    base = torch.cuda.graph

    class Routed(base):
        # A capture stream of its own when make_graphed_callables names none
        # (older PyTorch): both passes then meet per-stream lazy set-up
        # (cuBLAS workspaces) in their first capture alike.
        default_capture_stream = None
        count = 0
        recordings = []

        streams = []  # each capture's stream handle

        def __enter__(self):
            k = Routed.count
            Routed.count += 1
            self._ga_k = k
            Routed.streams.append(_stream_handle(self.capture_stream))
            on_enter(k, self.capture_stream)
            try:
                super().__enter__()
            except BaseException:
                on_exit(k, self.capture_stream)
                raise
            self._ga_rec = Recording(self.capture_stream).__enter__()

        def __exit__(self, *exc):
            try:
                self._ga_rec.__exit__(*exc)
                Routed.recordings.append(self._ga_rec)
                return super().__exit__(*exc)
            finally:
                on_exit(self._ga_k, self.capture_stream)

    return Routed


def _with_graph_class(torch, cls, call):
    """Runs `call()` with `torch.cuda.graph` (the name make_graphed_callables
    uses) replaced by `cls`."""
    import torch.cuda.graphs as graphs_module

    saved = (torch.cuda.graph, graphs_module.graph)
    torch.cuda.graph = graphs_module.graph = cls
    try:
        return call()
    finally:
        torch.cuda.graph, graphs_module.graph = saved


def planned_graphed_callables(callables, sample_args, retry: bool = True, **kwargs):
    """`torch.cuda.make_graphed_callables(callables, sample_args, **kwargs)`
    with every graph it captures (forward and backward of each callable) in
    ONE planned pool. Returns `(graphed, pool)`: what make_graphed_callables
    returns, and the `PlannedPool` (keep it while the graphs are in use;
    `pool.plan_stats()` tells the lower bound, the planned size and whether
    the captures followed the plan; `pool.fallback_details` where captures
    left their plan, if any; `pool.unplanned_stats` the ordinary pool of the
    first run, for comparison; `pool.replanned` whether it took a retry).

    It runs make_graphed_callables twice: first into an ordinary graphalloc
    pool, recording each capture (the graphs are thrown away and the
    modules' `forward` put back as they were), then for real into a pool
    planned from those recordings, one plan per capture, in capture order.
    With `retry`, a run whose captures left their plan is followed by one
    more, planned from what those captures allocated."""
    import gc

    import torch

    _require_installed("planned_graphed_callables()")
    mods = callables if isinstance(callables, tuple) else (callables,)
    saved = [(m, m.__dict__.get("forward")) for m in mods if isinstance(m, torch.nn.Module)]

    def run(cls):
        return _with_graph_class(
            torch, cls, lambda: torch.cuda.make_graphed_callables(callables, sample_args, **kwargs)
        )

    def put_back():
        """Drops a run's graphs: make_graphed_callables set an instance
        `forward` on each module (the graphs are reached from it)."""
        for m, forward in saved:
            if forward is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = forward
        gc.collect()  # the graphs sit in reference cycles (autograd Function classes)
        torch.cuda.synchronize()

    def planned_run(source, unplanned):
        """A run into a pool planned from the captures of the run `source`."""
        held = []  # the pool, made at the first capture

        def enter(k, stream):
            if not held:
                # PyTorch captures each call on a new stream: the recordings'
                # stream becomes this one (the pool plans per stream).
                first, now = source.streams[0], _stream_handle(stream)
                if first != now:
                    for rec in source.recordings:
                        try:
                            rec.rename_stream(first, now)
                        except GraphallocError:  # the capture then grows the pool, and says so
                            pass
                held.append(PlannedPool(source.recordings))
                held[0].unplanned_stats = unplanned
            held[0].capture_on(stream)
            held[0].start_plan(k)

        cls = _routed_graph_class(torch, enter, lambda k, s: held and held[0].stop_capture_on(s))
        graphed = run(cls)
        pool = held[0]
        pool.replanned, pool.fallback_details = False, []
        if pool.plan_stats()["fallbacks"]:
            for k, (rec, seen) in enumerate(zip(source.recordings, cls.recordings)):
                diff = first_difference(rec.entries(), seen.entries())
                if diff:
                    pool.fallback_details.append(f"capture {k}: {diff}")
        return graphed, pool, cls

    scratch = GraphPool(torch.cuda.current_device())
    recording = _routed_graph_class(
        torch, lambda k, s: scratch.capture_on(s), lambda k, s: scratch.stop_capture_on(s)
    )
    try:
        run(recording)
        put_back()
        unplanned = scratch.stats()
        if not recording.recordings:
            raise GraphallocError("make_graphed_callables captured no graph")
        graphed, pool, captured = planned_run(recording, unplanned)
        if retry and pool.plan_stats()["fallbacks"]:
            first_pool, details = pool, pool.fallback_details
            del graphed
            put_back()
            graphed, pool, captured = planned_run(captured, unplanned)
            pool.replanned, pool.first_attempt = True, details
            first_pool.release()  # its memory returns once its last block is freed
    finally:
        scratch.release()
    stats = pool.plan_stats()
    if stats["fallbacks"]:
        warnings.warn(
            f"graphalloc: {stats['fallbacks']} of the {len(captured.recordings)} captures left their "
            f"plan ({stats['planned_hits']} of {stats['planned_allocations']} allocations planned)"
            + "".join(f"; {d}" for d in pool.fallback_details),
            stacklevel=2,
        )
    return graphed, pool
