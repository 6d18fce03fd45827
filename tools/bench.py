"""Benchmark harness: onnxruntime vs ember (and optionally TVM as-is) on the zoo, side by side.

    python tools/bench.py [--models a,b] [--threads 1,2] [--batch 8] [--repeat 20] [--budget 20]
                          [--skip-tvm] [--write]

For each model, on the same inputs (the zoo's NAME.inputs.npz) and at every
thread count of --threads:
- onnxruntime with its default graph optimizations, intra-op threads = the thread count;
- ember: the default pipeline, compiled once to an artifact written by the driver and loaded by
  ember.runtime; TVM's thread pool is resized to the thread count before each block of runs;
- TVM as-is (unless --skip-tvm): tvm.relax.frontend.onnx from_onnx, LegalizeOps, dlight's CPU
  rules (GEMV, reduction) where they apply, then tvm.compile with TVM's default pipeline (the
  peer only: ember's compile path never uses TVM's ONNX frontend).

`--batch B` adds a row at batch B for every CNN of the zoo (CNNS): a model with a symbolic batch
dim is fed B samples; a fixed-batch model gets a copy with its input's batch dim set to B
(BATCH_DIR), used only when onnxruntime runs the copy and its first output row matches the
batch-1 model's; otherwise the row says why not.

Timing: every column is built first, then the columns are timed in --blocks alternating
blocks of consecutive runs (ORT 1t, ember 1t, ORT 2t, ember 2t, ...), so load from other
processes on a shared machine hits all columns alike, without interleaving single runs
(spinning thread pools would slow each other). With --isolate (the default) each block of
onnxruntime or ember runs in a fresh process of its own: the two runtimes' thread pools slow
each other 2-4x even in alternating blocks inside one process. Cells are medians of --repeat timed runs after
--warmup warm-up runs; a column whose first run shows that --repeat runs would take longer
than --budget seconds is cut to max(3, budget / run time) runs, and its cell says how many.
The ratio is ember / onnxruntime at the same thread count (< 1: ember is faster); the geomean
rows cover the batch-1 zoo and the batch-B CNNs separately. Compile time is ember's import +
passes + build + kernel counts (not its checks against the interpreter); the compile runs in a
child process stopped after --compile-timeout seconds. A column that fails shows its error
in its cell and the run goes on. `--write` replaces the table between the bench markers in
BENCHMARKS.md, with the command that produced it.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
CNNS = ("digits_cnn", "digits_cnn_dyn", "resnet18", "resnet50", "mobilenetv2")
BATCH_DIR = zoo.DEFAULT_DIR / "batched"
MIN_RUNS = 3


@dataclass
class Column:
    """One contender at one thread count: a zero-argument run function, or the error that stopped it."""

    name: str
    threads: int
    run: Callable[[], Any] | None = None
    before: Callable[[], None] | None = None  # called before each block (sizes TVM's pool)
    error: str = ""
    rounds: int = 0
    warmup: int = 0
    times: list[float] = field(default_factory=list)
    spec: tuple[str, str, str, int] | None = None  # (kind, model or artifact, feeds .npz, threads): run in a child

    @property
    def median_ms(self) -> float | None:
        return float(np.median(self.times) * 1e3) if self.times else None


@dataclass
class Case:
    """One table row: a model at one batch size, or the reason it cannot run at that size."""

    name: str
    batch: int
    path: Path | None
    feeds: dict[str, np.ndarray]
    skip: str = ""


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:60] if lines else ''}"


def prepare_ort(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    """onnxruntime, default graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def prepare_tvm(path: Path, feeds: dict[str, np.ndarray], info: dict[str, Any]) -> Callable[[], Any]:
    """TVM as-is: from_onnx + LegalizeOps + dlight CPU rules + tvm.compile (default pipeline)."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import dlight as dl

    from ember.targets.registry import host_target

    start = time.perf_counter()
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    target = tvm.target.Target(host_target().tvm_target())
    with target:
        # tvm.compile's default pipeline starts with these; dlight schedules need TIR to act on.
        mod = tvm.transform.Sequential([relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
                                        relax.transform.LegalizeOps()])(mod)
        mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod)
    executable = tvm.compile(mod, target=target)
    info["tvm_compile_s"] = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    fn = vm["main"]
    return lambda: fn(*args)


class CompileFailed(Exception):
    """ember's compile failed or ran out of time; the message is the table cell."""


