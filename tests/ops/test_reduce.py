"""Reductions, arg-reductions, softmax family, cumulative ops and LpNormalization beyond the ONNX
node tests: symbolic shapes, run-time axes, empty sets, old-opset upgrades against onnxruntime,
legacy Softmax axes, clear errors and dtype coverage against the ONNX schemas."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import dtypes, interp
from ember.compiler.errors import EmberError, UnsupportedModelError
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype
from ember.compiler.ir import TensorType
from ember.compiler.ops import OPS, REQUIRED, InferCtx, reduce
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph

# Every type written below is what inference must give back; %axes is only known at run time.
SYMBOLIC = """\
graph main(%x: f32[N,S,8], %axes: i64[2], %k: i32[N,1]) -> (%m: f32[N,8], %all: f32[], %keep: f32[keep_0,keep_1,keep_2]) {
  const %a1: i64[1] = [1]
  const %none: i64[0] = []
  const %zero: i64[] = 0
  %m: f32[N,8] = ReduceMean(%x, %a1) {keepdims=0}
  %mk: f32[N,1,8] = ReduceMax(%x, %a1)
  %all: f32[] = ReduceSum(%x) {keepdims=0}
  %noop: f32[N,S,8] = ReduceLogSumExp(%x, %none) {noop_with_empty_axes=1}
  %r2: f32[r2_0] = ReduceL2(%x, %axes) {keepdims=0}
  %keep: f32[keep_0,keep_1,keep_2] = ReduceSumSquare(%x, %axes)
  %am: i64[S,8] = ArgMax(%x) {keepdims=0}
  %an: i64[N,1,8] = ArgMin(%x) {axis=-2, select_last_index=1}
  %sm: f32[N,S,8] = Softmax(%x) {axis=1}
  %ls: f32[N,S,8] = LogSoftmax(%x)
  %hm: f32[N,S,8] = Hardmax(%x) {axis=0}
  %cs: f32[N,S,8] = CumSum(%x, %zero) {exclusive=1, reverse=1}
  %cp: i32[N,1] = CumProd(%k, %zero)
  %lp: f32[N,S,8] = LpNormalization(%x) {p=1}
  return %m, %all, %keep
}
"""


def test_symbolic_shapes_and_run_time_axes_infer_and_run(rng: np.random.Generator) -> None:
    graph = parse_graph(SYMBOLIC)
    assert print_graph(retype(graph)) == print_graph(graph)
    for n in (1, 3):
        feeds = interp.random_feeds(graph, rng, {"N": n, "S": 5})
        feeds["axes"] = np.array([0, -1], np.int64)
        result = interp.run(graph, feeds, keep_all=True)
        assert result["m"].shape == (n, 8) and result["all"].shape == ()
        assert result["keep"].shape == (1, 5, 1) and result["r2"].shape == (5,)
        np.testing.assert_array_equal(result["noop"], result["x"])  # log(sum(exp(x))) of one element


def test_axes_of_unknown_count_without_keepdims_is_a_clear_error() -> None:
    model = make_model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        [("x", T.FLOAT, ["N", 3]), ("axes", T.INT64, ["k"])],
        [("y", T.FLOAT, ["d0"])],
        opset=18,
    )
    with pytest.raises(EmberError, match="axes of unknown length with keepdims=0"):
        import_proto(model)


# --- empty sets and noop_with_empty_axes, against onnxruntime -------------------------------------------------
def _dims(rank: int) -> list[str]:
    """Output dims for the ONNX checker (ember and onnxruntime compute the real ones)."""
    return [f"d{i}" for i in range(rank)]


def _reduce_model(op: str, shape: list[int], dtype: int, axes: list[int] | None, **attrs: Any) -> onnx.ModelProto:
    inputs = ["x"] if axes is None else ["x", "axes"]
    reduced = len(shape) if axes is None or (not axes and not attrs.get("noop_with_empty_axes")) else len(axes)
    return make_model(
        [helper.make_node(op, inputs, ["y"], **attrs)],
        [("x", dtype, shape)],
        [("y", dtype, _dims(len(shape) - (0 if attrs.get("keepdims", 1) else reduced)))],
        {} if axes is None else {"axes": np.array(axes, np.int64)},
        opset=18,
    )


EMPTY = [
    ("ReduceMax", T.FLOAT, None, np.float32(-np.inf)),
    ("ReduceMax", T.INT32, None, np.iinfo(np.int32).min),
    ("ReduceMax", T.UINT8, None, 0),
    ("ReduceMin", T.INT64, [0], np.iinfo(np.int64).max),
    ("ReduceMin", T.BOOL, None, True),
    ("ReduceMax", T.BOOL, [0, 1], False),
    ("ReduceProd", T.FLOAT, [0], 1.0),
    ("ReduceSum", T.INT32, None, 0),
    ("ReduceL2", T.FLOAT, None, 0.0),
    ("ReduceLogSum", T.FLOAT, [0], -np.inf),
    ("ReduceLogSumExp", T.DOUBLE, None, -np.inf),
]


@pytest.mark.parametrize("op,dtype,axes,identity", EMPTY, ids=[f"{e[0]}-{e[1]}" for e in EMPTY])
def test_reduction_over_an_empty_set_gives_the_identity(op: str, dtype: int, axes: list[int] | None, identity: Any) -> None:
    model = _reduce_model(op, [0, 3], dtype, axes, keepdims=0)
    x = np.zeros((0, 3), onnx.helper.tensor_dtype_to_np_dtype(dtype))
    got = interp.run(import_proto(model), {"x": x})["y"]
    want_shape = () if axes is None or len(axes) == 2 else (3,)
    assert got.shape == want_shape and got.dtype == x.dtype
    assert (got == identity).all()
    if dtype != T.BOOL:  # onnxruntime has no bool reductions
        np.testing.assert_array_equal(got, run_onnxruntime(model, {"x": x})["y"])


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMean"])
def test_noop_with_empty_axes_still_applies_the_elementwise_part(op: str, rng: np.random.Generator) -> None:
    # ReduceSumSquare acts as Square, ReduceLogSum as Log... (the spec's example).
    model = _reduce_model(op, [2, 3], T.FLOAT, [], noop_with_empty_axes=1)
    x = rng.random((2, 3)).astype(np.float32) + 0.5
    got = interp.run(import_proto(model), {"x": x})["y"]
    np.testing.assert_allclose(got, run_onnxruntime(model, {"x": x})["y"], rtol=1e-6)


def test_integer_mean_truncates_toward_zero() -> None:
    model = _reduce_model("ReduceMean", [2, 3], T.INT32, [1], keepdims=0)
    x = np.array([[-1, -1, 1], [7, 0, 0]], np.int32)
    assert interp.run(import_proto(model), {"x": x})["y"].tolist() == [0, 2]


# --- upgrades from old opsets, against onnxruntime ------------------------------------------------------------
UPGRADES = [
    ("ReduceSum-11 axes attribute", 11, helper.make_node("ReduceSum", ["x"], ["y"], axes=[1, -1], keepdims=0), [2, 3, 4], 1),
    ("ReduceMean-13 axes attribute", 13, helper.make_node("ReduceMean", ["x"], ["y"], axes=[-2]), [2, 3, 4], 3),
    ("ReduceMax-11 all axes", 11, helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0), [2, 3, 4], 0),
    ("ReduceLogSumExp-13", 13, helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[0]), [2, 3, 4], 3),
    ("ArgMax-11", 11, helper.make_node("ArgMax", ["x"], ["y"], axis=-1, keepdims=0), [2, 3, 4], 2),
    ("ArgMin-12 last index", 12, helper.make_node("ArgMin", ["x"], ["y"], axis=1, select_last_index=1), [2, 3, 4], 3),
    ("Softmax-11 last axis", 11, helper.make_node("Softmax", ["x"], ["y"], axis=2), [2, 3, 4], 3),
    ("Softmax-11 default axis on rank 2", 11, helper.make_node("Softmax", ["x"], ["y"]), [2, 5], 2),
    ("LogSoftmax-12 axis=1 on [N,C,1,1]", 12, helper.make_node("LogSoftmax", ["x"], ["y"], axis=1), [2, 5, 1, 1], 4),
    ("Hardmax-11 axis=-2 on [N,C,1]", 11, helper.make_node("Hardmax", ["x"], ["y"], axis=-2), [2, 5, 1], 3),
    ("Softmax-13 axis=0", 13, helper.make_node("Softmax", ["x"], ["y"], axis=0), [2, 3, 4], 3),
    ("LpNormalization-11", 11, helper.make_node("LpNormalization", ["x"], ["y"], axis=0, p=1), [2, 3, 4], 3),
]


@pytest.mark.parametrize("case", UPGRADES, ids=[u[0] for u in UPGRADES])
def test_old_opset_forms_import_and_match_onnxruntime(case: tuple, rng: np.random.Generator) -> None:
    _, opset, node, shape, rank = case
    out = T.INT64 if node.op_type.startswith("Arg") else T.FLOAT
    model = make_model([node], [("x", T.FLOAT, shape)], [("y", out, _dims(rank))], opset=opset)
    graph = import_proto(model)
    assert all("axes" not in n.attrs for n in graph.nodes)  # canonical form: axes is an input
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:2] = x.reshape(-1)[2]  # ties for the arg-reductions
    np.testing.assert_allclose(interp.run(graph, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_cumsum_opset_11_with_int32_axis_matches_onnxruntime() -> None:
    model = make_model(
        [helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=1)],
        [("x", T.INT32, [3, 4])],
        [("y", T.INT32, [3, 4])],
        {"axis": np.array(-1, np.int32)},
        opset=11,
    )
    x = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    np.testing.assert_array_equal(interp.run(import_proto(model), {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"])


def test_legacy_softmax_over_a_flattened_block_is_refused_clearly() -> None:
    # Softmax-11 with axis=1 on [N,3,4] normalises over 3*4 values jointly.
    model = make_model([helper.make_node("Softmax", ["x"], ["y"])], [("x", T.FLOAT, ["N", 3, 4])], [("y", T.FLOAT, ["N", 3, 4])], opset=11)
    with pytest.raises(UnsupportedModelError, match=r"Softmax-11 with axis=1 on f32\[N,3,4\].*flattened dims \[3, 4\]"):
        import_proto(model)


# --- clear errors ----------------------------------------------------------------------------------------------
ERRORS = [
    (helper.make_node("ReduceSum", ["x", "c"], ["y"]), {"c": np.array([1, -1], np.int64)}, "repeat an axis"),
    (helper.make_node("ReduceMax", ["x", "c"], ["y"]), {"c": np.array([3], np.int64)}, "axis 3 out of range for rank 2"),
    (helper.make_node("ArgMax", ["x"], ["y"], axis=-3), {}, "axis -3 out of range"),
    (helper.make_node("Softmax", ["x"], ["y"], axis=2), {}, "axis 2 out of range"),
    (helper.make_node("LpNormalization", ["x"], ["y"], p=3), {}, "p must be 1 or 2"),
    (helper.make_node("CumSum", ["x", "c"], ["y"]), {"c": np.array([0, 1], np.int64)}, "axis must be a scalar"),
    (helper.make_node("CumSum", ["x", "c"], ["y"]), {"c": np.array(2, np.int64)}, "axis 2 out of range"),
]


@pytest.mark.parametrize("node,inits,message", ERRORS, ids=[f"{e[0].op_type}:{e[2]}" for e in ERRORS])
def test_invalid_axes_and_attributes_are_clear_errors(node: onnx.NodeProto, inits: dict, message: str) -> None:
    model = make_model([node], [("x", T.FLOAT, ["N", 3])], [("y", T.FLOAT, [])], inits, opset=18)
    with pytest.raises(EmberError, match=message):
        import_proto(model)


# --- dtype coverage: never reject what an ONNX schema (opset 11..newest) allows ---------------------------------
_ONNX_TO_EMBER = {f"tensor({onnx.helper.tensor_dtype_to_np_dtype(c).name})": n for c, n in dtypes.ONNX.items()}
_ONNX_TO_EMBER.update({"tensor(float)": "f32", "tensor(double)": "f64", "tensor(float16)": "f16", "tensor(bfloat16)": "bf16"})


@pytest.mark.parametrize("op", [o.name for o in reduce.OPS])
def test_every_dtype_an_onnx_schema_allows_is_accepted(op: str) -> None:
    opdef, seen = OPS[op], set()
    for version in range(11, onnx.defs.onnx_opset_version() + 1):
        schema = onnx.defs.get_schema(op, version) if onnx.defs.has(op, version) else None
        if schema is None or schema.since_version in seen:
            continue
        seen.add(schema.since_version)
        params = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        data = {_ONNX_TO_EMBER[t] for t in params[schema.inputs[0].type_str] if t in _ONNX_TO_EMBER}
        for dtype in sorted(data):
            types = [TensorType(dtype, (2, 3))] + ([TensorType("i64", ())] if op.startswith("Cum") else [])
            attrs = {k: s.resolve_default(types) for k, s in opdef.attrs.items() if s.default not in (None, REQUIRED)}
            ctx = InferCtx(op=op, types=types, attrs=attrs, consts=[None] * len(types), values=[None] * len(types), out_names=["y"])
            opdef.infer(ctx)
