"""Indexing, scatter, pad, resize, sort and select ops beyond the ONNX node tests: symbolic
shapes (data-dependent dims as fresh symbols), configurations the node tests leave out and
opset-11 forms checked against onnxruntime, and clear errors for invalid attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

RNG = np.random.default_rng(7)

# Every type written below is what inference must give back; dims named after a value
# (%nz_1, %u_0) are fresh symbols for sizes only the data decides.
SYMBOLIC = """\
graph main(%x: f32[N,S,8], %ids: i64[N,S], %pairs: i64[N,S,2], %lens: i64[N], %cond: bool[S], %k: i64[1], %img: f32[N,3,H,W], %w: f32[8,4]) -> (%g: f32[N,N,S,8], %top: f32[N,3,8]) {
  const %depth: i64[] = 10
  const %half: f32[4] = [1.0, 1.0, 0.5, 0.5]
  const %k3: i64[1] = [3]
  const %onoff: f32[2] = [0.0, 1.0]
  const %pads: i64[6] = [0, 1, 0, 0, 2, 0]
  const %pads_last: i64[2] = [1, 1]
  const %last: i64[1] = [-1]
  const %twice: f32[4] = [1.0, 1.0, 2.0, 2.0]
  %g: f32[N,N,S,8] = Gather(%x, %ids) {axis=1}
  %ge: f32[N,S,2] = GatherElements(%x, %pairs) {axis=2}
  %gnd: f32[N,S,8] = GatherND(%x, %pairs)
  %gnd_b: f32[N,S] = GatherND(%x, %pairs) {batch_dims=1}
  %pad: f32[N,S+3,8] = Pad(%x, %pads)
  %reflect: f32[N,S,10] = Pad(%x, %pads_last, _, %last) {mode="reflect"}
  %top: f32[N,3,8], %top_i: i64[N,3,8] = TopK(%x, %k3) {axis=1}
  %topr: f32[N,S,topr_2], %topr_i: i64[N,S,topr_2] = TopK(%x, %k) {largest=0}
  %nz: i64[3,nz_1] = NonZero(%x)
  %cp: f32[N,cp_1,8] = Compress(%x, %cond) {axis=1}
  %flat: f32[flat_0] = Compress(%x, %cond)
  %oh: f32[N,10,S] = OneHot(%ids, %depth, %onoff) {axis=1}
  %u: f32[u_0], %u_first: i64[u_0], %u_inv: i64[8*N*S], %u_count: i64[u_0] = Unique(%x)
  %rs: f32[N,S,8] = ReverseSequence(%x, %lens) {batch_axis=0, time_axis=1}
  %e: f32[N,S,4] = Einsum(%x, %w) {equation="bsd,de->bse"}
  %tr: f32[N,8] = Einsum(%x) {equation="bss->bs"}
  %bits: i32[N,S,8] = BitCast(%x) {to="i32"}
  %up: f32[N,3,2*H,2*W] = Resize(%img, _, %twice)
  %down: f32[N,3,H//2,W//2] = Resize(%img, _, %half) {mode="linear"}
  return %g, %top
}
"""


def test_symbolic_shapes_infer_and_hold_at_run_time() -> None:
    text = SYMBOLIC.replace("%tr: f32[N,8] = Einsum(%x) {equation=\"bss->bs\"}\n", "")
    graph = parse_graph(text)
    assert print_graph(retype(graph)) == print_graph(graph)
    for n, s, h in ((2, 5, 6), (1, 8, 4)):
        feeds = interp.random_feeds(graph, RNG, {"N": n, "S": s, "H": h, "W": h + 2})
        feeds["pairs"] = RNG.integers(0, min(n, s), (n, s, 2))
        feeds["ids"] = RNG.integers(0, n, (n, s))
        feeds["lens"] = RNG.integers(0, s + 1, n)
        feeds["k"] = np.array([3], np.int64)
        got = interp.run(graph, feeds, keep_all=True)
        assert got["pad"].shape == (n, s + 3, 8) and got["reflect"].shape == (n, s, 10)
        assert got["gnd"].shape == (n, s, 8) and got["gnd_b"].shape == (n, s)
        assert got["oh"].shape == (n, 10, s) and got["u_inv"].shape == (8 * n * s,)
        assert got["up"].shape == (n, 3, 2 * h, 2 * (h + 2)) and got["down"].shape == (n, 3, h // 2, (h + 2) // 2)
        assert got["topr"].shape == (n, s, 3) and got["e"].shape == (n, s, 4)
        np.testing.assert_array_equal(got["bits"], feeds["x"].view(np.int32))


def test_einsum_repeated_label_takes_a_diagonal_with_a_symbolic_size() -> None:
    graph = parse_graph("""\
graph main(%x: f32[N,S,S]) -> (%d: f32[N,S]) {
  %d: f32[N,S] = Einsum(%x) {equation="bss->bs"}
  return %d
}
""")
    assert print_graph(retype(graph)) == print_graph(graph)
    x = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["d"], np.einsum("bss->bs", x))


def _compare(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], exact: bool = True, rtol: float = 1e-5) -> dict[str, np.ndarray]:
    """ember's interpreter against onnxruntime on every output (dtype, shape, values)."""
    graph = import_proto(model)
    got, want = interp.run(graph, feeds), run_onnxruntime(model, feeds)
    for name in graph.outputs:
        assert got[name].dtype == want[name].dtype, name
        if exact:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name].astype(np.float64), want[name].astype(np.float64), rtol=rtol, atol=rtol, err_msg=name)
        inferred = graph.value(name).type
        assert all(d == w for d, w in zip(inferred.shape, want[name].shape) if isinstance(d, int)), name
        assert inferred.rank == want[name].ndim, name
    return got


