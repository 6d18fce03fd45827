"""Emitters for elementwise ops: arithmetic, comparisons, logic, bitwise, math, activations, casts.

Operands broadcast the ONNX (numpy) way, which Relax's binary ops share, so most ops map to
one Relax op. Activations without a Relax op are written from their ONNX definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import relax

from ember.compiler import dtypes
from ember.compiler.ir import Node
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    binary,
    in_type,
    out_type,
    scalar,
    unary,
)


def _div(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = out_type(node)
    if t.dtype in dtypes.INTS:  # ONNX integer Div truncates toward zero
        q = R.divide(R.astype(a[0], "float64"), R.astype(a[1], "float64"))
        return [R.astype(R.trunc(q), TVM_DTYPE[t.dtype])]
    return [R.divide(a[0], a[1])]


def _mod(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = out_type(node)
    if node.attrs["fmod"] or t.dtype not in dtypes.INTS:  # C fmod: the sign of the dividend
        if t.dtype in dtypes.INTS:
            return [R.mod(a[0], a[1])]
        return [R.subtract(a[0], R.multiply(R.trunc(R.divide(a[0], a[1])), a[1]))]
    return [R.floor_mod(a[0], a[1])]  # Python %: the sign of the divisor


def _pow(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = out_type(node)
    exponent = lw.const_of(node.inputs[1])
    if exponent is not None and exponent.size == 1:
        e = float(exponent.reshape(-1)[0])
        if e == 2.0:
            return [R.multiply(a[0], a[0])]
        if e == 0.5 and t.dtype in dtypes.FLOATS:
            return [R.sqrt(a[0])]
        if e == 1.0:
            return [a[0]]
    b = a[1] if in_type(lw, node, 1).dtype == t.dtype else R.astype(a[1], TVM_DTYPE[t.dtype])
    return [R.power(a[0], b)]


def _variadic(fn: Callable[[relax.Expr, relax.Expr], relax.Expr], mean: bool = False) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        acc = a[0]
        for x in a[1:]:
            acc = fn(acc, x)
        if mean:
            acc = R.divide(acc, scalar(float(len(a)), out_type(node)))
        return [acc]

    return emit


def _clip(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    x = a[0]
    if len(a) > 1 and a[1] is not None:
        x = R.maximum(x, a[1])
    if len(a) > 2 and a[2] is not None:
        x = R.minimum(x, a[2])
    return [x]


def _cast(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t, src = out_type(node), in_type(lw, node, 0)
    if t.dtype == "bool" and src.dtype != "bool":  # any non-zero is true (a plain cast truncates 0.5 to 0)
        return [R.not_equal(a[0], scalar(0, src))]
    return [R.astype(a[0], TVM_DTYPE[t.dtype])]


def _identity(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    # Dropout in inference: the data, and an all-true mask if asked for.
    return [a[0]] + [R.ones(lw.shape(v.type), "bool") for v in node.outputs[1:]]


def _isinf(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    pos, neg = node.attrs["detect_positive"], node.attrs["detect_negative"]
    t = in_type(lw, node, 0)
    if pos and neg:
        return [R.isinf(a[0])]
    if pos:
        return [R.equal(a[0], scalar(float("inf"), t))]
    if neg:
        return [R.equal(a[0], scalar(float("-inf"), t))]
    return [R.zeros(lw.shape(out_type(node)), "bool")]


def _bitshift(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.left_shift(a[0], a[1]) if node.attrs["direction"] == "LEFT" else R.right_shift(a[0], a[1])]


# --- activations (each from its ONNX definition) ---------------------------------------------------
def _act(fn: Callable[[Lowering, Node, relax.Expr], relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(lw, node, a[0])]


def _k(node: Node, value: float) -> relax.Expr:
    return scalar(value, out_type(node))


def _elu_core(node: Node, x: relax.Expr, alpha: float) -> relax.Expr:
    """x if x > 0 else alpha * (exp(x) - 1)."""
    neg = R.multiply(_k(node, alpha), R.subtract(R.exp(x), _k(node, 1.0)))
    return R.where(R.greater(x, _k(node, 0.0)), x, neg)


def _hardsigmoid(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    y = R.add(R.multiply(x, _k(node, node.attrs["alpha"])), _k(node, node.attrs["beta"]))
    return R.clip(y, 0.0, 1.0)


def _hardswish(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    gate = R.clip(R.add(R.divide(x, _k(node, 6.0)), _k(node, 0.5)), 0.0, 1.0)
    return R.multiply(x, gate)


def _gelu(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.nn.gelu_tanh(x) if node.attrs["approximate"] == "tanh" else R.nn.gelu(x)


def _celu(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    alpha = node.attrs["alpha"]
    neg = R.multiply(_k(node, alpha), R.subtract(R.exp(R.divide(x, _k(node, alpha))), _k(node, 1.0)))
    return R.add(R.maximum(x, _k(node, 0.0)), R.minimum(neg, _k(node, 0.0)))


def _selu(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.multiply(_k(node, node.attrs["gamma"]), _elu_core(node, x, node.attrs["alpha"]))


def _mish(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.multiply(x, R.tanh(R.nn.softplus(x)))


def _swish(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    alpha = node.attrs["alpha"]
    return R.multiply(x, R.sigmoid(x if alpha == 1.0 else R.multiply(x, _k(node, alpha))))


def _softsign(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.divide(x, R.add(R.abs(x), _k(node, 1.0)))


def _thresholded_relu(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.where(R.greater(x, _k(node, node.attrs["alpha"])), x, _k(node, 0.0))


def _shrink(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    lambd, bias = node.attrs["lambd"], node.attrs["bias"]
    low = R.where(R.less(x, _k(node, -lambd)), R.add(x, _k(node, bias)), _k(node, 0.0))
    return R.where(R.greater(x, _k(node, lambd)), R.subtract(x, _k(node, bias)), low)


def _prelu(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.where(R.less(a[0], _k(node, 0.0)), R.multiply(a[0], a[1]), a[0])]


EMITTERS: dict[str, Emitter] = {
    # arithmetic
    "Add": binary(R.add), "Sub": binary(R.subtract), "Mul": binary(R.multiply), "Div": _div, "Mod": _mod,
    "Pow": _pow, "Max": _variadic(R.maximum), "Min": _variadic(R.minimum), "Sum": _variadic(R.add),
    "Mean": _variadic(R.add, mean=True),
    "Reciprocal": lambda lw, node, a: [R.divide(scalar(1.0, out_type(node)), a[0])],
    # comparisons and logic
    "Equal": binary(R.equal), "Greater": binary(R.greater), "GreaterOrEqual": binary(R.greater_equal),
    "Less": binary(R.less), "LessOrEqual": binary(R.less_equal), "And": binary(R.logical_and),
    "Or": binary(R.logical_or), "Xor": binary(R.logical_xor), "Not": unary(R.logical_not),
    "IsNaN": unary(R.isnan), "IsInf": _isinf, "Where": lambda lw, node, a: [R.where(a[0], a[1], a[2])],
    # bitwise
    "BitwiseAnd": binary(R.bitwise_and), "BitwiseOr": binary(R.bitwise_or), "BitwiseXor": binary(R.bitwise_xor),
    "BitwiseNot": unary(R.bitwise_not), "BitShift": _bitshift,
    # math
    "Abs": unary(R.abs), "Neg": unary(R.negative), "Sqrt": unary(R.sqrt), "Exp": unary(R.exp),
    "Log": unary(R.log), "Floor": unary(R.floor), "Ceil": unary(R.ceil), "Round": unary(R.round),
    "Sign": unary(R.sign), "Erf": unary(R.erf), "Sin": unary(R.sin), "Cos": unary(R.cos), "Tan": unary(R.tan),
    "Asin": unary(R.asin), "Acos": unary(R.acos), "Atan": unary(R.atan), "Sinh": unary(R.sinh),
    "Cosh": unary(R.cosh), "Asinh": unary(R.asinh), "Acosh": unary(R.acosh), "Atanh": unary(R.atanh),
    "Tanh": unary(R.tanh), "Sigmoid": unary(R.sigmoid),
    # activations
    "Relu": unary(R.nn.relu), "LeakyRelu": lambda lw, node, a: [R.nn.leakyrelu(a[0], node.attrs["alpha"])],
    "HardSigmoid": _act(_hardsigmoid), "HardSwish": _act(_hardswish), "Gelu": _act(_gelu),
    "Softplus": unary(R.nn.softplus), "Softsign": _act(_softsign),
    "Elu": _act(lambda lw, node, x: _elu_core(node, x, node.attrs["alpha"])), "Celu": _act(_celu),
    "Selu": _act(_selu), "Mish": _act(_mish), "Swish": _act(_swish), "ThresholdedRelu": _act(_thresholded_relu),
    "Shrink": _act(_shrink), "PRelu": _prelu, "Clip": _clip,
    # casts and identities
    "Cast": _cast, "CastLike": _cast, "Identity": _identity, "Dropout": _identity,
}
