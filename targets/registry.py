"""Targets as data: what `--target` accepts, each with its TVM target and facts.

`cpu` is this machine (LLVM's host CPU name and features); named x86 levels, ARM boards and
CUDA architectures are presets. ARM and CUDA builds come with their own issues; the presets
already record the facts they need (triple, core, ISA features, the qemu core that emulates
the board, the CUDA arch).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ember.compiler.errors import EmberError


@dataclass(frozen=True)
class TargetSpec:
    """One compilation target."""

    name: str
    kind: str  # "cpu", "arm" or "cuda"
    triple: str
    mcpu: str
    features: tuple[str, ...] = ()
    description: str = ""
    qemu_cpu: str = ""  # ARM boards: the core qemu emulates them with
    arch: str = ""  # CUDA: sm_XX
    cores: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def _llvm(self) -> dict[str, Any]:
        llvm: dict[str, Any] = {"kind": "llvm", "mtriple": self.triple, "mcpu": self.mcpu}
        if self.features:
            llvm["mattr"] = list(self.features)
        if self.cores:
            llvm["num-cores"] = self.cores
        return llvm

    def tvm_target(self) -> dict[str, Any]:
        """The JSON form tvm.target.Target takes (CLI strings are rejected by TVM 0.27)."""
        if self.kind == "cuda":
            return {"kind": "cuda", "arch": self.arch, "host": self._llvm()}
        return self._llvm()

    @property
    def host(self) -> dict[str, Any] | None:
        """The host (CPU) part of a device target; None when the target is the CPU itself."""
        return self._llvm() if self.kind == "cuda" else None

    def as_json(self) -> dict[str, Any]:
        """What the manifest records."""
        return {
            "name": self.name, "kind": self.kind, "triple": self.triple, "mcpu": self.mcpu,
            "features": list(self.features), "arch": self.arch, "qemu_cpu": self.qemu_cpu,
        }

    @property
    def machine(self) -> str:
        """The CPU architecture the artifact's library runs on (as platform.machine names it)."""
        return self.triple.split("-")[0]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def host_target() -> TargetSpec:
    """This machine's CPU as LLVM sees it."""
    import tvm

    name = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    machine = platform.machine()
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, f"{machine}-linux-gnu")
    # LLVM maps feature name -> enabled; keep the enabled ones as "+name".
    table = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    enabled = tuple(sorted(f"+{f}" for f, on in table.items() if on))
    return TargetSpec("cpu", "cpu", triple, str(name), enabled, f"this machine ({name}, {_usable_cores()} cores)",
                      cores=_usable_cores())


PRESETS: dict[str, TargetSpec] = {
    "x86-64-v3": TargetSpec("x86-64-v3", "cpu", "x86_64-linux-gnu", "haswell", (), "x86-64 with AVX2/FMA (Haswell and newer)"),
    "x86-64-v4": TargetSpec("x86-64-v4", "cpu", "x86_64-linux-gnu", "skylake-avx512", (), "x86-64 with AVX-512"),
    "arm:aarch64": TargetSpec("arm:aarch64", "arm", "aarch64-linux-gnu", "generic", ("+neon",), "any 64-bit ARM Linux board",
                              qemu_cpu="cortex-a53"),
    "arm:rpi4": TargetSpec("arm:rpi4", "arm", "aarch64-linux-gnu", "cortex-a72", ("+neon",), "Raspberry Pi 4",
                           qemu_cpu="cortex-a72"),
    "arm:rpi5": TargetSpec("arm:rpi5", "arm", "aarch64-linux-gnu", "cortex-a76", ("+neon", "+dotprod"), "Raspberry Pi 5",
                           qemu_cpu="cortex-a76"),
    "arm:jetson-nano": TargetSpec("arm:jetson-nano", "arm", "aarch64-linux-gnu", "cortex-a57", ("+neon",), "Jetson Nano CPU",
                                  qemu_cpu="cortex-a57"),
    "arm:jetson-orin": TargetSpec("arm:jetson-orin", "arm", "aarch64-linux-gnu", "cortex-a78ae", ("+neon", "+dotprod"),
                                  "Jetson Orin CPU", qemu_cpu="neoverse-n1"),
    "cuda:sm_80": TargetSpec("cuda:sm_80", "cuda", "x86_64-linux-gnu", "x86-64", (), "NVIDIA Ampere (A100)", arch="sm_80"),
    "cuda:sm_90": TargetSpec("cuda:sm_90", "cuda", "x86_64-linux-gnu", "x86-64", (), "NVIDIA Hopper (H100/H200)", arch="sm_90"),
}

# Kinds whose build path exists today; the others are listed but refused with a reason.
BUILDABLE = ("cpu",)


def targets() -> dict[str, TargetSpec]:
    """Every known target, `cpu` first."""
    return {"cpu": host_target(), **PRESETS}


# The table as data (asking LLVM for this machine's CPU is why it is built at import).
TARGETS: dict[str, TargetSpec] = targets()


def resolve_target(text: str) -> TargetSpec:
    """The TargetSpec for a user's `--target`; EmberError listing the valid names otherwise."""
    table = TARGETS
    if text not in table:
        raise EmberError(f"unknown target {text!r}; valid targets: {', '.join(table)}")
    spec = table[text]
    if spec.kind not in BUILDABLE:
        raise EmberError(
            f"target {text!r} ({spec.description}) is known but ember cannot build for {spec.kind} targets yet; "
            f"buildable now: {', '.join(n for n, s in table.items() if s.kind in BUILDABLE)}"
        )
    return spec
