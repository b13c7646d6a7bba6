"""Triton kernels of the fused LSTM recurrence: forward and backward, time loop inside.

Both kernels share one split of the work.  The grid is ``(P, NB)``: program
``(p, nb)`` owns the hidden units ``[p * UNITS, min((p + 1) * UNITS, H))`` -- so
the four gate rows ``g * H + j`` (g = i, f, g, o) of ``W_hh`` for each owned unit
j -- and the batch rows ``[nb * BLOCK_B, (nb + 1) * BLOCK_B)``.

* ``P == 1``: one program owns all of H for its batch rows and walks BLOCK_J-wide
  unit tiles and BLOCK_K-wide reduction tiles every step; a CTA barrier orders a
  step's stores before the next step's loads (the *blocked* path).
* ``P > 1`` and ``SYNC``: the programs of one batch block meet at a grid-wide
  barrier between steps (the *persistent* path; all programs must be resident).
* ``P > 1`` without ``SYNC``: the launcher runs one step per launch and the launch
  boundary is the barrier (the *stepwise* path, which the interpreter can run).

``FUSE`` (``launch.Tile.fuse_gates``): the recurrent matmul is one ``tl.dot`` per reduction tile for the four gates --
the forward reads a ``[BLOCK_K, 4 BLOCK_J]`` tile of ``W_hh^T`` whose column ``4 u + g`` is gate g of unit u and
splits the ``[BLOCK_B, 4 BLOCK_J]`` result into the gates after the K loop; the backward reduces over the four
gates' rows at once (``[BLOCK_B, 4 BLOCK_K]`` of dA against ``[4 BLOCK_K, BLOCK_J]`` of ``W_hh``).  Otherwise one
tl.dot per gate and tile, each with its own operand layout conversions (shared memory and CTA barriers).

``SPLIT`` (``launch.Tile.split_k``, 1, 2 or 4): the reduction over H split SPLIT ways inside each program.  A trip
of the K loop loads SPLIT consecutive BLOCK_K tiles as one ``[SPLIT, ...]`` batch and runs them as one batched
tl.dot (Triton lays the batch over the warps, so it wants SPLIT times the warps) into SPLIT partial sums, added once
after the loop: a step's chain of dependent trips is H / (SPLIT BLOCK_K) long instead of H / BLOCK_K, for a
shared-memory reduction of the partials per tile.  ``SPLIT = 1`` is the plain loop, its code unchanged.

The backward kernel only carries dh and dc back in time and stores the gate
gradients ``dA_t`` of every step; ``dW_hh = sum_t dA_t^T h_{t-1}`` and the bias
gradient are one GEMM and one sum over all T after it (in :mod:`.function`), as
``dW_ih`` is -- no per-step read-modify-write of weight-gradient rows.

``OUTER`` (``launch.Tile.outer``): the K loops without tl.dot, for exact float32.  Triton lowers an ieee-precision
tl.dot to FMAs whose operands it shuffles through shared memory every reduction tile (the H200's Nsight Compute run:
74 % of the large forward's stalls wait on shared memory, 1 warp per scheduler); here each tile's products
``a[b, k] w[n, k]`` go by one FMA each into a ``[BLOCK_B, N, BLOCK_K]`` accumulator, and the sum over k is taken
once, after the loop.  Both operands are read with k contiguous: the forward's W_hh rows as they are, the backward's
from a transposed copy ``W_hh^T`` ([HP, NG HP], made by the launcher per launch) whose row j holds column j of every
gate, so the backward reduces over the NG HP columns of dA_{t+1} in one walk.  Sm_90 PTX (Triton 3.6) of a
standalone tile, h [32, K] against 64 rows of W_hh: 0.13-0.20 shared-memory instructions and 1.0-1.5 bytes of shared
traffic per FMA against tl.dot's 0.43-0.64 and 2.2-3.2, with 2-3 times tl.dot's CTA barriers per tile and
registers growing with the accumulator (docs/triton.md's table).  Operands are taken to the accumulation
dtype, so 16-bit inputs run exactly on the FMA units too, slowly: it is for float32.  ``PRECISION`` does not apply.
With OUTER, ``SPLIT`` is the K loop's unrolling, not a split into partial sums: a trip reads SPLIT consecutive BLOCK_K
tiles, each as its own small tensor, into the one accumulator (:func:`_outer_sum`), so the trip's loads are issued
before its FMAs; the whole trips carry no mask along k, a last part trip does.  With K tiles of 2 or 4 and 8 warps
every operand tile has fewer elements than the CTA has threads and Triton loads it in the accumulator's layout
directly: no shared memory and no CTA barrier in the loop (docs/triton.md).

``WT`` (``launch.Tile.transposed_bwd``): the backward's tl.dot reads the same transposed copy ``W_hh^T`` as OUTER
does, so its [gate rows, units] tiles are contiguous along the gate rows (vector loads; ``_w_t``).  The backward's
ring ``dak`` may be of the compute dtype instead of float32 (``launch.Tile.round_da_bwd``, 16-bit dtypes): dA_t is
rounded as it is stored there, and the next step's matmul is then one 16-bit tensor-core dot; ``da`` stays float32.

``RESIDENT`` loads this program's slice of ``W_hh`` once, before the time loop; it
needs one unit tile and one reduction tile (``UNITS <= BLOCK_J``, ``BLOCK_K >= H``).
Compiled for sm_90 it spills (the tl.dot operand layout replicates the slice across
warps), so the launcher uses it only in the interpreter.  Otherwise the slice is
re-read every step with ``evict_last``, so it stays in L1 (L2 at H = 1500 in float32).
Data other programs wrote during the launch (h_{t-1}, dA_{t+1}) is read with ``.cg``,
from L2, never from a stale L1 line.

Exchange (``launch.Tile.exchange``, ``exchange_bwd``): kernels of their own (``lstm_fwd_xchg_kernel``,
``lstm_bwd_xchg_kernel``, ``gru_fwd_xchg_kernel``, ``gru_bwd_xchg_kernel``) whose recurrent matmul is no K loop but an
exchange of shares through L2 between the grid's programs (phase 1 ``_xchg_out``, the grid barrier, phase 2
``_xchg_in``; the comment above ``_xchg_out``); the pointwise work, the saved gates and cell states and the grid barrier
are the K-loop kernels', so the two backward kinds take either forward's results.

Padded rows (``HP``, ``launch.Tile.row_align``): what the recurrent matmuls read -- ``W_hh`` and the operand of the
step before (h_{t-1} forward, dA_{t+1} backward) -- has rows HP apart, H rounded up to a multiple of 16, zero in the
padding, and the reduction runs to HP: so Triton, which specializes an integer divisible by 16, knows that every
row of a K tile starts aligned and the mask is constant over 16 elements (vector loads, and ``cp.async`` for the
pipelined K loop, which a 2-byte element at an odd row stride rules out).  The launcher passes ``W_hh`` with each
gate's [H, H] block padded to [HP, HP], and a ring of two zeroed [B, HP] slots (``hk``; dA's [B, NG HP], ``dak``):
a step writes its h_t (dA_t) to slot t % 2 beside y (da) and reads the step before from the other slot; the grid
barrier between steps makes the reuse safe (a slot is rewritten only a step after its last read).  The helpers'
``H`` below is HP wherever they index W_hh or a ring.  ``HP = H`` (row_align 1, or one step) is the same code on
the natural layout.

Grid barrier (``SYNC``): two int32 counters per batch block, kept by the launcher
per device and stream and zero at every launch.  Each program adds 1 to ``arrive``
after its step's stores and spins until it reaches ``(steps so far) * P``; at the end
each program adds 1 to ``done``, and the last one out sets both back to zero, so
the next launch on the stream finds them zeroed without a memset or an allocation.

This file is loaded twice by :mod:`cells.triton_lstm.launch`, once compiled and
once under Triton's interpreter, because ``@triton.jit`` picks one at decoration time;
``_bound`` and ``UPCAST`` below keep the interpreted flavour working whatever
``TRITON_INTERPRET`` was when triton was imported, on Triton 3.6 and 3.9, without
breaking compilation in the same process.
"""

import triton
import triton.language as tl

if triton.knobs.runtime.interpret:

    def _bound(x):
        # A loop bound as a Python int.  Triton 3.6's interpreter takes int() of a one-element array for
        # range(), which NumPy >= 2.4 refuses; 3.9 squeezes it first.
        return int(x.handle.data.reshape(-1)[0]) if isinstance(x, tl.tensor) else int(x)

else:

    @triton.jit
    def _bound(x):
        return x


# The combine function of the reductions below (tl.reduce(x, axis, _SUM); tl.sum is a @triton.jit function of
# triton's own, which the interpreted flavour of this file cannot call when triton was imported compiled).
# Interpreted, triton's own sum combine, which the interpreter recognizes and sums with NumPy (any other it applies
# one element at a time, in Python: seconds a reduction); it is never called.  Compiled, one of this file's: triton's
# own is an interpreted function wherever triton was imported with TRITON_INTERPRET=1, and compiled code cannot
# reference one.
if triton.knobs.runtime.interpret:
    _SUM = tl.standard._sum_combine

else:

    @triton.jit
    def _SUM(a, b):
        return a + b


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # acc + a b.
    if a.dtype != b.dtype:
        # float32 gate gradients against 16-bit weights: TF32 keeps 3 more bits of dA than bfloat16 would,
        # and takes bfloat16 / float16 weights exactly.
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32", out_dtype=acc.dtype)
    else:
        if UPCAST:
            # The interpreter keeps 16-bit floats as raw bits and would multiply those: go through float32
            # (exact; the products of a bfloat16 tensor-core dot are exact too).
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        out = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return out


