"""``rnnbench report``: ``REPORT.md``, ``report.csv`` and plots from the records in a results folder.

Inputs, all optional (read and checked by :mod:`bench.report_data`):

- ``<results>/runs/*.json``: training run records (``rnnbench train`` / ``rnnbench sweep``);
- ``<results>/bench/**/*.json``: pytest-benchmark JSON from ``bench/bench_cells.py``;
- ``<results>/machine/*.json`` and the benchmark JSON's ``machine_info``: measured matmul rates.

Outputs: ``<results>/REPORT.md``, ``<results>/report.csv`` (one row per run) and
``<results>/plots/*.png``.  Every ratio is taken within one device (device type and
name); every table is headed by its device and the dates of its numbers.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

import cells
from bench import flops
from bench.machine import name_slug
from bench.report_data import _num, load_bench, load_runs, matmul_rates, rate_for
from lm import config as lm_config
from lm import records
from lm.train import time_to_quality

BASELINE = "cudnn_lstm"
BASELINE_OF_KIND = {"LSTM": "cudnn_lstm", "GRU": "cudnn_gru"}
# At a glance's last row per preset: every cell of every kind (the minimal RNNs too, another model each), against
# cudnn_lstm -- the question "which recurrent cell" as a user asks it.
ANY = "any"


def _of_kind(df: pd.DataFrame, kind) -> pd.DataFrame:
    """``df``'s rows of ``kind``; every row for :data:`ANY`."""
    return df if kind == ANY else df[df["kind"] == kind]


def _baseline_cell(kind) -> str | None:
    return BASELINE_OF_KIND["LSTM"] if kind == ANY else BASELINE_OF_KIND.get(kind)
# Micro-benchmark passes of another arithmetic than float32 with exact matmuls: fwdbwd-bf16, step-tf32, ...
NUMERIC_PASSES = ("bf16", "tf32")
PTB_VOCAB = 10000
PTB_PRESETS = ("small", "medium", "large")

# Published perplexities.  Zaremba, Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization",
# arXiv:1409.2329, Table 1 (small = their non-regularized LSTM).  TensorFlow's PTB tutorial,
# tensorflow/models tutorials/rnn/ptb/ptb_word_lm.py, the results table in its docstring.
PAPER = {
    "small": {"epochs": 13, "paper": (120.7, 114.5), "tutorial": (37.99, 121.39, 115.91)},
    "medium": {"epochs": 39, "paper": (86.2, 82.7), "tutorial": (48.45, 86.16, 82.07)},
    "large": {"epochs": 55, "paper": (82.2, 78.4), "tutorial": (37.87, 82.62, 78.29)},
}
# Time to quality: the presets' targets (lm/config.py), also for records made before the field existed.
TARGET_VALID_PPL = {name: lm_config.PRESETS[name].target_valid_ppl for name in PTB_PRESETS}
PAPER_SOURCE = ("Zaremba, Sutskever & Vinyals 2014, *Recurrent Neural Network Regularization*, "
                "[arXiv:1409.2329](https://arxiv.org/abs/1409.2329), Table 1 (small = the non-regularized LSTM); "
                "TensorFlow PTB tutorial, `tensorflow/models` `tutorials/rnn/ptb/ptb_word_lm.py`, docstring table")

# A run's planned length: the report keeps the latest run of each (a shorter run never hides a longer one).
LENGTH_KEYS = ["cell", "mode", "numerics", "epochs_planned", "steps_per_epoch", "max_eval_words", "overrides"]
# Runs compared with each other (the ratio to cudnn_lstm, the seed statistics): one step mode, one arithmetic.
LIKE_KEYS = ["mode", "numerics"]

RUN_COLUMNS = [
    "run_id", "started", "date", "config", "cell", "seed", "mode", "numerics", "kind", "backend", "device",
    "device_name", "status", "error",
    "epochs_planned", "epochs_done", "steps_per_epoch", "max_eval_words", "overrides", "hidden_size", "num_layers",
    "num_steps", "batch_size",
    "vocab_size", "train_words", "train_seconds", "compile_seconds", "valid_seconds", "test_seconds", "words_per_sec",
    "peak_memory_mib",
    "final_train_ppl", "final_valid_ppl", "best_valid_ppl", "test_ppl", "target_valid_ppl", "time_to_quality_s",
    "time_to_quality_epoch", "wall_minutes", "flops_per_token", "achieved_gflops",
    "matmul_gflops", "matmul_fraction", "speed_vs_cudnn_lstm", "torch", "triton", "cuda", "cudnn", "commit",
    "torch_threads", "load_average_start", "load_average_end", "record", "finished", "hostname", "platform", "session",
]


def _date(iso) -> str:
    return str(iso)[:10] if iso else ""


def _dates(values) -> str:
    ds = sorted({_date(v) for v in values if v and not (isinstance(v, float) and math.isnan(v))})
    if not ds:
        return "unknown date"
    return ds[0] if len(ds) == 1 else f"{ds[0]} to {ds[-1]}"


def runs_frame(runs: list[dict], rates: dict[tuple[str, str], list[dict]] | None = None) -> pd.DataFrame:
    """One row per run record, with FLOP/s, matmul fraction and speed relative to cudnn_lstm (same device)."""
    rates = rates or {}
    rows = []
    for r in runs:
        env, cfg = r.get("env") or {}, r.get("config") or {}
        epochs = [e for e in (r.get("epochs") or []) if isinstance(e, dict)]
        valid = [_num(e.get("valid_ppl")) for e in epochs]
        kind = r.get("kind") or _kind(r.get("cell"))
        hidden, layers = _num(cfg.get("hidden_size")), _num(cfg.get("num_layers"))
        vocab = _num(r.get("vocab_size") or cfg.get("vocab_size"))
        if math.isnan(vocab) and cfg.get("name") in PTB_PRESETS:
            vocab = PTB_VOCAB  # records do not store the vocabulary size; the presets train on PTB
        per_token = (flops.lm_flops_per_token(kind, int(hidden), int(layers), int(vocab))
                     if kind in flops.GATES and not any(map(math.isnan, (hidden, layers, vocab))) else math.nan)
        wps = _num(r.get("words_per_sec"))
        rate = rate_for(rates, env.get("device"), env.get("device_name"), env.get("torch_threads"),
                        r.get("started"), env.get("platform")) or {}
        matmul = _num(rate.get("fp32_matmul_flops"))
        load, load_end = r.get("load_average_start"), r.get("load_average_end")
        ttq = quality(r)
        rows.append({
            "run_id": r.get("run_id"), "started": r.get("started"), "date": _date(r.get("started")),
            "config": cfg.get("name"), "cell": r.get("cell"), "kind": kind, "backend": r.get("backend"),
            "seed": r.get("seed"), "mode": run_mode(r), "numerics": records.numerics(r),
            "device": env.get("device"), "device_name": env.get("device_name"), "status": r.get("status"),
            "error": r.get("error"), "epochs_planned": cfg.get("epochs"), "epochs_done": len(epochs),
            "steps_per_epoch": r.get("steps_per_epoch"), "max_eval_words": _num(r.get("max_eval_words")),
            "overrides": overrides(cfg),
            "hidden_size": hidden, "num_layers": layers,
            "num_steps": cfg.get("num_steps"), "batch_size": cfg.get("batch_size"), "vocab_size": vocab,
            "train_words": _num(r.get("train_words")), "train_seconds": _num(r.get("train_seconds")),
            "compile_seconds": _num(r.get("compile_seconds")),
            "valid_seconds": _num(r.get("valid_seconds")),
            "test_seconds": _num(r.get("test_seconds")),
            "words_per_sec": wps, "peak_memory_mib": _num(r.get("peak_memory_bytes")) / 2**20,
            "final_train_ppl": _num(epochs[-1].get("train_ppl")) if epochs else math.nan,
            "final_valid_ppl": valid[-1] if valid else math.nan,
            "best_valid_ppl": min((v for v in valid if not math.isnan(v)), default=math.nan),
            "test_ppl": _num(r.get("test_ppl")), "target_valid_ppl": ttq["target_valid_ppl"],
            "time_to_quality_s": ttq["seconds"], "time_to_quality_epoch": ttq["epoch"],
            "wall_minutes": _num(r.get("wall_seconds")) / 60,
            "flops_per_token": per_token, "achieved_gflops": wps * per_token / 1e9,
            "matmul_gflops": matmul / 1e9, "matmul_fraction": wps * per_token / matmul,
            "speed_vs_cudnn_lstm": math.nan, "torch": env.get("torch"), "triton": env.get("triton"),
            "cuda": env.get("cuda"), "cudnn": env.get("cudnn"), "commit": commit_text(env),
            "torch_threads": env.get("torch_threads"),
            "load_average_start": _num(load[0]) if isinstance(load, (list, tuple)) and load else math.nan,
            "load_average_end": _num(load_end[0]) if isinstance(load_end, (list, tuple)) and load_end else math.nan,
            "record": r.get("record_path") or r.get("_path"),
            "finished": r.get("finished"), "hostname": env.get("hostname"), "platform": env.get("platform"),
            "session": env.get("boot_id") or env.get("platform"),
        })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    df["beside"] = beside(df)
    for _, group in df.groupby(["config", "device", "device_name", *LIKE_KEYS], dropna=False):  # like with like
        for i, r in group.iterrows():
            base = _baseline(group, r["session"])
            if base is not None:
                df.at[i, "speed_vs_cudnn_lstm"] = r["words_per_sec"] / base["words_per_sec"]
    return df.sort_values(["config", "device", "device_name", "cell", "started"], na_position="last")


