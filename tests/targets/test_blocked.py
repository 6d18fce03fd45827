"""The blocked activation layout (targets/blocked.py) and its rules (targets/sched_nchwc.py).

The plan is checked on a small CNN (which nodes lower blocked, which values stay blocked), and
the numbers on fresh random inputs against the interpreter: convs of every form the blocked
emitter takes (strides, asymmetric pads, dilation, a plain 3-channel input, a channel count
that only half a vector divides, a single output block), depthwise convs, max and average
pooling (ceil_mode, count_include_pad), global pooling, squeeze-excitation style products
with a run-time per-channel tensor, per-pixel constants, residual adds, and blocked values
that a plain consumer or a graph output reads; at a fixed and at a symbolic batch size. Each is built for AVX-512 lanes (this
machine) and AVX2 lanes (x86-64-v3, 8 lanes) and run on the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from codegen_helpers import compare, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import blocked, build, lowering, resolve_target, sched_common
from ember.targets.build import block_lanes

F = T.FLOAT
ATOL = 1e-4  # fp32 sums of up to ~600 terms of O(1) values, reordered by the schedules
TARGETS = ["cpu", "x86-64-v3"]


def _w(rng: np.random.Generator, co: int, ci: int, k: tuple[int, int]) -> np.ndarray:
    return (rng.standard_normal((co, ci, *k)) / np.sqrt(ci * np.prod(k))).astype(np.float32)


def conv(name: str, x: str, ci: int, co: int, rng: np.random.Generator, inits: dict, k: tuple[int, int] = (3, 3),
         group: int = 1, bias: bool = True, **attrs: object) -> object:
    """A Conv node named `name` reading `x`, its weight (and bias) added to `inits`."""
    inits[f"{name}_w"] = _w(rng, co, ci // group, k)
    inputs = [x, f"{name}_w"]
    if bias:
        inits[f"{name}_b"] = rng.standard_normal(co).astype(np.float32)
        inputs.append(f"{name}_b")
    return helper.make_node("Conv", inputs, [name], kernel_shape=list(k), group=group, **attrs)


def _build(model: object, target: str, blocked_layout: bool = True, winograd: bool = True) -> tuple[object, object]:
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return graph, build(graph, resolve_target(target), blocked=blocked_layout, winograd=winograd)


def check(model: object, target: str, rng: np.random.Generator, batches: tuple[int, ...] = (1,),
          sizes: tuple[tuple[int, int], ...] = (), winograd: bool = True) -> dict[str, str]:
    """Build the model; its outputs match the interpreter on fresh random inputs (at each batch
    size, for a symbolic batch "B"; at each (height, width), for a symbolic image size "H",
    "W"); the rules used. (`winograd=False`: the direct convs, as `--conv direct`.)"""
    graph, built = _build(model, target, winograd=winograd)
    for batch in batches:
        for h, w in sizes or [(0, 0)]:
            feeds = interp.random_feeds(graph, rng, {"B": batch, "H": h, "W": w})
            compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"{target}, batch {batch}, {h} x {w}", atol=ATOL)
    return built.rules


def _lanes(target: str) -> int:
    return block_lanes(resolve_target(target))


# --- the plan --------------------------------------------------------------------------------

def _small_cnn(rng: np.random.Generator) -> object:
    """x[1,3,16,16] -> conv 3->32 s2 + relu -> maxpool -> depthwise 3x3 + clip -> conv 1x1 32->32
    + residual add -> global average pool -> flatten -> gemm."""
    inits: dict = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
                   "fc_w": rng.standard_normal((10, 32)).astype(np.float32)}
    nodes = [
        conv("c0", "x", 3, 32, rng, inits, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        conv("c1", "p0", 32, 32, rng, inits, group=32, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        conv("c2", "r1", 32, 32, rng, inits, k=(1, 1)),
        helper.make_node("Add", ["c2", "p0"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], transB=1),
    ]
    return onnx_model(nodes, [("x", F, [1, 3, 16, 16])], inits)


def test_plan_blocks_the_cnn_body_and_converts_once_at_its_end(rng: np.random.Generator) -> None:
    graph = run_pipeline(import_proto(_small_cnn(rng)), DEFAULT_PIPELINE).graph
    plan = blocked.plan(graph, 16)
    kinds = {n.name: (n.attrs["kernel"] if n.op == "Fused" else n.op.lower()) for n in graph.nodes}
    assert sorted(kinds[name] for name in plan.nodes) == ["conv_add", "conv_clip", "conv_relu", "globalaveragepool", "maxpool"]
    # every 4-d value up to the global pool stays blocked; its [1,32,1,1] output and after are plain
    assert sorted(kinds[name] for name in plan.values) == ["conv_add", "conv_clip", "conv_relu", "maxpool"]
    assert set(plan.values.values()) == {16}
    # AVX2 blocks by 8; 4-lane targets and disabled layouts block nothing
    assert set(blocked.plan(graph, 8).values.values()) == {8}
    assert not blocked.plan(graph, 4).nodes and not blocked.plan(graph, 0).nodes


@pytest.mark.parametrize("target", TARGETS)
def test_small_cnn_matches_and_uses_the_blocked_rules(target: str, rng: np.random.Generator) -> None:
    rules = check(_small_cnn(rng), target, rng)
    used = set(rules.values())
    assert {"ConvNCHWc", "WindowNCHWc"} <= used, rules
    assert "ConvBlocked" not in used and "Depthwise" not in used and "Pool" not in used, rules


def test_block_of() -> None:
    assert [blocked.block_of(c, 16) for c in (16, 32, 24, 40, 12, 3, "C")] == [16, 16, 8, 8, None, None, None]
    assert [blocked.block_of(c, 8) for c in (8, 24, 12, 6)] == [8, 8, 4, None]
    assert blocked.block_of(16, 4) is None  # NEON keeps NCHW for now


def test_disabled_layout_builds_nchw(rng: np.random.Generator) -> None:
    _, built = _build(_small_cnn(rng), "cpu", blocked_layout=False)
    assert built.block_lanes == 0
    assert "ConvNCHWc" not in built.rules.values()
    assert "nchwc" not in built.module.script()


# --- numbers ---------------------------------------------------------------------------------

CONVS = [  # (ci, h, w, co, kernel, attrs)
    (16, 9, 13, 32, (3, 3), dict(pads=[1, 1, 1, 1])),  # width 13: a ragged column block
    (3, 17, 17, 32, (7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),  # a plain 3-channel image
    (24, 8, 8, 24, (1, 1), {}),  # 24 channels: half-vector blocks on AVX-512
    (32, 7, 9, 16, (3, 2), dict(pads=[2, 1, 0, 2], dilations=[2, 3], strides=[1, 2])),  # one output block
    (48, 5, 5, 48, (1, 1), dict(strides=[2, 2])),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_forms(case: int, target: str, rng: np.random.Generator) -> None:
    ci, h, w, co, k, attrs = CONVS[case]
    inits: dict = {}
    nodes = [conv("c", "x", ci, co, rng, inits, k=k, **attrs), helper.make_node("Relu", ["c"], ["y"])]
    rules = check(onnx_model(nodes, [("x", F, ["B", ci, h, w])], inits), target, rng, batches=(1, 3))
    if co % _lanes(target) == 0 or co % (_lanes(target) // 2) == 0:
        assert "ConvNCHWc" in rules.values(), rules


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_forms_over_a_dynamic_image_size(case: int, target: str, rng: np.random.Generator) -> None:
    """The same convs over a symbolic H, W, run at the case's size and at sizes whose widths
    leave every remainder of a column block (the blocked layout then holds across the model:
    before, only static images took it)."""
    ci, h, w, co, k, attrs = CONVS[case]
    inits: dict = {}
    nodes = [conv("c", "x", ci, co, rng, inits, k=k, **attrs), helper.make_node("Relu", ["c"], ["y"])]
    sizes = ((h, w), (h + 3, w + 8), (h + 1, 2 * w + 9))
    rules = check(onnx_model(nodes, [("x", F, ["B", ci, "H", "W"])], inits), target, rng, batches=(2, ), sizes=sizes)
    if co % _lanes(target) == 0 or co % (_lanes(target) // 2) == 0:
        assert "ConvNCHWc" in rules.values(), rules


DEEP_CONVS = [  # (ci, h, w, co, kernel, attrs, batch): channel panels whose weight outgrows the L1
    (64, 6, 6, 64, (3, 3), dict(pads=[1, 1, 1, 1]), 1),
    (1024, 4, 5, 128, (1, 1), {}, 2),  # a batch of 2: the partial sums hold both images
    (128, 17, 17, 64, (3, 3), dict(pads=[1, 1, 1, 1]), 1),  # width 17: a ragged column block
    (96, 9, 9, 64, (3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), 1),  # 6 input blocks on AVX-512
    (64, 8, 8, 64, (3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2]), 1),
]


@pytest.mark.parametrize("target", [*TARGETS, "x86-64-v4"])
@pytest.mark.parametrize("case", range(len(DEEP_CONVS)))
def test_deep_convs_take_their_weight_in_chunks(case: int, target: str, rng: np.random.Generator) -> None:
    """Convs whose channel panels' weight outgrows the L1 sum their input channels in chunks
    (sched_nchwc._reduction_blocked: partial sums per chunk, then a pass that adds them and
    applies the epilogue, here a residual add and a Relu) on CPUs whose FMAs outrun L2 (AVX2,
    Intel's AVX-512; not a Zen 4's half-rate AVX-512, which "cpu" may be); they match the
    interpreter. (Direct convs: the 3x3 stride-1 ones would take the Winograd form.)"""
    ci, h, w, co, k, attrs, batch = DEEP_CONVS[case]
    inits: dict = {}
    nodes = [conv("c", "x", ci, co, rng, inits, k=k, **attrs), helper.make_node("Add", ["c", "r"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    out_h = (h + sum(attrs.get("pads", [0] * 4)[::2]) - attrs.get("dilations", [1])[0] * (k[0] - 1) - 1) // attrs.get("strides", [1])[0] + 1
    out_w = (w + sum(attrs.get("pads", [0] * 4)[1::2]) - attrs.get("dilations", [1])[0] * (k[1] - 1) - 1) // attrs.get("strides", [1])[0] + 1
    model = onnx_model(nodes, [("x", F, [batch, ci, h, w]), ("r", F, [batch, co, out_h, out_w])], inits)
    rules = check(model, target, rng, winograd=False)
    assert "ConvNCHWc" in rules.values(), rules
    _, built = _build(model, target, winograd=False)
    chunked = sched_common.full_rate_fma(tvm.target.Target(resolve_target(target).tvm_target()))
    assert target == "cpu" or chunked
    assert ('sblock("conv_nchwc_rf_update")' in built.module.script()) == chunked


def test_half_rate_avx512_cpus() -> None:
    """Zen 4 runs AVX-512 FMAs in halves; Intel's AVX-512 cores, AVX2 cores and ARM do not."""
    def target(mcpu: str, triple: str = "x86_64-linux-gnu") -> tvm.target.Target:
        return tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu})

    assert not sched_common.full_rate_fma(target("znver4"))
    assert sched_common.full_rate_fma(target("skylake-avx512"))
    assert sched_common.full_rate_fma(target("sapphirerapids"))
    assert sched_common.full_rate_fma(target("haswell"))
    assert sched_common.full_rate_fma(target("cortex-a72", "aarch64-linux-gnu"))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", [(256, 128, (3, 3), dict(pads=[1, 1, 1, 1])),
                                  (256, 128, (3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
                                  (1280, 256, (1, 1), {})])
