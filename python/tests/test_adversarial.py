"""Adversarial calls of the graphalloc Python package (no GPU, no PyTorch):
arguments ctypes would silently wrap or truncate, strings C would cut at a
NUL, wrong argument types, functions of the raw library. Each must raise the
documented exception or give the documented answer, never act on another
device, pool or file than the one named.

Each scenario runs in a fresh interpreter on the host backend (run_py).
"""

from __future__ import annotations

import re
import textwrap

import pytest

import graphalloc
from test_graphalloc import HEADER, run_py

# Shared by the scenarios below: `error(f, *args)` returns the exception `f`
# raised (and fails if it returned).
RAISES = """
import ctypes, os, tempfile
import graphalloc, graphalloc.torch as gt

def error(f, *args):
    try:
        value = f(*args)
    except Exception as e:  # noqa: BLE001 - the type is what is checked
        return e
    raise AssertionError(f"{getattr(f, '__name__', f)}{args} returned {value!r}")
"""


def run_with_raises(body: str) -> str:
    """run_py of `body` after RAISES."""
    return run_py(RAISES + textwrap.dedent(body))


def test_out_of_range_ints_are_not_wrapped():
    # ctypes converts a Python int to a C int, uint64_t or size_t without a
    # range check: device 2**32 became device 0, pool id + 2**64 the pool,
    # a history of 2**64 + 5 events one of 5.
    out = run_with_raises(
        """
        gt._torch_allocator = object()  # as if use() had installed graphalloc
        lib = graphalloc.library()
        lib.graphalloc_set_log_errors(0)
        pool = lib.graphalloc_pool_create(0)
        assert pool, graphalloc.last_error()
        for f, arg in [
            (graphalloc.device_stats, 2**32),
            (graphalloc.device_stats, -(2**32)),
            (graphalloc.pool_stats, pool + 2**64),
            (graphalloc.record_history, 2**64 + 5),
            (gt.GraphPool, 2**32),
        ]:
            e = error(f, arg)
            assert isinstance(e, graphalloc.GraphallocError), (f, arg, e)
            assert str(arg) in str(e), (f, arg, e)
        assert graphalloc.history_length() == 0
        assert graphalloc.stats()["pools"]["allocations"] == 0
        p = gt.GraphPool(0)
        for stream in (2**64, -1):
            e = error(p.capture_on, stream)
            assert isinstance(e, graphalloc.GraphallocError), (stream, e)
        e = error(gt.Recording, 0, 2**32)
        assert isinstance(e, graphalloc.GraphallocError) and str(2**32) in str(e), e
        with gt.Recording(0, device=0) as rec:
            pass
        planned = gt.PlannedPool([rec])
        e = error(planned.start_plan, 2**64)
        assert isinstance(e, graphalloc.GraphallocError) and str(2**64) in str(e), e
        planned.release()
        p.release()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_embedded_nul_and_wrong_types():
    # A path or context with a NUL reached C cut short: dump_snapshot("x\\0y")
    # wrote the file "x". Python's own open() raises ValueError for that.
    out = run_with_raises(
        """
        d = tempfile.mkdtemp()
        for f in (graphalloc.dump_snapshot, graphalloc.dump_html, graphalloc.write_trace):
            e = error(f, os.path.join(d, "x\\0y"))
            assert isinstance(e, ValueError) and "null" in str(e), (f, e)
        assert os.listdir(d) == [], os.listdir(d)
        assert isinstance(error(graphalloc.set_context, "forward\\0backward"), ValueError)
        for bad in (b"forward", 3):
            e = error(graphalloc.set_context, bad)
            assert isinstance(e, TypeError), (bad, e)
        graphalloc.set_context("forward")
        graphalloc.set_context(None)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_raw_library_functions_are_declared_on_load():
    # graphalloc.library() is public (lib.graphalloc_malloc(...) is the
    # documented way to allocate without PyTorch): its history functions must
    # not keep ctypes' default int restype (a 64-bit count cut to 32 bits)
    # until the Python wrapper of each happens to run.
    out = run_py(
        """
        import ctypes, graphalloc
        lib = graphalloc.library()
        assert lib.graphalloc_history_len.restype is ctypes.c_int64
        assert lib.graphalloc_snapshot_pickle.restype is ctypes.c_int64
        assert lib.graphalloc_history_start.argtypes == [ctypes.c_size_t]
        # size_t, not int: 2**32 + 7 reaches the library whole (and is refused).
        assert lib.graphalloc_history_start(2**32 + 7) == -1
        assert "4294967303" in graphalloc.last_error(), graphalloc.last_error()
        assert lib.graphalloc_history_len() == 0
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_an_observer_that_retries_is_not_reentered():
    # "Free something and retry" in an out-of-memory observer: the retry
    # fails too, and reporting that failure to the observer again recursed:
    # here up to Python's recursion limit (a report per level for one failed
    # allocation), in a C observer until the stack overflowed.
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        lib.graphalloc_set_log_errors(0)
        reports = []

        def observer(report):
            reports.append(report["requested"])
            p = lib.graphalloc_malloc(report["requested"], 0, None)
            assert not p
            assert "out of memory" in graphalloc.last_error()

        graphalloc.on_out_of_memory(observer)
        held = lib.graphalloc_malloc(40 << 20, 0, None)
        assert held, graphalloc.last_error()
        assert not lib.graphalloc_malloc(30 << 20, 0, None)
        assert reports == [30 << 20], reports
        lib.graphalloc_free(held, 0, 0, None)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def header_fields(name: str) -> list:
    """The field names of struct `name` of include/graphalloc.h, in order
    (named `typedef struct name {` or anonymous `typedef struct { } name;`;
    arrays and pointers included)."""
    text = HEADER.read_text()
    body = re.search(r"typedef struct " + name + r" \{(.*?)\}", text, re.S) or re.search(
        r"typedef struct \{([^{}]*?)\} " + name + ";", text, re.S
    )
    assert body, f"{name} not found in {HEADER}"
    return re.findall(r"^\s*[\w ]+?[\s*]+(\w+)(?:\[\d+\])?;", body.group(1), re.M)


@pytest.mark.skipif(not HEADER.is_file(), reason="needs the source checkout's include/")
def test_the_other_structs_match_the_header():
    # test_graphalloc checks the statistics structs; these are read by
    # graphalloc.torch (plans, recordings) and by the out-of-memory observer.
    import ctypes

    for name, struct in [
        ("GraphallocPlanStats", graphalloc._PlanStats),
        ("GraphallocRecordedAlloc", graphalloc._RecordedAlloc),
        ("GraphallocOomReport", graphalloc._OomReport),
    ]:
        assert header_fields(name) == [f for f, _ in struct._fields_], name
    assert ctypes.sizeof(graphalloc._OomReport) == 2 * 4 + 11 * 8 + 2 * 4 * 8 + 8


def test_a_device_without_index_is_the_current_device():
    # torch.device("cuda") (no index) is the current device, as everywhere
    # in PyTorch; GraphPool made its pool on device 0 instead (on rank 1 of
    # a multi-GPU job the captures then missed the pool), and Recording and
    # PlannedPool raised TypeError for any torch.device.
    out = run_py(
        """
        import sys, types

        class Device:  # torch.device's index: None for plain "cuda"
            def __init__(self, index):
                self.type, self.index = "cuda", index

        torch = types.ModuleType("torch")
        torch.cuda = types.SimpleNamespace(current_device=lambda: 1)
        sys.modules["torch"] = torch
        import graphalloc.torch as gt
        gt._torch_allocator = object()  # as if use() had installed graphalloc
        assert gt.GraphPool(Device(None)).device == 1
        assert gt.GraphPool(Device(0)).device == 0
        assert gt.GraphPool().device == 1
        assert gt.Recording(0, Device(None)).device == 1
        with gt.Recording(0, Device(0)) as rec:
            pass
        assert rec.device == 0
        assert gt.PlannedPool([rec], Device(None)).device == 1
        assert gt.PlannedPool([rec]).device == 0
        print("ok")
        """,
        conf="backend:host,host_devices:2,host_capacity:64MiB",
        block_torch=False,
    )
    assert out.strip() == "ok"


def header_prototypes() -> dict:
    """{function name: (return type, [argument types])} of every function
    include/graphalloc.h declares, types as written there."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    found = {}
    for ret, name, args in re.findall(r"^([\w ]+?[\s*]+)(graphalloc_\w+)\(([^)]*)\);", text, re.M | re.S):
        params = [] if args.strip() == "void" else [a.strip() for a in args.split(",")]
        # "const uint64_t *recordings" -> "const uint64_t *"
        types = [re.sub(r"\s*\b\w+$", "", p).replace(" *", "*").strip() for p in params]
        found[name] = (ret.replace(" *", "*").strip(), types)
    return found


@pytest.mark.skipif(not HEADER.is_file(), reason="needs the source checkout's include/")
def test_every_function_is_declared_as_the_header_says():
    # A function left undeclared, or declared with a narrower type than the
    # header's, truncates 64-bit values (pointers, sizes, ids) on the way.
    import ctypes

    c_types = {
        "void": None,
        "int": ctypes.c_int,
        "uint32_t": ctypes.c_uint32,
        "int64_t": ctypes.c_int64,
        "uint64_t": ctypes.c_uint64,
        "size_t": ctypes.c_size_t,
        "ssize_t": ctypes.c_ssize_t,
        "void*": ctypes.c_void_p,
        "cudaStream_t": ctypes.c_void_p,
        "const char*": ctypes.c_char_p,
        "GraphallocOomObserver": graphalloc._OOM_OBSERVER,
    }
    lib = graphalloc.library()
    prototypes = header_prototypes()
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    assert set(prototypes) == set(re.findall(r"\b(graphalloc_\w+)\(", text)), prototypes
    wrong = []
    for name, (ret, args) in prototypes.items():
        fn = getattr(lib, name)
        got = [fn.restype] + list(fn.argtypes or [])
        for c_type, kind in zip([ret] + args, got):
            if c_type.endswith("*") and c_type not in c_types:
                # a pointer to a struct (or an array of uint64_t)
                ok = kind is not None and issubclass(kind, ctypes._Pointer)
            else:
                ok = kind is c_types[c_type]
            if not ok:
                wrong.append(f"{name}: {c_type} declared as {kind}")
        if fn.argtypes is None or len(fn.argtypes) != len(args):
            wrong.append(f"{name}: {len(args)} arguments, declared {fn.argtypes}")
    assert not wrong, wrong
