"""inline_branches: Before/Expected pairs, what it leaves alone, and a model whose shape-check
If now compiles and matches onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper
from passcheck import check_pass

from ember.compiler.driver import compile_model
from ember.runtime import load

SHAPE_CHECK = """graph main(%x: f32[N,4]) -> (%y: f32[N,4]) {
  const %four: i64[] = 4
  const %one: i64[] = 1
  %s: i64[2] = Shape(%x)
  %d: i64[] = Gather(%s, %one)
  %c: bool[] = Equal(%d, %four)
  %y: f32[N,4] = If(%c) {else_branch=graph else() -> (%e: f32[N,4]) {
      %e: f32[N,4] = Neg(%x)
      return %e
    }, then_branch=graph then() -> (%t: f32[N,4]) {
      %t: f32[N,4] = Relu(%x)
      return %t
    }}
  return %y
}
"""


def test_an_if_on_a_shape_check_becomes_its_taken_branch(rng: np.random.Generator) -> None:
    expected = """graph main(%x: f32[N,4]) -> (%y: f32[N,4]) {
  const %four: i64[] = 4
  const %one: i64[] = 1
  %s: i64[2] = Shape(%x)
  %d: i64[] = Gather(%s, %one)
  %c: bool[] = Equal(%d, %four)
  %t: f32[N,4] = Relu(%x)
  %y: f32[N,4] = Identity(%t)
  return %y
}
"""
    result = check_pass("inline_branches", SHAPE_CHECK, expected, rng, dims={"N": 3})
    assert result.stats == {"ifs_inlined": 1}


def test_a_constant_false_condition_takes_the_else_branch_its_constants_and_nested_ifs(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[3]) -> (%y: f32[3]) {
  const %no: bool[] = false
  const %yes: bool[] = true
  %y: f32[3] = If(%no) {else_branch=graph else() -> (%e: f32[3]) {
      const %two: f32[] = 2.0
      %m: f32[3] = Mul(%x, %two)
      %e: f32[3] = If(%yes) {else_branch=graph inner_else() -> (%ie: f32[3]) {
          %ie: f32[3] = Neg(%m)
          return %ie
        }, then_branch=graph inner_then() -> (%it: f32[3]) {
          %it: f32[3] = Exp(%m)
          return %it
        }}
      return %e
    }, then_branch=graph then() -> (%t: f32[3]) {
      %t: f32[3] = Relu(%x)
      return %t
    }}
  return %y
}
"""
    expected = """graph main(%x: f32[3]) -> (%y: f32[3]) {
  const %no: bool[] = false
  const %two: f32[] = 2.0
  const %yes: bool[] = true
  %m: f32[3] = Mul(%x, %two)
  %it: f32[3] = Exp(%m)
  %e: f32[3] = Identity(%it)
  %y: f32[3] = Identity(%e)
  return %y
}
"""
    assert check_pass("inline_branches", before, expected, rng).stats == {"ifs_inlined": 2}


def test_a_condition_computed_from_data_is_left_alone(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[3], %flag: bool[]) -> (%y: f32[3]) {
  %y: f32[3] = If(%flag) {else_branch=graph else() -> (%e: f32[3]) {
      %e: f32[3] = Neg(%x)
      return %e
    }, then_branch=graph then() -> (%t: f32[3]) {
      %t: f32[3] = Relu(%x)
      return %t
    }}
  return %y
}
"""
    result = check_pass("inline_branches", text, text, rng)
    assert [r.reason for r in result.rejections] == ["the condition is computed at run time"]


def test_a_model_with_a_shape_check_if_compiles_and_matches_onnxruntime(tmp_path: Path, rng: np.random.Generator) -> None:
    """`if x.shape[1] == 4: relu(x) @ w else: x` as a scripted exporter writes it; before this
    pass the If was an operator without a code generator."""
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", T.FLOAT, ["N", 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", T.FLOAT, ["N", 4])])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Equal", ["d", "four"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = {"one": np.array(1, np.int64), "four": np.array(4, np.int64), "w": rng.standard_normal((4, 4)).astype(np.float32)}
    model = make_model(nodes, [("x", T.FLOAT, ["N", 4])], [("y", T.FLOAT, ["N", 4])], inits)
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember")
    artifact = load(tmp_path / "m.ember")
    for n in (1, 5):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
