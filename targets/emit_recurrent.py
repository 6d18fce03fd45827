"""Emitters: recurrent networks (LSTM, GRU, RNN) with every option the interpreter takes.

    X W^T + Wb for every step and direction      one matmul (Relax; the Matmul rule, W packed)
    the recurrence                               one hand-written TIR kernel (this module)

The kernel (generated as TVMScript per op, direction, hidden size and options) runs groups of
up to ROWS batch rows of one direction per parallel iteration. Per step:
- h of the group's rows is copied to a small buffer (0 for rows past the batch);
- the gates start from the step's row of X W^T + Wb plus the recurrent bias;
- h R^T is added through ROWS x TILE register tiles over the hidden size, R^T packed at
  compile time in panels of TILE columns so a tile's pass over k reads contiguous memory (a
  single row, batch 1, takes QUAD panels at once instead of computing rows that are not there);
- the cell's elementwise update runs in vectors of VEC lanes, each gate activated in place
  (fp32 tanh and sigmoid as TVM's rational fast_tanh; libm's are scalar calls per lane).
h and c live in the Y_h / Y_c outputs. Symbolic sequence length and batch are read from the
buffers at run time. Semantics are the interpreter's (compiler/ops/recurrent.py): `sequence_lens`
as onnxruntime (steps past a sequence's length are skipped and Y is 0 there, the reverse
direction walks each sequence back from its own last step, an empty sequence has final states
of 0, a length outside 0..seq is a run-time error), f16/bf16 computed in f32.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ember.compiler.ir import Node
from ember.compiler.ops import recurrent as ref
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

# Reached through `T.` in the generated TVMScript; alpha/beta are substituted as literals.
_ACT = {
    "relu": "T.max({x}, {zero})",
    "tanh": "T.tanh({x})",
    "sigmoid": "T.sigmoid({x})",
    "affine": "{a} * {x} + {b}",
    "leakyrelu": "T.if_then_else({x} >= {zero}, {x}, {a} * {x})",
    "thresholdedrelu": "T.if_then_else({x} > {a}, {x}, {zero})",
    "scaledtanh": "{a} * T.tanh({b} * {x})",
    "hardsigmoid": "T.min(T.max({a} * {x} + {b}, {zero}), {one})",
    "elu": "T.if_then_else({x} >= {zero}, {x}, {a} * (T.exp(T.min({x}, {zero})) - {one}))",
    "softsign": "{x} / ({one} + T.fabs({x}))",
    "softplus": "T.max({x}, {zero}) + T.log({one} + T.exp({zero} - T.fabs({x})))",
}
assert set(_ACT) == set(ref._ACTIVATIONS), "every activation the interpreter knows has a kernel form"

SPECS = {"LSTM": ref.LSTM, "GRU": ref.GRU, "RNN": ref.RNN}

# Batch rows that share a step's pass over R: R's row k is read once for all of them (at
# batch 8, 100 steps of a 256-wide bidirectional LSTM: 19.6 ms one row at a time, onnxruntime
# 8.2 ms).
ROWS = 4
TILE = 32  # columns of the register tile: ROWS x TILE accumulators (8 AVX-512 registers)
QUAD = 4  # panels a single row's tile covers (batch 1): QUAD x TILE accumulators


def _literal(value: float, dt: str) -> str:
    return f"T.{dt}({float(value)!r})"


def _act(spec: tuple[str, float | None, float | None], x: str, dt: str) -> str:
    name, a, b = spec
    lit = {"zero": _literal(0.0, dt), "one": _literal(1.0, dt)}
    if a is not None:
        lit["a"] = _literal(a, dt)
    if b is not None:
        lit["b"] = _literal(b, dt)
    return "(" + _ACT[name].format(x=f"({x})", **lit) + ")"


def _clip(x: str, clip: float | None, dt: str) -> str:
    if clip is None:
        return x
    return f"T.max(T.min({x}, {_literal(clip, dt)}), {_literal(-clip, dt)})"


# Eigen's rational tanh (TVM's fast_tanh: ~1e-7 relative in fp32, exact 1 past |x| = 9):
# libm's tanhf is a scalar call per lane, most of a small recurrence's step.
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _horner(x2: str, coeffs: tuple[float, ...], dt: str) -> str:
    expr = _literal(coeffs[0], dt)
    for c in coeffs[1:]:
        expr = f"({x2} * {expr} + {_literal(c, dt)})"
    return expr


def _act_in_place(spec: tuple[str, float | None, float | None], buf: str, dt: str) -> list[str]:
    """Statements applying an activation to the buffer element `buf` in place. fp32 tanh and
    sigmoid (= (1 + tanh(x / 2)) / 2) are the rational approximation, clamped first so each
    statement reads `buf` as a plain load; the rest, and every fp64 one, one expression."""
    name = spec[0]
    if dt != "float32" or name not in ("tanh", "sigmoid"):
        return [f"{buf} = {_act(spec, buf, dt)}"]
    half = name == "sigmoid"
    scale = "T.float32(0.5) * " if half else ""
    x2 = f"({buf} * {buf})"
    tanh = f"{buf} * {_horner(x2, _TANH_P, dt)} / {_horner(x2, _TANH_Q, dt)}"
    return [f"{buf} = T.max(T.min({scale}{buf}, T.float32(9.0)), T.float32(-9.0))",
            f"{buf} = T.float32(0.5) + T.float32(0.5) * ({tanh})" if half else f"{buf} = {tanh}"]


def kernel_source(op: str, attrs: dict[str, Any], dirs: int, hidden: int, dt: str, has_lens: bool, has_h0: bool,
                  has_c0: bool) -> str:
    """The recurrence kernel as TVMScript: (xw, rp0[, rp1], rb[, p][, lens][, h0][, c0], y, yh[, yc]);
    rpN is R^T's column range N of `ranges` packed in panels (`pack_panels`)."""
    spec = SPECS[op]
    H, GH, D = hidden, spec.gates * hidden, dirs
    acts = ref.activation_specs(attrs, spec, dirs)
    per = len(spec.activations)
    clip = attrs.get("clip")
    lstm = op == "LSTM"
    params = ["xw_h: T.handle"]
    for i, (_, width) in enumerate(ranges(op, H)):
        params.append(f'rp{i}: T.Buffer(({D}, {-(-width // TILE)}, {H}, {TILE}), "{dt}")')
    params.append(f'rb: T.Buffer(({D}, {GH}), "{dt}")')
    if lstm:
        params.append(f'p: T.Buffer(({D}, {3 * H}), "{dt}")')
    params += ["lens_h: T.handle"] * has_lens + ["h0_h: T.handle"] * has_h0 + ["c0_h: T.handle"] * (lstm and has_c0)
    params += ["y_h: T.handle", "yh_h: T.handle"] + ["yc_h: T.handle"] * lstm
    w = ScriptText()
    w(0, "@T.prim_func(private=True)")
    w(0, f"def {op.lower()}_recurrence({', '.join(params)}):")
    w(1, 'T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})')
    w(1, "seq = T.int64()")
    w(1, "batch = T.int64()")
    w(1, f'xw = T.match_buffer(xw_h, (seq, batch, {D * GH}), "{dt}")')
    if has_lens:
        w(1, 'lens = T.match_buffer(lens_h, (batch,), "int32")')
    if has_h0:
        w(1, f'h0 = T.match_buffer(h0_h, ({D}, batch, {H}), "{dt}")')
    if lstm and has_c0:
        w(1, f'c0 = T.match_buffer(c0_h, ({D}, batch, {H}), "{dt}")')
    w(1, f'y = T.match_buffer(y_h, (seq, {D}, batch, {H}), "{dt}")')
    w(1, f'yh = T.match_buffer(yh_h, ({D}, batch, {H}), "{dt}")')
    if lstm:
        w(1, f'yc = T.match_buffer(yc_h, ({D}, batch, {H}), "{dt}")')
    zero, one = _literal(0.0, dt), _literal(1.0, dt)
    if has_lens:  # checked before the parallel loop: an assert inside it does not reach the caller
        w(1, "for b in range(batch):")
        w(2, 'assert T.int64(0) <= T.Cast("int64", lens[b]) and T.Cast("int64", lens[b]) <= seq, '
             '"sequence_lens holds a length outside 0..sequence length"')
    length = 'T.Cast("int64", lens[b0 + bi])' if has_lens else "seq"
    step = {"forward": "t", "reverse": "n - 1 - t"}.get(attrs["direction"], "T.Select(d == T.int64(1), n - 1 - t, t)")
    # Groups of up to ROWS batch rows share each step's pass over R (a small GEMM, not one GEMV
    # a row); the groups and directions run in parallel.
    w(1, f"groups: T.int64 = (batch + T.int64({ROWS - 1})) // T.int64({ROWS})")
    w(1, f"for dg in T.parallel({D} * groups):")
    w(2, "d: T.int64 = dg // groups")
    w(2, f"b0: T.int64 = dg % groups * T.int64({ROWS})")
    w(2, f"rows: T.int64 = T.min(T.int64({ROWS}), batch - b0)")
    w(2, f'acc = T.decl_buffer(({ROWS}, {GH}), "{dt}")')
    w(2, f'hb = T.decl_buffer(({ROWS}, {H}), "{dt}")')  # h of the group's rows, 0 past the batch
    w(2, f'tile = T.decl_buffer(({ROWS}, {TILE}), "{dt}")')  # register tiles (stack: under 1 KB)
    w(2, f'tile1 = T.decl_buffer(({QUAD * TILE},), "{dt}")')
    if op == "GRU":
        w(2, f'rh = T.decl_buffer(({ROWS}, {H}), "{dt}")')  # r * h (candidate gate's input)
        w(2, f'hr = T.decl_buffer(({ROWS}, {H}), "{dt}")')  # h R_h^T (linear_before_reset)
        w(2, f"for bi, j in T.grid({ROWS}, {H}):")
        w(3, f"rh[bi, j] = {zero}")
    w(2, f"for bi, j in T.grid(rows, {H}):")
    w(3, f"yh[d, b0 + bi, j] = {'h0[d, b0 + bi, j]' if has_h0 else zero}")
    if lstm:
        w(3, f"yc[d, b0 + bi, j] = {'c0[d, b0 + bi, j]' if has_c0 else zero}")
    w(2, "for t in range(seq):")

    def rows_loop(depth: int) -> int:
        """`for bi in rows: if the row is active at t:` with its length n and step s bound."""
        w(depth, "for bi in range(rows):")
        w(depth + 1, f"n: T.int64 = {length}")
        w(depth + 1, "if t < n:")
        w(depth + 2, f"s: T.int64 = {step}")
        return depth + 2

    if has_lens:  # steps past a row's length: Y is 0 there
        w(3, "for bi in range(rows):")
        w(4, f"if t >= {length}:")
        w(5, f"for j in range({H}):")
        w(6, f"y[t, d, b0 + bi, j] = {zero}")
    w(3, f"for bi, k in T.grid({ROWS}, {H}):")
    w(4, "if bi < rows:")
    w(5, "hb[bi, k] = yh[d, b0 + bi, k]")
    w(4, "else:")
    w(5, f"hb[bi, k] = {zero}")
    inner = rows_loop(3)
    w(inner, f"for g in range({GH}):")
    if op == "GRU":
        w(inner + 1, f"acc[bi, g] = xw[s, b0 + bi, d * {GH} + g] + T.if_then_else(g < {2 * H}, rb[d, g], {zero})")
    else:
        w(inner + 1, f"acc[bi, g] = xw[s, b0 + bi, d * {GH} + g] + rb[d, g]")
    # the gates that read h R^T directly (GRU's candidate gate reads it through the reset gate)
    _gemm(w, 3, "hb", "rp0", ranges(op, H)[0][1], "acc", 0, True, H, zero)
    same = all(acts[i] == acts[per + i] for i in range(per)) if D == 2 else True
    for dd in range(1 if same else D):
        depth = 3
        if not same:
            w(3, f"if d == T.int64({dd}):" if dd == 0 else "else:")
            depth = 4
        fns = acts[dd * per: (dd + 1) * per]
        _cell(w, depth, op, attrs, fns, H, clip, dt, zero, one, rows_loop)
    w(2, f"for bi, j in T.grid(rows, {H}):")  # onnxruntime: an empty sequence's final states are 0
    w(3, f"if {length} == T.int64(0):")
    w(4, f"yh[d, b0 + bi, j] = {zero}")
    if lstm:
        w(4, f"yc[d, b0 + bi, j] = {zero}")
    return w.source()


