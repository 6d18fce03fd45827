"""AffineGrid (a spatial transformer's sampling grid) and CenterCropPad, compiled: onnx's own node
tests with their integer inputs made constants, a spatial transformer as OCR models put one
before their recognizer (conv -> pooled features -> Gemm -> theta -> AffineGrid -> GridSample)
at a symbolic batch, and the forms the code generator refuses with one message."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from codegen_helpers import check_model, check_node_cases, onnx_model, onnx_node_cases
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.importer import import_proto
from ember.targets import build, resolve_target
from ember.targets.emit_common import LoweringError

F = T.FLOAT


def _frozen(case: object) -> object:
    """The case with every integer input made an initializer (its first data set's values)."""
    model, (inputs, outputs) = case.model, case.data_sets[0]
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep = [(info, x) for info, x in zip(model.graph.input, inputs) if np.asarray(x).dtype.kind == "f"]
    frozen.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(x), info.name)
                                    for info, x in zip(model.graph.input, inputs) if np.asarray(x).dtype.kind != "f")
    del frozen.graph.input[:]
    frozen.graph.input.extend(info for info, _ in keep)
    return type("Case", (), {"name": case.name, "model": frozen, "data_sets": [([x for _, x in keep], outputs)]})()


def test_onnx_node_tests_of_these_ops_match_their_data() -> None:
    cases = [_frozen(c) for c in onnx_node_cases("test_affine_grid", "test_center_crop_pad")]
    assert len(cases) == 10, [c.name for c in cases]
    check_node_cases(cases)


@pytest.mark.parametrize("align_corners", [0, 1])
def test_a_spatial_transformer(align_corners: int, rng: np.random.Generator) -> None:
    """x [B, 8, 12, 20] -> conv -> global pool -> Gemm -> theta [B, 2, 3] (near identity) ->
    AffineGrid to a 6 x 16 grid (the size from the batch's Shape and constants, as torch's
    affine_grid(theta, [B, 8, 6, 16]) exports) -> GridSample of x: at batch 1 and 3."""
    inits = {
        "w": (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32),
        "fc": (rng.standard_normal((6, 8)) * 0.05).astype(np.float32),
        "fc_b": np.array([1, 0, 0, 0, 1, 0], np.float32),
        "theta_shape": np.array([-1, 2, 3], np.int64),
        "rest": np.array([8, 6, 16], np.int64),
        "zero": np.array([0], np.int64),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("GlobalAveragePool", ["c"], ["p"]), node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "fc", "fc_b"], ["t"], transB=1), node("Reshape", ["t", "theta_shape"], ["theta"]),
        node("Shape", ["x"], ["xs"]), node("Gather", ["xs", "zero"], ["batch"], axis=0),
        node("Concat", ["batch", "rest"], ["size"], axis=0),
        node("AffineGrid", ["theta", "size"], ["grid"], align_corners=align_corners),
        node("GridSample", ["x", "grid"], ["y"], align_corners=align_corners),
    ]
    model = onnx_model(nodes, [("x", F, ["B", 8, 12, 20])], inits, opset=20)
    check_model(model, rng, [{"B": 1}, {"B": 3}])


def test_center_crop_pad_inside_a_model(rng: np.random.Generator) -> None:
    """A conv's [B, 8, 11, 14] output cropped to 9 rows and padded to 17 columns (odd excesses:
    the extra row dropped, the extra column padded at the end), then a conv: at batch 1 and 2."""
    inits = {"w0": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "w1": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
             "hw": np.array([9, 17], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("CenterCropPad", ["c", "hw"], ["cp"], axes=[-2, -1]),
             helper.make_node("Conv", ["cp", "w1"], ["y"], kernel_shape=[1, 1])]
    check_model(onnx_model(nodes, [("x", F, ["B", 3, 11, 14])], inits, opset=18), rng, [{"B": 1}, {"B": 2}])


def test_symbolic_sizes_are_refused_with_one_message() -> None:
    """A grid over a symbolic image size, a crop of a symbolic axis: one LoweringError each."""
    grid = onnx_model([helper.make_node("AffineGrid", ["theta", "size"], ["g"])],
                      [("theta", F, [1, 2, 3]), ("size", T.INT64, [4])], opset=20)
    with pytest.raises(LoweringError, match="AffineGrid.*symbolic size"):
        build(import_proto(grid), resolve_target("cpu"))
    crop = onnx_model([helper.make_node("CenterCropPad", ["x", "s"], ["y"], axes=[1])],
                      [("x", F, [2, "W"])], {"s": np.array([5], np.int64)}, opset=18)
    with pytest.raises(LoweringError, match="CenterCropPad.*symbolic size"):
        build(import_proto(crop), resolve_target("cpu"))
