"""triton_gru against a float64 reference (torch.nn.GRU's equations) on every path and tiling, in the interpreter on
the CPU and compiled on CUDA (``gpu`` marker).  tests/test_cells.py also runs it against torch.nn.GRU in float64 and
float32 on the smallest shapes.  Fresh random inputs, initial states and upstream gradients in every case; the
outputs, the final h and the gradients of the input, every weight and the initial state are checked.
Tolerances as tests/test_triton_lstm.py says."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from conftest import assert_launches_repeat_and_leave_counters_zero

import cells

triton = pytest.importorskip("triton", reason="triton_gru needs triton (a dependency on Linux)")

from cells.triton_gru import GRULayerFunction, TritonGRU  # noqa: E402
from cells.triton_gru import _inference as gru_inference  # noqa: E402
from cells.triton_lstm import launch, sm90  # noqa: E402

FP32_TOL = 3e-5
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available: the compiled kernels need a GPU")])


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def naive_layer(x, h, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRU's equations, one step at a time."""
    ys = []
    for x_t in x:
        xr, xz, xn = (x_t @ w_ih.t() + b_ih).chunk(3, 1)
        hr, hz, hn = (h @ w_hh.t() + b_hh).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys), h


# (id, B, T, H, make_plan arguments, fields replaced in the plan).  "persistent" runs compiled only.
PLANS = [
    ("blocked", 3, 3, 13, dict(path="blocked"), {}),
    ("blocked-3x3-tiles", 20, 3, 40, dict(path="blocked"), dict(block_j=16, block_k=16)),
    ("blocked-2-batch-blocks", 20, 2, 13, dict(path="blocked"), dict(block_b=16, batch_blocks=2)),
    ("stepwise", 3, 3, 13, dict(path="stepwise", units=4), {}),
    ("stepwise-tiles", 20, 3, 40, dict(path="stepwise", units=16), dict(block_k=16)),
    ("stepwise-2-batch-blocks", 20, 2, 24, dict(path="stepwise", units=8), dict(block_b=16, batch_blocks=2)),
    # the reduction split inside a program (launch.Tile.split_k), the last trip part-masked
    ("blocked-3x3-tiles-split-2", 20, 2, 40, dict(path="blocked"), dict(block_j=16, block_k=16, split_k=2)),
    # rows padded to a multiple of 16 (launch.Plan.row_align): H 40 -> 48
    ("stepwise-tiles-padded", 20, 3, 40, dict(path="stepwise", units=16), dict(block_k=16, row_align=16)),
    ("blocked-2-batch-blocks-split-2-padded", 20, 2, 13, dict(path="blocked"),
     dict(block_b=16, batch_blocks=2, split_k=2, row_align=16)),
    # the K loops as outer products summed after them (launch.Tile.outer), the backward on a transposed W_hh
    ("stepwise-tiles-padded-outer", 20, 3, 40, dict(path="stepwise", units=16), dict(block_k=16, row_align=16,
                                                                                    outer=True, outer_bwd=True)),
    ("blocked-3x3-tiles-outer-backward", 20, 2, 40, dict(path="blocked"), dict(block_j=16, block_k=8,
                                                                               outer_bwd=True)),
    # unrolled: SPLIT tiles of K 4 a trip (H 40: two trips of 16 and one of 8 part-masked)
    ("blocked-3x3-tiles-outer-unrolled-4", 20, 2, 40, dict(path="blocked"), dict(block_j=16, block_k=4, split_k=4,
                                                                                 outer=True, outer_bwd=True)),
    # longer trips (H 40: one of 32 and a part trip of 8; the backward's 3 x 40 columns: one of 64, a part trip of 56)
    ("blocked-3x3-tiles-outer-unrolled-16-backward-32", 20, 2, 40, dict(path="blocked"),
     dict(block_j=16, block_k=2, split_k=16, outer=True, outer_bwd=True, block_k_bwd=2, split_k_bwd=32)),
    # the backward's K loop apart from the forward's (launch.BWD_FIELDS)
    ("stepwise-2-batch-blocks-backward-apart", 20, 2, 24, dict(path="stepwise", units=8),
     dict(block_b=16, batch_blocks=2, block_k=16, split_k=2, block_k_bwd=8, split_k_bwd=1, num_stages_bwd=2)),
    # one dot (or outer-product accumulator) per tile for the three gates, a fourth of zeros masked (fuse_gates):
    # both kernels, split, padded, outer products, a part-masked last tile (H 40 = 32 + 8)
    ("blocked-3x3-tiles-fused-gates", 20, 3, 40, dict(path="blocked"), dict(block_j=16, block_k=16, fuse_gates=True)),
    ("stepwise-2-batch-blocks-fused-gates-split-2-padded", 20, 2, 24, dict(path="stepwise", units=8),
     dict(block_b=16, batch_blocks=2, block_k=16, fuse_gates=True, split_k=2, row_align=16)),
    ("stepwise-tiles-fused-gates-outer-forward", 20, 2, 40, dict(path="stepwise", units=16),
     dict(block_k=8, fuse_gates=True, outer=True)),
    ("blocked-3x3-tiles-fused-backward-only", 20, 2, 40, dict(path="blocked"), dict(block_j=16, block_k=16,
                                                                                    fuse_gates_bwd=True)),
    # the backward's tl.dot on a transposed copy of W_hh (transposed_bwd): a dot per gate, then fused, split, padded
    ("blocked-3x3-tiles-transposed-backward", 20, 2, 40, dict(path="blocked"), dict(block_j=16, block_k=16,
                                                                                    transposed_bwd=True)),
    ("stepwise-2-batch-blocks-fused-split-2-padded-transposed-backward", 20, 2, 24, dict(path="stepwise", units=8),
     dict(block_b=16, batch_blocks=2, block_k=16, fuse_gates=True, split_k=2, row_align=16, transposed_bwd=True)),
    # narrow programs (launch.Tile.per_sm's grids): a unit a program, one dot for the gates over 4 x 2 columns
    ("stepwise-1-unit-a-program-fused-gates", 20, 2, 13, dict(path="stepwise", units=1),
     dict(block_j=2, block_k=16, fuse_gates=True)),
    # the recurrent matmuls as exchanges of shares (launch.Tile.exchange, exchange_bwd): each alone, both with two
    # batch blocks, and the forward's phase 1 as outer products (exact float32)
    ("stepwise-exchange-forward-3-units-in-tiles-of-4", 20, 3, 13, dict(path="stepwise", units=3),
     dict(block_j=4, exchange=True)),
    ("stepwise-exchange-backward-16-units", 20, 3, 40, dict(path="stepwise", units=16),
     dict(block_j=16, exchange_bwd=True)),
    ("stepwise-2-batch-blocks-exchange-both", 20, 2, 24, dict(path="stepwise", units=5),
     dict(block_b=16, batch_blocks=2, exchange=True, exchange_bwd=True)),
    ("stepwise-exchange-outer-1-unit", 20, 3, 13, dict(path="stepwise", units=1),
     dict(block_j=2, exchange=True, exchange_bwd=True, outer=True)),
]
PERSISTENT = [
    ("persistent-B20-H200", 20, 20, 200, dict(path="persistent"), {}),
    ("persistent-B20-H650", 20, 35, 650, dict(path="persistent"), {}),
    ("persistent-B3-H40-3-programs", 3, 4, 40, dict(path="persistent", units=16), {}),
    ("persistent-B20-H650-tf32x3", 20, 35, 650, dict(path="persistent", fp32_precision="tf32x3"), {}),
    ("persistent-B20-H650-padded", 20, 35, 650, dict(path="persistent"), dict(row_align=16)),
    ("persistent-B20-H650-outer", 20, 35, 650, dict(path="persistent"), dict(outer=True, outer_bwd=True, block_k=16)),
    ("persistent-B20-H650-outer-unrolled", 20, 35, 650, dict(path="persistent"),
     dict(outer=True, outer_bwd=True, block_k=4, split_k=8, num_stages=1, num_warps=8, num_warps_bwd=8)),
    ("persistent-B20-H200-outer-64k-trips", 20, 20, 200, dict(path="persistent"),
     dict(outer=True, outer_bwd=True, block_k=4, split_k=16, num_stages=1, num_warps=8, block_k_bwd=4,
          split_k_bwd=16, num_warps_bwd=8)),
    ("persistent-B20-H650-fused-gates", 20, 35, 650, dict(path="persistent"), dict(fuse_gates=True, row_align=16)),
    ("persistent-B20-H650-backward-apart", 20, 35, 650, dict(path="persistent"),
     dict(block_k=16, num_stages=3, block_k_bwd=32, num_stages_bwd=1, split_k_bwd=2, num_warps_bwd=8)),
    ("persistent-B20-H650-transposed-backward", 20, 35, 650, dict(path="persistent"),
     dict(fuse_gates=True, transposed_bwd=True)),
    ("persistent-B20-H650-2-programs-an-SM", 20, 35, 650, dict(path="persistent"),
     dict(units=3, block_j=4, programs=217, per_sm=2, row_align=16)),
    ("persistent-B20-H1500-exchange-both-16-units", 20, 35, 1500, dict(path="persistent"),
     dict(units=16, block_j=16, programs=94, exchange=True, exchange_bwd=True, num_warps=8, num_warps_bwd=8)),
]


