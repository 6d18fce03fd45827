"""The row-reduction and elementwise schedule rules on random shapes: widths the vector width
divides or not, symbolic rows, broadcasts and transposes. Each case must be scheduled by the
named rule and match ember's interpreter on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from codegen_helpers import check_graph, onnx_model
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.importer import import_proto
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE

F = T.FLOAT
ATOL = 1e-5


def compiled(model, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return check_graph(graph, rng, [{"N": 1}, {"N": 5}], atol=ATOL)


@pytest.mark.parametrize("width", [64, 48, 37])
def test_layernorm(rng: np.random.Generator, width: int) -> None:
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["out"], name="out", axis=-1, epsilon=1e-5)]
    inits = {"g": rng.standard_normal(width).astype(np.float32), "b": rng.standard_normal(width).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, ["N", 7, width])], inits), rng)
    assert "RowReduce" in built.rules.values(), built.rules


@pytest.mark.parametrize("width", [32, 19])
def test_softmax_and_mean_over_the_last_axis(rng: np.random.Generator, width: int) -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="s", axis=-1),
             helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="m", keepdims=1),
             helper.make_node("Sub", ["s", "m"], ["out"], name="out")]
    built = compiled(onnx_model(nodes, [("x", F, ["N", 3, width])], {"axes": np.array([-1], np.int64)}), rng)
    assert "RowReduce" in built.rules.values(), built.rules


def test_elementwise_chain_with_broadcast_and_transpose(rng: np.random.Generator) -> None:
    nodes = [helper.make_node("Mul", ["x", "c"], ["a"], name="a"), helper.make_node("Tanh", ["a"], ["t"], name="t"),
             helper.make_node("Add", ["t", "y"], ["s"], name="s"),
             helper.make_node("Transpose", ["s"], ["out"], name="out", perm=[0, 2, 1])]
    inputs = [("x", F, ["N", 33, 64]), ("y", F, [1, 64])]
    built = compiled(onnx_model(nodes, inputs, {"c": rng.standard_normal(64).astype(np.float32)}), rng)
    assert "Elementwise" in built.rules.values(), built.rules


@pytest.mark.parametrize("perm", [[0, 2, 1, 3], [0, 2, 3, 1]])
def test_head_transposes_over_a_symbolic_batch_and_sequence(rng: np.random.Generator, perm: list[int]) -> None:
    """[B, S, heads, 64] -> [B, heads, S, 64] (static inner loop: vectorized, the symbolic outer
    loops fused and parallel) and -> [B, heads, 64, S] (symbolic innermost loop kept a loop of
    its own), with a scaled add, at sequence lengths below, at and past a vector."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t", perm=perm),
             helper.make_node("Mul", ["t", "c"], ["out"], name="out")]
    model = onnx_model(nodes, [("x", F, ["B", "S", 6, 64])], {"c": np.array(0.5, np.float32)})
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{"B": 1, "S": 128}, {"B": 2, "S": 7}, {"B": 1, "S": 17}], atol=ATOL)
    assert set(built.rules.values()) == {"Elementwise"}, built.rules


def _kernel_text(built, name_part: str) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(f.script() for gv, f in built.module.functions_items() if name_part in gv.name_hint)


@pytest.mark.parametrize("length", [300, 37, 5])
def test_instance_norm_over_a_long_ragged_or_symbolic_row_is_vectorized(rng: np.random.Generator, length: int) -> None:
    """GroupNorm in a speech encoder normalizes rows of thousands of frames, no multiple of a
    vector and often symbolic. The row's sums are lane-wise partial sums over whole vectors with
    the ragged tail split off (before, a scalar loop: 10 ms against onnxruntime's 1.9 on
    256 x 12799); at lengths past, not a multiple of, and below the vector width."""
    nodes = [helper.make_node("InstanceNormalization", ["x", "g", "b"], ["out"], name="out", epsilon=1e-5)]
    inits = {"g": rng.standard_normal(6).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32)}
    for shape, dims in (([1, 6, length], {}), ([1, 6, "T"], {"T": length})):
        graph = run_pipeline(import_proto(onnx_model(nodes, [("x", F, shape)], inits)), DEFAULT_PIPELINE).graph
        built = check_graph(graph, rng, [dims], atol=ATOL)
        assert "RowReduce" in built.rules.values(), built.rules
        text = _kernel_text(built, "instance")
        assert ("_rf" in text and "T.vectorized" in text) == (length > 32 or shape[-1] == "T"), text


