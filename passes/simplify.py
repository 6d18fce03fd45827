"""simplify: identities and no-ops, one rule each.

    Identity(x)                         -> x
    Dropout(x) (inference)              -> x
    x * 1, 1 * x, x / 1                 -> x        (when broadcasting leaves x's type)
    x + 0, 0 + x, x - 0                 -> x
    Reshape(x) to x's own shape         -> x
    Reshape(Reshape(x, s1), s2)         -> Reshape(x, s2)
    Transpose(x, identity perm)         -> x
    Transpose(Transpose(x, p), q)       -> x        when the composition is the identity
                                        -> Transpose(x, composed)   when the inner one has no other reader
    Cast(x, to=dtype(x))                -> x
    Squeeze(Unsqueeze(x, a), a)         -> x
    Unsqueeze(Squeeze(x, a), a)         -> x        (when x's dims at a were 1)

Preconditions: the rewritten value keeps its type (checked per rule). A graph output keeps
its name: when it would become another value, that value takes the output's name instead.
"""

from __future__ import annotations

import numpy as np

from ember.compiler.infer import retype
from ember.compiler.ir import Graph
from ember.compiler.pattern import Match, const, op, var
from ember.compiler.rewrite import Builder, Outcome, PassResult, Rule, reject, rewrite_graph

X = var("x")


def _same_type(m: Match) -> Outcome:
    """The root is x itself if it has x's exact type (no broadcasting, no dtype change)."""
    if m.type("x") != m.root.outputs[0].type:
        return reject("broadcasting with the constant changes the shape or dtype")
    return m["x"]


def _forward(m: Match, b: Builder) -> Outcome:
    # Identity(x) = x
    return m["x"]


def _dropout(m: Match, b: Builder) -> Outcome:
    # Dropout(x, ratio, training_mode=false) = x: at inference nothing is dropped.
    node = m.root
    if len(node.inputs) > 2 and node.inputs[2]:
        flag = m.graph.const(node.inputs[2])
        if flag is None:
            return reject("training_mode is computed at run time")
        if bool(flag.data.reshape(-1)[0]):
            return reject("training mode")
    return m["x"]


def _neutral(m: Match, b: Builder) -> Outcome:
    # x * 1 = x, x / 1 = x, x + 0 = x, x - 0 = x (as floats up to the sign of zero: -0 + 0 = +0)
    return _same_type(m)


def _reshape_noop(m: Match, b: Builder) -> Outcome:
    # Reshape(x, shape(x)) = x; equal symbolic dims are equal at run time.
    if m.type("x").shape != m.root.outputs[0].type.shape:
        return reject(f"changes the shape {list(m.type('x').shape)} -> {list(m.root.outputs[0].type.shape)}")
    return m["x"]


def _reshape_chain(m: Match, b: Builder) -> Outcome:
    # Reshape(Reshape(x, s1), s2) = Reshape(x, s2): a reshape keeps the row-major element order,
    # except that a 0 in s2 copies a dim of its input, which is the inner result, not x.
    shape = m.graph.const(m["s2"])
    if not m.root.attrs.get("allowzero") and (shape is None or np.any(shape.data == 0)):
        return reject("the outer shape is not a constant free of 0 (a 0 copies the inner result's dim)")
    b.op("Reshape", (m["x"], m["s2"]), m.root.attrs, out=m.root.outputs[0])
    return b.replace()


def _perm(node_perm: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    return tuple(node_perm) if node_perm else tuple(reversed(range(rank)))


def _transpose_noop(m: Match, b: Builder) -> Outcome:
    # Transpose(x, [0, 1, ..., r-1]) = x
    rank = m.type("x").rank
    if _perm(m.root.attrs.get("perm"), rank) != tuple(range(rank)):
        return reject("the permutation is not the identity")
    return m["x"]


def _transpose_pair(m: Match, b: Builder) -> Outcome:
    # Transpose(Transpose(x, p), q) = Transpose(x, [p[q[0]], p[q[1]], ...]), = x when that is the identity
    rank = m.type("x").rank
    p = _perm(m.node("inner").attrs.get("perm"), rank)
    q = _perm(m.root.attrs.get("perm"), rank)
    composed = tuple(p[i] for i in q)
    if composed == tuple(range(rank)):
        return m["x"]
    inner = m.node("inner").outputs[0].name
    if len(m.graph.consumers(inner)) > 1 or inner in m.graph.outputs:  # it stays: nothing gained
        return reject(f"perms {list(p)} then {list(q)} do not cancel and the inner one has other readers")
    b.op("Transpose", (m["x"],), {"perm": composed}, out=m.root.outputs[0])
    return b.replace()


def _cast_noop(m: Match, b: Builder) -> Outcome:
    # Cast(x, to=dtype(x)) = x
    if m.type("x").dtype != m.root.attrs["to"]:
        return reject(f"casts {m.type('x').dtype} to {m.root.attrs['to']}")
    return m["x"]


def _axes(data: np.ndarray, rank: int) -> list[int]:
    return sorted(int(a) % rank for a in data.reshape(-1))


def _squeeze_pair(m: Match, b: Builder) -> Outcome:
    # Squeeze(Unsqueeze(x, a), a) = x; Unsqueeze(Squeeze(x, a), a) = x when x is 1 along a.
    # Both axes lists count in the same rank: the larger one of the pair (Unsqueeze's output).
    rank = max(m.type("x").rank, m.type("inner").rank, m.root.outputs[0].type.rank)
    if _axes(m.const("a"), rank) != _axes(m.const("b"), rank):
        return reject("the axes differ")
    if m.type("x") != m.root.outputs[0].type:
        return reject("the pair does not restore the input's type")
    return m["x"]


RULES: tuple[Rule, ...] = (
    Rule("identity", op("Identity", X), _forward),
    Rule("dropout", op("Dropout", X, rest=True), _dropout),
    Rule("mul_one", op("Mul", X, const("one", 1.0)), _neutral),
    Rule("div_one", op("Div", X, const("one", 1.0)), _neutral),
    Rule("add_zero", op("Add", X, const("zero", 0.0)), _neutral),
    Rule("sub_zero", op("Sub", X, const("zero", 0.0)), _neutral),
    Rule("reshape_noop", op("Reshape", X, var("s")), _reshape_noop),
    Rule("reshape_chain", op("Reshape", op("Reshape", X, var("s1")), var("s2")), _reshape_chain, exclusive=False),
    Rule("transpose_noop", op("Transpose", X), _transpose_noop),
    Rule("transpose_pair", op("Transpose", op("Transpose", X, name="inner")), _transpose_pair, exclusive=False),
    Rule("cast_noop", op("Cast", X), _cast_noop),
    Rule("squeeze_pair", op("Squeeze", op("Unsqueeze", X, const("b"), name="inner"), const("a")), _squeeze_pair,
         exclusive=False),
    Rule("squeeze_pair", op("Unsqueeze", op("Squeeze", X, const("b"), name="inner"), const("a")), _squeeze_pair,
         exclusive=False),
)


def simplify(graph: Graph) -> PassResult:
    """Apply the identities above to a fixed point. A merged reshape chain is retyped: its
    inferred dims may be written more simply than the chain's (p//512 for a window partition's
    16*(p//(16*c))*c//512 over a dynamic size), and what reads it follows."""
    result = rewrite_graph(graph, RULES)
    if result.stats.get("reshape_chain"):
        return PassResult(retype(result.graph), result.stats, result.rejections)
    return result
