"""Shapes, lengths and counts computed from the data at run time, compiled: Reshape, Expand and
ConstantOfShape to a shape tensor the model computes, Range to a limit it computes (a length
mask from `lengths.max()`), TopK with k = min(n, 5) as detection heads export it (and TopK's
heap selection with ties), and Slice with
starts/ends it computes (both signs of step, out-of-range bounds). Each compiled by `ember
compile` and run at several inputs against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler.driver import compile_model
from ember.runtime import load

I64 = T.INT64


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _check(tmp_path: Path, model: onnx.ModelProto, feeds_list: list[dict[str, np.ndarray]]) -> None:
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample=feeds_list[0])
    artifact = load(tmp_path / "m.ember")
    for feeds in feeds_list:
        got, want = artifact(**feeds), run_onnxruntime(model, feeds)
        for name, value in want.items():
            assert got[name].shape == value.shape, (name, got[name].shape, value.shape)
            np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def test_topk_of_min_n_and_k(tmp_path: Path, rng: np.random.Generator) -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]), helper.make_node("Min", ["n1", "five"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)]
    model = make_model(nodes, [("x", T.FLOAT, [2, "N"])], [("v", T.FLOAT, [2, "K"]), ("i", I64, [2, "K"])],
                       {"one": np.array(1, np.int64), "ax0": _i64(0), "five": _i64(5)})
    _check(tmp_path, model, [{"x": rng.standard_normal((2, n)).astype(np.float32)} for n in (9, 3, 5)])


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_selects_along_a_middle_axis_with_ties(tmp_path: Path, rng: np.random.Generator, largest: int) -> None:
    """TopK is a heap selection per line (targets/emit_dynamic.topk_source): along axis 1 of
    [2, N, 3], with many ties (values from 5 integers: equal values keep the lower index first),
    k = 4 of N = 40, k = N = 7 (a full sort), and k = 0; indices must equal onnxruntime's."""
    for n, k in ((40, 4), (7, 7), (6, 0)):
        nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=largest)]
        model = make_model(nodes, [("x", T.FLOAT, [2, "N", 3])], [("v", T.FLOAT, [2, k, 3]), ("i", I64, [2, k, 3])],
                           {"k": _i64(k)})
        (tmp_path / str(k)).mkdir()
        _check(tmp_path / str(k), model, [{"x": rng.integers(-2, 3, (2, n, 3)).astype(np.float32)}])


