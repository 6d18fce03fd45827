"""Control flow whose decision is made at run time: If and Loop.

(Ifs with a condition the compile knows, and Loops/Scans of a known count, are gone before
the code generator: passes `inline_branches` and `unroll_loops`.)

- If: a Relax If over calls of the two branches, each lowered as a private function of its
  own with the enclosing values it reads as parameters. (Lowered as bindings inside the If,
  TVM's static memory planner gives both branches one storage and allocates it in the first
  only: a crash at run time.) `main` is then lowered without a dataflow block.
- Loop: a private function that calls itself: `step(i, cond, M, carried..., scans..., reads...)`
  runs the body when cond and i < M and calls itself with the body's results, else returns
  the carried values and the scan outputs accumulated so far (each iteration concatenates
  its slice). The VM recurses once per iteration; the runtime gives a model with a Loop a
  thread with a large stack (runtime/model.py, LOOP_STACK_BYTES).

Each output is cast to ember's type of it (`bind_type`): dims that come from the data (the
branches' sizes differ, a loop's count) are bound to fresh tir.Vars.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax.expr import _update_type

from ember.compiler.ir import Graph, Node, free_names
from ember.targets.emit_common import TVM_DTYPE, Emitter, Lowering, LoweringError, R, const, in_type
from ember.targets.emit_dynamic import bind_type

LOOP_ATTR = "ember.loop"  # marks a loop's function: the build records it, the runtime gives the VM a deep stack


def _name(node: Node, suffix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", node.name) + suffix


# Passes run on a branch or loop body before it is lowered (the pipeline's own passes see the
# enclosing graph only): folding, the composites, and fusion, so a body's MatMul + Add + Tanh
# is one kernel with its weight packed at compile time, as outside.
BODY_PASSES = ("fold_constants", "dce", "fuse_composites", "fuse")


def _optimized(lw: Lowering, graph: Graph) -> tuple[Graph, list[str]]:
    """The subgraph as a graph of its own (the enclosing values it reads appended to its
    inputs, the enclosing constants it reads among its constants), through BODY_PASSES; and
    the names of those enclosing values."""
    from ember.compiler.ir import Const, Value
    from ember.passes import PASSES

    free = free_names(graph)
    own = {v.name for v in graph.inputs}
    reads = [n for n in free if n not in lw.consts and n not in own]
    consts = list(graph.consts) + [Const(n, lw.consts[n]) for n in free if n in lw.consts]
    whole = Graph(tuple(graph.inputs) + tuple(Value(n, lw.types[n]) for n in reads), graph.nodes, graph.outputs,
                  tuple(sorted(consts, key=lambda c: c.name)), name=graph.name)
    for name in BODY_PASSES:
        whole = PASSES[name](whole).graph
    return whole, reads


def _sub_lowering(lw: Lowering, graph: Graph) -> tuple[relax.BlockBuilder, Lowering]:
    """A block builder that sees the kernels made so far (so new names stay unique), and a
    lowering of `graph` on it that shares the enclosing dims, constants and types."""
    sub = relax.BlockBuilder(lw.bb.get())
    consts = dict(lw.consts)
    consts.update((c.name, c.data) for c in graph.consts)
    inner = Lowering(sub, dict(lw.dims), graph, consts, lw.contents)
    inner.types.update(lw.types)
    inner.types.update((v.name, v.type) for n in graph.nodes for v in n.outputs)
    return sub, inner


def _adopt(lw: Lowering, sub: relax.BlockBuilder, skip: str = "") -> dict[str, Any]:
    """Move the functions `sub` made into the enclosing builder; {name: GlobalVar}."""
    known = {gv.name_hint for gv, _ in lw.bb.get().functions_items()}
    made = {}
    for gv, func in sub.get().functions_items():
        if gv.name_hint not in known and gv.name_hint != skip:
            lw.bb.update_func(gv, func)
        made[gv.name_hint] = gv
    return made


def _lower_body(inner: Lowering, graph: Graph) -> list[relax.Expr]:
    from ember.targets.lower import live_nodes, lower_node

    for node in live_nodes(inner, graph):
        lower_node(inner, node)
    return [inner.arg(n) for n in graph.outputs]


# --- If ---------------------------------------------------------------------------------------------
def _branch(lw: Lowering, graph: Graph, name: str) -> relax.Expr:
    """A call of the branch lowered as a function of its own."""
    graph, reads = _optimized(lw, graph)
    sub, inner = _sub_lowering(lw, graph)
    args = [lw.arg(n) for n in reads]
    params = [relax.Var(n, arg.ty) for n, arg in zip(reads, args)]
    # A dim that reaches the branch only inside an expression (a tensor of m1 + m2 rows, two
    # NonZero counts concatenated) comes as a shape argument: the branch's kernels take m1
    # and m2, which a function cannot bind from a tensor of m1 + m2 rows.
    from ember.targets.fused import unbound_vars

    unbound = unbound_vars([p.ty for p in params])
    if unbound:
        params.append(relax.Var("dims", relax.ShapeType(unbound)))
        args.append(relax.ShapeExpr(unbound))
    flow = any(n.op in ("If", "Loop") for n in graph.nodes)
    # (the attribute keeps identical branches two functions: the builder merges equal ones)
    with sub.function(name, params, attrs={"ember.branch": name}, private=True):
        with contextlib.nullcontext() if flow else sub.dataflow():
            inner.values.update(zip(reads, params))
            outs = _lower_body(inner, graph)
            out = relax.Tuple(outs) if len(outs) > 1 else outs[0]
            result = sub.emit(out) if flow else sub.emit_output(out)
        sub.emit_func_output(result)
    made = _adopt(lw, sub)
    if name not in made:
        raise LoweringError(f"node {name!r}: the branch function was not found after lowering it")
    return relax.Call(made[name], args)


def _if(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    """Relax If over calls of the two branches."""
    cond = a[0] if in_type(lw, node, 0).rank == 0 else R.reshape(a[0], [])
    cond = lw.emit(cond)
    then = _branch(lw, node.attrs["then_branch"], _name(node, "_then"))
    other = _branch(lw, node.attrs["else_branch"], _name(node, "_else"))
    result = lw.emit(relax.If(cond, then, other))
    if len(node.outputs) == 1:
        return [bind_type(lw, result, node.outputs[0].type)]
    return [bind_type(lw, relax.TupleGetItem(result, i), v.type) for i, v in enumerate(node.outputs)]


# --- Loop -------------------------------------------------------------------------------------------
def _scalar(x: relax.Expr, rank: int) -> relax.Expr:
    return R.reshape(x, []) if rank else x


def _loop(lw: Lowering, node: Node, a: list[Any]) -> list[relax.Expr]:
    body: Graph = node.attrs["body"]
    n = len(node.inputs) - 2
    scan_types = [body.value(o).type for o in body.outputs[1 + n:]]
    for t in scan_types:  # each iteration's slice: its dims must be known outside the loop
        for d in t.shape:
            try:
                lw.dim(d)
            except LoweringError:
                raise LoweringError(f"node {node.name!r} (Loop): a scan output's per-iteration dim {d!r} changes from one "
                                    "iteration to the next; ember compiles scan outputs of a fixed slice shape") from None
    body, reads = _optimized(lw, body)
    sub, inner = _sub_lowering(lw, body)
    outer = [lw.arg(n) for n in reads]
    S, B = relax.TensorType([], "int64"), relax.TensorType([], "bool")
    carried_ty = [relax.TensorType(ndim=lw.types[x].rank, dtype=TVM_DTYPE[lw.types[x].dtype]) for x in node.inputs[2:]]
    acc_ty = [relax.TensorType(ndim=t.rank + 1, dtype=TVM_DTYPE[t.dtype]) for t in scan_types]
    read_ty = [arg.ty for arg in outer]
    name = _name(node, "_loop")
    gv = relax.GlobalVar(name)
    ret = relax.TupleType(carried_ty + acc_ty)
    _update_type(gv, relax.FuncType([S, B, S, *carried_ty, *acc_ty, *read_ty], ret))
    i, c, m = relax.Var("i", S), relax.Var("cond", B), relax.Var("trips", S)
    vs = [relax.Var(f"v{k}", t) for k, t in enumerate(carried_ty)]
    accs = [relax.Var(f"acc{j}", t) for j, t in enumerate(acc_ty)]
    params = [relax.Var(r, t) for r, t in zip(reads, read_ty)]
    i_rank, c_rank = body.inputs[0].type.rank, body.inputs[1].type.rank
    with sub.function(name, [i, c, m, *vs, *accs, *params], attrs={LOOP_ATTR: 1}, private=True):
        keep = sub.emit(R.logical_and(c, R.less(i, m)))
        sub._begin_binding_block()
        inner.values.update(zip(reads, params))
        inner.values[body.inputs[0].name] = i if i_rank == 0 else sub.emit(R.reshape(i, [1]))
        inner.values[body.inputs[1].name] = c if c_rank == 0 else sub.emit(R.reshape(c, [1]))
        for value, v in zip(body.inputs[2:], vs):
            inner.values[value.name] = bind_type(inner, v, value.type)
        outs = _lower_body(inner, body)
        more = []
        for j, (acc, t) in enumerate(zip(accs, scan_types)):
            whole = bind_type(inner, acc, type(t)(t.dtype, (f"{name}_count{j}",) + tuple(t.shape)))
            more.append(sub.emit(R.concat([whole, R.expand_dims(outs[1 + n + j], [0])], axis=0)))
        nxt = sub.emit(R.add(i, relax.const(1, "int64")))
        again = sub.emit(relax.Call(gv, [nxt, sub.emit(_scalar(outs[0], c_rank)), m, *outs[1:1 + n], *more, *params]))
        run = relax.SeqExpr([sub._end_block()], again)
        sub._begin_binding_block()
        stop = relax.SeqExpr([sub._end_block()], relax.Tuple([*vs, *accs]))
        sub.emit_func_output(sub.emit(relax.If(keep, run, stop)))
    func = sub.get()[name]
    _adopt(lw, sub, skip=name)
    lw.bb.update_func(gv, func)
    trips = _scalar(a[0], in_type(lw, node, 0).rank) if a and a[0] is not None else const(np.array(2**63 - 1, np.int64))
    cond = _scalar(a[1], in_type(lw, node, 1).rank) if len(a) > 1 and a[1] is not None else const(np.array(True))
    empty = [R.zeros([0, *lw.shape(t)], TVM_DTYPE[t.dtype]) for t in scan_types]
    result = lw.emit(relax.Call(gv, [const(np.array(0, np.int64)), lw.emit(cond), lw.emit(trips), *a[2:], *map(lw.emit, empty),
                                     *outer]))
    return [bind_type(lw, relax.TupleGetItem(result, k), v.type) for k, v in enumerate(node.outputs)]


EMITTERS: dict[str, Emitter] = {"If": _if, "Loop": _loop}
