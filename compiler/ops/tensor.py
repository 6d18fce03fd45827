"""Operators that index, scatter, pad, sort, select or reinterpret tensor data.

Output dims that depend on the data (NonZero, Unique, Compress, TopK with a run-time k) are
fresh symbols. Gather also gives its output's contents through `value`, for shape arithmetic
(`Shape(x)[0]`). Resize lives in resize.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, int_list, norm_axis, required
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
INDEX_TYPES = ("i64", "i32")
REDUCTIONS = ("none", "add", "mul", "max", "min")


def _index_type(ctx: InferCtx, i: int, what: str = "indices") -> TensorType:
    t = required(ctx, i)
    if t.dtype not in INDEX_TYPES:
        raise ValueError(f"{ctx.op} {what} must be i32 or i64, got {t.dtype}")
    return t


def _wrap(idx: np.ndarray, size: int | np.ndarray) -> np.ndarray:
    """Negative indices count from the end (as int64)."""
    idx = idx.astype(np.int64, copy=False)
    return np.where(idx < 0, idx + size, idx)


def _optional(inputs: Arrays, i: int) -> np.ndarray | None:
    return inputs[i] if len(inputs) > i else None


# --- Gather, GatherElements, GatherND -------------------------------------------------------------
def _gather_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx = required(ctx), _index_type(ctx, 1)
    if t.rank == 0:
        raise ValueError("Gather needs data of rank >= 1")
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    return [TensorType(t.dtype, t.shape[:axis] + idx.shape + t.shape[axis + 1 :])]


def _gather_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    return [np.take(x, _wrap(idx, x.shape[axis]), axis=axis)]


def _gather_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    data, idx = ctx.const_or_value(0), ctx.const_or_value(1)
    if data is None or idx is None or required(ctx).rank != 1 or not all(isinstance(i, int) for i in idx):
        return None
    if any(not -len(data) <= int(i) < len(data) for i in idx):
        raise ValueError(f"Gather index out of range for {len(data)} elements")
    return tuple(data[int(i)] for i in idx)


def _gather_elements_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx = required(ctx), _index_type(ctx, 1)
    if idx.rank != t.rank or t.rank == 0:
        raise ValueError(f"GatherElements indices must have the data's rank (>= 1): {t} vs {idx}")
    norm_axis(ctx.attrs["axis"], t.rank)
    return [TensorType(t.dtype, idx.shape)]


def _gather_elements_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    # Off the gather axis the output follows the indices' shape, which may be smaller than
    # the data's: crop the data there (take_along_axis would broadcast instead).
    crop = tuple(slice(None) if a == axis else slice(0, idx.shape[a]) for a in range(x.ndim))
    return [np.take_along_axis(x[crop], _wrap(idx, x.shape[axis]), axis=axis)]


def _gather_nd_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx = required(ctx), _index_type(ctx, 1)
    b = ctx.attrs["batch_dims"]
    depth = idx.shape[-1] if idx.rank else None
    if not isinstance(depth, int):
        raise ValueError(f"GatherND index tuples need a static length, got indices {idx}")
    if not 0 <= b < min(t.rank, idx.rank) or not 1 <= b + depth <= t.rank:
        raise ValueError(f"GatherND batch_dims={b} with {depth}-tuples does not fit data {t} and indices {idx}")
    return [TensorType(t.dtype, idx.shape[:-1] + t.shape[b + depth :])]


def _gather_nd_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    b, depth = attrs["batch_dims"], idx.shape[-1]
    batches = int(np.prod(x.shape[:b], dtype=np.int64))
    xs = x.reshape((batches,) + x.shape[b:])
    tuples = _wrap(idx.reshape(batches, -1, depth), np.array(x.shape[b : b + depth]))
    # One fancy index: (batch, i_1, ..., i_depth) per gathered slice.
    batch = np.arange(batches)[:, None]
    picked = xs[(batch, *np.moveaxis(tuples, -1, 0))]
    return [picked.reshape(idx.shape[:-1] + x.shape[b + depth :])]


# --- ScatterND, ScatterElements -----------------------------------------------------------------
def _reduce_into(target: np.ndarray, index: tuple[Any, ...], values: np.ndarray, how: str) -> None:
    """target[index] (op)= values; duplicates accumulate for every reduction but none."""
    if how == "none":  # duplicate indices are undefined in ONNX: the last write wins here
        target[index] = values
        return
    ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}.get(how)
    if ufunc is None:
        raise ValueError(f"unknown reduction {how!r}; expected one of {', '.join(REDUCTIONS)}")
    ufunc.at(target, index, values)


def _scatter_check(ctx: InferCtx) -> TensorType:
    t, upd = required(ctx), required(ctx, 2)
    _index_type(ctx, 1)
    if upd.dtype != t.dtype:
        raise ValueError(f"{ctx.op} updates must have the data's dtype: {t} vs {upd}")
    if ctx.attrs.get("reduction", "none") not in REDUCTIONS:
        raise ValueError(f"{ctx.op} reduction must be one of {', '.join(REDUCTIONS)}, got {ctx.attrs['reduction']!r}")
    return t


def _scatter_nd_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx, upd = _scatter_check(ctx), required(ctx, 1), required(ctx, 2)
    depth = idx.shape[-1] if idx.rank else None
    if not isinstance(depth, int) or depth > t.rank:
        raise ValueError(f"ScatterND index tuples of length {depth} do not fit data {t}")
    want = idx.shape[:-1] + t.shape[depth:]
    if len(want) != upd.rank or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(want, upd.shape)):
        raise ValueError(f"ScatterND updates must have shape {list(want)}, got {upd}")
    return [t]


def _scatter_nd_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None and idx is not None and upd is not None
    out = x.copy()
    depth = idx.shape[-1]
    tuples = _wrap(idx.reshape(-1, depth), np.array(x.shape[:depth]))
    values = upd.reshape((tuples.shape[0],) + x.shape[depth:])
    _reduce_into(out, tuple(tuples.T), values, attrs["reduction"])
    return [out]


def _scatter_elements_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx, upd = _scatter_check(ctx), required(ctx, 1), required(ctx, 2)
    norm_axis(ctx.attrs["axis"], t.rank)
    if idx.rank != t.rank or upd.rank != t.rank:
        raise ValueError(f"{ctx.op} indices and updates must have the data's rank: {t}, {idx}, {upd}")
    return [t]


def _scatter_elements_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None and idx is not None and upd is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    out = x.copy()
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = _wrap(idx, x.shape[axis])
    _reduce_into(out, tuple(grid), upd, attrs.get("reduction", "none"))
    return [out]


# --- Pad -----------------------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_layout(rank: int, pads: Sequence[Dim], axes: Sequence[Dim] | None) -> list[tuple[Dim, Dim]]:
    """(before, after) per axis from ONNX's [x1_begin, x2_begin, ..., x1_end, x2_end, ...]."""
    chosen = list(range(rank)) if axes is None else [norm_axis(int(a), rank) for a in axes]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Pad axes {list(axes or ())} repeat")
    n = len(chosen)
    if len(pads) != 2 * n:
        raise ValueError(f"Pad needs {2 * n} pad values, got {len(pads)}")
    width: list[tuple[Dim, Dim]] = [(0, 0)] * rank
    for i, a in enumerate(chosen):
        width[a] = (pads[i], pads[i + n])
    return width


