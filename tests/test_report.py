"""``rnnbench report`` on hand-made records: failed, missing and NaN runs; ratios within one device only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import flops, report
from bench.cli import main
from bench.report import common as report_common
from bench.report import data as report_data
from bench.report import training as report_training
from lm.config import preset
from lm.errors import UsageError
from lm.train import new_record

CPU = "Test CPU 9000"
GPU = "Test GPU X1"


def record(results: Path, cell: str, config: str = "small", device: str = "cpu", name: str = CPU,
           status: str = "ok", wps: float | None = 1000.0, valid: list[float] | None = None, test: float | None = 150.0,
           started: str = "2026-01-02T03:04:05+00:00", error: str | None = None, epochs: int = 2,
           threads: int = 2) -> dict:
    """A run record in lm.train's layout, written as rnnbench would (NaN is kept, as a hand-edited file might)."""
    rec = new_record(preset(config, epochs=epochs), cell, torch.device("cpu"), 0, ["rnnbench", "train"])
    valid = [300.0, 200.0][:epochs] if valid is None else valid
    rec.update(status=status, started=started, words_per_sec=wps, test_ppl=test, error=error,
               peak_memory_bytes=512 * 2**20, wall_seconds=120.0, steps_per_epoch=100,
               epochs=[{"epoch": i + 1, "lr": 1.0, "train_ppl": v * 0.8, "valid_ppl": v, "train_seconds": 10.0,
                        "words_per_sec": wps} for i, v in enumerate(valid)])
    rec["run_id"] = f"{started[:10]}-{config}-{cell}-{device}-{status}"
    rec["env"].update(device=device, device_name=name, torch_threads=threads)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))  # allow_nan: NaN stays NaN
    return rec


def bench_json(results: Path, device: str, name: str, medians: dict, matmul: float | None = 1e11,
               date: str = "2026-01-03T00:00:00+00:00", folder: str = "cpu") -> Path:
    """A pytest-benchmark JSON as bench/bench_cells.py writes it; ``medians`` maps (pass, shape, cell) -> seconds."""
    shapes = {"small": (200, 20), "medium": (650, 35)}
    benches = []
    for (pass_, shape, cell), median in medians.items():
        hidden, steps = shapes[shape]
        kind = "GRU" if "gru" in cell else "LSTM"
        per_token = flops.cell_flops_per_token(kind, hidden, 2, pass_) if pass_ != "step" else \
            flops.lm_flops_per_token(kind, hidden, 2, 10000)
        benches.append({
            "group": f"{pass_}-{shape}", "name": f"test_{pass_}[{shape}-{cell}]",
            "fullname": f"bench/bench_cells.py::test_{pass_}[{shape}-{cell}]",
            "stats": {"median": median, "min": median * 0.9, "mean": median, "rounds": 5, "q1": median * 0.98,
                      "q3": median * 1.02},
            "extra_info": {"pass": pass_, "shape": shape, "cell": cell, "kind": kind, "backend": "test",
                           "device": device, "device_name": name, "hidden_size": hidden, "num_steps": steps,
                           "batch_size": 20, "flops_per_call": per_token * steps * 20,
                           "words_per_sec": steps * 20 / median, "peak_memory_bytes": 2**30, "torch_threads": 2,
                           "load_average_1min": 0.5}})
    machine = {"bench_device": device, "device_name": name, "torch": "2.x", "torch_threads": 2}
    doc = {"machine_info": machine, "commit_info": {}, "benchmarks": benches, "datetime": date, "version": "5.0"}
    if matmul:
        doc["rnnbench"] = {"commit": "abc", "matmul": {
            "device": device, "device_name": name, "measured": date, "fp32_matmul_flops": matmul,
            "fp32_matmul_n": 1024, "torch_threads": 2, "torch": "2.x"}}
    path = results / "bench" / folder / "micro.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def csv_rows(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "report.csv")


def row(df: pd.DataFrame, **match) -> pd.Series:
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (match, sel)
    return sel.iloc[0]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "results"
    r.mkdir()
    return r


