"""Winograd convolutions F(4x4, 3x3) and F(2x2, 3x3) over the blocked layout (NCHWc).

A 3x3 stride-1 conv computes each m x m tile of its output from an (m + 2) x (m + 2) tile of its
input with (m + 2)^2 multiplies per input/output channel pair instead of 9 m^2 (F(4x4, 3x3):
36 instead of 144, 4x fewer), at the price of transforms at both ends and a weight 4x larger
(Lavin & Gray, https://arxiv.org/abs/1509.09308). With A, B, G the Cook-Toom matrices (TOPI's,
from the interpolation points of Barabasz et al., chosen for fp32 accuracy):

    V[e1, e2, ci, p] = (B^T d_p B)[e1, e2]               input transform, per tile p
    U[e1, e2, ci, co] = (G g G^T)[e1, e2]                 weight transform: numpy, compile time
    M[e1, e2, co, p] = sum_ci V[e1, e2, ci, p] U[e1, e2, ci, co]   36 independent matmuls
    Y[co, tile p] = A^T M[.., co, p] A                   output transform, then the epilogue

Laid out for the CPU (P = N x the tiles of an image, b the channel block):

    V [a, a, CI/b, P, b]      (a tile's channel vector contiguous, as a pixel's in NCHWc)
    U [a, a, CO/bo, CI/b, b, bo]
    M [a, a, CO/bo, P, bo]    (the matmuls are 1x1 convs over the tiles: the same register
                                tiles as sched_nchwc.ConvNCHWc)

Each transform is two 1-d passes (rows, then columns: 2 x 6 x 6 short sums a tile instead of
36 sums of up to 36 terms), each its own stage, computed per tile into registers by the
schedule (sched_winograd). A pass is written out as explicit sums with the matrices' constants
(zeros dropped, ones without a multiply), chosen among by `if_then_else` on the transform's
index, which the schedule unrolls: after unrolling, each output is its own short expression.
(Written as one 2-d stage, a conv took 15 s to compile.)

Where it is used (`applies`): a float 3x3 conv with stride 1, dilation 1 and one group over a
blocked input, enough channels that the transforms stay small against the matmuls, and
MIN_TILES tiles of 4 x 4 a call or more, or a symbolic image size (the tiles counted at run
time, SYMBOLIC_TILE_BLOCK; F(4x4, 3x3), the three loop nests). Which tile (`tile_size`): F(4x4, 3x3)
where a call has F4_MIN_TILES such tiles or more, else F(2x2, 3x3) (16 multiplies per 2 x 2
tile instead of 36, 2.25x fewer than direct against F4's 4x, but a weight 16/9 the direct
conv's instead of 4x). At batch 1 a weight read for few tiles is the cost: a ResNet's 7 x 7
maps have 4 tiles of 4 x 4, where a 512-channel F4 weight (38 MB) streams from memory each call.

The answers differ from a direct conv's by rounding only: fp32 error about 3e-7 relative to the
output's scale for F(4, 3) with these points (Barabasz et al.), less for F(2, 3). The tests hold it to the direct
conv's tolerance against the interpreter; ResNet-18's and ResNet-50's logits differ from the
interpreter's as much with it as without (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import te, tirx

TILE = 4  # m: outputs per tile side, F(4x4, 3x3); 2 on small maps (tile_size)
KERNEL = 3
INPUT_ROWS_BLOCK = "wino_input_rows"
INPUT_BLOCK = "wino_input"
MATMUL_BLOCK = "wino_gemm"
OUTPUT_COLUMNS_BLOCK = "wino_output_columns"
OUTPUT_BLOCK = "wino_output"
TILE_ORIGIN_BLOCK = "wino_tile"  # (over symbolic sizes: each tile's image, first row and column)
# Where it applies: at least this many tiles a call and channels in and out. Measured on a Zen
# 4 (medians of 15-20, `tools/ab.py`): 3x3 convs 64 -> 64 at 56 x 56 0.38x the direct conv's
# time, 128 at 28 x 28 0.35x, 256 at 14 x 14 (16 tiles) 0.43x, 32 -> 32 at 56 x 56 0.51x (0.83x
# at 2 threads); in ResNet-18, taking the 7 x 7 maps too (4 tiles at batch 1, where the weight
# is read 4x larger for 4 tiles) still ran 0.55 against 0.59x onnxruntime at 1 thread and
# broke even at 2 (F(2x2, 3x3) now takes those maps: F4_MIN_TILES). Fewer channels (one channel block of 16) and single tiles are not taken:
# not measured (the schedule expects every loop of the stages to be a loop).
MIN_TILES = 4
MIN_CHANNELS = 32
# Over a symbolic image size the tiles are counted at run time: P = N x the tiles of an image,
# rounded up to whole register tiles of this many tiles (by the target's float lanes), so that
# no FMA of the matmuls runs under a predicate; the padding tiles transform the last real tile
# again (valid reads, never stored). Each tile's image, first row and first column are
# computed once into a small array (TILE_ORIGIN_BLOCK): divided by the symbolic tile counts in
# every load of the unrolled input transform, a conv took 48 s to compile (an earlier attempt).
# On AVX-512, 7 tiles x 2 vectors rather than the static rule's 14 x 2: the dynamic ResNet-18
# (sample 256 x 320, medians of 12, 1 thread) ran 0.60 / 0.64 / 0.62 / 1.02x onnxruntime at
# 256 x 320 / 224 x 224 / 480 x 640 / 97 x 131 in blocks of 7, 0.67 / 0.79 / 0.63 / 1.42x in
# blocks of 14, whose padding tiles cost most on small maps (its direct convs: 1.13 / 0.98 /
# 1.07 / 1.13x). AVX2 (16 registers) keeps 6 x 2, not measured.
SYMBOLIC_TILE_BLOCK = {16: 7, 8: 6}


def matrices(m: int = TILE, r: int = KERNEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A [a, m], B [a, a], G [a, r]) of F(m, r), a = m + r - 1, float64."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + r - 1), m, r)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def applies(kernel: list[int], strides: list[int], dilations: list[int], group: int, ci: int, co: int,
            bi: int, batch: Any, out_hw: tuple[Any, Any], lanes: int = 16, at_sample: list[int] | None = None) -> bool:
    """Whether a blocked conv takes the Winograd form (module doc). A symbolic image size is
    taken as the maps CNNs run at (tens of pixels a side) where the target has a
    SYMBOLIC_TILE_BLOCK, with a static or symbolic batch; a symbolic batch over a static image
    stays direct (the default specialization at the sample's batch has static sizes; over a
    symbolic batch TVM could not place the stages of a kernel whose epilogue converts a
    residual to the blocked layout). `at_sample`: [batch, height, width] at the compile
    sample's sizes, where known: a conv over a symbolic size takes the form where its 4 x 4
    tiles there number MIN_TILES or more, as a static conv does (far below the sample the
    form costs: BENCHMARKS.md section 9). (Every loop of the stages then has an extent above
    1, as the schedule expects, except a batch of one: two input channel blocks or more, a
    static map of two rows and columns or more.)"""
    count = tiles(batch, out_hw)
    return (list(kernel) == [KERNEL, KERNEL] and list(strides) == [1, 1] and list(dilations) == [1, 1]
            and group == 1 and bi > 1 and ci // bi >= 2 and ci >= MIN_CHANNELS and co >= MIN_CHANNELS
            and all(not isinstance(d, int) or d >= 2 for d in out_hw)
            and (count >= MIN_TILES if count is not None
                 else lanes in SYMBOLIC_TILE_BLOCK and not all(isinstance(d, int) for d in out_hw)
                 and (at_sample is None or (tiles(at_sample[0], tuple(at_sample[1:])) or 0) >= MIN_TILES)))


def tiles(batch: Any, out_hw: tuple[Any, Any], m: int = TILE) -> int | None:
    """Output tiles of a call (None where a size is symbolic)."""
    if not all(isinstance(d, int) for d in (batch, *out_hw)):
        return None
    return batch * -(-out_hw[0] // m) * -(-out_hw[1] // m)


# F(4x4, 3x3) from this many 4 x 4 tiles a call, F(2x2, 3x3) below. Measured on a Zen 4
# (`tools/ab.py`, medians of 20, 1 / 2 threads, ember / onnxruntime): ResNet-18 with F2 on its
# 7 x 7 maps (4 tiles) 0.55 / 0.60, with F4 everywhere 0.63 / 0.67, with F2 everywhere
# 0.69 / 0.65; ResNet-50 0.80 / 0.76 against 0.82 / 0.99 (a noisy 2-thread column) and, with
# F2 on its 14 x 14 maps (16 tiles) too, 0.84 / 0.74. At batch 8 the 7 x 7 maps have 32 tiles,
# where F4 stays faster (ResNet-18 b8: 0.50 / 0.54 against 0.55 / 0.58 with F2 there).
F4_MIN_TILES = 16


def tile_size(batch: Any, out_hw: tuple[Any, Any]) -> int:
    """m of F(m x m, 3 x 3) for a conv of this batch and output size (F4 over a symbolic size:
    the maps of tens of pixels a side it is taken for)."""
    count = tiles(batch, out_hw)
    return TILE if count is None or count >= F4_MIN_TILES else 2


def transform_weight(weight: np.ndarray, bi: int, bo: int, m: int = TILE) -> np.ndarray:
    """OIHW [CO, CI, 3, 3] -> U [a, a, CO/bo, CI/bi, bi, bo] = G g G^T per channel pair (float64
    arithmetic, stored in the weight's dtype)."""
    _, _, g = matrices(m, weight.shape[-1])
    u = np.einsum("ik,ockl,jl->ijoc", g, weight.astype(np.float64), g)  # [a, a, CO, CI]
    a = u.shape[0]
    co, ci = weight.shape[:2]
    u = u.reshape(a, a, co // bo, bo, ci // bi, bi).transpose(0, 1, 2, 4, 5, 3)
    return np.ascontiguousarray(u.astype(weight.dtype))


def _linear(coefs: np.ndarray, terms: list[Any], dtype: str) -> Any:
    """sum coefs[k] * terms[k], zero coefficients dropped, +-1 without a multiply."""
    out = None
    for c, t in zip((float(c) for c in coefs), terms):
        if c == 0.0:
            continue
        if out is None:
            out = t if c == 1.0 else -t if c == -1.0 else tirx.const(c, dtype) * t
        elif abs(c) == 1.0:
            out = out + t if c == 1.0 else out - t
        else:
            out = out + tirx.const(c, dtype) * t
    return out if out is not None else tirx.const(0.0, dtype)


def _select(index: Any, options: list[Any]) -> Any:
    """options[index] as a chain of if_then_else (folded once the schedule unrolls `index`; a
    Select was vectorized with its condition and not folded: 6x the code, 17 s to compile)."""
    out = options[-1]
    for k in range(len(options) - 2, -1, -1):
        out = tirx.if_then_else(index == k, options[k], out)
    return out


def _static(d: Any) -> Any:
    return int(d) if isinstance(d, (int, tirx.IntImm)) else d


def winograd_nchwc(data: te.Tensor, u: te.Tensor, pads: list[int], out_hw: tuple[Any, Any], m: int = TILE,
                   tile_block: int = 1) -> te.Tensor:
    """out[n, fo, y, x, o] of the 3x3 stride-1 conv of data [N, CI/bi, H, W, bi] (pads [top,
    left, bottom, right]) by the transformed weight U (transform_weight), as the three stages
    of the module doc; tiles indexed by one flat index p. Over symbolic sizes the tiles are
    rounded up to whole `tile_block`s and located through TILE_ORIGIN_BLOCK's arrays
    (SYMBOLIC_TILE_BLOCK)."""
    from ember.targets.blocked import _i64, _reduce

    n, cib, h, w, bi = (_static(d) for d in data.shape)
    a, _, cob, _, _, bo = (int(d) for d in u.shape)
    oh, ow = (_static(d) for d in out_hw)
    th, tw = (oh + m - 1) // m, (ow + m - 1) // m
    p_count = n * th * tw
    dtype = str(data.dtype)
    top, left = pads[0], pads[1]
    if isinstance(p_count, int):
        p_wide = p_count

        def origin(p: Any) -> tuple[Any, Any, Any]:
            return p // (th * tw), p % (th * tw) // tw * m, p % tw * m
    else:
        p_wide = (p_count + tile_block - 1) // tile_block * tile_block

        def locate(p: Any, k: Any) -> Any:
            q = tirx.min(p, p_count - 1)  # (a padding tile: the last real one again)
            return _select(k, [q // (th * tw), q % (th * tw) // tw * m, q % tw * m])

        tile_at = te.compute(_i64([p_wide, 3]), locate, name=TILE_ORIGIN_BLOCK)

        def origin(p: Any) -> tuple[Any, Any, Any]:
            return tile_at[p, 0], tile_at[p, 1], tile_at[p, 2]

    def padded(i: Any, c: Any, y: Any, x: Any, k: Any) -> Any:
        """The input with zero padding on every side, as far as the last tiles read (a
        condition in the read, not a padding stage the schedule would inline)."""
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
        return tirx.if_then_else(inside, data[i, c, y - top, x - left, k], tirx.const(0.0, dtype))

    amat, bmat, _ = matrices(m, a - m + 1)
    bt, at = bmat.T, amat.T  # [a, a] and [m, a]: row k gives output k's coefficients

    def rows_transform(r: Any, e2: Any, c: Any, p: Any, k: Any) -> Any:  # d_p B, row r
        i, y0, x0 = origin(p)
        return _select(e2, [_linear(bt[q], [padded(i, c, y0 + r, x0 + s, k) for s in range(a)], dtype)
                            for q in range(a)])

    rows = te.compute(_i64([a, a, cib, p_wide, bi]), rows_transform, name=INPUT_ROWS_BLOCK)
    v = te.compute(_i64([a, a, cib, p_wide, bi]),
                   lambda e1, e2, c, p, k: _select(e1, [_linear(bt[q], [rows[r, e2, c, p, k] for r in range(a)], dtype)
                                                        for q in range(a)]),
                   name=INPUT_BLOCK)
    rc, rk = _reduce(cib, "rc"), _reduce(bi, "rk")
    mm = te.compute(_i64([a, a, cob, p_wide, bo]),
                    lambda e1, e2, f, p, o: te.sum(v[e1, e2, rc, p, rk] * u[e1, e2, f, rc, rk, o], axis=[rc, rk]),
                    name=MATMUL_BLOCK)
    cols = te.compute(_i64([a, m, cob, p_wide, bo]),  # M A, per row e1
                      lambda e1, j, f, p, o: _select(j, [_linear(at[q], [mm[e1, e2, f, p, o] for e2 in range(a)], dtype)
                                                         for q in range(m)]),
                      name=OUTPUT_COLUMNS_BLOCK)

    def output_transform(i: Any, f: Any, y: Any, x: Any, o: Any) -> Any:
        p = (i * th + y // m) * tw + x // m
        return _select(y % m, [_linear(at[q], [cols[e1, x % m, f, p, o] for e1 in range(a)], dtype) for q in range(m)])

    return te.compute(_i64([n, cob, oh, ow, bo]), output_transform, name=OUTPUT_BLOCK)
