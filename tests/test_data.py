"""PTB loading, verification and batching: on a corpus the tests write, and on real PTB when PTB_DIR is set."""

from __future__ import annotations

import pytest
import torch

from lm import data
from lm.errors import UsageError


def test_vocabulary_and_streams(corpus_dir):
    c = data.load(corpus_dir, check_md5=False)
    text = (corpus_dir / "ptb.train.txt").read_text()
    lines = text.count("\n")
    assert len(c.train) == len(text.split()) + lines  # one <eos> per line
    assert c.words[:1] and "<eos>" in c.words and "<unk>" in c.words
    counts = torch.bincount(c.train, minlength=c.vocab_size)
    assert (counts[:-1] >= counts[1:]).all(), "ids ordered by descending count"
    assert c.words[c.train[-1]] == "<eos>"


def test_batches_follow_ptb_producer():
    stream = torch.randperm(1000)
    b, t = 7, 5
    n = data.epoch_size(stream, b, t)
    assert n == (1000 // b - 1) // t
    rows = stream[: b * (1000 // b)].view(b, -1)
    seen = list(data.batches(stream, b, t))
    assert [i for i, _, _ in seen] == list(range(n))
    for i, x, y in seen:
        assert x.shape == y.shape == (t, b)
        assert torch.equal(x, rows[:, i * t:(i + 1) * t].t())
        assert torch.equal(y, rows[:, i * t + 1:(i + 1) * t + 1].t())
    assert [i for i, _, _ in data.batches(stream, b, t, start=3)] == list(range(3, n))


def test_too_short_for_one_batch():
    with pytest.raises(UsageError, match="too few"):
        next(data.batches(torch.arange(10), 4, 5))


def test_wrong_checksum_names_file_and_both_sums(corpus_dir):
    expected = r"ptb.train.txt: wrong MD5 checksum \(expected f26c4b92.*, found [0-9a-f]{32}\)"
    with pytest.raises(UsageError, match=expected):
        data.load(corpus_dir)


def test_missing_file_in_named_folder(corpus_dir):
    (corpus_dir / "ptb.valid.txt").unlink()
    with pytest.raises(UsageError, match="lacks ptb.valid.txt"):
        data.load(corpus_dir, check_md5=False)


def test_missing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PTB_DIR", raising=False)
    with pytest.raises(UsageError, match="does not exist"):
        data.load(tmp_path / "nowhere")


def test_env_var_is_used(corpus_dir, monkeypatch):
    monkeypatch.setenv("PTB_DIR", str(corpus_dir))
    assert data.locate() == corpus_dir


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"the cat\x00\x01\x02 sat", "looks binary"),
    ("caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8"),
])
def test_hostile_files(corpus_dir, content, message):
    (corpus_dir / "ptb.train.txt").write_bytes(content)
    with pytest.raises(UsageError, match=message):
        data.load(corpus_dir, check_md5=False)


def test_unknown_words_map_to_unk(corpus_dir):
    with open(corpus_dir / "ptb.valid.txt", "a") as f:
        f.write(" zebra xylophone \n")
    c = data.load(corpus_dir, check_md5=False)
    assert c.words[c.valid[-2]] == "<unk>"


def test_unknown_words_without_unk_token_are_an_error(corpus_dir):
    for name in data.FILES:
        path = corpus_dir / name
        path.write_text(path.read_text().replace("<unk>", "odd"))
    with open(corpus_dir / "ptb.test.txt", "a") as f:
        f.write(" zebra \n")
    with pytest.raises(UsageError, match=r"ptb.test.txt: \d+ word\(s\) not in the training vocabulary"):
        data.load(corpus_dir, check_md5=False)


def test_download_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "URL", "file:///nonexistent/{name}")
    with pytest.raises(UsageError, match="could not download ptb.train.txt"):
        data.download("ptb.train.txt", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ptb.valid.txt").write_text("not the real file\n")
    monkeypatch.setattr(data, "URL", f"file://{src}/{{name}}")
    dest = tmp_path / "dest"
    with pytest.raises(UsageError, match="wrong MD5 checksum"):
        data.download("ptb.valid.txt", dest)
    assert list(dest.iterdir()) == []


@pytest.mark.ptb
def test_real_ptb_counts(ptb_dir):
    c = data.load(ptb_dir)
    assert c.vocab_size == 10_000
    assert (len(c.train), len(c.valid), len(c.test)) == (929_589, 73_760, 82_430)
    assert data.epoch_size(c.train, 20, 20) == 2323
    assert data.epoch_size(c.train, 20, 35) == 1327
