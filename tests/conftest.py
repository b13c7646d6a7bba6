"""Shared fixtures: a small corpus written by the tests, the real PTB folder when configured."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Tests use tiny shapes: one thread is faster there and immune to other processes' load.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # for the CLI subprocesses the tests start
# Under pytest-xdist (the README's test command) a worker's environment names it; a pytest the tests start (the GPU
# check's benchmark steps) would take itself for a worker too, and pytest-benchmark then disables its benchmarks.
for _name in [n for n in os.environ if n.startswith("PYTEST_XDIST_")]:
    del os.environ[_name]

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our team", "N people"]
VERBS = ["sees", "likes", "finds", "builds", "sells", "wants"]
OBJECTS = ["the ball", "a house", "some bread", "the red car", "<unk> things", "a small boat"]


def write_corpus(folder: Path, lines: int = 400, seed: int = 1234) -> Path:
    """A learnable toy corpus in PTB's file layout (subject verb object sentences, with <unk>)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("ptb.train.txt", lines), ("ptb.valid.txt", lines // 4), ("ptb.test.txt", lines // 4)):
        text = "".join(f" {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} \n" for _ in range(n))
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def ptb_dir() -> Path:
    """The real PTB folder from PTB_DIR; CI sets RNNBENCH_REQUIRE_PTB=1 so a missing folder fails there."""
    folder = os.environ.get("PTB_DIR")
    if not folder or not Path(folder, "ptb.train.txt").is_file():
        if os.environ.get("RNNBENCH_REQUIRE_PTB") == "1":
            pytest.fail(f"RNNBENCH_REQUIRE_PTB=1 but PTB_DIR={folder!r} does not hold the PTB files")
        pytest.skip("PTB_DIR is not set to a folder with the PTB files")
    return Path(folder)


def devices() -> list:
    """cpu always; cuda as a `gpu`-marked parameter, skipped with a reason when CUDA is absent."""
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available")])]


def replayed_and_eager(cell: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list:
    """``cell``'s forward on ``x`` and backward from ``dy`` captured as one CUDA graph (``lm.step.graphed``), new values
    written into x and dy, replayed, then run eagerly on the same values: the pairs (replayed, eager) of the output
    and of the gradients of x and of every parameter."""
    from lm.step import graphed

    leaves = [x, *cell.parameters()]

    def work() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        y = cell(x)[0]
        y.backward(dy)
        return y.detach()

    replay = graphed(work, x.device)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        dy.copy_(torch.randn_like(dy))
    got = [replay().clone()] + [t.grad.clone() for t in leaves]
    return list(zip(got, [work()] + [t.grad.clone() for t in leaves], strict=True))


def assert_launches_repeat_and_leave_counters_zero(function, inference, args: list, plan, calls: int = 20) -> None:
    """A fused cell's layer ``calls`` times in a row on one stream: ``function.apply(*args, plan)`` forward and
    backward (upstream gradients all ones), then ``inference(*args, plan)`` without grad.  Every output and gradient
    must equal the first call's bit for bit, and the grid-barrier counters (shared by every launch on the stream)
    must read zero afterwards: one left nonzero would let a later launch pass its barriers early."""
    from cells.triton_lstm import launch

    args = [a.requires_grad_(True) for a in args]
    first = None
    for _ in range(calls):
        for a in args:
            a.grad = None
        out = function.apply(*args, plan)
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
        with torch.no_grad():
            infer = inference(*args, plan)
        got = [o.detach().clone() for o in (*out, *infer)] + [a.grad.clone() for a in args]
        first = first or got
        assert all(torch.equal(g, f) for g, f in zip(got, first, strict=True))
    if args[0].is_cuda:
        torch.cuda.synchronize()
    arrive, done = launch.counters(args[0].device)
    assert not arrive.any() and not done.any()


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 checks compare against float64 with TF32 off."""
    import cells

    with cells.fp32_matmul_precision("ieee"):
        yield


# The test files that take longest on a 2-core CPU machine (seconds, 2026-11-29, AMD EPYC: most of it child processes
# and compiling), run first: with the README's `-n 2 --dist loadfile` each file goes whole to the next free process, in
# collection order, so a long file collected last would run alone at the end.
SLOW_FILES = ("test_triton_lstm.py",  # ~190
              "test_gpu_check.py",  # ~170 (the dry runs of the GPU check)
              "test_sweep.py",  # ~95
              "test_ray_sweep.py",  # ~75
              "test_resume.py")  # ~55


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: order.get(item.path.name, len(SLOW_FILES)))  # (stable: each file's own order kept)
