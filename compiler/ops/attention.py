"""Operator: Attention (ONNX opset 23+), scaled-dot-product attention with its options.

    Y = softmax((Q K^T) * scale [+ mask] [causal] [softcap]) V   (per head; GQA repeats K/V heads)

3-D inputs ([batch, seq, heads * head_size], with q_num_heads / kv_num_heads) and 4-D inputs
([batch, heads, seq, head_size]); optional attn_mask (bool or additive, padded on the key
axis), past_key/past_value (outputs present_key/present_value), nonpad_kv_seqlen,
qk_matmul_output_mode, softcap, softmax_precision and sliding windows.

The reference is onnx's own reference implementation of the op (the spec's executable form),
called with ember's attributes; ember's type inference is its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler import dims, dtypes
from ember.compiler.ir import TensorType
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef


def _t(ctx: InferCtx, i: int) -> TensorType | None:
    return ctx.types[i] if i < len(ctx.types) else None


def _infer(ctx: InferCtx) -> list[TensorType]:
    q, k, v = _t(ctx, 0), _t(ctx, 1), _t(ctx, 2)
    if q is None or k is None or v is None:
        raise ValueError("Attention needs Q, K and V")
    if not q.rank == k.rank == v.rank or q.rank not in (3, 4):
        raise ValueError(f"Q, K, V must all be 3-D or all 4-D, got {q}, {k}, {v}")
    past = _t(ctx, 4)
    if q.rank == 4:
        batch, hq, sq = q.shape[0], q.shape[1], q.shape[2]
        hkv, skv, dk, dv = k.shape[1], k.shape[2], k.shape[3], v.shape[3]
        y = TensorType(q.dtype, (batch, hq, sq, dv))
    else:
        hq_attr, hkv_attr = ctx.attrs.get("q_num_heads"), ctx.attrs.get("kv_num_heads")
        if not hq_attr or not hkv_attr:
            raise ValueError("3-D Attention needs q_num_heads and kv_num_heads")
        batch, sq, hq, hkv, skv = q.shape[0], q.shape[1], hq_attr, hkv_attr, k.shape[1]
        dk, dv = dims.floordiv(k.shape[2], hkv), dims.floordiv(v.shape[2], hkv)
        y = TensorType(q.dtype, (batch, sq, dims.mul(hq, dv)))
    total = dims.add(past.shape[2], skv) if past is not None else skv
    present_k = TensorType(k.dtype, (batch, hkv, total, dk))
    present_v = TensorType(v.dtype, (batch, hkv, total, dv))
    qk = TensorType(q.dtype, (batch, hq, sq, total))
    return [y, present_k, present_v, qk][: max(ctx.num_outputs, 1)]


def _ref(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], ctx: EvalCtx) -> list[np.ndarray]:
    from onnx.reference.ops.op_attention import _compute_attention

    def opt(i: int) -> np.ndarray | None:
        return inputs[i] if len(inputs) > i else None

    precision = attrs.get("softmax_precision")
    results = _compute_attention(
        inputs[0], inputs[1], inputs[2],
        attn_mask=opt(3), past_key=opt(4), past_value=opt(5), nonpad_kv_seqlen=opt(6),
        scale=attrs.get("scale"), is_causal=bool(attrs["is_causal"]),
        q_num_heads=attrs.get("q_num_heads"), kv_num_heads=attrs.get("kv_num_heads"),
        softmax_precision=dtypes.TO_ONNX[precision] if precision else None,
        softcap=attrs.get("softcap"), qk_matmul_output_mode=attrs["qk_matmul_output_mode"],
        left_window_size=attrs["left_window_size"], right_window_size=attrs["right_window_size"],
        _validate_attention25=False,
    )
    return [np.asarray(r) for r in results[: len(ctx.node.outputs)]]


def _upgrade(since: int, inputs: list[Any], attrs: dict[str, Any], types: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(attrs.get("softmax_precision"), int):
        attrs["softmax_precision"] = dtypes.from_onnx(attrs["softmax_precision"], "softmax_precision")
    return inputs, attrs


OPS: list[OpDef] = [
    OpDef(
        name="Attention",
        infer=_infer,
        ref=_ref,
        inputs=(3, 7),
        outputs=(1, 4),
        upgrade=_upgrade,
        attrs={
            "is_causal": AttrSpec("int", 0),
            "kv_num_heads": AttrSpec("int", None),
            "q_num_heads": AttrSpec("int", None),
            "qk_matmul_output_mode": AttrSpec("int", 0),
            "scale": AttrSpec("float", None),
            "softcap": AttrSpec("float", None),
            "softmax_precision": AttrSpec("str", None),
            "left_window_size": AttrSpec("int", -1),
            "right_window_size": AttrSpec("int", -1),
        },
    ),
]
