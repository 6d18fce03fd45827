"""CLI commands around artifacts: compile, run, bench, verify, targets.

The coordinator's `compiler/cli.py` adds `COMMANDS` to the `ember` group. `run` and `bench`
need only `ember.runtime` (plus click); `compile`, `verify` and `targets` need the compiler.
Every user-caused error is one `error:` line on stderr and a non-zero exit, no traceback.
"""

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
from ember.runtime import RUNTIME_ERRORS, TOLERANCE

PATH = click.Path(path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """EmberError, the runtime's errors and file errors -> one `error:` line and their exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EmberError, *RUNTIME_ERRORS, OSError) as err:
            text = str(err) if not isinstance(err, OSError) else f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
            click.echo(f"error: {text}", err=True)
            sys.exit(getattr(err, "exit_code", 1))

    return wrapper


def tolerance_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--rtol/--atol, shared by the commands that compare outputs."""
    fn = click.option("--atol", type=float, default=TOLERANCE["atol"], show_default=True, help="absolute tolerance")(fn)
    return click.option("--rtol", type=float, default=TOLERANCE["rtol"], show_default=True, help="relative tolerance")(fn)


def pass_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The pass-manager options, collected into one `pass_options` dict for the driver."""
    options = [
        click.option("--passes", help="pass pipeline, e.g. fold_constants,dce,fuse (default: the default pipeline)"),
        click.option("--dump-dir", type=click.Path(file_okay=False, path_type=Path), help="write NNN_<pass>.ir dumps here"),
        click.option("--print-after", multiple=True, help="print the IR after this pass (repeatable)"),
        click.option("--print-after-all", is_flag=True, help="print the IR after every pass"),
        click.option("--print-after-change", is_flag=True, help="print the IR after every pass that changed it"),
        click.option("--check-each", is_flag=True,
                     help="after every pass, compare the interpreter's outputs with the input graph's"),
    ]

    @wraps(fn)
    def wrapper(*args: Any, passes: str | None, dump_dir: Path | None, print_after: tuple[str, ...],
                print_after_all: bool, print_after_change: bool, check_each: bool, **kwargs: Any) -> Any:
        collected = {"dump_dir": dump_dir, "print_after": print_after, "print_after_all": print_after_all,
                     "print_after_change": print_after_change, "check_each": check_each or None, "echo": click.echo}
        return fn(*args, passes=passes, pass_options=collected, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz by key; EmberError saying what to give otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise EmberError(f"{path}: no such file; give an .npz file keyed by input name") from None
    except (OSError, ValueError, EOFError) as err:
        reason = "not an .npz archive" if "pickle" in str(err) else str(err)
        raise EmberError(f"{path}: cannot read inputs ({reason}); give an .npz file keyed by input name") from None


def _echo_rows(rows: list[Any]) -> bool:
    for row in rows:
        click.echo(f"  {row.text()}")
    return all(row.ok for row in rows)


@click.command()
@click.argument("model", type=FILE)
@click.option("-o", "--output", type=PATH, help="artifact directory (default MODEL.ember)")
@click.option("--target", default="cpu", show_default=True, help="target name (see `ember targets`)")
@pass_options
@click.option("--emit-onnx", type=FILE, help="also write the optimized graph as ONNX")
@click.option("--verify", is_flag=True, help="compare the compiled model with onnxruntime before writing the artifact")
@tolerance_options
@click.option("--sample", "sample_path", type=FILE,
              help="real inputs (.npz by input name) for the checks, --check-each and the artifact's self-check")
@click.option("--tune", "tune_budget", metavar="DURATION",
              help="search faster kernel schedules for this long (90s, 10m, 1h); records are kept for later compiles")
@click.option("--tune-db", type=PATH, help="the tuning database file (default ~/.cache/ember/tune/records.json)")
@click.option("--specialize", "specialize", multiple=True, metavar="DIMS",
              help="also build the model with these symbolic dims fixed (N=1 or batch=1,seq=128; repeatable); "
                   "it runs when an inference's dims match. Default: the sample's batch (1 without --sample) when a "
                   "model's only symbolic dims are batch dims")
@click.option("--no-specialize", is_flag=True, help="build only the generic library")
@click.option("--layout", type=click.Choice(["auto", "nchw"]), default="auto", show_default=True,
              help="activations between CNN kernels: auto = the target's blocked layout (NCHW16c on AVX-512, "
                   "NCHW8c on AVX2; NCHW on ARM), nchw = ONNX's layout throughout")
@click.option("--conv", "conv", type=click.Choice(["auto", "direct"]), default="auto", show_default=True,
              help="convolution algorithm: auto = Winograd F(4x4,3x3), or F(2x2,3x3) on small maps, for the "
                   "blocked 3x3 stride-1 convs it speeds up (answers equal up to fp32 rounding), direct = every conv computed directly")
@reports_errors
def compile(model: Path, output: Path | None, target: str, passes: str | None, pass_options: dict[str, Any],
            emit_onnx: Path | None, verify: bool, rtol: float, atol: float, sample_path: Path | None,
            tune_budget: str | None, tune_db: Path | None, specialize: tuple[str, ...], no_specialize: bool,
            layout: str, conv: str) -> None:
    """Compile an ONNX model into an artifact directory.

    The built module is checked against the reference interpreter on a sample (and against
    onnxruntime with --verify) before anything is written; a failure leaves nothing behind.

    \b
    Example:
      ember compile examples/digits_cnn.onnx -o digits.ember --verify
    """
    from ember.compiler import driver
    from ember.compiler.cli_tune import tune_options

    tune = tune_options(tune_budget, tune_db)
    if no_specialize and specialize:
        raise EmberError("--specialize and --no-specialize contradict each other; give one")
    fixed = [] if no_specialize else [driver.parse_specialization(t) for t in specialize] if specialize else None
    sample = load_npz(sample_path) if sample_path is not None else None
    if pass_options["check_each"] and sample is not None:
        pass_options["check_each"] = sample
    result = driver.compile_model(model, output, target=target, passes=passes, pass_options=pass_options,
                                  verify=verify, rtol=rtol, atol=atol, sample=sample, echo=click.echo, tune=tune,
                                  specialize=fixed, layout=layout, conv=conv)
    if result.records:
        from ember.compiler.passmanager import summary_table

        click.echo(summary_table(result.records))
    if emit_onnx is not None:
        from ember.compiler.exporter import export_onnx

        export_onnx(result.graph, emit_onnx)
        click.echo(f"wrote {emit_onnx}")
    s = result.seconds
    click.echo(f"import {s['import']:.2f}s, passes {s['passes']:.2f}s, build {s['build']:.2f}s, checks {s['check']:.2f}s")


@click.command()
@click.argument("artifact", type=PATH)
@click.option("--inputs", "inputs_path", type=FILE, help=".npz keyed by input name")
@click.option("-o", "--output", type=FILE, help="write outputs to this .npz (with --inputs)")
@click.option("--self-check", is_flag=True, help="run the bundled sample and compare with the bundled reference")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: every CPU this process may use)")
@reports_errors
def run(artifact: Path, inputs_path: Path | None, output: Path | None, self_check: bool, threads: int | None) -> None:
    """Run an artifact on inputs, or check it against its bundled reference.

    Without -o, prints each output's dtype, shape and a summary.

    \b
    Examples:
      ember run digits.ember --self-check
      ember run digits.ember --inputs x.npz -o y.npz
    """
    from ember.runtime import load

    if self_check == (inputs_path is not None):
        raise EmberError("give either --inputs IN.npz (keys are input names) or --self-check")
    if output is not None and self_check:
        raise EmberError("-o writes the outputs of --inputs; --self-check writes nothing")
    model = load(artifact, threads=threads)
    if self_check:
        click.echo(f"self-check of {artifact} against its reference outputs:")
        if not _echo_rows(model.self_check()):
            raise EmberError("self-check failed: outputs differ from the reference beyond tolerance")
        click.echo("self-check passed")
        return
    outs = model(**load_npz(inputs_path))
    if output is not None:
        np.savez(output, **outs)
        click.echo(f"wrote {output}")
        return
    for name, value in outs.items():
        stats = f"min {value.min():.4g} max {value.max():.4g} mean {value.astype(np.float64).mean():.4g}" if value.size else "empty"
        click.echo(f"{name}: {value.dtype}{list(value.shape)} {stats}")


@click.command()
@click.argument("artifact", type=PATH)
@click.option("--inputs", "inputs_path", type=FILE, help=".npz (default: the bundled sample)")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: every CPU this process may use)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
def bench(artifact: Path, inputs_path: Path | None, warmup: int, repeat: int, threads: int | None, as_json: bool) -> None:
    """Measure latency percentiles (p50/p90/p99) and throughput, one inference at a time.

    \b
    Example:
      ember bench digits.ember --repeat 200 --threads 2
    """
    from ember.runtime import load, usable_cpus

    model = load(artifact, threads=threads)
    feeds = load_npz(inputs_path or artifact / "sample.npz")
    times = np.array(model.timed(feeds, warmup, repeat)) * 1e3
    result = {
        "artifact": str(artifact), "threads": threads or usable_cpus(), "repeat": repeat, "warmup": warmup,
        "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)), "mean_ms": float(times.mean()), "min_ms": float(times.min()),
        "throughput_per_s": float(1e3 * repeat / times.sum()),
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{artifact}: p50 {result['p50_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
               f"throughput {result['throughput_per_s']:.1f}/s  ({repeat} runs after {warmup} warm-up, "
               f"{result['threads']} threads)")


@click.command()
@click.argument("artifact", type=PATH)
@click.argument("model", type=FILE)
@click.option("--inputs", "inputs_path", type=FILE, help=".npz (default: the bundled sample)")
@tolerance_options
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: every CPU this process may use)")
@reports_errors
def verify(artifact: Path, model: Path, inputs_path: Path | None, rtol: float, atol: float, threads: int | None) -> None:
    """Compare an artifact with onnxruntime (graph optimizations off) on the same inputs.

    Prints the max abs/rel error per output; exits 1 if any is beyond tolerance.

    \b
    Example:
      ember verify digits.ember examples/digits_cnn.onnx --inputs x.npz
    """
    from ember.compiler.driver import onnxruntime_outputs
    from ember.runtime import compare, load

    loaded = load(artifact, threads=threads)
    feeds = load_npz(inputs_path or artifact / "sample.npz")
    got = loaded(**feeds)
    want = onnxruntime_outputs(model, feeds)
    click.echo(f"{artifact} vs onnxruntime on {model} (rtol {rtol:g}, atol {atol:g}):")
    if not _echo_rows(compare(got, want, [s.name for s in loaded.outputs], rtol, atol)):
        raise EmberError("outputs differ from onnxruntime beyond tolerance")
    click.echo("verify passed")


@click.command()
@reports_errors
def targets() -> None:
    """List the targets `--target` accepts.

    \b
    Example:
      ember targets
    """
    from ember.targets.registry import ARM_SYNTAX, BUILDABLE
    from ember.targets.registry import targets as table

    for name, spec in table().items():
        state = "" if spec.kind in BUILDABLE else "  (not buildable yet)"
        qemu = f" (qemu -cpu {spec.qemu_cpu})" if spec.qemu_cpu else ""
        click.echo(f"{name:18s} {spec.kind:5s} {spec.triple:20s} {spec.mcpu:16s} {spec.description}{qemu}{state}")
    click.echo(ARM_SYNTAX)


COMMANDS = (compile, run, bench, verify, targets)