def test_deep_convs_over_a_dynamic_image_size_run_in_one_pass(case: tuple, target: str, rng: np.random.Generator) -> None:
    """Over a symbolic H, W the weight-heavy convs (over 1 MB: channel panels) sum their input
    channels in one pass: chunks would be sized for a guessed map (a dynamic ResNet-18 at 320 x
    256: 1.55x onnxruntime with chunks sized for 14 x 14 maps, 1.13x in one pass). They match
    the interpreter at sizes whose widths leave different remainders of a column block. (Direct
    convs, as `--conv direct`: by default the 3x3 stride-1 one takes the Winograd form.)"""
    ci, co, k, attrs = case
    inits: dict = {}
    nodes = [conv("c", "x", ci, co, rng, inits, k=k, **attrs), helper.make_node("Relu", ["c"], ["y"])]
    model = onnx_model(nodes, [("x", F, [1, ci, "H", "W"])], inits)
    rules = check(model, target, rng, sizes=((5, 7), (9, 12), (14, 3), (8, 29)), winograd=False)
    assert "ConvNCHWc" in rules.values(), rules
    _, built = _build(model, target, winograd=False)
    assert "conv_nchwc_rf" not in built.module.script()


CONV1DS = [  # (ci, co, kernel, attrs): 1-d convs, held as images of one row
    (1, 32, 10, dict(strides=[5])),  # a raw waveform: one channel, read as it is
    (32, 32, 3, dict(strides=[2])),  # a plain 32-channel input: a blocked copy
    (48, 64, 3, dict(pads=[1, 1])),
    (64, 32, 2, dict(strides=[2], dilations=[2], pads=[1, 0])),
    (256, 256, 3, dict(strides=[2])),  # wav2vec2's: a panel's weight outgrows the L1
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(CONV1DS)))
def test_conv1d_stacks_run_blocked(case: int, target: str, rng: np.random.Generator) -> None:
    """A conv1d, a second one on its blocked output, a per-channel scale, a GELU and a
    residual, a depthwise conv1d, max and average pools and a global pool, over a symbolic length at sizes that leave different remainders of a column
    block: they match the interpreter and run in the blocked layout, the input copied into it
    where it has a block's worth of channels (a speech model's feature extractor)."""
    ci, co, k, attrs = CONV1DS[case]
    inits: dict = {"scale": rng.standard_normal((co, 1)).astype(np.float32)}
    nodes = [conv("c0", "x", ci, co, rng, inits, k=(k,), **attrs),
             conv("c1", "c0", co, co, rng, inits, k=(3,), pads=[1, 1]),
             helper.make_node("Mul", ["c1", "scale"], ["s"]), helper.make_node("Gelu", ["s"], ["e"]), helper.make_node("Add", ["e", "c0"], ["r"]),
             conv("d", "r", co, co, rng, inits, k=(5,), group=co, pads=[2, 2]),
             helper.make_node("MaxPool", ["d"], ["mp"], kernel_shape=[3], strides=[2], pads=[1, 1]),
             helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2], strides=[2]),
             helper.make_node("GlobalAveragePool", ["ap"], ["pooled"])]
    model = onnx_model(nodes, [("x", F, [1, ci, "T"])], inits)
    graph, built = _build(model, target)
    for t in (23, 64, 101):
        feeds = {"x": rng.standard_normal((1, ci, t)).astype(np.float32)}
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"{target}, length {t}", atol=ATOL)
    if co % _lanes(target) == 0 or co % (_lanes(target) // 2) == 0:
        assert "ConvNCHWc" in built.rules.values() and "WindowNCHWc" in built.rules.values(), built.rules
        assert not any(name.startswith("fused_maxpool") or name.startswith("fused_averagepool") for name, rule in built.rules.items()
                       if rule != "WindowNCHWc"), built.rules  # the pools blocked too
        assert ("to_nchwc" in built.rules) == (ci >= 16), built.rules
        conversions = {name: rule for name, rule in built.rules.items() if name.startswith(("to_nchw", "to_nchwc"))}
        assert set(conversions.values()) <= {"Relayout"}, conversions
    # one pass over a symbolic length: a signal's partial sums per chunk would not fit L2
    # (wav2vec2's 256-channel convs over 6399 samples: 13 MB a panel, the model 0.89 -> 1.06x
    # onnxruntime when they were chunked)
    assert "conv_nchwc_rf" not in built.module.script()



@pytest.mark.parametrize("length", [4001, "T"])
def test_conv1d_along_a_long_signal_is_parallel_over_column_tiles(length: object, rng: np.random.Generator) -> None:
    """A 256 -> 256 stride-2 conv1d over 4001 samples (wav2vec2's feature extractor): its
    activations outweigh its weight, so the threads take column tiles, each over every channel
    panel, and a tile's input is read once. With the 8 channel panels parallel and outermost,
    each streamed the whole input from memory (49-51% of peak at 1 thread). Static and
    symbolic lengths; the answers are the interpreter's."""
    import re

    inits: dict = {}
    nodes = [conv("c0", "x", 256, 256, rng, inits, k=(3,), strides=[2]), helper.make_node("Gelu", ["c0"], ["y"])]
    model = onnx_model(nodes, [("x", F, [1, 256, length])], inits)
    graph, built = _build(model, "cpu")
    for t in (4001,) if length == 4001 else (4001, 37):
        feeds = {"x": rng.standard_normal((1, 256, t)).astype(np.float32)}
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"length {t}", atol=ATOL)
    kernel = next(name for name, rule in built.rules.items() if rule == "ConvNCHWc")
    text = next(f.script() for gv, f in built.module.functions_items() if gv.name_hint == kernel)
    extent = re.search(r"in T\.parallel\((.*)", text).group(1)  # (the first parallel loop)
    if length == 4001:
        assert extent.startswith("T.int64(200)"), extent  # 2000 columns in tiles of 10, not 8 panels
    else:
        assert extent.startswith("(T_1 - T.int64(3)) // T.int64(16)"), extent  # the column tiles

