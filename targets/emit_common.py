"""What every emitter module shares: the lowering state, the Emitter type and small helpers.

An emitter is `(lw, node, args) -> [relax expr per output]`: `args` are the Relax values of
the node's inputs (None for omitted optional inputs and for operands the emitter never reads,
see `SHAPE_OPERANDS` in lower.py); the output types come from ember's own inference, so
emitters read shapes from `node.outputs[i].type`, with symbolic dims as shared tir.Vars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tvm import relax, tirx

from ember.compiler import dims as dim_values
from ember.compiler import dtypes
from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph, Node, TensorType

R = relax.op
TVM_DTYPE = {
    "f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32",
    "i16": "int16", "i8": "int8", "u64": "uint64", "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "bool",
}


class LoweringError(EmberError):
    """An op or a feature the code generator does not handle (the message names the node)."""

    exit_code = 2


class Lowering:
    """State of one graph's lowering: block builder, emitted values, dim vars, types, constants."""

    def __init__(self, bb: relax.BlockBuilder, dims: dict[str, tirx.Var], graph: Graph,
                 consts: dict[str, np.ndarray], contents: dict[str, tuple[int | str, ...]] | None = None,
                 primitive: bool = False) -> None:
        self.bb = bb
        self.dims = dims
        self.graph = graph
        self.consts = consts
        self.contents = contents or {}  # known (symbolic) contents of small integer tensors
        self.primitive = primitive  # lowering the body of a primitive (fused) function
        # The builder whose module receives TE kernels (`kernels.call_te`): the outermost one,
        # so a primitive function's call_tir names a PrimFunc of the module being built.
        self.kernels = bb
        self.values: dict[str, relax.Expr] = {}
        # The blocked layout (targets/blocked.py): the plan, the values held as [N, C/b, H, W, b]
        # (their block), plain copies made of them and blocked copies made of plain values.
        self.plan: Any = None
        self.blocked: dict[str, int] = {}
        self.plain: dict[str, relax.Expr] = {}
        self.blocked_copies: dict[str, relax.Expr] = {}
        self.types: dict[str, TensorType] = {v.name: v.type for v in graph.inputs}
        self.types.update((c.name, c.type) for c in graph.consts)
        for node in graph.nodes:
            self.types.update((v.name, v.type) for v in node.outputs)

    def dim(self, d: int | str) -> Any:
        """An int, or the tir expression of a symbolic dim (vars shared by name)."""
        if isinstance(d, int):
            return d
        if d in self.dims:
            return self.dims[d]
        try:  # expressions of known symbols: 3*N, N+1, (N)//2
            return dim_values.evaluate(d, self.dims)
        except Exception:
            raise LoweringError(
                f"dimension {d!r} depends on run-time data; ember's code generator needs every dim bound by an input's shape"
            ) from None

    def shape(self, t: TensorType) -> list[Any]:
        """A tensor type's shape as Relax shape values."""
        return [self.dim(d) for d in t.shape]

    def emit(self, expr: relax.Expr) -> relax.Expr:
        """Bind an expression in the current dataflow block."""
        return self.bb.emit(expr)

    def const_of(self, name: str) -> np.ndarray | None:
        """Constant data of a value, if it is a constant."""
        return self.consts.get(name) if name else None

    def arg(self, name: str) -> relax.Expr | None:
        """The relax value of an IR value (constants materialize on first use)."""
        if not name:
            return None
        if name not in self.values:
            if name in self.consts:
                self.values[name] = const(self.consts[name])
            else:
                raise LoweringError(f"value {name!r} is used before it is computed")
        if name in self.blocked:  # a plain reader of a blocked value: convert once
            if name not in self.plain:
                from ember.targets import blocked

                b, t = self.blocked[name], self.types[name]
                if self.primitive:
                    self.plain[name] = self.emit(blocked.to_plain(self.values[name], self.shape(t), b))
                else:
                    self.plain[name] = blocked.plain_kernel(self, self.values[name], t, b)
            return self.plain[name]
        return self.values[name]


Emitter = Callable[[Lowering, Node, list[Any]], Sequence[relax.Expr]]


