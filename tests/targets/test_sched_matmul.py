"""The matmul schedule rule on random shapes: odd sizes, rows that no register tile divides,
columns that no vector width divides (padded einsum), symbolic batch and sequence, activation
and weight operands, B read transposed, fused epilogues. Each case must (a) be scheduled by the
rule and (b) match ember's interpreter on fresh random inputs at several symbolic sizes."""

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
ATOL = 2e-4  # fp32 sums of up to ~800 products reassociated by the register tile


def node(op: str, inputs: list[str], output: str, **attrs: object) -> helper.NodeProto:
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def compiled(model, rng: np.random.Generator, batches):  # type: ignore[no-untyped-def]
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return check_graph(graph, rng, batches, atol=ATOL)


def matmul_rules(built) -> set[str]:  # type: ignore[no-untyped-def]
    return {kernel for kernel, rule in built.rules.items() if rule == "Matmul"}


# (rows, K, N): N a multiple of 16, of 2 only, odd and large (padded), odd and of a vector or
# more (padded: a CRNN's 37-symbol output), odd and under a vector (declined)
SHAPES = [(7, 37, 48), (1, 64, 1000), (5, 96, 26), (13, 128, 203), (6, 256, 37), (3, 19, 5)]


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_dense_with_bias_and_activation_epilogue(rng: np.random.Generator, m: int, k: int, n: int) -> None:
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "mb"), node("Relu", ["mb"], "out")]
    inits = {"w": rng.standard_normal((k, n)).astype(np.float32), "b": rng.standard_normal(n).astype(np.float32)}
    model = onnx_model(nodes, [("x", F, ["B", m, k])], inits)
    built = compiled(model, rng, [{"B": 1}, {"B": 3}])
    if n % 2 == 0 or n >= 16:
        assert matmul_rules(built), built.rules
    else:
        assert not matmul_rules(built), built.rules  # 5 columns: no vector width, nothing to pad


def test_narrow_odd_columns_over_symbolic_steps_are_padded(rng: np.random.Generator) -> None:
    """A CRNN's per-step classifier, [T, 1, 256] x [256, 37] + bias over a symbolic T: the
    weight padded to whole vectors at compile time. (The row-reduction rule took it at 5
    GFLOP/s: 0.29 ms for 80 steps, 0.02 ms padded.)"""
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "out")]
    inits = {"w": rng.standard_normal((256, 37)).astype(np.float32), "b": rng.standard_normal(37).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, ["T", 1, 256])], inits), rng, [{"T": 1}, {"T": 80}, {"T": 13}])
    assert matmul_rules(built), built.rules


def test_gemm_transposed_weight_and_symbolic_rows(rng: np.random.Generator) -> None:
    nodes = [node("Gemm", ["x", "w", "c"], "g", transB=1), node("Sigmoid", ["g"], "s"), node("Mul", ["g", "s"], "out")]
    inits = {"w": rng.standard_normal((40, 24)).astype(np.float32), "c": rng.standard_normal(40).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, ["N", 24])], inits), rng, [{"N": 1}, {"N": 6}, {"N": 9}])
    assert matmul_rules(built), built.rules


def test_batched_matmul_of_two_activations_with_transposed_b(rng: np.random.Generator) -> None:
    """Attention-shaped: Q @ K^T (B read as [j, k], packed per call) then P @ V."""
    nodes = [node("Transpose", ["k"], "kt", perm=[0, 1, 3, 2]), node("MatMul", ["q", "kt"], "s"),
             node("Mul", ["s", "scale"], "ss"), node("MatMul", ["ss", "v"], "out")]
    shape = ["B", 2, 32, 16]
    model = onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape)], {"scale": np.float32(0.25)})
    built = compiled(model, rng, [{"B": 1}, {"B": 2}])
    assert len(matmul_rules(built)) == 2, built.rules
    # A symbolic sequence length leaves Q @ K^T without a static column count: still right.
    shape = ["B", 2, "S", 16]
    model = onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape)], {"scale": np.float32(0.25)})
    compiled(model, rng, [{"B": 1, "S": 5}, {"B": 2, "S": 16}])


def test_residual_epilogue_reads_a_second_activation(rng: np.random.Generator) -> None:
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "res"], "out")]
    model = onnx_model(nodes, [("x", F, ["S", 32]), ("res", F, ["S", 64])], {"w": rng.standard_normal((32, 64)).astype(np.float32)})
    built = compiled(model, rng, [{"S": 3}, {"S": 8}])
    assert matmul_rules(built), built.rules


@pytest.mark.parametrize("rows", [7, 197])
def test_static_rows_no_tile_divides(rng: np.random.Generator, rows: int) -> None:
    """Static shapes are narrowed to int32 and the ragged last row tile is split off (ViT's 197)."""
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "out")]
    inits = {"w": rng.standard_normal((40, 64)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, [rows, 40])], inits), rng, [{}])
    assert matmul_rules(built), built.rules


