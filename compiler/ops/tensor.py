"""Operators that index, scatter, pad, resize, sort or select tensor data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, norm_axis
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]


def _t(ctx: InferCtx, i: int = 0) -> TensorType:
    t = ctx.types[i]
    if t is None:
        raise ValueError(f"input {i} is required")
    return t


def _ints(a: np.ndarray | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def _present(inputs: Arrays, i: int) -> np.ndarray | None:
    return inputs[i] if len(inputs) > i else None


# --- Gather family -----------------------------------------------------------------------
def _gather_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx = _t(ctx), _t(ctx, 1)
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    return [TensorType(t.dtype, t.shape[:axis] + idx.shape + t.shape[axis + 1 :])]


def _gather_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


def _gather_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    data = ctx.const_or_value(0)
    idx = ctx.const_or_value(1)
    if data is None or idx is None or _t(ctx).rank != 1 or not all(isinstance(i, int) for i in idx):
        return None
    return tuple(data[int(i)] for i in idx)


def _gather_elements_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    # Off the gather axis the output follows the indices' shape, which may be smaller than
    # the data's: crop the data there (take_along_axis would broadcast instead).
    crop = tuple(slice(None) if a == axis else slice(0, idx.shape[a]) for a in range(x.ndim))
    return [np.take_along_axis(x[crop], idx, axis=axis)]


def _gather_nd_infer(ctx: InferCtx) -> list[TensorType]:
    t, idx = _t(ctx), _t(ctx, 1)
    b = ctx.attrs["batch_dims"]
    last = idx.shape[-1]
    if not isinstance(last, int):
        raise ValueError("GatherND index depth must be static")
    return [TensorType(t.dtype, idx.shape[:-1] + t.shape[b + last :])]


def _gather_nd_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    b = attrs["batch_dims"]
    batch_shape = x.shape[:b]
    nb = int(np.prod(batch_shape, dtype=np.int64))
    xs = x.reshape((nb,) + x.shape[b:])
    ids = idx.reshape((nb, -1, idx.shape[-1]))
    depth = idx.shape[-1]
    out = []
    for i in range(nb):
        where = ids[i]
        where = np.where(where < 0, where + np.array(xs.shape[1 : 1 + depth]), where)
        out.append(xs[i][tuple(where.T)])
    result = np.stack(out) if out else np.zeros((0,) + x.shape[b + depth :], x.dtype)
    return [result.reshape(idx.shape[:-1] + x.shape[b + depth :])]


def _reduce_into(target: np.ndarray, index: tuple[Any, ...], values: np.ndarray, how: str) -> None:
    if how == "none":
        target[index] = values
    elif how == "add":
        np.add.at(target, index, values)
    elif how == "mul":
        np.multiply.at(target, index, values)
    elif how == "max":
        np.maximum.at(target, index, values)
    elif how == "min":
        np.minimum.at(target, index, values)
    else:
        raise ValueError(f"unknown reduction {how!r}")


def _scatter_nd_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None and idx is not None and upd is not None
    out = x.copy()
    depth = idx.shape[-1]
    flat_idx = idx.reshape(-1, depth)
    flat_upd = upd.reshape((flat_idx.shape[0],) + x.shape[depth:])
    flat_idx = np.where(flat_idx < 0, flat_idx + np.array(x.shape[:depth]), flat_idx)
    if attrs["reduction"] == "none":
        for i in range(flat_idx.shape[0]):
            out[tuple(flat_idx[i])] = flat_upd[i]
    else:
        _reduce_into(out, tuple(flat_idx.T), flat_upd, attrs["reduction"])
    return [out]


def _scatter_elements_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None and idx is not None and upd is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    out = x.copy()
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    _reduce_into(out, tuple(grid), upd, attrs.get("reduction", "none"))
    return [out]


# --- Pad ---------------------------------------------------------------------------------
def _pad_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    if "pads" in attrs:  # Pad-2: pads and value as attributes
        pads = np.array(attrs.pop("pads"), dtype=np.int64)
        value = attrs.pop("value", 0.0)
        dtype = types[0].np_dtype if types and types[0] is not None else np.float32
        inputs = [inputs[0], pads, np.array(value, dtype=dtype)]
    return inputs, attrs


def _pad_layout(rank: int, pads: list[int], axes: list[int] | None) -> list[tuple[int, int]]:
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    n = len(axes)
    if len(pads) != 2 * n:
        raise ValueError(f"Pad needs {2 * n} pad values, got {len(pads)}")
    width = [(0, 0)] * rank
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + n])
    return width


def _pad_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    pads = ctx.const_or_value(1)
    axes = ctx.const_or_value(3) if len(ctx.types) > 3 and ctx.types[3] is not None else None
    if pads is None or not all(isinstance(p, int) for p in pads):
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
    width = _pad_layout(t.rank, list(pads), axes and list(axes))  # type: ignore[arg-type]
    return [TensorType(t.dtype, tuple(dims.add(dims.add(d, lo), hi) for d, (lo, hi) in zip(t.shape, width)))]


def _pad_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = _present(inputs, 3)
    width = _pad_layout(x.ndim, _ints(inputs[1]), _ints(axes) if axes is not None else None)
    # Negative pads crop.
    crop = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(width))
    x = x[crop]
    width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    mode = attrs["mode"]
    if mode == "constant":
        value = _present(inputs, 2)
        fill = np.asarray(value).reshape(-1)[0] if value is not None and np.asarray(value).size else 0
        return [np.pad(x, width, mode="constant", constant_values=fill)]
    numpy_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    return [np.pad(x, width, mode=numpy_mode)]


# --- Resize --------------------------------------------------------------------------------

def _resize_out_shape(
    shape: Sequence[Dim], scales: Sequence[float] | None, sizes: Sequence[Dim] | None, axes: Sequence[int] | None, policy: str
) -> tuple[list[Dim], list[float]]:
    rank = len(shape)
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    out, scale = list(shape), [1.0] * rank
    if sizes is not None and len(sizes):
        if policy != "stretch" and all(isinstance(shape[a], int) for a in axes):
            ratios = [sizes[i] / shape[a] for i, a in enumerate(axes)]  # type: ignore[operator]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scale[a] = s
                out[a] = int(np.floor(s * shape[a] + 0.5))  # type: ignore[operator]
            return out, scale
        for i, a in enumerate(axes):
            out[a] = sizes[i]
            scale[a] = sizes[i] / shape[a] if isinstance(shape[a], int) and isinstance(sizes[i], int) and shape[a] else 1.0  # type: ignore[operator]
        return out, scale
    assert scales is not None
    for i, a in enumerate(axes):
        scale[a] = float(scales[i])
        d = shape[a]
        out[a] = int(np.floor(d * scale[a])) if isinstance(d, int) else (d if scale[a] == 1.0 else f"{d}*{scale[a]}")
    return out, scale


def _resize_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    scales = ctx.consts[2] if len(ctx.consts) > 2 else None
    sizes = ctx.const_or_value(3) if len(ctx.types) > 3 and ctx.types[3] is not None else None
    if (scales is None or np.asarray(scales).size == 0) and sizes is None:
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
    scale_list = None if scales is None or np.asarray(scales).size == 0 else [float(s) for s in np.asarray(scales).reshape(-1)]
    out, _ = _resize_out_shape(t.shape, scale_list, sizes, ctx.attrs.get("axes"), ctx.attrs["keep_aspect_ratio_policy"])
    out = [d if isinstance(d, int) or "*" not in str(d) else ctx.fresh(0, i) for i, d in enumerate(out)]
    return [TensorType(t.dtype, tuple(out))]


def _source_coords(mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None) -> np.ndarray:
    """Output index -> input coordinate, as ONNX defines each coordinate_transformation_mode.

    `length_resized` in the spec is scale * in_len as a float (not the rounded out_len).
    """
    x = np.arange(out_len, dtype=np.float64)
    resized = scale * in_len
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if resized != 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (in_len - 1) / (resized - 1) if resized != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if resized != 1:
            return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (resized - 1)
        return np.full_like(x, (end - start) * (in_len - 1) / 2 + start * (in_len - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0)
    )


def _axis_weights(in_len: int, out_len: int, scale: float, attrs: Attrs, roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Weights [out_len, in_len] for one axis and a mask of outputs outside the input (tf_crop)."""
    mode = attrs["mode"]
    coords = _source_coords(attrs["coordinate_transformation_mode"], out_len, in_len, scale, roi)
    outside = np.zeros(out_len, dtype=bool)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        outside = (coords < 0) | (coords > in_len - 1)
    weights = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.arange(out_len)
    if mode == "nearest":
        nm = attrs["nearest_mode"]
        if nm == "round_prefer_floor":
            idx = np.where(coords == np.floor(coords) + 0.5, np.floor(coords), np.round(coords))
        elif nm == "round_prefer_ceil":
            idx = np.where(coords == np.floor(coords) + 0.5, np.ceil(coords), np.round(coords))
        elif nm == "floor":
            idx = np.floor(coords)
        else:
            idx = np.ceil(coords)
        idx = np.clip(idx, 0, in_len - 1).astype(np.int64)
        weights[rows, idx] = 1.0
        return weights, outside
    antialias = bool(attrs["antialias"]) and scale < 1.0
    support_scale = scale if antialias else 1.0
    if mode == "linear":
        radius = 1.0 / support_scale
        def kernel(d: np.ndarray) -> np.ndarray:
            return np.maximum(0.0, 1.0 - np.abs(d) * support_scale)
    else:
        radius = 2.0 / support_scale
        a = attrs["cubic_coeff_a"]
        def kernel(d: np.ndarray) -> np.ndarray:
            return _cubic(d * support_scale, a)
    base = np.floor(coords)
    span = int(np.ceil(radius)) + 1
    offsets = np.arange(-span, span + 1)
    taps = base[:, None] + offsets[None, :]
    w = kernel(taps - coords[:, None])
    w = np.where(np.abs(taps - coords[:, None]) < radius + 1e-9 if not antialias else True, w, 0.0)
    inside = (taps >= 0) & (taps <= in_len - 1)
    if attrs["exclude_outside"] or antialias:
        # Antialiasing filters are normalised over their whole (edge-padded) footprint;
        # exclude_outside drops taps beyond the border first.
        if attrs["exclude_outside"]:
            w = np.where(inside, w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = np.where(total != 0, w / np.where(total == 0, 1, total), w)
    clipped = np.clip(taps, 0, in_len - 1).astype(np.int64)
    for k in range(taps.shape[1]):
        np.add.at(weights, (rows, clipped[:, k]), w[:, k])
    return weights, outside


def _resize_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    roi_t, scales_t, sizes_t = _present(inputs, 1), _present(inputs, 2), _present(inputs, 3)
    axes = attrs.get("axes")
    rank = x.ndim
    axes_n = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    scales = [float(s) for s in scales_t.reshape(-1)] if scales_t is not None and scales_t.size else None
    sizes = _ints(sizes_t) if sizes_t is not None and sizes_t.size else None
    out_shape, scale = _resize_out_shape(x.shape, scales, sizes, axes, attrs["keep_aspect_ratio_policy"])
    roi: dict[int, tuple[float, float]] = {}
    if roi_t is not None and roi_t.size:
        r = roi_t.reshape(-1).astype(np.float64)
        n = len(axes_n)
        for i, a in enumerate(axes_n):
            roi[a] = (float(r[i]), float(r[i + n]))
    y = x.astype(np.float64)
    outside_any = np.zeros(tuple(int(d) for d in out_shape), dtype=bool)
    for axis in range(rank):
        in_len, out_len = x.shape[axis], int(out_shape[axis])
        if in_len == out_len and scale[axis] == 1.0 and axis not in roi:
            continue
        w, outside = _axis_weights(in_len, out_len, scale[axis], attrs, roi.get(axis))
        y = np.moveaxis(np.tensordot(y, w, axes=([axis], [1])), -1, axis)
        shape = [1] * rank
        shape[axis] = out_len
        outside_any = outside_any | outside.reshape(shape)
    if outside_any.any():
        y = np.where(outside_any, attrs["extrapolation_value"], y)
    if x.dtype.kind in "iu":
        y = np.round(y)
    return [as_dtype(y, ctx)]


# --- TopK, NonZero, Compress, OneHot, Unique, ReverseSequence, Einsum -----------------------
def _topk_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    axis = norm_axis(ctx.attrs["axis"], t.rank)
    k = ctx.const_or_value(1)
    kdim: Dim = k[0] if k is not None else ctx.fresh(0, axis)
    shape = tuple(kdim if i == axis else d for i, d in enumerate(t.shape))
    return [TensorType(t.dtype, shape), TensorType("i64", shape)]


def _topk_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, k_t = inputs[0], inputs[1]
    assert x is not None and k_t is not None
    k = int(k_t.reshape(-1)[0])
    axis = norm_axis(attrs["axis"], x.ndim)
    # Stable sort: ties keep the lower index first, as ONNX's reference does.
    order = np.argsort(-x if attrs["largest"] else x, axis=axis, kind="stable")
    if attrs["largest"] and x.dtype.kind == "u":
        order = np.argsort(x.max() - x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


def _nonzero_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


def _compress_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
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
    idx, values = _t(ctx), _t(ctx, 2)
    depth = ctx.const_or_value(1)
    d: Dim = int(depth[0]) if depth is not None and isinstance(depth[0], int) else ctx.fresh(0, 0)
    if ctx.consts[1] is not None:
        d = int(np.asarray(ctx.consts[1]).reshape(-1)[0])
    rank = idx.rank + 1
    axis = norm_axis(ctx.attrs["axis"], rank)
    shape = list(idx.shape)
    shape.insert(axis, d)
    return [TensorType(values.dtype, tuple(shape))]


def _onehot_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    idx, depth_t, values = inputs[0], inputs[1], inputs[2]
    assert idx is not None and depth_t is not None and values is not None
    depth = int(np.asarray(depth_t).reshape(-1)[0])
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    rank = idx.ndim + 1
    axis = norm_axis(attrs["axis"], rank)
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape([-1 if i == axis else 1 for i in range(rank)])
    return [np.where(hot, values[1], values[0]).astype(values.dtype)]


def _unique_infer(ctx: InferCtx) -> list[TensorType]:
    t = _t(ctx)
    axis = ctx.attrs.get("axis")
    n = ctx.fresh(0, 0)
    if axis is None:
        y = TensorType(t.dtype, (n,))
    else:
        a = norm_axis(axis, t.rank)
        y = TensorType(t.dtype, tuple(n if i == a else d for i, d in enumerate(t.shape)))
    count_in = dims.numel(t.shape) if axis is None else t.shape[norm_axis(axis, t.rank)]
    return [y, TensorType("i64", (n,)), TensorType("i64", (count_in,)), TensorType("i64", (n,))]


def _unique_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = attrs.get("axis")
    values, index, inverse, counts = np.unique(
        x, return_index=True, return_inverse=True, return_counts=True,
        axis=None if axis is None else norm_axis(axis, x.ndim),
    )
    if not attrs["sorted"]:
        order = np.argsort(index, kind="stable")
        remap = np.empty_like(order)
        remap[order] = np.arange(len(order))
        values = np.take(values, order, axis=0 if axis is None else norm_axis(axis, x.ndim))
        index, counts, inverse = index[order], counts[order], remap[inverse]
    return [values, index.astype(np.int64), inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)]


def _reverse_sequence_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, lens = inputs[0], inputs[1]
    assert x is not None and lens is not None
    b_axis, t_axis = attrs["batch_axis"], attrs["time_axis"]
    out = x.copy()
    for b, n in enumerate(lens.astype(np.int64)):
        src = [slice(None)] * x.ndim
        src[b_axis] = b
        src[t_axis] = slice(0, int(n))
        dst = list(src)
        out[tuple(dst)] = np.flip(x[tuple(src)], axis=t_axis - (1 if b_axis < t_axis else 0))
    return [out]


def _einsum_infer(ctx: InferCtx) -> list[TensorType]:
    eq = ctx.attrs["equation"].replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, Dim] = {}
    ell: tuple[Dim, ...] = ()
    present = [t for t in ctx.types if t is not None]
    for term, t in zip(terms, present):
        if "..." in term:
            head, tail = term.split("...")
            n_ell = t.rank - len(head) - len(tail)
            this_ell = t.shape[len(head) : len(head) + n_ell]
            ell = dims.broadcast(ell, this_ell)
            letters = list(head) + [None] * n_ell + list(tail)
        else:
            letters = list(term)
        for letter, d in zip(letters, t.shape):
            if letter is not None and (letter not in sizes or sizes[letter] == 1):
                sizes[letter] = d
    if not _:
        counts: dict[str, int] = {}
        for ch in lhs.replace(",", "").replace("...", ""):
            counts[ch] = counts.get(ch, 0) + 1
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, k in counts.items() if k == 1))
    shape: list[Dim] = []
    head, sep, tail = rhs.partition("...")
    shape += [sizes[c] for c in head]
    if sep:
        shape += list(ell)
        shape += [sizes[c] for c in tail]
    return [TensorType(present[0].dtype, tuple(shape))]


