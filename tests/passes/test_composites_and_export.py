"""GELU patterns become Gelu; optimized graphs export to ONNX that onnxruntime runs;
`ember diff` and `ember explain` show what passes did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from conftest import run_onnxruntime

from ember.compiler import interp
from ember.compiler.cli import main
from ember.compiler.exporter import to_onnx
from ember.compiler.parser import parse_graph
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.passes import PASSES

RTOL, ATOL = 1e-5, 1e-6

GELU_ERF = """graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {
  const %half: f32[] = 0.5
  const %one: f32[] = 1.0
  const %sqrt2: f32[] = 1.4142135381698608
  %d: f32[2,8] = Div(%x, %sqrt2)
  %e: f32[2,8] = Erf(%d)
  %a: f32[2,8] = Add(%e, %one)
  %m: f32[2,8] = Mul(%x, %a)
  %y: f32[2,8] = Mul(%m, %half)
  return %y
}
"""

GELU_TANH = """graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {
  const %c: f32[] = 0.044715
  const %half: f32[] = 0.5
  const %k: f32[] = 0.7978845834732056
  const %one: f32[] = 1.0
  const %three: f32[] = 3.0
  %h: f32[2,8] = Mul(%x, %half)
  %p: f32[2,8] = Pow(%x, %three)
  %q: f32[2,8] = Mul(%p, %c)
  %s: f32[2,8] = Add(%x, %q)
  %t: f32[2,8] = Mul(%s, %k)
  %u: f32[2,8] = Tanh(%t)
  %v: f32[2,8] = Add(%u, %one)
  %y: f32[2,8] = Mul(%h, %v)
  return %y
}
"""


def _expected(approx: str) -> str:
    attrs = ' {approximate="tanh"}' if approx == "tanh" else ""
    return f"graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {{\n  %y: f32[2,8] = Gelu(%x){attrs}\n  return %y\n}}\n"


def test_gelu_patterns_become_gelu(rng: np.random.Generator) -> None:
    from ember.compiler.printer import print_graph

    for text, approx in ((GELU_ERF, "none"), (GELU_TANH, "tanh")):
        graph = parse_graph(text)
        result = PASSES["fuse_composites"](graph)
        assert result.stats == {f"gelu_{approx}": 1}
        assert print_graph(result.graph).split("\n", 1)[1] == _expected(approx)
        assert PASSES["fuse_composites"](result.graph).stats == {}
        feeds = interp.random_feeds(graph, rng)
        np.testing.assert_allclose(interp.run(result.graph, feeds)["y"], interp.run(graph, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_gelu_with_a_shared_intermediate_is_left_alone() -> None:
    text = GELU_ERF.replace("  return %y\n}", "  %z: f32[2,8] = Neg(%e)\n  return %y\n}").replace(
        "-> (%y: f32[2,8])", "-> (%y: f32[2,8], %z: f32[2,8])").replace("return %y\n", "return %y, %z\n")
    result = PASSES["fuse_composites"](parse_graph(text))
    assert result.stats == {}
    assert any("2 readers" in r.reason for r in result.rejections)


def test_optimized_graph_exports_to_onnx_and_matches_onnxruntime(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[1,3,8,8]) -> (%y: f32[1,4,8,8]) {
  const %w: f32[4,3,1,1] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  const %b: f32[4] = [0.1, 0.2, 0.3, 0.4]
  %c: f32[1,4,8,8] = Conv(%x, %w, %b)
  %y: f32[1,4,8,8] = Relu(%c)
  return %y
}
"""
    graph = parse_graph(text)
    optimized = run_pipeline(graph, DEFAULT_PIPELINE).graph
    assert [n.op for n in optimized.nodes] == ["Fused"]
    feeds = interp.random_feeds(graph, rng)
    got = run_onnxruntime(to_onnx(optimized), feeds)["y"]
    np.testing.assert_allclose(got, interp.run(graph, feeds)["y"], rtol=RTOL, atol=1e-5)


def test_diff_ignores_headers_and_explain_lists_rejections(tmp_path: Path) -> None:
    a, b = tmp_path / "a.ir", tmp_path / "b.ir"
    a.write_text("# ember-ir v1 | after: x (1)\n" + GELU_ERF)
    b.write_text("# ember-ir v1 | after: y (2)\n" + GELU_ERF.replace("Div(%x, %sqrt2)", "Mul(%x, %sqrt2)"))
    result = CliRunner().invoke(main, ["diff", str(a), str(a.with_name("a.ir"))])
    assert result.output.strip() == "no difference"
    result = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert "-  %d: f32[2,8] = Div(%x, %sqrt2)" in result.output and "+  %d: f32[2,8] = Mul(%x, %sqrt2)" in result.output
    digits = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"
    result = CliRunner().invoke(main, ["explain", "fuse", str(digits)])
    assert result.exit_code == 0, result.output
    assert "epilogue:" in result.output and "not an elementwise op" in result.output
    result = CliRunner().invoke(main, ["explain", "nope", str(digits)])
    assert result.exit_code == 1 and "unknown pass 'nope'" in result.output


