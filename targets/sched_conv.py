"""CPU schedule rules for convolution-shaped kernels: conv2d/conv1d NCHW (dense and grouped, any
stride, padding and dilation, 1x1 included), depthwise conv and pooling, each with the
elementwise epilogue ember's fusion put after it (bias, BatchNorm already folded, relu/clip/silu,
residual add).

Blocked conv (`ConvBlocked`), the schedule that matched onnxruntime on a 3x3 conv here:

    parallel  n, yo                     (bands of output rows: SPATIAL_CHUNKS; or n, fo, y,
      fo, yi                             channel panels x rows, when the weight outweighs the
                                         activations; a conv1d: bands of output columns, each
                                         over every channel panel, `_column_span`)
      xo                                 (W / xr column blocks)
        rc, ry, rx (rx unrolled)
          xi (unrolled xr) x fv (unrolled nv) x fi (vector lanes):
              acc[xi, fv, fi] += pad[n, rc, y*s + ry*d, x*s + rx*d] * Wp[fo*nv + fv, rc, ry, rx, fi]
      acc -> out[n, f, y, x] with the epilogue applied (bias, activation, residual)

The padding stage runs once per call before the loop nest, parallel and vectorized. The weight
is packed `[CO/vec, CI, KH, KW, vec]` at compile time (`sched_common.pack_weight`),
so each reduction step loads nv contiguous weight vectors and broadcasts xr input scalars. The
accumulator tile is laid out channel-innermost (`transform_layout` to n, y, x, f), which makes
the vec lanes contiguous; without it the code is 12x slower. A 1x1 conv is the same loop nest
with KH = KW = 1, a GEMM of the weight [CO, CI] by the image [CI, H*W]. A grouped conv whose
group width divides by the lanes is the same too (each vector stays inside one group).

Depthwise conv (`Depthwise`, groups == channels) has no channel reduction to block over: it
vectorizes along the output row instead (or over channels when rows are narrower than a
vector), with the padded input plane computed per channel and a register row of accumulators.

Pooling (`Pool`, max/avg windows with their padding stage) vectorizes along the output row;
global average pooling is a plain reduction left to dlight. Both are parallel over bands of
rows when the map is tall enough (`_window_bands`), else over channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import s_tir, sym, tirx
from tvm.target import Target

from ember.targets import sched_common as sc


@dataclass
class ConvShape:
    """The roles of a convolution anchor's loops and operands (None: a unit loop that the
    normal form dropped, its index a constant 0)."""

    data_index: int  # read position of the input (or its padded copy)
    weight_index: int  # read position of the weight
    n: Any  # IterInfo of the batch loop
    f: Any  # IterInfo of the output channel loop
    rows: list[Any]  # IterInfo of the output rows (y for conv2d; none for conv1d or one row)
    x: Any  # IterInfo of the innermost output loop that is not a unit
    rc: Any  # IterInfo of the input channel reduction
    taps: list[Any]  # IterInfo of the window reductions (ry, rx)
    depthwise: bool  # one input channel per output channel (groups == input channels)
    grouped: bool  # the input channel read depends on f (groups > 1)

    @property
    def reductions(self) -> list[Any]:
        """The reduction loops present, outermost first."""
        return [it for it in (self.rc, *self.taps) if it is not None]


def _var(expr: tirx.PrimExpr) -> tirx.Var | None:
    return expr if isinstance(expr, tirx.Var) else None


def _find(iters: list[Any], var: tirx.Var | None) -> Any | None:
    if var is None:
        return None
    return next((it for it in iters if it.var.same_as(var)), None)


def _zero(expr: tirx.PrimExpr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == 0


def match_conv(sch: s_tir.Schedule, anchor: Any) -> ConvShape | None:
    """The anchor's convolution structure, or None when it is not `out[n, f, (y,) x] +=
    data[n, c(f, rc), .., x*s + rx*d] * weight[f, rc, (ry,) rx]`."""
    spatial = [it for it in anchor.iters if it.kind == "S"]
    reds = [it for it in anchor.iters if it.kind == "R"]
    if len(anchor.iters) != len(spatial) + len(reds) or not reds:
        return None
    (out, out_idx), = sc.writes(sch, anchor.block_rv)
    if len(out_idx) not in (3, 4):
        return None
    out_iters = [None if _zero(e) else _find(spatial, _var(e)) for e in out_idx]
    if any(it is None and not _zero(e) for it, e in zip(out_iters, out_idx)):
        return None
    if len([it for it in out_iters if it is not None]) != len(spatial):
        return None
    n, f, *cols = out_iters
    cols = [it for it in cols if it is not None]  # a unit output row or column was dropped
    if f is None or not cols:
        return None
    *rows, x = cols
    operands = [(pos, buf, idx) for pos, (buf, idx) in enumerate(sc.reads(sch, anchor.block_rv)) if not buf.same_as(out)]
    if len(operands) != 2:
        return None
    weights = [op for op in operands if len(op[2]) == len(out_idx) and op[2][0].same_as(f.var)
               and all(_var(e) is not None or _zero(e) for e in op[2])]
    if len(weights) != 1:
        return None
    w_pos, _, w_idx = weights[0]
    d_pos, _, d_idx = next(op for op in operands if op[0] != w_pos)
    w_iters = [None if _zero(e) else _find(reds, _var(e)) for e in w_idx[1:]]
    if any(it is None and not _zero(e) for it, e in zip(w_iters, w_idx[1:])):
        return None
    rc, *taps = w_iters
    if len([it for it in w_iters if it is not None]) != len(reds) or len(d_idx) != len(out_idx):
        return None
    if sc.uses(d_idx[0], f.var) or (n is not None and not sc.uses(d_idx[0], n.var)):
        return None
    if rc is not None and not sc.uses(d_idx[1], rc.var):
        return None
    grouped = sc.uses(d_idx[1], f.var)
    depthwise = grouped and rc is None
    return ConvShape(d_pos, w_pos, n, f, rows, x, rc, taps, depthwise, grouped)


def _static(info: Any) -> int | None:
    return info.dom if isinstance(info.dom, int) else None


def _float_anchor(sch: s_tir.Schedule, anchor: Any) -> str | None:
    dtype = str(sch.get(anchor.block_rv).writes[0].source.ty.dtype)
    return dtype if dtype.startswith("float") else None


def _pack_map(vec: int) -> Any:
    """Index map W[f, rc, taps..] -> Wp[f // vec, rc, taps.., f % vec]."""

    def index_map(f: Any, *rest: Any) -> list[Any]:
        return [f // vec, *rest, f % vec]

    return index_map


def _tile_fold(sch: s_tir.Schedule, anchor: Any, conv: ConvShape, xr: int, cols: int) -> Any:
    """Index map out[n, f, rows.., x..] -> tile[x % xr, f % cols]: a register tile of xr output
    columns (conv.x: the innermost output loop that is not a unit, a row when the width is 1)
    by cols output channels, channel lanes innermost."""
    (_, idx), = sc.writes(sch, anchor.block_rv)
    x_pos = next(n for n, e in enumerate(idx) if sc.uses(e, conv.x.var))
    f_pos = next(n for n, e in enumerate(idx) if sc.uses(e, conv.f.var))

    def index_map(*axes: Any) -> list[Any]:
        f, x = axes[f_pos], axes[x_pos]
        return [x % tirx.const(xr, str(x.ty.dtype)), f % tirx.const(cols, str(f.ty.dtype))]

    return index_map


def _is_identity_pad(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether a prologue block only copies (a pad stage of zero padding: 1x1 convs)."""
    ins = sc.reads(sch, block)
    if len(ins) != 1:
        return False
    out_buf = sch.get(block).writes[0].source
    return sc.buffer_shape(out_buf) == sc.buffer_shape(ins[0][0])


def _column_block(width: int, cap: int) -> int:
    """Register block over output columns: the largest divisor of `width` in 4..cap, else cap
    (the last block is then predicated)."""
    for c in range(min(cap, width), 3, -1):
        if width % c == 0:
            return c
    return min(cap, width)


def _tile(target: Target, co: int, width: int, lanes: int) -> tuple[int, int, int]:
    """(vec, nv, xr): channel lanes per vector, vectors per tile, columns per tile, sized so the
    accumulators (xr * nv vectors), nv weight vectors and one broadcast fit the registers."""
    vec = sc.largest_divisor(co, [lanes, lanes // 2, lanes // 4, 2])
    regs = sc.vector_registers(target)
    nv = 2 if (co // vec) % 2 == 0 else 1
    # Half the registers hold accumulators: 2 x 8 on AVX-512 (2 x 14 spills), 2 x 4 on AVX2.
    cap = max(4, regs // 2 // nv)
    return vec, nv, _column_block(width, cap)


# ConvBlocked splits a kernel's output rows into this many bands (or the largest divisor of the
# row count below it) when its activations outweigh its weight: thread t of T takes the t-th
# T-th of the image, as the matmul rule's pixel panels do for 1x1 convs, so the next kernel
# reads rows the same core just wrote. Measured on this 2-core machine, a kernel reading data
# the other core wrote runs slower at 2 threads than at 1 (MobileNetV2's 576 -> 96 1x1 conv:
# 0.355 ms at 1 thread, 0.433 ms at 2 with channel panels split between the threads, 0.31 ms
# with bands of rows). The depthwise and pooling rules take fewer, taller bands
# (`_window_bands`): each band recomputes its halo rows of the padded plane.
SPATIAL_CHUNKS = 8
SYMBOLIC_EXTENT = 1 << 12  # what a symbolic output width is tiled as (its column block divides it: 8 or 4)


def _row_chunks(row: Any) -> int | None:
    """How many bands the outermost output row loop is split into (None: no rows). A symbolic
    height (a dynamic image size) takes SPATIAL_CHUNKS bands, the last rows predicated: with
    channel panels instead, each thread read the padded input the other core had written (a
    64 -> 64 3x3 conv over a dynamic 80 x 80 image: 2.50 ms at 2 threads, 3.03 at 1)."""
    if row is None:
        return None
    height = _static(row)
    if height is None:
        return SPATIAL_CHUNKS
    if height < 2:
        return None
    return next((c for c in range(min(SPATIAL_CHUNKS, height), 1, -1) if height % c == 0), min(SPATIAL_CHUNKS, height))


WINDOW_BANDS = 4  # at most this many bands of rows in a depthwise conv or pool, of 7+ rows each


def _window_bands(row: Any) -> int | None:
    """Bands of rows for a depthwise conv or pool (None: channels across threads instead): up
    to WINDOW_BANDS bands of at least 7 rows, since each band recomputes its halo rows of the
    padded plane (8 bands of 2 rows on a 14x14 map measured slower than channels; 2-4 bands of
    7+ rows: MobileNetV2 6.16 -> 5.95 ms at 2 threads, 9.99 -> 9.74 ms at 1)."""
    height = _static(row) if row is not None else None
    if height is None:
        return None
    return next((c for c in range(WINDOW_BANDS, 1, -1) if height % c == 0 and height // c >= 7), None)


def _nbytes(buffer: Any) -> int:
    """A buffer's size in bytes (4-byte elements; a symbolic dim counts as huge)."""
    total = 4
    for d in sc.buffer_shape(buffer):
        total *= d if isinstance(d, int) else 1 << 30
    return total


# A conv over a dynamic image size takes bands of rows only when its weight is at most this
# (each band re-reads the weight; ResNet-18 with dynamic H, W: 42.9 -> 37.5 ms at 1 thread,
# 24.5 -> 20.4 ms at 2, against bands everywhere; its 7x7 and 14x14 stages take panels).
BAND_WEIGHT_BYTES = 1 << 20
COLUMN_BAND_BYTES = 192 << 10  # a conv1d band's input columns (all channels) stay in L2 beside the weight


def activations_heavier(weight: Any, data: Any, out: Any, symbolic_height: bool) -> bool:
    """Whether a conv's activations outweigh its weight, so threads take bands of rows rather
    than channel panels. Over a dynamic image size the activations are unknown and each band
    re-reads the whole weight: bands only where the weight stays in L2 (BAND_WEIGHT_BYTES)."""
    if symbolic_height:
        return _nbytes(weight) <= BAND_WEIGHT_BYTES
    return _nbytes(weight) <= _nbytes(data) + _nbytes(out)


def _column_span(data_shape: list[Any], width: int, xr: int) -> int | None:
    """Column blocks per band of a conv without output rows (conv1d) whose activations outweigh
    its weight, or None: each thread takes bands of output columns over every channel panel, so
    a band's input (channels x its columns) is read from L2 once per panel. With channel panels
    outermost, a 256-channel 12800-long input (13 MB) streamed from memory once per panel:
    wav2vec2's 256 -> 256 stride-2 conv ran at 8% of peak."""
    channels = data_shape[1] if len(data_shape) == 3 and isinstance(data_shape[1], int) else None
    length = data_shape[-1] if isinstance(data_shape[-1], int) else SYMBOLIC_EXTENT
    if channels is None or width < 4 * xr:
        return None
    per_column = channels * 4 * max(1, length // max(width, 1))  # input bytes behind one output column
    return max(1, min(width // xr // 2, COLUMN_BAND_BYTES // (per_column * xr)))


L1_BYTES = 48 << 10  # a core's L1 data cache here (lscpu: 48 KiB)


def _conv1d_window(sch: s_tir.Schedule, anchor: Any, conv: ConvShape, xr: int) -> int | None:
    """How many input values one input channel of a conv1d feeds a block of xr output columns
    (stride * (xr - 1) + dilation * (taps - 1) + 1), None for other convs."""
    if conv.rows or len(conv.taps) != 1 or conv.taps[0] is None or conv.rc is None or _static(conv.taps[0]) is None:
        return None
    idx = sc.reads(sch, anchor.block_rv)[conv.data_index][1]
    coef = sym.detect_linear_equation(idx[-1], [conv.x.var, conv.taps[0].var])
    if len(coef) != 3 or not all(isinstance(c, tirx.IntImm) for c in coef[:2]):
        return None
    return int(coef[0]) * (xr - 1) + int(coef[1]) * (_static(conv.taps[0]) - 1) + 1


def _tap_order(window: int | None, channels: int | None, free: int) -> tuple[bool, bool]:
    """(taps outside the input channel loop, taps unrolled) for a conv1d whose block of columns
    reads `window` values of each of `channels` input channels, `free` vector registers left
    beside the tile.

    Taps inside, unrolled, each channel's window is read once, and LLVM keeps the values
    neighbouring taps share (tap 2 of column c is tap 0 of column c + 1 at stride 2) live across
    the taps: when the window outnumbers the free registers it spills them every step. Taps
    outside, each step broadcasts xr values and the block's windows over all channels are
    re-read once per tap, from L1 when they fit. Measured here at 1 thread (256 or 512
    channels, taps/stride, onnxruntime in brackets):
    - 3/2 over 12799 frames (window 17): inside 36.2 ms, outside 27.2 (26.4);
    - 2/2 (16): inside 20.8, outside 18.4;
    - 5/1 (12): inside unrolled 15.8, rolled 16.8, outside 18.1;
    - 3/1 (10): inside unrolled 11.4, rolled 11.9;
    - 10/5 with 512 channels (45, 92 KB of windows): inside rolled 169, unrolled 319, outside
      241 (134);
    - 3x3 2-D convs (a CRNN's, not conv1d): inside, unrolled or not, 2.4 ms; outside 2.8-3.1."""
    if window is None:
        return False, True
    spills = window > free
    return spills and channels is not None and channels * window * 4 <= L1_BYTES, not spills


class ConvBlocked:
    """Conv2d/conv1d NCHW with channel-blocked, register-blocked micro-kernel (see module doc)."""

    name = "ember.ConvBlocked"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        func = sc.narrow_indices(func)  # int32: a ragged last column block is split off
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None:
            return None
        sch, anchor = kernel.sch, kernel.anchor
        conv = match_conv(sch, anchor)
        if conv is None or conv.depthwise or _float_anchor(sch, anchor) is None:
            return None
        co, width = _static(conv.f), _static(conv.x)
        if co is None:
            return None
        # A symbolic output width (a dynamic sequence length or image width) is tiled as if it
        # were long, the last column block predicated (TVM's default code for such a conv ran
        # at 0.3% of peak: wav2vec2's feature encoder took 6.4 s instead of tens of ms).
        symbolic = width is None
        width = width if width is not None else SYMBOLIC_EXTENT
        dtype = _float_anchor(sch, anchor)
        lanes = sc.vector_lanes(target, dtype)
        group_width = co
        if conv.grouped:
            group_width = _group_width(sch, anchor, conv, co)
            if group_width is None:
                return None
        vec, nv, xr = _tile(target, group_width, width, lanes)
        # The accumulator tile stays under MAX_STACK_BYTES, which ember's lowering keeps on the
        # stack whatever its scope (as TVM's workspace, LLVM had stored every accumulator after
        # each FMA: wav2vec2's 256 -> 256 conv 123 -> 32 ms on the stack).
        stack_tile = symbolic and not conv.rows
        if stack_tile:
            xr = max(1, min(xr, sc.MAX_STACK_BYTES // (nv * vec * 4)))
        if conv.grouped and nv * vec > group_width:
            nv = 1
        if co % (nv * vec):
            nv = 1
        w_buf = sc.reads(sch, anchor.block_rv)[conv.weight_index][0]
        w_param = sc.param_index(func, w_buf)
        if w_param is None or w_param not in sc.layout_free(func):
            return None  # a weight computed at run time: not this rule's kind

        pads = [info for info in kernel.before]
        for info in pads:
            if _is_identity_pad(sch, info.block_rv):
                sch.compute_inline(info.block_rv)
        pads = [info for info in pads if sc._exists(sch, info.block_rv)]
        epilogue = sc.inline_epilogue(sch, kernel.after)

        sc.pack_weight(sch, anchor.block_rv, conv.weight_index, _pack_map(vec))
        rows = [r.loop_rv for r in conv.rows if r is not None]
        batch = [it.loop_rv for it in (conv.n, ) if it is not None]
        reds = [it.loop_rv for it in conv.reductions]
        taps_outside, unroll_taps = _tap_order(_conv1d_window(sch, anchor, conv, xr), _static(conv.rc) if conv.rc else None,
                                               sc.vector_registers(target) - nv * xr - nv)
        if taps_outside:
            reds = [*reds[1:], reds[0]]
        data_buf = sc.reads(sch, anchor.block_rv)[conv.data_index][0]
        out_buf = sch.get(anchor.block_rv).writes[0].source
        heavier = activations_heavier(w_buf, data_buf, out_buf, bool(conv.rows) and _static(conv.rows[0]) is None)
        fo, fv, fi = sch.split(conv.f.loop_rv, [None, nv, vec])
        span = _column_span(sc.buffer_shape(data_buf), width, xr) if not rows and heavier else None
        parts = _row_chunks(conv.rows[0] if conv.rows else None)
        if span is not None:  # conv1d over a long sequence: bands of columns (see _column_span)
            xb, xo, xi = sch.split(conv.x.loop_rv, [None, span, xr])
            if symbolic or (width % (span * xr) and sc.is_int32(sch, xo)):  # whole blocks, then the ragged one
                sch.annotate(xo, "pragma_loop_partition_hint", 1)  # (TVM 0.27 fails on static int64 loops)
            sch.reorder(*batch, xb, fo, xo, *reds, xi, fv, fi)
            # (bands x panels in parallel: a symbolic width's bands are sized for a long one,
            # and wav2vec2's 200-frame positional conv was one band, on one thread)
            outer_loops, banded = [*batch, xb, fo], True
        else:
            xo, xi = sch.split(conv.x.loop_rv, [None, xr])
            if symbolic or (width % xr and sc.is_int32(sch, xo)):  # whole column blocks, then the ragged one
                sch.annotate(xo, "pragma_loop_partition_hint", 1)
            if parts and heavier:
                # Activations outweigh the weight: each thread takes a band of rows, all channels
                # (see SPATIAL_CHUNKS); a panel's weights stay hot over the band's rows. (The
                # rows are split into bands below, after the write-back is placed.)
                sch.reorder(*batch, rows[0], fo, *rows[1:], xo, *reds, xi, fv, fi)
                outer_loops, banded = [], True
            else:  # the weight outweighs the activations: each thread takes channel panels
                banded = False
                outer_loops = batch + [fo] + rows
                sch.reorder(*outer_loops, xo, *reds, xi, fv, fi)
        acc = sch.cache_write(anchor.block_rv, 0, "global" if stack_tile else "local")
        sch.reverse_compute_at(acc, xo)
        # One (xr, nv * vec) tile, which every column block initializes, accumulates and writes
        # back before the next: compacted from the output's layout, a symbolic width left it a
        # symbolic size (min(xr, W - x)), so TVM made it heap workspace and LLVM stored every
        # accumulator after each FMA (a 64 -> 64 3x3 conv over a dynamic 80 x 80 image: 2.5x
        # slower than onnxruntime).
        sch.transform_layout(anchor.block_rv, ("write", 0), _tile_fold(sch, anchor, conv, xr, nv * vec), assume_injective_transform=True)
        if epilogue is not None:
            try:
                if not _same_shape(sch.get(epilogue).writes[0].source, out_buf):
                    # (an epilogue over part of the output, a channel slice: inlined, TVM 0.27
                    # kept only the slice's bound in the write-back's predicate and dropped the
                    # columns', writing past each row)
                    raise ValueError("the epilogue covers part of the output")
                sch.reverse_compute_inline(epilogue)
            except Exception:  # an epilogue that reshapes or slices: its own vectorized loop nest
                sc.vectorize_inner(sch, epilogue, lanes, sc.num_cores(target))
        if banded and not outer_loops:
            # Split into bands only now, so the write-back gets the split's row predicate too:
            # inlining the epilogue replaces the write-back's predicate with one that clips its
            # columns only, and the last band of a symbolic height (a conv whose output has
            # H - 2 rows) wrote rows past the output.
            yo, yi = sch.split(rows[0], [parts, None])
            sch.reorder(yo, fo, yi)
            outer_loops = [*batch, yo]
        sch.vectorize(fi)
        sch.unroll(xi)
        sch.unroll(fv)
        if conv.taps and conv.taps[-1] is not None and unroll_taps:  # (never with the taps outside)
            sch.unroll(conv.taps[-1].loop_rv)
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        sc.parallel(sch, outer)
        for info in pads:  # once per call: a pad at the tile would redo it per channel panel
            loops = sch.get_loops(info.block_rv)
            if banded and len(loops) in (3, 4) and rows:  # (n, c, y, x) -> (n, y, c, x): the threads' bands
                sch.reorder(*loops[:-3], loops[-2], loops[-3], loops[-1])
            _vectorize_row(sch, info.block_rv, lanes, parallel=True)
        if not _vectorize_writeback(sch, acc, xo, vec):
            _unroll_below(sch, acc, xo)
        sch.decompose_reduction(anchor.block_rv, reds[0])
        return sch


def _same_shape(a: Any, b: Any) -> bool:
    return len(a.shape) == len(b.shape) and all(sym.Analyzer().can_prove(x == y) for x, y in zip(a.shape, b.shape))


# Arithmetic operations per element above which a conv's epilogue is computed on vectors (GELU's
# erf polynomial: ~40); below, the write-back stays scalar stores along the output rows, which
# measured faster for bias + relu (a 12799-long conv1d: 31.6 ms scalar, 41 ms scattered).
HEAVY_EPILOGUE = 16


def _arith_ops(node: Any) -> int:
    """How many arithmetic nodes an expression (or a buffer store's value) holds."""
    if isinstance(node, tirx.BufferStore):
        return _arith_ops(node.value)
    args = getattr(node, "args", None)
    if args is not None:  # a call (tvm.ir.Call)
        return 1 + sum(_arith_ops(arg) for arg in args)
    children = [getattr(node, name, None) for name in ("a", "b", "value", "condition", "true_value", "false_value")]
    children = [c for c in children if c is not None and hasattr(c, "ty") and not isinstance(c, (int, float))]
    return (not isinstance(node, tirx.Cast) and bool(children)) + sum(_arith_ops(c) for c in children)


def _vectorize_writeback(sch: s_tir.Schedule, acc: Any, loop: Any, vec: int) -> bool:
    """The tile's write-back (registers to the NCW/NCHW output, its epilogue inlined) as vectors
    of `vec` channels per column: the epilogue's math runs on vectors, the stores scatter along
    the channel stride. Scalar, a GELU epilogue took a third of wav2vec2's conv time. Whether
    the loops had that form ((.., channels, columns) inside `loop`, channels a multiple of vec)."""
    loops = sch.get_loops(acc)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    inner = loops[at + 1:]
    if len(inner) != 2 or _arith_ops(sch.get(acc).body) < HEAVY_EPILOGUE:
        return False
    if not str(sch.get(acc).writes[0].source.ty.dtype).startswith("float"):
        return False  # a requantizing epilogue stays scalar: vector math moved its rounding by 1 near ties
    channels = sc.static_extent(sch, inner[0])
    if channels is None or channels % vec or sc.static_extent(sch, inner[1]) is None:
        return False
    sch.reorder(inner[1], inner[0])
    fo, fi = sch.split(inner[0], [None, vec])
    sch.unroll(inner[1])
    sch.unroll(fo)
    sch.vectorize(fi)
    return True


def _unroll_below(sch: s_tir.Schedule, block: Any, loop: Any) -> None:
    """Unroll the block's loops inside `loop` (the tile's write-back: registers to memory)."""
    loops = sch.get_loops(block)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    for inner in loops[at + 1:]:
        sch.unroll(inner)


def _vectorize_row(sch: s_tir.Schedule, block: Any, lanes: int, parallel: bool = False) -> None:
    """Vectorize a stage's innermost loop by `lanes` (a partial last vector is predicated);
    with `parallel`, its outer loops fused into one parallel loop."""
    loops = sch.get_loops(block)
    if parallel and len(loops) > 1:
        sc.parallel(sch, sch.fuse(*loops[:-1]))
        loops = sch.get_loops(block)
    extent = sc.static_extent(sch, loops[-1])
    if extent is None or extent < lanes // 2:
        return
    vec = lanes if extent >= lanes else lanes // 2
    outer, lane = sch.split(loops[-1], [None, vec])
    if extent % vec and sc.is_int32(sch, outer):
        sch.annotate(outer, "pragma_loop_partition_hint", 1)  # the ragged vector split off
    sch.vectorize(lane)


def _group_width(sch: s_tir.Schedule, anchor: Any, conv: ConvShape, co: int) -> int | None:
    """Output channels per group of a grouped conv, from the data's channel index
    `f // cog * cig + rc`; None when the index has another form."""
    found: list[int] = []

    def visit(node: Any) -> None:
        if isinstance(node, tirx.FloorDiv) and node.a.same_as(conv.f.var) and isinstance(node.b, tirx.IntImm):
            found.append(int(node.b))
        for child in (getattr(node, "a", None), getattr(node, "b", None)):
            if child is not None and hasattr(child, "same_as"):
                visit(child)

    visit(sc.reads(sch, anchor.block_rv)[conv.data_index][1][1])
    if len(found) != 1 or co % found[0]:
        return None
    return found[0]


