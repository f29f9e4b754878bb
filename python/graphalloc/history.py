"""graphalloc's memory history and snapshots, from Python.

    import graphalloc
    graphalloc.record_history(100_000)         # keep the last 100,000 events
    with graphalloc.context("forward"):        # events carry this string
        ...
    graphalloc.dump_snapshot("snap.pickle")     # PyTorch's snapshot format
    graphalloc.write_trace("step.trace.gz")     # replay it: replay --compare ...

`dump_snapshot` writes what `torch.cuda.memory._dump_snapshot` writes (a
pickle with `segments`, `device_traces` and `allocator_settings`), so
PyTorch's memory viewer (https://pytorch.org/memory_viz) and
`torch.cuda._memory_viz` open it. `snapshot()` returns the same dict.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import tempfile
from typing import Iterator, Optional

from . import GraphallocError, _c_arg, _check, library

__all__ = [
    "record_history",
    "stop_history",
    "clear_history",
    "history_length",
    "set_context",
    "context",
    "snapshot",
    "dump_snapshot",
    "dump_html",
    "write_trace",
]

_SIGNATURES = {
    "graphalloc_history_start": (ctypes.c_int, [ctypes.c_size_t]),
    "graphalloc_history_stop": (ctypes.c_int, []),
    "graphalloc_history_clear": (ctypes.c_int, []),
    "graphalloc_history_len": (ctypes.c_int64, []),
    "graphalloc_history_set_backtraces": (ctypes.c_int, [ctypes.c_int]),
    "graphalloc_history_set_context": (ctypes.c_int, [ctypes.c_char_p]),
    "graphalloc_snapshot_pickle": (ctypes.c_int64, [ctypes.c_char_p]),
    "graphalloc_snapshot_html": (ctypes.c_int64, [ctypes.c_char_p]),
    "graphalloc_history_write_trace": (ctypes.c_int64, [ctypes.c_char_p]),
}


def _fn(name: str):
    """The library's function `name`, declared (a library too old to have
    it raises GraphallocError)."""
    lib = library()
    try:
        fn = getattr(lib, name)
    except AttributeError as e:
        raise GraphallocError(f"this libgraphalloc.so has no {name}: rebuild it") from e
    fn.restype, fn.argtypes = _SIGNATURES[name]
    return fn


def _path(path) -> bytes:
    """`path` for C. A NUL would cut it short there (another file written):
    ValueError, as Python's open() raises."""
    raw = os.fsencode(os.fspath(path))
    if b"\0" in raw:
        raise ValueError(f"embedded null byte in path {path!r}")
    return raw


def record_history(max_entries: int = 100_000, backtraces: bool = False) -> None:
    """Starts keeping the last `max_entries` allocator events (allocations,
    frees, segment and mapping changes, out-of-memory failures), as
    GRAPHALLOC_CONF=history:N does from the start. `backtraces` makes each
    event capture a Rust backtrace (slow). `max_entries=0` stops recording,
    like `torch.cuda.memory._record_memory_history(None)`."""
    if max_entries == 0:
        stop_history()
        return
    max_entries = _c_arg(max_entries, ctypes.c_size_t, "max_entries")
    _check(_fn("graphalloc_history_start")(max_entries) == 0, "record_history")
    _check(_fn("graphalloc_history_set_backtraces")(int(bool(backtraces))) == 0)


def stop_history() -> None:
    """Stops recording; the events kept stay in snapshots."""
    _check(_fn("graphalloc_history_stop")() == 0, "stop_history")


def clear_history() -> None:
    """Forgets the events kept."""
    _check(_fn("graphalloc_history_clear")() == 0, "clear_history")


def history_length() -> int:
    """The number of events kept."""
    n = _fn("graphalloc_history_len")()
    _check(n >= 0, "history_length")
    return int(n)


def set_context(text: Optional[str]) -> None:
    """Sets (None: clears) the calling thread's context string, which every
    event the thread causes carries (a frame named `text` in snapshots).
    A `text` with a NUL raises ValueError, one not a str TypeError."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"the context must be a str or None, not {type(text).__name__}")
    if text is not None and "\0" in text:
        raise ValueError(f"embedded null character in context {text!r}")
    raw = None if text is None else text.encode("utf-8")
    _check(_fn("graphalloc_history_set_context")(raw) == 0, "set_context")


@contextlib.contextmanager
def context(text: str) -> Iterator[None]:
    """`with context("forward"): ...` labels the events of the block (the
    thread's context is cleared afterwards)."""
    set_context(text)
    try:
        yield
    finally:
        set_context(None)


def dump_snapshot(path) -> int:
    """Writes a snapshot (every segment and block, plus the history) to
    `path` in PyTorch's memory snapshot pickle format; returns its size."""
    n = _fn("graphalloc_snapshot_pickle")(_path(path))
    _check(n >= 0, "dump_snapshot")
    return int(n)


def snapshot() -> dict:
    """The snapshot as the dict `torch.cuda.memory._snapshot()` returns."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "snapshot.pickle")
        dump_snapshot(path)
        with open(path, "rb") as f:
            return pickle.load(f)


def dump_html(path) -> int:
    """Writes graphalloc's own view of a snapshot (one HTML page: reserved
    and allocated bytes over the history, a map of the segments)."""
    n = _fn("graphalloc_snapshot_html")(_path(path))
    _check(n >= 0, "dump_html")
    return int(n)


def write_trace(path) -> int:
    """Writes the history's allocations and frees as a replay trace
    (gzip'd for a .gz path); returns the number of trace events. Replay it
    with `cargo run --release --example replay -- --compare
    expandable_segments:false expandable_segments:true -- PATH`."""
    n = _fn("graphalloc_history_write_trace")(_path(path))
    _check(n >= 0, "write_trace")
    return int(n)
