"""The attention schedule rule on random shapes: head sizes that the vector width divides or
not, sequence lengths that no row block divides, float and boolean masks, causal attention and
the 3-D (packed heads) form. Each case must be scheduled by the rule and match ember's
interpreter on fresh random inputs."""

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
ATOL = 1e-4  # fast_exp and reassociated sums over up to 40 positions


def compiled(model, rng: np.random.Generator, fix=None):  # type: ignore[no-untyped-def]
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    return check_graph(graph, rng, [{"B": 1}, {"B": 2}], fix=fix, atol=ATOL)


@pytest.mark.parametrize(("heads", "seq", "dim", "mask", "causal"), [
    (2, 16, 16, None, 0), (3, 13, 8, "float", 0), (2, 37, 32, "bool", 0), (1, 9, 6, None, 1), (2, 20, 16, "float", 1),
    # key lengths padded to whole vectors (ViT's 197): with no bias, a bool mask, causal
    (1, 197, 64, None, 0), (2, 45, 16, "bool", 1), (1, 33, 8, "float", 0),
])
def test_attention_4d(rng: np.random.Generator, heads: int, seq: int, dim: int, mask: str | None, causal: int) -> None:
    shape = ["B", heads, seq, dim]
    inputs = [("q", F, shape), ("k", F, shape), ("v", F, shape)]
    names = ["q", "k", "v"]
    if mask is not None:
        inputs.append(("m", T.BOOL if mask == "bool" else F, [seq, seq]))
        names.append("m")
    nodes = [helper.make_node("Attention", names, ["out"], name="out", is_causal=causal)]
    model = onnx_model(nodes, inputs, opset=23)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        if mask == "bool":  # every row attends somewhere
            feeds["m"] = rng.random((seq, seq)) < 0.7
            feeds["m"][:, 0] = True

    built = compiled(model, rng, fix)
    assert "Attention" in built.rules.values(), built.rules


def test_attention_3d_packed_heads(rng: np.random.Generator) -> None:
    shape = ["B", 24, 4 * 16]
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["out"], name="out", q_num_heads=4, kv_num_heads=4)]
    built = compiled(onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape)], opset=23), rng)
    assert "Attention" in built.rules.values(), built.rules



def test_heads_and_symbolic_batch_are_one_parallel_loop(rng: np.random.Generator) -> None:
    """Over [B, 4] heads the batch, the heads and the query row blocks are one parallel loop.
    Before, only the row blocks were: each head forked and joined the threads again (an
    attention over [B, 12, 128, 64]: 0.327 -> 0.297 ms at 2 threads)."""
    import re

    shape = ["B", 4, 24, 16]
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["out"], name="out")]
    built = compiled(onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape)], opset=23), rng)
    text = "\n".join(f.script() for gv, f in built.module.functions_items() if "attention" in gv.name_hint)
    extents = re.findall(r"T\.parallel\(([^)]*)\)", text)
    # (the other parallel loop is K's transposed copy at the root)
    assert "B * T.int64(24" in extents, extents  # B x 4 heads x 6 blocks of 4 query rows


@pytest.mark.parametrize(("heads", "mask", "causal"), [(4, None, 0), (6, "float", 0), (4, "bool", 1), (2, "keys", 0), (8, "float", 1)])
def test_attention_over_a_symbolic_sequence(rng: np.random.Generator, heads: int, mask: str | None, causal: int) -> None:
    """A dynamic sequence length S (a text model's export): the keys, the values and the bias
    are padded in the kernel to whole key blocks (emit_nn.KEY_BLOCK; the padding's scores are
    -inf), the row blocks are split at run time into full ones without the row predicate and
    the last one, and the row buffers are folded onto one block. Right at lengths below, at and
    past a block, and for rows masked everywhere (which give 0)."""
    shape = ["B", heads, "S", 16]
    inputs = [("q", F, shape), ("k", F, shape), ("v", F, shape)]
    names = ["q", "k", "v"]
    if mask == "keys":  # an additive padding mask broadcast over heads and rows, as BERT's
        inputs.append(("m", F, ["B", 1, 1, "S"]))
        names.append("m")
    elif mask is not None:
        inputs.append(("m", T.BOOL if mask == "bool" else F, ["S", "S"]))
        names.append("m")
    nodes = [helper.make_node("Attention", names, ["out"], name="out", is_causal=causal)]
    model = onnx_model(nodes, inputs, opset=23)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        if mask == "bool":
            feeds["m"] = rng.random(feeds["m"].shape) < 0.7
            feeds["m"][:, 0] = True
        elif mask == "keys":  # the last keys masked out, and every key of the last batch row
            feeds["m"][...] = 0.0
            feeds["m"][..., -3:] = -np.inf
            feeds["m"][-1] = -np.inf

    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{"B": 1, "S": 1}, {"B": 2, "S": 7}, {"B": 1, "S": 32}, {"B": 2, "S": 45}, {"B": 1, "S": 130}],
                        fix=fix, atol=ATOL)
    assert "Attention" in built.rules.values(), built.rules
    text = "\n".join(f.script() for gv, f in built.module.functions_items() if "attention" in gv.name_hint)
    if heads >= 4:
        assert "ember_full_tiles" in text, text[:2000]


