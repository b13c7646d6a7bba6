"""Fused Triton LSTM cell for training (``triton_lstm``): forward and backward kernels with the time loop inside.

Layers, from the bottom: ``kernels.py`` (``@triton.jit``) -> ``launch.py`` (path, tiles,
launches) -> ``function.py`` (``torch.autograd.Function`` and :func:`lstm_layer`) -> this
module's :class:`TritonLSTM`, registered as ``triton_lstm``.  Parameters, layer stacking,
inter-layer dropout and the optional initial state come from :class:`cells.base.RecurrentStack`,
so the ``state_dict`` is that of ``torch.nn.LSTM``.  Tools beside them: ``probe.py`` (where a step's time
goes), ``tune.py`` (the tile search), ``precompile.py`` (their kernels compiled side by side before timing),
``sm90.py`` (registers and spills with no GPU), ``hostcost.py`` (host time per call), ``rehearse.py`` (the probe and
the tile search run in full with the launches mocked: what would fail on the GPU, found without one).

Design, per layer
-----------------
* Forward: ``xp = x W_ih^T`` for all T steps is one GEMM; one kernel launch then runs the whole
  recurrence (``h_{t-1} W_hh^T``, ``b_ih + b_hh`` in float32, gates, cell update), time loop inside.
* Backward: one launch walks time in reverse, carries dh and dc and stores the gate gradients ``dA_t``
  of every step; ``dx = dA W_ih``, ``dW_ih = dA^T x`` and ``dW_hh = dA^T [h_0; y_0 .. y_{T-2}]`` are
  GEMMs over all T after it and the bias gradient is one sum (no per-step read-modify-write of weight
  gradient rows, as cuDNN splits backward-data and backward-weights).
* Saved for the backward: x, h_0, c_0, the weights, y, the activated gates and the cell states of even
  steps (float32; ``launch.c_slot``); the backward recomputes those of odd steps as the forward computed them,
  ``c_t = f_t c_{t-1} + i_t g_t``, from the gates it reads anyway.  Under the stack's inter-layer dropout a layer above
  the first saves its input undropped -- the output below, which that layer saves too -- and the bool mask
  (``cells.base.LayerStack.fuses_input_dropout``).  Against saving every c_t and a dropped copy of the input, that is
  (T - 1 - ceil(T / 2)) B H values fewer per layer and T B H fewer per inner layer: at medium float32 3.5 MB of the LM
  step's saved state (1.7 + 1.8), where the H200 measured the step's peak 2.2 MB above cuDNN's (319.2 against 317.0
  MB, 2026-11-28, the tiles before the search; the peak falls in the loss's backward, when every saved tensor lives).
  Estimated without a GPU (``python -m cells.triton_lstm.hostcost --peak PRESET``: the live tensors of the LM's
  training fwd+bwd on this CUDA path with the launches mocked), this code against that run's (ea67f19): medium 133.73
  against 138.35 MiB, small 64.82 against 65.09, large the same (its peak is in the embedding's backward); so the
  H200's step peaks of 304.4 and 135.4 MiB (cuDNN's 302.3 and 135.7) should come out near 299.8 and 135.1 -- an
  estimate (no caching allocator, no optimizer), for the ``step`` benchmark to confirm.
  The backward's registers under Triton 3.6 (sm_90, the table's tiles): 216 / 196 float32 and 216 / 212 bfloat16 at
  medium / large, 4 or fewer more than before, no spills.  float32 accumulation and cell state for float32, bfloat16
  and float16; float64 stays float64 (for gradcheck).  Without autograd (``torch.no_grad()``, or no
  input that requires grad) the Function is skipped, no gates are stored and the cell state lives in
  two slabs (``c_t`` in slot ``t % 2``), so evaluation windows of 8192 steps cost y and xp only.
* Arithmetic of the recurrent matmuls (``tl.dot``, float32 accumulation): bfloat16 and float16 on the
  tensor cores (``mma.sync``: the batch block of 16 or 32 rows is below wgmma's 64); float32 as torch's
  float32 matmuls on CUDA run at the call (:func:`cells.fp32_matmul`: exact by default, ``input_precision="ieee"``,
  FMA, no tensor cores; TF32 tensor cores when torch allows TF32 in cuBLAS, as ``rnnbench train --fp32-matmul
  tf32`` does for every cell), or as the cell's ``fp32_precision`` says: "ieee", "tf32", or "tf32x3" for
  float32-accurate products on the tensor cores (Triton's three-pass TF32: each operand split into a TF32 head and
  a TF32 tail, three MMAs; untimed, the probe times it); :meth:`TritonLSTM.describe_backend`, hence every record,
  says which.  Note that cuDNN's float32 RNN uses TF32 under torch's defaults, where cuBLAS does not
  (:func:`cells.cudnn_rnn_tf32`, also in its backend string); the suite's commands set both alike.
* Paths (:mod:`.launch`): *persistent* on CUDA -- the hidden units are split over up to one program per SM, or
  ``Tile.per_sm`` (132 SMs, batch 20: 50 / 130 / 125 programs at H = 200 / 650 / 1500, from the tile table
  ``launch.TILES``, measured at medium and large), each program keeps its slice of ``W_hh`` on chip as far as it
  fits (4 x units x H values: 6 / 26 / 144 KB in bfloat16, 13 / 52 / 288 KB in float32; re-read each step from L1
  with ``evict_last``, L2 for the largest; the register-resident variant spills, see ``RESIDENT``), and the programs
  of a batch block meet at a grid barrier between steps: a release ``atomic_add`` on a counter, then spinning on
  acquire loads until it reaches ``(barriers so far) * P``. The counters (arrive, done) are allocated and zeroed
  once per device and stream; the last program to leave a launch zeroes them, so a launch needs no memset or
  allocation. The grid is no larger than the SM count (times ``per_sm``) and is launched cooperatively
  (``launch_cooperative_grid``), so all programs are resident or the launch fails -- it cannot deadlock. *blocked*:
  one program per batch block owns all of H, no grid barrier; always used by the interpreter (which runs programs
  one after another, so a grid barrier would deadlock) and the CUDA fallback. *stepwise*: the persistent split with
  one launch per step, so the interpreter can test it.
* Per call, only what depends on the data: the plan (path, tiles), the SM count, the launch options
  and the barrier counters are cached per shape, dtype and device (and stream); a layer call is the xp
  GEMM, y and c allocated, and one kernel launch (two GEMMs, a sum and the backward launch in training).
  Host time of a 2-layer, batch-1, one-step call without grad on the CUDA path with the launches
  mocked (``python -m cells.triton_lstm.hostcost``; 2 shared CPU cores under a load of 7, best of 3
  runs): 178 us, of it about 60 in Triton's own launch path, against 442 us before this design
  (ATen ops 32 -> 22, device queries 2 -> 0; kernels launched on a GPU 14 -> 6: the xp GEMM and the
  recurrence per layer, and the two stacks of the final state).  The GPU figure is the ``latency``
  micro-benchmark (``bench/bench_cells.py``).
  Training (``--train``: fwd+bwd of the 2-layer stack as the micro-benchmark runs it, batch 20, small's T 20;
  2026-11-28, the same 2 cores under a load of 3): at most 1.50 ms a call, 1.19 of it outside Triton's launch
  path, 82 ATen ops and 4 launches -- an upper bound, as the bias gradients' sums, the zeroed rings and copies run
  on the CPU there.  Since 2026-11-29 a layer returns h_T and c_T as views (of y, and of the cell-state slab where
  the dtypes agree) and asks autograd for no zero gradients of unused outputs (``set_materialize_grads(False)``: the
  LM's carried state and the benchmarks leave the final state unused; the backward makes one zeroed [2, B, H] for
  what its kernel reads): 76 ATen ops, of them 9 that launch a kernel on a GPU where there were 17 (per layer a
  clone, a copy, two zeros and a copy fewer, one zeros more), 849-868 against 921-978 us a call on the same
  machine, back to back.  On the H200 the eager fwd+bwd at small took 2.84 ms and the whole LM step as one CUDA graph
  1.87 (eager 3.84): the eager figure is partly host time; the check's ``bench-graphs`` step times fwd+bwd as one
  CUDA graph, the kernels alone.  Since late 2026-11-29 a compiled kernel launches directly after its first launch
  (:func:`.launch._launch`: Triton's compiled kernel called with the bound arguments, keyed by what Triton's
  specialization reads -- dtypes, addresses modulo 16, integers -- instead of ``JITFunction.run`` binding and
  specializing every argument in Python each time; ``RNNBENCH_TRITON_DIRECT=0`` turns it off).  The 2-layer no-grad
  call above, back to back on 2 cores under a load of 2: 92-101 us against 114-118 under Triton 3.9 and 3.6, about 10
  us a launch; ``hostcost --check-direct`` compares what every launch hands Triton's launcher both ways (both cells,
  training and not, float32, bfloat16, the exchange path), and a ``gpu`` test the results, bit for bit.  Later the
  same day the stack took each layer's state by one ``unbind`` a state tensor instead of a select a layer and tensor,
  and the backward one transposed view of dA for both weight gradients: 70 ATen ops a fwd+bwd at small (``hostcost
  --train``), the same 9 of them launching a kernel.  What an op costs on the GPU machines' host: the H200's
  ``latency`` benchmark (2026-11-28) took 0.417 ms for a no-grad call whose kernels are two one-step recurrences
  and two small GEMMs, where the same call's host work is 92-118 us here with the launches mocked (above): that
  host ran this path roughly 3x slower than this project's CPU machines, so an eager fwd+bwd at small there may
  spend as long on the host as its kernels take (``bench-graphs`` and ``bench-modes`` tell the two apart).
* Without CUDA (or with ``TRITON_INTERPRET=1``) the same kernels run in Triton's interpreter on
  CPU tensors.  ``@triton.jit`` chooses compiled or interpreted when it decorates, so
  ``kernels.py`` is loaded once per flavour (:func:`.launch.kernels`) and the choice follows the
  tensors' device, whatever the environment was when triton was imported.

Registers and spills on sm_90 (``python -m cells.triton_lstm.sm90``; no GPU)
-----------------------------------------------------------------------------
The plans of a 132-SM GPU; "fwd" at batch 20 with the gates stored, "bwd" at batch 20, "nograd" the
forward without grad at batch 1 (evaluation and latency); "s" the software-pipelining stages of the K loop.
Registers ("regs") under Triton 3.6 (what the GPU machines run) / 3.9 (CI's); spills in bytes stored / loaded under
3.6, then 3.9's where they differ; smem is Triton's scratch under 3.6 (layout conversions and, with s > 1,
the pipelined tiles), not a resident slice.  Untimed: what these cost is for the GPU.

==========  ======  ============  ======  =====  ===  ==  ========  ===========  ==========  ======
kernel      preset  arithmetic    P x u   J, K   w    s   MMA       regs         spill       smem B
==========  ======  ============  ======  =====  ===  ==  ========  ===========  ==========  ======
fwd         small   fp32 (ieee)   50x4    8,16   4    1   FMA       126 / 124    0/0         2560
bwd         small   fp32 (ieee)   50x4    8,16   4    1   FMA       72 / 56      0/0         2560
nograd      small   fp32 (ieee)   50x4    8,16   4    1   FMA       80 / 84      16/8, 0/0   1536
fwd         medium  fp32 (ieee)   130x5   8,16   4    1   FMA       126 / 124    0/0         2560
bwd         medium  fp32 (ieee)   130x5   8,16   4    1   FMA       72 / 56      0/0         2560
nograd      medium  fp32 (ieee)   130x5   8,16   4    1   FMA       80 / 84      16/8, 0/0   1536
fwd         large   fp32 (ieee)   125x12  16,16  4    1   FMA       128 / 130    0/0         3072
bwd         large   fp32 (ieee)   125x12  16,16  4    1   FMA       80 / 80      0/0         3072
nograd      large   fp32 (ieee)   125x12  16,16  4    1   FMA       96 / 96      0/0         2048
fwd         small   fp32 (tf32)   50x4    8,16   4    1   mma.sync  72 / 72      0/0, 8/8    2048
bwd         small   fp32 (tf32)   50x4    8,16   4    1   mma.sync  80 / 72      0/0         2560
nograd      small   fp32 (tf32)   50x4    8,16   4    1   mma.sync  72 / 72      16/8, 0/0   1024
fwd         medium  fp32 (tf32)   130x5   8,16   4    1   mma.sync  72 / 72      0/0, 8/8    2048
bwd         medium  fp32 (tf32)   130x5   8,16   4    1   mma.sync  80 / 72      0/0         2560
nograd      medium  fp32 (tf32)   130x5   8,16   4    1   mma.sync  72 / 72      16/8, 0/0   1024
fwd         large   fp32 (tf32)   125x12  16,16  4    1   mma.sync  128 / 128    0/0         2048
bwd         large   fp32 (tf32)   125x12  16,16  4    1   mma.sync  139 / 106    0/0         3072
nograd      large   fp32 (tf32)   125x12  16,16  4    1   mma.sync  104 / 106    0/0         1024
fwd         small   tf32x3        50x4    8,16   4    1   mma.sync  94 / 80      0/0         2048
bwd         small   tf32x3        50x4    8,16   4    1   mma.sync  80 / 79      0/0         2048
nograd      small   tf32x3        50x4    8,16   4    1   mma.sync  72 / 80      0/0         1024
fwd         medium  tf32x3        130x5   8,16   4    1   mma.sync  94 / 80      0/0         2048
bwd         medium  tf32x3        130x5   8,16   4    1   mma.sync  80 / 79      0/0         2048
nograd      medium  tf32x3        130x5   8,16   4    1   mma.sync  72 / 80      0/0         1024
fwd         large   tf32x3        125x12  16,16  4    1   mma.sync  128 / 128    0/0         2048
bwd         large   tf32x3        125x12  16,16  4    1   mma.sync  168 / 140    0/0         2048
nograd      large   tf32x3        125x12  16,16  4    1   mma.sync  128 / 96     0/0         1024
fwd         small   bf16          50x4    8,32   4    1   mma.sync  128 / 80     0/0         2048
bwd         small   bf16          50x4    8,32   4    1   mma.sync  94 / 78      0/0         4608
nograd      small   bf16          50x4    8,32   4    1   mma.sync  72 / 72      0/0         1024
fwd         medium  bf16          130x5   8,32   4    1   mma.sync  128 / 80     0/0         2048
bwd         medium  bf16          130x5   8,32   4    1   mma.sync  94 / 78      0/0         4608
nograd      medium  bf16          130x5   8,32   4    1   mma.sync  72 / 72      0/0         1024
fwd         large   bf16          125x12  16,32  4    1   mma.sync  142 / 148    0/0         2048
bwd         large   bf16          125x12  16,32  8    1   mma.sync  128 / 105    0/0         5120
nograd      large   bf16          125x12  16,32  4    1   mma.sync  128 / 128    0/0         1024
==========  ======  ============  ======  =====  ===  ==  ========  ===========  ==========  ======

The rows above are the earlier, untimed table.  Medium and large now run the tiles the H200's tile search chose
(``launch.TILES``, 2026-11-28), compiled the same way (fwd / bwd at batch 20, nograd at batch 1; registers under 3.6
/ 3.9; spill bytes stored / loaded, 3.6 then 3.9):

- medium fp32: 130 x 5, J 8, K 32, 4 / 4 warps, 3 stages, fused, rows 16: 110/114, 212/198, 72/64; no spills;
- large fp32: 125 x 12, J 16, K 16, 8 / 8 warps, 3 stages, fused, split 2, rows 16: 180/180, 192/196, 128/80; none;
- medium bf16: 130 x 5, J 8, K 64, 4 / 4 warps, 1 stage, fused: 228/158, 214/168, 128/96; the backward spills 12/20
  bytes under 3.9 only;
- large bf16: 125 x 12, J 16, K 128, 8 / 8 warps, 1 stage, fused, rows 16: 94/96, 211/206, 62/64; none.

"tf32x3" is float32 in three TF32 tensor-core products per multiply (``fp32_precision="tf32x3"``); with a K tile of
32 the forward takes 128 / 255 registers at medium / large (3.6) without spills; with 64 the medium backward and
both large kernels spill.

The reduction split inside a program (``split_k``, kernels' ``SPLIT``; untimed, the probe and the tile search try
it), registers 3.6 / 3.9 at the table's tiles, batch 20, with 4 warps a way.  Exact float32, a dot per gate: split 4
(16 warps) forward 128 / 128 at medium and 128 / 127 at large, backward 82 / 78 and 100 / 90; split 2 (8 warps)
forward 128 / 180 and 128 / 128, backward 64 / 60 and 112 / 108; no spills.  One dot for the four gates, split 4:
forward 78 / 64 and 124 / 96, backward 106 / 64 and 120 / 60, up to 48 KB of shared memory (large backward), no
spills but 8 bytes (3.9, medium backward).  In the PTX of 3.6 the split float32 forward has the unsplit one's FMAs
per thread (129 against 130 at medium): the batch of the dot is spread over the warps.  bfloat16 and tf32x3 under
3.6 are not: split 2 takes up to twice the registers (bfloat16 medium forward 210 against 128) and twice the MMAs
per thread, split 4 spills 20-1436 bytes; under 3.9 they stay at 64-128 registers (at most 32 bytes of spill).  So
on the GPU machines (3.6) the split is for exact float32 first.

Rows padded to a multiple of 16 (``row_align=16``; untimed, the probe and the tile search try it), 3.6 at the
table's tiles, medium / large.  The bfloat16 forward pipelines only padded: with three stages 15 ``cp.async`` and 27
CTA barriers against none and 33 unpadded.  The backward's async copies become vector copies (medium: 48 against 192
in bfloat16, 48 against 120 in float32).  With one stage the loads are fewer (bfloat16 medium forward 33 global
loads against 44, backward 52, 16 of them vector, against 100).  Registers with one stage: bfloat16 forward 72 and 128
(16 bytes of spill) against 128 and 142, backward 96 (8 bytes of spill) and 204 against 94 and 128; float32 forward
128 and 150 against 126 and 128, backward 64 (4 bytes of spill) and 96 against 72 and 80.

The table was recompiled on 2026-11-28 with ``PROBE``, ``SPLIT`` and ``PAD`` as compile-time constants, as a launch
has them; until then :mod:`.sm90` compiled ``PROBE`` as a runtime argument (its branches left in), so the earlier
table was of slightly different code (e.g. the bfloat16 forward at small and medium: 128 registers under 3.6, not
96; the float32 forward without grad at small and medium spills 16 bytes under 3.6, where the old table had none).

Before dW_hh left the recurrence (same tiles, K 32), the backward took 96 / 96 / 193 registers in
TF32 and 106 / 106 / 182 in bfloat16 at small / medium / large, with 9-14 KB of smem; and the float32
forward, then TF32 by default (it followed cuDNN's TF32 flag), 96 / 96 / 140 with a 4-byte spill at
small and medium.  A K tile of 32 in exact float32 spills (255 registers, 40 bytes at large).

What the PTX says of the K loop (no GPU; 2026-11-27). One reduction tile of the float32 forward at medium (Triton
3.9, one stage) is 8 scalar global loads (h_{t-1} from L2, the W_hh slice from L1), 56 shared-memory loads and
stores and 8 CTA barriers (tl.dot's FMA operand layouts go through shared memory), and 128 FMAs per thread; a
step walks 41 such tiles at medium and 94 at large, each waiting on its own loads. That fits a latency-bound
step: the H200's forward at medium took 48 us per layer-step (3.40 ms for 70), about 1.2 us a tile. With two or
three stages Triton pipelines the float32 tiles through shared memory (``cp.async``; the medium forward then has
10-11 CTA barriers in all instead of 16, the backward 12-14 instead of 23, both Triton versions); it does not
pipeline the bfloat16 forward (the same code at 1-3 stages), only its backward. One tl.dot for the four gates per
tile (``launch.Tile.fuse_gates``; untimed, so not the default) instead of one per gate takes the same loads and
FMAs with fewer layout conversions: under Triton 3.6 the float32 kernels at medium have 9 / 11 CTA barriers
(forward / backward) instead of 15 / 23, the bfloat16 ones 13 / 51 instead of 33 / 63. Which of these pays is for
the probe (:mod:`.probe`: each kernel timed whole, without its matmul, without its grid barrier, and pipelined)
and the tile search (:mod:`.tune`: fused or not, stages, tiles) on the GPU. Rejected from the PTX alone: the
recurrent matmul as broadcast products summed over K (``sum(h[:, :, None] * w[None], 1)``) -- Triton rewrites it
into the same tl.dot where all three sizes are at least 16 (identical PTX at large), and with a unit tile of 8
(small, medium) it emitted 90 CTA barriers and 512 warp shuffles in the forward against tl.dot's 16 and 0.

Outer products instead of tl.dot (``launch.Tile.outer`` for the forward, ``outer_bwd`` for the backward; kernels'
``OUTER``; untimed, so in no table entry: the probe's ``outer-products`` variant and the tile search try them, exact
float32 only).  Not the rejected broadcast sum above: the products of a tile go into a [B, N, K] accumulator and the
sum over k is taken once after the loop, so Triton has no dot to rewrite.  The table's tiles with both flags, K 16 /
K 8 (the search lowers K to 16 when it turns them on), compiled for sm_90, batch 20 (nograd: 1); registers under
3.6 / 3.9, spill bytes stored / loaded under 3.6:

- LSTM small (4 warps): K 16 193/191, 80/80, 96/96, none; K 8 114/114, 64/56, 64/63;
- LSTM medium (4 warps, fused, rows 16): K 16 225/223, 80/84, 121/121; K 8 164/211, 66/72, 80/92; none;
- LSTM large (8 warps, fused, rows 16): K 16 231/231, 110/106, 119/121; K 8 185/185, 78/78, 198/195; none (with 4
  warps the K 16 forward spills 820/640);
- GRU small (4 warps): K 16 214/216, 96/96, 80/80, the nograd spilling 12/12; K 8 95/95, 56/56, 51/51;
- GRU medium (4 warps, rows 16): K 16 220/168, 80/84, 80/80; K 8 96/96, 80/64, 56/56; none;
- GRU large (8 warps): K 16 212/208, 80/77, 80/80; K 8 97/96, 61/60, 92/93; none.

Shared-memory instructions (``ld.shared`` and ``ldmatrix``, whole kernel) per FMA, Triton 3.6, forward / backward:
K 16 at the table's warps, against the table's tl.dot tile: LSTM medium 0.12 / 0.30 against 0.46 / 0.38, large
0.31 / 0.69 against 0.55 / 0.63; GRU large 0.13 / 0.32 against 0.58 / 0.53.  So the forward's shared-memory
instructions drop 2-4x, the backward's less or, for the large LSTM, not at all (its N is the unit tile, 8-16 wide,
against the forward's gates x units): hence the two flags.  Outer products need 2-3 times tl.dot's CTA barriers
per tile (the operands' layout conversions) and their registers grow with the accumulator; whether fewer
shared-memory round trips pay for that is for the GPU.

Outer products with no shared memory at all (2026-11-28, :func:`.sm90.kloop` on each kernel, Triton 3.6, sm_90,
batch 20, the table's units and rows; untimed: the tile search and the probe try them, ``tune.OUTER_NO_SHARED``).
With a K tile of 4 or 2 and 8 warps each operand tile ([32, K] of h_{t-1} or dA, [N, K] of W_hh) has fewer elements
than the CTA has threads, so Triton loads it straight into the outer-product accumulator's layout instead of through
shared memory: the K loop has no shared-memory instruction and no CTA barrier (K 16 with 4 warps: 128-160 bytes of
shared loads and 2-10 barriers a trip; 4 warps at K 4 still 64-512 bytes).  Such a loop is a chain of exposed L2
latencies (the .cg loads of h_{t-1} or dA), one a trip, so a trip unrolls ``split_k`` K tiles (kernels' ``SPLIT``
means this with ``OUTER``): in the SASS most of a trip's 96 loads go out before its first FMA (76 at large, the
LSTM's forward).  The whole trips run without a mask along k and one part trip with it (masking every load cost 10-27 %
more instructions a trip).  A trip of K 4 x 8, 8 warps, a dot per gate, forward / backward: LSTM small 352 / 150
instructions for 128 / 32 FMAs, medium 353 / 157,
large 555 / 264 for 256 / 64; registers 246 / 163, 233 / 163, 255 / 242; no spills.  K 2 x 8: 253 / 105, 258 / 100,
352 / 145 instructions for half the FMAs, 80-238 registers, the small forward spilling 56 bytes.  The four gates in
one accumulator (``fuse_gates``) spill at K 4 (56-312 bytes), so the search's candidates keep one per gate.  The GRU
alike (K 4: forward 283 / 284 / 458 instructions for 96 / 96 / 192 FMAs, 167-248 registers, no spills).  So a step at
large walks 47 trips of 32 (each one exposed latency and ~1,100 issue cycles of 8 warps) where the table's tile walks
47 of 2 x 16 with shared-memory round trips (its measured forward: 131 us a layer-step); whether that pays, and
whether the backward's smaller per-thread tiles (a quarter of the forward's FMAs per instruction) do, is for the GPU.
Longer trips shorten the chain further (late 2026-11-28, same compiler; registers, spill bytes, one trip's
instructions / FMAs): 64 k a trip -- K 4 x 16 or K 2 x 32, 8 warps -- compiles without spills in every LSTM kernel at
every preset but the large forward at K 4 x 16 (16 bytes; K 2 x 16 there: 254 registers, none): forward small 252 /
659 / 256 and 255 / 930 / 256 (K 2 x 32), medium 254 / 658 / 256, backward 248 / 259 / 64 (small), 240 / 258 / 64
(medium), 255 / 454 / 128 (large).  At small that is 4 trips for the forward's 200 k instead of 7.  The backward,
whose accumulator is a quarter of the forward's, takes 128 k a trip (K 4 x 32) without spills at small and medium
(221 and 220 registers, 531 / 128 a trip: 7 trips for the 800 rows of dA at small instead of 25 at K 4 x 8), not at
large (256 bytes); the forward at 128 k spills at every preset (36-472 bytes).  The GRU alike: K 4 x 16 forward 241 /
238 / 255 registers at small / medium / large (the large one spilling 16 bytes; K 2 x 16 there: 233, none), 524 / 524
/ 841 instructions a trip, backward 254-255 registers, no spills; its backward at 128 k a trip 228 registers, no
spills at small and medium.  So the search's outer ``split_k`` goes to 16 (the backward's to 32) and
``tune.OUTER_NO_SHARED`` holds K 4 x 16 and K 2 x 16 as well.

More programs than SMs (``launch.Tile.per_sm``; 2026-11-29, untimed: the tile search's ``units`` field tries grids of
up to 4, 2, 1 and 1/2 programs an SM).  Every measured entry runs one program an SM, 4 warps (8 at large), so each SM
scheduler has one warp -- the warp the H200's Nsight run found stalled 9.7 of every 13.2 cycles -- and a program's
step is a chain of its own latencies.  Its programs are also padded: 5 units in a tile of 8 at medium, 12 in 16 at
large.  Narrower programs, side by side on an SM, each with its own warps and CTA barriers, overlap those chains
(the tile search measured the converse: half the programs, twice the units each, took the medium forward from 3.35 to
7.93 ms).  The cooperative launch refuses a grid whose programs cannot all be resident, so whether a candidate fits
is the compiled kernel's registers and shared memory (:func:`.sm90.programs_per_sm`, Hopper's occupancy arithmetic).
Compiled for sm_90 (Triton 3.6, batch 20, the table's tiles with the search's candidate units, and for several an SM
at most 4 warps and the reduction unsplit, ``tune.narrow_fields``; registers forward / backward, programs an SM that
fit; "ok" when both kernels hold the grid's):

- LSTM small, 200 x 1 unit (2 an SM), J 4: float32 72 / 56, 7 / 9; bfloat16 80 / 80, 6 / 6: ok;
- LSTM medium, 217 x 3 (2 an SM), J 4: float32 72 / 168, 7 / 3; bfloat16 128 / 208, 4 / 2: ok; 325 x 2 (3 an SM),
  J 2: float32 64 (8 bytes spilled) / 118, 8 / 4: ok; bfloat16 127 / 228, 4 / 2: refused;
- LSTM large, 250 x 6 (2 an SM), J 8: float32 80 (8 bytes spilled) / 120, 6 / 4; bfloat16 94 / 255, 5 / 2: ok (with
  the table's 8 warps the bfloat16 backward held 1); 500 x 3 (4 an SM): float32 62 / 158, 8 / 3, bfloat16 64 / 255,
  8 / 2: refused;
- GRU small 200 x 1: 64 / 64 float32, 92 / 96 bfloat16, 5-8 an SM: ok; medium 217 x 3 and 325 x 2: float32 62 / 64,
  8 / 8: ok; bfloat16 128 / 255, 4 / 2: 2 an SM ok; large 250 x 6: float32 110 / 128, 4 / 4; bfloat16 241 / 255,
  2 / 2 (no spill, where the table's entry spills 816 bytes): ok; 500 x 3: refused.

So every grid of 2 an SM is resident, and of 3 an SM the float32 ones at medium; the others are refused at their
first launch (a failed candidate in the search's record, :func:`.launch._launch`'s one line).  Each narrow program's
chain is shorter: one trip of the K loop (``--kloop``, 4 warps, one dot for the gates; instructions / FFMA per
thread, forward then backward) at medium, 217 x 3 in tiles of 4, K 32: 207 / 128 and 298 / 128, against the
table's 130 x 5 (tiles of 8): 355 / 256 and 486 / 256; at large, 250 x 6 in tiles of 8, K 16: 192 / 128 and 257 /
128, against the table's (8 warps, split 2) 329 / 256 and 449 / 256.  With 2 warps or 1 the trips grow to 339-681
instructions (medium's backward spilling): 4 warps it is.  Smaller unit tiles come
with them: a dot per gate 4 wide, one for the gates 2 x 4 wide, which Triton 3.6 compiles for sm_90 in exact float32,
TF32 and bfloat16 (padding what the MMA needs).

The recurrent matmuls as an exchange of shares instead of a K loop (``launch.Tile.exchange`` for the forward,
``exchange_bwd`` for the backward; the kernels' EXCHANGE notes; 2026-11-29, untimed: the tile search's ``exchange`` and
``exchange_bwd`` fields and the probe's ``exchange`` variants try them). What every measurement so far says (the H200's
probe: the K loop is 94-99 % of a step, the grid barrier about 2.5 us; the tile search: a step's time grows with its
chain of dependent K trips, not with its bytes -- K tiles of 16 to 64 at large all took 9.1-9.3 ms) is that the step
waits on that chain: 21-94 trips a step, each a load, a round of shared-memory shuffles and a barrier. The exchange has
none. Program p owns units [p U, p U + U) and so the rank-U share h_t[:, own] W_hh[:, own]^T of every program's next
pre-activations; it writes those shares into an exchange buffer (phase 1: P / DG independent dots of depth max(16, U)),
the grid barrier, then it sums the P shares of its own gate columns (phase 2: P / SG independent loads of a contiguous
block) -- h_t itself never leaves the program. The backward does the same with dA_t's own gate columns and W_hh's own
rows (shares of dh_{t-1}, a quarter the forward's width). The same one barrier a step (the buffer alternates by parity);
per step and program phase 1 writes and phase 2 reads B x 4H values in the forward (B x H in the backward), 208 KB at
medium and 480 KB at large in float32, so the L2 carries P x 0.4-1 MB a step instead of P reads of h_{t-1}, and W_hh
arrives rearranged per launch so a program's slice is one contiguous slab (``launch.exchange_weight``,
``exchange_weight_bwd``), compact since 2026-11-29: only a program's U real rows and each destination's 4 U real columns
are stored, the dot's padding (depth to 16, units to the tile's power of two) is masked in the loads, so a step's phase
1 reads 4 U H values a program -- at medium with 5 units 52 KB in float32, where the padded slab was 266 KB (16 x 130 x
32 values), more than an SM's L1 holds -- and the copy is W_hh's own size. The cost is moved, not removed: phase 1 is
the step's FMAs (padded: U to 16 and B 20 to 32), at 4 warps about 10.4 K FFMA a thread at medium with 16 units a
program -- an issue bound near 5 us a step where the K loop measured 32-40 us -- and the exchange buffer, 2 x P x P x B
x 4 U values of the accumulation dtype a layer call (the backward's a quarter of it; stored U wide, not the unit tile's
power of two), float32 at batch 20: small 6.4 MB (50 x 4 units) or 3.2 (25 x 8); medium 54 MB (130 x 5), 34 (82 x 8), 17
(41 x 16), 9 (21 x 32); large 120 MB (125 x 12), 90 (94 x 16), 45 (47 x 32); and W_hh's rearranged copy a launch (its
own size, 6.8 MB at medium in float32; it was P x max(16, U_pad) x P x 4 U_pad values, 35 MB at 5 units). Transient, but
inside the training step's peak (cuDNN's step: 302 MiB at medium, 843 at large), so the exchange pays in memory with few
units a program: the micro-benchmarks' step peak memory of a search's winner (``bench-tuned``) says whether it keeps the
memory target. Compiled for sm_90 (Triton 3.6, batch 20, 4 warps unless said; registers forward / backward, programs an
SM; one phase-1 dot's instructions / FFMA): small 50 x 4 units 168 / 168 (8 bytes spilled), 3 / 3 an SM; medium 130 x 5
180 / 243, 2 / 2, 82 x 8 168 / 214, 3 / 2, 41 x 16 220 / 237, 2 / 2; large 125 x 12 188 / 231, 2 / 2, 94 x 16 (8 warps)
170 / 128 (24 bytes spilled), 1 / 2; bfloat16 41 x 16 and 94 x 16 254 / 238 (mma.sync), 2 / 2; a forward dot 667 / 512
at 4 warps, 350 / 256 at 8. Phase 2's loads and phase 1's dots are sized so that nothing spills
(``launch.EXCHANGE_COLUMNS``, ``EXCHANGE_ELEMENTS``: twice the elements a load spilled 32-192 bytes); phase 2 issues two
loads a trip (``EXCHANGE_LOADS``: its loop has 16 vector loads, 96 FADD and no CTA barrier a trip at medium, so a trip
is one L2 round trip). Phase 1 pads its depth to 16 for tl.dot; in exact float32 it can instead be outer products over
the program's own units (``outer`` with ``exchange``, kernels' ``_xchg_out_fma``), which with 8 warps read no shared
memory and cross no CTA barrier: one trip (DG destinations) 309 instructions for 128 FFMA at medium with 8 units a
program, so 6.5 K instructions a thread a step (82 programs) against 14 K for the dot at 16 units (41 programs); with 4
warps it spills and shuffles (1,114 for 256). Whichever pays is for the GPU: the issue bounds above are 5-7 us a step at
medium against the 32-40 us measured. The GRU has the same two kernels (``gru_fwd_xchg_kernel``,
``gru_bwd_xchg_kernel``: gates r, z, n and a fourth of zeros in the shares; the n gate's W_hn h stays its own column, as
the K-loop kernels keep it): forward / backward registers at medium 167 / 246 (130 x 5), 198 / 252 (41 x 16), at large
198 / 249 (125 x 12), 127 / 147 (94 x 16, 8 warps), bfloat16 238 / 242 (16 units); spills only in the small backward (12
bytes). With the compact W_hh slabs (2026-11-29; same shapes, Triton 3.6): registers forward / backward LSTM small 168 /
168 (12 bytes spilled), medium 130 x 5 180 / 255, 82 x 8 168 / 214, 41 x 16 222 / 233, large 125 x 12 187 / 233, 94 x 16
(8 warps) 170 / 140 (no spill now), 47 x 32 (8 warps) 161 / 206; GRU medium 130 x 5 163 / 255 (4 bytes), 41 x 16 196 /
252, large 125 x 12 188 / 249, 94 x 16 125 / 146; bfloat16 at 16 units 254 / 240 (LSTM medium), 127 / 203 (large); phase
1's loop 0.3-4 % more instructions (678 against 674 at medium, 5 units), its W_hh loads still 128 bits wide, and a fifth
of the bytes where the units are not a power of two of at least 16.

What to read in the exchange's first GPU figures, and the step after them (arithmetic, untimed).  A forward step
moves P x B x 4H shares through memory twice (written in phase 1, read in phase 2): 2 x 27 MB at medium with 130
programs, 2 x 60 MB at large with 125, float32 -- and the buffer holds two parities, 54 and 120 MB, against the
H100's 50 MB of L2, so at large the shares go to HBM and back (~25 us a step at ~4.8 TB/s) where phase 1's FMAs,
padded, are ~12 us and the grid barrier ~2.5.  With fewer, wider programs (the search's 16 and 32 units) the traffic
and the buffer shrink with P (large, 47 x 32: 45 MB) and phase 1 grows with U.  So if the probe's ``exchange`` step
time follows P rather than phase 1's work, the traffic binds, and the next step is a grouped exchange: programs in
groups of g share their h_t (a second, group-local barrier), each forms the share of its group's g U units for 1/g of
the destinations (phase 1's depth g U), and a destination sums P / g shares -- traffic and buffer divided by g at the
cost of one small barrier a step (g = 1 is this exchange; g = P, one group of all, the K loop).  If instead the step
follows phase 1's FMAs, it is the padding (B 20 to 32, U to 16) that costs, and the outer-product phase 1
(``outer``) is the answer the search already tries.

Not built: the layers as a wavefront (the issue's last direction: layer 2 at step t while layer 1 runs step t + 1, in
one launch).  It halves the chain's grid barriers (2T to T + 1 a layer pair) and overlaps the two layers' K loops on
disjoint programs.  What the H200 measured says it cannot pay while the K loop binds: the barrier is about 2.5 us of a
step whose K loop is 94-99 % (the probe, medium and large), so the barriers saved are ~2.5 us x T; the overlap needs
each layer on half the SMs, and half the programs with twice the units each took the medium forward from 3.35 to 7.93
ms (the tile search, 2.4x), so the two overlapped layers would take about 1.2x the two in sequence; and layer 2's input
projection (y1_t W_ih2, one GEMM over all T today) would join its chain, doubling its K loop.  It is the next step only
if the K loop stops binding (an exchange or the narrow programs win, and the barrier's share of a step grows), and
then with two programs an SM, one of each layer (``Tile.per_sm``), rather than half the SMs each.

The backward's own K loop (``launch.BWD_FIELDS``: ``block_k_bwd``, ``num_stages_bwd``, ``split_k_bwd``,
``fuse_gates_bwd``; None follows the forward, as every table entry does so far; untimed, the tile search tries them).
The backward reduces over the gates' 4H rows of dA into the units' columns, the forward over H into gates x units
columns, and the H200's probe (medium, float32) found them wanting different things: 3 stages took the forward to 0.79
of its time and the backward to 0.51, a 4-way split 2.56 and 0.64.  Backward kernels compiled for sm_90 under Triton
3.6, batch 20, registers and spill bytes stored / loaded, from the table's entries with one field changed:

- LSTM medium float32 (K 32, 3 stages, fused, 4 warps): 212, none, 40 KB of smem; 2 stages 164; 4 stages 255 and
  72/104; split 2 (8 warps) 212, none, 80 KB; split 4 (16 warps) 100/108; K 16 with 4 stages 162, none;
- LSTM medium bfloat16 (K 64, 1 stage, fused): 214, none; 2-4 stages at K 64 spill 864-3740 bytes, at K 32 204 (2)
  and 748 (3); split 2 (8 warps) 199, none;
- LSTM large float32 (K 16, 3 stages, split 2, 8 warps): 192, none; 2 and 4 stages 184, none; split 4 4/4;
- LSTM large bfloat16 (K 128, 1 stage, fused, 8 warps): 211, none; 2-4 stages at K 128 spill 792-3560 bytes; K 64
  122, none; K 32 with 2 / 3 stages 218 / 231, none; K 64 split 2 250, none;
- GRU medium float32 (K 16, 3 stages): 111, none; split 2 4/4; bfloat16 (K 64, split 2, 8 warps): 234, none; 2-4
  stages 364-648 bytes;
- GRU large float32 (K 16, 3 stages, split 2, 8 warps): **255 and 40/56 -- the measured entry's backward spills**;
  unsplit 118, none; 2 stages 202, none.  bfloat16 (K 64, split 2, 4 warps): **255 and 816/844**; unsplit 255 (4
  warps) or 250 (8), none; unsplit at K 32 156, none.

Deeper pipelines want smaller K tiles, so the search varies the backward's stages and K tile together
(``stages_k_bwd`` in :mod:`.tune`).

One trip of the K loop in SASS (``python -m cells.triton_lstm.sm90 --kloop``, :func:`.sm90.kloop`; Triton 3.6, the
table's tiles, batch 20; per thread: instructions, multiply-adds -- FFMA, or MMA instructions -- and bytes read from
shared memory).  Exact float32 at medium / large: forward 355 / 329 instructions for 256 FFMA, reading 780 / 524 bytes
(1.3 / 2.0 FMA per float read); backward 486 / 449 for 256, 1548 / 1036 bytes (0.7 / 1.0).  So the FMA tl.dot takes
every operand from shared memory, at 2 FMA per float at best, whatever the split and warps (split 4 or 8, 4 or 8
warps: 1.95-1.99 in the large forward), i.e. at most half the FMA units' rate from shared memory's bandwidth; and
the issue bound of the large forward's K loop (47 trips of 329 instructions x 8 warps over 4 schedulers) is about
16 us a layer-step at 1.98 GHz against the 131 us the tile search measured (9.17 ms for 70): the step waits, it does
not compute -- the H200's Nsight run of the earlier tile said the same (1 warp per scheduler, 9.7 of every 13.2
cycles stalled on shared memory).  bfloat16: forward 219 / 92 instructions for 8 / 16 MMAs, backward 753 / 1093 for
32 / 64: the backward's trip is 3-12 times the forward's per MMA.  Its W_hh tile, [gate rows, units], is contiguous
along a program's units, which start at p x UNITS (5 or 12 units: not 16-byte aligned), so it is read with scalar
loads (32 two-byte ``LDG`` and 32 ``STS`` a trip at large) and multiplied in TF32 (dA is float32: ``_dot``).

``transposed_bwd`` (kernels' ``WT``; untimed, the tile search tries it): the backward's tl.dot reads a transposed
copy of W_hh ([HP, NG HP], made per launch, as for ``outer_bwd``), whose tiles are contiguous along the gate rows,
which start at multiples of the tile: vector loads (4 ``LDG.128`` a trip at large bfloat16).  Backward kernels at the
table's tiles, registers, spill bytes and one K trip (instructions / multiply-adds), without -> with it:

- LSTM float32: small 72, 288/128 -> 48, 286/128; medium 212, 486/256 -> 128, 447/256; large 192, 449/256 -> 156,
  388/256; bfloat16: small 94, 408/16 -> 96, 395/16; medium 214, 753/32 -> 222, 725/32; large 211, 1093/64 -> 178,
  816/64; no spills;
- GRU float32: small 72 -> 80; medium 111 -> 72; large **255 and 40/56 -> 208, none**, 381/192 -> 344/192;
  bfloat16: small 147 -> 126; medium 234 -> 255 and 20/24 spilled (790/48 -> 837/48); large 255 and 816/844 ->
  1076/1092 spilled.

``round_da_bwd`` (16-bit dtypes; untimed, the tile search and the probe's ``da16-bwd`` try it): the backward's
recurrent matmul reads dA_{t+1} rounded to the compute dtype from a ring of that dtype, in one bfloat16 MMA
(m16n8k16) instead of float32 dA against widened weights in TF32 (two m16n8k8).  dA itself -- what dW_hh, dW_ih, the
bias and the input's gradient are made of -- stays float32; dh carries one more bfloat16 rounding per step, within
the bfloat16 tests' bound (twice torch's own bfloat16 error against float64).  Backward kernels at the table's
bfloat16 tiles, registers, spill bytes, one K trip (instructions / MMAs): as measured -> ``round_da_bwd`` ->
with ``transposed_bwd`` too:

- LSTM small 94, 408/16 -> 112, 279/8 -> 109, 275/8; medium 214, 753/32 -> 255, 528/16 -> 255, 495/16; large 211,
  1093/64 -> 127, 490/32 -> **128, 215/32**; no spills;
- GRU small 147, 309/12 -> 154, 236/6 -> 127, 222/6; medium 234, 790/48 -> 255 and 12/16, 555/24 -> 255, none,
  551/24; large (split 2, 4 warps) 255 and 816/844, 1839/96 -> 712/756, 1296/48 -> 936/1012, 1264/48.

Without the flags the kernels are the same SASS as before them (every table entry's backward, both cells and
dtypes).

Work and traffic per training step (PTB presets: 2 layers, embedding = H, vocab V = 10,000, B = 20)
----------------------------------------------------------------------------------------------------
FLOPs = tokens x (48 L H^2 + 6 H V) (LSTM matmuls and the decoder, forward + backward); the fewest
bytes = every dense parameter (LSTM and decoder; the embedding is touched only at B T rows) read
once and its SGD update written once, float32 (bfloat16: half); activations add < 10 MB.  Floors
on an H100 SXM (989 TFLOP/s bf16 dense, 495 TF32, 3.35 TB/s HBM3):

======  ====  ==  ======  ==========  =========  =======================  ============  ========
preset  H     T   tokens  FLOP/step   LSTM part  bytes/step (fp32/bf16)   FLOP floor    chain
======  ====  ==  ======  ==========  =========  =======================  ============  ========
small   200   20  400     6.34 G      24 %       21.2 MB / 10.6 MB        6 us (bf16)   80 steps
medium  650   35  700     55.7 G      51 %       106 MB / 53 MB           56 us (bf16)  140 steps
large   1500  35  700     214 G       71 %       408 MB / 204 MB          217 us (bf16) 140 steps
======  ====  ==  ======  ==========  =========  =======================  ============  ========

The byte floor (6 / 32 / 122 us in float32) is at or below the FLOP floor at every preset, so the
arithmetic floor is 6 / 56 / 217 us per step (62 M / 12.4 M / 3.2 M words/s), twice that in TF32.
Neither binds at batch 20: the recurrence is a chain of 2 T L dependent steps ("chain") of tiny
matmuls (20 x H x 4H), so its floor is latency -- chain length x the cost of one step.  cuDNN's
standard algorithm pays two kernel launches per step (GEMM + pointwise, several us each); this design pays one grid
barrier (an L2 atomic round trip, about 1 us) plus one L2 read of h_{t-1} (B x H) per program per
step, reads W_hh from HBM once per layer and direction, and keeps the GEMMs that are not on the
chain (input projection, dx, dW_ih, decoder) large, where they run near the FLOP floor.
"""

