"""If whose condition is computed from the data at run time, compiled (a Relax If over the two
branches): both branches taken, branches of different sizes (a run-time dim), several outputs,
an If nested in a branch, branches that read a CNN's blocked activations and a conv after the
If; every case against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.driver import compile_model
from ember.runtime import load

RTOL, ATOL = 1e-5, 1e-5


def _graph(name: str, nodes: list, outputs: list[str]) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, T.FLOAT, None) for o in outputs])


def _check(model: onnx.ModelProto, tmp_path: Path, feeds_list: list[dict[str, np.ndarray]]) -> None:
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember")
    artifact = load(tmp_path / "m.ember")
    for feeds in feeds_list:
        got, want = artifact(**feeds), run_onnxruntime(model, feeds)
        for name, value in want.items():
            assert got[name].shape == value.shape, (name, got[name].shape, value.shape)
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=name)


def test_branches_of_different_sizes_and_two_outputs(tmp_path: Path, rng: np.random.Generator) -> None:
    """`if x.sum() > 0: (relu(x) @ w, x) else: (x[:, :2], -x)`, then a Sigmoid of the first."""
    then = _graph("then", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["t"]),
                           helper.make_node("Identity", ["x"], ["t2"])], ["t", "t2"])
    other = _graph("else", [helper.make_node("Slice", ["x", "st", "en", "ax"], ["e"]), helper.make_node("Neg", ["x"], ["e2"])],
                   ["e", "e2"])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y", "y2"], then_branch=then, else_branch=other), helper.make_node("Sigmoid", ["y"], ["z"])]
    inits = {"zero": np.array(0, np.float32), "w": rng.standard_normal((4, 4)).astype(np.float32),
             "st": np.array([0], np.int64), "en": np.array([2], np.int64), "ax": np.array([1], np.int64)}
    model = make_model(nodes, [("x", T.FLOAT, ["N", 4])], [("z", T.FLOAT, ["N", "k"]), ("y2", T.FLOAT, ["N", 4])], inits)
    feeds = [{"x": (np.abs(rng.standard_normal((n, 4))) * sign).astype(np.float32)} for n in (1, 5) for sign in (1, -1)]
    _check(model, tmp_path, feeds)


def test_a_nested_if_and_a_branch_over_blocked_cnn_activations(tmp_path: Path, rng: np.random.Generator) -> None:
    """conv -> If(flag) {then: If(mean > 0) {relu | conv}, else: maxpool-free identity} -> conv:
    the branches read the first conv's blocked output and the conv after the If reads theirs."""
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((8, 16, 1, 1)) * 0.1).astype(np.float32)
    inner_then = _graph("inner_then", [helper.make_node("Relu", ["a"], ["it"])], ["it"])
    inner_else = _graph("inner_else", [helper.make_node("Conv", ["a", "w2"], ["ie"], pads=[1, 1, 1, 1])], ["ie"])
    then = _graph("then", [helper.make_node("ReduceMean", ["a"], ["m"], keepdims=0),
                           helper.make_node("Greater", ["m", "zero"], ["mc"]),
                           helper.make_node("If", ["mc"], ["t"], then_branch=inner_then, else_branch=inner_else)], ["t"])
    other = _graph("else", [helper.make_node("Sigmoid", ["a"], ["e"])], ["e"])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["flag"], ["b"], then_branch=then, else_branch=other),
             helper.make_node("Conv", ["b", "w3"], ["y"])]
    inits = {"zero": np.array(0, np.float32), "w1": w1, "w2": w2, "w3": w3}
    model = make_model(nodes, [("x", T.FLOAT, [1, 3, 12, 12]), ("flag", T.BOOL, [])], [("y", T.FLOAT, [1, 8, 12, 12])], inits)
    feeds = []
    for flag in (True, False):
        for shift in (3.0, -3.0):  # the first conv's mean follows the input's sign
            x = (rng.standard_normal((1, 3, 12, 12)) + shift).astype(np.float32)
            feeds.append({"x": x, "flag": np.array(flag)})
    _check(model, tmp_path, feeds)


def test_values_computed_before_the_if_read_by_both_branches_and_after_it(tmp_path: Path, rng: np.random.Generator) -> None:
    """exp(relu(x)) feeds both branches and the Add after the If (TVM's memory planner once
    shared one buffer between branches lowered inline, and crashed); a [1]-shaped condition
    as old exporters write it; identical branches."""
    then = _graph("then", [helper.make_node("MatMul", ["r", "w"], ["t0"]), helper.make_node("Add", ["t0", "r"], ["t"])], ["t"])
    other = _graph("else", [helper.make_node("Neg", ["r"], ["e0"]), helper.make_node("Mul", ["e0", "r"], ["e"])], ["e"])
    same_a = _graph("same_a", [helper.make_node("Sigmoid", ["r"], ["sa"])], ["sa"])
    same_b = _graph("same_b", [helper.make_node("Sigmoid", ["r"], ["sb"])], ["sb"])
    nodes = [helper.make_node("Relu", ["x"], ["r0"]), helper.make_node("Exp", ["r0"], ["r"]),
             helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("If", ["c"], ["y2"], then_branch=same_a, else_branch=same_b),
             helper.make_node("Add", ["y", "r"], ["z0"]), helper.make_node("Add", ["z0", "y2"], ["z"])]
    inits = {"zero": np.array([0], np.float32), "axes": np.array([0, 1], np.int64),
             "w": (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)}
    model = make_model(nodes, [("x", T.FLOAT, ["N", 64])], [("z", T.FLOAT, ["N", 64])], inits)
    feeds = [{"x": (np.abs(rng.standard_normal((n, 64))) * sign).astype(np.float32)} for n in (1, 5) for sign in (1, -1)]
    _check(model, tmp_path, feeds)


def test_a_branch_reading_a_tensor_of_two_run_time_counts(tmp_path: Path, rng: np.random.Generator) -> None:
    """SSD's postprocess: per-class detections kept by NonZero, concatenated (m1 + m2 rows), then
    `if boxes.numel() == 0` reads them. The branch function now also takes m1 and m2 as a shape
    argument; before, TVM could not bind them from a tensor of m1 + m2 rows ("PrimExpr a_nz_1 +
    b_nz_1 is not computed")."""
    nodes = []
    for k in ("a", "b"):
        nodes += [helper.make_node("Greater", [k, "thr"], [f"{k}_m"]), helper.make_node("NonZero", [f"{k}_m"], [f"{k}_nz"]),
                  helper.make_node("Reshape", [f"{k}_nz", "flat"], [f"{k}_i"]),
                  helper.make_node("Gather", [k, f"{k}_i"], [f"{k}_v"], axis=0)]
    then = _graph("then", [helper.make_node("Relu", ["cat"], ["t"])], ["t"])
    other = _graph("else", [helper.make_node("Neg", ["cat"], ["e"])], ["e"])
    nodes += [helper.make_node("Concat", ["a_v", "b_v"], ["cat"], axis=0),
              helper.make_node("ReduceSum", ["cat"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "two"], ["c"]),
              helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = {"thr": np.array(0.5, np.float32), "two": np.array(2.0, np.float32), "flat": np.array([-1], np.int64)}
    model = make_model(nodes, [("a", T.FLOAT, ["n"]), ("b", T.FLOAT, ["n"])], [("y", T.FLOAT, ["k"])], inits)
    feeds = [{"a": rng.random(n).astype(np.float32) * scale, "b": rng.random(n).astype(np.float32) * scale}
             for n, scale in ((10, 1.0), (3, 1.0), (6, 0.4))]  # the last: no value kept, the else branch
    _check(model, tmp_path, feeds)