def test_counts_over_a_symbolic_sequence_are_the_samples(tmp_path: object, rng: np.random.Generator) -> None:
    """The manifest's per-kernel counts (`ember profile`) of a model whose attention pads its
    keys in a call_te kernel over a symbolic length: every kernel counted at the sample's
    dims. (Such a kernel keeps the shapes it was made with, so the counts bind each kernel's
    own; the dims of the kernels without a scalar param for them counted as 1: the projection
    below read 2 * 1 * 1 * 64 * 48 FLOPs.)"""
    import json
    from pathlib import Path

    import onnx

    from ember.compiler.driver import compile_model

    shape = ["B", 4, "S", 16]
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["a"], name="a"),
             helper.make_node("Transpose", ["a"], ["t"], name="t", perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "flat"], ["r"], name="r"), helper.make_node("MatMul", ["r", "w"], ["out"], name="out")]
    inits = {"flat": np.array([0, 0, 64], np.int64), "w": rng.standard_normal((64, 48)).astype(np.float32)}
    model = onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape)], inits, opset=23)
    path = Path(str(tmp_path)) / "m.onnx"
    onnx.save(model, str(path))
    sample = {n: rng.standard_normal((1, 4, 40, 16)).astype(np.float32) for n in "qkv"}
    art = compile_model(path, Path(str(tmp_path)) / "m.ember", sample=sample).path
    kernels = {k["name"]: k for k in json.loads((Path(art) / "manifest.json").read_text())["kernels"]}
    matmul = next(k for name, k in kernels.items() if "matmul" in name and k["rule"] == "Matmul")
    assert matmul["flops"] == 2 * 40 * 64 * 48, kernels
    attention = next(k for k in kernels.values() if k["rule"] == "Attention")
    assert attention["flops"] >= 2 * 2 * 4 * 40 * 40 * 16, kernels  # (Q K^T and P V at least)



def test_rows_masked_with_the_lowest_float_stay_uniform(rng: np.random.Generator) -> None:
    """transformers' padding mask is finfo(float32).min, not -inf: a query row masked with it
    everywhere (a left-padded batch row) is softmax's uniform row in the graph the fuser turns
    into Attention, and in onnxruntime; only rows of -inf everywhere are 0 (ONNX Attention's
    convention). Before, every row whose bias peaked below -1e30 was zeroed: an HF decoder fed
    a left-padded batch failed its compile check (logits 0.36 off)."""
    from conftest import run_onnxruntime

    shape = ["B", 2, 13, 8]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "c"], ["sc"]),
             helper.make_node("Add", ["sc", "m"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    model = onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape), ("m", F, ["B", 1, 13, 13])],
                       {"c": np.array(0.35, np.float32)}, opset=17)
    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    assert [n.op for n in graph.nodes if n.op == "Attention"] == ["Attention"]

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["m"][...] = np.where(rng.random(feeds["m"].shape) < 0.3, np.finfo(np.float32).min, 0.0)
        feeds["m"][..., 0, :] = np.finfo(np.float32).min  # the first query row masked everywhere
        want = run_onnxruntime(model, feeds)["y"]
        np.testing.assert_allclose(want[..., 0, :], np.broadcast_to(feeds["v"].mean(axis=2), want[..., 0, :].shape),
                                   rtol=1e-5, atol=1e-6)

    built = compiled(model, rng, fix)
    assert "Attention" in built.rules.values(), built.rules


def test_attention_op_rows_of_lowest_float_and_of_minus_inf(rng: np.random.Generator) -> None:
    """ONNX Attention over a symbolic sequence (its keys padded in the kernel): a row whose
    mask is the lowest float everywhere is uniform, a row of -inf everywhere is 0, as the
    interpreter (onnx's reference) has them."""
    shape = ["B", 4, "S", 16]
    nodes = [helper.make_node("Attention", ["q", "k", "v", "m"], ["out"], name="out")]
    model = onnx_model(nodes, [("q", F, shape), ("k", F, shape), ("v", F, shape), ("m", F, ["S", "S"])], opset=23)

    def fix(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        feeds["m"][...] = 0.0
        feeds["m"][0, :] = np.finfo(np.float32).min
        feeds["m"][-1, :] = -np.inf

    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = check_graph(graph, rng, [{"B": 1, "S": 5}, {"B": 2, "S": 40}], fix=fix, atol=ATOL)
    assert "Attention" in built.rules.values(), built.rules
