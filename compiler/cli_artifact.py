"""CLI commands around artifacts: compile, run, bench, verify, targets."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
import numpy as np

from ember.compiler.errors import EmberError


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """EmberError and the runtime's errors -> one `error:` line on stderr and their exit code."""
    from ember.runtime import ArtifactError, RuntimeInputError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EmberError, ArtifactError, RuntimeInputError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(getattr(err, "exit_code", 1))

    return wrapper


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise EmberError(f"{path}: cannot read inputs ({err}); give an .npz file keyed by input name") from None


def _onnxruntime_outputs(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EmberError("onnxruntime is not installed; `pip install onnxruntime` to verify against it") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _print_comparison(rows: list[tuple[str, float, float, bool]]) -> bool:
    ok = True
    for name, abs_err, rel_err, good in rows:
        click.echo(f"  {name}: max abs error {abs_err:.3g}, max rel error {rel_err:.3g} {'ok' if good else 'BEYOND TOLERANCE'}")
        ok = ok and good
    return ok


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="artifact directory (default MODEL.ember)")
@click.option("--target", default="cpu", show_default=True, help="target name (see `ember targets`)")
@click.option("--passes", help="pass pipeline, e.g. fold_constants,dce,fuse (default: the default pipeline)")
@click.option("--dump-dir", type=click.Path(file_okay=False, path_type=Path), help="write NNN_<pass>.ir dumps here")
@click.option("--print-after", multiple=True, help="print the IR after this pass (repeatable)")
@click.option("--print-after-all", is_flag=True, help="print the IR after every pass")
@click.option("--print-after-change", is_flag=True, help="print the IR after every pass that changed it")
@click.option("--check-each", is_flag=True, help="after every pass, compare the interpreter's outputs with the input graph's")
@click.option("--emit-onnx", type=click.Path(dir_okay=False, path_type=Path), help="also write the optimized graph as ONNX")
@click.option("--verify", is_flag=True, help="compare the compiled model with onnxruntime before writing the artifact")
@click.option("--sample", "sample_path", type=click.Path(dir_okay=False, path_type=Path),
              help="real inputs (.npz by input name) for --verify, --check-each and the artifact's self-check")
@reports_errors
def compile(model: Path, output: Path | None, target: str, passes: str | None, dump_dir: Path | None,
            print_after: tuple[str, ...], print_after_all: bool, print_after_change: bool, check_each: bool,
            emit_onnx: Path | None, verify: bool, sample_path: Path | None) -> None:
    """Compile an ONNX model into an artifact directory.

    \b
    Example:
      ember compile examples/digits_cnn.onnx -o digits.ember --verify
    """
    from ember.compiler import driver

    sample = _load_npz(sample_path) if sample_path is not None else None
    options: dict[str, Any] = {"dump_dir": dump_dir, "print_after": print_after, "print_after_all": print_after_all,
                               "print_after_change": print_after_change,
                               "check_each": (sample if sample is not None else True) if check_each else None,
                               "echo": click.echo}

    def check(graph: Any, built: Any, sample: dict[str, np.ndarray]) -> None:
        import tvm
        from tvm.runtime import vm as tvm_vm

        vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
        result = vm["main"](*[tvm.runtime.tensor(sample[v.name]) for v in graph.inputs])
        outs = [result] if hasattr(result, "numpy") else list(result)
        got = {v.name: o.numpy() for v, o in zip(graph.output_values, outs)}
        want = _onnxruntime_outputs(model, sample)
        click.echo("verify against onnxruntime (graph optimizations off):")
        if not _print_comparison(driver.compare(got, want, list(got))):
            raise EmberError("the compiled model differs from onnxruntime beyond tolerance; no artifact written")

    result = driver.compile_model(model, output, target, passes, options, check if verify else None, click.echo, sample)
    if result.records:
        from ember.compiler.passmanager import summary_table

        click.echo(summary_table(result.records))
    if emit_onnx is not None:
        from ember.compiler.exporter import export_onnx

        export_onnx(result.graph, emit_onnx)
        click.echo(f"wrote {emit_onnx}")
    click.echo(f"import {result.seconds['import']:.2f}s, passes {result.seconds['passes']:.2f}s, build {result.seconds['build']:.2f}s")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path), help=".npz keyed by input name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="write outputs to this .npz")
