"""LSTM/GRU at old and new opsets, a Loop with a run-time trip count and an If on input data,
against onnxruntime (graph optimizations off) on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto

RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("opset", [11, 14])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_matches_onnxruntime(op: str, opset: int, rng: np.random.Generator) -> None:
    seq, batch, inp, hidden = 5, 3, 4, 6
    gates = 4 if op == "LSTM" else 3
    inits = {
        "W": rng.standard_normal((2, gates * hidden, inp)).astype(np.float32) * 0.5,
        "R": rng.standard_normal((2, gates * hidden, hidden)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((2, 2 * gates * hidden)).astype(np.float32) * 0.1,
    }
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    node = helper.make_node(op, ["x", "W", "R", "B", "lens"], outputs, hidden_size=hidden, direction="bidirectional", **extra)
    out_specs = [("Y", T.FLOAT, [seq, 2, batch, hidden]), ("Y_h", T.FLOAT, [2, batch, hidden])]
    if op == "LSTM":
        out_specs.append(("Y_c", T.FLOAT, [2, batch, hidden]))
    model = make_model([node], [("x", T.FLOAT, [seq, batch, inp]), ("lens", T.INT32, [batch])], out_specs, inits, opset=opset)
    graph = import_proto(model)
    feeds = {"x": rng.standard_normal((seq, batch, inp)).astype(np.float32),
             "lens": np.array([5, 3, 1], dtype=np.int32)}
    got, want = interp.run(graph, feeds), run_onnxruntime(model, feeds)
    for name in outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_loop_with_run_time_trip_count(rng: np.random.Generator) -> None:
    # body: (i, cond, acc) -> (cond, acc + x * i, acc as a scan output)
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["fi"], to=T.FLOAT),
            helper.make_node("Mul", ["x", "fi"], ["xi"]),
            helper.make_node("Add", ["acc", "xi"], ["acc_next"]),
            helper.make_node("Identity", ["cond"], ["cond_next"]),
            helper.make_node("Identity", ["acc"], ["scan"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond", T.BOOL, []),
         helper.make_tensor_value_info("acc", T.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_next", T.BOOL, []), helper.make_tensor_value_info("acc_next", T.FLOAT, [3]),
         helper.make_tensor_value_info("scan", T.FLOAT, [3])],
    )
    model = make_model(
        [
            helper.make_node("ReduceSum", ["n_src"], ["n_f"], keepdims=0),
            helper.make_node("Cast", ["n_f"], ["n"], to=T.INT64),
            helper.make_node("Loop", ["n", "", "zero"], ["final", "steps"], body=body),
        ],
        [("x", T.FLOAT, [3]), ("n_src", T.FLOAT, [2])],
        [("final", T.FLOAT, [3]), ("steps", T.FLOAT, ["T", 3])],
        {"zero": np.zeros(3, np.float32)},
        opset=13,
    )
    graph = import_proto(model)
    assert str(graph.value("steps").type).startswith("f32[")
    for trips in (0, 1, 4):
        feeds = {"x": rng.standard_normal(3).astype(np.float32), "n_src": np.array([trips, 0], np.float32)}
        got, want = interp.run(graph, feeds), run_onnxruntime(model, feeds)
        for name in ("final", "steps"):
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{name} trips={trips}")


def test_if_on_input_data(rng: np.random.Generator) -> None:
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, [4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, [4])])
    model = make_model(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        [("x", T.FLOAT, [4])], [("y", T.FLOAT, [4])], {"zero": np.array(0.0, np.float32)}, opset=13,
    )
    graph = import_proto(model)
    for sign in (1.0, -1.0):
        feeds = {"x": (np.abs(rng.standard_normal(4)) * sign).astype(np.float32)}
        np.testing.assert_allclose(interp.run(graph, feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=RTOL, atol=ATOL)
