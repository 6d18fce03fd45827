"""Operators that reshape, reorder, join and cut tensors without computing new values.

Ops that appear in run-time shape arithmetic (Shape, Size, Concat, Slice, Split, Squeeze,
Unsqueeze, Reshape, Expand, Tile...) also give their output's contents through `value`, so a
Reshape whose target is computed from `Shape(x)` gets an exact, possibly symbolic, shape.

Symbolic dims are sizes (>= 0) and are assumed to hold every index a slice names relative to
them (`x[:, 1:]` of `S` gives `S-1`; `buffer[:, :S]` of 1024 gives `S`), as onnxruntime's
symbolic shape inference does; a size that depends on clamping against an unknown dim
(`x[:, :512]` of `S`, `cache[:, -3:]` of `P`: min(3, P)) is a fresh symbol instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import int_list, norm_axis, required
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
# |index| at or past this means "to the end" (exporters write INT64_MAX / INT32_MAX and their negatives).
FAR = 2**31 - 1


def _given(ctx: InferCtx, i: int) -> bool:
    return i < len(ctx.types) and ctx.types[i] is not None


def _length_of(ctx: InferCtx, i: int, what: str) -> int:
    """The static element count of a 0-D/1-D int input (Reshape targets, axes lists)."""
    t = required(ctx, i)
    n = t.shape[0] if t.rank == 1 else 1
    if t.rank > 1 or not isinstance(n, int):
        raise ValueError(f"{ctx.op} {what} must be a 1-D tensor of static length, got {t}")
    return n


def _fresh_shape(ctx: InferCtx, rank: int) -> tuple[Dim, ...]:
    return tuple(ctx.fresh(0, i) for i in range(rank))


def _same_contents(ctx: InferCtx) -> tuple[Dim, ...] | None:
    """value: output 0 holds input 0's elements in the same order (1-D reshapes, squeezes)."""
    return ctx.const_or_value(0)


# --- Shape, Size -----------------------------------------------------------------------
def _shape_range(rank: int, attrs: Attrs) -> tuple[int, int]:
    """start/end clamped to [0, rank] after adding rank to negatives (ONNX Shape-15)."""
    start, end = attrs["start"], attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(end, start)


def _shape_infer(ctx: InferCtx) -> list[TensorType]:
    start, end = _shape_range(required(ctx).rank, ctx.attrs)
    return [TensorType("i64", (end - start,))]


def _shape_value(ctx: InferCtx) -> tuple[Dim, ...]:
    t = required(ctx)
    start, end = _shape_range(t.rank, ctx.attrs)
    return tuple(dims.extent(d) for d in t.shape[start:end])


def _shape_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    start, end = _shape_range(x.ndim, attrs)
    return [np.array(x.shape[start:end], dtype=np.int64)]


def _size_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    return [np.array(np.asarray(inputs[0]).size, dtype=np.int64)]


# --- Reshape, Flatten, Squeeze, Unsqueeze ----------------------------------------------
def _reshape_dims(shape: Sequence[Dim], target: Sequence[Dim], allowzero: int) -> tuple[Dim, ...]:
    """Reshape's output shape: 0 copies the input dim (unless allowzero), one -1 is inferred."""
    out: list[Dim] = []
    for i, d in enumerate(target):
        if isinstance(d, int) and d < -1:
            raise ValueError(f"Reshape target {list(target)} has a negative size {d}")
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise ValueError(f"Reshape target {list(target)} copies dim {i} of a rank-{len(shape)} input")
            out.append(shape[i])
        else:
            out.append(d)
    total = dims.numel(tuple(shape))
    if -1 in out:
        if out.count(-1) > 1:
            raise ValueError(f"Reshape target {list(target)} has more than one -1")
        if allowzero and 0 in out:
            raise ValueError(f"Reshape target {list(target)} has both 0 (allowzero) and -1")
        known = dims.numel(tuple(d for d in out if d != -1))
        if known == 0:
            raise ValueError(f"Reshape target {list(target)}: -1 is ambiguous next to a 0 size")
        if isinstance(total, int) and isinstance(known, int) and total % known:
            raise ValueError(f"cannot reshape {list(shape)} to {list(target)}")
        out[out.index(-1)] = dims.floordiv(total, known)
    total_out = dims.numel(tuple(out))
    if isinstance(total, int) and isinstance(total_out, int) and total != total_out:
        raise ValueError(f"cannot reshape {list(shape)} ({total} elements) to {list(target)} ({total_out})")
    return tuple(out)


