"""Emitters for quantization: QuantizeLinear/DequantizeLinear, DynamicQuantizeLinear and the
integer convolution and matrix products (ConvInteger, MatMulInteger, QLinearConv,
QLinearMatMul).

Integer products accumulate exactly in int32; requantization computes
rint(acc * (scale_a * scale_b) / scale_y) + zero_y in float64, the order ember's reference
uses, then saturates to the output type.
"""

from __future__ import annotations

from typing import Any

from tvm import relax

from ember.compiler.ir import Node, TensorType
from ember.targets.emit_common import TVM_DTYPE, Emitter, Lowering, R, has_input, in_type, out_type, refuse
from ember.targets.emit_nn import conv_pads


def _per_axis(lw: Lowering, node: Node, i: int, x: TensorType) -> relax.Expr:
    """Quantization parameter i broadcast against x (per-tensor scalar or per-axis vector)."""
    p = lw.arg(node.inputs[i])
    if in_type(lw, node, i).rank == 0 or x.rank == 0:
        return p
    axis = node.attrs["axis"] % x.rank
    return R.reshape(p, [-1 if d == axis else 1 for d in range(x.rank)])


def _dequantize(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    x, t = in_type(lw, node, 0), out_type(node)
    if node.attrs["block_size"]:
        raise refuse(node, "blocked quantization")
    v = R.astype(a[0], "int32" if x.dtype != "i64" else "int64")
    if has_input(node, 2):
        v = R.subtract(v, R.astype(_per_axis(lw, node, 2, x), "int32" if x.dtype != "i64" else "int64"))
    scale = _per_axis(lw, node, 1, x)
    return [R.astype(R.multiply(R.astype(v, "float32"), R.astype(scale, "float32")), TVM_DTYPE[t.dtype])]


_RANGES = {"u8": (0, 255), "i8": (-128, 127), "u16": (0, 65535), "i16": (-32768, 32767), "i32": (-(2**31), 2**31 - 1)}


def _quantize(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    x, t = in_type(lw, node, 0), out_type(node)
    if node.attrs["block_size"] or t.dtype not in _RANGES:
        raise refuse(node, f"blocked quantization or output type {t.dtype}")
    v = R.round(R.divide(R.astype(a[0], "float32"), R.astype(_per_axis(lw, node, 1, x), "float32")))  # half to even
    if has_input(node, 2):
        v = R.add(v, R.astype(_per_axis(lw, node, 2, x), "float32"))
    lo, hi = _RANGES[t.dtype]
    return [R.astype(R.clip(v, lo, hi), TVM_DTYPE[t.dtype])]


def _matmul_integer(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """int32 accumulation of (A - a_zero) @ (B - b_zero); a per-row a_zero is a column vector."""
    lhs, rhs = R.astype(a[0], "int32"), R.astype(a[1], "int32")
    if has_input(node, 2):
        zero = R.astype(a[2], "int32")
        lhs = R.subtract(lhs, R.reshape(zero, [-1, 1]) if in_type(lw, node, 2).rank == 1 else zero)
    if has_input(node, 3):
        rhs = R.subtract(rhs, R.astype(a[3], "int32"))
    return [R.matmul(lhs, rhs, out_dtype="int32")]


def _centered(lw: Lowering, node: Node, x: int, zero: int, axis_shape: list[int] | None = None) -> relax.Expr:
    """Input x minus its zero point, as int32 (a per-channel zero point reshaped to axis_shape)."""
    v = R.astype(lw.arg(node.inputs[x]), "int32")
    if not has_input(node, zero):
        return v
    z = lw.emit(R.astype(lw.arg(node.inputs[zero]), "int32"))  # (a reshape by -1 needs a typed operand)
    if axis_shape is not None and in_type(lw, node, zero).rank == 1:
        z = R.reshape(z, axis_shape)
    return R.subtract(v, z)


def _int_conv(lw: Lowering, node: Node, x: relax.Expr, w: relax.Expr) -> relax.Expr:
    at = node.attrs
    n = len(at["kernel_shape"])
    fn = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}.get(n)
    if fn is None:
        raise refuse(node, f"{n}-d convolution")
    layouts = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[n]
    return fn(x, w, strides=list(at["strides"]), padding=conv_pads(node, in_type(lw, node, 0), out_type(node)),
              dilation=list(at["dilations"]), groups=at["group"], data_layout=layouts[0], kernel_layout=layouts[1],
              out_dtype="int32")


def _requantize(lw: Lowering, node: Node, acc: relax.Expr, scale: relax.Expr, ys: int, yz: int) -> relax.Expr:
    t = out_type(node)
    lo, hi = _RANGES[t.dtype]
    y = R.divide(R.multiply(R.astype(acc, "float64"), scale), R.astype(lw.arg(node.inputs[ys]), "float64"))
    y = R.add(R.round(y), R.astype(lw.arg(node.inputs[yz]), "float64"))
    return R.astype(R.clip(y, lo, hi), TVM_DTYPE[t.dtype])


def _conv_integer(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    rank = in_type(lw, node, 1).rank
    return [_int_conv(lw, node, _centered(lw, node, 0, 2), _centered(lw, node, 1, 3, [-1] + [1] * (rank - 1)))]


def _qlinear_conv(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    rank = in_type(lw, node, 3).rank
    acc = _int_conv(lw, node, _centered(lw, node, 0, 2), _centered(lw, node, 3, 5, [-1] + [1] * (rank - 1)))
    if has_input(node, 8):
        acc = R.add(acc, R.reshape(lw.emit(R.astype(a[8], "int32")), [1, -1] + [1] * (rank - 2)))
    w_scale = lw.emit(R.astype(a[4], "float64"))
    if in_type(lw, node, 4).rank == 1:
        w_scale = R.reshape(w_scale, [1, -1] + [1] * (rank - 2))
    return [_requantize(lw, node, acc, R.multiply(R.astype(a[1], "float64"), w_scale), 6, 7)]


def _qlinear_matmul(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    acc = R.matmul(_centered(lw, node, 0, 2, [-1, 1]), _centered(lw, node, 3, 5), out_dtype="int32")
    a_scale = lw.emit(R.astype(a[1], "float64"))
    if in_type(lw, node, 1).rank == 1 and in_type(lw, node, 1).shape != (1,):
        a_scale = R.reshape(a_scale, [-1, 1])
    return [_requantize(lw, node, acc, R.multiply(a_scale, R.astype(a[4], "float64")), 6, 7)]


def _dynamic_quantize(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """uint8 asymmetric quantization over x's range extended to include 0 (the interpreter's
    formula, f32 arithmetic, round half to even). An all-zero x gets scale 1 and zero point 0,
    as in onnxruntime: dividing by that scale gives y = 0 and zero point 0 with no special case."""
    x = R.astype(a[0], "float32")
    zero = relax.const(0.0, "float32")
    hi, lo = R.maximum(R.max(x), zero), R.minimum(R.min(x), zero)
    scale = R.divide(R.subtract(hi, lo), relax.const(255.0, "float32"))
    scale = lw.emit(R.where(R.equal(scale, zero), relax.const(1.0, "float32"), scale))
    zp = lw.emit(R.round(R.clip(R.subtract(zero, R.divide(lo, scale)), 0, 255)))
    y = R.clip(R.add(R.round(R.divide(x, scale)), zp), 0, 255)
    return [R.astype(y, "uint8"), scale, R.astype(zp, "uint8")]


EMITTERS: dict[str, Emitter] = {
    "DynamicQuantizeLinear": _dynamic_quantize, "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer, "QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul,
}