def _model(op: str, args: Mapping[str, tuple[int, Sequence[Any]] | np.ndarray | None],
           outputs: Sequence[tuple[str, int, int]] = (("y", T.FLOAT, 0),), opset: int = 18, **attrs: Any) -> onnx.ModelProto:
    """One node; args in input order: (elem type, shape) for a graph input, an array for a
    constant, None for an omitted optional input. outputs: (name, elem type, rank)."""
    names = [k if v is not None else "" for k, v in args.items()]
    inputs = [(k, *v) for k, v in args.items() if isinstance(v, tuple)]
    consts = {k: v for k, v in args.items() if isinstance(v, np.ndarray)}
    node = helper.make_node(op, names, [n for n, _, _ in outputs], **attrs)
    return make_model([node], inputs, [(n, t, [None] * r) for n, t, r in outputs], consts, opset=opset)


def test_gather_nd_with_two_batch_dims_and_negative_indices() -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    idx = RNG.integers(-4, 4, (2, 3, 6, 1))
    model = _model("GatherND", {"x": (T.FLOAT, [2, 3, 4, 5]), "i": (T.INT64, [2, 3, 6, 1])}, outputs=[("y", T.FLOAT, 4)], batch_dims=2)
    _compare(model, {"x": x, "i": idx})


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_reductions_accumulate_duplicate_indices(reduction: str) -> None:
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    nd = _model("ScatterND", {"x": (T.FLOAT, [4, 3]), "i": np.array([[1], [3], [1], [-1], [1]], np.int64), "u": (T.FLOAT, [5, 3])},
                outputs=[("y", T.FLOAT, 2)], reduction=reduction)
    _compare(nd, {"x": x, "u": RNG.standard_normal((5, 3)).astype(np.float32)})
    el = _model("ScatterElements", {"x": (T.FLOAT, [4, 3]), "i": np.array([[0, -1, 2], [0, 3, 2]], np.int64), "u": (T.FLOAT, [2, 3])},
                outputs=[("y", T.FLOAT, 2)], axis=0, reduction=reduction)
    _compare(el, {"x": x, "u": RNG.standard_normal((2, 3)).astype(np.float32)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_with_axes_and_cropping(mode: str) -> None:
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    pads = np.array([2, -1, 1, 3], np.int64) if mode == "constant" else np.array([2, 0, 1, 2], np.int64)
    model = _model("Pad", {"x": (T.FLOAT, [3, 4, 5]), "p": pads, "v": np.array(1.5, np.float32), "a": np.array([2, 0], np.int64)},
                   outputs=[("y", T.FLOAT, 3)], opset=19, mode=mode)
    _compare(model, {"x": x})


def test_pad11_value_input_omitted_and_int_data() -> None:
    model = _model("Pad", {"x": (T.INT32, [2, 3]), "p": np.array([1, 0, 0, 2], np.int64)}, outputs=[("y", T.INT32, 2)], opset=11)
    _compare(model, {"x": RNG.integers(-9, 9, (2, 3)).astype(np.int32)})


@pytest.mark.parametrize("dtype,code", [(np.int64, T.INT64), (np.uint8, T.UINT8), (np.float32, T.FLOAT)])
@pytest.mark.parametrize("largest", [0, 1])
def test_topk_ties_keep_the_lower_index_first(dtype: type, code: int, largest: int) -> None:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    values = np.array([3, info.min, 3, 7, info.max, 7, 0, info.min, info.max, 3], dtype=dtype)
    x = np.stack([values, values[::-1]])
    model = _model("TopK", {"x": (code, [2, 10]), "k": np.array([6], np.int64)},
                   outputs=[("v", code, 2), ("i", T.INT64, 2)], opset=11, largest=largest)
    _compare(model, {"x": x})


def test_reverse_sequence_batch_first() -> None:
    x = RNG.standard_normal((3, 5, 2)).astype(np.float32)
    model = _model("ReverseSequence", {"x": (T.FLOAT, [3, 5, 2]), "l": np.array([5, 0, 3], np.int64)},
                   outputs=[("y", T.FLOAT, 3)], batch_axis=0, time_axis=1)
    _compare(model, {"x": x})


def test_onehot_float_depth_negative_and_out_of_range_indices() -> None:
    idx = np.array([[0, -1, 3], [5, -4, -6]], np.int64)
    model = _model("OneHot", {"i": (T.INT64, [2, 3]), "d": np.array(4.7, np.float32), "v": np.array([2, 9], np.int32)},
                   outputs=[("y", T.INT32, 3)], opset=11, axis=0)
    _compare(model, {"i": idx})


def test_unique_unsorted_along_an_axis() -> None:
    x = np.array([[1, 0, 1, 2, 0], [3, 3, 3, 1, 3]], np.float32)
    model = _model("Unique", {"x": (T.FLOAT, [2, 5])},
                   outputs=[("y", T.FLOAT, 2), ("first", T.INT64, 1), ("inverse", T.INT64, 1), ("count", T.INT64, 1)],
                   opset=11, axis=1, sorted=0)
    _compare(model, {"x": x})


def test_nonzero_and_compress_of_run_time_data() -> None:
    x = np.array([[0, 1, 0], [2, 0, 3]], np.float32)
    _compare(_model("NonZero", {"x": (T.FLOAT, [2, 3])}, outputs=[("y", T.INT64, 2)], opset=13), {"x": x})
    for scalar in (0.0, 2.0):  # a scalar reads as one element of a 1-D tensor: [1, 0] or [[0]]
        _compare(_model("NonZero", {"x": (T.FLOAT, [])}, outputs=[("y", T.INT64, 2)], opset=13), {"x": np.array(scalar, np.float32)})
    model = _model("Compress", {"x": (T.FLOAT, [2, 3]), "c": (T.BOOL, [2])}, outputs=[("y", T.FLOAT, 1)], opset=11)
    _compare(model, {"x": x, "c": np.array([False, True])})


def test_einsum_half_precision_is_computed_in_float32() -> None:
    a, b = (RNG.standard_normal(s).astype(np.float16) for s in ((2, 3, 64), (64, 5)))
    model = _model("Einsum", {"a": (T.FLOAT16, [2, 3, 64]), "b": (T.FLOAT16, [64, 5])}, outputs=[("y", T.FLOAT16, 3)],
                   opset=12, equation="...k,kn")
    _compare(model, {"a": a, "b": b}, exact=False, rtol=2e-3)


def test_resize11_sizes_with_empty_scales_and_roi() -> None:
    x = RNG.standard_normal((1, 2, 4, 6)).astype(np.float32)
    for ctm, mode in (("tf_half_pixel_for_nn", "nearest"), ("tf_crop_and_resize", "linear"), ("align_corners", "cubic")):
        model = _model("Resize", {"x": (T.FLOAT, [1, 2, 4, 6]), "roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32), "scales": np.zeros(0, np.float32),
                        "sizes": np.array([1, 2, 7, 5], np.int64)},
                       outputs=[("y", T.FLOAT, 4)], opset=11, coordinate_transformation_mode=ctm, mode=mode, extrapolation_value=-3.0)
        _compare(model, {"x": x}, exact=False)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest_modes_on_int_data_read_exact_values(nearest_mode: str) -> None:
    x = RNG.integers(-(2**31), 2**31 - 1, (1, 1, 3, 5)).astype(np.int32)  # past float32's exact range
    model = _model("Resize", {"x": (T.INT32, [1, 1, 3, 5]), "roi": None, "s": np.array([1, 1, 2.5, 0.6], np.float32)},
                   outputs=[("y", T.INT32, 4)], opset=13, nearest_mode=nearest_mode, coordinate_transformation_mode="asymmetric")
    _compare(model, {"x": x})


def test_resize_linear_uint8_truncates_like_onnxruntime() -> None:
    x = RNG.integers(0, 255, (1, 1, 4, 4)).astype(np.uint8)
    model = _model("Resize", {"x": (T.UINT8, [1, 1, 4, 4]), "roi": None, "s": np.array([1, 1, 1.5, 1.75], np.float32)},
                   outputs=[("y", T.UINT8, 4)], opset=13, mode="linear")
    _compare(model, {"x": x})


def test_resize18_axes_keep_aspect_ratio_and_antialias() -> None:
    x = RNG.standard_normal((1, 2, 12, 9)).astype(np.float32)
    for policy in ("not_larger", "not_smaller"):
        for mode in ("linear", "cubic"):
            model = _model("Resize", {"x": (T.FLOAT, [1, 2, 12, 9]), "roi": None, "scales": None, "sizes": np.array([5, 4], np.int64)},
                           outputs=[("y", T.FLOAT, 4)], axes=[3, 2], keep_aspect_ratio_policy=policy, mode=mode, antialias=1)
            _compare(model, {"x": x}, exact=False, rtol=1e-4)


def test_bitcast_reinterprets_bytes() -> None:
    x = np.array([[1.0, -0.0], [np.inf, np.nan]], np.float32)
    graph = import_proto(_model("BitCast", {"x": (T.FLOAT, [2, 2])}, outputs=[("y", T.INT32, 2)], opset=26, to=T.INT32))
    assert graph.nodes[0].attrs["to"] == "i32"
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["y"], x.view(np.int32))


def test_gather_value_gives_shape_entries_and_refuses_bad_indices() -> None:
    graph = parse_graph("""\
graph main(%x: f32[N,3,H]) -> (%y: f32[N,3,H]) {
  const %picks: i64[2] = [-1, 0]
  %s: i64[3] = Shape(%x)
  %hn: i64[2] = Gather(%s, %picks)
  %y: f32[N,3,H] = Identity(%x)
  return %y
}
""")
    from ember.compiler.infer import tracked_values

    assert tracked_values(graph)["hn"] == ("H", "N")


INVALID = [
    ("Gather", "%x, %f", "", "indices must be i32 or i64"),
    ("GatherElements", "%x, %i1", "", "indices must have the data's rank"),
    ("GatherND", "%x, %i4", "", "does not fit"),
    ("ScatterND", "%x, %i2, %x", "{reduction=\"sum\"}", "reduction must be one of"),
    ("Pad", "%x, %i2", "{mode=\"mirror\"}", "mode must be one of"),
    ("Pad", "%x, %p2", "", "needs 6 pad values"),
    ("Resize", "%x, _, %scales", "{mode=\"bilinear\"}", "mode must be one of"),
    ("Resize", "%x, _, %scales", "", "scales has 2 entries for 3 axes"),
    ("TopK", "%x, %k9", "", "outside 0..4"),
    ("BitCast", "%x", "{to=\"f16\"}", "one bit width"),
    ("Einsum", "%x, %x", "{equation=\"ij->i\"}", "has 1 operands"),
    ("Compress", "%x, %i1", "", "1-D bool"),
    ("ReverseSequence", "%x, %i1", "{batch_axis=2}", "batch/time axes"),
]


@pytest.mark.parametrize("op,args,attrs,message", INVALID, ids=[f"{c[0]}-{c[3]}" for c in INVALID])
def test_invalid_inputs_and_attributes_give_clear_errors(op: str, args: str, attrs: str, message: str) -> None:
    text = f"""\
graph main(%x: f32[2,3,4], %f: f32[2], %i1: i64[2], %i2: i64[2], %i4: i64[2,4]) -> (%out: f32[1]) {{
  const %k9: i64[1] = [9]
  const %p2: i64[2] = [1, 1]
  const %scales: f32[2] = [1.0, 2.0]
  %out: f32[1] = {op}({args}) {attrs}
  return %out
}}
"""
    with pytest.raises(EmberError, match=message):
        retype(parse_graph(text))
