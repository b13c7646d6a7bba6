"""The loop cells under ``torch.compile``: ``compiled_lstm`` and ``compiled_gru``.

What is compiled
----------------
The recurrence of :mod:`cells.loop` -- the same :func:`~cells.loop.lstm_step` / :func:`~cells.loop.gru_step`;
parameters, input projection (one eager matmul per layer) and layer stacking are the loop cell's -- in
*chunks* of ``chunk`` timesteps (default 20): one graph runs ``chunk`` steps unrolled (the recurrent
``addmm`` as an ATen call, the gate arithmetic as one fused inductor kernel per step; forward and
backward), and a sequence of T >= ``chunk`` steps is ceil(T / chunk) calls of it.  The last chunk is
padded with zero inputs and its extra steps are dropped (outputs and final state are taken at step T:
exact; at most ``chunk - 1`` wasted steps per layer call).  So the graph does not depend on T: training
at T 20 or 35 and evaluation windows of 409 or 8192 steps run the same one.  A sequence shorter than a
chunk runs a one-step graph T times (:func:`chunk_length`).  Steps go in and out as separate tensors,
not slices of one ``[chunk, B, G*H]`` tensor, so every step's kernel reads and writes at offset 0 and
inductor emits the same six kernels for every step: compile time does not grow with the chunk (with
stacked steps a 20-step graph had 25 kernels and took twice as long).

Graphs: one per (device, dtype, grad mode, batch, hidden size, steps per call); ``dynamic=False``.  In
grad mode every input is made to require grad (a detached carried state gets an alias that does, its
gradient dropped), so the first chunk uses the same graph as the rest.  A training run compiles three:
training at batch 20, evaluation (no grad) at batch 20 and at test batch 1.  Compiling more than
``RECOMPILE_LIMIT`` graphs is an error, never a silent fall-back to eager (``fullgraph=True`` and
``fail_on_recompile_limit_hit`` while the cell runs); so is a ``torch.compiler`` stance that would run
the chunks eagerly.  Inside another ``torch.compile`` (a compiled training step) the plain steps are
traced into that graph instead.  Under torch.compile's CUDA graphs (``compile_mode`` "reduce-overhead" or
"max-autotune" on CUDA; untimed on a GPU so far, the GPU check's ``bench-compiled-graphs`` times it) a chunk's outputs
live in the graphs' pool until a call starts a new iteration (any call without grad; with grad, the first after the
backward), so the carried state and a window's earlier chunks are copied out (:meth:`_Compiled.graphs_replayed`).
There, a chunk that inductor would run without CUDA graphs (a skip it would only log) is an error instead, never a
figure under the mode's name: ``triton.cudagraph_or_error`` while the chunks compile and run, and a skip counted
between two calls (a backward's) raises at the next.

Compile time
------------
``module.compile_seconds`` (float, from 0.0) accumulates the wall seconds of every call that compiled a
graph: Dynamo, AOTAutograd, inductor, the C++ build, and a process's first import of Dynamo and inductor;
the backward is compiled with the forward, not at the first ``backward()``.  ``module.compiles`` lists
``(what, seconds)`` per graph, e.g. ``("float32 B=20 H=200 20-step train", 24.1)``.  Read
``compile_seconds`` before and after a step: the difference is that step's compile time, to record apart
and exclude from words/sec.  Graphs are shared by every instance in the process and cached on disk by
inductor, so a second model of the same shapes reports 0 and a later process the cache hit's seconds.

Measured: CPU, 1 thread, small shape (H 200, T 20, B 20, 2 layers, float32), training-mode forward and
forward+backward, medians of 60 interleaved rounds of thread CPU time, AMD EPYC (AVX2) 2 cores at load
average 3.3-4.2 from other jobs, torch 2.13.0, 2026-11-27 (ms):

===========================================================  =====  =======  ===========================
variant                                                      fwd    fwd+bwd  compile (cold cache, loaded)
===========================================================  =====  =======  ===========================
``loop_lstm`` (eager)                                        17.0   50.7     --
``cudnn_lstm`` (oneDNN)                                      13.5   35.2     --
**compiled_lstm: 20-step chunks**                            16.3   41.7     24-37 s, the training graph
10-step chunks                                               16.4   41.7     about the same
the whole loop cell compiled (a graph per T: not usable)     13.4   36.1     44 s for T 20
``loop_gru`` (eager)                                         12.1   36.2     --
``cudnn_gru`` (ATen)                                         11.0   30.3     --
**compiled_gru: 20-step chunks**                             12.0   28.5     24-26 s
===========================================================  =====  =======  ===========================

At T 35 (same H, B): ``loop_lstm`` 28.4 / 97.0, ``compiled_lstm`` 30.3 / 78.4 ms.  Rejected, measured
earlier at load 6-8 (so slower overall): one graph per step (18.7 / 49.1 against eager's 13.1 / 40.0 --
a compiled call costs about 0.3 ms forward + 0.3 ms backward of guards and AOTAutograd wrappers, more
than the ~0.13 ms an eager step costs in dispatch); 5-step chunks (13.9 / 38.1); the whole layer as
``torch._higher_order_ops.scan`` with dynamic T (70 ms fwd+bwd per layer, 58 s to compile, and it
still recompiled for each T); ``dynamic=True`` (7 % slower fwd+bwd, 45.5 against 42.4 ms: symbolic sizes
cost the pointwise kernels their static vectorisation, and views then need copies);
``mode="max-autotune-no-cudagraphs"`` (no faster: 40.6 against 39.0 ms with 10-step chunks, 4x the
compile time); ``cpp_wrapper`` (3 % faster, 8x the compile time).  The gap to the whole-graph compile is
two calls instead of one and the per-step tensors' handling; what is left of the eager loop's cost is
mostly the per-step matmuls, which compiling does not change.

How far compiling can go on a CPU (the issue's target: ``compiled_lstm`` fwd+bwd at least 1.5x ``loop_lstm`` at
small).  2026-11-29, the same kind of machine (AMD EPYC, 2 cores, AVX-512) idle (load 0.1), 1 thread, commit f400dc9,
``pytest bench --benchmark-only -k "test_fwdbwd and not graph" --bench-device cpu --bench-shapes small --bench-threads
1`` (``results/bench/cpu-amd-epyc/fwdbwd-small-1thread-idle-2026-11-29.json``), medians in ms: ``cudnn_lstm`` 24.7,
``compiled_lstm`` 30.2, ``loop_lstm`` 30.9 (1.02x), ``compiled_gru`` 21.0, ``loop_gru`` 26.8 (1.28x).  Where the
compiled LSTM's call goes (``torch.profiler``, self CPU time a call, the profiler's overhead included): its matmuls,
the same ones the loop cell runs, about 21 ms -- per layer 20 recurrent ``addmm`` forward (~93 us), 19 for dh (~96
us) and 19 accumulating dW_hh (~117 us for a depth-20 product, plus ~44 us copying the 640 KB accumulator, as
inductor's ``addmm(..., out=)`` into a new buffer does), and the input projection, dx and dW_ih over all T (~1.4 ms
each); inductor's fused gate kernels 80 x ~31 us = 2.5 ms; the rest (graph calls, the chunk's stacking) ~3 ms.  The
loop cell's own matmuls take ~20 ms of its 30.9.  So compiling the loop cell is bounded by 30.9 / (20 + 2.5), about
1.37x, on this machine, short of 1.5x even if everything else vanished; what is left to gain is the matmuls'
structure (dW_hh as one GEMM over T, as the Triton cells do), which a compiled plain cell does not change.  Nor does
another mode: back to back on the same machine idle (commit fa158fb, ``results/compile-modes/``), ``compiled_lstm``
27.05 ms against ``loop_lstm`` 29.76 (1.10x) in the default mode and 25.99 against 29.70 (1.14x) under
``max-autotune-no-cudagraphs``, whose autotuning kept ATen's ``addmm`` for every matmul of both graphs.
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


def _strict_compile(graphs: bool = False) -> contextlib.ExitStack:
    """While the cell runs: recompiling past the limit raises; a training graph's backward compiles with its forward;
    with ``graphs`` (the mode asks for CUDA graphs on CUDA), inductor skipping them raises (``cudagraph_or_error``)
    instead of running the chunk without them under the mode's name."""
    stack = contextlib.ExitStack()
    settings = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
    stack.enter_context(torch._dynamo.config.patch({k: v for k, v in settings.items()
                                                    if hasattr(torch._dynamo.config, k)}))
    if hasattr(torch._functorch.config, "force_non_lazy_backward_lowering"):
        stack.enter_context(torch._functorch.config.patch(force_non_lazy_backward_lowering=True))
    if graphs:
        import torch._inductor.config as inductor_config

        stack.enter_context(inductor_config.patch({"triton.cudagraph_or_error": True}))
    return stack


