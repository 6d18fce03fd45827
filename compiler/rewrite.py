"""What passes share, and the pattern engine's rewriting half.

A pass is a pure function `Graph -> PassResult(graph, stats)`; empty stats mean nothing
changed. Rules that look at a node and decline say why (`Rejection`), which
`ember explain PASS MODEL` prints. Nothing is mutated: helpers return new graphs.

    Rule("mul_one", op("Mul", var("x"), const("one", 1.0)), _same_type)   # x * 1 -> x

A `Rule` joins a pattern (pattern.py) to a rewrite. The rewrite gets the `Match` and a
`Builder` and returns one of:
- a value name: the root's single output is that value (`Identity(x) -> x`); a graph output
  keeps its name, the value that replaces it takes the name instead;
- `builder.replace()`: the nodes the builder staged, which define the root's outputs;
- `reject(reason)`: the rule declines, and `ember explain` shows the reason.
Nothing changes before a rewrite returns a replacement: the builder only stages names,
constants and nodes, and the driver applies them.

`rewrite_graph(graph, rules)` applies the rules in sweeps over the graph until none fires;
a rule set still firing after MAX_ROUNDS sweeps is a bug and raises RewriteError naming the
rules. Matched nodes that nothing reads any more go, with what only they read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.compiler.errors import EmberError
from ember.compiler.infer import Scope, infer_node
from ember.compiler.ir import Const, Graph, Namer, Node, TensorType, Value, free_names, node_uses
from ember.compiler.pattern import Match, NoMatch, OneOf, OpPat, match, roots

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


def rename_uses(graph: Graph, mapping: Mapping[str, str], *, outputs: bool = False) -> Graph:
    """Every read of a name in `mapping` reads its replacement instead (chains followed),
    subgraphs' reads of enclosing names included; definitions are left alone, and so are the
    graph's outputs unless `outputs` (a subgraph may return an enclosing value by name)."""
    if not mapping:
        return graph

    def resolve(name: str) -> str:
        for _ in range(MAX_ROUNDS):
            if name not in mapping:
                break
            name = mapping[name]
        return name

    nodes = []
    for node in graph.nodes:
        inputs = tuple(resolve(n) if n else n for n in node.inputs)
        attrs = {k: _rename_free(v, resolve) for k, v in node.attrs.items()}
        changed = inputs != node.inputs or any(attrs[k] is not node.attrs[k] for k in attrs)
        nodes.append(Node(node.op, inputs, node.outputs, attrs) if changed else node)
    returned = tuple(resolve(n) for n in graph.outputs) if outputs else graph.outputs
    return graph.replace(nodes=tuple(nodes), outputs=returned)


def _rename_free(value: Any, resolve: Callable[[str], str]) -> Any:
    """A subgraph attribute with its reads of enclosing names renamed (other values as they are)."""
    if not isinstance(value, Graph):
        return value
    mapping = {name: resolve(name) for name in free_names(value) if resolve(name) != name}
    return rename_uses(value, mapping, outputs=True) if mapping else value


def without_unused_consts(graph: Graph) -> tuple[Graph, int]:
    """Drop constants nobody reads; (graph, how many were dropped)."""
    used = set(graph.outputs)
    for node in graph.nodes:
        used.update(node_uses(node))
    kept = tuple(c for c in graph.consts if c.name in used)
    return graph.replace(consts=kept), len(graph.consts) - len(kept)


class RewriteError(EmberError):
    """A rule set did not reach a fixed point, or a rewrite returned a malformed replacement."""


# -- rewrites -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejected:
    """A rewrite's refusal, with the reason `ember explain` shows."""

    reason: str


def reject(reason: str) -> Rejected:
    """Decline a match, saying why."""
    return Rejected(reason)


@dataclass(frozen=True)
class Replace:
    """New nodes (defining the root's outputs) and constants, staged by a Builder."""

    nodes: tuple[Node, ...]
    consts: tuple[Const, ...] = ()
    notes: tuple[str, ...] = ()  # further stats keys to count (`shared_weight_copied`)


Outcome = str | Replace | Rejected


