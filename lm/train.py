"""Training loop: SGD with global-norm clipping, the tutorial's learning-rate schedule, run records.

The loss of one window is the tutorial's: cross-entropy summed over the
``num_steps`` timesteps and averaged over the batch; perplexity is
``exp(total loss / total timesteps)``.  The hidden state is carried across
windows (detached) and reset to zeros at the start of every epoch and of every
evaluation pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import cells
from lm import checkpoint as ckpt_mod
from lm import data, env, records
from lm import step as step_mod
from lm.config import Config
from lm.errors import UsageError
from lm.heartbeat import Heartbeat, Silent
from lm.model import LanguageModel, as_tuple


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}; accepted: cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} requested but CUDA is not available here; accepted: cpu")
    return torch.device(name)


def check_cell(cell: str, device: torch.device, allow_interpreter: bool = False) -> None:
    """UsageError when ``cell`` is unknown, cannot run on ``device``, or would train in an interpreter."""
    try:
        cls = cells.cell_class(cell)
    except cells.UnknownCellError as exc:
        raise UsageError(str(exc)) from None
    reason = cells.unavailable_reason(cell, device)
    if reason:
        raise UsageError(f"cell {cell} cannot run on {device.type}: {reason}")
    refusal = getattr(cls, "training_refusal", None)
    if refusal and not allow_interpreter:
        msg = refusal(device)
        if msg:
            raise UsageError(msg)


# Words per forward pass in evaluation: bounds the logits (words x vocabulary floats, 330 MB at PTB's 10k).
EVAL_WORDS = 8192


def evaluate(model: LanguageModel, tokens: torch.Tensor, batch_size: int, num_steps: int,
             device: torch.device, desc: str = "eval", progress: bool = True, span: int | None = None,
             heartbeat: Heartbeat | None = None) -> float:
    """Perplexity of ``model`` on ``tokens`` as the tutorial defines it, computed in long windows.

    The tutorial scores ``epoch_size`` windows of ``num_steps`` at ``batch_size`` with the state carried
    from zeros and never reset; with no gradient and no dropout that is the same computation as running
    the same words in windows of ``span`` steps (default: ``EVAL_WORDS // batch_size``, at least
    ``num_steps``), which turns the test set's 82k one-word calls into a few long ones.  ``span=num_steps``
    is the tutorial's own loop.
    """
    from tqdm import tqdm

    model.eval()
    if span is None:
        span = max(num_steps, EVAL_WORDS // batch_size)
    n = data.epoch_size(tokens, batch_size, num_steps)
    windows = -(-n * num_steps // span)
    hb = heartbeat or Silent()
    hb.update(phase=desc, step=0, steps=windows)
    total, count, state = torch.zeros((), device=device, dtype=torch.float64), 0, None
    with torch.no_grad():
        for i, (x, y) in enumerate(tqdm(data.spans(tokens, batch_size, num_steps, span), total=windows,
                                        desc=desc, leave=False, disable=not progress, mininterval=1.0)):
            hb.update(step=i, words=count)
            x, y = x.to(device), y.to(device)
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1),
                                                 reduction="sum")
            count += y.numel()
    return safe_exp(total.item() / count)


def safe_exp(x: float) -> float:
    """exp that gives inf instead of raising for a huge (diverged) loss."""
    return math.exp(x) if x < 700 else float("inf")


def new_record(cfg: Config, cell: str, device: torch.device, seed: int, command: list[str] | None,
               step_mode: str = "eager", dtype: str = "float32", fp32_matmul: str = "ieee") -> dict:
    """A run record before training; ``kind`` is None when the cell's module cannot be imported.

    The step mode and the arithmetic are part of the run's identity: in its id (unless eager, or float32 with exact
    matmuls: ``-cuda-graph``, ``-tf32``, ``-bf16``) and in ``step_mode``, ``dtype`` and ``fp32_matmul`` (None for
    another dtype than float32)."""
    started = datetime.now(timezone.utc)
    try:
        kind = cells.kind(cell)
    except ImportError:
        kind = None
    fp32_matmul = fp32_matmul if dtype == "float32" else None
    return {
        "schema": 1,
        "run_id": f"{started:%Y%m%dT%H%M%S}-{cfg.name}-{cell}{'' if step_mode == 'eager' else '-' + step_mode}"
                  f"{numerics_suffix(dtype, fp32_matmul)}-{device.type}-{uuid.uuid4().hex[:6]}",
        "command": env.relative_command(command) if command else None,
        "status": "running",
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "cell": cell,
        "kind": kind,
        "step_mode": step_mode,
        "dtype": dtype,
        "fp32_matmul": fp32_matmul,
        "backend": None,
        "step": None,
        "config": cfg.as_dict(),
        "vocab_size": None,
        "seed": seed,
        "steps_per_epoch": None,
        "max_eval_words": None,
        "env": env.environment(device),
        "load_average_start": os.getloadavg(),
        "epochs": [],
        "test_ppl": None,
        "train_words": 0,
        "train_seconds": 0.0,
        "compile_seconds": 0.0,
        "compile_steps": 0,
        "valid_seconds": 0.0,
        "test_seconds": None,
        "time_to_quality": None,
        "words_per_sec": None,
        "peak_memory_bytes": None,
        "wall_seconds": None,
        "error": None,
    }


def numerics_suffix(dtype: str, fp32_matmul: str | None) -> str:
    """What a run's id and default checkpoint name add for its arithmetic: nothing for float32 with exact matmuls,
    else ``-tf32``, ``-bf16``."""
    tag = records.numerics_of(dtype, fp32_matmul)
    return "" if tag == "fp32" else f"-{tag}"


def check_numerics(device: torch.device, dtype: torch.dtype, fp32_matmul: str) -> None:
    """Refuse, with a one-line reason, a float32 matmul precision that is unknown or means nothing for the run."""
    if fp32_matmul not in cells.FP32_MATMULS:
        raise UsageError(f"--fp32-matmul takes {' or '.join(cells.FP32_MATMULS)}, got {fp32_matmul!r}")
    if fp32_matmul == "tf32" and dtype != torch.float32:
        raise UsageError(f"--fp32-matmul tf32 is for float32 runs; a {str(dtype).removeprefix('torch.')} run's "
                         "matmuls take its own dtype")
    if fp32_matmul == "tf32" and device.type != "cuda":
        raise UsageError(f"--fp32-matmul tf32 is for CUDA: TF32 is a tensor-core format, and float32 matmuls on "
                         f"the {device.type.upper()} are exact")


class Diverged(Exception):
    pass


def out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError torch's CPU allocator raises when an allocation fails (the
    host's out-of-memory): the run ends ``oom`` with its sizes, on a GPU and on the CPU alike."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                       and "can't allocate memory" in str(exc))


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def stop_requests():
    """While active, SIGINT and SIGTERM set a flag (checked every step) instead of killing the run.

    A second signal of the same kind acts as usual.  Outside the main thread nothing is installed.
    """
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def set_deterministic(device: torch.device) -> None:
    """PyTorch's deterministic algorithms (an op without one raises); cuDNN autotuning off."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def train(cfg: Config, cell: str, corpus: data.Corpus, device: torch.device, seed: int = 0,
          results_dir: str | os.PathLike | None = "results", max_steps: int | None = None,
          progress: bool = True, command: list[str] | None = None, dtype: torch.dtype = torch.float32,
          checkpoint_path: str | os.PathLike | None = None, checkpoint_every: float = 10.0, resume: bool = False,
          deterministic: bool = False, heartbeat: float = 0.0, step_mode: str = "eager",
          max_eval_words: int | None = None, fp32_matmul: str = "ieee") -> dict:
    """Train and evaluate one model; write its record under ``results_dir`` (None: write nothing).

    Args:
        max_steps: truncate every epoch to this many windows.
        checkpoint_path: where checkpoints go (default ``<results>/checkpoints/<config>-<cell>[-<mode>]-<device>-
            seed<S>.pt``; none are written when both this and ``results_dir`` are None).
        checkpoint_every: minutes between mid-epoch checkpoints (0: only at the end of every epoch).
        resume: continue from ``checkpoint_path``; the finished run keeps the interrupted run's id.
        deterministic: PyTorch's deterministic algorithms.
        heartbeat: seconds between heartbeat lines on stderr (``lm.heartbeat``); 0: none.
        step_mode: how the training step executes (``lm.step.MODES``): eager, compile or cuda-graph.
        max_eval_words: validate and test on the first this many words of each stream only (a smoke run's
            evaluation, e.g. the GPU check's per-op loop cells, whose 82k-step test pass takes ~25 s on a GPU);
            stated in the record, and the report marks such perplexities.  None: the whole streams.
        fp32_matmul: how every float32 matmul of the run on CUDA runs (:data:`cells.FP32_MATMULS`): "ieee", exact,
            or "tf32" -- cuBLAS, cuDNN's RNNs and the Triton cells alike (:func:`cells.set_fp32_matmul`; torch's
            previous settings are back after the run).  Part of the run's identity, like ``dtype``.

    Returns the record; its ``status`` is ok, failed, diverged, oom or interrupted.
    """
    if max_steps is not None and max_steps <= 0:
        raise UsageError(f"--max-steps must be a positive integer, got {max_steps}")
    if max_eval_words is not None and max_eval_words <= 0:
        raise UsageError(f"--max-eval-words must be a positive integer, got {max_eval_words}")
    if not (checkpoint_every >= 0 and math.isfinite(checkpoint_every)):  # (NaN compares false both ways)
        raise UsageError(f"--checkpoint-every must be >= 0 minutes, got {checkpoint_every}")
    if not 0 <= heartbeat <= 86400:  # (NaN compares false; a day is as rare a line as is useful)
        raise UsageError(f"--heartbeat must be 0 to 86400 seconds (0: none), got {heartbeat}")
    if step_mode not in step_mod.MODES:
        raise UsageError(f"unknown step mode {step_mode!r}; accepted: {', '.join(step_mod.MODES)}")
    check_numerics(device, dtype, fp32_matmul)
    dtype_name = str(dtype).removeprefix("torch.")
    if results_dir is not None:
        records.ensure_writable(results_dir)
    if checkpoint_path is None and results_dir is not None:
        checkpoint_path = ckpt_mod.default_path(results_dir, cfg.name, cell, device, seed, step_mode,
                                                numerics_suffix(dtype_name, fp32_matmul))
    n_steps = check_streams(cfg, corpus, max_steps, max_eval_words)
    ckpt = None
    if resume:
        if checkpoint_path is None:
            raise UsageError("--resume needs a checkpoint: pass --checkpoint PATH or --results DIR")
        ckpt = ckpt_mod.load(checkpoint_path)
        ckpt_mod.check_compatible(ckpt, Path(checkpoint_path), cfg.as_dict(), cells.kind(cell), corpus.vocab_size,
                                  len(corpus.train), step_mode, dtype_name, fp32_matmul)
        check_same_run(ckpt, Path(checkpoint_path), cell, seed, n_steps, max_eval_words, cfg.epochs, results_dir)
    elif checkpoint_path is not None:
        check_not_unfinished(Path(checkpoint_path), results_dir)
    if checkpoint_path is not None:  # found now, not after the first epoch's training
        if Path(checkpoint_path).is_dir():
            raise UsageError(f"checkpoint {checkpoint_path} is a folder; pass --checkpoint with a file's path")
        records.usable_folder(Path(checkpoint_path).parent, "checkpoint folder")
    if deterministic:
        set_deterministic(device)
    torch.manual_seed(seed)
    rec = new_record(cfg, cell, device, seed, command, step_mode, dtype_name, fp32_matmul)
    rec["deterministic"] = deterministic
    rec["max_eval_words"] = max_eval_words
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hb = Heartbeat(f"{cfg.name} {cell}{'' if step_mode == 'eager' else ' ' + step_mode} {device.type}", heartbeat)
    run = Run(cfg, cell, corpus, device, dtype, rec, hb, progress, checkpoint_path, checkpoint_every, n_steps,
              max_eval_words)
    with hb, cells.fp32_matmul_precision(fp32_matmul):
        try:
            run.setup(step_mode, ckpt)
            with stop_requests() as stop:
                for epoch in range(run.first_epoch, cfg.epochs + 1):
                    run.train_epoch(epoch, stop)
                    run.validate(epoch)
            run.test()
            run.rec["status"] = "ok"
        except UsageError:
            raise
        except Interrupted:
            run.rec["status"] = "interrupted"
        except Diverged as exc:
            run.rec.update(status="diverged", error=exc.args[0], diverged_at=exc.args[1])
        except Exception as exc:
            if out_of_memory(exc):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "OutOfMemoryError"
                run.rec.update(status="oom", error=f"out of memory with batch {cfg.batch_size}, {cfg.num_steps} "
                               f"steps, hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocabulary "
                               f"{corpus.vocab_size}, {dtype}: {first}")
                run.release()
            else:
                run.rec.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                               traceback=traceback.format_exc())
                print(traceback.format_exc(), file=sys.stderr)
        finally:
            run.finish()
    rec = run.rec
    if results_dir is not None:
        rec["record_path"] = str(records.write_run(results_dir, rec))
    if checkpoint_path is not None:
        rec["checkpoint"] = str(checkpoint_path)
    return rec


