"""What ``rnnbench report`` reads from a results folder, checked: run records, micro-benchmark JSON and matmul rates.

A file the report cannot use (unreadable, or a field of the wrong type) is skipped and named, never half-read; a
run is divided by the matmul rate of its own machine session as it stood when it started (:func:`rate_for`).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd


def _num(x) -> float:
    """A finite float, else NaN (None, strings, inf and NaN all read as missing)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


# The JSON types a field the report reads may have besides null, per kind of file; a file with another type there, or
# without a required field, is skipped (one warning on stderr, a count in the report's header) rather than crash the
# report halfway.
NUMBER = (int, float)
RUN_FIELDS = {"run_id": str, "cell": str, "config": dict, "env": dict, "epochs": list, "status": str, "started": str,
              "kind": str, "backend": str, "step_mode": str, "mode": str, "dtype": str, "fp32_matmul": str,
              "error": str, "load_average_start": list, "load_average_end": list,
              **dict.fromkeys(("seed", "steps_per_epoch", "max_eval_words", "vocab_size", "test_ppl", "words_per_sec",
                               "train_words", "train_seconds", "compile_seconds", "valid_seconds", "test_seconds",
                               "wall_seconds", "peak_memory_bytes"), NUMBER)}
CONFIG_FIELDS = {"name": str, **dict.fromkeys(("epochs", "hidden_size", "num_layers", "num_steps", "batch_size",
                                               "vocab_size", "target_valid_ppl"), NUMBER)}
ENV_FIELDS = {"device": str, "device_name": str, "commit": str, "commit_declared": str, "torch_threads": NUMBER}
EPOCH_FIELDS = dict.fromkeys(("epoch", "train_ppl", "valid_ppl", "elapsed_seconds", "train_spikes"), NUMBER)
BENCH_FIELDS = {"benchmarks": list, "machine_info": dict, "rnnbench": dict, "datetime": str}
BENCH_ENTRY_FIELDS = {"extra_info": dict, "stats": dict}
BENCH_EXTRA_FIELDS = dict.fromkeys(("pass", "shape", "cell", "kind", "backend", "device", "device_name"), str)
MACHINE_FIELDS = {"device": str, "device_name": str, "measured": str, "fp32_matmul_flops": NUMBER}
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", NUMBER: "a number", bool: "a boolean"}


def _json_type(v) -> str:
    return next((name for t, name in reversed(JSON_TYPES.items()) if isinstance(v, t)), "null")


def _shape_problem(doc, fields: dict, required=(), where: str = "") -> str | None:
    """What is wrong with the JSON object ``doc`` against ``fields`` (name -> allowed types besides null) and the
    names in ``required``, or None; ``where`` names ``doc`` within its file."""
    if not isinstance(doc, dict):
        return f"{where or 'the file'} is {_json_type(doc)}, not an object"
    for k in required:
        if doc.get(k) is None:
            return f"no `{where}{k}`"
    for k, types in fields.items():
        v = doc.get(k)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            return f"`{where}{k}` is {_json_type(v)}, not {JSON_TYPES[types]}"
    return None


def _run_problem(rec) -> str | None:
    """Why the report cannot use the run record ``rec`` (a field of the wrong type, no run_id, cell or config), or
    None."""
    problem = _shape_problem(rec, RUN_FIELDS, ("run_id", "cell", "config"))
    if problem:
        return problem
    for i, e in enumerate(rec.get("epochs") or []):
        if problem := _shape_problem(e, EPOCH_FIELDS, where=f"epochs[{i}]."):
            return problem
    return (_shape_problem(rec["config"], CONFIG_FIELDS, where="config.")
            or _shape_problem(rec.get("env") or {}, ENV_FIELDS, where="env."))


def _bench_problem(doc) -> str | None:
    """Why the report cannot use the pytest-benchmark JSON ``doc``, or None."""
    problem = _shape_problem(doc, BENCH_FIELDS, ("benchmarks",))
    for i, b in enumerate(doc["benchmarks"] if not problem else []):
        problem = problem or _shape_problem(b, BENCH_ENTRY_FIELDS, where=f"benchmarks[{i}].")
        problem = problem or _shape_problem(b.get("extra_info") or {}, BENCH_EXTRA_FIELDS,
                                            where=f"benchmarks[{i}].extra_info.")
    return problem


