"""The autograd Function of one LSTM layer, and the public function around it.

Forward: ``xp = x W_ih^T`` for all timesteps in one GEMM, then the fused recurrence
kernel (which adds ``b_ih + b_hh`` in float32).  Backward: the reverse-time kernel gives the gate
gradients ``dA`` (and dh_0, dc_0); then ``dx = dA W_ih``, ``dW_ih = dA^T x`` and
``dW_hh = dA^T [h_0; y_0 .. y_{T-2}]`` are GEMMs over all T and the bias gradient is one sum.
Saved for the backward: x, h_0, c_0, the weights, y, the activated gates and the cell states of even steps (the
kernel recomputes the others: :func:`.launch.c_slot`); where the stack fuses the inter-layer dropout into the layer
above, x undropped (the output below, which that layer saves anyway) and the bool mask, the dropped x recomputed.
Without autograd (``torch.no_grad()``, or no input that requires grad) the layer skips the Function, stores no gates
and keeps only two slabs of cell state.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from cells.base import InputDrop, drop

from . import launch


def input_projection(x: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
    """x W_ih^T for all T steps in one GEMM: [T, B, I] -> [T, B, G H] (no bias: the kernels add it)."""
    T, B, _ = x.shape
    return torch.mm(x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)


def weight_grads(da: torch.Tensor, dxp: torch.Tensor, x: torch.Tensor, h0: torch.Tensor, y: torch.Tensor,
                 w_ih: torch.Tensor, need: tuple[bool, bool, bool]):
    """dx, dW_ih, dW_hh as GEMMs over all T (each None unless ``need`` says so), in x's dtype.

    ``da`` [T B, G H]: gradients of the recurrent pre-activations; ``dxp`` [T B, G H]: of the input projection's
    (``da`` itself for the LSTM; for the GRU the n gate's differ).  dW_hh = sum_t dA_t^T h_{t-1}, with
    h_{-1} = h_0 and h_t = y_t."""
    T, B, _ = x.shape
    dx = (dxp @ w_ih).view_as(x) if need[0] else None
    dxp_t = dxp.t()  # (one transposed view for both weight gradients where da is dxp: each view is host time)
    dw_ih = dxp_t @ x.reshape(T * B, -1) if need[1] else None
    dw_hh = None
    if need[2]:
        da_t = dxp_t if da is dxp else da.t()
        dw_hh = da_t[:, :B] @ h0
        if T > 1:
            dw_hh.addmm_(da_t[:, B:], y[:-1].reshape((T - 1) * B, -1))
    return dx, dw_ih, dw_hh


def dropped_input(x: torch.Tensor, mask: torch.Tensor | None, p: float | None) -> torch.Tensor:
    """x, or with a keep-mask (the stack's fused inter-layer dropout, :attr:`cells.base.LayerStack.fuses_input_dropout`)
    x dropped by it."""
    return x if mask is None else drop(x, mask, p)


def split_drop(dtype: torch.dtype, input_drop: InputDrop | None) -> tuple:
    """(x dropped, mask, p) of a layer's ``input_drop`` (the dropped x in ``dtype``), or (None, None, None)."""
    if input_drop is None:
        return None, None, None
    xd, mask, p = input_drop
    return (xd if xd.dtype == dtype else xd.to(dtype)), mask, p


class LSTMLayerFunction(torch.autograd.Function):
    """One layer over the whole sequence.  Inputs share one dtype; outputs (y, h_T, c_T).  ``xd``, ``mask``, ``p``:
    the inter-layer dropout of x (x dropped, its bool keep-mask, p; None: none): the input projection takes xd, the
    backward x and the mask -- x is the layer below's output, which that layer saves too -- not a dropped copy."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan: launch.Plan, xd=None, mask=None, p=None):
        T = x.shape[0]
        xp = input_projection(x if xd is None else xd, w_ih)
        train = any(ctx.needs_input_grad)
        h0, c0, w_hh = h0.contiguous(), c0.contiguous(), w_hh.contiguous()
        y, c, gates = launch.forward(xp, w_hh, b_ih.contiguous(), b_hh.contiguous(), h0, c0, plan, train=train)
        if train:
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, y, c, gates, mask)
            ctx.plan, ctx.p = plan, p
            # (the final state's gradients arrive as None where it was not used -- the LM's carried state, the
            # micro-benchmarks -- not as zeros autograd would make: launch.backward makes the ones the kernel reads)
            ctx.set_materialize_grads(False)
        # h_T and c_T as views of y and of the cell-state slab (no copy kernels; autograd forbids modifying them in
        # place), c_T in x's dtype where the accumulation dtype differs
        c_last = c[launch.c_slot(T - 1, train)]
        return y, y[-1], c_last if c_last.dtype == x.dtype else c_last.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        x, h0, c0, w_ih, w_hh, y, c, gates, mask = ctx.saved_tensors
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        da, dh0, dc0 = launch.backward(w_hh, c0, c, gates, dy, None if dhT is None else dhT.contiguous(),
                                       None if dcT is None else dcT.contiguous(), ctx.plan)
        da = da.view(T * B, 4 * H)
        db = da.sum(0).to(x.dtype)  # summed in the accumulation dtype
        da = da.to(x.dtype)  # float32 in the kernel; the GEMMs run in the input dtype
        need = ctx.needs_input_grad
        dx, dw_ih, dw_hh = weight_grads(da, da, dropped_input(x, mask, ctx.p), h0, y, w_ih,
                                        (need[0], need[3], need[4]))
        if dx is not None and mask is not None:
            dx = drop(dx, mask, ctx.p)
        return dx, dh0, dc0.to(x.dtype), dw_ih, dw_hh, db, db.clone(), None, None, None, None


def _inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan: launch.Plan, xd=None, mask=None, p=None):
    """The forward without autograd: no gates stored, two slabs of cell state, h_T and c_T as views."""
    T = x.shape[0]
    y, c, _ = launch.forward(input_projection(x if xd is None else xd, w_ih), w_hh.contiguous(), b_ih.contiguous(),
                             b_hh.contiguous(), h0.contiguous(), c0.contiguous(), plan, train=False)
    c_last = c[launch.c_slot(T - 1, False)]
    return y, y[-1], c_last if c_last.dtype == x.dtype else c_last.to(x.dtype)


def layer_inputs(cell: str, x: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.dtype, bool, list[torch.Tensor]]:
    """(compute dtype, whether autocast is on, ``x`` and ``tensors`` in that dtype) for one layer call of ``cell``:
    x's dtype, or under autocast the autocast dtype; ValueError / TypeError for a bad x or dtype."""
    if x.dim() != 3 or x.shape[0] < 1:
        raise ValueError(f"expected x of shape [T >= 1, B, I], got {list(x.shape)}")
    dtype = x.dtype
    # (a device without autocast, e.g. "meta" for shapes only: :mod:`.precompile`'s tests)
    autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{cell} computes in float16, bfloat16, float32 or float64, not {dtype}")
    return dtype, autocast, [t if t.dtype == dtype else t.to(dtype) for t in (x, *tensors)]


def lstm_layer(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
               b_ih: torch.Tensor, b_hh: torch.Tensor, path: str = "auto", units: int | None = None,
               fp32_precision: str = "ieee", input_drop: InputDrop | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One LSTM layer with the equations and parameter layout of ``torch.nn.LSTM``.

    Args:
        x: [T, B, I] input, T >= 1.
        h0, c0: [B, H] initial state.
        w_ih: [4H, I], w_hh: [4H, H], b_ih, b_hh: [4H]; gate order i, f, g, o.
        path: "auto", "persistent", "blocked" or "stepwise" (see :mod:`.launch`).
        units: hidden units per program on the persistent and stepwise paths (default: chosen for the GPU).
        fp32_precision: recurrent matmuls of float32 input on CUDA, "ieee" (exact), "tf32" or "tf32x3".
        input_drop: None, or (x dropped, its keep-mask [T, B, I] bool, p) from :func:`cells.base.dropout_with_mask`:
            the layer runs on the dropped x and saves x and the mask for the backward instead of it.

    Returns:
        y [T, B, H] and the final state (h [B, H], c [B, H]).  Computed in x's dtype (under autocast, the
        autocast dtype) with float32 accumulation and cell state; float64 stays float64.  Without autograd the
        final state may be views of y and of a cell-state buffer.
    """
    dtype, autocast, args = layer_inputs("triton_lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    plan = launch.make_plan(x.shape[1], w_hh.shape[1], dtype, x.device, path, units, fp32_precision=fp32_precision)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    dropped = split_drop(dtype, input_drop)
    if not autocast:
        y, h, c = LSTMLayerFunction.apply(*args, plan, *dropped) if grad else _inference(*args, plan, *dropped)
    else:
        with torch.autocast(x.device.type, enabled=False):
            y, h, c = LSTMLayerFunction.apply(*args, plan, *dropped) if grad else _inference(*args, plan, *dropped)
    return y, (h, c)
