"""bench/bench_cells.py's plumbing that a CPU can check: what the CUDA-graph pass times and records."""

from __future__ import annotations

import types

import torch

from bench import bench_cells, flops


class FakeBenchmark:
    """The parts of pytest-benchmark's fixture that ``bench_cells.run`` uses: one untimed call, no statistics."""

    enabled, stats, group = False, None, None

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, fn, rounds, warmup_rounds, iterations):
        return fn()


def test_the_graph_pass_replays_fwdbwd_and_is_its_own_pass(monkeypatch):
    """``fwdbwd-cuda-graph`` builds the fwdbwd work, hands it to the CUDA-graph capture (here a stand-in that counts
    its calls: capture needs CUDA), checks the replay's gradients, and records a pass of its own with fwdbwd's FLOPs."""
    captured = []

    def graphed(work, device):
        captured.append(device)
        return work

    monkeypatch.setattr(bench_cells, "graphed", graphed)
    config = types.SimpleNamespace(getoption=lambda name, default=None: default)
    bench = FakeBenchmark()
    bench_cells.run(bench, config, torch.device("cpu"), "fwdbwd-cuda-graph", "small", "cudnn_lstm")
    assert captured == [torch.device("cpu")]
    info = bench.extra_info
    assert info["pass"] == "fwdbwd-cuda-graph" and bench.group.startswith("fwdbwd-cuda-graph-small-")
    assert info["flops_per_call"] == flops.cell_flops_per_token("LSTM", 200, 2, "fwdbwd") * 20 * 20
