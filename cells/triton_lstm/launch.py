"""Launchers: choose the path and the tiles, allocate, and launch the kernels of :mod:`.kernels`.

Paths (see the kernels' docstring for what each program owns):

* ``persistent`` -- CUDA only.  ``P`` programs per batch block split the hidden
  units so that each one's slice of ``W_hh`` is small, one grid barrier per
  step; grid ``P x NB <= number of SMs`` and a cooperative launch, so every
  program is resident (the driver refuses the launch rather than deadlock).
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

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import triton

from . import PATHS

# Largest per-program W_hh slice (4 * BLOCK_J * padded H elements) kept in registers by default.  Compiled,
# none: ptxas spills even at H = 13, since the tl.dot operand layout replicates the slice across warps.
RESIDENT_MAX = {"interpreter": 1 << 18, "compiled": 0}


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


def tf32_allowed() -> bool:
    """TF32 in the recurrent matmuls follows cuDNN's RNN setting, as for the cuDNN LSTM it replaces."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        return rnn.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


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
    resident: bool  # W_hh slice (and dW_hh rows) in registers for the whole time loop
    precision: str  # tl.dot input precision for float32
    num_warps: int = 4  # forward kernel
    num_warps_bwd: int = 4
    num_stages: int = 1  # no software pipelining: the loops are latency-bound, and it costs registers

    @property
    def sync(self) -> bool:
        return self.path == "persistent" and self.programs > 1

    def describe(self) -> str:
        if self.path == "blocked":
            how = "one program per batch block"
        else:
            how = f"{self.programs} programs x {self.units} units per batch block, " + (
                "grid barrier" if self.path == "persistent" else "one launch per step")
        where = "registers" if self.resident else "L1/L2, re-read each step"
        return f"{self.path}: {how}, {self.batch_blocks} batch block(s) of {self.block_b}, W_hh slice in {where}"


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def make_plan(batch: int, hidden: int, dtype: torch.dtype, device: torch.device, path: str = "auto",
              units: int | None = None, resident: bool | None = None) -> Plan:
    """Choose the path and the tiles for one layer.

    Args:
        batch, hidden: B and H.
        dtype: the compute dtype (float32 uses TF32 only where :func:`tf32_allowed`).
        device: where the tensors live; the interpreter runs for anything but CUDA.
        path: one of :data:`PATHS`; "auto" is persistent on CUDA when its grid fits the SMs, else blocked.
        units: hidden units per program on the persistent and stepwise paths (default: H spread over the
            SMs on CUDA, over 4 programs in the interpreter).
        resident: force the W_hh slice in or out of registers (default: in when it is small enough).

    Returns:
        The :class:`Plan`.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    interpret = runs_interpreted(device)
    if path == "persistent" and interpret:
        raise ValueError("the persistent path needs compiled kernels on CUDA: its grid barrier deadlocks in "
                         "Triton's interpreter, which runs programs one after another")
    precision = "tf32" if dtype == torch.float32 and not interpret and tf32_allowed() else "ieee"
    block_b = max(16, min(_pow2(batch), 64))  # tl.dot needs at least 16 rows
    batch_blocks = triton.cdiv(batch, block_b)
    kp = max(16, _pow2(hidden))  # the reduction over H is at least 16 wide for tl.dot
    auto = path == "auto"
    if auto:
        path = "blocked" if interpret else "persistent"
    if path in ("persistent", "stepwise"):
        sms = 4 * batch_blocks if interpret else torch.cuda.get_device_properties(device).multi_processor_count
        units = units or max(4, triton.cdiv(hidden, max(1, sms // batch_blocks)))
        programs = triton.cdiv(hidden, units)
        block_j = max(8, _pow2(units))
        if path == "persistent" and (programs * batch_blocks > sms or block_j > 64):
            if not auto:
                raise ValueError(f"the persistent grid ({programs} x {batch_blocks} programs, {block_j} units "
                                 f"each) does not fit {sms} SMs")
            path = "blocked"
        elif path == "persistent" and programs == 1:
            path = "blocked"  # one program per batch block needs no grid barrier
    if path == "blocked":
        units, programs = hidden, 1
        block_j = min(kp, 256 if interpret else 16)
    if resident is None:
        resident = 4 * block_j * kp <= RESIDENT_MAX["interpreter" if interpret else "compiled"]
    resident = resident and block_j >= units  # one unit tile per program
    block_k = kp if resident else min(kp, 256 if interpret else 32)
    # Tiles and warps for which ptxas (sm_90, Triton 3.6 and 3.9) reports at most 8 bytes of spills at batch 20
    # and H = 200, 650, 1500 in float32 and bfloat16.  Untimed: the GPU run should tune them.
    num_warps_bwd = 4 if block_j <= 8 or path == "blocked" else 8
    return Plan(path, interpret, block_b, block_j, block_k, units, programs, batch_blocks, resident, precision,
                num_warps=4, num_warps_bwd=num_warps_bwd)


def constexprs(plan: Plan, dtype: torch.dtype) -> dict:
    """The compile-time arguments both kernels take for ``plan`` and compute dtype ``dtype``."""
    return dict(BLOCK_B=plan.block_b, BLOCK_J=plan.block_j, BLOCK_K=plan.block_k, RESIDENT=plan.resident,
                SYNC=plan.sync, PRECISION=plan.precision, UPCAST=plan.interpret and dtype.itemsize == 2)


def _launch(kernel, plan: Plan, num_warps: int, dtype: torch.dtype, *args, **meta) -> None:
    grid = (plan.programs, plan.batch_blocks)
    meta.update(constexprs(plan, dtype))
    if not plan.interpret:
        # FMA contraction stated, not left to the version's default (Triton 3.10 turns it off by default).
        meta.update(num_warps=num_warps, num_stages=plan.num_stages, enable_fp_fusion=True)
        if plan.sync:
            meta["launch_cooperative_grid"] = True
    kernel[grid](*args, **meta)


def forward(xp: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
            plan: Plan, save_gates: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the recurrence of one layer.

    Args:
        xp: [T, B, 4H] input projection x W_ih^T, contiguous, compute dtype.
        w_hh: [4H, H] contiguous.  h0, c0: [B, H] contiguous, compute dtype.
        bias: [4H] b_ih + b_hh (added in float32: one rounding less than adding it to xp in bfloat16).
        plan: from :func:`make_plan`.
        save_gates: store the activated gates for the backward.

    Returns:
        y [T, B, H] (compute dtype), c [T, B, H] (float32, float64 for float64 input),
        gates [T, B, 4H] (same dtype as c) or None.
    """
    T, B, G = xp.shape
    H = G // 4
    acc = torch.float64 if xp.dtype == torch.float64 else torch.float32
    c0 = c0.to(acc)  # the kernel selects between c0 and c[t - 1] by pointer: one dtype
    bias = bias.to(acc).contiguous()
    y = torch.empty(T, B, H, dtype=w_hh.dtype, device=xp.device)
    c = torch.empty(T, B, H, dtype=acc, device=xp.device)
    gates = torch.empty(T, B, G, dtype=acc, device=xp.device) if save_gates else None
    bar = torch.zeros(plan.batch_blocks, dtype=torch.int32, device=xp.device)
    kernel = kernels(plan.interpret).lstm_fwd_kernel
    spans = [(t, t + 1) for t in range(T)] if plan.path == "stepwise" else [(0, T)]
    for lo, hi in spans:
        _launch(kernel, plan, plan.num_warps, w_hh.dtype, xp, w_hh, bias, h0, c0, y, c,
                c if gates is None else gates, bar, lo, hi, B, H, plan.units, SAVE_GATES=save_gates)
    return y, c, gates


