"""Proof under emulation: every ARM preset's build of the digits CNN and of mobile_attn runs
under qemu-aarch64 with the preset's pinned core and the runtime-only aarch64 TVM, and matches
onnxruntime on x86; so does a Pi 4 build of an LSTM + GRU model (the generated recurrence
kernel); bundles unpack and self-check with nothing but the sysroot's Python and numpy;
wrong-architecture loads and ISA mismatches fail clearly.

Tolerances: float outputs |ember - onnxruntime| <= 1e-4 + 1e-3 * |onnxruntime| (the compiler's
default, ember.runtime.TOLERANCE); integer outputs (TopK indices) exactly equal.
Run: bash tools/arm_setup.sh && pytest -q -m arm tests/arm   (EMBER_REQUIRE_ARM=1: fail, never skip)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from arm_helpers import report, unavailable
from arm_models import random_inputs, speech_rnn, write_models

from ember.compiler.cli_bundle import make_bundle
from ember.compiler.driver import compile_model
from ember.compiler.errors import EmberError
from ember.runtime import TOLERANCE, ArtifactError, compare, load
from ember.targets.cross import elf_machine
from ember.targets.emulate import Emulator, describe_exit, find_emulator, missing_parts, run_artifact
from ember.targets.registry import TARGETS

pytestmark = pytest.mark.arm

PRESETS = [name for name, spec in TARGETS.items() if spec.kind == "arm"]
MODELS = ["digits_cnn", "mobile_attn"]
_BUILT: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def emulator() -> Emulator:
    """qemu + sysroot + aarch64 TVM runtime, and a cross linker to build with."""
    emu = find_emulator()
    if emu is None:
        unavailable(f"no aarch64 emulation here (missing {missing_parts()})")
    if not any(shutil.which(n) for n in ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "ld.lld")):
        unavailable("no aarch64 cross linker on PATH")
    return emu


@pytest.fixture(scope="session")
def arm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the session's models, artifacts and bundles."""
    return tmp_path_factory.mktemp("arm")


def onnxruntime_outputs(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def built(emulator: Emulator, arm_dir: Path, preset: str, model: str) -> Path:
    """The artifact of `model` for `preset` (compiled once per session; the compile itself
    runs the build under qemu with the preset's core and compares with the interpreter)."""
    key = (preset, model)
    if key not in _BUILT:
        path = write_models(arm_dir)[model]
        out = arm_dir / f"{model}-{preset.split(':')[1]}.ember"
        start = time.perf_counter()
        result = compile_model(path, out, target=preset)
        rules: dict[str, int] = {}
        for kernel in result.manifest.get("kernels", []):
            if isinstance(kernel, dict):
                rules[str(kernel.get("rule"))] = rules.get(str(kernel.get("rule")), 0) + 1
        report(kind="compile", preset=preset, model=model, seconds=round(time.perf_counter() - start, 2),
               checked_on=result.manifest["checked_on"], rules=rules)
        assert result.manifest["checked_on"] == f"qemu-aarch64 -cpu {TARGETS[preset].qemu_cpu}"
        assert result.manifest["checks"]["interpreter"]
        _BUILT[key] = out
    return _BUILT[key]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_under_its_core_and_matches_onnxruntime(emulator: Emulator, arm_dir: Path, preset: str, model: str,
                                                             tmp_path: Path) -> None:
    art = built(emulator, arm_dir, preset, model)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["arch"] == {"machine": "aarch64", "triple": "aarch64-linux-gnu"}
    assert manifest["target"]["name"] == preset and manifest["target"]["mcpu"] == TARGETS[preset].mcpu
    assert elf_machine(art / "model.so") == "aarch64"
    if shutil.which("file"):
        assert "ARM aarch64" in subprocess.run(["file", "-b", str(art / "model.so")], capture_output=True, text=True).stdout

    onnx_path = write_models(arm_dir)[model]
    feeds = random_inputs(onnx_path, seed=1234)  # fresh inputs, not the artifact's sample
    np.savez(tmp_path / "x.npz", **feeds)
    cpu = TARGETS[preset].qemu_cpu
    start = time.perf_counter()
    proc = run_artifact(emulator, art, cpu, ["--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"),
                                             "--repeat", "3", "--threads", "1"])
    wall = time.perf_counter() - start
    assert proc.returncode == 0, f"{describe_exit(proc.returncode, cpu)}\n{proc.stderr[-2000:]}"
    with np.load(tmp_path / "y.npz") as data:
        got = {k: data[k] for k in data.files}
    want = onnxruntime_outputs(onnx_path, feeds)
    rows = compare(got, want, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"])
    assert all(row.ok for row in rows), [row.text() for row in rows]
    latency = next((line for line in proc.stdout.splitlines() if line.startswith("latency:")), "")
    report(kind="run", preset=preset, model=model, qemu_cpu=cpu, wall_s=round(wall, 2),
           median_ms=float(latency.split()[2]) if latency else None,
           max_abs={r.name: r.max_abs for r in rows}, max_rel={r.name: r.max_rel for r in rows})


def _unpack(bundle: Path, where: Path) -> Path:
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where, filter="data")
        else:
            tar.extractall(where)
    assert not [n for n in names if n.endswith("libtvm_compiler.so") or "/ember/compiler" in n], "the compiler is in the bundle"
    return where / names[0].split("/")[0]