def test_ratios_failed_missing_and_nan_runs(results):
    record(results, "cudnn_lstm", wps=2000.0)
    record(results, "loop_lstm", wps=500.0)
    record(results, "loop_gru", status="failed", wps=None, valid=[], test=None, error="RuntimeError: boom")
    record(results, "cudnn_gru", status="diverged", wps=float("nan"), valid=[300.0, float("nan")],
           test=float("nan"), error="loss became NaN in epoch 2")
    record(results, "triton_lstm", status="unavailable", wps=None, valid=[], test=None,
           error="cell triton_lstm cannot run on cpu: needs CUDA")
    # The same cells on another device: ratios must use that device's own baseline.
    record(results, "cudnn_lstm", device="cuda", name=GPU, wps=100000.0)
    record(results, "loop_lstm", device="cuda", name=GPU, wps=10000.0)
    # A preset with no baseline at all.
    record(results, "loop_lstm", config="medium", wps=100.0)
    (results / "runs" / "garbage.json").write_text("{not json")

    md = report.write_report(results).read_text()
    df = csv_rows(results)
    assert len(df) == 8  # one row per readable record

    assert row(df, cell="loop_lstm", config="small", device="cpu")["speed_vs_cudnn_lstm"] == pytest.approx(0.25)
    assert row(df, cell="loop_lstm", config="small", device="cuda")["speed_vs_cudnn_lstm"] == pytest.approx(0.1)
    assert math.isnan(row(df, cell="loop_lstm", config="medium")["speed_vs_cudnn_lstm"])  # no baseline: empty
    nan_run = row(df, cell="cudnn_gru")
    assert math.isnan(nan_run["words_per_sec"]) and math.isnan(nan_run["test_ppl"])
    assert nan_run["best_valid_ppl"] == 300.0 and nan_run["status"] == "diverged"
    assert row(df, cell="loop_gru")["epochs_done"] == 0

    # Training FLOP/s: 48 L H^2 + 6 H V per token for the LSTM, with PTB's vocabulary for the presets.
    assert row(df, cell="cudnn_lstm", device="cpu")["flops_per_token"] == 48 * 2 * 200**2 + 6 * 200 * 10000

    # One table per preset and device, each naming the device and the date.
    assert f"### small on cpu: {CPU}" in md and f"### small on cuda: {GPU}" in md
    assert f"### medium on cpu: {CPU}" in md and "No finished `cudnn_lstm` run here" in md
    assert "Runs started 2026-01-02 (UTC)" in md
    assert "RuntimeError: boom" in md and "loss became NaN" in md and "needs CUDA" in md
    small_cpu = md.split(f"### small on cpu: {CPU}")[1].split("###")[0]
    assert "| loop_lstm" in small_cpu and "0.25" in small_cpu
    medium_cpu = md.split(f"### medium on cpu: {CPU}")[1].split("###")[0]
    assert "no run" in medium_cpu and "`cudnn_lstm`" in medium_cpu  # registered cells without a run are listed
    # No matmul rate was measured anywhere: the fraction is empty, not a crash.
    assert "No matmul rate measured for this device" in md

    # The paper's numbers beside ours, with the source.
    assert "120.7" in md and "114.5" in md and "121.39" in md and "arXiv:1409.2329" in md

    plots = {p.name for p in (results / "plots").glob("*.png")}
    assert "valid_ppl-small-cpu-test-9000.png" in plots and "words_per_sec-cuda-test-gpu-x1.png" in plots
    assert all((results / "plots" / p).stat().st_size > 1000 for p in plots)
    for p in plots:
        assert f"plots/{p}" in md


def test_micro_benchmarks_and_matmul_fraction(results):
    medians = {}
    for shape, scale in (("small", 1.0), ("medium", 5.0)):
        for cell, slow in (("cudnn_lstm", 1.0), ("loop_lstm", 4.0), ("cudnn_gru", 1.0), ("loop_gru", 2.0)):
            for pass_, f in (("fwd", 0.01), ("fwdbwd", 0.03), ("step", 0.05)):
                medians[(pass_, shape, cell)] = f * scale * slow
    bench_json(results, "cpu", CPU, medians, matmul=1e11)
    # A GPU with micro-benchmarks but no training runs, and no cudnn_lstm timing: no ratio, no crash.
    bench_json(results, "cuda", GPU, {("fwdbwd", "small", "loop_lstm"): 0.002}, matmul=None, folder="gpu")
    record(results, "cudnn_lstm", wps=8000.0)  # training on the CPU only

    md = report.write_report(results).read_text()
    b, _ = report_data.load_bench(results)
    assert len(b) == 25
    assert f"### Micro-benchmarks on cpu: {CPU}" in md and f"### Micro-benchmarks on cuda: {GPU}" in md
    assert "Timed 2026-01-03 (UTC)" in md
    small = md.split("#### small")[1].split("####")[0]
    loop = next(line for line in small.splitlines() if line.startswith("| loop_lstm"))
    assert "| 0.25 " in loop  # fwd+bwd and step: 4x slower than cudnn_lstm
    gru = next(line for line in small.splitlines() if line.startswith("| loop_gru"))
    assert "| 0.5 " in gru  # compared with cudnn_gru, its own kind
    # fwd+bwd GFLOP/s = 3 * 16 * L * H^2 * tokens / time; % of the 100 GFLOP/s matmul rate.
    gflops = 3 * 16 * 2 * 200**2 * 400 / 0.03 / 1e9
    assert f"{gflops:.3g}" in small and f"{gflops:.2g}" in small
    gpu = md.split(f"### Micro-benchmarks on cuda: {GPU}")[1].split("## FLOP/s")[0]
    assert "No matmul rate measured" in gpu and "| loop_lstm" in gpu
    assert f"### small on cuda: {GPU}" not in md  # no training runs there, no table

    # The training run's FLOP fraction uses the CPU's measured rate.
    cpu_run = row(csv_rows(results), cell="cudnn_lstm")
    assert cpu_run["matmul_gflops"] == pytest.approx(100.0)
    assert cpu_run["matmul_fraction"] == pytest.approx(8000 * (48 * 2 * 200**2 + 6 * 200 * 10000) / 1e11)

    plots = {p.name for p in (results / "plots").glob("*.png")}
    assert {"fwdbwd_vs_hidden-cpu-test-9000.png", "fwdbwd_vs_hidden-cuda-test-gpu-x1.png"} <= plots


