"""Recurrent ops beyond the ONNX node tests: exporter-style LSTM/GRU models at opsets 11 and
14 under symbolic sequence/batch dims, every option (directions, sequence_lens, initial
states, peepholes, clip, input_forget, linear_before_reset, non-default activations, output
subsets, layout 1) against onnxruntime with its optimizations off, and clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.errors import EmberError, EvalError
from ember.compiler.importer import import_proto
from ember.compiler.infer import retype
from ember.compiler.parser import parse_graph
from ember.compiler.printer import print_graph

# f32 recurrences accumulate rounding over the steps; f64 reference vs f32 onnxruntime.
RTOL, ATOL = 1e-4, 1e-5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _weights(rng: np.random.Generator, op: str, dirs: int, inp: int, hidden: int) -> dict[str, np.ndarray]:
    g = GATES[op] * hidden
    return {
        "W": (rng.standard_normal((dirs, g, inp)) * 0.5).astype(np.float32),
        "R": (rng.standard_normal((dirs, g, hidden)) * 0.5).astype(np.float32),
        "B": (rng.standard_normal((dirs, 2 * g)) * 0.3).astype(np.float32),
    }


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    got, want = interp.run(import_proto(model), feeds), run_onnxruntime(model, feeds)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


# --- exporter-style models --------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 14])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_exported_style_model_matches_onnxruntime_under_symbolic_dims(op: str, opset: int, rng: np.random.Generator) -> None:
    """What torch.onnx writes for nn.LSTM/nn.GRU(bidirectional, batch_first): Transpose in,
    the op with initial states as inputs, Y's directions folded into features, Y_h out."""
    inp, hidden = 5, 7
    states = ["h0"] + (["c0"] if op == "LSTM" else [])
    extra = {"linear_before_reset": 1} if op == "GRU" else {}  # torch's GRU form
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node(op, ["xt", "W", "R", "B", ""] + states, ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []),
                         hidden_size=hidden, direction="bidirectional", **extra),
        helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["Yt", "shape"], ["out"]),
    ]
    model = make_model(
        nodes,
        [("x", T.FLOAT, ["N", "S", inp])] + [(s, T.FLOAT, [2, "N", hidden]) for s in states],
        [("out", T.FLOAT, ["N", "S", 2 * hidden]), ("Y_h", T.FLOAT, [2, "N", hidden])],
        {**_weights(rng, op, 2, inp, hidden), "shape": np.array([0, 0, -1], np.int64)},
        opset=opset,
    )
    graph = import_proto(model)
    assert str(graph.value("out").type) == f"f32[N,S,{2 * hidden}]"
    assert str(graph.value("Y_h").type) == f"f32[2,N,{hidden}]"
    for n, s in ((3, 6), (1, 1), (4, 2)):
        feeds = {"x": rng.standard_normal((n, s, inp)).astype(np.float32)}
        feeds.update({name: rng.standard_normal((2, n, hidden)).astype(np.float32) for name in states})
        _compare(model, feeds)


SYMBOLIC = """\
graph main(%x: f32[S,N,4], %xb: f32[N,S,4], %w: f32[2,32,4], %r: f32[2,32,8], %lens: i32[N], %wg: f32[1,24,4], %rg: f32[1,24,8]) -> (%y: f32[S,2,N,8], %yh: f32[2,N,8], %yc: f32[2,N,8], %g: f32[N,S,1,8], %gh: f32[N,1,8]) {
  %y: f32[S,2,N,8], %yh: f32[2,N,8], %yc: f32[2,N,8] = LSTM(%x, %w, %r, _, %lens) {direction="bidirectional", hidden_size=8}
  %g: f32[N,S,1,8], %gh: f32[N,1,8] = GRU(%xb, %wg, %rg) {hidden_size=8, layout=1}
  return %y, %yh, %yc, %g, %gh
}
"""


