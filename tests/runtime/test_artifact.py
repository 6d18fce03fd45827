"""Artifacts: compile -> load -> run matches the interpreter; damage and bad inputs give
clear errors; writes are atomic; the runtime works without the compiler library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import make_model
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.cli import main
from ember.compiler.driver import compile_model
from ember.compiler.importer import import_model
from ember.runtime import ArtifactError, RuntimeInputError, load

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def dyn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dynamic-batch CNN: Conv+Relu, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1),
        ],
        [("x", T.FLOAT, ["N", 3, 8, 8])],
        [("y", T.FLOAT, ["N", 5])],
        {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
         "fc": rng.standard_normal((5, 4)).astype(np.float32), "fb": rng.standard_normal(5).astype(np.float32)},
    )
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def dyn_artifact(dyn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_model(dyn_model, tmp_path_factory.mktemp("art") / "dyn.ember").path


def test_dynamic_batch_runs_at_any_batch(dyn_model: Path, dyn_artifact: Path, rng: np.random.Generator) -> None:
    graph = import_model(dyn_model)
    model = load(dyn_artifact)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        got = model(x)["y"]
        np.testing.assert_allclose(got, interp.run(graph, {"x": x})["y"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(model(x=x)["y"], got)


def test_manifest_describes_the_artifact(dyn_artifact: Path) -> None:
    manifest = json.loads((dyn_artifact / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["N", 3, 8, 8]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "f32", "shape": ["N", 5]}]
    assert set(manifest["files"]) == {"model.so", "sample.npz", "reference.npz"}
    assert manifest["target"]["name"] == "cpu"
    assert [p["pass"] for p in manifest["passes"]][-1] == "fuse"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: m(z=x), r"unknown input 'z'; the model's inputs are \['x'\]"),
        (lambda m, x: m(x.astype(np.float64)), r"input 'x' must be f32 \(float32\), got float64"),
        (lambda m, x: m(x[:, :2]), r"input 'x' must have shape f32\[N,3,8,8\], got \[2, 2, 8, 8\]"),
        (lambda m, x: m(), r"missing input\(s\) \['x'\]"),
    ],
)
def test_wrong_inputs_are_named(dyn_artifact: Path, call, message: str) -> None:
    model = load(dyn_artifact)
    with pytest.raises(RuntimeInputError, match=message):
        call(model, np.zeros((2, 3, 8, 8), np.float32))


@pytest.mark.parametrize("damage", ["flip_library_byte", "edit_manifest", "missing_file", "no_manifest"])
def test_damaged_artifacts_are_refused(dyn_artifact: Path, tmp_path: Path, damage: str) -> None:
    art = tmp_path / "copy.ember"
    shutil.copytree(dyn_artifact, art)
    if damage == "flip_library_byte":
        data = bytearray((art / "model.so").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (art / "model.so").write_bytes(bytes(data))
        expect = "file model.so is damaged"
    elif damage == "edit_manifest":
        (art / "manifest.json").write_text((art / "manifest.json").read_text()[:-20])
        expect = "damaged manifest"
    elif damage == "missing_file":
        (art / "sample.npz").unlink()
        expect = "file sample.npz is missing"
    else:
        (art / "manifest.json").unlink()
        expect = "no manifest.json"
    with pytest.raises(ArtifactError, match=expect):
        load(art)
    result = CliRunner().invoke(main, ["run", str(art), "--self-check"])
    assert result.exit_code == 2 and expect in result.output and "Traceback" not in result.output


def test_wrong_architecture_is_explained(dyn_artifact: Path, tmp_path: Path) -> None:
    art = tmp_path / "arm.ember"
    shutil.copytree(dyn_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"]["triple"] = "aarch64-linux-gnu"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="built for aarch64 .* this machine is x86_64"):
        load(art)


def test_failed_compile_leaves_nothing(dyn_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.compiler.errors import EmberError

    def explode(graph, built, sample):
        raise EmberError("verification failed on purpose")

    out = tmp_path / "never.ember"
    with pytest.raises(EmberError, match="on purpose"):
        compile_model(dyn_model, out, check=explode)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_compile_verify_run_bench(tmp_path: Path) -> None:
    runner = CliRunner()
    art = tmp_path / "digits.ember"
    result = runner.invoke(main, ["compile", str(DIGITS), "-o", str(art), "--verify", "--dump-dir", str(tmp_path / "dumps")])
    assert result.exit_code == 0, result.output
    assert "logits: max abs error" in result.output and "ok" in result.output
    assert (tmp_path / "dumps" / "000_input.ir").exists()
    result = runner.invoke(main, ["run", str(art), "--self-check"])
    assert result.exit_code == 0 and "self-check passed" in result.output
    result = runner.invoke(main, ["bench", str(art), "--repeat", "5", "--warmup", "1", "--json"])
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["repeat"] == 5 and report["p50_ms"] > 0
    result = runner.invoke(main, ["verify", str(art), str(DIGITS)])
    assert result.exit_code == 0, result.output
    x = np.load(ROOT / "examples" / "digits_sample.npz")
    np.savez(tmp_path / "in.npz", input=x["input"])
    result = runner.invoke(main, ["run", str(art), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], x["ref:logits"], rtol=1e-4, atol=1e-4)


def test_unknown_target_lists_the_valid_ones() -> None:
    result = CliRunner().invoke(main, ["compile", str(DIGITS), "--target", "pdp11"])
    assert result.exit_code == 1
    assert "unknown target 'pdp11'; valid targets: cpu, x86-64-v3" in result.output


def test_runtime_imports_no_compiler_module() -> None:
    import ast

    for path in (ROOT / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("ember.compiler", "ember.targets", "ember.passes")), f"{path}: {name}"


@pytest.mark.skipif(sys.platform != "linux", reason="the runtime-only copy is built from the Linux wheel")
def test_runtime_works_without_the_compiler_library(dyn_artifact: Path, tmp_path: Path) -> None:
    import tvm
    import tvm_ffi

    site = tmp_path / "site"
    skip = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__")
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=skip)
    shutil.copytree(Path(tvm_ffi.__file__).parent, site / "tvm_ffi", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "ember").mkdir()
    shutil.copytree(ROOT / "runtime", site / "ember" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from ember.runtime import load
        import tvm
        assert tvm.__file__.startswith({str(site)!r}), tvm.__file__
        model = load({str(dyn_artifact)!r})
        ref = dict(np.load({str(dyn_artifact / 'reference.npz')!r}))
        out = model(**dict(np.load({str(dyn_artifact / 'sample.npz')!r})))
        np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-4, atol=1e-5)
        assert not any(m.startswith("ember.compiler") for m in sys.modules)
        print("runtime-only ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TVM_USE_RUNTIME_LIB="1", PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.append({_site_packages()!r}); " + script],
                            env=env, capture_output=True, text=True, timeout=300)
    assert "runtime-only ok" in result.stdout, result.stderr[-3000:]


def _site_packages() -> str:
    """numpy's site-packages (appended after the runtime-only copy)."""
    return str(Path(np.__file__).parents[1])
