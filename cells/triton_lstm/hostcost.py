"""Host time of one call of the cell on its CUDA launch path, measured on a CPU with the launches mocked.

The kernels are compiled for sm_90 for real (no GPU needed); a stand-in Triton driver answers device 0,
stream 0, target sm_90, and its launcher does nothing, so Triton's launch path (argument binding,
specialization, cache lookup) runs in full but no kernel runs.  The launchers take their CUDA path with
CPU tensors (``launch.runs_interpreted`` -> False, 132 SMs), and ``torch.mm`` returns an uninitialised
result of the right shape (its arithmetic is the GPU's, not host cost).  Also counted per call: ATen ops
(each a kernel launch or an allocation on the GPU, or tensor metadata) and device-property queries.

    python -m cells.triton_lstm.hostcost            # 2 layers, H = 200, 650, 1500, batch 1, one step, no grad
    python -m cells.triton_lstm.hostcost --no-triton  # the same with Triton's launch path skipped too
    python -m cells.triton_lstm.hostcost --train      # a training forward and backward, batch 20, the presets' T
    python -m cells.triton_lstm.hostcost --check-direct  # launches direct and through Triton's run: the same?
    python -m cells.triton_lstm.hostcost --peak medium   # the LM step's peak of live tensors (memory, not time)

It patches torch and triton for the whole process: run it on its own, never import it into a program.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        self.ops[str(func)] = self.ops.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


def _fake_cuda(skip_triton: bool) -> dict:
    """Patch triton and torch as the module docstring says; returns the counters."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from . import launch

    seen = {"launches": 0, "queries": 0}

    class Utils:
        def get_device_properties(self, device):
            return {"max_shared_mem": 232448, "multiprocessor_count": 132}

        def load_binary(self, name, kernel, shared, device):
            return "module", 0, 0, 0, 1024

        def unload_module(self, module):
            pass

    class Driver:
        utils = Utils()

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def launcher_cls(self, src, metadata):
            def run(*args):
                seen["launches"] += 1
                if seen.get("log") is not None:
                    seen["log"].append(args)
            return run

    driver.set_active(Driver())
    if skip_triton:  # after its first (compiling) call, each launch returns at once
        run = JITFunction.run

        def quick(self, *args, grid, warmup, **kwargs):
            if getattr(self, "_hostcost_warm", False):
                seen["launches"] += 1
                return None
            self._hostcost_warm = True
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

        JITFunction.run = quick

    def properties(device=None):
        seen["queries"] += 1
        return types.SimpleNamespace(multi_processor_count=132)

    torch.cuda.get_device_properties = properties
    launch.runs_interpreted = lambda device: False
    launch.sm_count.cache_clear()
    launch.plan_for.cache_clear()
    torch.mm = lambda a, b, *rest, **kw: a.new_empty(a.shape[0], b.shape[1])
    # the backward's GEMMs (function.weight_grads): their shapes, not their arithmetic
    torch.Tensor.__matmul__ = lambda a, b: a.new_empty(*a.shape[:-1], b.shape[-1])
    torch.Tensor.addmm_ = lambda self, a, b, **kw: self
    assert triton is not None
    return seen


