"""Fused Triton LSTM cell for training (``triton_lstm``): forward and backward kernels with the time loop inside.

Layers, from the bottom: ``kernels.py`` (``@triton.jit``) -> ``launch.py`` (path, tiles,
launches) -> ``function.py`` (``torch.autograd.Function`` and :func:`lstm_layer`) -> this
module's :class:`TritonLSTM`, registered as ``triton_lstm``.  Parameters, layer stacking,
inter-layer dropout and the optional initial state come from :class:`cells.base.RecurrentStack`,
so the ``state_dict`` is that of ``torch.nn.LSTM``.  Tools beside them: ``probe.py`` (where a step's time
goes), ``tune.py`` (the tile search), ``precompile.py`` (their kernels compiled side by side before timing),
``sm90.py`` (registers and spills with no GPU), ``hostcost.py`` (host time per call), ``rehearse.py`` (the probe and
the tile search run in full with the launches mocked: what would fail on the GPU, found without one).

Design, per layer (``docs/triton.md`` has the whole of it: what the H200 measured, where the gaps to cuDNN lie, the
registers and instructions of every design field compiled for sm_90, and the designs built but not yet timed):

* Forward: ``xp = x W_ih^T`` for all T steps is one GEMM; one kernel launch then runs the whole recurrence
  (``h_{t-1} W_hh^T``, ``b_ih + b_hh`` in float32, gates, cell update), time loop inside.
* Backward: one launch walks time in reverse, carries dh and dc and stores the gate gradients ``dA_t`` of every step;
  ``dx = dA W_ih``, ``dW_ih = dA^T x`` and ``dW_hh = dA^T [h_0; y_0 .. y_{T-2}]`` are GEMMs over all T after it and the
  bias gradient is one sum (as cuDNN splits backward-data and backward-weights).
* Saved for the backward: x, h_0, c_0, the weights, y, the activated gates and the cell states of even steps (float32;
  ``launch.c_slot``; the backward recomputes the odd ones from the gates it reads anyway).  A layer above the first
  saves its input undropped and the bool dropout mask (``cells.base.LayerStack.fuses_input_dropout``).  Without
  autograd no gates are stored and the cell state lives in two slabs, so evaluation windows of 8192 steps cost y and
  xp only.
* Arithmetic of the recurrent matmuls (``tl.dot``, float32 accumulation): bfloat16 and float16 on the tensor cores;
  float32 as torch's float32 matmuls on CUDA run at the call (:func:`cells.fp32_matmul`: exact by default, TF32 where
  torch allows it in cuBLAS), or as the cell's ``fp32_precision`` says ("ieee", "tf32", "tf32x3");
  :meth:`TritonLSTM.describe_backend`, hence every record, says which.  float64 stays float64 (for gradcheck).
* Paths (:mod:`.launch`): *persistent* on CUDA -- the hidden units split over up to one program per SM (``Tile.per_sm``
  more), tiles from the table ``launch.TILES`` (measured at medium and large), each program's slice of ``W_hh``
  re-read each step from L1 / L2, the programs of a batch block meeting at a grid barrier between steps (a release
  ``atomic_add``, then acquire loads until the count is reached; counters zeroed by the last program out), launched
  cooperatively so that every program is resident or the launch fails -- it cannot deadlock.  *blocked*: one program
  per batch block owns all of H, no barrier: the interpreter's path (it runs programs one after another) and the CUDA
  fallback.  *stepwise*: the persistent split with one launch per step, so the interpreter can test it.
* Per call, only what depends on the data: plans, SM counts, launch options and barrier counters are cached per shape,
  dtype, device and stream, and a compiled kernel launches directly after its first launch (:func:`.launch._launch`;
  ``RNNBENCH_TRITON_DIRECT=0`` turns it off); ``python -m cells.triton_lstm.hostcost`` measures what is left.
* Without CUDA (or with ``TRITON_INTERPRET=1``) the same kernels run in Triton's interpreter on CPU tensors.
  ``@triton.jit`` chooses compiled or interpreted when it decorates, so ``kernels.py`` is loaded once per flavour
  (:func:`.launch.kernels`) and the choice follows the tensors' device.
"""

from __future__ import annotations

import os

import torch

from cells import fp32_matmul
from cells.base import InputDrop, RecurrentStack

try:
    import triton
except ImportError as exc:  # the cell reports it through available()
    triton = None
    _TRITON_ERROR: ImportError | None = exc
else:
    _TRITON_ERROR = None

PATHS = ("auto", "persistent", "blocked", "stepwise")  # see launch.py
# tl.dot input precision of float32 recurrent matmuls on CUDA: exact FMA, TF32 tensor cores, or three TF32 products
# per multiply (each operand split into a TF32 high part and a TF32 remainder; about float32's accuracy)
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")
FP32_ARITHMETIC = {"ieee": "exact float32 (ieee)", "tf32": "TF32 tensor cores",
                   "tf32x3": "float32 as three TF32 tensor-core products (tf32x3)"}  # in the backend string


