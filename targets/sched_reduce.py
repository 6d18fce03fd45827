"""CPU schedule rules for row reductions (LayerNorm, RMSNorm, Softmax, ReduceSum/Mean over the
last axis, with their elementwise neighbours), for reductions over a blocked activation's pixels,
and for purely elementwise kernels.

RowReduce: every reduction of the kernel reduces the innermost axis of the rows the output is
made of. Per row (rows in parallel), the reductions run one after another over the row, each
vectorized through rfactor (`lanes` partial sums, then one horizontal sum), and the output's
row is written with vectors (a ragged or symbolic row: whole vectors, then the tail). Softmax
comes written with its lane partials explicit (`fast_math.softmax_rows`, blocks named
LANE_PARTIAL): rfactor splits only a row's first reduction.

    parallel r:                      (the output's outer loops, fused)
        mean[r] = sum(x[r, :]) / n   (vector partial sums over c)
        var[r]  = ...
        y[r, :] = (x[r, :] - mean[r]) * ...   (vectorized over c)

LaneReduce: reductions over the pixels of a blocked activation ([N, C/b, H, W, b] reduced over H
and W, each lane its own channel: an instance norm in the blocked layout), per channel block
in parallel, with one vector of lanes.

Elementwise: a kernel without reductions is inlined into its last block, whose loops are fused,
vectorized innermost and parallel outside.
"""

from __future__ import annotations

import contextlib
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ember.targets import sched_common as sc
from ember.targets.fast_math import LANE_PARTIAL, ROW_BUFFER


def _inner_reduction(info: Any) -> bool:
    """A reduction block whose only reduction axis is its last iter."""
    kinds = info.dom_kind()
    return kinds.count("R") == 1 and kinds.endswith("R")


def _under_rows(sch: s_tir.Schedule, order: list[str], rows: Any) -> None:
    """Every block before the output (the last of `order`) computed under the output's rows
    loop, which runs in parallel."""
    for name in reversed(order[:-1]):
        sch.compute_at(sch.get_sblock(name), rows, preserve_unit_loops=True)
    sc.parallel(sch, rows)


class RowReduce:
    """Rows in parallel; each reduction vectorized with lane-wise partial sums."""

    name = "ember.RowReduce"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        found = sc.cpu_blocks(func, target, narrow=True)
        if found is None:
            return None
        sch, blocks = found
        reds = [b for b in blocks if b.is_reduction()]
        if not reds or not all(_inner_reduction(b) for b in reds):
            return None
        if any(len(sch.get(b.block_rv).reads) > 2 for b in reds):
            return None  # a contraction (matmul-like), not a row reduction
        out = blocks[-1]
        if out.is_reduction() or len(out.iters) < 1:
            return None
        partials = {b.name for b in reds if b.name.startswith(LANE_PARTIAL)}  # (fast_math.softmax_rows)
        rows = len(reds[0].iters) - 1 - (reds[0].name in partials)
        if any(len(b.iters) - 1 - (b.name in partials) != rows for b in reds) or len(out.iters) not in (rows, rows + 1):
            return None
        lanes = sc.vector_lanes(target, str(sch.get(out.block_rv).writes[0].source.ty.dtype))

        # Inline the elementwise blocks (mean = sum / n, exp, deltas) into their readers; keep
        # those that cannot be inlined (they are computed per row below).
        for b in blocks[:-1]:
            if not b.is_reduction() and not b.name.startswith(ROW_BUFFER):
                with contextlib.suppress(Exception):  # (one that cannot is computed per row)
                    sch.compute_inline(b.block_rv)
        # Each reduction over the row as `lanes` partial sums (rfactor), then one final sum.
        rfs: list[str] = []
        for b in sc.normalize(sch):
            if not b.is_reduction() or b.name in partials:
                continue
            inner = sch.get_loops(b.block_rv)[-1]
            extent = sc.static_extent(sch, inner)
            if extent and extent % lanes == 0 and extent >= 2 * lanes:
                _, ci = sch.split(inner, [None, lanes])
                rfs.append(sch.get(sch.rfactor(ci, 0)).name_hint)
        order = [sch.get(blk).name_hint for blk in sch.get_child_blocks(sc.root_block(sch))]
        out_name = order[-1]
        out_block = sch.get_sblock(out_name)
        out_loops = sch.get_loops(out_block)
        row_loops = out_loops[:rows]
        if not row_loops:
            return None
        r = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
        if len(out_loops) > rows:
            c = sch.get_loops(out_block)[-1]
            sc.vectorize_row(sch, c, lanes, symbolic=True)
        _under_rows(sch, order, r)
        for name in order[:-1]:
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)
            if name in rfs:
                _lanes_innermost(sch, block, r)
            elif name in partials:  # (.., ci, co) -> (.., co, ci), ci vectorized
                sch.reorder(loops[-1], loops[-2])
                sch.vectorize(sch.get_loops(block)[-1])
                vectors = sch.get_loops(block)[-2]
                if name in partials and (sc.static_extent(sch, vectors) is None or sc.is_int32(sch, vectors)):
                    # whole vectors, then the ragged tail (TVM 0.27's LoopPartition fails on a
                    # static int64 loop: a static row over symbolic rows keeps its bound check)
                    sch.annotate(vectors, "pragma_loop_partition_hint", 1)
            elif all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars):
                sc.vectorize_row(sch, loops[-1], lanes, symbolic=True)
        for name in [*rfs, *partials]:
            block = sch.get_sblock(name)
            sch.decompose_reduction(block, sch.get_loops(block)[-2])
        # A ragged or symbolic row's first reduction too (TVM's rfactor needs the block first
        # under the row loop: a softmax's second reduction, the sum after the max, stays scalar).
        first = next((name for name in order[:-1]
                      if name not in rfs and name not in partials and _reduces(sch, sch.get_sblock(name))), None)
        if first is not None:
            _ragged_rfactor(sch, sch.get_sblock(first), lanes)
        return sch