def check_streams(cfg: Config, corpus: data.Corpus, max_steps: int | None, max_eval_words: int | None) -> int:
    """Before any training: every stream holds at least one window at the sizes it is read with (training at
    ``batch_size`` x ``num_steps``, validation likewise, test at ``test_batch_size`` x ``test_num_steps``, the
    evaluation streams cut to ``max_eval_words``), else a UsageError naming the stream; returns the training steps an
    epoch."""
    for name, whole, batch, steps, options in (
            ("training", corpus.train, cfg.batch_size, cfg.num_steps, "--batch-size / --num-steps"),
            ("validation", corpus.valid, cfg.batch_size, cfg.num_steps, "--batch-size / --num-steps"),
            ("test", corpus.test, cfg.test_batch_size, cfg.test_num_steps, "--test-batch-size / --test-num-steps")):
        cut = name != "training" and max_eval_words is not None
        tokens = eval_stream(whole, max_eval_words) if cut else whole
        if data.epoch_size(tokens, batch, steps) <= 0:
            need = batch * (steps + 1)
            # where the cut, not the stream, is short, the fix is a larger cut
            fix = f"raise --max-eval-words to at least {need - 1}" if cut and len(whole) >= need else f"lower {options}"
            raise UsageError(f"the {name} stream's {len(tokens)} tokens"
                             f"{f' (--max-eval-words {max_eval_words})' if cut else ''} are too few for batch {batch} "
                             f"x {steps} steps (need at least {need}); {fix}")
    n = data.epoch_size(corpus.train, cfg.batch_size, cfg.num_steps)
    return n if max_steps is None else min(n, max_steps)


