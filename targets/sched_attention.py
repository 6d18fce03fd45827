"""CPU schedule rule for an attention kernel: softmax(Q K^T * scale + bias) V as one PrimFunc
(ember's Attention op lowers to exactly that: two matmul blocks, a row max and a row sum, and
elementwise blocks for scale, mask, exp and normalization).

The schedule computes attention a block of `ti` query rows at a time, in parallel over
(batch, head, row block), with everything between the two matmuls kept in a ti x S buffer that
stays in L1/L2, never as the full [B, H, S, S] score tensor:

    parallel b, h, io:
        scores[ti, S]  = Q[rows] @ K^T          (register tiles of ti x 2 key vectors, k innermost)
        m[ti]          = max(scores)             e[ti, S] = exp(scores - m)
        s[ti]          = sum(e)                  P[ti, S] = e / s (and the mask's where)
        out[rows, D]   = P @ V                   (register tiles of ti x 2 vectors of D)

K^T, when the kernel transposes K itself, is one vectorized copy per call at the root.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ember.targets import sched_common as sc
from ember.targets.lowering import FULL_TILES
from ember.targets.sched_matmul import match

# (Batch x) heads from which the row blocks of a symbolic sequence stay out of the parallel
# loop, full blocks without the row predicate. Below it they join the parallel loop, every FMA
# predicated, so that fewer heads than threads still keep every thread busy (not tuned: BERT's
# 6 heads ran 0.24 ms a call so, 1.0 ms predicated, at 2 threads).
FULL_TILE_HEADS = 4


def _is_matmul(sch: s_tir.Schedule, info: Any) -> bool:
    return info.is_reduction() and len(sch.get(info.block_rv).reads) >= 2 and sum(it.kind == "R" for it in info.iters) == 1 \
        and match(sch, info) is not None


def _root_copies(sch: s_tir.Schedule, func: tirx.PrimFunc, blocks: list[Any]) -> set[str]:
    """The blocks that only re-lay out the inputs (K^T, padded keys, V split into heads):
    each chain of them ends in one copy made at the root, once per call, which the row blocks
    then read with unit stride; the links before the last are inlined into it here."""
    derived: list[Any] = []  # buffers computed from the parameters alone
    chain: list[Any] = []
    for b in blocks:
        if b.is_reduction():
            continue
        if all(sc.param_index(func, buf) is not None or any(buf.same_as(d) for d in derived)
               for buf, _ in sc.reads(sch, b.block_rv)):
            chain.append(b)
            derived.extend(buf for buf, _ in sc.writes(sch, b.block_rv))
    read_by_chain = [buf for c in chain for buf, _ in sc.reads(sch, c.block_rv)]
    roots: set[str] = set()
    for b in chain:
        out = sc.writes(sch, b.block_rv)[0][0]
        if any(out.same_as(buf) for buf in read_by_chain):
            try:
                sch.compute_inline(b.block_rv)
                continue
            except Exception:
                pass
        roots.add(b.name)
    return roots


class Attention:
    """Row-blocked attention with the softmax between the matmuls kept per row block."""

    name = "ember.Attention"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        narrowed = sc.narrow_indices(func)
        sch = s_tir.Schedule(narrowed)
        int32 = narrowed is not func
        try:
            blocks = sc.normalize(sch)
        except ValueError:
            return None
        matmuls = [b for b in blocks if b.is_reduction() and _is_matmul(sch, b)]
        if len(matmuls) != 2:
            return None
        qk, pv = matmuls
        names = [b.name for b in blocks]
        i_qk, i_pv = names.index(qk.name), names.index(pv.name)
        between = blocks[i_qk + 1: i_pv]
        row_reductions = [b for b in between if b.is_reduction()]
        if len(row_reductions) != 2:  # softmax's max and sum
            return None
        dtype = str(sch.get(pv.block_rv).writes[0].source.ty.dtype)
        if dtype != "float32":
            return None
        lanes = sc.vector_lanes(target, dtype)

        # Keep: layout copies of the inputs before Q K^T, exp (computed once), the softmax
        # output P (read D times by P @ V) and the row reductions; inline the rest.
        (p_buf, _), = [(buf, idx) for buf, idx in sc.reads(sch, pv.block_rv)[:1]]
        keep = {qk.name, pv.name, *(b.name for b in row_reductions)}
        roots = _root_copies(sch, narrowed, blocks[:i_pv])
        blocks = [b for b in blocks if sc.exists(sch, b.block_rv)]
        for b in blocks:
            writes = sc.writes(sch, b.block_rv)
            if writes and writes[0][0].same_as(p_buf):
                keep.add(b.name)
            if "exp" in b.name and not b.is_reduction() and b in between:
                keep.add(b.name)
        keep |= roots
        for b in blocks:
            if b.name not in keep and not b.is_reduction():
                try:  # (never reverse_compute_inline: that would write the output from P @ V)
                    sch.compute_inline(b.block_rv)
                except Exception:
                    keep.add(b.name)

        blocks = sc.normalize(sch)
        by_name = {b.name: b for b in blocks}
        pv = by_name[pv.name]
        con = match(sch, pv)
        if con is None or con.i is None or not isinstance(con.j.dom, int):
            return None  # (one query row: the matmul and row rules take its kernel)
        d = con.j.dom
        vec = sc.largest_divisor(d, [lanes, lanes // 2, lanes // 4, 2])
        if vec < 2:
            return None
        ti = 4
        names = [b.name for b in blocks]
        i_pv = names.index(pv.name)
        after = blocks[i_pv + 1:]
        epilogue = sc.inline_epilogue(sch, after)

        # P @ V: rows split by ti, the whole D in registers, parallel over (batch.., io).
        batch_loops = [b.loop_rv for b in con.batch]
        io, ii = sch.split(con.i.loop_rv, [None, ti])
        nd = 2 if (d // vec) % 2 == 0 and ti * 2 * vec * sc.dtype_bytes(dtype) <= sc.MAX_STACK_BYTES else 1
        jo, jv, jl = sch.split(con.j.loop_rv, [None, nd, vec])
        sch.reorder(*batch_loops, io, jo, con.k.loop_rv, ii, jv, jl)
        acc = sch.cache_write(pv.block_rv, 0, "global")
        sch.reverse_compute_at(acc, jo)
        if ti * nd * vec * sc.dtype_bytes(dtype) <= sc.MAX_STACK_BYTES:
            sch.transform_layout(pv.block_rv, ("write", 0), _fold(ti, nd * vec, con.c_axes), assume_injective_transform=True)
        if epilogue is not None:
            try:
                sch.reverse_compute_inline(epilogue)
            except Exception:
                sc.vectorize_inner(sch, epilogue, lanes)
        sch.vectorize(jl)
        sch.unroll(ii)
        sch.unroll(jv)

        # Softmax's max and sum as `lanes` partial results (rfactor needs them still at the root).
        # Reductions before Q K^T that read only the inputs (the bias's row max, which finds the
        # rows masked everywhere) are computed per row block too: at the root they ran as one
        # serial scalar pass over T5's [B, 6, S, S] position bias.
        order = [sch.get(blk).name_hint for blk in sch.get_child_blocks(sc.root_block(sch))]
        early = [n for n in order[:order.index(qk.name)] if n not in roots]
        partials: set[str] = set()
        for name in [*(b.name for b in row_reductions), *early]:
            rf = sc.rfactor_row(sch, sch.get_sblock(name), lanes)
            if rf is not None:
                partials.add(sch.get(rf).name_hint)
        order = [sch.get(blk).name_hint for blk in sch.get_child_blocks(sc.root_block(sch))]

        # Everything between the matmuls (and Q K^T itself) per row block, consumers first.
        first = min([order.index(qk.name), *(order.index(n) for n in order if n in early or n in partials)])
        producers = [n for n in order[first: order.index(pv.name)] if n not in roots]
        for name in reversed(producers):
            sch.compute_at(sch.get_sblock(name), io, preserve_unit_loops=True)
        qk_k = None
        for name in producers:
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)
            spatial = all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)
            if name == qk.name:
                # (.., ii, j, k): k outermost of the three, key positions j vectorized
                ii, j, k = loops[-3:]
                extent = sc.static_extent(sch, j)
                if (extent is None or extent > 0) and sc.divisible(sch, j, lanes):
                    # a register tile of ti rows x nk key vectors, k innermost: each K^T vector
                    # loaded feeds ti FMAs and the scores leave the registers once (a symbolic
                    # key length is padded to whole tiles: emit_nn.SYMBOLIC_KEY_BLOCK)
                    nk = 2 if sc.divisible(sch, j, 2 * lanes) else 1
                    jo2, jv2, jl2 = sch.split(j, [None, nk, lanes])
                    sch.reorder(jo2, k, ii, jv2, jl2)
                    tile = sch.cache_write(block, 0, "global")
                    sch.reverse_compute_at(tile, jo2)
                    ndim = len(sch.get(block).writes[0].region)
                    sch.transform_layout(block, ("write", 0), _fold(ti, nk * lanes, (ndim - 2, ndim - 1)),
                                         assume_injective_transform=True)
                    sch.vectorize(jl2)
                    sch.unroll(jv2)
                    sch.unroll(ii)
                    wb = sch.get_loops(tile)
                    if sc.static_extent(sch, wb[-1]) == nk * lanes:
                        _, lane = sch.split(wb[-1], [None, lanes])
                        sch.vectorize(lane)
                elif extent and (extent % lanes == 0 or (int32 and extent >= lanes)):
                    jo2, jl2 = sch.split(j, [None, lanes])
                    sch.reorder(k, ii, jo2, jl2)
                    if extent % lanes:  # ViT's 197 positions: full vectors, then one ragged one
                        # (LoopPartition only works on int32 loops in TVM 0.27)
                        sch.annotate(jo2, "pragma_loop_partition_hint", 1)
                    sch.vectorize(jl2)
                qk_k = k
            elif name in partials:
                sc.vectorize_partials(sch, block)
            elif spatial:
                sc.vectorize_row(sch, loops[-1], lanes)
        # Batch and head loops join the parallel loop, symbolic or not: with only the query
        # row blocks parallel, every head forked and joined the threads again.
        fused = bool(batch_loops)
        heads = 1
        for b in batch_loops:
            heads *= sc.static_extent(sch, b) or 1
        if fused and not isinstance(con.i.dom, int) and heads >= FULL_TILE_HEADS:
            # Symbolic query rows: the row blocks stay a loop of their own inside the parallel
            # (batch, head) loop, split at run time into full blocks without the row predicate
            # and the last one (lowering.split_full_tiles); fused into the parallel loop, every
            # FMA of Q K^T and P V ran behind `row < S`.
            outer = sch.fuse(*batch_loops) if len(batch_loops) > 1 else batch_loops[0]
            sch.annotate(io, FULL_TILES, ti)
            k_at = 3  # (outer, io, jo, k, ii, jv, jl)
            _fold_row_buffers(sch, io, con.i.dom, ti)
        else:
            outer = sch.fuse(*batch_loops, io) if fused else io
            k_at = 2 if fused else len(batch_loops) + 2  # (outer.., io, jo, k, ii, jv, jl)
        sc.parallel(sch, outer)
        for name in keep - set(producers) - {pv.name}:
            try:
                block = sch.get_sblock(name)
                if not sch.get(block).reads or any(it.iter_type == 2 for it in sch.get(block).iter_vars):
                    continue
                sc.vectorize_inner(sch, block, lanes)
            except Exception:
                continue
        sch.decompose_reduction(sch.get_sblock(qk.name), qk_k)
        for name in partials:
            rf = sch.get_sblock(name)
            sch.decompose_reduction(rf, sch.get_loops(rf)[-2])
        pv_block = sch.get_sblock(pv.name)
        sch.decompose_reduction(pv_block, sch.get_loops(pv_block)[k_at])
        return sch


def _fold_row_buffers(sch: s_tir.Schedule, io: Any, rows: Any, ti: int) -> None:
    """Every buffer that the blocks under the row-block loop `io` write over the query rows
    ([B, H, S, keys], the row maxima and sums, their partials) folded onto one block of `ti`
    rows. TVM 0.27 compacts such a buffer to the block's rows only where the sizes are static;
    over a symbolic sequence the scores, exps and probabilities stayed [B, H, S, S] buffers on
    the heap (an attention over [B, 12, S, 64] at S = 128: 1.78 -> 1.48 ms folded, 1 thread)."""
    func = sch.mod["main"]
    names: list[str] = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, lambda b: names.append(b.name_hint))])
    under = [n for n in names if n != "root" and any(sch.get(lp).same_as(sch.get(io)) for lp in sch.get_loops(sch.get_sblock(n)))]
    for name in under:
        block = sch.get_sblock(name)
        for n, (buf, _) in enumerate(sc.writes(sch, block)):
            if sc.param_index(func, buf) is not None:
                continue
            axes = [a for a, d in enumerate(buf.shape) if tvm_ffi.structural_equal(d, rows)]
            if len(axes) != 1:
                continue
            try:
                sch.transform_layout(block, ("write", n), _row_fold(axes[0], ti), assume_injective_transform=True)
            except Exception:  # (left as it is: correct, only larger)
                continue


def _row_fold(at: int, ti: int) -> Any:
    """[.., i, rest..] -> [i % ti, rest..] (axis `at` the query rows)."""

    def index_map(*idx: Any) -> list[Any]:
        i = idx[at]
        return [i % tirx.const(ti, str(i.ty.dtype)), *idx[at + 1:]]

    return index_map


def _fold(rows: int, cols: int, c_axes: tuple[int, int]) -> Any:
    def index_map(*axes: Any) -> list[Any]:
        i, j = axes[c_axes[0]], axes[c_axes[1]]
        return [i % tirx.const(rows, str(i.ty.dtype)), j % tirx.const(cols, str(j.ty.dtype))]

    return index_map


RULES = [Attention()]
