"""Resize: nearest, linear and cubic interpolation of any axes (ONNX Resize-19).

The reference treats each resized axis separately (the modes are separable): every output
index maps to an input coordinate by `coordinate_transformation_mode`, and reads a few input
taps with weights (one tap for nearest, 2 for linear, 4 for cubic, a wider normalised filter
when antialiasing a downscale). Resize-11/13's `tf_half_pixel_for_nn` mode is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, int_list, norm_axis, required
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
MODES = ("nearest", "linear", "cubic")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize", "tf_half_pixel_for_nn")
POLICIES = ("stretch", "not_larger", "not_smaller")


def _axes(rank: int, attrs: Attrs) -> list[int]:
    axes = attrs.get("axes")
    chosen = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Resize axes {list(axes or ())} repeat")
    return chosen


def _scaled_dim(d: Dim, scale: float) -> Dim | None:
    """floor(d * scale); symbolic only for whole-number scales and their inverses."""
    if isinstance(d, int):
        return int(np.floor(d * scale))
    if scale >= 1 and scale.is_integer():
        return dims.mul(d, int(scale))
    if 0 < scale < 1 and (1 / scale).is_integer():
        return dims.floordiv(d, int(1 / scale))
    return None


def _output_shape(shape: Sequence[Dim], scales: Sequence[float] | None, sizes: Sequence[Dim] | None,
                  axes: list[int], policy: str) -> tuple[list[Dim | None], list[float | None]]:
    """Output dims and the scale of every axis (None where unknown before run time)."""
    out: list[Dim | None] = list(shape)
    scale: list[float | None] = [1.0] * len(shape)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ValueError(f"Resize sizes has {len(sizes)} entries for {len(axes)} axes")
        known = all(isinstance(shape[a], int) and isinstance(s, int) for a, s in zip(axes, sizes))
        if policy != "stretch":  # one scale for every axis, so that the aspect ratio is kept
            if not known:
                return [None if i in axes else d for i, d in enumerate(shape)], [None] * len(shape)
            ratios = [s / shape[a] for a, s in zip(axes, sizes)]  # type: ignore[operator]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scale[a] = common
                out[a] = int(np.floor(common * shape[a] + 0.5))  # type: ignore[operator]
            return out, scale
        for a, s in zip(axes, sizes):
            out[a] = s
            scale[a] = s / shape[a] if known and shape[a] else None  # type: ignore[operator]
        return out, scale
    assert scales is not None
    if len(scales) != len(axes):
        raise ValueError(f"Resize scales has {len(scales)} entries for {len(axes)} axes")
    for a, s in zip(axes, scales):
        if s <= 0:
            raise ValueError(f"Resize scales must be > 0, got {list(scales)}")
        scale[a] = float(s)
        out[a] = _scaled_dim(shape[a], float(s))
    return out, scale


def _check_attrs(attrs: Attrs) -> None:
    for key, allowed in (("mode", MODES), ("nearest_mode", NEAREST_MODES),
                         ("coordinate_transformation_mode", COORDINATE_MODES), ("keep_aspect_ratio_policy", POLICIES)):
        if attrs[key] not in allowed:
            raise ValueError(f"Resize {key} must be one of {', '.join(allowed)}, got {attrs[key]!r}")


def _resize_infer(ctx: InferCtx) -> list[TensorType]:
    t = required(ctx)
    _check_attrs(ctx.attrs)
    axes = _axes(t.rank, ctx.attrs)
    has_sizes = len(ctx.types) > 3 and ctx.types[3] is not None and ctx.types[3].shape != (0,)
    scales = ctx.consts[2] if len(ctx.consts) > 2 else None
    sizes = ctx.const_or_value(3) if has_sizes else None
    run_time = sizes is None if has_sizes else scales is None or np.asarray(scales).size == 0
    if run_time:
        # run-time sizes/scales: a 4-d NCHW resize keeps N and C (code generation checks so at
        # run time), the axes resized are only known then
        keep = {0, 1} if t.rank == 4 and ctx.attrs.get("axes") is None else set()
        out: list[Dim | None] = [None if i in axes and i not in keep else d for i, d in enumerate(t.shape)]
    else:
        listed = None if scales is None or has_sizes else [float(s) for s in np.asarray(scales).reshape(-1)]
        out, _ = _output_shape(t.shape, listed, sizes, axes, ctx.attrs["keep_aspect_ratio_policy"])
    return [TensorType(t.dtype, tuple(ctx.fresh(0, i) if d is None else d for i, d in enumerate(out)))]


def _source_coords(mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """Output index -> input coordinate for each coordinate_transformation_mode.

    `length_resized` in the spec is scale * in_len as a float (not the rounded out_len).
    """
    x = np.arange(out_len, dtype=np.float64)
    resized = scale * in_len
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / resized)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if resized != 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (in_len - 1) / (resized - 1) if resized != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":  # Resize-11/13 only
        return (x + 0.5) / scale
    start, end = roi  # tf_crop_and_resize
    if resized != 1:
        return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (resized - 1)
    return np.full_like(x, (end - start) * (in_len - 1) / 2 + start * (in_len - 1))


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient a."""
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.where(coords == np.floor(coords) + 0.5, np.floor(coords), np.round(coords))
    if mode == "round_prefer_ceil":
        return np.where(coords == np.floor(coords) + 0.5, np.ceil(coords), np.round(coords))
    return np.floor(coords) if mode == "floor" else np.ceil(coords)


