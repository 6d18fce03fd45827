"""Operators: control flow (If, Loop, Scan) with subgraph bodies.

Bodies are `Graph` attributes that may read values of the enclosing graph. Inference retypes
a body with the types its inputs really have here (ember's types win over the ones the ONNX
file declares). Dims that differ between the branches of an If, or that change from one
iteration to the next, become run-time symbols (`ctx.fresh`); so does the iteration count
of a Loop that may stop early.

Optional and Sequence values (Optional, OptionalHasElement, OptionalGetElement, Sequence*)
are out of scope: ember's IR holds tensors only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler.dims import Dim
from ember.compiler.ir import Graph, TensorType
from ember.compiler.ops.common import norm_axis
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
Types = Sequence["TensorType | None"]


def _merge(a: TensorType, b: TensorType, ctx: InferCtx, output: int, what: str) -> TensorType:
    """One type for two that must agree in dtype and rank; dims that differ become symbols."""
    if a.dtype != b.dtype:
        raise ValueError(f"{what}: {a} vs {b} differ in dtype")
    if a.rank != b.rank:
        raise ValueError(f"{what}: {a} vs {b} differ in rank (ember needs a fixed rank)")
    return TensorType(a.dtype, tuple(x if x == y else ctx.fresh(output, i) for i, (x, y) in enumerate(zip(a.shape, b.shape))))


def _scalar_flag(t: TensorType | None, dtype: str, what: str) -> None:
    """A trip count / condition must be one element of `dtype` (rank 0, or [1] from old exporters)."""
    if t is None:
        return
    if t.dtype != dtype:
        raise ValueError(f"{what} must be {dtype}, got {t}")
    if t.rank > 1 or (t.rank == 1 and isinstance(t.shape[0], int) and t.shape[0] != 1):
        raise ValueError(f"{what} must hold one element, got {t}")


def _known_flag(ctx: InferCtx, index: int) -> int | None:
    """The value of a one-element int/bool input when inference knows it, else None."""
    if index >= len(ctx.types) or ctx.types[index] is None:
        return None
    known = ctx.const_or_value(index)
    if known is None or len(known) != 1 or not isinstance(known[0], int):
        return None
    return known[0]


def _first(array: np.ndarray) -> Any:
    """The single element of a scalar or [1] tensor."""
    return np.asarray(array).reshape(-1)[0]


def _body(attrs: Attrs, key: str = "body") -> Graph:
    body = attrs[key]
    if not isinstance(body, Graph):
        raise ValueError(f"attribute {key} must be a graph")
    return body


# --- If -----------------------------------------------------------------------------------------
def _if_infer(ctx: InferCtx) -> list[TensorType]:
    _scalar_flag(ctx.types[0], "bool", "If condition")
    taken = _known_flag(ctx, 0)
    if taken is not None:  # a condition known at compile time: only the taken branch is typed
        branch = "then_branch" if taken else "else_branch"
        out_types = ctx.infer_subgraph(branch)
        for i, contents in enumerate(ctx.subgraph_values.get(branch, [])):
            if contents is not None:  # shape arithmetic flows through the taken branch
                ctx.out_values[i] = contents
        return out_types
    then_t = ctx.infer_subgraph("then_branch")
    else_t = ctx.infer_subgraph("else_branch")
    if len(then_t) != len(else_t):
        raise ValueError(f"then_branch returns {len(then_t)} values, else_branch {len(else_t)}")
    then_v, else_v = ctx.subgraph_values.get("then_branch", []), ctx.subgraph_values.get("else_branch", [])
    for i, (a, b) in enumerate(zip(then_v, else_v)):
        if a is not None and a == b:  # both branches compute the same (symbolic) contents
            ctx.out_values[i] = a
    return [_merge(a, b, ctx, i, f"output {i} of the branches") for i, (a, b) in enumerate(zip(then_t, else_t))]


def _if_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    cond = inputs[0]
    assert cond is not None
    branch = _body(attrs, "then_branch") if bool(_first(cond)) else _body(attrs, "else_branch")
    return ctx.run_graph(branch, {})


# --- Loop ---------------------------------------------------------------------------------------
def _declared_rank1(body: Graph, index: int) -> bool:
    """True when the body declares its iteration number / condition as [1] (old exporters)."""
    return len(body.inputs) > index and body.inputs[index].type.rank == 1


def _loop_counters(body: Graph) -> list[TensorType]:
    """Types of the body's first two inputs: iteration number i64 and condition bool."""
    return [
        TensorType("i64", (1,) if _declared_rank1(body, 0) else ()),
        TensorType("bool", (1,) if _declared_rank1(body, 1) else ()),
    ]


