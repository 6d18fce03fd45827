"""Convolution schedule rules (targets/sched_conv.py): random conv/pool configurations, with
odd sizes, channel counts that are no multiple of the vector width, stride, padding, dilation,
groups and fused epilogues, built through ember's default pipeline and compared with ember's
interpreter; each case asserts the rule it exercises actually scheduled the kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import tvm
from codegen_helpers import check_graph, check_node_cases, onnx_node_cases, run_vm
from onnx import TensorProto, helper, numpy_helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target
from ember.targets.sched_common import MAX_STACK_BYTES

# fp32, reductions of up to ~600 terms of O(1) values (weights scaled by 1/sqrt(fan-in)):
# the schedules reorder the sums, so agreement is to a few ulps of the output scale.
RTOL, ATOL = 1e-4, 1e-4


@dataclass(frozen=True)
class Case:
    """One Conv or pooling node with what ember fuses after it."""

    op: str  # Conv, MaxPool, AveragePool
    c: int
    h: int
    w: int
    co: int = 0
    k: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    epilogue: str = ""  # "", relu, clip, residual (add an input, then relu), silu, gelu
    n: int = 1
    conv1d: bool = False
    symbolic: bool = False  # spatial dims H, W symbolic (a dynamic image size or sequence length)

    def out_spatial(self) -> list[int]:
        """Output rows and columns (columns only for conv1d)."""
        dims = [(size + self.pads[i] + self.pads[i + 2] - (self.k[i] - 1) * self.dilation[i] - 1) // self.stride[i] + 1
                for i, size in enumerate((self.h, self.w))]
        return dims[1:] if self.conv1d else dims

    def model(self, rng: np.random.Generator) -> onnx.ModelProto:
        """The case as an ONNX model."""
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        spatial: list = [self.w] if self.conv1d else [self.h, self.w]
        if self.symbolic:
            spatial = ["W"] if self.conv1d else ["H", "W"]
        ks = list(self.k[1:]) if self.conv1d else list(self.k)
        pads = [self.pads[1], self.pads[3]] if self.conv1d else list(self.pads)
        strides = list(self.stride[1:]) if self.conv1d else list(self.stride)
        dil = list(self.dilation[1:]) if self.conv1d else list(self.dilation)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [self.n, self.c, *spatial])]
        if self.op == "Conv":
            fan_in = self.c // self.group * int(np.prod(ks))
            w = (rng.standard_normal((self.co, self.c // self.group, *ks)) / np.sqrt(fan_in)).astype(np.float32)
            b = rng.standard_normal(self.co).astype(np.float32)
            inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
            nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=ks, strides=strides, pads=pads,
                                          dilations=dil, group=self.group))
        else:
            extra = {"count_include_pad": 1} if self.op == "AveragePool" and sum(pads) else {}
            nodes.append(helper.make_node(self.op, ["x"], ["c"], kernel_shape=ks, strides=strides, pads=pads, **extra))
        out = "c"
        if self.epilogue == "relu":
            nodes.append(helper.make_node("Relu", ["c"], ["y"]))
            out = "y"
        elif self.epilogue == "clip":
            inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
            out = "y"
        elif self.epilogue == "silu":
            nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
            out = "y"
        elif self.epilogue == "gelu":  # as torch exports it: c * 0.5 * (1 + erf(c / sqrt(2)))
            inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("r2", 1.4142135), ("one", 1.0), ("half", 0.5))]
            nodes += [helper.make_node("Div", ["c", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                      helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["c", "p"], ["m"]),
                      helper.make_node("Mul", ["m", "half"], ["y"])]
            out = "y"
        elif self.epilogue == "residual":
            inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
            nodes += [helper.make_node("Add", ["c", "r"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
            out = "y"
        graph = helper.make_graph(nodes, "case", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        if self.epilogue == "residual":  # the residual has the conv's output shape
            del model.graph.input[1]
            model.graph.input.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [self.n, self.co, *self.out_spatial()]))
        return onnx.shape_inference.infer_shapes(model)


def check(case: Case, rule: str, rng: np.random.Generator, target: str = "cpu") -> None:
    """Build the case with the default pipeline; `rule` scheduled its anchor kernel; on the
    host the outputs match the interpreter on fresh random inputs (a symbolic case at its own
    size and at two others, one narrower than a vector)."""
    model = case.model(rng)
    graph = import_proto(model)
    optimized = run_pipeline(graph, DEFAULT_PIPELINE).graph
    built = build(optimized, resolve_target(target), blocked=False)  # the NCHW rules (test_blocked.py: NCHWc)
    assert rule in built.rules.values(), f"{case}: {rule} did not apply; rules: {built.rules}"
    if target != "cpu":
        return
    sizes = [{"H": case.h, "W": case.w}, {"H": case.h + 3, "W": case.w + 21}, {"H": case.h, "W": 5}] if case.symbolic else [{}]
    for dims in sizes:
        feeds = interp.random_feeds(graph, rng, dims)
        want = interp.run(graph, feeds)
        got = run_vm(built, optimized, feeds)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=f"{case} {dims}: {name}")


# Hand-picked configurations (the default run): one per feature the rules handle.
CASES = [
    (Case("Conv", 16, 9, 13, 32, epilogue="relu"), "ConvBlocked"),  # width 13: predicated column block
    (Case("Conv", 7, 11, 10, 12, stride=(2, 2), epilogue="residual"), "ConvBlocked"),  # 12 channels: 4-lane vectors
    (Case("Conv", 24, 6, 6, 48, k=(1, 1), pads=(0, 0, 0, 0), epilogue="clip"), "ConvBlocked"),  # 1x1 (GEMM-like)
    # 1x1 over whole vectors of pixels: lowered as W @ X[n] (emit_nn._pointwise_as_matmul)
    (Case("Conv", 24, 8, 8, 40, k=(1, 1), pads=(0, 0, 0, 0), epilogue="residual", n=2), "Matmul"),
    (Case("Conv", 30, 16, 12, 6, k=(1, 1), pads=(0, 0, 0, 0), epilogue="clip"), "Matmul"),
    (Case("Conv", 16, 16, 12, 32, k=(1, 1), pads=(0, 0, 0, 0)), "ConvBlocked"),  # too few channels
    (Case("Conv", 5, 12, 12, 6, k=(3, 2), pads=(2, 1, 0, 2), dilation=(2, 3), stride=(1, 2), n=2), "ConvBlocked"),
    (Case("Conv", 32, 8, 9, 32, group=2, epilogue="silu"), "ConvBlocked"),  # grouped, 16 lanes per group
    # one output column: the register tile runs along the output rows (its tile fold once
    # used the unit width's axis and wrote one tile into every row)
    (Case("Conv", 8, 17, 5, 64, stride=(1, 2), pads=(1, 1, 1, 0), dilation=(1, 2), group=2, epilogue="clip"), "ConvBlocked"),
    (Case("Conv", 12, 10, 17, 12, group=12, epilogue="clip"), "Depthwise"),
    (Case("Conv", 8, 15, 15, 16, group=8, stride=(2, 2), k=(5, 5), pads=(2, 2, 2, 2)), "Depthwise"),  # multiplier 2
    (Case("Conv", 32, 9, 11, 32, group=32, stride=(2, 2), epilogue="clip"), "Depthwise"),  # channel-packed
    (Case("MaxPool", 6, 13, 14, k=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1)), "Pool"),
    (Case("AveragePool", 5, 9, 20, k=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0)), "Pool"),
    (Case("Conv", 6, 1, 37, 20, k=(1, 5), pads=(0, 2, 0, 2), conv1d=True, epilogue="relu"), "ConvBlocked"),
    # Symbolic image size / sequence length: the rules tile as if long, the last block predicated
    # (before, TVM's default code ran these at 0.3% of peak).
    (Case("Conv", 16, 9, 13, 32, epilogue="relu", symbolic=True), "ConvBlocked"),
    # Bands of a symbolic height whose output has H - 2 rows: the last band's write-back once
    # had no row predicate (the epilogue's inlining replaced it) and wrote past the output.
    (Case("Conv", 16, 12, 12, 32, k=(3, 2), pads=(2, 1, 0, 2), dilation=(2, 3), stride=(1, 2), epilogue="relu",
          symbolic=True), "ConvBlocked"),
    (Case("Conv", 24, 1, 40, 32, k=(1, 3), stride=(1, 2), pads=(0, 1, 0, 1), conv1d=True, epilogue="silu", symbolic=True),
     "ConvBlocked"),
    # A long conv1d (a speech encoder's): bands of columns over every channel panel, the ragged
    # last band split off, GELU computed on vectors of channels in the write-back.
    (Case("Conv", 32, 1, 301, 32, k=(1, 3), stride=(1, 2), pads=(0, 0, 0, 0), conv1d=True, epilogue="gelu"), "ConvBlocked"),
    (Case("Conv", 32, 1, 301, 32, k=(1, 3), stride=(1, 2), pads=(0, 0, 0, 0), conv1d=True, epilogue="gelu", symbolic=True),
     "ConvBlocked"),
    # Conv1d tap orders (see sched_conv._tap_order): a dilated window too wide for the free
    # registers, taps outside the channels; a window of 45 values over 280 channels (more than
    # L1), taps inside and rolled.
    (Case("Conv", 20, 1, 53, 32, k=(1, 5), dilation=(1, 2), pads=(0, 3, 0, 1), conv1d=True, epilogue="relu"), "ConvBlocked"),
    (Case("Conv", 280, 1, 300, 32, k=(1, 10), stride=(1, 5), pads=(0, 0, 0, 0), conv1d=True), "ConvBlocked"),
    (Case("Conv", 12, 10, 17, 12, group=12, epilogue="clip", symbolic=True), "Depthwise"),
    # (vectors of 16 channels over a dynamic image: the channel-packed depthwise schedule)
    (Case("Conv", 32, 9, 11, 32, group=32, stride=(2, 2), epilogue="clip", symbolic=True), "Depthwise"),
    (Case("Conv", 48, 7, 20, 48, group=48, epilogue="relu", symbolic=True), "Depthwise"),
    (Case("MaxPool", 6, 13, 14, k=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), symbolic=True), "Pool"),
    (Case("AveragePool", 5, 9, 20, k=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0), symbolic=True), "Pool"),
]


@pytest.mark.parametrize("case,rule", CASES, ids=[f"{c.op}-{i}" for i, (c, _) in enumerate(CASES)])
def test_rule_matches_interpreter(case: Case, rule: str, rng: np.random.Generator) -> None:
    check(case, rule, rng)


def test_symbolic_conv_tile_has_a_static_size(rng: np.random.Generator) -> None:
    """Over a dynamic image size the accumulator tile is one (columns x channels) tile of static
    size, which the lowering keeps on the stack; compacted from the output's layout it had a
    symbolic size (heap workspace, every accumulator stored after each FMA: 2.5x slower)."""
    case = Case("Conv", 16, 9, 13, 32, epilogue="relu", symbolic=True)
    built = build(run_pipeline(import_proto(case.model(rng)), DEFAULT_PIPELINE).graph, resolve_target("cpu"), blocked=False)
    assert "ConvBlocked" in built.rules.values(), built.rules
    (kernel,) = [f for gv, f in built.module.functions_items() if "conv" in gv.name_hint and isinstance(f, tvm.tirx.PrimFunc)]
    root = kernel.body.block
    tiles = [buf for buf in root.alloc_buffers if "conv" in buf.name]
    assert tiles and all(all(isinstance(d, tvm.tirx.IntImm) for d in buf.shape) for buf in tiles), [b.shape for b in tiles]
    assert all(int(np.prod([int(d) for d in buf.shape])) * 4 <= MAX_STACK_BYTES for buf in tiles)


def test_conv1d_tap_order() -> None:
    """Taps outside the channels only when the window would spill and the block's windows fit
    L1; taps unrolled only when the window fits the free registers (AVX-512, 2 x 8 tile: 14)."""
    from ember.targets.sched_conv import _tap_order

    assert _tap_order(17, 512, 14) == (True, False)  # wav2vec2's 3/2 conv over 512 channels
    assert _tap_order(45, 512, 14) == (False, False)  # 10/5: 92 KB of windows
    assert _tap_order(12, 256, 14) == (False, True)  # 5/1 fits the registers
    assert _tap_order(None, 64, 14) == (False, True)  # a 2-D conv keeps its order


def test_rules_build_for_arm() -> None:
    """The same rules schedule for NEON (4 lanes, 32 registers): build only (run under qemu elsewhere)."""
    rng = np.random.default_rng(1)
    check(Case("Conv", 8, 7, 9, 12, epilogue="relu"), "ConvBlocked", rng, target="arm:rpi4")
    check(Case("Conv", 8, 7, 9, 8, group=8), "Depthwise", rng, target="arm:rpi4")


def _random_case(rng: np.random.Generator) -> tuple[Case, str]:
    kind = rng.choice(["dense", "pointwise", "grouped", "depthwise", "pool"])
    h, w = (int(v) for v in rng.integers(3, 20, 2))
    k = tuple(int(v) for v in rng.integers(1, 4, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2)) if kind != "pool" else (1, 1)
    pads = tuple(int(rng.integers(0, k[i % 2])) for i in range(4))
    if h + pads[0] + pads[2] < (k[0] - 1) * dilation[0] + 1 or w + pads[1] + pads[3] < (k[1] - 1) * dilation[1] + 1:
        pads = (k[0], k[1], k[0], k[1])
        dilation = (1, 1)
    epilogue = str(rng.choice(["", "relu", "clip", "residual", "silu"]))
    n = int(rng.integers(1, 3))
    if kind == "pool":
        return Case(str(rng.choice(["MaxPool", "AveragePool"])), int(rng.integers(1, 20)), h, w, k=k, stride=stride,
                    pads=pads, n=n), "Pool"
    if kind == "depthwise":  # (a 1x1 depthwise conv has no reduction: it is an elementwise scale)
        c = int(rng.integers(1, 40))
        k = (3, k[1]) if k == (1, 1) else k
        return Case("Conv", c, h, w, c * int(rng.integers(1, 3)), k=k, stride=stride, pads=pads, dilation=dilation,
                    group=c, epilogue=epilogue, n=n), "Depthwise"
    if kind == "grouped":
        g = int(rng.choice([2, 4]))
        return Case("Conv", g * int(rng.integers(2, 6)), h, w, g * 16 * int(rng.integers(1, 3)), k=k, stride=stride,
                    pads=pads, dilation=dilation, group=g, epilogue=epilogue, n=n), "ConvBlocked"
    if kind == "pointwise":  # (whole vectors of pixels at unit stride: lowered as a matmul)
        c = int(rng.integers(1, 70))
        as_matmul = stride == (1, 1) and h * w >= 64 and h * w % 16 == 0 and c >= 24
        return Case("Conv", c, h, w, int(rng.choice([4, 8, 12, 16, 24, 32, 40, 64, 96])), k=(1, 1),
                    pads=(0, 0, 0, 0), stride=stride, epilogue=epilogue, n=n), "Matmul" if as_matmul else "ConvBlocked"
    return Case("Conv", int(rng.integers(1, 40)), h, w, int(rng.choice([2, 4, 6, 8, 12, 16, 20, 32, 48, 64])), k=k,
                stride=stride, pads=pads, dilation=dilation, epilogue=epilogue, n=n), "ConvBlocked"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_configurations(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    case, rule = _random_case(rng)
    check(case, rule, rng)


# Output channels no half vector divides: the weight padded to whole vectors of 16 channels at
# compile time, the output sliced (emit_nn._padded_channels). Scalar before: a 3x3 256 -> 27
# conv at 56 x 56 ran 16.2 ms, 4.1-4.3 ms padded. The slice and what follows it run after the
# tile (inlined into its write-back, TVM dropped the columns' bound and wrote past each row).
PADDED = [
    (Case("Conv", 32, 9, 13, 27, epilogue="relu"), 32),  # a DCN's offsets
    (Case("Conv", 16, 8, 11, 36, epilogue="residual", n=2), 48),  # a head's 9 anchors x 4 box values
    (Case("Conv", 12, 1, 40, 20, k=(1, 3), conv1d=True, epilogue="silu", symbolic=True), 32),
    (Case("Conv", 16, 9, 13, 27, epilogue="gelu", symbolic=True), 32),
]


@pytest.mark.parametrize("case,padded", PADDED, ids=[f"co{c.co}-{i}" for i, (c, _) in enumerate(PADDED)])
def test_odd_output_channels_are_padded_to_whole_vectors(case: Case, padded: int, rng: np.random.Generator) -> None:
    """The conv runs in ConvBlocked over the padded channels (its packed weight holds them) and
    its outputs, the epilogue after the slice, match the interpreter."""
    check(case, "ConvBlocked", rng)
    optimized = run_pipeline(import_proto(case.model(rng)), DEFAULT_PIPELINE).graph
    text = build(optimized, resolve_target("cpu"), blocked=False).module.script()
    packed = (f"T.Buffer(({padded // 16}, {case.c}, ", f"T.Buffer((T.int64({padded // 16}), T.int64({case.c})")
    assert any(p in text for p in packed), text[:3000]


def test_channels_a_half_vector_divides_are_not_padded(rng: np.random.Generator) -> None:
    """24 channels (half vectors) and 12 (under a vector) keep their count."""
    for co in (24, 12):
        case = Case("Conv", 16, 6, 7, co, epilogue="relu")
        optimized = run_pipeline(import_proto(case.model(rng)), DEFAULT_PIPELINE).graph
        text = build(optimized, resolve_target("cpu"), blocked=False).module.script()
        assert "strided_slice" not in text, text[:3000]


@pytest.mark.parametrize("shape", [[1, 24, 20, 16], ["N", 24, "H", "W"]])
@pytest.mark.parametrize("kernel", [2, 4, (1, 3)])
def test_a_transposed_conv_whose_kernel_is_its_stride_runs_as_a_1x1_conv(rng: np.random.Generator, shape: list, kernel: object) -> None:
    """ConvTranspose with kernel == stride (a DBNet/FPN/U-Net upsampling) is a 1x1 conv to
    CO*k*k channels and a DepthToSpace (emit_nn._conv_transpose_unshuffled), with its bias and
    the ReLU after it, against onnxruntime on fresh inputs, static and over symbolic N, H, W
    (TOPI's zero-dilated form took 177 ms a call on PP-OCRv4's detector head, 19 ms so)."""
    import onnxruntime as ort

    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    w = (rng.standard_normal((24, 8, kh, kw)) * 0.2).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out = [shape[0], 8, shape[2] * kh if isinstance(shape[2], int) else "H2", shape[3] * kw if isinstance(shape[3], int) else "W2"]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[kh, kw], strides=[kh, kw]),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, out)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    sizes = [{}] if isinstance(shape[0], int) else [{"N": 1, "H": 20, "W": 16}, {"N": 2, "H": 7, "W": 13}]
    built = check_graph(ir, rng, sizes, atol=1e-4)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for dims in sizes:
        x = rng.standard_normal([dims.get(d, d) if isinstance(d, str) else d for d in shape]).astype(np.float32)
        got = run_vm(built, ir, {"x": x})["z"]
        want = session.run(None, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    text = "\n".join(f.script() for _, f in built.module.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "data_dilate" not in text  # (TOPI's zero-dilated input)


@pytest.mark.parametrize("mode", ["DCR", "CRD", "SpaceToDepth"])
def test_depth_to_space_over_a_symbolic_image_size(rng: np.random.Generator, mode: str) -> None:
    """DepthToSpace (both channel orders) and SpaceToDepth are each one gather with divisions by
    the constant block (emit_shape.depth_to_space), against onnxruntime over symbolic N, H, W."""
    import onnxruntime as ort

    if mode == "SpaceToDepth":  # (its CRD mode, opset 24's, is the onnx node test spacetodepth_crd_mode_example)
        nodes = [helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=3)]
        io = (["N", 18, "H", "W"], ["N", 162, "H3", "W3"])
    else:
        nodes = [helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=3, mode=mode)]
        io = (["N", 18, "H", "W"], ["N", 2, "H3", "W3"])
    graph = helper.make_graph(nodes, "d2s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, io[0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, io[1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(ir, resolve_target("cpu"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 18, 4, 5), (2, 18, 7, 3)):
        if mode == "SpaceToDepth":
            shape = (shape[0], shape[1], shape[2] * 3, shape[3] * 3)
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(run_vm(built, ir, {"x": x})["y"], session.run(None, {"x": x})[0])


def test_depth_and_space_node_cases_through_code_generation() -> None:
    """ONNX's own DepthToSpace and SpaceToDepth cases, both modes, compiled. SpaceToDepth's CRD
    mode (opset 24) came out in DCR order before: the reshape form ignored the mode."""
    cases = onnx_node_cases("test_depthtospace", "test_spacetodepth")
    assert any("crd" in c.name for c in cases if "spacetodepth" in c.name), [c.name for c in cases]
    check_node_cases(cases)
