"""This machine's limits: peak fp32 FLOP/s and memory bandwidth, per thread count.

    python tools/peak.py [--threads 1,2] [--quick] [--json] [--no-cache]
    python tools/peak.py --write --kernels resnet50,minilm,gpt2_small   # + per-kernel reports into BENCHMARKS.md

- FMA peak: a TVM-generated kernel where each thread runs `acc = fma(acc, a, b)` on 24
  independent vector registers (AVX-512: 16 lanes, AVX2: 8, NEON: 4, from the target's
  features), enough chains to cover the FMA latency on two pipes. 2 FLOPs per lane per FMA.
  The generated assembly is checked to hold the target's vector FMA instructions.
- Cross-check: numpy's (OpenBLAS) fp32 4096^3 matmul at the same thread count (threadpoolctl).
- Bandwidth: STREAM-like copy (b = a, 8 bytes per element) and triad (a = b + s*c, 12 bytes per
  element) as TVM kernels split over the threads, on arrays of 2^27 floats (512 MiB each, working
  sets 1 to 1.5 GiB, several times the last-level cache). Write-allocate traffic is not counted
  (as STREAM does).

Every number is the best of several runs after a warm-up: these are limits, and load from
other processes on a shared machine only ever slows a run down. Results are cached to
~/.cache/ember/peak.json (read by `ember profile` for its "% of peak" column) unless `--quick`
(small sizes, short runs: a smoke test whose bandwidth numbers come from the cache, not DRAM)
or `--no-cache`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ember.runtime.profile import PEAK_CACHE

CHAINS = 24  # independent accumulators per thread (FMA latency 4 x 2 pipes = 8 needed; 24 leaves slack)


def vector_lanes(features: tuple[str, ...], machine: str) -> tuple[int, str]:
    """fp32 lanes of the widest vector FMA the target has, and the ISA's name."""
    have = {f.lstrip("+") for f in features}
    if "avx512f" in have:
        return 16, "AVX-512"
    if "avx2" in have and "fma" in have:
        return 8, "AVX2+FMA"
    if machine == "aarch64" or "neon" in have:
        return 4, "NEON"
    return 4, "SSE (no FMA)"