@dataclass
class Window:
    """A sliding-window anchor without a channel reduction: depthwise conv or pooling."""

    c: Any  # IterInfo of the channel loop (None: one channel)
    n: Any  # IterInfo of the batch loop (None: batch 1)
    rows: list[Any]  # IterInfo of the output rows
    x: Any  # IterInfo of the output columns
    taps: list[Any]  # IterInfo of the window reductions present


def match_pool(sch: s_tir.Schedule, anchor: Any) -> Window | None:
    """`out[n, c, (y,) x] = reduce data[n, c, .., x*s + rx]`: pooling (max or sum), or None."""
    spatial = [it for it in anchor.iters if it.kind == "S"]
    reds = [it for it in anchor.iters if it.kind == "R"]
    (out, out_idx), = sc.writes(sch, anchor.block_rv)
    ins = [(buf, idx) for buf, idx in sc.reads(sch, anchor.block_rv) if not buf.same_as(out)]
    if len(out_idx) not in (3, 4) or len(ins) != 1 or not reds or len(anchor.iters) != len(spatial) + len(reds):
        return None
    out_iters = [None if _zero(e) else _find(spatial, _var(e)) for e in out_idx]
    if any(it is None and not _zero(e) for it, e in zip(out_iters, out_idx)):
        return None
    if len([it for it in out_iters if it is not None]) != len(spatial):
        return None
    n, c, *cols = out_iters
    cols = [it for it in cols if it is not None]
    if not cols:
        return None
    *rows, x = cols
    _, d_idx = ins[0]
    if len(d_idx) != len(out_idx) or not sc.uses(d_idx[-1], x.var):
        return None
    if c is not None and not (d_idx[1].same_as(c.var)):
        return None
    if any(sc.uses(d_idx[1], r.var) for r in reds):
        return None
    return Window(c, n, rows, x, reds)


