"""The default pass pipeline, as an explicit commented tuple, and its text form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ember.compiler.errors import EmberError

DEFAULT_PIPELINE: tuple[str, ...] = (
    "inline_branches",  # an If on a shape check that inference settles: its taken branch, before folding
    "unroll_loops",  # a Loop / Scan of a known count: copies of its body (and the Ifs they decide)
    "simplify",  # drop Identity/Dropout/no-op Reshapes first, so folding sees through them
    "fold_constants",  # evaluate constant subgraphs and static shape arithmetic (Shape -> ... -> Reshape)
    "dce",  # the folded chains leave dead nodes and constants
    "fold_batchnorm",  # BatchNormalization / per-channel Mul, Add into Conv, Gemm and MatMul weights
    "cse",  # exporters repeat Shape/Gather/Unsqueeze computations and small constants
    "simplify",  # folding exposes new identities (a Reshape to the same shape, a Reshape chain)
    "dce",
    "fuse_composites",  # GELU, LayerNorm, Softmax, attention patterns -> single ONNX ops
    "simplify",  # attention's K transpose merges with the exporter's own
    "dce",
    "fuse",  # last: anchors with their elementwise epilogues become one kernel each
)


def parse_pipeline(text: str) -> tuple[str, ...]:
    """`fold_constants,dce,fuse` -> ("fold_constants", "dce", "fuse")."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def pipeline_text(pipeline: tuple[str, ...]) -> str:
    """The text form written into dump headers and reproducers."""
    return ",".join(pipeline)


def validate_pipeline(pipeline: tuple[str, ...], registry: Mapping[str, Any]) -> None:
    """EmberError naming unknown passes and listing the valid ones."""
    unknown = [p for p in pipeline if p not in registry]
    if unknown:
        raise EmberError(f"unknown pass(es) {unknown}; registered passes: {', '.join(registry)}")
