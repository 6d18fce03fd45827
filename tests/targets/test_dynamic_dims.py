"""Models whose image size or sequence length is symbolic, as exporters write detection and OCR
models: dims that reach a kernel only inside expressions (`(W+1)//2` after a strided conv), an
upsampled branch concatenated with a skip branch whose dims are written differently, and the
compile's own sample when a symbolic dim of 1 makes the model invalid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.driver import compile_model
from ember.compiler.errors import EmberError
from ember.runtime import load
from ember.runtime.model import RuntimeInputError

RTOL, ATOL = 1e-4, 1e-4


def _conv(name: str, x: str, ci: int, co: int, k: int, stride: int, rng: np.random.Generator, inits: dict) -> list:
    inits[f"{name}_w"] = (rng.standard_normal((co, ci, k, k)) / np.sqrt(ci * k * k)).astype(np.float32)
    inits[f"{name}_b"] = (rng.standard_normal(co) * 0.1).astype(np.float32)
    return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"], kernel_shape=[k, k],
                             strides=[stride, stride], pads=[k // 2] * 4),
            helper.make_node("Sigmoid", [f"{name}_c"], [f"{name}_s"]),
            helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [name])]  # SiLU


def detection_head(rng: np.random.Generator) -> onnx.ModelProto:
    """Strided backbone, a nearest x2 upsample of the deep branch concatenated with the skip
    branch, a 1x1 head, then the anchors' predictions flattened over the image."""
    inits: dict[str, np.ndarray] = {"scales": np.array([1, 1, 2, 2], np.float32), "shape": np.array([0, 3, 7, -1], np.int64)}
    nodes = [*_conv("a", "x", 3, 16, 3, 2, rng, inits), *_conv("b", "a", 16, 32, 3, 2, rng, inits),
             *_conv("c", "b", 32, 64, 3, 2, rng, inits),
             helper.make_node("Resize", ["c", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["up", "b"], ["cat"], axis=1)]
    inits["h_w"] = (rng.standard_normal((21, 96, 1, 1)) * 0.1).astype(np.float32)
    nodes += [helper.make_node("Conv", ["cat", "h_w"], ["head"], kernel_shape=[1, 1]),
              helper.make_node("Reshape", ["head", "shape"], ["flat"]),
              helper.make_node("Transpose", ["flat"], ["t"], perm=[0, 1, 3, 2]),
              helper.make_node("Sigmoid", ["t"], ["y"])]
    return make_model(nodes, [("x", T.FLOAT, ["N", 3, "H", "W"])], [("y", T.FLOAT, ["N", 3, "P", 7])], inits, opset=17)


def test_a_detection_head_with_a_symbolic_image_size_compiles_and_runs_at_other_sizes(tmp_path: Path,
                                                                                      rng: np.random.Generator) -> None:
    """At H = W = 1 the upsampled branch (2) and the skip branch (1) differ, so the compile
    makes its sample at 64; the artifact then runs at other sizes that are multiples of 8."""
    model = detection_head(rng)
    onnx.save(model, tmp_path / "det.onnx")
    result = compile_model(tmp_path / "det.onnx", tmp_path / "det.ember")
    assert result.manifest["kernels"], "per-kernel counts are in the manifest (scalar dim arguments included)"
    artifact = load(tmp_path / "det.ember")
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128), (1, 3, 40, 24)):
        x = rng.standard_normal(shape).astype(np.float32)
        got, want = artifact(x=x), run_onnxruntime(model, {"x": x})
        np.testing.assert_allclose(got["y"], want["y"], rtol=RTOL, atol=ATOL, err_msg=str(shape))


