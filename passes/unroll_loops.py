"""unroll_loops: a Loop or Scan whose iteration count is known at compile time becomes that many
copies of its body.

    %v_final, %scan = Loop(%M, %cond, %v0) {body: (i, c, v) -> (c_out, v_next, s)}
        (M known, cond absent or known true, the body never stops early)
        ->  body copy 0 (i = 0, v = %v0), body copy 1 (i = 1, v = v_next of copy 0), ...
            %v_final = Identity(v_next of the last copy)
            %scan = Concat(Unsqueeze(s of copy 0), Unsqueeze(s of copy 1), ...)
    %s_final, %y = Scan(%s0, %x) {body: (s, x_t) -> (s_next, y_t)}   (x's scanned axis static)
        ->  body copies reading Gather(%x, t, axis) in the scan direction; %y the Concat of
            Unsqueeze(y_t) along its output axis, in its output direction

Scripted exporters write `for i in range(3)` as a Loop, converters write fixed-length
recurrences as a Scan; ember's code generator compiles plain dataflow, and the copies fold,
fuse and schedule like any other nodes.

Preconditions: the count is a constant or contents inference knows, at most MAX_TRIPS, and the
copies hold at most MAX_NODES nodes; the body's condition output is its condition input or a
constant true (`control._never_stops`). The copies are retyped by the op table.

A Scan it cannot unroll (a run-time length, or too long) becomes the Loop over its sequence
(`_scan_as_loop`), which the code generator compiles as a run-time loop (emit_control.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ember.compiler.infer import retype, tracked_values
from ember.compiler.ir import Const, Graph, Namer, Node, TensorType, Value
from ember.compiler.ops.control import _never_stops, _scan_list
from ember.compiler.rewrite import PassResult, Rejection, count, new_node_typed, rename_uses
from ember.passes.inline_branches import inline_branches

MAX_TRIPS = 256
MAX_NODES = 4096


def _known_int(graph: Graph, name: str, known: dict) -> int | None:
    """The single integer (or bool) a value holds when the compile knows it."""
    if not name:
        return None
    const = graph.const(name)
    if const is not None:
        return int(const.data.reshape(-1)[0]) if const.data.size == 1 else None
    contents = known.get(name)
    if contents is not None and len(contents) == 1 and isinstance(contents[0], int):
        return contents[0]
    return None


class _Unroller:
    """Stages the copies of one body: nodes, constants and fresh names."""

    def __init__(self, namer: Namer) -> None:
        self.namer = namer
        self.nodes: list[Node] = []
        self.consts: list[Const] = []
        self.scans_as_loops = 0

    def const(self, hint: str, data: np.ndarray) -> str:
        name = self.namer(hint)
        self.consts.append(Const(name, data))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str | Value, **attrs: object) -> str:
        out = hint if isinstance(hint, Value) else Value(self.namer(hint), _PLACEHOLDER)
        self.nodes.append(new_node_typed(op, tuple(inputs), out, attrs, [None] * len(inputs)))  # (defaults explicit)
        return out.name

    def copy(self, body: Graph, feeds: dict[str, str], tag: str) -> list[str]:
        """One copy of the body reading `feeds` for its inputs; the names of its outputs."""
        renames = dict(feeds)
        for c in body.consts:
            renames[c.name] = self.const(f"{c.name}_{tag}", c.data)
        for n in body.nodes:
            for v in n.outputs:
                renames[v.name] = self.namer(f"{v.name}_{tag}")
        renamed = rename_uses(body, renames, outputs=True)
        for n in renamed.nodes:
            outs = tuple(Value(renames[v.name], v.type, v.quant) for v in n.outputs)
            self.nodes.append(Node(n.op, n.inputs, outs, n.attrs))
        return list(renamed.outputs)


_PLACEHOLDER = TensorType("f32", ())  # until the copies are retyped


def _stack(u: _Unroller, parts: list[str], axis: int, out: Value) -> None:
    """out = the parts, each given a new axis `axis`, concatenated along it."""
    axes = u.const(f"{out.name}_axis", np.array([axis], np.int64))
    pieces = [u.node("Unsqueeze", [p, axes], f"{p}_slice") for p in parts]
    u.node("Concat", pieces, out, axis=axis)


def _unroll_loop(graph: Graph, node: Node, known: dict, u: _Unroller) -> str | None:
    """The copies of a Loop, or why not."""
    body: Graph = node.attrs["body"]
    trips = _known_int(graph, node.inputs[0], known) if node.inputs else None
    if trips is None:
        return "the trip count is computed at run time"
    if len(node.inputs) > 1 and node.inputs[1]:
        cond = _known_int(graph, node.inputs[1], known)
        if cond is None:
            return "the initial condition is computed at run time"
        if not cond:
            trips = 0
    if not _never_stops(body):
        return "the body's condition can stop the loop early"
    trips = max(trips, 0)
    n = len(node.inputs) - 2
    scans = len(node.outputs) - n
    if trips == 0 and scans:
        return "no iteration: its scan outputs would be empty"
    if trips > MAX_TRIPS or trips * len(body.nodes) > MAX_NODES:
        return f"{trips} iterations of {len(body.nodes)} nodes are more than unrolling allows"
    carried = list(node.inputs[2:])
    collected: list[list[str]] = [[] for _ in range(scans)]
    i_rank1, c_rank1 = (body.inputs[k].type.rank == 1 for k in (0, 1))
    true = u.const(f"{node.name}_true", np.array([True] if c_rank1 else True))
    for i in range(trips):
        step = u.const(f"{node.name}_i{i}", np.array([i] if i_rank1 else i, np.int64))
        feeds = {body.inputs[0].name: step, body.inputs[1].name: true}
        feeds.update((v.name, c) for v, c in zip(body.inputs[2:], carried))
        outs = u.copy(body, feeds, f"{node.name}_it{i}")
        carried = outs[1:1 + n]
        for j in range(scans):
            collected[j].append(outs[1 + n + j])
    for value, final in zip(node.outputs[:n], carried):
        u.node("Identity", [final], value)
    for value, parts in zip(node.outputs[n:], collected):
        _stack(u, parts, 0, value)
    return None


def _unroll_scan(graph: Graph, node: Node, known: dict, u: _Unroller) -> str | None:
    """The copies of a Scan, or why not."""
    body: Graph = node.attrs["body"]
    m = node.attrs["num_scan_inputs"]
    n = len(node.inputs) - m
    types = [graph.value(name).type for name in node.inputs]
    in_axes = [a % types[n + j].rank for j, a in enumerate(_scan_list(node.attrs, "scan_input_axes", m, "scan inputs"))]
    in_dirs = _scan_list(node.attrs, "scan_input_directions", m, "scan inputs")
    k = len(node.outputs) - n
    out_dirs = _scan_list(node.attrs, "scan_output_directions", k, "scan outputs")
    out_axes = _scan_list(node.attrs, "scan_output_axes", k, "scan outputs")
    length = types[n].shape[in_axes[0]]
    if not isinstance(length, int) or length > MAX_TRIPS or length * len(body.nodes) > MAX_NODES:
        return _scan_as_loop(node, in_axes, in_dirs, out_axes, out_dirs, u)
    if length == 0:
        return "an empty sequence"
    states = list(node.inputs[:n])
    collected: list[list[str]] = [[] for _ in range(k)]
    for t in range(length):
        feeds = {v.name: s for v, s in zip(body.inputs[:n], states)}
        for j in range(m):
            at = length - 1 - t if in_dirs[j] else t
            index = u.const(f"{node.name}_t{at}", np.array(at, np.int64))
            feeds[body.inputs[n + j].name] = u.node("Gather", [node.inputs[n + j], index], f"{node.inputs[n + j]}_t{at}",
                                                    axis=in_axes[j])
        outs = u.copy(body, feeds, f"{node.name}_it{t}")
        states = outs[:n]
        for j in range(k):
            collected[j].append(outs[n + j])
    for value, final in zip(node.outputs[:n], states):
        u.node("Identity", [final], value)
    for j, (value, parts) in enumerate(zip(node.outputs[n:], collected)):
        rank = value.type.rank
        _stack(u, parts[::-1] if out_dirs[j] else parts, out_axes[j] % rank, value)
    return None


def _scan_as_loop(node: Node, in_axes: list[int], in_dirs: list[int], out_axes: list[int], out_dirs: list[int],
                  u: _Unroller) -> None:
    """A Scan too long to unroll (or of a run-time length) as the Loop over its sequence that
    the code generator compiles: the body reads each scanned input's slice (Gather at the
    iteration, or at length - 1 - iteration backwards); the per-step outputs, stacked on axis
    0 by the Loop, are moved to their output axis and reversed where the Scan says."""
    body: Graph = node.attrs["body"]
    m = node.attrs["num_scan_inputs"]
    n = len(node.inputs) - m
    first = node.inputs[n]
    shape = u.node("Shape", [first], f"{node.name}_shape")
    axis = u.const(f"{node.name}_axis", np.array(in_axes[0], np.int64))
    length = u.node("Gather", [shape, axis], f"{node.name}_length", axis=0)
    one = u.const(f"{node.name}_one", np.array(1, np.int64))
    last = u.node("Sub", [length, one], f"{node.name}_last") if any(in_dirs) else ""
    step = Value(u.namer(f"{node.name}_step"), TensorType("i64", ()))
    cond = Value(u.namer(f"{node.name}_cond"), TensorType("bool", ()))
    inner = _Unroller(u.namer)
    for j in range(m):
        back = Value(u.namer(f"{node.name}_back{j}"), TensorType("i64", ()))
        at = inner.node("Sub", [last, step.name], back) if in_dirs[j] else step.name
        inner.node("Gather", [node.inputs[n + j], at], body.inputs[n + j], axis=in_axes[j])
    cond_out = inner.node("Identity", [cond.name], Value(u.namer(f"{node.name}_cond_out"), TensorType("bool", ())))
    loop_body = Graph((step, cond, *body.inputs[:n]), tuple(inner.nodes) + body.nodes,
                      (cond_out, *body.outputs), consts=body.consts, name=f"{body.name}_loop")
    k = len(node.outputs) - n
    stacked = [Value(u.namer(f"{v.name}_steps"), _PLACEHOLDER) for v in node.outputs[n:]]
    u.nodes.append(Node("Loop", (length, "", *node.inputs[:n]), (*node.outputs[:n], *stacked), {"body": loop_body}))
    for j in range(k):
        value, rank = node.outputs[n + j], node.outputs[n + j].type.rank
        a = out_axes[j] % rank
        current = stacked[j].name
        if a:
            perm = [*range(1, a + 1), 0, *range(a + 1, rank)]
            current = u.node("Transpose", [current], value if not out_dirs[j] else f"{value.name}_moved", perm=perm)
        if out_dirs[j]:
            consts = [u.const(f"{value.name}_{what}", np.array([v], np.int64))
                      for what, v in (("start", -1), ("end", -2**31), ("axes", a), ("steps", -1))]
            u.node("Slice", [current, *consts], value)
        elif not a:
            u.node("Identity", [current], value)
    u.scans_as_loops += 1
    return None


UNROLLERS: dict[str, Callable[[Graph, Node, dict, _Unroller], str | None]] = {"Loop": _unroll_loop, "Scan": _unroll_scan}


def unroll_loops(graph: Graph) -> PassResult:
    """Every Loop and Scan of the enclosing graph with a known count unrolled, then the Ifs the
    copies decide (`if i == 0` in a body) inlined; again for loops nested in the copies."""
    stats: dict[str, int] = {}
    for _ in range(MAX_TRIPS):
        step = _unroll_round(graph)
        if not step.stats:
            return PassResult(graph, stats, step.rejections)
        for key, n in step.stats.items():
            count(stats, key, n)
        graph = step.graph
        inlined = inline_branches(graph)
        for key, n in inlined.stats.items():
            count(stats, key, n)
        graph = inlined.graph
    return PassResult(graph, stats)


def _unroll_round(graph: Graph) -> PassResult:
    """One pass over the enclosing graph's Loops and Scans."""
    if not any(n.op in UNROLLERS for n in graph.nodes):
        return PassResult(graph)
    known = tracked_values(graph)
    u = _Unroller(Namer(graph))
    stats: dict[str, int] = {}
    rejections: list[Rejection] = []
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op not in UNROLLERS:
            nodes.append(node)
            continue
        u.nodes = []
        why = UNROLLERS[node.op](graph, node, known, u)
        if why is not None:
            rejections.append(Rejection("unroll_loops", node.name, node.op, why))
            nodes.append(node)
            continue
        nodes += u.nodes
        if u.scans_as_loops:
            count(stats, "scans_as_loops")
            u.scans_as_loops = 0
        else:
            count(stats, f"{node.op.lower()}s_unrolled")
    if not stats:
        return PassResult(graph, {}, rejections)
    unrolled = graph.replace(nodes=tuple(nodes), consts=graph.consts + tuple(u.consts))
    return PassResult(retype(unrolled), stats, rejections)
