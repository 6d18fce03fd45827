"""The artifact and the thin runtime: compile -> load -> run matches the interpreter at any
batch; damaged artifacts and wrong inputs give clear errors, checked before the library is
loaded; writes are atomic; the runtime imports no compiler module and runs from a runtime-only
copy of tvm (no libtvm_compiler.so) in a subprocess."""

from __future__ import annotations

import ast
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model
from onnx import TensorProto as T
from onnx import helper

from ember.compiler import interp
from ember.compiler.driver import compile_model
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_model
from ember.runtime import ArtifactError, RuntimeInputError, load
from ember.runtime.artifact import DIGEST_KEY, manifest_digest

ROOT = Path(__file__).resolve().parents[2]
# Compiled f32 kernels vs the numpy interpreter: summation order differs, nothing else.
RTOL, ATOL = 1e-4, 1e-5


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


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
    return _save(model, tmp_path_factory.mktemp("dyn") / "dyn.onnx")


@pytest.fixture(scope="module")
def dyn_artifact(dyn_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_model(dyn_model, tmp_path_factory.mktemp("art") / "dyn.ember").path


@pytest.fixture(scope="module")
def two_io_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two inputs sharing the symbolic dim N (one f32, one i64), two outputs."""
    model = make_model(
        [
            helper.make_node("Cast", ["k"], ["kf"], to=T.FLOAT),
            helper.make_node("Add", ["a", "kf"], ["s"]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Mul", ["r", "kf"], ["m"]),
        ],
        [("a", T.FLOAT, ["N", 4]), ("k", T.INT64, ["N", 4])],
        [("s", T.FLOAT, ["N", 4]), ("m", T.FLOAT, ["N", 4])],
    )
    path = _save(model, tmp_path_factory.mktemp("two") / "two.onnx")
    return compile_model(path, path.with_suffix(".ember")).path


def _copy(artifact: Path, tmp_path: Path) -> Path:
    art = tmp_path / "copy.ember"
    shutil.copytree(artifact, art)
    return art


def _edit_manifest(art: Path, edit: Callable[[dict], None], reseal: bool) -> None:
    """Edit manifest.json; with `reseal`, update its digest as the compiler would."""
    data = json.loads((art / "manifest.json").read_text())
    edit(data)
    if reseal:
        data[DIGEST_KEY] = manifest_digest(data)
    (art / "manifest.json").write_text(json.dumps(data, indent=2))


# --- compile -> load -> run ------------------------------------------------------------------


def test_dynamic_batch_matches_the_interpreter_at_batch_1_3_8(dyn_model: Path, dyn_artifact: Path,
                                                              rng: np.random.Generator) -> None:
    graph = import_model(dyn_model)
    model = load(dyn_artifact)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        ran = model.variant([x.shape])[1]  # batch 1 runs the N=1 specialization, the others model.so
        assert (ran.dims if ran is not None else None) == ({"N": 1} if batch == 1 else None)
        got = model(x)["y"]
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, interp.run(graph, {"x": x})["y"], rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(model(x=x)["y"], got)


def test_two_inputs_two_outputs_by_position_and_name(two_io_artifact: Path, rng: np.random.Generator) -> None:
    model = load(two_io_artifact)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    k = rng.integers(-5, 5, (3, 4))
    out = model(a, k=k)
    assert list(out) == ["s", "m"]
    np.testing.assert_allclose(out["s"], a + k, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["m"], np.maximum(a, 0) * k, rtol=RTOL, atol=ATOL)
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("a", "f32", ("N", 4)), ("k", "i64", ("N", 4))]


def test_manifest_describes_the_artifact(dyn_artifact: Path) -> None:
    import tvm

    manifest = json.loads((dyn_artifact / "manifest.json").read_text())
    assert manifest["format"] == "ember-artifact" and manifest["format_version"] == 1
    assert manifest["tvm_version"] == tvm.__version__ and manifest["ember_version"]
    assert manifest["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["N", 3, 8, 8]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "f32", "shape": ["N", 5]}]
    assert manifest["target"]["name"] == "cpu"
    assert manifest["arch"]["machine"] == platform.machine() == manifest["arch"]["triple"].split("-")[0]
    assert manifest["pipeline"].split(",")[-1] == "fuse"
    assert [p["pass"] for p in manifest["passes"]][-1] == "fuse"
    assert len(manifest["kernels"]) >= 1 and manifest["kernel_launches"] >= len(manifest["kernels"])
    assert sum(k["calls"] for k in manifest["kernels"]) == manifest["kernel_launches"]
    assert set(manifest["files"]) == {"model.so", "model.1.so", "sample.npz", "reference.npz"}
    [fixed] = manifest["specializations"]  # the only symbolic dim is a batch: one N=1 build by default
    assert fixed["dims"] == {"N": 1} and fixed["library"] == "model.1.so"
    assert fixed["checks"]["interpreter"][0]["max_abs"] <= 1e-4
    assert sum(k["calls"] for k in fixed["kernels"]) == fixed["kernel_launches"]
    assert manifest["checks"]["interpreter"][0]["max_abs"] <= 1e-4
    assert manifest[DIGEST_KEY] == manifest_digest(manifest)
    sample = np.load(dyn_artifact / "sample.npz")
    assert sample["x"].shape == (1, 3, 8, 8)  # symbolic dims = 1


def test_self_check_uses_the_bundled_reference(dyn_artifact: Path, tmp_path: Path) -> None:
    rows = load(dyn_artifact).self_check()
    assert [r.name for r in rows] == ["y"] and all(r.ok for r in rows)
    art = _copy(dyn_artifact, tmp_path)
    ref = dict(np.load(art / "reference.npz"))
    np.savez(art / "reference.npz", y=ref["y"] + 1.0)
    _edit_manifest(art, lambda d: d["files"].update({"reference.npz": _sha(art / "reference.npz")}), reseal=True)
    rows = load(art).self_check()
    assert not rows[0].ok and rows[0].max_abs == pytest.approx(1.0, abs=1e-4)


def _sha(path: Path) -> str:
    from ember.runtime.artifact import sha256

    return sha256(path)


# --- wrong inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, a, k: m(a, k, a), r"3 positional inputs given, the model takes 2: \['a', 'k'\]"),
        (lambda m, a, k: m(a, z=k), r"unknown input 'z'; the model's inputs are \['a', 'k'\]"),
        (lambda m, a, k: m(a, a=a, k=k), r"input 'a' given twice"),
        (lambda m, a, k: m(a), r"missing input\(s\) \['k'\]; the model takes \['a', 'k'\]"),
        (lambda m, a, k: m(a.astype(np.float64), k), r"input 'a' must be f32 \(float32\), got float64"),
        (lambda m, a, k: m(a, k.astype(np.int32)), r"input 'k' must be i64 \(int64\), got int32"),
        (lambda m, a, k: m(a[:, :3], k), r"input 'a' must have shape f32\[N,4\], got \[2, 3\] \(axis 1\)"),
        (lambda m, a, k: m(a[None], k), r"input 'a' must have shape f32\[N,4\], got \[1, 2, 4\]"),
        (lambda m, a, k: m(a, np.concatenate([k, k])), r"input 'k': dim N is 4 here but 2 in another input"),
    ],
)
def test_wrong_inputs_name_the_input_the_expected_and_the_got(two_io_artifact: Path, call, message: str) -> None:
    model = load(two_io_artifact)
    with pytest.raises(RuntimeInputError, match=message):
        call(model, np.zeros((2, 4), np.float32), np.zeros((2, 4), np.int64))


def test_failures_inside_tvm_are_one_clear_error(dyn_artifact: Path) -> None:
    from ember.runtime import ModelRunError

    class Failing:
        def __getitem__(self, name: str) -> object:
            def main(*args: object) -> None:
                raise RuntimeError("Check failed: (n == 1) is false: \nStack trace:\n  0: frame")

            return main

    model = load(dyn_artifact)
    model._vm = Failing()
    model._specialized = [(spec, Failing()) for spec, _ in model._specialized]
    with pytest.raises(ModelRunError, match=r"the model failed while running: RuntimeError: Check failed: \(n == 1\) is false:$"):
        model(np.zeros((1, 3, 8, 8), np.float32))


# --- damaged artifacts: refused before the library is loaded ---------------------------------


def _flip_library_byte(art: Path) -> None:
    data = bytearray((art / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.so").write_bytes(bytes(data))


DAMAGE = {
    "flipped library byte": (_flip_library_byte, "file model.so is damaged (sha256 mismatch); recompile"),
    "flipped byte in the sample": (
        lambda art: (art / "sample.npz").write_bytes(b"\0" + (art / "sample.npz").read_bytes()[1:]),
        "file sample.npz is damaged"),
    "truncated manifest": (
        lambda art: (art / "manifest.json").write_text((art / "manifest.json").read_text()[:-20]),
        "damaged manifest"),
    "edited manifest": (
        lambda art: _edit_manifest(art, lambda d: d["inputs"][0].update(dtype="f64"), reseal=False),
        "the manifest was edited or damaged"),
    "edited checksum": (
        lambda art: _edit_manifest(art, lambda d: d["files"].update({"model.so": "0" * 64}), reseal=False),
        "the manifest was edited or damaged"),
    "missing library": (lambda art: (art / "model.so").unlink(), "file model.so is missing; the artifact is incomplete"),
    "flipped byte in a specialization": (
        lambda art: (art / "model.1.so").write_bytes(b"\0" + (art / "model.1.so").read_bytes()[1:]),
        "file model.1.so is damaged (sha256 mismatch)"),
    "specialization outside the checksums": (
        lambda art: _edit_manifest(art, lambda d: d["files"].pop("model.1.so"), reseal=True),
        "the library model.1.so is not covered by the manifest's checksums"),
    "specialization of an unknown dim": (
        lambda art: _edit_manifest(art, lambda d: d["specializations"][0]["dims"].update(M=2), reseal=True),
        "malformed `specializations` in the manifest"),
    "missing sample": (lambda art: (art / "sample.npz").unlink(), "file sample.npz is missing"),
    "missing manifest": (lambda art: (art / "manifest.json").unlink(), "no manifest.json"),
    "newer format": (
        lambda art: _edit_manifest(art, lambda d: d.update(format_version=99), reseal=True),
        "artifact format 99 but this runtime reads format 1"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_artifacts_are_refused_before_loading(dyn_artifact: Path, tmp_path: Path, damage: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    def never(*args: object) -> None:
        raise AssertionError("the library was loaded before the checks")

    monkeypatch.setattr(tvm.runtime, "load_module", never)
    art = _copy(dyn_artifact, tmp_path)
    apply, expect = DAMAGE[damage]
    apply(art)
    with pytest.raises(ArtifactError, match=expect.replace("(", r"\(").replace(")", r"\)")) as info:
        load(art)
    assert str(art) in str(info.value)


def test_wrong_architecture_is_explained(dyn_artifact: Path, tmp_path: Path) -> None:
    art = _copy(dyn_artifact, tmp_path)
    other = "aarch64" if os.uname().machine != "aarch64" else "x86_64"
    _edit_manifest(art, lambda d: d["arch"].update(machine=other, triple=f"{other}-linux-gnu"), reseal=True)
    with pytest.raises(ArtifactError, match=f"built for {other} .*this machine is {os.uname().machine}; run it on an {other}"):
        load(art)


def test_device_and_threads(dyn_artifact: Path) -> None:
    import tvm

    from ember.runtime import usable_cpus

    with pytest.raises(ArtifactError, match="device 'cuda': .* was built for cpu"):
        load(dyn_artifact, device="cuda")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        load(dyn_artifact, threads=0)
    load(dyn_artifact, threads=1)
    assert tvm.runtime.num_threads() == 1
    load(dyn_artifact, device="cpu")
    assert tvm.runtime.num_threads() == usable_cpus() == len(os.sched_getaffinity(0))


# --- atomic writes ---------------------------------------------------------------------------


def test_failed_build_leaves_nothing(dyn_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ember.targets

    def explode(graph: object, target: object, **options: object) -> None:
        raise EmberError("build failed on purpose")

    monkeypatch.setattr(ember.targets, "build", explode)
    with pytest.raises(EmberError, match="on purpose"):
        compile_model(dyn_model, tmp_path / "never.ember")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing_and_keeps_the_old_artifact(
        dyn_model: Path, dyn_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.targets.build import Built

    def half_written(self: Built, path: Path) -> None:
        Path(path).write_bytes(b"\x7fELF half a library")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Built, "export", half_written)
    out = tmp_path / "new.ember"
    with pytest.raises(OSError, match="No space left"):
        compile_model(dyn_model, out)
    assert list(tmp_path.iterdir()) == []
    # A failed recompile over an existing artifact leaves the old one in place, still valid.
    old = _copy(dyn_artifact, tmp_path)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    with pytest.raises(OSError, match="No space left"):
        compile_model(dyn_model, old)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ember"]
    load(old)


def test_failed_check_leaves_nothing(dyn_model: Path, tmp_path: Path) -> None:
    def reject(graph: object, built: object, sample: object) -> None:
        raise EmberError("verification failed on purpose")

    with pytest.raises(EmberError, match="on purpose"):
        compile_model(dyn_model, tmp_path / "never.ember", check=reject)
    assert list(tmp_path.iterdir()) == []


def test_only_artifacts_are_replaced(dyn_model: Path, tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(EmberError, match="exists and is not an ember artifact; refusing to replace it"):
        compile_model(dyn_model, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(EmberError, match="exists and is not a directory"):
        compile_model(dyn_model, tmp_path / "file")


# --- the runtime alone -----------------------------------------------------------------------


def test_runtime_imports_no_compiler_module() -> None:
    allowed_third_party = {"numpy", "tvm", "tvm_ffi", "ml_dtypes"}  # tvm_ffi: TVM's FFI (bundle_run.py uses it alone)
    for path in (ROOT / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("ember.runtime") or top in allowed_third_party or top in sys.stdlib_module_names \
                    or name == "__future__", f"{path.name} imports {name}"


@pytest.mark.skipif(sys.platform != "linux", reason="the runtime-only copy is built from the Linux wheel")
def test_runtime_works_without_the_compiler_library(dyn_artifact: Path, tmp_path: Path) -> None:
    import tvm
    import tvm_ffi

    site = tmp_path / "site"
    skip = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__")
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=skip)
    shutil.copytree(Path(tvm_ffi.__file__).parent, site / "tvm_ffi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "runtime", site / "ember" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from ember.runtime import load
        import tvm
        assert tvm.__file__.startswith({str(site)!r}), tvm.__file__
        model = load({str(dyn_artifact)!r}, threads=2)
        assert tvm.runtime.num_threads() == 2
        assert tvm.get_global_func("tvm.contrib.sort.topk", allow_missing=True) is not None  # runtime_extra loaded
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
            np.savez("out%d.npz" % batch, **model(x))
        assert all(r.ok for r in model.self_check())
        assert not any(m.startswith(("ember.compiler", "onnx", "click")) for m in sys.modules), sorted(sys.modules)
        print("runtime-only ok")
    """)
    numpy_site = str(Path(np.__file__).parents[1])  # appended after the runtime-only copy
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TVM_USE_RUNTIME_LIB="1", PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
    prefix = f"import sys; sys.path.append({numpy_site!r}); "
    result = subprocess.run([sys.executable, "-S", "-c", prefix + script], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert "runtime-only ok" in result.stdout, result.stderr[-3000:]
    graph_out = load(dyn_artifact)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(np.load(tmp_path / f"out{batch}.npz")["y"], graph_out(x)["y"], rtol=RTOL, atol=ATOL)
    # The runtime's own entry point, for machines without the compiler or click.
    cli = prefix + "import runpy; sys.argv = ['ember.runtime', %r, '--self-check']; runpy.run_module('ember.runtime', run_name='__main__')"
    result = subprocess.run([sys.executable, "-S", "-c", cli % str(dyn_artifact)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "self-check passed" in result.stdout, result.stderr[-3000:]
    assert "Scope Loaded" not in result.stderr


# --- the deploy bundle's loader (runtime/bundle_run.py: tvm_ffi only, no `tvm` package) --------


def test_bundle_loader_aligns_inputs_for_tvm() -> None:
    # tvm_ffi.from_dlpack wraps numpy's memory as is (16-byte aligned); TVM's kernels need 64.
    import ml_dtypes

    from ember.runtime.bundle_run import ALIGNMENT, aligned

    assert ALIGNMENT == 64
    buf = np.empty(4096, np.uint8)
    start = -buf.ctypes.data % 64
    for value in (np.full((), 3.0, np.float32), np.zeros((0, 3), np.float32), np.arange(7) % 3 == 0,
                  np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16), np.arange(24).reshape(4, 6)[:, ::2]):
        for offset in (4, 16):  # the same values at an address numpy may well give them
            moved = buf[start + offset:start + offset + value.nbytes].view(value.dtype).reshape(value.shape)
            moved[...] = value
            out = aligned(moved)
            assert (out.ctypes.data % 64 == 0 or not value.size) and out.flags.c_contiguous, (value, offset)
            assert out.dtype == value.dtype and out.shape == value.shape and np.array_equal(out, value)
    ready = buf[start:start + 256].view(np.float32)
    assert np.shares_memory(aligned(ready), ready)  # already aligned and contiguous: no copy


@pytest.mark.skipif(sys.platform != "linux", reason="the bundle loader is for Linux boards")
def test_bundle_loader_runs_serial_kernels_on_misaligned_inputs(tmp_path: Path) -> None:
    # A small static kernel is marked serial (build.COMPUTE_SERIAL_FLOPS, SERIAL_BYTES): its
    # vector loads of the input are aligned (vmovaps), so the bundle loader once segfaulted on
    # inputs numpy had put at an address not 32/64-byte aligned (the x86 bundle's self-check
    # crashed about half the time).
    from ember.targets.build import COMPUTE_SERIAL_FLOPS

    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "x"], ["y"])],
                       [("x", T.FLOAT, [4, 64])], [("y", T.FLOAT, [4, 64])])
    art = compile_model(_save(model, tmp_path / "tiny.onnx"), tmp_path / "tiny.ember").path
    kernels = json.loads((art / "manifest.json").read_text())["kernels"]
    assert all(0 < k["flops"] < COMPUTE_SERIAL_FLOPS for k in kernels), kernels
    script = textwrap.dedent(f"""
        import numpy as np
        from ember.runtime import bundle_run
        model = bundle_run.load({str(art)!r}, threads=2)
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        buf = np.empty(x.nbytes + 128, np.uint8)
        for offset in (0, 4, 16, 32):
            start = -buf.ctypes.data % 64 + offset
            xin = buf[start:start + x.nbytes].view(np.float32).reshape(x.shape)
            xin[...] = x
            np.testing.assert_allclose(model(x=xin)["y"], np.maximum(x, 0) * x, rtol=1e-6)
            np.testing.assert_array_equal(xin, x)  # the caller's array is left alone
        assert all(r.ok for r in model.self_check())
        print("bundle loader ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and "bundle loader ok" in result.stdout, (result.returncode, result.stderr[-3000:])


@pytest.mark.skipif(sys.platform != "linux", reason="the bundle loader is for Linux boards")
def test_bundle_loader_runs_the_specialization_that_matches(dyn_model: Path, dyn_artifact: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import numpy as np
        from ember.runtime import bundle_run
        model = bundle_run.load({str(dyn_artifact)!r}, threads=2)
        ffi = bundle_run.load_tvm_runtime()
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
            spec = model.variant([bundle_run.to_tensor(ffi, x).shape])[1]
            print(batch, spec.library.name if spec is not None else None)
            np.savez("out%d.npz" % batch, **model(x))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "model.1.so", "3", "None"]
    graph = import_model(dyn_model)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(np.load(tmp_path / f"out{batch}.npz")["y"], interp.run(graph, {"x": x})["y"],
                                   rtol=RTOL, atol=ATOL)


def test_an_artifact_recompiled_in_place_loads_its_new_library(tmp_path: Path) -> None:
    """dlopen returns the library already loaded from a file name: before, loading an artifact
    recompiled at the same path in the same process ran the old library (here: the old k)."""
    x = np.arange(8, dtype=np.float32)[None]
    for k in (2, 3, 5):
        nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)]
        model = make_model(nodes, [("x", T.FLOAT, [1, 8])], [("v", T.FLOAT, [1, k]), ("i", T.INT64, [1, k])],
                           {"k": np.array([k], np.int64)})
        onnx.save(model, tmp_path / "m.onnx")
        compile_model(tmp_path / "m.onnx", tmp_path / "m.ember")
        np.testing.assert_array_equal(load(tmp_path / "m.ember")(x=x)["i"], [list(range(7, 7 - k, -1))])


def test_a_float16_model_is_checked_at_float16_tolerance(tmp_path: Path, rng: np.random.Generator) -> None:
    """A model computed in float16 (conv, layer norm, softmax) compiles with the default
    tolerance: its output carries 10 bits, so the checks take it at rtol 1e-2 / atol 1e-3
    (check.HALF_TOLERANCE) and say so; at float32's 1e-3 / 1e-4 an honest float16 model failed
    to compile. The artifact agrees with onnxruntime at that tolerance."""
    from ember.runtime.check import HALF_TOLERANCE, compare

    half = np.float16
    inits = {"w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(half), "b": rng.standard_normal(8).astype(half),
             "scale": np.ones(8, half), "bias": np.zeros(8, half)}
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                        helper.make_node("LayerNormalization", ["t", "scale", "bias"], ["n"], axis=-1),
                        helper.make_node("Softmax", ["n"], ["y"], axis=-1)],
                       [("x", T.FLOAT16, ["N", 3, 16, 16])], [("y", T.FLOAT16, ["N", 16, 16, 8])], inits)
    lines: list[str] = []
    compile_model(_save(model, tmp_path / "half.onnx"), tmp_path / "half.ember", verify=True, echo=lines.append)
    assert any("ok (float16: rtol 0.01, atol 0.001)" in line for line in lines), lines
    x = rng.standard_normal((2, 3, 16, 16)).astype(half)
    got = load(tmp_path / "half.ember")(x=x)
    want = interp.run(import_model(tmp_path / "half.onnx"), {"x": x})
    assert got["y"].dtype == np.float16
    assert all(c.ok and c.widened for c in compare(got, want)), compare(got, want)
    assert not all(c.ok for c in compare(got, {"y": want["y"] + np.float16(2 * HALF_TOLERANCE["float16"]["atol"])}))


def test_inputs_too_small_for_a_slice_are_refused_with_the_slice_named(tmp_path: Path, rng: np.random.Generator) -> None:
    """`x[:, 2:-1]` over a symbolic S is S-3 long, as shape inference assumes S >= 3 (onnxruntime's
    too). At S = 2 the library allocated -1 elements: std::bad_alloc. The runtime now refuses such
    dims before running, naming the op, the value and the expression; at S = 3 the slice is
    empty and at S = 9 it matches onnxruntime."""
    import onnxruntime as ort
    from click.testing import CliRunner

    from ember.compiler.cli import main

    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="cut"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    inits = {"starts": np.array([2], np.int64), "ends": np.array([-1], np.int64), "axes": np.array([1], np.int64)}
    model = _save(make_model(nodes, [("x", T.FLOAT, [2, "S"])], [("z", T.FLOAT, [2, "R"])], inits), tmp_path / "cut.onnx")
    art = compile_model(model, tmp_path / "cut.ember", sample={"x": rng.standard_normal((2, 5)).astype(np.float32)}).path
    assert json.loads((art / "manifest.json").read_text())["dim_checks"] == [{"dim": "S-3", "op": "Slice", "value": "y"}]
    m = load(art)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for size in (9, 3):
        x = rng.standard_normal((2, size)).astype(np.float32)
        got = m(x=x)["z"]
        assert got.shape == (2, size - 3)
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
    message = r"with S=2, Slice output 'y' would be S-3 = -1 long"
    with pytest.raises(RuntimeInputError, match=message):
        m(x=np.zeros((2, 2), np.float32))
    assert m(x=np.ones((2, 4), np.float32))["z"].shape == (2, 1)  # (a later call with good dims runs)
    np.savez(tmp_path / "s1.npz", x=np.zeros((2, 1), np.float32))
    result = CliRunner().invoke(main, ["run", str(art), "--inputs", str(tmp_path / "s1.npz"), "-o", str(tmp_path / "o.npz")])
    assert result.exit_code == 2 and "S-3 = -2 long" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o.npz").exists()


def test_a_manifest_dim_check_is_evaluated_only_as_arithmetic() -> None:
    """dim_checks come from a manifest on disk: only integer arithmetic over dim names is
    evaluated; anything else is ignored, never run."""
    from ember.runtime.model import DimCheck

    assert DimCheck({"dim": "(T-400)//320+1"}).evaluate({"T": 79}) == -1
    assert DimCheck({"dim": "P+S-1", "value": "v", "op": "Concat"}).evaluate({"P": 0, "S": 1}) == 0
    assert DimCheck({"dim": "S-3"}).evaluate({"N": 4}) is None  # (a dim the inputs do not bind)
    for text in ("__import__('os').getpid()", "S.__class__", "S-3.5", "[S][0]", "S if S else 1", "S**99"):
        check = DimCheck({"dim": text})
        assert check.evaluate({"S": 2}) is None, text
