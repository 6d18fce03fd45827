"""The pattern engine: matching (commutative, DAG-shaped, alternatives), reasons for
rejection, no change before a rewrite succeeds, graph outputs keeping their names, and the
fixed-point driver's cap."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import body, reasons

from ember.compiler.ir import Graph, Node
from ember.compiler.parser import parse_graph
from ember.compiler.pattern import Match, NoMatch, const, match, one_of, op, var
from ember.compiler.printer import print_graph
from ember.compiler.rewrite import Builder, Outcome, RewriteError, Rule, reject, rewrite_graph
from ember.compiler.verify import verify

X = var("x")

CHAIN = """graph main(%x: f32[4], %y: f32[4]) -> (%out: f32[4]) {
  const %one: f32[] = 1.0
  %a: f32[4] = Add(%x, %y)
  %m: f32[4] = Mul(%one, %a)
  %out: f32[4] = Neg(%m)
  return %out
}
"""


def _node(graph: Graph, name: str) -> Node:
    found = graph.producer(name)
    assert found is not None
    return found


def test_commutative_operands_match_in_either_order() -> None:
    graph = parse_graph(CHAIN)
    found = match(graph, op("Mul", op("Add", var("p"), var("q")), const("c", 1.0)), _node(graph, "m"))
    assert isinstance(found, Match)
    assert (found["p"], found["q"], found["c"]) == ("x", "y", "one")
    assert [n.name for n in found.covered] == ["m", "a"]


def test_a_name_bound_twice_must_be_the_same_value() -> None:
    text = """graph main(%x: f32[4], %y: f32[4]) -> (%s: f32[4], %t: f32[4]) {
  %s: f32[4] = Mul(%x, %x)
  %t: f32[4] = Mul(%x, %y)
  return %s, %t
}
"""
    graph = parse_graph(text)
    square = op("Mul", X, X)
    assert isinstance(match(graph, square, _node(graph, "s")), Match)
    missed = match(graph, square, _node(graph, "t"))
    assert isinstance(missed, NoMatch) and "bound twice" in missed.reason


def test_alternatives_and_the_furthest_reason() -> None:
    graph = parse_graph(CHAIN)
    pattern = one_of(op("Neg", op("Mul", X, const("c", 2.0))), op("Neg", op("Div", X, const("c"))))
    missed = match(graph, pattern, _node(graph, "out"))
    assert isinstance(missed, NoMatch)
    # The Mul alternative got further (Neg, Mul, and %a bound) than the Div one.
    assert missed.reason == "constant %one is not all 2"


def test_exclusive_matches_need_inner_values_read_only_inside() -> None:
    text = CHAIN.replace("return %out", "return %out, %m").replace("(%out: f32[4])", "(%out: f32[4], %m: f32[4])")
    graph = parse_graph(text)
    pattern = op("Neg", op("Mul", X, const("c", 1.0)))
    missed = match(graph, pattern, _node(graph, "out"))
    assert isinstance(missed, NoMatch) and missed.reason == "%m is a graph output"
    assert isinstance(match(graph, pattern, _node(graph, "out"), exclusive=False), Match)


def _negate_twice(m: Match, b: Builder) -> Outcome:
    """Neg(Neg(x)) = x."""
    return m["x"]


def test_forwarding_a_graph_output_renames_the_value_that_replaces_it() -> None:
    text = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %e: f32[4] = Exp(%x)
  %n: f32[4] = Neg(%e)
  %y: f32[4] = Neg(%n)
  return %y
}
"""
    result = rewrite_graph(parse_graph(text), [Rule("double_neg", op("Neg", op("Neg", X)), _negate_twice)])
    assert result.stats == {"double_neg": 1}
    assert body(print_graph(result.graph)) == """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %y: f32[4] = Exp(%x)
  return %y
}
"""
    # ... but a graph output does not become the graph's input.
    text = text.replace("%e: f32[4] = Exp(%x)\n  %n: f32[4] = Neg(%e)", "%n: f32[4] = Neg(%x)")
    result = rewrite_graph(parse_graph(text), [Rule("double_neg", op("Neg", op("Neg", X)), _negate_twice)])
    assert result.stats == {}
    assert reasons(result) == ["double_neg: %y (Neg): graph output %y would become the graph's input or constant %x"]


def test_nothing_changes_before_a_rewrite_succeeds() -> None:
    """A rewrite that stages names, constants and nodes and then rejects leaves no trace."""

    def stage_then_reject(m: Match, b: Builder) -> Outcome:
        b.const("staged", np.zeros(4, np.float32))
        b.op("Relu", (m["x"],), out="also_staged")
        return reject("changed my mind")

    graph = parse_graph(CHAIN)
    result = rewrite_graph(graph, [Rule("fickle", op("Neg", X), stage_then_reject)])
    assert result.graph is graph and result.stats == {}
    assert reasons(result) == ["fickle: %out (Neg): changed my mind"]


def test_staged_names_are_fresh_and_types_inferred() -> None:
    def relu_then_neg(m: Match, b: Builder) -> Outcome:  # Neg(1 * x) -> Neg(Relu(x)), a test rewrite
        r = b.op("Relu", (m["x"],), out="m")  # "m" is taken: m_1
        b.op("Neg", (r,), out=m.root.outputs[0])
        return b.replace()

    rule = Rule("relu_neg", op("Neg", op("Mul", X, const("c", 1.0))), relu_then_neg, exclusive=False)
    result = rewrite_graph(parse_graph(CHAIN), [rule])
    verify(result.graph)
    assert [f"{n.op}:{n.name}" for n in result.graph.nodes] == ["Add:a", "Relu:m_1", "Neg:out"]  # the dead Mul goes
    assert result.stats == {"relu_neg": 1}


def test_rules_that_keep_firing_fail_loudly() -> None:
    def flip(m: Match, b: Builder) -> Outcome:  # Add(a, b) -> Add(b, a), forever
        b.op("Add", (m["q"], m["p"]), out=m.root.outputs[0])
        return b.replace()

    with pytest.raises(RewriteError, match="did not reach a fixed point in 64 rounds; still firing: flip"):
        rewrite_graph(parse_graph(CHAIN), [Rule("flip", op("Add", var("p"), var("q")), flip)])


def test_a_replacement_must_define_the_root_output() -> None:
    def forget(m: Match, b: Builder) -> Outcome:
        b.op("Relu", (m["x"],), out="elsewhere")
        return b.replace()

    with pytest.raises(RewriteError, match="rule 'forget' at %out: the replacement does not define %out"):
        rewrite_graph(parse_graph(CHAIN), [Rule("forget", op("Neg", X), forget)])


def test_overlapping_matches_wait_for_the_next_round() -> None:
    """Neg(Neg(Neg(Neg(x)))): the first pair rewrites in round one, the second pair (matched
    against the old graph) waits; the result is x, in two rounds."""
    text = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %e: f32[4] = Exp(%x)
  %a: f32[4] = Neg(%e)
  %b: f32[4] = Neg(%a)
  %c: f32[4] = Neg(%b)
  %d: f32[4] = Neg(%c)
  %y: f32[4] = Relu(%d)
  return %y
}
"""
    result = rewrite_graph(parse_graph(text), [Rule("double_neg", op("Neg", op("Neg", X)), _negate_twice)])
    assert result.stats == {"double_neg": 2}
    assert [n.op for n in result.graph.nodes] == ["Exp", "Relu"]
    assert result.graph.nodes[1].inputs == ("e",)