def compile_child(path: Path, out: Path, feeds: dict[str, np.ndarray], conn: Any) -> None:
    """In a child process: compile to `out`; send back ember's compile facts or the error."""
    try:
        from ember.compiler.driver import compile_model

        result = compile_model(path, out, sample=feeds)
        # import + passes + build (+ kernel counts), like the TVM column's from_onnx + compile; not the checks
        conn.send({"compile_s": sum(v for k, v in result.seconds.items() if k != "check"),
                   "launches": result.launches, "nodes": len(result.graph.nodes)})
    except Exception as err:
        conn.send({"error": _short(err)})


def prepare_ember(path: Path, feeds: dict[str, np.ndarray], info: dict[str, Any], scratch: Path,
                  timeout: float) -> Any:
    """ember: compile (default pipeline) to an artifact in a child process that gets `timeout`
    seconds, then load the artifact with ember.runtime here; the Model."""
    import multiprocessing

    from ember.runtime import load

    out = scratch / f"{path.stem}.ember"
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=compile_child, args=(path, out, feeds, send))
    child.start()
    done = receive.poll(timeout)
    facts = receive.recv() if done else {"error": f"compile took over {timeout:g} s (stopped)"}
    if child.is_alive():
        child.join(5 if done else 0)
    if child.is_alive():
        child.kill()
    child.join()
    if "error" in facts:
        if not done:
            info["compile_timeout"] = timeout
        raise CompileFailed(facts["error"])
    info.update(facts)
    info["size_mb"] = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    return load(out)


def thread_setter(threads: int) -> Callable[[], None]:
    """A function that sizes TVM's (process-wide) thread pool to `threads`."""
    from ember.runtime.model import set_threads

    return lambda: set_threads(threads)


def _block_child(spec: tuple[str, str, str, int], warmups: int, runs: int, budget: float | None, conn: Any) -> None:
    """In a fresh process: build one column's runner, warm up, time `runs` runs (fewer when
    the first run says they do not fit in `budget`); send back (times, fits) or an error."""
    try:
        kind, path, feeds_path, threads = spec
        feeds = dict(np.load(feeds_path))
        if kind == "ort":
            run = prepare_ort(Path(path), feeds, threads)
        else:
            from ember.runtime import load

            run = load(path, threads=threads).runner(feeds)
        fits = None
        for index in range(warmups):
            start = time.perf_counter()
            run()
            if index == 0 and budget is not None:
                fits = int(budget / max(time.perf_counter() - start, 1e-9))
        times = []
        for _ in range(runs if fits is None else min(runs, max(1, fits))):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        conn.send((times, fits))
    except Exception as err:
        conn.send(_short(err))


