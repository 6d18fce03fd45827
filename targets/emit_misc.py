"""Emitters of ops without a family of their own: ReverseSequence, Unique, RotaryEmbedding,
MaxUnpool.

Where Relax ops express the op they are used (they get fused and scheduled):

    ReverseSequence  the time step each output reads, where(t < len, len - 1 - t, t) with
                     len clipped to [0, T], gathered along the time axis;
    RotaryEmbedding  slices of the head, the cos/sin rows picked by position_ids, two products
                     and a concat (interleaved pairs through a constant swap gather and sign).

Unique's output length depends on the data (the emit_dynamic scheme): one serial kernel sorts
the elements (or the slices along the axis) by a stable bottom-up merge sort, groups equal
neighbours and writes first index / count per group and each element's group; the VM binds
the group count to ember's run-time dim, and y is x taken at the first indices. MaxUnpool is
a scatter: a hand-written kernel that checks its indices, as the reference does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from ember.compiler.ir import Node
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    ScriptText,
    const,
    in_type,
    out_type,
    refuse,
    take,
)
from ember.targets.emit_dynamic import KERNEL_ATTRS, bind_length


def _arange(lo: int, hi: Any) -> relax.Expr:
    """[lo, hi) as int64: a constant when hi is known (legalized, a static arange becomes a
    constant inside the primitive function, which TVM refuses; a Relax constant is lifted to a
    parameter), else R.arange of the symbolic bound."""
    if isinstance(hi, int):
        return const(np.arange(lo, hi, dtype=np.int64))
    return R.arange(relax.prim_value(lo), relax.prim_value(hi), relax.prim_value(1), "int64")


# --- ReverseSequence -------------------------------------------------------------------------------
def _reverse_sequence(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    b_axis, t_axis = int(node.attrs["batch_axis"]), int(node.attrs["time_axis"])
    shape = lw.shape(t)
    steps_n, batch = shape[t_axis], shape[b_axis]
    steps, after = _arange(0, steps_n), _arange(1, steps_n + 1)
    lens = R.clip(R.reshape(a[1], [batch, 1]), relax.prim_value(0), relax.prim_value(steps_n))
    source = R.where(R.less(steps, lens), R.subtract(lens, after), R.broadcast_to(steps, [batch, steps_n]))
    if b_axis > t_axis:  # [time, batch]
        source = R.permute_dims(source, [1, 0])
    source = R.reshape(source, [shape[0], shape[1]] + [1] * (t.rank - 2))
    return [R.gather_elements(a[0], R.broadcast_to(source, shape), t_axis)]


# --- Unique ----------------------------------------------------------------------------------------
def unique_source(dt: str, rows: bool, sort: bool) -> str:
    """The Unique kernel: (x [n, k], size [2] (n, k), first [n], inverse [n], counts [n],
    num [1], order [n], tmp [n]); order and tmp are scratch.

    The order of x's rows (k elements each; one element when `rows` is False) by a stable
    bottom-up merge sort, comparing element by element with NaN after every number (numpy's
    sort order); equal neighbours form a group: for elements NaNs are equal (np.unique's
    equal_nan), for rows a NaN never is (numpy compares the rows as records). Groups are
    numbered in sorted order, or with `sort` False in the order of their first occurrence."""
    floats = dt in ("float16", "bfloat16", "float32", "float64")
    if dt in ("float16", "bfloat16"):
        load = 'T.Cast("float32", x[{r}, {c}])'
    elif dt == "bool":
        load = 'T.Cast("int32", x[{r}, {c}])'
    else:
        load = "x[{r}, {c}]"
    w = ScriptText()

    def compare(depth: int, ra: str, rb: str) -> None:
        """st[3] = 1 when row rb sorts before row ra, -1 when after, 0 when tied."""
        w(depth, "st[3] = T.int64(0)")
        w(depth, "st[4] = T.int64(0)")
        w(depth, "while st[3] == T.int64(0) and st[4] < k:")
        w(depth + 1, f"va = {load.format(r=ra, c='st[4]')}")
        w(depth + 1, f"vb = {load.format(r=rb, c='st[4]')}")
        if floats:
            w(depth + 1, "if vb < va or (T.isnan(va) and not T.isnan(vb)):")
            w(depth + 2, "st[3] = T.int64(1)")
            w(depth + 1, "if va < vb or (T.isnan(vb) and not T.isnan(va)):")
        else:
            w(depth + 1, "if vb < va:")
            w(depth + 2, "st[3] = T.int64(1)")
            w(depth + 1, "if va < vb:")
        w(depth + 2, "st[3] = T.int64(-1)")
        w(depth + 1, "st[4] = st[4] + T.int64(1)")

    def same(depth: int, ra: str, rb: str) -> None:
        """st[3] = 1 when rows ra and rb are one group."""
        w(depth, "st[3] = T.int64(1)")
        w(depth, "for c in range(k):")
        va, vb = load.format(r=ra, c="c"), load.format(r=rb, c="c")
        equal = f"{va} == {vb}"
        if floats and not rows:
            equal = f"{equal} or (T.isnan({va}) and T.isnan({vb}))"
        # (no negation of a float comparison: TVM makes `not a == b` an ordered a != b, false for NaN)
        w(depth + 1, f"st[3] = T.if_then_else({equal}, st[3], T.int64(0))")

    w(0, "@T.prim_func(private=True)")
    w(0, "def unique_sort(x_h: T.handle, size: T.Buffer((2,), \"int64\"), first_h: T.handle, inv_h: T.handle,"
         " counts_h: T.handle, num: T.Buffer((1,), \"int64\"), order_h: T.handle, tmp_h: T.handle):")
    w(1, KERNEL_ATTRS)
    w(1, "n = T.int64()")
    w(1, "k = T.int64()")
    w(1, f'x = T.match_buffer(x_h, (n, k), "{dt}")')
    for name in ("first", "inv", "counts", "order", "tmp"):
        w(1, f'{name} = T.match_buffer({name}_h, (n,), "int64")')
    # st: [width, left, right, compared, column, take left, groups, ranks]
    w(1, 'st = T.decl_buffer((8,), "int64")')
    w(1, "for i in range(size[0]):")
    w(2, "order[i] = i")
    w(1, "st[0] = T.int64(1)")
    w(1, "while st[0] < n:")
    w(2, "for blk in range((n + st[0] * T.int64(2) - T.int64(1)) // (st[0] * T.int64(2))):")
    w(3, "lo: T.int64 = blk * st[0] * T.int64(2)")
    w(3, "mid: T.int64 = T.min(lo + st[0], n)")
    w(3, "hi: T.int64 = T.min(lo + st[0] * T.int64(2), n)")
    w(3, "st[1] = lo")
    w(3, "st[2] = mid")
    w(3, "for q in range(hi - lo):")
    w(4, "st[5] = T.int64(1)")
    w(4, "if st[1] >= mid:")
    w(5, "st[5] = T.int64(0)")
    w(4, "else:")
    w(5, "if st[2] < hi:")
    compare(6, "order[st[1]]", "order[st[2]]")
    w(6, "if st[3] == T.int64(1):")  # the right one strictly first; ties keep the left (lower index)
    w(7, "st[5] = T.int64(0)")
    w(4, "if st[5] == T.int64(1):")
    w(5, "tmp[lo + q] = order[st[1]]")
    w(5, "st[1] = st[1] + T.int64(1)")
    w(4, "else:")
    w(5, "tmp[lo + q] = order[st[2]]")
    w(5, "st[2] = st[2] + T.int64(1)")
    w(3, "for q in range(hi - lo):")
    w(4, "order[lo + q] = tmp[lo + q]")
    w(2, "st[0] = st[0] * T.int64(2)")
    w(1, "st[6] = T.int64(0)")
    w(1, "for p in range(n):")
    w(2, "st[5] = T.int64(1)")  # a new group
    w(2, "if p > T.int64(0):")
    same(3, "order[p - T.int64(1)]", "order[p]")
    w(3, "st[5] = T.int64(1) - st[3]")
    w(2, "if st[5] == T.int64(1):")
    w(3, "first[st[6]] = order[p]")
    w(3, "counts[st[6]] = T.int64(0)")
    w(3, "st[6] = st[6] + T.int64(1)")
    w(2, "counts[st[6] - T.int64(1)] = counts[st[6] - T.int64(1)] + T.int64(1)")
    w(2, "inv[order[p]] = st[6] - T.int64(1)")
    w(1, "num[0] = st[6]")
    if not sort:  # renumber the groups by first occurrence: rank in order[], then permute
        w(1, "st[7] = T.int64(0)")
        w(1, "for i in range(n):")
        w(2, "if first[inv[i]] == i:")
        w(3, "order[inv[i]] = st[7]")
        w(3, "st[7] = st[7] + T.int64(1)")
        w(1, "for g in range(st[6]):")
        w(2, "tmp[order[g]] = first[g]")
        w(1, "for g in range(st[6]):")
        w(2, "first[g] = tmp[g]")
        w(1, "for g in range(st[6]):")
        w(2, "tmp[order[g]] = counts[g]")
        w(1, "for g in range(st[6]):")
        w(2, "counts[g] = tmp[g]")
        w(1, "for i in range(n):")
        w(2, "inv[i] = order[inv[i]]")
    return w.source()


UNIQUE_HEADS = """\
@T.prim_func(private=True)
def unique_heads(first_h: T.handle, counts_h: T.handle, idx_h: T.handle, cnt_h: T.handle):
    KERNEL_ATTRS
    n = T.int64()
    m = T.int64()
    first = T.match_buffer(first_h, (n,), "int64")
    counts = T.match_buffer(counts_h, (n,), "int64")
    idx = T.match_buffer(idx_h, (m,), "int64")
    cnt = T.match_buffer(cnt_h, (m,), "int64")
    for g in range(m):
        idx[g] = first[g]
        cnt[g] = counts[g]
