"""The prepared GPU check's dry run: the same steps on the CPU at tiny sizes, so the script cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_corpus

ROOT = Path(__file__).resolve().parent.parent


def _finish(proc: subprocess.Popen, out: Path, perf: bool) -> tuple[Path, dict]:
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    (steps_file,) = out.glob(f"gpu/*/{'perf-' if perf else ''}steps.json")
    summary = json.loads(steps_file.read_text())
    assert summary["dry_run"] is True
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    assert (out / "REPORT.md").is_file()
    assert not (out / "checkpoints").exists(), "scratch checkpoints are not shipped"
    return out, summary


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict:
    """Both dry runs, the check's and the timings', started side by side (each one thread: about a minute apiece of
    mostly process start-ups, so two cores take them in the time of one); {"check" | "perf": (OUT, steps summary)}."""
    root = tmp_path_factory.mktemp("dry")
    corpus = write_corpus(root / "corpus", lines=200)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    procs = {}
    for part, flags in (("check", []), ("perf", ["--perf"])):
        out = root / part
        procs[part] = out, subprocess.Popen(["bash", "bench/gpu_check.sh", "--dry-run", *flags, str(corpus), str(out)],
                                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
    results = {}
    try:
        for part, (out, proc) in procs.items():
            try:
                results[part] = _finish(proc, out, part == "perf")
            except (AssertionError, ValueError, OSError, subprocess.TimeoutExpired) as e:  # that part's test fails
                results[part] = e
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return results


def _part(dry_runs: dict, part: str) -> tuple[Path, dict]:
    got = dry_runs[part]
    if isinstance(got, Exception):
        raise got
    return got


def test_dry_run_of_the_check_runs_every_step(dry_runs, tmp_path):
    out, summary = _part(dry_runs, "check")
    assert [s["step"] for s in summary["steps"]] == ["env", "tests", "train-small", "train-medium",
                                                     "train-small-slow", "report"]
    slug = summary["slug"]
    assert json.loads((out / "gpu" / slug / "env.json").read_text())["measured"]["fp32_matmul_flops"] > 0
    assert (out / "gpu" / slug / "tests-junit.xml").is_file()
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    by_cell = {}
    for rec in runs:
        by_cell.setdefault(rec["cell"], []).append(rec["status"])
    # one cell a step on the CPU (on a GPU every cell, test_the_real_steps_fit_the_budget_and_name_every_cell), the
    # compiled one last; interpreted Triton is not trained
    assert by_cell == {"cudnn_lstm": ["ok", "ok"], "loop_lstm": ["ok"], "compiled_gru": ["ok"]}
    assert [r["cell"] for r in sorted(runs, key=lambda r: r["started"])][-2:] == ["loop_lstm", "compiled_gru"]
    slow = [r for r in runs if r["cell"] == "loop_lstm"]
    assert slow[0]["steps_per_epoch"] == 3

    merged = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "bench.gpu_check", "merge", str(out), str(merged)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert len(list((merged / "runs").glob("*.json"))) == len(runs)
    assert (merged / "gpu" / slug / "steps.json").is_file()


def test_dry_run_of_the_timings_writes_every_benchmark_file(dry_runs):
    out, summary = _part(dry_runs, "perf")
    # (ncu runs only where it is on the PATH, never in the dry run)
    assert [s["step"] for s in summary["steps"]] == ["env", "bench", "tune", "bench-tuned", "bench-tuned-bf16",
                                                     "bench-graphs", "tune-small", "probe", "bench-modes",
                                                     "bench-compiled", "bench-compiled-graphs", "bench-bf16",
                                                     "bench-tf32", "report"]
    slug = summary["slug"]
    for name in ("micro", "bf16", "modes", "compiled", "tf32"):
        assert json.loads((out / "bench" / slug / f"{name}.json").read_text())["benchmarks"], name
    assert json.loads((out / "gpu" / slug / "compiled-reduce-overhead.json").read_text())["benchmarks"]
    # the searches' winners, benchmarked apart from bench/ with the file named in the JSON (the dry run: an H200's)
    for name in ("tuned", "tuned-bf16"):
        doc = json.loads((out / "gpu" / slug / f"{name}.json").read_text())
        assert doc["benchmarks"] and {t["source"] for t in doc["rnnbench"]["tiles"]} == {
            "tiles.json (the tile search on NVIDIA H200 at commit ea67f19)"}, name
    assert (out / "gpu" / slug / "perf-bench.log").is_file() and not (out / "gpu" / slug / "steps.json").exists()


def test_the_real_steps_fit_the_budget_and_name_every_cell(monkeypatch):
    """What runs on the GPU: every cell trained (the fast ones one epoch, the rest a stated number of steps),
    medium for cudnn_lstm and triton_lstm, and per-step limits that the budget can hold."""
    import cells
    from bench import gpu_check

    check = {s.name: s for s in gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", False)}
    trained = []
    for name in ("train-small", "train-small-slow"):
        argv = check[name].argv
        trained += argv[argv.index("--cells") + 1].split(",")
    assert sorted(trained) == sorted(cells.names())
    slow_argv = check["train-small-slow"].argv
    slow = slow_argv[slow_argv.index("--cells") + 1].split(",")
    assert {"compiled_lstm", "compiled_gru"} <= set(slow)  # (compiling: never where words/sec count)
    assert int(slow_argv[slow_argv.index("--jobs") + 1]) == min(len(slow), gpu_check.SLOW_JOBS)  # side by side
    assert "--jobs" not in check["train-small"].argv and "--jobs" not in check["train-medium"].argv
    assert "--max-steps" not in check["train-small"].argv
    medium = check["train-medium"].argv
    assert medium[medium.index("--cells") + 1] == "cudnn_lstm,triton_lstm"
    for part in ("check", "perf", "full"):
        if part != "full":  # (the full schedules' limits are their own budget's)
            limits = [s.limit_s for s in gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", False, part)]
            assert all(0 < x <= gpu_check.BUDGET_S for x in limits)
        for dry_run in (False, True):  # (--steps is checked against the steps without the cells: no torch import)
            assert [s.name for s in gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", dry_run, part)] == [
                s.name for s in gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", dry_run, part, with_cells=False)]
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: f"/usr/bin/{name}")  # as on the GPU machine
    perf = {s.name: s.argv for s in gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", False, "perf")}
    assert perf["probe"][perf["probe"].index("--json") + 1].endswith("probe.json")
    tf32 = perf["bench-tf32"]  # the bfloat16 step's cells and passes, in float32 with every matmul in TF32
    assert tf32[tf32.index("--bench-fp32-matmul") + 1] == "tf32" and "--bench-dtype" not in tf32
    assert tf32[tf32.index("--bench-cells") + 1] == "cudnn_lstm,cudnn_gru,triton_lstm,triton_gru"
    from cells.triton_lstm import tune  # the fields the check's tile search varies are the search's own

    assert tune._fields(perf["tune"][perf["tune"].index("--fields") + 1]) == gpu_check.TUNE_FIELDS
    # every search of both cells at medium and large in both dtypes, once, the LSTM's before the GRU's
    searches = tune._searches(perf["tune"][perf["tune"].index("--searches") + 1])
    assert sorted(searches) == sorted((c, p, d) for c in tune.CELLS for p in ("medium", "large")
                                      for d in ("float32", "bfloat16"))
    assert searches[0] == ("triton_lstm", "medium", "float32") and "--presets" not in perf["tune"]
    assert perf["tune-small"][perf["tune-small"].index("--presets") + 1] == "small"
    assert "--fields" not in perf["tune-small"]
    assert perf["tune-small"][perf["tune-small"].index("--cell") + 1] == "triton_lstm"  # the one unmet small target
    # the profiler: one forward and one backward launch of the large layer, clocks left as they are
    assert perf["ncu"][0] == "ncu" and "--once" in perf["ncu"] and "--clock-control" in perf["ncu"]
    assert perf["ncu"][perf["ncu"].index("--cell") + 1] == "triton_lstm,triton_gru"
    order = list(perf)  # the profiler right after the benchmark: at the table's tiles, before the searches; what the
    # searches found benchmarked right after them, before anything else (a budget that ends early has it)
    assert order.index("ncu") == order.index("bench") + 1 == order.index("ncu-source") - 1 < order.index("tune")
    assert order.index("bench-tuned") == order.index("tune") + 1 == order.index("bench-tuned-bf16") - 1
    assert "SourceCounters" in perf["ncu-source"] and "SourceCounters" not in perf["ncu"]  # (its own step: see why)
    assert gpu_check.BUDGET_S <= 360


def test_a_session_is_one_call_the_check_then_the_timings_with_what_is_left(tmp_path):
    """bench/gpu_session.sh: the check at most its budget, the timings with what --total leaves, OUT packed without
    checkpoints; the exit status is the check's, else the timings'.  (A stand-in for gpu_check.sh records its
    arguments: the real parts' dry runs are the tests above.)"""
    import tarfile

    fake = tmp_path / "fake.sh"
    fake.write_text('out="${@: -1}"; mkdir -p "$out/checkpoints"; echo "$*" >> "$out/calls"; '
                    'if [[ "$*" == *--perf* ]]; then exit 3; fi; exit 0\n')
    env = {**os.environ, "RNNBENCH_GPU_CHECK": str(fake)}
    out, tarball = tmp_path / "gpu", tmp_path / "gpu.tgz"
    r = subprocess.run(["bash", "bench/gpu_session.sh", "--total", "300", "--steps", "tune,bench-tuned", "ptb",
                        str(out), str(tarball)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr  # the check passed, the timings did not
    check, perf = (out / "calls").read_text().splitlines()
    assert check == f"--budget 240 ptb {out}"  # (a minute kept for the timings)
    assert perf.startswith("--perf --steps tune,bench-tuned --budget 2") and perf.endswith(f"ptb {out}")
    assert not (out / "checkpoints").exists()
    with tarfile.open(tarball) as tar:
        assert {"gpu/calls", "gpu/session.log"} <= set(tar.getnames())
    # --then full: the full schedules instead of the timings, their own steps by default
    out2 = tmp_path / "gpu2"
    r = subprocess.run(["bash", "bench/gpu_session.sh", "--then", "full", "ptb", str(out2), str(tarball)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    full = (out2 / "calls").read_text().splitlines()[1]
    assert full.startswith("--full --steps train-full,train-full-small --budget "), full
    # --check-steps: the check's own steps (the correctness tests alone, so the full schedules get the time)
    out3 = tmp_path / "gpu3"
    r = subprocess.run(["bash", "bench/gpu_session.sh", "--then", "full", "--check-steps", "tests", "ptb", str(out3),
                        str(tarball)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out3 / "calls").read_text().splitlines()[0] == f"--steps tests --budget 355 ptb {out3}"
    env["PYTHON"] = sys.executable
    for argv, says in ((["--total", "50", "a", "b", "c"], "--total takes 120 to 600 seconds"),
                       (["a", "b", str(tmp_path / "none" / "x.tgz")], "must be a file's path in an existing folder"),
                       (["a", "b", str(tmp_path)], "must be a file's path in an existing folder"),
                       (["a", str(fake), "c"], "must be a folder's path"),
                       (["--steps", "tune,bogus", "a", str(tmp_path / "o2"), "c"], "unknown step(s) bogus"),
                       (["--then", "full", "--steps", "tune", "a", str(tmp_path / "o2"), "c"],
                        "unknown step(s) tune; this part's steps: train-full, train-full-small"),
                       (["--then", "both", "a", "b", "c"], "--then takes perf or full, got 'both'"),
                       (["--check-steps", "tests,tune", "a", str(tmp_path / "o2"), "c"],
                        "unknown step(s) tune; this part's steps: tests, train-small"),
                       (["--bogus", "a", "b", "c"], "unknown option --bogus")):
        r = subprocess.run(["bash", "bench/gpu_session.sh", *argv], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "o2").exists(), "a typo in --steps is found before the check runs"
    # a check that refuses to run (no CUDA, a bad PTB folder) is not followed by the timings
    fake.write_text('out="${@: -1}"; mkdir -p "$out"; echo "$*" >> "$out/calls"; exit 2\n')
    out = tmp_path / "refused"
    r = subprocess.run(["bash", "bench/gpu_session.sh", "ptb", str(out), str(tmp_path / "r.tgz")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len((out / "calls").read_text().splitlines()) == 1 and "no timings" in r.stdout
    # a tarball past what the device tool brings back (16 MiB a file) goes in parts that cat puts together
    fake.write_text('out="${@: -1}"; mkdir -p "$out"; head -c 5000 /dev/urandom > "$out/big"; exit 0\n')
    out, tarball = tmp_path / "big", tmp_path / "big.tgz"
    r = subprocess.run(["bash", "bench/gpu_session.sh", "ptb", str(out), str(tarball)], cwd=ROOT,
                       env={**env, "RNNBENCH_PACK_MAX_BYTES": "2000"}, capture_output=True, text=True, timeout=60)
    parts = sorted(tmp_path.glob("big.tgz.*"))
    assert r.returncode == 0 and not tarball.exists() and len(parts) >= 3, r.stdout + r.stderr
    assert all(p.stat().st_size <= 2000 for p in parts) and f"cat {tarball}.* > {tarball}" in r.stdout
    tarball.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tarball) as tar:
        assert (tar.extractfile("big/big").read()) == (out / "big").read_bytes()


def test_without_cuda_the_real_check_refuses_in_one_line(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the real check would run")
    r = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path), str(tmp_path / "out")], cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs CUDA" in r.stderr


def test_a_budget_outside_one_call_is_refused_in_one_line(capsys):
    """--budget (less when the session has less device time left) takes 30 to 600 seconds."""
    from bench import gpu_check

    for budget in ("10", "601", "x"):
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(["run", "ptb", "out", "--budget", budget])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and "--budget" in err, err


def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    """An unknown device, an OUT or --out that is a file (before measuring, before the CUDA check), a merge from a
    missing folder or into itself, and --full-cells without --full: one line, exit 2, nothing written."""
    from bench import gpu_check

    afile = tmp_path / "afile"
    afile.write_text("x")
    src = tmp_path / "check"
    (src / "runs").mkdir(parents=True)
    (src / "runs" / "r.json").write_text("{}")
    for argv, says in ((["env", "--device", "tpu", "--out", str(tmp_path / "o")], "unknown device 'tpu'"),
                       (["env", "--device", "cpu", "--out", str(afile)], f"--out {afile} is not writable"),
                       (["run", str(tmp_path), str(afile), "--dry-run"], f"OUT {afile} is not writable"),
                       (["run", "--full-cells", "loop_lstm", str(tmp_path), str(tmp_path / "o")],
                        "--full-cells goes with --full"),
                       (["merge", str(tmp_path / "nonexistent"), str(tmp_path / "d")], "nonexistent not found"),
                       (["merge", str(src), str(src)], f"source and destination are the same folder: {src}"),
                       (["merge", str(src), str(afile)], f"destination {afile} is not writable")):
        try:
            rc = gpu_check.main(argv)
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and says in err and "PosixPath" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "check"] and afile.read_text() == "x"


def test_steps_choose_what_a_short_session_runs_and_in_which_order(monkeypatch, capsys):
    """--steps: env first, the named steps in the order named, report last; unknown, repeated or no names refused in
    one line, naming the part's steps."""
    from bench import gpu_check

    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: f"/usr/bin/{name}")  # as on the GPU machine
    perf = gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", False, "perf")
    assert gpu_check.select(perf, None) == perf
    chosen = gpu_check.select(perf, ["tune-small", "tune", "bench-tuned"])
    assert [s.name for s in chosen] == ["env", "tune-small", "tune", "bench-tuned", "report"]
    for only, says in ((["tune", "bogus"], "unknown step(s) bogus"), (["tune", "tune"], "a step named twice"),
                       ([], "no step named"), (["env"], "unknown step(s) env")):
        with pytest.raises(ValueError, match=r"--steps: " + re.escape(says) + "; this part's steps: bench, ncu, "):
            gpu_check.select(perf, only)
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["run", "--perf", "--steps", "tune,nope", "ptb", "out"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--steps: unknown step(s) nope" in err, err


def as_on_a_gpu(tmp_path: Path, monkeypatch) -> Path:
    """A PTB folder of three one-line files, and CUDA said to be present on a GPU whose slug is cuda-x: for running
    gpu_check.check with its steps stood in for."""
    import torch

    from bench import machine

    ptb = tmp_path / "ptb"
    ptb.mkdir()
    for split in ("train", "valid", "test"):
        (ptb / f"ptb.{split}.txt").write_text("a b\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(machine, "device_slug", lambda device: "cuda-x")
    return ptb


def test_the_searches_stop_themselves_and_leave_the_benchmark_of_their_winners_its_time(monkeypatch, tmp_path):
    """A tile search is told what its step may take (``--time-limit``, less the margin for finishing), so a search cut
    by the budget still names its best (it is not killed mid-search), and it leaves bench-tuned its limit where that
    step is to run after it."""
    from bench import gpu_check

    ptb = as_on_a_gpu(tmp_path, monkeypatch)
    ran = []

    def run_step(step, log, limit_s=None):
        ran.append((step.name, step.argv, limit_s))
        return {"step": step.name, "status": "ok"}

    monkeypatch.setattr(gpu_check, "run_step", run_step)
    for budget, only, tune_limit in ((400, ["tune", "bench-tuned"], 300), (200, ["tune", "bench-tuned"], 105),
                                     (200, ["tune"], 180), (200, ["tune-small", "tune", "bench-tuned"], 105)):
        ran.clear()
        assert gpu_check.check(ptb, tmp_path / "out", False, "perf", budget, only=only) == 0
        by = {name: (argv, limit) for name, argv, limit in ran}
        argv, limit = by["tune"]
        assert limit == pytest.approx(tune_limit, abs=1), (budget, only, limit)
        assert argv[-2:] == ["--time-limit", str(int(limit - gpu_check.TIME_LIMIT_MARGIN_S))]
        if "bench-tuned" in only:
            assert by["bench-tuned"][1] == pytest.approx(75, abs=1) and "--time-limit" not in by["bench-tuned"][0]
    assert by["tune-small"][0][-2:] == ["--time-limit", "45"]  # (its own limit, 60 s: the steps take no time here)
    from cells.triton_lstm import tune

    parsed = []
    monkeypatch.setattr(tune, "cli", lambda argv, *a, **k: parsed.append(argv) or 0)
    assert tune.main(["--time-limit", "12"]) == 0 and parsed == [["--time-limit", "12"]]


def test_a_search_that_ended_on_a_hung_candidate_is_continued_with_what_its_limit_leaves(monkeypatch, tmp_path):
    """A tile search exits HUNG_EXIT when a candidate's kernels never return (tune.watchdog): the check runs it again
    with --after-hang and the rest of its step's limit (its --time-limit recomputed), each run in steps.json and a log
    of its own, until it ends otherwise or less than AFTER_HANG_MIN_S is left.  Other steps are not run again."""
    from bench import gpu_check
    from cells.triton_lstm import tune

    assert gpu_check.HUNG_EXIT == tune.HUNG_EXIT
    ptb = as_on_a_gpu(tmp_path, monkeypatch)
    ran, exits = [], {"tune": [3, 3, 0], "tune-small": [3, 3, 3], "bench-tuned": [3]}

    def run_step(step, log, limit_s=None):
        ran.append((step.name, step.argv, limit_s, log.name))
        if step.name not in exits:  # env, report
            return {"step": step.name, "status": "ok", "exit_code": 0, "seconds": 0.0}
        return {"step": step.name, "status": "failed", "exit_code": exits[step.name].pop(0), "seconds": 40.0}

    monkeypatch.setattr(gpu_check, "run_step", run_step)
    gpu_check.check(ptb, tmp_path / "out", False, "perf", 400, only=["tune-small", "tune", "bench-tuned"])
    runs = [(name, limit, log, "--after-hang" in argv, argv[argv.index("--time-limit") + 1] if "--time-limit" in argv
             else None) for name, argv, limit, log in ran if name not in ("env", "report")]
    assert runs == [("tune-small", 60, "perf-tune-small.log", False, "45"),  # 60 - 40 = 20 s left: not again
                    ("tune", 300, "perf-tune.log", False, "285"),
                    ("tune", 260, "perf-tune-2.log", True, "245"),
                    ("tune", 220, "perf-tune-3.log", True, "205"),  # it ended (exit 0): no fourth
                    ("bench-tuned", 75, "perf-bench-tuned.log", False, None)]
    steps = json.loads((tmp_path / "out" / "gpu" / "cuda-x" / "perf-steps.json").read_text())["steps"]
    assert [(s["step"], s.get("after_hang")) for s in steps[1:-1]] == [
        ("tune-small", None), ("tune", None), ("tune", 1), ("tune", 2), ("bench-tuned", None)]


def test_a_benchmark_step_stopped_at_its_limit_keeps_the_benchmarks_it_finished(tmp_path):
    """run_step stops a pytest step at its limit with SIGINT, on which pytest ends its session in order: the step is
    recorded as a timeout, and pytest-benchmark's JSON holds every benchmark that finished before (SIGTERM, as for
    the other steps, would have left no file)."""
    from bench import gpu_check

    (tmp_path / "test_x.py").write_text(
        "import time\n"
        "def test_a(benchmark):\n    benchmark(lambda: None)\n"
        "def test_b():\n    time.sleep(60)\n"
        "def test_c(benchmark):\n    benchmark(lambda: None)\n")
    out = tmp_path / "out.json"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            str(tmp_path / "test_x.py"), f"--benchmark-json={out}", "--benchmark-max-time", "0.01",
            f"--rootdir={tmp_path}"]
    rec = gpu_check.run_step(gpu_check.Step("bench-x", argv, 8), tmp_path / "x.log")
    assert rec["status"] == "timeout" and rec["seconds"] < 30, rec
    assert [b["name"] for b in json.loads(out.read_text())["benchmarks"]] == ["test_a"]


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


def test_merge_prints_the_searches_winners_as_table_entries_with_the_benchmarks_figures(tmp_path, capsys):
    """After the copy, merge prints each search's winner as a tile-table line (only the fields off their defaults, a
    backward field only where it differs from the forward's) under its figures: the bench-tuned run's fwd+bwd and LM
    step beside the cuDNN cell's, the search's own against its start; a winner no benchmark timed says so, a search
    whose start won changes nothing.  The committed H200 search gives back the tables' own entries."""
    from bench import fold, gpu_check
    from cells.triton_lstm import launch

    start = {"units": 5, "block_j": 8, "block_k": 16, "num_warps": 4, "num_warps_bwd": 4, "num_stages": 1,
             "block_k_bwd": 16, "num_stages_bwd": 1, "split_k_bwd": 1, "fuse_gates_bwd": False}
    won = {**start, "num_stages": 3, "num_stages_bwd": 3, "block_k_bwd": 32}

    def rec(cell, dtype, tile, ms, best):
        return {"cell": cell, "preset": "medium", "dtype": f"torch.{dtype}", "tile": tile, "fwdbwd_s": ms / 1e3,
                "cudnn_fwdbwd_s": 4e-3, "ok": True, "best": best}

    gpu = tmp_path / "check" / "gpu" / "cuda-x"
    gpu.mkdir(parents=True)
    (gpu / "tiles.json").write_text(json.dumps({"env": {"device_name": "GPU X", "commit": "abcdef0" + "0" * 33},
                                                "records": [rec("triton_lstm", "float32", start, 8.0, False),
                                                            {"preset": "medium", "tile": won, "error": "refused"},
                                                            rec("triton_lstm", "float32", won, 5.0, True),
                                                            rec("triton_gru", "float32", start, 6.0, True),
                                                            rec("triton_lstm", "bfloat16", start, 5.0, False),
                                                            rec("triton_lstm", "bfloat16", won, 3.0, True)]}))

    def bench(pass_, cell, ms, backend="x", peak=None):
        return {"stats": {"median": ms / 1e3}, "extra_info": {"pass": pass_, "shape": "medium", "cell": cell,
                                                             "backend": backend, "peak_memory_bytes": peak}}

    tiles = "Triton (tiles from the tile file tiles.json (the tile search on GPU X at commit abcdef0))"
    (gpu / "tuned.json").write_text(json.dumps({"benchmarks": [
        bench("fwdbwd", "triton_lstm", 4.5, tiles), bench("fwdbwd", "cudnn_lstm", 4.4),
        bench("fwdbwd-cuda-graph", "triton_lstm", 2.0, tiles), bench("fwdbwd-cuda-graph", "cudnn_lstm", 3.0),
        bench("step", "triton_lstm", 7.0, tiles, 300 * 2**20), bench("step", "cudnn_lstm", 7.5, peak=302 * 2**20),
        bench("fwdbwd-bf16", "triton_lstm", 1.0, "Triton (the tile table)"), bench("fwdbwd-bf16", "cudnn_lstm", 4.0)]}))
    assert gpu_check.merge(tmp_path / "check", tmp_path / "results") == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("# triton_lstm medium float32, tiles.json (the tile search on GPU X at commit abcdef0)")
    assert out[at + 1:at + 4] == [
        "#   fwd+bwd 4.500 ms, cudnn_lstm 4.400 (tuned.json); as a CUDA graph 2.000 ms, cudnn_lstm 3.000; "
        "LM step 7.000 ms, cudnn_lstm 7.500, peak 300.0 MiB against 302.0",
        "#   the search: fwd+bwd 5.000 ms from its start's 8.000 (cuDNN there 4.000)",
        "(650, torch.float32): Tile(units=5, block_j=8, block_k=16, num_warps=4, num_warps_bwd=4, num_stages=3, "
        "block_k_bwd=32),"]
    gru = out.index("# triton_gru medium float32, tiles.json (the tile search on GPU X at commit abcdef0)")
    assert "nothing to change" in out[gru + 1]
    bf16 = out.index("# triton_lstm medium bfloat16, tiles.json (the tile search on GPU X at commit abcdef0)")
    assert out[bf16 + 1].startswith("#   NOT BENCHMARKED: no fwd+bwd of triton_lstm with these tiles beside cudnn_lstm")
    (gpu / "tiles.json").write_text("{")
    assert fold.tile_entries(tmp_path / "check" / "gpu") == [
        f"rnnbench: warning: {gpu / 'tiles.json'}: not a tile search's --json file (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1))"]
    # the committed search's winners are the tables' measured entries
    committed = ROOT / "results" / "gpu" / "cuda-nvidia-h200" / "tiles.json"
    lines = [x for x in fold.table_entries(committed) if x.startswith("(")]
    tables = [f"({h}, {d}): {fold._tile_source(t)}," for table in (launch.TILES, launch.GRU_TILES)
              for (h, d), t in table.items() if h != 200]
    assert sorted(lines) == sorted(tables)


def test_a_training_step_fails_on_what_a_correct_cell_cannot_score_and_warns_on_a_spike(tmp_path):
    """A sweep that exits 0 but left a run with a non-finite evaluation, or one worse than twice a uniform guess and
    worse than every training window of the run, fails its step, which says which run and why.  Worse than twice a
    uniform guess after training windows that spiked as far (lm.train.WindowSpikes), or in a record that does not
    count them (triton_gru's first H200 run: valid 1.27e5 over 10,000 words), is a warning: GRUs at learning rate 1
    spike past it on the CPU too.  Older records are not looked at."""
    from bench import gpu_check

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "old_bad.json").write_text(json.dumps({"cell": "old_bad", "config": {"name": "small"}, "vocab_size": 10000,
                                                   "epochs": [{"valid_ppl": 1e6}], "test_ppl": 1e6}))
    writes = ("import json, sys; from pathlib import Path; runs = Path(sys.argv[1]); "
              "[(runs / f'{c}.json').write_text(json.dumps({'cell': c, 'config': {'name': 'small'}, "
              "'vocab_size': 10000, 'epochs': [{'valid_ppl': v, **({} if n is None else {'train_spikes': n, "
              "'train_max_window_ppl': m})}], 'test_ppl': t})) for c, v, t, n, m in json.loads(sys.argv[2])]")

    def step(name, rows):
        return gpu_check.run_step(gpu_check.Step(name, [sys.executable, "-c", writes, str(runs), json.dumps(rows)],
                                                 30, runs=runs), tmp_path / f"{name}.log")

    status = step("good", [["slow_learner", 4090.0, 4357.0, 0, 9999.0], ["unfinished", None, None, None, None]])
    assert status["status"] == "ok" and "warnings" not in status and "implausible" not in status, status
    status = step("spiky", [["triton_gru", 126856.8, 150257.4, None, None], ["loop_gru", 6.1e5, 5.2e5, 16, 1.5e8]])
    assert status["status"] == "ok" and "implausible" not in status and len(status["warnings"]) == 2, status
    assert "does not count its training windows" in status["warnings"][1]  # (sorted by file name)
    assert "its training windows reached 1.5e+08 (16 past that bound)" in status["warnings"][0]
    assert "warning: triton_gru" in (tmp_path / "spiky.log").read_text()
    status = step("bad", [["calm_garbage", 126856.8, 150257.4, 2, 28047.8], ["diverged", float("inf"), None, 3, 1e5]])
    assert status["status"] == "failed" and len(status["implausible"]) == 2, status
    assert "calm_garbage small: test perplexity 1.503e+05" in status["implausible"][0]
    assert "worse than every training window of the run (the largest 2.805e+04)" in status["implausible"][0]
    assert "diverged small: valid perplexity inf" in status["implausible"][1]
    assert "implausible: calm_garbage" in (tmp_path / "bad.log").read_text()


def test_the_compile_mode_option_reaches_only_the_compiled_cells():
    """--bench-compile-mode (the perf part's CUDA-graph variant of the compiled cells) builds compiled_lstm with
    that torch.compile mode, named in its backend string, and leaves every other cell as it is."""
    import cells
    from bench.bench_cells import cell_options

    class Config:
        def __init__(self, mode):
            self.mode = mode

        def getoption(self, name, default=None):
            return self.mode if name == "bench_compile_mode" else default

    assert cell_options(Config("reduce-overhead"), "compiled_lstm") == {"compile_mode": "reduce-overhead"}
    assert cell_options(Config("reduce-overhead"), "loop_lstm") == {} == cell_options(Config(None), "compiled_gru")
    rnn = cells.build("compiled_gru", 4, 4, 1, **cell_options(Config("reduce-overhead"), "compiled_gru"))
    assert "mode=reduce-overhead" in cells.detect_backend(rnn, "cpu")


def test_a_benchmark_of_the_searches_winners_takes_the_files_that_name_one_or_is_skipped(tmp_path):
    """bench-tuned: --bench-tiles names the searches' files that exist and name a winner when the step starts; none,
    and the step is skipped with its reason (a search that did not run, or was cut short before its first winner)."""
    from bench import gpu_check

    committed = ROOT / "results" / "gpu" / "cuda-nvidia-h200" / "tiles.json"
    cut = tmp_path / "tiles-small.json"  # a search killed before it chose
    cut.write_text(json.dumps({"env": {}, "records": [{"preset": "small", "dtype": "torch.float32", "best": False,
                                                       "tile": {}}]}))
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1:])"]
    step = gpu_check.Step("bench-tuned", argv, 30, tile_files=[tmp_path / "tiles.json", cut])
    rec = gpu_check.run_step(step, tmp_path / "a.log")
    assert rec["status"] == "skipped"
    assert "no tile search named a winner (tiles.json, tiles-small.json)" in rec["reason"]
    step = gpu_check.Step("bench-tuned", argv, 30, tile_files=[committed, cut])
    rec = gpu_check.run_step(step, tmp_path / "b.log")
    assert rec["status"] == "ok" and f"--bench-tiles={committed}" in rec["command"]
    assert (tmp_path / "b.log").read_text().strip() == repr([f"--bench-tiles={committed}"])


def test_the_full_part_trains_the_published_medium_schedule_as_cuda_graphs(monkeypatch, capsys):
    """--full: the medium preset's 39 epochs (no --epochs: the preset's), the step as one CUDA graph, for the named
    cells one after another, each run allowed what the budget leaves after the environment and the report; the
    command is the sweep's own (its parser takes it).  A bad cell, or --full with --perf, is one line."""
    from bench import gpu_check
    from bench.cli import build_parser

    full = gpu_check.steps(Path("ptb"), Path("out"), "cuda-x", False, "full", 540, "cudnn_lstm,triton_lstm")
    assert [s.name for s in full] == ["env", "train-full", "train-full-small", "report"]
    for train, cells, config in ((full[1], "cudnn_lstm,triton_lstm", "medium"), (full[2], "triton_lstm", "small")):
        args = build_parser().parse_args(train.argv[3:])
        assert (args.command, args.cells, args.config, args.epochs, args.steps, args.device) == (
            "sweep", cells, config, None, "cuda-graph", "cuda")
        assert 60 <= args.cell_timeout <= 540 - gpu_check.LIMITS["env"] - gpu_check.REPORT_RESERVE_S
        assert train.runs == Path("out") / "runs" and train.limit_s <= 600  # its runs are checked as the check's are
        assert train.time_limit_flag == "--cell-timeout"  # (a run the budget cuts ends in order, recorded timeout)
    seen = {}
    monkeypatch.setattr(gpu_check, "check", lambda *a: seen.setdefault("args", a) and 0)
    gpu_check.main(["run", "ptb", "out", "--full"])
    assert seen["args"][3:] == ("full", gpu_check.FULL_BUDGET_S, gpu_check.FULL_CELLS, None)  # (None: every step)
    for argv, what in ((["--full", "--full-cells", "nope"], "--full-cells: unknown cell(s) nope"),
                       (["--full", "--perf"], "not allowed with")):
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(["run", "ptb", "out", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and what in err, err