INSTANCE_NORMS = [  # (input dims, batches, sizes): the symbolic dims' values the model runs at
    (["B", 8, "T"], (1, 2), {"T": (23, 64, 301)}),  # a speech model's first conv layer
    ([1, 8, 57], (1,), {}),
    (["B", 8, "H", "W"], (2,), {"H": (9, 14), "W": (11, 5)}),  # a style-transfer or detection head's
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(INSTANCE_NORMS)))
def test_instance_norm_runs_blocked(case: int, target: str, rng: np.random.Generator) -> None:
    """conv -> InstanceNormalization (random scale and bias, values far from zero mean) -> GELU
    -> conv: the norm reads and writes the blocked layout (no conversion but the output's), its
    statistics per channel block in parallel (LaneReduce), and matches the interpreter."""
    dims, batches, sizes = INSTANCE_NORMS[case]
    k = (3,) if len(dims) == 3 else (3, 3)
    pads = [1, 1] if len(dims) == 3 else [1, 1, 1, 1]
    inits: dict = {"scale": rng.uniform(0.5, 2, 32).astype(np.float32), "bias": rng.standard_normal(32).astype(np.float32),
                   "shift": np.array(3.0, np.float32)}
    nodes = [conv("c0", "x", 8, 32, rng, inits, k=k, pads=pads), helper.make_node("Add", ["c0", "shift"], ["s"]),
             helper.make_node("InstanceNormalization", ["s", "scale", "bias"], ["n"], epsilon=1e-5),
             helper.make_node("Gelu", ["n"], ["e"]), conv("y", "e", 32, 16, rng, inits, k=k, pads=pads)]
    model = onnx_model(nodes, [("x", F, dims)], inits)
    graph, built = _build(model, target)
    conversions = [name for name in built.rules if name.startswith("to_nchw")]
    assert len(conversions) == 1 and not conversions[0].startswith("to_nchwc"), built.rules  # (the output's)
    assert [rule for name, rule in built.rules.items() if "instancenorm" in name] == ["LaneReduce"], built.rules
    names = sorted(sizes)
    for batch in batches:
        for values in zip(*(sizes[n] for n in names)) if names else [()]:
            feeds = interp.random_feeds(graph, rng, {"B": batch, **dict(zip(names, values))})
            compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"{target}, batch {batch}, {values}", atol=ATOL)


