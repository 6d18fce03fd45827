#!/usr/bin/env python3
"""Run an ember artifact with nothing but Python 3, numpy and TVM's runtime libraries.

This file is the `run` script of a deploy bundle (`ember bundle ARTIFACT -o model.tar.gz`):

    tar xzf model-rpi4.tar.gz && cd model-rpi4
    ./run --self-check                  # files' checksums, then bundled sample vs bundled reference
    ./run --inputs x.npz -o y.npz       # inputs keyed by input name
    ./run --info                        # what the bundle holds and needs

It imports numpy, the standard library, `tvm_ffi` (TVM's FFI: a small Python package and
libtvm_ffi.so) and `ember.runtime`'s artifact/manifest checks; it loads libtvm_runtime.so
(the Relax VM) and libtvm_runtime_extra.so (sort/topk/random kernels) with ctypes, never the
`tvm` Python package or the compiler. Before loading the library it checks the machine: CPU
architecture, glibc and Python versions, and the ISA features the code was built for (an
artifact built for a core with dotprod or SVE is refused on a core without them, instead of
dying with SIGILL). `EMBER_SKIP_CPU_CHECK=1` skips the ISA check.

From Python on the board (the same module is in the bundle's lib/python):

    sys.path.insert(0, "model-rpi4/lib/python")
    from ember.runtime import bundle_run
    model = bundle_run.load("model-rpi4/artifact")     # an ember.runtime Model: model(**feeds)

Outside a bundle (ember's own tests, `ember compile` checking a cross build under qemu):
`python bundle_run.py --artifact ART ...` with `tvm_ffi` and `ember.runtime` importable and
the runtime libraries next to `tvm_ffi` (`.../tvm/lib`) or in `EMBER_TVM_LIB_DIR`.
Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUNDLE_MANIFEST = "bundle.json"
# TVM allocates every tensor 64-byte aligned (kAllocAlignment) and its compiled kernels rely on
# it: LLVM emits aligned vector loads (vmovaps) on their parameters, which fault on anything less.
ALIGNMENT = 64

# AArch64 ISA features as LLVM names them -> (AT_HWCAP word, bit) as Linux reports them.
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAPS = {
    "fp-armv8": (AT_HWCAP, 0), "neon": (AT_HWCAP, 1), "aes": (AT_HWCAP, 3), "sha2": (AT_HWCAP, 6),
    "crc": (AT_HWCAP, 7), "lse": (AT_HWCAP, 8), "fullfp16": (AT_HWCAP, 9), "rdm": (AT_HWCAP, 12),
    "jsconv": (AT_HWCAP, 13), "complxnum": (AT_HWCAP, 14), "rcpc": (AT_HWCAP, 15), "ccpp": (AT_HWCAP, 16),
    "sha3": (AT_HWCAP, 17), "sm4": (AT_HWCAP, 19), "dotprod": (AT_HWCAP, 20), "sve": (AT_HWCAP, 22),
    "fp16fml": (AT_HWCAP, 23), "dit": (AT_HWCAP, 24), "flagm": (AT_HWCAP, 27), "ssbs": (AT_HWCAP, 28),
    "sb": (AT_HWCAP, 29), "sve2": (AT_HWCAP2, 1), "i8mm": (AT_HWCAP2, 13), "bf16": (AT_HWCAP2, 14),
}


class BundleError(Exception):
    """The bundle cannot run here; the message says why and what to do."""

    exit_code = 2


def _bundle_paths() -> None:
    """Inside a bundle: its Python packages first on sys.path."""
    python = HERE / "lib" / "python"
    if python.is_dir() and str(python) not in sys.path:
        sys.path.insert(0, str(python))


def read_bundle_manifest() -> dict[str, Any]:
    """bundle.json beside this script ({} outside a bundle)."""
    path = HERE / BUNDLE_MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BundleError(f"{path}: damaged ({err}); unpack the bundle again") from None


def verify_bundle(bundle: dict[str, Any]) -> None:
    """Every file bundle.json lists is present with its sha256 (a copy damaged in transit)."""
    import hashlib

    for name, digest in sorted(bundle.get("files", {}).items()):
        path = HERE / name
        if ".." in Path(name).parts or not path.is_file():
            raise BundleError(f"{path}: missing from the bundle; unpack it again")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != digest:
            raise BundleError(f"{path}: damaged (sha256 mismatch); copy and unpack the bundle again")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".") if x.isdigit())


def glibc_version() -> str:
    """This machine's glibc version ("" when not glibc)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    return text.split()[-1] if text.startswith("glibc") else ""


