"""simplify: one Before/Expected pair per identity, and the cases it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import check_pass, reasons

from ember.compiler.parser import parse_graph
from ember.passes import PASSES

CASES = {
    "identity_dropout_mul_add": (
        """graph main(%x: f32[2,3]) -> (%y: f32[2,3]) {
  const %one: f32[] = 1.0
  const %zero: f32[3] = [0.0, 0.0, 0.0]
  %a: f32[2,3] = Identity(%x)
  %b: f32[2,3] = Mul(%one, %a)
  %c: f32[2,3] = Add(%b, %zero)
  %d: f32[2,3] = Div(%c, %one)
  %e: f32[2,3] = Sub(%d, %zero)
  %f: f32[2,3], %mask: bool[2,3] = Dropout(%e)
  %y: f32[2,3] = Relu(%f)
  return %y
}
""",
        """graph main(%x: f32[2,3]) -> (%y: f32[2,3]) {
  %y: f32[2,3] = Relu(%x)
  return %y
}
""",
    ),
    "reshape_to_same_shape_symbolic": (
        """graph main(%x: f32[N,12]) -> (%y: f32[N,12]) {
  %s: i64[2] = Shape(%x)
  %r: f32[N,12] = Reshape(%x, %s)
  %y: f32[N,12] = Relu(%r)
  return %y
}
""",
        """graph main(%x: f32[N,12]) -> (%y: f32[N,12]) {
  %y: f32[N,12] = Relu(%x)
  return %y
}
""",
    ),
    "reshape_chain": (
        """graph main(%x: f32[2,3,4]) -> (%y: f32[4,6]) {
  const %s1: i64[2] = [6, 4]
  const %s2: i64[2] = [4, -1]
  %a: f32[6,4] = Reshape(%x, %s1)
  %y: f32[4,6] = Reshape(%a, %s2)
  return %y
}
""",
        """graph main(%x: f32[2,3,4]) -> (%y: f32[4,6]) {
  const %s2: i64[2] = [4, -1]
  %y: f32[4,6] = Reshape(%x, %s2)
  return %y
}
""",
    ),
    "transposes_cancel_and_merge": (
        """graph main(%x: f32[2,3,4]) -> (%y: f32[3,4,2], %z: f32[2,3,4]) {
  %a: f32[3,2,4] = Transpose(%x) {perm=[1,0,2]}
  %b: f32[2,3,4] = Transpose(%a) {perm=[1,0,2]}
  %z: f32[2,3,4] = Neg(%b)
  %c: f32[4,3,2] = Transpose(%x) {perm=[2,1,0]}
  %y: f32[3,4,2] = Transpose(%c) {perm=[1,0,2]}
  return %y, %z
}
""",
        """graph main(%x: f32[2,3,4]) -> (%y: f32[3,4,2], %z: f32[2,3,4]) {
  %z: f32[2,3,4] = Neg(%x)
  %y: f32[3,4,2] = Transpose(%x) {perm=[1,2,0]}
  return %y, %z
}
""",
    ),
    "identity_transpose_and_cast": (
        """graph main(%x: f32[2,3]) -> (%y: f32[2,3]) {
  %a: f32[2,3] = Transpose(%x) {perm=[0,1]}
  %b: f32[2,3] = Cast(%a) {to="f32"}
  %y: f32[2,3] = Exp(%b)
  return %y
}
""",
        """graph main(%x: f32[2,3]) -> (%y: f32[2,3]) {
  %y: f32[2,3] = Exp(%x)
  return %y
}
""",
    ),
    "squeeze_unsqueeze_pairs": (
        """graph main(%x: f32[3,4], %z: f32[3,1,4]) -> (%y: f32[3,4], %w: f32[3,1,4]) {
  const %axes: i64[1] = [1]
  const %neg: i64[1] = [-2]
  %u: f32[3,1,4] = Unsqueeze(%x, %axes)
  %v: f32[3,4] = Squeeze(%u, %neg)
  %y: f32[3,4] = Relu(%v)
  %s: f32[3,4] = Squeeze(%z, %axes)
  %t: f32[3,1,4] = Unsqueeze(%s, %axes)
  %w: f32[3,1,4] = Relu(%t)
  return %y, %w
}
""",
        """graph main(%x: f32[3,4], %z: f32[3,1,4]) -> (%y: f32[3,4], %w: f32[3,1,4]) {
  %y: f32[3,4] = Relu(%x)
  %w: f32[3,1,4] = Relu(%z)
  return %y, %w
}
""",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_simplify(case: str, rng: np.random.Generator) -> None:
    before, expected = CASES[case]
    check_pass("simplify", before, expected, rng, dims={"N": 3})


def test_graph_outputs_keep_their_names() -> None:
    """%y = Identity(%r): %r's producer takes the name %y; an output fed by an input stays."""
    before = """graph main(%x: f32[4]) -> (%y: f32[4], %z: f32[4]) {
  %r: f32[4] = Relu(%x)
  %y: f32[4] = Identity(%r)
  %z: f32[4] = Identity(%x)
  return %y, %z
}
"""
    expected = """graph main(%x: f32[4]) -> (%y: f32[4], %z: f32[4]) {
  %y: f32[4] = Relu(%x)
  %z: f32[4] = Identity(%x)
  return %y, %z
}
"""
    result = check_pass("simplify", before, expected, np.random.default_rng(0))
    assert result.stats == {"identity": 1}
    assert reasons(result) == ["identity: %z (Identity): graph output %z would become the graph's input or constant %x"]


