"""Optimized graphs exported to ONNX run in onnxruntime (Fused groups inlined, composites as
standard ops); `ember diff` and `ember explain` show what passes did."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import run_onnxruntime

from ember.compiler import interp
from ember.compiler.cli import main
from ember.compiler.exporter import export_onnx
from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import golden

ROOT = Path(__file__).resolve().parents[2]
# onnxruntime computes Conv, MatMul, LayerNormalization and Attention with its own kernels.
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("name", ["cnn_bn", "transformer_block"])
def test_exported_optimized_graph_matches_the_input_graph_in_onnxruntime(name: str, tmp_path: Path,
                                                                        rng: np.random.Generator) -> None:
    graph = import_proto(getattr(golden, name)(), where=name)
    optimized = run_pipeline(graph, DEFAULT_PIPELINE).graph
    assert any(n.op == "Fused" for n in optimized.nodes)
    path = tmp_path / "optimized.onnx"
    export_onnx(optimized, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    feeds = interp.random_feeds(graph, rng)
    want = interp.run(graph, feeds)
    got = run_onnxruntime(model, feeds)
    for out in graph.outputs:
        np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL, err_msg=out)


def test_diff_ignores_the_header_line(tmp_path: Path) -> None:
    run_pipeline(import_proto(golden.cnn_bn(), where="cnn_bn"), DEFAULT_PIPELINE, dump_dir=tmp_path)
    runner = CliRunner()
    same = runner.invoke(main, ["diff", str(tmp_path / "007_cse.ir"), str(tmp_path / "008_simplify.ir")])
    assert same.exit_code == 0 and same.output.strip() == "no difference"
    changed = runner.invoke(main, ["diff", str(tmp_path / "005_dce.ir"), str(tmp_path / "006_fold_batchnorm.ir")])
    lines = changed.output.splitlines()
    assert "-  %bn1: f32[1,8,16,16] = BatchNormalization(%conv1, %bn1.scale, %bn1.bias, %bn1.mean, %bn1.var)" in lines
    assert "+  %bn1: f32[1,8,16,16] = Conv(%input, %conv1.w_folded, %conv1.w_bias) {pads=[1,1,1,1]}" in lines
    assert not any(line.startswith(("-#", "+#")) for line in lines)


def test_explain_lists_each_rejection_with_node_and_reason() -> None:
    runner = CliRunner()
    digits = ROOT / "examples" / "digits_cnn.onnx"
    result = runner.invoke(main, ["explain", "fuse", str(digits)])
    assert result.exit_code == 0, result.output
    first, *rows = result.output.splitlines()
    assert first.startswith("fuse after inline_branches,unroll_loops,simplify,fold_constants,dce,fold_batchnorm,cse,simplify,dce,fuse_composites,"
                            "simplify,dce: groups=3")
    assert rows and all(row.startswith("  group: %") and "not added to the group of" in row for row in rows)
    result = runner.invoke(main, ["explain", "simplify", str(digits), "--after", ""])
    assert result.exit_code == 0 and result.output.startswith("simplify after nothing: no change")
    result = runner.invoke(main, ["explain", "nope", str(digits)])
    assert result.exit_code == 1 and "unknown pass(es) ['nope']" in result.output
