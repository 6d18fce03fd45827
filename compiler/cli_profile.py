"""`ember profile ARTIFACT`: time per kernel, GFLOP/s and % of this machine's measured peak.

Needs only `ember.runtime` (plus click): the timing is ember.runtime.profile's, the FLOPs,
bytes and rule per kernel come from the artifact's manifest (computed by the compiler from
each kernel's TIR), and the peak from tools/peak.py's cache (~/.cache/ember/peak.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ember.compiler.cli_artifact import FILE, PATH, load_npz, reports_errors
from ember.compiler.errors import EmberError


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(report: Any, peak: dict[str, float] | None, artifact: Path, top: int | None) -> list[str]:
    """The report as text lines: one row a kernel, sorted by time, then totals."""
    from ember.runtime.profile import BUILTINS

    peak_gflops = peak.get("fma_gflops") if peak else None
    whole = report.inference_s
    lines = [
        f"{artifact}: {report.threads} thread{'s' if report.threads != 1 else ''}, median of {report.runs} runs; "
        + (f"peak {peak_gflops:.1f} GFLOP/s fp32 (tools/peak.py)" if peak_gflops else
           "no measured peak (run `python tools/peak.py` for the % of peak column)"),
        f"{'kernel':44s} {'calls':>5s} {'ms':>9s} {'%time':>6s} {'MFLOP':>10s} {'GFLOP/s':>8s} {'%peak':>6s} "
        f"{'MB':>8s} {'GB/s':>7s}  rule",
    ]
    rows = report.rows if top is None else report.rows[:top]
    for row in rows:
        flops, nbytes, gflops, gbs = row.flops, row.bytes, row.gflops, row.gbs
        pct = gflops / peak_gflops if gflops is not None and peak_gflops else None
        rule = row.rule or ("-" if row.name == BUILTINS else "?")
        lines.append(
            f"{row.name[:44]:44s} {row.calls:5d} {row.seconds * 1e3:9.3f} {row.seconds / whole:6.1%} "
            f"{_cell(flops and flops / 1e6, '10.2f'):>10s} {_cell(gflops, '8.1f'):>8s} {_cell(pct, '6.1%'):>6s} "
            f"{_cell(nbytes and nbytes / 1e6, '8.2f'):>8s} {_cell(gbs, '7.1f'):>7s}  {rule}")
    if top is not None and len(report.rows) > top:
        rest = report.rows[top:]
        lines.append(f"{f'({len(rest)} more rows)':44s} {sum(r.calls for r in rest):5d} "
                     f"{sum(r.seconds for r in rest) * 1e3:9.3f} {sum(r.seconds for r in rest) / whole:6.1%}")
    kernels = [r for r in report.rows if r.name != BUILTINS]
    total_flops = sum(r.flops or 0.0 for r in kernels)
    gflops = total_flops / whole / 1e9 if whole > 0 else None
    lines += [
        f"{'kernels total':44s} {sum(r.calls for r in kernels):5d} {report.kernels_s * 1e3:9.3f} "
        f"{report.kernels_s / whole:6.1%} {total_flops / 1e6:10.2f}",
        f"{'whole inference (no instrumentation)':44s} {'':5s} {whole * 1e3:9.3f} {1:6.1%} {'':10s} "
        f"{_cell(gflops, '8.1f'):>8s} {_cell(gflops / peak_gflops if gflops and peak_gflops else None, '6.1%'):>6s}",
        f"(not in kernels: {report.other_s * 1e3:.3f} ms of VM dispatch and builtins; with the timing hook on, "
        f"an inference took {report.instrumented_s * 1e3:.3f} ms)",
    ]
    if report.extra.get("kernel_dims"):
        dims = ", ".join(f"{k}={v}" for k, v in report.extra["kernel_dims"].items())
        lines.append(f"(FLOPs and bytes counted at {dims}, the compile sample's dims)")
    lines.append("by rule:")
    by_rule: dict[str, list[Any]] = {}
    for row in kernels:
        by_rule.setdefault(row.rule or "?", []).append(row)
    for rule, group in sorted(by_rule.items(), key=lambda kv: -sum(r.seconds for r in kv[1])):
        seconds = sum(r.seconds for r in group)
        flops = sum(r.flops or 0.0 for r in group)
        rate = flops / seconds / 1e9 if seconds > 0 else None
        lines.append(f"  {rule:24s} {len(group):3d} kernels {seconds * 1e3:9.3f} ms {seconds / whole:6.1%}  "
                     f"{_cell(rate, '.1f')} GFLOP/s" + (f" ({rate / peak_gflops:.1%} of peak)" if rate and peak_gflops else ""))
    return lines


@click.command()
@click.argument("artifact", type=PATH)
@click.option("--inputs", "inputs_path", type=FILE, help=".npz (default: the bundled sample)")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: every CPU this process may use)")
@click.option("--repeat", type=click.IntRange(min=1), default=10, show_default=True, help="timed runs (medians)")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--top", type=click.IntRange(min=1), help="show only the N slowest kernels (totals cover all)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
def profile(artifact: Path, inputs_path: Path | None, threads: int | None, repeat: int, warmup: int,
            top: int | None, as_json: bool) -> None:
    """Time each kernel of an artifact: calls, ms, GFLOP/s, % of measured peak, GB/s, rule.

    Kernel times are medians over --repeat inferences, measured in place through the VM's
    instrumentation hook; FLOPs and bytes are the compiler's counts from each kernel's TIR.

    \b
    Example:
      ember profile resnet50.ember --threads 2 --repeat 20
    """
    from ember.runtime import load, usable_cpus
    from ember.runtime.profile import manifest_kernels, read_peak
    from ember.runtime.profile import profile as run_profile

    model = load(artifact, threads=threads)
    count = threads or usable_cpus()
    if not manifest_kernels(model):
        raise EmberError(f"{artifact}: the manifest has no per-kernel counts (compiled by an older ember); recompile it")
    feeds = load_npz(inputs_path or artifact / "sample.npz")
    report = run_profile(model, feeds, repeat=repeat, warmup=warmup, threads=count)
    report.extra["kernel_dims"] = model.manifest.data.get("kernel_dims") or {}
    peak = read_peak(count)
    if as_json:
        click.echo(json.dumps({"artifact": str(artifact), "peak": peak, **report.as_json()}))
        return
    for line in render(report, peak, artifact, top):
        click.echo(line)


COMMANDS = (profile,)