def test_symbolic_sequence_and_batch_dims_flow_through(rng: np.random.Generator) -> None:
    graph = parse_graph(SYMBOLIC)
    assert print_graph(retype(graph)) == print_graph(graph)
    feeds = interp.random_feeds(graph, rng, {"S": 5, "N": 3})
    feeds["lens"] = np.array([5, 0, 2], np.int32)
    result = interp.run(graph, feeds)
    assert result["y"].shape == (5, 2, 3, 8) and result["g"].shape == (3, 5, 1, 8)
    assert not result["y"][2:, :, 2].any() and not result["y"][:, :, 1].any()  # steps past a length are 0


# --- every option against onnxruntime ---------------------------------------------------------
# (id, op, direction, node attributes, with sequence_lens, with initial states, with peepholes, outputs)
OPTIONS: list[tuple[str, str, str, dict[str, Any], bool, bool, bool, tuple[str, ...]]] = [
    ("lstm-reverse-lens-states", "LSTM", "reverse", {}, True, True, False, ("Y", "Y_h", "Y_c")),
    ("lstm-bidir-peepholes-lens", "LSTM", "bidirectional", {}, True, True, True, ("Y", "Y_h", "Y_c")),
    ("lstm-clip-input-forget", "LSTM", "forward", {"clip": 0.4, "input_forget": 1}, False, True, True, ("Y", "Y_h", "Y_c")),
    ("lstm-only-y-c", "LSTM", "bidirectional", {}, True, False, False, ("", "", "Y_c")),
    ("lstm-only-y-h", "LSTM", "forward", {}, False, False, False, ("", "Y_h")),
    ("lstm-activations-alpha-beta", "LSTM", "bidirectional",
     {"activations": ["HardSigmoid", "LeakyRelu", "Softsign", "Sigmoid", "Elu", "Softplus"],
      "activation_alpha": [0.3, 0.05, 0.8], "activation_beta": [0.4]}, True, False, False, ("Y", "Y_h", "Y_c")),
    ("lstm-default-alphas", "LSTM", "forward", {"activations": ["HardSigmoid", "LeakyRelu", "Elu"]}, False, False, False, ("Y",)),
    ("lstm-scaledtanh-affine-thresholded", "LSTM", "forward",
     {"activations": ["Sigmoid", "ScaledTanh", "Affine"], "activation_alpha": [0.9, 0.7], "activation_beta": [1.2, 0.1]},
     False, True, False, ("Y", "Y_h")),
    ("gru-reverse-lens", "GRU", "reverse", {}, True, True, False, ("Y", "Y_h")),
    ("gru-bidir-linear-before-reset-clip", "GRU", "bidirectional", {"linear_before_reset": 1, "clip": 0.6}, True, True, False, ("Y", "Y_h")),
    ("gru-activations", "GRU", "forward", {"activations": ["HardSigmoid", "ThresholdedRelu"], "activation_alpha": [0.25, 0.1],
                                           "activation_beta": [0.45]}, False, False, False, ("Y", "Y_h")),
    ("rnn-bidir-lens-relu", "RNN", "bidirectional", {"activations": ["Relu", "Tanh"]}, True, True, False, ("Y", "Y_h")),
    ("rnn-only-y-h", "RNN", "reverse", {"activations": ["LeakyRelu"], "activation_alpha": [0.2]}, False, False, False, ("", "Y_h")),
]


def _option_model(rng: np.random.Generator, op: str, direction: str, attrs: dict[str, Any], lens: bool, states: bool,
                  peep: bool, outputs: tuple[str, ...], opset: int = 14, seq: int = 5, batch: int = 4,
                  inp: int = 3, hidden: int = 5) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    dirs = 2 if direction == "bidirectional" else 1
    inits = _weights(rng, op, dirs, inp, hidden)
    feeds = {"x": rng.standard_normal((seq, batch, inp)).astype(np.float32)}
    inputs = ["x", "W", "R", "B", "lens" if lens else ""]
    if lens:  # lengths 0 (final states 0), full, and in between
        feeds["lens"] = np.array([seq, 0, 2, seq - 1][:batch], np.int32)
    for name in ["h0", "c0"][: 2 if op == "LSTM" else 1]:
        inputs.append(name if states else "")
        if states:
            inits[name] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
    if peep:
        inputs.append("P")
        inits["P"] = rng.standard_normal((dirs, 3 * hidden)).astype(np.float32)
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node(op, inputs, list(outputs), hidden_size=hidden, direction=direction, **attrs)
    shapes = {"Y": [seq, dirs, batch, hidden], "Y_h": [dirs, batch, hidden], "Y_c": [dirs, batch, hidden]}
    out_specs = [(name, T.FLOAT, shapes[name]) for name in outputs if name]
    model = make_model([node], [(k, T.INT32 if k == "lens" else T.FLOAT, list(v.shape)) for k, v in feeds.items()], out_specs,
                       inits, opset=opset)
    return model, feeds