def fma_kernel(threads: int, lanes: int) -> Any:
    """PrimFunc `peak(out, iters)`: `threads` parallel tasks of CHAINS x `iters` vector FMAs."""
    from tvm.script import tirx as T

    vt = f"float32x{lanes}"

    @T.prim_func
    def peak(out: T.Buffer((threads, CHAINS * lanes), "float32"), iters: T.int32) -> None:
        T.func_attr({"global_symbol": "peak", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.decl_buffer((CHAINS,), vt, scope="local")
            for v in T.unroll(CHAINS):
                acc[v] = T.Broadcast(T.Cast("float32", t) + T.Cast("float32", v), lanes)
            for _ in range(iters):
                for v in T.unroll(CHAINS):
                    acc[v] = T.call_llvm_pure_intrin(vt, "llvm.fma", acc[v], T.Broadcast(T.float32(0.999), lanes),
                                                     T.Broadcast(T.float32(0.001), lanes))
            for v in T.unroll(CHAINS):
                out[t, T.Ramp(v * lanes, 1, lanes)] = acc[v]

    return peak


def stream_kernels(threads: int, n: int, lanes: int) -> Any:
    """IRModule with `copy(a, b)` and `triad(a, b, c, s)` over n floats, one chunk per thread."""
    import tvm
    from tvm.script import tirx as T

    chunk = n // threads
    vectors = chunk // lanes

    @T.prim_func
    def copy(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")) -> None:
        T.func_attr({"global_symbol": "copy", "tirx.noalias": True})
        for t in T.parallel(threads):
            for i in range(vectors):
                b[T.Ramp(t * chunk + i * lanes, 1, lanes)] = a[T.Ramp(t * chunk + i * lanes, 1, lanes)]

    @T.prim_func
    def triad(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32"), c: T.Buffer((n,), "float32"),
              s: T.float32) -> None:
        T.func_attr({"global_symbol": "triad", "tirx.noalias": True})
        for t in T.parallel(threads):
            for i in range(vectors):
                a[T.Ramp(t * chunk + i * lanes, 1, lanes)] = (
                    b[T.Ramp(t * chunk + i * lanes, 1, lanes)]
                    + T.Broadcast(s, lanes) * c[T.Ramp(t * chunk + i * lanes, 1, lanes)])

    return tvm.IRModule({"copy": copy, "triad": triad})


def best_time(fn: Callable[[], Any], runs: int) -> float:
    """Fastest of `runs` calls after one warm-up call (a limit: other load only slows a run)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(threads: list[int], quick: bool) -> dict[str, Any]:
    """Every measurement at every thread count: {"threads": {"1": {...}, ...}, machine facts}."""
    import tvm
    from threadpoolctl import threadpool_limits

    from ember.runtime.model import set_threads
    from ember.targets.registry import host_target

    spec = host_target()
    target = tvm.target.Target(spec.tvm_target())
    lanes, isa = vector_lanes(spec.features, spec.machine)
    runs = 3 if quick else 7
    # short FMA runs (about 2 ms on AVX-512), many of them: on a shared machine the best one ran
    # on cores nobody else had at the time
    iters, fma_runs = (100_000, 5) if quick else (500_000, 40)
    n = 1 << (20 if quick else 27)
    size = 256 if quick else 4096
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((size, size), dtype=np.float32)
    b_np = rng.standard_normal((size, size), dtype=np.float32)
    arrays = [tvm.runtime.tensor(np.full(n, value, dtype=np.float32)) for value in (1.0, 2.0, 3.0)]
    results: dict[str, Any] = {str(count): {} for count in threads}
    # numpy first: TVM's worker threads spin for a while after each parallel kernel and would
    # take the cores from OpenBLAS's threads
    for count in threads:
        with threadpool_limits(limits=count, user_api="blas"):
            matmul_s = best_time(partial(np.matmul, a_np, b_np), runs)
        results[str(count)]["numpy_matmul_gflops"] = 2 * size**3 / matmul_s / 1e9
    for count in threads:
        set_threads(count)
        fma = tvm.compile(tvm.IRModule({"peak": fma_kernel(count, lanes)}), target=target)
        asm = fma.mod.inspect_source("asm") if spec.machine == "x86_64" else ""
        if spec.machine == "x86_64" and "vfmadd" not in asm:
            raise RuntimeError("the FMA kernel compiled without vector FMA instructions; the peak would be wrong")
        out = tvm.runtime.tensor(np.zeros((count, CHAINS * lanes), dtype=np.float32))
        fma_s = best_time(partial(fma["peak"], out, iters), fma_runs)
        stream = tvm.compile(stream_kernels(count, n, lanes), target=target)
        copy_s = best_time(partial(stream["copy"], arrays[0], arrays[1]), runs)
        triad_s = best_time(partial(stream["triad"], arrays[0], arrays[1], arrays[2], 3.0), runs)
        results[str(count)].update({
            "fma_gflops": count * iters * CHAINS * lanes * 2 / fma_s / 1e9,
            "copy_gbs": 2 * 4 * n / copy_s / 1e9,
            "triad_gbs": 3 * 4 * n / triad_s / 1e9,
        })
    return {
        "cpu": spec.mcpu, "machine": platform.machine(), "isa": isa, "lanes": lanes, "quick": quick,
        "matmul_size": size, "stream_floats": n, "runs": runs, "fma_runs": fma_runs,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "threads": results,
    }


def table(data: dict[str, Any]) -> str:
    """The results as a markdown table, one column per thread count."""
    counts = list(data["threads"])
    head = "| measure | " + " | ".join(f"{c} thread{'s' if c != '1' else ''}" for c in counts) + " |"
    size = data["matmul_size"]
    rows = [
        ("fp32 FMA peak, GFLOP/s (" + f"{data['isa']}, {data['lanes']} lanes)", "fma_gflops", ".1f"),
        (f"numpy (OpenBLAS) fp32 matmul {size}^3, GFLOP/s", "numpy_matmul_gflops", ".1f"),
        ("copy bandwidth, GB/s (b = a)", "copy_gbs", ".1f"),
        ("triad bandwidth, GB/s (a = b + s*c)", "triad_gbs", ".1f"),
    ]
    lines = [head, "|---|" + "---|" * len(counts)]
    for label, key, spec in rows:
        cells = []
        for c in counts:
            value = data["threads"][c][key]
            cell = format(value, spec)
            if key == "numpy_matmul_gflops":
                cell += f" ({value / data['threads'][c]['fma_gflops']:.0%} of peak)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_reports(models: list[str], threads: int, top: int, repeat: int) -> list[str]:
    """`ember profile`'s table for each zoo model (compiled now, default pipeline), as markdown."""
    import tempfile

    import zoo

    from ember.compiler.cli_profile import render
    from ember.compiler.driver import compile_model
    from ember.runtime import load
    from ember.runtime.profile import profile, read_peak

    lines = []
    with tempfile.TemporaryDirectory(prefix="ember-peak-") as scratch:
        for name in models:
            path = zoo.ensure(name)
            feeds = dict(np.load(path.with_suffix(".inputs.npz")))
            result = compile_model(path, Path(scratch) / f"{name}.ember", sample=feeds)
            compile_s = sum(v for k, v in result.seconds.items() if k != "check")
            report = profile(load(result.path, threads=threads), feeds, repeat=repeat, threads=threads)
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if k != "check")
            lines += [f"**{name}** (compiled in {compile_s:.1f} s: {parts}; `ember profile {name}.ember --threads {threads} "
                      f"--repeat {repeat} --top {top}`):", "", "```",
                      *render(report, read_peak(threads), Path(f"{name}.ember"), top), "```", ""]
    return lines


def write_section(data: dict[str, Any], reports: list[str], command: str) -> None:
    """Replace the text between the peak markers of BENCHMARKS.md."""
    start, end = "<!-- peak:start -->", "<!-- peak:end -->"
    bench_md = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    text = bench_md.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {bench_md} has no {start} ... {end} section to write into")
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    body = "\n".join([f"Command: `{command}` (measured {data['measured_at']}, CPU {data['cpu']}, "
                      f"best of {data['fma_runs']} FMA runs, {data['runs']} matmul/stream runs)", "", table(data), "", *reports]).rstrip("\n")
    bench_md.write_text(f"{before}{start}\n{body}\n{end}{after}")


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table (or JSON), cache the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs (smoke test; not cached)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--no-cache", action="store_true", help=f"do not write {PEAK_CACHE}")
    parser.add_argument("--kernels", default="", help="zoo models to compile and profile per kernel (with --write)")
    parser.add_argument("--kernel-threads", type=int, default=2, help="threads for the per-kernel reports")
    parser.add_argument("--top", type=int, default=10, help="slowest kernels shown per report")
    parser.add_argument("--repeat", type=int, default=10, help="runs per per-kernel report (medians)")
    parser.add_argument("--write", action="store_true", help="write the table (and reports) into BENCHMARKS.md")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes comma-separated integers, got {args.threads!r}")
    if not threads or min(threads) < 1:
        parser.error("--threads: every count must be at least 1")
    data = measure(threads, args.quick)
    print(json.dumps(data, indent=2) if args.json else table(data))
    if not args.quick and not args.no_cache:
        cache = Path(PEAK_CACHE).expanduser()
        cache.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(cache.read_text()) if cache.is_file() else {}
        if old.get("cpu") == data["cpu"]:  # keep thread counts measured earlier and not now
            data["threads"] = {**old.get("threads", {}), **data["threads"]}
        cache.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if not args.json:
            print(f"cached in {cache}")
    models = [m for m in args.kernels.split(",") if m]
    reports = kernel_reports(models, args.kernel_threads, args.top, args.repeat) if models else []
    if reports and not args.json:
        print("\n".join(reports))
    if args.write:
        if args.quick:
            parser.error("--write records real measurements; leave out --quick")
        write_section(data, reports, "python tools/peak.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
