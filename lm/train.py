"""Training loop: SGD with global-norm clipping, the tutorial's learning-rate schedule, run records.

The loss of one window is the tutorial's: cross-entropy summed over the
``num_steps`` timesteps and averaged over the batch; perplexity is
``exp(total loss / total timesteps)``.  The hidden state is carried across
windows (detached) and reset to zeros at the start of every epoch and of every
evaluation pass.
"""

from __future__ import annotations

import contextlib
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
from lm.config import Config
from lm.errors import UsageError
from lm.heartbeat import Heartbeat, Silent
from lm.model import LanguageModel, detach


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


def new_record(cfg: Config, cell: str, device: torch.device, seed: int, command: list[str] | None) -> dict:
    """A run record before training; ``kind`` is None when the cell's module cannot be imported."""
    started = datetime.now(timezone.utc)
    try:
        kind = cells.kind(cell)
    except ImportError:
        kind = None
    return {
        "schema": 1,
        "run_id": f"{started:%Y%m%dT%H%M%S}-{cfg.name}-{cell}-{device.type}-{uuid.uuid4().hex[:6]}",
        "command": env.relative_command(command) if command else None,
        "status": "running",
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "cell": cell,
        "kind": kind,
        "backend": None,
        "config": cfg.as_dict(),
        "vocab_size": None,
        "seed": seed,
        "steps_per_epoch": None,
        "env": env.environment(device),
        "load_average_start": os.getloadavg(),
        "epochs": [],
        "test_ppl": None,
        "train_words": 0,
        "train_seconds": 0.0,
        "valid_seconds": 0.0,
        "test_seconds": None,
        "time_to_quality": None,
        "words_per_sec": None,
        "peak_memory_bytes": None,
        "wall_seconds": None,
        "error": None,
    }


