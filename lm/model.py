"""Embedding -> cell stack -> dropout -> linear decoder (Zaremba et al. 2014)."""

from __future__ import annotations

import torch
from torch import nn

import cells
from lm.errors import UsageError


class LanguageModel(nn.Module):
    """Word-level LM over any registered cell.

    Dropout (probability ``dropout``) acts on the non-recurrent connections only:
    after the embedding, between cell layers (inside the cell stack) and before
    the decoder.  Every parameter starts uniform in +-``init_scale``.
    """

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int, dropout: float,
                 init_scale: float, **cell_opts):
        super().__init__()
        self.cell_name = cell
        self.kind = cells.kind(cell)
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.rnn = cells.build(cell, hidden_size, hidden_size, num_layers, dropout, **cell_opts)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, but a state of another layout (another cell kind: nn.LSTM's weights into a minLSTM, or other
        sizes) is a one-line UsageError naming what does not fit, not torch's many-line RuntimeError."""
        if strict:
            own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
            given = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
            missing, extra = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
            sizes = sorted(k for k in own.keys() & given.keys() if own[k] != given[k])
            if missing or extra or sizes:
                parts = [f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                         for what, keys in (("missing", missing), ("unexpected", extra), ("other sizes of", sizes))
                         if keys]
                raise UsageError(f"the saved model does not fit a {self.kind} model ({self.cell_name}): "
                                 f"{'; '.join(parts)}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, state=None):
        """x [T, B] word ids -> (logits [T, B, V], state)."""
        y, state = self.rnn(self.drop(self.embedding(x)), state)
        return self.decoder(self.drop(y)), state


def detach(state):
    """Cut the graph behind a carried state (a tensor or a tuple of tensors)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def as_tuple(state) -> tuple:
    """A carried state as a tuple of tensors (an LSTM's (h, c) as it is, a GRU's h as (h,))."""
    return state if isinstance(state, tuple) else (state,)