def check_board(bundle: dict[str, Any]) -> None:
    """The machine meets the bundle's requirements (architecture, glibc, Python)."""
    needs = bundle.get("requires", {})
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine(), platform.machine())
    if needs.get("machine") and needs["machine"] != machine:
        raise BundleError(f"this bundle is for {needs['machine']} boards, this machine is {machine}; "
                          f"copy it to an {needs['machine']} board or bundle an artifact compiled for this one")
    glibc = glibc_version()
    if needs.get("glibc") and (not glibc or _version(glibc) < _version(needs["glibc"])):
        raise BundleError(f"the bundled TVM runtime needs glibc >= {needs['glibc']}, this machine has "
                          f"{glibc or 'no glibc'}; use a newer OS image (Raspberry Pi OS bookworm, Ubuntu 20.04+)")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    pythons = needs.get("python", [])
    if pythons and here not in pythons:
        raise BundleError(f"this bundle carries TVM's Python extension for CPython {', '.join(pythons)}, "
                          f"this is Python {here}; run it with one of those (e.g. python3.11 ./run ...)")


def cpu_lacks(features: list[str]) -> list[str]:
    """The features (LLVM names) this CPU's Linux HWCAPs do not report; [] off aarch64 Linux."""
    if platform.machine() not in ("aarch64", "arm64") or not features:
        return []
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return []
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    words = {AT_HWCAP: getauxval(AT_HWCAP), AT_HWCAP2: getauxval(AT_HWCAP2)}
    return [f for f in features if f in HWCAPS and not (words[HWCAPS[f][0]] >> HWCAPS[f][1]) & 1]


def check_cpu(bundle: dict[str, Any]) -> None:
    """Refuse before loading when the code was built for ISA features this CPU lacks."""
    if os.environ.get("EMBER_SKIP_CPU_CHECK") == "1":
        return
    missing = cpu_lacks(bundle.get("requires", {}).get("cpu_features", []))
    if missing:
        target = bundle.get("target", {})
        raise BundleError(
            f"this CPU lacks {', '.join(missing)}, which the model was compiled to use "
            f"(target {target.get('name')}, core {target.get('mcpu')}); running it would die with SIGILL. "
            "Recompile for this board's core (e.g. --target arm:rpi4 or arm:aarch64) "
            "or set EMBER_SKIP_CPU_CHECK=1 to try anyway")


def runtime_lib_dir(tvm_ffi: Any) -> Path:
    """Where libtvm_runtime.so lives: the bundle's lib/, EMBER_TVM_LIB_DIR, or the tvm wheel's."""
    candidates = [HERE / "lib"]
    if os.environ.get("EMBER_TVM_LIB_DIR"):
        candidates.insert(0, Path(os.environ["EMBER_TVM_LIB_DIR"]))
    ffi_parent = Path(tvm_ffi.__file__).resolve().parent.parent
    candidates += [ffi_parent.parent, ffi_parent / "tvm" / "lib"]  # a bundle's lib/ (from lib/python), a wheel's
    for folder in candidates:
        if (folder / "libtvm_runtime.so").is_file():
            return folder
    raise BundleError(f"libtvm_runtime.so not found (looked in {', '.join(map(str, candidates))}); "
                      "unpack the bundle again or set EMBER_TVM_LIB_DIR")


def aligned(array: Any) -> Any:
    """`array` C-contiguous at an ALIGNMENT-byte boundary: itself when it already is, else a copy.

    `tvm_ffi.from_dlpack` wraps a numpy array's memory as it is, and numpy only aligns to 16
    bytes; the `tvm` package's loader never hits this because `tvm.runtime.tensor` copies into
    TVM's own (aligned) memory.
    """
    import numpy as np

    array = np.asarray(array)
    shape = array.shape
    array = np.ascontiguousarray(array)
    if array.size == 0 or array.ctypes.data % ALIGNMENT == 0:  # (no data, nothing to load)
        return array.reshape(shape)
    buf = np.empty(array.nbytes + ALIGNMENT, np.uint8)
    start = -buf.ctypes.data % ALIGNMENT
    out = buf[start:start + array.nbytes].view(array.dtype).reshape(shape)
    out[...] = array.reshape(shape)
    return out


