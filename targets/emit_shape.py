"""Emitters for shape and data-movement ops: reshapes, slicing, gathers and scatters, padding.

Reshape, Expand, ConstantOfShape, Squeeze and Unsqueeze take their result shape from ember's
inferred output type, never from their shape operand, so the Shape -> Gather -> Concat
arithmetic feeding them is dead code here (lower.py does not emit it). Integer tensors whose
contents inference knows (symbolically, `[N, 16]`) are emitted from those contents directly by
lower.py, before any emitter here runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, tirx

from ember.compiler import dtypes
from ember.compiler.ir import Node, TensorType
from ember.compiler.ops import shape as shape_ops
from ember.targets import emit_dynamic as dyn
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    LoweringError,
    R,
    axis_of,
    const,
    has_input,
    in_type,
    out_type,
    refuse,
    scalar,
    static_ints,
    static_scalar,
    take,
)


def _like_out(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Reshape, Flatten, Squeeze, Unsqueeze: a reshape to the inferred output shape (a Reshape
    to a shape computed from the data: that shape, read at run time)."""
    if node.op == "Reshape" and not dyn.resolves(lw, out_type(node)):
        return [dyn.reshape_from_data(lw, node, a[0], lw.arg(node.inputs[1]))]
    return [R.reshape(a[0], lw.shape(out_type(node)))]


