"""The default pass pipeline, as an explicit commented tuple, and its text form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ember.compiler.errors import EmberError

DEFAULT_PIPELINE: tuple[str, ...] = (
    "simplify",  # drop identities and no-ops first, so folding sees through them
    "fold_constants",  # evaluate constant subgraphs and static shape arithmetic
    "dce",  # shape chains folded above leave dead nodes
    "fold_batchnorm",  # BatchNormalization / per-channel Mul+Add into Conv and Gemm weights
    "cse",  # exported models repeat Shape/Gather/Unsqueeze computations
    "simplify",  # folding exposes new identities (Reshape to the same shape...)
    "dce",
    "fuse_composites",  # GELU, LayerNorm, Softmax, attention patterns -> single ops
    "simplify",  # attention's K transpose cancels against the exporter's
    "dce",
    "fuse",  # anchors with their elementwise epilogues become one kernel each
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
