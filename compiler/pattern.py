"""The pattern engine: patterns as data, rewrites that return a replacement or a reason, and a
fixed-point driver with an iteration cap.

    Rule("mul_one", op("Mul", var("x"), const("one", value=1.0)), _forward_x)   # x * 1 -> x

A pattern describes the values that feed a root node: `op(...)` matches a value by the op
that produced it and by its operand patterns, `var(name)` matches any value, `const(name,
value=...)` a constant (all of whose elements equal `value`, when given), `one_of(...)` any of
several patterns. A name bound twice must bind the same value, so DAG shapes (LayerNorm reads
`x` twice) are patterns too. Binary ops in COMMUTATIVE match their operands in either order.

A rule's rewrite gets the `Match` and a `Builder` and returns one of:
- a value name: the root's single output is that value (`Identity(x) -> x`);
- `builder.replace()`: the nodes the builder staged, which define the root's outputs;
- `reject(reason)`: the rule declines, and `ember explain` shows the reason.
Nothing changes before a rewrite returns a replacement: the builder only stages names,
constants and nodes, and the driver applies them.

`rewrite_graph(graph, rules)` applies the rules round by round until none fires; a rule set
that keeps firing past MAX_ROUNDS is a bug and raises RewriteError naming the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.compiler.errors import EmberError
from ember.compiler.infer import Scope, infer_node
from ember.compiler.ir import Const, Graph, Namer, Node, TensorType, Value, attr_equal, node_uses
from ember.compiler.rewrite import MAX_ROUNDS, PassResult, Rejection, count, rename_uses

# Binary ops whose operands may be swapped: a pattern `op("Add", a, b)` also matches b + a.
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal"})


class RewriteError(EmberError):
    """A rule set did not reach a fixed point, or a rewrite returned a malformed replacement."""


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
        probe = Value(out, types[0] or TensorType("f32", ())) if isinstance(out, str) else out
        node = new_node_typed(op_name, tuple(inputs), probe, attrs, types)
        if isinstance(out, str):
            node = infer_node(Node(node.op, node.inputs, (Value(self.name(out), probe.type),), node.attrs), scope)
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
        return _roots(self.pattern)


def _roots(pattern: Pattern) -> tuple[str, ...]:
    if isinstance(pattern, OpPat):
        return pattern.ops
    if isinstance(pattern, OneOf):
        return tuple(dict.fromkeys(o for option in pattern.options for o in _roots(option)))
    raise TypeError("a rule's pattern must be rooted at an op")


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
