"""planned_graph / planned_graphs (graphalloc.torch) without a GPU and without
PyTorch: a stand-in `torch` module whose `torch.cuda.graph` puts the
capturing thread in graph mode on the pool registered for its stream (what a
real capture does through capture routing), on the host backend. The
functions under test allocate through the library, as PyTorch's allocator
calls would.
"""

from __future__ import annotations

import json
import textwrap

from test_graphalloc import run_py

# The stand-in torch and a fake tensor; `CAPTURING` holds the stream being
# captured (None outside a capture), to allocate on it, and to make a step
# that allocates differently in a capture.
FAKE_TORCH = """
import contextlib, json, sys, types, warnings
import graphalloc, graphalloc.torch as gt

lib = graphalloc.library()
gt._torch_allocator = object()  # as if use() had installed graphalloc
routes = {}
_capture_on, _stop = gt.GraphPool.capture_on, gt.GraphPool.stop_capture_on


def capture_on(self, stream):
    routes[gt._stream_handle(stream)] = self.id
    _capture_on(self, stream)


def stop_capture_on(self, stream):
    routes.pop(gt._stream_handle(stream), None)
    _stop(self, stream)


gt.GraphPool.capture_on, gt.GraphPool.stop_capture_on = capture_on, stop_capture_on
CAPTURING = [None]


class Stream:
    cuda_stream = 0

    def wait_stream(self, other):
        pass


class CUDAGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


class graph:
    def __init__(self, g, stream=None, pool=None, capture_error_mode="global"):
        self.capture_stream = stream

    def __enter__(self):
        assert lib.graphalloc_begin_graph_mode(routes[gt._stream_handle(self.capture_stream)]) == 0
        CAPTURING[0] = gt._stream_handle(self.capture_stream)

    def __exit__(self, *exc):
        CAPTURING[0] = None
        assert lib.graphalloc_end_graph_mode() == 0


cuda = types.SimpleNamespace(
    Stream=Stream,
    CUDAGraph=CUDAGraph,
    graph=graph,
    current_device=lambda: 0,
    current_stream=lambda: Stream(),
    synchronize=lambda: None,
    stream=lambda s: contextlib.nullcontext(),
)


def make_graphed_callables(module, sample_args):
    # PyTorch's shape: a forward capture, then a backward capture that frees
    # what the forward saved, into one pool; the module's forward replaced.
    assert "forward" not in module.__dict__, "forward was not put back"
    # A new stream for each call, as PyTorch makes (built-in handles 1, 2, 1...).
    stream, fwd, bwd = Stream(), CUDAGraph(), CUDAGraph()
    CALLS[0] += 1
    stream.cuda_stream = 2 - CALLS[0] % 2
    with cuda.graph(fwd, stream=stream):
        saved, tmp = T(8192), T(4096)
        del tmp
        out = T(1024)
    with cuda.graph(bwd, stream=stream):
        if getattr(module, "extra_in_call", 0) == CALLS[0]:
            extra = T(512)
            del extra
        grad, tmp = T(2048), T(8192)
        del tmp, saved
    module.forward = lambda *a: (fwd, bwd, out, grad)
    return module


class Module:
    pass


CALLS = [0]


cuda.make_graphed_callables = make_graphed_callables
cuda.graphs = types.SimpleNamespace(graph=graph)
torch = types.SimpleNamespace(cuda=cuda, nn=types.SimpleNamespace(Module=Module))
sys.modules.update({"torch": torch, "torch.cuda": cuda, "torch.cuda.graphs": cuda.graphs})


class T:
    def __init__(self, n):
        # on the capturing stream (0 outside a capture: eager runs)
        self.n, self.s = n, CAPTURING[0] or None  # handle 0 is None
        self.p = lib.graphalloc_malloc(n, 0, self.s)
        assert self.p

    def __del__(self):
        lib.graphalloc_free(self.p, self.n, 0, self.s)


def step(batch, extra_in_capture=False):
    a = T(batch * 4096)
    b = T(batch * 8192)
    del a
    if extra_in_capture and CAPTURING[0] is not None:
        scratch = T(1 << 20)
        del scratch
    c = T(batch * 2048)
    del b, c
    return T(4096)


def stats(g):
    s = g.plan_stats()
    s["reserved"] = g.pool.stats()["reserved_bytes"]
    return s
"""


