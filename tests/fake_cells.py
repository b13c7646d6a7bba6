"""Cells that fail on purpose, registered by tests to exercise the harness's failure handling."""

from __future__ import annotations

import torch

from cells.loop import LoopLSTM


class OutOfMemoryLSTM(LoopLSTM):
    """Raises the out-of-memory error torch raises when an allocation fails."""

    def forward(self, x, state=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fake, for tests)")


class CrashingLSTM(LoopLSTM):
    def forward(self, x, state=None):
        raise RuntimeError("this cell crashes on purpose")
