"""fold_constants: constant subgraphs and static shape arithmetic become constants; the size
cap keeps huge results as nodes; run-time shapes stay."""

from __future__ import annotations

import numpy as np
from passcheck import check_pass, reasons

from ember.compiler.parser import parse_graph
from ember.passes import PASSES
from ember.passes.fold_constants import MAX_FOLD_BYTES


def test_shape_gather_concat_reshape_chain_vanishes(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  const %minus: i64[1] = [-1]
  const %zero: i64[1] = [0]
  %s: i64[3] = Shape(%x)
  %n: i64[1] = Gather(%s, %zero)
  %shape: i64[2] = Concat(%n, %minus) {axis=0}
  %y: f32[2,12] = Reshape(%x, %shape)
  return %y
}
"""
    # Folding leaves the now unread constants and nothing else; dce removes them.
    expected = """graph main(%x: f32[2,3,4]) -> (%y: f32[2,12]) {
  const %minus: i64[1] = [-1]
  const %n: i64[1] = [2]
  const %s: i64[3] = [2, 3, 4]
  const %shape: i64[2] = [2, -1]
  const %zero: i64[1] = [0]
  %y: f32[2,12] = Reshape(%x, %shape)
  return %y
}
"""
    result = check_pass("fold_constants", before, expected, rng)
    assert result.stats == {"shapes_folded": 3}


def test_shapes_made_static_by_a_fold_fold_in_the_next_round(rng: np.random.Generator) -> None:
    """torch's F.pad computes its pads through a rank-2 tensor, whose contents inference does
    not follow: the Pad's output has fresh dims until the pads fold. The graph is then retyped
    (before, the verifier refused the stale [y_0, y_1]) and folded again: the Shape of the
    padded tensor and its product fold in the second round."""
    before = """graph main(%x: f32[3,4]) -> (%z: f32[z_0]) {
  const %m1: i64[1] = [-1]
  const %p2: i64[2,2] = [0, 1, 0, 1]
  %pt: i64[2,2] = Transpose(%p2) {perm=[1,0]}
  %pads: i64[4] = Reshape(%pt, %m1)
  %y: f32[y_0,y_1] = Pad(%x, %pads)
  %s: i64[2] = Shape(%y)
  %n: i64[1] = ReduceProd(%s)
  %z: f32[z_0] = Reshape(%y, %n)
  return %z
}
"""
    expected = """graph main(%x: f32[3,4]) -> (%z: f32[20]) {
  const %m1: i64[1] = [-1]
  const %n: i64[1] = [20]
  const %p2: i64[2,2] = [0, 1, 0, 1]
  const %pads: i64[4] = [0, 0, 1, 1]
  const %pt: i64[2,2] = [0, 0, 1, 1]
  const %s: i64[2] = [4, 5]
  %y: f32[4,5] = Pad(%x, %pads)
  %z: f32[20] = Reshape(%y, %n)
  return %z
}
"""
    assert check_pass("fold_constants", before, expected, rng).stats == {"nodes_folded": 3, "shapes_folded": 1}


def test_constant_float_math_is_evaluated_by_the_interpreter(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[3]) -> (%y: f32[3]) {
  const %a: f32[3] = [1.0, 2.0, 4.0]
  const %b: f32[] = 0.5
  %c: f32[3] = Mul(%a, %b)
  %d: f32[3] = Sqrt(%c)
  %y: f32[3] = Add(%x, %d)
  return %y
}
"""
    expected = """graph main(%x: f32[3]) -> (%y: f32[3]) {
  const %a: f32[3] = [1.0, 2.0, 4.0]
  const %b: f32[] = 0.5
  const %c: f32[3] = [0.5, 1.0, 2.0]
  const %d: f32[3] = [0.7071067690849304, 1.0, 1.4142135381698608]
  %y: f32[3] = Add(%x, %d)
  return %y
}
"""
    assert check_pass("fold_constants", before, expected, rng).stats == {"nodes_folded": 2}


def test_symbolic_batch_keeps_the_run_time_shape_chain(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[N,3,4]) -> (%y: f32[N,12]) {
  const %minus: i64[1] = [-1]
  const %zero: i64[1] = [0]
  %s: i64[3] = Shape(%x)
  %n: i64[1] = Gather(%s, %zero)
  %shape: i64[2] = Concat(%n, %minus) {axis=0}
  %y: f32[N,12] = Reshape(%x, %shape)
  return %y
}
"""
    check_pass("fold_constants", text, text, rng, dims={"N": 5})


def test_results_past_the_size_cap_stay_nodes() -> None:
    elements = MAX_FOLD_BYTES // 4 + 1
    text = f"""graph main(%x: f32[{elements}]) -> (%y: f32[{elements}]) {{
  const %shape: i64[1] = [{elements}]
  %big: f32[{elements}] = ConstantOfShape(%shape)
  %y: f32[{elements}] = Add(%x, %big)
  return %y
}}
"""
    result = PASSES["fold_constants"](parse_graph(text))
    assert result.stats == {}  # declining alone is no change
    assert reasons(result) == [f"fold: %big (ConstantOfShape): the result would be {elements * 4} bytes (cap {MAX_FOLD_BYTES})"]
    # Next to a real change, the cap shows in the stats.
    folded = PASSES["fold_constants"](parse_graph(text.replace("  %big", "  %k: i64[1] = Neg(%shape)\n  %big")))
    assert folded.stats == {"shapes_folded": 1, "too_large": 1}
