"""Benchmark harness: onnxruntime vs TVM as-is vs ember on the zoo, side by side.

    python tools/bench.py [--models a,b] [--threads 2] [--repeat 10] [--skip-tvm] [--write]

For each model, in one process, on the same inputs (the zoo's NAME.inputs.npz) and thread
count:
- onnxruntime with its default graph optimizations, intra-op threads = --threads;
- TVM as-is: tvm.relax.frontend.onnx from_onnx, LegalizeOps, dlight's CPU rules (GEMV,
  reduction) where they apply, then tvm.compile with TVM's default pipeline (the peer only:
  ember's compile path never uses TVM's ONNX frontend);
- ember: the default pipeline, an artifact written by the driver and loaded by ember.runtime.
TVM's thread pool is sized to --threads for both TVM columns.

Timing: every column is built first, then the columns are timed in --blocks alternating
blocks of consecutive runs (ORT, ember, TVM, ORT, ember, TVM, ...), so load from other
processes on a shared machine hits all columns alike, without interleaving single runs
(spinning thread pools would slow each other). The table shows medians of --repeat timed runs
after --warmup warm-up runs (TVM as-is: --tvm-repeat runs after one; its untuned code is slow). A column that fails shows its error in
its cell and the run goes on. `--write` replaces the table between the bench markers in
BENCHMARKS.md, with the command that produced it.
"""

from __future__ import annotations

import argparse
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
HEADER = ("| model | onnxruntime ms | ember ms | ember/ORT | TVM as-is ms | TVM/ORT | ember compile s | "
          "TVM compile s | artifact MB | nodes | kernel launches |")


@dataclass
class Column:
    """One contender on one model: a zero-argument run function, or the error that stopped it."""

    run: Callable[[], Any] | None = None
    error: str = ""
    rounds: int = 0
    warmup: int = 0
    times: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float | None:
        return float(np.median(self.times) * 1e3) if self.times else None


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:60] if lines else ''}"


def prepare_ort(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    """onnxruntime, default graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
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
    info["compile_s"] = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    fn = vm["main"]
    return lambda: fn(*args)


def prepare_ember(path: Path, feeds: dict[str, np.ndarray], threads: int, info: dict[str, Any],
                  scratch: Path) -> Callable[[], Any]:
    """ember: compile (default pipeline) to an artifact, load it with ember.runtime."""
    from ember.compiler.driver import compile_model
    from ember.runtime import load

    out = scratch / f"{path.stem}.ember"
    result = compile_model(path, out, sample=feeds)
    # import + passes + build, like the TVM column's from_onnx + compile (not the checks)
    info["compile_s"] = sum(v for k, v in result.seconds.items() if k != "check")
    info["size_mb"] = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    info["kernels"] = result.launches
    info["nodes"] = len(result.graph.nodes)
    return load(out, threads=threads).runner(feeds)


def measure(columns: list[Column], blocks: int) -> None:
    """Time the columns in alternating blocks of consecutive runs; a failure ends that column.

    Runs of different columns are never interleaved one by one: onnxruntime's and TVM's
    thread pools spin after a run and would slow each other down on a small machine.
    Each block starts with warm-up runs (all of them in the first block, one later) and a
    short pause lets the previous column's threads go idle.
    """
    for block in range(blocks):
        for column in columns:
            todo = column.rounds // blocks + (1 if block < column.rounds % blocks else 0)
            if column.run is None or todo == 0:
                continue
            time.sleep(0.2)
            try:
                for _ in range(column.warmup if block == 0 else min(column.warmup, 1)):
                    column.run()
                for _ in range(todo):
                    start = time.perf_counter()
                    column.run()
                    column.times.append(time.perf_counter() - start)
            except Exception as err:
                column.run, column.error = None, _short(err)


def bench_model(name: str, args: argparse.Namespace, scratch: Path) -> str:
    """One table row."""
    path = zoo.ensure(name)
    feeds = dict(np.load(path.with_suffix(".inputs.npz")))
    ort_col = Column(rounds=args.repeat, warmup=args.warmup)
    ember_col = Column(rounds=args.repeat, warmup=args.warmup)
    tvm_col = Column(rounds=args.tvm_repeat, warmup=min(args.warmup, 1))  # seconds a run on big models
    for column, prepare in ((ort_col, lambda: prepare_ort(path, feeds, args.threads)),
                            (ember_col, lambda: prepare_ember(path, feeds, args.threads, ember_col.info, scratch)),
                            (tvm_col, lambda: prepare_tvm(path, feeds, tvm_col.info))):
        if column is tvm_col and args.skip_tvm:
            column.error = "skipped"
            continue
        try:
            column.run = prepare()
        except Exception as err:
            column.error = _short(err)
    measure([ort_col, ember_col, tvm_col], args.blocks)
    ort_ms, ember_ms, tvm_ms = ort_col.median_ms, ember_col.median_ms, tvm_col.median_ms

    def fmt(value: Any, spec: str, fallback: str = "-") -> str:
        return format(value, spec) if value is not None else fallback

    cells = [
        name,
        fmt(ort_ms, ".2f", ort_col.error),
        fmt(ember_ms, ".2f", ember_col.error),
        fmt(ember_ms / ort_ms if ember_ms and ort_ms else None, ".2f"),
        fmt(tvm_ms, ".2f", tvm_col.error),
        fmt(tvm_ms / ort_ms if tvm_ms and ort_ms else None, ".1f"),
        fmt(ember_col.info.get("compile_s"), ".1f"),
        fmt(tvm_col.info.get("compile_s"), ".1f"),
        fmt(ember_col.info.get("size_mb"), ".1f"),
        fmt(ember_col.info.get("nodes"), "d"),
        fmt(ember_col.info.get("kernels"), "d"),
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _versions() -> str:
    import onnxruntime
    import tvm

    from ember.compiler import __version__
    from ember.targets.registry import host_target

    return f"ember {__version__}, onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}, CPU {host_target().mcpu}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) the ratio table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tvm-repeat", type=int, default=3, help="timed runs of TVM as-is (its untuned code is slow)")
    parser.add_argument("--blocks", type=int, default=2, help="alternating blocks the timed runs are split into")
    parser.add_argument("--skip-tvm", action="store_true", help="leave out the TVM as-is column")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    if min(args.threads, args.repeat, args.tvm_repeat, args.blocks) < 1 or args.warmup < 0:
        parser.error("need --threads, --repeat, --tvm-repeat, --blocks >= 1 and --warmup >= 0")
    from ember.runtime.model import set_threads

    set_threads(args.threads)
    rows = []
    print(HEADER)
    print("|" + "---|" * 11)
    scratch = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    try:
        for name in args.models.split(","):
            row = bench_model(name, args, scratch)
            print(row, flush=True)
            rows.append(row)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.write:
        command = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        table = "\n".join([f"Command: `{command.strip()}` ({args.threads} threads; medians of {args.repeat} runs after "
                           f"{args.warmup} warm-up runs, in {args.blocks} alternating blocks per column; TVM as-is: "
                           f"{args.tvm_repeat} runs after {min(args.warmup, 1)}; "
                           f"{_versions()})", "", HEADER, "|" + "---|" * 11, *rows])
        bench_md = ROOT / "BENCHMARKS.md"
        text = bench_md.read_text() if bench_md.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        bench_md.write_text(f"{before}{START}\n{table}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