def _measure(call, calls: int, seen: dict) -> dict:
    """``call()`` three times (compiling, filling the caches), once counted, then its median host time (best of 5
    batches of ``calls // 5``), with the ATen ops, device queries and launches of one call."""
    for _ in range(3):
        call()
    before = dict(seen)
    with _Count() as count:
        call()
    one = {k: seen[k] - before[k] for k in seen}
    medians = []
    for _ in range(5):
        times = []
        for _ in range(max(1, calls // 5)):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times))
    return {"us": min(medians) * 1e6, "aten_ops": sum(count.ops.values()), "ops": count.ops,
            "queries": one["queries"], "launches": one["launches"]}


def measure(hidden: int, layers: int = 2, calls: int = 2000, seen: dict | None = None) -> dict:
    """Median host time of one call without grad at batch 1, one step (best of 5 batches), ATen ops, device queries
    and launches per call."""
    from . import TritonLSTM

    cell = TritonLSTM(hidden, hidden, layers)
    x = torch.randn(1, 1, hidden)
    state = [(torch.zeros(layers, 1, hidden), torch.zeros(layers, 1, hidden))]

    def call() -> None:
        _, state[0] = cell(x, state[0])

    with torch.no_grad():
        return _measure(call, calls, seen)


def measure_train(hidden: int, steps: int, batch: int = 20, layers: int = 2, calls: int = 200,
                  seen: dict | None = None) -> dict:
    """The same for one training forward and backward of the stack, as the micro-benchmarks' fwd+bwd (gradients set
    to None, then ``y.backward(dy)``).  The ATen ops that are GPU work (the bias gradient's sum, copies, zeroed
    rings) run on the CPU here: at H 200 tens of us of the figure, at larger H more (the padded W_hh copies), so it
    bounds the host time from above."""
    from . import TritonLSTM

    cell = TritonLSTM(hidden, hidden, layers)
    x = torch.randn(steps, batch, hidden, requires_grad=True)
    dy = torch.randn(steps, batch, hidden)

    def call() -> None:
        for p in cell.parameters():
            p.grad = None
        x.grad = None
        y, _ = cell(x)
        y.backward(dy)

    return _measure(call, calls, seen)


class _Live(TorchDispatchMode):
    """The bytes of the storages that ops create while it is on, live at once (each freed with its last tensor), and
    their peak with the op that reached it.  Storages that existed before (parameters, inputs) do not count."""

    def __init__(self, before: set[int]):
        super().__init__()
        self.before, self.storages = before, {}
        self.now = self.peak = 0
        self.at = ""

    def _free(self, key: int) -> None:
        entry = self.storages[key]
        entry[1] -= 1
        if not entry[1]:
            self.now -= entry[0]
            del self.storages[key]

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if not key or key in self.before:
                continue
            if key not in self.storages:
                self.storages[key] = [t.untyped_storage().nbytes(), 0]
                self.now += self.storages[key][0]
                if self.now > self.peak:
                    self.peak, self.at = self.now, str(func)
            self.storages[key][1] += 1
            weakref.finalize(t, self._free, key)
        return out


def peak_step(cell: str, preset: str) -> tuple[float, str]:
    """(MiB, op) of the peak of live tensors created by one training forward and backward of the PTB language model
    of ``preset`` (batch 20) with ``cell``, on the Triton cells' CUDA path with the launches mocked: what the GPU's
    ``max_memory_allocated`` above the parameters counts in the micro-benchmarks' LM step, before the caching
    allocator's rounding and without the optimizer.  An estimate for comparing two versions of the code; the GPU's
    figure beside cuDNN's is the ``step`` benchmark's."""
    import torch.nn.functional as F

    from lm.config import preset as make_preset
    from lm.model import LanguageModel

    cfg = make_preset(preset)
    torch.manual_seed(0)
    model = LanguageModel(cell, 10000, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.init_scale).train()
    x, y = (torch.randint(10000, (cfg.num_steps, cfg.batch_size)) for _ in range(2))

    def step() -> None:
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()

    step()  # (compiling)
    model.zero_grad(set_to_none=True)
    before = {t.untyped_storage().data_ptr() for t in (*model.parameters(), x, y)}
    with _Live(before) as live:
        step()
    return live.peak / 2 ** 20, live.at


def _launched(args: tuple) -> tuple:
    """A launcher call's arguments (grid, stream, function, metadata, hooks, the kernel's bound arguments) with each
    tensor as (dtype, shape, strides) and the per-launch metadata by its type: comparable between calls that allocate
    anew."""
    return tuple((a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor)
                 else type(a).__name__ if i == 6 else a for i, a in enumerate(args))


def check_direct(seen: dict, hidden: int, cell: str, train: bool, dtype: torch.dtype = torch.float32,
                 exchange: bool = False) -> list[str]:
    """Launch one call of ``cell`` (2 layers; a training forward and backward at batch 20, else batch 1 without grad;
    ``exchange``: on the exchange path) through Triton's ``JITFunction.run`` (``launch.DIRECT_LAUNCH`` off) and
    directly (on, after a call that fills its table), recording what each launch hands the launcher; the
    differences, one line each (none: the direct launches bind the arguments as Triton does)."""
    import dataclasses

    import cells

    from . import launch

    steps = 20 if hidden == 200 else 35
    batch = 20 if train else 1
    module = cells.build(cell, hidden, hidden, 2).to(dtype)
    x = torch.randn(steps if train else 1, batch, hidden, dtype=dtype, requires_grad=train)
    make_plan = launch.make_plan
    if exchange:
        launch.make_plan = lambda *a, **k: dataclasses.replace(make_plan(*a, **k), exchange=True, exchange_bwd=True)

    def call() -> None:
        if train:
            module(x)[0].sum().backward()
        else:
            with torch.no_grad():
                module(x)

    def record(direct: bool) -> list[tuple]:
        launch.DIRECT_LAUNCH = direct
        launch._DIRECT.clear()
        call()
        call()
        seen["log"] = []
        filled = len(launch._DIRECT)
        try:
            call()
            if direct and (not filled or len(launch._DIRECT) != filled):  # (a launch that missed the table)
                misses.append(len(launch._DIRECT) - filled)
            return [_launched(a) for a in seen["log"]]
        finally:
            seen["log"] = None

    misses: list[int] = []
    try:
        through, direct = record(False), record(True)
    finally:
        launch.make_plan = make_plan
    what = f"{cell} H{hidden} {str(dtype).removeprefix('torch.')}{' exchange' if exchange else ''} " \
           f"{'fwd+bwd' if train else 'no grad'}"
    if misses:
        return [f"{what}: {misses[0]} launches of the third call missed the direct launches' table"]
    if len(through) != len(direct) or not through:
        return [f"{what}: {len(direct)} direct launches against {len(through)} through Triton's run"]
    return [f"{what}, launch {i}: direct {d} against {t}"
            for i, (t, d) in enumerate(zip(through, direct, strict=True)) if t != d]


def _hidden(text: str) -> list[int]:
    """--hidden: comma-separated positive integers."""
    from lm.cli import positive_int

    return [positive_int(h) for h in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    from lm.cli import Parser, positive_int  # argparse, its errors on one line

    parser = Parser(prog="python -m cells.triton_lstm.hostcost", description=__doc__.split("\n")[0])
    parser.add_argument("--no-triton", action="store_true", help="skip Triton's launch path too (our code alone)")
    parser.add_argument("--hidden", type=_hidden, default="200,650,1500", help="hidden sizes, comma-separated")
    parser.add_argument("--calls", type=positive_int, default=2000)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check-direct", action="store_true",
                      help="instead: check that every launch of both Triton cells, training and not, hands the "
                           "launcher what Triton's own launch path does (launch._launch); exit 1 if not")
    what.add_argument("--peak", metavar="PRESET", choices=["small", "medium", "large"],
                      help="instead: the peak of live tensors in the PTB LM's training fwd+bwd at PRESET, both "
                           "Triton cells (memory, not time: an estimate to compare versions of the code)")
    what.add_argument("--train", action="store_true",
                      help="a training forward and backward at batch 20 and the presets' T instead (20 at H 200, "
                           "else 35)")
    args = parser.parse_args(argv)  # (before anything is patched)
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)
    seen = _fake_cuda(args.no_triton)
    if args.peak:
        for cell in ("triton_lstm", "triton_gru"):
            mib, at = peak_step(cell, args.peak)
            print(f"{cell} {args.peak}: peak of live tensors in the LM's training fwd+bwd {mib:.2f} MiB (at {at})",
                  flush=True)
        return
    if args.check_direct:
        wrong, n = [], 0
        for hidden in args.hidden:
            for cell in ("triton_lstm", "triton_gru"):
                for dtype, exchange in ((torch.float32, False), (torch.bfloat16, False), (torch.float32, True)):
                    for train in (False, True):
                        wrong += check_direct(seen, hidden, cell, train, dtype, exchange)
                        n += 1
        print("\n".join(wrong) if wrong else f"direct launches as Triton's own: {n} calls compared", flush=True)
        sys.exit(1 if wrong else 0)
    for hidden in args.hidden:
        if args.train:
            steps = 20 if hidden == 200 else 35
            r = measure_train(hidden, steps, calls=max(5, args.calls // 10), seen=seen)
            what = f"B20 T{steps} fwd+bwd"
        else:
            r = measure(hidden, calls=args.calls, seen=seen)
            what = "B1 T1 no grad"
        print(f"H{hidden} {what}, 2 layers: {r['us']:.1f} us/call, {r['aten_ops']} ATen ops, "
              f"{r['queries']} device queries, {r['launches']} launches  {r['ops']}", flush=True)


if __name__ == "__main__":
    if os.environ.pop("TRITON_INTERPRET", None) is not None:  # (as .rehearse: triton was imported interpreted)
        os.execv(sys.executable, [sys.executable, "-m", "cells.triton_lstm.hostcost", *sys.argv[1:]])
    main()