def test_a_model_no_generated_sample_runs_asks_for_one(tmp_path: Path, rng: np.random.Generator) -> None:
    """A reshape to a constant length (an exporter that baked the traced length in) runs at no
    generated size: one error naming --sample, and --sample with the traced size compiles."""
    inits = {"shape": np.array([1, 60, 8], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, [1, "T", 8])], [("y", T.FLOAT, [1, 60, 8])], inits)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(EmberError, match=r"generated sample: symbolic dims T at 1, the non-batch ones also at 64 and 256\); "
                                         r"give real inputs with --sample"):
        compile_model(tmp_path / "m.onnx", tmp_path / "m.ember")
    assert not (tmp_path / "m.ember").exists()
    x = rng.standard_normal((1, 60, 8)).astype(np.float32)
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample={"x": x})
    np.testing.assert_allclose(load(tmp_path / "m.ember")(x=x)["y"], np.maximum(x, 0), rtol=RTOL, atol=ATOL)


def masked_attention(mask_dims: list, heads: int = 2) -> onnx.ModelProto:
    """Attention over a sequence `S` with an additive mask whose dims an exporter named on their
    own (`mask: [MB, 1, 1, M]`, torch's dynamic_axes given as lists): the graph is only valid
    with MB == B and M == S."""
    inits = {"scale": np.array(0.25, np.float32)}
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["scaled"]),
             helper.make_node("Add", ["mask", "scaled"], ["biased"]),  # the mask first: its names come first
             helper.make_node("Softmax", ["biased"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    qkv = [(name, T.FLOAT, ["B", heads, "S", 16]) for name in ("q", "k", "v")]
    return make_model(nodes, [*qkv, ("mask", T.FLOAT, mask_dims)], [("y", T.FLOAT, ["B", heads, "S", 16])], inits, opset=17)


@pytest.mark.parametrize("passes", [None, "fold_constants,dce"], ids=["fused", "unfused"])
def test_a_mask_with_dims_named_apart_from_the_keys_compiles_and_runs(tmp_path: Path, rng: np.random.Generator,
                                                                     passes: str | None) -> None:
    """The importer renames the mask's dims to the queries' (the Add needs them equal); before,
    TVM refused the broadcast of two unrelated symbols ("emit_te now only supports Tensor that
    has ShapeExpr shape", or R.add left in a primitive function). Fused (one Attention kernel)
    and unfused, at lengths the compile never saw, against onnxruntime; a mask of another
    length is one clear error."""
    model = masked_attention(["MB", 1, 1, "M"])
    onnx.save(model, tmp_path / "att.onnx")

    def feeds(b: int, s: int, m: int | None = None) -> dict[str, np.ndarray]:
        out = {n: rng.standard_normal((b, 2, s, 16)).astype(np.float32) for n in ("q", "k", "v")}
        out["mask"] = np.where(rng.random((b, 1, 1, m or s)) < 0.3, -1e4, 0).astype(np.float32)
        return out

    compile_model(tmp_path / "att.onnx", tmp_path / "att.ember", sample=feeds(2, 37), passes=passes)
    artifact = load(tmp_path / "att.ember")
    assert [list(i.shape) for i in artifact.inputs] == [["B", 2, "S", 16]] * 3 + [["B", 1, 1, "S"]]
    for b, s in ((1, 5), (3, 64), (2, 130)):
        f = feeds(b, s)
        np.testing.assert_allclose(artifact(**f)["y"], run_onnxruntime(model, f)["y"], rtol=RTOL, atol=ATOL,
                                   err_msg=f"B={b} S={s}")
    with pytest.raises(RuntimeInputError, match=r"input 'mask': dim S is 9 here but 8 in another input"):
        artifact(**feeds(1, 8, 9))


def test_a_reshape_whose_minus_one_divides_by_a_product_of_dims(tmp_path: Path, rng: np.random.Generator) -> None:
    """Whisper's cross-attention as the dynamo exporter writes it: the encoder states [M, S, 64]
    viewed as [B, -1, 4, 16] with B the decoder's batch, another symbol. The -1 is
    64*M*S//(64*B); written without the parentheses it read ((64*M*S)//64)*B, 128 rows where
    there are 32, and the model's answers were wrong."""
    nodes = [helper.make_node("Shape", ["y"], ["b"], start=0, end=1),
             helper.make_node("Concat", ["b", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["out"], perm=[0, 2, 1, 3])]
    model = make_model(nodes, [("x", T.FLOAT, ["M", "S", 64]), ("y", T.INT64, ["B", "L"])],
                       [("out", T.FLOAT, ["B", 4, "n", 16])], {"rest": np.array([-1, 4, 16], np.int64)})
    onnx.save(model, tmp_path / "view.onnx")
    compile_model(tmp_path / "view.onnx", tmp_path / "view.ember",
                  sample={"x": rng.standard_normal((2, 32, 64)).astype(np.float32), "y": np.ones((2, 3), np.int64)})
    artifact = load(tmp_path / "view.ember")
    for m, s in ((2, 32), (3, 5)):
        f = {"x": rng.standard_normal((m, s, 64)).astype(np.float32), "y": np.ones((m, 2), np.int64)}
        np.testing.assert_array_equal(artifact(**f)["out"], run_onnxruntime(model, f)["out"])


@pytest.mark.parametrize("steps", [1, -1])
def test_slices_to_the_end_of_a_symbolic_dim(tmp_path: Path, rng: np.random.Generator, steps: int) -> None:
    """`offsets[:, None]` of torchvision's batched_nms: a Slice to INT64_MAX (INT64_MIN going
    backwards) over a symbolic length, then broadcast against [n, 4]. The bound was clamped to
    2**62, whose byte extent (x 4) overflowed TVM's int64 folding: the build failed."""
    big = np.iinfo(np.int64).max
    starts, ends = ([0], [big]) if steps == 1 else ([-1], [-big - 1])
    inits = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64), "axes": np.array([0], np.int64),
             "steps": np.array([steps], np.int64), "one": np.array([1], np.int64)}
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "one"], ["u"]),
             helper.make_node("Add", ["u", "b"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["n"]), ("b", T.FLOAT, ["n", 4])], [("y", T.FLOAT, ["n", 4])], inits)
    onnx.save(model, tmp_path / "s.onnx")

    def feeds(n: int) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal(n).astype(np.float32), "b": rng.standard_normal((n, 4)).astype(np.float32)}

    compile_model(tmp_path / "s.onnx", tmp_path / "s.ember", sample=feeds(7))
    artifact = load(tmp_path / "s.ember")
    for n in (1, 7, 30):
        f = feeds(n)
        np.testing.assert_array_equal(artifact(**f)["y"], run_onnxruntime(model, f)["y"])


