"""Loops whose count or exit is decided at run time, compiled (a private function that calls
itself once per iteration): a while loop with an early exit and scan outputs, zero iterations,
an If and a nested run-time loop in the body, and thousands of iterations (the runtime runs
such a model on a thread with a deep stack). Against onnxruntime, and against ember's
interpreter where onnxruntime types an empty scan output differently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.driver import compile_model
from ember.compiler.importer import import_proto
from ember.runtime import load

vi = helper.make_tensor_value_info


def _while_model(rng: np.random.Generator) -> onnx.ModelProto:
    """while i < M and c: h = tanh(h @ w + i); c = sum(h) < limit; scan h and i * 2."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["m"]), helper.make_node("Cast", ["i"], ["fi"], to=T.FLOAT),
         helper.make_node("Add", ["m", "fi"], ["a"]), helper.make_node("Tanh", ["a"], ["h_out"]),
         helper.make_node("ReduceSum", ["h_out"], ["s"], keepdims=0), helper.make_node("Less", ["s", "limit"], ["c_out"]),
         helper.make_node("Identity", ["h_out"], ["sc"]), helper.make_node("Add", ["i", "i"], ["twice"])],
        "body", [vi("i", T.INT64, []), vi("c_in", T.BOOL, []), vi("h_in", T.FLOAT, None)],
        [vi("c_out", T.BOOL, []), vi("h_out", T.FLOAT, None), vi("sc", T.FLOAT, None), vi("twice", T.INT64, [])])
    nodes = [helper.make_node("Loop", ["M", "c0", "x"], ["h", "hs", "is"], body=body), helper.make_node("Relu", ["h"], ["y"])]
    inits = {"w": (rng.standard_normal((8, 8)) * 0.3).astype(np.float32)}
    return make_model(nodes, [("x", T.FLOAT, ["N", 8]), ("M", T.INT64, []), ("c0", T.BOOL, []), ("limit", T.FLOAT, [])],
                      [("y", T.FLOAT, ["N", 8]), ("hs", T.FLOAT, ["K", "N", 8]), ("is", T.INT64, ["K"])], inits)


def _feeds(rng: np.random.Generator, n: int, trips: int, start: bool, limit: float) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((n, 8)).astype(np.float32), "M": np.array(trips, np.int64), "c0": np.array(start),
            "limit": np.array(limit, np.float32)}


def test_a_while_loop_with_an_early_exit_and_scan_outputs(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _while_model(rng)
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample=_feeds(rng, 2, 3, True, 100.0))
    artifact = load(tmp_path / "m.ember")
    assert artifact.manifest.data["build_stats"]["run_time_loops"] == 1
    for n, trips, limit in ((1, 5, 100.0), (4, 50, 2.0), (2, 12, 1e9)):
        feeds = _feeds(rng, n, trips, True, limit)
        got, want = artifact(**feeds), run_onnxruntime(model, feeds)
        for name, value in want.items():
            assert got[name].shape == value.shape, (name, got[name].shape, value.shape)
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    graph = import_proto(model)
    for trips, start in ((0, True), (7, False)):  # no iteration: y = relu(x), empty scan outputs
        feeds = _feeds(rng, 3, trips, start, 100.0)
        got, want = artifact(**feeds), interp.run(graph, feeds)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
        # the slices' shape is known (onnxruntime gives [0], ember's interpreter [0, 0, 8])
        assert got["hs"].shape == (0, 3, 8) and got["is"].shape == (0,)


def test_thousands_of_iterations_run_on_the_deep_stack(tmp_path: Path, rng: np.random.Generator) -> None:
    """5000 iterations: on the main thread's stack the VM's recursion would end in a crash."""
    model = _while_model(rng)
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample=_feeds(rng, 2, 3, True, 100.0))
    feeds = _feeds(rng, 2, 5000, True, 1e9)
    got, want = load(tmp_path / "m.ember")(**feeds), run_onnxruntime(model, feeds)
    assert got["hs"].shape == (5000, 2, 8)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_an_if_and_a_nested_run_time_loop_in_the_body(tmp_path: Path, rng: np.random.Generator) -> None:
    """for i in range(M): v = v * 2 if i is even else v - 1; then for j in range(i): v = v + 0.5"""
    then = helper.make_graph([helper.make_node("Mul", ["v", "two"], ["t"])], "then", [], [vi("t", T.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Sub", ["v", "one"], ["e"])], "else", [], [vi("e", T.FLOAT, None)])
    inner = helper.make_graph([helper.make_node("Add", ["u", "half"], ["u_out"]), helper.make_node("Identity", ["cj"], ["cj_out"])],
                              "inner", [vi("j", T.INT64, []), vi("cj", T.BOOL, []), vi("u", T.FLOAT, None)],
                              [vi("cj_out", T.BOOL, []), vi("u_out", T.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Mod", ["i", "two_i"], ["r"]), helper.make_node("Equal", ["r", "zero_i"], ["even"]),
         helper.make_node("If", ["even"], ["w"], then_branch=then, else_branch=other),
         helper.make_node("Loop", ["i", "", "w"], ["v_out"], body=inner), helper.make_node("Identity", ["c"], ["c_out"])],
        "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("v", T.FLOAT, None)],
        [vi("c_out", T.BOOL, []), vi("v_out", T.FLOAT, None)])
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32), "half": np.array(0.5, np.float32),
             "two_i": np.array(2, np.int64), "zero_i": np.array(0, np.int64)}
    model = make_model([helper.make_node("Loop", ["M", "", "x"], ["y"], body=body)], [("x", T.FLOAT, ["N", 3]), ("M", T.INT64, [])],
                       [("y", T.FLOAT, ["N", 3])], inits)
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember",
                  sample={"x": rng.standard_normal((2, 3)).astype(np.float32), "M": np.array(3, np.int64)})
    artifact = load(tmp_path / "m.ember")
    for n, trips in ((1, 0), (2, 1), (3, 6)):
        feeds = {"x": rng.standard_normal((n, 3)).astype(np.float32), "M": np.array(trips, np.int64)}
        np.testing.assert_allclose(artifact(**feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=1e-5, atol=1e-5)
