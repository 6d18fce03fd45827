"""ember IR -> Relax: `to_relax(graph)` with one emitter per op (the EMITTERS table).

The emitters live in one module per family (emit_elementwise, emit_shape, emit_reduce,
emit_nn); this module assembles their tables and walks the graph:

- graph inputs become `main`'s parameters; symbolic dims become tir.Vars shared by name, so
  `x: f32[N,16]` and `mask: bool[N,16]` agree on N and the module runs at any batch size;
- constants become Relax constants (bound into the module at build time);
- shapes come from ember's own inferred types: Reshape/Expand/ConstantOfShape/Squeeze/
  Unsqueeze use their output type, and small integer tensors whose contents inference knows
  (Shape -> Gather -> Concat chains, `[N, 16]`) are emitted from those contents, as constants
  or from the tir.Vars (`R.shape_to_tensor`), so run-time shape arithmetic is never emitted;
- a `Fused` node becomes one Relax function marked Primitive (fused.py), which FuseTIR turns
  into exactly one PrimFunc;
- an op without an emitter is a LoweringError naming the op and the nodes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax, tirx

from ember.compiler import dtypes
from ember.compiler.infer import tracked_values
from ember.compiler.ir import Graph, Node, free_names
from ember.compiler.ops.registry import _symbol
from ember.targets import (
    emit_control,
    emit_dynamic,
    emit_elementwise,
    emit_misc,
    emit_nn,
    emit_quant,
    emit_recurrent,
    emit_reduce,
    emit_shape,
    emit_signal,
    emit_vision,
)
from ember.targets.emit_common import (
    BROADCASTING,
    TVM_DTYPE,
    Emitter,
    Lowering,
    LoweringError,
    R,
    broadcast_refined,
    clamped_read,
    const,
)


def _merge(*tables: dict[str, Emitter]) -> dict[str, Emitter]:
    merged: dict[str, Emitter] = {}
    for table in tables:
        for op, emitter in table.items():
            if op in merged:
                raise RuntimeError(f"two emitters for {op}")
            merged[op] = emitter
    return merged


EMITTERS: dict[str, Emitter] = _merge(emit_elementwise.EMITTERS, emit_shape.EMITTERS, emit_reduce.EMITTERS, emit_nn.EMITTERS,
                                      emit_quant.EMITTERS, emit_recurrent.EMITTERS, emit_dynamic.EMITTERS, emit_control.EMITTERS,
                                      emit_vision.EMITTERS, emit_signal.EMITTERS, emit_misc.EMITTERS)

# Operands the emitters never read: the output shape comes from ember's inferred type.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Squeeze": (1,), "Unsqueeze": (1,),
}


# Ops emitted straight into main: pure metadata (a reshape may become no kernel at all), run-time
# shape reads (VM builtins, not TIR), constants, scans/sorts that TVM dispatches to its own
# kernels after legalization, recurrences (a matmul and a hand-written kernel), the
# hand-written resampling kernels (RoiAlign, GridSample), DFT / STFT (a framing kernel and a
# matmul that must stay two kernels, so the Matmul rule schedules the product), the signal ops
# folded to constants, ops with a run-time length (NonZero, Compress, NMS, Unique), MaxUnpool
# and the scatters (run-time indices out of range write to a spare entry appended to the data:
# TVM's FuseTIR cannot feed a scatter's data from another op in one function), DeformConv (a
# column kernel and a matmul, as DFT), GroupNormalization (an instance norm of a reshaped view)
# and control flow: none of them can sit in a primitive function.
IN_MAIN = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size", "Range", "EyeLike",
    "CumSum", "CumProd", "TopK", "LSTM", "GRU", "RNN", "NonZero", "Compress", "NonMaxSuppression", "If", "Loop",
    "RoiAlign", "GridSample", "DFT", "STFT", "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix",
    "Unique", "MaxUnpool", "ScatterElements", "Scatter", "ScatterND", "DeformConv", "GroupNormalization",
})


# Operands some emitters read as values at run time when they are not constants (a Tile's
# repeats, a Pad's pads, a Slice's starts and ends): such a node is emitted in `main`, since
# reading a tensor into shape values cannot sit in a primitive function.
RUN_TIME_VALUES: dict[str, tuple[int, ...]] = {"Tile": (1,), "Pad": (1,), "Slice": (1, 2), "Resize": (3,)}


def _reads_values(lw: Lowering, node: Node) -> bool:
    return any(i < len(node.inputs) and node.inputs[i] and lw.const_of(node.inputs[i]) is None
               for i in RUN_TIME_VALUES.get(node.op, ()))


def missing_emitters(graph: Graph) -> list[str]:
    """'Op: node, node' lines for nodes the code generator cannot lower (Fused bodies included)."""
    found: dict[str, list[str]] = {}

    def visit(g: Graph) -> None:
        for node in g.nodes:
            if node.op not in EMITTERS and node.op != "Fused":
                found.setdefault(node.op, []).append(node.name)
            elif node.op in ("Fused", "If", "Loop"):  # what the bodies and branches hold is lowered too
                for sub in node.subgraphs():
                    visit(sub)

    visit(graph)
    return [f"  {op}: {len(names)} node(s): {', '.join(names[:6])}" for op, names in sorted(found.items())]


def _from_contents(lw: Lowering, node: Node) -> bool:
    """Whether the node's output is a small integer tensor that its known contents can build."""
    if node.op == "Fused" or len(node.outputs) != 1:
        return False
    t = node.outputs[0].type
    contents = lw.contents.get(node.outputs[0].name)
    if contents is None or not (t.shape == (len(contents),) or (t.rank == 0 and len(contents) == 1)):
        return False
    if all(isinstance(c, int) for c in contents):
        return t.dtype in dtypes.INTS or t.dtype == "bool"
    try:
        [lw.dim(c) for c in contents]
    except LoweringError:  # a dim known only at run time: compute it with the ops instead
        return False
    return t.dtype in dtypes.INTS


