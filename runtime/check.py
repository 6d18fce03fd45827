"""Comparing outputs: per-output max abs/rel error against a reference, within a tolerance.

Shared by the artifact's self-check (on the machine it lands on, runtime only), `ember verify`
and `ember compile --verify` (against onnxruntime). numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# How far a compiled float32 model may stray from the reference (numpy interpreter or
# onnxruntime): TVM's kernels sum in a different order than numpy/BLAS or MLAS.
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}
# The least tolerance an output of a half-precision dtype is checked at: float32's rtol is
# ~8000 of its epsilons, and a float16 output carries 10 bits (epsilon ~1e-3), so a model that
# only rounds differently is one or two units of 1e-3 off (a float16 conv/norm/softmax exported
# by torch: 3.7e-4 from the interpreter, which is 1.2e-4 from onnxruntime itself). bfloat16
# keeps 7 bits (epsilon ~8e-3).
HALF_TOLERANCE = {"float16": {"rtol": 1e-2, "atol": 1e-3}, "bfloat16": {"rtol": 5e-2, "atol": 1e-2}}


class OutputMismatchError(ValueError):
    """An output is missing or has another shape than the reference's."""

    exit_code = 1


@dataclass(frozen=True)
class Comparison:
    """One output compared with its reference."""

    name: str
    max_abs: float
    max_rel: float
    ok: bool
    widened: str = ""  # the half-precision tolerance it was checked at, if wider than asked

    def text(self) -> str:
        """`logits: max abs error 1.2e-06, max rel error 3.4e-07 ok` (then `(float16: rtol
        0.01, atol 0.001)` where a half-precision output was checked at its own tolerance)."""
        verdict = "ok" if self.ok else "BEYOND TOLERANCE"
        line = f"{self.name}: max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} {verdict}"
        return f"{line} ({self.widened})" if self.widened else line


def compare(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    names: Sequence[str] | None = None,
    rtol: float = TOLERANCE["rtol"],
    atol: float = TOLERANCE["atol"],
) -> list[Comparison]:
    """Compare `got` with `want` output by output (all of `want`'s names by default).

    Floats pass when |got - want| <= atol + rtol * |want| everywhere (numpy.allclose, NaNs
    equal where both are NaN), float16 and bfloat16 outputs at no less than HALF_TOLERANCE;
    integers and bools must be equal.
    """
    rows = []
    for name in names if names is not None else list(want):
        if name not in got:
            raise OutputMismatchError(f"output {name!r} is missing; got {sorted(got)}")
        if name not in want:
            raise OutputMismatchError(f"the reference has no output {name!r}; it has {sorted(want)}")
        a, b = np.asarray(got[name]), np.asarray(want[name])
        if a.shape != b.shape:
            raise OutputMismatchError(f"output {name!r}: shape {list(a.shape)} but the reference's is {list(b.shape)}")
        if a.size == 0:
            rows.append(Comparison(name, 0.0, 0.0, True))
        elif a.dtype.kind in "biu" and b.dtype.kind in "biu":
            diff = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
            rows.append(Comparison(name, diff, diff, diff == 0))
        else:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            both_nan = np.isnan(a64) & np.isnan(b64)
            err = np.where(both_nan, 0.0, np.abs(a64 - b64))
            abs_err = float(np.max(err))
            rel_err = float(np.max(err / (np.abs(np.where(both_nan, 1.0, b64)) + 1e-12)))
            tol, widened = _tolerance(b.dtype, rtol, atol)
            ok = bool(np.allclose(a64, b64, rtol=tol["rtol"], atol=tol["atol"], equal_nan=True))
            rows.append(Comparison(name, abs_err, rel_err, ok, widened))
    return rows


def _tolerance(dtype: np.dtype, rtol: float, atol: float) -> tuple[dict[str, float], str]:
    """The tolerance an output of `dtype` is checked at, and a note when it is wider than asked."""
    half = HALF_TOLERANCE.get(dtype.name)
    if half is None or (rtol >= half["rtol"] and atol >= half["atol"]):
        return {"rtol": rtol, "atol": atol}, ""
    tol = {"rtol": max(rtol, half["rtol"]), "atol": max(atol, half["atol"])}
    return tol, f"{dtype.name}: rtol {tol['rtol']:g}, atol {tol['atol']:g}"
