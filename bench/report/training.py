"""The report's training sections: the runs as a table (``report.csv``), per preset and device with ratios within a
machine session, the seeds' means, and the convergence table against the published perplexities."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

import cells
from bench import flops
from bench.report.common import (
    BASELINE,
    LENGTH_KEYS,
    LIKE_KEYS,
    PAPER,
    PAPER_SOURCE,
    PTB_PRESETS,
    PTB_VOCAB,
    TARGET_VALID_PPL,
    _cell_label,
    _date,
    _dates,
    _device_title,
    _divergence_legend,
    _epochs_text,
    _load,
    _ppl,
    _published_schedule,
    _rate_note,
    _short_backends,
    _sort_key,
    _table,
    _tags,
    _ttq,
    epoch_steps,
)
from bench.report.data import _num, rate_for
from lm import config as lm_config
from lm import records
from lm.train import time_to_quality

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
            "session": machine_session(r),
        })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    df["beside"] = beside(df)
    for _, group in df.groupby(["config", "device", "device_name", *LIKE_KEYS], dropna=False):  # like with like
        for i, r in group.iterrows():
            if str(r["session"]).startswith(MIXED):
                continue  # (its words/sec blend two machines': not even the baseline's own 1.0)
            base = _baseline(group, r["session"])
            if base is not None:
                df.at[i, "speed_vs_cudnn_lstm"] = r["words_per_sec"] / base["words_per_sec"]
    return df.sort_values(["config", "device", "device_name", "cell", "started"], na_position="last")


MIXED = "mixed: "  # the session of a run resumed in another machine session than it started in


def machine_session(r: dict) -> str | None:
    """The machine session a run trained in: its boot id (``env.boot_id``), else its machine image
    (``env.platform``), None when the record names neither.  A run resumed in another session than it started in
    (its ``resumes``, each with its own env) has ``mixed: A + B``, a session of its own: its words/sec blend two
    machines', so it is divided by no baseline and compared with no run."""
    envs = [r.get("env") or {}, *((x.get("env") or {}) for x in (r.get("resumes") or []) if isinstance(x, dict))]
    ids = list(dict.fromkeys(s for e in envs if isinstance(e, dict) if (s := e.get("boot_id") or e.get("platform"))))
    if len(ids) > 1:
        return MIXED + " + ".join(ids)
    return ids[0] if ids else None


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
          "where its session has none, and for a run resumed in another session than it started in (its words/sec "
          "blend two machines'). "
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


def overrides(cfg: dict) -> str:
    """The settings of a run's config that differ from its preset's, epochs aside (the length says those):
    ``learning_rate 0.5``; empty for a preset as published or a config that is not a preset."""
    preset = lm_config.PRESETS.get(cfg.get("name"))
    if preset is None:
        return ""
    base = preset.as_dict()
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(cfg.items())
                     if k in base and k not in ("epochs", "name") and v != base[k])


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
