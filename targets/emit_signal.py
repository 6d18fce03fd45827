"""Emitters: DFT and STFT as one real matrix product against a DFT basis made at compile
time; the windows and MelWeightMatrix as constants.

    DFT   x [..., n, ..., c] -> the axis moved next to c (permute_dims, unless it is there
          already) -> [..., n*c] @ basis [n*c, bins*oc] -> [..., bins, oc] -> axis moved back.
    STFT  signal [B, L, c] -> frames [B, F, n*c] (a gather kernel: frame f holds samples
          f*step .. f*step+n-1, times the window when the window is not a constant) ->
          frames @ basis [n*c, bins*2] (a constant window is folded into the basis rows)
          -> [B, F, bins, 2]; F = (L - n) // step + 1 may be symbolic.

The products' columns (and STFT's frames) are padded to whole blocks (MATMUL_BLOCK) and the
result sliced back.

The basis holds the transform's complex exponentials as real 2x2 blocks, so one real matmul
gives interleaved (re, im) outputs: a sample's real part contributes (re E, im E) to a bin,
its imaginary part (-im E, re E). dft_length > n (zero padding) needs no extra rows,
dft_length < n (truncation) zero rows for the dropped samples; the inverse scales by
1 / length; IRFFT reads only the real part of its one-sided bins' products and doubles the
interior bins (the conjugate half the one-sided input leaves out). A matrix product costs
n * bins per frame where an FFT costs n log n, but it runs on the Matmul schedule rule's
register-tiled kernel with the basis pre-packed, which at speech sizes (n_fft 400) beats a
scalar FFT. f16 / bf16 are computed in f32 and rounded once; f64 in f64.

Everything the basis depends on (axis, dft_length, frame_step, frame_length, onesided) must
be a compile-time constant; otherwise the node is refused with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx

from ember.compiler.ir import Node
from ember.compiler.ops.signal import dft_axis, dft_lengths
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    const,
    has_input,
    in_type,
    out_type,
    refuse,
    static_scalar,
)

# The matmul's rows (frames) and columns (bins * 2) are padded to whole multiples of this and
# the result sliced: the Matmul rule's tiles have no ragged edges then. A log-mel STFT
# (998 frames x 400 samples x 402 columns, 1 thread) took 12.0 ms as is, 7.7 ms with the
# rows padded, 7.2 ms with the columns padded and 3.2 ms with both.
MATMUL_BLOCK = 16


def _padded(size: int) -> int:
    return -(-size // MATMUL_BLOCK) * MATMUL_BLOCK


def dft_basis(n: int, channels: int, length: int, inverse: bool, onesided: bool, window: np.ndarray | None = None) -> np.ndarray:
    """[n * channels, bins * oc] f64: x [..., n * channels] @ basis is the DFT of x's n samples
    (interleaved (re, im) when channels is 2) as [..., bins * oc], oc = 1 for IRFFT, else 2
    (interleaved (re, im)); `window` [n] scales each sample first."""
    irfft = inverse and onesided
    bins = length if inverse or not onesided else length // 2 + 1
    used = min(n, length // 2 + 1 if irfft else length)  # input samples (bins) that count
    k, j = np.arange(used)[:, None], np.arange(bins)[None, :]
    angle = 2 * np.pi * ((k * j) % length) / length  # exact integer phase, then one rounding
    e = np.exp((1j if inverse else -1j) * angle) / (length if inverse else 1)
    if irfft:  # x[m] = Re(sum_k w_k Y_k e^{2 pi i k m / L}) / L, w = 1 at DC and Nyquist, else 2
        weight = np.full(used, 2.0)
        weight[0] = 1.0
        if length % 2 == 0 and length // 2 < used:
            weight[length // 2] = 1.0
        e = e * weight[:, None]
        re_rows, im_rows = e.real[..., None], -e.imag[..., None]
    else:
        re_rows = np.stack([e.real, e.imag], axis=-1)
        im_rows = np.stack([-e.imag, e.real], axis=-1)
    basis = np.zeros((n, channels, bins * re_rows.shape[-1]))
    basis[:used, 0] = re_rows.reshape(used, -1)
    if channels == 2:
        basis[:used, 1] = im_rows.reshape(used, -1)
    if window is not None:
        basis *= np.asarray(window, dtype=np.float64)[:, None, None]
    return basis.reshape(n * channels, -1)


def _compute_dtype(dtype: str) -> str:
    """The ember dtype a transform of `dtype` data computes in."""
    return "f64" if dtype == "f64" else "f32"


def _cast(x: relax.Expr, have: str, want: str) -> relax.Expr:
    return x if have == want else R.astype(x, TVM_DTYPE[want])


def _dft(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    xt, yt = in_type(lw, node, 0), out_type(node)
    rank = xt.rank
    axis = dft_axis(int(static_scalar(lw, node, 2, "axis")) if has_input(node, 2) else -2, rank)
    given = int(static_scalar(lw, node, 1, "dft_length")) if has_input(node, 1) else None
    n, c = xt.shape[axis], xt.shape[-1]
    if not isinstance(n, int) or not isinstance(c, int):
        raise refuse(node, f"a DFT along a symbolic axis ({xt})")
    inverse, onesided = bool(node.attrs["inverse"]), bool(node.attrs["onesided"])
    length = int(dft_lengths(n, given, inverse, onesided)[0])
    dt = _compute_dtype(xt.dtype)
    basis = dft_basis(n, c, length, inverse, onesided)
    cols = basis.shape[1]
    basis = np.pad(basis, [(0, 0), (0, _padded(cols) - cols)])
    order = [i for i in range(rank - 1) if i != axis] + [axis, rank - 1]
    x = _cast(a[0], xt.dtype, dt)
    if order != list(range(rank)):
        x = R.permute_dims(x, order)
    lead = [lw.dim(xt.shape[i]) for i in order[:-2]]
    y = R.matmul(R.reshape(x, [*lead, n * c] if lead else [1, n * c]), const(basis.astype(np.dtype(TVM_DTYPE[dt]))))
    if basis.shape[1] != cols:
        y = R.strided_slice(y, axes=[len(lead) or 1], begin=[0], end=[cols])
    y = R.reshape(y, [*lead, lw.dim(yt.shape[axis]), yt.shape[-1]])
    if order != list(range(rank)):
        y = R.permute_dims(y, [int(i) for i in np.argsort(order)])
    return [_cast(y, dt, yt.dtype)]


def _stft(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    xt, yt = in_type(lw, node, 0), out_type(node)
    c = xt.shape[2]
    step = int(static_scalar(lw, node, 1, "frame_step"))
    window = lw.const_of(node.inputs[2]) if has_input(node, 2) else None
    if has_input(node, 3):
        n: Any = int(static_scalar(lw, node, 3, "frame_length"))
    else:
        n = in_type(lw, node, 2).shape[0] if has_input(node, 2) else xt.shape[1]
    if not isinstance(n, int) or not isinstance(c, int):
        raise refuse(node, f"an STFT whose frame length is symbolic ({xt})")
    dt = _compute_dtype(xt.dtype)
    basis = dft_basis(n, c, n, False, bool(node.attrs["onesided"]), window)
    cols = basis.shape[1]
    basis = np.pad(basis, [(0, 0), (0, _padded(cols) - cols)])
    count = lw.dim(yt.shape[1])  # frames; the frame kernel writes zero rows up to a whole block
    rows = _padded(count) if isinstance(count, int) else (count + MATMUL_BLOCK - 1) // MATMUL_BLOCK * MATMUL_BLOCK
    pad_rows = not isinstance(count, int) or rows != count
    frames_shape = [lw.dim(xt.shape[0]), rows, n * c]
    operands = [_cast(a[0], xt.dtype, dt)]
    if has_input(node, 2) and window is None:  # a run-time window: applied to the frames
        operands.append(_cast(a[2], xt.dtype, dt))

    def frames(x: te.Tensor, *w: te.Tensor) -> te.Tensor:
        def sample(b: Any, f: Any, m: Any) -> Any:
            v = x[b, f * step + m // c, m % c]
            v = v * w[0][m // c] if w else v
            return tirx.if_then_else(f < count, v, tirx.const(0, x.dtype)) if pad_rows else v

        return te.compute(frames_shape, sample, name="stft_frames")

    framed = lw.emit(lw.kernels.call_te(frames, *operands, primfunc_name_hint="stft_frames"))
    y = R.matmul(framed, const(basis.astype(np.dtype(TVM_DTYPE[dt]))))
    if pad_rows or basis.shape[1] != cols:
        y = R.strided_slice(y, axes=[1, 2], begin=[0, 0], end=[count, cols])
    y = R.reshape(y, lw.shape(yt))
    return [_cast(y, dt, yt.dtype)]


def _constant(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """An op of constant inputs (a window, a mel matrix) computed by its reference."""
    from ember.compiler.ops import OPS, EvalCtx

    inputs = [lw.const_of(name) if name else None for name in node.inputs]
    missing = [i for i, (name, v) in enumerate(zip(node.inputs, inputs)) if name and v is None]
    if missing:
        raise refuse(node, f"{node.op} of run-time input(s) {missing} (its output size would be data-dependent)")

    def no_subgraphs(*args: Any) -> list[np.ndarray]:
        raise RuntimeError(f"{node.op} has no subgraph")

    return [const(OPS[node.op].ref(inputs, node.attrs, EvalCtx(node=node, run_graph=no_subgraphs))[0])]


EMITTERS: dict[str, Emitter] = {
    "DFT": _dft, "STFT": _stft,
    "HannWindow": _constant, "HammingWindow": _constant, "BlackmanWindow": _constant, "MelWeightMatrix": _constant,
}