@pytest.mark.parametrize("case", OPTIONS, ids=[c[0] for c in OPTIONS])
def test_options_match_onnxruntime(case: tuple, rng: np.random.Generator) -> None:
    _, op, direction, attrs, lens, states, peep, outputs = case
    _compare(*_option_model(rng, op, direction, attrs, lens, states, peep, outputs))


@pytest.mark.parametrize("opset", [11, 22])
def test_old_and_newest_schemas_import_alike(opset: int, rng: np.random.Generator) -> None:
    _compare(*_option_model(rng, "LSTM", "bidirectional", {}, True, True, True, ("Y", "Y_h", "Y_c"), opset=opset))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_1_is_layout_0_with_batch_first(op: str, rng: np.random.Generator) -> None:
    """onnxruntime refuses layout=1, so compare against its layout-0 result, transposed."""
    model0, feeds0 = _option_model(rng, op, "bidirectional", {}, True, True, op == "LSTM",
                                   ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h"))
    want = run_onnxruntime(model0, feeds0)
    model1 = onnx.ModelProto()
    model1.CopyFrom(model0)
    model1.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    for init in model1.graph.initializer:
        if init.name in ("h0", "c0"):
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).transpose(1, 0, 2), init.name))
    model1.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", T.FLOAT, [4, 5, 3]))
    del model1.graph.output[:]
    model1.graph.output.extend([helper.make_tensor_value_info("Y", T.FLOAT, [4, 5, 2, 5])] + [
        helper.make_tensor_value_info(name, T.FLOAT, [4, 2, 5]) for name in ("Y_h", "Y_c")[: 2 if op == "LSTM" else 1]])
    got = interp.run(import_proto(model1), {**feeds0, "x": feeds0["x"].transpose(1, 0, 2)})
    np.testing.assert_allclose(got["Y"], want["Y"].transpose(2, 0, 1, 3), rtol=RTOL, atol=ATOL)
    for name in ("Y_h", "Y_c")[: 2 if op == "LSTM" else 1]:
        np.testing.assert_allclose(got[name], want[name].transpose(1, 0, 2), rtol=RTOL, atol=ATOL, err_msg=name)


# --- errors -------------------------------------------------------------------------------------
ERRORS = [
    ("LSTM", {"activations": ["Sigmoid", "Tanh"]}, {}, r"activations lists 2 functions; 1 direction\(s\) need 3"),
    ("LSTM", {"activations": ["Sigmoid", "Swish", "Tanh"]}, {}, r"unknown activation 'Swish'"),
    ("GRU", {"activations": ["Sigmoid", "Affine"]}, {}, r"Affine needs explicit activation_alpha/activation_beta"),
    ("RNN", {"activations": ["ThresholdedRelu"]}, {}, r"ThresholdedRelu needs explicit activation_alpha"),
    ("LSTM", {"direction": "backward"}, {}, r"direction must be one of"),
    ("GRU", {"layout": 2}, {}, r"layout must be 0 or 1"),
    ("LSTM", {"clip": 0.0}, {}, r"clip must be > 0"),
    ("LSTM", {"hidden_size": 6}, {}, r"W must have shape \[1, 24, 3\], got f32\[1,20,3\]"),
    ("GRU", {}, {"W": (1, 15, 4)}, r"W must have shape \[1, 15, 3\]"),
    ("RNN", {"direction": "bidirectional"}, {}, r"W must have shape \[2, 5, 3\]"),
]


