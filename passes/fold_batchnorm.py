"""fold_batchnorm: per-channel affine ops after a Conv / ConvTranspose / Gemm / MatMul
go into its weights and bias.

    %c = Conv(%x, W, b); %y = BatchNormalization(%c, s, B, m, v)
        ->  %y = Conv(%x, W * s/sqrt(v+eps) [per output channel], (b - m) * s/sqrt(v+eps) + B)
    %c = Conv(%x, W, b); %y = Mul(%c, k[C,1,1])     ->  %y = Conv(%x, W * k, b * k)
    %c = Conv(%x, W, b); %y = Add(%c, a[C,1,1])     ->  %y = Conv(%x, W, b + a)
    %g = MatMul(%x, W[K,N]); %y = Mul/Add(%g, k[N])  ->  the same on W's columns

Preconditions: the anchor's output has exactly one reader (the affine op), its weight and
bias are constants read by nothing else, the affine parameters are constants broadcasting
along the output-channel axis only, BatchNormalization is in inference mode.
"""

from __future__ import annotations

import numpy as np

from ember.compiler.ir import Const, Graph, Namer, Node
from ember.compiler.rewrite import PassResult, Rejection, count, without_unused_consts

ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _per_channel(data: np.ndarray, channels: int, axis_from_end: int, rank: int) -> np.ndarray | None:
    """data as a [channels] vector if it broadcasts only along the channel axis."""
    if data.ndim > rank:
        return None
    shape = (1,) * (rank - data.ndim) + data.shape
    axis = rank - axis_from_end
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(data.reshape(-1), (channels,)).astype(np.float64)


def _reject(node: Node, reason: str) -> Rejection:
    return Rejection("fold_affine", node.name, node.op, reason)


def _affine(graph: Graph, node: Node, channels: int, axis_from_end: int) -> tuple[np.ndarray, np.ndarray] | Rejection:
    """(scale, shift) of y = x * scale + shift for the affine node, per channel."""
    rank = node.outputs[0].type.rank
    consts = [graph.const(n) for n in node.inputs]
    if node.op == "BatchNormalization":
        if node.attrs.get("training_mode") or len(node.outputs) > 1:
            return _reject(node, "training mode")
        if not all(c is not None for c in consts[1:5]):
            return _reject(node, "statistics are not constant")
        s, b, m, v = (c.data.astype(np.float64) for c in consts[1:5])  # type: ignore[union-attr]
        scale = s / np.sqrt(v + node.attrs["epsilon"])
        return scale, b - m * scale
    other = consts[1] if consts[1] is not None else consts[0]
    if other is None:
        return _reject(node, "no constant operand")
    vec = _per_channel(other.data, channels, axis_from_end, rank)
    if vec is None:
        return _reject(node, "constant does not broadcast along the output channels only")
    if node.op == "Mul":
        return vec, np.zeros(channels)
    if node.op == "Add":
        return np.ones(channels), vec
    return _reject(node, "not an affine op")


