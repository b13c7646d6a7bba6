"""``rnnbench sweep``: one full training per cell, each in its own process, then a summary.

Each cell trains in a child ``python -m lm.cli train ...`` with the sweep's
arguments, so every record has its own peak memory and a crash, an out-of-memory
kill or a hang interrupted by the user takes down only that child.  Before a
child starts, the cell is checked here: a cell that cannot train on the device
gets a record with status ``unavailable`` and the reason.  A child that exits
without a finished record gets a ``failed`` record with its exit code and the
tail of its stderr.  The device's matmul rate is measured once, first (for a GPU
in a child, ``python -m bench.machine``), for the report's FLOP/s fractions.

Exit status: 0 when every cell that was asked for by name (or, for ``all``, every
cell that can train here) finished ``ok``; 1 otherwise; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cells
from lm import config as lm_config
from lm import data, records
from lm.env import relative_command
from lm.errors import UsageError
from lm.train import check_cell, new_record, resolve_device

# Statuses a child's record can end with that mean the cell did not train to the end.
FAILED = ("failed", "oom", "diverged", "interrupted")
TAIL_BYTES = 4000


@dataclass
class Outcome:
    cell: str
    status: str
    reason: str | None = None
    record: dict | None = None
    path: str | None = None
    returncode: int | None = None
    stopped_by_user: bool = False


def parse_cells(spec: str) -> list[str]:
    """``all`` (every registered cell) or comma-separated names; unknown names are a UsageError listing the known."""
    if spec.strip() == "all":
        return cells.names()
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise UsageError(f"--cells is empty; give all or names from: {', '.join(cells.names())}")
    unknown = [n for n in names if n not in cells.REGISTRY]
    if unknown:
        raise UsageError(f"unknown cell(s) {', '.join(unknown)}; known cells: {', '.join(cells.names())}")
    return names


def train_args(cell: str, args: argparse.Namespace) -> list[str]:
    """The ``train`` arguments of one child (everything after ``python -m lm.cli``)."""
    out = ["train", "--cell", cell, "--config", args.config, "--device", args.device, "--results", str(args.results),
           "--seed", str(args.seed), "--dtype", args.dtype]
    for flag, value in (("--epochs", args.epochs), ("--max-steps", args.max_steps), ("--data-dir", args.data_dir)):
        if value is not None:
            out += [flag, str(value)]
    if args.no_verify:
        out.append("--no-verify")
    if args.quiet:
        out.append("--quiet")
    return out


def _base_record(cfg: lm_config.Config, cell: str, device, seed: int, command: list[str]) -> dict:
    return new_record(cfg, cell, device, seed, command)


def _finish(rec: dict, status: str, error: str, **extra) -> dict:
    rec.update(status=status, error=error, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               load_average_end=os.getloadavg(), **extra)
    return rec


def _run_child(cmd: list[str], echo: bool) -> tuple[int, str, bool]:
    """Run ``cmd``, passing its stderr through (when ``echo``) and keeping its tail.

    The child runs in its own session, so a Ctrl-C reaches only the sweep, which hands
    it on once per press: the first asks the child to stop after its current step and
    write its record (see ``lm.train.stop_requests``), a second stops it at once.
    SIGTERM to the sweep is handed on the same way.  Returns (exit status, stderr tail,
    whether the user asked to stop)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
    tail, stopped = bytearray(), False

    def hand_on(signum, frame):
        nonlocal stopped
        stopped = True
        if proc.poll() is None:
            proc.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, hand_on) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        fd = proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            if echo:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            tail += chunk
            del tail[:-TAIL_BYTES]
        proc.stderr.close()
        rc = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return rc, tail.decode("utf-8", "replace"), stopped


def _child_record(results: Path, before: set[str], cell: str, command: str, since: str) -> dict | None:
    """The record our child wrote: new since ``before``, for ``cell``, by exactly ``command``, started at or after
    ``since`` (another sweep may be writing into the same folder); the earliest such, or None."""
    found = [r for r in records.load_runs(results) if r["_path"] not in before and r.get("cell") == cell
             and r.get("command") == command and str(r.get("started") or "") >= since]
    return min(found, key=lambda r: str(r.get("started"))) if found else None


