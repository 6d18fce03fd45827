"""Tuning on request: MetaSchedule within a wall-clock budget, records in a persistent database.

    built = build(graph, spec, tune=TuneOptions(budget_s=600))   # `ember compile ... --tune 10m`

Where it stands in a build: `prepare` (one unscheduled PrimFunc per kernel) -> `schedule` (ember's
rules) -> `tune` (this module) -> `finalize` (weight re-layouts folded into constants).

- `tune` picks the kernels worth tuning (they hold a reduction and do real work), measures the
  rule's code of each in the first tenth of the budget and ranks them by the time it leaves
  above the machine's peak, times launches per inference. Then, in that order, the knob
  search: each ember rule offers its choices (register tile, bands of rows or channel panels,
  panel groups, serial or parallel) as knobs, and a coordinate descent builds and measures
  each value side by side with the current choice (a few seconds a kernel; MetaSchedule needs
  minutes a kernel on 2 cores and rarely beats these rules). What is left of the budget goes to
  MetaSchedule's evolutionary search, kernels no ember rule schedules first (progress bar on
  stderr). The best of each is re-measured side by side with the rule's default code and both
  times are stored in the database. Last (CHECK_SHARE of the budget), the whole model is timed
  with this run's records and without them (`_check_in_model`); each new record keeps the
  ratio and is used only where the model ran faster with them.
- `apply_records` runs in every compile (with or without `--tune`) when the database holds
  records for the target: each kernel whose record measured faster than the rule's code (by
  tune_db.RECORD_MARGIN) gets
  the record's schedule by replaying its trace or scheduling it with the record's knob values
  (~0.1 s, no search, no measuring). A record
  keeps the structural hash of the rule's code it was timed against; once the rule changes,
  the record waits for the next `--tune` to compare them again.

Records are keyed by (structural hash of the unscheduled PrimFunc, its `layout_free_buffers`
included and its name left out; the target as canonical JSON: mcpu, features, num-cores), so
any later model with the same kernel on the same target reuses them. MetaSchedule's
RewriteLayout postproc leaves the same `meta_schedule.layout_rewrite_preproc` blocks as the
rules' weight packing, so `finalize` folds a tuned kernel's packing into constants too.

Building and measuring run in this process (TVM.md: the default LocalBuilder's workers import
`tvm.s_tir.tensor_intrin`, 17 s, and hit the build timeout), on `threads` threads.
Tuning is never needed for correctness: a record that fails to replay is skipped (the rule's
schedule stays), and a damaged database file is reported and ignored.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import relax

from ember.compiler.errors import EmberError
from ember.targets import lowering
from ember.targets.tune_db import DEFAULT_DB, Record, TuneDB, TuneOptions, check_writable, parse_duration, warn

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DB", "Record", "TuneDB", "TuneOptions", "apply_records", "parse_duration", "tune"]

TUNED = "tuned"  # the rule name a kernel scheduled from a record reports

# Kernels below this many multiply-adds (anchor iteration space) are not worth a search.
MIN_WORK = 1 << 18
# A search iteration measures this many candidates of one kernel; the budget decides how many
# kernels get searched (each needs a few iterations to beat a hand-written schedule).
TRIALS_PER_ITER = 16
# One iteration on a 2-core machine: 5 to 20 s of evolutionary search and cost-model training,
# then 16 builds (0.1 s for a small matmul, ~1 s for a conv) and measurements (~0.3 s each).
# For planning only; the deadline is what stops the search.
SECONDS_PER_ITER = 30.0
MIN_ITERS_PER_KERNEL = 3
SIDE_BY_SIDE_ROUNDS = 3


# --- keys --------------------------------------------------------------------------------------

def target_key(target: tvm.target.Target) -> str:
    """The target as canonical JSON (kind, triple, mcpu, features, num-cores, ...)."""
    return json.dumps(_plain(target.export()), sort_keys=True, separators=(",", ":"))


def _plain(obj: Any) -> Any:
    """TVM containers -> JSON-able Python values."""
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")):
        return [_plain(v) for v in obj]
    if isinstance(obj, tvm.tirx.IntImm):
        return int(obj.value)
    if isinstance(obj, tvm.tirx.FloatImm):
        return float(obj.value)
    return str(obj)


def workload_func(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The kernel as tuned and keyed: unscheduled, its name left out (it differs per model)."""
    for attr in ("global_symbol", "tirx.is_scheduled"):
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    return func


