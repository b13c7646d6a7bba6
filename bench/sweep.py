"""``rnnbench sweep``: one full training per (preset, cell, seed), each in its own process, then a summary.

The sweep's runs are the product of ``--config`` (one preset or several, comma-separated),
``--cells`` and ``--seeds``, each a :class:`bench.runs.RunSpec`.  Each trains in a child
``python -m bench.cli train ...`` (``bench.runs.execute``), so every record has its own peak
memory and a crash, an out-of-memory kill or a hang takes down only that child.  A
cell that cannot train on the device gets a record with status ``unavailable``; a child
that exits without a finished record gets a ``failed`` one with its exit code and the
tail of its stderr; a child past ``--cell-timeout`` is ended (SIGTERM, then SIGKILL)
and recorded as ``timeout`` with its last heartbeat.  Every record is written here,
into the one results folder, as its run ends.

Engines: ``local`` (the default) runs one child after another on this machine, or up to
``--jobs`` at once (CPU runs then take one thread each unless ``--threads`` says otherwise);
``ray`` (``bench.ray_engine``) runs them as Ray tasks side by side on a Ray cluster.  Runs
side by side share their machine (and a GPU named by several): their words/sec are not the
machine's best, and the report marks each with how many others trained beside it.
The device's matmul rate is measured first, for the report's FLOP/s fractions.

Exit status: 0 when every run that was asked for by name (or, for ``--cells all``, every
run of a cell that can train here) finished ``ok``; 1 otherwise; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cells
from bench import runs
from bench.runs import Options, Outcome, RunSpec
from lm import config as lm_config
from lm import data, records
from lm.errors import UsageError

# Statuses a run can end with that mean it did not train to the end.
FAILED = ("failed", "oom", "diverged", "interrupted", "timeout")
MAX_JOBS = 64  # --jobs: runs at once on one machine


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


def parse_presets(spec: str, epochs: int | None) -> list[str]:
    """One preset or several, comma-separated; each is checked (with the ``--epochs`` override) now."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise UsageError(f"--config is empty; give presets from: {', '.join(lm_config.PRESETS)}")
    for name in names:
        lm_config.preset(name, epochs=epochs)
    return names


def parse_modes(spec: str) -> list[str]:
    """One step mode or several, comma-separated (``lm.step.MODES``)."""
    from lm.step import MODES

    modes = list(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise UsageError(f"--steps {spec!r}: give one or more of {', '.join(MODES)}")
    return modes


def plan(presets: list[str], names: list[str], seeds: list[int], modes: tuple[str, ...] = ("eager",)) -> list[RunSpec]:
    """Every run of the sweep, in the order the local engine runs them: per preset, per seed, per mode, every
    cell."""
    return [RunSpec(p, c, s, m) for p in presets for s in seeds for m in modes for c in names]


def options(args: argparse.Namespace) -> Options:
    """The parsed ``rnnbench sweep`` arguments, checked, as the Options every run shares."""
    for name, value, low in (("--max-steps", args.max_steps, 1), ("--max-eval-words", args.max_eval_words, 1),
                             ("--epochs", args.epochs, 1),
                             ("--cell-timeout", args.cell_timeout, 1e-9), ("--kill-grace", args.kill_grace, 0),
                             ("--heartbeat", args.heartbeat, 0), ("--checkpoint-every", args.checkpoint_every, 0)):
        if value is not None and not (math.isfinite(value) and value >= low):
            raise UsageError(f"{name} must be a finite number {'> 0' if low else '>= 0'}, got {value}")
    if args.ray_address is not None and args.engine != "ray":
        raise UsageError(f"--ray-address goes with --engine ray (this sweep's engine: {args.engine})")
    jobs = getattr(args, "jobs", 1)
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be 1 to {MAX_JOBS}, got {jobs}")
    if jobs > 1 and args.engine != "local":
        raise UsageError("--jobs is for the local engine; Ray runs as many at once as the cluster has room for")
    sweep_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    results = Path(args.results).resolve()
    checkpoints = Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else results / "checkpoints"
    return Options(results=str(results), checkpoints=str(checkpoints / f"sweep-{sweep_id}"), sweep_id=sweep_id,
                   engine=args.engine, device=args.device, dtype=args.dtype, fp32_matmul=args.fp32_matmul,
                   epochs=args.epochs,
                   max_steps=args.max_steps, max_eval_words=args.max_eval_words, no_verify=args.no_verify,
                   quiet=args.quiet,
                   data_dir=str(Path(args.data_dir).resolve()) if args.data_dir and args.engine == "ray" else
                   args.data_dir,  # a Ray worker's working directory is not ours
                   threads=args.threads, heartbeat=args.heartbeat, checkpoint_every=args.checkpoint_every,
                   cell_timeout=args.cell_timeout, kill_grace=args.kill_grace, cwd=os.getcwd(), jobs=jobs)


def refuse_modes(modes: list[str], device: str | None) -> None:
    """A step mode the device cannot run at all is bad input, as ``rnnbench train`` refuses it (exit 2); a cell that
    cannot be captured still gets its ``unavailable`` record."""
    if "cuda-graph" in modes and device is not None and not device.startswith("cuda"):
        raise UsageError(f"--steps cuda-graph needs a CUDA device (this sweep is on {device}); use eager or compile")


def write(outcome: Outcome, results: str | Path) -> Outcome:
    """Write the outcome's record into the sweep's results folder (atomically, under its lock)."""
    outcome.path = str(records.write_run(results, outcome.record))
    return outcome


def progress_line(i: int, n: int, outcome: Outcome) -> str:
    return f"[{i}/{n}] {outcome.spec}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")


