"""The training step as one unit, shared by every execution mode.

One step is the tutorial's: forward over one window with the carried state, the loss
(cross-entropy summed over the ``num_steps`` timesteps and averaged over the batch),
backward, global-norm gradient clipping and an SGD update::

    step = make_step(mode, model, cfg, device)
    loss, norm, state = step(x, y, state)    # loss: mean per word (a tensor; no host sync)
    step.set_lr(lr)                          # at each epoch

Modes (``MODES``), one class each; the loop around them (epochs, checkpoints, signals,
records) is the same for all and knows nothing of the mode:

- ``eager``: plain PyTorch.
- ``compile``: the forward and loss under ``torch.compile`` (inductor; AOTAutograd compiles
  their backward too), clipping and SGD on torch's foreach/fused paths.  A cell that Dynamo
  cannot trace (cuDNN's RNN op, for one) runs between compiled graphs; the record counts the
  graph breaks.
- ``cuda-graph``: the whole step -- forward, loss, backward, clipping, SGD -- captured once
  into a CUDA graph with static input, target and state buffers, after three real steps of
  warm-up on a side stream as PyTorch's CUDA-graph notes prescribe, then replayed; captured
  anew when the learning rate changes (once per epoch; the rate is a constant in the graph).
  Refused with a one-line reason where it cannot work (no CUDA, or a cell that says it cannot
  be captured), never silently run eagerly.

Clipping uses ``clip_grad_norm_(foreach=True)`` and SGD ``fused=True`` where torch has it
for the device (else ``foreach=True``); their results equal the plain loops'.

One-time costs -- compilation, CUDA-graph warm-up and capture, and the first step of a run
(kernel JIT and library initialisation for every cell) -- are timed by the training loop as
compile seconds, apart from the words/sec figure; ``Step.compiling()`` tells it when a step
did such work.
"""

from __future__ import annotations

import torch
from torch import nn

from lm.errors import UsageError
from lm.model import as_tuple, detach

MODES = ("eager", "compile", "cuda-graph")


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.SGD:
    """SGD on torch's fused path where it exists for ``device``, else its foreach path."""
    params = list(model.parameters())
    try:
        return torch.optim.SGD(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.SGD(params, lr=lr, foreach=True)


def optimizer_path(opt: torch.optim.Optimizer) -> str:
    group = opt.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"


def refusal(mode: str, device: torch.device, cell: str) -> str | None:
    """Why ``mode`` cannot run cell ``cell`` on ``device``, or None.  A cell class may define
    ``graph_capture_refusal(device) -> str | None`` (e.g. a host synchronisation inside its forward)."""
    import cells

    if mode not in MODES:
        return f"unknown step mode {mode!r}; accepted: {', '.join(MODES)}"
    if mode == "cuda-graph":
        if torch.device(device).type != "cuda":
            return f"--step cuda-graph needs a CUDA device (this run is on {torch.device(device).type}); " \
                   "use eager or compile"
        why = getattr(cells.cell_class(cell), "graph_capture_refusal", lambda d: None)(torch.device(device))
        if why:
            return f"--step cuda-graph: cell {cell} cannot be captured: {why}"
    return None


def window_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state):
    """The mean cross-entropy per word of one window (float32 logits) and the new state."""
    logits, state = model(x, state)
    loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.reshape(-1))
    return loss, state


class Step:
    """Eager mode; the base of the others.  ``__call__(x, y, state) -> (loss, norm, state)``."""

    mode = "eager"

    def __init__(self, model: nn.Module, cfg, device: torch.device, opt: torch.optim.Optimizer | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.opt = opt or make_optimizer(model, cfg.learning_rate, device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.forward = window_loss
        self.calls = 0

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def compiling(self) -> int:
        """A counter that changes whenever this step compiles or captures (0 for eager)."""
        return 0

    def _update(self, x, y, state):
        loss, state = self.forward(self.model, x, y, state)
        self.opt.zero_grad(set_to_none=True)
        (loss * self.cfg.num_steps).backward()  # sum over time, mean over the batch
        norm = nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)
        self.opt.step()
        return loss.detach(), norm.detach(), detach(state)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state):
        self.calls += 1
        return self._update(x, y, state)

    def describe(self) -> str:
        return f"eager; clip foreach, SGD {optimizer_path(self.opt)}"