def plan_params():
    # On CUDA the persistent path only: the blocked and stepwise kernels are the same code without the grid
    # barrier, proven here in the interpreter, and every compile costs the GPU check's time-boxed test step.
    out = [pytest.param("cpu", *p, id=f"cpu-{p[0]}") for p in PLANS]
    return out + [pytest.param(*CUDA.values, *p, marks=CUDA.marks, id=f"cuda-{p[0]}") for p in PERSISTENT]


@pytest.mark.parametrize(("device", "name", "b", "t", "h", "plan_args", "fields"), plan_params())
def test_paths_and_tilings_match_reference(device, name, b, t, h, plan_args, fields):
    plan = launch.make_plan(b, h, torch.float32, torch.device(device), kind="GRU", **plan_args)
    plan = dataclasses.replace(plan, **fields)
    assert plan.path == plan_args["path"] and not plan.resident
    i = 6
    f64 = dict(device=device, dtype=torch.float64)
    bound = 1 / math.sqrt(h)
    args = [torch.randn(t, b, i, **f64), torch.randn(b, h, **f64)]
    args += [torch.empty(3 * h, k, **f64).uniform_(-bound, bound) for k in (i, h)]
    args += [torch.empty(3 * h, **f64).uniform_(-bound, bound) for _ in range(2)]
    ups = [torch.randn(t, b, h, **f64), torch.randn(b, h, **f64)]
    ref_in = [a.clone().requires_grad_(True) for a in args]
    ours_in = [a.float().requires_grad_(True) for a in args]
    want = naive_layer(*ref_in)
    got = GRULayerFunction.apply(*ours_in, plan)
    torch.autograd.backward(want, ups)
    torch.autograd.backward(got, [u.float() for u in ups])
    for key, g, w in zip(("y", "h_T"), got, want, strict=True):
        assert rel(g, w) < FP32_TOL, f"{name} {key}: {rel(g, w):.3g}"
    for key, a, r in zip(("x", "h_0", "w_ih", "w_hh", "b_ih", "b_hh"), ours_in, ref_in, strict=True):
        assert rel(a.grad, r.grad) < FP32_TOL, f"{name} grad {key}: {rel(a.grad, r.grad):.3g}"


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("exchange", [False, True], ids=["k-loop", "exchange"])
def test_inference_without_grad_matches_training_forward(device, exchange, monkeypatch):
    if exchange:  # (the forward's recurrent matmul as an exchange of shares, launch.Plan.exchange)
        make_plan = launch.make_plan
        monkeypatch.setattr(launch, "make_plan", lambda *a, **k: dataclasses.replace(make_plan(*a, **k), exchange=True))
    cell = TritonGRU(5, 13, 2).to(device)
    x = torch.randn(4, 3, 5, device=device)
    with torch.no_grad():
        y_eval, h_eval = cell(x)
    y, h = cell(x)
    assert torch.equal(y_eval, y.detach()) and torch.equal(h_eval, h.detach())


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("backward", [{}, dict(round_da_bwd=True, transposed_bwd=True),
                                      dict(exchange=True, exchange_bwd=True)], ids=["plan", "da16-wt", "exchange"])