class ScriptText:
    """Indented TVMScript lines of a hand-written kernel: `w(depth, line)`, then `w.source()`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def source(self) -> str:
        return "\n".join(self.lines) + "\n"


def const(array: np.ndarray) -> relax.Expr:
    """A Relax constant holding `array`."""
    data = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if data.dtype == np.bool_:
        return relax.const(data, "bool")
    return relax.const(data, TVM_DTYPE[dtypes.from_numpy(data.dtype)])


def take(x: relax.Expr, indices: relax.Expr, axis: int | None, dtype: str, in_range: bool = False) -> relax.Expr:
    """R.take that never reads outside `x` (`dtype`: x's ember dtype). TVM's default mode ("fast") reads past the tensor
    for an out-of-range index (a crash or garbage) and warns at every build. Indices that come
    from the model's inputs: float data gives NaN for an out-of-range index, so that the output
    shows it (onnxruntime refuses such an index), other data the nearest valid one. Indices
    ember made in range (`in_range`): clipped, which never changes them."""
    mode = "nan" if not in_range and dtypes.is_float(dtype) else "clip"
    return R.take(x, indices, axis=axis, mode=mode)


def scalar(value: float, like: TensorType) -> relax.Expr:
    """A 0-d constant of `like`'s dtype."""
    return relax.const(np.array(value, dtype=like.np_dtype), TVM_DTYPE[like.dtype])


def out_type(node: Node, i: int = 0) -> TensorType:
    """The inferred type of output `i`."""
    return node.outputs[i].type


def in_type(lw: Lowering, node: Node, i: int) -> TensorType:
    """The type of input `i`."""
    return lw.types[node.inputs[i]]


def has_input(node: Node, i: int) -> bool:
    """Whether optional input `i` is given."""
    return len(node.inputs) > i and bool(node.inputs[i])


def static_ints(lw: Lowering, node: Node, i: int, what: str) -> list[int]:
    """Contents of a constant integer input; LoweringError when it is computed at run time."""
    data = lw.const_of(node.inputs[i]) if has_input(node, i) else None
    if data is None:
        raise LoweringError(f"node {node.name!r} ({node.op}): {what} must be constant for code generation (run fold_constants)")
    return [int(v) for v in np.asarray(data).reshape(-1)]


def static_scalar(lw: Lowering, node: Node, i: int, what: str) -> Any:
    """The single element of a constant input (a Python number)."""
    data = lw.const_of(node.inputs[i]) if has_input(node, i) else None
    if data is None or np.asarray(data).size != 1:
        raise LoweringError(f"node {node.name!r} ({node.op}): {what} must be a constant scalar for code generation")
    return np.asarray(data).reshape(-1)[0].item()


def refuse(node: Node, what: str) -> LoweringError:
    """The error for a form of an op the code generator does not handle."""
    return LoweringError(f"node {node.name!r} ({node.op}): {what} is not lowered yet")


# Ops whose operands broadcast against each other (numpy's rules).
BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "Where", "PRelu", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
})


def broadcast_refined(t: TensorType, out: TensorType, matmul: bool = False) -> TensorType | None:
    """An operand's type with each dim that is written differently from the broadcast
    output's (neither being 1: inference took them to be equal) replaced by the output's;
    None when every dim already agrees. `matmul`: a MatMul operand, whose batch dims (all
    but the last two) broadcast against the output's."""
    if matmul:
        if t.rank < 3 or out.rank < 3:
            return None
        batch = broadcast_refined(TensorType(t.dtype, t.shape[:-2]), TensorType(out.dtype, out.shape[:-2]))
        return None if batch is None else TensorType(t.dtype, batch.shape + t.shape[-2:])
    if t.rank == 0 or t.rank > out.rank:
        return None
    ends = out.shape[out.rank - t.rank:]
    if all(d == o or d == 1 or o == 1 for d, o in zip(t.shape, ends)):
        return None
    return TensorType(t.dtype, tuple(d if d == 1 or o == 1 else o for d, o in zip(t.shape, ends)))


def clamped_read(x: Any, shape: list) -> Any:
    """A TE kernel: x read at `shape`, each index clamped into x (x's dims or ones where they
    differ only in how they are written; a dim of 1 broadcasts)."""
    from tvm import te

    def at(*i: Any) -> Any:
        return x[tuple(j if d == 1 else tirx.min(j, d - 1) for j, d in zip(i, x.shape))]

    return te.compute(shape, at, name="aligned")


def unary(fn: Callable[[relax.Expr], relax.Expr]) -> Emitter:
    """An emitter applying a one-operand Relax op."""
    return lambda lw, node, a: [fn(a[0])]


def binary(fn: Callable[[relax.Expr, relax.Expr], relax.Expr]) -> Emitter:
    """An emitter applying a two-operand Relax op."""
    return lambda lw, node, a: [fn(a[0], a[1])]


def axis_of(node: Node, rank: int, name: str = "axis") -> int:
    """A node's (possibly negative) axis attribute made non-negative."""
    return int(node.attrs[name]) % max(rank, 1)
