"""Signal ops (DFT, STFT, windows, MelWeightMatrix) in the interpreter against onnxruntime
(optimizations off) on fresh random inputs, every attribute combination, and clear errors.

Where onnxruntime and onnx's reference disagree, ember follows the reference (the spec's):
IRFFT with a dft_length other than 2 * (bins - 1) is checked against numpy's irfft, which
the reference calls; an STFT without window and frame_length (frame = whole signal), which
onnxruntime cannot run, against a direct FFT.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_proto

# numpy's FFT in f32 (complex64) against onnxruntime's f32 transforms of unit-variance data.
RTOL, ATOL = 1e-4, 1e-4


def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, int, Any]], out: tuple[str, int, Any],
           inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    return make_model(nodes, inputs, [out], inits, opset=opset)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], want: dict[str, np.ndarray] | None = None,
           atol: float = ATOL) -> dict[str, np.ndarray]:
    got = interp.run(import_proto(model), feeds)
    want = run_onnxruntime(model, feeds) if want is None else want
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, (name, got[name].shape, expected.shape)
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=atol, err_msg=name)
    return got


# --- DFT -----------------------------------------------------------------------------------------
def _dft_model(shape: tuple[int, ...], opset: int, axis: int, length: int | None, **attrs: int) -> onnx.ModelProto:
    inits: dict[str, np.ndarray] = {}
    names = ["x", "L" if length is not None else ""]
    if length is not None:
        inits["L"] = np.array(length, np.int64)
    if opset >= 20:
        names.append("axis")
        inits["axis"] = np.array(axis, np.int64)
    else:
        attrs["axis"] = axis
    node = helper.make_node("DFT", names, ["y"], **attrs)
    return _model([node], [("x", T.FLOAT, shape)], ("y", T.FLOAT, [f"d{i}" for i in range(len(shape))]), inits, opset)


DFT_CASES = [  # (inverse, onesided, channels)
    (0, 0, 1), (0, 0, 2), (0, 1, 1), (1, 0, 1), (1, 0, 2), (1, 1, 2),
]


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("length", [None, 6, 14])
@pytest.mark.parametrize("axis", [1, 2, -2, -3])
@pytest.mark.parametrize(("inverse", "onesided", "channels"), DFT_CASES)
def test_dft_matches_onnxruntime(inverse: int, onesided: int, channels: int, axis: int, length: int | None, opset: int,
                                 rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 10, 7, channels)).astype(np.float32)
    model = _dft_model(x.shape, opset, axis, length, inverse=inverse, onesided=onesided)
    want = None
    if inverse and onesided and length is not None:  # onnxruntime differs from the spec here (see above)
        z = x[..., 0] + 1j * x[..., 1]
        want = {"y": np.fft.irfft(z, n=length, axis=axis % 4)[..., None].astype(np.float32)}
    _check(model, {"x": x}, want)


def test_dft_of_a_2d_input_and_f64(rng: np.random.Generator) -> None:
    """[n, 2] (no batch axis: opset 20 allows it) and a double input."""
    x = rng.standard_normal((12, 2))
    node = helper.make_node("DFT", ["x", "", "axis"], ["y"])
    model = _model([node], [("x", T.DOUBLE, x.shape)], ("y", T.DOUBLE, [12, 2]), {"axis": np.array(0, np.int64)}, opset=20)
    _check(model, {"x": x})


def test_dft_axis_as_a_graph_input_types_the_output_at_run_time(rng: np.random.Generator) -> None:
    """axis fed at run time: the transformed sizes are run-time dims, the values still right."""
    x = rng.standard_normal((1, 10, 6, 1)).astype(np.float32)
    node = helper.make_node("DFT", ["x", "", "axis"], ["y"], onesided=1)
    model = _model([node], [("x", T.FLOAT, x.shape), ("axis", T.INT64, [])], ("y", T.FLOAT, ["a", "b", "c", 2]), opset=20)
    graph = import_proto(model)
    assert all(isinstance(d, str) for d in graph.nodes[0].outputs[0].type.shape[:3])
    got = interp.run(graph, {"x": x, "axis": np.array(2, np.int64)})["y"]
    want = np.fft.rfft(x[..., 0], axis=2)
    np.testing.assert_allclose(got, np.stack([want.real, want.imag], -1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("shape", "attrs", "inits", "message"), [
    ((2, 10, 3), {}, {}, "last axis must be 1"),
    ((10,), {}, {}, "DFT needs"),
    ((2, 10, 2), {"onesided": 1}, {}, "takes a real input"),
    ((2, 10, 1), {"onesided": 1, "inverse": 1}, {}, "takes a complex input"),
    ((2, 10, 1), {}, {"axis": np.array(2, np.int64)}, "out of range"),
    ((2, 10, 1), {}, {"axis": np.array(-1, np.int64)}, "out of range"),
    ((2, 10, 1), {}, {"L": np.array(0, np.int64)}, "dft_length must be >= 1"),
    ((2, 10, 1), {"inverse": 2}, {}, "inverse must be 0 or 1"),
])
def test_dft_rejects_bad_inputs(shape: tuple[int, ...], attrs: dict[str, int], inits: dict[str, np.ndarray], message: str) -> None:
    names = ["x", "L" if "L" in inits else "", "axis" if "axis" in inits else ""]
    node = helper.make_node("DFT", names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["d"] * len(shape))],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    with pytest.raises(EmberError, match=message):
        import_proto(model)


# --- STFT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("frame_length", [True, False])
def test_stft_matches_onnxruntime(onesided: int, channels: int, window: bool, frame_length: bool, rng: np.random.Generator) -> None:
    if onesided and channels == 2:
        pytest.skip("onesided needs a real signal (a rejection, tested below)")
    if not window and not frame_length:
        pytest.skip("onnxruntime cannot run this form (tested against numpy below)")
    n, step = 16, 5
    x = rng.standard_normal((3, 101, channels)).astype(np.float32)
    inits: dict[str, np.ndarray] = {"step": np.array(step, np.int64)}
    if window:
        inits["w"] = rng.random(n).astype(np.float32)
    if frame_length:
        inits["n"] = np.array(n, np.int64)
    node = helper.make_node("STFT", ["x", "step", "w" if window else "", "n" if frame_length else ""], ["y"], onesided=onesided)
    bins = n // 2 + 1 if onesided else n
    model = _model([node], [("x", T.FLOAT, x.shape)], ("y", T.FLOAT, [3, (101 - n) // step + 1, bins, 2]), inits)
    got = _check(model, {"x": x})
    assert got["y"].shape == (3, 18, bins, 2)


def test_stft_frame_step_and_length_as_graph_inputs(rng: np.random.Generator) -> None:
    """frame_step and frame_length fed at run time (as the ONNX node tests ship them)."""
    x = rng.standard_normal((2, 64, 1)).astype(np.float32)
    node = helper.make_node("STFT", ["x", "step", "", "n"], ["y"])
    model = _model([node], [("x", T.FLOAT, x.shape), ("step", T.INT64, []), ("n", T.INT64, [])], ("y", T.FLOAT, ["b", "f", "k", 2]))
    _check(model, {"x": x, "step": np.array(8, np.int64), "n": np.array(16, np.int64)})


def test_stft_without_window_or_frame_length_is_one_frame_of_the_whole_signal(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 30, 1)).astype(np.float32)
    node = helper.make_node("STFT", ["x", "step"], ["y"])
    model = _model([node], [("x", T.FLOAT, x.shape)], ("y", T.FLOAT, [2, 1, 16, 2]), {"step": np.array(7, np.int64)})
    y = np.fft.rfft(x[..., 0], axis=1)[:, None]
    _check(model, {"x": x}, {"y": np.stack([y.real, y.imag], -1).astype(np.float32)})


def test_stft_with_a_symbolic_signal_length_types_frames_as_a_dim_expression() -> None:
    node = helper.make_node("STFT", ["x", "step", "w"], ["y"])
    model = _model([node], [("x", T.FLOAT, ["B", "L", 1])], ("y", T.FLOAT, ["B", "F", 201, 2]),
                   {"step": np.array(160, np.int64), "w": np.hanning(400).astype(np.float32)})
    assert import_proto(model).nodes[0].outputs[0].type.shape == ("B", "(L-400)//160+1", 201, 2)


@pytest.mark.parametrize(("shape", "inits", "attrs", "message"), [
    ((1, 64), {"step": np.array(4)}, {}, r"\[batch, length, 1\|2\]"),
    ((1, 64, 3), {"step": np.array(4)}, {}, r"\[batch, length, 1\|2\]"),
    ((1, 64, 1), {"step": np.array(0)}, {}, "frame_step must be >= 1"),
    ((1, 64, 1), {"step": np.array(-2)}, {}, "frame_step must be >= 1"),
    ((1, 64, 1), {"step": np.array(4), "n": np.array(0)}, {}, "frame_length must be >= 1"),
    ((1, 64, 1), {"step": np.array(4), "n": np.array(80)}, {}, "shorter than a frame"),
    ((1, 64, 1), {"step": np.array(4), "n": np.array(16), "w": np.ones(8, np.float32)}, {}, "8 values for frame_length 16"),
    ((1, 64, 1), {"step": np.array(4), "w": np.ones((2, 8), np.float32)}, {}, "1-D"),
    ((1, 64, 2), {"step": np.array(4), "n": np.array(16)}, {"onesided": 1}, "takes a real signal"),
    ((1, 64, 1), {"step": np.array([4, 4]), "n": np.array(16)}, {}, "frame_step must be a scalar"),
])
def test_stft_rejects_bad_inputs(shape: tuple[int, ...], inits: dict[str, np.ndarray], attrs: dict[str, int], message: str) -> None:
    names = ["x", "step", "w" if "w" in inits else "", "n" if "n" in inits else ""]
    node = helper.make_node("STFT", names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["b", "f", "k", 2])],
                              [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    with pytest.raises(EmberError, match=message):
        import_proto(model)


def test_stft_rejects_a_run_time_frame_step_of_zero() -> None:
    node = helper.make_node("STFT", ["x", "step", "", "n"], ["y"])
    model = _model([node], [("x", T.FLOAT, [1, 32, 1]), ("step", T.INT64, [])], ("y", T.FLOAT, ["b", "f", "k", 2]), {"n": np.array(8, np.int64)})
    with pytest.raises(EmberError, match="frame_step must be >= 1"):
        interp.run(import_proto(model), {"x": np.zeros((1, 32, 1), np.float32), "step": np.array(0, np.int64)})


# --- windows -------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("dtype", [T.FLOAT, T.DOUBLE, T.FLOAT16])
@pytest.mark.parametrize("size", [2, 10, 33, 400])
def test_windows_match_onnxruntime(op: str, periodic: int, dtype: int, size: int) -> None:
    node = helper.make_node(op, ["size"], ["y"], periodic=periodic, output_datatype=dtype)
    model = _model([node], [("size", T.INT64, [])], ("y", dtype, ["n"]))
    _check(model, {"size": np.array(size, np.int64)}, atol=1e-6 if dtype != T.FLOAT16 else 1e-3)


def test_window_defaults_and_integer_size_types() -> None:
    """periodic=1 and f32 by default; an i32 size; a constant size gives a static shape."""
    node = helper.make_node("HannWindow", ["size"], ["y"])
    model = _model([node], [], ("y", T.FLOAT, [8]), {"size": np.array(8, np.int32)})
    graph = import_proto(model)
    assert graph.nodes[0].outputs[0].type.shape == (8,) and graph.nodes[0].outputs[0].type.dtype == "f32"
    want = np.sin(np.pi * np.arange(8) / 8) ** 2
    np.testing.assert_allclose(interp.run(graph, {})["y"], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("size", "attrs", "message"), [
    (np.array(-3, np.int64), {}, "size must be >= 0"),
    (np.array([4, 4], np.int64), {}, "size must be a scalar"),
    (np.array(4.0, np.float32), {}, "must be one of i32, i64"),
    (np.array(4, np.int64), {"periodic": 2}, "periodic must be 0 or 1"),
])
def test_windows_reject_bad_inputs(size: np.ndarray, attrs: dict[str, int], message: str) -> None:
    node = helper.make_node("HammingWindow", ["size"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", T.FLOAT, ["n"])],
                              [onnx.numpy_helper.from_array(size, "size")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    with pytest.raises(EmberError, match=message):
        import_proto(model)


# --- MelWeightMatrix -----------------------------------------------------------------------------
MEL_NAMES = ["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"]


def _mel_model(dtype: int = T.FLOAT, edges: int = T.FLOAT, ints: int = T.INT64) -> onnx.ModelProto:
    node = helper.make_node("MelWeightMatrix", MEL_NAMES, ["y"], output_datatype=dtype)
    inputs = [(n, ints if i < 3 else edges, []) for i, n in enumerate(MEL_NAMES)]
    return _model([node], inputs, ("y", dtype, ["r", "m"]))


@pytest.mark.parametrize("args", [(80, 400, 16000, 0.0, 8000.0), (128, 512, 22050, 30.0, 11025.0),
                                  (13, 257, 8000, 300.0, 3000.0), (8, 64, 16000, 20.0, 7000.0)])
@pytest.mark.parametrize(("dtype", "edges", "ints"), [(T.FLOAT, T.FLOAT, T.INT64), (T.DOUBLE, T.FLOAT, T.INT32)])
def test_mel_weight_matrix_matches_onnxruntime(args: tuple, dtype: int, edges: int, ints: int) -> None:
    model = _mel_model(dtype, edges, ints)
    idt, edt = onnx.helper.tensor_dtype_to_np_dtype(ints), onnx.helper.tensor_dtype_to_np_dtype(edges)
    feeds = {n: np.array(v, idt if i < 3 else edt) for i, (n, v) in enumerate(zip(MEL_NAMES, args))}
    got = _check(model, feeds, atol=1e-6)
    assert got["y"].shape == (args[1] // 2 + 1, args[0])


def test_mel_weight_matrix_f16_and_f64_edges_match_onnx_reference() -> None:
    """Forms onnxruntime has no kernel for (an f16 output, f64 edges), against onnx's reference."""
    from onnx.reference import ReferenceEvaluator

    model = _mel_model(T.FLOAT16, T.DOUBLE)
    feeds = {n: np.array(v, np.int64 if i < 3 else np.float64) for i, (n, v) in enumerate(zip(MEL_NAMES, (40, 512, 16000, 60.0, 7600.0)))}
    want = {"y": ReferenceEvaluator(model).run(None, feeds)[0]}
    _check(model, feeds, want, atol=1e-3)