@pytest.mark.parametrize("shape", [[1, 197, 384], [2, 5, 96]])
def test_layernorm_partial_sums_are_vectorized_over_their_lanes(rng: np.random.Generator, shape: list[int]) -> None:
    """Each row's sums are `lanes` partial sums, one vector of them added up per vector of the
    row: the loop over the lanes innermost and vectorized, the loop over the row's vectors
    around it. ViT's [1, 197, 384] had its loops made (lanes, vectors, row of 1), and the unit
    row loop was vectorized instead: 16 scalar sums with a stride of 16 (GPT-2's LayerNorm
    0.85 -> 0.24 ms over 13 calls once fixed)."""
    import re

    import tvm

    from ember.targets.sched_common import vector_lanes

    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["out"], name="out", axis=-1, epsilon=1e-5)]
    inits = {"g": rng.standard_normal(shape[-1]).astype(np.float32), "b": rng.standard_normal(shape[-1]).astype(np.float32)}
    graph = run_pipeline(import_proto(onnx_model(nodes, [("x", F, shape)], inits)), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{}], atol=ATOL)
    assert "RowReduce" in built.rules.values(), built.rules
    lanes = vector_lanes(tvm.target.Target(built.target.tvm_target()), "float32")
    lines = [line.strip() for line in _kernel_text(built, "layer").splitlines()]
    updates = [n for n, line in enumerate(lines) if re.search(r'sblock\("[^"]*_rf_update"\)', line)]
    assert len(updates) == 2, lines  # the sum and the sum of squares
    for n in updates:
        loop = re.fullmatch(r"for (\w+) in T\.vectorized\((?:T\.int64\()?(\d+)\)?\):", lines[n - 1])
        assert loop is not None and int(loop.group(2)) == lanes, lines[n - 1]
        assert re.search(rf"T\.axis\.spatial\({lanes}, {loop.group(1)}\)", lines[n + 1]), lines[n + 1]


def test_gelu_over_a_symbolic_innermost_axis_is_vectorized(rng: np.random.Generator) -> None:
    """[1, C, T] activations of a speech encoder: the symbolic innermost loop is split into
    whole vectors and a tail (before, scalar: GELU's erf polynomial at 3.4 ns an element)."""
    nodes = [helper.make_node("Gelu", ["x"], ["out"], name="out")]
    graph = run_pipeline(import_proto(onnx_model(nodes, [("x", F, [1, 6, "T"])], {}, opset=20)), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{"T": 300}, {"T": 7}], atol=ATOL)
    assert "Elementwise" in built.rules.values(), built.rules
    assert "T.vectorized" in _kernel_text(built, "gelu")


@pytest.mark.parametrize("length", [300, 37, 5])
def test_softmax_over_long_or_symbolic_rows_keeps_both_reductions_vectorized(rng: np.random.Generator, length: int) -> None:
    """Softmax over rows of 32+ elements (or of symbolic length) is fast_math.softmax_rows: the
    max and the exp sum each as 16 lane partials, vectorized in one loop over rows (topi's form
    left a ragged row's sum a scalar loop: 20 ms against onnxruntime's 2 on 256 x 12799)."""
    nodes = [helper.make_node("Softmax", ["x"], ["out"], name="out", axis=-1)]
    for shape, dims in (([3, length], {}), ([3, "T"], {"T": length}), (["T", length], {"T": 4})):
        if isinstance(shape[-1], int) and length < 32:
            continue  # (short static rows keep topi's softmax)
        graph = run_pipeline(import_proto(onnx_model(nodes, [("x", F, shape)], {})), DEFAULT_PIPELINE).graph
        built = check_graph(graph, rng, [dims], atol=ATOL)
        assert "RowReduce" in built.rules.values(), built.rules
        text = _kernel_text(built, "softmax")
        assert text.count("softmax_lane_partial") >= 2 and "T.vectorized" in text, text


def test_log_softmax_over_long_rows_is_written_with_lane_partials_too(rng: np.random.Generator) -> None:
    """A CTC head's log-probabilities, [T, vocab] with a symbolic T and a vocabulary of 37:
    x - max - log(sum exp), the max and sum as lane partials (fast_math.softmax_rows)."""
    nodes = [helper.make_node("LogSoftmax", ["x"], ["out"], name="out", axis=-1)]
    graph = run_pipeline(import_proto(onnx_model(nodes, [("x", F, ["T", 37])], {})), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{"T": 50}, {"T": 1}], atol=ATOL)  # (symbolic rows, a static ragged row: int64)
    assert "RowReduce" in built.rules.values(), built.rules
    assert _kernel_text(built, "softmax").count("softmax_lane_partial") >= 2


def test_every_output_of_a_split_is_vectorized_and_parallel(rng: np.random.Generator) -> None:
    """Split into three along the last axis (GPT-2's QKV): every output's loop reads its slice
    at an offset (`x[.., j + 768]`), which is contiguous: each is vectorized and parallel. (Only
    the first was: the others ran scalar on one thread, 0.47 ms a call in GPT-2 at 2 threads.)"""
    nodes = [helper.make_node("Split", ["x", "sizes"], ["q", "k", "v"], name="split", axis=-1)]
    model = onnx_model(nodes, [("x", F, [1, 128, 2304])], {"sizes": np.array([768, 768, 768], np.int64)})
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, atol=0)
    text = _kernel_text(built, "split")
    assert text.count("T.vectorized(16)") == 3 and text.count("T.parallel(") == 3, text


def test_a_concat_is_not_vectorized_across_its_inputs(rng: np.random.Generator) -> None:
    """Concat along the last axis chooses its input per element (an if_then_else of that
    axis): its reads at an offset are not taken for contiguous vectors, which would load every
    input past its bounds."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=-1),
             helper.make_node("Mul", ["c", "s"], ["out"], name="out")]
    model = onnx_model(nodes, [("a", F, [64, 256]), ("b", F, [64, 256])], {"s": np.array(2.0, np.float32)})
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, atol=0)
    text = _kernel_text(built, "concat")
    assert text and "T.vectorized" not in text, text
