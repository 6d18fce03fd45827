"""CLI commands for looking at what passes did: diff and explain."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from ember.compiler.cli_artifact import reports_errors
from ember.compiler.errors import EmberError


def _body(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError as err:
        raise EmberError(f"{path}: {err.strerror}") from None
    return lines[1:] if lines and lines[0].startswith("# ember-ir") else lines


@click.command()
@click.argument("a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, path_type=Path))
@reports_errors
def diff(a: Path, b: Path) -> None:
    """Show what changed between two IR dumps (the header line is ignored).

    \b
    Example:
      ember diff dumps/003_dce.ir dumps/004_fold_batchnorm.ir
    """
    lines = list(difflib.unified_diff(_body(a), _body(b), fromfile=str(a), tofile=str(b)))
    if not lines:
        click.echo("no difference")
        return
    for line in lines:
        click.echo(line, nl=not line.endswith("\n"))


@click.command()
@click.argument("pass_name", metavar="PASS")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--after", "prefix", default=None, metavar="PASSES",
              help="passes to run first (default: the default pipeline's passes before PASS)")
@reports_errors
def explain(pass_name: str, model: Path, prefix: str | None) -> None:
    """For each place a rule of PASS looked at and declined: the rule, the node and the reason.

    \b
    Example:
      ember explain fuse_composites model.onnx
      ember explain simplify model.onnx --after fold_constants,dce
    """
    from ember.compiler.importer import import_model
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE, parse_pipeline, validate_pipeline
    from ember.passes import PASSES

    validate_pipeline((pass_name,), PASSES)
    if prefix is None:
        before = DEFAULT_PIPELINE.index(pass_name) if pass_name in DEFAULT_PIPELINE else len(DEFAULT_PIPELINE)
        first = DEFAULT_PIPELINE[:before]
    else:
        first = parse_pipeline(prefix)
    graph = run_pipeline(import_model(model), first).graph
    result = PASSES[pass_name](graph)
    stats = ", ".join(f"{k}={v}" for k, v in sorted(result.stats.items())) or "no change"
    click.echo(f"{pass_name} after {','.join(first) or 'nothing'}: {stats}; {len(result.rejections)} rejection(s)")
    for rejection in result.rejections:
        click.echo(f"  {rejection}")


COMMANDS = (diff, explain)
