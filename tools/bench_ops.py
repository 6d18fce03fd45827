"""Ops beyond the CNN/transformer zoo, compiled by ember vs onnxruntime, side by side: output
sizes that depend on the data (NMS, NonZero, TopK of min(n, 300)), detection/warping kernels (RoiAlign,
GridSample), a log-mel front end (STFT), a loop decided at run time, and a segmentation
decoder's MaxPool indices fed to MaxUnpool.

    python tools/bench_ops.py [--threads 1,2] [--blocks 6] [--runs 5] [--cases nms,...] [--write]

Each case is one small ONNX model generated here with seeded data at a realistic size (a YOLO
head's 8400 boxes x 80 classes, a Mask R-CNN head's 300 rois, 10 s of 16 kHz audio...).
Per case and thread count, ember's artifact (compiled in this process with the case's inputs
as its sample) and onnxruntime (default optimizations, the same intra-op thread count) run on
the same inputs in `--blocks` alternating blocks of `--runs` consecutive runs after WARMUP runs,
each block in a fresh process (tools/bench.py's block child); the table holds medians of all
runs and their ratio. Outputs are compared first (max abs difference, `-` where they are
integer indices and equal). `--write` replaces the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper

BEGIN, END = "<!-- ops:start -->", "<!-- ops:end -->"
Case = tuple[onnx.ModelProto, dict[str, np.ndarray]]


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "bench", [vi(n, t, s) for n, t, s in inputs], [vi(n, t, s) for n, t, s in outputs],
                              [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def nms() -> Case:
    """YOLO-sized class-wise NMS: 8400 boxes (centre format), 80 classes, at most 100 a class."""
    rng = np.random.default_rng(0)
    n, classes = 8400, 80
    boxes = np.concatenate([rng.random((1, n, 2)) * 640, rng.random((1, n, 2)) * 90 + 10], axis=2).astype(np.float32)
    scores = (rng.random((1, classes, n)) ** 4).astype(np.float32)  # most below the threshold, as a trained head's
    inits = {"limit": np.array([100], np.int64), "iou": np.array([0.45], np.float32), "min": np.array([0.25], np.float32)}
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "min"], ["sel"], center_point_box=1)
    return _model([node], [("boxes", T.FLOAT, [1, n, 4]), ("scores", T.FLOAT, [1, classes, n])], [("sel", T.INT64, ["k", 3])],
                  inits), {"boxes": boxes, "scores": scores}


def nonzero() -> Case:
    """scores[scores > 0.9] of a [8400, 80] score map (NonZero, Transpose, GatherND)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Greater", ["s", "t"], ["m"]), helper.make_node("NonZero", ["m"], ["nz"]),
             helper.make_node("Transpose", ["nz"], ["tr"]), helper.make_node("GatherND", ["s", "tr"], ["y"])]
    return _model(nodes, [("s", T.FLOAT, [8400, 80])], [("y", T.FLOAT, ["k"])], {"t": np.array(0.9, np.float32)}), \
        {"s": rng.random((8400, 80)).astype(np.float32)}


def roialign() -> Case:
    """A Mask R-CNN box head's RoiAlign: 300 rois on a [1, 256, 50, 68] map, 7x7, 2 samples a bin."""
    rng = np.random.default_rng(0)
    corner = rng.random((300, 2)) * [600, 450]
    rois = np.concatenate([corner, corner + rng.random((300, 2)) * 200 + 8], axis=1).astype(np.float32)
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=7, output_width=7, sampling_ratio=2,
                            spatial_scale=1 / 16)
    return _model([node], [("x", T.FLOAT, [1, 256, 50, 68]), ("rois", T.FLOAT, [300, 4]), ("idx", T.INT64, [300])],
                  [("y", T.FLOAT, [300, 256, 7, 7])], {}), \
        {"x": rng.standard_normal((1, 256, 50, 68)).astype(np.float32), "rois": rois, "idx": np.zeros(300, np.int64)}


