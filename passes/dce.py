"""dce: remove nodes and constants that no graph output depends on.

    %t = Op(...)   (nothing reads %t, directly or through subgraphs)  ->  (removed)

Preconditions: none. Multi-output nodes stay while any output is read.
"""

from __future__ import annotations

from ember.compiler.ir import Graph, node_uses
from ember.compiler.rewrite import PassResult, without_unused_consts


def dce(graph: Graph) -> PassResult:
    """Dead code elimination (nodes, then constants)."""
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(v.name in needed for v in node.outputs):
            kept.append(node)
            needed.update(n for n in node_uses(node) if n)
    removed = len(graph.nodes) - len(kept)
    pruned, consts = without_unused_consts(graph.replace(nodes=tuple(reversed(kept))))
    stats = {k: v for k, v in (("nodes_removed", removed), ("consts_removed", consts)) if v}
    return PassResult(pruned if stats else graph, stats)