def test_bfloat16_error_at_most_twice_torch(device, backward, monkeypatch):
    """Against the float64 reference, quantity by quantity, at most twice torch.nn.GRU's own bfloat16 error (the
    kernels round h_t to bfloat16 between steps, as torch's bfloat16 GRU does).  Seeded (0, not chosen).  Also with
    the backward's recurrent matmul on dA rounded to bfloat16 and a transposed W_hh (launch.Plan.round_da_bwd,
    transposed_bwd), and with both recurrent matmuls as exchanges of shares (exchange, exchange_bwd; in the
    interpreter one program exchanges with itself): the gradients stay within the bound."""
    if backward:
        make_plan = launch.make_plan
        monkeypatch.setattr(launch, "make_plan", lambda *a, **k: dataclasses.replace(make_plan(*a, **k), **backward))
    torch.manual_seed(0)
    t, b, i, h, n = 4, 20, 6, 13, 2
    cell = TritonGRU(i, h, n).to(device)
    others = {"ref": torch.nn.GRU(i, h, n).to(device, torch.float64), "torch": torch.nn.GRU(i, h, n).to(device)}
    for m in others.values():
        m.load_state_dict(cell.state_dict())
    others["torch"].to(torch.bfloat16)
    x, h0 = torch.randn(t, b, i, device=device), torch.randn(n, b, h, device=device)
    gy, gh = torch.randn(t, b, h, device=device), torch.randn(n, b, h, device=device)

    def run(module, dtype):
        xx, hh = x.to(dtype).requires_grad_(True), h0.to(dtype).requires_grad_(True)
        y, hT = module(xx, hh)
        ((y * gy.to(dtype)).sum() + (hT * gh.to(dtype)).sum()).backward()
        return {"y": y, "h_T": hT, "x": xx.grad, "h_0": hh.grad} | {k: p.grad for k, p in module.named_parameters()}

    ours, want, theirs = run(cell.to(torch.bfloat16), torch.bfloat16), run(others["ref"], torch.float64), \
        run(others["torch"], torch.bfloat16)
    for key in want:
        assert rel(ours[key], want[key]) <= 2 * rel(theirs[key], want[key]), key