def test_matmul_rate_prefers_the_same_thread_count(results):
    (results / "machine").mkdir()
    for threads, rate, date in ((1, 5e10, "2026-01-05"), (2, 9e10, "2026-01-01")):
        (results / "machine" / f"cpu-{threads}.json").write_text(json.dumps({
            "device": "cpu", "device_name": CPU, "measured": date, "fp32_matmul_flops": rate,
            "fp32_matmul_n": 1024, "torch_threads": threads}))
    record(results, "cudnn_lstm", wps=1000.0, threads=2)
    record(results, "loop_lstm", wps=1000.0, threads=1)
    report.write_report(results)
    df = csv_rows(results)
    assert row(df, cell="cudnn_lstm")["matmul_gflops"] == pytest.approx(90.0)
    assert row(df, cell="loop_lstm")["matmul_gflops"] == pytest.approx(50.0)


def test_empty_results_folder(results):
    md = report.write_report(results).read_text()
    assert "(no training runs" in md and "(no micro-benchmark JSON" in md and "(nothing to plot yet)" in md
    assert (results / "report.csv").read_text().startswith("run_id,")


def test_cli_report(results, capsys):
    record(results, "cudnn_lstm")
    assert main(["report", "--results", str(results)]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    assert (results / "REPORT.md").is_file() and (results / "report.csv").is_file()
    assert "cudnn_lstm" in (results / "train.md").read_text()  # (a record written by hand: the report makes it)


def test_missing_results_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    with pytest.raises(UsageError):
        report.write_report(tmp_path / "nope")


def test_flops_formula():
    assert flops.lm_flops_per_token("LSTM", 650, 2, 10000) == 48 * 2 * 650**2 + 6 * 650 * 10000
    assert flops.lm_flops_per_token("GRU", 650, 2, 10000) == 36 * 2 * 650**2 + 6 * 650 * 10000
    assert flops.cell_flops_per_token("LSTM", 200, 2, "fwd") * 3 == flops.cell_flops_per_token("LSTM", 200, 2)


@pytest.mark.parametrize("tag", ["bf16", "tf32"])
def test_other_arithmetics_get_their_own_columns_and_ratios(results, tag):
    """bench --bench-dtype bfloat16 names its passes fwdbwd-bf16 (...), --bench-fp32-matmul tf32 fwdbwd-tf32: own
    columns, ratios within the arithmetic, and the exact float32 rows of the same cells stay."""
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.03, ("fwdbwd", "small", "loop_lstm"): 0.06})
    path = bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.02,
                                            ("fwdbwd", "small", "loop_lstm"): 0.08}, folder=tag)
    doc = json.loads(path.read_text())
    for b in doc["benchmarks"]:
        b["extra_info"]["pass"] = f"fwdbwd-{tag}"
    path.write_text(json.dumps(doc))
    small = report.write_report(results).read_text().split("#### small")[1].split("####")[0]
    header = next(line for line in small.splitlines() if line.startswith("| cell"))
    assert f"fwd+bwd {tag} ms" in header and f"fwd+bwd {tag} vs cuDNN" in header
    assert not {"bf16", "tf32"} - {tag} & set(header.split())  # (the other one's columns only where timed)
    loop = next(line for line in small.splitlines() if line.startswith("| loop_lstm"))
    assert "| 0.5 " in loop and "| 0.25 " in loop  # exact float32: 0.03 / 0.06; the other: 0.02 / 0.08


def test_graph_replayed_fwdbwd_gets_its_own_column_and_ratio(results):
    """bench's fwdbwd-cuda-graph pass (fwd+bwd replayed as one CUDA graph): a column and a ratio beside the eager
    fwd+bwd's, only where it was timed."""
    path = bench_json(results, "cuda", "GPU", {("fwdbwd", "small", "cudnn_lstm"): 0.004,
                                              ("fwdbwd", "small", "triton_lstm"): 0.003})
    plain = report.write_report(results).read_text()
    assert "fwd+bwd graph" not in plain.split("#### small")[1].split("####")[0]
    doc = json.loads(path.read_text())
    for b, median in zip(list(doc["benchmarks"]), (0.0005, 0.001), strict=True):
        graph = json.loads(json.dumps(b))
        graph["extra_info"]["pass"] = "fwdbwd-cuda-graph"
        graph["stats"]["median"] = median
        doc["benchmarks"].append(graph)
    path.write_text(json.dumps(doc))
    text = report.write_report(results).read_text()
    small = text.split("#### small")[1].split("####")[0]
    assert "fwd+bwd graph ms" in small and "fwd+bwd graph vs cuDNN" in small
    triton = next(line for line in small.splitlines() if line.startswith("| triton_lstm"))
    assert "| 1.33 " in triton and "| 0.5 " in triton  # eager 0.004 / 0.003; as a graph 0.0005 / 0.001
    # at a glance: the eager winner and, in a column of its own, the captured one (the order turned)
    glance = text.split("## At a glance")[1].split("## Training runs")[0]
    assert "fastest fwd+bwd, CUDA graph" in glance and "fastest LM step, CUDA graph" not in glance  # (not timed)
    row = next(line for line in glance.splitlines() if line.startswith("| small") and "LSTM" in line)
    assert "`triton_lstm` 3 ms (1.33× as fast as `cudnn_lstm`, 4 ms)" in row
    assert "`cudnn_lstm` 0.5 ms (next: `triton_lstm` 1 ms, 0.50× as fast)" in row
    assert "fastest fwd+bwd, CUDA graph" not in plain  # (no such figure: no such column)


