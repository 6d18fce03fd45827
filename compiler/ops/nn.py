"""Operators: convolution (Conv, ConvTranspose, Col2Im) and matrix products (Gemm, MatMul).

Also the window geometry that pooling (nn_pool.py) and DeformConv (nn_vision.py) share:
output sizes, auto-padding, sliding-window views and their adjoint (scatter-add of windows).

Convolution is im2col + one GEMM per group on a sliding-window view, so that ResNet-50-sized
layers take milliseconds; ConvTranspose is the adjoint: one GEMM per group, then the columns
are scattered back (col2im), one strided add per kernel tap. Auto-padding is resolved to
explicit pads at import when the spatial dims are static (kept as auto_pad otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ember.compiler import dims
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.elementwise import FLOAT, check_dtype, upcast
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
Types = Sequence["TensorType | None"]

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
# im2col buffers above this many elements are built one batch slice at a time.
MAX_COLUMNS = 1 << 26


def req(ctx: InferCtx, i: int = 0) -> TensorType:
    """The type of input `i`; ValueError when the input is omitted."""
    t = ctx.types[i] if i < len(ctx.types) else None
    if t is None:
        raise ValueError(f"{ctx.op} input {i} is required")
    return t


def opt(inputs: Arrays, i: int) -> np.ndarray | None:
    """Input `i` of a ref call, None when omitted."""
    return inputs[i] if i < len(inputs) else None


# --- input-dependent attribute defaults ---------------------------------------------------------
def spatial_rank(types: Types) -> int:
    """Number of spatial axes of an [N, C, *spatial] first input."""
    t = types[0] if types else None
    return (t.rank - 2) if t is not None else 2


def ones_per_axis(types: Types) -> tuple[int, ...]:
    """Default strides/dilations: 1 per spatial axis."""
    return (1,) * spatial_rank(types)


def zeros_per_axis(types: Types) -> tuple[int, ...]:
    """Default output_padding: 0 per spatial axis."""
    return (0,) * spatial_rank(types)


def zero_pads(types: Types) -> tuple[int, ...]:
    """Default pads: 0 at both ends of every spatial axis."""
    return (0,) * (2 * spatial_rank(types))


def kernel_from_weight(types: Types) -> tuple[int, ...]:
    """Default kernel_shape: the weight's spatial dims."""
    w = types[1] if len(types) > 1 else None
    if w is None or not dims.is_static(w.shape[2:]):
        raise ValueError("kernel_shape must be given when the weight's spatial dims are not static")
    return tuple(int(d) for d in w.shape[2:])


