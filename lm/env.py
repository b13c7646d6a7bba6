"""What ran where: device, library versions, commit — recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the project's own git checkout, with '-dirty' when tracked source files differ.

    None when the source tree is not itself a git checkout of the project -- an exported copy, or a
    copy inside some other repository, whose HEAD would say nothing about this code -- or git is missing.
    """
    root = Path(root or ROOT).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "cells", "lm", "bench"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def relative_command(argv: list[str], cwd: str | os.PathLike | None = None) -> str:
    """``argv`` joined, with absolute paths (also in ``--flag=PATH``) made relative to ``cwd``.

    A record then says how the run was asked for without the layout of the machine that ran it.
    """
    cwd = os.fspath(cwd or os.getcwd())

    def rel(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if os.path.isabs(value):
            value = os.path.relpath(value, cwd)
        return f"{flag}{eq}{value}"

    return " ".join(rel(a) for a in argv)


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def boot_id() -> str | None:
    """This boot of this machine (Linux's random boot id), or None: what tells two machines of one name and model apart
    -- this project's CPU sessions run on different hosts all called "vm", whose speeds differ by a third -- so that a
    report compares runs of one machine session only."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def environment(device: str | torch.device) -> dict:
    """A flat description of the machine and libraries for one result record."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_model": torch.cuda.get_device_name(device) if cuda else None,
        "torch": str(torch.__version__),
        "triton": triton_version(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "boot_id": boot_id(),
        "commit": git_commit(),
        # Set by whoever runs an exported copy of the tree (the GPU check does): what they say it is, unverified.
        "commit_declared": os.environ.get("RNNBENCH_DECLARED_COMMIT") or None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """GPU: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