def test_dynamic_image_columns_run_in_whole_blocks(rng: np.random.Generator) -> None:
    """Over a dynamic image, convs compute whole blocks of columns (a 3x3 conv of a blocked
    input, a strided one, a depthwise conv), the columns past the width never stored: widths
    that leave every remainder of a block, narrower than a block too. On AVX-512 the convs take
    blocks of 7 in tiles of 14 columns, whose full tiles and last odd block run without column
    predicates (lowering.split_full_tiles); the depthwise conv, blocks of 8 in tiles of 8."""
    inits: dict = {}
    nodes = [conv("c0", "x", 16, 32, rng, inits, pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             conv("c1", "r0", 32, 32, rng, inits, pads=[1, 1, 1, 1], strides=[1, 2]),
             conv("y", "c1", 32, 32, rng, inits, group=32, pads=[1, 1, 1, 1])]
    model = onnx_model(nodes, [("x", F, [1, 16, "H", "W"])], inits)
    check(model, "cpu", rng, sizes=((14, 14), (9, 23), (30, 5), (3, 29), (5, 1), (4, 56), (6, 43)))
    _, built = _build(model, "cpu")
    text = built.module.script()
    tiles = sorted(line.split("=", 1)[1].strip() for line in text.splitlines() if "_local = T.sblock_alloc_buffer" in line)
    assert tiles == ['T.sblock_alloc_buffer((T.int64(14), T.int64(2), T.int64(16)), scope="local")',  # c0
                     'T.sblock_alloc_buffer((T.int64(14), T.int64(2), T.int64(16)), scope="local")',  # c1
                     'T.sblock_alloc_buffer((T.int64(8), T.int64(1), T.int64(16)), scope="local")'], tiles  # the depthwise row
    assert text.count(f'"{lowering.FULL_TILES}": 14') == 2, text
    convs = [gv for gv in built.module.functions if lowering.FULL_TILES in built.module[gv].script()]
    assert len(convs) == 2, convs
    for gv in convs:
        split = lowering.split_full_tiles(tvm.IRModule({gv: built.module[gv]}))[gv].script()
        full, last = split.split("            else:")
        for branch in (full, last):
            updates = [part.split("T.reads")[0] for part in branch.split('_nchwc_update")')[1:]]
            wheres = [line.strip() for u in updates for line in u.splitlines() if line.strip().startswith("T.where")]
            assert len(updates) == 1 and not any("W" in w for w in wheres), wheres  # (rows only)
        assert "T.unroll(T.int64(14))" in full and "T.unroll(T.int64(7))" in last


def test_a_pool_whose_output_dim_is_only_known_at_run_time(rng: np.random.Generator) -> None:
    """A ceil-mode pool over a symbolic width whose last window may start in the end pad has an
    output dim (a fresh symbol) no kernel can define: the plan leaves it plain, its length is
    bound from the pool's result at run time, and the conv after it reads it, at widths that
    keep and that lose the last window."""
    inits: dict = {}
    nodes = [conv("c0", "x", 8, 16, rng, inits), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[3, 2], strides=[1, 2], pads=[1, 1, 1, 1], ceil_mode=1),
             conv("y", "p0", 16, 16, rng, inits, k=(1, 1))]
    model = onnx_model(nodes, [("x", F, [1, 8, "H", "W"])], inits)
    plan = blocked.plan(run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph, _lanes("cpu"))
    assert "p0" not in plan.values, plan.values
    check(model, "cpu", rng, sizes=((9, 9), (9, 10), (12, 15)))


