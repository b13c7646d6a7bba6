"""The prepared GPU check, and the timing part that follows it: each one call of at most 6 minutes.

Usage (from the repository root; nothing is installed, the checkout is put on PYTHONPATH)::

    bash bench/gpu_session.sh PTB_DIR OUT TARBALL         # a session's device work in one call: both parts, packed
    bash bench/gpu_check.sh PTB_DIR OUT                   # the check, on a GPU machine
    bash bench/gpu_check.sh --perf PTB_DIR OUT            # then the timings, with what the session has left
    bash bench/gpu_check.sh --full [--full-cells C] PTB_DIR OUT  # or: medium's 39 epochs for C, then small's 13
                                                          # for triton_lstm (one call after the check, <= 9 min)
    bash bench/gpu_check.sh --dry-run [--perf] PTB_DIR OUT  # the same steps on the CPU at tiny sizes (CI)
    python -m bench.gpu_check merge OUT results           # fold the output into results/ (and print the searches'
                                                          # winners as tile-table lines), then `rnnbench report`

Steps, most valuable first, each with its own time limit (``LIMITS``), all within one budget of ``BUDGET_S``
(a step gets at most what is left of it, less what the report needs); each writes its output as
soon as it finishes, a failing or timed-out step is recorded in ``gpu/<slug>/steps.json``
(``perf-steps.json``) and the run goes on.  A pytest step stopped at its limit keeps what it finished (the benchmarks'
JSON, the tests' junit XML: :func:`run_step` stops it with SIGINT).

The check (correctness, and a finished training record for every cell):

1. ``env``    GPU, driver, CUDA, cuDNN, torch and triton versions; measured matmul rate and bandwidth.
2. ``tests``  the correctness tests on CUDA (``-m gpu``): every cell against the float64 reference,
              the Triton kernels compiled, not interpreted (the compiled cells at one shape, and under
              torch.compile's CUDA graphs: ``reduce-overhead``).
3. ``train-small``       one epoch of the small preset for the fast cells (``FAST_CELLS``);
   ``train-medium``      one epoch of the medium preset for ``cudnn_lstm`` and ``triton_lstm``;
   ``train-small-slow``  every other cell for ``SLOW_STEPS`` steps, evaluated on the first
                         ``SLOW_EVAL_WORDS`` words of each stream (the record and the report say so),
                         all at once (``rnnbench sweep --jobs``: what these runs check is that each
                         cell trains on CUDA; their start-ups, compiling and launch-bound steps are
                         host work that the machine's cores do side by side, and the report marks
                         their words/sec ``beside N``)
   (run records, via ``rnnbench sweep``; each child under ``--cell-timeout``, so one stuck cell is
   recorded as ``timeout`` with its last heartbeat and the others still train).  A training step whose sweep
   exits 0 still fails when a run it wrote evaluated to a non-finite perplexity, or worse than twice a uniform
   guess over the vocabulary and worse than any of its own training windows (:func:`implausible`: a cell that
   computes the wrong function can finish a run); worse than that after training that spiked as far is a warning.
4. ``report`` ``rnnbench report`` over what the check produced.

The timings (``--perf``), most decisive first: a session whose budget ends early has measured, searched and
benchmarked what it found (steps past the budget are skipped and recorded so; give ``--budget`` what the session has):

1. ``env`` as above (a later call may get another machine).
2. ``bench``          the micro-benchmarks at the PTB shapes for every cell but the compiled ones
                      (``bench/<slug>/micro.json``), at the tables' tiles.
3. ``ncu``            where ``ncu`` is on the PATH: Nsight Compute's speed-of-light, warp-stall, memory and
                      bank-conflict sections for the large layer's forward and backward kernels of both cells in
                      float32 and bfloat16 at the table's tiles (``perf-ncu.log``);
   ``ncu-source``     the warp stalls by SASS line of the LSTM's large float32 forward (``perf-ncu-source.log``).
4. ``tune``           the tile search at medium and large, both cells, float32 and bfloat16, those furthest behind
                      their targets first (``SEARCHES``; :mod:`cells.triton_lstm.tune`; ``gpu/<slug>/tiles.json``),
                      varying the fields no GPU has searched yet (``TUNE_FIELDS``); its candidates compile side by side
                      ahead of their timing (:class:`cells.triton_lstm.precompile.Ahead`).  It is told what its step
                      may take (``--time-limit``; so is ``tune-small``), so a budget that ends mid-search still has that
                      search's best timed, and it leaves ``bench-tuned`` that step's limit when that is to run.  A
                      candidate whose kernels never return (``tune.HUNG_S``) ends the search's process (exit 3), and
                      the step runs it again with ``--after-hang`` and what its limit leaves: the searches that named
                      their best are kept, the others go on without that tile (each run a log, ``tune-2.log``, ...).
5. ``bench-tuned``    the micro-benchmarks' fwd+bwd (eager and as one CUDA graph) and LM step (eager; at small also
                      as one CUDA graph) of the cuDNN and Triton cells at every preset with the searches' winners
                      before the tile tables (``--bench-tiles``; ``gpu/<slug>/tuned.json``),
   ``bench-tuned-bf16`` the same in bfloat16, eager (``tuned-bf16.json``): what a session's search found, measured as
                      the tables' entries are, so it can be committed with its figures; skipped when no search named
                      a winner.
6. ``bench-graphs``   fwd+bwd of the cuDNN and Triton cells as one CUDA graph at every preset (``graphs.json``): the
                      kernels' own time, without the host's share of an eager call.
7. ``tune-small``     the tile search at small over every field, ``triton_lstm`` in float32 only
                      (``gpu/<slug>/tiles-small.json``; a ``bench-tuned`` after it times its winner; the session's
                      default runs it before ``tune``: small's target is the nearest, and it was never searched).
8. ``probe``          where a ``triton_lstm`` and a ``triton_gru`` step's time goes at large: each kernel timed whole,
                      without its recurrent matmul, without its grid barrier, pipelined, with the reduction split 4
                      ways, on the tensor cores (tf32x3, tf32), ... (:mod:`cells.triton_lstm.probe`;
                      ``gpu/<slug>/probe.json``).
9. ``bench-modes``    the LM step at small, eager and as one CUDA graph, in one run (``modes.json``).
10. ``bench-compiled`` forward+backward of the compiled cells beside the loop cells they compile (``compiled.json``);
   ``bench-compiled-graphs`` the same at small with ``--bench-compile-mode reduce-overhead`` (torch.compile's CUDA
   graphs; ``gpu/<slug>/compiled-reduce-overhead.json``, apart from the report).
11. ``bench-bf16``    forward+backward and the LM step in bfloat16 for the cuDNN and Triton cells at the tables'
                      tiles (``bf16.json``; in the report as their own columns, ratios within the dtype).
12. ``bench-tf32``    the same in float32 with every matmul in TF32 (``--bench-fp32-matmul tf32``; ``tf32.json``):
                      cuDNN as torch's defaults run its RNNs, the Triton cells on their TF32 tensor-core path.
13. ``report``.

The full schedule (``--full``, instead of the timings; budget ``FULL_BUDGET_S``): ``env``, ``train-full`` -- the
medium preset's 39 epochs for ``--full-cells`` (default ``cudnn_lstm``), the training step as one CUDA graph, one run
after another, each under a ``--cell-timeout`` of what the budget leaves --, ``train-full-small`` -- the small
preset's 13 epochs for ``FULL_SMALL_CELLS`` (``triton_lstm``: the LSTM cell that cannot train on a CPU) likewise,
with what is left -- and ``report``.  The paper's and the tutorial's perplexities (medium 82.7, 82.07; small 114.5,
115.91) are the comparison; the check before it and such a call fill a session.

``--steps NAMES`` runs only the named steps of the part, in the order named (``env`` first and ``report`` last all
the same): a session with less device time than the whole part chooses what it measures, e.g. ``--perf --steps
tune,tune-small,bench-tuned`` so that the benchmark of the searches' winners also times small's.

Checkpoints the sweeps write are scratch: they are deleted at the end (``OUT`` is meant to be shipped).

``OUT`` is laid out like ``results/`` (``runs/``, ``bench/<slug>/``, ``machine/``, and ``gpu/<slug>/``
for the environment, test logs and step statuses), so merging is copying; the report then
shows the GPU's numbers beside the CPU's, never mixing devices in a ratio.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lm.records import SPIKE_FACTOR

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 355  # the whole check, on one H100 or H200
# --full: the medium preset's 39 epochs for these cells (issue: full-length training on the GPU), in one call of at
# most FULL_BUDGET_S (a call may run 10 minutes; the check's 6 do not bind it).  cudnn_lstm alone by default: with the
# check before it, a session's 15 device minutes hold one such run.
FULL_CELLS = "cudnn_lstm"
# ... then the small preset's 13 epochs for these (train-full-small): the LSTM cell that cannot train on a CPU, whose
# full small run the "every LSTM cell at small" needs.  On the H200 its LM step took 1.87 ms as one CUDA graph
# (modes.json, 2026-11-28): 13 x 2323 steps ~ 60 s, with start-up and 14 evaluations ~ 100 s (untimed so).
FULL_SMALL_CELLS = "triton_lstm"
FULL_BUDGET_S = 540
REPORT_RESERVE_S = 20
# What a self-stopping step (Step.time_limit_flag) keeps of its limit for finishing: the candidate under way when its
# time is up (a tile search's: 1-3 s once compiled), writing its records, and leaving the process.
TIME_LIMIT_MARGIN_S = 15
AFTER_HANG_MIN_S = 30  # a search continued after a hang needs its process start-up and a few candidates
HUNG_EXIT = 3  # cells.triton_lstm.tune.HUNG_EXIT (not imported here: it imports torch and triton)
# Cells that train one epoch of small in seconds on a GPU; every other registered cell runs SLOW_STEPS steps.
FAST_CELLS = ("cudnn_lstm", "cudnn_gru", "triton_lstm")
SLOW_STEPS = 100
SLOW_JOBS = 8  # the slow cells' runs at once (train-small-slow); the GPU machines have 16 cores
SLOW_EVAL_WORDS = 4096
# pytest-xdist processes for the CUDA tests, where it is installed.  The step is mostly Triton compiling, one kernel at
# a time per process, on a 16-core machine: 54 Triton tests (2026-11-28), most at their own shape, so ~100 distinct
# kernels at ~1-2 s each (the PTB-shape ones 1.3-1.6 s on one core of this project's CPU machines, Triton 3.6).  Eight
# processes rather than four (untimed: the GPU machines have the cores, and each process holds one CUDA context).
TEST_WORKERS = 8
# Per-step limits on one H100/H200.  Measured on an H200 (2026-11-28, ea67f19, results/gpu/cuda-nvidia-h200/
# steps.json and perf-steps.json): the check 327 s of the 355 -- env 6, tests 43 (8 xdist workers, 120 tests), small
# 76 (three cells, one epoch each), medium 53, the seven other cells 136 (100 steps and 4096 words each; the two
# compiled cells 18 and 26 s of it), report 6.  The timings at --budget 400, 308 s: env 6, bench 51, probe 24,
# tune 118 (all eight searches, 2 s under its old limit of 120: now 140), bench-modes 15, bench-compiled 50 at its
# old limit of 50 s (it had written its JSON; inductor compiling the small and medium graphs fresh: the same
# benchmarks took 13 s of pytest each with a warm cache, so 75 leaves room), ncu 9, bench-bf16 30, report 5.  The
# tile search has two more fields since (outer products, forward and backward; float32): 170; and the backward's own K
# loop (launch.BWD_FIELDS): it now varies only those that no H200 has searched yet (TUNE_FIELDS), from the measured
# entries -- about as many candidates as the first search's eight fields had.  Outer products in the shapes whose K
# loops read no shared memory (tune.OUTER_NO_SHARED, 2026-11-28) add two candidates to each outer field and up to
# six more to the backward's stages, K tile and split: 20-36 more in the four float32 searches, ~0.7 s each: 200.
# Longer outer trips (OUTER_NO_SHARED's 64 k, outer split_k up to 16 / 32, 2026-11-28): ~16-24 more: 215.  Units
# again (grids of up to 4 and 2 programs an SM, launch.Tile.per_sm, 2026-11-29): 2-3 more a search, the first field,
# so the rest build on the winner; the recurrent matmuls as exchanges of shares (launch.Tile.exchange, exchange_bwd): 5
# more in each of the eight searches: about 38 candidates a search, 300.  The probe (large, both cells) gains four
# variants a kernel (exchange, exchange-outer, exchange-16, narrow): 24 -> about 45 s, so 90.  bench-tuned (never run
# on a GPU yet): 40 benchmarks -- fwd+bwd eager and as a graph and the LM step at every preset, small's step as a graph,
# four cells -- at about 1 s each, as the 51 s of bench's ~96 suggest, with some room (a pytest step stopped at its
# limit keeps what it finished: run_step): 75.  tune-small, float32 only: 60.
LIMITS = {"env": 20, "tests": 110, "train-small": 95, "train-medium": 60, "train-small-slow": 150,
          "bench": 100, "probe": 90, "ncu": 50, "ncu-source": 40, "tune": 300, "tune-small": 60, "bench-tuned": 75,
          "bench-tuned-bf16": 45, "bench-modes": 45, "train-full": 600, "train-full-small": 180,
          "bench-graphs": 45, "bench-compiled": 75, "bench-compiled-graphs": 75, "bench-bf16": 45, "bench-tf32": 45,
          "report": REPORT_RESERVE_S}
# The fields the check's tile search varies (cells.triton_lstm.tune --fields): those no GPU has searched yet, from the
# table's measured entries (the others were searched on an H200 on 2026-11-28, results/gpu/cuda-nvidia-h200/
# tiles.json).  Widen it to every field (drop --fields) when the table's entries change by other means.
# (fuse_gates: new to the GRU, two candidates for the LSTM; round_da_bwd and transposed_bwd: new, the backward's
# matmul on dA rounded to 16 bits, and on W_hh^T; units: new grids of more programs than SMs, launch.Tile.per_sm;
# exchange, exchange_bwd: new, the recurrent matmuls as exchanges of shares, launch.Tile.exchange.)
TUNE_FIELDS = ("units", "exchange", "exchange_bwd", "fuse_gates", "fuse_gates_bwd", "round_da_bwd", "transposed_bwd",
               "outer", "outer_bwd", "stages_k_bwd", "split_k_bwd", "num_warps_bwd")
# The medium and large searches (tune --searches CELL:PRESET:DTYPE), in order: a step cut at its limit has searched the
# first.  triton_lstm before triton_gru (issue 10 before 14), and within each the furthest behind its target first, by
# the H200's figures of 2026-11-28 (fwd+bwd against the micro-benchmarks' cuDNN cell: docs/triton.md): the LSTM at
# medium in float32 0.86x (a cheap search, ~1/3 of a large one's time, and the nearest to its target), large float32
# 0.54x, large bfloat16 0.84x; the GRU at large float32 0.41x, bfloat16 0.68x; then those that meet their target
# (>= 1.0x: GRU medium float32 1.18x, LSTM and GRU medium bfloat16 1.40x and 1.41x).  Before, every float32 search
# ran first, so the third in line was the GRU's medium float32, which meets its target.
SEARCHES = ("triton_lstm:medium:float32", "triton_lstm:large:float32", "triton_lstm:large:bfloat16",
            "triton_gru:large:float32", "triton_gru:large:bfloat16", "triton_gru:medium:float32",
            "triton_lstm:medium:bfloat16", "triton_gru:medium:bfloat16")
# MemoryWorkloadAnalysis_Tables: shared-memory bank conflicts (the H200's profile of the large float32 forward,
# 2026-11-28: 84 % of L1/shared throughput, a warp stalled 9.7 of every 13.2 cycles on shared memory -- the FMA
# tl.dot's operands go through it).  The stalls by SASS line (SourceCounters) are a step of their own (ncu-source).
NCU_SECTIONS = ("SpeedOfLight", "WarpStateStats", "SchedulerStats", "MemoryWorkloadAnalysis",
                "MemoryWorkloadAnalysis_Tables", "Occupancy", "LaunchStats")
NCU_KERNEL_RE = "(lstm|gru)_(fwd|bwd)_kernel"
NCU_KERNELS = 8  # forward and backward, triton_lstm and triton_gru, float32 and bfloat16


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float
    env: dict = field(default_factory=dict)
    runs: Path | None = None  # a training step: the folder of its run records, checked by :func:`implausible`
    # A benchmark of the tile searches' winners: the searches' --json files, passed as --bench-tiles as far as they
    # name a winner when the step starts; none: the step is skipped (the searches found nothing, or did not run).
    tile_files: list[Path] = field(default_factory=list)
    # A step that stops itself: this flag and the seconds the step may take (less TIME_LIMIT_MARGIN_S) go on its
    # command line when it starts, so it ends its work in order rather than being killed (the tile searches).
    time_limit_flag: str | None = None
    # Later steps this one leaves their limits to, where they are among the steps run (the searches leave
    # bench-tuned the time to benchmark what they found).
    reserve_for: tuple[str, ...] = ()
    # A step that ends itself on a hung kernel (exit tune.HUNG_EXIT: the tile searches) runs again with this flag
    # while its limit leaves AFTER_HANG_MIN_S, continuing from what it wrote (tune --after-hang).
    after_hang_flag: str | None = None


def with_winners(paths: list[Path]) -> list[Path]:
    """Of ``paths`` (tile searches' --json files), those that exist and name at least one winner."""
    from cells.triton_lstm import tune

    found = []
    for path in paths:
        try:
            if path.is_file() and tune.file_tiles(path):
                found.append(path)
        except ValueError:  # a search killed while writing: not a record to benchmark
            pass
    return found


# An evaluation worse than this many times a uniform guess over the vocabulary, or not finite: a run that learned
# nothing, or a model caught mid-spike (lm.train.WindowSpikes counts training windows past the same bound: the GRUs
# at the small preset's learning rate of 1 pass it in 11 to 16 of their first 100 on the CPU, cuDNN's included).
IMPLAUSIBLE_FACTOR = SPIKE_FACTOR


def snapshot(runs: Path | None) -> dict[Path, int]:
    """The run records in ``runs`` and their modification times (ns): what a step found there."""
    return {p: p.stat().st_mtime_ns for p in runs.glob("*.json")} if runs is not None and runs.is_dir() else {}


def implausible(runs: Path, before: dict[Path, int]) -> tuple[list[str], list[str]]:
    """(failures, warnings): one line per run record in ``runs`` written since ``before`` (:func:`snapshot`) whose
    validation or test perplexity is not finite or exceeds :data:`IMPLAUSIBLE_FACTOR` x its vocabulary size.

    A failure is what a correct cell cannot well produce: a non-finite perplexity, or an evaluation worse than every
    training window the run went through (``train_max_window_ppl``: the model scored worse on held-out text than it
    ever did, spikes included, on the text it trained on).  Otherwise a warning: training that itself spiked that far
    (or a record from before windows were counted) can leave a correct model mid-spike when it is evaluated -- the
    GRUs at the small preset's learning rate of 1 reach 1.5e8 in their third window.  Whether a cell computes its
    function is for the tests (``tests/test_triton_training.py`` runs the Triton cells beside cuDNN through training
    and evaluation)."""
    failures, warnings = [], []
    for path, mtime in sorted(snapshot(runs).items()):
        if before.get(path) == mtime:
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        vocab = rec.get("vocab_size")
        if not vocab:
            continue
        epochs = rec.get("epochs") or []
        ppls = [("valid", e.get("valid_ppl")) for e in epochs] + [("test", rec.get("test_ppl"))]
        worst = [(k, p) for k, p in ppls if isinstance(p, (int, float)) and not p <= IMPLAUSIBLE_FACTOR * vocab]
        if not worst:
            continue
        kind, ppl = max(worst, key=lambda w: w[1] if math.isfinite(w[1]) else math.inf)
        line = (f"{rec.get('cell')} {(rec.get('config') or {}).get('name')}: {kind} perplexity {ppl:.4g}, "
                f"worse than {IMPLAUSIBLE_FACTOR} x a uniform guess over {vocab} words ({path.name})")
        windows = [e["train_max_window_ppl"] for e in epochs if isinstance(e.get("train_max_window_ppl"), (int, float))]
        spikes = sum(e.get("train_spikes") or 0 for e in epochs)
        if not math.isfinite(ppl):
            failures.append(line)
        elif windows and ppl > max(windows):
            failures.append(f"{line}, and worse than every training window of the run (the largest {max(windows):.4g})"
                            ": the evaluation, not the training, went wrong")
        else:
            why = (f"its training windows reached {max(windows):.4g} ({spikes} past that bound)" if windows
                   else "the record does not count its training windows")
            warnings.append(f"{line}; {why}: unstable training can leave a correct model mid-spike (the tests "
                            "decide correctness)")
    return failures, warnings


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cells(dry_run: bool) -> tuple[list[str], list[str], list[str]]:
    """(every registered cell, those that can train here, those that compile per shape)."""
    import cells

    every = cells.names()
    # Named cells must train (a named cell that cannot run fails its sweep): on the CPU, the Triton cells cannot
    # (they would train in Triton's interpreter: their training_refusal).
    runnable = [c for c in every if not (dry_run and (cells.unavailable_reason(c, "cpu") or getattr(
        cells.cell_class(c), "training_refusal", lambda device: None)("cpu")))]
    return every, runnable, [c for c in every if getattr(cells.cell_class(c), "compiles_per_shape", False)]


def steps(ptb: Path, out: Path, slug: str, dry_run: bool, part: str = "check", budget_s: float = BUDGET_S,
          full_cells: str = FULL_CELLS, with_cells: bool = True) -> list[Step]:
    """The steps of ``part``: ``check`` (correctness and training), ``perf`` (the timings) or ``full`` (the medium
    preset's whole schedule for ``full_cells`` within ``budget_s``).  ``with_cells=False``: the same steps training
    no cell, without importing the cells (nor torch with them: seconds), for checking ``--steps`` before any work."""
    py = [sys.executable]
    gpu = out / "gpu" / slug
    pytest = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    every, runnable, compiling = _cells(dry_run) if with_cells else ([], [], [])
    # Cells that compile per shape (torch.compile) train with the slow cells, never in the steps whose words/sec count
    # (train-small, train-medium): on a GPU each of their shapes costs seconds of compilation.
    compiled = [c for c in runnable if c in compiling
                and (not dry_run or c == "compiled_gru")]  # the dry run trains one (each compiles ~30 s on a CPU)
    fast = [c for c in FAST_CELLS if c in runnable]
    slow = [c for c in runnable if c not in FAST_CELLS and c not in compiling]
    if dry_run:  # the plumbing with one cell a step (each run is a process start, ~6 s of CI); tests/test_train.py and
        fast, slow = fast[:1], slow[:1]  # tests/test_minimal.py train every CPU cell through train.train
    fast, slow = ",".join(fast), ",".join(slow)
    compiled_cells = ",".join(compiled)
    slow_list = ",".join(filter(None, [slow, compiled_cells]))
    slow_n = len([c for c in slow_list.split(",") if c])
    not_compiled = ",".join(c for c in every if c not in compiled)
    if dry_run:
        device, common = "cpu", ["--data-dir", str(ptb), "--no-verify", "--max-steps", "3"]
        small, medium, slow_steps = "tiny", "tiny", []
        medium_cells = "cudnn_lstm"  # triton_lstm cannot train on the CPU
        tests = ["-m", "not gpu", "tests/test_cells.py", "-k", "float64 and T1-B1 and not compiled"]
        tiny = ["--bench-device", "cpu", "--bench-shapes", "tiny", "--benchmark-max-time", "0.02",
                "--benchmark-min-rounds", "1"]
        bench = [*tiny, "--bench-cells", "cudnn_lstm,loop_gru"]
        # cuda-graph is refused on the CPU, so the dry run only proves the plumbing (tests/test_step.py trains in
        # compile mode; compiling here too would cost CI a minute).
        modes = ["-k", "test_step", *tiny, "--bench-cells", "cudnn_lstm", "--bench-modes", "cuda-graph"]
        graphs = ["-k", "test_fwdbwd_graph", *tiny, "--bench-cells", "cudnn_lstm", "--bench-modes", "cuda-graph"]
        versus = versus_graphs = ["-k", "test_fwdbwd", *tiny, "--bench-cells", "loop_gru"]
        bf16 = ["-k", "test_fwdbwd", *tiny, "--bench-cells", "cudnn_lstm", "--bench-dtype", "bfloat16"]
        tf32 = ["-k", "test_fwdbwd and not graph", *tiny, "--bench-cells", "cudnn_lstm"]  # (TF32 is refused on a CPU)
        tuned = tuned_bf16 = ["-k", "test_fwdbwd and not graph", *tiny, "--bench-cells", "cudnn_lstm"]
        tune = tune_small = probe = ["--help"]  # they time compiled kernels: the dry run only proves they start
        limits = dict.fromkeys(LIMITS, 180)
        cell_timeout = "120"
    else:
        device, common = "cuda", ["--data-dir", str(ptb)]
        small, medium = "small", "medium"
        # The per-op cells: a fixed number of steps, evaluated on the first EVAL_WORDS words of each stream (their
        # one-word-at-a-time test pass alone is ~25 s on an H200); both stated in the record and the report.
        slow_steps = ["--max-steps", str(SLOW_STEPS), "--max-eval-words", str(SLOW_EVAL_WORDS)]
        medium_cells = "cudnn_lstm,triton_lstm"
        # Every CUDA test but the compiled cells' float64 ones (each compiles fresh graphs; CI runs them on the CPU):
        # their float32-against-float64 test at one shape proves the compiled kernels on the GPU, and the one under
        # torch.compile's CUDA graphs (reduce-overhead) what bench-compiled-graphs times.
        tests = ["-m", "gpu", "tests", "-k", "not compiled_lstm and not compiled_gru or float32_against_float64 and "
                 "T5-B4 or reduce_overhead_on_cuda"]
        # The CUDA tests spend most of their time compiling (Triton, inductor) on the CPU, one kernel at a time: with
        # pytest-xdist (on the GPU machines' image) four processes compile side by side on its 16 cores.
        if importlib.util.find_spec("xdist") is not None:
            tests += ["-n", str(TEST_WORKERS)]
        bench = ["--bench-device", "cuda", "--bench-cells", not_compiled, "--bench-modes", "eager",
                 "--benchmark-max-time", "0.1"]
        # The step modes beside eager in one run (ratios only within a run), and the compiled cells beside the loop.
        # fwd+bwd as one CUDA graph at every preset: the kernels' GPU time beside the eager call's (bench's fwdbwd)
        graphs = ["-k", "test_fwdbwd_graph", "--bench-device", "cuda", "--bench-cells",
                  "cudnn_lstm,cudnn_gru,triton_lstm,triton_gru", "--bench-modes", "cuda-graph",
                  "--benchmark-max-time", "0.1"]
        modes = ["-k", "test_step", "--bench-device", "cuda", "--bench-shapes", "small",
                 "--bench-cells", "cudnn_lstm,cudnn_gru,loop_lstm,triton_lstm,triton_gru", "--bench-modes",
                 "cuda-graph", "--benchmark-max-time", "0.2"]
        def compiled_vs_loop(shapes: str) -> list[str]:  # (--bench-modes eager: else -k also picks the graph test)
            return ["-k", "test_fwdbwd", "--bench-device", "cuda", "--bench-shapes", shapes, "--bench-cells",
                    f"loop_lstm,loop_gru,{compiled_cells}", "--bench-modes", "eager", "--benchmark-max-time", "0.2"]

        # torch.compile's CUDA graphs at small only, the shape of the target (compiled_lstm >= 3x loop_lstm)
        versus, versus_graphs = compiled_vs_loop("small,medium"), compiled_vs_loop("small")
        bf16 = ["-k", "test_fwdbwd or test_step and not step_mode", "--bench-device", "cuda", "--bench-cells",
                "cudnn_lstm,cudnn_gru,triton_lstm,triton_gru", "--bench-dtype", "bfloat16", "--bench-modes", "eager",
                "--benchmark-max-time", "0.2"]
        # float32 as torch's defaults run cuDNN's RNNs (TF32), for every cell alike: what a user gets from cuDNN
        # untold, beside the Triton cells' TF32 tensor-core path (whose tiles are float32's: no search has tried TF32).
        tf32 = [*bf16[:bf16.index("--bench-dtype")], "--bench-modes", "eager", "--benchmark-max-time", "0.2",
                "--bench-fp32-matmul", "tf32"]
        # The searches' winners as the micro-benchmarks time them, beside cuDNN in the same run: fwd+bwd and the LM
        # step at every preset, float32 then bfloat16 -- the figures the tables' entries are chosen by.
        # fwd+bwd also as one CUDA graph (test_fwdbwd_graph, --bench-modes cuda-graph): the kernels' time, which the
        # searches now choose by; and at small the LM step as one CUDA graph (where cuDNN's took 0.94 ms on the H200
        # and triton_lstm's 1.87: the kernels' own comparison of the whole step).
        tuned = ["-k", "test_fwdbwd or test_step and not step_mode or test_step_mode and small", "--bench-device",
                 "cuda", "--bench-cells", "cudnn_lstm,cudnn_gru,triton_lstm,triton_gru", "--bench-modes", "cuda-graph",
                 "--benchmark-max-time", "0.1"]
        tuned_bf16 = bf16  # (the same cells and passes, eager)
        tune = ["--searches", ",".join(SEARCHES), "--fields", ",".join(TUNE_FIELDS), "--json", str(gpu / "tiles.json")]
        # The small preset's entries were never searched (the table's note): every field, in a file of its own.  The
        # LSTM in float32 only: its target there (fwd+bwd >= 1.3x cuDNN) is unmet in float32 alone (H200: 1.23x;
        # bfloat16 1.74x), the GRU's (>= 1.0x) met in both (1.40x, 1.60x); every field is ~45 candidates a search, about
        # 1.2 s each on the H200 (the medium and large searches of ea67f19: 118 s for ~100).  Judged by the kernels as
        # one CUDA graph (tune._passes): small's eager call is host-bound there (2.84 ms where the whole LM step took
        # 1.87 as a graph), so its eager time is nearly the same for every tile.
        tune_small = ["--presets", "small", "--dtypes", "float32", "--cell", "triton_lstm",
                      "--json", str(gpu / "tiles-small.json")]
        # large only: where both cells are furthest behind cuDNN (the LSTM's medium was probed on 2026-11-28)
        probe = ["--presets", "large", "--dtypes", "float32", "--cell", "triton_lstm,triton_gru", "--json",
                 str(gpu / "probe.json")]
        limits = LIMITS
        cell_timeout = "80"

    def sweep(name: str, cell_list: str, config: str, extra: list[str], epochs: list[str] = ("--epochs", "1"),
              timeout: str | None = None, time_limit_flag: str | None = None) -> Step:
        """A training step: one sweep of ``cell_list`` at ``config`` (``epochs``: empty for the preset's own)."""
        return Step(name, [*py, "-m", "bench.cli", "sweep", "--cells", cell_list, "--config", config, *epochs,
                           "--device", device, "--results", str(out), "--quiet", "--cell-timeout",
                           timeout or cell_timeout, "--kill-grace", "10", "--no-measure",  # env measured the device
                           *common, *extra], limits[name],
                    # (not in the dry run: 3 steps of a 29-word corpus are no test of learning)
                    runs=None if dry_run else out / "runs", time_limit_flag=time_limit_flag)

    env = Step("env", [*py, "-m", "bench.gpu_check", "env", "--device", device, "--out", str(out)], limits["env"])
    report = Step("report", [*py, "-m", "bench.cli", "report", "--results", str(out)], limits["report"])
    # What tune and tune-small write; the dry run's searches do not run, so it benchmarks with the committed file of
    # an H200's search (the interpreter takes no tiles: it proves the plumbing only).
    tile_files = ([ROOT / "results" / "gpu" / "cuda-nvidia-h200" / "tiles.json"] if dry_run
                  else [gpu / "tiles.json", gpu / "tiles-small.json"])
    if part == "full":
        # The published schedule (medium: 39 epochs), the whole training step as one CUDA graph: on an H200 the
        # eager cudnn_lstm trains medium at ~119k words/sec, so 39 epochs take ~5 minutes eagerly, and one CUDA graph
        # per step removes the host's launches (4.5x at small).  One run may take what the budget leaves; a run cut
        # by it is recorded as timeout with its last heartbeat.
        # Each sweep is told at its start what its step may take (Step.time_limit_flag: --cell-timeout, the last on
        # its command line wins), so a run the budget cuts is ended in order and recorded as timeout.  Medium first:
        # the longer run, the one a cut would cost most; small's 13 epochs of FULL_SMALL_CELLS with what is left.
        timeout = str(max(60, int(budget_s - limits["env"] - 2 * REPORT_RESERVE_S)))
        cut = dict(timeout=timeout, time_limit_flag="--cell-timeout")
        if dry_run:  # (cuda-graph: CUDA only; the Triton cells cannot train on the CPU)
            train = sweep("train-full", full_cells, "tiny", ["--steps", "eager"], ["--epochs", "2"], **cut)
            small_full = sweep("train-full-small", full_cells, "tiny", ["--steps", "eager"], ["--epochs", "2"], **cut)
        else:
            train = sweep("train-full", full_cells, "medium", ["--steps", "cuda-graph"], [], **cut)
            small_full = sweep("train-full-small", FULL_SMALL_CELLS, "small", ["--steps", "cuda-graph"], [], **cut)
        return [env, train, small_full, report]
    if part == "perf":
        # The profiler, where the machine has it: the large layer's forward and backward of both cells, one launch
        # each, float32 then bfloat16 (NCU_KERNELS launches), at the table's tiles.
        # Then the warp stalls by SASS line of the one kernel furthest behind (the LSTM's large float32 forward), a step
        # of its own: instrumented replay of a kernel with a grid barrier is the slow, untried part, and a profiler
        # killed at its limit prints nothing.
        ncu = [] if dry_run or not shutil.which("ncu") else [
            Step("ncu", ["ncu", "--clock-control", "none", "-k", f"regex:{NCU_KERNEL_RE}", "-c", str(NCU_KERNELS),
                         *(a for sec in NCU_SECTIONS for a in ("--section", sec)),
                         *py, "-m", "cells.triton_lstm.probe", "--presets", "large", "--dtypes", "float32,bfloat16",
                         "--cell", "triton_lstm,triton_gru", "--once"], limits["ncu"]),
            Step("ncu-source", ["ncu", "--clock-control", "none", "-k", "regex:lstm_fwd_kernel", "-c", "1",
                                "--section", "SourceCounters", "--section", "WarpStateStats",
                                *py, "-m", "cells.triton_lstm.probe", "--presets", "large", "--dtypes", "float32",
                                "--once"], limits["ncu-source"])]
        return [
            env,
            Step("bench", [*pytest, "bench", "--benchmark-only", *bench,
                           f"--benchmark-json={out / 'bench' / slug / 'micro.json'}"], limits["bench"]),
            # Where the table's tiles lose their time, before the searches (9 s for two kernels on the H200): the
            # profiler says why (shared-memory traffic, stalls, by SASS line).
            *ncu,
            Step("tune", [*py, "-m", "cells.triton_lstm.tune", *tune], limits["tune"], time_limit_flag="--time-limit",
                 reserve_for=("bench-tuned",), after_hang_flag="--after-hang"),
            # What the searches found, timed as the table's entries are (pytest-benchmark, beside cuDNN), so that a
            # session that tunes also measures what it would commit.  Apart from bench/ (the report would show two rows
            # of one name): gpu/<slug>/tuned.json and tuned-bf16.json.
            Step("bench-tuned", [*pytest, "bench", "--benchmark-only", *tuned,
                                 f"--benchmark-json={gpu / 'tuned.json'}"], limits["bench-tuned"],
                 tile_files=tile_files),
            Step("bench-tuned-bf16", [*pytest, "bench", "--benchmark-only", *tuned_bf16,
                                      f"--benchmark-json={gpu / 'tuned-bf16.json'}"], limits["bench-tuned-bf16"],
                 tile_files=tile_files),
            # The kernels alone (fwd+bwd as one CUDA graph, every preset): where they stand without the host's share.
            Step("bench-graphs", [*pytest, "bench", "--benchmark-only", *graphs,
                                  f"--benchmark-json={out / 'bench' / slug / 'graphs.json'}"], limits["bench-graphs"]),
            # Small's entries were never searched and its fwd+bwd target is unmet: once the others are timed.
            Step("tune-small", [*py, "-m", "cells.triton_lstm.tune", *tune_small], limits["tune-small"],
                 time_limit_flag="--time-limit", reserve_for=("bench-tuned",), after_hang_flag="--after-hang"),
            # Which part of a large step the time goes to (the LSTM's float32 was probed on 2026-11-28).
            Step("probe", [*py, "-m", "cells.triton_lstm.probe", *probe], limits["probe"]),
            # The targets on step modes and compiled cells (CUDA graphs, torch.compile).
            Step("bench-modes", [*pytest, "bench", "--benchmark-only", *modes,
                                 f"--benchmark-json={out / 'bench' / slug / 'modes.json'}"], limits["bench-modes"]),
            Step("bench-compiled", [*pytest, "bench", "--benchmark-only", *versus,
                                    f"--benchmark-json={out / 'bench' / slug / 'compiled.json'}"],
                 limits["bench-compiled"]),
            # The same under torch.compile's CUDA graphs: which mode the compiled cells should use on a GPU.  Kept out
            # of bench/ (the report would show two rows of one name): compare it with compiled.json by hand.
            Step("bench-compiled-graphs", [
                *pytest, "bench", "--benchmark-only", *versus_graphs, "--bench-compile-mode", "reduce-overhead",
                f"--benchmark-json={gpu / 'compiled-reduce-overhead.json'}"], limits["bench-compiled-graphs"]),
            Step("bench-bf16", [*pytest, "bench", "--benchmark-only", *bf16,
                                f"--benchmark-json={out / 'bench' / slug / 'bf16.json'}"], limits["bench-bf16"]),
            Step("bench-tf32", [*pytest, "bench", "--benchmark-only", *tf32,
                                f"--benchmark-json={out / 'bench' / slug / 'tf32.json'}"], limits["bench-tf32"]),
            report,
        ]
    return [
        env,
        Step("tests", [*pytest, *tests, f"--junitxml={gpu / 'tests-junit.xml'}"], limits["tests"]),
        sweep("train-small", fast, small, []),
        sweep("train-medium", medium_cells, medium, []),
        # One sweep, its runs side by side: serially they took 136 s of the check's 327 on the H200 (2026-11-28), most
        # of it each process's start (torch, CUDA, the corpus), the compiled cells' compiling (18 and 26 s) and the
        # per-op cells' host-bound launches -- work for the machine's 16 cores, not for its GPU.  (Untimed so.)
        sweep("train-small-slow", slow_list, small, [*slow_steps, "--jobs", str(max(1, min(SLOW_JOBS, slow_n)))]),
        report,
    ]


def run_step(step: Step, log: Path, limit_s: float | None = None) -> dict:
    """Run one step in its own process group; stop the whole group at its time limit (``limit_s`` if given): a pytest
    step with SIGINT, on which pytest ends its session in order -- pytest-benchmark writes the benchmarks finished so
    far into its JSON, pytest the tests run into its junit XML, where SIGTERM would leave nothing --, any other with
    SIGTERM; SIGKILL 15 s later."""
    t0, before = time.monotonic(), snapshot(step.runs)
    limit = step.limit_s if limit_s is None else limit_s
    def skipped(why: str) -> dict:
        print(f"[gpu-check] step {step.name}: skipped, {why}", flush=True)
        return {"step": step.name, "status": "skipped", "exit_code": None, "seconds": 0.0, "limit_s": limit,
                "log": None, "command": " ".join(step.argv[1:]), "reason": why}

    if limit < 5:
        return skipped(f"budget of {BUDGET_S} s spent")
    if step.tile_files:
        files = with_winners(step.tile_files)
        if not files:
            return skipped(f"no tile search named a winner ({', '.join(p.name for p in step.tile_files)})")
        step = dataclasses.replace(step, argv=[*step.argv, f"--bench-tiles={','.join(map(str, files))}"])
    print(f"[gpu-check] {now()} step {step.name} (limit {limit:.0f} s): {' '.join(step.argv[1:])}",
          flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **step.env}
    with open(log, "w") as f:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT if step.argv[1:3] == ["-m", "pytest"] else signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
    seconds = time.monotonic() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    bad, warn = implausible(step.runs, before) if step.runs is not None else ([], [])
    if bad and status == "ok":
        status = "failed"
    if bad or warn:
        with open(log, "a") as f:
            f.write("".join(f"[gpu-check] implausible: {b}\n" for b in bad))
            f.write("".join(f"[gpu-check] warning: {w}\n" for w in warn))
    print(f"[gpu-check] step {step.name}: {status} (exit {rc}) in {seconds:.0f} s; " + " | ".join(tail)[-300:],
          flush=True)
    for b in bad:
        print(f"[gpu-check] step {step.name}: implausible: {b}", flush=True)
    for w in warn:
        print(f"[gpu-check] step {step.name}: warning: {w}", flush=True)
    return {"step": step.name, "status": status, "exit_code": rc, "seconds": round(seconds, 1),
            "limit_s": round(limit, 1), "log": log.name, "command": " ".join(step.argv[1:])} | (
        {"implausible": bad} if bad else {}) | ({"warnings": warn} if warn else {})


def runs_of(step: Step, log_stem: Path, limit: float, dry_run: bool):
    """Run ``step`` (:func:`run_step`, log ``<log_stem>.log``) within ``limit`` seconds, told them where it stops
    itself (``Step.time_limit_flag``), and yield its record; a step that exited HUNG_EXIT runs again with its
    ``after_hang_flag`` (logs ``-2.log``, ``-3.log``, ...; records with ``after_hang``) while what its limit leaves is
    at least AFTER_HANG_MIN_S."""
    argv, attempt = step.argv, 1
    while True:
        if step.time_limit_flag and not dry_run:  # (the dry run's searches only print their usage)
            argv = [*argv, step.time_limit_flag, str(max(1, int(limit - TIME_LIMIT_MARGIN_S)))]
        log = log_stem.with_name(f"{log_stem.name}{'' if attempt == 1 else f'-{attempt}'}.log")
        rec = run_step(dataclasses.replace(step, argv=argv), log, limit)
        yield rec if attempt == 1 else {**rec, "after_hang": attempt - 1}
        limit -= rec.get("seconds") or 0
        if not (step.after_hang_flag and rec.get("exit_code") == HUNG_EXIT and limit >= AFTER_HANG_MIN_S):
            return
        print(f"[gpu-check] step {step.name}: a candidate hung; continuing the search ({step.after_hang_flag}, "
              f"{limit:.0f} s left)", flush=True)
        argv, attempt = [*step.argv, step.after_hang_flag], attempt + 1


def select(schedule: list[Step], only: list[str] | None) -> list[Step]:
    """``schedule`` itself, or with ``only`` (step names): ``env`` first, the named steps in the order named, ``report``
    last -- a session that has less time than the whole part chooses what it measures and in which order (e.g. the
    small tile search before the benchmark of the searches' winners, so that it times small's too).  An unknown or
    repeated name is a ValueError naming the part's steps."""
    if only is None:
        return schedule
    by_name = {s.name: s for s in schedule}
    choosable = [n for n in by_name if n not in ("env", "report")]
    bad = [n for n in only if n not in choosable]
    if bad or not only or len(set(only)) != len(only):
        what = f"unknown step(s) {', '.join(bad)}" if bad else "a step named twice" if only else "no step named"
        raise ValueError(f"--steps: {what}; this part's steps: {', '.join(choosable)}")
    return [by_name[n] for n in ("env", *only, "report") if n in by_name]


def check(ptb: Path, out: Path, dry_run: bool, part: str = "check", budget_s: float = BUDGET_S,
          full_cells: str = FULL_CELLS, only: list[str] | None = None) -> int:
    import torch

    from bench.machine import device_slug
    from lm.records import atomic_write

    if not dry_run and not torch.cuda.is_available():
        print("rnnbench: error: gpu-check needs CUDA (none here); use --dry-run to rehearse on the CPU",
              file=sys.stderr)
        return 2
    if not all((ptb / f"ptb.{s}.txt").is_file() for s in ("train", "valid", "test")):
        print(f"rnnbench: error: {ptb} must hold ptb.train.txt, ptb.valid.txt and ptb.test.txt", file=sys.stderr)
        return 2
    slug = device_slug("cpu" if dry_run else "cuda")
    gpu = out / "gpu" / slug
    for folder in (gpu, out / "bench" / slug):
        folder.mkdir(parents=True, exist_ok=True)
    prefix = "" if part == "check" else f"{part}-"  # the other parts' logs and statuses sit beside the check's
    summary = {"started": now(), "part": part, "dry_run": dry_run, "slug": slug, "budget_s": budget_s, "steps": []}
    t0 = time.monotonic()
    chosen = select(steps(ptb.resolve(), out.resolve(), slug, dry_run, part, budget_s, full_cells), only)
    for i, step in enumerate(chosen):
        reserve = sum(s.limit_s for s in chosen[i + 1:] if s.name in step.reserve_for)
        left = budget_s - (time.monotonic() - t0) - (0 if step.name == "report" else REPORT_RESERVE_S) - reserve
        limit = step.limit_s if dry_run else min(step.limit_s, left)
        for rec in runs_of(step, gpu / f"{prefix}{step.name}", limit, dry_run):
            summary["steps"].append(rec)
            atomic_write(gpu / f"{prefix}steps.json", json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # scratch; OUT is meant to be shipped
    summary["finished"] = now()
    summary["seconds"] = round(time.monotonic() - t0, 1)
    atomic_write(gpu / f"{prefix}steps.json", json.dumps(summary, indent=2) + "\n")
    failed = [s["step"] for s in summary["steps"] if s["status"] != "ok"]
    print(f"[gpu-check] done: {len(summary['steps']) - len(failed)} of {len(summary['steps'])} steps ok"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def env_step(device: str, out: Path) -> int:
    """Step 1: the environment and the measured rates, into gpu/<slug>/env.json and machine/<slug>.json."""
    import torch

    from bench import machine
    from lm import env as lm_env
    from lm.records import atomic_write

    dev = torch.device(device)
    info = lm_env.environment(dev)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info |= {"sm_count": props.multi_processor_count, "total_memory_bytes": props.total_memory,
                 "capability": f"{props.major}.{props.minor}"}
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            smi = f"nvidia-smi unavailable: {exc}"
        info["nvidia_smi"] = smi
        info["driver"] = next((line.split("Driver Version:")[1].split()[0] for line in smi.splitlines()
                               if "Driver Version:" in line), None)
    measured = machine.measure(dev)
    info["measured"] = measured
    machine.save(measured, out)
    folder = out / "gpu" / measured["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "env.json", json.dumps(info, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=2, default=str))
    return 0


def merge(src: Path, dest: Path, commit: str | None = None, note: str | None = None) -> int:
    """Copy a check's output (laid out like results/) into ``dest``; files of the same name are replaced.

    ``commit``: the project commit the check ran, for output made from an exported copy of the tree (whose
    records have no commit, or a wrong one): written into every run record's ``env.commit`` and every
    benchmark file's ``rnnbench.commit``, with ``note`` (how it was run) as ``provenance`` beside it.
    """
    from lm.errors import UsageError

    if not src.is_dir():
        raise UsageError(f"source {src} not found (a check's OUT folder)")
    if dest.resolve() == src.resolve():
        raise UsageError(f"source and destination are the same folder: {src}")
    from lm.records import usable_folder

    usable_folder(dest, "destination")
    if commit is not None:
        commit = _full_commit(commit)
    copied = 0
    for sub in ("runs", "bench", "machine", "gpu"):
        for path in sorted((src / sub).rglob("*")) if (src / sub).is_dir() else []:
            if path.is_file() and not path.name.endswith(".tmp"):
                target = dest / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                if commit is not None and path.suffix == ".json" and sub in ("runs", "bench"):
                    _restamp(path, target, sub, commit, note)
                else:
                    shutil.copy2(path, target)
                copied += 1
    print(f"merged {copied} files from {src} into {dest}; now run: rnnbench report --results {dest}")
    from bench import fold

    for line in fold.tile_entries(src / "gpu"):
        print(line)
    return 0


def _full_commit(commit: str) -> str:
    """``commit`` as 40 hex digits, resolved in this checkout; UsageError when it is not one of ours."""
    from lm.errors import UsageError

    r = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"--commit {commit} is not a commit of this checkout")
    return r.stdout.strip()


def _restamp(path: Path, target: Path, sub: str, commit: str, note: str | None) -> None:
    from lm.records import atomic_write

    doc = json.loads(path.read_text())
    if sub == "runs":
        env = doc.setdefault("env", {})
        if env.get("commit") and env["commit"] != commit:
            env["commit_recorded"] = env["commit"]  # what the run itself found: kept, not shown
        env["commit"], env["provenance"] = commit, note
    else:
        info = doc.setdefault("rnnbench", {})
        if info.get("commit") and info["commit"] != commit:
            info["commit_recorded"] = info["commit"]
        info["commit"], info["provenance"] = commit, note
    atomic_write(target, json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from lm.cli import Parser  # argparse, its errors on one line

    p = Parser(prog="bench.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run every step")
    r.add_argument("ptb", type=Path, help="folder with ptb.{train,valid,test}.txt")
    r.add_argument("out", type=Path, help="output folder (laid out like results/)")
    r.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    part = r.add_mutually_exclusive_group()
    part.add_argument("--perf", action="store_true",
                      help="the timing part (micro-benchmarks, step modes, compiled cells) instead of the check")
    part.add_argument("--full", action="store_true",
                      help=f"instead of the check: the medium preset's whole schedule (39 epochs, the step as one "
                           f"CUDA graph) for --full-cells, default budget {FULL_BUDGET_S} s")
    r.add_argument("--full-cells", default=None, metavar="CELLS",
                   help=f"with --full: the cells, comma-separated, one run after another (default {FULL_CELLS})")
    r.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"wall-clock seconds for all the steps (default {BUDGET_S}: one call of at most 6 minutes; "
                        f"--full: {FULL_BUDGET_S}); give less when the session has less device time left: the steps "
                        "past it are skipped, and recorded so")
    r.add_argument("--steps", default=None, metavar="NAMES",
                   help="only these steps of the part, comma-separated, in this order (env first and report last "
                        "as always), e.g. --perf --steps tune,tune-small,bench-tuned")
    e = sub.add_parser("env", help="step 1 alone")
    e.add_argument("--device", default="cuda")
    e.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("merge", help="copy a check's output into a results folder; print its tile searches' winners "
                                     "as tile-table lines")
    m.add_argument("src", type=Path)
    m.add_argument("dest", type=Path)
    m.add_argument("--commit", default=None,
                   help="the project commit the check ran, for output made from an exported tree")
    m.add_argument("--note", default=None, help="how it was run (stored as provenance beside the commit)")
    args = p.parse_args(argv)
    from lm.errors import UsageError
    from lm.records import usable_folder

    if args.cmd == "env":
        try:  # before measuring
            from lm.train import resolve_device

            resolve_device(args.device)
            usable_folder(args.out, "--out")
        except UsageError as exc:
            e.error(str(exc))
        return env_step(args.device, args.out)
    if args.cmd == "merge":
        if args.note and not args.commit:
            m.error("--note goes with --commit")
        try:
            return merge(args.src, args.dest, args.commit, args.note)
        except (UsageError, OSError, ValueError) as exc:
            print(f"rnnbench: error: {exc}", file=sys.stderr)
            return 2
    if args.cmd == "run":
        if args.full_cells is not None and not args.full:
            r.error("--full-cells goes with --full")
        args.full_cells = FULL_CELLS if args.full_cells is None else args.full_cells
        try:  # before the CUDA check: the output folder is made only once every input is good
            usable_folder(args.out, "OUT")
        except UsageError as exc:
            r.error(str(exc))
        budget = args.budget if args.budget is not None else FULL_BUDGET_S if args.full else BUDGET_S
        if not 30 <= budget <= 600:
            r.error(f"--budget takes 30 to 600 seconds, got {budget:g}")
        if args.full:
            import cells

            bad = [c for c in args.full_cells.split(",") if c not in cells.names()]
            if bad or not args.full_cells:
                r.error(f"--full-cells: unknown cell(s) {', '.join(bad) or repr(args.full_cells)}; known: "
                        f"{', '.join(cells.names())}")
        part = "full" if args.full else "perf" if args.perf else "check"
        only = None if args.steps is None else [n.strip() for n in args.steps.split(",") if n.strip()]
        if only is not None:
            try:
                select(steps(args.ptb, args.out, "slug", args.dry_run, part, budget, args.full_cells, False), only)
            except ValueError as exc:
                r.error(str(exc))
        return check(args.ptb, args.out, args.dry_run, part, budget, args.full_cells, only)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
