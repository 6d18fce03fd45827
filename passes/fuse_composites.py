"""fuse_composites: recognise decomposed composites and rewrite them to single IR ops.

    y = 0.5 * x * (1 + erf(x / sqrt(2)))                          ->  y = Gelu(x)
    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   ->  y = Gelu(x) {approximate="tanh"}
    m = ReduceMean(x, [-1]); d = x - m; v = ReduceMean(d * d or d ^ 2, [-1]);
    y = d / Sqrt(v + eps) [* g] [+ b]                              ->  y = LayerNormalization(x, g, b) {epsilon}
    e = Exp(x - ReduceMax(x, [a])); y = e / ReduceSum(e, [a])      ->  y = Softmax(x) {axis=a}

    s = MatMul(Q, KT) * c (or / c); [s = s + mask]; p = Softmax(s, axis=-1); y = MatMul(p, V)
        ->  K = Transpose(KT, perm=[0,1,3,2]); y = Attention(Q, K, V[, mask]) {scale=c}
        (4-D [batch, heads, seq, head] operands; the new Transpose usually cancels against the
        exporter's own in simplify)

Preconditions: every intermediate value has exactly one reader (so removing the pattern
removes nothing else) and constants match the formula to 1e-4. The replaced nodes become
dead; dce removes them.
"""

from __future__ import annotations

import math

from ember.compiler.ir import Graph, Namer, Node, Value
from ember.compiler.rewrite import PassResult, Rejection, count, new_node

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


def _axes(graph: Graph, node: Node) -> list[int] | None:
    """Constant reduction axes of a Reduce* node (normalised), None if unknown."""
    if len(node.inputs) < 2 or not node.inputs[1]:
        return None
    c = graph.const(node.inputs[1])
    if c is None:
        return None
    rank = graph.value(node.inputs[0]).type.rank
    return sorted(int(a) % rank for a in c.data.reshape(-1))


def _trailing(axes: list[int] | None, rank: int) -> bool:
    return bool(axes) and axes == list(range(rank - len(axes), rank))  # type: ignore[arg-type]


def _layernorm(graph: Graph, sub: Node) -> tuple[str, Node, list[str], float, int]:
    """From d = x - mean(x): (x, final node, [gamma, beta] names, epsilon, axis)."""
    x, mean_name = sub.inputs
    mean = _producer(graph, mean_name, "ReduceMean")
    rank = graph.value(x).type.rank
    axes = _axes(graph, mean)
    if mean.inputs[0] != x or not mean.attrs["keepdims"] or not _trailing(axes, rank):
        raise _NoMatch("the mean is not over x's trailing axes with keepdims")
    readers = graph.consumers(sub.outputs[0].name)
    square = next((r for r in readers if r.op in ("Pow", "Mul")), None)
    div = next((r for r in readers if r.op == "Div" and r.inputs[0] == sub.outputs[0].name), None)
    if square is None or div is None or len(readers) != 2:
        raise _NoMatch("x - mean is not both squared and divided")
    if square.op == "Pow" and abs((_scalar(graph, square.inputs[1]) or 0) - 2.0) > TOL:
        raise _NoMatch("the deviation is not squared")
    if square.op == "Mul" and square.inputs[0] != square.inputs[1]:
        raise _NoMatch("the deviation is not squared")
    var = _single(graph, square.outputs[0].name)
    if var.op != "ReduceMean" or _axes(graph, var) != axes or not var.attrs["keepdims"]:
        raise _NoMatch("the variance is not a ReduceMean over the same axes")
    add = _single(graph, var.outputs[0].name)
    if add.op != "Add":
        raise _NoMatch("no epsilon added to the variance")
    eps_name = add.inputs[1] if add.inputs[0] == var.outputs[0].name else add.inputs[0]
    eps = _scalar(graph, eps_name)
    sqrt = _single(graph, add.outputs[0].name)
    if eps is None or sqrt.op != "Sqrt" or div.inputs[1] != sqrt.outputs[0].name:
        raise _NoMatch("the deviation is not divided by sqrt(var + eps)")
    final, params = div, []
    for op in ("Mul", "Add"):
        readers = graph.consumers(final.outputs[0].name)
        if len(readers) != 1 or readers[0].op != op:
            break
        nxt = readers[0]
        other = nxt.inputs[1] if nxt.inputs[0] == final.outputs[0].name else nxt.inputs[0]
        c = graph.const(other)
        if c is None or c.data.ndim > len(axes):  # type: ignore[arg-type]
            break
        params.append(other)
        final = nxt
    if len(params) == 1 and final.op == "Add":
        raise _NoMatch("a bias without a scale")
    return x, final, params, eps, rank - len(axes)  # type: ignore[arg-type]


def _softmax(graph: Graph, sub: Node) -> tuple[str, Node, int]:
    """From x - ReduceMax(x): (x, final Div, axis)."""
    x, mx_name = sub.inputs
    mx = _producer(graph, mx_name, "ReduceMax")
    axes = _axes(graph, mx)
    if mx.inputs[0] != x or not mx.attrs["keepdims"] or axes is None or len(axes) != 1:
        raise _NoMatch("not x - ReduceMax(x) over one axis")
    exp = _single(graph, sub.outputs[0].name)
    if exp.op != "Exp":
        raise _NoMatch("the shifted input is not exponentiated")
    readers = graph.consumers(exp.outputs[0].name)
    total = next((r for r in readers if r.op == "ReduceSum"), None)
    div = next((r for r in readers if r.op == "Div"), None)
    if total is None or div is None or len(readers) != 2 or _axes(graph, total) != axes or not total.attrs["keepdims"]:
        raise _NoMatch("exp is not divided by its sum over the same axis")
    if div.inputs != (exp.outputs[0].name, total.outputs[0].name):
        raise _NoMatch("exp is not divided by its sum")
    return x, div, axes[0]