def fold_batchnorm(graph: Graph) -> PassResult:
    """Fold per-channel affine ops into the preceding anchor's constants."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    namer = Namer(graph)
    outputs = set(graph.outputs)
    replaced: dict[int, Node] = {}
    removed: set[int] = set()
    new_consts: list[Const] = []
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op not in ("BatchNormalization", "Mul", "Add") or index[id(node)] in removed:
            continue
        anchor = graph.producer(node.inputs[0]) or (graph.producer(node.inputs[1]) if len(node.inputs) > 1 and node.op != "BatchNormalization" else None)
        if anchor is None or anchor.op not in ANCHORS or index[id(anchor)] in removed or index[id(anchor)] in replaced:
            continue
        if len(graph.consumers(anchor.outputs[0].name)) != 1 or anchor.outputs[0].name in outputs:
            rejections.append(_reject(node, "the anchor's output has other readers"))
            continue
        w = graph.const(anchor.inputs[1])
        if w is None or len(graph.consumers(w.name)) != 1:
            rejections.append(_reject(node, "the anchor's weight is not a constant of its own"))
            continue
        if anchor.op == "Gemm" and (anchor.attrs["transA"] or anchor.attrs["alpha"] != 1.0 or anchor.attrs["beta"] != 1.0):
            rejections.append(_reject(node, "Gemm with transA/alpha/beta"))
            continue
        if anchor.op == "MatMul" and w.data.ndim != 2:
            rejections.append(_reject(node, "MatMul weight is not 2-D"))
            continue
        out_t = anchor.outputs[0].type
        if anchor.op in ("Conv", "ConvTranspose"):
            channels, axis_from_end = int(out_t.shape[1]), out_t.rank - 1  # type: ignore[arg-type]
        else:
            channels, axis_from_end = int(out_t.shape[-1]), 1  # type: ignore[arg-type]
        affine = _affine(graph, node, channels, axis_from_end)
        if isinstance(affine, Rejection):
            rejections.append(affine)
            continue
        scale, shift = affine
        if node.op == "Add" and (anchor.op == "MatMul" or len(anchor.inputs) > 2):
            # A bias add after MatMul, or a second bias on Conv/Gemm: nothing to gain from
            # rewriting weights; the fuse pass makes it the anchor's epilogue.
            rejections.append(_reject(node, "a plain bias add; fuse makes it an epilogue"))
            continue
        bias_c = graph.const(anchor.inputs[2]) if len(anchor.inputs) > 2 and anchor.inputs[2] else None
        if len(anchor.inputs) > 2 and anchor.inputs[2] and (bias_c is None or len(graph.consumers(bias_c.name)) != 1):
            rejections.append(_reject(node, "the anchor's bias is not a constant of its own"))
            continue
        wd = w.data.astype(np.float64)
        if anchor.op == "Conv":
            wd = wd * scale.reshape((-1,) + (1,) * (wd.ndim - 1))
        elif anchor.op == "ConvTranspose":
            g = anchor.attrs["group"]
            wd = (wd.reshape((g, wd.shape[0] // g, wd.shape[1]) + wd.shape[2:]) * scale.reshape(g, 1, -1, *(1,) * (wd.ndim - 2))).reshape(wd.shape)
        elif anchor.op == "Gemm" and anchor.attrs["transB"]:
            wd = wd * scale.reshape(-1, 1)
        else:
            wd = wd * scale.reshape(1, -1)
        bias = bias_c.data.astype(np.float64).reshape(-1) if bias_c is not None else np.zeros(channels)
        bias = np.broadcast_to(bias, (channels,)) * scale + shift
        dtype = w.data.dtype
        w_name, b_name = namer(f"{w.name}_folded"), namer(f"{anchor.outputs[0].name}_bias")
        new_consts += [Const(w_name, wd.astype(dtype)), Const(b_name, bias.astype(dtype))]
        if anchor.op == "MatMul":  # MatMul has no bias operand: becomes Gemm-free MatMul + Add
            new_anchor = Node("MatMul", (anchor.inputs[0], w_name), anchor.outputs, anchor.attrs)
            add = Node("Add", (anchor.outputs[0].name, b_name), node.outputs, {})
            replaced[index[id(anchor)]] = new_anchor
            replaced[index[id(node)]] = add
        else:
            new_anchor = Node(anchor.op, (anchor.inputs[0], w_name, b_name), node.outputs, anchor.attrs)
            replaced[index[id(anchor)]] = new_anchor
            removed.add(index[id(node)])
        count(stats, f"{node.op.lower()}_folded" if node.op != "BatchNormalization" else "batchnorm_folded")
    if not stats:
        return PassResult(graph, {}, rejections)
    # Conv/Gemm anchors now define the affine node's output; move them to its position so
    # every reader still comes after its producer.
    nodes = []
    pending: dict[int, Node] = {}
    for i, node in enumerate(graph.nodes):
        if i in replaced and node.op in ANCHORS and i not in removed and replaced[i].outputs != node.outputs:
            pending[i] = replaced[i]
            continue
        if i in removed:
            anchor_i = next(k for k, v in pending.items() if v.outputs == node.outputs)
            nodes.append(pending.pop(anchor_i))
            continue
        nodes.append(replaced.get(i, node))
    out = graph.replace(nodes=tuple(nodes), consts=graph.consts + tuple(new_consts))
    out, _ = without_unused_consts(out)
    return PassResult(out, stats, rejections)
