"""Shared parameter layout and layer stacking for every recurrent cell.

:class:`LayerStack` stacks layers: it applies inter-layer dropout exactly where
``torch.nn.LSTM`` does and handles the optional initial state (``(h, c)`` for
``mode == "LSTM"``, one tensor ``h`` for every other kind).  Subclasses own the
parameters and implement one layer over the whole sequence.

:class:`RecurrentStack` adds parameters named and shaped exactly like
``torch.nn.LSTM`` / ``torch.nn.GRU`` (``weight_ih_l{k}`` [G*H, in], ``weight_hh_l{k}``
[G*H, H], ``bias_ih_l{k}`` [G*H], ``bias_hh_l{k}`` [G*H]; G = 4 for LSTM with gate
order i, f, g, o and G = 3 for GRU with gate order r, z, n), so a ``state_dict``
moves between implementations of the same kind.  Cells with another layout
(:mod:`cells.minimal`) derive from :class:`LayerStack` directly and name a kind
of their own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

GATES = {"LSTM": 4, "GRU": 3}


class LayerStack(nn.Module):
    """Base class: ``forward(x, state=None) -> (y, state)``; see :mod:`cells`.  Subclasses register the
    parameters (before calling :meth:`reset_parameters`) and implement :meth:`layer`."""

    mode: str = "LSTM"
    # True where :meth:`layer` takes ``input_drop``: the stack then hands layer k + 1 the output of layer k undropped,
    # with its dropped copy (outside autograd) and the keep-mask, so that the layer runs on the copy but saves for its
    # backward the output, which layer k saves anyway, and the bool mask instead of a copy of T B H values.
    fuses_input_dropout: bool = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        check_sizes(input_size, hidden_size, num_layers, dropout)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.dropout = num_layers, float(dropout)

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(hidden_size), as torch.nn.LSTM initialises."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer(self, k: int, x: torch.Tensor, state):
        """Run layer ``k`` over x [T, B, in] from ``state`` (LSTM: (h, c) each [B, H]; other kinds: h).

        Returns (y [T, B, H], final state of the same structure).  With :attr:`fuses_input_dropout`, also takes
        ``input_drop``: None, or (x dropped, its keep-mask, p) from :func:`dropout_with_mask`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state=None):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input of shape [T, B, {self.input_size}], got {list(x.shape)}")
        lstm = self.mode == "LSTM"
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        expected = [self.num_layers, x.shape[1], self.hidden_size]
        for part in state if lstm else (state,):
            if list(part.shape) != expected:
                raise ValueError(f"expected each state tensor of shape [num_layers, B, H] = {expected}, got "
                                 f"{list(part.shape)}")
        # (each layer's state as views from one unbind a tensor, not a select a layer and tensor: each op is host time)
        # (h and c as tensors of their own even from one zeros: torch.compile guards on inputs being one object)
        if lstm:
            layer_states = list(zip(state[0].unbind(0), state[1].unbind(0), strict=True))
        else:
            layer_states = state.unbind(0)
        finals, input_drop = [], None
        for k, layer_state in enumerate(layer_states):
            if input_drop is None:
                x, final = self.layer(k, x, layer_state)
            else:
                x, final = self.layer(k, x, layer_state, input_drop=input_drop)
            finals.append(final)
            input_drop = None
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                if self.fuses_input_dropout:
                    input_drop = (*dropout_with_mask(x, self.dropout), self.dropout)
                else:
                    x = nn.functional.dropout(x, self.dropout, training=True)
        if lstm:
            return x, (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
        return x, torch.stack(finals)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dropout={self.dropout}"


class RecurrentStack(LayerStack):
    """A :class:`LayerStack` with ``torch.nn.LSTM`` / ``torch.nn.GRU``'s parameters (``mode`` "LSTM" or "GRU")."""

    mode: str = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        gates = GATES[self.mode] * hidden_size
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(gates, in_k)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(gates, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gates)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(gates)))
        self.reset_parameters()

    def layer_weights(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"),
                getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}"))


# What the stack hands a layer with fuses_input_dropout: (x dropped, its bool keep-mask, p)
InputDrop = tuple[torch.Tensor, torch.Tensor, float]


def dropout_with_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's dropout of ``x`` in training (the random numbers of ``nn.functional.dropout`` at the same seed) and its
    bool keep-mask, outside autograd: (x * mask / (1 - p), mask)."""
    with torch.no_grad():
        return torch.native_dropout(x.detach(), p, True)


def drop(x: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """x * mask / (1 - p) in one kernel, as torch's dropout computes it (its backward's)."""
    return torch.ops.aten.native_dropout_backward(x, mask, 1.0 / (1.0 - p))


def check_sizes(input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
    """Raise ValueError with the accepted range when a size or the dropout is out of range."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