def test_activation_b_with_columns_padded_to_whole_vectors(rng: np.random.Generator) -> None:
    """B an activation with 70 columns (no vector width divides them): the padded copy of B is
    made once per call, outside the micro-kernel, and the padded columns never reach the output."""
    nodes = [node("MatMul", ["x", "y"], "mm"), node("Relu", ["mm"], "out")]
    model = onnx_model(nodes, [("x", F, ["B", 9, 24]), ("y", F, ["B", 24, 70])])
    built = compiled(model, rng, [{"B": 1}, {"B": 3}])
    assert matmul_rules(built), built.rules


def test_matrix_vector_product(rng: np.random.Generator) -> None:
    """One row (a classifier's Gemm at batch 1): no row loop, weight streamed in packed vectors."""
    nodes = [node("Gemm", ["x", "w", "b"], "out", transB=1)]
    inits = {"w": rng.standard_normal((100, 72)).astype(np.float32), "b": rng.standard_normal(100).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, [1, 72])], inits), rng, [{}])
    assert matmul_rules(built), built.rules


def test_panel_groups_share_a_pass_over_large_a(rng: np.random.Generator) -> None:
    """A = 96 x 768 floats (288 KB) does not stay in L2 beside a panel's weight: two 48-column
    panels share each pass over A's rows (their packed weight, 288 KB, fits), and the results
    are those of the interpreter; a small A or a deep K keeps one panel per pass."""
    from ember.targets.sched_matmul import _panel_group

    assert _panel_group(4, 48, 768, 96, 4) == 2
    assert _panel_group(4, 48, 768, 16, 4) == 1  # A of 48 KB stays in L2
    assert _panel_group(4, 48, 3072, 96, 4) == 1  # one panel's weight is 576 KB already
    assert _panel_group(3, 48, 256, 512, 4) == 3
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "mb"), node("Relu", ["mb"], "out")]
    inits = {"w": (rng.standard_normal((768, 192)) / 28).astype(np.float32), "b": rng.standard_normal(192).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, [96, 768])], inits), rng, [{}])
    assert matmul_rules(built), built.rules


def test_symbolic_columns_attention_scores_with_a_mask(rng: np.random.Generator) -> None:
    """Q K^T + mask over a dynamic batch and sequence (an exported text model's attention
    scores): both the rows and the columns are symbolic; the Matmul rule computes a padded
    einsum (B padded per call to whole tiles, the columns copied out) instead of leaving the
    kernel to the row-reduction rule, at sequence lengths below, at and above a tile."""
    model = onnx_model(
        [node("Transpose", ["k"], "kt", perm=[0, 1, 3, 2]), node("MatMul", ["q", "kt"], "s"), node("Add", ["s", "mask"], "y")],
        [("q", T.FLOAT, ["B", 3, "S", 64]), ("k", T.FLOAT, ["B", 3, "S", 64]), ("mask", T.FLOAT, ["B", 1, 1, "S"])])
    built = compiled(model, rng, [{"B": 1, "S": 128}, {"B": 2, "S": 37}, {"B": 1, "S": 1}, {"B": 1, "S": 300}])
    assert matmul_rules(built) == {"fused_matmul_add"}


def _parallel_extents(built) -> list[str]:  # type: ignore[no-untyped-def]
    import re

    text = "\n".join(f.script() for gv, f in built.module.functions_items() if "matmul" in gv.name_hint)
    return re.findall(r"T\.parallel\(([^)]*)\)", text)


def test_row_tiles_join_a_parallel_loop_of_few_panels(rng: np.random.Generator) -> None:
    """[1200, 256] x [256, 256] (Whisper's projections over 1500 frames): A is too large to stay
    in L2, so the four 64-column panels share each pass over A's rows, which left one parallel
    iteration: the kernel ran on one thread (42% of the 2-thread peak, 2.0 -> 0.9 ms). The
    rows' 200 tiles join the panel loop."""
    nodes = [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "out")]
    inits = {"w": (rng.standard_normal((256, 256)) / 16).astype(np.float32), "b": rng.standard_normal(256).astype(np.float32)}
    built = compiled(onnx_model(nodes, [("x", F, [1, 1200, 256])], inits), rng, [{}])
    assert matmul_rules(built), built.rules
    assert _parallel_extents(built) == ["200"], _parallel_extents(built)


def test_symbolic_batch_joins_the_parallel_loop(rng: np.random.Generator) -> None:
    """A batched matmul over [B, 6] heads: the heads (and the symbolic batch) are parallel
    with the column panels; before, only the panels were, inside the serial head loops."""
    nodes = [node("MatMul", ["a", "b"], "out")]
    model = onnx_model(nodes, [("a", F, ["B", 6, 40, 32]), ("b", F, ["B", 6, 32, 64])])
    built = compiled(model, rng, [{"B": 1}, {"B": 3}])
    assert matmul_rules(built), built.rules
    extents = _parallel_extents(built)
    assert len(extents) == 1 and "B" in extents[0] and "6" in extents[0], extents
