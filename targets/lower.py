"""ember IR -> Relax, one emitter per op (the EMITTERS table).

Shapes come from ember's own types: a Reshape, Expand or ConstantOfShape uses its inferred
output shape (with symbolic dims as shared tir.Vars), so run-time shape arithmetic
(Shape -> Gather -> Concat chains) needs no code at all and is left dead. A `Fused` node
becomes one Relax function marked Primitive, which FuseTIR turns into exactly one PrimFunc.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from ember.compiler import dtypes
from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph, Node, TensorType

R = relax.op
TVM_DTYPE = {
    "f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32",
    "i16": "int16", "i8": "int8", "u64": "uint64", "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "bool",
}


class LoweringError(EmberError):
    """An op or a feature the code generator does not handle (the message names the node)."""

    exit_code = 2


class Lowering:
    """State of one graph's lowering: the block builder, values emitted so far, dim vars."""

    def __init__(self, bb: relax.BlockBuilder, dims: dict[str, tirx.Var]) -> None:
        self.bb = bb
        self.dims = dims
        self.values: dict[str, relax.Expr] = {}

    def dim(self, d: int | str) -> Any:
        """An int, or the tir expression of a symbolic dim (shared vars by name)."""
        if isinstance(d, int):
            return d
        if d in self.dims:
            return self.dims[d]
        try:  # expressions of known symbols: 3*N, N+1, (N)//2
            return eval(d, {"__builtins__": {}}, dict(self.dims))
        except Exception:
            raise LoweringError(f"dimension {d!r} depends on run-time data; ember's code generator needs it bound by an input") from None

    def shape(self, t: TensorType) -> list[Any]:
        """A tensor type's shape as Relax shape values."""
        return [self.dim(d) for d in t.shape]

    def emit(self, expr: relax.Expr) -> relax.Expr:
        """Bind an expression in the current dataflow block."""
        return self.bb.emit(expr)


Emitter = Callable[[Lowering, Node, list[Any]], Sequence[relax.Expr]]


def _const(array: np.ndarray) -> relax.Expr:
    data = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if data.dtype == np.bool_:
        return relax.const(data, "bool")
    return relax.const(data, TVM_DTYPE[dtypes.from_numpy(data.dtype)])


def _scalar(value: float, like: TensorType) -> relax.Expr:
    return relax.const(np.array(value, dtype=like.np_dtype), TVM_DTYPE[like.dtype])


def _out(node: Node, i: int = 0) -> TensorType:
    return node.outputs[i].type


def _in(lw: Lowering, node: Node, i: int) -> TensorType:
    return lw.types[node.inputs[i]]  # type: ignore[attr-defined]


