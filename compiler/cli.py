"""The `ember` command line: one group, one command per job.

Every command turns EmberError into one line on stderr and a non-zero exit (2 for bad or
unsupported input), never a traceback.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from ember.compiler import __version__
from ember.compiler.errors import EmberError


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: EmberError -> `error: <message>` on stderr and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EmberError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ember")
def main() -> None:
    """ember: compile ONNX models into small, fast artifacts for CPUs, NVIDIA GPUs and ARM boards.

    \b
    Example:
      ember inspect model.onnx
      ember compile model.onnx -o model.ember
    """


def _fmt_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@reports_errors
def inspect(model: Path) -> None:
    """Show a model's inputs, outputs, operators, parameters and cost.

    \b
    Example:
      ember inspect examples/digits_cnn.onnx
    """
    import numpy as np
    import onnx

    from ember.compiler import cost
    from ember.compiler.importer import check_onnx, import_proto, load_onnx, model_opset, unsupported_ops

    proto = load_onnx(model)
    check_onnx(proto, str(model))
    click.echo(f"model: {model}  (ai.onnx opset {model_opset(proto)}, producer {proto.producer_name or '?'})")
    missing = unsupported_ops(proto)
    histogram = Counter(n.op_type for n in proto.graph.node)
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in proto.graph.initializer)
    nbytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    if missing:
        click.echo("unsupported operators:")
        for line in missing:
            click.echo(line)
        click.echo("operators: " + ", ".join(f"{op} x{n}" for op, n in histogram.most_common()))
        click.echo(f"parameters: {_fmt_count(params)} ({nbytes / 1e6:.2f} MB)")
        sys.exit(2)
    graph = import_proto(proto, where=str(model))
    click.echo("inputs:")
    for value in graph.inputs:
        click.echo(f"  {value.name}: {value.type}")
    click.echo("outputs:")
    for value in graph.output_values:
        click.echo(f"  {value.name}: {value.type}")
    click.echo(f"parameters: {_fmt_count(params)} ({nbytes / 1e6:.2f} MB)")
    rows = cost.per_op(graph)
    total_macs = sum(r[1] for r in rows.values())
    total_flops = sum(r[2] for r in rows.values())
    click.echo(f"{'operator':24s} {'nodes':>6s} {'MACs':>10s} {'FLOPs':>10s}")
    for op, (count, macs, flops) in sorted(rows.items(), key=lambda kv: (-kv[1][2], kv[0])):
        click.echo(f"{op:24s} {count:6d} {_fmt_count(macs):>10s} {_fmt_count(flops):>10s}")
    click.echo(f"{'total':24s} {len(graph.nodes):6d} {_fmt_count(total_macs):>10s} {_fmt_count(total_flops):>10s}")
    symbolic = sorted({d for v in graph.inputs for d in v.type.shape if isinstance(d, str)})
    if symbolic:
        click.echo(f"(costs are per unit of {', '.join(symbolic)})")


@main.command()
@reports_errors
def passes() -> None:
    """List the registered passes and the default pipeline.

    \b
    Example:
      ember passes
    """
    from ember.compiler.pipeline import DEFAULT_PIPELINE
    from ember.passes import PASSES

    for name, fn in PASSES.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        click.echo(f"{name:20s} {doc[0] if doc else ''}")
    click.echo(f"default pipeline: {','.join(DEFAULT_PIPELINE)}")


def _add_commands() -> None:
    from ember.compiler import cli_artifact, cli_bundle, cli_passes, cli_profile, cli_tune

    for command in (cli_artifact.COMMANDS + cli_passes.COMMANDS + cli_profile.COMMANDS + cli_bundle.COMMANDS
                    + cli_tune.COMMANDS):
        main.add_command(command)


_add_commands()
