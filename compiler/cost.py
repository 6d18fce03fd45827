"""Static cost estimates: multiply-accumulates and FLOPs per node from its types.

Symbolic dims count as 1 (the estimate is per unit of each symbol, e.g. per batch item).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ember.compiler.dims import Dim
from ember.compiler.ir import Graph, Node, TensorType


def _n(shape: tuple[Dim, ...]) -> int:
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))


def node_macs(node: Node, types: Callable[[str], TensorType]) -> int:
    """Multiply-accumulates of matrix-like ops (Conv, ConvTranspose, MatMul, Gemm, Attention)."""
    out = node.outputs[0].type
    if node.op in ("Conv", "ConvInteger", "QLinearConv") and len(node.inputs) > 1:
        w = types(node.inputs[1 if node.op != "QLinearConv" else 3]).shape
        return _n(out.shape) * _n(w[1:])
    if node.op == "ConvTranspose":
        x, w = types(node.inputs[0]).shape, types(node.inputs[1]).shape
        return _n(x) * _n(w[1:])
    if node.op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a = types(node.inputs[0]).shape
        k = a[-1] if node.op != "Gemm" or not node.attrs.get("transA") else a[0]
        return _n(out.shape) * (k if isinstance(k, int) else 1)
    if node.op == "Fused":
        body: Graph = node.attrs["body"]
        return graph_macs(body)
    return 0


def node_flops(node: Node, types: Callable[[str], TensorType]) -> int:
    """FLOPs: 2 per MAC for matrix-like ops, one per output element for the rest."""
    macs = node_macs(node, types)
    if macs:
        return 2 * macs
    return sum(_n(v.type.shape) for v in node.outputs if v.type.dtype.startswith(("f", "b")) and v.type.dtype != "bool")


def graph_macs(graph: Graph) -> int:
    """Total MACs of a graph."""
    return sum(node_macs(n, _types(graph)) for n in graph.nodes)


def _types(graph: Graph) -> Callable[[str], TensorType]:
    return lambda name: graph.value(name).type


def per_op(graph: Graph) -> dict[str, tuple[int, int, int]]:
    """op type -> (node count, MACs, FLOPs)."""
    table: dict[str, list[int]] = {}
    types = _types(graph)
    for node in graph.nodes:
        row = table.setdefault(node.op, [0, 0, 0])
        row[0] += 1
        row[1] += node_macs(node, types)
        row[2] += node_flops(node, types)
    return {k: (v[0], v[1], v[2]) for k, v in table.items()}
