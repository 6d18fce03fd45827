"""Operators that build tensors from shapes (ConstantOfShape, Range, EyeLike), keep a triangle
(Trilu) or move blocks of data between axes (DepthToSpace, SpaceToDepth, CenterCropPad).

ConstantOfShape and Range give their contents through `value` when they are small and known,
as they appear in run-time shape arithmetic (`Range(0, Shape(x)[1], 1)`, masks of ones).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.dims import Dim
from ember.compiler.infer import MAX_TRACKED
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, int_list, norm_axis, required
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
_RANGE_TYPES = ("f64", "f32", "f16", "bf16", "i64", "i32", "i16")


def _shape_operand(ctx: InferCtx, i: int) -> tuple[Dim, ...]:
    """A 1-D shape operand's contents, or fresh symbols for its (static) length."""
    t = required(ctx, i)
    if t.rank != 1 or t.dtype not in ("i64", "i32"):
        raise ValueError(f"{ctx.op} input {i} must be a 1-D integer shape, got {t}")
    known = ctx.const_or_value(i)
    if known is None:
        n = t.shape[0]
        if not isinstance(n, int):
            raise ValueError(f"{ctx.op} shape input of unknown length (the output rank must be fixed)")
        return tuple(ctx.fresh(0, k) for k in range(n))
    if any(isinstance(d, int) and d < 0 for d in known):
        raise ValueError(f"{ctx.op} shape {list(known)} has a negative size")
    return tuple(known)


def _dtype_attr_upgrade(key: str) -> Any:
    """upgrade: the dtype-valued attribute `key` from a TensorProto code to an ember name."""

    def upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        if isinstance(attrs.get(key), int):
            attrs[key] = dtypes.from_onnx(attrs[key], f"{key} attribute")
        return inputs, attrs

    return upgrade


# --- ConstantOfShape -------------------------------------------------------------------------
def _fill(attrs: Attrs) -> np.ndarray:
    """The one-element `value` tensor (float32 0 when absent)."""
    value = attrs.get("value")
    if value is None:
        return np.zeros(1, np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"ConstantOfShape value must hold one element, got shape {list(value.shape)}")
    return value.reshape(1)


def _cos_infer(ctx: InferCtx) -> list[TensorType]:
    return [TensorType(dtypes.from_numpy(_fill(ctx.attrs).dtype), _shape_operand(ctx, 0))]


def _cos_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    fill = _fill(attrs)
    return [np.full(tuple(int_list(inputs[0])), fill[0], dtype=fill.dtype)]


def _cos_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    shape, fill = ctx.const_or_value(0), _fill(ctx.attrs)
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int) or fill.dtype.kind not in "iub":
        return None
    return (int(fill[0]),) * shape[0] if shape[0] <= MAX_TRACKED else None


# --- Range -----------------------------------------------------------------------------------
def _range_bounds(ctx: InferCtx) -> list[Any] | None:
    """start, limit, delta when known: numbers for constants, dims for tracked int contents."""
    bounds = []
    for i in range(3):
        const = ctx.consts[i] if i < len(ctx.consts) else None
        known = np.asarray(const).reshape(-1)[0].item() if const is not None else (
            ctx.values[i][0] if i < len(ctx.values) and ctx.values[i] is not None and len(ctx.values[i]) == 1 else None)  # type: ignore[index]
        if known is None:
            return None
        bounds.append(known)
    return bounds


