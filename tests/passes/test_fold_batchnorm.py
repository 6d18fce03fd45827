"""fold_batchnorm: BatchNormalization and per-channel Mul/Div/Add/Sub into the anchor's
weight and bias. Values are chosen so that the folded constants are exact."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import check_pass, reasons

from ember.compiler.parser import parse_graph
from ember.passes import PASSES

CONV_BN = """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %b: f32[2] = [0.5, -1.0]
  const %beta: f32[2] = [0.0, 1.0]
  const %mean: f32[2] = [0.5, 1.0]
  const %scale: f32[2] = [2.0, 1.0]
  const %var: f32[2] = [4.0, 0.25]
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %c: f32[1,2,3,3] = Conv(%x, %w, %b)
  %y: f32[1,2,3,3] = BatchNormalization(%c, %scale, %beta, %mean, %var) {epsilon=0.0}
  return %y
}
"""

CASES = {
    # k = scale / sqrt(var) = [1, 2]; W' = W * k; b' = (b - mean) * k + beta
    "conv_batchnorm": (CONV_BN, """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %b_folded: f32[2] = [0.0, -3.0]
  const %w_folded: f32[2,1,1,1] = [1.0, 4.0]
  %y: f32[1,2,3,3] = Conv(%x, %w_folded, %b_folded)
  return %y
}
""", {"batchnorm_folded": 1}),
    # Mul by k, then Add a: weight scaled once, bias = a (no bias before, an Add keeps the weight)
    "conv_mul_add_without_bias": ("""graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %a: f32[2,1,1] = [0.25, -0.5]
  const %k: f32[1,2,1,1] = [3.0, 0.5]
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %c: f32[1,2,3,3] = Conv(%x, %w)
  %m: f32[1,2,3,3] = Mul(%k, %c)
  %y: f32[1,2,3,3] = Add(%m, %a)
  return %y
}
""", """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %w_folded: f32[2,1,1,1] = [3.0, 1.0]
  const %w_folded_bias: f32[2] = [0.25, -0.5]
  %y: f32[1,2,3,3] = Conv(%x, %w_folded, %w_folded_bias)
  return %y
}
""", {"mul_folded": 1, "add_folded": 1}),
    # Div by c = Mul by 1/c; Sub c = Add -c; a bias already there absorbs both
    "conv_div_sub_with_bias": ("""graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %b: f32[2] = [1.0, 2.0]
  const %c: f32[2,1,1] = [2.0, 4.0]
  const %s: f32[] = 1.5
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %o: f32[1,2,3,3] = Conv(%x, %w, %b)
  %d: f32[1,2,3,3] = Div(%o, %c)
  %y: f32[1,2,3,3] = Sub(%d, %s)
  return %y
}
""", """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3]) {
  const %b_folded_folded: f32[2] = [-1.0, -1.0]
  const %w_folded: f32[2,1,1,1] = [0.5, 0.5]
  %y: f32[1,2,3,3] = Conv(%x, %w_folded, %b_folded_folded)
  return %y
}
""", {"div_folded": 1, "sub_folded": 1}),
    # ConvTranspose, 2 groups: W [C_in=2, C_out/group=1, 1, 1]; output channel g*1 + j
    "conv_transpose_groups": ("""graph main(%x: f32[1,2,2,2]) -> (%y: f32[1,2,2,2]) {
  const %k: f32[2,1,1] = [2.0, -1.0]
  const %w: f32[2,1,1,1] = [1.0, 3.0]
  %c: f32[1,2,2,2] = ConvTranspose(%x, %w) {group=2}
  %y: f32[1,2,2,2] = Mul(%c, %k)
  return %y
}
""", """graph main(%x: f32[1,2,2,2]) -> (%y: f32[1,2,2,2]) {
  const %w_folded: f32[2,1,1,1] = [2.0, -3.0]
  %y: f32[1,2,2,2] = ConvTranspose(%x, %w_folded) {group=2}
  return %y
}
""", {"mul_folded": 1}),
    # Gemm with transB: W [N, K], rows scaled; beta folds into the new C
    "gemm_batchnorm": ("""graph main(%x: f32[3,2]) -> (%y: f32[3,2]) {
  const %beta: f32[2] = [0.0, 1.0]
  const %c: f32[2] = [1.0, 1.0]
  const %mean: f32[2] = [0.0, 0.0]
  const %scale: f32[2] = [1.0, 1.0]
  const %var: f32[2] = [0.25, 4.0]
  const %w: f32[2,2] = [1.0, 2.0, 3.0, 4.0]
  %g: f32[3,2] = Gemm(%x, %w, %c) {beta=2.0, transB=1}
  %y: f32[3,2] = BatchNormalization(%g, %scale, %beta, %mean, %var) {epsilon=0.0}
  return %y
}
""", """graph main(%x: f32[3,2]) -> (%y: f32[3,2]) {
  const %c_folded: f32[2] = [4.0, 2.0]
  const %w_folded: f32[2,2] = [2.0, 4.0, 1.5, 2.0]
  %y: f32[3,2] = Gemm(%x, %w_folded, %c_folded) {transB=1}
  return %y
}
""", {"batchnorm_folded": 1}),
    # MatMul has no bias operand: W's columns scaled, the shift stays an Add (fuse's epilogue)
    "matmul_batchnorm": ("""graph main(%x: f32[N,2]) -> (%y: f32[N,2]) {
  const %beta: f32[2] = [1.0, 0.0]
  const %mean: f32[2] = [0.0, 1.0]
  const %scale: f32[2] = [1.0, 3.0]
  const %var: f32[2] = [1.0, 1.0]
  const %w: f32[2,2] = [1.0, 2.0, 3.0, 4.0]
  %m: f32[N,2] = MatMul(%x, %w)
  %y: f32[N,2] = BatchNormalization(%m, %scale, %beta, %mean, %var) {epsilon=0.0}
  return %y
}
""", """graph main(%x: f32[N,2]) -> (%y: f32[N,2]) {
  const %m_bias: f32[2] = [1.0, -3.0]
  const %w_folded: f32[2,2] = [1.0, 6.0, 3.0, 12.0]
  %m_scaled: f32[N,2] = MatMul(%x, %w_folded)
  %y: f32[N,2] = Add(%m_scaled, %m_bias)
  return %y
}
""", {"batchnorm_folded": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold(case: str, rng: np.random.Generator) -> None:
    before, expected, stats = CASES[case]
    check_pass("fold_batchnorm", before, expected, rng, stats=stats, dims={"N": 4})


def test_a_shared_weight_is_copied_not_changed() -> None:
    text = """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3], %z: f32[1,2,3,3]) {
  const %k: f32[2,1,1] = [2.0, 3.0]
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %c: f32[1,2,3,3] = Conv(%x, %w)
  %y: f32[1,2,3,3] = Mul(%c, %k)
  %d: f32[1,2,3,3] = Conv(%x, %w)
  %z: f32[1,2,3,3] = Relu(%d)
  return %y, %z
}
"""
    expected = """graph main(%x: f32[1,1,3,3]) -> (%y: f32[1,2,3,3], %z: f32[1,2,3,3]) {
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  const %w_folded: f32[2,1,1,1] = [2.0, 6.0]
  %y: f32[1,2,3,3] = Conv(%x, %w_folded)
  %d: f32[1,2,3,3] = Conv(%x, %w)
  %z: f32[1,2,3,3] = Relu(%d)
  return %y, %z
}
"""
    result = check_pass("fold_batchnorm", text, expected, np.random.default_rng(1))
    assert result.stats == {"mul_folded": 1, "shared_weight_copied": 1}


NO_CHANGE = {
    # [2] broadcasts along the last axis (width), not the channels
    "vector_along_the_width": ("""graph main(%x: f32[1,1,2,2]) -> (%y: f32[1,2,2,2]) {
  const %a: f32[2] = [1.0, 2.0]
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %c: f32[1,2,2,2] = Conv(%x, %w)
  %y: f32[1,2,2,2] = Add(%c, %a)
  return %y
}
""", "add_folded: %y (Add): the constant [2] does not vary along output channel axis 1 only"),
    # BatchNormalization normalizes axis 1; a 3-D MatMul's channels are its last axis
    "batchnorm_after_3d_matmul": ("""graph main(%x: f32[2,2,2]) -> (%y: f32[2,2,2]) {
  const %p: f32[2] = [1.0, 2.0]
  const %w: f32[2,2] = [1.0, 2.0, 3.0, 4.0]
  %m: f32[2,2,2] = MatMul(%x, %w)
  %y: f32[2,2,2] = BatchNormalization(%m, %p, %p, %p, %p)
  return %y
}
""", "batchnorm_folded: %y (BatchNormalization): normalizes axis 1, the anchor's output channels are axis 2"),
    "anchor_read_elsewhere": ("""graph main(%x: f32[1,1,2,2]) -> (%y: f32[1,2,2,2], %c: f32[1,2,2,2]) {
  const %k: f32[2,1,1] = [1.0, 2.0]
  const %w: f32[2,1,1,1] = [1.0, 2.0]
  %c: f32[1,2,2,2] = Conv(%x, %w)
  %y: f32[1,2,2,2] = Mul(%c, %k)
  return %y, %c
}
""", "mul_folded: %y (Mul): %c is a graph output"),
    "bias_add_after_matmul": ("""graph main(%x: f32[3,2]) -> (%y: f32[3,2]) {
  const %b: f32[2] = [1.0, 2.0]
  const %w: f32[2,2] = [1.0, 2.0, 3.0, 4.0]
  %m: f32[3,2] = MatMul(%x, %w)
  %y: f32[3,2] = Add(%m, %b)
  return %y
}
""", "add_folded: %y (Add): a plain bias add after MatMul (fuse makes it an epilogue)"),
}


@pytest.mark.parametrize("case", sorted(NO_CHANGE))
def test_fold_leaves_alone(case: str, rng: np.random.Generator) -> None:
    text, reason = NO_CHANGE[case]
    check_pass("fold_batchnorm", text, text, rng)
    assert reason in reasons(PASSES["fold_batchnorm"](parse_graph(text)))
