"""Operators: recurrent networks (LSTM, GRU, RNN) with every ONNX option.

Directions (forward, reverse, bidirectional), `sequence_lens`, initial states, peepholes,
clip, input_forget, linear_before_reset, layout 0/1 and custom activations with their
alpha/beta. Gate orders are ONNX's: LSTM i, o, f, c (peepholes i, o, f); GRU z, r, h.

`sequence_lens` follows onnxruntime: steps past a sequence's length are skipped (Y is 0
there), the reverse direction walks each sequence back from its own last valid step, the
final state is the state after the last valid step, and a sequence of length 0 has final
states of 0 (not its initial state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.compiler.dims import Dim
from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.elementwise import upcast
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
Act = Callable[[np.ndarray], np.ndarray]

FLOAT = ("f16", "bf16", "f32", "f64")
DIRECTIONS = ("forward", "reverse", "bidirectional")


# --- activations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Activation:
    """One activation: f(x, alpha, beta), which parameters it reads, and their defaults.

    A default of None means "must be given": for ThresholdedRelu, Affine and ScaledTanh the
    ONNX spec (the defaults of the ops of those names: 1.0, 1.0/0.0, none) and onnxruntime
    (0.0 for all) disagree, so ember refuses to guess.
    """

    fn: Callable[[np.ndarray, float, float], np.ndarray]
    uses_alpha: bool = False
    uses_beta: bool = False
    alpha: float | None = None
    beta: float | None = None


_ACTIVATIONS: dict[str, _Activation] = {
    "relu": _Activation(lambda x, a, b: np.maximum(x, 0)),
    "tanh": _Activation(lambda x, a, b: np.tanh(x)),
    # 1 / (1 + e^-x) == (1 + tanh(x / 2)) / 2, without overflow for large |x|.
    "sigmoid": _Activation(lambda x, a, b: 0.5 * (1 + np.tanh(0.5 * x))),
    "affine": _Activation(lambda x, a, b: a * x + b, True, True),
    "leakyrelu": _Activation(lambda x, a, b: np.where(x >= 0, x, a * x), True, alpha=0.01),
    "thresholdedrelu": _Activation(lambda x, a, b: np.where(x > a, x, 0), True),
    "scaledtanh": _Activation(lambda x, a, b: a * np.tanh(b * x), True, True),
    "hardsigmoid": _Activation(lambda x, a, b: np.clip(a * x + b, 0, 1), True, True, alpha=0.2, beta=0.5),
    "elu": _Activation(lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), True, alpha=1.0),
    "softsign": _Activation(lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": _Activation(lambda x, a, b: np.logaddexp(0, x)),
}


def activation_specs(attrs: Attrs, spec: _Cell, dirs: int) -> list[tuple[str, float | None, float | None]]:
    """(lower-case name, alpha, beta) of each activation in order (per direction), alpha/beta
    consumed in order by the activations that read them (as onnxruntime does); ValueError for
    bad names/counts. The code generator builds its kernels from these."""
    names = list(attrs.get("activations") or spec.activations * dirs)
    want = len(spec.activations) * dirs
    if len(names) != want:
        raise ValueError(f"activations lists {len(names)} functions; {dirs} direction(s) need {want}")
    alphas = list(attrs.get("activation_alpha") or ())
    betas = list(attrs.get("activation_beta") or ())
    out: list[tuple[str, float | None, float | None]] = []
    for name in names:
        act = _ACTIVATIONS.get(name.lower())
        if act is None:
            raise ValueError(f"unknown activation {name!r} (expected one of {sorted(_ACTIVATIONS)})")
        a = alphas.pop(0) if act.uses_alpha and alphas else act.alpha
        b = betas.pop(0) if act.uses_beta and betas else act.beta
        if (act.uses_alpha and a is None) or (act.uses_beta and b is None):
            raise ValueError(f"activation {name} needs explicit activation_alpha/activation_beta values "
                             "(ONNX and onnxruntime disagree on its defaults)")
        out.append((name.lower(), a, b))
    return out


def _activations(attrs: Attrs, spec: _Cell, dirs: int) -> list[Act]:
    """The activation functions in order (per direction), as numpy callables."""
    return [lambda x, f=_ACTIVATIONS[name].fn, a=a, b=b: f(x, a, b) for name, a, b in activation_specs(attrs, spec, dirs)]


# --- cells --------------------------------------------------------------------------------------
Cell = Callable[..., "tuple[np.ndarray, np.ndarray | None]"]


def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return np.clip(x, -clip, clip) if clip is not None else x


def _lstm_cell(xw: np.ndarray, h: np.ndarray, c: np.ndarray, r: np.ndarray, rb: np.ndarray,
               peep: np.ndarray | None, fns: Sequence[Act], clip: float | None, attrs: Attrs) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step; xw = X_t W^T + Wb already computed for every step."""
    hsz = h.shape[1]
    g = xw + h @ r.T + rb
    gi, go, gf, gc = (g[:, k * hsz : (k + 1) * hsz] for k in range(4))
    f_act, g_act, h_act = fns
    if peep is not None:
        gi = gi + peep[:hsz] * c
        gf = gf + peep[2 * hsz :] * c
    i = f_act(_clip(gi, clip))
    # input_forget couples the gates: f = 1 - i.
    f = 1 - i if attrs["input_forget"] else f_act(_clip(gf, clip))
    c_new = f * c + i * g_act(_clip(gc, clip))
    if peep is not None:
        go = go + peep[hsz : 2 * hsz] * c_new
    o = f_act(_clip(go, clip))
    return o * h_act(c_new), c_new


