"""Properties of every pass on every test graph (the Before texts of the per-pass tests and the
golden models): the result verifies, prints and parses back to the same text, keeps the
input's numbers, and a second run has empty stats. The default pipeline keeps the numbers
after every pass (--check-each)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import test_dce_cse
import test_fold_batchnorm
import test_fold_constants
import test_fuse
import test_fuse_composites
import test_simplify
from passcheck import assert_same_numbers

from ember.compiler.ir import Graph
from ember.compiler.parser import graph_tensors, parse_graph
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE
from ember.compiler.printer import print_graph
from ember.compiler.verify import verify
from ember.passes import PASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import golden


def _texts() -> dict[str, str]:
    found: dict[str, str] = {}
    for module in (test_simplify, test_fold_batchnorm, test_fuse_composites, test_fuse):
        for table in ("CASES", "NO_CHANGE"):
            for key, value in getattr(module, table, {}).items():
                found[f"{module.__name__[5:]}.{key}"] = value if isinstance(value, str) else value[0]
    for module in (test_dce_cse, test_fold_constants):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, str) and value.startswith("graph main"):
                found[f"{module.__name__[5:]}.{name}"] = value
    # Dropout in training mode is random: no numeric comparison possible.
    found.pop("simplify.dropout_in_training_mode")
    return found


TEXTS = _texts()


def _graphs() -> dict[str, Graph]:
    graphs = {name: parse_graph(text) for name, text in TEXTS.items()}
    graphs.update(golden.models())
    return graphs


@pytest.fixture(scope="module")
def graphs() -> dict[str, Graph]:
    return _graphs()


@pytest.mark.parametrize("pass_name", sorted(PASSES))
def test_every_pass_on_every_graph(pass_name: str, graphs: dict[str, Graph], rng: np.random.Generator) -> None:
    assert len(graphs) >= 30
    for name, graph in graphs.items():
        result = PASSES[pass_name](graph)
        verify(result.graph)
        printed = print_graph(result.graph)
        assert print_graph(parse_graph(printed, graph_tensors(result.graph))) == printed, name
        assert PASSES[pass_name](result.graph).stats == {}, f"{pass_name} on {name} is not idempotent"
        if result.stats:
            assert_same_numbers(graph, result.graph, rng, {"N": 2})
        else:
            assert result.graph == graph, f"{pass_name} changed {name} with empty stats"


def test_default_pipeline_keeps_the_numbers_after_every_pass(graphs: dict[str, Graph]) -> None:
    for name, graph in graphs.items():
        result = run_pipeline(graph, DEFAULT_PIPELINE, check_each=True)
        for pass_name in PASSES:
            assert PASSES[pass_name](result.graph).stats == {}, f"{pass_name} still changes {name} after the pipeline"
