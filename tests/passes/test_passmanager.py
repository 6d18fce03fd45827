"""The pass manager: dumps, printing, the summary, --check-each naming a deliberately broken
pass, PassError and reproducers, pipeline text and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph, Node, Value
from ember.compiler.parser import parse_graph
from ember.compiler.passmanager import DivergenceError, PassError, run_pipeline, summary_table
from ember.compiler.pipeline import DEFAULT_PIPELINE, parse_pipeline, pipeline_text
from ember.compiler.printer import HEADER_PREFIX
from ember.compiler.rewrite import PassResult
from ember.passes import DESCRIPTIONS, PASSES

MODEL = """graph main(%x: f32[N,3,8,8]) -> (%y: f32[N,4]) {
  const %k: f32[4,1,1] = [0.5, 1.0, 1.5, 2.0]
  const %w: f32[4,3,1,1] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  %i: f32[N,3,8,8] = Identity(%x)
  %c: f32[N,4,8,8] = Conv(%i, %w)
  %s: f32[N,4,8,8] = Mul(%c, %k)
  %r: f32[N,4,8,8] = Relu(%s)
  %p: f32[N,4,1,1] = GlobalAveragePool(%r)
  %y: f32[N,4] = Flatten(%p)
  return %y
}
"""


def test_default_pipeline_dumps_records_and_summary(tmp_path: Path) -> None:
    result = run_pipeline(parse_graph(MODEL), DEFAULT_PIPELINE, dump_dir=tmp_path, check_each=True)
    assert [n.op for n in result.graph.nodes] == ["Fused", "GlobalAveragePool", "Flatten"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "000_input.ir" and names[1] == "001_inline_branches.ir" and len(names) == len(DEFAULT_PIPELINE) + 1
    header = (tmp_path / "006_fold_batchnorm.ir").read_text().splitlines()[0]
    assert header == f"{HEADER_PREFIX} | pipeline: {pipeline_text(DEFAULT_PIPELINE)} | after: fold_batchnorm (6) | stats: mul_folded=1"
    assert [r.name for r in result.records] == list(DEFAULT_PIPELINE)
    fold = result.records[5]
    assert (fold.nodes_before, fold.nodes_after, fold.stats) == (5, 4, {"mul_folded": 1})
    assert (fold.param_bytes_before, fold.param_bytes_after) == (4 * 12 + 4 * 4, 4 * 12)  # %k went into %w
    table = summary_table(result.records)
    assert "fold_batchnorm" in table and "mul_folded=1" in table and table.splitlines()[-1].startswith("total")


def test_print_after_options() -> None:
    printed: list[str] = []
    run_pipeline(parse_graph(MODEL), ("simplify", "dce", "fuse"), print_after=("dce",), echo=printed.append)
    assert len(printed) == 1 and "after: dce (2)" in printed[0]
    printed.clear()
    run_pipeline(parse_graph(MODEL), ("simplify", "dce", "fuse"), print_after_change=True, echo=printed.append)
    assert [p.splitlines()[0].split("after: ")[1].split(" |")[0] for p in printed] == ["simplify (1)", "fuse (3)"]
    printed.clear()
    run_pipeline(parse_graph(MODEL), ("simplify", "dce"), print_after_all=True, echo=printed.append)
    assert len(printed) == 2
    with pytest.raises(EmberError, match="unknown pass"):
        run_pipeline(parse_graph(MODEL), ("dce",), print_after=("dcee",))


def _flip_sign(graph: Graph) -> PassResult:
    """A deliberately broken pass: Relu(x) becomes Neg(Relu(x)), written as a sign flip."""
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op == "Relu":
            inner = node.outputs[0].name + "_unflipped"
            nodes.append(Node("Relu", node.inputs, (Value(inner, node.outputs[0].type),), {}))
            nodes.append(Node("Neg", (inner,), node.outputs, {}))
        else:
            nodes.append(node)
    return PassResult(graph.replace(nodes=tuple(nodes)), {"flipped": 1})


def test_check_each_names_the_broken_pass_and_the_first_tensor(tmp_path: Path) -> None:
    registry = {**PASSES, "flip_sign": _flip_sign}
    pipeline = ("simplify", "fold_batchnorm", "flip_sign", "fuse")
    with pytest.raises(DivergenceError, match=r"--check-each: pass 'flip_sign' \(after simplify,fold_batchnorm\) "
                                              r"changed tensor 'r' by [0-9.e+-]+ \(tolerance") as caught:
        run_pipeline(parse_graph(MODEL), pipeline, check_each=True, registry=registry, reproducer_dir=tmp_path / "r")
    assert "reproducer in" in str(caught.value)
    assert (tmp_path / "r" / "pipeline.txt").read_text() == "flip_sign,fuse\n"
    feeds = dict(np.load(tmp_path / "r" / "feeds.npz"))
    assert list(feeds) == ["x"]
    # The same pipeline without the broken pass is clean, with given sample inputs too.
    run_pipeline(parse_graph(MODEL), ("simplify", "fold_batchnorm", "fuse"), check_each={"x": feeds["x"]})


def test_a_failing_pass_is_named_with_the_ones_before_it_and_leaves_a_reproducer(tmp_path: Path) -> None:
    def broken(graph: Graph) -> PassResult:
        return PassResult(graph.replace(outputs=("nowhere",)), {"broke": 1})

    registry = {**PASSES, "broken": broken}
    with pytest.raises(PassError, match=r"pass 'broken' failed after simplify,dce: .*output 'nowhere' is never defined"):
        run_pipeline(parse_graph(MODEL), ("simplify", "dce", "broken", "fuse"), registry=registry,
                     reproducer_dir=tmp_path / "repro")
    repro = tmp_path / "repro"
    assert (repro / "pipeline.txt").read_text() == "broken,fuse\n"
    tensors = dict(np.load(repro / "tensors.npz"))
    replayed = parse_graph((repro / "input.ir").read_text(), tensors)
    assert [n.op for n in replayed.nodes] == ["Conv", "Mul", "Relu", "GlobalAveragePool", "Flatten"]
    assert "pipeline: broken,fuse" in (repro / "input.ir").read_text().splitlines()[0]

    def crashing(graph: Graph) -> PassResult:
        raise ZeroDivisionError("oops")

    with pytest.raises(PassError, match=r"pass 'crashing' crashed after nothing: ZeroDivisionError: oops"):
        run_pipeline(parse_graph(MODEL), ("crashing",), registry={**PASSES, "crashing": crashing})


def test_pipeline_text_and_validation() -> None:
    assert parse_pipeline(" fold_constants, dce ,fuse,") == ("fold_constants", "dce", "fuse")
    assert parse_pipeline(pipeline_text(DEFAULT_PIPELINE)) == DEFAULT_PIPELINE
    with pytest.raises(EmberError, match=r"unknown pass\(es\) \['nope'\]; registered passes: fold_constants, dce, cse"):
        run_pipeline(parse_graph(MODEL), ("dce", "nope"))
    assert set(DESCRIPTIONS) == set(PASSES) and set(DEFAULT_PIPELINE) <= set(PASSES)