@pytest.mark.parametrize("op,attrs,shapes,message", ERRORS, ids=[f"{e[0]}-{e[3][:28]}" for e in ERRORS])
def test_invalid_attributes_and_shapes_are_clear_errors(op: str, attrs: dict, shapes: dict, message: str) -> None:
    hidden = 5
    g = GATES[op] * hidden
    weights = {"W": (1, g, 3), "R": (1, g, hidden), **shapes}
    model = make_model([helper.make_node(op, ["x", "W", "R"], ["y"], **{"hidden_size": hidden, **attrs})],
                       [("x", T.FLOAT, [4, 2, 3])] + [(k, T.FLOAT, list(v)) for k, v in weights.items()],
                       [("y", T.FLOAT, [4, "d", 2, hidden])], opset=14)
    with pytest.raises(EmberError, match=message):
        import_proto(model)


def test_sequence_lens_past_the_sequence_is_a_run_time_error(rng: np.random.Generator) -> None:
    model, feeds = _option_model(rng, "GRU", "forward", {}, True, False, False, ("Y",))
    feeds["lens"] = np.array([9, 1, 1, 1], np.int32)
    with pytest.raises(EvalError, match=r"sequence_lens \[9, 1, 1, 1\] must hold 4 values in 0..5"):
        interp.run(import_proto(model), feeds)


# --- compiled (targets/emit_recurrent.py) -------------------------------------------------------
def _compiled(model: onnx.ModelProto) -> tuple[Any, Any]:
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE
    from ember.targets import build, resolve_target

    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return graph, build(graph, resolve_target("cpu"))