def test_a_run_with_changed_settings_is_labelled_and_kept_apart():
    """A run that overrides its preset (--learning-rate 0.5) says so beside the cell, and is not hidden by, nor
    hides, the preset's own run of the same length."""
    from lm import config as lm_config

    base = lm_config.preset("small").as_dict()
    assert report_training.overrides(base) == "" and report_training.overrides({**base, "epochs": 3}) == ""
    assert report_training.overrides({**base, "learning_rate": 0.5}) == "learning_rate 0.5"
    assert report_training.overrides({"name": "custom", "learning_rate": 0.5}) == ""
    recs = [{"run_id": f"r{i}", "started": f"2026-01-0{i}T00:00:00+00:00", "cell": "cudnn_gru", "kind": "GRU",
             "status": "ok", "config": {**base, **changed}, "epochs": [{"epoch": 1, "valid_ppl": 150.0}],
             "test_ppl": 140.0, "env": {"device": "cpu", "device_name": "x"}}
            for i, changed in ((1, {}), (2, {"learning_rate": 0.5}))]
    md = "\n".join(report_training.training_section(report_training.runs_frame(recs), {}))
    assert "| cudnn_gru (learning_rate 0.5) " in md and "| cudnn_gru " in md


def test_plots_are_written_whole_and_stale_ones_go(results):
    """Each plot is replaced in one rename (a reader, or a commit made meanwhile, never sees it half-written or
    missing); a plot whose device no longer has data is removed after the others are written."""
    record(results, "cudnn_lstm")
    stale = results / "plots" / "words_per_sec-cuda-gone.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"old")
    report.write_report(results)
    pngs = sorted(p.name for p in (results / "plots").iterdir())
    assert pngs and stale.name not in pngs and all(p.endswith(".png") for p in pngs)  # (no temporary files left)
    assert all((results / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def full_run(results: Path, cell: str, seed: int, test: float, wps: float, reach: float | None,
             epochs: int = 13, fp32_matmul: str = "ieee", steps: int = 2323, **changed) -> dict:
    """A finished small run of ``epochs`` (13: the whole schedule) whose validation perplexity reaches the preset's
    target after ``reach`` seconds (None: never)."""
    rec = new_record(preset("small", epochs=epochs, **changed), cell, torch.device("cpu"), seed, ["rnnbench", "train"],
                     fp32_matmul=fp32_matmul)
    target = preset("small").target_valid_ppl
    rec.update(status="ok", words_per_sec=wps, test_ppl=test, steps_per_epoch=steps, peak_memory_bytes=2**29,
               epochs=[{"epoch": e + 1, "elapsed_seconds": 100.0 * (e + 1),
                        "valid_ppl": target - 1 if reach is not None and 100.0 * (e + 1) >= reach else target + 50}
                       for e in range(epochs)])
    rec["run_id"] = f"{cell}-{seed}-{epochs}-{fp32_matmul}-{steps}{''.join(f'-{k}' for k in changed)}"
    rec["env"].update(device="cpu", device_name=CPU, torch_threads=1)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return rec


def test_at_a_glance_names_the_fastest_and_the_best_of_comparable_work(results):
    """The report's first section: the fastest cell of each kind within one benchmark run with its cuDNN cell, and
    the best of the whole-schedule runs in exact float32 as published (means over seeds, and who is within spread)."""
    for seed, (a, b) in enumerate(((111.0, 111.6), (112.0, 112.6), (113.0, 113.6))):
        full_run(results, "cudnn_lstm", seed, a, 2000.0 + seed, reach=300.0)
        full_run(results, "loop_lstm", seed, b, 1500.0 + seed, reach=500.0)
    full_run(results, "compiled_lstm", 0, 150.0, 9000.0, reach=None)  # fastest per word, never reaches the target
    full_run(results, "compiled_lstm", 1, 150.0, 9000.0, reach=None)
    # not comparable: a shorter run, changed settings, TF32 (refused on a CPU: a hand-made record), truncated epochs
    full_run(results, "loop_gru", 0, 90.0, 9e5, reach=100.0, epochs=2)
    full_run(results, "loop_lstm", 7, 90.0, 9e5, reach=100.0, learning_rate=0.5)
    full_run(results, "loop_lstm", 8, 90.0, 9e5, reach=100.0, fp32_matmul="tf32")
    full_run(results, "loop_lstm", 9, 90.0, 9e5, reach=100.0, steps=50)
    older = bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.030,
                                             ("fwdbwd", "small", "loop_lstm"): 0.045,
                                             ("fwdbwd", "small", "compiled_lstm"): 0.040,
                                             ("fwdbwd", "small", "cudnn_gru"): 0.030,
                                             ("fwdbwd", "small", "loop_gru"): 0.020})
    older.rename(older.with_name("a.json"))
    # a newer run of fewer cells: its faster compiled_lstm is not set against the other run's cuDNN figure
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.031, ("fwdbwd", "small", "compiled_lstm"):
                                     0.010}, date="2026-02-01T00:00:00+00:00")
    text = report.write_report(results).read_text()
    glance = text.split("## At a glance")[1].split("## Training runs")[0]
    lstm = next(line for line in glance.splitlines() if line.startswith("| small") and "LSTM" in line)
    gru = next(line for line in glance.splitlines() if line.startswith("| small") and "| GRU" in line)
    assert "`cudnn_lstm` 30 ms (next: `compiled_lstm` 40 ms, 0.75× as fast)" in lstm
    assert "`cudnn_lstm` 112.00 ± 1.00 (3 seeds); within spread of `loop_lstm`" in lstm
    assert "`compiled_lstm` 9000 ± 0 (2 seeds)" in lstm  # (faster per word; worse, and never at the target)
    assert "`cudnn_lstm` 5.0 ± 0.0 min (3 seeds)" in lstm and "compiled_lstm` 150" not in lstm
    assert "`loop_gru` 20 ms (1.50× as fast as `cudnn_gru`, 30 ms)" in gru
    assert gru.count("—") == 4  # (no comparable GRU run)
    assert "90.00" not in glance and "9e+05" not in glance and "900000" not in glance
    # every kind in one row, against cudnn_lstm: the GRU cell faster than the LSTM's cuDNN in that run
    anyk = next(line for line in glance.splitlines() if line.startswith("| small") and "| any" in line)
    assert "`loop_gru` 20 ms (1.50× as fast as `cudnn_lstm`, 30 ms)" in anyk and "`cudnn_lstm` 112.00" in anyk


