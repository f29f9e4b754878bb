"""Tests of the graphalloc Python package that need no GPU and no PyTorch.

Each scenario runs in a fresh interpreter (the library builds its allocator
once per process, from GRAPHALLOC_CONF), on the host backend.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import graphalloc

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "include" / "graphalloc.h"
HOST = "backend:host,host_capacity:64MiB"


def run_py(code: str, conf: str = HOST, lib: str | None = None, block_torch: bool = True) -> str:
    """Runs `code` in a fresh interpreter; returns its stdout; fails the test
    (with stderr) if it exits non-zero. With `block_torch`, `import torch`
    raises ImportError there, as on a machine without PyTorch."""
    env = dict(os.environ, GRAPHALLOC_CONF=conf)
    env.pop("GRAPHALLOC_LIB", None)
    if lib is not None:
        env["GRAPHALLOC_LIB"] = lib
    prelude = "import sys\nsys.modules['torch'] = None\n" if block_torch else ""
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_import_and_load_without_torch():
    out = run_py(
        """
        import graphalloc, graphalloc.torch
        lib = graphalloc.library()
        assert lib.graphalloc_abi_version() == graphalloc.ABI_VERSION
        print(graphalloc.device_count(), graphalloc.library_path())
        """
    )
    count, path = out.split()
    assert count == "1"
    assert path.endswith("libgraphalloc.so")


def test_installed_package_ships_the_library():
    package = Path(graphalloc.__file__).resolve().parent
    if package == REPO / "python" / "graphalloc":
        pytest.skip("graphalloc imported from the source tree, not an installed wheel")
    shipped = package / graphalloc.LIB_NAME
    assert shipped.is_file(), f"the installed package has no {shipped.name}"
    out = run_py("import graphalloc; print(graphalloc.find_library())")
    assert out.strip() == str(shipped)


def header_struct_fields(name: str) -> list:
    text = HEADER.read_text()
    body = re.search(r"typedef struct " + name + r" \{(.*?)\}", text, re.S)
    assert body, f"{name} not found in {HEADER}"
    return re.findall(r"^\s*\w+\s+(\w+);", body.group(1), re.M)


@pytest.mark.skipif(not HEADER.is_file(), reason="needs the source checkout's include/")
def test_abi_and_structs_match_the_header():
    version = re.search(r"#define GRAPHALLOC_ABI_VERSION (\d+)", HEADER.read_text())
    assert int(version.group(1)) == graphalloc.ABI_VERSION
    assert header_struct_fields("GraphallocPoolStats") == list(graphalloc.POOL_STATS_FIELDS)
    stats_fields = [name for name, _ in graphalloc._Stats._fields_]
    assert header_struct_fields("GraphallocStats") == stats_fields
    assert header_struct_fields("GraphallocMappingStats") == list(graphalloc.MAPPING_STATS_FIELDS)


def test_other_abi_version_is_refused():
    out = run_py(
        """
        import graphalloc
        graphalloc.ABI_VERSION += 1  # as if the library were of another build
        try:
            graphalloc.library()
        except graphalloc.AbiVersionError as e:
            print("refused:", e)
        assert graphalloc._lib is None
        """
    )
    expected = f"has C ABI version {graphalloc.ABI_VERSION}; this graphalloc package expects"
    assert out.startswith("refused:") and expected in out


def test_missing_and_unusable_library(tmp_path):
    out = run_py(
        """
        import graphalloc
        try:
            graphalloc.library()
        except FileNotFoundError as e:
            assert isinstance(e, graphalloc.LibraryNotFoundError)
            print(e)
        """,
        lib=str(tmp_path / "nowhere.so"),
    )
    assert "libgraphalloc.so not found" in out and "nowhere.so" in out
    bogus = tmp_path / "libgraphalloc.so"
    bogus.write_text("not a shared library")
    out = run_py(
        """
        import graphalloc
        try:
            graphalloc.library()
        except graphalloc.GraphallocError as e:
            print(e)
        """,
        lib=str(tmp_path),
    )
    assert "is not a usable graphalloc library" in out


def test_stats_follow_allocations_on_the_host_backend():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        p = lib.graphalloc_malloc(1 << 20, 0, None)
        assert p, graphalloc.last_error()
        s = graphalloc.stats()
        assert set(s) == {"caching", "pools", "total", "in_graph_mode", "device_count"}
        assert s["total"]["allocated_bytes"] == 1 << 20, s
        assert s["total"]["requested_bytes"] == 1 << 20, s
        assert s["total"]["live_blocks"] == 1 and s["total"]["allocations"] == 1, s
        assert s["total"]["reserved_bytes"] >= 1 << 20, s
        assert s["in_graph_mode"] is False and s["device_count"] == 1
        assert graphalloc.device_stats(0) == s["caching"]
        lib.graphalloc_free(p, 1 << 20, 0, None)
        assert graphalloc.last_error() == ""
        s = graphalloc.stats()["total"]
        assert s["allocated_bytes"] == 0 and s["frees"] == 1, s
        assert s["peak_allocated_bytes"] == 1 << 20, s
        graphalloc.reset_peak_stats()
        assert graphalloc.stats()["total"]["peak_allocated_bytes"] == 0
        released = graphalloc.empty_cache()
        assert released >= 1 << 20, released
        assert graphalloc.stats()["total"]["reserved_bytes"] == 0
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_mapping_stats_count_the_calls_of_expandable_segments():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        m = graphalloc.mapping_stats()
        assert set(m) == set(graphalloc.MAPPING_STATS_FIELDS), m
        p = lib.graphalloc_malloc(12 << 20, 0, None)
        assert p, graphalloc.last_error()
        lib.graphalloc_free(p, 12 << 20, 0, None)
        graphalloc.empty_cache()
        m = graphalloc.mapping_stats()
        assert m["maps"] >= 1 and m["unmaps"] >= 1, m
        assert m["mapped_bytes"] == m["unmapped_bytes"] >= 12 << 20, m
        assert m["waits"] == 0, m  # nothing queued on the host backend
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_graph_pool_stats_through_the_library():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        pool = lib.graphalloc_pool_create(0)
        assert pool != 0, graphalloc.last_error()
        assert lib.graphalloc_begin_graph_mode(pool) == 0
        assert graphalloc.stats()["in_graph_mode"] is True
        p = lib.graphalloc_malloc(4096, 0, None)
        assert lib.graphalloc_end_graph_mode() == 0
        assert graphalloc.pool_stats(pool)["live_blocks"] == 1
        assert graphalloc.stats()["pools"]["allocated_bytes"] == 4096
        assert graphalloc.stats()["caching"]["allocated_bytes"] == 0
        lib.graphalloc_free(p, 4096, 0, None)
        assert lib.graphalloc_pool_release(pool) == 0
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_bad_input_raises_naming_the_problem():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        lib.graphalloc_set_log_errors(0)
        def error(f, *args):
            try:
                f(*args)
            except graphalloc.GraphallocError as e:
                return str(e)
            raise AssertionError(f"{f.__name__}{args} did not raise")
        print("device:", error(graphalloc.device_stats, 3))
        print("pool:", error(graphalloc.pool_stats, 12345))
        assert not lib.graphalloc_malloc(1 << 20, 7, None)
        print("malloc device:", graphalloc.last_error())
        assert not lib.graphalloc_malloc(1 << 40, 0, None)  # beyond host_capacity: NULL, no abort
        print("oom:", graphalloc.last_error())
        """
    )
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert "device 3" in lines["device"]
    assert "12345" in lines["pool"]
    assert "device 7" in lines["malloc device"]
    assert lines["oom"] != ""


