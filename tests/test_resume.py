"""Trustworthy runs: checkpoint/resume after SIGKILL, SIGTERM/SIGINT, divergence, out-of-memory,
determinism, concurrent writers, and hostile resume/results inputs."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_corpus

import cells
from bench.cli import main
from lm import checkpoint, config, data, records, train
from lm.model import LanguageModel
from tests.test_train import without_heartbeats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Big enough that an epoch of `tiny` lasts a few seconds, so a child can be killed mid-epoch."""
    return write_corpus(tmp_path_factory.mktemp("long"), lines=1500)


def train_args(corpus: Path, results: Path, *extra: str) -> list[str]:
    return ["train", "--cell", "loop_lstm", "--config", "tiny", "--device", "cpu", "--seed", "7", "--epochs", "2",
            "--data-dir", str(corpus), "--no-verify", "--results", str(results), "--quiet", *extra]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_mid_epoch_checkpoint(path: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"child ended before a mid-epoch checkpoint: {proc.communicate()}"
        if path.is_file():
            ckpt = checkpoint.load(path)
            if ckpt["step"] > 0:
                return ckpt
        time.sleep(0.05)
    raise AssertionError("no mid-epoch checkpoint appeared")


def only_record(results: Path) -> dict:
    (path,) = (results / "runs").glob("*.json")
    return json.loads(path.read_text())


def numbers(rec: dict) -> list:
    return [(e["epoch"], e["lr"], e["train_ppl"], e["valid_ppl"], e["train_spikes"], e["train_max_window_ppl"])
            for e in rec["epochs"]] + [rec["test_ppl"]]


@pytest.fixture(scope="module")
def reference_run(long_corpus, tmp_path_factory) -> dict:
    """The uninterrupted run every resumed run must reproduce exactly."""
    results = tmp_path_factory.mktemp("reference")
    assert main(train_args(long_corpus, results)) == 0
    return only_record(results)


def test_sigkill_mid_epoch_then_resume_gives_identical_perplexities(long_corpus, tmp_path, reference_run):
    results = tmp_path / "killed"
    ckpt_path = checkpoint.default_path(results, "tiny", "loop_lstm", torch.device("cpu"), 7)
    proc = start(train_args(long_corpus, results, "--checkpoint-every", "0.003"))
    try:
        ckpt = wait_for_mid_epoch_checkpoint(ckpt_path, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not list((results / "runs").glob("*.json")), "a killed run leaves no record"
    assert ckpt["step"] > 0
    assert main(train_args(long_corpus, results, "--resume")) == 0
    rec = only_record(results)
    assert rec["status"] == "ok" and len(rec["resumes"]) == 1
    assert numbers(rec) == numbers(reference_run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_checkpoint_and_interrupted_record(sig, long_corpus, tmp_path, reference_run):
    results = tmp_path / "stopped"
    ckpt_path = checkpoint.default_path(results, "tiny", "loop_lstm", torch.device("cpu"), 7)
    proc = start(train_args(long_corpus, results, "--checkpoint-every", "0.003"))
    try:
        wait_for_mid_epoch_checkpoint(ckpt_path, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    rec = only_record(results)
    assert rec["status"] == "interrupted"
    ckpt = checkpoint.load(ckpt_path)
    assert ckpt["record"]["run_id"] == rec["run_id"]
    assert main(train_args(long_corpus, results, "--resume")) == 0
    resumed = only_record(results)  # the same run id: the interrupted record is replaced
    assert resumed["run_id"] == rec["run_id"] and resumed["status"] == "ok"
    assert numbers(resumed) == numbers(reference_run)


def test_divergence_is_reported_with_step_and_last_finite_loss(corpus_dir, tmp_path, capsys):
    results = tmp_path / "r"
    args = ["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet", "--learning-rate", "1e38", "--max-grad-norm", "1e38"]
    assert main(args) == 1
    err = without_heartbeats(capsys.readouterr().err)  # a run that fails late has said where it was
    assert "rnnbench: diverged: non-finite" in err and "at step" in err
    rec = only_record(results)
    assert rec["status"] == "diverged" and rec["diverged_at"]["step"] >= 1 and rec["diverged_at"]["epoch"] == 1


@pytest.mark.parametrize(("fake", "said"), [("OutOfMemoryLSTM", "Tried to allocate"),
                                           ("HostOutOfMemoryLSTM", "can't allocate memory")], ids=["cuda", "cpu"])
def test_out_of_memory_gets_status_oom_with_sizes(fake, said, corpus_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cells.REGISTRY, "oom_lstm", f"fake_cells:{fake}")
    corpus = data.load(corpus_dir, check_md5=False)
    rec = train.train(config.preset("tiny"), "oom_lstm", corpus, torch.device("cpu"), results_dir=tmp_path / "r",
                      progress=False)
    assert rec["status"] == "oom" and "traceback" not in rec
    assert "batch 4, 5 steps, hidden 16, 2 layers" in rec["error"] and said in rec["error"]
    assert only_record(tmp_path / "r")["status"] == "oom"
    assert "Traceback" not in capsys.readouterr().err


def test_divergence_found_by_evaluation_is_diverged_not_ok(corpus_dir, tmp_path, capsys):
    """Under clipping a huge learning rate can keep every training loss finite while the model's perplexity
    overflows: the run is diverged, not ok with an infinite perplexity."""
    results = tmp_path / "r"
    assert main(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
                 "--results", str(results), "--quiet", "--learning-rate", "1e30"]) == 1
    err = without_heartbeats(capsys.readouterr().err)
    assert "rnnbench: diverged: " in err and "perplexity inf" in err
    rec = only_record(results)
    assert rec["status"] == "diverged" and rec["diverged_at"]["what"] in ("validation perplexity", "loss",
                                                                           "gradient norm")


def test_resume_refuses_to_continue_as_another_run(corpus_dir, tmp_path, capsys):
    """A checkpoint resumes only as its own run: the same cell (not another of its kind, whose record would carry
    the first cell's time), seed, epoch length and evaluation; a finished run has nothing to resume, but more epochs
    do."""
    results = tmp_path / "r"
    base = ["train", "--config", "tiny", "--epochs", "1", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet", "--max-steps", "3", "--max-eval-words", "100"]
    assert main([*base, "--cell", "loop_lstm"]) == 0
    ckpt = str(checkpoint.default_path(results, "tiny", "loop_lstm", torch.device("cpu"), 0))
    resume = [*base, "--resume", "--checkpoint", ckpt]
    assert "is of a run with --cell loop_lstm; resume it with the same --cell" in one_line(
        [*resume, "--cell", "cudnn_lstm"], capsys)
    assert "is of a run with --seed 0" in one_line([*resume, "--cell", "loop_lstm", "--seed", "3"], capsys)
    assert "is of a run with --max-eval-words 100" in one_line(
        [*resume, "--cell", "loop_lstm", "--max-eval-words", "200"], capsys)
    assert "is of a run of 3 steps an epoch, this one would be 2" in one_line(
        [*resume, "--cell", "loop_lstm", "--max-steps", "2"], capsys)
    assert "is of a finished run of 1 epoch" in one_line([*resume, "--cell", "loop_lstm"], capsys)
    assert len(list((results / "runs").glob("*.json"))) == 1
    assert main([*resume, "--cell", "loop_lstm", "--epochs", "2"]) == 0
    rec = only_record(results)
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2] and rec["resumes"][0]["command"].endswith("--epochs 2")


def test_a_fresh_run_does_not_overwrite_a_stopped_run(corpus_dir, tmp_path, capsys):
    """The same command again, without --resume, would start over on the checkpoint of a run that was stopped
    part-way (interrupted, or killed before its record): refused; a finished run's checkpoint is overwritten."""
    results = tmp_path / "r"
    args = ["train", "--cell", "loop_lstm", "--config", "tiny", "--epochs", "1", "--data-dir", str(corpus_dir),
            "--no-verify", "--results", str(results), "--quiet", "--max-steps", "3"]
    assert main(args) == 0
    assert main(args) == 0  # finished: starting afresh is fine (a second run, a second record)
    assert len(list((results / "runs").glob("*.json"))) == 2
    for r in (results / "runs").glob("*.json"):
        r.unlink()  # as if killed before its record: the checkpoint holds a run that stopped
    err = one_line(args, capsys)
    assert "holds a run that stopped with no record" in err and "continue it with --resume" in err
    assert main([*args, "--resume"]) == 0


def test_deterministic_runs_repeat_exactly(corpus_dir):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", dropout=0.3)
    try:
        runs = [train.train(cfg, "cudnn_lstm", corpus, torch.device("cpu"), seed=11, results_dir=None,
                            progress=False, deterministic=True) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert runs[0]["deterministic"] and numbers(runs[0]) == numbers(runs[1])


def _write_records(results: str, worker: int, n: int) -> None:
    for i in range(n):
        records.write_run(results, {"run_id": f"w{worker}-{i}", "status": "ok", "cell": "loop_lstm",
                                    "config": {"name": "tiny"}, "env": {"device": "cpu"}, "epochs": [],
                                    "started": f"2026-01-01T00:00:{i:02d}"})


def test_concurrent_writers_lose_no_record_and_tear_no_table(tmp_path):
    results = records.ensure_writable(tmp_path / "r")
    ctx = multiprocessing.get_context("fork")  # the writers use no torch ops
    procs = [ctx.Process(target=_write_records, args=(str(results), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(list((results / "runs").glob("*.json"))) == 60
    import pandas as pd

    table = pd.read_csv(results / "train.csv")
    assert len(table) == 60 and set(table["run_id"]) == {f"w{w}-{i}" for w in range(4) for i in range(15)}
    assert not list(results.rglob("*.tmp"))


def test_checkpoint_of_one_lstm_cell_loads_into_another(corpus_dir, tmp_path):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    rec = train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), seed=2, results_dir=tmp_path / "r",
                      progress=False)
    state = checkpoint.load(rec["checkpoint"])["model"]
    for other in [n for n in cells.names() if cells.kind(n) == "LSTM" and n not in ("loop_lstm", "triton_lstm")]:
        model = LanguageModel(other, corpus.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.init_scale)
        model.load_state_dict(state)
        ppl = train.evaluate(model, corpus.valid, cfg.batch_size, cfg.num_steps, torch.device("cpu"), progress=False)
        assert ppl == pytest.approx(rec["epochs"][-1]["valid_ppl"], rel=1e-5), other


def one_line(args: list[str], capsys) -> str:
    capsys.readouterr()  # what earlier runs said (progress, heartbeats) is not this error
    assert main(args) == 2
    err = without_heartbeats(capsys.readouterr().err)  # a run that fails late has said where it was
    assert err.count("\n") == 1 and err.startswith("rnnbench: error: ") and "Traceback" not in err, err
    return err


def test_resume_refuses_another_config_or_kind(corpus_dir, tmp_path, capsys):
    results = tmp_path / "r"
    base = ["train", "--config", "tiny", "--epochs", "1", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet"]
    assert main([*base, "--cell", "loop_lstm"]) == 0
    ckpt = str(checkpoint.default_path(results, "tiny", "loop_lstm", torch.device("cpu"), 0))
    assert "from another config (hidden_size 16 vs 32" in one_line(
        [*base, "--cell", "loop_lstm", "--resume", "--checkpoint", ckpt, "--hidden-size", "32"], capsys)
    assert "holds a LSTM (loop_lstm); it cannot resume a GRU" in one_line(
        [*base, "--cell", "loop_gru", "--resume", "--checkpoint", ckpt], capsys)
    assert "no checkpoint at" in one_line([*base, "--cell", "cudnn_gru", "--resume"], capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_corrupt_checkpoint_is_one_line(damage, corpus_dir, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    if damage == "foreign":
        torch.save({"weights": torch.ones(2)}, path)
    else:
        corpus = data.load(corpus_dir, check_md5=False)
        rec = train.train(config.preset("tiny", epochs=1), "loop_lstm", corpus, torch.device("cpu"),
                          results_dir=None, checkpoint_path=path, progress=False)
        assert rec["status"] == "ok"
        raw = path.read_bytes()
        path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": os.urandom(len(raw)), "empty": b""}[damage])
    err = one_line(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
                    "--results", str(tmp_path / "r"), "--quiet", "--resume", "--checkpoint", str(path)], capsys)
    assert str(path) in err and ("corrupt or unreadable" in err or "not an rnnbench checkpoint" in err)


def test_full_results_folder_keeps_earlier_results(corpus_dir, tmp_path, capsys, monkeypatch):
    results = tmp_path / "r"
    args = ["train", "--cell", "loop_lstm", "--config", "tiny", "--epochs", "1", "--data-dir", str(corpus_dir),
            "--no-verify", "--results", str(results), "--quiet", "--checkpoint-every", "0"]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".md")}

    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 0 and not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    err = one_line(args, capsys)
    assert "No space left on device" in err
    monkeypatch.undo()
    for p, content in before.items():
        assert p.read_bytes() == content, f"{p} changed"
    assert not list(results.rglob("*.tmp"))


def test_resume_from_a_checkpoint_older_than_a_record_field(corpus_dir, tmp_path, capsys):
    """A checkpoint written before the record gained a field (here the compile-time fields) resumes with the field's
    default instead of failing at the first step."""
    results = tmp_path / "r"
    base = ["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet"]
    assert main([*base, "--epochs", "1"]) == 0
    path = checkpoint.default_path(results, "tiny", "loop_lstm", torch.device("cpu"), 0)
    ckpt = checkpoint.load(path)
    for key in ("compile_seconds", "compile_steps", "step_mode", "time_to_quality"):
        del ckpt["record"][key]
    torch.save(ckpt, path)
    assert main([*base, "--epochs", "2", "--resume"]) == 0, capsys.readouterr().err
    rec = json.loads(max((results / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert rec["status"] == "ok" and [e["epoch"] for e in rec["epochs"]] == [1, 2]
    assert rec["compile_seconds"] >= 0 and rec["step_mode"] == "eager"


def test_resume_refuses_fewer_epochs_than_trained_a_diverged_run_and_a_foreign_file(corpus_dir, tmp_path, capsys):
    """A checkpoint resumes with at least the epochs its model has trained into (else its record would claim fewer),
    not at all after its run diverged (it would again), and a fresh run does not overwrite a file that is no
    checkpoint; a checkpoint path that cannot be written is found before the first step."""
    results = tmp_path / "r"
    base = ["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet", "--max-steps", "3"]
    assert main([*base, "--epochs", "2"]) == 0
    assert "has trained into epoch 2; resume it with --epochs 2 or more" in one_line(
        [*base, "--epochs", "1", "--resume"], capsys)
    (path,) = (results / "runs").glob("*.json")  # as if that run had diverged after its last checkpoint
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "diverged", "error": "non-finite loss"}))
    assert "is of a run that diverged (non-finite loss); resuming repeats it" in one_line(
        [*base, "--epochs", "3", "--resume"], capsys)
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    assert "exists and is not an rnnbench checkpoint" in one_line([*base, "--checkpoint", str(precious)], capsys)
    assert precious.read_text() == "mine"
    assert "is a folder" in one_line([*base, "--checkpoint", str(tmp_path)], capsys)


def test_resume_with_seeds_checks_every_seed_first_and_a_record_says_if_any_session_was_not_deterministic(
        corpus_dir, tmp_path, capsys):
    results = tmp_path / "r"
    base = ["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(results), "--quiet", "--max-steps", "3"]
    try:
        assert main([*base, "--epochs", "1", "--deterministic"]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--seeds", "0,1", "--resume"]) == 2
    out, err = capsys.readouterr()
    assert "no checkpoint of seed 1 at" in err and "seed 0 (1 of 2)" not in out  # (nothing trained first)
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    rec = only_record(results)
    assert rec["deterministic"] is False and rec["resumes"][0]["deterministic"] is False
