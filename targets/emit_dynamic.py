"""Ops whose output size depends on the data: NonZero, Compress, NonMaxSuppression; and the
run-time shapes, lengths and counts of Reshape, Expand, ConstantOfShape, Range, TopK and Slice
(their emitters in emit_shape call the `*_from_data` functions here).

Each is two steps in `main`, both compiled code (no Python at run time, so the thin runtime
runs them): a kernel (or a fused reduction) counts the elements the output will hold, the VM
turns that count into a shape (`R.tensor_to_shape`) and binds it to a fresh tir.Var named
after ember's run-time dim (`nz_1`), and a serial TIR kernel fills an output of that length.
Later nodes read the dim like any symbolic dim of an input, so a `GatherND` of `NonZero`'s
indices or the boxes NMS kept compile as usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from ember.compiler.ir import Node
from ember.targets.emit_common import (
    TVM_DTYPE,
    Emitter,
    Lowering,
    LoweringError,
    R,
    const,
    has_input,
    in_type,
    out_type,
    take,
)

KERNEL_ATTRS = 'T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})'


def bind_length(lw: Lowering, count: relax.Expr, name: str) -> tirx.Var:
    """The tir.Var `name`, bound to the value of `count` (an int64 tensor of one element) at
    run time; later nodes read ember's dim `name` as this var."""
    shape = lw.emit(R.tensor_to_shape(R.reshape(count, [1])))
    var = tirx.Var(name, "int64")
    lw.bb.match_cast(shape, relax.ShapeType([var]))
    lw.dims[name] = var
    return var


def _zero(dt: str) -> str:
    """The TVMScript literal a nonzero test compares with."""
    return "False" if dt == "bool" else f"T.{dt}(0)"


def nonzero_source(rank: int, dt: str) -> str:
    """A serial kernel writing the coordinates of x's nonzero elements in row-major order:
    (x[d0, ..], count[1], y[rank, n]), n = count[0] being the count found before."""
    dims = [f"d{i}" for i in range(rank)]
    idx = [f"i{i}" for i in range(rank)]
    test = f"x[{', '.join(idx)}]" if dt == "bool" else f"x[{', '.join(idx)}] != {_zero(dt)}"
    lines = [
        "@T.prim_func(private=True)",
        "def nonzero_fill(x_h: T.handle, count: T.Buffer((1,), \"int64\"), y_h: T.handle):",
        f"    {KERNEL_ATTRS}",
        *(f"    {d} = T.int64()" for d in dims),
        "    n = T.int64()",
        f'    x = T.match_buffer(x_h, ({", ".join(dims)},), "{dt}")',
        f'    y = T.match_buffer(y_h, ({rank}, n), "int64")',
        '    k = T.decl_buffer((1,), "int64")',
        "    k[0] = T.int64(0)",
        f"    for {', '.join(idx)} in T.grid({', '.join(dims)}):",
        f"        if {test} and k[0] < count[0]:",
        *(f"            y[{j}, k[0]] = {i}" for j, i in enumerate(idx)),
        "            k[0] = k[0] + T.int64(1)",
    ]
    return "\n".join(lines) + "\n"


def nonzero(lw: Lowering, x: relax.Expr, rank: int, dt: str, name: str) -> relax.Expr:
    """[rank, n] int64 coordinates of x's nonzero elements (n bound as dim `name`)."""
    flags = R.astype(x if dt == "bool" else R.not_equal(x, relax.const(0, dt)), "int64")
    count = lw.emit(R.reshape(R.sum(flags), [1]))
    n = bind_length(lw, count, name)
    gvar = lw.bb.add_func(tvm.script.from_source(nonzero_source(rank, dt)), "nonzero_fill")
    # The kernel reads the count (it never writes past it): TVM's RewriteDataflowReshape takes a
    # kernel that reads one tensor for a possible reshape, and fails on one without a root block.
    return relax.call_tir(gvar, relax.Tuple([x, count]), relax.TensorType([rank, n], "int64"))


