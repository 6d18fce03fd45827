"""Gather with indices from the model's input never reads outside its data (TVM's default `take`
mode reads past the tensor: a crash or garbage): an out-of-range index gives NaN rows for float
data, the nearest valid entry for other data; in-range indices, negative ones included, give the
interpreter's answers."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import compare, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target


def _built(table: np.ndarray, count: int, **attrs: object):
    model = onnx_model([helper.make_node("Gather", ["table", "idx"], ["y"], **attrs)], [("idx", T.INT64, [count])],
                       {"table": table})
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return graph, build(graph, resolve_target("cpu"))


def test_out_of_range_rows_of_a_float_table_are_nan_and_the_others_exact(rng: np.random.Generator) -> None:
    """An embedding lookup (a constant [vocab, width] table, token ids from the input)."""
    table = rng.standard_normal((10, 4)).astype(np.float32)
    graph, built = _built(table, 5)
    inside = {"idx": np.array([0, 9, -1, -10, 3], np.int64)}
    compare(run_vm(built, graph, inside), interp.run(graph, inside), "in range")
    got = run_vm(built, graph, {"idx": np.array([1, 10, -11, 1 << 40, 2], np.int64)})["y"]
    np.testing.assert_array_equal(got[[0, 4]], table[[1, 2]])
    assert np.isnan(got[1:4]).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_out_of_range_indices_into_integer_data_take_the_nearest_entry(axis: int, rng: np.random.Generator) -> None:
    table = rng.integers(-100, 100, (6, 6)).astype(np.int64)
    graph, built = _built(table, 4, axis=axis)
    got = run_vm(built, graph, {"idx": np.array([2, 6, 1000, -7], np.int64)})["y"]
    want = np.take(table, [2, 5, 5, 0], axis=axis)
    np.testing.assert_array_equal(got, want)
