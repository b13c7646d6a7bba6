"""Checkpoints: everything needed to continue a run exactly where it stopped, written atomically.

A checkpoint holds the model and optimizer state, the RNG states of every
device, the carried hidden state, the data position (epoch and next window),
the epoch's running loss and time, and the partial run record.  It is written
to a temporary file, flushed, fsynced and renamed, so a crash mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import torch

from lm.errors import UsageError
from lm.records import atomic_write

FORMAT = 1


def default_path(results: str | os.PathLike, config: str, cell: str, device: torch.device, seed: int,
                 step_mode: str = "eager", numerics: str = "") -> Path:
    """``<results>/checkpoints/<config>-<cell>[-<mode>][<numerics>]-<device>-seed<S>.pt``; ``numerics``: what the
    run's arithmetic adds to its id (``lm.train.numerics_suffix``: "", "-tf32", "-bf16")."""
    mode = "" if step_mode == "eager" else f"-{step_mode}"
    return Path(results) / "checkpoints" / f"{config}-{cell}{mode}{numerics}-{device.type}-seed{seed}.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **payload}, buf)
        atomic_write(path, buf.getvalue())
    except OSError as exc:
        raise UsageError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint; a missing, truncated or foreign file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}; run without --resume first, or pass --checkpoint PATH")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"checkpoint {path} is corrupt or unreadable ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UsageError(f"checkpoint {path} is not an rnnbench checkpoint (format {FORMAT})")
    return ckpt


def check_compatible(ckpt: dict, path: Path, config: dict, kind: str, vocab_size: int, train_tokens: int,
                     step_mode: str = "eager", dtype: str = "float32", fp32_matmul: str = "ieee") -> None:
    """Refuse to resume from a checkpoint of another config, cell kind, step mode, arithmetic or corpus (a
    checkpoint from before the arithmetic was recorded is float32 and resumes under either matmul precision)."""
    saved_mode = ckpt["record"].get("step_mode") or "eager"
    if saved_mode != step_mode:
        raise UsageError(f"checkpoint {path} is of a --step {saved_mode} run; resume it with --step {saved_mode}")
    saved_dtype = ckpt["record"].get("dtype") or "float32"
    if saved_dtype != dtype:
        raise UsageError(f"checkpoint {path} is of a --dtype {saved_dtype} run; resume it with --dtype {saved_dtype}")
    saved_matmul = ckpt["record"].get("fp32_matmul")
    if dtype == "float32" and saved_matmul is not None and saved_matmul != fp32_matmul:
        raise UsageError(f"checkpoint {path} is of a --fp32-matmul {saved_matmul} run; resume it with --fp32-matmul "
                         f"{saved_matmul}")
    saved = ckpt["record"]["config"]
    free = ("epochs", "target_valid_ppl")  # may change between sessions of one run
    diff = sorted(k for k in set(saved) | set(config) if k not in free and saved.get(k) != config.get(k))
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} vs {config.get(k)!r}" for k in diff[:4])
        raise UsageError(f"checkpoint {path} is from another config ({shown}); resume with the same config")
    if ckpt["record"]["kind"] != kind:
        raise UsageError(f"checkpoint {path} holds a {ckpt['record']['kind']} ({ckpt['record']['cell']}); "
                         f"it cannot resume a {kind} cell")
    if (ckpt["vocab_size"], ckpt["train_tokens"]) != (vocab_size, train_tokens):
        raise UsageError(f"checkpoint {path} was trained on another corpus (vocabulary {ckpt['vocab_size']}, "
                         f"{ckpt['train_tokens']} training tokens vs {vocab_size}, {train_tokens})")