def _exit_reason(rc: int, tail: str) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        what = f"killed by {name}" + (" (on Linux often the out-of-memory killer)" if name == "SIGKILL" else "")
    else:
        what = f"exited with status {rc}"
    lines = [ln for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return f"training process {what}" + (f"; last stderr line: {lines[-1].strip()}" if lines else "")


def run_cell(cell: str, args: argparse.Namespace, cfg: lm_config.Config, device) -> Outcome:
    """Check, then train one cell in a child process; make sure it ends with a record."""
    results = Path(args.results)
    targs = train_args(cell, args)
    command = relative_command(["rnnbench", *targs])  # as the child's record states it
    try:
        check_cell(cell, device)
    except UsageError as exc:
        rec = _finish(_base_record(cfg, cell, device, args.seed, ["rnnbench", *targs]), "unavailable", str(exc))
        path = records.write_run(results, rec)
        return Outcome(cell, "unavailable", str(exc), rec, str(path))
    except Exception as exc:  # the cell's module is broken (not merely missing a library): this cell fails
        reason = f"checking the cell failed: {type(exc).__name__}: {exc}"
        rec = _finish(_base_record(cfg, cell, device, args.seed, ["rnnbench", *targs]), "failed", reason)
        path = records.write_run(results, rec)
        return Outcome(cell, "failed", reason, rec, str(path))

    before = {r["_path"] for r in records.load_runs(results)}
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rc, tail, interrupted = _run_child([sys.executable, "-m", "lm.cli", *targs], echo=not args.quiet)
    rec = _child_record(results, before, cell, command, since)
    if rec is not None and rec.get("status") in records.STATUSES:
        rec.pop("_path", None)
        return Outcome(cell, rec["status"], rec.get("error"), rec, rec.get("record_path"), rc, interrupted)
    reason = _exit_reason(rc, tail)
    if interrupted:
        reason = "interrupted by the user; " + reason
    status = "interrupted" if interrupted else "failed"
    if rec is not None:  # a record the child never finished (killed mid-run): finish it, same run id
        rec.pop("_path", None)
        rec = _finish(rec, status, reason, exit_code=rc, stderr_tail=tail)
    else:
        rec = _finish(_base_record(cfg, cell, device, args.seed, ["rnnbench", *targs]), status, reason,
                      exit_code=rc, stderr_tail=tail)
    path = records.write_run(results, rec)
    return Outcome(cell, status, reason, rec, str(path), rc, interrupted)


def _measure_machine(args: argparse.Namespace) -> None:
    """The device's matmul rate, for the report; for a GPU in a child, so this process never holds GPU memory."""
    if args.device == "cpu":
        from bench import machine

        machine.save(machine.measure("cpu"), args.results)
        return
    cmd = [sys.executable, "-m", "bench.machine", "--device", args.device, "--results", str(args.results)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"rnnbench sweep: warning: could not measure the matmul rate: {proc.stderr.strip()[-300:]}",
              file=sys.stderr)


def summary_rows(outcomes: list[Outcome]) -> list[list]:
    rows = []
    for o in outcomes:
        rec = o.record or {}
        epochs = rec.get("epochs") or []
        last = epochs[-1] if epochs else {}
        peak = rec.get("peak_memory_bytes")
        rows.append([o.cell, o.status, len(epochs), last.get("valid_ppl"), rec.get("test_ppl"),
                     rec.get("words_per_sec"), peak / 2**20 if peak else None,
                     (rec.get("wall_seconds") or 0) / 60 if rec.get("wall_seconds") else None,
                     (o.reason or "")[:100]])
    return rows


def sweep(args: argparse.Namespace) -> int:
    """Run the sweep described by the parsed ``rnnbench sweep`` arguments; returns the exit status."""
    from tabulate import tabulate

    names = parse_cells(args.cells)
    explicit = args.cells.strip() != "all"
    cfg = lm_config.preset(args.config, epochs=args.epochs)
    device = resolve_device(args.device)
    args.device = str(device)
    if args.max_steps is not None and args.max_steps <= 0:
        raise UsageError(f"--max-steps must be a positive integer, got {args.max_steps}")
    records.ensure_writable(args.results)
    folder = data.locate(args.data_dir)  # once here (downloading if needed), not in every child
    if not args.no_verify:
        for name in data.FILES:
            data.verify(folder / name)
    if args.data_dir is None:
        args.data_dir = str(folder)

    _measure_machine(args)
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    for i, cell in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {cell}: {cfg.name}, {cfg.epochs} epoch(s) on {device}", flush=True)
        outcome = run_cell(cell, args, cfg, device)
        outcomes.append(outcome)
        print(f"[{i}/{len(names)}] {cell}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""),
              flush=True)
        if outcome.stopped_by_user:
            break

    print()
    print(tabulate(summary_rows(outcomes), floatfmt=".4g",
                   headers=["cell", "status", "epochs", "valid ppl", "test ppl", "words/sec", "peak MiB", "wall min",
                            "reason"]))
    print(f"\n{len(outcomes)} of {len(names)} cell(s) in {(time.perf_counter() - t0) / 60:.1f} min; "
          f"records in {Path(args.results) / 'runs'}")
    failed = [o for o in outcomes if o.status in FAILED or (explicit and o.status == "unavailable")]
    skipped = [o for o in outcomes if o.status == "unavailable" and o not in failed]
    if skipped:
        print("not trainable here: " + "; ".join(f"{o.cell} ({o.reason})" for o in skipped))
    if failed:
        print("FAILED: " + "; ".join(f"{o.cell}: {o.status} ({o.reason})" for o in failed))
    if any(o.stopped_by_user for o in outcomes):
        print("sweep interrupted; the remaining cells were not run")
        return 130
    return 1 if failed else 0