def commit_text(env: dict) -> str:
    """The record's commit (12 hex digits), or why there is none."""
    commit = env.get("commit")
    if commit and commit != "unknown":
        return commit[:12] + (" (exported tree)" if env.get("provenance") else "")
    declared = env.get("commit_declared")
    return "none: not a git checkout" + (f" (declared {declared[:12]})" if declared else "")


def quality(r: dict) -> dict:
    """Time to quality of one record (``lm.train.time_to_quality`` over its epochs), NaN where there is none;
    records older than the field get their preset's target, and seconds only when their epochs carry
    ``elapsed_seconds``."""
    cfg = r.get("config") or {}
    target = _num(cfg.get("target_valid_ppl"))
    if math.isnan(target):
        target = _num(TARGET_VALID_PPL.get(cfg.get("name")))
    epochs = [e for e in (r.get("epochs") or []) if isinstance(e, dict) and not math.isnan(_num(e.get("valid_ppl")))]
    ttq = time_to_quality(epochs, target) if not math.isnan(target) else {"seconds": None, "epoch": None}
    return {"target_valid_ppl": target, "seconds": _num(ttq["seconds"]),
            "epoch": math.nan if ttq["epoch"] is None else ttq["epoch"]}


def _kind(cell) -> str | None:
    try:
        return cells.kind(cell)
    except Exception:  # unknown here, or its module does not import on this machine
        return None


def _baseline(group: pd.DataFrame, session=None) -> pd.Series | None:
    """The latest finished cudnn_lstm run with a words/sec figure in ``group`` (one preset on one device, one step
    mode and arithmetic), one that trained alone (:func:`beside`) before one that did not; with ``session`` (a run's
    machine session: its boot id, or for records without one its machine image, ``env.platform``) of that session
    only, else none -- machines of one name differ: the CPU sessions' "AMD EPYC" hosts by a third, between images."""
    ok = group[(group["cell"] == BASELINE) & (group["status"] == "ok") & group["words_per_sec"].notna()]
    if isinstance(session, str):
        ok = ok[ok["session"] == session]
    ok = ok.sort_values(["started"]).sort_values("beside", kind="stable", key=lambda b: b > 0, ascending=False)
    return ok.iloc[-1] if len(ok) else None


def beside(runs: pd.DataFrame) -> pd.Series:
    """Per run, how many other recorded runs trained on the same host (hostname, and machine session where both
    records name it) while it did: their words/sec shared the machine (on a 2-core CPU, two runs of one thread each
    measured a third apart), so they are not a machine's best and compare only with runs under like conditions.  A
    run's span is its record's start to finish: a resumed run's includes its pause."""
    t0 = pd.to_datetime(runs["started"], errors="coerce", utc=True)
    t1 = pd.to_datetime(runs["finished"], errors="coerce", utc=True)
    trained = (runs["train_seconds"] > 0) & (t1 > t0)  # (a run refused or stopped at once: no share)
    out = pd.Series(0, index=runs.index)
    for i in runs.index[trained]:
        same = ((runs["hostname"] == runs.at[i, "hostname"]) & (runs["device"] == runs.at[i, "device"])
                & (runs["session"] == runs.at[i, "session"]) & trained & (runs.index != i))
        out[i] = int((same & (t0 < t1[i]) & (t1 > t0[i])).sum())
    return out


def _baselines_note(group: pd.DataFrame) -> str:
    """The runs the ratio column divides by in ``group`` (one preset on one device): one per step mode and
    arithmetic that has one, named as the cell column names them."""
    found, without = [], []
    for key, like in group.groupby(LIKE_KEYS, dropna=False, sort=True):
        base = _baseline(like)
        tag = _tags(*key)
        if base is not None:
            found.append(f"{'[' + tag + '] ' if tag else ''}`{base['run_id']}` ({_date(base['started'])}, "
                         f"{base['words_per_sec']:.0f} words/sec)")
        else:
            without.append(tag or "eager, exact float32")
    if not found:
        return f"No finished `{BASELINE}` run here: the ratio column is empty."
    return (("Baseline: " if len(found) == 1 else "Baselines, per step mode and arithmetic: ") + "; ".join(found) + "."
            + (f" No finished `{BASELINE}` run of {', '.join(without)}: those rows have no ratio (ratios never cross "
               "step modes or arithmetics)." if without else ""))


def _tags(mode, numerics) -> str:
    """What a cell's label adds for its step mode and arithmetic: ``cuda-graph, tf32``; empty for eager float32."""
    tags = [t for t in (mode, numerics) if isinstance(t, str) and t not in ("eager", "fp32")]
    return ", ".join(tags)


# --- markdown -------------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(df: pd.DataFrame, formats: dict[str, str]) -> str:
    out = pd.DataFrame({c: [_fmt(v, formats.get(c, ".4g")) for v in df[c]] for c in df.columns})
    return out.to_markdown(index=False, disable_numparse=True)


def _device_title(device, device_name) -> str:
    return f"{device}: {device_name}" if isinstance(device_name, str) and device_name else str(device)


def _slug(device, device_name) -> str:
    return name_slug(str(device), device_name if isinstance(device_name, str) else None)


GLANCE_PASSES = (("fwdbwd", "fastest fwd+bwd"), ("step", "fastest LM step"))
# The same as one CUDA graph each (the kernels without the host's share of an eager call; the order can turn: on the
# H200 at small, 2026-11-28, triton_lstm's eager LM step was 1.31x cuDNN's and its captured one 0.50x).  A device's
# table has these columns only where it has such a figure.
GLANCE_GRAPH_PASSES = (("fwdbwd-cuda-graph", "fastest fwd+bwd, CUDA graph"),
                       ("step-cuda-graph", "fastest LM step, CUDA graph"))


def glance_section(runs: pd.DataFrame, bench: pd.DataFrame) -> list[str]:
    """The question the suite answers, per device, preset and kind of cell (LSTM, GRU), from the sections below: the
    fastest cell in the micro-benchmarks (within the run that timed the kind's cuDNN cell) and, among finished
    full-schedule training runs in exact float32 with the preset's settings, the lowest test perplexity, the most
    training words/sec and the soonest time to quality (means over seeds, with the cells the seeds do not tell
    apart from the winner)."""
    md = ["## At a glance", "",
          "Which cell to use, per device, preset and kind, from the sections below; nothing here is measured anew. "
          "**fastest fwd+bwd / LM step**: the micro-benchmarks' fastest cell of the kind, float32 with exact matmuls, "
          "among the cells timed in the same benchmark run as the kind's cuDNN cell (`cudnn_lstm` / `cudnn_gru`), with"
          " its time and its speed over cuDNN's (>1 is faster; where cuDNN is the fastest, the runner-up's); **…, CUDA"
          " graph**: the same with each call captured as one CUDA graph and replayed (the kernels alone, without the "
          "host's share of an eager call: where eager calls are host-bound the order can turn), on devices that have "
          "such figures. **lowest test ppl**, **most words/sec**, **soonest to quality**: over the finished runs of "
          "the preset's whole schedule with its settings as published, exact float32 (bfloat16 and TF32 runs, "
          "truncated runs and runs with changed settings are in the training tables), one step mode each (a cell's "
          "label names a mode other than eager); the mean over seeds where a cell has several, and *within spread of* "
          "the cells whose mean ± sd overlaps the winner's (the seeds do not tell them apart). A cell that is faster "
          "per word but converges worse shows here as faster and worse: read the columns together. **any**: every cell "
          "of every kind, the minimal RNNs too (each another model: read its perplexity beside its speed), timed "
          "against `cudnn_lstm`. *within noise of*: cells whose interquartile range of timed rounds overlaps the "
          "fastest's in that benchmark run (it does not tell them apart).", ""]
    found = False
    keys = sorted({(d, n) for d, n in zip(bench["device"], bench["device_name"], strict=True)}
                  | {(d, n) for d, n in zip(runs["device"], runs["device_name"], strict=True)
                     if isinstance(d, str)}, key=lambda k: (str(k[0]), str(k[1])))
    full = _full_schedule(runs)
    for device, name in keys:
        rows = []
        for preset in PTB_PRESETS:
            for kind in (*BASELINE_OF_KIND, ANY):
                row = {"preset": preset, "kind": kind}
                for p, label in GLANCE_PASSES + GLANCE_GRAPH_PASSES:
                    row[label] = _fastest(bench, device, name, preset, p, kind)
                mine = _of_kind(full[(full["device"] == device) & (full["device_name"] == name)
                                     & (full["config"] == preset)], kind)
                row.update(_training_winners(mine))
                if any(v != "—" for k, v in row.items() if k not in ("preset", "kind")):
                    rows.append(row)
        if rows:
            found = True
            table = pd.DataFrame(rows)
            table = table.drop(columns=[label for _, label in GLANCE_GRAPH_PASSES if (table[label] == "—").all()])
            md += [f"### {_device_title(device, name)}", "", _table(table, {}), ""]
    if not found:
        md += ["(no micro-benchmark or finished training run yet)", ""]
    return md


