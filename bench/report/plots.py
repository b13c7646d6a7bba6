"""The report's plots (matplotlib, Agg): validation perplexity per epoch and per second, words/sec per cell, and
forward+backward time against the hidden size."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.report.common import (
    LENGTH_KEYS,
    PAPER,
    PTB_PRESETS,
    _cell_label,
    _cell_order,
    _dates,
    _device_title,
    _slug,
    epoch_steps,
)
from bench.report.data import _num

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
