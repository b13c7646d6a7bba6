"""min_gru and min_lstm (cells/minimal.py): the log-space parallel scan against the sequential recurrence.

float64: outputs, final state and the gradients of the input, the initial state and every parameter agree to
rounding (1e-10 relative).  float32 scan against the float64 recurrence: well under 1e-4 (bound 1e-5).  Random
inputs and random upstream gradients, fresh in every test; initial states of zeros, negative values, a mix, or
none.  Then the carried state across windows, dropout placement, no NaN/inf at extremes, and that a state_dict
of another kind is refused in one line.
"""

from __future__ import annotations

import pytest
import torch
from conftest import devices

import cells
from bench.cli import main
from cells.minimal import g, log_g, min_gru_step, min_lstm_step
from lm import checkpoint, config, data, train
from lm.errors import UsageError
from lm.model import LanguageModel

NAMES = ("min_gru", "min_lstm")
# (T, B, input, hidden, layers, initial state, chunk): T 1, T 37, B 1, H not a multiple of 8, 1-3 layers;
# chunk 8 scans T 37 in five chunks (the state carried between them), 64 (the default) in one.
SHAPES = [
    (1, 1, 5, 7, 1, "none", 64),
    (1, 3, 4, 13, 2, "randn", 64),
    (37, 1, 13, 9, 3, "negative", 64),
    (37, 4, 6, 13, 2, "zeros", 8),
    (7, 2, 11, 5, 1, "randn", 64),
    (20, 3, 4, 10, 3, "mixed", 8),
]
IDS = [f"T{t}-B{b}-I{i}-H{h}-L{n}-{s}-C{c}" for t, b, i, h, n, s, c in SHAPES]
FLOAT32_TOL = 1e-5  # ~100 float32 ulps; measured errors are about 5e-7 (see cells/minimal.py)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def initial_state(kind: str, n: int, b: int, h: int, device) -> torch.Tensor | None:
    if kind == "none":
        return None
    s = torch.randn(n, b, h, device=device, dtype=torch.float64)
    if kind == "zeros":
        return torch.zeros_like(s)
    if kind == "negative":
        return -s.abs() - 0.1
    if kind == "mixed":  # zeros, negative and positive values side by side
        return s * (torch.rand_like(s) < 0.5)
    return s


def run(module, x, h0, gy, gh):
    """Forward, backward with the given upstream gradients; returns y, the final state and every gradient."""
    x = x.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    y, h = module(x, h0)
    ((y * gy).sum() + (h * gh).sum()).backward()
    grads = {"x": x.grad} | {n: p.grad for n, p in module.named_parameters()}
    if h0 is not None:
        grads["h0"] = h0.grad
    return y, h, grads


def compare(name, shape, device, dtype, tol):
    t, b, i, h, n, state, chunk = shape
    ref = cells.build(name, i, h, n, scan="sequential").to(device=device, dtype=torch.float64)
    fast = cells.build(name, i, h, n, chunk=chunk).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(t, b, i, device=device, dtype=torch.float64)
    h0 = initial_state(state, n, b, h, device)
    gy = torch.randn(t, b, h, device=device, dtype=torch.float64)
    gh = torch.randn(n, b, h, device=device, dtype=torch.float64)

    y, hT, grads = run(fast, x.to(dtype), None if h0 is None else h0.to(dtype), gy.to(dtype), gh.to(dtype))
    y_ref, hT_ref, grads_ref = run(ref, x, h0, gy, gh)

    assert y.shape == (t, b, h) and y.dtype == dtype and hT.shape == (n, b, h)
    assert grads.keys() == grads_ref.keys() == {"x", *(["h0"] if h0 is not None else []),
                                                *(f"{w}_l{k}" for k in range(n) for w in ("weight", "bias"))}
    errors = {"output": rel(y, y_ref), "final state": rel(hT, hT_ref)}
    for key, grad_ref in grads_ref.items():
        assert grads[key] is not None, f"no gradient for {key}"
        assert torch.isfinite(grads[key]).all(), key
        errors[f"gradient of {key}"] = rel(grads[key], grad_ref)
    for what, err in errors.items():
        assert err < tol, f"{what}: {err:.3g} (bound {tol:g})"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_float64_scan_matches_the_recurrence(name, shape, device):
    compare(name, shape, device, torch.float64, 1e-10)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("name", NAMES)