def _run_block_in_child(column: Column, warmups: int, runs: int, budget: float | None) -> int | None:
    """One timing block of `column` in its own process (onnxruntime's and TVM's thread pools
    slow each other 2-4x when they share one); appends the times, returns the budget's fit."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_block_child, args=(column.spec, warmups, runs, budget, send))
    child.start()
    reply = receive.recv() if receive.poll(3600) else "no reply in an hour"
    child.join(10)
    if child.is_alive():
        child.kill()
    if isinstance(reply, str):
        raise RuntimeError(reply)
    times, fits = reply
    column.times.extend(times)
    return fits


def measure(columns: list[Column], blocks: int, budget: float) -> None:
    """Time the columns in alternating blocks of consecutive runs; a failure ends that column.

    Runs of different columns are never interleaved one by one: onnxruntime's and TVM's
    thread pools spin after a run and would slow each other down on a small machine.
    Each block starts with warm-up runs (all of them in the first block, one later) and a
    short pause lets the previous column's threads go idle. The first warm-up run says whether
    --repeat runs fit in `budget` seconds; a column where they do not is cut to fewer runs
    (at least MIN_RUNS) after that one warm-up run.
    """
    for block in range(blocks):
        for column in columns:
            if column.run is None:
                continue
            time.sleep(0.2)
            try:
                if column.spec is not None:
                    first = block == 0
                    todo = column.rounds // blocks + (1 if block < column.rounds % blocks else 0)
                    fits = _run_block_in_child(column, column.warmup if first else 1, todo, budget if first else None)
                    if first and fits is not None and fits < column.rounds:
                        column.rounds = max(MIN_RUNS, fits)
                    continue
                if column.before is not None:
                    column.before()
                warmups = column.warmup if block == 0 else min(column.warmup, 1)
                index = 0
                while index < warmups:
                    start = time.perf_counter()
                    column.run()
                    index += 1
                    if block == 0 and index == 1:  # the first run says how many fit in the budget
                        fits = int(budget / max(time.perf_counter() - start, 1e-9))
                        column.rounds = min(column.rounds, max(MIN_RUNS, fits))
                        warmups = warmups if fits >= column.rounds else 1
                todo = column.rounds // blocks + (1 if block < column.rounds % blocks else 0)
                for _ in range(todo):
                    start = time.perf_counter()
                    column.run()
                    column.times.append(time.perf_counter() - start)
            except Exception as err:
                column.run, column.error = None, _short(err)


# --- batch-B copies of the CNNs -----------------------------------------------------------------
def batched_feeds(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`batch` samples per input: the zoo's first sample, then fixed-seed random ones like it."""
    rng = np.random.default_rng(8)
    out = {}
    for name, value in feeds.items():
        first = value[:1]
        extra = rng.standard_normal((batch - 1, *first.shape[1:])).astype(value.dtype) * float(np.std(first) or 1.0)
        out[name] = np.concatenate([first, extra]) if batch > 1 else first
    return out


def batched_case(name: str, batch: int) -> Case:
    """The model at `batch`: fed as is when its batch dim is symbolic, else a checked copy."""
    import onnx
    import onnxruntime as ort

    path = zoo.ensure(name)
    feeds = batched_feeds(dict(np.load(path.with_suffix(".inputs.npz"))), batch)
    label = f"{name} b{batch}"
    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if all(i.type.tensor_type.shape.dim[0].dim_param for i in inputs):
        return Case(label, batch, path, feeds)
    copy = BATCH_DIR / f"{name}_b{batch}.onnx"
    if not copy.exists():
        for value in (*inputs, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        del proto.graph.value_info[:]  # shapes inferred for batch 1 no longer hold
        BATCH_DIR.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(copy)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        got = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"]).run(None, feeds)
        one = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
            None, {k: v[:1] for k, v in feeds.items()})
    except Exception as err:
        return Case(label, batch, None, feeds, f"no batch-{batch} copy: onnxruntime fails on it ({_short(err)})")
    if got[0].shape[0] != batch or not np.allclose(got[0][:1], one[0], rtol=1e-4, atol=1e-4):
        return Case(label, batch, None, feeds, f"no batch-{batch} copy: the graph fixes batch 1 inside")
    return Case(label, batch, copy, feeds)


def cases(models: list[str], batch: int | None) -> list[Case]:
    """Batch-1 rows for every model, then batch-B rows for the CNNs among them."""
    rows = []
    for name in models:
        path = zoo.ensure(name)
        rows.append(Case(name, 1, path, dict(np.load(path.with_suffix(".inputs.npz")))))
    if batch is not None and batch > 1:
        rows += [batched_case(name, batch) for name in models if name in CNNS]
    return rows


# --- one row ------------------------------------------------------------------------------------
@dataclass
class Row:
    """One case's results: medians by (contender, threads), ember's compile facts."""

    case: Case
    columns: list[Column]
    info: dict[str, Any]

    def column(self, name: str, threads: int) -> Column | None:
        return next((c for c in self.columns if c.name == name and c.threads == threads), None)

    def ratio(self, name: str, threads: int) -> float | None:
        mine, ort = self.column(name, threads), self.column("ort", threads)
        if mine is None or ort is None or not mine.median_ms or not ort.median_ms:
            return None
        return mine.median_ms / ort.median_ms


