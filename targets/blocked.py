"""Blocked activation layout (NCHWc) across a CNN's kernels.

A 4-d activation `[N, C, H, W]` is kept between kernels as `[N, C/b, H, W, b]`, with `b` the
target's float vector lanes (16 on AVX-512, 8 on AVX2) or half of them when C only divides by
that; a 1-d signal `[N, C, W]` (a speech model's conv1d stack) as an image of one row, `[N, C/b,
1, W, b]`. Why: an NCHW conv kernel writes its output tile as short runs in `nv * b` channel planes at
once, and a cold output buffer then costs write-allocate misses the prefetcher cannot hide
(ResNet-50's 3x3 conv: 0.76 ms with every operand in cache, 1.28 ms with only its output
flushed, 1.38 ms inside the model). In NCHWc the tile is one contiguous run, the channel vector
of a pixel is one aligned load, and a strided or depthwise window reads whole vectors along
channels instead of gathering along rows.

The ember IR stays NCHW (dumps, the interpreter and every pass are unchanged); the layout is a
lowering decision (`plan`):

- a node lowers **blocked** when it holds a layout op (a float 1-d or 2-d Conv with constant weights
  and a blockable output channel count; a pool or depthwise conv whose input is already
  blocked) or reads a blocked value, and every member of its fusion group is one the blocked
  emitters handle (the layout ops, global pooling of a blocked input, an instance norm of a
  blocked input with constant scale and bias, and elementwise ops whose operands broadcast per
  channel or per pixel);
- its 4-d outputs are then blocked; any consumer that is not blocked (a Flatten, a Gemm, a
  graph output) reads a plain copy made once by a conversion kernel (`Lowering.arg`);
- weights and per-channel constants are re-laid out at compile time (numpy), never per call.

The conv and depthwise kernels are TE computes written here (TOPI's conv2d does not legalize
sub-indexed layouts in TVM 0.27); pools use TOPI's NCHWc pooling. Their schedules are
`sched_nchwc.py`'s rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm.sym
from tvm import relax, te, tirx

from ember.compiler import dims as dim_values
from ember.compiler.ir import Graph, Node, TensorType
from ember.targets import winograd
from ember.targets.emit_common import (
    BROADCASTING,
    TVM_DTYPE,
    Lowering,
    R,
    broadcast_refined,
    clamped_read,
    const,
    in_type,
    out_type,
)

LAYOUT_ATTR = "ember_nchwc"  # block annotation of the blocked conv and depthwise computes

# Elementwise ops whose emitters read no shapes: on blocked operands they compute the same
# values, element for element (only float outputs: padding lanes never exist, as C % b == 0).
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Reciprocal",
    "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "Softplus", "Softsign", "Elu", "Celu",
    "Selu", "Mish", "Swish", "ThresholdedRelu", "Shrink", "PRelu", "Clip", "Sigmoid", "Tanh",
    "Abs", "Neg", "Sqrt", "Exp", "Erf", "Identity",
})
POOLS = frozenset({"MaxPool", "AveragePool"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool"})
FLOATS = ("f32",)


def block_of(channels: Any, lanes: int) -> int | None:
    """The channel block of a C-channel activation: the vector lanes, or half of them, that
    divide C (None: C is symbolic or neither divides it)."""
    if not isinstance(channels, int) or lanes < 8:
        return None
    return next((b for b in (lanes, lanes // 2) if channels % b == 0), None)


@dataclass
class Plan:
    """Which nodes lower blocked, and the block of each blocked value."""

    lanes: int
    nodes: set[str] = field(default_factory=set)
    winograd: bool = True  # 3x3 convs that qualify take the Winograd form (targets/winograd.py)
    sample_dims: dict[str, int] = field(default_factory=dict)  # (the compile sample's symbolic dims)
    values: dict[str, int] = field(default_factory=dict)


def view4(shape: Any, rank: int) -> list[Any]:
    """A value's dims as the [N, C, H, W] activation of an op whose output has rank `rank` (3
    or 4) sees them: aligned to that rank as broadcasting does, then a 1-d signal's one row
    inserted."""
    dims = [1] * (rank - len(shape)) + list(shape)
    return dims if rank == 4 else [dims[0], dims[1], 1, dims[2]]


def blocked_shape(shape: Any, b: int) -> list[Any]:
    """The blocked form of an activation's shape: [N, C, H, W] -> [N, C/b, H, W, b], a 1-d
    signal [N, C, W] -> [N, C/b, 1, W, b]."""
    n, c, h, w = view4(shape, len(shape))
    return [n, c // b, h, w, b]


def _static(t: TensorType, rank: int | None = None) -> bool:
    """A static channel count (dim 1 of the value as an op of output rank `rank`, default its
    own, reads it): the block is a compile-time split of it. The batch and the image's height
    and width may be symbolic (a dynamic batch, a dynamic image size or signal length): they are
    loops the kernels and their rules take as they come."""
    if t.rank > 4:
        return isinstance(t.shape[1], int)
    shape = view4(t.shape, rank if rank is not None else (t.rank if t.rank == 3 else 4))
    return isinstance(shape[1], int)


def _members(node: Node) -> tuple[list[Node], dict[str, str]]:
    """A node's members and {member input name: outer value name} (a lone node: itself)."""
    if node.op != "Fused":
        return [node], {n: n for n in node.inputs if n}
    body: Graph = node.attrs["body"]
    names = {inner.name: outer for inner, outer in zip(body.inputs, node.inputs)}
    names.update((c.name, c.name) for c in body.consts)
    return list(body.nodes), names


