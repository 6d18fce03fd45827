"""CPU schedule of the Winograd conv (targets/winograd.py), in one of two forms, with the conv's
epilogue computed by the output transform.

Where the activations outweigh the weight (a^2 (CI + CO) P > a^2 CI CO: large maps, few
channels), one parallel loop over blocks of tiles (r rows of tiles, and g groups of output
channel blocks), each iteration keeping its V and M in the core's cache:

    parallel n, block of r tile rows, channel group
        input transform   ci block, tile                 (rows, then columns, per tile in registers)
        matmuls (a x a)   e, fo, po, rc, rk, pi x fv x o (the register tile below)
        output transform  fo, tile row, tile, i, j (unrolled), lanes; the epilogue inlined

Elsewhere (a weight of many channels over a small map, read once rather than once per block):
three loop nests, each its own parallel loop:

    input transform   parallel ci block, tile p          (the padding read through its condition)
                        e1, e2 (unrolled: a x a explicit sums), lanes vectorized
    matmuls (a x a)   parallel e = (e1, e2), fo
                        po                               (register tiles of xr tiles)
                          rc, rk                         (reduction)
                            pi (unrolled xr) x fv (unrolled nv) x o (the lanes: one vector)
                        acc -> M, one vector per tile and channel block
    output transform  parallel n, fo, ty
                        tx, i, j (unrolled), lanes vectorized; bias, activation, residual inlined

The matmul's register tile is sched_nchwc.ConvNCHWc's: xr x nv accumulators, nv weight vectors
and a broadcast, the tiles taking the place of a row's pixels. One conv alone, one loop against
three (`tools/ab.py`, medians of 21, Zen 4, 1 / 2 threads): 64 -> 64 at 112 x 112 4.06 / 2.17
against 5.39 / 3.17 ms; at 56 x 56 0.92 / 0.48 against 0.99 / 0.50 ms; 32 -> 32 at 56 x 56
0.33 / 0.22 against 0.36 / 0.24 ms. On ResNet-18's 14 x 14 and 7 x 7 maps one loop was slower
(each block read the whole weight: 1.41 against 1.03 ms for a 256-channel conv at 2 threads).
The tuner may choose either form (knob `fused`).

Over a symbolic image size (tiles counted at run time, rounded up to whole register tiles:
winograd.SYMBOLIC_TILE_BLOCK) the three loop nests, their parallel loops fusing the symbolic
loop outside a static one so that the fused index divides by a constant (fused the other way,
each of the unrolled loads divided by the symbolic tile count: a model of one such conv took
10.5 s to build, 3.5 s after; the dynamic ResNet-18 150 s, 37 s after). Should TVM not place a stage of either form, each stage runs as its own parallel,
vectorized loop nest (`_plain`), never TVM's default code.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tvm import s_tir, tirx
from tvm.target import Target

from ember.targets import sched_common as sc
from ember.targets.sched_conv import _column_block
from ember.targets.winograd import (
    INPUT_BLOCK,
    INPUT_ROWS_BLOCK,
    MATMUL_BLOCK,
    OUTPUT_BLOCK,
    OUTPUT_COLUMNS_BLOCK,
    TILE_ORIGIN_BLOCK,
)

log = logging.getLogger(__name__)


def _vectors(func: tirx.PrimFunc, cob: int, regs: int) -> tuple[int, int]:
    """(nv, cap): output channel vectors per register tile (the knob, else 2 where they pair),
    and the most tiles the accumulators may hold beside nv weight vectors and a broadcast."""
    nv = sc.knob(func, "nv", 2 if cob % 2 == 0 else 1)
    if nv < 1 or cob % nv:
        raise ValueError(f"nv={nv} does not split {cob} channel blocks")
    return nv, max(4, (regs - nv - 2) // nv)


def _named(blocks: list[Any], name: str) -> Any | None:
    found = [b for b in blocks if b.name == name]
    return found[0] if len(found) == 1 else None


class WinogradNCHWc:
    """The Winograd conv's three stages (module doc)."""

    name = "ember.WinogradNCHWc"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        try:
            return self._schedule(func, target, fused=None)
        except Exception as err:
            if sc.knob(func, "fused") is not None:
                raise
            # (the three loop nests, should the one loop not take a shape: never TVM's default
            # schedule, 300x slower)
            log.debug("the Winograd conv as one loop failed (%s): three loop nests", err)
            try:
                return self._schedule(func, target, fused=False)
            except Exception as err:  # (TVM could not place a stage: every stage its own parallel loop nest)
                log.info("a Winograd conv kept plain loop nests (%s)",
                         str(err).splitlines()[0] if str(err) else type(err).__name__)
                return self._plain(func, target)

    @staticmethod
    def _plain(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule:
        """Each stage its own loop nest: parallel outside, the channel lanes vectorized (the
        matmuls with their reduction inside the lanes' loop); no stage computed at another."""
        sch = s_tir.Schedule(func)
        lanes, cores = sc.vector_lanes(target, "float32"), sc.num_cores(target)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(block).name_hint == MATMUL_BLOCK:
                e1, e2, f, p, o, rc, rk = sch.get_loops(block)
                sch.reorder(e1, e2, f, p, rc, rk, o)
                sc.parallel(sch, sch.fuse(e1, e2, f))
                sch.vectorize(o)
            else:
                sc.vectorize_inner(sch, block, lanes, cores)
        return sch

    def _schedule(self, func: tirx.PrimFunc, target: Target, fused: bool | None) -> s_tir.Schedule | None:
        """The kernel as one parallel loop over blocks of tiles (`fused`; None: where the
        activations outweigh the weight, or as the knob says) or as three loop nests."""
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None or not kernel.anchor.name.startswith(MATMUL_BLOCK):
            return None
        sch = kernel.sch
        names = [b.name for b in kernel.blocks]
        stages = [INPUT_ROWS_BLOCK, INPUT_BLOCK, MATMUL_BLOCK, OUTPUT_COLUMNS_BLOCK, OUTPUT_BLOCK]
        if any(names.count(name) != 1 for name in stages):
            return None
        first = names.index(INPUT_ROWS_BLOCK)
        if names[first:first + len(stages)] != stages:
            return None
        rows, transform_in, _, columns, transform_out = (_named(kernel.blocks, name) for name in stages)
        for info in kernel.blocks[:first]:  # (a prologue, if any: inlined into the input transform)
            if info.name != TILE_ORIGIN_BLOCK:  # (the tiles' origins: computed once, in their own loop)
                sch.compute_inline(info.block_rv)
        lanes = sc.vector_lanes(target, "float32")
        left = self._epilogue(sch, kernel.blocks[first + len(stages):])
        regs = sc.vector_registers(target)
        m = sc.static_extent(sch, sch.get_loops(columns.block_rv)[1])  # (columns [a, m, ...]: the tile side)
        symbolic = sc.static_extent(sch, sch.get_loops(kernel.anchor.block_rv)[3]) is None
        if symbolic:  # (tiles counted at run time: the three loop nests)
            fused = False
        elif fused is None:
            fused = bool(sc.knob(func, "fused", int(self._activations_outweigh_weight(sch, kernel.anchor.block_rv))))
        if fused:
            self._fused(sch, func, rows.block_rv, transform_in.block_rv, kernel.anchor.block_rv, columns.block_rv,
                        transform_out.block_rv, m, regs, sc.num_cores(target))
        else:
            self._input(sch, rows.block_rv, transform_in.block_rv)
            self._matmul(sch, func, kernel.anchor.block_rv, lanes, regs)
            self._output(sch, columns.block_rv, transform_out.block_rv, m)
        for block in left:  # (last: a predicated nest of the epilogue breaks the compute_at's above)
            sc.vectorize_inner(sch, block, lanes, sc.num_cores(target))
        return sch

    @staticmethod
    def _activations_outweigh_weight(sch: s_tir.Schedule, mm: Any) -> bool:
        """Whether the transformed input and the matmuls' output (a^2 (CI + CO) P) outweigh the
        transformed weight (a^2 CI CO)."""
        _, _, f, p, o, rc, rk = (sc.static_extent(sch, lp) for lp in sch.get_loops(mm))
        ci, co = rc * rk, f * o
        return (ci + co) * p > ci * co

    @classmethod
    def _fused(cls, sch: s_tir.Schedule, func: tirx.PrimFunc, rows: Any, v: Any, mm: Any, columns: Any, out: Any,
               m: int, regs: int, cores: int) -> None:
        """One parallel loop over blocks of tiles (and groups of output channel blocks): each
        iteration transforms its tiles' input, runs the matmuls for them and writes their output,
        V and M staying in the core's cache."""
        *outer, y, x, o = sch.get_loops(out)
        *batch, f = outer
        oh, ow, cob = sc.static_extent(sch, y), sc.static_extent(sch, x), sc.static_extent(sch, f)
        th, tw = -(-oh // m), -(-ow // m)
        nv, cap = _vectors(func, cob, regs)
        r = sc.knob(func, "r", max(d for d in range(1, th + 1) if th % d == 0 and (d == 1 or d * tw <= cap)))
        if r < 1 or th % r:
            raise ValueError(f"r={r} does not split {th} rows of tiles")
        per_block = r * tw
        xr = sc.knob(func, "xr", _column_block(per_block, cap))
        blocks = math.prod(sc.static_extent(sch, lp) for lp in batch) * (th // r)
        groups = [g for g in range(1, cob // nv + 1) if (cob // nv) % g == 0]
        g = sc.knob(func, "g", next((g for g in groups if blocks * g >= 4 * cores), groups[-1]))
        if g < 1 or (cob // nv) % g:
            raise ValueError(f"g={g} does not split {cob // nv} channel panels")
        ty, i = sch.split(y, [None, m])
        tx, j = sch.split(x, [None, m])
        tyo, tyi = sch.split(ty, [None, r])
        fg, fi = sch.split(f, [g, None])
        sch.reorder(*batch, tyo, fg, fi, tyi, tx, i, j, o)
        unit = sch.fuse(*batch, tyo, fg)
        sch.unroll(i)
        sch.unroll(j)
        sch.vectorize(o)
        cls._per_tile(sch, columns, tx)
        # the matmuls for the block's tiles and channel group, on the register tile
        sch.compute_at(mm, unit, preserve_unit_loops=True)
        *_, rc = cls._register_tile(sch, mm, sch.get_loops(mm)[1:], nv, xr)
        # the block's input transform (every input channel block; repeated per channel group)
        sch.compute_at(v, unit, preserve_unit_loops=True)
        t1, t2, c, p, k = sch.get_loops(v)[1:]
        sch.reorder(c, p, t1, t2, k)
        sch.unroll(t1)
        sch.unroll(t2)
        sch.vectorize(k)
        cls._per_tile(sch, rows, p)
        sc.parallel(sch, unit)
        sch.decompose_reduction(mm, rc)

    @staticmethod
    def _epilogue(sch: s_tir.Schedule, after: list[Any]) -> list[Any]:
        """The epilogue inlined into the output transform where it reduces to one block (bias,
        activation, a residual add); else the blocks that stay their own loop nests (to be
        vectorized)."""
        epilogue = sc.inline_epilogue(sch, after)
        blocks = [epilogue] if epilogue is not None else [info.block_rv for info in after if sc.exists(sch, info.block_rv)]
        left = []
        for block in blocks:
            try:
                sch.reverse_compute_inline(block)
            except Exception:
                left.append(block)
        return left

    @staticmethod
    def _unroll_below(sch: s_tir.Schedule, block: Any, at: Any) -> None:
        """The block's loops under `at` unrolled, its innermost (the lanes) vectorized."""
        loops = sch.get_loops(block)
        start = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at))) + 1
        for lp in loops[start:-1]:
            sch.unroll(lp)
        sch.vectorize(loops[-1])

    @classmethod
    def _per_tile(cls, sch: s_tir.Schedule, stage: Any, at: Any) -> None:
        """A transform's first pass computed per tile (under `at`) into registers; where TVM
        cannot place it there (over a symbolic size it may not prove that the stage covers
        what the next reads), its own loop nest through memory."""
        try:
            sch.compute_at(stage, at)
        except s_tir.ScheduleError:
            cls._tile_nest(sch, stage)
            return
        sch.set_scope(stage, 0, "local")
        cls._unroll_below(sch, stage, at)

    @staticmethod
    def _tile_nest(sch: s_tir.Schedule, block: Any) -> Any:
        """A transform stage [t1, t2, channels, tiles, lanes] as parallel tiles, the transform's
        indices unrolled, lanes vectorized; the tiles' loop."""
        t1, t2, c, p, k = sch.get_loops(block)
        if sc.static_extent(sch, p) is None:  # (tiles counted at run time: fused with the static loop inside,
            sch.reorder(p, c, t1, t2, k)        # so that the fused index divides by a constant)
            tile = sch.fuse(p, c)
        else:
            sch.reorder(c, p, t1, t2, k)
            tile = sch.fuse(c, p)
        sc.parallel(sch, tile)
        sch.unroll(t1)
        sch.unroll(t2)
        sch.vectorize(k)
        return tile

    @classmethod
    def _input(cls, sch: s_tir.Schedule, rows: Any, block: Any) -> None:
        cls._per_tile(sch, rows, cls._tile_nest(sch, block))

    @classmethod
    def _matmul(cls, sch: s_tir.Schedule, func: tirx.PrimFunc, block: Any, lanes: int, regs: int) -> None:
        loops = sch.get_loops(block)
        nv, cap = _vectors(func, sc.static_extent(sch, loops[2]), regs)
        count = sc.static_extent(sch, loops[3])
        if count is None:  # (tiles counted at run time, in whole blocks: the largest up to cap that divides them)
            count = next(c for c in range(cap, 0, -1) if sc.divisible(sch, loops[3], c))
        xr = sc.knob(func, "xr", _column_block(count, cap))
        e1, e2, fo, rc = cls._register_tile(sch, block, loops, nv, xr)
        sc.parallel(sch, sch.fuse(e1, e2, fo))
        sch.decompose_reduction(block, rc)

    @classmethod
    def _register_tile(cls, sch: s_tir.Schedule, block: Any, loops: list[Any], nv: int, xr: int) -> tuple[Any, ...]:
        """The matmuls' loops (e1, e2, f, p, o, rc, rk) on the register tile: xr tiles x nv
        channel vectors accumulated in registers over (rc, rk); (e1, e2, fo, rc)."""
        e1, e2, f, p, o, rc, rk = loops
        fo, fv = sch.split(f, [None, nv])
        po, pi = sch.split(p, [None, xr])
        sch.reorder(e1, e2, fo, po, rc, rk, pi, fv, o)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, po)
        cls._unroll_below(sch, acc, po)  # (the tile's pi, fv unrolled; its lanes vectorized)
        sch.unroll(pi)
        sch.unroll(fv)
        sch.vectorize(o)
        return e1, e2, fo, rc

    @classmethod
    def _output(cls, sch: s_tir.Schedule, columns: Any, block: Any, m: int) -> None:
        *outer, y, x, o = sch.get_loops(block)  # (a batch of one: no loop n)
        ty, i = sch.split(y, [None, m])
        tx, j = sch.split(x, [None, m])
        sch.reorder(*outer, ty, tx, i, j, o)
        if sc.static_extent(sch, ty) is None:  # (a symbolic image: the channel blocks fused inside the rows)
            *batch, f = outer
            sch.reorder(*batch, ty, f)
            sc.parallel(sch, sch.fuse(*batch, ty, f))
        else:
            sc.parallel(sch, sch.fuse(*outer, ty))
        sch.unroll(i)
        sch.unroll(j)
        sch.vectorize(o)
        cls._per_tile(sch, columns, tx)

    def knob_space(self, func: tirx.PrimFunc, target: Target) -> dict[str, list[int]]:
        """What the tuner may try: vectors per tile, tiles per register tile."""
        return {"fused": [0, 1], "nv": [1, 2, 4], "xr": [4, 6, 7, 8, 12, 14], "r": [1, 2, 4, 7], "g": [1, 2, 4, 8]}


RULES = [WinogradNCHWc()]
