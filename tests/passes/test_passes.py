"""Passes: Before/Expected IR text, numeric agreement with the interpreter, idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from ember.compiler import interp
from ember.compiler.ir import Graph
from ember.compiler.parser import graph_tensors, parse_graph
from ember.compiler.passmanager import DivergenceError, PassError, run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.compiler.printer import print_graph
from ember.compiler.rewrite import PassResult
from ember.compiler.verify import verify
from ember.passes import PASSES

# float32 rewrites reassociate (BatchNorm folding multiplies weights first).
RTOL, ATOL = 1e-5, 1e-5


def _body(text: str) -> str:
    """A graph's text without the header line."""
    return text.split("\n", 1)[1]


def _check(name: str, before: str, expected: str, tensors: dict[str, np.ndarray] | None = None,
           rng: np.random.Generator | None = None) -> Graph:
    graph = parse_graph(before, tensors)
    verify(graph)
    result = PASSES[name](graph)
    verify(result.graph)
    assert _body(print_graph(result.graph)) == _body(expected if expected.startswith("#") else "#\n" + expected)
    again = PASSES[name](result.graph)
    assert again.stats == {}, f"{name} is not idempotent: {again.stats}"
    feeds = interp.random_feeds(graph, rng or np.random.default_rng())
    want, got = interp.run(graph, feeds), interp.run(result.graph, feeds)
    for out in graph.outputs:
        np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL)
    return result.graph


def test_simplify_removes_identities(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[2,3]) -> (%y: f32[3,2]) {
  const %one: f32[] = 1.0
  const %zero: f32[3] = [0.0, 0.0, 0.0]
  %a: f32[2,3] = Identity(%x)
  %b: f32[2,3] = Mul(%a, %one)
  %c: f32[2,3] = Add(%b, %zero)
  %d: f32[3,2] = Transpose(%c) {perm=[1,0]}
  %e: f32[2,3] = Transpose(%d) {perm=[1,0]}
  %f: f32[2,3] = Cast(%e) {to="f32"}
  %y: f32[3,2] = Transpose(%f) {perm=[1,0]}
  return %y
}
"""
    expected = """graph main(%x: f32[2,3]) -> (%y: f32[3,2]) {
  %y: f32[3,2] = Transpose(%x) {perm=[1,0]}
  return %y
}
"""
    _check("simplify", before, expected, rng=rng)


def test_simplify_keeps_broadcasting_multiplies(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[3]) -> (%y: f32[2,3]) {
  const %one: f32[2,3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %y: f32[2,3] = Mul(%x, %one)
  return %y
}
"""
    _check("simplify", before, before, rng=rng)
    result = PASSES["simplify"](parse_graph(before))
    assert [str(r) for r in result.rejections] == ["mul_one: %y (Mul): its output is a graph output"]


def test_fold_constants_folds_shape_chains(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  const %zero: i64[1] = [0]
  const %minus: i64[1] = [-1]
  %s: i64[3] = Shape(%x)
  %n: i64[1] = Gather(%s, %zero)
  %shape: i64[2] = Concat(%n, %minus) {axis=0}
  %y: f32[2,12] = Reshape(%x, %shape)
  return %y
}
"""
    expected = """graph main(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  const %shape: i64[2] = [2, -1]
  %y: f32[2,12] = Reshape(%x, %shape)
  return %y
}
"""
    graph = parse_graph(before)
    folded = PASSES["fold_constants"](graph)
    assert folded.stats == {"shapes_folded": 3}
    cleaned = PASSES["dce"](folded.graph).graph
    assert _body(print_graph(cleaned)) == _body("#\n" + expected)


def test_symbolic_batch_keeps_the_shape_chain_but_types_exactly() -> None:
    text = """graph main(%x: f32[N,3,4]) -> (%y: f32[N,12]) {
  const %zero: i64[1] = [0]
  const %minus: i64[1] = [-1]
  %s: i64[3] = Shape(%x)
  %n: i64[1] = Gather(%s, %zero)
  %shape: i64[2] = Concat(%n, %minus) {axis=0}
  %y: f32[N,12] = Reshape(%x, %shape)
  return %y
}
"""
    graph = parse_graph(text)
    verify(graph)  # the Reshape's type f32[N,12] is what inference derives
    assert PASSES["fold_constants"](graph).stats == {}


def test_fold_batchnorm_into_conv(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    before = """graph main(%x: f32[1,3,6,6]) -> (%y: f32[1,4,6,6]) {
  const %w: f32[4,3,3,3] = #HASH
  const %s: f32[4] = [1.5, 0.5, 2.0, 1.0]
  const %b: f32[4] = [0.1, -0.2, 0.3, 0.0]
  const %m: f32[4] = [0.5, 0.25, -1.0, 0.0]
  const %v: f32[4] = [1.0, 2.0, 0.5, 4.0]
  %c: f32[1,4,6,6] = Conv(%x, %w) {pads=[1,1,1,1]}
  %y: f32[1,4,6,6] = BatchNormalization(%c, %s, %b, %m, %v)
  return %y
}
"""
    from ember.compiler.printer import digest

    before = before.replace("HASH", digest(w))
    graph = parse_graph(before, {"w": w})
    result = PASSES["fold_batchnorm"](graph)
    assert result.stats == {"batchnorm_folded": 1}
    assert [n.op for n in result.graph.nodes] == ["Conv"]
    assert result.graph.nodes[0].output_names == ("y",)
    feeds = interp.random_feeds(graph, rng)
    np.testing.assert_allclose(interp.run(result.graph, feeds)["y"], interp.run(graph, feeds)["y"], rtol=RTOL, atol=1e-4)
    assert PASSES["fold_batchnorm"](result.graph).stats == {}


def test_cse_merges_duplicates(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %a: f32[4] = Relu(%x)
  %b: f32[4] = Relu(%x)
  %y: f32[4] = Add(%a, %b)
  return %y
}
"""
    expected = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %a: f32[4] = Relu(%x)
  %y: f32[4] = Add(%a, %a)
  return %y
}
"""
    _check("cse", before, expected, rng=rng)


def test_fuse_groups_anchor_with_epilogue_and_respects_other_readers(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[2,8], %w: f32[8,4], %r: f32[2,4]) -> (%y: f32[2,4], %m: f32[2,4]) {
  %m: f32[2,4] = MatMul(%x, %w)
  %a: f32[2,4] = Add(%m, %r)
  %y: f32[2,4] = Relu(%a)
  return %y, %m
}
"""
    graph = parse_graph(before)
    result = PASSES["fuse"](graph)
    # %m is a graph output, so the MatMul stays alone; Add+Relu form a chain.
    assert [n.op for n in result.graph.nodes] == ["MatMul", "Fused"]
    assert result.graph.nodes[1].attrs["kernel"] == "add_relu"
    verify(result.graph)
    feeds = interp.random_feeds(graph, rng)
    got, want = interp.run(result.graph, feeds), interp.run(graph, feeds)
    for out in graph.outputs:
        np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL)
    assert PASSES["fuse"](result.graph).stats == {}


