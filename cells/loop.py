"""Python-loop LSTM and GRU: the readable reference implementations.

One Python-level step per timestep.  The input projection for all timesteps is
hoisted into one matmul per layer, as cuDNN does; the recurrent matmul and the
gate arithmetic run step by step in plain PyTorch ops, so autograd provides the
backward pass.  The equations are exactly those of ``torch.nn.LSTM`` /
``torch.nn.GRU``; :func:`lstm_step` and :func:`gru_step` hold them once, and
:mod:`cells.compiled` compiles the same functions.
"""

from __future__ import annotations

import torch

from cells.base import RecurrentStack


def lstm_step(xp_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step: xp_t [B, 4H] (input projection plus both biases), h and c [B, H] -> (h, c)."""
    gates = torch.addmm(xp_t, h, w_hh.t())
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gru_step(xp_t: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU step: xp_t [B, 3H] (input projection plus b_ih), h [B, H] -> h."""
    x_r, x_z, x_n = xp_t.chunk(3, dim=1)
    h_r, h_z, h_n = torch.addmm(b_hh, h, w_hh.t()).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)  # (1 - z) * n + z * h


class LoopLSTM(RecurrentStack):
    mode = "LSTM"

    def project(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``k``'s input projection for all timesteps: x [T, B, in] -> [T, B, 4H], both biases added."""
        w_ih, _, b_ih, b_hh = self.layer_weights(k)
        return torch.addmm(b_ih + b_hh, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)

    def layer(self, k, x, state):
        w_hh = self.layer_weights(k)[1]
        h, c = state
        xp = self.project(k, x)
        ys = []
        for t in range(x.shape[0]):
            h, c = lstm_step(xp[t], h, c, w_hh)
            ys.append(h)
        return torch.stack(ys), (h, c)

    def describe_backend(self, device: torch.device) -> str:
        return f"PyTorch eager loop ({device.type} ATen ops, one step per timestep)"


class LoopGRU(RecurrentStack):
    mode = "GRU"

    def project(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``k``'s input projection for all timesteps: x [T, B, in] -> [T, B, 3H], b_ih added."""
        w_ih, _, b_ih, _ = self.layer_weights(k)
        return torch.addmm(b_ih, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)

    def layer(self, k, x, state):
        _, w_hh, _, b_hh = self.layer_weights(k)
        h = state
        xp = self.project(k, x)
        ys = []
        for t in range(x.shape[0]):
            h = gru_step(xp[t], h, w_hh, b_hh)
            ys.append(h)
        return torch.stack(ys), h

    describe_backend = LoopLSTM.describe_backend
