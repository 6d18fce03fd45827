"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convs (targets/winograd.py, sched_winograd.py): the
transforms' algebra, which convs take the form and which tile size, and their answers against the interpreter through the compiled
kernels (ragged tiles, odd channel blocks, half-vector blocks, asymmetric and no padding,
batches, epilogues)."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import compare, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target, winograd

# fp32 sums of up to 9 x 64 products of O(1) values, transformed: F(4, 3)'s extra rounding is
# about 3e-7 relative (targets/winograd.py), well inside the direct conv's tolerance.
ATOL = 1e-4
TARGETS = ["cpu", "x86-64-v3"]


def _direct(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A valid 3x3 correlation of one channel: x [H, W] * w [3, 3]."""
    h, wd = x.shape[0] - 2, x.shape[1] - 2
    return np.array([[np.sum(x[i:i + 3, j:j + 3] * w) for j in range(wd)] for i in range(h)])


@pytest.mark.parametrize("m", [4, 2])
def test_transforms_compute_a_tile_of_the_conv(m: int, rng: np.random.Generator) -> None:
    """Y = A^T [(G g G^T) . (B^T d B)] A is the tile's correlation, for both channels' blocks of
    the packed weight (transform_weight's layout [a, a, CO/bo, CI/bi, bi, bo])."""
    a_mat, b_mat, _ = winograd.matrices(m)
    a = m + 2
    d = rng.standard_normal((a, a))
    weight = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    u = winograd.transform_weight(weight, bi=8, bo=16, m=m)
    assert u.shape == (a, a, 2, 2, 8, 16) and u.dtype == np.float32
    for co, ci in ((0, 0), (17, 9), (31, 15)):
        ug = u[:, :, co // 16, ci // 8, ci % 8, co % 16].astype(np.float64)
        y = a_mat.T @ (ug * (b_mat.T @ d @ b_mat)) @ a_mat
        np.testing.assert_allclose(y, _direct(d, weight[co, ci].astype(np.float64)), rtol=1e-5, atol=1e-5)


def _model(ci: int, co: int, h: int, w: int, n: int, rng: np.random.Generator, pads: list[int],
           epilogue: str = "relu", **attrs: object) -> object:
    """x -> 1x1 conv (so the 3x3 conv reads a blocked input) -> 3x3 conv + bias -> epilogue."""
    inits = {"w0": (rng.standard_normal((ci, 8, 1, 1)) * 0.3).astype(np.float32),
             "w": (rng.standard_normal((co, ci, 3, 3)) / np.sqrt(9 * ci)).astype(np.float32),
             "b": rng.standard_normal(co).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["x1"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["x1", "w", "b"], ["c"], kernel_shape=[3, 3], pads=pads, **attrs)]
    inputs = [("x", T.FLOAT, [n, 8, h, w])]
    if epilogue == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    else:  # a residual add, then relu (a ResNet block's end)
        oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
        inputs.append(("r", T.FLOAT, [n, co, oh, ow]))
        nodes += [helper.make_node("Add", ["c", "r"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    return onnx_model(nodes, inputs, inits)


CASES = [  # (ci, co, h, w, batch, pads, epilogue, m: the tile size the conv takes)
    (32, 32, 8, 8, 1, [1, 1, 1, 1], "relu", 2),  # 4 tiles of 4 x 4, the fewest taken
    (48, 48, 10, 13, 2, [1, 1, 1, 1], "residual", 4),  # ragged tiles; 3 channel blocks (one vector a tile)
    (40, 40, 9, 9, 1, [0, 0, 0, 0], "relu", 2),  # blocks of 8 (40 = 5 x 8); no padding: 7 x 7
    (32, 64, 6, 20, 1, [0, 1, 2, 1], "residual", 2),  # asymmetric padding
    (32, 32, 16, 15, 1, [1, 1, 1, 1], "relu", 4),  # 16 tiles of 4 x 4, the fewest F(4, 3) takes
    (48, 32, 7, 7, 1, [1, 1, 1, 1], "residual", 2),  # a ResNet's last maps; 3 channel blocks in, 2 out
    (32, 48, 24, 22, 1, [1, 1, 1, 1], "residual", 4),  # activations outweigh the weight: one loop; ragged
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_winograd_convs_match_the_interpreter(case: int, target: str, rng: np.random.Generator) -> None:
    ci, co, h, w, n, pads, epilogue, m = CASES[case]
    assert winograd.tile_size(n, (h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2)) == m
    graph = run_pipeline(import_proto(_model(ci, co, h, w, n, rng, pads, epilogue)), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target(target))
    assert list(built.rules.values()).count("WinogradNCHWc") == 1, built.rules
    for _ in range(2):
        feeds = interp.random_feeds(graph, rng, {})
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"{target} case {case}", atol=ATOL)


def test_direct_build_computes_the_same(rng: np.random.Generator) -> None:
    """`winograd=False` (ember compile --conv direct) keeps every conv direct, with the same
    answers to rounding."""
    graph = run_pipeline(import_proto(_model(32, 32, 12, 12, 1, rng, [1, 1, 1, 1])), DEFAULT_PIPELINE).graph
    target = resolve_target("cpu")
    fast, direct = build(graph, target), build(graph, target, winograd=False)
    assert "WinogradNCHWc" in fast.rules.values() and "WinogradNCHWc" not in direct.rules.values(), direct.rules
    feeds = interp.random_feeds(graph, rng, {})
    compare(run_vm(fast, graph, feeds), run_vm(direct, graph, feeds), "winograd vs direct", atol=ATOL)


DIRECT = [  # convs that stay direct: (ci, co, h, w, batch, pads, attrs, why)
    (32, 32, 12, 12, 1, [1, 1, 1, 1], dict(strides=[2, 2]), "strided"),
    (32, 32, 12, 12, 1, [2, 2, 2, 2], dict(dilations=[2, 2]), "dilated"),
    (16, 32, 12, 12, 1, [1, 1, 1, 1], {}, "one input channel block"),
    (32, 32, 3, 3, 1, [1, 1, 1, 1], {}, "one tile"),
    (32, 32, 5, 5, 1, [0, 0, 0, 0], {}, "3 x 3 output: one tile"),
]


@pytest.mark.parametrize("case", range(len(DIRECT)), ids=[c[-1] for c in DIRECT])
def test_convs_winograd_does_not_pay_for_stay_direct(case: int, rng: np.random.Generator) -> None:
    ci, co, h, w, n, pads, attrs, _ = DIRECT[case]
    graph = run_pipeline(import_proto(_model(ci, co, h, w, n, rng, pads, **attrs)), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"))
    assert "WinogradNCHWc" not in built.rules.values(), built.rules
    feeds = interp.random_feeds(graph, rng, {})
    compare(run_vm(built, graph, feeds), interp.run(graph, feeds), DIRECT[case][-1], atol=ATOL)


SYMBOLIC = [  # (dims made symbolic: {axis: name}, sizes to run at, whether the conv takes the form)
    ({2: "H", 3: "W"}, [{"H": 12, "W": 12}, {"H": 7, "W": 61}, {"H": 2, "W": 3}, {"H": 30, "W": 5}], True),
    ({0: "B", 3: "W"}, [{"B": 2, "W": 9}, {"B": 1, "W": 57}], True),
    ({0: "B"}, [{"B": 1}, {"B": 3}], False),  # (a static image: the sample's batch gets a static library)
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(SYMBOLIC)))
def test_symbolic_sizes_take_the_winograd_form(case: int, target: str, rng: np.random.Generator) -> None:
    """Over a symbolic image size or batch the tiles are counted at run time and rounded up to
    whole register tiles (targets/winograd.py: SYMBOLIC_TILE_BLOCK); the answers match the
    interpreter at sizes that leave every kind of remainder (a single tile, a ragged last tile,
    padding tiles past the last real one, several images). A symbolic batch over a static
    image stays direct."""
    dims, sizes, takes = SYMBOLIC[case]
    model = _model(32, 48, 12, 12, 1, rng, [1, 1, 1, 1], epilogue="residual")
    for value in model.graph.input:
        for axis, name in dims.items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    for value in model.graph.output:
        for axis, name in dims.items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target(target))
    assert ("WinogradNCHWc" in built.rules.values()) == takes, built.rules
    for size in sizes:
        feeds = interp.random_feeds(graph, rng, size)
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"{target} {size}", atol=ATOL)


@pytest.mark.parametrize("sample,takes", [({"H": 12, "W": 12}, True), ({"H": 4, "W": 6}, False)])
def test_the_compile_sample_decides_the_form_over_a_symbolic_size(sample: dict, takes: bool,
                                                                  rng: np.random.Generator) -> None:
    """With the compile sample's sizes known, a conv over a symbolic image takes the form where
    the sample gives it MIN_TILES tiles or more (9 at 12 x 12; 2 at 4 x 6), and computes the
    same at other sizes either way."""
    model = _model(32, 32, 12, 12, 1, rng, [1, 1, 1, 1])
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[2].dim_param = "H"
        value.type.tensor_type.shape.dim[3].dim_param = "W"
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"), sample_dims=sample)
    assert ("WinogradNCHWc" in built.rules.values()) == takes, built.rules
    feeds = interp.random_feeds(graph, rng, {"H": 9, "W": 20})
    compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"sample {sample}", atol=ATOL)


def test_a_symbolic_size_artifact_counts_its_winograd_kernels(tmp_path: object, rng: np.random.Generator) -> None:
    """The manifest's per-kernel counts (`ember profile`) hold the Winograd kernels of a model
    over a symbolic image, counted at the sample's size (their kernels keep the symbolic shapes
    they were made with: kernel_stats binds each one's own dims)."""
    import json
    from pathlib import Path

    import onnx

    from ember.compiler.driver import compile_model

    model = _model(32, 32, 12, 12, 1, rng, [1, 1, 1, 1])
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[2].dim_param = "H"
        value.type.tensor_type.shape.dim[3].dim_param = "W"
    path = Path(str(tmp_path)) / "m.onnx"
    onnx.save(model, str(path))
    sample = {"x": rng.standard_normal((1, 8, 16, 20)).astype(np.float32)}
    art = compile_model(path, Path(str(tmp_path)) / "m.ember", sample=sample).path
    kernels = json.loads((Path(art) / "manifest.json").read_text())["kernels"]
    wino = [k for k in kernels if k["rule"] == "WinogradNCHWc"]
    assert len(wino) == 1 and wino[0]["flops"] > 0, kernels


def test_stages_tvm_cannot_place_keep_plain_parallel_nests(monkeypatch: pytest.MonkeyPatch,
                                                             rng: np.random.Generator) -> None:
    """Where neither form's schedule takes a kernel, each stage runs as its own parallel nest
    (never TVM's default code, one thread and no vectors), with the same answers."""
    from ember.targets.sched_winograd import WinogradNCHWc

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("not a stage pipeline")

    monkeypatch.setattr(WinogradNCHWc, "_schedule", fail)
    model = _model(32, 48, 12, 12, 1, rng, [1, 1, 1, 1], epilogue="residual")
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[3].dim_param = "W"
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"))
    assert "WinogradNCHWc" in built.rules.values(), built.rules
    for size in ({"W": 12}, {"W": 37}):
        feeds = interp.random_feeds(graph, rng, size)
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"plain {size}", atol=ATOL)


def test_symbolic_tile_count_rounds_up_to_register_tiles() -> None:
    """The TE of a conv over a symbolic size: tiles rounded up to the block, located through
    the tile-origin stage (whose padding tiles repeat the last real tile)."""
    from tvm import te, tirx

    h, w = tirx.Var("H", "int64"), tirx.Var("W", "int64")
    data = te.placeholder((1, 2, h, w, 16), name="x")
    u = te.placeholder((6, 6, 2, 2, 16, 16), name="u")
    out = winograd.winograd_nchwc(data, u, [1, 1, 1, 1], (h, w), m=4, tile_block=14)
    func = te.create_prim_func([data, u, out])
    text = func.script()
    assert winograd.TILE_ORIGIN_BLOCK in text
    assert "// T.int64(14) * T.int64(14)" in text  # (P rounded up to whole blocks of 14)


@pytest.mark.parametrize("case", [(48, 32, 7, 7, 1), (48, 48, 10, 13, 2)], ids=["F(2, 3) on 7 x 7", "ragged, batch 2"])
def test_both_loop_forms_and_every_knob_value_compute_the_same(case: tuple[int, ...], rng: np.random.Generator) -> None:
    """The kernel as one parallel loop over blocks of tiles (`fused`) and as three loop nests,
    and each value of each knob the tuner may pick on top of either, computes what the rule's
    default schedule does, on random arguments."""
    import tvm

    from ember.targets import sched_winograd
    from ember.targets.build import block_lanes, prepare, schedule, schedule_rules, schedule_with
    from ember.targets.lower import to_relax
    from ember.targets.sched_common import buffer_shape

    ci, co, h, w, n = case
    graph = run_pipeline(import_proto(_model(ci, co, h, w, n, rng, [1, 1, 1, 1], "residual")), DEFAULT_PIPELINE).graph
    spec = resolve_target("cpu")
    target = tvm.target.Target(spec.tvm_target())
    mod = prepare(to_relax(graph, block_lanes(spec)), target)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    _, applied = schedule(tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs), target, schedule_rules(spec))
    name, = [k for k, rule in applied.items() if rule == "WinogradNCHWc"]
    func, rule = funcs[name], sched_winograd.WinogradNCHWc()
    args = [rng.standard_normal(buffer_shape(p)).astype(str(p.ty.dtype)) for p in func.params]

    def run(scheduled: tvm.tirx.PrimFunc) -> list[np.ndarray]:
        lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=target)
        tensors = [tvm.runtime.tensor(a.copy()) for a in args]
        lib["main"](*tensors)
        return [t.numpy() for t in tensors]

    with target:
        want = run(schedule_with(rule, func, target))
        tried = set()
        for fused in (0, 1):
            for knob, values in rule.knob_space(func, target).items():
                for value in values:
                    scheduled = schedule_with(rule, func, target, {"fused": fused, knob: value})
                    if scheduled is None:
                        continue
                    tried.add((fused, knob))
                    for got, expected in zip(run(scheduled), want):
                        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=ATOL, err_msg=f"fused={fused} {knob}={value}")
    assert {(0, "nv"), (0, "xr"), (1, "nv"), (1, "xr"), (1, "r"), (1, "g")} <= tried, tried
