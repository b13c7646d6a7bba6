"""One training process of a sweep: start it, pass its output on, keep its tail, end it at a time limit.

The child's stdout and stderr are read together (its summary line then lands in the
tail too) and passed on to our stderr, keeping our stdout for the sweep's own lines.
The child runs in its own session and is asked (``PR_SET_PDEATHSIG``) to get SIGTERM
when the process that started it dies, so a sweep or Ray worker killed with SIGKILL
does not leave it training on: it checkpoints at its next step and exits.  At the
time limit it gets SIGTERM (the training loop checkpoints and exits after its current
step), and SIGKILL to its whole process group ``grace`` seconds later if it is still
there.  The last heartbeat line (``lm.heartbeat``) it wrote is kept apart from the
output's tail, so a long traceback cannot push it out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lm.heartbeat import PREFIX

TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildResult:
    returncode: int
    stderr_tail: str
    last_heartbeat: str | None = None
    stopped_by_user: bool = False
    timed_out: bool = False
    ended_with: str | None = None  # the last signal we sent to end it ("SIGTERM" or "SIGKILL")


try:  # resolved here, not after fork: the child between fork and exec should do as little as possible
    _prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class _Reader(threading.Thread):
    """Reads the child's output: echoes all of it, only heartbeat lines, or nothing; keeps the tail."""

    def __init__(self, fd: int, echo: str, label: str):
        super().__init__(name="rnnbench-child-stderr", daemon=True)
        self.fd, self.echo, self.label = fd, echo, f"[{label}] ".encode() if label else b""
        self.tail, self.partial, self.heartbeat = bytearray(), b"", None

    def run(self) -> None:
        prefix = PREFIX.encode()
        while chunk := self._read():
            self.tail += chunk
            del self.tail[:-TAIL_BYTES]
            if self.echo == "all":
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            for line in lines:
                line = line.rsplit(b"\r", 1)[-1]
                if line.startswith(prefix):
                    self.heartbeat = line[len(prefix):].decode("utf-8", "replace")
                    if self.echo == "heartbeat":
                        sys.stderr.buffer.write(self.label + line + b"\n")
                        sys.stderr.flush()
            self.partial = self.partial[-TAIL_BYTES:]

    def _read(self) -> bytes:
        try:
            return os.read(self.fd, 65536)
        except OSError:
            return b""


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def end(proc: subprocess.Popen, grace: float) -> str:
    """SIGTERM to the child's process group, SIGKILL ``grace`` seconds later if the child is still running;
    waits for it.  Returns the name of the last signal sent."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return "SIGTERM"
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return "SIGKILL"


class StopRequests:
    """The user's requests to stop (Ctrl-C, SIGTERM) that a sweep running several children at once receives in its
    main thread and hands on to each child from the thread that waits on it, as ``handle_signals`` does for one: the
    first asks every child to stop after its current step and write its record, a second to stop at once."""

    def __init__(self) -> None:
        self.count, self.signal = 0, signal.SIGINT

    def request(self, signum: int = signal.SIGINT) -> None:
        """One more request, by ``signum`` (what the children are sent: SIGINT, or SIGTERM as the sweep got)."""
        self.signal = signal.Signals(signum)
        self.count += 1  # (one writer, the main thread; the waiting threads only read it)


def run(cmd: list[str], echo: str = "all", timeout: float | None = None, grace: float = 30.0,
        handle_signals: bool = True, label: str = "", on_start: Callable[[int], None] | None = None,
        stop: StopRequests | None = None) -> ChildResult:
    """Run ``cmd`` to its end, or until ``timeout`` seconds have passed.

    Args:
        echo: what of the child's output (stdout and stderr) to copy to our stderr: ``all``, ``heartbeat``
            (its heartbeat lines, after ``[label] ``) or ``none``.
        timeout: seconds the child may run (None: no limit); past it the child is ended (see :func:`end`).
        grace: seconds between SIGTERM and SIGKILL when ending it.
        handle_signals: in the main thread, hand SIGINT and SIGTERM sent to us on to the child, once per
            signal: the first asks it to stop after its current step and write its record, a second stops it
            at once.  A KeyboardInterrupt (Ray cancelling the task) ends the child as a time limit does and
            counts as the user asking to stop.
        on_start: called with the child's pid once it has started.
        stop: requests to stop made elsewhere (another thread): each new one is handed on as its signal, within half
            a second, and counts as the user asking to stop.

    Returns the exit status (negative: killed by that signal), the output's tail, the last heartbeat line, whether
    the user asked to stop and whether the time limit ended it.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    result = ChildResult(returncode=0, stderr_tail="")

    def hand_on(signum, frame):
        result.stopped_by_user = True
        if proc.poll() is None:
            proc.send_signal(signum)

    install = handle_signals and threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, hand_on) for s in (signal.SIGINT, signal.SIGTERM)} if install else {}
    reader = _Reader(proc.stdout.fileno(), echo, label)
    reader.start()
    try:
        if on_start is not None:
            on_start(proc.pid)
        deadline = None if not timeout else time.monotonic() + timeout
        handed = 0  # stop requests handed on
        while True:
            if stop is not None and stop.count > handed:
                handed = stop.count
                hand_on(stop.signal, None)
            try:  # never block for long: Ray delivers its cancellation between bytecodes
                proc.wait(timeout=0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    result.timed_out = True
                    result.ended_with = end(proc, grace)
                    break
    except KeyboardInterrupt:  # outside the main thread's handlers: Ray cancelling the task
        result.stopped_by_user = True
        result.ended_with = end(proc, grace)
    except BaseException:
        if proc.poll() is None:
            end(proc, grace)
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        reader.join(timeout=5.0)  # a grandchild may hold the pipe open: do not wait for it forever
        if not reader.is_alive():  # else leave the descriptor open rather than pull it from under the reader
            proc.stdout.close()
    result.returncode = proc.returncode
    result.stderr_tail = reader.tail.decode("utf-8", "replace")
    result.last_heartbeat = reader.heartbeat
    return result


def exit_reason(rc: int, tail: str) -> str:
    """``training process exited with status 1; last output line: ...`` (or ``killed by SIGKILL ...``)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        what = f"killed by {name}" + (" (on Linux often the out-of-memory killer)" if name == "SIGKILL" else "")
    else:
        what = f"exited with status {rc}"
    lines = [ln for ln in tail.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith(PREFIX)]
    return f"training process {what}" + (f"; last output line: {lines[-1].strip()}" if lines else "")
