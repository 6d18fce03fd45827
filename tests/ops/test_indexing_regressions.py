"""Regressions found by comparing codegen with onnxruntime: Slice walking backwards to
INT64_MIN, GatherElements with indices smaller than the data off the gather axis."""

from __future__ import annotations

import numpy as np
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto


def test_slice_with_negative_step_to_int64_min(rng: np.random.Generator) -> None:
    model = make_model(
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])],
        [("x", T.FLOAT, [1, 4, 6])], [("y", T.FLOAT, [1, 4, 3])],
        {"s": np.array([2], np.int64), "e": np.array([-(2**63)], np.int64), "a": np.array([2], np.int64),
         "st": np.array([-1], np.int64)},
    )
    graph = import_proto(model)
    assert str(graph.value("y").type) == "f32[1,4,3]"
    x = rng.standard_normal((1, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"])


def test_gather_elements_output_follows_the_indices_shape(rng: np.random.Generator) -> None:
    model = make_model(
        [helper.make_node("GatherElements", ["d", "i"], ["y"], axis=2)],
        [("d", T.FLOAT, [3, 4, 6]), ("i", T.INT64, [1, 4, 2])], [("y", T.FLOAT, [1, 4, 2])],
    )
    feeds = {"d": rng.standard_normal((3, 4, 6)).astype(np.float32), "i": rng.integers(-6, 6, (1, 4, 2)).astype(np.int64)}
    got = interp.run(import_proto(model), feeds)["y"]
    np.testing.assert_array_equal(got, run_onnxruntime(model, feeds)["y"])
