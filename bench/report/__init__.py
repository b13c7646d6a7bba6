"""``rnnbench report``: ``REPORT.md``, ``report.csv`` and plots from the records in a results folder.

Inputs, all optional (read and checked by :mod:`bench.report.data`):

- ``<results>/runs/*.json``: training run records (``rnnbench train`` / ``rnnbench sweep``);
- ``<results>/bench/**/*.json``: pytest-benchmark JSON from ``bench/bench_cells.py``;
- ``<results>/machine/*.json`` and the benchmark JSON's ``machine_info``: measured matmul rates.

Outputs: ``<results>/REPORT.md``, ``<results>/report.csv`` (one row per run) and
``<results>/plots/*.png``.  Every ratio is taken within one device (device type and
name); every table is headed by its device and the dates of its numbers.

Sections, one module each: :mod:`.micro` (At a glance, the micro-benchmark tables, the matmul rates),
:mod:`.training` (the runs, per preset and device, the seeds, the convergence table), :mod:`.plots`;
:mod:`.common` holds what they share (baselines, published figures, how cells, dates and numbers are written).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.report.data import load_bench, load_runs, matmul_rates
from bench.report.micro import flops_section, glance_section, micro_figures, micro_section
from bench.report.plots import plot_fwdbwd_vs_hidden, plot_valid_ppl, plot_words_per_sec
from bench.report.training import paper_section, runs_frame, training_section
from lm import records

__all__ = ["write_report"]


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
