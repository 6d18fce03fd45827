"""Operators: control flow (If, Loop, Scan) with subgraph bodies.

Bodies are `Graph` attributes that may read values of the enclosing graph. Output dims that
differ between branches or iterations become symbols (`ctx.fresh`).
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


def _merge(a: TensorType, b: TensorType, ctx: InferCtx, output: int) -> TensorType:
    """One type for two that must agree in dtype and rank; differing dims become symbols."""
    if a.dtype != b.dtype:
        raise ValueError(f"output {output}: {a} vs {b} differ in dtype")
    if a.rank != b.rank:
        raise ValueError(f"output {output}: {a} vs {b} differ in rank (ember needs a fixed rank)")
    return TensorType(a.dtype, tuple(x if x == y else ctx.fresh(output, i) for i, (x, y) in enumerate(zip(a.shape, b.shape))))


# --- If -----------------------------------------------------------------------------------------
def _if_infer(ctx: InferCtx) -> list[TensorType]:
    then_t = ctx.infer_subgraph("then_branch")
    else_t = ctx.infer_subgraph("else_branch")
    if len(then_t) != len(else_t):
        raise ValueError(f"branches return {len(then_t)} and {len(else_t)} values")
    return [_merge(a, b, ctx, i) for i, (a, b) in enumerate(zip(then_t, else_t))]


def _if_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    cond = inputs[0]
    assert cond is not None
    branch = attrs["then_branch"] if bool(np.asarray(cond).reshape(-1)[0]) else attrs["else_branch"]
    return ctx.run_graph(branch, {})


# --- Loop ---------------------------------------------------------------------------------------
def _loop_infer(ctx: InferCtx) -> list[TensorType]:
    body: Graph = ctx.attrs["body"]
    carried = [t for t in ctx.types[2:]]
    if any(t is None for t in carried):
        raise ValueError("loop-carried initial values must be given")
    first: list[TensorType] = [TensorType("i64", ()), TensorType("bool", ())] + carried  # type: ignore[list-item]
    # The body's declared cond input may be i64[]/bool[1] in old exporters: keep its rank.
    if len(body.inputs) >= 2 and body.inputs[1].type.rank == 1:
        first[1] = TensorType("bool", (1,))
    outs = ctx.infer_subgraph("body", first)
    n = len(carried)
    general = list(first)
    changed = False
    for k in range(n):
        if outs[1 + k].shape != carried[k].shape:  # type: ignore[union-attr]
            general[2 + k] = _merge(carried[k], outs[1 + k], ctx, k)  # type: ignore[arg-type]
            changed = True
    if changed:  # a value whose shape changes across iterations: retype with symbols
        outs = ctx.infer_subgraph("body", general)
    trip = ctx.const_or_value(0) if ctx.types[0] is not None else None
    cond_known = ctx.types[1] is None or (ctx.consts[1] is not None and bool(np.asarray(ctx.consts[1]).reshape(-1)[0]))
    has_break = not cond_known or _body_cond_varies(body)
    count: Dim = trip[0] if trip is not None and not has_break and isinstance(trip[0], int) else ctx.fresh(n, 0)
    results = [general[2 + k] if changed else outs[1 + k] for k in range(n)]
    for scan_t in outs[1 + n :]:
        results.append(TensorType(scan_t.dtype, (count,) + scan_t.shape))
    return results


def _body_cond_varies(body: Graph) -> bool:
    """True unless the body's condition output is just its condition input passed through."""
    if len(body.inputs) < 2:
        return True
    out = body.outputs[0]
    if out == body.inputs[1].name:
        return False
    producer = body.producer(out)
    return not (producer is not None and producer.op == "Identity" and producer.inputs[0] == body.inputs[1].name)


