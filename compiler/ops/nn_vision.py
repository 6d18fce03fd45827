"""Operators: resampling at computed positions (GridSample, AffineGrid, DeformConv, RoiAlign)
and NonMaxSuppression.

Sampling is separable: each spatial axis gives a few taps (index, weight) per output
position (1 for nearest, 2 for linear, 4 for cubic), and the output is the sum over tap
combinations of weight * gathered value, one vectorized gather per combination (at most
4^3 = 64). Positions outside the input follow onnxruntime and PyTorch (zeros / border /
reflection padding, align_corners), which agree with the spec's reference except for cubic
sampling with border padding (see _grid_axis).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.elementwise import FLOAT, check_dtype, upcast
from ember.compiler.ops.nn import (
    Arrays,
    Attrs,
    conv_gemm,
    kernel_from_weight,
    ones_per_axis,
    opt,
    out_dim,
    req,
    window_dims,
    zero_pads,
)
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

# One axis's taps: (integer positions, weights, in-range mask or None), all [B, *P].
Taps = list[tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]
# Elements gathered per vectorized step of RoiAlign (bounds its temporaries).
ROI_CHUNK = 1 << 22


def gather_taps(x: np.ndarray, axes: Sequence[Taps], batch: np.ndarray | None = None, reduce: str = "sum") -> np.ndarray:
    """x [N, C, *D] sampled with per-axis taps over [B, *P]: [B, C, *P].

    `batch` [B, 1...] says which image each position reads (default: position b reads
    image b). "sum" adds weight * value over all tap combinations; "max" keeps the
    largest weight * value (RoiAlign's max mode). Out-of-range taps contribute 0.
    """
    if batch is None:
        batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * (axes[0][0][0].ndim - 1))
    result: np.ndarray | None = None
    for combo in itertools.product(*axes):
        index = tuple(np.clip(pos, 0, x.shape[2 + i] - 1) for i, (pos, _, _) in enumerate(combo))
        weight: Any = 1.0
        for _, w, valid in combo:
            weight = weight * w if valid is None else weight * w * valid
        term = x[(batch, slice(None)) + index] * weight[..., None]  # [B, *P, C]
        if result is None:
            result = term
        elif reduce == "max":
            result = np.maximum(result, term)
        else:
            result = result + term
    assert result is not None
    return np.moveaxis(result, -1, 1)


# --- GridSample ----------------------------------------------------------------------------------
def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect x at the borders lo / hi until it lies in [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, dist = x < lo, np.where(x < lo, lo - x, x - hi)
    flips = np.floor(dist / span)
    rest = dist - flips * span
    even = flips % 2 == 0
    inside = np.where(below, np.where(even, lo + rest, hi - rest), np.where(even, hi - rest, lo + rest))
    return np.where((x < lo) | (x > hi), inside, x)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic convolution weights (alpha = -0.75) of taps -1, 0, 1, 2 at fraction t."""
    a = -0.75
    w = []
    for dist in (t + 1, t, 1 - t, 2 - t):
        near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
        far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
        w.append(np.where(np.abs(dist) <= 1, near, far))
    return w


def _grid_axis(coord: np.ndarray, size: int, attrs: Attrs) -> Taps:
    """Taps along one axis of GridSample for normalized coordinates in [-1, 1]."""
    align, padding, mode = attrs["align_corners"], attrs["padding_mode"], attrs["mode"]
    x = (coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    if mode == "nearest":
        x = np.rint(x)  # half to even, as PyTorch
    # Linear and nearest pad the coordinate, then each tap; cubic pads only its taps (as
    # onnxruntime and PyTorch do; onnx's reference also clips the coordinate for border).
    if padding == "border" and mode != "cubic":
        x = np.where((x < lo) | (x > hi), np.clip(x, 0, size - 1), x)
    elif padding == "reflection" and mode != "cubic":
        x = _reflect(x, lo, hi)

    def tap(pos: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        pos = pos.astype(np.int64)
        if padding == "zeros":
            return pos, weight, (pos >= 0) & (pos < size)
        if padding == "reflection":
            pos = np.trunc(_reflect(pos.astype(x.dtype), lo, hi)).astype(np.int64)
        return pos, weight, None  # border: clipped by gather_taps

    one = np.ones_like(x)
    if mode == "nearest":
        return [tap(np.trunc(x), one)]
    base = np.floor(x)
    t = x - base
    if mode == "linear":
        return [tap(base, 1 - t), tap(base + 1, t)]
    return [tap(base + k, w) for k, w in zip((-1, 0, 1, 2), _cubic_weights(t))]


def _gridsample_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: GridSample-16's 2-D mode names (bilinear, bicubic) -> linear, cubic."""
    renamed = {"bilinear": "linear", "bicubic": "cubic"}
    if attrs.get("mode") in renamed:
        attrs["mode"] = renamed[attrs["mode"]]
    return inputs, attrs


def _gridsample_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 1, FLOAT)
    x, grid = req(ctx), req(ctx, 1)
    a = ctx.attrs
    if a["mode"] not in ("linear", "nearest", "cubic") or a["padding_mode"] not in ("zeros", "border", "reflection"):
        raise ValueError(f"unknown mode {a['mode']!r} / padding_mode {a['padding_mode']!r}")
    n = x.rank - 2
    if n < 1 or grid.rank != x.rank or (isinstance(grid.shape[-1], int) and grid.shape[-1] != n):
        raise ValueError(f"grid must be [N, *out, {n}] for input {x}, got {grid}")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1]) + grid.shape[1:-1])]


