"""``rnnbench sweep``: every cell in its own process; failures are recorded and do not stop the others."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import child, runs
from bench import sweep as sweep_mod
from bench.cli import main
from lm.errors import UsageError

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
        [sys.executable, "-m", "bench.cli", "sweep", "--cells", "crash_raise,crash_kill,absent,loop_lstm",
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
        [sys.executable, "-m", "bench.cli", "sweep", "--cells", "slow,loop_lstm", "--config", "tiny", "--epochs", "1",
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_jobs_run_side_by_side_and_ctrl_c_stops_them_all(corpus_dir, tmp_path, broken_env, sig):
    """--jobs 2: two runs train at once (their records overlap in time and say one thread each); Ctrl-C (or SIGTERM)
    asks both to checkpoint and stop -- handed on as the sweep got it --, both are recorded interrupted with a way to
    continue, the third never starts, exit 130."""
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "sweep", "--cells", "slow", "--seeds", "0,1,2", "--jobs", "2",
         "--config", "tiny", "--epochs", "1", "--device", "cpu", "--data-dir", str(corpus_dir), "--no-verify",
         "--results", str(results), "--no-measure", "--heartbeat", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=broken_env)
    training: set[str] = set()
    try:
        for line in proc.stderr:  # side by side, the runs pass on their heartbeats, each line naming its run
            if "phase train" in line and line.startswith("[slow tiny seed "):
                training.add(line.split("]", 1)[0])
                if len(training) == 2:
                    break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert training == {"[slow tiny seed 0", "[slow tiny seed 1"}, training
    assert proc.returncode == 130, out + err
    recs = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["seed"] for r in recs) == [0, 1], "the third run never starts"
    for r in recs:
        assert r["status"] == "interrupted" and "--resume" in r["error"] and sig.name in r["error"], r["error"]
        assert r["env"]["torch_threads"] == 1  # (CPU runs side by side: one thread each unless told)
        assert r["sweep"]["jobs"] == 2 and r["sweep"]["engine"] == "local"
    assert max(r["started"] for r in recs) <= min(r["finished"] for r in recs), "they trained at the same time"
    assert "sweep interrupted" in out


def test_jobs_spread_cuda_runs_over_the_gpus_fewest_runs_first(monkeypatch, tmp_path):
    """--jobs with --device cuda on a machine of several GPUs: each run starts on the GPU with the fewest runs under
    way (as the Ray engine gives each its own); on one GPU, or a named one, every run takes the device as given."""
    import threading

    gate, lock, seen = threading.Barrier(3), threading.Lock(), []

    def fake_execute(spec, opts, handle_signals=True, stop=None):
        with lock:
            seen.append((spec.seed, opts.device))
        if spec.seed < 3:
            gate.wait(timeout=10)  # the first three run at once
        rec = runs.base_record(spec, opts, torch.device("cpu"), ["rnnbench"])
        return runs.Outcome(spec, "ok", None, rec)

    monkeypatch.setattr(runs, "execute", fake_execute)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert sweep_mod.spread_over("cuda") == ["cuda:0", "cuda:1"]
    assert sweep_mod.spread_over("cuda:1") == ["cuda:1"] and sweep_mod.spread_over("cpu") == ["cpu"]
    opts = runs.Options(results=str(tmp_path / "r"), checkpoints=str(tmp_path / "c"), sweep_id="s", device="cuda",
                        jobs=3)
    specs = sweep_mod.plan(["tiny"], ["loop_lstm"], [0, 1, 2, 3])
    outcomes, stopped = sweep_mod.run_parallel(specs, opts)
    assert not stopped and sorted(o.spec.seed for o in outcomes) == [0, 1, 2, 3]
    first = sorted(d for s, d in seen if s < 3)
    assert first in (["cuda:0", "cuda:0", "cuda:1"], ["cuda:0", "cuda:1", "cuda:1"])  # (both used, neither thrice)


def test_jobs_are_for_the_local_engine(corpus_dir, tmp_path, capsys):
    for bad, says in ((["--jobs", "0"], "--jobs must be 1 to 64, got 0"),
                      (["--jobs", "2", "--engine", "ray"], "--jobs is for the local engine")):
        rc = main(["sweep", "--cells", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
                   "--device", "cpu", "--results", str(tmp_path / "r"), *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and says in err, (bad, err)
        assert not (tmp_path / "r").exists(), bad


TESTS = Path(__file__).resolve().parent
FAKE_CELLS_ENV = {"RNNBENCH_EXTRA_CELLS": "hang=fake_cells:HangingLSTM",
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def test_a_run_past_the_cell_timeout_is_ended_recorded_and_the_sweep_goes_on(corpus_dir, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "sweep", "--cells", "hang,loop_lstm", "--config", "tiny", "--epochs", "1",
         "--max-steps", "2", "--device", "cpu", "--data-dir", str(corpus_dir), "--no-verify", "--results",
         str(results), "--quiet", "--cell-timeout", "12", "--kill-grace", "1", "--heartbeat", "0.5"],
        capture_output=True, text=True, env={**os.environ, **FAKE_CELLS_ENV}, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = _records(results)
    hang = recs["hang"]
    assert hang["status"] == "timeout", proc.stdout + proc.stderr
    # Asked to stop after its step (SIGTERM), it never finished the step: SIGKILL a grace period later.
    assert "--cell-timeout 12 s" in hang["error"] and "SIGKILL" in hang["error"] and hang["exit_code"] == -9
    # Where it was: the last heartbeat, in the record and in the reason.
    assert "phase train | epoch 1/1 | step 0/2" in hang["last_heartbeat"], hang["last_heartbeat"]
    assert hang["last_heartbeat"] in hang["error"] and "heartbeat" in hang["stderr_tail"]
    assert hang["config"]["name"] == "tiny" and hang["env"]["device"] == "cpu"
    # The sweep went on; with --quiet it still passed the heartbeats on, naming the run.
    assert recs["loop_lstm"]["status"] == "ok", recs["loop_lstm"]["error"]
    assert "[hang tiny seed 0] rnnbench heartbeat: tiny hang cpu | phase train" in proc.stderr
    assert "timeout" in proc.stdout.split("FAILED", 1)[1]


@pytest.mark.parametrize(("handler", "ended_with", "rc"), [
    ("signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))", "SIGTERM", 143),
    ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", "SIGKILL", -9),
], ids=["stops-on-sigterm", "ignores-sigterm"])
def test_ending_a_child_sigterm_first_then_sigkill(handler, ended_with, rc):
    code = (f"import signal, sys, time; {handler}; "
            "print('rnnbench heartbeat: where I was', file=sys.stderr, flush=True); "
            "print('some later output', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    res = child.run([sys.executable, "-c", code], echo="none", timeout=1.5, grace=0.5, handle_signals=False)
    assert time.monotonic() - t0 < 10
    assert res.timed_out and res.ended_with == ended_with and res.returncode == rc
    assert res.last_heartbeat == "where I was" and "some later output" in res.stderr_tail


def _args(**kw) -> argparse.Namespace:
    base = dict(cells="all", config="tiny", epochs=1, device="cpu", dtype="float32", fp32_matmul="ieee", seed=0,
                seeds=None,
                data_dir=None, no_verify=True, results="results", max_steps=2, quiet=True, threads=None,
                engine="local", ray_address=None, cell_timeout=None, kill_grace=30.0, heartbeat=10.0,
                checkpoint_every=None, checkpoint_dir=None, steps="eager", max_eval_words=None, no_measure=False)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize(("cells", "statuses", "expected"), [
    ("all", {"cudnn_lstm": "unavailable"}, 0),  # `all` means every cell that can train here
    ("cudnn_lstm,loop_lstm", {"cudnn_lstm": "unavailable"}, 1),  # a cell asked for by name must train
    ("all", {"loop_gru": "diverged"}, 1),
    ("all", {"loop_gru": "oom"}, 1),
    ("all", {"loop_gru": "timeout"}, 1),
    ("all", {}, 0),
], ids=["all-unavailable", "named-unavailable", "diverged", "oom", "timeout", "all-ok"])
def test_exit_status_says_whether_anything_failed(monkeypatch, corpus_dir, tmp_path, capsys, cells, statuses,
                                                  expected):
    ran = []

    def fake_execute(spec, opts):
        ran.append(spec.cell)
        status = statuses.get(spec.cell, "ok")
        rec = runs.base_record(spec, opts, torch.device("cpu"), ["rnnbench", "train"])
        return runs.Outcome(spec, status, None if status == "ok" else f"{spec.cell} was {status}", rec)

    monkeypatch.setattr(runs, "execute", fake_execute)
    monkeypatch.setattr(sweep_mod, "measure_machine", lambda opts: None)
    rc = sweep_mod.sweep(_args(cells=cells, data_dir=str(corpus_dir), results=str(tmp_path / "r")))
    assert rc == expected
    out = capsys.readouterr().out
    assert ran == sweep_mod.parse_cells(cells)  # one failure does not stop the rest
    for cell, status in statuses.items():
        assert f"{cell} was {status}" in out


def test_the_sweep_is_presets_times_seeds_times_cells():
    specs = sweep_mod.plan(["tiny", "small"], ["loop_lstm", "loop_gru"], [0, 1])
    assert len(specs) == 8 and len(set(specs)) == 8
    assert [str(s) for s in specs[:3]] == ["loop_lstm tiny seed 0", "loop_gru tiny seed 0", "loop_lstm tiny seed 1"]
    assert specs[0].train_flags() == ["--cell", "loop_lstm", "--config", "tiny", "--seed", "0"]
    modes = sweep_mod.plan(["tiny"], ["loop_lstm"], [0], sweep_mod.parse_modes("eager,compile"))
    assert [s.mode for s in modes] == ["eager", "compile"] and modes[1].slug == "tiny-loop_lstm-compile-seed0"
    assert modes[1].train_flags()[-2:] == ["--step", "compile"]
    with pytest.raises(UsageError, match="give one or more of eager, compile, cuda-graph"):
        sweep_mod.parse_modes("eager,turbo")


def test_unknown_cell_is_one_line_exit_2(corpus_dir, tmp_path, capsys):
    rc = main(["sweep", "--cells", "loop_lstm,nope", "--config", "tiny", "--data-dir", str(corpus_dir),
               "--no-verify", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "nope" in err and "loop_lstm" in err  # names the bad cell and lists the known ones
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").iterdir())


@pytest.mark.parametrize("bad", [["--seeds", "0,x"], ["--seeds", "1,1"], ["--seed", "1", "--seeds", "2,3"],
                                 ["--threads", "0"], ["--cell-timeout", "0"], ["--config", "tiny,nope"]],
                         ids=["seeds-not-int", "seeds-repeated", "seed-and-seeds", "threads-0", "timeout-0",
                              "bad-preset"])
def test_bad_sweep_options_are_one_line_exit_2(corpus_dir, tmp_path, capsys, bad):
    args = ["sweep", "--cells", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(tmp_path / "r"), *bad]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "r" / "runs").glob("*.json"))


def test_options_that_would_fail_every_run_are_refused_up_front(corpus_dir, tmp_path, capsys):
    """Non-finite intervals, cuda-graph steps on the CPU (as `rnnbench train` refuses them), a --checkpoint-dir that is
    a file, --ray-address without the Ray engine and a --max-eval-words too small for a preset's windows: one line,
    exit 2, before any run, and nothing written."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, says in ((["--heartbeat", "inf"], "--heartbeat must be a finite number >= 0"),
                      (["--checkpoint-every", "inf"], "--checkpoint-every must be a finite number >= 0"),
                      (["--steps", "eager,cuda-graph"], "--steps cuda-graph needs a CUDA device"),
                      (["--checkpoint-dir", str(afile)], f"--checkpoint-dir {afile} is not writable"),
                      (["--checkpoint-dir", str(afile / "sub")], "is not a folder"),
                      (["--ray-address", "auto"], "--ray-address goes with --engine ray"),
                      # (a stream too short for a preset's windows: every run would fail after loading the data)
                      (["--max-eval-words", "2"], "preset tiny: the validation stream's 3 tokens (--max-eval-words 2) "
                                                  "are too few")):
        rc = main(["sweep", "--cells", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
                   "--device", "cpu", "--results", str(tmp_path / "r"), *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and says in err, (bad, err)
        assert not (tmp_path / "r").exists(), bad


def test_a_sweep_leaves_no_empty_checkpoint_folder_behind(monkeypatch, corpus_dir, tmp_path):
    def fake_execute(spec, opts):
        runs.checkpoint_file(spec, opts)  # as a run does: it makes the sweep's checkpoint folder
        return runs.Outcome(spec, "ok", None, runs.base_record(spec, opts, torch.device("cpu"), ["rnnbench"]))

    monkeypatch.setattr(runs, "execute", fake_execute)
    monkeypatch.setattr(sweep_mod, "measure_machine", lambda opts: None)
    args = dict(cells="loop_lstm", data_dir=str(corpus_dir), results=str(tmp_path / "r"))
    assert sweep_mod.sweep(_args(**args)) == 0
    assert (tmp_path / "r" / "runs").is_dir() and not (tmp_path / "r" / "checkpoints").exists()
    mine = tmp_path / "mine"  # a --checkpoint-dir of the user's is kept; one the sweep made is not
    mine.mkdir()
    assert sweep_mod.sweep(_args(**args, checkpoint_dir=str(mine))) == 0
    assert mine.is_dir() and not list(mine.iterdir())
    assert sweep_mod.sweep(_args(**args, checkpoint_dir=str(tmp_path / "made"))) == 0
    assert not (tmp_path / "made").exists()


def test_engine_ray_places_runs_on_gpus_itself(tmp_path, capsys):
    rc = main(["sweep", "--engine", "ray", "--cells", "loop_lstm", "--config", "tiny", "--device", "cuda:1",
               "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--device cuda" in err, err


def test_engine_ray_without_ray_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on the GPU machine, which has no Ray
    rc = main(["sweep", "--engine", "ray", "--cells", "loop_lstm", "--config", "tiny", "--results",
               str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "needs Ray" in err, err


def test_the_local_engine_never_imports_ray(corpus_dir, tmp_path, broken_env):
    code = ("import sys; from bench.cli import main; "
            f"rc = main(['sweep', '--cells', 'absent', '--config', 'tiny', '--data-dir', {str(corpus_dir)!r}, "
            f"'--no-verify', '--results', {str(tmp_path / 'r')!r}, '--device', 'cpu']); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=broken_env, timeout=120)
    assert proc.returncode == 1 and "unavailable" in proc.stdout, proc.stdout + proc.stderr


def test_no_measure_leaves_the_machine_folder_alone(corpus_dir, tmp_path):
    # triton_lstm does not train on the CPU (the interpreter): an `unavailable` record, no training process
    base = ["sweep", "--cells", "triton_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
            "--device", "cpu"]
    assert main([*base, "--results", str(tmp_path / "a"), "--no-measure"]) == 1
    assert not (tmp_path / "a" / "machine").exists()
    assert main([*base, "--results", str(tmp_path / "b")]) == 1
    assert list((tmp_path / "b" / "machine").glob("*.json"))


def test_bad_data_dir_fails_before_any_cell_runs(tmp_path, capsys):
    rc = main(["sweep", "--cells", "loop_lstm", "--config", "tiny", "--data-dir", str(tmp_path / "missing"),
               "--results", str(tmp_path / "r")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not list((tmp_path / "r" / "runs").glob("*.json"))


def test_child_command_passes_the_arguments_through():
    opts = runs.Options(results="out", checkpoints="ck", sweep_id="s", epochs=3, max_steps=5, data_dir="/data/ptb",
                        device="cuda:1", threads=2, heartbeat=0.5, checkpoint_every=1.5, max_eval_words=4096)
    assert runs.train_args(runs.RunSpec("tiny", "loop_gru", 7), opts, checkpoint="ck/x.pt") == [
        "train", "--cell", "loop_gru", "--config", "tiny", "--seed", "7", "--device", "cuda:1", "--results", "out",
        "--dtype", "float32", "--fp32-matmul", "ieee", "--epochs", "3", "--max-steps", "5", "--max-eval-words", "4096",
        "--data-dir", "/data/ptb", "--threads", "2",
        "--checkpoint", "ck/x.pt", "--checkpoint-every", "1.5", "--heartbeat", "0.5"]
