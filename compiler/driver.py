"""The driver: ONNX file -> imported graph -> pass pipeline -> build -> artifact directory.

    compile_model("m.onnx", "m.ember", target="cpu", verify=True)

Steps: import; run the pass pipeline (`passes` text, default pipeline otherwise); build for
the target; run the built module on a sample (fixed seed, symbolic dims = 1, or the caller's)
and compare it with the reference interpreter's outputs on the original graph (and, with
`verify`, with onnxruntime's, graph optimizations off); only then write the artifact.

The artifact is written into a temporary directory beside the destination, fsynced, and
renamed into place only when complete, so a failed compile never leaves something that looks
valid. An existing destination is replaced only if it is an ember artifact (or empty).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.compiler import __version__, interp
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_model
from ember.compiler.ir import Graph, Value
from ember.runtime.artifact import DIGEST_KEY, FORMAT_VERSION, MANIFEST, manifest_digest, sha256
from ember.runtime.check import TOLERANCE, Comparison, OutputMismatchError, compare
from ember.runtime.model import DeepStack, has_run_time_loops, quiet_tvm_scope_logs, set_threads, usable_cpus

if TYPE_CHECKING:
    from ember.targets.tune import TuneOptions

log = logging.getLogger(__name__)

LIBRARY = "model.so"


@dataclass
class CompileResult:
    """What a compile produced: where, the optimized graph, its kernels, timings, pass records."""

    path: Path
    graph: Graph
    kernels: tuple[str, ...]
    launches: int
    seconds: dict[str, float] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def _spec(value: Value) -> dict[str, Any]:
    return {"name": value.name, "dtype": value.type.dtype, "shape": [d if isinstance(d, int) else str(d) for d in value.type.shape]}


def run_passes(graph: Graph, passes: str | None, options: Mapping[str, Any]) -> tuple[Graph, list[Any], str]:
    """Run `passes` (pipeline text; None = the default pipeline): (graph, records, pipeline text)."""
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE, parse_pipeline, pipeline_text

    pipeline = parse_pipeline(passes) if passes is not None else DEFAULT_PIPELINE
    result = run_pipeline(graph, pipeline, **options)
    return result.graph, list(result.records), pipeline_text(pipeline)


_DEEP: DeepStack | None = None


def _deep_stack() -> DeepStack:
    """The compile's one deep-stack thread (for checking builds with run-time loops)."""
    global _DEEP
    if _DEEP is None:
        _DEEP = DeepStack(lambda: set_threads(usable_cpus()))
    return _DEEP


