"""Benchmark harness: onnxruntime vs TVM as-is vs ember on the zoo, side by side.

    python tools/bench.py [--models a,b] [--threads 2] [--repeat 20] [--skip-tvm] [--write]

For each model, in one process, on the same inputs (the zoo's sample) and thread count:
onnxruntime with its default graph optimizations (intra-op threads = --threads); TVM as-is
(tvm.relax.frontend.onnx from_onnx, LegalizeOps, dlight's CPU rules (GEMV, reduction) where
they apply, then tvm.compile with TVM's default pipeline: the peer, never ember's compile
path); and ember (the default pipeline, an artifact loaded by ember.runtime). TVM's thread
pool is sized to --threads for both TVM columns. Latency is the median of --repeat runs after
--warmup runs. A column that fails shows its error in its cell and the run goes on.
`--write` replaces the table between the markers in BENCHMARKS.md, with the command that
produced it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _median_ms(fn: Any, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def bench_ort(path: Path, feeds: dict[str, np.ndarray], threads: int, warmup: int, repeat: int) -> float:
    """onnxruntime, default graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _median_ms(lambda: session.run(None, feeds), warmup, repeat)


def bench_tvm(path: Path, feeds: dict[str, np.ndarray], warmup: int, repeat: int) -> tuple[float, float]:
    """TVM as-is: from_onnx + dlight CPU rules + tvm.compile (default pipeline); (compile s, median ms)."""
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
    compile_s = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    return compile_s, _median_ms(lambda: vm["main"](*args), warmup, repeat)


def bench_ember(path: Path, feeds: dict[str, np.ndarray], threads: int, warmup: int, repeat: int) -> dict[str, Any]:
    """ember: compile (default pipeline) to an artifact, load with ember.runtime, time it."""
    from ember.compiler.driver import compile_model
    from ember.runtime import load

    out = Path(tempfile.mkdtemp(prefix="ember-bench-")) / "model.ember"
    try:
        result = compile_model(path, out, sample=feeds)
        # import + passes + build, like the TVM column's from_onnx + compile (not the checks)
        compile_s = sum(v for k, v in result.seconds.items() if k != "check")
        model = load(out, threads=threads)
        latency = float(np.median(model.timed(feeds, warmup, repeat)) * 1e3)
        size = sum(f.stat().st_size for f in out.iterdir())
        return {"compile_s": compile_s, "ms": latency, "size_mb": size / 1e6, "kernels": result.launches,
                "nodes": len(result.graph.nodes)}
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def _cell(fn: Any, *args: Any) -> tuple[Any, str]:
    """fn(*args), or (None, a short error) — a failing column is reported in its cell."""
    try:
        return fn(*args), ""
    except Exception as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:60]}"


def _fmt(value: Any, spec: str, fallback: str = "-") -> str:
    return format(value, spec) if value is not None else fallback


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
    parser.add_argument("--tvm-repeat", type=int, default=3, help="runs of TVM as-is (its untuned code is slow)")
    parser.add_argument("--skip-tvm", action="store_true", help="leave out the TVM as-is column")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    from ember.runtime.model import set_threads

    set_threads(args.threads)
    rows = []
    header = ("| model | onnxruntime ms | ember ms | ember/ORT | TVM as-is ms | TVM/ORT | ember compile s | "
              "TVM compile s | artifact MB | nodes | kernel launches |")
    print(header)
    print("|" + "---|" * 11)
    for name in args.models.split(","):
        path = zoo.ensure(name)
        feeds = dict(np.load(path.with_suffix(".inputs.npz")))
        ort_ms, ort_err = _cell(bench_ort, path, feeds, args.threads, args.warmup, args.repeat)
        ember, ember_err = _cell(bench_ember, path, feeds, args.threads, args.warmup, args.repeat)
        tvm_res, tvm_err = (None, "skipped") if args.skip_tvm else _cell(bench_tvm, path, feeds, 1, args.tvm_repeat)
        ember = ember or {}
        tvm_compile, tvm_ms = tvm_res if tvm_res else (None, None)
        cells = [
            name,
            _fmt(ort_ms, ".2f", ort_err),
            _fmt(ember.get("ms"), ".2f", ember_err),
            _fmt(ember["ms"] / ort_ms if ember and ort_ms else None, ".2f"),
            _fmt(tvm_ms, ".2f", tvm_err),
            _fmt(tvm_ms / ort_ms if tvm_ms and ort_ms else None, ".1f"),
            _fmt(ember.get("compile_s"), ".1f"),
            _fmt(tvm_compile, ".1f"),
            _fmt(ember.get("size_mb"), ".1f"),
            _fmt(ember.get("nodes"), "d"),
            _fmt(ember.get("kernels"), "d"),
        ]
        row = "| " + " | ".join(cells) + " |"
        print(row, flush=True)
        rows.append(row)
    if args.write:
        command = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        table = "\n".join([f"Command: `{command}` ({args.threads} threads, median of {args.repeat} runs after "
                           f"{args.warmup} warm-up; TVM as-is: median of {args.tvm_repeat} after 1; "
                           f"{_versions()})", "", header, "|" + "---|" * 11, *rows])
        bench_md = ROOT / "BENCHMARKS.md"
        text = bench_md.read_text() if bench_md.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        bench_md.write_text(f"{before}{START}\n{table}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
