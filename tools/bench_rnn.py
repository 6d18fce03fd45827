"""Recurrent layers (LSTM, GRU) compiled by ember vs onnxruntime, side by side.

    python tools/bench_rnn.py [--threads 1,2] [--blocks 8] [--runs 5] [--write]

Each case is one ONNX model of a single bidirectional layer as exporters write it (weights as
initializers, X [seq, batch, input]), generated here with seeded weights: speech- and OCR-sized
layers at batch 1 and 8. Per case and thread count, ember's artifact (compiled in this process,
checked against the interpreter by the compile) and onnxruntime (default optimizations, the same
intra-op thread count) run on the same inputs in `--blocks` alternating blocks of `--runs`
consecutive runs after warm-up, each block in a fresh process (tools/bench.py's block child:
two runtimes' spinning thread pools in one process slow each other); the table holds medians of
all runs and their ratio. The outputs are compared first (max abs difference). `--write` replaces the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# (op, sequence length, batch, input size, hidden size)
CASES = [
    ("LSTM", 100, 1, 256, 256),
    ("LSTM", 100, 8, 256, 256),
    ("LSTM", 50, 1, 128, 128),
    ("GRU", 100, 1, 256, 256),
    ("GRU", 100, 8, 256, 256),
    ("LSTM", 400, 1, 80, 512),
]
GATES = {"LSTM": 4, "GRU": 3}
BEGIN, END = "<!-- rnn:start -->", "<!-- rnn:end -->"


def model(op: str, seq: int, batch: int, inp: int, hidden: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    g = GATES[op] * hidden
    inits = {"W": rng.standard_normal((2, g, inp)) * inp ** -0.5, "R": rng.standard_normal((2, g, hidden)) * hidden ** -0.5,
             "B": rng.standard_normal((2, 2 * g)) * 0.1}
    extra = {"linear_before_reset": 1} if op == "GRU" else {}  # PyTorch's GRU
    node = helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, direction="bidirectional", **extra)
    graph = helper.make_graph(
        [node], op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [seq, 2, batch, hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [2, batch, hidden])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _block(kind: str, where: Path, feeds: Path, threads: int, runs: int, warmup: int = 3) -> list[float]:
    """`runs` timed runs of one engine in a fresh process, after `warmup` (bench.py's block
    child: the two runtimes' spinning thread pools slow each other 2-4x inside one process)."""
    import multiprocessing

    import bench

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=bench._block_child, args=((kind, str(where), str(feeds), threads), warmup, runs, None, send))
    child.start()
    result = receive.recv()
    child.join()
    if isinstance(result, str):
        raise RuntimeError(f"{kind} failed: {result}")
    return result[0]


def _max_diff(artifact: Path, model_path: Path, feeds: dict[str, np.ndarray], threads: int) -> float:
    import onnxruntime as ort

    from ember.runtime import load

    got = load(artifact, threads=threads)(**feeds)
    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(got.values(), want))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace the table in BENCHMARKS.md")
    args = parser.parse_args(argv)
    from ember.compiler.driver import compile_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ops import COLUMNS, side_by_side, write_table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for op, seq, batch, inp, hidden in CASES:
            proto = model(op, seq, batch, inp, hidden)
            path = Path(tmp) / f"{op}_{seq}_{batch}_{inp}_{hidden}.onnx"
            artifact, inputs = Path(tmp) / f"{path.stem}.ember", Path(tmp) / "feeds.npz"
            onnx.save(proto, path)
            start = time.perf_counter()
            compile_model(path, artifact)
            compile_s = time.perf_counter() - start
            feeds = {"x": np.random.default_rng(1).standard_normal((seq, batch, inp)).astype(np.float32)}
            np.savez(inputs, **feeds)
            for threads in [int(t) for t in args.threads.split(",")]:
                diff = _max_diff(artifact, path, feeds, threads)
                e, o = side_by_side(artifact, path, inputs, threads, args.blocks, args.runs)
                rows.append(f"| {op} | {seq} | {batch} | {inp} | {hidden} | {threads} | {o:.3f} | {e:.3f} | {e / o:.2f} | "
                            f"{diff:.1e} | {compile_s:.1f} |")
                print(rows[-1], flush=True)
    write_table("bench_rnn.py", argv, (BEGIN, END), "7. Recurrent layers (LSTM, GRU): ember vs onnxruntime",
                ["op", "seq", "batch", "input", "hidden", "threads", *COLUMNS], rows, args.blocks * args.runs, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