def _lanes_innermost(sch: s_tir.Schedule, block: Any, rows: Any) -> None:
    """A partial-sum block of rfactor (its lane axis first, as rfactor(ci, 0) lays it out),
    computed under the rows loop: the reduction's loop, then the lanes innermost, vectorized;
    unit loops outside both. compute_at does not make the loops in the block's axis order: a
    LayerNorm over [1, 197, 384] came out (lanes, reduction, row of 1), and swapping the last
    two vectorized the unit loop, leaving 16 scalar sums with a stride of 16 per row."""
    under = sch.get_loops(block)
    start = next(i for i, lp in enumerate(under) if sch.get(lp).same_as(sch.get(rows))) + 1
    under = under[start:]
    ivs = sch.get(block).iter_vars
    binding = dict(zip([iv.var for iv in ivs], _iter_values(sch, block)))

    def loop_of(value: Any) -> Any | None:
        return next((lp for lp in under if isinstance(value, tirx.Var) and sch.get(lp).loop_var.same_as(value)), None)

    lane = loop_of(binding[ivs[0].var])
    red = loop_of(next(binding[iv.var] for iv in ivs if int(iv.iter_type) == 2))
    units = [lp for lp in under if not any(sch.get(lp).same_as(sch.get(x)) for x in (lane, red) if x is not None)]
    if lane is None or red is None or any(sc.static_extent(sch, lp) != 1 for lp in units):
        lane, red, units = under[-2], under[-1], []  # (other bindings: the last two loops swapped, as before)
    sch.reorder(*units, red, lane)
    sch.vectorize(lane)


def _iter_values(sch: s_tir.Schedule, block: Any) -> list[Any]:
    """The loop expressions a block's axes are bound to (its SBlockRealize's iter_values)."""
    found: list[Any] = []
    target = sch.get(block)

    def visit(realize: s_tir.SBlockRealize) -> None:
        if realize.block.same_as(target):
            found.extend(realize.iter_values)

    tvm_ffi.structural_walk(sch.mod["main"].body, [(s_tir.SBlockRealize, visit)])
    return found


def _reduces(sch: s_tir.Schedule, block: Any) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)  # (kCommReduce)


