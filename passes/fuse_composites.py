"""fuse_composites: decomposed composites -> single standard ONNX ops.

    0.5 * x * (1 + erf(x / sqrt(2)))                             ->  Gelu(x)                      (opset 20)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))      ->  Gelu(x) {approximate="tanh"} (opset 20)
    d = x - ReduceMean(x, a); d / Sqrt(ReduceMean(d^2, a) + eps) [* g] [+ b]
                                                                 ->  LayerNormalization(x, g, b) {axis, epsilon}
    Reshape(InstanceNormalization(Reshape(x, [N, G, -1]), s, b), x's shape)
                                                                 ->  GroupNormalization(x, s', b') {num_groups=G}
        (torch's GroupNorm below opset 18; s, b per group repeated per channel, as opset 21)
    e = Exp(x - ReduceMax(x, [a])); e / ReduceSum(e, [a])        ->  Softmax(x) {axis=a}
    MatMul(Softmax(MatMul(Q, KT) * c [+ mask]), V)               ->  Attention(Q, Transpose(KT), V[, mask]) {scale=c}
                                                                     (opset 23; 4-D [batch, heads, seq, head])
    MatMul([Where(IsNaN(p), 0, p) of] p = Softmax(MatMul([Q*c1], [KT*c2]) [+ mask]), V)
                                                                 ->  Attention(...) {scale=c1*c2, or 1}
        (torch's scaled_dot_product_attention export, static sequence lengths: the guard zeroes
        the NaN of a row masked to -inf everywhere, ONNX Attention's own convention)

Preconditions: every value inside a pattern is read only inside it (the rewrite removes the
whole pattern), constants match the formula to TOL (relative), and the composite has the
root's exact type. The Transpose that attention adds for K usually cancels against the
exporter's own in the next simplify.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ember.compiler.ir import Graph
from ember.compiler.pattern import Match, Pattern, const, one_of, op, var
from ember.compiler.rewrite import Builder, Outcome, PassResult, Rule, reject, rewrite_graph

TOL = 1e-4
X = var("x")


def _c(name: str, value: float) -> Pattern:
    """A scalar constant equal to `value` within TOL."""
    return const(name, value, tol=TOL, scalar=True)


# -- GELU -----------------------------------------------------------------------------------
def _half_x_times(factor: object) -> Pattern:
    """0.5 * x * factor, in the three associations exporters write."""
    return one_of(
        op("Mul", op("Mul", X, factor), _c("half", 0.5)),  # (x * f) * 0.5
        op("Mul", op("Mul", X, _c("half", 0.5)), factor),  # (x * 0.5) * f
        op("Mul", X, op("Mul", factor, _c("half", 0.5))),  # x * (f * 0.5)
    )


ERF = op("Erf", one_of(op("Div", X, _c("sqrt2", math.sqrt(2))), op("Mul", X, _c("sqrt2", 1 / math.sqrt(2)))))
GELU_ERF = _half_x_times(op("Add", ERF, _c("one", 1.0)))

CUBE = one_of(op("Pow", X, _c("three", 3.0)), op("Mul", op("Mul", X, X), X), op("Mul", X, op("Mul", X, X)))
INNER = op("Add", X, op("Mul", CUBE, _c("k", 0.044715)))
TANH = op("Tanh", op("Mul", INNER, _c("s", math.sqrt(2 / math.pi))))
GELU_TANH = _half_x_times(op("Add", TANH, _c("one", 1.0)))


def _gelu(approximate: str) -> Callable[[Match, Builder], Outcome]:
    def rewrite(m: Match, b: Builder) -> Outcome:
        if m.type("x") != m.root.outputs[0].type:
            return reject("broadcasting with the constants changes the type")
        b.op("Gelu", (m["x"],), {"approximate": approximate}, out=m.root.outputs[0])
        return b.replace()

    return rewrite


# -- LayerNorm ------------------------------------------------------------------------------
D = op("Sub", X, op("ReduceMean", X, const("axes"), keepdims=1), name="d")
VARIANCE = op("ReduceMean", one_of(op("Pow", D, _c("two", 2.0)), op("Mul", D, D)), const("axes2"), keepdims=1)
NORM = op("Div", D, op("Sqrt", op("Add", VARIANCE, const("eps", scalar=True))), name="norm")
LAYERNORM = one_of(
    op("Add", op("Mul", NORM, const("gamma")), const("beta")),
    op("Add", NORM, const("beta")),
    op("Mul", NORM, const("gamma")),
    NORM,
)


def _affine_reader(m: Match, rank: int) -> str | None:
    """The Mul/Add by a constant that reads the root, where the composite goes on."""
    readers = m.graph.consumers(m.root.outputs[0].name)
    if len(readers) != 1 or readers[0].op not in ("Mul", "Add") or m.root.outputs[0].name in m.graph.outputs:
        return None
    if m.root.op == "Add" or (m.root.op == "Mul" and readers[0].op == "Mul"):
        return None  # no longer form of the pattern continues this way
    other = [n for n in readers[0].inputs if n != m.root.outputs[0].name]
    c = m.graph.const(other[0]) if other else None
    return readers[0].name if c is not None and c.data.ndim <= rank else None


def _layernorm(m: Match, b: Builder) -> Outcome:
    x_type = m.type("x")
    rank = x_type.rank
    axes = sorted(int(a) % rank for a in m.const("axes").reshape(-1))
    if not axes or axes != list(range(rank - len(axes), rank)):
        return reject(f"the mean is over axes {axes}, not trailing ones")
    if sorted(int(a) % rank for a in m.const("axes2").reshape(-1)) != axes:
        return reject("the variance is over other axes than the mean")
    if m.root.outputs[0].type != x_type:
        return reject("scale or bias broadcast beyond x's shape")
    later = _affine_reader(m, len(axes))
    if later is not None:
        return reject(f"the composite continues into %{later}")
    normalized = x_type.shape[rank - len(axes):]
    params = []
    for key, fill in (("gamma", 1.0), ("beta", 0.0)):
        data = m.const(key) if key in m.values else None
        if data is not None and data.ndim > len(axes):
            return reject(f"{key} has more dims than the normalized axes")
        if data is not None and data.shape == tuple(normalized):
            params.append(m[key])
            continue
        if not all(isinstance(d, int) for d in normalized):
            return reject(f"{key} needs materialising over the symbolic normalized shape {list(normalized)}")
        value = np.broadcast_to(data if data is not None else np.array(fill), normalized).astype(x_type.np_dtype)
        params.append(b.const(f"{m.root.outputs[0].name}_{key}", value))
    eps = float(m.const("eps").reshape(-1)[0])
    b.op("LayerNormalization", (m["x"], *params), {"axis": rank - len(axes), "epsilon": eps}, out=m.root.outputs[0])
    return b.replace()


# -- GroupNorm (as torch.onnx exports it below opset 18) -------------------------------------
GROUPNORM = op("Reshape", op("InstanceNormalization", op("Reshape", X, const("shape"), name="grouped"),
                             const("scale"), const("bias"), name="norm"), var("back"))


def _groupnorm(m: Match, b: Builder) -> Outcome:
    x_type = m.type("x")
    grouped = m.nodes["grouped"].outputs[0].type
    c = x_type.shape[1] if x_type.rank >= 3 else None
    if not isinstance(c, int) or grouped.rank != 3 or grouped.shape[0] != x_type.shape[0]:
        return reject(f"the reshape {grouped} does not group x {x_type}'s channels per image")
    g = grouped.shape[1]
    if not isinstance(g, int) or g < 1 or c % g:
        return reject(f"{g} groups do not split {c} channels")
    if m.root.outputs[0].type != x_type:
        return reject("the second reshape does not restore x's shape")
    scale, bias = (m.const(key).reshape(-1) for key in ("scale", "bias"))
    if scale.size != g or bias.size != g:
        return reject("the instance norm's scale and bias are not one value per group")
    name = m.root.outputs[0].name
    params = [b.const(f"{name}_{key}", np.repeat(data, c // g).astype(x_type.np_dtype)) for key, data in (("scale", scale), ("bias", bias))]
    eps = float(m.nodes["norm"].attrs["epsilon"])
    b.op("GroupNormalization", (m["x"], *params), {"num_groups": g, "epsilon": eps}, out=m.root.outputs[0])
    return b.replace()


# -- Softmax --------------------------------------------------------------------------------
E = op("Exp", op("Sub", X, op("ReduceMax", X, const("axes"), keepdims=1)), name="e")
SOFTMAX = op("Div", E, op("ReduceSum", E, const("axes2"), keepdims=1))


def _softmax(m: Match, b: Builder) -> Outcome:
    rank = m.type("x").rank
    axes = [int(a) % rank for a in m.const("axes").reshape(-1)]
    if len(axes) != 1 or [int(a) % rank for a in m.const("axes2").reshape(-1)] != axes:
        return reject("the max and the sum are not over the same single axis")
    b.op("Softmax", (m["x"],), {"axis": axes[0]}, out=m.root.outputs[0])
    return b.replace()


# -- scaled-dot-product attention -----------------------------------------------------------
SCORES = op("MatMul", var("q"), var("kt"))
SCALED = one_of(op("Mul", SCORES, const("c", scalar=True)), op("Div", SCORES, const("c", scalar=True), name="div"))
ATTENTION = op("MatMul", op("Softmax", one_of(op("Add", SCALED, var("mask")), SCALED), name="softmax"), var("v"))


def _mask_broadcasts_in(graph: Graph, mask: str, scores: str) -> bool:
    """Whether an additive mask broadcasts into the scores without widening them: Attention's
    output is sized by Q, K and V alone, so a mask dim that could make the sum larger than the
    scores (one that is not 1 and not written as the scores' dim, where that dim is not a
    static size above 1) must stay a plain Add."""
    want, have = graph.value(scores).type.shape, graph.value(mask).type.shape
    if len(have) > len(want):
        return False
    for w, d in zip(want[len(want) - len(have):], have):
        if d != 1 and d != w and not (isinstance(w, int) and w > 1):
            return False
    return True


def _attention(m: Match, b: Builder) -> Outcome:
    if any(m.type(k).rank != 4 for k in ("q", "kt", "v")):
        return reject("Q, K^T and V are not all 4-D [batch, heads, seq, head]")
    if m.node("softmax").attrs["axis"] % 4 != 3:
        return reject("the softmax is not over the last axis")
    if "mask" in m.values and m.type("mask").dtype != m.root.outputs[0].type.dtype:
        return reject("the mask is not additive in the scores' dtype")
    if "mask" in m.values:
        add = m.graph.producer(m.node("softmax").inputs[0])  # (the pattern's Add: scores + mask)
        scores = add.inputs[1] if add.inputs[0] == m["mask"] else add.inputs[0]
        if not _mask_broadcasts_in(m.graph, m["mask"], scores):
            return reject("the mask's dims could widen the scores")
    factor = float(m.const("c").reshape(-1)[0])
    if factor == 0:
        return reject("the scale is 0")
    scale = 1.0 / factor if "div" in m.nodes else factor
    k = b.op("Transpose", (m["kt"],), {"perm": (0, 1, 3, 2)}, out=f"{m['kt']}_bhsd")
    operands = (m["q"], k, m["v"]) + ((m["mask"],) if "mask" in m.values else ())
    b.op("Attention", operands, {"scale": scale}, out=m.root.outputs[0])
    return b.replace()


# As torch's scaled_dot_product_attention exports: the scale split over Q and K^T (sqrt(c)
# each), and softmax's NaN (a row masked to -inf everywhere) zeroed: Where(IsNaN(p), 0, p).
GUARDED = op("MatMul", op("Where", op("IsNaN", var("p")), const("zero", scalar=True), var("p"), name="guard"), var("v"))
PLAIN = op("MatMul", op("Softmax", var("t"), name="softmax_op"), var("v"))


def _scalar_of(graph: Graph, name: str) -> float | None:
    found = graph.const(name)
    return float(found.data.reshape(-1)[0]) if found is not None and found.data.size == 1 else None


def _split_attention(m: Match, b: Builder) -> Outcome:
    """softmax(Q c1 (K^T c2) [+ mask]) V, the NaN guard optional: Attention {scale=c1*c2}."""
    graph = m.graph
    guarded = "guard" in m.nodes
    probs = m["p"] if guarded else m.node("softmax_op").outputs[0].name
    soft = graph.producer(probs)
    if soft is None or soft.op != "Softmax" or soft.attrs["axis"] % max(graph.value(probs).type.rank, 1) != 3:
        return reject("no softmax over the last axis")
    if guarded and _scalar_of(graph, m["zero"]) != 0.0:
        return reject("the guard does not zero the NaN")
    scores, mask = soft.inputs[0], None
    add = graph.producer(scores)
    if add is not None and add.op == "Add":
        for i in (0, 1):
            inner = graph.producer(add.inputs[i])
            if inner is not None and inner.op == "MatMul":
                scores, mask = add.inputs[i], add.inputs[1 - i]
                break
    matmul = graph.producer(scores)
    if matmul is None or matmul.op != "MatMul":
        return reject("the scores are not a MatMul")
    scale = 1.0
    operands = []
    for name in matmul.inputs:
        mul = graph.producer(name)
        factor = _scalar_of(graph, mul.inputs[1]) if mul is not None and mul.op == "Mul" else None
        if factor is not None:
            scale *= factor
            name = mul.inputs[0]  # type: ignore[union-attr]
        operands.append(name)
    q, kt = operands
    if any(graph.value(n).type.rank != 4 for n in (q, kt, m["v"])):
        return reject("Q, K^T and V are not all 4-D [batch, heads, seq, head]")
    if not all(isinstance(d, int) for n in (q, kt) for d in graph.value(n).type.shape[1:]):
        # (the Attention rule's kernel over a symbolic sequence, its keys padded per call to
        # whole vectors, against the unfused matmuls and softmax, tools/ab.py medians of 20:
        # an exported BERT 29.1 / 15.1 ms against 29.2 / 16.4 at 1 / 2 threads, an exported T5,
        # whose bias has a row per query, 21.0 / 11.9 against 18.7 / 10.6: not a win yet)
        return reject("a symbolic sequence length: the unfused kernels are faster")
    if mask is not None and graph.value(mask).type.dtype != m.root.outputs[0].type.dtype:
        return reject("the mask is not additive in the scores' dtype")
    if mask is not None and not _mask_broadcasts_in(graph, mask, scores):
        return reject("the mask's dims could widen the scores")
    k = b.op("Transpose", (kt,), {"perm": (0, 1, 3, 2)}, out=f"{kt}_bhsd")
    b.op("Attention", (q, k, m["v"]) + ((mask,) if mask is not None else ()), {"scale": scale}, out=m.root.outputs[0])
    return b.replace()


RULES: tuple[Rule, ...] = (
    Rule("gelu_erf", GELU_ERF, _gelu("none")),
    Rule("gelu_tanh", GELU_TANH, _gelu("tanh")),
    Rule("layernorm", LAYERNORM, _layernorm),
    Rule("groupnorm", GROUPNORM, _groupnorm),
    Rule("softmax", SOFTMAX, _softmax),
    Rule("attention", ATTENTION, _attention),
    # (not exclusive: the softmax chain they read past stays until dce, dead)
    Rule("attention_guarded", GUARDED, _split_attention, exclusive=False),
    Rule("attention_split_scale", PLAIN, _split_attention, exclusive=False),
)


def fuse_composites(graph: Graph) -> PassResult:
    """Rewrite GELU (erf and tanh forms), LayerNorm, GroupNorm, Softmax and attention to single ops."""
    return rewrite_graph(graph, RULES)
