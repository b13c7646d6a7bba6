"""``rnnbench sweep --engine ray`` on a local Ray cluster (2 CPUs) started for this module, shut down after it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import cells
from bench.cli import main

# The README's install brings Ray, and CI requires it (RNNBENCH_REQUIRE_RAY=1); the GPU machine has none, so there
# these tests skip rather than break the collection of the whole suite.
if os.environ.get("RNNBENCH_REQUIRE_RAY") == "1":
    import ray
else:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

TESTS = Path(__file__).resolve().parent
PLANTED = {"slow": "fake_cells:MarkedSlowLSTM", "hang": "fake_cells:HangingLSTM", "crash": "fake_cells:CrashingLSTM"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One two-CPU Ray cluster for this module's tests (starting one costs ~6 s of CI), whose workers know the planted
    cells; yields the folder where the planted cells leave their markers.  Shut down after the module."""
    markers = tmp_path_factory.mktemp("markers")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RNNBENCH_EXTRA_CELLS", ",".join(f"{k}={v}" for k, v in PLANTED.items()))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        mp.setenv("RNNBENCH_TEST_MARKERS", str(markers))
        for name, target in PLANTED.items():
            mp.setitem(cells.REGISTRY, name, target)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield markers
        finally:
            ray.shutdown()


def sweep_args(corpus: Path, results: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", "tiny", "--device", "cpu", "--threads", "1", "--data-dir", str(corpus),
            "--no-verify", "--results", str(results), "--quiet", *extra]


def by_run(results: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for p in (results / "runs").glob("*.json"):
        rec = json.loads(p.read_text())
        assert (rec["cell"], rec["seed"]) not in out, "one record per run"
        out[rec["cell"], rec["seed"]] = rec
    return out


def perplexities(rec: dict) -> list:
    return [(e["train_ppl"], e["valid_ppl"]) for e in rec["epochs"]] + [rec["test_ppl"]]


def test_ray_sweep_gives_the_local_engines_perplexities(ray_cluster, corpus_dir, tmp_path):
    # (one cell, two seeds: each run is a process start, ~5 s of CI; the engine does not care which cell)
    runs = ["--cells", "loop_lstm", "--seeds", "0,1", "--epochs", "1", "--max-steps", "3"]
    assert main(sweep_args(corpus_dir, tmp_path / "local", *runs)) == 0
    assert main(sweep_args(corpus_dir, tmp_path / "ray", *runs, "--engine", "ray")) == 0
    local, on_ray = by_run(tmp_path / "local"), by_run(tmp_path / "ray")
    assert set(local) == set(on_ray) == {("loop_lstm", 0), ("loop_lstm", 1)}
    for key, rec in on_ray.items():
        assert rec["status"] == "ok" and rec["sweep"]["engine"] == "ray" and rec["sweep"]["attempt"] == 1
        assert perplexities(rec) == perplexities(local[key]), key
        assert rec["env"]["torch_threads"] == 1 and "--threads 1" in rec["command"]
        assert f"--results {os.path.relpath(tmp_path / 'ray')} " in rec["command"]  # not the worker's scratch
    assert perplexities(on_ray["loop_lstm", 0]) != perplexities(on_ray["loop_lstm", 1])  # the seeds differ
    assert list((tmp_path / "ray" / "machine").glob("*.json")), "the node's matmul rate was measured"
    assert not list((tmp_path / "ray" / "checkpoints").rglob("*.pt")), "finished runs leave no checkpoint"


def test_a_killed_worker_is_retried_and_resumes_with_the_same_perplexities(ray_cluster, corpus_dir, tmp_path):
    markers, killed = ray_cluster, []

    def kill_the_worker():  # SIGKILL the Ray worker that runs the `slow` cell, mid-epoch, once
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for marker in markers.glob("*.json"):
                worker = json.loads(marker.read_text())["ppid"]
                assert worker not in (os.getpid(), 1)
                os.kill(worker, signal.SIGKILL)
                killed.append(worker)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    results = tmp_path / "results"
    rc = main(sweep_args(corpus_dir, results, "--engine", "ray", "--cells", "slow,loop_lstm,hang,crash", "--seed",
                         "3", "--epochs", "2", "--max-steps", "8", "--checkpoint-every", "0.001", "--cell-timeout",
                         "25", "--kill-grace", "1", "--heartbeat", "0.5"))
    killer.join(timeout=5)
    assert killed, "the slow cell never reached its third step"
    assert rc == 1  # the hanging cell timed out, the crashing one failed; the others are ok
    recs = by_run(results)
    slow, reference, hang = recs["slow", 3], recs["loop_lstm", 3], recs["hang", 3]
    assert reference["status"] == "ok" and slow["status"] == "ok"
    assert slow["sweep"]["attempt"] == 2 and slow.get("resumes"), "the retried task continued from the checkpoint"
    assert perplexities(slow) == perplexities(reference)
    assert len(slow["epochs"]) == 2
    # --cell-timeout under Ray too: ended, recorded with its last heartbeat, and the sweep went on.
    assert hang["status"] == "timeout" and "phase train" in hang["last_heartbeat"]
    # A failing cell is recorded (by its own training process, on the worker) and is not retried.
    assert recs["crash", 3]["status"] == "failed" and "crashes on purpose" in recs["crash", 3]["error"]
    assert recs["crash", 3]["sweep"]["attempt"] == 1
