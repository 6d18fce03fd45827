"""ember's graph IR: a handful of frozen dataclasses.

A `Graph` holds typed `Value`s (inputs), shared read-only constants (`Const`), `Node`s in a
stable topological order and the names of its outputs. Nodes name their inputs by value name
("" marks an omitted optional input) and declare their outputs as typed `Value`s. Value names
are kept from ONNX and unique within a graph; new names come from `Namer`.

Subgraphs (If/Loop/Scan bodies) are `Graph`s stored as node attributes; they may name values
of the enclosing graphs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np

from ember.compiler import dtypes
from ember.compiler.dims import Dim

# An attribute value: int, float, str, tuple of those, a numpy tensor or a subgraph.
AttrValue = Any


@dataclass(frozen=True)
class TensorType:
    """dtype (an ember dtype name, see dtypes.py) and shape (ints and symbolic dims)."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in dtypes.NUMPY:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def static(self) -> bool:
        """True when every dimension is a known integer."""
        return all(isinstance(d, int) for d in self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype."""
        return dtypes.to_numpy(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Quant:
    """Affine quantization parameters: real = scale * (q - zero_point).

    Per tensor when `axis` is None (one scale, one zero point), per axis otherwise.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None


@dataclass(frozen=True)
class Value:
    """A named, typed tensor; `quant` says how an integer tensor maps to reals."""

    name: str
    type: TensorType
    quant: Quant | None = None


@dataclass(frozen=True, eq=False)
class Const:
    """A constant tensor shared between graph versions (its array is read-only).

    `facts` are printed in dumps (e.g. ("sparsity", 0.5)); `quant` as for Value.
    """

    name: str
    data: np.ndarray
    quant: Quant | None = None
    facts: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        data = self.data
        if data.flags.writeable:
            data = np.array(data, copy=True)
            data.flags.writeable = False
        object.__setattr__(self, "data", data)
        dtypes.from_numpy(data.dtype)

    @property
    def type(self) -> TensorType:
        """The constant's tensor type (always static)."""
        return TensorType(dtypes.from_numpy(self.data.dtype), tuple(int(d) for d in self.data.shape))

    @property
    def value(self) -> Value:
        """The constant as a Value."""
        return Value(self.name, self.type, self.quant)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Const):
            return NotImplemented
        return (
            self.name == other.name
            and self.quant == other.quant
            and self.facts == other.facts
            and self.data.dtype == other.data.dtype
            and self.data.shape == other.data.shape
            and (self.data is other.data or np.array_equal(self.data, other.data, equal_nan=True))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Node:
    """One operator application. `inputs` are value names ("" = omitted optional input)."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "attrs", dict(sorted(self.attrs.items())))

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs."""
        return tuple(v.name for v in self.outputs)

    @property
    def name(self) -> str:
        """The node's identity in messages: its first output's name."""
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    def subgraphs(self) -> Iterator[Graph]:
        """The graphs held in attributes (If branches, Loop bodies...)."""
        for value in self.attrs.values():
            if isinstance(value, Graph):
                yield value
            elif isinstance(value, tuple):
                yield from (v for v in value if isinstance(v, Graph))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (
            self.op == other.op
            and self.inputs == other.inputs
            and self.outputs == other.outputs
            and attrs_equal(self.attrs, other.attrs)
        )

    __hash__ = None  # type: ignore[assignment]


def attr_equal(a: AttrValue, b: AttrValue) -> bool:
    """Equality of attribute values (numpy tensors compared by dtype, shape and contents)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=True))
        )
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def attrs_equal(a: Mapping[str, AttrValue], b: Mapping[str, AttrValue]) -> bool:
    """Equality of attribute dicts."""
    return a.keys() == b.keys() and all(attr_equal(a[k], b[k]) for k in a)


@dataclass(frozen=True, eq=False)
class Graph:
    """A graph: typed inputs, constants sorted by name, nodes in topological order, outputs."""

    inputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    consts: tuple[Const, ...] = ()
    name: str = "main"

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "consts", tuple(sorted(self.consts, key=lambda c: c.name)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.name == other.name
            and self.inputs == other.inputs
            and self.outputs == other.outputs
            and self.consts == other.consts
            and self.nodes == other.nodes
        )

    __hash__ = None  # type: ignore[assignment]

    # -- lookups (computed once per graph version; graphs are immutable) ----------------
    @cached_property
    def _values(self) -> dict[str, Value]:
        table: dict[str, Value] = {v.name: v for v in self.inputs}
        table.update((c.name, c.value) for c in self.consts)
        for node in self.nodes:
            table.update((v.name, v) for v in node.outputs)
        return table

    @cached_property
    def _const_table(self) -> dict[str, Const]:
        return {c.name: c for c in self.consts}

    @cached_property
    def _producers(self) -> dict[str, Node]:
        return {v.name: node for node in self.nodes for v in node.outputs}

    @cached_property
    def _consumers(self) -> dict[str, tuple[Node, ...]]:
        table: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in dict.fromkeys(n for n in node_uses(node) if n):
                table.setdefault(name, []).append(node)
        return {k: tuple(v) for k, v in table.items()}

    def value(self, name: str) -> Value:
        """The Value called `name` (input, constant or node output) of this graph."""
        return self._values[name]

    def has_value(self, name: str) -> bool:
        """True when `name` is defined in this graph (not counting enclosing graphs)."""
        return name in self._values

    def const(self, name: str) -> Const | None:
        """The constant called `name`, or None."""
        return self._const_table.get(name)

    def producer(self, name: str) -> Node | None:
        """The node that defines `name`, or None for inputs and constants."""
        return self._producers.get(name)

    def consumers(self, name: str) -> tuple[Node, ...]:
        """Nodes that read `name` (including through subgraphs), in graph order."""
        return self._consumers.get(name, ())

    @property
    def output_values(self) -> tuple[Value, ...]:
        """The outputs as Values."""
        return tuple(self._values[n] for n in self.outputs)

    def names(self) -> set[str]:
        """Every value name defined in this graph and its subgraphs."""
        found = set(self._values)
        for node in self.nodes:
            for sub in node.subgraphs():
                found |= sub.names()
        return found

    def param_bytes(self) -> int:
        """Total bytes of constant data (including subgraphs' constants)."""
        total = sum(c.data.nbytes for c in self.consts)
        for node in self.nodes:
            total += sum(sub.param_bytes() for sub in node.subgraphs())
        return total

    def replace(self, **changes: Any) -> Graph:
        """A copy with fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def to_networkx(self) -> nx.DiGraph:
        """A networkx view: one vertex per node index, an edge per producer -> consumer.

        Vertex attributes: `node` (the Node). Edge attribute `values`: the names carried.
        """
        view = nx.DiGraph()
        for index, node in enumerate(self.nodes):
            view.add_node(index, node=node)
        where = {v.name: i for i, node in enumerate(self.nodes) for v in node.outputs}
        for index, node in enumerate(self.nodes):
            for name in node_uses(node):
                if name in where:
                    src = where[name]
                    if view.has_edge(src, index):
                        view.edges[src, index]["values"] += (name,)
                    else:
                        view.add_edge(src, index, values=(name,))
        return view


def node_uses(node: Node) -> tuple[str, ...]:
    """Names a node reads: its inputs plus the outer-scope names its subgraphs read."""
    uses = list(node.inputs)
    for sub in node.subgraphs():
        uses.extend(free_names(sub))
    return tuple(uses)


def free_names(graph: Graph) -> tuple[str, ...]:
    """Names a (sub)graph reads that it does not define itself, in first-use order."""
    defined = {v.name for v in graph.inputs} | {c.name for c in graph.consts}
    free: dict[str, None] = {}
    for node in graph.nodes:
        for name in node_uses(node):
            if name and name not in defined:
                free[name] = None
        defined.update(v.name for v in node.outputs)
    for name in graph.outputs:
        if name not in defined:
            free[name] = None
    return tuple(free)


_HINT_CLEAN = re.compile(r"[^A-Za-z0-9_.]+")


class Namer:
    """Makes new value names from a hint, unique against a set of taken names.

    `conv1_bn`, then `conv1_bn_1`, `conv1_bn_2` on collision. Deterministic: the same
    graph and the same requests give the same names.
    """

    def __init__(self, taken: set[str] | Graph) -> None:
        self.taken = set(taken.names()) if isinstance(taken, Graph) else set(taken)

    def __call__(self, hint: str) -> str:
        base = _HINT_CLEAN.sub("_", hint).strip("_") or "v"
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def const_array(data: Any, dtype: str | None = None) -> np.ndarray:
    """A read-only numpy array from data (dtype as an ember dtype name)."""
    array = np.array(data, dtype=dtypes.to_numpy(dtype) if dtype else None)
    array.flags.writeable = False
    return array
