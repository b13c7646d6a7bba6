"""Compiling the GPU tools' kernels side by side before they run (cells.triton_lstm.precompile), without a GPU.

Triton compiles for a named target without its device, so these tests stand in for a Hopper GPU (sm_90, 132 SMs):
the kernels' launches are planned as on the GPU, with tensors on the ``meta`` device (shapes and offsets, no data),
and compiled, never launched.  What they prove is the mechanism the probe and the tile search rely on: the kernels
collected from a piece of work and compiled in worker processes are exactly the ones a launch of that work then
looks up in Triton's cache (no cache entry is added by the "real" run).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import cells

triton = pytest.importorskip("triton", reason="the Triton cells need triton (a dependency on Linux)")

from cells.triton_lstm import launch, precompile  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a stand-in for a GPU; on one the tools run for real")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Triton's cache for this module's tests, so that they share one pool of workers (each takes seconds to start):
    two, the cores of the CI machines (the parent waits while they compile)."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("triton-cache")
    mp.setenv("TRITON_CACHE_DIR", str(cache))
    mp.setattr(precompile, "workers", lambda: 2)
    try:
        yield cache
    finally:
        precompile.shutdown()
        mp.undo()


@pytest.fixture
def hopper(cache_dir):
    """precompile.stand_in: an sm_90 GPU of 132 SMs for the launch path, where launches compile only.

    Yields the number of entries the test has added to Triton's cache, as a function."""
    before = len(os.listdir(cache_dir))
    with precompile.stand_in():
        yield lambda: len(os.listdir(cache_dir)) - before


def test_the_tile_search_compiles_its_candidates_before_timing_them(hopper):
    """tune._record runs the stack forward and backward once per tile with Triton's compilations recorded and
    skipped; precompile.Ahead compiles them in worker processes while the search goes on: two kernels a tile (both
    layers share them), one more where two tiles differ only in the backward's warps.  Once a tile's kernels are
    waited for, a forward and backward of it, with everything as a real launch has it, finds all of them in the
    cache."""
    from cells.triton_lstm import tune

    hidden = 24
    module = cells.build("triton_lstm", hidden, hidden, 2).to("meta")
    x = torch.empty(4, 3, hidden, device="meta", requires_grad=True)
    start = launch.Tile(units=8, block_j=8, block_k=16, num_warps=4, num_warps_bwd=4, num_stages=1)
    tiles = [start, dataclasses.replace(start, num_warps_bwd=8)]
    assert (hidden, torch.float32) not in launch.tiles("LSTM")
    compiling = precompile.Ahead()
    with launch.table_entry("LSTM", hidden, torch.float32) as put:
        assert [compiling.add(t, tune._record(module, x, put, t)) for t in tiles] == [2, 1]
        assert [len(compiling.needs[t]) for t in tiles] == [2, 2]  # (the forward's kernel is both tiles')
        for tile in tiles:
            compiling.wait(tile)
        assert compiling.line().startswith("compiled 3 kernels side by side") and "failed" not in compiling.line()
        entries = hopper()
        assert entries == 3
        for tile in tiles:
            put(tile)
            plan = launch.make_plan(3, hidden, torch.float32, torch.device("meta"))
            assert plan.path == "persistent" and plan.source == "table" and plan.num_warps_bwd == tile.num_warps_bwd
            module(x)[0].sum().backward()
        assert hopper() == entries  # every kernel came from the cache
    assert (hidden, torch.float32) not in launch.tiles("LSTM")


def test_compiling_ahead_waits_for_a_keys_own_kernels_and_drops_the_unwanted(monkeypatch):
    """precompile.Ahead, with a stand-in pool whose compilations finish when told: a key waits for its own kernels
    only; keep_only cancels the queued ones no kept key needs (a kernel shared with a kept key stays), and a cancelled
    kernel asked for again is submitted again; what ran is summed up in one line."""
    from concurrent.futures import Future

    class Pool:
        def __init__(self):
            self.submitted = []

        def submit(self, fn, spec):
            future = Future()
            self.submitted.append((spec, future))
            return future

    pool = Pool()
    monkeypatch.setattr(precompile, "_pool", lambda target, processes: pool)
    s1, s2, s3 = (precompile.Spec("lstm_fwd_kernel", str(i)) for i in range(3))
    ahead = precompile.Ahead(target={"backend": "cuda", "arch": 90, "warp_size": 32}, processes=2)
    assert ahead.add("a", [s1, s2]) == 2 and ahead.add("b", [s2, s3]) == 1 and ahead.pending() == 3
    pool.submitted[0][1].set_running_or_notify_cancel()  # s1 under way: it cannot be cancelled
    pool.submitted[0][1].set_result((1.5, None))
    pool.submitted[1][1].set_result((2.0, None))
    assert ahead.wait("a") < 1 and ahead.pending() == 1  # a's two, not b's third
    assert ahead.keep_only(["a"]) == 1 and ahead.futures[s3].cancelled()  # s3 was b's alone
    assert ahead.wait("b") < 1  # (a cancelled kernel is compiled by the launch itself)
    assert ahead.add("b", [s2, s3]) == 1 and len(pool.submitted) == 4  # asked for again: submitted again
    pool.submitted[3][1].set_result((0.5, "RuntimeError: no"))
    line = ahead.line()
    assert line.startswith("compiled 2 kernels side by side on 2 processes (4.0 s of compiling)"), line
    assert "1 cancelled unstarted" in line and "1 failed (lstm_fwd_kernel: RuntimeError: no)" in line
    assert precompile.Ahead(processes=1).line() is None  # nothing asked for


