"""The IR's text form round-trips, and the verifier rejects broken graphs by name."""

from __future__ import annotations

import numpy as np
import pytest

from ember.compiler.errors import IRParseError, VerifyError
from ember.compiler.infer import retype
from ember.compiler.ir import Const, Graph, Node, Quant, TensorType, Value
from ember.compiler.parser import graph_tensors, parse_graph
from ember.compiler.printer import print_graph
from ember.compiler.verify import verify

TEXT = """\
# ember-ir v1 | pipeline: fold_constants,dce | after: dce (2) | stats: removed=3
graph main(%x: f32[N,8], %"onnx::in/1": f32[1,8]) -> (%y: f32[N,8], %h1: f32[N,4]) {
  const %big: f32[32] = #HASH {sparsity=0.5}
  const %one: f32[] = 1.0
  const %split: i64[2] = [4, 4]
  %a: f32[N,8] = Add(%x, %"onnx::in/1")
  %b: f32[N,8] = Mul(%a, %one)
  %y: f32[N,8] = Relu(%b)
  %h1: f32[N,4], %h2: f32[N,4] = Split(%y, %split) {axis=1}
  return %y, %h1
}
"""


def _big() -> np.ndarray:
    return np.linspace(-1, 1, 32, dtype=np.float32)


def _text() -> str:
    from ember.compiler.printer import digest

    return TEXT.replace("HASH", digest(_big()))


def test_print_parse_print_is_identity() -> None:
    text = _text()
    graph = parse_graph(text, {"big": _big()})
    verify(graph)
    again = print_graph(graph, pipeline="fold_constants,dce", after="dce (2)", stats={"removed": 3})
    assert again == text
    assert parse_graph(again, graph_tensors(graph)) == graph


def test_parsed_graph_has_facts_types_and_order() -> None:
    graph = parse_graph(_text(), {"big": _big()})
    assert graph.const("big").facts == (("sparsity", 0.5),)
    assert graph.value("h1").type == TensorType("f32", ("N", 4))
    assert [n.op for n in graph.nodes] == ["Add", "Mul", "Relu", "Split"]
    assert graph.const("big").data.flags.writeable is False
    assert graph.consumers("y")[0].op == "Split"


def test_quantized_values_print_their_parameters() -> None:
    x = Value("x", TensorType("i8", (1, 4)), Quant((0.0123,), (0,)))
    w = Const("w", np.ones((4,), np.int8), Quant((0.5, 0.25, 0.5, 0.25), (0, 0, 0, 0), 0))
    graph = Graph((x,), (Node("Add", ("x", "w"), (Value("y", TensorType("i8", (1, 4))),)),), ("y",), (w,))
    text = print_graph(graph)
    assert "%x: i8[1,4] {scale=0.0123, zero_point=0}" in text
    assert "const %w: i8[4] = [1, 1, 1, 1] {axis=0, scale=[0.5,0.25,0.5,0.25], zero_point=[0,0,0,0]}" in text
    assert print_graph(parse_graph(text)) == text


def test_parse_error_names_the_line() -> None:
    with pytest.raises(IRParseError, match="line 3"):
        parse_graph("graph main(%x: f32[2]) -> (%y: f32[2]) {\n  %y: f32[2] = Relu(%x)\n  %z = Relu(%y)\n  return %y\n}\n")


def test_hashed_constant_without_data_is_a_clear_error() -> None:
    with pytest.raises(IRParseError, match="printed by hash"):
        parse_graph(_text())


BROKEN = {
    "dangling input": (
        "graph main(%x: f32[2]) -> (%y: f32[2]) {\n  %y: f32[2] = Add(%x, %ghost)\n  return %y\n}\n",
        r"node 'y' \(Add\): reads 'ghost', which nothing defines",
    ),
    "duplicate definition": (
        "graph main(%x: f32[2]) -> (%y: f32[2]) {\n  %y: f32[2] = Relu(%x)\n  %y: f32[2] = Neg(%x)\n  return %y\n}\n",
        r"'y' is defined twice \(again by node 'y' \(Neg\)\)",
    ),
    "cycle": (
        "graph main(%x: f32[2]) -> (%b: f32[2]) {\n  %a: f32[2] = Add(%x, %b)\n  %b: f32[2] = Relu(%a)\n  return %b\n}\n",
        r"node 'a' \(Add\): reads 'b' before it is defined \(a cycle\)",
    ),
    "type mismatch": (
        "graph main(%x: f32[2]) -> (%y: f32[3]) {\n  %y: f32[3] = Relu(%x)\n  return %y\n}\n",
        r"node 'y' \(Relu\): output 'y' is typed f32\[3\] but the op table infers f32\[2\]",
    ),
    "unknown op": (
        "graph main(%x: f32[2]) -> (%y: f32[2]) {\n  %y: f32[2] = Frobnicate(%x)\n  return %y\n}\n",
        r"operator Frobnicate is not in the op table",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_verifier_rejects_broken_graphs_naming_the_node(case: str) -> None:
    text, message = BROKEN[case]
    with pytest.raises(VerifyError, match=message):
        verify(parse_graph(text))


def test_retype_recomputes_symbolic_shapes() -> None:
    graph = parse_graph(_text(), {"big": _big()})
    wrong = graph.replace(nodes=tuple(
        Node(n.op, n.inputs, tuple(Value(v.name, TensorType(v.type.dtype, ())) for v in n.outputs), n.attrs)
        for n in graph.nodes
    ))
    assert retype(wrong) == graph


def test_networkx_view_has_one_edge_per_producer_consumer_pair() -> None:
    graph = parse_graph(_text(), {"big": _big()})
    view = graph.to_networkx()
    assert sorted(view.edges) == [(0, 1), (1, 2), (2, 3)]
    assert view.edges[2, 3]["values"] == ("y",)