NO_CHANGE = {
    "broadcasting_multiply": """graph main(%x: f32[3]) -> (%y: f32[2,3]) {
  const %one: f32[2,3] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %m: f32[2,3] = Mul(%x, %one)
  %y: f32[2,3] = Relu(%m)
  return %y
}
""",
    "reshape_chain_with_zero_dim": """graph main(%x: f32[2,3,4]) -> (%y: f32[6,2,2]) {
  const %s1: i64[2] = [6, 4]
  const %s2: i64[3] = [0, 2, 2]
  %a: f32[6,4] = Reshape(%x, %s1)
  %y: f32[6,2,2] = Reshape(%a, %s2)
  return %y
}
""",
    "transposes_with_a_shared_inner_one": """graph main(%x: f32[2,3,4]) -> (%y: f32[3,4,2], %c: f32[4,3,2]) {
  %c: f32[4,3,2] = Transpose(%x) {perm=[2,1,0]}
  %y: f32[3,4,2] = Transpose(%c) {perm=[1,0,2]}
  return %y, %c
}
""",
    "cast_to_another_dtype": """graph main(%x: f32[2]) -> (%y: f16[2]) {
  %y: f16[2] = Cast(%x) {to="f16"}
  return %y
}
""",
    "dropout_in_training_mode": """graph main(%x: f32[2]) -> (%y: f32[2]) {
  const %ratio: f32[] = 0.5
  const %train: bool[] = true
  %d: f32[2], %mask: bool[2] = Dropout(%x, %ratio, %train)
  %y: f32[2] = Relu(%d)
  return %y
}
""",
    "unsqueeze_of_a_non_unit_squeeze": """graph main(%x: f32[3,1,4]) -> (%y: f32[3,4,1]) {
  const %a: i64[1] = [1]
  const %b: i64[1] = [2]
  %s: f32[3,4] = Squeeze(%x, %a)
  %y: f32[3,4,1] = Unsqueeze(%s, %b)
  return %y
}
""",
}


@pytest.mark.parametrize("case", sorted(NO_CHANGE))
def test_simplify_leaves_alone(case: str, rng: np.random.Generator) -> None:
    text = NO_CHANGE[case]
    if case == "dropout_in_training_mode":  # random: no numeric check
        result = PASSES["simplify"](parse_graph(text))
        assert result.stats == {} and reasons(result) == ["dropout: %d (Dropout): training mode"]
        return
    result = check_pass("simplify", text, text, rng)
    assert result.rejections


def test_group_norm_reshapes_over_a_computed_length_are_removed() -> None:
    """torch exports GroupNorm(C groups) as Reshape [1, C, -1] -> InstanceNormalization ->
    Reshape to the input's shape. Over a length computed from a symbolic one ((T-5)//5 here),
    -1 once resolved to `((T-5)//5)`, a dim spelled differently from the input's: both Reshapes
    stayed, as copies that cost wav2vec2 26 ms. Now -1 resolves to the same dim and both go."""
    import onnx
    from conftest import make_model
    from onnx import TensorProto, helper

    from ember.compiler.importer import import_proto
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE

    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[10], strides=[5]),
             helper.make_node("Reshape", ["p", "flat"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "g", "b"], ["n"]),
             helper.make_node("Shape", ["p"], ["s"]),
             helper.make_node("Reshape", ["n", "s"], ["y"])]
    inits = {"flat": np.array([1, 4, -1], np.int64), "g": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
    model: onnx.ModelProto = make_model(nodes, [("x", TensorProto.FLOAT, [1, 4, "T"])], [("y", TensorProto.FLOAT, [1, 4, "L"])],
                                         inits)
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    assert [n.op for n in graph.nodes] == ["AveragePool", "InstanceNormalization"], [n.op for n in graph.nodes]


def test_a_merged_reshape_chain_is_retyped(rng: np.random.Generator) -> None:
    """A window partition over a dynamic size (transformers' Swin): merged, the reshape infers
    p//512 where the chain had written 16*(p//(16*c))*c//512; the graph is retyped, as the
    verifier compares dims as written (before, the pass failed its check)."""
    before = """graph main(%x: f32[p], %z: f32[c]) -> (%y: f32[16*(p//(16*c))*c//512,16,32]) {
  const %m1_16: i64[2] = [-1, 16]
  const %s2: i64[3] = [-1, 16, 32]
  %cs: i64[1] = Shape(%z)
  %s1: i64[3] = Concat(%m1_16, %cs) {axis=0}
  %r1: f32[p//(16*c),16,c] = Reshape(%x, %s1)
  %y: f32[16*(p//(16*c))*c//512,16,32] = Reshape(%r1, %s2)
  return %y
}
"""
    expected = """graph main(%x: f32[p], %z: f32[c]) -> (%y: f32[p//512,16,32]) {
  const %s2: i64[3] = [-1, 16, 32]
  %y: f32[p//512,16,32] = Reshape(%x, %s2)
  return %y
}
"""
    assert check_pass("simplify", before, expected, rng, dims={"p": 1024, "c": 32}).stats == {"reshape_chain": 1}
