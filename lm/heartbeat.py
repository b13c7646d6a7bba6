"""A run's heartbeat: every few seconds one line on stderr saying where the run is.

The line is written by a daemon thread, so a run stuck inside one call (a hung
kernel, a compile, a barrier) still says in which phase and at which step it
stopped moving.  It is written with ``--quiet`` too; a sweep keeps the last one
of a child that it has to end (``last_line``).  Format, on one line::

    rnnbench heartbeat: small loop_lstm cpu | phase train | epoch 2/13 | step 120/2323 | 95 s |
    3,912 words/sec | last progress 0 s ago
"""

from __future__ import annotations

import sys
import threading
import time

PREFIX = "rnnbench heartbeat: "


class Heartbeat:
    """Progress shared by the training loop (``update``) and a thread that prints it every ``every`` seconds.

    ``every <= 0`` prints nothing.  Use as a context manager around the run.
    """

    def __init__(self, label: str, every: float = 10.0, stream=None):
        self.label = label
        self.every = every
        self.stream = stream
        self.phase, self.epoch, self.epochs, self.step, self.steps = "start-up", None, None, None, None
        self.words, self.words_t0 = 0, None
        self.t0 = self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, phase: str | None = None, epoch: int | None = None, epochs: int | None = None,
               step: int | None = None, steps: int | None = None, words: int | None = None) -> None:
        """Record progress; ``phase`` starts a new phase (its step and word counts start over)."""
        if phase is not None and phase != self.phase:
            self.phase, self.step, self.steps, self.words, self.words_t0 = phase, None, None, 0, time.monotonic()
        if epoch is not None:
            self.epoch = epoch
        if epochs is not None:
            self.epochs = epochs
        if step is not None:
            self.step = step
        if steps is not None:
            self.steps = steps
        if words is not None:
            self.words = words
        self.last_progress = time.monotonic()

    def line(self) -> str:
        now = time.monotonic()
        parts = [self.label, f"phase {self.phase}"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        if self.step is not None:
            parts.append(f"step {self.step}" + (f"/{self.steps}" if self.steps else ""))
        parts.append(f"{now - self.t0:.0f} s")
        if self.words and self.words_t0 is not None and now > self.words_t0:
            parts.append(f"{self.words / (now - self.words_t0):,.0f} words/sec")
        parts.append(f"last progress {now - self.last_progress:.0f} s ago")
        return PREFIX + " | ".join(parts)

    def beat(self) -> None:
        stream = self.stream or sys.stderr
        try:
            print(self.line(), file=stream, flush=True)
        except (OSError, ValueError):  # stderr closed: nothing to say it on
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if self.every > 0:
            self._thread = threading.Thread(target=self._run, name="rnnbench-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class Silent(Heartbeat):
    """A heartbeat that never prints (library use of ``train`` without one)."""

    def __init__(self):
        super().__init__("", every=0.0)


def last_line(text: str) -> str | None:
    """The last heartbeat line in ``text`` (a child's stderr), or None."""
    lines = [ln for ln in text.splitlines() if ln.startswith(PREFIX)]
    return lines[-1][len(PREFIX):] if lines else None