def workload_key(func: tvm.tirx.PrimFunc) -> str:
    """Structural hash of the unscheduled kernel (its layout_free_buffers attr included)."""
    return f"{tvm_ffi.structural_hash(workload_func(func)) & (2**64 - 1):016x}"


def _launches(mod: tvm.IRModule) -> dict[str, int]:
    """call_tir sites per kernel in `main`: the kernel's weight (launches per inference)."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    count: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            count[name] = count.get(name, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return count


def _work(func: tvm.tirx.PrimFunc) -> int:
    """Iteration space of the kernel's largest reduction block (0 without a reduction)."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    try:
        infos = normalize_prim_func(tvm.s_tir.Schedule(tvm.ir.load_json(tvm.ir.save_json(workload_func(func))))) or []
    except Exception:  # a kernel dlight cannot normalize: not one MetaSchedule helps much either
        return 0
    best = 0
    for info in infos:
        if not info.is_reduction():
            continue
        extents = [d.dom for d in info.iters]
        if all(isinstance(e, int) for e in extents):
            best = max(best, math.prod(extents))
    return best


# --- applying records --------------------------------------------------------------------------

def search_base(sch: tvm.s_tir.Schedule) -> tvm.s_tir.Schedule:
    """What the search starts from: each spatial block whose consumers are all spatial (a bias
    reshape feeding the epilogue) inlined into them. MetaSchedule's multi-level tiling cannot
    move an epilogue under the anchor's tile while such a producer stays outside it (it fails
    the whole task). Deterministic, so a record's trace replays after it."""
    def spatial(block: Any) -> bool:
        return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        consumers = sch.get_consumers(block)
        if spatial(block) and consumers and all(spatial(c) for c in consumers):
            try:
                sch.compute_inline(block)
            except tvm.s_tir.schedule.ScheduleError:  # it writes an output, or cannot inline: it stays
                continue
    return sch


def _schedule_from(func: tvm.tirx.PrimFunc, trace: Any) -> tvm.s_tir.Schedule:
    """A private copy of the unscheduled kernel, the search base made, the trace replayed."""
    from tvm.s_tir.schedule import Trace

    sch = search_base(tvm.s_tir.Schedule(tvm.ir.load_json(tvm.ir.save_json(workload_func(func)))))
    Trace.apply_json_to_schedule(trace, sch)
    return sch


def _replay(func: tvm.tirx.PrimFunc, record: Record) -> tvm.tirx.PrimFunc:
    """The unscheduled kernel with the record's trace replayed on it."""
    scheduled = _schedule_from(func, record.trace).mod["main"]
    if func.attrs is not None and "global_symbol" in func.attrs:
        scheduled = scheduled.with_attr("global_symbol", func.attrs["global_symbol"])
    return scheduled.with_attr("tirx.is_scheduled", True)


def _with_knobs(func: tvm.tirx.PrimFunc, record: Record, tvm_target: tvm.target.Target) -> tvm.tirx.PrimFunc:
    """The kernel scheduled by the record's rule with the record's knob values."""
    from ember.targets.build import schedule_with

    rule = _rules_by_name().get(record.rule)
    scheduled = None if rule is None else schedule_with(rule, func, tvm_target, record.knobs)
    if scheduled is None:
        raise ValueError(f"rule {record.rule!r} does not take knobs {record.knobs}")
    return scheduled


def _rules_by_name() -> dict[str, Any]:
    from ember.targets.build import schedule_rules

    return {type(rule).__name__: rule for rule in schedule_rules(None)}


def _same_workload(func: tvm.tirx.PrimFunc, record: Record) -> bool:
    try:
        return bool(tvm_ffi.structural_equal(workload_func(func), tvm.ir.load_json(record.func)))
    except Exception:
        return False


