"""Training loop: SGD with global-norm clipping, the tutorial's learning-rate schedule, run records.

The loss of one window is the tutorial's: cross-entropy summed over the
``num_steps`` timesteps and averaged over the batch; perplexity is
``exp(total loss / total timesteps)``.  The hidden state is carried across
windows (detached) and reset to zeros at the start of every epoch and of every
evaluation pass.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone

import torch
from torch import nn

import cells
from lm import data, env, records
from lm.config import Config
from lm.errors import UsageError
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


def evaluate(model: LanguageModel, tokens: torch.Tensor, batch_size: int, num_steps: int,
             device: torch.device, desc: str = "eval", progress: bool = True) -> float:
    """Perplexity of ``model`` on ``tokens`` (state carried across windows, starting from zeros)."""
    from tqdm import tqdm

    model.eval()
    total, count, state = torch.zeros((), device=device, dtype=torch.float64), 0, None
    n = data.epoch_size(tokens, batch_size, num_steps)
    with torch.no_grad():
        for _, x, y in tqdm(data.batches(tokens, batch_size, num_steps), total=n, desc=desc, leave=False,
                            disable=not progress, mininterval=1.0):
            x, y = x.to(device), y.to(device)
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1),
                                                 reduction="sum")
            count += y.numel()
    return math.exp(total.item() / count)


def new_record(cfg: Config, cell: str, device: torch.device, seed: int, command: list[str] | None) -> dict:
    started = datetime.now(timezone.utc)
    return {
        "schema": 1,
        "run_id": f"{started:%Y%m%dT%H%M%S}-{cfg.name}-{cell}-{device.type}-{uuid.uuid4().hex[:6]}",
        "command": " ".join(command) if command else None,
        "status": "running",
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "cell": cell,
        "kind": cells.kind(cell),
        "backend": None,
        "config": cfg.as_dict(),
        "seed": seed,
        "steps_per_epoch": None,
        "env": env.environment(device),
        "load_average_start": os.getloadavg(),
        "epochs": [],
        "test_ppl": None,
        "train_words": 0,
        "train_seconds": 0.0,
        "words_per_sec": None,
        "peak_memory_bytes": None,
        "wall_seconds": None,
        "error": None,
    }


def train(cfg: Config, cell: str, corpus: data.Corpus, device: torch.device, seed: int = 0,
          results_dir: str | os.PathLike | None = "results", max_steps: int | None = None,
          progress: bool = True, command: list[str] | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Train and evaluate one model; write its record under ``results_dir`` (None: write nothing).

    Returns the record.  ``max_steps`` truncates every epoch to that many windows.
    """
    from tqdm import tqdm

    if max_steps is not None and max_steps <= 0:
        raise UsageError(f"--max-steps must be a positive integer, got {max_steps}")
    if results_dir is not None:
        records.ensure_writable(results_dir)
    torch.manual_seed(seed)
    rec = new_record(cfg, cell, device, seed, command)
    wall0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = LanguageModel(cell, corpus.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                              cfg.init_scale).to(device=device, dtype=dtype)
        rec["backend"] = cells.detect_backend(model.rnn, device, dtype)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
        n_steps = data.epoch_size(corpus.train, cfg.batch_size, cfg.num_steps)
        if max_steps is not None:
            n_steps = min(n_steps, max_steps)
        rec["steps_per_epoch"] = n_steps
        for epoch in range(1, cfg.epochs + 1):
            lr = cfg.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            state, loss_sum, steps = None, torch.zeros((), device=device, dtype=torch.float64), 0
            bar = tqdm(total=n_steps, desc=f"{cell} epoch {epoch}/{cfg.epochs}", disable=not progress,
                       mininterval=1.0, dynamic_ncols=True)
            env.synchronize(device)
            t0 = time.perf_counter()
            last_shown = t0
            for _, x, y in data.batches(corpus.train, cfg.batch_size, cfg.num_steps):
                if steps >= n_steps:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits, state = model(x, state)
                loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1))
                opt.zero_grad(set_to_none=True)
                (loss * cfg.num_steps).backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                state = detach(state)
                loss_sum += loss.detach()
                steps += 1
                now = time.perf_counter()
                if progress and (now - last_shown > 1.0 or steps == n_steps):
                    mean = loss_sum.item() / steps  # synchronizes; only about once a second
                    now = time.perf_counter()
                    bar.set_postfix(ppl=f"{math.exp(min(mean, 50)):.1f}",
                                    wps=f"{steps * x.numel() / (now - t0):.0f}", lr=f"{lr:.3g}")
                    bar.update(steps - bar.n)
                    last_shown = now
            mean = loss_sum.item() / steps
            env.synchronize(device)
            seconds = time.perf_counter() - t0
            bar.close()
            words = steps * cfg.batch_size * cfg.num_steps
            rec["train_words"] += words
            rec["train_seconds"] += seconds
            valid = evaluate(model, corpus.valid, cfg.batch_size, cfg.num_steps, device, "valid", progress)
            rec["epochs"].append({"epoch": epoch, "lr": lr, "train_ppl": math.exp(mean), "valid_ppl": valid,
                                  "train_seconds": seconds, "words_per_sec": words / seconds})
            if progress:
                tqdm.write(f"{cell} epoch {epoch}: lr {lr:.4g}  train ppl {math.exp(mean):.2f}  "
                           f"valid ppl {valid:.2f}  {words / seconds:.0f} words/sec")
        rec["test_ppl"] = evaluate(model, corpus.test, cfg.test_batch_size, cfg.test_num_steps, device, "test",
                                   progress)
        rec["status"] = "ok"
    except UsageError:
        raise
    except Exception as exc:
        rec["status"] = "failed"
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc()
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        rec["words_per_sec"] = rec["train_words"] / rec["train_seconds"] if rec["train_seconds"] else None
        rec["peak_memory_bytes"] = env.peak_memory_bytes(device)
        rec["wall_seconds"] = time.perf_counter() - wall0
        rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rec["load_average_end"] = os.getloadavg()
    if results_dir is not None:
        rec["record_path"] = str(records.write_run(results_dir, rec))
    return rec