LAYERNORM = """graph main(%x: f32[N,4,8]) -> (%y: f32[N,4,8]) {
  const %axes: i64[1] = [-1]
  const %b: f32[8] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
  const %eps: f32[] = 9.999999747378752e-06
  const %g: f32[8] = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
  const %two: f32[] = 2.0
  %m: f32[N,4,1] = ReduceMean(%x, %axes)
  %d: f32[N,4,8] = Sub(%x, %m)
  %p: f32[N,4,8] = Pow(%d, %two)
  %v: f32[N,4,1] = ReduceMean(%p, %axes)
  %ve: f32[N,4,1] = Add(%v, %eps)
  %s: f32[N,4,1] = Sqrt(%ve)
  %n: f32[N,4,8] = Div(%d, %s)
  %gn: f32[N,4,8] = Mul(%n, %g)
  %y: f32[N,4,8] = Add(%gn, %b)
  return %y
}
"""

SOFTMAX = """graph main(%x: f32[2,5]) -> (%y: f32[2,5]) {
  const %axes: i64[1] = [1]
  %m: f32[2,1] = ReduceMax(%x, %axes)
  %d: f32[2,5] = Sub(%x, %m)
  %e: f32[2,5] = Exp(%d)
  %s: f32[2,1] = ReduceSum(%e, %axes)
  %y: f32[2,5] = Div(%e, %s)
  return %y
}
"""


def test_layernorm_and_softmax_patterns(rng: np.random.Generator) -> None:
    from ember.compiler.printer import print_graph

    for text, op, stat in ((LAYERNORM, "LayerNormalization", "layernorm"), (SOFTMAX, "Softmax", "softmax")):
        graph = parse_graph(text)
        result = PASSES["fuse_composites"](graph)
        assert result.stats == {stat: 1}, result.rejections
        assert [n.op for n in result.graph.nodes] == [op]
        assert PASSES["fuse_composites"](result.graph).stats == {}
        feeds = interp.random_feeds(graph, rng, {"N": 3})
        np.testing.assert_allclose(interp.run(result.graph, feeds)["y"], interp.run(graph, feeds)["y"], rtol=1e-5, atol=1e-5)
        assert print_graph(result.graph).count(f"= {op}(%x") == 1


SDPA = """graph main(%q: f32[1,2,5,4], %k: f32[1,5,2,4], %v: f32[1,2,5,4], %mask: f32[1,1,5,5]) -> (%y: f32[1,2,5,4]) {
  const %scale: f32[] = 0.5
  %kt: f32[1,2,4,5] = Transpose(%k) {perm=[0,2,3,1]}
  %s: f32[1,2,5,5] = MatMul(%q, %kt)
  %ss: f32[1,2,5,5] = Mul(%s, %scale)
  %sm: f32[1,2,5,5] = Add(%ss, %mask)
  %p: f32[1,2,5,5] = Softmax(%sm)
  %y: f32[1,2,5,4] = MatMul(%p, %v)
  return %y
}
"""


def test_attention_pattern_becomes_attention_and_compiles(rng: np.random.Generator) -> None:
    from ember.targets import build, resolve_target

    graph = parse_graph(SDPA)
    result = run_pipeline(graph, ("fuse_composites", "simplify", "dce"))
    assert result.records[0].stats == {"attention": 1}
    assert [n.op for n in result.graph.nodes] == ["Transpose", "Attention"]
    assert result.graph.nodes[0].attrs["perm"] == (0, 2, 1, 3)  # the two transposes merged
    assert result.graph.nodes[1].attrs["scale"] == 0.5
    feeds = interp.random_feeds(graph, rng)
    want = interp.run(graph, feeds)["y"]
    np.testing.assert_allclose(interp.run(result.graph, feeds)["y"], want, rtol=1e-5, atol=1e-6)
    import tvm
    from tvm.runtime import vm as tvm_vm

    built = build(result.graph, resolve_target("cpu"))
    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(feeds[v.name]) for v in graph.inputs]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