class CompiledStep(Step):
    """Forward and loss under ``torch.compile`` (default mode, inductor); backward by AOTAutograd."""

    mode = "compile"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward = torch.compile(window_loss)

    def compiling(self) -> int:
        from torch._dynamo.utils import counters

        return sum(counters["stats"].values()) + sum(counters["aot_autograd"].values())

    def graph_breaks(self) -> int:
        from torch._dynamo.utils import counters

        return sum(counters["graph_break"].values())

    def describe(self) -> str:
        breaks = getattr(getattr(self.model, "rnn", None), "compile_breaks", None)  # a cell's own graph breaks
        return (f"torch.compile(forward+loss, inductor, default mode{f'; {breaks}' if breaks else ''}); clip foreach, "
                f"SGD {optimizer_path(self.opt)}")


class GraphStep(Step):
    """The whole step captured into one CUDA graph and replayed."""

    mode = "cuda-graph"
    WARMUP = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_lr: float | None = None
        self.captures = 0
        self.static: dict = {}

    def compiling(self) -> int:
        return self.captures + (self.calls <= self.WARMUP)

    def _warm(self, x, y, state):
        """A real step on a side stream (lazy initialisation happens outside capture)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self._update(x, y, state)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, x, y, state) -> None:
        s = self.static
        s["x"], s["y"] = x.clone(), y.clone()
        s["state"] = tuple(t.clone() for t in state) if isinstance(state, tuple) else state.clone()
        self.opt.zero_grad(set_to_none=True)
        self.graph = None  # free the old graph's memory before capturing the new one
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, norm, new_state = self._update(s["x"], s["y"], s["state"])
            s["loss"], s["norm"] = loss, norm
            for dst, src in zip(as_tuple(s["state"]), as_tuple(new_state), strict=True):
                dst.copy_(src)  # the carried state stays in its static buffer
        self.graph, self.captured_lr = graph, self.lr
        self.captures += 1

    def __call__(self, x, y, state):
        self.calls += 1
        if state is None:
            state = self._zeros(x)
        if self.calls <= self.WARMUP:
            return self._warm(x, y, state)
        if self.graph is None or self.captured_lr != self.lr:
            self._capture(x, y, state)
        s = self.static
        s["x"].copy_(x)
        s["y"].copy_(y)
        if not all(a is b for a, b in zip(as_tuple(state), as_tuple(s["state"]), strict=True)):
            for dst, src in zip(as_tuple(s["state"]), as_tuple(state), strict=True):
                dst.copy_(src)
        self.graph.replay()
        return s["loss"], s["norm"], s["state"]

    def _zeros(self, x):
        rnn = self.model.rnn
        z = torch.zeros(rnn.num_layers, x.shape[1], rnn.hidden_size, device=x.device,
                        dtype=next(self.model.parameters()).dtype)
        return (z, z.clone()) if self.model.kind == "LSTM" else z

    def describe(self) -> str:
        return ("CUDA graph of the whole step (re-captured per learning rate); "
                f"clip foreach, SGD {optimizer_path(self.opt)}")


STEPS = {"eager": Step, "compile": CompiledStep, "cuda-graph": GraphStep}


def graphed(work, device: torch.device, warmup: int = 3):
    """``work`` (a callable of no arguments) captured into a CUDA graph, as a callable that replays it: ``warmup``
    real calls on a side stream first (lazy initialisation, cuDNN's workspace, autograd's buffers), as PyTorch's
    CUDA-graph notes prescribe; the capture's output (and what the capture allocated, e.g. gradients, which each
    replay rewrites) is what a replay returns.  For timing a piece of work by its kernels alone (the micro-benchmarks'
    ``fwdbwd-cuda-graph``, the Triton tile search)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            work()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = work()

    def replay():
        graph.replay()
        return out

    return replay


def make_step(mode: str, model: nn.Module, cfg, device: torch.device) -> Step:
    """The step of ``mode`` for ``model``; UsageError with the reason when it cannot run here."""
    why = refusal(mode, device, model.cell_name)
    if why:
        raise UsageError(why)
    return STEPS[mode](model, cfg, device)
