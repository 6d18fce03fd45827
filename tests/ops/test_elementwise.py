"""Elementwise and activation ops beyond the ONNX node tests: symbolic shapes, shape-arithmetic
contents, old-opset upgrades against onnxruntime, exact integer and low-precision references,
clear errors, and dtype coverage against the ONNX schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.compiler import dtypes, interp
from ember.compiler.dims import Dim
from ember.compiler.errors import EmberError, UnsupportedModelError
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype, tracked_values
from ember.compiler.ir import TensorType
from ember.compiler.ops import OPS, REQUIRED, InferCtx, activation, elementwise
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph

# Every type written below is what inference must give back.
SYMBOLIC = """\
graph main(%x: f32[N,3,8], %b: f32[8], %m: bool[N,1,1], %k: i64[N,1]) -> (%y: f16[N,3,8], %cmp: bool[N,4]) {
  const %four: i64[4] = [1, 2, 3, 4]
  const %two: i64[] = 2
  const %lo: f32[] = -1.0
  const %slope: f32[3,1] = [0.1, 0.2, 0.3]
  %a: f32[N,3,8] = Add(%x, %b)
  %g: f32[N,3,8] = Gelu(%a) {approximate="tanh"}
  %p: f32[N,3,8] = PRelu(%g, %slope)
  %c: f32[N,3,8] = Clip(%p, %lo)
  %w: f32[N,3,8] = Where(%m, %c, %x)
  %s: f32[N,3,8] = Sum(%w, %b, %x)
  %d: f32[N,3,8], %mask: bool[N,3,8] = Dropout(%s)
  %pw: f32[N,3,8] = Pow(%d, %two)
  %y: f16[N,3,8] = Cast(%pw) {to="f16"}
  %q: i64[N,4] = Div(%k, %four)
  %cmp: bool[N,4] = GreaterOrEqual(%q, %four)
  return %y, %cmp
}
"""


def test_symbolic_batch_dim_flows_through_and_runs_for_any_batch(rng: np.random.Generator) -> None:
    graph = parse_graph(SYMBOLIC)
    assert print_graph(retype(graph)) == print_graph(graph)
    for n in (1, 5):
        result = interp.run(graph, interp.random_feeds(graph, rng, {"N": n}))
        assert result["y"].shape == (n, 3, 8) and result["y"].dtype == np.float16
        assert result["cmp"].shape == (n, 4)


# Contents of small int tensors: the last value of each chain, with x: f32[N,S,8].
CONTENTS: list[tuple[str, tuple[Dim, ...] | None]] = [
    ("Mul(%n, %three)", ("3*N",)),
    ("Div(%n, %two)", ("N//2",)),
    ("Div(%three, %two)", (1,)),
    ("Div(%minus7, %two)", (-3,)),  # truncation toward zero
    ("Sub(%n, %three)", ("N-3",)),
    ("Add(%shape, %one)", ("N+1", "S+1", 9)),
    ("Neg(%n)", ("-1*N",)),
    ("Abs(%n)", ("N",)),
    ("Abs(%minus7)", (7,)),
    ("Max(%n, %zero)", ("N",)),
    ("Min(%n, %zero, %one)", (0,)),
    ("Max(%n, %three)", None),  # unknown: N may be below 3
    ("Mod(%minus7, %three)", (2,)),
    ("Cast(%n) {to=\"i32\"}", ("N",)),
    ("Cast(%minus7) {to=\"bool\"}", (1,)),
    ("Identity(%shape)", ("N", "S", 8)),
    ("Equal(%shape, %minus1)", (0, 0, 0)),  # dims are never negative
    ("Equal(%shape, %shape)", (1, 1, 1)),
    ("Equal(%n, %one)", None),
    ("Less(%minus1, %n)", (1,)),
    ("GreaterOrEqual(%n, %zero)", (1,)),
    ("Not(%nonneg)", (0,)),
    ("Where(%isneg, %one, %shape)", ("N", "S", 8)),
]


@pytest.mark.parametrize("expr,expected", CONTENTS, ids=[c[0] for c in CONTENTS])
def test_shape_arithmetic_contents_are_tracked_symbolically(expr: str, expected: tuple[Dim, ...] | None) -> None:
    op = expr.split("(")[0]
    dtype = "bool" if op in ("Equal", "Less", "GreaterOrEqual", "Not") or "bool" in expr else "i32" if "i32" in expr else "i64"
    count = 3 if "%shape" in expr and op != "Cast" else 1
    text = f"""\
