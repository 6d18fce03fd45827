"""Operators: elementwise arithmetic, comparisons, logic, activations, Cast.

Each op is `x -> y` with numpy broadcasting; the reference computes in the input dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import binary, unary
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef


def _cast_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    return [TensorType(ctx.attrs["to"], t.shape)]


def _cast_ref(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], ctx: EvalCtx) -> list[np.ndarray]:
    return [np.asarray(inputs[0]).astype(dtypes.to_numpy(attrs["to"]))]


def _cast_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ONNX stores `to` as a TensorProto code; ember keeps its dtype name so dumps read `to=f16`.
    if isinstance(attrs.get("to"), int):
        attrs["to"] = dtypes.from_onnx(attrs["to"], "Cast.to")
    return inputs, attrs


def _cast_value(ctx: InferCtx) -> Any:
    # Shape arithmetic often casts i64 <-> i32 / f32; contents survive for integer targets.
    if ctx.attrs["to"] in dtypes.INTS:
        return ctx.const_or_value(0)
    return None


OPS: list[OpDef] = [
    unary("Relu", lambda x: np.maximum(x, 0)),
    unary("Neg", np.negative),
    unary("Abs", np.abs),
    unary("Sqrt", np.sqrt, floats_only=True),
    unary("Exp", np.exp, floats_only=True),
    binary("Add", np.add),
    binary("Sub", np.subtract),
    binary("Mul", np.multiply),
    OpDef(
        name="Cast",
        infer=_cast_infer,
        ref=_cast_ref,
        attrs={"to": AttrSpec("str"), "saturate": AttrSpec("int", 1), "round_mode": AttrSpec("str", "up")},
        upgrade=_cast_upgrade,
        value=_cast_value,
    ),
]
