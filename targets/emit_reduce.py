"""Emitters for reductions, the softmax family and normalizations.

Reductions take `axes` as a constant second input (the canonical, newest ONNX form); empty
axes reduce everything unless `noop_with_empty_axes`. Normalizations map to Relax's
layer/instance/group/RMS norms where they exist and are written out otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax, tirx

from ember.compiler.ir import Node
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    axis_of,
    const,
    has_input,
    in_type,
    refuse,
    scalar,
    static_ints,
)

Reducer = Callable[[relax.Expr, list[int], bool], relax.Expr]


def _log_sum_exp(x: relax.Expr, axes: list[int], keep: bool) -> relax.Expr:
    """log(sum(exp(x - max))) + max, stable for large inputs."""
    top = R.max(x, axes, True)
    y = R.add(R.log(R.sum(R.exp(R.subtract(x, top)), axes, True)), top)
    return y if keep else R.squeeze(y, axes)


_REDUCERS: dict[str, Reducer] = {
    "ReduceMean": R.mean, "ReduceSum": R.sum, "ReduceMax": R.max, "ReduceMin": R.min, "ReduceProd": R.prod,
    "ReduceL1": lambda x, axes, keep: R.sum(R.abs(x), axes, keep),
    "ReduceL2": lambda x, axes, keep: R.sqrt(R.sum(R.multiply(x, x), axes, keep)),
    "ReduceSumSquare": lambda x, axes, keep: R.sum(R.multiply(x, x), axes, keep),
    "ReduceLogSum": lambda x, axes, keep: R.log(R.sum(x, axes, keep)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _reduce(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axes = static_ints(lw, node, 1, "axes") if has_input(node, 1) else []
    if not axes:
        if node.attrs["noop_with_empty_axes"]:
            return [a[0]]
        axes = list(range(t.rank))
    axes = sorted({ax % t.rank for ax in axes})
    if any(t.shape[ax] == 0 for ax in axes):
        raise refuse(node, "a reduction over an empty axis")
    return [_REDUCERS[node.op](a[0], axes, bool(node.attrs["keepdims"]))]


def _argreduce(fn: Callable[..., relax.Expr]) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        t = in_type(lw, node, 0)
        axis = axis_of(node, t.rank)
        x = a[0]
        if node.attrs.get("select_last_index"):  # the last of equal extremes: search the reversed axis
            dim = t.shape[axis]
            if not isinstance(dim, int):
                raise refuse(node, "select_last_index on a symbolic axis")
            idx = fn(R.flip(x, axis), axis, bool(node.attrs["keepdims"]))
            return [R.subtract(relax.const(dim - 1, "int64"), R.astype(idx, "int64"))]
        return [R.astype(fn(x, axis, bool(node.attrs["keepdims"])), "int64")]

    return emit


def _softmax(fn: Callable[..., relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(a[0], axis=axis_of(node, in_type(lw, node, 0).rank))]


def _hardmax(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    depth = t.shape[axis]
    if not isinstance(depth, int):
        raise refuse(node, "Hardmax over a symbolic axis")
    dtype = TVM_DTYPE[t.dtype]
    one, zero = relax.prim_value(tirx.const(1, dtype)), relax.prim_value(tirx.const(0, dtype))
    return [R.one_hot(R.argmax(a[0], axis), one, zero, depth, axis)]


def _normalized(lw: Lowering, node: Node, param: relax.Expr, i: int, axes: list[int]) -> relax.Expr:
    """A scale/bias broadcast to the normalized trailing shape (Relax's norms want it exact)."""
    x = in_type(lw, node, 0)
    shape = [lw.dim(x.shape[ax]) for ax in axes]
    if list(in_type(lw, node, i).shape) == [x.shape[ax] for ax in axes]:
        return param
    return R.broadcast_to(param, shape)


def _layernorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axes = list(range(axis_of(node, t.rank), t.rank))
    if len(node.outputs) > 1:
        raise refuse(node, "the Mean/InvStdDev outputs")
    gamma = _normalized(lw, node, a[1], 1, axes)
    if len(a) > 2 and a[2] is not None:
        beta = _normalized(lw, node, a[2], 2, axes)
    else:
        beta = R.zeros([lw.dim(t.shape[ax]) for ax in axes], TVM_DTYPE[t.dtype])
    return [R.nn.layer_norm(a[0], gamma, beta, axes, node.attrs["epsilon"])]


def _rmsnorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axes = list(range(axis_of(node, t.rank), t.rank))
    return [R.nn.rms_norm(a[0], _normalized(lw, node, a[1], 1, axes), axes, node.attrs["epsilon"])]


def _batchnorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    # Inference form as two per-channel constants when the statistics are constant:
    # y = x * (scale / sqrt(var + eps)) + (bias - mean * scale / sqrt(var + eps)).
    t = in_type(lw, node, 0)
    if node.attrs["training_mode"] or len(node.outputs) > 1:
        raise refuse(node, "training mode")
    stats = [lw.const_of(n) for n in node.inputs[1:5]]
    shape = [-1] + [1] * (t.rank - 2)
    if all(s is not None for s in stats):
        scale, bias, mean, var = (np.asarray(s, dtype=np.float64) for s in stats)  # type: ignore[arg-type]
        mul = scale / np.sqrt(var + node.attrs["epsilon"])
        add = bias - mean * mul
        return [R.add(R.multiply(a[0], const(mul.reshape(shape).astype(t.np_dtype))), const(add.reshape(shape).astype(t.np_dtype)))]
    out = R.nn.batch_norm(a[0], a[1], a[2], a[3], a[4], axis=1, epsilon=node.attrs["epsilon"])
    return [lw.emit(relax.TupleGetItem(lw.emit(out), 0))]


def _instancenorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    rank = in_type(lw, node, 0).rank
    return [R.nn.instance_norm(a[0], a[1], a[2], 1, list(range(2, rank)), node.attrs["epsilon"])]


def _groupnorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """x viewed as [N, G, C/G * pixels] (a reshape in `main`: no copy), an instance norm of
    that (one kernel, each group a row for the row-reduction rule), viewed back; then the
    per-channel scale and bias, unless they are constants uniform over each group (torch's
    GroupNorm export: ones and zeros, its affine a Mul and Add after), which the instance
    norm takes per group. (TVM's group_norm went to dlight's generic reduction rule, which
    recomputed each group's statistics for every output element: 1.7 s for a 64-channel
    128 x 160 map.)"""
    t = in_type(lw, node, 0)
    g = int(node.attrs["num_groups"])
    c = t.shape[1]
    if not isinstance(c, int):
        raise refuse(node, f"a symbolic channel count ({t})")
    shape = lw.shape(t)
    rest: Any = c // g
    for d in shape[2:]:
        rest = rest * d
    consts = [lw.const_of(name) for name in node.inputs[1:3]]
    per_group = None
    if all(v is not None for v in consts):
        data = [np.asarray(v).reshape(-1) for v in consts]
        data = [np.repeat(v, c // g) if v.size == g and g != c else v for v in data]
        groups = [v.reshape(g, c // g) for v in data]
        if all((v == v[:, :1]).all() for v in groups):
            per_group = [const(np.ascontiguousarray(v[:, 0]).astype(t.np_dtype)) for v in groups]
    scale, bias = per_group if per_group is not None else (const(np.ones(g, t.np_dtype)), const(np.zeros(g, t.np_dtype)))
    y = R.nn.instance_norm(R.reshape(a[0], [shape[0], g, rest]), scale, bias, 1, [2], node.attrs["epsilon"])
    y = R.reshape(y, shape)
    if per_group is None:
        channel = [1, c] + [1] * (t.rank - 2)
        params = []
        for i in (1, 2):
            v = R.repeat(a[i], c // g, 0) if in_type(lw, node, i).shape[0] == g and g != c else a[i]
            params.append(R.reshape(v, channel))
        y = R.add(R.multiply(y, params[0]), params[1])
    return [y]


def _mvn(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """(x - mean) / (std + 1e-9) over `axes` (ONNX's function body)."""
    t = in_type(lw, node, 0)
    axes = sorted({ax % t.rank for ax in node.attrs["axes"]})
    centered = R.subtract(a[0], R.mean(a[0], axes, True))
    std = R.sqrt(R.mean(R.multiply(centered, centered), axes, True))
    return [R.divide(centered, R.add(std, scalar(1e-9, t)))]


def _lpnorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    axis = axis_of(node, t.rank)
    x = a[0]
    norm = R.sum(R.abs(x), [axis], True) if node.attrs["p"] == 1 else R.sqrt(R.sum(R.multiply(x, x), [axis], True))
    zero = scalar(0.0, t)  # a zero vector stays zero, as in onnx's reference
    safe = R.where(R.equal(norm, zero), scalar(1.0, t), norm)
    return [R.divide(x, safe)]


def _lrn(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """x / (bias + alpha * mean of x^2 over a window of `size` channels)^beta, the window sum as
    an average pool over the channel axis of [N, 1, C, rest] (ONNX pads it (size-1)//2 before)."""
    at = node.attrs
    t = in_type(lw, node, 0)
    shape = lw.shape(t)
    rest: Any = 1
    for d in shape[2:]:
        rest = rest * d
    size = at["size"]
    lo = (size - 1) // 2
    sq = R.reshape(R.multiply(a[0], a[0]), [shape[0], 1, shape[1], rest])
    mean = R.nn.avg_pool2d(sq, [size, 1], [1, 1], [lo, 0, size - 1 - lo, 0], count_include_pad=True)
    denom = R.power(R.add(R.multiply(R.reshape(mean, shape), scalar(at["alpha"], t)), scalar(at["bias"], t)), scalar(at["beta"], t))
    return [R.divide(a[0], denom)]


EMITTERS: dict[str, Emitter] = {
    **{op: _reduce for op in _REDUCERS},
    "ArgMax": _argreduce(R.argmax), "ArgMin": _argreduce(R.argmin),
    "Softmax": _softmax(R.nn.softmax), "LogSoftmax": _softmax(R.nn.log_softmax), "Hardmax": _hardmax,
    "LayerNormalization": _layernorm, "RMSNormalization": _rmsnorm, "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm, "GroupNormalization": _groupnorm,
    "MeanVarianceNormalization": _mvn, "LpNormalization": _lpnorm, "LRN": _lrn,
}