VEC = 16  # the cell's elementwise loops run in vectors of this many lanes (the rest one by one)


def _for_j(w: ScriptText, depth: int, extent: int, body: list[str]) -> None:
    """`for j in range(extent): body`, vectorized by VEC with a scalar remainder (the gates'
    sigmoid and tanh are most of a small recurrence's step when computed one at a time)."""
    full = extent // VEC * VEC
    index = re.compile(r"\bj\b")  # the column, substituted: TVM's vectorizer keeps a Let's scalar type
    if full:
        w(depth, f"for jo in range({full // VEC}):")
        w(depth + 1, f"for jv in T.vectorized({VEC}):")
        for line in body:
            w(depth + 2, index.sub(f"(jo * {VEC} + jv)", line))
    if full < extent:
        w(depth, f"for jr in range({extent - full}):")
        for line in body:
            w(depth + 1, index.sub(f"({full} + jr)", line))


def _cell(w: ScriptText, depth: int, op: str, attrs: dict[str, Any], fns: list[Any], H: int, clip: float | None,
          dt: str, zero: str, one: str, rows_loop: Any) -> None:
    """One step's elementwise update of every active row, the gates in `acc` (h R^T added
    where it applies); GRU's candidate gate makes its own pass over R first."""
    c = lambda x: _clip(x, clip, dt)  # noqa: E731
    # No named scalars (a Let in a vector loop miscompiles): each gate is computed in place in
    # `acc` (pre-activation, then the activation), each state by one store that reads the
    # previous state before it overwrites it.
    h, y = "yh[d, b0 + bi, j]", "y[s, d, b0 + bi, j]"

    def gate(k: int, pre: str, fn: Any) -> list[str]:
        slot = f"acc[bi, {k * H} + j]"
        return [f"{slot} = {c(pre.format(slot=slot))}", *_act_in_place(fn, slot, dt)]

    if op == "LSTM":
        f_act, g_act, h_act = fns
        cp = "yc[d, b0 + bi, j]"
        body = gate(0, "{slot} + p[d, j] * " + cp, f_act)
        if attrs.get("input_forget"):
            body.append(f"acc[bi, {2 * H} + j] = {one} - acc[bi, j]")
        else:
            body += gate(2, "{slot} + p[d, " + str(2 * H) + " + j] * " + cp, f_act)
        body += gate(3, "{slot}", g_act)
        body.append(f"{cp} = acc[bi, {2 * H} + j] * {cp} + acc[bi, j] * acc[bi, {3 * H} + j]")
        body += gate(1, "{slot} + p[d, " + str(H) + " + j] * " + cp, f_act)  # o reads the new c
        body.append(f"acc[bi, {3 * H} + j] = {cp}")
        body += _act_in_place(h_act, f"acc[bi, {3 * H} + j]", dt)
        body += [f"{h} = acc[bi, {H} + j] * acc[bi, {3 * H} + j]", f"{y} = {h}"]
        _for_j(w, rows_loop(depth), H, body)
    elif op == "GRU":
        f_act, g_act = fns
        lbr = bool(attrs.get("linear_before_reset"))
        if lbr:
            _gemm(w, depth, "hb", "rp1", H, "hr", 0, False, H, zero)
        d0 = rows_loop(depth)
        _for_j(w, d0, 2 * H, [f"acc[bi, j] = {c('acc[bi, j]')}", *_act_in_place(f_act, "acc[bi, j]", dt)])  # z and r
        if lbr:
            cand = "{slot} + acc[bi, " + str(H) + " + j] * (hr[bi, j] + rb[d, " + str(2 * H) + " + j])"
        else:
            _for_j(w, d0, H, [f"rh[bi, j] = acc[bi, {H} + j] * {h}",
                              f"acc[bi, {2 * H} + j] = acc[bi, {2 * H} + j] + rb[d, {2 * H} + j]"])
            _gemm(w, depth, "rh", "rp1", H, "acc", 2 * H, True, H, zero)
            cand = "{slot}"
        _for_j(w, rows_loop(depth), H, [*gate(2, cand, g_act),
                                        f"{y} = ({one} - acc[bi, j]) * acc[bi, {2 * H} + j] + acc[bi, j] * {h}", f"{h} = {y}"])
    else:
        (f_act,) = fns
        _for_j(w, rows_loop(depth), H, [*gate(0, "{slot}", f_act), f"{h} = acc[bi, j]", f"{y} = {h}"])


