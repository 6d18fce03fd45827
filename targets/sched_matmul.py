"""CPU schedule rule for matmul-shaped kernels: dense, Gemm, MatMul and batched MatMul, each with
whatever elementwise prologue and epilogue ember's fusion put around it.

The anchor is a block `C[b.., i, j] += A[b.., i, k] * B[b.., k, j]` (any operand order, B may be
read as B[j, k]). The micro-kernel keeps an `mr x (nv * lanes)` tile of C in registers:

    parallel  jo                      (N / (nv * lanes) panels; batch fused in)
      io                              (M / mr row blocks)
        k                             (the whole reduction)
          ii (unrolled mr) x jv (unrolled nv) x jl (vector lanes): C_tile += A[i, k] * Bp[jo, k, jv, jl]

B is read as `Bp[j // L, k, j % L]`, so each k step loads nv contiguous vectors: when B is a
compile-time constant (a weight), that packed copy is made once at compile time
(`pack_weight`); when it is an activation laid out B[k, j] it is read in place, and when it is
B[j, k] (attention's Q @ K^T) it is copied into the packed layout per call (O(N*K) against the
kernel's O(M*N*K)). The tile's epilogue (bias, activation, residual, scaling) is computed from
the registers as the tile is written back, so C never makes a round trip through memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import s_tir, tirx
from tvm.target import Target

from ember.targets import sched_common as sc


@dataclass
class Contraction:
    """The roles of a matmul anchor's operands and loops."""

    a_index: int  # read position of the operand that carries i
    b_index: int  # read position of the operand that carries j
    i: Any  # IterInfo of the row loop (None: a matrix-vector product, one row)
    j: Any  # IterInfo of the column loop (innermost in C)
    k: Any  # IterInfo of the reduction loop
    batch: list[Any]  # IterInfo of the other spatial loops
    b_axes: tuple[int, int]  # positions of k and j among B's indices
    b_rank: int
    c_axes: tuple[int | None, int]  # positions of i and j among C's indices


def _single_var(expr: tirx.PrimExpr) -> tirx.Var | None:
    return expr if isinstance(expr, tirx.Var) else None


def match(sch: s_tir.Schedule, anchor: Any) -> Contraction | None:
    """The anchor's contraction structure, or None when it is not a plain 2-operand matmul."""
    iters = anchor.iters
    reds = [it for it in iters if it.kind == "R"]
    spatial = [it for it in iters if it.kind == "S"]
    if len(reds) != 1 or not spatial:
        return None
    k = reds[0]
    (out, full_idx), = sc.writes(sch, anchor.block_rv)
    out_idx = [e for e in full_idx if not isinstance(e, tirx.IntImm)]  # unit dims
    if any(_single_var(e) is None for e in out_idx):
        return None
    operands = [(pos, buf, idx) for pos, (buf, idx) in enumerate(sc.reads(sch, anchor.block_rv)) if not buf.same_as(out)]
    if len(operands) != 2:
        return None
    for _, _, idx in operands:
        if sum(1 for e in idx if sc.uses(e, k.var)) != 1:
            return None
        if any(_single_var(e) is None and not isinstance(e, tirx.IntImm) for e in idx):
            return None
    j_var = _single_var(out_idx[-1])
    j = next((it for it in spatial if it.var.same_as(j_var)), None)
    if j is None:
        return None

    def carries(idx: list[tirx.PrimExpr], var: tirx.Var) -> bool:
        return any(sc.uses(e, var) for e in idx)

    b_ops = [op for op in operands if carries(op[2], j.var)]
    a_ops = [op for op in operands if not carries(op[2], j.var)]
    if len(b_ops) != 1 or len(a_ops) != 1:
        return None
    (a_pos, _, a_idx), (b_pos, _, b_idx) = a_ops[0], b_ops[0]
    # The row loop is C's second-innermost index (read by A, not by B); the others are batch
    # loops, which B may broadcast over (a weight shared by every batch). C with no other
    # index than j (a classifier's Gemm at batch 1) is a matrix-vector product: no row loop.
    i = next((it for it in spatial if it.var.same_as(out_idx[-2])), None) if len(out_idx) >= 2 else None
    if len(out_idx) >= 2 and (i is None or i is j or not carries(a_idx, i.var) or carries(b_idx, i.var)):
        return None
    batch = [it for it in spatial if it is not i and it is not j]
    if i is None and (batch or carries(a_idx, j.var)):
        return None
    k_pos = next(n for n, e in enumerate(b_idx) if sc.uses(e, k.var))
    j_pos = next(n for n, e in enumerate(b_idx) if sc.uses(e, j.var))
    c_i = None if i is None else next(n for n, e in enumerate(full_idx) if isinstance(e, tirx.Var) and e.same_as(i.var))
    c_j = next(n for n, e in enumerate(full_idx) if isinstance(e, tirx.Var) and e.same_as(j.var))
    return Contraction(a_pos, b_pos, i, j, k, batch, (k_pos, j_pos), len(b_idx), (c_i, c_j))