def _gridsample_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, grid = inputs[0], inputs[1]
    assert x is not None and grid is not None
    n = x.ndim - 2
    g = upcast(grid)
    # grid[..., 0] addresses the last spatial axis (x / width), grid[..., n-1] the first.
    taps = [_grid_axis(g[..., n - 1 - i], x.shape[2 + i], attrs) for i in range(n)]
    return [as_dtype(gather_taps(upcast(x), taps), ctx)]


# --- AffineGrid ----------------------------------------------------------------------------------
def _affine_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 1, ("i64",))
    theta, size = req(ctx), req(ctx, 1)
    if theta.rank != 3 or size.rank != 1 or size.shape[0] not in (4, 5):
        raise ValueError(f"AffineGrid takes theta [N, 2, 3] / [N, 3, 4] and size [4] / [5], got {theta}, {size}")
    n = int(size.shape[0]) - 2
    if theta.shape[1:] not in ((n, n + 1),) and dims.is_static(theta.shape[1:]):
        raise ValueError(f"theta must be [N, {n}, {n + 1}] for a {n}-D size, got {theta}")
    known = ctx.const_or_value(1)
    spatial = tuple(known[2:]) if known is not None else tuple(ctx.fresh(0, 1 + i) for i in range(n))
    return [TensorType(theta.dtype, (theta.shape[0],) + spatial + (n,))]


def affine_base(spatial: Sequence[int], align_corners: bool) -> np.ndarray:
    """[*spatial, n + 1] f64: each output position's homogeneous coordinates (x, y[, z], 1),
    x along the last axis; pixel centres, the corner pixels' outer edges at -1 and 1 (with
    align_corners, the corner pixels' centres)."""
    axes = []
    for s in spatial:
        i = np.arange(s, dtype=np.float64)
        if align_corners:  # the corner pixels' centers at -1 and 1
            axes.append(-1 + i * (2.0 / max(s - 1, 1)))
        else:  # the corner pixels' outer edges at -1 and 1
            axes.append(-1 + 1.0 / s + i * (2.0 / s))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([*mesh[::-1], np.ones(spatial)], axis=-1)


def _affine_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    theta, size = inputs[0], inputs[1]
    assert theta is not None and size is not None
    base = affine_base([int(v) for v in size[2:]], bool(attrs["align_corners"]))
    grid = np.einsum("...j,nij->n...i", base, theta.astype(np.float64))
    return [as_dtype(grid, ctx)]