def ranges(op: str, H: int) -> list[tuple[int, int]]:
    """(first column, width) of R^T's column ranges the kernel multiplies separately: every gate
    at once, except GRU's candidate gate, which reads h through the reset gate."""
    return [(0, 2 * H), (2 * H, H)] if op == "GRU" else [(0, SPECS[op].gates * H)]


def pack_panels(rt: relax.Expr, col0: int, width: int, dirs: int, hidden: int, dt: str) -> relax.Expr:
    """R^T [D, H, G*H] columns col0..col0+width as panels [D, P, H, TILE] (zero-padded to whole
    panels): a tile's pass over k reads one contiguous panel (a strided walk over R^T's rows
    measured 2x slower once R outgrows L2). Folded into a constant when R is one."""
    panels = -(-width // TILE)
    part = R.strided_slice(rt, [2], [col0], [col0 + width])
    if panels * TILE > width:
        part = R.concat([part, const(np.zeros((dirs, hidden, panels * TILE - width), np.dtype(dt)))], axis=2)
    return R.permute_dims(R.reshape(part, [dirs, hidden, panels, TILE]), [0, 2, 1, 3])


def _gemm(w: ScriptText, depth: int, src: str, rp: str, width: int, dst: str, col0: int, add: bool, H: int,
          zero: str) -> None:
    """dst[bi, col0 + g] (+)= sum_k src[bi, k] * R^T[k, g] for g < width, R^T's range packed in
    panels `rp`, over the group's rows: ROWS x TILE register tiles over k (all ROWS rows
    computed; the rows past the batch or inactive at this step are not written back), one row's
    QUAD panels at a time for a single row (batch 1)."""
    full, panels = width // TILE, -(-width // TILE)

    def store(target: str, value: str) -> str:
        return f"{target} = {target} + {value}" if add else f"{target} = {value}"

    def write_back(d0: int, panel: str, row: str, tile_at: str) -> None:
        """Panel `panel`'s tile into dst (the last panel only up to `width`)."""
        if full < panels:
            w(d0, f"if {panel} < {full}:")
            d0 += 1
        w(d0, f"for g in T.vectorized({TILE}):")
        w(d0 + 1, store(f"{dst}[{row}, {col0} + {panel} * {TILE} + g]", tile_at.format(g="g")))
        if full < panels:
            w(d0 - 1, "else:")
            w(d0, f"for g in range({width - full * TILE}):")
            w(d0 + 1, store(f"{dst}[{row}, {col0} + {panel} * {TILE} + g]", tile_at.format(g="g")))

    def one_row(at: int, first: int, tiles: int, per: int) -> None:
        """The single row's product: `tiles` tiles of `per` panels each, from panel `first`."""
        w(at, f"for gq in range({tiles}):")
        w(at + 1, f"for g in range({per * TILE}):")
        w(at + 2, f"tile1[g] = {zero}")
        w(at + 1, f"for k in range({H}):")
        w(at + 2, f"for q in T.unroll({per}):")
        w(at + 3, f"for g in T.vectorized({TILE}):")
        w(at + 4, f"tile1[q * {TILE} + g] = tile1[q * {TILE} + g] + {src}[0, k] * {rp}[d, {first} + gq * {per} + q, k, g]")
        w(at + 1, f"for q in range({per}):")
        write_back(at + 2, f"({first} + gq * {per} + q)", "0", f"tile1[q * {TILE} + {{g}}]")

    quads = panels // QUAD
    w(depth, "if rows == T.int64(1):")  # batch 1: a GEMV over QUAD panels at once, then the rest one by one
    if quads:
        one_row(depth + 1, 0, quads, QUAD)
    if quads * QUAD < panels:
        one_row(depth + 1, quads * QUAD, panels - quads * QUAD, 1)
    w(depth, "else:")
    d1 = depth + 1
    w(d1, f"for gc in range({panels}):")
    w(d1 + 1, f"for bi, g in T.grid({ROWS}, {TILE}):")
    w(d1 + 2, f"tile[bi, g] = {zero}")
    w(d1 + 1, f"for k in range({H}):")
    w(d1 + 2, f"for bi in T.unroll({ROWS}):")
    w(d1 + 3, f"for g in T.vectorized({TILE}):")
    w(d1 + 4, f"tile[bi, g] = tile[bi, g] + {src}[bi, k] * {rp}[d, gc, k, g]")
    w(d1 + 1, "for bi in range(rows):")
    write_back(d1 + 2, "gc", "bi", "tile[bi, {g}]")


def _recurrent(op: str) -> Emitter:
    spec = SPECS[op]

    def emit(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
        at = dict(node.attrs)
        x_t = in_type(lw, node, 0)
        if x_t.dtype not in ("f32", "f64", "f16", "bf16"):
            raise refuse(node, f"a {x_t.dtype} input")
        compute = "f64" if x_t.dtype == "f64" else "f32"  # f16/bf16 computed in f32, as the interpreter does
        dt = TVM_DTYPE[compute]
        dirs = 2 if at["direction"] == "bidirectional" else 1
        hidden = int(at["hidden_size"])
        gh = spec.gates * hidden
        layout = int(at.get("layout") or 0)

        def cast(e: relax.Expr, t: Any) -> relax.Expr:
            return e if TVM_DTYPE[t.dtype] == dt else R.astype(e, dt)

        x = cast(a[0], x_t)
        if layout:
            x = R.permute_dims(x, [1, 0, 2])
        seq, batch = (lw.dim(x_t.shape[1]), lw.dim(x_t.shape[0])) if layout else (lw.dim(x_t.shape[0]), lw.dim(x_t.shape[1]))
        size = lw.dim(x_t.shape[2])
        w = R.reshape(cast(a[1], in_type(lw, node, 1)), [dirs * gh, size])
        xw = R.matmul(R.reshape(x, [seq * batch, size]), R.permute_dims(w, [1, 0]))
        if has_input(node, 3):
            bias = cast(a[3], in_type(lw, node, 3))
            xw = R.add(xw, R.reshape(R.strided_slice(bias, [1], [0], [gh]), [dirs * gh]))
            rb = R.strided_slice(bias, [1], [gh], [2 * gh])
        else:
            rb = const(np.zeros((dirs, gh), np.dtype(dt)))
        xw = lw.emit(R.reshape(xw, [seq, batch, dirs * gh]))
        rt = R.permute_dims(cast(a[2], in_type(lw, node, 2)), [0, 2, 1])
        args: list[relax.Expr] = [xw, *(lw.emit(pack_panels(rt, c0, width, dirs, hidden, dt)) for c0, width in ranges(op, hidden))]
        args.append(lw.emit(rb))
        if spec.has_c:
            p = cast(a[7], in_type(lw, node, 7)) if has_input(node, 7) else const(np.zeros((dirs, 3 * hidden), np.dtype(dt)))
            args.append(lw.emit(p))
        has_lens = has_input(node, 4)
        if has_lens:
            lens = a[4] if in_type(lw, node, 4).dtype == "i32" else R.astype(a[4], "int32")
            args.append(lw.emit(lens))
        states = []
        for i in (5, 6) if spec.has_c else (5,):
            if has_input(node, i):
                s = cast(a[i], in_type(lw, node, i))
                args.append(lw.emit(R.permute_dims(s, [1, 0, 2]) if layout else s))
            states.append(has_input(node, i))
        has_h0, has_c0 = states[0], (states[1] if spec.has_c else False)
        try:
            source = kernel_source(op, at, dirs, hidden, dt, has_lens, has_h0, has_c0)
            func = tvm.script.from_source(source)
        except ValueError as err:
            raise refuse(node, str(err)) from None
        gvar = lw.bb.add_func(func, f"{op.lower()}_recurrence")
        state_ty = relax.TensorType([dirs, batch, hidden], dt)
        outs_ty = [relax.TensorType([seq, dirs, batch, hidden], dt), state_ty] + [state_ty] * spec.has_c
        call = lw.emit(relax.call_tir(gvar, relax.Tuple(args), outs_ty))
        y, yh = relax.TupleGetItem(call, 0), relax.TupleGetItem(call, 1)
        results = [y, yh] + ([relax.TupleGetItem(call, 2)] if spec.has_c else [])
        if layout:
            results = [R.permute_dims(lw.emit(results[0]), [2, 0, 1, 3])] + [R.permute_dims(lw.emit(r), [1, 0, 2]) for r in results[1:]]
        out = []
        for i in range(len(node.outputs)):
            expr = results[i]
            want = TVM_DTYPE[out_type(node, i).dtype]
            out.append(expr if want == dt else R.astype(lw.emit(expr), want))
        return out

    return emit


EMITTERS: dict[str, Emitter] = {op: _recurrent(op) for op in SPECS}