def test_float32_scan_against_float64_recurrence(name, shape, device):
    compare(name, shape, device, torch.float32, FLOAT32_TOL)


def test_steps_are_the_papers_equations():
    """The linear-space steps (written to avoid 0/0 and 1 - z) equal the paper's formulas as written."""
    h, x = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 15, dtype=torch.float64) * 3
    k_z, k_h = x[:, :10].chunk(2, dim=1)
    z = torch.sigmoid(k_z)
    assert torch.allclose(min_gru_step(x[:, :10], h), (1 - z) * h + z * g(k_h), rtol=1e-13, atol=0)
    k_f, k_i, k_h = x.chunk(3, dim=1)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    assert torch.allclose(min_lstm_step(x, h), f / (f + i) * h + i / (f + i) * g(k_h), rtol=1e-13, atol=0)
    v = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert torch.equal(g(v), torch.where(v >= 0, v + 0.5, torch.sigmoid(v)))
    assert torch.allclose(log_g(v), torch.log(g(v)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_no_nan_or_inf_at_extremes(name, dtype):
    """Zero state, T 1, pre-activations of magnitude ~1e4 (saturated gates) or ~0, upstream gradients that are
    zero but at the last step (log 0 in the backward scan): outputs and gradients finite."""
    for scale, t, final_only in ((1.0, 1, False), (1e4, 1, False), (1e4, 9, False), (1e-30, 9, False),
                                 (1.0, 9, True), (1e4, 9, True)):
        cell = cells.build(name, 4, 6, 2).to(dtype)
        x = (torch.randn(t, 3, 4, dtype=dtype) * scale).requires_grad_(True)
        h0 = torch.zeros(2, 3, 6, dtype=dtype, requires_grad=True)
        y, h = cell(x, h0)
        (h[-1].sum() if final_only else (y * torch.randn_like(y)).sum() + h.sum()).backward()
        for what, v in [("y", y), ("h", h), ("x.grad", x.grad), ("h0.grad", h0.grad)] + \
                [(n, p.grad) for n, p in cell.named_parameters()]:
            assert torch.isfinite(v).all(), f"{what} not finite at scale {scale:g}, T {t}"
        if dtype == torch.float64:  # and still the recurrence's numbers
            seq = cells.build(name, 4, 6, 2, scan="sequential").to(dtype)
            seq.load_state_dict(cell.state_dict())
            assert rel(cell(x, h0)[0], seq(x, h0)[0]) < 1e-9


@pytest.mark.parametrize("chunk", [64, 4], ids=["C64", "C4"])
@pytest.mark.parametrize("name", NAMES)
def test_carried_state_across_windows(name, chunk):
    """[0:T] then [T:2T] from the carried state equals [0:2T] at once, as the LM's training windows rely on."""
    cell = cells.build(name, 5, 11, 2, chunk=chunk).double()
    x = torch.randn(26, 3, 5, dtype=torch.float64)
    y_all, h_all = cell(x)
    y1, h1 = cell(x[:13])
    y2, h2 = cell(x[13:], h1)
    assert rel(torch.cat([y1, y2]), y_all) < 1e-12 and rel(h2, h_all) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_dropout_between_layers_as_nn_lstm(name):
    """Eval mode is dropout-free; training with dropout 0 is the same; training with dropout p drops every layer's
    output but the last, exactly as F.dropout after each inner layer (same random stream)."""
    x, h0 = torch.randn(6, 3, 4), torch.randn(3, 3, 7)
    cell = cells.build(name, 4, 7, 3, dropout=0.4)
    plain = cells.build(name, 4, 7, 3, dropout=0.0)
    plain.load_state_dict(cell.state_dict())
    y_plain, h_plain = plain.eval()(x, h0)
    for module in (cell.eval(), plain.train()):
        y, h = module(x, h0)
        assert torch.equal(y, y_plain) and torch.equal(h, h_plain)
    torch.manual_seed(3)
    y, h = cell.train()(x, h0)
    torch.manual_seed(3)
    out, finals = x, []
    for k in range(3):
        out, final = cell.layer(k, out, h0[k])
        finals.append(final)
        if k < 2:
            out = torch.nn.functional.dropout(out, 0.4, training=True)
    assert torch.equal(y, out) and torch.equal(h, torch.stack(finals))
    assert not torch.equal(y, y_plain)


@pytest.mark.parametrize("name", NAMES)
def test_options_kind_and_backend(name):
    cell = cells.build(name, 4, 6, 2)
    assert cells.kind(name) == {"min_gru": "minGRU", "min_lstm": "minLSTM"}[name]
    gates = {"min_gru": 2, "min_lstm": 3}[name]
    assert {k: tuple(v.shape) for k, v in cell.state_dict().items()} == {
        "weight_l0": (gates * 6, 4), "bias_l0": (gates * 6,), "weight_l1": (gates * 6, 6), "bias_l1": (gates * 6,)}
    assert all(p.abs().max() <= 6 ** -0.5 for p in cell.parameters())
    assert cells.detect_backend(cell, "cpu").startswith("PyTorch log-space parallel scan (logcumsumexp")
    assert "one linear-space step" in cells.detect_backend(cells.build(name, 4, 6, scan="sequential"), "cpu")
    info = {c.name: c for c in cells.available("cpu")}[name]
    assert info.runnable and "not nn." in info.note
    with pytest.raises(ValueError, match="scan must be one of parallel, sequential"):
        cells.build(name, 4, 6, scan="fast")
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        cells.build(name, 4, 6, chunk=0)


@pytest.mark.parametrize(("src", "dst"), [("loop_lstm", "min_lstm"), ("min_lstm", "cudnn_lstm"),
                                          ("min_gru", "loop_gru"), ("min_gru", "min_lstm")])
def test_state_dict_of_another_kind_is_one_line_usage_error(src, dst):
    made = {c: LanguageModel(c, 20, 8, 2, 0.0, 0.1) for c in (src, dst)}
    with pytest.raises(UsageError, match=f"does not fit a {cells.kind(dst)} model") as exc:
        made[dst].load_state_dict(made[src].state_dict())
    assert "\n" not in str(exc.value)


def test_resume_refuses_a_checkpoint_of_another_kind(corpus_dir, tmp_path, capsys):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    saved = {}
    for cell in ("loop_lstm", "min_gru"):
        rec = train.train(cfg, cell, corpus, torch.device("cpu"), seed=0, results_dir=tmp_path / cell,
                          max_steps=3, progress=False)
        assert rec["status"] == "ok" and rec["kind"] == cells.kind(cell)
        saved[cell] = rec["checkpoint"]
    base = ["train", "--config", "tiny", "--epochs", "1", "--data-dir", str(corpus_dir), "--no-verify",
            "--results", str(tmp_path / "r"), "--quiet", "--resume"]
    for src, dst, message in (("loop_lstm", "min_lstm", "holds a LSTM (loop_lstm); it cannot resume a minLSTM"),
                              ("min_gru", "loop_gru", "holds a minGRU (min_gru); it cannot resume a GRU"),
                              ("min_gru", "min_lstm", "holds a minGRU (min_gru); it cannot resume a minLSTM")):
        capsys.readouterr()
        assert main([*base, "--cell", dst, "--checkpoint", str(saved[src])]) == 2
        err = "".join(ln for ln in capsys.readouterr().err.splitlines(keepends=True)
                      if not ln.startswith("rnnbench heartbeat: "))
        assert err.count("\n") == 1 and err.startswith("rnnbench: error: ") and message in err, err
    assert checkpoint.load(saved["min_gru"])["record"]["kind"] == "minGRU"