def _read(path: Path, problem, skipped: list | None):
    """The JSON in ``path`` if ``problem`` (a function of it) finds nothing wrong, else None with (path, what is wrong)
    appended to ``skipped``: "unreadable (...)" or "malformed (...)"."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        why = f"unreadable ({exc.strerror or exc})"
    except ValueError as exc:  # (not JSON, or not UTF-8)
        why = f"unreadable ({exc})"
    else:
        why = problem(doc)
        if why is None:
            return doc
        why = f"malformed ({why})"
    if skipped is not None:
        skipped.append((path, why))
    return None


def read_bench_file(path: Path, skipped: list | None = None) -> dict | None:
    """One micro-benchmark JSON file (pytest-benchmark's) if the report can use it, else None with (path, why)
    appended to ``skipped``."""
    return _read(path, _bench_problem, skipped)


def load_runs(results: str | Path, skipped: list | None = None) -> list[dict]:
    """Every run record under ``<results>/runs`` the report can use (as ``records.load_runs`` reads them, with
    ``_path``); each other file is appended to ``skipped`` as (path, why)."""
    out = []
    for path in sorted(Path(results, "runs").glob("*.json")):
        rec = _read(path, _run_problem, skipped)
        if rec is not None:
            rec["_path"] = str(path)
            out.append(rec)
    return out


def load_machines(results: str | Path, skipped: list | None = None) -> list[dict]:
    """Every matmul measurement under ``<results>/machine`` (``bench/machine.py``); each file without one is appended
    to ``skipped`` as (path, why)."""
    check = lambda m: _shape_problem(m, MACHINE_FIELDS, ("device_name", "fp32_matmul_flops"))  # noqa: E731
    return [m for p in sorted(Path(results, "machine").glob("*.json")) if (m := _read(p, check, skipped)) is not None]


def load_bench(results: str | Path, newest: bool = True,
               skipped: list | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Micro-benchmark rows (one per benchmark of ``bench/bench_cells.py``; with ``newest`` only the newest of each
    device, pass, shape and cell, else every file's) and the files' machine infos; each file the report cannot use is
    appended to ``skipped`` as (path, why)."""
    rows, machines = [], []
    for path in sorted(Path(results, "bench").rglob("*.json")):
        doc = read_bench_file(path, skipped)
        if doc is None:
            continue
        benches, info = doc["benchmarks"], doc.get("machine_info") or {}
        name = info.get("device_name") or (info.get("cpu") or {}).get("brand_raw") or "unknown"
        device = info.get("bench_device") or "cpu"
        matmul = (doc.get("rnnbench") or {}).get("matmul") or info.get("matmul")
        if isinstance(matmul, dict):
            machines.append({**matmul, "release": info.get("release")})
        for b in benches:
            extra, stats = b.get("extra_info") or {}, b.get("stats") or {}
            if not extra.get("pass") or not extra.get("cell"):
                continue  # not one of ours
            rows.append({
                "device": extra.get("device") or device,
                "device_name": extra.get("device_name") or name,
                "date": doc.get("datetime"),
                "file": str(path),
                "pass": extra["pass"], "shape": extra.get("shape"), "cell": extra["cell"],
                "kind": extra.get("kind"), "backend": extra.get("backend"),
                "hidden_size": _num(extra.get("hidden_size")), "num_steps": _num(extra.get("num_steps")),
                "batch_size": _num(extra.get("batch_size")),
                "median_ms": _num(stats.get("median")) * 1e3, "min_ms": _num(stats.get("min")) * 1e3,
                "rounds": stats.get("rounds"),
                "q1_ms": _num(stats.get("q1")) * 1e3, "q3_ms": _num(stats.get("q3")) * 1e3,
                "words_per_sec": _num(extra.get("words_per_sec")),
                "flops_per_call": _num(extra.get("flops_per_call")),
                "peak_memory_mib": _num(extra.get("peak_memory_bytes")) / 2**20,
                "torch": info.get("torch"), "torch_threads": extra.get("torch_threads") or info.get("torch_threads"),
                "load_average": _num(extra.get("load_average_1min")),
            })
    cols = ["device", "device_name", "date", "file", "pass", "shape", "cell", "kind", "backend", "hidden_size",
            "num_steps", "batch_size", "median_ms", "min_ms", "rounds", "q1_ms", "q3_ms", "words_per_sec",
            "flops_per_call", "peak_memory_mib", "torch", "torch_threads", "load_average"]
    df = pd.DataFrame(rows, columns=cols)
    if len(df) and newest:  # the newest measurement of each (device, pass, shape, cell)
        df = (df.sort_values("date").drop_duplicates(["device", "device_name", "pass", "shape", "cell"], keep="last")
              .reset_index(drop=True))
    return df, machines


def matmul_rates(results: str | Path, extra: list[dict],
                 skipped: list | None = None) -> dict[tuple[str, str], list[dict]]:
    """(device type, device name) -> its matmul measurements, oldest first: ``<results>/machine``'s and ``extra``
    (the benchmark files'), one that both hold counted once."""
    out: dict[tuple[str, str], list[dict]] = {}
    seen = set()
    for m in [*load_machines(results, skipped), *extra]:
        key = (m.get("device"), m.get("device_name"), m.get("measured"), m.get("fp32_matmul_flops"))
        if not math.isnan(_num(m.get("fp32_matmul_flops"))) and str(key) not in seen:
            seen.add(str(key))
            out.setdefault((m.get("device"), m.get("device_name")), []).append(m)
    for ms in out.values():
        ms.sort(key=lambda m: str(m.get("measured")))
    return out


def rate_for(rates: dict, device, device_name, threads=None, when=None, platform=None) -> dict | None:
    """The device's measurement as it stood at ``when`` (an ISO time: a run's start): the last one taken before it,
    else the first after it; without ``when`` the newest; one taken with the same number of CPU threads first, and
    before that one of the run's machine image (a benchmark file's kernel ``release`` within the run's ``platform``).
    (Machines of one name differ: CPU sessions' "AMD EPYC" measured 71, 76 and 97 GFLOP/s a thread, 97 on another
    image, so a run is not divided by another session's figure.)"""
    ms = rates.get((device, device_name)) or []
    same = [m for m in ms if threads is not None and str(m.get("torch_threads")) == str(threads)]
    ms = same or ms  # (oldest first: matmul_rates)
    image = [m for m in ms if isinstance(platform, str) and m.get("release") and f"-{m['release']}-" in platform]
    ms = image or ms
    at = _time(when)
    if at is None or not ms:
        return (ms or [None])[-1]
    before = [m for m in ms if (t := _time(m.get("measured"))) is not None and t <= at]
    return before[-1] if before else ms[0]


def _time(value):
    """An ISO time as an aware datetime (naive ones taken as UTC), or None."""
    try:
        t = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