def _gru_cell(xw: np.ndarray, h: np.ndarray, c: np.ndarray, r: np.ndarray, rb: np.ndarray,
              peep: np.ndarray | None, fns: Sequence[Act], clip: float | None, attrs: Attrs) -> tuple[np.ndarray, None]:
    """One GRU step (gates z, r, h); linear_before_reset applies r after R_h's product."""
    hsz = h.shape[1]
    f_act, g_act = fns
    hr = h @ r[: 2 * hsz].T + rb[: 2 * hsz]
    z = f_act(_clip(xw[:, :hsz] + hr[:, :hsz], clip))
    reset = f_act(_clip(xw[:, hsz : 2 * hsz] + hr[:, hsz:], clip))
    if attrs["linear_before_reset"]:
        cand = xw[:, 2 * hsz :] + reset * (h @ r[2 * hsz :].T + rb[2 * hsz :])
    else:
        cand = xw[:, 2 * hsz :] + (reset * h) @ r[2 * hsz :].T + rb[2 * hsz :]
    return (1 - z) * g_act(_clip(cand, clip)) + z * h, None


def _rnn_cell(xw: np.ndarray, h: np.ndarray, c: np.ndarray, r: np.ndarray, rb: np.ndarray,
              peep: np.ndarray | None, fns: Sequence[Act], clip: float | None, attrs: Attrs) -> tuple[np.ndarray, None]:
    """One simple-RNN step: H = f(X W^T + H R^T + Wb + Rb)."""
    return fns[0](_clip(xw + h @ r.T + rb, clip)), None


@dataclass(frozen=True)
class _Cell:
    """What differs between LSTM, GRU and RNN."""

    op: str
    gates: int
    activations: tuple[str, ...]  # defaults for one direction
    cell: Cell
    has_c: bool = False  # LSTM: initial_c input and Y_c output
    flag: str | None = None  # input_forget / linear_before_reset


LSTM = _Cell("LSTM", 4, ("Sigmoid", "Tanh", "Tanh"), _lstm_cell, has_c=True, flag="input_forget")
GRU = _Cell("GRU", 3, ("Sigmoid", "Tanh"), _gru_cell, flag="linear_before_reset")
RNN = _Cell("RNN", 1, ("Tanh",), _rnn_cell)


# --- inference ----------------------------------------------------------------------------------
def _hidden_from_r(types: Sequence[TensorType | None]) -> int:
    r = types[2] if len(types) > 2 else None
    if r is None or r.rank != 3 or not isinstance(r.shape[2], int):
        raise ValueError("hidden_size must be given when R's shape is not static")
    return int(r.shape[2])


def _attrs(spec: _Cell) -> dict[str, AttrSpec]:
    attrs = {
        "activation_alpha": AttrSpec("floats", None),
        "activation_beta": AttrSpec("floats", None),
        "activations": AttrSpec("strs", None),
        "clip": AttrSpec("float", None),
        "direction": AttrSpec("str", "forward"),
        "hidden_size": AttrSpec("int", _hidden_from_r),
        "layout": AttrSpec("int", 0),
    }
    if spec.flag:
        attrs[spec.flag] = AttrSpec("int", 0)
    return attrs


def _check_shape(ctx: InferCtx, index: int, name: str, want: tuple[Dim, ...]) -> None:
    """Input `index` (if present) must have x's dtype and shape `want` (symbols match anything)."""
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is None:
        return
    x = ctx.types[0]
    assert x is not None
    dtype = "i32" if name == "sequence_lens" else x.dtype
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t}")
    if t.rank != len(want) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(t.shape, want)):
        raise ValueError(f"{name} must have shape {list(want)}, got {t}")


