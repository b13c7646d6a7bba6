"""Evaluation in long windows is the tutorial's one-window-at-a-time evaluation; runs time each phase."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lm import config, data, train
from lm.heartbeat import Heartbeat, last_line
from lm.model import LanguageModel, detach
from tests.test_train import cli


def plain_loop(model: LanguageModel, tokens: torch.Tensor, batch_size: int, num_steps: int) -> float:
    """The tutorial's evaluation written out: every window in order, state carried, loss summed in float64."""
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for _, x, y in data.batches(tokens, batch_size, num_steps):
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1),
                                                 reduction="sum").double().item()
            count += y.numel()
    return math.exp(total / count)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every kind of cell, trained a few steps on the toy corpus (an untrained model predicts uniformly)."""
    from tests.conftest import write_corpus

    corpus = data.load(write_corpus(tmp_path_factory.mktemp("corpus")), check_md5=False)
    models = {}
    for cell in ("cudnn_lstm", "loop_gru"):
        torch.manual_seed(0)
        model = LanguageModel(cell, corpus.vocab_size, 16, 2, 0.0, 0.5)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        state = None
        for _, x, y in data.batches(corpus.train, 4, 5):
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            state = detach(state)
        models[cell] = model
    return corpus, models


@pytest.mark.parametrize("cell", ["cudnn_lstm", "loop_gru"])
@pytest.mark.parametrize(("batch_size", "num_steps", "span"), [(1, 1, None), (1, 1, 7), (3, 5, None), (3, 5, 12)],
                         ids=["B1-T1-default", "B1-T1-span7", "B3-T5-default", "B3-T5-span12"])
def test_long_windows_equal_the_tutorials_loop(trained, cell, batch_size, num_steps, span):
    corpus, models = trained
    model = models[cell]
    fast = train.evaluate(model, corpus.test, batch_size, num_steps, torch.device("cpu"), progress=False, span=span)
    slow = plain_loop(model, corpus.test, batch_size, num_steps)
    assert slow < 10, "the model has learned something, so the comparison is not between uniform predictions"
    assert fast == pytest.approx(slow, rel=1e-6)


@pytest.mark.parametrize(("n", "batch_size", "num_steps", "span"), [(101, 1, 1, 8), (101, 3, 5, 7), (64, 4, 3, 100)])
def test_spans_cover_exactly_the_words_of_the_windows(n, batch_size, num_steps, span):
    tokens = torch.arange(n)
    xs, ys = zip(*[(x, y) for _, x, y in data.batches(tokens, batch_size, num_steps)], strict=True)
    sx, sy = zip(*data.spans(tokens, batch_size, num_steps, span), strict=True)
    assert torch.equal(torch.cat(xs), torch.cat(sx)) and torch.equal(torch.cat(ys), torch.cat(sy))
    assert all(len(x) <= span for x in sx)


def test_record_times_each_phase_and_time_to_quality(corpus_dir):
    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=3, target_valid_ppl=6.0)
    rec = train.train(cfg, "cudnn_lstm", corpus, torch.device("cpu"), seed=1, results_dir=None, progress=False)
    assert rec["status"] == "ok", rec["error"]
    epochs = rec["epochs"]
    assert rec["train_seconds"] > 0 and rec["valid_seconds"] > 0 and rec["test_seconds"] > 0
    assert rec["valid_seconds"] == pytest.approx(sum(e["valid_seconds"] for e in epochs))
    elapsed = [e["elapsed_seconds"] for e in epochs]
    assert elapsed == sorted(elapsed)
    assert elapsed[-1] == pytest.approx(sum(e["train_seconds"] + e["valid_seconds"] for e in epochs))
    ttq = rec["time_to_quality"]
    first = next(e for e in epochs if e["valid_ppl"] <= 6.0)
    assert ttq == {"target_valid_ppl": 6.0, "seconds": first["elapsed_seconds"], "epoch": first["epoch"]}
    assert train.time_to_quality(epochs, 1.0) == {"target_valid_ppl": 1.0, "seconds": None, "epoch": None}


def test_max_eval_words_scores_a_prefix_of_each_stream_and_says_so(corpus_dir, tmp_path):
    """A smoke run's evaluation (--max-eval-words N) is the tutorial's perplexity of each stream's first N words;
    the record states N and the report keeps such runs out of the comparison with the paper."""
    from bench.report import training as report_training
    from lm import checkpoint

    corpus = data.load(corpus_dir, check_md5=False)
    cfg = config.preset("tiny", epochs=1)
    path = tmp_path / "ckpt.pt"
    rec = train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), seed=3, results_dir=None, progress=False,
                      checkpoint_path=path, max_eval_words=40)
    assert rec["status"] == "ok" and rec["max_eval_words"] == 40
    model = LanguageModel("loop_lstm", corpus.vocab_size, cfg.hidden_size, cfg.num_layers, 0.0, cfg.init_scale)
    model.load_state_dict(checkpoint.load(path)["model"])
    prefix = corpus.test[:41]
    assert rec["test_ppl"] == pytest.approx(plain_loop(model, prefix, cfg.test_batch_size, cfg.test_num_steps),
                                            rel=1e-6)
    assert rec["epochs"][0]["valid_ppl"] == pytest.approx(
        plain_loop(model, corpus.valid[:41], cfg.batch_size, cfg.num_steps), rel=1e-6)
    rows = report_training.runs_frame([rec]).assign(config="small")  # as if a smoke run of a paper preset
    assert rows["max_eval_words"].tolist() == [40]
    assert "first 40 words" in "\n".join(report_training.training_section(rows, {}))
    assert "(no finished run of a paper preset yet)" in "\n".join(report_training.paper_section(rows))
    assert "ours: `loop_lstm`" in "\n".join(report_training.paper_section(rows.assign(max_eval_words=math.nan)))
    with pytest.raises(train.UsageError, match="--max-eval-words must be a positive integer"):
        train.train(cfg, "loop_lstm", corpus, torch.device("cpu"), results_dir=None, max_eval_words=0)


def test_heartbeat_line_says_phase_epoch_step():
    hb = Heartbeat("small loop_lstm cpu", every=0)
    hb.update(phase="train", epoch=2, epochs=13, step=120, steps=2323, words=4000)
    line = hb.line()
    assert line.startswith("rnnbench heartbeat: small loop_lstm cpu | phase train | epoch 2/13 | step 120/2323 |")
    assert "words/sec" in line and "last progress" in line
    assert last_line(f"noise\n{line}\nmore noise\n") == line.removeprefix("rnnbench heartbeat: ")


def test_quiet_run_still_beats(corpus_dir, tmp_path):
    results = tmp_path / "results"
    # (enough steps that training outlasts a few beats on a loaded machine: 20 took under one beat there)
    r = cli("train", "--cell", "loop_lstm", "--config", "tiny", "--device", "cpu", "--epochs", "1", "--max-steps",
            "400", "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results), "--quiet", "--heartbeat",
            "0.02")
    assert r.returncode == 0, r.stderr
    beats = [ln for ln in r.stderr.splitlines() if ln.startswith("rnnbench heartbeat: tiny loop_lstm cpu | phase ")]
    assert beats, r.stderr
    phases = {ln.split(" | ")[1] for ln in beats}
    assert "phase train" in phases
    (path,) = (results / "runs").glob("*.json")
    assert json.loads(path.read_text())["test_seconds"] > 0


def test_commit_only_from_the_projects_own_checkout(tmp_path):
    from lm import env

    assert env.git_commit() and len(env.git_commit().removesuffix("-dirty")) == 40
    exported = tmp_path / "outer" / "rnnbench"  # an exported copy inside some other repository
    exported.mkdir(parents=True)
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path / "outer")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "outer"), "-c", "user.name=x", "-c", "user.email=x@y",
                    "commit", "-q", "--allow-empty", "-m", "unrelated"], check=True)
    assert env.git_commit(exported) is None
    assert env.git_commit(tmp_path) is None  # no git at all


def test_command_paths_are_relative_to_the_working_directory(tmp_path):
    from lm import env

    cmd = ["rnnbench", "train", "--data-dir", str(tmp_path / "ptb"), f"--results={tmp_path / 'res'}", "--seed", "0"]
    assert env.relative_command(cmd, tmp_path / "work") == \
        "rnnbench train --data-dir ../ptb --results=../res --seed 0"