def _conv_ok(node: Node, types: dict[str, TensorType], consts: set[str], blocked: dict[str, int], lanes: int) -> bool:
    """A 1-d or 2-d float conv, static, constant weight (and bias), blockable output channels;
    group 1 (any input: a plain one is read as blocks of one channel) or depthwise on a blocked
    input."""
    at = node.attrs
    spatial = len(at.get("kernel_shape") or ())
    if spatial not in (1, 2) or node.inputs[1] not in consts:
        return False
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in consts:
        return False
    x, y = types[node.inputs[0]], node.outputs[0].type
    if x.rank != spatial + 2 or y.rank != spatial + 2:
        return False
    if x.dtype not in FLOATS or not (_static(x) and _static(y)) or block_of(y.shape[1], lanes) is None:
        return False
    if at["group"] == 1:
        return True
    w = types[node.inputs[1]]
    depthwise = at["group"] == x.shape[1] == y.shape[1] and w.shape[1] == 1
    return depthwise and node.inputs[0] in blocked


def _member_ok(node: Node, types: dict[str, TensorType], consts: set[str], blocked: dict[str, int], lanes: int) -> bool:
    """Whether the blocked emitters lower this member, given which of its inputs are blocked."""
    if node.op == "Conv":
        return _conv_ok(node, types, consts, blocked, lanes)
    if node.op in POOLS:
        x = types[node.inputs[0]]
        return (len(node.attrs["kernel_shape"]) + 2 == x.rank and x.rank in (3, 4) and len(node.outputs) == 1
                and node.inputs[0] in blocked
                and x.dtype in FLOATS and _static(x) and not any(d != 1 for d in node.attrs.get("dilations") or []))
    if node.op in GLOBAL_POOLS:
        return node.inputs[0] in blocked and types[node.inputs[0]].rank in (3, 4)
    if node.op == "InstanceNormalization":  # (its scale and bias laid out as blocks at compile time)
        x = types[node.inputs[0]]
        return (node.inputs[0] in blocked and x.rank in (3, 4) and x.dtype in FLOATS
                and all(name in consts for name in node.inputs[1:3]))
    if node.op not in ELEMENTWISE or len(node.outputs) != 1:
        return False
    y = node.outputs[0].type
    ins = [n for n in node.inputs if n]
    if y.dtype not in FLOATS or y.rank not in (3, 4) or not any(n in blocked for n in ins):
        return False
    for name in ins:
        t = types[name]
        if name in blocked:
            if t.shape != y.shape:
                return False
            continue
        if t.rank > y.rank or t.dtype not in FLOATS or not _static(t, y.rank):
            return False
        shape = view4(t.shape, y.rank)
        if shape[1] not in (1, y.shape[1]):
            return False
    return True


def _has_layout_op(members: list[Node]) -> bool:
    return any(m.op in ("Conv", *POOLS) for m in members)