def run(code: str) -> dict:
    out = run_py(FAKE_TORCH + textwrap.dedent(code), block_torch=False)
    return json.loads(out.strip().splitlines()[-1])


def test_planned_graph_follows_its_plan_in_both_record_modes():
    r = run(
        """
        result = {}
        for mode in ("eager", "capture"):
            calls = []
            g = gt.planned_graph(step, 64, warmup=2, record=mode, before=lambda: calls.append(1))
            graph, out, pool = g  # unpacks as the former (graph, output, pool)
            assert out is g() and graph.replays == 1
            result[mode] = dict(stats(g), calls=len(calls), followed=g.followed_plan,
                                reason=g.fallback_reason(), captured=g.captured_allocations,
                                recorded=g.recorded_allocations)
        print(json.dumps(result))
        """
    )
    for mode in ("eager", "capture"):
        s = r[mode]
        assert s["followed"] and s["reason"] is None, s
        assert (s["fallbacks"], s["fallback_allocations"]) == (0, 0), s
        assert s["captured"] == s["recorded"] == s["planned_hits"] == 4, s
        # a and b live together, then b and c; the output comes after them.
        assert s["peak_live_bytes"] == 64 * (4096 + 8192), s
        assert s["planned_bytes"] == s["reserved"] == s["peak_live_bytes"], s
        assert s["calls"] == 2 + 1 + 1, s  # warm-ups, the recording, the capture


def test_graphs_sharing_a_planned_pool_need_the_larger_peak():
    r = run(
        """
        gs = gt.planned_graphs([lambda: step(64), lambda: step(256)], warmup=1, record="capture")
        assert [g.index for g in gs] == [0, 1] and gs[0].pool is gs[1].pool
        print(json.dumps(dict(stats(gs[0]), followed=[g.followed_plan for g in gs])))
        """
    )
    assert r["followed"] == [True, True], r
    assert (r["plans"], r["planned_hits"], r["fallbacks"]) == (2, 8, 0), r
    larger = 256 * (4096 + 8192)
    # the larger peak, plus the other graph's output, which outlives its graph
    assert r["peak_live_bytes"] == larger + 4096, r
    assert r["planned_bytes"] == r["reserved"] == r["peak_live_bytes"], r


def test_a_capture_that_leaves_its_plan_warms_and_says_why():
    r = run(
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = gt.planned_graph(step, 64, extra_in_capture=True, warmup=1, retry=False)
        print(json.dumps(dict(stats(g), followed=g.followed_plan, reason=g.fallback_reason(),
                              warned=[str(w.message) for w in caught])))
        """
    )
    assert not r["followed"], r
    assert (r["planned_hits"], r["fallbacks"]) == (2, 1), r
    assert r["fallback_allocations"] == 3, r  # the extra block, c, the output
    assert "graph 0: the capture followed its plan for 2 of its 5 allocations" in r["reason"], r
    assert "allocation #2" in r["reason"], r
    assert r["reason"].endswith(
        "First difference: allocation #2: the capture asked for 1048576 B on stream 0x0, "
        "the recording had 131072 B on stream 0x0."
    ), r
    assert r["warned"] == ["graphalloc: " + r["reason"]], r
    assert r["reserved"] > r["planned_bytes"], r  # it grew, as an ordinary pool


def test_a_capture_that_left_its_plan_is_captured_again_from_a_plan_of_it():
    r = run(
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = gt.planned_graph(step, 64, extra_in_capture=True, warmup=1)
        print(json.dumps(dict(stats(g), followed=g.followed_plan, replanned=g.replanned,
                              first=g.first_attempt, warned=len(caught),
                              total=graphalloc.stats()["total"]["reserved_bytes"])))
        """
    )
    assert r["followed"] and r["replanned"] and r["warned"] == 0, r
    assert (r["planned_hits"], r["fallbacks"], r["planned_allocations"]) == (5, 0, 5), r
    assert "allocation #2" in r["first"], r
    # the extra 1 MiB block is planned: it and b live together at the peak
    assert r["peak_live_bytes"] == 64 * 8192 + (1 << 20), r
    assert r["planned_bytes"] == r["reserved"] == r["peak_live_bytes"], r