from __future__ import annotations

import os

import torch

from cells import fp32_matmul
from cells.base import InputDrop, RecurrentStack

try:
    import triton
except ImportError as exc:  # the cell reports it through available()
    triton = None
    _TRITON_ERROR: ImportError | None = exc
else:
    _TRITON_ERROR = None

PATHS = ("auto", "persistent", "blocked", "stepwise")  # see launch.py
# tl.dot input precision of float32 recurrent matmuls on CUDA: exact FMA, TF32 tensor cores, or three TF32 products
# per multiply (each operand split into a TF32 high part and a TF32 remainder; about float32's accuracy)
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")
FP32_ARITHMETIC = {"ieee": "exact float32 (ieee)", "tf32": "TF32 tensor cores",
                   "tf32x3": "float32 as three TF32 tensor-core products (tf32x3)"}  # in the backend string


def interpreted(device: str | torch.device | None = None) -> bool:
    """Whether the kernels run in Triton's interpreter on ``device`` (default: cuda if present, else cpu)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.disable
def _outside_the_graph(fn, *args):
    return fn(*args)


def between_graphs(fn, *args):
    """``fn(*args)``; under ``torch.compile`` (``rnnbench train --step compile``) as a graph break, so that a layer's
    kernels launch between the compiled graphs as they do eagerly: Dynamo would otherwise trace into the launch path
    (into Triton's NumPy interpreter on the CPU, where it fails).  The run's record counts the breaks
    (``graph_breaks``)."""
    return _outside_the_graph(fn, *args) if torch.compiler.is_compiling() else fn(*args)


class TritonLSTM(RecurrentStack):
    """Multi-layer LSTM on the fused Triton kernels; see :mod:`cells` for the interface.

    Args:
        input_size, hidden_size, num_layers, dropout: as ``torch.nn.LSTM``.
        path: "auto" (persistent on CUDA when it fits the SMs, else blocked), "persistent", "blocked"
            or "stepwise"; see :mod:`.launch`.
        units: hidden units per program on the persistent and stepwise paths (default: chosen for the GPU).
        fp32_precision: the recurrent matmuls of float32 input on CUDA: None (the default) as torch's float32
            matmuls run at the call (:func:`cells.fp32_matmul`: "ieee" unless TF32 is allowed in cuBLAS),
            "ieee" (exact float32 products), "tf32" (tensor cores, 10-bit mantissas, as cuDNN's float32 RNN when
            torch allows TF32) or
            "tf32x3" (tensor cores, three TF32 products per multiply: a_hi b_hi + a_hi b_lo + a_lo b_hi, with
            about float32's accuracy).
            The backend description says which ran.  bfloat16 and float16 always use the tensor cores with
            float32 accumulation; the interpreter always multiplies exactly.
    """

    mode = "LSTM"
    cell_name = "triton_lstm"
    fuses_input_dropout = True  # the inter-layer dropout inside the layer above: x and the mask saved, not x dropped
    compile_breaks = "each layer's kernels between the graphs"  # under torch.compile (between_graphs): the records say
    interpreted_training_ok = False  # the training harness sets it on --allow-interpreter
    jit_kernels = True  # Triton compiles them per shape at first use: bench compiles them side by side first

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 path: str = "auto", units: int | None = None, fp32_precision: str | None = None):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if fp32_precision is not None and fp32_precision not in FP32_PRECISIONS:
            raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
        self.path, self.units, self.fp32_precision = path, units, fp32_precision

    @classmethod
    def available(cls, device: str | torch.device) -> str | None:
        """None when the cell can run on ``device``, else the reason."""
        device = torch.device(device)
        if triton is None:
            return f"triton is not importable: {_TRITON_ERROR}"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available on this machine"
            if torch.cuda.get_device_capability(device) < (8, 0):
                return "the compiled kernels need a GPU of compute capability 8.0 or newer"
            return None
        if device.type == "cpu":
            return None
        return f"runs compiled on CUDA or in Triton's interpreter on the CPU, not on {device.type}"

    @classmethod
    def training_refusal(cls, device: str | torch.device) -> str | None:
        """A one-line reason to refuse training on ``device`` (the interpreter), or None."""
        if interpreted(device) and not cls.interpreted_training_ok:
            return (f"{cls.cell_name} would run in Triton's interpreter (no CUDA device, or TRITON_INTERPRET=1), "
                    "hundreds of times slower; pass --allow-interpreter to train anyway")
        return None

    def describe_backend(self, device: str | torch.device, batch: int = 20, dtype: torch.dtype | None = None) -> str:
        """Which Triton runs the kernels and how, with the arithmetic of the recurrent matmuls.

        E.g. 'Triton 3.6.0 compiled (persistent, grid barrier; recurrent matmuls exact float32 (ieee); at batch 20:
        ...)'.  ``dtype`` defaults to the parameters' dtype."""
        from . import launch

        device = torch.device(device)
        dtype = dtype or next(self.parameters()).dtype
        if dtype == torch.float32:
            arith = "exact float32 (ieee)" if interpreted(device) else FP32_ARITHMETIC[self.precision()]
        elif dtype == torch.float64:
            arith = "float64"
        else:
            arith = f"{str(dtype).removeprefix('torch.')} tensor cores, float32 accumulation"
        if interpreted(device):
            return (f"Triton {triton.__version__} interpreter (as TRITON_INTERPRET=1; one program per batch block; "
                    f"recurrent matmuls {arith})")
        plan = launch.make_plan(batch, self.hidden_size, dtype, device, self.path, self.units,
                                fp32_precision=self.precision(), kind=self.mode)
        how = "persistent, grid barrier" if plan.sync else "one program per batch block"
        return f"Triton {triton.__version__} compiled ({how}; recurrent matmuls {arith}; at batch {batch}: " \
               f"{plan.describe()})"

    def layer(self, k: int, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
              input_drop: InputDrop | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Layer ``k`` over x [T, B, in] from state (h, c), each [B, H]: (y [T, B, H], (h_T, c_T)); ``input_drop``:
        the inter-layer dropout to apply to x first (:attr:`fuses_input_dropout`)."""
        from .function import lstm_layer

        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        return between_graphs(lstm_layer, x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, self.path, self.units,
                              self.precision(), input_drop)

    def precision(self) -> str:
        """The float32 recurrent matmuls' arithmetic now: the cell's ``fp32_precision``, else torch's setting."""
        return self.fp32_precision or fp32_matmul()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", path={self.path!r}, fp32_precision={self.fp32_precision!r}"
