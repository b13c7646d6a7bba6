"""What a GPU check's tile searches found, as lines of the tile tables (``cells/triton_lstm/launch.py``: ``TILES``,
``GRU_TILES``) under the figures that back them: printed by ``python -m bench.gpu_check merge``, for a person to paste.
A table takes an entry only with the ``bench-tuned`` run's figures (the micro-benchmarks of the winners beside the cuDNN
cells, in one run); a winner no benchmark timed is marked so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from bench.report import data
from cells.triton_lstm import launch, tune


def tile_entries(gpu: Path) -> list[str]:
    """What a check's tile searches under ``gpu`` (``<slug>/tiles.json``, ``tiles-small.json``) found, as entries of the
    tile tables with the ``bench-tuned`` steps' figures beside them (:func:`table_entries`):
    printed by ``merge``, for a person to paste into ``cells/triton_lstm/launch.py``; nothing when no search ran."""
    out = []
    for search in sorted(gpu.glob("*/tiles*.json")) if gpu.is_dir() else []:
        benches = tuple(p for p in (search.parent / "tuned.json", search.parent / "tuned-bf16.json") if p.is_file())
        try:
            entries = table_entries(search, benches)
        except ValueError as exc:
            out.append(f"rnnbench: warning: {exc}")
            continue
        if entries:
            out += [f"# The tile tables' entries from {search} (cells/triton_lstm/launch.py: TILES, GRU_TILES):",
                    *entries]
    return out


def table_entries(search: str | Path, benches: tuple[str | Path, ...] = ()) -> list[str]:
    """The winners of the tile searches in ``search`` (a ``--json`` file of :mod:`cells.triton_lstm.tune`) as entries
    of the tile tables, Python lines to paste, each under a comment with its measurements: from ``benches``
    (micro-benchmark JSON of the GPU check's ``bench-tuned`` steps, which timed the winners with ``--bench-tiles``
    beside the cuDNN cell in one run) the fwd+bwd and the LM step's time and peak memory against the cuDNN cell's, and
    from the search its winner's fwd+bwd against its start tile's (the table's entry then).  A search whose winner is
    its start changes nothing and is said so; a winner that no benchmark timed is marked ``NOT BENCHMARKED``.  Raises
    ValueError, one line, on a file that is not such a record."""
    found = tune.file_tiles(search)
    records = json.loads(Path(search).read_text())["records"]
    timed = [b for path in benches for b in _benchmarks(path)]
    out = []
    for (kind, hidden, dtype), (tile, source) in found.items():
        cell = next(c for c, k in tune.KINDS.items() if k == kind)
        preset = next(p for p, (h, _) in tune.PRESETS.items() if h == hidden)
        dt = str(dtype).removeprefix("torch.")
        mine = [r for r in records if isinstance(r, dict) and r.get("cell", "triton_lstm") == cell
                and r.get("preset") == preset and str(r.get("dtype")).removeprefix("torch.") == dt
                and r.get("fwdbwd_s") is not None]
        start, best = mine[0], next(r for r in mine if r.get("best"))
        head = f"# {cell} {preset} {dt}, {source}"
        if best["tile"] == start["tile"]:
            out += [head, "#   no tile beat the search's start (the table's entry): nothing to change", ""]
            continue
        reference = "cudnn_lstm" if kind == "LSTM" else "cudnn_gru"
        lines = [head, _benchmarked(timed, preset, cell, reference, "-bf16" if dtype == torch.bfloat16 else "",
                                    Path(search).name)]
        if not lines[-1]:
            lines[-1] = (f"#   NOT BENCHMARKED: no fwd+bwd of {cell} with these tiles beside {reference} in "
                         f"{', '.join(Path(b).name for b in benches) or 'no benchmark file'}; not for the table yet")
        said = (f"#   the search: fwd+bwd {best['fwdbwd_s'] * 1e3:.3f} ms from its start's "
                f"{start['fwdbwd_s'] * 1e3:.3f} (cuDNN there {best['cudnn_fwdbwd_s'] * 1e3:.3f})")
        if best.get("fwdbwd_graph_s") and start.get("fwdbwd_graph_s"):
            said += (f"; as a CUDA graph {best['fwdbwd_graph_s'] * 1e3:.3f} from {start['fwdbwd_graph_s'] * 1e3:.3f}"
                     f" (cuDNN {best['cudnn_fwdbwd_graph_s'] * 1e3:.3f})")
        out += [*lines, said, f"({hidden}, torch.{dt}): {_tile_source(tile)},", ""]
    return out


def _benchmarked(timed: list[dict], preset: str, cell: str, reference: str, suffix: str, tiles: str) -> str:
    """A comment line of ``cell``'s figures with the tiles of the file ``tiles`` beside ``reference``'s, from the
    benchmarks ``timed``: fwd+bwd (eager, then as a CUDA graph) and the LM step (eager with its peak memory, then as a
    CUDA graph); "" without the eager fwd+bwd of both."""
    said = []
    for name, what in (("fwdbwd", "fwd+bwd"), ("fwdbwd-cuda-graph", "as a CUDA graph"), ("step", "LM step"),
                       ("step-cuda-graph", "as a CUDA graph")):
        mine = _timed(timed, name + suffix, preset, cell, tiles)
        ref = _timed(timed, name + suffix, preset, reference)
        if not (mine and ref):
            if not said:
                return ""
            continue
        ms = [b["stats"]["median"] * 1e3 for b in (mine, ref)]
        said.append(f"{what} {ms[0]:.3f} ms, {reference} {ms[1]:.3f}")
        if name == "fwdbwd":
            said[-1] += f" ({mine['_file']})"
        if name == "step":  # (its memory: the target is the eager step's)
            mib = [(b["extra_info"].get("peak_memory_bytes") or 0) / 2**20 for b in (mine, ref)]
            said[-1] += f", peak {mib[0]:.1f} MiB against {mib[1]:.1f}"
    return "#   " + "; ".join(said)


def _timed(benchmarks: list[dict], pass_: str, preset: str, cell: str, tiles: str | None = None) -> dict | None:
    """The first of ``benchmarks`` of that pass, preset and cell (and whose backend names the tile file ``tiles``)."""
    return next((b for b in benchmarks if (b["extra_info"].get("pass"), b["extra_info"].get("shape"),
                                           b["extra_info"].get("cell")) == (pass_, preset, cell)
                 and (tiles is None or tiles in str(b["extra_info"].get("backend")))), None)


def _benchmarks(path: str | Path) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON file as the report reads it (:mod:`bench.report.data`), each with
    ``_file`` (its name); ValueError, one line, when the report could not use it."""
    skipped = []
    doc = data.read_bench_file(Path(path), skipped)
    if doc is None:
        raise ValueError(f"{path}: not a micro-benchmark JSON file ({skipped[0][1]})")
    return [{**b, "_file": Path(path).name} for b in doc["benchmarks"]]


def _tile_source(tile: launch.Tile) -> str:
    """``Tile(...)`` as the tables write it: the fields that differ from their defaults, and a backward field only
    where it differs from the forward's (the search states them all, :func:`cells.triton_lstm.launch.apart`)."""
    bwd = {f"{k}_bwd" for k in launch.BWD_FIELDS
           if launch.kernel_value(tile, k, True) == launch.kernel_value(tile, k, False)}
    shown = [(f.name, getattr(tile, f.name)) for f in dataclasses.fields(tile)
             if f.name not in bwd and (f.default is dataclasses.MISSING or getattr(tile, f.name) != f.default)]
    return f"Tile({', '.join(f'{k}={v!r}' for k, v in shown)})"
