"""ARM targets without emulation (default test run): presets, explicit core/feature overrides,
cross-linker discovery, and the missing-linker error that writes nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from arm_helpers import unavailable
from arm_models import DIGITS

from ember.compiler.driver import compile_model
from ember.compiler.errors import EmberError
from ember.runtime import bundle_run
from ember.targets import cross
from ember.targets.registry import HWCAP_FEATURES, TARGETS, arm_cpu_features, resolve_target

ARM_PRESETS = [name for name, spec in TARGETS.items() if spec.kind == "arm"]
QEMU = {"arm:aarch64": "cortex-a53", "arm:rpi4": "cortex-a72", "arm:rpi5": "cortex-a76",
        "arm:jetson-nano": "cortex-a57", "arm:jetson-orin": "neoverse-n1"}


def test_every_board_preset_is_buildable_and_records_its_core() -> None:
    assert set(QEMU) <= set(ARM_PRESETS)
    for name, qemu in QEMU.items():
        spec = resolve_target(name)
        assert spec.kind == "arm" and spec.triple == "aarch64-linux-gnu" and spec.qemu_cpu == qemu
        assert "+neon" in spec.features
        assert spec.cores == (0 if name == "arm:aarch64" else spec.tvm_target()["num-cores"])
        data = spec.as_json()
        assert data["mcpu"] == spec.mcpu and "neon" in data["cpu_features"]
    assert "dotprod" in arm_cpu_features(resolve_target("arm:rpi5"))
    assert "dotprod" in arm_cpu_features(resolve_target("arm:jetson-orin"))
    assert "dotprod" not in arm_cpu_features(resolve_target("arm:rpi4"))
    # crypto is not checked: LLVM's cortex-a72 has it, the Pi 4's BCM2711 does not
    assert "aes" not in arm_cpu_features(resolve_target("arm:rpi4"))


def test_checked_features_are_the_ones_the_loader_can_read() -> None:
    assert set(HWCAP_FEATURES) <= set(bundle_run.HWCAPS)


@pytest.mark.parametrize(
    ("text", "mcpu", "features", "qemu"),
    [
        ("arm:aarch64,mcpu=cortex-a55,mattr=+neon+dotprod", "cortex-a55", ("+neon", "+dotprod"), ""),
        ("arm:aarch64,mcpu=cortex-a55,mattr=+neon,+dotprod,qemu=cortex-a76", "cortex-a55", ("+neon", "+dotprod"), "cortex-a76"),
        ("arm:rpi5,mattr=+neon", "cortex-a76", ("+neon",), "cortex-a76"),
        ("arm:aarch64,cpu=neoverse-n1", "neoverse-n1", ("+neon",), "neoverse-n1"),
        ("arm:rpi4,features=neon sve", "cortex-a72", ("+neon", "+sve"), "cortex-a72"),
        ("arm:rpi4,cores=2", "cortex-a72", ("+neon",), "cortex-a72"),
    ],
)
def test_explicit_core_and_features(text: str, mcpu: str, features: tuple[str, ...], qemu: str) -> None:
    spec = resolve_target(text)
    assert (spec.mcpu, spec.features, spec.qemu_cpu, spec.kind) == (mcpu, features, qemu, "arm")
    assert spec.tvm_target()["mattr"] == list(features)
    assert resolve_target(spec.name) == spec  # the recorded name resolves to the same target
    assert spec.cores == (2 if "cores=2" in text else TARGETS[text.split(",")[0]].cores)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arm:rpi4,colour=red", "unknown key 'colour'; keys: mcpu, mattr, qemu, triple, cores"),
        ("arm:rpi4,cores=0", "cores='0' must be a positive integer"),
        ("arm:rpi4,mcpu=cortex-a999", "mcpu 'cortex-a999' is not an AArch64 core LLVM knows"),
        ("arm:rpi4,mattr=+neon+warp", "LLVM does not know the AArch64 feature(s) warp"),
        ("arm:rpi4,triple=armv7l-linux-gnueabihf", "(64-bit ARM Linux; flash a 64-bit OS on the board)"),
        ("arm:rpi4,qemu=cortex-a999", "qemu core 'cortex-a999' unknown to qemu 7.2"),
        ("arm:rpi4,cortex-a72", "'cortex-a72' is not key=value"),
        ("cpu,mcpu=x", "unknown target 'cpu,mcpu=x'"),
    ],
)
def test_bad_target_text_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(EmberError) as err:
        resolve_target(text)
    assert message in str(err.value)


def _fake_tools(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_cross_linker_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_CROSS_LINKER", raising=False)
    spec = resolve_target("arm:rpi4")
    bin_dir = tmp_path / "bin"
    _fake_tools(bin_dir, "ld.lld-15", "ld.lld-17")
    assert Path(cross.find_linker(spec, str(bin_dir))).name == "ld.lld-17"  # newest versioned lld
    _fake_tools(bin_dir, "aarch64-linux-gnu-ld")
    assert Path(cross.find_linker(spec, str(bin_dir))).name == "aarch64-linux-gnu-ld"
    _fake_tools(bin_dir, "aarch64-linux-gnu-g++")
    assert Path(cross.find_linker(spec, str(bin_dir))).name == "aarch64-linux-gnu-g++"
    monkeypatch.setenv("EMBER_CROSS_LINKER", "ld.lld-15")
    assert Path(cross.find_linker(spec, str(bin_dir))).name == "ld.lld-15"
    assert cross.fcompile(resolve_target("cpu")) is None  # the host's own compiler links host builds


def test_missing_cross_linker_names_the_package_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_CROSS_LINKER", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(EmberError) as err:
        compile_model(DIGITS, out_dir / "digits-rpi4.ember", target="arm:rpi4")
    text = str(err.value)
    assert "no cross linker found" in text and "arm:rpi4" in text
    assert "apt-get install g++-aarch64-linux-gnu" in text and "apt-get install lld" in text
    assert "\n" not in text
    assert list(out_dir.iterdir()) == []  # nothing written, no temporary left behind


@pytest.mark.arm  # a fresh `ember` process: seconds, so with the ARM tests rather than the default run
def test_missing_cross_linker_cli_exit(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    env.pop("EMBER_CROSS_LINKER", None)
    ember = Path(sys.executable).parent / "ember"
    if not ember.is_file():
        pytest.skip("no `ember` script beside this Python")
    proc = subprocess.run([str(ember), "compile", str(DIGITS), "-o", str(tmp_path / "d.ember"), "--target", "arm:jetson-nano"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode != 0
    assert "error: cannot build for arm:jetson-nano" in proc.stderr and "g++-aarch64-linux-gnu" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d.ember").exists()


def test_elf_and_glibc_readers(tmp_path: Path) -> None:
    assert cross.elf_machine(sys.executable if Path(sys.executable).resolve().is_file() else "/bin/sh") == cross.host_machine()
    lib = tmp_path / "fake.so"
    lib.write_bytes(b"\x7fELF" + bytes(14) + (183).to_bytes(2, "little") + b"GLIBC_2.17\0GLIBC_2.34\0GLIBCXX_3.4.29\0")
    lib.write_bytes(lib.read_bytes()[:5] + b"\x01" + lib.read_bytes()[6:])
    assert cross.elf_machine(lib) == "aarch64"
    assert cross.glibc_requirements(lib) == {"glibc": "2.34", "glibcxx": "3.4.29"}


@pytest.mark.arm
def test_without_emulator_the_compile_says_unchecked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not any(shutil.which(n) for n in cross.linker_candidates("aarch64-linux-gnu")):
        unavailable("no aarch64 cross linker on PATH")
    monkeypatch.setenv("EMBER_ARM_HOME", str(tmp_path / "no-arm-setup"))
    said: list[str] = []
    result = compile_model(DIGITS, tmp_path / "d.ember", target="arm:rpi5", echo=said.append)
    assert result.manifest["checks"] == {} and result.manifest["checked_on"].startswith("not run: no emulator here")
    assert any(line.startswith("not checked: the arm:rpi5 build is for aarch64") and "tools/arm_setup.sh" in line
               for line in said)
    with pytest.raises(EmberError, match="cannot verify the arm:rpi5 build on this machine"):
        compile_model(DIGITS, tmp_path / "v.ember", target="arm:rpi5", verify=True)
    assert not (tmp_path / "v.ember").exists()


@pytest.mark.arm  # seconds: a compile, a bundle and a fresh Python
def test_bundle_for_this_machine_runs_here(tmp_path: Path) -> None:
    # The same loader and layout serve artifacts built for this machine (its own TVM runtime).
    import json
    import tarfile

    from ember.compiler.cli_bundle import make_bundle

    art = compile_model(DIGITS, tmp_path / "d.ember").path
    result = make_bundle(art, tmp_path / "digits-cpu.tar.gz")
    assert result.path.name == "digits-cpu.tar.gz" and result.manifest["requires"]["machine"] == cross.host_machine()
    with tarfile.open(result.path) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "u")
    assert "digits-cpu/run" in names and "digits-cpu/bundle.json" in names
    assert not [n for n in names if "libtvm_compiler" in n or "/ember/compiler" in n or n.endswith(".pyc")]
    root = tmp_path / "u" / "digits-cpu"
    assert json.loads((root / "bundle.json").read_text())["files"]["artifact/model.so"]
    proc = subprocess.run([sys.executable, str(root / "run"), "--self-check"], capture_output=True, text=True, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "self-check passed" in proc.stdout, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(root / "run"), "--info"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "needs: " in proc.stdout and "glibc >=" in proc.stdout
