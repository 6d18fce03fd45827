"""unroll_loops: Before/Expected for a Loop, what it leaves alone and why, Scan directions and
axes and nested loops against the interpreter, and the ONNX Loop/Scan node tests compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model
from onnx import TensorProto as T
from onnx import helper
from passcheck import assert_same_numbers, check_pass

from ember.compiler.importer import import_proto
from ember.passes import PASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "targets"))
from codegen_helpers import check_graph, onnx_model, run_vm

from ember.targets import build, resolve_target

LOOP = """graph main(%x: f32[N,2]) -> (%h: f32[N,2], %hs: f32[2,N,2]) {
  const %M: i64[] = 2
  %h: f32[N,2], %hs: f32[2,N,2] = Loop(%M, _, %x) {body=graph body(%i: i64[], %c: bool[], %h_in: f32[N,2]) -> (%c_out: bool[], %h_out: f32[N,2], %s: f32[N,2]) {
      %fi: f32[] = Cast(%i) {to="f32"}
      %h_out: f32[N,2] = Add(%h_in, %fi)
      %c_out: bool[] = Identity(%c)
      %s: f32[N,2] = Identity(%h_out)
      return %c_out, %h_out, %s
    }}
  return %h, %hs
}
"""


def test_a_loop_of_known_count_becomes_copies_of_its_body(rng: np.random.Generator) -> None:
    expected = """graph main(%x: f32[N,2]) -> (%h: f32[N,2], %hs: f32[2,N,2]) {
  const %M: i64[] = 2
  const %h_i0: i64[] = 0
  const %h_i1: i64[] = 1
  const %h_true: bool[] = true
  const %hs_axis: i64[1] = [0]
  %fi_h_it0: f32[] = Cast(%h_i0) {to="f32"}
  %h_out_h_it0: f32[N,2] = Add(%x, %fi_h_it0)
  %c_out_h_it0: bool[] = Identity(%h_true)
  %s_h_it0: f32[N,2] = Identity(%h_out_h_it0)
  %fi_h_it1: f32[] = Cast(%h_i1) {to="f32"}
  %h_out_h_it1: f32[N,2] = Add(%h_out_h_it0, %fi_h_it1)
  %c_out_h_it1: bool[] = Identity(%h_true)
  %s_h_it1: f32[N,2] = Identity(%h_out_h_it1)
  %h: f32[N,2] = Identity(%h_out_h_it1)
  %s_h_it0_slice: f32[1,N,2] = Unsqueeze(%s_h_it0, %hs_axis)
  %s_h_it1_slice: f32[1,N,2] = Unsqueeze(%s_h_it1, %hs_axis)
  %hs: f32[2,N,2] = Concat(%s_h_it0_slice, %s_h_it1_slice) {axis=0}
  return %h, %hs
}
"""
    result = check_pass("unroll_loops", LOOP, expected, rng, dims={"N": 3})
    assert result.stats == {"loops_unrolled": 1}


def test_a_loop_too_long_to_unroll_is_left_with_the_reason(rng: np.random.Generator) -> None:
    text = LOOP.replace("const %M: i64[] = 2", "const %M: i64[] = 300").replace("%hs: f32[2,N,2]", "%hs: f32[300,N,2]")
    result = check_pass("unroll_loops", text, text, rng, dims={"N": 2})
    assert [r.reason for r in result.rejections] == ["300 iterations of 4 nodes are more than unrolling allows"]


def test_a_loop_that_may_stop_early_is_left_alone(rng: np.random.Generator) -> None:
    text = LOOP.replace("%hs: f32[2,N,2]", "%hs: f32[hs_0,N,2]").replace(
        "      %c_out: bool[] = Identity(%c)\n",
        "      %sum: f32[] = ReduceSum(%h_out) {keepdims=0}\n      %c_out: bool[] = Less(%sum, %fi)\n")
    result = check_pass("unroll_loops", text, text, rng, dims={"N": 2})
    assert [r.reason for r in result.rejections] == ["the body's condition can stop the loop early"]


def test_a_run_time_trip_count_is_left_alone(rng: np.random.Generator) -> None:
    text = LOOP.replace("graph main(%x: f32[N,2])", "graph main(%x: f32[N,2], %M: i64[])").replace("  const %M: i64[] = 2\n", "")
    text = text.replace("%hs: f32[2,N,2]", "%hs: f32[hs_0,N,2]")
    result = check_pass("unroll_loops", text, text, rng, dims={"N": 2})
    assert [r.reason for r in result.rejections] == ["the trip count is computed at run time"]


def _scan_model(in_dirs: list[int], out_dirs: list[int], in_axes: list[int], out_axes: list[int]) -> onnx.ModelProto:
    """A running sum over two scanned inputs; the body also emits the state and a product."""
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "a_t"], ["s1"]), helper.make_node("Add", ["s1", "b_t"], ["s_out"]),
         helper.make_node("Mul", ["a_t", "b_t"], ["p"]), helper.make_node("Identity", ["s_out"], ["o"])],
        "body", [vi("s_in", T.FLOAT, [3]), vi("a_t", T.FLOAT, [3]), vi("b_t", T.FLOAT, [3])],
        [vi("s_out", T.FLOAT, [3]), vi("o", T.FLOAT, [3]), vi("p", T.FLOAT, [3])])
    node = helper.make_node("Scan", ["s0", "a", "b"], ["s", "os", "ps"], body=body, num_scan_inputs=2,
                            scan_input_directions=in_dirs, scan_output_directions=out_dirs, scan_input_axes=in_axes,
                            scan_output_axes=out_axes)
    a_shape = [5, 3] if in_axes[0] == 0 else [3, 5]
    b_shape = [5, 3] if in_axes[1] == 0 else [3, 5]
    return onnx_model([node], [("s0", T.FLOAT, [3]), ("a", T.FLOAT, a_shape), ("b", T.FLOAT, b_shape)], opset=17)


@pytest.mark.parametrize(("in_dirs", "out_dirs", "in_axes", "out_axes"), [
    ([0, 0], [0, 0], [0, 0], [0, 0]), ([1, 0], [0, 1], [0, 1], [1, 0]), ([1, 1], [1, 1], [1, -1], [-1, 1]),
])
def test_scan_directions_and_axes_match_the_interpreter_unrolled_and_compiled(in_dirs: list[int], out_dirs: list[int],
                                                                            in_axes: list[int], out_axes: list[int],
                                                                            rng: np.random.Generator) -> None:
    graph = import_proto(_scan_model(in_dirs, out_dirs, in_axes, out_axes))
    result = PASSES["unroll_loops"](graph)
    assert result.stats == {"scans_unrolled": 1}
    assert_same_numbers(graph, result.graph, rng)
    check_graph(result.graph, rng)


def test_nested_loops_and_an_if_on_the_iteration_number(rng: np.random.Generator) -> None:
    """for i in range(2): for j in range(3): x = x * 2 if i == 0 else x + j -- every copy's If
    is decided after unrolling, and the result compiles."""
    vi = helper.make_tensor_value_info
    then = helper.make_graph([helper.make_node("Mul", ["v", "two"], ["t"])], "then", [], [vi("t", T.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Cast", ["j"], ["fj"], to=T.FLOAT), helper.make_node("Add", ["v", "fj"], ["e"])],
                              "else", [], [vi("e", T.FLOAT, None)])
    inner = helper.make_graph(
        [helper.make_node("Equal", ["i", "zero"], ["first"]),
         helper.make_node("If", ["first"], ["v_out"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["cj"], ["cj_out"])],
        "inner", [vi("j", T.INT64, []), vi("cj", T.BOOL, []), vi("v", T.FLOAT, None)],
        [vi("cj_out", T.BOOL, []), vi("v_out", T.FLOAT, None)])
    outer = helper.make_graph(
        [helper.make_node("Loop", ["three", "", "u"], ["u_out"], body=inner), helper.make_node("Identity", ["ci"], ["ci_out"])],
        "outer", [vi("i", T.INT64, []), vi("ci", T.BOOL, []), vi("u", T.FLOAT, None)],
        [vi("ci_out", T.BOOL, []), vi("u_out", T.FLOAT, None)])
    inits = {"two_trips": np.array(2, np.int64), "three": np.array(3, np.int64), "zero": np.array(0, np.int64),
             "two": np.array(2, np.float32)}
    model = make_model([helper.make_node("Loop", ["two_trips", "", "x"], ["y"], body=outer)], [("x", T.FLOAT, ["N", 4])],
                       [("y", T.FLOAT, ["N", 4])], inits)
    graph = import_proto(model)
    result = PASSES["unroll_loops"](graph)
    assert result.stats == {"loops_unrolled": 3, "ifs_inlined": 6}  # the outer loop, then its 2 inner copies
    assert not any(n.op in ("Loop", "If") for n in result.graph.nodes)
    check_graph(result.graph, rng, [{"N": 1}, {"N": 3}])


def test_onnx_scan_node_tests_unrolled_and_compiled() -> None:
    """onnx's own Scan node test (its length is static): unrolled by the default pipeline,
    compiled, and equal to onnx's expected outputs. (Its Loop tests take the trip count and
    condition as graph inputs: run-time counts, left to the interpreter.)"""
    from onnx.backend.test.case.node import collect_testcases

    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE

    cases = [c for c in collect_testcases() if c.name == "test_scan9_sum"]
    assert len(cases) == 1
    for case in cases:
        for entry in case.model.opset_import:  # an opset-9 model (ember imports 11+; Scan-11 only added negative axes)
            entry.version = 11
        graph = run_pipeline(import_proto(case.model), DEFAULT_PIPELINE).graph
        assert not any(n.op in ("Loop", "Scan") for n in graph.nodes), case.name
        built = build(graph, resolve_target("cpu"))
        for inputs, outputs in case.data_sets:
            feeds = {v.name: x for v, x in zip(case.model.graph.input, inputs)}
            got = run_vm(built, graph, feeds)
            for value, expected in zip(case.model.graph.output, outputs):
                np.testing.assert_allclose(got[value.name], expected, rtol=1e-5, atol=1e-6, err_msg=case.name)


@pytest.mark.parametrize(("in_dirs", "out_dirs", "in_axes", "out_axes"), [
    ([0, 0], [0, 0], [0, 0], [0, 0]), ([1, 0], [0, 1], [0, 1], [1, 0]), ([1, 1], [1, 1], [1, -1], [-1, 1]),
])
def test_a_scan_of_run_time_length_becomes_a_loop_that_compiles(in_dirs: list[int], out_dirs: list[int], in_axes: list[int],
                                                               out_axes: list[int], rng: np.random.Generator) -> None:
    """The sequence length symbolic: the Scan becomes a Loop over it (slices gathered per step,
    outputs moved to their axis and reversed), compiled, and equal to the interpreter's Scan."""
    model = _scan_model(in_dirs, out_dirs, in_axes, out_axes)
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_value == 5:
                dim.dim_param = "L"
    graph = import_proto(model)
    result = PASSES["unroll_loops"](graph)
    assert result.stats == {"scans_as_loops": 1}
    assert [n.op for n in result.graph.nodes].count("Loop") == 1
    assert_same_numbers(graph, result.graph, rng, dims={"L": 4})
    check_graph(result.graph, rng, [{"L": 5}, {"L": 1}, {"L": 7}])
