"""Targets as data: what `--target` accepts, each with its TVM target and facts.

`cpu` is this machine (LLVM's host CPU name and features); named x86 levels, ARM boards and
CUDA architectures are presets. CUDA builds come with their own issue; the presets already
record the facts they need (triple, core, ISA features, the qemu core that emulates an ARM
board, the CUDA arch).

ARM targets are cross-compiled (targets/cross.py finds the linker) and can be specialised
with comma-separated key=value overrides after the preset name (see ARM_SYNTAX):

    arm:rpi4                                    the preset
    arm:aarch64,mcpu=cortex-a55,mattr=+neon+dotprod
    arm:rpi5,mattr=+neon                        the Pi 5 without dotprod
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
        """What the manifest records (ARM: also the ISA features the board's CPU must report)."""
        data = {
            "name": self.name, "kind": self.kind, "triple": self.triple, "mcpu": self.mcpu,
            "features": list(self.features), "arch": self.arch, "qemu_cpu": self.qemu_cpu,
        }
        if self.kind == "arm":
            data["cpu_features"] = list(arm_cpu_features(self))
        return data

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
                           qemu_cpu="cortex-a72", cores=4),
    "arm:rpi5": TargetSpec("arm:rpi5", "arm", "aarch64-linux-gnu", "cortex-a76", ("+neon", "+dotprod"), "Raspberry Pi 5",
                           qemu_cpu="cortex-a76", cores=4),
    "arm:jetson-nano": TargetSpec("arm:jetson-nano", "arm", "aarch64-linux-gnu", "cortex-a57", ("+neon",), "Jetson Nano CPU",
                                  qemu_cpu="cortex-a57", cores=4),
    # Orin Nano has 6 cores (NX 8, AGX 12): parallel loops split at least 6 ways.
    "arm:jetson-orin": TargetSpec("arm:jetson-orin", "arm", "aarch64-linux-gnu", "cortex-a78ae", ("+neon", "+dotprod"),
                                  "Jetson Orin CPU", qemu_cpu="neoverse-n1", cores=6),
    "cuda:sm_80": TargetSpec("cuda:sm_80", "cuda", "x86_64-linux-gnu", "x86-64", (), "NVIDIA Ampere (A100)", arch="sm_80"),
    "cuda:sm_90": TargetSpec("cuda:sm_90", "cuda", "x86_64-linux-gnu", "x86-64", (), "NVIDIA Hopper (H100/H200)", arch="sm_90"),
}

# Kinds whose build path exists today; the others are listed but refused with a reason.
BUILDABLE = ("cpu", "arm")

# The cores qemu 7.2's aarch64 user mode emulates (`qemu-aarch64-static -cpu help`); an
# explicit mcpu outside this list is emulated with the nearest core given as `qemu=`.
QEMU_CORES = ("a64fx", "cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1")
# AArch64 features (LLVM names) that generated model code can use and Linux reports in
# AT_HWCAP/AT_HWCAP2: what a loader checks on the board before running code built for them
# (runtime/bundle_run.py HWCAPS maps the bits). Crypto, CRC and system features are left out:
# kernels never use them, and LLVM's cortex-a72 has crypto that the Pi 4's BCM2711 lacks.
HWCAP_FEATURES = ("fp-armv8", "neon", "fullfp16", "rdm", "complxnum", "lse", "rcpc", "dotprod", "fp16fml", "i8mm",
                  "bf16", "sve", "sve2")
ARM_TRIPLES = ("aarch64-linux-gnu", "aarch64-unknown-linux-gnu")
ARM_KEYS = {"mcpu": "mcpu", "cpu": "mcpu", "mattr": "mattr", "features": "mattr", "triple": "triple",
            "mtriple": "triple", "qemu": "qemu", "qemu_cpu": "qemu", "cores": "cores"}
ARM_SYNTAX = """\
ARM targets take overrides after the preset, comma-separated key=value:
  --target arm:aarch64,mcpu=cortex-a55,mattr=+neon+dotprod[,qemu=cortex-a76][,triple=aarch64-linux-gnu]
  mcpu   an LLVM AArch64 core (cortex-a53, cortex-a55, cortex-a72, cortex-a76, neoverse-n1, ...)
  mattr  ISA features joined by '+', ',' or ' ' (+neon+dotprod+fullfp16); replaces the preset's
  qemu   the core qemu emulates the board with for checks (default: mcpu when qemu 7.2 has it:
         cortex-a35/a53/a57/a72/a76, neoverse-n1, a64fx; else give one with the same features)
  triple aarch64-linux-gnu (64-bit Linux; 32-bit ARM is not supported)
  cores  the board's core count (schedules split parallel loops for it)
Code for features the board lacks (+sve on a Pi) fails the compile's qemu check with SIGILL,
and a bundle's ./run refuses it on the board before loading."""


def targets() -> dict[str, TargetSpec]:
    """Every known target, `cpu` first."""
    return {"cpu": host_target(), **PRESETS}


# The table as data (asking LLVM for this machine's CPU is why it is built at import).
TARGETS: dict[str, TargetSpec] = targets()