class Diverged(Exception):
    pass


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
          deterministic: bool = False, heartbeat: float = 0.0) -> dict:
    """Train and evaluate one model; write its record under ``results_dir`` (None: write nothing).

    Args:
        max_steps: truncate every epoch to this many windows.
        checkpoint_path: where checkpoints go (default ``<results>/checkpoints/<config>-<cell>-<device>-seed<S>.pt``;
            none are written when both this and ``results_dir`` are None).
        checkpoint_every: minutes between mid-epoch checkpoints (0: only at the end of every epoch).
        resume: continue from ``checkpoint_path``; the finished run keeps the interrupted run's id.
        deterministic: PyTorch's deterministic algorithms.
        heartbeat: seconds between heartbeat lines on stderr (``lm.heartbeat``); 0: none.

    Returns the record; its ``status`` is ok, failed, diverged, oom or interrupted.
    """
    from tqdm import tqdm

    if max_steps is not None and max_steps <= 0:
        raise UsageError(f"--max-steps must be a positive integer, got {max_steps}")
    if checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be >= 0 minutes, got {checkpoint_every}")
    if results_dir is not None:
        records.ensure_writable(results_dir)
    if checkpoint_path is None and results_dir is not None:
        checkpoint_path = ckpt_mod.default_path(results_dir, cfg.name, cell, device, seed)
    ckpt = None
    if resume:
        if checkpoint_path is None:
            raise UsageError("--resume needs a checkpoint: pass --checkpoint PATH or --results DIR")
        ckpt = ckpt_mod.load(checkpoint_path)
        ckpt_mod.check_compatible(ckpt, Path(checkpoint_path), cfg.as_dict(), cells.kind(cell), corpus.vocab_size,
                                  len(corpus.train))
    if deterministic:
        set_deterministic(device)
    torch.manual_seed(seed)
    rec = new_record(cfg, cell, device, seed, command)
    rec["deterministic"] = deterministic
    wall0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_epoch, start_step, carried = 1, 0, None
    hb = Heartbeat(f"{cfg.name} {cell} {device.type}", heartbeat).__enter__()
    try:
        model = LanguageModel(cell, corpus.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                              cfg.init_scale).to(device=device, dtype=dtype)
        rec["backend"] = cells.detect_backend(model.rnn, device, dtype)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            ckpt_mod.set_rng_state(ckpt["rng"])
            resumed = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "epoch": ckpt["epoch"],
                       "step": ckpt["step"], "cell": cell, "env": rec["env"]}
            rec = {**ckpt["record"], "config": cfg.as_dict(), "cell": cell, "backend": rec["backend"]}
            rec["resumes"] = [*rec.get("resumes", []), resumed]
            wall0 -= rec.get("wall_seconds") or 0.0
            first_epoch, start_step = ckpt["epoch"], ckpt["step"]
            carried = ckpt["carried"]
        n_steps = data.epoch_size(corpus.train, cfg.batch_size, cfg.num_steps)
        if max_steps is not None:
            n_steps = min(n_steps, max_steps)
        rec["steps_per_epoch"] = n_steps
        rec["vocab_size"] = corpus.vocab_size
        every = checkpoint_every * 60.0

        def save_checkpoint(epoch: int, step: int, hidden, loss_sum, seconds: float) -> None:
            if checkpoint_path is None:
                return
            rec["wall_seconds"] = time.perf_counter() - wall0
            ckpt_mod.save(checkpoint_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ckpt_mod.rng_state(),
                "epoch": epoch, "step": step,
                "carried": {"hidden": None if hidden is None else tuple(h.cpu() for h in as_tuple(hidden)),
                            "loss_sum": float(loss_sum), "seconds": seconds},
                "record": rec, "vocab_size": corpus.vocab_size, "train_tokens": len(corpus.train)})

        with stop_requests() as stop:
            for epoch in range(first_epoch, cfg.epochs + 1):
                lr = cfg.lr_at(epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                model.train()
                state, loss_sum, before = None, torch.zeros((), device=device, dtype=torch.float64), 0.0
                if epoch == first_epoch and carried is not None:
                    hidden = carried["hidden"]
                    if hidden is not None:
                        hidden = tuple(h.to(device=device, dtype=dtype) for h in hidden)
                        state = hidden if model.kind == "LSTM" else hidden[0]
                    loss_sum += carried["loss_sum"]
                    before = carried["seconds"]
                first = start_step if epoch == first_epoch else 0
                hb.update(phase="train", epoch=epoch, epochs=cfg.epochs, step=first, steps=n_steps)
                bar = tqdm(total=n_steps, initial=first, desc=f"{cell} epoch {epoch}/{cfg.epochs}",
                           disable=not progress, mininterval=1.0, dynamic_ncols=True)
                pending: list[tuple[int, torch.Tensor]] = []
                last_loss = None
                env.synchronize(device)
                t0 = time.perf_counter()
                last_sync = last_ckpt = t0
                step = first
                for step, x, y in data.batches(corpus.train, cfg.batch_size, cfg.num_steps, start=first):
                    if step >= n_steps:
                        break
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    logits, state = model(x, state)
                    loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1))
                    opt.zero_grad(set_to_none=True)
                    (loss * cfg.num_steps).backward()
                    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    opt.step()
                    state = detach(state)
                    loss_sum += loss.detach()
                    hb.update(step=step + 1, words=(step + 1 - first) * x.numel())
                    pending.append((step, torch.stack([loss.detach().float(), norm.detach().float()])))
                    now = time.perf_counter()
                    stopping = stop["signal"] is not None
                    due_ckpt = every > 0 and now - last_ckpt >= every
                    if stopping or due_ckpt or now - last_sync >= 1.0 or step + 1 == n_steps:
                        # One synchronizing read per second: divergence check and progress display.
                        last_loss = check_finite(pending, last_loss, epoch)
                        pending.clear()
                        last_sync = time.perf_counter()
                        done = step + 1 - first
                        bar.set_postfix(ppl=f"{math.exp(min(loss_sum.item() / (step + 1), 50)):.1f}",
                                        wps=f"{done * x.numel() / (last_sync - t0):.0f}", lr=f"{lr:.3g}")
                        bar.update(step + 1 - bar.n)
                        if stopping or due_ckpt:
                            save_checkpoint(epoch, step + 1, state, loss_sum,
                                            before + time.perf_counter() - t0)
                            last_ckpt = time.perf_counter()
                        if stopping:
                            name = signal.Signals(stop["signal"]).name
                            rec["error"] = (f"interrupted by {name} in epoch {epoch} after step {step + 1}; "
                                            f"continue with --resume")
                            rec["exit_code"] = 128 + stop["signal"]
                            raise Interrupted
                env.synchronize(device)
                seconds = time.perf_counter() - t0
                bar.close()
                steps_done = min(step + 1, n_steps) - first
                words = steps_done * cfg.batch_size * cfg.num_steps
                rec["train_words"] += words
                rec["train_seconds"] += seconds
                mean = loss_sum.item() / n_steps
                v0 = time.perf_counter()
                valid = evaluate(model, corpus.valid, cfg.batch_size, cfg.num_steps, device, "valid", progress,
                                 heartbeat=hb)
                valid_seconds = time.perf_counter() - v0
                rec["valid_seconds"] = rec.get("valid_seconds", 0.0) + valid_seconds
                total_seconds = before + seconds
                elapsed = ((rec["epochs"][-1].get("elapsed_seconds") or 0.0) if rec["epochs"] else 0.0) + \
                    total_seconds + valid_seconds
                rec["epochs"].append({"epoch": epoch, "lr": lr, "train_ppl": safe_exp(mean), "valid_ppl": valid,
                                      "train_seconds": total_seconds, "valid_seconds": valid_seconds,
                                      "elapsed_seconds": elapsed,
                                      "words_per_sec": n_steps * cfg.batch_size * cfg.num_steps / total_seconds})
                rec["time_to_quality"] = time_to_quality(rec["epochs"], cfg.target_valid_ppl)
                if progress:
                    tqdm.write(f"{cell} epoch {epoch}: lr {lr:.4g}  train ppl {safe_exp(mean):.2f}  "
                               f"valid ppl {valid:.2f}  {rec['epochs'][-1]['words_per_sec']:.0f} words/sec")
                save_checkpoint(epoch + 1, 0, None, 0.0, 0.0)
        t0 = time.perf_counter()
        rec["test_ppl"] = evaluate(model, corpus.test, cfg.test_batch_size, cfg.test_num_steps, device, "test",
                                   progress, heartbeat=hb)
        rec["test_seconds"] = time.perf_counter() - t0
        rec["status"] = "ok"
    except UsageError:
        raise
    except Interrupted:
        rec["status"] = "interrupted"
    except Diverged as exc:
        rec["status"] = "diverged"
        rec["error"] = exc.args[0]
        rec["diverged_at"] = exc.args[1]
    except torch.OutOfMemoryError as exc:
        rec["status"] = "oom"
        rec["error"] = (f"out of memory with batch {cfg.batch_size}, {cfg.num_steps} steps, hidden {cfg.hidden_size}, "
                        f"{cfg.num_layers} layers, vocabulary {corpus.vocab_size}, {dtype}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'OutOfMemoryError'}")
        model = opt = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as exc:
        rec["status"] = "failed"
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc()
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        hb.__exit__(None, None, None)
        rec["words_per_sec"] = rec["train_words"] / rec["train_seconds"] if rec["train_seconds"] else None
        rec["peak_memory_bytes"] = env.peak_memory_bytes(device)
        rec["wall_seconds"] = time.perf_counter() - wall0
        rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rec["load_average_end"] = os.getloadavg()
    if results_dir is not None:
        rec["record_path"] = str(records.write_run(results_dir, rec))
    if checkpoint_path is not None:
        rec["checkpoint"] = str(checkpoint_path)
    return rec


def time_to_quality(epochs: list[dict], target: float) -> dict:
    """Seconds of training and evaluation (start-up excluded) until validation perplexity first reached
    ``target`` (MLPerf's measure), with the epoch; both None while it has not."""
    for e in epochs:
        if e.get("valid_ppl") is not None and e["valid_ppl"] <= target:
            return {"target_valid_ppl": target, "seconds": e.get("elapsed_seconds"), "epoch": e["epoch"]}
    return {"target_valid_ppl": target, "seconds": None, "epoch": None}


def as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def check_finite(pending: list[tuple[int, torch.Tensor]], last_loss: float | None, epoch: int) -> float | None:
    """Raise Diverged at the first step whose loss or gradient norm is not finite; else the last loss."""
    if not pending:
        return last_loss
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
    return float(values[-1, 0])
