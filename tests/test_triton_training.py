"""The fused Triton cells inside the LM harness, against their cuDNN counterparts from the same initial weights:
the training step (lm.step, eager: forward, loss, backward, clipping, SGD) over consecutive windows with the state
carried, then lm.train.evaluate in its long windows at the training batch and at batch 1.  The layer tests
(tests/test_triton_lstm.py, tests/test_triton_gru.py) check one call; this checks what a training run does with
many: launches in a row on one stream, weights updated in place between them, the state handed from one window to
the next, and evaluation's no-grad windows of hundreds to thousands of steps.

Why it exists: on the H200 (results/runs/20261128T055327-small-triton_gru-cuda-295c33.json) triton_gru trained 100
steps of small to a training perplexity like loop_gru's, then scored valid 1.27e5 and test 1.50e5, worse than a
uniform guess (10^4), while every layer test passed.  That alone proves nothing: at the small preset's learning
rate of 1 every GRU's training windows spike past twice the vocabulary now and then (11 to 16 of the first 100 on
the CPU, cuDNN's included: results/gru-spikes/), and a model evaluated mid-spike scores like one.  What can tell a
wrong kernel from an unlucky moment is this comparison, step by step from the same weights, on random words (no
spikes: the trajectories stay together); the ``gpu`` cases run it compiled at the PTB small sizes.

Float32 throughout, TF32 off for cuDNN and torch's GEMMs (tests/conftest.py; the Triton cells run exact float32), so
both models do the same arithmetic up to summation order; over a few dozen steps of SGD at the tutorial's learning
rate of 1 that order moves the losses by ~1e-6 relative, far inside the bounds."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import devices

from lm import config
from lm.model import LanguageModel
from lm.step import make_step
from lm.train import evaluate

pytest.importorskip("triton", reason="the Triton cells need triton (a dependency on Linux)")

PAIRS = [("triton_lstm", "cudnn_lstm"), ("triton_gru", "cudnn_gru")]
# Per device: vocabulary, hidden size, window (num_steps), batch, training steps, words evaluated.  CUDA: the PTB
# small preset's sizes, and 8192 words, so that batch 1 runs one window of 8192 steps (lm.train.EVAL_WORDS) and
# batch 20 one of 409, as in a real run.  CPU (the interpreter): small enough for CI.
SIZES = {"cpu": (50, 16, 4, 3, 3, 40), "cuda": (10000, 200, 20, 20, 30, 8193)}
LOSS_TOL = 1e-4  # per-step training loss, relative
PARAM_TOL = 1e-3  # every parameter after training, relative norm of the difference
PPL_TOL = 1e-4  # evaluation perplexity, relative


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(("cell", "ref"), PAIRS, ids=[p[0] for p in PAIRS])
def test_training_and_evaluation_match_cudnn(device, cell, ref):
    vocab, hidden, t, b, steps, eval_words = SIZES[device]
    device = torch.device(device)
    cfg = config.preset("small", hidden_size=hidden, num_steps=t, batch_size=b)
    torch.manual_seed(0)
    ours = LanguageModel(cell, vocab, hidden, cfg.num_layers, 0.0, cfg.init_scale).to(device)
    theirs = LanguageModel(ref, vocab, hidden, cfg.num_layers, 0.0, cfg.init_scale).to(device)
    theirs.load_state_dict(ours.state_dict())
    stream = torch.randint(0, vocab, (steps * t + 1, b), device=device)
    losses = {}
    for name, model in (("ours", ours), ("theirs", theirs)):
        model.train()
        step, state, got = make_step("eager", model, cfg, device), None, []
        for i in range(steps):
            x, y = stream[i * t:(i + 1) * t], stream[i * t + 1:(i + 1) * t + 1]
            loss, _, state = step(x, y, state)
            got.append(loss.item())
        losses[name] = got
    for i, (a, w) in enumerate(zip(losses["ours"], losses["theirs"], strict=True)):
        assert math.isfinite(a) and abs(a - w) <= LOSS_TOL * abs(w), \
            f"{cell}: training loss of step {i} {a:.6g}, {ref} {w:.6g}"
    mine = dict(ours.named_parameters())
    for key, p in theirs.named_parameters():
        assert rel(mine[key], p) < PARAM_TOL, f"{cell}: {key} after training: {rel(mine[key], p):.3g}"
    # Evaluation in lm.train.evaluate's long windows: at the training batch, then at batch 1 (the test set's).
    words = torch.randint(0, vocab, (eval_words,), device="cpu")
    for batch in (b, 1):
        got = evaluate(ours, words, batch, t, device, progress=False)
        want = evaluate(theirs, words, batch, t, device, progress=False)
        assert math.isfinite(got) and abs(got - want) <= PPL_TOL * want, \
            f"{cell}: evaluation at batch {batch}: perplexity {got:.6g}, {ref} {want:.6g}"