WINDOWS = [  # (op, c, h, w, attrs)
    ("Depthwise", 32, 14, 14, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("Depthwise", 48, 9, 11, dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], dilations=[1, 2])),
    ("MaxPool", 32, 15, 15, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("MaxPool", 16, 9, 9, dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", 32, 9, 10, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", 32, 9, 10, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(WINDOWS)))
def test_windows_after_a_blocked_conv(case: int, target: str, rng: np.random.Generator) -> None:
    op, c, h, w, attrs = WINDOWS[case]
    attrs = dict(attrs)
    inits: dict = {}
    nodes = [conv("c0", "x", 8, c, rng, inits, k=(1, 1))]
    if op == "Depthwise":
        k = tuple(attrs.pop("kernel_shape"))
        nodes.append(conv("y", "c0", c, c, rng, inits, k=k, group=c, **attrs))
    else:
        nodes.append(helper.make_node(op, ["c0"], ["y"], **attrs))
    rules = check(onnx_model(nodes, [("x", F, [2, 8, h, w])], inits), target, rng)
    assert "WindowNCHWc" in rules.values(), rules
    sizes = ((h, w), (h + 4, w + 7), (2 * h + 1, 2 * w + 3))
    rules = check(onnx_model(nodes, [("x", F, [1, 8, "H", "W"])], inits), target, rng, sizes=sizes)
    assert "WindowNCHWc" in rules.values(), rules  # over a dynamic image size


