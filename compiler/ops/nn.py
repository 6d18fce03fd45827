"""Operators: convolution, pooling, matrix products, normalization.

Convolution and pooling references run on sliding-window views (no Python loops over
pixels) so that ResNet-50-sized layers take well under a second. Auto-padding is resolved
to explicit pads at import when the spatial dims are static.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


def _spatial(types: Sequence[TensorType | None]) -> int:
    t = types[0]
    return (t.rank - 2) if t is not None else 2


def _ones(types: Sequence[TensorType | None]) -> tuple[int, ...]:
    return (1,) * _spatial(types)


def _zeros2(types: Sequence[TensorType | None]) -> tuple[int, ...]:
    return (0,) * (2 * _spatial(types))


def _kernel_from_weight(types: Sequence[TensorType | None]) -> tuple[int, ...]:
    w = types[1] if len(types) > 1 else None
    if w is None or not all(isinstance(d, int) for d in w.shape[2:]):
        raise ValueError("kernel_shape must be given when the weight shape is not static")
    return tuple(int(d) for d in w.shape[2:])


def _acc(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype == np.float16 or x.dtype.kind == "V" else x


# --- padding -------------------------------------------------------------------------------
def _out_dim(size: Dim, k: int, s: int, d: int, lo: int, hi: int, ceil: bool = False) -> Dim:
    span = (k - 1) * d + 1
    if isinstance(size, int):
        num = size + lo + hi - span
        out = (-(-num // s) if ceil else num // s) + 1
        if ceil and (out - 1) * s >= size + lo:  # the last window must start inside the input or left pad
            out -= 1
        return out
    base = dims.add(size, lo + hi - span)
    return dims.add(dims.ceildiv(base, s) if ceil else dims.floordiv(base, s), 1)


def _auto_pads(shape: Sequence[Dim], k: Sequence[int], s: Sequence[int], d: Sequence[int], mode: str) -> tuple[int, ...] | None:
    """Explicit pads for SAME_UPPER / SAME_LOWER / VALID (None when dims are symbolic)."""
    n = len(k)
    if mode == "VALID":
        return (0,) * (2 * n)
    if not all(isinstance(x, int) for x in shape):
        return None
    lo, hi = [], []
    for size, kk, ss, dd in zip(shape, k, s, d):
        out = -(-int(size) // ss)
        total = max((out - 1) * ss + (kk - 1) * dd + 1 - int(size), 0)
        small, big = total // 2, total - total // 2
        lo.append(small if mode == "SAME_UPPER" else big)
        hi.append(big if mode == "SAME_UPPER" else small)
    return tuple(lo + hi)


def _resolve_auto_pad(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", "") or not types or types[0] is None:
        return inputs, attrs
    x = types[0]
    n = x.rank - 2
    k = attrs.get("kernel_shape") or (_kernel_from_weight(types) if len(types) > 1 else None)
    if k is None:
        return inputs, attrs
    s = attrs.get("strides") or (1,) * n
    d = attrs.get("dilations") or (1,) * n
    pads = _auto_pads(x.shape[2:], k, s, d, mode)
    if pads is not None:
        attrs["pads"] = pads
        attrs["auto_pad"] = "NOTSET"
    return inputs, attrs


def _pads(shape: Sequence[Dim], attrs: Attrs, k: Sequence[int]) -> tuple[int, ...]:
    mode = attrs.get("auto_pad", "NOTSET")
    if mode not in ("NOTSET", ""):
        pads = _auto_pads(shape, k, attrs["strides"], attrs.get("dilations") or (1,) * len(k), mode)
        if pads is None:
            raise ValueError(f"auto_pad={mode} needs static spatial dims")
        return pads
    return tuple(attrs["pads"])


def _windows(x: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int], pads: Sequence[int], fill: float, ceil: bool = False) -> np.ndarray:
    """[N, C, *out, *k] sliding windows of x (spatial dims after the first two)."""
    n = len(k)
    extra = [0] * n
    if ceil:
        for i in range(n):
            out = _out_dim(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n], ceil=True)
            need = (int(out) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - (x.shape[2 + i] + pads[i] + pads[i + n])
            extra[i] = max(need, 0)
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + n] + extra[i]) for i in range(n)]
    xp = np.pad(x, width, mode="constant", constant_values=fill)
    span = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    view = sliding_window_view(xp, span, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s[i]) for i in range(n)) + tuple(
        slice(None, None, d[i]) for i in range(n)
    )
    return view[index]


# --- Conv ------------------------------------------------------------------------------------
CONV_ATTRS = {
    "auto_pad": AttrSpec("str", "NOTSET"),
    "dilations": AttrSpec("ints", _ones),
    "group": AttrSpec("int", 1),
    "kernel_shape": AttrSpec("ints", _kernel_from_weight),
    "pads": AttrSpec("ints", _zeros2),
    "strides": AttrSpec("ints", _ones),
}


def _conv_infer(ctx: InferCtx) -> list[TensorType]:
    x, w = _t(ctx), _t(ctx, 1)
    a = ctx.attrs
    k = a["kernel_shape"]
    n = x.rank - 2
    if w.rank != x.rank:
        raise ValueError(f"weight rank {w.rank} != input rank {x.rank}")
    cin = x.shape[1]
    if isinstance(cin, int) and isinstance(w.shape[1], int) and cin != w.shape[1] * a["group"]:
        raise ValueError(f"input has {cin} channels, weight expects {w.shape[1]} x group {a['group']}")
    pads = _pads(x.shape[2:], a, k) if a.get("auto_pad", "NOTSET") in ("NOTSET", "") or x.static else (0,) * (2 * n)
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID") and not x.static:
        spatial = tuple(dims.ceildiv(x.shape[2 + i], a["strides"][i]) for i in range(n))
    else:
        spatial = tuple(
            _out_dim(x.shape[2 + i], k[i], a["strides"][i], a["dilations"][i], pads[i], pads[i + n]) for i in range(n)
        )
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + spatial)]


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """N-d grouped, strided, dilated, padded convolution (float accumulation in >= f32)."""
    k = attrs["kernel_shape"]
    n = len(k)
    g = attrs["group"]
    pads = _pads(x.shape[2:], attrs, k)
    win = _windows(_acc(x), k, attrs["strides"], attrs["dilations"], pads, 0.0)
    batch, cin = x.shape[0], x.shape[1]
    out_sp = win.shape[2 : 2 + n]
    win = win.reshape((batch, g, cin // g) + out_sp + tuple(k))
    cout = w.shape[0]
    wg = _acc(w).reshape((g, cout // g, cin // g) + tuple(k))
    letters = "xyz"[:n] if n <= 3 else "".join(chr(ord("p") + i) for i in range(n))
    kl = "ijk"[:n] if n <= 3 else "".join(chr(ord("A") + i) for i in range(n))
    spec = f"ngc{letters}{kl},goc{kl}->ngo{letters}"
    out = np.einsum(spec, win, wg, optimize=True).reshape((batch, cout) + out_sp)
    if b is not None:
        out = out + _acc(b).reshape((1, cout) + (1,) * n)
    return out


def _conv_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    b = inputs[2] if len(inputs) > 2 else None
    return [as_dtype(conv_nd(x, w, b, attrs), ctx)]


# --- ConvTranspose -------------------------------------------------------------------------
CONVT_ATTRS = {
    **CONV_ATTRS,
    "output_padding": AttrSpec("ints", lambda types: (0,) * _spatial(types)),
    "output_shape": AttrSpec("ints", None),
}


def _convt_geometry(shape: Sequence[Dim], attrs: Attrs) -> tuple[list[Dim], tuple[int, ...]]:
    """Output spatial dims and the explicit pads (ONNX ConvTranspose shape rules)."""
    k, s, d = attrs["kernel_shape"], attrs["strides"], attrs["dilations"]
    n = len(k)
    op = attrs["output_padding"]
    out_shape = attrs.get("output_shape")
    pads = list(attrs["pads"])
    mode = attrs.get("auto_pad", "NOTSET")
    if out_shape is not None:
        out_shape = list(out_shape)[-n:]
        for i in range(n):
            total = s[i] * (int(shape[i]) - 1) + op[i] + ((k[i] - 1) * d[i] + 1) - out_shape[i]
            total = max(total, 0)
            if mode == "SAME_UPPER":
                pads[i], pads[i + n] = total // 2, total - total // 2
            else:
                pads[i], pads[i + n] = total - total // 2, total // 2
        return list(out_shape), tuple(pads)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        out = [dims.mul(shape[i], s[i]) for i in range(n)]
        for i in range(n):
            if not isinstance(shape[i], int):
                raise ValueError("ConvTranspose auto_pad needs static spatial dims")
            total = max(s[i] * (shape[i] - 1) + op[i] + ((k[i] - 1) * d[i] + 1) - s[i] * shape[i], 0)
            if mode == "SAME_UPPER":
                pads[i], pads[i + n] = total // 2, total - total // 2
            else:
                pads[i], pads[i + n] = total - total // 2, total // 2
        return out, tuple(pads)
    out = [
        dims.add(dims.mul(dims.sub(shape[i], 1), s[i]), op[i] + (k[i] - 1) * d[i] + 1 - pads[i] - pads[i + n])
        for i in range(n)
    ]
    return out, tuple(pads)


def _convt_infer(ctx: InferCtx) -> list[TensorType]:
    x, w = _t(ctx), _t(ctx, 1)
    out, _ = _convt_geometry(x.shape[2:], ctx.attrs)
    return [TensorType(x.dtype, (x.shape[0], dims.mul(w.shape[1], ctx.attrs["group"])) + tuple(out))]


def _convt_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    b = inputs[2] if len(inputs) > 2 else None
    k, s, d, g = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["group"]
    n = len(k)
    out_sp, pads = _convt_geometry(x.shape[2:], attrs)
    batch, cin = x.shape[0], x.shape[1]
    cout_g = w.shape[1]
    # Scatter form: each input pixel adds x * w into a full-size canvas, then crop the pads.
    full = [(int(x.shape[2 + i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 + attrs["output_padding"][i] for i in range(n)]
    full = [max(full[i], int(out_sp[i]) + pads[i] + pads[i + n]) for i in range(n)]  # type: ignore[arg-type]
    canvas = np.zeros((batch, g, cout_g) + tuple(full), dtype=np.float64 if x.dtype == np.float64 else np.float32)
    xg = _acc(x).reshape((batch, g, cin // g) + x.shape[2:])
    wg = _acc(w).reshape((g, cin // g, cout_g) + tuple(k))
    # contrib[n, g, o, *in, *k] = sum_c x[n, g, c, *in] * w[g, c, o, *k]
    letters = "xyz"[:n]
    kl = "ijk"[:n]
    contrib = np.einsum(f"ngc{letters},gco{kl}->ngo{letters}{kl}", xg, wg, optimize=True)
    for kidx in np.ndindex(*k):
        dst = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + (x.shape[2 + i] - 1) * s[i] + 1, s[i]) for i in range(n))
        canvas[(slice(None), slice(None), slice(None)) + dst] += contrib[(Ellipsis,) + tuple(kidx)]
    crop = tuple(slice(pads[i], pads[i] + int(out_sp[i])) for i in range(n))  # type: ignore[arg-type]
    out = canvas[(slice(None), slice(None), slice(None)) + crop].reshape((batch, g * cout_g) + tuple(int(o) for o in out_sp))  # type: ignore[arg-type]
    if b is not None:
        out = out + _acc(b).reshape((1, -1) + (1,) * n)
    return [as_dtype(out, ctx)]


# --- pooling ---------------------------------------------------------------------------------
POOL_ATTRS = {
    "auto_pad": AttrSpec("str", "NOTSET"),
    "ceil_mode": AttrSpec("int", 0),
    "dilations": AttrSpec("ints", _ones),
    "kernel_shape": AttrSpec("ints"),
    "pads": AttrSpec("ints", _zeros2),
    "strides": AttrSpec("ints", _ones),
}


def _pool_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    a = ctx.attrs
    k = a["kernel_shape"]
    n = len(k)
    if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and not x.static:
        spatial = tuple(dims.ceildiv(x.shape[2 + i], a["strides"][i]) for i in range(n))
    else:
        pads = _pads(x.shape[2:], a, k)
        d = a.get("dilations") or (1,) * n
        spatial = tuple(
            _out_dim(x.shape[2 + i], k[i], a["strides"][i], d[i], pads[i], pads[i + n], bool(a.get("ceil_mode", 0)))
            for i in range(n)
        )
    out = TensorType(x.dtype, x.shape[:2] + spatial)
    return [out, TensorType("i64", out.shape)][: max(ctx.num_outputs, 1)]


def _maxpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    k = attrs["kernel_shape"]
    n = len(k)
    pads = _pads(x.shape[2:], attrs, k)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = _windows(x, k, attrs["strides"], attrs["dilations"], pads, fill, bool(attrs["ceil_mode"]))
    flat = win.reshape(win.shape[: 2 + n] + (-1,))
    out = flat.max(axis=-1)
    results = [out.astype(x.dtype)]
    if len(ctx.node.outputs) > 1:
        arg = flat.argmax(axis=-1)
        kidx = np.unravel_index(arg, tuple(k))
        coords = []
        for i in range(n):
            start = np.arange(out.shape[2 + i]) * attrs["strides"][i] - pads[i]
            shape = [1] * out.ndim
            shape[2 + i] = -1
            coords.append(start.reshape(shape) + kidx[i] * attrs["dilations"][i])
        spatial = x.shape[2:]
        if attrs["storage_order"]:
            flat_idx = np.zeros_like(arg)
            mult = 1
            for i in range(n):
                flat_idx = flat_idx + coords[i] * mult
                mult *= spatial[i]
        else:
            flat_idx = np.zeros_like(arg)
            for i in range(n):
                flat_idx = flat_idx * spatial[i] + coords[i]
        plane = int(np.prod(spatial))
        base = (np.arange(x.shape[0]).reshape(-1, 1) * x.shape[1] + np.arange(x.shape[1]).reshape(1, -1)) * plane
        results.append((flat_idx + base.reshape(base.shape + (1,) * n)).astype(np.int64))
    return results


def _avgpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    k = attrs["kernel_shape"]
    n = len(k)
    pads = _pads(x.shape[2:], attrs, k)
    d = attrs["dilations"]
    ceil = bool(attrs["ceil_mode"])
    xf = _acc(x)
    win = _windows(xf, k, attrs["strides"], d, pads, 0.0, ceil)
    total = win.reshape(win.shape[: 2 + n] + (-1,)).sum(axis=-1)
    if attrs["count_include_pad"]:
        # Padding counts, the ceil-mode overhang beyond the pads does not.
        ones = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
        padded = np.pad(ones, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)], constant_values=1.0)
        cnt = _windows(padded, k, attrs["strides"], d, (0,) * (2 * n), 0.0, False)
        count = cnt.reshape(cnt.shape[: 2 + n] + (-1,)).sum(axis=-1)
        if count.shape[2:] != total.shape[2:]:
            cnt = _windows(padded, k, attrs["strides"], d, (0,) * (2 * n), 0.0, True)
            count = cnt.reshape(cnt.shape[: 2 + n] + (-1,)).sum(axis=-1)
    else:
        ones = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
        cnt = _windows(ones, k, attrs["strides"], d, pads, 0.0, ceil)
        count = cnt.reshape(cnt.shape[: 2 + n] + (-1,)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [as_dtype(total / count, ctx)]


def _lppool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    k = attrs["kernel_shape"]
    n = len(k)
    p = attrs["p"]
    pads = _pads(x.shape[2:], attrs, k)
    win = _windows(np.abs(_acc(x)) ** p, k, attrs["strides"], attrs["dilations"], pads, 0.0, bool(attrs["ceil_mode"]))
    return [as_dtype(win.reshape(win.shape[: 2 + n] + (-1,)).sum(axis=-1) ** (1.0 / p), ctx)]


def _global_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


def _global(fn: Any) -> Any:
    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        axes = tuple(range(2, x.ndim))
        return [as_dtype(fn(_acc(x), axes, attrs), ctx)]

    return ref


def _maxunpool_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    shape = ctx.const_or_value(2) if len(ctx.types) > 2 and ctx.types[2] is not None else None
    if shape is not None:
        return [TensorType(x.dtype, tuple(shape))]
    a = ctx.attrs
    k = a["kernel_shape"]
    n = len(k)
    spatial = tuple(
        dims.add(dims.mul(dims.sub(x.shape[2 + i], 1), a["strides"][i]), k[i] - a["pads"][i] - a["pads"][i + n])
        for i in range(n)
    )
    return [TensorType(x.dtype, x.shape[:2] + spatial)]


def _maxunpool_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, idx = inputs[0], inputs[1]
    assert x is not None and idx is not None
    shape = tuple(int(d) for d in ctx.out_types[0].shape) if ctx.out_types[0].static else None
    if len(inputs) > 2 and inputs[2] is not None:
        shape = tuple(int(v) for v in inputs[2])
    assert shape is not None
    out = np.zeros(int(np.prod(shape)), dtype=x.dtype)
    out[idx.reshape(-1)] = x.reshape(-1)
    return [out.reshape(shape)]


# --- Gemm, MatMul ------------------------------------------------------------------------------
def _gemm_infer(ctx: InferCtx) -> list[TensorType]:
    a, b = _t(ctx), _t(ctx, 1)
    m = a.shape[1] if ctx.attrs["transA"] else a.shape[0]
    n = b.shape[0] if ctx.attrs["transB"] else b.shape[1]
    return [TensorType(a.dtype, (m, n))]


def _gemm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    out = attrs["alpha"] * (_acc(a) @ _acc(b)) if attrs["alpha"] != 1.0 else _acc(a) @ _acc(b)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None:
        out = out + (attrs["beta"] * _acc(c) if attrs["beta"] != 1.0 else _acc(c))
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
    batch = dims.broadcast(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_infer(ctx: InferCtx) -> list[TensorType]:
    a, b = _t(ctx), _t(ctx, 1)
    if a.dtype != b.dtype:
        raise ValueError(f"MatMul operands differ in dtype: {a.dtype} vs {b.dtype}")
    return [TensorType(a.dtype, matmul_shape(a.shape, b.shape))]


def _matmul_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    return [as_dtype(np.matmul(_acc(a), _acc(b)), ctx)]


# --- normalization -----------------------------------------------------------------------------
def _bn_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    c = TensorType(_t(ctx, 3).dtype, (x.shape[1],))
    return [x, c, c][: max(ctx.num_outputs, 1)]


def _bn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias, mean, var = (np.asarray(a) for a in inputs[:5])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps, momentum = attrs["epsilon"], attrs["momentum"]
    xf = _acc(x)
    if attrs["training_mode"]:
        axes = (0,) + tuple(range(2, x.ndim))
        cur_mean = xf.mean(axis=axes)
        cur_var = xf.var(axis=axes)
        y = (xf - cur_mean.reshape(shape)) / np.sqrt(cur_var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
        run_mean = mean * momentum + cur_mean * (1 - momentum)
        run_var = var * momentum + cur_var * (1 - momentum)
        return [as_dtype(y, ctx), run_mean.astype(mean.dtype), run_var.astype(var.dtype)][: len(ctx.node.outputs)]
    inv = _acc(scale) / np.sqrt(_acc(var) + eps)
    y = (xf - _acc(mean).reshape(shape)) * inv.reshape(shape) + _acc(bias).reshape(shape)
    return [as_dtype(y, ctx)]


def _instnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias = (np.asarray(a) for a in inputs[:3])
    axes = tuple(range(2, x.ndim))
    xf = _acc(x)
    mean = xf.mean(axis=axes, keepdims=True)
    var = xf.var(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (xf - mean) / np.sqrt(var + attrs["epsilon"]) * scale.reshape(shape) + bias.reshape(shape)
    return [as_dtype(y, ctx)]


def _layernorm_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    axis = norm_axis(ctx.attrs["axis"], x.rank)
    stat_dtype = "f32" if ctx.attrs["stash_type"] == 1 else x.dtype
    stat = TensorType(stat_dtype, x.shape[:axis] + (1,) * (x.rank - axis))
    return [x, stat, stat][: max(ctx.num_outputs, 1)]


def _layernorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    bias = inputs[2] if len(inputs) > 2 else None
    axis = norm_axis(attrs["axis"], x.ndim)
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32) if attrs["stash_type"] == 1 and x.dtype != np.float64 else x
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + attrs["epsilon"])
    y = (xf - mean) * inv * scale
    if bias is not None:
        y = y + bias
    out = [as_dtype(y, ctx), as_dtype(mean, ctx, 1) if len(ctx.node.outputs) > 1 else None,
           as_dtype(inv, ctx, 2) if len(ctx.node.outputs) > 2 else None]
    return [o for o in out if o is not None]


def _groupnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias = (np.asarray(a) for a in inputs[:3])
    g = attrs["num_groups"]
    n, c = x.shape[:2]
    xf = x.astype(np.float32) if attrs["stash_type"] == 1 and x.dtype != np.float64 else x
    grouped = xf.reshape((n, g, -1))
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + attrs["epsilon"])).reshape(x.shape)
    if scale.size == g and g != c:  # GroupNormalization-18: one scale per group
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return [as_dtype(normed * scale.reshape(shape) + bias.reshape(shape), ctx)]


def _rmsnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32) if attrs["stash_type"] == 1 and x.dtype != np.float64 else x
    rms = np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    return [as_dtype(xf / rms * scale, ctx)]


def _lrn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    size = attrs["size"]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = _acc(x) ** 2
    padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    win = sliding_window_view(padded, size, axis=1).sum(axis=-1)
    y = x / (attrs["bias"] + attrs["alpha"] / size * win) ** attrs["beta"]
    return [as_dtype(y, ctx)]


def _mvn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axes = tuple(norm_axis(a, x.ndim) for a in attrs["axes"])
    xf = _acc(x)
    mean = xf.mean(axis=axes, keepdims=True)
    std = np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True))
    return [as_dtype((xf - mean) / (std + 1e-9), ctx)]


def _same(ctx: InferCtx) -> list[TensorType]:
    return [_t(ctx)]


OPS: list[OpDef] = [
    OpDef(name="Conv", infer=_conv_infer, ref=_conv_ref, inputs=(2, 3), attrs=CONV_ATTRS, upgrade=_resolve_auto_pad),
    OpDef(name="ConvTranspose", infer=_convt_infer, ref=_convt_ref, inputs=(2, 3), attrs=CONVT_ATTRS),
    OpDef(name="MaxPool", infer=_pool_infer, ref=_maxpool_ref, outputs=(1, 2), upgrade=_resolve_auto_pad,
          attrs={**POOL_ATTRS, "storage_order": AttrSpec("int", 0)}),
    OpDef(name="AveragePool", infer=_pool_infer, ref=_avgpool_ref, upgrade=_resolve_auto_pad,
          attrs={**POOL_ATTRS, "count_include_pad": AttrSpec("int", 0)}),
    OpDef(name="LpPool", infer=_pool_infer, ref=_lppool_ref, upgrade=_resolve_auto_pad,
          attrs={**POOL_ATTRS, "p": AttrSpec("int", 2)}),
    OpDef(name="GlobalAveragePool", infer=_global_infer, ref=_global(lambda x, ax, a: x.mean(axis=ax, keepdims=True))),
    OpDef(name="GlobalMaxPool", infer=_global_infer, ref=_global(lambda x, ax, a: x.max(axis=ax, keepdims=True))),
    OpDef(name="GlobalLpPool", infer=_global_infer,
          ref=_global(lambda x, ax, a: (np.abs(x) ** a["p"]).sum(axis=ax, keepdims=True) ** (1.0 / a["p"])),
          attrs={"p": AttrSpec("int", 2)}),
    OpDef(name="MaxUnpool", infer=_maxunpool_infer, ref=_maxunpool_ref, inputs=(2, 3),
          attrs={"kernel_shape": AttrSpec("ints"), "pads": AttrSpec("ints", _zeros2), "strides": AttrSpec("ints", _ones)}),
    OpDef(name="Gemm", infer=_gemm_infer, ref=_gemm_ref, inputs=(2, 3),
          attrs={"alpha": AttrSpec("float", 1.0), "beta": AttrSpec("float", 1.0),
                 "transA": AttrSpec("int", 0), "transB": AttrSpec("int", 0)}),
    OpDef(name="MatMul", infer=_matmul_infer, ref=_matmul_ref, inputs=(2, 2)),
    OpDef(name="BatchNormalization", infer=_bn_infer, ref=_bn_ref, inputs=(5, 5), outputs=(1, 3),
          attrs={"epsilon": AttrSpec("float", 1e-5), "momentum": AttrSpec("float", 0.9),
                 "training_mode": AttrSpec("int", 0)}),
    OpDef(name="InstanceNormalization", infer=_same, ref=_instnorm_ref, inputs=(3, 3),
          attrs={"epsilon": AttrSpec("float", 1e-5)}),
    OpDef(name="LayerNormalization", infer=_layernorm_infer, ref=_layernorm_ref, inputs=(2, 3), outputs=(1, 3),
          attrs={"axis": AttrSpec("int", -1), "epsilon": AttrSpec("float", 1e-5), "stash_type": AttrSpec("int", 1)}),
    OpDef(name="GroupNormalization", infer=_same, ref=_groupnorm_ref, inputs=(3, 3),
          attrs={"epsilon": AttrSpec("float", 1e-5), "num_groups": AttrSpec("int"), "stash_type": AttrSpec("int", 1)}),
    OpDef(name="RMSNormalization", infer=_same, ref=_rmsnorm_ref, inputs=(2, 2),
          attrs={"axis": AttrSpec("int", -1), "epsilon": AttrSpec("float", 1e-5), "stash_type": AttrSpec("int", 1)}),
    OpDef(name="LRN", infer=_same, ref=_lrn_ref,
          attrs={"alpha": AttrSpec("float", 1e-4), "beta": AttrSpec("float", 0.75), "bias": AttrSpec("float", 1.0),
                 "size": AttrSpec("int")}),
    OpDef(name="MeanVarianceNormalization", infer=_same, ref=_mvn_ref, attrs={"axes": AttrSpec("ints", (0, 2, 3))}),
]
