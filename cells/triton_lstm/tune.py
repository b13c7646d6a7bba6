"""Measure tiles for :data:`.launch.TILES` (``--cell triton_gru``: ``GRU_TILES``) on the GPU at hand: greedy search.

Usage (on a CUDA machine)::

    python -m cells.triton_lstm.tune --presets medium,large --dtypes float32,bfloat16 --json OUT.json

Dtypes in the outer loop (every preset in float32, then in bfloat16), so a run cut short has float32 first;
``--searches triton_lstm:large:float32,...`` names the searches and their order instead (the GPU check: the largest
gaps to cuDNN first).

For each PTB preset (2 layers, B = 20, T = 20 / 35 / 35) and dtype it starts from the table's entry (else the
heuristic's plan), then varies one field at a time -- units per program (so the grid has up to 4 / 2 / 1 / 1/2 programs
an SM: ``launch.Tile.per_sm``), one tl.dot for the gates or one per gate, rows padded to a multiple of 16 or not
(``row_align``), the K loops as outer products instead of tl.dot (forward, backward; exact float32 only, with a K tile
of at most 16, and in the shapes whose loop reads no shared memory, ``OUTER_NO_SHARED``; with them ``split_k`` unrolls
the loop), the software-pipelining stages, the reduction split inside a program (1, 2 or 4 ways, with at least 4 warps a
way), the reduction tile, the warps -- keeping a change only when the median forward+backward of the stack as one CUDA
graph improves by more than 2 % (the kernels' time: an eager call whose host work outlasts its kernels, small's on the
H200, times the host, nearly the same for every tile; searches before 2026-11-29 chose by the eager call, ``fwdbwd_s``,
which every record still has beside ``fwdbwd_graph_s``). The backward kernel's K loop has fields of its own
(``launch.BWD_FIELDS``: dot structure, stages and K tile together, split; from the start on, a forward field changes the
forward only); ``--fields`` varies a subset (the GPU check: those no GPU has searched yet); after the units, the fields
of the kernel that loses most to cuDNN come first (:func:`ordered`: the forward's in float32, the backward's in 16
bits). Padding comes before the stages because it is what lets the bfloat16 forward pipeline at all (the PTX notes,
docs/triton.md). ``--rounds 2`` goes over the fields again when the first round kept a change (a greedy search misses
what two fields do together); the GPU check runs one round. Every candidate's output and input gradient are checked
against the starting tile's (same weights, same input; ``max_diff``: the largest absolute difference of the outputs or
relative one of the gradients, to 1e-4 in float32, 5e-2 in 16 bits; records before 2026-11-28 compared the outputs
alone, as ``max_abs_diff``), so a backward field that computes wrong is not kept. ``torch.nn.LSTM`` / ``GRU`` (cuDNN; in
TF32 beside a ``--fp32-precision tf32`` search, else exact) is timed in the same process at the same shape, so every row
carries its ratios. Timing: CUDA events around each call (eager) or each replay (the graph, captured after three calls
on a side stream: :func:`lm.step.graphed`), synchronized, two untimed calls first, median of ``--reps`` (the eager
calls' of a third of them where the graph decides: :func:`eager_reps`). Compiling, not timing, was most of a search's
cost (two kernels a candidate, 1.3-1.9 s each to compile at these shapes: on the H200 on 2026-11-28, 73 s of the 118 the
eight searches took were spent waiting for 47 batches of compiles, 34 s timing), so candidates compile side by side in a
pool (:mod:`.precompile`, one process per core) ahead of their timing, each timed once its own kernels are in Triton's
cache (``compile_wait_s`` in its record: how long it waited) while the others still compile: at the start every field's
candidates around the starting tile, and during each field the next field's around the best so far (on speculation: a
change kept drops them, unstarted, for those around the new best). Until 2026-11-29 each batch was compiled in full
before any of it was timed, and the next field's only after this one's timing. Timing beside the compiling workers
(``compiles_beside``: how many were queued or under way) leaves the GPU's figures as they are; the eager ones take the
host's share, on the core the workers leave free.

The result is a table on stdout and, with ``--json``, one record per candidate (the tile, the median times, the
cuDNN times, the peak memory of one forward+backward beside cuDNN's -- ``peak_fwdbwd_mib``: the exchange path's buffer
is transient, 2 P P B 4 units values a layer call -- the device, the versions); replace a table entry only with such a
measurement.  A change is kept on time alone: the memory target is the LM step's (a layer's transient buffer lands
below the loss's own peak or above it), which ``bench-tuned`` measures.  ``pytest bench
--benchmark-only --bench-tiles OUT.json`` times each search's winner with the micro-benchmarks first, before the tables
(:func:`file_tiles`, :func:`.launch.use_file_tiles`; the GPU check's ``bench-tuned`` steps).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import cells
import cells as registry  # (inside cli, whose parameter ``cells`` hides the module)

from . import launch, precompile

PRESETS = {"small": (200, 20), "medium": (650, 35), "large": (1500, 35)}  # H, T; batch 20, 2 layers
# A candidate with no result after this many seconds is hung -- a kernel that never returns, e.g. a grid barrier never
# met -- and nothing in this process can end it: the search records it and the process exits, so that a GPU check's
# later steps keep their time instead of its step's limit running out; the check then continues the search in a new
# process (``--after-hang``), which never times that tile.  (A candidate takes 1-3 s once compiled, ~1.2 s on the H200
# in 2026-11-28's searches; one that compiles in-line, where the side-by-side compiling missed it, a few seconds more.)
HUNG_S = 30.0
HUNG_EXIT = 3  # the exit status of a search that ended on a hung candidate


@contextlib.contextmanager
def watchdog(seconds: float, on_hang):
    """Call ``on_hang`` (in another thread) if the block has not ended after ``seconds``; CUDA waits release the GIL."""
    timer = threading.Timer(seconds, on_hang)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def end_process(code: int) -> None:
    """Exit at once with ``code`` (a hung kernel holds the process: no cleanup could finish), output flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BATCH, LAYERS = 20, 2