def apply_records(unscheduled: tvm.IRModule, scheduled: tvm.IRModule, applied: dict[str, str],
                  tvm_target: tvm.target.Target, db: TuneDB | str | Path = DEFAULT_DB) -> tuple[tvm.IRModule, dict[str, str]]:
    """Each kernel whose record (same kernel, same target) measured faster than the rule's
    schedule gets the record's schedule; the others keep the rule's. ({kernel: rule} updated.)

    Cheap (trace replay, no search, no measuring); a record that fails to replay is skipped.
    """
    db = db if isinstance(db, TuneDB) else TuneDB.load(db)
    tkey = target_key(tvm_target)
    if not db.for_target(tkey):
        return scheduled, applied
    mod, applied = scheduled, dict(applied)
    for gvar, func in unscheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        record = db.lookup(workload_key(func), tkey)
        if record is None or not record.faster or not _same_workload(func, record):
            continue
        if record.rule_hash != workload_key(scheduled[gvar.name_hint]):
            # The rule has changed since the record was timed against it: which is faster is
            # unknown until `--tune` measures them again, and the rule's code is the default.
            log.debug("record for %s was timed against another version of its rule", gvar.name_hint)
            continue
        try:
            with tvm_target:
                mod[gvar] = _replay(func, record) if record.knobs is None else _with_knobs(func, record, tvm_target)
        except Exception as err:  # a record from another TVM, or a bug: the rule's schedule stays
            log.debug("record for %s did not replay: %s", gvar.name_hint, err)
            continue
        applied[gvar.name_hint] = TUNED
    return mod, applied


# --- measuring in this process -----------------------------------------------------------------

@contextmanager
def _threads(count: int) -> Iterator[None]:
    from ember.runtime.model import set_threads

    set_threads(count)
    yield


