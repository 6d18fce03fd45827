"""A/B timing: several artifacts of one model (and optionally onnxruntime) side by side.

    python tools/ab.py OLD.ember NEW.ember [--onnx MODEL.onnx] [--threads 2] [--blocks 8] [--runs 5]
                       [--size H=224,W=224]

Every artifact is loaded in this one process and run on the first artifact's bundled sample
(`--size`: random inputs of the sample's dtypes and shapes with these symbolic dims changed,
seeded, the artifacts' outputs checked against the first's);
the columns are timed in `--blocks` alternating blocks of `--runs` consecutive runs (so load from
other processes hits every column alike), after 3 warm-up runs each, with a pause before each
block. Prints the median latency of each column and its ratio to the last column (onnxruntime
when `--onnx` is given). For a change to ember, compile the model before and after it and
compare the two artifacts here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PAUSE_S = 0.1


def _resized(model: Any, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Seeded random inputs like `feeds` with the named symbolic dims (the manifest's input
    shapes) set to `dims`' values."""
    rng = np.random.default_rng(0)
    out = {}
    for spec in model.manifest.inputs:
        sample = feeds[spec.name]
        shape = [dims.get(d, sample.shape[i]) if isinstance(d, str) else d for i, d in enumerate(spec.shape)]
        out[spec.name] = (rng.standard_normal(shape) if sample.dtype.kind == "f" else np.zeros(shape)).astype(sample.dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--onnx", type=Path, help="also time onnxruntime (default optimizations) on this model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="consecutive runs per block")
    parser.add_argument("--size", default="", help="symbolic dims for made-up inputs, e.g. H=224,W=224")
    args = parser.parse_args(argv)

    from ember.runtime import load

    models = [load(a, threads=args.threads) for a in args.artifacts]
    with np.load(args.artifacts[0] / "sample.npz") as data:
        feeds = {k: data[k] for k in data.files}
    if args.size:
        feeds = _resized(models[0], feeds, dict((k, int(v)) for k, v in (p.split("=") for p in args.size.split(","))))
        first = models[0](**feeds)
        for a, m in zip(args.artifacts[1:], models[1:]):
            for name, value in m(**feeds).items():
                np.testing.assert_allclose(value, first[name], rtol=1e-3, atol=1e-3, err_msg=f"{a}: {name}")
    columns: list[tuple[str, Callable[[], Any]]] = [(str(a), m.runner(feeds)) for a, m in zip(args.artifacts, models)]
    if args.onnx is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
        columns.append(("onnxruntime", lambda: session.run(None, feeds)))
    times: dict[str, list[float]] = {name: [] for name, _ in columns}
    for _, run in columns:
        for _ in range(3):
            run()
    for _ in range(args.blocks):
        for name, run in columns:
            # (a pause between blocks: onnxruntime's worker threads spin for a while after a
            # run, and took the second core from the next column's first runs: a 3.4 ms conv
            # timed after onnxruntime's block ran at its 1-thread speed, 6.8 ms)
            time.sleep(PAUSE_S)
            for _ in range(args.runs):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[columns[-1][0]])
    width = max(len(name) for name, _ in columns)
    print(f"{args.threads} threads, medians of {args.blocks * args.runs} runs in {args.blocks} alternating blocks")
    for name, _ in columns:
        median = statistics.median(times[name])
        print(f"{name:{width}s}  {median * 1e3:9.3f} ms  x{median / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