def test_fused_dump_round_trips() -> None:
    text = """graph main(%x: f32[1,3,8,8], %w: f32[4,3,3,3]) -> (%y: f32[1,4,8,8]) {
  %c: f32[1,4,8,8] = Conv(%x, %w) {pads=[1,1,1,1]}
  %y: f32[1,4,8,8] = Relu(%c)
  return %y
}
"""
    fused = PASSES["fuse"](parse_graph(text)).graph
    printed = print_graph(fused)
    assert "Fused(%x, %w) {body=graph conv_relu(" in printed
    assert print_graph(parse_graph(printed, graph_tensors(fused))) == printed


def test_default_pipeline_verifies_and_keeps_numbers(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[N,3,8,8]) -> (%y: f32[N,4]) {
  const %w: f32[4,3,1,1] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  const %k: f32[4,1,1] = [0.5, 1.0, 1.5, 2.0]
  %c: f32[N,4,8,8] = Conv(%x, %w)
  %s: f32[N,4,8,8] = Mul(%c, %k)
  %r: f32[N,4,8,8] = Relu(%s)
  %p: f32[N,4,1,1] = GlobalAveragePool(%r)
  %y: f32[N,4] = Flatten(%p)
  return %y
}
"""
    graph = parse_graph(text)
    result = run_pipeline(graph, DEFAULT_PIPELINE, check_each=True)
    assert any(r.stats.get("mul_folded") for r in result.records)
    assert [n.op for n in result.graph.nodes] == ["Fused", "GlobalAveragePool", "Flatten"]
    feeds = interp.random_feeds(graph, rng, {"N": 3})
    np.testing.assert_allclose(interp.run(result.graph, feeds)["y"], interp.run(graph, feeds)["y"], rtol=1e-4, atol=1e-4)


def _flip_sign(graph: Graph) -> PassResult:
    """A deliberately broken pass: Relu(x) -> Neg(Relu(x)) written as a sign flip."""
    from ember.compiler.ir import Node

    nodes = [Node("Neg", n.inputs, n.outputs, {}) if n.op == "Relu" else n for n in graph.nodes]
    return PassResult(graph.replace(nodes=tuple(nodes)), {"flipped": 1})


def test_check_each_names_the_broken_pass_and_tensor() -> None:
    text = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  %r: f32[4] = Relu(%x)
  %y: f32[4] = Add(%r, %r)
  return %y
}
"""
    registry = {**PASSES, "flip_sign": _flip_sign}
    with pytest.raises(DivergenceError, match=r"pass 'flip_sign' \(after dce\) changed tensor 'y'"):
        run_pipeline(parse_graph(text), ("dce", "flip_sign", "simplify"), check_each=True, registry=registry)


def test_failing_pass_writes_a_reproducer(tmp_path) -> None:
    def broken(graph: Graph) -> PassResult:
        return PassResult(graph.replace(outputs=("nowhere",)), {"broke": 1})

    text = "graph main(%x: f32[4]) -> (%y: f32[4]) {\n  %y: f32[4] = Relu(%x)\n  return %y\n}\n"
    with pytest.raises(PassError, match=r"pass 'broken' failed after dce: .*output 'nowhere' is never defined"):
        run_pipeline(parse_graph(text), ("dce", "broken", "fuse"), registry={**PASSES, "broken": broken},
                     reproducer_dir=tmp_path / "repro")
    assert (tmp_path / "repro" / "pipeline.txt").read_text() == "broken,fuse\n"
    assert "Relu(%x)" in (tmp_path / "repro" / "input.ir").read_text()


def test_unknown_pass_lists_the_valid_ones() -> None:
    from ember.compiler.errors import EmberError

    with pytest.raises(EmberError, match="unknown pass.*'nope'.*registered passes: fold_constants"):
        run_pipeline(parse_graph("graph main(%x: f32[1]) -> (%x: f32[1]) {\n  return %x\n}\n"), ("nope",))
