"""Operators: reductions, arg-reductions, softmax family, cumulative sums, Lp normalization.

Canonical reduction form is the newest one: `axes` as an optional second input,
`keepdims`, `noop_with_empty_axes`; older opsets' `axes` attribute is moved to an input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, norm_axis
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]

# Version in which each reduction's `axes` became an input.
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduce_axes(ctx_axes: tuple[int, ...] | None, rank: int, noop: int) -> tuple[int, ...] | None:
    """Normalised axes; None = unknown. Empty axes = all axes unless noop_with_empty_axes."""
    if ctx_axes is None:
        return None
    if not ctx_axes:
        return () if noop else tuple(range(rank))
    return tuple(sorted({norm_axis(int(a), rank) for a in ctx_axes}))


def _reduce_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    keep = ctx.attrs["keepdims"]
    has_axes = len(ctx.types) > 1 and ctx.types[1] is not None
    raw = ctx.const_or_value(1) if has_axes else ()
    axes = _reduce_axes(raw, t.rank, ctx.attrs["noop_with_empty_axes"])  # type: ignore[arg-type]
    if axes is None:
        if keep:
            return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank)))]
        count = ctx.types[1].shape[0] if ctx.types[1] is not None else None  # type: ignore[union-attr]
        if not isinstance(count, int):
            raise ValueError("reduction axes must be known to infer the output rank when keepdims=0")
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank - count)))]
    shape = tuple(
        (1 if keep else None) if i in axes else d for i, d in enumerate(t.shape)
    )
    return [TensorType(t.dtype, tuple(d for d in shape if d is not None))]


def _reduce(name: str, fn: Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]) -> OpDef:
    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        raw = tuple(int(a) for a in inputs[1].reshape(-1)) if len(inputs) > 1 and inputs[1] is not None else ()
        axes = _reduce_axes(raw, x.ndim, attrs["noop_with_empty_axes"])
        assert axes is not None
        if not axes and attrs["noop_with_empty_axes"]:
            return [x.copy()]
        with np.errstate(all="ignore"):
            out = fn(x, axes, bool(attrs["keepdims"]))
        return [as_dtype(out, ctx)]

    def upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        if "axes" in attrs:  # axes attribute (ReduceSum < 13, the others < 18) -> input
            axes = attrs.pop("axes")
            inputs = [inputs[0], np.array(axes, dtype=np.int64)]
        return inputs, attrs

    return OpDef(
        name=name,
        infer=_reduce_infer,
        ref=ref,
        inputs=(1, 2),
        attrs={"keepdims": AttrSpec("int", 1), "noop_with_empty_axes": AttrSpec("int", 0), "axes": AttrSpec("ints", None)},
        upgrade=upgrade,
    )


def _empty_safe(fn: Callable[..., np.ndarray], identity: float) -> Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]:
    def apply(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
        if x.size == 0:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else tuple(
                d for i, d in enumerate(x.shape) if i not in axes
            )
            return np.full(shape, identity, dtype=x.dtype if x.dtype.kind == "f" or np.isfinite(identity) else np.float64)
        return fn(x, axis=axes, keepdims=keep)

    return apply


def _acc(x: np.ndarray) -> np.ndarray:
    # Accumulate low-precision floats in float32 (as runtimes do), keep ints exact.
    return x.astype(np.float32) if x.dtype in (np.float16,) or x.dtype.kind == "V" else x


def _min_identity(x: np.ndarray) -> float:
    return float("inf")


def _argreduce(name: str, fn: Callable[..., np.ndarray]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        axis = norm_axis(ctx.attrs["axis"], t.rank)
        shape = tuple((1 if ctx.attrs["keepdims"] else None) if i == axis else d for i, d in enumerate(t.shape))
        return [TensorType("i64", tuple(d for d in shape if d is not None))]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        axis = norm_axis(attrs["axis"], x.ndim)
        if attrs["select_last_index"]:
            flipped = np.flip(x, axis)
            out = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            out = fn(x, axis=axis)
        if attrs["keepdims"]:
            out = np.expand_dims(out, axis)
        return [np.asarray(out, dtype=np.int64)]

    return OpDef(
        name=name,
        infer=infer,
        ref=ref,
        attrs={"axis": AttrSpec("int", 0), "keepdims": AttrSpec("int", 1), "select_last_index": AttrSpec("int", 0)},
    )


def _softmax_family(name: str, fn: Callable[[np.ndarray, int], np.ndarray]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        norm_axis(ctx.attrs["axis"], t.rank)
        return [t]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        axis = norm_axis(attrs["axis"], x.ndim)
        with np.errstate(all="ignore"):
            return [as_dtype(fn(_acc(x), axis), ctx)]

    def upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        if since >= 13:
            return inputs, attrs
        # Before opset 13 the input was coerced to 2-D at `axis` (default 1) and the op ran
        # over the flattened trailing block; that equals the per-axis form only when `axis`
        # is the last dimension.
        axis = attrs.get("axis", 1)
        t = types[0]
        if t is None or norm_axis(axis, t.rank) != t.rank - 1:
            from ember.compiler.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{name} before opset 13 over a non-last axis ({axis} of rank {t.rank if t else '?'}) "
                "flattens trailing dims; convert the model to opset 13 or newer"
            )
        attrs["axis"] = -1
        return inputs, attrs

    return OpDef(name=name, infer=infer, ref=ref, attrs={"axis": AttrSpec("int", -1)}, upgrade=upgrade)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    index = np.argmax(x, axis=axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, np.expand_dims(index, axis), 1, axis=axis)
    return out


def _cumulative(name: str, fn: Callable[..., np.ndarray]) -> OpDef:
    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x, axis_t = inputs[0], inputs[1]
        assert x is not None and axis_t is not None
        axis = norm_axis(int(axis_t.reshape(-1)[0]), x.ndim)
        y = np.flip(x, axis) if attrs["reverse"] else x
        out = fn(y, axis=axis, dtype=x.dtype)
        if attrs["exclusive"]:
            identity = 0 if name == "CumSum" else 1
            pad = np.full_like(np.take(out, [0], axis=axis), identity)
            out = np.concatenate([pad, np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis=axis)
        if attrs["reverse"]:
            out = np.flip(out, axis)
        return [as_dtype(out, ctx)]

    return OpDef(
        name=name,
        infer=lambda ctx: [ctx.types[0]],
        ref=ref,
        inputs=(2, 2),
        attrs={"exclusive": AttrSpec("int", 0), "reverse": AttrSpec("int", 0)},
    )


def _lpnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    axis = norm_axis(attrs["axis"], x.ndim)
    if attrs["p"] == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(all="ignore"):
        return [as_dtype(np.where(norm == 0, 0, x / norm), ctx)]


OPS: list[OpDef] = [
    _reduce("ReduceSum", _empty_safe(lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims), 0.0)),
    _reduce("ReduceMean", lambda x, a, k: np.mean(_acc(x), axis=a, keepdims=k)),
    _reduce("ReduceMax", _empty_safe(lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), float("-inf"))),
    _reduce("ReduceMin", _empty_safe(lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims), float("inf"))),
    _reduce("ReduceProd", _empty_safe(lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims), 1.0)),
    _reduce("ReduceL1", _empty_safe(lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims), 0.0)),
    _reduce(
        "ReduceL2",
        _empty_safe(lambda x, axis, keepdims: np.sqrt(np.sum(_acc(x) * _acc(x), axis=axis, keepdims=keepdims)), 0.0),
    ),
    _reduce(
        "ReduceLogSum",
        _empty_safe(lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)), float("-inf")),
    ),
    _reduce(
        "ReduceLogSumExp",
        _empty_safe(
            lambda x, axis, keepdims: np.log(np.sum(np.exp(_acc(x).astype(np.float64)), axis=axis, keepdims=keepdims)),
            float("-inf"),
        ),
    ),
    _reduce("ReduceSumSquare", _empty_safe(lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims), 0.0)),
    _argreduce("ArgMax", np.argmax),
    _argreduce("ArgMin", np.argmin),
    _softmax_family("Softmax", _softmax),
    _softmax_family("LogSoftmax", _log_softmax),
    _softmax_family("Hardmax", _hardmax),
    _cumulative("CumSum", np.cumsum),
    _cumulative("CumProd", np.cumprod),
    OpDef(
        name="LpNormalization",
        infer=lambda ctx: [ctx.types[0]],
        ref=_lpnorm_ref,
        attrs={"axis": AttrSpec("int", -1), "p": AttrSpec("int", 2)},
    ),
]
