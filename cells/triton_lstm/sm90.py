"""Compile the kernels for Hopper (sm_90) with no GPU: PTX, cubin, and ptxas's registers and spills.

Triton compiles for a target it is told, down to a cubin, without a device; this module does that for
the plan a launch would use on a 132-SM GPU (H100 SXM, H200), with the argument specialization a real
launch gets (16-byte aligned pointers, integers divisible by 16 marked so), and reads ptxas's own report.
The register tables of docs/triton.md come from::

    python -m cells.triton_lstm.sm90 [fp32,tf32,tf32x3,bf16]

and :func:`kloop` reads the disassembled cubin (``cuobjdump -sass``, shipped with Triton) for what one trip of a
kernel's recurrent K loop issues per thread: multiply-adds (FFMA, or tensor-core MMAs), bytes read from shared memory,
CTA barriers, shuffles (``python -m cells.triton_lstm.sm90 --kloop [arithmetics]``).  A static count, not a timing.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

import torch

from . import launch

PRESETS = {"small": 200, "medium": 650, "large": 1500}  # hidden sizes; batch 20, embedding = H
SMS = 132
ACC_ARGS = {"c_ptr", "c0_ptr", "gates_ptr", "dc_ptr", "da_ptr", "dak_ptr", "carry_ptr", "dxn_ptr", "x_ptr"}  # acc.
COUNTER_ARGS = {"arrive_ptr", "done_ptr"}
TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


@dataclass
class Usage:
    """What ptxas reported for one kernel."""

    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame
    shared: int  # bytes of shared memory Triton allocated


def compile_kernel(kernel: str, plan: launch.Plan, dtype: torch.dtype, train: bool = True, batch: int = 20,
                   hidden: int = 650, cache_dir: str | None = None, kind: str = "LSTM"):
    """Compile ``kernel`` ("fwd" or "bwd") of ``plan`` for sm_90 as a launch with these shapes would.

    Args:
        kernel: "fwd" or "bwd".
        plan: a compiled-flavour plan (``plan.interpret`` False), e.g. from :func:`launch.plan_for`.
        dtype: the compute dtype.
        train: the forward's TRAIN flag.
        batch, hidden: B and H, for the integer specialization (divisible by 16 or not).
        cache_dir: Triton's cache for this compilation (default: a fresh temporary folder, so it compiles).
        kind: "LSTM" (``lstm_*_kernel``) or "GRU" (``gru_*_kernel``, for a plan made with ``kind="GRU"``).

    Returns:
        (Triton's compiled kernel, with ``asm["ptx"]`` and ``asm["cubin"]``, and the ptxas log).
    """
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    k = launch.kernels(False)
    # (the exchange kernels: lstm_fwd_xchg_kernel, lstm_bwd_xchg_kernel)
    exchange = plan.exchange_bwd if kernel == "bwd" else plan.exchange
    fn = getattr(k, f"{kind.lower()}_{'bwd' if kernel == 'bwd' else 'fwd'}{'_xchg' if exchange else ''}_kernel")
    if exchange:
        meta = launch.exchange_bwd_options(plan, dtype) if kernel == "bwd" else launch.exchange_options(plan, dtype,
                                                                                                       train)
    else:
        meta = launch.launch_options(plan, dtype, kernel == "bwd", train)
    consts = {n: v for n, v in meta.items() if n in fn.arg_names}
    rounded = kernel == "bwd" and launch.rounded_da(plan, dtype)  # dA's ring in the compute dtype
    if (launch.padded_size(hidden, plan.row_align) > hidden or rounded) and not exchange:
        consts["PAD"] = True  # rows padded (or dA rounded): the rings carry the matmul's operand
    for param in fn.params:  # compile-time arguments a launch leaves at their defaults (PROBE, SPLIT, PAD)
        if param.is_constexpr and param.name not in consts and param.default is not inspect.Parameter.empty:
            consts[param.name] = param.default
    options = {n: v for n, v in meta.items() if n not in fn.arg_names}
    ints = {"B": batch, "H": hidden, "HP": launch.padded_size(hidden, plan.row_align), "UNITS": plan.units,
            "P": plan.programs}
    elem = TRITON_DTYPES[dtype]
    acc = TRITON_DTYPES[launch.accumulation_dtype(dtype)]
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            wide = name in ACC_ARGS and not (rounded and name == "dak_ptr")
            sig[name] = "*i32" if name in COUNTER_ARGS else f"*{acc}" if wide else f"*{elem}"
            attrs[(i,)] = backend.parse_attr("D")  # fresh allocations are 256-byte aligned
        else:
            sig[name] = "i32"
            if ints.get(name, 1) % 16 == 0:
                attrs[(i,)] = backend.parse_attr("D")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        old = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = cache_dir or tmp
        stack.callback(lambda: os.environ.__setitem__("TRITON_CACHE_DIR", old) if old is not None
                       else os.environ.pop("TRITON_CACHE_DIR", None))
        log = io.StringIO()
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            out = compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=target,
                          options=options)
    return out, log.getvalue()


# Hopper's per-SM limits (CUDA C Programming Guide, compute capability 9.0): 64 K 32-bit registers, allocated per
# warp in units of 256; 228 KB of shared memory, 1 KB of it reserved per resident block; 64 warps; 32 blocks.
SM_REGISTERS, REGISTER_UNIT, SM_SHARED, BLOCK_RESERVED, SM_WARPS, SM_BLOCKS = 65536, 256, 233472, 1024, 64, 32


def programs_per_sm(use: Usage, warps: int) -> int:
    """How many programs of a kernel with ``use``'s registers and shared memory and ``warps`` warps one sm_90 SM can
    hold at once: what a persistent grid of more programs than SMs needs (``launch.Tile.per_sm``) for its cooperative
    launch.  The occupancy calculator's arithmetic, without the GPU."""
    per_warp = -(-use.registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = SM_REGISTERS // (per_warp * warps)
    by_shared = SM_SHARED // (use.shared + BLOCK_RESERVED)
    return min(by_registers, by_shared, SM_WARPS // warps, SM_BLOCKS)


def usage(compiled, ptxas_log: str) -> Usage:
    """Registers, spills and stack from ptxas's log; shared memory from Triton's metadata."""
    regs = re.search(r"Used (\d+) registers", ptxas_log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    if not regs or not frame:
        raise RuntimeError(f"no ptxas report in the compiler's output (the kernel came from a cache?):\n{ptxas_log}")
    return Usage(int(regs.group(1)), int(frame.group(2)), int(frame.group(3)), int(frame.group(1)),
                 int(getattr(compiled.metadata, "shared", 0)))


@dataclass
class KLoop:
    """One trip of a kernel's recurrent K loop, per thread, from its SASS (:func:`kloop`)."""

    instructions: int
    fma: int  # FFMA, or tensor-core MMAs (HMMA / HGMMA) where the loop has those
    mma: bool  # ``fma`` counts tensor-core instructions
    shared_bytes: int  # read from shared memory by LDS (LDSM: 16 bytes a lane and matrix)
    barriers: int  # BAR (CTA barriers)
    shuffles: int  # SHFL

    @property
    def fma_per_float(self) -> float:
        """Multiply-adds per 4 bytes read from shared memory: the operand reuse of the loop's register tile."""
        return self.fma / (self.shared_bytes / 4) if self.shared_bytes else math.inf


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
_SHARED_WIDTH = {"128": 16, "64": 8, "U8": 1, "S8": 1, "U16": 2, "S16": 2}


def _opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", instruction).split()[0]


def kloop(compiled) -> KLoop:
    """The recurrent K loop of a compiled kernel (:func:`compile_kernel`): of the innermost loops of its SASS (a
    backward branch with no loop inside it), the one that issues the most multiply-adds."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    code = [(int(m.group(1), 16), m.group(2).strip()) for m in map(_SASS_LINE.search, text.splitlines()) if m]
    index = {addr: i for i, (addr, _) in enumerate(code)}
    spans = []
    for i, (addr, ins) in enumerate(code):
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins)
        if target and int(target.group(1), 16) < addr and int(target.group(1), 16) in index:
            spans.append((index[int(target.group(1), 16)], i))
    best = None
    for lo, hi in spans:
        if any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in spans):
            continue  # not innermost
        ops = Counter(_opcode(ins) for _, ins in code[lo:hi + 1])
        mma = sum(n for o, n in ops.items() if o.startswith(("HMMA", "HGMMA")))
        fma = mma or sum(n for o, n in ops.items() if o.startswith("FFMA"))
        shared = sum(n * _SHARED_WIDTH.get(o.split(".")[-1], 4) for o, n in ops.items()
                     if o.startswith("LDS") and not o.startswith("LDSM"))
        shared += sum(n * 16 * int((re.search(r"\.X(\d)", o) or [0, 1])[1]) for o, n in ops.items()
                      if o.startswith("LDSM"))
        loop = KLoop(hi - lo + 1, fma, bool(mma), shared, sum(n for o, n in ops.items() if o.startswith("BAR")),
                     sum(n for o, n in ops.items() if o.startswith("SHFL")))
        if best is None or loop.fma > best.fma:
            best = loop
    if best is None:
        raise RuntimeError("no loop with multiply-adds in the kernel's SASS")
    return best


# The arithmetics of the table: name -> (dtype, float32 precision)
ARITHMETICS = {"fp32": (torch.float32, "ieee"), "tf32": (torch.float32, "tf32"), "tf32x3": (torch.float32, "tf32x3"),
               "bf16": (torch.bfloat16, "ieee")}


def table(batch: int = 20, arithmetics: tuple[str, ...] = tuple(ARITHMETICS), with_kloop: bool = False) -> list[str]:
    """One row per kernel, PTB preset and arithmetic (float32 exact, TF32 and three-pass TF32, bfloat16): the plan
    (programs x units, J and K tiles, warps, stages) and what ptxas reports (registers, spill bytes, stack) and
    Triton's shared memory, and how many such programs an SM holds (:func:`programs_per_sm`); with ``with_kloop``,
    what a trip of the K loop issues per thread (:func:`kloop`)."""
    rows = []
    for arith in arithmetics:
        dtype, precision = ARITHMETICS[arith]
        for preset, hidden in PRESETS.items():
            for kernel, train, b in (("fwd", True, batch), ("bwd", True, batch), ("fwd", False, 1)):
                plan = launch.plan_for(b, hidden, dtype, SMS, fp32_precision=precision)
                out, log = compile_kernel(kernel, plan, dtype, train, b, hidden)
                u = usage(out, log)
                ptx = out.asm["ptx"]
                mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"
                warps = plan.num_warps_bwd if kernel == "bwd" else plan.num_warps
                name = kernel if kernel == "bwd" else f"fwd{'' if train else '-nograd'}"
                k, stages = (launch.kernel_value(plan, f, kernel == "bwd") for f in ("block_k", "num_stages"))
                rows.append(f"{name:10} {preset:6} {arith:6} B{b:<3} {plan.programs:3}x{plan.units:<3} "
                            f"J{plan.block_j:<3} K{k:<3} w{warps} s{stages} {mma:8} "
                            f"{u.registers:4} regs "
                            f"spill {u.spill_stores}/{u.spill_loads} B  stack {u.stack:3} B  smem {u.shared} B  "
                            f"{programs_per_sm(u, warps)} an SM")
                if with_kloop:
                    lp = kloop(out)
                    reuse = "" if lp.mma else f" ({lp.fma_per_float:.2f} FFMA per float)"
                    rows[-1] += (f"  | K trip: {lp.instructions} instr, {lp.fma} {'MMA' if lp.mma else 'FFMA'}, "
                                 f"{lp.shared_bytes} B shared{reuse}, {lp.barriers} BAR, {lp.shuffles} SHFL")
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    import sys

    args = [a for a in sys.argv[1:] if a != "--kloop"]
    table(arithmetics=tuple(args[0].split(",")) if args else tuple(ARITHMETICS), with_kloop="--kloop" in sys.argv)
