"""Python-loop LSTM and GRU: the readable reference implementations.

One Python-level step per timestep.  The input projection for all timesteps is
hoisted into one matmul per layer, as cuDNN does; the recurrent matmul and the
gate arithmetic run step by step in plain PyTorch ops, so autograd provides the
backward pass.  The equations are exactly those of ``torch.nn.LSTM`` /
``torch.nn.GRU``.
"""

from __future__ import annotations

import torch

from cells.base import RecurrentStack


class LoopLSTM(RecurrentStack):
    mode = "LSTM"

    def layer(self, k, x, state):
        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        h, c = state
        xp = torch.addmm(b_ih + b_hh, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)
        ys = []
        for t in range(x.shape[0]):
            gates = torch.addmm(xp[t], h, w_hh.t())
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys), (h, c)

    def describe_backend(self, device: torch.device) -> str:
        return f"PyTorch eager loop ({device.type} ATen ops, one step per timestep)"


class LoopGRU(RecurrentStack):
    mode = "GRU"

    def layer(self, k, x, state):
        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        h = state
        xp = torch.addmm(b_ih, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)
        ys = []
        for t in range(x.shape[0]):
            x_r, x_z, x_n = xp[t].chunk(3, dim=1)
            h_r, h_z, h_n = torch.addmm(b_hh, h, w_hh.t()).chunk(3, dim=1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h = n + z * (h - n)  # (1 - z) * n + z * h
            ys.append(h)
        return torch.stack(ys), h

    describe_backend = LoopLSTM.describe_backend
