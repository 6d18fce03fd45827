"""Operators: recurrent networks (LSTM, GRU, RNN) with every ONNX option.

Directions (forward, reverse, bidirectional), `sequence_lens` (steps past a sequence's
length are skipped: Y is 0 there and the state keeps its last valid value), initial states,
peepholes, clip, input_forget, linear_before_reset, layout 0/1 and custom activations with
their alpha/beta.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler.ir import TensorType
from ember.compiler.ops.common import as_dtype
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef

Arrays = Sequence["np.ndarray | None"]
Attrs = Mapping[str, Any]
Act = Callable[[np.ndarray], np.ndarray]

# name -> (number of alpha/beta parameters it takes, builder)
_ACTIVATIONS: dict[str, tuple[int, Callable[..., Act]]] = {
    "relu": (0, lambda: lambda x: np.maximum(x, 0)),
    "tanh": (0, lambda: np.tanh),
    "sigmoid": (0, lambda: lambda x: 1 / (1 + np.exp(-x))),
    "affine": (2, lambda a, b: lambda x: a * x + b),
    "leakyrelu": (1, lambda a: lambda x: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, lambda a: lambda x: np.where(x > a, x, 0)),
    "scaledtanh": (2, lambda a, b: lambda x: a * np.tanh(b * x)),
    "hardsigmoid": (2, lambda a, b: lambda x: np.clip(a * x + b, 0, 1)),
    "elu": (1, lambda a: lambda x: np.where(x >= 0, x, a * (np.exp(x) - 1))),
    "softsign": (0, lambda: lambda x: x / (1 + np.abs(x))),
    "softplus": (0, lambda: lambda x: np.log1p(np.exp(x))),
}
_DEFAULT_ALPHA = {"leakyrelu": 0.01, "thresholdedrelu": 1.0, "hardsigmoid": 0.2, "elu": 1.0, "affine": 1.0, "scaledtanh": 1.0}
_DEFAULT_BETA = {"hardsigmoid": 0.5, "affine": 0.0, "scaledtanh": 1.0}


def _activations(attrs: Attrs, defaults: Sequence[str], dirs: int) -> list[Act]:
    names = list(attrs.get("activations") or list(defaults) * dirs)
    alphas = list(attrs.get("activation_alpha") or ())
    betas = list(attrs.get("activation_beta") or ())
    out = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown recurrent activation {name!r}")
        count, build = _ACTIVATIONS[key]
        if count == 0:
            out.append(build())
        elif count == 1:
            out.append(build(alphas.pop(0) if alphas else _DEFAULT_ALPHA[key]))
        else:
            a = alphas.pop(0) if alphas else _DEFAULT_ALPHA[key]
            b = betas.pop(0) if betas else _DEFAULT_BETA[key]
            out.append(build(a, b))
    return out


def _attrs(extra: Mapping[str, AttrSpec] | None = None) -> dict[str, AttrSpec]:
    return {
        "activation_alpha": AttrSpec("floats", None),
        "activation_beta": AttrSpec("floats", None),
        "activations": AttrSpec("strs", None),
        "clip": AttrSpec("float", None),
        "direction": AttrSpec("str", "forward"),
        "hidden_size": AttrSpec("int", lambda types: _hidden_from_r(types)),
        "layout": AttrSpec("int", 0),
        **(extra or {}),
    }


def _hidden_from_r(types: Sequence[TensorType | None]) -> int:
    r = types[2] if len(types) > 2 else None
    if r is None or not isinstance(r.shape[-1], int):
        raise ValueError("hidden_size must be given when R's shape is not static")
    return int(r.shape[-1])


def _infer(ctx: InferCtx, with_c: bool) -> list[TensorType]:
    x = ctx.types[0]
    assert x is not None
    hidden = ctx.attrs["hidden_size"]
    dirs = 2 if ctx.attrs["direction"] == "bidirectional" else 1
    if ctx.attrs["layout"] == 0:
        seq, batch = x.shape[0], x.shape[1]
        y = TensorType(x.dtype, (seq, dirs, batch, hidden))
        h = TensorType(x.dtype, (dirs, batch, hidden))
    else:
        batch, seq = x.shape[0], x.shape[1]
        y = TensorType(x.dtype, (batch, seq, dirs, hidden))
        h = TensorType(x.dtype, (batch, dirs, hidden))
    return [y, h, h] if with_c else [y, h]


def _run(
    inputs: Arrays,
    attrs: Attrs,
    ctx: EvalCtx,
    gates: int,
    step: Callable[..., tuple[np.ndarray, np.ndarray | None]],
    defaults: Sequence[str],
    acts_per_dir: int,
) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    if attrs["layout"] == 1:
        x = x.transpose(1, 0, 2)
    seq, batch, _ = x.shape
    hidden = attrs["hidden_size"]
    dirs = 2 if attrs["direction"] == "bidirectional" else 1
    w, r = np.asarray(inputs[1]), np.asarray(inputs[2])

    def opt(i: int) -> np.ndarray | None:
        return inputs[i] if len(inputs) > i and inputs[i] is not None else None

    b = opt(3)
    lens = opt(4)
    h0, c0, p = opt(5), opt(6), opt(7)
    if h0 is not None and attrs["layout"] == 1:
        h0 = h0.transpose(1, 0, 2)
    if c0 is not None and attrs["layout"] == 1:
        c0 = c0.transpose(1, 0, 2)
    lens_v = np.full(batch, seq, dtype=np.int64) if lens is None else lens.astype(np.int64)
    acts = _activations(attrs, defaults, dirs)
    clip = attrs.get("clip")
    ys = np.zeros((seq, dirs, batch, hidden), dtype=np.float64)
    hs, cs = [], []
    for d in range(dirs):
        reverse = attrs["direction"] == "reverse" or d == 1
        wb = b[d].astype(np.float64) if b is not None else np.zeros(2 * gates * hidden)
        h = h0[d].astype(np.float64) if h0 is not None else np.zeros((batch, hidden))
        c = c0[d].astype(np.float64) if c0 is not None else np.zeros((batch, hidden))
        peep = p[d].astype(np.float64) if p is not None else None
        fns = acts[d * acts_per_dir : (d + 1) * acts_per_dir]
        for t in range(seq):
            active = t < lens_v
            # Reverse direction walks each sequence backwards from its own last valid step.
            idx = np.where(active, (lens_v - 1 - t) if reverse else t, 0)
            xt = x[idx, np.arange(batch)].astype(np.float64)
            new_h, new_c = step(xt, h, c, w[d].astype(np.float64), r[d].astype(np.float64), wb, peep, fns, clip, attrs)
            mask = active[:, None]
            h = np.where(mask, new_h, h)
            if new_c is not None:
                c = np.where(mask, new_c, c)
            out_t = np.where(mask, new_h, 0.0)
            ys[idx[active], d, np.arange(batch)[active]] = out_t[active]
        hs.append(h)
        cs.append(c)
    y, yh, yc = ys, np.stack(hs), np.stack(cs)
    if attrs["layout"] == 1:
        y, yh, yc = y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
    outs = [as_dtype(y, ctx, 0), as_dtype(yh, ctx, 1) if len(ctx.out_types) > 1 else None]
    if len(ctx.out_types) > 2:
        outs.append(as_dtype(yc, ctx, 2))
    return [o for o in outs if o is not None]


def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return np.clip(x, -clip, clip) if clip is not None else x


def _lstm_step(xt, h, c, w, r, b, peep, fns, clip, attrs):
    hsz = h.shape[1]
    g = xt @ w.T + h @ r.T + b[: 4 * hsz] + b[4 * hsz :]
    gi, go, gf, gc = (g[:, k * hsz : (k + 1) * hsz] for k in range(4))
    if peep is not None:
        gi = gi + peep[:hsz] * c
        gf = gf + peep[2 * hsz :] * c
    f_act, g_act, h_act = fns
    i = f_act(_clip(gi, clip))
    f = 1 - i if attrs["input_forget"] else f_act(_clip(gf, clip))
    cand = g_act(_clip(gc, clip))
    c_new = f * c + i * cand
    if peep is not None:
        go = go + peep[hsz : 2 * hsz] * c_new
    o = f_act(_clip(go, clip))
    return o * h_act(c_new), c_new


def _gru_step(xt, h, c, w, r, b, peep, fns, clip, attrs):
    hsz = h.shape[1]
    wb, rb = b[: 3 * hsz], b[3 * hsz :]
    xw = xt @ w.T + wb
    f_act, g_act = fns
    z = f_act(_clip(xw[:, :hsz] + h @ r[:hsz].T + rb[:hsz], clip))
    rr = f_act(_clip(xw[:, hsz : 2 * hsz] + h @ r[hsz : 2 * hsz].T + rb[hsz : 2 * hsz], clip))
    if attrs["linear_before_reset"]:
        cand = g_act(_clip(xw[:, 2 * hsz :] + rr * (h @ r[2 * hsz :].T + rb[2 * hsz :]), clip))
    else:
        cand = g_act(_clip(xw[:, 2 * hsz :] + (rr * h) @ r[2 * hsz :].T + rb[2 * hsz :], clip))
    return (1 - z) * cand + z * h, None


def _rnn_step(xt, h, c, w, r, b, peep, fns, clip, attrs):
    hsz = h.shape[1]
    return fns[0](_clip(xt @ w.T + h @ r.T + b[:hsz] + b[hsz:], clip)), None


OPS: list[OpDef] = [
    OpDef(name="LSTM", infer=lambda ctx: _infer(ctx, True),
          ref=lambda i, a, c: _run(i, a, c, 4, _lstm_step, ("Sigmoid", "Tanh", "Tanh"), 3),
          inputs=(3, 8), outputs=(0, 3), attrs=_attrs({"input_forget": AttrSpec("int", 0)})),
    OpDef(name="GRU", infer=lambda ctx: _infer(ctx, False),
          ref=lambda i, a, c: _run(i, a, c, 3, _gru_step, ("Sigmoid", "Tanh"), 2),
          inputs=(3, 6), outputs=(0, 2), attrs=_attrs({"linear_before_reset": AttrSpec("int", 0)})),
    OpDef(name="RNN", infer=lambda ctx: _infer(ctx, False),
          ref=lambda i, a, c: _run(i, a, c, 1, _rnn_step, ("Tanh",), 1),
          inputs=(3, 6), outputs=(0, 2), attrs=_attrs()),
]
