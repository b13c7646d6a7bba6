"""The report's micro-benchmark sections: At a glance, the fwd / fwd+bwd / LM-step tables (every ratio within one
benchmark run) and the measured matmul rates."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.report.common import (
    ANY,
    BASELINE_OF_KIND,
    NUMERIC_PASSES,
    PTB_PRESETS,
    _baseline_cell,
    _cell_order,
    _common,
    _date,
    _dates,
    _device_title,
    _full_schedule,
    _ms,
    _of_kind,
    _rate_note,
    _short_backends,
    _table,
)
from bench.report.data import _num, rate_for
from bench.report.training import _training_winners

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