def _row_tile(width: int, lanes: int) -> tuple[int, int]:
    """(vec, xb): vector width and vectors per register row along the output columns; their
    product divides `width` when some choice does (else the last row block is predicated)."""
    for vec in (lanes, lanes // 2, lanes // 4):
        if vec < 4 or width % vec:
            continue
        per = width // vec
        return vec, max(d for d in range(1, min(per, 8) + 1) if per % d == 0)
    vec = lanes if width >= lanes else max(4, lanes // 2)
    return vec, max(1, min(4, width // vec))


def _deinterleave(sch: s_tir.Schedule, anchor: Any, win: Window, pad: Any) -> None:
    """A window with column stride s > 1 reads every s-th padded column: a gather per vector
    of outputs and tap. The padded plane is laid out [.., y, x % s, x // s] instead, so each
    tap reads a contiguous run (x * s + rx -> (rx % s, x + rx // s)); the pad stage, iterating
    the new layout, writes contiguously and gathers each input element once."""
    (buf, idx), = [(b, i) for b, i in sc.reads(sch, anchor.block_rv) if b.same_as(sch.get(pad).writes[0].source)]
    coef = sym.detect_linear_equation(idx[-1], [win.x.var])
    stride = int(coef[0]) if len(coef) == 2 and isinstance(coef[0], tirx.IntImm) else 1
    width = sc.buffer_shape(buf)[-1]
    if stride < 2 or not isinstance(width, int) or width % stride:
        return

    def split_columns(*axes: Any) -> list[Any]:
        *outer, x = axes
        return [*outer, x % stride, x // stride]

    dtype = str(idx[-1].ty.dtype)
    sch.transform_layout(pad, ("write", 0), tirx.IndexMap.from_func(split_columns, ndim=len(idx), index_dtype=dtype))
    # (its iterations in the same order: the columns last, as (x % s, x // s))
    iters = len(sch.get(pad).iter_vars)
    sch.transform_block_layout(pad, tirx.IndexMap.from_func(split_columns, ndim=iters, index_dtype=dtype))


def schedule_window(sch: s_tir.Schedule, kernel: sc.Kernel, win: Window, lanes: int, cores: int) -> s_tir.Schedule:
    """Depthwise conv / pooling: parallel over (n, c), the padded plane of each channel built
    where it is read, a register row of xb vectors of output columns, the taps unrolled."""
    anchor = kernel.anchor
    pads = list(kernel.before)
    for info in pads:
        if _is_identity_pad(sch, info.block_rv):
            sch.compute_inline(info.block_rv)
    pads = [info for info in pads if sc._exists(sch, info.block_rv)]
    epilogue = sc.inline_epilogue(sch, kernel.after)
    for info in pads:
        _deinterleave(sch, anchor, win, info.block_rv)
    width = _static(win.x)
    vec, xb = _row_tile(width, lanes) if width else (lanes, 1)
    xo, xv, xl = sch.split(win.x.loop_rv, [None, xb, vec])
    if width is None:  # a symbolic width: whole vectors without a bound check, then the ragged one
        sch.annotate(xo, "pragma_loop_partition_hint", 1)
    rows = [r.loop_rv for r in win.rows if r is not None]
    taps = [t.loop_rv for t in win.taps]
    parts = _window_bands(win.rows[0] if rows else None)
    channel = [win.c.loop_rv] if win.c is not None else []
    batch = [win.n.loop_rv] if win.n is not None else []
    if parts and channel:
        yo, yi = sch.split(rows[0], [parts, None])
        sch.reorder(*batch, yo, *channel, yi, *rows[1:], xo, *taps, xv, xl)
        outer_loops, pad_at = [*batch, yo], channel[0]
    else:
        outer_loops = batch + channel
        sch.reorder(*outer_loops, *rows, xo, *taps, xv, xl)
        pad_at = None
    acc = sch.cache_write(anchor.block_rv, 0, "local")
    sch.reverse_compute_at(acc, xo)
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:
            sc.vectorize_inner(sch, epilogue, lanes, cores)
    sch.vectorize(xl)
    sch.unroll(xv)
    for tap in taps:
        sch.unroll(tap)
    if outer_loops:
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        sc.parallel(sch, outer)
        for info in pads:
            sch.compute_at(info.block_rv, pad_at if pad_at is not None else outer)
            _vectorize_row(sch, info.block_rv, lanes)
    else:
        for info in pads:
            _vectorize_row(sch, info.block_rv, lanes, parallel=True)
    wb = sch.get_loops(acc)
    inner = sc.static_extent(sch, wb[-1])
    if inner and inner % vec == 0:
        _, lane = sch.split(wb[-1], [None, vec])
        sch.vectorize(lane)
    sch.decompose_reduction(anchor.block_rv, taps[0])
    return sch


def _pad_block(sch: s_tir.Schedule, kernel: sc.Kernel, buffer: Any) -> Any | None:
    """The prologue block that writes `buffer` (the padded input), if any."""
    for info in kernel.before:
        if sch.get(info.block_rv).writes[0].source.same_as(buffer):
            return info.block_rv
    return None


def _channel_block_map(sch: s_tir.Schedule, pad: Any, vec: int) -> Any | None:
    """The pad stage's iterations (.., c, y, x) -> (.., c // vec, y, x, c % vec), or None when
    its iterations are not (c, y, x) last."""
    ivs = sch.get(pad).iter_vars
    if len(ivs) < 3:
        return None
    dtype = str(ivs[-1].var.ty.dtype)

    def channels_inner(*axes: Any) -> list[Any]:
        *outer, c, y, x = axes
        return [*outer, c // vec, y, x, c % vec]

    return tirx.IndexMap.from_func(channels_inner, ndim=len(ivs), index_dtype=dtype)


def schedule_depthwise_packed(sch: s_tir.Schedule, kernel: sc.Kernel, conv: ConvShape, vec: int,
                              lanes: int, regs: int) -> s_tir.Schedule | None:
    """Depthwise conv vectorized over channels: the padded input of each block of `vec`
    channels is built channel-innermost (the pad stage re-lays it out as it copies), the weight
    is packed [C/vec, KH, KW, vec] at compile time, and a register row of xr output columns x
    vec channels accumulates, so strided and narrow layers get full vectors too."""
    anchor = kernel.anchor
    d_buf, d_idx = sc.reads(sch, anchor.block_rv)[conv.data_index]
    if not d_idx[1].same_as(conv.f.var):
        return None  # a channel multiplier: the vector's lanes read other input channels
    pad = _pad_block(sch, kernel, d_buf)
    if pad is None or len(kernel.before) != 1:
        return None
    epilogue = sc.inline_epilogue(sch, kernel.after)
    sch.transform_layout(pad, ("write", 0), lambda n, c, y, x: (n, c // vec, y, x, c % vec))
    channel_block = _channel_block_map(sch, pad, vec)
    if channel_block is not None:  # the pad stage iterates channels innermost: vector stores
        sch.transform_block_layout(pad, channel_block)
    sc.pack_weight(sch, anchor.block_rv, conv.weight_index, _pack_map(vec))
    fo, fi = sch.split(conv.f.loop_rv, [None, vec])
    width = _static(conv.x)
    xr = _column_block(width if width is not None else SYMBOLIC_EXTENT, max(4, regs // 2))
    xo, xi = sch.split(conv.x.loop_rv, [None, xr])
    if width is None or (width % xr and sc.is_int32(sch, xo)):  # whole column blocks, then the ragged one
        sch.annotate(xo, "pragma_loop_partition_hint", 1)
    batch = [it.loop_rv for it in (conv.n,) if it is not None]
    rows = [r.loop_rv for r in conv.rows]
    taps = [t.loop_rv for t in conv.taps if t is not None]
    parts = _window_bands(conv.rows[0] if rows else None)
    if parts:
        yo, yi = sch.split(rows[0], [parts, None])
        sch.reorder(*batch, yo, fo, yi, *rows[1:], xo, *taps, xi, fi)
        outer_loops, pad_at = [*batch, yo], fo
    else:
        outer_loops, pad_at = batch + [fo], None
        sch.reorder(*outer_loops, *rows, xo, *taps, xi, fi)
    acc = sch.cache_write(anchor.block_rv, 0, "local")
    sch.reverse_compute_at(acc, xo)
    sch.transform_layout(anchor.block_rv, ("write", 0), _tile_fold(sch, anchor, conv, xr, vec), assume_injective_transform=True)
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:
            sc.vectorize_inner(sch, epilogue, lanes)
    sch.vectorize(fi)
    sch.unroll(xi)
    for tap in taps:
        sch.unroll(tap)
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    sc.parallel(sch, outer)
    sch.compute_at(pad, pad_at if pad_at is not None else outer)
    if channel_block is not None:
        lane = sch.get_loops(pad)[-1]
        if sc.static_extent(sch, lane) == vec:
            sch.vectorize(lane)
    _unroll_below(sch, acc, xo)
    sch.decompose_reduction(anchor.block_rv, taps[0])
    return sch


class Depthwise:
    """Depthwise conv (one input channel per output channel, any multiplier, stride, padding,
    dilation): vectorized along the output row, parallel over channels, epilogue fused."""

    name = "ember.Depthwise"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        func = sc.narrow_indices(func)  # int32: ragged rows get their last vector split off
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None:
            return None
        sch, anchor = kernel.sch, kernel.anchor
        conv = match_conv(sch, anchor)
        dtype = _float_anchor(sch, anchor)
        if conv is None or not conv.depthwise or dtype is None or not conv.taps:
            return None
        lanes = sc.vector_lanes(target, dtype)
        width, channels = _static(conv.x), _static(conv.f)  # (a symbolic width: rows of full vectors, the last predicated)
        vec = sc.largest_divisor(channels, [lanes, lanes // 2]) if channels else 1
        # Rows narrower than a vector waste lanes: vectorize over channels instead (measured:
        # 4-5x faster at 14x14 and 7x7; at 28 wide and over, the row schedule is faster).
        # A symbolic width (a dynamic image size) too: its rows vectorized over a predicated
        # width ran at 1-3% of peak (MobileNetV2 with dynamic H, W: depthwise 13.8 -> 4.9 ms).
        if vec >= 4 and (width is None or width < lanes):
            packed = schedule_depthwise_packed(sch, kernel, conv, vec, lanes, sc.vector_registers(target))
            if packed is not None:
                return packed
            kernel = sc.analyze(func)
            sch, anchor = kernel.sch, kernel.anchor
            conv = match_conv(sch, anchor)
        win = Window(conv.f, conv.n, conv.rows, conv.x, [t for t in conv.taps if t is not None])
        return schedule_window(sch, kernel, win, lanes, sc.num_cores(target))


class Pool:
    """Max/average pooling windows (with their padding stage): vectorized along the output
    row, parallel over channels; the average's division fused."""

    name = "ember.Pool"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        func = sc.narrow_indices(func)  # int32: ragged rows get their last vector split off
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None:
            return None
        sch, anchor = kernel.sch, kernel.anchor
        win = match_pool(sch, anchor)
        dtype = _float_anchor(sch, anchor)
        if win is None or dtype is None:
            return None
        return schedule_window(sch, kernel, win, sc.vector_lanes(target, dtype), sc.num_cores(target))


RULES = [ConvBlocked(), Depthwise(), Pool()]
CONV_RULES = RULES
