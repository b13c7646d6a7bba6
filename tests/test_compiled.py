"""compiled_lstm / compiled_gru: one graph for every sequence length, compile time reported, no silent eager.

The float64 / float32 reference tests are in test_cells.py (sequences shorter than a chunk: one-step graphs).
These tests run 2-step chunks, so that several chunks and a padded one run, at batch 4 and hidden size 13 in
float64, as test_cells.py's T5-B4-I6-H13-L2-nostate.
"""

from __future__ import annotations

import pytest
import torch

import cells
from cells import compiled

B, IN, H = 4, 6, 13  # test_cells.py's T5-B4-I6-H13-L2-nostate
NAMES = ["compiled_lstm", "compiled_gru"]
LOOP = {"compiled_lstm": "loop_lstm", "compiled_gru": "loop_gru"}

pytestmark = pytest.mark.skipif(cells.unavailable_reason("compiled_lstm", "cpu") is not None,
                                reason=f"{cells.unavailable_reason('compiled_lstm', 'cpu')}")


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The compiled cell (2-step chunks) and its loop cell with the same float64 weights."""
    cell = cells.build(name, IN, H, 2, chunk=2).double()
    loop = cells.build(LOOP[name], IN, H, 2).double()
    loop.load_state_dict(cell.state_dict())
    return cell, loop


def outputs_and_grads(module, x, state):
    x = x.detach().clone().requires_grad_(True)
    y, final = module(x, state)
    finals = final if isinstance(final, tuple) else (final,)
    loss = (y * y.detach().sin()).sum() + sum((f * f.detach().cos()).sum() for f in finals)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [y, *finals, *grads]


@pytest.mark.parametrize("name", NAMES)
def test_one_graph_for_every_length_matches_the_loop_cell(name):
    """T below (one-step graph), at and above the chunk length (exact, padded): the loop cell's results."""
    torch.manual_seed(0)
    cell, loop = pair(name)
    k = cell.chunk
    for t in (1, k, 2 * k + 1):
        x = torch.randn(t, B, IN, dtype=torch.float64)
        state = None if t == 1 else tuple(torch.randn(2, B, H, dtype=torch.float64) for _ in range(2))
        if state is not None and name == "compiled_gru":
            state = state[0]
        for got, want in zip(outputs_and_grads(cell, x, state), outputs_and_grads(loop, x, state), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    one, two = "float64 B=4 H=13 1-step train", "float64 B=4 H=13 2-step train"  # test_cells may have compiled one
    assert [what for what, _ in cell.compiles] in ([two], [one, two])

    # Evaluation: no grad, a carried state, windows of any length (the harness uses 409 and 8192 steps).
    before = len(cell.compiles)
    with torch.no_grad():
        x = torch.randn(3 * k + 1, B, IN, dtype=torch.float64)
        y, state = cell(x[:k + 3])
        y2, state2 = cell(x[k + 3:], state)
        want, want_state = loop(x)
        torch.testing.assert_close(torch.cat([y, y2]), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state2, want_state, rtol=1e-12, atol=1e-12)
    assert [what for what, _ in cell.compiles[before:]] in ([], ["float64 B=4 H=13 2-step no_grad"])


@pytest.mark.parametrize("name", NAMES)
def test_copies_of_what_outlives_a_replay_under_cuda_graphs(name, monkeypatch):
    """Where the chunks replay as CUDA graphs (reduce-overhead or max-autotune on CUDA: graphs_replayed), a call that
    starts a new iteration frees the last one's outputs, so recur keeps copies of the state and of each chunk's
    outputs: the same results and gradients (forced here on the CPU, where the graphs are the same ones)."""
    cell = cells.build(name, IN, H, 2, chunk=2, compile_mode="reduce-overhead")
    assert cell.graphs_replayed(torch.device("cuda")) and not cell.graphs_replayed(torch.device("cpu"))
    assert not cells.build(name, IN, H, 2, chunk=2).graphs_replayed(torch.device("cuda"))
    torch.manual_seed(0)
    cell, loop = pair(name)
    monkeypatch.setattr(compiled._Compiled, "graphs_replayed", lambda self, device: True)
    x = torch.randn(2 * cell.chunk + 1, B, IN, dtype=torch.float64)
    state = torch.randn(2, B, H, dtype=torch.float64)
    state = state if name == "compiled_gru" else (state, torch.randn(2, B, H, dtype=torch.float64))
    for got, want in zip(outputs_and_grads(cell, x, state), outputs_and_grads(loop, x, state), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # a carried state, as evaluation carries it
        y, state = cell(x[:3])
        y2, state2 = cell(x[3:], state)
        want, want_state = loop(x)
    torch.testing.assert_close(torch.cat([y, y2]), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state2, want_state, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", NAMES)
def test_reduce_overhead_on_cuda_matches_the_loop_cell(name):
    """torch.compile's CUDA graphs for real (reduce-overhead on the GPU, what the GPU check's bench-compiled-graphs
    times): training calls recorded and then replayed, and an evaluation that carries its state across windows and
    chunks, give the loop cell's results, and no graph is skipped (that would raise)."""
    torch.manual_seed(0)
    cell = cells.build(name, IN, H, 2, chunk=2, compile_mode="reduce-overhead").cuda()
    loop = cells.build(LOOP[name], IN, H, 2).cuda()
    loop.load_state_dict(cell.state_dict())
    assert cell.graphs_replayed(torch.device("cuda"))
    for _ in range(3):  # warm-up, recording, replay
        x = torch.randn(2 * cell.chunk + 1, B, IN, device="cuda")
        for got, want in zip(outputs_and_grads(cell, x, None), outputs_and_grads(loop, x, None), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for _ in range(3):
        with torch.no_grad():
            x = torch.randn(3 * cell.chunk + 1, B, IN, device="cuda")
            y, state = cell(x[:3])
            y2, state2 = cell(x[3:], state)
            want, want_state = loop(x)
        torch.testing.assert_close(torch.cat([y, y2]), want, rtol=1e-4, atol=1e-5)
        for got, ref in zip(state2 if isinstance(state2, tuple) else (state2,),
                            want_state if isinstance(want_state, tuple) else (want_state,), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_cuda_graphs_skipped_are_an_error_not_a_figure_under_the_modes_name(monkeypatch):
    """Where the chunks should replay as CUDA graphs, inductor may not skip them silently: skipping raises while a
    chunk compiles and runs (cudagraph_or_error), and a skip counted after a call (its backward's) raises at the
    next call (forced here on the CPU)."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled._Compiled, "graphs_replayed", lambda self, device: True)
    seen = []
    real = compiled._compiled

    def watched(fn, mode, dynamic):
        def call(*args):
            seen.append(inductor_config.triton.cudagraph_or_error)
            return real(fn, mode, dynamic)(*args)
        return call

    monkeypatch.setattr(compiled, "_compiled", watched)
    cell = cells.build("compiled_gru", IN, H, 1, chunk=2).double()
    x = torch.randn(2, B, IN, dtype=torch.float64)
    cell(x)[0].sum().backward()
    assert seen == [True] and not inductor_config.triton.cudagraph_or_error
    cell(x)  # no skip since: runs
    counters["inductor"]["cudagraph_skips"] += 1  # as a backward that ran without its graph would count
    try:
        with pytest.raises(RuntimeError, match="skipped CUDA graphs since CompiledGRU's last call"):
            cell(x)
    finally:
        counters["inductor"]["cudagraph_skips"] -= 1


@pytest.mark.parametrize("name", NAMES)
def test_compile_seconds_count_only_calls_that_compiled(name):
    cell = cells.build(name, IN, H, 1, chunk=2).double()
    assert cell.compile_seconds == 0.0 and cell.compiles == []
    with torch.no_grad():
        cell(torch.randn(2, B, IN, dtype=torch.float64))
        after_first = cell.compile_seconds
        cell(torch.randn(7, B, IN, dtype=torch.float64))
    assert cell.compile_seconds == after_first == sum(s for _, s in cell.compiles)
    assert len(cell.compiles) <= 1 and all(s > 0 for _, s in cell.compiles)


def test_recompiling_past_the_limit_is_an_error_not_eager(monkeypatch):
    monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 1)
    cell = cells.build("compiled_lstm", IN, H, 1, chunk=2).double()
    with torch.no_grad(), pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        for batch in (B, B + 1, B + 2):  # the first may reuse a graph; a new batch size must compile
            cell(torch.randn(2, batch, IN, dtype=torch.float64))


def test_chunk_length_is_the_chunk_or_one_step_for_short_sequences():
    assert [compiled.chunk_length(t, 20) for t in (1, 5, 19, 20, 35, 409, 8192)] == [1, 1, 1, 20, 20, 20, 20]


def test_a_stance_that_would_run_eagerly_is_refused():
    cell = cells.build("compiled_gru", IN, H, 1)
    with torch.compiler.set_stance("force_eager"), pytest.raises(RuntimeError, match="'force_eager' would run"):
        cell(torch.randn(3, 2, IN))


def test_available_and_backend(monkeypatch):
    assert compiled.CompiledLSTM.available("cpu") is None
    text = cells.detect_backend(cells.build("compiled_lstm", 4, 4), "cpu")
    assert text.startswith("torch.compile(loop cell in 20-step chunks, inductor C++") and "mode=default" in text
    monkeypatch.setattr(compiled, "_cpu_compiler", lambda: (None, "InvalidCxxCompiler: no working C++ compiler found"))
    assert "no C++ compiler" in compiled.CompiledGRU.available("cpu")
    assert "not on meta" in compiled.CompiledGRU.available("meta")


@pytest.mark.parametrize("bad", [dict(chunk=0), dict(compile_mode="fast"), dict(dynamic="yes")])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        cells.build("compiled_lstm", 4, 4, **bad)