def run_local(specs: list[RunSpec], opts: Options) -> list[Outcome]:
    """The local engine: one run after another on this machine; stops when the user interrupts one."""
    outcomes = []
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {spec}: {spec.preset}, {opts.epochs or 'preset'} epoch(s) on {opts.device}",
              flush=True)
        outcome = write(runs.execute(spec, opts), opts.results)
        outcomes.append(outcome)
        print(progress_line(i, len(specs), outcome), flush=True)
        if outcome.stopped_by_user:
            break
    return outcomes


def run_parallel(specs: list[RunSpec], opts: Options) -> tuple[list[Outcome], bool]:
    """The local engine with ``--jobs`` above 1: up to that many runs at once, each in its own process, started in
    the sweep's order as others end; records are written as runs end.  Ctrl-C or SIGTERM: no run starts any more and
    every running one is asked to checkpoint and stop after its current step (a second: at once), recorded
    ``interrupted``; runs that never started get no record.  Returns the outcomes and whether the user stopped it."""
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from bench.child import StopRequests

    stop, lock, outcomes, started = StopRequests(), threading.Lock(), [], [0]
    devices = spread_over(opts.device)
    running = dict.fromkeys(devices, 0)  # runs under way per device

    def one(spec: RunSpec) -> Outcome | None:
        with lock:
            if stop.count:
                return None  # (the user asked to stop before this run's turn)
            started[0] += 1
            i = started[0]
            device = min(devices, key=lambda d: running[d])  # (the first of the least busy)
            running[device] += 1
        try:
            print(f"[start {i}/{len(specs)}] {spec}: {spec.preset}, {opts.epochs or 'preset'} epoch(s) on {device}",
                  flush=True)
            mine = opts if device == opts.device else dataclasses.replace(opts, device=device)
            return runs.execute(spec, mine, handle_signals=False, stop=stop)
        finally:
            with lock:
                running[device] -= 1

    def on_signal(signum, frame) -> None:  # (no exception: the loop below must not lose a finished run's record)
        stop.request(signum)
        print(f"rnnbench sweep: {signal.Signals(signum).name}: "
              f"{'the running runs checkpoint and end after their step' if stop.count == 1 else 'ending the runs now'}"
              "; no other run starts", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(max_workers=opts.jobs, thread_name_prefix="rnnbench-run") as pool:
            pending = {pool.submit(one, spec) for spec in specs}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    outcome = fut.result()
                    if outcome is not None:
                        outcomes.append(write(outcome, opts.results))
                        print(progress_line(len(outcomes), len(specs), outcome), flush=True)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return outcomes, stop.count > 0


def spread_over(device: str) -> list[str]:
    """The devices a parallel local sweep gives its runs: every GPU for ``cuda`` on a machine with several (``cuda:0``,
    ``cuda:1``, ...; a run starts on the one with the fewest runs under way, as Ray gives each run a GPU of its own),
    else ``device`` itself."""
    if device == "cuda":
        import torch

        n = torch.cuda.device_count()
        if n > 1:
            return [f"cuda:{k}" for k in range(n)]
    return [device]


def _prepare_local(opts: Options, presets: list[str]) -> None:
    """The device must be here; the data is located (downloading if needed) and checked once, not per child, and its
    streams against every preset's batches and windows (with ``--max-steps`` and ``--max-eval-words``), so that a
    setting no run could train with is one error now, not a failed record per run."""
    import torch

    from lm.train import check_numerics, check_streams, resolve_device

    opts.device = str(resolve_device(opts.device))
    if opts.jobs > 1 and opts.device == "cpu" and opts.threads is None:
        opts.threads = 1  # (as the Ray engine's CPU tasks: N runs of all cores each would fight over them)
    check_numerics(torch.device(opts.device), getattr(torch, opts.dtype), opts.fp32_matmul)  # not once per run
    corpus = data.load(opts.data_dir, check_md5=not opts.no_verify)
    for name in presets:
        try:
            check_streams(lm_config.preset(name, epochs=opts.epochs), corpus, opts.max_steps, opts.max_eval_words)
        except UsageError as exc:
            raise UsageError(f"preset {name}: {exc}") from None
    if opts.data_dir is None:
        opts.data_dir = corpus.folder


def measure_machine(opts: Options) -> None:
    """The device's matmul rate, for the report; for a GPU in a child, so this process never holds GPU memory."""
    if opts.device == "cpu":
        import torch

        from bench import machine

        threads = torch.get_num_threads()
        if opts.threads:
            torch.set_num_threads(opts.threads)  # measured with the runs' thread count
        try:
            machine.save(machine.measure("cpu"), opts.results)
        finally:
            torch.set_num_threads(threads)
        return
    cmd = [sys.executable, "-m", "bench.machine", "--device", opts.device, "--results", opts.results]
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
        rows.append([o.spec.preset, o.cell, o.spec.seed, o.status, len(epochs), last.get("valid_ppl"),
                     rec.get("test_ppl"), rec.get("words_per_sec"), peak / 2**20 if peak else None,
                     (rec.get("wall_seconds") or 0) / 60 if rec.get("wall_seconds") else None,
                     (o.reason or "")[:100]])
    return rows


def sweep(args: argparse.Namespace) -> int:
    """Run the sweep described by the parsed ``rnnbench sweep`` arguments; returns the exit status."""
    from tabulate import tabulate

    from lm.cli import seeds_of

    names = parse_cells(args.cells)
    explicit = args.cells.strip() != "all"
    modes = parse_modes(args.steps)
    presets = parse_presets(args.config, args.epochs)
    specs = plan(presets, names, seeds_of(args), modes)
    opts = options(args)
    records.ensure_writable(opts.results)
    records.usable_folder(Path(opts.checkpoints).parent,
                          "--checkpoint-dir" if args.checkpoint_dir else "checkpoint folder")
    # the default folder, or one this sweep makes: removed at the end when no run left a checkpoint in it
    ours = not args.checkpoint_dir or not Path(opts.checkpoints).parent.exists()
    t0, stopped = time.perf_counter(), False
    if opts.engine == "ray":
        from bench import ray_engine

        refuse_modes(modes, opts.device)
        outcomes = ray_engine.run(specs, opts, args.ray_address, measure=not args.no_measure)
    else:
        _prepare_local(opts, presets)
        refuse_modes(modes, opts.device)
        if not args.no_measure:
            measure_machine(opts)
        if opts.jobs > 1:
            outcomes, stopped = run_parallel(specs, opts)
        else:
            outcomes = run_local(specs, opts)
    with contextlib.suppress(OSError):
        Path(opts.checkpoints).rmdir()  # empty when every run ended ok
        if ours:
            Path(opts.checkpoints).parent.rmdir()

    print()
    print(tabulate(summary_rows(outcomes), floatfmt=".4g",
                   headers=["preset", "cell", "seed", "status", "epochs", "valid ppl", "test ppl", "words/sec",
                            "peak MiB", "wall min", "reason"]))
    print(f"\n{len(outcomes)} of {len(specs)} run(s) in {(time.perf_counter() - t0) / 60:.1f} min; "
          f"records in {Path(opts.results) / 'runs'}")
    failed = [o for o in outcomes if o.status in FAILED or (explicit and o.status == "unavailable")]
    skipped = [o for o in outcomes if o.status == "unavailable" and o not in failed]
    if skipped:
        print("not trainable here: " + "; ".join(sorted({f"{o.cell} ({o.reason})" for o in skipped})))
    if failed:
        print("FAILED: " + "; ".join(f"{o.spec}: {o.status} ({o.reason})" for o in failed))
    if stopped or any(o.stopped_by_user for o in outcomes):
        print("sweep interrupted; the remaining runs were not run")
        return 130
    return 1 if failed else 0