def bench_case(case: Case, args: argparse.Namespace, threads: list[int], scratch: Path) -> Row:
    """Build every column of one case, then time them."""
    info: dict[str, Any] = {}
    columns: list[Column] = []
    if case.skip or case.path is None:
        return Row(case, columns, info)
    path, feeds = case.path, case.feeds
    try:
        model = prepare_ember(path, feeds, info, scratch, args.compile_timeout)
        ember_run: Callable[[], Any] | None = model.runner(feeds)
        ember_error = ""
    except CompileFailed as err:
        ember_run, ember_error = None, str(err)
    except Exception as err:
        ember_run, ember_error = None, _short(err)
    tvm_run, tvm_error = None, "skipped"
    if not args.skip_tvm:
        try:
            tvm_run, tvm_error = prepare_tvm(path, feeds, info), ""
        except Exception as err:
            tvm_error = _short(err)
    feeds_path = scratch / "feeds.npz"
    np.savez(feeds_path, **feeds)
    for count in threads:
        ort = Column("ort", count, rounds=args.repeat, warmup=args.warmup)
        try:
            ort.run = prepare_ort(path, feeds, count)
        except Exception as err:
            ort.error = _short(err)
        columns.append(ort)
        ember = Column("ember", count, ember_run, thread_setter(count), ember_error, rounds=args.repeat, warmup=args.warmup)
        columns.append(ember)
        if args.isolate:
            if ort.run is not None:
                ort.spec = ("ort", str(path), str(feeds_path), count)
            if ember_run is not None:
                ember.spec = ("ember", str(scratch / f"{path.stem}.ember"), str(feeds_path), count)
        if not args.skip_tvm:
            columns.append(Column("tvm", count, tvm_run, thread_setter(count), tvm_error,
                                  rounds=args.tvm_repeat, warmup=min(args.warmup, 1)))
    measure(columns, args.blocks, args.budget)
    return Row(case, columns, info)


def _fmt(value: Any, spec: str, fallback: str = "-") -> str:
    return format(value, spec) if value is not None else fallback


def time_cell(column: Column | None, wanted: int) -> str:
    """`12.34` (median ms), `12.34 (5 runs)` when cut by the budget, or the column's error."""
    if column is None:
        return "-"
    if column.median_ms is None:
        return column.error or "-"
    runs = f" ({len(column.times)} runs)" if len(column.times) < wanted else ""
    return f"{column.median_ms:.2f}{runs}"


def header(threads: list[int], with_tvm: bool) -> list[str]:
    """Column titles."""
    cells = ["model", "batch"]
    for count in threads:
        cells += [f"ORT ms {count}t", f"ember ms {count}t", f"ember/ORT {count}t"]
        if with_tvm:
            cells += [f"TVM as-is ms {count}t", f"TVM/ORT {count}t"]
    return [*cells, "ember compile s", "artifact MB", "nodes", "kernel launches"]


def render_row(row: Row, threads: list[int], args: argparse.Namespace) -> list[str]:
    """One row's cells."""
    width = len(header(threads, not args.skip_tvm))
    if row.case.skip:
        return [row.case.name, str(row.case.batch), row.case.skip, *["-"] * (width - 3)]
    cells = [row.case.name, str(row.case.batch)]
    for count in threads:
        cells += [time_cell(row.column("ort", count), args.repeat), time_cell(row.column("ember", count), args.repeat),
                  _fmt(row.ratio("ember", count), ".2f")]
        if not args.skip_tvm:
            cells += [time_cell(row.column("tvm", count), args.tvm_repeat), _fmt(row.ratio("tvm", count), ".1f")]
    compile_cell = f"> {row.info['compile_timeout']:g}" if "compile_timeout" in row.info else _fmt(row.info.get("compile_s"), ".1f")
    cells += [compile_cell, _fmt(row.info.get("size_mb"), ".1f"),
              _fmt(row.info.get("nodes"), "d"), _fmt(row.info.get("launches"), "d")]
    return [c.replace("|", "/") for c in cells]


