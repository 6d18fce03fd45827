"""Tuning benchmark: ember/onnxruntime latency untuned vs `--tune BUDGET`, and the cost of
reapplying the records, on zoo models.

    python tools/bench_tune.py --models resnet18,minilm --budget 10m [--threads 2] [--write]

For each model (the zoo's NAME.onnx and NAME.inputs.npz, see tools/zoo.py):
1. compile with no tuning records (an empty database): the rules' schedules;
2. compile with `--tune BUDGET` into the benchmark's database (default
   ~/.cache/ember/tune/bench.json, NOT the default database, so that other compiles on this
   machine are not changed by it; emptied when the run starts unless --keep-db), tuning at
   --threads;
3. compile again from that database without a search: the time apply_records takes;
4. time onnxruntime (default graph optimizations, --threads intra-op threads), the untuned and
   the tuned artifact, in alternating blocks of consecutive runs, medians.
`--write` replaces the table between the tune markers in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- tune:begin -->", "<!-- tune:end -->"
DEFAULT_DB = Path("~/.cache/ember/tune/bench.json")


def ort_runner(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    """onnxruntime with its default optimizations at `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def compile_timed(path: Path, out: Path, feeds: dict[str, np.ndarray], tune: Any) -> tuple[Any, float, float]:
    """(CompileResult, build seconds, seconds in apply_records) of one compile."""
    from ember.compiler.driver import compile_model
    from ember.targets import tune as tuning

    spent = [0.0]
    apply = tuning.apply_records

    def timed_apply(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return apply(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    tuning.apply_records = timed_apply
    try:
        result = compile_model(path, out, sample=feeds, tune=tune)
    finally:
        tuning.apply_records = apply
    return result, result.seconds["build"], spent[0]


PAUSE_S = 0.1


def measure(columns: dict[str, Callable[[], Any]], blocks: int, repeat: int, warmup: int,
            before: Callable[[], None]) -> dict[str, float]:
    """Median ms per column over `blocks` alternating blocks of repeat/blocks runs each."""
    times: dict[str, list[float]] = {name: [] for name in columns}
    per_block = max(1, repeat // blocks)
    for _ in range(blocks):
        for name, run in columns.items():
            before()
            time.sleep(PAUSE_S)  # (onnxruntime's workers spin after its block: see tools/ab.py)
            for _ in range(warmup):
                run()
            for _ in range(per_block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def bench_model(name: str, budget_s: float, db: Path, threads: int, repeat: int, blocks: int, scratch: Path) -> dict[str, Any]:
    from ember.runtime import load
    from ember.runtime.model import set_threads
    from ember.targets.tune import TUNED, TuneOptions

    path = zoo.DEFAULT_DIR / f"{name}.onnx"
    with np.load(zoo.DEFAULT_DIR / f"{name}.inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    untuned, untuned_s, _ = compile_timed(path, scratch / f"{name}.ember", feeds, TuneOptions(db_path=scratch / "empty.json"))
    print(f"{name}: untuned compile {untuned_s:.1f} s; tuning for {budget_s:.0f} s", file=sys.stderr)
    _, tuned_s, _ = compile_timed(path, scratch / f"{name}.tuned.ember", feeds,
                                      TuneOptions(budget_s=budget_s, db_path=db, threads=threads))
    reused, reused_s, apply_s = compile_timed(path, scratch / f"{name}.reused.ember", feeds, TuneOptions(db_path=db))
    rules = {k["name"]: k["rule"] for k in reused.manifest["kernels"]}
    used = sum(1 for r in rules.values() if r == TUNED)

    ort = ort_runner(path, feeds, threads)
    models = {"untuned": load(untuned.path, threads=threads), "tuned": load(reused.path, threads=threads)}
    columns = {"ort": ort, **{k: (lambda m=m: m(**feeds)) for k, m in models.items()}}
    ms = measure(columns, blocks, repeat, 3, lambda: set_threads(threads))
    got, want = models["tuned"](**feeds), models["untuned"](**feeds)
    diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in got)
    return {"model": name, "ort_ms": ms["ort"], "untuned_ms": ms["untuned"], "tuned_ms": ms["tuned"],
            "budget_s": budget_s, "tune_compile_s": tuned_s, "untuned_compile_s": untuned_s,
            "reuse_compile_s": reused_s, "apply_s": apply_s, "kernels_tuned": used, "kernels": len(rules),
            "max_diff": diff}


PREFACE = """## 6. Tuning on request (`ember compile --tune`)

Made by `tools/bench_tune.py` (its docstring says how it measures): per model, a compile with no
tuning records (ember's schedule rules only), a compile with `--tune BUDGET` tuning at 2 threads
into a database of its own, a compile that reuses that database without searching (its
`apply_records` time is the reapply cost), then onnxruntime (default optimizations), the untuned
and the tuned artifact timed in alternating blocks, medians, 2 threads. "kernels from records"
counts the kernels whose record measured faster than the rule's code and was used; the others
keep the rule's code. The machine is shared: ratios, not absolute times, are comparable."""


def table(rows: list[dict[str, Any]], command: str) -> str:
    lines = [PREFACE, "", f"Command: `{command}`", "",
             "| model | onnxruntime ms | ember untuned ms | untuned/ORT | ember tuned ms | tuned/ORT | budget | "
             "compile s untuned / --tune / reuse | apply_records s | kernels from records | max abs diff tuned vs untuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ort_ms']:.2f} | {r['untuned_ms']:.2f} | {r['untuned_ms'] / r['ort_ms']:.2f} | "
                     f"{r['tuned_ms']:.2f} | {r['tuned_ms'] / r['ort_ms']:.2f} | {r['budget_s']:.0f} s | "
                     f"{r['untuned_compile_s']:.1f} / {r['tune_compile_s']:.1f} / {r['reuse_compile_s']:.1f} | "
                     f"{r['apply_s']:.2f} | {r['kernels_tuned']} of {r['kernels']} | {r['max_diff']:.1e} |")
    if rows:
        un = np.exp(np.mean([np.log(r["untuned_ms"] / r["ort_ms"]) for r in rows]))
        tu = np.exp(np.mean([np.log(r["tuned_ms"] / r["ort_ms"]) for r in rows]))
        lines.append(f"| geomean | | | {un:.2f} | | {tu:.2f} | | | | | |")
    return "\n".join(lines)


def write(text: str) -> None:
    bench = ROOT / "BENCHMARKS.md"
    content = bench.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        content = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    else:
        content = content.rstrip() + "\n\n" + START + "\n" + text + "\n" + END + "\n"
    bench.write_text(content)


def main(argv: list[str] | None = None) -> int:
    from ember.targets.tune_db import parse_duration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,minilm")
    parser.add_argument("--budget", default="10m", help="tuning budget per model (90s, 10m, 1h)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="tuning database (default %(default)s)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the database's records from earlier runs (default: start it empty, so that "
                             "records of another version, never checked in the model, do not join the tuned column)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md between the tune markers")
    parser.add_argument("--save", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--rows", help="no measuring: render the table from these --save files (comma-separated)")
    args = parser.parse_args(argv)
    budget = parse_duration(args.budget)
    command = f"python tools/bench_tune.py --models {args.models} --budget {args.budget} --threads {args.threads} --repeat {args.repeat}"
    if args.rows:
        saved = [json.loads(Path(p).read_text()) for p in args.rows.split(",")]
        rows = [row for item in saved for row in item["rows"]]
        command = "; ".join(item["command"] for item in saved)
    else:
        if not args.keep_db:
            args.db.expanduser().unlink(missing_ok=True)
        else:
            command += " --keep-db"
        rows = []
        with tempfile.TemporaryDirectory(prefix="ember-bench-tune-") as tmp:
            for name in args.models.split(","):
                rows.append(bench_model(name, budget, args.db.expanduser(), args.threads, args.repeat, args.blocks, Path(tmp)))
                print(table(rows[-1:], ""), file=sys.stderr)
        if args.save:
            args.save.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    text = table(rows, command)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
