"""A register-blocked micro-kernel design space for dense layers (matmul + bias + activation) in MetaSchedule.

MetaSchedule's generic multi-level tiling plateaued at ~115 GFLOP/s on the DeepFM MLP (batch 100, 2 Zen cores)
where MLAS reaches ~400 for the same Gemm: its tiles rarely give LLVM a block of accumulators that stays in
vector registers over the whole reduction. This space is the shape hand-written BLAS kernels use, with only
the block sizes left to search:

- the weight ``W[K, N]`` (layout-free: a weight) is prepacked into panels ``[N / (16 nr), K, 16 nr]``
  (MetaSchedule's ``RewriteLayout`` derives that layout from the loop order below; the build lifts it into
  the run-once ``transform_params``), so each reduction step reads ``nr`` contiguous 16-lane vectors;
- an ``mr x (16 nr)`` tile of the output accumulates in a local buffer (registers after unrolling) across
  the whole reduction, with ``mr`` broadcasts of ``A[i, k]`` and ``nr`` vector loads per ``mr * nr`` FMAs;
- the bias and activation are applied to the tile in registers before it is stored;
- tiles are spread over the cores.

``mr``, ``nr`` and an unrolled reduction step are sampled decisions of the trace, so MetaSchedule's
evolutionary search tunes them like any other schedule's.
"""

from __future__ import annotations

LANES = 16  # fp32 lanes of an AVX-512 vector (two AVX2 vectors on targets without it)
MAX_ROWS = 8  # mr: rows of the register tile
MAX_PANELS = 8  # nr: 16-lane column vectors of the register tile
MAX_UNROLL = 8  # reduction steps unrolled together


def dense_space(sch) -> None:
    """Schedule the function's ``matmul`` block (and its elementwise epilogue) as a register-blocked GEMM.

    Raises (a ``ScheduleError`` or ``ValueError``) when the function is not such a dense layer; used as a
    ``ScheduleFn`` space generator, and tried once per task to decide whether the task gets this space.
    """
    mm = sch.get_sblock("matmul")
    loops = sch.get_loops(mm)
    if len(loops) != 3:
        raise ValueError("not a 2-D matmul")
    i, j, k = loops
    n = _extent(sch, j)
    if n % LANES:
        raise ValueError(f"output width {n} is not a multiple of {LANES}")
    out = _inline_epilogue(sch, mm)
    if out is None:
        raise ValueError("the matmul has no elementwise epilogue to write its tile out")

    j_panel, j_lane = sch.split(j, [None, LANES])
    i_out, i_tile = sch.split(i, [None, _sample_factor(sch, _extent(sch, i), MAX_ROWS)])
    j_out, j_tile = sch.split(j_panel, [None, _sample_factor(sch, n // LANES, MAX_PANELS)])
    k_out, k_step = sch.split(k, sch.sample_perfect_tile(k, n=2, max_innermost_factor=MAX_UNROLL))
    sch.reorder(j_out, i_out, k_out, k_step, i_tile, j_tile, j_lane)
    sch.set_scope(mm, 0, "local")  # the accumulator tile
    sch.reverse_compute_at(out, i_out)  # bias and activation on the tile, in registers
    _, e_lane = sch.split(sch.get_loops(out)[-1], [None, LANES])
    sch.vectorize(e_lane)
    sch.vectorize(j_lane)
    for loop in (j_tile, i_tile, k_step):
        sch.unroll(loop)
    sch.parallel(sch.fuse(j_out, i_out))
    init = sch.decompose_reduction(mm, k_out)
    sch.vectorize(sch.get_loops(init)[-1])


def _inline_epilogue(sch, mm):
    """Inline the elementwise chain after the matmul (bias add, activation) into its last block; return it."""
    consumers = sch.get_consumers(mm)
    if len(consumers) != 1:
        return None
    block = consumers[0]
    while True:
        nxt = sch.get_consumers(block)
        if not nxt:
            return block
        if len(nxt) != 1:
            raise ValueError("the matmul's epilogue branches")
        sch.compute_inline(block)
        block = nxt[0]


def _sample_factor(sch, extent: int, most: int):
    """A sampled tile size: a divisor of ``extent`` in [2, most], or 1 when there is none.

    Not ``sample_perfect_tile``: a tile of 1 row or panel makes ``reverse_compute_at`` and
    ``decompose_reduction`` omit a loop, and a trace must make the same loops whatever its decisions."""
    sizes = [d for d in range(2, most + 1) if extent % d == 0] or [1]
    return sch.sample_categorical(sizes, [1.0 / len(sizes)] * len(sizes))


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def is_dense(mod) -> bool:
    """Whether ``dense_space`` applies to this task's function (a trial application on a scratch schedule)."""
    import tvm.s_tir

    try:
        dense_space(tvm.s_tir.Schedule(mod))
        return True
    except Exception:  # ScheduleError, ValueError: any refusal means "not a dense layer"
        return False
