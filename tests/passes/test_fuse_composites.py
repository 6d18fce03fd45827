"""fuse_composites: GELU (erf and tanh forms, each association), LayerNorm (with and without
scale and bias), Softmax and scaled-dot-product attention become single ops; shared or
mismatching intermediates leave the pattern alone, with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import assert_same_numbers, check_pass, reasons

from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph
from ember.passes import PASSES

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

# x * 0.5 first, x^3 as x * x * x, sqrt(2/pi) on the left
GELU_TANH = """graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {
  const %c: f32[] = 0.044715
  const %half: f32[] = 0.5
  const %k: f32[] = 0.7978845834732056
  const %one: f32[] = 1.0
  %h: f32[2,8] = Mul(%x, %half)
  %p2: f32[2,8] = Mul(%x, %x)
  %p: f32[2,8] = Mul(%p2, %x)
  %q: f32[2,8] = Mul(%c, %p)
  %s: f32[2,8] = Add(%x, %q)
  %t: f32[2,8] = Mul(%k, %s)
  %u: f32[2,8] = Tanh(%t)
  %v: f32[2,8] = Add(%one, %u)
  %y: f32[2,8] = Mul(%h, %v)
  return %y
}
"""

GROUPNORM = """graph main(%x: f32[N,4,H,W]) -> (%y: f32[N,4,H,W]) {
  const %b: f32[2] = [0.0, 0.5]
  const %grouped_shape: i64[3] = [0, 2, -1]
  const %s: f32[2] = [1.0, 2.0]
  %r: f32[N,2,2*H*W] = Reshape(%x, %grouped_shape)
  %n: f32[N,2,2*H*W] = InstanceNormalization(%r, %s, %b) {epsilon=9.999999747378752e-06}
  %shape: i64[4] = Shape(%x)
  %y: f32[N,4,H,W] = Reshape(%n, %shape)
  return %y
}
"""

LAYERNORM = """graph main(%x: f32[N,4,8]) -> (%y: f32[N,4,8]) {
  const %axes: i64[1] = [-1]
  const %b: f32[8] = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
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

SDPA = """graph main(%q: f32[1,2,5,4], %k: f32[1,5,2,4], %v: f32[1,2,5,4], %mask: f32[1,1,5,5]) -> (%y: f32[1,2,5,4]) {
  const %scale: f32[] = 2.0
  %kt: f32[1,2,4,5] = Transpose(%k) {perm=[0,2,3,1]}
  %s: f32[1,2,5,5] = MatMul(%q, %kt)
  %ss: f32[1,2,5,5] = Div(%s, %scale)
  %sm: f32[1,2,5,5] = Add(%mask, %ss)
  %p: f32[1,2,5,5] = Softmax(%sm)
  %y: f32[1,2,5,4] = MatMul(%p, %v)
  return %y
}
"""

CASES = {
    "gelu_erf": (GELU_ERF, """graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {
  %y: f32[2,8] = Gelu(%x)
  return %y
}
""", {"gelu_erf": 1}),
    "gelu_tanh": (GELU_TANH, """graph main(%x: f32[2,8]) -> (%y: f32[2,8]) {
  %y: f32[2,8] = Gelu(%x) {approximate="tanh"}
  return %y
}
""", {"gelu_tanh": 1}),
    "layernorm": (LAYERNORM, """graph main(%x: f32[N,4,8]) -> (%y: f32[N,4,8]) {
  const %b: f32[8] = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
  const %g: f32[8] = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
  %y: f32[N,4,8] = LayerNormalization(%x, %g, %b) {axis=2, epsilon=9.999999747378752e-06}
  return %y
}
""", {"layernorm": 1}),
    # No scale or bias: LayerNormalization needs a scale, so ones are made; x * x for the square
    "layernorm_without_affine": ("""graph main(%x: f32[3,4]) -> (%y: f32[3,4]) {
  const %axes: i64[1] = [1]
  const %eps: f32[] = 0.001
  %m: f32[3,1] = ReduceMean(%x, %axes)
  %d: f32[3,4] = Sub(%x, %m)
  %p: f32[3,4] = Mul(%d, %d)
  %v: f32[3,1] = ReduceMean(%p, %axes)
  %ve: f32[3,1] = Add(%eps, %v)
  %s: f32[3,1] = Sqrt(%ve)
  %y: f32[3,4] = Div(%d, %s)
  return %y
}
""", """graph main(%x: f32[3,4]) -> (%y: f32[3,4]) {
  const %y_beta: f32[4] = [0.0, 0.0, 0.0, 0.0]
  const %y_gamma: f32[4] = [1.0, 1.0, 1.0, 1.0]
  %y: f32[3,4] = LayerNormalization(%x, %y_gamma, %y_beta) {axis=1, epsilon=0.0010000000474974513}
  return %y
}
""", {"layernorm": 1}),
    # torch's GroupNorm below opset 18: per-group scale and bias repeated per channel
    "groupnorm": (GROUPNORM, """graph main(%x: f32[N,4,H,W]) -> (%y: f32[N,4,H,W]) {
  const %y_bias: f32[4] = [0.0, 0.0, 0.5, 0.5]
  const %y_scale: f32[4] = [1.0, 1.0, 2.0, 2.0]
  %y: f32[N,4,H,W] = GroupNormalization(%x, %y_scale, %y_bias) {epsilon=9.999999747378752e-06, num_groups=2}
  return %y
}
""", {"groupnorm": 1}),
    "softmax": (SOFTMAX, """graph main(%x: f32[2,5]) -> (%y: f32[2,5]) {
  %y: f32[2,5] = Softmax(%x) {axis=1}
  return %y
}
""", {"softmax": 1}),
    # K^T becomes K again (simplify later merges the two transposes); scale = 1/2
    "attention": (SDPA, """graph main(%q: f32[1,2,5,4], %k: f32[1,5,2,4], %v: f32[1,2,5,4], %mask: f32[1,1,5,5]) -> (%y: f32[1,2,5,4]) {
  %kt: f32[1,2,4,5] = Transpose(%k) {perm=[0,2,3,1]}
  %kt_bhsd: f32[1,2,5,4] = Transpose(%kt) {perm=[0,1,3,2]}
  %y: f32[1,2,5,4] = Attention(%q, %kt_bhsd, %v, %mask) {scale=0.5}
  return %y
}
""", {"attention": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_composite(case: str, rng: np.random.Generator) -> None:
    before, expected, stats = CASES[case]
    check_pass("fuse_composites", before, expected, rng, stats=stats, dims={"N": 3, "H": 3, "W": 5})


def _with_extra_output(text: str, value: str, shape: str) -> str:
    """`text` with `value` also returned, so an intermediate of the pattern is read outside it."""
    text = text.replace(") {\n", f", %{value}: f32[{shape}]) {{\n", 1)
    return text.replace("  return %y\n", f"  return %y, %{value}\n")


# Heads from the mask alone (1 in Q, K and V, M in the mask): the sum is wider than the scores,
# which Attention's output (sized by Q, K and V) cannot be
SDPA_WIDENED = """graph main(%q: f32[1,1,5,4], %k: f32[1,5,1,4], %v: f32[1,1,5,4], %mask: f32[1,M,5,5]) -> (%y: f32[1,M,5,4]) {
  const %scale: f32[] = 2.0
  %kt: f32[1,1,4,5] = Transpose(%k) {perm=[0,2,3,1]}
  %s: f32[1,1,5,5] = MatMul(%q, %kt)
  %ss: f32[1,1,5,5] = Div(%s, %scale)
  %sm: f32[1,M,5,5] = Add(%mask, %ss)
  %p: f32[1,M,5,5] = Softmax(%sm)
  %y: f32[1,M,5,4] = MatMul(%p, %v)
  return %y
}
"""

NO_CHANGE = {
    "gelu_with_a_shared_intermediate": (_with_extra_output(GELU_ERF, "e", "2,8"), "gelu_erf: %y (Mul): %e is a graph output"),
    "gelu_with_a_wrong_constant": (GELU_ERF.replace("= 0.5", "= 0.25"), "gelu_erf: %y (Mul): constant %half is not all 0.5"),
    "layernorm_over_a_leading_axis": (LAYERNORM.replace("[-1]", "[1]").replace("N,4,1", "N,1,8"),
                                      "layernorm: %y (Add): the mean is over axes [1], not trailing ones"),
    "groupnorm_reshaped_to_another_shape": (
        GROUPNORM.replace("%y: f32[N,4,H,W] = Reshape(%n, %shape)", "%y: f32[N,4,H*W] = Reshape(%n, %flat)")
        .replace("  %shape: i64[4] = Shape(%x)\n", "").replace("-> (%y: f32[N,4,H,W])", "-> (%y: f32[N,4,H*W])")
        .replace("  const %grouped_shape", "  const %flat: i64[3] = [0, 4, -1]\n  const %grouped_shape"),
        "groupnorm: %y (Reshape): the second reshape does not restore x's shape"),
    "softmax_over_two_axes": (SOFTMAX.replace("i64[1] = [1]", "i64[2] = [0, 1]").replace("f32[2,1]", "f32[1,1]"),
                              "softmax: %y (Div): the max and the sum are not over the same single axis"),
    "attention_with_a_shared_score": (_with_extra_output(SDPA, "ss", "1,2,5,5"),
                                      "attention: %y (MatMul): %ss is a graph output"),
    "attention_whose_mask_widens_the_scores": (SDPA_WIDENED, "attention: %y (MatMul): the mask's dims could widen the scores"),
}


@pytest.mark.parametrize("case", sorted(NO_CHANGE))
def test_composite_left_alone(case: str, rng: np.random.Generator) -> None:
    text, reason = NO_CHANGE[case]
    check_pass("fuse_composites", text, text, rng, dims={"N": 2, "H": 3, "W": 5, "M": 3})
    assert reason in reasons(PASSES["fuse_composites"](parse_graph(text)))


SDPA = """graph main(%q: f32[1,2,8,4], %kt: f32[1,2,4,8], %v: f32[1,2,8,4], %keep: bool[1,1,1,8]) -> (%y: f32[1,2,8,4]) {
  const %c: f32[] = 0.7071067690849304
  const %ninf: f32[] = -inf
  const %zero: f32[] = 0.0
  %qs: f32[1,2,8,4] = Mul(%q, %c)
  %ks: f32[1,2,4,8] = Mul(%kt, %c)
  %s: f32[1,2,8,8] = MatMul(%qs, %ks)
  %bias: f32[1,1,1,8] = Where(%keep, %zero, %ninf)
  %a: f32[1,2,8,8] = Add(%s, %bias)
  %p: f32[1,2,8,8] = Softmax(%a) {axis=-1}
  %nan: bool[1,2,8,8] = IsNaN(%p)
  %g: f32[1,2,8,8] = Where(%nan, %zero, %p)
  %y: f32[1,2,8,4] = MatMul(%g, %v)
  return %y
}
"""


def test_sdpa_export_with_split_scale_and_nan_guard_becomes_attention(rng: np.random.Generator) -> None:
    """torch's scaled_dot_product_attention as exported: sqrt(scale) on Q and on K^T, a -inf
    mask from a bool one, softmax's NaN zeroed (ONNX Attention's own convention for a row masked
    everywhere, so the numbers agree on random masks); the chain it reads past is left for dce."""
    result = PASSES["fuse_composites"](parse_graph(SDPA))
    assert result.stats == {"attention_guarded": 1}
    text = print_graph(PASSES["dce"](result.graph).graph)
    assert "%y: f32[1,2,8,4] = Attention(%q, %kt_bhsd, %v, %bias) {scale=0.4999999828857291}" in text
    assert "Softmax" not in text and "IsNaN" not in text
    assert_same_numbers(parse_graph(SDPA), result.graph, rng)


def test_sdpa_attention_over_a_symbolic_sequence_is_left_unfused(rng: np.random.Generator) -> None:
    """(the Attention kernel over a symbolic sequence measured slower than the unfused ones)"""
    text = SDPA.replace(",8,4]", ",S,4]").replace(",4,8]", ",4,S]").replace(",1,8]", ",1,S]").replace(",8,8]", ",S,S]")
    result = PASSES["fuse_composites"](parse_graph(text))
    assert result.stats == {}
    assert "a symbolic sequence length: the unfused kernels are faster" in [r.reason for r in result.rejections]
