"""Micro-benchmarks: every cell at the PTB shapes; forward, forward + backward, the LM training step, latency.

Shapes are the presets' (batch 20, 2 layers; small T20 H200, medium T35 H650,
large T35 H1500).  Four passes, one benchmark group per shape and pass, so each
table compares the cells directly:

- ``fwd``: the cell stack's forward in training mode (autograd recording), no dropout;
- ``fwdbwd``: the same forward plus the backward with a random upstream gradient;
- ``step``: the whole LM training step as ``rnnbench train`` runs it with that preset
  (embedding, cells, decoder, loss, backward, clipping, SGD step), vocabulary 10000;
- ``step-compile``, ``step-cuda-graph``: the same training step in the other execution modes
  (:mod:`lm.step`: forward and loss under ``torch.compile``; the whole step captured in a CUDA
  graph and replayed).  Timed on CUDA by default; on the CPU only when ``--bench-modes`` names them
  (compilation takes minutes there); cuda-graph never on the CPU;
- ``fwdbwd-cuda-graph``: ``fwdbwd`` captured once into a CUDA graph and replayed -- the GPU's time for the
  recurrence without the host's launches and allocations, which in eager mode can be most of a call
  (cuDNN's LM step at small: 4.2 ms eager, 0.94 as a graph, H200); with ``--bench-modes`` as the step modes;
- ``latency``: the per-call cost -- the cell stack's forward at the preset's hidden size and
  layers but batch 1 and one step, under ``torch.no_grad()``, with the state carried from call
  to call (one-token-at-a-time inference), so host overhead (launches, allocations, Python)
  is what it measures.

Ids read ``test_fwdbwd[medium-H650-T35-B20-loop_lstm]`` in group ``fwdbwd-medium-H650-T35-B20``; the
latency pass keeps the preset's id (its records say batch 1, 1 step) in group ``latency-medium-H650-T1-B1``.
Every timed call ends with a device synchronize; before timing, each body runs
twice untimed (Triton compilation and autotuning, allocator warm-up), and on CUDA
pedantic mode adds three more warm-up rounds.  On CUDA the Triton cells' kernels for
everything selected are compiled side by side before the first benchmark
(:func:`precompile`), not one at a time in each warm-up.  The number of rounds is chosen so
that timing takes about ``--benchmark-max-time`` (at least ``--benchmark-min-rounds``).
``extra_info`` holds words/sec, FLOP/s (:mod:`bench.flops`) and peak memory (CUDA:
max allocated; CPU: the process's peak resident set, reset before timing).

Run::

    pytest bench --benchmark-only --benchmark-json results/bench/cpu/micro.json

A plain ``pytest`` run executes each body once, as a test (see ``bench/conftest.py``);
on the CPU it runs the small shape only, to stay quick.  On the CPU the large shape
and cells that would run in Triton's interpreter are skipped with the reason, and
at least 3 rounds (not 5) are timed unless ``--benchmark-min-rounds`` is given;
``--bench-shapes`` and ``--bench-cells`` choose explicitly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import nn

import cells
from bench import flops
from bench.machine import default_device
from lm import env
from lm.config import PRESETS, Config
from lm.model import LanguageModel
from lm.step import graphed

SHAPES = ("small", "medium", "large")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_TAGS = {torch.bfloat16: "bf16"}
CPU_SHAPES = ("small", "medium")
VOCAB = 10000  # PTB's


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _skip_reason(cell: str, shape: str, device: torch.device, shapes_chosen: bool, measuring: bool) -> str | None:
    reason = cells.unavailable_reason(cell, device)
    if reason:
        return f"{cell} cannot run on {device.type}: {reason}"
    refusal = getattr(cells.cell_class(cell), "training_refusal", None)
    message = refusal(device) if refusal else None
    if message:  # e.g. a Triton cell in the interpreter: its time would say nothing about the kernel
        return f"{cell} is not timed on {device.type}: {message.split(';')[0]}"
    if device.type == "cpu" and shape not in CPU_SHAPES and not shapes_chosen:
        return (f"the {shape} shape is skipped on the CPU (seconds per call; keeps `pytest --benchmark-only` "
                f"under 5 minutes); time it on a GPU or pass --bench-shapes {shape}")
    if device.type == "cpu" and not measuring and getattr(cells.cell_class(cell), "compiles_per_shape", False):
        return ("plain run (benchmarks disabled): a compiled cell compiles 20-30 s per shape on the CPU; "
                "tests/test_cells.py checks it, --benchmark-only times it")
    if device.type == "cpu" and shape != SHAPES[0] and not shapes_chosen and not measuring:
        return (f"plain run (benchmarks disabled): the {shape} shape is only timed; the small shape runs the same "
                "code as a quick test")
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"shape", "cell"} <= set(metafunc.fixturenames):
        return
    config = metafunc.config
    device = default_device(config.getoption("bench_device", None))
    shapes, names = _split(config.getoption("bench_shapes", None)), _split(config.getoption("bench_cells", None))
    for shape in shapes:
        if shape not in PRESETS:
            raise pytest.UsageError(f"--bench-shapes: unknown preset {shape!r}; known: {', '.join(PRESETS)}")
    for name in names:
        if name not in cells.REGISTRY:
            raise pytest.UsageError(f"--bench-cells: unknown cell {name!r}; known: {', '.join(cells.names())}")
    measuring = not config.getoption("benchmark_disable", False)
    params = []
    for shape in shapes or SHAPES:
        cfg = PRESETS[shape]
        for cell in names or cells.names():
            reason = _skip_reason(cell, shape, device, bool(shapes), measuring)
            params.append(pytest.param(shape, cell, id=f"{shape_id(shape, cfg)}-{cell}",
                                       marks=[pytest.mark.skip(reason=reason)] if reason else []))
    metafunc.parametrize(("shape", "cell"), params)


def shape_id(shape: str, cfg: Config) -> str:
    return f"{shape}-H{cfg.hidden_size}-T{cfg.num_steps}-B{cfg.batch_size}"


# --- what is timed -------------------------------------------------------------------------------------------

Work = Callable[[], torch.Tensor]


def cell_options(config: pytest.Config | None, cell: str) -> dict:
    """What ``cells.build`` gets besides the sizes: ``--bench-compile-mode`` for the cells that compile."""
    mode = config.getoption("bench_compile_mode", None) if config is not None else None
    return {"compile_mode": mode} if mode and getattr(cells.cell_class(cell), "compiles_per_shape", False) else {}


def _cell_work(pass_: str, cell: str, cfg: Config, device: torch.device, dtype: torch.dtype, **opts
               ) -> tuple[Work, Callable, nn.Module]:
    T, B, H = cfg.num_steps, cfg.batch_size, cfg.hidden_size
    rnn = cells.build(cell, H, H, cfg.num_layers, **opts).to(device=device, dtype=dtype).train()
    x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=True)
    if pass_ == "fwd":
        def work() -> torch.Tensor:
            return rnn(x)[0]

        def check(y: torch.Tensor) -> None:
            assert y.shape == (T, B, H) and torch.isfinite(y).all()

        return work, check, rnn

    dy = torch.randn(T, B, H, device=device, dtype=dtype)
    params = list(rnn.parameters())

    def work() -> torch.Tensor:
        for p in params:
            p.grad = None
        x.grad = None
        y = rnn(x)[0]
        y.backward(dy)
        return y.detach()

    def check(y: torch.Tensor) -> None:
        assert y.shape == (T, B, H) and torch.isfinite(y).all()
        for t in [x, *params]:
            assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0

    return work, check, rnn


def _latency_work(cell: str, cfg: Config, device: torch.device, dtype: torch.dtype
                  ) -> tuple[Work, Callable, nn.Module]:
    H = cfg.hidden_size
    rnn = cells.build(cell, H, H, cfg.num_layers).to(device=device, dtype=dtype).eval()
    x = torch.randn(1, 1, H, device=device, dtype=dtype)
    state = None

    def work() -> torch.Tensor:  # one token, no autograd, the state carried as in one-token-at-a-time inference
        nonlocal state
        with torch.no_grad():
            y, state = rnn(x, state)
        return y

    def check(y: torch.Tensor) -> None:
        assert y.shape == (1, 1, H) and torch.isfinite(y).all()

    return work, check, rnn


def _step_work(cell: str, cfg: Config, device: torch.device, mode: str = "eager", dtype: torch.dtype = torch.float32
               ) -> tuple[Work, Callable, nn.Module]:
    from lm.step import make_step

    T, B = cfg.num_steps, cfg.batch_size
    model = LanguageModel(cell, VOCAB, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.init_scale).to(
        device=device, dtype=dtype)
    step = make_step(mode, model, cfg, device)
    x = torch.randint(VOCAB, (T, B), device=device)
    y = torch.randint(VOCAB, (T, B), device=device)
    model.train()
    state = None

    def work() -> torch.Tensor:  # lm.train's step, the state carried from window to window
        nonlocal state
        loss, _, state = step(x, y, state)
        return loss

    def check(loss: torch.Tensor) -> None:
        assert torch.isfinite(loss)

    return work, check, model.rnn


PRECOMPILE_AT_LEAST = 4  # kernels: fewer compile in-line sooner than a pool of workers starts (~5 s)


def precompile(runs: list[tuple[str, str, str]], device: torch.device, dtype: torch.dtype) -> str | None:
    """Compile the kernels of every (pass, cell, preset) in ``runs`` whose cell compiles Triton kernels per shape
    (``jit_kernels``) side by side before anything is timed (:mod:`cells.triton_lstm.precompile`): the training
    forward and backward at the preset's batch for the fwd, fwdbwd and step passes (the LM step runs the same
    stacks), the forward without grad at batch 1 for latency.  Returns the summary line, or None when there were
    fewer than :data:`PRECOMPILE_AT_LEAST` kernels to compile."""
    works = {}
    for pass_, cell, shape in runs:
        if getattr(cells.cell_class(cell), "jit_kernels", False):
            latency = pass_ == "latency"
            key = (latency, cell, shape)
            if key not in works:
                cfg = PRESETS[shape]
                works[key] = (_latency_work(cell, cfg, device, dtype) if latency
                              else _cell_work("fwdbwd", cell, cfg, device, dtype))[0]
    if not works:
        return None
    from cells.triton_lstm import precompile as jit

    summary = jit.warm(lambda: [work() for work in works.values()], at_least=PRECOMPILE_AT_LEAST)
    return summary.line() if summary else None


# --- memory ----------------------------------------------------------------------------------------------------

def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_memory(device: torch.device) -> int | None:
    """Start a new peak; returns the current usage (CUDA: allocated bytes; CPU: resident set)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # Linux: writing 5 resets the process's peak resident set (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