@triton.jit
def _grid_barrier(arrive_ptr, target):
    # Every program adds 1 once per barrier; the counter only grows within a launch, so the n-th barrier waits for
    # target = n * P.  The CTA barrier orders every thread's stores before thread 0's release (Triton issues a
    # scalar atomic from one thread and broadcasts its result through shared memory).
    tl.debug_barrier()
    tl.atomic_add(arrive_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(arrive_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(arrive_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _end_step(arrive_ptr, target, SYNC: tl.constexpr, PROBE: tl.constexpr):
    # After a step: the grid barrier on the persistent path (probes 2 and 3 leave it out: the programs race), else a
    # CTA barrier that orders this program's stores before its next step's loads.
    if SYNC:
        if PROBE < 2:
            _grid_barrier(arrive_ptr, target)
    else:
        tl.debug_barrier()


@triton.jit
def _leave_grid(arrive_ptr, done_ptr):
    # A program counts itself out only after its last wait on arrive, so when done reaches P no program of this
    # batch block reads arrive again: the last one out zeroes both counters for the next launch on the stream.
    left = tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="gpu")
    last = left == tl.num_programs(0) - 1
    tl.atomic_xchg(arrive_ptr, 0, mask=last, sem="relaxed", scope="gpu")
    tl.atomic_xchg(done_ptr, 0, mask=last, sem="relaxed", scope="gpu")


@triton.jit
def _outer(acc3, a, w):
    # acc3 [M, N, BLOCK_K] + a [M, BLOCK_K] (x) w [N, BLOCK_K]: a reduction tile's products, one FMA each, kept apart
    # over k and summed once after the K loop (OUTER; see the docstring).  In the accumulation dtype.
    return acc3 + a.to(acc3.dtype)[:, None, :] * w.to(acc3.dtype)[None, :, :]


@triton.jit
def _trip_masks(a_ok, w_ok, ks, K, MASK_K: tl.constexpr):
    # The load masks of an outer-product trip's tiles: the operands' rows (a_ok, w_ok), and with MASK_K k < K too
    # (without it the rows' masks broadcast along k: no comparison per element; sm_90 code as with [rows, 1] masks).
    if MASK_K:
        return a_ok[:, None] & (ks < K)[None, :], w_ok[:, None] & (ks < K)[None, :]
    return (tl.broadcast_to(a_ok[:, None], (a_ok.shape[0], ks.shape[0])),
            tl.broadcast_to(w_ok[:, None], (w_ok.shape[0], ks.shape[0])))


@triton.jit
def _outer_trip(acc3, src, src_rows, src_ok, w_ptr, w_rows, w_ok, K, k0, kr, SPLIT: tl.constexpr,
                BLOCK_K: tl.constexpr, MASK_K: tl.constexpr):
    # One trip of _outer_sum: SPLIT BLOCK_K tiles from k0, unrolled (their loads go out before the FMAs); MASK_K: mask
    # k >= K (the last trip), else only the rows' masks, which do not change along the loop.
    for s in tl.static_range(SPLIT):
        ks = k0 + s * BLOCK_K + kr
        a_m, w_m = _trip_masks(src_ok, w_ok, ks, K, MASK_K)
        a = tl.load(src + src_rows[:, None] + ks[None, :], mask=a_m, other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + w_rows[:, None] + ks[None, :], mask=w_m, other=0.0, eviction_policy="evict_last")
        acc3 = _outer(acc3, a, w)
    return acc3


@triton.jit
def _outer_sum(src, src_rows, src_ok, w_ptr, w_rows, w_ok, K, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
               N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr = 1):
    # [BLOCK_B, N]: sum over k < K of src[src_rows[b] + k] w[w_rows[n] + k], both read with k contiguous, as outer
    # products into a [BLOCK_B, N, BLOCK_K] accumulator summed over k after the loop (OUTER; K_END: K, or 0 to probe).
    # src_ok, w_ok: the rows to read (others count as zero).  src is what other programs wrote (.cg), w the weights.
    # SPLIT BLOCK_K tiles a trip, unrolled (see the module docstring's OUTER); the whole trips without a mask along k,
    # then a part trip with one.
    acc3 = tl.full((BLOCK_B, N, BLOCK_K), 0.0, dtype=acc_ty)
    kr = tl.arange(0, BLOCK_K)
    end = _bound(K_END)
    whole = end // (SPLIT * BLOCK_K) * (SPLIT * BLOCK_K)
    for k0 in range(0, _bound(whole), SPLIT * BLOCK_K):  # (_bound: a block in Triton 3.6's interpreter)
        acc3 = _outer_trip(acc3, src, src_rows, src_ok, w_ptr, w_rows, w_ok, K, k0, kr, SPLIT, BLOCK_K, False)
    if whole < end:
        acc3 = _outer_trip(acc3, src, src_rows, src_ok, w_ptr, w_rows, w_ok, K, whole, kr, SPLIT, BLOCK_K, True)
    return tl.reduce(acc3, 2, _SUM)


@triton.jit
def _dh(acc, da_src, da_ok, row_g, w_ptr, js, j_ok, H, K_END, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, FUSE: tl.constexpr, NG: tl.constexpr, SPLIT: tl.constexpr = 1,
        OUTER: tl.constexpr = False, WT: tl.constexpr = False):
    # acc + dA[rows, :] W_hh[:, js]: the reduction over the NG H gate rows in BLOCK_K tiles (K_END: H, or 0 to probe).
    # da_src: the [B, NG H] slab of dA (row_g: its row offsets); da_ok [BLOCK_B]: rows to read (others count as zero).
    # FUSE: the NG gates' rows in one tile of 4 BLOCK_K (NG = 3: the fourth masked).  SPLIT > 1: see _dh_split
    # (with OUTER: the unrolling of _outer_sum).  OUTER:
    # w_ptr is W_hh^T, [H, NG H] (the launcher's transposed copy), so that row j holds every gate's k contiguously, and
    # the NG H columns of dA and W_hh^T are walked as one reduction, as the forward walks h against W_hh's rows.
    # WT: w_ptr is W_hh^T for tl.dot too (see _w_t).
    if OUTER:
        out = acc + _outer_sum(da_src, row_g, da_ok, w_ptr, js * (NG * H), j_ok, NG * H, _bound(K_END) * NG, acc.dtype,
                               acc.shape[0], acc.shape[1], BLOCK_K, SPLIT)
    else:
        out = _dh_dot(acc, da_src, da_ok, row_g, w_ptr, js, j_ok, H, K_END, BLOCK_K, PRECISION, UPCAST, FUSE, NG,
                      SPLIT, WT)
    return out


@triton.jit
def _dh_dot(acc, da_src, da_ok, row_g, w_ptr, js, j_ok, H, K_END, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
            UPCAST: tl.constexpr, FUSE: tl.constexpr, NG: tl.constexpr, SPLIT: tl.constexpr = 1,
            WT: tl.constexpr = False):
    # _dh with tl.dot.
    if SPLIT > 1:
        return acc + _dh_split(da_src, da_ok, row_g, w_ptr, js, j_ok, H, K_END, acc.shape[0], acc.shape[1], BLOCK_K,
                               PRECISION, UPCAST, FUSE, NG, SPLIT, acc.dtype, WT)
    if FUSE:  # one tl.dot per tile over the gates' rows: row r of the tile is gate r // BLOCK_K (NG = 3: 3 masked)
        rq = tl.arange(0, 4 * BLOCK_K)
        gq = (rq // BLOCK_K) * H
        g_ok = rq // BLOCK_K < NG
        for k0 in range(0, _bound(K_END), BLOCK_K):
            kq = k0 + rq % BLOCK_K
            kq_ok = (kq < H) & g_ok
            a = tl.load(da_src + row_g[:, None] + (gq + kq)[None, :], mask=da_ok[:, None] & kq_ok[None, :],
                        other=0.0, cache_modifier=".cg")
            if WT:
                w_ptrs = _w_t(w_ptr, (gq + kq)[:, None], js[None, :], H, NG)
            else:
                w_ptrs = w_ptr + (gq + kq)[:, None] * H + js[None, :]
            w = tl.load(w_ptrs, mask=kq_ok[:, None] & j_ok[None, :], other=0.0, eviction_policy="evict_last")
            acc = _dot(a, w, acc, PRECISION, UPCAST)
        return acc
    for k0 in range(0, _bound(K_END), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        a_ptrs = da_src + row_g[:, None] + ks[None, :]
        a_m = da_ok[:, None] & k_ok[None, :]
        if WT:
            w_ptrs = _w_t(w_ptr, ks[:, None], js[None, :], H, NG)
        else:
            w_ptrs = w_ptr + ks[:, None] * H + js[None, :]
        w_m = k_ok[:, None] & j_ok[None, :]
        for g in tl.static_range(NG):
            a = tl.load(a_ptrs + g * H, mask=a_m, other=0.0, cache_modifier=".cg")
            if WT:  # (gate g's block: H columns on in W_hh^T, H rows of H down in W_hh)
                w = tl.load(w_ptrs + g * H, mask=w_m, other=0.0, eviction_policy="evict_last")
            else:
                w = tl.load(w_ptrs + g * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
            acc = _dot(a, w, acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _w_t(w_ptr, r, j, H, NG: tl.constexpr):
    # The addresses of W_hh[r, j] (r: a row of the NG H gate rows, j: a unit; broadcast shapes) in the launcher's copy
    # W_hh^T, [H, NG H] (WT, launch.Tile.transposed_bwd): the backward's tiles, [gate rows, units], are then contiguous
    # along the gate rows, which start at multiples of the tile (vector loads), not along a program's units, which start
    # at p UNITS (sm_90, Triton 3.6: scalar 2- and 4-byte loads, e.g. 32 of them a trip in the bfloat16 large backward).
    # Without WT the kernels compute W_hh's addresses inline as before (the same SASS).
    return w_ptr + j * (NG * H) + r



# SPLIT > 1 (``launch.Tile.split_k``): the reduction over H split SPLIT ways inside the program.  Each trip of the K
# loop takes SPLIT consecutive BLOCK_K tiles at once as a batched tl.dot ([SPLIT, BLOCK_B, BLOCK_K] x [SPLIT, BLOCK_K,
# N]; Triton spreads the batch over the warps) into SPLIT partial sums, added up once after the loop.  So a step walks
# H / (SPLIT BLOCK_K) dependent trips instead of H / BLOCK_K, with SPLIT times the warps doing them side by side.
# These are _h_w / _dh with a leading batch axis of SPLIT; kept apart so that the unsplit loops compile exactly as
# before (a batch axis of 1 is another layout to Triton, and other registers).


@triton.jit
def _dh_split(da_src, da_ok, row_g, w_ptr, js, j_ok, H, K_END, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
              BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, FUSE: tl.constexpr,
              NG: tl.constexpr, SPLIT: tl.constexpr, acc_ty: tl.constexpr, WT: tl.constexpr = False):
    # _dh's dA[rows, :] W_hh[:, js] (without acc), SPLIT BLOCK_K tiles per trip.
    part = tl.full((SPLIT, BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    sk = tl.arange(0, SPLIT)[:, None] * BLOCK_K
    rows = row_g[None, :, None]
    rows_ok = da_ok[None, :, None]
    if FUSE:  # row r of a tile is gate r // BLOCK_K, as in _dh
        rq = tl.arange(0, 4 * BLOCK_K)
        gq = (rq // BLOCK_K) * H
        g_ok = (rq // BLOCK_K < NG)[None, :]
        for k0 in range(0, _bound(K_END), SPLIT * BLOCK_K):
            kq = k0 + sk + (rq % BLOCK_K)[None, :]  # [SPLIT, 4 BLOCK_K]
            kq_ok = (kq < H) & g_ok
            a = tl.load(da_src + rows + (gq[None, :] + kq)[:, None, :], mask=rows_ok & kq_ok[:, None, :], other=0.0,
                        cache_modifier=".cg")
            if WT:
                w_ptrs = _w_t(w_ptr, (gq[None, :] + kq)[:, :, None], js[None, None, :], H, NG)
            else:
                w_ptrs = w_ptr + (gq[None, :] + kq)[:, :, None] * H + js[None, None, :]
            w = tl.load(w_ptrs, mask=kq_ok[:, :, None] & j_ok[None, None, :], other=0.0, eviction_policy="evict_last")
            part = _dot(a, w, part, PRECISION, UPCAST)
    else:
        kr = tl.arange(0, BLOCK_K)
        for k0 in range(0, _bound(K_END), SPLIT * BLOCK_K):
            ks = k0 + sk + kr[None, :]  # [SPLIT, BLOCK_K]
            k_ok = ks < H
            a_ptrs = da_src + rows + ks[:, None, :]
            a_m = rows_ok & k_ok[:, None, :]
            if WT:
                w_ptrs = _w_t(w_ptr, ks[:, :, None], js[None, None, :], H, NG)
            else:
                w_ptrs = w_ptr + ks[:, :, None] * H + js[None, None, :]
            w_m = k_ok[:, :, None] & j_ok[None, None, :]
            for g in tl.static_range(NG):
                a = tl.load(a_ptrs + g * H, mask=a_m, other=0.0, cache_modifier=".cg")
                if WT:
                    w = tl.load(w_ptrs + g * H, mask=w_m, other=0.0, eviction_policy="evict_last")
                else:
                    w = tl.load(w_ptrs + g * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
                part = _dot(a, w, part, PRECISION, UPCAST)
    return tl.reduce(part, 0, _SUM)


@triton.jit
def _h_w_split(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, NG: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    # _h_w with SPLIT BLOCK_K tiles per trip: h_{t-1}[rows, :] W_hh[g H + js, :]^T for the first NG gates.
    p0 = tl.full((SPLIT, BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    p1 = tl.full((SPLIT, BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    p2 = tl.full((SPLIT, BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    p3 = tl.full((SPLIT, BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    sk = tl.arange(0, SPLIT)[:, None] * BLOCK_K
    kr = tl.arange(0, BLOCK_K)
    for k0 in range(0, _bound(K_END), SPLIT * BLOCK_K):
        ks = k0 + sk + kr[None, :]  # [SPLIT, BLOCK_K]
        k_ok = ks < H
        h = tl.load(h_src + row_h[None, :, None] + ks[:, None, :], mask=row_ok[None, :, None] & k_ok[:, None, :],
                    other=0.0, cache_modifier=".cg")
        w_ptrs = w_ptr + js[None, None, :] * H + ks[:, :, None]
        w_m = j_ok[None, None, :] & k_ok[:, :, None]
        w = tl.load(w_ptrs, mask=w_m, other=0.0, eviction_policy="evict_last")
        p0 = _dot(h, w, p0, PRECISION, UPCAST)
        w = tl.load(w_ptrs + H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
        p1 = _dot(h, w, p1, PRECISION, UPCAST)
        w = tl.load(w_ptrs + 2 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
        p2 = _dot(h, w, p2, PRECISION, UPCAST)
        if NG == 4:
            w = tl.load(w_ptrs + 3 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
            p3 = _dot(h, w, p3, PRECISION, UPCAST)
    return tl.reduce(p0, 0, _SUM), tl.reduce(p1, 0, _SUM), tl.reduce(p2, 0, _SUM), tl.reduce(p3, 0, _SUM)


@triton.jit
def _h_w_fused_split(h_src, row_h, row_ok, w_ptr, w_cols, jq_ok, H, K_END, acc_ty: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr, SPLIT: tl.constexpr):
    # The forward's one-dot-for-four-gates reduction ([BLOCK_B, 4 BLOCK_J]) with SPLIT BLOCK_K tiles per trip.
    part = tl.full((SPLIT, BLOCK_B, 4 * BLOCK_J), 0.0, dtype=acc_ty)
    sk = tl.arange(0, SPLIT)[:, None] * BLOCK_K
    kr = tl.arange(0, BLOCK_K)
    for k0 in range(0, _bound(K_END), SPLIT * BLOCK_K):
        ks = k0 + sk + kr[None, :]  # [SPLIT, BLOCK_K]
        k_ok = ks < H
        h = tl.load(h_src + row_h[None, :, None] + ks[:, None, :], mask=row_ok[None, :, None] & k_ok[:, None, :],
                    other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + w_cols[None, :, :] + ks[:, :, None], mask=jq_ok[None, :, :] & k_ok[:, :, None],
                    other=0.0, eviction_policy="evict_last")
        part = _dot(h, w, part, PRECISION, UPCAST)
    return tl.reduce(part, 0, _SUM)


@triton.jit
def _h_w_fused(h_src, row_h, row_ok, w_ptr, j0, u_hi, H, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, NG: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr, SPLIT: tl.constexpr = 1, OUTER: tl.constexpr = False):
    # _h_w for the units j0 <= j < u_hi with one [BLOCK_K, 4 BLOCK_J] tile of W_hh^T per reduction tile (FUSE):
    # column 4 u + g holds gate g of unit j0 + u, so one tl.dot (or one outer-product accumulator) covers the gates,
    # split into them after the reduction.  NG = 3 (the GRU): the fourth gate's columns are masked, so a quarter of
    # the products are of zeros, for one dot a tile instead of three; its result is zero.
    cq = tl.arange(0, 4 * BLOCK_J)
    jq = j0 + cq // 4
    w_rows = (cq % 4) * H + jq  # the row of W_hh behind each column
    jq_ok = (jq < u_hi) & (cq % 4 < NG)
    if OUTER:
        acc = _outer_sum(h_src, row_h, row_ok, w_ptr, w_rows * H, jq_ok, H, K_END, acc_ty, BLOCK_B, 4 * BLOCK_J,
                         BLOCK_K, SPLIT)
    elif SPLIT > 1:
        acc = _h_w_fused_split(h_src, row_h, row_ok, w_ptr, w_rows[None, :] * H, jq_ok[None, :], H, K_END, acc_ty,
                               BLOCK_B, BLOCK_J, BLOCK_K, PRECISION, UPCAST, SPLIT)
    else:
        acc = tl.full((BLOCK_B, 4 * BLOCK_J), 0.0, dtype=acc_ty)
        kr = tl.arange(0, BLOCK_K)
        for k0 in range(0, _bound(K_END), BLOCK_K):
            ks = k0 + kr
            k_ok = ks < H
            h = tl.load(h_src + row_h[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0,
                        cache_modifier=".cg")
            w = tl.load(w_ptr + w_rows[None, :] * H + ks[:, None], mask=jq_ok[None, :] & k_ok[:, None], other=0.0,
                        eviction_policy="evict_last")
            acc = _dot(h, w, acc, PRECISION, UPCAST)
    # [B, 4 J] -> [B, J, 2, 2] (gate g = 2 a + b along the last two axes); split b, then a
    g02, g13 = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_J, 2, 2)))
    a0, a2 = tl.split(g02)
    a1, a3 = tl.split(g13)
    return a0, a1, a2, a3


@triton.jit
def _h_w_outer_trip(p0, p1, p2, p3, h_src, row_h, row_ok, w_ptr, js, j_ok, H, k0, kr, NG: tl.constexpr,
                    SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, MASK_K: tl.constexpr):
    # One trip of _h_w_outer: SPLIT BLOCK_K tiles from k0, unrolled; MASK_K: mask k >= H (the last trip).
    for s in tl.static_range(SPLIT):
        ks = k0 + s * BLOCK_K + kr
        h_m, w_m = _trip_masks(row_ok, j_ok, ks, H, MASK_K)
        h = tl.load(h_src + row_h[:, None] + ks[None, :], mask=h_m, other=0.0, cache_modifier=".cg")
        w_ptrs = w_ptr + js[:, None] * H + ks[None, :]
        p0 = _outer(p0, h, tl.load(w_ptrs, mask=w_m, other=0.0, eviction_policy="evict_last"))
        p1 = _outer(p1, h, tl.load(w_ptrs + H * H, mask=w_m, other=0.0, eviction_policy="evict_last"))
        p2 = _outer(p2, h, tl.load(w_ptrs + 2 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last"))
        if NG == 4:
            p3 = _outer(p3, h, tl.load(w_ptrs + 3 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last"))
    return p0, p1, p2, p3


@triton.jit
def _h_w_outer(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, NG: tl.constexpr, SPLIT: tl.constexpr = 1):
    # _h_w as outer products (OUTER): per gate a [BLOCK_B, BLOCK_J, BLOCK_K] accumulator of h[b, k] W_hh[g H + j, k],
    # W_hh's rows read with k contiguous, summed over k after the loop; SPLIT BLOCK_K tiles a trip, unrolled, the
    # whole trips without a mask along k, then a part trip with one (as _outer_sum).
    p0 = tl.full((BLOCK_B, BLOCK_J, BLOCK_K), 0.0, dtype=acc_ty)
    p1 = tl.full((BLOCK_B, BLOCK_J, BLOCK_K), 0.0, dtype=acc_ty)
    p2 = tl.full((BLOCK_B, BLOCK_J, BLOCK_K), 0.0, dtype=acc_ty)
    if NG == 4:
        p3 = tl.full((BLOCK_B, BLOCK_J, BLOCK_K), 0.0, dtype=acc_ty)
    else:  # (the GRU: a fourth result of zeros, without a full accumulator's registers)
        p3 = tl.full((BLOCK_B, BLOCK_J, 1), 0.0, dtype=acc_ty)
    kr = tl.arange(0, BLOCK_K)
    end = _bound(K_END)
    whole = end // (SPLIT * BLOCK_K) * (SPLIT * BLOCK_K)
    for k0 in range(0, _bound(whole), SPLIT * BLOCK_K):  # (_bound: a block in Triton 3.6's interpreter)
        p0, p1, p2, p3 = _h_w_outer_trip(p0, p1, p2, p3, h_src, row_h, row_ok, w_ptr, js, j_ok, H, k0, kr, NG, SPLIT,
                                         BLOCK_K, False)
    if whole < end:
        p0, p1, p2, p3 = _h_w_outer_trip(p0, p1, p2, p3, h_src, row_h, row_ok, w_ptr, js, j_ok, H, whole, kr, NG,
                                         SPLIT, BLOCK_K, True)
    return tl.reduce(p0, 2, _SUM), tl.reduce(p1, 2, _SUM), tl.reduce(p2, 2, _SUM), tl.reduce(p3, 2, _SUM)


@triton.jit
def _bias(b_ih_ptr, b_hh_ptr, js, j_ok, acc_ty: tl.constexpr):
    # b_ih[js] + b_hh[js] in the accumulation dtype, as a [1, BLOCK_J] row.
    b = tl.load(b_ih_ptr + js, mask=j_ok, other=0.0).to(acc_ty)
    b += tl.load(b_hh_ptr + js, mask=j_ok, other=0.0).to(acc_ty)
    return b[None, :]


@triton.jit
def _h_w(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
         BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, NG: tl.constexpr, PRECISION: tl.constexpr,
         UPCAST: tl.constexpr, SPLIT: tl.constexpr = 1, OUTER: tl.constexpr = False):
    # h_{t-1}[rows, :] W_hh[g H + js, :]^T for the first NG (3 or 4) gates g, a tl.dot per gate and BLOCK_K tile
    # (K_END: H, or 0 to probe); with NG = 3 the fourth result stays zero.  h_{t-1} is read with .cg (L2): other
    # programs wrote it during this launch; the W_hh slice with evict_last, to stay in L1 for the next step.
    if OUTER:
        a0, a1, a2, a3 = _h_w_outer(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty, BLOCK_B, BLOCK_J,
                                    BLOCK_K, NG, SPLIT)
    else:
        a0, a1, a2, a3 = _h_w_dot(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty, BLOCK_B, BLOCK_J, BLOCK_K,
                                  NG, PRECISION, UPCAST, SPLIT)
    return a0, a1, a2, a3


@triton.jit
def _h_w_dot(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
             BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, NG: tl.constexpr, PRECISION: tl.constexpr,
             UPCAST: tl.constexpr, SPLIT: tl.constexpr = 1):
    # _h_w with tl.dot.
    if SPLIT > 1:
        return _h_w_split(h_src, row_h, row_ok, w_ptr, js, j_ok, H, K_END, acc_ty, BLOCK_B, BLOCK_J, BLOCK_K, NG,
                          PRECISION, UPCAST, SPLIT)
    a0 = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    a1 = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    a2 = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    a3 = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
    kr = tl.arange(0, BLOCK_K)
    for k0 in range(0, _bound(K_END), BLOCK_K):
        ks = k0 + kr
        k_ok = ks < H
        h_m = row_ok[:, None] & k_ok[None, :]
        h = tl.load(h_src + row_h[:, None] + ks[None, :], mask=h_m, other=0.0, cache_modifier=".cg")
        w_ptrs = w_ptr + js[None, :] * H + ks[:, None]
        w_m = j_ok[None, :] & k_ok[:, None]
        w = tl.load(w_ptrs, mask=w_m, other=0.0, eviction_policy="evict_last")
        a0 = _dot(h, w, a0, PRECISION, UPCAST)
        w = tl.load(w_ptrs + H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
        a1 = _dot(h, w, a1, PRECISION, UPCAST)
        w = tl.load(w_ptrs + 2 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
        a2 = _dot(h, w, a2, PRECISION, UPCAST)
        if NG == 4:
            w = tl.load(w_ptrs + 3 * H * H, mask=w_m, other=0.0, eviction_policy="evict_last")
            a3 = _dot(h, w, a3, PRECISION, UPCAST)
    return a0, a1, a2, a3


@triton.jit(do_not_specialize=["t_lo", "t_hi"])
def lstm_fwd_kernel(
    xp_ptr,  # [T, B, 4H] input projection x_t W_ih^T
    w_ptr,  # [4 HP, HP] recurrent weights W_hh, gates i, f, g, o, each [H, H] block zero-padded to [HP, HP]
    b_ih_ptr,  # [4H] input bias, compute dtype (added to b_hh in the accumulation dtype)
    b_hh_ptr,  # [4H] recurrent bias, compute dtype
    hk_ptr,  # PAD: [2, B, HP] zero-padded rows, h_t in slot t % 2 (h_0 in slot 1 at launch); else h_0 [B, H]
    c0_ptr,  # [B, H] initial cell state, dtype of c
    y_ptr,  # [T, B, H] out: hidden states h_t
    c_ptr,  # out: cell states in the accumulation dtype; TRAIN: [1 + ceil(T / 2), B, H], c_t of even t in slot
    # 1 + t / 2, of odd t in slot 0 (read by step t + 1 alone; the backward recomputes it: launch.c_slot); else
    # [2, B, H], c_t in slot t % 2
    gates_ptr,  # [T, B, 4H] out (TRAIN): activated gates i, f, g, o, accumulation dtype
    arrive_ptr,  # [NB] int32 grid-barrier arrivals per batch block (SYNC), zero at launch, left zero
    done_ptr,  # [NB] int32 programs finished per batch block (SYNC), zero at launch, left zero
    t_lo, t_hi,  # this launch runs the timesteps t_lo <= t < t_hi
    B, H, HP,  # batch size, hidden size, H padded to a multiple of 16 (the row stride of w and hk)
    UNITS,  # hidden units owned by one program along grid axis 0
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16 for tl.dot)
    BLOCK_J: tl.constexpr,  # hidden units per tile
    BLOCK_K: tl.constexpr,  # reduction tile over the H inputs of W_hh
    RESIDENT: tl.constexpr,  # load this program's W_hh slice once, before the time loop
    SYNC: tl.constexpr,  # grid barrier between steps (persistent path)
    TRAIN: tl.constexpr,  # keep what the backward needs: the gates and c_t of even t (else c is a two-slab ring)
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee", "tf32" or "tf32x3"
    UPCAST: tl.constexpr,  # interpreter with 16-bit floats: take tl.dot operands to float32
    FUSE: tl.constexpr,  # one tl.dot per reduction tile for the four gates (else one per gate)
    PROBE: tl.constexpr = 0,  # timing probes only (cells.triton_lstm.probe): 1 no matmul, 2 no barrier, 3 neither
    SPLIT: tl.constexpr = 1,  # the reduction over H split this many ways inside the program (see _h_w_split)
    PAD: tl.constexpr = False,  # HP > H: the matmul reads h_{t-1} from the ring hk (else hk is h_0, HP = H, y is read)
    OUTER: tl.constexpr = False,  # the K loop as outer products, summed over k after it (no tl.dot)
):
    p = tl.program_id(0)
    nb = tl.program_id(1)
    HK = HP if PAD else H  # the row stride of what the recurrent matmul reads (W_hh, and hk / dak when PAD)
    acc_ty = c_ptr.dtype.element_ty
    rows = nb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_h = rows * H  # row offsets in a [B, H] slab
    row_g = rows * (4 * H)  # row offsets in a [B, 4H] slab
    row_k = rows * HK  # row offsets in a [B, HK] slab of hk
    slab = tl.cast(B, tl.int64) * H  # elements in a [B, H] slab
    slab_k = tl.cast(B, tl.int64) * HK  # elements in a slot of hk
    u_lo = p * UNITS
    u_hi = tl.minimum(u_lo + UNITS, H)
    kr = tl.arange(0, BLOCK_K)
    if RESIDENT:  # one unit tile, one reduction tile: W_hh[g * H + js, :]^T as [BLOCK_K, BLOCK_J]
        js = u_lo + tl.arange(0, BLOCK_J)
        w_ptrs = w_ptr + js[None, :] * HK + kr[:, None]
        w_m = (js < u_hi)[None, :] & (kr < HK)[:, None]
        w_i = tl.load(w_ptrs, mask=w_m, other=0.0)
        w_f = tl.load(w_ptrs + HK * HK, mask=w_m, other=0.0)
        w_g = tl.load(w_ptrs + 2 * HK * HK, mask=w_m, other=0.0)
        w_o = tl.load(w_ptrs + 3 * HK * HK, mask=w_m, other=0.0)
    for t in range(_bound(t_lo), _bound(t_hi)):
        t64 = tl.cast(t, tl.int64)
        if TRAIN:  # even t in slot 1 + t / 2, odd t in slot 0 (launch.c_slot)
            c_out = c_ptr + (1 - t64 % 2) * (1 + t64 // 2) * slab
            c_prev = c_ptr + (t64 % 2) * (1 + t64 // 2) * slab
        else:  # slot t % 2; c_{t-1} is in slot (t + 1) % 2
            c_out = c_ptr + (t64 % 2) * slab
            c_prev = c_ptr + ((t64 + 1) % 2) * slab
        # State of step t - 1; .cg reads L2, since other programs wrote it during this launch.
        if PAD:
            h_src = hk_ptr + ((t64 + 1) % 2) * slab_k
        else:
            h_src = tl.where(t > 0, y_ptr + (t64 - 1) * slab, hk_ptr)
        c_src = tl.where(t > 0, c_prev, c0_ptr)
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            m = row_ok[:, None] & j_ok[None, :]
            o_h = row_h[:, None] + js[None, :]
            o_g = row_g[:, None] + js[None, :]
            a_i = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
            a_f = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
            a_g = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
            a_o = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
            if RESIDENT:
                h_m = row_ok[:, None] & (kr < HK)[None, :]
                h = tl.load(h_src + row_k[:, None] + kr[None, :], mask=h_m, other=0.0, cache_modifier=".cg")
                a_i = _dot(h, w_i, a_i, PRECISION, UPCAST)
                a_f = _dot(h, w_f, a_f, PRECISION, UPCAST)
                a_g = _dot(h, w_g, a_g, PRECISION, UPCAST)
                a_o = _dot(h, w_o, a_o, PRECISION, UPCAST)
            elif FUSE:  # one dot (or outer-product accumulator) per reduction tile for the four gates
                a_i, a_f, a_g, a_o = _h_w_fused(h_src, row_k, row_ok, w_ptr, j0, u_hi, HK,
                                                HK if PROBE % 2 == 0 else 0, acc_ty, BLOCK_B, BLOCK_J, BLOCK_K, 4,
                                                PRECISION, UPCAST, SPLIT, OUTER)
            else:  # (probes 1 and 3 leave the recurrent matmul out: no reduction tiles; streamed slices only)
                a_i, a_f, a_g, a_o = _h_w(h_src, row_k, row_ok, w_ptr, js, j_ok, HK, HK if PROBE % 2 == 0 else 0,
                                          acc_ty, BLOCK_B, BLOCK_J, BLOCK_K, 4, PRECISION, UPCAST, SPLIT, OUTER)
            xp_t = xp_ptr + t64 * 4 * slab + o_g
            a_i += tl.load(xp_t, mask=m, other=0.0).to(acc_ty) + _bias(b_ih_ptr, b_hh_ptr, js, j_ok, acc_ty)
            a_f += tl.load(xp_t + H, mask=m, other=0.0).to(acc_ty) + _bias(b_ih_ptr + H, b_hh_ptr + H, js, j_ok,
                                                                            acc_ty)
            a_g += tl.load(xp_t + 2 * H, mask=m, other=0.0).to(acc_ty) + _bias(b_ih_ptr + 2 * H, b_hh_ptr + 2 * H,
                                                                                js, j_ok, acc_ty)
            a_o += tl.load(xp_t + 3 * H, mask=m, other=0.0).to(acc_ty) + _bias(b_ih_ptr + 3 * H, b_hh_ptr + 3 * H,
                                                                                js, j_ok, acc_ty)
            # sigmoid(x) = 1 / (1 + exp(-x)); tanh(x) = 2 sigmoid(2x) - 1 (neither overflows)
            i = 1.0 / (1.0 + tl.exp(-a_i))
            f = 1.0 / (1.0 + tl.exp(-a_f))
            g = 2.0 / (1.0 + tl.exp(-2.0 * a_g)) - 1.0
            o = 1.0 / (1.0 + tl.exp(-a_o))
            c = f * tl.load(c_src + o_h, mask=m, other=0.0, cache_modifier=".cg") + i * g
            h_new = o * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
            tl.store(c_out + o_h, c, mask=m)
            h_new = h_new.to(y_ptr.dtype.element_ty)
            tl.store(y_ptr + t64 * slab + o_h, h_new, mask=m)
            if PAD:
                tl.store(hk_ptr + (t64 % 2) * slab_k + row_k[:, None] + js[None, :], h_new, mask=m)
            if TRAIN:
                g_t = gates_ptr + t64 * 4 * slab + o_g
                tl.store(g_t, i, mask=m)
                tl.store(g_t + H, f, mask=m)
                tl.store(g_t + 2 * H, g, mask=m)
                tl.store(g_t + 3 * H, o, mask=m)
        if t + 1 < t_hi:  # nothing in this launch reads the last step's h and c
            _end_step(arrive_ptr + nb, (t - t_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)


# EXCHANGE (``launch.Tile.exchange``): the recurrent matmul without a reduction loop.  Program p owns units
# [p U, p U + U) and with them the rank-U share h_t[:, own] W_hh[:, own]^T of every program's next pre-activations: it
# writes that share into an exchange buffer X (phase 1, ``_xchg_out``), the programs meet at the grid barrier, and
# each sums the P shares of its own columns (phase 2, ``_xchg_in``).  No step waits on a chain of K tiles: phase 1 is
# P / DG independent dots of depth KX (U padded to 16), phase 2 P / SG independent loads; h_t never travels, only the
# shares do (X: [2, P, P, B, 4 U], parity t % 2 read at step t, (t + 1) % 2 written; destination-major, so a
# program's phase 2 reads one contiguous [P, B, 4 U] block; column 4 u + g is gate g of the destination's unit
# u).  W_hh arrives rearranged per launch (``launch.exchange_weight``): wx[s, k, d, 4 u + g] = W_hh[g H + d U + u,
# s U + k], so phase 1 of program s reads its own contiguous [U, P, 4 U] slab, compact: the dot's padding (k up to
# KX, units up to BLOCK_J) is masked, not stored.


@triton.jit
def _xchg_out(a_own, w_ptr, x_ptr, xo, p, rows, row_ok, P, B, KR, WS: tl.constexpr, acc_ty: tl.constexpr,
              BLOCK_B: tl.constexpr, W: tl.constexpr, KX: tl.constexpr, DG: tl.constexpr, PRECISION: tl.constexpr,
              UPCAST: tl.constexpr):
    # Phase 1: X[xo + (d, p, b, c)] = sum_k a_own[b, k] w[p, k, d WS + c] for every destination program d, DG at a
    # time; a_own [BLOCK_B, KX] (zero past its KR real columns), w [P, KR, P WS] (compact: a program's KR rows, a
    # destination's WS columns -- the forward: KR = UNITS, WS = 4 UNITS; the backward: 4 UNITS and UNITS), read
    # through masks into the dot's [KX, DG W] operand (W = WS padded to a power of two), so no padding is stored or
    # read; X blocks [B, WS].
    n = tl.arange(0, DG * W)
    kk = tl.arange(0, KX)
    c = n % W
    xs = tl.cast(B, tl.int64) * WS  # elements of one (destination, source) block
    w_src = w_ptr + tl.cast(p, tl.int64) * KR * (P * WS) + kk[:, None] * (P * WS)
    for d0 in range(0, _bound(P), DG):
        d = d0 + n // W
        col_ok = (d < P) & (c < WS)
        w = tl.load(w_src + (d * WS + c)[None, :], mask=(kk < KR)[:, None] & col_ok[None, :], other=0.0,
                    eviction_policy="evict_last")
        part = _dot(a_own, w, tl.full((BLOCK_B, DG * W), 0.0, dtype=acc_ty), PRECISION, UPCAST)
        off = xo + d[None, :] * (P * xs) + p * xs + rows[:, None] * WS + c[None, :]
        tl.store(x_ptr + off, part, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _xchg_units(B, H, UNITS, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    # Program (p, nb)'s batch rows and units on the exchange path: p, nb, rows, row_ok, u_lo, js, j_ok, and m, the
    # [BLOCK_B, BLOCK_J] mask of its rows and units.
    p = tl.program_id(0)
    nb = tl.program_id(1)
    rows = nb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    u_lo = p * UNITS
    ur = tl.arange(0, BLOCK_J)
    js = u_lo + ur
    j_ok = (ur < UNITS) & (js < H)
    return p, nb, rows, row_ok, u_lo, js, j_ok, row_ok[:, None] & j_ok[None, :]


@triton.jit
def _xchg_out_fma(a_src, row_a, u_lo, UNITS, H, w_ptr, x_ptr, xo, p, rows, row_ok, P, B, WS: tl.constexpr,
                  acc_ty: tl.constexpr, BLOCK_B: tl.constexpr, W: tl.constexpr, KO: tl.constexpr, DG: tl.constexpr):
    # _xchg_out as outer products over this program's KO (its units, padded to a power of two) rows of w, for exact
    # float32 (the forward's OUTER): no tl.dot, so no depth padded to 16 and no operand shuffles through shared
    # memory; a_src[row_a[b] + u_lo + k] is a_own[b, k] (re-read a column at a time: this program's own h_t, in L1).
    n = tl.arange(0, DG * W)
    c = n % W
    xs = tl.cast(B, tl.int64) * WS
    w_src = w_ptr + tl.cast(p, tl.int64) * UNITS * (P * WS)
    for d0 in range(0, _bound(P), DG):
        d = d0 + n // W
        col_ok = (d < P) & (c < WS)
        part = tl.full((BLOCK_B, DG * W), 0.0, dtype=acc_ty)
        for k in tl.static_range(KO):
            kv = rows * 0 + k  # (a block, not a scalar, in the mask: the interpreter mistypes a splat boolean)
            a_k = tl.load(a_src + row_a + u_lo + k, mask=row_ok & (kv < UNITS) & (u_lo + kv < H), other=0.0,
                          cache_modifier=".cg").to(acc_ty)
            w_k = tl.load(w_src + k * (P * WS) + d * WS + c, mask=col_ok & (n * 0 + k < UNITS), other=0.0,
                          eviction_policy="evict_last")
            part += a_k[:, None] * w_k.to(acc_ty)[None, :]
        off = xo + d[None, :] * (P * xs) + p * xs + rows[:, None] * WS + c[None, :]
        tl.store(x_ptr + off, part, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _xchg_share(h_base, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, xo, p, rows, row_ok, P, B, WS: tl.constexpr,
                acc_ty: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, KX: tl.constexpr, DG: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, OUTER: tl.constexpr):
    # The forward's phase 1 from the hidden state at h_base ([B, H]: h_0, or this program's own h_t just stored): as
    # outer products over the program's units (OUTER), or its KX-wide slice through _xchg_out's tl.dot.
    if OUTER:
        _xchg_out_fma(h_base, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, xo, p, rows, row_ok, P, B, WS, acc_ty,
                      BLOCK_B, 4 * BLOCK_J, BLOCK_J, DG)
    else:
        kr = tl.arange(0, KX)
        h_own = tl.load(h_base + row_h[:, None] + (u_lo + kr)[None, :],
                        mask=row_ok[:, None] & ((kr < UNITS) & (u_lo + kr < H))[None, :], other=0.0,
                        cache_modifier=".cg")
        _xchg_out(h_own, wx_ptr, x_ptr, xo, p, rows, row_ok, P, B, UNITS, WS, acc_ty, BLOCK_B, 4 * BLOCK_J, KX, DG,
                  PRECISION, UPCAST)


@triton.jit
def _xchg_in(x_ptr, xo, p, rows, row_ok, P, B, WS: tl.constexpr, acc_ty: tl.constexpr, BLOCK_B: tl.constexpr,
             W: tl.constexpr, SG: tl.constexpr, XR: tl.constexpr = 1):
    # Phase 2: sum over the P source programs of X[xo + (p, s, b, c)], SG sources a load, XR loads issued together
    # before their sums (the loop's trips are one L2 round trip each: fewer, wider trips): [BLOCK_B, W].
    c = tl.arange(0, W)
    sr = tl.arange(0, SG)
    xs = tl.cast(B, tl.int64) * WS
    base = x_ptr + xo + p * (P * xs) + rows[None, :, None] * WS + c[None, None, :]
    acc = tl.full((BLOCK_B, W), 0.0, dtype=acc_ty)
    for s0 in range(0, _bound(P), SG * XR):
        s = s0 + sr
        m = (s < P)[:, None, None] & row_ok[None, :, None] & (c < WS)[None, None, :]
        tot = tl.load(base + s[:, None, None] * xs, mask=m, other=0.0, cache_modifier=".cg")
        for r in tl.static_range(1, XR):  # (elementwise sums: no barrier between the loads)
            s = s0 + r * SG + sr
            m = (s < P)[:, None, None] & row_ok[None, :, None] & (c < WS)[None, None, :]
            tot += tl.load(base + s[:, None, None] * xs, mask=m, other=0.0, cache_modifier=".cg")
        acc += tl.reduce(tot, 0, _SUM)
    return acc


@triton.jit(do_not_specialize=["t_lo", "t_hi", "T", "PRO"])
def lstm_fwd_xchg_kernel(
    xp_ptr,  # [T, B, 4H] input projection x_t W_ih^T
    wx_ptr,  # [P, UNITS, P, 4 UNITS] W_hh rearranged (launch.exchange_weight), compute dtype
    b_ih_ptr, b_hh_ptr,  # [4H] biases, compute dtype (added in the accumulation dtype)
    h0_ptr,  # [B, H] initial hidden state
    c0_ptr,  # [B, H] initial cell state, dtype of c
    y_ptr,  # [T, B, H] out: hidden states h_t
    c_ptr,  # out: cell states, as lstm_fwd_kernel's (TRAIN: even t kept, launch.c_slot; else two slabs)
    gates_ptr,  # [T, B, 4H] out (TRAIN): activated gates i, f, g, o, accumulation dtype
    x_ptr,  # [2, P, P, B, WS] the exchange buffer, accumulation dtype
    arrive_ptr, done_ptr,  # [NB] int32 grid-barrier counters (SYNC), zero at launch, left zero
    t_lo, t_hi,  # this launch runs the timesteps t_lo <= t < t_hi
    T,  # the layer's timesteps (no shares are made after the last)
    PRO,  # nonzero: first make the shares of h_0 (the stepwise path makes them in a launch of their own)
    B, H, UNITS, P,  # batch size, hidden size, units a program, programs along grid axis 0
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,  # batch rows a program; units a program, padded to a power of two
    KX: tl.constexpr,  # phase 1's reduction: BLOCK_J, at least 16 (tl.dot)
    DG: tl.constexpr,  # destination programs a phase-1 dot
    SG: tl.constexpr,  # source programs a phase-2 load
    SYNC: tl.constexpr, TRAIN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    XR: tl.constexpr = 1,  # phase-2 loads issued together
    WS: tl.constexpr = 0,  # the stored width of an exchange block: 4 UNITS
    OUTER: tl.constexpr = False,  # phase 1 as outer products over the program's units (exact float32; _xchg_out_fma)
    PROBE: tl.constexpr = 0,  # timing probes only: 2 leaves the grid barrier out
):
    p, nb, rows, row_ok, u_lo, js, j_ok, m = _xchg_units(B, H, UNITS, BLOCK_B, BLOCK_J)
    acc_ty = c_ptr.dtype.element_ty
    row_h = rows * H
    row_g = rows * (4 * H)
    slab = tl.cast(B, tl.int64) * H
    o_h = row_h[:, None] + js[None, :]
    o_g = row_g[:, None] + js[None, :]
    xpar = tl.cast(P, tl.int64) * P * B * WS  # elements of one parity of X
    b_i = _bias(b_ih_ptr, b_hh_ptr, js, j_ok, acc_ty)
    b_f = _bias(b_ih_ptr + H, b_hh_ptr + H, js, j_ok, acc_ty)
    b_g = _bias(b_ih_ptr + 2 * H, b_hh_ptr + 2 * H, js, j_ok, acc_ty)
    b_o = _bias(b_ih_ptr + 3 * H, b_hh_ptr + 3 * H, js, j_ok, acc_ty)
    if PRO:  # the shares of h_0, for step t_lo (= 0)
        _xchg_share(h0_ptr, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, (t_lo % 2) * xpar, p, rows, row_ok, P, B, WS,
                    acc_ty, BLOCK_B, BLOCK_J, KX, DG, PRECISION, UPCAST, OUTER)
        _end_step(arrive_ptr + nb, tl.num_programs(0), SYNC, PROBE)
    for t in range(_bound(t_lo), _bound(t_hi)):
        t64 = tl.cast(t, tl.int64)
        if TRAIN:  # even t in slot 1 + t / 2, odd t in slot 0 (launch.c_slot)
            c_out = c_ptr + (1 - t64 % 2) * (1 + t64 // 2) * slab
            c_prev = c_ptr + (t64 % 2) * (1 + t64 // 2) * slab
        else:
            c_out = c_ptr + (t64 % 2) * slab
            c_prev = c_ptr + ((t64 + 1) % 2) * slab
        c_src = tl.where(t > 0, c_prev, c0_ptr)
        acc = _xchg_in(x_ptr, (t64 % 2) * xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, 4 * BLOCK_J, SG, XR)
        # [B, 4 J] -> [B, J, 2, 2] (gate g = 2 a + b along the last two axes); split b, then a
        g02, g13 = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_J, 2, 2)))
        a_i, a_g = tl.split(g02)
        a_f, a_o = tl.split(g13)
        xp_t = xp_ptr + t64 * 4 * slab + o_g
        a_i += tl.load(xp_t, mask=m, other=0.0).to(acc_ty) + b_i
        a_f += tl.load(xp_t + H, mask=m, other=0.0).to(acc_ty) + b_f
        a_g += tl.load(xp_t + 2 * H, mask=m, other=0.0).to(acc_ty) + b_g
        a_o += tl.load(xp_t + 3 * H, mask=m, other=0.0).to(acc_ty) + b_o
        i = 1.0 / (1.0 + tl.exp(-a_i))
        f = 1.0 / (1.0 + tl.exp(-a_f))
        g = 2.0 / (1.0 + tl.exp(-2.0 * a_g)) - 1.0
        o = 1.0 / (1.0 + tl.exp(-a_o))
        c = f * tl.load(c_src + o_h, mask=m, other=0.0, cache_modifier=".cg") + i * g
        h_new = o * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
        tl.store(c_out + o_h, c, mask=m)
        tl.store(y_ptr + t64 * slab + o_h, h_new.to(y_ptr.dtype.element_ty), mask=m)
        if TRAIN:
            g_t = gates_ptr + t64 * 4 * slab + o_g
            tl.store(g_t, i, mask=m)
            tl.store(g_t + H, f, mask=m)
            tl.store(g_t + 2 * H, g, mask=m)
            tl.store(g_t + 3 * H, o, mask=m)
        if t + 1 < T:  # the shares of h_t for step t + 1: this program's h_t, read back KX wide
            tl.debug_barrier()  # (every thread's stores of h_t before any reads them)
            _xchg_share(y_ptr + t64 * slab, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, ((t64 + 1) % 2) * xpar, p, rows,
                        row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, KX, DG, PRECISION, UPCAST, OUTER)
        if t + 1 < t_hi:
            _end_step(arrive_ptr + nb, (t - t_lo + 1 + PRO) * tl.num_programs(0), SYNC, PROBE)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)


@triton.jit(do_not_specialize=["s_lo", "s_hi", "DO_TAIL", "T"])
def lstm_bwd_kernel(
    w_ptr,  # [4 HP, HP] recurrent weights W_hh, each gate zero-padded to [HP, HP]; OUTER or WT: [HP, 4 HP]
    c0_ptr,  # [B, H] initial cell state, dtype of c
    c_ptr,  # [1 + ceil(T / 2), B, H] the forward's cell states of even t (slot 1 + t / 2), accumulation dtype; those
    # of odd t are recomputed from them and the gates, as the forward computed them
    gates_ptr,  # [T, B, 4H] forward activated gates i, f, g, o, accumulation dtype
    dy_ptr,  # [T, B, H] gradient of the outputs y
    dhT_ptr,  # [B, H] gradient of the final hidden state h_{T-1}
    dc_ptr,  # [B, H] in: gradient of the final cell state; out: gradient of c_0 (accumulation dtype)
    da_ptr,  # [T, B, 4H] out: gate pre-activation gradients, accumulation dtype
    dak_ptr,  # PAD: [2, B, 4 HP] zeros at first, dA_t in slot t % 2 (gate g at column g HP; float32, or the
    # compute dtype: launch.Plan.round_da_bwd), what the next step's matmul reads; else unused
    dh0_ptr,  # [B, H] out (DO_TAIL): gradient of h_0
    arrive_ptr,  # [NB] int32 grid-barrier arrivals per batch block (SYNC), zero at launch, left zero
    done_ptr,  # [NB] int32 programs finished per batch block (SYNC), zero at launch, left zero
    s_lo, s_hi,  # this launch runs the reverse steps s_lo <= s < s_hi, i.e. timesteps t = T - 1 - s
    DO_TAIL,  # nonzero: after the steps form dh_0 = dA_0 W_hh
    T, B, H, HP,  # sequence length, batch size, hidden size, H padded to a multiple of 16
    UNITS,  # hidden units owned by one program along grid axis 0
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16 for tl.dot)
    BLOCK_J: tl.constexpr,  # hidden units per tile
    BLOCK_K: tl.constexpr,  # reduction tile over H
    RESIDENT: tl.constexpr,  # W_hh column slice in registers for the whole time loop
    SYNC: tl.constexpr,  # grid barrier between steps (persistent path)
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee", "tf32" or "tf32x3"
    UPCAST: tl.constexpr,  # interpreter with 16-bit floats: take tl.dot operands to float32
    FUSE: tl.constexpr,  # one tl.dot per reduction tile for the four gates (else one per gate)
    PROBE: tl.constexpr = 0,  # timing probes only (cells.triton_lstm.probe): 1 no matmul, 2 no barrier, 3 neither
    SPLIT: tl.constexpr = 1,  # the reduction over H split this many ways inside the program
    PAD: tl.constexpr = False,  # HP > H: the ring (hk or dak) carries the matmul's operand; else HP = H, y or da
    OUTER: tl.constexpr = False,  # the K loops as outer products (no tl.dot); w_ptr is then W_hh^T
    WT: tl.constexpr = False,  # w_ptr is W_hh^T ([HP, NG HP]) for tl.dot too (_w_t); the launcher sets it with OUTER
):
    p = tl.program_id(0)
    nb = tl.program_id(1)
    HK = HP if PAD else H  # the row stride of what the recurrent matmul reads (W_hh, and hk / dak when PAD)
    acc_ty = c_ptr.dtype.element_ty
    rows = nb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_h = rows * H
    row_g = rows * (4 * H)
    row_k = rows * (4 * HK)  # row offsets in a slot of dak
    slab = tl.cast(B, tl.int64) * H
    slab_k = tl.cast(B, tl.int64) * (4 * HK)  # elements in a slot of dak
    u_lo = p * UNITS
    u_hi = tl.minimum(u_lo + UNITS, H)
    kr = tl.arange(0, BLOCK_K)
    if RESIDENT:  # one unit tile, one reduction tile: W_hh[g * H + k, js] as [BLOCK_K, BLOCK_J]
        js = u_lo + tl.arange(0, BLOCK_J)
        v_ptrs = w_ptr + kr[:, None] * HK + js[None, :]
        v_m = (kr < HK)[:, None] & (js < u_hi)[None, :]
        v_i = tl.load(v_ptrs, mask=v_m, other=0.0)
        v_f = tl.load(v_ptrs + HK * HK, mask=v_m, other=0.0)
        v_g = tl.load(v_ptrs + 2 * HK * HK, mask=v_m, other=0.0)
        v_o = tl.load(v_ptrs + 3 * HK * HK, mask=v_m, other=0.0)
    for s in range(_bound(s_lo), _bound(s_hi)):
        t = T - 1 - s
        t64 = tl.cast(t, tl.int64)
        # dA_{t+1}: none after the last step
        da_next = dak_ptr + ((t64 + 1) % 2) * slab_k if PAD else da_ptr + (t64 + 1) * 4 * slab
        # Scalar conditions enter masks broadcast over a block: the interpreter mistypes a splat boolean.
        next_ok = row_ok & (rows * 0 + t + 1 < T)
        last = (rows * 0 + t == T - 1)[:, None]
        even = (rows * 0 + t) % 2 == 0
        first = (rows * 0 + t == 0)[:, None]
        t_1 = tl.maximum(t64 - 1, 0)
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            m = row_ok[:, None] & j_ok[None, :]
            o_h = row_h[:, None] + js[None, :]
            o_g = row_g[:, None] + js[None, :]
            # dh_t = dy_t + dA_{t+1} W_hh (+ dh_T at the last step)
            dh = tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty)
            if RESIDENT:
                a_ptrs = da_next + row_k[:, None] + kr[None, :]
                a_m = next_ok[:, None] & (kr < HK)[None, :]
                a = tl.load(a_ptrs, mask=a_m, other=0.0, cache_modifier=".cg")
                dh = _dot(a, v_i, dh, PRECISION, UPCAST)
                a = tl.load(a_ptrs + HK, mask=a_m, other=0.0, cache_modifier=".cg")
                dh = _dot(a, v_f, dh, PRECISION, UPCAST)
                a = tl.load(a_ptrs + 2 * HK, mask=a_m, other=0.0, cache_modifier=".cg")
                dh = _dot(a, v_g, dh, PRECISION, UPCAST)
                a = tl.load(a_ptrs + 3 * HK, mask=a_m, other=0.0, cache_modifier=".cg")
                dh = _dot(a, v_o, dh, PRECISION, UPCAST)
            else:  # (probes 1 and 3 leave the recurrent matmul out: no reduction tiles; streamed slices only)
                dh = _dh(dh, da_next, next_ok, row_k, w_ptr, js, j_ok, HK, HK if PROBE % 2 == 0 else 0, BLOCK_K,
                         PRECISION, UPCAST, FUSE, 4, SPLIT, OUTER, WT)
            dh += tl.load(dy_ptr + t64 * slab + o_h, mask=m, other=0.0).to(acc_ty)
            dh += tl.load(dhT_ptr + o_h, mask=m & last, other=0.0).to(acc_ty)
            g_t = gates_ptr + t64 * 4 * slab + o_g
            i = tl.load(g_t, mask=m, other=0.0)
            f = tl.load(g_t + H, mask=m, other=0.0)
            g = tl.load(g_t + 2 * H, mask=m, other=0.0)
            o = tl.load(g_t + 3 * H, mask=m, other=0.0)
            # c_t and c_{t-1}: slot 1 + t // 2 holds c_t for even t, c_{t-1} for odd t; the other is recomputed as
            # the forward computed it, c_t = f_t c_{t-1} + i_t g_t (for even t from c_{t-2} and the gates of t - 1)
            kept = tl.load(c_ptr + (1 + t64 // 2) * slab + o_h, mask=m, other=0.0)
            back = m & (even[:, None] & ~first)
            g_1 = gates_ptr + t_1 * 4 * slab + o_g
            c_2 = tl.load(c_ptr + (t64 // 2) * slab + o_h, mask=back, other=0.0)  # (slot >= 1 where it is read)
            c_1 = tl.load(g_1 + H, mask=back, other=0.0) * c_2 + tl.load(g_1, mask=back, other=0.0) * tl.load(
                g_1 + 2 * H, mask=back, other=0.0)
            c_1 = tl.where(first, tl.load(c0_ptr + o_h, mask=m & first, other=0.0), c_1)
            c_now = tl.where(even[:, None], kept, f * kept + i * g)
            c_prev = tl.where(even[:, None], c_1, kept)
            tc = 2.0 / (1.0 + tl.exp(-2.0 * c_now)) - 1.0
            dc = tl.load(dc_ptr + o_h, mask=m, other=0.0) + dh * o * (1.0 - tc * tc)
            da_t = da_ptr + t64 * 4 * slab + o_g
            tl.store(dc_ptr + o_h, dc * f, mask=m)
            da_i = dc * g * i * (1.0 - i)
            da_f = dc * c_prev * f * (1.0 - f)
            da_g = dc * i * (1.0 - g * g)
            da_o = dh * tc * o * (1.0 - o)
            tl.store(da_t, da_i, mask=m)
            tl.store(da_t + H, da_f, mask=m)
            tl.store(da_t + 2 * H, da_g, mask=m)
            tl.store(da_t + 3 * H, da_o, mask=m)
            if PAD:
                dak_t = dak_ptr + (t64 % 2) * slab_k + row_k[:, None] + js[None, :]
                tl.store(dak_t, da_i.to(dak_ptr.dtype.element_ty), mask=m)
                tl.store(dak_t + HK, da_f.to(dak_ptr.dtype.element_ty), mask=m)
                tl.store(dak_t + 2 * HK, da_g.to(dak_ptr.dtype.element_ty), mask=m)
                tl.store(dak_t + 3 * HK, da_o.to(dak_ptr.dtype.element_ty), mask=m)
        _end_step(arrive_ptr + nb, (s - s_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if DO_TAIL:  # dh_0 = dA_0 W_hh, once every program's dA_0 is written
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            dh0 = _dh(tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty), dak_ptr if PAD else da_ptr, row_ok, row_k,
                      w_ptr, js, j_ok, HK, HK, BLOCK_K, PRECISION, UPCAST, FUSE, 4, SPLIT, OUTER, WT)
            tl.store(dh0_ptr + row_h[:, None] + js[None, :], dh0.to(dh0_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & j_ok[None, :])
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)



@triton.jit(do_not_specialize=["s_lo", "s_hi", "DO_TAIL", "T"])
def lstm_bwd_xchg_kernel(
    wb_ptr,  # [P, 4 UNITS, P, UNITS] W_hh rearranged (launch.exchange_weight_bwd): wb[s, 4 u + g, d, v] = W_hh[g H
    # + s U + u, d U + v]; compute dtype
    c0_ptr, c_ptr, gates_ptr, dy_ptr, dhT_ptr, dc_ptr, da_ptr, dh0_ptr,  # as lstm_bwd_kernel's
    x_ptr,  # [2, P, P, B, WS] the exchange buffer, accumulation dtype: the shares of dA_{t+1} W_hh for time t in
    # parity t % 2 (made at step t + 1), those of dh_0 in parity 1
    arrive_ptr, done_ptr,  # [NB] int32 grid-barrier counters (SYNC), zero at launch, left zero
    s_lo, s_hi,  # this launch runs the reverse steps s_lo <= s < s_hi, i.e. timesteps t = T - 1 - s
    DO_TAIL,  # nonzero: after the steps sum the shares of dh_0
    T, B, H, UNITS, P,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
    KB: tl.constexpr,  # phase 1's reduction: the program's 4 BLOCK_J gate columns, at least 16 (tl.dot)
    DG: tl.constexpr, SG: tl.constexpr, SYNC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    XR: tl.constexpr = 1,  # phase-2 loads issued together
    WS: tl.constexpr = 0,  # the stored width of an exchange block: UNITS
    PROBE: tl.constexpr = 0,  # timing probes only: 2 leaves the grid barrier out
):
    # lstm_bwd_kernel's recurrence with dh_t = dy_t + dA_{t+1} W_hh exchanged (EXCHANGE above): program p's dA_t
    # columns make its share of every program's dh_{t-1}, phase 2 sums the shares of its own units.
    p, nb, rows, row_ok, u_lo, js, j_ok, m = _xchg_units(B, H, UNITS, BLOCK_B, BLOCK_J)
    acc_ty = c_ptr.dtype.element_ty
    row_h = rows * H
    row_g = rows * (4 * H)
    slab = tl.cast(B, tl.int64) * H
    o_h = row_h[:, None] + js[None, :]
    o_g = row_g[:, None] + js[None, :]
    kq = tl.arange(0, KB)  # phase 1's operand: column 4 u + g of this program's dA_t
    uq = kq // 4
    q_ok = (kq < 4 * BLOCK_J) & (uq < UNITS) & (u_lo + uq < H)
    o_q = row_g[:, None] + ((kq % 4) * H + u_lo + uq)[None, :]
    m_q = row_ok[:, None] & q_ok[None, :]
    xpar = tl.cast(P, tl.int64) * P * B * WS  # elements of one parity of X
    for s in range(_bound(s_lo), _bound(s_hi)):
        t = T - 1 - s
        t64 = tl.cast(t, tl.int64)
        last = (rows * 0 + t == T - 1)[:, None]
        even = (rows * 0 + t) % 2 == 0
        first = (rows * 0 + t == 0)[:, None]
        t_1 = tl.maximum(t64 - 1, 0)
        dh = tl.load(dy_ptr + t64 * slab + o_h, mask=m, other=0.0).to(acc_ty)
        dh += tl.load(dhT_ptr + o_h, mask=m & last, other=0.0).to(acc_ty)
        if t + 1 < T:  # dA_{t+1} W_hh for this program's units: the shares made at step t + 1
            dh += _xchg_in(x_ptr, (t64 % 2) * xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, SG, XR)
        g_t = gates_ptr + t64 * 4 * slab + o_g
        i = tl.load(g_t, mask=m, other=0.0)
        f = tl.load(g_t + H, mask=m, other=0.0)
        g = tl.load(g_t + 2 * H, mask=m, other=0.0)
        o = tl.load(g_t + 3 * H, mask=m, other=0.0)
        # c_t and c_{t-1} as lstm_bwd_kernel has them (even t kept, odd t recomputed)
        kept = tl.load(c_ptr + (1 + t64 // 2) * slab + o_h, mask=m, other=0.0)
        back = m & (even[:, None] & ~first)
        g_1 = gates_ptr + t_1 * 4 * slab + o_g
        c_2 = tl.load(c_ptr + (t64 // 2) * slab + o_h, mask=back, other=0.0)
        c_1 = tl.load(g_1 + H, mask=back, other=0.0) * c_2 + tl.load(g_1, mask=back, other=0.0) * tl.load(
            g_1 + 2 * H, mask=back, other=0.0)
        c_1 = tl.where(first, tl.load(c0_ptr + o_h, mask=m & first, other=0.0), c_1)
        c_now = tl.where(even[:, None], kept, f * kept + i * g)
        c_prev = tl.where(even[:, None], c_1, kept)
        tc = 2.0 / (1.0 + tl.exp(-2.0 * c_now)) - 1.0
        dc = tl.load(dc_ptr + o_h, mask=m, other=0.0) + dh * o * (1.0 - tc * tc)
        da_t = da_ptr + t64 * 4 * slab + o_g
        tl.store(dc_ptr + o_h, dc * f, mask=m)
        tl.store(da_t, dc * g * i * (1.0 - i), mask=m)
        tl.store(da_t + H, dc * c_prev * f * (1.0 - f), mask=m)
        tl.store(da_t + 2 * H, dc * i * (1.0 - g * g), mask=m)
        tl.store(da_t + 3 * H, dh * tc * o * (1.0 - o), mask=m)
        # the shares of dA_t W_hh for time t - 1 (at t = 0: of dh_0), parity (t + 1) % 2
        tl.debug_barrier()  # (every thread's stores of dA_t before any reads them)
        a_own = tl.load(da_ptr + t64 * 4 * slab + o_q, mask=m_q, other=0.0, cache_modifier=".cg")
        _xchg_out(a_own, wb_ptr, x_ptr, ((t64 + 1) % 2) * xpar, p, rows, row_ok, P, B, 4 * UNITS, WS, acc_ty, BLOCK_B,
                  BLOCK_J, KB, DG, PRECISION, UPCAST)
        _end_step(arrive_ptr + nb, (s - s_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if DO_TAIL:  # dh_0 = dA_0 W_hh: the shares made at t = 0
        dh0 = _xchg_in(x_ptr, xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, SG, XR)
        tl.store(dh0_ptr + o_h, dh0.to(dh0_ptr.dtype.element_ty), mask=m)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)


# ---- GRU (cells.triton_gru): the same split, grid barrier and K loop, three gates r, z, n ---------------------------
# h_t = (1 - z) n + z h_{t-1}, n = tanh(x W_in + b_in + r (h_{t-1} W_hn + b_hn)): W_hn h stays apart from the input
# projection, so the kernel keeps hn = h_{t-1} W_hn^T + b_hn for the backward.  No resident slice, a dot per gate.


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit(do_not_specialize=["t_lo", "t_hi"])
def gru_fwd_kernel(
    xp_ptr,  # [T, B, 3H] input projection x_t W_ih^T (no bias)
    w_ptr,  # [3 HP, HP] recurrent weights W_hh, gates r, z, n, each [H, H] block zero-padded to [HP, HP]
    b_ih_ptr,  # [3H] input bias, compute dtype
    b_hh_ptr,  # [3H] recurrent bias, compute dtype
    hk_ptr,  # PAD: [2, B, HP] zero-padded rows, h_t in slot t % 2 (h_0 in slot 1 at launch); else h_0 [B, H]
    y_ptr,  # [T, B, H] out: hidden states h_t
    gates_ptr,  # out (TRAIN): [T, B, 4H] r, z, n, hn in the accumulation dtype; else any tensor of that dtype
    arrive_ptr,  # [NB] int32 grid-barrier arrivals per batch block (SYNC), zero at launch, left zero
    done_ptr,  # [NB] int32 programs finished per batch block (SYNC), zero at launch, left zero
    t_lo, t_hi,  # this launch runs the timesteps t_lo <= t < t_hi
    B, H, HP,  # batch size, hidden size, H padded to a multiple of 16 (the row stride of w and hk)
    UNITS,  # hidden units owned by one program along grid axis 0
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16 for tl.dot)
    BLOCK_J: tl.constexpr,  # hidden units per tile
    BLOCK_K: tl.constexpr,  # reduction tile over the H inputs of W_hh
    RESIDENT: tl.constexpr,  # must be False (the GRU streams its slice)
    SYNC: tl.constexpr,  # grid barrier between steps (persistent path)
    TRAIN: tl.constexpr,  # store r, z, n and hn for the backward
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee", "tf32" or "tf32x3"
    UPCAST: tl.constexpr,  # interpreter with 16-bit floats: take tl.dot operands to float32
    FUSE: tl.constexpr,  # one tl.dot per reduction tile for the three gates (a fourth of zeros), else one per gate
    PROBE: tl.constexpr = 0,  # timing probes only: 1 no matmul, 2 no barrier, 3 neither
    SPLIT: tl.constexpr = 1,  # the reduction over H split this many ways inside the program
    PAD: tl.constexpr = False,  # HP > H: the ring (hk or dak) carries the matmul's operand; else HP = H, y or da
    OUTER: tl.constexpr = False,  # the K loop as outer products, summed over k after it (no tl.dot)
):
    p = tl.program_id(0)
    nb = tl.program_id(1)
    HK = HP if PAD else H  # the row stride of what the recurrent matmul reads (W_hh, and hk / dak when PAD)
    acc_ty = gates_ptr.dtype.element_ty
    rows = nb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_h = rows * H
    row_x = rows * (3 * H)  # row offsets in a [B, 3H] slab
    row_s = rows * (4 * H)  # row offsets in a [B, 4H] slab of saved gates
    row_k = rows * HK  # row offsets in a slot of hk
    slab = tl.cast(B, tl.int64) * H
    slab_k = tl.cast(B, tl.int64) * HK
    u_lo = p * UNITS
    u_hi = tl.minimum(u_lo + UNITS, H)
    for t in range(_bound(t_lo), _bound(t_hi)):
        t64 = tl.cast(t, tl.int64)
        # h_{t-1}; .cg below: other programs wrote it
        h_src = hk_ptr + ((t64 + 1) % 2) * slab_k if PAD else tl.where(t > 0, y_ptr + (t64 - 1) * slab, hk_ptr)
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            m = row_ok[:, None] & j_ok[None, :]
            o_h = row_h[:, None] + js[None, :]
            o_x = row_x[:, None] + js[None, :]
            # (probes 1 and 3 leave the recurrent matmul out)
            if FUSE:  # one dot per reduction tile for the three gates (and a fourth of zeros)
                a_r, a_z, a_n, _ = _h_w_fused(h_src, row_k, row_ok, w_ptr, j0, u_hi, HK, HK if PROBE % 2 == 0 else 0,
                                              acc_ty, BLOCK_B, BLOCK_J, BLOCK_K, 3, PRECISION, UPCAST, SPLIT, OUTER)
            else:
                a_r, a_z, a_n, _ = _h_w(h_src, row_k, row_ok, w_ptr, js, j_ok, HK, HK if PROBE % 2 == 0 else 0,
                                        acc_ty, BLOCK_B, BLOCK_J, BLOCK_K, 3, PRECISION, UPCAST, SPLIT, OUTER)
            xp_t = xp_ptr + t64 * 3 * slab + o_x
            r = _sigmoid(a_r + tl.load(xp_t, mask=m, other=0.0).to(acc_ty) + _bias(b_ih_ptr, b_hh_ptr, js, j_ok,
                                                                                    acc_ty))
            z = _sigmoid(a_z + tl.load(xp_t + H, mask=m, other=0.0).to(acc_ty)
                         + _bias(b_ih_ptr + H, b_hh_ptr + H, js, j_ok, acc_ty))
            hn = a_n + tl.load(b_hh_ptr + 2 * H + js, mask=j_ok, other=0.0).to(acc_ty)[None, :]
            xn = tl.load(xp_t + 2 * H, mask=m, other=0.0).to(acc_ty) \
                + tl.load(b_ih_ptr + 2 * H + js, mask=j_ok, other=0.0).to(acc_ty)[None, :]
            n = 2.0 * _sigmoid(2.0 * (xn + r * hn)) - 1.0  # tanh, without overflow
            o_k = row_k[:, None] + js[None, :]
            h_prev = tl.load(h_src + o_k, mask=m, other=0.0, cache_modifier=".cg").to(acc_ty)
            h_new = (n + z * (h_prev - n)).to(y_ptr.dtype.element_ty)
            tl.store(y_ptr + t64 * slab + o_h, h_new, mask=m)
            if PAD:
                tl.store(hk_ptr + (t64 % 2) * slab_k + o_k, h_new, mask=m)
            if TRAIN:
                g_t = gates_ptr + t64 * 4 * slab + row_s[:, None] + js[None, :]
                tl.store(g_t, r, mask=m)
                tl.store(g_t + H, z, mask=m)
                tl.store(g_t + 2 * H, n, mask=m)
                tl.store(g_t + 3 * H, hn, mask=m)
        if t + 1 < t_hi:  # nothing in this launch reads the last step's h
            _end_step(arrive_ptr + nb, (t - t_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)



@triton.jit(do_not_specialize=["t_lo", "t_hi", "T", "PRO"])
def gru_fwd_xchg_kernel(
    xp_ptr,  # [T, B, 3H] input projection x_t W_ih^T (no bias)
    wx_ptr,  # [P, UNITS, P, 4 UNITS] W_hh rearranged (launch.exchange_weight; a fourth gate of zeros)
    b_ih_ptr, b_hh_ptr,  # [3H] biases, compute dtype
    h0_ptr,  # [B, H] initial hidden state
    y_ptr,  # [T, B, H] out: hidden states h_t
    gates_ptr,  # out (TRAIN): [T, B, 4H] r, z, n, hn, accumulation dtype; else any tensor of that dtype
    x_ptr,  # [2, P, P, B, WS] the exchange buffer, accumulation dtype
    arrive_ptr, done_ptr,  # [NB] int32 grid-barrier counters (SYNC), zero at launch, left zero
    t_lo, t_hi, T, PRO, B, H, UNITS, P,  # as lstm_fwd_xchg_kernel's
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, KX: tl.constexpr, DG: tl.constexpr, SG: tl.constexpr,
    SYNC: tl.constexpr, TRAIN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    XR: tl.constexpr = 1, OUTER: tl.constexpr = False,
    WS: tl.constexpr = 0,  # the stored width of an exchange block (4 UNITS)
    PROBE: tl.constexpr = 0,  # timing probes only: 2 leaves the grid barrier out
):
    # gru_fwd_kernel's recurrence with h_{t-1} W_hh^T exchanged (EXCHANGE above; gates r, z, n and a fourth of zeros).
    p, nb, rows, row_ok, u_lo, js, j_ok, m = _xchg_units(B, H, UNITS, BLOCK_B, BLOCK_J)
    acc_ty = gates_ptr.dtype.element_ty
    row_h = rows * H
    row_x = rows * (3 * H)
    row_s = rows * (4 * H)
    slab = tl.cast(B, tl.int64) * H
    o_h = row_h[:, None] + js[None, :]
    o_x = row_x[:, None] + js[None, :]
    xpar = tl.cast(P, tl.int64) * P * B * WS
    b_r = _bias(b_ih_ptr, b_hh_ptr, js, j_ok, acc_ty)
    b_z = _bias(b_ih_ptr + H, b_hh_ptr + H, js, j_ok, acc_ty)
    b_hn = tl.load(b_hh_ptr + 2 * H + js, mask=j_ok, other=0.0).to(acc_ty)[None, :]
    b_in = tl.load(b_ih_ptr + 2 * H + js, mask=j_ok, other=0.0).to(acc_ty)[None, :]
    if PRO:
        _xchg_share(h0_ptr, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, (t_lo % 2) * xpar, p, rows, row_ok, P, B, WS,
                    acc_ty, BLOCK_B, BLOCK_J, KX, DG, PRECISION, UPCAST, OUTER)
        _end_step(arrive_ptr + nb, tl.num_programs(0), SYNC, PROBE)
    for t in range(_bound(t_lo), _bound(t_hi)):
        t64 = tl.cast(t, tl.int64)
        acc = _xchg_in(x_ptr, (t64 % 2) * xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, 4 * BLOCK_J, SG, XR)
        g02, g13 = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_J, 2, 2)))
        a_r, a_n = tl.split(g02)
        a_z, _ = tl.split(g13)
        xp_t = xp_ptr + t64 * 3 * slab + o_x
        r = _sigmoid(a_r + tl.load(xp_t, mask=m, other=0.0).to(acc_ty) + b_r)
        z = _sigmoid(a_z + tl.load(xp_t + H, mask=m, other=0.0).to(acc_ty) + b_z)
        hn = a_n + b_hn
        xn = tl.load(xp_t + 2 * H, mask=m, other=0.0).to(acc_ty) + b_in
        n = 2.0 * _sigmoid(2.0 * (xn + r * hn)) - 1.0  # tanh, without overflow
        h_src = tl.where(t > 0, y_ptr + (t64 - 1) * slab, h0_ptr)  # (this program's own units: its own stores)
        h_prev = tl.load(h_src + o_h, mask=m, other=0.0, cache_modifier=".cg").to(acc_ty)
        tl.store(y_ptr + t64 * slab + o_h, (n + z * (h_prev - n)).to(y_ptr.dtype.element_ty), mask=m)
        if TRAIN:
            g_t = gates_ptr + t64 * 4 * slab + row_s[:, None] + js[None, :]
            tl.store(g_t, r, mask=m)
            tl.store(g_t + H, z, mask=m)
            tl.store(g_t + 2 * H, n, mask=m)
            tl.store(g_t + 3 * H, hn, mask=m)
        if t + 1 < T:
            tl.debug_barrier()  # (every thread's stores of h_t before any reads them)
            _xchg_share(y_ptr + t64 * slab, row_h, u_lo, UNITS, H, wx_ptr, x_ptr, ((t64 + 1) % 2) * xpar, p, rows,
                        row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, KX, DG, PRECISION, UPCAST, OUTER)
        if t + 1 < t_hi:
            _end_step(arrive_ptr + nb, (t - t_lo + 1 + PRO) * tl.num_programs(0), SYNC, PROBE)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)


@triton.jit(do_not_specialize=["s_lo", "s_hi", "DO_TAIL", "T"])
def gru_bwd_xchg_kernel(
    wb_ptr,  # [P, 4 UNITS, P, UNITS] W_hh rearranged (launch.exchange_weight_bwd; a fourth gate of zeros)
    h0_ptr, y_ptr, gates_ptr, dy_ptr, dhT_ptr, carry_ptr, da_ptr, dxn_ptr, dh0_ptr,  # as gru_bwd_kernel's
    x_ptr,  # [2, P, P, B, WS] the exchange buffer (as lstm_bwd_xchg_kernel's)
    arrive_ptr, done_ptr,
    s_lo, s_hi, DO_TAIL, T, B, H, UNITS, P,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, KB: tl.constexpr, DG: tl.constexpr, SG: tl.constexpr,
    SYNC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, XR: tl.constexpr = 1,
    WS: tl.constexpr = 0,  # the stored width of an exchange block (UNITS)
    PROBE: tl.constexpr = 0,
):
    # gru_bwd_kernel's recurrence with dA_{t+1} W_hh exchanged (lstm_bwd_xchg_kernel's scheme, three gates).
    p, nb, rows, row_ok, u_lo, js, j_ok, m = _xchg_units(B, H, UNITS, BLOCK_B, BLOCK_J)
    acc_ty = gates_ptr.dtype.element_ty
    row_h = rows * H
    row_x = rows * (3 * H)
    row_s = rows * (4 * H)
    slab = tl.cast(B, tl.int64) * H
    o_h = row_h[:, None] + js[None, :]
    o_x = row_x[:, None] + js[None, :]
    kq = tl.arange(0, KB)  # phase 1's operand: column 4 u + g (g < 3) of this program's dA_t
    uq = kq // 4
    q_ok = (kq < 4 * BLOCK_J) & (kq % 4 < 3) & (uq < UNITS) & (u_lo + uq < H)
    o_q = row_x[:, None] + ((kq % 4) * H + u_lo + uq)[None, :]
    m_q = row_ok[:, None] & q_ok[None, :]
    xpar = tl.cast(P, tl.int64) * P * B * WS
    for s in range(_bound(s_lo), _bound(s_hi)):
        t = T - 1 - s
        t64 = tl.cast(t, tl.int64)
        h_src = tl.where(t > 0, y_ptr + (t64 - 1) * slab, h0_ptr)
        last = (rows * 0 + t == T - 1)[:, None]
        dh = tl.load(dy_ptr + t64 * slab + o_h, mask=m, other=0.0).to(acc_ty)
        dh += tl.load(dhT_ptr + o_h, mask=m & last, other=0.0).to(acc_ty)
        dh += tl.load(carry_ptr + o_h, mask=m, other=0.0)
        if t + 1 < T:
            dh += _xchg_in(x_ptr, (t64 % 2) * xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, SG, XR)
        g_t = gates_ptr + t64 * 4 * slab + row_s[:, None] + js[None, :]
        r = tl.load(g_t, mask=m, other=0.0)
        z = tl.load(g_t + H, mask=m, other=0.0)
        n = tl.load(g_t + 2 * H, mask=m, other=0.0)
        hn = tl.load(g_t + 3 * H, mask=m, other=0.0)
        h_prev = tl.load(h_src + o_h, mask=m, other=0.0).to(acc_ty)
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_t = da_ptr + t64 * 3 * slab + o_x
        tl.store(carry_ptr + o_h, dh * z, mask=m)
        tl.store(da_t, da_n * hn * r * (1.0 - r), mask=m)
        tl.store(da_t + H, dh * (h_prev - n) * z * (1.0 - z), mask=m)
        tl.store(da_t + 2 * H, da_n * r, mask=m)
        tl.store(dxn_ptr + t64 * slab + o_h, da_n, mask=m)
        tl.debug_barrier()  # (every thread's stores of dA_t before any reads them)
        a_own = tl.load(da_ptr + t64 * 3 * slab + o_q, mask=m_q, other=0.0, cache_modifier=".cg")
        _xchg_out(a_own, wb_ptr, x_ptr, ((t64 + 1) % 2) * xpar, p, rows, row_ok, P, B, 4 * UNITS, WS, acc_ty, BLOCK_B,
                  BLOCK_J, KB, DG, PRECISION, UPCAST)
        _end_step(arrive_ptr + nb, (s - s_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if DO_TAIL:  # dh_0 = z_0 dh_0' + dA_0 W_hh: the carry and the shares made at t = 0
        dh0 = tl.load(carry_ptr + o_h, mask=m, other=0.0)
        dh0 += _xchg_in(x_ptr, xpar, p, rows, row_ok, P, B, WS, acc_ty, BLOCK_B, BLOCK_J, SG, XR)
        tl.store(dh0_ptr + o_h, dh0.to(dh0_ptr.dtype.element_ty), mask=m)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)

@triton.jit(do_not_specialize=["s_lo", "s_hi", "DO_TAIL", "T"])
def gru_bwd_kernel(
    w_ptr,  # [3 HP, HP] recurrent weights W_hh, each gate zero-padded to [HP, HP]; OUTER or WT: [HP, 3 HP]
    h0_ptr,  # [B, H] initial hidden state, dtype of y
    y_ptr,  # [T, B, H] forward hidden states (h_{t-1} = y_{t-1})
    gates_ptr,  # [T, B, 4H] forward r, z, n, hn, accumulation dtype
    dy_ptr,  # [T, B, H] gradient of the outputs y
    dhT_ptr,  # [B, H] gradient of the final hidden state h_{T-1}
    carry_ptr,  # [B, H] accumulation dtype, zero at launch: z_t dh_t, the direct path of dh to step t - 1
    da_ptr,  # [T, B, 3H] out: gradients of the recurrent pre-activations (h W_hr, h W_hz, hn), accumulation dtype
    dxn_ptr,  # [T, B, H] out: gradient of the n gate's pre-activation (the input projection's n part)
    dak_ptr,  # PAD: [2, B, 3 HP] zeros at first, da_t in slot t % 2 (gate g at column g HP; float32, or the
    # compute dtype: launch.Plan.round_da_bwd), what the next step's matmul reads; else unused
    dh0_ptr,  # [B, H] out (DO_TAIL): gradient of h_0
    arrive_ptr,  # [NB] int32 grid-barrier arrivals per batch block (SYNC), zero at launch, left zero
    done_ptr,  # [NB] int32 programs finished per batch block (SYNC), zero at launch, left zero
    s_lo, s_hi,  # this launch runs the reverse steps s_lo <= s < s_hi, i.e. timesteps t = T - 1 - s
    DO_TAIL,  # nonzero: after the steps form dh_0 = z_0 dh_0' + dA_0 W_hh
    T, B, H, HP,  # sequence length, batch size, hidden size, H padded to a multiple of 16
    UNITS,  # hidden units owned by one program along grid axis 0
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16 for tl.dot)
    BLOCK_J: tl.constexpr,  # hidden units per tile
    BLOCK_K: tl.constexpr,  # reduction tile over H
    RESIDENT: tl.constexpr,  # must be False
    SYNC: tl.constexpr,  # grid barrier between steps (persistent path)
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee", "tf32" or "tf32x3"
    UPCAST: tl.constexpr,  # interpreter with 16-bit floats: take tl.dot operands to float32
    FUSE: tl.constexpr,  # one tl.dot per reduction tile over the three gates' rows of dA (as the forward)
    PROBE: tl.constexpr = 0,  # timing probes only: 1 no matmul, 2 no barrier, 3 neither
    SPLIT: tl.constexpr = 1,  # the reduction over H split this many ways inside the program
    PAD: tl.constexpr = False,  # HP > H: the ring (hk or dak) carries the matmul's operand; else HP = H, y or da
    OUTER: tl.constexpr = False,  # the K loops as outer products (no tl.dot); w_ptr is then W_hh^T
    WT: tl.constexpr = False,  # w_ptr is W_hh^T ([HP, NG HP]) for tl.dot too (_w_t); the launcher sets it with OUTER
):
    p = tl.program_id(0)
    nb = tl.program_id(1)
    HK = HP if PAD else H  # the row stride of what the recurrent matmul reads (W_hh, and hk / dak when PAD)
    acc_ty = gates_ptr.dtype.element_ty
    rows = nb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_h = rows * H
    row_x = rows * (3 * H)
    row_s = rows * (4 * H)
    row_k = rows * (3 * HK)  # row offsets in a slot of dak
    slab = tl.cast(B, tl.int64) * H
    slab_k = tl.cast(B, tl.int64) * (3 * HK)
    u_lo = p * UNITS
    u_hi = tl.minimum(u_lo + UNITS, H)
    for s in range(_bound(s_lo), _bound(s_hi)):
        t = T - 1 - s
        t64 = tl.cast(t, tl.int64)
        h_src = tl.where(t > 0, y_ptr + (t64 - 1) * slab, h0_ptr)  # written before this launch
        # dA_{t+1}: none after the last step
        da_next = dak_ptr + ((t64 + 1) % 2) * slab_k if PAD else da_ptr + (t64 + 1) * 3 * slab
        # Scalar conditions enter masks broadcast over a block: the interpreter mistypes a splat boolean.
        next_ok = row_ok & (rows * 0 + t + 1 < T)
        last = (rows * 0 + t == T - 1)[:, None]
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            m = row_ok[:, None] & j_ok[None, :]
            o_h = row_h[:, None] + js[None, :]
            o_x = row_x[:, None] + js[None, :]
            # dh_t = dy_t + z_{t+1} dh_{t+1} + dA_{t+1} W_hh (+ dh_T at the last step)
            dh = _dh(tl.full((BLOCK_B, BLOCK_J), 0.0, dtype=acc_ty), da_next, next_ok, row_k, w_ptr, js, j_ok, HK,
                     HK if PROBE % 2 == 0 else 0, BLOCK_K, PRECISION, UPCAST, FUSE, 3, SPLIT, OUTER, WT)
            dh += tl.load(dy_ptr + t64 * slab + o_h, mask=m, other=0.0).to(acc_ty)
            dh += tl.load(dhT_ptr + o_h, mask=m & last, other=0.0).to(acc_ty)
            dh += tl.load(carry_ptr + o_h, mask=m, other=0.0)
            g_t = gates_ptr + t64 * 4 * slab + row_s[:, None] + js[None, :]
            r = tl.load(g_t, mask=m, other=0.0)
            z = tl.load(g_t + H, mask=m, other=0.0)
            n = tl.load(g_t + 2 * H, mask=m, other=0.0)
            hn = tl.load(g_t + 3 * H, mask=m, other=0.0)
            h_prev = tl.load(h_src + o_h, mask=m, other=0.0).to(acc_ty)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            da_t = da_ptr + t64 * 3 * slab + o_x
            tl.store(carry_ptr + o_h, dh * z, mask=m)
            da_r = da_n * hn * r * (1.0 - r)
            da_z = dh * (h_prev - n) * z * (1.0 - z)
            da_hn = da_n * r
            tl.store(da_t, da_r, mask=m)
            tl.store(da_t + H, da_z, mask=m)
            tl.store(da_t + 2 * H, da_hn, mask=m)
            if PAD:
                dak_t = dak_ptr + (t64 % 2) * slab_k + row_k[:, None] + js[None, :]
                tl.store(dak_t, da_r.to(dak_ptr.dtype.element_ty), mask=m)
                tl.store(dak_t + HK, da_z.to(dak_ptr.dtype.element_ty), mask=m)
                tl.store(dak_t + 2 * HK, da_hn.to(dak_ptr.dtype.element_ty), mask=m)
            tl.store(dxn_ptr + t64 * slab + o_h, da_n, mask=m)
        _end_step(arrive_ptr + nb, (s - s_lo + 1) * tl.num_programs(0), SYNC, PROBE)
    if DO_TAIL:  # dh_0 = z_0 dh_0' + dA_0 W_hh, once every program's dA_0 is written
        for j0 in range(_bound(u_lo), _bound(u_hi), BLOCK_J):
            js = j0 + tl.arange(0, BLOCK_J)
            j_ok = js < u_hi
            m = row_ok[:, None] & j_ok[None, :]
            o_h = row_h[:, None] + js[None, :]
            dh0 = _dh(tl.load(carry_ptr + o_h, mask=m, other=0.0), dak_ptr if PAD else da_ptr, row_ok, row_k, w_ptr,
                      js, j_ok, HK, HK, BLOCK_K, PRECISION, UPCAST, FUSE, 3, SPLIT, OUTER, WT)
            tl.store(dh0_ptr + o_h, dh0.to(dh0_ptr.dtype.element_ty), mask=m)
    if SYNC:
        _leave_grid(arrive_ptr + nb, done_ptr + nb)
