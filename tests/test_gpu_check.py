"""The prepared GPU check's dry run: the same steps on the CPU at tiny sizes, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_corpus

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_step_and_writes_its_outputs(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", lines=200)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", str(corpus), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (steps_file,) = out.glob("gpu/*/steps.json")
    summary = json.loads(steps_file.read_text())
    assert summary["dry_run"] is True
    assert [s["step"] for s in summary["steps"]] == ["env", "tests", "bench", "train-small", "train-small-slow",
                                                     "train-medium", "tests-compiled", "train-compiled",
                                                     "bench-modes", "report"]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    slug = summary["slug"]
    assert json.loads((out / "gpu" / slug / "env.json").read_text())["measured"]["fp32_matmul_flops"] > 0
    assert (out / "gpu" / slug / "tests-junit.xml").is_file()
    bench = json.loads((out / "bench" / slug / "micro.json").read_text())
    assert bench["benchmarks"], "micro-benchmarks ran"
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    by_cell = {}
    for rec in runs:
        by_cell.setdefault(rec["cell"], []).append(rec["status"])
    assert "triton_lstm" not in by_cell  # interpreted Triton is not trained; on a GPU it is named and must train
    assert by_cell["cudnn_lstm"] == ["ok", "ok"] and by_cell["loop_lstm"] == ["ok"] and by_cell["loop_gru"] == ["ok"]
    assert (out / "REPORT.md").is_file()
    assert not (out / "checkpoints").exists(), "scratch checkpoints are not shipped"

    merged = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "bench.gpu_check", "merge", str(out), str(merged)], cwd=ROOT, check=True,
                   env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert len(list((merged / "runs").glob("*.json"))) == len(runs)
    assert (merged / "gpu" / slug / "steps.json").is_file()


def test_without_cuda_the_real_check_refuses_in_one_line(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the real check would run")
    r = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path), str(tmp_path / "out")], cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs CUDA" in r.stderr


def test_merge_stamps_the_commit_of_an_exported_tree(tmp_path):
    from bench import gpu_check
    from lm import env

    src = tmp_path / "check"
    (src / "runs").mkdir(parents=True)
    (src / "bench" / "cuda-x").mkdir(parents=True)
    (src / "runs" / "r.json").write_text(json.dumps({"run_id": "r", "env": {"commit": "f" * 40}}))
    (src / "bench" / "cuda-x" / "micro.json").write_text(json.dumps({"benchmarks": [], "rnnbench": {"commit": None}}))
    head = env.git_commit().removesuffix("-dirty")
    assert gpu_check.merge(src, tmp_path / "results", head[:7], "exported tree") == 0
    rec = json.loads((tmp_path / "results" / "runs" / "r.json").read_text())
    assert rec["env"] == {"commit": head, "provenance": "exported tree", "commit_recorded": "f" * 40}
    bench = json.loads((tmp_path / "results" / "bench" / "cuda-x" / "micro.json").read_text())
    assert bench["rnnbench"] == {"commit": head, "provenance": "exported tree"}
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "merge", str(src), str(tmp_path / "r2"),
                        "--commit", "0000000"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a commit of this checkout" in r.stderr
