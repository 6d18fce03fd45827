"""cse: common subexpression elimination.

    %a = Op(%x) {k=v}
    %b = Op(%x) {k=v}      ->  reads of %b read %a; %b's node is removed

Preconditions: same op, same inputs, equal attributes, no subgraphs, and the duplicate's
outputs are not graph outputs (their names are the model's interface). Identical small
constants are merged the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.compiler.ir import Graph, Node
from ember.compiler.rewrite import PassResult, count, rename_uses, without_unused_consts

MAX_CONST_DEDUP = 1024  # elements: compare small constants by value


def _key(node: Node) -> tuple[Any, ...] | None:
    if any(True for _ in node.subgraphs()):
        return None
    attrs = []
    for k, v in node.attrs.items():
        if isinstance(v, np.ndarray):
            v = ("tensor", str(v.dtype), v.shape, v.tobytes())
        attrs.append((k, v))
    return (node.op, node.inputs, len(node.outputs), tuple(attrs))


def cse(graph: Graph) -> PassResult:
    """Merge duplicate nodes and duplicate small constants."""
    stats: dict[str, int] = {}
    outputs = set(graph.outputs)
    mapping: dict[str, str] = {}
    seen_consts: dict[tuple[Any, ...], str] = {}
    for const in graph.consts:
        if const.data.size > MAX_CONST_DEDUP or const.name in outputs or const.quant or const.facts:
            continue
        key = (str(const.data.dtype), const.data.shape, const.data.tobytes())
        if key in seen_consts:
            mapping[const.name] = seen_consts[key]
            count(stats, "consts_merged")
        else:
            seen_consts[key] = const.name
    seen: dict[tuple[Any, ...], Node] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        inputs = tuple(mapping.get(n, n) for n in node.inputs)
        probe = Node(node.op, inputs, node.outputs, node.attrs)
        key = _key(probe)
        if key is not None and key in seen and not any(v.name in outputs for v in node.outputs):
            first = seen[key]
            if all(a.type == b.type for a, b in zip(first.outputs, node.outputs)):
                mapping.update((b.name, a.name) for a, b in zip(first.outputs, node.outputs))
                count(stats, "nodes_merged")
                continue
        if key is not None:
            seen.setdefault(key, probe)
        kept.append(node)
    if not stats:
        return PassResult(graph, {})
    merged = rename_uses(graph.replace(nodes=tuple(kept)), mapping)
    merged, _ = without_unused_consts(merged)
    return PassResult(merged, stats)