class Builder:
    """Stages what a rewrite creates. Names come from hints and are unique against the graph
    and everything staged so far; nothing reaches the graph until the driver applies it."""

    def __init__(self, graph: Graph, taken: set[str]) -> None:
        self.graph = graph
        self._taken = taken
        self.local: set[str] = set()
        self._nodes: list[Node] = []
        self._consts: list[Const] = []
        self._types: dict[str, TensorType] = {}
        self._notes: list[str] = []

    def name(self, hint: str) -> str:
        """A fresh value name from `hint` (`conv1_bn`, then `conv1_bn_1`, ...)."""
        name = Namer(self._taken | self.local)(hint)
        self.local.add(name)
        return name

    def const(self, hint: str, data: np.ndarray) -> str:
        """A new constant named from `hint`; its name."""
        c = Const(self.name(hint), np.asarray(data))
        self._consts.append(c)
        self._types[c.name] = c.type
        return c.name

    def type(self, name: str) -> TensorType:
        """The type of a graph value or of one staged here."""
        return self._types[name] if name in self._types else self.graph.value(name).type

    def op(self, op_name: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None = None, *,
           out: Value | str) -> str:
        """Stage a node; `out` is the Value it defines (one of the root's, or one of a node inside an
        exclusive match, which dies with the match), or a hint for a new value whose type the
        op table infers. Omitted attributes take their defaults. Returns the name."""
        scope = Scope()
        for name in inputs:
            if name:
                scope.types[name] = self.type(name)
                data = self._const_data(name)
                if data is not None:
                    scope.define_const(name, data)
        types = [self.type(n) if n else None for n in inputs]
        if isinstance(out, Value):
            node = new_node_typed(op_name, tuple(inputs), out, attrs, types)
        else:  # typed by the op table: a placeholder type first
            untyped = Value(self.name(out), TensorType("f32", ()))
            node = infer_node(new_node_typed(op_name, tuple(inputs), untyped, attrs, types), scope)
            self._types[node.outputs[0].name] = node.outputs[0].type
        self._nodes.append(node)
        return node.outputs[0].name

    def _const_data(self, name: str) -> np.ndarray | None:
        for c in self._consts:
            if c.name == name:
                return c.data
        found = self.graph.const(name)
        return found.data if found is not None else None

    def note(self, key: str) -> None:
        """Count `key` in the pass's stats too, if this replacement is applied."""
        self._notes.append(key)

    def replace(self) -> Replace:
        """The staged nodes and constants as the replacement of the root."""
        return Replace(tuple(self._nodes), tuple(self._consts), tuple(self._notes))


def new_node_typed(op_name: str, inputs: tuple[str, ...], out: Value, attrs: Mapping[str, Any] | None,
                   types: Sequence[TensorType | None]) -> Node:
    """A node with every defaulted attribute explicit (the IR's invariant), for given input types."""
    from ember.compiler.ops import OPS, REQUIRED

    full = dict(attrs or {})
    for key, spec in OPS[op_name].attrs.items():
        if key not in full and spec.default is not REQUIRED and spec.default is not None:
            default = spec.resolve_default(list(types))
            if default is not None:
                full[key] = default
    return Node(op_name, inputs, (out,), full)


@dataclass(frozen=True)
class Rule:
    """A named rewrite: a pattern rooted at an op (or several alternatives, each rooted at an
    op), and the function that rewrites a match.

    `exclusive`: the match's inner values must have no readers outside it (the rewrite then
    removes them); rules that leave shared inner nodes in place set it False.
    """

    name: str
    pattern: OpPat | OneOf
    rewrite: Callable[[Match, Builder], Outcome]
    exclusive: bool = True

    @property
    def roots(self) -> tuple[str, ...]:
        """The ops a match can be rooted at."""
        return roots(self.pattern)


# -- the driver -----------------------------------------------------------------------------
# A failed match is reported (for `ember explain`) once it got past the root node: an Add that
# is not part of a LayerNorm at all is not news.
MIN_PROGRESS = 2


def rewrite_graph(graph: Graph, rules: Sequence[Rule], *, max_rounds: int = MAX_ROUNDS) -> PassResult:
    """Apply `rules` to a fixed point; stats count rewrites per rule, rejections come from the
    last round (the final graph)."""
    by_op: dict[str, list[Rule]] = {}
    for rule in rules:
        for name in rule.roots:
            by_op.setdefault(name, []).append(rule)
    stats: dict[str, int] = {}
    fired: list[str] = []
    for _ in range(max_rounds):
        graph, fired, rejections = _round(graph, by_op)
        if not fired:
            return PassResult(graph, stats, rejections)
        for rule_name in fired:
            count(stats, rule_name)
    still = ", ".join(sorted(set(fired)))
    raise RewriteError(f"rules did not reach a fixed point in {max_rounds} rounds; still firing: {still}")


