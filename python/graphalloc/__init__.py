"""graphalloc: a CUDA caching allocator with graph memory pools, from Python.

    import graphalloc
    lib = graphalloc.library()          # the libgraphalloc.so shipped in this package
    print(graphalloc.stats()["total"]["reserved_bytes"])

This package needs no PyTorch; `graphalloc.torch` plugs the library into
PyTorch (`graphalloc.torch.use()`). The library is configured by the
GRAPHALLOC_CONF environment variable (e.g. "backend:host" or
"memory_fraction:0.9"), read when it first builds its allocator.

Every failure is a Python exception: `GraphallocError` with the library's
own reason (unknown device, unknown pool, malformed GRAPHALLOC_CONF...),
`AbiVersionError` for a library of another C ABI version, and
`LibraryNotFoundError` when no library is found.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable, Optional

__all__ = [
    "ABI_VERSION",
    "POOL_STATS_FIELDS",
    "MAPPING_STATS_FIELDS",
    "GraphallocError",
    "AbiVersionError",
    "LibraryNotFoundError",
    "find_library",
    "library",
    "library_path",
    "last_error",
    "device_count",
    "stats",
    "device_stats",
    "pool_stats",
    "mapping_stats",
    "reset_peak_stats",
    "empty_cache",
    "on_out_of_memory",
]

LIB_NAME = "libgraphalloc.so"
# Must equal GRAPHALLOC_ABI_VERSION of include/graphalloc.h (checked by the tests).
ABI_VERSION = 2

# The fields of GraphallocPoolStats, in order (checked against the header by the tests).
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


class AbiVersionError(GraphallocError):
    """The library found has another C ABI version than this package expects."""


class LibraryNotFoundError(GraphallocError, FileNotFoundError):
    """No libgraphalloc.so where this package looked."""


class _PoolStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in POOL_STATS_FIELDS]

    def to_dict(self) -> dict:
        return {name: int(getattr(self, name)) for name in POOL_STATS_FIELDS}


# The fields of GraphallocMappingStats, in order (checked against the header by the tests).
MAPPING_STATS_FIELDS = (
    "maps",
    "unmaps",
    "map_ns",
    "unmap_ns",
    "mapped_bytes",
    "unmapped_bytes",
    "waits",
    "wait_ns",
    "fences",
    "deferred_unmaps",
)


class _MappingStats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in MAPPING_STATS_FIELDS]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("caching", _PoolStats),
        ("pools", _PoolStats),
        ("total", _PoolStats),
        ("in_graph_mode", ctypes.c_int32),
        ("device_count", ctypes.c_int32),
    ]


# The fields of GraphallocPlanStats (planned graph pools), in order.
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


# The fields of GraphallocRecordedAlloc, in order.
RECORDED_ALLOC_FIELDS = ("size", "stream", "start", "end")


class _RecordedAlloc(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in RECORDED_ALLOC_FIELDS]


# GraphallocOomReport (out-of-memory reports), in order.
_OOM_LIVE = 4
_OOM_OWNERS = ("cache", "graph_pool", "new_planned_pool")


class _OomReport(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_int32),
        ("owner", ctypes.c_int32),
        *[
            (name, ctypes.c_uint64)
            for name in (
                "pool",
                "requested",
                "device_free",
                "device_total",
                "limit",
                "reserved",
                "allocated",
                "cache_idle",
                "pool_idle",
                "largest_free_block",
                "largest_live_count",
            )
        ],
        ("largest_live_addr", ctypes.c_uint64 * _OOM_LIVE),
        ("largest_live_size", ctypes.c_uint64 * _OOM_LIVE),
        ("message", ctypes.c_char_p),
    ]

    def to_dict(self) -> dict:
        n = min(int(self.largest_live_count), _OOM_LIVE)
        report = {
            name: int(getattr(self, name))
            for name, _ in self._fields_
            if name not in ("owner", "largest_live_addr", "largest_live_size", "message")
        }
        report["owner"] = _OOM_OWNERS[self.owner] if 0 <= self.owner < 3 else str(self.owner)
        report["largest_live"] = [
            (int(self.largest_live_addr[i]), int(self.largest_live_size[i])) for i in range(n)
        ]
        report["message"] = (self.message or b"").decode("utf-8", "replace")
        return report


_OOM_OBSERVER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_OomReport), ctypes.c_void_p)
# Every observer ever set stays referenced: a failure being reported on
# another thread while one is replaced may still call it.
_oom_observers: list = []


_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def find_library(path: Optional[str] = None) -> str:
    """The path of libgraphalloc.so: `path` if given (a file or a folder),
    else $GRAPHALLOC_LIB, else the library shipped in this package, else
    target/release/ of the source checkout this package sits in, else
    ./target/release/."""
    here = Path(__file__).resolve().parent
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("GRAPHALLOC_LIB"):
        candidates.append(Path(os.environ["GRAPHALLOC_LIB"]))
    else:
        candidates += [
            here / LIB_NAME,
            here.parent.parent / "target" / "release" / LIB_NAME,
            Path.cwd() / "target" / "release" / LIB_NAME,
        ]
    for candidate in candidates:
        if candidate.is_dir():
            candidate = candidate / LIB_NAME
        if candidate.is_file():
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates)
    raise LibraryNotFoundError(
        f"{LIB_NAME} not found (tried {tried}); install the graphalloc wheel "
        "(`pip install .` in a checkout), build it with `cargo build --release`, "
        "or set GRAPHALLOC_LIB"
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
        "graphalloc_mapping_stats": (c_int, [ctypes.POINTER(_MappingStats)]),
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
        "graphalloc_plan_record_rename_stream": (c_i64, [c_u64, c_vp, c_vp]),
        "graphalloc_plan_record_allocations": (
            c_i64,
            [c_u64, ctypes.POINTER(_RecordedAlloc), ctypes.c_size_t],
        ),
        "graphalloc_plan_pool_create": (c_u64, [c_int, ctypes.POINTER(c_u64), ctypes.c_size_t]),
        "graphalloc_plan_start": (c_int, [c_u64, ctypes.c_size_t]),
        "graphalloc_plan_stats": (c_int, [c_u64, ctypes.POINTER(_PlanStats)]),
        "graphalloc_set_oom_observer": (c_int, [_OOM_OBSERVER, c_vp]),
    }
    # The history's functions too (a library without them is told apart
    # when they are called: history._fn), so that a raw call through
    # library() never runs with ctypes' default int restype.
    from .history import _SIGNATURES as history

    signatures.update({name: sig for name, sig in history.items() if hasattr(lib, name)})
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _load(resolved: str) -> ctypes.CDLL:
    """Opens `resolved`, checks its ABI version, declares the functions."""
    try:
        lib = ctypes.CDLL(resolved)
        version_fn = lib.graphalloc_abi_version
    except (OSError, AttributeError) as e:
        raise GraphallocError(f"{resolved} is not a usable graphalloc library: {e}") from e
    version_fn.restype, version_fn.argtypes = ctypes.c_uint32, []
    version = int(version_fn())
    if version != ABI_VERSION:
        raise AbiVersionError(
            f"{resolved} has C ABI version {version}; this graphalloc package expects "
            f"{ABI_VERSION}: install the package and the library from the same build"
        )
    try:
        _declare(lib)
    except AttributeError as e:
        raise AbiVersionError(f"{resolved} lacks a function of ABI {ABI_VERSION}: {e}") from e
    return lib


def library(path: Optional[str] = None) -> ctypes.CDLL:
    """The loaded library (loading it on first call, see `find_library`).
    Once PyTorch uses it, this is the same copy PyTorch calls, so the
    statistics agree. Raises `AbiVersionError` for a library of another C
    ABI version, `LibraryNotFoundError` when there is none."""
    global _lib, _lib_path
    if _lib is not None:
        if path is not None and find_library(path) != _lib_path:
            raise GraphallocError(f"graphalloc is already loaded from {_lib_path}")
        return _lib
    resolved = find_library(path)
    _lib, _lib_path = _load(resolved), resolved
    return _lib


def library_path() -> str:
    """The path of the loaded library (loading it if needed)."""
    library()
    assert _lib_path is not None
    return _lib_path


def last_error() -> str:
    """The calling thread's last graphalloc error ('' if its last call succeeded)."""
    raw = library().graphalloc_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def _c_arg(value, ctype, what: str) -> int:
    """`value` as an int for a C argument of type `ctype`. ctypes converts
    without a range check (device 2**32 would become device 0, a pool id
    plus 2**64 that pool): a value out of the type's range raises
    GraphallocError naming it, as an unknown device or pool does."""
    n = int(value)
    bits = 8 * ctypes.sizeof(ctype)
    low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if ctype(-1).value == -1 else (0, 1 << bits)
    if not low <= n < high:
        raise GraphallocError(f"{what} {n} is out of range ({low} to {high - 1})")
    return n