def test_a_length_mask_from_range_of_the_longest(tmp_path: Path, rng: np.random.Generator) -> None:
    """mask[b, t] = t < lens[b] for t in range(lens.max()), applied to a [B, T] input sliced to it."""
    nodes = [helper.make_node("ReduceMax", ["lens"], ["m"], keepdims=0),
             helper.make_node("Range", ["zero", "m", "onei"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax0"], ["r2"]), helper.make_node("Unsqueeze", ["lens", "ax1"], ["l2"]),
             helper.make_node("Less", ["r2", "l2"], ["mask"]), helper.make_node("Cast", ["mask"], ["y"], to=T.FLOAT),
             helper.make_node("Cast", ["m"], ["fm"], to=T.FLOAT), helper.make_node("Range", ["fstart", "fm", "fstep"], ["fr"])]
    inits = {"zero": np.array(0, np.int64), "onei": np.array(1, np.int64), "ax0": _i64(0), "ax1": _i64(1),
             "fstart": np.array(0.5, np.float32), "fstep": np.array(0.75, np.float32)}
    model = make_model(nodes, [("lens", I64, ["B"])], [("y", T.FLOAT, ["B", "L"]), ("fr", T.FLOAT, ["F"])], inits)
    _check(tmp_path, model, [{"lens": _i64(3, 5, 2)}, {"lens": _i64(7)}, {"lens": _i64(0, 0)}])


@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_expand_and_constant_of_shape_to_shapes_from_the_data(allowzero: int, tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    """Reshape x[12] to [k, -1] (and [0, k] keeping a dim unless allowzero), Expand a [1, 3] row
    to [k, 1] -> [k, 3], ConstantOfShape [k, k]."""
    nodes = [helper.make_node("ReduceMax", ["k"], ["m"], keepdims=1),
             helper.make_node("Concat", ["m", "neg1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["x", "shp"], ["y"]),
             helper.make_node("Concat", ["zero1", "m"], ["shp0"], axis=0),
             helper.make_node("Reshape", ["x2", "shp0"], ["y0"], allowzero=allowzero),
             helper.make_node("Concat", ["m", "one1"], ["eshp"], axis=0),
             helper.make_node("Expand", ["row", "eshp"], ["e"]),
             helper.make_node("Concat", ["m", "m"], ["cshp"], axis=0),
             helper.make_node("ConstantOfShape", ["cshp"], ["c"], value=helper.make_tensor("v", T.FLOAT, [1], [2.5]))]
    inits = {"neg1": _i64(-1), "zero1": _i64(4 if allowzero else 0), "one1": _i64(1)}
    model = make_model(nodes, [("x", T.FLOAT, [12]), ("x2", T.FLOAT, [4, "W"]), ("row", T.FLOAT, [1, 3]), ("k", I64, [1])],
                       [("y", T.FLOAT, ["A", "B"]), ("y0", T.FLOAT, ["C", "D"]), ("e", T.FLOAT, ["E", 3]), ("c", T.FLOAT, ["F", "G"])],
                       inits)
    feeds = [{"x": rng.standard_normal(12).astype(np.float32), "x2": rng.standard_normal((4, k)).astype(np.float32),
              "row": rng.standard_normal((1, 3)).astype(np.float32), "k": _i64(k)} for k in (3, 4, 2)]
    _check(tmp_path, model, feeds)


def test_slices_with_starts_and_ends_from_the_data(tmp_path: Path, rng: np.random.Generator) -> None:
    """x[:, :max(lens)], x[:, neg:] (neg past the start too), x[:, max(lens)::-1]."""
    nodes = [helper.make_node("ReduceMax", ["lens"], ["m"], keepdims=1),
             helper.make_node("Slice", ["x", "zero1", "m", "one1"], ["y"]),
             helper.make_node("Slice", ["x", "neg", "big", "one1"], ["z"]),
             helper.make_node("Slice", ["x", "m", "negbig", "one1", "negone"], ["w"])]
    inits = {"zero1": _i64(0), "one1": _i64(1), "big": _i64(2**62), "negbig": _i64(-2**62), "negone": _i64(-1)}
    model = make_model(nodes, [("x", T.FLOAT, [2, "L"]), ("lens", I64, [3]), ("neg", I64, [1])],
                       [("y", T.FLOAT, [2, "A"]), ("z", T.FLOAT, [2, "B"]), ("w", T.FLOAT, [2, "C"])], inits)
    feeds = [{"x": rng.standard_normal((2, 9)).astype(np.float32), "lens": _i64(3, 5, 2), "neg": _i64(-4)},
             {"x": rng.standard_normal((2, 4)).astype(np.float32), "lens": _i64(7, 1, 1), "neg": _i64(-9)},
             {"x": rng.standard_normal((2, 6)).astype(np.float32), "lens": _i64(0, 0, 0), "neg": _i64(2)}]
    _check(tmp_path, model, feeds)


def test_tile_with_repeats_from_a_shape_and_from_the_data(tmp_path: Path, rng: np.random.Generator) -> None:
    """DeBERTa's `pos_key.repeat(query.size(0) // span, 1, 1)`: repeats built from a Shape of a
    symbolic-batch tensor (inference knows the output, [N, 6, 4]), and repeats read from an
    input tensor (known only at run time). Before, both refused to compile ("repeats must be
    constant")."""
    inits = {"ones": _i64(1, 1), "p": rng.standard_normal((1, 6, 4)).astype(np.float32)}
    nodes = [helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
             helper.make_node("Concat", ["n", "ones"], ["reps"], axis=0),
             helper.make_node("Tile", ["p", "reps"], ["tiled"]),
             helper.make_node("Add", ["x", "tiled"], ["y"]),
             helper.make_node("Tile", ["z", "r"], ["w"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 6, 4]), ("z", T.FLOAT, [2, "K"]), ("r", I64, [2])],
                       [("y", T.FLOAT, ["N", 6, 4]), ("w", T.FLOAT, ["a", "b"])], inits)
    _check(tmp_path, model, [{"x": rng.standard_normal((n, 6, 4)).astype(np.float32),
                              "z": rng.standard_normal((2, k)).astype(np.float32), "r": _i64(*reps)}
                             for n, k, reps in ((3, 5, (2, 3)), (1, 2, (1, 1)), (5, 1, (4, 0)))])


def test_pad_with_pads_from_the_data(tmp_path: Path, rng: np.random.Generator) -> None:
    """Pads the model computes: Swin's patch merging pads W % 2 and H % 2 of a dynamic image
    (torch's F.pad export: Shape -> Mod -> Concat), then a LayerNorm over the channels, whose
    dim the padded tensor carries as a fresh symbol (inference takes the weight's size); and
    pads read from an input, negative ones cropping, over two axes. Before, "pads must be
    constant"."""
    inits = {"i1": _i64(1), "i2": _i64(2), "two": _i64(2), "zeros": _i64(0, 0, 0, 0, 0), "z1": _i64(0),
             "scale": rng.standard_normal(16).astype(np.float32), "bias": rng.standard_normal(16).astype(np.float32),
             "axes": _i64(1, 2)}
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["h"]), helper.make_node("Gather", ["s", "i2"], ["w"]),
             helper.make_node("Mod", ["h", "two"], ["hp"]), helper.make_node("Mod", ["w", "two"], ["wp"]),
             helper.make_node("Concat", ["zeros", "hp", "wp", "z1"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("LayerNormalization", ["padded", "scale", "bias"], ["y"], axis=-1),
             helper.make_node("Pad", ["u", "p", "", "axes"], ["v"])]
    model = make_model(nodes, [("x", T.FLOAT, ["B", "H", "W", 16]), ("u", T.FLOAT, [2, "K", "L"]), ("p", I64, [4])],
                       [("y", T.FLOAT, ["B", "Hp", "Wp", 16]), ("v", T.FLOAT, [2, "a", "b"])], inits, opset=18)
    _check(tmp_path, model, [{"x": rng.standard_normal((b, h, w, 16)).astype(np.float32),
                              "u": rng.standard_normal((2, k, k + 1)).astype(np.float32), "p": _i64(*p)}
                             for b, h, w, k, p in ((1, 7, 8, 5, (1, 0, 2, 3)), (2, 9, 11, 3, (0, -1, -1, 2)), (1, 4, 5, 6, (0, 0, 0, 0)))])


def test_tile_with_repeats_from_a_run_time_scalar_feeding_a_matmul(tmp_path: Path, rng: np.random.Generator) -> None:
    """DeBERTa's `pos_key.repeat(query.size(0) // span, 1, 1) @ ...` with the span a run-time
    scalar: the Tile reads its repeats in `main` (not inside a kernel, where reading a tensor
    into shape values cannot sit) and the MatMul reads the tiled operand at its own batch dims
    (B, which inference takes the tile count to be)."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0),
             helper.make_node("Div", ["b", "span"], ["q"]), helper.make_node("Unsqueeze", ["q", "ax0"], ["q1"]),
             helper.make_node("Concat", ["q1", "ones"], ["reps"], axis=0),
             helper.make_node("Tile", ["p", "reps"], ["pt"]), helper.make_node("MatMul", ["x", "pt"], ["y"])]
    inits = {"i0": np.array(0, np.int64), "ax0": _i64(0), "ones": _i64(1, 1), "p": rng.standard_normal((1, 4, 6)).astype(np.float32)}
    model = make_model(nodes, [("x", T.FLOAT, ["B", 6, 4]), ("span", I64, [])], [("y", T.FLOAT, ["B", 6, 6])], inits)
    _check(tmp_path, model, [{"x": rng.standard_normal((b, 6, 4)).astype(np.float32), "span": np.array(1, np.int64)}
                             for b in (4, 1, 7)])


def test_scatter_nd_of_a_boolean_mask_as_dynamo_writes_it(tmp_path: Path, rng: np.random.Generator) -> None:
    """wav2vec2's `hidden_states[~mask] = 0` from the dynamo exporter: ScatterND's indices from
    NonZero, its updates Expand(0, ReduceSum(mask)): two run-time counts, equal only at run
    time. The updates are cast to the indices' count (checked when it runs); before, TVM's
    scatter_nd refused the unproven shapes."""
    nodes = [helper.make_node("NonZero", ["m"], ["nz"]), helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
             helper.make_node("Reshape", ["m", "flat"], ["mf"]), helper.make_node("Cast", ["mf"], ["mi"], to=I64),
             helper.make_node("ReduceSum", ["mi"], ["cnt"], keepdims=1),
             helper.make_node("Expand", ["zero", "cnt"], ["upd"]), helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["B", "T", 4]), ("m", T.BOOL, ["B", "T", 4])], [("y", T.FLOAT, ["B", "T", 4])],
                       {"flat": _i64(-1), "zero": np.array(0.0, np.float32)})
    _check(tmp_path, model, [{"x": rng.standard_normal((b, t, 4)).astype(np.float32), "m": rng.random((b, t, 4)) < p}
                             for b, t, p in ((2, 6, 0.3), (1, 9, 0.0), (3, 4, 1.0))])


def test_a_slice_whose_bounds_are_shape_arithmetic(tmp_path: Path, rng: np.random.Generator) -> None:
    """rel_pos[:, :x.shape[1]] (DeBERTa's relative positions, Whisper's decoder from the dynamo
    exporter): inference knows the output's dims, so the node looked like a kernel of its own,
    yet its end is read at run time, which cannot sit inside a kernel (TVM refused
    R.tensor_to_shape in a primitive function)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
             helper.make_node("Slice", ["x", "zero", "s", "one"], ["cols"]), helper.make_node("Relu", ["cols"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", "M"])], [("y", T.FLOAT, ["N", "M"])], {"one": _i64(1), "zero": _i64(0)})
    _check(tmp_path, model, [{"x": rng.standard_normal((n, m)).astype(np.float32)} for n, m in ((5, 5), (1, 3), (12, 7))])


def test_resize_to_sizes_computed_from_floats(tmp_path: Path, rng: np.random.Generator) -> None:
    """torchvision's detection transform: Resize to sizes = Concat(Shape(x)[:2], Cast(Floor(h *
    scale)), ...), which inference does not follow: the sizes are read at run time and N, C
    checked there to be the input's. Before: "resizing other than the spatial axes"."""
    nodes = [helper.make_node("Shape", ["x"], ["nc"], start=0, end=2), helper.make_node("Shape", ["x"], ["hw"], start=2, end=4),
             helper.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT), helper.make_node("Mul", ["hwf", "scale"], ["hws"]),
             helper.make_node("Floor", ["hws"], ["hwr"]), helper.make_node("Cast", ["hwr"], ["hwi"], to=I64),
             helper.make_node("Concat", ["nc", "hwi"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 3, "H", "W"])], [("y", T.FLOAT, ["N", 3, "h", "w"])],
                       {"scale": np.array([1.5, 0.75], np.float32)})
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample={"x": rng.standard_normal((1, 3, 20, 24)).astype(np.float32)})
    artifact = load(tmp_path / "m.ember")
    for shape in ((1, 3, 20, 24), (2, 3, 13, 40)):
        x = rng.standard_normal(shape).astype(np.float32)
        got, want = artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # (interpolation weights rounded differently)


def test_resize_to_sizes_the_model_computes_keeps_its_channels(tmp_path: Path, rng: np.random.Generator) -> None:
    """The dynamo exporter's FPN (DBNet, DeepLabV3): an upsample to sizes Concat(Shape(a)[:2],
    (h - 1) // 2 + 1), which inference does not follow, concatenated with the skip branch and
    convolved. The run-time sizes still keep N and C (code generation checks them): with a
    fresh channel dim the concat's channels were `c + 8` over a var that Relax knew to be 8,
    and TVM's FuseTIR failed ("All shape inputs are expected to be single tirx var")."""
    inits = {"w1": (rng.standard_normal((8, 4, 3, 3)) * 0.2).astype(np.float32),
             "w2": (rng.standard_normal((6, 16, 3, 3)) * 0.2).astype(np.float32), "one": _i64(1), "two": _i64(2)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["a"], ["nc"], start=0, end=2), helper.make_node("Shape", ["x"], ["hw"], start=2, end=4),
             helper.make_node("Sub", ["hw", "one"], ["hw1"]), helper.make_node("Div", ["hw1", "two"], ["hw2"]),
             helper.make_node("Add", ["hw2", "one"], ["hw3"]), helper.make_node("Concat", ["nc", "hw3"], ["sizes"], axis=0),
             helper.make_node("Resize", ["a", "", "", "sizes"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["up", "a"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 4, "H", "W"])], [("y", T.FLOAT, ["N", 6, "h", "w"])], inits)
    _check(tmp_path, model, [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((1, 4, 20, 24), (2, 4, 13, 40))])


def test_pad_to_a_multiple_computed_in_floats_then_strided_kernels(tmp_path: Path, rng: np.random.Generator) -> None:
    """torchvision's detection transform pads the image to a multiple of 32 with pads computed
    in floats (ceil(h / 32) * 32 - h), which inference does not follow: the padded dims are
    fresh, bound at run time. Relax knew them as `h + v1 + v5`, and its passes inlined the
    fresh vars as that expression into the strided conv's and pool's shape arguments, which
    FuseTIR refused ("All shape inputs are expected to be single tirx var"; RetinaNet, FCOS)."""
    nodes = [helper.make_node("Shape", ["x"], ["hw"], start=2, end=4), helper.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT),
             helper.make_node("Div", ["hwf", "k"], ["q"]), helper.make_node("Ceil", ["q"], ["qc"]),
             helper.make_node("Mul", ["qc", "k"], ["full"]), helper.make_node("Cast", ["full"], ["fulli"], to=I64),
             helper.make_node("Sub", ["fulli", "hw"], ["extra"]), helper.make_node("Concat", ["zeros6", "extra"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("Conv", ["padded", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    inits = {"k": np.array([32.0, 32.0], np.float32), "zeros6": np.zeros(6, np.int64),
             "w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)}
    model = make_model(nodes, [("x", T.FLOAT, ["N", 3, "H", "W"])], [("y", T.FLOAT, ["N", 8, "h", "w"])], inits)
    _check(tmp_path, model, [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((1, 3, 40, 50), (2, 3, 64, 33))])


def test_a_reshape_to_dims_read_at_run_time_is_a_view(tmp_path: Path, rng: np.random.Generator) -> None:
    """MobileViT's patch reshapes: the target is computed from the data, the input's dims are
    expressions of the image size. As a copy kernel, its indices divided by symbolic sizes and
    TVM took 50-70 s to build each one (the model's compile ran past 900 s); now it is a view
    of its input (no kernel), and a target of another element count is an error, not a read
    past the tensor."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=T.FLOAT),
             helper.make_node("Div", ["sf", "two"], ["hf"]), helper.make_node("Ceil", ["hf"], ["h"]),
             helper.make_node("Cast", ["h"], ["hi"], to=I64),
             helper.make_node("Mul", ["hi", "factor"], ["target"]), helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, [("x", T.FLOAT, ["N", 8, "H"])], [("y", T.FLOAT, ["A", "B", "C"])],
                       {"two": np.array([1.0, 2.0, 2.0], np.float32), "factor": _i64(1, 1, 4)})
    onnx.save(model, tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "m.ember", sample={"x": rng.standard_normal((2, 8, 6)).astype(np.float32)})
    artifact = load(tmp_path / "m.ember")
    for shape in ((2, 8, 6), (3, 8, 10)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(artifact(x=x)["y"], run_onnxruntime(model, {"x": x})["y"])
    with pytest.raises(Exception, match="View with shape"):
        artifact(x=rng.standard_normal((2, 8, 5)).astype(np.float32))  # [N, 4, ceil(H / 2) * 4]: 96 elements of 80
