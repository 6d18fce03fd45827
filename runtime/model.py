"""Model: a loaded artifact you call with numpy arrays."""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ember.runtime.artifact import (
    ArtifactError,
    Manifest,
    Specialization,
    TensorSpec,
    check_machine,
    read_manifest,
    verify_files,
)
from ember.runtime.check import Comparison, compare

log = logging.getLogger(__name__)

NUMPY_DTYPES = {
    "f64": "float64", "f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "i16": "int16",
    "i8": "int8", "u64": "uint64", "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "bool",
}


class RuntimeInputError(ValueError):
    """Inputs do not match the artifact (name, dtype or shape); the message says which."""

    exit_code = 2


class ModelRunError(RuntimeError):
    """The compiled code failed while running (TVM's VM raised); the message says where."""

    exit_code = 1


class DimCheck:
    """One of the manifest's `dim_checks`: a dim expression over the input dims (`S-3`) that
    the compiled shapes assume is >= 0, and the value and op it sizes. Only integer constants,
    input dim names, + - * // % and parentheses are taken; anything else in a manifest is
    ignored (never evaluated)."""

    _ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant, ast.Add, ast.Sub,
                ast.Mult, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd)

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.dim, self.value, self.op = str(entry.get("dim", "")), str(entry.get("value", "")), str(entry.get("op", ""))
        self.names: tuple[str, ...] = ()
        self._code: Any = None
        try:
            tree = ast.parse(self.dim, mode="eval")
        except SyntaxError:
            return
        nodes = list(ast.walk(tree))
        if all(isinstance(n, self._ALLOWED) for n in nodes) and all(
                type(n.value) is int for n in nodes if isinstance(n, ast.Constant)):
            self.names = tuple(sorted({n.id for n in nodes if isinstance(n, ast.Name)}))
            self._code = compile(tree, "<dim>", "eval")

    def evaluate(self, dims: Mapping[str, int]) -> int | None:
        """The expression's value at these input dims (None when it cannot be evaluated)."""
        if self._code is None or any(n not in dims for n in self.names):
            return None
        try:
            return int(eval(self._code, {"__builtins__": {}}, {n: int(dims[n]) for n in self.names}))  # (an AST checked above)
        except ZeroDivisionError:
            return None


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
        try:
            ctypes.CDLL(str(extra), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            # Only models with sort/topk/random kernels need it; they fail naming the function.
            log.warning("could not load %s (%s); models that use sort/topk/random will fail", extra, err)
    _EXTRA_LOADED = True


def set_threads(count: int) -> None:
    """Size TVM's CPU thread pool to `count` workers sharing this process's CPUs.

    Mode -3 (threads share all listed cores) rather than TVM's default pinning, which would
    also pin the caller's own thread to one core.
    """
    import tvm

    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is None:
        log.warning("this TVM runtime cannot size its thread pool; it picks its own thread count")
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    config(-3, int(count), [str(c) for c in cpus])


@contextlib.contextmanager
def quiet_tvm_scope_logs() -> Iterator[None]:
    """Drop TVM's "Scope Saving/Loaded" lines (one per kernel, logged as warnings by its VM
    executable's save/load) from stderr; every other line written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if b"Warning: Scope Loaded:" not in line and b"Warning: Scope Saving:" not in line]
            if kept:
                sys.stderr.write(b"".join(kept).decode(errors="replace"))
                sys.stderr.flush()


# A model with a run-time Loop recurses in the VM once per iteration, about 3 KB of C stack
# each (measured): the main thread's 8 MB ends near 2,500 iterations in a segfault. Such a
# model runs on one thread of its own with this stack (virtual memory: only what the
# recursion touches is used), enough for ~170,000 iterations.
LOOP_STACK_BYTES = 512 << 20


class DeepStack:
    """One long-lived thread with a LOOP_STACK_BYTES stack that runs calls handed to it;
    `setup` runs on it first (TVM's thread pool belongs to the thread that launches kernels:
    size this thread's like the caller's)."""

    def __init__(self, setup: Callable[[], None]) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future]] = queue.Queue()
        old = threading.stack_size(LOOP_STACK_BYTES)
        try:
            self._thread = threading.Thread(target=self._serve, args=(setup,), name="ember-vm", daemon=True)
            self._thread.start()
        finally:
            threading.stack_size(old)

    def _serve(self, setup: Callable[[], None]) -> None:
        try:
            setup()
        except Exception as err:  # (a pool left at TVM's default still runs)
            log.warning("could not size the loop thread's pool: %s", err)
        while True:
            fn, args, future = self._jobs.get()
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed back to the caller
                future.set_exception(err)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the deep-stack thread; its result, or its exception raised here."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, args, future))
        return future.result()


def has_run_time_loops(build_stats: Mapping[str, Any]) -> bool:
    """Whether a build (its manifest's build_stats) holds a loop the VM runs by recursion."""
    return bool(build_stats.get("run_time_loops"))


class Model:
    """A loaded artifact. Call with arrays by position or by input name; get {name: array}."""

    def __init__(self, manifest: Manifest, vm: Any, device: Any,
                 specialized: Sequence[tuple[Specialization, Any]] = (), threads: int | None = None) -> None:
        self.manifest = manifest
        self._vm = vm
        self._device = device
        self._specialized = list(specialized)  # (specialization, its VM), tried in order
        self.inputs: list[TensorSpec] = manifest.inputs
        self.outputs: list[TensorSpec] = manifest.outputs
        self._threads = threads or usable_cpus()
        self._loops = has_run_time_loops(manifest.data.get("build_stats", {}))
        self._deep: DeepStack | None = None  # made on the first call of a model with loops
        self._dim_checks = [DimCheck(e) for e in manifest.data.get("dim_checks", []) if isinstance(e, Mapping)]
        self._dims_ok: tuple[tuple[str, int], ...] | None = None  # the last input dims that passed them

    def _pool_setup(self) -> None:
        """Size the calling thread's TVM pool (run on the deep-stack thread)."""
        set_threads(self._threads)

    def dims(self, shapes: Sequence[Sequence[int]]) -> dict[str, int]:
        """The symbolic dims' values for inputs of these shapes (in input order)."""
        return {d: int(shape[axis]) for spec, shape in zip(self.inputs, shapes)
                for axis, d in enumerate(spec.shape) if isinstance(d, str) and axis < len(shape)}

    def variant(self, shapes: Sequence[Sequence[int]]) -> tuple[Any, Specialization | None]:
        """The VM that runs inputs of these shapes: the first specialization whose dims they
        match, else the generic library's; and that specialization (None for the generic)."""
        if self._specialized:
            dims = self.dims(shapes)
            for spec, vm in self._specialized:
                if spec.matches(dims):
                    return vm, spec
        return self._vm, None

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
            arrays.append(np.asarray(array, order="C"))  # (ascontiguousarray makes a 0-d input 1-d)
        self._check_dims(bound)
        return arrays

    def _check_dims(self, bound: Mapping[str, int]) -> None:
        """Refuse input dims that make a value's dim negative (DimCheck), once per new set of dims."""
        if not self._dim_checks:
            return
        key = tuple(sorted(bound.items()))
        if key == self._dims_ok:
            return
        for check in self._dim_checks:
            size = check.evaluate(bound)
            if size is not None and size < 0:
                given = ", ".join(f"{n}={bound[n]}" for n in check.names)
                raise RuntimeInputError(
                    f"input sizes outside what this model indexes: with {given}, {check.op} output {check.value!r} "
                    f"would be {check.dim} = {size} long. Its shapes were compiled assuming {check.dim} >= 0 (as "
                    "onnxruntime's shape inference does); give inputs of sizes that fit")
        self._dims_ok = key

    def _tensors(self, args: tuple[Any, ...], named: Mapping[str, Any]) -> list[Any]:
        import tvm

        return [tvm.runtime.tensor(a, self._device) for a in self._bind(args, named)]

    def _invoke(self, tensors: list[Any], vm: Any = None) -> Any:
        if vm is None:
            vm = self.variant([t.shape for t in tensors])[0]
        try:
            if self._loops:
                if self._deep is None:
                    self._deep = DeepStack(self._pool_setup)
                return self._deep.call(vm["main"], *tensors)
            return vm["main"](*tensors)
        except Exception as err:  # TVM's VM raises its own error types; keep the message, not the trace
            lines = [line for line in str(err).strip().splitlines() if line.strip()]
            raise ModelRunError(f"{self.manifest.path.parent}: the model failed while running: "
                                f"{type(err).__name__}: {lines[0].strip() if lines else ''}") from None

    def __call__(self, *args: Any, **named: Any) -> dict[str, np.ndarray]:
        """Run once on arrays given by position and/or input name; outputs by name."""
        result = self._invoke(self._tensors(args, named))
        outs = [result] if hasattr(result, "numpy") else list(result)
        if len(outs) != len(self.outputs):
            raise ModelRunError(f"the library returned {len(outs)} outputs, the manifest lists {len(self.outputs)}; "
                                "recompile the artifact")
        return {spec.name: out.numpy() for spec, out in zip(self.outputs, outs)}

    def self_check(self, rtol: float | None = None, atol: float | None = None) -> list[Comparison]:
        """Run the bundled sample and compare with the bundled reference outputs.

        Tolerances default to the ones the compiler recorded in the manifest.
        """
        root = self.manifest.path.parent
        with np.load(root / "sample.npz") as data:
            sample = {k: data[k] for k in data.files}
        with np.load(root / "reference.npz") as data:
            reference = {k: data[k] for k in data.files}
        tolerance = self.manifest.data.get("tolerance", {})
        return compare(self(**sample), reference, [s.name for s in self.outputs],
                       rtol=tolerance.get("rtol", 1e-3) if rtol is None else rtol,
                       atol=tolerance.get("atol", 1e-4) if atol is None else atol)

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A zero-argument function that runs the model once on `feeds`, copied to the device
        once here, and waits for the device (for timing loops; outputs stay on the device)."""
        tensors = self._tensors((), feeds)
        vm = self.variant([t.shape for t in tensors])[0]

        def run_once() -> None:
            self._invoke(tensors, vm)
            self._device.sync()

        return run_once

    def timed(self, feeds: Mapping[str, np.ndarray], warmup: int, repeat: int) -> list[float]:
        """Latencies in seconds of `repeat` calls after `warmup` (inputs copied to the device once)."""
        if repeat < 1 or warmup < 0:
            raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
        run_once = self.runner(feeds)
        for _ in range(warmup):
            run_once()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run_once()
            times.append(time.perf_counter() - start)
        return times


_LOADED: dict[Path, str] = {}  # library path -> sha256 of what was loaded from it in this process
_COPIES: Path | None = None  # where a library that replaced one loaded before is linked or copied


def _fresh(path: Path, digest: str) -> Path:
    """A path dlopen will load this library's current content from. dlopen hands back the
    library already loaded from the same file name (symlinks resolved), so an artifact
    recompiled in place and loaded again in one process ran the old code, silently: the second
    load of a path whose content changed goes through a hard link (a copy across file systems)
    named by the content."""
    global _COPIES
    path = path.resolve()
    if _LOADED.setdefault(path, digest) == digest:
        return path
    import atexit
    import shutil
    import tempfile

    if _COPIES is None:
        _COPIES = Path(tempfile.mkdtemp(prefix="ember-libs-"))
        atexit.register(shutil.rmtree, _COPIES, True)
    fresh = _COPIES / f"{digest[:32]}-{path.name}"
    if not fresh.exists():
        try:
            fresh.hardlink_to(path)
        except OSError:
            shutil.copyfile(path, fresh)
    return fresh


def load(path: str | Path, device: str | None = None, threads: int | None = None) -> Model:
    """Load an artifact: checks the manifest, checksums and CPU architecture, then the library.

    `device`: where to run ("cpu"); by default the device the artifact was built for.
    `threads`: CPU threads for TVM's pool; by default every CPU this process may run on
    (TVM's own default halves the count on x86). The pool is process-wide: the last load
    (or `set_threads`) decides for every model in the process.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    manifest = read_manifest(path)
    verify_files(manifest)
    check_machine(manifest)
    device = device or manifest.device
    if device != manifest.device:
        raise ArtifactError(
            f"device {device!r}: {manifest.path.parent} was built for {manifest.device} "
            f"(target {manifest.data['target'].get('name')}); use device={manifest.device!r} or recompile"
        )
    if device != "cpu":
        raise ArtifactError(f"device {device!r}: this runtime runs CPU artifacts only so far")
    import tvm
    from tvm.runtime import vm as tvm_vm

    _load_runtime_extras(tvm)
    set_threads(threads or usable_cpus())
    libraries = [manifest.library, *(spec.library for spec in manifest.specializations)]
    loaded = []
    for path in libraries:
        try:
            with quiet_tvm_scope_logs():
                loaded.append(tvm.runtime.load_module(str(_fresh(path, manifest.data["files"][path.name]))))
        except Exception as err:  # dlopen failures: wrong glibc, truncated file that passed checksums...
            raise ArtifactError(f"{path}: cannot load the library: {str(err).splitlines()[0]}") from None
    lib, specialized = loaded[0], list(zip(manifest.specializations, loaded[1:]))
    dev = tvm.cpu(0)
    return Model(manifest, tvm_vm.VirtualMachine(lib, dev), dev,
                 [(spec, tvm_vm.VirtualMachine(library, dev)) for spec, library in specialized], threads)
