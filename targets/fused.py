"""Lowering of a `Fused` node: one Relax function marked Primitive, called from main.

LegalizeOps turns its ops into TIR and FuseTIR merges them into exactly one PrimFunc, the
way TVM's own FuseOps output is compiled, but with ember's grouping. Primitive functions may
hold no tensor constants, so every constant the body's emitters create (scalars of
activations, pre-transposed Gemm weights, folded BatchNorm factors) becomes a parameter that
the caller passes; constant arguments the body no longer reads are dropped.

`single_node_group` wraps a standalone computing node the same way, so that an op whose
emitter writes several Relax ops (Gemm with a bias, Conv with a bias, Attention) is still
one kernel.
"""

from __future__ import annotations

import re
from typing import Any

from tvm import relax, tirx
from tvm.ir.expr import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from ember.compiler.ir import Graph, Node, Value
from ember.targets.emit_common import TVM_DTYPE, Lowering, const
from ember.targets.lower import SHAPE_OPERANDS, lower_node


@mutator
class _ConstantsToParams(PyExprMutator):  # type: ignore[misc]
    """Replaces each constant in a function body by a fresh parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lifted: list[tuple[relax.Var, GenericConst]] = []

    def visit_generic_const_(self, op: GenericConst) -> relax.Expr:
        var = relax.Var(f"const{len(self.lifted)}", op.ty)
        self.lifted.append((var, op))
        return var


def _primitive(func: relax.Function, args: list[relax.Expr]) -> tuple[relax.Function, list[relax.Expr]]:
    """The function with its constants lifted to parameters and unread constant arguments dropped."""
    lifter = _ConstantsToParams()
    body = lifter.visit_expr(func.body)
    params = list(func.params) + [var for var, _ in lifter.lifted]
    args = list(args) + [c for _, c in lifter.lifted]
    used = relax.analysis.free_vars(body)
    # Constants have static shapes, so dropping one never loses the definition of a symbolic dim.
    keep = [i for i, (p, a) in enumerate(zip(params, args))
            if any(p.same_as(u) for u in used) or not isinstance(a, GenericConst)]
    if len(keep) == len(func.params) and not lifter.lifted:
        return func, args
    params, args = [params[i] for i in keep], [args[i] for i in keep]
    return relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs), args


def lower_fused(lw: Lowering, node: Node, built: tuple[relax.Function, list[relax.Expr]] | None = None) -> list[Any]:
    """Emit the primitive function for `node` (or the one `primitive_function` built) and a
    call to it; the call's outputs."""
    func, args = built if built is not None else primitive_function(lw, node)
    gvar = lw.bb.add_func(func, kernel_name(node))  # (made unique by the builder)
    call = lw.emit(relax.Call(gvar, args))
    if len(node.outputs) == 1:
        return [call]
    return [lw.emit(relax.TupleGetItem(call, i)) for i in range(len(node.outputs))]


def kernel_name(node: Node) -> str:
    """The Relax function (and after FuseTIR, PrimFunc) name of a Fused node."""
    return f"fused_{node.attrs['kernel']}"[:60]


def computes(func: relax.Function) -> bool:
    """Whether a function calls any op (a body that only forwards a parameter makes no kernel)."""
    found = [False]

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call):
            found[0] = True

    relax.analysis.post_order_visit(func.body, visit)
    return found[0]