def _pad_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    _index_type(ctx, 1, "pads")
    if ctx.attrs["mode"] not in PAD_MODES:
        raise ValueError(f"Pad mode must be one of {', '.join(PAD_MODES)}, got {ctx.attrs['mode']!r}")
    value = ctx.types[2] if len(ctx.types) > 2 else None
    if value is not None and (value.dtype != t.dtype or value.rank > 1):
        raise ValueError(f"Pad constant_value must be a scalar of the data's dtype, got {value}")
    has_axes = len(ctx.types) > 3 and ctx.types[3] is not None
    pads, axes = ctx.const_or_value(1), ctx.const_or_value(3) if has_axes else None
    if pads is None or (has_axes and axes is None):
        if has_axes and axes is not None:  # only the listed axes change
            chosen = {norm_axis(int(a), t.rank) for a in axes}
            return [TensorType(t.dtype, tuple(ctx.fresh(0, i) if i in chosen else d for i, d in enumerate(t.shape)))]
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
    width = _pad_layout(t.rank, pads, axes)
    grown = [lo + hi if isinstance(lo, int) and isinstance(hi, int) else dims.add(lo, hi) for lo, hi in width]
    return [TensorType(t.dtype, tuple(dims.add(d, g) for d, g in zip(t.shape, grown)))]