# --- the benchmark --------------------------------------------------------------------------------------------

def _min_rounds(config: pytest.Config, device: torch.device) -> int:
    """--benchmark-min-rounds when given; else pytest-benchmark's default (5), or 3 on the CPU."""
    given = any(a.startswith("--benchmark-min-rounds") for a in config.invocation_params.args)
    if device.type == "cpu" and not given:
        return 3
    return int(config.getoption("benchmark_min_rounds"))


def _rounds(benchmark: BenchmarkFixture, config: pytest.Config, device: torch.device, timed: Work,
            compiles: bool = False) -> tuple[int, int]:
    """(rounds, warm-up rounds) for pedantic mode: untimed calls first, then about --benchmark-max-time of rounds.

    ``compiles``: the first call compiles (a compiled cell), so its time says nothing about the next ones."""
    if not benchmark.enabled:
        return 1, 0
    max_time = float(config.getoption("benchmark_max_time"))
    min_rounds = _min_rounds(config, device)
    t0 = time.perf_counter()
    timed()  # compilation, autotuning, allocator warm-up
    probe = time.perf_counter() - t0
    if probe * min_rounds < max_time or compiles:  # the first call's time may be mostly warm-up: time another
        t0 = time.perf_counter()
        timed()
        probe = time.perf_counter() - t0
    rounds = max(min_rounds, min(10_000, math.ceil(max_time / max(probe, 1e-9))))
    # On CUDA a few more warm-up rounds are cheap (clocks, caches, cuDNN's algorithm choice).
    return rounds, 3 if device.type == "cuda" else 0


