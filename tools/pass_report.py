"""Per-model effect of the default pipeline on the zoo, checked numerically.

    python tools/pass_report.py [--models a,b] [--write]

For each model: nodes, fusion groups and parameter bytes before/after the default pipeline;
the optimized graph's largest deviation from the input graph (reference interpreter, the
zoo's sample inputs); and the same graph exported back to ONNX (--emit-onnx) run by
onnxruntime against the zoo's onnxruntime reference outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- passes:start -->", "<!-- passes:end -->"


def report(name: str) -> str:
    """One table row for a zoo model."""
    import onnxruntime as ort

    from ember.compiler import interp
    from ember.compiler.exporter import to_onnx
    from ember.compiler.importer import import_model
    from ember.compiler.passmanager import run_pipeline
    from ember.compiler.pipeline import DEFAULT_PIPELINE

    path = zoo.ensure(name)
    feeds = dict(np.load(path.with_suffix(".inputs.npz")))
    ref = dict(np.load(path.with_suffix(".ref.npz")))
    graph = import_model(path)
    start = time.perf_counter()
    result = run_pipeline(graph, DEFAULT_PIPELINE)
    seconds = time.perf_counter() - start
    out = result.graph
    before, after = interp.run(graph, feeds), interp.run(out, feeds)
    interp_err = max(float(np.max(np.abs(before[k] - after[k]))) for k in graph.outputs)
    session = ort.InferenceSession(to_onnx(out).SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    ort_err = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    groups = sum(1 for n in out.nodes if n.op == "Fused")
    return (f"| {name} | {len(graph.nodes)} | {len(out.nodes)} | {groups} | {graph.param_bytes() / 1e6:.2f} | "
            f"{out.param_bytes() / 1e6:.2f} | {seconds:.2f} | {interp_err:.1e} | {ort_err:.1e} |")


HEADER = ("| model | nodes before | nodes after | fused groups | param MB before | param MB after | pipeline s | "
          "max err vs input graph (interp) | max err emitted ONNX (ORT) vs ORT |")


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write into BENCHMARKS.md) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    rows = [HEADER, "|" + "---|" * 9]
    print("\n".join(rows))
    for name in args.models.split(","):
        rows.append(report(name))
        print(rows[-1], flush=True)
    if args.write:
        command = "python tools/pass_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
        table = f"Command: `{command}`\n\n" + "\n".join(rows)
        bench = ROOT / "BENCHMARKS.md"
        text = bench.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        bench.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
