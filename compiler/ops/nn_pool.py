"""Operators: pooling (MaxPool, AveragePool, LpPool, their Global forms) and MaxUnpool.

Every window reduction runs on a sliding-window view (nn.windows) of the input padded with
the reduction's identity (-inf for max, 0 for sums), so no Python loop touches a pixel.
Average pooling divides by a per-window count that is the outer product of per-axis counts
(the taps that land in the input, or in input + pads with count_include_pad).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.elementwise import FLOAT, check_dtype, upcast
from ember.compiler.ops.nn import (
    Arrays,
    Attrs,
    _resolve_auto_pad,
    check_window_attrs,
    explicit_pads,
    fold_windows,
    ones_per_axis,
    opt,
    req,
    window_dims,
    windows,
    zero_pads,
)
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

POOL_ATTRS = {
    "auto_pad": AttrSpec("str", "NOTSET"),
    "ceil_mode": AttrSpec("int", 0),
    "dilations": AttrSpec("ints", ones_per_axis),
    "kernel_shape": AttrSpec("ints"),
    "pads": AttrSpec("ints", zero_pads),
    "strides": AttrSpec("ints", ones_per_axis),
}
MAXPOOL_TYPES = FLOAT + ("i8", "u8")


def _pool_infer(allowed: tuple[str, ...], indices: bool = False) -> Any:
    def infer(ctx: InferCtx) -> list[TensorType]:
        check_dtype(ctx, 0, allowed)
        x = req(ctx)
        spatial = window_dims(ctx, x, ctx.attrs["kernel_shape"], bool(ctx.attrs["ceil_mode"]))
        y = TensorType(x.dtype, x.shape[:2] + spatial)
        if ctx.num_outputs > 1 and not indices:
            raise ValueError(f"{ctx.op} has one output, the node declares {ctx.num_outputs}")
        return [y, TensorType("i64", y.shape)][: max(ctx.num_outputs, 1)]

    return infer


def _pool_fold(x: np.ndarray, attrs: Attrs, fill: Any, ufunc: np.ufunc) -> tuple[np.ndarray, tuple[int, ...]]:
    """(ufunc over each window of x, the pads in effect)."""
    k = attrs["kernel_shape"]
    pads = explicit_pads(x.shape[2:], attrs, k)
    return fold_windows(x, k, attrs["strides"], attrs["dilations"], pads, fill, ufunc, bool(attrs["ceil_mode"])), pads


def _maxpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    xf = upcast(x)
    fill = -np.inf if xf.dtype.kind == "f" else np.iinfo(xf.dtype).min
    if len(ctx.node.outputs) < 2:
        return [as_dtype(_pool_fold(xf, attrs, fill, np.maximum)[0], ctx)]
    k, s, d = attrs["kernel_shape"], attrs["strides"], attrs["dilations"]
    n = len(k)
    pads = explicit_pads(x.shape[2:], attrs, k)
    win = windows(xf, k, s, d, pads, fill, bool(attrs["ceil_mode"]))
    flat = win.reshape(win.shape[: x.ndim] + (int(np.prod(k)),))
    y = flat.max(axis=-1)
    # Indices: the first maximum's position in the unpadded input, flattened over
    # [N, C, *spatial] (storage_order=1: spatial axes column-major, N and C as before).
    taps = np.unravel_index(flat.argmax(axis=-1), tuple(k))
    coords = []
    for i in range(n):
        start = (np.arange(y.shape[2 + i]) * s[i] - pads[i]).reshape((-1,) + (1,) * (n - 1 - i))
        coords.append(start + taps[i] * d[i])
    spatial = x.shape[2:]
    order = range(n - 1, -1, -1) if attrs["storage_order"] else range(n)
    offset = np.zeros(y.shape, dtype=np.int64)
    for i in order:
        offset = offset * spatial[i] + coords[i]
    plane = int(np.prod(spatial))
    base = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * n) * plane
    return [as_dtype(y, ctx), (offset + base).astype(np.int64)]


def _axis_counts(size: int, out: int, k: int, s: int, d: int, lo: int, hi: int, include_pad: bool) -> np.ndarray:
    """Per output position along one axis: how many taps land in the input (or input + pads)."""
    pos = (np.arange(out) * s - lo)[:, None] + np.arange(k)[None, :] * d
    low, high = (-lo, size + hi) if include_pad else (0, size)
    return ((pos >= low) & (pos < high)).sum(axis=1)


def _avgpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    total, pads = _pool_fold(upcast(x), attrs, 0, np.add)
    k, s, d = attrs["kernel_shape"], attrs["strides"], attrs["dilations"]
    n = len(k)
    count = np.ones((1, 1) + (1,) * n)
    for i in range(n):
        c = _axis_counts(x.shape[2 + i], total.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n],
                         bool(attrs["count_include_pad"]))
        count = count * c.reshape((1, 1) + (1,) * i + (-1,) + (1,) * (n - 1 - i))
    with np.errstate(invalid="ignore", divide="ignore"):
        return [as_dtype(total / count, ctx)]


def _lppool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    p = attrs["p"]
    total, _ = _pool_fold(np.abs(upcast(x)) ** p, attrs, 0, np.add)
    return [as_dtype(total ** (1.0 / p), ctx)]


def _lp_check(ctx: InferCtx) -> None:
    if ctx.attrs["p"] < 1:
        raise ValueError(f"p must be >= 1, got {ctx.attrs['p']}")


def _lppool_infer(ctx: InferCtx) -> list[TensorType]:
    _lp_check(ctx)
    return _pool_infer(FLOAT)(ctx)


# --- global pooling ------------------------------------------------------------------------------
def _global_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    if "p" in ctx.attrs:
        _lp_check(ctx)
    x = req(ctx)
    if x.rank < 3:
        raise ValueError(f"{ctx.op} needs an input of rank >= 3 ([N, C, spatial...]), got {x}")
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


def _global(fn: Any) -> Any:
    """ref: fn(x upcast, spatial axes, attrs) reduced with keepdims."""

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        return [as_dtype(fn(upcast(x), tuple(range(2, x.ndim)), attrs), ctx)]

    return ref


def _global_lp(x: np.ndarray, axes: tuple[int, ...], attrs: Attrs) -> np.ndarray:
    p = attrs["p"]
    return (np.abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p)


# --- MaxUnpool -------------------------------------------------------------------------------------
def _unpool_dims(shape: tuple[Dim, ...], attrs: Attrs) -> tuple[Dim, ...]:
    """The default output spatial dims: (in - 1) * stride + kernel - pads."""
    k, s, pads = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
    n = len(k)
    return tuple(dims.add(dims.mul(shape[i], s[i]), k[i] - s[i] - pads[i] - pads[i + n]) for i in range(n))


def _maxunpool_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 1, ("i64",))
    x, idx = req(ctx), req(ctx, 1)
    if idx.rank != x.rank:
        raise ValueError(f"indices {idx} must have the input's shape {x}")
    check_window_attrs(ctx, x, ctx.attrs["kernel_shape"])
    if len(ctx.types) > 2 and ctx.types[2] is not None:
        shape = ctx.const_or_value(2)
        if shape is None:
            shape = x.shape[:2] + tuple(ctx.fresh(0, 2 + i) for i in range(x.rank - 2))
        return [TensorType(x.dtype, tuple(shape))]
    return [TensorType(x.dtype, x.shape[:2] + _unpool_dims(x.shape[2:], ctx.attrs))]


def _maxunpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    """Scatter x to the flat positions `indices` of a zero output.

    The indices are MaxPool's: row-major positions in the unpooled tensor, so with an
    explicit output_shape they address that shape (onnxruntime and PyTorch; the spec says
    indices lie in [0, N x C x D1 x ... x Dn) of the output). onnx's reference and its test
    case `maxunpool_export_with_output_shape` address the default-size output instead, which
    onnx/onnx#2398 reports as wrong and onnxruntime#2193 fixed.
    """
    x, idx, shape = inputs[0], inputs[1], opt(inputs, 2)
    assert x is not None and idx is not None
    if shape is not None:
        out_shape = tuple(int(v) for v in shape)
    else:
        out_shape = x.shape[:2] + tuple(int(v) for v in _unpool_dims(x.shape[2:], attrs))
    flat = np.zeros(int(np.prod(out_shape)), dtype=x.dtype)
    if idx.size and (idx.min() < 0 or idx.max() >= flat.size):
        raise ValueError(f"indices must lie in [0, {flat.size}) for the output {list(out_shape)}")
    flat[idx.reshape(-1)] = x.reshape(-1)
    return [flat.reshape(out_shape)]


OPS: list[OpDef] = [
    OpDef(name="MaxPool", infer=_pool_infer(MAXPOOL_TYPES, indices=True), ref=_maxpool_ref, outputs=(1, 2),
          upgrade=_resolve_auto_pad, attrs={**POOL_ATTRS, "storage_order": AttrSpec("int", 0)}),
    OpDef(name="AveragePool", infer=_pool_infer(FLOAT), ref=_avgpool_ref, upgrade=_resolve_auto_pad,
          attrs={**POOL_ATTRS, "count_include_pad": AttrSpec("int", 0)}),
    OpDef(name="LpPool", infer=_lppool_infer, ref=_lppool_ref, upgrade=_resolve_auto_pad,
          attrs={**POOL_ATTRS, "p": AttrSpec("int", 2)}),
    OpDef(name="GlobalAveragePool", infer=_global_infer, ref=_global(lambda x, ax, a: x.mean(axis=ax, keepdims=True))),
    OpDef(name="GlobalMaxPool", infer=_global_infer, ref=_global(lambda x, ax, a: x.max(axis=ax, keepdims=True))),
    OpDef(name="GlobalLpPool", infer=_global_infer, ref=_global(_global_lp), attrs={"p": AttrSpec("int", 2)}),
    OpDef(name="MaxUnpool", infer=_maxunpool_infer, ref=_maxunpool_ref, inputs=(2, 3),
          attrs={"kernel_shape": AttrSpec("ints"), "pads": AttrSpec("ints", zero_pads), "strides": AttrSpec("ints", ones_per_axis)}),
]
