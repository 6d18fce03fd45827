"""The pattern engine, matching half: patterns as data, and the matcher. The rewriting half
(rules, the Builder, the fixed-point driver) is in rewrite.py.

    op("Mul", var("x"), const("one", 1.0))           # x * 1, either operand order
    op("Div", D, op("Sqrt", op("Add", VARIANCE, const("eps", scalar=True))))   # LayerNorm's core

A pattern describes the values that feed a root node: `op(...)` matches a value by the op
that produced it and by its operand patterns, `var(name)` matches any value, `const(name,
value=...)` a constant (all of whose elements equal `value`, when given), `one_of(...)` any of
several patterns. A name bound twice must bind the same value, so DAG shapes (LayerNorm reads
`x` twice) are patterns too. Binary ops in COMMUTATIVE match their operands in either order.

`match(graph, pattern, root)` returns the first `Match` (bound values, bound nodes, every node
covered) or a `NoMatch` with the reason of the attempt that got furthest, which is what
`ember explain` shows. Matching only reads the graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.compiler.ir import Graph, Node, TensorType, attr_equal

# Binary ops whose operands may be swapped: a pattern `op("Add", a, b)` also matches b + a.
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal"})


# -- patterns -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    """Any (present) value, bound to `name`."""

    name: str


@dataclass(frozen=True)
class ConstPat:
    """A constant of the graph, bound to `name`; `value`: every element equals it (to `tol`,
    relative); `scalar`: exactly one element."""

    name: str
    value: float | None = None
    tol: float = 0.0
    scalar: bool = False


@dataclass(frozen=True)
class OpPat:
    """A value produced by a node whose op is in `ops`, with operands matching `inputs`.

    `name` binds the value (and the node); `attrs` are attribute values the node must have;
    `rest` allows further trailing operands (not matched); `output` is which output of the
    node the value is.
    """

    ops: tuple[str, ...]
    inputs: tuple[Pattern, ...]
    name: str | None = None
    attrs: tuple[tuple[str, Any], ...] = ()
    commutative: bool = False
    rest: bool = False
    output: int = 0


@dataclass(frozen=True)
class OneOf:
    """The first of several patterns that matches (tried in order, with backtracking)."""

    options: tuple[Pattern, ...]


Pattern = Var | ConstPat | OpPat | OneOf


def var(name: str) -> Var:
    """Any value, bound to `name`."""
    return Var(name)


def const(name: str, value: float | None = None, *, tol: float = 0.0, scalar: bool = False) -> ConstPat:
    """A constant bound to `name` (all elements `value` within relative `tol`, when given)."""
    return ConstPat(name, value, tol, scalar)


def op(ops: str | tuple[str, ...], *inputs: Pattern, name: str | None = None, rest: bool = False,
       output: int = 0, **attrs: Any) -> OpPat:
    """A value computed by `ops` (one name or several) from operands matching `inputs`."""
    names = (ops,) if isinstance(ops, str) else tuple(ops)
    commutative = len(inputs) == 2 and all(o in COMMUTATIVE for o in names)
    return OpPat(names, tuple(inputs), name, tuple(sorted(attrs.items())), commutative, rest, output)


def one_of(*options: Pattern) -> OneOf:
    """Any of the options (the first that matches)."""
    return OneOf(tuple(options))


# -- matches --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    """A successful match: bound value names, bound nodes, and every node the pattern covered."""

    graph: Graph
    root: Node
    values: Mapping[str, str]
    nodes: Mapping[str, Node]
    covered: tuple[Node, ...]

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def const(self, name: str) -> np.ndarray:
        """The data of the constant bound to `name`."""
        found = self.graph.const(self.values[name])
        if found is None:
            raise KeyError(f"{name} is not bound to a constant")
        return found.data

    def type(self, name: str) -> TensorType:
        """The type of the value bound to `name`."""
        return self.graph.value(self.values[name]).type

    def node(self, name: str) -> Node:
        """The node bound to `name` (an `op(..., name=...)` pattern)."""
        return self.nodes[name]


@dataclass(frozen=True)
class _Env:
    values: Mapping[str, str] = field(default_factory=dict)
    nodes: Mapping[str, Node] = field(default_factory=dict)
    covered: tuple[Node, ...] = ()

    def bind(self, name: str, value: str, node: Node | None = None) -> _Env:
        nodes = {**self.nodes, name: node} if node is not None else self.nodes
        covered = self.covered + (node,) if node is not None else self.covered
        return _Env({**self.values, name: value}, nodes, covered)


class _Matcher:
    """Backtracking matcher; remembers the reason of the failure that got furthest."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.progress = -1
        self.reason = "no match"

    def fail(self, env: _Env | None, reason: str, closer: int = 0) -> None:
        """Remember `reason` if this attempt got further than any before (None: all the way;
        `closer`: it failed on a detail of the right kind of operand)."""
        progress = len(env.values) + len(env.covered) + closer if env is not None else FULL_MATCH
        if progress > self.progress:
            self.progress, self.reason = progress, reason

    def value(self, pat: Pattern, name: str, env: _Env) -> Iterator[_Env]:
        if not name:
            self.fail(env, "an operand is omitted")
            return
        if isinstance(pat, OneOf):
            for option in pat.options:
                yield from self.value(option, name, env)
            return
        bound = env.values.get(pat.name) if pat.name is not None else None
        if bound is not None:
            if bound == name:
                yield env
            else:
                self.fail(env, f"%{name} is not %{bound} (pattern {pat.name!r} bound twice)")
            return
        if isinstance(pat, Var):
            yield env.bind(pat.name, name)
        elif isinstance(pat, ConstPat):
            yield from self._const(pat, name, env)
        else:
            yield from self._op(pat, name, env)

    def _const(self, pat: ConstPat, name: str, env: _Env) -> Iterator[_Env]:
        found = self.graph.const(name)
        if found is None:
            self.fail(env, f"%{name} is not a constant")
            return
        data = found.data
        if pat.scalar and data.size != 1:
            self.fail(env, f"constant %{name} has {data.size} elements, not one", closer=1)
            return
        if pat.value is not None:
            if data.dtype.kind not in "biuf" or data.size == 0:
                self.fail(env, f"constant %{name} is not numeric", closer=1)
                return
            error = np.abs(data.astype(np.float64) - pat.value)
            if not np.all(error <= pat.tol * max(1.0, abs(pat.value))):
                self.fail(env, f"constant %{name} is not all {pat.value:g}", closer=1)
                return
        yield env.bind(pat.name, name)

    def _op(self, pat: OpPat, name: str, env: _Env) -> Iterator[_Env]:
        node = self.graph.producer(name)
        wanted = "/".join(pat.ops)
        if node is None:
            what = "a constant" if self.graph.const(name) is not None else "an input"
            self.fail(env, f"%{name} is {what}, not computed by {wanted}")
            return
        if node.op not in pat.ops or node.output_names.index(name) != pat.output:
            self.fail(env, f"%{name} is computed by {node.op}, not {wanted}")
            return
        if any(env_node is node for env_node in env.covered):
            self.fail(env, f"{node.op} %{node.name} appears twice in the pattern")
            return
        for key, want in pat.attrs:
            if not attr_equal(_normal(node.attrs.get(key)), _normal(want)):
                self.fail(env, f"{node.op} %{node.name} has {key}={node.attrs.get(key)!r}, not {want!r}", closer=1)
                return
        n = len(pat.inputs)
        if len(node.inputs) < n or (len(node.inputs) > n and not pat.rest):
            self.fail(env, f"{node.op} %{node.name} has {len(node.inputs)} operands, not {n}", closer=1)
            return
        inputs = node.inputs[:n]
        orders = [inputs, inputs[::-1]] if pat.commutative and inputs[0] != inputs[1] else [inputs]
        start = env.bind(pat.name, name, node) if pat.name else _Env(env.values, env.nodes, env.covered + (node,))
        for order in orders:
            yield from self._operands(pat.inputs, order, start)

    def _operands(self, pats: Sequence[Pattern], names: Sequence[str], env: _Env) -> Iterator[_Env]:
        if not pats:
            yield env
            return
        for after in self.value(pats[0], names[0], env):
            yield from self._operands(pats[1:], names[1:], after)


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class NoMatch:
    """Why a pattern did not match: the failure that got furthest, and how far it got (bound
    names plus covered nodes; FULL_MATCH when only the exclusivity check failed)."""

    reason: str
    progress: int


