"""Emitters: resampling at computed positions, RoiAlign and GridSample, as hand-written TIR,
AffineGrid (the sampling grid of a spatial transformer) as one batched product, and
DeformConv as a kernel of bilinearly sampled columns and a matmul.

Each is one kernel generated as TVMScript per attribute combination (emitted into `main`,
marked scheduled), with the semantics of ember's reference (compiler/ops/nn_vision.py), whose
arithmetic it repeats step by step so rounding ties (nearest sampling) fall the same way:

    RoiAlign    parallel over (roi, block of CHANNELS channels): per bin and sample point the
                bilinear taps are computed once (f64, as the reference) and applied to every
                channel of the block; the sample count per bin is sampling_ratio or, for 0,
                ceil(roi size / bins) of each roi (a run-time loop extent); avg or max.
    GridSample  parallel over (image, every output axis but the last): the taps of CHUNK output
                positions of a row (index and weight per axis: 1 for nearest, 2 for linear,
                4 for cubic; padding folded in) are computed once and applied to every
                channel; 2-D and 3-D spatial (any rank, the kernel is generic).

Both compute in f32 (f64 for f64 inputs; f16/bf16 in f32, rounded once at the end, as the
reference does). A batch index of RoiAlign outside the input's batch is a run-time error.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

from ember.compiler.ir import Node
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    ScriptText,
    const,
    has_input,
    in_type,
    out_type,
    refuse,
)

KERNEL_ATTRS = 'T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})'
CHANNELS = 64  # RoiAlign: channels that share one computation of a bin's taps
CHUNK = 64  # GridSample: output positions whose taps are computed before the channel loop
FLOATS = ("f64", "f32", "f16", "bf16")


def _lit(value: float, dt: str) -> str:
    return f"T.{dt}({float(value)!r})"


def _compute_dtype(*dtypes: str) -> str:
    """f64 if any operand is f64, else f32 (f16/bf16 are computed in f32)."""
    return "float64" if "f64" in dtypes else "float32"


def _as(expr: relax.Expr, have: str, want: str) -> relax.Expr:
    """expr (of ember dtype `have`) as TVM dtype `want`."""
    return expr if TVM_DTYPE[have] == want else R.astype(expr, want)


def _result(lw: Lowering, y: relax.Expr, want: str, dt: str) -> relax.Expr:
    """The kernel's result (TVM dtype dt) as the node's output dtype `want` (ember's)."""
    return y if TVM_DTYPE[want] == dt else R.astype(lw.emit(y), TVM_DTYPE[want])


# --- RoiAlign ------------------------------------------------------------------------------------
def roi_align_source(attrs: dict[str, Any], dt: str, rois_dt: str) -> str:
    """The RoiAlign kernel: (x [n, c, h, w], rois [r, 4], batch_indices [r], y [r, c, PH, PW]).

    Per roi as the reference: box = rois * spatial_scale (- 0.5 for half_pixel), its size
    (at least 1 for output_half_pixel), bins of size / (PH, PW), in each bin a grid of
    sample points at (k + 0.5) / grid; a point beyond [-1, size] counts 0, others clamp to
    the edge pixel. A roi whose grid is empty (adaptive grid of a roi of size <= 0) gives 0."""
    ph, pw, ratio = int(attrs["output_height"]), int(attrs["output_width"]), int(attrs["sampling_ratio"])
    half = attrs["coordinate_transformation_mode"] == "half_pixel"
    avg = attrs["mode"] == "avg"
    scale = _lit(attrs["spatial_scale"], "float64")
    f64 = lambda v: _lit(v, "float64")  # noqa: E731
    w = ScriptText()
    w(0, "@T.prim_func(private=True)")
    w(0, "def roi_align(x_h: T.handle, rois_h: T.handle, idx_h: T.handle, y_h: T.handle):")
    w(1, KERNEL_ATTRS)
    for d in ("n", "c", "h", "w", "r"):
        w(1, f"{d} = T.int64()")
    w(1, f'x = T.match_buffer(x_h, (n, c, h, w), "{dt}")')
    w(1, f'rois = T.match_buffer(rois_h, (r, 4), "{rois_dt}")')
    w(1, 'bidx = T.match_buffer(idx_h, (r,), "int64")')
    w(1, f'y = T.match_buffer(y_h, (r, c, {ph}, {pw}), "{dt}")')
    # Checked before the parallel loop: an assert inside it does not reach the caller.
    w(1, "for i in range(r):")
    w(2, 'assert T.int64(0) <= bidx[i] and bidx[i] < n, "RoiAlign: a batch index is outside the input\'s batch"')
    w(1, f"for ib in T.parallel(r * ((c + T.int64({CHANNELS - 1})) // T.int64({CHANNELS}))):")
    w(2, f"i: T.int64 = ib // ((c + T.int64({CHANNELS - 1})) // T.int64({CHANNELS}))")
    w(2, f"c0: T.int64 = ib % ((c + T.int64({CHANNELS - 1})) // T.int64({CHANNELS})) * T.int64({CHANNELS})")
    w(2, f"cn: T.int64 = T.min(T.int64({CHANNELS}), c - c0)")
    w(2, "b: T.int64 = bidx[i]")
    off = f" - {f64(0.5)}" if half else ""
    for k, name in enumerate(("bx0", "by0", "bx1", "by1")):
        w(2, f'{name}: T.float64 = T.Cast("float64", rois[i, {k}]) * {scale}{off}')
    for axis, lo_, hi_ in (("h", "by0", "by1"), ("w", "bx0", "bx1")):
        size = f"{hi_} - {lo_}" if half else f"T.max({hi_} - {lo_}, {f64(1.0)})"  # malformed rois become 1x1
        w(2, f"roi_{axis}: T.float64 = {size}")
    w(2, f"bin_h: T.float64 = roi_h / {f64(ph)}")
    w(2, f"bin_w: T.float64 = roi_w / {f64(pw)}")
    if ratio > 0:
        w(2, f"gh: T.int64 = T.int64({ratio})")
        w(2, f"gw: T.int64 = T.int64({ratio})")
    else:  # adaptive: ceil(roi size / bins) sample points per bin and axis, per roi
        w(2, 'gh: T.int64 = T.Cast("int64", T.ceil(bin_h))')
        w(2, 'gw: T.int64 = T.Cast("int64", T.ceil(bin_w))')
    zero = _lit(0.0, dt)
    w(2, "if gh > T.int64(0) and gw > T.int64(0):")
    w(3, f'acc = T.decl_buffer(({CHANNELS},), "{dt}")')
    w(3, f"for p, q in T.grid({ph}, {pw}):")
    w(4, "for k in range(cn):")
    w(5, f"acc[k] = {zero if avg else f'T.min_value({dt!r})'}")

    def axis_taps(depth: int, a: str, start: str, bin_: str, cell: str, g: str, grid: str, size: str) -> None:
        """Bilinear taps {a}lo/{a}hi with weights {a}w0/{a}w1 of sample point g of bin `cell`."""
        w(depth, f'{a}pos0: T.float64 = {start} + T.Cast("float64", {cell}) * {bin_} + '
                 f'(T.Cast("float64", {g}) + {f64(0.5)}) * ({bin_} / T.Cast("float64", {grid}))')
        w(depth, f'{a}ok: T.float64 = T.if_then_else({a}pos0 >= {f64(-1.0)} and {a}pos0 <= T.Cast("float64", {size}), '
                 f'{f64(1.0)}, {f64(0.0)})')
        w(depth, f"{a}pos: T.float64 = T.max({a}pos0, {f64(0.0)})")
        w(depth, f'{a}lo: T.int64 = T.min(T.Cast("int64", T.floor({a}pos)), {size} - T.int64(1))')
        w(depth, f"{a}hi: T.int64 = T.min({a}lo + T.int64(1), {size} - T.int64(1))")
        w(depth, f'{a}fr: T.float64 = T.if_then_else({a}lo >= {size} - T.int64(1), {f64(0.0)}, {a}pos - T.Cast("float64", {a}lo))')
        w(depth, f"{a}w0: T.float64 = ({f64(1.0)} - {a}fr) * {a}ok")
        w(depth, f"{a}w1: T.float64 = {a}fr * {a}ok")

    w(4, "for gy in range(gh):")
    axis_taps(5, "y", "by0", "bin_h", "p", "gy", "gh", "h")
    w(5, "for gx in range(gw):")
    axis_taps(6, "x", "bx0", "bin_w", "q", "gx", "gw", "w")
    combos = [("ylo", "xlo", "yw0", "xw0"), ("ylo", "xhi", "yw0", "xw1"), ("yhi", "xlo", "yw1", "xw0"), ("yhi", "xhi", "yw1", "xw1")]
    terms = []
    for k, (yi, xi, wy, wx) in enumerate(combos):
        w(6, f'k{k}: T.{dt} = T.Cast("{dt}", {wy} * {wx})')
        terms.append(f"x[b, c0 + k, {yi}, {xi}] * k{k}")
    w(6, "for k in range(cn):")
    if avg:
        w(7, f"acc[k] = acc[k] + (((({terms[0]}) + ({terms[1]})) + ({terms[2]})) + ({terms[3]}))")
    else:
        w(7, f"acc[k] = T.max(acc[k], T.max(T.max(T.max({terms[0]}, {terms[1]}), {terms[2]}), {terms[3]}))")
    w(4, "for k in range(cn):")
    if avg:
        w(5, f'y[i, c0 + k, p, q] = acc[k] / T.Cast("{dt}", gh * gw)')
    else:
        w(5, "y[i, c0 + k, p, q] = acc[k]")
    w(2, "else:")
    w(3, f"for k, p, q in T.grid(cn, {ph}, {pw}):")
    w(4, f"y[i, c0 + k, p, q] = {zero}")
    return w.source()


def _roi_align(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    xt, rt, yt = in_type(lw, node, 0), in_type(lw, node, 1), out_type(node)
    if xt.dtype not in FLOATS or rt.dtype not in FLOATS:
        raise refuse(node, f"{xt.dtype} data / {rt.dtype} rois")
    dt = _compute_dtype(xt.dtype)
    func = tvm.script.from_source(roi_align_source(dict(node.attrs), dt, TVM_DTYPE[rt.dtype]))
    gvar = lw.bb.add_func(func, "roi_align")
    y = relax.call_tir(gvar, relax.Tuple([_as(a[0], xt.dtype, dt), a[1], a[2]]), relax.TensorType(lw.shape(yt), dt))
    return [_result(lw, y, yt.dtype, dt)]


# --- GridSample ----------------------------------------------------------------------------------
TAPS = {"nearest": 1, "linear": 2, "cubic": 4}


def _reflect_lines(w: ScriptText, depth: int, p: str, v: str, lo: str, hi: str, span: str, dt: str) -> str:
    """Lines reflecting `v` at lo / hi until it lies in [lo, hi] (the reference's _reflect);
    returns the name of the result."""
    two, half, zero = _lit(2.0, dt), _lit(0.5, dt), _lit(0.0, dt)
    w(depth, f"{p}d: T.{dt} = T.if_then_else({v} < {lo}, {lo} - {v}, {v} - {hi})")
    w(depth, f"{p}f: T.{dt} = T.floor({p}d / {span})")
    w(depth, f"{p}r: T.{dt} = {p}d - {p}f * {span}")
    w(depth, f"{p}e: T.bool = T.floor({p}f * {half}) * {two} == {p}f")
    inside = (f"T.if_then_else({v} < {lo}, T.if_then_else({p}e, {lo} + {p}r, {hi} - {p}r), "
              f"T.if_then_else({p}e, {hi} - {p}r, {lo} + {p}r))")
    w(depth, f"{p}v: T.{dt} = T.if_then_else({span} <= {zero}, {lo}, "
             f"T.if_then_else({v} < {lo} or {v} > {hi}, {inside}, {v}))")
    return f"{p}v"


def grid_sample_source(nd: int, attrs: dict[str, Any], dt: str) -> str:
    """The GridSample kernel: (x [nb, c, *d], grid [nb, *o, nd], y [nb, c, *o]).

    ti / tw hold, for each of a chunk's positions, axis and tap, the (clamped) input index
    and the weight (0 for a tap outside the input with zeros padding)."""
    mode, padding, align = attrs["mode"], attrs["padding_mode"], bool(attrs["align_corners"])
    taps = TAPS[mode]
    L = lambda v: _lit(v, dt)  # noqa: E731
    d = [f"d{i}" for i in range(nd)]
    o = [f"o{i}" for i in range(nd)]
    w = ScriptText()
    w(0, "@T.prim_func(private=True)")
    w(0, "def grid_sample(x_h: T.handle, g_h: T.handle, y_h: T.handle):")
    w(1, KERNEL_ATTRS)
    for name in ("nb", "c", *d, *o):
        w(1, f"{name} = T.int64()")
    w(1, f'x = T.match_buffer(x_h, (nb, c, {", ".join(d)}), "{dt}")')
    w(1, f'g = T.match_buffer(g_h, (nb, {", ".join(o)}, {nd}), "{dt}")')
    w(1, f'y = T.match_buffer(y_h, (nb, c, {", ".join(o)}), "{dt}")')
    rows = " * ".join(["nb", *o[:-1]])
    w(1, f"for row in T.parallel({rows}):")
    rest = "row"
    for i in range(nd - 2, -1, -1):  # row = ((b * o0 + p0) * o1 + p1) ...
        w(2, f"p{i}: T.int64 = {rest} % {o[i]}")
        w(2, f"r{i}: T.int64 = {rest} // {o[i]}")
        rest = f"r{i}"
    w(2, f"b: T.int64 = {rest}")
    per = nd * taps
    w(2, f'ti = T.decl_buffer(({CHUNK * per},), "int64")')
    w(2, f'tw = T.decl_buffer(({CHUNK * per},), "{dt}")')
    last = o[-1]
    w(2, f"for jc in range(({last} + T.int64({CHUNK - 1})) // T.int64({CHUNK})):")
    w(3, f"m: T.int64 = T.min(T.int64({CHUNK}), {last} - jc * T.int64({CHUNK}))")
    w(3, "for j in range(m):")
    at = ", ".join(["b", *(f"p{i}" for i in range(nd - 1)), f"jc * T.int64({CHUNK}) + j"])
    for ax in range(nd):
        _grid_axis(w, 4, ax, f"g[{at}, {nd - 1 - ax}]", d[ax], mode, padding, align, dt, taps, per, L)
    # The sum over tap combinations in the reference's order, each value times the product of
    # its axes' weights.
    terms = []
    for combo in itertools.product(range(taps), repeat=nd):
        slots = [f"(j * {per} + {ax * taps + k})" for ax, k in enumerate(combo)]
        index = ", ".join(f"ti[{s}]" for s in slots)
        weight = f"tw[{slots[0]}]"
        for s in slots[1:]:
            weight = f"({weight} * tw[{s}])"
        terms.append(f"x[b, ch, {index}] * {weight}")
    total = terms[0]
    for t in terms[1:]:
        total = f"({total} + {t})"
    w(3, "for ch, j in T.grid(c, m):")
    out_at = ", ".join(["b", "ch", *(f"p{i}" for i in range(nd - 1)), f"jc * T.int64({CHUNK}) + j"])
    w(4, f"y[{out_at}] = {total}")
    return w.source()


def _grid_axis(w: ScriptText, depth: int, ax: int, coord: str, size: str, mode: str, padding: str, align: bool, dt: str,
               taps: int, per: int, L: Any) -> None:
    """Lines filling ti / tw for axis `ax` of position j from its normalized coordinate."""
    a = f"a{ax}"
    w(depth, f"{a}s: T.{dt} = T.Cast({dt!r}, {size})")
    w(depth, f"{a}m: T.{dt} = T.Cast({dt!r}, {size} - T.int64(1))")
    if align:  # the corner pixels' centers at -1 and 1
        w(depth, f"{a}x0: T.{dt} = ({coord} + {L(1)}) / {L(2)} * {a}m")
        lo, hi, span = L(0), f"{a}m", f"{a}m"
    else:  # the corner pixels' outer edges at -1 and 1
        w(depth, f"{a}x0: T.{dt} = (({coord} + {L(1)}) * {a}s - {L(1)}) / {L(2)}")
        lo, hi, span = L(-0.5), f"({a}s - {L(0.5)})", f"{a}s"
    v = f"{a}x0"
    if mode == "nearest":  # half to even, as PyTorch
        w(depth, f"{a}x1: T.{dt} = T.nearbyint({v})")
        v = f"{a}x1"
    # Linear and nearest pad the coordinate, then each tap; cubic pads only its taps.
    if padding == "border" and mode != "cubic":
        w(depth, f"{a}x2: T.{dt} = T.if_then_else({v} < {lo} or {v} > {hi}, T.min(T.max({v}, {L(0)}), {a}m), {v})")
        v = f"{a}x2"
    elif padding == "reflection" and mode != "cubic":
        v = _reflect_lines(w, depth, f"{a}c", v, lo, hi, span, dt)
    if mode == "nearest":
        positions = [(f"T.trunc({v})", L(1))]
    else:
        w(depth, f"{a}fl: T.{dt} = T.floor({v})")
        w(depth, f"{a}t: T.{dt} = {v} - {a}fl")
        if mode == "linear":
            positions = [(f"{a}fl", f"{L(1)} - {a}t"), (f"{a}fl + {L(1)}", f"{a}t")]
        else:  # Keys cubic convolution (alpha = -0.75) at distances t + 1, t, 1 - t, 2 - t
            positions = []
            for k, dist in enumerate((f"{a}t + {L(1)}", f"{a}t", f"{L(1)} - {a}t", f"{L(2)} - {a}t")):
                q = f"{a}q{k}"
                w(depth, f"{q}: T.{dt} = {dist}")
                near = f"(({L(1.25)} * {q} - {L(2.25)}) * {q} * {q} + {L(1)})"
                far = f"((({L(-0.75)} * {q} - {L(-3.75)}) * {q} + {L(-6.0)}) * {q} - {L(-3.0)})"
                w(depth, f"{a}wc{k}: T.{dt} = T.if_then_else(T.fabs({q}) <= {L(1)}, {near}, {far})")
                positions.append((f"{a}fl + {L(k - 1)}", f"{a}wc{k}"))
    for k, (pos, weight) in enumerate(positions):
        slot = f"j * {per} + {ax * taps + k}"
        p = f"{a}k{k}"
        w(depth, f'{p}i: T.int64 = T.Cast("int64", {pos})')
        if padding == "reflection":
            r = _reflect_lines(w, depth, f"{p}r", f'T.Cast({dt!r}, {p}i)', lo, hi, span, dt)
            w(depth, f'{p}j: T.int64 = T.Cast("int64", T.trunc({r}))')
            index = f"{p}j"
        else:
            index = f"{p}i"
        w(depth, f"ti[{slot}] = T.min(T.max({index}, T.int64(0)), {size} - T.int64(1))")
        if padding == "zeros":
            w(depth, f"tw[{slot}] = T.if_then_else({index} >= T.int64(0) and {index} < {size}, {weight}, {L(0)})")
        else:
            w(depth, f"tw[{slot}] = {weight}")


def _grid_sample(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    xt, gt, yt = in_type(lw, node, 0), in_type(lw, node, 1), out_type(node)
    if xt.dtype not in FLOATS or gt.dtype not in FLOATS:
        raise refuse(node, f"{xt.dtype} data / {gt.dtype} grid")
    dt = _compute_dtype(xt.dtype, gt.dtype)
    nd = xt.rank - 2
    func = tvm.script.from_source(grid_sample_source(nd, dict(node.attrs), dt))
    gvar = lw.bb.add_func(func, "grid_sample")
    y = relax.call_tir(gvar, relax.Tuple([_as(a[0], xt.dtype, dt), _as(a[1], gt.dtype, dt)]), relax.TensorType(lw.shape(yt), dt))
    return [_result(lw, y, yt.dtype, dt)]


def _affine_grid(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """grid[n, *p, :] = theta[n] @ (x, y[, z], 1) at each output position p: the positions'
    homogeneous coordinates are a constant [P, n + 1] (x along the last axis; pixel centres,
    or with align_corners the corner pixels' centres at -1 and 1), one batched product with
    theta's transpose, reshaped to [N, *size, n]. The size's spatial part must be known when
    compiling (a constant, or a static image's Shape; its batch may be symbolic)."""
    t = out_type(node)
    spatial = list(t.shape[1:-1])
    if not all(isinstance(d, int) for d in spatial):
        raise refuse(node, f"a sampling grid of symbolic size {spatial}")
    from ember.compiler.ops.nn_vision import affine_base

    base = affine_base(spatial, bool(node.attrs["align_corners"])).reshape(-1, len(spatial) + 1)
    grid = R.matmul(const(base.astype(t.np_dtype)), R.permute_dims(a[0], [0, 2, 1]))  # [N, P, n]
    return [R.reshape(grid, lw.shape(t))]


def _schedule_columns(lw: Lowering, gvar: Any, channels: int) -> None:
    """The column kernel [N, g, P, taps, C/g] scheduled here (no rule reads a gather well):
    pixels in parallel, a pixel's taps in turn, its channels as vectors."""
    from tvm import s_tir

    from ember.targets import sched_common as sc

    sch = s_tir.Schedule(lw.bb.get()[gvar])
    block = sch.get_sblock("deform_columns")
    b, gi, pixel, _, c = sch.get_loops(block)
    sch.parallel(sch.fuse(b, gi, pixel))
    target = tvm.target.Target.current(allow_none=True)
    lanes = sc.vector_lanes(target, "float32") if target is not None else 4
    vec = sc.largest_divisor(channels, [lanes, lanes // 2, lanes // 4])
    if vec > 1:
        sch.vectorize(sch.split(c, [None, vec])[1])
    lw.bb.update_func(gvar, sch.mod["main"].with_attr("tirx.is_scheduled", True))


def _deform_conv(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """A 2-d deformable conv (DCN v1, and v2 with a mask) as three kernels: the sample points
    (per offset group, tap and output pixel: the tap's place on the kernel grid plus its
    offset, as four corners' flat indices and bilinear weights, zero outside the image, times
    the mask), the columns cols[n, group, pixel, tap, c] (every channel of an offset group
    reads the same points; channels innermost, so each corner is a vector), then their
    product with the weight per group, [N, g, OH * OW, taps * C/g] x [g, taps * C/g, O/g],
    which the matmul rule schedules, transposed to [N, O, OH, OW]; then the bias."""
    at = node.attrs
    k = list(at["kernel_shape"])
    if len(k) != 2:
        raise refuse(node, f"a {len(k)}-d deformable convolution")
    x_t, y_t = in_type(lw, node, 0), out_type(node)
    cin, oc = x_t.shape[1], y_t.shape[1]
    if not isinstance(cin, int) or not isinstance(oc, int):
        raise refuse(node, f"a symbolic channel count ({x_t} -> {y_t})")
    g, og = int(at["group"]), int(at["offset_group"])
    (kh, kw), (sy, sx), (dy, dx) = k, at["strides"], at["dilations"]
    top, left = at["pads"][0], at["pads"][1]
    taps = kh * kw
    dt = _compute_dtype(x_t.dtype)
    mask = has_input(node, 4)
    operands = [_as(a[0], x_t.dtype, dt), _as(a[2], in_type(lw, node, 2).dtype, dt)]
    if mask:
        operands.append(_as(a[4], in_type(lw, node, 4).dtype, dt))
    shape = lw.shape(y_t)
    per_group = cin // og
    corners = 4  # (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1): corner k at (y0 + k // 2, x0 + k % 2)

    def sample_points(x: te.Tensor, offset: te.Tensor, *scale: te.Tensor) -> list[te.Tensor]:
        """Per offset group, tap, corner and output pixel: the corner's flat index in the image
        (clamped inside it) and its bilinear weight (zero outside the image, times the mask)."""
        h, w = x.shape[2], x.shape[3]

        def point(b: Any, q: Any, t: Any, oy: Any, ox: Any) -> tuple[Any, Any, Any, Any]:
            py = (oy * sy - top + t // kw * dy).astype(dt) + offset[b, (q * taps + t) * 2, oy, ox]
            px = (ox * sx - left + t % kw * dx).astype(dt) + offset[b, (q * taps + t) * 2 + 1, oy, ox]
            fy, fx = tirx.floor(py), tirx.floor(px)
            return fy.astype("int64"), fx.astype("int64"), py - fy, px - fx

        def index(b: Any, q: Any, t: Any, k: Any, oy: Any, ox: Any) -> Any:
            y0, x0, _, _ = point(b, q, t, oy, ox)
            yi, xi = y0 + k // 2, x0 + k % 2
            return tirx.max(tirx.min(yi, h - 1), 0) * w + tirx.max(tirx.min(xi, w - 1), 0)

        def weight(b: Any, q: Any, t: Any, k: Any, oy: Any, ox: Any) -> Any:
            y0, x0, wy, wx = point(b, q, t, oy, ox)
            yi, xi = y0 + k // 2, x0 + k % 2
            one = tirx.const(1, dt)
            value = tirx.if_then_else(k // 2 == 1, wy, one - wy) * tirx.if_then_else(k % 2 == 1, wx, one - wx)
            if scale:
                value = value * scale[0][b, q * taps + t, oy, ox]
            inside = tirx.all(yi >= 0, yi < h, xi >= 0, xi < w)
            return tirx.if_then_else(inside, value, tirx.const(0, dt))

        grid = [shape[0], og, taps, corners, shape[2], shape[3]]
        return [te.compute(grid, index, name="deform_index"), te.compute(grid, weight, name="deform_weight")]

    cg = cin // g

    def columns(last: te.Tensor, index: te.Tensor, weight: te.Tensor) -> te.Tensor:
        """cols[n, group, pixel, tap, c]: the four corners' weighted sum, channels innermost
        (read from a channels-last copy of x, each corner a run of contiguous channels)."""

        def sample(b: Any, gi: Any, pixel: Any, t: Any, c: Any) -> Any:
            channel = gi * cg + c
            q = channel // per_group
            oy, ox = pixel // shape[3], pixel % shape[3]
            return sum((weight[b, q, t, k, oy, ox] * last[b, index[b, q, t, k, oy, ox], channel] for k in range(corners)),
                       tirx.const(0, dt))

        return te.compute([shape[0], g, shape[2] * shape[3], taps, cg], sample, name="deform_columns")

    points = lw.emit(lw.kernels.call_te(sample_points, *operands, primfunc_name_hint="deform_points"))
    x_shape = lw.shape(x_t)
    last = lw.emit(R.reshape(R.permute_dims(operands[0], [0, 2, 3, 1]), [x_shape[0], x_shape[2] * x_shape[3], cin]))
    call = lw.kernels.call_te(columns, last, lw.emit(relax.TupleGetItem(points, 0)), lw.emit(relax.TupleGetItem(points, 1)),
                         primfunc_name_hint="deform_columns")
    _schedule_columns(lw, call.args[0], cg)
    cols = lw.emit(call)
    cols = R.reshape(cols, [shape[0], g, shape[2] * shape[3], taps * cg])  # [N, g, P, K]
    weight = lw.const_of(node.inputs[1])
    if weight is not None:  # [O, C/g, kh, kw] -> [g, K, O/g], K in (tap, channel) order
        packed = np.asarray(weight).reshape(g, oc // g, cg, taps).transpose(0, 3, 2, 1).reshape(g, taps * cg, oc // g)
        weight_expr = const(np.ascontiguousarray(packed).astype(np.dtype(dt)))
    else:
        w_in = R.reshape(_as(a[1], in_type(lw, node, 1).dtype, dt), [g, oc // g, cg, taps])
        weight_expr = R.reshape(R.permute_dims(w_in, [0, 3, 2, 1]), [g, taps * cg, oc // g])
    y = R.matmul(cols, weight_expr)  # [N, g, P, O/g]
    y = R.reshape(R.permute_dims(y, [0, 1, 3, 2]), shape)
    if has_input(node, 3):
        y = R.add(y, R.reshape(_as(a[3], in_type(lw, node, 3).dtype, dt), [1, oc, 1, 1]))
    return [_result(lw, y, y_t.dtype, dt)]


EMITTERS: dict[str, Emitter] = {"RoiAlign": _roi_align, "GridSample": _grid_sample, "AffineGrid": _affine_grid,
                                "DeformConv": _deform_conv}