def test_a_broken_pool_is_tallied_not_raised(monkeypatch):
    """A pool that cannot take work (a worker died) submits nothing: compile_all reports each kernel as failed and
    returns, and the launches compile in-process as without precompiling."""
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def submit(self, fn, spec):
            raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(precompile, "_pool", lambda target, processes: Broken())
    specs = [precompile.Spec("lstm_fwd_kernel", str(i)) for i in (0, 1, 0)]
    summary = precompile.compile_all(specs, target={"backend": "cuda", "arch": 90, "warp_size": 32}, processes=2)
    assert (summary.kernels, summary.compiled, summary.compile_s) == (2, 0, 0.0)
    assert summary.failed == ["lstm_fwd_kernel: not submitted (BrokenProcessPool: a worker died)"] * 2
    assert summary.line().startswith("precompiled 0 of 2 kernels") and "2 failed" in summary.line()


def test_the_probe_compiles_its_variants_before_timing_them(hopper, monkeypatch):
    """The probe collects the kernels of every variant it will time, compiles them side by side, and its launches (the
    forward that makes the backward's inputs, then the timed ones) find them all in the cache; here one variant of a
    tiny layer (the kernels of the first forward are the same: collected once), with a stand-in timer."""
    from cells.triton_lstm import probe

    monkeypatch.setitem(probe.PRESETS, "tiny", (24, 3))
    monkeypatch.setattr(probe, "inputs", lambda hidden, steps, dtype, device, seed=0, gates=4: {
        name: torch.empty(*shape, dtype=dtype, device=device) for name, shape in {
            "xp": (steps, probe.BATCH, gates * hidden), "w_hh": (gates * hidden, hidden), "b_ih": (gates * hidden,),
            "b_hh": (gates * hidden,), "h0": (probe.BATCH, hidden), "c0": (probe.BATCH, hidden),
            "dy": (steps, probe.BATCH, hidden), "dhT": (probe.BATCH, hidden), "dcT": (probe.BATCH, hidden)}.items()})
    monkeypatch.setattr(probe, "_variants", lambda plan, dtype, *a: [("full", plan, 0)])
    timed, lines = [], []

    def timer(fn, reps, calls):
        fn()
        timed.append(1)
        return 1e-3

    recs = probe.probe("tiny", torch.float32, 1, device="meta", timer=timer, log=lines.append)
    assert [(r["kernel"], r["variant"]) for r in recs] == [("fwd", "full"), ("bwd", "full")]
    assert len(timed) == 2 and recs[0]["plan"]["path"] == "persistent"
    assert lines[0].startswith("precompiled 2 of 2 kernels") and "failed" not in lines[0], lines
    assert hopper() == 2  # the launches compiled nothing new


def test_nothing_is_collected_from_the_interpreter():
    """Interpreted kernels do not compile: collecting records nothing (and lets them run), compiling nothing is free."""
    from cells.triton_lstm.function import lstm_layer

    H = 8
    x, h0, c0 = torch.randn(2, 1, H), torch.zeros(1, H), torch.zeros(1, H)
    w_ih, w_hh, b = torch.randn(4 * H, H), torch.randn(4 * H, H), torch.zeros(4 * H)
    with precompile.collecting() as specs:
        y, _ = lstm_layer(x, h0, c0, w_ih, w_hh, b, b)
    assert specs == [] and torch.isfinite(y).all()
    summary = precompile.compile_all([])
    assert (summary.kernels, summary.compiled, summary.failed) == (0, 0, [])


def test_the_micro_benchmarks_compile_the_triton_cells_first(hopper):
    """bench's CUDA runs compile the kernels of every Triton cell, preset and pass about to be timed side by side
    first: the training forward and backward for the fwd, fwdbwd and step passes, the forward without grad at batch 1
    for latency (here 4 kernels: triton_lstm at the tiny preset, triton_gru's latency pass); a cell that compiles
    nothing of Triton's per shape (cudnn_lstm) adds nothing, and fewer than 4 kernels are left to compile in-line."""
    from bench import bench_cells

    meta, f32 = torch.device("meta"), torch.float32
    runs = [(p, "triton_lstm", "tiny") for p in ("fwd", "fwdbwd", "step", "latency")]
    line = bench_cells.precompile([("fwdbwd", "cudnn_lstm", "tiny"), ("latency", "triton_gru", "tiny"), *runs], meta,
                                  f32)
    assert line.startswith("precompiled 4 of 4 kernels") and "failed" not in line, line
    assert hopper() == 4
    assert bench_cells.precompile([("fwdbwd", "cudnn_lstm", "tiny")], meta, f32) is None
    assert bench_cells.precompile([("fwd", "triton_lstm", "small")], meta, f32) is None  # 2 kernels: in-line
    assert hopper() == 4


def test_a_kernel_that_fails_to_compile_is_counted_not_raised(cache_dir):
    """A specialization a worker cannot compile is reported in the summary (the real run compiles it again and
    raises there, as without precompiling); the others still compile."""
    summary = precompile.compile_all([precompile.Spec("lstm_fwd_kernel", "{not json")],
                                     target={"backend": "cuda", "arch": 90, "warp_size": 32})
    assert (summary.kernels, summary.compiled, len(summary.failed)) == (1, 0, 1)
    assert summary.failed[0].startswith("lstm_fwd_kernel: JSONDecodeError") and "1 failed" in summary.line()