def test_mel_weight_matrix_rejects_bands_outside_the_spectrum() -> None:
    model = _mel_model()
    feeds = {n: np.array(v, np.int64 if i < 3 else np.float32) for i, (n, v) in enumerate(zip(MEL_NAMES, (10, 64, 8000, 0.0, 16000.0)))}
    with pytest.raises(EmberError, match="fall outside"):
        interp.run(import_proto(model), feeds)


def test_mel_weight_matrix_rejects_zero_bins() -> None:
    node = helper.make_node("MelWeightMatrix", MEL_NAMES, ["y"])
    inits = {n: np.array(v, np.int64 if i < 3 else np.float32) for i, (n, v) in enumerate(zip(MEL_NAMES, (0, 64, 8000, 0.0, 4000.0)))}
    model = _model([node], [], ("y", T.FLOAT, ["r", "m"]), inits)
    with pytest.raises(EmberError, match="must be >= 1"):
        import_proto(model)


# --- a log-mel front end -------------------------------------------------------------------------
def test_log_mel_front_end_matches_onnxruntime(rng: np.random.Generator) -> None:
    """HannWindow -> STFT -> |.|^2 -> MatMul(MelWeightMatrix) -> Log, the way exported speech
    front ends chain them (window and mel matrix computed in the graph)."""
    model = log_mel_model(n_fft=64, hop=16, mels=10, rate=8000, batch=2, samples=800)
    x = rng.standard_normal((2, 800)).astype(np.float32)
    got = _check(model, {"audio": x}, atol=1e-4)
    assert got["logmel"].shape == (2, 47, 10)


