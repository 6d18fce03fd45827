"""Quantization ops beyond the ONNX node tests: granularities, dtypes and opset forms against
onnxruntime with its optimizations off (integer outputs must agree exactly, rounding ties
included), the node tests below ember's opset floor, symbolic batch dims, the dtype codes
of output_dtype/precision, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.compiler import interp
from ember.compiler.errors import EmberError
from ember.compiler.exporter import to_onnx
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import conformance

# Dequantized floats: one f32 multiply each, so onnxruntime and ember agree to the last bit
# but for FMA contraction; integer outputs must be equal.
FLOAT_TOL = 1e-6

_R = np.random.default_rng(11)


def _u8(*shape: int) -> np.ndarray:
    return _R.integers(0, 256, shape).astype(np.uint8)


def _i8(*shape: int) -> np.ndarray:
    return _R.integers(-128, 128, shape).astype(np.int8)


def _scales(*shape: int) -> np.ndarray:
    return _R.uniform(0.005, 0.1, shape).astype(np.float32)


def _run_node(op: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray], attrs: dict[str, Any], opset: int,
              outputs: int = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model (feeds, then consts, as inputs); ember's results by output name."""
    names = [f"y{i}" for i in range(outputs)]
    model = make_model([helper.make_node(op, list(feeds) + list(consts), names, **attrs)],
                       [(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in feeds.items()],
                       [(n, T.FLOAT, None) for n in names], consts, opset=opset)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    want = run_onnxruntime(model, feeds)
    del model.graph.output[:]  # typed as onnxruntime answers, so the checker takes the model
    model.graph.output.extend(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                              for k, v in want.items())
    return model, want


def check(op: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray], attrs: dict[str, Any], opset: int = 21,
          outputs: int = 1) -> None:
    """ember equals onnxruntime: exactly for integer outputs, to FLOAT_TOL for floats."""
    model, want = _run_node(op, feeds, consts, attrs, opset, outputs)
    got = interp.run(import_proto(model), feeds)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, name
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected, rtol=FLOAT_TOL, atol=FLOAT_TOL, err_msg=name)


X = (_R.standard_normal((4, 6, 5)) * 3).astype(np.float32)
TIES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 254.5, 300, -300, 127.5, -128.5, 3.5, -2.5], np.float32)