def _reference_file(sel: pd.DataFrame, kind) -> str | None:
    """Of the benchmark files in ``sel`` (every file's rows of one device, shape and pass) that timed ``kind``'s cuDNN
    cell, the one that timed the most cells of the kind, then the newest; None where none did (or the kind has no
    cuDNN cell).  The micro-benchmark tables and At a glance take their figures of the kind from it."""
    if kind == ANY:  # the LSTM row's run, every kind of cell in it: the same cudnn_lstm figure as that row's
        return _reference_file(sel, "LSTM")
    mine = sel[(sel["kind"] == kind) & sel["median_ms"].notna()]
    files = mine[mine["cell"] == _baseline_cell(kind)]["file"].unique()
    if not len(files):
        return None
    return max(files, key=lambda f: (mine[mine["file"] == f]["cell"].nunique(),
                                     str(mine[mine["file"] == f]["date"].max())))


def micro_figures(bench: pd.DataFrame) -> pd.DataFrame:
    """The one figure per device, shape, pass and cell that the micro-benchmark tables show, from every file's rows
    (``load_bench(newest=False)``): the figure of the cell's kind's reference file (:func:`_reference_file`), else,
    for a cell that file did not time, the cell's newest figure.  ``vs_cudnn``: the time of the kind's cuDNN cell in
    the figure's own file over the figure's (NaN where that file has none), so that a ratio never divides figures of
    two benchmark runs (sessions, machines and loads differ)."""
    have = bench[bench["median_ms"].notna()].sort_values("date", kind="stable") if len(bench) else bench
    out = []
    for _, sel in have.groupby(["device", "device_name", "shape", "pass"], sort=False):
        for _, rows in sel.groupby("cell", sort=False):
            ref = _reference_file(sel, rows["kind"].iloc[-1])
            row = (rows[rows["file"] == ref] if (rows["file"] == ref).any() else rows).iloc[-1]  # (newest last)
            base = sel[(sel["file"] == row["file"]) & (sel["cell"] == BASELINE_OF_KIND.get(row["kind"]))]
            out.append({**row, "vs_cudnn": base["median_ms"].iloc[-1] / row["median_ms"] if len(base) else math.nan})
    return pd.DataFrame(out, columns=[*bench.columns, "vs_cudnn"])


def _fastest(bench: pd.DataFrame, device, name, preset: str, pass_: str, kind: str) -> str:
    """The fastest cell of ``kind`` in ``pass_`` at ``preset`` on one device, among those timed in the kind's reference
    file (:func:`_reference_file`, as in the micro-benchmark tables): 'name time (ratio to cuDNN)'; '—' without a cuDNN
    figure.  ``bench``: every file's rows (``load_bench(newest=False)``)."""
    if bench.empty:
        return "—"
    sel = _of_kind(bench[(bench["device"] == device) & (bench["device_name"] == name) & (bench["shape"] == preset)
                         & (bench["pass"] == pass_) & bench["median_ms"].notna()], kind)
    base_name = _baseline_cell(kind)
    file = _reference_file(sel, kind)
    if file is None:
        return "—"
    same = sel[sel["file"] == file].sort_values("date").drop_duplicates("cell", keep="last").sort_values("median_ms")
    b = same[same["cell"] == base_name].iloc[0]
    best = same.iloc[0]
    # cells whose interquartile range of rounds overlaps the winner's: that run does not tell them apart
    near = [f"`{c}`" for c, q1, q3 in zip(same["cell"], same["q1_ms"], same["q3_ms"], strict=True)
            if c != best["cell"] and q1 <= best["q3_ms"] and best["q1_ms"] <= q3]
    noise = f"; within noise of {', '.join(near)}" if near else ""
    if best["cell"] != base_name:
        return (f"`{best['cell']}` {_ms(best['median_ms'])} ({b['median_ms'] / best['median_ms']:.2f}× as fast as "
                f"`{base_name}`, {_ms(b['median_ms'])}{noise})")
    if len(same) < 2:
        return f"`{base_name}` {_ms(b['median_ms'])} (no other cell of its kind in that run)"
    second = same.iloc[1]
    ratio = b["median_ms"] / second["median_ms"]
    return (f"`{base_name}` {_ms(b['median_ms'])} (next: `{second['cell']}` {_ms(second['median_ms'])}, {ratio:.2f}× "
            f"as fast{noise})")


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.3g} ms"


def epoch_steps(runs: pd.DataFrame) -> pd.Series:
    """Per run (``runs_frame``'s rows), the steps of a whole epoch at its batch size and window length as far as the
    records know: the most steps an epoch of any record of a PTB preset with the same batch size and number of steps
    (``--max-steps`` truncates epochs; medium and large share theirs); a config that is not a PTB preset, its own
    most."""
    if runs.empty:
        return pd.Series(dtype=float)
    group = [runs["config"].where(~runs["config"].isin(PTB_PRESETS), "PTB"), runs["batch_size"], runs["num_steps"]]
    steps = pd.to_numeric(runs["steps_per_epoch"], errors="coerce")
    return steps.groupby(group, dropna=False).transform("max")


def _published_schedule(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether it trained a PTB preset's published schedule: all its epochs, each whole (every window:
    :func:`epoch_steps`), with the preset's settings."""
    if runs.empty:
        return pd.Series(dtype=bool)
    epochs = runs["config"].map(lambda c: PAPER[c]["epochs"] if c in PAPER else math.nan)
    return ((runs["epochs_done"] == epochs) & (runs["epochs_planned"] == epochs) & (runs["overrides"] == "")
            & (runs["steps_per_epoch"] == epoch_steps(runs)))