graph main(%x: f32[N,S,8]) -> (%out: {dtype}[{count}]) {{
  const %minus1: i64[] = -1
  const %minus7: i64[] = -7
  const %one: i64[] = 1
  const %three: i64[] = 3
  const %two: i64[] = 2
  const %zero: i64[] = 0
  const %o1: i64[1] = [1]
  const %z1: i64[1] = [0]
  %shape: i64[3] = Shape(%x)
  %n: i64[1] = Slice(%shape, %z1, %o1)
  %nonneg: bool[1] = GreaterOrEqual(%n, %zero)
  %isneg: bool[3] = Less(%shape, %zero)
  %out: {dtype}[{count}] = {expr}
  return %out
}}
"""
    graph = retype(parse_graph(text))
    assert tracked_values(graph).get("out") == expected


def test_a_dim_written_with_a_minus_is_still_an_extent() -> None:
    """torch exports `mask.expand(b, 1, -1, -1)` as Expand(m, Where(Equal(shape, -1), 1, shape)).
    Over a conv's frame count (S-1 here, (((samples-5)//5-1)//2-1)//2 in wav2vec2) the
    Equal was unknown, since the expression alone could be -1; read off a tensor's shape it is
    a size. The Expand lost every dim, then a fused Attention failed to build (HuBERT,
    wav2vec2 with an attention mask)."""
    text = """\
graph main(%x: f32[N,S,8], %m: bool[N,1,1,S-1]) -> (%y: bool[N,1,S-1,S-1]) {
  const %i0: i64[1] = [0]
  const %i2: i64[1] = [2]
  const %minus1: i64[] = -1
  const %one: i64[1] = [1]
  const %ones: i64[4] = [1, 1, 1, 1]
  const %start: i64[1] = [1]
  const %end: i64[1] = [9223372036854775807]
  const %ax: i64[1] = [1]
  %f: f32[N,S-1,8] = Slice(%x, %start, %end, %ax)
  %shape: i64[3] = Shape(%f)
  %b: i64[1] = Gather(%shape, %i0)
  %t: i64[1] = Gather(%shape, %i1)
  %target: i64[4] = Concat(%b, %one, %t, %t) {axis=0}
  %eq: bool[4] = Equal(%target, %minus1)
  %where: i64[4] = Where(%eq, %ones, %target)
  %y: bool[N,1,S-1,S-1] = Expand(%m, %where)
  return %y
}
""".replace("%i1)", "%ax)")
    graph = parse_graph(text)
    assert print_graph(retype(graph)) == print_graph(graph)
    assert tracked_values(retype(graph))["eq"] == (0, 0, 0, 0)


def test_contents_feed_an_exact_reshape() -> None:
    # Reshape(x, [N * S, -1]) computed from Shape(x): the output keeps the symbolic product.
    text = """\
