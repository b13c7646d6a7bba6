"""pytest settings for the micro-benchmarks in ``bench/``: device choice, plain-run mode, machine info.

- A plain ``pytest`` run disables benchmarking (each benchmark body runs once, as
  a test); any of ``--benchmark-only``, ``--benchmark-enable``, ``--benchmark-json``,
  ``--benchmark-save``, ``--benchmark-autosave`` or ``--benchmark-compare`` turns it on.
- ``--bench-tiles`` puts the winners of tile searches (``python -m cells.triton_lstm.tune --json``) before the
  Triton cells' tile tables, so a search's tiles are benchmarked before they are committed; the backend
  strings say "tiles from the tile file ...".
- float32 runs with exact matmuls in every cell (cuDNN's RNNs included, whose torch default is TF32);
  ``--bench-fp32-matmul tf32`` puts every cell's float32 matmuls on CUDA in TF32 instead, passes of their own
  (``fwdbwd-tf32``, ...), as ``--bench-dtype bfloat16`` makes ``fwdbwd-bf16``.
- ``--bench-device``, ``--bench-shapes`` and ``--bench-cells`` choose what runs; while timing,
  torch uses ``--bench-threads`` CPU threads (default: all this process may use), so the
  numbers do not depend on what ``tests/conftest.py`` sets for the tests.
- ``machine_info`` in the JSON gains the device, GPU name, CUDA, cuDNN, torch and triton
  versions and the thread count; what changes between runs of one machine, the
  commit (``-dirty`` when edited) and the device's measured matmul rate
  (:mod:`bench.machine`), goes in a top-level ``rnnbench`` entry, so that
  ``--benchmark-compare`` does not warn about a different machine every time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import torch

if not torch.cuda.is_available():
    # Triton reads this at import: without a GPU its kernels run in the interpreter (as `rnnbench` does).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Options that say "measure": without one of them the run only checks that each body works.
_MEASURE_OPTIONS = ("benchmark_only", "benchmark_enable", "benchmark_json", "benchmark_save", "benchmark_autosave",
                    "benchmark_compare")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("rnnbench", "rnnbench micro-benchmarks")
    g.addoption("--bench-device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.addoption("--bench-shapes", default=None,
                help="comma-separated presets to time (default: small,medium,large; on the CPU small,medium)")
    g.addoption("--bench-cells", default=None, help="comma-separated cells to time (default: every registered cell)")
    g.addoption("--bench-modes", default=None,
                help="step modes to time besides eager: compile, cuda-graph (default: both on CUDA, none on the CPU)")
    g.addoption("--bench-dtype", default=None, choices=["float32", "bfloat16"],
                help="parameters and activations of every timed cell (default float32); another dtype is "
                     "another pass in the report (fwdbwd-bf16, ...)")
    g.addoption("--bench-fp32-matmul", default=None, choices=["ieee", "tf32"],
                help="float32 matmuls on CUDA for every timed cell alike (cuBLAS, cuDNN's RNNs, the Triton cells): "
                     "ieee, exact (default), or tf32, on the tensor cores; tf32 is another pass in the report "
                     "(fwdbwd-tf32, ...)")
    g.addoption("--bench-compile-mode", default=None,
                choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                help="torch.compile mode of the compiled cells (compiled_lstm, compiled_gru; default: theirs); the "
                     "backend string names it, and its benchmarks belong in their own JSON file")
    g.addoption("--bench-tiles", default=None, metavar="FILE[,FILE]",
                help="the Triton cells' tiles from these tile searches' --json files (python -m "
                     "cells.triton_lstm.tune), before the tile tables: each search's winner, for its preset and dtype; "
                     "the backend strings and the JSON's rnnbench entry name the file")
    g.addoption("--bench-threads", type=int, default=None,
                help="torch CPU threads while timing (default: every CPU this process may use)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark builds its session (its hook is trylast).
    if not any(getattr(config.option, name, None) for name in _MEASURE_OPTIONS):
        config.option.benchmark_disable = True
    # float32 is compared with one arithmetic for every cell, exact unless --bench-fp32-matmul tf32: under torch's
    # defaults cuDNN's RNNs would use TF32 while cuBLAS matmuls (and so the Triton cells) would not.  Backend strings
    # say which arithmetic ran.
    import cells

    precision = config.getoption("bench_fp32_matmul", None) or "ieee"
    if precision == "tf32" and (config.getoption("bench_dtype", None) or "float32") != "float32":
        raise pytest.UsageError("--bench-fp32-matmul tf32 is for float32; drop --bench-dtype or the TF32 option")
    if precision == "tf32" and bench_device(config).type != "cuda":
        raise pytest.UsageError("--bench-fp32-matmul tf32 is for CUDA: TF32 is a tensor-core format, and float32 "
                                "matmuls on the CPU are exact")
    cells.set_fp32_matmul(precision)
    if config.getoption("bench_tiles", None):
        use_tile_files(config.getoption("bench_tiles"))


def use_tile_files(value: str) -> None:
    """--bench-tiles: the winners of the named tile searches before the tile tables (a later file's over an earlier
    one's); a file that is missing or not a tile search's record is a usage error."""
    from cells.triton_lstm import launch, tune

    found = {}
    try:
        for path in filter(None, value.split(",")):
            found.update(tune.file_tiles(path))
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-tiles: {exc}") from None
    launch.use_file_tiles(found)


def bench_device(config: pytest.Config) -> torch.device:
    from bench.machine import default_device

    return default_device(config.getoption("bench_device", None))


def bench_threads(config: pytest.Config) -> int:
    if config.getoption("bench_threads", None):
        return config.getoption("bench_threads")
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return bench_device(pytestconfig)


@pytest.fixture
def cpu_threads(pytestconfig: pytest.Config, benchmark) -> Iterator[int]:
    """While timing, torch uses a fixed number of CPU threads, whatever other conftests set for the tests."""
    if not benchmark.enabled:
        yield torch.get_num_threads()
        return
    old = torch.get_num_threads()
    torch.set_num_threads(bench_threads(pytestconfig))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def _precompiled(request: pytest.FixtureRequest) -> None:
    """While timing on CUDA: the Triton cells' kernels for every (pass, cell, preset) about to be timed, compiled side
    by side before the first benchmark (:func:`bench.bench_cells.precompile`), instead of one at a time (1-2 s each)
    in the benchmarks' warm-up."""
    config = request.config
    device = bench_device(config)
    if device.type != "cuda" or config.getoption("benchmark_disable", False):
        return
    from bench.bench_cells import DTYPES, precompile

    runs = sorted({(item.originalname.removeprefix("test_"), item.callspec.params["cell"],
                    item.callspec.params["shape"]) for item in request.session.items
                   if {"cell", "shape"} <= getattr(getattr(item, "callspec", None), "params", {}).keys()
                   and not item.get_closest_marker("skip")})
    line = precompile(runs, device, DTYPES[config.getoption("bench_dtype", None) or "float32"])
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter:
        reporter.write_line(f"rnnbench: {line}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # On CUDA every micro-benchmark needs the GPU: let `-m gpu` select them too.
    if bench_device(config).type == "cuda":
        for item in items:
            if item.nodeid.startswith("bench/"):
                item.add_marker(pytest.mark.gpu)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    # Only what identifies the machine: `--benchmark-compare` warns when any of it differs.
    from lm import env

    device = bench_device(config)
    e = env.environment(device)
    machine_info.update({
        "bench_device": device.type,
        "device_name": e["device_name"],
        "gpu_name": e["gpu_model"],
        "cuda": e["cuda"],
        "cudnn": e["cudnn"],
        "torch": e["torch"],
        "triton": e["triton"],
        "torch_threads": bench_threads(config),
    })


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    # What changes from run to run goes beside machine_info: the commit (with -dirty) and the measured matmul rate.
    from bench import machine
    from lm import env

    device = bench_device(config)
    old = torch.get_num_threads()
    torch.set_num_threads(bench_threads(config))  # the matmul rate under the threads the benchmarks used
    try:
        matmul = machine.measured(device)
    finally:
        torch.set_num_threads(old)
    output_json["rnnbench"] = {"commit": env.git_commit(), "matmul": matmul}
    if config.getoption("bench_tiles", None):  # what --bench-tiles put before the tile tables
        from cells.triton_lstm import launch

        output_json["rnnbench"]["tiles"] = [
            {"kind": kind, "hidden_size": hidden, "dtype": str(dtype).removeprefix("torch."),
             "tile": dataclasses.asdict(tile), "source": source}
            for (kind, hidden, dtype), (tile, source) in launch.FILE_TILES.items()]