def _generalize(ctx: InferCtx, attr: str, inputs: list[TensorType], first: int, count: int,
                outs_at: int, out_index: int) -> tuple[list[TensorType], list[TensorType]]:
    """Retype a body whose state inputs inputs[first:first+count] come back as outputs
    outs[outs_at:...]; a state whose shape changes across iterations gets fresh dims.

    Returns (body input types, body output types) for the generalized state.
    """
    outs = ctx.infer_subgraph(attr, inputs)
    general = list(inputs)
    changed = False
    for k in range(count):
        before, after = inputs[first + k], outs[outs_at + k]
        merged = _merge(before, after, ctx, out_index + k, f"loop-carried value {k} (initial vs body output)")
        if merged != before:
            general[first + k] = merged
            changed = True
    if changed:  # one more pass types the body for any iteration (symbols where shapes change)
        outs = ctx.infer_subgraph(attr, general)
        for k in range(count):
            _merge(general[first + k], outs[outs_at + k], ctx, out_index + k, f"loop-carried value {k}")
    return general, outs


def _never_stops(body: Graph) -> bool:
    """True when the body's condition output is its condition input or a constant true."""
    if len(body.inputs) < 2 or not body.outputs:
        return False
    out = body.outputs[0]
    while True:
        if out == body.inputs[1].name:
            return True
        const = body.const(out)
        if const is not None:
            return bool(const.data.size == 1 and const.data.reshape(-1)[0])
        producer = body.producer(out)
        if producer is None or producer.op != "Identity":
            return False
        out = producer.inputs[0]


def _trip_count(ctx: InferCtx, body: Graph) -> Dim | None:
    """Iterations a Loop runs when inference can tell (trip count M, no early exit)."""
    has_m = len(ctx.types) > 0 and ctx.types[0] is not None
    has_cond = len(ctx.types) > 1 and ctx.types[1] is not None
    cond = _known_flag(ctx, 1) if has_cond else 1
    if cond == 0:
        return 0
    if cond is None or not has_m or not _never_stops(body):
        return None
    known = ctx.const_or_value(0)
    if known is None or len(known) != 1:
        return None
    m = known[0]
    if isinstance(m, int):
        return max(m, 0)
    return m if "-" not in m else None  # a symbolic count built from dims by + * // is >= 0


def _loop_infer(ctx: InferCtx) -> list[TensorType]:
    body = _body(ctx.attrs)
    m_t = ctx.types[0] if len(ctx.types) > 0 else None
    cond_t = ctx.types[1] if len(ctx.types) > 1 else None
    _scalar_flag(m_t, "i64", "Loop trip count M")
    _scalar_flag(cond_t, "bool", "Loop condition")
    carried: list[TensorType] = []
    for k, t in enumerate(ctx.types[2:]):
        if t is None:
            raise ValueError(f"loop-carried initial value {k} is missing")
        carried.append(t)
    n = len(carried)
    if len(body.inputs) != 2 + n:
        raise ValueError(f"the body takes {len(body.inputs)} inputs; a Loop with {n} carried values needs {2 + n}")
    if len(body.outputs) < 1 + n:
        raise ValueError(f"the body returns {len(body.outputs)} values; a Loop with {n} carried values needs >= {1 + n}")
    general, outs = _generalize(ctx, "body", _loop_counters(body) + carried, 2, n, 1, 0)
    if outs[0].dtype != "bool" or outs[0].rank > 1:
        raise ValueError(f"the body's condition output must be bool[] or bool[1], got {outs[0]}")
    results = general[2:]  # final carried values: the initial types, symbols where they change
    count = _trip_count(ctx, body)
    for j, scan_t in enumerate(outs[1 + n :]):
        leading = count if count is not None else ctx.fresh(n + j, 0)
        results.append(TensorType(scan_t.dtype, (leading,) + scan_t.shape))
    return results


