"""In-place epilogues (targets/inplace.py): a kernel ending in `+ r` writes over `r` only when
nothing reads `r` afterwards, and results never change. Each model is checked against the
interpreter on fresh random inputs at two batch sizes, twice in a row (a clobbered tensor
would show on the second run or in a later reader)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from codegen_helpers import compare, onnx_model, run_vm
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.targets import build, resolve_target
from ember.targets.build import kernel_launches

F = T.FLOAT
C, H = 16, 8


def _conv(name: str, x: str, rng: np.random.Generator, k: int = 3) -> tuple[list, dict]:
    w = (rng.standard_normal((C, C, k, k)) * 0.2).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}_w"], [name], pads=[k // 2] * 4)
    return [node], {f"{name}_w": w}


def _model(tail: list, rng: np.random.Generator, extra_inputs: tuple = ()) -> object:
    """x -> r0 = relu(conv0(x)) -> r1 = relu(conv1(r0)) -> c2 = conv2(r1) (1x1), then `tail`."""
    nodes, inits = [], {}
    for name, src, k in (("c0", "x", 3), ("c1", "r0", 3), ("c2", "r1", 1)):
        more, w = _conv(name, src, rng, k)
        nodes += more
        inits.update(w)
        if name != "c2":
            nodes.append(helper.make_node("Relu", [name], ["r" + name[1]]))
    nodes += tail
    return onnx_model(nodes, [("x", F, ["B", C, H, H]), *extra_inputs], inits)


def _inplace(kernel: str) -> bool:
    return re.search(r"_inplace\d*$", kernel) is not None


def _check(model: object, rng: np.random.Generator) -> dict[str, str]:
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"))
    for batch in (1, 3):
        feeds = interp.random_feeds(graph, rng, {"B": batch})
        want = interp.run(graph, feeds)
        for run in range(2):
            compare(run_vm(built, graph, feeds), want, f"batch {batch}, run {run}")
    main = built.module["main"].script()
    assert kernel_launches(built.module) == main.count("R.call_tir(") + main.count("R.call_tir_inplace(")
    assert ("R.call_tir_inplace(" in main) == any(_inplace(name) for name in built.rules)
    return built.rules


def test_last_use_of_a_residual_is_written_over(rng: np.random.Generator) -> None:
    # relu(conv2(r1) + r0): the add is r0's last reader, so the kernel writes into r0
    model = _model([helper.make_node("Add", ["c2", "r0"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], rng)
    rules = _check(model, rng)
    assert any(_inplace(name) and "add" in name for name in rules), rules


@pytest.mark.parametrize("later", ["reader after", "graph output"])
def test_a_residual_someone_still_needs_is_not_written_over(rng: np.random.Generator, later: str) -> None:
    tail = [helper.make_node("Add", ["c2", "r0"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    if later == "reader after":  # a later kernel (a concat of the add's result) reads r0 again
        tail.append(helper.make_node("Concat", ["y", "r0"], ["cat"], axis=1))
    else:  # r0 itself is returned
        tail.append(helper.make_node("Identity", ["r0"], ["r0_out"]))
    model = _model(tail, rng)
    rules = _check(model, rng)
    assert not any(_inplace(name) and "add" in name for name in rules), rules


TRANSPOSED = """
@T.prim_func(s_tir=True)
def main(a: T.Buffer((4, 4), "float32"), r: T.Buffer((4, 4), "float32"), o: T.Buffer((4, 4), "float32")):
    for i, j in T.grid(4, 4):
        with T.sblock("add"):
            vi, vj = T.axis.remap("SS", [i, j])
            o[vi, vj] = a[vi, vj] + r[READ]
"""


@pytest.mark.parametrize(("read", "ok"), [("vi, vj", True), ("vj, vi", False), ("vi, 0", False)])
def test_the_residual_must_be_read_where_the_output_is_written(read: str, ok: bool) -> None:
    import tvm

    from ember.targets.inplace import _elementwise_reader

    func = tvm.script.from_source(TRANSPOSED.replace("READ", read))
    assert _elementwise_reader(func, func.params[1], func.params[2]) is ok


@pytest.mark.parametrize("view", [None, "R.reshape", "reshape kernel"])
def test_a_view_of_the_residual_read_later_keeps_it(view: str | None) -> None:
    # main: a = x + 1; [v = reshape(a)]; b = relu(x * 2 + a) (a's last direct reader); [c = v * 3]
    import tvm
    from tvm import relax, te, topi

    from ember.targets.inplace import use_inplace

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 4], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            a = builder.emit_te(lambda t: te.compute(t.shape, lambda i, j: t[i, j] + 1.0), x)
            if view == "R.reshape":
                v = builder.emit(relax.op.reshape(a, [16]))
            elif view == "reshape kernel":
                v = builder.emit_te(topi.reshape, a, [16])
            b = builder.emit_te(lambda t, r: te.compute(t.shape, lambda i, j: te.max(t[i, j] * 2.0 + r[i, j], 0.0)), x, a)
            if view is None:
                out = builder.emit_output(b)
            else:
                c = builder.emit_te(lambda t: te.compute(t.shape, lambda i: t[i] * 3.0), v)
                out = builder.emit_output(relax.Tuple([b, c]))
        builder.emit_func_output(out)
    mod, made = use_inplace(builder.get())
    assert ("R.call_tir_inplace(" in mod["main"].script()) == (view is None)
    assert bool(made) == (view is None)
    if view is None:  # and the in-place module computes the same
        target = tvm.target.Target("llvm")
        vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        xs = np.arange(16, dtype=np.float32).reshape(4, 4) - 8
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(xs)).numpy(), np.maximum(xs * 2 + xs + 1, 0))