def _einsum_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # numpy's einsum has no bfloat16 kernels: compute low-precision floats in float32.
    arrays = [a.astype(np.float32) if a.dtype.kind == "V" else a for a in inputs if a is not None]
    return [as_dtype(np.einsum(attrs["equation"].replace(" ", ""), *arrays), ctx)]



OPS: list[OpDef] = [
    OpDef(name="Gather", infer=_gather_infer, ref=_gather_ref, inputs=(2, 2), value=_gather_value,
          attrs={"axis": AttrSpec("int", 0)}),
    OpDef(name="GatherElements", infer=lambda ctx: [TensorType(_t(ctx).dtype, _t(ctx, 1).shape)],
          ref=_gather_elements_ref, inputs=(2, 2), attrs={"axis": AttrSpec("int", 0)}),
    OpDef(name="GatherND", infer=_gather_nd_infer, ref=_gather_nd_ref, inputs=(2, 2),
          attrs={"batch_dims": AttrSpec("int", 0)}),
    OpDef(name="ScatterND", infer=lambda ctx: [_t(ctx)], ref=_scatter_nd_ref, inputs=(3, 3),
          attrs={"reduction": AttrSpec("str", "none")}),
    OpDef(name="ScatterElements", infer=lambda ctx: [_t(ctx)], ref=_scatter_elements_ref, inputs=(3, 3),
          attrs={"axis": AttrSpec("int", 0), "reduction": AttrSpec("str", "none")}),
    OpDef(name="Scatter", infer=lambda ctx: [_t(ctx)], ref=_scatter_elements_ref, inputs=(3, 3),
          attrs={"axis": AttrSpec("int", 0)}, doc="deprecated alias of ScatterElements"),
    OpDef(name="Pad", infer=_pad_infer, ref=_pad_ref, inputs=(1, 4), upgrade=_pad_upgrade,
          attrs={"mode": AttrSpec("str", "constant"), "pads": AttrSpec("ints", None), "value": AttrSpec("float", None)}),
    OpDef(
        name="Resize",
        infer=_resize_infer,
        ref=_resize_ref,
        inputs=(1, 4),
        attrs={
            "antialias": AttrSpec("int", 0),
            "axes": AttrSpec("ints", None),
            "coordinate_transformation_mode": AttrSpec("str", "half_pixel"),
            "cubic_coeff_a": AttrSpec("float", -0.75),
            "exclude_outside": AttrSpec("int", 0),
            "extrapolation_value": AttrSpec("float", 0.0),
            "keep_aspect_ratio_policy": AttrSpec("str", "stretch"),
            "mode": AttrSpec("str", "nearest"),
            "nearest_mode": AttrSpec("str", "round_prefer_floor"),
        },
    ),
    OpDef(name="TopK", infer=_topk_infer, ref=_topk_ref, inputs=(2, 2), outputs=(2, 2),
          attrs={"axis": AttrSpec("int", -1), "largest": AttrSpec("int", 1), "sorted": AttrSpec("int", 1)}),
    OpDef(name="NonZero", infer=lambda ctx: [TensorType("i64", (_t(ctx).rank, ctx.fresh(0, 1)))], ref=_nonzero_ref),
    OpDef(name="Compress", infer=_compress_infer, ref=_compress_ref, inputs=(2, 2), attrs={"axis": AttrSpec("int", None)}),
    OpDef(name="OneHot", infer=_onehot_infer, ref=_onehot_ref, inputs=(3, 3), attrs={"axis": AttrSpec("int", -1)}),
    OpDef(name="Unique", infer=_unique_infer, ref=_unique_ref, outputs=(1, 4),
          attrs={"axis": AttrSpec("int", None), "sorted": AttrSpec("int", 1)}),
    OpDef(name="ReverseSequence", infer=lambda ctx: [_t(ctx)], ref=_reverse_sequence_ref, inputs=(2, 2),
          attrs={"batch_axis": AttrSpec("int", 1), "time_axis": AttrSpec("int", 0)}),
    OpDef(name="Einsum", infer=_einsum_infer, ref=_einsum_ref, inputs=(1, -1), attrs={"equation": AttrSpec("str")}),
]