def _run_compiled(graph: Any, built: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The built module's outputs on `feeds`, by name, from TVM's Relax VM."""
    import tvm
    from tvm.runtime import vm as tvm_vm

    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.asarray(feeds[v.name], order="C")) for v in graph.inputs])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return {name: o.numpy() for name, o in zip(graph.outputs, outs)}


def _compare_compiled(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    graph, built = _compiled(model)
    got, want = _run_compiled(graph, built, feeds), interp.run(graph, feeds)
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("case", OPTIONS, ids=[c[0] for c in OPTIONS])
def test_compiled_options_match_the_interpreter(case: tuple, rng: np.random.Generator) -> None:
    """Every option, compiled to one matmul and one recurrence kernel, on fresh random inputs."""
    _, op, direction, attrs, lens, states, peep, outputs = case
    _compare_compiled(*_option_model(rng, op, direction, attrs, lens, states, peep, outputs, hidden=19, inp=7))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_compiled_layout_1_and_symbolic_dims_match_the_interpreter(op: str, rng: np.random.Generator) -> None:
    """Batch-first (layout 1) with initial states as inputs, the sequence length and batch
    symbolic: one artifact run at several (batch, sequence) sizes and lengths."""
    hidden, inp = 24, 10
    dirs = 2
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    states = ["h0"] + (["c0"] if op == "LSTM" else [])
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["x", "W", "R", "B", "lens"] + states, outs, hidden_size=hidden, direction="bidirectional",
                            layout=1, **extra)
    model = make_model([node], [("x", T.FLOAT, ["N", "S", inp]), ("lens", T.INT32, ["N"])]
                       + [(s, T.FLOAT, ["N", dirs, hidden]) for s in states],
                       [("Y", T.FLOAT, ["N", "S", dirs, hidden])] + [(o, T.FLOAT, ["N", dirs, hidden]) for o in outs[1:]],
                       _weights(rng, op, dirs, inp, hidden), opset=14)
    graph, built = _compiled(model)
    for n, s in ((3, 6), (1, 1), (5, 2)):
        feeds = {"x": rng.standard_normal((n, s, inp)).astype(np.float32),
                 "lens": rng.integers(0, s + 1, n).astype(np.int32)}
        feeds.update({name: rng.standard_normal((n, dirs, hidden)).astype(np.float32) for name in states})
        got, want = _run_compiled(graph, built, feeds), interp.run(graph, feeds)
        for name, expected in want.items():
            np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=f"{name} at N={n}, S={s}")


def test_compiled_half_precision_recurrence_matches_the_interpreter(rng: np.random.Generator) -> None:
    model, feeds = _option_model(rng, "LSTM", "forward", {}, False, False, False, ("Y", "Y_h", "Y_c"), hidden=8)
    for init in model.graph.initializer:
        init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype(np.float16), init.name))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = T.FLOAT16
    feeds = {"x": feeds["x"].astype(np.float16)}
    graph, built = _compiled(model)
    got, want = _run_compiled(graph, built, feeds), interp.run(graph, feeds)
    for name, expected in want.items():
        assert got[name].dtype == np.float16
        np.testing.assert_allclose(got[name].astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=name)


def test_compiled_sequence_lens_past_the_sequence_is_a_clear_run_time_error(rng: np.random.Generator) -> None:
    model, feeds = _option_model(rng, "GRU", "forward", {}, True, False, False, ("Y",))
    graph, built = _compiled(model)
    feeds["lens"] = np.array([9, 1, 1, 1], np.int32)
    with pytest.raises(Exception, match="sequence_lens holds a length outside 0..sequence length"):
        _run_compiled(graph, built, feeds)


def test_compiled_crnn_style_model_matches_onnxruntime(rng: np.random.Generator) -> None:
    """What an OCR model exports: conv features -> columns as time steps (Transpose, Reshape)
    -> bidirectional LSTM -> per-step classifier -> LogSoftmax, the image width symbolic."""
    hidden, feat, classes = 32, 16, 11
    inits = {"cw": (rng.standard_normal((feat, 1, 3, 3)) * 0.3).astype(np.float32),
             "cb": rng.standard_normal(feat).astype(np.float32) * 0.1,
             "shape": np.array([0, 0, -1], np.int64),
             **_weights(rng, "LSTM", 2, feat * 4, hidden),
             "fc": (rng.standard_normal((2 * hidden, classes)) * 0.2).astype(np.float32),
             "yshape": np.array([0, 0, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["img", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),  # N, 16, 4, W/2
             helper.make_node("Transpose", ["p"], ["pt"], perm=[3, 0, 1, 2]),  # W/2, N, 16, 4
             helper.make_node("Reshape", ["pt", "shape"], ["seq"]),  # W/2, N, 64
             helper.make_node("LSTM", ["seq", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["yt", "yshape"], ["feats"]),
             helper.make_node("MatMul", ["feats", "fc"], ["logits"]),
             helper.make_node("LogSoftmax", ["logits"], ["out"], axis=-1)]
    model = make_model(nodes, [("img", T.FLOAT, ["N", 1, 8, "W"])], [("out", T.FLOAT, ["S", "N", classes])], inits, opset=17)
    graph, built = _compiled(model)
    for n, width in ((1, 40), (2, 16)):
        feeds = {"img": rng.standard_normal((n, 1, 8, width)).astype(np.float32)}
        got, want = _run_compiled(graph, built, feeds), run_onnxruntime(model, feeds)
        np.testing.assert_allclose(got["out"], want["out"], rtol=RTOL, atol=1e-4, err_msg=f"N={n}, W={width}")


def test_compiled_onnx_node_tests_match_their_data() -> None:
    """The ONNX backend node tests of LSTM, GRU and RNN (onnx's own generators and data),
    compiled and run: every output within the recurrence tolerance of onnx's expected values."""
    from onnx.backend.test.case.node import collect_testcases

    cases = [c for c in collect_testcases() if c.name.startswith(("test_lstm", "test_gru", "test_rnn", "test_simple_rnn"))]
    assert len(cases) >= 15
    for case in cases:
        graph, built = _compiled(case.model)
        for inputs, outputs in case.data_sets:
            feeds = {v.name: x for v, x in zip(case.model.graph.input, inputs)}
            got = _run_compiled(graph, built, feeds)
            for value, expected in zip(case.model.graph.output, outputs):
                np.testing.assert_allclose(got[value.name], expected, rtol=RTOL, atol=ATOL, err_msg=f"{case.name} {value.name}")