def _transpose(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    perm = node.attrs.get("perm")
    return [R.permute_dims(a[0], list(perm) if perm is not None else None)]


def _concat(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Operands whose other dims are written differently from the output's (an upsampled
    `(((H+1)//2+1)//2+1)//2*2` beside a `((H+1)//2+1)//2` skip branch, equal at every size the
    model runs at) are first sliced to the output's dims (an in-bounds slice: Relax then knows
    the shapes agree; it cannot prove such expressions equal and would leave the result's shape
    unknown, and a reshape between them takes TVM minutes to simplify). At a size where the
    branches differ the model is invalid (onnxruntime refuses it); ember does not check it."""
    t = out_type(node)
    axis = axis_of(node, t.rank)
    parts = []
    for i, x in enumerate(a):
        if x is None:
            continue
        shape = in_type(lw, node, i).shape
        differ = [k for k, d in enumerate(shape) if k != axis and d != t.shape[k]]
        if differ:
            x = R.strided_slice(x, differ, [0] * len(differ), [lw.dim(t.shape[k]) for k in differ], assume_inbound=True)
        parts.append(x)
    return [R.concat(parts, axis=axis)]


def _split(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    sizes = [v.type.shape[axis] for v in node.outputs]
    if not all(isinstance(s, int) for s in sizes):
        raise refuse(node, "a split with symbolic part sizes")
    if len(node.outputs) == 1:  # (torch's split of a batch of 1: TVM types a 1-way split as a tensor)
        return [a[0]]
    indices = [int(i) for i in np.cumsum(sizes)[:-1]]
    tup = lw.emit(R.split(a[0], indices, axis=axis))
    return [lw.emit(relax.TupleGetItem(tup, i)) for i in range(len(node.outputs))]


def _slice(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    if lw.const_of(node.inputs[1]) is None or lw.const_of(node.inputs[2]) is None:  # starts/ends from the data
        n = int(in_type(lw, node, 1).shape[0])
        axes = static_ints(lw, node, 3, "axes") if has_input(node, 3) else list(range(n))
        steps = static_ints(lw, node, 4, "steps") if has_input(node, 4) else [1] * n
        return [dyn.slice_from_data(lw, node, a, [ax % t.rank for ax in axes], steps)]
    starts = static_ints(lw, node, 1, "starts")
    ends = static_ints(lw, node, 2, "ends")
    axes = static_ints(lw, node, 3, "axes") if has_input(node, 3) else list(range(len(starts)))
    steps = static_ints(lw, node, 4, "steps") if has_input(node, 4) else [1] * len(starts)
    axes = [ax % t.rank for ax in axes]
    # Bounds past the dim (torch writes INT64_MAX / INT64_MIN for "to the end") become the dim
    # itself, symbolic or not: a constant stand-in reached TVM's arithmetic (2**62 * 4 bytes
    # overflowed int64; 2**31 - 1 left min(2**31 - 1, N) in every shape after it, and a
    # matmul over that length allocated for the bound). A whole axis is no slice at all, and
    # a whole axis backwards (torch.flip) is a flip.
    #
    # Over a symbolic axis the slice is emitted forward (a negative step as a flip, then a
    # forward slice of the flipped axis), its bounds clamped here with min/max, or, where
    # inference knew the length, as inference placed them (the module docstring of
    # compiler/ops/shape.py), the end start + length * step; TVM is told the bounds are in
    # range. Its own clamping of a symbolic `d` writes `if d < 0` into the shape, which a fused
    # kernel cannot take (a sliding-window KV cache, `cat[:, :, -3:]`), and its length of a
    # negative step over a symbolic axis came out wrong.
    y, sliced, inbound = a[0], [], []
    for ax, s, e, step in zip(axes, starts, ends, steps):
        dim = t.shape[ax]
        past = _past_bound(dim)
        if step == 1 and s == 0 and past(e) and e > 0:
            continue
        if step == -1 and (s == -1 or (past(s) and s > 0)) and past(e) and e < 0:
            y = R.flip(y, ax)
            continue
        if not isinstance(dim, int):
            if step < 0:
                y = R.flip(y, ax)
            inbound.append((ax, *_forward_bounds(lw, dim, s, e, step)))
            continue
        begin, end, _ = shape_ops.clamped(dim, s, e, step)
        end = max(end, begin) if step > 0 else min(end, begin)  # (an empty slice: TVM's length went negative)
        sliced.append((ax, begin, -dim - 1 if end < 0 else end, step))  # (TVM reads -1 as the last entry)
    for group, assume in ((sliced, False), (inbound, True)):
        if group:
            y = R.strided_slice(y, [v[0] for v in group], [v[1] for v in group], [v[2] for v in group],
                                [v[3] for v in group], assume_inbound=assume)
    return [y]


def _forward_bounds(lw: Lowering, dim: str, s: int, e: int, step: int) -> tuple[Any, Any, int]:
    """(begin, end, stride > 0) of a slice of a symbolic axis, forward: for a negative step,
    along the flipped axis (index i of x is d - 1 - i of the flip). Bounds past the axis are its
    ends; others are clamped into it as ONNX clamps them (a backward start into [0, d - 1], its
    end into [-1, d - 1]), or placed as inference placed them where it knew the length."""
    d, past, length = lw.dim(dim), _past_bound(dim), shape_ops.slice_length(dim, s, e, step)
    hi = d if step > 0 else d - 1  # where a bound may lie, before any flip: [lo, hi]

    def place(v: int, lo: int) -> Any:
        if past(v):
            return hi if v > 0 else lo
        if length is not None:  # inside the axis, as inference assumed
            return v if v >= 0 else d + v
        return tirx.min(v, hi) if v >= 0 else tirx.max(d + v, lo)

    begin, end = place(s, 0), place(e, 0 if step > 0 else -1)
    if step < 0:
        begin, end = d - 1 - begin, d - 1 - end
    k = abs(step)
    if length is not None:
        return begin, begin + lw.dim(length) * k, k
    return begin, tirx.max(end, begin), k


# A slice bound at least this large over a symbolic dim means "to the end" (no tensor is
# 2**31 long along one axis; exporters write INT64_MAX / INT64_MIN or INT32_MAX).
_BOUND = 2**31 - 1


def _past_bound(dim: Any) -> Any:
    """Whether a slice bound lies past either end of a dim (for a symbolic dim: |v| >= _BOUND)."""
    if isinstance(dim, int):
        return lambda v: v > dim or v < -dim - 1
    return lambda v: abs(v) >= _BOUND


def _index_dim(lw: Lowering, size: Any, minus: int = 0) -> relax.Expr:
    """A dim less `minus` as an int64 scalar operand (size may be symbolic)."""
    dim = lw.dim(size)
    return relax.const(dim - minus, "int64") if isinstance(dim, int) else relax.prim_value(dim - minus)


def _wrapped(wide: relax.Expr, n: relax.Expr) -> relax.Expr:
    """int64 indices with negative entries counted from the end of a dim of n."""
    return R.where(R.less(wide, relax.const(0, "int64")), R.add(wide, n), wide)


def _wrap_indices(lw: Lowering, node: Node, idx: relax.Expr, size: Any) -> relax.Expr:
    """Indices with negative entries wrapped (size may be symbolic)."""
    data = lw.const_of(node.inputs[1])
    if data is not None and isinstance(size, int):
        return const(np.where(data < 0, data + size, data).astype(np.int64))
    return _wrapped(R.astype(idx, "int64"), _index_dim(lw, size))


def _gather(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    idx = _wrap_indices(lw, node, a[1], t.shape[axis])
    known = lw.const_of(node.inputs[1]) is not None  # (constant indices: in range or refused at import)
    if in_type(lw, node, 1).rank == 0:  # a scalar index drops the axis: take one, then squeeze it
        return [R.squeeze(take(a[0], R.reshape(idx, [1]), axis, t.dtype, known), [axis])]
    return [take(a[0], idx, axis, t.dtype, known)]


def _gather_elements(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    idx, valid = _bounded_indices(lw, node, a[1], [t.shape[axis]], per_component=False)
    return [_poison(lw, node, R.gather_elements(a[0], idx, axis), valid)]


def _gather_nd(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t, batch = in_type(lw, node, 0), node.attrs["batch_dims"]
    k = in_type(lw, node, 1).shape[-1]
    if not isinstance(k, int):
        raise LoweringError(f"node {node.name!r} (GatherND): the indices' last dim must be static for code generation")
    idx, valid = _bounded_indices(lw, node, a[1], list(t.shape[batch:batch + k]), per_component=True)
    return [_poison(lw, node, R.gather_nd(a[0], idx, batch), valid)]


def _bounded_indices(lw: Lowering, node: Node, idx: relax.Expr, sizes: list[Any],
                     per_component: bool) -> tuple[relax.Expr, relax.Expr | None]:
    """Indices of a gather or scatter (input 1) made safe to read or write with: negative ones
    wrapped, every one then clipped into [0, size). With them the mask of the indices that were
    in range ([-size, size)), None where the indices are constant (then checked here: one out
    of range refuses the model). `per_component`: GatherND's and ScatterND's indices, whose
    last axis holds one index per dim of `sizes` (the mask drops that axis); else each index
    is into sizes[0]. TVM's kernels read and write wherever an index points: a negative
    GatherND index read before the tensor, an out-of-range scatter wrote past it."""
    data = lw.const_of(node.inputs[1])
    if data is not None and all(isinstance(s, int) for s in sizes):
        n = np.array(sizes, np.int64)
        wrapped = np.where(data < 0, data + n, data).astype(np.int64)
        bad = (wrapped < 0) | (wrapped >= n)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise LoweringError(f"node {node.name!r} ({node.op}): constant index {int(data[at])} at {list(at)} is out of "
                                f"range for a dim of {int(np.broadcast_to(n, data.shape)[at])}; fix the model's indices")
        return const(wrapped), None
    it = in_type(lw, node, 1)
    wide = lw.emit(R.astype(idx, "int64"))

    def bounded(part: relax.Expr, size: Any) -> tuple[relax.Expr, relax.Expr]:
        n, zero = _index_dim(lw, size), relax.const(0, "int64")
        w = lw.emit(_wrapped(part, n))
        valid = R.logical_and(R.greater_equal(w, zero), R.less(w, n))
        return R.minimum(R.maximum(w, zero), _index_dim(lw, size, minus=1)), valid

    if not per_component:
        return bounded(wide, sizes[0])
    parts = [bounded(lw.emit(R.strided_slice(wide, [it.rank - 1], [j], [j + 1])), size) for j, size in enumerate(sizes)]
    valid = parts[0][1]
    for _, v in parts[1:]:
        valid = R.logical_and(valid, v)
    clipped = parts[0][0] if len(parts) == 1 else R.concat([p for p, _ in parts], axis=it.rank - 1)
    return lw.emit(clipped), lw.emit(R.squeeze(valid, [it.rank - 1]))


def _poison(lw: Lowering, node: Node, y: relax.Expr, valid: relax.Expr | None) -> relax.Expr:
    """A gather's result where its indices were out of range: NaN for float data (so that the
    output shows it: onnxruntime refuses such an index), else the clipped index's entry, as
    Gather's (emit_common.take)."""
    t = in_type(lw, node, 0)
    if valid is None or not dtypes.is_float(t.dtype):
        return y
    y = lw.emit(y)
    extra = out_type(node).rank - in_type(lw, node, 1).rank + (1 if node.op == "GatherND" else 0)
    mask = R.expand_dims(valid, list(range(-extra, 0))) if extra else valid
    return R.where(mask, y, relax.const(float("nan"), TVM_DTYPE[t.dtype]))