def _loop_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    body = _body(attrs)
    trip = int(_first(inputs[0])) if len(inputs) > 0 and inputs[0] is not None else None
    cond = bool(_first(inputs[1])) if len(inputs) > 1 and inputs[1] is not None else True
    carried = [np.asarray(v) for v in inputs[2:]]
    n = len(carried)
    names = [v.name for v in body.inputs]
    i_shape, cond_shape = (tuple(t.shape) for t in _loop_counters(body))
    scans: list[list[np.ndarray]] = []
    i = 0
    while (trip is None or i < trip) and cond:
        feeds = {names[0]: np.array(i, dtype=np.int64).reshape(i_shape), names[1]: np.array(cond).reshape(cond_shape)}
        feeds.update(zip(names[2:], carried))
        outs = ctx.run_graph(body, feeds)
        cond = bool(_first(outs[0]))
        carried = [np.asarray(v) for v in outs[1 : 1 + n]]
        scans.append([np.asarray(v) for v in outs[1 + n :]])
        i += 1
    results = list(carried)
    for j, out_t in enumerate(ctx.out_types[n:]):
        if scans:
            results.append(np.stack([s[j] for s in scans]))
        else:  # no iteration: [0, *per-iteration shape], unknown dims 0 (as onnxruntime does)
            shape = tuple(d if isinstance(d, int) else 0 for d in out_t.shape[1:])
            results.append(np.zeros((0,) + shape, dtype=out_t.np_dtype))
    return results


def _loop_body_inputs(attr: str, types: list[TensorType | None], node: Any) -> list[TensorType] | None:
    """Types for a Loop body's undeclared inputs: i64 iteration, bool condition, carried values."""
    if any(t is None for t in types[2:]):
        return None
    return [TensorType("i64", ()), TensorType("bool", ())] + list(types[2:])  # type: ignore[arg-type]


# --- Scan (opset 9+ form) -------------------------------------------------------------------------
def _scan_list(attrs: Attrs, key: str, count: int, what: str) -> list[int]:
    given = attrs.get(key)
    if given is None:
        return [0] * count
    if len(given) != count:
        raise ValueError(f"{key} has {len(given)} entries for {count} {what}")
    if "directions" in key and any(d not in (0, 1) for d in given):
        raise ValueError(f"{key} entries must be 0 (forward) or 1 (reverse), got {list(given)}")
    return list(given)


def _scan_split(types: Types, attrs: Attrs) -> tuple[int, int]:
    """(number of states, number of scan inputs) of a Scan node."""
    m = attrs["num_scan_inputs"]
    if not 1 <= m <= len(types):
        raise ValueError(f"num_scan_inputs={m} must be in 1..{len(types)} (the number of inputs)")
    return len(types) - m, m


def _scan_slices(types: Types, attrs: Attrs) -> tuple[list[TensorType], Dim | None]:
    """Per-iteration types of the scan inputs (the scanned axis removed) and the sequence length."""
    n, m = _scan_split(types, attrs)
    axes = _scan_list(attrs, "scan_input_axes", m, "scan inputs")
    slices: list[TensorType] = []
    seq: Dim | None = None
    for j, (t, axis) in enumerate(zip(types[n:], axes)):
        if t is None:
            raise ValueError(f"scan input {j} is missing")
        a = norm_axis(axis, t.rank)
        length = t.shape[a]
        if isinstance(seq, int) and isinstance(length, int) and seq != length:
            raise ValueError(f"scan inputs differ in sequence length: {seq} vs {length}")
        if seq is None or (isinstance(length, int) and not isinstance(seq, int)):
            seq = length
        slices.append(TensorType(t.dtype, t.shape[:a] + t.shape[a + 1 :]))
    return slices, seq


def _scan_infer(ctx: InferCtx) -> list[TensorType]:
    body = _body(ctx.attrs)
    n, m = _scan_split(ctx.types, ctx.attrs)
    states: list[TensorType] = []
    for k, t in enumerate(ctx.types[:n]):
        if t is None:
            raise ValueError(f"initial state {k} is missing")
        states.append(t)
    slices, seq = _scan_slices(ctx.types, ctx.attrs)
    if len(body.inputs) != n + m:
        raise ValueError(f"the body takes {len(body.inputs)} inputs; {n} states + {m} scan inputs need {n + m}")
    if len(body.outputs) < n:
        raise ValueError(f"the body returns {len(body.outputs)} values, fewer than the {n} states")
    general, outs = _generalize(ctx, "body", states + slices, 0, n, 0, 0)
    k = len(outs) - n
    out_axes = _scan_list(ctx.attrs, "scan_output_axes", k, "scan outputs")
    _scan_list(ctx.attrs, "scan_output_directions", k, "scan outputs")
    _scan_list(ctx.attrs, "scan_input_directions", m, "scan inputs")
    results = general[:n]
    for j, (t, axis) in enumerate(zip(outs[n:], out_axes)):
        a = norm_axis(axis, t.rank + 1)
        results.append(TensorType(t.dtype, t.shape[:a] + (seq if seq is not None else ctx.fresh(n + j, a),) + t.shape[a:]))
    return results