def test_a_run_divides_by_the_matmul_rate_as_it_stood_when_it_started():
    """Machines of one name differ between sessions (the CPU's "AMD EPYC": 71 to 97 GFLOP/s a thread), so a run's %
    matmul uses the last rate measured before it started (else the first after), never a later session's; the
    table's note gives the range of the rates its rows used."""
    def m(when, gflops, threads=1):
        return {"device": "cpu", "device_name": "X", "measured": when, "fp32_matmul_flops": gflops * 1e9,
                "fp32_matmul_n": 1024, "torch_threads": threads}

    rates = {("cpu", "X"): [m("2026-11-27T21:00:00+00:00", 70), m("2026-11-28T03:00:00+00:00", 76),
                            m("2026-11-28T04:00:00+00:00", 200, threads=2), m("2026-11-29T04:00:00+00:00", 97)]}
    rate = report_data.rate_for
    assert rate(rates, "cpu", "X", 1, "2026-11-28T23:59:00+00:00")["fp32_matmul_flops"] == 76e9  # not the nearer 97
    assert rate(rates, "cpu", "X", 1, "2026-11-27T10:00:00+00:00")["fp32_matmul_flops"] == 70e9  # before any: first
    assert rate(rates, "cpu", "X", 1, "2026-11-29T05:00:00+00:00")["fp32_matmul_flops"] == 97e9
    assert rate(rates, "cpu", "X", 2, "2026-11-30T00:00:00+00:00")["fp32_matmul_flops"] == 200e9  # same threads first
    assert rate(rates, "cpu", "X", 1)["fp32_matmul_flops"] == 97e9  # no time: the newest
    assert rate(rates, "cpu", "X", 1, "not a time")["fp32_matmul_flops"] == 97e9
    note = report_common._rate_note([rate(rates, "cpu", "X", 1, w) for w in ("2026-11-28T05:00:00+00:00",
                                                                       "2026-11-29T05:00:00+00:00")])
    assert "76 to 97 GFLOP/s, measured 2026-11-28 to 2026-11-29" in note, note
    one = report_common._rate_note(rate(rates, "cpu", "X", 1, "2026-11-28T05:00"))
    assert "76 GFLOP/s, measured 2026-11-28." in one


