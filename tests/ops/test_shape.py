"""Shape ops beyond the ONNX node tests: exact symbolic shapes through run-time shape arithmetic
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape under a symbolic batch), symbolic Slice /
Split / Range sizes, contents tracked by `value`, opset-11 forms against onnxruntime and clear
errors for invalid attributes."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype, tracked_values
from ember.compiler.ir import Graph
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph

END = 2**63 - 1

# Every type written below is what inference must give back (dims named after a value, like
# %cut_1, are fresh symbols for sizes known only at run time).
SYMBOLIC = f"""\
graph main(%x: f32[N,197,384], %t: f32[N,S,64], %buf: f32[1,1,1024,1024]) -> (%heads: f32[N,197,6,64], %flat: f32[N,75648], %mask: f32[1,1,S,S]) {{
  const %axis0: i64[1] = [0]
  const %end: i64[1] = [{END}]
  const %first: i64[] = 0
  const %head_dims: i64[2] = [6, 64]
  const %minus1: i64[1] = [-1]
  const %one: i64[1] = [1]
  const %rev_end: i64[1] = [-{END}]
  const %two: i64[1] = [2]
  const %zero: i64[1] = [0]
  const %zeros: i64[2] = [0, 0]
  %shape: i64[3] = Shape(%x)
  %n: i64[] = Gather(%shape, %first)
  %n1: i64[1] = Unsqueeze(%n, %axis0)
  %tokens: i64[1] = Slice(%shape, %one, %two)
  %target: i64[4] = Concat(%n1, %tokens, %head_dims) {{axis=0}}
  %heads: f32[N,197,6,64] = Reshape(%x, %target)
  %flat_shape: i64[2] = Concat(%n1, %minus1) {{axis=0}}
  %flat: f32[N,75648] = Reshape(%x, %flat_shape)
  %tshape: i64[3] = Shape(%t)
  %s: i64[1] = Shape(%t) {{end=2, start=1}}
  %ss: i64[2] = Concat(%s, %s) {{axis=0}}
  %three: i64[1] = Add(%one, %two)
  %axes23: i64[2] = Concat(%two, %three) {{axis=0}}
  %mask: f32[1,1,S,S] = Slice(%buf, %zeros, %ss, %axes23)
  %tail: f32[N,S-1,64] = Slice(%t, %one, %end, %one)
  %last: f32[N,1,64] = Slice(%t, %minus1, %end, %one)
  %but_last: f32[N,S-1,64] = Slice(%t, %zero, %minus1, %one)
  %first_tok: f32[N,1,64] = Slice(%t, %zero, %one, %one)
  %rev: f32[N,S,64] = Slice(%t, %minus1, %rev_end, %one, %minus1)
  %even: f32[N,(S+1)//2,64] = Slice(%t, %zero, %end, %one, %two)
  %cut: f32[N,cut_1,64] = Slice(%t, %zero, %two, %one)
  %lo: f32[N,S,32], %hi: f32[N,S,32] = Split(%t) {{axis=2, num_outputs=2}}
  %third: f32[N,S,22], %third_1: f32[N,S,22], %third_2: f32[N,S,20] = Split(%t) {{axis=2, num_outputs=3}}
  %s_scalar: i64[] = Squeeze(%s, %zero)
  %s_one: i64[] = Squeeze(%one, %zero)
  %pos: i64[S] = Range(%first, %s_scalar, %s_one)
  %folded: f32[N,64*S] = Flatten(%t)
  %swap: f32[S,N,64] = Transpose(%t) {{perm=[1,0,2]}}
  %ones: f32[N,S,64] = ConstantOfShape(%tshape)
  %grown: f32[N,S,64] = Expand(%last, %tshape)
  %reps: i64[3] = Concat(%two, %one, %two) {{axis=0}}
  %tiled: f32[2*N,S,128] = Tile(%t, %reps)
  return %heads, %flat, %mask
}}
"""


def _dims_at(shape: tuple, bindings: Mapping[str, int]) -> tuple[int, ...] | None:
    """A symbolic shape evaluated for concrete input dims (None if it has a fresh symbol)."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
            continue
        if set(re.findall(r"[A-Za-z_]\w*", d)) - set(bindings):
            return None
        out.append(eval(d, {}, dict(bindings)))  # dims print as Python arithmetic: 64*S, (S+1)//2
    return tuple(out)


def _check_run_time_shapes(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the graph; every value whose inferred shape has no fresh symbol must match it."""
    result = interp.run(graph, feeds, keep_all=True)
    bindings = interp.bind_dims(graph, feeds)
    for node in graph.nodes:
        for value in node.outputs:
            want = _dims_at(value.type.shape, bindings)
            if want is not None:
                assert result[value.name].shape == want, f"{value.name}: {result[value.name].shape} vs {value.type}"
    return result


def test_symbolic_shape_arithmetic_gives_exact_shapes_that_hold_at_run_time() -> None:
    graph = parse_graph(SYMBOLIC)
    assert print_graph(retype(graph)) == print_graph(graph)
    rng = np.random.default_rng(0)
    for n, s in ((1, 5), (3, 8), (2, 1)):
        feeds = interp.random_feeds(graph, rng, {"N": n, "S": s})
        result = _check_run_time_shapes(graph, feeds)
        x, t = feeds["x"], feeds["t"]
        np.testing.assert_array_equal(result["heads"], x.reshape(n, 197, 6, 64))
        np.testing.assert_array_equal(result["rev"], t[:, ::-1])
        np.testing.assert_array_equal(result["pos"], np.arange(s))
        np.testing.assert_array_equal(result["tiled"], np.tile(t, (2, 1, 2)))


def test_reshape_of_batch_and_minus_one_is_exact_from_an_onnx_model() -> None:
    # Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])), as exporters write x.flatten(1)
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [("x", T.FLOAT, ["N", 3, 4, 5])], [("y", T.FLOAT, ["N", 60])],
        {"zero": np.array(0, np.int64), "axis0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
        opset=13,
    )
    graph = import_proto(model)
    assert str(graph.value("y").type) == "f32[N,60]"
    assert tracked_values(graph)["target"] == ("N", -1)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"])


CONTENTS = f"""\
graph main(%x: f32[N,C,H,W]) -> (%y: f32[N,C,H,W]) {{
  const %axis0: i64[1] = [0]
  const %minus1: i64[1] = [-1]
  const %one: i64[] = 1
  const %rev_end: i64[1] = [-{END}]
  const %three: i64[1] = [3]
  const %two: i64[1] = [2]
  const %zero: i64[] = 0
  %shape: i64[4] = Shape(%x)
  %nc: i64[2], %hw: i64[2] = Split(%shape) {{num_outputs=2}}
  %h: i64[] = Gather(%hw, %zero)
  %h1: i64[1] = Unsqueeze(%h, %axis0)
  %size: i64[] = Size(%x)
  %four1: i64[1] = Shape(%shape)
  %four: i64[] = Squeeze(%four1, %axis0)
  %ramp: i64[4] = Range(%zero, %four, %one)
  %ones: i64[3] = ConstantOfShape(%three) {{value=[1]}}
  %rep: i64[3] = Expand(%h1, %three)
  %twice: i64[4] = Tile(%hw, %two)
  %back: i64[4] = Slice(%shape, %minus1, %rev_end, %axis0, %minus1)
  %flat: i64[4] = Reshape(%shape, %four1)
  %swapped: i64[4] = Transpose(%shape)
  %y: f32[N,C,H,W] = Identity(%x)
  return %y
}}
"""


def test_value_tracks_contents_through_shape_ops() -> None:
    graph = parse_graph(CONTENTS)
    known = tracked_values(retype(graph))
    assert known["nc"] == ("N", "C") and known["hw"] == ("H", "W")
    assert known["h1"] == ("H",) and known["size"] == ("C*H*N*W",)
    assert known["ramp"] == (0, 1, 2, 3) and known["ones"] == (1, 1, 1)
    assert known["rep"] == ("H", "H", "H") and known["twice"] == ("H", "W", "H", "W")
    assert known["back"] == ("W", "H", "C", "N") and known["flat"] == ("N", "C", "H", "W")
    assert known["swapped"] == ("N", "C", "H", "W")


def _run_both(model: object, feeds: Mapping[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray], dict[str, np.ndarray]]:
    graph = import_proto(model)  # type: ignore[arg-type]
    return graph, interp.run(graph, feeds), run_onnxruntime(model, feeds)  # type: ignore[arg-type]


def test_opset11_squeeze_unsqueeze_split_attributes_become_inputs() -> None:
    model = make_model(
        [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
            helper.make_node("Squeeze", ["u"], ["q"], axes=[0]),
            helper.make_node("Split", ["q"], ["a", "b"], axis=1, split=[1, 3]),
        ],
        [("x", T.FLOAT, [2, 4])], [("q", T.FLOAT, [2, 4, 1]), ("a", T.FLOAT, [2, 1, 1]), ("b", T.FLOAT, [2, 3, 1])],
        opset=11,
    )
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    graph, got, want = _run_both(model, {"x": x})
    for node in graph.nodes:
        assert not {"axes", "split"} & set(node.attrs), node
        assert len(node.inputs) == 2  # the attribute is now a constant input
    for name in ("q", "a", "b"):
        np.testing.assert_array_equal(got[name], want[name])
    assert [str(graph.value(n).type) for n in ("q", "a", "b")] == ["f32[2,4,1]", "f32[2,1,1]", "f32[2,3,1]"]


def test_squeeze_with_an_empty_axes_list_squeezes_every_one_like_onnxruntime() -> None:
    model = make_model([helper.make_node("Squeeze", ["x", "axes"], ["y"])], [("x", T.FLOAT, [1, 3, 1])], [("y", T.FLOAT, [3])],
                       {"axes": np.zeros(0, np.int64)}, opset=13)
    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    graph, got, want = _run_both(model, {"x": x})
    assert str(graph.value("y").type) == "f32[3]"
    np.testing.assert_array_equal(got["y"], want["y"])


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([5, -100], [-END, END], [1, 2], [-2, 1]),  # negative step from past the end, clamped start
        ([-1], [-END], [0], [-1]),  # reverse an axis fully
        ([1, 0], [1000, -1], [-1, 1], [3, 2]),  # clamped end, strides
        ([2], [1], [1], [1]),  # empty
        ([0, 0, 0], [END, END, END], None, None),  # axes/steps omitted
    ],
)
def test_slice_configurations_match_onnxruntime(starts: list, ends: list, axes: list | None, steps: list | None) -> None:
    consts = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64)}
    names = ["x", "s", "e"]
    if axes is not None:
        consts["a"], consts["st"] = np.array(axes, np.int64), np.array(steps, np.int64)
        names += ["a", "st"]
    model = make_model([helper.make_node("Slice", names, ["y"])], [("x", T.FLOAT, [4, 6, 5])], [("y", T.FLOAT, [None] * 3)], consts)
    x = np.random.default_rng(3).standard_normal((4, 6, 5)).astype(np.float32)
    graph, got, want = _run_both(model, {"x": x})
    np.testing.assert_array_equal(got["y"], want["y"])
    assert graph.value("y").type.shape == want["y"].shape


def test_range_bounds_at_run_time_match_onnxruntime() -> None:
    for dtype, code, bounds in ((np.int32, T.INT32, (10, -7, -3)), (np.float32, T.FLOAT, (0.1, 1.0, 0.3)),
                                (np.int64, T.INT64, (2**60, 2**60 + 5, 2))):
        model = make_model([helper.make_node("Range", ["a", "b", "c"], ["y"])], [("a", code, []), ("b", code, []), ("c", code, [])],
                           [("y", code, [None])], opset=11)
        feeds = {k: np.array(v, dtype) for k, v in zip("abc", bounds)}
        graph, got, want = _run_both(model, feeds)
        np.testing.assert_array_equal(got["y"], want["y"])
        assert graph.value("y").type.shape == ("y_0",)  # the bounds are run-time inputs


def test_range_float16_accumulates_in_stash_type_like_the_onnx_reference() -> None:
    from onnx.reference import ReferenceEvaluator

    for stash in (T.FLOAT, T.DOUBLE):
        model = make_model([helper.make_node("Range", ["a", "b", "c"], ["y"], stash_type=stash)],
                           [("a", T.FLOAT16, []), ("b", T.FLOAT16, []), ("c", T.FLOAT16, [])], [("y", T.FLOAT16, [None])], opset=27)
        feeds = {k: np.array(v, np.float16) for k, v in zip("abc", (1000.0, 1010.5, 0.75))}
        graph = import_proto(model)
        assert graph.nodes[0].attrs["stash_type"] == ("f32" if stash == T.FLOAT else "f64")
        np.testing.assert_array_equal(interp.run(graph, feeds)["y"], ReferenceEvaluator(model).run(None, feeds)[0])


def test_expand_with_run_time_shape_keeps_static_dims_other_than_one() -> None:
    graph = parse_graph("""\
graph main(%x: f32[1,3,1], %shape: i64[4]) -> (%y: f32[y_0,y_1,3,y_3]) {
  %y: f32[y_0,y_1,3,y_3] = Expand(%x, %shape)
  return %y
}
""")
    assert print_graph(retype(graph)) == print_graph(graph)
    out = interp.run(graph, {"x": np.ones((1, 3, 1), np.float32), "shape": np.array([2, 1, 1, 4], np.int64)})["y"]
    assert out.shape == (2, 1, 3, 4)


def test_depth_space_round_trip_and_center_crop_pad_match_onnxruntime() -> None:
    model = make_model(
        [
            helper.make_node("SpaceToDepth", ["x"], ["d"], blocksize=2),
            helper.make_node("DepthToSpace", ["d"], ["back"], blocksize=2, mode="DCR"),
            helper.make_node("DepthToSpace", ["d"], ["crd"], blocksize=2, mode="CRD"),
            helper.make_node("CenterCropPad", ["x", "size"], ["cc"], axes=[-1, 2]),
        ],
        [("x", T.FLOAT, [2, 3, 4, 6])],
        [("back", T.FLOAT, [None] * 4), ("crd", T.FLOAT, [None] * 4), ("cc", T.FLOAT, [None] * 4)],
        {"size": np.array([3, 7], np.int64)},
        opset=18,
    )
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 6)).astype(np.float32)
    graph, got, want = _run_both(model, {"x": x})
    np.testing.assert_array_equal(got["back"], x)
    for name in ("crd", "cc"):
        np.testing.assert_array_equal(got[name], want[name])
    assert str(graph.value("cc").type) == "f32[2,3,7,3]"


INVALID = [
    ("Transpose", "%x", "{perm=[0,0,1]}", "not a permutation"),
    ("Reshape", "%x, %two_minus", "", "more than one -1"),
    ("Reshape", "%x, %bad_total", "", "cannot reshape"),
    ("Squeeze", "%x, %axis1", "", "cannot squeeze axis 1"),
    ("Unsqueeze", "%x, %dup", "", "repeat"),
    ("Concat", "%x, %y", "{axis=0}", "differ on axis 1"),
    ("DepthToSpace", "%x4", "{blocksize=2}", "not a multiple"),
    ("SpaceToDepth", "%x4", "{blocksize=2, mode=\"XYZ\"}", "mode must be DCR or CRD"),
    ("Flatten", "%x", "{axis=4}", "out of range"),
    ("Tile", "%x, %axis1", "", "one entry per axis"),
    ("Range", "%f, %i, %i", "", "scalars of one dtype"),
    ("EyeLike", "%x", "", "2-D input"),
]


@pytest.mark.parametrize("op,args,attrs,message", INVALID, ids=[f"{c[0]}-{c[3]}" for c in INVALID])
def test_invalid_inputs_and_attributes_give_clear_errors(op: str, args: str, attrs: str, message: str) -> None:
    text = f"""\
graph main(%x: f32[2,3,4], %y: f32[2,5,4], %x4: f32[1,6,4,4], %f: f32[], %i: i64[]) -> (%out: f32[1]) {{
  const %axis1: i64[1] = [1]
  const %bad_total: i64[2] = [5, 5]
  const %dup: i64[2] = [0, 0]
  const %two_minus: i64[2] = [-1, -1]
  %out: f32[1] = {op}({args}) {attrs}
  return %out
}}
"""
    with pytest.raises(EmberError, match=message):
        retype(parse_graph(text))
