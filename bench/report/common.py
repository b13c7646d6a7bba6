"""What the report's sections share: the baselines, the published figures, and how cells, runs, dates and numbers are
written in its tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

import cells
from bench.machine import name_slug
from bench.report.data import _num
from lm import config as lm_config

BASELINE = "cudnn_lstm"
BASELINE_OF_KIND = {"LSTM": "cudnn_lstm", "GRU": "cudnn_gru"}
# At a glance's last row per preset: every cell of every kind (the minimal RNNs too, another model each), against
# cudnn_lstm -- the question "which recurrent cell" as a user asks it.
ANY = "any"


def _of_kind(df: pd.DataFrame, kind) -> pd.DataFrame:
    """``df``'s rows of ``kind``; every row for :data:`ANY`."""
    return df if kind == ANY else df[df["kind"] == kind]


def _baseline_cell(kind) -> str | None:
    return BASELINE_OF_KIND["LSTM"] if kind == ANY else BASELINE_OF_KIND.get(kind)


# Micro-benchmark passes of another arithmetic than float32 with exact matmuls: fwdbwd-bf16, step-tf32, ...
NUMERIC_PASSES = ("bf16", "tf32")
PTB_VOCAB = 10000
PTB_PRESETS = ("small", "medium", "large")

# Published perplexities.  Zaremba, Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization",
# arXiv:1409.2329, Table 1 (small = their non-regularized LSTM).  TensorFlow's PTB tutorial,
# tensorflow/models tutorials/rnn/ptb/ptb_word_lm.py, the results table in its docstring.
PAPER = {
    "small": {"epochs": 13, "paper": (120.7, 114.5), "tutorial": (37.99, 121.39, 115.91)},
    "medium": {"epochs": 39, "paper": (86.2, 82.7), "tutorial": (48.45, 86.16, 82.07)},
    "large": {"epochs": 55, "paper": (82.2, 78.4), "tutorial": (37.87, 82.62, 78.29)},
}
# Time to quality: the presets' targets (lm/config.py), also for records made before the field existed.
TARGET_VALID_PPL = {name: lm_config.PRESETS[name].target_valid_ppl for name in PTB_PRESETS}
PAPER_SOURCE = ("Zaremba, Sutskever & Vinyals 2014, *Recurrent Neural Network Regularization*, "
                "[arXiv:1409.2329](https://arxiv.org/abs/1409.2329), Table 1 (small = the non-regularized LSTM); "
                "TensorFlow PTB tutorial, `tensorflow/models` `tutorials/rnn/ptb/ptb_word_lm.py`, docstring table")

# A run's planned length: the report keeps the latest run of each (a shorter run never hides a longer one).
LENGTH_KEYS = ["cell", "mode", "numerics", "epochs_planned", "steps_per_epoch", "max_eval_words", "overrides"]
# Runs compared with each other (the ratio to cudnn_lstm, the seed statistics): one step mode, one arithmetic.
LIKE_KEYS = ["mode", "numerics"]


def _date(iso) -> str:
    return str(iso)[:10] if iso else ""


def _dates(values) -> str:
    ds = sorted({_date(v) for v in values if v and not (isinstance(v, float) and math.isnan(v))})
    if not ds:
        return "unknown date"
    return ds[0] if len(ds) == 1 else f"{ds[0]} to {ds[-1]}"


def _tags(mode, numerics) -> str:
    """What a cell's label adds for its step mode and arithmetic: ``cuda-graph, tf32``; empty for eager float32."""
    tags = [t for t in (mode, numerics) if isinstance(t, str) and t not in ("eager", "fp32")]
    return ", ".join(tags)


# --- markdown -------------------------------------------------------------------------------------------------

def _fmt(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(df: pd.DataFrame, formats: dict[str, str]) -> str:
    out = pd.DataFrame({c: [_fmt(v, formats.get(c, ".4g")) for v in df[c]] for c in df.columns})
    return out.to_markdown(index=False, disable_numparse=True)


def _device_title(device, device_name) -> str:
    return f"{device}: {device_name}" if isinstance(device_name, str) and device_name else str(device)


def _slug(device, device_name) -> str:
    return name_slug(str(device), device_name if isinstance(device_name, str) else None)


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.3g} ms"


