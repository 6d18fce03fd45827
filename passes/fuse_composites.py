"""fuse_composites: recognise decomposed composites and rewrite them to single IR ops.

    y = 0.5 * x * (1 + erf(x / sqrt(2)))                          ->  y = Gelu(x)
    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   ->  y = Gelu(x) {approximate="tanh"}

(LayerNormalization, Softmax and attention arrive as single ONNX ops from the exporters ember
is tested with; their decomposed forms are not matched yet.)

Preconditions: every intermediate value has exactly one reader (so removing the pattern
removes nothing else) and constants match the formula to 1e-4. The replaced nodes become
dead; dce removes them.
"""

from __future__ import annotations

import math


from ember.compiler.ir import Graph, Node
from ember.compiler.rewrite import PassResult, Rejection, count

TOL = 1e-4


class _NoMatch(Exception):
    """A pattern step failed; the message is the rejection reason."""


def _scalar(graph: Graph, name: str) -> float | None:
    c = graph.const(name)
    if c is None or c.data.size != 1:
        return None
    return float(c.data.reshape(-1)[0])


def _single(graph: Graph, name: str) -> Node:
    readers = graph.consumers(name)
    if len(readers) != 1:
        raise _NoMatch(f"%{name} has {len(readers)} readers")
    return readers[0]


def _producer(graph: Graph, name: str, op: str) -> Node:
    node = graph.producer(name)
    if node is None or node.op != op:
        raise _NoMatch(f"%{name} is not produced by {op}")
    return node


def _split_const(graph: Graph, node: Node, want: float) -> str:
    """The non-constant operand of a binary node whose other operand is the scalar `want`."""
    for k in (0, 1):
        value = _scalar(graph, node.inputs[k])
        if value is not None and abs(value - want) <= TOL * max(1.0, abs(want)):
            return node.inputs[1 - k]
    raise _NoMatch(f"{node.op} %{node.name} has no constant {want:g} operand")


def _half_times(graph: Graph, factor: str, x: str) -> Node:
    """The node computing 0.5 * x * factor (either association); returns the final Mul."""
    mul = _single(graph, factor)
    if mul.op != "Mul":
        raise _NoMatch("1 + f(...) is not multiplied")
    other = mul.inputs[1] if mul.inputs[0] == factor else mul.inputs[0]
    if other == x:  # (x * factor) * 0.5
        final = _single(graph, mul.outputs[0].name)
        if final.op != "Mul" or _split_const(graph, final, 0.5) != mul.outputs[0].name:
            raise _NoMatch("x * (1 + f) is not halved")
        return final
    half = _producer(graph, other, "Mul")  # (x * 0.5) * factor
    if _split_const(graph, half, 0.5) != x:
        raise _NoMatch("the multiplier is not x * 0.5")
    return mul


def _gelu_erf(graph: Graph, erf: Node) -> tuple[str, Node, str]:
    arg = graph.producer(erf.inputs[0])
    if arg is None or arg.op not in ("Div", "Mul"):
        raise _NoMatch("erf's argument is not x / sqrt(2)")
    x = _split_const(graph, arg, math.sqrt(2) if arg.op == "Div" else 1 / math.sqrt(2))
    add = _single(graph, erf.outputs[0].name)
    if add.op != "Add" or _split_const(graph, add, 1.0) != erf.outputs[0].name:
        raise _NoMatch("erf(...) + 1 not found")
    return x, _half_times(graph, add.outputs[0].name, x), "none"


def _gelu_tanh(graph: Graph, tanh: Node) -> tuple[str, Node, str]:
    scaled = _producer(graph, tanh.inputs[0], "Mul")
    inner = _split_const(graph, scaled, math.sqrt(2 / math.pi))
    add = _producer(graph, inner, "Add")
    for k in (0, 1):
        x, cubic_term = add.inputs[k], add.inputs[1 - k]
        cubic = graph.producer(cubic_term)
        if cubic is None or cubic.op != "Mul":
            continue
        try:
            power = _producer(graph, _split_const(graph, cubic, 0.044715), "Pow")
        except _NoMatch:
            continue
        if power.inputs[0] == x and abs((_scalar(graph, power.inputs[1]) or 0) - 3.0) < TOL:
            break
    else:
        raise _NoMatch("x + 0.044715 * x^3 not found")
    one = _single(graph, tanh.outputs[0].name)
    if one.op != "Add" or _split_const(graph, one, 1.0) != tanh.outputs[0].name:
        raise _NoMatch("tanh(...) + 1 not found")
    return x, _half_times(graph, one.outputs[0].name, x), "tanh"


def fuse_composites(graph: Graph) -> PassResult:
    """Rewrite GELU patterns (erf and tanh forms) to Gelu nodes."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    replaced: dict[str, Node] = {}
    for node in graph.nodes:
        matcher = {"Erf": _gelu_erf, "Tanh": _gelu_tanh}.get(node.op)
        if matcher is None:
            continue
        try:
            x, final, approx = matcher(graph, node)
        except _NoMatch as why:
            rejections.append(Rejection(f"gelu_{node.op.lower()}", node.name, node.op, str(why)))
            continue
        if graph.value(x).type != final.outputs[0].type:
            rejections.append(Rejection(f"gelu_{node.op.lower()}", node.name, node.op, "broadcasting changes the type"))
            continue
        replaced[final.outputs[0].name] = Node("Gelu", (x,), final.outputs, {"approximate": approx})
        count(stats, f"gelu_{approx}")
    if not replaced:
        return PassResult(graph, {}, rejections)
    nodes = [replaced.get(n.outputs[0].name, n) if n.outputs else n for n in graph.nodes]
    from ember.passes.dce import dce

    return PassResult(dce(graph.replace(nodes=tuple(nodes))).graph, stats, rejections)