def test_malformed_configuration_raises_naming_the_key():
    out = run_py(
        """
        import graphalloc
        try:
            graphalloc.stats()
        except graphalloc.GraphallocError as e:
            print(e)
        """,
        conf="backend:host,bogus_key:1",
    )
    assert "bogus_key" in out


def test_configuration_reaches_the_library():
    out = run_py(
        """
        import graphalloc
        print(graphalloc.device_count(), graphalloc.stats()["device_count"])
        graphalloc.device_stats(1)
        try:
            graphalloc.device_stats(2)
        except graphalloc.GraphallocError as e:
            print(e)
        """,
        conf="backend:host,host_devices:2",
    )
    first, error = out.strip().splitlines()
    assert first == "2 2"
    assert "device 2" in error


def test_torch_calls_before_use_raise():
    out = run_py(
        """
        import graphalloc.torch as gt
        assert not gt.is_installed()
        for call in (lambda: gt.GraphPool(0), gt.memory_stats, gt.release_capture_pools):
            try:
                call()
            except gt.NotInstalledError as e:
                print(e)
        try:
            gt.use()
        except ImportError as e:  # PyTorch is not installed (blocked here)
            print("no torch:", e)
        assert gt.stats()["device_count"] == 1  # the torch-free calls still work
        """
    )
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    assert all("call graphalloc.torch.use() first" in line for line in lines[:3])
    assert lines[0].startswith("GraphPool needs")
    assert lines[3].startswith("no torch:")


