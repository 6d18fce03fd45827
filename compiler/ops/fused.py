"""ember's own op `Fused`: one fusion group, compiled as exactly one kernel.

    %y = Fused(%a, %b, ...) {kernel="conv2d_add_relu", body=graph ...}

The body's inputs take the node's inputs in order; its outputs are the node's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ember.compiler.ir import Graph, TensorType
from ember.compiler.ops.registry import AttrSpec, EvalCtx, InferCtx, OpDef


def _infer(ctx: InferCtx) -> list[TensorType]:
    if any(t is None for t in ctx.types):
        raise ValueError("Fused takes no omitted inputs")
    return ctx.infer_subgraph("body", [t for t in ctx.types if t is not None])


def _ref(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], ctx: EvalCtx) -> list[np.ndarray]:
    body: Graph = attrs["body"]
    return ctx.run_graph(body, {v.name: x for v, x in zip(body.inputs, inputs)})


OPS: list[OpDef] = [
    OpDef(name="Fused", infer=_infer, ref=_ref, inputs=(0, -1), outputs=(1, -1), domain="ember",
          attrs={"body": AttrSpec("graph"), "kernel": AttrSpec("str")}),
]
