"""Operators: elementwise arithmetic, comparisons, logic, activations, Cast, Where.

Each op maps inputs to an output of the broadcast shape; the reference computes in the
input dtype (numpy promotion is undone by `as_dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, binary, broadcast_types, check_same_dtype, unary
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def act(
    name: str, fn: Callable[[np.ndarray, Attrs], Any], attrs: Mapping[str, AttrSpec] | None = None, result: str | None = None
) -> OpDef:
    """A float activation with attributes (alpha, beta...); `result` overrides the dtype."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        return [TensorType(result, t.shape) if result else t]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        with np.errstate(all="ignore"):
            return [as_dtype(fn(x, attrs), ctx)]

    return OpDef(name=name, infer=infer, ref=ref, attrs=attrs or {})


def _f(value: float) -> AttrSpec:
    return AttrSpec("float", value)


def _logic(name: str, fn: Callable[..., Any]) -> OpDef:
    return binary(name, fn, result="bool")


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # ONNX integer Div truncates toward zero (C semantics), numpy floors.
        q = np.trunc(a.astype(np.float64) / b.astype(np.float64))
        return q.astype(a.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _mod(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)
    return [as_dtype(out, ctx)]


def _pow_infer(ctx: InferCtx) -> list[TensorType]:
    # Pow allows an exponent of another dtype; the result has the base's dtype.
    return [broadcast_types(ctx, ctx.types[0].dtype if ctx.types[0] else None)]


def _pow_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    if a.dtype.kind in "iu":
        return [as_dtype(np.power(a.astype(np.int64), b.astype(np.int64)), ctx)]
    with np.errstate(all="ignore"):
        return [as_dtype(np.power(a, b.astype(a.dtype)), ctx)]


def _bitshift(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    out = np.left_shift(a, b) if attrs["direction"] == "LEFT" else np.right_shift(a, b)
    return [as_dtype(out, ctx)]


def _variadic(name: str, fn: Callable[[list[np.ndarray]], np.ndarray]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        check_same_dtype(ctx)
        return [broadcast_types(ctx)]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        arrays = [a for a in inputs if a is not None]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        return [as_dtype(fn([np.broadcast_to(a, shape) for a in arrays]), ctx)]

    def value(ctx: InferCtx) -> tuple[Any, ...] | None:
        known = [ctx.const_or_value(i) for i in range(len(ctx.types))]
        if name not in ("Max", "Min") or any(k is None for k in known):
            return None
        if not all(isinstance(x, int) for k in known for x in k):  # type: ignore[union-attr]
            return None
        arrays = [np.array(k, dtype=np.int64) for k in known]  # type: ignore[arg-type]
        return tuple(int(x) for x in np.atleast_1d(fn(list(np.broadcast_arrays(*arrays)))))

    return OpDef(name=name, infer=infer, ref=ref, inputs=(1, -1), value=value if name in ("Max", "Min") else None)


def _where_infer(ctx: InferCtx) -> list[TensorType]:
    check_same_dtype(ctx, [1, 2])
    return [broadcast_types(ctx, ctx.types[1].dtype if ctx.types[1] else None)]


def _where_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    return [as_dtype(np.where(inputs[0], inputs[1], inputs[2]), ctx)]


def _cast_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    return [TensorType(ctx.attrs["to"], t.shape)]


def _cast_array(x: np.ndarray, to: str) -> np.ndarray:
    target = dtypes.to_numpy(to)
    if x.dtype.kind == "f" and target.kind in "iu":
        # Float -> int truncates toward zero; NaN/inf are undefined in ONNX (use 0 not garbage).
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.trunc(x), nan=0).astype(target)
    if to == "bf16" and x.dtype != target:
        # Round to nearest even, as onnx's reference does (ml_dtypes also rounds).
        return x.astype(np.float32).astype(target)
    return x.astype(target)


def _cast_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [_cast_array(x, attrs["to"])]


def _cast_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ONNX stores `to` as a TensorProto code; ember keeps its dtype name so dumps read `to="f16"`.
    if isinstance(attrs.get("to"), int):
        attrs["to"] = dtypes.from_onnx(attrs["to"], "Cast.to")
    return inputs, attrs


def _cast_value(ctx: InferCtx) -> Any:
    # Shape arithmetic often casts i64 <-> i32; contents survive for integer targets.
    if ctx.attrs["to"] in dtypes.INTS:
        return ctx.const_or_value(0)
    return None


def _castlike_infer(ctx: InferCtx) -> list[TensorType]:
    t, like = ctx.types[0], ctx.types[1]
    assert t is not None and like is not None
    return [TensorType(like.dtype, t.shape)]


def _castlike_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    return [_cast_array(x, ctx.out_types[0].dtype)]


def _clip_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # Clip-6 had min/max attributes; since 11 they are optional inputs.
    if "min" in attrs or "max" in attrs:
        lo, hi = attrs.pop("min", None), attrs.pop("max", None)
        dtype = types[0].np_dtype if types and types[0] is not None else np.float32
        inputs = [inputs[0], np.array(lo, dtype) if lo is not None else "", np.array(hi, dtype) if hi is not None else ""]
    return inputs, attrs


def _clip_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    out = x
    if lo is not None:
        out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return [as_dtype(out, ctx)]


def _dropout_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    return [t, TensorType("bool", t.shape)]


def _dropout_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # Inference: identity (training_mode inputs that are true would need randomness; the
    # reference follows ONNX's test for ratio 0 / training false).
    x = inputs[0]
    assert x is not None
    training = len(inputs) > 2 and inputs[2] is not None and bool(inputs[2])
    ratio = float(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else 0.5
    if training and ratio > 0:
        rng = np.random.default_rng(attrs.get("seed"))
        mask = rng.random(x.shape) >= ratio
        return [as_dtype(x * mask / (1 - ratio), ctx), mask]
    return [x.copy(), np.ones(x.shape, dtype=bool)]


def _binary_value(fn: Callable[[Any, Any], Any]) -> Callable[[InferCtx], Any]:
    """Contents of Add/Sub/Mul/Div on small int tensors, symbolic dims included."""

    def value(ctx: InferCtx) -> tuple[Any, ...] | None:
        a, b = ctx.const_or_value(0), ctx.const_or_value(1)
        if a is None or b is None:
            return None
        n = max(len(a), len(b))
        if len(a) not in (1, n) or len(b) not in (1, n):
            return None
        a = a * n if len(a) == 1 else a
        b = b * n if len(b) == 1 else b
        out = tuple(fn(x, y) for x, y in zip(a, b))
        t = ctx.types[0]
        if t is not None and t.rank == 0 and ctx.types[1] is not None and ctx.types[1].rank == 0:
            return out[:1]
        return out

    return value


def _div_dim(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return int(a / b) if b else 0
    return dims.floordiv(a, b)


def _with_value(op: OpDef, value: Callable[[InferCtx], Any]) -> OpDef:
    from dataclasses import replace

    return replace(op, value=value)


def _unary_value(fn: Callable[[Any], Any]) -> Callable[[InferCtx], Any]:
    def value(ctx: InferCtx) -> tuple[Any, ...] | None:
        a = ctx.const_or_value(0)
        if a is None or not all(isinstance(x, int) for x in a):
            return None if a is None or fn is not _identity else a
        return tuple(fn(x) for x in a)

    return value


def _identity(x: Any) -> Any:
    return x


def _compare_value(fn: Callable[[int, int], bool]) -> Callable[[InferCtx], Any]:
    def value(ctx: InferCtx) -> tuple[Any, ...] | None:
        a, b = ctx.const_or_value(0), ctx.const_or_value(1)
        if a is None or b is None or not all(isinstance(x, int) for x in a + b):
            return None
        return None  # booleans are not int tensors; kept for symmetry (Where reads consts)

    return value


def _where_value(ctx: InferCtx) -> tuple[Any, ...] | None:
    cond = ctx.consts[0]
    x, y = ctx.const_or_value(1), ctx.const_or_value(2)
    if cond is None or x is None or y is None:
        return None
    c = np.asarray(cond).reshape(-1)
    n = max(len(c), len(x), len(y))
    if any(len(v) not in (1, n) for v in (c, x, y)):
        return None
    pick = [bool(c[i if len(c) > 1 else 0]) for i in range(n)]
    return tuple(x[i if len(x) > 1 else 0] if p else y[i if len(y) > 1 else 0] for i, p in enumerate(pick))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


def _round_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)


def _dropout_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # Dropout < 12 had `ratio` as an attribute (and is_test before 7); at inference it is identity.
    attrs.pop("ratio", None)
    attrs.pop("is_test", None)
    return inputs, attrs


OPS: list[OpDef] = [
    # unary math: y = f(x)
    unary("Abs", np.abs),
    _with_value(unary("Neg", np.negative), _unary_value(lambda v: dims.mul(v, -1) if not isinstance(v, int) else -v)),
    unary("Sqrt", lambda x: np.sqrt(x) if x.dtype.kind == "f" else np.sqrt(x), floats_only=True),
    unary("Exp", np.exp, floats_only=True),
    unary("Log", np.log, floats_only=True),
    unary("Reciprocal", lambda x: np.reciprocal(x), floats_only=True),
    unary("Floor", np.floor, floats_only=True),
    unary("Ceil", np.ceil, floats_only=True),
    unary("Round", _round_even, floats_only=True),
    unary("Sign", np.sign),
    unary("Erf", _erf, floats_only=True),
    unary("Sin", np.sin, floats_only=True),
    unary("Cos", np.cos, floats_only=True),
    unary("Tan", np.tan, floats_only=True),
    unary("Asin", np.arcsin, floats_only=True),
    unary("Acos", np.arccos, floats_only=True),
    unary("Atan", np.arctan, floats_only=True),
    unary("Sinh", np.sinh, floats_only=True),
    unary("Cosh", np.cosh, floats_only=True),
    unary("Asinh", np.arcsinh, floats_only=True),
    unary("Acosh", np.arccosh, floats_only=True),
    unary("Atanh", np.arctanh, floats_only=True),
    unary("Not", np.logical_not),
    unary("BitwiseNot", np.invert),
    act("IsNaN", lambda x, a: np.isnan(x), result="bool"),
    act(
        "IsInf",
        lambda x, a: (np.isposinf(x) & bool(a["detect_positive"])) | (np.isneginf(x) & bool(a["detect_negative"])),
        {"detect_negative": AttrSpec("int", 1), "detect_positive": AttrSpec("int", 1)},
        result="bool",
    ),
    # activations
    unary("Relu", lambda x: np.maximum(x, 0)),
    unary("Sigmoid", _sigmoid, floats_only=True),
    unary("Tanh", np.tanh, floats_only=True),
    unary("Softsign", lambda x: x / (1 + np.abs(x)), floats_only=True),
    unary("Softplus", _softplus, floats_only=True),
    unary("Mish", lambda x: x * np.tanh(_softplus(x)), floats_only=True),
    act("LeakyRelu", lambda x, a: np.where(x >= 0, x, x * a["alpha"]), {"alpha": _f(0.01)}),
    act("Elu", lambda x, a: np.where(x >= 0, x, a["alpha"] * (np.exp(x) - 1)), {"alpha": _f(1.0)}),
    act(
        "Selu",
        lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * (np.exp(x) - 1)),
        {"alpha": _f(1.67326319217681884765625), "gamma": _f(1.05070102214813232421875)},
    ),
    act("Celu", lambda x, a: np.maximum(0, x) + np.minimum(0, a["alpha"] * (np.exp(x / a["alpha"]) - 1)), {"alpha": _f(1.0)}),
    act("HardSigmoid", lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0, 1), {"alpha": _f(0.2), "beta": _f(0.5)}),
    act("HardSwish", lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1)),
    act("ThresholdedRelu", lambda x, a: np.where(x > a["alpha"], x, 0), {"alpha": _f(1.0)}),
    act("Swish", lambda x, a: x * _sigmoid(a["alpha"] * x), {"alpha": _f(1.0)}),
    act(
        "Shrink",
        lambda x, a: np.where(x < -a["lambd"], x + a["bias"], np.where(x > a["lambd"], x - a["bias"], 0)),
        {"bias": _f(0.0), "lambd": _f(0.5)},
    ),
    act("Gelu", _gelu, {"approximate": AttrSpec("str", "none")}),
    OpDef(
        name="PRelu",
        infer=lambda ctx: [broadcast_types(ctx)],
        ref=lambda i, a, c: [as_dtype(np.where(i[0] >= 0, i[0], i[0] * i[1]), c)],
        inputs=(2, 2),
    ),
    OpDef(name="Clip", infer=lambda ctx: [ctx.types[0]], ref=_clip_ref, inputs=(1, 3), upgrade=_clip_upgrade,
          attrs={"min": AttrSpec("float", None), "max": AttrSpec("float", None)}),
    # binary arithmetic (numpy broadcasting)
    _with_value(binary("Add", np.add), _binary_value(dims.add)),
    _with_value(binary("Sub", np.subtract), _binary_value(dims.sub)),
    _with_value(binary("Mul", np.multiply), _binary_value(dims.mul)),
    _with_value(binary("Div", _int_div), _binary_value(_div_dim)),
    OpDef(name="Pow", infer=_pow_infer, ref=_pow_ref, inputs=(2, 2)),
    OpDef(name="Mod", infer=lambda ctx: [broadcast_types(ctx)], ref=_mod, inputs=(2, 2), attrs={"fmod": AttrSpec("int", 0)}),
    OpDef(name="BitShift", infer=lambda ctx: [broadcast_types(ctx)], ref=_bitshift, inputs=(2, 2),
          attrs={"direction": AttrSpec("str")}),
    binary("BitwiseAnd", np.bitwise_and),
    binary("BitwiseOr", np.bitwise_or),
    binary("BitwiseXor", np.bitwise_xor),
    # logic and comparisons -> bool
    _logic("And", np.logical_and),
    _logic("Or", np.logical_or),
    _logic("Xor", np.logical_xor),
    _logic("Equal", np.equal),
    _logic("Greater", np.greater),
    _logic("GreaterOrEqual", np.greater_equal),
    _logic("Less", np.less),
    _logic("LessOrEqual", np.less_equal),
    # variadic
    _variadic("Max", lambda xs: np.maximum.reduce(xs) if len(xs) > 1 else xs[0]),
    _variadic("Min", lambda xs: np.minimum.reduce(xs) if len(xs) > 1 else xs[0]),
    _variadic("Sum", lambda xs: np.sum(np.stack(xs), axis=0)),
    _variadic("Mean", lambda xs: np.mean(np.stack(xs), axis=0)),
    OpDef(name="Where", infer=_where_infer, ref=_where_ref, inputs=(3, 3), value=_where_value),
    OpDef(name="Identity", infer=lambda ctx: [ctx.types[0]], ref=lambda i, a, c: [i[0]], value=lambda ctx: ctx.const_or_value(0)),
    OpDef(name="Dropout", infer=_dropout_infer, ref=_dropout_ref, inputs=(1, 3), outputs=(1, 2),
          attrs={"seed": AttrSpec("int", None), "ratio": AttrSpec("float", None)}, upgrade=_dropout_upgrade),
    OpDef(
        name="Cast",
        infer=_cast_infer,
        ref=_cast_ref,
        attrs={"to": AttrSpec("str"), "saturate": AttrSpec("int", 1), "round_mode": AttrSpec("str", "up")},
        upgrade=_cast_upgrade,
        value=_cast_value,
    ),
    OpDef(name="CastLike", infer=_castlike_infer, ref=_castlike_ref, inputs=(2, 2),
          attrs={"saturate": AttrSpec("int", 1), "round_mode": AttrSpec("str", "up")}),
]
