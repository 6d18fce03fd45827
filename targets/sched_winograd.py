"""CPU schedule of the Winograd conv (targets/winograd.py): its three stages, each its own
parallel loop nest, with the conv's epilogue computed by the output transform.

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
and a broadcast, the tiles taking the place of a row's pixels.
"""

from __future__ import annotations

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
)


def _named(blocks: list[Any], name: str) -> Any | None:
    found = [b for b in blocks if b.name == name]
    return found[0] if len(found) == 1 else None


class WinogradNCHWc:
    """The Winograd conv's three stages (module doc)."""

    name = "ember.WinogradNCHWc"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
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
            sch.compute_inline(info.block_rv)
        lanes = sc.vector_lanes(target, "float32")
        self._epilogue(sch, kernel.blocks[first + len(stages):], lanes, sc.num_cores(target))
        regs = sc.vector_registers(target)
        self._input(sch, rows.block_rv, transform_in.block_rv)
        self._matmul(sch, func, kernel.anchor.block_rv, lanes, regs)
        m = sc.static_extent(sch, sch.get_loops(columns.block_rv)[1])  # (columns [a, m, ...]: the tile side)
        self._output(sch, columns.block_rv, transform_out.block_rv, m)
        return sch

    @staticmethod
    def _epilogue(sch: s_tir.Schedule, after: list[Any], lanes: int, cores: int) -> None:
        """The epilogue inlined into the output transform where it reduces to one block (bias,
        activation, a residual add); else each block left its own vectorized loop nest."""
        epilogue = sc.inline_epilogue(sch, after)
        left = [epilogue] if epilogue is not None else [info.block_rv for info in after if sc.exists(sch, info.block_rv)]
        for block in left:
            try:
                sch.reverse_compute_inline(block)
            except Exception:
                sc.vectorize_inner(sch, block, lanes, cores)

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
        """A transform's first pass computed per tile (under `at`) into registers."""
        sch.compute_at(stage, at)
        sch.set_scope(stage, 0, "local")
        cls._unroll_below(sch, stage, at)

    @staticmethod
    def _tile_nest(sch: s_tir.Schedule, block: Any) -> Any:
        """A transform stage [t1, t2, channels, tiles, lanes] as parallel tiles, the transform's
        indices unrolled, lanes vectorized; the tiles' loop."""
        t1, t2, c, p, k = sch.get_loops(block)
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
        e1, e2, f, p, o, rc, rk = sch.get_loops(block)
        cob, count = sc.static_extent(sch, f), sc.static_extent(sch, p)
        nv = sc.knob(func, "nv", 2 if cob % 2 == 0 else 1)
        if nv < 1 or cob % nv:
            raise ValueError(f"nv={nv} does not split {cob} channel blocks")
        cap = max(4, (regs - nv - 2) // nv)
        xr = sc.knob(func, "xr", _column_block(count, cap))
        fo, fv = sch.split(f, [None, nv])
        po, pi = sch.split(p, [None, xr])
        sch.reorder(e1, e2, fo, po, rc, rk, pi, fv, o)
        outer = sch.fuse(e1, e2, fo)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, po)
        cls._unroll_below(sch, acc, po)  # (the tile's pi, fv unrolled; its lanes vectorized)
        sch.unroll(pi)
        sch.unroll(fv)
        sch.vectorize(o)
        sc.parallel(sch, outer)
        sch.decompose_reduction(block, rc)

    @classmethod
    def _output(cls, sch: s_tir.Schedule, columns: Any, block: Any, m: int) -> None:
        *outer, y, x, o = sch.get_loops(block)  # (a batch of one: no loop n)
        ty, i = sch.split(y, [None, m])
        tx, j = sch.split(x, [None, m])
        sch.reorder(*outer, ty, tx, i, j, o)
        sc.parallel(sch, sch.fuse(*outer, ty))
        sch.unroll(i)
        sch.unroll(j)
        sch.vectorize(o)
        cls._per_tile(sch, columns, tx)

    def knob_space(self, func: tirx.PrimFunc, target: Target) -> dict[str, list[int]]:
        """What the tuner may try: vectors per tile, tiles per register tile."""
        return {"nv": [1, 2, 4], "xr": [4, 6, 7, 8, 12, 14]}


RULES = [WinogradNCHWc()]
