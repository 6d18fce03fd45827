"""Operators: activations (Relu, Sigmoid, Gelu, ...), PRelu, Shrink and Clip.

Elementwise like elementwise.py, whose helpers they use: f16/bf16 compute in f32 and round
once; attributes (alpha, beta...) are Python floats as ONNX stores them (float32 values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, check_same_dtype
from ember.compiler.ops.elementwise import (
    FLOAT,
    NUMERIC,
    SIGNED,
    check_dtype,
    elementwise,
    upcast,
)
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]


def _f(default: float) -> AttrSpec:
    return AttrSpec("float", default)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)  # log(1 + exp(x)) without overflow


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + special.erf(x / math.sqrt(2)))


def _gelu_check(ctx: InferCtx) -> None:
    if ctx.attrs["approximate"] not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {ctx.attrs['approximate']!r}")


def _shrink(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    lambd, bias = attrs["lambd"], attrs["bias"]
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


def _act(name: str, fn: Any, attrs: Mapping[str, AttrSpec] | None = None, **kw: Any) -> OpDef:
    """A float activation y = fn(x, attrs)."""
    return elementwise(name, fn, kw.pop("allowed", FLOAT), attrs=attrs, **kw)


# --- PRelu -------------------------------------------------------------------------------------
def _prelu_infer(ctx: InferCtx) -> list[TensorType]:
    x, slope = ctx.types[0], ctx.types[1]
    assert x is not None and slope is not None
    check_dtype(ctx, 0, NUMERIC)
    check_same_dtype(ctx)
    # slope broadcasts to X (unidirectionally): the output has X's shape.
    aligned = zip(reversed(x.shape), reversed(slope.shape))
    if slope.rank > x.rank or any(isinstance(d, int) and isinstance(s, int) and s not in (1, d) for d, s in aligned):
        raise ValueError(f"PRelu slope {slope} does not broadcast to X {x}")
    return [x]


def _prelu_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, slope = upcast(inputs[0]), upcast(inputs[1])  # type: ignore[arg-type]
    return [as_dtype(np.where(x < 0, x * slope, x), ctx)]


# --- Clip ----------------------------------------------------------------------------------------
def _clip_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    check_dtype(ctx, 0, NUMERIC)
    check_same_dtype(ctx)
    for bound in ctx.types[1:]:
        if bound is not None and not (bound.rank == 0 or bound.shape == (1,)):
            raise ValueError(f"Clip min/max must be scalars, got {bound}")
    return [t]


def _clip_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    # min(max(x, lo), hi): all values become `max` when min > max, as ONNX specifies.
    out = inputs[0]
    assert out is not None
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if lo is not None:
        out = np.maximum(out, lo.reshape(()))
    if hi is not None:
        out = np.minimum(out, hi.reshape(()))
    return [as_dtype(out, ctx)]


def _clip_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # Clip-6 had min/max attributes (defaults: the float range); since 11 they are optional inputs.
    if "min" in attrs or "max" in attrs:
        dtype = types[0].np_dtype if types and types[0] is not None else np.dtype(np.float32)
        lo, hi = attrs.pop("min", None), attrs.pop("max", None)
        inputs = [inputs[0], "" if lo is None else np.array(lo, dtype), "" if hi is None else np.array(hi, dtype)]
        while inputs[-1] == "":
            inputs.pop()
    return inputs, attrs


OPS: list[OpDef] = [
    _act("Relu", lambda x, a: np.maximum(x, 0), allowed=FLOAT + SIGNED),
    _act("Sigmoid", lambda x, a: special.expit(x)),
    _act("Tanh", lambda x, a: np.tanh(x)),
    _act("Softplus", lambda x, a: _softplus(x)),
    _act("Softsign", lambda x, a: x / (1 + np.abs(x))),
    _act("Mish", lambda x, a: x * np.tanh(_softplus(x))),
    _act("HardSwish", lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1)),  # alpha = 1/6, beta = 0.5
    _act("Gelu", _gelu, {"approximate": AttrSpec("str", "none")}, check=_gelu_check),
    _act("LeakyRelu", lambda x, a: np.where(x < 0, a["alpha"] * x, x), {"alpha": _f(0.009999999776482582)}),
    _act("Elu", lambda x, a: np.where(x < 0, a["alpha"] * np.expm1(x), x), {"alpha": _f(1.0)}),
    _act(
        "Selu",
        lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(x)),
        {"alpha": _f(1.6732631921768188), "gamma": _f(1.0507010221481323)},
    ),
    _act(
        "Celu",
        lambda x, a: np.maximum(0, x) + np.minimum(0, a["alpha"] * np.expm1(x / a["alpha"])),
        {"alpha": _f(1.0)},
    ),
    _act(
        "HardSigmoid",
        lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0, 1),
        {"alpha": _f(0.20000000298023224), "beta": _f(0.5)},
    ),
    _act("ThresholdedRelu", lambda x, a: np.where(x > a["alpha"], x, 0), {"alpha": _f(1.0)}),
    _act("Swish", lambda x, a: x * special.expit(a["alpha"] * x), {"alpha": _f(1.0)}),
    _act("Shrink", _shrink, {"bias": _f(0.0), "lambd": _f(0.5)}, allowed=NUMERIC),
    OpDef(name="PRelu", infer=_prelu_infer, ref=_prelu_ref, inputs=(2, 2)),
    OpDef(name="Clip", infer=_clip_infer, ref=_clip_ref, inputs=(1, 3), upgrade=_clip_upgrade),
]