def _reshape_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    target = ctx.const_or_value(1)
    if target is None:  # run-time target: its length is the rank, the sizes are unknown
        return [TensorType(t.dtype, _fresh_shape(ctx, _length_of(ctx, 1, "shape")))]
    return [TensorType(t.dtype, _reshape_dims(t.shape, target, ctx.attrs["allowzero"]))]


def _reshape_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    shape = _reshape_dims(x.shape, int_list(inputs[1]), attrs["allowzero"])
    return [x.reshape([int(d) for d in shape])]


def _flatten_axis(rank: int, axis: int) -> int:
    """Flatten's axis in 0..rank (rank itself is allowed: [numel, 1])."""
    if not -rank <= axis <= rank:
        raise ValueError(f"Flatten axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _flatten_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axis = _flatten_axis(t.rank, ctx.attrs["axis"])
    return [TensorType(t.dtype, (dims.numel(t.shape[:axis]), dims.numel(t.shape[axis:])))]


def _flatten_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = _flatten_axis(x.ndim, attrs["axis"])
    # Explicit sizes: -1 would be ambiguous for empty tensors.
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))]


def _axes_to_input(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Squeeze/Unsqueeze-11: `axes` was an attribute; from opset 13 it is input 1."""
    if "axes" in attrs:
        inputs = [inputs[0], np.array(attrs.pop("axes"), dtype=np.int64)]
    return inputs, attrs


def _squeeze_axes(shape: Sequence[Dim], axes: Sequence[Dim] | None) -> tuple[int, ...]:
    """The axes Squeeze removes: the given ones (each of size 1), else every static 1.

    Without axes (or with an empty list, as onnxruntime reads it), symbolic dims are assumed
    not to be 1 (the output rank must be fixed).
    """
    if not axes:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    if not all(isinstance(a, int) for a in axes):
        raise ValueError(f"Squeeze axes {list(axes)} must be integers")
    chosen = sorted({norm_axis(int(a), len(shape)) for a in axes})
    if len(chosen) != len(axes):
        raise ValueError(f"Squeeze axes {list(axes)} repeat")
    for a in chosen:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {shape[a]}")
    return tuple(chosen)


def _squeeze_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axes = ctx.const_or_value(1) if _given(ctx, 1) else None
    if _given(ctx, 1) and axes is None:  # run-time axes: the rank is known, the dims are not
        return [TensorType(t.dtype, _fresh_shape(ctx, t.rank - _length_of(ctx, 1, "axes")))]
    chosen = _squeeze_axes(t.shape, axes)
    return [TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in chosen))]


def _squeeze_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = int_list(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    return [np.squeeze(x, axis=_squeeze_axes(x.shape, axes))]


def _unsqueeze_positions(rank: int, axes: Sequence[Dim]) -> list[int]:
    """The new axes' positions in the output (of rank `rank + len(axes)`)."""
    if not all(isinstance(a, int) for a in axes):
        raise ValueError(f"Unsqueeze axes {list(axes)} must be integers")
    out_rank = rank + len(axes)
    chosen = sorted(norm_axis(int(a), out_rank) for a in axes)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Unsqueeze axes {list(axes)} repeat")
    return chosen


def _unsqueeze_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axes = ctx.const_or_value(1)
    if axes is None:  # run-time axes: the rank is known, the dims are not
        return [TensorType(t.dtype, _fresh_shape(ctx, t.rank + _length_of(ctx, 1, "axes")))]
    chosen = _unsqueeze_positions(t.rank, axes)
    rest = iter(t.shape)
    return [TensorType(t.dtype, tuple(1 if i in chosen else next(rest) for i in range(t.rank + len(axes))))]


def _unsqueeze_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.expand_dims(x, tuple(_unsqueeze_positions(x.ndim, int_list(inputs[1]))))]


