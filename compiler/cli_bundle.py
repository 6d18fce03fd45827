"""`ember bundle ARTIFACT -o model-rpi4.tar.gz`: an artifact plus everything needed to run it on
the board with only Python 3 and numpy installed.

    model-rpi4/
      run                    the loader (runtime/bundle_run.py): ./run --self-check | --inputs x.npz -o y.npz | --info
      bundle.json            what it holds, sha256 of every file, and what it needs from the board
      README.txt
      artifact/              the ember artifact, unchanged (manifest, model.so, sample, reference)
      lib/libtvm_runtime.so, lib/libtvm_runtime_extra.so     TVM's runtime (no compiler)
      lib/python/tvm_ffi/    TVM's FFI: Python files, its extension for each CPython it was
                             fetched for, lib/libtvm_ffi.so
      lib/python/typing_extensions.py                        tvm_ffi's one dependency
      lib/python/ember/runtime/                              ember's artifact checks (numpy only)

The TVM runtime comes from the aarch64 wheels tools/arm_setup.sh unpacks (`--runtime DIR`
or EMBER_ARM_RUNTIME to use others) for aarch64 artifacts, and from this Python's own TVM
for artifacts built for this machine. Nothing of the compiler goes in (checked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ember.compiler.cli_artifact import reports_errors
from ember.compiler.errors import EmberError

# tvm_ffi's pieces a runtime never imports (headers, sources, build files, test libraries).
# (lib/libtvm_ffi_testing.so stays: `import tvm_ffi` loads it.)
FFI_SKIP = {"include", "src", "3rdparty", "cython", "share", "stub", "testing", "__pycache__", "CMakeLists.txt", ".gitignore"}
NUMPY_NEEDED = "1.22"  # numpy.from_dlpack
README = """\
{name}: {model} compiled by ember for {target} ({mcpu}).

  ./run --self-check                  run the bundled sample, compare with the bundled reference
  ./run --inputs x.npz -o y.npz       inputs keyed by input name ({inputs})
  ./run --info                        what this bundle needs from the board

Needs: {machine} Linux, glibc >= {glibc}, Python {pythons} with numpy >= {numpy}. Nothing to pip install.
In Python: sys.path.insert(0, "{name}/lib/python"); from ember.runtime import bundle_run
           model = bundle_run.load("{name}/artifact"); outputs = model(**feeds)
