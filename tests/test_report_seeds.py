"""The report over repeated seeds: mean ± sd and n per (preset, device, mode, length, cell), every run in the CSV."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import report
from bench.report import data as report_data
from bench.report import training as report_training
from lm import records
from lm.config import preset
from lm.train import new_record


def record(results: Path, cell: str, seed: int, wps: float, test: float, mode: str | None = None,
           status: str = "ok", device_name: str = "Test CPU 9000", **changed) -> dict:
    """A finished small run (2 epochs of 100 steps) in lm.train's layout; ``mode=None``: a record from before
    execution modes existed; ``changed``: settings changed from the preset."""
    rec = new_record(preset("small", epochs=2, **changed), cell, torch.device("cpu"), seed, ["rnnbench", "train"])
    rec.pop("step_mode", None)
    if mode is not None:
        rec["step_mode"] = mode
    rec.update(status=status, words_per_sec=wps, test_ppl=test, peak_memory_bytes=(500 + seed) * 2**20,
               steps_per_epoch=100, epochs=[{"epoch": 1, "valid_ppl": test + 20}, {"epoch": 2, "valid_ppl": test + 5}])
    tag = "".join(f"-{k}{v}" for k, v in changed.items())
    rec["run_id"] = f"{cell}-{mode}-{seed}-{status}-{device_name[-4:]}{tag}"
    rec["env"].update(device="cpu", device_name=device_name)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return rec


@pytest.fixture
def results(tmp_path: Path) -> Path:
    # cudnn_lstm: three seeds (one an old record without a mode, one with mode "eager": the same group).
    record(tmp_path, "cudnn_lstm", 0, 1000.0, 120.0)
    record(tmp_path, "cudnn_lstm", 1, 1100.0, 122.0, mode="eager")
    record(tmp_path, "cudnn_lstm", 2, 1200.0, 124.0, mode="eager")
    # loop_lstm: far slower than the spread (resolved); loop_gru: inside it (not resolved); triton_lstm: one run.
    for seed, wps in enumerate((500.0, 520.0, 540.0)):
        record(tmp_path, "loop_lstm", seed, wps, 121.0 + seed)
    for seed, wps in enumerate((1050.0, 1150.0)):
        record(tmp_path, "loop_gru", seed, wps, 130.0)
    record(tmp_path, "triton_lstm", 0, 3000.0, 121.0)
    # Not part of the statistics: a failed seed, another mode, another device.
    record(tmp_path, "loop_lstm", 3, 10.0, 999.0, status="failed")
    record(tmp_path, "cudnn_lstm", 0, 5000.0, 120.0, mode="compile")
    record(tmp_path, "cudnn_lstm", 0, 9000.0, 120.0, device_name="Other CPU 1")
    return tmp_path


def _stats(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = report_training.runs_frame(records.load_runs(results))
    return runs, report_training.seed_stats(runs)


def test_mean_sd_and_n_per_cell_mode_and_device(results):
    runs, stats = _stats(results)
    assert len(runs) == 12 and set(runs["mode"]) == {"eager", "compile"}  # every run is a row
    base = stats[(stats["cell"] == "cudnn_lstm") & (stats["mode"] == "eager")
                 & (stats["device_name"] == "Test CPU 9000")].iloc[0]
    assert base["n"] == 3 and base["seeds"] == "0,1,2"  # the record without a mode counts as eager
    assert base["words_per_sec_mean"] == pytest.approx(1100.0)
    assert base["words_per_sec_std"] == pytest.approx(100.0)  # sample standard deviation (n - 1)
    assert base["test_ppl_mean"] == pytest.approx(122.0) and base["test_ppl_std"] == pytest.approx(2.0)
    assert base["peak_memory_mib_mean"] == pytest.approx(501.0)
    loop = stats[stats["cell"] == "loop_lstm"].iloc[0]
    assert loop["n"] == 3, "the failed seed is not averaged in"
    compile_ = stats[(stats["cell"] == "cudnn_lstm") & (stats["mode"] == "compile")].iloc[0]
    assert compile_["n"] == 1 and math.isnan(compile_["words_per_sec_std"])


def test_ratio_says_whether_the_seeds_separate_the_cells(results):
    _, stats = _stats(results)
    eager = stats[(stats["mode"] == "eager") & (stats["device_name"] == "Test CPU 9000")].set_index("cell")
    assert eager.at["loop_lstm", "vs_baseline"] == pytest.approx(520 / 1100)
    assert eager.at["loop_lstm", "within_spread"] is False  # 520 ± 20 vs 1100 ± 100: resolved
    assert eager.at["loop_gru", "within_spread"] is True  # 1100 ± 71 vs 1100 ± 100: not resolved
    assert eager.at["triton_lstm", "within_spread"] is None  # one run: no spread to compare


def test_report_shows_the_repeated_runs(results):
    path = report.write_report(results)
    md = path.read_text()
    assert "Repeated runs: mean ± sample standard deviation" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| loop_gru ") and "±" in ln)
    assert "1100 ± 71" in line and "(within spread)" in line and "| 2 " in line
    line = next(ln for ln in md.splitlines() if ln.startswith("| loop_lstm ") and "±" in ln)
    assert "520 ± 20" in line and "0.473" in line and "within" not in line
    assert "n < 2: spread unknown" in md
    csv = pd.read_csv(results / "report.csv")
    assert len(csv) == 12 and {"seed", "mode"} <= set(csv.columns)


def test_runs_with_changed_settings_are_never_averaged_with_the_preset(tmp_path):
    """Two seeds of cudnn_gru as published and one at another learning rate: two rows, the changed one labelled; the
    ratio's baseline is cudnn_lstm as published, not a cudnn_lstm run with changed settings."""
    for seed in (0, 1):
        record(tmp_path, "cudnn_gru", seed, 1000.0 + 100 * seed, 160.0)
        record(tmp_path, "cudnn_lstm", seed, 2000.0 + 100 * seed, 115.0)
    record(tmp_path, "cudnn_gru", 0, 1500.0, 121.0, learning_rate=0.5)
    record(tmp_path, "cudnn_lstm", 0, 9000.0, 119.0, learning_rate=0.5)
    _, stats = _stats(tmp_path)
    gru = stats[stats["cell"] == "cudnn_gru"].set_index("overrides")
    assert gru.at["", "n"] == 2 and gru.at["", "test_ppl_mean"] == pytest.approx(160.0)
    assert gru.at["learning_rate 0.5", "n"] == 1 and gru.at["learning_rate 0.5", "test_ppl_mean"] == pytest.approx(121)
    assert gru.at["", "vs_baseline"] == pytest.approx(1050 / 2050)  # against cudnn_lstm as published
    md = report.write_report(tmp_path).read_text()
    assert any(ln.startswith("| cudnn_gru (learning_rate 0.5) ") and "| 1 " in ln for ln in md.splitlines())


