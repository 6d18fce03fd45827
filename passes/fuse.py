"""fuse: operator fusion. Each group becomes one `Fused` node and, in the artifact, one kernel.

    %c = Conv(%x, W, b); %r = Relu(%c)                    ->  %r = Fused(%x, W, b) {kernel="conv_relu", body=...}
    %m = MatMul(%x, W); %a = Add(%m, B); %g = Gelu(%a)    ->  one group "matmul_add_gelu"
    %c = Conv(...); %s = Sigmoid(%c); %y = Mul(%c, %s)    ->  one group "conv_sigmoid_mul" (SiLU epilogue)
    %a = Add(%x, %y); %s = Sigmoid(%a); %p = Mul(%a, %s)  ->  one group (elementwise ops alone)

A group starts at an anchor (Conv, ConvTranspose, MatMul, Gemm, pooling, reductions) or, once
anchors have taken their epilogues, at an elementwise op, and grows by elementwise ops that
read its values. Its shape may be a DAG (the SiLU epilogue reads the Conv twice), but a group
has one output: every value but the last member's is read only inside the group, so the
Fused node can stand where the last member stood. A node joins only when none of its other
operands depends on the group (no cycle; checked on the networkx view). Ops that move data
(Reshape, Transpose, Concat, Gather, ...) are left alone, and a node on its own is a kernel
already, so groups of one are not made.

The body's inputs are the group's operands in first-use order (`argK`). Scalar constants and
integer constants of at most SMALL_CONST elements (exponents, clip bounds, axes, shapes) move
into the body, where code generation reads them; tensors of floats (weights, biases) stay
operands, so a kernel's signature does not depend on the size of its weights.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ember.compiler import dtypes
from ember.compiler.infer import MAX_TRACKED
from ember.compiler.ir import Const, Graph, Namer, Node, Value, free_names
from ember.compiler.rewrite import PassResult, Rejection, count, without_unused_consts

ANCHORS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "LpPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
    "ReduceSumSquare", "ReduceLogSumExp",
})
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Reciprocal", "Neg", "Abs", "Sqrt",
    "Exp", "Log", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Tanh", "Sigmoid",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Celu", "Selu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
    "Mish", "Swish", "ThresholdedRelu", "Shrink", "Clip", "Where", "Cast",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
})
# Views that keep the row-major element order: they join a group between its members when
# their shape operand is a constant, so that Gemm -> Reshape -> Add is one kernel. Never last:
# outside a kernel a view costs nothing.
VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
SMALL_CONST = 1024


def _reject(node: Node, reason: str) -> Rejection:
    return Rejection("group", node.name, node.op, reason)


class _Grouper:
    """Forms groups over one graph; `taken` holds the indices of nodes already grouped."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.view = graph.to_networkx()
        self.outputs = set(graph.outputs)
        self.taken: set[int] = set()
        self.rejections: list[Rejection] = []

    def _readers(self, members: list[int]) -> list[int]:
        inside = set(members)
        found = {self.index[id(r)] for m in members for v in self.graph.nodes[m].output_names
                 for r in self.graph.consumers(v)}
        return sorted(found - inside)

    def _admissible(self, members: list[int], i: int) -> str | None:
        """Why node i cannot join the group (None when it can)."""
        node = self.graph.nodes[i]
        if node.op in VIEWS:
            if any(name and self.graph.const(name) is None for name in node.inputs[1:]):
                return "a view whose shape is computed at run time"
        elif node.op not in ELEMENTWISE:
            return "not an elementwise op"
        if shape_arithmetic(node):
            return SHAPE_ARITHMETIC
        if i in self.taken:
            return "already in another group"
        if len(node.outputs) != 1:
            return "has several outputs"
        first = min(members)
        for name in node.inputs:
            producer = self.graph.producer(name) if name else None
            if producer is None:
                continue
            src = self.index[id(producer)]
            # A path from the group to another operand would make the Fused node depend on itself.
            if src not in members and src > first and any(nx.has_path(self.view, m, src) for m in members if m < src):
                return f"operand %{name} depends on the group (would be a cycle)"
        return None

    def _live(self, members: list[int]) -> list[str]:
        """Values of the group read outside it (or graph outputs)."""
        inside = set(members)
        live = []
        for m in members:
            for v in self.graph.nodes[m].output_names:
                readers = self.graph.consumers(v)
                if v in self.outputs or any(self.index[id(r)] not in inside for r in readers):
                    live.append(v)
        return live

    def grow(self, seed: int) -> list[int]:
        """The largest single-output group found by adding readers in graph order."""
        members = [seed]
        committed = [seed]
        while True:
            candidates = self._readers(members)
            chosen = None
            for i in candidates:
                why = self._admissible(members, i)
                if why is None:
                    chosen = i
                    break
                self.rejections.append(_reject(self.graph.nodes[i], f"not added to the group of %{self.graph.nodes[seed].name}: {why}"))
            if chosen is None:
                break
            members.append(chosen)
            live = self._live(members)
            last = self.graph.nodes[max(members)]
            # One output, the last member's; a view at the end gains nothing (it is free outside).
            if len(live) == 1 and live[0] in last.output_names and last.op not in VIEWS:
                committed = sorted(members)
        if len(committed) < len(members):
            left = [self.graph.nodes[i] for i in members if i not in committed]
            self.rejections.append(_reject(left[0], f"not added to the group of %{self.graph.nodes[seed].name}: "
                                                    "the group would have more than one output"))
        return committed


