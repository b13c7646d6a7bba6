"""Run records (one JSON file per run) and the tables regenerated from them, all written atomically.

Every write goes to a temporary file in the same folder, is flushed and fsynced,
then renamed over the target, so a reader sees the old file or the new one and
never a torn one.  Table regeneration holds an exclusive lock on
``<results>/.lock`` so concurrent runs cannot interleave their rewrites; the
last writer regenerates from every record on disk, so no record is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path

from lm.errors import UsageError

STATUSES = ("ok", "failed", "diverged", "oom", "interrupted", "unavailable", "timeout")


def numerics_of(dtype: str, fp32_matmul: str | None) -> str:
    """A run's arithmetic in one word, part of its identity: "fp32" (float32, exact matmuls), "tf32" (float32, TF32
    matmuls: ``rnnbench train --fp32-matmul tf32``), "bf16" (bfloat16 parameters and activations), ..."""
    if dtype != "float32":
        return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    return {"ieee": "fp32", None: "fp32"}.get(fp32_matmul, fp32_matmul)


def numerics(rec: dict) -> str:
    """:func:`numerics_of` a run record.  Records made before the setting (up to 2026-11-28) ran float32 under torch's
    defaults: exact, but for cuDNN's RNNs, which used TF32 ("tf32-rnn": a cuDNN backend whose string does not say
    "exact float32"; the oldest do not say either way, and torch's default was TF32 then as now)."""
    fp32_matmul = rec.get("fp32_matmul")
    if "fp32_matmul" not in rec:
        backend = str(rec.get("backend") or "")
        fp32_matmul = "tf32-rnn" if backend.startswith("cuDNN") and "exact float32" not in backend else "ieee"
    return numerics_of(rec.get("dtype") or "float32", fp32_matmul)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # (read once: os.umask can only be read by setting it)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """``data`` into ``path``, whole or not at all, with the permissions a plain write would give (mkstemp's are
    0600: records and tables then read as private to whoever copies them)."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def usable_folder(path: str | os.PathLike, what: str) -> None:
    """UsageError unless ``path`` is a folder this process can write into, or one it can create: checked before any
    work starts, creating nothing (the nearest existing folder on the way must be a writable folder)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {path} is not writable ({exc.strerror or exc})") from None


def ensure_writable(results: str | os.PathLike) -> Path:
    """Prove now, before any work is done, that run records can be written under ``results``, creating nothing: a
    bad input is refused without leaving folders behind (:func:`write_run` makes them with the first record)."""
    results = Path(results)
    for folder in (results, results / "runs"):
        usable_folder(folder, "results folder")
    return results


@contextlib.contextmanager
def locked(results: Path):
    with open(results / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _clean(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_run(results: str | os.PathLike, record: dict) -> Path:
    """Write one run record and regenerate the train tables; returns the record's path."""
    results = Path(results)
    path = results / "runs" / f"{record['run_id']}.json"
    text = json.dumps(_clean(record), indent=2, sort_keys=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(results):
            atomic_write(path, text)
            write_train_tables(results)
    except OSError as exc:
        raise UsageError(f"cannot write results into {results}: {exc.strerror or exc}") from None
    return path


def load_runs(results: str | os.PathLike) -> list[dict]:
    """Every readable record under ``<results>/runs``; unreadable files are skipped."""
    out = []
    for p in sorted(Path(results, "runs").glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "run_id" in rec:
            rec["_path"] = str(p)
            out.append(rec)
    return out


# Worse than this many times a uniform guess over the vocabulary: a training window past it is a spike
# (lm.train.WindowSpikes, a record's ``train_spikes``); an evaluation past it is what the GPU check looks into
# (bench.gpu_check.implausible).
SPIKE_FACTOR = 2


TRAIN_COLUMNS = ["started", "config", "cell", "backend", "numerics", "device", "device_name", "epochs",
                 "steps_per_epoch", "valid_ppl", "test_ppl", "spikes", "words_per_sec", "peak_mem_mib", "wall_min",
                 "status", "commit", "run_id"]


def spikes(rec: dict) -> int | None:
    """Training windows of the run whose perplexity exceeded twice the vocabulary size (``train_spikes``, summed over
    its epochs; lm.train.WindowSpikes), None for a record from before they were counted."""
    counts = [e.get("train_spikes") for e in rec.get("epochs") or []]
    return sum(counts) if counts and all(isinstance(n, int) for n in counts) else None


def train_table(runs: list[dict]):
    import pandas as pd

    rows = []
    for r in runs:
        env = r.get("env", {})
        epochs = r.get("epochs") or []
        rows.append({
            "started": r.get("started"),
            "config": (r.get("config") or {}).get("name"),
            "cell": r.get("cell"),
            "backend": r.get("backend"),
            "numerics": numerics(r),
            "device": env.get("device"),
            "device_name": env.get("device_name"),
            "epochs": len(epochs),
            "steps_per_epoch": r.get("steps_per_epoch"),
            "valid_ppl": epochs[-1].get("valid_ppl") if epochs else None,
            "test_ppl": r.get("test_ppl"),
            "spikes": spikes(r),
            "words_per_sec": r.get("words_per_sec"),
            "peak_mem_mib": (r["peak_memory_bytes"] / 2**20) if r.get("peak_memory_bytes") else None,
            "wall_min": (r["wall_seconds"] / 60) if r.get("wall_seconds") else None,
            "status": r.get("status"),
            "commit": (env.get("commit") or "")[:12],
            "run_id": r.get("run_id"),
        })
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS).sort_values(["config", "device", "cell", "started"])


def write_train_tables(results: Path, runs: list[dict] | None = None) -> None:
    """``train.csv`` and ``train.md`` from ``runs`` (default: every readable record under ``<results>/runs``)."""
    df = train_table(load_runs(results) if runs is None else runs)
    atomic_write(results / "train.csv", df.to_csv(index=False, float_format="%.6g"))
    md = ["# Training runs", "",
          "Generated by `rnnbench` from `results/runs/*.json`; one row per run. words/sec: training tokens over",
          "training time (device synchronized, evaluation excluded). Peak memory: GPU max allocated, or the",
          "process's peak resident set on the CPU. spikes: training windows whose perplexity exceeded twice the",
          "vocabulary size (unstable training; an evaluation right after one scores like it), blank where not counted.",
          "",
          df.to_markdown(index=False, floatfmt=".4g") if len(df) else "(no runs yet)", ""]
    atomic_write(results / "train.md", "\n".join(md))
