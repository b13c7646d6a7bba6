"""``rnnbench sweep --engine ray``: every run a Ray task, run side by side on a Ray cluster.

Each (preset, cell, seed) run is one task (``bench.runs.execute`` in a Ray worker,
training in a child process as with the local engine) that asks for what it needs:
one GPU for a CUDA run, ``--threads`` CPUs (default 1, and the run is then given
``--threads 1``) for a CPU run.  Ray places the tasks on whatever node has them
free, so a multi-GPU machine trains one run per GPU and a cluster all its nodes.
The cluster is ``--ray-address``, else ``$RAY_ADDRESS``, else a new one on this
machine (shut down at the end); one this process has already joined is used as is.

Records: a task returns its run's record to this process, which writes it into the
one results folder (``lm.records.write_run``: atomic, under a lock) as it arrives; no
node but this one needs to see the results folder.  Checkpoints: each run writes
them to the sweep's checkpoint folder (``--checkpoint-dir``); a task whose worker
dies (killed, out of memory, node lost) is retried up to ``MAX_RETRIES`` times and
continues from its checkpoint with the same perplexities (see ``bench.runs``).  On a
cluster of several machines the checkpoint folder must be shared storage mounted at
the same path everywhere; otherwise each node checkpoints under its own temporary
folder and a retry on another node starts the run over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bench import runs
from bench.runs import Options, Outcome, RunSpec
from lm.errors import UsageError

MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray, which the README's install brings (pip install -e '.[test]'); "
                         "or use --engine local") from None
    return ray


def resources(opts: Options) -> dict:
    """What one run asks Ray for: a GPU for a CUDA run, ``--threads`` CPUs (default 1)."""
    return {"num_cpus": opts.threads or 1, "num_gpus": 1 if opts.device == "cuda" else 0}


def _nodes(ray, need: dict) -> list[dict]:
    """The cluster's live nodes that can hold one run."""
    return [n for n in ray.nodes() if n.get("Alive")
            and n["Resources"].get("CPU", 0) >= need["num_cpus"] and n["Resources"].get("GPU", 0) >= need["num_gpus"]]


def _check_device_name(opts: Options) -> None:
    if opts.device not in (None, "cpu", "cuda"):
        raise UsageError(f"--engine ray gives each run a GPU of its own: pass --device cuda or cpu, not {opts.device}")


def _choose_device(ray, opts: Options) -> None:
    if opts.device is None:
        opts.device = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    if opts.device == "cpu" and opts.threads is None:
        opts.threads = 1  # what the task asks Ray for, and what the run is told to use
    if not _nodes(ray, resources(opts)):
        have = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU"
                         for n in ray.nodes() if n.get("Alive")) or "no live node"
        raise UsageError(f"no node of the Ray cluster can run one {opts.device} run "
                         f"({resources(opts)['num_cpus']} CPU, {resources(opts)['num_gpus']} GPU); nodes: {have}")


def _task(spec: RunSpec, opts: Options) -> Outcome:
    return runs.execute(spec, opts, handle_signals=False)


def _measure(device: str, threads: int | None) -> dict | None:
    """The node's matmul rate, measured in a child process (a GPU is then released at once)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-m", "bench.machine", "--device", device], capture_output=True,
                          text=True, env=env)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return None


def measure_machines(ray, opts: Options) -> None:
    """One matmul measurement per node that can hold a run, saved for the report, before any run starts."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench import machine

    task = ray.remote(_measure)
    refs = [task.options(**resources(opts), scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"],
                                                                                             soft=False))
            .remote(opts.device, opts.threads) for n in _nodes(ray, resources(opts))]
    for m in ray.get(refs):
        if m:
            machine.save(m, opts.results)
        else:
            print("rnnbench sweep: warning: a node could not measure its matmul rate", file=sys.stderr)


def _driver_record(spec: RunSpec, opts: Options, status: str, reason: str) -> dict:
    """A record made here for a run whose task returned none; the node that ran it is unknown."""
    import torch

    command = ["rnnbench", *runs.train_args(spec, opts)]
    rec = runs.finish(runs.base_record(spec, opts, torch.device("cpu"), command), status, reason)
    rec["env"].update(device=opts.device, device_name="unknown (the Ray task ended without a record)",
                      gpu_model=None, hostname=None, torch_threads=opts.threads)
    rec["sweep"] = {"id": opts.sweep_id, "engine": "ray", "host": None, "attempt": None, "checkpoint": None}
    return rec


def _collect(ray, ref, spec: RunSpec, opts: Options) -> Outcome:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        reason = "interrupted by the user; the Ray task was cancelled"
        return Outcome(spec, "interrupted", reason, _driver_record(spec, opts, "interrupted", reason),
                       stopped_by_user=True, extra={"cancelled": True})
    except ray.exceptions.RayError as exc:  # the task raised, or its worker died more often than it is retried
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"the Ray task failed ({MAX_RETRIES} retries for a dead worker): {type(exc).__name__}: {first}"
        return Outcome(spec, "failed", reason, _driver_record(spec, opts, "failed", reason))


def _started(spec: RunSpec, opts: Options) -> bool:
    """Whether a run left a trace in the checkpoint folder (seen here when the folder is shared)."""
    ckpt = Path(opts.checkpoints) / f"{spec.slug}.pt"
    return ckpt.exists() or ckpt.with_name(ckpt.name + ".owner").exists()


def run(specs: list[RunSpec], opts: Options, address: str | None = None, measure: bool = True) -> list[Outcome]:
    """Run every spec as a Ray task; write each record as it comes back; return the outcomes in arrival order.

    Ctrl-C or SIGTERM cancels the tasks (their runs are asked to checkpoint and stop) and records the ones
    that had started as ``interrupted``."""
    from bench.sweep import progress_line, write

    _check_device_name(opts)
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot join the Ray cluster {address or os.environ.get('RAY_ADDRESS') or ''}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") \
                from None
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
    outcomes: list[Outcome] = []
    try:
        _choose_device(ray, opts)
        print(f"Ray cluster: {ray.cluster_resources().get('CPU', 0):g} CPU, {ray.cluster_resources().get('GPU', 0):g} "
              f"GPU; {len(specs)} run(s) of {resources(opts)} each", flush=True)
        if measure:
            measure_machines(ray, opts)
        task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_task)
        pending = {task.options(**resources(opts), name=f"rnnbench {spec}").remote(spec, opts): spec
                   for spec in specs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    outcomes.append(write(_collect(ray, ref, pending.pop(ref), opts), opts.results))
                    print(progress_line(len(outcomes), len(specs), outcomes[-1]), flush=True)
        except KeyboardInterrupt:
            print("rnnbench sweep: interrupted; cancelling the Ray tasks", file=sys.stderr, flush=True)
            for ref in pending:
                ray.cancel(ref)
            for ref, spec in pending.items():
                outcome = _collect(ray, ref, spec, opts)
                outcome.stopped_by_user = True
                if outcome.extra.get("cancelled") and not _started(spec, opts):
                    outcome.reason, outcome.record = "cancelled before it started (no record)", None
                else:
                    write(outcome, opts.results)
                outcomes.append(outcome)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if started_here:
            ray.shutdown()
    return outcomes