def _pad_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = _optional(inputs, 3)
    width = _pad_layout(x.ndim, int_list(inputs[1]), int_list(axes) if axes is not None else None)
    # Negative pads crop (onnxruntime); the crop happens before any padding.
    crop = tuple(slice(max(-int(lo), 0), x.shape[i] - max(-int(hi), 0)) for i, (lo, hi) in enumerate(width))
    x = x[crop]
    width = [(max(int(lo), 0), max(int(hi), 0)) for lo, hi in width]
    mode = attrs["mode"]
    if mode != "constant":
        if x.size == 0 and any(lo or hi for lo, hi in width):
            raise ValueError(f"Pad mode {mode!r} cannot pad an empty tensor")
        return [np.pad(x, width, mode=mode)]
    value = _optional(inputs, 2)
    fill = np.asarray(value).reshape(-1)[0] if value is not None and np.asarray(value).size else 0
    return [np.pad(x, width, mode="constant", constant_values=fill)]


# --- TopK, NonZero, Compress, OneHot, Unique, ReverseSequence --------------------------------------
def _topk_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    k_type = required(ctx, 1)
    if k_type.dtype != "i64" or k_type.rank > 1:
        raise ValueError(f"TopK k must be an i64 scalar or [1] tensor, got {k_type}")
    known = ctx.const_or_value(1)
    k: Dim = known[0] if known is not None and len(known) == 1 else ctx.fresh(0, axis)
    if isinstance(k, int) and (k < 0 or (isinstance(t.shape[axis], int) and k > t.shape[axis])):  # type: ignore[operator]
        raise ValueError(f"TopK k={k} is outside 0..{t.shape[axis]}")
    shape = tuple(k if i == axis else d for i, d in enumerate(t.shape))
    return [TensorType(t.dtype, shape), TensorType("i64", shape)]


def _topk_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, k_t = inputs[0], inputs[1]
    assert x is not None and k_t is not None
    k = int_list(k_t)[0]
    axis = norm_axis(attrs["axis"], x.ndim)
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"TopK k={k} is outside 0..{x.shape[axis]}")
    # Ties keep the lower index first (the ONNX reference). Descending order: a stable
    # ascending sort of the reversed axis, read backwards (no negation: ints would overflow).
    if attrs["largest"]:
        n = x.shape[axis]
        order = np.flip(n - 1 - np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


def _nonzero_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    # A scalar counts as one element of a 1-D tensor (onnxruntime): [[0]] or an empty [1, 0].
    return [np.stack(np.nonzero(np.atleast_1d(x))).astype(np.int64)]


def _compress_infer(ctx: InferCtx) -> list[TensorType]:
    t, cond = required(ctx), required(ctx, 1)
    if cond.dtype != "bool" or cond.rank != 1:
        raise ValueError(f"Compress condition must be a 1-D bool tensor, got {cond}")
    axis = ctx.attrs.get("axis")
    if axis is None:
        return [TensorType(t.dtype, (ctx.fresh(0, 0),))]
    axis = norm_axis(axis, t.rank)
    return [TensorType(t.dtype, tuple(ctx.fresh(0, i) if i == axis else d for i, d in enumerate(t.shape)))]


def _compress_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, cond = inputs[0], inputs[1]
    assert x is not None and cond is not None
    axis = attrs.get("axis")
    return [np.compress(cond.astype(bool), x, axis=None if axis is None else norm_axis(axis, x.ndim))]


def _onehot_infer(ctx: InferCtx) -> list[TensorType]:
    idx, depth_t, values = required(ctx), required(ctx, 1), required(ctx, 2)
    if depth_t.rank > 1 or values.rank != 1 or (isinstance(values.shape[0], int) and values.shape[0] != 2):
        raise ValueError(f"OneHot needs a scalar depth and two values, got {depth_t} and {values}")
    depth = ctx.consts[1] if len(ctx.consts) > 1 else None
    known = ctx.values[1] if depth is None and len(ctx.values) > 1 else None
    d: Dim = ctx.fresh(0, 0)
    if depth is not None:
        d = int(np.asarray(depth).reshape(-1)[0])  # depth may be a float tensor: truncated
    elif known is not None and len(known) == 1:
        d = known[0]
    if isinstance(d, int) and d < 1:
        raise ValueError(f"OneHot depth must be >= 1, got {d}")
    axis = norm_axis(ctx.attrs["axis"], idx.rank + 1)
    return [TensorType(values.dtype, idx.shape[:axis] + (d,) + idx.shape[axis:])]


def _onehot_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    idx, depth_t, values = inputs[0], inputs[1], inputs[2]
    assert idx is not None and depth_t is not None and values is not None
    depth = int(np.asarray(depth_t).reshape(-1)[0])
    idx = idx.astype(np.int64)  # float indices truncate toward zero
    idx = np.where(idx < 0, idx + depth, idx)  # out of range after this: all off values
    axis = norm_axis(attrs["axis"], idx.ndim + 1)
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape([-1 if i == axis else 1 for i in range(idx.ndim + 1)])
    return [np.where(hot, values[1], values[0]).astype(values.dtype)]


def _unique_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axis = ctx.attrs.get("axis")
    n = ctx.fresh(0, 0 if axis is None else norm_axis(axis, t.rank))
    if axis is None:
        y, count_in = TensorType(t.dtype, (n,)), dims.numel(t.shape)
    else:
        a = norm_axis(axis, t.rank)
        y, count_in = TensorType(t.dtype, tuple(n if i == a else d for i, d in enumerate(t.shape))), t.shape[a]
    return [y, TensorType("i64", (n,)), TensorType("i64", (count_in,)), TensorType("i64", (n,))]


def _unique_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = None if attrs.get("axis") is None else norm_axis(attrs["axis"], x.ndim)
    values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True, axis=axis)
    if not attrs["sorted"]:  # order of first occurrence
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        values = np.take(values, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    outs = [values, first.astype(np.int64), inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)]
    return outs[: len(ctx.node.outputs)]


