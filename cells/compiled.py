"""The loop cells under ``torch.compile``: ``compiled_lstm`` and ``compiled_gru``.

What is compiled
----------------
The recurrence of :mod:`cells.loop` -- the same :func:`~cells.loop.lstm_step` / :func:`~cells.loop.gru_step`,
parameters, input projection (one matmul per layer, eager) and layer stacking -- in *chunks* of
``chunk`` timesteps (default 20): one compiled graph runs ``chunk`` steps unrolled (recurrent
``addmm`` as an ATen extern call, the gate arithmetic as one fused inductor kernel per step; forward
and backward).  A sequence of any length T runs as ceil(T / chunk) calls of that one graph; the last
chunk is padded with zero inputs and its extra steps are dropped (outputs and final state are taken at
step T, so the result is exact; the padded steps are wasted work, at most ``chunk - 1`` per layer
call).  So compiling does not depend on T: training at T 20 or 35 and evaluation windows of 409 or
8192 steps use the same graph.  The per-step inputs and outputs are separate tensors, not slices of
one ``[chunk, B, G*H]`` tensor, so every step's kernel reads and writes at offset 0 and inductor emits
the same few kernels for every step: compile time does not grow with ``chunk`` (a 20-step chunk
compiles 6 C++ kernels, as a 5-step one does; with stacked steps it was 25).

How many compilations: one graph per (device, dtype, grad mode, batch 1 or not) with the default
``dynamic=True`` (sizes symbolic; batch 1 is specialised by torch).  In grad mode every input is made
to require grad (a state or padding that does not gets a grad-requiring alias, whose gradient is
dropped), so the first chunk after a detached state uses the same graph as the rest.  A training run
compiles three graphs: training at batch 20, no-grad evaluation at batch 20 and at test batch 1.
Recompiling more than ``RECOMPILE_LIMIT`` times is an error, never a silent fall-back to eager
(``fullgraph=True`` and ``fail_on_recompile_limit_hit`` while the cell runs); so is a
``torch.compiler`` stance that would run the chunks eagerly.

Compile time
------------
``module.compile_seconds`` (float, starts at 0.0) accumulates the wall seconds of every call that
compiled a graph (Dynamo, AOTAutograd, inductor and the C++ build; the backward is compiled together
with the forward, not lazily at the first ``backward()``); ``module.compiles`` lists
``(what, seconds)`` for each, e.g. ``("float32 B=20 train", 21.3)``.  Read ``compile_seconds`` before
and after a step: the difference is that step's compile time, to record apart and to exclude from
words/sec.  Compiled graphs are shared by every instance in the process (and inductor caches them on
disk), so a second model of the same shapes reports 0 and a second process reports the cache hit's
time.

Measured (choice of design), CPU, 1 thread, small shape (H 200, T 20, B 20, 2 layers, float32),
training-mode forward and forward+backward, medians of 30-40 interleaved rounds, thread CPU time
(wall time was about 1.5-2x that: the machine had 2 cores at load average 6-8 from other jobs).
AMD EPYC (AVX2), torch 2.13.0, 2026-11-27:

==========================================  =========  ==========  =================================
variant                                     fwd ms     fwd+bwd ms  compile, training graph (loaded)
==========================================  =========  ==========  =================================
``loop_lstm`` (eager)                       13.1       40.0        --
``cudnn_lstm`` (oneDNN)                     11.3       29.5        --
per-step graph (``lstm_step`` compiled)     18.7       49.1        23 s
5-step chunks                               13.9       38.1        25-40 s
10-step chunks                              12.7       34.7        28-33 s
20-step chunks                              11.7       32.4        69 s (stacked), ~37 s (unstacked)
whole layer with ``scan`` (dynamic T)       --         ~70 / layer 58 s, and it recompiled per T
==========================================  =========  ==========  =================================

A compiled call costs about 0.3 ms forward + 0.3 ms backward of fixed overhead here (guards,
AOTAutograd's wrappers) against about 0.13 ms per eager step, so one graph per step loses to eager
and longer chunks win; past 20 steps the gain is small and the padding waste grows.
``mode="max-autotune-no-cudagraphs"`` (inductor's C++ GEMM templates) measured no faster (10-step
chunks: 40.6 vs 39.0 ms fwd+bwd) for 4x the compile time; ``cpp_wrapper`` about 3 % faster for 8x
the compile time; ``dynamic=False`` the same speed as ``dynamic=True`` within noise but a graph per
(batch, hidden size), so ``dynamic=True`` is the default.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time

import torch

from cells.loop import LoopGRU, LoopLSTM, gru_step, lstm_step

CHUNK = 20  # timesteps per compiled graph: the small preset's T
DYNAMIC = False  # torch.compile(dynamic=...): see the module docstring
RECOMPILE_LIMIT = 32  # graphs per chunk function before compiling again is an error
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def lstm_chunk(xps: list[torch.Tensor], h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """len(xps) LSTM steps unrolled: xps, each [B, 4H] -> (every h_t, every c_t), each [B, H]."""
    hs, cs = [], []
    for xp_t in xps:
        h, c = lstm_step(xp_t, h, c, w_hh)
        hs.append(h)
        cs.append(c)
    return hs, cs


def gru_chunk(xps: list[torch.Tensor], h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor
              ) -> tuple[list[torch.Tensor]]:
    """len(xps) GRU steps unrolled: xps, each [B, 3H] -> (every h_t,), each [B, H]."""
    hs = []
    for xp_t in xps:
        h = gru_step(xp_t, h, w_hh, b_hh)
        hs.append(h)
    return (hs,)


@functools.cache
def _compiled(fn, mode: str, dynamic: bool):
    """One ``torch.compile`` wrapper per chunk function and setting, shared by every instance."""
    kwargs = {}
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:  # torch >= 2.13
        kwargs["isolate_recompiles"] = True
    return torch.compile(fn, fullgraph=True, dynamic=dynamic, mode=None if mode == "default" else mode, **kwargs)


def chunk_length(n_steps: int, chunk: int) -> int:
    """Steps per compiled call for a sequence of ``n_steps``: ``chunk``, or 1 for a shorter sequence.

    A sequence shorter than a chunk (the tests', the tiny preset's, perhaps an evaluation's last window) runs
    one step per call of a one-step graph, which compiles in a fifth of the time of an 8-step one."""
    return chunk if n_steps >= chunk else 1


def _graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _strict_compile() -> contextlib.ExitStack:
    """While the cell runs: recompiling past the limit raises; a training graph's backward compiles with its forward."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True))
    if hasattr(torch._functorch.config, "force_non_lazy_backward_lowering"):
        stack.enter_context(torch._functorch.config.patch(force_non_lazy_backward_lowering=True))
    return stack


def _lift(t: torch.Tensor, grad: bool, own: bool = False) -> torch.Tensor:
    """``t``, or when ``grad`` and it does not require grad an alias that does (whose gradient is dropped).

    ``own``: not a view either (a copy of a view that requires grad)."""
    if grad and not t.requires_grad:
        return t.detach().requires_grad_()
    if own and t._base is not None:
        return t.clone() if grad else t.detach()
    return t


@functools.cache
def _cpu_compiler() -> tuple[str | None, str | None]:
    """(the C++ compiler inductor will use, None) or (None, why there is none)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler(), None
    except Exception as exc:  # noqa: BLE001 -- any failure means inductor cannot build CPU kernels
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


class _Compiled:
    """Mixin over a loop cell: the recurrence runs as compiled chunks of ``chunk`` steps (see module docstring).

    Args:
        input_size, hidden_size, num_layers, dropout: as ``torch.nn.LSTM`` / ``torch.nn.GRU``.
        chunk: timesteps per compiled graph.
        compile_mode: ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune",
            "max-autotune-no-cudagraphs").
        dynamic: ``torch.compile``'s ``dynamic``: True compiles sizes as symbols (one graph for every batch > 1 and
            hidden size), False one graph per (batch, hidden size).
    """

    _chunk_fn = None  # lstm_chunk or gru_chunk
    compiles_per_shape = True  # bench's plain (untimed) run skips the cell on the CPU: 20-30 s of compiling a shape

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 chunk: int = CHUNK, compile_mode: str = "default", dynamic: bool = DYNAMIC):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        if compile_mode not in MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(MODES)}; got {compile_mode!r}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
        self.chunk, self.compile_mode, self.dynamic = chunk, compile_mode, dynamic
        self.compile_seconds = 0.0
        self.compiles: list[tuple[str, float]] = []

    @classmethod
    def available(cls, device: str | torch.device) -> str | None:
        """None when the cell can run on ``device``, else the reason."""
        device = torch.device(device)
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported with this Python or platform"
        if device.type == "cpu":
            compiler, why = _cpu_compiler()
            return None if compiler else f"inductor found no C++ compiler for CPU kernels (set CXX): {why}"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available on this machine"
            from torch.utils._triton import has_triton

            if not has_triton():
                return "inductor needs Triton for CUDA kernels, and Triton is not usable here"
            return None
        return f"runs on cpu or cuda, not on {device.type}"

    def describe_backend(self, device: str | torch.device) -> str:
        """The compile settings and the code generator, e.g. 'torch.compile(... inductor C++ (g++) ...)'."""
        device = torch.device(device)
        if device.type == "cuda":
            import triton

            codegen = f"inductor Triton {triton.__version__}"
        else:
            compiler = _cpu_compiler()[0] or "no compiler"
            codegen = f"inductor C++/OpenMP ({compiler.rsplit('/', 1)[-1]})"
        return (f"torch.compile(loop cell in {self.chunk}-step chunks, {codegen}, mode={self.compile_mode}, "
                f"dynamic={self.dynamic}, fullgraph; torch {torch.__version__.split('+')[0]})")

    def recur(self, xp: torch.Tensor, state: tuple[torch.Tensor, ...], weights: tuple[torch.Tensor, ...]
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the recurrence over xp [T, B, G*H] from ``state`` (tuple of [B, H]): (y [T, B, H], final state)."""
        (n_steps, batch, width), k = xp.shape, chunk_length(xp.shape[0], self.chunk)
        if torch.compiler.is_compiling():  # inside someone else's torch.compile: let it trace the plain steps
            outs = type(self)._chunk_fn(list(xp.unbind(0)), *state, *weights)
            return torch.stack(outs[0]), tuple(o[-1] for o in outs)
        stance = getattr(getattr(torch._dynamo.eval_frame, "_stance", None), "stance", "default")
        if stance in ("force_eager", "eager_on_recompile"):
            raise RuntimeError(f"torch.compiler stance {stance!r} would run {type(self).__name__} eagerly; "
                               "use the loop cell instead")
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (xp, *state, *weights))
        # One graph whether or not the state needs grad (a detached carried state does not).
        state, weights = tuple(_lift(t, grad, self.dynamic) for t in state), tuple(_lift(w, grad) for w in weights)
        xp = _lift(xp, grad)
        fn = _compiled(type(self)._chunk_fn, self.compile_mode, self.dynamic)
        ys = []
        with _strict_compile(), contextlib.nullcontext() if grad else torch.no_grad():
            for start in range(0, n_steps, k):
                part = xp[start:start + k]  # the last chunk zero-padded to k steps
                n = part.shape[0]
                if n < k:
                    part = torch.cat([part, part.new_zeros(k - n, batch, width)])
                elif self.dynamic:  # with symbolic sizes Dynamo guards a view's base and offset: one base per chunk
                    part = part.clone()
                before, t0 = _graphs_compiled(), time.perf_counter()
                outs = fn(list(part.unbind(0)), *state, *weights)
                if _graphs_compiled() != before:
                    seconds = time.perf_counter() - t0
                    self.compile_seconds += seconds
                    what = f"{str(xp.dtype).removeprefix('torch.')} B={batch} {'train' if grad else 'no_grad'}"
                    self.compiles.append((what if xp.device.type == "cpu" else f"{xp.device} {what}", seconds))
                state = tuple(o[n - 1] for o in outs)
                ys += outs[0][:n]
        return torch.stack(ys), state


class CompiledLSTM(_Compiled, LoopLSTM):
    """``loop_lstm`` under ``torch.compile`` in chunks of ``chunk`` steps; see :mod:`cells.compiled`."""

    _chunk_fn = staticmethod(lstm_chunk)

    def layer(self, k, x, state):
        y, (h, c) = self.recur(self.project(k, x), tuple(state), (self.layer_weights(k)[1],))
        return y, (h, c)


class CompiledGRU(_Compiled, LoopGRU):
    """``loop_gru`` under ``torch.compile`` in chunks of ``chunk`` steps; see :mod:`cells.compiled`."""

    _chunk_fn = staticmethod(gru_chunk)

    def layer(self, k, x, state):
        _, w_hh, _, b_hh = self.layer_weights(k)
        y, (h,) = self.recur(self.project(k, x), (state,), (w_hh, b_hh))
        return y, h
