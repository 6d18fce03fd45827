"""What passes share: PassResult, rejections with reasons, and graph surgery helpers.

A pass is a pure function `Graph -> PassResult(graph, stats)`; empty stats mean nothing
changed. Rules that look at a node and decline say why (`Rejection`), which
`ember explain PASS MODEL` prints. Nothing is mutated: helpers return new graphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.compiler.ir import Const, Graph, Node

# Fixed-point drivers stop with an error after this many rounds (a rule that keeps firing
# is a bug, not a slow convergence).
MAX_ROUNDS = 64


@dataclass(frozen=True)
class Rejection:
    """A rule looked at a node and declined, for a reason."""

    rule: str
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: %{self.node} ({self.op}): {self.reason}"


@dataclass
class PassResult:
    """A pass's output graph and what it changed (empty stats = no change)."""

    graph: Graph
    stats: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)


def count(stats: dict[str, int], key: str, n: int = 1) -> None:
    """stats[key] += n."""
    stats[key] = stats.get(key, 0) + n


def rename_uses(graph: Graph, mapping: Mapping[str, str]) -> Graph:
    """Every read of a name in `mapping` reads its replacement instead (outputs excluded)."""
    if not mapping:
        return graph

    def resolve(name: str) -> str:
        seen = 0
        while name in mapping and seen < MAX_ROUNDS:
            name = mapping[name]
            seen += 1
        return name

    nodes = []
    for node in graph.nodes:
        inputs = tuple(resolve(n) if n else n for n in node.inputs)
        attrs = {k: _rename_sub(v, resolve) for k, v in node.attrs.items()}
        nodes.append(Node(node.op, inputs, node.outputs, attrs) if inputs != node.inputs or attrs != node.attrs else node)
    return graph.replace(nodes=tuple(nodes))


def _rename_sub(value: Any, resolve: Any) -> Any:
    if not isinstance(value, Graph):
        return value
    mapping = {}
    for name in _free(value):
        new = resolve(name)
        if new != name:
            mapping[name] = new
    return rename_uses(value, mapping) if mapping else value


def _free(graph: Graph) -> tuple[str, ...]:
    from ember.compiler.ir import free_names

    return free_names(graph)


def without_unused_consts(graph: Graph) -> tuple[Graph, int]:
    """Drop constants nobody reads; (graph, how many were dropped)."""
    used = set(graph.outputs)
    for node in graph.nodes:
        from ember.compiler.ir import node_uses

        used.update(node_uses(node))
    kept = tuple(c for c in graph.consts if c.name in used)
    return graph.replace(consts=kept), len(graph.consts) - len(kept)


def add_consts(graph: Graph, consts: Iterable[Const]) -> Graph:
    """The graph with more constants."""
    return graph.replace(consts=graph.consts + tuple(consts))


def new_node(graph: Graph, op: str, inputs: tuple[str, ...], outputs: tuple[Any, ...], attrs: Mapping[str, Any] | None = None) -> Node:
    """A node for `op` with every defaulted attribute made explicit (the IR's invariant)."""
    from ember.compiler.ops import OPS, REQUIRED

    full = dict(attrs or {})
    types = [graph.value(n).type if n and graph.has_value(n) else None for n in inputs]
    for key, spec in OPS[op].attrs.items():
        if key in full or spec.default is REQUIRED or spec.default is None:
            continue
        default = spec.resolve_default(types)
        if default is not None:
            full[key] = default
    return Node(op, inputs, outputs, full)
