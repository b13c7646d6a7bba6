"""Every registered cell of kind LSTM or GRU against torch.nn.LSTM / torch.nn.GRU with copied weights.

float64: outputs, final state and the gradients of the input, every weight and
the initial state agree to rounding.  float32: relative error against the
float64 reference well under 1e-4 (TF32 off).  Random inputs and random
upstream gradients, fresh in every test.  Cells of other kinds (min_gru, min_lstm: parameters of their own)
are compared with their own reference in tests/test_minimal.py; the generic tests here run every cell.
"""

from __future__ import annotations

import pytest
import torch
from conftest import devices, replayed_and_eager

import cells

# (T, B, input, hidden, layers, with initial state)
SHAPES = [
    (1, 1, 5, 7, 1, False),
    (1, 3, 4, 13, 2, True),
    (6, 1, 13, 9, 3, True),
    (5, 4, 6, 13, 2, False),
    (7, 2, 11, 5, 1, True),
]
IDS = [f"T{t}-B{b}-I{i}-H{h}-L{n}-{'state' if s else 'nostate'}" for t, b, i, h, n, s in SHAPES]

# Cells with their own, longer test file run here on the smallest shapes only.
HEAVY = {"triton_lstm", "triton_gru"}
# Compiled cells compile a graph per dtype and shape (about 5 s each): two awkward shapes, batch 1 and batch > 1,
# 2+ layers, with and without initial state (tests/test_compiled.py has the cell-specific tests).
COMPILED = {"compiled_lstm", "compiled_gru"}
COMPILED_SHAPES = ("T6-B1-I13-H9-L3-state", "T5-B4-I6-H13-L2-nostate")

# float32 against the float64 reference, relative error of the norm (TF32 off): 1e-5 is ~100 float32 ulps,
# ample for the chains here when every product and sum is float32.  cuDNN's float32 RNN (FMA math with TF32 off)
# is looser: measured on one NVIDIA H200 (cuDNN 91900, 2026-11-27, ../shared/gpu-runs/2026-11-27-h200/) its worst
# error over these shapes was 1.74e-05 (gradient of x, cudnn_lstm T6-B1-I13-H9-L3-state, batch 1 through 3
# layers); its bound is 5e-5, about 3x that worst case because every test draws fresh random inputs.  Every
# measured error is kept in the JUnit report (``record_property``), so each GPU check re-measures the spread.
# The Triton bounds stay at 1e-5.
FLOAT32_TOL = 1e-5
FLOAT32_TOL_CUDNN_ON_CUDA = 5e-5


def reference(kind: str, cell: torch.nn.Module) -> torch.nn.Module:
    ref = getattr(torch.nn, kind)(cell.input_size, cell.hidden_size, cell.num_layers)
    ref.load_state_dict(cell.state_dict())
    return ref


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def run(module, x, state, gy, gstate):
    """Forward, backward with the given upstream gradients; returns outputs and every gradient."""
    x = x.detach().clone().requires_grad_(True)
    if state is not None:
        state = tuple(s.detach().clone().requires_grad_(True) for s in state)
    y, final = module(x, None if state is None else (state if len(state) == 2 else state[0]))
    finals = final if isinstance(final, tuple) else (final,)
    loss = (y * gy).sum() + sum((f * g).sum() for f, g in zip(finals, gstate, strict=True))
    loss.backward()
    grads = {"x": x.grad} | {n: p.grad for n, p in module.named_parameters()}
    if state is not None:
        grads |= {f"state{i}": s.grad for i, s in enumerate(state)}
    return y, finals, grads


def check(name, shape, device, dtype, tol, record=None):
    t, b, i, h, n, with_state = shape
    if cells.unavailable_reason(name, device):
        pytest.skip(f"{name} cannot run on {device}: {cells.unavailable_reason(name, device)}")
    kind = cells.kind(name)
    cell = cells.build(name, i, h, n).to(device=device, dtype=dtype)
    ref = reference(kind, cell).to(device=device, dtype=torch.float64)
    n_state = 2 if kind == "LSTM" else 1
    x = torch.randn(t, b, i, device=device, dtype=torch.float64)
    state = tuple(torch.randn(n, b, h, device=device, dtype=torch.float64) for _ in range(n_state)) \
        if with_state else None
    gy = torch.randn(t, b, h, device=device, dtype=torch.float64)
    gstate = tuple(torch.randn(n, b, h, device=device, dtype=torch.float64) for _ in range(n_state))

    cast = (lambda v: v.to(dtype)) if dtype != torch.float64 else (lambda v: v)
    y, finals, grads = run(cell, cast(x), None if state is None else tuple(map(cast, state)), cast(gy),
                           tuple(map(cast, gstate)))
    y_ref, finals_ref, grads_ref = run(ref, x, state, gy, gstate)

    assert y.shape == (t, b, h) and y.dtype == dtype
    assert grads.keys() == grads_ref.keys()
    errors = {"output": rel(y, y_ref)}
    for k, (f, f_ref) in enumerate(zip(finals, finals_ref, strict=True)):
        assert f.shape == (n, b, h)
        errors[f"final state {k}"] = rel(f, f_ref)
    for key in grads_ref:
        assert grads[key] is not None, f"no gradient for {key}"
        errors[f"gradient of {key}"] = rel(grads[key], grads_ref[key])
    if record is not None:
        record("max_rel_error", f"{max(errors.values()):.3e}")
        record("worst", max(errors, key=errors.get))
    for what, err in errors.items():
        assert err < tol, f"{what}: {err:.3g} (bound {tol:g})"


