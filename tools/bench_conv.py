"""Convolution kernels, ember's schedule rule against onnxruntime, one op at a time.

    python tools/bench_conv.py [--models resnet18,resnet50,mobilenetv2] [--threads 2]
                               [--repeat 30] [--only SUBSTR] [--write]

Every distinct Conv (with its bias and the Relu/Clip that follows it, as both ember and
onnxruntime fuse them), MaxPool/AveragePool and GlobalAveragePool of the zoo models is built
as a one-node model: ember compiles it with its default pipeline (the kernel's rule is named),
onnxruntime runs it with default optimizations, both at --threads threads in this process.
Each side runs in its own process (in one process the two thread pools slow each other 2-4x),
alternately for --rounds rounds; the table shows medians of the pooled samples.
GFLOP/s counts 2 * MACs of the conv (pools count one op per window element).
`--write` replaces the table between the conv markers in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.path.expanduser("~")) / ".cache" / "ember" / "zoo"
START, END = "<!-- conv:begin -->", "<!-- conv:end -->"


@dataclass(frozen=True)
class Shape:
    """One pooling or convolution configuration."""

    op: str  # Conv, MaxPool, AveragePool, GlobalAveragePool
    n: int
    c: int
    h: int
    w: int
    co: int = 0
    k: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    act: str = ""  # Relu, Clip or ""

    def out_hw(self) -> tuple[int, int]:
        if self.op == "GlobalAveragePool":
            return 1, 1
        kh = (self.k[0] - 1) * self.dilation[0] + 1
        kw = (self.k[1] - 1) * self.dilation[1] + 1
        return ((self.h + self.pads[0] + self.pads[2] - kh) // self.stride[0] + 1,
                (self.w + self.pads[1] + self.pads[3] - kw) // self.stride[1] + 1)

    def flops(self) -> float:
        oh, ow = self.out_hw()
        if self.op == "Conv":
            return 2.0 * self.n * self.co * oh * ow * (self.c // self.group) * self.k[0] * self.k[1]
        if self.op == "GlobalAveragePool":
            return float(self.n * self.c * self.h * self.w)
        return float(self.n * self.c * oh * ow * self.k[0] * self.k[1])

    def label(self) -> str:
        if self.op == "GlobalAveragePool":
            return f"gap {self.c}x{self.h}x{self.w}"
        if self.op != "Conv":
            return f"{self.op.lower()} {self.c}x{self.h}x{self.w} k{self.k[0]} s{self.stride[0]} p{self.pads[0]}"
        kind = "dw " if self.group == self.c and self.group > 1 else (f"g{self.group} " if self.group > 1 else "")
        act = f" +{self.act.lower()}" if self.act else ""
        return (f"{kind}{self.c}x{self.h}x{self.w} -> {self.co} k{self.k[0]} s{self.stride[0]} "
                f"p{self.pads[0]}{act}")


def zoo_shapes(model: str, batch: int) -> list[Shape]:
    """The distinct conv/pool configurations of a zoo model, in order of first use."""
    proto = shape_inference.infer_shapes(onnx.load(str(ZOO / f"{model}.onnx")))
    dims: dict[str, list[int]] = {}
    for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        dims[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[Shape] = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _, c, h, w = dims[node.input[0]]
        after = consumers.get(node.output[0], [])
        act = after[0].op_type if len(after) == 1 and after[0].op_type in ("Relu", "Clip") else ""
        if node.op_type == "GlobalAveragePool":
            shape = Shape("GlobalAveragePool", batch, c, h, w)
        else:
            kernel = tuple(attrs.get("kernel_shape") or inits[node.input[1]][2:])
            shape = Shape(
                node.op_type, batch, c, h, w,
                co=inits[node.input[1]][0] if node.op_type == "Conv" else c,
                k=kernel, stride=tuple(attrs.get("strides", (1, 1))),
                pads=tuple(attrs.get("pads", (0, 0, 0, 0))), dilation=tuple(attrs.get("dilations", (1, 1))),
                group=int(attrs.get("group", 1)), act=act if node.op_type == "Conv" else "",
            )
        if shape not in found:
            found.append(shape)
    return found


def one_op_model(shape: Shape, rng: np.random.Generator) -> onnx.ModelProto:
    """The configuration as a one-node ONNX model (plus its bias and activation)."""
    oh, ow = shape.out_hw()
    inits: list[Any] = []
    nodes: list[Any] = []
    out_c = shape.co if shape.op == "Conv" else shape.c
    if shape.op == "Conv":
        fan_in = shape.c // shape.group * shape.k[0] * shape.k[1]
        weight = (rng.standard_normal((shape.co, shape.c // shape.group, *shape.k)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(rng.standard_normal(shape.co).astype(np.float32), "b")]
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["c" if shape.act else "y"], kernel_shape=list(shape.k),
                                      strides=list(shape.stride), pads=list(shape.pads), dilations=list(shape.dilation),
                                      group=shape.group))
        if shape.act == "Relu":
            nodes.append(helper.make_node("Relu", ["c"], ["y"]))
        elif shape.act == "Clip":
            inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
            nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif shape.op == "GlobalAveragePool":
        nodes.append(helper.make_node("GlobalAveragePool", ["x"], ["y"]))
    else:
        nodes.append(helper.make_node(shape.op, ["x"], ["y"], kernel_shape=list(shape.k), strides=list(shape.stride),
                                      pads=list(shape.pads)))
    graph = helper.make_graph(nodes, "one_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.n, shape.c, shape.h, shape.w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape.n, out_c, oh, ow])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@dataclass
class Row:
    """One configuration's measurements."""

    shape: Shape
    rule: str = ""
    ember: list[float] = field(default_factory=list)
    ort: list[float] = field(default_factory=list)
    error: str = ""