def to_tensor(tvm_ffi: Any, array: Any) -> Any:
    """A tvm_ffi tensor over `array`'s data (copied first when not aligned as TVM's kernels need)."""
    return tvm_ffi.from_dlpack(aligned(array))


_RUNTIME: dict[str, Any] = {}


def load_tvm_runtime() -> Any:
    """Import tvm_ffi and load TVM's runtime libraries (once); the tvm_ffi module."""
    if "ffi" in _RUNTIME:
        return _RUNTIME["ffi"]
    _bundle_paths()
    try:
        import tvm_ffi
    except ImportError as err:
        hint = (f"the bundle has no tvm_ffi extension for Python {platform.python_version()}" if "core" in str(err)
                else "the bundle is incomplete; unpack it again")
        raise BundleError(f"cannot import tvm_ffi ({err}); {hint}") from None
    folder = runtime_lib_dir(tvm_ffi)
    for name, needed in (("libtvm_runtime.so", True), ("libtvm_runtime_extra.so", False)):
        path = folder / name
        if not path.is_file() and not needed:
            continue  # only models with sort/topk/random kernels need it; they fail naming the function
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise BundleError(f"cannot load {path}: {err}") from None
    _RUNTIME["ffi"] = tvm_ffi
    return tvm_ffi


def set_threads(tvm_ffi: Any, count: int) -> None:
    """TVM's CPU pool: `count` workers sharing this process's CPUs (as ember.runtime does)."""
    config = tvm_ffi.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is None:
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    config(-3, int(count), [str(c) for c in cpus])


def load(artifact: str | Path, threads: int | None = None) -> Any:
    """Load an artifact through tvm_ffi: an ember.runtime Model (same checks, same calls)."""
    _bundle_paths()
    import numpy as np

    from ember.runtime.artifact import ArtifactError, check_machine, read_manifest, verify_files
    from ember.runtime.model import Model, ModelRunError, quiet_tvm_scope_logs, usable_cpus

    manifest = read_manifest(artifact)
    verify_files(manifest)
    check_machine(manifest)
    if manifest.device != "cpu":
        raise ArtifactError(f"{manifest.path.parent}: built for {manifest.device}; this runner runs CPU artifacts only")
    tvm_ffi = load_tvm_runtime()
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    set_threads(tvm_ffi, threads or usable_cpus())
    vms = []
    for path in [manifest.library, *(spec.library for spec in manifest.specializations)]:
        try:
            with quiet_tvm_scope_logs():  # TVM logs one "Scope Loaded" warning per kernel
                vm = tvm_ffi.load_module(str(path))["vm_load_executable"]()
            vm["vm_initialization"](1, 0, 2)  # kDLCPU, device 0, pooled allocator
        except Exception as err:  # dlopen failures: wrong glibc, a file damaged after the checksums...
            raise ArtifactError(f"{path}: cannot load the library: {str(err).strip().splitlines()[0]}") from None
        vms.append(vm)

    class FfiModel(Model):
        """ember.runtime's Model over tvm_ffi tensors (DLPack both ways) instead of `tvm`."""

        def _pool_setup(self) -> None:
            set_threads(tvm_ffi, self._threads)

        def _tensors(self, args: tuple[Any, ...], named: Any) -> list[Any]:
            return [to_tensor(tvm_ffi, a) for a in self._bind(args, named)]

        def __call__(self, *args: Any, **named: Any) -> dict[str, Any]:
            result = self._invoke(self._tensors(args, named))
            outs = [result] if hasattr(result, "__dlpack__") else list(result)
            if len(outs) != len(self.outputs):
                raise ModelRunError(f"the library returned {len(outs)} outputs, the manifest lists {len(self.outputs)}")
            return {spec.name: np.array(np.from_dlpack(out), copy=True) for spec, out in zip(self.outputs, outs)}

        def runner(self, feeds: Any) -> Any:
            tensors = self._tensors((), feeds)  # the CPU runs synchronously: nothing to wait for
            vm = self.variant([t.shape for t in tensors])[0]
            return lambda: self._invoke(tensors, vm)

    return FfiModel(manifest, vms[0], None, list(zip(manifest.specializations, vms[1:])), threads)