def _contents_expr(lw: Lowering, node: Node) -> relax.Expr:
    """The output of a `_from_contents` node: a constant, or a tensor of the dims' tir.Vars."""
    t = node.outputs[0].type
    contents = lw.contents[node.outputs[0].name]
    if all(isinstance(c, int) for c in contents):
        return const(np.array(contents, dtype=t.np_dtype).reshape([int(d) for d in t.shape]))
    y = R.shape_to_tensor(relax.ShapeExpr([tirx.IntImm("int64", c) if isinstance(c, int) else lw.dim(c) for c in contents]))
    if t.dtype != "i64":
        y = R.astype(y, TVM_DTYPE[t.dtype])
    return R.reshape(y, []) if t.rank == 0 else y


def reads_shape_at_run_time(node: Node) -> bool:
    """Whether a node's output has dims of its own that come from the data (`y_0` of a Reshape
    to a shape computed at run time): then its shape operand is read after all."""
    own = [re.escape(_symbol(v.name)) for v in node.outputs]
    pattern = re.compile(rf"^(?:{'|'.join(own)})_\d+$")
    return any(isinstance(d, str) and pattern.match(d) for v in node.outputs for d in v.type.shape)


def live_nodes(lw: Lowering, graph: Graph) -> list[Node]:
    """Nodes that contribute to an output, except shape arithmetic the emitters bypass."""
    needed = set(graph.outputs)
    live: list[Node] = []
    for node in reversed(graph.nodes):
        if not any(v.name in needed for v in node.outputs):
            continue
        live.append(node)
        if _from_contents(lw, node):
            continue  # built from its known contents: its inputs are not read
        skip = () if reads_shape_at_run_time(node) else SHAPE_OPERANDS.get(node.op, ())
        for i, name in enumerate(node.inputs):
            if name and i not in skip:
                needed.add(name)
        for sub in node.subgraphs():  # what an If's branches read of this graph
            needed.update(free_names(sub))
    return list(reversed(live))