def _check(ok: bool, what: str = "graphalloc call") -> None:
    if not ok:
        raise GraphallocError(last_error() or f"{what} failed")


def device_count() -> int:
    """Number of devices the allocator manages (builds it if needed)."""
    n = int(library().graphalloc_device_count())
    _check(n >= 0, "graphalloc_device_count")
    return n


def stats() -> dict:
    """graphalloc's statistics: {'caching': {...}, 'pools': {...}, 'total':
    {...}, 'in_graph_mode': bool, 'device_count': int}; each inner dict has
    the fields of POOL_STATS_FIELDS (bytes and counts)."""
    out = _Stats()
    _check(library().graphalloc_stats(ctypes.byref(out)) == 0, "graphalloc_stats")
    return {
        "caching": out.caching.to_dict(),
        "pools": out.pools.to_dict(),
        "total": out.total.to_dict(),
        "in_graph_mode": bool(out.in_graph_mode),
        "device_count": int(out.device_count),
    }


def device_stats(device: int) -> dict:
    """Statistics of one device's caching allocator (graph pools excluded).
    An unknown device raises GraphallocError naming it."""
    out = _PoolStats()
    device = _c_arg(device, ctypes.c_int, "device")
    _check(library().graphalloc_device_stats(device, ctypes.byref(out)) == 0)
    return out.to_dict()


