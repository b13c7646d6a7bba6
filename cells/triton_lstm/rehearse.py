"""Rehearse the GPU check's probe and tile search without a GPU, to find what would fail there first.

Both tools time compiled kernels, so no CPU test reaches most of their code, and a GPU session is the project's rarest
resource.  This runs them in full as the GPU check calls them -- every variant and candidate built, its kernels
compiled for sm_90 for real and launched through Triton's whole launch path -- with the launches mocked and every
timing a constant (:mod:`.hostcost`'s stand-in driver: CPU tensors, 132 SMs), under whatever torch and Triton are
installed (the GPU machines carry torch 2.11 and Triton 3.6: a scratch venv with those is the closest rehearsal).
Nothing runs, so every output is garbage and the search's check against its first candidate says WRONG: that is
expected here.  What counts is an exception that escapes a tool (the run stops there: exit 1), and the variants and
candidates a tool records as refused (listed; the GPU would refuse them too, e.g. a tile whose shared memory exceeds
an SM's).  ::

    python -m cells.triton_lstm.rehearse          # the probe at large and the tile search at medium and large,
                                                  # float32 and bfloat16, both cells, the GPU check's fields
    python -m cells.triton_lstm.rehearse --probe-presets small --once --tune-presets small --dtypes float32 \\
        --cells triton_lstm --fields exchange     # a quick one (the test's)

Found this way (2026-11-29, torch 2.11 + Triton 3.6): the probe ended at large bfloat16, where one variant's shared
memory exceeds sm_90's and Triton raises OutOfResources, no RuntimeError.

``--numerics`` checks what the mocked run cannot: the arithmetic of the search's candidates at the presets' own sizes
(H, units, programs, batch 20; T of ``--steps``, 2 by default).  Every candidate the search would try first (each
field's values around the table's tile, as the search compiles them at its start) runs in Triton's interpreter on
the stepwise path -- the persistent kernels' split, a launch a step, the same index arithmetic but the grid barrier --
in exact float32, its outputs, final state and every gradient against ``torch.nn.LSTM`` / ``GRU`` in float64 with
the same weights; WRONG past 1e-4 relative (exit 1).  Interpreted, a candidate takes 5-70 s at medium (the more
programs, the longer) and one with outer products in small K tiles minutes (3-12 at large, ~8 for the backward's at
medium), so give it the fields that changed::

    python -m cells.triton_lstm.rehearse --numerics --tune-presets medium --cells triton_lstm --fields exchange

Run on 2026-11-29 (T 2), worst relative error of any output or gradient, none WRONG: ``triton_lstm`` at medium the
candidates of the design fields (units, exchange, exchange_bwd, outer, outer_bwd, transposed_bwd) and at large too (the
backward's outer products with K 2 or 4 in trips of 8 or 16 took 20-30 minutes each interpreted), 7.5e-7 to 1.4e-6;
``triton_gru`` every design field's at medium and at large, 5.5e-7 to 8.3e-7. Later that day the units field's grids of
fewer programs in full unit tiles (25 x 8 and 13 x 16 at small, 82 x 8 at medium, 94 x 16 at large) and its others
again, at every preset, both cells: LSTM 4.8e-7 / 8.3e-7 / 1.1e-6 to 1.2e-6, GRU 3.1e-7 / 6.0e-7 / 8.1e-7 (small /
medium / large).

``--pace SECONDS`` makes the mocked search move as on a GPU: each timed pass sleeps SECONDS and returns a time made up
from the tile, and every candidate counts as correct, so the search keeps changes, compiles the candidates around each
new best and cancels what it no longer wants; its wall time is then its own scheduling's and compiling's.  Measured so
(2026-11-29, Triton 3.6, a fresh ``TRITON_CACHE_DIR``, 2 shared cores with two other jobs, so one compile worker;
``--probe-presets "" --tune-presets medium --dtypes float32 --cells triton_lstm --fields
units,num_stages,block_k,num_warps,row_align --pace 0.25``): the search as it compiled in blocking batches (f69f3a6)
31.5 s, compiling ahead of its timing (4fd46e0, :class:`.precompile.Ahead`) 19.3 s, the same 12 candidates and winner.

The mocked rehearsal patches torch and triton for the whole process (as :mod:`.hostcost`): run it on its own, never
import it into a program.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

SMS = 132  # an H100 SXM's or H200's


def _tools():
    """Install the stand-in driver, then import the tools it must patch under (order matters)."""
    import torch

    from . import hostcost, launch

    hostcost._fake_cuda(False)
    launch.sm_count = lambda device: SMS
    launch.plan_for.cache_clear()
    from . import probe, tune

    tune._time = _constant  # (the search's timer, looked up when it times)
    return torch, probe, tune


def _constant(fn, reps: int, calls: int = 1) -> float:
    """A timer for work that does not run: one call (compiling and launching), then any constant."""
    fn()
    return 1e-3


def _paced(tune, launch, seconds: float) -> None:
    """``--pace``: the tile search moves as on a GPU that took ``seconds`` to time each pass -- a sleep, then a time
    made up from the tile timed (the tables' entries, which the search sets to it: the same tile, the same time) --
    and takes every candidate as correct (the mocked launches compute garbage), so that it keeps changes, compiles
    the candidates around each new best and cancels what it no longer wants: its wall time is then that of its own
    scheduling and compiling, what a GPU session's search spends beside the GPU's time."""
    import zlib

    import torch

    def timer(fn, reps: int, calls: int = 1) -> float:
        fn()
        time.sleep(seconds)
        entries = repr(sorted(repr(item) for kind in ("LSTM", "GRU") for item in launch.tiles(kind).items()))
        return 1e-3 * (1 + (zlib.crc32(entries.encode()) % 100) / 100)

    passes = tune._passes

    def correct(*args, **kwargs):
        fwd, fwdbwd, _, _, peak, graph = passes(*args, **kwargs)
        return fwd, fwdbwd, torch.zeros(1), torch.zeros(1), peak, graph

    tune._time, tune._passes = timer, correct


def numerics(preset: str, cell: str, fields, steps: int = 2, log=print) -> list[dict]:
    """The search's first candidates at ``preset`` for ``cell`` (float32; ``fields``: the search's field names, None:
    all), each run in the interpreter on the stepwise path against ``torch.nn.LSTM`` / ``GRU`` in float64; one record
    per candidate: its tile, programs, the worst relative error and whether it is within 1e-4."""
    import dataclasses
    import math

    import torch

    from . import launch, tune

    kind = tune.KINDS[cell]
    hidden, batch = tune.PRESETS[preset][0], tune.BATCH
    start = tune.start_tile(kind, hidden, torch.float32, SMS)
    chosen = [f for f in tune.FIELDS[kind] if fields is None or f in fields]
    tiles = list(dict.fromkeys([start] + [t for f in chosen for t in tune.candidates(start, hidden, torch.float32,
                                                                                      SMS, f)]))
    width = 6  # (the input size: the input projection is a plain matmul outside the kernels)
    ref = getattr(torch.nn, kind)(width, hidden).double()
    bound = 1 / math.sqrt(hidden)
    torch.manual_seed(0)
    with torch.no_grad():
        for w in ref.parameters():
            w.uniform_(-bound, bound)
    x = torch.randn(steps, batch, width, dtype=torch.float64)
    state = [torch.randn(batch, hidden, dtype=torch.float64) for _ in range(2 if kind == "LSTM" else 1)]
    ups = [torch.randn(steps, batch, hidden, dtype=torch.float64)] + [torch.randn_like(s) for s in state]
    weights = [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]  # (leaves: their .grad is set)
    want_in = [t.clone().requires_grad_(True) for t in (x, *state)] + weights
    held = [t[None] for t in want_in[1:1 + len(state)]]
    y, final = ref(want_in[0], tuple(held) if kind == "LSTM" else held[0])
    want = [y, *(f[0] for f in (final if kind == "LSTM" else (final,)))]
    torch.autograd.backward(want, ups)
    inputs = [t.detach() for t in want_in]
    if kind == "LSTM":
        from . import function
        layer = function.LSTMLayerFunction
    else:
        from cells.triton_gru import GRULayerFunction as layer
    records = []
    for tile in tiles:
        plan = launch.make_plan(batch, hidden, torch.float32, torch.device("cpu"), path="stepwise", units=tile.units,
                                resident=False, kind=kind)
        plan = dataclasses.replace(plan, **{f.name: getattr(tile, f.name) for f in dataclasses.fields(tile)
                                            if f.name != "units" and hasattr(plan, f.name)})
        got_in = [t.detach().float().requires_grad_(True) for t in inputs]
        got = layer.apply(*got_in, plan)
        torch.autograd.backward(list(got), [u.float() for u in ups])
        errors = [_rel(g, w) for g, w in zip(got, want, strict=True)]
        errors += [_rel(g.grad, w.grad) for g, w in zip(got_in, want_in, strict=True)]
        worst = max(errors)
        rec = {"preset": preset, "cell": cell, "tile": dataclasses.asdict(tile), "programs": plan.programs,
               "worst_rel": worst, "ok": worst <= 1e-4}
        records.append(rec)
        log(f"{cell} {preset} {tune.describe(tile):64} P {plan.programs:4}  worst {worst:.1e}  "
            + ("ok" if rec["ok"] else "WRONG"))
    return records


def _numerics_main(args) -> int:
    from . import tune

    fields = None if args.fields == "all" else tune._fields(args.fields)
    t0, wrong, n = time.monotonic(), [], 0
    for cell in filter(None, args.cells.split(",")):
        for preset in filter(None, args.tune_presets.split(",")):
            recs = numerics(preset, cell, fields, args.steps)
            n += len(recs)
            wrong += [r for r in recs if not r["ok"]]
    print(f"numerics done in {time.monotonic() - t0:.0f} s: {n} candidates, {len(wrong)} WRONG", flush=True)
    return 1 if wrong else 0


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main(argv: list[str] | None = None) -> int:
    from bench.gpu_check import TUNE_FIELDS

    p = argparse.ArgumentParser(prog="python -m cells.triton_lstm.rehearse", description=__doc__.split("\n\n")[0])
    p.add_argument("--probe-presets", default="large", help="comma-separated; empty: no probe")
    p.add_argument("--once", action="store_true", help="the probe's --once: one forward and backward, no variants")
    p.add_argument("--tune-presets", default="medium,large", help="comma-separated; empty: no tile search")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--cells", default="triton_lstm,triton_gru")
    p.add_argument("--fields", default=",".join(TUNE_FIELDS),
                   help="the tile search's fields (default: the GPU check's); 'all' for every field")
    p.add_argument("--numerics", action="store_true",
                   help="instead: the search's first candidates at --tune-presets for --cells, float32, run in the "
                        "interpreter against torch.nn.LSTM / GRU in float64 (no probe, no mocks)")
    p.add_argument("--steps", type=int, default=2, help="with --numerics: the sequence length (default 2)")
    p.add_argument("--pace", type=float, default=None, metavar="SECONDS",
                   help="the tile search as on a GPU taking SECONDS to time each pass, every candidate correct: its "
                        "wall time is its own scheduling's and compiling's (give it a fresh TRITON_CACHE_DIR)")
    args = p.parse_args(argv)
    if args.numerics:
        return _numerics_main(args)
    if args.pace is not None and not args.pace >= 0:
        p.error("--pace takes seconds >= 0")
    torch, probe, tune = _tools()
    if args.pace is not None:
        _paced(tune, tune.launch, args.pace)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    fields = None if args.fields == "all" else tune._fields(args.fields)
    refused, t0 = [], time.monotonic()
    try:
        for cell in filter(None, args.cells.split(",")):
            for dtype in (dtypes[d] for d in filter(None, args.dtypes.split(","))):
                for preset in filter(None, args.probe_presets.split(",")):
                    recs = probe.probe(preset, dtype, 1, once=args.once, device="cpu", timer=_constant,
                                       log=lambda *a: None, cell=cell, sms=SMS)
                    bad = [f"{r['kernel']} {r['variant']}: {r['error'][:160]}" for r in recs if "error" in r]
                    refused += [f"probe {cell} {preset} {dtype}: {b}" for b in bad]
                    print(f"probe {cell} {preset} {dtype}: " + ("one forward and one backward launched" if args.once
                          else f"{len(recs)} variant launches, {len(bad)} refused"), flush=True)
                for preset in filter(None, args.tune_presets.split(",")):
                    t1 = time.monotonic()
                    recs = tune.tune(preset, dtype, 1, cell=cell, fields=fields, log=lambda *a: None, device="cpu",
                                     sms=SMS)
                    bad = [f"{tune.describe(tune.launch.Tile(**r['tile']))}: {r['error'][:160]}" for r in recs
                           if "error" in r]
                    refused += [f"tune {cell} {preset} {dtype}: {b}" for b in bad]
                    best = next((tune.describe(tune.launch.Tile(**r["tile"])) for r in recs if r.get("best")), None)
                    print(f"tune {cell} {preset} {dtype}: {len(recs)} candidates, {len(bad)} refused, "
                          f"{time.monotonic() - t1:.1f} s" + (f"; best {best}" if args.pace is not None and best
                                                             else ""), flush=True)
    except Exception as exc:  # noqa: BLE001 -- what the rehearsal is for: say what and where, and fail
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"rnnbench: error: the rehearsal stopped: {type(exc).__name__}: {str(exc)[:400]} "
              f"({where.filename}:{where.lineno})", file=sys.stderr)
        traceback.print_exc()
        return 1
    for line in refused:
        print(f"  refused: {line}")
    print(f"rehearsal done in {time.monotonic() - t0:.0f} s: no tool raised; {len(refused)} refused (the GPU would "
          "refuse them too)", flush=True)
    return 0


if __name__ == "__main__":
    # Compiled, not interpreted, from the first import of triton on: with TRITON_INTERPRET set (bench/conftest.py sets
    # it for the tests where there is no GPU, and a process they start inherits it) the package imported triton
    # interpreted before this line ran, and triton then refuses to compile for Hopper -- so start again without it.
    if os.environ.pop("TRITON_INTERPRET", None) is not None:
        os.execv(sys.executable, [sys.executable, "-m", "cells.triton_lstm.rehearse", *sys.argv[1:]])
    sys.exit(main())
