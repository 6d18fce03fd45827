"""fold_batchnorm: per-channel affine ops after Conv / ConvTranspose / Gemm / MatMul go into
its weight and bias.

    BatchNormalization(Conv(x, W, b), s, B, m, v)  ->  Conv(x, W * k, (b - m) * k + B),  k = s / sqrt(v + eps)
    Mul(Conv(x, W, b), c) and Div(..., 1/c)        ->  Conv(x, W * c, b * c)
    Add(Conv(x, W, b), c) and Sub(..., -c)         ->  Conv(x, W, b + c)
    the same for ConvTranspose (W's output channels sit in its second axis, per group) and
    Gemm (W's rows with transB, else its columns; beta folds into the new bias);
    Mul/BatchNormalization(MatMul(x, W), ...)      ->  Add(MatMul(x, W * k), shift)   (MatMul has no bias operand)

Preconditions: the anchor's output has no other reader; its weight and bias are float
constants (a weight that other nodes also read is copied, never changed in place:
`shared_weight_copied`); the affine constant varies along the output-channel axis only (axis 1
of Conv, ConvTranspose and BatchNormalization, the last axis of Gemm and MatMul), so it
broadcasts to nothing larger than the anchor's output; BatchNormalization is in inference mode.
A plain bias Add after MatMul stays: fuse makes it the MatMul's epilogue.
"""

from __future__ import annotations

import numpy as np

from ember.compiler import dtypes
from ember.compiler.ir import Graph
from ember.compiler.pattern import Match, const, op, var
from ember.compiler.rewrite import Builder, Outcome, PassResult, Rule, reject, rewrite_graph

ANCHOR = op(("Conv", "ConvTranspose", "Gemm", "MatMul"), var("x"), const("w"), rest=True, name="anchor")


def _channel_axis(m: Match, affine: str) -> int:
    """The output axis along which the anchor's output channels run, as `affine` sees it."""
    anchor = m.node("anchor")
    if affine == "BatchNormalization" or anchor.op in ("Conv", "ConvTranspose"):
        return 1
    return anchor.outputs[0].type.rank - 1