def _cudagraph_skips() -> int:
    """CUDA graphs inductor has skipped in this process (its counter; each skip logged, ``TORCH_LOGS=cudagraphs``)."""
    return torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]


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
        self._skips_seen: int | None = None  # inductor's CUDA-graph skips after this cell's last call (graphs only)

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
        t0 = time.perf_counter()  # a compile counts from here: a process's first also imports Dynamo and inductor
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
        graphs = self.graphs_replayed(xp.device)
        if graphs and self._skips_seen is not None and _cudagraph_skips() != self._skips_seen:
            # (the forward's skips raise inside the call below; a backward's happen when autograd runs it, after)
            raise RuntimeError(f"torch.compile skipped CUDA graphs since {type(self).__name__}'s last call (its "
                               f"backward, or another compiled program in this process), so it would not run as "
                               f"mode={self.compile_mode}; TORCH_LOGS=cudagraphs says why")
        ys = []
        with _strict_compile(graphs), contextlib.nullcontext() if grad else torch.no_grad():
            for start in range(0, n_steps, k):
                part = xp[start:start + k]  # the last chunk zero-padded to k steps
                n = part.shape[0]
                if n < k:
                    part = torch.cat([part, part.new_zeros(k - n, batch, width)])
                elif self.dynamic:  # with symbolic sizes Dynamo guards a view's base and offset: one base per chunk
                    part = part.clone()
                before = _graphs_compiled()
                outs = fn(list(part.unbind(0)), *state, *weights)
                if _graphs_compiled() != before:
                    self._record_compile(f"{xp.dtype} B={batch} H={state[0].shape[-1]} {k}-step "
                                       f"{'train' if grad else 'no_grad'}", xp.device, time.perf_counter() - t0)
                state = tuple(o[n - 1] for o in outs)
                if graphs:  # (nothing of a replay's outputs outlives the next call: copies of what is kept)
                    state = tuple(s.clone() for s in state)
                    ys.append(torch.stack(outs[0][:n]))
                else:
                    ys += outs[0][:n]
                t0 = time.perf_counter()
        if graphs:
            self._skips_seen = _cudagraph_skips()
        return (torch.cat(ys) if graphs else torch.stack(ys)), state

    def graphs_replayed(self, device: torch.device) -> bool:
        """Whether the chunks run as CUDA graphs (``reduce-overhead`` and ``max-autotune`` on CUDA: torch.compile's
        CUDAGraph Trees).  Their outputs live in the graphs' memory pool, and a call that starts a new iteration (any
        call without grad; with grad, the first after the backward) frees those of the last one: the carried state and
        a window's earlier chunks would be read after being overwritten.  So :meth:`recur` then keeps copies."""
        return device.type == "cuda" and self.compile_mode in ("reduce-overhead", "max-autotune")

    def _record_compile(self, what: str, device: torch.device, seconds: float) -> None:
        self.compile_seconds += seconds
        what = what.replace("torch.", "")
        self.compiles.append((what if device.type == "cpu" else f"{device} {what}", seconds))


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