""".replace("KERNEL_ATTRS", KERNEL_ATTRS)


def _unique(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    shape = lw.shape(t)
    axis = node.attrs.get("axis")
    if axis is None:
        n: Any = 1
        for d in shape:
            n = n * d
        k: Any = 1
        x = R.reshape(a[0], [n, 1])
        flat = R.reshape(a[0], [n])
    else:
        axis = int(axis) % t.rank
        n = shape[axis]
        k = 1
        for i, d in enumerate(shape):
            if i != axis:
                k = k * d
        moved = [axis] + [i for i in range(t.rank) if i != axis]
        x = R.reshape(R.permute_dims(a[0], moved), [n, k])
    dt = TVM_DTYPE[t.dtype]
    source = unique_source(dt, axis is not None, bool(node.attrs["sorted"]))
    gvar = lw.bb.add_func(tvm.script.from_source(source), "unique_sort")
    size = R.shape_to_tensor(relax.ShapeExpr([n, k]))
    per = relax.TensorType([n], "int64")
    found = lw.emit(relax.call_tir(gvar, relax.Tuple([lw.emit(x), lw.emit(size)]),
                                   [per, per, per, relax.TensorType([1], "int64"), per, per]))
    first, inverse, counts, num = (lw.emit(relax.TupleGetItem(found, i)) for i in range(4))
    name = out_type(node, 0).shape[0 if axis is None else axis]
    m = bind_length(lw, num, name)

    gvar = lw.bb.add_func(tvm.script.from_source(UNIQUE_HEADS), "unique_heads")
    heads = lw.emit(relax.call_tir(gvar, relax.Tuple([first, counts]), [relax.TensorType([m], "int64")] * 2))
    indices, counts = lw.emit(relax.TupleGetItem(heads, 0)), lw.emit(relax.TupleGetItem(heads, 1))
    y = take(flat, indices, 0, t.dtype, True) if axis is None else take(a[0], indices, axis, t.dtype, True)
    return [y, indices, inverse, counts][: len(node.outputs)]


# --- RotaryEmbedding -------------------------------------------------------------------------------
def _upcast(x: relax.Expr, dt: str, want: str) -> relax.Expr:
    """x (ember dtype dt) in the compute dtype `want`."""
    return x if TVM_DTYPE[dt] == want else R.astype(x, want)


def _rotary(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t, ct = in_type(lw, node, 0), in_type(lw, node, 1)
    shape = lw.shape(t)
    heads = int(node.attrs["num_heads"])
    head = t.shape[3] if t.rank == 4 else (t.shape[2] // heads if isinstance(t.shape[2], int) else None)
    if not isinstance(head, int):
        raise refuse(node, f"a head size known only at run time ({t})")
    rot = int(node.attrs["rotary_embedding_dim"]) or head
    half = rot // 2
    dt = "float64" if "f64" in (t.dtype, ct.dtype) else "float32"  # f16/bf16 in f32, rounded once
    x = _upcast(a[0], t.dtype, dt)
    # As [batch, seq, heads, head]: from [batch, heads, seq, head] or [batch, seq, hidden].
    if t.rank == 4:
        x = R.permute_dims(x, [0, 2, 1, 3])
        b, s = shape[0], shape[2]
    else:
        b, s = shape[0], shape[1]
        x = R.reshape(lw.emit(x), [b, s, heads, head])
    x = lw.emit(x)
    cos, sin = _upcast(a[1], ct.dtype, dt), _upcast(a[2], ct.dtype, dt)
    if len(a) > 3 and a[3] is not None:  # rows of the caches picked by position_ids [batch, seq]
        cos, sin = take(cos, a[3], 0, ct.dtype), take(sin, a[3], 0, ct.dtype)  # (position_ids: the model's input)
    cos, sin = lw.emit(R.reshape(cos, [b, s, 1, half])), lw.emit(R.reshape(sin, [b, s, 1, half]))
    part = lw.emit(R.strided_slice(x, [3], [0], [rot])) if rot < head else x
    if node.attrs["interleaved"]:
        # Neighbours (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) as part * cos2 + swapped * sin2:
        # cos/sin repeated per pair, swapped = (-x2, x1) per pair (a constant gather and sign).
        # (Not as [.., rot/2, 2] reshapes: LLVM did not finish compiling that kernel with
        # symbolic batch and sequence.) a + (-b) is a - b exactly, so the rounding is the reference's.
        swap = const(np.arange(rot, dtype=np.int64) ^ 1)
        sign = const(np.tile(np.array([-1, 1], dtype=np.dtype(dt)), half))
        cos2, sin2 = lw.emit(R.repeat(cos, 2, axis=3)), lw.emit(R.repeat(sin, 2, axis=3))
        swapped = lw.emit(R.multiply(take(part, swap, 3, dt, True), sign))
        rotated = R.add(R.multiply(cos2, part), R.multiply(sin2, swapped))
    else:
        x1, x2 = lw.emit(R.strided_slice(part, [3], [0], [half])), lw.emit(R.strided_slice(part, [3], [half], [rot]))
        real = lw.emit(R.subtract(R.multiply(cos, x1), R.multiply(sin, x2)))
        imag = lw.emit(R.add(R.multiply(sin, x1), R.multiply(cos, x2)))
        rotated = R.concat([real, imag], axis=3)
    y = lw.emit(rotated)
    if rot < head:  # the features past rotary_embedding_dim pass through
        y = lw.emit(R.concat([y, lw.emit(R.strided_slice(x, [3], [rot], [head]))], axis=3))
    y = R.permute_dims(y, [0, 2, 1, 3]) if t.rank == 4 else R.reshape(y, shape)
    return [y if TVM_DTYPE[t.dtype] == dt else R.astype(y, TVM_DTYPE[t.dtype])]


# --- MaxUnpool -------------------------------------------------------------------------------------
def max_unpool_source(dt: str) -> str:
    """(x [L], indices [L], y [M]): y zero, then y[indices[i]] = x[i] in order (a later
    duplicate index wins, as the reference's assignment); an index outside [0, M) is a
    run-time error, as in the reference."""
    w = ScriptText()
    w(0, "@T.prim_func(private=True)")
    w(0, "def max_unpool(x_h: T.handle, idx_h: T.handle, y_h: T.handle):")
    w(1, KERNEL_ATTRS)
    w(1, "L = T.int64()")
    w(1, "M = T.int64()")
    w(1, f'x = T.match_buffer(x_h, (L,), "{dt}")')
    w(1, 'idx = T.match_buffer(idx_h, (L,), "int64")')
    w(1, f'y = T.match_buffer(y_h, (M,), "{dt}")')
    w(1, "for i in range(L):")
    w(2, 'assert T.int64(0) <= idx[i] and idx[i] < M, "MaxUnpool: an index lies outside the output"')
    w(1, "for j in T.parallel(M):")
    w(2, f'y[j] = T.Cast("{dt}", T.float32(0))')
    w(1, "for i in range(L):")
    w(2, "y[idx[i]] = x[i]")
    return w.source()


def _numel(shape: list[Any]) -> Any:
    total: Any = 1
    for d in shape:
        total = total * d
    return total


def _max_unpool(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t, y = in_type(lw, node, 0), out_type(node)
    shape = lw.shape(y)  # (an output_shape known only at run time is refused here, by name)
    dt = TVM_DTYPE[t.dtype]
    gvar = lw.bb.add_func(tvm.script.from_source(max_unpool_source(dt)), "max_unpool")
    n = _numel(lw.shape(t))
    flat = relax.call_tir(gvar, relax.Tuple([lw.emit(R.reshape(a[0], [n])), lw.emit(R.reshape(a[1], [n]))]),
                          relax.TensorType([_numel(shape)], dt))
    return [R.reshape(lw.emit(flat), shape)]


EMITTERS: dict[str, Emitter] = {"ReverseSequence": _reverse_sequence, "Unique": _unique, "RotaryEmbedding": _rotary,
                                "MaxUnpool": _max_unpool}

