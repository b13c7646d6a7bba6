"""The training step as one unit: eager and compiled modes agree; a mode that cannot run here is refused."""

from __future__ import annotations

import json

import pytest
import torch

from lm import config, data, step, train
from lm.errors import UsageError
from lm.model import LanguageModel
from tests.test_train import cli


def test_compiled_step_trains_like_the_eager_step(corpus_dir):
    corpus = data.load(corpus_dir, check_md5=False)
    # Not tiny's own learning rate 1 and init 0.5: there training is chaotic, and the compiled kernels' rounding
    # (1e-7 relative at the first steps) grows to 50% within 250 steps (measured); at 0.3 / 0.1 it stays < 3e-7.
    cfg = config.preset("tiny", epochs=2, learning_rate=0.3, init_scale=0.1)
    runs = {mode: train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), seed=4, results_dir=None,
                              progress=False, step_mode=mode) for mode in ("eager", "compile")}
    eager, compiled = runs["eager"], runs["compile"]
    assert eager["status"] == compiled["status"] == "ok", compiled.get("error")
    assert compiled["step_mode"] == "compile" and "torch.compile" in compiled["step"]
    for e, c in zip(eager["epochs"], compiled["epochs"], strict=True):
        assert c["train_ppl"] == pytest.approx(e["train_ppl"], rel=1e-4)
        assert c["valid_ppl"] == pytest.approx(e["valid_ppl"], rel=1e-4)
    assert compiled["test_ppl"] == pytest.approx(eager["test_ppl"], rel=1e-4)
    # Compilation is timed apart from training and its steps leave words/sec.
    assert compiled["compile_steps"] >= 1 and compiled["compile_seconds"] > 0
    steps = cfg.epochs * eager["steps_per_epoch"]
    assert compiled["train_words"] == (steps - compiled["compile_steps"]) * cfg.batch_size * cfg.num_steps
    assert eager["compile_steps"] == 1, "an eager run sets aside only its first step"


def test_eager_step_is_the_tutorials_update():
    """One eager step equals the update written out: loss x num_steps, clip to max_grad_norm, p -= lr * g."""
    torch.manual_seed(0)
    cfg = config.preset("tiny", max_grad_norm=0.05)
    model = LanguageModel("loop_gru", 30, 8, 2, 0.0, 0.5)
    ref = LanguageModel("loop_gru", 30, 8, 2, 0.0, 0.5)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randint(0, 30, (cfg.num_steps, 3)), torch.randint(0, 30, (cfg.num_steps, 3))
    loss, norm, _ = step.make_step("eager", model, cfg, torch.device("cpu"))(x, y, None)

    logits, _ = ref(x)
    ref_loss = torch.nn.functional.cross_entropy(logits.view(-1, 30), y.view(-1))
    (ref_loss * cfg.num_steps).backward()
    grads = [p.grad for p in ref.parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, cfg.max_grad_norm / (total.item() + 1e-6))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6) and norm.item() == pytest.approx(total.item())
    for p, r, g in zip(model.parameters(), ref.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), r.detach() - cfg.learning_rate * scale * g, rtol=1e-5, atol=1e-6)


def test_cuda_graph_mode_is_refused_without_cuda(corpus_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    model = LanguageModel("cudnn_lstm", 30, 8, 1, 0.0, 0.1)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        step.make_step("cuda-graph", model, config.preset("tiny"), torch.device("cpu"))
    r = cli("train", "--cell", "cudnn_lstm", "--config", "tiny", "--device", "cpu", "--step", "cuda-graph",
            "--data-dir", str(corpus_dir), "--no-verify", "--results", str(tmp_path / "res"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs a CUDA device" in r.stderr, r.stderr
    assert not list((tmp_path / "res").glob("runs/*.json")), "nothing half-written"


def test_step_mode_is_part_of_the_runs_identity(corpus_dir, tmp_path):
    """Records and checkpoints name the mode; a checkpoint resumes only in its own mode."""
    results = tmp_path / "res"
    r = cli("train", "--cell", "cudnn_lstm", "--config", "tiny", "--device", "cpu", "--step", "compile",
            "--epochs", "1", "--max-steps", "5", "--data-dir", str(corpus_dir), "--no-verify", "--results",
            str(results), "--quiet")
    assert r.returncode == 0, r.stderr
    (path,) = (results / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert "-cudnn_lstm-compile-cpu-" in rec["run_id"] and rec["step_mode"] == "compile"
    ckpt = results / "checkpoints" / "tiny-cudnn_lstm-compile-cpu-seed0.pt"
    assert ckpt.is_file()
    r = cli("train", "--cell", "cudnn_lstm", "--config", "tiny", "--device", "cpu", "--resume", "--checkpoint",
            str(ckpt), "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results))
    assert r.returncode == 2 and "resume it with --step compile" in r.stderr, r.stderr


def test_unknown_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="accepted: eager, compile, cuda-graph"):
        step.make_step("turbo", LanguageModel("loop_lstm", 10, 4, 1, 0.0, 0.1), config.preset("tiny"),
                       torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("cell", ["cudnn_lstm", "triton_lstm"])
def test_cuda_graph_step_trains_like_the_eager_step(corpus_dir, cell):
    """The whole step as one CUDA graph (the GPU check's full runs train so) gives the eager step's per-epoch
    perplexities: the state carried through its static buffers from window to window, the graph captured anew when
    the learning rate decays (epochs 2 and 3 here), evaluation unchanged.  No dropout: a graph's replays draw other
    random numbers than eager calls."""
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=3, decay_after=1, learning_rate=0.3, init_scale=0.1)
    runs = {mode: train.train(cfg, cell, corpus, torch.device("cuda"), seed=4, results_dir=None, progress=False,
                              step_mode=mode) for mode in ("eager", "cuda-graph")}
    eager, graph = runs["eager"], runs["cuda-graph"]
    assert eager["status"] == graph["status"] == "ok", graph.get("error")
    assert graph["step_mode"] == "cuda-graph" and "CUDA graph" in graph["step"]
    assert [e["lr"] for e in graph["epochs"]] == [e["lr"] for e in eager["epochs"]] == pytest.approx([0.3, 0.15, 0.075])
    for e, g in zip(eager["epochs"], graph["epochs"], strict=True):
        assert g["train_ppl"] == pytest.approx(e["train_ppl"], rel=1e-4)
        assert g["valid_ppl"] == pytest.approx(e["valid_ppl"], rel=1e-4)
    assert graph["test_ppl"] == pytest.approx(eager["test_ppl"], rel=1e-4)