def plan(graph: Graph, lanes: int) -> Plan:
    """The nodes of the top-level graph that lower blocked, and the blocked values."""
    from ember.targets.fused import defines_its_dims

    result = Plan(lanes)
    consts = {c.name for c in graph.consts}
    types = {v.name: v.type for v in graph.inputs}
    types.update((c.name, c.type) for c in graph.consts)
    for node in graph.nodes:
        types.update((v.name, v.type) for v in node.outputs)
    for node in graph.nodes:
        members, outer = _members(node)
        if not _has_layout_op(members) and not any(n in result.values for n in node.inputs):
            continue
        if node.op != "Fused" and not defines_its_dims(node, types):
            continue  # (a dim no operand carries, such as a ceil-mode pool's `win_3`: its own kernel could not define it)
        inner_types = dict(types)
        inner_consts = set(consts)
        if node.op == "Fused":
            body = node.attrs["body"]
            inner_types.update((v.name, v.type) for v in body.inputs)
            inner_types.update((c.name, c.type) for c in body.consts)
            inner_consts |= {c.name for c in body.consts}
            inner_consts |= {inner for inner, o in outer.items() if o in consts}
            for m in members:
                inner_types.update((v.name, v.type) for v in m.outputs)
        blocked = {inner: result.values[o] for inner, o in outer.items() if o in result.values}
        ok = True
        for m in members:
            if not _member_ok(m, inner_types, inner_consts, blocked, lanes):
                ok = False
                break
            if m.op not in GLOBAL_POOLS:
                b = block_of(m.outputs[0].type.shape[1], lanes)
                if b is None:
                    ok = False
                    break
                blocked[m.outputs[0].name] = b
        if not ok:
            continue
        result.nodes.add(node.name)
        outs = node.attrs["body"].outputs if node.op == "Fused" else tuple(v.name for v in node.outputs)
        for inner, value in zip(outs, node.outputs):
            if inner in blocked:
                result.values[value.name] = blocked[inner]
    return result


# --- layout conversions ----------------------------------------------------------------------

def pack_activation(data: np.ndarray, b: int) -> np.ndarray:
    """[N, C, H, W] -> [N, C/b, H, W, b] (numpy; a constant operand)."""
    n, c, h, w = data.shape
    return np.ascontiguousarray(data.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))


