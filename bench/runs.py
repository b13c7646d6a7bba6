"""One run of a sweep, the same under every engine: check the cell, train it in a child process, return its record.

A run is named by a :class:`RunSpec`.  :func:`execute` runs it wherever it is called
(the sweep's own process for ``--engine local``, a Ray worker for ``--engine ray``)
and returns an :class:`Outcome` whose record the caller writes into the sweep's one
results folder (``lm.records.write_run``: atomic, under a lock).  The child writes
its own record into a scratch folder on the node that ran it, so no node but the
sweep's needs to see the results folder.

Checkpoints go to ``<checkpoint dir>/<spec.slug>.pt``, beside an owner file
(``.owner``: host, pid of the training process, attempt number).  A run that finds
its checkpoint already there is a retry of an attempt that died (a Ray worker killed,
a node lost): it first ends that attempt's training process if it still runs on this
host, then continues from the checkpoint (``rnnbench train --resume``), which on the
CPU gives exactly the perplexities of an uninterrupted run.  A run that ends ``ok``
deletes its checkpoint; any other keeps it for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench import child
from lm import config as lm_config
from lm import env, records
from lm.errors import UsageError


@dataclass(frozen=True)
class RunSpec:
    """What makes one run of a sweep different from another: the preset, the cell, the seed and the step mode
    (``lm.step.MODES``: eager, compile, cuda-graph)."""

    preset: str
    cell: str
    seed: int
    mode: str = "eager"

    def train_flags(self) -> list[str]:
        """This run's own ``rnnbench train`` options."""
        return ["--cell", self.cell, "--config", self.preset, "--seed", str(self.seed),
                *([] if self.mode == "eager" else ["--step", self.mode])]

    @property
    def slug(self) -> str:
        """A file-name-safe name, unique within a sweep."""
        mode = "" if self.mode == "eager" else f"-{self.mode}"
        return f"{self.preset}-{self.cell}{mode}-seed{self.seed}"

    def __str__(self) -> str:
        mode = "" if self.mode == "eager" else f" --step {self.mode}"
        return f"{self.cell}{mode} {self.preset} seed {self.seed}"


@dataclass
class Options:
    """What every run of one sweep shares (picklable: it travels to Ray workers)."""

    results: str
    checkpoints: str  # this sweep's checkpoint folder
    sweep_id: str
    engine: str = "local"
    device: str | None = None
    dtype: str = "float32"
    fp32_matmul: str = "ieee"
    epochs: int | None = None
    max_steps: int | None = None
    max_eval_words: int | None = None
    data_dir: str | None = None
    no_verify: bool = False
    quiet: bool = False
    threads: int | None = None
    heartbeat: float = 10.0
    checkpoint_every: float | None = None
    cell_timeout: float | None = None
    kill_grace: float = 30.0
    cwd: str | None = None  # where the sweep was started: the records' commands are relative to it
    jobs: int = 1  # runs at once (the local engine's --jobs; Ray places its tasks itself)

    @property
    def side_by_side(self) -> bool:
        """Whether runs may train at once (the Ray engine, or the local one with --jobs above 1): their progress
        bars would interleave, so they pass on heartbeat lines only, each naming its run."""
        return self.engine != "local" or self.jobs > 1


@dataclass
class Outcome:
    spec: RunSpec
    status: str
    reason: str | None = None
    record: dict | None = None
    path: str | None = None
    returncode: int | None = None
    stopped_by_user: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def cell(self) -> str:
        return self.spec.cell