# --- DeformConv ----------------------------------------------------------------------------------
def _deform_infer(ctx: InferCtx) -> list[TensorType]:
    for i in range(len(ctx.types)):
        check_dtype(ctx, i, FLOAT)
    x, w, offset = req(ctx), req(ctx, 1), req(ctx, 2)
    a = ctx.attrs
    k = tuple(a["kernel_shape"])
    g, og = a["group"], a["offset_group"]
    taps = int(np.prod(k))
    if isinstance(x.shape[1], int) and isinstance(w.shape[1], int) and x.shape[1] != w.shape[1] * g:
        raise ValueError(f"input has {x.shape[1]} channels; the weight expects {w.shape[1]} x group {g}")
    if isinstance(x.shape[1], int) and (og < 1 or x.shape[1] % og):
        raise ValueError(f"{x.shape[1]} input channels do not split into offset_group={og} groups")
    if isinstance(offset.shape[1], int) and offset.shape[1] != og * taps * len(k):
        raise ValueError(f"offset must have offset_group * prod(kernel) * {len(k)} = {og * taps * len(k)} channels, got {offset}")
    spatial = window_dims(ctx, x, k)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + spatial)]


def _deform_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    """Conv whose taps sample x bilinearly (zeros outside) at the kernel grid + offsets,
    scaled by the mask: y = sum_taps w * mask * x(p0 + tap * d + offset)."""
    x, w, offset, b, mask = inputs[0], inputs[1], inputs[2], opt(inputs, 3), opt(inputs, 4)
    assert x is not None and w is not None and offset is not None
    k, s, d, pads = tuple(attrs["kernel_shape"]), attrs["strides"], attrs["dilations"], attrs["pads"]
    n, og, taps = len(k), attrs["offset_group"], int(np.prod(k))
    batch, cin = x.shape[:2]
    out = tuple(int(out_dim(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n])) for i in range(n))
    xf = upcast(x)
    off = upcast(offset).reshape((batch * og, taps, n) + out)
    tap_idx = np.unravel_index(np.arange(taps), k)
    axes: list[Taps] = []
    for i in range(n):
        grid = (np.arange(out[i]) * s[i] - pads[i]).reshape((-1,) + (1,) * (n - 1 - i))
        pos = grid + (tap_idx[i] * d[i]).reshape((-1,) + (1,) * n) + off[:, :, i]  # [B*og, taps, *out]
        base = np.floor(pos)
        t = pos - base
        axes.append([(q.astype(np.int64), wt, (q >= 0) & (q < x.shape[2 + i])) for q, wt in ((base, 1 - t), (base + 1, t))])
    sampled = gather_taps(xf.reshape((batch * og, cin // og) + x.shape[2:]), axes)  # [B*og, C/og, taps, *out]
    if mask is not None:
        sampled = sampled * upcast(mask).reshape((batch * og, 1, taps) + out)
    cols = sampled.reshape((batch, cin) + k + out)
    order = (0, 1) + tuple(range(2 + n, 2 + 2 * n)) + tuple(range(2, 2 + n))
    y = conv_gemm(cols.transpose(order), upcast(w).astype(cols.dtype), attrs["group"])
    if b is not None:
        y = y + upcast(b).reshape((1, -1) + (1,) * n)
    return [as_dtype(y, ctx)]


# --- RoiAlign ------------------------------------------------------------------------------------
def _roi_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: RoiAlign-10 had no coordinate_transformation_mode and behaved as output_half_pixel."""
    if since < 16:
        attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")
    return inputs, attrs


def _roi_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 2, ("i64",))
    x, rois, idx = req(ctx), req(ctx, 1), req(ctx, 2)
    a = ctx.attrs
    if a["mode"] not in ("avg", "max") or a["coordinate_transformation_mode"] not in ("half_pixel", "output_half_pixel"):
        raise ValueError(f"unknown mode {a['mode']!r} / coordinate_transformation_mode {a['coordinate_transformation_mode']!r}")
    if x.rank != 4 or rois.rank != 2 or idx.rank != 1 or (isinstance(rois.shape[1], int) and rois.shape[1] != 4):
        raise ValueError(f"RoiAlign takes X [N, C, H, W], rois [R, 4], batch_indices [R], got {x}, {rois}, {idx}")
    if a["output_height"] < 1 or a["output_width"] < 1:
        raise ValueError("output_height and output_width must be >= 1")
    return [TensorType(x.dtype, (rois.shape[0], x.shape[1], a["output_height"], a["output_width"]))]


def _roi_axis(start: np.ndarray, bin_size: np.ndarray, bins: int, grid: int, size: int) -> Taps:
    """Bilinear taps along one axis for rois [R] at [R, bins, grid] sample points.

    Samples beyond [-1, size] contribute nothing; others clamp to the edge pixel.
    """
    pos = start[:, None, None] + np.arange(bins)[None, :, None] * bin_size[:, None, None] + (
        (np.arange(grid)[None, None, :] + 0.5) * (bin_size / grid)[:, None, None])
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0.0)
    low = np.minimum(np.floor(pos), size - 1).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = np.where(low >= size - 1, 0.0, pos - low)
    return [(low, (1 - frac) * valid, None), (high, frac * valid, None)]


def _roi_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, rois, idx = inputs[0], inputs[1], inputs[2]
    assert x is not None and rois is not None and idx is not None
    ph, pw, ratio = attrs["output_height"], attrs["output_width"], attrs["sampling_ratio"]
    half = attrs["coordinate_transformation_mode"] == "half_pixel"
    height, width = x.shape[2:]
    box = rois.astype(np.float64) * attrs["spatial_scale"] - (0.5 if half else 0.0)
    roi_h, roi_w = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
    if not half:  # malformed rois become 1x1
        roi_h, roi_w = np.maximum(roi_h, 1.0), np.maximum(roi_w, 1.0)
    # Sample points per bin: sampling_ratio, or adaptive ceil(roi size / bins) per roi.
    grid_h = np.full(len(box), ratio) if ratio > 0 else np.ceil(roi_h / ph).astype(np.int64)
    grid_w = np.full(len(box), ratio) if ratio > 0 else np.ceil(roi_w / pw).astype(np.int64)
    xf = x.astype(np.float64)
    y = np.zeros((len(box), x.shape[1], ph, pw))
    for gh, gw in sorted(set(zip(grid_h.tolist(), grid_w.tolist()))):
        if gh * gw == 0:
            continue
        chosen = np.flatnonzero((grid_h == gh) & (grid_w == gw))
        step = max(1, ROI_CHUNK // max(ph * pw * gh * gw * x.shape[1], 1))
        for part in np.array_split(chosen, -(-len(chosen) // step)):
            axes = [_roi_axis(box[part, 1], roi_h[part] / ph, ph, gh, height),
                    _roi_axis(box[part, 0], roi_w[part] / pw, pw, gw, width)]
            # [R, bins_h, grid_h] x [R, bins_w, grid_w] -> [R, bins_h, grid_h, bins_w, grid_w]
            axes = [[(p[..., None, None], w[..., None, None], None) for p, w, _ in axes[0]],
                    [(p[:, None, None], w[:, None, None], None) for p, w, _ in axes[1]]]
            images = idx[part].astype(np.int64).reshape(-1, 1, 1, 1, 1)
            if attrs["mode"] == "avg":
                y[part] = gather_taps(xf, axes, images).sum(axis=(3, 5)) / (gh * gw)
            else:
                y[part] = gather_taps(xf, axes, images, reduce="max").max(axis=(3, 5))
    return [as_dtype(y, ctx)]


# --- NonMaxSuppression ---------------------------------------------------------------------------
def _nms_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 2, ("i64",))
    boxes, scores = req(ctx), req(ctx, 1)
    if boxes.rank != 3 or scores.rank != 3 or (isinstance(boxes.shape[2], int) and boxes.shape[2] != 4):
        raise ValueError(f"NonMaxSuppression takes boxes [B, n, 4] and scores [B, classes, n], got {boxes}, {scores}")
    if ctx.attrs["center_point_box"] not in (0, 1):
        raise ValueError(f"center_point_box must be 0 or 1, got {ctx.attrs['center_point_box']}")
    return [TensorType("i64", (ctx.fresh(0, 0), 3))]


def _corners(boxes: np.ndarray, center: int) -> tuple[np.ndarray, ...]:
    """(y_min, x_min, y_max, x_max) of [n, 4] boxes ([y1, x1, y2, x2] or [xc, yc, w, h])."""
    if center:
        xc, yc, w, h = boxes.T
        return yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    y1, x1, y2, x2 = boxes.T
    return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)


def _suppressed(c: tuple[np.ndarray, ...], best: int, rest: np.ndarray, threshold: float) -> np.ndarray:
    """Which boxes `rest` overlap box `best` with IoU > threshold (empty overlaps never do)."""
    y0, x0, y1, x1 = (v[rest] for v in c)
    by0, bx0, by1, bx1 = (v[best] for v in c)
    iw, ih = np.minimum(x1, bx1) - np.maximum(x0, bx0), np.minimum(y1, by1) - np.maximum(y0, by0)
    inter = iw * ih
    area, best_area = (x1 - x0) * (y1 - y0), (bx1 - bx0) * (by1 - by0)
    union = area + best_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return (iw > 0) & (ih > 0) & (area > 0) & (best_area > 0) & (union > 0) & (iou > threshold)


def _nms_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    """Greedy per (batch, class): take the best-scoring box left (ties: lower index), drop
    the boxes it overlaps by more than iou_threshold; at most max_output_boxes_per_class."""
    boxes, scores = inputs[0], inputs[1]
    assert boxes is not None and scores is not None

    def scalar(i: int, default: Any, kind: Callable[[Any], Any]) -> Any:
        value = opt(inputs, i)
        return kind(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) else default

    limit = max(scalar(2, 0, int), 0)
    threshold = scalar(3, 0.0, float)
    min_score = scalar(4, None, float)
    found: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0] if limit else 0):
        c = _corners(boxes[b].astype(np.float64), attrs["center_point_box"])
        for cls in range(scores.shape[1]):
            s = scores[b, cls]
            order = np.argsort(-s.astype(np.float64), kind="stable")
            if min_score is not None:
                order = order[s[order] > min_score]
            taken = 0
            while order.size and taken < limit:
                best, order = int(order[0]), order[1:]
                found.append((b, cls, best))
                taken += 1
                order = order[~_suppressed(c, best, order, threshold)]
    return [np.array(found, dtype=np.int64).reshape(-1, 3)]


DEFORM_ATTRS = {
    "dilations": AttrSpec("ints", ones_per_axis),
    "group": AttrSpec("int", 1),
    "kernel_shape": AttrSpec("ints", kernel_from_weight),
    "offset_group": AttrSpec("int", 1),
    "pads": AttrSpec("ints", zero_pads),
    "strides": AttrSpec("ints", ones_per_axis),
}

OPS: list[OpDef] = [
    OpDef(name="GridSample", infer=_gridsample_infer, ref=_gridsample_ref, inputs=(2, 2), upgrade=_gridsample_upgrade,
          attrs={"align_corners": AttrSpec("int", 0), "mode": AttrSpec("str", "linear"),
                 "padding_mode": AttrSpec("str", "zeros")}),
    OpDef(name="AffineGrid", infer=_affine_infer, ref=_affine_ref, inputs=(2, 2), attrs={"align_corners": AttrSpec("int", 0)}),
    OpDef(name="DeformConv", infer=_deform_infer, ref=_deform_ref, inputs=(3, 5), attrs=DEFORM_ATTRS),
    OpDef(name="RoiAlign", infer=_roi_infer, ref=_roi_ref, inputs=(3, 3), upgrade=_roi_upgrade,
          attrs={"coordinate_transformation_mode": AttrSpec("str", "half_pixel"), "mode": AttrSpec("str", "avg"),
                 "output_height": AttrSpec("int", 1), "output_width": AttrSpec("int", 1),
                 "sampling_ratio": AttrSpec("int", 0), "spatial_scale": AttrSpec("float", 1.0)}),
    OpDef(name="NonMaxSuppression", infer=_nms_infer, ref=_nms_ref, inputs=(2, 5),
          attrs={"center_point_box": AttrSpec("int", 0)}),
]
