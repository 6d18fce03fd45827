"""Operators: reductions, arg-reductions, softmax family, cumulative sums/products, LpNormalization.

Canonical reduction form is the newest one: `axes` as an optional second input, `keepdims`,
`noop_with_empty_axes`; older opsets' `axes` attribute is moved to an input. Empty axes mean
every axis (or nothing with noop_with_empty_axes); a reduction over an empty set gives the
operation's identity (0 for sums, 1 for products, -inf/+inf or the dtype's min/max for Max/Min).
f16/bf16 accumulate in f32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims
from ember.compiler.errors import UnsupportedModelError
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype, norm_axis
from ember.compiler.ops.elementwise import ANY, FLOAT, NUMERIC, check_dtype, upcast
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
# fn(x, axes, keepdims) -> reduced array; x is upcast, axes normalised and sorted (maybe empty).
ReduceFn = Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]


# --- reductions ------------------------------------------------------------------------------------
def _norm_axes(raw: Sequence[int], rank: int) -> tuple[int, ...]:
    axes = [norm_axis(int(a), rank) for a in raw]
    if len(set(axes)) != len(axes):
        raise ValueError(f"reduction axes {list(raw)} repeat an axis (rank {rank})")
    return tuple(sorted(axes))


def _reduce_infer(ctx: InferCtx, allowed: Sequence[str]) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    check_dtype(ctx, 0, allowed)
    check_dtype(ctx, 1, ("i64",))
    keep, noop = ctx.attrs["keepdims"], ctx.attrs["noop_with_empty_axes"]
    axes_t = ctx.types[1] if len(ctx.types) > 1 else None
    raw = ctx.const_or_value(1) if axes_t is not None else ()
    if axes_t is not None and axes_t.rank == 1 and axes_t.shape[0] == 0:
        raw = ()
    if raw is not None and not all(isinstance(a, int) for a in raw):
        raw = None  # symbolic contents: not usable as axes
    if raw is None:  # axes computed at run time: which dims go is unknown, not how many
        if keep:
            return [TensorType(t.dtype, tuple(1 if d == 1 else ctx.fresh(0, i) for i, d in enumerate(t.shape)))]
        count = axes_t.shape[0] if axes_t is not None and axes_t.rank == 1 else None
        if not isinstance(count, int):
            raise ValueError("reduction axes of unknown length with keepdims=0: the output rank is unknown")
        return [TensorType(t.dtype, tuple(ctx.fresh(0, i) for i in range(t.rank - count)))]
    if not raw:
        return [t if noop else TensorType(t.dtype, (1,) * t.rank if keep else ())]
    axes = _norm_axes(raw, t.rank)  # type: ignore[arg-type]
    shape = [1 if i in axes else d for i, d in enumerate(t.shape)] if keep else [
        d for i, d in enumerate(t.shape) if i not in axes
    ]
    return [TensorType(t.dtype, tuple(shape))]


def _reduce_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    # ReduceSum < 13 and the others < 18 had `axes` as an attribute; it is an input since.
    if "axes" in attrs:
        inputs = [inputs[0], np.array(attrs.pop("axes"), dtype=np.int64)]
    return inputs, attrs


def _reduce(name: str, fn: ReduceFn, identity: Callable[[np.dtype], Any], allowed: Sequence[str] = NUMERIC) -> OpDef:
    """A reduction; `identity(dtype)` fills the output when the reduced set is empty."""

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        raw = () if len(inputs) < 2 or inputs[1] is None else inputs[1].reshape(-1).tolist()
        # Empty axes: every axis, or with noop_with_empty_axes none (the elementwise part still
        # applies: ReduceSumSquare is then Square, ReduceLogSum is Log).
        axes = _norm_axes(raw, x.ndim) if raw else () if attrs["noop_with_empty_axes"] else tuple(range(x.ndim))
        keep = bool(attrs["keepdims"])
        if x.size == 0 and axes:  # every reduced set is empty (or the output is empty too)
            shape = np.sum(np.empty(x.shape, np.int8), axis=axes, keepdims=keep).shape
            return [np.full(shape, identity(x.dtype), dtype=ctx.out_types[0].np_dtype)]
        with np.errstate(all="ignore"):
            return [as_dtype(fn(upcast(x), axes, keep), ctx)]

    return OpDef(
        name=name,
        infer=lambda ctx: _reduce_infer(ctx, allowed),
        ref=ref,
        inputs=(1, 2),
        attrs={"keepdims": AttrSpec("int", 1), "noop_with_empty_axes": AttrSpec("int", 0)},
        upgrade=_reduce_upgrade,
    )


def _lowest(dtype: np.dtype) -> Any:
    """Identity of Max: -inf, the integer minimum, or False."""
    if dtype == np.bool_:
        return False
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


def _highest(dtype: np.dtype) -> Any:
    """Identity of Min: +inf, the integer maximum, or True."""
    if dtype == np.bool_:
        return True
    return np.iinfo(dtype).max if dtype.kind in "iu" else np.inf


def _zero(dtype: np.dtype) -> Any:
    return 0


def _mean(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    count = int(np.prod([x.shape[a] for a in axes]))
    total = np.sum(x, axis=axes, keepdims=keep)
    if x.dtype.kind in "iu":  # integer mean truncates toward zero (as onnx's reference)
        return np.trunc(total.astype(np.float64) / count)
    return total / count


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    # log(sum(exp(x))) = m + log(sum(exp(x - m))) with m the finite max (no overflow).
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = m + np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True))
    return out if keep else np.squeeze(out, axis=axes)


# --- arg-reductions ---------------------------------------------------------------------------------
def _argreduce(name: str, fn: Callable[..., np.ndarray]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        check_dtype(ctx, 0, ANY)
        axis = norm_axis(ctx.attrs["axis"], t.rank)
        if t.shape[axis] == 0:
            raise ValueError(f"{name} over an empty axis {axis} of {t}")
        shape = [1 if i == axis else d for i, d in enumerate(t.shape)] if ctx.attrs["keepdims"] else [
            d for i, d in enumerate(t.shape) if i != axis
        ]
        return [TensorType("i64", tuple(shape))]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = upcast(inputs[0])  # type: ignore[arg-type]
        axis = norm_axis(attrs["axis"], x.ndim)
        if attrs["select_last_index"]:  # the last of equal extremes: search the reversed axis
            out = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis, keepdims=bool(attrs["keepdims"]))
        else:
            out = fn(x, axis=axis, keepdims=bool(attrs["keepdims"]))
        return [np.asarray(out, dtype=np.int64)]

    return OpDef(
        name=name,
        infer=infer,
        ref=ref,
        attrs={"axis": AttrSpec("int", 0), "keepdims": AttrSpec("int", 1), "select_last_index": AttrSpec("int", 0)},
    )


# --- softmax family -----------------------------------------------------------------------------------
def _softmax_family(name: str, fn: Callable[[np.ndarray, int], np.ndarray]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        t = ctx.types[0]
        assert t is not None
        check_dtype(ctx, 0, FLOAT)
        norm_axis(ctx.attrs["axis"], t.rank)
        return [t]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x = inputs[0]
        assert x is not None
        if x.size == 0:
            return [x]
        # f16/bf16 compute in their own dtype, op by op, as onnx's reference (and TVM's softmax)
        # do: the ONNX attention tests expect exactly that rounding.
        with np.errstate(all="ignore"):
            return [as_dtype(fn(x, norm_axis(attrs["axis"], x.ndim)), ctx)]

    def upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        if since >= 13:
            return inputs, attrs
        # Before opset 13 the input was flattened to 2-D at `axis` (default 1) and the op ran over
        # the trailing block x.shape[axis:] as one. That is the per-axis form over the one dim of
        # the block that is not 1 (the last one if all are 1).
        t: TensorType = types[0]
        axis = norm_axis(attrs.get("axis", 1), t.rank)
        block = [i for i in range(axis, t.rank) if t.shape[i] != 1]
        if len(block) > 1:
            shown = ", ".join(str(d) for d in t.shape[axis:])
            raise UnsupportedModelError(
                f"{name}-{since} with axis={attrs.get('axis', 1)} on {t} normalises over the flattened "
                f"dims [{shown}] jointly, which the opset-13 form cannot express; export the model at "
                f"opset >= 13 (or with the {name} axis as the last dim)"
            )
        attrs["axis"] = block[0] if block else t.rank - 1
        return inputs, attrs

    return OpDef(name=name, infer=infer, ref=ref, attrs={"axis": AttrSpec("int", -1)}, upgrade=upgrade)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    # 1 at the first maximum along the axis, 0 elsewhere.
    out = np.zeros_like(x)
    np.put_along_axis(out, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)
    return out


# --- cumulative ops ----------------------------------------------------------------------------------
def _cumulative(name: str, fn: Callable[..., np.ndarray], identity: int) -> OpDef:
    """y[i] = x[0] op ... op x[i] along `axis` (exclusive: up to x[i-1]; reverse: from the end)."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        t, axis_t = ctx.types[0], ctx.types[1]
        assert t is not None and axis_t is not None
        check_dtype(ctx, 0, NUMERIC)
        check_dtype(ctx, 1, ("i32", "i64"))
        if dims.numel(axis_t.shape) != 1:
            raise ValueError(f"{name} axis must be a scalar, got {axis_t}")
        known = ctx.const_or_value(1)
        if known is not None and isinstance(known[0], int):
            norm_axis(known[0], t.rank)
        return [t]

    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        x, axis_t = inputs[0], inputs[1]
        assert x is not None and axis_t is not None
        axis = norm_axis(int(axis_t.reshape(-1)[0]), x.ndim)
        y = upcast(x)
        if attrs["reverse"]:
            y = np.flip(y, axis)
        out = fn(y, axis=axis, dtype=y.dtype)
        if attrs["exclusive"] and out.shape[axis] > 0:  # shift by one, the identity first
            head = np.full_like(np.take(out, [0], axis=axis), identity)
            out = np.concatenate([head, np.delete(out, -1, axis=axis)], axis=axis)
        if attrs["reverse"]:
            out = np.flip(out, axis)
        return [as_dtype(out, ctx)]

    return OpDef(
        name=name,
        infer=infer,
        ref=ref,
        inputs=(2, 2),
        attrs={"exclusive": AttrSpec("int", 0), "reverse": AttrSpec("int", 0)},
    )