# (id, op, feeds, consts, attrs, opset, outputs)
CASES: list[tuple[str, str, dict, dict, dict, int, int]] = [
    ("q-ties-half-even-u8", "QuantizeLinear", {"x": TIES}, {"s": np.array(1, np.float32), "z": np.array(0, np.uint8)}, {}, 21, 1),
    ("q-ties-half-even-i8", "QuantizeLinear", {"x": TIES}, {"s": np.array(1, np.float32), "z": np.array(0, np.int8)}, {}, 21, 1),
    ("q-13-per-axis", "QuantizeLinear", {"x": X}, {"s": _scales(6), "z": _u8(6)}, {"axis": 1}, 13, 1),
    ("q-per-axis-negative-int16", "QuantizeLinear", {"x": X * 50}, {"s": _scales(5), "z": _R.integers(-99, 99, 5).astype(np.int16)},
     {"axis": -1}, 21, 1),
    ("q-blocked-short-last-block", "QuantizeLinear", {"x": X}, {"s": _scales(4, 2, 5), "z": _u8(4, 2, 5)}, {"axis": 1, "block_size": 4}, 21, 1),
    ("q-no-zero-point-u8", "QuantizeLinear", {"x": X}, {"s": np.array(0.05, np.float32)}, {}, 13, 1),
    ("q-output-dtype-i8", "QuantizeLinear", {"x": X}, {"s": np.array(0.05, np.float32)}, {"output_dtype": T.INT8}, 21, 1),
    ("q-uint16", "QuantizeLinear", {"x": X * 100}, {"s": np.array(0.05, np.float32), "z": np.array(30000, np.uint16)}, {}, 21, 1),
    ("q-19-saturate-ignored-for-ints", "QuantizeLinear", {"x": X}, {"s": np.array(0.02, np.float32), "z": np.array(-3, np.int8)},
     {"saturate": 0}, 19, 1),
    ("dq-per-tensor", "DequantizeLinear", {"q": _u8(4, 6, 5)}, {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8)}, {}, 13, 1),
    ("dq-13-per-axis", "DequantizeLinear", {"q": _i8(4, 6, 5)}, {"s": _scales(6), "z": _i8(6)}, {"axis": 1}, 13, 1),
    ("dq-blocked", "DequantizeLinear", {"q": _u8(4, 6, 5)}, {"s": _scales(4, 6, 3), "z": _u8(4, 6, 3)}, {"axis": 2, "block_size": 2}, 21, 1),
    ("dq-int32-bias", "DequantizeLinear", {"q": _R.integers(-2**30, 2**30, 12).astype(np.int32)}, {"s": np.array(1e-3, np.float32)}, {}, 21, 1),
    ("dq-f16-scale", "DequantizeLinear", {"q": _u8(4, 6, 5)}, {"s": np.array(0.05, np.float16), "z": np.array(128, np.uint8)}, {}, 21, 1),
    ("dq-int16", "DequantizeLinear", {"q": _R.integers(-30000, 30000, 9).astype(np.int16)}, {"s": np.array(0.01, np.float32),
                                                                                              "z": np.array(-5, np.int16)}, {}, 21, 1),
    ("dynamic", "DynamicQuantizeLinear", {"x": X}, {}, {}, 11, 3),
    ("dynamic-positive", "DynamicQuantizeLinear", {"x": np.abs(X) + 1}, {}, {}, 11, 3),
    ("dynamic-all-zero", "DynamicQuantizeLinear", {"x": np.zeros(5, np.float32)}, {}, {}, 11, 3),
    ("matmulinteger-batched", "MatMulInteger", {"a": _u8(2, 7, 9)}, {"b": _i8(9, 5), "az": np.array(12, np.uint8), "bz": np.array(-3, np.int8)},
     {}, 11, 1),
    ("matmulinteger-per-column-b", "MatMulInteger", {"a": _u8(7, 9)}, {"b": _u8(9, 5), "az": np.array(7, np.uint8), "bz": _u8(5)}, {}, 11, 1),
    ("qlinearmatmul-u8", "QLinearMatMul", {"a": _u8(2, 16, 40)},
     {"as": np.array(0.02, np.float32), "az": np.array(120, np.uint8), "b": _u8(40, 12), "bs": np.array(0.01, np.float32),
      "bz": np.array(130, np.uint8), "ys": np.array(0.3, np.float32), "yz": np.array(100, np.uint8)}, {}, 13, 1),
    ("qlinearmatmul-i8-per-column", "QLinearMatMul", {"a": _i8(16, 40)},
     {"as": np.array(0.02, np.float32), "az": np.array(-4, np.int8), "b": _i8(40, 12), "bs": _scales(12),
      "bz": np.zeros(12, np.int8), "ys": np.array(0.3, np.float32), "yz": np.array(-9, np.int8)}, {}, 13, 1),
    ("convinteger-grouped-strided", "ConvInteger", {"x": _u8(2, 4, 7, 6)}, {"w": _i8(6, 2, 3, 3), "xz": np.array(100, np.uint8),
                                                                           "wz": np.array(1, np.int8)},
     {"pads": [1, 1, 1, 1], "strides": [2, 1], "group": 2}, 11, 1),
    ("convinteger-1d-same", "ConvInteger", {"x": _u8(1, 3, 9)}, {"w": _u8(2, 3, 4)}, {"auto_pad": "SAME_UPPER"}, 11, 1),
    ("qlinearconv-per-channel-bias", "QLinearConv", {"x": _u8(2, 4, 9, 8)},
     {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8), "w": _i8(6, 2, 3, 3), "ws": _scales(6), "wz": np.zeros(6, np.int8),
      "ys": np.array(0.5, np.float32), "yz": np.array(5, np.uint8), "B": _R.integers(-2000, 2000, 6).astype(np.int32)},
     {"pads": [1, 1, 1, 1], "group": 2, "strides": [1, 2]}, 13, 1),
    ("qlinearconv-i8-same-lower", "QLinearConv", {"x": _i8(1, 4, 7, 8)},
     {"xs": np.array(0.02, np.float32), "xz": np.array(-3, np.int8), "w": _i8(5, 4, 3, 2), "ws": np.array(0.01, np.float32),
      "wz": np.array(0, np.int8), "ys": np.array(0.4, np.float32), "yz": np.array(-5, np.int8)}, {"auto_pad": "SAME_LOWER"}, 13, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_granularities_dtypes_and_opset_forms_match_onnxruntime(case: tuple) -> None:
    _, op, feeds, consts, attrs, opset, outputs = case
    check(op, feeds, consts, attrs, opset, outputs)


def test_requantization_matches_onnxruntime_exactly_on_random_scales(rng: np.random.Generator) -> None:
    """The f32 multiplier and f32 product leave no off-by-one at rounding ties."""
    for _ in range(6):
        consts = {"xs": np.array(rng.uniform(0.001, 0.05), np.float32), "xz": np.array(rng.integers(0, 256), np.uint8),
                  "w": rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8), "ws": rng.uniform(0.001, 0.02, 6).astype(np.float32),
                  "wz": np.zeros(6, np.int8), "ys": np.array(rng.uniform(0.05, 2), np.float32), "yz": np.array(rng.integers(0, 256), np.uint8)}
        check("QLinearConv", {"x": rng.integers(0, 256, (2, 4, 9, 8)).astype(np.uint8)}, consts, {"pads": [1, 1, 1, 1]}, 13)
        mm = {"as": consts["xs"], "az": consts["xz"], "b": rng.integers(0, 256, (40, 12)).astype(np.uint8),
              "bs": np.array(rng.uniform(0.001, 0.05), np.float32), "bz": np.array(rng.integers(0, 256), np.uint8),
              "ys": consts["ys"], "yz": consts["yz"]}
        check("QLinearMatMul", {"a": rng.integers(0, 256, (3, 16, 40)).astype(np.uint8)}, mm, {}, 13)