def test_recording_entries_and_first_difference():
    r = run(
        """
        rec = gt.Recording(Stream(), 0)
        with rec:
            keep, tmp = T(4096), T(1024)
            del tmp
        a = rec.entries()
        b = [dict(e) for e in a] + [dict(a[0])]
        print(json.dumps(dict(entries=a, same=gt.first_difference(a, a),
                              longer=gt.first_difference(a, b))))
        """
    )
    assert r["entries"] == [
        {"size": 4096, "stream": 0, "start": 0, "end": None},
        {"size": 1024, "stream": 0, "start": 1, "end": 2},
    ], r
    assert r["same"] is None
    assert r["longer"] == "allocation #2 (4096 B) is only in the capture"


def test_bad_arguments_raise():
    out = run_py(
        FAKE_TORCH
        + textwrap.dedent(
            """
        for call in (lambda: gt.planned_graphs([]), lambda: gt.planned_graph(step, 1, record="x"),
                     lambda: gt.planned_graph(step, 1, warmup=-1), lambda: gt.PlannedPool([])):
            try:
                call()
            except ValueError as e:
                print("ValueError:", e)
        rec = gt.Recording(0, 0)
        try:
            gt.PlannedPool([rec])
        except graphalloc.GraphallocError as e:
            print("GraphallocError:", e)
        """
        ),
        block_torch=False,
    )
    lines = out.strip().splitlines()
    assert len(lines) == 5, out
    assert lines[1] == "ValueError: record must be one of ('eager', 'capture'), not 'x'"
    assert lines[4] == "GraphallocError: recording 0 has not ended (leave its `with` block first)"


def test_planned_graphed_callables_plans_every_capture():
    r = run(
        """
        m = Module()
        graphed, pool = gt.planned_graphed_callables(m, (object(),))
        fwd, bwd, out, grad = graphed.forward()
        assert graphed is m and cuda.graph is graph and cuda.graphs.graph is graph  # put back
        print(json.dumps(dict(pool.plan_stats(), reserved=pool.stats()["reserved_bytes"],
                              unplanned=pool.unplanned_stats["peak_allocated_bytes"])))
        """
    )
    assert r["unplanned"] == r["peak_live_bytes"], r  # the same captures, in an ordinary pool
    assert (r["plans"], r["planned_allocations"], r["planned_hits"], r["fallbacks"]) == (2, 5, 5, 0), r
    # the backward's peak, with what the forward left live (saved, out)
    assert r["peak_live_bytes"] == 2048 + 8192 + 8192 + 1024, r
    assert r["planned_bytes"] == r["reserved"] <= 1.05 * r["peak_live_bytes"], r


def test_planned_graphed_callables_says_where_a_capture_differed():
    r = run(
        """
        m = Module()
        m.extra_in_call = 2  # the real run allocates one more block
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed, pool = gt.planned_graphed_callables(m, (object(),), retry=False)
        print(json.dumps(dict(pool.plan_stats(), details=pool.fallback_details,
                              warned=[str(w.message) for w in caught])))
        """
    )
    assert (r["planned_hits"], r["fallbacks"]) == (3, 1), r  # the forward followed its plan
    assert r["details"] == [
        "capture 1: allocation #0: the capture asked for 512 B on stream 0x2, "
        "the recording had 2048 B on stream 0x2"
    ], r
    assert len(r["warned"]) == 1 and r["details"][0] in r["warned"][0], r


def test_planned_graphed_callables_retries_from_the_real_captures():
    r = run(
        """
        m = Module()
        m.extra_in_call = 1  # only the recording run allocates the extra block
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed, pool = gt.planned_graphed_callables(m, (object(),))
        print(json.dumps(dict(pool.plan_stats(), replanned=pool.replanned, first=pool.first_attempt,
                              warned=len(caught), calls=CALLS[0])))
        """
    )
    assert r["calls"] == 3 and r["replanned"] and r["warned"] == 0, r
    assert (r["planned_hits"], r["fallbacks"], r["planned_allocations"]) == (5, 0, 5), r
    assert r["first"] == [
        "capture 1: allocation #0: the capture asked for 2048 B on stream 0x2, "
        "the recording had 512 B on stream 0x2"
    ], r
