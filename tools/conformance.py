"""Run the ONNX backend node tests through ember's importer and reference interpreter.

    python tools/conformance.py [--ops Conv,Relu] [--failures] [--markdown]

Each case is counted twice: as shipped (shapes, axes, pads fed as run-time inputs) and
"frozen" (integer inputs that feed an operand other than the first turned into constants,
as real exported models have them). Only cases whose operators are all in ember's op table
count toward the pass rate; the rest are listed as unsupported.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases

from ember.compiler import interp
from ember.compiler.errors import EmberError, UnsupportedModelError
from ember.compiler.importer import import_proto, is_supported


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one node test in one mode."""

    name: str
    ops: tuple[str, ...]
    mode: str  # "shipped" or "frozen"
    status: str  # "pass", "fail", "error", "unsupported"
    detail: str = ""


def case_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """Operator types a test model uses (including subgraphs)."""
    found: list[str] = []

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.append(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    visit(sub)

    visit(model.graph)
    return tuple(dict.fromkeys(found))


def freeze(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Integer graph inputs used only as non-first operands become initializers."""
    graph = model.graph
    positions: dict[str, set[int]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            positions.setdefault(name, set()).add(k)
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep_inputs, keep_arrays = [], []
    for info, array in zip(graph.input, inputs):
        used = positions.get(info.name, set())
        if array.dtype.kind in "iu" and used and 0 not in used:
            frozen.graph.initializer.append(numpy_helper.from_array(np.asarray(array), info.name))
        else:
            keep_inputs.append(info)
            keep_arrays.append(array)
    del frozen.graph.input[:]
    frozen.graph.input.extend(keep_inputs)
    return frozen, keep_arrays


def _array(x: object) -> np.ndarray:
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    return np.asarray(x)


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {list(got.shape)} != {list(want.shape)}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind not in "biuSUO":  # floats, including ml_dtypes (bfloat16: kind V)
        ok = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        if not ok:
            err = np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64)))
            return f"max abs error {err:.3g} (rtol {rtol}, atol {atol})"
        return ""
    return "" if np.array_equal(got, want) else "values differ"


def run_case(case: object, mode: str) -> CaseResult:
    """Import and interpret one test case; compare every data set's outputs."""
    model: onnx.ModelProto = case.model  # type: ignore[attr-defined]
    ops = case_ops(model)
    name = case.name  # type: ignore[attr-defined]
    missing = [op for op in ops if not is_supported(*reversed(op.rsplit(".", 1))) if "." in op] + [
        op for op in ops if "." not in op and not is_supported(op)
    ]
    if missing:
        return CaseResult(name, ops, mode, "unsupported", ",".join(missing))
    rtol = getattr(case, "rtol", 1e-3)
    atol = getattr(case, "atol", 1e-7)
    for inputs, outputs in case.data_sets:  # type: ignore[attr-defined]
        inputs = [_array(x) for x in inputs]
        outputs = [_array(x) for x in outputs]
        m = model
        if mode == "frozen":
            m, inputs = freeze(model, inputs)
        try:
            graph = import_proto(m, where=name)
            feeds = {v.name: a for v, a in zip(graph.inputs, inputs)}
            result = interp.run(graph, feeds)
        except UnsupportedModelError as err:  # e.g. float8/int4 dtypes: out of ember's scope
            return CaseResult(name, ops, mode, "unsupported", str(err).splitlines()[0][:300])
        except EmberError as err:
            return CaseResult(name, ops, mode, "error", str(err).splitlines()[0][:300])
        except Exception as err:  # a crash is a bug to list, not a reason to stop
            return CaseResult(name, ops, mode, "error", f"CRASH {type(err).__name__}: {err}"[:300])
        for out_name, want in zip(graph.outputs, outputs):
            problem = _compare(result[out_name], want, rtol, atol)
            if problem:
                return CaseResult(name, ops, mode, "fail", f"{out_name}: {problem}")
    return CaseResult(name, ops, mode, "pass")


def run_all(ops: Iterable[str] | None = None, modes: tuple[str, ...] = ("shipped", "frozen")) -> list[CaseResult]:
    """Every node test (optionally those using one of `ops`) in every mode."""
    wanted = set(ops) if ops else None
    results = []
    with warnings.catch_warnings():  # the generators' own overflow warnings
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    for case in cases:
        if case.kind != "node":
            continue
        if wanted is not None and not wanted & set(case_ops(case.model)):
            continue
        for mode in modes:
            results.append(run_case(case, mode))
    return results


def summary(results: list[CaseResult]) -> dict[str, Counter]:
    """Counts of statuses per mode."""
    table: dict[str, Counter] = {}
    for r in results:
        table.setdefault(r.mode, Counter())[r.status] += 1
    return table


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the pass rates and (optionally) the failures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", help="comma-separated operator types to restrict to")
    parser.add_argument("--failures", action="store_true", help="list failing and erroring cases")
    parser.add_argument("--unsupported", action="store_true", help="list unsupported operators with case counts")
    parser.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md section")
    args = parser.parse_args(argv)
    results = run_all(args.ops.split(",") if args.ops else None)
    for mode, counts in summary(results).items():
        supported = counts["pass"] + counts["fail"] + counts["error"]
        rate = 100.0 * counts["pass"] / supported if supported else 0.0
        print(f"{mode:8s} pass {counts['pass']:5d} / {supported:5d} supported cases = {rate:5.1f}%"
              f"  (fail {counts['fail']}, error {counts['error']}, unsupported {counts['unsupported']})")
    if args.failures or args.markdown:
        for r in results:
            if r.status in ("fail", "error"):
                print(f"  {r.mode:8s} {r.status:5s} {r.name}: {r.detail}")
    if args.unsupported:
        missing = Counter(
            op if " " not in r.detail else r.detail.split(": ", 1)[-1][:60]
            for r in results
            if r.status == "unsupported" and r.mode == "shipped"
            for op in r.detail.split(",")
        )
        for op, count in missing.most_common():
            print(f"  unsupported {op}: {count} case(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
