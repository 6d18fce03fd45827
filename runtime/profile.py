"""Per-kernel timing of a loaded artifact, with the TVM runtime alone.

    report = profile(model, feeds, repeat=10)
    for row in report.rows: row.name, row.calls, row.seconds, row.flops, row.bytes, row.rule

TVM 0.27's Relax VM has no profiler any more (`VirtualMachine(..., profile=True)` is gone and
the runtime library holds no `vm_profiler`), so the VM's instrumentation hook is used: it is
called before and after every Call instruction, with the callee's symbol. Each run records a
timestamp on both sides of each call; a kernel's time in a run is the sum over its call sites,
and the report gives the median over `repeat` runs. Runs with and without the hook alternate. Calls to the VM's builtins (allocation,
shape checks, reshapes) are summed as one row. The hook costs about a microsecond a call,
which lands in the timed intervals; the whole inference is also timed without the hook, and
`other_s` is whatever the kernels do not explain (VM dispatch, builtins, the hook).

FLOPs, bytes, rule and calls per kernel come from the manifest's `kernels` list, written by
the compiler from the kernels' TIR.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ember.runtime.artifact import ArtifactError, Specialization
from ember.runtime.model import Model

PEAK_CACHE = "~/.cache/ember/peak.json"  # written by tools/peak.py
BUILTINS = "(VM builtins)"


@dataclass(frozen=True)
class KernelRow:
    """One kernel in one inference: its calls, their median total seconds, FLOPs and bytes
    (the compiler's per-call counts times the calls) and the rule that scheduled it."""

    name: str
    calls: int
    seconds: float
    flops: float | None = None
    bytes: float | None = None
    rule: str | None = None

    @property
    def gflops(self) -> float | None:
        """GFLOP/s, when the FLOPs are known and the time is not zero."""
        return self.flops / self.seconds / 1e9 if self.flops is not None and self.seconds > 0 else None

    @property
    def gbs(self) -> float | None:
        """GB/s of the kernel's compulsory traffic (each operand read once, output written once)."""
        return self.bytes / self.seconds / 1e9 if self.bytes is not None and self.seconds > 0 else None


@dataclass
class Profile:
    """A per-kernel report: rows sorted by time, and the whole inference's median."""

    rows: list[KernelRow]
    inference_s: float  # median of whole inferences without the hook
    instrumented_s: float  # median of whole inferences with the hook
    runs: int
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kernels_s(self) -> float:
        """Sum of the kernels' median times (builtins excluded)."""
        return sum(r.seconds for r in self.rows if r.name != BUILTINS)

    @property
    def other_s(self) -> float:
        """Whole inference minus the kernels: VM dispatch, builtins, the hook's own cost."""
        return self.inference_s - self.kernels_s

    @property
    def flops(self) -> float:
        """FLOPs of one inference (kernels with known counts)."""
        return sum(r.flops or 0.0 for r in self.rows)

    def as_json(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {
            "threads": self.threads, "runs": self.runs, "inference_s": self.inference_s,
            "instrumented_s": self.instrumented_s, "kernels_s": self.kernels_s, "other_s": self.other_s,
            "flops": self.flops, **self.extra,
            "kernels": [{"name": r.name, "calls": r.calls, "seconds": r.seconds, "flops": r.flops, "bytes": r.bytes,
                         "gflops": r.gflops, "gbs": r.gbs, "rule": r.rule} for r in self.rows],
        }


def manifest_kernels(model: Model, spec: Specialization | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's per-kernel counts by name, of the generic library or of a specialization
    ({} for artifacts compiled before they existed)."""
    kernels = (spec.entry if spec is not None else model.manifest.data).get("kernels")
    return {k["name"]: k for k in kernels} if isinstance(kernels, list) else {}


def profile(model: Model, feeds: Mapping[str, np.ndarray], repeat: int = 10, warmup: int = 2,
            threads: int = 0) -> Profile:
    """Time each kernel of `model` on `feeds`: median over `repeat` runs after `warmup`."""
    import tvm

    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    vm, spec = model.variant([np.shape(feeds[i.name]) for i in model.inputs])  # the library these inputs run
    known = manifest_kernels(model, spec)
    run_once = model.runner(feeds)
    clock = time.perf_counter_ns
    events: list[tuple[int, str, bool]] = []

    def hook(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        events.append((clock(), symbol, before))
        return 0

    instrument = tvm.runtime.convert(hook)
    per_run: list[dict[str, int]] = []
    counts: dict[str, int] = {}
    plain, hooked = [], []
    # plain and hooked runs alternate, so load from other processes hits both alike
    try:
        for index in range(warmup + repeat):
            vm.set_instrument(None)
            start = time.perf_counter()
            run_once()
            elapsed = time.perf_counter() - start
            vm.set_instrument(instrument)
            events.clear()
            start = time.perf_counter()
            run_once()
            elapsed_hooked = time.perf_counter() - start
            if index < warmup:
                continue
            plain.append(elapsed)
            hooked.append(elapsed_hooked)
            calls: dict[str, int] = defaultdict(int)
            per_run.append(leaf_calls(events, known, calls))
            counts = dict(calls)
    finally:
        vm.set_instrument(None)
    rows = []
    for name, n_calls in counts.items():
        seconds = statistics.median(run.get(name, 0) for run in per_run) / 1e9
        info = known.get(name, {})
        flops, nbytes = info.get("flops"), info.get("bytes")  # per call in the manifest
        rows.append(KernelRow(name, n_calls, seconds, None if flops is None else flops * n_calls,
                              None if nbytes is None else nbytes * n_calls, info.get("rule")))
    rows.sort(key=lambda r: (-r.seconds, r.name))
    extra = {"specialization": spec.dims} if spec is not None else {}
    return Profile(rows, statistics.median(plain), statistics.median(hooked), repeat, threads, extra)


def leaf_calls(events: list[tuple[int, str, bool]], known: Mapping[str, Any], calls: dict[str, int]) -> dict[str, int]:
    """Nanoseconds per kernel in one run from the hook's (time, symbol, before) events; `calls`
    counts the calls. Calls are paired by nesting; a call that contains other calls (a closure)
    is left out, its inner calls count; builtins are summed under BUILTINS."""
    totals: dict[str, int] = defaultdict(int)
    stack: list[tuple[int, bool]] = []  # (start, has inner calls)
    for t, symbol, before in events:
        if before:
            if stack:
                stack[-1] = (stack[-1][0], True)
            stack.append((t, False))
            continue
        start, nested = stack.pop()
        if nested:
            continue
        name = str(symbol)
        key = name if (name in known or not name.startswith("vm.builtin.")) else BUILTINS
        totals[key] += t - start
        calls[key] += 1
    return dict(totals)


def read_peak(threads: int, path: str | Path = PEAK_CACHE) -> dict[str, float] | None:
    """tools/peak.py's cached measurements at this thread count, or None when not measured."""
    cache = Path(path).expanduser()
    if not cache.is_file():
        return None
    try:
        data = json.loads(cache.read_text())
        entry = data["threads"].get(str(threads))
    except (ValueError, KeyError, AttributeError) as err:
        raise ArtifactError(f"{cache}: unreadable peak cache ({err}); re-run `python tools/peak.py`") from None
    return dict(entry) if entry else None