class _Measurer:
    """Build and time kernels in this process: what the in-process builder and runner share."""

    def __init__(self, threads: int, deadline: float) -> None:
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

        self.threads = threads
        self.deadline = deadline
        self.modules: dict[str, Any] = {}
        self.counter = itertools.count()
        self.config = EvaluatorConfig(number=1, repeat=3, min_repeat_ms=10, enable_cpu_cache_flush=False)
        self.batch_end: float | None = None  # when the last measured batch ended
        self.search_s = 0.0  # how long the search took to propose the batch after it
        self.run_s = 0.3  # running averages of one measurement's and one build's wall time
        self.build_s = 0.3

    def spent(self) -> bool:
        return time.perf_counter() > self.deadline

    def no_time_for_another_batch(self, steps: int = 1) -> bool:
        """Whether `steps` more search steps would end past the deadline (one cannot be cut short)."""
        return time.perf_counter() + steps * self.search_s > self.deadline

    def batch_started(self) -> None:
        if self.batch_end is not None:
            self.search_s = time.perf_counter() - self.batch_end
            self.batch_end = None

    def build(self, mod: tvm.IRModule, target: tvm.target.Target) -> str:
        """Compile a one-kernel module (weight re-layouts removed: the runner feeds packed
        arguments, as MetaSchedule measures); a handle for `run`."""
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        start = time.perf_counter()
        handle = f"ember-mem:{next(self.counter)}"
        self.modules[handle] = tvm_build(mod, target=target, pipeline=lowering.PIPELINE)
        self.build_s = 0.7 * self.build_s + 0.3 * (time.perf_counter() - start)
        return handle

    def run(self, handle: str, args_info: list[Any], keep: bool = False) -> list[float]:
        """Seconds per call of a built kernel on random arguments (`repeat` samples)."""
        from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument, default_run_evaluator

        start = time.perf_counter()
        rt_mod = self.modules[handle] if keep else self.modules.pop(handle)
        dev = tvm.cpu()
        args = default_alloc_argument(dev, args_info, 1)
        costs = default_run_evaluator(rt_mod, dev, self.config, args)
        self.run_s = 0.7 * self.run_s + 0.3 * (time.perf_counter() - start)
        return costs

    def room_for_runs(self, built: int) -> bool:
        """Whether `built` more candidates could still be measured before the deadline (a
        candidate built and never measured is wasted time)."""
        return time.perf_counter() + self.build_s + (built + 1) * self.run_s < self.deadline

    def time_side_by_side(self, mods: list[tvm.IRModule], target: tvm.target.Target, rounds: int) -> list[float]:
        """Median seconds per call of each one-kernel module, built once, measured in turns."""
        from tvm.s_tir.meta_schedule.arg_info import ArgInfo

        infos = [[a.as_json() for a in ArgInfo.from_entry_func(m, remove_preproc=True)] for m in mods]
        handles = [self.build(m, target) for m in mods]
        samples: list[list[float]] = [[] for _ in mods]
        for _ in range(rounds):
            for handle, info, out in zip(handles, infos, samples):
                out.extend(self.run(handle, info, keep=True))
        for handle in handles:
            self.modules.pop(handle, None)
        return [sorted(t)[len(t) // 2] for t in samples]


def _make_builder_runner(measurer: _Measurer) -> tuple[Any, Any]:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            measurer.batch_started()
            results = []
            for item in build_inputs:
                if not measurer.room_for_runs(sum(1 for r in results if r.artifact_path)):
                    results.append(BuilderResult(None, "tuning budget spent"))
                    continue
                try:
                    results.append(BuilderResult(measurer.build(item.mod, item.target), None))
                except Exception as err:
                    results.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[:500]}"))
            return results

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            futures = []
            for item in runner_inputs:
                if measurer.spent():
                    measurer.modules.pop(item.artifact_path, None)
                    futures.append(LocalRunnerFuture(res=None, error_message="tuning budget spent"))
                    continue
                try:
                    costs = measurer.run(item.artifact_path, [a.as_json() for a in item.args_info])
                    futures.append(LocalRunnerFuture(res=costs, error_message=None))
                except Exception as err:
                    futures.append(LocalRunnerFuture(res=None, error_message=f"{type(err).__name__}: {str(err)[:500]}"))
            return futures

    return InProcessBuilder(), InProcessRunner()


def _make_stopper(measurer: _Measurer, ntasks: int, tick: Callable[[], None]) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class StopAtDeadline(PyMeasureCallback):
        """Progress after every batch; every task terminated once the budget is spent."""

        def apply(self, task_scheduler: Any, task_id: int, *_: Any) -> None:
            tick()
            measurer.batch_end = time.perf_counter()
            live = sum(1 for record in task_scheduler.tasks_[:ntasks] if not record.is_terminated)
            # Only the task being joined may be terminated here (MetaSchedule checks that a task
            # it dispatches or joins later is live); each other task stops at its own next join,
            # after one more search step, so stop early enough for all of those steps.
            if measurer.no_time_for_another_batch(steps=live):
                task_scheduler.terminate_task(task_id)

    return StopAtDeadline()


# --- tuning ------------------------------------------------------------------------------------

@dataclass
class _Task:
    name: str
    func: tvm.tirx.PrimFunc  # unscheduled (not to be handed to a Schedule: see `fresh`)
    scheduled: tvm.tirx.PrimFunc  # the rule's schedule (or the unscheduled kernel)
    rule: str
    launches: int
    work: int
    workload: str = ""
    func_json: str = ""  # the unscheduled kernel, serialized before anything schedules it
    rule_s: float | None = None

    def fresh(self) -> tvm.tirx.PrimFunc:
        """A private copy of the unscheduled kernel (schedules and tuning contexts may
        rewrite the functions they are given in place)."""
        return tvm.ir.load_json(self.func_json)

    @property
    def weight(self) -> float:
        return float(self.launches * self.work)


def _tasks(unscheduled: tvm.IRModule, scheduled: tvm.IRModule, applied: dict[str, str]) -> list[_Task]:
    """Kernels worth a search, heaviest (work x launches) first."""
    launches = _launches(unscheduled)
    tasks = []
    for gvar, func in unscheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or launches.get(gvar.name_hint, 0) == 0:
            continue
        work = _work(func)
        if work < MIN_WORK:
            continue
        tasks.append(_Task(gvar.name_hint, func, scheduled[gvar.name_hint], applied.get(gvar.name_hint, ""),
                           launches[gvar.name_hint], work, workload_key(func), tvm.ir.save_json(workload_func(func))))
    return sorted(tasks, key=lambda t: -t.weight)


def _one_kernel(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": workload_func(func).with_attr("global_symbol", "main")})


class _Progress:
    """A bar on stderr over the budget's seconds (nothing when off)."""

    def __init__(self, on: bool, budget_s: float, label: str) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.shown = 0
        self.bar = None
        if on:
            import click

            self.bar = click.progressbar(length=max(1, int(budget_s)), label=label, file=sys.stderr,
                                         show_eta=True, show_percent=True)
            self.bar.__enter__()

    def tick(self) -> None:
        if self.bar is None:
            return
        now = min(int(time.perf_counter() - self.start), int(self.budget_s))
        if now > self.shown:
            self.bar.update(now - self.shown)
            self.shown = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(max(0, int(self.budget_s) - self.shown))
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def _cpu_intrinsics_only(tvm_target: tvm.target.Target) -> Iterator[None]:
    """Make `import tvm.s_tir.tensor_intrin` (which TuneContext does) load only this CPU's
    intrinsics: the whole package takes 17 to 50 s, mostly for CUDA ones (TVM.md).

    A stand-in package object is in sys.modules while the tuning contexts are made; the CPU
    intrinsic modules it loads stay registered, and the real package still imports later.
    """
    import importlib
    import importlib.util
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(name)
    stub = types.ModuleType(name)
    stub.__path__ = list(spec.submodule_search_locations or [])
    stub.__package__ = name
    sys.modules[name] = stub
    try:
        triple = str(tvm_target.attrs.get("mtriple", ""))
        importlib.import_module(f"{name}.{'arm_cpu' if triple.startswith(('aarch64', 'arm')) else 'x86'}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


@contextmanager
def _quiet_meta_schedule() -> Iterator[None]:
    """MetaSchedule logs a table per iteration at INFO: keep it out of the user's terminal."""
    names = ["tvm.s_tir.meta_schedule", "tvm.meta_schedule"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _peak_flops(threads: int) -> float:
    """This machine's fp32 FLOP/s at `threads` (tools/peak.py's cache; 100 GFLOP/s a thread
    when it was not measured)."""
    from ember.runtime.profile import read_peak

    try:
        peak = read_peak(threads) or {}
    except Exception:  # an unreadable cache: the guess will do for ranking
        peak = {}
    return float(peak.get("numpy_matmul_gflops") or 100.0 * threads) * 1e9


def _rank(tasks: list[_Task], measurer: _Measurer, tvm_target: tvm.target.Target, until: float) -> list[_Task]:
    """The kernels by how much time per inference the rules leave above the machine's peak
    (launches x (rule's time - FLOPs / peak)), as far as they could be measured before
    `until`; the unmeasured ones after them, heaviest first. A well-scheduled big matmul has
    less to gain than a mediocre small kernel."""
    peak = _peak_flops(measurer.threads)
    for task in tasks:
        if time.perf_counter() > until:
            break
        try:
            task.rule_s = measurer.time_side_by_side([_one_kernel(task.scheduled)], tvm_target, 1)[0]
        except Exception as err:  # the rule's code cannot be measured alone: not a candidate
            log.info("kernel %s: the rule's schedule could not be measured (%s)", task.name, type(err).__name__)
            task.rule_s = 0.0
    measured = [t for t in tasks if t.rule_s is not None and t.rule_s > 0]
    gap = {t.name: t.launches * max(t.rule_s - 2.0 * t.work / peak, 0.0) for t in measured}
    return sorted(measured, key=lambda t: -gap[t.name]) + [t for t in tasks if t.rule_s is None]


def _plan(tasks: list[_Task], budget_s: float) -> list[_Task]:
    """As many of the kernels as the budget gives a few search iterations each."""
    fit = int(budget_s / (SECONDS_PER_ITER * MIN_ITERS_PER_KERNEL))
    return tasks[: max(1, fit)]


def _context(task: _Task, seed: int, tvm_target: tvm.target.Target, threads: int) -> Any:
    """MetaSchedule's tuning context of one kernel: its default CPU design space, evolutionary
    search with a population sized for minutes of budget, not hours."""
    from tvm.s_tir import meta_schedule as ms

    strategy = ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=16, genetic_num_iters=2)
    base = search_base(tvm.s_tir.Schedule(_one_kernel(task.fresh()))).mod
    return ms.TuneContext(mod=base, target=tvm_target, space_generator="post-order-apply",
                          search_strategy=strategy, task_name=task.name, rand_state=seed, num_threads=threads)


def _search(tasks: list[_Task], tvm_target: tvm.target.Target, measurer: _Measurer, progress: _Progress) -> dict[str, tuple[Any, int]]:
    """MetaSchedule's evolutionary search over the tasks until the deadline:
    {kernel: (best candidate's trace, trials measured)}."""
    from tvm.s_tir import meta_schedule as ms

    pairs = []
    with _cpu_intrinsics_only(tvm_target):
        for i, task in enumerate(tasks):
            try:  # design spaces are made again in the search; failing here keeps it from failing there
                ctx = _context(task, i + len(tasks), tvm_target, measurer.threads)
                ctx.generate_design_space()
            except Exception as err:
                log.info("kernel %s is not tuned: MetaSchedule has no design space for it (%s)", task.name,
                         str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__)
                continue
            pairs.append((task, ctx))
    if not pairs:
        return {}
    tasks, contexts = [t for t, _ in pairs], [c for _, c in pairs]
    database = ms.database.MemoryDatabase()
    builder, runner = _make_builder_runner(measurer)
    callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(),
                 _make_stopper(measurer, len(tasks), progress.tick)]
    scheduler = ms.task_scheduler.GradientBased()
    try:
        scheduler.tune(
            tasks=contexts, task_weights=[t.launches for t in tasks], max_trials_global=100000,
            max_trials_per_task=100000, num_trials_per_iter=TRIALS_PER_ITER, builder=builder, runner=runner,
            measure_callbacks=callbacks, database=database,
            cost_model=ms.cost_model.XGBModel(num_tuning_cores=measurer.threads),
        )
    except Exception as err:  # what was measured before the failure is still worth keeping
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        warn(f"the search stopped early ({type(err).__name__}: {text}); keeping what it measured")
    best: dict[str, tuple[Any, int]] = {}
    for task, ctx in zip(tasks, contexts):
        workload = database.commit_workload(ctx.mod)
        records = database.get_top_k(workload, 1)
        if records:
            trials = len(database.get_top_k(workload, 100000))
            best[task.name] = (records[0].trace, trials)
    return best


# --- the rules' knob search ----------------------------------------------------------------------

# Each variant of a knob is measured side by side with the current choice, this many rounds.
KNOB_ROUNDS = 3
# A knob value is taken only when it beats the current choice by this fraction (noise guard).
KNOB_MARGIN = 0.03
# With kernels no ember rule schedules (MetaSchedule's best chances), the knob search stops at
# this fraction of the budget and leaves the rest to the search over those.
KNOB_SHARE = 0.6
# MetaSchedule is not started with less of the budget left than this (one search step).
MIN_SEARCH_S = 10.0


def knob_space(rule: Any, func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> dict[str, list[int]]:
    """The knobs a rule offers on a kernel ({} for TVM's own rules); every ember rule also takes
    `serial` (run on the calling thread or across the cores)."""
    if not type(rule).__module__.startswith("ember."):
        return {}
    space = dict(rule.knob_space(func, target)) if hasattr(rule, "knob_space") else {}
    space["serial"] = [0, 1]
    return space


@dataclass
class _KnobResult:
    knobs: dict[str, int]
    trials: int
    rule_s: float
    tuned_s: float


def _knob_search(task: _Task, rule: Any, tvm_target: tvm.target.Target, measurer: _Measurer, until: float,
                 tick: Callable[[], None]) -> _KnobResult | None:
    """Coordinate descent over the rule's knobs: for each knob in turn, every value the kernel
    takes is built and measured side by side with the current choice, and the fastest is kept
    if it wins by KNOB_MARGIN. Variants whose code is identical are measured once. The winner
    (or, when the default won every round, the closest alternative, so the database shows the
    search) is measured against the rule's default code at the end; None when no value applied."""
    from ember.targets.build import schedule_with

    space = knob_space(rule, task.fresh(), tvm_target)
    if not space:
        return None
    current: dict[str, int] = {}
    current_mod = _one_kernel(task.scheduled)
    runner_up: tuple[dict[str, int], tvm.IRModule, float] | None = None  # the best value that did not win
    seen = {workload_key(task.scheduled)}
    trials = 0
    for name, values in space.items():
        if time.perf_counter() > until:
            break
        variants = []
        for value in values:
            knobs = {**current, name: value}
            func = schedule_with(rule, task.fresh(), tvm_target, knobs)
            if func is None:
                continue
            key = workload_key(func)
            if key in seen:
                continue
            seen.add(key)
            variants.append((knobs, func))
        if not variants:
            continue
        mods = [current_mod, *(_one_kernel(f) for _, f in variants)]
        try:
            times = measurer.time_side_by_side(mods, tvm_target, KNOB_ROUNDS)
        except Exception as err:  # a variant that does not build or run: this knob stays
            log.info("kernel %s: knob %s not measured (%s)", task.name, name, type(err).__name__)
            continue
        trials += len(variants)
        tick()
        best = min(range(1, len(times)), key=times.__getitem__)
        if times[best] < (1.0 - KNOB_MARGIN) * times[0]:
            current, current_mod = variants[best - 1][0], mods[best]
        elif not current and (runner_up is None or times[best] / times[0] < runner_up[2]):
            runner_up = (variants[best - 1][0], mods[best], times[best] / times[0])
    if not current and runner_up is None:
        return None
    if not current:  # the default won every round: the record keeps the closest alternative (and says so)
        current, current_mod = runner_up[0], runner_up[1]
    rule_s, tuned_s = measurer.time_side_by_side([_one_kernel(task.scheduled), current_mod], tvm_target, SIDE_BY_SIDE_ROUNDS)
    return _KnobResult(current, trials, rule_s, tuned_s)


def tune(unscheduled: tvm.IRModule, scheduled: tvm.IRModule, applied: dict[str, str],
         tvm_target: tvm.target.Target, options: TuneOptions) -> tuple[tvm.IRModule, dict[str, str]]:
    """Search better schedules than the rules' for the heaviest kernels within
    `options.budget_s`, store them, then apply every record that beats its rule.

    Without a budget this is `apply_records`. The database is written only when a search
    produced records; an unwritable database path fails before any search.
    """
    db = TuneDB.load(options.path)
    if not options.budget_s:
        return apply_records(unscheduled, scheduled, applied, tvm_target, db)
    before = dict(db.records)
    budget_s = options.budget_s * (1.0 - CHECK_SHARE)  # (the rest: the model timed with and without)
    check_writable(options.path)
    from ember.runtime.model import usable_cpus

    threads = options.threads or usable_cpus()
    start = time.perf_counter()
    candidates = _tasks(unscheduled, scheduled, applied)
    if not candidates:
        return apply_records(unscheduled, scheduled, applied, tvm_target, db)
    tkey = target_key(tvm_target)
    measurer = _Measurer(threads, math.inf)
    progress = _Progress(options.progress, options.budget_s, f"tuning ({len(candidates)} candidate kernels)")
    kept = 0
    try:
        with _threads(threads), _quiet_meta_schedule(), tvm_target:
            # Up to a tenth of the budget goes to measuring the rules' code, to pick what to tune.
            ranked = _rank(candidates, measurer, tvm_target, start + 0.1 * budget_s)
            progress.tick()
            # The rules' knobs first (a few builds each, and the rules are near the machine's
            # limit where they apply), heaviest gap first; MetaSchedule's search then gets what
            # is left, on the kernels no ember rule schedules first.
            rules = _rules_by_name()
            generic = [t for t in ranked if not knob_space(rules.get(t.rule), t.fresh(), tvm_target)]
            generic_names = {t.name for t in generic}
            knob_until = start + budget_s * (KNOB_SHARE if generic else 1.0) - 4.0
            for task in ranked:
                if time.perf_counter() > knob_until:
                    break
                if task.name in generic_names:
                    continue
                found = _knob_search(task, rules[task.rule], tvm_target, measurer, knob_until, progress.tick)
                if found is not None:
                    kept += db.put(Record(
                        workload=task.workload, target=tkey, kernel=task.name, rule=task.rule, rule_s=found.rule_s,
                        rule_hash=workload_key(task.scheduled), tuned_s=found.tuned_s, trials=found.trials,
                        threads=threads, date=_now(), trace=None, func=task.func_json, knobs=found.knobs))
            left = start + budget_s - time.perf_counter()
            tasks = _plan(generic + [t for t in ranked if t.name not in generic_names], left) if left > MIN_SEARCH_S else []
            # Keep a few seconds of the budget for the final side-by-side measurements.
            measurer.deadline = start + max(1.0, budget_s - 4.0 * len(tasks))
            best = _search(tasks, tvm_target, measurer, progress) if tasks else {}
            measurer.deadline = math.inf
            for task in tasks:
                if task.name not in best:
                    continue
                trace, trials = best[task.name]
                rule_s, tuned_s = _side_by_side(task, trace, tvm_target, measurer)
                kept += db.put(Record(
                    workload=task.workload, target=tkey, kernel=task.name, rule=task.rule, rule_s=rule_s, rule_hash=workload_key(task.scheduled),
                    tuned_s=tuned_s, trials=trials, threads=threads,
                    date=_now(),
                    trace=_plain(trace.as_json()), func=task.func_json,
                ))
            if kept:
                _check_in_model(unscheduled, scheduled, applied, tvm_target, db, before, start + options.budget_s)
    except EmberError:
        raise
    except Exception as err:  # tuning is an optimization: its failure costs speed, never the build
        warn(f"tuning stopped early ({type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}); "
              "the schedule rules' code is used where no record beats it")
    finally:
        progress.close()
    if kept:
        db.save(merge=True)
    return apply_records(unscheduled, scheduled, applied, tvm_target, db)


# The share of a `--tune` budget kept for timing the model with and without the run's records.
CHECK_SHARE = 0.15
MODEL_BLOCKS = 6  # blocks of consecutive runs per variant, alternating
MODEL_BLOCK_S = 0.25  # seconds of runs a block


def _copy(mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)


def _check_in_model(unscheduled: tvm.IRModule, scheduled: tvm.IRModule, applied: dict[str, str],
                    tvm_target: tvm.target.Target, db: TuneDB, before: dict[Any, Record], until: float) -> None:
    """Time the whole model with the records this run stored and without them (the records the
    database held before), side by side; each new record keeps the ratio (`in_model`), and is
    used only where the model ran faster with them (Record.faster). A kernel timed alone runs
    with its operands warm in cache and its input written by its own threads; inside the model
    a variant that won alone can lose (BENCHMARKS.md, section 6)."""
    new = [r for key, r in db.records.items() if before.get(key) is not r]
    if not new:
        return
    base, _ = apply_records(unscheduled, _copy(scheduled), applied, tvm_target, TuneDB(db.path, dict(before)))
    tuned, _ = apply_records(unscheduled, _copy(scheduled), applied, tvm_target, db)
    if all(base[g].same_as(tuned[g]) for g, f in tuned.functions_items() if isinstance(f, tvm.tirx.PrimFunc)):
        return  # (no new record beats its rule: nothing changes in the model)
    try:
        times = _time_models([base, tuned], tvm_target, until)
    except Exception as err:  # (a model that does not run on random inputs: the records stand alone)
        log.info("the model was not timed with the new records: %s", err)
        return
    if times is None:
        return
    ratio = times[1] / times[0]
    for record in new:
        record.in_model = ratio
    log.info("the model with this run's records: %.3f ms -> %.3f ms (%.3fx)", times[0] * 1e3, times[1] * 1e3, ratio)


def _model_inputs(mod: tvm.IRModule) -> list[Any] | None:
    """Random inputs for `main` (None where a size is symbolic or an input is not a tensor)."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = []
    for param in mod["main"].params:
        info = param.ty
        if not isinstance(info, relax.TensorType) or not isinstance(info.shape, relax.ShapeExpr):
            return None
        shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in info.shape.values]
        if None in shape:
            return None
        dtype = str(info.dtype)
        array = rng.standard_normal(shape).astype(dtype) if dtype.startswith("float") else np.zeros(shape, dtype)
        inputs.append(tvm.runtime.tensor(array))
    return inputs


def _time_models(mods: list[tvm.IRModule], tvm_target: tvm.target.Target, until: float) -> list[float] | None:
    """Median seconds per inference of each scheduled module, built as `build` builds and run in
    alternating blocks of consecutive runs (None where the inputs cannot be made up)."""
    import statistics

    from tvm.runtime import vm as tvm_vm

    from ember.targets.build import finish

    inputs = _model_inputs(mods[0])
    if inputs is None:
        return None
    vms = []
    for mod in mods:
        mod, _ = finish(mod, tvm_target)
        vms.append(tvm_vm.VirtualMachine(tvm.compile(mod, target=tvm_target, tir_pipeline=lowering.PIPELINE), tvm.cpu()))
    once = 0.0
    for vm in vms:  # (warm-up)
        begin = time.perf_counter()
        vm["main"](*inputs)
        once = max(once, time.perf_counter() - begin)
    runs = max(2, int(MODEL_BLOCK_S / max(once, 1e-6)))
    samples: list[list[float]] = [[] for _ in vms]
    for block in range(MODEL_BLOCKS):
        if block >= 2 and time.perf_counter() > until:
            break
        for vm, out in zip(vms, samples):
            time.sleep(0.05)  # (the other variant's spinning workers settle)
            for _ in range(runs):
                begin = time.perf_counter()
                vm["main"](*inputs)
                out.append(time.perf_counter() - begin)
    return [statistics.median(out) for out in samples]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _side_by_side(task: _Task, trace: Any, tvm_target: tvm.target.Target, measurer: _Measurer,
                  rounds: int = SIDE_BY_SIDE_ROUNDS) -> tuple[float, float]:
    """The rule's schedule and the tuned one, measured alternately: (rule_s, tuned_s) medians."""
    rule_mod, tuned_mod = _one_kernel(task.scheduled), _one_kernel(_schedule_from(task.func, trace.as_json()).mod["main"])
    rule_s, tuned_s = measurer.time_side_by_side([rule_mod, tuned_mod], tvm_target, rounds)
    return rule_s, tuned_s