SHAPE_ARITHMETIC = "shape arithmetic (an integer vector of at most MAX_TRACKED entries) stays unfused: inference " \
    "follows its contents, which give later shapes, through the op itself and not through a Fused node"


def shape_arithmetic(node: Node) -> bool:
    """Whether a node computes a small integer vector or scalar (Shape -> Gather -> Mul -> ...):
    its contents are what inference tracks to type the Reshape or ConstantOfShape it feeds."""
    t = node.outputs[0].type
    return (t.dtype in dtypes.INTS or t.dtype == "bool") and t.rank <= 1 and all(isinstance(d, int) for d in t.shape) \
        and int(np.prod(t.shape)) <= MAX_TRACKED


def _label(nodes: list[Node]) -> str:
    return "_".join(n.op.lower() for n in nodes)[:64]


def _moves_in(data: np.ndarray) -> bool:
    """Whether a constant operand becomes part of the body (see the module docstring)."""
    return data.size == 1 or (data.dtype.kind in "biu" and data.size <= SMALL_CONST)


def _fused_node(graph: Graph, group: list[Node], namer: Namer) -> Node:
    """One Fused node for a group (members in graph order, the last one's output the result)."""
    inside = {v.name for n in group for v in n.outputs}
    out_old = group[-1].outputs[0]
    free = [n for n in free_names(Graph((), tuple(group), (out_old.name,), name="body")) if n not in inside]
    small = [n for n in free if (c := graph.const(n)) is not None and _moves_in(c.data)]
    operands = [n for n in free if n not in small]
    mapping = {name: namer(f"arg{k}") for k, name in enumerate(operands)}
    members = {id(n) for n in group}
    for name in small:  # a constant only this group reads moves in under its own name
        own = all(id(r) in members for r in graph.consumers(name)) and name not in graph.outputs
        mapping[name] = name if own else namer(name)
    mapping[out_old.name] = namer(f"{out_old.name}_out")
    nodes = []
    for n in group:
        inputs = tuple(mapping.get(x, x) for x in n.inputs)
        outs = tuple(Value(mapping.get(v.name, v.name), v.type, v.quant) for v in n.outputs)
        nodes.append(Node(n.op, inputs, outs, n.attrs))
    params = tuple(Value(mapping[name], graph.value(name).type, graph.value(name).quant) for name in operands)
    body_consts = tuple(Const(mapping[n], graph.const(n).data) for n in small)  # type: ignore[union-attr]
    label = _label(group)
    body = Graph(params, tuple(nodes), (mapping[out_old.name],), body_consts, name=label)
    return Node("Fused", tuple(operands), (out_old,), {"body": body, "kernel": label})


def fuse(graph: Graph) -> PassResult:
    """Form fusion groups (anchors with epilogues, then elementwise ops) as Fused nodes."""
    grouper = _Grouper(graph)
    groups: dict[int, list[int]] = {}  # index of the group's last node -> member indices
    for kinds in (ANCHORS, ELEMENTWISE):  # anchors claim their epilogues first
        for i, node in enumerate(graph.nodes):
            if node.op not in kinds or i in grouper.taken or len(node.outputs) != 1:
                continue
            if shape_arithmetic(node):
                grouper.rejections.append(_reject(node, SHAPE_ARITHMETIC))
                continue
            if node.outputs[0].name in grouper.outputs:
                continue
            members = grouper.grow(i)
            if len(members) > 1:  # a lone op is a kernel already
                grouper.taken.update(members)
                groups[members[-1]] = members
    if not groups:
        return PassResult(graph, {}, grouper.rejections)
    stats: dict[str, int] = {}
    namer = Namer(graph)
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        if i in groups:
            nodes.append(_fused_node(graph, [graph.nodes[k] for k in groups[i]], namer))
            count(stats, "groups")
            count(stats, "nodes_fused", len(groups[i]))
        elif i not in grouper.taken:
            nodes.append(node)
    fused, _ = without_unused_consts(graph.replace(nodes=tuple(nodes)))  # small constants moved into bodies
    return PassResult(fused, stats, grouper.rejections)