def _pack_map(rank: int, k_pos: int, j_pos: int, lanes: int) -> Any:
    """Index map B[..k..j..] -> Bp[rest.., j // lanes, k, j % lanes]."""

    def index_map(*axes: Any) -> list[Any]:
        rest = [a for n, a in enumerate(axes) if n not in (k_pos, j_pos)]
        j, k = axes[j_pos], axes[k_pos]
        return [*rest, j // lanes, k, j % lanes]

    return index_map


# Register tiles (rows, vectors) in order of preference: as many accumulators as the register
# file holds with room for the B vectors and the broadcast A element (see _tile).
TILES = {32: ((4, 3), (3, 4), (4, 2), (2, 4), (4, 1), (2, 2), (1, 4), (1, 2), (1, 1)),
         16: ((4, 2), (3, 2), (2, 3), (2, 2), (4, 1), (1, 2), (1, 1))}


# With B packed (a weight), each k step's B vectors are contiguous and a taller tile pays. Since
# ember's lowering keeps tiles over 1024 bytes on the stack (targets/lowering.py), 24
# accumulators: 6 x 4 (or 8 x 3 where 4 vectors do not divide the columns) beat the 14-register
# 7 x 2 on whole models at 2 threads here: ViT-S 44.8 -> 39.0 ms, MiniLM 14.3 -> 13.1 ms, GPT-2
# 98.3 -> 93.3 ms (tools/ab.py, medians of 30 runs; 14 x 2: no gain, 4 x 6: half of it). Before,
# 7 x 2 had beaten 4 x 3 by 4-10%. With B an activation read in place (a pointwise conv's image
# rows), 7 x 2 was 5-45% slower than 4 x 3.
TALL_TILES = ((6, 4), (8, 3), (7, 2))


def _tile(vec: int, registers: int, vectors: int, rows: Any, nbytes: int, ragged_ok: bool = False,
          packed_b: bool = False) -> tuple[int, int]:
    """The register tile (mr, nv) for a column count of `vectors` vectors.

    The accumulators, the tile's B vectors and one broadcast of A fit the vector registers, and
    the tile stays on the stack (sched_common.MAX_STACK_BYTES): a heap workspace tile LLVM cannot
    prove free of aliasing with the operands, so it spills the accumulators every k step (2.5x).
    """
    tiles = TILES[32 if registers >= 32 else 16]
    if packed_b and registers >= 32:
        tiles = (*TALL_TILES, *tiles)
    fits = [(mr, nv) for mr, nv in tiles
            if vectors % nv == 0 and mr * nv * vec * nbytes <= sc.MAX_STACK_BYTES and mr * nv + nv + 1 <= registers]
    if isinstance(rows, int):
        # Rows no tile divides get one ragged tile, split off by loop partitioning, where the
        # kernel was narrowed to int32 (`ragged_ok`); else a tile that divides the rows.
        dividing = [(mr, nv) for mr, nv in fits if rows % mr == 0 and mr * nv >= 4]
        fitting = [(mr, nv) for mr, nv in fits if mr <= rows]
        fits = (fitting if ragged_ok else dividing) or fitting
    return fits[0] if fits else (1, 1)


def _tile_ok(mr: int, nv: int, vec: int, vectors: int, rows: Any, nbytes: int, registers: int, ragged_ok: bool) -> bool:
    """Whether a register tile (a tuner's choice) fits: nv divides the column vectors, the
    accumulators stay under the stack limit and leave registers for B and A, the rows take it."""
    if mr < 1 or nv < 1 or vectors % nv or mr * nv * vec * nbytes > sc.MAX_STACK_BYTES or mr * nv + nv + 1 > registers:
        return False
    return not isinstance(rows, int) or (mr <= rows if ragged_ok else rows % mr == 0)


def _tile_map(mr: int, cols: int, c_axes: tuple[int | None, int]) -> Any:
    """C[.., i, .., j] -> tile[i % mr, j % cols]: the accumulator of one register tile
    (tile[j % cols] for a matrix-vector product)."""

    def index_map(*axes: Any) -> list[Any]:
        j = axes[c_axes[1]]
        tile_j = j % tirx.const(cols, str(j.ty.dtype))
        if c_axes[0] is None:
            return [tile_j]
        i = axes[c_axes[0]]
        return [i % tirx.const(mr, str(i.ty.dtype)), tile_j]

    return index_map


# Column panels that share one pass over A's rows when A does not stay in L2 beside a panel's
# packed weight: each row block of A is then read from L3 once per group, not once per panel
# (GPT-2's LM head, A = 128 x 768: 46.7 -> 45.2 ms at 2 threads, medians of two profiles each).
PANEL_GROUP_L2 = 320 << 10  # bytes of the group's packed weight that must fit L2 with A's rows
A_RESIDENT = 256 << 10  # A smaller than this stays in L2 across panels anyway
# Parallel iterations a matmul's kernel should offer before its row tiles join them (the
# artifact's thread count is chosen at run time; boards and servers have 4 to 16 cores).
PARALLEL_MIN = 16


def _panel_group(panels: int, width: int, k: Any, rows: Any, nbytes: int) -> int:
    """How many column panels (of `width` columns) share a pass over A's row blocks."""
    if not isinstance(k, int) or not isinstance(rows, int) or rows * k * nbytes <= A_RESIDENT:
        return 1
    for group in (4, 3, 2):
        if panels % group == 0 and group * k * width * nbytes <= PANEL_GROUP_L2:
            return group
    return 1


class Matmul:
    """Register-blocked, vectorized, parallel matmul with packed B and a fused epilogue."""

    name = "ember.Matmul"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        narrowed = sc.narrow_indices(func)
        int32 = narrowed is not func
        func = narrowed
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None:
            return None
        sch, anchor = kernel.sch, kernel.anchor
        con = match(sch, anchor)
        if con is None:
            return None
        dtype = str(sch.get(anchor.block_rv).writes[0].source.ty.dtype)
        if not dtype.startswith("float"):
            return None  # integer matmuls belong to the int8 rules
        lanes = sc.vector_lanes(target, dtype)
        # Symbolic columns (attention scores Q K^T over a dynamic sequence): computed as a
        # padded einsum like columns no vector divides, B padded per call to whole tiles and
        # the columns copied out (before, the row-reduction rule took them at 2% of peak).
        symbolic_n = not isinstance(con.j.dom, int)
        n = con.j.dom if not symbolic_n else 1 << 12
        rows = 1 if con.i is None else con.i.dom
        vec = sc.largest_divisor(n, [lanes, lanes // 2, lanes // 4, 2]) if not symbolic_n else 1
        b_buf = sc.reads(sch, anchor.block_rv)[con.b_index][0]
        b_param = sc.param_index(func, b_buf)
        weight = b_param is not None and b_param in sc.layout_free(func)
        if symbolic_n and weight:
            return None  # (a weight has static columns)
        padded = False
        if vec < lanes and n >= lanes:
            # Columns that no vector width divides (GPT-2's 50257-word head, a CRNN's 37
            # symbols): compute a padded einsum, the weight padded with zeros at compile time,
            # then copy the columns out. (At 16 to 63 columns too: the row-reduction rule took
            # the 37-column classifier at 5 GFLOP/s, 14x slower.)
            mr, nv = _tile(lanes, sc.vector_registers(target), 12, rows, sc.dtype_bytes(dtype), packed_b=weight)
            sch.pad_einsum(anchor.block_rv, [nv * lanes if it.var.same_as(con.j.var) else 1 for it in anchor.iters])
            anchor = next(b for b in sc.normalize(sch) if b.is_reduction())
            con = match(sch, anchor)
            if con is None:
                return None
            vec, padded = lanes, True
            n = con.j.dom if not symbolic_n else nv * lanes
        if vec < 2:
            return None
        mr, nv = _tile(vec, sc.vector_registers(target), n // vec, rows, sc.dtype_bytes(dtype), ragged_ok=int32,
                       packed_b=weight)
        if sc.knob(func, "mr") is not None or sc.knob(func, "nv") is not None:
            mr, nv = sc.knob(func, "mr", mr), sc.knob(func, "nv", nv)
            if not _tile_ok(mr, nv, vec, n // vec, rows, sc.dtype_bytes(dtype), sc.vector_registers(target), int32):
                return None

        blocks = sc.normalize(sch)
        names = [b.name for b in blocks]
        at = names.index(anchor.name)
        before, after = blocks[:at], blocks[at + 1:]
        k_pos, j_pos = con.b_axes
        pad_copy: str | None = None  # an activation's padded copy, made per call
        if padded:
            # The pad block of B reads the weight: mark it as the compile-time re-layout.
            pad_b = next((b for b in before if any(buf.same_as(b_buf) for buf, _ in sc.reads(sch, b.block_rv))), None)
            if weight and pad_b is not None:
                sch.annotate(pad_b.block_rv, sc.PREPROC, True)
                before = [b for b in before if b is not pad_b]
                sch.transform_layout(anchor.block_rv, ("read", con.b_index), _pack_map(con.b_rank, k_pos, j_pos, vec))
                weight = False
                packed = True
            else:
                packed = False
                if pad_b is not None:
                    # An activation padded per call: one vectorized copy, not a bounds check
                    # in every k step of the micro-kernel (28x slower on a 14x14 1x1 conv).
                    before = [b for b in before if b is not pad_b]
                    pad_copy = pad_b.name
        else:
            packed = False

        # Prologue (operand views, casts) folds into the reads; what cannot stays a loop nest.
        left_before = sc.inline_all(sch, before)
        epilogue = sc.inline_epilogue(sch, after)

        if packed:
            pass
        elif weight:
            sc.pack_weight(sch, anchor.block_rv, con.b_index, _pack_map(con.b_rank, k_pos, j_pos, vec))
        elif j_pos != con.b_rank - 1:  # B[j, k]: vectors along j need a packed copy
            copy = sch.cache_read(anchor.block_rv, con.b_index, "global")
            sch.transform_layout(anchor.block_rv, ("read", con.b_index), _pack_map(con.b_rank, k_pos, j_pos, vec))
            sc.vectorize_inner(sch, copy, lanes)

        # Loop handles go stale when blocks are inlined or re-laid out: read the anchor again.
        anchor = next(b for b in sc.normalize(sch) if b.name == anchor.name)
        by_name = {it.var.name: it for it in anchor.iters}
        con.j, con.k = by_name[con.j.var.name], by_name[con.k.var.name]
        con.i = None if con.i is None else by_name[con.i.var.name]
        con.batch = [by_name[b.var.name] for b in con.batch]
        jo, jv, jl = sch.split(con.j.loop_rv, [None, nv, vec])
        batch_loops = [b.loop_rv for b in con.batch]
        tile_at = None
        # Row tiles join the parallel loop where the rows are static and need no ragged tile
        # split off (loop partitioning works on a loop of its own only).
        rows_fuse = con.i is not None and isinstance(rows, int) and not (int32 and rows % mr)
        if con.i is not None:
            io, ii = sch.split(con.i.loop_rv, [None, mr])
            panels = n // (nv * vec)
            group = _panel_group(panels, nv * vec, con.k.dom, rows, sc.dtype_bytes(dtype))
            if not rows_fuse:
                # The column panels are then all the parallel loop has: a group may not leave
                # fewer of them than there are panels up to PARALLEL_MIN.
                while group > 1 and panels // group < min(panels, PARALLEL_MIN):
                    group = next(g for g in range(group - 1, 0, -1) if panels % g == 0)
            group = sc.knob(func, "group", group)
            if group < 1 or panels % group:
                return None
            if group > 1:
                jo, tile_at = sch.split(jo, [None, group])
                sch.reorder(*batch_loops, jo, io, tile_at, con.k.loop_rv, ii, jv, jl)
            else:
                sch.reorder(*batch_loops, jo, io, con.k.loop_rv, ii, jv, jl)
        else:  # matrix-vector: each k step streams nv vectors of the packed weight
            io = ii = None
            sch.reorder(*batch_loops, jo, con.k.loop_rv, jv, jl)
        acc = sch.cache_write(anchor.block_rv, 0, "global")  # small global = stack: see _tile
        sch.reverse_compute_at(acc, tile_at if tile_at is not None else (jo if io is None else io))
        # The tile buffer is as big as C until TVM compacts it, which fails when the rows are
        # symbolic (the tile at the edge is shorter): fold it onto one (mr, nv * vec) tile,
        # which every (jo, io) step initializes, accumulates and writes back before the next.
        tile_cols = nv * vec
        sch.transform_layout(anchor.block_rv, ("write", 0), _tile_map(mr, tile_cols, con.c_axes), assume_injective_transform=True)
        if epilogue is not None:
            # reverse_compute_inline replaces the write-back's row predicate by the epilogue's
            # own (TVM 0.27), writing past the last row: only inline when neither has one.
            try:
                if padded:
                    raise ValueError("the padded columns' copy-out has a predicate")
                sch.reverse_compute_inline(epilogue)
            except Exception:  # its own vectorized loop nest after the kernel's tiles
                sc.vectorize_inner(sch, epilogue, lanes)
        if io is not None and (not isinstance(rows, int) or (int32 and rows % mr)):
            # Symbolic or ragged rows: split the row loop into full tiles without a bound check
            # and one ragged tile (a predicate in the k loop costs 3-6x). (TVM 0.27's
            # LoopPartition fails on static int64 loops, hence int32 kernels only.)
            sch.annotate(io, "pragma_loop_partition_hint", 1)
        sch.vectorize(jl)
        if ii is not None:
            sch.unroll(ii)
        sch.unroll(jv)
        # The parallel loop: the batch loops (static or not) and the column panels, and the
        # row tiles too where those leave fewer than PARALLEL_MIN iterations. A [1500, 256] x
        # [256, 256] matmul (Whisper's projections) has one group of 4 panels: it ran on one
        # thread, at 42% of the 2-thread peak.
        par = [*batch_loops, jo]
        known = 1
        for loop in par:
            known *= sc.static_extent(sch, loop) or 1
        if rows_fuse and known < PARALLEL_MIN:
            par.append(io)
        outer = sch.fuse(*par) if len(par) > 1 else jo
        sc.parallel(sch, outer)
        wb = sch.get_loops(acc)
        inner = sc.static_extent(sch, wb[-1])
        if inner and inner % vec == 0:
            # The write-back is unrolled over the tile like the k loop: LLVM keeps the stack
            # tile in registers only when every access has a constant index, and leaves a loop
            # with a heavy epilogue rolled (BERT's erf GELU on a 6 x 4 tile: 8.1 -> 13.1 ms).
            vectors, lane = sch.split(wb[-1], [None, vec])
            sch.vectorize(lane)
            sch.unroll(vectors)
            if io is not None and sc.static_extent(sch, wb[-2]) == mr:
                sch.unroll(wb[-2])
        for info in left_before:
            sc.vectorize_inner(sch, info.block_rv, lanes)
        if pad_copy is not None:
            sc.vectorize_inner(sch, sch.get_sblock(pad_copy), lanes)
        sch.decompose_reduction(anchor.block_rv, con.k.loop_rv)
        return sch

    def knob_space(self, func: tirx.PrimFunc, target: Target) -> dict[str, list[int]]:
        """Register tile rows and vectors; column panels sharing a pass over A."""
        return {"mr": [1, 2, 3, 4, 5, 6, 7, 8], "nv": [1, 2, 3, 4], "group": [1, 2, 3, 4]}


RULES = [Matmul()]
