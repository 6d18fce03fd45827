"""Code generation: each Fused group is one kernel launch; ops lower correctly with a
symbolic batch; ops without a code generator are named."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.runtime import vm as tvm_vm

from ember.compiler import interp
from ember.compiler.parser import parse_graph
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target
from ember.targets.lower import LoweringError

RTOL, ATOL = 1e-4, 1e-5

BLOCK = """graph main(%x: f32[N,16]) -> (%y: f32[N,8], %z: f32[N,8]) {
  const %w1: f32[16,8] = #W1
  const %w2: f32[16,8] = #W2
  const %b: f32[8] = [0.5, -0.5, 0.25, -0.25, 1.0, -1.0, 0.0, 2.0]
  %h: f32[N,8] = MatMul(%x, %w1)
  %hb: f32[N,8] = Add(%h, %b)
  %y: f32[N,8] = Relu(%hb)
  %g: f32[N,8] = MatMul(%x, %w2)
  %s: f32[N,8] = Sigmoid(%g)
  %t: f32[N,8] = Mul(%g, %s)
  %z: f32[N,8] = Softmax(%t) {axis=1}
  return %y, %z
}
"""


def _graph() -> tuple[str, dict[str, np.ndarray]]:
    from ember.compiler.printer import digest

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)
    return BLOCK.replace("W1", digest(w1)).replace("W2", digest(w2)), {"w1": w1, "w2": w2}


def _run(built, graph, feeds):
    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[v.name]) for v in graph.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return {name: o.numpy() for name, o in zip(graph.outputs, outs)}


def test_fused_groups_are_one_kernel_each_and_batch_is_dynamic(rng: np.random.Generator) -> None:
    text, tensors = _graph()
    graph = parse_graph(text, tensors)
    optimized = run_pipeline(graph, DEFAULT_PIPELINE).graph
    groups = [n for n in optimized.nodes if n.op == "Fused"]
    # %g feeds both Sigmoid and Mul inside the same group: the SiLU epilogue is a DAG with one output
    assert [n.attrs["kernel"] for n in groups] == ["matmul_add_relu", "matmul_sigmoid_mul"]
    built = build(optimized, resolve_target("cpu"))
    # one launch per node of the final graph: 2 fused groups + Softmax
    assert built.launches == len(optimized.nodes) == 3
    for batch in (1, 3, 8):
        feeds = interp.random_feeds(graph, rng, {"N": batch})
        got, want = _run(built, optimized, feeds), interp.run(graph, feeds)
        for name in graph.outputs:
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL)


def test_op_without_code_generator_is_named() -> None:
    graph = parse_graph("graph main(%x: f32[1,4,4]) -> (%y: f32[1,1,3,3]) {\n  const %img: i64[2] = [3, 3]\n"
                        "  const %blk: i64[2] = [2, 2]\n  %y: f32[1,1,3,3] = Col2Im(%x, %img, %blk)\n  return %y\n}\n")
    with pytest.raises(LoweringError, match=r"operators without a code generator:\n  Col2Im: 1 node\(s\): y"):
        build(graph, resolve_target("cpu"))


def test_what_relax_refuses_while_lowering_is_one_error() -> None:
    """An f32 LayerNormalization with f16 weights (the importer refuses it, a hand-written graph
    need not): Relax's TypeError becomes one EmberError naming it, not TVM's traceback."""
    from ember.compiler.errors import EmberError

    graph = parse_graph("graph main(%x: f32[2,6]) -> (%y: f32[2,6]) {\n  const %g: f16[6] = [1, 1, 1, 1, 1, 1]\n"
                        "  %y: f32[2,6] = LayerNormalization(%x, %g, %g) {axis=-1}\n  return %y\n}\n")
    with pytest.raises(EmberError, match=r"^cannot lower the model to TVM for cpu: TypeError: .*layer_norm"):
        build(graph, resolve_target("cpu"))


@pytest.mark.parametrize(
    "line",
    [
        "%y: f32[1,4,6,6] = Conv(%x, %w) {pads=[1,1,1,1]}",
        "%y: f32[1,4,3,3] = MaxPool(%x4) {kernel_shape=[2,2], strides=[2,2]}",
        "%y: f32[1,4,3,3] = AveragePool(%x4) {kernel_shape=[3,3], pads=[1,1,1,1], strides=[2,2]}",
        "%y: f32[1,4,1,1] = GlobalAveragePool(%x4)",
        "%y: f32[1,4,6,6] = LeakyRelu(%x4) {alpha=0.2}",
        "%y: f32[1,6,6,4] = Transpose(%x4) {perm=[0,2,3,1]}",
        "%y: f32[1,4,6] = ReduceMean(%x4, %ax) {keepdims=0}",
        "%y: f32[1,4,6,6] = LayerNormalization(%x4, %g, %g) {axis=-1}",
        "%y: f32[1,4,6,6] = Clip(%x4, %lo, %hi)",
        "%y: f32[1,4,6,6] = Split(%x4, %one) {axis=0}",  # one part (torch's split of a batch of 1)
    ],
)
def test_single_ops_match_the_interpreter(line: str, rng: np.random.Generator) -> None:
    text = f"""graph main(%x: f32[1,3,6,6], %x4: f32[1,4,6,6]) -> (%y: {line.split(': ', 1)[1].split(' = ')[0]}) {{
  const %ax: i64[1] = [3]
  const %one: i64[1] = [1]
  const %g: f32[6] = [1.0, 2.0, 0.5, 1.5, 1.0, 0.25]
  const %hi: f32[] = 0.5
  const %lo: f32[] = -0.5
  const %w: f32[4,3,3,3] = #W
  {line}
  return %y
}}
"""
    from ember.compiler.printer import digest

    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = parse_graph(text.replace("#W", "#" + digest(w)), {"w": w})
    built = build(graph, resolve_target("cpu"))
    feeds = interp.random_feeds(graph, rng)
    got, want = _run(built, graph, feeds), interp.run(graph, feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=RTOL, atol=1e-4)