def log_mel_model(n_fft: int, hop: int, mels: int, rate: int, batch: Any, samples: Any) -> onnx.ModelProto:
    """audio [batch, samples] -> log(|STFT|^2 @ mel + 1e-6) [batch, frames, mels] (opset 17)."""
    c = {"n_fft": np.array(n_fft, np.int64), "hop": np.array(hop, np.int64), "mels": np.array(mels, np.int64),
         "rate": np.array(rate, np.int64), "lo": np.array(0.0, np.float32), "hi": np.array(rate / 2, np.float32),
         "axes": np.array([-1], np.int64), "eps": np.array(1e-6, np.float32)}
    nodes = [
        helper.make_node("Unsqueeze", ["audio", "axes"], ["signal"]),
        helper.make_node("HannWindow", ["n_fft"], ["window"]),
        helper.make_node("STFT", ["signal", "hop", "window", "n_fft"], ["spec"]),
        helper.make_node("Mul", ["spec", "spec"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["power"], keepdims=0),
        helper.make_node("MelWeightMatrix", ["mels", "n_fft", "rate", "lo", "hi"], ["melw"]),
        helper.make_node("MatMul", ["power", "melw"], ["mel"]),
        helper.make_node("Add", ["mel", "eps"], ["mel_eps"]),
        helper.make_node("Log", ["mel_eps"], ["logmel"]),
    ]
    return _model(nodes, [("audio", T.FLOAT, [batch, samples])], ("logmel", T.FLOAT, [batch, "frames", mels]), c)
