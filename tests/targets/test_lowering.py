"""ember's TIR lowering pipeline keeps register tiles of up to STACK_TILE_BYTES on the stack,
and splits full tiles off a loop over a symbolic number of columns.

TVM's own lowering turns a tile of 1024 bytes or more into TVMBackendAllocWorkspace (a heap
pointer LLVM spills every accumulator through); ember's pipeline leaves it an alloca. Checked on
the LLVM IR of a scheduled kernel and on its answers with a 4 KB tile; and the matmul rule's
choice of a 24-accumulator tile (1536 bytes), which relies on it.

`split_full_tiles`: the exact IR it makes of an annotated tile loop (full tiles and a half last
tile without column predicates; a ragged last tile kept predicated), and the built kernel's
answers at widths with and without full tiles and a last one."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from ember.targets import lowering
from ember.targets.sched_matmul import _tile

WORKSPACE = "TVMBackendAllocWorkspace"


def tiled_kernel(tile_rows: int) -> tvm.IRModule:
    """C = A @ B (64 x 32 x 64) with a `tile_rows` x 64 float accumulator tile per row block."""
    a = te.placeholder((64, 32), "float32", name="A")
    b = te.placeholder((32, 64), "float32", name="B")
    k = te.reduce_axis((0, 32), name="k")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, c]).with_attr("global_symbol", "main"))
    block = sch.get_sblock("C")
    i, j, kk = sch.get_loops(block)
    io, ii = sch.split(i, [None, tile_rows])
    sch.reorder(io, kk, ii, j)
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, io)
    sch.unroll(ii)
    sch.vectorize(j)
    return sch.mod


def llvm_ir(mod: tvm.IRModule, pipeline: str) -> str:
    lib = tvm.tirx.build(mod, target="llvm", pipeline=pipeline)
    return lib.inspect_source("ll")


@pytest.mark.parametrize(("rows", "on_stack"), [(4, True), (16, True), (17, False)])
def test_tiles_up_to_the_limit_stay_on_the_stack(rows: int, on_stack: bool) -> None:
    """A tile of rows x 64 floats: 1 KB and 4 KB (the limit) on the stack, 4352 bytes (17 rows,
    a guarded last tile) on the heap."""
    assert lowering.STACK_TILE_BYTES == 4096
    mod = tiled_kernel(rows)
    ir = llvm_ir(mod, lowering.PIPELINE)
    assert (WORKSPACE not in ir) == on_stack, ir[:2000]
    assert (WORKSPACE in llvm_ir(mod, "default")) == (rows * 64 * 4 >= 1024)  # TVM's own limit: under 1024 bytes


def test_answers_unchanged(rng: np.random.Generator) -> None:
    """The kernel computes A @ B with the tile on the stack."""
    lib = tvm.tirx.build(tiled_kernel(16), target="llvm", pipeline=lowering.PIPELINE)
    a = rng.standard_normal((64, 32)).astype(np.float32)
    b = rng.standard_normal((32, 64)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((64, 64), np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_takes_24_accumulators_with_a_packed_weight() -> None:
    """AVX-512 (32 registers): 6 x 4 vectors where 4 divide the columns, else 8 x 3, else 7 x 2;
    AVX2 (16 registers) keeps a tile its registers hold; an activation B keeps the short tiles."""
    assert _tile(16, 32, 48, 197, 4, ragged_ok=True, packed_b=True) == (6, 4)
    assert _tile(16, 32, 3, 128, 4, packed_b=True) == (8, 3)
    assert _tile(16, 32, 2, 197, 4, ragged_ok=True, packed_b=True) == (7, 2)
    assert _tile(8, 16, 48, 128, 4, packed_b=True) == (4, 2)
    assert _tile(16, 32, 48, 128, 4, packed_b=False) == (4, 3)


# --- full tiles split off a loop over a symbolic number of columns ----------------------------

def column_tiles(block: int, tile: int = 14) -> tvm.IRModule:
    """B = A * 2 over `wide` = W rounded up to whole blocks of `block` rows (as the blocked conv
    computes a symbolic width), in tiles of `tile` rows (the loop annotated FULL_TILES); `N`
    carries W (a buffer's extent binds it)."""
    w = tvm.tirx.Var("W", "int64")
    wide = (w + block - 1) // block * block
    a = te.placeholder((wide, 16), "float32", name="A")
    n = te.placeholder((w,), "float32", name="N")
    b = te.compute((wide, 16), lambda x, i: a[x, i] * 2.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, n, b]).with_attr("global_symbol", "main"))
    x, i = sch.get_loops(sch.get_sblock("B"))
    xo, xi = sch.split(x, [None, tile])
    sch.unroll(xi)
    sch.vectorize(i)
    sch.annotate(xo, lowering.FULL_TILES, tile)
    return sch.mod