def train_args(spec: RunSpec, opts: Options, results: str | os.PathLike | None = None,
               checkpoint: str | os.PathLike | None = None) -> list[str]:
    """The ``rnnbench train`` arguments of one run (everything after ``rnnbench``)."""
    quiet = opts.quiet or opts.side_by_side  # interleaved progress bars of parallel runs say nothing
    out = ["train", *spec.train_flags(), "--device", str(opts.device), "--results", str(results or opts.results),
           "--dtype", opts.dtype, "--fp32-matmul", opts.fp32_matmul]
    for flag, value in (("--epochs", opts.epochs), ("--max-steps", opts.max_steps),
                        ("--max-eval-words", opts.max_eval_words), ("--data-dir", opts.data_dir),
                        ("--threads", opts.threads), ("--checkpoint", checkpoint),
                        ("--checkpoint-every", opts.checkpoint_every)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--heartbeat", f"{opts.heartbeat:g}"]
    if opts.no_verify:
        out.append("--no-verify")
    if quiet:
        out.append("--quiet")
    return out


def finish(rec: dict, status: str, error: str, **extra) -> dict:
    """Mark ``rec`` finished with ``status`` and ``error`` (and any ``extra`` fields)."""
    rec.update(status=status, error=error, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               load_average_end=os.getloadavg(), **extra)
    return rec


def base_record(spec: RunSpec, opts: Options, device, command: list[str]) -> dict:
    """A record for a run whose training process wrote none (never started, killed, cancelled)."""
    from lm.train import new_record

    return new_record(lm_config.preset(spec.preset, epochs=opts.epochs), spec.cell, device, spec.seed, command,
                      spec.mode, opts.dtype, opts.fp32_matmul)


# --- checkpoints and earlier attempts --------------------------------------------------------------------------

def checkpoint_file(spec: RunSpec, opts: Options) -> Path:
    """``<checkpoints>/<slug>.pt``; a node that cannot create the sweep's folder (a multi-node cluster without
    shared storage) uses one under its temporary folder: a retry there resumes, on another node starts over."""
    folder = Path(opts.checkpoints)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        folder = Path(tempfile.gettempdir()) / "rnnbench-checkpoints" / opts.sweep_id
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{spec.slug}.pt"


def _owner_file(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".owner")


def _is_training(pid) -> bool:
    """Whether ``pid`` is a live ``bench.cli`` process on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return b"bench.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def take_over(ckpt: Path, grace: float) -> tuple[int, bool]:
    """Before an attempt: end the previous attempt's training process if it still runs on this host (it
    checkpoints on SIGTERM), then say which attempt this is and whether there is a checkpoint to resume."""
    try:
        owner = json.loads(_owner_file(ckpt).read_text())
    except (OSError, ValueError):
        owner = {}
    pid = owner.get("pid")
    if owner.get("host") == platform.node() and _is_training(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _is_training(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _is_training(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return int(owner.get("attempt") or 0) + 1, ckpt.is_file()


def _claim(ckpt: Path, pid: int, attempt: int) -> None:
    records.atomic_write(_owner_file(ckpt), json.dumps({"host": platform.node(), "pid": pid, "attempt": attempt}))


# --- one run ---------------------------------------------------------------------------------------------------

def execute(spec: RunSpec, opts: Options, handle_signals: bool = True,
            stop: child.StopRequests | None = None) -> Outcome:
    """Check, then train one run in a child process; always returns an Outcome with a record (not yet written).
    ``handle_signals`` and ``stop``: how the user's requests to stop reach the child (:func:`bench.child.run`)."""
    from lm.step import refusal as step_refusal
    from lm.train import check_cell, resolve_device

    device = resolve_device(opts.device)
    host = platform.node()
    command = ["rnnbench", *train_args(spec, opts)]
    try:
        check_cell(spec.cell, device)
        why = step_refusal(spec.mode, device, spec.cell)
        if why:
            raise UsageError(why)
    except UsageError as exc:
        rec = finish(base_record(spec, opts, device, command), "unavailable", str(exc))
        return _done(Outcome(spec, "unavailable", str(exc), rec), opts, host, 1, None, command)
    except Exception as exc:  # the cell's module is broken (not merely missing a library): this run fails
        reason = f"checking the cell failed: {type(exc).__name__}: {exc}"
        rec = finish(base_record(spec, opts, device, command), "failed", reason)
        return _done(Outcome(spec, "failed", reason, rec), opts, host, 1, None, command)

    ckpt = checkpoint_file(spec, opts)
    attempt, resume = take_over(ckpt, opts.kill_grace)
    command = ["rnnbench", *train_args(spec, opts, checkpoint=ckpt)]
    scratch = Path(tempfile.mkdtemp(prefix="rnnbench-run-"))
    try:
        argv = train_args(spec, opts, results=scratch, checkpoint=ckpt) + (["--resume"] if resume else [])
        echo = "heartbeat" if opts.quiet or opts.side_by_side else "all"
        res = child.run([sys.executable, "-m", "bench.cli", *argv], echo=echo, timeout=opts.cell_timeout,
                        grace=opts.kill_grace, handle_signals=handle_signals, label=str(spec), stop=stop,
                        on_start=lambda pid: _claim(ckpt, pid, attempt))
        found = [r for r in records.load_runs(scratch) if r.get("status") in records.STATUSES]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rec = found[0] if found else None
    if rec is not None:
        rec.pop("_path", None)
    hint = f"; to continue: {env.relative_command(command, opts.cwd)} --resume" if ckpt.is_file() else ""
    seen = {"exit_code": res.returncode, "last_heartbeat": res.last_heartbeat, "stderr_tail": res.stderr_tail}
    if res.timed_out:
        beat = f"last heartbeat: {res.last_heartbeat}" if res.last_heartbeat else "no heartbeat seen"
        reason = f"ran past --cell-timeout {opts.cell_timeout:g} s and was ended with {res.ended_with}; {beat}{hint}"
        rec = finish(rec or base_record(spec, opts, device, command), "timeout", reason, **seen)
    elif rec is not None:
        if rec["status"] != "ok":
            rec.update({k: v for k, v in seen.items() if k not in rec})
        if rec["status"] == "interrupted" and res.stopped_by_user:
            rec["error"] = f"the sweep was interrupted; {rec.get('error')}{hint}"
    else:
        reason = child.exit_reason(res.returncode, res.stderr_tail)
        if res.stopped_by_user:
            reason = "interrupted by the user; " + reason
        rec = finish(base_record(spec, opts, device, command), "interrupted" if res.stopped_by_user else "failed",
                     reason + hint, **seen)
    out = Outcome(spec, rec["status"], rec.get("error"), rec, None, res.returncode, res.stopped_by_user)
    if out.status == "ok":
        for path in (ckpt, _owner_file(ckpt)):
            with contextlib.suppress(OSError):
                path.unlink()
    else:
        with contextlib.suppress(OSError):
            _owner_file(ckpt).unlink()
    return _done(out, opts, host, attempt, ckpt, command)


def _done(out: Outcome, opts: Options, host: str, attempt: int, ckpt: Path | None, command: list[str]) -> Outcome:
    # The run's own command (the child wrote into a scratch folder), relative to where the sweep started.
    out.record["command"] = env.relative_command(command, opts.cwd)
    out.record["sweep"] = {"id": opts.sweep_id, "engine": opts.engine, "jobs": opts.jobs, "host": host,
                           "attempt": attempt,
                           "checkpoint": str(ckpt) if ckpt is not None and ckpt.is_file() else None}
    return out
