"""`ember tune-db`: list and prune the tuning database; the `--tune` options of `ember compile`.

    ember compile model.onnx --tune 10m [--tune-db PATH]
    ember tune-db list [--db PATH]
    ember tune-db prune [--db PATH] [--target T] [--older-than 30d] [--slower]

The database (targets/tune_db.py) holds one record per (kernel, target): the tuned schedule,
its time and the schedule rule's time measured side by side. Every compile applies the records
of its target that beat the rule; `--tune` searches for more within a wall-clock budget.
These commands read the JSON file only (no TVM import), except `prune --target NAME` with
one of ember's target names, which asks LLVM what that target is.
"""

from __future__ import annotations

from pathlib import Path

import click

from ember.compiler.cli_artifact import reports_errors
from ember.compiler.errors import EmberError
from ember.targets.tune_db import DEFAULT_DB, Record, TuneDB, TuneOptions, check_writable, parse_duration, target_label

DB_OPTION = click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help=f"the tuning database (default {DEFAULT_DB})")


def tune_options(tune: str | None, tune_db: Path | None) -> TuneOptions | None:
    """`--tune DURATION` / `--tune-db PATH` of `ember compile` -> TuneOptions (None: defaults).

    Bad durations and an unwritable database (when tuning) fail here, before any work."""
    if tune is None and tune_db is None:
        return None
    options = TuneOptions(budget_s=parse_duration(tune) if tune is not None else None,
                          db_path=tune_db if tune_db is not None else DEFAULT_DB)
    if options.budget_s:
        check_writable(options.path)
    return options


@click.group("tune-db")
def tune_db() -> None:
    """List and prune the tuning database (records of `ember compile --tune`).

    \b
    Examples:
      ember tune-db list
      ember tune-db prune --older-than 30d
      ember tune-db prune --slower
    """


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4f}" if seconds is not None else "-"


@tune_db.command("list")
@DB_OPTION
@reports_errors
def list_records(db_path: Path | None) -> None:
    """One line per record: kernel, target, rule, rule and tuned time, speedup, date, and
    what it applies (the rule's knob values, or a MetaSchedule trace).

    A record is used by compiles for its target only where it is 3% or more faster than the
    rule, alone and in the model it was tuned in (`in model`: the model's time with that run's
    records over its time without them; `-`: not measured).

    \b
    Example:
      ember tune-db list --db shared/tune.json
    """
    path = (db_path or DEFAULT_DB).expanduser()
    db = TuneDB.load(path)
    records = sorted(db.records.values(), key=lambda r: (r.target, r.kernel, r.workload))
    click.echo(f"{path}: {len(records)} records")
    if not records:
        return
    click.echo(f"{'kernel':36s} {'target':24s} {'rule':16s} {'rule ms':>9s} {'tuned ms':>9s} "
               f"{'speedup':>8s} {'in model':>8s} {'used':4s} {'trials':>6s}  {'date':25s}  schedule")
    for r in records:
        speedup = f"{r.speedup:.2f}x" if r.rule_s else "-"
        in_model = f"{r.in_model:.3f}x" if r.in_model is not None else "-"
        click.echo(f"{r.kernel[:36]:36s} {target_label(r.target)[:24]:24s} {(r.rule or 'TVM default')[:16]:16s} "
                   f"{_ms(r.rule_s):>9s} {_ms(r.tuned_s):>9s} {speedup:>8s} {in_model:>8s} {'yes' if r.faster else 'no':4s} "
                   f"{r.trials:6d}  {r.date:25s}  {_how(r)}")


def _how(record: Record) -> str:
    """What the record replays: the rule's own code with knob values, or a searched trace."""
    if record.knobs is not None:
        return "knobs " + ",".join(f"{k}={v}" for k, v in sorted(record.knobs.items()))
    return "MetaSchedule trace"


def _target_matcher(text: str) -> str:
    """A `--target` as records hold it: an ember target name becomes its JSON key; anything
    else (an mcpu such as `znver4`, part of the JSON) is matched as a substring."""
    from ember.targets.registry import TARGETS

    if text not in TARGETS:
        return text
    import tvm

    from ember.targets.tune import target_key

    return target_key(tvm.target.Target(TARGETS[text].tvm_target()))


@tune_db.command()
@DB_OPTION
@click.option("--target", help="only records of this target (an ember target name, or an mcpu as `list` shows)")
@click.option("--older-than", help="only records older than this (e.g. 30d, 12h)")
@click.option("--slower", is_flag=True, help="only records that measured slower than the rule's schedule")
@reports_errors
def prune(db_path: Path | None, target: str | None, older_than: str | None, slower: bool) -> None:
    """Remove the records that match every condition given.

    \b
    Examples:
      ember tune-db prune --older-than 30d
      ember tune-db prune --target cpu --slower
    """
    if target is None and older_than is None and not slower:
        raise EmberError("give --target, --older-than or --slower (to drop every record, delete the database file)")
    age = parse_duration(older_than, "--older-than") if older_than is not None else None
    path = (db_path or DEFAULT_DB).expanduser()
    if not path.exists():
        raise EmberError(f"{path}: no tuning database there; give its path with --db")
    db = TuneDB.load(path)
    gone = db.prune(target=_target_matcher(target) if target is not None else None, older_than_s=age, slower=slower)
    if gone:
        db.save()
    click.echo(f"removed {len(gone)} records from {path} ({len(db.records)} left)")


COMMANDS = (tune_db,)
