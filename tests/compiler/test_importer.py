"""The importer: clear errors for bad input, constants, external data, symbolic shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import make_model, run_onnxruntime
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.cli import main
from ember.compiler.errors import InvalidModelError, UnsupportedModelError
from ember.compiler.importer import MAX_OPSET, import_model, import_proto


def _mlp(opset: int = 17) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Constant", [], ["b"], value=onnx.numpy_helper.from_array(np.ones(4, np.float32))),
            helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
            helper.make_node("Relu", ["a"], ["y"], name="act"),
        ],
        [("x", T.FLOAT, ["batch", 8])],
        [("y", T.FLOAT, ["batch", 4])],
        {"w": w},
        opset=opset,
    )


def test_import_keeps_names_makes_constants_and_symbolic_batch(rng: np.random.Generator) -> None:
    graph = import_proto(_mlp())
    assert [v.name for v in graph.inputs] == ["x"]
    assert sorted(c.name for c in graph.consts) == ["b", "w"]
    assert [n.op for n in graph.nodes] == ["MatMul", "Add", "Relu"]
    assert str(graph.value("y").type) == "f32[batch,4]"
    for batch in (1, 3):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        got = interp.run(graph, {"x": x})["y"]
        np.testing.assert_allclose(got, run_onnxruntime(_mlp(), {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_unsupported_operators_are_listed_once_with_opset_and_nodes(tmp_path: Path) -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="r"),
            helper.make_node("Frobnicate", ["a"], ["b"], name="frob1", domain="com.example"),
            helper.make_node("Frobnicate", ["b"], ["c"], name="frob2", domain="com.example"),
            helper.make_node("StringNormalizer", ["c"], ["y"], name="strnorm"),
        ],
        [("x", T.FLOAT, [2])],
        [("y", T.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as info:
        import_proto(model, where="m.onnx")
    message = str(info.value)
    assert "2 unsupported operator(s)" in message
    assert "com.example.Frobnicate (opset 1): 2 node(s): frob1, frob2" in message
    assert "StringNormalizer (opset 17): 1 node(s): strnorm" in message
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "Frobnicate" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "dangling"])
def test_malformed_files_give_one_clear_error(tmp_path: Path, damage: str) -> None:
    good = _mlp().SerializeToString()
    path = tmp_path / "bad.onnx"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        model = _mlp()
        model.graph.node[0].input[0] = "nobody"
        path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError, match=r"bad\.onnx"):
        import_model(path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_old_opsets_are_upgraded_and_too_new_ones_explained(rng: np.random.Generator) -> None:
    """An opset-8 model with an Upsample (the ONNX model zoo's era) is upgraded to opset 11 by
    onnx's converter and imports (Upsample became Resize); a newer opset than ember knows is a
    clear error."""
    model = make_model([helper.make_node("Upsample", ["x"], ["up"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]),
                        helper.make_node("Relu", ["up"], ["y"])],
                       [("x", T.FLOAT, [1, 2, 3, 3])], [("y", T.FLOAT, [1, 2, 6, 6])], opset=8)
    graph = import_proto(model)
    assert [n.op for n in graph.nodes] == ["Resize", "Relu"]
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(interp.run(graph, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"])
    too_new = _mlp()
    too_new.opset_import[0].version = MAX_OPSET + 1
    with pytest.raises(UnsupportedModelError, match=f"opset {MAX_OPSET + 1} is not supported .*convert_version"):
        import_proto(too_new)


def test_external_data_is_loaded(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp()
    big = rng.standard_normal((8, 4)).astype(np.float32)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(big, "w"))
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").exists()
    graph = import_model(path)
    np.testing.assert_array_equal(graph.const("w").data, big)
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(InvalidModelError, match="external data"):
        import_model(path)


def test_initializers_listed_as_inputs_are_constants() -> None:
    model = _mlp()
    model.graph.input.append(helper.make_tensor_value_info("w", T.FLOAT, [8, 4]))
    graph = import_proto(model)
    assert [v.name for v in graph.inputs] == ["x"]


def test_inspect_reports_cost(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "x: f32[batch,8]" in result.output
    assert "MatMul" in result.output and "(costs are per unit of batch)" in result.output
    macs_line = next(line for line in result.output.splitlines() if line.startswith("MatMul"))
    assert macs_line.split()[2] == "32"  # 8x4 MACs per batch item


def test_input_dims_the_graph_makes_equal_are_unified() -> None:
    """Dims an exporter named per input (`ids: [ids_1, ids_2]`, `mask: [mask_1, mask_2]`) that
    the graph broadcasts against each other, contracts in a matmul or joins in a Concat are
    renamed to the first input's name, or to the static size they meet; dims the graph never
    ties (the mask's batch, read only through a Gather) keep their own names."""
    w = np.ones((8, 4), np.float32)
    model = make_model(
        [
            helper.make_node("Add", ["a", "b"], ["ab"]),  # b's dims broadcast against a's
            helper.make_node("MatMul", ["x", "w"], ["xw"]),  # x's inner dim meets the weight's 8
            helper.make_node("Concat", ["ab", "c"], ["abc"], axis=0),  # c's columns must be a's
            helper.make_node("Shape", ["d"], ["dshape"]),
        ],
        [("a", T.FLOAT, ["N", "S"]), ("b", T.FLOAT, [1, "S_b"]), ("c", T.FLOAT, ["C", "S_c"]),
         ("x", T.FLOAT, ["N", "K"]), ("d", T.FLOAT, ["D"])],
        [("abc", T.FLOAT, ["N+C", "S"]), ("xw", T.FLOAT, ["N", 4]), ("dshape", T.INT64, [1])],
        {"w": w},
    )
    graph = import_proto(model)
    assert [str(v.type) for v in graph.inputs] == ["f32[N,S]", "f32[1,S]", "f32[C,S]", "f32[N,8]", "f32[D]"]
    assert str(graph.value("abc").type) == "f32[N+C,S]"


def test_inputs_of_one_type_parameter_in_two_dtypes_are_refused() -> None:
    """LayerNormalization's X, Scale and B are all T: an f32 X with f16 weights (what torch
    exports for a BERT cast to half, whose attention output returns to f32) is refused with the
    node and both dtypes named, as onnxruntime refuses it on load (before, the build failed with
    TVM's traceback)."""
    model = make_model(
        [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="ln", axis=-1)],
        [("x", T.FLOAT, ["N", 8])],
        [("y", T.FLOAT, ["N", 8])],
        {"scale": np.ones(8, np.float16), "bias": np.zeros(8, np.float16)},
    )
    with pytest.raises(InvalidModelError, match=r"node ln \(LayerNormalization\): input Scale \('scale'\) is f16 but X is "
                                                r"f32; the operator needs them of one type \(T\)"):
        import_proto(model)