def _bare(emulator: Emulator, cpu: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """argv under qemu with nothing from this machine's environment (only PATH)."""
    return subprocess.run(emulator.command([str(emulator.sysroot / "usr/bin/python3.11"), *argv], cpu),
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_bundle_unpacks_and_self_checks_with_nothing_installed(emulator: Emulator, arm_dir: Path, preset: str,
                                                               tmp_path: Path) -> None:
    sizes = {}
    for model in MODELS:
        art = built(emulator, arm_dir, preset, model)
        result = make_bundle(art, tmp_path / f"{model}-{preset.split(':')[1]}.tar.gz")
        needs = result.manifest["requires"]
        assert needs["machine"] == "aarch64" and needs["glibc"] and "3.11" in needs["python"]
        assert needs["cpu_features"] == json.loads((art / "manifest.json").read_text())["target"]["cpu_features"]
        root = _unpack(result.path, tmp_path / f"unpacked-{model}")
        lib_files = {p.name for p in (root / "lib").iterdir()}
        assert {"libtvm_runtime.so", "libtvm_runtime_extra.so"} <= lib_files
        assert (root / "lib/python/tvm_ffi/lib/libtvm_ffi.so").is_file()
        assert elf_machine(root / "lib/libtvm_runtime.so") == "aarch64"
        cpu = TARGETS[preset].qemu_cpu
        start = time.perf_counter()
        proc = _bare(emulator, cpu, [str(root / "run"), "--self-check"])
        wall = time.perf_counter() - start
        assert proc.returncode == 0, f"{describe_exit(proc.returncode, cpu)}\n{proc.stdout}\n{proc.stderr[-2000:]}"
        assert "self-check passed" in proc.stdout
        assert "Scope Loaded" not in proc.stderr
        sizes[model] = result.size
        report(kind="bundle", preset=preset, model=model, bytes=result.size, unpacked=result.unpacked,
               self_check_wall_s=round(wall, 2), glibc=needs["glibc"], python=needs["python"])
    assert all(size < 8_000_000 for size in sizes.values()), sizes


def test_wrong_architecture_load_is_explained(emulator: Emulator, arm_dir: Path, tmp_path: Path) -> None:
    art = built(emulator, arm_dir, "arm:rpi4", "digits_cnn")
    here = os.uname().machine
    with pytest.raises(ArtifactError) as err:
        load(art)
    assert f"built for aarch64 (aarch64-linux-gnu, target arm:rpi4), this machine is {here}" in str(err.value)
    ember = Path(sys.executable).parent / "ember"
    if ember.is_file():
        proc = subprocess.run([str(ember), "run", str(art), "--self-check"], capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and "built for aarch64" in proc.stderr and "Traceback" not in proc.stderr
    bundle = make_bundle(art, tmp_path / "d.tar.gz")
    root = _unpack(bundle.path, tmp_path)
    proc = subprocess.run([sys.executable, str(root / "run"), "--self-check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"this bundle is for aarch64 boards, this machine is {here}" in proc.stderr and "Traceback" not in proc.stderr
    # --self-check first checks every file against bundle.json (a copy damaged in transit).
    lib = root / "lib" / "libtvm_runtime_extra.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(root / "run"), "--self-check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "libtvm_runtime_extra.so: damaged (sha256 mismatch)" in proc.stderr, proc.stderr


def test_recurrent_layers_run_under_emulation_and_match_onnxruntime(emulator: Emulator, tmp_path: Path) -> None:
    """The generated LSTM/GRU recurrence kernel cross-compiled for a Raspberry Pi 4 (NEON): the
    compile's own check under qemu, then the artifact on fresh inputs against onnxruntime."""
    import onnx

    preset = "arm:rpi4"
    path = tmp_path / "speech_rnn.onnx"
    onnx.save(speech_rnn(), path)
    out = tmp_path / "speech_rnn.ember"
    result = compile_model(path, out, target=preset)
    assert result.manifest["checked_on"] == f"qemu-aarch64 -cpu {TARGETS[preset].qemu_cpu}"
    assert elf_machine(out / "model.so") == "aarch64"
    feeds = random_inputs(path, seed=77)
    np.savez(tmp_path / "x.npz", **feeds)
    cpu = TARGETS[preset].qemu_cpu
    proc = run_artifact(emulator, out, cpu, ["--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"),
                                             "--threads", "2"])
    assert proc.returncode == 0, f"{describe_exit(proc.returncode, cpu)}\n{proc.stderr[-2000:]}"
    with np.load(tmp_path / "y.npz") as data:
        got = {k: data[k] for k in data.files}
    rows = compare(got, onnxruntime_outputs(path, feeds), rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"])
    assert all(row.ok for row in rows), [row.text() for row in rows]


def test_isa_mismatch_fails_the_compile_with_sigill(emulator: Emulator, tmp_path: Path) -> None:
    # +sve code, checked under a core without SVE: the compile says SIGILL and writes nothing.
    out = tmp_path / "sve.ember"
    with pytest.raises(EmberError) as err:
        compile_model(write_models(tmp_path)["digits_cnn"], out, target="arm:aarch64,mattr=+neon+sve,qemu=cortex-a57")
    assert "illegal instruction (SIGILL) on the emulated cortex-a57" in str(err.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["mobile_attn.onnx"]


def test_isa_mismatch_on_the_board_is_refused_before_loading(emulator: Emulator, arm_dir: Path, tmp_path: Path) -> None:
    # A build for a core with SVE (checked under a64fx, which has it) taken to a Jetson Nano.
    sve = compile_model(write_models(arm_dir)["digits_cnn"], tmp_path / "sve.ember",
                        target="arm:aarch64,mattr=+neon+sve,qemu=a64fx").path
    assert "sve" in json.loads((sve / "manifest.json").read_text())["target"]["cpu_features"]
    root = _unpack(make_bundle(sve, tmp_path / "sve.tar.gz").path, tmp_path / "sve")
    proc = _bare(emulator, "cortex-a57", [str(root / "run"), "--self-check"])
    assert proc.returncode == 2 and "this CPU lacks fullfp16, sve, which the model was compiled to use" in proc.stderr, proc.stderr
    # Forced past the check, the code really dies: SIGILL, which is what the check prevents.
    proc = _bare(emulator, "cortex-a57", [str(root / "run"), "--self-check"], env={"EMBER_SKIP_CPU_CHECK": "1"})
    assert proc.returncode == -signal.SIGILL, (proc.returncode, proc.stderr[-1000:])
    assert "illegal instruction (SIGILL)" in describe_exit(proc.returncode, "cortex-a57")
    # A Pi 5 build (cortex-a76: dotprod, fp16, LSE...) on a Pi 4 is refused the same way.
    art = built(emulator, arm_dir, "arm:rpi5", "digits_cnn")
    root = _unpack(make_bundle(art, tmp_path / "rpi5.tar.gz").path, tmp_path / "rpi5")
    proc = _bare(emulator, "cortex-a72", [str(root / "run"), "--self-check"])
    assert proc.returncode == 2 and "dotprod" in proc.stderr and "--target arm:rpi4" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["aarch64-linux-gnu-ld", "ld.lld"])
def test_links_with_a_plain_linker(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # binutils' ld or LLVM's lld alone (no cross g++) links the library, and it runs.
    linker = shutil.which(name)
    if linker is None and name == "ld.lld":
        pytest.skip("lld is optional (apt-get install lld)")
    if linker is None:
        unavailable(f"no {name}")
    monkeypatch.setenv("EMBER_CROSS_LINKER", linker)
    result = compile_model(write_models(tmp_path)["digits_cnn"], tmp_path / "ld.ember", target="arm:jetson-nano", verify=True)
    assert result.manifest["checks"]["onnxruntime"] and elf_machine(result.path / "model.so") == "aarch64"


def test_bundle_python_api_under_emulation(emulator: Emulator, arm_dir: Path, tmp_path: Path) -> None:
    # On the board, from Python: the bundle's lib/python holds the loader as ember.runtime.bundle_run.
    art = built(emulator, arm_dir, "arm:rpi4", "mobile_attn")
    root = _unpack(make_bundle(art, tmp_path / "api.tar.gz").path, tmp_path)
    feeds = random_inputs(write_models(arm_dir)["mobile_attn"], seed=7)
    np.savez(tmp_path / "x.npz", **feeds)
    script = tmp_path / "use.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(root / 'lib/python')!r})\n"
        "import numpy as np\n"
        "from ember.runtime import bundle_run\n"
        f"model = bundle_run.load({str(root / 'artifact')!r})\n"
        f"feeds = dict(np.load({str(tmp_path / 'x.npz')!r}))\n"
        f"np.savez({str(tmp_path / 'y.npz')!r}, **model(**feeds))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tvm', 'ember')))\n"
    )
    proc = _bare(emulator, "cortex-a72", [str(script)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'tvm'" not in proc.stdout and "ember.compiler" not in proc.stdout  # tvm_ffi only, no compiler
    with np.load(tmp_path / "y.npz") as data:
        got = {k: data[k] for k in data.files}
    rows = compare(got, onnxruntime_outputs(write_models(arm_dir)["mobile_attn"], feeds))
    assert all(row.ok for row in rows), [row.text() for row in rows]


def test_ember_runtime_with_the_tvm_package_under_emulation(emulator: Emulator, arm_dir: Path, tmp_path: Path) -> None:
    # A board with the apache-tvm wheel installed (runtime-only, no libtvm_compiler.so) can use
    # `python -m ember.runtime` instead of the bundle; TopK needs libtvm_runtime_extra.so there too.
    art = built(emulator, arm_dir, "arm:rpi5", "mobile_attn")
    (tmp_path / "py" / "ember").mkdir(parents=True)
    (tmp_path / "py" / "ember" / "runtime").symlink_to(Path(__file__).resolve().parents[2] / "runtime")
    assert not (emulator.site / "tvm" / "lib" / "libtvm_compiler.so").exists()
    proc = _bare(emulator, "cortex-a76", ["-m", "ember.runtime", str(art), "--self-check"],
                 env={"TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": f"{tmp_path / 'py'}:{emulator.site}"})
    assert proc.returncode == 0 and "self-check passed" in proc.stdout, proc.stderr[-2000:]
