"""GroupNormalization, compiled: an instance norm of the [N, G, C/G * pixels] view, one kernel
the row-reduction rule schedules (TVM's group_norm went to a generic rule that recomputed each
group's statistics per element). Native forms (opset 18's per-group and opset 21's
per-channel scale and bias, constant and at run time; 1-d and 2-d; symbolic batch and size),
torch's export below opset 18 (which fuse_composites turns into the op) between convs, and
onnx's node tests, against the interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import check_model, check_node_cases, onnx_model, onnx_node_cases
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target

F = T.FLOAT

CASES = [  # (dims, groups, per: "group" (opset 18) or "channel" (opset 21), constant scale and bias)
    (["N", 12, "H", "W"], 3, "channel", True),
    (["N", 12, "H", "W"], 4, "group", True),
    (["N", 8, "L"], 2, "channel", False),
    ([2, 6, 5, 7], 6, "channel", True),
    (["N", 16, "H", "W"], 4, "channel", False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_group_norm_matches_the_reference(case: int, rng: np.random.Generator) -> None:
    dims, g, per, constant = CASES[case]
    c = dims[1]
    n = g if per == "group" else c
    params = {"s": rng.uniform(0.5, 2.0, n).astype(np.float32), "b": rng.standard_normal(n).astype(np.float32)}
    inputs = [("x", F, dims)] + ([] if constant else [("s", F, [n]), ("b", F, [n])])
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=g, epsilon=1e-5)
    model = onnx_model([node], inputs, params if constant else {}, opset=18 if per == "group" else 21)
    sizes = [{"N": 1, "H": 5, "W": 9, "L": 31}, {"N": 3, "H": 8, "W": 3, "L": 4}]

    def shift(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["x"] = feeds["x"] * 3 + 5  # (a mean far from zero, as a conv's output has)
        if not constant:
            feeds.update(params)

    built = check_model(model, rng, sizes, fix=shift)
    assert [rule for name, rule in built.rules.items() if "instance_norm" in name] == ["RowReduce"], built.rules


def test_torch_group_norm_export_between_convs(rng: np.random.Generator) -> None:
    """conv -> Reshape [N, 8, -1] -> InstanceNormalization (ones, zeros) -> Reshape back ->
    Mul -> Add -> Relu -> conv, as torch.onnx exports nn.GroupNorm(8, 32) at opset 17: one
    GroupNormalization after the passes, one row-reduction kernel, the affine fused after it."""
    inits = {"w0": (rng.standard_normal((32, 3, 3, 3)) * 0.3).astype(np.float32),
             "w1": (rng.standard_normal((16, 32, 3, 3)) * 0.1).astype(np.float32),
             "grouped": np.array([0, 8, -1], np.int64), "ones": np.ones(8, np.float32), "zeros": np.zeros(8, np.float32),
             "gamma": rng.uniform(0.5, 2.0, (32, 1, 1)).astype(np.float32), "beta": rng.standard_normal((32, 1, 1)).astype(np.float32)}
    node = helper.make_node
    nodes = [node("Conv", ["x", "w0"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Reshape", ["c", "grouped"], ["r"]), node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], epsilon=1e-5),
             node("Shape", ["c"], ["cs"]), node("Reshape", ["n", "cs"], ["back"]),
             node("Mul", ["back", "gamma"], ["m"]), node("Add", ["m", "beta"], ["a"]), node("Relu", ["a"], ["e"]),
             node("Conv", ["e", "w1"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    model = onnx_model(nodes, [("x", F, ["N", 3, "H", "W"])], inits, opset=17)
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    assert [n.op for n in graph.nodes].count("GroupNormalization") == 1, [n.op for n in graph.nodes]
    built = build(graph, resolve_target("cpu"))
    assert [rule for name, rule in built.rules.items() if "instance_norm" in name] == ["RowReduce"], built.rules
    check_model(model, rng, [{"N": 1, "H": 12, "W": 20}, {"N": 2, "H": 7, "W": 9}])


def test_onnx_node_tests_of_group_norm_match_their_data() -> None:
    cases = onnx_node_cases("test_group_normalization")
    assert len(cases) >= 2
    check_node_cases(cases)