def test_an_fpn_sum_of_a_map_and_its_upsampled_pool(tmp_path: Path, rng: np.random.Generator) -> None:
    """DBNet's / a U-Net's top-down `lateral + upsample(x, scale 2)` over a dynamic image: the
    upsampled map's height is 2*((h+1)//2), which inference takes to be h. The operand is read
    at the output's dims (an inlined kernel): before, Relax could not prove the two equal and
    the build failed ("Only call_tir ... supported in primitive function, but got: R.add")."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Add", ["x", "u"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             # the lateral conv's epilogue adds the upsampled map in the blocked layout
             helper.make_node("Conv", ["r", "w"], ["lat"]),
             helper.make_node("Add", ["lat", "u"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 16, "H", "W"])], [("y", T.FLOAT, ["N", 16, "H", "W"])],
                       {"scales": np.array([1, 1, 2, 2], np.float32),
                        "w": (rng.standard_normal((16, 16, 1, 1)) * 0.25).astype(np.float32)})
    onnx.save(model, tmp_path / "fpn.onnx")
    compile_model(tmp_path / "fpn.onnx", tmp_path / "fpn.ember",
                  sample={"x": rng.standard_normal((1, 16, 16, 16)).astype(np.float32)})
    artifact = load(tmp_path / "fpn.ember")
    for shape in ((1, 16, 16, 16), (2, 16, 24, 40)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("start", "end", "step"), [(0, np.iinfo(np.int64).max, 1), (-1, -np.iinfo(np.int64).max, -1),
                                                    (2, np.iinfo(np.int64).max, 1), (0, np.iinfo(np.int64).max, 4)])
@pytest.mark.parametrize("axis_dim", ["N", 14])
def test_a_slice_to_the_end_of_a_symbolic_axis_feeding_a_matmul(tmp_path: Path, rng: np.random.Generator,
                                                              start: int, end: int, step: int, axis_dim: int | str) -> None:
    """x[:, a:] and torch.flip (start -1, end -INT64_MAX, step -1) over a symbolic axis, then
    x @ x^T: the bound is the dim itself. A constant stand-in (2**31 - 1) left min(2**31 - 1, N)
    in the shapes after it and the matmul allocated for that length (std::bad_alloc)."""
    inits = {"s": np.array([start], np.int64), "e": np.array([end], np.int64), "ax": np.array([1], np.int64),
             "st": np.array([step], np.int64)}
    nodes = [helper.make_node("Slice", ["x", "s", "e", "ax", "st"], ["xs"]),
             helper.make_node("Transpose", ["xs"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["xs", "xt"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["B", axis_dim, 16])], [("y", T.FLOAT, ["B", "F", "F"])], inits)
    onnx.save(model, tmp_path / "s.onnx")
    compile_model(tmp_path / "s.onnx", tmp_path / "s.ember", sample={"x": rng.standard_normal((2, 14, 16)).astype(np.float32)})
    artifact = load(tmp_path / "s.ember")
    for b, n in ((2, 14), (1, 3), (3, 40)) if axis_dim == "N" else ((2, 14), (1, 14)):
        x = rng.standard_normal((b, n, 16)).astype(np.float32)
        np.testing.assert_allclose(artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"], rtol=RTOL, atol=ATOL)


def test_a_focus_layer_of_strided_slices_over_a_dynamic_image(tmp_path: Path, rng: np.random.Generator) -> None:
    """YOLOv5's Focus: x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]
    concatenated, then a conv, over a dynamic H, W (the slices' ends INT64_MAX). Each step-2
    slice's length is the dim's expression; with the 2**31 - 1 stand-in its output failed the
    next kernel's stride check at run time ("Mismatched xs.strides")."""
    big = np.iinfo(np.int64).max
    inits = {"axes": np.array([2, 3], np.int64), "steps": np.array([2, 2], np.int64), "ends": np.array([big, big], np.int64),
             "w": (rng.standard_normal((8, 12, 1, 1)) * 0.3).astype(np.float32)}
    nodes = []
    for k, (i, j) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        inits[f"s{k}"] = np.array([i, j], np.int64)
        nodes.append(helper.make_node("Slice", ["x", f"s{k}", "ends", "axes", "steps"], [f"p{k}"]))
    nodes += [helper.make_node("Concat", ["p0", "p1", "p2", "p3"], ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 3, "H", "W"])], [("y", T.FLOAT, ["N", 8, "h", "w"])], inits)
    onnx.save(model, tmp_path / "focus.onnx")
    compile_model(tmp_path / "focus.onnx", tmp_path / "focus.ember", sample={"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)})
    artifact = load(tmp_path / "focus.ember")
    for shape in ((1, 3, 32, 32), (2, 3, 48, 64)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"], rtol=RTOL, atol=ATOL)


def test_a_sliding_window_cache_keeps_its_last_entries(tmp_path: Path, rng: np.random.Generator) -> None:
    """Mistral's sliding-window KV cache from the dynamo exporter: the past and the new keys
    concatenated, then `cat[:, :, -3:]` kept. The past may be shorter than the window (the
    first steps of a generation): the kept length is min(3, P), a fresh dim, where inference
    had assumed 3 and the artifact read past the cache (1303 off at P = 2). Over `kept + S`
    TVM's own clamping wrote `if kept + S < 0` into the slice's shape, which a kernel cannot
    take: the bounds are clamped with min/max instead."""
    big = np.iinfo(np.int64).max
    inits = {"start": np.array([-3], np.int64), "end": np.array([big], np.int64), "axis": np.array([2], np.int64),
             "two": np.array(2.0, np.float32)}
    nodes = [helper.make_node("Slice", ["past", "start", "end", "axis"], ["kept"]),
             helper.make_node("Concat", ["kept", "k"], ["cat"], axis=2),
             helper.make_node("Slice", ["cat", "start", "end", "axis"], ["window"]),
             helper.make_node("Mul", ["window", "two"], ["y"])]
    model = make_model(nodes, [("past", T.FLOAT, ["B", 2, "P", 16]), ("k", T.FLOAT, ["B", 2, "S", 16])],
                       [("y", T.FLOAT, ["B", 2, "W", 16])], inits)
    onnx.save(model, tmp_path / "cache.onnx")
    sample = {"past": rng.standard_normal((1, 2, 5, 16)).astype(np.float32), "k": rng.standard_normal((1, 2, 2, 16)).astype(np.float32)}
    compile_model(tmp_path / "cache.onnx", tmp_path / "cache.ember", sample=sample)
    artifact = load(tmp_path / "cache.ember")
    for b, p, s in ((1, 5, 2), (2, 3, 1), (3, 9, 7), (1, 2, 2), (2, 0, 4), (1, 1, 1)):
        feeds = {"past": rng.standard_normal((b, 2, p, 16)).astype(np.float32), "k": rng.standard_normal((b, 2, s, 16)).astype(np.float32)}
        np.testing.assert_array_equal(artifact(**feeds)["y"], run_onnxruntime(model, feeds)["y"])


_BIG = np.iinfo(np.int64).max


@pytest.mark.parametrize(("start", "end", "step"), [
    (-1, -_BIG, -2), (-2, -_BIG, -1), (-1, 0, -1), (5, 1, -1), (-3, -_BIG, -3), (0, _BIG, 3), (-4, _BIG, 1), (-_BIG, -_BIG, -1),
])
def test_slices_of_a_symbolic_axis_agree_at_sizes_that_clamp_them(start: int, end: int, step: int, tmp_path: Path,
                                                                  rng: np.random.Generator) -> None:
    """Either step's sign, bounds counted from the end or past it, over an axis of 9, 6, 2 and 1:
    ONNX clamps a backward start into [0, d - 1] (onnxruntime takes element 0 where Python's
    slice takes nothing). Before: x[:, -1:0:-1] failed to build, x[:, ::-2] failed at run time
    (Mismatched strides), and x[:, -2::-1], x[:, 5:1:-1], x[:, ::-3] and x[:, -4:] returned
    wrong lengths once the axis was shorter than a bound."""
    inits = {"s": np.array([start], np.int64), "e": np.array([end], np.int64), "a": np.array([1], np.int64),
             "st": np.array([step], np.int64)}
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["B", "S"])], [("y", T.FLOAT, ["B", "K"])], inits)
    onnx.save(model, tmp_path / "slice.onnx")
    compile_model(tmp_path / "slice.onnx", tmp_path / "slice.ember", sample={"x": rng.standard_normal((2, 9)).astype(np.float32)})
    artifact = load(tmp_path / "slice.ember")
    for n in (9, 6, 2, 1):
        x = rng.standard_normal((2, n)).astype(np.float32)
        want = run_onnxruntime(model, {"x": x})["y"]
        got = artifact(x=x)["y"]
        assert got.shape == want.shape, (n, got.shape, want.shape)
        np.testing.assert_array_equal(got, want)
