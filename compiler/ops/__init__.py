"""The op table: `OPS[name] -> OpDef`, assembled from one module per family of operators."""

from __future__ import annotations

from ember.compiler.ops import (
    activation,
    attention,
    control,
    elementwise,
    fused,
    nn,
    nn_norm,
    nn_pool,
    nn_vision,
    quant,
    recurrent,
    reduce,
    resize,
    shape,
    shape_build,
    signal,
    tensor,
)
from ember.compiler.ops.registry import REQUIRED, AttrSpec, EvalCtx, InferCtx, OpDef

OPS: dict[str, OpDef] = {}
for _module in (elementwise, activation, reduce, shape, shape_build, tensor, resize, nn, nn_pool, nn_norm, nn_vision, attention, recurrent, quant, control, signal, fused):
    for _op in _module.OPS:
        if _op.name in OPS:
            raise RuntimeError(f"operator {_op.name} defined twice")
        OPS[_op.name] = _op

__all__ = ["OPS", "REQUIRED", "AttrSpec", "EvalCtx", "InferCtx", "OpDef"]