# --- window geometry ----------------------------------------------------------------------------
def out_dim(size: Dim, k: int, s: int, d: int, lo: int, hi: int, ceil: bool = False) -> Dim:
    """Output size of a sliding window: floor (or ceil) ((size + pads - span) / s) + 1.

    In ceil mode a last window that would start in the right padding is dropped (the
    PyTorch / onnxruntime rule the ONNX spec adopted).
    """
    span = (k - 1) * d + 1
    if isinstance(size, int):
        num = size + lo + hi - span
        out = (-(-num // s) if ceil else num // s) + 1
        if ceil and (out - 1) * s >= size + lo:
            out -= 1
        return out
    # (size + c) // s + 1 == (size + c + s) // s keeps "H" for a same-size window (c + s == 0).
    if ceil:
        return dims.floordiv(dims.add(size, lo + hi - span + 2 * s - 1), s)
    return dims.floordiv(dims.add(size, lo + hi - span + s), s)


def same_pads(total: int, mode: str) -> tuple[int, int]:
    """(begin, end) split of a total padding: SAME_UPPER puts the odd one at the end."""
    small, big = total // 2, total - total // 2
    return (small, big) if mode == "SAME_UPPER" else (big, small)


def auto_pads(shape: Sequence[Dim], k: Sequence[int], s: Sequence[int], d: Sequence[int], mode: str) -> tuple[int, ...] | None:
    """Explicit pads for SAME_UPPER / SAME_LOWER / VALID (None when a spatial dim is symbolic).

    SAME makes the output ceil(size / stride): total = (out - 1) * s + span - size.
    """
    n = len(k)
    if mode == "VALID":
        return (0,) * (2 * n)
    if not dims.is_static(tuple(shape)):
        return None
    lo, hi = [], []
    for size, kk, ss, dd in zip(shape, k, s, d):
        out = -(-int(size) // ss)
        b, e = same_pads(max((out - 1) * ss + (kk - 1) * dd + 1 - int(size), 0), mode)
        lo.append(b)
        hi.append(e)
    return tuple(lo + hi)


def _resolve_auto_pad(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: auto_pad -> explicit pads when the spatial dims are static (Conv, pools)."""
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", "") or not types or types[0] is None or mode not in AUTO_PADS:
        return inputs, attrs
    n = types[0].rank - 2
    k = attrs.get("kernel_shape")
    if k is None and len(types) > 1 and types[1] is not None and dims.is_static(types[1].shape[2:]):
        k = kernel_from_weight(types)
    if k is None:
        return inputs, attrs
    pads = auto_pads(types[0].shape[2:], k, attrs.get("strides") or (1,) * n, attrs.get("dilations") or (1,) * n, mode)
    if pads is not None:
        attrs["pads"] = pads
        attrs["auto_pad"] = "NOTSET"
    return inputs, attrs


def explicit_pads(shape: Sequence[Dim], attrs: Attrs, k: Sequence[int]) -> tuple[int, ...]:
    """The pads in effect: `pads`, or auto_pad resolved for these (static) spatial dims."""
    mode = attrs.get("auto_pad", "NOTSET")
    if mode not in ("NOTSET", ""):
        n = len(k)
        pads = auto_pads(shape, k, attrs.get("strides") or (1,) * n, attrs.get("dilations") or (1,) * n, mode)
        if pads is None:
            raise ValueError(f"auto_pad={mode} needs static spatial dims")
        return pads
    return tuple(attrs["pads"])


def check_window_attrs(ctx: InferCtx, x: TensorType, k: Sequence[int]) -> int:
    """Validate kernel_shape/strides/dilations/pads/auto_pad against x; the spatial rank."""
    a = ctx.attrs
    n = x.rank - 2
    if n < 1:
        raise ValueError(f"{ctx.op} needs an input of rank >= 3 ([N, C, spatial...]), got rank {x.rank}")
    if len(k) != n or any(v < 1 for v in k):
        raise ValueError(f"kernel_shape {list(k)} must have {n} positive entries")
    for key, size in (("strides", n), ("dilations", n), ("pads", 2 * n)):
        value = a.get(key)
        if value is None:
            continue
        if len(value) != size:
            raise ValueError(f"{key} {list(value)} must have {size} entries for {n} spatial axes")
        if key == "pads" and any(v < 0 for v in value):
            raise ValueError(f"pads {list(value)} must be >= 0")
        if key != "pads" and any(v < 1 for v in value):
            raise ValueError(f"{key} {list(value)} must be >= 1")
    if a.get("auto_pad", "NOTSET") not in AUTO_PADS + ("",):
        raise ValueError(f"auto_pad must be one of {list(AUTO_PADS)}, got {a['auto_pad']!r}")
    return n


def window_dims(ctx: InferCtx, x: TensorType, k: Sequence[int], ceil: bool = False) -> tuple[Dim, ...]:
    """Output spatial dims of a sliding-window op (Conv, pools) on x."""
    a = ctx.attrs
    n = check_window_attrs(ctx, x, k)
    s = a.get("strides") or (1,) * n
    d = a.get("dilations") or (1,) * n
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        # SAME keeps ceil(size / stride) whatever the kernel, so symbolic sizes stay exact.
        return tuple(dims.ceildiv(x.shape[2 + i], s[i]) for i in range(n))
    pads = (0,) * (2 * n) if mode == "VALID" else tuple(a["pads"])
    out = tuple(
        # A symbolic size whose ceil-mode count may lose a window that starts in the end
        # pad (possible when that pad >= span - stride + 1) is only known at run time.
        ctx.fresh(0, 2 + i) if ceil and isinstance(x.shape[2 + i], str) and pads[i + n] >= (k[i] - 1) * d[i] + 2 - s[i]
        else out_dim(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n], ceil)
        for i in range(n)
    )
    bad = [o for o in out if isinstance(o, int) and o < 1]
    if bad:
        raise ValueError(f"the window ({list(k)}, dilations {list(d)}) does not fit the padded input {list(x.shape[2:])}")
    return out


def pad_spatial(x: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int], pads: Sequence[int], fill: Any, ceil: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """(x padded with `fill` so that every window lies inside, the output spatial dims)."""
    n = len(k)
    out = tuple(int(out_dim(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n], ceil)) for i in range(n))
    # In ceil mode the last window may run past the end pad: pad for it too.
    extra = [max((out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - (x.shape[2 + i] + pads[i] + pads[i + n]), 0) for i in range(n)]
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + n] + extra[i]) for i in range(n)]
    if any(sum(w) for w in width):
        x = np.pad(x, width, mode="constant", constant_values=fill)
    return x, out


def windows(x: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int], pads: Sequence[int], fill: Any, ceil: bool = False) -> np.ndarray:
    """[N, C, *out, *k] view of the sliding windows of x padded with `fill` (no copy but the pad)."""
    n = len(k)
    xp, out = pad_spatial(x, k, s, d, pads, fill, ceil)
    span = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    view = sliding_window_view(xp, span, axis=tuple(range(2, 2 + n)))
    index = tuple(slice(0, (out[i] - 1) * s[i] + 1, s[i]) for i in range(n)) + tuple(slice(None, None, d[i]) for i in range(n))
    return view[(slice(None), slice(None)) + index]


def fold_windows(x: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int], pads: Sequence[int], fill: Any, ufunc: np.ufunc, ceil: bool = False) -> np.ndarray:
    """ufunc-reduce every window of x: [N, C, *out] (one strided pass per kernel tap, which is
    much faster than reducing a window view)."""
    n = len(k)
    xp, out = pad_spatial(x, k, s, d, pads, fill, ceil)
    result: np.ndarray | None = None
    for tap in np.ndindex(*k):
        part = xp[(Ellipsis,) + tuple(slice(tap[i] * d[i], tap[i] * d[i] + (out[i] - 1) * s[i] + 1, s[i]) for i in range(n))]
        result = part.copy() if result is None else ufunc(result, part, out=result)
    assert result is not None
    return result


def scatter_windows(cols: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The adjoint of `windows` without padding: sum [..., *k, *L] window values into [..., *size].

    One strided add per kernel tap (col2im); `size` must hold every window.
    """
    n = len(k)
    lead, blocks = cols.shape[: cols.ndim - 2 * n], cols.shape[cols.ndim - n :]
    canvas = np.zeros(lead + tuple(size), dtype=cols.dtype)
    for tap in np.ndindex(*k):
        dst = tuple(slice(tap[i] * d[i], tap[i] * d[i] + (blocks[i] - 1) * s[i] + 1, s[i]) for i in range(n))
        canvas[(Ellipsis,) + dst] += cols[(Ellipsis,) + tap + (slice(None),) * n]
    return canvas


# --- Conv ----------------------------------------------------------------------------------------
CONV_ATTRS = {
    "auto_pad": AttrSpec("str", "NOTSET"),
    "dilations": AttrSpec("ints", ones_per_axis),
    "group": AttrSpec("int", 1),
    "kernel_shape": AttrSpec("ints", kernel_from_weight),
    "pads": AttrSpec("ints", zero_pads),
    "strides": AttrSpec("ints", ones_per_axis),
}


def _conv_infer(ctx: InferCtx) -> list[TensorType]:
    """Conv geometry for any operand dtypes (ConvInteger and QLinearConv share it)."""
    x, w = req(ctx), req(ctx, 1)
    g, k = ctx.attrs["group"], tuple(ctx.attrs["kernel_shape"])
    if w.rank != x.rank:
        raise ValueError(f"weight rank {w.rank} differs from input rank {x.rank}")
    if g < 1:
        raise ValueError(f"group must be >= 1, got {g}")
    cin, cout = x.shape[1], w.shape[0]
    if isinstance(cin, int) and isinstance(w.shape[1], int) and cin != w.shape[1] * g:
        raise ValueError(f"input has {cin} channels; the weight expects {w.shape[1]} x group {g}")
    if isinstance(cout, int) and cout % g:
        raise ValueError(f"{cout} output channels do not split into {g} groups")
    if dims.is_static(w.shape[2:]) and tuple(w.shape[2:]) != k:
        raise ValueError(f"kernel_shape {list(k)} differs from the weight's {list(w.shape[2:])}")
    return [TensorType(x.dtype, (x.shape[0], cout) + window_dims(ctx, x, k))]


def _conv_float_infer(ctx: InferCtx) -> list[TensorType]:
    for i in range(len(ctx.types)):
        check_dtype(ctx, i, FLOAT)
    x = req(ctx)
    b = ctx.types[2] if len(ctx.types) > 2 else None
    if req(ctx, 1).dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        raise ValueError(f"Conv operands must share one dtype, got {[t.dtype for t in ctx.types if t is not None]}")
    out = _conv_infer(ctx)
    if b is not None and (b.rank != 1 or (isinstance(b.shape[0], int) and isinstance(out[0].shape[1], int)
                                          and b.shape[0] != out[0].shape[1])):
        raise ValueError(f"bias must be [{out[0].shape[1]}], got {b}")
    return out


def conv_gemm(win: np.ndarray, w: np.ndarray, g: int) -> np.ndarray:
    """sum over (c, taps) of win[N, C, *out, *k] * w[O, C/g, *k] per group: [N, O, *out].

    im2col: the windows become a [g, C/g * taps, N * out] matrix (one copy), then one
    batched GEMM over the groups; large batches go one slice at a time.
    """
    batch, cin = win.shape[:2]
    n = (win.ndim - 2) // 2
    out_sp, k = win.shape[2 : 2 + n], win.shape[2 + n :]
    cout = w.shape[0]
    wg = w.reshape(g, cout // g, -1)
    per_item = cin * int(np.prod(k)) * int(np.prod(out_sp))
    step = max(1, min(batch, MAX_COLUMNS // max(per_item, 1)))
    parts = []
    for start in range(0, max(batch, 1), step):  # one (empty) slice for an empty batch
        part = win[start : start + step]
        nb = part.shape[0]
        part = part.reshape((nb, g, cin // g) + out_sp + k)
        order = (1, 2) + tuple(range(3 + n, 3 + 2 * n)) + (0,) + tuple(range(3, 3 + n))
        cols = part.transpose(order).reshape(g, wg.shape[2], nb * int(np.prod(out_sp)))
        out = np.matmul(wg, cols).reshape((cout, nb) + out_sp)
        parts.append(np.moveaxis(out, 0, 1))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """N-d grouped, strided, dilated, padded convolution (f16/bf16 accumulate in f32)."""
    k = tuple(attrs["kernel_shape"])
    n = len(k)
    pads = explicit_pads(x.shape[2:], attrs, k)
    strides = attrs.get("strides") or (1,) * n
    dilations = attrs.get("dilations") or (1,) * n
    xf, wf = upcast(x), upcast(w)
    if xf.dtype != wf.dtype:
        wf = wf.astype(xf.dtype)
    out = conv_gemm(windows(xf, k, strides, dilations, pads, 0), wf, attrs["group"])
    if b is not None:
        out = out + upcast(b).reshape((1, -1) + (1,) * n)
    return out


def _conv_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    return [as_dtype(conv_nd(x, w, opt(inputs, 2), attrs), ctx)]


# --- ConvTranspose -------------------------------------------------------------------------------
CONVT_ATTRS = {
    **CONV_ATTRS,
    "output_padding": AttrSpec("ints", zeros_per_axis),
    "output_shape": AttrSpec("ints", None),
}


def _convt_natural(size: Dim, k: int, s: int, d: int, op: int, pads: int = 0) -> Dim:
    """The ConvTranspose output size: s * (size - 1) + output_padding + span - pads."""
    return dims.add(dims.mul(size, s), op + (k - 1) * d + 1 - s - pads)


def convt_geometry(shape: Sequence[Dim], attrs: Attrs) -> tuple[tuple[Dim, ...], tuple[int, ...]]:
    """Output spatial dims and the pads in effect (the ONNX ConvTranspose shape rules).

    With output_shape (or SAME), total padding = natural size - output size, split by
    `same_pads` (NOTSET splits as SAME_LOWER, as the spec's reference does); a negative total
    (an output larger than the natural size) pads nothing and leaves zeros at the end.
    """
    k, s, d, op = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["output_padding"]
    n = len(k)
    mode = attrs.get("auto_pad", "NOTSET")
    target = attrs.get("output_shape")
    if target is None and mode not in ("SAME_UPPER", "SAME_LOWER"):
        pads = (0,) * (2 * n) if mode == "VALID" else tuple(attrs["pads"])
        out = tuple(_convt_natural(shape[i], k[i], s[i], d[i], op[i], pads[i] + pads[i + n]) for i in range(n))
        return out, pads
    if target is not None:
        out = tuple(int(v) for v in list(target)[-n:])
    else:
        out = tuple(dims.mul(shape[i], s[i]) for i in range(n))
    if not dims.is_static(tuple(shape)):
        return out, (0,) * (2 * n)  # the pads are only needed (and known) at run time
    lo, hi = [], []
    for i in range(n):
        total = int(_convt_natural(shape[i], k[i], s[i], d[i], op[i])) - int(out[i])
        b, e = same_pads(max(total, 0), "SAME_UPPER" if mode == "SAME_UPPER" else "SAME_LOWER")
        lo.append(b)
        hi.append(e)
    return out, tuple(lo + hi)


def _convt_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: SAME auto_pad / output_shape -> explicit pads when the input dims are static."""
    x = types[0] if types else None
    w = types[1] if len(types) > 1 else None
    mode = attrs.get("auto_pad", "NOTSET")
    if x is None or not dims.is_static(x.shape[2:]) or (mode in ("NOTSET", "") and "output_shape" not in attrs):
        return inputs, attrs
    if "kernel_shape" not in attrs and (w is None or not dims.is_static(w.shape[2:])):
        return inputs, attrs
    n = x.rank - 2
    full = {
        "kernel_shape": attrs.get("kernel_shape") or kernel_from_weight(types),
        "strides": attrs.get("strides") or (1,) * n,
        "dilations": attrs.get("dilations") or (1,) * n,
        "output_padding": attrs.get("output_padding") or (0,) * n,
        "pads": attrs.get("pads") or (0,) * (2 * n),
        "auto_pad": mode,
        "output_shape": attrs.get("output_shape"),
    }
    out, pads = convt_geometry(x.shape[2:], full)
    natural = {**full, "pads": pads, "auto_pad": "NOTSET", "output_shape": None}
    if convt_geometry(x.shape[2:], natural)[0] == tuple(out):  # representable with pads alone
        attrs.pop("output_shape", None)
        attrs["pads"], attrs["auto_pad"] = pads, "NOTSET"
    return inputs, attrs


def _convt_infer(ctx: InferCtx) -> list[TensorType]:
    for i in range(len(ctx.types)):
        check_dtype(ctx, i, FLOAT)
    x, w = req(ctx), req(ctx, 1)
    a = ctx.attrs
    g, k = a["group"], tuple(a["kernel_shape"])
    n = check_window_attrs(ctx, x, k)
    if w.rank != x.rank:
        raise ValueError(f"weight rank {w.rank} differs from input rank {x.rank}")
    if isinstance(x.shape[1], int) and isinstance(w.shape[0], int) and x.shape[1] != w.shape[0]:
        raise ValueError(f"input has {x.shape[1]} channels; the weight [C, M/group, k...] has {w.shape[0]}")
    if len(a["output_padding"]) != n or (a.get("output_shape") is not None and len(a["output_shape"]) not in (n, n + 2)):
        raise ValueError(f"output_padding / output_shape must have {n} entries")
    out, _ = convt_geometry(x.shape[2:], a)
    return [TensorType(x.dtype, (x.shape[0], dims.mul(w.shape[1], g)) + tuple(out))]


def _convt_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w, b = inputs[0], inputs[1], opt(inputs, 2)
    assert x is not None and w is not None
    k, s, d, g = tuple(attrs["kernel_shape"]), attrs["strides"], attrs["dilations"], attrs["group"]
    n = len(k)
    out, pads = convt_geometry(x.shape[2:], attrs)
    batch, cin = x.shape[:2]
    cout_g = w.shape[1]
    xf, wf = upcast(x), upcast(w)
    # cols[g, o, *k, N, *in] = sum_c w[g, c, o, *k] * x[N, g, c, *in]: one GEMM per group.
    pixels = int(np.prod(x.shape[2:]))
    xg = np.moveaxis(xf.reshape((batch, g, cin // g, pixels)), 0, 2).reshape(g, cin // g, batch * pixels)
    wg = wf.reshape(g, cin // g, -1).transpose(0, 2, 1)
    cols = np.matmul(wg, xg).reshape((g * cout_g,) + k + (batch,) + x.shape[2:])
    cols = np.moveaxis(cols, 1 + n, 0)  # [N, M, *k, *in]
    natural = [int(_convt_natural(x.shape[2 + i], k[i], s[i], d[i], attrs["output_padding"][i])) for i in range(n)]
    size = [max(natural[i], pads[i] + int(out[i])) for i in range(n)]
    canvas = scatter_windows(cols, k, s, d, size)
    y = canvas[(Ellipsis,) + tuple(slice(pads[i], pads[i] + int(out[i])) for i in range(n))]
    if b is not None:
        y = y + upcast(b).reshape((1, -1) + (1,) * n)
    return [as_dtype(y, ctx)]


# --- Col2Im --------------------------------------------------------------------------------------
def _col2im_rank(types: Types) -> int:
    t = types[1] if len(types) > 1 else None
    if t is None or t.rank != 1 or not isinstance(t.shape[0], int):
        raise ValueError("image_shape must be a 1-D tensor of static length")
    return int(t.shape[0])


COL2IM_ATTRS = {
    "dilations": AttrSpec("ints", lambda types: (1,) * _col2im_rank(types)),
    "pads": AttrSpec("ints", lambda types: (0,) * (2 * _col2im_rank(types))),
    "strides": AttrSpec("ints", lambda types: (1,) * _col2im_rank(types)),
}


def _col2im_infer(ctx: InferCtx) -> list[TensorType]:
    x = req(ctx)
    check_dtype(ctx, 1, ("i64",))
    check_dtype(ctx, 2, ("i64",))
    n = _col2im_rank(ctx.types)
    if x.rank != 3 or req(ctx, 2).shape != (n,):
        raise ValueError(f"Col2Im takes input [N, C*prod(block), L] and {n}-element shapes, got {x}, {req(ctx, 2)}")
    image, block = ctx.const_or_value(1), ctx.const_or_value(2)
    spatial = tuple(image) if image is not None else tuple(ctx.fresh(0, 2 + i) for i in range(n))
    c: Dim = ctx.fresh(0, 1)
    if block is not None and all(isinstance(v, int) for v in block):
        c = dims.floordiv(x.shape[1], int(np.prod(block)))
    return [TensorType(x.dtype, (x.shape[0], c) + spatial)]


def _col2im_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, image, block = inputs[0], inputs[1], inputs[2]
    assert x is not None and image is not None and block is not None
    image, k = [int(v) for v in image], tuple(int(v) for v in block)
    n, s, d, pads = len(k), attrs["strides"], attrs["dilations"], attrs["pads"]
    blocks = [int(out_dim(image[i], k[i], s[i], d[i], pads[i], pads[i + n])) for i in range(n)]
    taps = int(np.prod(k))
    if x.shape[1] % taps or x.shape[2] != int(np.prod(blocks)):
        raise ValueError(f"input {list(x.shape)} does not hold {taps}-tap columns of {blocks} blocks")
    cols = upcast(x).reshape((x.shape[0], x.shape[1] // taps) + k + tuple(blocks))
    size = [image[i] + pads[i] + pads[i + n] for i in range(n)]
    canvas = scatter_windows(cols, k, s, d, size)
    y = canvas[(Ellipsis,) + tuple(slice(pads[i], pads[i] + image[i]) for i in range(n))]
    return [as_dtype(y, ctx)]


# --- Gemm, MatMul --------------------------------------------------------------------------------
GEMM_TYPES = FLOAT + ("i64", "i32", "u64", "u32")
MATMUL_TYPES = FLOAT + ("i64", "i32", "u64", "u32")


def _gemm_infer(ctx: InferCtx) -> list[TensorType]:
    for i in range(len(ctx.types)):
        check_dtype(ctx, i, GEMM_TYPES)
    a, b = req(ctx), req(ctx, 1)
    c = ctx.types[2] if len(ctx.types) > 2 else None
    if a.rank != 2 or b.rank != 2:
        raise ValueError(f"Gemm operands must be 2-D, got {a} and {b}")
    if len({t.dtype for t in ctx.types if t is not None}) > 1:
        raise ValueError(f"Gemm operands must share one dtype, got {[t.dtype for t in ctx.types if t is not None]}")
    m, ka = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ValueError(f"Gemm inner dims differ: {ka} vs {kb} (transA={ctx.attrs['transA']}, transB={ctx.attrs['transB']})")
    # C broadcasts unidirectionally to [M, N]: each of its dims is 1 or the target's.
    if c is not None and (c.rank > 2 or any(
            isinstance(cd, int) and isinstance(td, int) and cd not in (1, td) for cd, td in zip(c.shape[::-1], (n, m)))):
        raise ValueError(f"Gemm C {c} does not broadcast to [{m},{n}]")
    return [TensorType(a.dtype, (m, n))]


def _gemm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b, c = inputs[0], inputs[1], opt(inputs, 2)
    assert a is not None and b is not None
    a = upcast(a.T if attrs["transA"] else a)
    b = upcast(b.T if attrs["transB"] else b)
    out = a @ b
    if attrs["alpha"] != 1.0:
        out = attrs["alpha"] * out
    if c is not None and attrs["beta"] != 0.0:
        out = out + (attrs["beta"] * upcast(c) if attrs["beta"] != 1.0 else upcast(c))
    return [as_dtype(out, ctx)]


def matmul_shape(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy.matmul's output shape, with 1-D promotion and batch broadcasting."""
    if not a or not b:
        raise ValueError("MatMul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    k1, k2 = a2[-1], b2[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ValueError(f"MatMul inner dims differ: {list(a)} @ {list(b)}")
    dims.assume_equal(k1, k2)
    out = dims.broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, MATMUL_TYPES)
    a, b = req(ctx), req(ctx, 1)
    if a.dtype != b.dtype:
        raise ValueError(f"MatMul operands differ in dtype: {a.dtype} vs {b.dtype}")
    return [TensorType(a.dtype, matmul_shape(a.shape, b.shape))]


def _matmul_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    return [as_dtype(np.matmul(upcast(a), upcast(b)), ctx)]


OPS: list[OpDef] = [
    OpDef(name="Conv", infer=_conv_float_infer, ref=_conv_ref, inputs=(2, 3), attrs=CONV_ATTRS, upgrade=_resolve_auto_pad),
    OpDef(name="ConvTranspose", infer=_convt_infer, ref=_convt_ref, inputs=(2, 3), attrs=CONVT_ATTRS, upgrade=_convt_upgrade),
    OpDef(name="Col2Im", infer=_col2im_infer, ref=_col2im_ref, inputs=(3, 3), attrs=COL2IM_ATTRS),
    OpDef(name="Gemm", infer=_gemm_infer, ref=_gemm_ref, inputs=(2, 3),
          attrs={"alpha": AttrSpec("float", 1.0), "beta": AttrSpec("float", 1.0),
                 "transA": AttrSpec("int", 0), "transB": AttrSpec("int", 0)}),
    OpDef(name="MatMul", infer=_matmul_infer, ref=_matmul_ref, inputs=(2, 2)),
]