def _loop_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    body: Graph = attrs["body"]
    trip = int(np.asarray(inputs[0]).reshape(-1)[0]) if len(inputs) > 0 and inputs[0] is not None else None
    cond = bool(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else True
    carried = [np.asarray(v) for v in inputs[2:]]
    n = len(carried)
    names = [v.name for v in body.inputs]
    cond_shape = body.inputs[1].type.shape if len(body.inputs) > 1 else ()
    scans: list[list[np.ndarray]] = []
    i = 0
    while (trip is None or i < trip) and cond:
        feeds = {names[0]: np.array(i, dtype=np.int64), names[1]: np.array(cond).reshape(cond_shape)}
        feeds.update(zip(names[2:], carried))
        outs = ctx.run_graph(body, feeds)
        cond = bool(np.asarray(outs[0]).reshape(-1)[0])
        carried = [np.asarray(v) for v in outs[1 : 1 + n]]
        scans.append([np.asarray(v) for v in outs[1 + n :]])
        i += 1
    results = list(carried)
    for j, out_t in enumerate(ctx.out_types[n:]):
        if scans:
            results.append(np.stack([s[j] for s in scans]))
        else:
            shape = tuple(d if isinstance(d, int) else 0 for d in out_t.shape)
            results.append(np.zeros((0,) + shape[1:], dtype=out_t.np_dtype))
    return results


# --- Scan ---------------------------------------------------------------------------------------
def _scan_axes(attrs: Attrs, key: str, count: int) -> list[int]:
    given = attrs.get(key)
    return list(given) if given is not None else [0] * count


def _scan_infer(ctx: InferCtx) -> list[TensorType]:
    m = ctx.attrs["num_scan_inputs"]
    types = [t for t in ctx.types]
    n = len(types) - m
    states, scans = types[:n], types[n:]
    in_axes = _scan_axes(ctx.attrs, "scan_input_axes", m)
    slices = []
    seq: Dim | None = None
    for t, axis in zip(scans, in_axes):
        assert t is not None
        a = norm_axis(axis, t.rank)
        seq = t.shape[a] if seq is None or not isinstance(seq, int) else seq
        slices.append(TensorType(t.dtype, t.shape[:a] + t.shape[a + 1 :]))
    outs = ctx.infer_subgraph("body", states + slices)  # type: ignore[operator]
    k = len(outs) - n
    out_axes = _scan_axes(ctx.attrs, "scan_output_axes", k)
    results = list(outs[:n])
    for t, axis in zip(outs[n:], out_axes):
        a = norm_axis(axis, t.rank + 1)
        results.append(TensorType(t.dtype, t.shape[:a] + (seq if seq is not None else ctx.fresh(len(results), a),) + t.shape[a:]))
    return results


def _scan_ref(inputs: Arrays, attrs: Attrs, ctx: EvalCtx) -> list[np.ndarray]:
    body: Graph = attrs["body"]
    m = attrs["num_scan_inputs"]
    arrays = [np.asarray(v) for v in inputs]
    n = len(arrays) - m
    states, scans = arrays[:n], arrays[n:]
    in_axes = [norm_axis(a, s.ndim) for a, s in zip(_scan_axes(attrs, "scan_input_axes", m), scans)]
    in_dirs = _scan_axes(attrs, "scan_input_directions", m)
    seq = scans[0].shape[in_axes[0]] if scans else 0
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
    out_axes = _scan_axes(attrs, "scan_output_axes", k)
    out_dirs = _scan_axes(attrs, "scan_output_directions", k)
    results = list(states)
    for j in range(k):
        items = [c[j] for c in collected]
        if out_dirs[j]:
            items = items[::-1]
        stacked = np.stack(items) if items else np.zeros((0,), dtype=ctx.out_types[n + j].np_dtype)
        results.append(np.moveaxis(stacked, 0, norm_axis(out_axes[j], stacked.ndim)))
    return results


def _loop_body_inputs(attr: str, types: list[TensorType | None], node: Any) -> list[TensorType] | None:
    if any(t is None for t in types[2:]):
        return None
    return [TensorType("i64", ()), TensorType("bool", ())] + list(types[2:])  # type: ignore[arg-type]


def _scan_body_inputs(attr: str, types: list[TensorType | None], node: Any) -> list[TensorType] | None:
    m = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
    n = len(types) - m
    if any(t is None for t in types):
        return None
    axes = next((list(a.ints) for a in node.attribute if a.name == "scan_input_axes"), [0] * m)
    slices = []
    for t, axis in zip(types[n:], axes):
        a = norm_axis(axis, t.rank)  # type: ignore[union-attr]
        slices.append(TensorType(t.dtype, t.shape[:a] + t.shape[a + 1 :]))  # type: ignore[union-attr]
    return list(types[:n]) + slices  # type: ignore[arg-type]


OPS: list[OpDef] = [
    OpDef(name="If", infer=_if_infer, ref=_if_ref, outputs=(1, -1),
          attrs={"then_branch": AttrSpec("graph"), "else_branch": AttrSpec("graph")}),
    OpDef(name="Loop", infer=_loop_infer, ref=_loop_ref, inputs=(2, -1), outputs=(1, -1),
          attrs={"body": AttrSpec("graph")}, subgraph_inputs=_loop_body_inputs),
    OpDef(name="Scan", infer=_scan_infer, ref=_scan_ref, inputs=(1, -1), outputs=(1, -1),
          attrs={"body": AttrSpec("graph"), "num_scan_inputs": AttrSpec("int"),
                 "scan_input_axes": AttrSpec("ints", None), "scan_input_directions": AttrSpec("ints", None),
                 "scan_output_axes": AttrSpec("ints", None), "scan_output_directions": AttrSpec("ints", None)},
          subgraph_inputs=_scan_body_inputs),
]
