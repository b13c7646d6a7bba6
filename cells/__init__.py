"""Interchangeable recurrent cells behind one interface.

The interface, stated once::

    cells.build(name, input_size, hidden_size, num_layers=1, dropout=0.0, **opts) -> torch.nn.Module

    module.forward(x, state=None) -> (y, state)
        x      [T, B, input_size]
        y      [T, B, hidden_size]            (output of the top layer)
        state  LSTM: (h, c), each [num_layers, B, hidden_size]
               GRU, minGRU, minLSTM:  h, [num_layers, B, hidden_size]
               None means zeros.
        dropout applies to the outputs of every layer but the last, in training
        mode, as in torch.nn.LSTM.

Parameters are named and shaped exactly like ``torch.nn.LSTM`` / ``torch.nn.GRU``
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``; gate
order i, f, g, o and r, z, n), so state_dicts move between cells of one kind.
The exception is :mod:`cells.minimal` (``min_gru``, ``min_lstm``): no recurrent
weights, so parameters of their own and kinds of their own ("minGRU", "minLSTM");
their class says so in ``parameter_layout``, which ``rnnbench cells`` shows.

A cell class may define ``available(device) -> str | None`` (a reason it cannot
run there, or None) and ``describe_backend(device) -> str``; the registry below
maps each name to ``"module:Class"`` and is imported lazily, so a cell whose
library is missing cannot break the others.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass

import torch

# name -> "module:Class".  A new cell is one module plus one line here.
REGISTRY: dict[str, str] = {
    "cudnn_lstm": "cells.cudnn:CudnnLSTM",
    "cudnn_gru": "cells.cudnn:CudnnGRU",
    "loop_lstm": "cells.loop:LoopLSTM",
    "loop_gru": "cells.loop:LoopGRU",
    "triton_lstm": "cells.triton_lstm:TritonLSTM",
    "triton_gru": "cells.triton_gru:TritonGRU",
    "compiled_lstm": "cells.compiled:CompiledLSTM",
    "compiled_gru": "cells.compiled:CompiledGRU",
    "min_gru": "cells.minimal:MinGRU",
    "min_lstm": "cells.minimal:MinLSTM",
}

# Cells kept outside this package (the sweep's tests use it for deliberately broken cells):
# RNNBENCH_EXTRA_CELLS="name=module:Class[,name=module:Class...]" adds entries to the registry.
for _entry in filter(None, (e.strip() for e in os.environ.get("RNNBENCH_EXTRA_CELLS", "").split(","))):
    _name, _eq, _target = (part.strip() for part in _entry.partition("="))
    if not (_eq and _name and ":" in _target):
        raise ValueError(f"RNNBENCH_EXTRA_CELLS: {_entry!r} is not name=module:Class")
    REGISTRY[_name] = _target


class UnknownCellError(ValueError):
    pass


def names() -> list[str]:
    return list(REGISTRY)


def cell_class(name: str):
    """The class registered under ``name``; raises UnknownCellError listing the known names."""
    if name not in REGISTRY:
        raise UnknownCellError(f"unknown cell {name!r}; known cells: {', '.join(REGISTRY)}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def kind(name: str) -> str:
    """'LSTM', 'GRU', 'minGRU' or 'minLSTM': cells of one kind share parameters and state layout."""
    return cell_class(name).mode


def build(name: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
          **opts) -> torch.nn.Module:
    """Build the cell stack registered as ``name``; see the module docstring for the interface."""
    return cell_class(name)(input_size, hidden_size, num_layers, dropout, **opts)


def unavailable_reason(name: str, device: str | torch.device = "cpu") -> str | None:
    """Why cell ``name`` cannot run on ``device``, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    try:
        cls = cell_class(name)
    except ImportError as exc:  # a cell's library is missing
        return f"cannot import: {exc}"
    check = getattr(cls, "available", None)
    return check(device) if check else None


@dataclass
class CellInfo:
    name: str
    kind: str
    device: str
    runnable: bool
    detail: str  # the backend when runnable, else the reason
    note: str = ""  # the parameter layout of a cell whose parameters are not nn.LSTM's / nn.GRU's


