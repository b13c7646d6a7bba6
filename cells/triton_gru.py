"""Fused Triton GRU cell for training (``triton_gru``), on the launch and plan code of :mod:`cells.triton_lstm`.

Same design as ``triton_lstm`` (its package docstring; the measurements in ``docs/triton.md``): per layer, ``xp =
x W_ih^T`` for all T steps is one GEMM and one launch of ``kernels.gru_fwd_kernel`` runs the whole recurrence (the
same hidden-unit split over the SMs, grid barrier between steps, K loop over ``W_hh``); one launch of
``kernels.gru_bwd_kernel`` walks time in reverse and stores the gate gradients, and ``dx``, ``dW_ih``, ``dW_hh`` and
the bias gradients are GEMMs and sums over all T after it.  What differs is the GRU's

    r = sigma(x W_ir + b_ir + h W_hr + b_hr)      z = sigma(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r (h W_hn + b_hn))    h' = (1 - z) n + z h

(torch.nn.GRU's equations and parameter layout, gate order r, z, n): ``h W_hn + b_hn`` is multiplied by r, so it
cannot join the input projection; the forward keeps it (``hn``) with r, z and n for the backward, and the backward
gives two gradients for the n gate -- of its recurrent part (``r dn'``, into ``dW_hh``) and of its input part
(``dn'``, into ``dW_ih``).  The state is h alone (no cell state); its direct path to the previous step (``z dh``)
is carried in a ``[B, H]`` buffer.

With ``exchange`` / ``exchange_bwd`` in the tile (untimed, as for ``triton_lstm``: docs/triton.md) the
recurrent matmuls are exchanges of shares instead of K loops (``kernels.gru_fwd_xchg_kernel``, ``gru_bwd_xchg_kernel``).

Plans come from :func:`cells.triton_lstm.launch.make_plan` with ``kind="GRU"``: the W_hh slice (3 x units x H) is
streamed, one tl.dot per gate, or with ``fuse_gates`` one per reduction tile for the three gates and a fourth of zeros
(a quarter of its products wasted, for a third of the dots and their operand shuffles; untimed), tiles from
``launch.GRU_TILES``
at medium and large (measured by the tile search on an H200, 2026-11-28) and from the heuristic at small.
Saved for the backward: x, h_0, the weights, y and
r, z, n, hn (float32); nothing is recomputed.  Without autograd no gates are stored.

Registers and spills of its kernels compiled for sm_90, the heuristic's plans and the measured entries, with the
gates in one dot and without: ``docs/triton.md``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from cells.base import InputDrop, drop
from cells.triton_lstm import TritonLSTM, between_graphs, launch
from cells.triton_lstm.function import dropped_input, input_projection, layer_inputs, split_drop, weight_grads


class GRULayerFunction(torch.autograd.Function):
    """One GRU layer over the whole sequence.  Inputs share one dtype; outputs (y, h_T).  ``xd``, ``mask``, ``p``: the
    inter-layer dropout of x, as for :class:`~cells.triton_lstm.function.LSTMLayerFunction`."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, plan: launch.Plan, xd=None, mask=None, p=None):
        train = any(ctx.needs_input_grad)
        h0, w_hh = h0.contiguous(), w_hh.contiguous()
        y, gates = launch.gru_forward(input_projection(x if xd is None else xd, w_ih), w_hh, b_ih.contiguous(),
                                      b_hh.contiguous(), h0, plan, train=train)
        if train:
            ctx.save_for_backward(x, h0, w_ih, w_hh, y, gates, mask)
            ctx.plan, ctx.p = plan, p
            ctx.set_materialize_grads(False)  # (an unused h_T's gradient: None, not zeros; see the LSTM's)
        return y, y[-1]  # (h_T a view of y, as the LSTM's)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT):
        x, h0, w_ih, w_hh, y, gates, mask = ctx.saved_tensors
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        da, dxn, dh0 = launch.gru_backward(w_hh, h0, y, gates, dy, None if dhT is None else dhT.contiguous(),
                                           ctx.plan)
        da = da.view(T * B, 3 * H)
        dxp = torch.cat([da[:, :2 * H], dxn.view(T * B, H)], 1)  # the input projection's gate gradients
        db_ih, db_hh = dxp.sum(0).to(x.dtype), da.sum(0).to(x.dtype)  # summed in the accumulation dtype
        da, dxp = da.to(x.dtype), dxp.to(x.dtype)  # the GEMMs run in the input dtype
        need = ctx.needs_input_grad
        dx, dw_ih, dw_hh = weight_grads(da, dxp, dropped_input(x, mask, ctx.p), h0, y, w_ih,
                                        (need[0], need[2], need[3]))
        if dx is not None and mask is not None:
            dx = drop(dx, mask, ctx.p)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


def gru_layer(x: torch.Tensor, h0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
              b_hh: torch.Tensor, path: str = "auto", units: int | None = None, fp32_precision: str = "ieee",
              input_drop: InputDrop | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer with the equations and parameter layout of ``torch.nn.GRU``.

    Args:
        x: [T, B, I] input, T >= 1.  h0: [B, H] initial state.
        w_ih: [3H, I], w_hh: [3H, H], b_ih, b_hh: [3H]; gate order r, z, n.
        path, units, fp32_precision, input_drop: as for :func:`cells.triton_lstm.function.lstm_layer`.

    Returns:
        y [T, B, H] and the final state h [B, H], in x's dtype (under autocast, the autocast dtype) with float32
        accumulation; float64 stays float64.  Without autograd h may be a view of y.
    """
    dtype, autocast, args = layer_inputs("triton_gru", x, h0, w_ih, w_hh, b_ih, b_hh)
    plan = launch.make_plan(x.shape[1], w_hh.shape[1], dtype, x.device, path, units, fp32_precision=fp32_precision,
                            kind="GRU")
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    dropped = split_drop(dtype, input_drop)
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        return GRULayerFunction.apply(*args, plan, *dropped) if grad else _inference(*args, plan, *dropped)


def _inference(x, h0, w_ih, w_hh, b_ih, b_hh, plan: launch.Plan, xd=None, mask=None, p=None):
    """The forward without autograd: no gates stored; h_T a view of y."""
    y, _ = launch.gru_forward(input_projection(x if xd is None else xd, w_ih), w_hh.contiguous(), b_ih.contiguous(),
                              b_hh.contiguous(), h0.contiguous(), plan, train=False)
    return y, y[-1]


class TritonGRU(TritonLSTM):
    """Multi-layer GRU on the fused Triton kernels, ``torch.nn.GRU``'s parameters; options as :class:`TritonLSTM`."""

    mode = "GRU"
    cell_name = "triton_gru"

    def layer(self, k: int, x: torch.Tensor, state: torch.Tensor, input_drop: InputDrop | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k`` over x [T, B, in] from state h [B, H]: (y [T, B, H], h_T); ``input_drop`` as for
        :meth:`TritonLSTM.layer`."""
        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        return between_graphs(gru_layer, x, state, w_ih, w_hh, b_ih, b_hh, self.path, self.units, self.precision(),
                              input_drop)