def shapes_for(name):
    if name in COMPILED:
        return [(s, i) for s, i in zip(SHAPES, IDS, strict=True) if i in COMPILED_SHAPES]
    return [(s, i) for s, i in zip(SHAPES, IDS, strict=True) if name not in HEAVY or s[0] * s[1] * s[4] <= 8]


def torch_kind(name) -> bool:
    """Whether cell ``name`` has torch.nn.LSTM's / torch.nn.GRU's parameters, so they are its reference here."""
    try:
        return cells.kind(name) in ("LSTM", "GRU")
    except ImportError:  # check() skips it with the reason
        return True


TORCH_KIND = [name for name in cells.names() if torch_kind(name)]
PARAMS = [pytest.param(name, s, id=f"{name}-{i}") for name in TORCH_KIND for s, i in shapes_for(name)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(("name", "shape"), PARAMS)
def test_float64_matches_torch(name, shape, device):
    check(name, shape, device, torch.float64, 1e-10)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(("name", "shape"), PARAMS)
def test_float32_against_float64_reference(name, shape, device, record_property):
    tol = FLOAT32_TOL_CUDNN_ON_CUDA if name.startswith("cudnn_") and device == "cuda" else FLOAT32_TOL
    check(name, shape, device, torch.float32, tol, record_property)


@pytest.mark.parametrize("name", TORCH_KIND)
def test_state_dict_moves_between_cells_of_one_kind(name):
    kind = cells.kind(name)
    other = "cudnn_lstm" if kind == "LSTM" else "cudnn_gru"
    src = cells.build(other, 6, 10, 2)
    dst = cells.build(name, 6, 10, 2)
    assert {k: v.shape for k, v in dst.state_dict().items()} == {k: v.shape for k, v in src.state_dict().items()}
    dst.load_state_dict(src.state_dict())


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
@pytest.mark.parametrize("name", [n for n in cells.names() if n not in HEAVY])
def test_dropout_between_layers_only(name):
    """With dropout 1-eps nearly everything between layers is zeroed in training; eval mode is deterministic."""
    torch.manual_seed(0)
    cell = cells.build(name, 4, 6, 2, dropout=0.5)
    x = torch.randn(3, 2, 4)
    cell.eval()
    assert torch.equal(cell(x)[0], cell(x)[0])
    one_layer = cells.build(name, 4, 6, 1, dropout=0.5).train()
    assert torch.equal(one_layer(x)[0], one_layer(x)[0]), "no dropout on a single layer's output"
    cell.train()
    assert not torch.equal(cell(x)[0], cell(x)[0])


def test_unknown_cell_lists_the_known_names():
    with pytest.raises(cells.UnknownCellError, match="known cells: cudnn_lstm, cudnn_gru"):
        cells.build("nope", 4, 4)


@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(num_layers=-1), dict(input_size=0), dict(dropout=1.0)])
@pytest.mark.parametrize("name", cells.names())
def test_bad_sizes_are_refused(name, bad):
    args = dict(input_size=4, hidden_size=4, num_layers=1, dropout=0.0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        cells.build(name, **args)


@pytest.mark.parametrize("name", cells.names())
def test_a_state_of_the_wrong_shape_is_refused(name):
    """A state for fewer layers (or another batch) is an error, as torch.nn.LSTM's, never a stack that runs only as
    many layers as the state has."""
    rnn = cells.build(name, 4, 4, 2)
    x = torch.randn(3, 5, 4)
    kind = cells.cell_class(name).mode
    for shape in ((1, 5, 4), (2, 1, 4)):
        state = torch.zeros(shape)
        with pytest.raises((ValueError, RuntimeError), match=r"(size|shape).*\[?[12], [15], 4"):
            rnn(x, (state, state) if kind == "LSTM" else state)


def test_available_lists_every_cell_with_backend_or_reason():
    infos = cells.available("cpu")
    assert [c.name for c in infos] == cells.names()
    for c in infos:
        assert c.detail
    by_name = {c.name: c for c in infos}
    assert by_name["cudnn_lstm"].runnable and by_name["cudnn_lstm"].detail in ("oneDNN", "ATen native (cpu)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", [n for n in cells.names() if n not in COMPILED])
def test_cuda_graph_replay_with_new_inputs_equals_eager(name):
    """fwd+bwd captured into one CUDA graph (as bench's test_fwdbwd_graph and --step cuda-graph capture it) and
    replayed on new values in the same buffers: the outputs and every gradient those of an eager call on them.  A cell
    that cannot be captured says so (lm.step.refusal) and is skipped with its reason."""
    from lm.step import refusal

    why = refusal("cuda-graph", torch.device("cuda"), name)
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    t, b, i, h, n = 5, 4, 6, 13, 2
    cell = cells.build(name, i, h, n).cuda()
    x = torch.randn(t, b, i, device="cuda", requires_grad=True)
    dy = torch.randn(t, b, h, device="cuda")
    for k, (g, w) in enumerate(replayed_and_eager(cell, x, dy)):
        assert rel(g, w) < 1e-5, f"{name}: tensor {k} of the replay differs from eager by {rel(g, w):.3g}"