def test_interpreter_is_reported_and_training_refused():
    cell = TritonGRU(4, 6, 1)
    assert cells.kind("triton_gru") == "GRU"
    assert "interpreter" in cells.detect_backend(cell, "cpu")
    refusal = TritonGRU.training_refusal("cpu")
    assert refusal.startswith("triton_gru would run") and "--allow-interpreter" in refusal
    plan = launch.plan_for(20, 200, torch.float32, 132, kind="GRU")  # (200, float32) is in TILES, not GRU_TILES
    assert plan.source == "heuristic" and not plan.resident and not plan.fuse_gates  # TILES is the LSTM's
    with pytest.raises(ValueError, match="kind"):
        launch.plan_for(20, 650, torch.float32, 132, kind="RNN")


def test_gru_tiles_have_their_own_table(monkeypatch):
    """GRU_TILES (filled by `python -m cells.triton_lstm.tune --cell triton_gru`) gives the GRU's plans, fused or not
    (three gates in one dot with a fourth of zeros), and the tile search varies the dot structure for the GRU too."""
    from cells.triton_lstm import tune

    tile = launch.Tile(units=10, block_j=16, block_k=32, num_warps=4, num_warps_bwd=8, num_stages=2)
    monkeypatch.setitem(launch.GRU_TILES, (650, torch.float32), tile)
    launch.plan_for.cache_clear()
    try:
        plan = launch.plan_for(20, 650, torch.float32, 132, kind="GRU")
        assert plan.source == "table" and (plan.units, plan.block_k, plan.num_stages) == (10, 32, 2)
        assert launch.plan_for(20, 650, torch.float32, 132).units == launch.TILES[(650, torch.float32)].units
        monkeypatch.setitem(launch.GRU_TILES, (650, torch.float32), dataclasses.replace(tile, fuse_gates=True))
        launch.plan_for.cache_clear()
        plan = launch.plan_for(20, 650, torch.float32, 132, kind="GRU")
        assert plan.fuse_gates and launch.launch_options(plan, torch.float32, True)["FUSE"]
    finally:
        launch.plan_for.cache_clear()
        launch.launch_options.cache_clear()
    assert {"fuse_gates", "fuse_gates_bwd"} <= set(tune.FIELDS["GRU"])