def table(section: str, first: str = "| cell") -> dict[str, dict[str, str]]:
    """The first markdown table in ``section`` whose header starts with ``first``: cell -> column -> text."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[start])
    rows = [split(line) for line in lines[start + 2:] if line.startswith("|")]
    rows = rows[:next((i for i, line in enumerate(lines[start + 2:]) if not line.startswith("|")), len(rows))]
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows}


def test_micro_ratios_divide_figures_of_one_benchmark_run(results):
    """Per pass and kind the table shows the figures of one run (the one with the kind's cuDNN cell and the most cells
    of the kind, then the newest, as At a glance); a cell that run did not time shows its newest figure, its ratio
    within its own run (— without a cuDNN cell there), and a timed column names the run; dividing two figures of a
    column gives the printed ratio."""
    older = bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.030,
                                             ("fwdbwd", "small", "loop_lstm"): 0.045,
                                             ("fwdbwd", "small", "cudnn_gru"): 0.034,
                                             ("fwdbwd", "small", "compiled_gru"): 0.034})
    older.rename(older.with_name("a.json"))
    # newer and loaded (every figure slower), with more LSTM cells but no cudnn_gru
    newer = {"cudnn_lstm": 0.040, "loop_lstm": 0.080, "compiled_lstm": 0.050, "loop_gru": 0.060, "compiled_gru": 0.021}
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", c): v for c, v in newer.items()},
               date="2026-02-01T00:00:00+00:00", folder="cpu-b")
    text = report.write_report(results).read_text()
    section = text.split("#### small")[1].split("## FLOP/s")[0]
    t = table(section)
    ms = {cell: float(r["fwd+bwd ms"]) for cell, r in t.items()}
    assert ms == {"cudnn_lstm": 40.0, "loop_lstm": 80.0, "compiled_lstm": 50.0, "cudnn_gru": 34.0,
                  "compiled_gru": 34.0, "loop_gru": 60.0}  # (compiled_gru: the run with cudnn_gru, not the newest)
    for cell, base in (("loop_lstm", "cudnn_lstm"), ("compiled_lstm", "cudnn_lstm"), ("compiled_gru", "cudnn_gru")):
        assert t[cell]["fwd+bwd vs cuDNN"] == f"{ms[base] / ms[cell]:.3g}"
    assert t["loop_gru"]["fwd+bwd vs cuDNN"] == "—"  # its run timed no cudnn_gru: no ratio across runs
    assert "Figures from the run `micro.json` (2026-02-01) except where the *timed* column" in section
    assert t["compiled_gru"]["timed"] == t["cudnn_gru"]["timed"] == "fwd+bwd: `a.json` (2026-01-03)"
    assert t["loop_gru"]["timed"] == t["cudnn_lstm"]["timed"] == "—"
    glance = text.split("## At a glance")[1].split("## Training runs")[0]
    assert "`cudnn_lstm` 40 ms (next: `compiled_lstm` 50 ms, 0.80× as fast)" in glance
    assert "`cudnn_gru` 34 ms (next: `compiled_gru` 34 ms, 1.00× as fast; within noise of `compiled_gru`)" in glance
    # one run only: no timed column
    (results / "bench" / "cpu" / "a.json").unlink()
    section = report.write_report(results).read_text().split("#### small")[1].split("## FLOP/s")[0]
    assert "timed" not in table(section)["cudnn_lstm"] and "Figures from the run" not in section


def _rewrite(results: Path, rec: dict, **fields) -> dict:
    rec.update(fields)
    (results / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return rec


def test_truncated_epochs_say_so_and_have_no_difference_to_the_paper(results):
    """A run whose epochs --max-steps cut short says how many steps of the whole epoch (the most any record at that
    batch size and window length has: medium's 1327 for large too), and is not set against the paper."""
    full_run(results, "cudnn_lstm", 0, 113.0, 2000.0, reach=300.0)
    full_run(results, "loop_lstm", 0, 113.0, 2000.0, reach=300.0, steps=400)  # 13 epochs, each cut to 400 steps
    _rewrite(results, record(results, "cudnn_lstm", config="medium", epochs=1, valid=[200.0]), steps_per_epoch=1327)
    _rewrite(results, record(results, "cudnn_lstm", config="large", epochs=1, valid=[500.0]), steps_per_epoch=400)
    text = report.write_report(results).read_text()
    small = table(text.split("### small on cpu")[1])
    assert small["loop_lstm"]["epochs"] == "13/13 (400/2323 steps)" and small["cudnn_lstm"]["epochs"] == "13/13"
    assert table(text.split("### large on cpu")[1])["cudnn_lstm"]["epochs"] == "1/1 (400/1327 steps)"
    assert table(text.split("### medium on cpu")[1])["cudnn_lstm"]["epochs"] == "1/1"
    paper = text.split("## Convergence")[1].split("### medium")[0]
    rows = table(paper, "| source")
    assert rows[f"ours: `cudnn_lstm` on cpu: {CPU}"]["test − paper"] == "-1.50"
    assert rows[f"ours: `loop_lstm` on cpu: {CPU}"]["test − paper"] == "—"
    assert rows[f"ours: `loop_lstm` on cpu: {CPU}"]["epochs"] == "13/13 (400/2323 steps)"
    glance = text.split("## At a glance")[1].split("## Training runs")[0]
    assert "loop_lstm" not in glance  # (not the whole schedule)


def test_header_counts_measurements_and_figures(results):
    """The header counts matmul measurements (not devices) and every micro-benchmark figure beside those shown."""
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.03, ("fwdbwd", "small", "loop_lstm"): 0.06})
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.03}, date="2026-02-01T00:00:00+00:00",
               folder="cpu-2")
    (results / "machine").mkdir()
    (results / "machine" / "cpu.json").write_text(json.dumps({
        "device": "cpu", "device_name": CPU, "measured": "2026-01-01", "fp32_matmul_flops": 5e10,
        "fp32_matmul_n": 1024, "torch_threads": 2}))
    head = report.write_report(results).read_text().split("## At a glance")[0]
    assert "3 micro-benchmark figure(s) under `bench/` (2 in the tables" in head
    assert "and 3 matmul measurement(s)." in head