def _round(graph: Graph, by_op: Mapping[str, list[Rule]]) -> tuple[Graph, list[str], list[Rejection]]:
    """One sweep in graph order. A match that overlaps a rewrite made earlier in the sweep
    waits for the next round (it was matched against the old graph)."""
    taken = graph.names()
    outputs = set(graph.outputs)
    touched: set[int] = set()  # nodes covered by a rewrite this round
    forwards: dict[str, str] = {}  # old value -> the value that replaces it
    renames: dict[str, str] = {}  # a value that takes over a graph output's name -> that name
    replaced: dict[int, Replace] = {}
    inner: set[str] = set()  # matched nodes (by name) that die unless something still reads them
    dead: set[int] = set()  # inner nodes of exclusive matches: only the match read them
    fired: list[str] = []
    rejections: list[Rejection] = []
    for node in graph.nodes:
        if id(node) in touched:
            continue
        for rule in by_op.get(node.op, ()):
            found = match(graph, rule.pattern, node, rule.exclusive)
            if isinstance(found, NoMatch):
                if found.progress >= MIN_PROGRESS:
                    rejections.append(Rejection(rule.name, node.name, node.op, found.reason))
                continue
            if any(id(n) in touched for n in found.covered):
                fired.append("")  # deferred: makes sure another round runs
                break
            builder = Builder(graph, taken)
            outcome = rule.rewrite(found, builder)
            if isinstance(outcome, Rejected):
                rejections.append(Rejection(rule.name, node.name, node.op, outcome.reason))
                continue
            if isinstance(outcome, str):
                problem = _forward(graph, node, outcome, outputs, forwards, renames)
                if problem:
                    rejections.append(Rejection(rule.name, node.name, node.op, problem))
                    continue
                replaced[id(node)] = Replace(())
            else:
                _check_defines(rule, node, outcome, graph)
                replaced[id(node)] = outcome
                taken |= builder.local
                fired.extend(outcome.notes)
            touched.update(id(n) for n in found.covered)
            inner.update(n.name for n in found.covered if n is not node)
            if rule.exclusive:
                dead.update(id(n) for n in found.covered if n is not node)
            fired.append(rule.name)
            break
    fired = [f for f in fired if f]
    if not replaced:
        return graph, fired, rejections
    nodes: list[Node] = []
    consts = list(graph.consts)
    for node in graph.nodes:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)].nodes)
            consts.extend(replaced[id(node)].consts)
        elif id(node) not in dead:  # (a replacement may reuse a dead node's names)
            nodes.append(node)
    result = rename_uses(graph.replace(nodes=tuple(nodes), consts=tuple(consts)), forwards)
    result = _rename_definitions(result, renames)
    freed = {name for node in graph.nodes if id(node) in replaced or id(node) in dead for name in node.inputs}
    return _drop_dead(result, inner, freed), fired, rejections


def _forward(graph: Graph, root: Node, target: str, outputs: set[str], forwards: dict[str, str],
             renames: dict[str, str]) -> str | None:
    """Record that the root's output is `target`; a reason when that cannot be done."""
    value = root.outputs[0].name
    while target in forwards:  # forwarded earlier in this round
        target = forwards[target]
    if any(graph.consumers(v.name) or v.name in outputs for v in root.outputs[1:]):
        return "its other outputs are read"
    if graph.value(target).type != root.outputs[0].type:
        return f"%{target} is {graph.value(target).type}, the output is {root.outputs[0].type}"
    if value not in outputs:
        forwards[value] = target
        return None
    # A graph output keeps its name: the value that replaces it takes the name instead.
    if graph.producer(target) is None:
        return f"graph output %{value} would become the graph's input or constant %{target}"
    if target in outputs or target in renames:
        return f"%{target} already is a graph output"
    renames[target] = value
    return None


def _check_defines(rule: Rule, root: Node, outcome: Replace, graph: Graph) -> None:
    defined = {v.name: v.type for n in outcome.nodes for v in n.outputs}
    for value in root.outputs:
        needed = graph.consumers(value.name) or value.name in graph.outputs
        if needed and defined.get(value.name) != value.type:
            raise RewriteError(f"rule {rule.name!r} at %{root.name}: the replacement does not define "
                               f"%{value.name}: {value.type}")


def _rename_definitions(graph: Graph, renames: Mapping[str, str]) -> Graph:
    if not renames:
        return graph
    nodes = []
    for node in graph.nodes:
        outs = tuple(Value(renames.get(v.name, v.name), v.type, v.quant) for v in node.outputs)
        nodes.append(Node(node.op, node.inputs, outs, node.attrs) if outs != node.outputs else node)
    return rename_uses(graph.replace(nodes=tuple(nodes)), renames)


def _drop_dead(graph: Graph, candidates: set[str], freed: set[str]) -> Graph:
    """Remove what the rewrites left unread: matched nodes (`candidates`) and whatever only
    they or the replaced roots (whose operands are `freed`) read, transitively; nodes that
    were dead before stay."""
    needed = set(graph.outputs)
    kept: list[Node] = []
    freed = set(freed)
    for node in reversed(graph.nodes):
        names = node.output_names
        if (node.name in candidates or any(v in freed for v in names)) and not any(v in needed for v in names):
            freed.update(node.inputs)
            continue
        kept.append(node)
        needed.update(node_uses(node))
    consts = tuple(c for c in graph.consts if c.name not in freed or c.name in needed)
    return graph.replace(nodes=tuple(reversed(kept)), consts=consts)