SPLIT_HALVES = '''
    for x_0 in range(((W + T.int64(6)) // T.int64(7) * T.int64(7) + T.int64(13)) // T.int64(14)):
        if (x_0 + T.int64(1)) * T.int64(14) <= (W + T.int64(6)) // T.int64(7) * T.int64(7):
            for x_1 in T.unroll(T.int64(14)):
                for i in T.vectorized(16):
                    with T.sblock("B"):
                        v_x = T.axis.spatial((W + T.int64(6)) // T.int64(7) * T.int64(7), x_0 * T.int64(14) + x_1)
                        v_i = T.axis.spatial(16, i)
                        T.reads(A[v_x, v_i])
                        T.writes(B[v_x, v_i])
                        B[v_x, v_i] = A[v_x, v_i] * T.float32(2.0)
        else:
            for x_1_last in T.unroll(T.int64(7)):
                for i_last in T.vectorized(16):
                    with T.sblock("B"):
                        v_x = T.axis.spatial((W + T.int64(6)) // T.int64(7) * T.int64(7), x_0 * T.int64(14) + x_1_last)
                        v_i = T.axis.spatial(16, i_last)
                        T.reads(A[v_x, v_i])
                        T.writes(B[v_x, v_i])
                        B[v_x, v_i] = A[v_x, v_i] * T.float32(2.0)'''


def _loops(mod: tvm.IRModule) -> str:
    text = mod["main"].script()
    return text[text.index("\n    for"):].rstrip()


def test_split_full_tiles_ir() -> None:
    """Whole blocks of 7 in tiles of 14: the full tiles run without the column predicate, and
    the last tile, which then holds exactly one block, over 7 columns without it either; its
    loops get fresh variables. Unannotated, the loop keeps its predicate."""
    mod = column_tiles(7)
    assert "T.where(x_0 * T.int64(14) + x_1 < " in _loops(mod)
    assert _loops(lowering.split_full_tiles(mod)) == SPLIT_HALVES


def test_split_full_tiles_keeps_a_ragged_last_tile_predicated() -> None:
    """Blocks of 5 in tiles of 14: the last tile holds 1 to 13 columns, so only the full tiles
    lose the predicate."""
    text = _loops(lowering.split_full_tiles(column_tiles(5)))
    full, last = text.split("else:")
    assert "if (x_0 + T.int64(1)) * T.int64(14) <= (W + T.int64(4)) // T.int64(5) * T.int64(5):" in full
    assert "T.where" not in full and "T.unroll(T.int64(14))" in full
    assert "T.where(x_0 * T.int64(14) + x_1 < (W + T.int64(4)) // T.int64(5) * T.int64(5))" in last
    assert "T.unroll(T.int64(14))" in last


@pytest.mark.parametrize("block", [7, 5])
def test_split_full_tiles_answers(block: int, rng: np.random.Generator) -> None:
    """Built with ember's pipeline, the kernel computes every row at widths with no full tile,
    with a last tile and without one."""
    lib = tvm.tirx.build(column_tiles(block), target="llvm", pipeline=lowering.PIPELINE)
    for width in (1, 6, 7, 8, 13, 14, 15, 20, 21, 28, 29, 50):
        wide = -(-width // block) * block
        a = rng.standard_normal((wide, 16)).astype(np.float32)
        out = tvm.runtime.tensor(np.full((wide, 16), np.nan, np.float32))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(np.zeros(width, np.float32)), out)
        np.testing.assert_array_equal(out.numpy(), a * 2, err_msg=f"width {width}")
