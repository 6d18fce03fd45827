"""The pass manager: runs a pipeline and does the boring things once.

For each pass: run it, verify the result (SSA, single definition, order, types agree with the
op table), time it, record nodes and parameter bytes before and after, write
`D/NNN_<pass>.ir` (`D/000_input.ir` first) when dumping, print the graph when asked
(`print_after`, `print_after_all`, `print_after_change`), and with `check_each` run the
interpreter on sample inputs and compare every output and every intermediate tensor the input
graph also has with the input graph's, stopping at the first pass and tensor that diverge.
A failure becomes `PassError("pass 'fuse' failed after fold_constants,dce: ...")`, with a
reproducer directory (input.ir, tensors.npz, pipeline.txt, error.txt) when asked for one:

    ember compile --passes "$(cat R/pipeline.txt)" ...   # or run_pipeline(parse_graph(...), ...)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ember.compiler import interp
from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph
from ember.compiler.parser import graph_tensors
from ember.compiler.pipeline import pipeline_text, validate_pipeline
from ember.compiler.printer import print_graph
from ember.compiler.verify import verify

# Numeric check after each pass (--check-each): float outputs may move by reassociation.
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5


class PassError(EmberError):
    """A pass failed or broke the graph; the message names it and the passes before it."""


class DivergenceError(PassError):
    """--check-each found a pass that changed the graph's numbers."""


@dataclass
class PassRecord:
    """What one pass did: time, stats, node count and parameter bytes before and after."""

    name: str
    seconds: float
    stats: dict[str, int]
    nodes_before: int
    nodes_after: int
    param_bytes_before: int
    param_bytes_after: int

    def as_json(self) -> dict[str, Any]:
        """The manifest's form."""
        return {"pass": self.name, "seconds": round(self.seconds, 4), "stats": self.stats,
                "nodes": [self.nodes_before, self.nodes_after],
                "param_bytes": [self.param_bytes_before, self.param_bytes_after]}


@dataclass
class PipelineResult:
    """The final graph and one record per pass."""

    graph: Graph
    records: list[PassRecord] = field(default_factory=list)


def _write_reproducer(directory: Path, graph: Graph, remaining: Sequence[str], error: str,
                      feeds: dict[str, np.ndarray] | None) -> None:
    """The failing pass's input graph, its tensors, the rest of the pipeline and the error; the
    sample inputs too when the failure is a --check-each divergence."""
    directory.mkdir(parents=True, exist_ok=True)
    if feeds is not None:
        np.savez(directory / "feeds.npz", **feeds)
    (directory / "input.ir").write_text(print_graph(graph, pipeline=pipeline_text(tuple(remaining))))
    np.savez(directory / "tensors.npz", **graph_tensors(graph))
    (directory / "pipeline.txt").write_text(pipeline_text(tuple(remaining)) + "\n")
    (directory / "error.txt").write_text(error + "\n")


def _failure(kind: type[PassError], message: str, reproducer_dir: Path | None, graph: Graph,
             remaining: Sequence[str], feeds: dict[str, np.ndarray] | None) -> PassError:
    """The error to raise, after writing the reproducer when one was asked for."""
    if reproducer_dir is not None:
        _write_reproducer(Path(reproducer_dir), graph, remaining, message, feeds)
        message += f" (reproducer in {reproducer_dir})"
    return kind(message)


def _compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], order: Sequence[str]) -> tuple[str, float] | None:
    """The first tensor in `order` present in both runs that differs beyond tolerance, and its error."""
    for name in order:
        if name not in reference or name not in got:
            continue
        a, b = np.asarray(reference[name]), np.asarray(got[name])
        if a.shape != b.shape:
            return name, float("inf")
        if a.dtype.kind in "biu":
            if not np.array_equal(a, b):
                return name, float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0.0
            continue
        if not np.allclose(b.astype(np.float64), a.astype(np.float64), rtol=CHECK_RTOL, atol=CHECK_ATOL, equal_nan=True):
            return name, float(np.nanmax(np.abs(b.astype(np.float64) - a.astype(np.float64))))
    return None


