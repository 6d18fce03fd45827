"""exp, erf, tanh, sigmoid and GELU (and softmax's exp) as TVM's polynomial approximations, before legalization.

libm's expf/erff/tanhf are scalar calls that LLVM cannot vectorize: GELU's erf cost more than
the matmul it follows. topi's fast_exp / fast_erf / fast_tanh are branch-free polynomials
(errors ~1e-7 relative in fp32) that vectorize; every compile still checks the artifact against
the interpreter. TVM's own FastMathTransform fails on calls to module functions (it reads
`call.op.name` of a GlobalVar), hence this copy that looks at operator calls only.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


def _gelu(x: Any) -> Any:
    half = tvm.tirx.const(0.5, "float32")
    return topi.multiply(topi.multiply(x, half), topi.add(tvm.tirx.const(1.0, "float32"),
                                                         topi.fast_erf(topi.multiply(x, tvm.tirx.const(0.7071067811865476, "float32")))))


def _gelu_tanh(x: Any) -> Any:
    f = lambda v: tvm.tirx.const(v, "float32")  # noqa: E731
    inner = topi.multiply(f(0.7978845608028654), topi.add(x, topi.multiply(f(0.044715), topi.multiply(x, topi.multiply(x, x)))))
    return topi.multiply(topi.multiply(x, f(0.5)), topi.add(f(1.0), topi.fast_tanh(inner)))


def _sigmoid(x: Any) -> Any:
    one = tvm.tirx.const(1.0, "float32")
    return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))


# Blocks of `softmax_rows` that sched_reduce.RowReduce knows by name: the row's SUM_LANES
# partial results (vectorized over their lane axis) and the row buffer of exp (not inlined).
LANE_PARTIAL = "softmax_lane_partial"
SUM_LANES = 16
ROW_BUFFER = "softmax_exp_row"


def softmax_rows(x: Any, log: bool = False) -> Any:
    """Softmax over the last axis of rows of 32 or more elements, static or symbolic. The row's
    max and its exp sum are each SUM_LANES explicit partial results (lane l takes the elements
    l, l + 16, ...), then one of those; exp is computed once into a row buffer; every step
    runs per row, in one parallel loop over rows. topi's softmax left the sum of a ragged or
    symbolic row a scalar loop (TVM's rfactor splits a row's first reduction only) and gave
    each rfactored reduction a pass of its own over every row: 256 rows of 12799 took 20 ms,
    of 12800 18.8 ms, onnxruntime 1.6; now 3.0-3.9 ms. With `log`, LogSoftmax: x - max -
    log(sum), the log once per row (a CTC head's log-probabilities over its vocabulary)."""
    from tvm import te

    i64 = lambda v: tvm.tirx.IntImm("int64", v)  # noqa: E731  (one index type: int64, as the shape's)
    n, lanes = x.shape[-1], i64(SUM_LANES)
    rows = x.shape[:-1]

    def lane_partial(name: str, value: Any, combine: Any, identity: Any) -> Any:
        j = te.reduce_axis((i64(0), (n + lanes - 1) // lanes), "j")

        def body(*rl: Any) -> Any:
            at = j * lanes + rl[-1]
            return combine(tvm.tirx.if_then_else(at < n, value((*rl[:-1], at)), identity), axis=j)

        partial = te.compute((*rows, lanes), body, name=f"{LANE_PARTIAL}_{name}")
        li = te.reduce_axis((i64(0), lanes), "l")
        return te.compute(rows, lambda *r: combine(partial[(*r, li)], axis=li), name=f"softmax_{name}")

    lowest = tvm.tirx.const(-3.4028234663852886e38, "float32")
    mx = lane_partial("max", lambda i: x[i], te.max, lowest)
    exp = topi.fast_exp(te.compute(x.shape, lambda *i: x[i] - mx[i[:-1]], name="softmax_delta"))
    e = te.compute(x.shape, lambda *i: exp[i], name=ROW_BUFFER)  # once per element, read twice
    total = lane_partial("sum", lambda i: e[i], te.sum, tvm.tirx.const(0.0, "float32"))
    if log:
        offset = te.compute(rows, lambda *r: mx[r] + tvm.tirx.log(total[r]), name="softmax_log_sum")
        return te.compute(x.shape, lambda *i: x[i] - offset[i[:-1]], name="softmax_norm")
    return te.compute(x.shape, lambda *i: e[i] / total[i[:-1]], name="softmax_norm")


def _softmax(call: Any, log: bool = False) -> tuple[Any, list[Any]]:
    axis = int(call.attrs.axis)
    shape = call.args[0].ty.shape
    rank = len(shape)
    last = shape[-1]
    # (topi's form measured slower at every row length from 128 up: 12x128x128 0.25 -> 0.12 ms,
    # 256x12800 18.8 -> 3.0 ms; onnxruntime 0.08 and 1.6)
    long_rows = not isinstance(last, tvm.tirx.IntImm) or int(last) >= 2 * SUM_LANES
    if axis in (-1, rank - 1) and long_rows:
        return (lambda x: softmax_rows(x, log)), [call.args[0]]
    if log:
        return topi.nn.log_softmax, [call.args[0], axis]
    return topi.nn.fast_softmax, [call.args[0], axis]


_FAST = {
    "relax.nn.gelu": lambda call: (_gelu, [call.args[0]]),
    "relax.nn.gelu_tanh": lambda call: (_gelu_tanh, [call.args[0]]),
    "relax.sigmoid": lambda call: (_sigmoid, [call.args[0]]),
    "relax.exp": lambda call: (topi.fast_exp, [call.args[0]]),
    "relax.erf": lambda call: (topi.fast_erf, [call.args[0]]),
    "relax.tanh": lambda call: (topi.fast_tanh, [call.args[0]]),
    "relax.nn.softmax": _softmax,
    "relax.nn.log_softmax": lambda call: _softmax(call, log=True),
}


@mutator
class _FastMath(PyExprMutator):  # type: ignore[misc]
    in_attention = False  # rewriting an attention kernel: its softmax keeps topi's form

    def visit_call_(self, call: relax.Call) -> Any:
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _FAST:
            dtype = getattr(call.ty, "dtype", None) if call.ty is not None else None
            if str(dtype) == "float32":
                if call.op.name == "relax.nn.softmax" and self.in_attention:
                    fn, args = topi.nn.fast_softmax, [call.args[0], int(call.attrs.axis)]
                else:
                    fn, args = _FAST[call.op.name](call)
                return self.builder_.call_te(fn, *args)
        return call


def fast_math(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with fp32 exp/erf/tanh/softmax replaced by their fast forms. (An attention
    kernel's softmax keeps topi's form, the one sched_attention's rule recognizes.)"""
    rewriter = _FastMath(mod)
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            rewriter.in_attention = "attention" in gvar.name_hint
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()