def _per_channel(data: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """`data` as a [channels] vector when it broadcasts along `axis` of a rank-`rank` tensor only."""
    if data.ndim > rank:
        return None
    shape = (1,) * (rank - data.ndim) + data.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(data.reshape(-1).astype(np.float64), (channels,))


def _affine(m: Match, channels: int, axis: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(scale, shift) per channel with root(y) = y * scale + shift, or why there is none."""
    root, rank = m.root, m.root.outputs[0].type.rank
    if root.op == "BatchNormalization":
        if root.attrs["training_mode"] or len(root.outputs) > 1:
            return "training mode"
        s, b, mean, v = (m.const(k).astype(np.float64) for k in ("s", "b", "mean", "var"))
        if any(a.shape != (channels,) for a in (s, b, mean, v)):
            return f"statistics are not [{channels}] vectors"
        scale = s / np.sqrt(v + root.attrs["epsilon"])
        return scale, b - mean * scale
    vec = _per_channel(m.const("k"), rank, axis, channels)
    if vec is None:
        return f"the constant {list(m.const('k').shape)} does not vary along output channel axis {axis} only"
    if root.op in ("Div",) and np.any(vec == 0):
        return "division by a zero constant"
    zeros, ones = np.zeros(channels), np.ones(channels)
    return {"Mul": (vec, zeros), "Div": (1 / vec, zeros), "Add": (ones, vec), "Sub": (ones, -vec)}[root.op]


def _scaled_weight(m: Match, scale: np.ndarray) -> np.ndarray:
    """The anchor's weight with each output channel multiplied by `scale`."""
    anchor, w = m.node("anchor"), m.const("w").astype(np.float64)
    if anchor.op == "Conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if anchor.op == "ConvTranspose":  # W: [C_in, C_out / group, k...]; channel = g * (C_out / group) + j
        g = anchor.attrs["group"]
        grouped = w.reshape((g, w.shape[0] // g) + w.shape[1:])
        return (grouped * scale.reshape((g, 1, -1) + (1,) * (w.ndim - 2))).reshape(w.shape)
    if anchor.op == "Gemm" and anchor.attrs["transB"]:  # W: [N, K]
        return w * scale.reshape(-1, 1)
    return w * scale.reshape(1, -1)  # Gemm W: [K, N]; MatMul W: [K, N]


def _fold(m: Match, b: Builder) -> Outcome:
    anchor = m.node("anchor")
    out_t = anchor.outputs[0].type
    w = m.const("w")
    if w.dtype.kind != "f" or dtypes.from_numpy(w.dtype) != out_t.dtype:
        return reject("the weight is not a float constant of the output's dtype")
    if anchor.op == "MatMul" and (w.ndim != 2 or out_t.rank < 2):
        return reject("the MatMul weight is not a 2-D matrix")
    if anchor.op == "MatMul" and m.root.op in ("Add", "Sub"):
        return reject("a plain bias add after MatMul (fuse makes it an epilogue)")
    axis = _channel_axis(m, m.root.op)
    channel_axis = 1 if anchor.op in ("Conv", "ConvTranspose") else out_t.rank - 1
    if axis != channel_axis:
        return reject(f"normalizes axis {axis}, the anchor's output channels are axis {channel_axis}")
    channels = out_t.shape[axis]
    if not isinstance(channels, int):
        return reject("the number of output channels is symbolic")
    affine = _affine(m, channels, axis)
    if isinstance(affine, str):
        return reject(affine)
    scale, shift = affine
    bias_name = anchor.inputs[2] if len(anchor.inputs) > 2 and anchor.inputs[2] else ""
    bias_c = m.graph.const(bias_name) if bias_name else None
    if bias_name and bias_c is None:
        return reject("the anchor's bias is not a constant")
    # Scaling by ones keeps the weight (an Add folds into the bias alone).
    new_w = m["w"] if np.all(scale == 1) else b.const(f"{m['w']}_folded", _scaled_weight(m, scale).astype(w.dtype))
    if new_w != m["w"] and len(m.graph.consumers(m["w"])) > 1:
        b.note("shared_weight_copied")  # its other readers keep the original
    attrs = dict(anchor.attrs)
    if anchor.op == "MatMul":
        if not np.any(shift):
            b.op("MatMul", (m["x"], new_w), out=m.root.outputs[0])
            return b.replace()
        # A new name: the product now holds other numbers than the old %m.
        scaled = b.op("MatMul", (m["x"], new_w), out=f"{anchor.outputs[0].name}_scaled")
        b.op("Add", (scaled, b.const(f"{anchor.outputs[0].name}_bias", shift.astype(w.dtype))), out=m.root.outputs[0])
        return b.replace()
    if bias_c is None and not np.any(shift):
        b.op(anchor.op, (m["x"], new_w), attrs, out=m.root.outputs[0])
        return b.replace()
    if bias_c is None:
        bias = shift
    elif anchor.op == "Gemm":  # Y = alpha * A B + beta * C: the new C absorbs beta (beta becomes 1)
        bias = attrs["beta"] * bias_c.data.astype(np.float64) * scale + shift
        attrs["beta"] = 1.0
    else:
        bias = bias_c.data.astype(np.float64) * scale + shift
    new_b = b.const(f"{bias_name}_folded" if bias_name else f"{m['w']}_bias", bias.astype(w.dtype))
    b.op(anchor.op, (m["x"], new_w, new_b), attrs, out=m.root.outputs[0])
    return b.replace()


BATCHNORM = op("BatchNormalization", ANCHOR, const("s"), const("b"), const("mean"), const("var"))
RULES: tuple[Rule, ...] = (
    Rule("batchnorm_folded", BATCHNORM, _fold),
    Rule("mul_folded", op("Mul", ANCHOR, const("k")), _fold),
    Rule("div_folded", op("Div", ANCHOR, const("k")), _fold),
    Rule("add_folded", op("Add", ANCHOR, const("k")), _fold),
    Rule("sub_folded", op("Sub", ANCHOR, const("k")), _fold),
)


def fold_batchnorm(graph: Graph) -> PassResult:
    """Fold per-channel affine ops into the preceding anchor's constants."""
    return rewrite_graph(graph, RULES)