_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "min": "min", "max": "max"}


def _scatter_elements(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    reduction = _REDUCTIONS[node.attrs.get("reduction", "none")]
    idx, valid = _bounded_indices(lw, node, a[1], [t.shape[axis]], per_component=False)
    if valid is None:
        return [R.scatter_elements(a[0], idx, a[2], axis, reduction)]
    data, n = _with_spare(lw, a[0], t, axis)
    idx = R.where(valid, idx, n) if isinstance(t.shape[axis], int) else _or_spare(lw, valid, idx, t.shape[axis], False)
    return [_without_spare(lw, R.scatter_elements(data, idx, a[2], axis, reduction), t, axis)]


def _scatter_nd(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    reduction = _REDUCTIONS[node.attrs["reduction"]]
    it = in_type(lw, node, 1)
    k = it.shape[-1]
    if not isinstance(k, int):
        raise LoweringError(f"node {node.name!r} (ScatterND): the indices' last dim must be static for code generation")
    idx, valid = _bounded_indices(lw, node, a[1], list(t.shape[:k]), per_component=True)
    # updates counted by another run-time dim than the indices (index_put of a boolean mask as
    # the dynamo exporter writes it: NonZero's count against a ReduceSum's): equal at run time,
    # checked there; TVM's scatter_nd wants the shapes provably equal.
    want = TensorType(in_type(lw, node, 2).dtype, tuple(it.shape[:-1]) + tuple(t.shape[k:]))
    if not lw.primitive and in_type(lw, node, 2).shape != want.shape:
        a[2] = lw.bb.match_cast(lw.emit(a[2]), relax.TensorType(lw.shape(want), TVM_DTYPE[want.dtype]))
    if valid is None:
        return [R.scatter_nd(a[0], idx, a[2], reduction)]
    data, n = _with_spare(lw, a[0], t, 0)
    if isinstance(t.shape[0], int):
        spare = R.multiply(const(np.eye(1, k, dtype=np.int64)[0]), n)  # ([n, 0, ...]: the spare row)
        idx = R.where(R.expand_dims(valid, [-1]), idx, spare)
    else:
        idx = _or_spare(lw, valid, idx, t.shape[0], True)
    return [_without_spare(lw, R.scatter_nd(data, idx, a[2], reduction), t, 0)]


def _with_spare(lw: Lowering, x: relax.Expr, t: Any, axis: int) -> tuple[relax.Expr, relax.Expr]:
    """x with one more entry along `axis` (zeros), where a scatter's out-of-range indices write,
    and that entry's index: ONNX leaves such an index an error (onnxruntime refuses it), and
    ember skips its update, as XLA does, rather than write past the tensor or over a valid
    entry."""
    spare = R.zeros_like(R.strided_slice(x, [axis], [0], [1]))
    return lw.emit(R.concat([x, spare], axis=axis)), _index_dim(lw, t.shape[axis])


def _or_spare(lw: Lowering, valid: relax.Expr, idx: relax.Expr, size: Any, components: bool) -> relax.Expr:
    """Indices with the invalid ones sent to the spare entry of a symbolic `size` (its index
    is that dim, a scalar Relax's `where` does not take): one kernel. `components`: ScatterND's
    index rows, the spare row [size, 0, ...]."""
    from tvm import te

    def pick(v: Any, x: Any, n: Any) -> Any:
        n = tirx.Cast("int64", n)
        if components:
            return te.compute(x.shape, lambda *i: tirx.Select(v(*i[:-1]), x(*i), tirx.Select(i[-1] == 0, n, tirx.const(0, "int64"))))
        return te.compute(x.shape, lambda *i: tirx.Select(v(*i), x(*i), n))

    return lw.kernels.call_te(pick, lw.emit(valid), lw.emit(R.astype(idx, "int64")), lw.dim(size),
                              primfunc_name_hint="spare_index")


def _without_spare(lw: Lowering, y: relax.Expr, t: Any, axis: int) -> relax.Expr:
    return R.strided_slice(lw.emit(y), [axis], [0], [lw.dim(t.shape[axis])])


def _expand(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    if not dyn.resolves(lw, out_type(node)):
        return [dyn.expand_from_data(lw, node, a[0], lw.arg(node.inputs[1]))]
    return [R.broadcast_to(a[0], lw.shape(out_type(node)))]


def _tile(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Tile; repeats computed from the data (DeBERTa's `pos_key.repeat(batch * heads //
    span, 1, 1)`: a Shape of a symbolic-batch tensor) as a broadcast of the input viewed as
    [1, d0, 1, d1, ...] to [r0, d0, r1, d1, ...], reshaped to [r0 * d0, ...]: the repeats are
    the output's dims over the input's where inference knows them, else read at run time."""
    if lw.const_of(node.inputs[1]) is not None:
        return [R.tile(a[0], static_ints(lw, node, 1, "repeats"))]
    t, y = in_type(lw, node, 0), out_type(node)
    if t.rank == 0:
        return [a[0]]
    dims = lw.shape(t)
    reps = [o // d for o, d in zip(lw.shape(y), dims)] if dyn.resolves(lw, y) else dyn.runtime_ints(lw, a[1], t.rank)
    view = [v for d in dims for v in (1, d)]
    spread = [v for r, d in zip(reps, dims) for v in (r, d)]
    return [R.reshape(R.broadcast_to(R.reshape(a[0], view), spread), [r * d for r, d in zip(reps, dims)])]


def _constant_of_shape(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    fill = node.attrs.get("value")
    value = np.asarray(fill).reshape(-1)[0] if fill is not None else np.float32(0)
    t = out_type(node)
    if not dyn.resolves(lw, t):
        return [dyn.full_from_data(lw, node, lw.arg(node.inputs[0]), scalar(value, t))]
    return [R.full(lw.shape(t), scalar(value, t), TVM_DTYPE[t.dtype])]


def _shape(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    # Only reached when inference did not track the contents (dims from run-time data):
    # read the shape at run time.
    t = in_type(lw, node, 0)
    start = node.attrs.get("start") or 0
    end = node.attrs.get("end")
    start = min(max(start + t.rank if start < 0 else start, 0), t.rank)
    end = t.rank if end is None else min(max(end + t.rank if end < 0 else end, 0), t.rank)
    full = lw.emit(R.shape_to_tensor(lw.emit(R.shape_of(a[0]))))
    if (start, end) == (0, t.rank):
        return [full]
    return [R.strided_slice(full, [0], [start], [end])]


def _size(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    total: Any = 1
    for d in lw.shape(in_type(lw, node, 0)):
        total = total * d
    if isinstance(total, int):
        return [const(np.array(total, dtype=np.int64))]
    return [R.reshape(R.shape_to_tensor(relax.ShapeExpr([total])), [])]


def _range(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = out_type(node)  # its length (from start, limit, delta) is already in the inferred type
    if not dyn.resolves(lw, t):
        return [dyn.range_from_data(lw, node, a)]
    start = static_scalar(lw, node, 0, "start")
    delta = static_scalar(lw, node, 2, "delta")
    length = lw.dim(t.shape[0])
    if isinstance(length, int):
        return [const((start + np.arange(length) * delta).astype(t.np_dtype))]
    y = R.arange(0, length, 1, TVM_DTYPE[t.dtype])
    if delta != 1:
        y = R.multiply(y, scalar(delta, t))
    if start != 0:
        y = R.add(y, scalar(start, t))
    return [y]


def _pad(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    if lw.const_of(node.inputs[1]) is None:
        return [_pad_from_data(lw, node, a)]
    pads = static_ints(lw, node, 1, "pads")
    axes = static_ints(lw, node, 3, "axes") if has_input(node, 3) else list(range(t.rank))
    width = [0] * (2 * t.rank)
    for i, ax in enumerate(axes):
        width[2 * (ax % t.rank)] = pads[i]
        width[2 * (ax % t.rank) + 1] = pads[i + len(axes)]
    if any(w < 0 for w in width):
        raise refuse(node, "negative padding (cropping)")
    value = float(_pad_value(lw, node))
    mode = node.attrs["mode"]
    if mode == "edge":
        return [_edge_pad(lw, node, a[0], width)]
    if mode not in ("constant", "reflect"):
        raise refuse(node, f"mode {mode!r}")
    return [R.nn.pad(a[0], width, mode, value)]


def _pad_value(lw: Lowering, node: Node) -> Any:
    """A Pad's constant value (0 when the input is omitted or empty)."""
    if not has_input(node, 2):
        return 0.0
    c = lw.const_of(node.inputs[2])
    if c is None:
        raise LoweringError(f"node {node.name!r} (Pad): the pad value must be constant for code generation")
    return np.asarray(c).reshape(-1)[0].item() if np.asarray(c).size else 0.0


def _pad_from_data(lw: Lowering, node: Node, a: list[Any]) -> relax.Expr:
    """A constant-mode Pad whose pads the model computes (Swin's patch merging pads H % 2 and
    W % 2 of a dynamic image; a detector pads to a multiple of its stride): the pads read at
    run time, then one kernel that reads x[i - before] inside x and the pad value outside (a
    negative pad crops)."""
    from tvm import te

    t = in_type(lw, node, 0)
    if node.attrs["mode"] != "constant":
        raise refuse(node, f"mode {node.attrs['mode']!r} with pads computed at run time")
    axes = static_ints(lw, node, 3, "axes") if has_input(node, 3) else list(range(t.rank))
    values = dyn.runtime_ints(lw, a[1], 2 * len(axes))
    zero = tirx.IntImm("int64", 0)
    before, after = [zero] * t.rank, [zero] * t.rank
    for i, ax in enumerate(axes):
        before[ax % t.rank], after[ax % t.rank] = values[i], values[i + len(axes)]
    fill = _pad_value(lw, node)

    def kernel_fn(x: Any) -> Any:
        dims = list(x.shape)
        value = tirx.const(fill, x.dtype)

        def at(*i: Any) -> Any:
            src = [j - b for j, b in zip(i, before)]
            inside = tirx.all(*[tirx.all(s >= 0, s < d) for s, d in zip(src, dims)])
            safe = [tirx.max(tirx.min(s, d - 1), 0) for s, d in zip(src, dims)]
            return tirx.if_then_else(inside, x[tuple(safe)], value)

        return te.compute([d + b + e for d, b, e in zip(dims, before, after)], at, name="pad")

    return lw.emit(lw.kernels.call_te(kernel_fn, lw.emit(a[0]), primfunc_name_hint="pad_from_data"))


def _edge_pad(lw: Lowering, node: Node, x: relax.Expr, width: list[int]) -> relax.Expr:
    """Edge padding as concatenations of the border slices, repeated (Relax's pad legalizes
    only constant and reflect padding)."""
    t = in_type(lw, node, 0)
    shape = lw.shape(t)
    for ax in range(t.rank):
        before, after = width[2 * ax], width[2 * ax + 1]
        if not before and not after:
            continue
        parts = []
        if before:
            first = R.strided_slice(x, [ax], [0], [1])
            parts.append(R.broadcast_to(first, [before if i == ax else d for i, d in enumerate(shape)]))
        parts.append(x)
        if after:
            last = R.strided_slice(x, [ax], [-1], [2**62])
            parts.append(R.broadcast_to(last, [after if i == ax else d for i, d in enumerate(shape)]))
        x = lw.emit(R.concat(parts, axis=ax))
        shape[ax] = shape[ax] + before + after
    return x


def depth_to_space(lw: Lowering, x: relax.Expr, block: tuple[int, int], mode: str, shape: list[Any]) -> relax.Expr:
    """ONNX's DepthToSpace of an NCHW tensor to `shape` as one gather, with a block of bh x bw
    pixels: output pixel (Y, X) of channel c reads input channel c*bh*bw + (Y % bh)*bw + X % bw
    (CRD; DCR: ((Y % bh)*bw + X % bw)*C + c) at pixel (Y // bh, X // bw), divisions by the
    constant block only. (As reshape, transpose, reshape over symbolic H, W, each element's
    index was a chain of divisions by symbolic products: PP-OCRv4's detector head spent 19 ms on
    it.)"""
    from tvm import te

    bh, bw = block

    def kernel_fn(t: Any) -> Any:
        channels = shape[1]

        def at(n: Any, c: Any, y: Any, x: Any) -> Any:
            u, v = tirx.floormod(y, bh), tirx.floormod(x, bw)
            src = c * (bh * bw) + u * bw + v if mode == "CRD" else (u * bw + v) * channels + c
            return t[n, src, tirx.floordiv(y, bh), tirx.floordiv(x, bw)]

        return te.compute(shape, at, name="depth_to_space")

    return lw.emit(lw.kernels.call_te(kernel_fn, lw.emit(x), primfunc_name_hint="depth_to_space"))


def _depth_to_space(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    b = node.attrs["blocksize"]
    return [depth_to_space(lw, a[0], (b, b), node.attrs["mode"], lw.shape(out_type(node)))]


def _space_to_depth(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Output channel (u*b + v)*C + c (DCR; CRD: c*b*b + u*b + v) at (y, x) reads channel c at
    (y*b + u, x*b + v): one gather, as depth_to_space. (The reshape form ignored CRD.)"""
    from tvm import te

    c, b, shape = in_type(lw, node, 0).shape[1], node.attrs["blocksize"], lw.shape(out_type(node))
    crd = node.attrs["mode"] == "CRD"

    def kernel_fn(t: Any) -> Any:
        channels = lw.dim(c)

        def at(n: Any, k: Any, y: Any, x: Any) -> Any:
            if crd:
                ch, phase = tirx.floordiv(k, b * b), tirx.floormod(k, b * b)
            else:
                phase, ch = tirx.floordiv(k, channels), tirx.floormod(k, channels)
            return t[n, ch, y * b + tirx.floordiv(phase, b), x * b + tirx.floormod(phase, b)]

        return te.compute(shape, at, name="space_to_depth")

    return [lw.emit(lw.kernels.call_te(kernel_fn, lw.emit(a[0]), primfunc_name_hint="space_to_depth"))]


def _eye_like(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = out_type(node)
    if not t.static:
        raise refuse(node, "a symbolic shape")
    rows, cols = t.shape
    return [const(np.eye(int(rows), int(cols), k=node.attrs["k"], dtype=t.np_dtype))]


def _trilu(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    k = int(static_scalar(lw, node, 1, "k")) if has_input(node, 1) else 0
    return [R.triu(a[0], k) if node.attrs["upper"] else R.tril(a[0], k)]


def _one_hot(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    depth = int(static_scalar(lw, node, 1, "depth"))
    values = lw.const_of(node.inputs[2])
    if values is None:
        raise LoweringError(f"node {node.name!r} (OneHot): values must be constant for code generation")
    t = out_type(node)
    off, on = (tirx.const(np.asarray(values).reshape(-1)[i].item(), TVM_DTYPE[t.dtype]) for i in (0, 1))
    idx = R.astype(a[0], "int64")
    idx = R.where(R.less(idx, relax.const(0, "int64")), R.add(idx, relax.const(depth, "int64")), idx)
    return [R.one_hot(idx, relax.prim_value(on), relax.prim_value(off), depth, axis_of(node, t.rank))]


def _cumulative(fn: Any) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        t = in_type(lw, node, 0)
        axis = int(static_scalar(lw, node, 1, "axis")) % t.rank
        x = R.flip(a[0], axis) if node.attrs["reverse"] else a[0]
        y = fn(x, axis, TVM_DTYPE[t.dtype], bool(node.attrs["exclusive"]))
        return [R.flip(y, axis) if node.attrs["reverse"] else y]

    return emit


def _topk(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    if lw.const_of(node.inputs[1]) is None:
        return dyn.topk_from_data(lw, node, a[0], a[1], axis_of(node, t.rank))
    k = int(static_scalar(lw, node, 1, "K"))
    return dyn.topk_select(lw, node, a[0], a[1], k, axis_of(node, t.rank))


def _center_crop_pad(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Each chosen axis cropped or zero-padded to its size, centred (an odd excess: the extra
    element at the end), as one slice and one pad; the sizes must be constants and the axes
    they change static."""
    t = in_type(lw, node, 0)
    sizes = static_ints(lw, node, 1, "CenterCropPad's shape")
    axes = [ax % t.rank for ax in node.attrs.get("axes") or range(t.rank)]
    crop: list[tuple[int, int, int]] = []
    width = [0] * (2 * t.rank)
    for ax, size in zip(axes, sizes):
        d = t.shape[ax]
        if d == size:
            continue
        if not isinstance(d, int):
            raise refuse(node, f"a symbolic size ({d}) on an axis it crops or pads")
        if size < d:
            start = (d - size) // 2
            crop.append((ax, start, start + size))
        else:
            width[2 * ax] = (size - d) // 2
            width[2 * ax + 1] = size - d - (size - d) // 2
    x = a[0]
    if crop:
        x = R.strided_slice(x, [c[0] for c in crop], [c[1] for c in crop], [c[2] for c in crop])
    if any(width):
        x = R.nn.pad(x, width, "constant", 0.0)
    return [x]


EMITTERS: dict[str, Emitter] = {
    "CenterCropPad": _center_crop_pad,
    "Reshape": _like_out, "Flatten": _like_out, "Squeeze": _like_out, "Unsqueeze": _like_out,
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Gather": _gather, "GatherElements": _gather_elements, "GatherND": _gather_nd,
    "ScatterElements": _scatter_elements, "Scatter": _scatter_elements, "ScatterND": _scatter_nd,
    "Expand": _expand, "Tile": _tile, "Pad": _pad, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Size": _size, "Range": _range,
    "EyeLike": _eye_like, "Trilu": _trilu, "OneHot": _one_hot,
    "CumSum": _cumulative(R.cumsum), "CumProd": _cumulative(R.cumprod), "TopK": _topk,
}
