"""Every op with an emitter, compiled for the CPU and run on TVM's VM, against ember's
interpreter on fresh random inputs. Ops are batched into a few modules (one compile each);
most modules have a symbolic batch dim N and run at N = 1, 3, 8."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import check_model, onnx_model
from onnx import TensorProto as T
from onnx import helper

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
    model = onnx_model([node("NonZero", ["x"], "nz")], [("x", F, [4])])
    with pytest.raises(LoweringError, match=r"operators without a code generator:\n  NonZero: 1 node\(s\): nz"):
        build(import_proto(model), resolve_target("cpu"))
