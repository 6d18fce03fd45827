"""Operators: affine quantization and the integer / QLinear matrix and convolution ops.

    real = scale * (q - zero_point)        q = saturate(round_half_even(real / scale) + zero_point)

QuantizeLinear / DequantizeLinear take a scale (and zero point) per tensor (a scalar or one
element), per axis (1-D, the length of x's `axis`) or per block (x's rank, `block_size`
consecutive elements along `axis` share one). Arithmetic follows the ONNX reference
implementation, which the node tests encode: the division runs in the promoted type of x and
the scale (or `precision`), dequantization multiplies in f32 and rounds once to the output.

QLinearMatMul / QLinearConv requantize an exact integer accumulator with the f32 multiplier
scale_a * scale_b / scale_y, as onnxruntime and the reference do. float8/int4/int2 types are
outside ember's dtypes (the importer reports them as unsupported).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dtypes
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import norm_axis, required
from ember.compiler.ops.nn import CONV_ATTRS, _conv_infer, _resolve_auto_pad, conv_nd, matmul_shape
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]

QUANT = ("i8", "u8", "i16", "u16")  # QuantizeLinear outputs ember can hold
DEQUANT = QUANT + ("i32",)
SCALES = ("f32", "f16", "bf16")
INT8 = ("i8", "u8")


def _opt_t(ctx: InferCtx, i: int) -> TensorType | None:
    return ctx.types[i] if i < len(ctx.types) else None


def _check(t: TensorType | None, allowed: Sequence[str], what: str) -> None:
    if t is not None and t.dtype not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {t.dtype}")


def _dtype_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """ONNX stores output_dtype / precision as TensorProto codes (0 = unset); ember keeps names."""
    for key in ("output_dtype", "precision"):
        code = attrs.get(key)
        if isinstance(code, int):
            if code == 0:
                attrs.pop(key)
            else:
                attrs[key] = dtypes.from_onnx(code, key)
    return inputs, attrs


# --- granularity --------------------------------------------------------------------------------
def _check_param(x: TensorType, param: TensorType, attrs: Attrs, what: str) -> None:
    """A scale / zero point's shape against x: per tensor, per axis or blocked."""
    block = attrs["block_size"]
    if block < 0:
        raise ValueError(f"block_size must be >= 0, got {block}")
    if block == 0:
        if param.rank == 0 or (param.rank == 1 and param.shape[0] == 1):
            return
        if param.rank != 1:
            raise ValueError(f"{what} must be a scalar or 1-D (per axis) without block_size, got {param}")
        if x.rank < 2:
            raise ValueError(f"{what} must hold one element for a rank-{x.rank} input, got {param}")
        axis = norm_axis(attrs["axis"], x.rank)
        if isinstance(param.shape[0], int) and isinstance(x.shape[axis], int) and param.shape[0] != x.shape[axis]:
            raise ValueError(f"{what} {param} must have x's axis-{axis} length {x.shape[axis]}")
        return
    axis = norm_axis(attrs["axis"], x.rank)
    if param.rank != x.rank:
        raise ValueError(f"blocked {what} must have x's rank {x.rank}, got {param}")
    for i, (p, d) in enumerate(zip(param.shape, x.shape)):
        want: Dim = -(-d // block) if isinstance(d, int) else p
        if i != axis and isinstance(p, int) and isinstance(d, int) and p != d:
            raise ValueError(f"blocked {what} {param} must match x {x} except on axis {axis}")
        if i == axis and isinstance(p, int) and p != want:
            raise ValueError(f"blocked {what} {param} needs {want} blocks of {block} on axis {axis}")


def _expand(p: np.ndarray, shape: tuple[int, ...], attrs: Attrs) -> np.ndarray:
    """A scale / zero point shaped to broadcast against x (per tensor, per axis or blocked)."""
    if p.size == 1 and (p.ndim <= 1 or not attrs["block_size"]):
        return p.reshape(())
    axis = norm_axis(attrs["axis"], len(shape))
    block = attrs["block_size"]
    if block:  # each entry repeats `block` times along the axis; the last block may be short
        return np.repeat(p, block, axis=axis)[(slice(None),) * axis + (slice(0, shape[axis]),)]
    return p.reshape([-1 if i == axis else 1 for i in range(len(shape))])


# --- QuantizeLinear / DequantizeLinear ----------------------------------------------------------
def _q_infer(ctx: InferCtx) -> list[TensorType]:
    x, scale, zp = required(ctx), required(ctx, 1), _opt_t(ctx, 2)
    _check(x, ("f32", "f16", "bf16", "i32"), "QuantizeLinear x")
    _check(scale, ("f32", "f16", "bf16", "i32"), "y_scale")
    _check_param(x, scale, ctx.attrs, "y_scale")
    given = ctx.attrs.get("output_dtype")
    if zp is not None:
        _check_param(x, zp, ctx.attrs, "y_zero_point")
        if given is not None and given != zp.dtype:
            raise ValueError(f"output_dtype {given} differs from y_zero_point's dtype {zp.dtype}")
        given = zp.dtype
    dtype = given or "u8"
    if dtype not in QUANT:
        raise ValueError(f"QuantizeLinear output must be one of {', '.join(QUANT)}, got {dtype}")
    precision = ctx.attrs.get("precision")
    if precision is not None and precision not in SCALES:
        raise ValueError(f"precision must be one of {', '.join(SCALES)}, got {precision}")
    return [TensorType(dtype, x.shape)]


def _q_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    zp = inputs[2] if len(inputs) > 2 else None
    s = _expand(scale, x.shape, attrs)
    precision = attrs.get("precision")
    with np.errstate(divide="ignore", invalid="ignore"):
        if precision is not None:
            kind = dtypes.to_numpy(precision)
            ratio = x.astype(kind) / s.astype(kind)
        else:  # the promoted type of x and the scale, as the reference computes
            ratio = x / s
        q = np.rint(ratio).astype(np.float64)
    if zp is not None:
        q = q + _expand(zp, x.shape, attrs).astype(np.float64)
    out = ctx.out_types[0].np_dtype
    info = np.iinfo(out)
    return [np.clip(np.nan_to_num(q), info.min, info.max).astype(out)]


def _dq_infer(ctx: InferCtx) -> list[TensorType]:
    x, scale, zp = required(ctx), required(ctx, 1), _opt_t(ctx, 2)
    _check(x, DEQUANT, "DequantizeLinear x")
    _check(scale, SCALES, "x_scale")
    _check_param(x, scale, ctx.attrs, "x_scale")
    if zp is not None:
        _check_param(x, zp, ctx.attrs, "x_zero_point")
        if zp.dtype != x.dtype:
            raise ValueError(f"x_zero_point must have x's dtype {x.dtype}, got {zp.dtype}")
    out = ctx.attrs.get("output_dtype") or scale.dtype
    if out not in SCALES:
        raise ValueError(f"output_dtype must be one of {', '.join(SCALES)}, got {out}")
    return [TensorType(out, x.shape)]


def _dq_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    zp = inputs[2] if len(inputs) > 2 else None
    dx = x.astype(np.float32)
    if zp is not None:
        dx = dx - _expand(zp, x.shape, attrs).astype(np.float32)
    y = dx * _expand(scale, x.shape, attrs).astype(np.float32)
    return [y.astype(ctx.out_types[0].np_dtype)]


def _dyn_q_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    """uint8 asymmetric quantization of x's range extended to include 0 (f32 arithmetic).

    An all-zero x gets scale 1 and zero point 0 as in onnxruntime (the spec's formula divides
    0 by 0; the reference implementation uses 1/255). Its output is 0 either way.
    """
    x = inputs[0]
    assert x is not None
    hi = np.float32(max(0.0, float(x.max(initial=0))))
    lo = np.float32(min(0.0, float(x.min(initial=0))))
    scale = (hi - lo) / np.float32(255)
    if scale == 0:
        return [np.zeros(x.shape, np.uint8), np.array(1, np.float32), np.array(0, np.uint8)]
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(x.astype(np.float32) / scale) + zp, 0, 255)
    return [y.astype(np.uint8), np.array(scale, np.float32), np.array(zp, np.uint8)]