def test_torch_graph_pool_on_the_host_backend():
    # GraphPool's library calls, with use() simulated (no PyTorch here).
    out = run_py(
        """
        import graphalloc, graphalloc.torch as gt
        gt._torch_allocator = object()  # as if use() had installed graphalloc
        lib = graphalloc.library()
        pool = gt.GraphPool(0)
        with pool:
            assert graphalloc.stats()["in_graph_mode"] is True
            p = lib.graphalloc_malloc(8192, 0, None)
        assert graphalloc.stats()["in_graph_mode"] is False
        assert pool.stats()["allocated_bytes"] == 8192, pool.stats()
        try:
            pool.reset()  # a block is live
        except graphalloc.GraphallocError as e:
            print("reset:", e)
        lib.graphalloc_free(p, 8192, 0, None)
        pool.reset()
        pool.release()
        try:
            gt.GraphPool(4)
        except graphalloc.GraphallocError as e:
            print("device:", e)
        """
    )
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["reset"] != ""
    assert "device 4" in lines["device"]


def test_out_of_memory_observer_is_called_once_per_failure():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        reports, inner = [], []

        def observer(report):
            reports.append(report)
            # No lock is held: the library may be called from here.
            inner.append(graphalloc.stats()["total"])
            p = lib.graphalloc_malloc(4096, 0, None)
            assert p, graphalloc.last_error()
            lib.graphalloc_free(p, 4096, 0, None)

        graphalloc.on_out_of_memory(observer)
        big = lib.graphalloc_malloc(40 << 20, 0, None)
        assert big, graphalloc.last_error()
        for _ in range(3):
            assert not lib.graphalloc_malloc(40 << 20, 0, None)
        assert len(reports) == 3, reports
        r = reports[0]
        s = inner[0]
        assert r["owner"] == "cache" and r["device"] == 0 and r["requested"] == 40 << 20, r
        assert r["device_total"] == 64 << 20, r
        assert r["allocated"] == s["allocated_bytes"] == 40 << 20, (r, s)
        assert r["reserved"] == s["reserved_bytes"], (r, s)
        assert r["largest_live"] == [(big, 40 << 20)], r
        assert "try:" in r["message"] and "largest live blocks" in r["message"], r
        graphalloc.on_out_of_memory(None)
        assert not lib.graphalloc_malloc(40 << 20, 0, None)
        assert len(reports) == 3
        lib.graphalloc_free(big, 0, 0, None)
        print("ok")
        """
    )
    assert out.strip() == "ok"
