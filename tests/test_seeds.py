"""``rnnbench train --seeds``: one process per seed, one record each; ``--threads`` is applied and recorded."""

from __future__ import annotations

import json

from bench.cli import main


def test_train_seeds_makes_one_record_per_seed_with_its_threads(corpus_dir, tmp_path, capsys):
    results = tmp_path / "r"
    rc = main(["train", "--cell", "loop_lstm", "--config", "tiny", "--epochs", "1", "--max-steps", "2", "--device",
               "cpu", "--data-dir", str(corpus_dir), "--no-verify", "--results", str(results), "--quiet",
               "--seeds", "3,5", "--threads", "1", "--heartbeat", "0"])
    assert rc == 0, capsys.readouterr()
    recs = sorted((json.loads(p.read_text()) for p in (results / "runs").glob("*.json")), key=lambda r: r["seed"])
    assert [r["seed"] for r in recs] == [3, 5] and all(r["status"] == "ok" for r in recs)
    assert all(r["env"]["torch_threads"] == 1 for r in recs)
    assert all("--seed " in r["command"] and "--seeds" not in r["command"] for r in recs)
    assert recs[0]["test_ppl"] != recs[1]["test_ppl"]


def test_train_seeds_with_one_checkpoint_file_is_one_line_exit_2(corpus_dir, tmp_path, capsys):
    rc = main(["train", "--cell", "loop_lstm", "--config", "tiny", "--data-dir", str(corpus_dir), "--no-verify",
               "--results", str(tmp_path / "r"), "--seeds", "0,1", "--checkpoint", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--checkpoint" in err