def _infer(ctx: InferCtx, spec: _Cell) -> list[TensorType]:
    x = ctx.types[0]
    assert x is not None
    a = ctx.attrs
    if x.dtype not in FLOAT or x.rank != 3:
        raise ValueError(f"X must be a rank-3 float tensor, got {x}")
    if a["direction"] not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {a['direction']!r}")
    if a["layout"] not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {a['layout']}")
    if spec.flag and a[spec.flag] not in (0, 1):
        raise ValueError(f"{spec.flag} must be 0 or 1, got {a[spec.flag]}")
    if a.get("clip") is not None and not a["clip"] > 0:
        raise ValueError(f"clip must be > 0, got {a['clip']}")
    hidden = a["hidden_size"]
    if hidden < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden}")
    dirs = 2 if a["direction"] == "bidirectional" else 1
    _activations(a, spec, dirs)
    seq, batch = (x.shape[1], x.shape[0]) if a["layout"] else (x.shape[0], x.shape[1])
    gh = spec.gates * hidden
    state = (batch, dirs, hidden) if a["layout"] else (dirs, batch, hidden)
    _check_shape(ctx, 1, "W", (dirs, gh, x.shape[2]))
    _check_shape(ctx, 2, "R", (dirs, gh, hidden))
    _check_shape(ctx, 3, "B", (dirs, 2 * gh))
    _check_shape(ctx, 4, "sequence_lens", (batch,))
    _check_shape(ctx, 5, "initial_h", state)
    if spec.has_c:
        _check_shape(ctx, 6, "initial_c", state)
        _check_shape(ctx, 7, "P", (dirs, 3 * hidden))
    y = (batch, seq, dirs, hidden) if a["layout"] else (seq, dirs, batch, hidden)
    outs = [TensorType(x.dtype, y), TensorType(x.dtype, state)]
    if spec.has_c:
        outs.append(TensorType(x.dtype, state))
    return outs


# --- reference ----------------------------------------------------------------------------------
def _opt(inputs: Arrays, i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) and inputs[i] is not None else None


def _state(array: np.ndarray | None, layout: int, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """An initial state as [dirs, batch, hidden] (zeros when absent)."""
    if array is None:
        return np.zeros(shape, dtype)
    return (array.transpose(1, 0, 2) if layout else array).astype(dtype)


def _run(inputs: Arrays, attrs: Attrs, ctx: EvalCtx, spec: _Cell) -> list[np.ndarray]:
    layout = attrs["layout"]
    x = upcast(np.asarray(inputs[0]))  # f16/bf16 computed in f32 (as onnxruntime does)
    dtype = x.dtype
    x = x.transpose(1, 0, 2) if layout else x  # [seq, batch, input]
    seq, batch, size = x.shape
    hidden = attrs["hidden_size"]
    dirs = 2 if attrs["direction"] == "bidirectional" else 1
    gh = spec.gates * hidden
    w, r = np.asarray(inputs[1]).astype(dtype), np.asarray(inputs[2]).astype(dtype)
    b = _opt(inputs, 3)
    bias = b.astype(dtype) if b is not None else np.zeros((dirs, 2 * gh), dtype)
    lens_in = _opt(inputs, 4)
    lens = np.full(batch, seq, dtype=np.int64) if lens_in is None else lens_in.astype(np.int64).reshape(-1)
    if lens.shape != (batch,) or (lens < 0).any() or (lens > seq).any():
        raise ValueError(f"sequence_lens {lens.tolist()} must hold {batch} values in 0..{seq}")
    h0 = _state(_opt(inputs, 5), layout, (dirs, batch, hidden), dtype)
    c0 = _state(_opt(inputs, 6) if spec.has_c else None, layout, (dirs, batch, hidden), dtype)
    p = _opt(inputs, 7) if spec.has_c else None
    acts = _activations(attrs, spec, dirs)
    per_dir = len(spec.activations)
    rows = np.arange(batch)
    y = np.zeros((seq, dirs, batch, hidden), dtype)
    y_h, y_c = np.zeros((dirs, batch, hidden), dtype), np.zeros((dirs, batch, hidden), dtype)
    with np.errstate(all="ignore"):  # exp overflow in user activations saturates as ONNX expects
        for d in range(dirs):
            reverse = attrs["direction"] == "reverse" or d == 1
            # The input projection of every step at once: one [seq * batch, input] GEMM.
            xw = (x.reshape(-1, size) @ w[d].T + bias[d, :gh]).reshape(seq, batch, gh)
            h, c = h0[d], c0[d]
            peep = p[d].astype(dtype) if p is not None else None
            fns = acts[d * per_dir : (d + 1) * per_dir]
            for t in range(seq):
                active = t < lens
                # The reverse direction walks each sequence back from its own last valid step.
                step = np.where(active, (lens - 1 - t) if reverse else t, 0)
                new_h, new_c = spec.cell(xw[step, rows], h, c, r[d], bias[d, gh:], peep, fns, attrs.get("clip"), attrs)
                mask = active[:, None]
                h = np.where(mask, new_h, h)
                if new_c is not None:
                    c = np.where(mask, new_c, c)
                y[step[active], d, rows[active]] = new_h[active]
            empty = (lens == 0)[:, None]  # onnxruntime: final states of an empty sequence are 0
            y_h[d], y_c[d] = np.where(empty, 0, h), np.where(empty, 0, c)
    if layout:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return [as_dtype(v, ctx, i) for i, v in enumerate((y, y_h, y_c)[: len(ctx.out_types)])]


def _op(spec: _Cell, inputs: int) -> OpDef:
    return OpDef(
        name=spec.op,
        infer=lambda ctx: _infer(ctx, spec),
        ref=lambda i, a, c: _run(i, a, c, spec),
        inputs=(3, inputs),
        outputs=(0, 3 if spec.has_c else 2),
        attrs=_attrs(spec),
    )


OPS: list[OpDef] = [_op(LSTM, 8), _op(GRU, 6), _op(RNN, 6)]
