"""Lowering of a `Fused` node: one Relax function marked Primitive, called from main.

LegalizeOps turns its ops into TIR and FuseTIR merges them into exactly one PrimFunc, the
way TVM's own FuseOps output is compiled, but with ember's grouping. Primitive functions may
hold no tensor constants, so every constant the body's emitters create (weights, scalars of
activations, pre-transposed Gemm weights) becomes a parameter that the caller passes.
"""

from __future__ import annotations

from typing import Any

from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ember.compiler.ir import Graph, Node
from ember.targets.emit_common import TVM_DTYPE, Lowering, const
from ember.targets.lower import lower_node

# Outer constants up to this size are visible to the body's emitters as data (axes, pads,
# exponents); larger ones (weights) only flow in as parameters.
SMALL_CONST = 1024


@mutator
class _ConstantsToParams(PyExprMutator):  # type: ignore[misc]
    """Replaces each constant in a function body by a fresh parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lifted: list[tuple[relax.Var, relax.Constant]] = []

    def visit_generic_const_(self, op: relax.Constant) -> relax.Expr:
        var = relax.Var(f"const{len(self.lifted)}", op.ty)
        self.lifted.append((var, op))
        return var


def _lift_constants(func: relax.Function) -> tuple[relax.Function, list[relax.Constant]]:
    lifter = _ConstantsToParams()
    body = lifter.visit_expr(func.body)
    if not lifter.lifted:
        return func, []
    params = list(func.params) + [var for var, _ in lifter.lifted]
    lifted = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs)
    return lifted, [c for _, c in lifter.lifted]


def lower_fused(lw: Lowering, node: Node) -> list[Any]:
    """Emit the primitive function for `node` and a call to it; the call's outputs."""
    body: Graph = node.attrs["body"]
    sub = relax.BlockBuilder()
    members = list(body.inputs) + [c.value for c in body.consts]
    params = [relax.Var(v.name, relax.TensorType(lw.shape(v.type), TVM_DTYPE[v.type.dtype])) for v in members]
    known = {}
    for inner, outer in zip(body.inputs, node.inputs):
        data = lw.const_of(outer)
        if data is not None and data.size <= SMALL_CONST:
            known[inner.name] = data
    known.update((c.name, c.data) for c in body.consts)
    inner = Lowering(sub, lw.dims, body, known)
    name = f"fused_{node.attrs['kernel']}"[:60]
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            for value, param in zip(members, params):
                inner.values[value.name] = param
            for member in body.nodes:
                lower_node(inner, member)
            outs = [inner.arg(n) for n in body.outputs]
            result = sub.emit_output(relax.Tuple(outs) if len(outs) > 1 else outs[0])
        sub.emit_func_output(result)
    func, constants = _lift_constants(sub.get()[name])
    gvar = lw.bb.add_func(func, name)  # (made unique by the builder)
    args = [lw.arg(n) for n in node.inputs] + [const(c.data) for c in body.consts] + constants
    call = lw.emit(relax.Call(gvar, args))
    if len(node.outputs) == 1:
        return [call]
    return [lw.emit(relax.TupleGetItem(call, i)) for i in range(len(node.outputs))]