def run(benchmark: BenchmarkFixture, config: pytest.Config, device: torch.device, pass_: str, shape: str,
        cell: str) -> None:
    """Time ``pass_`` of ``cell`` at preset ``shape`` on ``device``; check the result; fill ``extra_info``."""
    cfg = PRESETS[shape]
    dtype = DTYPES[config.getoption("bench_dtype", None) or "float32"]
    torch.manual_seed(0)
    steps, batch = (1, 1) if pass_ == "latency" else (cfg.num_steps, cfg.batch_size)
    if pass_.startswith("step"):
        work, check, rnn = _step_work(cell, cfg, device, pass_.removeprefix("step-") if "-" in pass_ else "eager",
                                      dtype)
        per_token = flops.lm_flops_per_token(cells.kind(cell), cfg.hidden_size, cfg.num_layers, VOCAB)
    elif pass_ == "latency":
        work, check, rnn = _latency_work(cell, cfg, device, dtype)
        per_token = flops.cell_flops_per_token(cells.kind(cell), cfg.hidden_size, cfg.num_layers, "fwd")
    else:
        base, _, mode = pass_.partition("-")  # fwdbwd-cuda-graph: fwdbwd, replayed as a CUDA graph
        work, check, rnn = _cell_work(base, cell, cfg, device, dtype, **cell_options(config, cell))
        if mode == "cuda-graph":
            work = graphed(work, device)
        per_token = flops.cell_flops_per_token(cells.kind(cell), cfg.hidden_size, cfg.num_layers, base)

    def timed() -> torch.Tensor:
        out = work()
        env.synchronize(device)
        return out

    tokens = steps * batch
    if dtype != torch.float32:  # another dtype is another pass in the tables: never a ratio across dtypes
        pass_ = f"{pass_}-{DTYPE_TAGS[dtype]}"
    elif (config.getoption("bench_fp32_matmul", None) or "ieee") == "tf32":  # so is another float32 arithmetic
        pass_ = f"{pass_}-tf32"
    benchmark.group = f"{pass_}-{shape}-H{cfg.hidden_size}-T{steps}-B{batch}"
    info = benchmark.extra_info
    info.update({
        "pass": pass_, "shape": shape, "dtype": str(dtype).removeprefix("torch."), "cell": cell,
        "fp32_matmul": cells.fp32_matmul() if dtype == torch.float32 else None,
        "kind": cells.kind(cell), "backend": cells.detect_backend(rnn, device, dtype), "device": device.type,
        "device_name": env.device_name(device),
        "hidden_size": cfg.hidden_size, "num_steps": steps, "batch_size": batch,
        "num_layers": cfg.num_layers, "vocab_size": VOCAB if pass_.startswith("step") else None,
        "dropout": cfg.dropout if pass_.startswith("step") else 0.0, "tokens_per_call": tokens,
        "flops_per_call": per_token * tokens, "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    })
    rounds, warmup = _rounds(benchmark, config, device, timed, hasattr(rnn, "compile_seconds"))
    before = _reset_peak_memory(device)
    result = benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    check(result)
    info["compile_seconds"] = getattr(rnn, "compile_seconds", None)  # compiled cells: in the untimed warm-up
    if benchmark.enabled and benchmark.stats:
        median = benchmark.stats.stats.median
        peak = _peak_memory(device)
        info.update({
            "words_per_sec": tokens / median,
            "flops_per_sec": per_token * tokens / median,
            "peak_memory_bytes": peak,
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process VmHWM",
            "peak_memory_over_start_bytes": peak - before if peak is not None and before is not None else None,
        })


def test_fwd(benchmark, pytestconfig, device, cpu_threads, shape, cell):
    run(benchmark, pytestconfig, device, "fwd", shape, cell)


def test_fwdbwd(benchmark, pytestconfig, device, cpu_threads, shape, cell):
    run(benchmark, pytestconfig, device, "fwdbwd", shape, cell)


def test_step(benchmark, pytestconfig, device, cpu_threads, shape, cell):
    run(benchmark, pytestconfig, device, "step", shape, cell)


def test_latency(benchmark, pytestconfig, device, cpu_threads, shape, cell):
    run(benchmark, pytestconfig, device, "latency", shape, cell)


def _mode_skip(config: pytest.Config, device: torch.device, cell: str, mode: str) -> None:
    """Skip a mode's benchmark the cell cannot run in (:func:`lm.step.refusal`) or that was not asked for: the modes
    are timed on CUDA unless ``--bench-modes`` names others, on the CPU only when it names them."""
    from lm.step import refusal

    why = refusal(mode, device, cell)
    if why:
        pytest.skip(why)
    chosen = _split(config.getoption("bench_modes", None))
    if mode not in chosen and (chosen or device.type == "cpu"):
        pytest.skip(f"step mode {mode} is timed on CUDA by default; on the CPU pass --bench-modes {mode}")


@pytest.mark.parametrize("mode", ["compile", "cuda-graph"])
def test_step_mode(benchmark, pytestconfig, device, cpu_threads, shape, cell, mode):
    _mode_skip(pytestconfig, device, cell, mode)
    run(benchmark, pytestconfig, device, f"step-{mode}", shape, cell)


def test_fwdbwd_graph(benchmark, pytestconfig, device, cpu_threads, shape, cell):
    """fwdbwd as one CUDA graph: the recurrence's GPU time, what a kernel is judged by beside the eager call."""
    _mode_skip(pytestconfig, device, cell, "cuda-graph")
    if getattr(cells.cell_class(cell), "compiles_per_shape", False):
        pytest.skip("a compiled cell's own CUDA graphs are --bench-compile-mode reduce-overhead")
    run(benchmark, pytestconfig, device, "fwdbwd-cuda-graph", shape, cell)
