"""inline_branches: an If whose condition is known at compile time becomes its taken branch.

    %y = If(%c) {then_branch: T, else_branch: E}    (%c constant, or contents inference knows)
        ->  T's (or E's) nodes and constants in the enclosing graph,  %y = Identity(T's output)

Exporters write such Ifs for checks on shapes (`if x.size(0) == 1`) that a static or symbolic
shape settles; the code generator compiles plain dataflow, so inlining them is what lets such a
model compile, and what lets the passes after it (folding, fusion) see through the branch.

Preconditions: the condition holds one element whose value `tracked_values` knows (a constant,
or shape arithmetic inference resolved). Values the branch defines keep their names unless the
enclosing graph already has them (then they get fresh ones, and every read inside the branch,
nested subgraphs included, follows). The If's outputs keep their names through Identity nodes,
which `simplify` then forwards.
"""

from __future__ import annotations

from ember.compiler.infer import tracked_values
from ember.compiler.ir import Const, Graph, Namer, Node, Value
from ember.compiler.rewrite import PassResult, Rejection, count, rename_uses


def _known_condition(graph: Graph, node: Node, known: dict) -> bool | None:
    """The If's condition as a bool when it is known at compile time, else None."""
    name = node.inputs[0]
    const = graph.const(name)
    if const is not None:
        return bool(const.data.reshape(-1)[0]) if const.data.size == 1 else None
    contents = known.get(name)
    if contents is not None and len(contents) == 1 and isinstance(contents[0], int):
        return bool(contents[0])
    return None


def _inline(branch: Graph, node: Node, namer: Namer) -> tuple[list[Node], list[Const]]:
    """The branch's nodes and constants, renamed where they collide, then one Identity per If
    output reading the branch's result."""
    defined = [c.name for c in branch.consts] + [v.name for n in branch.nodes for v in n.outputs]
    renames = {}
    for name in defined:
        fresh = namer(name)
        if fresh != name:
            renames[name] = fresh
    body = rename_uses(branch, renames, outputs=True)
    nodes = [Node(n.op, n.inputs, tuple(Value(renames.get(v.name, v.name), v.type, v.quant) for v in n.outputs), n.attrs)
             for n in body.nodes]
    consts = [Const(renames.get(c.name, c.name), c.data, c.quant, c.facts) for c in branch.consts]
    for out, result in zip(node.outputs, body.outputs):
        nodes.append(Node("Identity", (result,), (out,)))
    return nodes, consts


def inline_branches(graph: Graph) -> PassResult:
    """Every If with a known condition replaced by its taken branch, Ifs nested in a taken
    branch too (the enclosing graph only: an If inside a Loop body stays)."""
    stats: dict[str, int] = {}
    result = PassResult(graph)
    while True:
        step = _inline_round(result.graph)
        if not step.stats:
            return PassResult(result.graph, stats, step.rejections)
        count(stats, "ifs_inlined", step.stats["ifs_inlined"])
        result = step


def _inline_round(graph: Graph) -> PassResult:
    """One pass over the enclosing graph's Ifs."""
    if not any(n.op == "If" for n in graph.nodes):
        return PassResult(graph)
    known = tracked_values(graph)
    taken = {id(n): _known_condition(graph, n, known) for n in graph.nodes if n.op == "If"}
    # Names a branch keeps unless they are taken: the enclosing graph's, and those of every
    # subgraph that stays (a Loop body, an If decided at run time); each inlined branch's
    # names are taken for the ones after it.
    reserved = {v.name for v in graph.inputs} | {c.name for c in graph.consts}
    for node in graph.nodes:
        reserved.update(v.name for v in node.outputs)
        if taken.get(id(node)) is None:
            for sub in node.subgraphs():
                reserved.update(sub.names())
    namer = Namer(reserved)
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    nodes: list[Node] = []
    consts = list(graph.consts)
    for node in graph.nodes:
        if node.op != "If":
            nodes.append(node)
            continue
        if taken[id(node)] is None:
            rejections.append(Rejection("inline_branches", node.name, node.op, "the condition is computed at run time"))
            nodes.append(node)
            continue
        inlined, new_consts = _inline(node.attrs["then_branch" if taken[id(node)] else "else_branch"], node, namer)
        nodes += inlined
        consts += new_consts
        count(stats, "ifs_inlined")
    if not stats:
        return PassResult(graph, {}, rejections)
    return PassResult(graph.replace(nodes=tuple(nodes), consts=tuple(consts)), stats, rejections)
