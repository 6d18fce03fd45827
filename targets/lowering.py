"""ember's TIR lowering pipeline: TVM's default one, plus register tiles placed on the stack.

TVM lowers a constant-size CPU allocation to a stack alloca only when it is "global" scope and
under 1024 bytes (`runtime::kMaxStackAlloca`); anything else becomes TVMBackendAllocWorkspace,
a heap pointer. LLVM promotes a stack tile whose every access has a constant index (an unrolled
register tile) to registers; a workspace pointer it cannot prove distinct from the kernel's
operands, so a workspace accumulator is stored after every FMA unless LLVM happens to inline the
kernel's compute function into a context where it can (which depends on what else the library
holds: a CRNN's convs ran 2.3 or 5.7 ms depending on its LSTM kernels).

`stack_tiles` marks every constant-size CPU allocation of at most STACK_TILE_BYTES with TVM's
`disable_lower_builtin` annotation, which LowerTVMBuiltin honours by leaving it an alloca. The
schedule rules may then keep accumulator tiles of up to STACK_TILE_BYTES (`sched_common.
MAX_STACK_BYTES`): the matmul's tile of 24 accumulators (1536 bytes) instead of 14.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, sym, tirx

# The largest allocation kept on the stack. A kernel runs on TVM's worker threads (8 MB stacks)
# and holds a handful of such tiles at most.
STACK_TILE_BYTES = 4096

DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin
PIPELINE = "ember"


def _stack_size(buffer: tirx.Buffer) -> int | None:
    """The bytes of a constant-size flat allocation, None when not constant."""
    if len(buffer.shape) != 1 or not isinstance(buffer.shape[0], tirx.IntImm):
        return None
    return int(buffer.shape[0]) * tvm.DataType(str(buffer.dtype)).bits * tvm.DataType(str(buffer.dtype)).lanes // 8


def _is_cpu(func: tirx.PrimFunc) -> bool:
    target = func.attrs.get("target") if func.attrs is not None else None
    return target is None or target.kind.name in ("llvm", "c")


@tirx.transform.prim_func_pass(opt_level=0, name="ember.StackTiles")
def stack_tiles(func: tirx.PrimFunc, _mod: Any, _ctx: Any) -> tirx.PrimFunc:
    """Keep small constant-size CPU allocations on the stack (see the module docstring)."""
    if not _is_cpu(func):
        return func

    def mark(stmt: tirx.AllocBuffer) -> tirx.AllocBuffer:
        if DISABLE_LOWER_BUILTIN in stmt.annotations:
            return stmt
        nbytes = _stack_size(stmt.buffer)
        if nbytes is None or not 0 < nbytes <= STACK_TILE_BYTES:
            return stmt
        return tirx.AllocBuffer(stmt.buffer, {**dict(stmt.annotations), DISABLE_LOWER_BUILTIN: tirx.IntImm("int32", 1)},
                                stmt.span)

    body = tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, mark)])
    return func if body.same_as(func.body) else func.with_body(body)


# A loop over register tiles of columns annotated FULL_TILES = tile (sched_nchwc.ConvNCHWc over
# a symbolic width): each tile computes `tile` columns of a block axis whose extent (`columns`)
# is only known at run time, its blocks predicated `column < columns`.
FULL_TILES = "ember_full_tiles"


@tirx.transform.prim_func_pass(opt_level=0, name="ember.SplitFullTiles")
def split_full_tiles(func: tirx.PrimFunc, _mod: Any, _ctx: Any) -> tirx.PrimFunc:
    """`for t in range(E)` annotated FULL_TILES -> `for t: if (t + 1) * tile <= columns: full
    else: last`. `full` is the body without its column predicates (every column of a full tile
    is in range). Where `columns` is a multiple of half a tile (the emitter computes whole
    blocks, two to a tile) and E = ceil(columns / tile), the last tile holds exactly half a
    tile: `last` runs the tile's column loops over that half, without predicates either;
    otherwise it is the body as it is.
    (TVM 0.27's LoopPartition does not split a loop of symbolic extent: every FMA of a tile
    ran behind its column's predicate.)"""

    def split(loop: tirx.For) -> tirx.For:
        if FULL_TILES not in loop.annotations:
            return loop
        tile = int(loop.annotations[FULL_TILES])
        rest = {k: v for k, v in loop.annotations.items() if k != FULL_TILES}
        body = loop.body
        columns = _columns(loop.body, loop.loop_var)
        if columns is not None:
            var = loop.loop_var
            one, size = tirx.const(1, var.ty.dtype), tirx.const(tile, var.ty.dtype)
            full = (var + one) * size <= columns
            last = body
            analyzer = sym.Analyzer()
            if (tile % 2 == 0 and analyzer.can_prove(tirx.floormod(columns, tile // 2) == 0)
                    and analyzer.can_prove(loop.extent == tirx.floordiv(columns + size - one, size))):
                last = _in_range(_narrowed(body, var, tile, tile // 2), var, tile, tile // 2, columns)
            body = tirx.IfThenElse(full, _in_range(body, var, tile, tile, columns), last)
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, rest,
                        loop.step, loop.span)

    body = tvm_ffi.structural_map(func.body, [(tirx.For, split)])
    return func if body.same_as(func.body) else func.with_body(body)


def _uses(expr: Any, var: Any) -> bool:
    """Whether an expression mentions a variable (as sched_common.uses, which imports this module)."""
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _column_values(body: Any, var: Any) -> list[tuple[Any, Any]]:
    """(binding, block axis) of every block axis under the tile loop bound to an expression of
    its variable: the tile's columns."""
    found: list[tuple[Any, Any]] = []

    def visit(realize: s_tir.SBlockRealize) -> None:
        found.extend((value, iv) for value, iv in zip(realize.iter_values, realize.block.iter_vars) if _uses(value, var))

    tvm_ffi.structural_walk(body, [(s_tir.SBlockRealize, visit)])
    return found


def _columns(body: Any, var: Any) -> Any | None:
    """The extent of the column axis (the columns the tiles cover), None when no block binds one."""
    found = _column_values(body, var)
    return found[0][1].dom.extent if found else None


def _narrowed(body: Any, var: Any, tile: int, width: int) -> Any:
    """`body` with the constant loops that step through a tile's columns (a column axis bound to
    `var * tile + loop`) running over the first `width` columns only."""
    analyzer = sym.Analyzer()
    start = var * tirx.const(tile, var.ty.dtype)
    inner = [offset for offset in (analyzer.simplify(value - start) for value, _ in _column_values(body, var))
             if isinstance(offset, tvm.ir.expr.Var)]

    def narrow(loop: tirx.For) -> tirx.For:
        if not any(loop.loop_var.same_as(v) for v in inner) or not isinstance(loop.extent, tirx.IntImm):
            return loop
        return tirx.For(loop.loop_var, loop.min, tirx.const(min(width, int(loop.extent)), loop.extent.ty.dtype), loop.kind,
                        loop.body, loop.thread_binding, loop.annotations, loop.step, loop.span)

    # (fresh loop variables: TVM's passes bind one range per variable, and the full tiles' copy
    # keeps the originals)
    fresh: dict[Any, Any] = {}

    def collect(loop: tirx.For) -> None:
        fresh[loop.loop_var] = tirx.Var(f"{loop.loop_var.name}_last", loop.loop_var.ty.dtype)

    tvm_ffi.structural_walk(body, [(tirx.For, collect)])
    narrowed = tvm_ffi.structural_map(body, [(tirx.For, narrow)])
    return tvm_ffi.structural_map(narrowed, [(tvm.ir.expr.Var, lambda v: fresh.get(v, v))])


def _conjuncts(expr: Any) -> list[Any]:
    return [*_conjuncts(expr.a), *_conjuncts(expr.b)] if isinstance(expr, tirx.And) else [expr]


def _in_range(body: Any, var: Any, tile: int, width: int, columns: Any) -> Any:
    """`body` with each block predicate's `column < columns` terms dropped, where `column` is
    provably within [var * tile, var * tile + width) over the constant loops under the tile
    loop (the caller knows that the tile's first `width` columns are in range)."""
    analyzer = sym.Analyzer()

    def bind(loop: tirx.For) -> None:
        if isinstance(loop.min, tirx.IntImm) and isinstance(loop.extent, tirx.IntImm):
            analyzer.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))

    tvm_ffi.structural_walk(body, [(tirx.For, bind)])
    start = var * tirx.const(tile, var.ty.dtype)

    def in_range(term: Any) -> bool:
        if not (isinstance(term, tirx.LT) and tvm_ffi.structural_equal(term.b, columns)):
            return False
        offset = term.a - start
        return bool(analyzer.can_prove(offset >= 0) and analyzer.can_prove(offset < width))

    def drop(realize: s_tir.SBlockRealize) -> s_tir.SBlockRealize:
        terms = _conjuncts(realize.predicate)
        kept = [t for t in terms if not in_range(t)]
        if len(kept) == len(terms):
            return realize
        predicate = tirx.all(*kept) if kept else tirx.const(True, "bool")
        return s_tir.SBlockRealize(realize.iter_values, predicate, realize.block, realize.span)

    return tvm_ffi.structural_map(body, [(s_tir.SBlockRealize, drop)])


def _pipeline(**kwargs: Any) -> tuple[Any, Any, Any]:
    main, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir", **kwargs)
    return tvm.transform.Sequential([split_full_tiles, main, stack_tiles]), finalize_host, finalize_device


tvm.tirx.compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)