@click.option("--self-check", is_flag=True, help="run the bundled sample and compare with the bundled reference")
@click.option("--threads", type=int, help="CPU threads (default: every CPU this process may use)")
@reports_errors
def run(artifact: Path, inputs_path: Path | None, output: Path | None, self_check: bool, threads: int | None) -> None:
    """Run an artifact on inputs, or check it against its bundled reference.

    \b
    Examples:
      ember run digits.ember --self-check
      ember run digits.ember --inputs x.npz -o y.npz
    """
    from ember.compiler import driver
    from ember.runtime import load

    model = load(artifact, threads=threads)
    if self_check:
        sample = _load_npz(artifact / "sample.npz")
        want = _load_npz(artifact / "reference.npz")
        got = model(**sample)
        click.echo(f"self-check of {artifact} against its reference outputs:")
        if not _print_comparison(driver.compare(got, want, list(got))):
            raise EmberError("self-check failed: outputs differ from the reference beyond tolerance")
        click.echo("self-check passed")
        return
    if inputs_path is None:
        raise EmberError("give --inputs IN.npz (keys are input names) or --self-check")
    outs = model(**_load_npz(inputs_path))
    if output is not None:
        np.savez(output, **outs)
        click.echo(f"wrote {output}")
        return
    for name, value in outs.items():
        stats = f"min {value.min():.4g} max {value.max():.4g} mean {value.astype(np.float64).mean():.4g}" if value.size else "empty"
        click.echo(f"{name}: {value.dtype}{list(value.shape)} {stats}")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path), help=".npz (default: the bundled sample)")
@click.option("--warmup", default=10, show_default=True)
@click.option("--repeat", default=50, show_default=True)
@click.option("--threads", type=int, help="CPU threads (default: every CPU this process may use)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
def bench(artifact: Path, inputs_path: Path | None, warmup: int, repeat: int, threads: int | None, as_json: bool) -> None:
    """Measure latency percentiles and throughput.

    \b
    Example:
      ember bench digits.ember --repeat 200 --threads 2
    """
    from ember.runtime import load
    from ember.runtime.model import usable_cpus

    model = load(artifact, threads=threads)
    feeds = _load_npz(inputs_path or artifact / "sample.npz")
    times = np.array(model.timed(feeds, warmup, repeat)) * 1e3
    result = {
        "artifact": str(artifact), "threads": threads or usable_cpus(), "repeat": repeat, "warmup": warmup,
        "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)), "mean_ms": float(times.mean()),
        "throughput_per_s": float(1e3 / np.median(times)),
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{artifact}: p50 {result['p50_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
               f"throughput {result['throughput_per_s']:.1f}/s  ({repeat} runs, {result['threads']} threads)")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path), help=".npz (default: the bundled sample)")
@reports_errors
def verify(artifact: Path, model: Path, inputs_path: Path | None) -> None:
    """Compare an artifact with onnxruntime on the same inputs; non-zero exit beyond tolerance.

    \b
    Example:
      ember verify digits.ember examples/digits_cnn.onnx
    """
    from ember.compiler import driver
    from ember.runtime import load

    loaded = load(artifact)
    feeds = _load_npz(inputs_path or artifact / "sample.npz")
    got = loaded(**feeds)
    want = _onnxruntime_outputs(model, feeds)
    click.echo(f"{artifact} vs onnxruntime on {model}:")
    if not _print_comparison(driver.compare(got, want, list(got))):
        raise EmberError("outputs differ from onnxruntime beyond tolerance")


@click.command()
@reports_errors
def targets() -> None:
    """List the targets `--target` accepts.

    \b
    Example:
      ember targets
    """
    from ember.targets.registry import BUILDABLE
    from ember.targets.registry import targets as table

    for name, spec in table().items():
        state = "" if spec.kind in BUILDABLE else "  (not buildable yet)"
        click.echo(f"{name:18s} {spec.kind:5s} {spec.triple:20s} {spec.mcpu:16s} {spec.description}{state}")


COMMANDS = (compile, run, bench, verify, targets)