def _reverse_sequence_infer(ctx: InferCtx) -> list[TensorType]:
    t, lens = required(ctx), required(ctx, 1)
    b, s = ctx.attrs["batch_axis"], ctx.attrs["time_axis"]
    if t.rank < 2 or {b, s} - {0, 1} or b == s:
        raise ValueError(f"ReverseSequence needs rank >= 2 and batch/time axes 0 and 1, got {b}, {s} for {t}")
    if lens.dtype != "i64" or lens.rank != 1:
        raise ValueError(f"ReverseSequence sequence_lens must be a 1-D i64 tensor, got {lens}")
    return [t]


def _reverse_sequence_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, lens = inputs[0], inputs[1]
    assert x is not None and lens is not None
    b_axis, t_axis = attrs["batch_axis"], attrs["time_axis"]
    steps = np.arange(x.shape[t_axis])
    n = np.clip(lens.astype(np.int64), 0, x.shape[t_axis])[:, None]
    source = np.where(steps < n, n - 1 - steps, steps)  # [batch, time]: the step each output reads
    if b_axis > t_axis:
        source = source.T
    return [np.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=t_axis)]


# --- Einsum, BitCast -------------------------------------------------------------------------------
def _einsum_terms(equation: str, count: int) -> tuple[list[str], str]:
    """Input terms and the output term (the implicit one: labels seen once, sorted, "..." first)."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != count:
        raise ValueError(f"Einsum equation {equation!r} has {len(terms)} operands, the node {count}")
    if not arrow:
        letters = lhs.replace(",", "").replace("...", "")
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        rhs = ("..." if "..." in lhs else "") + "".join(once)
    return terms, rhs


def _einsum_infer(ctx: InferCtx) -> list[TensorType]:
    present = [t for t in ctx.types if t is not None]
    if len({t.dtype for t in present}) != 1:
        raise ValueError(f"Einsum inputs must share one dtype, got {[str(t) for t in present]}")
    terms, rhs = _einsum_terms(ctx.attrs["equation"], len(present))
    sizes: dict[str, Dim] = {}
    ellipsis: tuple[Dim, ...] = ()
    for term, t in zip(terms, present):
        head, dots, tail = term.partition("...")
        labels: list[str | None] = list(term)
        if dots:
            n_ell = t.rank - len(head) - len(tail)
            if n_ell < 0:
                raise ValueError(f"Einsum term {term!r} does not fit {t}")
            ellipsis = dims.broadcast(ellipsis, t.shape[len(head) : len(head) + n_ell])
            labels = list(head) + [None] * n_ell + list(tail)
        if len(labels) != t.rank:
            raise ValueError(f"Einsum term {term!r} does not fit {t}")
        for label, d in zip(labels, t.shape):
            if label is None:
                continue
            seen = sizes.get(label, 1)
            if isinstance(seen, int) and isinstance(d, int) and 1 not in (seen, d) and seen != d:
                raise ValueError(f"Einsum label {label!r} is {seen} in one operand and {d} in another")
            if label not in sizes or seen == 1 or (isinstance(seen, str) and isinstance(d, int)):
                sizes[label] = d
    head, dots, tail = rhs.partition("...")
    missing = set(head + tail) - set(sizes)
    if missing:
        raise ValueError(f"Einsum output labels {sorted(missing)} appear in no input")
    shape = [sizes[c] for c in head] + (list(ellipsis) if dots else []) + [sizes[c] for c in tail]
    return [TensorType(present[0].dtype, tuple(shape))]


def _einsum_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # f16/bf16 are computed in f32 and rounded once; optimize=True contracts through BLAS.
    arrays = [a.astype(np.float32) if a.dtype.itemsize == 2 and a.dtype.kind in "fV" else a for a in inputs if a is not None]
    return [as_dtype(np.einsum(attrs["equation"].replace(" ", ""), *arrays, optimize=len(arrays) > 1), ctx)]


def _bitcast_infer(ctx: InferCtx) -> list[TensorType]:
    t, to = required(ctx), ctx.attrs["to"]
    if to not in dtypes.NUMPY:
        raise ValueError(f"BitCast to unknown dtype {to!r}")
    if dtypes.to_numpy(to).itemsize != t.np_dtype.itemsize:
        raise ValueError(f"BitCast needs types of one bit width: {t.dtype} -> {to}")
    return [TensorType(to, t.shape)]


def _bitcast_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    # The same bytes read as another type; ONNX fixes little endian, numpy's order on every host ember runs on.
    return [np.asarray(x, order="C").view(dtypes.to_numpy(attrs["to"]))]


def _bitcast_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ONNX stores `to` as a TensorProto code; ember keeps its dtype name, as for Cast.
    if isinstance(attrs.get("to"), int):
        attrs["to"] = dtypes.from_onnx(attrs["to"], "BitCast.to")
    return inputs, attrs


OPS: list[OpDef] = [
    OpDef(name="Gather", infer=_gather_infer, ref=_gather_ref, inputs=(2, 2), value=_gather_value,
          attrs={"axis": AttrSpec("int", 0)}),
    OpDef(name="GatherElements", infer=_gather_elements_infer, ref=_gather_elements_ref, inputs=(2, 2),
          attrs={"axis": AttrSpec("int", 0)}),
    OpDef(name="GatherND", infer=_gather_nd_infer, ref=_gather_nd_ref, inputs=(2, 2),
          attrs={"batch_dims": AttrSpec("int", 0)}),
    OpDef(name="ScatterND", infer=_scatter_nd_infer, ref=_scatter_nd_ref, inputs=(3, 3),
          attrs={"reduction": AttrSpec("str", "none")}),
    OpDef(name="ScatterElements", infer=_scatter_elements_infer, ref=_scatter_elements_ref, inputs=(3, 3),
          attrs={"axis": AttrSpec("int", 0), "reduction": AttrSpec("str", "none")}),
    OpDef(name="Scatter", infer=_scatter_elements_infer, ref=_scatter_elements_ref, inputs=(3, 3),
          attrs={"axis": AttrSpec("int", 0)}, doc="deprecated since opset 11: ScatterElements without reduction"),
    OpDef(name="Pad", infer=_pad_infer, ref=_pad_ref, inputs=(2, 4), attrs={"mode": AttrSpec("str", "constant")}),
    OpDef(name="TopK", infer=_topk_infer, ref=_topk_ref, inputs=(2, 2), outputs=(2, 2),
          attrs={"axis": AttrSpec("int", -1), "largest": AttrSpec("int", 1), "sorted": AttrSpec("int", 1)}),
    OpDef(name="NonZero", infer=lambda ctx: [TensorType("i64", (max(required(ctx).rank, 1), ctx.fresh(0, 1)))], ref=_nonzero_ref),
    OpDef(name="Compress", infer=_compress_infer, ref=_compress_ref, inputs=(2, 2), attrs={"axis": AttrSpec("int", None)}),
    OpDef(name="OneHot", infer=_onehot_infer, ref=_onehot_ref, inputs=(3, 3), attrs={"axis": AttrSpec("int", -1)}),
    OpDef(name="Unique", infer=_unique_infer, ref=_unique_ref, outputs=(1, 4),
          attrs={"axis": AttrSpec("int", None), "sorted": AttrSpec("int", 1)}),
    OpDef(name="ReverseSequence", infer=_reverse_sequence_infer, ref=_reverse_sequence_ref, inputs=(2, 2),
          attrs={"batch_axis": AttrSpec("int", 1), "time_axis": AttrSpec("int", 0)}),
    OpDef(name="Einsum", infer=_einsum_infer, ref=_einsum_ref, inputs=(1, -1), attrs={"equation": AttrSpec("str")}),
    OpDef(name="BitCast", infer=_bitcast_infer, ref=_bitcast_ref, upgrade=_bitcast_upgrade, attrs={"to": AttrSpec("str")}),
]