def _time(fn, reps: int, calls: int = 1) -> float:
    """Median seconds of one ``fn()`` on the current stream: CUDA events around ``calls`` back-to-back calls (more
    than one keeps host work between launches from leaving the GPU idle), two untimed calls first."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(times)


def eager_reps(reps: int, graph: bool) -> int:
    """The timed calls of a candidate's eager forward and forward+backward: ``reps`` where they decide (no graph
    timing), else a third of them, at least 3 (at most ``reps``) -- beside the graph's time, which decides, they are
    for the record (the forward's share, the host's), and at large they were half of a candidate's GPU time (17 calls
    of each at 9 and 16 ms, 2026-11-28).  The figures that count for the tables are ``bench-tuned``'s."""
    return min(reps, max(3, reps // 3)) if graph else reps


def _passes(module: torch.nn.Module, x: torch.Tensor, reps: int, graph: bool = True
            ) -> tuple[float, float, torch.Tensor, torch.Tensor, int, float | None]:
    """(forward s, forward+backward s, the output, the input's gradient, the forward+backward's peak bytes, the
    forward+backward's seconds as one CUDA graph) of ``module`` on ``x``; upstream gradient all ones; the graph's
    median of ``reps`` replays, the eager calls' of :func:`eager_reps`.  The peak: CUDA
    memory allocated at once during one forward+backward above what was allocated before it (the gradients of the
    parameters set to None first), so the exchange buffers' transient cost shows beside cuDNN's workspace and
    reserve.  The graph's time is the kernels' alone (None off CUDA, or without ``graph``): an eager call whose host
    work outlasts its kernels -- small's, on the H200 -- times the host, the same for every tile."""
    def fwd():
        return module(x)[0]

    def fwdbwd():
        module(x)[0].sum().backward()

    out = fwd().detach().float()  # in grad mode: the kernels timed, not also the forward without grad
    x.grad = None
    module.zero_grad(set_to_none=True)
    cuda = x.device.type == "cuda"  # (elsewhere: a rehearsal, :mod:`.rehearse`; no peak)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    fwdbwd()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    grad = x.grad.detach().float().clone()  # (what the backward fields change; a copy: grads accumulate in place)
    x.grad = None
    times = _time(fwd, eager_reps(reps, cuda and graph)), _time(fwdbwd, eager_reps(reps, cuda and graph))
    if cuda and graph:
        from lm.step import graphed

        graph_s = _time(graphed(fwdbwd, x.device), reps)
    else:
        graph_s = None
    x.grad = None
    module.zero_grad(set_to_none=True)  # (the graph's gradients: its memory goes with it)
    return *times, out, grad, peak, graph_s


def _record(module: torch.nn.Module, x: torch.Tensor, put, tile: launch.Tile) -> list:
    """The kernels one forward and backward of ``module`` on ``x`` would compile with ``tile`` the table's entry (made
    so by ``put``, :func:`.launch.table_entry`), collected without compiling or launching them
    (:func:`.precompile.collecting`)."""
    put(tile)
    with precompile.collecting() as specs:
        try:
            module(x)[0].sum().backward()
        except Exception:  # noqa: BLE001 -- a tile the real run refuses: it reports why
            pass
    return specs


FEWER_PROGRAMS_BELOW = 650  # hidden sizes where the units field also tries grids of fewer programs (candidates)


def candidates(tile: launch.Tile, hidden: int, dtype: torch.dtype, sms: int, field: str) -> list[launch.Tile]:
    """``tile`` with ``field`` changed to each value worth trying."""
    if field == "units":
        # Grids of up to 4, 2, 1 and 1/2 programs an SM (``per_sm``: more than one puts narrower programs side by
        # side on an SM, whose warps then hide one another's latency, each with at most 4 warps: narrow_fields; the
        # grid on a quarter of the SMs, slower at every preset on the H200 on 2026-11-28, is no longer tried).  The
        # unit tile is the smallest power of two that holds the units, at least 4 wide for a dot per gate, 2 with one
        # dot for the gates (4 x 2 columns) or outer products (Triton 3.6 compiles tl.dot of 4 or 8 columns for
        # sm_90, exact, TF32 and bfloat16, padding what the MMA needs).
        # And grids of fewer programs whose unit tiles are full: as wide as the tile's (the same K trip a program,
        # padding columns no longer, fewer programs at each grid barrier and reading h_{t-1}: small 25 of 8 units
        # against the table's 50 of 4 in tiles of 8, medium 82 of 8 against 130 of 5, large 94 of 16 against 125 of
        # 12) and, below the presets the H200 searched (small), 8 and 16 wide whatever the tile's (25 and 13 programs);
        # untimed.
        full = dict.fromkeys([tile.block_j, *((8, 16) if hidden < FEWER_PROGRAMS_BELOW else ())])
        fewer = [-(-hidden // u) for u in full if -(-hidden // u) <= sms]
        out = []
        for programs in (4 * sms, 2 * sms, sms, sms // 2, *fewer):
            units = -(-hidden // programs)
            per_sm = -(-launch.triton.cdiv(hidden, units) // sms)
            least = 2 if tile.fuse_gates or tile.outer else 4
            block_j = max(least, 1 << (units - 1).bit_length())
            if block_j <= 64:
                out.append(dataclasses.replace(tile, units=units, block_j=block_j, per_sm=per_sm,
                                               **(narrow_fields(tile) if per_sm > 1 else {})))
        return list(dict.fromkeys(out))
    if field in ("split_k", "split_k_bwd"):  # SPLIT tiles per trip of the K loop side by side: >= 4 warps a way
        # (with the backward's fields stated apart -- the search's start -- each changes its own kernel's warps;
        # else, as the tiles of the table are, both).  With outer products SPLIT unrolls the K loop instead: the
        # warps stay.
        if tile.outer_bwd if field == "split_k_bwd" else tile.outer:  # (up to 64 k a trip without spills in the
            # forward, 128 in the backward at small and medium: docs/triton.md)
            return [dataclasses.replace(tile, **{field: v}) for v in (1, 2, 4, 8, 16, *((32,) if field ==
                                                                                       "split_k_bwd" else ()))]
        backward = field == "split_k_bwd" or tile.split_k_bwd is None
        forward = field == "split_k"
        return [dataclasses.replace(tile, **{field: v},
                                    num_warps=max(tile.num_warps, min(16, 4 * v)) if forward else tile.num_warps,
                                    num_warps_bwd=max(tile.num_warps_bwd, min(16, 4 * v)) if backward
                                    else tile.num_warps_bwd) for v in (1, 2, 4)]
    if field == "exchange":  # the forward's matmul as an exchange of shares (launch.Tile.exchange): at the tile's
        # units and at 8, 16 and 32 units a program (no unit padding; 16 is phase 1's least depth)
        if tile.exchange:
            return [dataclasses.replace(tile, exchange=False), tile]
        out = [tile]
        for units in (tile.units, 8, 16, 32):
            block_j = max(2, 1 << (units - 1).bit_length())
            per_sm = -(-launch.triton.cdiv(hidden, units) // sms)
            if block_j <= 64 and launch.triton.cdiv(hidden, units) > 1:
                out.append(dataclasses.replace(tile, exchange=True, units=units, block_j=block_j, per_sm=per_sm,
                                               **(narrow_fields(tile) if per_sm > 1 else {})))
        return list(dict.fromkeys(out))
    if field == "exchange_bwd":  # the backward's dA_{t+1} W_hh the same way, at the tile's units
        return [dataclasses.replace(tile, exchange_bwd=v) for v in (False, True)]
    if field == "stages_k_bwd":  # the backward's stages and K tile together: deeper pipelines want smaller tiles (the
        # sm_90 registers of its fused bfloat16 kernel: K 128 spills from 2 stages on, K 32 not up to 3 at large)
        stages = (1, 2, 3, 4) if dtype == torch.float32 else (1, 2, 3)
        return [dataclasses.replace(tile, block_k_bwd=k, num_stages_bwd=n) for k in k_tiles(tile, dtype, True)
                for n in stages]
    if field == "round_da_bwd":  # 16-bit dtypes only (float32's dA is the compute dtype already)
        return [dataclasses.replace(tile, round_da_bwd=v) for v in (False, True)] if dtype.itemsize == 2 else [tile]
    if field in ("outer", "outer_bwd"):  # exact float32 only; outer products want a K tile of at most 16 (registers)
        if dtype != torch.float32:
            return [tile]
        bwd = field == "outer_bwd"
        k, split, warps = (("block_k_bwd", "split_k_bwd", "num_warps_bwd") if bwd
                           else ("block_k", "split_k", "num_warps"))
        k_now = launch.kernel_value(tile, "block_k", bwd)
        if getattr(tile, field):
            return [dataclasses.replace(tile, **{field: False}), tile]
        # On, as it was (a K tile of at most 16, the loop's split), and in the shapes whose K loop reads no shared
        # memory (OUTER_NO_SHARED: K tiles of 2 or 4 unrolled 8 a trip, 8 warps), the forward's with an accumulator
        # per gate (the four gates' one spills at K 4: docs/triton.md)
        apart = {} if bwd else {"fuse_gates": False}
        return [tile, dataclasses.replace(tile, **{field: True, k: min(k_now, 16)})] + [
            dataclasses.replace(tile, **{field: True, k: kt, split: sp, warps: w}, **apart)
            for kt, sp, w in OUTER_NO_SHARED]
    backward = field.endswith("_bwd")
    # (the backward's loop pipelines further: on the H200 3 stages took it to 0.51 of its time, the forward to 0.79)
    values = {"block_k": k_tiles(tile, dtype, backward), "fuse_gates": (True, False), "num_warps": (4, 8, 16),
              "num_stages": (1, 2, 3, 4) if backward else (1, 2, 3), "row_align": (1, 16),
              "transposed": (False, True)}[field.removesuffix("_bwd")]
    return [dataclasses.replace(tile, **{field: v}) for v in values]


def narrow_fields(tile: launch.Tile | launch.Plan) -> dict:
    """What a tile's programs change to run several an SM: at most 4 warps a kernel and the reduction unsplit (with
    outer products the split is the K loop's unrolling, and stays).  sm_90, Triton 3.6: the measured large entries'
    8 warps hold one program an SM in the backward, 4 warps two or more; a narrow program's K trip with 4 warps is
    192-298 instructions for 128 FFMA, with 2 or 1 warp 339-681 (docs/triton.md)."""
    out = {"num_warps": min(tile.num_warps, 4), "num_warps_bwd": min(tile.num_warps_bwd, 4)}
    if not tile.outer:
        out["split_k"] = 1
    if tile.split_k_bwd is not None and not tile.outer_bwd:
        out["split_k_bwd"] = 1
    return out


def k_tiles(tile: launch.Tile, dtype: torch.dtype, backward: bool) -> tuple[int, ...]:
    """The K tiles worth trying for the forward's or the backward's K loop of ``tile``: at most 32 with outer products
    (registers); for the forward, also the widest, for small, where one or two tiles cover H = 200 and with one dot
    for the gates compile without spilling (sm_90, Triton 3.6: float32 K 128 250 registers, bfloat16 K 256 255)."""
    if tile.outer_bwd if backward else tile.outer:
        return (2, 4, 8, 16)
    ks = (16, 32, 64, 128) if dtype == torch.float32 else (32, 64, 128, 256)
    return ks[:-1] if backward else ks


# The fields varied, in order: the dot structure, the padding of the rows (before the stages: unpadded, the bfloat16
# forward does not pipeline), the stages and the split of the reduction right after the split of the units, since they
# change which reduction tile is best.  The backward's K loop has fields of its own (launch.BWD_FIELDS: the search
# starts from the tile with them stated, launch.apart, so that each field changes one kernel), its stages and K tile
# varied together ("stages_k_bwd": 9-12 pairs).  The GRU fuses its three gates with a fourth of zeros.  The backward
# reading W_hh transposed ("transposed_bwd") and, in 16-bit dtypes, dA rounded to it ("round_da_bwd") come before its
# K tile and stages: they change the loads those pipeline and the MMAs.
FIELDS = dict.fromkeys(("LSTM", "GRU"), ("units", "exchange", "exchange_bwd", "fuse_gates", "fuse_gates_bwd",
                                         "round_da_bwd", "transposed_bwd", "outer", "outer_bwd", "row_align",
                                         "num_stages", "split_k", "block_k", "stages_k_bwd", "split_k_bwd", "num_warps",
                                         "num_warps_bwd"))
# Outer products in (K tile, tiles a trip, warps) whose K loop, compiled for sm_90 (Triton 3.6) at the PTB presets in
# float32, reads no shared memory and has no CTA barrier: each [B, K] and [N, K] operand small enough that Triton
# loads it in the accumulator's own layout, most of a trip's loads issued before its FMAs (docs/triton.md).
OUTER_NO_SHARED = ((4, 8, 8), (2, 8, 8), (4, 16, 8), (2, 16, 8))  # (the last two: 64 k a trip, 2026-11-28)
OUTER_FIELDS = ("outer", "outer_bwd")  # float32 in exact arithmetic only (launch.plan_for drops them otherwise)


def ordered(fields, dtype: torch.dtype) -> list[str]:
    """``fields`` (in :data:`FIELDS`' order) with those of the kernel that loses most to cuDNN first, the units (the
    grid, both kernels') always first: the forward's in float32, the backward's (``*_bwd``) in 16 bits.  On the H200
    (2026-11-28, docs/triton.md) the float32 forward took 1.1-3.6x cuDNN's at medium and large, the backward faster at
    medium and 1.4x at large; in bfloat16 the forwards were as fast as cuDNN's or faster and the backwards 1.3-1.7x
    its at large.  A search cut at its time limit has then tried what can close the gap; one that ends has tried all."""
    backward_first = dtype != torch.float32
    head = [f for f in fields if f == "units"]
    rest = [f for f in fields if f != "units"]
    return head + sorted(rest, key=lambda f: f.endswith("_bwd") != backward_first)


KINDS = {"triton_lstm": "LSTM", "triton_gru": "GRU"}  # the cells a search tunes, and whose table (launch.tiles)
CELLS = tuple(KINDS)


def start_tile(kind: str, hidden: int, dtype: torch.dtype, sms: int) -> launch.Tile:
    """Where a search starts: the table's tile (else the heuristic's plan's), with the backward's fields stated apart
    (the same kernels; from there a forward field changes the forward only)."""
    tile = launch.tiles(kind).get((hidden, dtype))
    if tile is None:
        h = launch.plan_for(BATCH, hidden, dtype, sms, kind=kind)
        tile = launch.Tile(h.units, h.block_j, h.block_k, h.num_warps, h.num_warps_bwd, h.num_stages, h.fuse_gates,
                           h.split_k, h.row_align)
    return launch.apart(tile)


def tune(preset: str, dtype: torch.dtype, reps: int, log=print, cell: str = "triton_lstm", emit=None,
         rounds: int = 1, fp32_precision: str = "ieee", fields: tuple[str, ...] | None = None,
         deadline: float | None = None, device: str = "cuda", sms: int | None = None,
         prior: tuple[dict, ...] = ()) -> list[dict]:
    """Greedy search for one preset and dtype of ``cell``, up to ``rounds`` times over the fields (again only after a
    round that kept a change); returns one record per timed candidate, each also passed to ``emit`` as it is made
    (the command line writes them out at once: a run cut short keeps what it measured).  ``fields``: vary only these
    of :data:`FIELDS` (in its order; default all).  ``deadline`` (``time.monotonic()``): no candidate is timed after
    it; a search it cuts still names the best it timed (its records say ``cut``), one it finds passed does not start.
    ``device`` and ``sms`` (default: the device's SM count) are for :mod:`.rehearse`, which runs the search with the
    launches mocked.  ``prior``: the records of an earlier run that ended on a hung candidate (``--after-hang``): a
    search that named its best there is not run again, and no tile recorded hung there is timed."""
    def late() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if late():
        log(f"{preset} {dtype} {cell}: not searched (past the time limit)")
        return []
    mine = [r for r in prior if _group(r) == (cell, preset, str(dtype))]
    if any(r.get("best") for r in mine):
        log(f"{preset} {dtype} {cell}: searched already (the --json file names its best)")
        return []
    hung_before = {launch.Tile(**r["tile"]) for r in mine if _hung(r)}
    hidden, steps = PRESETS[preset]
    device = torch.device(device)
    sms = sms or launch.sm_count(device)
    if sms < launch.TILES_SMS:  # (its plans would ignore every candidate: launch.plan_for)
        log(f"{preset} {dtype} {cell}: not searched: the tile tables are for GPUs of at least {launch.TILES_SMS} SMs "
            f"(H100 SXM, H200), this one has {sms}, and its plans come from the heuristic whatever the table holds")
        return []
    torch.manual_seed(0)
    # fp32_precision: the float32 recurrent matmuls' arithmetic (the cell's option; bfloat16 ignores it); the table is
    # per (hidden size, dtype), so a search in "tf32x3" says which tile it would want, not what the table holds.
    module = cells.build(cell, hidden, hidden, LAYERS, fp32_precision=fp32_precision).to(device=device, dtype=dtype)
    kind = module.mode
    ref = getattr(torch.nn, kind)(hidden, hidden, LAYERS).to(device=device, dtype=dtype)
    ref.load_state_dict(module.state_dict())
    ref.flatten_parameters()  # one contiguous weight chunk, as cuDNN wants (else it compacts them every call)
    x = torch.randn(steps, BATCH, hidden, device=device, dtype=dtype, requires_grad=True)
    try:
        cudnn_fwd, cudnn_fwdbwd, _, _, cudnn_peak, cudnn_graph = _passes(ref, x, reps)
    except RuntimeError as exc:  # (a candidate's failed capture is that candidate's failure; cuDNN's, the criterion's)
        log(f"{preset} {dtype}: cuDNN's forward+backward as a CUDA graph failed ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the search judges by eager calls")
        cudnn_fwd, cudnn_fwdbwd, _, _, cudnn_peak, cudnn_graph = _passes(ref, x, reps, graph=False)
    start = start_tile(kind, hidden, dtype, sms)
    records, seen, expected = [], {}, None
    fields = ordered([f for f in FIELDS[kind] if (fp32_precision == "ieee" or f not in OUTER_FIELDS)
                      and (fields is None or f in fields)], dtype)

    def keep(rec: dict) -> None:
        records.append(rec)
        if emit:
            emit(rec)

    def measure(tile: launch.Tile) -> float:
        nonlocal expected
        if tile in seen:
            return seen[tile]
        if tile in hung_before:
            log(f"{preset} {dtype} {describe(tile)}: not timed: it hung in an earlier run")
            seen[tile] = float("inf")
            return seen[tile]
        # its kernels, compiling in the pool since warm; if the time limit passes meanwhile, the search is cut here
        waited = compiling.wait(tile, None if deadline is None else max(0.0, deadline - time.monotonic()))
        if late():
            seen[tile] = float("inf")
            return seen[tile]
        beside = compiling.pending()
        put(tile)
        t0 = time.perf_counter()

        def hung() -> None:  # (in the watchdog's thread, while this one waits on the GPU)
            log(f"{preset} {dtype} {describe(tile)}: no result after {HUNG_S:g} s: hung (a grid barrier never met?); "
                "ending the search here, so that the steps after it keep their time")
            keep({"cell": cell, "preset": preset, "dtype": str(dtype), "tile": dataclasses.asdict(tile),
                  "error": f"hung: no result after {HUNG_S:g} s; the search ended here"})
            end_process(HUNG_EXIT)

        try:
            with watchdog(HUNG_S, hung):
                fwd, fwdbwd, out, grad, peak, graph = _passes(module, x, reps, graph=cudnn_graph is not None)
        except Exception as exc:  # a tile the compiler or the SM count refuses: recorded, not fatal
            log(f"{preset} {dtype} {tile}: failed: {type(exc).__name__}: {str(exc)[:200]}")
            keep({"cell": cell, "preset": preset, "dtype": str(dtype), "tile": dataclasses.asdict(tile),
                  "error": f"{type(exc).__name__}: {exc}"[:500]})
            seen[tile] = float("inf")
            return seen[tile]
        expected = (out, grad) if expected is None else expected
        # the output to the first candidate's, absolutely; the input's gradient relatively to its largest element
        diff = max((out - expected[0]).abs().max().item(),
                   ((grad - expected[1]).abs().max() / expected[1].abs().max().clamp_min(1e-30)).item())
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        plan = module.describe_backend(device, batch=BATCH, dtype=dtype)
        rec = {"cell": cell, "preset": preset, "dtype": str(dtype), "fp32_precision": fp32_precision,
               "tile": dataclasses.asdict(tile), "fwd_s": fwd,
               "fwdbwd_s": fwdbwd, "cudnn_fwd_s": cudnn_fwd, "cudnn_fwdbwd_s": cudnn_fwdbwd,
               "speedup_fwdbwd": cudnn_fwdbwd / fwdbwd, "peak_fwdbwd_mib": peak / 2**20,
               "cudnn_peak_fwdbwd_mib": cudnn_peak / 2**20, "max_diff": diff, "ok": diff <= tol,
               "reps": reps, "eager_reps": eager_reps(reps, graph is not None),
               "seconds_incl_compile": time.perf_counter() - t0, "compile_wait_s": waited,
               "compiles_beside": beside, "backend": plan}
        if graph is not None:
            rec.update(fwdbwd_graph_s=graph, cudnn_fwdbwd_graph_s=cudnn_graph, speedup_fwdbwd_graph=cudnn_graph / graph)
        keep(rec)
        seen[tile] = (fwdbwd if graph is None else graph) if rec["ok"] else float("inf")
        graphs = "" if graph is None else f"  as a graph {graph * 1e3:7.3f} ms x{cudnn_graph / graph:5.2f}"
        log(f"{preset:6} {str(dtype):14} {describe(tile)}  fwd {fwd * 1e3:7.3f} ms  "
            f"fwd+bwd {fwdbwd * 1e3:7.3f} ms  vs cuDNN x{cudnn_fwdbwd / fwdbwd:5.2f}{graphs}  "
            f"peak {peak / 2**20:6.1f} MiB (cuDNN {cudnn_peak / 2**20:.1f})  diff {diff:.1e}"
            + ("" if rec["ok"] else "  WRONG"))
        return seen[tile]

    warmed: set[launch.Tile] = set()

    def warm(tiles: list[launch.Tile]) -> None:  # submitted to the pool; measure waits for a tile's own kernels
        tiles = [t for t in dict.fromkeys(tiles) if t not in warmed and t not in hung_before]
        warmed.update(tiles)
        added = sum(compiling.add(t, _record(module, x, put, t)) for t in tiles)
        if added:
            log(f"{preset} {dtype}: {added} kernels of {len(tiles)} candidates compiling side by side "
                f"({compiling.pending()} queued or under way)")

    def retarget(keep: list[launch.Tile]) -> None:  # the best changed: what was queued around the old one goes
        compiling.keep_only(keep)
        warmed.intersection_update(keep)

    compiling = precompile.Ahead()  # (the kernels of the candidates, compiling in a pool ahead of their timing)
    with launch.table_entry(kind, hidden, dtype) as put:
        # Every field's candidates around the start, in one batch: the fields whose value stays need no other.
        warm([start] + [t for field in fields for t in candidates(start, hidden, dtype, sms, field)])
        best, best_s, cut = greedy(start, fields, lambda tile, field: candidates(tile, hidden, dtype, sms, field),
                                   measure, warm, rounds, late, retarget)
        compiling.keep_only(())  # (a cut search's queue)
        if compiling.line():
            log(f"{preset} {dtype}: {compiling.line()}")
        timed = "fwd+bwd" if cudnn_graph is None else "fwd+bwd as a CUDA graph"
        log(f"best {preset} {dtype}: {best} ({timed} {best_s * 1e3:.3f} ms, cuDNN "
            f"{(cudnn_fwdbwd if cudnn_graph is None else cudnn_graph) * 1e3:.3f} ms)"
            + ("; cut at the time limit, the later candidates untimed" if cut else ""))
        for rec in records:
            rec["best"] = rec.get("tile") == dataclasses.asdict(best)
            if cut:
                rec["cut"] = True
    return records


def _group(rec: dict) -> tuple[str, str, str]:
    """(cell, preset, dtype) of a search's record (records before 2026-11-28 name no cell: triton_lstm's)."""
    return rec.get("cell", "triton_lstm"), rec.get("preset"), str(rec.get("dtype"))


def _hung(rec: dict) -> bool:
    return str(rec.get("error", "")).startswith("hung")


def after_hang(path: str | None) -> tuple[list[dict], list[dict]]:
    """(the records of the --json file ``path``, those of them to keep) for a search continued after a hung candidate:
    kept, the records of the searches that named their best and every hung record; the unfinished searches' other
    records go, as those searches run again (none of the file's hung tiles timed).  No file, or not a search's: none."""
    try:
        records = [r for r in json.loads(Path(path).read_text())["records"] if isinstance(r, dict)]
    except (TypeError, OSError, ValueError, KeyError):
        return [], []
    done = {_group(r) for r in records if r.get("best")}
    return records, [r for r in records if _group(r) in done or _hung(r)]


def greedy(start, fields, around, measure, warm, rounds: int = 1, late=lambda: False, retarget=None):
    """The search itself: from ``start``, each field's candidates (``around(tile, field)``) timed by ``measure``
    (seconds; inf for a failed or wrong one), a change kept when it is more than 2 % faster; up to ``rounds`` times
    over the fields, again only after a round that kept a change.  ``warm(tiles)`` is told the candidates before
    they are timed -- a field's, and the next field's around the best so far, which compile while this field's are
    timed (kept only if this field keeps no change: else ``retarget(this field's candidates)`` first drops them, and
    the next field's around the new best follow).  No candidate is timed once ``late()``: the search is then cut.
    Returns (the best tile, its seconds, whether it was cut)."""
    best, best_s = start, measure(start)
    for _ in range(rounds):
        kept = best
        for i, field in enumerate(fields):
            tiles = around(best, field)
            after = fields[i + 1] if i + 1 < len(fields) else None
            warm(tiles + (around(best, after) if after else []))
            for tile in tiles:
                if late():
                    return best, best_s, True
                s = measure(tile)
                if s < best_s * 0.98:
                    best, best_s = tile, s
                    if retarget:
                        retarget(tiles)
                    if after:
                        warm(around(best, after))
        if best == kept:
            break
    return best, best_s, False


def file_tiles(path: str | Path) -> dict[tuple[str, int, torch.dtype], tuple[launch.Tile, str]]:
    """The winners of the tile searches in one ``--json`` file of this module, for :func:`.launch.use_file_tiles`:
    (kind, hidden size, dtype) -> (tile, "NAME (the tile search on DEVICE at commit C)").  A search killed before its
    end has no winner (its preset keeps the table's tile; one its ``--time-limit`` cut names the best it timed); one
    in another arithmetic than exact float32 (``--fp32-precision``) is not for the table and is left out.  Raises
    ValueError, one line, on a file that is not such a record."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        records, environment = doc["records"], doc.get("env") or {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: not a tile search's --json file ({why})") from None
    source = (f"{path.name} (the tile search on {environment.get('device_name', '?')} at commit "
              f"{str(environment.get('commit') or '?')[:7]})")
    found = {}
    for rec in records:
        if not (isinstance(rec, dict) and rec.get("best") and rec.get("ok", True)
                and rec.get("fp32_precision", "ieee") == "ieee"):
            continue
        try:
            key = (KINDS[rec.get("cell", "triton_lstm")], PRESETS[rec["preset"]][0],
                   DTYPES[str(rec["dtype"]).removeprefix("torch.")])
            found[key] = (launch.Tile(**rec["tile"]), source)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: a best record this version cannot read ({type(exc).__name__}: {exc})") from None
    return found


def describe(tile: launch.Tile) -> str:
    """One tile in a log line: units, J, then per kernel (forward / backward) the K tile, warps, stages, split and dot
    structure, the rows' padding, and the outer products and the backward's transposed W_hh where on, and the programs
    an SM where more than one."""
    def pair(field: str, fmt=str) -> str:
        f, b = launch.kernel_value(tile, field, False), launch.kernel_value(tile, field, True)
        return fmt(f) if f == b else f"{fmt(f)}/{fmt(b)}"

    outer = "".join(s for s, on in ((" exchange", tile.exchange), (" exchange-bwd", tile.exchange_bwd),
                                    (" outer", tile.outer),
                                    (" outer-bwd", tile.outer_bwd),
                                    (" wt-bwd", tile.transposed_bwd and not tile.outer_bwd),
                                    (" da16-bwd", tile.round_da_bwd)) if on)
    per_sm = f" {tile.per_sm}/SM" if tile.per_sm > 1 else ""
    return (f"u{tile.units:<3} J{tile.block_j:<3} K{pair('block_k'):<6} w{tile.num_warps}/{tile.num_warps_bwd} "
            f"s{pair('num_stages')} k/{pair('split_k')} r{tile.row_align} "
            f"{pair('fuse_gates', lambda v: 'fused' if v else 'gates')}{outer}{per_sm}")


def cli(argv: list[str] | None, module: str, doc: str, default_dtypes: str, work, extra=(), cells=None,
        initial=None, order=None) -> int:
    """The command line of this module and :mod:`.probe`: ``--presets``, ``--dtypes``, ``--reps``, ``--json`` (and
    ``extra``: (flags, keyword arguments) pairs); one-line errors with exit 2; ``work(preset, dtype, args, emit, cell)``
    for each dtype, cell (``cells(args)``, default one: None) and preset, in that order -- or for the (cell, preset,
    dtype) of ``order(args)`` where that is not None --, which passes each record to
    ``emit`` as it is made: ``--json`` is rewritten with every record so far each time (a killed run keeps what it
    measured) and after each preset (records may gain fields at the end, e.g. ``best``); ``initial(args)``: the
    records the file starts with (an earlier run's, kept)."""
    from lm.cli import Parser, positive_int  # argparse, its errors on one line

    p = Parser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    p.add_argument("--presets", default="medium,large", type=lambda v: names(v, PRESETS, "preset"),
                   help=f"comma-separated: {', '.join(PRESETS)}")
    p.add_argument("--dtypes", default=default_dtypes, type=lambda v: names(v, DTYPES, "dtype"),
                   help=f"comma-separated: {', '.join(DTYPES)}")
    p.add_argument("--reps", type=positive_int, default=15)
    p.add_argument("--json", default=None, type=json_path, help="write every record here")
    for flags, kwargs in extra:
        p.add_argument(*flags, **kwargs)
    args = p.parse_args(argv)  # every input checked here, before the CUDA check and any compiling or timing
    if getattr(args, "searches", None) and (args.presets != p.get_default("presets").split(",")
                                            or args.dtypes != default_dtypes.split(",")
                                            or args.cell != p.get_default("cell").split(",")):
        p.error("--searches names each search's cell, preset and dtype: give it without --presets, --dtypes, --cell")
    args.started = time.monotonic()
    presets, dtypes = args.presets, args.dtypes
    if not torch.cuda.is_available() or launch.runs_interpreted(torch.device("cuda")):
        print(f"rnnbench: error: {module} times compiled kernels and needs CUDA (none here)", file=sys.stderr)
        return 2
    # cuDNN's float32 RNN as the search's arithmetic: TF32 beside "tf32", exact beside "ieee" and "tf32x3" (the
    # probe has no --fp32-precision: exact; ``registry``, as the parameter ``cells`` hides the module)
    registry.set_fp32_matmul("tf32" if getattr(args, "fp32_precision", "ieee") == "tf32" else "ieee")
    from lm import env
    from lm.records import atomic_write

    command = f"python -m {module} {env.relative_command(sys.argv[1:] if argv is None else argv)}"
    environment = env.environment(torch.device("cuda"))
    records = list(initial(args)) if initial else []

    def write() -> None:
        if args.json and records:
            doc = {"env": environment, "command": command, "records": records}
            atomic_write(args.json, json.dumps(doc, indent=2, default=str) + "\n")

    def emit(rec: dict) -> None:
        records.append(rec)
        write()

    chosen = order(args) if order else None
    if chosen is None:
        chosen = [(cell, preset, dtype) for dtype in dtypes for cell in (cells(args) if cells else [None])
                  for preset in presets]
    for cell, preset, dtype in chosen:
        work(preset, DTYPES[dtype], args, emit, cell)
        write()
    return 0


# The command lines' argparse types (here, :mod:`.probe` and :mod:`.hostcost`): a bad value is a one-line error (exit 2)
# from lm.cli.Parser, before any compiling or timing.

def names(value: str, known, what: str) -> list[str]:
    """Comma-separated names, each one of ``known``; an unknown one, or none, is refused listing the accepted."""
    chosen = [n for n in value.split(",") if n]
    bad = [n for n in chosen if n not in known]
    if bad or not chosen:
        said = f"unknown {what} {', '.join(bad)}" if bad else f"no {what} named ({value!r})"
        raise argparse.ArgumentTypeError(f"{said}; choose from {', '.join(known)}")
    return chosen


def json_path(text: str) -> str:
    """--json: a file to write in a folder that exists and is writable, found out before the first measurement."""
    path = Path(text)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        if not path.parent.is_dir():
            raise NotADirectoryError(f"{path.parent} is not a folder")
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text} ({exc.strerror or exc})") from None
    return text


def _cells(value: str) -> list[str]:
    """--cell: one or more of :data:`CELLS`, comma-separated."""
    return names(value, CELLS, "cell")


def _searches(value: str) -> list[tuple[str, str, str]]:
    """--searches: CELL:PRESET:DTYPE, comma-separated, each part one of :data:`CELLS`, :data:`PRESETS`, :data:`DTYPES`;
    a search named twice is refused."""
    out = []
    for item in [v for v in value.split(",") if v] or [""]:
        parts = item.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"{item!r} is not CELL:PRESET:DTYPE (e.g. triton_lstm:large:float32)")
        out.append((names(parts[0], CELLS, "cell")[0], names(parts[1], PRESETS, "preset")[0],
                    names(parts[2], DTYPES, "dtype")[0]))
    if len(set(out)) < len(out):
        raise argparse.ArgumentTypeError(f"a search named twice in {value!r}")
    return out


def _fields(value: str) -> tuple[str, ...]:
    """--fields: some of :data:`FIELDS`, comma-separated."""
    return tuple(names(value, dict.fromkeys(FIELDS["LSTM"] + FIELDS["GRU"]), "field"))


def main(argv: list[str] | None = None) -> int:
    from lm.cli import number_arg

    seconds = number_arg(float, lambda v: math.isfinite(v) and v > 0, "a positive number of seconds")

    def initial(args) -> list[dict]:  # --after-hang: the earlier run's records, those kept
        args.prior, kept = after_hang(args.json) if args.after_hang else ([], [])
        return kept

    return cli(argv, __spec__.name if __spec__ else "cells.triton_lstm.tune", __doc__, "float32,bfloat16",
               lambda preset, dtype, args, emit, cell: tune(
                   preset, dtype, args.reps, cell=cell, emit=emit, rounds=args.rounds,
                   fp32_precision=args.fp32_precision, fields=args.fields,
                   deadline=None if args.time_limit is None else args.started + args.time_limit,
                   prior=tuple(args.prior)),
               cells=lambda args: args.cell, initial=initial, order=lambda args: args.searches,
               extra=[(("--cell",), dict(default="triton_lstm", type=_cells,
                                         help="whose table to fill: TILES (triton_lstm) or GRU_TILES (triton_gru); "
                                              "both comma-separated: per dtype every preset of the first, then of "
                                              "the second")),
                      (("--searches",), dict(default=None, type=_searches, metavar="CELL:PRESET:DTYPE,...",
                                             help="exactly these searches, in this order, instead of every preset, "
                                                  "dtype and cell of --presets, --dtypes and --cell (the GPU check: "
                                                  "the largest gaps to cuDNN first, so that a cut run has searched "
                                                  "those)")),
                      (("--fields",), dict(default=None, type=_fields,
                                           help="vary only these fields, comma-separated (default: all; each cell "
                                                "varies those of them it has): "
                                                + ", ".join(dict.fromkeys(FIELDS["LSTM"] + FIELDS["GRU"])))),
                      (("--time-limit",), dict(type=seconds, default=None, metavar="SECONDS",
                                               help="time no candidate after this many seconds from the start: the "
                                                    "search under way names the best it timed (its records say "
                                                    "'cut'), later ones do not start (the GPU check passes what its "
                                                    "step may take)")),
                      (("--after-hang",), dict(action="store_true",
                                               help=f"continue the searches of the --json file, whose run ended on "
                                                    f"a hung candidate (exit {HUNG_EXIT}): those that named their "
                                                    "best are kept, the others run again without timing a tile "
                                                    "recorded hung")),
                      (("--rounds",), dict(type=int, default=1, choices=(1, 2, 3),
                                           help="times over the fields, again only after a round that kept a change")),
                      (("--fp32-precision",), dict(default="ieee", choices=("ieee", "tf32", "tf32x3"),
                                                   help="the float32 recurrent matmuls' arithmetic (the cells' "
                                                        "fp32_precision; default exact): which tiles another would "
                                                        "want"))])


if __name__ == "__main__":
    sys.exit(main())
