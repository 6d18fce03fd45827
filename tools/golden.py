"""Golden dumps of the default pipeline on tiny models: regenerate or check them.

    python tools/golden.py            # rewrite tests/golden/<model>/NNN_<pass>.ir
    python tools/golden.py --check    # exit 1 and show a diff if any dump changed

A refactor that does not mean to change what passes do leaves these files unchanged.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ember.compiler.importer import import_model, import_proto
from ember.compiler.ir import Graph
from ember.compiler.passmanager import run_pipeline
from ember.compiler.pipeline import DEFAULT_PIPELINE

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def mlp_block() -> onnx.ModelProto:
    """A transformer-style MLP: MatMul + bias, GELU written out with Erf, MatMul, residual."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((16, 32)).astype(np.float32), "b1": rng.standard_normal(32).astype(np.float32),
        "w2": rng.standard_normal((32, 16)).astype(np.float32), "sqrt2": np.array(1.4142135, np.float32),
        "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("Identity", ["g"], ["gi"]),
        helper.make_node("MatMul", ["gi", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def models() -> dict[str, Graph]:
    """The tiny models with golden dumps."""
    return {
        "digits_cnn": import_model(ROOT / "examples" / "digits_cnn.onnx"),
        "mlp_block": import_proto(mlp_block(), where="mlp_block"),
    }


def write(out: Path) -> None:
    """Dump the default pipeline of every golden model under `out`."""
    for name, graph in models().items():
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.ir"):
            old.unlink()
        run_pipeline(graph, DEFAULT_PIPELINE, dump_dir=target)


def compare(a: Path, b: Path) -> list[str]:
    """Unified diff lines between two dump trees (empty when identical)."""
    lines: list[str] = []
    names = sorted({p.relative_to(a) for p in a.rglob("*.ir")} | {p.relative_to(b) for p in b.rglob("*.ir")})
    for rel in names:
        x = (a / rel).read_text().splitlines(keepends=True) if (a / rel).exists() else []
        y = (b / rel).read_text().splitlines(keepends=True) if (b / rel).exists() else []
        lines += difflib.unified_diff(x, y, fromfile=f"golden/{rel}", tofile=f"now/{rel}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Regenerate (default) or check the golden dumps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting")
    args = parser.parse_args(argv)
    if not args.check:
        write(GOLDEN)
        print(f"wrote {GOLDEN}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        diff = compare(GOLDEN, Path(tmp))
    sys.stdout.writelines(diff)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