def resolve_target(text: str) -> TargetSpec:
    """The TargetSpec for a user's `--target`; EmberError listing the valid names otherwise.

    ARM presets take `,key=value` overrides (ARM_SYNTAX)."""
    table = TARGETS
    base, _, overrides = text.partition(",")
    if overrides and base in table and table[base].kind == "arm":
        return arm_target(table[base], overrides)
    if text not in table:
        raise EmberError(f"unknown target {text!r}; valid targets: {', '.join(table)}")
    spec = table[text]
    if spec.kind not in BUILDABLE:
        raise EmberError(
            f"target {text!r} ({spec.description}) is known but ember cannot build for {spec.kind} targets yet; "
            f"buildable now: {', '.join(n for n, s in table.items() if s.kind in BUILDABLE)}"
        )
    return spec


def _split_features(text: str) -> tuple[str, ...]:
    """`+neon+dotprod`, `+neon,+dotprod` or `neon dotprod` -> ("+neon", "+dotprod") (`-x` kept)."""
    out: list[str] = []
    for part in text.replace(",", " ").replace("+", " +").replace("-", " -").split():
        if part in ("+", "-"):
            continue
        out.append(part if part[0] in "+-" else f"+{part}")
    return tuple(out)


def arm_target(preset: TargetSpec, overrides: str) -> TargetSpec:
    """A preset with `mcpu=..,mattr=..,qemu=..,triple=..` overrides, checked against LLVM.

    `mattr` may contain commas between features (`mattr=+neon,+dotprod`): a piece without `=`
    continues the previous value.
    """
    values: dict[str, str] = {}
    key = ""
    for piece in overrides.split(","):
        name, eq, value = piece.partition("=")
        if not eq:
            if key != "mattr" or not piece.strip():
                raise EmberError(f"target {preset.name},{overrides}: {piece!r} is not key=value\n{ARM_SYNTAX}")
            values[key] += "," + piece
            continue
        key = ARM_KEYS.get(name.strip().lower(), "")
        if not key:
            raise EmberError(f"target {preset.name}: unknown key {name.strip()!r}; keys: mcpu, mattr, qemu, triple, cores\n{ARM_SYNTAX}")
        values[key] = value.strip()
    triple = values.get("triple", preset.triple)
    if triple not in ARM_TRIPLES:
        raise EmberError(f"target {preset.name}: triple {triple!r} is not supported; ember builds for {', '.join(ARM_TRIPLES)} "
                         "(64-bit ARM Linux; flash a 64-bit OS on the board)")
    mcpu = values.get("mcpu", preset.mcpu)
    features = _split_features(values["mattr"]) if "mattr" in values else preset.features
    qemu = values.get("qemu") or (mcpu if mcpu in QEMU_CORES else preset.qemu_cpu if "mcpu" not in values else "")
    if qemu and qemu not in (*QEMU_CORES, "max"):
        raise EmberError(f"target {preset.name}: qemu core {qemu!r} unknown to qemu 7.2; choose one of {', '.join(QEMU_CORES)}")
    _check_llvm_core(triple, mcpu, features)
    cores = preset.cores
    if "cores" in values:
        if not values["cores"].isdigit() or int(values["cores"]) < 1:
            raise EmberError(f"target {preset.name}: cores={values['cores']!r} must be a positive integer")
        cores = int(values["cores"])
    extras = [f"mcpu={mcpu}"] if "mcpu" in values else []
    if "mattr" in values:
        extras.append("mattr=" + "".join(features))
    if "triple" in values:
        extras.append(f"triple={triple}")
    if "cores" in values:
        extras.append(f"cores={cores}")
    name = ",".join([preset.name, *extras, *([f"qemu={qemu}"] if "qemu" in values else [])])
    description = f"{preset.description} ({mcpu}{' ' + ' '.join(features) if features else ''})"
    return TargetSpec(name, "arm", triple, mcpu, features, description, qemu_cpu=qemu, cores=cores)


def _check_llvm_core(triple: str, mcpu: str, features: tuple[str, ...]) -> None:
    """EmberError when LLVM does not know the core or a feature (it would silently ignore them)."""
    import tvm
    from tvm.target import codegen

    if mcpu != "generic" and not codegen.llvm_is_valid_cpu(mcpu, triple):
        raise EmberError(f"mcpu {mcpu!r} is not an AArch64 core LLVM knows (e.g. cortex-a53, cortex-a72, cortex-a76, neoverse-n1)")
    wanted = [f[1:] for f in features if f.startswith("+")]
    if wanted:
        target = tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu, "mattr": list(features)})
        have = codegen.llvm_get_cpu_features(target)
        unknown = [f for f in wanted if f not in have]
        if unknown:
            raise EmberError(f"mattr: LLVM does not know the AArch64 feature(s) {', '.join(unknown)} "
                             "(e.g. +neon, +dotprod, +fullfp16, +i8mm, +sve)")


def arm_cpu_features(spec: TargetSpec) -> tuple[str, ...]:
    """The HWCAP-visible ISA features an ARM build may use: the core's own (LLVM's table for
    mcpu) plus the explicit `+features`, minus `-features`."""
    return _llvm_hwcap_features(spec.triple, spec.mcpu, spec.features)


@lru_cache(maxsize=64)
def _llvm_hwcap_features(triple: str, mcpu: str, features: tuple[str, ...]) -> tuple[str, ...]:
    import tvm
    from tvm.target import codegen

    llvm: dict[str, Any] = {"kind": "llvm", "mtriple": triple, "mcpu": mcpu}
    if features:
        llvm["mattr"] = list(features)
    have = codegen.llvm_get_cpu_features(tvm.target.Target(llvm))
    return tuple(f for f in HWCAP_FEATURES if f in have)