def to_blocked(x: relax.Expr, shape: list[Any], b: int) -> relax.Expr:
    """[N, C, H, W] -> [N, C/b, H, W, b] as Relax ops."""
    n, c, h, w = shape
    return R.permute_dims(R.reshape(x, [n, c // b, b, h, w]), [0, 1, 3, 4, 2])


def to_plain(x: relax.Expr, shape: list[Any], b: int) -> relax.Expr:
    """[N, C/b, H, W, b] -> [N, C, H, W] as Relax ops."""
    return R.reshape(R.permute_dims(x, [0, 1, 4, 2, 3]), shape)


def _conversion_kernel(lw: Lowering, name: str, arg: relax.Expr, param_type: relax.TensorType,
                       body: Any) -> relax.Expr:
    """One conversion kernel: a Primitive function `name` of one tensor (`body(builder, param)`
    gives its result), called from main on `arg`."""
    from ember.targets.fused import unbound_vars

    param = relax.Var("x", param_type)
    params, args = [param], [arg]
    unbound = unbound_vars([param.ty])  # a dynamic image size after strides: `(H + 1) // 2`
    if unbound:
        params.append(relax.Var("dims", relax.ShapeType(unbound)))
        args.append(relax.ShapeExpr(unbound))
    sub = relax.BlockBuilder()
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            y = sub.emit_output(body(sub, param))
        sub.emit_func_output(y)
    gvar = lw.bb.add_func(sub.get()[name], name)
    return lw.emit(relax.Call(gvar, args))


def plain_kernel(lw: Lowering, x: relax.Expr, t: TensorType, b: int) -> relax.Expr:
    """One kernel converting a blocked value to NCHW (a Primitive function called from main)."""

    def body(sub: relax.BlockBuilder, param: relax.Var) -> relax.Expr:
        # (a direct index: Relax's reshape of the permuted value divided a flat index by the
        # symbolic H * W for every element over a dynamic image, 0.9 GB/s)
        if t.rank == 3:  # (a 1-d signal's one row dropped)
            return R.layout_transform(param, index_map=lambda n, cb, h, w, i: (n, cb * b + i, w))
        return R.layout_transform(param, index_map=lambda n, cb, h, w, i: (n, cb * b + i, h, w))

    param_type = relax.TensorType(blocked_shape(lw.shape(t), b), TVM_DTYPE[t.dtype])
    return _conversion_kernel(lw, "to_nchw", x, param_type, body)


# A conv whose plain input has at least this many channels (a block's worth, as after a norm
# no blocked kernel computes) reads a blocked copy made by one conversion kernel: read as blocks
# of one channel, each tile's broadcasts walk C rows of the whole map (wav2vec2's 256-channel
# stride-2 conv1d over 12799 samples: 42.4 ms that way; 17.3 ms from a copy made in 5.0 ms; in
# NCW by sched_conv.ConvBlocked 26.4 ms, onnxruntime 25.2 ms, at 1 thread).
COPY_CHANNELS = 16


def copied_input(lw: Lowering, members: list[Node], name: str, types: dict[str, TensorType]) -> int | None:
    """The block of a blocked copy a node's plain input `name` (a body input) is read as: where
    it is the data of a member conv with COPY_CHANNELS or more channels that a block divides;
    None to read it as it is."""
    t = types[name]
    if t.rank not in (3, 4) or t.dtype not in FLOATS or not _static(t):
        return None
    readers = [m for m in members if name in m.inputs]
    if not readers or any(m.op != "Conv" or m.inputs[0] != name or m.attrs["group"] != 1 for m in readers):
        return None
    channels = t.shape[1]
    b = block_of(channels, lw.plan.lanes)
    return b if b is not None and channels >= COPY_CHANNELS else None


def blocked_kernel(lw: Lowering, name: str, b: int) -> relax.Expr:
    """A plain value's blocked copy, made once by one conversion kernel (a Primitive function
    called from main)."""
    if name not in lw.blocked_copies:
        t = lw.types[name]

        def body(sub: relax.BlockBuilder, param: relax.Var) -> relax.Expr:
            x = param if t.rank == 4 else sub.emit(R.expand_dims(param, [2]))
            return R.layout_transform(x, index_map=lambda n, c, h, w: (n, c // b, h, w, c % b))

        param_type = relax.TensorType(lw.shape(t), TVM_DTYPE[t.dtype])
        lw.blocked_copies[name] = _conversion_kernel(lw, "to_nchwc", lw.arg(name), param_type, body)
    return lw.blocked_copies[name]


# --- blocked computes (TE) -------------------------------------------------------------------

def _padded(data: te.Tensor, pads: list[int], value: float = 0.0, min_width: Any | None = None) -> te.Tensor:
    """The input with zero (`value`) padding; `min_width`: at least this many columns, the
    extra ones padding too."""
    top, left, bottom, right = pads
    if not any(pads) and min_width is None:
        return data
    n, c, h, w, b = data.shape

    def body(i: Any, j: Any, y: Any, x: Any, k: Any) -> Any:
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
        return tirx.if_then_else(inside, data[i, j, y - top, x - left, k], tirx.const(value, data.dtype))

    width = w + left + right if min_width is None else tirx.max(w + left + right, min_width)
    return te.compute(_i64([n, c, h + top + bottom, width, b]), body, name="pad_nchwc")


def _out_size(size: tuple[int, int], kernel: tuple[int, int], strides: list[int], pads: list[int],
              dilation: list[int]) -> tuple[int, int]:
    """Output rows and columns of a window over a padded [.., H, W, ..] map."""
    return tuple((size[i] + pads[i] + pads[i + 2] - (kernel[i] - 1) * dilation[i] - 1) // strides[i] + 1
                 for i in range(2))  # type: ignore[return-value]


def _reduce(extent: int, name: str) -> Any:
    return te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", int(extent))), name)


# A symbolic output width (a dynamic image size) is computed in whole blocks of this many
# columns (or the tile's column cap, if smaller), the register tile's width: the tile then never
# runs predicated, and only the write-back skips the columns past the width. Predicated, the
# last block of each row ran every FMA under a branch (a 256 -> 256 3x3 conv over a 7-wide map:
# 1.47x onnxruntime against 0.93x at 8 wide). Blocks chosen for the compile sample's widths (14
# columns for ResNet-18's maps at 224 x 224, 7 for the 7-wide ones) ran it at 1.08x onnxruntime
# at that size against 1.20x with 8, but at 1.48x against 1.13x at 320 x 256 (a 16-wide map in
# blocks of 14 computes 28 columns): 8 holds up at every size.
SYMBOLIC_COLUMN_BLOCK = 8
# Where a tile holds 14 columns (AVX-512's 32 registers), a symbolic image width is computed in
# whole blocks of 7 instead, and sched_nchwc.ConvNCHWc tiles them two at a time: at run time
# (lowering.split_full_tiles) every full tile (a row's whole pairs) and a row's odd block, if
# any, run without column predicates. Against blocks of 8 (16 accumulators), ResNet-18's maps at
# 224 x 224 (7, 14, 28, 56 wide) need no extra columns; its 28 x 28 3x3 convs went from 78-82 to
# 112 GFLOP/s, the static build's rate (one thread, a Zen 4).
PAIRED_COLUMN_BLOCK = 7
WINDOW_COLUMN_CAP = 8  # sched_nchwc.WindowNCHWc's default register row


def column_block_for(cob: int, plain_input: bool, depthwise: bool, image: bool) -> int:
    """The whole-block width of a conv over a symbolic width, for the current target: over an
    image (more than one row) with room for two blocks in a tile, PAIRED_COLUMN_BLOCK; else
    SYMBOLIC_COLUMN_BLOCK within sched_nchwc's column cap. (Also over a 1-d signal thousands of
    samples long: wav2vec2's 256 -> 256 stride-2 conv over 6399 samples ran 17.3 ms in blocks
    of 8, 19.0 ms in blocks of 14.)"""
    from tvm.target import Target

    from ember.targets import sched_common as sc

    if depthwise:
        return min(WINDOW_COLUMN_CAP, SYMBOLIC_COLUMN_BLOCK)
    target = Target.current(allow_none=True)
    regs = sc.vector_registers(target) if target is not None else 16
    nv = 2 if cob % 2 == 0 else 1
    cap = max(4, (regs - nv - 2) // nv if not plain_input else regs // 2 // nv)
    if image and cap >= 2 * PAIRED_COLUMN_BLOCK:
        return PAIRED_COLUMN_BLOCK
    return min(cap, SYMBOLIC_COLUMN_BLOCK)


def _wide(width: Any, block: int | None) -> Any | None:
    """A symbolic width rounded up to whole blocks (None: a static width, or no block)."""
    if block is None or isinstance(width, (int, tirx.IntImm)):
        return None
    return (width + block - 1) // block * block


def _whole_blocks(compute: Any, shape: list[Any], wide: Any | None, clamp: bool, name: str) -> te.Tensor:
    """`compute(i, f, y, x, o, column)` over `shape` (width last but one), reading input column
    `column`. With `wide` (whole blocks of columns past a symbolic width), over that many
    columns, then the width's columns copied out (a stage the schedule inlines into the tile's
    write-back); the columns past the width read the padding beyond the input's right edge, or
    with `clamp` recompute the last column (valid reads; never stored either way)."""
    if wide is None:
        return te.compute(_i64(shape), lambda i, f, y, x, o: compute(i, f, y, x, o, x), name=name, attrs={LAYOUT_ATTR: 1})
    width = shape[3]

    def column(x: Any) -> Any:
        return tirx.min(x, width - 1) if clamp else x

    full = te.compute(_i64([*shape[:3], wide, shape[4]]), lambda i, f, y, x, o: compute(i, f, y, x, o, column(x)),
                      name=name, attrs={LAYOUT_ATTR: 1})
    return te.compute(_i64(shape), lambda i, f, y, x, o: full[i, f, y, x, o], name=f"{name}_columns")


def _padded_for(data: te.Tensor, pads: list[int], wide: Any | None, stride: int, reach: int) -> tuple[te.Tensor, bool]:
    """The padded input of a window (`reach` = (taps - 1) * dilation + 1 columns) whose output
    columns are computed as `wide` (see _whole_blocks), and whether its extra columns must be
    clamped: a padded input gets them as more zero columns on its right (a clamped column index
    cost a pointer register per column of the tile: 14 on a 56-wide map, which spilled); an
    unpadded one is read as it is."""
    if wide is None or not any(pads):
        return _padded(data, pads), wide is not None
    return _padded(data, pads, min_width=(wide - 1) * stride + reach), False


def conv_nchwc(data: te.Tensor, weight: te.Tensor, strides: list[int], pads: list[int], dilation: list[int],
               out_hw: tuple[Any, Any] | None = None, column_block: int | None = None) -> te.Tensor:
    """out[n, fo, y, x, fi] = sum_{co, ry, rx, ci} pad[n, co, y*s + ry*d, x*s + rx*d, ci]
    * W[fo, co, ry, rx, ci, fi]: data [N, CI/bi, H, W, bi], weight [CO/bo, CI/bi, KH, KW, bi, bo]
    (`column_block`: see _whole_blocks)."""
    n, cib, h, w, _ = data.shape
    cob, _, kh, kw, bi, bo = (int(d) for d in weight.shape)
    (sy, sx), (dy, dx) = strides, dilation
    oh, ow = out_hw if out_hw is not None else _out_size((h, w), (kh, kw), strides, pads, dilation)
    wide = _wide(ow, column_block)
    padded, clamp = _padded_for(data, pads, wide, sx, (kw - 1) * dx + 1)
    rco, ry, rx, rci = _reduce(cib, "rco"), _reduce(kh, "ry"), _reduce(kw, "rx"), _reduce(bi, "rci")

    def compute(i: Any, f: Any, y: Any, x: Any, o: Any, col: Any) -> Any:
        return te.sum(padded[i, rco, y * sy + ry * dy, col * sx + rx * dx, rci] * weight[f, rco, ry, rx, rci, o],
                      axis=[rco, ry, rx, rci])

    return _whole_blocks(compute, [n, cob, oh, ow, bo], wide, clamp, "conv_nchwc")


def depthwise_nchwc(data: te.Tensor, weight: te.Tensor, strides: list[int], pads: list[int], dilation: list[int],
                    out_hw: tuple[Any, Any] | None = None, column_block: int | None = None) -> te.Tensor:
    """out[n, c, y, x, i] = sum_{ry, rx} pad[n, c, y*s + ry*d, x*s + rx*d, i] * W[c, 0, ry, rx, 0, i]."""
    n, cb, h, w, b = data.shape
    _, _, kh, kw, _, _ = (int(d) for d in weight.shape)
    (sy, sx), (dy, dx) = strides, dilation
    oh, ow = out_hw if out_hw is not None else _out_size((h, w), (kh, kw), strides, pads, dilation)
    wide = _wide(ow, column_block)
    padded, clamp = _padded_for(data, pads, wide, sx, (kw - 1) * dx + 1)
    ry, rx = _reduce(kh, "ry"), _reduce(kw, "rx")

    def compute(i: Any, c: Any, y: Any, x: Any, k: Any, col: Any) -> Any:
        return te.sum(padded[i, c, y * sy + ry * dy, col * sx + rx * dx, k] * weight[c, 0, ry, rx, 0, k], axis=[ry, rx])

    return _whole_blocks(compute, [n, cb, oh, ow, b], wide, clamp, "depthwise_nchwc")


# --- legalization of conv2d in the blocked layouts ------------------------------------------

_BLOCKED = re.compile(r"NCHW(\d+)c$")


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.nn.conv2d: the blocked layouts (`NCHW{b}c` data) as the TE computes above; any
    other layout by TVM's own legalization. (Passed to LegalizeOps, which binds the symbolic
    batch of each kernel the way FuseTIR expects.)"""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    at = call.attrs
    if not _BLOCKED.match(str(at.data_layout)):
        return _nn_conv2d(bb, call)
    # The output rows and columns as Relax inferred them: over a symbolic image size, the same
    # value written another way (`(H + 1) // 2` and `(H - 1) // 2 + 1`) makes FuseTIR refuse to
    # map the kernel's buffer to its Relax var.
    out_hw = tuple(call.ty.shape.values[2:4])
    kwargs = dict(strides=[int(v) for v in at.strides], pads=[int(v) for v in at.padding],
                  dilation=[int(v) for v in at.dilation], out_hw=out_hw)
    cob, bi = int(call.args[1].ty.shape.values[0]), int(call.args[1].ty.shape.values[4])
    depthwise = int(at.groups) > 1
    rows = out_hw[0]
    block = column_block_for(cob, bi == 1, depthwise, not (isinstance(rows, (int, tirx.IntImm)) and int(rows) == 1))
    if depthwise:
        return bb.call_te(depthwise_nchwc, call.args[0], call.args[1], **kwargs, column_block=block,
                          primfunc_name_hint="depthwise_nchwc")
    return bb.call_te(conv_nchwc, call.args[0], call.args[1], **kwargs, column_block=block, primfunc_name_hint="conv2d_nchwc")


LEGALIZE = {"relax.nn.conv2d": legalize_conv2d}


# --- blocked emitters ------------------------------------------------------------------------

def _i64(shape: list[Any]) -> list[Any]:
    """Dims as int64 (Relax's shape type: buffers of int32 dims do not match in FuseTIR); a
    symbolic dim (the batch's tir.Var) as it is."""
    return [tirx.IntImm("int64", int(d)) if isinstance(d, (int, tirx.IntImm)) else d for d in shape]


def _one_row(kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]) -> tuple[list[int], ...]:
    """A window's kernel, strides, dilations and [begin..., end...] pads over [H, W]: a 1-d
    window's as a window over an image of one row, a 2-d window's as they are."""
    if len(kernel) == 2:
        return kernel, strides, dilations, pads
    return [1, *kernel], [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]


def _at_sample(lw: Lowering, dims: list[Any]) -> list[int] | None:
    """Dims (ints, or expressions of symbolic dims) at the compile sample's values (None where
    the sample does not give them)."""
    try:
        return [int(dim_values.evaluate(d, lw.plan.sample_dims)) for d in dims]
    except Exception:
        return None


def _conv(lw: Lowering, node: Node) -> relax.Expr:
    at = node.attrs
    x_t, y_t = in_type(lw, node, 0), out_type(node)
    weight = np.asarray(lw.const_of(node.inputs[1]))
    one_d = weight.ndim == 3  # a conv1d: an image of one row
    if one_d:
        weight = weight[:, :, None, :]
    co, ci = y_t.shape[1], x_t.shape[1]
    bo = block_of(co, lw.plan.lanes)
    from ember.targets.emit_nn import conv_pads

    _, strides, dilations, pads = _one_row(list(at["kernel_shape"]), list(at["strides"]), list(at["dilations"]),
                                           conv_pads(node, x_t, y_t))
    kh, kw = weight.shape[2:]
    if at["group"] == 1:
        bi = lw.blocked.get(node.inputs[0], 1)
        # (a plain input as blocks of one channel: expand_dims indexes it directly, where a
        # reshape over a dynamic image size divided a flat index by H * W for every element)
        data = lw.values[node.inputs[0]] if bi > 1 else R.expand_dims(lw.arg(node.inputs[0]), [2, 4] if one_d else [-1])
        packed = weight.reshape(co // bo, bo, ci // bi, bi, kh, kw).transpose(0, 2, 4, 5, 3, 1)
        out_hw = tuple(y_t.shape[2:])
        if (lw.plan.winograd and not one_d
                and winograd.applies(list(at["kernel_shape"]), strides, dilations, at["group"], ci, co, bi,
                                     x_t.shape[0], out_hw, lw.plan.lanes, _at_sample(lw, [x_t.shape[0], *out_hw]))):
            m = winograd.tile_size(x_t.shape[0], out_hw)
            u = const(winograd.transform_weight(weight, bi, bo, m))
            y = lw.kernels.call_te(winograd.winograd_nchwc, data, u, pads=pads, out_hw=tuple(lw.shape(y_t)[2:]), m=m,
                                   tile_block=winograd.SYMBOLIC_TILE_BLOCK.get(lw.plan.lanes, 1),
                                   primfunc_name_hint="conv2d_winograd")
            return _bias_nchwc(lw, node, y, co, bo)
    else:  # depthwise: [C/b, 1, KH, KW, 1, b]
        bi = lw.blocked[node.inputs[0]]
        data = lw.values[node.inputs[0]]
        packed = weight.reshape(co // bo, bo, 1, kh, kw, 1).transpose(0, 2, 3, 4, 5, 1)
    y = R.nn.conv2d(data, const(np.ascontiguousarray(packed)), strides=strides, padding=pads,
                    dilation=dilations, groups=at["group"], data_layout=f"NCHW{bi}c",
                    kernel_layout=f"OIHW{1 if at['group'] > 1 else bi}i{bo}o", out_layout=f"NCHW{bo}c")
    return _bias_nchwc(lw, node, y, co, bo)


def _bias_nchwc(lw: Lowering, node: Node, y: relax.Expr, co: int, bo: int) -> relax.Expr:
    """A conv's output plus its constant bias (if it has one), laid out as blocks."""
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = np.asarray(lw.const_of(node.inputs[2])).reshape(1, co, 1, 1)
        y = R.add(y, const(pack_activation(bias, bo)))
    return y


def _pool(lw: Lowering, node: Node) -> relax.Expr:
    from ember.targets.emit_nn import pool_window

    at = node.attrs
    x_t, y_t = in_type(lw, node, 0), out_type(node)
    b = lw.blocked[node.inputs[0]]
    layout = f"NCHW{b}c"
    n = len(at["kernel_shape"])
    window = pool_window(node, x_t, y_t, lw.values[node.inputs[0]], lifted=2 - n, trailing=1)
    size, strides, _, pads = _one_row(list(at["kernel_shape"]), list(at["strides"]), [1] * n, window.pads)
    kwargs: dict[str, Any] = dict(pool_size=size, strides=strides, padding=pads, ceil_mode=window.ceil,
                                  layout=layout, out_layout=layout)
    if node.op == "AveragePool":
        return R.nn.avg_pool2d(window.x, count_include_pad=window.include_pad, **kwargs)
    return R.nn.max_pool2d(window.x, **kwargs)


def _global_pool(lw: Lowering, node: Node) -> relax.Expr:
    b = lw.blocked[node.inputs[0]]
    fn = R.mean if node.op == "GlobalAveragePool" else R.max
    return to_plain(fn(lw.values[node.inputs[0]], [2, 3], True), lw.shape(out_type(node)), b)


def _instance_norm(lw: Lowering, node: Node) -> relax.Expr:
    """(x - mean) / sqrt(variance + epsilon) * scale + bias, mean and variance over each
    channel's H and W: over axes 2 and 3 of [N, C/b, H, W, b], each lane its own channel
    (sched_reduce.LaneReduce schedules it)."""
    x = lw.values[node.inputs[0]]
    t = out_type(node)
    b = lw.blocked[node.inputs[0]]
    scale, bias = (pack_activation(np.asarray(lw.const_of(name)).reshape(1, -1, 1, 1), b) for name in node.inputs[1:3])
    mean = R.mean(x, [2, 3], True)
    centered = R.subtract(x, mean)
    variance = R.mean(R.multiply(centered, centered), [2, 3], True)
    eps = relax.const(np.array(node.attrs["epsilon"], dtype=t.np_dtype), TVM_DTYPE[t.dtype])
    # y = x * a + (bias - mean * a), a = scale / sqrt(variance + eps): per channel, then one
    # multiply-add a pixel
    a = R.multiply(R.rsqrt(R.add(variance, eps)), const(scale))
    return R.add(R.multiply(x, a), R.subtract(const(bias), R.multiply(mean, a)))


def _operand(lw: Lowering, name: str, like: TensorType, b: int) -> relax.Expr | None:
    """An elementwise operand in the blocked layout of an output of type `like`: blocked values
    as they are, constants re-laid out in numpy, run-time tensors by Relax ops in the kernel."""
    if not name:
        return None
    if name in lw.blocked:
        return lw.values[name]
    t = lw.types[name]
    if t.rank == 0:
        return lw.arg(name)
    shape = view4(lw.shape(t), like.rank)
    per_channel = shape[1] == like.shape[1] and like.shape[1] != 1
    data = lw.const_of(name)
    if data is not None:
        shape = view4([int(d) for d in t.shape], like.rank)
        data = np.asarray(data).reshape(shape)
        return const(pack_activation(data, b) if per_channel else data.reshape([*shape, 1]))
    # (expand_dims, not reshape: over a dynamic image a reshape divides a flat index by the
    # symbolic sizes for every element)
    x = R.expand_dims(lw.arg(name), list(range(like.rank - t.rank))) if t.rank != like.rank else lw.arg(name)
    if like.rank == 3:
        x = R.expand_dims(x, [2])
    return to_blocked(x, shape, b) if per_channel else R.expand_dims(x, [-1])


def _aligned(lw: Lowering, name: str, arg: Any, out: TensorType, b: int) -> Any:
    """A blocked epilogue's operand whose dims are written differently from the output's (an
    FPN's conv + upsample(x2): h against 2*((h+1)//2), taken to be equal) read at the output's
    blocked dims, as lower._aligned does for plain operands."""
    if not name or arg is None or name not in lw.types or broadcast_refined(lw.types[name], out) is None:
        return arg
    arg = lw.emit(arg)
    shape = getattr(getattr(arg, "ty", None), "shape", None)
    if shape is None:
        return arg
    want = blocked_shape(lw.shape(out), b)
    have = list(shape.values) if hasattr(shape, "values") else None
    if have is None or len(have) != len(want):
        return arg
    analyzer = tvm.sym.Analyzer()
    target = [h if (isinstance(h, tirx.IntImm) and h.value == 1) or analyzer.can_prove_equal(h, w) else w
              for h, w in zip(have, want)]
    return lw.emit(lw.kernels.call_te(clamped_read, arg, target, primfunc_name_hint="aligned"))


def lower_member(lw: Lowering, node: Node) -> None:
    """Emit one member of a blocked node (`plan` said it is lowerable): its output is blocked,
    except a global pool's."""
    from ember.targets.lower import EMITTERS

    out = node.outputs[0]
    if node.op == "Conv":
        expr = _conv(lw, node)
    elif node.op in POOLS:
        expr = _pool(lw, node)
    elif node.op in GLOBAL_POOLS:
        lw.values[out.name] = lw.emit(_global_pool(lw, node))
        return
    elif node.op == "InstanceNormalization":
        expr = _instance_norm(lw, node)
    else:
        b = block_of(out.type.shape[1], lw.plan.lanes)
        args = [_operand(lw, name, out.type, b) for name in node.inputs]
        if node.op in BROADCASTING:
            args = [_aligned(lw, name, arg, out.type, b) for name, arg in zip(node.inputs, args)]
        expr = EMITTERS[node.op](lw, node, args)[0]
    lw.values[out.name] = lw.emit(expr)
    lw.blocked[out.name] = block_of(out.type.shape[1], lw.plan.lanes)


def lower_node(lw: Lowering, node: Node) -> None:
    """Emit a node the plan lowers blocked: one Primitive function (one kernel) whose blocked
    inputs and outputs are 5-d."""
    from ember.targets.fused import lower_fused, primitive_function, single_node_group

    group = node if node.op == "Fused" else single_node_group(lw, node)
    outs = lower_fused(lw, group, primitive_function(lw, group, blocked=True))
    for value, expr in zip(node.outputs, outs):
        lw.values[value.name] = expr
