"""Cells that fail on purpose, registered by tests to exercise the harness's failure handling."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from cells.loop import LoopLSTM


class OutOfMemoryLSTM(LoopLSTM):
    """Raises the out-of-memory error torch raises when an allocation fails."""

    def forward(self, x, state=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fake, for tests)")


class HostOutOfMemoryLSTM(LoopLSTM):
    """Raises what torch's CPU allocator raises when an allocation fails (a RuntimeError, not OutOfMemoryError)."""

    def forward(self, x, state=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")


class CrashingLSTM(LoopLSTM):
    def forward(self, x, state=None):
        raise RuntimeError("this cell crashes on purpose")


class HangingLSTM(LoopLSTM):
    """A cell that never returns: its forward sleeps forever (a hung kernel, a deadlock). It ignores the
    training loop's request to stop after the step, so only SIGKILL ends it."""

    def forward(self, x, state=None):
        while True:
            time.sleep(1.0)


class MarkedSlowLSTM(LoopLSTM):
    """``LoopLSTM``'s numbers, 0.05 s slower per call; at its third training step it writes
    ``$RNNBENCH_TEST_MARKERS/<pid>.json`` with its pid and its parent's, so a test can kill the parent mid-run."""

    calls = 0

    def forward(self, x, state=None):
        time.sleep(0.05)
        if self.training:
            MarkedSlowLSTM.calls += 1
            folder = os.environ.get("RNNBENCH_TEST_MARKERS")
            if folder and MarkedSlowLSTM.calls == 3:
                Path(folder).mkdir(parents=True, exist_ok=True)
                Path(folder, f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(),
                                                                           "ppid": os.getppid()}))
        return super().forward(x, state)
