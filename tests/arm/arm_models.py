"""The models the ARM tests build: the shipped digits CNN and `mobile_attn`, a small
MobileNetV2-style network with an attention block and a TopK head, generated here (seeded),
small enough to run under emulation in seconds.

mobile_attn (1x3x32x32 -> logits 1x10, top3 values/indices):
  Conv 3->16 s2 + BN + ReLU6; inverted residual (1x1 16->48, depthwise 3x3, 1x1 48->16, Add);
  Conv 16->32 s2 + BN + ReLU6; 64 tokens of 32: LayerNorm, single-head self-attention
  (MatMul, Softmax), residual Add; mean over tokens; Gemm 32->10; Softmax; TopK(3) — TopK runs
  through libtvm_runtime_extra.so (tvm.contrib.sort), so the bundle's extra library is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"


def mobile_attn(seed: int = 0) -> onnx.ModelProto:
    """The generated model (opset 17), weights from `seed`."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []

    def w(name: str, *shape: int, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        inits[name] = (rng.standard_normal(shape) * (scale or (2.0 / fan_in) ** 0.5)).astype(np.float32)
        return name

    def conv_bn(x: str, name: str, cin: int, cout: int, k: int, stride: int, group: int = 1, act: bool = True) -> str:
        nodes.append(helper.make_node("Conv", [x, w(f"{name}.w", cout, cin // group, k, k)], [f"{name}.c"],
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group))
        inits[f"{name}.g"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        inits[f"{name}.b"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits[f"{name}.m"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits[f"{name}.v"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.c", f"{name}.g", f"{name}.b", f"{name}.m", f"{name}.v"],
                                      [f"{name}.bn"], epsilon=1e-5))
        if not act:
            return f"{name}.bn"
        nodes.append(helper.make_node("Clip", [f"{name}.bn", "zero", "six"], [f"{name}.out"]))
        return f"{name}.out"

    inits["zero"] = np.array(0.0, np.float32)
    inits["six"] = np.array(6.0, np.float32)
    x = conv_bn("image", "stem", 3, 16, 3, 2)
    h = conv_bn(x, "expand", 16, 48, 1, 1)
    h = conv_bn(h, "dw", 48, 48, 3, 1, group=48)
    h = conv_bn(h, "project", 48, 16, 1, 1, act=False)
    nodes.append(helper.make_node("Add", [x, h], ["res1"]))
    x = conv_bn("res1", "down", 16, 32, 3, 2)  # 1x32x8x8
    inits["tok_shape"] = np.array([1, 32, 64], np.int64)
    nodes.append(helper.make_node("Reshape", [x, "tok_shape"], ["tok_t"]))
    nodes.append(helper.make_node("Transpose", ["tok_t"], ["tok"], perm=[0, 2, 1]))  # 1x64x32
    inits["ln.g"] = rng.uniform(0.5, 1.5, 32).astype(np.float32)
    inits["ln.b"] = (rng.standard_normal(32) * 0.1).astype(np.float32)
    nodes.append(helper.make_node("LayerNormalization", ["tok", "ln.g", "ln.b"], ["ln"], axis=-1, epsilon=1e-5))
    for p in "qkv":
        nodes.append(helper.make_node("MatMul", ["ln", w(f"w{p}", 32, 32, scale=0.2)], [p]))
    nodes.append(helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["q", "kt"], ["scores_raw"]))
    inits["scale"] = np.array(32 ** -0.5, np.float32)
    nodes.append(helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]))
    nodes.append(helper.make_node("Softmax", ["scores"], ["attn"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["attn", "v"], ["ctx"]))
    nodes.append(helper.make_node("Add", ["tok", "ctx"], ["res2"]))
    nodes.append(helper.make_node("ReduceMean", ["res2"], ["pooled"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("Gemm", ["pooled", w("fc.w", 10, 32), w("fc.b", 10, scale=0.1)], ["logits"], transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    inits["topk"] = np.array([3], np.int64)
    nodes.append(helper.make_node("TopK", ["probs", "topk"], ["top_values", "top_indices"], axis=-1))
    graph = helper.make_graph(
        nodes, "mobile_attn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("top_values", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("top_indices", TensorProto.INT64, [1, 3])],
        [onnx.numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ember-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_models(folder: Path) -> dict[str, Path]:
    """{name: .onnx path} of the models every preset is tested with."""
    path = folder / "mobile_attn.onnx"
    if not path.exists():
        onnx.save(mobile_attn(), path)
    return {"digits_cnn": DIGITS, "mobile_attn": path}


def random_inputs(model: Path, seed: int) -> dict[str, np.ndarray]:
    """Fresh float inputs for a model's (static-shaped) inputs."""
    proto = onnx.load(str(model), load_external_data=False)
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def speech_rnn(seed: int = 0) -> onnx.ModelProto:
    """A bidirectional LSTM (peepholes, sequence_lens) feeding a GRU (linear_before_reset, as
    PyTorch exports it): x [20, 2, 10] -> Y [20, 1, 2, 24] and its final state; hidden 24 (not
    a multiple of the kernel's 32-column panels, so the partial panel runs too)."""
    rng = np.random.default_rng(seed)
    hidden, inp = 24, 10

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    inits = {"W": w(2, 4 * hidden, inp), "R": w(2, 4 * hidden, hidden), "B": w(2, 8 * hidden), "P": w(2, 3 * hidden),
             "lens": np.array([20, 13], np.int32), "shape": np.array([0, 0, -1], np.int64),
             "Wg": w(1, 3 * hidden, 2 * hidden), "Rg": w(1, 3 * hidden, hidden), "Bg": w(1, 6 * hidden)}
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "lens", "", "", "P"], ["y"], hidden_size=hidden,
                              direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["yt", "shape"], ["feats"]),
             helper.make_node("GRU", ["feats", "Wg", "Rg", "Bg"], ["z", "zh"], hidden_size=hidden, linear_before_reset=1)]
    graph = helper.make_graph(
        nodes, "speech_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20, 2, inp])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [20, 1, 2, hidden]),
         helper.make_tensor_value_info("zh", TensorProto.FLOAT, [1, 2, hidden])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