def test_f16_quantization_divides_in_the_scale_type_as_the_spec_says() -> None:
    """Spec (and onnx's reference): y_scale's type sets the division's precision, so f16 x and
    scale divide in f16; onnxruntime divides in f32 and may differ by one step there."""
    x = (X * 2).astype(np.float16)
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [("x", T.FLOAT16, list(x.shape))],
                       [("y", T.INT8, list(x.shape))], {"s": np.array(0.05, np.float16), "z": np.array(3, np.int8)}, opset=21)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(interp.run(import_proto(model), {"x": x})["y"], want)


def test_node_tests_below_the_opset_floor_pass_at_opset_11() -> None:
    """These node tests are opset-10 models (ember imports 11+); the ops did not change at 11."""
    import onnx.backend.test.case.node as node_cases
    import onnx.backend.test.case.node.convinteger
    import onnx.backend.test.case.node.matmulinteger
    import onnx.backend.test.case.node.qlinearconv  # noqa: F401  (importing registers their cases)

    names = {"test_qlinearconv", "test_matmulinteger", "test_convinteger_with_padding", "test_convinteger_without_padding"}
    cases = [c for c in node_cases._NodeTestCases if c.name in names]
    assert len(cases) == len(names)
    for case in cases:
        for entry in case.model.opset_import:
            entry.version = 11
        for mode in ("shipped", "frozen"):
            result = conformance.run_case(case, mode)
            assert result.status == "pass", f"{case.name} ({mode}): {result.detail}"


SYMBOLIC = """\
graph main(%x: f32[N,S,8], %a: u8[N,S,8], %w: i8[8,4], %s: f32[], %zu: u8[], %zi: i8[], %sc: f32[8], %zc: i8[8]) -> (%dq: f32[N,S,8], %mm: i32[N,S,4], %ql: u8[N,S,4], %dy: u8[N,S,8], %ds: f32[], %dz: u8[], %pc: i8[N,S,8]) {
  %q: u8[N,S,8] = QuantizeLinear(%x, %s, %zu)
  %pc: i8[N,S,8] = QuantizeLinear(%x, %sc, %zc) {axis=2}
  %dq: f32[N,S,8] = DequantizeLinear(%q, %s, %zu)
  %mm: i32[N,S,4] = MatMulInteger(%a, %w, %zu, %zi)
  %ql: u8[N,S,4] = QLinearMatMul(%a, %s, %zu, %w, %s, %zi, %s, %zu)
  %dy: u8[N,S,8], %ds: f32[], %dz: u8[] = DynamicQuantizeLinear(%x)
  return %dq, %mm, %ql, %dy, %ds, %dz, %pc
}
"""


def test_symbolic_batch_and_sequence_dims_flow_through(rng: np.random.Generator) -> None:
    graph = parse_graph(SYMBOLIC)
    assert print_graph(retype(graph)) == print_graph(graph)
    feeds = interp.random_feeds(graph, rng, {"N": 2, "S": 3})
    feeds["s"] = np.array(0.05, np.float32)
    feeds["sc"] = rng.uniform(0.01, 0.1, 8).astype(np.float32)
    result = interp.run(graph, feeds)
    assert result["ql"].shape == (2, 3, 4) and result["pc"].shape == (2, 3, 8)


