"""Ops whose output size depends on the data (NonZero, Compress, NonMaxSuppression), compiled:
their results and what later nodes compute from them match the reference interpreter, at
several bindings of the input's symbolic dims, for empty results too; the ONNX backend node
tests of these ops match onnx's own expected outputs; a detection tail (scores -> NMS ->
the kept boxes) compiled by `ember compile` matches onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from codegen_helpers import check_graph, check_model, compare, onnx_model, run_node_cases, run_vm
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.driver import compile_model
from ember.compiler.importer import import_proto
from ember.runtime import load
from ember.targets import build, resolve_target

F, I64, B = T.FLOAT, T.INT64, T.BOOL


def node(op: str, inputs: list[str], out: str | list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out] if isinstance(out, str) else out, **attrs)


def _sparse(threshold: float):
    """A feed fix that zeroes the float inputs below `threshold` (all of them at 9)."""
    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        for name, x in feeds.items():
            if x.dtype == np.float32:
                feeds[name] = np.where(x > threshold, x, 0).astype(np.float32)
    return fix


@pytest.mark.parametrize("shape", [[], [7], ["N", 5], [2, "N", 3], [2, 1, 3, "N"]])
def test_nonzero_of_each_rank_and_what_is_gathered_by_it(shape: list, rng: np.random.Generator) -> None:
    """x[x != 0] as exporters write it (NonZero, Transpose, GatherND), its sum, and the
    indices themselves; densities from all-zero to all-nonzero."""
    nodes = [node("NonZero", ["x"], "nz")]
    if shape:
        nodes += [node("Transpose", ["nz"], "t"), node("GatherND", ["x", "t"], "picked"),
                  node("ReduceSum", ["picked"], "total", keepdims=0)]
    graph = import_proto(onnx_model(nodes, [("x", F, shape)]))
    for threshold in (9.0, 0.5, -9.0):
        check_graph(graph, rng, [{"N": 1}, {"N": 4}], _sparse(threshold))


@pytest.mark.parametrize("elem", [B, T.INT32, T.UINT8, T.FLOAT16])
def test_nonzero_of_other_dtypes(elem: int, rng: np.random.Generator) -> None:
    model = onnx_model([node("NonZero", ["x"], "nz")], [("x", elem, ["N", 6])])

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        x = feeds["x"]
        feeds["x"] = np.where(rng.random(x.shape) < 0.4, 0, x if x.dtype == np.bool_ else x + 1).astype(x.dtype)

    check_model(model, rng, [{"N": 3}, {"N": 1}], fix)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress_along_an_axis_or_flattened(axis: int | None, rng: np.random.Generator) -> None:
    """The condition may be shorter than the axis (the rest is dropped), and all false."""
    attrs = {} if axis is None else {"axis": axis}
    length = 4 if axis is None else 3
    nodes = [node("Compress", ["x", "cond"], "y", **attrs), node("Relu", ["y"], "r")]
    graph = import_proto(onnx_model(nodes, [("x", F, ["N", 3, 5]), ("cond", B, [length])]))

    def fixer(density: float):
        def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
            feeds["cond"] = rng.random(length) < density
        return fix

    for density in (0.0, 0.5, 1.0):
        check_graph(graph, rng, [{"N": 3}, {"N": 5}], fixer(density))


def _boxes(rng: np.random.Generator, batch: int, n: int, center: bool) -> np.ndarray:
    """Boxes that overlap often: corners in either order, or centres and sizes."""
    if center:
        xy = rng.random((batch, n, 2)) * 4
        wh = rng.random((batch, n, 2)) * 2 + 0.1
        return np.concatenate([xy, wh], axis=2).astype(np.float32)
    a, b = rng.random((batch, n, 2)) * 4, rng.random((batch, n, 2)) * 4
    return np.concatenate([a, b], axis=2).astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("given", ["all", "no score threshold", "limit only", "none"])
def test_nms_matches_the_reference(center: int, given: str, rng: np.random.Generator) -> None:
    """Greedy NMS per (batch, class) with run-time limits (inputs, not constants): kept indices
    in order, then the kept boxes gathered from them."""
    inputs = [("boxes", F, ["B", "n", 4]), ("scores", F, ["B", 3, "n"])]
    names = ["boxes", "scores"]
    if given != "none":
        inputs.append(("limit", I64, [1]))
        names.append("limit")
    if given in ("all", "no score threshold"):
        inputs.append(("iou", F, [1]))
        names.append("iou")
    if given == "all":
        inputs.append(("min_score", F, [1]))
        names.append("min_score")
    nodes = [node("NonMaxSuppression", names, "sel", center_point_box=center),
             node("Gather", ["sel", "two"], "box_idx", axis=1),
             node("Gather", ["boxes", "zero"], "first", axis=0),
             node("Gather", ["first", "box_idx"], "kept", axis=0)]
    inits = {"two": np.array(2, np.int64), "zero": np.array(0, np.int64)}
    graph = import_proto(onnx_model(nodes, inputs, inits))
    built = build(graph, resolve_target("cpu"))
    for batch, n, limit, iou, min_score in ((1, 40, 5, 0.3, 0.2), (2, 64, 100, 0.5, 0.6), (3, 1, 2, 0.0, 0.0),
                                             (1, 30, 0, 0.5, 0.0), (2, 50, 3, 1.0, 1.0)):
        feeds = {"boxes": _boxes(rng, batch, n, bool(center)), "scores": rng.random((batch, 3, n)).astype(np.float32),
                 "limit": np.array([limit], np.int64), "iou": np.array([iou], np.float32),
                 "min_score": np.array([min_score], np.float32)}
        feeds = {k: v for k, v in feeds.items() if k in names}
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"B={batch} n={n} limit={limit}")


def test_onnx_node_tests_of_these_ops_match_their_data() -> None:
    """onnx's own NonZero, Compress and NonMaxSuppression node tests, compiled."""
    from onnx.backend.test.case.node import collect_testcases

    cases = [c for c in collect_testcases() if c.name.startswith(("test_nonzero", "test_compress", "test_nonmaxsuppression"))]
    assert len(cases) >= 14
    for case, _, _, got, expected in run_node_cases(cases):
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=case.name)