def _full_schedule(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs of a PTB preset's whole schedule (:func:`_published_schedule`), evaluated on the whole streams,
    in exact float32."""
    if runs.empty:
        return runs
    return runs[_published_schedule(runs) & (runs["status"] == "ok") & (runs["numerics"] == "fp32")
                & runs["max_eval_words"].isna()].copy()


def _epochs_text(r, full_steps) -> str:
    """A run's epochs done of planned, ``1/1``, with its steps an epoch where ``--max-steps`` truncated them (``1/1
    (400/1327 steps)``) and its evaluation where ``--max-eval-words`` cut it."""
    steps = _num(r.steps_per_epoch)
    cut = f" ({steps:.0f}/{full_steps:.0f} steps)" if steps < _num(full_steps) else ""
    return f"{r.epochs_done}/{r.epochs_planned}{cut}{_eval_mark(r.max_eval_words)}"


def _training_winners(runs: pd.DataFrame) -> dict[str, str]:
    """Of one preset, device and kind's full-schedule runs: the lowest mean test perplexity, the most mean words/sec,
    the soonest mean time to quality (over cells whose every seed reached it), each with the cells within its
    spread."""
    cols = ("lowest test ppl", "most words/sec", "soonest to quality")
    if runs.empty:
        return dict.fromkeys(cols, "—")
    rows = []
    for (cell, mode), g in runs.groupby(["cell", "mode"], sort=True):
        g = g.sort_values("started")
        g = pd.concat([g[g["seed"].notna()].drop_duplicates("seed", keep="last"), g[g["seed"].isna()]])
        label = cell if mode == "eager" else f"{cell} [{mode}]"
        ttq = g["time_to_quality_s"]
        rows.append({"label": label, "n": len(g), "test": (g["test_ppl"].mean(), g["test_ppl"].std(ddof=1)),
                     "wps": (g["words_per_sec"].mean(), g["words_per_sec"].std(ddof=1)),
                     "ttq": (ttq.mean(), ttq.std(ddof=1)) if ttq.notna().all() else (math.nan, math.nan)})

    def pick(key: str, lower: bool, fmt, unit: str = "") -> str:
        have = [r for r in rows if not math.isnan(r[key][0])]
        if not have:
            return "—"
        best = min(have, key=lambda r: r[key][0] if lower else -r[key][0])
        m, sd = best[key]
        text = f"`{best['label']}` {fmt(m)}" + (f" ± {fmt(sd)}" if best["n"] > 1 else "") + unit + (
            f" ({best['n']} seeds)" if best["n"] > 1 else "")
        near = [r["label"] for r in have if r is not best and r["n"] > 1 and best["n"] > 1
                and abs(r[key][0] - m) <= r[key][1] + sd]
        return text + (f"; within spread of {', '.join(f'`{n}`' for n in near)}" if near else "")

    sessions = runs["session"].nunique()
    mixed = "" if sessions < 2 else f" — over {sessions} machine sessions, which differ in speed"
    wps, ttq = pick("wps", False, lambda v: f"{v:.0f}"), pick("ttq", True, lambda v: f"{v / 60:.1f}", " min")
    return {"lowest test ppl": pick("test", True, lambda v: f"{v:.2f}"),
            "most words/sec": wps + (mixed if wps != "—" else ""),
            "soonest to quality": ttq + (mixed if ttq != "—" else "")}


def training_section(runs: pd.DataFrame, rates: dict, results: Path | None = None) -> list[str]:
    """One table per preset and device of ``runs``; ``results``: the folder, whose notes (``gru-spikes/README.md``)
    the legends point to where it has them."""
    md = ["## Training runs", "",
          "One table per preset and device; per cell the latest run of each planned length (all runs are in "
          "`report.csv`). words/sec: training tokens over training time (evaluation excluded). "
          f"**vs {BASELINE}**: words/sec over that of the latest finished `{BASELINE}` run of the same preset on the "
          "same device, in the same step mode and arithmetic (>1 is faster). A cell's label names its step mode "
          "when not eager, and its arithmetic when not float32 with exact matmuls: `tf32` (float32, every matmul "
          "on CUDA in TF32: `--fp32-matmul tf32`), `bf16` (`--dtype bfloat16`), `tf32-rnn` (a record from before "
          "the setting existed, up to 2026-11-28: float32 under torch's defaults, where cuDNN's RNNs use TF32 and "
          "everything else is exact). Peak memory: GPU max allocated, or the training process's peak resident "
          "set on the CPU. GFLOP/s and **% matmul**: see *FLOP/s* below. **load**: the machine's 1-minute load "
          "average at the start and end of the run, and *beside N* where N other recorded runs trained on the same "
          "host at the same time (in its machine session); on a CPU, runs under different load are not comparable, nor "
          "runs of different machine sessions: hosts of one name and CPU model differed by a third in speed. So a "
          "run is divided only by a `cudnn_lstm` run of its session -- its boot id (`env.boot_id`, records since "
          "2026-11-29), else its machine image (`env.platform`) -- one that trained alone where there is one; — "
          "where its session has none. "
          "**time to quality**: wall-clock seconds of training and evaluation (start-up excluded) until validation "
          "perplexity first reached the preset's target (the paper's validation perplexity + 5%: small 126.7, "
          "medium 90.5, large 86.3), with the epoch; — when never reached. **train s / valid s / test s**: the "
          "seconds spent in each phase (evaluation runs the tutorial's definition in long windows). **epochs**: done "
          "of planned, with the steps an epoch of a run whose epochs `--max-steps` cut short (of the whole epoch's "
          "steps, as the longest record at that batch size and window length has them).", ""]
    if runs.empty:
        return md + ["(no training runs under `runs/`)", ""]
    full_steps = epoch_steps(runs)
    for (config, device, name), group in runs.groupby(["config", "device", "device_name"], dropna=False, sort=True):
        latest = (group.sort_values("started").drop_duplicates(LENGTH_KEYS,
                                                               keep="last")
                  .sort_values(["mode", "numerics", "cell", "epochs_planned"], key=_sort_key))
        missing = [c for c in cells.names() if c not in set(latest["cell"])]
        threads = sorted({str(t) for t in latest["torch_threads"].dropna()})
        md += [f"### {config} on {_device_title(device, name)}", "",
               f"Runs started {_dates(latest['started'])} (UTC)"
               + (f", {', '.join(threads)} CPU thread(s)" if device == "cpu" and threads else "") + ". "
               + _baselines_note(group)
               + _rate_note([rate_for(rates, device, name, r.torch_threads, r.started, r.platform)
                             for r in latest.itertuples()]),
               ""]
        t = latest.assign(epochs=[_epochs_text(r, full_steps[r.Index]) for r in latest.itertuples()],
                          final_valid_ppl=[_ppl(r.final_valid_ppl, r.vocab_size) for r in latest.itertuples()],
                          test_ppl=[_ppl(r.test_ppl, r.vocab_size) for r in latest.itertuples()],
                          pct=latest["matmul_fraction"] * 100,
                          load=[_load(a, b, n) for a, b, n in zip(latest["load_average_start"],
                                                                  latest["load_average_end"], latest["beside"],
                                                            strict=True)])
        t = t.assign(ttq=[_ttq(r) for r in latest.itertuples()], cell=[_cell_label(r) for r in latest.itertuples()])
        t = t[["cell", "backend", "status", "epochs", "words_per_sec", "speed_vs_cudnn_lstm", "peak_memory_mib",
               "final_valid_ppl", "test_ppl", "ttq", "train_seconds", "valid_seconds", "test_seconds",
               "compile_seconds", "achieved_gflops", "pct", "load", "date"]]
        t["backend"], backends = _short_backends(t["cell"], t["backend"])
        t.columns = ["cell", "backend", "status", "epochs", "words/sec", f"vs {BASELINE}", "peak MiB",
                     "valid ppl", "test ppl", "time to quality", "train s", "valid s", "test s", "compile s",
                     "GFLOP/s", "% matmul", "load", "date"]
        md += [_table(t, {"words/sec": ".0f", f"vs {BASELINE}": ".3g", "peak MiB": ".0f", "valid ppl": ".2f",
                          "test ppl": ".2f", "train s": ".0f", "valid s": ".1f", "test s": ".1f", "compile s": ".1f",
                          "GFLOP/s": ".3g",
                          "% matmul": ".2g"}), ""]
        md += backends + _divergence_legend(latest, results)
        md += seed_table(group)
        notes = [f"- `{r.cell}` {r.status}: {r.error}" for r in latest.itertuples()
                 if r.status != "ok" and isinstance(r.error, str) and r.error]
        if missing:
            notes.append(f"- no run here for: {', '.join(f'`{c}`' for c in missing)}")
        md += notes + ([""] if notes else [])
    return md


DIVERGED = "⚠"


def _diverged(ppl, vocab) -> bool:
    """Whether a perplexity is worse than a uniform guess over the vocabulary (a model that diverged, or was evaluated
    right after a training spike)."""
    return _num(ppl) > _num(vocab)


def _ppl(ppl, vocab):
    """A perplexity for a table: the number, or ``150257.31 ⚠`` where it is worse than a uniform guess."""
    return f"{ppl:.2f} {DIVERGED}" if _diverged(ppl, vocab) else ppl


def _divergence_legend(latest: pd.DataFrame, results: Path | None) -> list[str]:
    """The line under a training table that says what its ⚠ marks mean, where it has any."""
    if not any(_diverged(p, r.vocab_size) for r in latest.itertuples() for p in (r.final_valid_ppl, r.test_ppl)):
        return []
    vocab = _num(latest["vocab_size"].max())
    spikes = results is not None and (Path(results) / "gru-spikes" / "README.md").is_file()
    return [f"{DIVERGED}: a perplexity above the vocabulary size ({vocab:.0f} words), worse than a uniform guess: the "
            "model diverged, or was evaluated right after a spike of its training (the `spikes` column of `train.md` "
            "counts them)" + ("; see [`gru-spikes/README.md`](gru-spikes/README.md) for the GRUs' spikes at the "
                              "small preset's learning rate" if spikes else "") + ".", ""]


def _eval_mark(words) -> str:
    """What the epochs column adds for a run evaluated on a prefix of the streams (``--max-eval-words``)."""
    return "" if words is None or math.isnan(words) else f" (valid/test ppl: first {words:.0f} words)"


def _cell_label(r) -> str:
    """The cell, with its step mode when that is not eager and its arithmetic when that is not float32 with exact
    matmuls (``compiled_lstm [compile]``, ``cudnn_lstm [cuda-graph, tf32]``) and the settings it changed from its
    preset (``cudnn_gru (learning_rate 0.5)``)."""
    tag = _tags(getattr(r, "mode", "eager"), getattr(r, "numerics", "fp32"))
    label = f"{r.cell} [{tag}]" if tag else r.cell
    changed = getattr(r, "overrides", "")
    return f"{label} ({changed})" if isinstance(changed, str) and changed else label


def overrides(cfg: dict) -> str:
    """The settings of a run's config that differ from its preset's, epochs aside (the length says those):
    ``learning_rate 0.5``; empty for a preset as published or a config that is not a preset."""
    preset = lm_config.PRESETS.get(cfg.get("name"))
    if preset is None:
        return ""
    base = preset.as_dict()
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(cfg.items())
                     if k in base and k not in ("epochs", "name") and v != base[k])


def _ttq(r) -> str:
    """Time to quality of one row: ``812 s (ep 3)``, ``— (ep 3, not timed)`` for records older than phase
    timing, ``—`` when the target was never reached."""
    if isinstance(r.time_to_quality_epoch, (int, float)) and not math.isnan(r.time_to_quality_epoch):
        if math.isnan(r.time_to_quality_s):
            return f"— (ep {r.time_to_quality_epoch:.0f}, not timed)"
        return f"{r.time_to_quality_s:.0f} s (ep {r.time_to_quality_epoch:.0f})"
    return "—"


# --- repeated seeds -------------------------------------------------------------------------------------------

# Runs that differ only in their seed: one preset on one device, one execution mode and arithmetic, one planned
# length, one cell.
SEED_GROUP = ["config", "device", "device_name", "mode", "numerics", "epochs_planned", "steps_per_epoch",
              "max_eval_words"]
SEED_METRICS = {"words_per_sec": "words/sec", "peak_memory_mib": "peak MiB", "final_valid_ppl": "valid ppl",
                "test_ppl": "test ppl"}


def run_mode(r: dict) -> str:
    """The record's execution mode of the training step; records made before modes existed ran eager."""
    return r.get("step_mode") or r.get("mode") or "eager"


