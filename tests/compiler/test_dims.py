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
    # a product divisor is parenthesized: `64*S*M//64*B` reads as ((64*S*M)//64)*B, which made
    # the -1 of Whisper's cross-attention view(bsz, -1, heads, head_dim) 128 where it is 32
    ("64*S*M", "64*B", "64*S*M//(64*B)"),
    ("X", "2*N", "X//(2*N)"),
])
def test_floordiv(a: dims.Dim, b: dims.Dim, want: dims.Dim) -> None:
    assert dims.floordiv(a, b) == want


def test_quotients_evaluate_as_written() -> None:
    """Each printed quotient evaluates to the integer quotient (dims.evaluate is Python's eval)."""
    at = {"S": 32, "M": 2, "B": 2, "X": 37, "N": 3}
    assert dims.evaluate(dims.floordiv("64*S*M", "64*B"), at) == 64 * 32 * 2 // (64 * 2)
    assert dims.evaluate(dims.ceildiv("X", "2*N"), at) == -(-37 // 6)


def test_quotient_of_a_built_product_is_exact() -> None:
    quarter = dims.floordiv(dims.floordiv("W", 2), 2)
    assert dims.floordiv(dims.mul(256, quarter), quarter) == 256
    assert dims.floordiv(dims.mul(quarter, "N"), quarter) == "N"


def test_a_common_coefficient_comes_out_of_a_sum() -> None:
    """RetinaNet's heads: 9 anchors a cell over three levels, concatenated, then a Reshape's -1
    of 91 * 9*(A + B + C) elements over [9*(A + B + C), 91]. With the sum written 9*A+9*B+9*C
    the quotient stayed a monster, and TVM's analyzer failed on the kernel that read it
    ("Binding of variable rdiv ... conflicts")."""
    levels = ["a1*b1", "a2*b2", "(h+1)//2"]
    anchors: dims.Dim = 0
    cells: dims.Dim = 0
    for level in levels:
        anchors = dims.add(anchors, dims.mul(9, level if "//" not in level else f"({level})"))
        cells = dims.add(cells, level)
    assert anchors == "9*(a1*b1+a2*b2+(h+1)//2)"
    assert dims.floordiv(dims.mul(anchors, 91), anchors) == 91
    assert dims.floordiv(dims.mul(91, anchors), dims.mul(9, f"({cells})")) == 91
    assert dims.evaluate(anchors, {"a1": 2, "b1": 3, "a2": 1, "b2": 5, "h": 7}) == 9 * (6 + 5 + 4)
    assert dims.add("2*H", "W") == "2*H+W"  # no common coefficient: as written