def _ragged_rfactor(sch: s_tir.Schedule, block: Any, lanes: int) -> None:
    """A reduction over a row that no vector divides (12799 frames) or of symbolic length, as
    `lanes` partial sums too, whole vectors split off from the tail by LoopPartition. Split
    after the blocks moved under the row loop: split before, compute_at dropped the ragged
    split's predicate (the partial sums read past the row). TVM's rfactor then puts the partial
    block in a parallel pass of its own over the rows, so the row is read twice. As a scalar
    loop, a speech model's 256 x 12799 instance norm took 10.3 ms; now 3.1 (onnxruntime 1.9)."""
    inner = sch.get_loops(block)[-1]
    extent = sc.static_extent(sch, inner)
    if extent is not None and (extent % lanes == 0 or extent < 2 * lanes or not sc.is_int32(sch, inner)):
        return
    _, lane = sch.split(inner, [None, lanes])
    rf = sch.rfactor(lane, len(sc.writes(sch, block)[0][1]))
    loops = sch.get_loops(rf)  # (.., rows, vectors, lane)
    sch.annotate(loops[-2], "pragma_loop_partition_hint", 1)
    sch.vectorize(loops[-1])
    sch.decompose_reduction(rf, loops[-2])


def _contiguous_inner(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether every read is contiguous (or constant) along the block's innermost iter, so a
    vector of outputs reads vectors, not gathers (a transpose is not). A read at an offset
    (`x[i, j + 768]`: a Split's second output, a Slice) is contiguous too, unless the block
    chooses between reads by that iter (a Concat's if_then_else: a vector would load every
    branch, past their bounds)."""
    ivs = sc.iter_vars(sch, block)
    if not ivs:
        return False
    last = ivs[-1][0]
    offset = False
    for _, idx in sc.reads(sch, block):
        for n, e in enumerate(idx):
            if not sc.uses(e, last):
                continue
            if n != len(idx) - 1:
                return False
            if not (isinstance(e, tirx.Var) and e.same_as(last)):
                if not (isinstance(e, (tirx.Add, tirx.Sub)) and isinstance(e.a, tirx.Var) and e.a.same_as(last)
                        and not sc.uses(e.b, last)):
                    return False
                offset = True
    return not offset or not _chooses_by(sch.get(block).body, last)


def _chooses_by(stmt: Any, var: tirx.Var) -> bool:
    """Whether `stmt` holds an if_then_else or select whose condition uses `var`."""
    found: list[bool] = []

    def visit(node: Any) -> None:
        if isinstance(node, tirx.Select):
            condition = node.condition
        elif str(getattr(node.op, "name", "")).endswith("if_then_else"):
            condition = node.args[0]
        else:
            return
        found.append(sc.uses(condition, var))

    tvm_ffi.structural_walk(stmt, [((tvm.ir.Call, tirx.Select), visit)])
    return any(found)


PARALLEL_MIN = 16384  # elements below which an elementwise kernel stays on one thread


class Elementwise:
    """No reductions: one fused loop nest, vectorized and parallel."""

    name = "ember.Elementwise"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        found = sc.cpu_blocks(func, target, narrow=True)
        if found is None:
            return None
        sch, blocks = found
        if not blocks or any(b.is_reduction() for b in blocks):
            return None
        left = sc.inline_all(sch, blocks[:-1])
        lanes = sc.vector_lanes(target, str(sch.get(blocks[-1].block_rv).writes[0].source.ty.dtype))
        for info in [*left, blocks[-1]]:
            loops = sch.get_loops(info.block_rv)
            if not loops:
                continue
            contiguous = _contiguous_inner(sch, info.block_rv)
            if len(loops) > 1 and any(sc.static_extent(sch, lp) is None for lp in loops):
                _symbolic_nest(sch, loops, contiguous, lanes)
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            extent = sc.static_extent(sch, fused)
            outer = fused
            if contiguous and extent and extent % lanes == 0:
                outer, lane = sch.split(fused, [None, lanes])
                sch.vectorize(lane)
            # Parallel only for large contiguous loops: smaller ones (and gathers such as
            # transposes, bound by memory latency) lose more to the thread launch than they gain.
            if contiguous and (extent is None or extent >= PARALLEL_MIN):
                sc.parallel(sch, outer)
        return sch


def _symbolic_nest(sch: s_tir.Schedule, loops: list[Any], contiguous: bool, lanes: int) -> None:
    """A loop nest with symbolic extents (a dynamic batch or sequence): the static inner loops
    (or the innermost loop alone) fused and vectorized, the outer ones fused and parallel. (Fused
    into one symbolic loop, every element paid 64-bit divisions by the symbolic extents to
    recover its indices: an exported BERT's head transposes ran at 0.9 GB/s.)"""
    static = len(loops)
    while static > 0 and sc.static_extent(sch, loops[static - 1]) is not None:
        static -= 1
    static = min(static, len(loops) - 1)  # (a symbolic innermost loop: a loop of its own, LLVM vectorizes it)
    inner = sch.fuse(*loops[static:]) if len(loops) - static > 1 else loops[static]
    if contiguous:
        sc.vectorize_row(sch, inner, lanes, symbolic=True)  # (a symbolic one: whole vectors, then the tail)
    outer = sch.fuse(*loops[:static]) if static > 1 else loops[0]
    if contiguous or sc.static_extent(sch, inner) is None:
        sc.parallel(sch, outer)


def _lane_of(sch: s_tir.Schedule, block: Any) -> tirx.Var | None:
    """The spatial iter every access of `block` indexes its last axis with (a blocked
    activation's lanes), None where there is none or a reduction iter indexes the last axis."""
    ivs = sc.iter_vars(sch, block)
    lane = None
    for _, idx in [*sc.reads(sch, block), *sc.writes(sch, block)]:
        last = idx[-1] if idx else None
        if not isinstance(last, tirx.Var) or not any(v.same_as(last) and kind == "S" for v, kind in ivs):
            return None
        if lane is not None and not lane.same_as(last):
            return None
        lane = last
    return lane


class LaneReduce:
    """Reductions over the pixels of a blocked activation ([N, C/b, H, W, b] reduced over H and
    W: an instance norm's statistics), with their elementwise neighbours. Per channel block (in
    parallel), each reduction runs over the pixels with one vector of b lanes, then the output's
    pixels are written with vectors. (TVM's generic rule put every output pixel in the parallel
    loop and recomputed the whole reduction under each: quadratic in the pixels.)

        parallel (n, cb):
            mean[:] = sum over (h, w) of x[h, w, :] / n     (one vector)
            var[:]  = ...
            y[h, w, :] = (x[h, w, :] - mean) * ...          (vectors)
    """

    name = "ember.LaneReduce"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        found = sc.cpu_blocks(func, target)
        if found is None:
            return None
        sch, blocks = found
        reds = [b for b in blocks if b.is_reduction()]
        out = blocks[-1]
        if not reds or out.is_reduction() or any(_lane_of(sch, b.block_rv) is None for b in reds):
            return None
        if any(len(buf.shape) != 5 for buf, _ in sc.reads(sch, reds[0].block_rv)):
            return None  # (the blocked layout's [N, C/b, H, W, b] only)
        kinds = [[kind for _, kind in sc.iter_vars(sch, b.block_rv)] for b in reds]
        rows = kinds[0].count("S") - 1  # (the spatial iters but the lanes: batch and channel blocks)
        if rows < 1 or any(k.count("S") - 1 != rows for k in kinds):
            return None
        out_loops = sch.get_loops(out.block_rv)
        lanes = sc.static_extent(sch, out_loops[-1])
        if len(out_loops) != len(kinds[0]) or lanes is None or lanes > 4 * sc.vector_lanes(target, "float32"):
            return None
        for b in blocks[:-1]:
            # per-pixel blocks inline into their readers; per-channel ones (mean = sum / n,
            # rsqrt(var + eps)) are computed once per channel block, not per pixel
            if not b.is_reduction() and len(b.iters) == len(out_loops):
                with contextlib.suppress(Exception):  # (one that cannot is computed per channel block)
                    sch.compute_inline(b.block_rv)
        order = [sch.get(blk).name_hint for blk in sch.get_child_blocks(sc.root_block(sch))]
        out_block = sch.get_sblock(order[-1])
        out_loops = sch.get_loops(out_block)
        r = sch.fuse(*out_loops[:rows]) if rows > 1 else out_loops[0]
        sch.vectorize(sch.get_loops(out_block)[-1])
        _under_rows(sch, order, r)
        for name in order[:-1]:
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)
            if _reduces(sch, block):  # (.., lanes, pixels) -> (.., pixels, lanes), the lanes one vector
                inner = loops[-len(kinds[0]) + rows:]
                lane_loop, pixel_loops = inner[0], inner[1:]
                sch.reorder(*pixel_loops, lane_loop)
                sch.vectorize(lane_loop)
                sch.decompose_reduction(block, pixel_loops[0])
            elif sc.static_extent(sch, loops[-1]) == lanes:
                sch.vectorize(loops[-1])
        return sch


RULES = [LaneReduce(), RowReduce(), Elementwise()]  # (RowReduce would take a lane reduction's normalized form)
