"""Ops of targets/emit_misc.py, compiled: every attribute combination on random inputs
against ember's interpreter (at two bindings of the symbolic dims where the op allows them),
the ONNX backend node tests of each against onnx's expected outputs, and the ops still
without a code generator refused with an error that names them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from codegen_helpers import check_graph, check_model, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.targets import build, resolve_target
from ember.targets.lower import LoweringError

F, F16, I32, I64, B = T.FLOAT, T.FLOAT16, T.INT32, T.INT64, T.BOOL


def node(op: str, inputs: list[str], out: str | list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out] if isinstance(out, str) else out, **attrs)


# --- ReverseSequence -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
@pytest.mark.parametrize("shape", [["S", "N"], ["S", "N", 3], ["S", "N", 2, 3]])
def test_reverse_sequence(batch_axis: int, time_axis: int, shape: list, rng: np.random.Generator) -> None:
    """Lengths from below 0 to past the time axis (clipped to [0, T] as the reference)."""
    shape = list(shape)
    shape[batch_axis], shape[time_axis] = "N", "S"
    model = onnx_model([node("ReverseSequence", ["x", "lens"], "y", batch_axis=batch_axis, time_axis=time_axis)],
                       [("x", F, shape), ("lens", I64, ["N"])])

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["lens"] = rng.integers(-2, 9, feeds["lens"].shape).astype(np.int64)

    check_model(model, rng, [{"N": 3, "S": 5}, {"N": 1, "S": 2}], fix)


def test_reverse_sequence_static(rng: np.random.Generator) -> None:
    model = onnx_model([node("ReverseSequence", ["x", "lens"], "y"), node("Relu", ["y"], "r")],
                       [("x", I32, [6, 4, 2]), ("lens", I64, [4])])

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["lens"] = np.array([0, 6, 3, 9], np.int64)

    check_model(model, rng, fix=fix)


# --- Unique ----------------------------------------------------------------------------------------
def _repeats(nan: bool):
    """A feed fix drawing x from few values (so groups repeat); with `nan`, some NaN, -0.0 and 0.0."""
    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        x = feeds["x"]
        values = rng.integers(0, 4, x.shape)
        if x.dtype == np.bool_:
            feeds["x"] = values % 2 == 0
            return
        y = values.astype(x.dtype)
        if nan:
            y = np.where(values == 3, np.nan, y)
            y = np.where((values == 0) & (rng.random(x.shape) < 0.5), -0.0, y).astype(x.dtype)
        feeds["x"] = y
    return fix


@pytest.mark.parametrize("outputs", [1, 2, 4])
@pytest.mark.parametrize("sort", [1, 0])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_unique(outputs: int, sort: int, axis: int | None, rng: np.random.Generator) -> None:
    """Values (or slices along the axis), first indices, inverse indices and counts, sorted or
    in order of first occurrence; NaNs, -0.0 and 0.0 among the values; y read by a later node."""
    attrs = {"sorted": sort} if axis is None else {"sorted": sort, "axis": axis}
    names = ["y", "first", "inverse", "counts"][:outputs]
    graph = import_proto(onnx_model([node("Unique", ["x"], names, **attrs), node("Neg", ["y"], "neg")],
                                    [("x", F, ["N", 3])]))
    check_graph(graph, rng, [{"N": 6}, {"N": 1}, {"N": 13}], _repeats(nan=True))


@pytest.mark.parametrize("elem", [I64, I32, F16, B])
@pytest.mark.parametrize("axis", [None, 1])
def test_unique_of_other_dtypes(elem: int, axis: int | None, rng: np.random.Generator) -> None:
    attrs = {} if axis is None else {"axis": axis}
    model = onnx_model([node("Unique", ["x"], ["y", "first", "inverse", "counts"], **attrs)], [("x", elem, [2, "N", 2])])
    check_model(model, rng, [{"N": 5}, {"N": 2}], _repeats(nan=False))


def test_unique_of_an_empty_tensor(rng: np.random.Generator) -> None:
    model = onnx_model([node("Unique", ["x"], ["y", "first", "inverse", "counts"], sorted=0)], [("x", F, ["N"])])
    check_model(model, rng, [{"N": 0}, {"N": 1}], _repeats(nan=True))


# --- onnx's node tests, refused ops ----------------------------------------------------------------
COMPILED = ("test_reversesequence", "test_unique")
REFUSED = ["RotaryEmbedding", "MaxUnpool", "AffineGrid", "CenterCropPad", "Col2Im", "BitCast", "DeformConv"]


def test_onnx_node_tests_of_these_ops_match_their_data() -> None:
    """onnx's own node tests of the compiled ops, compiled, against onnx's expected outputs."""
    from onnx.backend.test.case.node import collect_testcases

    cases = [c for c in collect_testcases() if c.name.startswith(COMPILED)]
    assert len(cases) >= 10
    for case in cases:
        graph = import_proto(case.model)
        built = build(graph, resolve_target("cpu"))
        for inputs, outputs in case.data_sets:
            feeds = {v.name: x for v, x in zip(case.model.graph.input, inputs)}
            got = run_vm(built, graph, feeds)
            want = interp.run(graph, feeds)
            for value, expected in zip(case.model.graph.output, outputs):
                np.testing.assert_array_equal(got[value.name], want[value.name], err_msg=case.name)
                np.testing.assert_allclose(got[value.name], expected, rtol=1e-6, atol=1e-6, err_msg=case.name)


@pytest.mark.parametrize("op", REFUSED)
def test_ops_left_without_a_code_generator_are_named(op: str) -> None:
    """The first onnx node test of the op: building it is a LoweringError naming the op."""
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases() if any(n.op_type == op for n in c.model.graph.node))
    with pytest.raises(LoweringError, match=rf"operators without a code generator:\n  {op}: 1 node\(s\)"):
        build(import_proto(case.model), resolve_target("cpu"))