def run_library(library: Path, inputs: Path, output: Path, order: list[str], names: list[str]) -> int:
    """Run a bare library's `main` on inputs (in `order`) and save outputs under `names`."""
    import numpy as np

    tvm_ffi = load_tvm_runtime()
    feeds = _npz(inputs)
    vm = tvm_ffi.load_module(str(library))["vm_load_executable"]()
    vm["vm_initialization"](1, 0, 2)
    result = vm["main"](*[to_tensor(tvm_ffi, feeds[n]) for n in order])
    outs = [result] if hasattr(result, "__dlpack__") else list(result)
    np.savez(output, **{n: np.array(np.from_dlpack(o), copy=True) for n, o in zip(names, outs)})
    return 0


def _npz(path: Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def info(bundle: dict[str, Any], artifact: Path) -> None:
    """Print what the bundle holds and needs."""
    needs = bundle.get("requires", {})
    target = bundle.get("target", {})
    print(f"artifact: {artifact}  model {bundle.get('model', '?')}  target {target.get('name', '?')} "
          f"({target.get('mcpu', '?')} {' '.join(target.get('features', []))})")
    if needs:
        print(f"needs: {needs.get('machine')} Linux, glibc >= {needs.get('glibc')}, "
              f"libstdc++ GLIBCXX >= {needs.get('glibcxx')}, Python {' or '.join(needs.get('python', []))} with numpy; "
              f"CPU features {', '.join(needs.get('cpu_features', [])) or 'none beyond the base ISA'}")
    print(f"this machine: {platform.machine()}, glibc {glibc_version() or '?'}, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    parser = argparse.ArgumentParser(prog="run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=HERE / "artifact", help="artifact directory (default: the bundle's)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--self-check", action="store_true", help="run the bundled sample against the bundled reference")
    mode.add_argument("--inputs", type=Path, help=".npz keyed by input name")
    mode.add_argument("--info", action="store_true", help="what the bundle holds and what it needs from the board")
    parser.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every CPU this process may use)")
    parser.add_argument("--repeat", type=int, default=0, help="also time N runs (after one warm-up) and print the median")
    # ember's own checks of a fresh cross build (no manifest yet): the bare library.
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input-order", default="", help=argparse.SUPPRESS)
    parser.add_argument("--output-names", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.library is not None:
            return run_library(args.library, args.inputs, args.output, args.input_order.split(","),
                               args.output_names.split(","))
        bundle = read_bundle_manifest()
        if args.info:
            info(bundle, args.artifact)
            return 0
        if args.self_check:
            verify_bundle(bundle)
        check_board(bundle)
        check_cpu(bundle)
        model = load(args.artifact, threads=args.threads)
        feeds = _npz(model.manifest.path.parent / "sample.npz" if args.self_check else args.inputs)
        if args.repeat > 0:
            times = sorted(model.timed(feeds, warmup=1, repeat=args.repeat))
            print(f"latency: median {times[len(times) // 2] * 1e3:.2f} ms over {len(times)} runs "
                  f"(min {times[0] * 1e3:.2f} ms)")
        if args.self_check:
            rows = model.self_check()
            for row in rows:
                print(f"  {row.text()}")
            ok = all(row.ok for row in rows)
            print("self-check passed" if ok else "self-check FAILED: outputs differ from the reference beyond tolerance")
            return 0 if ok else 1
        import numpy as np

        outputs = model(**feeds)
        if args.output is not None:
            np.savez(args.output, **outputs)
            print(f"wrote {args.output}")
        else:
            for name, value in outputs.items():
                print(f"{name}: {value.dtype}{list(value.shape)}")
        return 0
    except Exception as err:  # one line, never a traceback: ArtifactError, RuntimeInputError, ModelRunError, ...
        print(f"error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 1))


if __name__ == "__main__":
    sys.exit(main())
