"""Operators: normalization (Batch, Instance, Layer, Group, RMS, LRN, MeanVariance) and
RotaryEmbedding.

Statistics are computed in f32 (f64 when the input or the stash type is f64) and the result
is rounded once to the declared dtype. `stash_type` holds an ember dtype name in the IR
("f32"); the importer converts the ONNX TensorProto code and the exporter converts it back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ember.compiler import dims, dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, norm_axis
from ember.compiler.ops.elementwise import FLOAT, check_dtype, upcast
from ember.compiler.ops.nn import Arrays, Attrs, opt, req
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

EPSILON = AttrSpec("float", 1e-5)
STASH = AttrSpec("str", "f32")


def _stash_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: stash_type TensorProto code -> ember dtype name."""
    if isinstance(attrs.get("stash_type"), int):
        attrs["stash_type"] = dtypes.from_onnx(attrs["stash_type"], "stash_type")
    return inputs, attrs


def _compute_dtype(x: np.ndarray, stash: str = "f32") -> np.dtype:
    """f64 if the input or the stash type is f64, else f32 (f16/bf16 stash types round once)."""
    return np.dtype(np.float64) if np.float64 in (x.dtype, dtypes.to_numpy(stash)) else np.dtype(np.float32)


def _check_floats(ctx: InferCtx, count: int | None = None) -> TensorType:
    """Inputs 0..count-1 (default all) must be floats, stash_type a float dtype; x's type."""
    for i in range(len(ctx.types) if count is None else count):
        check_dtype(ctx, i, FLOAT)
    if "stash_type" in ctx.attrs and ctx.attrs["stash_type"] not in FLOAT:
        raise ValueError(f"stash_type must be a float dtype, got {ctx.attrs['stash_type']!r}")
    return req(ctx)


def _channel_params(ctx: InferCtx, first: int, last: int, count: Any) -> None:
    """Inputs first..last must be 1-D of length `count` (when both are static)."""
    for i in range(first, last + 1):
        t = req(ctx, i)
        if t.rank != 1 or (isinstance(count, int) and isinstance(t.shape[0], int) and t.shape[0] != count):
            raise ValueError(f"{ctx.op} input {i} must be [{count}], got {t}")


def _per_channel(a: np.ndarray, ndim: int) -> np.ndarray:
    """A [C] vector shaped to broadcast over [N, C, spatial...]."""
    return a.reshape((1, -1) + (1,) * (ndim - 2))


# --- BatchNormalization, InstanceNormalization ----------------------------------------------------
def _bn_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_floats(ctx)
    if x.rank < 2:
        raise ValueError(f"BatchNormalization needs an input of rank >= 2, got {x}")
    _channel_params(ctx, 1, 4, x.shape[1])
    if ctx.num_outputs > 1 and not ctx.attrs["training_mode"]:
        raise ValueError("running_mean / running_var outputs need training_mode=1")
    stat = TensorType(req(ctx, 3).dtype, (x.shape[1],))
    return [x, stat, TensorType(req(ctx, 4).dtype, (x.shape[1],))][: max(ctx.num_outputs, 1)]


def _bn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias, mean, var = (np.asarray(a) for a in inputs[:5])
    ct = _compute_dtype(x)
    xf, scale, bias, mean, var = (a.astype(ct) for a in (x, scale, bias, mean, var))
    eps, momentum = attrs["epsilon"], attrs["momentum"]
    if not attrs["training_mode"]:
        with np.errstate(invalid="ignore"):  # a negative variance gives NaN, as in onnxruntime
            inv = scale / np.sqrt(var + eps)
        return [as_dtype((xf - _per_channel(mean, x.ndim)) * _per_channel(inv, x.ndim) + _per_channel(bias, x.ndim), ctx)]
    # Training: normalize with the batch statistics (population variance) and blend them
    # into the running ones: running = input * momentum + batch * (1 - momentum).
    axes = (0,) + tuple(range(2, x.ndim))
    cur_mean, cur_var = xf.mean(axis=axes), xf.var(axis=axes)
    inv = scale / np.sqrt(cur_var + eps)
    y = (xf - _per_channel(cur_mean, x.ndim)) * _per_channel(inv, x.ndim) + _per_channel(bias, x.ndim)
    outs = [y, mean * momentum + cur_mean * (1 - momentum), var * momentum + cur_var * (1 - momentum)]
    return [as_dtype(o, ctx, i) for i, o in enumerate(outs[: len(ctx.node.outputs)])]


def _instnorm_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_floats(ctx)
    if x.rank < 3:
        raise ValueError(f"InstanceNormalization needs an input of rank >= 3, got {x}")
    _channel_params(ctx, 1, 2, x.shape[1])
    return [x]


