"""Operators: affine quantization (QuantizeLinear/DequantizeLinear, per tensor, per axis,
blocked), dynamic quantization, and the integer / QLinear matrix and convolution ops.

real = scale * (q - zero_point); quantization rounds half to even and saturates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import norm_axis
from ember.compiler.ops.nn import CONV_ATTRS, _conv_infer, _resolve_auto_pad, conv_nd, matmul_shape
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]


def _t(ctx: InferCtx, i: int = 0) -> TensorType:
    t = ctx.types[i]
    if t is None:
        raise ValueError(f"input {i} is required")
    return t


def _dtype_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ONNX stores output_dtype as a TensorProto code (0 = unset); ember keeps dtype names.
    code = attrs.get("output_dtype")
    if isinstance(code, int):
        if code == 0:
            attrs.pop("output_dtype")
        else:
            attrs["output_dtype"] = dtypes.from_onnx(code, "output_dtype")
    code = attrs.get("precision")
    if isinstance(code, int):
        if code == 0:
            attrs.pop("precision")
        else:
            attrs["precision"] = dtypes.from_onnx(code, "precision")
    return inputs, attrs


def _broadcast_param(p: np.ndarray, x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """A scale/zero point shaped to broadcast against x (per tensor, per axis or blocked)."""
    if p.ndim == 0 or (p.size == 1 and block == 0):
        return p.reshape(())
    if block:
        return np.repeat(p, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def _q_infer(ctx: InferCtx) -> list[TensorType]:
    x = _t(ctx)
    if len(ctx.types) > 2 and ctx.types[2] is not None:
        dtype = ctx.types[2].dtype
    else:
        dtype = ctx.attrs.get("output_dtype") or "u8"
    return [TensorType(dtype, x.shape)]


def _q_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    zp = inputs[2] if len(inputs) > 2 else None
    out_dtype = ctx.out_types[0].np_dtype
    per_tensor = scale.size == 1 and not attrs["block_size"]
    axis = 0 if per_tensor else norm_axis(attrs["axis"], x.ndim)  # axis only means something per axis
    s = _broadcast_param(scale.astype(np.float32), x, axis, attrs["block_size"])
    z = _broadcast_param(zp.astype(np.int64), x, axis, attrs["block_size"]) if zp is not None else 0
    q = np.rint(x.astype(np.float32) / s) + z
    info = np.iinfo(out_dtype)
    return [np.clip(q, info.min, info.max).astype(out_dtype)]


def _dq_infer(ctx: InferCtx) -> list[TensorType]:
    x, scale = _t(ctx), _t(ctx, 1)
    return [TensorType(ctx.attrs.get("output_dtype") or scale.dtype, x.shape)]


def _dq_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    zp = inputs[2] if len(inputs) > 2 else None
    per_tensor = scale.size == 1 and not attrs["block_size"]
    axis = 0 if per_tensor else norm_axis(attrs["axis"], x.ndim)  # axis only means something per axis
    s = _broadcast_param(scale.astype(np.float32), x, axis, attrs["block_size"])
    z = _broadcast_param(zp.astype(np.int64), x, axis, attrs["block_size"]) if zp is not None else 0
    return [((x.astype(np.int64) - z) * s).astype(ctx.out_types[0].np_dtype)]


def _dyn_q_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    lo, hi = min(float(x.min(initial=0)), 0.0), max(float(x.max(initial=0)), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi != lo else np.float32(1.0)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return [y, np.array(scale, dtype=np.float32), np.array(zp, dtype=np.uint8)]


def _mmi_infer(ctx: InferCtx) -> list[TensorType]:
    return [TensorType("i32", matmul_shape(_t(ctx).shape, _t(ctx, 1).shape))]


def _zp_shift(x: np.ndarray, zp: np.ndarray | None, axis: int | None = None) -> np.ndarray:
    x = x.astype(np.int64)
    if zp is None:
        return x
    if zp.size > 1 and axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        return x - zp.astype(np.int64).reshape(shape)
    return x - zp.astype(np.int64).reshape(-1)[0] if zp.ndim <= 1 and zp.size == 1 else x - zp.astype(np.int64)


def _mmi_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    a_s = _zp_shift(a, a_zp, a.ndim - 2 if a_zp is not None and a_zp.size > 1 else None)
    if a_zp is not None and a_zp.size > 1:  # per-row zero point of A: shape [M] or [M, 1]
        a_s = a.astype(np.int64) - a_zp.astype(np.int64).reshape(-1, 1)
    b_s = _zp_shift(b, b_zp, b.ndim - 1 if b_zp is not None and b_zp.size > 1 else None)
    return [np.matmul(a_s, b_s).astype(np.int32)]


def _requant(acc: np.ndarray, scale: np.ndarray, y_scale: np.ndarray, y_zp: np.ndarray, out: np.dtype) -> np.ndarray:
    y = np.rint(acc * scale / y_scale.astype(np.float64)) + y_zp.astype(np.int64)
    info = np.iinfo(out)
    return np.clip(y, info.min, info.max).astype(out)


def _qlmm_infer(ctx: InferCtx) -> list[TensorType]:
    return [TensorType(_t(ctx, 7).dtype, matmul_shape(_t(ctx).shape, _t(ctx, 3).shape))]


def _qlmm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (np.asarray(v) for v in inputs[:8])
    a_i = a.astype(np.int64) - (a_zp.astype(np.int64).reshape(-1, 1) if a_zp.size > 1 else a_zp.astype(np.int64))
    b_i = b.astype(np.int64) - b_zp.astype(np.int64)
    acc = np.matmul(a_i, b_i).astype(np.float64)
    scale = (a_s.astype(np.float64).reshape(-1, 1) if a_s.size > 1 else a_s.astype(np.float64)) * b_s.astype(np.float64)
    return [_requant(acc, scale, y_s, y_zp, ctx.out_types[0].np_dtype)]


def _convint_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    xs = x.astype(np.int64) - (x_zp.astype(np.int64).reshape(-1)[0] if x_zp is not None else 0)
    ws = w.astype(np.int64) - (w_zp.astype(np.int64).reshape((-1,) + (1,) * (w.ndim - 1)) if w_zp is not None else 0)
    return [np.rint(conv_nd(xs.astype(np.float64), ws.astype(np.float64), None, attrs)).astype(np.int32)]


def _qlconv_infer(ctx: InferCtx) -> list[TensorType]:
    from ember.compiler.ops.registry import InferCtx as Ctx

    sub = Ctx(op="Conv", types=[ctx.types[0], ctx.types[3]], attrs=ctx.attrs, consts=[None, None], values=[None, None],
              out_names=ctx.out_names)
    shape = _conv_infer(sub)[0].shape
    return [TensorType(_t(ctx, 7).dtype, shape)]


def _qlconv_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (np.asarray(v) for v in inputs[:8])
    bias = inputs[8] if len(inputs) > 8 else None
    xs = x.astype(np.float64) - x_zp.astype(np.float64).reshape(-1)[0]
    ws = w.astype(np.float64) - w_zp.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    acc = conv_nd(xs, ws, None, attrs)
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    scale = x_s.astype(np.float64).reshape(-1)[0] * w_s.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    return [_requant(acc, scale, y_s, y_zp, ctx.out_types[0].np_dtype)]


Q_ATTRS = {
    "axis": AttrSpec("int", 1),
    "block_size": AttrSpec("int", 0),
    "output_dtype": AttrSpec("str", None),
}

OPS: list[OpDef] = [
    OpDef(name="QuantizeLinear", infer=_q_infer, ref=_q_ref, inputs=(2, 3), upgrade=_dtype_upgrade,
          attrs={**Q_ATTRS, "saturate": AttrSpec("int", 1), "precision": AttrSpec("str", None)}),
    OpDef(name="DequantizeLinear", infer=_dq_infer, ref=_dq_ref, inputs=(2, 3), upgrade=_dtype_upgrade, attrs=Q_ATTRS),
    OpDef(name="DynamicQuantizeLinear", infer=lambda ctx: [TensorType("u8", _t(ctx).shape), TensorType("f32", ()),
                                                              TensorType("u8", ())],
          ref=_dyn_q_ref, outputs=(3, 3)),
    OpDef(name="MatMulInteger", infer=_mmi_infer, ref=_mmi_ref, inputs=(2, 4)),
    OpDef(name="QLinearMatMul", infer=_qlmm_infer, ref=_qlmm_ref, inputs=(8, 8)),
    OpDef(name="ConvInteger", infer=lambda ctx: [TensorType("i32", _conv_infer(ctx)[0].shape)], ref=_convint_ref,
          inputs=(2, 4), attrs=CONV_ATTRS, upgrade=_resolve_auto_pad),
    OpDef(name="QLinearConv", infer=_qlconv_infer, ref=_qlconv_ref, inputs=(8, 9), attrs={
        **CONV_ATTRS, "kernel_shape": AttrSpec("ints", lambda types: tuple(int(d) for d in types[3].shape[2:]))}),
]
