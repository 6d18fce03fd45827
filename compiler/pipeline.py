"""The default pass pipeline, as an explicit commented tuple, and its text form.

(Placeholder until the pass infrastructure lands: the pipeline is empty.)
"""

from __future__ import annotations

DEFAULT_PIPELINE: tuple[str, ...] = ()


def parse_pipeline(text: str) -> tuple[str, ...]:
    """`fold_constants,dce,fuse` -> ("fold_constants", "dce", "fuse")."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def pipeline_text(pipeline: tuple[str, ...]) -> str:
    """The text form written into dump headers and reproducers."""
    return ",".join(pipeline)