def _instnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias = (np.asarray(a) for a in inputs[:3])
    xf = x.astype(_compute_dtype(x))
    axes = tuple(range(2, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    var = xf.var(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + attrs["epsilon"]) * _per_channel(upcast(scale), x.ndim) + _per_channel(upcast(bias), x.ndim)
    return [as_dtype(y, ctx)]


# --- LayerNormalization, RMSNormalization, GroupNormalization -----------------------------------
def _trailing_infer(ctx: InferCtx) -> list[TensorType]:
    """LayerNormalization / RMSNormalization: normalize over axes axis..rank-1."""
    x = _check_floats(ctx)
    axis = norm_axis(ctx.attrs["axis"], x.rank)
    for t in ctx.types[1:]:
        if t is None:
            continue
        shape = dims.broadcast(t.shape, x.shape)  # (a symbolic normalized dim takes the weight's size)
        if len(shape) != x.rank:
            raise ValueError(f"{ctx.op} scale/bias {t} must broadcast to the input {x} (normalized from axis {axis})")
        x = TensorType(x.dtype, shape)
    stat = TensorType(ctx.attrs["stash_type"], x.shape[:axis] + (1,) * (x.rank - axis))
    return [x, stat, stat][: max(ctx.num_outputs, 1)]


def _layernorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias = inputs[0], inputs[1], opt(inputs, 2)
    assert x is not None and scale is not None
    axes = tuple(range(norm_axis(attrs["axis"], x.ndim), x.ndim))
    xf = x.astype(_compute_dtype(x, attrs["stash_type"]))
    mean = xf.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    y = (xf - mean) * inv * upcast(scale)
    if bias is not None:
        y = y + upcast(bias)
    outs = [y, mean, inv]
    return [as_dtype(o, ctx, i) for i, o in enumerate(outs[: len(ctx.node.outputs)])]


def _rmsnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    axes = tuple(range(norm_axis(attrs["axis"], x.ndim), x.ndim))
    xf = x.astype(_compute_dtype(x, attrs["stash_type"]))
    rms = np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    return [as_dtype(xf / rms * upcast(scale), ctx)]


def _groupnorm_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_floats(ctx)
    g = ctx.attrs["num_groups"]
    c = x.shape[1] if x.rank >= 2 else None
    if x.rank < 3 or g < 1 or (isinstance(c, int) and c % g):
        raise ValueError(f"GroupNormalization needs [N, C, spatial...] with C divisible by num_groups={g}, got {x}")
    for i in (1, 2):  # [C] (opset 21) or [num_groups] (opset 18, one value per group)
        t = req(ctx, i)
        if t.rank != 1 or (isinstance(c, int) and isinstance(t.shape[0], int) and t.shape[0] not in (c, g)):
            raise ValueError(f"GroupNormalization input {i} must be [{c}], got {t}")
    return [x]


def _groupnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale, bias = (np.asarray(a) for a in inputs[:3])
    g = attrs["num_groups"]
    n, c = x.shape[:2]
    grouped = x.astype(_compute_dtype(x, attrs["stash_type"])).reshape((n, g, c // g * int(np.prod(x.shape[2:]))))
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + attrs["epsilon"])).reshape(x.shape)
    if scale.size == g and g != c:  # GroupNormalization-18: one scale and bias per group
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    return [as_dtype(normed * _per_channel(upcast(scale), x.ndim) + _per_channel(upcast(bias), x.ndim), ctx)]


# --- LRN, MeanVarianceNormalization --------------------------------------------------------------
def _same_float(ctx: InferCtx) -> list[TensorType]:
    x = _check_floats(ctx)
    if ctx.op == "LRN" and (x.rank < 3 or ctx.attrs["size"] < 1):
        raise ValueError(f"LRN needs [N, C, spatial...] and size >= 1, got {x}, size={ctx.attrs['size']}")
    for axis in ctx.attrs.get("axes", ()):
        norm_axis(axis, x.rank)
    return [x]


def _lrn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # y = x / (bias + alpha / size * sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)]) ^ beta
    x = inputs[0]
    assert x is not None
    size = attrs["size"]
    lo = (size - 1) // 2
    xf = upcast(x)
    padded = np.pad(xf * xf, [(0, 0), (lo, size - 1 - lo)] + [(0, 0)] * (x.ndim - 2))
    window = sliding_window_view(padded, size, axis=1).sum(axis=-1)
    return [as_dtype(xf / (attrs["bias"] + attrs["alpha"] / size * window) ** attrs["beta"], ctx)]


def _mvn_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # (x - mean) / (sqrt(var) + 1e-9) over `axes`, as the op's function body defines it.
    x = inputs[0]
    assert x is not None
    axes = tuple(norm_axis(a, x.ndim) for a in attrs["axes"])
    xf = upcast(x)
    mean = xf.mean(axis=axes, keepdims=True)
    std = np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True))
    return [as_dtype((xf - mean) / (std + 1e-9), ctx)]


