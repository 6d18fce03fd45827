"""fold_constants: evaluate nodes whose inputs are all constant, and static shape arithmetic.

    %s = Shape(%x: f32[1,3,8,8])            ->  const %s: i64[4] = [1, 3, 8, 8]
    %y = Add(const %a, const %b)             ->  const %y = a + b   (by the reference interpreter)

Preconditions: deterministic ops (not the Random* family) without subgraphs. Results larger
than MAX_FOLD_BYTES stay nodes, so that a small constant expanded into a huge tensor is not
materialised in the artifact: each is a rejection (`ember explain fold_constants`), and is
counted as `too_large` in the stats of a run that folded something else (a run that only
declined is no change, so a second run still has empty stats).

After a round that folded something the graph is retyped (a Pad whose pads torch computes
through a rank-2 tensor had fresh dims until the pads became a constant) and folded again,
since the now static shapes fold in turn, until a round folds nothing (at most MAX_ROUNDS).
"""

from __future__ import annotations

import numpy as np

from ember.compiler import dtypes
from ember.compiler.infer import retype, tracked_values
from ember.compiler.interp import run
from ember.compiler.ir import Const, Graph, Node
from ember.compiler.rewrite import PassResult, Rejection, count

MAX_FOLD_BYTES = 16 * 1024 * 1024
MAX_ROUNDS = 8
# Ops whose result depends on more than their inputs.
NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"})


def _eval(node: Node, consts: dict[str, np.ndarray]) -> list[np.ndarray]:
    inputs = tuple(v for v in dict.fromkeys(n for n in node.inputs if n))
    body = Graph((), (node,), node.output_names, tuple(Const(n, consts[n]) for n in inputs), name="fold")
    result = run(body, {}, check=False)
    return [result[n] for n in node.output_names]


def fold_constants(graph: Graph) -> PassResult:
    """Replace constant-computable node outputs by constants (same names), retyping and
    folding again while a round folds something."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    for _ in range(MAX_ROUNDS):
        result = _fold_round(graph)
        rejections = result.rejections
        if not result.stats:
            break
        for key, n in result.stats.items():
            count(stats, key, n)
        graph = retype(result.graph)
    return PassResult(graph, stats, rejections)


def _fold_round(graph: Graph) -> PassResult:
    """One pass over the nodes, in order."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    consts = {c.name: c.data for c in graph.consts}
    known = tracked_values(graph)
    nodes: list[Node] = []
    new_consts: list[Const] = []
    for node in graph.nodes:
        if node.op in NOT_FOLDABLE or any(True for _ in node.subgraphs()):
            nodes.append(node)
            continue
        # Static shape arithmetic: contents fully known as integers.
        if len(node.outputs) == 1 and node.outputs[0].name in known and node.outputs[0].type.static:
            value = known[node.outputs[0].name]
            t = node.outputs[0].type
            if all(isinstance(v, int) for v in value) and (t.dtype in dtypes.INTS or t.dtype == "bool"):
                data = np.array(value, dtype=t.np_dtype).reshape([int(d) for d in t.shape])
                consts[node.outputs[0].name] = data
                new_consts.append(Const(node.outputs[0].name, data))
                count(stats, "shapes_folded")
                continue
        present = [n for n in node.inputs if n]
        if not present or not all(n in consts for n in present):
            nodes.append(node)
            continue
        size = sum(int(np.prod([d for d in v.type.shape if isinstance(d, int)], dtype=np.int64)) * v.type.np_dtype.itemsize
                   for v in node.outputs)
        if size > MAX_FOLD_BYTES:
            count(stats, "too_large")
            rejections.append(Rejection("fold", node.name, node.op,
                                        f"the result would be {size} bytes (cap {MAX_FOLD_BYTES})"))
            nodes.append(node)
            continue
        results = _eval(node, consts)
        for value, data in zip(node.outputs, results):
            data = np.asarray(data, dtype=value.type.np_dtype)
            consts[value.name] = data
            new_consts.append(Const(value.name, data, value.quant))
        count(stats, "nodes_folded")
    if not stats.get("nodes_folded") and not stats.get("shapes_folded"):
        return PassResult(graph, {}, rejections)  # `too_large` alone is no change: keep stats empty
    return PassResult(graph.replace(nodes=tuple(nodes), consts=graph.consts + tuple(new_consts)), stats, rejections)