# --- elementwise -----------------------------------------------------------------------------
def _unary(fn: Callable[[relax.Expr], relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(a[0])]


def _binary(fn: Callable[[relax.Expr, relax.Expr], relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(a[0], a[1])]


def _div(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _out(node)
    if t.dtype in dtypes.INTS:  # ONNX integer Div truncates toward zero
        q = R.divide(R.astype(a[0], "float64"), R.astype(a[1], "float64"))
        return [R.astype(R.trunc(q), TVM_DTYPE[t.dtype])]
    return [R.divide(a[0], a[1])]


def _clip(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    x = a[0]
    lo = a[1] if len(a) > 1 and a[1] is not None else None
    hi = a[2] if len(a) > 2 and a[2] is not None else None
    if lo is not None:
        x = R.maximum(x, lo)
    if hi is not None:
        x = R.minimum(x, hi)
    return [x]


def _act(fn: Callable[[Lowering, Node, relax.Expr], relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(lw, node, a[0])]


def _leaky(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.nn.leakyrelu(x, node.attrs["alpha"])


def _hardsigmoid(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    t = _out(node)
    y = R.add(R.multiply(x, _scalar(node.attrs["alpha"], t)), _scalar(node.attrs["beta"], t))
    return R.clip(y, 0.0, 1.0)


def _hardswish(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    t = _out(node)
    gate = R.clip(R.add(R.divide(x, _scalar(6.0, t)), _scalar(0.5, t)), 0.0, 1.0)
    return R.multiply(x, gate)


def _gelu(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.nn.gelu_tanh(x) if node.attrs["approximate"] == "tanh" else R.nn.gelu(x)


def _cast(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.astype(a[0], TVM_DTYPE[_out(node).dtype])]


def _where(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.where(a[0], a[1], a[2])]


def _variadic(fn: Callable[[relax.Expr, relax.Expr], relax.Expr], mean: bool = False) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        acc = a[0]
        for x in a[1:]:
            acc = fn(acc, x)
        if mean:
            acc = R.divide(acc, _scalar(float(len(a)), _out(node)))
        return [acc]

    return emit


def _identity(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [a[0]] + [R.ones(lw.shape(v.type), "bool") for v in node.outputs[1:]]


def _pow(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _out(node)
    exponent = lw.const_of(node.inputs[1])  # type: ignore[attr-defined]
    if exponent is not None and exponent.size == 1:
        e = float(exponent.reshape(-1)[0])
        if e == 2.0:
            return [R.multiply(a[0], a[0])]
        if e == 0.5:
            return [R.sqrt(a[0])]
        if e == 1.0:
            return [a[0]]
    b = a[1] if _in(lw, node, 1).dtype == t.dtype else R.astype(a[1], TVM_DTYPE[t.dtype])
    return [R.power(a[0], b)]


# --- shapes ------------------------------------------------------------------------------------
def _reshape_like_out(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.reshape(a[0], lw.shape(_out(node)))]


def _transpose(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    perm = node.attrs.get("perm")
    return [R.permute_dims(a[0], list(perm) if perm is not None else None)]


def _concat(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    rank = _out(node).rank
    return [R.concat([x for x in a if x is not None], axis=node.attrs["axis"] % rank)]


def _split(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    axis = node.attrs["axis"] % t.rank
    sizes = [v.type.shape[axis] for v in node.outputs]
    if not all(isinstance(s, int) for s in sizes):
        raise LoweringError(f"node {node.name!r} (Split): split sizes must be static for code generation")
    indices = list(np.cumsum(sizes)[:-1].astype(int))
    tup = lw.emit(R.split(a[0], [int(i) for i in indices] if indices else 1, axis=axis))
    return [lw.emit(relax.TupleGetItem(tup, i)) for i in range(len(node.outputs))]


def _static_ints(lw: Lowering, node: Node, i: int, what: str) -> list[int]:
    data = lw.const_of(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] else None  # type: ignore[attr-defined]
    if data is None:
        raise LoweringError(f"node {node.name!r} ({node.op}): {what} must be constant for code generation (run fold_constants)")
    return [int(v) for v in np.asarray(data).reshape(-1)]


def _slice(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    starts = _static_ints(lw, node, 1, "starts")
    ends = _static_ints(lw, node, 2, "ends")
    axes = _static_ints(lw, node, 3, "axes") if len(node.inputs) > 3 and node.inputs[3] else list(range(len(starts)))
    steps = _static_ints(lw, node, 4, "steps") if len(node.inputs) > 4 and node.inputs[4] else [1] * len(starts)
    axes = [ax % t.rank for ax in axes]
    big = 2**62
    ends = [min(max(e, -big), big) for e in ends]
    starts = [min(max(s, -big), big) for s in starts]
    return [R.strided_slice(a[0], axes, starts, ends, steps)]


def _gather(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    axis = node.attrs["axis"] % t.rank
    idx_t = _in(lw, node, 1)
    idx = a[1]
    data = lw.const_of(node.inputs[1])  # type: ignore[attr-defined]
    if data is not None:
        fixed = np.where(data < 0, data + int(t.shape[axis]), data) if isinstance(t.shape[axis], int) else data
        idx = _const(fixed.astype(np.int64))
    else:  # negative indices wrap
        dim = lw.dim(t.shape[axis])
        size = relax.const(dim, "int64") if isinstance(dim, int) else R.astype(relax.PrimValue(dim), "int64")
        idx = R.where(R.less(idx, relax.const(0, TVM_DTYPE[idx_t.dtype])), R.add(R.astype(idx, "int64"), size), R.astype(idx, "int64"))
    if idx_t.rank == 0:  # a scalar index drops the axis: take one, then squeeze it
        return [R.squeeze(R.take(a[0], R.reshape(idx, [1]), axis=axis), [axis])]
    return [R.take(a[0], idx, axis=axis)]


def _squeeze(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.reshape(a[0], lw.shape(_out(node)))]


def _expand(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.broadcast_to(a[0], lw.shape(_out(node)))]


def _constant_of_shape(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    fill = node.attrs.get("value")
    value = np.asarray(fill).reshape(-1)[0] if fill is not None else np.float32(0)
    t = _out(node)
    return [R.full(lw.shape(t), _scalar(value, t), TVM_DTYPE[t.dtype])]


def _shape(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    start, end = 0, t.rank
    if node.attrs.get("start"):
        start = node.attrs["start"] % t.rank if t.rank else 0
    if node.attrs.get("end") is not None:
        end = node.attrs["end"] if node.attrs["end"] >= 0 else node.attrs["end"] + t.rank
    dims_ = t.shape[start:end]
    if all(isinstance(d, int) for d in dims_):
        return [_const(np.array(dims_, dtype=np.int64))]
    raise LoweringError(f"node {node.name!r} (Shape): run-time shape values of symbolic dims are not lowered yet")


def _range(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    vals = [lw.const_of(n) for n in node.inputs]  # type: ignore[attr-defined]
    if any(v is None for v in vals):
        raise LoweringError(f"node {node.name!r} (Range): bounds must be constant for code generation")
    start, _, delta = (np.asarray(v).reshape(-1)[0] for v in vals)  # type: ignore[union-attr]
    t = _out(node)  # its length (from limit) is already in the inferred type
    return [_const((start + np.arange(int(t.shape[0])) * delta).astype(t.np_dtype))]


def _flatten(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.reshape(a[0], lw.shape(_out(node)))]


def _tile(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.tile(a[0], _static_ints(lw, node, 1, "repeats"))]


def _pad(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    pads = _static_ints(lw, node, 1, "pads")
    axes = _static_ints(lw, node, 3, "axes") if len(node.inputs) > 3 and node.inputs[3] else list(range(t.rank))
    width = [0] * (2 * t.rank)
    for i, ax in enumerate(axes):
        width[2 * (ax % t.rank)] = pads[i]
        width[2 * (ax % t.rank) + 1] = pads[i + len(axes)]
    value = 0.0
    if len(node.inputs) > 2 and node.inputs[2]:
        c = lw.const_of(node.inputs[2])  # type: ignore[attr-defined]
        if c is None:
            raise LoweringError(f"node {node.name!r} (Pad): the pad value must be constant")
        value = float(np.asarray(c).reshape(-1)[0]) if np.asarray(c).size else 0.0
    mode = {"constant": "constant", "reflect": "reflect", "edge": "edge"}.get(node.attrs["mode"])
    if mode is None:
        raise LoweringError(f"node {node.name!r} (Pad): mode {node.attrs['mode']!r} is not lowered yet")
    return [R.nn.pad(a[0], width, mode, value)]


# --- reductions and normalization ----------------------------------------------------------------
def _reduce(fn: Callable[..., relax.Expr]) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        t = _in(lw, node, 0)
        axes = _static_ints(lw, node, 1, "axes") if len(node.inputs) > 1 and node.inputs[1] else []
        if not axes:
            if node.attrs["noop_with_empty_axes"]:
                return [a[0]]
            axes = list(range(t.rank))
        return [fn(a[0], [ax % t.rank for ax in axes], bool(node.attrs["keepdims"]))]

    return emit


def _softmax(fn: Callable[..., relax.Expr]) -> Emitter:
    return lambda lw, node, a: [fn(a[0], axis=node.attrs["axis"] % _in(lw, node, 0).rank)]


def _argreduce(fn: Callable[..., relax.Expr]) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        t = _in(lw, node, 0)
        return [R.astype(fn(a[0], node.attrs["axis"] % t.rank, bool(node.attrs["keepdims"])), "int64")]

    return emit


def _layernorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = _in(lw, node, 0)
    axis = node.attrs["axis"] % t.rank
    axes = list(range(axis, t.rank))
    if len(node.outputs) > 1:
        raise LoweringError(f"node {node.name!r} (LayerNormalization): Mean/InvStdDev outputs are not lowered")
    gamma = a[1]
    beta = a[2] if len(a) > 2 and a[2] is not None else _const(np.zeros([int(d) for d in _in(lw, node, 1).shape], t.np_dtype))
    return [R.nn.layer_norm(a[0], gamma, beta, axes, node.attrs["epsilon"])]


def _batchnorm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    # Inference form as two per-channel constants when the statistics are constant:
    # y = x * (scale / sqrt(var + eps)) + (bias - mean * scale / sqrt(var + eps)).
    t = _in(lw, node, 0)
    stats = [lw.const_of(n) for n in node.inputs[1:5]]  # type: ignore[attr-defined]
    shape = [-1] + [1] * (t.rank - 2)
    if all(s is not None for s in stats):
        scale, bias, mean, var = (np.asarray(s, dtype=np.float64) for s in stats)  # type: ignore[arg-type]
        mul = scale / np.sqrt(var + node.attrs["epsilon"])
        add = bias - mean * mul
        return [R.add(R.multiply(a[0], _const(mul.reshape(shape).astype(t.np_dtype))), _const(add.reshape(shape).astype(t.np_dtype)))]
    out = R.nn.batch_norm(a[0], a[1], a[2], a[3], a[4], axis=1, epsilon=node.attrs["epsilon"])
    return [lw.emit(relax.TupleGetItem(lw.emit(out), 0))]


# --- conv, pool, matmul ---------------------------------------------------------------------------
def _conv(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    n = len(at["kernel_shape"])
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise LoweringError(f"node {node.name!r} (Conv): auto_pad with symbolic spatial dims is not lowered")
    pads = list(at["pads"])
    fn = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}.get(n)
    if fn is None:
        raise LoweringError(f"node {node.name!r} (Conv): {n}-d convolution is not lowered")
    layouts = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[n]
    y = fn(a[0], a[1], strides=list(at["strides"]), padding=pads, dilation=list(at["dilations"]),
           groups=at["group"], data_layout=layouts[0], kernel_layout=layouts[1])
    if len(a) > 2 and a[2] is not None:
        y = R.add(y, R.reshape(a[2], [1, -1] + [1] * n))
    return [y]


def _conv_transpose(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    n = len(at["kernel_shape"])
    if n != 2 or at.get("output_shape") is not None or at.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise LoweringError(f"node {node.name!r} (ConvTranspose): only 2-d with explicit pads is lowered")
    y = R.nn.conv2d_transpose(a[0], a[1], strides=list(at["strides"]), padding=list(at["pads"]),
                              output_padding=list(at["output_padding"]), dilation=list(at["dilations"]), groups=at["group"])
    if len(a) > 2 and a[2] is not None:
        y = R.add(y, R.reshape(a[2], [1, -1, 1, 1]))
    return [y]


def _pool(kind: str) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        at = node.attrs
        n = len(at["kernel_shape"])
        if len(node.outputs) > 1:
            raise LoweringError(f"node {node.name!r} ({node.op}): the Indices output is not lowered")
        if at.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise LoweringError(f"node {node.name!r} ({node.op}): auto_pad with symbolic spatial dims is not lowered")
        fns = {("max", 1): R.nn.max_pool1d, ("max", 2): R.nn.max_pool2d, ("max", 3): R.nn.max_pool3d,
               ("avg", 1): R.nn.avg_pool1d, ("avg", 2): R.nn.avg_pool2d, ("avg", 3): R.nn.avg_pool3d}
        layout = {1: "NCW", 2: "NCHW", 3: "NCDHW"}[n]
        kwargs: dict[str, Any] = dict(pool_size=list(at["kernel_shape"]), strides=list(at["strides"]),
                                      padding=list(at["pads"]), dilation=list(at["dilations"]),
                                      ceil_mode=bool(at["ceil_mode"]), layout=layout)
        if kind == "avg":
            kwargs["count_include_pad"] = bool(at["count_include_pad"])
        return [fns[(kind, n)](a[0], **kwargs)]

    return emit


def _global_pool(fn: Callable[..., relax.Expr]) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        rank = _in(lw, node, 0).rank
        return [fn(a[0], list(range(2, rank)), True)]

    return emit


def _gemm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    t = _out(node)
    x = R.permute_dims(a[0]) if at["transA"] else a[0]
    w = a[1]
    if at["transB"]:
        wc = lw.const_of(node.inputs[1])  # type: ignore[attr-defined]
        w = _const(np.ascontiguousarray(wc.T)) if wc is not None else R.permute_dims(w)  # pre-transposed at compile time
    y = R.matmul(x, w)
    if at["alpha"] != 1.0:
        y = R.multiply(y, _scalar(at["alpha"], t))
    if len(a) > 2 and a[2] is not None:
        c = a[2] if at["beta"] == 1.0 else R.multiply(a[2], _scalar(at["beta"], t))
        y = R.add(y, c)
    return [y]


def _matmul(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.matmul(a[0], a[1])]


def _attention(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """softmax(Q K^T * scale + mask) V for 4-D operands (no cache, causal or window yet)."""
    at = node.attrs
    q_t, k_t = _in(lw, node, 0), _in(lw, node, 1)
    unsupported = [
        what for what, bad in (
            ("3-D inputs", q_t.rank != 4), ("extra outputs", len(node.outputs) > 1), ("is_causal", bool(at["is_causal"])),
            ("softcap", bool(at.get("softcap"))), ("sliding windows", at["left_window_size"] >= 0 or at["right_window_size"] >= 0),
            ("past key/value or nonpad_kv_seqlen", len(node.inputs) > 4 and any(node.inputs[4:])),
        ) if bad
    ]
    if unsupported:
        raise LoweringError(f"node {node.name!r} (Attention): {', '.join(unsupported)} not lowered yet")
    t = _out(node)
    k, v = a[1], a[2]
    hq, hkv = q_t.shape[1], k_t.shape[1]
    if isinstance(hq, int) and isinstance(hkv, int) and hq != hkv:  # grouped-query attention
        k, v = R.repeat(k, hq // hkv, axis=1), R.repeat(v, hq // hkv, axis=1)
    head = q_t.shape[3]
    scale = at.get("scale") if at.get("scale") is not None else 1.0 / float(np.sqrt(int(head)))
    scores = R.multiply(R.matmul(a[0], R.permute_dims(k, [0, 1, 3, 2])), _scalar(scale, t))
    if len(a) > 3 and a[3] is not None:
        if _in(lw, node, 3).dtype == "bool":
            scores = R.where(a[3], scores, _scalar(float("-inf"), t))
        else:
            scores = R.add(scores, a[3])
    return [R.matmul(R.nn.softmax(scores, axis=-1), v)]


def _softplus(lw: Lowering, node: Node, x: relax.Expr) -> relax.Expr:
    return R.nn.softplus(x)


EMITTERS: dict[str, Emitter] = {
    # elementwise math
    "Add": _binary(R.add), "Sub": _binary(R.subtract), "Mul": _binary(R.multiply), "Div": _div,
    "Pow": _pow, "Max": _variadic(R.maximum), "Min": _variadic(R.minimum), "Sum": _variadic(R.add),
    "Mean": _variadic(R.add, mean=True),
    "Equal": _binary(R.equal), "Greater": _binary(R.greater), "GreaterOrEqual": _binary(R.greater_equal),
    "Less": _binary(R.less), "LessOrEqual": _binary(R.less_equal), "And": _binary(R.logical_and),
    "Or": _binary(R.logical_or), "Xor": _binary(R.logical_xor), "Not": _unary(R.logical_not),
    "Abs": _unary(R.abs), "Neg": _unary(R.negative), "Sqrt": _unary(R.sqrt), "Exp": _unary(R.exp),
    "Log": _unary(R.log), "Floor": _unary(R.floor), "Ceil": _unary(R.ceil), "Round": _unary(R.round),
    "Sign": _unary(R.sign), "Erf": _unary(R.erf), "Sin": _unary(R.sin), "Cos": _unary(R.cos),
    "Tanh": _unary(R.tanh), "Sigmoid": _unary(R.sigmoid), "Relu": _unary(R.nn.relu),
    "Reciprocal": lambda lw, node, a: [R.divide(_scalar(1.0, _out(node)), a[0])],
    "LeakyRelu": _act(_leaky), "HardSigmoid": _act(_hardsigmoid), "HardSwish": _act(_hardswish),
    "Gelu": _act(_gelu), "Softplus": _act(_softplus), "Clip": _clip, "Where": _where, "Cast": _cast,
    "Identity": _identity, "Dropout": _identity,
    "IsNaN": _unary(R.isnan), "IsInf": _unary(R.isinf),
    # shapes
    "Reshape": _reshape_like_out, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _squeeze,
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Range": _range,
    "Tile": _tile, "Pad": _pad,
    # reductions, normalization
    "ReduceMean": _reduce(R.mean), "ReduceSum": _reduce(R.sum), "ReduceMax": _reduce(R.max),
    "ReduceMin": _reduce(R.min), "ReduceProd": _reduce(R.prod),
    "ReduceL2": _reduce(lambda x, axes, keep: R.sqrt(R.sum(R.multiply(x, x), axes, keep))),
    "ReduceSumSquare": _reduce(lambda x, axes, keep: R.sum(R.multiply(x, x), axes, keep)),
    "ReduceL1": _reduce(lambda x, axes, keep: R.sum(R.abs(x), axes, keep)),
    "ArgMax": _argreduce(R.argmax), "ArgMin": _argreduce(R.argmin),
    "Softmax": _softmax(R.nn.softmax), "LogSoftmax": _softmax(R.nn.log_softmax),
    "LayerNormalization": _layernorm, "BatchNormalization": _batchnorm,
    # anchors
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool(R.mean), "GlobalMaxPool": _global_pool(R.max),
    "Gemm": _gemm, "MatMul": _matmul, "Attention": _attention,
}


def missing_emitters(graph: Graph) -> list[str]:
    """'Op: node, node' lines for nodes the code generator cannot lower (subgraphs included)."""
    found: dict[str, list[str]] = {}

    def visit(g: Graph) -> None:
        for node in g.nodes:
            if node.op == "Fused":
                visit(node.attrs["body"])
            elif node.op not in EMITTERS:
                found.setdefault(node.op, []).append(node.name)

    visit(graph)
    return [f"  {op}: {len(names)} node(s): {', '.join(names[:6])}" for op, names in sorted(found.items())]


class _GraphLowering(Lowering):
    """Lowering with the graph's types and constants at hand."""

    def __init__(self, bb: relax.BlockBuilder, dims: dict[str, tirx.Var], graph: Graph, consts: dict[str, np.ndarray]) -> None:
        super().__init__(bb, dims)
        self.graph = graph
        self.consts = consts
        self.types: dict[str, TensorType] = {v.name: v.type for v in graph.inputs}
        self.types.update((c.name, c.type) for c in graph.consts)
        for node in graph.nodes:
            self.types.update((v.name, v.type) for v in node.outputs)

    def const_of(self, name: str) -> np.ndarray | None:
        """Constant data of a value, if it is a constant."""
        return self.consts.get(name)

    def arg(self, name: str) -> relax.Expr | None:
        """The relax value of an IR value (constants materialize on first use)."""
        if not name:
            return None
        if name not in self.values:
            if name in self.consts:
                self.values[name] = _const(self.consts[name])
            else:
                raise LoweringError(f"value {name!r} is used before it is computed")
        return self.values[name]


# Operands the emitters never read: the output shape comes from ember's inferred type.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Squeeze": (1,), "Unsqueeze": (1,),
}


def _live_nodes(graph: Graph) -> list[Node]:
    """Nodes that contribute to an output, except pure shape arithmetic the emitters bypass."""
    needed = set(graph.outputs)
    live: list[Node] = []
    for node in reversed(graph.nodes):
        if not any(v.name in needed for v in node.outputs):
            continue
        live.append(node)
        skip = SHAPE_OPERANDS.get(node.op, ())
        for i, name in enumerate(node.inputs):
            if name and i not in skip:
                needed.add(name)
    return list(reversed(live))


def to_relax(graph: Graph) -> tvm.IRModule:
    """An IRModule whose `main` computes the graph's outputs from its inputs."""
    missing = missing_emitters(graph)
    if missing:
        raise LoweringError("operators without a code generator:\n" + "\n".join(missing))
    bb = relax.BlockBuilder()
    dims: dict[str, tirx.Var] = {}
    params = []
    for value in graph.inputs:
        for d in value.type.shape:
            if isinstance(d, str) and d not in dims:
                dims[d] = tirx.Var(d, "int64")
        shape = [d if isinstance(d, int) else dims[d] for d in value.type.shape]
        params.append(relax.Var(value.name, relax.TensorType(shape, TVM_DTYPE[value.type.dtype])))
    consts = {c.name: c.data for c in graph.consts}
    lw = _GraphLowering(bb, dims, graph, consts)
    with bb.function("main", params):
        with bb.dataflow():
            for value, param in zip(graph.inputs, params):
                lw.values[value.name] = param
            for node in _live_nodes(graph):
                lower_node(lw, node)
            outs = [lw.arg(name) for name in graph.outputs]
            result = bb.emit_output(relax.Tuple(outs) if len(outs) > 1 else outs[0])
        bb.emit_func_output(result)
    return bb.get()


def lower_node(lw: _GraphLowering, node: Node) -> None:
    """Emit one node (a Fused node becomes one primitive function call)."""
    if node.op == "Fused":
        from ember.targets.fused import lower_fused

        outs = lower_fused(lw, node)
    else:
        skip = SHAPE_OPERANDS.get(node.op, ())
        args = [None if i in skip else lw.arg(n) for i, n in enumerate(node.inputs)]
        try:
            outs = EMITTERS[node.op](lw, node, args)
        except LoweringError:
            raise
        except Exception as err:
            raise LoweringError(f"node {node.name!r} ({node.op}): cannot lower: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    for value, expr in zip(node.outputs, outs):
        lw.values[value.name] = lw.emit(expr) if not isinstance(expr, relax.Var) else expr
