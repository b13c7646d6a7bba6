"""Launchers: choose the path and the tiles, allocate, and launch the kernels of :mod:`.kernels`.

Paths (see the kernels' docstring for what each program owns):

* ``persistent`` -- CUDA only.  ``P`` programs per batch block split the hidden
  units so that each one's slice of ``W_hh`` is small, one grid barrier per
  step; grid ``P x NB <= number of SMs`` (times ``Tile.per_sm``, the programs a tile
  puts on one SM) and a cooperative launch, so every program is resident (the
  driver refuses the launch rather than deadlock).
* ``blocked`` -- one program per batch block owns all of H, no grid barrier.
  Always used by the interpreter, which runs programs one after another and
  would deadlock at a barrier; the CUDA fallback when the persistent grid does
  not fit the SMs.
* ``stepwise`` -- the persistent split with one launch per step (the launch is
  the barrier).  For testing the multi-program split in the interpreter.

The kernels are interpreted when the tensors are not on CUDA, or when
``TRITON_INTERPRET=1`` is set; :func:`runs_interpreted` says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import triton

from . import FP32_PRECISIONS, PATHS

# Largest per-program W_hh slice (4 * BLOCK_J * padded H elements) kept in registers by default.  Compiled,
# none: ptxas spills even at H = 13, since the tl.dot operand layout replicates the slice across warps.
RESIDENT_MAX = {"interpreter": 1 << 18, "compiled": 0}


@dataclass(frozen=True)
class Tile:
    """How one layer is split on the GPU: P = ceil(H / units) programs per batch block, NB = ceil(B / block_b)."""

    units: int  # hidden units per program
    block_j: int  # hidden units per tile (>= units: one tile per program)
    block_k: int  # reduction tile over H
    num_warps: int  # forward kernel
    num_warps_bwd: int  # backward kernel
    num_stages: int  # software pipelining of the K loop (1: none)
    fuse_gates: bool = False  # one tl.dot per reduction tile for the gates (GRU: 3 and one of zeros), else one per gate
    split_k: int = 1  # the reduction over H split this many ways inside a program (a power of two; kernels' SPLIT);
    # with outer products, the K loop's BLOCK_K tiles per trip, unrolled (their loads issued together)
    row_align: int = 1  # rows of what the recurrent matmuls read padded to a multiple of this (16: aligned)
    outer: bool = False  # forward: the K loop as outer products summed over k after it, no tl.dot (kernels' OUTER)
    outer_bwd: bool = False  # backward: the same, on a transposed copy of W_hh
    # The backward kernel's own K loop where it differs from the forward's (None: as the forward; see BWD_FIELDS).
    block_k_bwd: int | None = None
    num_stages_bwd: int | None = None
    split_k_bwd: int | None = None
    fuse_gates_bwd: bool | None = None
    transposed_bwd: bool = False  # backward: tl.dot reads a transposed copy of W_hh (kernels' WT, _w_t)
    round_da_bwd: bool = False  # backward, 16-bit dtypes: its matmul reads dA rounded to the compute dtype (Plan's)
    # Programs the persistent grid may put on one SM (P x NB <= per_sm x SMs; the cooperative launch refuses a grid
    # whose programs cannot all be resident).  1: a program per SM, as every table entry so far.  2 or more: smaller
    # programs side by side on an SM, each with its own warps and CTA barriers, to hide one another's latency (the
    # occupancy notes in docs/triton.md; untimed, the tile search tries it through ``units``).
    per_sm: int = 1
    # The forward's recurrent matmul as an exchange instead of a K loop (kernels' lstm_fwd_xchg_kernel): each program
    # sends its units' rank-``units`` share of every program's pre-activations through L2 and sums the shares of its
    # own; the persistent and stepwise paths (untimed: the tile search and the probe try it).
    exchange: bool = False
    exchange_bwd: bool = False  # the backward's dA_{t+1} W_hh the same way (kernels' lstm_bwd_xchg_kernel)


# Fields of Tile and Plan that the backward kernel may set apart from the forward, each as "<field>_bwd" (None: the
# forward's value).  The two K loops differ in shape: the forward reduces over H into gates x units columns, the
# backward over the gates' NG H rows of dA into the units' columns (4 times the trips at the same K tile, a quarter of
# the width).  So they need not want the same tiles: on the H200 (results/gpu/cuda-nvidia-h200/perf-probe.log, medium,
# float32) three pipeline stages took the forward to 0.79 of its time and the backward to 0.51, a 4-way split of the
# reduction the forward to 2.56 and the backward to 0.64.  The warps and the outer products were apart from the start
# (num_warps / num_warps_bwd, outer / outer_bwd); units, block_j and row_align are shared (one plan of the programs
# and of the rings both kernels read).
BWD_FIELDS = ("block_k", "num_stages", "split_k", "fuse_gates")


def kernel_value(tile: Tile | Plan, field: str, backward: bool):
    """``field`` (one of :data:`BWD_FIELDS`) of ``tile`` as the forward or the backward kernel takes it."""
    value = getattr(tile, f"{field}_bwd") if backward else None
    return getattr(tile, field) if value is None else value


def both(tile, **changes):
    """``tile`` (a :class:`Tile` or :class:`Plan`) with ``changes`` made for both kernels: a field of
    :data:`BWD_FIELDS` changed this way drops the backward's own value."""
    return dataclasses.replace(tile, **changes, **{f"{k}_bwd": None for k in changes if k in BWD_FIELDS})


def apart(tile: Tile) -> Tile:
    """``tile`` with every backward field of :data:`BWD_FIELDS` stated (the forward's value where it had none): the
    same kernels, but a change of a forward field no longer carries over to the backward (the tile search's start)."""
    return dataclasses.replace(tile, **{f"{k}_bwd": kernel_value(tile, k, True) for k in BWD_FIELDS})


