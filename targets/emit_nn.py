"""Emitters for the anchor ops: convolution, pooling, matrix products, attention, resize.

Layouts are ONNX's (NCHW data, OIHW weights). `auto_pad` is resolved to explicit pads from the
inferred static shapes. Gemm with a constant transposed weight pre-transposes it at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ember.compiler.ir import Node, TensorType
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    R,
    const,
    in_type,
    out_type,
    refuse,
    scalar,
)
from ember.targets.emit_shape import depth_to_space

_LAYOUTS = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def conv_pads(node: Node, x: TensorType, y: TensorType) -> list[int]:
    """Explicit pads [begin..., end...]: from `pads`, or computed for auto_pad from static shapes."""
    at = node.attrs
    n = len(at["kernel_shape"])
    mode = at.get("auto_pad", "NOTSET") or "NOTSET"
    if mode == "NOTSET":
        return list(at["pads"])
    if mode == "VALID":
        return [0] * (2 * n)
    dims_in, dims_out = x.shape[2:], y.shape[2:]
    if not all(isinstance(d, int) for d in (*dims_in, *dims_out)):
        raise refuse(node, f"auto_pad={mode} with symbolic spatial dims")
    dilations = at.get("dilations") or [1] * n
    begin, end = [], []
    for i in range(n):
        full = (dims_out[i] - 1) * at["strides"][i] + (at["kernel_shape"][i] - 1) * dilations[i] + 1
        total = max(full - dims_in[i], 0)
        low = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begin.append(low)
        end.append(total - low)
    return begin + end


def _bias(y: relax.Expr, bias: relax.Expr | None, spatial: int) -> relax.Expr:
    return y if bias is None else R.add(y, R.reshape(bias, [1, -1] + [1] * spatial))


POINTWISE_MIN_PIXELS = 64  # fewer pixels than this per image stay a convolution
POINTWISE_PIXEL_MULTIPLE = 16  # whole vectors of pixels (padded rows measured 4% slower overall)
# Input channels below which the conv rule stays faster (MobileNetV2 at 1 thread: 16 channels
# into 96 at 112x112 took 1.12 ms as a matmul against 0.83 ms; 24 into 144 at 56x56, 0.29 ms
# against 0.83 ms).
POINTWISE_MIN_CHANNELS = 24


def _pointwise_as_matmul(node: Node, x: TensorType, w: TensorType, pads: list[int]) -> bool:
    """A float 1x1 convolution with unit strides, no padding and one group is a matrix product
    of the weight [CO, CI] by each image [CI, H*W]; it is lowered as one (the matmul rule then
    vectorizes along the pixels and writes NCHW rows directly) when the image has at least
    POINTWISE_MIN_PIXELS pixels, a whole number of vectors of them, and enough input channels
    (a 7x7 map has too few pixels for whole vectors; see the constants for what was measured)."""
    at = node.attrs
    if any(k != 1 for k in at["kernel_shape"]) or any(s != 1 for s in at["strides"]) or any(pads) or at["group"] != 1:
        return False
    if x.dtype not in ("f32", "f16", "bf16") or not all(isinstance(d, int) for d in (*x.shape[2:], *w.shape[:2])):
        return False
    pixels = int(np.prod(x.shape[2:]))
    return (pixels >= POINTWISE_MIN_PIXELS and pixels % POINTWISE_PIXEL_MULTIPLE == 0
            and w.shape[1] >= POINTWISE_MIN_CHANNELS)


def _conv(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    n = len(at["kernel_shape"])
    fn = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}.get(n)
    if fn is None:
        raise refuse(node, f"{n}-d convolution")
    data_layout, kernel_layout = _LAYOUTS[n]
    x_t, w_t, y_t = in_type(lw, node, 0), in_type(lw, node, 1), out_type(node)
    pads = conv_pads(node, x_t, y_t)
    if _pointwise_as_matmul(node, x_t, w_t, pads):
        # W[CO, CI] @ X[N, CI, H*W]: vectors along the image row, stored straight into NCHW
        shape = lw.shape(x_t)
        w2 = R.reshape(a[1], [w_t.shape[0], w_t.shape[1]])
        y = R.reshape(R.matmul(w2, R.reshape(a[0], [shape[0], shape[1], -1])), lw.shape(y_t))
        return [_bias(y, a[2] if len(a) > 2 else None, n)]
    weight, channels = a[1], _padded_channels(lw, node, w_t)
    if channels is not None:
        w = lw.const_of(node.inputs[1])
        weight = const(np.concatenate([w, np.zeros((channels - w.shape[0], *w.shape[1:]), w.dtype)]))
    y = fn(a[0], weight, strides=list(at["strides"]), padding=pads,
           dilation=list(at["dilations"]), groups=at["group"], data_layout=data_layout, kernel_layout=kernel_layout)
    if channels is not None:
        y = R.strided_slice(y, axes=[1], begin=[0], end=[int(w_t.shape[0])])
    return [_bias(y, a[2] if len(a) > 2 else None, n)]


# A float conv whose output channels no half vector divides (a detection head's 3x3 conv to 27
# or 36 channels, a DCN's offsets) ran scalar in sched_conv.ConvBlocked: a 3x3 256 -> 27 conv
# at 56 x 56 took 16.2 ms (24 GFLOP/s). Its weight is padded with zero channels at compile time
# to whole vectors of this many lanes (AVX-512's; a multiple of AVX2's and NEON's) and the
# output sliced: 4.1-4.3 ms.
PAD_CHANNELS_TO = 16


def _padded_channels(lw: Lowering, node: Node, w: TensorType) -> int | None:
    """The output channel count to compute this conv with, None to keep its own: padded where
    it has one group, a constant float weight, at least PAD_CHANNELS_TO output channels and no
    half vector of them."""
    co = w.shape[0]
    if (node.attrs["group"] != 1 or w.dtype != "f32" or not isinstance(co, int) or co < PAD_CHANNELS_TO
            or co % (PAD_CHANNELS_TO // 2) == 0 or lw.const_of(node.inputs[1]) is None):
        return None
    return -(-co // PAD_CHANNELS_TO) * PAD_CHANNELS_TO


def _conv_transpose(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    n = len(at["kernel_shape"])
    if n not in (1, 2) or at.get("output_shape") is not None or (at.get("auto_pad") or "NOTSET") != "NOTSET":
        raise refuse(node, "a 3-d transposed convolution, output_shape or auto_pad")
    if _unshuffled(lw, node):
        return [_conv_transpose_unshuffled(lw, node, a)]
    fn = R.nn.conv1d_transpose if n == 1 else R.nn.conv2d_transpose
    y = fn(a[0], a[1], strides=list(at["strides"]), padding=list(at["pads"]), output_padding=list(at["output_padding"]),
           dilation=list(at["dilations"]), groups=at["group"], data_layout=_LAYOUTS[n][0], kernel_layout=_LAYOUTS[n][1].replace("OI", "IO"))
    return [_bias(y, a[2] if len(a) > 2 else None, n)]


def _unshuffled(lw: Lowering, node: Node) -> bool:
    """A 2-d transposed conv whose kernel is its stride (no padding, dilation, output padding or
    groups; a constant float weight): each input pixel makes its own kh x kw output tile. The
    upsampling of a U-Net, an FPN or a DBNet head."""
    at, w = node.attrs, lw.const_of(node.inputs[1])
    return (len(at["kernel_shape"]) == 2 and list(at["kernel_shape"]) == list(at["strides"]) and at["group"] == 1
            and not any(at["pads"]) and not any(at["output_padding"]) and all(d == 1 for d in at["dilations"])
            and w is not None and w.dtype == np.float32 and in_type(lw, node, 0).dtype == "f32")


def _conv_transpose_unshuffled(lw: Lowering, node: Node, a: list[Any]) -> relax.Expr:
    """y[n, co, i*kh + u, j*kw + v] = sum_ci x[n, ci, i, j] W[ci, co, u, v]: a 1x1 conv to CO*kh*kw
    channels (the conv rules' code), then each pixel's kh x kw channels moved into its tile
    (DepthToSpace). TOPI's form dilates the input with zeros, pads it and runs a scalar conv over
    it, parallel over the batch only: PP-OCRv4's detector head at 640 x 640, 24 -> 24 channels
    to 320 x 320, took 177 ms a call; so, 19 ms."""
    w = lw.const_of(node.inputs[1])
    ci, co, kh, kw = w.shape
    w2 = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(co * kh * kw, ci, 1, 1))
    z = R.nn.conv2d(a[0], const(w2), strides=[1, 1], padding=[0, 0, 0, 0], data_layout="NCHW", kernel_layout="OIHW")
    y = depth_to_space(lw, z, (kh, kw), "CRD", lw.shape(out_type(node)))
    return _bias(y, a[2] if len(a) > 2 else None, 2)


def floor_end_pads(node: Node, x: TensorType, y: TensorType, pads: list[int]) -> list[int] | None:
    """End pads with which a floor-mode window yields this ceil-mode pool's output, window for
    window, or None where that is not known before run time.

    A ceil-mode count is a floor-mode count over an input padded at its end for one more
    window: stride - 1 more elements. ONNX drops that last window where it would start in the
    end pad, which a symbolic size can only tell at run time; it cannot happen where
    end pad + stride <= the window's span. A static size's end pad is exact: what the last
    output window reaches, never negative. (TVM keeps ceil mode as an `if_then_else` in the
    output's shape, which a kernel over a symbolic size cannot be built with.)"""
    at = node.attrs
    n = len(at["kernel_shape"])
    dilations = at.get("dilations") or [1] * n
    end = []
    for i in range(n):
        size, out, s = x.shape[2 + i], y.shape[2 + i], at["strides"][i]
        span = (at["kernel_shape"][i] - 1) * dilations[i] + 1
        if isinstance(size, int) and isinstance(out, int):
            end.append(max((out - 1) * s + span - size - pads[i], 0))
        elif pads[n + i] + s <= span:
            end.append(pads[n + i] + s - 1)
        else:
            return None
    return end


@dataclass
class PoolWindow:
    """How a pool runs: its input (padded here where its pads must count but its ceil-mode
    overhang must not), pads [begin..., end...], ceil mode, and whether pads count in an average."""
    x: relax.Expr
    pads: list[int]
    ceil: bool
    include_pad: bool


def pool_window(node: Node, x_t: TensorType, y_t: TensorType, x: relax.Expr, sum_of_powers: bool = False,
                lifted: int = 0, trailing: int = 0) -> PoolWindow:
    """A pool's window, in floor mode where ceil mode would not build (a symbolic size) or would
    miscount (LpPool: TVM's ceil-mode average leaves its overhang out of the count, which the
    sum behind an Lp norm must not). `lifted` spatial axes of one element come before the
    pool's own in `x` (a 1-d pool over an image of one row), `trailing` axes after them (the
    blocked layout's channel lanes)."""
    at = node.attrs
    n = len(at["kernel_shape"])
    pads = conv_pads(node, x_t, y_t)
    include = bool(at.get("count_include_pad", 0))
    ceil = bool(at["ceil_mode"])
    if not ceil or not (sum_of_powers or any(not isinstance(d, int) for d in x_t.shape[2:])):
        return PoolWindow(x, pads, ceil, include)
    end = floor_end_pads(node, x_t, y_t, pads)
    if end is None:
        if sum_of_powers:
            raise refuse(node, "a ceil-mode LpPool over a symbolic size whose last window may start in the end pad")
        return PoolWindow(x, pads, ceil, include)  # TVM's ceil mode: builds where TVM can simplify the shape
    if sum_of_powers:  # every pad counts (as zero), and a floor-mode window is always whole
        return PoolWindow(x, pads[:n] + end, False, True)
    if include and any(pads):  # the explicit pads count, the overhang does not: pad explicitly
        width = [0, 0] * (2 + lifted) + [w for i in range(n) for w in (pads[i], pads[n + i])] + [0, 0] * trailing
        return PoolWindow(R.nn.pad(x, width), [0] * n + [max(end[i] - pads[n + i], 0) for i in range(n)], False, False)
    return PoolWindow(x, pads[:n] + end, False, False)


def _pool(kind: str) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        at = node.attrs
        n = len(at["kernel_shape"])
        if len(node.outputs) > 1 and node.outputs[1].name:
            return _max_pool_with_indices(lw, node, a[0])
        fns = {("max", 1): R.nn.max_pool1d, ("max", 2): R.nn.max_pool2d, ("max", 3): R.nn.max_pool3d,
               ("avg", 1): R.nn.avg_pool1d, ("avg", 2): R.nn.avg_pool2d, ("avg", 3): R.nn.avg_pool3d}
        t = out_type(node)
        x = R.power(R.abs(a[0]), scalar(float(at["p"]), t)) if kind == "lp" else a[0]
        window = pool_window(node, in_type(lw, node, 0), t, x, sum_of_powers=kind == "lp")
        kwargs: dict[str, Any] = dict(pool_size=list(at["kernel_shape"]), strides=list(at["strides"]),
                                      padding=window.pads, dilation=list(at.get("dilations") or [1] * n),
                                      ceil_mode=window.ceil, layout=_LAYOUTS[n][0])
        if kind == "max":
            return [fns[("max", n)](window.x, **kwargs)]
        if kind == "avg":
            return [fns[("avg", n)](window.x, count_include_pad=window.include_pad, **kwargs)]
        # (sum |x|^p)^(1/p): a pads-included average of |x|^p times the window's size
        s = R.multiply(fns[("avg", n)](window.x, count_include_pad=True, **kwargs), scalar(float(np.prod(at["kernel_shape"])), t))
        return [R.power(s, scalar(1.0 / float(at["p"]), t))]

    return emit


def _max_pool_with_indices(lw: Lowering, node: Node, x: relax.Expr) -> list[relax.Expr]:
    """MaxPool's Y and Indices in one kernel: per output, the window's first maximum (taps in
    row-major order) and its position in the unpadded input, flattened over [N, C, *spatial]
    (storage_order 1: the spatial axes column-major). Taps in the padding or past the input's
    end (ceil mode) never win; SegNet / ENet-style decoders feed the indices to MaxUnpool."""
    from tvm import te, tirx

    at = node.attrs
    x_t, y_t = in_type(lw, node, 0), out_type(node)
    n = len(at["kernel_shape"])
    kernel, strides = list(at["kernel_shape"]), list(at["strides"])
    dilations = list(at.get("dilations") or [1] * n)
    pads = conv_pads(node, x_t, y_t)[:n]
    out_shape = lw.shape(y_t)
    column_major = bool(at.get("storage_order", 0))

    def kernel_fn(data: te.Tensor) -> list[te.Tensor]:
        dtype = data.dtype
        spatial = list(data.shape[2:])
        taps = [te.reduce_axis((0, k), f"k{i}") for i, k in enumerate(kernel)]

        def combine(a: Any, b: Any) -> tuple[Any, Any]:  # (tap, value): the larger, the earlier tap on a tie
            take_b = tirx.Or(b[1] > a[1], tirx.And(b[1] == a[1], b[0] < a[0]))
            return tirx.Select(take_b, b[0], a[0]), tirx.Select(take_b, b[1], a[1])

        def identity(t0: str, t1: str) -> tuple[Any, Any]:
            return tirx.max_value(t0), tirx.min_value(t1)

        argmax = te.comm_reducer(combine, identity, name="window_argmax")

        def at_tap(i: Any, c: Any, *pos: Any) -> tuple[Any, Any]:
            coords = [pos[d] * strides[d] - pads[d] + taps[d] * dilations[d] for d in range(n)]
            inside = tirx.all(*[tirx.And(coords[d] >= 0, coords[d] < spatial[d]) for d in range(n)])
            safe = [tirx.max(tirx.min(coords[d], spatial[d] - 1), 0) for d in range(n)]
            value = tirx.if_then_else(inside, data[(i, c, *safe)], tirx.min_value(dtype))
            tap = taps[0]
            for d in range(1, n):
                tap = tap * kernel[d] + taps[d]
            return argmax((tirx.Cast("int32", tap), value), axis=taps)

        best = te.compute(out_shape, at_tap, name="max_pool_argmax")

        def offset(i: Any, c: Any, *pos: Any) -> Any:
            tap = best[0][(i, c, *pos)]
            coords = []
            for d in range(n - 1, -1, -1):  # (the tap's row-major digits, last axis first)
                coords.insert(0, pos[d] * strides[d] - pads[d] + tap % kernel[d] * dilations[d])
                tap = tap // kernel[d]
            order = range(n - 1, -1, -1) if column_major else range(n)
            flat = tirx.Cast("int64", i) * data.shape[1] + c
            for d in range(n):
                flat = flat * spatial[d]
            inner: Any = tirx.const(0, "int64")
            for d in order:
                inner = inner * tirx.Cast("int64", spatial[d]) + tirx.Cast("int64", coords[d])
            return flat + inner

        values = te.compute(out_shape, lambda *i: best[1][i], name="max_pool_values")
        indices = te.compute(out_shape, offset, name="max_pool_indices")
        return [values, indices]

    call = lw.kernels.call_te(kernel_fn, x, primfunc_name_hint="max_pool_with_indices")
    _schedule_pool_indices(lw, call.args[0], n)  # (the call_tir's PrimFunc)
    out = lw.emit(call)
    return [relax.TupleGetItem(out, 0), relax.TupleGetItem(out, 1)]


def _schedule_pool_indices(lw: Lowering, gvar: Any, n: int) -> None:
    """The kernel of _max_pool_with_indices scheduled here on CPUs (no rule reads a tuple
    reduction): rows of outputs in parallel, the values and indices written per row. (A whole
    SegNet pool, 64 channels at 360 x 480, took 7.5 ms unscheduled at 2 threads.)"""
    import tvm
    from tvm import s_tir

    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name != "llvm":
        return
    sch = s_tir.Schedule(lw.bb.get()[gvar])
    best = sch.get_sblock("max_pool_argmax")
    loops = sch.get_loops(best)
    row = sch.fuse(*loops[:2 + n - 1])  # (batch, channel and every spatial axis but the last)
    sch.parallel(row)
    for name in ("max_pool_values", "max_pool_indices"):
        sch.reverse_compute_at(sch.get_sblock(name), row)
    lw.bb.update_func(gvar, sch.mod["main"].with_attr("tirx.is_scheduled", True))


def _global_pool(kind: str) -> Emitter:
    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        axes = list(range(2, in_type(lw, node, 0).rank))
        if kind == "lp":
            t = out_type(node)
            p = float(node.attrs["p"])
            return [R.power(R.sum(R.power(R.abs(a[0]), scalar(p, t)), axes, True), scalar(1.0 / p, t))]
        return [(R.mean if kind == "avg" else R.max)(a[0], axes, True)]

    return emit


def _gemm(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    at = node.attrs
    t = out_type(node)
    x = R.permute_dims(a[0]) if at["transA"] else a[0]
    w = a[1]
    if at["transB"]:
        wc = lw.const_of(node.inputs[1])
        w = const(np.ascontiguousarray(wc.T)) if wc is not None else R.permute_dims(w)  # pre-transposed at compile time
    y = R.matmul(x, w)
    if at["alpha"] != 1.0:
        y = R.multiply(y, scalar(at["alpha"], t))
    if len(a) > 2 and a[2] is not None:
        c = a[2] if at["beta"] == 1.0 else R.multiply(a[2], scalar(at["beta"], t))
        y = R.add(y, c)
    return [y]


def _einsum(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    return [R.einsum(relax.Tuple(list(a)), node.attrs["equation"].replace(" ", ""))]


def _heads(x: relax.Expr, shape: list[Any], heads: int) -> relax.Expr:
    """[B, L, H*D] -> [B, H, L, D]."""
    b, length, width = shape
    return R.permute_dims(R.reshape(x, [b, length, heads, width // heads]), [0, 2, 1, 3])


KEY_BLOCK = 16  # key positions a padded attention row holds a multiple of (AVX-512's fp32 lanes)
# Over a symbolic key length: two vectors, so that Q K^T's register tile of 4 rows x 2 key
# vectors always divides the padded length
SYMBOLIC_KEY_BLOCK = 2 * KEY_BLOCK


def _pad_symbolic_keys(lw: Lowering, x: relax.Expr, value: float) -> relax.Expr:
    """x's last axis (a symbolic key length S) padded with `value` to ceil(S /
    SYMBOLIC_KEY_BLOCK) * SYMBOLIC_KEY_BLOCK entries: a length the schedule can prove whole
    vectors of."""
    from tvm import te, tirx

    def kernel_fn(t: Any) -> Any:
        axis, n = len(t.shape) - 1, t.shape[-1]
        fill = tirx.const(value, t.dtype)

        def at(*i: Any) -> Any:
            safe = [*i[:axis], tirx.min(i[axis], n - 1)]
            return tirx.if_then_else(i[axis] < n, t[tuple(safe)], fill)

        return te.compute([*t.shape[:axis], _whole_key_blocks(n)], at, name="key_pad")

    return lw.emit(lw.kernels.call_te(kernel_fn, lw.emit(x), primfunc_name_hint="key_pad"))


def _key_padding(lw: Lowering, keys: relax.Expr, dtype: str) -> relax.Expr:
    """[ceil(S / SYMBOLIC_KEY_BLOCK) * SYMBOLIC_KEY_BLOCK]: 0 over the S keys of `keys`
    ([B, H, S, D]), -inf past them."""
    from tvm import te, tirx

    def kernel_fn(k: Any) -> Any:
        n = k.shape[2]
        return te.compute([_whole_key_blocks(n)], lambda j: tirx.Select(
            j < n, tirx.const(0.0, dtype), tirx.const(float("-inf"), dtype)), name="key_padding")

    return lw.emit(lw.kernels.call_te(kernel_fn, lw.emit(keys), primfunc_name_hint="key_padding"))


def _whole_key_blocks(n: Any) -> Any:
    from tvm import tirx

    return tirx.floordiv(n + SYMBOLIC_KEY_BLOCK - 1, SYMBOLIC_KEY_BLOCK) * SYMBOLIC_KEY_BLOCK


def _attention(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """softmax(Q K^T * scale + bias) V (no KV cache, softcap or sliding window yet).

    bias: the mask (bool: attend where true; float: added) and, with is_causal, -inf above
    the diagonal (top-left aligned, as without a cache). Rows whose bias is -inf everywhere
    give 0, as ONNX's reference does.
    """
    at = node.attrs
    q_t, k_t, v_t = in_type(lw, node, 0), in_type(lw, node, 1), in_type(lw, node, 2)
    unsupported = [
        what for what, bad in (
            ("extra outputs", len(node.outputs) > 1), ("softcap", bool(at.get("softcap"))),
            ("sliding windows", at["left_window_size"] >= 0 or at["right_window_size"] >= 0),
            ("past key/value or nonpad_kv_seqlen", len(node.inputs) > 4 and any(node.inputs[4:])),
        ) if bad
    ]
    if unsupported:
        raise refuse(node, ", ".join(unsupported))
    t = out_type(node)
    q, k, v = a[0], a[1], a[2]
    if q_t.rank == 3:
        hq, hkv = at["q_num_heads"], at["kv_num_heads"]
        q, k, v = _heads(q, lw.shape(q_t), hq), _heads(k, lw.shape(k_t), hkv), _heads(v, lw.shape(v_t), hkv)
        head = q_t.shape[2] // hq if isinstance(q_t.shape[2], int) else None
    else:
        hq, hkv, head = q_t.shape[1], k_t.shape[1], q_t.shape[3]
    if not isinstance(head, int) and at.get("scale") is None:
        raise refuse(node, "a symbolic head size without an explicit scale")
    if isinstance(hq, int) and isinstance(hkv, int) and hq != hkv:  # grouped-query attention
        k, v = R.repeat(k, hq // hkv, axis=1), R.repeat(v, hq // hkv, axis=1)
    scale = at.get("scale") if at.get("scale") is not None else 1.0 / float(np.sqrt(int(head)))
    kv_static = k_t.shape[1] if q_t.rank == 3 else k_t.shape[2]
    # A static key length no vector width divides (ViT's 197) is padded to whole vectors,
    # the extra keys' scores -inf (probability 0), so the softmax rows vectorize with no
    # ragged tail; P @ V reads only the real keys.
    pad = (-kv_static) % KEY_BLOCK if isinstance(kv_static, int) and kv_static > KEY_BLOCK else 0
    keys = R.nn.pad(k, [0, 0, 0, 0, 0, pad, 0, 0]) if pad else k
    # A symbolic key length (a text model exported with a dynamic sequence) is padded the same
    # way, to a length the schedule proves whole vectors of (run-time padding, in the kernel),
    # where a bias spans the same keys or broadcasts along them (one along a key axis of
    # another name stays unpadded: its padding could not be proven to match).
    mask_width = in_type(lw, node, 3).shape[-1] if len(a) > 3 and a[3] is not None else 1
    symbolic = not isinstance(kv_static, int) and mask_width in (1, kv_static)
    keys_t = _pad_symbolic_keys(lw, R.permute_dims(k, [0, 1, 3, 2]), 0.0) if symbolic else R.permute_dims(keys, [0, 1, 3, 2])
    scores = R.multiply(R.matmul(q, keys_t), scalar(scale, t))
    zero, minus_inf = scalar(0.0, t), scalar(float("-inf"), t)
    bias = None
    if len(a) > 3 and a[3] is not None:
        bias = R.where(a[3], zero, minus_inf) if in_type(lw, node, 3).dtype == "bool" else a[3]
    if at["is_causal"]:
        q_len, kv_len = lw.dim(q_t.shape[-2]), lw.dim(k_t.shape[-2])
        allowed = R.tril(R.ones([q_len, kv_len], "bool"), 0)
        causal = R.where(allowed, zero, minus_inf)
        bias = causal if bias is None else R.add(bias, causal)
    if bias is not None:
        bias = lw.emit(bias)
    added = bias  # what the scores get: the bias, over the padded keys when there are any
    if symbolic:
        bias_width = kv_static if at["is_causal"] else mask_width
        if bias is not None and bias_width == kv_static:
            added = _pad_symbolic_keys(lw, bias, float("-inf"))
        else:  # no bias, or one broadcast along the keys: add -inf over the padding
            padding = _key_padding(lw, k, TVM_DTYPE[t.dtype])
            added = padding if bias is None else R.add(bias, padding)
    if pad:
        bias_rank, bias_width = 0, None
        if len(a) > 3 and a[3] is not None:
            mask_t = in_type(lw, node, 3)
            bias_rank, bias_width = mask_t.rank, mask_t.shape[-1]
        if at["is_causal"]:
            bias_rank, bias_width = max(bias_rank, 2), kv_static
        if bias is not None and bias_width == kv_static:
            added = R.nn.pad(bias, [0, 0] * (bias_rank - 1) + [0, pad], pad_value=float("-inf"))
        else:  # no bias, or one broadcast along the keys: add -inf over the padding
            padding = const(np.where(np.arange(kv_static + pad) < kv_static, 0.0, -np.inf).astype(t.np_dtype))
            added = padding if bias is None else R.add(bias, padding)
    probs = R.nn.softmax(scores if added is None else R.add(scores, added), axis=-1)
    if bias is not None:
        # A row is masked everywhere when none of its bias entries is above -inf: the row max
        # of (bias > -inf) as 0 / 1. (Not the bias's own max against a threshold: TVM's max
        # starts from the lowest finite value, so an all -inf row and a row of the lowest
        # finite value, transformers' padding mask, reduce alike, and the latter must give
        # softmax's uniform row, as the graph fused here and onnxruntime do.) Over a symbolic
        # key length, the padded bias: whole vectors, the padding's -inf changing no row.
        allowed = R.astype(R.greater(added if symbolic else bias, minus_inf), TVM_DTYPE[t.dtype])
        blocked = R.less(R.max(allowed, [-1], True), scalar(0.5, t))
        probs = R.where(blocked, zero, probs)
    if pad:
        probs = R.strided_slice(probs, axes=[3], begin=[0], end=[kv_static])
    elif symbolic:  # (the padded keys' probabilities are 0: V padded with zeros to match)
        v = R.permute_dims(_pad_symbolic_keys(lw, R.permute_dims(v, [0, 1, 3, 2]), 0.0), [0, 1, 3, 2])
    y = R.matmul(probs, v)
    if q_t.rank == 3:
        y = R.reshape(R.permute_dims(y, [0, 2, 1, 3]), lw.shape(t))
    return [y]


_RESIZE_MODES = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}


def _resize(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Resize of the two spatial axes of an NCHW tensor (N and C unscaled)."""
    at = node.attrs
    x, y = in_type(lw, node, 0), out_type(node)
    if x.rank != 4 or at["antialias"] or at.get("axes") is not None:
        raise refuse(node, "resizing other than the spatial axes of a 4-d tensor, antialias or axes")
    from ember.targets.emit_dynamic import resolves, runtime_ints

    if x.shape[:2] == y.shape[:2] and resolves(lw, y):
        size = lw.shape(y)[2:]
    elif len(a) > 3 and a[3] is not None and not lw.primitive and lw.const_of(node.inputs[3]) is None:
        # sizes the model computes in a way inference does not follow (a detector's transform
        # from float arithmetic; the dynamo exporter's (h-1)//2+1): read at run time, N and C
        # checked there to be the input's
        v = runtime_ints(lw, a[3], 4)
        lw.bb.match_cast(relax.ShapeExpr(v[:2]), relax.ShapeType([lw.dim(x.shape[0]), lw.dim(x.shape[1])]))
        size = v[2:]
    else:
        raise refuse(node, "resizing other than the spatial axes of a 4-d tensor, antialias or axes")
    mode = at["coordinate_transformation_mode"]
    if mode == "tf_crop_and_resize":
        raise refuse(node, "coordinate_transformation_mode 'tf_crop_and_resize'")
    rounding = at["nearest_mode"] if at["mode"] == "nearest" else ""
    out = R.image.resize2d(a[0], size, layout="NCHW", method=_RESIZE_MODES[at["mode"]],
                           coordinate_transformation_mode=mode, rounding_method=rounding,
                           cubic_alpha=at["cubic_coeff_a"], cubic_exclude=at["exclude_outside"],
                           extrapolation_value=at["extrapolation_value"])
    return [out]


EMITTERS: dict[str, Emitter] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"), "LpPool": _pool("lp"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"), "GlobalLpPool": _global_pool("lp"),
    "Gemm": _gemm, "MatMul": lambda lw, node, a: [R.matmul(a[0], a[1])],
    "Einsum": _einsum, "Attention": _attention, "Resize": _resize,
}
