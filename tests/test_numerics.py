"""The arithmetic of a run -- dtype and how float32 matmuls run on CUDA -- is one setting for every cell, part of the
run's identity (record, id, checkpoint) and of what the report compares: like with like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cells
from bench.report import training as report_training
from lm import checkpoint, config, data, records, train
from lm.errors import UsageError
from tests.test_report import GPU, record


def test_the_setting_is_torchs_for_cublas_and_cudnn_and_comes_back():
    before = cells.fp32_matmul(), cells.cudnn_rnn_tf32()
    assert before[0] == "ieee"  # tests/conftest.py: exact while testing
    with cells.fp32_matmul_precision("tf32"):
        assert cells.fp32_matmul() == "tf32" and cells.cudnn_rnn_tf32()
        # torch's older getters still answer (torch's own code calls them; they raise once the two APIs disagree)
        assert torch.get_float32_matmul_precision() == "high" and torch._C._get_cublas_allow_tf32()
        with cells.fp32_matmul_precision("ieee"):
            assert cells.fp32_matmul() == "ieee" and not cells.cudnn_rnn_tf32()
        assert cells.fp32_matmul() == "tf32"
    assert (cells.fp32_matmul(), cells.cudnn_rnn_tf32()) == before
    with pytest.raises(ValueError, match="must be one of ieee, tf32, got 'tf32x3'"):
        cells.set_fp32_matmul("tf32x3")


@pytest.mark.parametrize("name", ["triton_lstm", "triton_gru"])
def test_triton_cells_follow_torch_unless_told(name):
    pytest.importorskip("triton")
    follows, own = cells.build(name, 8, 8), cells.build(name, 8, 8, fp32_precision="tf32x3")
    assert follows.precision() == "ieee" and own.precision() == "tf32x3"
    with cells.fp32_matmul_precision("tf32"):
        assert follows.precision() == "tf32" and own.precision() == "tf32x3"
    assert follows.precision() == "ieee"
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        cells.build(name, 8, 8, fp32_precision="fast")


def test_plans_take_the_precision_they_are_given():
    """What the cell resolves reaches the compiled kernels' plan (the interpreter multiplies exactly whatever it is
    told: there the plan says ieee)."""
    pytest.importorskip("triton")
    from cells.triton_lstm import launch

    for precision in ("ieee", "tf32", "tf32x3"):
        assert launch.plan_for(20, 200, torch.float32, 132, fp32_precision=precision).precision == precision
        assert launch.plan_for(20, 200, torch.float32, None, fp32_precision=precision).precision == "ieee"
    assert launch.plan_for(20, 200, torch.bfloat16, 132, fp32_precision="tf32").precision == "ieee"


def test_records_ids_and_checkpoints_name_the_arithmetic(corpus_dir, tmp_path):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    fp32 = train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), results_dir=tmp_path, max_steps=2,
                       progress=False)
    assert (fp32["dtype"], fp32["fp32_matmul"], records.numerics(fp32)) == ("float32", "ieee", "fp32")
    assert "-bf16" not in fp32["run_id"] and fp32["checkpoint"].endswith("tiny-loop_lstm-cpu-seed0.pt")
    bf16 = train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), results_dir=tmp_path, max_steps=2,
                       progress=False, dtype=torch.bfloat16)
    assert (bf16["dtype"], bf16["fp32_matmul"], records.numerics(bf16)) == ("bfloat16", None, "bf16")
    assert "-tiny-loop_lstm-bf16-cpu-" in bf16["run_id"]
    assert bf16["checkpoint"].endswith("tiny-loop_lstm-bf16-cpu-seed0.pt")
    assert json.loads(Path(bf16["record_path"]).read_text())["dtype"] == "bfloat16"
    # A checkpoint resumes only with the arithmetic it was trained with.
    with pytest.raises(UsageError, match=r"is of a --dtype bfloat16 run; resume it with --dtype bfloat16"):
        train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), results_dir=tmp_path, max_steps=2, progress=False,
                    resume=True, checkpoint_path=bf16["checkpoint"])
    assert cells.fp32_matmul() == "ieee"


def test_a_checkpoint_of_the_other_matmul_precision_is_refused(tmp_path):
    cfg = config.preset("tiny").as_dict()
    ckpt = {"record": {"config": cfg, "kind": "LSTM", "cell": "cudnn_lstm", "dtype": "float32",
                       "fp32_matmul": "tf32"}, "vocab_size": 10, "train_tokens": 100}
    with pytest.raises(UsageError, match="is of a --fp32-matmul tf32 run; resume it with --fp32-matmul tf32"):
        checkpoint.check_compatible(ckpt, tmp_path / "c.pt", cfg, "LSTM", 10, 100, "eager", "float32", "ieee")
    checkpoint.check_compatible(ckpt, tmp_path / "c.pt", cfg, "LSTM", 10, 100, "eager", "float32", "tf32")
    del ckpt["record"]["fp32_matmul"], ckpt["record"]["dtype"]  # made before the fields: float32, either precision
    checkpoint.check_compatible(ckpt, tmp_path / "c.pt", cfg, "LSTM", 10, 100, "eager", "float32", "tf32")
    with pytest.raises(UsageError, match="is of a --dtype float32 run"):
        checkpoint.check_compatible(ckpt, tmp_path / "c.pt", cfg, "LSTM", 10, 100, "eager", "bfloat16", None)


def test_records_from_before_the_setting_read_as_what_ran():
    assert records.numerics({"backend": "cuDNN 91900; float32 RNN matmuls in TF32"}) == "tf32-rnn"
    assert records.numerics({"backend": "cuDNN 91900"}) == "tf32-rnn"  # (the first GPU run's: torch's default)
    assert records.numerics({"backend": "cuDNN 91900; exact float32 RNN matmuls"}) == "fp32"
    assert records.numerics({"backend": "Triton 3.6.0 compiled (...; recurrent matmuls exact float32)"}) == "fp32"
    assert records.numerics({"backend": "oneDNN"}) == "fp32"
    assert records.numerics({"dtype": "float32", "fp32_matmul": "tf32", "backend": "anything"}) == "tf32"
    assert records.numerics({"dtype": "bfloat16", "fp32_matmul": None}) == "bf16"


def _rewrite(results: Path, rec: dict, suffix: str = "", drop: tuple[str, ...] = (), **fields) -> dict:
    """``rec`` (written by ``record``) with ``fields`` set and ``drop`` removed, under its id plus ``suffix``."""
    (results / "runs" / f"{rec['run_id']}.json").unlink()
    rec = {k: v for k, v in rec.items() if k not in drop} | fields | {"run_id": rec["run_id"] + suffix}
    (results / "runs" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return rec


def test_the_report_compares_like_with_like(tmp_path):
    """A cuDNN run in TF32 is no baseline for an exact one: each arithmetic has its own, and the labels say which."""
    res = tmp_path / "results"
    old_cudnn = _rewrite(res, record(res, "cudnn_lstm", device="cuda", name=GPU, wps=2000.0,
                                     started="2026-01-01T00:00:00+00:00"),
                         drop=("fp32_matmul", "dtype"), backend="cuDNN 91900; float32 RNN matmuls in TF32")
    record(res, "triton_lstm", device="cuda", name=GPU, wps=1500.0, started="2026-01-01T01:00:00+00:00")
    exact = record(res, "cudnn_lstm", device="cuda", name=GPU, wps=1000.0, started="2026-01-02T00:00:00+00:00")
    tf32 = _rewrite(res, record(res, "cudnn_lstm", device="cuda", name=GPU, wps=3000.0,
                                started="2026-01-03T00:00:00+00:00"), "-tf32", fp32_matmul="tf32")
    _rewrite(res, record(res, "triton_lstm", device="cuda", name=GPU, wps=2400.0, started="2026-01-04T00:00:00+00:00"),
             "-tf32", fp32_matmul="tf32")
    df = report_training.runs_frame(records.load_runs(res))
    ratio = {(r.cell, r.numerics): r.speed_vs_cudnn_lstm for r in df.itertuples()}
    assert ratio[("triton_lstm", "fp32")] == pytest.approx(1.5)  # against the exact cuDNN run, not the newer TF32 one
    assert ratio[("triton_lstm", "tf32")] == pytest.approx(0.8)
    assert ratio[("cudnn_lstm", "tf32-rnn")] == pytest.approx(1.0)
    md = "\n".join(report_training.training_section(df, {}))
    assert "| triton_lstm [tf32] " in md and "| cudnn_lstm [tf32-rnn] " in md and "| triton_lstm  " in md
    assert "Baselines, per step mode and arithmetic: `" in md and f"[tf32] `{tf32['run_id']}`" in md
    assert f"[tf32-rnn] `{old_cudnn['run_id']}`" in md and exact["run_id"] in md


def test_bench_refuses_tf32_where_it_means_nothing():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    for extra, says in ((["--bench-device", "cpu"], "is for CUDA"), (["--bench-dtype", "bfloat16"], "is for float32")):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench", "--co",
                            "--bench-fp32-matmul", "tf32", *extra], capture_output=True, text=True, cwd=root,
                           timeout=120)
        assert r.returncode == 4 and f"--bench-fp32-matmul tf32 {says}" in r.stderr, r.stderr


def test_a_sweep_refuses_tf32_on_the_cpu_before_any_run(corpus_dir, tmp_path, capsys):
    from bench.cli import main

    results = tmp_path / "results"
    assert main(["sweep", "--cells", "loop_lstm,cudnn_lstm", "--config", "tiny", "--device", "cpu", "--fp32-matmul",
                 "tf32", "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rnnbench: error: --fp32-matmul tf32 is for CUDA: TF32 is a tensor-core format, and float32 "
                   "matmuls on the CPU are exact"]
    assert not results.exists() or not any(results.rglob("*.json"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_on_cuda_a_tf32_run_runs_every_cell_in_tf32(corpus_dir, tmp_path):
    """The GPU check's proof of the plumbing: a --fp32-matmul tf32 run's record says so, cuDNN's and the Triton cell's
    backends name TF32, and an exact run's name exact arithmetic; torch's settings are back afterwards."""
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    for cell, says_tf32, says_exact in (("cudnn_lstm", "float32 RNN matmuls in TF32", "exact float32 RNN matmuls"),
                                        ("triton_lstm", "TF32 tensor cores", "exact float32 (ieee)")):
        for precision, says in (("tf32", says_tf32), ("ieee", says_exact)):
            rec = train.train(cfg, cell, corpus, torch.device("cuda"), results_dir=None, max_steps=2, progress=False,
                              fp32_matmul=precision)
            assert rec["status"] == "ok" and rec["fp32_matmul"] == precision and says in rec["backend"], rec["backend"]
            assert ("-tf32-" in rec["run_id"]) == (precision == "tf32")
    assert cells.fp32_matmul() == "ieee" and not cells.cudnn_rnn_tf32()