# The PTB presets on Hopper (132 SMs: H100 SXM, H200), per (hidden size, dtype); batch rows per program are
# max(16, next power of two of B) up to 64, so B = 20 runs in one batch block of 32 and B = 1 in one of 16.
# Programs x units x batch blocks at B = 20: 50 x 4 x 1 (small), 130 x 5 x 1 (medium), 125 x 12 x 1 (large).
#
# Medium and large: MEASURED -- the tile search (``python -m cells.triton_lstm.tune --presets medium,large --dtypes
# float32,bfloat16 --cell triton_lstm,triton_gru``, the GPU check's perf part) on one NVIDIA H200, 2026-11-28, commit
# ea67f19, Triton 3.6.0, torch 2.11.0+cu130: results/gpu/cuda-nvidia-h200/tiles.json (every candidate; "best" marks
# these) and perf-tune.log.  Each comment gives the entry's median fwd+bwd of the 2-layer stack at batch 20 and, for
# scale, the cuDNN cell's fwd+bwd from the micro-benchmarks of the same session (results/bench/cuda-nvidia-h200/
# micro.json, bf16.json), the figure that counts: the tile search's own cuDNN figure came out 0-35% slower (its
# harness differs, and in bfloat16 torch warned that the reference's weights were not one contiguous chunk: fixed).
# The greedy search ran one round from the earlier entries; it is a local optimum, not a proof.
# Small: AWAITING GPU MEASUREMENT (the search has not covered it): the split the earlier heuristic chose, a tl.dot per
# gate, the K tile, warps and stages for which ptxas (sm_90) reports no spills in the training kernels under Triton
# 3.6 and 3.9.  Replace an entry only with a measured one, and write the measurement beside it.
TILES: dict[tuple[int, torch.dtype], Tile] = {
    (200, torch.float32): Tile(units=4, block_j=8, block_k=16, num_warps=4, num_warps_bwd=4, num_stages=1),
    (200, torch.bfloat16): Tile(units=4, block_j=8, block_k=32, num_warps=4, num_warps_bwd=4, num_stages=1),
    # 5.060 ms (the earlier entry: 8.236); cudnn_lstm 4.365
    (650, torch.float32): Tile(units=5, block_j=8, block_k=32, num_warps=4, num_warps_bwd=4, num_stages=3,
                               fuse_gates=True, row_align=16),
    # 3.094 ms (earlier: 5.372); cudnn_lstm bfloat16 4.317
    (650, torch.bfloat16): Tile(units=5, block_j=8, block_k=64, num_warps=4, num_warps_bwd=4, num_stages=1,
                                fuse_gates=True),
    # 16.253 ms (earlier: 33.470); cudnn_lstm 8.850
    (1500, torch.float32): Tile(units=12, block_j=16, block_k=16, num_warps=8, num_warps_bwd=8, num_stages=3,
                                fuse_gates=True, split_k=2, row_align=16),
    # 5.483 ms (earlier: 11.750); cudnn_lstm bfloat16 4.621
    (1500, torch.bfloat16): Tile(units=12, block_j=16, block_k=128, num_warps=8, num_warps_bwd=8, num_stages=1,
                                 fuse_gates=True, row_align=16),
}
# triton_gru's entries (kind "GRU"), measured as above; small from the heuristic.  (One dot for the three gates --
# fuse_gates, a fourth gate of zeros -- came after the search: untimed.)
GRU_TILES: dict[tuple[int, torch.dtype], Tile] = {
    # 3.860 ms (the heuristic's: 6.804); cudnn_gru 4.561
    (650, torch.float32): Tile(units=5, block_j=8, block_k=16, num_warps=4, num_warps_bwd=4, num_stages=3,
                               row_align=16),
    # 2.767 ms (heuristic: 3.787); cudnn_gru bfloat16 3.904
    (650, torch.bfloat16): Tile(units=5, block_j=8, block_k=64, num_warps=8, num_warps_bwd=8, num_stages=1,
                                split_k=2),
    # 18.503 ms (heuristic: 23.597); cudnn_gru 7.540
    (1500, torch.float32): Tile(units=12, block_j=16, block_k=16, num_warps=8, num_warps_bwd=8, num_stages=3,
                                split_k=2),
    # 6.438 ms (heuristic: 8.843); cudnn_gru bfloat16 4.358
    (1500, torch.bfloat16): Tile(units=12, block_j=16, block_k=64, num_warps=8, num_warps_bwd=4, num_stages=1,
                                 split_k=2),
}
TILES_SMS = 132  # the SM count the tables were made for; a GPU with fewer uses the heuristic
# The entries above that a GPU timed, as they were (a tile search that swaps an entry to time a candidate, or a test
# that replaces one, makes its plans say "awaiting GPU measurement"): what the backend string reports.
MEASURED_ON = "on an H200, 2026-11-28"
MEASURED_TILES: dict[tuple[str, int, torch.dtype], Tile] = {
    (kind, hidden, dtype): tile for kind, table in (("LSTM", TILES), ("GRU", GRU_TILES))
    for (hidden, dtype), tile in table.items() if hidden != 200}


# Tiles a tile search has just found, put before the tables for this process (:func:`use_file_tiles`; the
# micro-benchmarks' ``--bench-tiles``): a search's winners benchmarked in the session that found them, before they are
# copied into the tables.  (kind, hidden size, dtype) -> (tile, where it came from); plans from them say so ("tiles
# from the tile file tiles.json (the tile search on NVIDIA H200 at commit ...)").
FILE_TILES: dict[tuple[str, int, torch.dtype], tuple[Tile, str]] = {}


def use_file_tiles(found: dict[tuple[str, int, torch.dtype], tuple[Tile, str]]) -> None:
    """Put ``found`` ((kind, hidden size, dtype) -> (tile, its source in words)) before :data:`TILES` and
    :data:`GRU_TILES` in this process, in place of what an earlier call put there (empty: the tables alone again)."""
    FILE_TILES.clear()
    FILE_TILES.update(found)
    plan_for.cache_clear()
    launch_options.cache_clear()


def tiles(kind: str) -> dict[tuple[int, torch.dtype], Tile]:
    """The tile table of a cell kind: :data:`TILES` for "LSTM", :data:`GRU_TILES` for "GRU"."""
    return TILES if kind == "LSTM" else GRU_TILES


@contextlib.contextmanager
def table_entry(kind: str, hidden: int, dtype: torch.dtype):
    """Within: ``put(tile)`` (what this yields) makes ``tile`` the table's entry for ``hidden`` and ``dtype`` of cell
    kind ``kind``, the cached plans dropped; after: the table's own entry again (none where it had none).  For the
    tile search and the tests that time or run tiles the table does not hold."""
    table, key = tiles(kind), (hidden, dtype)
    original = table.get(key)

    def put(tile: Tile) -> None:
        table[key] = tile
        plan_for.cache_clear()
        launch_options.cache_clear()

    try:
        yield put
    finally:
        if original is None:
            table.pop(key, None)
        else:
            table[key] = original
        plan_for.cache_clear()
        launch_options.cache_clear()


def runs_interpreted(device: torch.device) -> bool:
    """True when the kernels run in Triton's interpreter for tensors on ``device``."""
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels(interpret: bool) -> ModuleType:
    """The kernels module, compiled or interpreted.

    ``@triton.jit`` decides between the two when it decorates (it reads
    ``triton.knobs.runtime.interpret``, i.e. ``TRITON_INTERPRET``), so
    ``kernels.py`` is executed once per flavour under its own module name.
    """
    name = f"{__package__}._kernels_{'interpreted' if interpret else 'compiled'}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("kernels.py"))
        module = importlib.util.module_from_spec(spec)
        with triton.knobs.runtime.scope():
            triton.knobs.runtime.interpret = interpret
            spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (queried once per device)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


COUNTER_SLOTS = 1024  # batch blocks one launch may have (NB <= the SM count)
_COUNTERS: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}


