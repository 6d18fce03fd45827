"""Ops of targets/emit_misc.py, compiled: every attribute combination on random inputs
against ember's interpreter (at two bindings of the symbolic dims where the op allows them),
the ONNX backend node tests of each against onnx's expected outputs, and the ops still
without a code generator refused with an error that names them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from codegen_helpers import ATOL, RTOL, check_graph, check_model, onnx_model, run_node_cases, run_vm
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


# --- RotaryEmbedding -------------------------------------------------------------------------------
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rank", [4, 3])
@pytest.mark.parametrize("rot", [0, 4])
@pytest.mark.parametrize("ids", [True, False])
def test_rotary_embedding(interleaved: int, rank: int, rot: int, ids: bool, rng: np.random.Generator) -> None:
    """Head size 8, all of it rotated or the first 4; caches picked by position_ids or given
    per (batch, seq); a symbolic batch and sequence length."""
    half = (rot or 8) // 2
    x = ("x", F, ["B", 2, "S", 8] if rank == 4 else ["B", "S", 16])
    caches = [("cos", F, [12, half]), ("sin", F, [12, half])] if ids else [("cos", F, ["B", "S", half]), ("sin", F, ["B", "S", half])]
    inputs = [x, *caches] + ([("pos", I64, ["B", "S"])] if ids else [])
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rot, "num_heads": 2}
    model = onnx_model([node("RotaryEmbedding", [n for n, _, _ in inputs], "y", **attrs)], inputs)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        if ids:
            feeds["pos"] = rng.integers(0, 12, feeds["pos"].shape).astype(np.int64)

    check_model(model, rng, [{"B": 2, "S": 5}, {"B": 1, "S": 1}], fix)


def test_rotary_embedding_in_f16(rng: np.random.Generator) -> None:
    """f16 computed in f32 and rounded once, as the reference."""
    inputs = [("x", F16, [1, 2, "S", 8]), ("cos", F16, [1, "S", 4]), ("sin", F16, [1, "S", 4])]
    model = onnx_model([node("RotaryEmbedding", ["x", "cos", "sin"], "y", interleaved=1)], inputs)
    check_model(model, rng, [{"S": 3}, {"S": 6}], atol=1e-3)


# --- MaxUnpool -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooled,kernel,strides,pads", [
    ([4], [2], [2], [0, 0]),
    ([3, 3], [2, 2], [2, 2], [0, 0, 0, 0]),
    ([3, 6], [3, 2], [2, 1], [1, 0, 1, 1]),
    ([2, 2, 3], [2, 2, 2], [2, 2, 2], [0, 0, 0, 0, 0, 0]),
])
@pytest.mark.parametrize("output_shape", [False, True])
def test_max_unpool(pooled: list, kernel: list, strides: list, pads: list, output_shape: bool,
                    rng: np.random.Generator) -> None:
    """Pooled values scattered to distinct random flat positions of the default-size output,
    or of a constant output_shape one larger per spatial axis (the indices address that shape)."""
    n = len(kernel)
    window = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    size = [(d - 1) * st + k - p0 - p1 for d, k, st, p0, p1 in zip(pooled, kernel, strides, pads[:n], pads[n:])]
    inits = {}
    names = ["x", "i"]
    if output_shape:
        size = [d + 1 for d in size]
        inits["shape"] = np.array([2, 3, *size], np.int64)
        names.append("shape")
    batch = 2 if output_shape else "N"  # (an explicit output_shape fixes the batch)
    model = onnx_model([node("MaxUnpool", names, "y", **window)], [("x", F, [batch, 3, *pooled]), ("i", I64, [batch, 3, *pooled])], inits)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        i = feeds["i"]
        total = i.shape[0] * 3 * int(np.prod(size))
        feeds["i"] = rng.permutation(total)[: i.size].reshape(i.shape).astype(np.int64)

    check_model(model, rng, [{"N": 2}, {"N": 1}], fix)


def test_max_unpool_index_outside_the_output_is_an_error(rng: np.random.Generator) -> None:
    model = onnx_model([node("MaxUnpool", ["x", "i"], "y", kernel_shape=[2], strides=[2])], [("x", F, [1, 1, 3]), ("i", I64, [1, 1, 3])])
    graph = import_proto(model)
    built = build(graph, resolve_target("cpu"))
    feeds = {"x": np.ones((1, 1, 3), np.float32), "i": np.array([[[0, 5, 3]]], np.int64)}
    assert run_vm(built, graph, feeds)["y"].sum() == 3  # 6 slots: 5 is the last
    with pytest.raises(Exception, match="MaxUnpool: an index lies outside the output"):
        run_vm(built, graph, {"x": feeds["x"], "i": np.array([[[0, 6, 1]]], np.int64)})


# --- MaxPool's Indices ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,attrs", [
    (["N", 3, 13], dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    (["N", 4, 9, 11], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    (["N", 2, 8, 8], dict(kernel_shape=[2, 2], strides=[2, 2], storage_order=1)),
    (["N", 2, 10, 7], dict(kernel_shape=[3, 2], strides=[2, 1], dilations=[2, 1], ceil_mode=1)),
    ([1, 2, 5, "H", "W"], dict(kernel_shape=[2, 2, 3], strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1], storage_order=1)),
])
def test_max_pool_indices(shape: list, attrs: dict, rng: np.random.Generator) -> None:
    """Y and Indices of 1-3 spatial dims against the interpreter, over symbolic sizes; the
    inputs hold ties within windows (the first maximum in tap order wins, as onnxruntime's)."""
    model = onnx_model([node("MaxPool", ["x"], ["y", "i"], **attrs)], [("x", F, shape)])

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["x"] = rng.integers(-3, 4, feeds["x"].shape).astype(np.float32)  # (few values: many ties)

    check_model(model, rng, [{"N": 2, "H": 6, "W": 7}, {"N": 1, "H": 3, "W": 4}], fix)


def test_max_pool_indices_feed_max_unpool(rng: np.random.Generator) -> None:
    """SegNet's decoder: each value back where the pool found it, zeros elsewhere (padding and
    ceil mode included)."""
    window = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = onnx_model([node("MaxPool", ["x"], ["y", "i"], **window), node("MaxUnpool", ["y", "i", "s"], "z", **window)],
                       [("x", F, [1, 3, 9, 12])], {"s": np.array([1, 3, 9, 12], np.int64)})
    check_model(model, rng)


# --- onnx's node tests, refused ops ----------------------------------------------------------------
COMPILED = ("test_reversesequence", "test_unique", "test_rotary_embedding", "test_maxunpool", "test_maxpool_with_argmax")
# maxunpool_export_with_output_shape: its output_shape is a graph input (a shape known only at
# run time, refused), and its expected data addresses the default-size output (onnx/onnx#2398).
SKIPPED = ("test_maxunpool_export_with_output_shape",)
REFUSED = ["Col2Im", "BitCast"]  # (AffineGrid, CenterCropPad: test_grid_and_crop.py; DeformConv: test_vision_ops.py)


def test_onnx_node_tests_of_these_ops_match_their_data() -> None:
    """onnx's own node tests of the compiled ops, compiled, against onnx's expected outputs."""
    from onnx.backend.test.case.node import collect_testcases

    # (the `_expanded` cases are the ops' function bodies, other ops: not these code generators)
    cases = [c for c in collect_testcases() if c.name.startswith(COMPILED) and not c.name.endswith("_expanded")
             and c.name not in SKIPPED]
    assert len(cases) >= 21
    for case, graph, feeds, got, expected in run_node_cases(cases):
        want = interp.run(graph, feeds)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=case.name)
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=case.name)


@pytest.mark.parametrize("op", REFUSED)
def test_ops_left_without_a_code_generator_are_named(op: str) -> None:
    """The first onnx node test of the op: building it is a LoweringError naming the op."""
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases() if any(n.op_type == op for n in c.model.graph.node))
    with pytest.raises(LoweringError, match=rf"operators without a code generator:\n  {op}: 1 node\(s\)"):
        build(import_proto(case.model), resolve_target("cpu"))