# --- RotaryEmbedding -----------------------------------------------------------------------------
def _rope_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_floats(ctx, 3)
    check_dtype(ctx, 3, ("i64",))
    a = ctx.attrs
    if x.rank == 3 and not a["num_heads"]:
        raise ValueError("RotaryEmbedding on a 3-D input [batch, seq, hidden] needs num_heads")
    if x.rank not in (3, 4):
        raise ValueError(f"RotaryEmbedding takes [batch, heads, seq, head] or [batch, seq, hidden], got {x}")
    head = x.shape[3] if x.rank == 4 else dims.floordiv(x.shape[2], a["num_heads"])
    rot = a["rotary_embedding_dim"] or head
    if isinstance(rot, int) and (rot % 2 or (isinstance(head, int) and rot > head)):
        raise ValueError(f"rotary_embedding_dim {rot} must be even and at most the head size {head}")
    cos = req(ctx, 1)
    has_ids = len(ctx.types) > 3 and ctx.types[3] is not None
    if cos.rank != (2 if has_ids else 3) or req(ctx, 2).shape != cos.shape:
        raise ValueError(f"cos/sin caches must both be {'2' if has_ids else '3'}-D, got {cos}, {req(ctx, 2)}")
    if isinstance(rot, int) and isinstance(cos.shape[-1], int) and cos.shape[-1] != rot // 2:
        raise ValueError(f"cos/sin caches' last dim {cos.shape[-1]} must be rotary_embedding_dim/2 = {rot // 2}")
    return [x]


def _rope_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    """Rotate pairs (x1, x2) of the first `rotary_embedding_dim` features of each head:
    (x1 cos - x2 sin, x1 sin + x2 cos); pairs are halves, or neighbours when interleaved."""
    x, cos, sin, ids = inputs[0], inputs[1], inputs[2], opt(inputs, 3)
    assert x is not None and cos is not None and sin is not None
    xf = upcast(x)
    # As [batch, seq, heads, head]: from [batch, heads, seq, head] or [batch, seq, hidden].
    heads = attrs["num_heads"]
    xh = xf.transpose(0, 2, 1, 3) if x.ndim == 4 else xf.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)
    rot = attrs["rotary_embedding_dim"] or xh.shape[3]
    if ids is not None:
        cos, sin = cos[ids], sin[ids]
    cos, sin = upcast(cos)[:, :, None, :], upcast(sin)[:, :, None, :]
    part = xh[..., :rot]
    x1, x2 = (part[..., 0::2], part[..., 1::2]) if attrs["interleaved"] else (part[..., : rot // 2], part[..., rot // 2 :])
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = np.stack([real, imag], axis=-1).reshape(part.shape) if attrs["interleaved"] else np.concatenate([real, imag], -1)
    y = np.concatenate([rotated, xh[..., rot:]], axis=-1)
    y = y.transpose(0, 2, 1, 3) if x.ndim == 4 else y.reshape(x.shape)
    return [as_dtype(y, ctx)]


OPS: list[OpDef] = [
    OpDef(name="BatchNormalization", infer=_bn_infer, ref=_bn_ref, inputs=(5, 5), outputs=(1, 3),
          attrs={"epsilon": EPSILON, "momentum": AttrSpec("float", 0.9), "training_mode": AttrSpec("int", 0)}),
    OpDef(name="InstanceNormalization", infer=_instnorm_infer, ref=_instnorm_ref, inputs=(3, 3), attrs={"epsilon": EPSILON}),
    OpDef(name="LayerNormalization", infer=_trailing_infer, ref=_layernorm_ref, inputs=(2, 3), outputs=(1, 3),
          upgrade=_stash_upgrade, attrs={"axis": AttrSpec("int", -1), "epsilon": EPSILON, "stash_type": STASH}),
    OpDef(name="RMSNormalization", infer=_trailing_infer, ref=_rmsnorm_ref, inputs=(2, 2), upgrade=_stash_upgrade,
          attrs={"axis": AttrSpec("int", -1), "epsilon": EPSILON, "stash_type": STASH}),
    OpDef(name="GroupNormalization", infer=_groupnorm_infer, ref=_groupnorm_ref, inputs=(3, 3), upgrade=_stash_upgrade,
          attrs={"epsilon": EPSILON, "num_groups": AttrSpec("int"), "stash_type": STASH}),
    OpDef(name="LRN", infer=_same_float, ref=_lrn_ref,
          attrs={"alpha": AttrSpec("float", 1e-4), "beta": AttrSpec("float", 0.75), "bias": AttrSpec("float", 1.0),
                 "size": AttrSpec("int")}),
    OpDef(name="MeanVarianceNormalization", infer=_same_float, ref=_mvn_ref, attrs={"axes": AttrSpec("ints", (0, 2, 3))}),
    OpDef(name="RotaryEmbedding", infer=_rope_infer, ref=_rope_ref, inputs=(3, 4),
          attrs={"interleaved": AttrSpec("int", 0), "num_heads": AttrSpec("int", 0),
                 "rotary_embedding_dim": AttrSpec("int", 0)}),
]