def _scan_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    body = _body(attrs)
    arrays = [np.asarray(v) for v in inputs]
    n, m = _scan_split(arrays, attrs)  # type: ignore[arg-type]
    states, scans = arrays[:n], arrays[n:]
    in_axes = [norm_axis(a, s.ndim) for a, s in zip(_scan_list(attrs, "scan_input_axes", m, ""), scans)]
    in_dirs = _scan_list(attrs, "scan_input_directions", m, "")
    seq = scans[0].shape[in_axes[0]]
    if any(s.shape[a] != seq for s, a in zip(scans, in_axes)):
        raise ValueError(f"scan inputs differ in sequence length: {[s.shape[a] for s, a in zip(scans, in_axes)]}")
    names = [v.name for v in body.inputs]
    collected: list[list[np.ndarray]] = []
    for t in range(seq):
        feeds = dict(zip(names[:n], states))
        for j, (s, a, d) in enumerate(zip(scans, in_axes, in_dirs)):
            feeds[names[n + j]] = np.take(s, seq - 1 - t if d else t, axis=a)
        outs = ctx.run_graph(body, feeds)
        states = [np.asarray(v) for v in outs[:n]]
        collected.append([np.asarray(v) for v in outs[n:]])
    k = len(body.outputs) - n
    out_axes = _scan_list(attrs, "scan_output_axes", k, "")
    out_dirs = _scan_list(attrs, "scan_output_directions", k, "")
    results = list(states)
    for j in range(k):
        out_t = ctx.out_types[n + j]
        axis = norm_axis(out_axes[j], out_t.rank)
        items = [c[j] for c in collected][:: -1 if out_dirs[j] else 1]
        if items:
            results.append(np.moveaxis(np.stack(items), 0, axis))
        else:  # an empty sequence: the declared shape with the scanned axis (and unknowns) 0
            shape = tuple(d if isinstance(d, int) and i != axis else 0 for i, d in enumerate(out_t.shape))
            results.append(np.zeros(shape, dtype=out_t.np_dtype))
    return results


def _scan_body_inputs(attr: str, types: list[TensorType | None], node: Any) -> list[TensorType] | None:
    """Types for a Scan body's undeclared inputs: the states, then one slice of each scan input."""
    attrs = {a.name: (a.i if a.type == a.INT else tuple(a.ints)) for a in node.attribute if a.name != "body"}
    try:
        slices, _ = _scan_slices(types, attrs)
    except (KeyError, ValueError):  # inference reports the problem with the node's name
        return None
    states = types[: len(types) - len(slices)]
    if any(t is None for t in states):
        return None
    return list(states) + slices  # type: ignore[arg-type]


OPS: list[OpDef] = [
    OpDef(name="If", infer=_if_infer, ref=_if_ref, outputs=(1, -1),
          attrs={"then_branch": AttrSpec("graph"), "else_branch": AttrSpec("graph")}),
    OpDef(name="Loop", infer=_loop_infer, ref=_loop_ref, inputs=(0, -1), outputs=(1, -1),
          attrs={"body": AttrSpec("graph")}, subgraph_inputs=_loop_body_inputs),
    OpDef(name="Scan", infer=_scan_infer, ref=_scan_ref, inputs=(1, -1), outputs=(1, -1),
          attrs={"body": AttrSpec("graph"), "num_scan_inputs": AttrSpec("int"),
                 "scan_input_axes": AttrSpec("ints", None), "scan_input_directions": AttrSpec("ints", None),
                 "scan_output_axes": AttrSpec("ints", None), "scan_output_directions": AttrSpec("ints", None)},
          subgraph_inputs=_scan_body_inputs),
]
