"""The IR's text form: one statement a line, ASCII, diffable, parseable back.

    # ember-ir v1 | pipeline: fold_constants,dce | after: dce (2) | stats: removed=3
    graph main(%x: f32[N,3,32,32]) -> (%y: f32[N,10]) {
      const %w: f32[16,3,3,3] = #9c41e0a2
      const %shape: i64[2] = [1, -1]
      %c: f32[N,16,32,32] = Conv(%x, %w) {pads=[1,1,1,1]}
      return %y
    }

Constants come first by name, nodes in graph order, attributes sorted with defaults omitted.
Constants of at most SMALL elements print as literals, larger ones as `#` + the first 8 hex
digits of the sha256 of their dtype, shape and bytes. Facts and quantization parameters print
in braces after the type (values) or the literal (constants).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ember.compiler.ir import AttrValue, Const, Graph, Node, Quant, TensorType, Value, attr_equal

SMALL = 16
HEADER_PREFIX = "# ember-ir v1"
_BARE = re.compile(r"^[A-Za-z0-9_./\-]+$")


def name_text(name: str) -> str:
    """`%name`, quoted as JSON when it has characters outside [A-Za-z0-9_./-]."""
    return f"%{name}" if _BARE.match(name) else f"%{json.dumps(name)}"


def digest(data: np.ndarray) -> str:
    """8 hex digits identifying a constant's dtype, shape and contents."""
    h = hashlib.sha256()
    h.update(str(data.dtype).encode())
    h.update(str(tuple(data.shape)).encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()[:8]


def scalar_text(x: Any) -> str:
    """A number as the parser reads it back exactly (floats always with '.', 'e', inf or nan)."""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    text = repr(float(x))
    return text


def literal_text(data: np.ndarray) -> str:
    """A small array as a flat literal: `3`, `[1, -1]`."""
    flat = [scalar_text(x) for x in data.reshape(-1).tolist()] if data.dtype.kind != "V" else []
    if data.dtype.kind not in "biuf":  # bfloat16 and friends: go through float
        flat = [scalar_text(float(x)) for x in data.reshape(-1)]
    if data.ndim == 0:
        return flat[0]
    return "[" + ", ".join(flat) + "]"


def attr_text(value: AttrValue, indent: str) -> str:
    """One attribute value."""
    if isinstance(value, Graph):
        return graph_body_text(value, indent, types=None)
    if isinstance(value, np.ndarray):
        t = TensorType(_dtype_name(value), tuple(int(d) for d in value.shape))
        body = literal_text(value) if value.size <= SMALL else f"#{digest(value)}"
        return f"tensor({t}, {body})"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ",".join(attr_text(v, indent) for v in value) + "]"
    return scalar_text(value)


def _dtype_name(array: np.ndarray) -> str:
    from ember.compiler import dtypes

    return dtypes.from_numpy(array.dtype)


def facts_text(quant: Quant | None, facts: tuple[tuple[str, Any], ...] = ()) -> str:
    """` {scale=0.1, zero_point=0}` (with a leading space), or '' when there is nothing."""
    items: list[tuple[str, str]] = []
    if quant is not None:
        if quant.axis is None:
            items += [("scale", scalar_text(quant.scale[0])), ("zero_point", str(quant.zero_point[0]))]
        else:
            items += [
                ("axis", str(quant.axis)),
                ("scale", "[" + ",".join(scalar_text(s) for s in quant.scale) + "]"),
                ("zero_point", "[" + ",".join(str(z) for z in quant.zero_point) + "]"),
            ]
    for key, value in facts:
        items.append((key, json.dumps(value) if isinstance(value, str) else scalar_text(value)))
    if not items:
        return ""
    return " {" + ", ".join(f"{k}={v}" for k, v in sorted(items)) + "}"


def value_decl(value: Value) -> str:
    """`%x: f32[N,3]` plus quantization facts."""
    return f"{name_text(value.name)}: {value.type}{facts_text(value.quant)}"


def const_line(const: Const) -> str:
    """`const %w: f32[16,3,3,3] = #9c41e0a2 {sparsity=0.5}`."""
    data = const.data
    body = literal_text(data) if data.size <= SMALL else f"#{digest(data)}"
    return f"const {name_text(const.name)}: {const.type} = {body}{facts_text(const.quant, const.facts)}"


def printed_attrs(node: Node, types: Callable[[str], TensorType | None] | None) -> dict[str, AttrValue]:
    """The node's attributes minus those equal to their default."""
    from ember.compiler.ops import OPS, REQUIRED

    opdef = OPS.get(node.op)
    if opdef is None:
        return dict(node.attrs)
    in_types = [types(n) if (types and n) else None for n in node.inputs]
    shown = {}
    for key, value in node.attrs.items():
        spec = opdef.attrs.get(key)
        if spec is not None and spec.default is not REQUIRED and spec.default is not None:
            try:
                default = spec.resolve_default(in_types)
            except Exception:  # defaults that need types we could not see: print the value
                default = None
            if default is not None and attr_equal(_normal(value), _normal(default)):
                continue
        shown[key] = value
    return shown


def _normal(value: AttrValue) -> AttrValue:
    return tuple(value) if isinstance(value, list) else value


def node_line(node: Node, indent: str, types: Callable[[str], TensorType | None] | None) -> str:
    """`%y: f32[1,4] = Relu(%x)` (multi-line when an attribute holds a subgraph)."""
    outs = ", ".join(value_decl(v) for v in node.outputs)
    args = ", ".join(name_text(n) if n else "_" for n in node.inputs)
    attrs = printed_attrs(node, types)
    text = f"{indent}{outs} = {node.op}({args})"
    if attrs:
        inner = indent + "  "
        parts = [f"{k}={attr_text(v, inner)}" for k, v in attrs.items()]
        text += " {" + ", ".join(parts) + "}"
    return text


def graph_body_text(graph: Graph, indent: str, types: Callable[[str], TensorType | None] | None) -> str:
    """`graph NAME(...) -> (...) { ... }` with the closing brace at `indent`."""
    table = {v.name: v.type for v in graph.inputs}
    table.update((c.name, c.type) for c in graph.consts)
    for node in graph.nodes:
        table.update((v.name, v.type) for v in node.outputs)

    def lookup(name: str) -> TensorType | None:
        return table.get(name) or (types(name) if types else None)

    ins = ", ".join(value_decl(v) for v in graph.inputs)
    outs = ", ".join(f"{name_text(n)}: {lookup(n)}" for n in graph.outputs)
    inner = indent + "  "
    lines = [f"graph {graph.name}({ins}) -> ({outs}) {{"]
    lines += [inner + const_line(c) for c in graph.consts]
    lines += [node_line(n, inner, lookup) for n in graph.nodes]
    lines.append(f"{inner}return {', '.join(name_text(n) for n in graph.outputs)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def header(pipeline: str = "", after: str = "", stats: Mapping[str, Any] | None = None) -> str:
    """The one header line diff tools skip."""
    parts = [HEADER_PREFIX]
    if pipeline:
        parts.append(f"pipeline: {pipeline}")
    if after:
        parts.append(f"after: {after}")
    if stats:
        parts.append("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    return " | ".join(parts)


def print_graph(graph: Graph, *, pipeline: str = "", after: str = "", stats: Mapping[str, Any] | None = None) -> str:
    """The full text of a graph, header included, ending with a newline."""
    return header(pipeline, after, stats) + "\n" + graph_body_text(graph, "", None) + "\n"