def test_output_dtype_and_precision_codes_become_dtype_names_and_go_back_to_codes() -> None:
    model = make_model([helper.make_node("QuantizeLinear", ["x", "s"], ["y"], output_dtype=T.INT16, precision=T.FLOAT)],
                       [("x", T.FLOAT, [4])], [("y", T.INT16, [4])], {"s": np.array(0.5, np.float32)}, opset=23)
    graph = import_proto(model)
    node = graph.nodes[0]
    assert node.attrs["output_dtype"] == "i16" and node.attrs["precision"] == "f32" and node.outputs[0].type.dtype == "i16"
    exported = to_onnx(graph)
    assert helper.get_node_attr_value(exported.graph.node[0], "output_dtype") == T.INT16
    assert helper.get_node_attr_value(exported.graph.node[0], "precision") == T.FLOAT
    x = np.array([1.0, -2.25, 3.75, 1e6], np.float32)
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["y"], np.array([2, -4, 8, 32767], np.int16))


ERRORS = [
    ("QuantizeLinear", [("x", T.FLOAT, [2, 3]), ("s", T.FLOAT, []), ("z", T.INT8, [])], {"output_dtype": T.UINT8},
     r"output_dtype u8 differs from y_zero_point's dtype i8"),
    ("QuantizeLinear", [("x", T.FLOAT, [2, 3]), ("s", T.FLOAT, [2])], {"axis": 1}, r"must have x's axis-1 length 3"),
    ("QuantizeLinear", [("x", T.FLOAT, [2, 8]), ("s", T.FLOAT, [2, 3])], {"axis": 1, "block_size": 4},
     r"needs 2 blocks of 4 on axis 1"),
    ("QuantizeLinear", [("x", T.FLOAT, [2, 3]), ("s", T.FLOAT, [2, 3])], {}, r"must be a scalar or 1-D \(per axis\) without block_size"),
    ("QuantizeLinear", [("x", T.FLOAT, [2, 3]), ("s", T.FLOAT, [3])], {"axis": 2}, r"axis 2 out of range for rank 2"),
    ("DequantizeLinear", [("x", T.UINT8, [2, 3]), ("s", T.FLOAT, []), ("z", T.INT8, [])], {}, r"x_zero_point must have x's dtype u8"),
    ("DequantizeLinear", [("x", T.FLOAT, [2, 3]), ("s", T.FLOAT, [])], {}, r"DequantizeLinear x must be one of"),
    ("MatMulInteger", [("a", T.INT32, [2, 3]), ("b", T.INT8, [3, 2])], {}, r"A must be one of i8, u8, got i32"),
    ("MatMulInteger", [("a", T.UINT8, [2, 3]), ("b", T.INT8, [3, 2]), ("az", T.INT8, [])], {}, r"a_zero_point must have the dtype"),
    ("QLinearMatMul", [("a", T.FLOAT, [2, 3]), ("as", T.FLOAT, []), ("az", T.UINT8, []), ("b", T.UINT8, [3, 2]), ("bs", T.FLOAT, []),
                       ("bz", T.UINT8, []), ("ys", T.FLOAT, []), ("yz", T.UINT8, [])], {}, r"a/x must be one of i8, u8, got f32"),
    ("QLinearMatMul", [("a", T.UINT8, [2, 3]), ("as", T.FLOAT, []), ("az", T.UINT8, []), ("b", T.UINT8, [4, 2]), ("bs", T.FLOAT, []),
                       ("bz", T.UINT8, []), ("ys", T.FLOAT, []), ("yz", T.UINT8, [])], {}, r"MatMul inner dims differ"),
]


@pytest.mark.parametrize("op,inputs,attrs,message", ERRORS, ids=[f"{e[0]}-{e[3][:28]}" for e in ERRORS])
def test_invalid_inputs_and_attributes_are_clear_errors(op: str, inputs: list, attrs: dict, message: str) -> None:
    model = make_model([helper.make_node(op, [i[0] for i in inputs], ["y"], **attrs)], inputs, [("y", T.UINT8, ["a", "b"])], opset=21)
    with pytest.raises(EmberError, match=message):
        import_proto(model)