def seed_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation and n of each ``SEED_METRICS`` column over the finished (``ok``) runs
    of each cell and changed settings (``overrides``: runs at another learning rate are another row, never averaged
    in) within each ``SEED_GROUP``, with the seeds; ``vs_baseline``: mean words/sec over that of ``cudnn_lstm`` as
    its preset has it in the same group where both cells' runs ran in one machine session (``sessions``, as
    :func:`runs_frame` names them; else NaN), ``within_spread``: whether the two cells' mean ± sd ranges of words/sec
    overlap (the seeds do not separate them; None when either has fewer than two runs).  A seed run more than once
    (a rerun of the same work) counts once, by its latest finished run: n counts seeds, not runs, so a rerun cannot
    narrow the spread or weigh its seed twice; ``runs`` says how many finished runs there were."""
    keys = [*SEED_GROUP, "cell", "overrides"]
    cols = [*keys, "n", "runs", "seeds", *(f"{m}_{s}" for m in SEED_METRICS for s in ("mean", "std")), "vs_baseline",
            "within_spread", "sessions"]
    ok = runs[runs["status"] == "ok"]
    rows = []
    for key, every in ok.groupby(keys, dropna=False, sort=True):
        seeded = every[every["seed"].notna()].sort_values("started").drop_duplicates("seed", keep="last")
        g = pd.concat([seeded, every[every["seed"].isna()]])
        row = dict(zip(keys, key, strict=True), n=len(g), runs=len(every),
                   seeds=",".join(str(int(s)) for s in sorted(g["seed"].dropna().unique())),
                   sessions=frozenset(g["session"].dropna()))
        for m in SEED_METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = g[m].mean(), g[m].std(ddof=1) if len(g) > 1 else math.nan
        rows.append(row)
    group_of = lambda r: tuple(str(r[k]) for k in SEED_GROUP)  # noqa: E731 - NaN-safe key
    base = {group_of(r): r for r in rows if r["cell"] == BASELINE and not r["overrides"]}
    for r in rows:
        b = base.get(group_of(r))
        r["vs_baseline"], r["within_spread"] = math.nan, None
        if b is not None and len(r["sessions"] | b["sessions"]) <= 1:  # (words/sec compare within one machine)
            r["vs_baseline"] = r["words_per_sec_mean"] / b["words_per_sec_mean"]
            if r["n"] > 1 and b["n"] > 1:
                gap = abs(r["words_per_sec_mean"] - b["words_per_sec_mean"])
                r["within_spread"] = bool(gap <= r["words_per_sec_std"] + b["words_per_sec_std"])
    return pd.DataFrame(rows, columns=cols)


def _mean_sd(mean: float, sd: float, spec: str) -> str:
    if math.isnan(mean):
        return "—"
    return format(mean, spec) + ("" if math.isnan(sd) else f" ± {format(sd, spec)}")


def seed_table(group: pd.DataFrame) -> list[str]:
    """For one preset and device: mean ± sd over repeated seeds, when any cell there has more than one run."""
    stats = seed_stats(group)
    if stats.empty or stats["n"].max() < 2:
        return []
    base_sessions = frozenset().union(*stats[stats["cell"] == BASELINE]["sessions"])
    t = pd.DataFrame({
        "cell": [f"{c} ({o})" if o else c for c, o in zip(stats["cell"], stats["overrides"], strict=True)],
        "mode": [", ".join(t for t in (m, x) if t != "fp32") for m, x in zip(stats["mode"], stats["numerics"],
                                                                              strict=True)],
        "length": [f"{e:.0f} ep × {s:.0f} steps" for e, s in zip(stats["epochs_planned"], stats["steps_per_epoch"],
                                                                strict=True)],
        "n": [f"{n}" if n == r else f"{n} ({r} runs)" for n, r in zip(stats["n"], stats["runs"], strict=True)],
        "seeds": stats["seeds"],
        **{label: [_mean_sd(a, b, ".0f" if m in ("words_per_sec", "peak_memory_mib") else ".2f")
                   for a, b in zip(stats[f"{m}_mean"], stats[f"{m}_std"], strict=True)]
           for m, label in SEED_METRICS.items()},
        f"vs {BASELINE}": [_spread_ratio(v, w, c if not o else f"{c} ({o})", len(ss | base_sessions))
                           for v, w, c, o, ss in zip(stats["vs_baseline"], stats["within_spread"], stats["cell"],
                                                     stats["overrides"], stats["sessions"], strict=True)],
    })
    return [f"Repeated runs: mean ± sample standard deviation over the n seeds (listed) of each cell's finished runs, "
            "a seed run more than once by its latest run (the runs in brackets); every run is a row of `report.csv`. "
            f"**vs {BASELINE}**: mean words/sec over `{BASELINE}`'s "
            "mean, where both cells' runs ran in one machine session (else the sessions are counted: their "
            "words/sec are not comparable); *within spread* when the two cells' mean ± sd ranges overlap, i.e. the "
            "seeds do not tell them apart.", "",
            _table(t.sort_values(["mode", "length", "cell"], key=_sort_key), {}), ""]


def _spread_ratio(ratio, within, cell: str, sessions: int = 1) -> str:
    if cell != BASELINE and sessions > 1:
        return f"— ({sessions} machine sessions)"
    if cell == BASELINE or ratio is None or math.isnan(_num(ratio)):
        return "—"
    if within is None or (isinstance(within, float) and math.isnan(within)):
        return f"{ratio:.3g} (n < 2: spread unknown)"
    return f"{ratio:.3g}" + (" (within spread)" if within else "")


def _common(values: pd.Series):
    """The most frequent value, or None."""
    values = values.dropna()
    return values.mode().iloc[0] if len(values) else None


def _load(start: float, end: float, others: int = 0) -> str:
    """The machine's 1-minute load average at the start and the end of a run, e.g. ``2.0→3.1``, and how many other
    recorded runs trained beside it (:func:`beside`): ``2.0→3.1, beside 1``."""
    text = "—" if math.isnan(start) else f"{start:.1f}" if math.isnan(end) else f"{start:.1f}→{end:.1f}"
    return text + (f", beside {others}" if others else "")


def _rate_note(rate: dict | None | list) -> str:
    """The matmul rate a table's % matmul divides by; a list: the rates of its rows (each the rate as it
    stood at the row's own time, :func:`rate_for`), stated as a range where they differ."""
    used = list({id(r): r for r in (rate if isinstance(rate, list) else [rate]) if r}.values())
    if not used:
        return " No matmul rate measured for this device: the % matmul column is empty."
    rate = used[0]
    cpu_threads = rate.get("device") == "cpu" and rate.get("torch_threads")
    threads = f", {rate['torch_threads']} thread(s)" if cpu_threads else ""
    if len(used) == 1:
        return (f" Matmul rate (fp32, {rate.get('fp32_matmul_n')}²{threads}): "
                f"{_num(rate.get('fp32_matmul_flops')) / 1e9:.4g} GFLOP/s, measured {_date(rate.get('measured'))}.")
    flops = sorted(_num(r.get("fp32_matmul_flops")) / 1e9 for r in used)
    dates = sorted(_date(r.get("measured")) for r in used)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f" Matmul rates (fp32, {rate.get('fp32_matmul_n')}²{threads}): {flops[0]:.4g} to {flops[-1]:.4g} GFLOP/s, "
            f"measured {when}; each row's % matmul divides by the rate as it stood at the row's "
            "time (the last measured before it, else the first after).")