def geomean(values: list[float]) -> float | None:
    """Geometric mean, None for no values."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(rows: list[Row], threads: list[int]) -> list[str]:
    """Geomean and worst ember/ORT ratio per thread count, batch 1 and batch B apart; compile times."""
    lines = []
    for label, group in (("batch 1, zoo", [r for r in rows if r.case.batch == 1]),
                         ("batch B, CNNs", [r for r in rows if r.case.batch > 1])):
        if not group:
            continue
        parts = []
        for count in threads:
            ratios = {r.case.name: r.ratio("ember", count) for r in group}
            known = {k: v for k, v in ratios.items() if v is not None}
            if not known:
                continue
            worst = max(known, key=lambda k: known[k])
            parts.append(f"{count} thread{'s' if count > 1 else ''}: geomean {geomean(list(known.values())):.2f} "
                         f"over {len(known)} models, worst {known[worst]:.2f} ({worst})")
        label = label.replace("batch B", f"batch {group[0].case.batch}")
        lines.append(f"- ember/onnxruntime, {label}: " + ("; ".join(parts) or "no model ran on both"))
    compiles = {r.case.name: r.info["compile_s"] for r in rows if "compile_s" in r.info}
    stopped = [f"{r.case.name} (stopped after {r.info['compile_timeout']:g} s)" for r in rows if "compile_timeout" in r.info]
    if compiles or stopped:
        within = sum(1 for v in compiles.values() if v <= 60)
        text = f"- ember compile time (no tuning): {within}/{len(compiles) + len(stopped)} models within 60 s"
        if compiles:
            slowest = max(compiles, key=lambda k: compiles[k])
            text += f"; slowest that finished: {compiles[slowest]:.1f} s ({slowest})"
        if stopped:
            text += f"; did not finish: {', '.join(stopped)}"
        lines.append(text)
    return lines


def _versions() -> str:
    import onnxruntime
    import tvm

    from ember.compiler import __version__
    from ember.targets.registry import host_target

    return f"ember {__version__}, onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}, CPU {host_target().mcpu}"


def _ints(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        parser.error(f"{what} takes comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{what}: every value must be at least 1")
    return values


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) the ratio table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, measured side by side")
    parser.add_argument("--batch", type=int, help="also run the CNNs at this batch size (e.g. 8)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed runs per column at most (fewer runs for slow columns, never < 3)")
    parser.add_argument("--compile-timeout", type=float, default=600.0,
                        help="seconds ember's compile of one model may take (in a child process) before it is stopped")
    parser.add_argument("--tvm-repeat", type=int, default=3, help="timed runs of TVM as-is (its untuned code is slow)")
    parser.add_argument("--blocks", type=int, default=2, help="alternating blocks the timed runs are split into")
    parser.add_argument("--skip-tvm", action="store_true", help="leave out the TVM as-is columns")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="time each block of onnxruntime and ember runs in its own process (default; their "
                             "thread pools slow each other 2-4x in one process)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    threads = _ints(args.threads, "--threads", parser)
    if min(args.repeat, args.tvm_repeat, args.blocks) < 1 or args.warmup < 1 or args.budget <= 0:
        parser.error("need --repeat, --tvm-repeat, --blocks, --warmup >= 1 and --budget > 0")
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    titles = header(threads, not args.skip_tvm)
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    print("\n".join(lines), flush=True)
    rows: list[Row] = []
    scratch = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    try:
        for case in cases(args.models.split(","), args.batch):
            row = bench_case(case, args, threads, scratch)
            rows.append(row)
            lines.append("| " + " | ".join(render_row(row, threads, args)) + " |")
            print(lines[-1], flush=True)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    notes = summary(rows, threads)
    print("\n".join(notes))
    if args.write:
        command = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        text = "\n".join([
            f"Command: `{command.strip()}` (threads {args.threads}; medians of {args.repeat} runs after {args.warmup} "
            f"warm-up runs unless a cell says fewer (--budget {args.budget:g} s a column), in {args.blocks} "
            f"alternating blocks per column{', each block in its own process' if args.isolate else ''}; "
            f"{_versions()}; measured "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "", *lines, "", *notes])
        bench_md = ROOT / "BENCHMARKS.md"
        old = bench_md.read_text() if bench_md.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
        before, _, rest = old.partition(START)
        _, _, after = rest.partition(END)
        bench_md.write_text(f"{before}{START}\n{text}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