def _dyn_q_infer(ctx: InferCtx) -> list[TensorType]:
    x = required(ctx)
    _check(x, ("f32",), "DynamicQuantizeLinear x")
    return [TensorType("u8", x.shape), TensorType("f32", ()), TensorType("u8", ())]


# --- integer matmul / conv ----------------------------------------------------------------------
def _zp_check(ctx: InferCtx, zp_index: int, of: int, name: str) -> None:
    zp = _opt_t(ctx, zp_index)
    if zp is not None and zp.dtype != required(ctx, of).dtype:
        raise ValueError(f"{name} must have the dtype of input {of} ({required(ctx, of).dtype}), got {zp.dtype}")


def _mmi_infer(ctx: InferCtx) -> list[TensorType]:
    a, b = required(ctx), required(ctx, 1)
    _check(a, INT8, "A")
    _check(b, INT8, "B")
    _zp_check(ctx, 2, 0, "a_zero_point")
    _zp_check(ctx, 3, 1, "b_zero_point")
    return [TensorType("i32", matmul_shape(a.shape, b.shape))]


def _row_param(p: np.ndarray, rank: int) -> np.ndarray:
    """A per-tensor or per-row (1-D, length M) parameter of A, broadcastable against [..., M, K]."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    return p.reshape(-1, 1) if p.ndim == 1 and rank >= 2 else p


def _col_param(p: np.ndarray) -> np.ndarray:
    """A per-tensor or per-column (length N) parameter of B, broadcastable against [..., K, N]."""
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else p


def _mmi_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    a_i = a.astype(np.int64) - (_row_param(a_zp, a.ndim).astype(np.int64) if a_zp is not None else 0)
    b_i = b.astype(np.int64) - (_col_param(b_zp).astype(np.int64) if b_zp is not None else 0)
    return [np.matmul(a_i, b_i).astype(np.int32)]


def _multiplier(x_scale: np.ndarray, w_scale: np.ndarray, y_scale: np.ndarray) -> np.ndarray:
    """The requantization multiplier x_scale * w_scale / y_scale, in f32."""
    return x_scale.astype(np.float32) * w_scale.astype(np.float32) / y_scale.astype(np.float32)


def _requant(acc: np.ndarray, multiplier: np.ndarray, y_zp: np.ndarray, out: np.dtype) -> np.ndarray:
    """round_half_even(acc * multiplier) + y_zero_point, saturated to the output type.

    The product is taken in f32 like onnxruntime's requantization (MLAS), so results agree
    with it exactly, ties included.
    """
    y = np.rint(acc.astype(np.float32) * multiplier).astype(np.float64) + y_zp.astype(np.float64).reshape(())
    info = np.iinfo(out)
    return np.clip(y, info.min, info.max).astype(out)


def _qlinear_checks(ctx: InferCtx, x: int, w: int) -> None:
    """QLinear operands: int8/uint8 data, float scales, zero points of their data's dtype."""
    _check(required(ctx, x), INT8, "a/x")
    _check(required(ctx, w), INT8, "b/w")
    for i in (x + 1, w + 1, 6):
        _check(required(ctx, i), SCALES, f"input {i} (a scale)")
    _zp_check(ctx, x + 2, x, f"input {x + 2} (zero point)")
    _zp_check(ctx, w + 2, w, f"input {w + 2} (zero point)")
    _check(required(ctx, 7), INT8, "y_zero_point")
    if required(ctx, 7).rank > 1 or required(ctx, 6).rank > 1:
        raise ValueError("y_scale and y_zero_point must be scalars (per tensor)")


