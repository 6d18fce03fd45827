"""Cross-compiling: the linker that turns TVM's aarch64 objects into a shared library.

TVM writes the model as LLVM object files for the target triple; the host's g++ cannot link
them ("Relocations in generic ELF (EM: 183)"). `fcompile(spec)` returns the function
`export_library` links with, found on PATH in this order:

    aarch64-linux-gnu-g++, aarch64-linux-gnu-gcc   (Debian: g++-aarch64-linux-gnu)
    aarch64-linux-gnu-ld                            (Debian: binutils-aarch64-linux-gnu)
    ld.lld, ld.lld-NN                               (Debian: lld)

The library needs nothing but `memcpy@GLIBC_2.17` from the board, so a plain `ld -shared`
suffices. Without any of them: EmberError naming the package and the apt command.
`EMBER_CROSS_LINKER=/path/to/linker` picks one explicitly.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember.compiler.errors import EmberError
from ember.targets.registry import TargetSpec

ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}
INSTALL_HINT = ("install a cross linker: `sudo apt-get install g++-aarch64-linux-gnu` (Debian/Ubuntu package "
                "g++-aarch64-linux-gnu) or `sudo apt-get install lld` (package lld), or run `bash tools/arm_setup.sh`; "
                "EMBER_CROSS_LINKER=/path/to/linker picks one explicitly")


def host_machine() -> str:
    """This machine's CPU architecture as the manifest names it (x86_64, aarch64)."""
    here = platform.machine()
    return ARCH_ALIASES.get(here, here)


def is_cross(spec: TargetSpec) -> bool:
    """Whether the target's code cannot run on this machine (another CPU architecture)."""
    return ARCH_ALIASES.get(spec.machine, spec.machine) != host_machine()


def _lld_candidates(path: str | None) -> list[str]:
    """ld.lld, then versioned ld.lld-NN on PATH, newest first."""
    names = ["ld.lld"]
    versioned: list[tuple[int, str]] = []
    for folder in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in entries:
            match = re.fullmatch(r"ld\.lld-(\d+)", entry)
            if match:
                versioned.append((int(match.group(1)), entry))
    names += [name for _, name in sorted(set(versioned), reverse=True)]
    return names


def linker_candidates(triple: str, path: str | None = None) -> list[str]:
    """Linker names tried, in order, for a target triple."""
    prefix = triple.split("-")[0] + "-linux-gnu"
    return [f"{prefix}-g++", f"{prefix}-gcc", f"{prefix}-ld", *_lld_candidates(path)]


def find_linker(spec: TargetSpec, path: str | None = None) -> str:
    """The first cross linker on PATH (or EMBER_CROSS_LINKER) for the target; EmberError otherwise."""
    explicit = os.environ.get("EMBER_CROSS_LINKER")
    if explicit:
        found = shutil.which(explicit, path=path)
        if not found:
            raise EmberError(f"EMBER_CROSS_LINKER={explicit!r} is not an executable on PATH; {INSTALL_HINT}")
        return found
    for name in linker_candidates(spec.triple, path):
        found = shutil.which(name, path=path)
        if found:
            return found
    raise EmberError(f"cannot build for {spec.name} ({spec.triple}): no cross linker found "
                     f"(tried {', '.join(linker_candidates(spec.triple, path)[:4])}, ld.lld-NN); {INSTALL_HINT}")


def _kind(linker: str) -> str:
    """"cc" for a compiler driver (g++/gcc), "ld" for GNU ld, "lld" for LLVM's linker."""
    name = Path(linker).name
    if "lld" in name:
        return "lld"
    if name.endswith("-ld") or name == "ld":
        return "ld"
    return "cc"


def fcompile(spec: TargetSpec, path: str | None = None) -> Callable[..., None] | None:
    """The `export_library` link function for `spec`; None when the host's compiler does it.

    Raises EmberError (naming the package to install) when a cross build has no linker.
    """
    if not is_cross(spec):
        return None
    linker = find_linker(spec, path)
    kind = _kind(linker)
    if kind == "cc":
        from tvm.support import cc

        return cc.cross_compiler(linker)  # g++/gcc also compile C sources a module may carry

    emulation = ["-m", "aarch64linux"] if kind == "lld" and spec.machine == "aarch64" else []

    def via_ld(output: str, objects: list[str], options: list[str] | None = None, **kwargs: Any) -> None:
        _no_sources(spec, objects)
        _run([linker, *emulation, "-shared", "-o", output, *objects], linker)

    via_ld.output_format = "so"  # type: ignore[attr-defined]
    via_ld.get_target_triple = lambda: spec.triple  # type: ignore[attr-defined]
    return via_ld


def _no_sources(spec: TargetSpec, objects: list[str]) -> None:
    sources = [o for o in objects if not o.endswith(".o")]
    if sources:
        raise EmberError(f"the {spec.name} build has C sources to compile ({', '.join(Path(s).name for s in sources)}), "
                         "which a plain linker cannot; install g++-aarch64-linux-gnu")


def _run(cmd: list[str], linker: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise EmberError(f"cannot run the cross linker {linker}: {err}; {INSTALL_HINT}") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise EmberError(f"the cross linker {Path(linker).name} failed: {lines[0] if lines else f'exit {proc.returncode}'}")


def elf_machine(path: str | Path) -> str:
    """The CPU architecture an ELF file is for (x86_64, aarch64, ...), read from its header."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise EmberError(f"{path}: not an ELF file")
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv"}.get(code, f"elf-machine-{code}")


def glibc_requirements(path: str | Path) -> dict[str, str]:
    """Highest GLIBC_x.y / GLIBCXX_3.4.z / CXXABI versions a shared library asks for (from its
    version strings), e.g. {"glibc": "2.28", "glibcxx": "3.4.29"}; absent keys: not needed."""
    data = Path(path).read_bytes()
    found: dict[str, str] = {}
    for key, pattern in (("glibc", rb"GLIBC_(2\.\d+(?:\.\d+)?)"), ("glibcxx", rb"GLIBCXX_(3\.4(?:\.\d+)?)"),
                         ("cxxabi", rb"CXXABI_(1\.3(?:\.\d+)?)")):
        versions = {m.decode() for m in re.findall(pattern, data)}
        if versions:
            found[key] = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    return found