def eval_stream(tokens: torch.Tensor, max_eval_words: int | None) -> torch.Tensor:
    """An evaluation stream, cut to its first ``max_eval_words`` predicted words when that is set."""
    return tokens if max_eval_words is None else tokens[: max_eval_words + 1]


def _record_of(ckpt: dict, results_dir) -> dict | None:
    """The run record written for a checkpoint's run, if ``results_dir`` holds one."""
    if results_dir is None:
        return None
    path = Path(results_dir) / "runs" / f"{ckpt['record'].get('run_id')}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_same_run(ckpt: dict, path: Path, cell: str, seed: int, n_steps: int, max_eval_words: int | None,
                   epochs: int, results_dir) -> None:
    """Refuse to resume a checkpoint as another run than its own: another cell (of the same kind: its record would
    carry the first cell's time under the second's name), seed, epoch length (``--max-steps``) or evaluation
    (``--max-eval-words``), or a run that already finished all ``epochs`` (nothing to resume; more epochs do)."""
    saved = ckpt["record"]
    for what, mine, theirs in (("--cell", cell, saved.get("cell")), ("--seed", seed, saved.get("seed")),
                               ("--max-eval-words", max_eval_words, saved.get("max_eval_words"))):
        if mine != theirs:
            shown = "unset" if theirs is None else theirs
            raise UsageError(f"checkpoint {path} is of a run with {what} {shown}; resume it with the same {what}"
                             + (" (omit it)" if theirs is None else ""))
    if saved.get("steps_per_epoch") not in (None, n_steps):
        raise UsageError(f"checkpoint {path} is of a run of {saved['steps_per_epoch']} steps an epoch, this one "
                         f"would be {n_steps}; resume it with the same --max-steps")
    reached = ckpt["epoch"] if ckpt["step"] > 0 else ckpt["epoch"] - 1  # (the epoch it is in, or the last it ended)
    if epochs < reached:
        raise UsageError(f"checkpoint {path} is of a run that has trained into epoch {reached}; resume it with "
                         f"--epochs {reached} or more (its record would say fewer epochs than its model trained)")
    done = _record_of(ckpt, results_dir)
    if done is not None and done.get("status") == "diverged":
        raise UsageError(f"checkpoint {path} is of a run that diverged ({done.get('error')}); resuming repeats it: "
                         "start afresh with other settings")
    if ckpt["epoch"] > epochs and done is not None and done.get("status") == "ok":
        n = len(saved.get("epochs") or [])
        raise UsageError(f"checkpoint {path} is of a finished run of {n} epoch{'' if n == 1 else 's'} (record "
                         f"{done.get('run_id')}); nothing to resume -- pass --epochs above {n} to train it further")


