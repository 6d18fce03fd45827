"""Running aarch64 builds on this x86 machine: qemu user mode, an aarch64 sysroot with Python
and numpy, and TVM's aarch64 runtime (tools/arm_setup.sh puts all three under
~/.cache/ember/arm, or EMBER_ARM_HOME).

    emu = find_emulator()                       # None when something is missing
    proc = emu.python(["script.py"], cpu="cortex-a72")

The emulated core is always pinned (`-cpu`): qemu's default `max` core has every ISA feature
and would hide a build for the wrong core. Emulation proves ISA, linking and numbers, not
speed (about 17x slower than the board).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.compiler.errors import EmberError

SETUP_HINT = "run `bash tools/arm_setup.sh` (installs qemu-user-static and g++-aarch64-linux-gnu, builds the sysroot)"
BOARD_PYTHON = "python3.11"


def arm_home() -> Path:
    """Where tools/arm_setup.sh keeps the sysroot, wheels and aarch64 runtime."""
    return Path(os.environ.get("EMBER_ARM_HOME") or Path.home() / ".cache" / "ember" / "arm")


@dataclass(frozen=True)
class Emulator:
    """qemu-aarch64 plus the sysroot (the board's files) and the aarch64 TVM runtime."""

    qemu: str
    sysroot: Path
    site: Path  # site-packages holding tvm_ffi and tvm/lib (aarch64), without libtvm_compiler.so

    def command(self, argv: list[str], cpu: str) -> list[str]:
        """argv (an aarch64 program and its arguments) under qemu with the core pinned."""
        if not cpu:
            raise EmberError("no qemu core for this target; give one with ,qemu=CORE (see `ember targets`)")
        return [self.qemu, "-cpu", cpu, "-L", str(self.sysroot), *argv]

    def python(self, args: list[str], cpu: str, env: Mapping[str, str] | None = None, timeout: float = 600,
               pythonpath: list[str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the sysroot's python3.11 on `args` under qemu -cpu `cpu`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "TVM_", "EMBER_TVM"))}
        base.update({"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        if pythonpath is not None:
            base["PYTHONPATH"] = os.pathsep.join(pythonpath)
        base.update(env or {})
        argv = self.command([str(self.sysroot / "usr" / "bin" / BOARD_PYTHON), *args], cpu)
        return subprocess.run(argv, env=base, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


def find_emulator() -> Emulator | None:
    """The emulator when qemu, the sysroot and the aarch64 runtime are all present; else None."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    home = arm_home()
    sysroot = Path(os.environ.get("EMBER_ARM_SYSROOT") or home / "sysroot")
    site = Path(os.environ.get("EMBER_ARM_RUNTIME") or home / "site-packages")
    if not qemu or not (sysroot / "usr" / "bin" / BOARD_PYTHON).exists() or not (site / "tvm_ffi").is_dir():
        return None
    return Emulator(qemu, sysroot, site)


def missing_parts() -> str:
    """Which of qemu / sysroot / aarch64 runtime is missing (for skip and error messages)."""
    home = arm_home()
    parts = []
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        parts.append("qemu-aarch64-static")
    if not (Path(os.environ.get("EMBER_ARM_SYSROOT") or home / "sysroot") / "usr" / "bin" / BOARD_PYTHON).exists():
        parts.append(f"the aarch64 sysroot ({home / 'sysroot'})")
    if not (Path(os.environ.get("EMBER_ARM_RUNTIME") or home / "site-packages") / "tvm_ffi").is_dir():
        parts.append(f"the aarch64 TVM runtime ({home / 'site-packages'})")
    return ", ".join(parts)


def describe_exit(returncode: int, cpu: str) -> str:
    """A process's exit as words; SIGILL explained (the build uses an ISA feature the core lacks)."""
    if returncode == -signal.SIGILL or returncode == 128 + signal.SIGILL:
        return (f"illegal instruction (SIGILL) on the emulated {cpu}: the library uses an ISA feature this core "
                "lacks; compile for the board's core (its preset, or ,mcpu=/,mattr= without the extra features)")
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def runner_script() -> Path:
    """runtime/bundle_run.py: the bundle's loader, also used to run builds under qemu."""
    from ember.runtime import bundle_run

    return Path(bundle_run.__file__).resolve()


def pythonpath(emu: Emulator, work: Path) -> list[str]:
    """PYTHONPATH for the emulated Python: ember.runtime (linked in `work`) and the aarch64 tvm_ffi."""
    import ember.runtime

    pkg = work / "py" / "ember"
    pkg.mkdir(parents=True, exist_ok=True)
    link = pkg / "runtime"
    if not link.exists():
        link.symlink_to(Path(ember.runtime.__file__).resolve().parent, target_is_directory=True)
    return [str(work / "py"), str(emu.site)]


def run_artifact(emu: Emulator, artifact: Path, cpu: str, args: list[str], timeout: float = 600,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`bundle_run.py --artifact ARTIFACT ARGS` under qemu -cpu `cpu` (outside a bundle)."""
    with tempfile.TemporaryDirectory(prefix="ember-qemu-") as work:
        path = pythonpath(emu, Path(work))
        return emu.python([str(runner_script()), "--artifact", str(artifact), *args], cpu, env=env,
                          timeout=timeout, pythonpath=path)


def emulated_outputs(built: Any, graph: Any, feeds: Mapping[str, np.ndarray], timeout: float = 600) -> dict[str, np.ndarray]:
    """Run a freshly built cross module on `feeds` under qemu with the target's core.

    The library is exported to a temporary folder, run by bundle_run's `--library` mode and
    its outputs read back. EmberError (with qemu's words) when the run fails.
    """
    emu = find_emulator()
    if emu is None:
        raise EmberError(f"cannot run the {built.target.name} build here: missing {missing_parts()}; {SETUP_HINT}")
    cpu = built.target.qemu_cpu
    with tempfile.TemporaryDirectory(prefix="ember-qemu-") as tmp:
        work = Path(tmp)
        built.export(work / "model.so")
        np.savez(work / "in.npz", **{v.name: np.asarray(feeds[v.name], order="C") for v in graph.inputs})
        names = [v.name for v in graph.output_values]
        args = [str(runner_script()), "--library", str(work / "model.so"), "--inputs", str(work / "in.npz"),
                "-o", str(work / "out.npz"), "--input-order", ",".join(v.name for v in graph.inputs),
                "--output-names", ",".join(names)]
        proc = emu.python(args, cpu, timeout=timeout, pythonpath=pythonpath(emu, work))
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip() and "Scope Loaded" not in line]
            why = lines[-1] if lines and proc.returncode > 0 else describe_exit(proc.returncode, cpu)
            raise EmberError(f"the {built.target.name} build failed under qemu -cpu {cpu}: {why}")
        with np.load(work / "out.npz") as data:
            return {name: data[name] for name in names}


def cross_outputs(built: Any, graph: Any, feeds: Mapping[str, np.ndarray], required: bool,
                  echo: Any = None) -> tuple[dict[str, np.ndarray] | None, str]:
    """The compile-time check of a cross build: (outputs under qemu, where they ran).

    Without the emulator: (None, why) and a note through `echo`, or EmberError when the
    check was asked for (`required`, i.e. --verify).
    """
    if find_emulator() is None:
        why = f"not run: no emulator here (missing {missing_parts()})"
        if required:
            raise EmberError(f"cannot verify the {built.target.name} build on this machine: {why}; {SETUP_HINT}")
        if echo is not None:
            echo(f"not checked: the {built.target.name} build is for {built.target.machine} and this machine has no "
                 f"emulator ({missing_parts()}); {SETUP_HINT} to check it under qemu, or run `./run --self-check` "
                 "from `ember bundle` on the board")
        return None, why
    where = f"qemu-aarch64 -cpu {built.target.qemu_cpu}"
    if echo is not None:
        echo(f"running the {built.target.name} build under {where} (emulated; slow, proves ISA and numbers)")
    return emulated_outputs(built, graph, feeds), where
