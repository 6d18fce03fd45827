"""Helpers for code generation tests: tiny ONNX graphs of many ops, compiled once, run on
the TVM VM and compared with ember's interpreter."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import tvm
from onnx import helper
from tvm.runtime import vm as tvm_vm

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.ir import Graph, Node, Value
from ember.targets import Built, build, resolve_target

RTOL, ATOL = 1e-4, 1e-5  # f32 against the numpy reference

FeedFix = Callable[[dict[str, np.ndarray], np.random.Generator], None]


def onnx_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[tuple[str, int, Sequence[Any]]],
               inits: Mapping[str, np.ndarray] | None = None, opset: int = 23) -> onnx.ModelProto:
    """A model whose outputs are every node output no other node reads (types from onnx inference).

    Nodes may come in any order; they are sorted so that each follows the nodes it reads.
    """
    nodes = _topological(nodes)
    read = {name for n in nodes for name in n.input}
    outs = [o for n in nodes for o in n.output if o and o not in read]
    graph = helper.make_graph(
        list(nodes), "test", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs], [],
        [onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in [*inferred.graph.input, *inferred.graph.value_info]}
    for n in nodes:  # onnx leaves some function-defined ops untyped: same type as their data input
        for o in n.output:
            if o and (o not in types or not types[o].tensor_type.HasField("shape")):
                types[o] = types[n.input[0]]
    model.graph.output.extend(helper.make_value_info(name, types[name]) for name in outs)
    return model


def _topological(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    made = {o: i for i, n in enumerate(nodes) for o in n.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        if i in done:
            return
        done.add(i)
        for name in nodes[i].input:
            if name in made:
                visit(made[name])
        order.append(nodes[i])

    for i in range(len(nodes)):
        visit(i)
    return order


def run_vm(built: Built, graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a built graph on TVM's Relax VM, by output name."""
    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.asarray(feeds[v.name], order="C")) for v in graph.inputs])  # (0-d stays 0-d)
    outs = [out] if hasattr(out, "numpy") else list(out)
    return {name: o.numpy() for name, o in zip(graph.outputs, outs)}


def run_node_cases(cases: Sequence[Any]) -> Iterator[tuple[Any, Graph, dict[str, np.ndarray], dict[str, np.ndarray],
                                                          dict[str, np.ndarray]]]:
    """onnx backend node-test cases, each compiled for the CPU and run on each of its data sets:
    (case, graph, feeds, compiled outputs, onnx's expected outputs), outputs by name."""
    for case in cases:
        graph = import_proto(case.model)
        built = build(graph, resolve_target("cpu"))
        for inputs, outputs in case.data_sets:
            feeds = {v.name: x for v, x in zip(case.model.graph.input, inputs)}
            expected = {v.name: x for v, x in zip(case.model.graph.output, outputs)}
            yield case, graph, feeds, run_vm(built, graph, feeds), expected


def onnx_node_cases(*prefixes: str) -> list[Any]:
    """onnx's backend node tests whose names start with one of `prefixes`, but the `_expanded`
    ones (function bodies: other ops than the one under test)."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # (the generators' own overflow warnings)
        warnings.simplefilter("ignore")
        every = collect_testcases()
    return [c for c in every if c.name.startswith(prefixes) and not c.name.endswith("_expanded")]


def check_node_cases(cases: Sequence[Any]) -> None:
    """Each case compiled matches the interpreter and onnx's expected outputs."""
    for case, graph, feeds, got, expected in run_node_cases(cases):
        want = interp.run(graph, feeds)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=case.name)
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=case.name)


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], where: str, atol: float = ATOL) -> None:
    """Every output equal: exact for ints and bools, RTOL/ATOL for floats."""
    for name, value in want.items():
        assert got[name].shape == value.shape, f"{where}: {name}: shape {got[name].shape} != {value.shape}"
        assert got[name].dtype == value.dtype, f"{where}: {name}: dtype {got[name].dtype} != {value.dtype}"
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=atol, err_msg=f"{where}: {name}")
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=f"{where}: {name}")


def check_graph(graph: Graph, rng: np.random.Generator, batches: Sequence[Mapping[str, int]] = ({},),
                fix: FeedFix | None = None, atol: float = ATOL) -> Built:
    """Build once for the CPU; at each binding of the symbolic dims, compare with the interpreter."""
    built = build(graph, resolve_target("cpu"))
    for dims in batches:
        feeds = interp.random_feeds(graph, rng, dims)
        if fix is not None:
            fix(feeds, rng)
        compare(run_vm(built, graph, feeds), interp.run(graph, feeds), f"dims {dict(dims)}", atol)
    return built


def check_model(model: onnx.ModelProto, rng: np.random.Generator, batches: Sequence[Mapping[str, int]] = ({},),
                fix: FeedFix | None = None, atol: float = ATOL) -> Built:
    """import_proto, then `check_graph`."""
    return check_graph(import_proto(model), rng, batches, fix, atol)


def wrap_fused(graph: Graph, groups: Sequence[Sequence[str]]) -> Graph:
    """The graph with each group (output names of consecutive single-output nodes, the last one
    the group's result) replaced by one Fused node, as the fuse pass would make it."""
    nodes = list(graph.nodes)
    for k, members in enumerate(groups):
        picked = [n for n in nodes if n.outputs[0].name in members]
        inside = {n.outputs[0].name for n in picked}
        external: list[str] = []
        for n in picked:
            external += [x for x in n.inputs if x and x not in inside and x not in external]
        types = {v.name: v.type for v in graph.inputs}
        types.update((c.name, c.type) for c in graph.consts)
        types.update((v.name, v.type) for n in graph.nodes for v in n.outputs)
        params = tuple(Value(f"arg{i}", types[x]) for i, x in enumerate(external))
        rename = {x: f"arg{i}" for i, x in enumerate(external)}
        body_nodes = tuple(Node(n.op, tuple(rename.get(x, x) for x in n.inputs), n.outputs, n.attrs) for n in picked)
        body = Graph(params, body_nodes, (picked[-1].outputs[0].name,), name=f"group{k}")
        fused = Node("Fused", tuple(external), picked[-1].outputs, {"body": body, "kernel": f"group{k}"})
        at = nodes.index(picked[-1])
        nodes[at] = fused
        nodes = [n for n in nodes if n not in picked[:-1]]
    return graph.replace(nodes=tuple(nodes))