def run_built(built: Any, graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a freshly built module (before export) on feeds; outputs by name."""
    import tvm
    from tvm.runtime import vm as tvm_vm

    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    try:
        args = [tvm.runtime.tensor(np.asarray(feeds[v.name], order="C")) for v in graph.inputs]
        # (a model with run-time loops: the VM recurses per iteration, on a thread with a deep stack)
        run = _deep_stack().call if has_run_time_loops(built.stats) else (lambda fn, *xs: fn(*xs))
        result = run(vm["main"], *args)
    except Exception as err:
        raise EmberError(f"the built module failed on the sample inputs: {type(err).__name__}: {str(err).strip().splitlines()[0]}") from None
    outs = [result] if hasattr(result, "numpy") else list(result)
    return {v.name: o.numpy() for v, o in zip(graph.output_values, outs)}


def onnxruntime_outputs(model: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs with graph optimizations off (the reference, not a peer)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EmberError("onnxruntime is not installed; `pip install onnxruntime` to verify against it") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds))))
    except Exception as err:  # onnxruntime's pybind errors (NoSuchFile, InvalidProtobuf, InvalidArgument...)
        raise EmberError(f"onnxruntime could not run {model}: {str(err).strip().splitlines()[0]}") from None


def checked(rows: list[Comparison], what: str, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Echo each comparison; EmberError naming the outputs beyond tolerance; the manifest's form."""
    echo(f"compare with {what}:")
    for row in rows:
        echo(f"  {row.text()}")
    bad = [row.name for row in rows if not row.ok]
    if bad:
        raise EmberError(f"outputs {bad} differ from {what} beyond tolerance; no artifact written")
    return [{"name": r.name, "max_abs": r.max_abs, "max_rel": r.max_rel} for r in rows]


LAYOUTS = ("auto", "nchw")  # `compile_model(layout=)`, `ember compile --layout`
CONV_ALGORITHMS = ("auto", "direct")  # `compile_model(conv=)`, `ember compile --conv`


def compile_model(
    model: str | Path,
    output: str | Path | None = None,
    *,
    target: str = "cpu",
    passes: str | None = None,
    pass_options: Mapping[str, Any] | None = None,
    verify: bool = False,
    rtol: float = TOLERANCE["rtol"],
    atol: float = TOLERANCE["atol"],
    sample: Mapping[str, np.ndarray] | None = None,
    check: Callable[[Graph, Any, dict[str, np.ndarray]], None] | None = None,
    echo: Callable[[str], None] | None = None,
    tune: TuneOptions | None = None,
    specialize: Sequence[Mapping[str, int]] | None = None,
    layout: str = "auto",
    conv: str = "auto",
) -> CompileResult:
    """Compile an ONNX model into an artifact directory (default `<model>.ember`).

    `passes`: pipeline text (`fold_constants,dce,fuse`), None for the default pipeline;
    `pass_options`: forwarded to the pass manager (dump_dir, print_after, check_each, echo...).
    `verify`: also compare with onnxruntime on the sample before writing.
    `sample`: inputs by name for the checks and the artifact's self-check (default: fixed-seed
    random inputs, symbolic dims = 1). `check(graph, built, sample)` runs last before writing;
    raising there (like any failure) leaves nothing behind.
    `tune`: a targets.tune.TuneOptions (search schedules within a budget, records in a database).
    `layout`: "auto" keeps CNN activations in the target's blocked layout (NCHW{b}c, README),
    "nchw" keeps ONNX's layout throughout (for comparisons and debugging).
    `conv`: "auto" computes the 3x3 stride-1 convs that it speeds up by Winograd's F(4x4, 3x3),
    or F(2x2, 3x3) on small maps (targets/winograd.py; answers equal up to fp32 rounding), "direct" every conv directly.
    `specialize`: symbolic dims to build extra libraries for ([{"N": 1}]; each is the model
    imported with those dims static, compiled and checked like the generic one); None: the
    default (`default_specializations`), [] for none.
    """
    from ember.targets import build, resolve_target
    from ember.targets.kernel_stats import kernel_stats

    say = echo or (lambda text: None)
    model = Path(model)
    out = Path(output) if output is not None else model.with_suffix(".ember")
    spec = resolve_target(target)
    _check_replaceable(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    graph = import_model(model)
    seconds["import"] = time.perf_counter() - start
    reference = None
    if sample is not None:
        feeds = dict(sample)
    else:
        feeds, reference = generated_sample(graph)
    dims = sample_dims(graph, feeds)
    wanted = default_specializations(graph, dims) if specialize is None else checked_specializations(specialize, graph)
    start = time.perf_counter()
    optimized, records, pipeline = run_passes(graph, passes, pass_options or {})
    seconds["passes"] = time.perf_counter() - start
    start = time.perf_counter()
    if layout not in LAYOUTS:
        raise EmberError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if conv not in CONV_ALGORITHMS:
        raise EmberError(f"unknown conv algorithm {conv!r}; use one of {', '.join(CONV_ALGORITHMS)}")
    built = build(optimized, spec, tune=tune, blocked=layout == "auto", winograd=conv == "auto", sample_dims=dims)
    seconds["build"] = time.perf_counter() - start

    start = time.perf_counter()
    stats = _kernel_stats(kernel_stats, optimized, built, dims)  # FLOPs, bytes, rule, calls per kernel at the sample's dims
    seconds["kernel_stats"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = reference if reference is not None else interp.run(graph, feeds)
    run_check = _Checker(model, graph, spec, verify, rtol, atol, say)
    checks, ran_on = run_check(built, optimized, feeds, reference)
    seconds["check"] = time.perf_counter() - start
    if check is not None:
        check(optimized, built, feeds)

    variants = []
    for fixed in wanted:
        start = time.perf_counter()
        label = ",".join(f"{k}={v}" for k, v in fixed.items())
        say(f"specialization {label}: the model again with these dims fixed")
        fixed_graph = import_model(model, dims=fixed)
        fixed_opt, _, _ = run_passes(fixed_graph, passes, {k: v for k, v in (pass_options or {}).items()
                                                           if k in ("check_each", "reproducer_dir")})
        fixed_built = build(fixed_opt, spec, tune=tune, blocked=layout == "auto", winograd=conv == "auto",
                            sample_dims={**dims, **fixed})
        if all(dims.get(k) == v for k, v in fixed.items()):
            fixed_feeds, fixed_ref = feeds, reference
        else:
            fixed_feeds = interp.sample_feeds(graph, dims={**dims, **fixed})
            fixed_ref = interp.run(graph, fixed_feeds)
        fixed_checks, _ = run_check(fixed_built, fixed_opt, fixed_feeds, fixed_ref)
        if check is not None:
            check(fixed_opt, fixed_built, fixed_feeds)
        variants.append((fixed, fixed_built, {
            "dims": fixed, "library": f"model.{len(variants) + 1}.so",
            "kernels": [k.as_json() for k in _kernel_stats(kernel_stats, fixed_opt, fixed_built, sample_dims(graph, fixed_feeds))],
            "kernel_launches": fixed_built.launches, "checks": fixed_checks,
            "seconds": round(time.perf_counter() - start, 3),
        }))

    manifest = {
        "format": "ember-artifact",
        "format_version": FORMAT_VERSION,
        "ember_version": __version__,
        "tvm_version": _tvm_version(),
        "model": {"name": model.name, "sha256": sha256(model)},
        "built_on": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        "target": spec.as_json(),
        "arch": {"machine": spec.machine, "triple": spec.triple},
        "library": LIBRARY,
        "inputs": [_spec(v) for v in graph.inputs],
        "outputs": [_spec(v) for v in graph.output_values],
        "dim_checks": dim_checks(optimized),
        "pipeline": pipeline,
        "passes": [r.as_json() if hasattr(r, "as_json") else str(r) for r in records],
        "kernels": [k.as_json() for k in stats],
        "kernel_dims": dims,
        "kernel_launches": built.launches,
        "activation_layout": f"NCHW{built.block_lanes}c" if built.block_lanes else "NCHW",
        "conv_algorithm": conv,
        "tolerance": {"rtol": rtol, "atol": atol},
        "checks": checks,
        "checked_on": ran_on,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "build_stats": {k: round(v, 3) for k, v in built.stats.items()},
        "specializations": [entry for _, _, entry in variants],
    }

    def write_library(tmp: Path) -> None:
        with quiet_tvm_scope_logs():
            built.export(tmp / LIBRARY)
            for _, fixed_built, entry in variants:
                fixed_built.export(tmp / entry["library"])

    write_artifact(out, manifest, write_library, feeds, reference)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    extra = "".join(f", specialized for {','.join(f'{k}={v}' for k, v in fixed.items())}" for fixed, _, _ in variants)
    say(f"wrote {out} ({built.launches} kernel launches, {len(built.kernels)} distinct kernels{extra}, {size:.2f} MB)")
    return CompileResult(out, optimized, built.kernels, built.launches, seconds, records, manifest)


# Values tried for the symbolic dims that are not a leading (batch) axis when the compile makes
# its own sample: 1 first (cheapest), then sizes a strided CNN (a width divided by 32) or a
# sequence model takes.
GENERATED_DIMS = (1, 64, 256)


def generated_sample(graph: Graph) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The compile's own sample when none is given, and the interpreter's outputs on it:
    symbolic batch (leading) dims 1, the others the first of GENERATED_DIMS the model runs at
    (an OCR model's width of 1 pools to nothing). EmberError naming --sample when none works."""
    leading = {d for v in graph.inputs for i, d in enumerate(v.type.shape) if isinstance(d, str) and i == 0}
    other = {d for v in graph.inputs for d in v.type.shape if isinstance(d, str)} - leading
    first: Exception | None = None
    for size in GENERATED_DIMS if other else GENERATED_DIMS[:1]:
        feeds = interp.sample_feeds(graph, dims={**{d: 1 for d in leading}, **{d: size for d in other}})
        try:
            return feeds, interp.run(graph, feeds)
        except EmberError as err:
            first = first or err
    dims = ", ".join(sorted(leading | other)) or "none"
    raise EmberError(f"{first} (on the compile's generated sample: symbolic dims {dims} at 1"
                     f"{', the non-batch ones also at ' + ' and '.join(map(str, GENERATED_DIMS[1:])) if other else ''}); "
                     "give real inputs with --sample FILE.npz") from None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def dim_checks(graph: Graph) -> list[dict[str, str]]:
    """Dims of the graph's values that could come out negative for some input sizes: an
    expression with a minus over the input dims alone (`S-3` from `x[:, 2:-1]`, which shape
    inference, as onnxruntime's, takes to hold every index it names). The runtime evaluates them
    on each new set of input dims and refuses inputs that make one negative, with the value and
    the op that made it, where the library would fail on a negative allocation (std::bad_alloc)
    or index outside a tensor. First value per expression, fused bodies included."""
    symbols = {d for v in graph.inputs for d in v.type.shape if isinstance(d, str)}
    found: dict[str, dict[str, str]] = {}

    def visit(g: Graph) -> None:
        for node in g.nodes:
            if node.op == "Fused":  # (its body's nodes name the ops)
                for body in node.subgraphs():
                    visit(body)
                continue
            for value in node.outputs:
                for d in value.type.shape:
                    if not isinstance(d, str) or "-" not in d or d in found:
                        continue
                    if set(_IDENTIFIER.findall(d)) <= symbols:
                        found[d] = {"dim": str(d), "value": value.name, "op": node.op}

    visit(graph)
    return list(found.values())


def sample_dims(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The values the graph's symbolic input dims take in `feeds`."""
    return {d: int(np.shape(feeds[v.name])[i]) for v in graph.inputs if v.name in feeds
            for i, d in enumerate(v.type.shape) if isinstance(d, str) and i < np.ndim(feeds[v.name])}


class _Checker:
    """Runs a build on a sample (under qemu for a cross build when set up) and compares it with
    the reference interpreter's outputs (and onnxruntime's with `verify`): the checks' manifest
    form and where it ran; EmberError when an output is beyond tolerance."""

    def __init__(self, model: Path, graph: Graph, spec: Any, verify: bool, rtol: float, atol: float,
                 say: Callable[[str], None]) -> None:
        self.model, self.graph, self.spec, self.verify = model, graph, spec, verify
        self.rtol, self.atol, self.say = rtol, atol, say

    def __call__(self, built: Any, optimized: Graph, feeds: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], str]:
        ran_on = "host"
        if self.spec.kind == "arm" and self.spec.machine != platform.machine():  # cross build: under qemu when set up
            from ember.targets.emulate import cross_outputs

            got, ran_on = cross_outputs(built, optimized, feeds, self.verify, self.say)
        else:
            got = run_built(built, optimized, feeds)
        names = [v.name for v in self.graph.output_values]
        checks: dict[str, Any] = {}
        try:
            if got is not None:
                checks["interpreter"] = checked(compare(got, reference, names, self.rtol, self.atol),
                                                "the reference interpreter", self.say)
            if self.verify and got is not None:
                ort_out = onnxruntime_outputs(self.model, feeds)
                checks["onnxruntime"] = checked(compare(got, ort_out, names, self.rtol, self.atol),
                                                "onnxruntime (graph optimizations off)", self.say)
        except OutputMismatchError as err:
            raise EmberError(f"{err}; no artifact written") from None
        return checks, ran_on


def _kernel_stats(count: Callable[..., list[Any]], graph: Graph, built: Any, dims: Mapping[str, int]) -> list[Any]:
    """The manifest's per-kernel counts (informational: `ember profile` reads them); a failure
    to count (dims at which TVM refuses to lower a kernel, say) leaves them out, never the build."""
    try:
        return count(graph, built, dims)
    except Exception as err:
        log.warning("warning: kernel FLOP/byte counts left out of the manifest (%s: %s)", type(err).__name__,
                    str(err).strip().splitlines()[-1][:200] if str(err).strip() else "")
        return []


def default_specializations(graph: Graph, sample_dims: Mapping[str, int] | None = None) -> list[dict[str, int]]:
    """The specializations a compile builds unless told otherwise: when every symbolic dim of
    the inputs is a leading (batch) axis, one library with those dims at the sample's values
    (`sample_dims`; 1 for the default sample).

    The sample stands for the deployment's inputs (batch 1 unless the caller's sample says
    otherwise), and a static build's kernels get 32-bit indexing,
    loop partitioning and serial small kernels, and the VM skips its shape checks. A model
    with other symbolic dims (sequence length, image size) gets none by default: no single
    value is a safe guess, so the caller names them (`--specialize seq=128`).
    """
    axes: dict[str, set[int]] = {}
    for value in graph.inputs:
        for axis, d in enumerate(value.type.shape):
            if isinstance(d, str):
                axes.setdefault(d, set()).add(axis)
    if not axes or any(found != {0} for found in axes.values()):
        return []
    fixed = {d: int((sample_dims or {}).get(d, 1)) for d in sorted(axes)}
    return [fixed] if all(v >= 1 for v in fixed.values()) else []  # an empty batch: nothing to specialize for


def parse_specialization(text: str) -> dict[str, int]:
    """`N=1` or `batch=1,seq=128` -> {name: value}; EmberError naming what is wrong."""
    fixed: dict[str, int] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or not name.strip() or not value.strip().isdigit():
            raise EmberError(f"--specialize {text!r}: expected NAME=VALUE[,NAME=VALUE...] with positive integer values")
        fixed[name.strip()] = int(value)
    return fixed


def checked_specializations(requested: Sequence[Mapping[str, int]], graph: Graph) -> list[dict[str, int]]:
    """The requested specializations, each naming only symbolic input dims with positive
    values, duplicates dropped; EmberError naming the first that does not."""
    symbols = sorted({d for v in graph.inputs for d in v.type.shape if isinstance(d, str)})
    out: list[dict[str, int]] = []
    for fixed in requested:
        label = ",".join(f"{k}={v}" for k, v in fixed.items())
        for name, value in fixed.items():
            if name not in symbols:
                known = ", ".join(symbols) if symbols else "none: every input dim is static"
                raise EmberError(f"specialization {label!r}: {name!r} is not a symbolic input dim (the model's: {known})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EmberError(f"specialization {label!r}: {name} must be a positive integer, got {value!r}")
        if fixed and dict(fixed) not in out:
            out.append(dict(fixed))
    return out


def write_artifact(
    out: Path,
    manifest: dict[str, Any],
    write_library: Callable[[Path], None],
    sample: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
) -> None:
    """Write the artifact directory atomically: temp dir beside `out`, fsync, rename.

    `manifest` gets `files` (sha256 of every file) and its own digest added.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = out.with_name(f".{out.name}.old")
    try:
        write_library(tmp)
        np.savez(tmp / "sample.npz", **sample)
        np.savez(tmp / "reference.npz", **reference)
        manifest["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
        if manifest["library"] not in manifest["files"]:
            raise EmberError(f"the build wrote no {manifest['library']}; no artifact written")
        manifest[DIGEST_KEY] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        _fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an ember artifact or an empty directory."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EmberError(f"{out} exists and is not a directory; choose another output (-o)")
    if not any(out.iterdir()):
        return
    try:
        is_artifact = json.loads((out / MANIFEST).read_text()).get("format") == "ember-artifact"
    except (OSError, ValueError, AttributeError):
        is_artifact = False
    if not is_artifact:
        raise EmberError(f"{out} exists and is not an ember artifact; refusing to replace it (choose another output with -o)")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for item in path.iterdir():
        _fsync_path(item)
    _fsync_path(path)


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)

