"""Pools in ceil mode as they are built: over a size that is itself an expression of a symbolic
one (the output of a stride-2 pool over a symbolic length, as a speech or OCR model's second
pool sees it), in NCW / NCHW and in the blocked layout, and LpPool's sum over a ceil-mode
window, against the interpreter on fresh random inputs at several sizes."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import check_model, onnx_model
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.errors import EmberError
from ember.compiler.importer import import_proto
from ember.targets import build, resolve_target

F = T.FLOAT

# (op, attributes) of the ceil-mode pool, per rank; every one keeps its last window clear of
# the end pad (end pad + stride <= span) or is static, so its count is known before run time.
CEIL_POOLS = [
    ("MaxPool", dict(kernel_shape=[3], strides=[2])),
    ("MaxPool", dict(kernel_shape=[3], strides=[2], pads=[1, 1], dilations=[2])),
    ("AveragePool", dict(kernel_shape=[3], strides=[2], count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=[4], strides=[3], pads=[2, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2], strides=[2], count_include_pad=1)),
    ("LpPool", dict(kernel_shape=[3], strides=[2], pads=[1, 1], p=2)),
    ("LpPool", dict(kernel_shape=[4], strides=[3], p=3)),
]


def _two_d(attrs: dict) -> dict:
    """The same window over H and W."""
    out = dict(attrs)
    out["kernel_shape"] = attrs["kernel_shape"] * 2
    out["strides"] = attrs["strides"] * 2
    pads = attrs.get("pads", [0, 0])
    out["pads"] = [pads[0], pads[0], pads[1], pads[1]]
    if "dilations" in attrs:
        out["dilations"] = attrs["dilations"] * 2
    return out


def _after_a_pool(op: str, attrs: dict, spatial: list[str | int]) -> object:
    """x -> max pool 2, stride 2 (the size becomes an expression) -> the ceil-mode pool."""
    rank = len(spatial)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2] * rank, strides=[2] * rank),
        helper.make_node(op, ["p"], ["y"], ceil_mode=1, **attrs),
    ]
    return onnx_model(nodes, [("x", F, [1, 8, *spatial])], opset=18)


@pytest.mark.parametrize("case", range(len(CEIL_POOLS)))
@pytest.mark.parametrize("rank", [1, 2])
def test_ceil_mode_pool_over_a_symbolic_expression(case: int, rank: int, rng: np.random.Generator) -> None:
    op, attrs = CEIL_POOLS[case]
    attrs = attrs if rank == 1 else _two_d(attrs)
    spatial = ["L"] if rank == 1 else ["H", "W"]
    sizes = [{"L": n} for n in (29, 30, 31, 64)] if rank == 1 else [{"H": 17, "W": 23}, {"H": 20, "W": 20}, {"H": 31, "W": 26}]
    check_model(_after_a_pool(op, attrs, spatial), rng, sizes)


@pytest.mark.parametrize("case", range(len(CEIL_POOLS)))
def test_ceil_mode_pool_static(case: int, rng: np.random.Generator) -> None:
    """Static sizes whose last window overhangs the end pad (LpPool's sum must not count the
    overhang: an average over fewer elements times the window's size did, by window/valid)."""
    op, attrs = CEIL_POOLS[case]
    for n in (29, 30, 31):
        check_model(_after_a_pool(op, attrs, [n]), rng)


def test_ceil_mode_pool_in_the_blocked_layout(rng: np.random.Generator) -> None:
    """conv 3 -> 32 -> max pool 2 (blocked) -> ceil-mode average pool counting its pads (blocked,
    padded explicitly so that the overhang is not counted) -> conv 1x1, over a symbolic H, W."""
    inits = {"w0": (rng.standard_normal((32, 3, 3, 3)) * 0.3).astype(np.float32),
             "w1": (rng.standard_normal((16, 32, 1, 1)) * 0.2).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p0"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         ceil_mode=1, count_include_pad=1),
        helper.make_node("Conv", ["p1", "w1"], ["y"], kernel_shape=[1, 1]),
    ]
    model = onnx_model(nodes, [("x", F, [1, 3, "H", "W"])], inits)
    built = check_model(model, rng, [{"H": 19, "W": 22}, {"H": 24, "W": 24}, {"H": 33, "W": 17}])
    pools = [rule for kernel, rule in built.rules.items() if "averagepool" in kernel]
    assert pools == ["WindowNCHWc"], built.rules


def test_ceil_mode_lppool_unknown_count_is_refused() -> None:
    """A ceil-mode LpPool over a symbolic size whose last window may start in its end pad (end
    pad + stride > span): its output count is only known at run time, and it is refused with
    one message, not built wrong."""
    model = onnx_model([helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2], strides=[2], pads=[0, 1],
                                         ceil_mode=1, p=2)], [("x", F, [1, 8, "L"])], opset=18)
    with pytest.raises(EmberError, match="ceil-mode LpPool over a symbolic size"):
        build(import_proto(model), resolve_target("cpu"))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_mode_pool_whose_count_is_known_at_run_time(op: str, rng: np.random.Generator) -> None:
    """A ceil-mode pool whose last window may start in its end pad (end pad + stride > span:
    its output length, `win_2`, is only known at run time) read by a conv: the length is bound
    from the pool's kernel at run time, at sizes that keep and that lose the last window."""
    inits = {"w0": (rng.standard_normal((16, 8, 3)) * 0.3).astype(np.float32),
             "w1": (rng.standard_normal((8, 16, 3)) * 0.3).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[3], pads=[1, 1]),
        helper.make_node(op, ["c0"], ["p"], kernel_shape=[2], strides=[3], pads=[0, 2], ceil_mode=1),
        helper.make_node("Conv", ["p", "w1"], ["y"], kernel_shape=[3], pads=[1, 1]),
    ]
    model = onnx_model(nodes, [("x", F, [1, 8, "L"])], inits)
    graph = import_proto(model)
    assert not isinstance(graph.nodes[1].outputs[0].type.shape[2], int)
    check_model(model, rng, [{"L": n} for n in (20, 21, 22, 23, 30)])