def backward(w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
             gates: torch.Tensor, dy: torch.Tensor, dhT: torch.Tensor, dcT: torch.Tensor,
             plan: Plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk one layer backward in time.

    Args:
        w_hh, h0, c0: as for :func:`forward`.  y, c, gates: what :func:`forward` returned.
        dy: [T, B, H] gradient of y.  dhT, dcT: [B, H] gradients of the final h and c.  All contiguous.
        plan: the plan the forward ran with.

    Returns:
        da [T, B, 4H] gate pre-activation gradients (c's dtype), dh0 [B, H] (compute dtype), and in c's
        dtype dc0 [B, H], dw_hh [4H, H] and db [4H] (the gradient of b_ih and of b_hh alike).
    """
    T, B, H = y.shape
    dc = dcT.to(c.dtype, copy=True)
    c0 = c0.to(c.dtype)
    da = torch.empty(T, B, 4 * H, dtype=c.dtype, device=y.device)
    dh0 = torch.empty(B, H, dtype=y.dtype, device=y.device)
    dw = torch.empty(plan.batch_blocks, 4 * H, H, dtype=c.dtype, device=y.device)
    db = torch.empty(plan.batch_blocks, 4 * H, dtype=c.dtype, device=y.device)
    bar = torch.zeros(plan.batch_blocks, dtype=torch.int32, device=y.device)
    kernel = kernels(plan.interpret).lstm_bwd_kernel
    spans = [(s, s + 1, 0) for s in range(T)] + [(T, T, 1)] if plan.path == "stepwise" else [(0, T, 1)]
    for lo, hi, tail in spans:
        _launch(kernel, plan, plan.num_warps_bwd, w_hh.dtype, w_hh, h0, c0, y, c, gates, dy, dhT, dc, da, dh0, dw,
                db, bar, lo, hi, tail, T, B, H, plan.units)
    if plan.batch_blocks > 1:
        return da, dh0, dc, dw.sum(0), db.sum(0)
    return da, dh0, dc, dw[0], db[0]