def prepare_ember(shape: Shape, x: np.ndarray, model: onnx.ModelProto) -> tuple[Callable[[], Any], str]:
    """ember's default compile of the one-op model: its run function and the rule that scheduled it."""
    import tvm
    from tvm.runtime import vm as tvm_vm

    from ember.compiler.importer import import_proto
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE
    from ember.targets import build, resolve_target

    graph = run_pipeline(import_proto(model), DEFAULT_PIPELINE).graph
    built = build(graph, resolve_target("cpu"))
    rule = ",".join(sorted(set(built.rules.values()))) or "-"
    main = tvm_vm.VirtualMachine(built.executable, tvm.cpu())["main"]
    arg = tvm.runtime.tensor(x)
    return (lambda: main(arg).numpy()), rule


def prepare_ort(x: np.ndarray, model: onnx.ModelProto, threads: int) -> Callable[[], Any]:
    """onnxruntime, default graph optimizations, `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def timed(run: Callable[[], Any], count: int) -> list[float]:
    """`count` wall times of `run`, seconds."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        out.append(time.perf_counter() - start)
    return out


def worker(side: str, shapes: list[Shape], threads: int, repeat: int, out: Path) -> None:
    """One contender alone in this process (TVM's and onnxruntime's thread pools slow each
    other 2-4x when they share a process): build every configuration, time each, write JSON
    {label: {"times": [...], "rule": ..., "output": path of the first output}}."""
    result: dict[str, Any] = {}
    if side == "ember":
        from ember.runtime.model import set_threads

        set_threads(threads)
    for i, shape in enumerate(shapes):
        rng = np.random.default_rng(i)
        model = one_op_model(shape, rng)
        x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(np.float32)
        try:
            if side == "ember":
                run, rule = prepare_ember(shape, x, model)
            else:
                run, rule = prepare_ort(x, model, threads), ""
            np.save(out.with_name(f"{out.stem}_{i}.npy"), run())
            timed(run, 3)
            result[shape.label()] = {"times": timed(run, repeat), "rule": rule}
        except Exception as err:  # a failure is a row, not the end of the run
            result[shape.label()] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"}
    out.write_text(json.dumps(result))