def _taps(coords: np.ndarray, in_len: int, scale: float, attrs: Attrs) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights [out_len, taps] of a linear or cubic filter on one axis.

    Taps outside the input read the border (edge padding) unless exclude_outside drops them;
    an antialiased downscale stretches the kernel by 1/scale and normalises it.
    """
    antialias = bool(attrs["antialias"]) and scale < 1.0
    stretch = scale if antialias else 1.0
    if attrs["mode"] == "linear":
        radius = 1.0 / stretch
        def kernel(d: np.ndarray) -> np.ndarray:
            return np.maximum(0.0, 1.0 - np.abs(d) * stretch)
    else:
        radius = 2.0 / stretch
        def kernel(d: np.ndarray) -> np.ndarray:
            return _cubic(d * stretch, attrs["cubic_coeff_a"])
    span = int(np.ceil(radius)) + 1
    taps = np.floor(coords)[:, None] + np.arange(-span, span + 1)[None, :]
    distance = taps - coords[:, None]
    weights = kernel(distance)
    if not antialias:
        weights = np.where(np.abs(distance) < radius + 1e-9, weights, 0.0)
    if attrs["exclude_outside"] or antialias:
        if attrs["exclude_outside"]:
            weights = np.where((taps >= 0) & (taps <= in_len - 1), weights, 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1, total)
    return np.clip(taps, 0, in_len - 1).astype(np.int64), weights


def _resize_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    roi_t, scales_t, sizes_t = (inputs[i] if len(inputs) > i else None for i in (1, 2, 3))
    axes = _axes(x.ndim, attrs)
    scales = [float(s) for s in scales_t.reshape(-1)] if scales_t is not None and scales_t.size else None
    sizes = int_list(sizes_t) if sizes_t is not None and sizes_t.size else None
    out_shape, scale = _output_shape(x.shape, scales, sizes, axes, attrs["keep_aspect_ratio_policy"])
    crop = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
    roi = roi_t.reshape(-1).astype(np.float64) if crop and roi_t is not None and roi_t.size else None
    nearest = attrs["mode"] == "nearest"
    y = x if nearest else x.astype(np.float64)
    outside: np.ndarray | None = None
    for k, axis in enumerate(axes):
        in_len, out_len = x.shape[axis], int(out_shape[axis])  # type: ignore[arg-type]
        axis_scale = float(scale[axis]) if scale[axis] is not None else out_len / in_len  # type: ignore[arg-type]
        window = (float(roi[k]), float(roi[k + len(axes)])) if roi is not None else (0.0, 1.0)
        if in_len == out_len and axis_scale == 1.0 and not crop:
            continue
        coords = _source_coords(attrs["coordinate_transformation_mode"], out_len, in_len, axis_scale, window)
        if nearest:
            y = np.take(y, np.clip(_nearest(coords, attrs["nearest_mode"]), 0, in_len - 1).astype(np.int64), axis=axis)
        else:
            index, weights = _taps(coords, in_len, axis_scale, attrs)
            shape = [1] * x.ndim
            shape[axis] = out_len
            y = sum(np.take(y, index[:, t], axis=axis) * weights[:, t].reshape(shape) for t in range(index.shape[1]))
        if crop:  # TF's CropAndResize writes extrapolation_value where the window leaves the input
            mask = ((coords < 0) | (coords > in_len - 1)).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
            outside = mask if outside is None else outside | mask
    if outside is not None and outside.any():
        y = np.where(outside, attrs["extrapolation_value"], y)
    if x.dtype.kind in "iu" and not nearest:  # truncated like onnxruntime's casts, saturated (cubic overshoots)
        info = np.iinfo(x.dtype)
        y = np.clip(np.trunc(y), info.min, info.max)
    return [as_dtype(y, ctx)]


OPS: list[OpDef] = [
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
]