FULL_MATCH = 1 << 30


def match(graph: Graph, pattern: OpPat | OneOf, root: Node, exclusive: bool = True) -> Match | NoMatch:
    """The first match of `pattern` rooted at `root`, or why there is none.

    `exclusive`: every value computed inside the match (but the root's) must be read only
    inside it, so that replacing the root removes the whole match.
    """
    matcher = _Matcher(graph)
    outputs = set(graph.outputs)
    output = pattern.output if isinstance(pattern, OpPat) else 0
    for env in matcher.value(pattern, root.output_names[output] if len(root.outputs) > output else "", _Env()):
        if exclusive:
            inside = {id(n) for n in env.covered}
            leak = _leak(graph, env.covered, root, inside, outputs)
            if leak is not None:
                matcher.fail(None, leak)  # a full match failed only on this: the most telling reason
                continue
        return Match(graph, root, dict(env.values), dict(env.nodes), env.covered)
    return NoMatch(matcher.reason, matcher.progress)


def _leak(graph: Graph, covered: Sequence[Node], root: Node, inside: set[int], outputs: set[str]) -> str | None:
    for node in covered:
        if node is root:
            continue
        for value in node.output_names:
            if value in outputs:
                return f"%{value} is a graph output"
            for reader in graph.consumers(value):
                if id(reader) not in inside:
                    return f"%{value} is also read by {reader.op} %{reader.name}"
    return None


def roots(pattern: Pattern) -> tuple[str, ...]:
    """The ops a match of `pattern` can be rooted at (a rule's pattern is rooted at an op)."""
    if isinstance(pattern, OpPat):
        return pattern.ops
    if isinstance(pattern, OneOf):
        return tuple(dict.fromkeys(o for option in pattern.options for o in roots(option)))
    raise TypeError("a rule's pattern must be rooted at an op")
