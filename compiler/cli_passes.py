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
@click.option("--after", "prefix", default="simplify,fold_constants,dce",
              help="passes to run first (the default pipeline's clean-ups)")
@reports_errors
def explain(pass_name: str, model: Path, prefix: str) -> None:
    """For each place a rule of PASS looked at and declined, the node and the reason.

    \b
    Example:
      ember explain fuse model.onnx
    """
    from ember.compiler.importer import import_model
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import parse_pipeline
    from ember.passes import PASSES

    if pass_name not in PASSES:
        raise EmberError(f"unknown pass {pass_name!r}; registered passes: {', '.join(PASSES)}")
    graph = run_pipeline(import_model(model), parse_pipeline(prefix)).graph
    result = PASSES[pass_name](graph)
    stats = ", ".join(f"{k}={v}" for k, v in sorted(result.stats.items())) or "no change"
    click.echo(f"{pass_name}: {stats}; {len(result.rejections)} rejection(s)")
    for rejection in result.rejections:
        click.echo(f"  {rejection}")


COMMANDS = (diff, explain)
