"""Training lowers the loss; the CLI writes a valid record; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cells
from bench.cli import main
from lm import config, data, train
from lm.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=full_env, timeout=300)


def test_presets_are_the_papers():
    s, m, large = (config.PRESETS[n] for n in ("small", "medium", "large"))
    assert (s.num_layers, s.hidden_size, s.num_steps, s.batch_size, s.init_scale, s.learning_rate,
            s.max_grad_norm, s.dropout, s.decay_after, s.lr_decay, s.epochs) == (2, 200, 20, 20, 0.1, 1.0, 5, 0.0,
                                                                                4, 0.5, 13)
    assert (m.hidden_size, m.num_steps, m.init_scale, m.max_grad_norm, m.dropout, m.decay_after, m.lr_decay,
            m.epochs) == (650, 35, 0.05, 5, 0.5, 6, 0.8, 39)
    assert (large.hidden_size, large.num_steps, large.init_scale, large.max_grad_norm, large.dropout,
            large.decay_after, large.epochs) == (1500, 35, 0.04, 10, pytest.approx(0.65), 14, 55)
    assert large.lr_decay == pytest.approx(1 / 1.15)
    assert [s.lr_at(e) for e in (1, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize("cell", ["cudnn_lstm", "cudnn_gru", "loop_gru"])  # (min_*: tests/test_minimal.py)
def test_tiny_training_lowers_the_loss(cell, corpus_dir):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=3)
    rec = train.train(cfg, cell, corpus, torch.device("cpu"), seed=1, results_dir=None, progress=False)
    assert rec["status"] == "ok", rec["error"]
    ppl = [e["train_ppl"] for e in rec["epochs"]]
    valid = [e["valid_ppl"] for e in rec["epochs"]]
    assert ppl[-1] < ppl[0] and valid[-1] < valid[0]
    assert valid[-1] < 4, "learns the toy grammar (unigram perplexity is about 24)"
    assert rec["test_ppl"] > 1 and rec["words_per_sec"] > 0 and rec["peak_memory_bytes"] > 0
    # (the tiny GRU's first epoch has windows past twice the vocabulary, up to ~140 over 29 words: lr 1 spikes)
    assert all(e["train_max_window_ppl"] >= e["train_ppl"] for e in rec["epochs"])
    assert rec["epochs"][-1]["train_spikes"] == 0


def test_window_spikes_count_windows_past_twice_the_vocabulary_and_carry_over():
    spikes = train.WindowSpikes(vocab_size=100)  # bound: perplexity 200
    spikes.add([])
    assert spikes.fields() == {"train_spikes": 0, "train_max_window_ppl": None}
    spikes.add([math.log(150), math.log(250)])
    spikes.add([math.log(1e5), math.log(3)])
    again = train.WindowSpikes(vocab_size=100)
    again.restore(spikes.state())
    again.restore(None)  # a checkpoint from before the count: nothing to carry
    for s in (spikes, again):
        assert s.fields()["train_spikes"] == 2 and s.fields()["train_max_window_ppl"] == pytest.approx(1e5)


def test_training_that_spikes_in_its_last_epoch_says_so(corpus_dir, tmp_path, capsys):
    """The tiny GRU's one epoch at learning rate 1 passes twice its 29-word vocabulary in some windows: the command
    ends with a note on stderr, and the run's row in train.csv counts them; a calm run (last epoch) has no note."""
    import pandas as pd

    args = ["train", "--cell", "loop_gru", "--config", "tiny", "--device", "cpu", "--seed", "1", "--data-dir",
            str(corpus_dir), "--no-verify", "--results", str(tmp_path), "--quiet", "--heartbeat", "0"]
    assert main([*args, "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "training window(s) of the last epoch scored worse than twice a uniform guess" in err, err
    assert pd.read_csv(tmp_path / "train.csv")["spikes"].tolist() == [7]
    assert main([*args, "--epochs", "3"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_same_seed_same_numbers(corpus_dir):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    a, b = (train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), seed=3, results_dir=None, progress=False)
            for _ in range(2))
    assert a["epochs"][0]["valid_ppl"] == b["epochs"][0]["valid_ppl"]


def test_cli_end_to_end_writes_a_valid_record(corpus_dir, tmp_path):
    results = tmp_path / "results"
    r = cli("train", "--cell", "loop_lstm", "--config", "tiny", "--device", "cpu", "--seed", "5", "--epochs", "2",
            "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results), "--quiet")
    assert r.returncode == 0, r.stderr
    (path,) = (results / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["cell"] == "loop_lstm" and rec["kind"] == "LSTM"
    assert rec["config"]["name"] == "tiny" and rec["config"]["epochs"] == 2 and rec["seed"] == 5
    assert rec["backend"].startswith("PyTorch eager loop")
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    for key in ("train_ppl", "valid_ppl", "words_per_sec", "lr"):
        assert all(e[key] > 0 for e in rec["epochs"])
    assert rec["test_ppl"] > 1 and rec["words_per_sec"] > 0 and rec["peak_memory_bytes"] > 0
    assert rec["wall_seconds"] > 0 and rec["command"].startswith("rnnbench train --cell loop_lstm")
    env = rec["env"]
    assert env["device"] == "cpu" and env["device_name"] and env["torch"] == torch.__version__ and env["commit"]
    assert env["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()  # (which machine session)
    table = (results / "train.csv").read_text().splitlines()
    assert len(table) == 2 and "loop_lstm" in table[1] and ",spikes," in table[0]
    assert "loop_lstm" in (results / "train.md").read_text()
    assert not list(results.rglob("*.tmp"))


def test_cli_cells_lists_every_cell(capsys):
    assert main(["cells", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in cells.names():
        assert name in out


BAD = [
    (["--cell", "nope"], "unknown cell 'nope'; known cells: cudnn_lstm"),
    (["--cell", "loop_lstm", "--config", "huge"], "unknown config 'huge'; known configs: small, medium, large, tiny"),
    (["--cell", "loop_lstm", "--hidden-size", "0"], "hidden_size must be a positive integer"),
    (["--cell", "loop_lstm", "--num-layers", "-2"], "num_layers must be a positive integer"),
    (["--cell", "loop_lstm", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["--cell", "loop_lstm", "--dropout", "1.5"], r"dropout must be in \[0, 1\)"),
    (["--cell", "loop_lstm", "--max-steps", "0"], "--max-steps must be a positive integer"),
    (["--cell", "loop_lstm", "--data-dir", "/nonexistent/ptb"], "data folder /nonexistent/ptb does not exist"),
    (["--cell", "loop_lstm", "--heartbeat", "-1"], r"--heartbeat must be 0 to 86400 seconds \(0: none\), got -1.0"),
    (["--cell", "loop_lstm", "--heartbeat", "1e10"], r"--heartbeat must be 0 to 86400 seconds"),  # (its thread died)
    (["--cell", "loop_lstm", "--checkpoint", "/proc/x.pt"], r"checkpoint folder /proc is not writable"),
    (["--cell", "loop_lstm", "--checkpoint-every", "nan"], "--checkpoint-every must be >= 0 minutes, got nan"),
    (["--cell", "loop_lstm", "--device", "cpu", "--fp32-matmul", "tf32"],
     "--fp32-matmul tf32 is for CUDA: TF32 is a tensor-core format, and float32 matmuls on the CPU are exact"),
    (["--cell", "loop_lstm", "--dtype", "bfloat16", "--fp32-matmul", "tf32"],
     "--fp32-matmul tf32 is for float32 runs; a bfloat16 run's matmuls take its own dtype"),
    # found before the first step, not after the training: each stream at the sizes it is read with
    (["--cell", "loop_lstm", "--test-batch-size", "100000"],
     r"the test stream's \d+ tokens are too few for batch 100000 x \d+ steps .*lower --test-batch-size"),
    (["--cell", "loop_lstm", "--max-eval-words", "20", "--batch-size", "4"],
     r"the validation stream's 21 tokens \(--max-eval-words 20\) are too few for batch 4 x"),
]
if not torch.cuda.is_available():
    BAD.append((["--cell", "loop_lstm", "--device", "cuda"], "CUDA is not available here; accepted: cpu"))


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[2:]) or a[1] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, corpus_dir, tmp_path, capsys):
    results = tmp_path / "results"
    extra = [] if "--data-dir" in args else ["--data-dir", str(corpus_dir), "--no-verify"]
    preset = [] if "--config" in args else ["--config", "tiny"]
    assert main(["train", *preset, *args, *extra, "--results", str(results), "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnbench: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not results.exists(), "refused before anything is created"


@pytest.mark.parametrize(("argv", "line"), [
    (["train", "--cell", "loop_lstm", "--resume", "ckpt.pt"],
     "rnnbench: error: rnnbench train: unrecognized arguments: ckpt.pt (see rnnbench train --help)"),
    (["report", "--bogus"], "rnnbench: error: rnnbench report: unrecognized arguments: --bogus (see rnnbench report "
                            "--help)"),
    (["bogus"], "rnnbench: error: argument COMMAND: invalid choice: 'bogus' (choose from 'train', 'cells', 'sweep', "
                "'report') (see rnnbench --help)"),
], ids=["train", "report", "command"])
def test_an_unknown_argument_is_named_by_its_command(argv, line, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], r"argument --seed: expected an integer from 0 to 2\*\*63 - 1, got '-1'"),
    (["--seed", "99999999999999999999"], "argument --seed: expected an integer from 0"),  # (torch's limit)
    (["--seeds", "0,99999999999999999999"], "--seeds takes distinct non-negative integers"),
    (["--data-dir", ""], "argument --data-dir: expected a path, got an empty string"),  # (not $PTB_DIR's, silently)
    (["--checkpoint", " "], "argument --checkpoint: expected a path, got an empty string"),
    (["--results", ""], "argument --results: expected a path, got an empty string"),  # (not the current folder)
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_option_value_is_one_line_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--cell", "loop_lstm", "--config", "tiny", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
    assert not any(tmp_path.iterdir())


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    r = cli("train", "--cell", "nope", "--results", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["rnnbench: error: unknown cell 'nope'; known cells: "
                                             + ", ".join(cells.names())]


def without_heartbeats(text: str) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("rnnbench heartbeat: "))


def one_line_error(argv, capsys) -> str:
    capsys.readouterr()  # what earlier runs said (progress, heartbeats) is not this error
    assert main(argv) == 2
    err = without_heartbeats(capsys.readouterr().err)  # a run that fails late has said where it was
    assert err.count("\n") == 1 and err.startswith("rnnbench: error: "), err
    return err


def test_corrupt_data_file_is_one_line(corpus_dir, tmp_path, capsys):
    (corpus_dir / "ptb.train.txt").write_bytes(b"\x00\x01binary")
    err = one_line_error(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir),
                          "--no-verify", "--results", str(tmp_path / "r"), "--quiet"], capsys)
    assert "looks binary" in err


def test_checksum_mismatch_is_one_line(corpus_dir, tmp_path, capsys):
    err = one_line_error(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir),
                          "--results", str(tmp_path / "r"), "--quiet"], capsys)
    assert "wrong MD5 checksum" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_results_folder(corpus_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = cli("train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(ro / "results"), "--quiet")
    assert r.returncode == 2 and "not writable" in r.stderr


def test_results_path_that_is_a_file(corpus_dir, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    err = one_line_error(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir),
                          "--no-verify", "--results", str(blocker), "--quiet"], capsys)
    assert "not writable" in err
    assert blocker.read_text() == "a file, not a folder"


def test_unknown_config_field_is_refused():
    with pytest.raises(UsageError, match="unknown config field"):
        config.preset("small", hidden=3)


def test_lm_builds_on_nothing_of_bench():
    """``bench`` (sweeps, report, the ``rnnbench`` command) builds on ``lm``; ``lm`` imports nothing of ``bench``
    (two packages importing each other would be one package)."""
    code = ("import pkgutil, importlib, sys, lm; "
            "[importlib.import_module(f'lm.{m.name}') for m in pkgutil.iter_modules(lm.__path__)]; "
            "print(sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_a_reader_that_goes_away_gets_no_traceback():
    """`rnnbench cells | head -1`: the closed pipe ends the command quietly (exit 141, as for SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "cells", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
