"""Every zoo model imports, prints/parses back identically, verifies, and the reference
interpreter matches onnxruntime (graph optimizations off) on fresh random inputs.

Slow: generating the zoo needs the `zoo` extra (torch, transformers) and a few minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnxruntime

from ember.compiler import interp
from ember.compiler.importer import import_model
from ember.compiler.parser import graph_tensors, parse_graph
from ember.compiler.printer import print_graph
from ember.compiler.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

# Float32 models: the interpreter and onnxruntime accumulate in different orders.
RTOL, ATOL = 1e-3, 1e-4

ZOO = ["digits_cnn", "digits_cnn_dyn", "resnet18", "resnet50", "mobilenetv2", "vit_small", "minilm", "gpt2_small"]


def _fresh_feeds(graph, sample: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """New random inputs shaped like the sample; integer inputs (token ids, masks) keep the
    sample's value range so they stay valid for the model."""
    feeds = {}
    for value in graph.inputs:
        ref = sample[value.name]
        if ref.dtype.kind in "iu":
            lo, hi = int(ref.min()), int(ref.max())
            feeds[value.name] = rng.integers(lo, hi + 1, size=ref.shape).astype(ref.dtype) if hi > lo else ref.copy()
        else:
            feeds[value.name] = rng.standard_normal(ref.shape).astype(ref.dtype)
    return feeds


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_imports_and_matches_onnxruntime(name: str, rng: np.random.Generator) -> None:
    import zoo

    path = Path(zoo.ensure(name))
    graph = import_model(path)
    verify(graph)
    text = print_graph(graph)
    assert print_graph(parse_graph(text, graph_tensors(graph))) == text
    sample = dict(np.load(path.with_suffix(".inputs.npz")))
    for feeds in (sample, _fresh_feeds(graph, sample, rng)):
        got = interp.run(graph, feeds)
        want = run_onnxruntime(onnx.load(str(path)), feeds)
        for out in graph.outputs:
            np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL, err_msg=f"{name}:{out}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_default_pipeline_keeps_zoo_outputs(name: str) -> None:
    """Optimized graph vs input graph (interpreter), and exported ONNX vs onnxruntime."""
    import zoo

    from ember.compiler.exporter import to_onnx
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE

    path = Path(zoo.ensure(name))
    graph = import_model(path)
    optimized = run_pipeline(graph, DEFAULT_PIPELINE).graph
    feeds = dict(np.load(path.with_suffix(".inputs.npz")))
    want = interp.run(graph, feeds)
    got = interp.run(optimized, feeds)
    exported = run_onnxruntime(to_onnx(optimized), feeds)
    for out in graph.outputs:
        np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL, err_msg=f"{name}:{out} (interpreter)")
        np.testing.assert_allclose(exported[out], want[out], rtol=RTOL, atol=ATOL, err_msg=f"{name}:{out} (exported ONNX)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_dyn", "resnet18", "mobilenetv2", "minilm"])
def test_zoo_artifact_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    """Compile to an artifact and compare with onnxruntime on the zoo's sample."""
    import zoo

    from ember.compiler.driver import compile_model
    from ember.runtime import load

    path = Path(zoo.ensure(name))
    feeds = dict(np.load(path.with_suffix(".inputs.npz")))
    art = compile_model(path, tmp_path / f"{name}.ember", sample=feeds).path
    got = load(art)(**feeds)
    want = run_onnxruntime(onnx.load(str(path)), feeds)
    for out, value in want.items():
        np.testing.assert_allclose(got[out], value, rtol=RTOL, atol=ATOL, err_msg=f"{name}:{out}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_zoo_cnn_with_dynamic_image_size_matches_onnxruntime(name: str, tmp_path: Path, rng: np.random.Generator) -> None:
    """The CNN with its input's height and width made symbolic (how detection and OCR backbones
    are exported): compiled from the 224 x 224 sample, right at that size and at another one.
    (ResNet-18's residual kernels over ((H+1)//2+1)//2 once failed the build.)"""
    import zoo

    from ember.compiler.driver import compile_model
    from ember.runtime import load

    model = zoo.with_dynamic_image(name)
    path = tmp_path / f"{name}_dyn.onnx"
    onnx.save(model, str(path))
    name_in = model.graph.input[0].name
    sample = {name_in: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    art = load(compile_model(path, tmp_path / f"{name}_dyn.ember", sample=sample).path)
    for shape in ((1, 3, 224, 224), (1, 3, 160, 200)):
        feeds = {name_in: rng.standard_normal(shape).astype(np.float32)}
        got, want = art(**feeds), run_onnxruntime(model, feeds)
        for out, value in want.items():
            np.testing.assert_allclose(got[out], value, rtol=RTOL, atol=ATOL, err_msg=f"{name} {shape}:{out}")