def run_pipeline(
    graph: Graph,
    pipeline: Sequence[str],
    *,
    dump_dir: Path | None = None,
    print_after: Sequence[str] = (),
    print_after_all: bool = False,
    print_after_change: bool = False,
    check_each: dict[str, np.ndarray] | bool | None = None,
    reproducer_dir: Path | None = None,
    echo: Callable[[str], None] | None = None,
    registry: dict[str, Callable[[Graph], Any]] | None = None,
) -> PipelineResult:
    """Run the passes in order; see the module docstring for what happens around each.

    `registry` replaces ember.passes.PASSES (tests register deliberately broken passes).
    """
    from ember.passes import PASSES

    table = registry if registry is not None else PASSES
    validate_pipeline(tuple(pipeline), table)
    validate_pipeline(tuple(print_after), table)
    try:
        verify(graph)
    except EmberError as err:
        raise PassError(f"the input graph does not verify (before any pass): {err}") from None
    text = pipeline_text(tuple(pipeline))
    say = echo or (lambda s: None)
    if dump_dir is not None:
        dump_dir = Path(dump_dir)
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "000_input.ir").write_text(print_graph(graph, pipeline=text, after="input (0)"))
    feeds: dict[str, np.ndarray] | None = None
    reference: dict[str, np.ndarray] = {}
    if check_each is not None and check_each is not False:
        feeds = check_each if isinstance(check_each, dict) else interp.sample_feeds(graph)
        reference = interp.run(graph, feeds, keep_all=True)
    # Intermediates in the input graph's order, so that the earliest divergence is named.
    order = [n for node in graph.nodes for n in node.output_names] + list(graph.outputs)
    records: list[PassRecord] = []
    current = graph
    for index, name in enumerate(pipeline, start=1):
        done = ",".join(pipeline[: index - 1]) or "nothing"
        remaining = tuple(pipeline[index - 1 :])
        start = time.perf_counter()
        try:
            result = table[name](current)
            seconds = time.perf_counter() - start
            verify(result.graph)
        except EmberError as err:
            raise _failure(PassError, f"pass {name!r} failed after {done}: {err}", reproducer_dir, current, remaining,
                           None) from None
        except Exception as err:  # a crash inside a pass is ember's bug: say where
            raise _failure(PassError, f"pass {name!r} crashed after {done}: {type(err).__name__}: {err}",
                           reproducer_dir, current, remaining, None) from err
        after = result.graph
        records.append(PassRecord(name, seconds, dict(result.stats), len(current.nodes), len(after.nodes),
                                  current.param_bytes(), after.param_bytes()))
        header = dict(pipeline=text, after=f"{name} ({index})", stats=result.stats)
        if dump_dir is not None:
            (dump_dir / f"{index:03d}_{name}.ir").write_text(print_graph(after, **header))
        if print_after_all or name in print_after or (print_after_change and result.stats):
            say(print_graph(after, **header))
        if feeds is not None:
            diverged = _compare(reference, interp.run(after, feeds, keep_all=True), order)
            if diverged is not None:
                tensor, error = diverged
                message = (f"--check-each: pass {name!r} (after {done}) changed tensor {tensor!r} by {error:.3g} "
                           f"(tolerance rtol {CHECK_RTOL}, atol {CHECK_ATOL})")
                raise _failure(DivergenceError, message, reproducer_dir, current, remaining, feeds)
        current = after
    return PipelineResult(current, records)


def summary_table(records: Sequence[PassRecord]) -> str:
    """The per-pass summary printed at the end of a compile: one row per pass and a total."""
    lines = [f"{'pass':18s} {'ms':>8s} {'nodes':^12s} {'param bytes':^20s}  stats"]
    for r in records:
        stats = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items())) or "-"
        lines.append(f"{r.name:18s} {r.seconds * 1e3:8.1f} {r.nodes_before:5d}->{r.nodes_after:<5d} "
                     f"{_size(r.param_bytes_before):>9s}->{_size(r.param_bytes_after):<9s}  {stats}")
    if records:
        first, last = records[0], records[-1]
        total = sum(r.seconds for r in records)
        lines.append(f"{'total':18s} {total * 1e3:8.1f} {first.nodes_before:5d}->{last.nodes_after:<5d} "
                     f"{_size(first.param_bytes_before):>9s}->{_size(last.param_bytes_after):<9s}")
    return "\n".join(lines)


def _size(n: int) -> str:
    """Bytes for people: 812 B, 81.9 KB, 46.74 MB."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} KB"
    return f"{n / 1e6:.2f} MB"


def records_json(records: Sequence[PassRecord]) -> str:
    """Records as JSON text."""
    return json.dumps([r.as_json() for r in records], indent=2)