def check_not_unfinished(path: Path, results_dir) -> None:
    """A fresh run would overwrite ``path``: refuse when it holds a run that stopped part-way (interrupted, or killed
    before it could write a record), so that hours of training are not lost to a repeated command."""
    if not path.is_file():
        return
    try:
        ckpt = ckpt_mod.load(path)
    except UsageError:  # a file that is not a checkpoint: not ours to overwrite
        raise UsageError(f"{path} exists and is not an rnnbench checkpoint; pass --checkpoint another path, or "
                         "delete it") from None
    rec = _record_of(ckpt, results_dir)
    if rec is None and results_dir is None:
        return  # (no records to tell a finished run from a stopped one)
    status = "stopped with no record" if rec is None else rec.get("status")
    if status in ("stopped with no record", "interrupted"):
        raise UsageError(f"checkpoint {path} holds a run that {'was interrupted' if rec else status} (epoch "
                         f"{ckpt['epoch']}, step {ckpt['step']}): continue it with --resume, or delete the file (or "
                         "pass another --checkpoint) to start afresh")


class Run:
    """One training run's state: model, step, record, heartbeat, checkpoints; ``train`` drives it."""

    def __init__(self, cfg: Config, cell: str, corpus: data.Corpus, device: torch.device, dtype: torch.dtype,
                 rec: dict, hb: Heartbeat, progress: bool, checkpoint_path, checkpoint_every: float,
                 n_steps: int, max_eval_words: int | None = None):
        self.cfg, self.cell, self.corpus, self.device, self.dtype = cfg, cell, corpus, device, dtype
        self.rec, self.hb, self.progress = rec, hb, progress
        self.checkpoint_path, self.every = checkpoint_path, checkpoint_every * 60.0
        self.n_steps, self.max_eval_words = n_steps, max_eval_words  # (steps an epoch: check_streams)
        self.wall0 = time.perf_counter()
        self.first_epoch, self.start_step, self.carried = 1, 0, None
        self.model = self.step = None

    def setup(self, step_mode: str, ckpt: dict | None) -> None:
        cfg, rec = self.cfg, self.rec
        self.model = LanguageModel(self.cell, self.corpus.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                                   cfg.init_scale).to(device=self.device, dtype=self.dtype)
        rec["backend"] = cells.detect_backend(self.model.rnn, self.device, self.dtype)
        self.step = step_mod.make_step(step_mode, self.model, cfg, self.device)
        rec["step"] = self.step.describe()
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.step.opt.load_state_dict(ckpt["optimizer"])
            ckpt_mod.set_rng_state(ckpt["rng"])
            resumed = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "epoch": ckpt["epoch"],
                       "step": ckpt["step"], "cell": self.cell, "command": rec["command"], "env": rec["env"],
                       "deterministic": rec["deterministic"]}
            # The fresh record first: a checkpoint written before a field existed resumes with its default.  The run
            # is deterministic only if every session of it was.
            self.rec = rec = {**rec, **ckpt["record"], "config": cfg.as_dict(), "cell": self.cell,
                              "backend": rec["backend"], "step": rec["step"],
                              "deterministic": rec["deterministic"] and bool(ckpt["record"].get("deterministic"))}
            rec["resumes"] = [*rec.get("resumes", []), resumed]
            self.wall0 -= rec.get("wall_seconds") or 0.0
            self.first_epoch, self.start_step, self.carried = ckpt["epoch"], ckpt["step"], ckpt["carried"]
        rec["steps_per_epoch"] = self.n_steps
        rec["vocab_size"] = self.corpus.vocab_size

    def save_checkpoint(self, epoch: int, step: int, hidden, loss_sum, seconds: float,
                        spikes: WindowSpikes | None = None) -> None:
        if self.checkpoint_path is None:
            return
        self.rec["wall_seconds"] = time.perf_counter() - self.wall0
        ckpt_mod.save(self.checkpoint_path, {
            "model": self.model.state_dict(), "optimizer": self.step.opt.state_dict(), "rng": ckpt_mod.rng_state(),
            "epoch": epoch, "step": step,
            "carried": {"hidden": None if hidden is None else tuple(h.cpu() for h in as_tuple(hidden)),
                        "loss_sum": float(loss_sum), "seconds": seconds,
                        "spikes": spikes.state() if spikes is not None else None},
            "record": self.rec, "vocab_size": self.corpus.vocab_size, "train_tokens": len(self.corpus.train)})

    def _carried_in(self, epoch: int):
        """(state, loss sum, seconds already trained, :class:`WindowSpikes`) at the start of ``epoch``: from a
        checkpoint when resuming."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        spikes = WindowSpikes(self.corpus.vocab_size)
        if epoch != self.first_epoch or self.carried is None:
            return None, loss_sum, 0.0, spikes
        state, hidden = None, self.carried["hidden"]
        if hidden is not None:
            hidden = tuple(h.to(device=self.device, dtype=self.dtype) for h in hidden)
            state = hidden if self.model.kind == "LSTM" else hidden[0]
        spikes.restore(self.carried.get("spikes"))
        return state, loss_sum + self.carried["loss_sum"], self.carried["seconds"], spikes

    def train_epoch(self, epoch: int, stop: dict) -> None:
        """One epoch of training steps; one synchronizing read a second checks divergence and shows progress.

        A step that compiled, captured or was the run's first is timed on the host and counted as compile
        time, not as training time, and its words leave the words/sec figure.
        """
        from tqdm import tqdm

        cfg, rec, step_fn = self.cfg, self.rec, self.step
        lr = cfg.lr_at(epoch)
        step_fn.set_lr(lr)
        self.model.train()
        state, loss_sum, before, spikes = self._carried_in(epoch)
        first = self.start_step if epoch == self.first_epoch else 0
        self.hb.update(phase="train", epoch=epoch, epochs=cfg.epochs, step=first, steps=self.n_steps)
        bar = tqdm(total=self.n_steps, initial=first, desc=f"{self.cell} epoch {epoch}/{cfg.epochs}",
                   disable=not self.progress, mininterval=1.0, dynamic_ncols=True)
        pending: list[tuple[int, torch.Tensor]] = []
        last_loss, excluded, excluded_s = None, 0, 0.0
        env.synchronize(self.device)
        t0 = time.perf_counter()
        last_sync = last_ckpt = t0
        step = first
        for step, x, y in data.batches(self.corpus.train, cfg.batch_size, cfg.num_steps, start=first):
            if step >= self.n_steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            mark, c0 = time.perf_counter(), step_fn.compiling()
            loss, norm, state = step_fn(x, y, state)
            if step_fn.compiling() != c0 or step_fn.calls == 1:  # one-time work: compile time, not training
                dt = time.perf_counter() - mark
                excluded, excluded_s = excluded + 1, excluded_s + dt
                rec["compile_seconds"] += dt
                rec["compile_steps"] += 1
            loss_sum += loss
            words = (step + 1 - first - excluded) * x.numel()
            self.hb.update(step=step + 1, words=words)
            pending.append((step, torch.stack([loss.float(), norm.float()])))
            now = time.perf_counter()
            stopping = stop["signal"] is not None
            due_ckpt = self.every > 0 and now - last_ckpt >= self.every
            if stopping or due_ckpt or now - last_sync >= 1.0 or step + 1 == self.n_steps:
                last_loss, losses = check_finite(pending, last_loss, epoch)
                spikes.add(losses)
                pending.clear()
                last_sync = time.perf_counter()
                bar.set_postfix(ppl=f"{math.exp(min(loss_sum.item() / (step + 1), 50)):.1f}",
                                wps=f"{words / max(last_sync - t0 - excluded_s, 1e-9):.0f}", lr=f"{lr:.3g}")
                bar.update(step + 1 - bar.n)
                if stopping or due_ckpt:
                    self.save_checkpoint(epoch, step + 1, state, loss_sum,
                                         before + time.perf_counter() - t0 - excluded_s, spikes)
                    last_ckpt = time.perf_counter()
                if stopping:
                    name = signal.Signals(stop["signal"]).name
                    rec["error"] = (f"interrupted by {name} in epoch {epoch} after step {step + 1}; "
                                    "continue with --resume")
                    rec["exit_code"] = 128 + stop["signal"]
                    raise Interrupted
        env.synchronize(self.device)
        seconds = time.perf_counter() - t0 - excluded_s
        bar.close()
        steps_done = min(step + 1, self.n_steps) - first - excluded
        rec["train_words"] += steps_done * cfg.batch_size * cfg.num_steps
        rec["train_seconds"] += seconds
        if hasattr(step_fn, "graph_breaks"):
            rec["graph_breaks"] = step_fn.graph_breaks()
        self._epoch = {"epoch": epoch, "lr": lr, "train_ppl": safe_exp(loss_sum.item() / self.n_steps),
                       "train_seconds": before + seconds,
                       "words_per_sec": (self.n_steps - excluded) * cfg.batch_size * cfg.num_steps / (before + seconds),
                       **spikes.fields()}

    def validate(self, epoch: int) -> None:
        cfg, rec = self.cfg, self.rec
        v0 = time.perf_counter()
        valid = evaluate(self.model, eval_stream(self.corpus.valid, self.max_eval_words), cfg.batch_size,
                         cfg.num_steps, self.device, "valid", self.progress, heartbeat=self.hb)
        valid_seconds = time.perf_counter() - v0
        rec["valid_seconds"] = rec.get("valid_seconds", 0.0) + valid_seconds
        e = self._epoch
        prior = (rec["epochs"][-1].get("elapsed_seconds") or 0.0) if rec["epochs"] else 0.0
        rec["epochs"].append({**e, "valid_ppl": valid, "valid_seconds": valid_seconds,
                              "elapsed_seconds": prior + e["train_seconds"] + valid_seconds})
        rec["time_to_quality"] = time_to_quality(rec["epochs"], cfg.target_valid_ppl)
        self.check_evaluation("validation", valid, epoch)
        if self.progress:
            from tqdm import tqdm

            tqdm.write(f"{self.cell} epoch {epoch}: lr {e['lr']:.4g}  train ppl {e['train_ppl']:.2f}  "
                       f"valid ppl {valid:.2f}  {e['words_per_sec']:.0f} words/sec")
        self.save_checkpoint(epoch + 1, 0, None, 0.0, 0.0)

    def test(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.rec["test_ppl"] = evaluate(self.model, eval_stream(self.corpus.test, self.max_eval_words),
                                        cfg.test_batch_size, cfg.test_num_steps, self.device, "test", self.progress,
                                        heartbeat=self.hb)
        self.rec["test_seconds"] = time.perf_counter() - t0
        self.check_evaluation("test", self.rec["test_ppl"], cfg.epochs)

    def check_evaluation(self, what: str, ppl: float, epoch: int) -> None:
        """A perplexity that overflowed (a mean loss above 700 nats a word) or is NaN: the model diverged though
        every training loss and gradient norm stayed finite (e.g. a huge learning rate under clipping)."""
        if not math.isfinite(ppl):
            raise Diverged(f"{what} perplexity {ppl} after epoch {epoch}: the model diverged; try a lower "
                           "--learning-rate or --init-scale",
                           {"epoch": epoch, "step": self.n_steps, "what": f"{what} perplexity",
                            "last_finite_loss": None})

    def release(self) -> None:
        """Drop the model and step (after running out of memory), so the record can still be written."""
        self.model = self.step = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def finish(self) -> None:
        rec = self.rec
        rnn = getattr(self.model, "rnn", None)
        if rnn is not None and hasattr(rnn, "compile_seconds"):  # a compiled cell: every graph it built, any phase
            rec["cell_compile_seconds"] = rnn.compile_seconds
            rec["cell_compiles"] = [list(c) for c in getattr(rnn, "compiles", [])]
        rec["words_per_sec"] = rec["train_words"] / rec["train_seconds"] if rec["train_seconds"] else None
        rec["peak_memory_bytes"] = env.peak_memory_bytes(self.device)
        rec["wall_seconds"] = time.perf_counter() - self.wall0
        rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rec["load_average_end"] = os.getloadavg()


def time_to_quality(epochs: list[dict], target: float) -> dict:
    """Seconds of training and evaluation (start-up excluded) until validation perplexity first reached
    ``target`` (MLPerf's measure), with the epoch; both None while it has not."""
    for e in epochs:
        if e.get("valid_ppl") is not None and e["valid_ppl"] <= target:
            return {"target_valid_ppl": target, "seconds": e.get("elapsed_seconds"), "epoch": e["epoch"]}
    return {"target_valid_ppl": target, "seconds": None, "epoch": None}


class WindowSpikes:
    """The training windows of one epoch whose perplexity exceeded twice the vocabulary size -- worse than twice a
    uniform guess, the bound the GPU check applies to a run's evaluations (``bench.gpu_check.implausible``) -- and the
    largest window perplexity.  A cell can be right and still spike: the GRUs at the small preset's learning rate of
    1 exceed it in 11 to 16 of their first 100 windows on the CPU (seed 0), up to 1.5e8, and a model evaluated just
    after such a window scores like one.  Recorded per epoch as ``train_spikes`` and ``train_max_window_ppl``."""

    def __init__(self, vocab_size: int):
        self.bound = math.log(records.SPIKE_FACTOR * vocab_size)
        self.count, self.max_loss = 0, None

    def add(self, losses: list[float]) -> None:
        """Count the window losses (mean cross-entropy per word) of steps read back since the last call."""
        if losses:
            self.count += sum(loss > self.bound for loss in losses)
            top = max(losses)
            self.max_loss = top if self.max_loss is None else max(self.max_loss, top)

    def fields(self) -> dict:
        return {"train_spikes": self.count,
                "train_max_window_ppl": None if self.max_loss is None else safe_exp(self.max_loss)}

    def state(self) -> dict:
        return {"count": self.count, "max_loss": self.max_loss}

    def restore(self, state: dict | None) -> None:
        """Continue from :meth:`state` of a checkpoint (None: one written before the count existed)."""
        if state:
            self.count, self.max_loss = state["count"], state["max_loss"]


def check_finite(pending: list[tuple[int, torch.Tensor]], last_loss: float | None, epoch: int
                 ) -> tuple[float | None, list[float]]:
    """Raise Diverged at the first step whose loss or gradient norm is not finite; else (the last loss, the losses of
    ``pending``'s steps, read to the host in the same copy)."""
    if not pending:
        return last_loss, []
    values = torch.stack([v for _, v in pending]).cpu()
    bad = (~torch.isfinite(values)).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        step = pending[i][0]
        last = float(values[i - 1, 0]) if i > 0 else last_loss
        what = "loss" if not math.isfinite(float(values[i, 0])) else "gradient norm"
        last_txt = "none" if last is None else f"{last:.4f}"
        raise Diverged(f"non-finite {what} in epoch {epoch} at step {step + 1} (last finite loss "
                       f"{last_txt}); try a lower --learning-rate or --max-grad-norm",
                       {"epoch": epoch, "step": step + 1, "what": what, "last_finite_loss": last})
    losses = values[:, 0].tolist()
    return losses[-1], losses
