"""cse: common subexpression elimination.

    %a = Op(%x) {k=v}
    %b = Op(%x) {k=v}      ->  reads of %b read %a; %b's node is removed

Preconditions: same op, same inputs, equal attributes, no subgraphs, and the duplicate's
outputs are not graph outputs (their names are the model's interface). Identical small
constants are merged the same way. Output types must be equal, up to the dims each node's
inference named after its own outputs (`NonZero_1_output_0_1` against `NonZero_output_0_1`:
two NonZero of one mask, as exporters write `a[mask]` and `b[mask]`); merging such a pair
retypes the graph, so what read the duplicate's dims reads the kept node's.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ember.compiler.infer import retype
from ember.compiler.ir import Graph, Node
from ember.compiler.ops.registry import _symbol
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


def _renamed(dim: Any, dims: dict[str, str]) -> Any:
    """A dim with the merged nodes' run-time dims replaced by the kept ones' (in expressions too)."""
    if not isinstance(dim, str) or not dims:
        return dim
    return re.sub(r"[A-Za-z_][A-Za-z0-9_]*", lambda m: dims.get(m.group(0), m.group(0)), dim)


def _same_types(first: Node, node: Node, dims: dict[str, str]) -> dict[str, str] | None:
    """The run-time dims to rename when the outputs' types agree (after the renames so far,
    and up to the dims each node's inference named after its own outputs), else None."""
    own = re.compile(rf"^(?:{'|'.join(re.escape(_symbol(v.name)) for v in node.outputs)})_\d+$")
    mine = re.compile(rf"^(?:{'|'.join(re.escape(_symbol(v.name)) for v in first.outputs)})_\d+$")
    found: dict[str, str] = {}
    for a, b in zip(first.outputs, node.outputs):
        if a.type.dtype != b.type.dtype or a.type.rank != b.type.rank:
            return None
        for x, y in zip(a.type.shape, b.type.shape):
            y = _renamed(y, dims)
            if x == y:
                continue
            if not (isinstance(x, str) and isinstance(y, str) and mine.match(x) and own.match(y)):
                return None
            found[y] = x
    return found


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
    dims: dict[str, str] = {}  # a merged node's run-time dims -> the kept node's
    for node in graph.nodes:
        inputs = tuple(mapping.get(n, n) for n in node.inputs)
        probe = Node(node.op, inputs, node.outputs, node.attrs)
        key = _key(probe)
        if key is not None and key in seen and not any(v.name in outputs for v in node.outputs):
            first = seen[key]
            found = _same_types(first, node, dims)
            if found is not None:
                mapping.update((b.name, a.name) for a, b in zip(first.outputs, node.outputs))
                dims.update(found)
                count(stats, "nodes_merged")
                continue
        if key is not None:
            seen.setdefault(key, probe)
        kept.append(node)
    if not stats:
        return PassResult(graph, {})
    merged = rename_uses(graph.replace(nodes=tuple(kept)), mapping)
    merged, _ = without_unused_consts(merged)
    return PassResult(retype(merged) if dims else merged, stats)