def _nonzero(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t = in_type(lw, node, 0)
    x = a[0] if t.rank else R.reshape(a[0], [1])  # a scalar is one element of a 1-D tensor
    return [nonzero(lw, x, max(t.rank, 1), TVM_DTYPE[t.dtype], out_type(node).shape[1])]


def _compress(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    t, y = in_type(lw, node, 0), out_type(node)
    if node.attrs.get("axis") is None:  # the flattened input
        x, axis = R.reshape(a[0], [-1]), 0
        size = int(np.prod(lw.shape(t), dtype=object)) if all(isinstance(d, int) for d in t.shape) else None
        extent = size if size is not None else _product(lw.shape(t))
    else:
        x, axis = a[0], int(node.attrs["axis"]) % t.rank
        size = t.shape[axis] if isinstance(t.shape[axis], int) else None
        extent = lw.dim(t.shape[axis])
    cond_len, cond = in_type(lw, node, 1).shape[0], a[1]
    if isinstance(cond_len, int) and size is not None:
        if cond_len > size:
            raise LoweringError(f"node {node.name!r} (Compress): the condition has {cond_len} entries for {size} slices")
    else:  # a longer condition is invalid (onnxruntime refuses it): its extra entries are never read
        cond = lw.emit(R.strided_slice(cond, [0], [0], [extent]))
    fresh = y.shape[axis]
    idx = lw.emit(nonzero(lw, cond, 1, "bool", fresh))
    return [take(x, R.reshape(idx, [lw.dims[fresh]]), axis, in_type(lw, node, 0).dtype, True)]


def _product(dims: list[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return out


# --- NonMaxSuppression -----------------------------------------------------------------------------
def nms_source(center: bool) -> str:
    """NMS per (batch, class), in parallel, as onnxruntime does it: the boxes scoring above the
    threshold go into a max-heap by score (ties: the lower index first) and are popped in that
    order, each kept unless it overlaps a box already kept by IoU > threshold, until `limit`
    are kept or none is left. (The greedy algorithm of ember's reference: a box is dropped only
    by kept boxes; the heap pops only as many as it takes, not a full sort.)
    Kept box indices go to sel[b, c, :count[b, c]]; key/order (the heap) are scratch.
    Corners as ember's reference: [y1, x1, y2, x2] in either order, or [xc, yc, w, h]."""
    if center:
        corners = [
            "{p}yc: T.float32 = T.Cast('float32', boxes[b, {i}, 1])",
            "{p}xc: T.float32 = T.Cast('float32', boxes[b, {i}, 0])",
            "{p}hh: T.float32 = T.Cast('float32', boxes[b, {i}, 3]) * T.float32(0.5)",
            "{p}hw: T.float32 = T.Cast('float32', boxes[b, {i}, 2]) * T.float32(0.5)",
            "{p}y0: T.float32 = {p}yc - {p}hh",
            "{p}x0: T.float32 = {p}xc - {p}hw",
            "{p}y1: T.float32 = {p}yc + {p}hh",
            "{p}x1: T.float32 = {p}xc + {p}hw",
        ]
    else:
        corners = [
            "{p}y0: T.float32 = T.min(T.Cast('float32', boxes[b, {i}, 0]), T.Cast('float32', boxes[b, {i}, 2]))",
            "{p}x0: T.float32 = T.min(T.Cast('float32', boxes[b, {i}, 1]), T.Cast('float32', boxes[b, {i}, 3]))",
            "{p}y1: T.float32 = T.max(T.Cast('float32', boxes[b, {i}, 0]), T.Cast('float32', boxes[b, {i}, 2]))",
            "{p}x1: T.float32 = T.max(T.Cast('float32', boxes[b, {i}, 1]), T.Cast('float32', boxes[b, {i}, 3]))",
        ]

    def corner_lines(indent: str, p: str, i: str) -> list[str]:
        return [indent + c.format(p=p, i=i) for c in corners]

    def sift_down(indent: str, start: str) -> list[str]:
        """Restore the heap below slot `start` (heap size st[0]); st[3] the slot, st[4] whether
        to go on, st[5] the better child."""
        better = ("key[b, c, {x}] > key[b, c, {y}] or (key[b, c, {x}] == key[b, c, {y}] "
                  "and order[b, c, {x}] < order[b, c, {y}])")
        body = [
            f"st[3] = {start}",
            "st[4] = T.int64(1)",
            "while st[4] == T.int64(1):",
            "    left: T.int64 = st[3] * T.int64(2) + T.int64(1)",
            "    st[5] = st[3]",
            "    if left < st[0]:",
            "        if " + better.format(x="left", y="st[5]") + ":",
            "            st[5] = left",
            "    if left + T.int64(1) < st[0]:",
            "        if " + better.format(x="left + T.int64(1)", y="st[5]") + ":",
            "            st[5] = left + T.int64(1)",
            "    if st[5] != st[3]:",
            "        tk: T.float32 = key[b, c, st[3]]",
            "        to: T.int64 = order[b, c, st[3]]",
            "        key[b, c, st[3]] = key[b, c, st[5]]",
            "        order[b, c, st[3]] = order[b, c, st[5]]",
            "        key[b, c, st[5]] = tk",
            "        order[b, c, st[5]] = to",
            "        st[3] = st[5]",
            "    else:",
            "        st[4] = T.int64(0)",
        ]
        return [indent + line for line in body]

    # st: [heap size, -, -, sift slot, sifting, better child, kept, -, overlapped, kept box checked]
    lines = [
        "@T.prim_func(private=True)",
        "def nms_select(boxes_h: T.handle, scores_h: T.handle, limits: T.Buffer((3,), \"float32\"), sel_h: T.handle,"
        " count_h: T.handle, key_h: T.handle, order_h: T.handle):",
        f"    {KERNEL_ATTRS}",
        "    nb = T.int64()",
        "    nc = T.int64()",
        "    n = T.int64()",
        '    boxes = T.match_buffer(boxes_h, (nb, n, 4), "DT")',
        '    scores = T.match_buffer(scores_h, (nb, nc, n), "DT")',
        '    sel = T.match_buffer(sel_h, (nb, nc, n), "int64")',
        '    count = T.match_buffer(count_h, (nb, nc), "int64")',
        '    key = T.match_buffer(key_h, (nb, nc, n), "float32")',
        '    order = T.match_buffer(order_h, (nb, nc, n), "int64")',
        "    for bc in T.parallel(nb * nc):",
        "        b: T.int64 = bc // nc",
        "        c: T.int64 = bc % nc",
        '        st = T.decl_buffer((10,), "int64")',
        "        st[0] = T.int64(0)",
        "        for i in range(n):",
        "            if T.Cast('float32', scores[b, c, i]) > limits[2]:",
        "                key[b, c, st[0]] = T.Cast('float32', scores[b, c, i])",
        "                order[b, c, st[0]] = i",
        "                st[0] = st[0] + T.int64(1)",
        "        for s in range(st[0] // T.int64(2)):",  # a max-heap of the candidates
        *sift_down("            ", "st[0] // T.int64(2) - T.int64(1) - s"),
        "        st[6] = T.int64(0)",
        "        while st[0] > T.int64(0) and T.Cast('float32', st[6]) < limits[0]:",
        "            cand: T.int64 = order[b, c, 0]",
        "            st[0] = st[0] - T.int64(1)",
        "            key[b, c, 0] = key[b, c, st[0]]",
        "            order[b, c, 0] = order[b, c, st[0]]",
        *sift_down("            ", "T.int64(0)"),
        *corner_lines("            ", "o", "cand"),
        "            area: T.float32 = (ox1 - ox0) * (oy1 - oy0)",
        "            st[8] = T.int64(0)",
        "            st[9] = T.int64(0)",
        "            while st[8] == T.int64(0) and st[9] < st[6]:",
        "                kept: T.int64 = sel[b, c, st[9]]",
        *corner_lines("                ", "k", "kept"),
        "                iw: T.float32 = T.min(ox1, kx1) - T.max(ox0, kx0)",
        "                ih: T.float32 = T.min(oy1, ky1) - T.max(oy0, ky0)",
        "                karea: T.float32 = (kx1 - kx0) * (ky1 - ky0)",
        "                union: T.float32 = area + karea - iw * ih",
        "                if iw > T.float32(0) and ih > T.float32(0) and area > T.float32(0) and karea > T.float32(0):",
        "                    if union > T.float32(0) and iw * ih / union > limits[1]:",
        "                        st[8] = T.int64(1)",
        "                st[9] = st[9] + T.int64(1)",
        "            if st[8] == T.int64(0):",
        "                sel[b, c, st[6]] = cand",
        "                st[6] = st[6] + T.int64(1)",
        "        count[b, c] = st[6]",
    ]
    return "\n".join(lines) + "\n"


NMS_GATHER = """\
@T.prim_func(private=True)
def nms_gather(sel_h: T.handle, count_h: T.handle, y_h: T.handle):
    KERNEL_ATTRS
    nb = T.int64()
    nc = T.int64()
    n = T.int64()
    m = T.int64()
    sel = T.match_buffer(sel_h, (nb, nc, n), "int64")
    count = T.match_buffer(count_h, (nb, nc), "int64")
    y = T.match_buffer(y_h, (m, 3), "int64")
    k = T.decl_buffer((1,), "int64")
    k[0] = T.int64(0)
    for b, c in T.grid(nb, nc):
        for j in range(count[b, c]):
            y[k[0], 0] = b
            y[k[0], 1] = c
            y[k[0], 2] = sel[b, c, j]
            k[0] = k[0] + T.int64(1)
""".replace("KERNEL_ATTRS", KERNEL_ATTRS)


def _scalar_input(lw: Lowering, node: Node, a: list[Any], i: int, default: float) -> relax.Expr:
    """Optional scalar input i as a [1] float32 tensor (its first element; `default` when
    omitted or empty)."""
    if not has_input(node, i):
        return const(np.array([default], np.float32))
    t = in_type(lw, node, i)
    if any(d == 0 for d in t.shape):
        return const(np.array([default], np.float32))
    flat = R.reshape(a[i], [-1])
    return R.astype(R.strided_slice(flat, [0], [0], [1]), "float32")


def _nms(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    bt, st = in_type(lw, node, 0), in_type(lw, node, 1)
    dt = TVM_DTYPE[bt.dtype]
    if TVM_DTYPE[st.dtype] != dt:
        raise LoweringError(f"node {node.name!r} (NonMaxSuppression): boxes are {bt.dtype} and scores {st.dtype}")
    # limits = [max kept per class (>= 0), IoU threshold, score threshold (-inf: none)]
    limit = R.maximum(_scalar_input(lw, node, a, 2, 0.0), const(np.zeros(1, np.float32)))
    limits = lw.emit(R.concat([limit, _scalar_input(lw, node, a, 3, 0.0), _scalar_input(lw, node, a, 4, -np.inf)], axis=0))
    nb, n = lw.dim(bt.shape[0]), lw.dim(bt.shape[1])
    nc = lw.dim(st.shape[1])
    source = nms_source(bool(node.attrs["center_point_box"])).replace('"DT"', f'"{dt}"')
    select = lw.bb.add_func(tvm.script.from_source(source), "nms_select")
    per_class = [nb, nc, n]
    found = lw.emit(relax.call_tir(select, relax.Tuple([a[0], a[1], limits]), [
        relax.TensorType(per_class, "int64"), relax.TensorType([nb, nc], "int64"), relax.TensorType(per_class, "float32"),
        relax.TensorType(per_class, "int64")]))
    sel, count = lw.emit(relax.TupleGetItem(found, 0)), lw.emit(relax.TupleGetItem(found, 1))
    m = bind_length(lw, lw.emit(R.sum(count)), out_type(node).shape[0])
    gather = lw.bb.add_func(tvm.script.from_source(NMS_GATHER), "nms_gather")
    return [relax.call_tir(gather, relax.Tuple([sel, count]), relax.TensorType([m, 3], "int64"))]


EMITTERS: dict[str, Emitter] = {"NonZero": _nonzero, "Compress": _compress, "NonMaxSuppression": _nms}


# --- Results cast to ember's types ------------------------------------------------------------------
def bind_type(lw: Lowering, expr: relax.Expr, t: Any) -> relax.Expr:
    """`expr` cast to ember's type `t`: dims known so far are checked at run time, run-time
    dims (`y_0`, where the branches' sizes differ) are bound to fresh tir.Vars."""
    expr = lw.emit(expr)
    known = getattr(getattr(expr.ty, "shape", None), "values", None)
    known = list(known) if known is not None and len(known) == len(t.shape) else [None] * len(t.shape)
    shape, hidden = [], False
    for d, have in zip(t.shape, known):
        try:
            shape.append(lw.dim(d))
        except LoweringError:
            # A size Relax knows as a var or a constant (a channel count) is that; one it knows
            # as an expression (a run-time pad's `h + v1 + v4`) gets a var of its own, bound from
            # a value whose shape is hidden first: TVM's passes inline a var that a match_cast
            # binds to a known expression, and FuseTIR then refused the expression in a fused
            # kernel's shape arguments (RetinaNet, FCOS).
            simple = isinstance(have, (tirx.Var, tirx.IntImm))
            hidden = hidden or (have is not None and not simple)
            lw.dims[d] = have if simple else tirx.Var(d, "int64")
            shape.append(lw.dims[d])
    dtype = TVM_DTYPE[t.dtype]
    if hidden:
        expr = lw.bb.match_cast(expr, relax.TensorType(dtype=dtype, ndim=len(t.shape)))
    return lw.bb.match_cast(expr, relax.TensorType(shape, dtype))


# --- Shapes, lengths and counts read from the data ----------------------------------------------------
def runtime_ints(lw: Lowering, expr: relax.Expr, n: int) -> list[tirx.Var]:
    """The n values of an integer tensor (any rank, n elements), bound to tir.Vars at run time."""
    shape = lw.emit(R.tensor_to_shape(lw.emit(R.astype(R.reshape(expr, [n]), "int64"))))
    values = [tirx.Var(f"v{i}", "int64") for i in range(n)]
    lw.bb.match_cast(shape, relax.ShapeType(values))
    return values


def resolves(lw: Lowering, t: Any) -> bool:
    """Whether every dim of a type is known before the node runs (else it comes from the data)."""
    try:
        lw.shape(t)
    except LoweringError:
        return False
    return True


def _ones(n: int) -> relax.Expr:
    return const(np.ones(n, np.int64))


def _dims_tensor(lw: Lowering, x: relax.Expr, rank: int, total: int) -> relax.Expr:
    """x's shape as an int64 tensor, padded with leading ones to `total` entries."""
    dims = lw.emit(R.shape_to_tensor(lw.emit(R.shape_of(x))))
    return R.concat([_ones(total - rank), dims], axis=0) if total > rank else dims


def reshape_from_data(lw: Lowering, node: Node, x: relax.Expr, shape: relax.Expr) -> relax.Expr:
    """Reshape to a shape tensor computed at run time: 0 copies the input's dim (unless
    allowzero), -1 takes what the others leave."""
    t, y = in_type(lw, node, 0), out_type(node)
    r = y.rank
    s = lw.emit(R.astype(shape, "int64"))
    if not node.attrs.get("allowzero"):
        dims = lw.emit(R.shape_to_tensor(lw.emit(R.shape_of(x))))
        if t.rank >= r:
            same = R.strided_slice(dims, [0], [0], [r]) if t.rank > r else dims
        else:
            same = R.concat([dims, _ones(r - t.rank)], axis=0)
        s = lw.emit(R.where(R.equal(s, const(np.array(0, np.int64))), same, s))
    numel = R.prod(lw.emit(R.shape_to_tensor(lw.emit(R.shape_of(x)))))
    minus = R.equal(s, const(np.array(-1, np.int64)))
    known = R.prod(R.where(minus, const(np.array(1, np.int64)), s))
    s = lw.emit(R.where(minus, R.floor_divide(numel, R.maximum(known, const(np.array(1, np.int64)))), s))
    # A view, not a kernel: a copy to dims read at run time indexes its input by divisions by
    # symbolic sizes, which TVM took 50-70 s to build per kernel (MobileViT's patch reshapes)
    # and its view rewrite does not recognise.
    values = runtime_ints(lw, s, r)
    view = relax.op.call_pure_packed("vm.builtin.reshape", lw.emit(x), relax.ShapeExpr(values),
                                     ty_args=[relax.TensorType(values, TVM_DTYPE[y.dtype])])
    return bind_type(lw, view, y)


def expand_from_data(lw: Lowering, node: Node, x: relax.Expr, shape: relax.Expr) -> relax.Expr:
    """Expand to a shape tensor computed at run time (numpy broadcasting of x's shape and it)."""
    t, y = in_type(lw, node, 0), out_type(node)
    r, rs = y.rank, in_type(lw, node, 1).shape[0]
    s = lw.emit(R.astype(shape, "int64"))
    if isinstance(rs, int) and rs < r:
        s = lw.emit(R.concat([_ones(r - rs), s], axis=0))
    mine = _dims_tensor(lw, x, t.rank, r)
    out = lw.emit(R.where(R.equal(s, const(np.array(1, np.int64))), mine, s))
    return bind_type(lw, R.broadcast_to(x, runtime_ints(lw, out, r)), y)


def full_from_data(lw: Lowering, node: Node, shape: relax.Expr, fill: relax.Expr) -> relax.Expr:
    """ConstantOfShape of a shape tensor computed at run time."""
    y = out_type(node)
    return bind_type(lw, R.full(runtime_ints(lw, shape, y.rank), fill, TVM_DTYPE[y.dtype]), y)


def range_from_data(lw: Lowering, node: Node, a: list[Any]) -> relax.Expr:
    """Range whose start, limit or delta is computed at run time: max(ceil((limit - start) /
    delta), 0) elements start + i * delta (the count in f64: exact for integers below 2^53)."""
    y = out_type(node)
    start, limit, delta = (R.reshape(v, []) for v in a[:3])
    wide = [R.astype(v, "float64") for v in (start, limit, delta)]
    count = R.maximum(R.ceil(R.divide(R.subtract(wide[1], wide[0]), wide[2])), relax.const(0.0, "float64"))
    n = runtime_ints(lw, lw.emit(R.astype(count, "int64")), 1)[0]
    steps = R.arange(0, n, 1, TVM_DTYPE[y.dtype])
    return bind_type(lw, R.add(R.multiply(steps, delta), start), y)


def topk_source(largest: bool, dt: str) -> str:
    """TopK along the middle axis of x [outer, n, inner], k = the outputs' middle dim, each
    (outer, inner) line in parallel, as onnxruntime selects: a heap of the k best so far (its
    root the worst kept: the smaller value, or of equal values the later index), each later
    element compared with the root and put in its place when better, then the heap sorted
    best first (ties: the lower index first, as ONNX asks). n + k log k steps, not a sort of
    all n: a detector's k = min(n, 300) of 672,000 scores took 2.0 ms sorted, onnxruntime
    0.3 ms. (k's [1] tensor is read too: TVM's reshape rewrite fails on one-input kernels.)"""
    op = ">" if largest else "<"
    worse = ("(vals[o, {x}, i] {rev} vals[o, {y}, i] or (vals[o, {x}, i] == vals[o, {y}, i] "
             "and idx[o, {x}, i] > idx[o, {y}, i]))").replace("{rev}", "<" if largest else ">")

    def sift_down(indent: str, start: str, size: str) -> list[str]:
        """Restore the heap below slot `start` among the first `size` slots; st[1] the slot,
        st[2] whether to go on, st[3] the worse child."""
        body = [
            f"st[1] = {start}",
            "st[2] = T.int64(1)",
            "while st[2] == T.int64(1):",
            "    left: T.int64 = st[1] * T.int64(2) + T.int64(1)",
            "    st[3] = st[1]",
            f"    if left < {size}:",
            "        if " + worse.format(x="left", y="st[3]") + ":",
            "            st[3] = left",
            f"    if left + T.int64(1) < {size}:",
            "        if " + worse.format(x="left + T.int64(1)", y="st[3]") + ":",
            "            st[3] = left + T.int64(1)",
            "    if st[3] != st[1]:",
            "        tv: T.DT = vals[o, st[1], i]",
            "        ti: T.int64 = idx[o, st[1], i]",
            "        vals[o, st[1], i] = vals[o, st[3], i]",
            "        idx[o, st[1], i] = idx[o, st[3], i]",
            "        vals[o, st[3], i] = tv",
            "        idx[o, st[3], i] = ti",
            "        st[1] = st[3]",
            "    else:",
            "        st[2] = T.int64(0)",
        ]
        return [indent + line for line in body]

    lines = [
        "@T.prim_func(private=True)",
        "def topk_select(x_h: T.handle, k_h: T.handle, vals_h: T.handle, idx_h: T.handle):",
        f"    {KERNEL_ATTRS}",
        "    outer = T.int64()",
        "    n = T.int64()",
        "    inner = T.int64()",
        "    m = T.int64()",
        '    x = T.match_buffer(x_h, (outer, n, inner), "DT")',
        '    kk = T.match_buffer(k_h, (1,), "int64")',
        '    vals = T.match_buffer(vals_h, (outer, m, inner), "DT")',
        '    idx = T.match_buffer(idx_h, (outer, m, inner), "int64")',
        "    for oi in T.parallel(outer * inner):",
        "        o: T.int64 = oi // inner",
        "        i: T.int64 = oi % inner",
        '        st = T.decl_buffer((4,), "int64")',
        "        st[0] = T.min(T.min(m, n), T.max(kk[0], T.int64(0)))",  # the heap's size
        "        for j in range(st[0]):",
        "            vals[o, j, i] = x[o, j, i]",
        "            idx[o, j, i] = j",
        "        for s in range(st[0] // T.int64(2)):",
        *sift_down("            ", "st[0] // T.int64(2) - T.int64(1) - s", "st[0]"),
        "        if st[0] > T.int64(0):",  # the root (the worst kept) in a register, not re-read
        '            root = T.decl_buffer((1,), "DT")',
        "            root[0] = vals[o, 0, i]",
        "            h: T.int64 = st[0]",
        "            for j in range(n - h):",
        f"                if x[o, h + j, i] {op} root[0]:",
        "                    vals[o, 0, i] = x[o, h + j, i]",
        "                    idx[o, 0, i] = h + j",
        *sift_down("                    ", "T.int64(0)", "h"),
        "                    root[0] = vals[o, 0, i]",
        "        for s in range(st[0] - T.int64(1)):",  # heap sort: the worst to the back
        "            last: T.int64 = st[0] - T.int64(1) - s",
        "            tv: T.DT = vals[o, 0, i]",
        "            ti: T.int64 = idx[o, 0, i]",
        "            vals[o, 0, i] = vals[o, last, i]",
        "            idx[o, 0, i] = idx[o, last, i]",
        "            vals[o, last, i] = tv",
        "            idx[o, last, i] = ti",
        *sift_down("            ", "T.int64(0)", "last"),
    ]
    return "\n".join(lines).replace('"DT"', f'"{dt}"').replace("T.DT", f"T.{dt}") + "\n"


def topk_select(lw: Lowering, node: Node, x: relax.Expr, k: relax.Expr, k_dim: Any, axis: int) -> list[relax.Expr]:
    """TopK by the heap selection of `topk_source` (k_dim: the outputs' length along axis, a
    tir.Var or int; k: the same as a tensor)."""
    t = in_type(lw, node, 0)
    dims = lw.shape(t)
    outer, inner = _product(dims[:axis]), _product(dims[axis + 1:])
    lines = R.reshape(x, [outer, dims[axis], inner])
    kernel = lw.bb.add_func(tvm.script.from_source(topk_source(bool(node.attrs["largest"]), TVM_DTYPE[t.dtype])),
                            "topk_select")
    k_vec = lw.emit(R.astype(R.reshape(k, [1]), "int64"))
    out_dims = [*dims[:axis], k_dim, *dims[axis + 1:]]
    both = lw.emit(relax.call_tir(kernel, relax.Tuple([lines, k_vec]), [
        relax.TensorType([outer, k_dim, inner], TVM_DTYPE[t.dtype]), relax.TensorType([outer, k_dim, inner], "int64")]))
    return [lw.emit(R.reshape(lw.emit(relax.TupleGetItem(both, i)), out_dims)) for i in range(2)]


def topk_from_data(lw: Lowering, node: Node, x: relax.Expr, k: relax.Expr, axis: int) -> list[relax.Expr]:
    """TopK with k computed at run time (min(n, 300) in a detector's graph): selected, not
    every element sorted (`topk_source`)."""
    k_var = runtime_ints(lw, k, 1)[0]
    outs = topk_select(lw, node, x, k, k_var, axis)
    return [bind_type(lw, out, value.type) for out, value in zip(outs, node.outputs)]


def slice_from_data(lw: Lowering, node: Node, a: list[Any], axes: list[int], steps: list[int]) -> relax.Expr:
    """Slice whose starts or ends are computed at run time (axes and steps constant): each
    start and end clamped as ONNX says for either sign of step, then the elements gathered by
    an index range per axis (TVM's strided slice with run-time bounds builds broken kernels)."""
    t, y = in_type(lw, node, 0), out_type(node)
    n = len(axes)
    starts, ends = runtime_ints(lw, a[1], n), runtime_ints(lw, a[2], n)
    zero = tirx.IntImm("int64", 0)
    x = a[0]
    for s, e, ax, step in zip(starts, ends, axes, steps):
        dim = lw.dim(t.shape[ax])
        dim = tirx.IntImm("int64", dim) if isinstance(dim, int) else dim

        def clamp(v: Any, lo: Any, hi: Any, dim: Any = dim) -> Any:
            return tirx.max(tirx.min(tirx.Select(v < 0, v + dim, v), hi), lo)

        if step > 0:
            b, stop = clamp(s, zero, dim), clamp(e, zero, dim)
            count = tirx.max(tirx.floordiv(stop - b + (step - 1), step), zero)
        else:
            b, stop = clamp(s, zero, dim - 1), clamp(e, tirx.IntImm("int64", -1), dim - 1)
            count = tirx.max(tirx.floordiv(b - stop + (-step - 1), -step), zero)
        (length,) = runtime_ints(lw, R.shape_to_tensor(relax.ShapeExpr([count])), 1)
        first = lw.emit(R.shape_to_tensor(relax.ShapeExpr([b])))
        index = R.add(R.multiply(R.arange(0, length, 1, "int64"), const(np.array(step, np.int64))), first)
        x = lw.emit(take(x, lw.emit(index), ax, "", in_range=True))
    return bind_type(lw, x, y)
