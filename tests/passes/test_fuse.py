"""fuse: anchors with their epilogues (chains, DAGs such as SiLU, views between members),
elementwise groups, and the groups it must not form (two outputs, cycles, taken nodes)."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import assert_same_numbers, check_pass, reasons

from ember.compiler.parser import parse_graph
from ember.compiler.verify import verify
from ember.passes import PASSES

CASES = {
    "conv_bias_relu": ("""graph main(%x: f32[1,3,8,8], %w: f32[4,3,3,3], %b: f32[4]) -> (%y: f32[1,4,8,8]) {
  %c: f32[1,4,8,8] = Conv(%x, %w, %b) {pads=[1,1,1,1]}
  %y: f32[1,4,8,8] = Relu(%c)
  return %y
}
""", """graph main(%x: f32[1,3,8,8], %w: f32[4,3,3,3], %b: f32[4]) -> (%y: f32[1,4,8,8]) {
  %y: f32[1,4,8,8] = Fused(%x, %w, %b) {body=graph conv_relu(%arg0: f32[1,3,8,8], %arg1: f32[4,3,3,3], %arg2: f32[4]) -> (%y_out: f32[1,4,8,8]) {
      %c: f32[1,4,8,8] = Conv(%arg0, %arg1, %arg2) {pads=[1,1,1,1]}
      %y_out: f32[1,4,8,8] = Relu(%c)
      return %y_out
    }, kernel="conv_relu"}
  return %y
}
"""),
    # SiLU reads the Conv twice: the group is a DAG with one output
    "conv_silu": ("""graph main(%x: f32[1,2,4,4], %w: f32[2,2,1,1]) -> (%y: f32[1,2,4,4]) {
  %c: f32[1,2,4,4] = Conv(%x, %w)
  %s: f32[1,2,4,4] = Sigmoid(%c)
  %y: f32[1,2,4,4] = Mul(%c, %s)
  return %y
}
""", """graph main(%x: f32[1,2,4,4], %w: f32[2,2,1,1]) -> (%y: f32[1,2,4,4]) {
  %y: f32[1,2,4,4] = Fused(%x, %w) {body=graph conv_sigmoid_mul(%arg0: f32[1,2,4,4], %arg1: f32[2,2,1,1]) -> (%y_out: f32[1,2,4,4]) {
      %c: f32[1,2,4,4] = Conv(%arg0, %arg1)
      %s: f32[1,2,4,4] = Sigmoid(%c)
      %y_out: f32[1,2,4,4] = Mul(%c, %s)
      return %y_out
    }, kernel="conv_sigmoid_mul"}
  return %y
}
"""),
    # bias, activation and residual; the bias stays an operand, the exponent moves into the body
    "matmul_bias_gelu_residual": ("""graph main(%x: f32[N,8], %w: f32[8,8]) -> (%y: f32[N,8]) {
  const %b: f32[8] = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
  const %two: f32[] = 2.0
  %m: f32[N,8] = MatMul(%x, %w)
  %a: f32[N,8] = Add(%m, %b)
  %g: f32[N,8] = Gelu(%a)
  %p: f32[N,8] = Pow(%g, %two)
  %y: f32[N,8] = Add(%p, %x)
  return %y
}
""", """graph main(%x: f32[N,8], %w: f32[8,8]) -> (%y: f32[N,8]) {
  const %b: f32[8] = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
  %y: f32[N,8] = Fused(%x, %w, %b) {body=graph matmul_add_gelu_pow_add(%arg0: f32[N,8], %arg1: f32[8,8], %arg2: f32[8]) -> (%y_out: f32[N,8]) {
      const %two: f32[] = 2.0
      %m: f32[N,8] = MatMul(%arg0, %arg1)
      %a: f32[N,8] = Add(%m, %arg2)
      %g: f32[N,8] = Gelu(%a)
      %p: f32[N,8] = Pow(%g, %two)
      %y_out: f32[N,8] = Add(%p, %arg0)
      return %y_out
    }, kernel="matmul_add_gelu_pow_add"}
  return %y
}
"""),
    # Add(%r, Transpose(%r)) would make the group read its own output: it stops at Relu
    "no_cycle": ("""graph main(%x: f32[4,4], %w: f32[4,4]) -> (%y: f32[4,4]) {
  %m: f32[4,4] = MatMul(%x, %w)
  %r: f32[4,4] = Relu(%m)
  %t: f32[4,4] = Transpose(%r)
  %y: f32[4,4] = Add(%r, %t)
  return %y
}
""", """graph main(%x: f32[4,4], %w: f32[4,4]) -> (%y: f32[4,4]) {
  %r: f32[4,4] = Fused(%x, %w) {body=graph matmul_relu(%arg0: f32[4,4], %arg1: f32[4,4]) -> (%r_out: f32[4,4]) {
      %m: f32[4,4] = MatMul(%arg0, %arg1)
      %r_out: f32[4,4] = Relu(%m)
      return %r_out
    }, kernel="matmul_relu"}
  %t: f32[4,4] = Transpose(%r)
  %y: f32[4,4] = Add(%r, %t)
  return %y
}
"""),
    # the MatMul takes the Add as its epilogue before the elementwise Relu -> Exp group forms
    "anchors_first": ("""graph main(%x: f32[4,4], %y: f32[4,4], %w: f32[4,4]) -> (%z: f32[4,4]) {
  %a: f32[4,4] = Relu(%x)
  %e: f32[4,4] = Exp(%a)
  %c: f32[4,4] = MatMul(%y, %w)
  %z: f32[4,4] = Add(%c, %e)
  return %z
}
""", """graph main(%x: f32[4,4], %y: f32[4,4], %w: f32[4,4]) -> (%z: f32[4,4]) {
  %e: f32[4,4] = Fused(%x) {body=graph relu_exp(%arg0: f32[4,4]) -> (%e_out: f32[4,4]) {
      %a: f32[4,4] = Relu(%arg0)
      %e_out: f32[4,4] = Exp(%a)
      return %e_out
    }, kernel="relu_exp"}
  %z: f32[4,4] = Fused(%y, %w, %e) {body=graph matmul_add(%arg0_1: f32[4,4], %arg1: f32[4,4], %arg2: f32[4,4]) -> (%z_out: f32[4,4]) {
      %c: f32[4,4] = MatMul(%arg0_1, %arg1)
      %z_out: f32[4,4] = Add(%c, %arg2)
      return %z_out
    }, kernel="matmul_add"}
  return %z
}
"""),
    # a view with a constant shape between anchor and epilogue (GPT-2's Gemm -> Reshape -> Add)
    "gemm_view_residual": ("""graph main(%x: f32[16,16], %w: f32[16,16], %b: f32[16], %r: f32[2,8,16]) -> (%y: f32[2,8,16]) {
  const %s3: i64[3] = [2, 8, 16]
  %g: f32[16,16] = Gemm(%x, %w, %b)
  %g3: f32[2,8,16] = Reshape(%g, %s3)
  %y: f32[2,8,16] = Add(%g3, %r)
  return %y
}
""", """graph main(%x: f32[16,16], %w: f32[16,16], %b: f32[16], %r: f32[2,8,16]) -> (%y: f32[2,8,16]) {
  %y: f32[2,8,16] = Fused(%x, %w, %b, %r) {body=graph gemm_reshape_add(%arg0: f32[16,16], %arg1: f32[16,16], %arg2: f32[16], %arg3: f32[2,8,16]) -> (%y_out: f32[2,8,16]) {
      const %s3: i64[3] = [2, 8, 16]
      %g: f32[16,16] = Gemm(%arg0, %arg1, %arg2)
      %g3: f32[2,8,16] = Reshape(%g, %s3)
      %y_out: f32[2,8,16] = Add(%g3, %arg3)
      return %y_out
    }, kernel="gemm_reshape_add"}
  return %y
}
"""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fuse(case: str, rng: np.random.Generator) -> None:
    before, expected = CASES[case]
    check_pass("fuse", before, expected, rng, dims={"N": 3})


NO_CHANGE = {
    "two_outputs": ("""graph main(%x: f32[4,4], %w: f32[4,4]) -> (%r: f32[4,4], %s: f32[4,4]) {
  %m: f32[4,4] = MatMul(%x, %w)
  %r: f32[4,4] = Relu(%m)
  %s: f32[4,4] = Sigmoid(%m)
  return %r, %s
}
""", "group: %r (Relu): not added to the group of %m: the group would have more than one output"),
    "anchor_output_is_a_graph_output": ("""graph main(%x: f32[4,4], %w: f32[4,4]) -> (%m: f32[4,4], %r: f32[4,4]) {
  %m: f32[4,4] = MatMul(%x, %w)
  %r: f32[4,4] = Relu(%m)
  return %m, %r
}
""", None),
    "data_movement_between": ("""graph main(%x: f32[4,4], %w: f32[4,4]) -> (%y: f32[4,4]) {
  %m: f32[4,4] = MatMul(%x, %w)
  %t: f32[4,4] = Transpose(%m)
  %y: f32[4,4] = Relu(%t)
  return %y
}
""", "group: %t (Transpose): not added to the group of %m: not an elementwise op"),
    # a view last in a group gains nothing; a view of a run-time shape does not join
    "view_at_the_end": ("""graph main(%x: f32[4,4], %w: f32[4,4]) -> (%y: f32[16]) {
  const %s: i64[1] = [16]
  %m: f32[4,4] = MatMul(%x, %w)
  %y: f32[16] = Reshape(%m, %s)
  return %y
}
""", None),
    "view_of_a_run_time_shape": ("""graph main(%x: f32[N,4], %w: f32[4,4]) -> (%y: f32[N,4]) {
  %m: f32[N,4] = MatMul(%x, %w)
  %s: i64[2] = Shape(%x)
  %v: f32[N,4] = Reshape(%m, %s)
  %y: f32[N,4] = Relu(%v)
  return %y
}
""", "group: %v (Reshape): not added to the group of %m: a view whose shape is computed at run time"),
    # shape arithmetic (torchvision's anchor count H*W*3): fused, the ConstantOfShape's type
    # would lose what inference knows of n's contents and the verifier refused the graph
    "shape_arithmetic": ("""graph main(%x: f32[3,H,W]) -> (%y: f32[3*H*W]) {
  const %i1: i64[] = 1
  const %i2: i64[] = 2
  const %three: i64[] = 3
  const %zero: i64[1] = [0]
  %s: i64[3] = Shape(%x)
  %h: i64[] = Gather(%s, %i1)
  %w: i64[] = Gather(%s, %i2)
  %hw: i64[] = Mul(%h, %w)
  %hw3: i64[] = Mul(%hw, %three)
  %n: i64[1] = Unsqueeze(%hw3, %zero)
  %z: f32[3*H*W] = ConstantOfShape(%n)
  %f: f32[3*H*W] = Reshape(%x, %n)
  %y: f32[3*H*W] = Add(%f, %z)
  return %y
}
""", "group: %hw (Mul): shape arithmetic (an integer vector of at most MAX_TRACKED entries) stays unfused: inference "
        "follows its contents, which give later shapes, through the op itself and not through a Fused node"),
}


@pytest.mark.parametrize("case", sorted(NO_CHANGE))
def test_fuse_leaves_alone(case: str, rng: np.random.Generator) -> None:
    text, reason = NO_CHANGE[case]
    check_pass("fuse", text, text, rng, dims={"N": 3})
    if reason:
        assert reason in reasons(PASSES["fuse"](parse_graph(text)))


def test_a_constant_shared_between_groups_is_copied_into_each_body() -> None:
    text = """graph main(%x: f32[4], %y: f32[4]) -> (%a: f32[4], %b: f32[4]) {
  const %k: f32[] = 2.0
  %p: f32[4] = Mul(%x, %k)
  %a: f32[4] = Relu(%p)
  %q: f32[4] = Mul(%y, %k)
  %b: f32[4] = Relu(%q)
  return %a, %b
}
"""
    graph = parse_graph(text)
    result = PASSES["fuse"](graph)
    verify(result.graph)
    assert_same_numbers(graph, result.graph, np.random.default_rng(0))
    bodies = [n.attrs["body"] for n in result.graph.nodes]
    assert [c.name for body in bodies for c in body.consts] == ["k_1", "k_2"]
    assert result.graph.consts == ()