# --- Transpose -------------------------------------------------------------------------
def _perm(rank: int, attrs: Attrs) -> tuple[int, ...]:
    perm = attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(rank)))
    if sorted(perm) != list(range(rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of 0..{rank - 1}")
    return tuple(perm)


def _transpose_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    return [TensorType(t.dtype, tuple(t.shape[p] for p in _perm(t.rank, ctx.attrs)))]


def _transpose_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.transpose(x, _perm(x.ndim, attrs))]


# --- Concat, Split ---------------------------------------------------------------------
def _concat_infer(ctx: InferCtx) -> list[TensorType]:
    present = [t for t in ctx.types if t is not None]
    first = present[0]
    if first.rank == 0:
        raise ValueError("Concat cannot join scalars")
    axis = norm_axis(ctx.attrs["axis"], first.rank)
    shape = list(first.shape)
    total: Dim = 0
    for t in present:
        if t.rank != first.rank or t.dtype != first.dtype:
            raise ValueError(f"Concat inputs differ in rank or dtype: {first} vs {t}")
        total = dims.add(total, t.shape[axis])
        for i, d in enumerate(t.shape):
            if i == axis or d == shape[i]:
                continue
            if isinstance(d, int) and isinstance(shape[i], int):
                raise ValueError(f"Concat inputs differ on axis {i}: {first} vs {t}")
            dims.assume_equal(shape[i], d)
            if isinstance(d, int):  # a static size pins the symbol
                shape[i] = d
    shape[axis] = total
    return [TensorType(first.dtype, tuple(shape))]


def _concat_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    out: list[Dim] = []
    for i, t in enumerate(ctx.types):
        known = ctx.const_or_value(i) if t is not None else None
        if known is None or t is None or t.rank != 1:
            return None
        out.extend(known)
    return tuple(out)


def _concat_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    arrays = [a for a in inputs if a is not None]
    return [np.concatenate(arrays, axis=norm_axis(attrs["axis"], arrays[0].ndim))]


def _even_split(length: Dim, count: int, num_outputs: int | None) -> list[Dim]:
    """Part sizes without a `split` input: ceil(length / n) each, the last part smaller.

    Split-13 requires an even division; like onnx's reference, an uneven one is not refused
    here (an If branch that is never taken may hold one), it fails when it runs.
    """
    if count < 1:
        raise ValueError("Split needs at least one output")
    if isinstance(length, int):
        chunk = -(-length // count)
        return [min(chunk, max(length - chunk * i, 0)) for i in range(count)]
    even = dims.floordiv(length, count)
    if num_outputs is None or "//" not in str(even):  # divides exactly (or must)
        return [even] * count
    chunk = dims.ceildiv(length, count)
    return [chunk] * (count - 1) + [dims.sub(length, dims.mul(chunk, count - 1))]


def _split_sizes(ctx: InferCtx, t: TensorType, axis: int) -> list[Dim]:
    num_outputs = ctx.attrs.get("num_outputs")
    if _given(ctx, 1):
        if num_outputs is not None:
            raise ValueError("Split takes either a split input or num_outputs, not both")
        split = ctx.const_or_value(1)
        if split is None:
            return [ctx.fresh(i, axis) for i in range(ctx.num_outputs)]
        sizes = list(split)
        total: Dim = 0
        for s in sizes:
            total = dims.add(total, s)
        if isinstance(total, int) and isinstance(t.shape[axis], int) and total != t.shape[axis]:
            raise ValueError(f"Split sizes {sizes} do not add up to {t.shape[axis]}")
    else:
        if num_outputs is not None and num_outputs != ctx.num_outputs:
            raise ValueError(f"Split num_outputs={num_outputs} but the node has {ctx.num_outputs} outputs")
        sizes = _even_split(t.shape[axis], ctx.num_outputs, num_outputs)
    if len(sizes) != ctx.num_outputs:
        raise ValueError(f"Split into {len(sizes)} parts but the node has {ctx.num_outputs} outputs")
    return sizes


def _split_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    sizes = _split_sizes(ctx, t, axis)
    known = ctx.const_or_value(0)
    if known is not None and t.rank == 1 and all(isinstance(s, int) for s in sizes):
        bounds = np.cumsum([0, *sizes])  # contents of each part of a split shape vector
        for i in range(len(sizes)):
            ctx.out_values[i] = tuple(known[bounds[i] : bounds[i + 1]])
    return [TensorType(t.dtype, tuple(s if i == axis else d for i, d in enumerate(t.shape))) for s in sizes]


def _split_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = int_list(inputs[1])
    else:
        sizes = [int(s) for s in _even_split(x.shape[axis], len(ctx.node.outputs), attrs.get("num_outputs"))]
    if sum(sizes) != x.shape[axis] or min(sizes, default=0) < 0:
        raise ValueError(f"Split sizes {sizes} do not cover {x.shape[axis]}")
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _split_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Split-11: part sizes as the `split` attribute; from opset 13 they are input 1."""
    if "split" in attrs:
        inputs = [inputs[0], np.array(attrs.pop("split"), dtype=np.int64)]
    return inputs, attrs


# --- Slice -----------------------------------------------------------------------------
def _slice_params(rank: int, starts: Sequence[Dim], ends: Sequence[Dim], axes: Sequence[Dim] | None,
                  steps: Sequence[Dim] | None) -> list[tuple[int, Dim, Dim, int]]:
    """(axis, start, end, step) per sliced axis; ValueError for malformed parameters."""
    n = len(starts)
    axes = list(range(n)) if axes is None else list(axes)
    steps = [1] * n if steps is None else list(steps)
    if not len(ends) == len(axes) == len(steps) == n:
        raise ValueError(f"Slice starts/ends/axes/steps differ in length: {n}, {len(ends)}, {len(axes)}, {len(steps)}")
    if not all(isinstance(v, int) for v in (*axes, *steps)):
        raise ValueError("Slice axes and steps must be integers")
    chosen = [norm_axis(int(a), rank) for a in axes]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Slice axes {list(axes)} repeat")
    if 0 in steps:
        raise ValueError("Slice step cannot be 0")
    return [(a, s, e, int(st)) for a, s, e, st in zip(chosen, starts, ends, steps)]


def _position(index: Dim, d: Dim, step: int, is_end: bool) -> tuple[int, Dim] | None:
    """A slice bound as (k, offset), meaning the position k*d + offset on an axis of size d.

    Integer bounds on a static axis are clamped exactly; otherwise bounds are assumed inside
    the axis (module docstring). None when the size would depend on clamping against d.
    """
    if isinstance(index, str):
        return (0, index) if "-" not in index else None  # a symbolic size, >= 0
    if isinstance(d, int):
        lo, hi = (0, d) if step > 0 else (-1 if is_end else 0, d - 1)
        return (0, min(max(index + d if index < 0 else index, lo), hi))
    if index >= FAR:
        return (1, 0) if step > 0 else (1, -1)
    if index <= -FAR:
        return (0, 0) if step > 0 or not is_end else (0, -1)
    if index < 0:
        # d + index: held when d is surely at least -index (`3+S`), or for -1 (an empty axis
        # aside); `cache[:, -3:]` of a cache that may be shorter is min(3, d), a fresh symbol
        return (1, index) if index == -1 or _at_least(d, -index) else None
    if index > 1 and (step < 0 or is_end):
        # min(index, d) forward, min(index, d - 1) backward; ending at 1 (keeping a first
        # element) is kept, as onnxruntime does
        return None
    return (0, index)


def _at_least(d: Dim, n: int) -> bool:
    """Whether a dim is surely >= n: an int, or a sum of a constant >= n and sizes (`3+S`)."""
    if isinstance(d, int):
        return d >= n
    terms = d.split("+")
    if "(" in d or any("-" in t for t in terms):
        return False
    return sum(int(t) for t in terms if t.isdigit()) >= n


def slice_length(d: Dim, start: Dim, end: Dim, step: int) -> Dim | None:
    """The length of one sliced axis (None when it cannot be known before run time)."""
    if isinstance(d, int) and isinstance(start, int) and isinstance(end, int):
        return len(range(*clamped(d, start, end, step)))
    first, last = _position(start, d, step, False), _position(end, d, step, True)
    if first is None or last is None:
        return None
    lo, hi = (first, last) if step > 0 else (last, first)  # the span runs from lo to hi
    if hi[0] < lo[0]:
        return None  # (a - d) + b: its sign is unknown
    if isinstance(hi[1], int) and isinstance(lo[1], int):
        span = dims.add(d, hi[1] - lo[1]) if hi[0] > lo[0] else hi[1] - lo[1]
    else:
        span = dims.sub(dims.add(d, hi[1]) if hi[0] > lo[0] else hi[1], lo[1])
    if isinstance(span, int):
        return max(-(-span // abs(step)), 0)
    return span if abs(step) == 1 else dims.ceildiv(span, abs(step))


def clamped(length: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """ONNX's clamping of one axis's bounds: negative ones count from the end; a start goes
    into [0, length] (forward) or [0, length - 1] (backward), an end into [0, length] or
    [-1, length - 1]. (Python's slice.indices puts a backward start below 0 at -1, which
    takes nothing; ONNX and onnxruntime take element 0.)"""
    start, end = (v + length if v < 0 else v for v in (start, end))
    if step > 0:
        return min(max(start, 0), length), min(max(end, 0), length), step
    return min(max(start, 0), length - 1), min(max(end, -1), length - 1), step


def _slice_inputs(ctx: InferCtx) -> tuple[Sequence[Dim] | None, ...]:
    known = [ctx.const_or_value(i) if _given(ctx, i) else None for i in range(1, 5)]
    return tuple(known)


def _slice_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    starts, ends, axes, steps = _slice_inputs(ctx)
    if starts is None or ends is None or (_given(ctx, 3) and axes is None) or (_given(ctx, 4) and steps is None) \
            or not all(isinstance(v, int) for v in (*(axes or ()), *(steps or ()))):
        if axes is None or not all(isinstance(a, int) for a in axes):
            return [TensorType(t.dtype, _fresh_shape(ctx, t.rank))]
        chosen = {norm_axis(int(a), t.rank) for a in axes}  # unknown bounds: only these axes change
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) if i in chosen else d for i, d in enumerate(t.shape)))]
    shape = list(t.shape)
    for axis, start, end, step in _slice_params(t.rank, starts, ends, axes, steps):
        length = slice_length(t.shape[axis], start, end, step)
        shape[axis] = ctx.fresh(0, axis) if length is None else length
    return [TensorType(t.dtype, tuple(shape))]


def _slice_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    data = ctx.const_or_value(0)
    starts, ends, axes, steps = _slice_inputs(ctx)
    if data is None or starts is None or ends is None or required(ctx).rank != 1:
        return None
    if not all(isinstance(v, int) for v in (*starts, *ends, *(steps or ()))):
        return None
    ((_, start, end, step),) = _slice_params(1, starts, ends, axes, steps)
    return tuple(data[i] for i in range(*clamped(len(data), int(start), int(end), step)))


def _slice_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = int_list(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    steps = int_list(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
    index = [slice(None)] * x.ndim
    for axis, start, end, step in _slice_params(x.ndim, int_list(inputs[1]), int_list(inputs[2]), axes, steps):
        lo, hi, step = clamped(x.shape[axis], int(start), int(end), step)
        # `clamped` gives end -1 for "before index 0" with a negative step, which a slice
        # object would read as "the last element": use None there.
        index[axis] = slice(lo, None if hi < 0 else hi, step)
    return [x[tuple(index)]]


# --- Expand, Tile ----------------------------------------------------------------------
def _expand_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    target = ctx.const_or_value(1)
    if target is not None:
        return [TensorType(t.dtype, dims.broadcast(t.shape, tuple(target)))]
    # Run-time target: broadcasting keeps every static input dim other than 1 (the target
    # is 1 or the same size there); dims of 1 and new leading axes take the target's sizes.
    rank = max(_length_of(ctx, 1, "shape"), t.rank)
    shape = (1,) * (rank - t.rank) + t.shape
    return [TensorType(t.dtype, tuple(d if isinstance(d, int) and d != 1 else ctx.fresh(0, i) for i, d in enumerate(shape)))]


def _expand_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    shape = np.broadcast_shapes(x.shape, tuple(int_list(inputs[1])))
    return [np.broadcast_to(x, shape).copy()]


def _expand_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    known, target = ctx.const_or_value(0), ctx.const_or_value(1)
    if known is None or target is None or len(target) > 1 or required(ctx).rank > 1:
        return None
    if not target:
        return known
    n = target[0]
    if len(known) == 1 and isinstance(n, int):
        return known * n
    return known if n == 1 or n == len(known) else None


def _tile_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    reps = ctx.const_or_value(1)
    if _length_of(ctx, 1, "repeats") != t.rank:
        raise ValueError(f"Tile repeats must have one entry per axis ({t.rank})")
    if reps is None:
        return [TensorType(t.dtype, tuple(d if d == 0 else ctx.fresh(0, i) for i, d in enumerate(t.shape)))]
    if any(isinstance(r, int) and r < 0 for r in reps):
        raise ValueError(f"Tile repeats {list(reps)} must be >= 0")
    return [TensorType(t.dtype, tuple(dims.mul(d, r) for d, r in zip(t.shape, reps)))]


def _tile_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.tile(x, int_list(inputs[1])) if x.ndim else x.copy()]


def _tile_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    known, reps = ctx.const_or_value(0), ctx.const_or_value(1)
    if known is None or reps is None or len(reps) != 1 or not isinstance(reps[0], int):
        return None
    return known * reps[0]


OPS: list[OpDef] = [
    OpDef(name="Shape", infer=_shape_infer, ref=_shape_ref, value=_shape_value,
          attrs={"start": AttrSpec("int", 0), "end": AttrSpec("int", None)}),
    OpDef(name="Size", infer=lambda ctx: [TensorType("i64", ())], ref=_size_ref,
          value=lambda ctx: (dims.extent(dims.numel(required(ctx).shape)),)),
    OpDef(name="Reshape", infer=_reshape_infer, ref=_reshape_ref, inputs=(2, 2), value=_same_contents,
          attrs={"allowzero": AttrSpec("int", 0)}),
    OpDef(name="Flatten", infer=_flatten_infer, ref=_flatten_ref, attrs={"axis": AttrSpec("int", 1)}),
    OpDef(name="Squeeze", infer=_squeeze_infer, ref=_squeeze_ref, inputs=(1, 2), value=_same_contents,
          upgrade=_axes_to_input),
    OpDef(name="Unsqueeze", infer=_unsqueeze_infer, ref=_unsqueeze_ref, inputs=(2, 2), value=_same_contents,
          upgrade=_axes_to_input),
    OpDef(name="Transpose", infer=_transpose_infer, ref=_transpose_ref, value=_same_contents,
          attrs={"perm": AttrSpec("ints", None)}),
    OpDef(name="Concat", infer=_concat_infer, ref=_concat_ref, inputs=(1, -1), value=_concat_value,
          attrs={"axis": AttrSpec("int")}),
    OpDef(name="Split", infer=_split_infer, ref=_split_ref, inputs=(1, 2), outputs=(1, -1), upgrade=_split_upgrade,
          attrs={"axis": AttrSpec("int", 0), "num_outputs": AttrSpec("int", None)}),
    OpDef(name="Slice", infer=_slice_infer, ref=_slice_ref, inputs=(3, 5), value=_slice_value),
    OpDef(name="Expand", infer=_expand_infer, ref=_expand_ref, inputs=(2, 2), value=_expand_value),
    OpDef(name="Tile", infer=_tile_infer, ref=_tile_ref, inputs=(2, 2), value=_tile_value),
]