def detection_tail() -> onnx.ModelProto:
    """A detector's post-processing as torchvision-style exports write it: class scores from
    logits, NMS over every class, then the kept boxes, classes and scores gathered."""
    inits = {"limit": np.array([20], np.int64), "iou": np.array([0.45], np.float32), "min": np.array([0.3], np.float32),
             "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "two": np.array(2, np.int64)}
    nodes = [
        node("Sigmoid", ["logits"], "probs"),  # [1, n, classes]
        node("Transpose", ["probs"], "scores", perm=[0, 2, 1]),
        node("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "min"], "sel"),
        node("Gather", ["sel", "one"], "cls", axis=1),
        node("Gather", ["sel", "two"], "idx", axis=1),
        node("Gather", ["boxes", "zero"], "b0", axis=0),
        node("Gather", ["b0", "idx"], "kept_boxes", axis=0),
        node("Gather", ["probs", "zero"], "p0", axis=0),
        node("Unsqueeze", ["idx", "one_axis"], "idx1"),
        node("Unsqueeze", ["cls", "one_axis"], "cls1"),
        node("Concat", ["idx1", "cls1"], "pairs", axis=1),
        node("GatherND", ["p0", "pairs"], "kept_scores"),
    ]
    inits["one_axis"] = np.array([1], np.int64)
    return make_model(nodes, [("boxes", F, [1, "n", 4]), ("logits", F, [1, "n", 5])],
                      [("kept_boxes", F, ["k", 4]), ("cls", I64, ["k"]), ("kept_scores", F, ["k"])], inits, opset=17)


def test_a_detection_tail_compiles_and_matches_onnxruntime(tmp_path: Path, rng: np.random.Generator) -> None:
    model = detection_tail()
    onnx.save(model, tmp_path / "tail.onnx")
    compile_model(tmp_path / "tail.onnx", tmp_path / "tail.ember")
    artifact = load(tmp_path / "tail.ember")
    for n in (200, 1, 37):
        feeds = {"boxes": _boxes(rng, 1, n, False), "logits": rng.standard_normal((1, n, 5)).astype(np.float32)}
        got, want = artifact(**feeds), run_onnxruntime(model, feeds)
        for name, value in want.items():
            assert got[name].shape == value.shape, (n, name)
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=f"n={n} {name}")
