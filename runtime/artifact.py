"""The artifact directory's format: manifest, checksums, and the checks made before loading.

    OUT/
      manifest.json     format version, versions, target and arch, inputs/outputs, pipeline,
                        sha256 of every other file, and a digest of the manifest itself
      model.so          the compiled library
      model.1.so ...    specializations: the model built again with some symbolic dims fixed
                        (manifest `specializations`: dims and library); the runtime calls one
                        when an inference's dims match it, model.so otherwise
      sample.npz        sample inputs (fixed seed), keyed by input name
      reference.npz     the reference interpreter's outputs on sample.npz

Checks before the library is loaded, in this order: the manifest parses and has this format
version; its own digest matches (an edited manifest is refused); every listed file exists with
its sha256; the library is built for this machine's CPU architecture.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_sha256"
ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "AMD64": "x86_64"}


class ArtifactError(Exception):
    """The artifact is missing, damaged or built for another machine; the message says what to do."""

    exit_code = 2


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, ember dtype name, shape (ints and symbolic dim names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @staticmethod
    def from_json(data: dict[str, Any]) -> TensorSpec:
        """From the manifest's form."""
        return TensorSpec(data["name"], data["dtype"], tuple(data["shape"]))

    def text(self) -> str:
        """`f32[N,3,224,224]`."""
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Specialization:
    """A library built for fixed values of some symbolic dims ({"N": 1}); `entry` is the
    manifest's record (kernels, launches, checks)."""

    dims: dict[str, int]
    library: Path
    entry: dict[str, Any] = field(repr=False)

    def matches(self, dims: dict[str, int]) -> bool:
        """Whether an inference with these symbolic dims may run this library."""
        return all(dims.get(name) == value for name, value in self.dims.items())


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json."""

    path: Path
    data: dict[str, Any]

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input specs in call order."""
        return [TensorSpec.from_json(d) for d in self.data["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output specs in order."""
        return [TensorSpec.from_json(d) for d in self.data["outputs"]]

    @property
    def library(self) -> Path:
        """The compiled library's path."""
        return self.path.parent / self.data["library"]

    @property
    def specializations(self) -> list[Specialization]:
        """The libraries built with some symbolic dims fixed, in the order they are tried."""
        return [Specialization(dict(e["dims"]), self.path.parent / e["library"], e)
                for e in self.data.get("specializations", [])]

    @property
    def machine(self) -> str:
        """CPU architecture the library was built for (x86_64, aarch64)."""
        return str(self.data["arch"]["machine"])

    @property
    def device(self) -> str:
        """The device kind the library runs on: "cpu" (x86 and ARM CPUs) or "cuda"."""
        return "cuda" if self.data["target"].get("kind") == "cuda" else "cpu"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    body = {k: v for k, v in data.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(artifact: str | Path) -> Manifest:
    """Read and sanity-check manifest.json; ArtifactError with what to do otherwise."""
    root = Path(artifact)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an ember artifact directory (compile one with `ember compile MODEL.onnx -o {root}`)")
    if not path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST}; the artifact is incomplete or not an ember artifact; recompile it")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: damaged manifest ({err}); recompile the artifact") from None
    if not isinstance(data, dict) or data.get("format") != "ember-artifact":
        raise ArtifactError(f"{path}: not an ember artifact manifest; recompile the artifact")
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {data.get('format_version')} but this runtime reads format {FORMAT_VERSION}; "
            "recompile the artifact with this ember version"
        )
    for key in ("library", "inputs", "outputs", "files", "target", "arch", DIGEST_KEY):
        if key not in data:
            raise ArtifactError(f"{path}: manifest lacks {key!r}; recompile the artifact")
    symbols = {d for spec in data["inputs"] if isinstance(spec, dict) for d in spec.get("shape", ()) if isinstance(d, str)}
    specs = data.get("specializations", [])
    if not isinstance(specs, list) or not all(
        isinstance(e, dict) and isinstance(e.get("library"), str) and isinstance(e.get("dims"), dict)
        and all(k in symbols and isinstance(v, int) for k, v in e["dims"].items()) for e in specs
    ):
        raise ArtifactError(f"{path}: malformed `specializations` in the manifest; recompile the artifact")
    if manifest_digest(data) != data[DIGEST_KEY]:
        raise ArtifactError(
            f"{path}: the manifest was edited or damaged (its digest does not match its contents); "
            "recompile the artifact or copy it again"
        )
    return Manifest(path, data)


def verify_files(manifest: Manifest) -> None:
    """Every file the manifest lists exists with its recorded sha256 (checked before loading)."""
    root = manifest.path.parent
    for name, digest in sorted(manifest.data["files"].items()):
        if Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{root}: the manifest lists {name!r}, which is not a file of the artifact; recompile it")
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{root}: file {name} is missing; the artifact is incomplete, recompile it")
        if sha256(path) != digest:
            raise ArtifactError(f"{root}: file {name} is damaged (sha256 mismatch); recompile or copy the artifact again")
    for library in [manifest.data["library"], *(e["library"] for e in manifest.data.get("specializations", []))]:
        if library not in manifest.data["files"]:
            raise ArtifactError(f"{root}: the library {library} is not covered by the manifest's checksums; recompile the artifact")


def check_machine(manifest: Manifest) -> None:
    """The library runs on this CPU architecture; otherwise say which machine it is for."""
    here = platform.machine()
    want = manifest.machine
    if ARCH_ALIASES.get(here, here) != ARCH_ALIASES.get(want, want):
        raise ArtifactError(
            f"{manifest.path.parent}: built for {want} ({manifest.data['arch'].get('triple')}, target "
            f"{manifest.data['target'].get('name')}), this machine is {here}; "
            f"run it on an {want} machine or recompile with --target for this one"
        )
