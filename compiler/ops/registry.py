"""The op table's types: `OpDef` (attributes, type inference, numpy reference) and contexts.

Every operator ember understands has exactly one `OpDef` in `OPS` (see ops/__init__.py).
The canonical form of an op is the newest ONNX opset's form; `upgrade` rewrites older forms
(attributes that later became inputs, ...) at import time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.compiler.dims import Dim
from ember.compiler.ir import Graph, Node, TensorType

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class AttrSpec:
    """One attribute: its kind and its default.

    kind: "int", "float", "str", "ints", "floats", "strs", "tensor", "graph".
    default: REQUIRED (must be given), None (may be absent, absence has a meaning),
    a value, or a callable `(input_types) -> value` for defaults that depend on the inputs
    (Conv strides = 1 per spatial axis). The importer and the parser fill defaults in;
    the printer omits attributes equal to their default.
    """

    kind: str
    default: Any = REQUIRED

    def resolve_default(self, types: Sequence[TensorType | None]) -> Any:
        """The default value for these input types (None if absent is allowed)."""
        if self.default is REQUIRED:
            raise KeyError("required")
        if callable(self.default):
            return self.default(types)
        return self.default


def _symbol(text: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "d"
    return clean if not clean[0].isdigit() else f"d{clean}"


@dataclass
class InferCtx:
    """What an op's `infer` and `value` functions see about one node."""

    op: str
    types: list[TensorType | None]  # None for omitted optional inputs
    attrs: dict[str, Any]
    consts: list[np.ndarray | None]  # constant input data where the input is a constant
    values: list[tuple[Dim, ...] | None]  # known (symbolic) contents of small int inputs
    out_names: list[str]
    # Retypes a subgraph attribute in the current scope: (attr name, input types) -> output
    # types; set by the inference driver.
    subgraph_infer: Callable[[str, Sequence[TensorType] | None], list[TensorType]] | None = None
    new_attrs: dict[str, Any] = field(default_factory=dict)
    # Known contents of each retyped subgraph's outputs (attr name -> one entry per output).
    subgraph_values: dict[str, list[tuple[Dim, ...] | None]] = field(default_factory=dict)
    # Contents of any output that `infer` knows (output index -> contents), for ops with
    # several outputs; output 0 may also come from `OpDef.value`.
    out_values: dict[int, tuple[Dim, ...]] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """How many outputs the node declares."""
        return len(self.out_names)

    def fresh(self, output: int = 0, axis: int = 0) -> str:
        """A deterministic symbol for a dim that cannot be known before run time."""
        return f"{_symbol(self.out_names[output])}_{axis}"

    def const_or_value(self, index: int) -> tuple[Dim, ...] | None:
        """Contents of a small int input as a tuple: from a constant or from `values`."""
        if index < len(self.consts) and self.consts[index] is not None:
            return tuple(int(x) for x in np.asarray(self.consts[index]).reshape(-1))
        if index < len(self.values):
            return self.values[index]
        return None

    def infer_subgraph(self, attr: str, input_types: Sequence[TensorType] | None = None) -> list[TensorType]:
        """Retype the subgraph in attribute `attr` (inputs overridden if given); its output types."""
        if self.subgraph_infer is None:
            raise RuntimeError("no subgraph inference in this context")
        return self.subgraph_infer(attr, input_types)


@dataclass
class EvalCtx:
    """What an op's `ref` sees besides its inputs and attributes."""

    node: Node
    # Runs a subgraph with the current environment as outer scope: (graph, feeds) -> outputs.
    run_graph: Callable[[Graph, Mapping[str, np.ndarray]], list[np.ndarray]]

    @property
    def out_types(self) -> list[TensorType]:
        """Declared output types of the node."""
        return [v.type for v in self.node.outputs]


InferFn = Callable[[InferCtx], Sequence[TensorType]]
RefFn = Callable[[Sequence["np.ndarray | None"], Mapping[str, Any], EvalCtx], Sequence[np.ndarray]]
ValueFn = Callable[[InferCtx], "tuple[Dim, ...] | None"]
# (since_version, inputs, attrs, input types) -> (inputs, attrs); inputs may gain numpy
# arrays, which the importer turns into constants.
UpgradeFn = Callable[
    [int, list[Any], dict[str, Any], list["TensorType | None"]], "tuple[list[Any], dict[str, Any]]"
]


@dataclass(frozen=True)
class OpDef:
    """One operator: arity, attributes, type inference, numpy reference, opset upgrades."""

    name: str
    infer: InferFn
    ref: RefFn
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    inputs: tuple[int, int] = (1, 1)  # (min, max); max -1 = variadic
    outputs: tuple[int, int] = (1, 1)
    value: ValueFn | None = None
    upgrade: UpgradeFn | None = None
    domain: str = ""  # "" = ai.onnx; "ember" for ember's own ops
    doc: str = ""
    # (attribute name, input types, ONNX node) -> types of a body's inputs, for bodies whose
    # inputs the ONNX file leaves untyped (Loop, Scan).
    subgraph_inputs: Callable[[str, list[TensorType | None], Any], list[TensorType] | None] | None = None