def gridsample() -> Case:
    """A text-rectification warp: GridSample of a [1, 32, 64, 256] map, bilinear, zero padding."""
    rng = np.random.default_rng(0)
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode="linear", padding_mode="zeros")
    return _model([node], [("x", T.FLOAT, [1, 32, 64, 256]), ("grid", T.FLOAT, [1, 64, 256, 2])], [("y", T.FLOAT, [1, 32, 64, 256])],
                  {}, opset=20), \
        {"x": rng.standard_normal((1, 32, 64, 256)).astype(np.float32), "grid": (rng.random((1, 64, 256, 2)) * 2.2 - 1.1).astype(np.float32)}


def logmel() -> Case:
    """A speech front end: 10 s of 16 kHz audio, STFT (n_fft 400, hop 160, Hann), power, 80 mel
    bands, log."""
    rng = np.random.default_rng(0)
    n_fft, hop, mels = 400, 160, 80
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    bins = n_fft // 2 + 1
    mel = np.abs(rng.standard_normal((bins, mels))).astype(np.float32) * 0.01
    nodes = [helper.make_node("STFT", ["audio", "step", "window", "length"], ["spec"], onesided=1),
             helper.make_node("Mul", ["spec", "spec"], ["sq"]),
             helper.make_node("ReduceSum", ["sq", "last"], ["power"], keepdims=0),
             helper.make_node("MatMul", ["power", "mel"], ["m"]),
             helper.make_node("Add", ["m", "eps"], ["me"]), helper.make_node("Log", ["me"], ["y"])]
    inits = {"step": np.array(hop, np.int64), "window": window, "length": np.array(n_fft, np.int64), "mel": mel,
             "last": np.array([-1], np.int64), "eps": np.array(1e-6, np.float32)}
    frames = (160000 - n_fft) // hop + 1
    return _model(nodes, [("audio", T.FLOAT, [1, 160000, 1])], [("y", T.FLOAT, [1, frames, mels])], inits), \
        {"audio": rng.standard_normal((1, 160000, 1)).astype(np.float32)}


def topk() -> Case:
    """A detector's pre-NMS selection: the top min(n, 300) of 8400 x 80 flattened class scores,
    k computed from the input's shape as torch exports `topk(min(n, 300))`."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["s", "flat"], ["f"]), helper.make_node("Shape", ["f"], ["n"]),
             helper.make_node("Min", ["n", "cap"], ["k"]), helper.make_node("TopK", ["f", "k"], ["v", "i"])]
    inits = {"flat": np.array([-1], np.int64), "cap": np.array([300], np.int64)}
    return _model(nodes, [("s", T.FLOAT, ["A", 80])], [("v", T.FLOAT, ["k"]), ("i", T.INT64, ["k"])], inits), \
        {"s": (rng.random((8400, 80)) ** 4).astype(np.float32)}


def loop() -> Case:
    """A loop decided at run time: 100 steps of h = tanh(h W + b) on [1, 256], with the trip
    count an input (the VM recurses once per step)."""
    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Tanh", ["a"], ["h_out"]), helper.make_node("Identity", ["c"], ["c_out"])],
        "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("h", T.FLOAT, [1, 256])],
        [vi("c_out", T.BOOL, []), vi("h_out", T.FLOAT, [1, 256])])
    inits = {"w": (rng.standard_normal((256, 256)) / 16).astype(np.float32), "b": (rng.standard_normal(256) * 0.1).astype(np.float32)}
    node = helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)
    return _model([node], [("x", T.FLOAT, [1, 256]), ("trips", T.INT64, [])], [("y", T.FLOAT, [1, 256])], inits), \
        {"x": rng.standard_normal((1, 256)).astype(np.float32), "trips": np.array(100, np.int64)}


def unpool() -> Case:
    """SegNet's first encoder pool and its decoder's unpool: MaxPool's Indices (2x2, stride 2) of
    a 64-channel 360 x 480 map (CamVid's size) fed to MaxUnpool."""
    rng = np.random.default_rng(0)
    window = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], **window), helper.make_node("MaxUnpool", ["p", "i"], ["y"], **window)]
    shape = [1, 64, 360, 480]
    return _model(nodes, [("x", T.FLOAT, shape)], [("y", T.FLOAT, shape)], {}), {"x": rng.standard_normal(shape).astype(np.float32)}


