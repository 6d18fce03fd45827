"""Symbolic dimensions: a dim is an int or a string naming a symbol or a small expression.

Products of symbols and integers are kept in a canonical form (`3*N*S`) so that shape
arithmetic from Shape -> Gather -> Mul -> Reshape chains stays exact; sums and quotients
are kept as readable expressions (`N+1`, `(N)//2`) without further algebra.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

Dim = int | str


class Extent(str):
    """A dim expression read off a tensor's shape (by Shape or Size): a size, so >= 0 whenever
    the model runs, even where the expression alone could be negative (`(N-1)//2`). Carried as
    a str (equal to and hashed as its text); arithmetic on it gives plain strs again."""

    __slots__ = ()


def extent(dim: Dim) -> Dim:
    """`dim`, marked as a tensor extent when it is symbolic."""
    return Extent(dim) if isinstance(dim, str) and not isinstance(dim, Extent) else dim


# Pairs of dims that shape inference took to be equal (two different symbols broadcast
# against each other, a symbol against a static size, a matmul's inner dims), collected while
# a `recording()` block is open: the importer unifies the input dims they name.
_RECORDS: list[list[tuple[Dim, Dim]]] = []


@contextmanager
def recording() -> Iterator[list[tuple[Dim, Dim]]]:
    """Collect the (a, b) pairs of dims that inference assumes equal inside the block."""
    found: list[tuple[Dim, Dim]] = []
    _RECORDS.append(found)
    try:
        yield found
    finally:
        _RECORDS.remove(found)


def assume_equal(a: Dim, b: Dim) -> None:
    """Note that inference took `a` and `b` (not both static) to be the same size."""
    if a != b and not (isinstance(a, int) and isinstance(b, int)):
        for found in _RECORDS:
            found.append((a, b))

_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _top_level_factors(text: str) -> list[str] | None:
    """`text` split at its top-level `*` (not inside parentheses); None if unbalanced."""
    factors, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "*" and depth == 0:
            if text[i - 1: i] == "*" or text[i + 1: i + 2] == "*":
                return None  # a power: not a product
            factors.append(text[start:i])
            start = i + 1
    return None if depth else [*factors, text[start:]]


def _enclosed(text: str) -> bool:
    """Whether `text` is one parenthesized group, `(...)`."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(text) - 1:
            return False
    return True


def _product(dim: Dim) -> tuple[int, tuple[str, ...]] | None:
    """Split a dim into (coefficient, sorted factors) if it is a product of integers, symbols
    and parenthesized expressions (`2*N*(S+1)`: an expression is an opaque factor, so
    `(W//2)*N*64 // ((W//2)*N)` is 64), else None."""
    if isinstance(dim, int):
        return dim, ()
    factors = _top_level_factors(dim)
    if factors is None:
        return None
    coef, syms = 1, []
    for factor in factors:
        if factor.lstrip("-").isdigit():
            coef *= int(factor)
        elif _SYMBOL.match(factor) or _enclosed(factor):
            syms.append(factor)
        else:
            return None
    return coef, tuple(sorted(syms))


def _join(coef: int, syms: tuple[str, ...]) -> Dim:
    if not syms or coef == 0:
        return coef
    if coef == 1 and len(syms) == 1 and _enclosed(syms[0]):
        return syms[0][1:-1]  # (256*((T-5)//5))//256 is (T-5)//5, the dim it came from
    parts = ([str(coef)] if coef != 1 else []) + list(syms)
    return "*".join(parts)


def _wrap(dim: Dim) -> str:
    text = str(dim)
    return text if _product(dim) is not None else f"({text})"


def mul(a: Dim, b: Dim) -> Dim:
    """a * b."""
    if a == 1 or b == 0:
        return b
    if b == 1 or a == 0:
        return a
    pa, pb = _product(a), _product(b)
    if pa is not None and pb is not None:
        return _join(pa[0] * pb[0], tuple(sorted(pa[1] + pb[1])))
    return f"{_wrap(a)}*{_wrap(b)}"