def interpreted(device: str | torch.device | None = None) -> bool:
    """Whether the kernels run in Triton's interpreter on ``device`` (default: cuda if present, else cpu)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.disable
def _outside_the_graph(fn, *args):
    return fn(*args)


def between_graphs(fn, *args):
    """``fn(*args)``; under ``torch.compile`` (``rnnbench train --step compile``) as a graph break, so that a layer's
    kernels launch between the compiled graphs as they do eagerly: Dynamo would otherwise trace into the launch path
    (into Triton's NumPy interpreter on the CPU, where it fails).  The run's record counts the breaks
    (``graph_breaks``)."""
    return _outside_the_graph(fn, *args) if torch.compiler.is_compiling() else fn(*args)


class TritonLSTM(RecurrentStack):
    """Multi-layer LSTM on the fused Triton kernels; see :mod:`cells` for the interface.

    Args:
        input_size, hidden_size, num_layers, dropout: as ``torch.nn.LSTM``.
        path: "auto" (persistent on CUDA when it fits the SMs, else blocked), "persistent", "blocked"
            or "stepwise"; see :mod:`.launch`.
        units: hidden units per program on the persistent and stepwise paths (default: chosen for the GPU).
        fp32_precision: the recurrent matmuls of float32 input on CUDA: None (the default) as torch's float32
            matmuls run at the call (:func:`cells.fp32_matmul`: "ieee" unless TF32 is allowed in cuBLAS),
            "ieee" (exact float32 products), "tf32" (tensor cores, 10-bit mantissas, as cuDNN's float32 RNN when
            torch allows TF32) or
            "tf32x3" (tensor cores, three TF32 products per multiply: a_hi b_hi + a_hi b_lo + a_lo b_hi, with
            about float32's accuracy).
            The backend description says which ran.  bfloat16 and float16 always use the tensor cores with
            float32 accumulation; the interpreter always multiplies exactly.
    """

    mode = "LSTM"
    cell_name = "triton_lstm"
    fuses_input_dropout = True  # the inter-layer dropout inside the layer above: x and the mask saved, not x dropped
    compile_breaks = "each layer's kernels between the graphs"  # under torch.compile (between_graphs): the records say
    interpreted_training_ok = False  # the training harness sets it on --allow-interpreter
    jit_kernels = True  # Triton compiles them per shape at first use: bench compiles them side by side first

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 path: str = "auto", units: int | None = None, fp32_precision: str | None = None):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if fp32_precision is not None and fp32_precision not in FP32_PRECISIONS:
            raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
        self.path, self.units, self.fp32_precision = path, units, fp32_precision

    @classmethod
    def available(cls, device: str | torch.device) -> str | None:
        """None when the cell can run on ``device``, else the reason."""
        device = torch.device(device)
        if triton is None:
            return f"triton is not importable: {_TRITON_ERROR}"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available on this machine"
            if torch.cuda.get_device_capability(device) < (8, 0):
                return "the compiled kernels need a GPU of compute capability 8.0 or newer"
            return None
        if device.type == "cpu":
            return None
        return f"runs compiled on CUDA or in Triton's interpreter on the CPU, not on {device.type}"

    @classmethod
    def training_refusal(cls, device: str | torch.device) -> str | None:
        """A one-line reason to refuse training on ``device`` (the interpreter), or None."""
        if interpreted(device) and not cls.interpreted_training_ok:
            return (f"{cls.cell_name} would run in Triton's interpreter (no CUDA device, or TRITON_INTERPRET=1), "
                    "hundreds of times slower; pass --allow-interpreter to train anyway")
        return None

    def describe_backend(self, device: str | torch.device, batch: int = 20, dtype: torch.dtype | None = None) -> str:
        """Which Triton runs the kernels and how, with the arithmetic of the recurrent matmuls.

        E.g. 'Triton 3.6.0 compiled (persistent, grid barrier; recurrent matmuls exact float32 (ieee); at batch 20:
        ...)'.  ``dtype`` defaults to the parameters' dtype."""
        from . import launch

        device = torch.device(device)
        dtype = dtype or next(self.parameters()).dtype
        if dtype == torch.float32:
            arith = "exact float32 (ieee)" if interpreted(device) else FP32_ARITHMETIC[self.precision()]
        elif dtype == torch.float64:
            arith = "float64"
        else:
            arith = f"{str(dtype).removeprefix('torch.')} tensor cores, float32 accumulation"
        if interpreted(device):
            return (f"Triton {triton.__version__} interpreter (as TRITON_INTERPRET=1; one program per batch block; "
                    f"recurrent matmuls {arith})")
        plan = launch.make_plan(batch, self.hidden_size, dtype, device, self.path, self.units,
                                fp32_precision=self.precision(), kind=self.mode)
        how = "persistent, grid barrier" if plan.sync else "one program per batch block"
        return f"Triton {triton.__version__} compiled ({how}; recurrent matmuls {arith}; at batch {batch}: " \
               f"{plan.describe()})"

    def layer(self, k: int, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
              input_drop: InputDrop | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Layer ``k`` over x [T, B, in] from state (h, c), each [B, H]: (y [T, B, H], (h_T, c_T)); ``input_drop``:
        the inter-layer dropout to apply to x first (:attr:`fuses_input_dropout`)."""
        from .function import lstm_layer

        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        return between_graphs(lstm_layer, x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, self.path, self.units,
                              self.precision(), input_drop)

    def precision(self) -> str:
        """The float32 recurrent matmuls' arithmetic now: the cell's ``fp32_precision``, else torch's setting."""
        return self.fp32_precision or fp32_matmul()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", path={self.path!r}, fp32_precision={self.fp32_precision!r}"