def _range_count(start: Any, limit: Any, delta: Any) -> Dim | None:
    """max(ceil((limit - start) / delta), 0); None when symbolic bounds leave it unknown.

    A symbolic count needs the far bound symbolic and the near one a constant (Range(0, S, 1)
    = S, Range(S - 1, -1, -1) = S), assumed not to cross.
    """
    if delta == 0:
        raise ValueError("Range delta cannot be 0")
    if all(isinstance(v, int) for v in (start, limit, delta)):
        return max(-((start - limit) // delta), 0)  # exact for int64 bounds past 2**53
    if all(isinstance(v, (int, float)) for v in (start, limit, delta)):
        return max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    near, far = (start, limit) if isinstance(delta, int) and delta > 0 else (limit, start)
    if not isinstance(delta, int) or not isinstance(near, int) or str(far).startswith("-"):
        return None
    return dims.ceildiv(dims.add(far, -near), abs(delta))


def _range_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    if t.dtype not in _RANGE_TYPES:
        raise ValueError(f"Range needs one of {', '.join(_RANGE_TYPES)}, got {t.dtype}")
    for i in range(3):
        other = required(ctx, i)
        if other.dtype != t.dtype or other.rank > 1 or (other.rank == 1 and other.shape[0] != 1):
            raise ValueError(f"Range inputs must be scalars of one dtype, got {t} and {other}")
    if ctx.attrs["stash_type"] not in ("f32", "f64"):
        raise ValueError(f"Range stash_type must be f32 or f64, got {ctx.attrs['stash_type']!r}")
    bounds = _range_bounds(ctx)
    count = _range_count(*bounds) if bounds is not None else None
    return [TensorType(t.dtype, (ctx.fresh(0, 0) if count is None else count,))]


def _range_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(a).reshape(-1)[0] for a in inputs)  # type: ignore[arg-type]
    n = _range_count(start.item(), limit.item(), delta.item())
    assert isinstance(n, int)  # numbers always give a count
    if start.dtype.kind in "iu":
        return [as_dtype(start.item() + np.arange(n, dtype=np.int64) * delta.item(), ctx)]
    # start + i * delta in float64 (onnx's reference), or in stash_type for f16/bf16.
    low = start.dtype.itemsize == 2
    work = dtypes.to_numpy(attrs["stash_type"]) if low else np.dtype(np.float64)
    steps = np.arange(n, dtype=work)
    return [as_dtype(start.astype(work) + steps * delta.astype(work), ctx)]


def _range_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    bounds = _range_bounds(ctx)
    if bounds is None or not all(isinstance(v, int) for v in bounds) or bounds[2] == 0:
        return None
    count = _range_count(*bounds)
    return tuple(range(*bounds)) if isinstance(count, int) and count <= MAX_TRACKED else None


# --- EyeLike, Trilu --------------------------------------------------------------------------
def _eyelike_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    if t.rank != 2:
        raise ValueError(f"EyeLike needs a 2-D input, got {t}")
    dtype = ctx.attrs.get("dtype") or t.dtype
    if dtype not in dtypes.NUMPY:
        raise ValueError(f"EyeLike dtype {dtype!r} is unknown")
    return [TensorType(dtype, t.shape)]


def _eyelike_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [np.eye(x.shape[0], x.shape[1], k=attrs["k"], dtype=ctx.out_types[0].np_dtype)]


def _trilu_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    if t.rank < 2:
        raise ValueError(f"Trilu needs an input of rank >= 2, got {t}")
    k = ctx.types[1] if len(ctx.types) > 1 else None
    if k is not None and (k.dtype != "i64" or k.rank > 1):
        raise ValueError(f"Trilu k must be an i64 scalar, got {k}")
    return [t]


def _trilu_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    k = int_list(inputs[1])[0] if len(inputs) > 1 and inputs[1] is not None else 0
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]


# --- DepthToSpace, SpaceToDepth, CenterCropPad ------------------------------------------------
def _nchw(ctx: InferCtx) -> tuple[TensorType, int]:
    t = required(ctx)
    b = ctx.attrs["blocksize"]
    if t.rank != 4:
        raise ValueError(f"{ctx.op} needs a 4-D NCHW input, got {t}")
    if b < 1:
        raise ValueError(f"{ctx.op} blocksize must be >= 1, got {b}")
    if ctx.attrs["mode"] not in ("DCR", "CRD"):
        raise ValueError(f"{ctx.op} mode must be DCR or CRD, got {ctx.attrs['mode']!r}")
    return t, b


