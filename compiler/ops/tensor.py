"""Operators: tensor (filled in by its owner)."""

from __future__ import annotations

from ember.compiler.ops.registry import OpDef

OPS: list[OpDef] = []