CASES: dict[str, Callable[[], Case]] = {"nms": nms, "nonzero": nonzero, "topk": topk, "roialign": roialign,
                                        "gridsample": gridsample, "logmel": logmel, "loop": loop, "unpool": unpool}


WARMUP = 10  # runs before timing: a run-time loop's first calls fill the VM's memory pool (4 ms instead of 0.7)


def _block(kind: str, where: Path, feeds: Path, threads: int, runs: int) -> list[float]:
    """`runs` timed runs of one engine in a fresh process, after WARMUP runs."""
    from bench_rnn import _block as block

    return block(kind, where, feeds, threads, runs, warmup=WARMUP)


def _diff(artifact: Path, model_path: Path, feeds: dict[str, np.ndarray], threads: int) -> str:
    import onnxruntime as ort

    from ember.runtime import load

    got = list(load(artifact, threads=threads)(**feeds).values())
    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    worst = 0.0
    for a, b in zip(got, want):
        if a.shape != b.shape:
            raise RuntimeError(f"{model_path.stem}: ember's output has shape {a.shape}, onnxruntime's {b.shape}")
        if a.dtype.kind in "iub":
            if not np.array_equal(a, b):
                raise RuntimeError(f"{model_path.stem}: integer outputs differ from onnxruntime's")
            continue
        worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
    return f"{worst:.1e}" if any(a.dtype.kind == "f" for a in got) else "-"


def side_by_side(artifact: Path, model: Path, feeds: Path, threads: int, blocks: int, runs: int) -> tuple[float, float]:
    """Medians in ms (ember, onnxruntime) of `blocks` alternating blocks of `runs` runs each."""
    times: dict[str, list[float]] = {"ember": [], "ort": []}
    for _ in range(blocks):
        for kind, where in (("ember", artifact), ("ort", model)):
            times[kind] += _block(kind, where, feeds, threads, runs)
    return statistics.median(times["ember"]) * 1e3, statistics.median(times["ort"]) * 1e3


def write_table(script: str, argv: list[str] | None, markers: tuple[str, str], heading: str, columns: list[str],
                rows: list[str], runs: int, write: bool) -> None:
    """Print the table (command, date, the rows) between `markers`; with `write`, replace it in
    BENCHMARKS.md (or append it under `heading`)."""
    begin, end = markers
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    command = f"python tools/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join([
        begin,
        f"Command: `{command.strip()}` (measured {stamp}; medians of {runs} runs a column, "
        "alternating blocks, each in a fresh process)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *rows,
        end,
    ])
    print(table)
    if write:
        bench = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        text = bench.read_text()
        if begin in text and end in text:
            text = text[: text.index(begin)] + table + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + table + "\n"
        bench.write_text(text)


COLUMNS = ["onnxruntime ms", "ember ms", "ember/ORT", "max abs diff", "compile s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--write", action="store_true", help="replace the table in BENCHMARKS.md")
    args = parser.parse_args(argv)
    from ember.compiler.driver import compile_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            proto, feeds = CASES[name]()
            path, artifact, inputs = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.ember", Path(tmp) / f"{name}.npz"
            onnx.save(proto, path)
            start = time.perf_counter()
            compile_model(path, artifact, sample=feeds)
            compile_s = time.perf_counter() - start
            np.savez(inputs, **feeds)
            for threads in [int(t) for t in args.threads.split(",")]:
                diff = _diff(artifact, path, feeds, threads)
                e, o = side_by_side(artifact, path, inputs, threads, args.blocks, args.runs)
                rows.append(f"| {name} | {threads} | {o:.3f} | {e:.3f} | {e / o:.2f} | {diff} | {compile_s:.1f} |")
                print(rows[-1], flush=True)
    write_table("bench_ops.py", argv, (BEGIN, END), "8. Beyond the zoo: data-dependent sizes, vision, signal, loops",
                ["case", "threads", *COLUMNS], rows, args.blocks * args.runs, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