def _d2s_infer(ctx: InferCtx) -> list[TensorType]:
    t, b = _nchw(ctx)
    n, c, h, w = t.shape
    if isinstance(c, int) and c % (b * b):
        raise ValueError(f"DepthToSpace channels {c} are not a multiple of blocksize^2 = {b * b}")
    return [TensorType(t.dtype, (n, dims.floordiv(c, b * b), dims.mul(h, b), dims.mul(w, b)))]


def _d2s_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs["mode"] == "DCR":  # channel = (row offset, column offset, depth)
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD: channel = (depth, row offset, column offset)
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


def _s2d_infer(ctx: InferCtx) -> list[TensorType]:
    t, b = _nchw(ctx)
    n, c, h, w = t.shape
    if any(isinstance(d, int) and d % b for d in (h, w)):
        raise ValueError(f"SpaceToDepth spatial dims {h}x{w} are not multiples of blocksize {b}")
    return [TensorType(t.dtype, (n, dims.mul(c, b * b), dims.floordiv(h, b), dims.floordiv(w, b)))]


def _s2d_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    # DCR puts the block offsets before the channel, CRD after it (inverses of DepthToSpace).
    y = y.transpose(0, 3, 5, 1, 2, 4) if attrs["mode"] == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


def _ccp_axes(rank: int, attrs: Attrs) -> list[int]:
    axes = attrs.get("axes")
    chosen = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"CenterCropPad axes {list(axes or ())} repeat")
    return chosen


def _ccp_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    axes = _ccp_axes(t.rank, ctx.attrs)
    shape = _shape_operand(ctx, 1)
    if len(shape) != len(axes):
        raise ValueError(f"CenterCropPad shape has {len(shape)} sizes for {len(axes)} axes")
    out = list(t.shape)
    for a, size in zip(axes, shape):
        out[a] = size
    return [TensorType(t.dtype, tuple(out))]


def _ccp_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    out_shape = list(x.shape)
    for a, size in zip(_ccp_axes(x.ndim, attrs), int_list(inputs[1])):
        d = x.shape[a]
        out_shape[a] = size
        if size <= d:  # crop centred; an odd excess drops the extra element at the end
            start = (d - size) // 2
            src[a] = slice(start, start + size)
        else:  # pad centred with zeros; an odd excess pads the extra element at the end
            start = (size - d) // 2
            dst[a] = slice(start, start + d)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return [out]


OPS: list[OpDef] = [
    OpDef(name="ConstantOfShape", infer=_cos_infer, ref=_cos_ref, value=_cos_value,
          attrs={"value": AttrSpec("tensor", None)}),
    OpDef(name="Range", infer=_range_infer, ref=_range_ref, inputs=(3, 3), value=_range_value,
          upgrade=_dtype_attr_upgrade("stash_type"), attrs={"stash_type": AttrSpec("str", "f32")}),
    OpDef(name="EyeLike", infer=_eyelike_infer, ref=_eyelike_ref, upgrade=_dtype_attr_upgrade("dtype"),
          attrs={"dtype": AttrSpec("str", None), "k": AttrSpec("int", 0)}),
    OpDef(name="Trilu", infer=_trilu_infer, ref=_trilu_ref, inputs=(1, 2), attrs={"upper": AttrSpec("int", 1)}),
    OpDef(name="DepthToSpace", infer=_d2s_infer, ref=_d2s_ref,
          attrs={"blocksize": AttrSpec("int"), "mode": AttrSpec("str", "DCR")}),
    OpDef(name="SpaceToDepth", infer=_s2d_infer, ref=_s2d_ref,
          attrs={"blocksize": AttrSpec("int"), "mode": AttrSpec("str", "DCR")}),
    OpDef(name="CenterCropPad", infer=_ccp_infer, ref=_ccp_ref, inputs=(2, 2), attrs={"axes": AttrSpec("ints", None)}),
]
