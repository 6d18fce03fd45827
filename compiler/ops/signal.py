"""Operators: signal processing (DFT, STFT, the Hann / Hamming / Blackman windows,
MelWeightMatrix), as speech models export their feature extraction (torch.stft -> STFT).

Complex values are ONNX's: a trailing axis of 2 (real, imaginary); real signals have a
trailing axis of 1. The references use numpy's FFT in the input's precision (complex64 for
f32, f16 and bf16; complex128 for f64), as onnx's reference implementation does, so results
round as the ONNX node tests' data; windows and mel weights are computed in f64.

    DFT      canonical form is opset 20's (axis an input, default -2); DFT-17's `axis`
             attribute (default 1) becomes a constant input at import. `dft_length` pads or
             truncates the signal; onesided forward takes a real signal (RFFT), onesided
             inverse a one-sided complex spectrum and gives a real signal (IRFFT, default
             length 2 * (n - 1)); inverse scales by 1 / length.
    STFT     signal [batch, length, 1|2], frames of frame_length every frame_step samples
             (frames = (length - frame_length) // frame_step + 1), each times the window,
             transformed: [batch, frames, bins, 2]. frame_length defaults to the window's
             length, and without a window to the signal's length.
    windows  [size] of the output_datatype (an ember dtype name; ONNX's code at import);
             periodic windows are the first `size` points of a window of size + 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.elementwise import FLOAT, check_dtype
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
INDEX = ("i32", "i64")
# What a window or a mel matrix may be produced as (ONNX's T2 / T3: every numeric type).
OUTPUT_DTYPES = dtypes.FLOATS + dtypes.INTS


def _given(ctx: InferCtx, i: int) -> bool:
    return i < len(ctx.types) and ctx.types[i] is not None


def _req(ctx: InferCtx, i: int = 0) -> TensorType:
    t = ctx.types[i] if i < len(ctx.types) else None
    if t is None:
        raise ValueError(f"{ctx.op} input {i} is required")
    return t


def _scalar_type(ctx: InferCtx, i: int, what: str) -> None:
    """ValueError unless input i (if given) holds one element (a scalar, or [1])."""
    t = ctx.types[i] if i < len(ctx.types) else None
    if t is not None and not (t.rank == 0 or (t.rank == 1 and not (isinstance(t.shape[0], int) and t.shape[0] != 1))):
        raise ValueError(f"{ctx.op}: {what} must be a scalar, got {t}")


def _known_int(ctx: InferCtx, i: int) -> int | None:
    """The single integer of input i, when inference knows it."""
    if not _given(ctx, i):
        return None
    known = ctx.const_or_value(i)
    if known is None or len(known) != 1 or not isinstance(known[0], int):
        return None
    return int(known[0])


def _scalar(inputs: Arrays, i: int) -> Any:
    """The one element of ref input i (None when omitted)."""
    value = inputs[i] if i < len(inputs) else None
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"input {i} must be a scalar, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] (re, im) as a complex array without the trailing axis:
    complex128 for f64, complex64 otherwise (numpy's FFT keeps that precision)."""
    kind = np.complex128 if x.dtype == np.float64 else np.complex64
    out = x[..., 0].astype(kind)
    if x.shape[-1] == 2:
        out.imag = x[..., 1]
    return out


def _pairs(y: np.ndarray) -> np.ndarray:
    """A complex array as [..., 2] (re, im)."""
    return np.stack([y.real, y.imag], axis=-1)


def _flag(ctx: InferCtx, name: str) -> int:
    value = ctx.attrs[name]
    if value not in (0, 1):
        raise ValueError(f"{ctx.op}: {name} must be 0 or 1, got {value}")
    return int(value)