def test_unusable_inputs_are_skipped_with_one_warning_each(results, capsys):
    """Unreadable or malformed files are skipped, each named once on stderr and counted in the header; the rest of
    the report is made as usual."""
    record(results, "cudnn_lstm")
    runs = results / "runs"
    (runs / "garbage.json").write_text("{not json")
    no_cell = record(results, "loop_lstm", started="2026-01-05T00:00:00+00:00")
    _rewrite(results, {k: v for k, v in no_cell.items() if k != "cell"})
    _rewrite(results, record(results, "loop_gru"), epochs="oops")
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.03})
    (results / "bench" / "cpu" / "broken.json").write_text(json.dumps({"benchmarks": {"a": 1}}))
    (results / "machine").mkdir()
    (results / "machine" / "cpu.json").write_text("")
    md = report.write_report(results).read_text()
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if line.startswith("rnnbench: warning: skipped ")]
    assert sorted(line.split("skipped ")[1].split(":")[0] for line in skipped) == sorted(
        str(p) for p in (runs / "garbage.json", runs / f"{no_cell['run_id']}.json",
                         runs / "2026-01-02-small-loop_gru-cpu-ok.json", results / "bench" / "cpu" / "broken.json",
                         results / "machine" / "cpu.json"))
    assert any("garbage.json: unreadable (" in line for line in skipped)
    assert any("no `cell`" in line for line in skipped) and any("`epochs` is a string, not a list" in line
                                                                for line in skipped)
    assert any("`benchmarks` is an object, not a list" in line for line in skipped)
    head = md.split("## At a glance")[0]
    assert "1 run record(s) under `runs/` (3 skipped: " in head and "`garbage.json` unreadable" in head
    assert f"`{no_cell['run_id']}.json` malformed" in head
    assert "(1 skipped: `broken.json` malformed)" in head and "(1 skipped: `cpu.json` unreadable)" in head
    assert "| cudnn_lstm " in md and (results / "report.csv").is_file()
    # the train tables list the records the report could use
    assert "cudnn_lstm" in (results / "train.md").read_text() and no_cell["run_id"] not in (results / "train.csv"
                                                                                           ).read_text()


def test_a_failure_writes_nothing(results, monkeypatch):
    """Every output is computed before the first is written: a report that fails leaves the folder as it was."""
    record(results, "cudnn_lstm")
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.03})

    def fail(*args):
        raise RuntimeError("late failure")

    monkeypatch.setattr(report, "paper_section", fail)
    with pytest.raises(RuntimeError, match="late failure"):
        report.write_report(results)
    assert sorted(p.name for p in results.iterdir()) == ["bench", "runs"]


def test_a_perplexity_worse_than_a_uniform_guess_is_marked(results):
    """valid or test perplexity above the vocabulary size: a mark, and a line under the table saying what it means and
    pointing to the notes on GRU spikes where the results folder has them."""
    record(results, "cudnn_lstm")
    record(results, "triton_gru", valid=[300.0, 126856.84], test=150257.38)
    md = report.write_report(results).read_text()
    rows = table(md.split("### small on cpu")[1])
    assert rows["triton_gru"]["test ppl"] == "150257.38 ⚠" and rows["triton_gru"]["valid ppl"] == "126856.84 ⚠"
    assert rows["cudnn_lstm"]["test ppl"] == "150.00"
    assert "⚠: a perplexity above the vocabulary size (10000 words)" in md and "gru-spikes" not in md
    (results / "gru-spikes").mkdir()
    (results / "gru-spikes" / "README.md").write_text("# notes")
    assert "[`gru-spikes/README.md`](gru-spikes/README.md)" in report.write_report(results).read_text()


def test_runs_side_by_side_say_so_and_a_session_divides_by_its_own_baseline(results):
    """Two runs training at once on one host share it (a 2-core CPU's runs of one thread each measured a third
    apart), so each says *beside 1*; and a run that names its machine session (env.boot_id) is divided only by the
    cuDNN run of that session -- hosts of one name and model differ -- else gets no ratio."""
    def run(cell, start, end, boot, wps):
        rec = record(results, cell, started=start, wps=wps)
        rec["env"].update(hostname="vm", boot_id=boot)
        return _rewrite(results, rec, finished=end, train_seconds=3000.0)

    run("cudnn_lstm", "2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00", "A", 1000.0)  # session A, alone
    run("cudnn_lstm", "2026-01-02T00:00:00+00:00", "2026-01-02T01:00:00+00:00", "B", 3000.0)  # B: a faster host
    run("loop_lstm", "2026-01-01T02:00:00+00:00", "2026-01-01T03:00:00+00:00", "A", 500.0)   # A, beside min_gru
    run("min_gru", "2026-01-01T02:30:00+00:00", "2026-01-01T04:00:00+00:00", "A", 800.0)
    run("loop_gru", "2026-01-03T00:00:00+00:00", "2026-01-03T01:00:00+00:00", "C", 900.0)    # C: no cuDNN run
    run("min_lstm", "2026-01-03T00:10:00+00:00", "2026-01-03T00:10:00+00:00", "C", 900.0)    # no time: beside none
    runs = report_training.runs_frame(report_data.load_runs(results))
    by = runs.set_index("cell")
    assert by.at["loop_lstm", "beside"] == 1 and by.at["min_gru", "beside"] == 1 and by.at["loop_gru", "beside"] == 0
    assert by.at["min_lstm", "beside"] == 0  # (a run that did not train is no one's neighbour, nor -1)
    assert by.at["loop_lstm", "speed_vs_cudnn_lstm"] == pytest.approx(0.5)  # A's baseline, not B's newer one
    assert math.isnan(by.at["loop_gru", "speed_vs_cudnn_lstm"])
    report.write_report(results)
    md = (results / "REPORT.md").read_text()
    assert "beside 1" in md and "*beside N*" in md