def _qlmm_infer(ctx: InferCtx) -> list[TensorType]:
    _qlinear_checks(ctx, 0, 3)
    return [TensorType(required(ctx, 7).dtype, matmul_shape(required(ctx).shape, required(ctx, 3).shape))]


def _qlmm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (np.asarray(v) for v in inputs[:8])
    a_i = a.astype(np.int64) - _row_param(a_zp, a.ndim).astype(np.int64)
    b_i = b.astype(np.int64) - _col_param(b_zp).astype(np.int64)
    acc = np.matmul(a_i, b_i).astype(np.float64)  # exact: |acc| < 2^53
    mult = _multiplier(_row_param(a_s, a.ndim), _col_param(b_s), y_s.reshape(()))
    return [_requant(acc, mult, y_zp, ctx.out_types[0].np_dtype)]


def _channel_param(p: np.ndarray, rank: int) -> np.ndarray:
    """A per-tensor or per-output-channel parameter of W [M, C/g, *k] shaped for W."""
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else p.reshape((-1,) + (1,) * (rank - 1))


def _convint_infer(ctx: InferCtx) -> list[TensorType]:
    _check(required(ctx), INT8, "x")
    _check(required(ctx, 1), INT8, "w")
    _zp_check(ctx, 2, 0, "x_zero_point")
    _zp_check(ctx, 3, 1, "w_zero_point")
    return [TensorType("i32", _conv_infer(ctx)[0].shape)]