def micro_section(bench: pd.DataFrame, rates: dict) -> list[str]:
    """One table per device and shape from ``bench``, the figures :func:`micro_figures` chose."""
    md = ["## Micro-benchmarks", "",
          "Median time per call (pytest-benchmark, `bench/bench_cells.py`; batch 20, 2 layers). fwd: the cell "
          "stack's forward with autograd recording; fwd+bwd: plus the backward; step: the whole LM training step "
          "(vocabulary 10000), eager, and where timed "
          "compiled (`step compiled`) or as one CUDA graph (`step graph`), the same cell in each row; `fwd+bwd "
          "graph`: fwd+bwd captured as one CUDA graph and replayed, the GPU's time without the host's launches; "
          "latency: "
          "the stack's forward at batch 1, one step, no grad, state carried (per-call cost). **vs cuDNN**: the "
          "time of the cuDNN cell of the same kind (`cudnn_lstm` or "
          "`cudnn_gru`; on the CPU torch's oneDNN/ATen kernels behind the same modules) over the cell's time, on "
          "the same device and in the same benchmark run (>1 is faster): per pass and kind a table shows the figures "
          "of one run, the one that timed the kind's cuDNN cell and the most cells of the kind (then the newest), as "
          "At a glance does; a cell that run did not time shows its newest figure, its ratio against the cuDNN cell "
          "of its own run (— where that run has none), and a **timed** column, only where a table mixes runs, names "
          "the run of each figure not from the table's main run. GFLOP/s of fwd+bwd and **% matmul**: see "
          "*FLOP/s*. Step peak MiB: CUDA max allocated; on the CPU the pytest process's peak resident set while "
          "timing, which includes the few hundred MiB the process holds anyway.", ""]
    if bench.empty:
        return md + ["(no micro-benchmark JSON under `bench/`)", ""]
    wide_cols = {"fwd": "fwd ms", "fwdbwd": "fwd+bwd ms", "fwdbwd-cuda-graph": "fwd+bwd graph ms", "step": "step ms",
                 "step-compile": "step compiled ms", "step-cuda-graph": "step graph ms", "latency": "latency ms"}
    optional = ("step-", "fwdbwd-")  # (modes: columns only where timed)
    # bfloat16 (bench --bench-dtype bfloat16) and float32 in TF32 (--bench-fp32-matmul tf32): columns of their own,
    # only where timed, ratios within the arithmetic
    wide_cols |= {f"{p}-{tag}": label.replace(" ms", f" {tag} ms") for tag in NUMERIC_PASSES
                  for p, label in wide_cols.items()}
    ratio_cols = [("fwdbwd", "fwd+bwd vs cuDNN"), ("fwdbwd-cuda-graph", "fwd+bwd graph vs cuDNN"),
                  ("step", "step vs cuDNN"), ("latency", "latency vs cuDNN"),
                  *((f"{p}-{tag}", f"{label} {tag} vs cuDNN") for tag in NUMERIC_PASSES
                    for p, label in (("fwdbwd", "fwd+bwd"), ("step", "step")))]
    other_numerics = tuple(f"-{tag}" for tag in NUMERIC_PASSES)
    for (device, name), dev in bench.groupby(["device", "device_name"], sort=True):
        threads_used = _common(dev["torch_threads"])
        fwdbwd_rates = [rate_for(rates, device, name, threads_used, d) for d in dev[dev["pass"] == "fwdbwd"]["date"]]
        threads = sorted({str(t) for t in dev["torch_threads"].dropna()})
        md += [f"### Micro-benchmarks on {_device_title(device, name)}", "",
               f"Timed {_dates(dev['date'])} (UTC), torch {', '.join(sorted(set(dev['torch'].dropna())))}"
               + (f", {', '.join(threads)} CPU thread(s)" if device == "cpu" and threads else "")
               + (f", 1-min load average {dev['load_average'].min():.1f} to {dev['load_average'].max():.1f}"
                  if dev["load_average"].notna().any() else "") + "." + _rate_note(fwdbwd_rates), ""]
        for shape, sh in sorted(dev.groupby("shape"), key=lambda kv: kv[1]["hidden_size"].max()):
            wide = sh.pivot_table(index="cell", columns="pass", values="median_ms", aggfunc="first")
            vs = sh.pivot_table(index="cell", columns="pass", values="vs_cudnn", aggfunc="first", dropna=False)
            t = pd.DataFrame(index=wide.index)
            t["backend"] = sh.groupby("cell")["backend"].first()
            for p, label in wide_cols.items():
                if p in wide or not (p.startswith(optional) or p.endswith(other_numerics)):  # only where timed
                    t[label] = wide[p] if p in wide else math.nan
            for p, label in ratio_cols:
                if p in wide or not (p.startswith(optional) or p.endswith(other_numerics)):
                    t[label] = vs[p] if p in vs else math.nan
            fb = sh[sh["pass"] == "fwdbwd"].set_index("cell")
            gflops = fb["flops_per_call"] / (fb["median_ms"] / 1e3) / 1e9
            t["fwd+bwd GFLOP/s"] = gflops
            rate = [_num((rate_for(rates, device, name, threads_used, d) or {}).get("fp32_matmul_flops"))
                    for d in fb["date"]]
            t["% matmul"] = gflops * 1e9 / pd.Series(rate, index=fb.index) * 100
            st = sh[sh["pass"] == "step"].set_index("cell")
            t["step words/sec"] = st["words_per_sec"]
            t["step peak MiB"] = st["peak_memory_mib"]
            main, timed = _timed(sh, wide_cols)
            if timed is not None:
                t["timed"] = timed
            t = t.reset_index().sort_values("cell", key=lambda s: s.map(_cell_order))
            t["backend"], backends = _short_backends(t["cell"], t["backend"])
            row = sh[sh["pass"] != "latency"].iloc[0] if (sh["pass"] != "latency").any() else sh.iloc[0]
            md += [f"#### {shape}: hidden {row['hidden_size']:.0f}, T {row['num_steps']:.0f}, batch "
                   f"{row['batch_size']:.0f} — {_device_title(device, name)}, {_dates(sh['date'])}", "",
                   *([] if timed is None else [f"Figures from the run {main} except where the *timed* column "
                                               "names another; each ratio divides two figures of one run.", ""]),
                   _table(t, {"fwd ms": ".4g", "fwd+bwd ms": ".4g", "step ms": ".4g", "fwd+bwd vs cuDNN": ".3g",
                              "step vs cuDNN": ".3g", "fwd+bwd GFLOP/s": ".3g", "% matmul": ".2g",
                              "step words/sec": ".0f", "step peak MiB": ".0f", "latency ms": ".4g",
                              "step compiled ms": ".4g", "step graph ms": ".4g", "fwd+bwd graph ms": ".4g",
                              "fwd+bwd graph vs cuDNN": ".3g",
                              "latency vs cuDNN": ".3g",
                              **{label: ".4g" for label in wide_cols.values()},
                              **{label: ".3g" for _, label in ratio_cols}}), "", *backends]
    return md


def _short_backends(cell: pd.Series, backend: pd.Series) -> tuple[pd.Series, list[str]]:
    """A table's backend column cut to what ran (the text before its first "(" or "; ": "Triton 3.6.0 compiled",
    "cuDNN 91900"), and the lines under the table that give each cut one in full, once a cell -- the tables stay
    readable where a backend string runs to 300 characters."""
    short, full = [], {}
    for c, b in zip(cell, backend, strict=True):
        if not isinstance(b, str):
            short.append(b)
            continue
        head = b.split("(")[0].split("; ")[0].strip()
        short.append(head)
        if head != b and f"`{c}`" not in full.setdefault(b, []):
            full[b].append(f"`{c}`")
    lines = [f"- {', '.join(cells_)}: {b}" for b, cells_ in full.items()]
    return pd.Series(short, index=cell.index), (["Backends in full:", "", *lines, ""] if lines else [])


def _run_name(file: str, date) -> str:
    """A benchmark run as the tables name it: its file's name and its date, ``modes.json (2026-11-28)``."""
    return f"`{Path(file).name}` ({_date(date)})"


def _timed(sh: pd.DataFrame, labels: dict[str, str]) -> tuple[str, pd.Series | None]:
    """The main run of one micro-benchmark table (``sh``: its :func:`micro_figures`), the file most of its figures
    come from (then the newest), named; and per cell the runs of its figures that are not the main run's, with the
    passes each gave (``labels``: pass -> column), or None where every figure is the main run's."""
    per_file = sh.groupby("file").agg(n=("cell", "size"), date=("date", "max"))
    main = max(per_file.index, key=lambda f: (per_file.at[f, "n"], str(per_file.at[f, "date"])))
    main_name = _run_name(main, per_file.at[main, "date"])
    if len(per_file) == 1:
        return main_name, None
    timed = {}
    for cell, rows in sh[sh["file"] != main].groupby("cell"):
        timed[cell] = "; ".join(
            f"{', '.join(labels.get(p, p).removesuffix(' ms') for p in g['pass'])}: {_run_name(f, g['date'].iloc[0])}"
            for f, g in rows.groupby("file", sort=False))
    return main_name, pd.Series(timed, dtype=object)


