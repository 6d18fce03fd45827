"""The artifact commands (compile, run, bench, verify, targets), invoked as click commands:
results on the shipped digits CNN match the interpreter and onnxruntime; every error is one
line, a non-zero exit and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from conftest import make_model
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import cli_artifact, interp
from ember.compiler.importer import import_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
# Compiled f32 kernels vs the numpy interpreter / onnxruntime: summation order only.
RTOL, ATOL = 1e-4, 1e-5


def invoke(command: str, *args: object) -> Result:
    """Run one of cli_artifact's commands; stdout and stderr together in .output."""
    return CliRunner().invoke(getattr(cli_artifact, command), [str(a) for a in args])


def one_line_error(result: Result, code: int, text: str) -> None:
    """The command failed with `code`, one `error:` line containing `text`, no traceback."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == code, result.output
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/digits_cnn.onnx compiled with --verify and dumps."""
    out = tmp_path_factory.mktemp("digits")
    result = invoke("compile", DIGITS, "-o", out / "digits.ember", "--verify", "--dump-dir", out / "dumps")
    assert result.exit_code == 0, result.output
    assert "compare with onnxruntime (graph optimizations off):" in result.output
    assert "logits: max abs error" in result.output and "BEYOND" not in result.output
    assert (out / "dumps" / "000_input.ir").exists()
    return out / "digits.ember"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dynamic-batch MatMul+Add+Tanh model."""
    rng = np.random.default_rng(1)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Tanh", ["a"], ["y"])],
        [("x", T.FLOAT, ["B", 6])], [("y", T.FLOAT, ["B", 3])],
        {"w": rng.standard_normal((6, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)},
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_compile_run_outputs_match_the_interpreter(digits: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    result = invoke("run", digits, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--threads", 1)
    assert result.exit_code == 0, result.output
    want = interp.run(import_model(DIGITS), {"input": x})["logits"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], want, rtol=RTOL, atol=ATOL)
    result = invoke("run", digits, "--inputs", tmp_path / "in.npz")
    assert result.exit_code == 0 and result.output.startswith("logits: float32[1, 10] min "), result.output


def test_shipped_sample_gives_the_shipped_reference(digits: Path, tmp_path: Path) -> None:
    shipped = np.load(ROOT / "examples" / "digits_sample.npz")
    np.savez(tmp_path / "in.npz", input=shipped["input"])
    assert invoke("run", digits, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], shipped["ref:logits"], rtol=RTOL, atol=1e-4)


def test_self_check_verify_bench(digits: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    result = invoke("run", digits, "--self-check")
    assert result.exit_code == 0 and "self-check passed" in result.output, result.output
    np.savez(tmp_path / "in.npz", input=rng.standard_normal((1, 1, 8, 8)).astype(np.float32))
    result = invoke("verify", digits, DIGITS, "--inputs", tmp_path / "in.npz")
    assert result.exit_code == 0 and "verify passed" in result.output, result.output
    result = invoke("bench", digits, "--repeat", 5, "--warmup", 1, "--threads", 1, "--json")
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["repeat"] == 5 and report["threads"] == 1
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] and report["throughput_per_s"] > 0
    result = invoke("bench", digits, "--repeat", 3, "--warmup", 0)
    assert result.exit_code == 0 and " p50 " in result.output and " p99 " in result.output and "throughput" in result.output


def test_verify_beyond_tolerance_exits_non_zero(digits: Path) -> None:
    result = invoke("verify", digits, DIGITS, "--rtol", 0, "--atol", 0)
    one_line_error(result, 1, "outputs differ from onnxruntime beyond tolerance")
    assert "logits: max abs error" in result.output and "BEYOND TOLERANCE" in result.output


def test_compile_options_reach_the_pass_manager_and_manifest(tiny: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    art = tmp_path / "t.ember"
    result = invoke("compile", tiny, "-o", art, "--passes", "dce,fuse", "--print-after", "fuse", "--check-each")
    assert result.exit_code == 0, result.output
    assert "Fused(" in result.output  # --print-after fuse printed the IR
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["pipeline"] == "dce,fuse" and [p["pass"] for p in manifest["passes"]] == ["dce", "fuse"]
    from ember.runtime import load

    model = load(art)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 6)).astype(np.float32)
        np.testing.assert_allclose(model(x)["y"], interp.run(import_model(tiny), {"x": x})["y"], rtol=RTOL, atol=ATOL)


def test_specializations_run_when_their_dims_match(tiny: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    from ember.runtime import load

    art = tmp_path / "s.ember"
    result = invoke("compile", tiny, "-o", art, "--specialize", "B=4", "--specialize", "B=1", "--verify")
    assert result.exit_code == 0, result.output
    assert "specialization B=4: the model again with these dims fixed" in result.output
    specs = json.loads((art / "manifest.json").read_text())["specializations"]
    assert [(s["dims"], s["library"]) for s in specs] == [({"B": 4}, "model.1.so"), ({"B": 1}, "model.2.so")]
    assert all(s["checks"]["onnxruntime"][0]["max_abs"] <= 1e-4 for s in specs)  # each checked on its own sample
    model = load(art)
    for batch, library in ((4, "model.1.so"), (1, "model.2.so"), (3, None)):
        x = rng.standard_normal((batch, 6)).astype(np.float32)
        spec = model.variant([x.shape])[1]
        assert (spec.library.name if spec is not None else None) == library
        np.testing.assert_allclose(model(x)["y"], interp.run(import_model(tiny), {"x": x})["y"], rtol=RTOL, atol=ATOL)

    result = invoke("compile", tiny, "-o", tmp_path / "none.ember", "--no-specialize")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "none.ember" / "manifest.json").read_text())
    assert manifest["specializations"] == [] and "model.1.so" not in manifest["files"]


@pytest.mark.parametrize(
    ("shapes", "want"),
    [
        ((["B", 6], ["B", 6]), [{"B": 1}]),  # batch dims only (shared by two inputs): batch 1 by default
        ((["B", 6], ["C", 6]), [{"B": 1, "C": 1}]),  # two batch dims the graph never ties
        ((["B", 6], ["B", "S"]), []),  # a sequence length: no value is a safe guess
        (([2, 6], [2, 6]), []),  # static
    ],
)
def test_default_specializations(shapes: tuple, want: list) -> None:
    from ember.compiler.driver import default_specializations
    from ember.compiler.importer import import_proto

    model = make_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["z"], ["w"])],
                       [("x", T.FLOAT, shapes[0]), ("z", T.FLOAT, shapes[1])], [("y", T.FLOAT, []), ("w", T.FLOAT, [])], {})
    graph = import_proto(model)
    assert default_specializations(graph) == want
    # the caller's sample stands for the deployment: its batch is the one specialized
    assert default_specializations(graph, {"B": 4, "S": 7}) == [{k: 4 if k == "B" else 1 for k in d} for d in want]
    assert default_specializations(graph, {"B": 0, "C": 0}) == []  # an empty sample batch: nothing to build


def test_the_default_specialization_takes_the_samples_batch(tiny: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    np.savez(tmp_path / "sample.npz", x=rng.standard_normal((5, 6)).astype(np.float32))
    result = invoke("compile", tiny, "-o", tmp_path / "b5.ember", "--sample", tmp_path / "sample.npz")
    assert result.exit_code == 0, result.output
    specs = json.loads((tmp_path / "b5.ember" / "manifest.json").read_text())["specializations"]
    assert [s["dims"] for s in specs] == [{"B": 5}]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--specialize", "seq=4"), "specialization 'seq=4': 'seq' is not a symbolic input dim (the model's: B)"),
        (("--specialize", "B=0"), "specialization 'B=0': B must be a positive integer, got 0"),
        (("--specialize", "B"), "--specialize 'B': expected NAME=VALUE[,NAME=VALUE...] with positive integer values"),
        (("--specialize", "B=1", "--no-specialize"), "--specialize and --no-specialize contradict each other"),
    ],
)
def test_bad_specializations_are_one_line(tiny: Path, tmp_path: Path, args: tuple, text: str) -> None:
    one_line_error(invoke("compile", tiny, "-o", tmp_path / "x.ember", *args), 1, text)
    assert not (tmp_path / "x.ember").exists()


def test_default_output_is_next_to_the_model(tiny: Path) -> None:
    result = invoke("compile", tiny)
    assert result.exit_code == 0, result.output
    assert (tiny.with_suffix(".ember") / "manifest.json").is_file()


def test_targets_lists_every_preset() -> None:
    result = invoke("targets")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names[0] == "cpu" and {"x86-64-v3", "x86-64-v4", "arm:rpi4", "cuda:sm_90"} <= set(names)


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("compile", DIGITS, "--target", "pdp11"), 1, "unknown target 'pdp11'; valid targets: cpu, x86-64-v3"),
        (("compile", "nothere.onnx"), 2, "nothere.onnx: no such file"),
        (("verify", "{art}", "nothere.onnx"), 1, "onnxruntime could not run nothere.onnx"),
        (("run", "{art}"), 1, "give either --inputs IN.npz"),
        (("run", "{art}", "--self-check", "-o", "x.npz"), 1, "-o writes the outputs of --inputs"),
        (("run", "{art}", "--inputs", "{bad_npz}"), 2, "unknown input 'x'; the model's inputs are ['input']"),
        (("run", "{art}", "--inputs", "{wrong_dtype}"), 2, "input 'input' must be f32 (float32), got float64"),
        (("run", "{art}", "--inputs", DIGITS), 1, "cannot read inputs (not an .npz archive)"),
        (("run", "{art}", "--inputs", "{good_npz}", "-o", "/nonexistent/dir/out.npz"), 1, "No such file or directory"),
        (("bench", "{art}", "--inputs", "{bad_npz}"), 2, "unknown input 'x'"),
        (("run", "nowhere.ember", "--self-check"), 2, "nowhere.ember: not an ember artifact directory"),
    ],
)
def test_errors_are_one_line(digits: Path, tmp_path: Path, args: tuple, code: int, text: str) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    np.savez(tmp_path / "wrong.npz", input=np.zeros((1, 1, 8, 8)))
    np.savez(tmp_path / "good.npz", input=np.zeros((1, 1, 8, 8), np.float32))
    paths = {"art": digits, "bad_npz": tmp_path / "bad.npz", "wrong_dtype": tmp_path / "wrong.npz",
             "good_npz": tmp_path / "good.npz"}
    command, *rest = (str(a).format(**paths) for a in args)
    one_line_error(invoke(command, *rest), code, text)


@pytest.mark.parametrize("damage", ["flip", "edit", "missing"])
def test_damaged_artifact_is_one_line(digits: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    art = tmp_path / "d.ember"
    shutil.copytree(digits, art)
    if damage == "flip":
        data = bytearray((art / "model.so").read_bytes())
        data[100] ^= 1
        (art / "model.so").write_bytes(bytes(data))
        text = "file model.so is damaged (sha256 mismatch); recompile or copy the artifact again"
    elif damage == "edit":
        manifest = json.loads((art / "manifest.json").read_text())
        manifest["outputs"][0]["shape"] = [1, 11]
        (art / "manifest.json").write_text(json.dumps(manifest))
        text = "the manifest was edited or damaged"
    else:
        (art / "reference.npz").unlink()
        text = "file reference.npz is missing"
    for command in (("run", art, "--self-check"), ("bench", art, "--repeat", 1), ("verify", art, DIGITS)):
        one_line_error(invoke(*command), 2, text)


def test_refuses_to_overwrite_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_line_error(invoke("compile", DIGITS, "-o", mine), 1, "is not an ember artifact; refusing to replace it")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_commands_are_in_the_ember_group() -> None:
    from ember.compiler.cli import main

    assert {"compile", "run", "bench", "verify", "targets"} <= set(main.commands)


def test_layout_option(digits: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    """--layout nchw builds ONNX's layout throughout, the default the target's blocked one; the
    manifest says which, and both give the interpreter's outputs."""
    from ember.targets import resolve_target
    from ember.targets.build import block_lanes

    lanes = block_lanes(resolve_target("cpu"))
    assert json.loads((digits / "manifest.json").read_text())["activation_layout"] == (f"NCHW{lanes}c" if lanes else "NCHW")
    result = invoke("compile", DIGITS, "-o", tmp_path / "nchw.ember", "--layout", "nchw")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "nchw.ember" / "manifest.json").read_text())
    assert manifest["activation_layout"] == "NCHW"
    assert not any(k["rule"] in ("ConvNCHWc", "WindowNCHWc") for k in manifest["kernels"])
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    want = interp.run(import_model(DIGITS), {"input": x})["logits"]
    for artifact in (digits, tmp_path / "nchw.ember"):
        result = invoke("run", artifact, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], want, rtol=RTOL, atol=ATOL)
    bad = invoke("compile", DIGITS, "-o", tmp_path / "x.ember", "--layout", "nhwc")
    assert bad.exit_code == 2 and "'nhwc' is not one of 'auto', 'nchw'" in bad.output and "Traceback" not in bad.output
