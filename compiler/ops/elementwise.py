"""Operators: elementwise math, arithmetic, comparisons, logic, variadic, Where, Cast, Dropout.

Every op broadcasts its inputs numpy-style. References compute f16/bf16 in f32 and round once
at the end (as runtimes do); f32/f64 and integers compute in their own dtype, and the result is
cast back to the declared output dtype (`as_dtype`). Activations live in activation.py.

`value` functions carry the contents of small int (and bool) tensors through shape arithmetic,
symbolic dims included: Shape(x)[0] * 3 -> "3*N".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from ember.compiler import dims, dtypes
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, broadcast_types, check_same_dtype
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
ValueFn = Callable[[InferCtx], "tuple[Dim, ...] | None"]

# dtype groups (ember names), each a superset of what ONNX allows for the ops using it.
FLOAT = dtypes.FLOATS
SIGNED = ("i64", "i32", "i16", "i8")
INT = dtypes.INTS
NUMERIC = FLOAT + INT
ANY = NUMERIC + ("bool",)
BOOL = ("bool",)
_GROUP_NAMES = {FLOAT: "a float", INT: "an integer", NUMERIC: "a numeric", BOOL: "a bool", FLOAT + SIGNED: "a signed"}


# --- helpers shared with activation.py and reduce.py -------------------------------------------
def check_dtype(ctx: InferCtx, index: int, allowed: Sequence[str]) -> None:
    """ValueError unless input `index` (when present) has one of the `allowed` dtypes."""
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is not None and t.dtype not in allowed:
        what = _GROUP_NAMES.get(tuple(allowed), "one of " + ", ".join(allowed))
        raise ValueError(f"{ctx.op} input {index} must be {what} tensor, got {t.dtype}")


def upcast(x: np.ndarray) -> np.ndarray:
    """f16/bf16 as f32 (computed once, rounded once at the end); other dtypes unchanged."""
    if x.dtype == np.float16 or x.dtype == dtypes.to_numpy("bf16"):
        return x.astype(np.float32)
    return x


def elementwise(
    name: str,
    fn: Callable[..., Any],
    allowed: Sequence[str],
    *,
    arity: int = 1,
    result: str | None = None,
    attrs: Mapping[str, AttrSpec] | None = None,
    value: ValueFn | None = None,
    check: Callable[[InferCtx], None] | None = None,
) -> OpDef:
    """A broadcasting op of `arity` same-dtype inputs: y = fn(*upcast inputs, attrs).

    The output has the broadcast shape and the dtype `result` (default: the inputs' dtype);
    `check` rejects invalid attributes with a ValueError.
    """

    def infer(ctx: InferCtx) -> list[TensorType]:
        if check is not None:
            check(ctx)
        for i in range(len(ctx.types)):
            check_dtype(ctx, i, allowed)
        check_same_dtype(ctx)
        return [broadcast_types(ctx, result)]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        arrays = [upcast(x) for x in inputs if x is not None]
        with np.errstate(all="ignore"):  # log(0) = -inf, sqrt(-1) = nan, as ONNX specifies
            return [as_dtype(fn(*arrays, attrs), ctx)]

    return OpDef(name=name, infer=infer, ref=ref, attrs=attrs or {}, inputs=(arity, arity), value=value)


def _math(name: str, fn: Callable[..., Any], allowed: Sequence[str] = FLOAT, **kw: Any) -> OpDef:
    """An attribute-free elementwise op: y = fn(*inputs)."""
    return elementwise(name, lambda *a: fn(*a[:-1]), allowed, **kw)


# --- contents of small int/bool tensors ----------------------------------------------------------
_INT_LIKE = INT + BOOL


def _nonneg(d: Dim) -> bool:
    """True when a dim value is provably >= 0: a tensor's extent, or an expression of symbols
    (dims) that +, *, // keep signs of."""
    return d >= 0 if isinstance(d, int) else isinstance(d, dims.Extent) or "-" not in d


def _signs(a: Dim, b: Dim) -> frozenset[int]:
    """The possible signs of a - b."""
    if isinstance(a, int) and isinstance(b, int):
        return frozenset({(a > b) - (a < b)})
    if a == b:
        return frozenset({0})
    if isinstance(b, int) and b <= 0 and _nonneg(a):
        return frozenset({1} if b < 0 else {0, 1})
    if isinstance(a, int) and a <= 0 and _nonneg(b):
        return frozenset({-1} if a < 0 else {-1, 0})
    return frozenset({-1, 0, 1})


def _lanes(ctx: InferCtx, count: int) -> list[tuple[Dim, ...]] | None:
    """Known contents of inputs 0..count-1, broadcast lane by lane (rank <= 1), or None.

    Only integer and bool inputs qualify (float constants would be truncated).
    """
    if any(t is not None and t.dtype not in _INT_LIKE for t in ctx.types[:count]):
        return None
    known = [ctx.const_or_value(i) for i in range(count)]
    if any(k is None for k in known):
        return None
    n = max(len(k) for k in known)  # type: ignore[arg-type]
    if any(len(k) not in (1, n) for k in known):  # type: ignore[arg-type]
        return None
    return [tuple(k[i if len(k) > 1 else 0] for k in known) for i in range(n)]  # type: ignore[index,arg-type]


def contents(fn: Callable[..., Dim | None], count: int = 2, ints_only: bool = False) -> ValueFn:
    """value: out[i] = fn(*lane i of the inputs); unknown if any lane is (or not all ints)."""

    def value(ctx: InferCtx) -> tuple[Dim, ...] | None:
        lanes = _lanes(ctx, count)
        if lanes is None or (ints_only and not all(isinstance(x, int) for lane in lanes for x in lane)):
            return None
        out = [fn(*lane) for lane in lanes]
        return None if any(o is None for o in out) else tuple(out)  # type: ignore[misc]

    return value


def _div_dim(a: Dim, b: Dim) -> Dim | None:
    """ONNX integer Div truncates toward zero; symbolic dims (>= 0) floor-divide."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            return None
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q
    if not _nonneg(a) or b == 0:
        return None
    if isinstance(b, int) and b < 0:
        return dims.mul(dims.floordiv(a, -b), -1)
    return dims.floordiv(a, b) if _nonneg(b) else None


def _abs_dim(a: Dim) -> Dim | None:
    if isinstance(a, int) or _nonneg(a):
        return abs(a) if isinstance(a, int) else a
    flipped = dims.mul(a, -1)
    return flipped if _nonneg(flipped) else None


def _max_dim(a: Dim, b: Dim) -> Dim | None:
    signs = _signs(a, b)
    return a if signs <= {0, 1} else b if signs <= {-1, 0} else None


def _min_dim(a: Dim, b: Dim) -> Dim | None:
    signs = _signs(a, b)
    return b if signs <= {0, 1} else a if signs <= {-1, 0} else None


def _compare_dim(pred: Callable[[int], bool]) -> Callable[[Dim, Dim], Dim | None]:
    """A comparison of contents: 1/0 when the sign of a - b decides it, else unknown."""

    def fn(a: Dim, b: Dim) -> Dim | None:
        outcomes = {pred(s) for s in _signs(a, b)}
        return int(outcomes.pop()) if len(outcomes) == 1 else None

    return fn


def _variadic_value(fn: Callable[[Dim, Dim], Dim | None]) -> ValueFn:
    def value(ctx: InferCtx) -> tuple[Dim, ...] | None:
        lanes = _lanes(ctx, len(ctx.types))
        if lanes is None:
            return None
        out = []
        for lane in lanes:
            acc: Dim | None = lane[0]
            for x in lane[1:]:
                acc = fn(acc, x) if acc is not None else None
            out.append(acc)
        return None if any(o is None for o in out) else tuple(out)  # type: ignore[misc]

    return value


def _mod_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    def fn(a: int, b: int) -> int | None:
        if b == 0:
            return None
        if ctx.attrs["fmod"]:  # C fmod: the sign of the dividend
            return a - b * int(abs(a) // abs(b) * (1 if (a >= 0) == (b > 0) else -1))
        return a % b  # the sign of the divisor, as Python's %

    return contents(fn, ints_only=True)(ctx)


def _where_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    def pick(c: Dim, x: Dim, y: Dim) -> Dim | None:
        return (x if c else y) if isinstance(c, int) else None

    return contents(pick, count=3)(ctx)


# --- arithmetic -----------------------------------------------------------------------------------
def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # ONNX integer Div truncates toward zero (C semantics); numpy floors. Exact for int64.
        q = np.floor_divide(a, b)
        inexact = (np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))
        return q + inexact.astype(q.dtype)
    return np.divide(a, b)


def _mod(a: np.ndarray, b: np.ndarray, attrs: Attrs) -> np.ndarray:
    # fmod=1: C fmod (sign of A); fmod=0: A - floor(A/B)*B (sign of B), both as Mod-28 specifies.
    return np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)


def _mod_check(ctx: InferCtx) -> None:
    if ctx.attrs["fmod"] not in (0, 1):
        raise ValueError(f"Mod fmod must be 0 or 1, got {ctx.attrs['fmod']}")


def _pow_infer(ctx: InferCtx) -> list[TensorType]:
    # Pow allows an exponent of another numeric dtype; the result has the base's dtype.
    check_dtype(ctx, 0, NUMERIC)
    check_dtype(ctx, 1, NUMERIC)
    return [broadcast_types(ctx, ctx.types[0].dtype)]  # type: ignore[union-attr]


def _pow_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    with np.errstate(all="ignore"):
        if a.dtype.kind in "iu":
            if b.dtype.kind in "iub" and not (b < 0).any():
                return [as_dtype(np.power(a, b.astype(a.dtype)), ctx)]  # exact, wraps on overflow
            # A negative or fractional exponent of an integer base: real power, truncated.
            return [as_dtype(np.trunc(np.power(a.astype(np.float64), b.astype(np.float64))), ctx)]
        return [as_dtype(np.power(upcast(a), upcast(b)), ctx)]


def _bitshift_check(ctx: InferCtx) -> None:
    if ctx.attrs["direction"] not in ("LEFT", "RIGHT"):
        raise ValueError(f"BitShift direction must be LEFT or RIGHT, got {ctx.attrs['direction']!r}")


def _bitshift(x: np.ndarray, y: np.ndarray, attrs: Attrs) -> np.ndarray:
    x, y = np.broadcast_arrays(x, y)
    # BitShift-28: a shift by a negative amount or by >= the bit width leaves only the sign fill.
    out_of_range = (y < 0) | (y >= x.dtype.itemsize * 8)
    amount = np.where(out_of_range, 0, y).astype(x.dtype)
    if attrs["direction"] == "RIGHT":  # arithmetic for signed types
        out = np.where(out_of_range, np.where(x < 0, -1, 0), np.right_shift(x, amount))
    else:  # bits pushed past the sign bit are dropped: shift the two's complement pattern
        unsigned = np.dtype(f"u{x.dtype.itemsize}")
        shifted = np.left_shift(x.astype(unsigned), amount.astype(unsigned)).astype(x.dtype)
        out = np.where(out_of_range, 0, shifted)
    return out


# --- variadic ---------------------------------------------------------------------------------------
def _variadic(name: str, fn: Callable[[list[np.ndarray]], np.ndarray], value: ValueFn | None = None) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        for i in range(len(ctx.types)):
            check_dtype(ctx, i, NUMERIC)
        check_same_dtype(ctx)
        return [broadcast_types(ctx)]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        arrays = [upcast(a) for a in inputs if a is not None]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        return [as_dtype(np.broadcast_to(fn(arrays), shape), ctx)]

    return OpDef(name=name, infer=infer, ref=ref, inputs=(1, -1), value=value)


def _fold(ufunc: np.ufunc) -> Callable[[list[np.ndarray]], np.ndarray]:
    return lambda arrays: functools.reduce(ufunc, arrays)


# --- Where, Identity, Dropout ------------------------------------------------------------------------
def _where_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, BOOL)
    check_same_dtype(ctx, [1, 2])
    return [broadcast_types(ctx, ctx.types[1].dtype)]  # type: ignore[union-attr]


def _dropout_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 1, FLOAT)
    check_dtype(ctx, 2, BOOL)
    ratio = ctx.consts[1] if len(ctx.consts) > 1 else None
    if ratio is not None and not 0 <= float(np.asarray(ratio).reshape(-1)[0]) < 1:
        raise ValueError(f"Dropout ratio must be in [0, 1), got {float(np.asarray(ratio).reshape(-1)[0])}")
    t = ctx.types[0]
    assert t is not None
    return [t, TensorType("bool", t.shape)]


def _dropout_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    ratio = float(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0.5
    training = len(inputs) > 2 and inputs[2] is not None and bool(np.asarray(inputs[2]).reshape(-1)[0])
    if not training or ratio == 0:  # inference: identity, nothing dropped
        return [x, np.ones(x.shape, dtype=bool)]
    # Training mode draws the mask as onnx's reference does (legacy MT19937 stream from `seed`,
    # 0 when absent so results are reproducible), and scales the kept values by 1/(1-ratio).
    mask = np.random.RandomState(attrs.get("seed", 0)).uniform(0, 1.0, x.shape) >= ratio
    return [as_dtype(mask * upcast(x) / (1 - ratio), ctx), mask]


def _dropout_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # Dropout-10 had `ratio` as an attribute (an input since 12); older ones had is_test.
    attrs.pop("is_test", None)
    if "ratio" in attrs:
        inputs = [inputs[0], np.array(attrs.pop("ratio"), dtype=np.float32)]
    return inputs, attrs


# --- Cast, CastLike ------------------------------------------------------------------------------------
def _float_to_int(x: np.ndarray, target: np.dtype) -> np.ndarray:
    # Truncation toward zero. ONNX leaves NaN, inf and out-of-range values undefined: ember makes
    # NaN/inf 0 and wraps the others through int64 (u64 through its own range), deterministically.
    t = np.trunc(np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    if target == np.uint64:
        high = t >= 2.0**63
        low = np.clip(np.where(high, t - 2.0**63, t), -(2.0**63), 2.0**63 - 1024).astype(np.int64).astype(np.uint64)
        return np.where(high, low + np.uint64(2**63), low)
    return np.clip(t, -(2.0**63), 2.0**63 - 1024).astype(np.int64).astype(target)


def cast_array(x: np.ndarray, to: str) -> np.ndarray:
    """ONNX Cast of an array to the ember dtype `to`."""
    target = dtypes.to_numpy(to)
    if x.dtype == target:
        return x
    if (x.dtype.kind == "f" or x.dtype == dtypes.to_numpy("bf16")) and target.kind in "iu":
        return _float_to_int(x, target)
    if to == "bf16" and x.dtype.kind in "iub":
        return x.astype(np.float32).astype(target)  # ml_dtypes converts from floats
    with np.errstate(all="ignore"):  # f64 -> f16 overflow gives inf, as ONNX specifies
        return x.astype(target)


def _cast_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    if ctx.attrs["to"] not in dtypes.NUMPY:
        raise ValueError(f"Cast to unknown dtype {ctx.attrs['to']!r}")
    return [TensorType(ctx.attrs["to"], t.shape)]


def _cast_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ONNX stores `to` as a TensorProto code; ember keeps its dtype name so dumps read `to="f16"`.
    if isinstance(attrs.get("to"), int):
        attrs["to"] = dtypes.from_onnx(attrs["to"], "Cast.to")
    return inputs, attrs


def _cast_value(ctx: InferCtx) -> tuple[Dim, ...] | None:
    # Shape arithmetic casts i64 <-> i32 (and float constants to ints: truncation, as the ref).
    t = ctx.types[0]
    known = ctx.const_or_value(0)
    if known is None or t is None:
        return None
    if ctx.attrs["to"] == "bool":
        if t.dtype not in _INT_LIKE or not all(isinstance(x, int) for x in known):
            return None
        return tuple(int(x != 0) for x in known)
    if t.dtype not in _INT_LIKE and not all(isinstance(x, int) for x in known):
        return None
    return known


def _castlike_infer(ctx: InferCtx) -> list[TensorType]:
    t, like = ctx.types[0], ctx.types[1]
    assert t is not None and like is not None
    return [TensorType(like.dtype, t.shape)]


_CAST_ATTRS = {"saturate": AttrSpec("int", 1), "round_mode": AttrSpec("str", "up")}  # float8 only

_EQUAL = _compare_dim(lambda s: s == 0)

OPS: list[OpDef] = [
    # unary math: y = f(x)
    _math("Abs", np.abs, NUMERIC, value=contents(_abs_dim, 1)),
    _math("Neg", np.negative, FLOAT + SIGNED, value=contents(lambda a: -a if isinstance(a, int) else dims.mul(a, -1), 1)),
    _math("Sign", np.sign, NUMERIC),
    _math("Sqrt", np.sqrt),
    _math("Exp", np.exp),
    _math("Log", np.log),
    _math("Reciprocal", np.reciprocal),
    _math("Floor", np.floor),
    _math("Ceil", np.ceil),
    _math("Round", np.round),  # half to even, as ONNX specifies
    _math("Erf", special.erf, NUMERIC),  # Erf-9 took integers too
    _math("Sin", np.sin),
    _math("Cos", np.cos),
    _math("Tan", np.tan),
    _math("Asin", np.arcsin),
    _math("Acos", np.arccos),
    _math("Atan", np.arctan),
    _math("Sinh", np.sinh),
    _math("Cosh", np.cosh),
    _math("Asinh", np.arcsinh),
    _math("Acosh", np.arccosh),
    _math("Atanh", np.arctanh),
    _math("IsNaN", np.isnan, result="bool"),
    elementwise(
        "IsInf",
        lambda x, a: (np.isposinf(x) & bool(a["detect_positive"])) | (np.isneginf(x) & bool(a["detect_negative"])),
        FLOAT,
        result="bool",
        attrs={"detect_negative": AttrSpec("int", 1), "detect_positive": AttrSpec("int", 1)},
    ),
    # binary arithmetic (integer overflow wraps)
    _math("Add", np.add, NUMERIC, arity=2, value=contents(dims.add)),
    _math("Sub", np.subtract, NUMERIC, arity=2, value=contents(dims.sub)),
    _math("Mul", np.multiply, NUMERIC, arity=2, value=contents(dims.mul)),
    _math("Div", _div, NUMERIC, arity=2, value=contents(_div_dim)),
    elementwise("Mod", _mod, NUMERIC, arity=2, attrs={"fmod": AttrSpec("int", 0)}, value=_mod_value, check=_mod_check),
    OpDef(name="Pow", infer=_pow_infer, ref=_pow_ref, inputs=(2, 2)),
    elementwise("BitShift", _bitshift, INT, arity=2, attrs={"direction": AttrSpec("str")}, check=_bitshift_check),
    _math("BitwiseAnd", np.bitwise_and, INT, arity=2),
    _math("BitwiseOr", np.bitwise_or, INT, arity=2),
    _math("BitwiseXor", np.bitwise_xor, INT, arity=2),
    _math("BitwiseNot", np.invert, INT),
    # logic and comparisons -> bool
    _math("Not", np.logical_not, BOOL, value=contents(lambda a: 1 - a if isinstance(a, int) else None, 1)),
    _math("And", np.logical_and, BOOL, arity=2, value=contents(lambda a, b: a & b, ints_only=True)),
    _math("Or", np.logical_or, BOOL, arity=2, value=contents(lambda a, b: a | b, ints_only=True)),
    _math("Xor", np.logical_xor, BOOL, arity=2, value=contents(lambda a, b: a ^ b, ints_only=True)),
    _math("Equal", np.equal, ANY, arity=2, result="bool", value=contents(_EQUAL)),
    _math("Greater", np.greater, NUMERIC, arity=2, result="bool", value=contents(_compare_dim(lambda s: s > 0))),
    _math("GreaterOrEqual", np.greater_equal, NUMERIC, arity=2, result="bool",
          value=contents(_compare_dim(lambda s: s >= 0))),
    _math("Less", np.less, NUMERIC, arity=2, result="bool", value=contents(_compare_dim(lambda s: s < 0))),
    _math("LessOrEqual", np.less_equal, NUMERIC, arity=2, result="bool",
          value=contents(_compare_dim(lambda s: s <= 0))),
    # variadic (NaN propagates through Max/Min, as np.maximum does)
    _variadic("Max", _fold(np.maximum), _variadic_value(_max_dim)),
    _variadic("Min", _fold(np.minimum), _variadic_value(_min_dim)),
    _variadic("Sum", _fold(np.add)),
    _variadic("Mean", lambda arrays: _fold(np.add)(arrays) / len(arrays)),
    # selection and pass-through
    OpDef(name="Where", infer=_where_infer, ref=lambda i, a, c: [as_dtype(np.where(i[0], i[1], i[2]), c)],
          inputs=(3, 3), value=_where_value),
    OpDef(name="Identity", infer=lambda ctx: [ctx.types[0]], ref=lambda i, a, c: [i[0]],
          value=lambda ctx: ctx.const_or_value(0)),
    OpDef(name="Dropout", infer=_dropout_infer, ref=_dropout_ref, inputs=(1, 3), outputs=(1, 2),
          attrs={"seed": AttrSpec("int", None)}, upgrade=_dropout_upgrade),
    OpDef(name="Cast", infer=_cast_infer, ref=lambda i, a, c: [cast_array(i[0], a["to"])],
          attrs={"to": AttrSpec("str"), **_CAST_ATTRS}, upgrade=_cast_upgrade, value=_cast_value),
    OpDef(name="CastLike", infer=_castlike_infer, ref=lambda i, a, c: [cast_array(i[0], c.out_types[0].dtype)],
          inputs=(2, 2), attrs=dict(_CAST_ATTRS)),
]
