"""Model: a loaded artifact you call with numpy arrays."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ember.runtime.artifact import ArtifactError, Manifest, TensorSpec, check_machine, read_manifest, verify_files

NUMPY_DTYPES = {
    "f64": "float64", "f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "i16": "int16",
    "i8": "int8", "u64": "uint64", "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "bool",
}


class RuntimeInputError(ValueError):
    """Inputs do not match the artifact (name, dtype or shape); the message says which."""

    exit_code = 2


def _np_dtype(name: str) -> np.dtype:
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(NUMPY_DTYPES[name])


def usable_cpus() -> int:
    """CPUs this process may run on (not TVM's halved guess)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_EXTRA_LOADED = False


def _load_runtime_extras(tvm: Any) -> None:
    """libtvm_runtime_extra.so registers sort/topk/random kernels; runtime-only mode skips it."""
    global _EXTRA_LOADED
    if _EXTRA_LOADED:
        return
    lib_dir = Path(tvm.__file__).parent / "lib"
    extra = lib_dir / "libtvm_runtime_extra.so"
    if extra.is_file():
        # An incomplete runtime copy: models that need sort/topk will say so when called.
        with contextlib.suppress(OSError):
            ctypes.CDLL(str(extra), mode=ctypes.RTLD_GLOBAL)
    _EXTRA_LOADED = True


def set_threads(count: int) -> None:
    """Size TVM's CPU thread pool to `count` workers sharing this process's CPUs.

    Mode -3 (threads share all listed cores) rather than TVM's default pinning, which would
    also pin the caller's own thread to one core.
    """
    import tvm

    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is None:
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    config(-3, int(count), [str(c) for c in cpus])


class Model:
    """A loaded artifact. Call with arrays by position or by input name; get {name: array}."""

    def __init__(self, manifest: Manifest, vm: Any, device: Any) -> None:
        self.manifest = manifest
        self._vm = vm
        self._device = device
        self.inputs: list[TensorSpec] = manifest.inputs
        self.outputs: list[TensorSpec] = manifest.outputs

    def _bind(self, args: tuple[Any, ...], named: Mapping[str, Any]) -> list[np.ndarray]:
        names = [s.name for s in self.inputs]
        if len(args) > len(names):
            raise RuntimeInputError(f"{len(args)} positional inputs given, the model takes {len(names)}: {names}")
        feeds = dict(zip(names, args))
        for key, value in named.items():
            if key not in names:
                raise RuntimeInputError(f"unknown input {key!r}; the model's inputs are {names}")
            if key in feeds:
                raise RuntimeInputError(f"input {key!r} given twice (by position and by name)")
            feeds[key] = value
        missing = [n for n in names if n not in feeds]
        if missing:
            raise RuntimeInputError(f"missing input(s) {missing}; the model takes {names}")
        bound: dict[str, int] = {}
        arrays = []
        for spec in self.inputs:
            array = np.asarray(feeds[spec.name])
            want = _np_dtype(spec.dtype)
            if array.dtype != want:
                raise RuntimeInputError(f"input {spec.name!r} must be {spec.dtype} ({want}), got {array.dtype}")
            if array.ndim != len(spec.shape):
                raise RuntimeInputError(f"input {spec.name!r} must have shape {spec.text()}, got {list(array.shape)}")
            for axis, (d, s) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(d, int) and d != s:
                    raise RuntimeInputError(f"input {spec.name!r} must have shape {spec.text()}, got {list(array.shape)} (axis {axis})")
                if isinstance(d, str) and bound.setdefault(d, s) != s:
                    raise RuntimeInputError(f"input {spec.name!r}: dim {d} is {s} here but {bound[d]} in another input")
            arrays.append(np.ascontiguousarray(array))
        return arrays

    def __call__(self, *args: Any, **named: Any) -> dict[str, np.ndarray]:
        """Run once; outputs by name."""
        import tvm

        arrays = self._bind(args, named)
        tensors = [tvm.runtime.tensor(a, self._device) for a in arrays]
        result = self._vm["main"](*tensors)
        outs = [result] if hasattr(result, "numpy") else list(result)
        return {spec.name: out.numpy() for spec, out in zip(self.outputs, outs)}

    def timed(self, feeds: Mapping[str, np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Latencies in seconds of `repeat` calls after `warmup` (inputs copied once)."""
        import tvm

        arrays = self._bind((), feeds)
        tensors = [tvm.runtime.tensor(a, self._device) for a in arrays]
        fn = self._vm["main"]
        for _ in range(warmup):
            fn(*tensors)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn(*tensors)
            self._device.sync()
            times.append(time.perf_counter() - start)
        return times


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Model:
    """Load an artifact: checks the manifest, checksums and CPU architecture, then the library."""
    manifest = read_manifest(path)
    verify_files(manifest)
    check_machine(manifest)
    if device != "cpu":
        raise ArtifactError(f"device {device!r}: this artifact was built for {manifest.data['target']['kind']}; use device='cpu'")
    import tvm
    from tvm.runtime import vm as tvm_vm

    _load_runtime_extras(tvm)
    set_threads(threads or usable_cpus())
    try:
        lib = tvm.runtime.load_module(str(manifest.library))
    except Exception as err:  # dlopen failures: wrong glibc, truncated file that passed checksums...
        raise ArtifactError(f"{manifest.library}: cannot load the library: {str(err).splitlines()[0]}") from None
    dev = tvm.cpu(0)
    return Model(manifest, tvm_vm.VirtualMachine(lib, dev), dev)
