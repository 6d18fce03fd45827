"""Every op with an emitter, compiled for the CPU and run on TVM's VM, against ember's
interpreter on fresh random inputs. Ops are batched into a few modules (one compile each);
most modules have a symbolic batch dim N and run at N = 1, 3, 8."""

from __future__ import annotations

import re

import numpy as np
import pytest
from codegen_helpers import check_model, compare, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.targets import build, resolve_target
from ember.targets.lower import LoweringError

BATCHES = ({"N": 1}, {"N": 3}, {"N": 8})
F, I32, I64, U8, B = T.FLOAT, T.INT32, T.INT64, T.UINT8, T.BOOL


def node(op: str, inputs: list[str], out: str, **attrs: object) -> object:
    """One ONNX node with a single output."""
    return helper.make_node(op, inputs, [out], **attrs)


def _positive(*names: str, low: float = 0.5):
    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        for name in names:
            feeds[name] = (np.abs(feeds[name]) + low).astype(feeds[name].dtype)

    return fix


def test_float_elementwise_ops(rng: np.random.Generator) -> None:
    s = ["N", 3, 5]
    unary = ["Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Abs", "Neg", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
             "Atan", "Sinh", "Cosh", "Asinh", "Softplus", "Softsign", "Mish", "HardSwish", "Identity"]
    nodes = [node(op, ["x"], f"{op.lower()}") for op in unary]
    nodes += [node(op, ["u"], f"{op.lower()}") for op in ("Tan", "Asin", "Acos", "Atanh")]
    nodes += [node(op, ["p"], f"{op.lower()}") for op in ("Sqrt", "Log", "Reciprocal")]
    nodes += [node("Acosh", ["p1"], "acosh"), node("Add", ["p", "one"], "p1")]
    nodes += [node(op, ["x", "y"], op.lower()) for op in ("Add", "Sub", "Mul", "Div", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")]
    nodes += [
        node("Max", ["x", "y", "p"], "max"), node("Min", ["x", "y"], "min"), node("Sum", ["x", "y", "p"], "sum"),
        node("Mean", ["x", "y"], "mean"), node("Pow", ["p", "y"], "pow"), node("Pow", ["x", "two"], "square"),
        node("Mod", ["x", "p"], "fmod", fmod=1), node("Equal", ["rx", "ry"], "equal"),
        node("Round", ["x"], "rx"), node("Round", ["y"], "ry"),
        node("LeakyRelu", ["x"], "leaky", alpha=0.1), node("Elu", ["x"], "elu", alpha=0.7), node("Celu", ["x"], "celu", alpha=1.3),
        node("Selu", ["x"], "selu"), node("HardSigmoid", ["x"], "hsig", alpha=0.3, beta=0.4),
        node("Gelu", ["x"], "gelu"), node("Gelu", ["x"], "gelu_tanh", approximate="tanh"),
        node("ThresholdedRelu", ["x"], "trelu", alpha=0.2), node("Shrink", ["x"], "shrink", lambd=0.4, bias=0.1),
        node("PRelu", ["x", "slope"], "prelu"), node("Clip", ["x", "lo", "hi"], "clip"), node("Clip", ["x", "", "hi"], "clip_hi"),
        node("Where", ["gt", "x", "y"], "where"), node("Greater", ["x", "y"], "gt"),
        node("Not", ["gt2"], "not"), node("Greater", ["y", "x"], "gt2"), node("And", ["gt3", "gt4"], "and"),
        node("Or", ["gt3", "gt4"], "or"), node("Xor", ["gt3", "gt4"], "xor"),
        node("Greater", ["x", "lo"], "gt3"), node("Less", ["y", "hi"], "gt4"),
        node("IsInf", ["z"], "isinf"), node("IsInf", ["z"], "isposinf", detect_negative=0), node("IsNaN", ["z"], "isnan"),
        node("Cast", ["x"], "to_i32", to=I32), node("Cast", ["x"], "to_bool", to=B), node("CastLike", ["x", "like"], "castlike"),
        node("Dropout", ["x"], "dropout"),
    ]
    inits = {"one": np.float32(1.0), "two": np.float32(2.0), "lo": np.float32(-0.5),
             "hi": np.float32(0.6), "slope": np.linspace(-0.5, 0.5, 5).astype(np.float32), "like": np.zeros(1, np.float64)}
    model = onnx_model(nodes, [(n, F, s) for n in ("x", "y", "p", "u", "z")], inits)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        _positive("p")(feeds, rng)
        feeds["u"] = rng.uniform(-0.9, 0.9, feeds["u"].shape).astype(np.float32)
        feeds["x"][..., 0] = 0.0  # Sign and Cast to bool see an exact zero
        feeds["z"][..., :3] = [np.inf, -np.inf, np.nan]

    check_model(model, rng, BATCHES, fix)


def test_integer_elementwise_ops(rng: np.random.Generator) -> None:
    s = ["N", 4]
    nodes = [
        node("Div", ["i", "j"], "div"), node("Mod", ["i", "j"], "mod"), node("Mod", ["i", "j"], "fmod", fmod=1),
        node("Add", ["i", "j"], "add"), node("Mul", ["i", "j"], "mul"), node("Max", ["i", "j"], "max"),
        node("Abs", ["j"], "abs"), node("Neg", ["i"], "neg"), node("Sign", ["j"], "sign"), node("Pow", ["i", "two"], "pow"),
        node("BitwiseAnd", ["a", "b"], "band"), node("BitwiseOr", ["a", "b"], "bor"), node("BitwiseXor", ["a", "b"], "bxor"),
        node("BitwiseNot", ["a"], "bnot"), node("BitShift", ["a", "sh"], "shl", direction="LEFT"),
        node("BitShift", ["a", "sh"], "shr", direction="RIGHT"), node("Cast", ["i"], "as_float", to=F),
        node("Equal", ["i", "j"], "eq"),
    ]
    inits = {"two": np.int32(2), "sh": np.array([0, 1, 2, 3], np.uint8)}
    model = onnx_model(nodes, [("i", I32, s), ("j", I32, s), ("a", U8, s), ("b", U8, s)], inits)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["i"] = rng.integers(-20, 20, feeds["i"].shape).astype(np.int32)
        j = rng.integers(1, 7, feeds["j"].shape) * rng.choice([-1, 1], feeds["j"].shape)
        feeds["j"] = j.astype(np.int32)  # non-zero divisors of both signs
        feeds["a"] = rng.integers(0, 256, feeds["a"].shape).astype(np.uint8)
        feeds["b"] = rng.integers(0, 256, feeds["b"].shape).astype(np.uint8)

    check_model(model, rng, BATCHES, fix)


def test_op_without_emitter_is_named() -> None:
    model = onnx_model([helper.make_node("Col2Im", ["x", "img", "blk"], ["u"])], [("x", F, [1, 4, 4])],
                       {"img": np.array([3, 3], np.int64), "blk": np.array([2, 2], np.int64)})
    with pytest.raises(LoweringError, match=r"operators without a code generator:\n  Col2Im: 1 node\(s\): u"):
        build(import_proto(model), resolve_target("cpu"))


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_shape_and_data_movement_ops(rng: np.random.Generator) -> None:
    nodes = [
        # run-time shape arithmetic under a symbolic batch, as exporters write it
        node("Shape", ["x"], "shape"), node("Gather", ["shape", "zero"], "n"), node("Unsqueeze", ["n", "zero1"], "n1"),
        node("Concat", ["n1", "c24"], "target", axis=0), node("Reshape", ["x", "target"], "reshaped"),
        node("ConstantOfShape", ["shape"], "filled", value=helper.make_tensor("v", F, [1], [1.5])),
        node("Range", ["zero", "n", "one"], "range"), node("Size", ["x"], "size"), node("Shape", ["x"], "tail", start=1),
        node("Cast", ["range"], "range_f", to=F),
        # reshapes and transposes
        node("Flatten", ["x"], "flat", axis=2), node("Unsqueeze", ["x", "zero1"], "unsq"), node("Squeeze", ["x1", "one1"], "sq"),
        node("Transpose", ["x"], "tr", perm=[2, 0, 1]), node("Expand", ["x1", "shape"], "expanded"),
        # concat, split, slice, tile, pad
        node("Concat", ["x", "x"], "cat", axis=-1), node("Slice", ["x", "s0", "s1", "s2", "s3"], "sliced"),
        node("Slice", ["x", "r0", "r1", "r2", "r3"], "reversed"), node("Tile", ["x", "reps"], "tiled"),
        node("Pad", ["x", "pads", "pv"], "padded"), node("Pad", ["x", "pads2"], "reflected", mode="reflect"),
        node("Pad", ["x", "pads2"], "edged", mode="edge"),
        # gathers and scatters
        node("Gather", ["x", "idx"], "gathered", axis=2), node("Gather", ["x", "neg"], "picked", axis=1),
        node("GatherElements", ["w", "eidx"], "gathered_el", axis=1), node("GatherND", ["w", "ndidx"], "gathered_nd"),
        node("ScatterElements", ["w", "sidx", "supd"], "scattered", axis=1),
        node("ScatterElements", ["w", "sidx", "supd"], "scattered_add", axis=1, reduction="add"),
        node("ScatterND", ["w", "ndidx", "ndupd"], "scattered_nd"),
        # generators and scans
        node("EyeLike", ["w"], "eye", k=1), node("Trilu", ["w"], "upper"), node("Trilu", ["w", "one"], "lower", upper=0),
        node("OneHot", ["hot", "depth", "onoff"], "onehot"), node("CumSum", ["x", "two"], "cumsum"),
        node("CumSum", ["x", "two"], "cumsum_rev", exclusive=1, reverse=1),
        node("DepthToSpace", ["d"], "d2s", blocksize=2), node("DepthToSpace", ["d"], "d2s_crd", blocksize=2, mode="CRD"),
        node("SpaceToDepth", ["d"], "s2d", blocksize=2),
    ]
    nodes.append(helper.make_node("Split", ["x", "parts"], ["part0", "part1"], axis=1))
    nodes.append(helper.make_node("TopK", ["x", "k"], ["topv", "topi"], axis=-1))
    inits = {
        "zero": np.int64(0), "one": np.int64(1), "two": np.int64(2), "zero1": _i64(0), "one1": _i64(1), "c24": _i64(24),
        "s0": _i64(1, 0), "s1": _i64(4, 100), "s2": _i64(2, 1), "s3": _i64(2, 2),
        "r0": _i64(-1), "r1": _i64(0), "r2": _i64(2), "r3": _i64(-2),
        "reps": _i64(1, 2, 1), "pads": _i64(0, 1, 2, 0, 0, 1), "pv": np.float32(-2.0), "pads2": _i64(0, 0, 2, 0, 0, 1),
        "idx": _i64(0, -1, 3), "neg": np.int64(-1), "eidx": rng.integers(-4, 4, (3, 2)), "ndidx": _i64(1, 0, 2, 3).reshape(2, 2),
        "sidx": _i64(3, 0, 1, 2).reshape(2, 2), "supd": np.ones((2, 2), np.float32), "ndupd": np.float32([5, 6]),
        "hot": _i64(0, 2, -1, 3), "depth": np.int64(4), "onoff": np.float32([-1, 2]), "parts": _i64(1, 3), "k": _i64(3),
    }
    model = onnx_model(nodes, [("x", F, ["N", 4, 6]), ("x1", F, ["N", 1, 6]), ("w", F, [3, 4]), ("d", F, ["N", 8, 2, 4])], inits)
    check_model(model, rng, BATCHES)


def test_reduction_softmax_and_normalization_ops(rng: np.random.Generator) -> None:
    reducers = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceSumSquare", "ReduceLogSumExp"]
    nodes = [node(op, ["x", "last"], op.lower()) for op in reducers]
    nodes += [node(op, ["x", "mid"], f"{op.lower()}_flat", keepdims=0) for op in reducers[:3]]
    nodes += [
        node("ReduceSum", ["x"], "sum_all", keepdims=0), node("ReduceLogSum", ["p", "last"], "logsum"),
        node("ReduceMean", ["x", "empty"], "noop", noop_with_empty_axes=1),
        node("ArgMax", ["x"], "argmax", axis=2), node("ArgMin", ["x"], "argmin", axis=1, keepdims=0),
        node("ArgMax", ["t"], "argmax_last", axis=1, select_last_index=1),
        node("Softmax", ["x"], "softmax"), node("Softmax", ["x"], "softmax1", axis=1), node("LogSoftmax", ["x"], "logsoftmax"),
        node("Hardmax", ["x"], "hardmax"),
        node("LayerNormalization", ["x", "g6", "b6"], "layernorm", epsilon=1e-3),
        node("LayerNormalization", ["x", "g24"], "layernorm2", axis=1),
        node("RMSNormalization", ["x", "g6"], "rmsnorm"),
        node("BatchNormalization", ["img", "g4", "b4", "m4", "v4"], "batchnorm"),
        node("InstanceNormalization", ["img", "g4", "b4"], "instancenorm"),
        node("GroupNormalization", ["img", "g4", "b4"], "groupnorm", num_groups=2),
        node("MeanVarianceNormalization", ["img"], "mvn"), node("LpNormalization", ["x"], "l2norm"),
        node("LpNormalization", ["x"], "l1norm", p=1, axis=1), node("LRN", ["img"], "lrn", size=3, alpha=0.01),
        node("CumProd", ["x", "one"], "cumprod"), node("Swish", ["x"], "swish", alpha=0.7),
    ]
    inits = {
        "last": _i64(-1), "mid": _i64(1), "empty": np.zeros(0, np.int64), "one": np.int64(1),
        "g6": rng.standard_normal(6).astype(np.float32), "b6": rng.standard_normal(6).astype(np.float32),
        "g24": rng.standard_normal((4, 6)).astype(np.float32), "g4": rng.standard_normal(4).astype(np.float32),
        "b4": rng.standard_normal(4).astype(np.float32), "m4": rng.standard_normal(4).astype(np.float32),
        "v4": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    inputs = [("x", F, ["N", 4, 6]), ("p", F, ["N", 4, 6]), ("t", I32, ["N", 5]), ("img", F, ["N", 4, 3, 5])]

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        _positive("p")(feeds, rng)
        feeds["t"] = rng.integers(0, 3, feeds["t"].shape).astype(np.int32)  # ties for select_last_index

    check_model(onnx_model(nodes, inputs, inits, opset=26), rng, BATCHES, fix, atol=1e-4)


def test_conv_pool_matmul_attention_resize_quant_ops(rng: np.random.Generator) -> None:
    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    nodes = [
        node("Conv", ["img", "w1", "b1"], "conv", pads=[1, 1, 1, 1]),
        node("Conv", ["img", "w2"], "conv_strided", strides=[2, 2], dilations=[1, 2], pads=[0, 1, 1, 2]),
        node("Conv", ["img", "w3"], "conv_grouped", group=3, auto_pad="SAME_UPPER", strides=[2, 2]),
        node("Conv", ["seq", "w1d"], "conv1d", pads=[1, 1]),
        node("ConvTranspose", ["img", "wt", "b1"], "deconv", strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        node("MaxPool", ["img"], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("MaxPool", ["img"], "maxpool_ceil", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        node("AveragePool", ["img"], "avgpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("AveragePool", ["img"], "avgpool_pad", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        node("LpPool", ["img"], "lppool", kernel_shape=[2, 2], strides=[2, 2]),
        node("GlobalAveragePool", ["img"], "gap"), node("GlobalMaxPool", ["img"], "gmp"), node("GlobalLpPool", ["img"], "glp"),
        node("Gemm", ["flat", "wg", "bg"], "gemm", transB=1, alpha=0.5, beta=2.0), node("Flatten", ["img"], "flat"),
        node("Gemm", ["wa", "wb"], "gemm_ta", transA=1),
        node("MatMul", ["img", "wm"], "matmul"), node("MatMul", ["vec", "wm"], "matvec"),
        node("Einsum", ["img", "wm"], "einsum", equation="nchw,wk->nchk"),
        node("Resize", ["img", "", "scales"], "up_nearest", mode="nearest"),
        node("Resize", ["img", "", "scales"], "up_linear", mode="linear"),
        node("Resize", ["img", "", "", "sizes"], "down_linear", mode="linear", coordinate_transformation_mode="align_corners"),
        node("Attention", ["q", "k", "v", "mask"], "attention"), node("Attention", ["q", "k2", "v2"], "attention_gqa"),
        node("Attention", ["q", "k", "v", "bias"], "attention_causal", is_causal=1),
        node("Attention", ["q3", "k3", "v3", "mask"], "attention_3d", q_num_heads=2, kv_num_heads=1, scale=0.3),
        node("QuantizeLinear", ["img", "qs", "qz"], "quant"), node("DequantizeLinear", ["quant", "qs", "qz"], "dequant"),
        node("QuantizeLinear", ["vec", "qs8"], "quant8"),
        node("MatMulInteger", ["qa", "qb", "qa0", "qb0"], "mmint"),
    ]
    inits = {
        "w1": w(4, 3, 3, 3), "b1": w(4), "w2": w(2, 3, 3, 2), "w3": w(6, 1, 3, 3), "w1d": w(2, 5, 3), "wt": w(3, 4, 3, 3),
        "wg": w(7, 3 * 6 * 8), "bg": w(7), "wa": w(5, 4), "wb": w(5, 2), "wm": w(8, 5), "scales": np.float32([1, 1, 2, 2]),
        "sizes": _i64(1, 3, 4, 5), "mask": np.concatenate([rng.random((3, 6)) < 0.8, np.zeros((1, 6), bool)]),  # a fully masked row
        "bias": w(4, 6), "qs": np.float32(0.05), "qz": np.uint8(128),
        "qs8": np.float32(0.02), "qa0": np.uint8(3), "qb0": np.int8(-2),
    }
    inputs = [("img", F, [1, 3, 6, 8]), ("seq", F, ["N", 5, 7]), ("vec", F, ["N", 8]), ("q", F, ["N", 2, 4, 8]),
              ("k", F, ["N", 2, 6, 8]), ("v", F, ["N", 2, 6, 3]), ("k2", F, ["N", 1, 6, 8]), ("v2", F, ["N", 1, 6, 3]),
              ("q3", F, ["N", 4, 8]), ("k3", F, ["N", 6, 4]), ("v3", F, ["N", 6, 3]),
              ("qa", U8, [3, 4]), ("qb", T.INT8, [4, 2])]
    check_model(onnx_model(nodes, inputs, inits, opset=26), rng, BATCHES, atol=1e-4)


def test_each_fused_group_is_one_kernel(rng: np.random.Generator) -> None:
    from codegen_helpers import check_graph, wrap_fused

    from ember.targets import kernel_count

    nodes = [
        node("MatMul", ["x", "w1"], "mm"), node("Add", ["mm", "b1"], "mm_b"), node("Relu", ["mm_b"], "h"),  # group 0
        node("Mul", ["h", "c"], "hc"), node("Tanh", ["hc"], "ht"), node("HardSwish", ["ht"], "hs"),  # group 1
        node("Gemm", ["x", "w2"], "g", transB=1), node("Sigmoid", ["g"], "gs"), node("Mul", ["gs", "hs"], "gated"),  # group 2
        node("Softmax", ["gated"], "probs"), node("Transpose", ["probs"], "out"),  # standalone kernels
    ]
    inits = {"w1": rng.standard_normal((16, 8)).astype(np.float32), "b1": rng.standard_normal(8).astype(np.float32),
             "c": np.float32(0.5), "w2": rng.standard_normal((8, 16)).astype(np.float32)}
    graph = import_proto(onnx_model(nodes, [("x", F, ["N", 16])], inits))
    fused = wrap_fused(graph, [["mm", "mm_b", "h"], ["hc", "ht", "hs"], ["g", "gs", "gated"]])
    assert [n.op for n in fused.nodes] == ["Fused", "Fused", "Fused", "Softmax", "Transpose"]
    built = check_graph(fused, rng, BATCHES)
    # (a group that ends by adding a tensor nothing reads afterwards writes over it: `_inplace`)
    primfuncs = [re.sub(r"_inplace\d*$", "", name) for name in built.kernels if name.startswith("fused_group")]
    # The two matmul groups read weights the matmul rule packed at compile time.
    assert sorted(primfuncs) == ["fused_group0_prepacked", "fused_group1", "fused_group2_prepacked"], built.kernels
    assert built.rules["fused_group0"] == built.rules["fused_group2"] == "Matmul", built.rules
    assert kernel_count(built) == 3 + 2 == built.launches, built.kernels


def test_exporter_style_attention_block_with_symbolic_batch_and_sequence(rng: np.random.Generator) -> None:
    """Run-time shape arithmetic as torch's exporters write it (Shape -> Gather -> Unsqueeze ->
    Concat -> Reshape for the heads, Range(0, S) for positions), at several (N, S)."""
    d, heads = 8, 2

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    def split_heads(name: str) -> list:
        return [node("Reshape", [name, "heads_shape"], f"{name}_h"),
                node("Transpose", [f"{name}_h"], f"{name}_t", perm=[0, 2, 1, 3])]

    nodes = [
        node("Shape", ["ids"], "shape"), node("Gather", ["shape", "zero"], "n"), node("Gather", ["shape", "one"], "s"),
        node("Unsqueeze", ["n", "axis0"], "n1"), node("Unsqueeze", ["s", "axis0"], "s1"),
        node("Range", ["zero", "s", "one"], "positions"),
        node("Gather", ["tokens", "ids"], "tok"), node("Gather", ["places", "positions"], "pos"), node("Add", ["tok", "pos"], "x"),
        node("MatMul", ["x", "wqkv"], "qkv"), helper.make_node("Split", ["qkv", "thirds"], ["q", "k", "v"], axis=2),
        node("Concat", ["n1", "s1", "head_dims"], "heads_shape", axis=0),
        *split_heads("q"), *split_heads("k"), *split_heads("v"),
        node("Transpose", ["k_t"], "kT", perm=[0, 1, 3, 2]), node("MatMul", ["q_t", "kT"], "scores"),
        node("Div", ["scores", "scale"], "scaled"),
        node("Equal", ["mask", "zero"], "padding"), node("Unsqueeze", ["padding", "axes12"], "padding4"),
        node("Where", ["padding4", "neg_inf", "scaled"], "masked"), node("Softmax", ["masked"], "probs"),
        node("MatMul", ["probs", "v_t"], "ctx"), node("Transpose", ["ctx"], "ctx_t", perm=[0, 2, 1, 3]),
        node("Concat", ["n1", "s1", "minus1"], "merge_shape", axis=0), node("Reshape", ["ctx_t", "merge_shape"], "merged"),
        node("Add", ["x", "merged"], "res"), node("LayerNormalization", ["res", "gamma", "beta"], "y"),
        node("ReduceMean", ["y", "axis1"], "pooled", keepdims=0),
        node("ConstantOfShape", ["shape"], "ones", value=helper.make_tensor("v", F, [1], [1.0])),
        node("ReduceSum", ["ones", "axis1"], "lengths", keepdims=0),
    ]
    inits = {
        "zero": np.int64(0), "one": np.int64(1), "axis0": _i64(0), "axis1": _i64(1), "axes12": _i64(1, 2),
        "tokens": w(20, d), "places": w(16, d), "wqkv": w(d, 3 * d), "thirds": _i64(d, d, d),
        "head_dims": _i64(heads, d // heads), "minus1": _i64(-1), "scale": np.float32(np.sqrt(d // heads)),
        "neg_inf": np.float32(-np.inf), "gamma": w(d), "beta": w(d),
    }
    graph = import_proto(onnx_model(nodes, [("ids", I64, ["N", "S"]), ("mask", I64, ["N", "S"])], inits))
    assert str(graph.value("y").type) == "f32[N,S,8]"

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["ids"] = rng.integers(0, 20, feeds["ids"].shape)
        feeds["mask"] = (rng.random(feeds["mask"].shape) < 0.7).astype(np.int64)
        feeds["mask"][:, 0] = 1  # every row attends to something

    from codegen_helpers import check_graph

    check_graph(graph, rng, ({"N": 1, "S": 5}, {"N": 3, "S": 7}, {"N": 8, "S": 2}), fix)


def test_quantized_ops(rng: np.random.Generator) -> None:
    def q(dtype: type, *shape: int) -> np.ndarray:
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, shape).astype(dtype)

    nodes = [
        node("QuantizeLinear", ["x", "xs", "xz"], "xq"), node("DequantizeLinear", ["xq", "xs", "xz"], "xd"),
        node("QuantizeLinear", ["x", "cs", "cz"], "xq_axis", axis=1),
        node("DequantizeLinear", ["wq", "ws"], "wd", axis=0),
        node("ConvInteger", ["xq", "wq", "xz", "wz"], "convint", pads=[1, 1, 1, 1]),
        node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz", "bias"], "qconv", pads=[1, 1, 1, 1]),
        node("QLinearMatMul", ["aq", "as", "az", "bq", "bs", "bz", "ms", "mz"], "qmm"),
        node("MatMulInteger", ["aq", "bq", "az", "bz"], "mmint"),
    ]
    inits = {
        "xs": np.float32(0.03), "xz": np.uint8(120), "cs": np.float32([0.02, 0.05, 0.04]), "cz": np.uint8([100, 128, 140]),
        "wq": q(np.int8, 4, 3, 3, 3), "ws": np.float32([0.01, 0.02, 0.015, 0.03]), "wz": np.zeros(4, np.int8),
        "ys": np.float32(0.2), "yz": np.uint8(128), "bias": rng.integers(-500, 500, 4).astype(np.int32),
        "as": np.float32(0.04), "az": np.uint8(7), "bq": q(np.int8, 6, 5), "bs": np.float32(0.03), "bz": np.int8(-3),
        "ms": np.float32(0.5), "mz": np.int8(2),
    }
    model = onnx_model(nodes, [("x", F, ["N", 3, 5, 5]), ("aq", U8, ["N", 6])], inits, opset=21)
    # The requantized outputs (an f32 product rounded to an integer, the interpreter's in f64)
    # may differ by one where the product lands within f32 rounding of a tie, as onnxruntime's
    # own tests allow; every other output is exact.
    graph = import_proto(model)
    built = build(graph, resolve_target("cpu"))
    requantized = ("qconv", "qmm")
    for dims in BATCHES:
        feeds = interp.random_feeds(graph, rng, dims)
        got, want = run_vm(built, graph, feeds), interp.run(graph, feeds)
        compare({k: v for k, v in got.items() if k not in requantized}, {k: v for k, v in want.items() if k not in requantized},
                f"dims {dims}")
        for name in requantized:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            diff = np.abs(got[name].astype(np.int64) - want[name].astype(np.int64))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.02, f"dims {dims}: {name}: {int(diff.max())}, {(diff > 0).sum()} off"


def test_dynamic_quantization_matches_onnxruntime(rng: np.random.Generator) -> None:
    """A dynamically quantized linear layer as onnxruntime's quantizer writes it (text models):
    DynamicQuantizeLinear -> MatMulInteger -> Cast -> scale product; every output, including
    the scalar scale and zero point, on positive-only, mixed and all-zero inputs."""
    from codegen_helpers import run_vm
    from conftest import run_onnxruntime

    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             node("MatMulInteger", ["xq", "w", "xz", "wz"], "acc"), node("Cast", ["acc"], "accf", to=F),
             node("Mul", ["xs", "ws"], "s"), node("Mul", ["accf", "s"], "y")]
    inits = {"w": rng.integers(-128, 128, (16, 8)).astype(np.int8), "wz": np.int8(0), "ws": np.float32(0.02)}
    model = onnx_model(nodes, [("x", F, ["N", 16])], inits, opset=21)
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("y", F, ["N", 8]), helper.make_tensor_value_info("xq", U8, ["N", 16]),
                               helper.make_tensor_value_info("xs", F, []), helper.make_tensor_value_info("xz", U8, [])])
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"))
    for x in (rng.standard_normal((3, 16)) * 4, np.abs(rng.standard_normal((1, 16))) + 0.5, np.zeros((2, 16))):
        feeds = {"x": x.astype(np.float32)}
        got, want = run_vm(built, graph, feeds), run_onnxruntime(model, feeds)
        for name in ("xq", "xz"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        np.testing.assert_allclose(got["xs"], want["xs"], rtol=1e-6, err_msg="xs")
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5, err_msg="y")