def epoch_steps(runs: pd.DataFrame) -> pd.Series:
    """Per run (``runs_frame``'s rows), the steps of a whole epoch at its batch size and window length as far as the
    records know: the most steps an epoch of any record of a PTB preset with the same batch size and number of steps
    (``--max-steps`` truncates epochs; medium and large share theirs); a config that is not a PTB preset, its own
    most."""
    if runs.empty:
        return pd.Series(dtype=float)
    group = [runs["config"].where(~runs["config"].isin(PTB_PRESETS), "PTB"), runs["batch_size"], runs["num_steps"]]
    steps = pd.to_numeric(runs["steps_per_epoch"], errors="coerce")
    return steps.groupby(group, dropna=False).transform("max")


def _published_schedule(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether it trained a PTB preset's published schedule: all its epochs, each whole (every window:
    :func:`epoch_steps`), with the preset's settings."""
    if runs.empty:
        return pd.Series(dtype=bool)
    epochs = runs["config"].map(lambda c: PAPER[c]["epochs"] if c in PAPER else math.nan)
    return ((runs["epochs_done"] == epochs) & (runs["epochs_planned"] == epochs) & (runs["overrides"] == "")
            & (runs["steps_per_epoch"] == epoch_steps(runs)))


def _full_schedule(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs of a PTB preset's whole schedule (:func:`_published_schedule`), evaluated on the whole streams,
    in exact float32."""
    if runs.empty:
        return runs
    return runs[_published_schedule(runs) & (runs["status"] == "ok") & (runs["numerics"] == "fp32")
                & runs["max_eval_words"].isna()].copy()


def _epochs_text(r, full_steps) -> str:
    """A run's epochs done of planned, ``1/1``, with its steps an epoch where ``--max-steps`` truncated them (``1/1
    (400/1327 steps)``) and its evaluation where ``--max-eval-words`` cut it."""
    steps = _num(r.steps_per_epoch)
    cut = f" ({steps:.0f}/{full_steps:.0f} steps)" if steps < _num(full_steps) else ""
    return f"{r.epochs_done}/{r.epochs_planned}{cut}{_eval_mark(r.max_eval_words)}"


DIVERGED = "⚠"


def _diverged(ppl, vocab) -> bool:
    """Whether a perplexity is worse than a uniform guess over the vocabulary (a model that diverged, or was evaluated
    right after a training spike)."""
    return _num(ppl) > _num(vocab)


def _ppl(ppl, vocab):
    """A perplexity for a table: the number, or ``150257.31 ⚠`` where it is worse than a uniform guess."""
    return f"{ppl:.2f} {DIVERGED}" if _diverged(ppl, vocab) else ppl


def _divergence_legend(latest: pd.DataFrame, results: Path | None) -> list[str]:
    """The line under a training table that says what its ⚠ marks mean, where it has any."""
    if not any(_diverged(p, r.vocab_size) for r in latest.itertuples() for p in (r.final_valid_ppl, r.test_ppl)):
        return []
    vocab = _num(latest["vocab_size"].max())
    spikes = results is not None and (Path(results) / "gru-spikes" / "README.md").is_file()
    return [f"{DIVERGED}: a perplexity above the vocabulary size ({vocab:.0f} words), worse than a uniform guess: the "
            "model diverged, or was evaluated right after a spike of its training (the `spikes` column of `train.md` "
            "counts them)" + ("; see [`gru-spikes/README.md`](gru-spikes/README.md) for the GRUs' spikes at the "
                              "small preset's learning rate" if spikes else "") + ".", ""]


def _eval_mark(words) -> str:
    """What the epochs column adds for a run evaluated on a prefix of the streams (``--max-eval-words``)."""
    return "" if words is None or math.isnan(words) else f" (valid/test ppl: first {words:.0f} words)"


def _cell_label(r) -> str:
    """The cell, with its step mode when that is not eager and its arithmetic when that is not float32 with exact
    matmuls (``compiled_lstm [compile]``, ``cudnn_lstm [cuda-graph, tf32]``) and the settings it changed from its
    preset (``cudnn_gru (learning_rate 0.5)``)."""
    tag = _tags(getattr(r, "mode", "eager"), getattr(r, "numerics", "fp32"))
    label = f"{r.cell} [{tag}]" if tag else r.cell
    changed = getattr(r, "overrides", "")
    return f"{label} ({changed})" if isinstance(changed, str) and changed else label


def _ttq(r) -> str:
    """Time to quality of one row: ``812 s (ep 3)``, ``— (ep 3, not timed)`` for records older than phase
    timing, ``—`` when the target was never reached."""
    if isinstance(r.time_to_quality_epoch, (int, float)) and not math.isnan(r.time_to_quality_epoch):
        if math.isnan(r.time_to_quality_s):
            return f"— (ep {r.time_to_quality_epoch:.0f}, not timed)"
        return f"{r.time_to_quality_s:.0f} s (ep {r.time_to_quality_epoch:.0f})"
    return "—"


def _common(values: pd.Series):
    """The most frequent value, or None."""
    values = values.dropna()
    return values.mode().iloc[0] if len(values) else None


def _load(start: float, end: float, others: int = 0) -> str:
    """The machine's 1-minute load average at the start and the end of a run, e.g. ``2.0→3.1``, and how many other
    recorded runs trained beside it (:func:`beside`): ``2.0→3.1, beside 1``."""
    text = "—" if math.isnan(start) else f"{start:.1f}" if math.isnan(end) else f"{start:.1f}→{end:.1f}"
    return text + (f", beside {others}" if others else "")


def _rate_note(rate: dict | None | list) -> str:
    """The matmul rate a table's % matmul divides by; a list: the rates of its rows (each the rate as it
    stood at the row's own time, :func:`rate_for`), stated as a range where they differ."""
    used = list({id(r): r for r in (rate if isinstance(rate, list) else [rate]) if r}.values())
    if not used:
        return " No matmul rate measured for this device: the % matmul column is empty."
    rate = used[0]
    cpu_threads = rate.get("device") == "cpu" and rate.get("torch_threads")
    threads = f", {rate['torch_threads']} thread(s)" if cpu_threads else ""
    if len(used) == 1:
        return (f" Matmul rate (fp32, {rate.get('fp32_matmul_n')}²{threads}): "
                f"{_num(rate.get('fp32_matmul_flops')) / 1e9:.4g} GFLOP/s, measured {_date(rate.get('measured'))}.")
    flops = sorted(_num(r.get("fp32_matmul_flops")) / 1e9 for r in used)
    dates = sorted(_date(r.get("measured")) for r in used)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f" Matmul rates (fp32, {rate.get('fp32_matmul_n')}²{threads}): {flops[0]:.4g} to {flops[-1]:.4g} GFLOP/s, "
            f"measured {when}; each row's % matmul divides by the rate as it stood at the row's "
            "time (the last measured before it, else the first after).")


def _short_backends(cell: pd.Series, backend: pd.Series) -> tuple[pd.Series, list[str]]:
    """A table's backend column cut to what ran (the text before its first "(" or "; ": "Triton 3.6.0 compiled",
    "cuDNN 91900"), and the lines under the table that give each cut one in full, once a cell -- the tables stay
    readable where a backend string runs to 300 characters."""
    short, full = [], {}
    for c, b in zip(cell, backend, strict=True):
        if not isinstance(b, str):
            short.append(b)
            continue
        head = b.split("(")[0].split("; ")[0].strip()
        short.append(head)
        if head != b and f"`{c}`" not in full.setdefault(b, []):
            full[b].append(f"`{c}`")
    lines = [f"- {', '.join(cells_)}: {b}" for b, cells_ in full.items()]
    return pd.Series(short, index=cell.index), (["Backends in full:", "", *lines, ""] if lines else [])


def _cell_order(cell: str) -> int:
    names = cells.names()
    return names.index(cell) if cell in names else len(names)


def _sort_key(s: pd.Series) -> pd.Series:
    return s.map(_cell_order) if s.name == "cell" else s