# --- DFT -----------------------------------------------------------------------------------------
def _dft_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: DFT-17's `axis` attribute (default 1) -> DFT-20's axis input."""
    if since < 20:
        axis = attrs.pop("axis", 1)
        inputs = [inputs[0], inputs[1] if len(inputs) > 1 else "", np.array(axis, dtype=np.int64)]
    return inputs, attrs


def dft_axis(axis: int, rank: int) -> int:
    """A DFT axis made non-negative; ValueError outside [-rank, -2] and [0, rank - 2]."""
    if not (-rank <= axis <= rank - 2) or axis == -1:
        raise ValueError(f"DFT axis {axis} out of range for a rank-{rank} input (the last axis holds re/im)")
    return axis % rank


def dft_lengths(n: Dim, length: Dim | None, inverse: bool, onesided: bool) -> tuple[Dim, Dim]:
    """(the transform's length, the output's size along the axis) for n input samples."""
    if length is None:
        length = dims.mul(2, dims.sub(n, 1)) if inverse and onesided else n
    out = dims.add(dims.floordiv(length, 2), 1) if onesided and not inverse else length
    return length, out


def _dft_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 1, INDEX)
    check_dtype(ctx, 2, INDEX)
    _scalar_type(ctx, 1, "dft_length")
    _scalar_type(ctx, 2, "axis")
    x = _req(ctx)
    inverse, onesided = _flag(ctx, "inverse"), _flag(ctx, "onesided")
    if x.rank < 2:
        raise ValueError(f"DFT needs a [..., n, 1|2] input, got {x}")
    c = x.shape[-1]
    if isinstance(c, int) and c not in (1, 2):
        raise ValueError(f"DFT input's last axis must be 1 (real) or 2 (complex), got {x}")
    if onesided and not inverse and c == 2:
        raise ValueError("DFT with onesided=1 (RFFT) takes a real input [..., 1]")
    if onesided and inverse and c == 1:
        raise ValueError("DFT with onesided=1 and inverse=1 (IRFFT) takes a complex input [..., 2]")
    length = _known_int(ctx, 1)
    if length is not None and length < 1:
        raise ValueError(f"DFT dft_length must be >= 1, got {length}")
    out_c = 1 if inverse and onesided else 2
    axis = _known_int(ctx, 2) if _given(ctx, 2) else -2
    if axis is None:  # known at run time only: every signal axis may change size
        if not onesided and not _given(ctx, 1):
            return [TensorType(x.dtype, x.shape[:-1] + (out_c,))]
        return [TensorType(x.dtype, tuple(ctx.fresh(0, i) for i in range(x.rank - 1)) + (out_c,))]
    axis = dft_axis(axis, x.rank)
    if _given(ctx, 1) and length is None:
        size: Dim = ctx.fresh(0, axis)
    else:
        size = dft_lengths(x.shape[axis], length, bool(inverse), bool(onesided))[1]
    if isinstance(size, int) and size < 1:
        raise ValueError(f"DFT of {x} along axis {axis} has no output (IRFFT of one value needs dft_length)")
    shape = list(x.shape[:-1]) + [out_c]
    shape[axis] = size
    return [TensorType(x.dtype, tuple(shape))]


def _dft_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x = inputs[0]
    assert x is not None
    inverse, onesided = bool(attrs["inverse"]), bool(attrs["onesided"])
    axis_value = _scalar(inputs, 2)
    axis = dft_axis(int(axis_value) if axis_value is not None else -2, x.ndim)
    length_value = _scalar(inputs, 1)
    if length_value is not None and int(length_value) < 1:
        raise ValueError(f"dft_length must be >= 1, got {int(length_value)}")
    length = int(dft_lengths(x.shape[axis], None if length_value is None else int(length_value), inverse, onesided)[0])
    if length < 1:
        raise ValueError(f"transform length {length} < 1")
    signal = _complex(x)
    if inverse and onesided:
        return [as_dtype(np.fft.irfft(signal, n=length, axis=axis)[..., None], ctx)]
    y = np.fft.ifft(signal, n=length, axis=axis) if inverse else np.fft.fft(signal, n=length, axis=axis)
    if onesided:
        y = np.take(y, np.arange(length // 2 + 1), axis=axis)
    return [as_dtype(_pairs(y), ctx)]


# --- STFT ----------------------------------------------------------------------------------------
def _stft_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, FLOAT)
    check_dtype(ctx, 1, INDEX)
    check_dtype(ctx, 3, INDEX)
    _scalar_type(ctx, 1, "frame_step")
    _scalar_type(ctx, 3, "frame_length")
    x = _req(ctx)
    onesided = _flag(ctx, "onesided")
    if x.rank != 3 or (isinstance(x.shape[2], int) and x.shape[2] not in (1, 2)):
        raise ValueError(f"STFT signal must be [batch, length, 1|2], got {x}")
    if onesided and x.shape[2] == 2:
        raise ValueError("STFT with onesided=1 takes a real signal [batch, length, 1] (pass onesided=0)")
    step = _known_int(ctx, 1)
    if step is not None and step < 1:
        raise ValueError(f"STFT frame_step must be >= 1, got {step}")
    window = ctx.types[2] if _given(ctx, 2) else None
    if window is not None and (window.dtype != x.dtype or window.rank != 1):
        raise ValueError(f"STFT window must be a 1-D {x.dtype} tensor, got {window}")
    n: Dim | None
    if _given(ctx, 3):
        n = _known_int(ctx, 3)
        if n is not None and n < 1:
            raise ValueError(f"STFT frame_length must be >= 1, got {n}")
        if n is not None and window is not None and isinstance(window.shape[0], int) and window.shape[0] != n:
            raise ValueError(f"STFT window has {window.shape[0]} values for frame_length {n}")
    else:
        n = window.shape[0] if window is not None else x.shape[1]
    frames: Dim = ctx.fresh(0, 1)
    if n is not None and step is not None:
        frames = dims.add(dims.floordiv(dims.sub(x.shape[1], n), step), 1)
        if isinstance(frames, int) and frames < 1:
            raise ValueError(f"STFT signal of {x.shape[1]} samples is shorter than a frame of {n}")
    bins: Dim = ctx.fresh(0, 2) if n is None else dims.add(dims.floordiv(n, 2), 1) if onesided else n
    return [TensorType(x.dtype, (x.shape[0], frames, bins, 2))]


def stft_frames(length: int, frame_length: int, step: int) -> int:
    """How many frames of frame_length, every step samples, a signal of `length` holds."""
    return (length - frame_length) // step + 1


def _stft_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    x, window = inputs[0], inputs[2] if len(inputs) > 2 else None
    assert x is not None
    step = int(_scalar(inputs, 1))
    if step < 1:
        raise ValueError(f"frame_step must be >= 1, got {step}")
    given = _scalar(inputs, 3)
    n = int(given) if given is not None else window.shape[0] if window is not None else x.shape[1]
    if n < 1:
        raise ValueError(f"frame_length must be >= 1, got {n}")
    if window is not None and window.shape != (n,):
        raise ValueError(f"the window has shape {list(window.shape)}; frame_length is {n}")
    frames = stft_frames(x.shape[1], n, step)
    if frames < 1:
        raise ValueError(f"a signal of {x.shape[1]} samples is shorter than a frame of {n}")
    index = np.arange(frames)[:, None] * step + np.arange(n)[None, :]
    signal = _complex(x)[:, index]  # [batch, frames, n]
    if window is not None:
        signal = signal * window.astype(signal.real.dtype)
    y = np.fft.fft(signal, axis=-1)
    if attrs["onesided"]:
        y = y[..., : n // 2 + 1]
    return [as_dtype(_pairs(y), ctx)]


# --- windows -------------------------------------------------------------------------------------
def _output_dtype_upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """upgrade: output_datatype TensorProto code -> ember dtype name."""
    if isinstance(attrs.get("output_datatype"), int):
        attrs["output_datatype"] = dtypes.from_onnx(attrs["output_datatype"], "output_datatype")
    return inputs, attrs


def _output_dtype(ctx: InferCtx) -> str:
    dt = ctx.attrs["output_datatype"]
    if dt not in OUTPUT_DTYPES:
        raise ValueError(f"{ctx.op}: output_datatype must be a numeric type, got {dt!r}")
    return dt


def _window_infer(ctx: InferCtx) -> list[TensorType]:
    check_dtype(ctx, 0, INDEX)
    _scalar_type(ctx, 0, "size")
    _flag(ctx, "periodic")
    size = _known_int(ctx, 0)
    if size is not None and size < 0:
        raise ValueError(f"{ctx.op} size must be >= 0, got {size}")
    return [TensorType(_output_dtype(ctx), (size if size is not None else ctx.fresh(0, 0),))]


# Each window as cosine terms: sum_k a_k cos(2 pi k n / N), N = size (periodic) or size - 1.
# Hamming's alpha is 25/46 (not 0.54), as the ONNX spec and onnxruntime have it.
WINDOW_TERMS: dict[str, tuple[float, ...]] = {
    "HannWindow": (0.5, -0.5),
    "HammingWindow": (25.0 / 46.0, -(1.0 - 25.0 / 46.0)),
    "BlackmanWindow": (0.42, -0.5, 0.08),
}


def window_values(op: str, size: int, periodic: bool) -> np.ndarray:
    """The f64 window of `size` points."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    span = size if periodic else size - 1
    n = np.arange(size, dtype=np.float64)
    with np.errstate(all="ignore"):  # a symmetric window of 1 point divides 0 by 0, as the spec
        return sum(a * np.cos(2 * np.pi * k * n / span) for k, a in enumerate(WINDOW_TERMS[op]))


