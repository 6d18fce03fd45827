"""ONNX backend node tests through ember's importer and reference interpreter.

The pass rate over cases whose operators ember supports must stay at or above
MIN_PASS_RATE in both modes (as shipped, and with integer operands frozen to constants).
`python tools/conformance.py --failures` lists the cases that fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import conformance

MIN_PASS_RATE = 0.95


@pytest.fixture(scope="module")
def results() -> list[conformance.CaseResult]:
    return conformance.run_all()


@pytest.mark.parametrize("mode", ["shipped", "frozen"])
def test_node_test_pass_rate(results: list[conformance.CaseResult], mode: str) -> None:
    counts = conformance.summary(results)[mode]
    supported = counts["pass"] + counts["fail"] + counts["error"]
    rate = counts["pass"] / supported
    failing = [f"{r.name}: {r.detail}" for r in results if r.mode == mode and r.status in ("fail", "error")]
    assert supported > 1000, f"only {supported} supported cases"
    assert rate >= MIN_PASS_RATE, f"{rate:.1%} < {MIN_PASS_RATE:.0%}; failing:\n" + "\n".join(failing)


def test_no_case_crashes_the_importer_or_interpreter(results: list[conformance.CaseResult]) -> None:
    crashes = [f"{r.mode} {r.name}: {r.detail}" for r in results if r.detail.startswith("CRASH")]
    assert not crashes, "\n".join(crashes)
