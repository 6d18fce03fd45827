"""Golden dumps of the default pipeline on tiny models: regenerate or check them.

    python tools/golden.py            # rewrite tests/golden/<model>/NNN_<pass>.ir
    python tools/golden.py --check    # exit 1 and show a diff if any dump changed

A refactor that does not mean to change what passes do leaves these files unchanged.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.compiler.importer import import_model, import_proto
from ember.compiler.ir import Graph
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def _model(name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=outputs[0], **attrs)


def cnn_bn() -> onnx.ModelProto:
    """A small CNN as a training framework exports it in eval mode: BatchNormalization after
    each Conv, a residual block, ReLU6 as Clip, Dropout, and Flatten written as a
    Shape -> Gather -> Concat -> Reshape chain."""
    rng = np.random.default_rng(1)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    inits: dict[str, np.ndarray] = {
        "conv1.w": normal(8, 3, 3, 3), "conv2.w": normal(8, 8, 3, 3), "conv2.b": normal(8),
        "conv3.w": normal(16, 8, 1, 1), "fc.w": normal(10, 16), "fc.b": normal(10),
        "zero": np.array([0], np.int64), "minus_one": np.array([-1], np.int64),
        "six": np.array(6.0, np.float32), "nothing": np.array(0.0, np.float32),
    }
    for bn, c in (("bn1", 8), ("bn2", 8), ("bn3", 16)):
        inits.update({f"{bn}.scale": rng.uniform(0.5, 1.5, c).astype(np.float32), f"{bn}.bias": normal(c),
                      f"{bn}.mean": normal(c), f"{bn}.var": rng.uniform(0.5, 2.0, c).astype(np.float32)})

    def bn(name: str, x: str, y: str) -> onnx.NodeProto:
        return _node("BatchNormalization", [x, f"{name}.scale", f"{name}.bias", f"{name}.mean", f"{name}.var"], [y])

    nodes = [
        _node("Conv", ["input", "conv1.w"], ["conv1"], pads=[1, 1, 1, 1]),
        bn("bn1", "conv1", "bn1"),
        _node("Relu", ["bn1"], ["relu1"]),
        _node("Conv", ["relu1", "conv2.w", "conv2.b"], ["conv2"], pads=[1, 1, 1, 1]),
        bn("bn2", "conv2", "bn2"),
        _node("Add", ["bn2", "relu1"], ["residual"]),
        _node("Relu", ["residual"], ["relu2"]),
        _node("MaxPool", ["relu2"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        _node("Conv", ["pool", "conv3.w"], ["conv3"]),
        bn("bn3", "conv3", "bn3"),
        _node("Clip", ["bn3", "nothing", "six"], ["relu6"]),
        _node("GlobalAveragePool", ["relu6"], ["gap"]),
        _node("Shape", ["gap"], ["gap_shape"]),
        _node("Gather", ["gap_shape", "zero"], ["batch"], axis=0),
        _node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
        _node("Reshape", ["gap", "flat_shape"], ["flat"]),
        _node("Dropout", ["flat"], ["dropped"]),
        _node("Gemm", ["dropped", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    return _model("cnn_bn", nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)


def transformer_block(seq: int = 8, hidden: int = 16, heads: int = 2) -> onnx.ModelProto:
    """One pre-norm transformer block written out op by op, as exporters do: LayerNorm from
    ReduceMean/Sub/Pow/Sqrt/Div, softmax from ReduceMax/Exp/ReduceSum/Div inside scaled
    dot-product attention, GELU from Erf, Identity and Dropout leftovers."""
    rng = np.random.default_rng(2)
    head = hidden // heads

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    inits: dict[str, np.ndarray] = {
        "axes": np.array([-1], np.int64), "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
        "heads_shape": np.array([1, seq, heads, head], np.int64), "merge_shape": np.array([1, seq, hidden], np.int64),
        "sqrt_head": np.array(np.sqrt(head), np.float32), "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
    }
    for name, shape in (("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)),
                        ("o", (hidden, hidden)), ("fc1", (hidden, 4 * hidden)), ("fc2", (4 * hidden, hidden))):
        inits[f"{name}.w"], inits[f"{name}.b"] = normal(*shape), normal(shape[1])
    for ln in ("ln1", "ln2"):
        inits[f"{ln}.g"] = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
        inits[f"{ln}.b"] = normal(hidden)

    def layernorm(ln: str, x: str) -> list[onnx.NodeProto]:
        return [
            _node("ReduceMean", [x], [f"{ln}.mean"], axes=[-1]),
            _node("Sub", [x, f"{ln}.mean"], [f"{ln}.d"]),
            _node("Pow", [f"{ln}.d", "two"], [f"{ln}.sq"]),
            _node("ReduceMean", [f"{ln}.sq"], [f"{ln}.var"], axes=[-1]),
            _node("Add", [f"{ln}.var", "eps"], [f"{ln}.var_eps"]),
            _node("Sqrt", [f"{ln}.var_eps"], [f"{ln}.std"]),
            _node("Div", [f"{ln}.d", f"{ln}.std"], [f"{ln}.norm"]),
            _node("Mul", [f"{ln}.norm", f"{ln}.g"], [f"{ln}.scaled"]),
            _node("Add", [f"{ln}.scaled", f"{ln}.b"], [ln]),
        ]

    def linear(name: str, x: str) -> list[onnx.NodeProto]:
        return [_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"]), _node("Add", [f"{name}.mm", f"{name}.b"], [name])]

    def split_heads(name: str, perm: list[int]) -> list[onnx.NodeProto]:
        return [_node("Reshape", [name, "heads_shape"], [f"{name}.heads"]),
                _node("Transpose", [f"{name}.heads"], [f"{name}.t"], perm=perm)]

    nodes = [_node("Identity", ["x"], ["x_in"]), *layernorm("ln1", "x_in")]
    for name in ("q", "k", "v"):
        nodes += linear(name, "ln1")
    nodes += split_heads("q", [0, 2, 1, 3]) + split_heads("k", [0, 2, 3, 1]) + split_heads("v", [0, 2, 1, 3])
    nodes += [
        _node("MatMul", ["q.t", "k.t"], ["scores"]),
        _node("Div", ["scores", "sqrt_head"], ["scaled"]),
        _node("ReduceMax", ["scaled"], ["smax"], axes=[-1]),
        _node("Sub", ["scaled", "smax"], ["shifted"]),
        _node("Exp", ["shifted"], ["exp"]),
        _node("ReduceSum", ["exp", "axes"], ["sum"]),
        _node("Div", ["exp", "sum"], ["probs"]),
        _node("Dropout", ["probs"], ["probs_dropped"]),
        _node("MatMul", ["probs_dropped", "v.t"], ["context"]),
        _node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        _node("Reshape", ["context_t", "merge_shape"], ["merged"]),
        *linear("o", "merged"),
        _node("Add", ["x_in", "o"], ["res1"]),
        *layernorm("ln2", "res1"),
        *linear("fc1", "ln2"),
        _node("Div", ["fc1", "sqrt2"], ["gelu.d"]),
        _node("Erf", ["gelu.d"], ["gelu.erf"]),
        _node("Add", ["gelu.erf", "one"], ["gelu.1p"]),
        _node("Mul", ["fc1", "gelu.1p"], ["gelu.x"]),
        _node("Mul", ["gelu.x", "half"], ["gelu"]),
        *linear("fc2", "gelu"),
        _node("Add", ["res1", "fc2"], ["y"]),
    ]
    shape = [1, seq, hidden]
    return _model("transformer_block", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)


def models() -> dict[str, Graph]:
    """The tiny models with golden dumps."""
    return {
        "digits_cnn": import_model(ROOT / "examples" / "digits_cnn.onnx"),
        "cnn_bn": import_proto(cnn_bn(), where="cnn_bn"),
        "transformer_block": import_proto(transformer_block(), where="transformer_block"),
    }


def write(out: Path) -> None:
    """Dump the default pipeline of every golden model under `out` (checking each pass's
    numbers against the input graph on the way)."""
    for name, graph in models().items():
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.ir"):
            old.unlink()
        run_pipeline(graph, DEFAULT_PIPELINE, dump_dir=target, check_each=True)


def compare(a: Path, b: Path) -> list[str]:
    """Unified diff lines between two dump trees (empty when identical)."""
    lines: list[str] = []
    names = sorted({p.relative_to(a) for p in a.rglob("*.ir")} | {p.relative_to(b) for p in b.rglob("*.ir")})
    for rel in names:
        x = (a / rel).read_text().splitlines(keepends=True) if (a / rel).exists() else []
        y = (b / rel).read_text().splitlines(keepends=True) if (b / rel).exists() else []
        lines += difflib.unified_diff(x, y, fromfile=f"golden/{rel}", tofile=f"now/{rel}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Regenerate (default) or check the golden dumps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting")
    args = parser.parse_args(argv)
    if not args.check:
        write(GOLDEN)
        print(f"wrote {GOLDEN}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        diff = compare(GOLDEN, Path(tmp))
    sys.stdout.writelines(diff)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
