"""simplify: identities and no-ops, each rule with its identity.

    Identity(x)                    -> x
    Dropout(x)  (inference)        -> x
    x * 1, 1 * x, x / 1            -> x          (when broadcasting does not change x's type)
    x + 0, 0 + x, x - 0            -> x
    Reshape(x) to x's own shape    -> x
    Reshape(Reshape(x, s1), s2)    -> Reshape(x, s2)
    Transpose(Transpose(x, p), q)  -> x          when q∘p is the identity
    Transpose(Transpose(x, p), q)  -> Transpose(x, q∘p)   when the inner one has no other reader
    Cast(x, to=dtype(x))           -> x
    Squeeze(Unsqueeze(x, a), a)    -> x
    Unsqueeze(Squeeze(x, a), a)    -> x          (x's squeezed dims were 1)

A rule never fires on a node whose output is a graph output (that name is the model's
interface); it says so, like every other rejection, for `ember explain simplify`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ember.compiler.ir import Graph, Node
from ember.compiler.rewrite import MAX_ROUNDS, PassResult, Rejection, count, rename_uses

# A rule returns the name of the value that replaces the node's single output, a new node
# replacing it, or a rejection reason (str).
Rule = Callable[[Graph, Node], "str | Node | Rejection"]


def _reject(rule: str, node: Node, reason: str) -> Rejection:
    return Rejection(rule, node.name, node.op, reason)


def _const(graph: Graph, name: str) -> np.ndarray | None:
    c = graph.const(name)
    return c.data if c is not None else None


def _passthrough(graph: Graph, node: Node) -> str | Rejection:
    if len(node.outputs) > 1 and graph.consumers(node.outputs[1].name):
        return _reject("identity", node, "the mask output is used")
    return node.inputs[0]


def _neutral(value: float, positions: tuple[int, ...], rule: str) -> Rule:
    def apply(graph: Graph, node: Node) -> str | Rejection:
        for k in positions:
            data = _const(graph, node.inputs[k])
            other = node.inputs[1 - k]
            if data is None:
                continue
            if not np.all(data == value):
                return _reject(rule, node, f"constant operand is not all {value:g}")
            if graph.value(other).type != node.outputs[0].type:
                return _reject(rule, node, "broadcasting with the constant changes the shape or dtype")
            return other
        return _reject(rule, node, "no constant operand")

    return apply


def _reshape(graph: Graph, node: Node) -> str | Node | Rejection:
    src = graph.value(node.inputs[0]).type
    if src == node.outputs[0].type and src.static:
        return node.inputs[0]
    producer = graph.producer(node.inputs[0])
    if producer is not None and producer.op == "Reshape" and len(graph.consumers(producer.outputs[0].name)) == 1:
        return Node("Reshape", (producer.inputs[0], node.inputs[1]), node.outputs, node.attrs)
    return _reject("reshape", node, "changes the shape and its input is not a single-use Reshape")


def _transpose(graph: Graph, node: Node) -> str | Node | Rejection:
    producer = graph.producer(node.inputs[0])
    if producer is None or producer.op != "Transpose":
        return _reject("transpose_pair", node, "input is not a Transpose")
    rank = node.outputs[0].type.rank
    p = producer.attrs.get("perm") or tuple(reversed(range(rank)))
    q = node.attrs.get("perm") or tuple(reversed(range(rank)))
    composed = tuple(p[i] for i in q)
    if composed == tuple(range(rank)):
        return producer.inputs[0]
    if len(graph.consumers(producer.outputs[0].name)) == 1:  # Transpose(Transpose(x, p), q) = Transpose(x, p∘q)
        return Node("Transpose", (producer.inputs[0],), node.outputs, {"perm": composed})
    return _reject("transpose_pair", node, f"perms {list(p)} then {list(q)} do not cancel and the inner one is shared")


def _cast(graph: Graph, node: Node) -> str | Rejection:
    if graph.value(node.inputs[0]).type.dtype == node.attrs["to"]:
        return node.inputs[0]
    return _reject("cast", node, "changes the dtype")


def _squeeze_pair(inner_op: str) -> Rule:
    def apply(graph: Graph, node: Node) -> str | Rejection:
        producer = graph.producer(node.inputs[0])
        if producer is None or producer.op != inner_op:
            return _reject("squeeze_pair", node, f"input is not {inner_op}")
        a = _const(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        b = _const(graph, producer.inputs[1]) if len(producer.inputs) > 1 and producer.inputs[1] else None
        if a is None or b is None or sorted(a.reshape(-1).tolist()) != sorted(b.reshape(-1).tolist()):
            return _reject("squeeze_pair", node, "axes differ or are not constant")
        if graph.value(producer.inputs[0]).type != node.outputs[0].type:
            return _reject("squeeze_pair", node, "the pair does not restore the input's type")
        return producer.inputs[0]

    return apply


RULES: dict[str, tuple[str, Rule]] = {
    "Identity": ("identity", _passthrough),
    "Dropout": ("identity", _passthrough),
    "Mul": ("mul_one", _neutral(1.0, (1, 0), "mul_one")),
    "Div": ("div_one", _neutral(1.0, (1,), "div_one")),
    "Add": ("add_zero", _neutral(0.0, (1, 0), "add_zero")),
    "Sub": ("sub_zero", _neutral(0.0, (1,), "sub_zero")),
    "Reshape": ("reshape", _reshape),
    "Transpose": ("transpose_pair", _transpose),
    "Cast": ("cast", _cast),
    "Squeeze": ("squeeze_pair", _squeeze_pair("Unsqueeze")),
    "Unsqueeze": ("squeeze_pair", _squeeze_pair("Squeeze")),
}


def _round(graph: Graph, stats: dict[str, int], rejections: list[Rejection]) -> Graph:
    outputs = set(graph.outputs)
    mapping: dict[str, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        entry = RULES.get(node.op)
        if entry is None or mapping.keys() & set(node.inputs):
            nodes.append(node)
            continue
        rule, fn = entry
        if node.outputs[0].name in outputs:
            rejections.append(_reject(rule, node, "its output is a graph output"))
            nodes.append(node)
            continue
        outcome = fn(graph, node)
        if isinstance(outcome, Rejection):
            rejections.append(outcome)
            nodes.append(node)
        elif isinstance(outcome, Node):
            nodes.append(outcome)
            count(stats, rule)
        else:
            mapping[node.outputs[0].name] = outcome
            count(stats, rule)
    return rename_uses(graph.replace(nodes=tuple(nodes)), mapping)


def simplify(graph: Graph) -> PassResult:
    """Apply the identities above to a fixed point."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    for _ in range(MAX_ROUNDS):
        before = dict(stats)
        rejections = []
        graph = _round(graph, stats, rejections)
        if stats == before:
            break
    else:
        raise RuntimeError(f"simplify did not reach a fixed point in {MAX_ROUNDS} rounds: {stats}")
    if stats:
        from ember.passes.dce import dce

        graph = dce(graph).graph
    return PassResult(graph, stats, rejections)
