"""``torch.nn.LSTM`` / ``torch.nn.GRU`` as cells: cuDNN on CUDA, torch's own kernels elsewhere.

On the CPU ``torch.nn.LSTM`` runs oneDNN's RNN primitive for float32/bfloat16
and ATen's native loop otherwise; ``torch.nn.GRU`` always runs ATen's native
loop there.  Which one actually ran is found by profiling one step (see
:func:`cells.detect_backend`), never assumed.
"""

from __future__ import annotations

import torch
from torch import nn

from cells.base import check_sizes


class _TorchRNN:
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        check_sizes(input_size, hidden_size, num_layers, dropout)
        super().__init__(input_size, hidden_size, num_layers, dropout=float(dropout))

    def forward(self, x: torch.Tensor, state=None):
        return super().forward(x, state)


class CudnnLSTM(_TorchRNN, nn.LSTM):
    mode = "LSTM"


class CudnnGRU(_TorchRNN, nn.GRU):
    mode = "GRU"