def _window(name: str) -> OpDef:
    def ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
        return [as_dtype(window_values(name, int(_scalar(inputs, 0)), bool(attrs["periodic"])), ctx)]

    return OpDef(name=name, infer=_window_infer, ref=ref, upgrade=_output_dtype_upgrade,
                 attrs={"output_datatype": AttrSpec("str", "f32"), "periodic": AttrSpec("int", 1)})


# --- MelWeightMatrix -----------------------------------------------------------------------------
def _mel_infer(ctx: InferCtx) -> list[TensorType]:
    for i, what in enumerate(("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")):
        check_dtype(ctx, i, INDEX if i < 3 else FLOAT)
        _scalar_type(ctx, i, what)
    mels, length = _known_int(ctx, 0), _known_int(ctx, 1)
    if any(v is not None and v < 1 for v in (mels, length, _known_int(ctx, 2))):
        raise ValueError("MelWeightMatrix: num_mel_bins, dft_length and sample_rate must be >= 1")
    rows: Dim = length // 2 + 1 if length is not None else ctx.fresh(0, 0)
    return [TensorType(_output_dtype(ctx), (rows, mels if mels is not None else ctx.fresh(0, 1)))]


def mel_weights(mels: int, length: int, rate: int, lower: Any, upper: Any) -> np.ndarray:
    """[length // 2 + 1, mels] triangles, step by step as onnx's reference (the mel points
    split [lower, upper] into mels + 2 steps; bins are floor((length + 1) * hertz / rate);
    the edge hertz keep their dtype, so an f32 edge rounds as there)."""
    if mels < 1 or length < 1 or rate < 1:
        raise ValueError("num_mel_bins, dft_length and sample_rate must be >= 1")
    points = np.arange(0, mels + 2)
    low = 2595 * np.log1p(lower / 700) / np.log(10)
    high = 2595 * np.log1p(upper / 700) / np.log(10)
    hertz = 700 * np.expm1((points * ((high - low) / points.shape[0]) + low) / 2595 * np.log(10))
    bins = (((length + 1) * hertz) // rate).astype(np.int64)
    rows = length // 2 + 1
    out = np.zeros((rows, mels))
    if bins.min() < 0 or bins[-2] >= rows or bins[-1] > rows:
        raise ValueError(f"the mel bands ({lower} to {upper} Hz at {rate} Hz) fall outside the {rows} bins")
    for i in range(mels):
        left, center, right = bins[i], bins[i + 1], bins[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / float(center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / float(right - center)
    return out


def _mel_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    mels, length, rate = (int(_scalar(inputs, i)) for i in range(3))
    weights = mel_weights(mels, length, rate, np.asarray(inputs[3]).reshape(()), np.asarray(inputs[4]).reshape(()))
    return [as_dtype(weights, ctx)]


OPS: list[OpDef] = [
    OpDef(name="DFT", infer=_dft_infer, ref=_dft_ref, inputs=(1, 3), upgrade=_dft_upgrade,
          attrs={"inverse": AttrSpec("int", 0), "onesided": AttrSpec("int", 0)}),
    OpDef(name="STFT", infer=_stft_infer, ref=_stft_ref, inputs=(2, 4), attrs={"onesided": AttrSpec("int", 1)}),
    _window("HannWindow"),
    _window("HammingWindow"),
    _window("BlackmanWindow"),
    OpDef(name="MelWeightMatrix", infer=_mel_infer, ref=_mel_ref, inputs=(5, 5), upgrade=_output_dtype_upgrade,
          attrs={"output_datatype": AttrSpec("str", "f32")}),
]