def measure(model: str, shapes: list[Shape], threads: int, repeat: int, rounds: int) -> list[Row]:
    """Each side in its own process, `rounds` times alternately; samples of all rounds pooled."""
    rows = {s.label(): Row(s) for s in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for side in ("ember", "ort"):
                out = Path(tmp) / f"{side}{r}.json"
                subprocess.run([sys.executable, __file__, "--worker", side, "--models", model, "--threads", str(threads),
                                "--repeat", str(repeat), "--batch", str(shapes[0].n), "--out", str(out),
                                "--only", ARGS_ONLY[0]], check=True)
                for label, entry in json.loads(out.read_text()).items():
                    row = rows[label]
                    if "error" in entry:
                        row.error = row.error or f"{side}: {entry['error']}"
                        continue
                    getattr(row, side).extend(entry["times"])
                    row.rule = entry["rule"] or row.rule
        for i, shape in enumerate(shapes):  # both sides computed the same thing
            e, o = Path(tmp) / f"ember0_{i}.npy", Path(tmp) / f"ort0_{i}.npy"
            if e.exists() and o.exists():
                got, want = np.load(e), np.load(o)
                err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))
                if err > 1e-4:
                    rows[shape.label()].error = f"ember differs from onnxruntime: max rel err {err:.1e}"
    return [rows[s.label()] for s in shapes]


ARGS_ONLY = [""]


def format_row(row: Row) -> str:
    """A markdown table row."""
    if row.error:
        return f"| {row.shape.label()} | | | | | | {row.error} |"
    e, o = float(np.median(row.ember)), float(np.median(row.ort))
    gf = row.shape.flops() / 1e9
    return (f"| {row.shape.label()} | {gf:.3f} | {o * 1e3:.3f} | {e * 1e3:.3f} | {e / o:.2f} | "
            f"{gf / e:.1f} | {gf / o:.1f} | {row.rule} |")


HEADER = ("| kernel (CxHxW -> CO, kernel, stride, pad) | GFLOP | onnxruntime ms | ember ms | ember/ORT | "
          "ember GFLOP/s | ORT GFLOP/s | rule |\n|---|---|---|---|---|---|---|---|")


def summary(rows: list[Row]) -> str:
    """Geomean ratio and FLOP-weighted totals."""
    ok = [r for r in rows if not r.error]
    if not ok:
        return ""
    ratios = [float(np.median(r.ember) / np.median(r.ort)) for r in ok]
    total_e = sum(float(np.median(r.ember)) for r in ok)
    total_o = sum(float(np.median(r.ort)) for r in ok)
    return (f"geomean ember/ORT {np.exp(np.mean(np.log(ratios))):.2f} over {len(ok)} kernels; "
            f"sum of medians ember {total_e * 1e3:.2f} ms, ORT {total_o * 1e3:.2f} ms")


def write(text: str) -> None:
    """Replace the conv section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text()
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        doc = head + START + "\n" + text + "\n" + END + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + START + "\n" + text + "\n" + END + "\n"
    path.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating ember/onnxruntime processes")
    parser.add_argument("--only", default="", help="keep configurations whose label contains this")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--worker", choices=["ember", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ARGS_ONLY[0] = args.only
    if args.worker:
        shapes = [s for s in zoo_shapes(args.models, args.batch) if args.only in s.label()]
        worker(args.worker, shapes, args.threads, args.repeat, args.out)
        return 0
    sections = []
    for model in args.models.split(","):
        shapes = [s for s in zoo_shapes(model, args.batch) if args.only in s.label()]
        rows = measure(model, shapes, args.threads, args.repeat, args.rounds)
        text = f"**{model}** (batch {args.batch}, {args.threads} threads)\n\n{HEADER}\n" + "\n".join(format_row(r) for r in rows)
        text += f"\n\n{summary(rows)}\n"
        print(text, flush=True)
        sections.append(text)
    if args.write:
        command = "python tools/bench_conv.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        write(f"Per-kernel conv/pool timings, medians (`{command}`):\n\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