def primitive_function(lw: Lowering, node: Node, blocked: bool = False) -> tuple[relax.Function, list[relax.Expr]]:
    """The primitive function of a Fused node and the arguments to call it with.

    `blocked`: the node lowers in the blocked layout (targets/blocked.py): its blocked inputs
    arrive as [N, C/b, H, W, b], the members go through the blocked emitters, and its blocked
    outputs are recorded in `lw.blocked`."""
    from ember.targets import blocked as blocked_layout

    body: Graph = node.attrs["body"]
    sub = relax.BlockBuilder()
    members = list(body.inputs) + [c.value for c in body.consts]
    # Constant operands are visible to the body's emitters as data (axes, pads, exponents,
    # weights to pre-transpose); they still arrive as parameters.
    known = {inner.name: lw.const_of(outer) for inner, outer in zip(body.inputs, node.inputs) if lw.const_of(outer) is not None}
    known.update((c.name, c.data) for c in body.consts)
    inner = Lowering(sub, lw.dims, body, known, primitive=True)
    inner.plan = lw.plan
    inner.kernels = lw.kernels
    params, args = [], []
    for value, outer in zip(body.inputs, node.inputs):
        shape = lw.shape(value.type)
        b = lw.blocked.get(outer) if blocked else None
        arg = lw.values[outer] if b is not None else lw.arg(outer)
        if blocked and b is None and lw.const_of(outer) is None:  # (a plain input a conv reads: its blocked copy)
            b = blocked_layout.copied_input(lw, list(body.nodes), value.name, inner.types)
            arg = blocked_layout.blocked_kernel(lw, outer, b) if b is not None else arg
        if b is not None:  # [N, C/b, H, W, b], as the blocked node that made it left it
            shape = blocked_layout.blocked_shape(shape, b)
            inner.blocked[value.name] = b
        params.append(relax.Var(value.name, relax.TensorType(shape, TVM_DTYPE[value.type.dtype])))
        args.append(arg)
    for c in body.consts:
        params.append(relax.Var(c.name, relax.TensorType(lw.shape(c.value.type), TVM_DTYPE[c.value.type.dtype])))
        args.append(const(c.data))
    # A symbolic dim that reaches the kernel only inside an expression (`W//2` after a strided
    # op on a dynamic width) is defined by an extra shape argument: a function cannot bind W
    # from a tensor of width W//2, and without it the kernel's result loses its shape.
    unbound = unbound_vars([p.ty for p in params])
    if unbound:
        params.append(relax.Var("dims", relax.ShapeType(unbound)))
        args.append(relax.ShapeExpr(unbound))
    lower_member = blocked_layout.lower_member if blocked else lower_node
    name = kernel_name(node)
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            for value, param in zip(members, params):
                inner.values[value.name] = param
            for member in body.nodes:
                lower_member(inner, member)
            outs = [inner.values[n] if n in inner.blocked else inner.arg(n) for n in body.outputs]
            result = sub.emit_output(relax.Tuple(outs) if len(outs) > 1 else outs[0])
        sub.emit_func_output(result)
    if blocked:
        lw.blocked.update((value.name, inner.blocked[n]) for n, value in zip(body.outputs, node.outputs) if n in inner.blocked)
    return _primitive(sub.get()[name], args)


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def unbound_vars(types: list[Any]) -> list[tirx.Var]:
    """Symbolic vars that occur in the tensor types' dims only inside expressions (no dim is
    the bare var), in order of appearance."""
    bare: list[tirx.Var] = []
    inside: list[tirx.Var] = []
    for ty in types:
        for dim in getattr(getattr(ty, "shape", None), "values", None) or []:
            if isinstance(dim, tirx.Var):
                bare.append(dim)
                continue
            inside.extend(tirx.analysis.undefined_vars(dim))
    out: list[tirx.Var] = []
    for var in inside:
        if not any(var.same_as(b) for b in bare) and not any(var.same_as(o) for o in out):
            out.append(var)
    return out


def _operands(node: Node) -> list[str]:
    """The inputs a node's emitter reads as tensors (shape operands left out), each once."""
    skip = SHAPE_OPERANDS.get(node.op, ())
    operands: list[str] = []
    for i, name in enumerate(node.inputs):
        if name and i not in skip and name not in operands:
            operands.append(name)
    return operands


def defines_its_dims(node: Node, types: dict[str, Any]) -> bool:
    """Whether every symbolic dim of the node's outputs occurs in its operands' shapes (`types`:
    value name -> TensorType): a kernel of the node alone can only define those."""
    bound = {s for n in _operands(node) for d in types[n].shape if isinstance(d, str) for s in _SYMBOL.findall(d)}
    return all(s in bound for v in node.outputs for d in v.type.shape if isinstance(d, str) for s in _SYMBOL.findall(d))


def single_node_group(lw: Lowering, node: Node) -> Node | None:
    """`node` as a Fused node of one member (operands only its emitter reads, shape operands
    left out); None when its output has a symbolic dim that no operand's shape carries (a
    function cannot define it)."""
    if not defines_its_dims(node, lw.types):
        return None
    operands = _operands(node)
    body = Graph(tuple(Value(n, lw.types[n]) for n in operands), (node,), tuple(v.name for v in node.outputs), name=node.op.lower())
    return Node("Fused", tuple(operands), node.outputs, {"body": body, "kernel": node.op.lower()})
