"""Floating-point work per token of the cells and of the PTB language model.

One layer of a gated cell with G gates (LSTM 4, GRU 3), hidden size H and input
size H does two matmuls per token, ``[G*H, H] @ x`` and ``[G*H, H] @ h``: ``4*G*H^2``
FLOPs forward (a multiply and an add each).  The backward pass costs twice the
forward (the gradient with respect to the input and to the weights), so training
costs ``12*G*H^2`` per layer: ``48*L*H^2`` for an L-layer LSTM.  The decoder
``[V, H]`` adds ``2*H*V`` forward and ``6*H*V`` for training.  Gate nonlinearities,
the embedding lookup and the softmax are a few FLOPs per unit and are ignored.

minGRU (2 gates) and minLSTM (3 gates), :mod:`cells.minimal`, have no recurrent matmul: one
``[G*H, H] @ x`` per token and layer, ``2*G*H^2`` forward; their scan's elementwise work (a few
transcendentals per unit) is ignored like the gate nonlinearities.
"""

from __future__ import annotations

GATES = {"LSTM": 4, "GRU": 3, "minGRU": 2, "minLSTM": 3}
MATMULS = {"LSTM": 2, "GRU": 2, "minGRU": 1, "minLSTM": 1}  # per token and layer: input and recurrent, or input only
PASS_FACTOR = {"fwd": 1, "fwdbwd": 3, "step": 3}


def cell_flops_per_token(kind: str, hidden: int, layers: int, pass_: str = "fwdbwd") -> float:
    """FLOPs per token of an L-layer cell stack (input size = hidden size) for ``pass_`` (fwd, fwdbwd, step)."""
    return PASS_FACTOR[pass_] * 2 * MATMULS[kind] * GATES[kind] * layers * hidden**2


def lm_flops_per_token(kind: str, hidden: int, layers: int, vocab: int) -> float:
    """Training FLOPs per token of the PTB LM: ``12*G*L*H^2 + 6*H*V`` (LSTM: ``48*L*H^2 + 6*H*V``)."""
    return cell_flops_per_token(kind, hidden, layers, "step") + 6 * hidden * vocab
