"""The one prepared GPU check: everything the suite claims about GPUs, gathered in one run of about 8 minutes.

Usage (from the repository root; nothing is installed, the checkout is put on PYTHONPATH)::

    bash bench/gpu_check.sh PTB_DIR OUT             # on a GPU machine
    bash bench/gpu_check.sh --dry-run PTB_DIR OUT   # the same steps on the CPU at tiny sizes (CI)
    python -m bench.gpu_check merge OUT results     # fold a check's output into results/, then `rnnbench report`

Steps, most valuable first, each with its own time limit; each writes its output as
soon as it finishes, a failing or timed-out step is recorded in ``gpu/<slug>/steps.json``
and the check goes on:

1. ``env``    GPU, driver, CUDA, cuDNN, torch and triton versions; measured matmul rate and bandwidth.
2. ``tests``  the correctness tests on CUDA (``-m gpu``): every cell against the float64 reference,
              the Triton kernels compiled, not interpreted.
3. ``bench``  the micro-benchmarks at the PTB shapes for every cell (pytest-benchmark JSON).
4. ``train-small``, ``train-medium``  one epoch of the small preset for every cell, then one epoch
              of the medium preset for ``cudnn_lstm`` and ``triton_lstm`` (run records, via ``rnnbench sweep``).
5. ``report`` ``rnnbench report`` over what the check produced.

``OUT`` is laid out like ``results/`` (``runs/``, ``bench/<slug>/``, ``machine/``, and ``gpu/<slug>/``
for the environment, test logs and step statuses), so merging is copying; the report then
shows the GPU's numbers beside the CPU's, never mixing devices in a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float
    env: dict = field(default_factory=dict)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def steps(ptb: Path, out: Path, slug: str, dry_run: bool) -> list[Step]:
    py = [sys.executable]
    gpu = out / "gpu" / slug
    if dry_run:
        device, common = "cpu", ["--data-dir", str(ptb), "--no-verify", "--max-steps", "3"]
        small, medium = "tiny", "tiny"
        medium_cells = "cudnn_lstm"  # triton_lstm cannot train on the CPU; the small sweep shows its record
        tests = ["-m", "not gpu", "tests/test_cells.py", "-k", "float64 and T1-B1"]
        bench = ["--bench-device", "cpu", "--bench-shapes", "tiny", "--benchmark-max-time", "0.02",
                 "--benchmark-min-rounds", "1"]
        limits = {"env": 60, "tests": 60, "bench": 90, "train-small": 120, "train-medium": 60, "report": 60}
    else:
        device, common = "cuda", ["--data-dir", str(ptb)]
        small, medium = "small", "medium"
        medium_cells = "cudnn_lstm,triton_lstm"
        tests = ["-m", "gpu", "tests"]
        bench = ["--bench-device", "cuda", "--benchmark-max-time", "0.3"]
        limits = {"env": 45, "tests": 150, "bench": 110, "train-small": 150, "train-medium": 100, "report": 45}
    return [
        Step("env", [*py, "-m", "bench.gpu_check", "env", "--device", device, "--out", str(out)], limits["env"]),
        Step("tests", [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests,
                       f"--junitxml={gpu / 'tests-junit.xml'}"], limits["tests"]),
        Step("bench", [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "bench",
                       "--benchmark-only", *bench, f"--benchmark-json={out / 'bench' / slug / 'micro.json'}"],
             limits["bench"]),
        Step("train-small", [*py, "-m", "lm.cli", "sweep", "--cells", "all", "--config", small, "--epochs", "1",
                             "--device", device, "--results", str(out), "--quiet", *common], limits["train-small"]),
        Step("train-medium", [*py, "-m", "lm.cli", "sweep", "--cells", medium_cells, "--config", medium,
                              "--epochs", "1", "--device", device, "--results", str(out), "--quiet", *common],
             limits["train-medium"]),
        Step("report", [*py, "-m", "lm.cli", "report", "--results", str(out)], limits["report"]),
    ]


def run_step(step: Step, log: Path) -> dict:
    """Run one step in its own process group; kill the whole group at its time limit."""
    t0 = time.monotonic()
    print(f"[gpu-check] {now()} step {step.name} (limit {step.limit_s:.0f} s): {' '.join(step.argv[1:])}",
          flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **step.env}
    with open(log, "w") as f:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=step.limit_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
    seconds = time.monotonic() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"[gpu-check] step {step.name}: {status} (exit {rc}) in {seconds:.0f} s; " + " | ".join(tail)[-300:],
          flush=True)
    return {"step": step.name, "status": status, "exit_code": rc, "seconds": round(seconds, 1),
            "limit_s": step.limit_s, "log": log.name, "command": " ".join(step.argv[1:])}


def check(ptb: Path, out: Path, dry_run: bool) -> int:
    import torch

    from bench.machine import device_slug
    from lm.records import atomic_write

    if not dry_run and not torch.cuda.is_available():
        print("rnnbench: error: gpu-check needs CUDA (none here); use --dry-run to rehearse on the CPU",
              file=sys.stderr)
        return 2
    if not all((ptb / f"ptb.{s}.txt").is_file() for s in ("train", "valid", "test")):
        print(f"rnnbench: error: {ptb} must hold ptb.train.txt, ptb.valid.txt and ptb.test.txt", file=sys.stderr)
        return 2
    slug = device_slug("cpu" if dry_run else "cuda")
    gpu = out / "gpu" / slug
    for folder in (gpu, out / "bench" / slug):
        folder.mkdir(parents=True, exist_ok=True)
    summary = {"started": now(), "dry_run": dry_run, "slug": slug, "steps": []}
    for step in steps(ptb.resolve(), out.resolve(), slug, dry_run):
        summary["steps"].append(run_step(step, gpu / f"{step.name}.log"))
        atomic_write(gpu / "steps.json", json.dumps(summary, indent=2) + "\n")
    summary["finished"] = now()
    atomic_write(gpu / "steps.json", json.dumps(summary, indent=2) + "\n")
    failed = [s["step"] for s in summary["steps"] if s["status"] != "ok"]
    print(f"[gpu-check] done: {len(summary['steps']) - len(failed)} of {len(summary['steps'])} steps ok"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def env_step(device: str, out: Path) -> int:
    """Step 1: the environment and the measured rates, into gpu/<slug>/env.json and machine/<slug>.json."""
    import torch

    from bench import machine
    from lm import env as lm_env
    from lm.records import atomic_write

    dev = torch.device(device)
    info = lm_env.environment(dev)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info |= {"sm_count": props.multi_processor_count, "total_memory_bytes": props.total_memory,
                 "capability": f"{props.major}.{props.minor}"}
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            smi = f"nvidia-smi unavailable: {exc}"
        info["nvidia_smi"] = smi
        info["driver"] = next((line.split("Driver Version:")[1].split()[0] for line in smi.splitlines()
                               if "Driver Version:" in line), None)
    measured = machine.measure(dev)
    info["measured"] = measured
    machine.save(measured, out)
    folder = out / "gpu" / measured["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "env.json", json.dumps(info, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=2, default=str))
    return 0


def merge(src: Path, dest: Path) -> int:
    """Copy a check's output (laid out like results/) into ``dest``; files of the same name are replaced."""
    copied = 0
    for sub in ("runs", "bench", "machine", "gpu"):
        for path in sorted((src / sub).rglob("*")) if (src / sub).is_dir() else []:
            if path.is_file() and not path.name.endswith(".tmp"):
                target = dest / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
    print(f"merged {copied} files from {src} into {dest}; now run: rnnbench report --results {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run every step")
    r.add_argument("ptb", type=Path, help="folder with ptb.{train,valid,test}.txt")
    r.add_argument("out", type=Path, help="output folder (laid out like results/)")
    r.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    e = sub.add_parser("env", help="step 1 alone")
    e.add_argument("--device", default="cuda")
    e.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("merge", help="copy a check's output into a results folder")
    m.add_argument("src", type=Path)
    m.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "env":
        return env_step(args.device, args.out)
    if args.cmd == "merge":
        return merge(args.src, args.dest)
    if args.cmd == "run":
        return check(args.ptb, args.out, args.dry_run)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
