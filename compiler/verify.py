"""The IR verifier: the invariants every pass must keep.

- single definition: every value name is defined once (inputs, constants, node outputs,
  subgraphs included; a subgraph may not shadow an enclosing name);
- order: every node reads only names defined before it (or in an enclosing graph); a read of
  a name defined later is reported as a cycle when the graph has one, else as an order error;
- no dangling reads; outputs defined;
- every op is in the op table, with its arity and attributes (required present, no unknown);
- stored output types agree with the op table's inference.
"""

from __future__ import annotations

import networkx as nx

from ember.compiler.errors import InferError, VerifyError
from ember.compiler.infer import Scope, infer_node
from ember.compiler.ir import Graph, Node, node_uses


def verify(graph: Graph) -> None:
    """Raise VerifyError naming the first offending node; return None when the graph is sound."""
    _verify(graph, parent=None, outer_names=set())


def _verify(graph: Graph, parent: Scope | None, outer_names: set[str]) -> None:
    from ember.compiler.ops import OPS, REQUIRED

    where = f"graph {graph.name}"
    defined: set[str] = set()

    def define(name: str, what: str) -> None:
        if not name:
            raise VerifyError(f"{where}: {what} has an empty name")
        if name in defined or name in outer_names:
            raise VerifyError(f"{where}: value {name!r} is defined twice (again by {what})")
        defined.add(name)

    scope = Scope(parent=parent)
    for value in graph.inputs:
        define(value.name, f"input {value.name!r}")
        scope.types[value.name] = value.type
    for const in graph.consts:
        define(const.name, f"constant {const.name!r}")
        scope.define_const(const.name, const.data)
    later = {v.name: i for i, node in enumerate(graph.nodes) for v in node.outputs}
    for index, node in enumerate(graph.nodes):
        label = f"{where}: node {node.name!r} ({node.op})"
        opdef = OPS.get(node.op)
        if opdef is None:
            raise VerifyError(f"{label}: operator {node.op} is not in the op table")
        lo, hi = opdef.inputs
        if len(node.inputs) < lo or (hi >= 0 and len(node.inputs) > hi):
            raise VerifyError(f"{label}: {len(node.inputs)} inputs, the op takes {lo} to {hi if hi >= 0 else 'any'}")
        olo, ohi = opdef.outputs
        if len(node.outputs) < olo or (ohi >= 0 and len(node.outputs) > ohi):
            raise VerifyError(f"{label}: {len(node.outputs)} outputs, the op gives {olo} to {ohi if ohi >= 0 else 'any'}")
        unknown = sorted(set(node.attrs) - set(opdef.attrs))
        if unknown:
            raise VerifyError(f"{label}: unknown attribute(s) {unknown}")
        for key, spec in opdef.attrs.items():
            if spec.default is REQUIRED and key not in node.attrs:
                raise VerifyError(f"{label}: required attribute {key!r} is missing")
        for name in node_uses(node):
            if not name or name in defined or name in outer_names:
                continue
            if name in later and later[name] >= index:
                kind = "a cycle" if _has_cycle(graph) else "an order error"
                raise VerifyError(f"{label}: reads {name!r} before it is defined ({kind})")
            raise VerifyError(f"{label}: reads {name!r}, which nothing defines (dangling input)")
        for sub in node.subgraphs():
            _verify(sub, parent=scope, outer_names=outer_names | defined)
        _check_types(node, scope, label)
        for value in node.outputs:
            define(value.name, f"node {node.name!r} ({node.op})")
            scope.types[value.name] = value.type
    for name in graph.outputs:
        if name not in defined and name not in outer_names:
            raise VerifyError(f"{where}: output {name!r} is never defined")


def _check_types(node: Node, scope: Scope, label: str) -> None:
    try:
        inferred = infer_node(node, scope)
    except InferError as err:
        raise VerifyError(f"{label}: type inference fails: {err}") from None
    for stored, fresh in zip(node.outputs, inferred.outputs):
        if stored.type != fresh.type:
            raise VerifyError(
                f"{label}: output {stored.name!r} is typed {stored.type} but the op table infers {fresh.type}"
            )


def _has_cycle(graph: Graph) -> bool:
    view = nx.DiGraph()
    where = {v.name: i for i, node in enumerate(graph.nodes) for v in node.outputs}
    for index, node in enumerate(graph.nodes):
        view.add_node(index)
        for name in node_uses(node):
            if name in where:
                view.add_edge(where[name], index)
    return not nx.is_directed_acyclic_graph(view)