def test_a_seed_run_twice_counts_once_by_its_latest_run(tmp_path):
    """A rerun of the same seed is the same sample again, not another seed: it must neither weigh its seed twice nor
    narrow the spread.  The latest finished run stands for the seed; the table says how many runs there were."""
    for seed in (0, 1):
        record(tmp_path, "cudnn_lstm", seed, 2000.0, 115.0 + seed)
    old = record(tmp_path, "loop_lstm", 0, 1000.0, 113.0)
    rerun = {**old, "run_id": "loop_lstm-rerun-0", "started": "2099-01-01T00:00:00+00:00", "words_per_sec": 1500.0}
    (tmp_path / "runs" / "loop_lstm-rerun-0.json").write_text(json.dumps(rerun))
    record(tmp_path, "loop_lstm", 1, 1700.0, 111.0)
    _, stats = _stats(tmp_path)
    loop = stats[stats["cell"] == "loop_lstm"].iloc[0]
    assert (loop["n"], loop["runs"], loop["seeds"]) == (2, 3, "0,1")
    assert loop["test_ppl_mean"] == pytest.approx(112.0) and loop["words_per_sec_mean"] == pytest.approx(1600.0)
    md = report.write_report(tmp_path).read_text()
    assert any(ln.startswith("| loop_lstm ") and "| 2 (3 runs) " in ln for ln in md.splitlines())


def test_the_convergence_table_names_the_runs_seed_and_the_mean_over_seeds(tmp_path):
    """Beside the published perplexities, the one run shown says its seed, and where the same work ran at two or more
    seeds their mean ± sd stands beside it: one seed's perplexity is not the cell's."""
    for seed in (0, 1):
        record(tmp_path, "cudnn_lstm", seed, 2000.0, 110.0 + 2 * seed)
    record(tmp_path, "loop_lstm", 0, 1000.0, 113.0)
    md = report.write_report(tmp_path).read_text()
    section = md[md.index("## Convergence"):]
    header = next(ln for ln in section.splitlines() if ln.startswith("| source"))
    assert [c.strip() for c in header.strip("|").split("|")][:2] == ["source", "seed"]
    cudnn = next(ln for ln in section.splitlines() if ln.startswith("| ours: `cudnn_lstm`"))
    loop = next(ln for ln in section.splitlines() if ln.startswith("| ours: `loop_lstm`"))
    assert "| 1 " in cudnn and "111.00 ± 1.41 (seeds 0,1)" in cudnn  # the latest run (seed 1) and both seeds
    assert "| 0 " in loop and "±" not in loop


def test_words_per_sec_over_several_machine_sessions_are_not_divided(tmp_path):
    """Seeds that ran on two machine images (env.platform; boot ids where records have them) pool their perplexities
    but not a words/sec ratio: the seed table counts the sessions instead, At a glance says its speeds span them."""
    for seed, image in enumerate(("fc-v657", "fc-v669")):
        for cell, wps in (("cudnn_lstm", 1000.0), ("loop_lstm", 1500.0)):
            rec = record(tmp_path, cell, seed, wps * (1 + seed), 120.0 + seed)
            rec["env"]["platform"] = f"Linux-6.18.44-{image}-x86_64"
            rec["env"].pop("boot_id")  # (records from before it was recorded)
            (tmp_path / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    runs = report_training.runs_frame(report_data.load_runs(tmp_path))
    stats = report_training.seed_stats(runs).set_index("cell")
    assert stats.at["loop_lstm", "n"] == 2 and math.isnan(stats.at["loop_lstm", "vs_baseline"])
    table = "\n".join(report_training.seed_table(runs))
    assert "— (2 machine sessions)" in table
    assert "over 2 machine sessions" in report_training._training_winners(runs)["most words/sec"]