"""


@dataclass
class BundleResult:
    """What `make_bundle` wrote."""

    path: Path
    size: int  # bytes of the .tar.gz
    unpacked: int  # bytes once unpacked
    manifest: dict[str, Any]


def _arm_home() -> Path:
    return Path(os.environ.get("EMBER_ARM_HOME") or Path.home() / ".cache" / "ember" / "arm")


def runtime_site(machine: str, runtime: Path | None) -> Path:
    """The folder holding `tvm/lib/libtvm_runtime.so` and `tvm_ffi/` for `machine`."""
    from ember.targets.cross import elf_machine, host_machine

    if runtime is None and os.environ.get("EMBER_ARM_RUNTIME") and machine == "aarch64":
        runtime = Path(os.environ["EMBER_ARM_RUNTIME"])
    if runtime is None:
        if machine == host_machine():
            spec = importlib.util.find_spec("tvm_ffi")
            if spec is None or spec.origin is None:
                raise EmberError("tvm_ffi is not installed in this Python; reinstall ember")
            runtime = Path(spec.origin).parent.parent
        elif machine == "aarch64":
            runtime = _arm_home() / "site-packages"
        else:
            raise EmberError(f"no TVM runtime for {machine} boards; give one with --runtime DIR (a site-packages with tvm and tvm_ffi)")
    lib = runtime / "tvm" / "lib" / "libtvm_runtime.so"
    if not lib.is_file() or not (runtime / "tvm_ffi").is_dir():
        raise EmberError(f"no {machine} TVM runtime in {runtime} (want tvm/lib/libtvm_runtime.so and tvm_ffi/); "
                         "run `bash tools/arm_setup.sh` or give --runtime DIR")
    if elf_machine(lib) != machine:
        raise EmberError(f"{lib} is for {elf_machine(lib)}, the artifact for {machine}; give the {machine} runtime with --runtime")
    return runtime


def _copy_ffi(src: Path, dst: Path) -> list[str]:
    """tvm_ffi without headers/sources/tests; the CPython versions its extensions are for."""
    pythons: list[str] = []
    for item in src.rglob("*"):
        rel = item.relative_to(src)
        if any(part in FFI_SKIP for part in rel.parts) or item.suffix in (".pyi", ".pyc") or item.is_dir():
            continue
        match = re.fullmatch(r"core\.cpython-3(\d+)-.*\.so", rel.name)
        if match:
            pythons.append(f"3.{match.group(1)}")
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, target)
    return sorted(pythons, key=lambda v: int(v.split(".")[1]))


def _requirements(root: Path, machine: str, pythons: list[str], cpu_features: list[str]) -> dict[str, Any]:
    """What the board needs: the highest glibc/libstdc++ versions any bundled library asks for."""
    from ember.targets.cross import glibc_requirements

    versions: dict[str, list[str]] = {}
    for lib in root.rglob("*.so"):
        for key, value in glibc_requirements(lib).items():
            versions.setdefault(key, []).append(value)
    best = {k: max(v, key=lambda s: tuple(int(x) for x in s.split("."))) for k, v in versions.items()}
    return {"machine": machine, "os": "Linux", "glibc": best.get("glibc", ""), "glibcxx": best.get("glibcxx", ""),
            "python": pythons, "numpy": f">={NUMPY_NEEDED}", "cpu_features": cpu_features}


def default_output(artifact: Path, manifest: dict[str, Any]) -> Path:
    """`<model>-<board>.tar.gz` beside the artifact (arm:rpi4 -> rpi4)."""
    stem = Path(manifest["model"]["name"]).stem
    board = manifest["target"]["name"].split(",")[0].split(":")[-1]
    return artifact.parent / f"{stem}-{board}.tar.gz"


def make_bundle(artifact: str | Path, output: str | Path | None = None, runtime: Path | None = None) -> BundleResult:
    """Pack `artifact` with the TVM runtime for its machine and the loader into a .tar.gz."""
    from ember.runtime import bundle_run
    from ember.runtime.artifact import ArtifactError, read_manifest, verify_files
    from ember.runtime.artifact import sha256 as sha256_file

    artifact = Path(artifact)
    try:
        manifest = read_manifest(artifact)
        verify_files(manifest)
    except ArtifactError as err:
        raise EmberError(str(err)) from None
    data = manifest.data
    out = Path(output) if output is not None else default_output(artifact, data)
    name = out.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar") or "bundle"
    site = runtime_site(manifest.machine, runtime)
    import ember.runtime

    with tempfile.TemporaryDirectory(prefix=".ember-bundle-", dir=out.parent if out.parent.exists() else None) as tmp:
        root = Path(tmp) / name
        (root / "lib" / "python" / "ember").mkdir(parents=True)
        shutil.copytree(artifact, root / "artifact", ignore=shutil.ignore_patterns(".*"))
        for lib in ("libtvm_runtime.so", "libtvm_runtime_extra.so"):
            if (site / "tvm" / "lib" / lib).is_file():
                shutil.copy2(site / "tvm" / "lib" / lib, root / "lib" / lib)
        pythons = _copy_ffi(site / "tvm_ffi", root / "lib" / "python" / "tvm_ffi")
        extensions = importlib.util.find_spec("typing_extensions")
        typing_ext = site / "typing_extensions.py"
        if not typing_ext.is_file() and extensions is not None and extensions.origin:
            typing_ext = Path(extensions.origin)
        shutil.copy2(typing_ext, root / "lib" / "python" / "typing_extensions.py")
        shutil.copytree(Path(ember.runtime.__file__).parent, root / "lib" / "python" / "ember" / "runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(bundle_run.__file__, root / "run")
        (root / "run").chmod(0o755)
        forbidden = [p for p in root.rglob("*") if p.name == "libtvm_compiler.so" or p.parts[-2:] == ("ember", "compiler")]
        if forbidden:
            raise EmberError(f"internal: the bundle would contain the compiler ({forbidden[0]})")
        target = data["target"]
        requires = _requirements(root, manifest.machine, pythons, list(target.get("cpu_features", [])))
        inputs = ", ".join(f"{d['name']}: {d['dtype']}{d['shape']}" for d in data["inputs"])
        (root / "README.txt").write_text(README.format(
            name=name, model=data["model"]["name"], target=target["name"], mcpu=target.get("mcpu", ""), inputs=inputs,
            machine=requires["machine"], glibc=requires["glibc"], pythons=" or ".join(pythons), numpy=NUMPY_NEEDED))
        files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
        bundle = {
            "format": "ember-bundle", "format_version": 1, "model": data["model"]["name"],
            "ember_version": data.get("ember_version"), "tvm_version": data.get("tvm_version"),
            "target": {k: target.get(k) for k in ("name", "kind", "triple", "mcpu", "features", "qemu_cpu")},
            "requires": requires, "files": files, "unpacked_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        }
        (root / bundle_run.BUNDLE_MANIFEST).write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
        part = Path(tmp) / "bundle.tar.gz"
        with tarfile.open(part, "w:gz", compresslevel=9) as tar:
            tar.add(root, arcname=name, filter=_normalize)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), out)
    return BundleResult(out, out.stat().st_size, bundle["unpacked_bytes"], bundle)


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner-neutral entries (the board's user owns what it unpacks)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def list_bundle(path: Path) -> list[str]:
    """Member names of a bundle (for tests and `--list`)."""
    with tarfile.open(path) as tar:
        return tar.getnames()


@click.command()
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="bundle file (default: <model>-<board>.tar.gz beside the artifact)")
@click.option("--runtime", type=click.Path(file_okay=False, path_type=Path),
              help="site-packages holding the board's tvm/lib and tvm_ffi (default: tools/arm_setup.sh's for aarch64)")
@reports_errors
def bundle(artifact: Path, output: Path | None, runtime: Path | None) -> None:
    """Pack an artifact with TVM's runtime and a loader: runs on the board with Python 3 + numpy.

    \b
    Example:
      ember compile examples/digits_cnn.onnx -o digits-rpi4.ember --target arm:rpi4
      ember bundle digits-rpi4.ember -o digits-rpi4.tar.gz
      # on the board:
      tar xzf digits-rpi4.tar.gz && cd digits-rpi4 && ./run --self-check
    """
    result = make_bundle(artifact, output, runtime)
    needs = result.manifest["requires"]
    click.echo(f"wrote {result.path} ({result.size / 1e6:.2f} MB, {result.unpacked / 1e6:.2f} MB unpacked)")
    click.echo(f"board needs: {needs['machine']} Linux, glibc >= {needs['glibc']}, Python {' or '.join(needs['python'])} "
               f"with numpy {needs['numpy']}; CPU features {', '.join(needs['cpu_features']) or 'base ISA'}")


COMMANDS = (bundle,)