def pool_stats(pool: int) -> dict:
    """Statistics of graph pool `pool` (an id); an unknown id raises."""
    out = _PoolStats()
    pool = _c_arg(pool, ctypes.c_uint64, "graph pool")
    _check(library().graphalloc_pool_stats(pool, ctypes.byref(out)) == 0)
    return out.to_dict()


def mapping_stats() -> dict:
    """The mapping calls of expandable segments since the allocator was
    built, all devices summed: a dict of MAPPING_STATS_FIELDS. `maps`/`unmaps`
    and `map_ns`/`unmap_ns`: the calls and the time in them; `waits`/`wait_ns`:
    waits for a stream's work before unmapping (only under real pressure: the
    limit, a full device, empty_cache); `fences`: events recorded instead by
    reclaims for the idle budget, which never wait; `deferred_unmaps`: idle runs
    those left mapped for a later attempt."""
    out = _MappingStats()
    _check(library().graphalloc_mapping_stats(ctypes.byref(out)) == 0, "graphalloc_mapping_stats")
    return {name: int(getattr(out, name)) for name in MAPPING_STATS_FIELDS}


def reset_peak_stats() -> None:
    """Restarts the caching allocators' peaks from now."""
    _check(library().graphalloc_reset_peak_stats() == 0)


def empty_cache() -> int:
    """Returns the cached, unused memory of the caching allocators to the
    device (graph pools keep theirs); returns the bytes released."""
    released = library().graphalloc_empty_cache()
    _check(released >= 0)
    return int(released)


def on_out_of_memory(observer: Optional[Callable[[dict], None]]) -> None:
    """Calls `observer(report)` once per failed allocation of the library
    (any thread; PyTorch's included), before the failing call returns;
    replaces the observer set before, `None` clears it. `report` is a dict:
    device, owner ('cache', 'graph_pool', 'new_planned_pool'), pool,
    requested, device_free, device_total, limit, reserved, allocated,
    cache_idle, pool_idle, largest_free_block, largest_live [(address,
    size), ...] and message (the whole error text, with what to try). The
    observer may call any graphalloc function (no lock is held; a failure
    of an allocation it makes itself is not reported to it again); an
    exception it raises is printed and ignored."""
    lib = library()
    if observer is None:
        null = _OOM_OBSERVER()  # a null function pointer
        _check(lib.graphalloc_set_oom_observer(null, None) == 0, "graphalloc_set_oom_observer")
        return

    def trampoline(report, _user_data):
        observer(report.contents.to_dict())

    callback = _OOM_OBSERVER(trampoline)
    _oom_observers.append(callback)
    _check(lib.graphalloc_set_oom_observer(callback, None) == 0, "graphalloc_set_oom_observer")

# The memory history and snapshots (imported last: the module uses the above).
from . import history as _history  # noqa: E402
from .history import *  # noqa: E402,F401,F403

__all__ += _history.__all__