def test_outer_products_follow_the_table_refuse_what_they_replace_and_say_so(monkeypatch):
    """Table entries with ``outer`` / ``outer_bwd`` give plans with them, except where float32 is asked to run on
    the tensor cores (tf32, tf32x3: tl.dot, as the backend string says); each kernel gets its own flag; the launcher
    refuses outer products with a resident slice; the backend string names them."""
    tile = dataclasses.replace(launch.GRU_TILES[(650, torch.float32)], outer=True, split_k=2)
    monkeypatch.setitem(launch.GRU_TILES, (650, torch.float32), tile)
    launch.plan_for.cache_clear()
    launch.launch_options.cache_clear()
    try:
        plan = launch.plan_for(20, 650, torch.float32, 132, kind="GRU")
        assert plan.outer and not plan.outer_bwd and "forward's K loop as outer products" in plan.describe()
        assert "reduction split 2 ways" in plan.describe()  # (the backward's)
        assert not launch.plan_for(20, 650, torch.float32, 132, fp32_precision="tf32x3", kind="GRU").outer
        assert launch.launch_options(plan, torch.float32, False)["OUTER"]
        assert "OUTER" not in launch.launch_options(plan, torch.float32, True)
        both = dataclasses.replace(plan, outer_bwd=True, split_k=1)
        assert "OUTER" in launch.launch_options(both, torch.float32, True) and "K loops as" in both.describe()
        with pytest.raises(ValueError, match="outer products"):
            launch.launch_options(dataclasses.replace(plan, resident=True), torch.float32, False)
    finally:
        launch.plan_for.cache_clear()
        launch.launch_options.cache_clear()


def test_kernels_compile_for_hopper_without_a_gpu():
    """The compiled GRU kernels of the PTB medium layer (bfloat16, on the tensor cores) for sm_90 down to a cubin, no
    GPU needed: one release atomic per grid barrier, the counters reset, no register spills (docs/triton.md lists
    every preset and dtype)."""
    if "nvidia" not in pytest.importorskip("triton.backends").backends:
        pytest.skip("this triton build has no NVIDIA backend")
    for dtype in (torch.bfloat16,):
        plan = launch.plan_for(20, 650, dtype, 132, kind="GRU")
        assert plan.sync and plan.programs > 1
        for kernel in ("fwd", "bwd"):
            out, log = sm90.compile_kernel(kernel, plan, dtype, train=True, batch=20, hidden=650, kind="GRU")
            ptx = out.asm["ptx"]
            assert len(re.findall(r"@%p\d+ (?:red|atom)\.global\.gpu\.release\.add", ptx)) == 1, kernel
            assert len(re.findall(r"atom\.global\.gpu\.(?:relaxed\.)?exch", ptx)) == 2, kernel
            assert ("mma" in ptx) == (dtype == torch.bfloat16), kernel
            usage = sm90.usage(out, log)
            assert usage.spill_stores == usage.spill_loads == 0, f"{kernel} {dtype}: {usage}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available: the compiled kernels need a GPU")
@pytest.mark.parametrize(("t", "b"), [(8192, 1), (409, 20)], ids=["T8192-B1", "T409-B20"])
def test_cuda_long_windows_without_grad_match_cudnn(t, b):
    """Evaluation's shapes (lm.train.evaluate: batch 1 x 8192 steps, batch 20 x 409), no grad, TF32 off: the same
    outputs as torch.nn.GRU (tests/test_triton_lstm.py has the LSTM's; the GRU had none when its 100-step H200 run
    evaluated worse than uniform, see tests/test_triton_training.py)."""
    device = torch.device("cuda")
    cell = TritonGRU(200, 200, 2).to(device)
    ref = cells.build("cudnn_gru", 200, 200, 2).to(device)
    ref.load_state_dict(cell.state_dict())
    x, h0 = torch.randn(t, b, 200, device=device), torch.rand(2, b, 200, device=device) * 2 - 1
    with torch.no_grad():  # (TF32 is off: tests/conftest.py)
        y, h = cell(x, h0)
        y_ref, h_ref = ref(x, h0)
    assert y.abs().max() <= 1.0, "h' = (1 - z) n + z h must stay in [-1, 1] from h_0 in it"
    for key, got, want in (("y", y, y_ref), ("h", h, h_ref)):
        assert rel(got, want) < 1e-4, f"{key}: {rel(got, want):.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available: the compiled kernels need a GPU")
def test_cuda_barrier_counters_are_left_zero_and_reused():
    """As tests/test_triton_lstm.py's: persistent GRU launches in a row (forward, backward, forward without grad)
    repeat their results exactly and leave the shared grid-barrier counters zero."""
    device = torch.device("cuda")
    plan = launch.make_plan(20, 200, torch.float32, device, "persistent", kind="GRU")
    assert plan.sync
    x, h0 = torch.randn(35, 20, 200, device=device), torch.randn(20, 200, device=device)
    args = [x, h0] + [torch.randn(600, 200, device=device) / 15 for _ in range(2)] + \
        [torch.randn(600, device=device) / 15 for _ in range(2)]
    assert_launches_repeat_and_leave_counters_zero(GRULayerFunction, gru_inference, args, plan)
