"""Lowering of a `Fused` node: one Relax function marked Primitive, called from main.

LegalizeOps turns its ops into TIR and FuseTIR merges them into exactly one PrimFunc, the
way TVM's own FuseOps output is compiled, but with ember's grouping.
"""

from __future__ import annotations

from typing import Any

from tvm import relax

from ember.compiler.ir import Graph, Node
from ember.targets.emit_common import TVM_DTYPE, Lowering, const
from ember.targets.lower import lower_node

# Outer constants up to this size are visible to the body's emitters as data (axes, pads,
# exponents); larger ones (weights) only flow in as parameters.
SMALL_CONST = 1024


def lower_fused(lw: Lowering, node: Node) -> list[Any]:
    """Emit the primitive function for `node` and a call to it; the call's outputs."""
    body: Graph = node.attrs["body"]
    sub = relax.BlockBuilder()
    # Primitive functions may not hold tensor constants: the body's constants become
    # parameters too, passed as constants by the caller.
    params = []
    for value in list(body.inputs) + [c.value for c in body.consts]:
        params.append(relax.Var(value.name, relax.TensorType(lw.shape(value.type), TVM_DTYPE[value.type.dtype])))
    known = {}
    for inner, outer in zip(body.inputs, node.inputs):
        data = lw.const_of(outer)
        if data is not None and data.size <= SMALL_CONST:
            known[inner.name] = data
    known.update((c.name, c.data) for c in body.consts)
    inner = Lowering(sub, lw.dims, body, known)
    name = lw.bb.get_unique_name(f"fused_{node.attrs['kernel']}"[:60])
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            for value, param in zip(list(body.inputs) + [c.value for c in body.consts], params):
                inner.values[value.name] = param
            for member in body.nodes:
                lower_node(inner, member)
            outs = [inner.arg(n) for n in body.outputs]
            result = sub.emit_output(relax.Tuple(outs) if len(outs) > 1 else outs[0])
        sub.emit_func_output(result)
    func = sub.get()[name]
    gvar = lw.bb.add_func(func, name)
    args = [lw.arg(n) for n in node.inputs] + [const(c.data) for c in body.consts]
    call = lw.emit(relax.Call(gvar, args))
    if len(node.outputs) == 1:
        return [call]
    return [lw.emit(relax.TupleGetItem(call, i)) for i in range(len(node.outputs))]