# --- LpNormalization ------------------------------------------------------------------------------------
def _lpnorm_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.types[0]
    assert t is not None
    check_dtype(ctx, 0, FLOAT)
    if ctx.attrs["p"] not in (1, 2):
        raise ValueError(f"LpNormalization p must be 1 or 2, got {ctx.attrs['p']}")
    norm_axis(ctx.attrs["axis"], t.rank)
    return [t]


def _lpnorm_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = upcast(inputs[0])  # type: ignore[arg-type]
    axis = norm_axis(attrs["axis"], x.ndim)
    if attrs["p"] == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(all="ignore"):  # a zero vector stays zero (onnx's reference: 0/0 -> 0)
        return [as_dtype(np.where(norm == 0, 0, x / norm), ctx)]


OPS: list[OpDef] = [
    _reduce("ReduceSum", lambda x, a, k: np.sum(x, axis=a, keepdims=k), _zero),
    _reduce("ReduceMean", _mean, lambda dtype: 0 if dtype.kind in "iu" else np.nan),
    _reduce("ReduceMax", lambda x, a, k: np.max(x, axis=a, keepdims=k), _lowest, ANY),
    _reduce("ReduceMin", lambda x, a, k: np.min(x, axis=a, keepdims=k), _highest, ANY),
    _reduce("ReduceProd", lambda x, a, k: np.prod(x, axis=a, keepdims=k), lambda dtype: 1),
    _reduce("ReduceL1", lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k), _zero),
    _reduce("ReduceL2", lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k)), _zero),
    _reduce("ReduceSumSquare", lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k), _zero),
    _reduce("ReduceLogSum", lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)), _lowest),
    _reduce("ReduceLogSumExp", _log_sum_exp, _lowest),
    _argreduce("ArgMax", np.argmax),
    _argreduce("ArgMin", np.argmin),
    _softmax_family("Softmax", _softmax),
    _softmax_family("LogSoftmax", _log_softmax),
    _softmax_family("Hardmax", _hardmax),
    _cumulative("CumSum", np.cumsum, 0),
    _cumulative("CumProd", np.cumprod, 1),
    OpDef(name="LpNormalization", infer=_lpnorm_infer, ref=_lpnorm_ref, attrs={"axis": AttrSpec("int", -1), "p": AttrSpec("int", 2)}),
]