def _attention(graph: Graph, softmax: Node) -> tuple[list[str], float, Node, str]:
    """From Softmax: ([Q, KT, V, mask?], scale, final MatMul, KT)."""
    t = softmax.outputs[0].type
    if t.rank != 4 or softmax.attrs["axis"] % 4 != 3:
        raise _NoMatch("not a softmax over the last axis of a 4-D tensor")
    src = graph.producer(softmax.inputs[0])
    mask = None
    if src is not None and src.op == "Add":
        left = graph.producer(src.inputs[0])
        if left is not None and left.op in ("Mul", "Div"):
            mask, src = src.inputs[1], left
        else:
            mask, src = src.inputs[0], graph.producer(src.inputs[1])
    if src is None or src.op not in ("Mul", "Div"):
        raise _NoMatch("the scores are not scaled by a constant")
    factor = next((_scalar(graph, n) for n in src.inputs if _scalar(graph, n) is not None), None)
    scores = next((n for n in src.inputs if _scalar(graph, n) is None), None)
    if factor is None or scores is None or factor == 0:
        raise _NoMatch("the scores are not scaled by a constant")
    scale = factor if src.op == "Mul" else 1.0 / factor
    qk = _producer(graph, scores, "MatMul")
    for name in (qk.outputs[0].name, src.outputs[0].name) + ((softmax.inputs[0],) if mask else ()):
        _single(graph, name)
    pv = _single(graph, softmax.outputs[0].name)
    if pv.op != "MatMul" or pv.inputs[0] != softmax.outputs[0].name:
        raise _NoMatch("the probabilities do not multiply V")
    q, kt, v = qk.inputs[0], qk.inputs[1], pv.inputs[1]
    if any(graph.value(n).type.rank != 4 for n in (q, kt, v)):
        raise _NoMatch("Q, K^T and V are not all 4-D")
    if mask is not None and graph.value(mask).type.dtype != t.dtype:
        raise _NoMatch("the mask is not additive in the scores' dtype")
    return [q, kt, v] + ([mask] if mask else []), scale, pv, kt


def fuse_composites(graph: Graph) -> PassResult:
    """Rewrite GELU (erf and tanh forms), LayerNorm and Softmax patterns to single ops."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    replaced: dict[str, Node] = {}
    extra_nodes: dict[str, list[Node]] = {}
    namer = Namer(graph)
    for node in graph.nodes:
        if node.op == "Sub":
            try:
                x, final, params, eps, axis = _layernorm(graph, node)
                if len(params) < 2:  # LayerNormalization needs a scale: add ones / zeros
                    raise _NoMatch("no constant scale and bias (not rewritten)")
                replaced[final.outputs[0].name] = new_node(graph, "LayerNormalization", (x, params[0], params[1]),
                                                           final.outputs, {"axis": axis, "epsilon": eps})
                count(stats, "layernorm")
                continue
            except _NoMatch as why:
                layer_why = str(why)
            try:
                x, final, axis = _softmax(graph, node)
                replaced[final.outputs[0].name] = new_node(graph, "Softmax", (x,), final.outputs, {"axis": axis})
                count(stats, "softmax")
            except _NoMatch as why:
                rejections.append(Rejection("layernorm/softmax", node.name, node.op, f"{layer_why}; {why}"))
            continue
        if node.op == "Softmax":
            try:
                operands, scale, final, kt = _attention(graph, node)
            except _NoMatch as why:
                rejections.append(Rejection("attention", node.name, node.op, str(why)))
                continue
            k_name = namer(f"{kt}_bhsd")
            kt_type = graph.value(kt).type
            k_type = type(kt_type)(kt_type.dtype, kt_type.shape[:2] + (kt_type.shape[3], kt_type.shape[2]))
            transpose = new_node(graph, "Transpose", (kt,), (Value(k_name, k_type),), {"perm": (0, 1, 3, 2)})
            attention = new_node(graph, "Attention", (operands[0], k_name, operands[2], *operands[3:]), final.outputs,
                                 {"scale": float(scale)})
            extra_nodes[final.outputs[0].name] = [transpose, attention]
            count(stats, "attention")
            continue
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
        replaced[final.outputs[0].name] = new_node(graph, "Gelu", (x,), final.outputs, {"approximate": approx})
        count(stats, f"gelu_{approx}")
    if not replaced and not extra_nodes:
        return PassResult(graph, {}, rejections)
    nodes: list[Node] = []
    for n in graph.nodes:
        key = n.outputs[0].name if n.outputs else ""
        if key in extra_nodes:
            nodes.extend(extra_nodes[key])
        else:
            nodes.append(replaced.get(key, n))
    from ember.passes.dce import dce

    return PassResult(dce(graph.replace(nodes=tuple(nodes))).graph, stats, rejections)


