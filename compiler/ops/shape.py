"""Operators that move or reinterpret data: shapes, reshapes, concatenation, slicing.

Ops that appear in run-time shape arithmetic (Shape, Gather, Concat, Slice, Squeeze,
Unsqueeze, Reshape, Range, ConstantOfShape...) also give their output's contents through
`value`, so a Reshape whose target is computed from `Shape(x)` gets an exact (possibly
symbolic) output shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, norm_axis
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
INT64_MAX = 2**63 - 1


def _t(ctx: InferCtx, i: int = 0) -> TensorType:
    t = ctx.types[i]
    if t is None:
        raise ValueError(f"input {i} is required")
    return t


def _ints(a: np.ndarray | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


# --- Shape, Size -----------------------------------------------------------------------
def _shape_range(rank: int, attrs: Attrs) -> tuple[int, int]:
    start, end = attrs["start"], attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(end, start)


def _shape_infer(ctx: InferCtx) -> list[TensorType]:
    start, end = _shape_range(_t(ctx).rank, ctx.attrs)
    return [TensorType("i64", (end - start,))]


def _shape_value(ctx: InferCtx) -> tuple[Dim, ...]:
    t = _t(ctx)
    start, end = _shape_range(t.rank, ctx.attrs)
    return tuple(t.shape[start:end])


def _shape_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    start, end = _shape_range(x.ndim, attrs)
    return [np.array(x.shape[start:end], dtype=np.int64)]


# --- Reshape, Flatten, Squeeze, Unsqueeze ----------------------------------------------
def _reshape_dims(shape: Sequence[Dim], target: Sequence[Dim], allowzero: int) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(shape[i])
        else:
            out.append(d)
    if -1 in out:
        if out.count(-1) > 1:
            raise ValueError(f"Reshape target {list(target)} has more than one -1")
        known: Dim = 1
        for d in out:
            if d != -1:
                known = dims.mul(known, d)
        total = dims.numel(tuple(shape))
        missing = dims.floordiv(total, known)
        if isinstance(total, int) and isinstance(known, int) and known and total % known:
            raise ValueError(f"cannot reshape {list(shape)} to {list(target)}")
        out[out.index(-1)] = missing
    total_in, total_out = dims.numel(tuple(shape)), dims.numel(tuple(out))
    if isinstance(total_in, int) and isinstance(total_out, int) and total_in != total_out:
        raise ValueError(f"cannot reshape {list(shape)} ({total_in} elements) to {list(target)}")
    return tuple(out)


def _reshape_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    target = ctx.const_or_value(1)
    if target is None:
        n = _t(ctx, 1).shape[0]
        if not isinstance(n, int):
            raise ValueError("Reshape target of unknown length")
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(n)))]
    return [TensorType(t.dtype, _reshape_dims(t.shape, target, ctx.attrs["allowzero"]))]


def _reshape_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    target = [int(d) for d in _reshape_dims(x.shape, _ints(inputs[1]), attrs["allowzero"])]  # type: ignore[arg-type]
    return [x.reshape(target)]


def _passthrough_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    return ctx.const_or_value(0)


def _flatten_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    axis = ctx.attrs["axis"]
    axis = axis + t.rank if axis < 0 else axis
    if not 0 <= axis <= t.rank:
        raise ValueError(f"Flatten axis {ctx.attrs['axis']} out of range for rank {t.rank}")
    return [TensorType(t.dtype, (dims.numel(t.shape[:axis]), dims.numel(t.shape[axis:])))]


def _flatten_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = attrs["axis"] + x.ndim if attrs["axis"] < 0 else attrs["axis"]
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1) if x.size else
            x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))]


def _axes_to_input(since_limit: int) -> Any:
    def upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        if "axes" in attrs:
            inputs = [inputs[0], np.array(attrs.pop("axes"), dtype=np.int64)]
        return inputs, attrs

    return upgrade


def _squeeze_axes(t: TensorType, axes: Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(i for i, d in enumerate(t.shape) if d == 1)
    return tuple(sorted({norm_axis(int(a), t.rank) for a in axes}))


def _squeeze_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    has_axes = len(ctx.types) > 1 and ctx.types[1] is not None
    axes = ctx.const_or_value(1) if has_axes else None
    if has_axes and axes is None:  # run-time axes: the rank is known, the dims are not
        count = _t(ctx, 1).shape[0] if _t(ctx, 1).rank else 1
        if not isinstance(count, int):
            raise ValueError("Squeeze axes of unknown length")
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank - count)))]
    chosen = _squeeze_axes(t, axes)  # type: ignore[arg-type]
    for a in chosen:
        if isinstance(t.shape[a], int) and t.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {t.shape[a]}")
    return [TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in chosen))]


def _squeeze_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(norm_axis(a, x.ndim) for a in axes))]


def _squeeze_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    return ctx.const_or_value(0)


def _unsqueeze_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    axes = ctx.const_or_value(1)
    if axes is None:  # run-time axes: the rank is known, the dims are not
        count = _t(ctx, 1).shape[0] if _t(ctx, 1).rank else 1
        if not isinstance(count, int):
            raise ValueError("Unsqueeze axes of unknown length")
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank + count)))]
    rank = t.rank + len(axes)
    chosen = sorted(norm_axis(int(a), rank) for a in axes)  # type: ignore[arg-type]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Unsqueeze axes {list(axes)} repeat")
    it = iter(t.shape)
    return [TensorType(t.dtype, tuple(1 if i in chosen else next(it) for i in range(rank)))]


def _unsqueeze_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = _ints(inputs[1])
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(norm_axis(a, rank) for a in axes)))]


# --- Transpose -------------------------------------------------------------------------
def _perm(t: TensorType, attrs: Attrs) -> tuple[int, ...]:
    perm = attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(t.rank)))
    if sorted(norm_axis(p, t.rank) for p in perm) != list(range(t.rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of rank {t.rank}")
    return tuple(norm_axis(p, t.rank) for p in perm)


def _transpose_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    return [TensorType(t.dtype, tuple(t.shape[p] for p in _perm(t, ctx.attrs)))]


def _transpose_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    perm = attrs.get("perm")
    return [np.transpose(x, None if perm is None else [norm_axis(p, x.ndim) for p in perm])]


# --- Concat, Split ---------------------------------------------------------------------
def _concat_infer(ctx: InferCtx) -> list[TensorType]:
    present = [t for t in ctx.types if t is not None]
    first = present[0]
    axis = norm_axis(ctx.attrs["axis"], first.rank)
    total: Dim = 0
    for t in present:
        if t.rank != first.rank or t.dtype != first.dtype:
            raise ValueError(f"Concat inputs differ: {first} vs {t}")
        total = dims.add(total, t.shape[axis])
    shape = list(first.shape)
    for i in range(first.rank):
        if i != axis and not isinstance(shape[i], int):
            shape[i] = next((t.shape[i] for t in present if isinstance(t.shape[i], int)), shape[i])
    shape[axis] = total
    return [TensorType(first.dtype, tuple(shape))]


def _concat_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    out: list[Dim] = []
    for i, t in enumerate(ctx.types):
        if t is None:
            continue
        known = ctx.const_or_value(i)
        if known is None or t.rank != 1:
            return None
        out.extend(known)
    return tuple(out)


def _concat_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    arrays = [a for a in inputs if a is not None]
    return [np.concatenate(arrays, axis=norm_axis(attrs["axis"], arrays[0].ndim))]


def _split_sizes(length: Dim, n: int, split: Sequence[Dim] | None, num_outputs: int | None) -> list[Dim]:
    if split is not None:
        return list(split)
    count = num_outputs or n
    if isinstance(length, int):
        chunk = -(-length // count)
        sizes = [min(chunk, max(length - chunk * i, 0)) for i in range(count)]
        return sizes
    return [dims.floordiv(length, count)] * count


def _split_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    has_split = len(ctx.types) > 1 and ctx.types[1] is not None
    split = ctx.const_or_value(1) if has_split else None
    if has_split and split is None:
        sizes: list[Dim] = [ctx.fresh(i, axis) for i in range(ctx.num_outputs)]
    else:
        sizes = _split_sizes(t.shape[axis], ctx.num_outputs, split, ctx.attrs.get("num_outputs"))
    if len(sizes) != ctx.num_outputs:
        raise ValueError(f"Split into {len(sizes)} parts but the node has {ctx.num_outputs} outputs")
    return [TensorType(t.dtype, tuple(s if i == axis else d for i, d in enumerate(t.shape))) for s in sizes]


def _split_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    split = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    sizes = [int(s) for s in _split_sizes(x.shape[axis], len(ctx.node.outputs), split, attrs.get("num_outputs"))]
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _split_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    if "split" in attrs:  # Split < 13: sizes as an attribute
        inputs = [inputs[0], np.array(attrs.pop("split"), dtype=np.int64)]
    return inputs, attrs


# --- Slice -----------------------------------------------------------------------------
def _slice_params(rank: int, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> list[tuple[int, int, int, int]]:
    axes = list(range(len(starts))) if axes is None else [norm_axis(a, rank) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if len(set(axes)) != len(axes):
        raise ValueError(f"Slice axes {axes} repeat")
    return [(a, s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]


def _slice_dim(length: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    if step == 0:
        raise ValueError("Slice step cannot be 0")
    return slice(start, end, step).indices(length)


def _slice_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    starts, ends = ctx.const_or_value(1), ctx.const_or_value(2)
    has_axes = len(ctx.types) > 3 and ctx.types[3] is not None
    has_steps = len(ctx.types) > 4 and ctx.types[4] is not None
    axes = ctx.const_or_value(3) if has_axes else None
    steps = ctx.const_or_value(4) if has_steps else None
    if starts is None or ends is None or (has_axes and axes is None) or (has_steps and steps is None):
        if not has_axes or axes is None:
            return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
        chosen = {norm_axis(int(a), t.rank) for a in axes}  # type: ignore[arg-type]
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) if i in chosen else d for i, d in enumerate(t.shape)))]
    if not all(isinstance(v, int) for v in (*starts, *ends, *(axes or ()), *(steps or ()))):
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
    shape = list(t.shape)
    for axis, s, e, st in _slice_params(t.rank, list(starts), list(ends), axes and list(axes), steps and list(steps)):  # type: ignore[arg-type]
        d = shape[axis]
        if isinstance(d, int):
            lo, hi, step = _slice_dim(d, s, e, st)
            shape[axis] = len(range(lo, hi, step))
        elif st == 1 and s == 0 and e >= INT64_MAX // 2:
            shape[axis] = d
        elif st == 1 and s >= 0 and e >= 0 and e < INT64_MAX // 2:
            shape[axis] = ctx.fresh(0, axis) if e - s > 0 else 0  # min(e, d) - s: unknown without d
        else:
            shape[axis] = ctx.fresh(0, axis)
    return [TensorType(t.dtype, tuple(shape))]


def _slice_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    data = ctx.const_or_value(0)
    starts, ends = ctx.const_or_value(1), ctx.const_or_value(2)
    steps = ctx.const_or_value(4) if len(ctx.types) > 4 and ctx.types[4] is not None else (1,)
    if data is None or starts is None or ends is None or steps is None or _t(ctx).rank != 1:
        return None
    if not all(isinstance(v, int) for v in (*starts, *ends, *steps)):
        return None
    lo, hi, step = _slice_dim(len(data), int(starts[0]), int(ends[0]), int(steps[0]))
    return tuple(data[i] for i in range(lo, hi, step))


def _slice_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
    index = [slice(None)] * x.ndim
    for axis, s, e, st in _slice_params(x.ndim, _ints(inputs[1]), _ints(inputs[2]), axes, steps):
        lo, hi, step = _slice_dim(x.shape[axis], s, e, st)
        # slice.indices() gives stop=-1 for "before index 0" with a negative step, which a
        # slice object would read as "the last element": index with the explicit range.
        index[axis] = np.arange(lo, hi, step) if step < 0 and hi < 0 else slice(lo, hi, step)
    result = x
    for axis, item in enumerate(index):
        if isinstance(item, np.ndarray):
            result = np.take(result, item, axis=axis)
    plain = tuple(item if isinstance(item, slice) else slice(None) for item in index)
    return [result[plain]]


# --- Expand, Tile ----------------------------------------------------------------------
def _expand_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    target = ctx.const_or_value(1)
    if target is None:
        n = _t(ctx, 1).shape[0]
        if not isinstance(n, int):
            raise ValueError("Expand target of unknown length")
        rank = max(n, t.rank)
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(rank)))]
    return [TensorType(t.dtype, dims.broadcast(t.shape, tuple(target)))]


def _expand_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    shape = np.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))
    return [np.broadcast_to(x, shape).copy()]


def _tile_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    reps = ctx.const_or_value(1)
    if reps is None:
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
    return [TensorType(t.dtype, tuple(dims.mul(d, r) for d, r in zip(t.shape, reps)))]


def _tile_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    return [np.tile(inputs[0], _ints(inputs[1]))]


# --- ConstantOfShape, Range, EyeLike, Trilu ---------------------------------------------
def _cos_fill(attrs: Attrs) -> np.ndarray:
    value = attrs.get("value")
    return np.zeros((1,), np.float32) if value is None else np.asarray(value).reshape(-1)[:1]


def _cos_infer(ctx: InferCtx) -> list[TensorType]:
    fill = _cos_fill(ctx.attrs)
    shape = ctx.const_or_value(0)
    if shape is None:
        n = _t(ctx).shape[0] if _t(ctx).rank else 0
        if not isinstance(n, int):
            raise ValueError("ConstantOfShape shape of unknown length")
        shape = tuple(ctx.fresh(0, i) for i in range(n))
    return [TensorType(dtypes.from_numpy(fill.dtype), tuple(shape))]


def _cos_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    fill = _cos_fill(attrs)
    return [np.full(tuple(_ints(inputs[0])), fill[0], dtype=fill.dtype)]


def _cos_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    shape = ctx.const_or_value(0)
    fill = _cos_fill(ctx.attrs)
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int) or fill.dtype.kind not in "iu":
        return None
    return (int(fill[0]),) * shape[0]


def _range_count(start: Any, limit: Any, delta: Any) -> int:
    return max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)


def _range_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    vals = [ctx.consts[i] for i in range(3)]
    known = [ctx.const_or_value(i) for i in range(3)]
    if all(v is not None for v in vals):
        n = _range_count(*(np.asarray(v).reshape(-1)[0] for v in vals))  # type: ignore[union-attr]
        return [TensorType(t.dtype, (n,))]
    if all(k is not None and len(k) == 1 for k in known):
        start, limit, delta = (k[0] for k in known)  # type: ignore[index]
        if start == 0 and delta == 1:
            return [TensorType(t.dtype, (limit,))]
    return [TensorType(t.dtype, (ctx.fresh(0, 0),))]


def _range_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(a).reshape(-1)[0] for a in inputs)  # type: ignore[union-attr]
    n = _range_count(start, limit, delta)
    return [as_dtype(start + np.arange(n) * delta, ctx)]


def _range_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    known = [ctx.const_or_value(i) for i in range(3)]
    if any(k is None or len(k) != 1 or not isinstance(k[0], int) for k in known):
        return None
    start, limit, delta = (int(k[0]) for k in known)  # type: ignore[index]
    return tuple(range(start, limit, delta)) if delta else None


def _eyelike_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    dtype = ctx.attrs.get("dtype") or t.dtype
    return [TensorType(dtype, t.shape)]


def _eyelike_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.eye(x.shape[0], x.shape[1], k=attrs["k"], dtype=ctx.out_types[0].np_dtype)]


def _dtype_attr_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(attrs.get("dtype"), int):
        attrs["dtype"] = dtypes.from_onnx(attrs["dtype"], "dtype attribute")
    return inputs, attrs


def _trilu_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]


# --- DepthToSpace, SpaceToDepth ---------------------------------------------------------
def _d2s_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    b = ctx.attrs["blocksize"]
    n, c, h, w = t.shape
    return [TensorType(t.dtype, (n, dims.floordiv(c, b * b), dims.mul(h, b), dims.mul(w, b)))]


def _d2s_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs["mode"] == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


def _s2d_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    b = ctx.attrs["blocksize"]
    n, c, h, w = t.shape
    return [TensorType(t.dtype, (n, dims.mul(c, b * b), dims.floordiv(h, b), dims.floordiv(w, b)))]


def _s2d_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    # DCR puts the block offsets before the channel; CRD after it (inverse of DepthToSpace).
    y = y.transpose(0, 3, 5, 1, 2, 4) if attrs["mode"] == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


def _ccp_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    shape = ctx.const_or_value(1)
    axes = ctx.attrs.get("axes") or tuple(range(t.rank))
    out = list(t.shape)
    for i, a in enumerate(axes):
        out[norm_axis(a, t.rank)] = shape[i] if shape is not None else ctx.fresh(0, i)
    return [TensorType(t.dtype, tuple(out))]


def _ccp_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    shape = _ints(inputs[1])
    axes = [norm_axis(a, x.ndim) for a in (attrs.get("axes") or range(x.ndim))]
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    out_shape = list(x.shape)
    for a, size in zip(axes, shape):
        d = x.shape[a]
        out_shape[a] = size
        if size <= d:  # crop centered
            start = (d - size) // 2
            src[a] = slice(start, start + size)
        else:  # pad centered
            start = (size - d) // 2
            dst[a] = slice(start, start + d)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return [out]


OPS: list[OpDef] = [
    OpDef(name="Shape", infer=_shape_infer, ref=_shape_ref, value=_shape_value,
          attrs={"start": AttrSpec("int", 0), "end": AttrSpec("int", None)}),
    OpDef(name="Size", infer=lambda ctx: [TensorType("i64", ())],
          ref=lambda i, a, c: [np.array(np.asarray(i[0]).size, dtype=np.int64)],
          value=lambda ctx: (dims.numel(_t(ctx).shape),)),
    OpDef(name="Reshape", infer=_reshape_infer, ref=_reshape_ref, inputs=(2, 2), value=_passthrough_value,
          attrs={"allowzero": AttrSpec("int", 0)}),
    OpDef(name="Flatten", infer=_flatten_infer, ref=_flatten_ref, attrs={"axis": AttrSpec("int", 1)}),
    OpDef(name="Squeeze", infer=_squeeze_infer, ref=_squeeze_ref, inputs=(1, 2), value=_squeeze_value,
          upgrade=_axes_to_input(13), attrs={"axes": AttrSpec("ints", None)}),
    OpDef(name="Unsqueeze", infer=_unsqueeze_infer, ref=_unsqueeze_ref, inputs=(1, 2), value=_passthrough_value,
          upgrade=_axes_to_input(13), attrs={"axes": AttrSpec("ints", None)}),
    OpDef(name="Transpose", infer=_transpose_infer, ref=_transpose_ref, attrs={"perm": AttrSpec("ints", None)}),
    OpDef(name="Concat", infer=_concat_infer, ref=_concat_ref, inputs=(1, -1), value=_concat_value,
          attrs={"axis": AttrSpec("int")}),
    OpDef(name="Split", infer=_split_infer, ref=_split_ref, inputs=(1, 2), outputs=(1, -1), upgrade=_split_upgrade,
          attrs={"axis": AttrSpec("int", 0), "num_outputs": AttrSpec("int", None), "split": AttrSpec("ints", None)}),
    OpDef(name="Slice", infer=_slice_infer, ref=_slice_ref, inputs=(3, 5), value=_slice_value),
    OpDef(name="Expand", infer=_expand_infer, ref=_expand_ref, inputs=(2, 2)),
    OpDef(name="Tile", infer=_tile_infer, ref=_tile_ref, inputs=(2, 2)),
    OpDef(name="ConstantOfShape", infer=_cos_infer, ref=_cos_ref, value=_cos_value,
          attrs={"value": AttrSpec("tensor", None)}),
    OpDef(name="Range", infer=_range_infer, ref=_range_ref, inputs=(3, 3), value=_range_value),
    OpDef(name="EyeLike", infer=_eyelike_infer, ref=_eyelike_ref, upgrade=_dtype_attr_upgrade,
          attrs={"dtype": AttrSpec("str", None), "k": AttrSpec("int", 0)}),
    OpDef(name="Trilu", infer=lambda ctx: [_t(ctx)], ref=_trilu_ref, inputs=(1, 2), attrs={"upper": AttrSpec("int", 1)}),
    OpDef(name="DepthToSpace", infer=_d2s_infer, ref=_d2s_ref,
          attrs={"blocksize": AttrSpec("int"), "mode": AttrSpec("str", "DCR")}),
    OpDef(name="SpaceToDepth", infer=_s2d_infer, ref=_s2d_ref,
          attrs={"blocksize": AttrSpec("int"), "mode": AttrSpec("str", "DCR")}),
    OpDef(name="CenterCropPad", infer=_ccp_infer, ref=_ccp_ref, inputs=(2, 2), attrs={"axes": AttrSpec("ints", None)}),
]
