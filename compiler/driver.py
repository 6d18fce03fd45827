"""The driver: ONNX file -> imported graph -> pass pipeline -> build -> artifact directory.

The artifact is written into a temporary directory beside the destination and renamed into
place only when complete, so a failed compile never leaves something that looks valid.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ember.compiler import __version__, interp
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_model
from ember.compiler.ir import Graph, Value

# How far the compiled artifact may stray from the reference interpreter (float32 models):
# accumulation order differs between TVM kernels and numpy/BLAS.
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


@dataclass
class CompileResult:
    """What a compile produced."""

    path: Path
    graph: Graph
    kernels: tuple[str, ...]
    launches: int
    seconds: dict[str, float] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)


def _spec(value: Value) -> dict[str, Any]:
    return {"name": value.name, "dtype": value.type.dtype, "shape": list(value.type.shape)}


def _run_passes(graph: Graph, passes: str | None, options: dict[str, Any]) -> tuple[Graph, list[Any], str]:
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE, parse_pipeline, pipeline_text

    pipeline = parse_pipeline(passes) if passes is not None else DEFAULT_PIPELINE
    result = run_pipeline(graph, pipeline, **options)
    return result.graph, list(result.records), pipeline_text(pipeline)


def compile_model(
    model: str | Path,
    output: str | Path | None = None,
    target: str = "cpu",
    passes: str | None = None,
    pass_options: dict[str, Any] | None = None,
    check: Callable[[Graph, Any, dict[str, np.ndarray]], None] | None = None,
    echo: Callable[[str], None] | None = None,
    sample: dict[str, np.ndarray] | None = None,
) -> CompileResult:
    """Compile an ONNX model into an artifact directory; returns where and what.

    `check(graph, built, sample)` runs before the artifact is moved into place (used by
    `--verify`); raising there leaves nothing behind.
    """
    from ember.targets import build, resolve_target

    say = echo or (lambda text: None)
    model = Path(model)
    out = Path(output) if output else model.with_suffix(".ember")
    spec = resolve_target(target)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    graph = import_model(model)
    seconds["import"] = time.perf_counter() - start
    start = time.perf_counter()
    optimized, records, pipeline = _run_passes(graph, passes, pass_options or {})
    seconds["passes"] = time.perf_counter() - start
    start = time.perf_counter()
    built = build(optimized, spec)
    seconds["build"] = time.perf_counter() - start
    if sample is None:  # valid-for-most-models inputs; `sample=` gives real ones
        sample = interp.sample_feeds(graph)
    reference = interp.run(graph, sample)
    if check is not None:
        check(optimized, built, sample)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        built.export(tmp / "model.so")
        np.savez(tmp / "sample.npz", **sample)
        np.savez(tmp / "reference.npz", **reference)
        files = {name: _sha256(tmp / name) for name in ("model.so", "sample.npz", "reference.npz")}
        manifest = {
            "format": "ember-artifact",
            "format_version": 1,
            "ember_version": __version__,
            "tvm_version": _tvm_version(),
            "model": model.name,
            "built_on": {"machine": platform.machine(), "python": platform.python_version()},
            "target": spec.as_json(),
            "library": "model.so",
            "inputs": [_spec(v) for v in graph.inputs],
            "outputs": [_spec(v) for v in graph.output_values],
            "pipeline": pipeline,
            "passes": [r.as_json() if hasattr(r, "as_json") else str(r) for r in records],
            "kernels": len(built.kernels),
            "kernel_launches": built.launches,
            "tolerance": TOLERANCE,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_dir(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out} ({built.launches} kernel launches, {len(built.kernels)} distinct kernels, {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB)")
    return CompileResult(out, optimized, built.kernels, built.launches, seconds, records)


def _sha256(path: Path) -> str:
    from ember.runtime.artifact import sha256

    return sha256(path)


def _fsync_dir(path: Path) -> None:
    for item in path.iterdir():
        with open(item, "rb") as f:
            os.fsync(f.fileno())


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names: Sequence[str]) -> list[tuple[str, float, float, bool]]:
    """(name, max abs error, max rel error, within tolerance) per output."""
    rows = []
    for name in names:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        if a.shape != b.shape:
            raise EmberError(f"output {name!r}: shape {list(a.shape)} vs reference {list(b.shape)}")
        if a.dtype.kind in "biu":
            diff = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0.0
            rows.append((name, diff, diff, diff == 0))
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        abs_err = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        rel_err = float(np.max(np.abs(a64 - b64) / (np.abs(b64) + 1e-12))) if a.size else 0.0
        ok = bool(np.allclose(a64, b64, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"]))
        rows.append((name, abs_err, rel_err, ok))
    return rows
