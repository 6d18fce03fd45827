"""ONNX -> ember IR.

Reads a model (with external data), checks it, lists every unsupported operator at once,
turns initializers and Constant nodes into constants, rewrites old-opset forms into the
canonical (newest) form through each op's `upgrade`, makes attribute defaults explicit and
types every value with ember's own inference rules.

Input dims that the graph makes equal are unified: an exporter often names each input's
dims on its own (`ids: [ids_dynamic_axes_1, ids_dynamic_axes_2]`, `mask: [mask_dynamic_axes_1,
mask_dynamic_axes_2]`), and where the graph then broadcasts one against the other (the mask
added to the attention scores) or contracts them in a matmul, the model is only valid when
they are the same size. Such an input dim is renamed to the first input dim (or static size)
it meets, so that every shape downstream is written in one name and the run-time check of
the inputs says when they differ.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from ember.compiler import dims as dimlib
from ember.compiler import dtypes
from ember.compiler.dims import Dim
from ember.compiler.errors import EmberError, InferError, InvalidModelError, UnsupportedModelError
from ember.compiler.infer import Scope, infer_node
from ember.compiler.ir import Const, Graph, Namer, Node, TensorType, Value
from ember.compiler.ops.registry import REQUIRED

log = logging.getLogger(__name__)

MIN_OPSET = 11
MAX_OPSET = onnx.defs.onnx_opset_version()
ONNX_DOMAINS = ("", "ai.onnx")
# Operators the importer consumes itself (they never reach the IR).
IMPORTER_OPS = frozenset({"Constant"})


def is_supported(op_type: str, domain: str = "") -> bool:
    """True when ember imports this ONNX operator."""
    from ember.compiler.ops import OPS

    if domain not in ONNX_DOMAINS:
        return False
    return op_type in IMPORTER_OPS or (op_type in OPS and not OPS[op_type].domain)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX file; InvalidModelError with the reason if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning-like errors...
        raise InvalidModelError(f"{path}: not a valid ONNX model (cannot parse protobuf: {err})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(f"{path}: not a valid ONNX model (no graph)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as err:
        raise InvalidModelError(f"{path}: cannot read external data: {err}") from None
    return model


def check_onnx(model: onnx.ModelProto, where: str) -> None:
    """onnx.checker, with its complaint turned into one InvalidModelError."""
    try:
        onnx.checker.check_model(model)
    except ValueError as err:
        if "2GB" not in str(err):
            raise InvalidModelError(f"{where}: invalid ONNX model: {str(err).splitlines()[0]}") from None
    except onnx.checker.ValidationError as err:
        message = str(err).strip().splitlines()
        if message and "is deprecated in domain_version" in message[0]:
            # A schema onnx retired after release (GroupNormalization-18): the model is
            # well-formed; the op's own upgrade and inference judge it.
            return
        raise InvalidModelError(f"{where}: invalid ONNX model: {message[0] if message else err}") from None


def model_opset(model: onnx.ModelProto) -> int:
    """The ai.onnx opset version the model imports."""
    for entry in model.opset_import:
        if entry.domain in ONNX_DOMAINS:
            return int(entry.version)
    raise InvalidModelError("the model imports no ai.onnx opset")


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """One line per unsupported (domain, op, opset): 'Op (opset N): node names'."""
    opsets = {e.domain: int(e.version) for e in model.opset_import}
    found: dict[tuple[str, str], list[str]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for index, node in enumerate(graph.node):
            if not is_supported(node.op_type, node.domain):
                found.setdefault((node.domain, node.op_type), []).append(node.name or f"#{index} in {graph.name}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(model.graph)
    lines = []
    for (domain, op), names in sorted(found.items()):
        qual = f"{domain}.{op}" if domain not in ONNX_DOMAINS else op
        version = opsets.get(domain, opsets.get("ai.onnx", 0) if domain in ONNX_DOMAINS else 0)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        lines.append(f"  {qual} (opset {version}): {len(names)} node(s): {shown}")
    return lines


def import_model(path: str | Path, dims: Mapping[str, int] | None = None) -> Graph:
    """Load an ONNX file and import it; every failure is an EmberError with one clear message.

    `dims`: values for symbolic input dims (by ember's name for them, as the generic import
    shows it): the graph is imported with those dims static."""
    model = load_onnx(path)
    return import_proto(model, where=str(path), dims=dims)


def _upgraded(model: onnx.ModelProto, opset: int, where: str) -> onnx.ModelProto:
    """The model converted to opset MIN_OPSET by onnx's version converter (Upsample becomes
    Resize, BatchNormalization loses its spatial attribute...); a clear error if it cannot."""
    if opset < 9 and any(n.op_type == "Scan" for n in model.graph.node):
        raise UnsupportedModelError(f"{where}: Scan of opset {opset} (with a batch axis) has no opset-9 form onnx's converter "
                                    "produces; re-export the model at opset 11 or later")
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:
        raise UnsupportedModelError(
            f"{where}: ai.onnx opset {opset} is older than ember takes ({MIN_OPSET} to {MAX_OPSET}) and onnx's version "
            f"converter could not upgrade it: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
        ) from None
    log.info("%s: upgraded from ai.onnx opset %d to %d", where, opset, MIN_OPSET)
    return upgraded


def import_proto(model: onnx.ModelProto, where: str = "model", dims: Mapping[str, int] | None = None) -> Graph:
    """Import an in-memory ONNX model (symbolic input dims named in `dims` bound to those values)."""
    check_onnx(model, where)
    opset = model_opset(model)
    if opset < MIN_OPSET:  # older exports (the ONNX model zoo's opset 7-10 models): upgraded first
        model = _upgraded(model, opset, where)
        opset = model_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{where}: ai.onnx opset {opset} is not supported (ember takes {MIN_OPSET} to {MAX_OPSET}); "
            "convert it with onnx.version_converter.convert_version(model, 17)"
        )
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as err:
            raise InvalidModelError(f"{where}: cannot inline model-local functions: {err}") from None
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedModelError(
            f"{where}: {len(missing)} unsupported operator(s):\n" + "\n".join(missing)
        )
    bound: dict[str, Dim] = dict(dims or {})
    for _ in range(MAX_UNIFY_ROUNDS):
        with dimlib.recording() as assumed:
            graph = _import_graph(model, opset, where, bound)
        renames = unified_input_dims(graph, assumed)
        if not renames:
            return graph
        for old, new in renames.items():
            log.info("%s: input dim %s is taken as %s (the graph needs them equal)", where, old, new)
        bound = {**{k: renames.get(v, v) if isinstance(v, str) else v for k, v in bound.items()}, **renames}
    return graph


# Unifying dims can expose another equality only through a renamed dim: a few rounds suffice.
MAX_UNIFY_ROUNDS = 4


def _import_graph(model: onnx.ModelProto, opset: int, where: str, dims: Mapping[str, Dim]) -> Graph:
    importer = _Importer(opset, where, dims)
    try:
        return importer.graph(model.graph, parent=None, top=True)
    except EmberError:
        raise
    except Exception as err:  # a malformed graph the checker let through
        raise InvalidModelError(f"{where}: cannot import: {type(err).__name__}: {err}") from None


def unified_input_dims(graph: Graph, assumed: Sequence[tuple[Dim, Dim]]) -> dict[str, Dim]:
    """Input dims to rename, from the pairs of dims inference took to be equal: each class of
    equal dims (joined through any dim, expressions included) maps its input symbols to its
    static size if it has one, else to the input symbol that comes first in the inputs."""
    order: dict[str, int] = {}
    for value in graph.inputs:
        for d in value.type.shape:
            if isinstance(d, str):
                order.setdefault(d, len(order))
    parent: dict[Dim, Dim] = {}

    def find(d: Dim) -> Dim:
        while parent.get(d, d) != d:
            d = parent[d]
        return d

    for a, b in assumed:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    classes: dict[Dim, list[Dim]] = {}
    for d in list(parent):
        classes.setdefault(find(d), []).append(d)
    renames: dict[str, Dim] = {}
    for root, members in classes.items():
        members = list(dict.fromkeys([root, *members]))
        static = [d for d in members if isinstance(d, int)]
        symbols = sorted((d for d in members if isinstance(d, str) and d in order), key=order.__getitem__)
        if len(set(static)) > 1 or not symbols:
            continue  # sizes that cannot agree are inference's error to report; no input dim to rename
        target: Dim = static[0] if static else symbols[0]
        renames.update({s: target for s in symbols if s != target})
    return renames


_SYMBOL = re.compile(r"[^A-Za-z0-9_]+")


def _dim(dim: onnx.TensorShapeProto.Dimension, fallback: str) -> Dim:
    if dim.HasField("dim_value") and dim.dim_value >= 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        clean = _SYMBOL.sub("_", dim.dim_param).strip("_") or fallback
        return clean if not clean[0].isdigit() else f"d{clean}"
    return fallback


def _value_type(info: onnx.ValueInfoProto, where: str) -> TensorType:
    if not info.type.HasField("tensor_type"):
        kind = info.type.WhichOneof("value")
        raise UnsupportedModelError(f"{where}: value {info.name!r} is a {kind}; ember supports tensors only")
    tensor = info.type.tensor_type
    dtype = dtypes.from_onnx(tensor.elem_type, f"value {info.name!r}")
    if not tensor.HasField("shape"):
        raise UnsupportedModelError(
            f"{where}: input {info.name!r} has no shape (unknown rank); give it a shape in the model"
        )
    base = _SYMBOL.sub("_", info.name).strip("_") or "input"
    shape = tuple(_dim(d, f"{base}_{i}") for i, d in enumerate(tensor.shape.dim))
    return TensorType(dtype, shape)


def attr_value(attr: onnx.AttributeProto) -> Any:
    """A Python value for an ONNX attribute (tuples for lists, numpy for tensors)."""
    kind = attr.type
    A = onnx.AttributeProto
    if kind == A.INT:
        return int(attr.i)
    if kind == A.FLOAT:
        return float(np.float32(attr.f))
    if kind == A.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if kind == A.INTS:
        return tuple(int(x) for x in attr.ints)
    if kind == A.FLOATS:
        return tuple(float(np.float32(x)) for x in attr.floats)
    if kind == A.STRINGS:
        return tuple(s.decode("utf-8", errors="replace") for s in attr.strings)
    if kind == A.TENSOR:
        return _readonly(numpy_helper.to_array(attr.t))
    raise UnsupportedModelError(f"attribute {attr.name!r} of type {A.AttributeType.Name(kind)} is not supported")


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    dtypes.from_numpy(array.dtype)
    array.flags.writeable = False
    return array


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return _readonly(numpy_helper.to_array(attr.t))
    if attr.name == "sparse_value":
        return _readonly(numpy_helper.to_array(attr.sparse_tensor))
    value = attr_value(attr)
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name not in kinds:
        raise UnsupportedModelError(f"Constant node {node.name!r}: attribute {attr.name} is not supported")
    return _readonly(np.array(value, dtype=kinds[attr.name]))


class _Importer:
    """Builds ember graphs from ONNX graphs (recursively for subgraphs)."""

    def __init__(self, opset: int, where: str, dims: Mapping[str, int] | None = None) -> None:
        self.opset = opset
        self.where = where
        self.dims = dict(dims or {})
        self.namer = Namer(set())

    def graph(
        self, proto: onnx.GraphProto, parent: Scope | None, top: bool = False, hints: Sequence[TensorType] | None = None
    ) -> Graph:
        """Import one graph in the scope `parent` (None for the main graph).

        `hints` type subgraph inputs that the ONNX file leaves untyped (Loop/Scan bodies).
        """
        from ember.compiler.ops import OPS

        if parent is not None:
            proto = self._unshadowed(proto, parent)
        scope = Scope(parent=parent)
        consts: dict[str, Const] = {}
        for init in proto.initializer:
            data = _readonly(numpy_helper.to_array(init))
            consts[init.name] = Const(init.name, data)
        for sparse in proto.sparse_initializer:
            name = sparse.values.name
            consts[name] = Const(name, _readonly(numpy_helper.to_array(sparse)))
        inputs = []
        for k, info in enumerate(proto.input):
            if info.name in consts:  # IR < 4: initializers listed as inputs are constants
                continue
            # Bodies often leave inputs untyped or shapeless: the parent op knows their types.
            untyped = not info.type.WhichOneof("value") or (
                info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape")
            )
            if untyped and hints is not None and k < len(hints):
                value = Value(info.name, hints[k])
            else:
                value = Value(info.name, _value_type(info, self.where))
                if top and self.dims:
                    bound = tuple(self.dims.get(d, d) if isinstance(d, str) else d for d in value.type.shape)
                    value = Value(info.name, TensorType(value.type.dtype, bound))
            inputs.append(value)
            scope.types[value.name] = value.type
        for const in consts.values():
            scope.define_const(const.name, const.data)
        self.namer.taken |= set(scope.types) | {n for node in proto.node for n in node.output}

        nodes: list[Node] = []
        for index, onode in enumerate(_topological(proto)):
            label = onode.name or f"#{index} ({onode.op_type})"
            if onode.op_type == "Constant" and onode.domain in ONNX_DOMAINS:
                data = _constant_node_value(onode)
                consts[onode.output[0]] = Const(onode.output[0], data)
                scope.define_const(onode.output[0], data)
                continue
            opdef = OPS[onode.op_type]
            node = self.node(onode, opdef, scope, consts, label)
            try:
                node = infer_node(node, scope)
            except InferError as err:
                raise InferError(f"{self.where}: node {label}: {err}") from None
            if onode.domain in ONNX_DOMAINS:  # after the op's own checks, whose messages say more
                self._check_type_params(onode, scope, label)
            for value in node.outputs:
                scope.types[value.name] = value.type
            nodes.append(node)
        outputs = tuple(o.name for o in proto.output)
        for name in outputs:
            if scope.lookup_type(name) is None:
                raise InvalidModelError(f"{self.where}: graph output {name!r} is never computed")
        return Graph(tuple(inputs), tuple(nodes), outputs, tuple(consts.values()), name="main" if top else (proto.name or "body"))

    def _check_type_params(self, onode: onnx.NodeProto, scope: Scope, label: str) -> None:
        """Inputs that the operator's schema binds to one type parameter have one dtype
        (LayerNormalization's X, Scale and B are all T): onnxruntime refuses such a model on
        load, and a kernel built from it would read one operand in the wrong dtype."""
        try:
            schema = onnx.defs.get_schema(onode.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return
        bound: dict[str, tuple[str, str]] = {}
        formal = list(schema.inputs)
        for i, name in enumerate(onode.input):
            if not name or not formal:
                continue
            param = formal[min(i, len(formal) - 1)]
            if i >= len(formal) and param.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
                continue
            t = scope.lookup_type(name)
            if t is None:
                continue
            first = bound.setdefault(param.type_str, (param.name, t.dtype))
            if first[1] != t.dtype:
                where = f"node {label}" + (f" ({onode.op_type})" if onode.name else "")
                raise InvalidModelError(
                    f"{self.where}: {where}: input {param.name} ({name!r}) is {t.dtype} but "
                    f"{first[0]} is {first[1]}; the operator needs them of one type ({param.type_str}). onnxruntime refuses "
                    "this model as well: re-export it, or cast the inputs to one type")

    def _unshadowed(self, proto: onnx.GraphProto, parent: Scope) -> onnx.GraphProto:
        """The subgraph with values that shadow an enclosing graph's renamed (ember's IR keeps
        every name unique across nesting levels; ONNX lets a body reuse an outer name)."""
        defined = _defined(proto)
        self.namer.taken |= defined
        clashes = sorted(n for n in defined if parent.lookup_type(n) is not None)
        if not clashes:
            return proto
        renamed = onnx.GraphProto()
        renamed.CopyFrom(proto)
        _rename(renamed, {n: self.namer(n) for n in clashes}, own=True)
        return renamed

    def node(self, onode: onnx.NodeProto, opdef: Any, scope: Scope, consts: dict[str, Const], label: str) -> Node:
        """One ONNX node in canonical form, attribute defaults explicit, outputs untyped yet."""
        attrs: dict[str, Any] = {}
        in_types = [scope.lookup_type(n) if n else None for n in onode.input]
        for attr in onode.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                hints = opdef.subgraph_inputs(attr.name, in_types, onode) if opdef.subgraph_inputs else None
                attrs[attr.name] = self.graph(attr.g, parent=scope, hints=hints)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                attrs[attr.name] = tuple(self.graph(g, parent=scope) for g in attr.graphs)
            else:
                attrs[attr.name] = attr_value(attr)
        inputs: list[Any] = list(onode.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        types = [scope.lookup_type(n) if isinstance(n, str) and n else None for n in inputs]
        if opdef.upgrade is not None:
            schema = onnx.defs.get_schema(onode.op_type, self.opset, "")
            inputs, attrs = opdef.upgrade(schema.since_version, inputs, attrs, types)
        names: list[str] = []
        for item in inputs:
            if isinstance(item, np.ndarray):  # an attribute that became an input
                name = self.namer(f"{onode.output[0] if onode.output else onode.op_type}_{len(names)}")
                data = _readonly(item)
                consts[name] = Const(name, data)
                scope.define_const(name, data)
                names.append(name)
            else:
                names.append(item)
        types = [scope.lookup_type(n) if n else None for n in names]
        unknown = sorted(set(attrs) - set(opdef.attrs))
        if unknown:
            raise UnsupportedModelError(f"{self.where}: node {label} ({onode.op_type}): unknown attribute(s) {unknown}")
        for key, spec in opdef.attrs.items():
            if key in attrs:
                continue
            if spec.default is REQUIRED:
                raise InvalidModelError(f"{self.where}: node {label} ({onode.op_type}) lacks required attribute {key!r}")
            default = spec.resolve_default(types)
            if default is not None:
                attrs[key] = default
        lo, hi = opdef.inputs
        if len(names) < lo or (hi >= 0 and len(names) > hi):
            raise InvalidModelError(f"{self.where}: node {label} ({onode.op_type}) has {len(names)} inputs; expected {lo} to {hi if hi >= 0 else 'any'}")
        outputs = list(onode.output)
        while outputs and not outputs[-1]:
            outputs.pop()
        values = []
        for k, name in enumerate(outputs):
            if not name:  # an omitted output in the middle: give it a name nobody reads
                name = self.namer(f"{outputs[-1]}_unused{k}")
            values.append(Value(name, TensorType("f32", ())))
        return Node(onode.op_type, tuple(names), tuple(values), attrs)


def _topological(proto: onnx.GraphProto) -> Sequence[onnx.NodeProto]:
    """The graph's nodes in a topological order (ONNX files are supposed to be sorted already)."""
    nodes = list(proto.node)
    produced = {o for n in nodes for o in n.output if o}
    available = {i.name for i in proto.input} | {i.name for i in proto.initializer}
    order: list[onnx.NodeProto] = []
    pending = nodes
    while pending:
        rest = []
        for node in pending:
            needs = [n for n in _reads(node) if n in produced and n not in available]
            if needs:
                rest.append(node)
            else:
                order.append(node)
                available.update(o for o in node.output if o)
        if len(rest) == len(pending):
            names = ", ".join(n.name or n.op_type for n in rest[:5])
            raise InvalidModelError(f"the graph has a cycle or reads values nobody computes (at {names})")
        pending = rest
    return order


def _defined(graph: onnx.GraphProto) -> set[str]:
    """Names a graph defines itself: inputs, initializers and node outputs."""
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    names |= {s.values.name for s in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def _rename(graph: onnx.GraphProto, mapping: dict[str, str], own: bool) -> None:
    """Rename values in place: definitions and reads when `own`, else only the reads of names
    a nested graph takes from outside (its own definitions shadow them)."""
    if not own:
        mapping = {k: v for k, v in mapping.items() if k not in _defined(graph)}
        if not mapping:
            return
    else:
        for info in list(graph.input) + list(graph.value_info):
            info.name = mapping.get(info.name, info.name)
        for init in graph.initializer:
            init.name = mapping.get(init.name, init.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for node in graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = mapping.get(name, name)
        for k, name in enumerate(node.output):
            node.output[k] = mapping.get(name, name) if own else name
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                _rename(sub, mapping, own=False)
    for info in graph.output:
        info.name = mapping.get(info.name, info.name)


def _reads(node: onnx.NodeProto) -> list[str]:
    reads = [n for n in node.input if n]
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for n in sub.node:
                reads.extend(x for x in _reads(n) if x not in inner)
    return reads