def add(a: Dim, b: Dim) -> Dim:
    """a + b."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    pa, pb = _product(a), _product(b)
    if pa is not None and pb is not None and pa[1] and pa[1] == pb[1]:  # like terms: S + S = 2*S
        return _join(pa[0] + pb[0], pa[1])
    if pa is not None and pb is not None and pa[1] and pb[1] and pa[0] == pb[0] and pa[0] > 1:
        # a common coefficient comes out, 9*A + 9*B = 9*(A+B), so that a Reshape's -1 over a
        # concatenation of anchors, 91*9*(A+B) // (9*(A+B)), cancels to 91 (RetinaNet's heads)
        return mul(pa[0], f"({add(_join(1, pa[1]), _join(1, pb[1]))})")
    if isinstance(b, int) and b < 0:
        return f"{a}-{-b}"
    return f"{a}+{b}"


def sub(a: Dim, b: Dim) -> Dim:
    """a - b."""
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if a == b:
        return 0
    if b == 0:
        return a
    return f"{a}-{_wrap(b)}"


def floordiv(a: Dim, b: Dim) -> Dim:
    """a // b (exact when a is a product with a coefficient divisible by b)."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if b == 1:
        return a
    # An expression that is no product is one opaque factor: 256*((W//2)//2) // ((W//2)//2)
    # is 256 (a CRNN's LSTM weight had kept that dim, and was transposed on every call).
    pa, pb = _product(a), _product(b)
    pa = pa if pa is not None else _product(_wrap(a))
    pb = pb if pb is not None else _product(_wrap(b))
    if pa is not None and pb is not None and pb[0] != 0 and pa[0] % pb[0] == 0:
        syms = list(pa[1])
        if all(s in syms for s in pb[1]):
            for s in pb[1]:
                syms.remove(s)
            return _join(pa[0] // pb[0], tuple(syms))
    return f"{_wrap(a)}//{_divisor(b)}"


def _divisor(dim: Dim) -> str:
    """A dim written as the right operand of `//`: a product is parenthesized too
    (`x//(64*N)`, not `x//64*N`, which Python reads as `(x//64)*N`)."""
    text = str(dim)
    return text if isinstance(dim, int) or _SYMBOL.match(text) or _enclosed(text) else f"({text})"


def ceildiv(a: Dim, b: Dim) -> Dim:
    """ceil(a / b)."""
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    if b == 1:
        return a
    return floordiv(add(a, sub(b, 1)), b)


def is_static(shape: tuple[Dim, ...]) -> bool:
    """True when every dim is an int."""
    return all(isinstance(d, int) for d in shape)


def numel(shape: tuple[Dim, ...]) -> Dim:
    """The product of the dims."""
    total: Dim = 1
    for d in shape:
        total = mul(total, d)
    return total


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy-style multidirectional broadcasting of (possibly symbolic) shapes.

    Raises ValueError for two different static dims neither of which is 1. Two different
    symbolic dims are assumed equal (the first wins), as ONNX shape inference does, and a
    symbol against a static size takes that size; both are noted (`assume_equal`).
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dim: Dim = 1
        for shape in shapes:
            offset = axis - (rank - len(shape))
            if offset < 0:
                continue
            d = shape[offset]
            if d == 1 or d == dim:
                continue
            if dim == 1:
                dim = d
                continue
            if isinstance(d, int) and isinstance(dim, int):
                raise ValueError(f"shapes {list(shapes)} do not broadcast (axis {axis}: {dim} vs {d})")
            assume_equal(dim, d)
            if isinstance(dim, str) and isinstance(d, int):
                dim = d  # a static size pins the symbol
        out.append(dim)
    return tuple(out)


def parse(text: str) -> Dim:
    """A dim from its printed form."""
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def evaluate(dim: Dim, values: dict[str, object]) -> object:
    """A dim (an int, a symbol or an expression of symbols: `3*N`, `(H+1)//2`) at `values`
    (ints, or a code generator's symbolic expressions); KeyError/NameError where a symbol has
    no value."""
    if isinstance(dim, int):
        return dim
    return eval(dim, {"__builtins__": {}}, dict(values))