def _cell_order(cell: str) -> int:
    names = cells.names()
    return names.index(cell) if cell in names else len(names)


def flops_section(rates: dict) -> list[str]:
    md = ["## FLOP/s", "",
          "Work per token, counting each multiply-add as 2 FLOPs and the backward pass as twice the forward "
          "(`bench/flops.py`): an L-layer LSTM with H units trains at **48·L·H²** FLOPs per token (a GRU, with 3 "
          "gates instead of 4, at 36·L·H²), and the decoder over a vocabulary V (embedding size H) adds **6·H·V**; "
          "the training rows use 48·L·H² + 6·H·V with V = 10000 for the PTB presets. Achieved GFLOP/s = words/sec × "
          "work per token; **% matmul** divides it by the device's measured fp32 matmul rate (`bench/machine.py`: "
          "a large square matmul, median of several, synchronized), measured on the same device under the same "
          "conditions (a busy CPU measures lower).", ""]
    if not rates:
        return md + ["(no matmul rate measured: run the micro-benchmarks or a sweep)", ""]
    newest = {}  # per device and thread count
    for (dev, name), ms in rates.items():
        for m in ms:
            newest[(str(dev), str(name), str(m.get("torch_threads")))] = m
    t = pd.DataFrame([{
        "device": _device_title(m.get("device"), m.get("device_name")), "measured": _date(m.get("measured")),
        "threads": m.get("torch_threads"), "fp32 GFLOP/s": _num(m.get("fp32_matmul_flops")) / 1e9,
        "bf16 GFLOP/s": _num(m.get("bf16_matmul_flops")) / 1e9, "copy GB/s": _num(m.get("copy_bytes_per_s")) / 1e9,
        "torch": m.get("torch")} for _, m in sorted(newest.items())])
    return md + [_table(t, {"fp32 GFLOP/s": ".4g", "bf16 GFLOP/s": ".4g", "copy GB/s": ".4g"}), ""]


def paper_section(runs: pd.DataFrame) -> list[str]:
    """Per preset: our finished runs beside the published perplexities, with wall time and time to quality."""
    md = ["## Convergence: perplexities beside the published ones, and time to quality", "",
          f"Sources: {PAPER_SOURCE}. Ours: the latest finished run of each cell per preset, device and planned "
          "length, and its seed; runs that did not follow the published schedule (fewer epochs, epochs cut short by "
          "`--max-steps`, changed settings: the epochs and source columns say which) are not comparable, and their "
          "**test − paper** is blank. **test ppl over seeds**: mean ± sample standard deviation over every seed of the "
          "same work (as in the repeated-runs tables), where there are two or more: at one seed, float32 rounding "
          "alone moves a run's perplexity by about 1-2 % (`docs/results.md`). **test − paper**: our test perplexity "
          "minus the paper's (an LSTM's: for a GRU or a minimal RNN, its distance from that LSTM's quality). "
          "**wall min**: the whole run, start-up and evaluation included. **time to quality** as in the training "
          "tables (target: the paper's validation perplexity + 5%). The plots *valid_ppl-…* and "
          "*valid_ppl_vs_time-…* below show every epoch.",
          ""]
    drawn = False
    full_steps = epoch_steps(runs)
    for preset, ref in PAPER.items():
        # a smoke run evaluated on a prefix of the streams (--max-eval-words) is not the tutorial's perplexity
        ours = runs[(runs["config"] == preset) & (runs["status"] == "ok") & runs["max_eval_words"].isna()]
        if ours.empty:
            continue
        drawn = True
        rows = [{"source": "Zaremba et al. 2014, Table 1", "seed": "", "epochs": str(ref["epochs"]),
                 "valid ppl": ref["paper"][0], "test ppl": ref["paper"][1], "test − paper": math.nan,
                 "test ppl over seeds": "", "wall min": math.nan, "time to quality": "", "date": ""},
                {"source": "TF tutorial ptb_word_lm.py", "seed": "", "epochs": str(ref["epochs"]),
                 "valid ppl": ref["tutorial"][1], "test ppl": ref["tutorial"][2],
                 "test − paper": ref["tutorial"][2] - ref["paper"][1], "test ppl over seeds": "",
                 "wall min": math.nan, "time to quality": "", "date": ""}]
        latest = ours.sort_values("started").drop_duplicates(["cell", "mode", "device", "device_name",
                                                              "epochs_planned", "overrides"],
                                                             keep="last")
        # every seed of the same work (seed_stats: a seed's latest run), beside the one run shown
        key = lambda r: tuple(str(getattr(r, k)) for k in (*SEED_GROUP, "cell", "overrides"))  # noqa: E731
        seeds = {key(s): s for s in seed_stats(ours).itertuples()}
        published = _published_schedule(runs)
        for r in latest.sort_values(["device", "device_name", "cell", "epochs_planned"], key=_sort_key).itertuples():
            s = seeds.get(key(r))
            rows.append({"source": f"ours: `{_cell_label(r)}` on {_device_title(r.device, r.device_name)}",
                         "seed": "—" if pd.isna(r.seed) else f"{r.seed:.0f}",
                         "epochs": _epochs_text(r, full_steps[r.Index]), "valid ppl": _ppl(r.final_valid_ppl,
                                                                                        r.vocab_size),
                         "test ppl": _ppl(r.test_ppl, r.vocab_size),
                         "test − paper": r.test_ppl - ref["paper"][1] if published[r.Index] else math.nan,
                         "test ppl over seeds": "—" if s is None or s.n < 2 else
                         f"{s.test_ppl_mean:.2f} ± {s.test_ppl_std:.2f} (seeds {s.seeds})",
                         "wall min": r.wall_minutes, "time to quality": _ttq(r), "date": r.date})
        md += [f"### {preset} (target validation perplexity {TARGET_VALID_PPL[preset]})", "",
               _table(pd.DataFrame(rows), {"valid ppl": ".2f", "test ppl": ".2f", "test − paper": "+.2f",
                                           "wall min": ".1f"}), ""]
        md += _divergence_legend(latest, None)
    if not drawn:
        return md + ["(no finished run of a paper preset yet)", ""]
    return md


def _sort_key(s: pd.Series) -> pd.Series:
    return s.map(_cell_order) if s.name == "cell" else s


# --- plots ----------------------------------------------------------------------------------------------------

STYLES = [dict(marker=m, linestyle=ls) for ls, m in (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"),
                                                       ("--", "P"), ("-.", "X"), (":", "*"))]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis) -> None:
    """Label a log axis with plain numbers (100, 200, 500) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _render(plt, fig, path: Path) -> tuple[Path, bytes]:
    """``fig`` as the PNG to write to ``path`` (write_report writes every file once all are computed, each whole or
    not at all: a reader, or a commit, never sees half a plot)."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return path, buf.getvalue()


