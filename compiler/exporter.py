"""ember IR -> ONNX, so an optimized graph opens in Netron and runs in onnxruntime.

Fused groups are inlined back to their ops (with the group's label kept in the node names,
`<kernel>/<value>`), constants become initializers, dtype-valued attributes go back to
TensorProto codes. The result uses ai.onnx opset EXPORT_OPSET (ember's canonical op forms are
the newest opsets' forms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.compiler import dtypes
from ember.compiler.ir import Graph, Node

EXPORT_OPSET = 23  # Attention (fuse_composites) exists from opset 23
# Attributes that hold an ember dtype name in the IR and a TensorProto code in ONNX.
DTYPE_ATTRS = {("Cast", "to"), ("EyeLike", "dtype"), ("QuantizeLinear", "output_dtype"),
               ("DequantizeLinear", "output_dtype"), ("QuantizeLinear", "precision"),
               ("LayerNormalization", "stash_type"), ("GroupNormalization", "stash_type"),
               ("RMSNormalization", "stash_type"), ("Attention", "softmax_precision"), ("Range", "stash_type"),
               ("BitCast", "to")}


def _attr(op: str, key: str, value: Any, opset: int) -> onnx.AttributeProto:
    if (op, key) in DTYPE_ATTRS and isinstance(value, str):
        value = dtypes.TO_ONNX[value]
    if isinstance(value, Graph):
        return helper.make_attribute(key, _graph(value, opset, top=False))
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, tuple) and not value:
        kind = {"float": onnx.AttributeProto.FLOATS, "str": onnx.AttributeProto.STRINGS}.get("", onnx.AttributeProto.INTS)
        return helper.make_attribute(key, [], attr_type=kind)
    return helper.make_attribute(key, list(value) if isinstance(value, tuple) else value)


def _inline(node: Node) -> list[Node]:
    """A Fused node's body nodes, reading and writing the outer graph's names."""
    body: Graph = node.attrs["body"]
    mapping = {v.name: outer for v, outer in zip(body.inputs, node.inputs)}
    mapping.update(zip(body.outputs, node.output_names))
    nodes = []
    for member in body.nodes:
        inputs = tuple(mapping.get(n, n) for n in member.inputs)
        outputs = tuple(type(v)(mapping.get(v.name, v.name), v.type, v.quant) for v in member.outputs)
        nodes.append(Node(member.op, inputs, outputs, member.attrs))
    return nodes


def _types(graph: Graph) -> dict[str, Any]:
    """Every value's type, Fused bodies' internal values included."""
    table: dict[str, Any] = {v.name: v.type for v in graph.inputs}
    table.update((c.name, c.type) for c in graph.consts)
    for node in graph.nodes:
        table.update((v.name, v.type) for v in node.outputs)
        if node.op == "Fused":
            table.update(_types(node.attrs["body"]))
    return table


def _graph(graph: Graph, opset: int, top: bool = True) -> onnx.GraphProto:
    from ember.compiler.printer import printed_attrs

    table = _types(graph)
    onnx_nodes = []
    initializers = [numpy_helper.from_array(np.asarray(c.data), c.name) for c in graph.consts]
    for node in graph.nodes:
        members = _inline(node) if node.op == "Fused" else [node]
        if node.op == "Fused":
            initializers += [numpy_helper.from_array(np.asarray(c.data), c.name) for c in node.attrs["body"].consts]
        for m in members:
            # Attributes equal to their default are left out: newer opsets added some
            # (Cast's round_mode) that older readers reject.
            attrs = [_attr(m.op, k, v, opset) for k, v in printed_attrs(m, table.get).items()]
            label = f"{node.attrs['kernel']}/{m.name}" if node.op == "Fused" else m.name
            proto = helper.make_node(m.op, list(m.inputs), list(m.output_names), name=label)
            proto.attribute.extend(attrs)
            onnx_nodes.append(proto)

    def info(name: str) -> onnx.ValueInfoProto:
        t = graph.value(name).type if graph.has_value(name) else None
        if t is None:
            return helper.make_value_info(name, onnx.TypeProto())
        return helper.make_tensor_value_info(name, dtypes.TO_ONNX[t.dtype], list(t.shape))

    inputs = [helper.make_tensor_value_info(v.name, dtypes.TO_ONNX[v.type.dtype], list(v.type.shape)) for v in graph.inputs]
    outputs = [info(n) for n in graph.outputs]
    return helper.make_graph(onnx_nodes, graph.name, inputs, outputs, initializers)


def to_onnx(graph: Graph, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """The graph as an ONNX model."""
    model = helper.make_model(_graph(graph, opset), opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="ember")
    model.ir_version = 10
    return model


def export_onnx(graph: Graph, path: str | Path) -> None:
    """Write the graph as an ONNX file (external data beside it past 2 GB)."""
    model = to_onnx(graph)
    large = sum(c.data.nbytes for c in graph.consts) > (1 << 31) - (1 << 26)
    onnx.save(model, str(path), save_as_external_data=large, location=Path(path).name + ".data" if large else None)