def _convint_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    xs = x.astype(np.float64) - (np.asarray(x_zp).astype(np.float64).reshape(()) if x_zp is not None else 0)
    ws = w.astype(np.float64) - (_channel_param(w_zp, w.ndim).astype(np.float64) if w_zp is not None else 0)
    # f64 sums of integer products are exact below 2^53; padding contributes 0 = x_zp - x_zp.
    return [np.rint(conv_nd(xs, ws, None, attrs)).astype(np.int64).astype(np.int32)]


def _qlconv_infer(ctx: InferCtx) -> list[TensorType]:
    _qlinear_checks(ctx, 0, 3)
    bias = _opt_t(ctx, 8)
    if bias is not None and (bias.dtype != "i32" or bias.rank != 1):
        raise ValueError(f"B must be a 1-D i32 tensor, got {bias}")
    conv = InferCtx(op="Conv", types=[ctx.types[0], ctx.types[3]], attrs=ctx.attrs, consts=[None, None],
                    values=[None, None], out_names=ctx.out_names)
    return [TensorType(required(ctx, 7).dtype, _conv_infer(conv)[0].shape)]


def _qlconv_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (np.asarray(v) for v in inputs[:8])
    bias = inputs[8] if len(inputs) > 8 else None
    xs = x.astype(np.float64) - x_zp.astype(np.float64).reshape(())
    ws = w.astype(np.float64) - _channel_param(w_zp, w.ndim).astype(np.float64)
    acc = conv_nd(xs, ws, None, attrs)
    spatial = (1,) * (x.ndim - 2)
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape((1, -1) + spatial)
    w_scale = w_s.reshape(()) if w_s.size == 1 else w_s.reshape((1, -1) + spatial)
    return [_requant(acc, _multiplier(x_s.reshape(()), w_scale, y_s.reshape(())), y_zp, ctx.out_types[0].np_dtype)]


Q_ATTRS = {
    "axis": AttrSpec("int", 1),
    "block_size": AttrSpec("int", 0),
    "output_dtype": AttrSpec("str", None),
}

OPS: list[OpDef] = [
    OpDef(name="QuantizeLinear", infer=_q_infer, ref=_q_ref, inputs=(2, 3), upgrade=_dtype_upgrade,
          attrs={**Q_ATTRS, "saturate": AttrSpec("int", 1), "precision": AttrSpec("str", None)}),
    OpDef(name="DequantizeLinear", infer=_dq_infer, ref=_dq_ref, inputs=(2, 3), upgrade=_dtype_upgrade, attrs=Q_ATTRS),
    OpDef(name="DynamicQuantizeLinear", infer=_dyn_q_infer, ref=_dyn_q_ref, outputs=(3, 3)),
    OpDef(name="MatMulInteger", infer=_mmi_infer, ref=_mmi_ref, inputs=(2, 4)),
    OpDef(name="QLinearMatMul", infer=_qlmm_infer, ref=_qlmm_ref, inputs=(8, 8)),
    OpDef(name="ConvInteger", infer=_convint_infer, ref=_convint_ref, inputs=(2, 4), attrs=CONV_ATTRS,
          upgrade=_resolve_auto_pad),
    OpDef(name="QLinearConv", infer=_qlconv_infer, ref=_qlconv_ref, inputs=(8, 9), attrs={
        **CONV_ATTRS, "kernel_shape": AttrSpec("ints", lambda types: tuple(int(d) for d in types[3].shape[2:]))}),
]
