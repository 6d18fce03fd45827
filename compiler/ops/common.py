"""Helpers shared by the op modules: broadcasting inference, dtype checks, axis handling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.registry import EvalCtx, InferCtx, OpDef


def same_as_input(index: int = 0) -> Callable[[InferCtx], list[TensorType]]:
    """infer: one output with the type of input `index`."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[index]
        assert t is not None
        return [t]

    return infer


def broadcast_types(ctx: InferCtx, dtype: str | None = None) -> TensorType:
    """The broadcast of all present inputs' shapes, with dtype (default: first input's)."""
    present = [t for t in ctx.types if t is not None]
    shape = dims.broadcast(*(t.shape for t in present))
    return TensorType(dtype or present[0].dtype, shape)


def check_same_dtype(ctx: InferCtx, indices: Sequence[int] | None = None) -> None:
    """Raise ValueError if the chosen inputs do not all share one dtype."""
    chosen = [ctx.types[i] for i in (indices if indices is not None else range(len(ctx.types)))]
    kinds = {t.dtype for t in chosen if t is not None}
    if len(kinds) > 1:
        raise ValueError(f"{ctx.op} inputs must share one dtype, got {sorted(kinds)}")


def required(ctx: InferCtx, index: int = 0) -> TensorType:
    """The type of input `index`; ValueError if the input is omitted."""
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is None:
        raise ValueError(f"{ctx.op} input {index} is required")
    return t


def int_list(array: np.ndarray | None) -> list[int]:
    """The elements of a small int tensor (shape, axes, pads operands) as Python ints."""
    return [] if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def norm_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as 0..rank-1; ValueError if out of range."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def as_dtype(array: Any, ctx: EvalCtx, output: int = 0) -> np.ndarray:
    """Cast a result to the node's declared output dtype (numpy promotes too eagerly)."""
    return np.asarray(array).astype(ctx.out_types[output].np_dtype, copy=False)


def unary(name: str, fn: Callable[..., Any], *, floats_only: bool = False, doc: str = "") -> OpDef:
    """An elementwise op of one input whose output has the input's type."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        if floats_only and not dtypes.is_float(t.dtype):
            raise ValueError(f"{name} needs a float input, got {t.dtype}")
        return [t]

    def ref(inputs: Sequence[np.ndarray | None], attrs: Any, ctx: EvalCtx) -> list[np.ndarray]:
        with np.errstate(all="ignore"):  # log(0) = -inf, sqrt(-1) = nan, as ONNX specifies
            return [as_dtype(fn(inputs[0]), ctx)]

    return OpDef(name=name, infer=infer, ref=ref, doc=doc)


def binary(name: str, fn: Callable[..., Any], *, result: str | None = None, doc: str = "") -> OpDef:
    """A broadcasting elementwise op of two same-dtype inputs (result dtype `result` if set)."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        check_same_dtype(ctx)
        return [broadcast_types(ctx, result)]

    def ref(inputs: Sequence[np.ndarray | None], attrs: Any, ctx: EvalCtx) -> list[np.ndarray]:
        with np.errstate(all="ignore"):
            return [as_dtype(fn(inputs[0], inputs[1]), ctx)]

    return OpDef(name=name, infer=infer, ref=ref, inputs=(2, 2), doc=doc)