def to_relax(graph: Graph, block_lanes: int = 0, winograd: bool = True,
             sample_dims: Mapping[str, int] | None = None) -> tvm.IRModule:
    """An IRModule whose `main` computes the graph's outputs from its inputs; with
    `block_lanes` (the target's float vector lanes), CNN activations are kept in the blocked
    layout (targets/blocked.py); `winograd`: its 3x3 convs that qualify in the Winograd form
    (`sample_dims`: the symbolic dims' values in the compile's sample, which decide it for a
    conv over a symbolic image size)."""
    from ember.targets import blocked

    missing = missing_emitters(graph)
    if missing:
        raise LoweringError("operators without a code generator:\n" + "\n".join(missing))
    bb = relax.BlockBuilder()
    dims: dict[str, tirx.Var] = {}
    params = []
    for value in graph.inputs:
        for d in value.type.shape:
            if isinstance(d, str) and d not in dims:
                dims[d] = tirx.Var(d, "int64")
        shape = [d if isinstance(d, int) else dims[d] for d in value.type.shape]
        params.append(relax.Var(value.name, relax.TensorType(shape, TVM_DTYPE[value.type.dtype])))
    lw = Lowering(bb, dims, graph, {c.name: c.data for c in graph.consts}, tracked_values(graph))
    lw.plan = blocked.plan(graph, block_lanes)
    lw.plan.winograd = winograd
    lw.plan.sample_dims = dict(sample_dims or {})
    # A Relax If cannot sit in a dataflow block: a graph with one is lowered into a plain block.
    flow = any(n.op in ("If", "Loop") for n in graph.nodes)
    with bb.function("main", params):
        with contextlib.nullcontext() if flow else bb.dataflow():
            for value, param in zip(graph.inputs, params):
                lw.values[value.name] = param
            for node in live_nodes(lw, graph):
                lower_node(lw, node)
            outs = [lw.arg(name) for name in graph.outputs]
            out = relax.Tuple(outs) if len(outs) > 1 else outs[0]
            result = bb.emit(out) if flow else bb.emit_output(out)
        bb.emit_func_output(result)
    return bb.get()


def lower_node(lw: Lowering, node: Node) -> None:
    """Emit one node: a Fused node, and any other computing node outside a fused body, as one
    primitive function call (so each becomes exactly one kernel)."""
    from ember.targets.emit_dynamic import bind_type, resolves
    from ember.targets.fused import computes, lower_fused, primitive_function, single_node_group

    if lw.plan is not None and node.name in lw.plan.nodes:
        from ember.targets import blocked

        blocked.lower_node(lw, node)
        return
    if node.op == "Fused":
        outs = lower_fused(lw, node)
    elif _from_contents(lw, node):
        outs = [_contents_expr(lw, node)]
    else:
        group = None
        if not lw.primitive and len(node.outputs) == 1 and node.op not in IN_MAIN and not _reads_values(lw, node):
            group = single_node_group(lw, node)
        built = primitive_function(lw, group) if group is not None else None
        if group is not None and built is not None and computes(built[0]):
            outs = lower_fused(lw, group, built)
        else:
            outs = emit(lw, node)
    for value, expr in zip(node.outputs, outs):
        expr = lw.emit(expr) if not isinstance(expr, relax.Var) else expr
        if not lw.primitive and not resolves(lw, value.type):
            # a dim only the kernel's own shape defines (a ceil-mode pool's count over a
            # symbolic size that may lose its last window): bound from it at run time
            expr = bind_type(lw, expr, value.type)
        lw.values[value.name] = expr


def _aligned(lw: Lowering, node: Node, args: list[relax.Expr | None]) -> list[relax.Expr | None]:
    """A broadcasting op's operands, each whose dim is written differently from the output's
    (an FPN's `lateral + upsample(x)`: h against 2*((h+1)//2), which inference took to be
    equal) read at the output's dims first: Relax cannot prove the two equal, left the op
    unlegalized and the build failed. The read is a kernel inlined into the op's, its
    indices clamped into the operand (a size that differs at run time, which onnxruntime
    refuses, reads no memory outside it)."""
    out = node.outputs[0].type
    for i, name in enumerate(node.inputs):
        if not name or args[i] is None or name in lw.blocked or name not in lw.types:
            continue
        refined = broadcast_refined(lw.types[name], out, matmul=node.op == "MatMul")
        if refined is None:
            continue
        try:
            target = lw.shape(refined)
        except LoweringError:
            continue
        args[i] = lw.emit(lw.kernels.call_te(clamped_read, lw.emit(args[i]), target, primfunc_name_hint="aligned"))
    return args


def emit(lw: Lowering, node: Node) -> list[relax.Expr]:
    """The Relax expressions of a node's outputs, from its op's emitter."""
    skip = SHAPE_OPERANDS.get(node.op, ())
    args = [None if i in skip else lw.arg(n) for i, n in enumerate(node.inputs)]
    if (node.op in BROADCASTING or node.op == "MatMul") and len(node.outputs) == 1:
        args = _aligned(lw, node, args)
    try:
        return list(EMITTERS[node.op](lw, node, args))
    except LoweringError:
        raise
    except Exception as err:
        raise LoweringError(f"node {node.name!r} ({node.op}): cannot lower: {type(err).__name__}: {str(err).splitlines()[0]}") from None


__all__ = ["EMITTERS", "TVM_DTYPE", "Lowering", "LoweringError", "lower_node", "missing_emitters", "to_relax"]
