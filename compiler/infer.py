"""Type and shape inference: runs every node's `OPS[op].infer` in graph order.

Besides types, small integer tensors carry their (symbolic) contents through `OpDef.value`,
so Shape -> Gather -> Concat -> Reshape chains give exact output shapes even with a
symbolic batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ember.compiler import dtypes
from ember.compiler.dims import Dim
from ember.compiler.errors import InferError
from ember.compiler.ir import Graph, Node, TensorType, Value

# Integer tensors up to this many elements carry their contents through inference.
MAX_TRACKED = 64

@dataclass
class Scope:
    """Types, constant data and known contents of the values visible at one point."""

    types: dict[str, TensorType] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    parent: Scope | None = None

    def lookup_type(self, name: str) -> TensorType | None:
        """The type of `name` here or in an enclosing scope."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.types:
                return scope.types[name]
            scope = scope.parent
        return None

    def lookup_const(self, name: str) -> np.ndarray | None:
        """Constant data of `name`, if it is a constant."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.types:
                return scope.consts.get(name)
            scope = scope.parent
        return None

    def lookup_value(self, name: str) -> tuple[Dim, ...] | None:
        """Known contents of `name`, if tracked."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.types:
                return scope.values.get(name)
            scope = scope.parent
        return None

    def define_const(self, name: str, data: np.ndarray) -> None:
        """Add a constant (its contents are tracked when it is a small integer tensor)."""
        self.types[name] = TensorType(dtypes.from_numpy(data.dtype), tuple(int(d) for d in data.shape))
        self.consts[name] = data
        if data.dtype.kind in "iub" and data.ndim <= 1 and data.size <= MAX_TRACKED:
            self.values[name] = tuple(int(x) for x in data.reshape(-1))

def node_ctx_types(node: Node, scope: Scope) -> list[TensorType | None]:
    """Input types of a node in a scope (None for omitted inputs); KeyError if undefined."""
    out: list[TensorType | None] = []
    for name in node.inputs:
        if not name:
            out.append(None)
            continue
        t = scope.lookup_type(name)
        if t is None:
            raise KeyError(name)
        out.append(t)
    return out

def infer_node(node: Node, scope: Scope) -> Node:
    """The node with output types (and subgraph attributes) recomputed in `scope`."""
    from ember.compiler.ops import OPS, InferCtx

    opdef = OPS.get(node.op)
    if opdef is None:
        raise InferError(f"node {node.name!r}: operator {node.op} is not in ember's op table")
    try:
        types = node_ctx_types(node, scope)
    except KeyError as err:
        raise InferError(f"node {node.name!r} ({node.op}) reads undefined value {err.args[0]!r}") from None
    ctx = InferCtx(
        op=node.op,
        types=types,
        attrs=dict(node.attrs),
        consts=[scope.lookup_const(n) if n else None for n in node.inputs],
        values=[scope.lookup_value(n) if n else None for n in node.inputs],
        out_names=list(node.output_names),
    )

    def subgraph_infer(attr: str, input_types: Sequence[TensorType] | None) -> list[TensorType]:
        sub: Graph = ctx.attrs[attr]
        if input_types is not None:
            if len(input_types) != len(sub.inputs):
                raise ValueError(f"subgraph {attr} takes {len(sub.inputs)} inputs, got {len(input_types)} types")
            sub = sub.replace(inputs=tuple(replace(v, type=t) for v, t in zip(sub.inputs, input_types)))
        new_sub, sub_scope = retype_in_scope(sub, parent=scope)
        ctx.new_attrs[attr] = new_sub
        ctx.subgraph_values[attr] = [sub_scope.lookup_value(n) for n in new_sub.outputs]
        out_types = [sub_scope.lookup_type(n) for n in new_sub.outputs]
        missing = [n for n, t in zip(new_sub.outputs, out_types) if t is None]
        if missing:
            raise ValueError(f"subgraph {attr} returns undefined value(s) {missing}")
        return out_types  # type: ignore[return-value]

    ctx.subgraph_infer = subgraph_infer
    try:
        out_types = list(opdef.infer(ctx))
    except InferError as err:
        raise InferError(f"node {node.name!r} ({node.op}): {err}") from None
    except Exception as err:  # an op's infer rejects its inputs with ValueError & co.
        shown = ", ".join(str(t) if t is not None else "_" for t in types)
        raise InferError(f"node {node.name!r} ({node.op}) with inputs ({shown}): {err}") from None
    if len(out_types) < len(node.outputs):
        raise InferError(
            f"node {node.name!r} ({node.op}) declares {len(node.outputs)} outputs, the op gives {len(out_types)}"
        )
    outputs = tuple(replace(v, type=t) for v, t in zip(node.outputs, out_types))
    attrs = {**node.attrs, **ctx.new_attrs}
    new = Node(node.op, node.inputs, outputs, attrs)
    tracked = outputs and (outputs[0].type.dtype in dtypes.INTS or outputs[0].type.dtype == "bool")
    if opdef.value is not None and tracked and outputs[0].type.rank <= 1:
        try:
            contents = opdef.value(ctx)
        except Exception:  # contents are an optimisation for shape arithmetic, never required
            contents = None
        if contents is not None and len(contents) <= MAX_TRACKED:
            scope.values[outputs[0].name] = tuple(contents)
    for index, contents in ctx.out_values.items():
        out_t = outputs[index].type if index < len(outputs) else None
        if out_t is not None and (out_t.dtype in dtypes.INTS or out_t.dtype == "bool") and out_t.rank <= 1 \
                and len(contents) <= MAX_TRACKED:
            scope.values[outputs[index].name] = tuple(contents)
    return new

def retype(graph: Graph, parent: Scope | None = None) -> Graph:
    """The graph with every node's output types recomputed by the op table, in order."""
    return retype_in_scope(graph, parent)[0]


def retype_in_scope(graph: Graph, parent: Scope | None = None) -> tuple[Graph, Scope]:
    """`retype`, also returning the graph's own scope (types and known contents of its values)."""
    scope = Scope(parent=parent)
    for value in graph.inputs:
        scope.types[value.name] = value.type
    for const in graph.consts:
        scope.define_const(const.name, const.data)
    nodes = []
    for node in graph.nodes:
        new = infer_node(node, scope)
        for value in new.outputs:
            scope.types[value.name] = value.type
        nodes.append(new)
    return graph.replace(nodes=tuple(nodes)), scope

def tracked_values(graph: Graph) -> dict[str, tuple[Dim, ...]]:
    """Known contents of the graph's small integer tensors (for shape-folding passes)."""
    scope = Scope()
    for value in graph.inputs:
        scope.types[value.name] = value.type
    for const in graph.consts:
        scope.define_const(const.name, const.data)
    for node in graph.nodes:
        for value in infer_node(node, scope).outputs:
            scope.types[value.name] = value.type
    return dict(scope.values)

def value_types(values: Sequence[Value]) -> list[TensorType]:
    """The types of a list of Values."""
    return [v.type for v in values]

Any_ = Any