@pytest.mark.parametrize("target", TARGETS)
def test_squeeze_excitation_and_broadcasts(target: str, rng: np.random.Generator) -> None:
    """x -> conv -> s = sigmoid(conv1x1(relu(conv1x1(gap(c))))) -> c * s (a run-time [N,C,1,1]
    operand) -> + per-pixel constant [1,1,H,W] -> * per-channel constant [C,1,1] -> output (a
    blocked value read by the graph's output) and a max over a plain [N,1,1,1]-shaped branch."""
    c, h = 32, 6
    inits: dict = {"pix": rng.standard_normal((1, 1, h, h)).astype(np.float32),
                   "chan": rng.standard_normal((c, 1, 1)).astype(np.float32)}
    nodes = [
        conv("c0", "x", 16, c, rng, inits, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c0"], ["g"]),
        conv("s0", "g", c, 8, rng, inits, k=(1, 1)),
        helper.make_node("Relu", ["s0"], ["s1"]),
        conv("s2", "s1", 8, c, rng, inits, k=(1, 1)),
        helper.make_node("Sigmoid", ["s2"], ["s"]),
        helper.make_node("Mul", ["c0", "s"], ["m"]),
        helper.make_node("Add", ["m", "pix"], ["p"]),
        helper.make_node("Mul", ["p", "chan"], ["y"]),
        helper.make_node("ReduceMax", ["y"], ["peak"], keepdims=1),
    ]
    rules = check(onnx_model(nodes, [("x", F, ["B", 16, h, h])], inits), target, rng, batches=(3,))
    assert "ConvNCHWc" in rules.values(), rules


@pytest.mark.parametrize("target", TARGETS)
def test_attention_blocks_over_a_dynamic_image_size(target: str, rng: np.random.Generator) -> None:
    """Over a symbolic H, W (as detection backbones are exported): squeeze-excitation (a
    run-time [N,C,1,1] operand), spatial attention (a run-time [N,1,H,W] map from a channel
    mean), a residual add, a strided max pool, and a plain reader (the channel mean) of a
    blocked value."""
    c = 32
    nodes = [
        conv("c0", "x", 16, c, rng, inits := {"axis1": np.array([1], np.int64)}, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c0"], ["g"]),
        conv("s0", "g", c, 8, rng, inits, k=(1, 1)), helper.make_node("Relu", ["s0"], ["s1"]),
        conv("s2", "s1", 8, c, rng, inits, k=(1, 1)), helper.make_node("Sigmoid", ["s2"], ["s"]),
        helper.make_node("Mul", ["c0", "s"], ["m"]),
        helper.make_node("ReduceMean", ["m", "axis1"], ["avg"], keepdims=1),
        helper.make_node("Sigmoid", ["avg"], ["att"]),
        helper.make_node("Mul", ["m", "att"], ["a"]),
        conv("c1", "a", c, c, rng, inits, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c0"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    rules = check(onnx_model(nodes, [("x", F, [1, 16, "H", "W"])], inits), target, rng, sizes=((12, 12), (7, 19), (16, 5)))
    assert {"ConvNCHWc", "WindowNCHWc"} <= set(rules.values()), rules


@pytest.mark.parametrize("target", TARGETS)
def test_residual_network_block(target: str, rng: np.random.Generator) -> None:
    """Two bottleneck blocks (1x1 -> 3x3 -> 1x1 + residual, relu), the second strided with a
    projection shortcut, then a plain reader (Flatten) of a blocked value."""
    inits: dict = {}
    nodes = [
        conv("a0", "x", 32, 16, rng, inits, k=(1, 1)), helper.make_node("Relu", ["a0"], ["a1"]),
        conv("a2", "a1", 16, 16, rng, inits, pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a2"], ["a3"]),
        conv("a4", "a3", 16, 32, rng, inits, k=(1, 1)), helper.make_node("Add", ["a4", "x"], ["a5"]),
        helper.make_node("Relu", ["a5"], ["a6"]),
        conv("b0", "a6", 32, 16, rng, inits, k=(1, 1)), helper.make_node("Relu", ["b0"], ["b1"]),
        conv("b2", "b1", 16, 16, rng, inits, pads=[1, 1, 1, 1], strides=[2, 2]), helper.make_node("Relu", ["b2"], ["b3"]),
        conv("b4", "b3", 16, 48, rng, inits, k=(1, 1)),
        conv("sc", "a6", 32, 48, rng, inits, k=(1, 1), strides=[2, 2]),
        helper.make_node("Add", ["b4", "sc"], ["b5"]), helper.make_node("Relu", ["b5"], ["b6"]),
        helper.make_node("Flatten", ["b6"], ["y"]),
    ]
    check(onnx_model(nodes, [("x", F, ["B", 32, 10, 10])], inits), target, rng, batches=(2, 1))


def _random_chain(rng: np.random.Generator, symbolic: bool = False) -> tuple[object, tuple[int, int]]:
    """conv (random channels, kernel, stride, padding, dilation) -> random epilogue -> a random
    window op (depthwise conv, max or average pool, or none) -> conv 1x1 -> output; and its
    (height, width). `symbolic`: the image's height and width are "H", "W"."""
    inits: dict = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    ci = int(rng.integers(1, 40))
    co = int(rng.choice([8, 16, 24, 32, 48, 64]))
    h, w = (int(v) for v in rng.integers(5, 20, 2))
    k = tuple(int(v) for v in rng.integers(1, 4, 2))
    stride = [int(v) for v in rng.integers(1, 3, 2)]
    dilation = [int(v) for v in rng.integers(1, 3, 2)]
    pads = [int(rng.integers(0, k[i % 2])) for i in range(4)]
    nodes = [conv("c0", "x", ci, co, rng, inits, k=k, strides=stride, dilations=dilation, pads=pads,
                  bias=bool(rng.integers(0, 2)))]
    epilogue = str(rng.choice(["", "relu", "clip", "silu"]))
    last = "c0"
    if epilogue == "relu":
        nodes.append(helper.make_node("Relu", ["c0"], ["e"]))
    elif epilogue == "clip":
        nodes.append(helper.make_node("Clip", ["c0", "lo", "hi"], ["e"]))
    elif epilogue == "silu":
        nodes += [helper.make_node("Sigmoid", ["c0"], ["s"]), helper.make_node("Mul", ["c0", "s"], ["e"])]
    last = "e" if epilogue else last
    window = str(rng.choice(["depthwise", "MaxPool", "AveragePool", "none"]))
    kw = tuple(int(v) for v in rng.integers(2, 4, 2))
    wpads = [int(rng.integers(0, kw[i % 2])) for i in range(4)]
    wstride = [int(v) for v in rng.integers(1, 3, 2)]
    if window == "depthwise":
        nodes.append(conv("win", last, co, co, rng, inits, k=kw, group=co, pads=wpads, strides=wstride))
        last = "win"
    elif window != "none":
        extra = {"count_include_pad": int(rng.integers(0, 2))} if window == "AveragePool" else {}
        nodes.append(helper.make_node(window, [last], ["win"], kernel_shape=list(kw), pads=wpads, strides=wstride,
                                      ceil_mode=int(rng.integers(0, 2)), **extra))
        last = "win"
    nodes.append(conv("y", last, co, int(rng.choice([8, 16, 40])), rng, inits, k=(1, 1)))
    return onnx_model(nodes, [("x", F, ["B", ci, *(("H", "W") if symbolic else (h, w))])], inits), (h, w)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(30))
def test_random_chains(seed: int) -> None:
    """Random chains; every third over a symbolic H, W, run at three sizes."""
    rng = np.random.default_rng(2000 + seed)
    model, (h, w) = _random_chain(rng, symbolic=seed % 3 == 0)
    target = TARGETS[seed % 2]
    sizes: tuple[tuple[int, int], ...] = ()
    if seed % 3 == 0:  # (never smaller than the chain's own size: valid)
        sizes = ((h, w), *((h + int(a), w + int(b)) for a, b in rng.integers(0, 25, (2, 2))))
    rules = check(model, target, rng, batches=(1, 2), sizes=sizes)
    assert "ConvNCHWc" in rules.values(), rules


@pytest.mark.parametrize("target", TARGETS)
def test_unblockable_channels_between_blocked_convs(target: str, rng: np.random.Generator) -> None:
    """conv 8->32 (blocked) -> conv 32->12 (12 channels: no block of 16 or 8 on AVX-512, so its
    input is converted to NCHW once; AVX2 blocks it by 4) -> conv 12->32 (blocked again, reading the plain tensor as blocks of one
    channel) -> max pool (blocked) -> output (converted back)."""
    inits: dict = {}
    nodes = [
        conv("a", "x", 8, 32, rng, inits, pads=[1, 1, 1, 1]),
        conv("b", "a", 32, 12, rng, inits, k=(1, 1)),
        conv("c", "b", 12, 32, rng, inits, pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    model = onnx_model(nodes, [("x", F, ["B", 8, 10, 10])], inits)
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    plan = blocked.plan(graph, _lanes(target))
    half = 12 % (_lanes(target) // 2) == 0  # AVX2: 12 channels are 3 blocks of 4
    assert sorted(plan.values) == (["a", "b", "c", "y"] if half else ["a", "c", "y"]), plan.values
    rules = check(model, target, rng, batches=(1, 2))
    assert list(rules.values()).count("ConvNCHWc") == (3 if half else 2), rules


def test_conversion_into_blocks_over_a_symbolic_width_keeps_the_row_a_loop(rng: np.random.Generator) -> None:
    """NCHW -> NCHW16c over symbolic H, W: each pixel's lanes are one vector store and the row
    is a loop of its own inside the parallel loop over (batch, rows, channel blocks). With the
    row's tiles fused into the parallel loop, every element paid divisions by the symbolic
    width: PP-OCRv4's detector (96 channels at 160 x 160) converted at 1.8 GB/s, 10.9 ms a
    call, now 1.06 ms. Answers at widths that leave every remainder of a vector."""
    import re

    inits: dict = {}
    nodes = [conv("c", "x", 32, 32, rng, inits, pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    model = onnx_model(nodes, [("x", F, ["B", 32, "H", "W"])], inits)
    rules = check(model, "cpu", rng, batches=(1, 2), sizes=((9, 21), (16, 16), (5, 3)))
    assert "Relayout" in rules.values(), rules
    _, built = _build(model, "cpu")
    lanes = _lanes("cpu")
    into = [f.script() for gv, f in built.module.functions_items() if gv.name_hint.startswith("to_nchwc")]
    assert into, built.rules
    for text in into:
        parallel = re.findall(r"in T\.parallel\(([^\n]*)\):", text)
        assert len(parallel) == 1 and "W" not in parallel[0], parallel
        assert re.search(rf"in T\.vectorized\((T\.int64\()?{lanes}\)?\):", text), text