def plot_valid_ppl(raw_runs: list[dict], runs: pd.DataFrame, folder: Path,
                   x: str = "epoch") -> list[tuple[Path, bytes]]:
    """Validation perplexity of every cell (latest run of each length, of whole epochs), one figure per preset and
    device.

    ``x="epoch"``: per epoch; ``x="seconds"``: against wall-clock seconds of training and evaluation (runs
    recorded before phase timing are left out, and the figure says so).  The paper's final validation
    perplexity and the time-to-quality target are drawn as lines.
    """
    plt = _plt()
    by_id = {r.get("run_id"): r for r in raw_runs}
    out = []
    whole = runs[runs["steps_per_epoch"] >= epoch_steps(runs)]  # (a run of a few cut epochs is a dot, not a curve)
    for (config, device, name), group in whole.groupby(["config", "device", "device_name"], dropna=False):
        latest = group.sort_values("started").drop_duplicates(LENGTH_KEYS,
                                                              keep="last")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn, xs_seen, untimed = 0, set(), []
        for i, r in enumerate(latest.sort_values("cell", key=lambda s: s.map(_cell_order)).itertuples()):
            epochs = [e for e in (by_id.get(r.run_id, {}).get("epochs") or []) if isinstance(e, dict)]
            key = "epoch" if x == "epoch" else "elapsed_seconds"
            pts = [(_num(e.get(key)), _num(e.get("valid_ppl"))) for e in epochs]
            pts = [(a, b) for a, b in pts if not math.isnan(a) and not math.isnan(b)]
            if not pts:
                if epochs:
                    untimed.append(r.cell)
                continue
            label = f"{_cell_label(r)}: {pts[-1][1]:.1f} ({r.epochs_done}/{r.epochs_planned} ep, {r.status})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, alpha=0.85, **STYLES[i % len(STYLES)])
            xs_seen.update(p[0] for p in pts)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        from matplotlib.ticker import MaxNLocator

        if config in PAPER:
            ax.axhline(PAPER[config]["paper"][0], color="black", linewidth=0.8, linestyle=":",
                       label=f"paper's final valid ppl {PAPER[config]['paper'][0]}")
        target = _num(latest["target_valid_ppl"].dropna().iloc[-1]) if latest["target_valid_ppl"].notna().any() \
            else math.nan
        if not math.isnan(target):
            ax.axhline(target, color="grey", linewidth=0.8, linestyle="--", label=f"time-to-quality target {target:g}")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        if x == "epoch":
            if len(xs_seen) <= 15:
                ax.set_xticks(sorted(xs_seen))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(min(xs_seen) - 0.5, max(xs_seen) + 0.5)
            ax.set_xlabel("epoch")
        else:
            ax.set_xlabel("wall-clock seconds of training and evaluation (start-up excluded)"
                          + (f"\nnot timed (older records): {', '.join(untimed)}" if untimed else ""))
        ax.set_ylabel("validation perplexity (log scale)")
        what = "per epoch" if x == "epoch" else "against time"
        ax.set_title(f"{config}: validation perplexity {what}\n{_device_title(device, name)}, "
                     f"{_dates(latest['started'])}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        stem = "valid_ppl" if x == "epoch" else "valid_ppl_vs_time"
        out.append(_render(plt, fig, folder / f"{stem}-{config}-{_slug(device, name)}.png"))
    return out


def plot_words_per_sec(runs: pd.DataFrame, folder: Path) -> list[tuple[Path, bytes]]:
    """Training words/sec per cell, grouped by preset, one figure per device: runs of whole epochs only (a run that
    ``--max-steps`` cut to a few seconds of training measures its start as much as its speed)."""
    plt = _plt()
    out = []
    have = runs[runs["words_per_sec"].notna() & (runs["steps_per_epoch"] >= epoch_steps(runs))]
    for (device, name), dev in have.groupby(["device", "device_name"], dropna=False):
        dev = dev.assign(label=[_cell_label(r) for r in dev.itertuples()])
        latest = dev.sort_values("started").drop_duplicates(["config", "label"], keep="last")
        configs = sorted(set(latest["config"]), key=lambda c: (PTB_PRESETS + (c,)).index(c))
        names = sorted(set(latest["label"]), key=lambda label: (_cell_order(label.split(" ")[0]), label))
        fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(configs) * len(names) ** 0.5 + 4), 4.5))
        width = 0.8 / len(names)
        for i, cell in enumerate(names):
            vals = [latest[(latest["config"] == c) & (latest["label"] == cell)]["words_per_sec"] for c in configs]
            ys = [v.iloc[0] if len(v) else 0 for v in vals]
            xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(configs))]
            bars = ax.bar(xs, ys, width, label=cell)
            ax.bar_label(bars, labels=[f"{y:.0f}" if y else "" for y in ys], fontsize=7)
        ax.set_xticks(range(len(configs)), configs)
        ax.set_ylabel("training words/sec")
        ax.set_title(f"Training speed per cell (latest run per preset)\n{_device_title(device, name)}, "
                     f"{_dates(latest['started'])}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(True, axis="y", alpha=0.3)
        path = folder / f"words_per_sec-{_slug(device, name)}.png"
        out.append(_render(plt, fig, path))
    return out


def plot_fwdbwd_vs_hidden(bench: pd.DataFrame, folder: Path) -> list[tuple[Path, bytes]]:
    """Forward + backward time of the cell stack against hidden size, one line per cell, per device (``bench``: the
    figures of the micro-benchmark tables, :func:`micro_figures`)."""
    plt = _plt()
    out = []
    fb = bench[(bench["pass"] == "fwdbwd") & bench["median_ms"].notna()] if len(bench) else bench
    for (device, name), dev in fb.groupby(["device", "device_name"]):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, cell in enumerate(sorted(set(dev["cell"]), key=_cell_order)):
            d = dev[dev["cell"] == cell].sort_values("hidden_size")
            ax.plot(d["hidden_size"], d["median_ms"], label=cell, **STYLES[i % len(STYLES)])
        hs = sorted(set(dev["hidden_size"]))
        steps = {h: int(dev[dev["hidden_size"] == h]["num_steps"].iloc[0]) for h in hs}
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xticks(hs, [f"hidden {h:.0f}\nT {steps[h]}" for h in hs])
        ax.minorticks_off()
        ax.set_xlabel("hidden size (and sequence length); batch 20, 2 layers")
        ax.set_ylabel("forward + backward, median ms (log scale)")
        ax.set_title(f"Cell stack forward + backward time\n{_device_title(device, name)}, {_dates(dev['date'])}",
                     fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = folder / f"fwdbwd_vs_hidden-{_slug(device, name)}.png"
        out.append(_render(plt, fig, path))
    return out


# --- the report -----------------------------------------------------------------------------------------------

def write_report(results: str | Path = "results") -> Path:
    """Write ``REPORT.md``, ``report.csv`` and ``plots/*.png`` under ``results``, and ``train.csv`` / ``train.md``
    anew from every run record (records merged in from elsewhere, e.g. a GPU check, have not written them); returns
    the REPORT.md path.  A file the report cannot use is skipped with a warning on stderr and counted in the header;
    nothing is written until everything is computed, so a failure leaves the old report whole."""
    results = Path(results)
    from lm.errors import UsageError

    if not results.is_dir():
        what = "is not a folder" if results.exists() else "does not exist"
        raise UsageError(f"results folder {results} {what}; run `rnnbench sweep` or `rnnbench train` first")
    for sub in ("runs", "bench", "machine", "plots"):  # (read from, or written into: a file there is no empty folder)
        if (results / sub).exists() and not (results / sub).is_dir():
            raise UsageError(f"{results / sub} is not a folder; move it away and run `rnnbench report` again")
    for name in ("REPORT.md", "report.csv", "train.csv", "train.md"):  # (what it writes: found before any is written)
        if (results / name).is_dir():
            raise UsageError(f"{results / name} is a folder; move it away and run `rnnbench report` again")
    skipped = {"runs": [], "bench": [], "machine": []}
    raw_runs = load_runs(results, skipped["runs"])
    every_bench, bench_machines = load_bench(results, newest=False, skipped=skipped["bench"])
    rates = matmul_rates(results, bench_machines, skipped["machine"])
    for path, why in [s for found in skipped.values() for s in found]:
        print(f"rnnbench: warning: skipped {path}: {why}", file=sys.stderr)
    runs = runs_frame(raw_runs, rates)
    figures = micro_figures(every_bench)

    plots = results / "plots"
    pngs = [*plot_valid_ppl(raw_runs, runs, plots), *plot_valid_ppl(raw_runs, runs, plots, x="seconds"),
            *plot_words_per_sec(runs, plots),
            *plot_fwdbwd_vs_hidden(figures, plots)]

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    n_rates = sum(len(ms) for ms in rates.values())
    md = ["# rnnbench report", "",
          f"Generated {now} by `rnnbench report` from {len(raw_runs)} run record(s) under `runs/`"
          f"{_skipped_note(skipped['runs'])}, {len(every_bench)} micro-benchmark figure(s) under `bench/`"
          f"{_skipped_note(skipped['bench'])} ({len(figures)} in the tables: one per device, shape, pass and cell) "
          f"and {n_rates} matmul measurement(s){_skipped_note(skipped['machine'])}. "
          "Regenerate with `rnnbench report`; every number below comes from those files. Ratios compare runs on "
          "the same device only, and micro-benchmarks within one benchmark run. `report.csv` has one row per run "
          "with every column.", ""]
    md += glance_section(runs, every_bench)
    md += (training_section(runs, rates, results) + micro_section(figures, rates) + flops_section(rates)
           + paper_section(runs))
    md += ["## Plots", ""]
    md += [f"![{p.stem}](plots/{p.name})" for p, _ in pngs] or ["(nothing to plot yet)"]
    md.append("")
    csv = runs.to_csv(index=False, float_format="%.6g")
    plots.mkdir(exist_ok=True)
    for path, png in pngs:
        records.atomic_write(path, png)
    for old in set(plots.glob("*.png")) - {p for p, _ in pngs}:  # plots of devices or presets without data go away
        old.unlink()
    records.atomic_write(results / "report.csv", csv)
    records.atomic_write(results / "REPORT.md", "\n".join(md))
    records.write_train_tables(results, raw_runs)  # (the records the report could use)
    return results / "REPORT.md"


def _skipped_note(skipped: list) -> str:
    """What the header says of the files of one kind that were skipped: `` (1 skipped: `x.json` unreadable)``."""
    if not skipped:
        return ""
    files = ", ".join(f"`{Path(p).name}` {why.split(' (')[0]}" for p, why in skipped)
    return f" ({len(skipped)} skipped: {files})"
