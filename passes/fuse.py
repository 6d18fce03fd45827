"""fuse: operator fusion. Each group becomes one `Fused` node and, in the artifact, one kernel.

    %c = Conv(%x, W, b); %r = Relu(%c)          ->  %r = Fused(%x, W, b) {kernel="conv_relu", body=...}
    %m = MatMul(%x, W); %a = Add(%m, B); %g = Gelu(%a)  ->  one Fused group "matmul_add_gelu"
    %a = Add(%x, %y); %s = Sigmoid(%a); %p = Mul(%a, %s) ->  one Fused group (elementwise chain)

Groups: an anchor (Conv, ConvTranspose, MatMul, Gemm, pooling, reductions, Softmax,
LayerNormalization) followed by its chain of elementwise/broadcast epilogue ops, or a chain
of elementwise ops alone. A node joins a group only when the group's value it reads has no
reader outside the group (single-output groups), its other operands are computed outside
the group, and adding it creates no cycle (checked on the networkx view). Ops that move
data (Reshape, Transpose, Concat, Gather...) are left alone.
"""

from __future__ import annotations

import networkx as nx

from ember.compiler.ir import Const, Graph, Namer, Node, Value, free_names
from ember.compiler.rewrite import PassResult, Rejection, count, without_unused_consts

ANCHORS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "Softmax", "LogSoftmax", "LayerNormalization",
})
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Erf", "Gelu",
    "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "HardSigmoid", "HardSwish", "Softplus", "Where", "Cast",
    "Equal", "Less", "Greater", "Not", "And", "Or", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
})
# Anchors that may not take an epilogue (their legalized kernels are multi-stage).
NO_EPILOGUE = frozenset({"Softmax", "LogSoftmax", "LayerNormalization"})


def _label(nodes: list[Node]) -> str:
    return "_".join(n.op.lower() for n in nodes)[:64]


def _grow(graph: Graph, seed: Node, taken: set[int], index: dict[int, int], view: nx.DiGraph,
          outputs: set[str], rejections: list[Rejection]) -> list[Node]:
    """The group starting at `seed`: follow single readers while they are elementwise."""
    group = [seed]
    members = {index[id(seed)]}
    while True:
        tail = group[-1]
        if len(tail.outputs) != 1 or tail.outputs[0].name in outputs:
            break
        readers = graph.consumers(tail.outputs[0].name)
        if len(readers) != 1:
            if readers:
                rejections.append(Rejection("epilogue", tail.name, tail.op, f"{len(readers)} readers of its output"))
            break
        nxt = readers[0]
        i = index[id(nxt)]
        if nxt.op not in ELEMENTWISE or i in taken or len(nxt.outputs) != 1:
            rejections.append(Rejection("epilogue", nxt.name, nxt.op, "not an elementwise op" if nxt.op not in ELEMENTWISE else "already grouped"))
            break
        if group[0].op in NO_EPILOGUE:
            rejections.append(Rejection("epilogue", nxt.name, nxt.op, f"{group[0].op} takes no epilogue"))
            break
        # Cycle: another operand of nxt must not depend on the group.
        cyclic = False
        for name in nxt.inputs:
            producer = graph.producer(name) if name else None
            if producer is None or index[id(producer)] in members:
                continue
            src = index[id(producer)]
            if any(nx.has_path(view, m, src) for m in members):
                cyclic = True
                break
        if cyclic:
            rejections.append(Rejection("epilogue", nxt.name, nxt.op, "an operand depends on the group (would be a cycle)"))
            break
        group.append(nxt)
        members.add(i)
    return group


# Constants up to this many elements (axes, exponents, scalars) move into the body, where
# inference and code generation can read them; larger ones (weights) stay parameters.
SMALL_CONST = 1024


def _fused_node(graph: Graph, group: list[Node], namer: Namer) -> Node:
    """One Fused node for a group: body inputs renamed argK, outputs renamed NAME_out."""
    inside = {v.name for n in group for v in n.outputs}
    body = Graph((), tuple(group), (group[-1].outputs[0].name,), name="body")
    free = [n for n in free_names(body) if n not in inside]
    small = [n for n in free if graph.const(n) is not None and graph.const(n).data.size <= SMALL_CONST]  # type: ignore[union-attr]
    external = [n for n in free if n not in small]
    mapping = {name: namer(f"arg{k}") for k, name in enumerate(external)}
    mapping.update((name, namer(name)) for name in small)
    body_consts = tuple(Const(mapping[n], graph.const(n).data) for n in small)  # type: ignore[union-attr]
    out_old = group[-1].outputs[0]
    out_new = namer(f"{out_old.name}_out")
    mapping_out = {out_old.name: out_new}
    nodes = []
    for n in group:
        inputs = tuple(mapping.get(x, mapping_out.get(x, x)) for x in n.inputs)
        outs = tuple(Value(mapping_out.get(v.name, v.name), v.type, v.quant) for v in n.outputs)
        nodes.append(Node(n.op, inputs, outs, n.attrs))
    params = tuple(Value(mapping[name], graph.value(name).type, graph.value(name).quant) for name in external)
    label = _label(group)
    body = Graph(params, tuple(nodes), (out_new,), body_consts, name=label)
    return Node("Fused", tuple(external), (out_old,), {"body": body, "kernel": label})


def fuse(graph: Graph) -> PassResult:
    """Form fusion groups (anchors + epilogues, elementwise chains) as Fused nodes."""
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    view = graph.to_networkx()
    outputs = set(graph.outputs)
    taken: set[int] = set()
    groups: dict[int, list[Node]] = {}  # index of the group's last node -> members
    for node in graph.nodes:
        i = index[id(node)]
        if i in taken or node.op == "Fused":
            continue
        if node.op in ANCHORS or node.op in ELEMENTWISE:
            group = _grow(graph, node, taken, index, view, outputs, rejections)
            if len(group) == 1:
                continue  # a lone op is a kernel already: no group needed
            for member in group:
                taken.add(index[id(member)])
            groups[index[id(group[-1])]] = group
    if not groups:
        return PassResult(graph, {}, rejections)
    namer = Namer(graph)
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        if i in groups:
            nodes.append(_fused_node(graph, groups[i], namer))
            count(stats, "groups")
            count(stats, "nodes_fused", len(groups[i]))
        elif i not in taken:
            nodes.append(node)
    fused, _ = without_unused_consts(graph.replace(nodes=tuple(nodes)))  # small constants moved into bodies
    return PassResult(fused, stats, rejections)
