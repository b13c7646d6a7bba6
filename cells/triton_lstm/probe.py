"""Where one recurrent step's time goes on the GPU: each kernel timed whole and with parts left out.

Usage (on a CUDA machine; the variants' kernels are compiled side by side first, :mod:`.precompile`)::

    python -m cells.triton_lstm.probe --presets medium,large --dtypes float32 --json OUT.json
    python -m cells.triton_lstm.probe --cell triton_lstm,triton_gru ...   # the GRU's kernels too
    ncu --clock-control none -k regex:lstm_ -c 2 python -m cells.triton_lstm.probe --presets large --once

Without a profiler's counters, time is placed inside a kernel by timing variants that leave one stage out and
taking differences.  For each PTB preset (one layer, B = 20, T = 20 / 35 / 35) and dtype, with the plan a real
launch gets (``launch.make_plan``, i.e. the ``TILES`` entry), the forward kernel (training: the gates stored) and
the backward kernel are timed alone in these variants (the kernels' ``PROBE`` argument):

* ``full``         the kernel as it runs in training;
* ``no-matmul``    without the recurrent matmul h_{t-1} W_hh^T (dA_{t+1} W_hh in the backward);
* ``no-barrier``   without the grid barrier between steps (the programs race: the results are wrong);
* ``neither``      without both: what is left is the pointwise work, the loads of xp and the stores;
* ``stages-3``     the full kernel with a software-pipelined K loop (``num_stages=3``), to see whether prefetching
                   the next reduction tiles pays;
* ``fused-gates``  the full kernel with the other dot structure than the plan's (``fuse_gates`` flipped: one
                   tl.dot per tile for the four gates instead of one per gate; ``dot-per-gate`` the reverse).
* ``padded-16``    the full kernel with the rows of W_hh and of the step's operand padded to a multiple of 16
                   (``row_align=16``: aligned vector loads and ``cp.async`` for 2-byte elements, for a padded copy
                   of W_hh per launch; ``unpadded`` the reverse);
* ``split-4``      the full kernel with the reduction over H split 4 ways inside each program (``split_k=4``, 16
                   warps): a quarter of the dependent trips through the K loop per step, four times the warps;
* ``transposed-bwd`` the full kernels with the backward's tl.dot on a transposed copy of W_hh (``transposed_bwd``:
                   vector loads of its tiles; the forward is the same kernel); ``untransposed-bwd`` the reverse;
* ``da16-bwd``     (16-bit dtypes) the full kernels with the backward's recurrent matmul on dA rounded to the
                   compute dtype (``round_da_bwd``: one MMA of that dtype instead of two in TF32); ``da32-bwd`` the
                   reverse;
* ``tf32x3``, ``tf32`` (float32 only) the full kernel with the recurrent matmul on the tensor cores instead of exact
                   FMA: three TF32 products per multiply (about float32's accuracy; ``fp32_precision="tf32x3"``), or
                   one (TF32's 10-bit mantissas, what cuDNN does when torch allows TF32);
* ``outer-products`` (exact float32) the full kernel with both K loops as outer products summed after them instead
                   of tl.dot (``outer``, ``outer_bwd``; a K tile of at most 16): FMAs without tl.dot's operand
                   shuffles through shared memory;
* ``outer-unrolled`` (exact float32) the same with a K tile of 4 unrolled 8 a trip and 8 warps (``block_k=4``,
                   ``split_k=8``): K loops with no shared-memory instruction and no CTA barrier, a trip's loads
                   mostly issued before its FMAs (docs/triton.md);
* ``exchange``     (persistent and stepwise plans) both kernels' recurrent matmuls as exchanges of shares
                   through L2 instead of K loops (``launch.Tile.exchange``, ``exchange_bwd``), ``exchange-outer``
                   (exact float32) with the forward's phase 1 as outer products over the program's units (8 warps),
                   and ``exchange-16`` with 16 units a program (the forward's phase-1 dot unpadded);
* ``narrow``       (persistent plans) half the units a program in the smallest unit tile that holds them, twice the
                   programs, so two an SM (``launch.Tile.per_sm``), at most 4 warps each and the reduction unsplit
                   (``tune.narrow_fields``): whether narrower programs side by side hide each other's latency
                   (refused at launch where the kernel's registers leave room for one).

Per step (kernel time / T), the matmul costs about ``full - no-matmul``, the barrier ``full - no-barrier``; the
parts overlap, so these are estimates, not a partition.  Timing: CUDA events around 5 back-to-back launches (so
host work between launches never leaves the GPU idle), two untimed launches first, median of ``--reps``; random
inputs (never zeros).  ``--once`` launches the forward and the backward once each, untimed, for a profiler.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import torch

from . import launch, precompile, tune
from .tune import BATCH, OUTER_NO_SHARED, PRESETS, _cells, _time, cli, narrow_fields

VARIANTS = {"full": 0, "no-matmul": 1, "no-barrier": 2, "neither": 3}
CALLS = 5  # launches between two events


def inputs(hidden: int, steps: int, dtype: torch.dtype, device: torch.device, seed: int = 0, gates: int = 4) -> dict:
    """Random operands of one layer's forward and backward kernels (the scale of a trained PTB layer); ``gates``: 4
    (LSTM) or 3 (GRU, which ignores c0 and dcT)."""
    g = torch.Generator(device=device).manual_seed(seed)
    acc = launch.accumulation_dtype(dtype)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

    bound = hidden ** -0.5
    return dict(xp=rnd(steps, BATCH, gates * hidden), w_hh=rnd(gates * hidden, hidden, scale=bound),
                b_ih=rnd(gates * hidden, scale=bound), b_hh=rnd(gates * hidden, scale=bound), h0=rnd(BATCH, hidden),
                c0=rnd(BATCH, hidden, dt=acc), dy=rnd(steps, BATCH, hidden), dhT=rnd(BATCH, hidden),
                dcT=rnd(BATCH, hidden, dt=acc))


def _variants(plan: launch.Plan, dtype: torch.dtype, hidden: int | None = None, sms: int | None = None,
              kind: str = "LSTM") -> list[tuple[str, launch.Plan, int]]:
    """(name, plan, PROBE flag) of every variant timed for ``plan`` (the module docstring's list); ``hidden`` and
    ``sms`` (H and the GPU's SMs) for the grid of narrower programs and the exchange's of 16 units."""
    # (a field of launch.BWD_FIELDS changed for both kernels: each kernel is timed alone)
    variants = [(name, plan, flag) for name, flag in VARIANTS.items()]
    if plan.sync and hidden and sms and plan.units > 1:  # half the units a program, twice the programs
        units = -(-plan.units // 2)
        programs = -(-hidden // units)
        block_j = max(2 if plan.fuse_gates or plan.outer else 4, 1 << (units - 1).bit_length())
        variants.append(("narrow", dataclasses.replace(plan, units=units, programs=programs, block_j=block_j,
                                                       per_sm=-(-programs * plan.batch_blocks // sms),
                                                       **narrow_fields(plan)), 0))
    if plan.path != "blocked" and not plan.exchange:  # both matmuls as exchanges of shares
        variants.append(("exchange", dataclasses.replace(plan, exchange=True, exchange_bwd=True, resident=False), 0))
        if dtype == torch.float32 and plan.precision == "ieee":  # the forward's phase 1 as outer products, 8 warps
            variants.append(("exchange-outer", dataclasses.replace(plan, exchange=True, exchange_bwd=True, outer=True,
                                                                   resident=False, num_warps=8), 0))
        if hidden and sms and plan.sync and hidden > 16:
            programs = -(-hidden // 16)
            per_sm = -(-programs * plan.batch_blocks // sms)
            variants.append(("exchange-16", dataclasses.replace(
                plan, exchange=True, exchange_bwd=True, resident=False, units=16, block_j=16, programs=programs,
                per_sm=per_sm,
                **(narrow_fields(plan) if per_sm > 1 else {})), 0))
    variants.append(("stages-3", launch.both(plan, num_stages=3), 0))
    other = "dot-per-gate" if plan.fuse_gates else "fused-gates"
    variants.append((other, launch.both(plan, fuse_gates=not plan.fuse_gates), 0))
    other_align = 16 if plan.row_align == 1 else 1
    variants.append(("padded-16" if other_align == 16 else "unpadded", dataclasses.replace(plan, row_align=other_align),
                     0))
    if plan.split_k == 1:
        variants.append(("split-4", launch.both(plan, split_k=4, num_warps=max(plan.num_warps, 16),
                                                 num_warps_bwd=max(plan.num_warps_bwd, 16)), 0))
    # the backward's dot on W_hh^T (vector loads of its tiles; the forward is the same kernel, the interpreter's
    # resident slice streamed instead)
    variants.append(("transposed-bwd" if not plan.transposed_bwd else "untransposed-bwd",
                     dataclasses.replace(plan, transposed_bwd=not plan.transposed_bwd, resident=False), 0))
    if dtype.itemsize == 2:  # the backward's recurrent matmul on dA rounded to the compute dtype
        variants.append(("da16-bwd" if not plan.round_da_bwd else "da32-bwd",
                         dataclasses.replace(plan, round_da_bwd=not plan.round_da_bwd), 0))
    if dtype == torch.float32 and plan.precision == "ieee":
        variants += [(prec, dataclasses.replace(plan, precision=prec), 0) for prec in ("tf32x3", "tf32")]
        if not (plan.outer and plan.outer_bwd):  # (a resident slice -- the interpreter's -- streamed instead)
            variants.append(("outer-products", launch.both(plan, outer=True, outer_bwd=True, resident=False,
                                                           block_k=min(plan.block_k, 16)), 0))
        # ... in the shapes whose K loops read no shared memory (tune.OUTER_NO_SHARED's first)
        k, split, warps = OUTER_NO_SHARED[0]
        variants.append(("outer-unrolled", launch.both(plan, outer=True, outer_bwd=True, resident=False, block_k=k,
                                                       split_k=split, num_stages=1, num_warps=warps,
                                                       num_warps_bwd=warps), 0))
    return variants


def probe(preset: str, dtype: torch.dtype, reps: int, once: bool = False, log=print, device: str = "cuda",
          timer=_time, emit=None, cell: str = "triton_lstm", sms: int | None = None) -> list[dict]:
    """The variants of both kernels of ``cell`` (triton_lstm or triton_gru) for one preset and dtype; one record per
    kernel and variant, each also passed to ``emit`` as it is made.

    ``device``, ``timer`` (``timer(fn, reps, calls)`` -> seconds) and ``sms`` (the SM count, for the variants that
    need it: default the device's on CUDA, none elsewhere) are for tests and :mod:`.rehearse`: the CPU runs the
    kernels in Triton's interpreter, where no timing means anything."""
    hidden, steps = PRESETS[preset]
    device = torch.device(device)
    kind = "GRU" if cell == "triton_gru" else "LSTM"
    a = inputs(hidden, steps, dtype, device, gates=3 if kind == "GRU" else 4)
    plan = launch.make_plan(BATCH, hidden, dtype, device, kind=kind)
    saved = None  # what the forward keeps for the backward: (c, gates), or the GRU's (y, gates)

    def fwd(p, probe_flag=0):
        if kind == "GRU":
            y, gates = launch.gru_forward(a["xp"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], p, train=True,
                                          probe=probe_flag)
            return y, gates
        _, c, gates = launch.forward(a["xp"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], p, train=True,
                                     probe=probe_flag)
        return c, gates

    def bwd(p, probe_flag=0):
        if kind == "GRU":
            return launch.gru_backward(a["w_hh"], a["h0"], *saved, a["dy"], a["dhT"], p, probe=probe_flag)
        return launch.backward(a["w_hh"], a["c0"], *saved, a["dy"], a["dhT"], a["dcT"], p, probe=probe_flag)

    variants = _variants(plan, dtype, hidden, sms or (launch.sm_count(device) if device.type == "cuda" else None),
                         kind)

    def every_variant() -> None:
        nonlocal saved
        saved = fwd(plan)  # shapes only: nothing runs while collecting
        for _, p, flag in variants:
            if flag < 2 or p.sync:
                fwd(p, flag)
                bwd(p, flag)

    if not plan.interpret and not once:  # compile every variant's kernels side by side first (:mod:`.precompile`)
        summary = precompile.warm(every_variant)
        if summary:
            log(summary.line())
    saved = fwd(plan)  # the backward's inputs, from a real forward

    if once:
        bwd(plan)
        if device.type == "cuda":
            torch.cuda.synchronize()
        log(f"{cell} {preset} {dtype}: one forward and one backward launched ({plan.describe()})")
        return []
    records = []
    for kernel, fn in (("fwd", fwd), ("bwd", bwd)):
        full = None
        for name, p, flag in variants:
            if flag >= 2 and not p.sync:
                continue  # no grid barrier to leave out
            where = {"cell": cell, "preset": preset, "dtype": str(dtype), "kernel": kernel, "variant": name}

            def hung(where=where) -> None:  # (as the tile search's: the process ends, the check's later steps go on)
                log(f"{kind:4} {preset:6} {where['dtype'].removeprefix('torch.'):8} {where['kernel']} "
                    f"{where['variant']:10} no result after {tune.HUNG_S:g} s: hung; ending the probe here")
                rec = {**where, "error": f"hung: no result after {tune.HUNG_S:g} s; the probe ended here"}
                records.append(rec)
                if emit:
                    emit(rec)
                tune.end_process(3)

            try:
                with tune.watchdog(tune.HUNG_S, hung):
                    s = timer(functools.partial(fn, p, flag), reps, CALLS)
            except Exception as exc:  # noqa: BLE001 -- a variant this GPU or the compiler refuses (narrow's grid not
                # resident; split-4's shared memory past the SM's at large in bfloat16, Triton's OutOfResources): the
                # rest go on
                rec = {**where, "error": f"{type(exc).__name__}: {exc}"[:500], "plan": dataclasses.asdict(p),
                       "describe": p.describe()}
                records.append(rec)
                if emit:
                    emit(rec)
                log(f"{kind:4} {preset:6} {str(dtype).removeprefix('torch.'):8} {kernel} {name:10} failed: "
                    f"{str(exc)[:200]}")
                continue
            full = s if name == "full" else full
            rec = {**where, "seconds": s, "per_step_us": s / steps * 1e6, "steps": steps,
                   "plan": dataclasses.asdict(p), "describe": p.describe()}
            records.append(rec)
            if emit:
                emit(rec)
            log(f"{kind:4} {preset:6} {str(dtype).removeprefix('torch.'):8} {kernel} {name:10} {s * 1e3:8.3f} ms  "
                f"{rec['per_step_us']:7.2f} us/step" + (f"  ({s / full:.2f} of full)" if full else ""))
    return records


def main(argv: list[str] | None = None) -> int:
    return cli(argv, __spec__.name if __spec__ else "cells.triton_lstm.probe", __doc__, "float32",
               lambda preset, dtype, args, emit, cell: probe(preset, dtype, args.reps, args.once, emit=emit,
                                                              cell=cell),
               cells=lambda args: args.cell,
               extra=[(("--once",), dict(action="store_true", help="launch each kernel once, untimed (for ncu)")),
                      (("--cell",), dict(default="triton_lstm", type=_cells,
                                         help="whose kernels: triton_lstm, triton_gru, or both comma-separated"))])


if __name__ == "__main__":
    sys.exit(main())
