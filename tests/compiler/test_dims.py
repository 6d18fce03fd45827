"""Symbolic dim arithmetic (compiler/dims.py): the quotients shape chains produce must come back
to the dim they came from, or reshapes and weight transposes stay in the compiled model."""

from __future__ import annotations

import pytest

from ember.compiler import dims


@pytest.mark.parametrize(("a", "b", "want"), [
    ("2*N*S", "N", "2*S"),
    ("256*((W//2)//2)", "(W//2)//2", 256),  # a product over an opaque expression (a CRNN's LSTM weight)
    ("(W//2)//2", "(W//2)//2", 1),
    ("N*(T+1)", "T+1", "N"),
    ("256*((T-5)//5)", 256, "(T-5)//5"),  # GroupNorm's reshape back (the enclosed factor unwrapped)
    ("3*N", 2, "3*N//2"),  # not exact: kept as an expression ((3*N)//2)
    ("N+1", "N", "(N+1)//N"),
    (12, 5, 2),
])
def test_floordiv(a: dims.Dim, b: dims.Dim, want: dims.Dim) -> None:
    assert dims.floordiv(a, b) == want


def test_quotient_of_a_built_product_is_exact() -> None:
    quarter = dims.floordiv(dims.floordiv("W", 2), 2)
    assert dims.floordiv(dims.mul(256, quarter), quarter) == 256
    assert dims.floordiv(dims.mul(quarter, "N"), quarter) == "N"
