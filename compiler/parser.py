"""Parse the IR text form (see printer.py) back into a Graph.

print -> parse -> print is the identity. Constants printed by hash need their data: pass
`tensors` (name -> array, e.g. from the graph that was printed, or from a test's helper).
Attribute defaults omitted in the text are filled in from the op table; output types are
taken as written (the verifier checks them against inference).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ember.compiler import dims as dimlib
from ember.compiler import dtypes
from ember.compiler.errors import IRParseError
from ember.compiler.ir import Const, Graph, Node, Quant, TensorType, Value
from ember.compiler.printer import digest

_BARE = re.compile(r"[A-Za-z0-9_./\-]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUMBER = re.compile(r"-?(?:inf|nan|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")
_HEX = re.compile(r"#([0-9a-f]{8})")


class _Reader:
    """A cursor over the text with the few token readers the grammar needs."""

    def __init__(self, text: str, tensors: Mapping[str, np.ndarray]) -> None:
        self.text = text
        self.pos = 0
        self.tensors = tensors

    # -- low level ------------------------------------------------------------------------
    def fail(self, message: str) -> IRParseError:
        line = self.text.count("\n", 0, self.pos) + 1
        start = self.text.rfind("\n", 0, self.pos) + 1
        end = self.text.find("\n", self.pos)
        snippet = self.text[start : end if end >= 0 else len(self.text)].strip()
        return IRParseError(f"line {line}: {message}: {snippet!r}")

    def skip(self) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "#" and self.text.startswith("# ", self.pos):  # a comment / header line
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                break

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.take(token):
            raise self.fail(f"expected {token!r}")

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group(0)

    def ident(self) -> str:
        word = self.match(_IDENT)
        if word is None:
            raise self.fail("expected a name")
        return word

    def string(self) -> str:
        self.skip()
        if not self.text.startswith('"', self.pos):
            raise self.fail("expected a string")
        decoder = json.JSONDecoder()
        value, end = decoder.raw_decode(self.text, self.pos)
        self.pos = end
        return value

    def value_name(self) -> str:
        self.expect("%")
        if self.text.startswith('"', self.pos):
            return self.string()
        m = _BARE.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a value name after '%'")
        self.pos = m.end()
        return m.group(0)

    # -- grammar --------------------------------------------------------------------------
    def tensor_type(self) -> TensorType:
        dtype = self.ident()
        if dtype not in dtypes.NUMPY:
            raise self.fail(f"unknown dtype {dtype!r}")
        self.expect("[")
        end = self.text.find("]", self.pos)
        if end < 0:
            raise self.fail("unclosed '['")
        body = self.text[self.pos : end]
        self.pos = end + 1
        shape = tuple(dimlib.parse(d) for d in body.split(",")) if body.strip() else ()
        return TensorType(dtype, shape)

    def number(self) -> int | float | bool:
        if self.take("true"):
            return True
        if self.take("false"):
            return False
        text = self.match(_NUMBER)
        if text is None:
            raise self.fail("expected a number")
        if any(c in text for c in ".eE") or text.lstrip("-") in ("inf", "nan"):
            return float(text)
        return int(text)

    def literal(self, t: TensorType, name: str) -> np.ndarray:
        self.skip()
        h = self.match(_HEX)
        if h is not None:
            if name not in self.tensors:
                raise self.fail(f"constant {name!r} is printed by hash; its data must be given")
            data = np.asarray(self.tensors[name])
            if digest(data) != h[1:]:
                raise self.fail(f"data given for constant {name!r} does not match hash {h}")
            return data
        if self.take("["):
            items: list[Any] = []
            while not self.take("]"):
                items.append(self.number())
                self.take(",")
        else:
            items = [self.number()]
        np_dtype = dtypes.to_numpy(t.dtype)
        data = np.array(items, dtype=np.float64 if t.dtype in ("bf16",) else None).astype(np_dtype)
        shape = tuple(int(d) for d in t.shape)
        if data.size != int(np.prod(shape, dtype=np.int64)):
            raise self.fail(f"literal has {data.size} elements, type {t} needs {int(np.prod(shape))}")
        return data.reshape(shape)

    def braces(self) -> dict[str, Any]:
        """`{key=value, ...}` of facts or attributes (values: numbers, strings, lists, graphs...)."""
        out: dict[str, Any] = {}
        if not self.take("{"):
            return out
        while not self.take("}"):
            key = self.ident()
            self.expect("=")
            out[key] = self.attr_value()
            self.take(",")
        return out

    def attr_value(self) -> Any:
        self.skip()
        if self.peek('"'):
            return self.string()
        if self.peek("["):
            self.expect("[")
            items = []
            while not self.take("]"):
                items.append(self.attr_value())
                self.take(",")
            return tuple(items)
        if self.peek("graph"):
            return self.graph()
        if self.peek("tensor("):
            self.expect("tensor(")
            t = self.tensor_type()
            self.expect(",")
            data = self.literal(t, f"<attribute tensor {t}>")
            self.expect(")")
            data.flags.writeable = False
            return data
        return self.number()

    def value_decl(self) -> Value:
        name = self.value_name()
        self.expect(":")
        t = self.tensor_type()
        return Value(name, t, _quant(self.braces_if_facts()))

    def braces_if_facts(self) -> dict[str, Any]:
        # `{` after a type starts facts (before '=' of a node line or ',' / ')' of a list).
        return self.braces() if self.peek("{") else {}

    def graph(self) -> Graph:
        self.expect("graph")
        name = self.ident()
        self.expect("(")
        inputs = []
        while not self.take(")"):
            inputs.append(self.value_decl())
            self.take(",")
        self.expect("->")
        self.expect("(")
        declared = []
        while not self.take(")"):
            declared.append(self.value_name())
            self.expect(":")
            self.tensor_type()
            self.take(",")
        self.expect("{")
        consts: list[Const] = []
        nodes: list[Node] = []
        outputs: list[str] = []
        while not self.take("}"):
            if self.take("const "):
                cname = self.value_name()
                self.expect(":")
                t = self.tensor_type()
                self.expect("=")
                data = self.literal(t, cname)
                facts = self.braces_if_facts()
                quant = _quant(facts)
                rest = tuple(sorted((k, v) for k, v in facts.items() if k not in ("scale", "zero_point", "axis")))
                consts.append(Const(cname, data, quant, rest))
            elif self.take("return"):
                outputs.append(self.value_name())
                while self.take(","):
                    outputs.append(self.value_name())
            else:
                nodes.append(self.node())
        if outputs != declared:
            raise self.fail(f"graph {name}: return {outputs} does not match the signature {declared}")
        return Graph(tuple(inputs), tuple(nodes), tuple(outputs), tuple(consts), name=name)

    def node(self) -> Node:
        outs = [self.value_decl()]
        while self.take(","):
            outs.append(self.value_decl())
        self.expect("=")
        op = self.ident()
        self.expect("(")
        args: list[str] = []
        while not self.take(")"):
            if self.take("_"):
                args.append("")
            else:
                args.append(self.value_name())
            self.take(",")
        attrs = self.braces()
        return Node(op, tuple(args), tuple(outs), attrs)


def _quant(facts: Mapping[str, Any]) -> Quant | None:
    if "scale" not in facts:
        return None
    scale, zero = facts["scale"], facts.get("zero_point", 0)
    if "axis" in facts:
        return Quant(tuple(float(s) for s in scale), tuple(int(z) for z in zero), int(facts["axis"]))
    return Quant((float(scale),), (int(zero),), None)


def fill_defaults(graph: Graph, outer: Mapping[str, TensorType] | None = None) -> Graph:
    """Attributes omitted in text (equal to their default) filled in from the op table."""
    from ember.compiler.ops import OPS, REQUIRED

    table: dict[str, TensorType] = dict(outer or {})
    table.update((v.name, v.type) for v in graph.inputs)
    table.update((c.name, c.type) for c in graph.consts)
    nodes = []
    for node in graph.nodes:
        opdef = OPS.get(node.op)
        attrs = dict(node.attrs)
        for key, value in attrs.items():
            if isinstance(value, Graph):
                attrs[key] = fill_defaults(value, table)
        if opdef is not None:
            in_types = [table.get(n) if n else None for n in node.inputs]
            for key, spec in opdef.attrs.items():
                if key in attrs:
                    attrs[key] = _coerce(attrs[key], spec.kind)
                    continue
                if spec.default is REQUIRED or spec.default is None:
                    continue
                default = spec.resolve_default(in_types)
                if default is not None:
                    attrs[key] = default
        nodes.append(Node(node.op, node.inputs, node.outputs, attrs))
        table.update((v.name, v.type) for v in node.outputs)
    return graph.replace(nodes=tuple(nodes))


def _coerce(value: Any, kind: str) -> Any:
    # Text cannot tell [] of ints from [] of floats, nor 1 from 1.0 in a float list.
    if kind == "floats" and isinstance(value, tuple):
        return tuple(float(v) for v in value)
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


def parse_graph(text: str, tensors: Mapping[str, np.ndarray] | None = None) -> Graph:
    """A Graph from IR text; IRParseError naming the line when the text is malformed."""
    reader = _Reader(text, tensors or {})
    try:
        graph = reader.graph()
    except IRParseError:
        raise
    except (ValueError, KeyError, IndexError) as err:
        raise reader.fail(str(err)) from None
    reader.skip()
    if reader.pos != len(text):
        raise reader.fail("unexpected text after the graph")
    return fill_defaults(graph)


def graph_tensors(graph: Graph) -> dict[str, np.ndarray]:
    """name -> data of every constant (subgraphs included), to parse a printed graph back."""
    found = {c.name: c.data for c in graph.consts}
    for node in graph.nodes:
        for sub in node.subgraphs():
            found.update(graph_tensors(sub))
    return found