graph main(%x: f32[N,S,8]) -> (%y: f32[N*S,8]) {
  const %i0: i64[1] = [0]
  const %i1: i64[1] = [1]
  const %rest: i64[1] = [-1]
  %shape: i64[3] = Shape(%x)
  %n: i64[1] = Gather(%shape, %i0)
  %s: i64[1] = Gather(%shape, %i1)
  %ns: i64[1] = Mul(%n, %s)
  %target: i64[2] = Concat(%ns, %rest) {axis=0}
  %y: f32[N*S,8] = Reshape(%x, %target)
  return %y
}
"""
    graph = parse_graph(text)
    assert print_graph(retype(graph)) == print_graph(graph)


# --- references ---------------------------------------------------------------------------------
def _run(op: str, inputs: Sequence[np.ndarray], opset: int = 18, **attrs: Any) -> np.ndarray:
    """One elementwise node through the importer and the interpreter; its single output."""
    names = [f"in{i}" for i in range(len(inputs))]
    model = make_model(
        [helper.make_node(op, names, ["y"], **attrs)],
        [(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, inputs)],
        [("y", attrs.get("to", helper.np_dtype_to_tensor_dtype(inputs[0].dtype)), inputs[0].shape)],
        opset=opset,
    )
    graph = import_proto(model)
    return interp.run(graph, dict(zip(names, inputs)))["y"]


def test_integer_div_truncates_toward_zero_exactly_beyond_2_to_53() -> None:
    a = np.array([2**62 + 1, -(2**62) - 1, 7, -7, 7, -7], np.int64)
    b = np.array([3, 3, 2, 2, -2, -2], np.int64)
    want = [int(x / y) if abs(x) < 2**53 else (abs(x) // abs(y)) * (1 if (x > 0) == (y > 0) else -1) for x, y in zip(a.tolist(), b.tolist())]
    assert _run("Div", [a, b]).tolist() == want


def test_pow_of_integer_base_matches_onnxruntime() -> None:
    base = np.array([2, -3, 4, 5, -2, 1], np.int32)
    for exponent in (np.array([3, 2, -1, 0, -2, -5], np.int64), np.array([0.5, 2, 1.5, 0, 3, -1], np.float32)):
        model = make_model(
            [helper.make_node("Pow", ["x", "e"], ["y"])],
            [("x", T.INT32, [6]), ("e", helper.np_dtype_to_tensor_dtype(exponent.dtype), [6])],
            [("y", T.INT32, [6])],
        )
        got = interp.run(import_proto(model), {"x": base, "e": exponent})["y"]
        np.testing.assert_array_equal(got, run_onnxruntime(model, {"x": base, "e": exponent})["y"])


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_low_precision_activations_compute_in_f32_and_round_once(dtype: Any) -> None:
    x = np.linspace(-6, 6, 97).astype(dtype)
    wide = x.astype(np.float32)
    for op, f in (("Sigmoid", lambda v: 1 / (1 + np.exp(-v))), ("Elu", lambda v: np.where(v < 0, np.expm1(v), v))):
        np.testing.assert_array_equal(_run(op, [x]), f(wide).astype(dtype), err_msg=op)


def test_cast_float_to_int_truncates_and_zeroes_non_finite_values() -> None:
    x = np.array([1.9, -1.9, np.nan, np.inf, -np.inf, 300.5], np.float32)
    assert _run("Cast", [x], to=T.INT32).tolist() == [1, -1, 0, 0, 0, 300]
    assert _run("Cast", [np.array([200, -200], np.int16)], to=T.INT8).tolist() == [-56, 56]  # wraps
    assert _run("Cast", [np.array([0.0, -0.0, np.nan], np.float32)], to=T.BOOL).tolist() == [False, False, True]


def test_training_dropout_draws_the_mask_as_onnx_reference() -> None:
    model = make_model(
        [helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"], seed=3)],
        [("x", T.FLOAT, [4, 5]), ("r", T.FLOAT, []), ("t", T.BOOL, [])],
        [("y", T.FLOAT, [4, 5]), ("mask", T.BOOL, [4, 5])],
    )
    feeds = {"x": np.arange(20, dtype=np.float32).reshape(4, 5), "r": np.array(0.25, np.float32), "t": np.array(True)}
    got = interp.run(import_proto(model), feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_array_equal(got["mask"], want[1])
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-6)


# --- upgrades from old opsets, against onnxruntime ------------------------------------------------
UPGRADES = [
    ("Clip opset 11 min/max inputs", 11, [helper.make_node("Clip", ["x", "lo", "", ], ["y"])], {"lo": np.array(-0.5, np.float32)}),
    ("Clip opset 12 int", 12, [helper.make_node("Cast", ["x"], ["xi"], to=T.INT32), helper.make_node("Clip", ["xi", "", "hi"], ["ci"]),
                               helper.make_node("Cast", ["ci"], ["y"], to=T.FLOAT)], {"hi": np.array(0, np.int32)}),
    ("Dropout opset 11 ratio attribute", 11, [helper.make_node("Dropout", ["x"], ["y"], ratio=0.3)], {}),
    ("Cast opset 11 to code", 11, [helper.make_node("Cast", ["x"], ["h"], to=T.FLOAT16), helper.make_node("Cast", ["h"], ["y"], to=T.FLOAT)], {}),
    ("Mod opset 11 fmod", 11, [helper.make_node("Mod", ["x", "d"], ["y"], fmod=1)], {"d": np.array([0.7, -1.1, 2.0], np.float32)}),
    ("Pow opset 11", 11, [helper.make_node("Abs", ["x"], ["ax"]), helper.make_node("Pow", ["ax", "e"], ["y"])], {"e": np.array(1.5, np.float32)}),
    ("Max opset 11 variadic", 11, [helper.make_node("Max", ["x", "d", "x"], ["y"])], {"d": np.array([0.7, -1.1, 2.0], np.float32)}),
    ("LeakyRelu opset 13", 13, [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2)], {}),
    ("Selu/HardSigmoid opset 11", 11, [helper.make_node("Selu", ["x"], ["s"]), helper.make_node("HardSigmoid", ["s"], ["y"], alpha=0.3)], {}),
    ("Where/Equal/Not opset 11", 11, [helper.make_node("Equal", ["x", "x"], ["e"]), helper.make_node("Not", ["e"], ["ne"]),
                                       helper.make_node("Where", ["ne", "d", "x"], ["y"])], {"d": np.array([0.7, -1.1, 2.0], np.float32)}),
]


@pytest.mark.parametrize("case", UPGRADES, ids=[u[0] for u in UPGRADES])
def test_old_opset_forms_import_and_match_onnxruntime(case: tuple, rng: np.random.Generator) -> None:
    _, opset, nodes, inits = case
    model = make_model(nodes, [("x", T.FLOAT, ["N", 3])], [("y", T.FLOAT, ["N", 3])], inits, opset=opset)
    graph = import_proto(model)
    x = (rng.standard_normal((4, 3)) * 2).astype(np.float32)
    np.testing.assert_allclose(interp.run(graph, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_clip_attribute_form_moves_bounds_to_inputs() -> None:
    inputs, attrs = OPS["Clip"].upgrade(6, ["x"], {"min": -1.0}, [TensorType("f16", (2,))])  # type: ignore[misc]
    assert inputs[1].dtype == np.float16 and float(inputs[1]) == -1.0 and len(inputs) == 2 and not attrs


# --- clear errors ----------------------------------------------------------------------------------
ERRORS = [
    ("BitShift", [T.UINT8, T.UINT8], {"direction": "UP"}, "direction must be LEFT or RIGHT"),
    ("Mod", [T.INT32, T.INT32], {"fmod": 2}, "fmod must be 0 or 1"),
    ("Gelu", [T.FLOAT], {"approximate": "fast"}, "approximate must be 'none' or 'tanh'"),
    ("Sqrt", [T.INT32], {}, "Sqrt input 0 must be a float tensor, got i32"),
    ("And", [T.FLOAT, T.FLOAT], {}, "must be a bool tensor"),
    ("Add", [T.FLOAT, T.DOUBLE], {}, "must share one dtype"),
    ("Where", [T.FLOAT, T.FLOAT, T.FLOAT], {}, "Where input 0 must be a bool tensor"),
    ("BitwiseAnd", [T.FLOAT, T.FLOAT], {}, "must be an integer tensor"),
]


@pytest.mark.parametrize("op,types,attrs,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_invalid_inputs_and_attributes_are_clear_errors(op: str, types: list[int], attrs: dict, message: str) -> None:
    names = [f"in{i}" for i in range(len(types))]
    model = make_model(
        [helper.make_node(op, names, ["y"], **attrs)], [(n, t, [2]) for n, t in zip(names, types)], [("y", types[-1], [2])], opset=20
    )
    with pytest.raises(EmberError, match=message):
        import_proto(model)


def test_prelu_slope_must_broadcast_to_x() -> None:
    model = make_model(
        [helper.make_node("PRelu", ["x", "s"], ["y"])], [("x", T.FLOAT, ["N", 3]), ("s", T.FLOAT, [4])], [("y", T.FLOAT, ["N", 3])]
    )
    with pytest.raises(EmberError, match=r"slope f32\[4\] does not broadcast to X f32\[N,3\]"):
        import_proto(model)


def test_unknown_cast_target_is_unsupported() -> None:
    model = make_model([helper.make_node("Cast", ["x"], ["y"], to=T.STRING)], [("x", T.FLOAT, [2])], [("y", T.STRING, [2])])
    with pytest.raises(UnsupportedModelError, match="STRING"):
        import_proto(model)


# --- dtype coverage: never reject what an ONNX schema (opset 11..newest) allows -------------------------
_ONNX_TO_EMBER = {f"tensor({onnx.helper.tensor_dtype_to_np_dtype(code).name})": name for code, name in dtypes.ONNX.items()}
_ONNX_TO_EMBER.update({"tensor(float)": "f32", "tensor(double)": "f64", "tensor(float16)": "f16", "tensor(bfloat16)": "bf16", "tensor(bool)": "bool"})


def _schema_dtypes(op: str) -> list[dict[str, set[str]]]:
    """Per schema version in opsets 11..newest: input name -> ember dtypes it allows."""
    seen, out = set(), []
    for version in range(11, onnx.defs.onnx_opset_version() + 1):
        try:
            schema = onnx.defs.get_schema(op, version)
        except onnx.defs.SchemaError:
            continue
        if schema.since_version in seen:
            continue
        seen.add(schema.since_version)
        params = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        out.append({i.name: {_ONNX_TO_EMBER[t] for t in params.get(i.type_str, {i.type_str}) if t in _ONNX_TO_EMBER} for i in schema.inputs})
    return out


@pytest.mark.parametrize("op", [o.name for o in elementwise.OPS + activation.OPS])
def test_every_dtype_an_onnx_schema_allows_is_accepted(op: str) -> None:
    opdef = OPS[op]
    for allowed in _schema_dtypes(op):
        names = list(allowed)
        for dtype in sorted(allowed[names[0]]):
            # Inputs sharing the first input's type parameter take `dtype`; the others their first.
            types = [
                TensorType(dtype if allowed[n] == allowed[names[0]] else min(allowed[n]), (2,) if k == 0 else ())
                for k, n in enumerate(names)
            ]
            attrs = {k: spec.resolve_default(types) for k, spec in opdef.attrs.items() if spec.default not in (None, REQUIRED)}
            attrs.setdefault("to", "f32")
            attrs.setdefault("direction", "LEFT")
            ctx = InferCtx(op=op, types=list(types), attrs=attrs, consts=[None] * len(types), values=[None] * len(types), out_names=["y", "m"])
            opdef.infer(ctx)
