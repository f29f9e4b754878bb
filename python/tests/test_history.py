"""The memory history and snapshots from Python (host backend, no PyTorch)."""

from __future__ import annotations

import gzip
import pickle

from test_graphalloc import run_py


def test_history_snapshot_and_trace(tmp_path):
    snap, html, trace = tmp_path / "s.pickle", tmp_path / "s.html", tmp_path / "r.trace.gz"
    out = run_py(
        f"""
        import ctypes, graphalloc
        lib = graphalloc.library()
        assert graphalloc.history_length() == 0
        graphalloc.record_history(1000)
        with graphalloc.context("forward"):
            p = lib.graphalloc_malloc(3 << 20, 0, None)
            q = lib.graphalloc_malloc(1000, 0, None)
        lib.graphalloc_free(p, 3 << 20, 0, None)
        d = graphalloc.snapshot()
        assert set(d) >= {{"segments", "device_traces", "allocator_settings"}}
        actions = [e["action"] for e in d["device_traces"][0]]
        assert actions.count("alloc") == 2 and "free_requested" in actions, actions
        alloc = next(e for e in d["device_traces"][0] if e["action"] == "alloc")
        assert alloc["frames"][0]["name"] == "forward", alloc
        total = sum(s["total_size"] for s in d["segments"])
        assert total == graphalloc.stats()["total"]["reserved_bytes"]
        assert graphalloc.dump_snapshot({str(snap)!r}) > 0
        assert graphalloc.dump_html({str(html)!r}) > 0
        print(graphalloc.write_trace({str(trace)!r}))
        graphalloc.stop_history()
        n = graphalloc.history_length()
        lib.graphalloc_free(q, 1000, 0, None)
        assert graphalloc.history_length() == n
        graphalloc.clear_history()
        assert graphalloc.history_length() == 0
        """
    )
    assert out.strip() == "3"  # two allocations, one free
    with open(snap, "rb") as f:
        d = pickle.load(f)
    for seg in d["segments"]:
        assert sum(b["size"] for b in seg["blocks"]) == seg["total_size"]
    assert html.read_text().startswith("<!DOCTYPE html>")
    lines = [l for l in gzip.open(trace, "rt") if not l.startswith("#")]
    assert [l.split()[0] for l in lines] == ["a", "a", "f"]


def test_history_errors_are_exceptions():
    run_py(
        """
        import graphalloc
        try:
            graphalloc.record_history(1 << 40)
        except graphalloc.GraphallocError as e:
            assert "history" in str(e), e
        else:
            raise AssertionError("no error")
        try:
            graphalloc.dump_snapshot("/no/such/dir/s.pickle")
        except graphalloc.GraphallocError as e:
            assert "cannot write" in str(e), e
        else:
            raise AssertionError("no error")
        """
    )


def test_history_from_the_environment():
    out = run_py(
        """
        import graphalloc
        lib = graphalloc.library()
        for _ in range(10):
            lib.graphalloc_free(lib.graphalloc_malloc(4096, 0, None), 4096, 0, None)
        print(graphalloc.history_length())
        """,
        conf="backend:host,host_capacity:64MiB,history:5",
    )
    assert out.strip() == "5"