def test_a_run_resumed_in_another_machine_session_is_compared_with_none(results):
    """A run checkpointed in one machine session and resumed in another (its ``resumes`` each carry their env) has
    words/sec of two machines: no ratio, and it is no baseline for the runs of either session."""
    def run(cell, boot, wps, resumed_on=None):
        rec = record(results, cell, wps=wps)
        rec["env"].update(hostname="vm", boot_id=boot)
        if resumed_on:
            rec["resumes"] = [{"at": "2026-01-02T00:00:00+00:00", "epoch": 2, "step": 0,
                               "env": {**rec["env"], "boot_id": resumed_on}}]
        return _rewrite(results, rec, train_seconds=3000.0)

    run("cudnn_lstm", "A", 1000.0, resumed_on="B")
    run("loop_lstm", "A", 500.0)
    run("loop_gru", "B", 600.0, resumed_on="B")  # (resumed in its own session: one session)
    by = report_training.runs_frame(report_data.load_runs(results)).set_index("cell")
    assert by.at["cudnn_lstm", "session"] == "mixed: A + B" and by.at["loop_gru", "session"] == "B"
    assert math.isnan(by.at["loop_lstm", "speed_vs_cudnn_lstm"])  # its session's only cuDNN run blends two
    assert math.isnan(by.at["cudnn_lstm", "speed_vs_cudnn_lstm"])


def test_records_without_a_boot_id_take_their_machine_image_as_session_and_an_alone_baseline_first(results):
    """Before records named their boot, the CPU sessions' hosts differed by their image (env.platform: kernel builds
    fc-v657 and fc-v669, 76 and 97 GFLOP/s a thread): a run is divided only by a cudnn_lstm run of its image, and of
    those by one that trained alone."""
    def run(cell, start, end, image, wps):
        rec = record(results, cell, started=start, wps=wps)
        rec["env"].update(hostname="vm", platform=f"Linux-6.18.44-fc-{image}-x86_64-with-glibc2.36")
        rec["env"].pop("boot_id", None)
        return _rewrite(results, rec, finished=end, train_seconds=3000.0)

    run("cudnn_lstm", "2025-12-31T00:00:00+00:00", "2025-12-31T01:00:00+00:00", "v657", 2000.0)  # alone
    run("cudnn_lstm", "2026-01-01T02:00:00+00:00", "2026-01-01T03:00:00+00:00", "v657", 1500.0)  # beside loop_lstm
    run("loop_lstm", "2026-01-01T02:00:01+00:00", "2026-01-01T03:00:00+00:00", "v657", 1000.0)
    run("loop_gru", "2026-01-05T00:00:00+00:00", "2026-01-05T01:00:00+00:00", "v669", 3000.0)  # another image
    by = report_training.runs_frame(report_data.load_runs(results))
    by = by.sort_values("started").drop_duplicates("cell", keep="last")
    by = by.set_index("cell")
    assert by.at["loop_lstm", "speed_vs_cudnn_lstm"] == pytest.approx(0.5)  # the alone run's 2000, not 1500
    assert math.isnan(by.at["loop_gru", "speed_vs_cudnn_lstm"])


def test_at_a_glance_says_when_the_rounds_do_not_tell_the_fastest_apart(results):
    """Medians 1.7 % apart whose rounds' interquartile ranges overlap are not a ranking: the fastest says so."""
    bench_json(results, "cpu", CPU, {("fwdbwd", "small", "cudnn_lstm"): 0.0300, ("fwdbwd", "small", "loop_lstm"):
                                     0.0305, ("fwdbwd", "small", "compiled_lstm"): 0.040})
    glance = report.write_report(results).read_text().split("## At a glance")[1].split("## Training runs")[0]
    lstm = next(line for line in glance.splitlines() if line.startswith("| small") and "| LSTM" in line)
    assert "(next: `loop_lstm` 30.5 ms, 0.98× as fast; within noise of `loop_lstm`)" in lstm
    assert "compiled_lstm`)" not in lstm


def test_an_output_that_is_a_folder_is_one_line_and_nothing_written(results, capsys):
    record(results, "cudnn_lstm")
    (results / "train.csv").mkdir()
    assert main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.csv is a folder" in err and not (results / "REPORT.md").exists()


def test_records_are_written_with_the_umask_s_permissions(results):
    import os
    import stat

    record(results, "cudnn_lstm")
    report.write_report(results)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("REPORT.md", "report.csv", "train.csv"):
        assert stat.S_IMODE((results / name).stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("sub", ["runs", "bench", "machine", "plots"])
def test_a_file_where_a_folder_belongs_is_one_line_and_nothing_written(results, sub, capsys):
    record(results, "cudnn_lstm")
    (results / sub).mkdir(exist_ok=True)
    for p in (results / sub).iterdir():
        p.unlink()
    (results / sub).rmdir()
    (results / sub).write_text("not a folder")
    assert main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{results / sub} is not a folder" in err
    assert not (results / "REPORT.md").exists()