def counters(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid-barrier counters (arrive, done), int32 [COUNTER_SLOTS] each, of ``device``'s current stream.

    Allocated and zeroed once per device and stream; every launch leaves them zero (the last program out resets
    them, see the kernels' docstring), so launches in order on one stream share them with no memset.  Launches that
    may overlap run on different streams and so get different counters.
    """
    stream = 0
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = torch._C._cuda_getCurrentRawStream(index)  # what Triton launches on; no Stream object
    found = _COUNTERS.get((device, stream))
    if found is None:
        buf = torch.zeros(2, COUNTER_SLOTS, dtype=torch.int32, device=device)
        found = _COUNTERS[(device, stream)] = (buf[0], buf[1])
    return found


@dataclass(frozen=True)
class Plan:
    """How one layer's recurrence is split and launched."""

    path: str  # "persistent", "blocked" or "stepwise"
    interpret: bool
    block_b: int  # batch rows per program
    block_j: int  # hidden units per tile
    block_k: int  # reduction tile over H
    units: int  # hidden units per program along grid axis 0
    programs: int  # P: programs per batch block
    batch_blocks: int  # NB
    resident: bool  # W_hh slice in registers for the whole time loop
    precision: str  # tl.dot input precision for float32: "ieee" (exact), "tf32" or "tf32x3"
    num_warps: int = 4  # forward kernel
    num_warps_bwd: int = 4
    num_stages: int = 1  # no software pipelining: the loops are latency-bound, and it costs registers
    source: str = "heuristic"  # "table" when the tiles come from TILES, "file <where from>" from FILE_TILES
    fuse_gates: bool = False  # one tl.dot per reduction tile for the four gates, else one per gate
    split_k: int = 1  # the reduction over H split this many ways inside a program: SPLIT BLOCK_K tiles per trip
    row_align: int = 1  # HP = H rounded up to this: row stride of the (padded) W_hh and the rings (padded_size)
    measured: bool = False  # the table's tile is the one MEASURED_TILES records as timed on a GPU
    outer: bool = False  # forward: the K loop as outer products summed over k after it (exact FMA, no tl.dot)
    outer_bwd: bool = False  # backward: the same (on W_hh^T)
    # The backward kernel's K loop where it differs from the forward's (None: as the forward; BWD_FIELDS)
    block_k_bwd: int | None = None
    num_stages_bwd: int | None = None
    split_k_bwd: int | None = None
    fuse_gates_bwd: bool | None = None
    transposed_bwd: bool = False  # the backward's tl.dot reads W_hh^T (the launcher's copy; kernels' WT)
    # 16-bit dtypes: the backward's recurrent matmul reads dA_{t+1} rounded to the compute dtype, from a ring of that
    # dtype, in one tensor-core MMA of it, instead of float32 dA against the 16-bit W_hh in TF32 (kernels' _dot: two
    # MMAs of half the depth and the weights widened).  dA itself, which dW and the input's gradient take, stays
    # float32.
    round_da_bwd: bool = False
    per_sm: int = 1  # programs the persistent grid may put on one SM (Tile.per_sm)
    exchange: bool = False  # the forward's recurrent matmul as an exchange of shares (Tile.exchange)
    exchange_bwd: bool = False  # the backward's (Tile.exchange_bwd)

    @property
    def sync(self) -> bool:
        return self.path == "persistent" and self.programs > 1

    @property
    def grid(self) -> tuple[int, int]:
        return (self.programs, self.batch_blocks)

    def describe(self) -> str:
        if self.path == "blocked":
            how = "one program per batch block"
        else:
            how = f"{self.programs} programs x {self.units} units per batch block, " + (
                "grid barrier" if self.path == "persistent" else "one launch per step")
            if self.per_sm > 1 and self.path == "persistent":
                how += f" (up to {self.per_sm} programs an SM)"
        where = "registers" if self.resident else "L1/L2, re-read each step"
        if self.exchange and self.exchange_bwd and self.path != "blocked":  # (no K loop left to describe)
            phase1 = "outer products over its units" if self.outer else "tl.dot"
            return (f"{self.path}: {how}, {self.batch_blocks} batch block(s) of {self.block_b}, both recurrent "
                    f"matmuls exchanged (each program's share of every program's sums through L2, by {phase1}; no K "
                    f"loop), W_hh rearranged per launch, each program's slab re-read each step, tiles from the "
                    f"{source_name(self.source, self.measured)}")
        dots = "" if self.resident else ", one dot for all gates" if self.fuse_gates else ", a dot per gate"
        outer, outer_bwd = self.outer and not self.exchange, self.outer_bwd and not self.exchange_bwd  # (K loops')
        if (outer or outer_bwd) and not self.resident:
            which = "K loops" if outer and outer_bwd else "forward's K loop" if outer else "backward's K loop"
            dots += f", {which} as outer products summed after it (FMA, no tl.dot)"
        if self.transposed_bwd and not self.outer_bwd and not self.resident:
            dots += ", the backward's dot on a transposed copy of W_hh"
        if self.round_da_bwd:
            dots += ", the backward's recurrent matmul on dA rounded to the compute dtype"
        if self.split_k > 1 and not self.resident:
            # (with outer products SPLIT is the unrolling of the K loop: kernels' _outer_sum)
            unrolled, split = f"{self.split_k} K tiles a trip, unrolled", f"reduction split {self.split_k} ways"
            dots += f", {unrolled if self.outer else split}"
            if self.outer != self.outer_bwd and self.split_k_bwd is None:  # (else: the same, or _backward_apart's)
                dots += f" (the backward: {unrolled if self.outer_bwd else split})"
        if self.row_align > 1:
            dots += f", rows padded to a multiple of {self.row_align}"
        if self.num_stages > 1:
            dots += f", K loop in {self.num_stages} pipeline stages"
        apart = self._backward_apart()
        if apart:
            dots += f", the backward's K loop: {', '.join(apart)}"
        if (self.exchange or self.exchange_bwd) and self.path != "blocked":  # one kernel exchanged, one K loop
            which, other = ("forward's", "backward's") if self.exchange else ("backward's", "forward's")
            by = " by outer products over its units" if self.exchange and self.outer else ""
            dots = (f", the {which} recurrent matmul exchanged (each program's share of every program's sums through "
                    f"L2{by}, no K loop); the {other} K loop: {dots.removeprefix(', ')}")
        return (f"{self.path}: {how}, {self.batch_blocks} batch block(s) of {self.block_b}, W_hh slice in {where}"
                f"{dots}, tiles from the {source_name(self.source, self.measured)}")

    def _backward_apart(self) -> list[str]:
        """How the backward's K loop differs from the forward's (:data:`BWD_FIELDS`), in words."""
        out = []
        for field in BWD_FIELDS:
            fwd, bwd = kernel_value(self, field, False), kernel_value(self, field, True)
            if bwd == fwd:
                continue
            if field == "block_k":
                out.append(f"K tile {bwd} (forward {fwd})")
            elif field == "num_stages":
                out.append(f"{bwd} pipeline stage(s)")
            elif field == "split_k":
                out.append(f"{bwd} K tile(s) a trip, unrolled" if self.outer_bwd else f"reduction split {bwd} way(s)")
            else:
                out.append("one dot for all gates" if bwd else "a dot per gate")
        return [x for x in out if x]


def source_name(source: str, measured: bool = False) -> str:
    if source.startswith("file "):
        return f"tile {source}"
    if source != "table":
        return "heuristic"
    return f"tile table (measured {MEASURED_ON})" if measured else "tile table (awaiting GPU measurement)"


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def make_plan(batch: int, hidden: int, dtype: torch.dtype, device: torch.device, path: str = "auto",
              units: int | None = None, resident: bool | None = None, fp32_precision: str = "ieee",
              kind: str = "LSTM") -> Plan:
    """Choose the path and the tiles for one layer; cached per (shape, dtype, device, options).

    Args:
        batch, hidden: B and H.
        dtype: the compute dtype.
        device: where the tensors live; the interpreter runs for anything but CUDA.
        path: one of :data:`PATHS`; "auto" is persistent on CUDA when its grid fits the SMs, else blocked.
        units: hidden units per program on the persistent and stepwise paths (default: :data:`TILES` for the PTB
            presets on a GPU with at least :data:`TILES_SMS` SMs, else H spread over the SMs on CUDA, over 4
            programs in the interpreter).
        resident: force the W_hh slice in or out of registers (default: in when it is small enough).
        fp32_precision: for float32 on CUDA, "ieee" (exact float32 products, the default), "tf32" (tensor-core
            TF32, as cuDNN does when torch allows it) or "tf32x3" (three TF32 products per multiply, about float32's
            accuracy on the tensor cores).  The interpreter always multiplies exactly.
        kind: "LSTM" (:mod:`.kernels`' lstm kernels, :data:`TILES`) or "GRU" (``gru_*``: W_hh slice streamed, a
            dot per gate, :data:`GRU_TILES`).

    Returns:
        The :class:`Plan`.
    """
    interpret = runs_interpreted(device)
    sms = None if interpret else sm_count(device)
    return plan_for(batch, hidden, dtype, sms, path, units, resident, fp32_precision, kind)


@functools.lru_cache(maxsize=1024)
def plan_for(batch: int, hidden: int, dtype: torch.dtype, sms: int | None, path: str = "auto",
             units: int | None = None, resident: bool | None = None, fp32_precision: str = "ieee",
             kind: str = "LSTM") -> Plan:
    """:func:`make_plan` for a GPU with ``sms`` SMs, or for the interpreter when ``sms`` is None (cached)."""
    interpret = sms is None
    if kind not in ("LSTM", "GRU"):
        raise ValueError(f"kind must be 'LSTM' or 'GRU', got {kind!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
    if path == "persistent" and interpret:
        raise ValueError("the persistent path needs compiled kernels on CUDA: its grid barrier deadlocks in "
                         "Triton's interpreter, which runs programs one after another")
    precision = fp32_precision if dtype == torch.float32 and not interpret else "ieee"
    block_b = max(16, min(_pow2(batch), 64))  # tl.dot needs at least 16 rows
    batch_blocks = triton.cdiv(batch, block_b)
    kp = max(16, _pow2(hidden))  # the reduction over H is at least 16 wide for tl.dot
    auto = path == "auto"
    if auto:
        path = "blocked" if interpret else "persistent"
    if interpret:
        sms = 4 * batch_blocks  # the stepwise path's default split: 4 programs
    tile, source = None, "table"
    if not (interpret or units is not None or sms < TILES_SMS):
        tile, source = FILE_TILES.get((kind, hidden, dtype)) or (tiles(kind).get((hidden, dtype)), "table")
        source = source if source == "table" else f"file {source}"
    per_sm = tile.per_sm if tile else 1  # programs an SM may hold (the heuristic: one)
    if tile and triton.cdiv(hidden, tile.units) * batch_blocks > per_sm * sms:
        tile, per_sm = None, 1  # more batch blocks than the table's split leaves room for: spread H over the SMs
    if path in ("persistent", "stepwise"):
        units = tile.units if tile else units or max(4, triton.cdiv(hidden, max(1, sms // batch_blocks)))
        programs = triton.cdiv(hidden, units)
        block_j = tile.block_j if tile else max(8, _pow2(units))
        if path == "persistent" and (programs * batch_blocks > per_sm * sms or block_j > 64):
            if not auto:
                room = f"{sms} SMs" if per_sm == 1 else f"{sms} SMs at {per_sm} programs an SM"
                raise ValueError(f"the persistent grid ({programs} x {batch_blocks} programs, {block_j} units "
                                 f"each) does not fit {room}")
            path, tile = "blocked", None
        elif path == "persistent" and programs == 1:
            path, tile = "blocked", None  # one program per batch block needs no grid barrier
    if path == "blocked":
        units, programs, tile = hidden, 1, None
        block_j = min(kp, 256 if interpret else 16)
    if resident is None:
        resident = 4 * block_j * kp <= RESIDENT_MAX["interpreter" if interpret else "compiled"]
    resident = resident and block_j >= units and kind == "LSTM"  # one unit tile per program; the GRU streams
    if tile:
        exact = not resident and precision == "ieee"  # (float32 on the tensor cores asked for: tl.dot, as it says)
        return Plan(path, interpret, block_b, block_j, tile.block_k if not resident else kp, units, programs,
                    batch_blocks, resident, precision, tile.num_warps, tile.num_warps_bwd, tile.num_stages, source,
                    tile.fuse_gates, tile.split_k, tile.row_align,
                    source == "table" and MEASURED_TILES.get((kind, hidden, dtype)) == tile,
                    tile.outer and exact, tile.outer_bwd and exact,
                    tile.block_k_bwd if not resident else None, tile.num_stages_bwd, tile.split_k_bwd,
                    tile.fuse_gates_bwd, tile.transposed_bwd and not resident,
                    tile.round_da_bwd and dtype.itemsize == 2, per_sm if path == "persistent" else 1,
                    tile.exchange and path != "blocked", tile.exchange_bwd and path != "blocked")
    # Exact float32 tl.dot runs on FMA units and takes a K tile of 16 without spilling (TILES' note).
    block_k = kp if resident else min(kp, 256 if interpret else 16 if dtype == torch.float32 else 32)
    # Untimed, like TILES: the GPU run should tune them.
    num_warps_bwd = 4 if block_j <= 8 or path == "blocked" else 8
    return Plan(path, interpret, block_b, block_j, block_k, units, programs, batch_blocks, resident, precision,
                num_warps=4, num_warps_bwd=num_warps_bwd)


@functools.lru_cache(maxsize=1024)
def launch_options(plan: Plan, dtype: torch.dtype, backward: bool, train: bool = True) -> dict:
    """Keyword arguments of one kernel launch for ``plan`` and compute dtype ``dtype``: the compile-time
    arguments and, compiled, the compiler options.  Cached; callers must not change the dict."""
    meta = constexprs(plan, dtype, backward)
    if plan.outer_bwd if backward else plan.outer:
        if plan.resident:
            raise ValueError("outer products replace tl.dot in the streamed K loop: not with a resident slice")
        meta["OUTER"] = True  # (the kernels' SPLIT does not apply then)
    if backward and transposed_weight(plan):
        meta["WT"] = True
    if not backward:
        meta["TRAIN"] = train
    return _compiler_options(meta, plan, plan.num_warps_bwd if backward else plan.num_warps,
                             kernel_value(plan, "num_stages", backward))


def _compiler_options(meta: dict, plan: Plan, num_warps: int, num_stages: int) -> dict:
    """``meta`` with, compiled, the compiler's options and the cooperative launch of a grid with a barrier."""
    if not plan.interpret:
        # FMA contraction stated, not left to the version's default (Triton 3.10 turns it off by default).
        meta.update(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True)
        if plan.sync:
            meta["launch_cooperative_grid"] = True
    return meta


def constexprs(plan: Plan, dtype: torch.dtype, backward: bool = False) -> dict:
    """The compile-time arguments the forward (or the backward) kernel takes for ``plan`` and compute dtype
    ``dtype``."""
    return dict(BLOCK_B=plan.block_b, BLOCK_J=plan.block_j, BLOCK_K=kernel_value(plan, "block_k", backward),
                RESIDENT=plan.resident, SYNC=plan.sync, PRECISION=plan.precision,
                UPCAST=plan.interpret and dtype.itemsize == 2, FUSE=kernel_value(plan, "fuse_gates", backward),
                SPLIT=kernel_value(plan, "split_k", backward))


def transposed_weight(plan: Plan) -> bool:
    """The backward kernel reads W_hh^T (the launcher's transposed copy): with outer products, or ``transposed_bwd``."""
    return (plan.outer_bwd or plan.transposed_bwd) and not plan.resident


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Cell state, gates and gate gradients: float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def padded_size(hidden: int, align: int) -> int:
    """HP: ``hidden`` rounded up to ``align`` (``Plan.row_align``), the row stride of the padded W_hh and of the
    kernels' rings.

    Triton specializes an integer argument divisible by 16, so with rows HP apart (and the reduction masked at HP,
    not H) it knows that every row of a K tile starts aligned: vector loads, and ``cp.async`` copies into the
    pipelined K loop, which 2-byte elements at an odd row stride do not allow (the PTB sizes 200, 650 and 1500 are
    not multiples of 16; in the PTX the bfloat16 forward then pipelines at all).  The price is a padded copy of
    W_hh per launch.  Untimed, so not the default (``row_align`` 1): the probe and the tile search try 16."""
    return -(-hidden // align) * align


def row_stride(plan: Plan, hidden: int, steps: int) -> int:
    """HP for one layer call of ``steps`` steps: :func:`padded_size` by ``plan.row_align``, except for a single step,
    which reads W_hh once, so that its padded copy could not pay for itself (the latency case: batch 1, one step)."""
    return padded_size(hidden, plan.row_align) if steps > 1 else hidden


def padded_weight(w_hh: torch.Tensor, gates: int, hp: int) -> torch.Tensor:
    """W_hh [gates H, H] as [gates HP, HP]: each gate's [H, H] block zero-padded to [HP, HP] (``w_hh`` itself when
    H = HP).  A copy per launch, never cached: a cache keyed on the tensor's version would miss updates through
    ``.data`` and, under CUDA-graph capture, leave the copy out of the graph."""
    hidden = w_hh.shape[1]
    if hp == hidden:
        return w_hh
    return torch.nn.functional.pad(w_hh.view(gates, hidden, hidden), (0, hp - hidden, 0, hp - hidden)).view(
        gates * hp, hp)


def transposed_weight_copy(w_hh: torch.Tensor, gates: int, hp: int) -> torch.Tensor:
    """W_hh^T as the backward reads it with outer products or ``transposed_bwd``: [HP, gates HP], element (j, g HP + k)
    = W_hh[g H + k, j], zero in the padding; one allocation (not :func:`padded_weight` then a transposed copy of it,
    which would hold both at once: 2 x 36 MB at the large preset in float32).  A copy per launch, as that one."""
    hidden = w_hh.shape[1]
    if hp == hidden:
        return w_hh.t().contiguous()
    out = w_hh.new_zeros(hp, gates, hp)
    out[:hidden, :, :hidden] = w_hh.view(gates, hidden, hidden).permute(2, 0, 1)
    return out.view(hp, gates * hp)


def ring(batch: int, width: int, dtype: torch.dtype, device: torch.device, first: torch.Tensor | None = None
         ) -> torch.Tensor:
    """Two zeroed slots [2, batch, width] that the kernels pass the recurrent matmul's operand through (slot t % 2
    holds step t's), with ``first`` ([batch, <= width]) in slot 1: the step before step 0."""
    out = torch.zeros(2, batch, width, dtype=dtype, device=device)
    if first is not None:
        out[1, :, :first.shape[1]] = first
    return out


def matmul_operands(plan: Plan, w_hh: torch.Tensor, gates: int, steps: int, unpadded: torch.Tensor, width: int,
                    dtype: torch.dtype, first: torch.Tensor | None = None, ring_always: bool = False,
                    transposed: bool = False) -> tuple[int, torch.Tensor, torch.Tensor, dict]:
    """What a launch's recurrent matmul reads, padded or not (:func:`row_stride`): (HP, W_hh as the kernel takes it,
    the buffer of the step's operand, extra compile-time arguments).  Padded: W_hh per :func:`padded_weight`, a
    :func:`ring` of ``width`` HP columns of ``dtype`` holding ``first`` in slot 1, and ``PAD``; else W_hh, ``unpadded``
    (what the kernel reads the operand from: h_0, or the gate gradients it writes) and nothing.  ``ring_always``: the
    ring also unpadded (HP = H), where the operand must be of another dtype than ``unpadded`` (round_da_bwd).
    ``transposed``: W_hh as :func:`transposed_weight_copy` (the backward's, :func:`transposed_weight`)."""
    hidden = w_hh.shape[1]
    batch = unpadded.shape[-2]  # h_0 is [B, H], the gate gradients [T, B, gates H]
    hp = row_stride(plan, hidden, steps)
    weight = transposed_weight_copy(w_hh, gates, hp) if transposed else padded_weight(w_hh, gates, hp)
    if hp == hidden and not ring_always:
        return hp, weight, unpadded, {}
    return hp, weight, ring(batch, width * hp, dtype, w_hh.device, first), {"PAD": True}


def rounded_da(plan: Plan, dtype: torch.dtype) -> bool:
    """The backward's dA ring holds dA rounded to the compute ``dtype`` (:attr:`Plan.round_da_bwd`, 16-bit dtypes)."""
    return plan.round_da_bwd and dtype.itemsize == 2


def _backward_operands(plan: Plan, w_hh: torch.Tensor, gates: int, steps: int, da: torch.Tensor
                       ) -> tuple[int, torch.Tensor, torch.Tensor, dict]:
    """:func:`matmul_operands` of a backward launch: W_hh transposed where it reads it so (:func:`transposed_weight`),
    the dA ring of ``da``'s dtype, or of the compute dtype -- then also unpadded -- where :func:`rounded_da`."""
    rounded = rounded_da(plan, w_hh.dtype)
    return matmul_operands(plan, w_hh, gates, steps, da, gates, w_hh.dtype if rounded else da.dtype,
                           ring_always=rounded, transposed=transposed_weight(plan))


def c_slots(steps: int) -> int:
    """Slabs of the cell-state buffer a training forward of ``steps`` steps keeps (:func:`c_slot`)."""
    return 1 + (steps + 1) // 2


def c_slot(t: int, train: bool) -> int:
    """Where the forward leaves c_t.  Training: c_t of even t in slot 1 + t // 2, for the backward; of odd t in slot 0,
    overwritten two steps on (the backward recomputes it from c_{t-1} and the gates, as the forward computed it:
    ceil(T / 2) slabs saved instead of T).  Else the two-slab ring, slot t % 2."""
    if not train:
        return t % 2
    return 1 + t // 2 if t % 2 == 0 else 0


def _spans(plan: Plan, T: int) -> list[tuple[int, int]]:
    """The forward's launches, as (t_lo, t_hi): one per step on the stepwise path (the launch is the barrier)."""
    return [(t, t + 1) for t in range(T)] if plan.path == "stepwise" else [(0, T)]


def _reverse_spans(plan: Plan, T: int) -> list[tuple[int, int, int]]:
    """The backward's launches, as (s_lo, s_hi, DO_TAIL): per step on the stepwise path, then the dh_0 tail."""
    return [(s, s + 1, 0) for s in range(T)] + [(T, T, 1)] if plan.path == "stepwise" else [(0, T, 1)]


DIRECT_LAUNCH = os.environ.get("RNNBENCH_TRITON_DIRECT", "1") != "0"  # see _launch
_DIRECT: dict[tuple, tuple] = {}
_DIRECT_MAX = 4096  # kernels remembered for direct launches before the table starts afresh
_LOOSE: dict[tuple[int, int], tuple[bool, ...]] = {}
_I32_MIN, _I32_MAX = -2 ** 31, 2 ** 31 - 1


def _arg_key(kernel, args: tuple) -> tuple:
    """What Triton's specialization of a launch of ``kernel`` depends on in ``args`` (its positional arguments): a
    tensor's dtype and its address modulo 16, a ``do_not_specialize`` integer's range (Triton types it i32, i64 or u64
    by value), any other argument itself.  Finer than Triton's own key (an integer counts by value, not by
    divisibility), never coarser, so equal keys select the same compiled kernel."""
    loose = _LOOSE.get((id(kernel), len(args)))
    if loose is None:  # (kernels live as long as the process: their ids are not reused)
        loose = _LOOSE[(id(kernel), len(args))] = tuple(p.do_not_specialize for p in kernel.params[:len(args)])
    return tuple([(a.dtype, a.data_ptr() & 15) if isinstance(a, torch.Tensor)
                  else (type(a), _I32_MIN <= a <= _I32_MAX) if lo and type(a) is int else a
                  for a, lo in zip(args, loose, strict=True)])


def _launch(kernel, plan: Plan, *args, **meta) -> None:
    """``kernel[plan.grid](*args, **meta)``; a persistent grid the GPU cannot hold at once (the cooperative launch's
    refusal) raises a RuntimeError that says so in one line, with the grid and what to change.

    Compiled kernels launch directly after their first launch (``DIRECT_LAUNCH``; ``RNNBENCH_TRITON_DIRECT=0`` turns
    it off): Triton's ``JITFunction.run`` binds and specializes every argument in Python on every launch (about 28 us
    of host time a launch, Triton 3.6, on this project's 2-core CPU), where the compiled kernel it returns, called
    with the bound arguments (``CompiledKernel[grid](*args)``, Triton's own launcher), needs only the key of what
    that specialization depends on (:func:`_arg_key`)."""
    try:
        if plan.interpret or not DIRECT_LAUNCH or not isinstance(kernel, triton.runtime.jit.JITFunction):
            kernel[plan.grid](*args, **meta)  # (the last: a test's stand-in kernel)
            return
        # (the device too: a compiled kernel is loaded per device, and Triton launches on the current one)
        key = (id(kernel), triton.runtime.driver.active.get_current_device(), plan.grid, tuple(meta.items()),
               _arg_key(kernel, args))
        found = _DIRECT.get(key)
        if found is not None:
            runner, tail = found
            runner(*args, *tail)
            return
        compiled = kernel[plan.grid](*args, **meta)
        if compiled is None:  # (a stand-in that launched nothing: hostcost's --no-triton)
            return
        if len(_DIRECT) >= _DIRECT_MAX:
            _DIRECT.clear()
        # (the bound arguments past the positional ones: the constexprs and defaults, in the signature's order)
        tail = tuple(meta[p.name] if p.name in meta else p.default for p in kernel.params[len(args):])
        _DIRECT[key] = (compiled[(*plan.grid, 1, 1)[:3]], tail)  # (its runner reads three grid sizes)
    except RuntimeError as exc:
        if not (plan.sync and "cooperative" in str(exc)):
            raise
        raise RuntimeError(
            f"the persistent grid of {plan.programs * plan.batch_blocks} programs ({plan.programs} x {plan.units} "
            f"units, {plan.batch_blocks} batch block(s); up to {plan.per_sm} an SM) cannot all be resident on this "
            f"GPU with the compiled kernel's registers and shared memory ({exc}): choose a tile with fewer programs "
            "an SM, or fewer warps") from None


# Phase 1's dots span about this many columns (DG destination programs of 4 BLOCK_J each), phase 2's loads about this
# many elements (SG source programs of BLOCK_B x 4 BLOCK_J each).  Untimed; compiled for sm_90 (Triton 3.6, batch 20)
# the forward takes 128-254 registers without spilling at every preset and dtype with 128 / 4096, where 128 / 8192
# spilled 32-192 bytes at 4 warps (docs/triton.md).
EXCHANGE_COLUMNS, EXCHANGE_ELEMENTS = 128, 4096
EXCHANGE_LOADS = 2  # phase-2 loads issued together (kernels' XR): each trip of its loop is one L2 round trip


def exchange_k(plan: Plan) -> int:
    """Phase 1's reduction depth on the exchange path: the unit tile, at least 16 (tl.dot's least K)."""
    return max(16, plan.block_j)


@functools.lru_cache(maxsize=1024)
def exchange_options(plan: Plan, dtype: torch.dtype, train: bool) -> dict:
    """Keyword arguments of an exchange forward launch (kernels' lstm_fwd_xchg_kernel, gru_fwd_xchg_kernel).  Cached,
    as :func:`launch_options`; callers must not change the dict."""
    c4 = 4 * plan.block_j
    meta = dict(BLOCK_B=plan.block_b, BLOCK_J=plan.block_j, KX=exchange_k(plan),
                DG=max(1, EXCHANGE_COLUMNS // c4), SG=max(1, EXCHANGE_ELEMENTS // (plan.block_b * c4)),
                SYNC=plan.sync, TRAIN=train, PRECISION=plan.precision, UPCAST=plan.interpret and dtype.itemsize == 2,
                XR=EXCHANGE_LOADS, OUTER=plan.outer, WS=4 * plan.units)  # (outer: exact float32 only, as plan_for)
    return _compiler_options(meta, plan, plan.num_warps, 1)


def _four_gates(w_hh: torch.Tensor, H: int, padded: int) -> torch.Tensor:
    """W_hh [G H, H] as [4, padded, padded]: each gate's block zero-padded, the GRU's three gates and a fourth of
    zeros."""
    gates = w_hh.shape[0] // H
    return torch.nn.functional.pad(w_hh.reshape(gates, H, H), (0, padded - H, 0, padded - H, 0, 4 - gates))


def exchange_weight(w_hh: torch.Tensor, plan: Plan) -> torch.Tensor:
    """W_hh [4H, H] (the GRU's [3H, H]: a fourth gate of zeros) rearranged for the exchange path: wx[s, k, d, 4 u + g]
    = W_hh[g H + d U + u, s U + k] (U: units a program), zero where a unit or a k is past H; [P, U, P, 4 U], compact
    (W_hh's own size where P U = H): the kernels mask the dot's padding (k up to KX, u up to BLOCK_J) instead of
    reading stored zeros, so a step's phase 1 reads 4 U H values a program (at medium, 5 units: a fifth of the 16 x
    4 BLOCK_J x P it read padded)."""
    H = w_hh.shape[1]
    U, P = plan.units, plan.programs
    w = _four_gates(w_hh, H, P * U).view(4, P, U, P, U)  # [4 (g), P (d), U (u), P (s), U (k)]
    return w.permute(3, 4, 1, 2, 0).reshape(P, U, P, 4 * U).contiguous()  # (reshape may give a view where U = 1)


@functools.lru_cache(maxsize=1024)
def exchange_bwd_options(plan: Plan, dtype: torch.dtype) -> dict:
    """Keyword arguments of an exchange backward launch (kernels' lstm_bwd_xchg_kernel, gru_bwd_xchg_kernel).
    Cached; callers must not change the dict."""
    w = plan.block_j
    kb = max(16, 4 * w)  # (a dot of about the forward's KX x EXCHANGE_COLUMNS: deeper ones spill)
    meta = dict(BLOCK_B=plan.block_b, BLOCK_J=w, KB=kb, DG=max(1, EXCHANGE_COLUMNS * 16 // kb // w),
                SG=max(1, EXCHANGE_ELEMENTS // (plan.block_b * w)), SYNC=plan.sync, PRECISION=plan.precision,
                UPCAST=plan.interpret and dtype.itemsize == 2, XR=EXCHANGE_LOADS, WS=plan.units)
    return _compiler_options(meta, plan, plan.num_warps_bwd, 1)


def exchange_weight_bwd(w_hh: torch.Tensor, plan: Plan) -> torch.Tensor:
    """W_hh [4H, H] rearranged for the exchange backward: wb[s, 4 u + g, d, v] = W_hh[g H + s U + u, d U + v], zero
    past H; [P, 4 U, P, U], compact as :func:`exchange_weight`'s (the kernel masks rows up to KB, units up to
    BLOCK_J)."""
    H = w_hh.shape[1]
    U, P = plan.units, plan.programs
    w = _four_gates(w_hh, H, P * U).view(4, P, U, P, U)  # [4 (g), P (s), U (u), P (d), U (v)]
    return w.permute(1, 2, 0, 3, 4).reshape(P, 4 * U, P, U).contiguous()


def _launch_exchange(plan: Plan, name: str, spans: list[tuple[int, int, int]], B: int, width: int,
                     acc: torch.dtype, device: torch.device, meta: dict, probe: int, args) -> None:
    """Launch the exchange kernel ``name`` over ``spans`` ((lo, hi, flag) each) with a fresh exchange buffer
    [2, P, P, B, width] of dtype ``acc`` (width: the columns a program's block stores, 4 units forward, units backward);
    ``args(x, arrive, done, lo, hi, flag)`` gives a launch's arguments."""
    x = torch.empty(2, plan.programs, plan.programs, B, width, dtype=acc, device=device)
    arrive, done = counters(device)
    kernel = getattr(kernels(plan.interpret), name)
    meta = {**meta, "PROBE": probe} if probe else meta
    for lo, hi, flag in spans:
        _launch(kernel, plan, *args(x, arrive, done, lo, hi, flag), **meta)


def _exchange_spans(plan: Plan, T: int) -> list[tuple[int, int, int]]:
    """An exchange forward's launches, as (t_lo, t_hi, PRO): persistent, one, the shares of h_0 first; stepwise, those
    in a launch of their own, then one a step."""
    return [(0, 0, 1)] + [(t, t + 1, 0) for t in range(T)] if plan.path == "stepwise" else [(0, T, 1)]


def forward(xp: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
            c0: torch.Tensor, plan: Plan, train: bool = True, probe: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the recurrence of one layer.

    Args:
        xp: [T, B, 4H] input projection x W_ih^T, contiguous, compute dtype.
        w_hh: [4H, H] contiguous.  h0, c0: [B, H] contiguous, compute dtype.
        b_ih, b_hh: [4H] contiguous, compute dtype; the kernel adds them in the accumulation dtype (one rounding
            less than adding them to xp in bfloat16).
        plan: from :func:`make_plan`.
        train: keep what the backward needs (the gates, and c_t of even t: :func:`c_slot`).  Without it c holds two
            slabs, c_t in slot t % 2, and no gates are stored.
        probe: 0, or for timing probes only (:mod:`.probe`): 1 leaves the recurrent matmul out, 2 the grid
            barrier (the programs then race), 3 both.  Any probe but 0 gives wrong results.

    Returns:
        y [T, B, H] (compute dtype); c, [c_slots(T), B, H] or [2, B, H] (float32, float64 for float64 input), c_T
        in slot ``c_slot(T - 1, train)``; gates [T, B, 4H] (c's dtype), None without ``train``.
    """
    T, B, G = xp.shape
    H = G // 4
    acc = accumulation_dtype(xp.dtype)
    if c0.dtype != acc:
        c0 = c0.to(acc)  # the kernel selects between c0 and c[t - 1] by pointer: one dtype
    y = torch.empty(T, B, H, dtype=w_hh.dtype, device=xp.device)
    c = torch.empty(c_slots(T) if train else 2, B, H, dtype=acc, device=xp.device)
    gates = torch.empty(T, B, G, dtype=acc, device=xp.device) if train else None
    if plan.exchange:  # (kernels' lstm_fwd_xchg_kernel)
        wx = exchange_weight(w_hh, plan)
        _launch_exchange(plan, "lstm_fwd_xchg_kernel", _exchange_spans(plan, T), B, 4 * plan.units, acc, xp.device,
                         exchange_options(plan, w_hh.dtype, train), probe,
                         lambda x, arrive, done, lo, hi, pro: (xp, wx, b_ih, b_hh, h0, c0, y, c,
                                                               c if gates is None else gates, x, arrive, done, lo, hi,
                                                               T, pro, B, H, plan.units, plan.programs))
        return y, c, gates
    hp, w, hk, pad = matmul_operands(plan, w_hh, 4, T, h0, 1, w_hh.dtype, first=h0)
    arrive, done = counters(xp.device)
    kernel = kernels(plan.interpret).lstm_fwd_kernel
    meta = launch_options(plan, w_hh.dtype, False, train)
    meta = {**meta, **pad} if pad else meta  # (the cached dict itself, unpadded)
    meta = {**meta, "PROBE": probe} if probe else meta
    for lo, hi in _spans(plan, T):
        _launch(kernel, plan, xp, w, b_ih, b_hh, hk, c0, y, c, c if gates is None else gates, arrive, done, lo, hi,
                B, H, hp, plan.units, **meta)
    return y, c, gates


def backward(w_hh: torch.Tensor, c0: torch.Tensor, c: torch.Tensor, gates: torch.Tensor, dy: torch.Tensor,
             dhT: torch.Tensor, dcT: torch.Tensor, plan: Plan, probe: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk one layer backward in time: the gate gradients and the gradient of the initial state.

    Args:
        w_hh, c0: as for :func:`forward`.  c, gates: what :func:`forward` returned with ``train``.
        dy: [T, B, H] gradient of y.  dhT, dcT: [B, H] gradients of the final h and c, or None for zeros.  All
            contiguous.
        plan: the plan the forward ran with.
        probe: as for :func:`forward`.

    Returns:
        da [T, B, 4H] gate pre-activation gradients (c's dtype), dh0 [B, H] (compute dtype), dc0 [B, H] (c's
        dtype).  dW_hh and the bias gradient are left to GEMMs over da (:mod:`.function`).
    """
    T, B, H = dy.shape
    if dhT is None and dcT is None and w_hh.dtype == c.dtype:  # (one memset for both)
        dhT, dc = torch.zeros(2, B, H, dtype=c.dtype, device=dy.device).unbind(0)
    else:
        dc = torch.zeros(B, H, dtype=c.dtype, device=dy.device) if dcT is None else dcT.to(c.dtype, copy=True)
        dhT = torch.zeros(B, H, dtype=w_hh.dtype, device=dy.device) if dhT is None else dhT
    if c0.dtype != c.dtype:
        c0 = c0.to(c.dtype)
    da = torch.empty(T, B, 4 * H, dtype=c.dtype, device=dy.device)
    dh0 = torch.empty(B, H, dtype=w_hh.dtype, device=dy.device)
    if plan.exchange_bwd:  # (kernels' lstm_bwd_xchg_kernel)
        wb = exchange_weight_bwd(w_hh, plan)
        _launch_exchange(plan, "lstm_bwd_xchg_kernel", _reverse_spans(plan, T), B, plan.units, c.dtype, dy.device,
                         exchange_bwd_options(plan, w_hh.dtype), probe,
                         lambda x, arrive, done, lo, hi, tail: (wb, c0, c, gates, dy, dhT, dc, da, dh0, x, arrive,
                                                                done, lo, hi, tail, T, B, H, plan.units,
                                                                plan.programs))
        return da, dh0, dc
    hp, w, dak, pad = _backward_operands(plan, w_hh, 4, T, da)
    arrive, done = counters(dy.device)
    kernel = kernels(plan.interpret).lstm_bwd_kernel
    meta = launch_options(plan, w_hh.dtype, True)
    meta = {**meta, **pad} if pad else meta  # (the cached dict itself, unpadded)
    meta = {**meta, "PROBE": probe} if probe else meta
    for lo, hi, tail in _reverse_spans(plan, T):
        _launch(kernel, plan, w, c0, c, gates, dy, dhT, dc, da, dak, dh0, arrive, done, lo, hi, tail, T, B, H, hp,
                plan.units, **meta)
    return da, dh0, dc


def gru_forward(xp: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, h0: torch.Tensor,
                plan: Plan, train: bool = True, probe: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence of one GRU layer (``kernels.gru_fwd_kernel``).

    Args:
        xp: [T, B, 3H] input projection x W_ih^T (no bias), contiguous, compute dtype.
        w_hh: [3H, H], h0: [B, H], b_ih, b_hh: [3H]; contiguous, compute dtype; gate order r, z, n.
        plan: from :func:`make_plan` with ``kind="GRU"``.
        train: keep r, z, n and hn = h_{t-1} W_hn^T + b_hn for the backward.
        probe: as for :func:`forward` (timing probes only).

    Returns:
        y [T, B, H] (compute dtype); gates [T, B, 4H] (float32, float64 for float64), None without ``train``.
    """
    if plan.resident:
        raise ValueError("the GRU kernels stream the W_hh slice: make the plan with kind='GRU'")
    T, B, G = xp.shape
    H = G // 3
    acc = accumulation_dtype(xp.dtype)
    y = torch.empty(T, B, H, dtype=w_hh.dtype, device=xp.device)
    gates = torch.empty(T, B, 4 * H, dtype=acc, device=xp.device) if train else torch.empty(1, dtype=acc,
                                                                                             device=xp.device)
    if plan.exchange:  # (kernels' gru_fwd_xchg_kernel)
        wx = exchange_weight(w_hh, plan)
        _launch_exchange(plan, "gru_fwd_xchg_kernel", _exchange_spans(plan, T), B, 4 * plan.units, acc, xp.device,
                         exchange_options(plan, w_hh.dtype, train), probe,
                         lambda x, arrive, done, lo, hi, pro: (xp, wx, b_ih, b_hh, h0, y, gates, x, arrive, done, lo,
                                                               hi, T, pro, B, H, plan.units, plan.programs))
        return y, gates if train else None
    hp, w, hk, pad = matmul_operands(plan, w_hh, 3, T, h0, 1, w_hh.dtype, first=h0)
    arrive, done = counters(xp.device)
    kernel = kernels(plan.interpret).gru_fwd_kernel
    meta = launch_options(plan, w_hh.dtype, False, train)
    meta = {**meta, **pad} if pad else meta  # (the cached dict itself, unpadded)
    meta = {**meta, "PROBE": probe} if probe else meta
    for lo, hi in _spans(plan, T):
        _launch(kernel, plan, xp, w, b_ih, b_hh, hk, y, gates, arrive, done, lo, hi, B, H, hp, plan.units, **meta)
    return y, gates if train else None


def gru_backward(w_hh: torch.Tensor, h0: torch.Tensor, y: torch.Tensor, gates: torch.Tensor, dy: torch.Tensor,
                 dhT: torch.Tensor, plan: Plan, probe: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk one GRU layer backward in time (``kernels.gru_bwd_kernel``).

    Args:
        w_hh, h0: as for :func:`gru_forward`.  y, gates: what it returned with ``train``.
        dy: [T, B, H] gradient of y.  dhT: [B, H] gradient of the final h, or None for zeros.  All contiguous.
        plan: the plan the forward ran with.
        probe: as for :func:`forward` (timing probes only).

    Returns:
        da [T, B, 3H]: gradients of the recurrent pre-activations (h W_hr^T + b_hr, h W_hz^T + b_hz, hn), so
        dW_hh = sum_t da_t^T h_{t-1} and db_hh = sum da; dxn [T, B, H]: gradient of the n gate's input part
        (the input projection's gradient is da with its n third replaced by dxn); dh0 [B, H] (compute dtype).
    """
    T, B, H = dy.shape
    if dhT is None and w_hh.dtype == gates.dtype:  # (one memset for both)
        carry, dhT = torch.zeros(2, B, H, dtype=gates.dtype, device=dy.device).unbind(0)
    else:
        carry = torch.zeros(B, H, dtype=gates.dtype, device=dy.device)
        dhT = torch.zeros(B, H, dtype=w_hh.dtype, device=dy.device) if dhT is None else dhT
    da = torch.empty(T, B, 3 * H, dtype=gates.dtype, device=dy.device)
    dxn = torch.empty(T, B, H, dtype=gates.dtype, device=dy.device)
    dh0 = torch.empty(B, H, dtype=w_hh.dtype, device=dy.device)
    if plan.exchange_bwd:  # (kernels' gru_bwd_xchg_kernel)
        wb = exchange_weight_bwd(w_hh, plan)
        _launch_exchange(plan, "gru_bwd_xchg_kernel", _reverse_spans(plan, T), B, plan.units, gates.dtype,
                         dy.device, exchange_bwd_options(plan, w_hh.dtype), probe,
                         lambda x, arrive, done, lo, hi, tail: (wb, h0, y, gates, dy, dhT, carry, da, dxn, dh0, x,
                                                                arrive, done, lo, hi, tail, T, B, H, plan.units,
                                                                plan.programs))
        return da, dxn, dh0
    hp, w, dak, pad = _backward_operands(plan, w_hh, 3, T, da)
    arrive, done = counters(dy.device)
    kernel = kernels(plan.interpret).gru_bwd_kernel
    meta = launch_options(plan, w_hh.dtype, True)
    meta = {**meta, **pad} if pad else meta  # (the cached dict itself, unpadded)
    meta = {**meta, "PROBE": probe} if probe else meta
    for lo, hi, tail in _reverse_spans(plan, T):
        _launch(kernel, plan, w, h0, y, gates, dy, dhT, carry, da, dxn, dak, dh0, arrive, done, lo, hi, tail, T, B, H,
                hp, plan.units, **meta)
    return da, dxn, dh0
