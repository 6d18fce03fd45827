"""Control flow beyond the ONNX node tests: a Loop whose trip count is computed at run time
and an If whose condition depends on input data (both against onnxruntime with its
optimizations off), while-loops whose state grows, early exits, nested bodies reading
outer-outer values, bodies that leave their inputs untyped, symbolic dims (trip counts,
branches that differ, a known condition whose branch contents flow on), Scan axes and
directions, the Scan node tests below ember's opset floor, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph
from ember.compiler.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import conformance

RTOL, ATOL = 1e-5, 1e-6
vi = helper.make_tensor_value_info


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    got, want = interp.run(import_proto(model), feeds), run_onnxruntime(model, feeds)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)
    return got


def _types(model: onnx.ModelProto) -> dict[str, str]:
    graph = import_proto(model)
    return {name: str(graph.value(name).type) for name in graph.outputs}


# --- Loop ---------------------------------------------------------------------------------------
def _accumulate_body() -> onnx.GraphProto:
    """(i, cond, acc) -> (cond, acc + x * i, acc as a scan output); reads the outer x."""
    return helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["fi"], to=T.FLOAT),
            helper.make_node("Mul", ["x", "fi"], ["xi"]),
            helper.make_node("Add", ["acc", "xi"], ["acc_next"]),
            helper.make_node("Identity", ["cond"], ["cond_next"]),
            helper.make_node("Identity", ["acc"], ["scan"]),
        ],
        "body",
        [vi("i", T.INT64, []), vi("cond", T.BOOL, []), vi("acc", T.FLOAT, [3])],
        [vi("cond_next", T.BOOL, []), vi("acc_next", T.FLOAT, [3]), vi("scan", T.FLOAT, [3])],
    )


def test_loop_with_a_trip_count_computed_at_run_time(rng: np.random.Generator) -> None:
    model = make_model(
        [
            helper.make_node("ReduceSum", ["n_src"], ["n_f"], keepdims=0),
            helper.make_node("Cast", ["n_f"], ["n"], to=T.INT64),
            helper.make_node("Loop", ["n", "", "zero"], ["final", "steps"], body=_accumulate_body()),
        ],
        [("x", T.FLOAT, [3]), ("n_src", T.FLOAT, [2])],
        [("final", T.FLOAT, [3]), ("steps", T.FLOAT, ["T", 3])],
        {"zero": np.zeros(3, np.float32)},
        opset=13,
    )
    assert _types(model) == {"final": "f32[3]", "steps": "f32[steps_0,3]"}  # the count is only known at run time
    for trips in (0, 1, 4):
        feeds = {"x": rng.standard_normal(3).astype(np.float32), "n_src": np.array([trips, 0], np.float32)}
        assert _compare(model, feeds)["steps"].shape == (trips, 3)


def test_loop_trip_count_from_a_shape_is_the_symbolic_dim(rng: np.random.Generator) -> None:
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["a", "x"], ["a2"]),
                              helper.make_node("Relu", ["a2"], ["r"])],
                             "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("a", T.FLOAT, None)],
                             [vi("c2", T.BOOL, []), vi("a2", T.FLOAT, None), vi("r", T.FLOAT, None)])  # shapeless, as torch writes them
    model = make_model(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"]),
         helper.make_node("Loop", ["n", "true", "x"], ["final", "scan"], body=body)],
        [("x", T.FLOAT, ["N", 2])], [("final", T.FLOAT, ["N", 2]), ("scan", T.FLOAT, ["N", "N", 2])],
        {"zero": np.array(0, np.int64), "true": np.array(True)}, opset=13,
    )
    assert _types(model) == {"final": "f32[N,2]", "scan": "f32[N,N,2]"}
    for n in (1, 3):
        _compare(model, {"x": rng.standard_normal((n, 2)).astype(np.float32)})


def test_while_loop_whose_state_grows_gets_fresh_dims(rng: np.random.Generator) -> None:
    body = helper.make_graph(
        [helper.make_node("Concat", ["acc", "one"], ["acc2"], axis=0), helper.make_node("ReduceSum", ["acc2"], ["s"], keepdims=0),
         helper.make_node("Less", ["s", "lim"], ["c2"]), helper.make_node("Identity", ["s"], ["sc"])],
        "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("acc", T.FLOAT, [None])],
        [vi("c2", T.BOOL, []), vi("acc2", T.FLOAT, [None]), vi("sc", T.FLOAT, [])],
    )
    model = make_model([helper.make_node("Loop", ["", "c0", "a0"], ["final", "sums"], body=body)],
                       [("c0", T.BOOL, []), ("lim", T.FLOAT, [])], [("final", T.FLOAT, ["K"]), ("sums", T.FLOAT, ["J"])],
                       {"a0": np.zeros(1, np.float32), "one": np.ones(1, np.float32)}, opset=13)
    graph = import_proto(model)
    assert str(graph.value("final").type) == "f32[final_0]" and str(graph.value("sums").type) == "f32[sums_0]"
    assert str(graph.nodes[0].attrs["body"].inputs[2].type) == "f32[final_0]"  # the body is typed for every iteration
    for cond, lim in ((True, 0.0), (True, 3.0), (True, 5.5), (False, 3.0)):
        _compare(model, {"c0": np.array(cond), "lim": np.array(lim, np.float32)})


def test_trip_count_and_condition_with_an_early_exit(rng: np.random.Generator) -> None:
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "x"], ["acc2"]), helper.make_node("ReduceSum", ["acc2"], ["s"], keepdims=0),
         helper.make_node("Less", ["s", "lim"], ["c2"]), helper.make_node("Mul", ["acc2", "acc2"], ["sq"])],
        "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("acc", T.FLOAT, [3])],
        [vi("c2", T.BOOL, []), vi("acc2", T.FLOAT, [3]), vi("sq", T.FLOAT, [3])],
    )
    model = make_model([helper.make_node("Loop", ["M", "c0", "a0"], ["final", "squares"], body=body)],
                       [("M", T.INT64, []), ("c0", T.BOOL, []), ("x", T.FLOAT, [3]), ("lim", T.FLOAT, [])],
                       [("final", T.FLOAT, [3]), ("squares", T.FLOAT, ["J", 3])], {"a0": np.zeros(3, np.float32)}, opset=16)
    for m, lim in ((5, 100.0), (5, 7.0), (0, 100.0), (-2, 5.0)):
        feeds = {"M": np.array(m, np.int64), "c0": np.array(True), "x": np.ones(3, np.float32), "lim": np.array(lim, np.float32)}
        _compare(model, feeds)


def test_nested_loops_read_values_of_every_enclosing_graph(rng: np.random.Generator) -> None:
    inner = helper.make_graph([helper.make_node("Add", ["a", "x"], ["a2"]), helper.make_node("Identity", ["c"], ["c2"])],
                              "inner", [vi("j", T.INT64, []), vi("c", T.BOOL, []), vi("a", T.FLOAT, [2])],
                              [vi("c2", T.BOOL, []), vi("a2", T.FLOAT, [2])])
    outer = helper.make_graph(
        [helper.make_node("Loop", ["three", "", "acc"], ["acc2"], body=inner), helper.make_node("Identity", ["c"], ["c2"]),
         helper.make_node("Cast", ["i"], ["fi"], to=T.FLOAT), helper.make_node("Mul", ["acc2", "fi"], ["s"])],
        "outer", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("acc", T.FLOAT, [2])],
        [vi("c2", T.BOOL, []), vi("acc2", T.FLOAT, [2]), vi("s", T.FLOAT, [2])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "three")],
    )
    model = make_model([helper.make_node("Loop", ["two", "", "a0"], ["final", "scaled"], body=outer)],
                       [("x", T.FLOAT, [2])], [("final", T.FLOAT, [2]), ("scaled", T.FLOAT, [2, 2])],
                       {"a0": np.zeros(2, np.float32), "two": np.array(2, np.int64)}, opset=13)
    assert _types(model) == {"final": "f32[2]", "scaled": "f32[2,2]"}
    verify(import_proto(model))  # the inner body's `c` shadowed the outer body's: renamed
    _compare(model, {"x": rng.standard_normal(2).astype(np.float32)})


def test_body_values_that_shadow_outer_names_are_renamed(rng: np.random.Generator) -> None:
    # The body calls its carried value `x` (the main graph's input) and its result `y`.
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["x", "y0"], ["y"])],
                             "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("x", T.FLOAT, [2])],
                             [vi("c2", T.BOOL, []), vi("y", T.FLOAT, [2]), vi("x", T.FLOAT, [2])])
    model = make_model([helper.make_node("Neg", ["x"], ["y0"]), helper.make_node("Loop", ["M", "", "x"], ["y", "xs"], body=body)],
                       [("x", T.FLOAT, [2]), ("M", T.INT64, [])], [("y", T.FLOAT, [2]), ("xs", T.FLOAT, ["T", 2])], opset=13)
    graph = import_proto(model)
    verify(graph)
    assert [v.name for v in graph.nodes[1].attrs["body"].inputs] == ["i", "c", "x_1"]
    _compare(model, {"x": rng.standard_normal(2).astype(np.float32), "M": np.array(3, np.int64)})


def test_old_exporters_rank_1_condition_and_trip_count(rng: np.random.Generator) -> None:
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["a", "a"], ["a2"])],
                             "body", [vi("i", T.INT64, []), vi("c", T.BOOL, [1]), vi("a", T.FLOAT, [2])],
                             [vi("c2", T.BOOL, [1]), vi("a2", T.FLOAT, [2]), vi("a", T.FLOAT, [2])])
    model = make_model([helper.make_node("Loop", ["M", "c0", "x"], ["final", "seen"], body=body)],
                       [("x", T.FLOAT, [2]), ("M", T.INT64, [1]), ("c0", T.BOOL, [1])],
                       [("final", T.FLOAT, [2]), ("seen", T.FLOAT, [None, 2])], opset=11)
    _compare(model, {"x": rng.standard_normal(2).astype(np.float32), "M": np.array([3], np.int64), "c0": np.array([True])})


# --- If -----------------------------------------------------------------------------------------
def _data_if(then_nodes: list, then_out: tuple, else_nodes: list, else_out: tuple, x_shape: list, y_shape: list) -> onnx.ModelProto:
    then_g = helper.make_graph(then_nodes, "then", [], [vi(*then_out)])
    else_g = helper.make_graph(else_nodes, "else", [], [vi(*else_out)])
    return make_model(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [("x", T.FLOAT, x_shape)], [("y", T.FLOAT, y_shape)], {"zero": np.array(0.0, np.float32)}, opset=13,
    )


def test_if_whose_condition_depends_on_input_data(rng: np.random.Generator) -> None:
    model = _data_if([helper.make_node("Relu", ["x"], ["t"])], ("t", T.FLOAT, [4]),
                     [helper.make_node("Neg", ["x"], ["e"])], ("e", T.FLOAT, [4]), [4], [4])
    assert _types(model) == {"y": "f32[4]"}
    for sign in (1.0, -1.0):
        _compare(model, {"x": (np.abs(rng.standard_normal(4)) * sign).astype(np.float32)})


def test_if_branches_of_different_sizes_give_a_run_time_dim(rng: np.random.Generator) -> None:
    model = _data_if([helper.make_node("Concat", ["x", "x"], ["t"], axis=0)], ("t", T.FLOAT, [None]),
                     [helper.make_node("Neg", ["x"], ["e"])], ("e", T.FLOAT, [None]), ["N"], ["M"])
    assert _types(model) == {"y": "f32[y_0]"}
    for sign in (1.0, -1.0):
        y = _compare(model, {"x": (np.abs(rng.standard_normal(3)) * sign).astype(np.float32)})["y"]
        assert y.shape == ((6,) if sign > 0 else (3,))


def test_if_branches_of_different_rank_need_a_known_condition() -> None:
    model = _data_if([helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0)], ("t", T.FLOAT, []),
                     [helper.make_node("Neg", ["x"], ["e"])], ("e", T.FLOAT, [4]), [4], [None])
    with pytest.raises(EmberError, match=r"output 0 of the branches: f32\[\] vs f32\[4\] differ in rank"):
        import_proto(model)


# A condition inference knows (Size(Shape(x)) < 4) types only the taken branch, whose output's
# contents (the target [N, 4]) then give Reshape an exact result; the other branch does not
# even have the same rank.
def test_a_known_condition_types_the_taken_branch_and_its_contents_flow_on(rng: np.random.Generator) -> None:
    model = make_model(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["s"], ["rank"]),
         helper.make_node("Less", ["rank", "four"], ["c"]),
         helper.make_node("If", ["c"], ["target"],
                          then_branch=helper.make_graph([helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
                                                         helper.make_node("Concat", ["n", "fourv"], ["t"], axis=0)],
                                                        "then", [], [vi("t", T.INT64, [2])]),
                          else_branch=helper.make_graph([helper.make_node("Identity", ["minus_one"], ["e"])],
                                                        "else", [], [vi("e", T.INT64, [1])])),
         helper.make_node("Reshape", ["x", "target"], ["y"])],
        [("x", T.FLOAT, ["N", 2, 2])], [("y", T.FLOAT, ["N", 4])],
        {"four": np.array(4, np.int64), "minus_one": np.array([-1], np.int64), "zero": np.array([0], np.int64),
         "one": np.array([1], np.int64), "fourv": np.array([4], np.int64)}, opset=13,
    )
    assert _types(model) == {"y": "f32[N,4]"}
    _compare(model, {"x": rng.standard_normal((3, 2, 2)).astype(np.float32)})


# Both branches compute the same contents ([N, 2, 2]) under an unknown condition: they flow on.
SAME_CONTENTS = """\
graph main(%x: f32[N,4], %c: bool[]) -> (%y: f32[N,2,2]) {
  const %one: i64[1] = [1]
  const %two: i64[2] = [2, 2]
  const %zero: i64[1] = [0]
  %t: i64[3] = If(%c) {else_branch=graph else() -> (%e: i64[3]) {
      %s2: i64[2] = Shape(%x)
      %n2: i64[1] = Slice(%s2, %zero, %one)
      %e: i64[3] = Concat(%n2, %two) {axis=0}
      return %e
    }, then_branch=graph then() -> (%th: i64[3]) {
      %s1: i64[2] = Shape(%x)
      %n1: i64[1] = Slice(%s1, %zero, %one)
      %th: i64[3] = Concat(%n1, %two) {axis=0}
      return %th
    }}
  %y: f32[N,2,2] = Reshape(%x, %t)
  return %y
}
"""


def test_branches_with_equal_contents_keep_them_under_an_unknown_condition(rng: np.random.Generator) -> None:
    graph = parse_graph(SAME_CONTENTS)
    assert print_graph(retype(graph)) == print_graph(graph)
    for cond in (True, False):
        assert interp.run(graph, {"x": rng.standard_normal((3, 4)).astype(np.float32), "c": np.array(cond)})["y"].shape == (3, 2, 2)


# --- Scan ---------------------------------------------------------------------------------------
SCAN = """\
graph main(%s0: f32[3], %x: f32[3,T], %y: f32[T,2]) -> (%sf: f32[3], %ys: f32[3,T], %zs: f32[T,2]) {
  %sf: f32[3], %ys: f32[3,T], %zs: f32[T,2] = Scan(%s0, %x, %y) {body=graph body(%s: f32[3], %xi: f32[3], %yi: f32[2]) -> (%s2: f32[3], %sq: f32[3], %yy: f32[2]) {
      %s2: f32[3] = Add(%s, %xi)
      %sq: f32[3] = Mul(%xi, %xi)
      %yy: f32[2] = Neg(%yi)
      return %s2, %sq, %yy
    }, num_scan_inputs=2, scan_input_axes=[-1, 0], scan_input_directions=[1, 0], scan_output_axes=[-1, 0], scan_output_directions=[1, 1]}
  return %sf, %ys, %zs
}
"""


def test_scan_axes_and_directions_match_onnxruntime_under_a_symbolic_length(rng: np.random.Generator) -> None:
    graph = parse_graph(SCAN)
    assert print_graph(retype(graph)) == print_graph(graph)
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "xi"], ["s2"]), helper.make_node("Mul", ["xi", "xi"], ["sq"]), helper.make_node("Neg", ["yi"], ["yy"])],
        "body", [vi("s", T.FLOAT, [3]), vi("xi", T.FLOAT, [3]), vi("yi", T.FLOAT, [2])],
        [vi("s2", T.FLOAT, [3]), vi("sq", T.FLOAT, [3]), vi("yy", T.FLOAT, [2])])
    model = make_model([helper.make_node("Scan", ["s0", "x", "y"], ["sf", "ys", "zs"], body=body, num_scan_inputs=2,
                                         scan_input_axes=[-1, 0], scan_input_directions=[1, 0], scan_output_axes=[-1, 0],
                                         scan_output_directions=[1, 1])],
                       [("s0", T.FLOAT, [3]), ("x", T.FLOAT, [3, "T"]), ("y", T.FLOAT, ["T", 2])],
                       [("sf", T.FLOAT, [3]), ("ys", T.FLOAT, [3, "T"]), ("zs", T.FLOAT, ["T", 2])], opset=16)
    assert _types(model) == {"sf": "f32[3]", "ys": "f32[3,T]", "zs": "f32[T,2]"}
    for t in (1, 4):
        _compare(model, {"s0": rng.standard_normal(3).astype(np.float32), "x": rng.standard_normal((3, t)).astype(np.float32),
                         "y": rng.standard_normal((t, 2)).astype(np.float32)})


def test_an_empty_scan_keeps_its_states_and_gives_empty_outputs() -> None:
    # (onnxruntime 1.x dies with SIGFPE on this case, so ember's answer is checked alone.)
    graph = parse_graph(SCAN)
    s0 = np.arange(3, dtype=np.float32)
    result = interp.run(graph, {"s0": s0, "x": np.zeros((3, 0), np.float32), "y": np.zeros((0, 2), np.float32)})
    np.testing.assert_array_equal(result["sf"], s0)
    assert result["ys"].shape == (3, 0) and result["zs"].shape == (0, 2)


def test_scan_node_tests_below_the_opset_floor_pass_at_opset_11() -> None:
    """test_scan9_* are opset-9 models (ember imports 11+); Scan-11 only added negative axes."""
    import onnx.backend.test.case.node as node_cases
    import onnx.backend.test.case.node.scan  # noqa: F401  (registers its cases)

    cases = [c for c in node_cases._NodeTestCases if c.name.startswith("test_scan9")]
    assert len(cases) == 3
    for case in cases:
        for entry in case.model.opset_import:
            entry.version = 11
        for mode in ("shipped", "frozen"):
            result = conformance.run_case(case, mode)
            assert result.status == "pass", f"{case.name} ({mode}): {result.detail}"


# --- errors -------------------------------------------------------------------------------------
def _loop_with(body_inputs: int, body_outputs: int) -> onnx.ModelProto:
    ins = [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("a", T.FLOAT, [2])][:body_inputs]
    nodes = [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Neg", ["x"], ["a2"])]
    outs = [vi("c2", T.BOOL, []), vi("a2", T.FLOAT, [2])][:body_outputs]
    body = helper.make_graph(nodes, "body", ins, outs)
    return make_model([helper.make_node("Loop", ["M", "", "x"], ["y"], body=body)], [("x", T.FLOAT, [2]), ("M", T.INT64, [])],
                      [("y", T.FLOAT, [2])], opset=13)


def test_loop_bodies_of_the_wrong_arity_are_clear_errors() -> None:
    with pytest.raises(EmberError, match=r"the body takes 2 inputs; a Loop with 1 carried values needs 3"):
        import_proto(_loop_with(2, 2))
    with pytest.raises(EmberError, match=r"the body returns 1 values; a Loop with 1 carried values needs >= 2"):
        import_proto(_loop_with(3, 1))


@pytest.mark.parametrize("attrs,message", [
    ({"num_scan_inputs": 3}, r"num_scan_inputs=3 must be in 1..2"),
    ({"num_scan_inputs": 1, "scan_input_axes": [0, 1]}, r"scan_input_axes has 2 entries for 1 scan inputs"),
    ({"num_scan_inputs": 1, "scan_output_directions": [2]}, r"scan_output_directions entries must be 0"),
    ({"num_scan_inputs": 1, "scan_input_axes": [2]}, r"axis 2 out of range for rank 2"),
])
def test_invalid_scan_attributes_are_clear_errors(attrs: dict, message: str) -> None:
    body = helper.make_graph([helper.make_node("Add", ["s", "xi"], ["s2"]), helper.make_node("Identity", ["s2"], ["o"])], "body",
                             [vi("s", T.FLOAT, [3]), vi("xi", T.FLOAT, [3])], [vi("s2", T.FLOAT, [3]), vi("o", T.FLOAT, [3])])
    model = make_model([helper.make_node("Scan", ["s0", "x"], ["sf", "os"], body=body, **attrs)],
                       [("s0", T.FLOAT, [3]), ("x", T.FLOAT, [4, 3])], [("sf", T.FLOAT, [3]), ("os", T.FLOAT, [4, 3])], opset=16)
    with pytest.raises(EmberError, match=message):
        import_proto(model)