def available(device: str | torch.device | None = None) -> list[CellInfo]:
    """Every registered cell with whether it can run on ``device`` (default: cuda if present, else cpu)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = []
    for name in REGISTRY:
        reason = unavailable_reason(name, device)
        if reason is None:
            detail = detect_backend(build(name, 8, 8, 1).to(device), device)
            out.append(CellInfo(name, kind(name), device.type, True, detail,
                                getattr(cell_class(name), "parameter_layout", "")))
        else:
            out.append(CellInfo(name, REGISTRY[name].split(":")[1], device.type, False, reason))
    return out


_GRAPH_NODES = {"CudnnRnnBackward": "cuDNN", "MkldnnRnnLayerBackward": "oneDNN", "MiopenRnnBackward": "MIOpen"}


def detect_backend(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> str:
    """Name the backend that actually executes ``module`` on ``device``.

    Cells that know their backend say so (``describe_backend``); for torch's own
    RNN modules one small forward is run with autograd on and the backward
    nodes it recorded name the kernel that ran (cuDNN with its version and, in
    float32, whether its matmuls may use TF32; oneDNN, MIOpen), or else ATen's
    native loop.
    """
    device = torch.device(device)
    describe = getattr(module, "describe_backend", None)
    if describe is not None:
        return describe(device)
    dtype = dtype or next(module.parameters()).dtype
    x = torch.randn(2, 2, module.input_size, device=device, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        y, _ = module(x)
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for key, label in _GRAPH_NODES.items():
            if type(node).__name__.startswith(key):
                if label != "cuDNN":
                    return label
                arith = "" if dtype != torch.float32 else \
                    "; float32 RNN matmuls in TF32" if cudnn_rnn_tf32() else "; exact float32 RNN matmuls"
                return f"cuDNN {torch.backends.cudnn.version()}{arith}"
        todo.extend(n for n, _ in node.next_functions)
    return f"ATen native ({device.type})"


def cudnn_rnn_tf32() -> bool:
    """Whether cuDNN's float32 RNNs may use TF32 (torch's default): the first of torch.backends.cudnn.rnn,
    torch.backends.cudnn and torch.backends whose fp32_precision is not "none", where torch has that API, else
    torch.backends.cudnn.allow_tf32."""
    cudnn = torch.backends.cudnn
    levels = (getattr(cudnn, "rnn", None), cudnn, torch.backends)
    if not hasattr(levels[0], "fp32_precision"):
        return bool(cudnn.allow_tf32)
    for level in levels:
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False


# How float32 matmuls run on CUDA, one setting for every cell of a run (``rnnbench train --fp32-matmul``, ``bench
# --bench-fp32-matmul``): "ieee" (exact float32 products) or "tf32" (TF32 tensor cores: 10-bit mantissas, float32
# accumulation).  It covers cuBLAS (torch.matmul, nn.Linear, the loop cells, inductor's matmuls), cuDNN's RNNs and
# the Triton cells, which follow cuBLAS's setting unless built with an ``fp32_precision`` of their own.  Torch's own
# defaults differ between the two libraries (cuDNN's RNNs TF32, cuBLAS exact): a comparison under them is not like
# with like.  Nothing changes on the CPU, where float32 matmuls are exact.
FP32_MATMULS = ("ieee", "tf32")


def fp32_matmul() -> str:
    """How torch's float32 matmuls on CUDA (cuBLAS) run now: "tf32" or "ieee".  Reads torch's ``fp32_precision``
    settings (torch.backends.cuda.matmul, then torch.backends) where torch has them, else ``allow_tf32``: reading the
    old flag after the new API was used is an error in torch."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        return "tf32" if matmul.allow_tf32 else "ieee"
    for level in (matmul, torch.backends):
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return "tf32" if precision == "tf32" else "ieee"
    return "ieee"


def set_fp32_matmul(precision: str) -> None:
    """Make every float32 matmul on CUDA (cuBLAS and cuDNN's RNNs; the Triton cells follow) run as ``precision``,
    one of :data:`FP32_MATMULS`."""
    if precision not in FP32_MATMULS:
        raise ValueError(f"float32 matmul precision must be one of {', '.join(FP32_MATMULS)}, got {precision!r}")
    _set_tf32(precision == "tf32", precision == "tf32")


def _set_tf32(cublas: bool, cudnn: bool) -> None:
    # Through torch's allow_tf32 flags, which keep its newer fp32_precision settings in step (torch 2.13: matmul
    # "tf32" / "ieee", cuDNN's RNNs "tf32" / "none").  Setting fp32_precision alone to TF32 leaves the old getters
    # raising ("mix of the legacy and new APIs"), and torch's own code still calls some of them
    # (torch.get_float32_matmul_precision, torch._C._get_cublas_allow_tf32).
    torch.backends.cuda.matmul.allow_tf32 = cublas
    torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def fp32_matmul_precision(precision: str):
    """:func:`set_fp32_matmul` within the block; after it, TF32 allowed in cuBLAS and in cuDNN's RNNs as before."""
    old = fp32_matmul() == "tf32", cudnn_rnn_tf32()
    set_fp32_matmul(precision)
    try:
        yield
    finally:
        _set_tf32(*old)
