"""``rnnbench sweep``: every cell in its own process; failures are recorded and do not stop the others."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import sweep as sweep_mod
from lm.cli import main

# Cells that fail in the ways a real one can: an exception inside training, a process killed from outside
# (as the out-of-memory killer does), and a cell that cannot run on this machine.
BROKEN_CELLS = '''
import os
import signal
import sys
import time

from cells.loop import LoopLSTM


class RaisingLSTM(LoopLSTM):
    def layer(self, k, x, state):
        raise RuntimeError("deliberate failure inside the forward pass")


class KilledLSTM(LoopLSTM):
    def layer(self, k, x, state):
        sys.stderr.write("KilledLSTM: about to be killed\\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class SlowLSTM(LoopLSTM):
    def layer(self, k, x, state):
        if not getattr(SlowLSTM, "said", False):
            SlowLSTM.said = True
            sys.stderr.write("SlowLSTM: training started\\n")
            sys.stderr.flush()
        time.sleep(0.05)
        return super().layer(k, x, state)


class AbsentLSTM(LoopLSTM):
    @staticmethod
    def available(device):
        return "needs an accelerator this test machine does not have"
'''
EXTRA = ("crash_raise=brokencells:RaisingLSTM,crash_kill=brokencells:KilledLSTM,absent=brokencells:AbsentLSTM,"
         "slow=brokencells:SlowLSTM")


@pytest.fixture
def broken_env(tmp_path: Path) -> dict:
    """The environment for a sweep that knows the broken cells above."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "brokencells.py").write_text(BROKEN_CELLS)
    return {**os.environ, "RNNBENCH_EXTRA_CELLS": EXTRA,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "mods"), os.environ.get("PYTHONPATH")]))}


def _records(results: Path) -> dict[str, dict]:
    out = {}
    for p in (results / "runs").glob("*.json"):
        rec = json.loads(p.read_text())
        out[rec["cell"]] = rec
    return out


def test_one_failure_cannot_take_the_others_down(corpus_dir, tmp_path, broken_env):
    env = broken_env
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "lm.cli", "sweep", "--cells", "crash_raise,crash_kill,absent,loop_lstm",
         "--config", "tiny", "--epochs", "1", "--max-steps", "3", "--device", "cpu", "--data-dir", str(corpus_dir),
         "--no-verify", "--results", str(results), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = _records(results)
    assert set(recs) == {"crash_raise", "crash_kill", "absent", "loop_lstm"}

    # The cell after the failures trained normally, in its own process.
    assert recs["loop_lstm"]["status"] == "ok"
    assert recs["loop_lstm"]["test_ppl"] > 0 and recs["loop_lstm"]["peak_memory_bytes"] > 0

    # An exception inside training: the child recorded it itself.
    assert recs["crash_raise"]["status"] == "failed"
    assert "deliberate failure inside the forward pass" in recs["crash_raise"]["error"]

    # A killed child wrote nothing: the sweep wrote the record, with the signal and the stderr tail.
    killed = recs["crash_kill"]
    assert killed["status"] == "failed"
    assert killed["exit_code"] == -9 and "SIGKILL" in killed["error"]
    assert "about to be killed" in killed["stderr_tail"]
    assert killed["config"]["name"] == "tiny" and killed["env"]["device"] == "cpu"  # lm.train.new_record's layout

    # A cell that cannot run here: recorded as unavailable with the reason, no process started.
    assert recs["absent"]["status"] == "unavailable"
    assert "needs an accelerator" in recs["absent"]["error"]

    # The summary names every cell and what failed; the train tables list all four runs.
    assert "FAILED" in proc.stdout
    for cell in ("crash_raise", "crash_kill", "absent"):
        assert cell in proc.stdout.split("FAILED", 1)[1]
    assert "loop_lstm" in proc.stdout
    assert (results / "train.csv").read_text().count("\n") == 5
    assert list((results / "machine").glob("*.json")), "the matmul rate was measured for the report"


def test_ctrl_c_stops_the_running_cell_cleanly_and_the_sweep(corpus_dir, tmp_path, broken_env):
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm.cli", "sweep", "--cells", "slow,loop_lstm", "--config", "tiny", "--epochs", "1",
         "--device", "cpu", "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=broken_env)
    try:
        for line in proc.stderr:  # the sweep passes the child's stderr through
            if "SlowLSTM: training started" in line:
                break
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the sweep
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    recs = _records(results)
    assert set(recs) == {"slow"}, "the sweep stops: the next cell does not start"
    assert recs["slow"]["status"] == "interrupted" and "SIGINT" in recs["slow"]["error"]
    assert "interrupted" in out


def _args(**kw) -> argparse.Namespace:
    base = dict(cells="all", config="tiny", epochs=1, device="cpu", dtype="float32", seed=0, data_dir=None,
                no_verify=True, results="results", max_steps=2, quiet=True)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize(("cells", "statuses", "expected"), [
    ("all", {"cudnn_lstm": "unavailable"}, 0),  # `all` means every cell that can train here
    ("cudnn_lstm,loop_lstm", {"cudnn_lstm": "unavailable"}, 1),  # a cell asked for by name must train
    ("all", {"loop_gru": "diverged"}, 1),
    ("all", {"loop_gru": "oom"}, 1),
    ("all", {}, 0),
], ids=["all-unavailable", "named-unavailable", "diverged", "oom", "all-ok"])
def test_exit_status_says_whether_anything_failed(monkeypatch, corpus_dir, tmp_path, capsys, cells, statuses,
                                                  expected):
    ran = []

    def fake_run_cell(cell, args, cfg, device):
        ran.append(cell)
        status = statuses.get(cell, "ok")
        return sweep_mod.Outcome(cell, status, None if status == "ok" else f"{cell} was {status}")

    monkeypatch.setattr(sweep_mod, "run_cell", fake_run_cell)
    monkeypatch.setattr(sweep_mod, "_measure_machine", lambda args: None)
    rc = sweep_mod.sweep(_args(cells=cells, data_dir=str(corpus_dir), results=str(tmp_path / "r")))
    assert rc == expected
    out = capsys.readouterr().out
    assert ran == sweep_mod.parse_cells(cells)  # one failure does not stop the rest
    for cell, status in statuses.items():
        assert f"{cell} was {status}" in out


def test_unknown_cell_is_one_line_exit_2(corpus_dir, tmp_path, capsys):
    rc = main(["sweep", "--cells", "loop_lstm,nope", "--config", "tiny", "--data-dir", str(corpus_dir),
               "--no-verify", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "nope" in err and "loop_lstm" in err  # names the bad cell and lists the known ones
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").iterdir())


def test_bad_data_dir_fails_before_any_cell_runs(tmp_path, capsys):
    rc = main(["sweep", "--cells", "loop_lstm", "--config", "tiny", "--data-dir", str(tmp_path / "missing"),
               "--results", str(tmp_path / "r")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not list((tmp_path / "r" / "runs").glob("*.json"))


def test_child_command_passes_the_arguments_through():
    args = _args(epochs=3, max_steps=5, data_dir="/data/ptb", results="out", seed=7, device="cuda:1")
    assert sweep_mod.train_args("loop_gru", args) == [
        "train", "--cell", "loop_gru", "--config", "tiny", "--device", "cuda:1", "--results", "out", "--seed", "7",
        "--dtype", "float32", "--epochs", "3", "--max-steps", "5", "--data-dir", "/data/ptb", "--no-verify",
        "--quiet"]
