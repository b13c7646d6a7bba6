"""What the device can do, measured: fp32 matmul rate (and on CUDA bf16 and memory bandwidth).

The report divides each cell's achieved FLOP/s by the fp32 matmul rate measured
here on the same device, so the fraction says how close a cell gets to the best
the hardware does with the kernels torch ships.  :func:`measure` takes about a
second on the CPU and a few seconds on a GPU; its result goes into the
micro-benchmarks' ``machine_info`` and into ``<results>/machine/<slug>.json``
(see :func:`save`), which the report reads.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lm import env


def default_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a device, or cuda when available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def name_slug(device_type: str, device_name: str | None) -> str:
    """A short file-name-safe name for a device, e.g. ``cpu-intel-xeon-2-50ghz``, ``cuda-nvidia-h100-80gb-hbm3``."""
    name = (device_name or "").lower()
    name = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@", " ", name)
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"{device_type}-{slug}"[:60].rstrip("-") if slug else device_type


def device_slug(device: str | torch.device) -> str:
    """:func:`name_slug` of a device on this machine."""
    device = torch.device(device)
    return name_slug(device.type, env.device_name(device))


def _median_seconds(fn, device: torch.device, budget_s: float, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median wall time of ``fn()`` (device synchronized), after one warm-up call, within about ``budget_s``."""
    fn()
    env.synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        env.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(device: torch.device, n: int, dtype: torch.dtype, budget_s: float) -> float:
    """FLOP/s of one [n, n] @ [n, n] matmul in ``dtype`` (2 n^3 FLOPs), median of several."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: torch.mm(a, b, out=out), device, budget_s)
    return 2 * n**3 / seconds


def copy_bandwidth(device: torch.device, nbytes: int, budget_s: float) -> float:
    """Bytes/s moved by copying ``nbytes`` into another buffer (read + write, counted twice)."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device, budget_s)
    return 2 * src.numel() * 4 / seconds


def measure(device: str | torch.device | None = None, budget_s: float | None = None) -> dict:
    """Measure the device's matmul rate (and on CUDA its bf16 rate and memory bandwidth).

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available).
        budget_s: seconds per measurement after warm-up (default 0.8 on the CPU, 1.0 on CUDA).

    Returns:
        A flat dict: ``device``, ``device_name``, ``slug``, ``measured`` (UTC ISO date), ``torch``,
        ``torch_threads``, ``float32_matmul_precision`` (``highest`` means no TF32), ``fp32_matmul_n``,
        ``fp32_matmul_flops``; on CUDA also ``bf16_matmul_flops`` and ``copy_bytes_per_s``
        (``None`` where not measured).
    """
    device = default_device(device)
    cuda = device.type == "cuda"
    budget = budget_s if budget_s is not None else (1.0 if cuda else 0.8)
    # Big enough to saturate the device, small enough that one matmul is ~20 ms on either.
    n = 8192 if cuda else 1024
    out = {
        "device": device.type,
        "device_name": env.device_name(device),
        "slug": device_slug(device),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32
        "fp32_matmul_n": n,
        "fp32_matmul_flops": matmul_flops(device, n, torch.float32, budget),
        "bf16_matmul_flops": None,
        "copy_bytes_per_s": None,
    }
    if cuda:
        out["bf16_matmul_flops"] = matmul_flops(device, n, torch.bfloat16, budget)
        out["copy_bytes_per_s"] = copy_bandwidth(device, 1 << 30, budget)
        torch.cuda.empty_cache()
    return out


_CACHE: dict[str, dict] = {}


def measured(device: str | torch.device | None = None) -> dict:
    """:func:`measure`, once per process and device."""
    key = str(default_device(device))
    if key not in _CACHE:
        _CACHE[key] = measure(key)
    return _CACHE[key]


def save(measurement: dict, results: str | Path) -> Path:
    """Write ``measurement`` to ``<results>/machine/<slug>.json`` (replacing the older one); returns the path."""
    from lm.records import atomic_write

    folder = Path(results) / "machine"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{measurement['slug']}.json"
    atomic_write(path, json.dumps(measurement, indent=2) + "\n")
    return path


def load_all(results: str | Path) -> list[dict]:
    """Every readable measurement under ``<results>/machine``."""
    out = []
    for p in sorted(Path(results, "machine").glob("*.json")):
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("device_name"):
            out.append(m)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.machine [--device D] [--results DIR]``: print the measurement, optionally save it."""
    from lm.cli import Parser, path_arg  # argparse, its errors on one line
    from lm.errors import UsageError
    from lm.records import usable_folder
    from lm.train import resolve_device

    p = Parser(prog="python -m bench.machine", description=main.__doc__)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--results", type=path_arg, default=None, help="also write <results>/machine/<slug>.json")
    args = p.parse_args(argv)
    try:  # before measuring
        resolve_device(args.device)
        if args.results:
            usable_folder(Path(args.results) / "machine", "--results")
    except UsageError as exc:
        p.error(str(exc))
    m = measure(args.device)
    print(json.dumps(m, indent=2))
    if args.results:
        print(f"saved {save(m, args.results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
