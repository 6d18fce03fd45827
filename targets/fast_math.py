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


_FAST = {
    "relax.nn.gelu": lambda call: (_gelu, [call.args[0]]),
    "relax.nn.gelu_tanh": lambda call: (_gelu_tanh, [call.args[0]]),
    "relax.sigmoid": lambda call: (_sigmoid, [call.args[0]]),
    "relax.exp": lambda call: (topi.fast_exp, [call.args[0]]),
    "relax.erf": lambda call: (topi.fast_erf, [call.args[0]]),
    "relax.tanh": lambda call: (topi.fast_tanh, [call.args[0]]),
    "relax.nn.softmax": lambda call: (topi.nn.fast_softmax, [call.args[0], int(call.attrs.axis)]),
}


@mutator
class _FastMath(PyExprMutator):  # type: ignore[misc]
    def visit_call_(self, call: relax.Call) -> Any:
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _FAST:
            dtype = getattr(call.ty, "dtype", None) if call.ty is not None else None
            if str(dtype) == "float32":
                fn, args = _FAST[call.op.name](call)
                return self.builder_.call_te(fn, *args)
        return call


def fast_math(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with fp32 exp/erf/tanh/softmax replaced by their fast forms."""
    rewriter = _FastMath(mod)
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()
